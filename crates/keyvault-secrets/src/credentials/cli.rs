//! Running a developer tool that prints a token (`az`, `azd`): the same rules for both.

use crate::error::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Runs `program` (default: `name`, found on `PATH`; on Windows through `cmd /c`, as azure-identity does) with
/// `args`, no input, for at most `timeout`. Not found, not startable or not answering in time is
/// [`ErrorKind::CredentialUnavailable`], its message starting with `who`; `what` names the tool in messages.
pub(crate) async fn run(
    who: &str,
    what: &str,
    name: &str,
    program: Option<&PathBuf>,
    args: &[&str],
    timeout: Duration,
) -> Result<std::process::Output> {
    let mut command = match program {
        Some(program) => tokio::process::Command::new(program),
        None if cfg!(windows) => {
            let mut c = tokio::process::Command::new("cmd");
            c.arg("/c").arg(name);
            c
        }
        None => tokio::process::Command::new(name),
    };
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let unavailable = |message: String| {
        Error::new(
            ErrorKind::CredentialUnavailable,
            format!("{who}: {message}"),
        )
    };
    tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| unavailable(format!("{name} did not answer in time")))?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                unavailable(format!("{what} not found on path"))
            } else {
                Error::with_source(
                    ErrorKind::CredentialUnavailable,
                    format!("{who}: cannot run {name}: {e}"),
                    e,
                )
            }
        })
}

/// Whether a tool that exited with `code` and said `stderr` was not found by the shell (a wrapper script's
/// 127, or `cmd /c`'s message).
pub(crate) fn not_found(code: Option<i32>, stderr: &str, name: &str) -> bool {
    code == Some(127) || stderr.starts_with(&format!("'{name}' is not recognized"))
}
