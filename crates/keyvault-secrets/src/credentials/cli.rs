//! Running a developer tool that prints a token (`az`, `azd`): the same rules for both.

use crate::error::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::time::Duration;

/// How to run a tool, and what its failures are.
pub(crate) struct Tool<'a> {
    /// The credential, which starts every message.
    pub who: &'a str,
    /// The tool's name in messages (`Azure CLI`).
    pub what: &'a str,
    /// Its program's name (`az`).
    pub name: &'a str,
    /// The program to run instead of `name` on `PATH`.
    pub program: Option<&'a PathBuf>,
    pub timeout: Duration,
    /// The error for a run that exited with this code and said this on stderr, a real failure being of this kind.
    pub failure: fn(Option<i32>, &str, ErrorKind) -> Error,
    /// The kind of a real failure (see [`failed_kind`]).
    pub failed: ErrorKind,
}

/// Runs the tool with `args` and returns what it printed, or the error for a run that failed (`tool.failure`).
pub(crate) async fn output(tool: &Tool<'_>, args: &[&str]) -> Result<Vec<u8>> {
    let output = run(
        tool.who,
        tool.what,
        tool.name,
        tool.program,
        args,
        tool.timeout,
    )
    .await?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err((tool.failure)(output.status.code(), &stderr, tool.failed));
    }
    Ok(output.stdout)
}

/// Runs `program` (default: `name`, found on `PATH`; on Windows through `cmd /c`, as azure-identity does) with
/// `args`, no input, for at most `timeout`. Not found, not startable or not answering in time is
/// [`ErrorKind::CredentialUnavailable`], its message starting with `who`; `what` names the tool in messages.
async fn run(
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

/// A tool credential's `tenant_id` option, checked when the credential is made.
pub(crate) fn check_tenant(tenant: Option<&str>) -> Result<()> {
    match tenant.filter(|t| !super::valid_tenant(t)) {
        Some(t) => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("invalid tenant id '{t}'"),
        )),
        None => Ok(()),
    }
}

/// The tenant to ask the tool for: the credential's own (a challenge's other tenant only if allowed), else the
/// challenge's, else none (the tool's current one).
pub(crate) fn tenant_for(
    who: &str,
    own: Option<&str>,
    requested: Option<&str>,
    allowed: &[String],
) -> Result<Option<String>> {
    Ok(match own {
        Some(own) => Some(super::resolve_tenant(who, own, requested, allowed)?.to_string()),
        None => requested
            .filter(|t| super::valid_tenant(t))
            .map(str::to_string),
    })
}

/// The kind of a failure of a tool that ran: unavailable inside `DefaultAzureCredential` (azure-identity's
/// `within_dac`), else failed.
pub(crate) fn failed_kind(in_default_chain: bool) -> ErrorKind {
    if in_default_chain {
        ErrorKind::CredentialUnavailable
    } else {
        ErrorKind::Credential
    }
}

/// What a tool that failed said, trimmed and cut to 500 characters.
pub(crate) fn said(stderr: &str, name: &str) -> String {
    let message = stderr.trim();
    if message.is_empty() {
        format!("{name} failed without a message")
    } else {
        message.chars().take(500).collect()
    }
}
