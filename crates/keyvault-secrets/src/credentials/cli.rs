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
    // The tool runs in a directory of the system's, not the caller's (a59-2): on Windows `cmd` looks for the
    // program in the current directory before `PATH`, and a cloned repository could hold an `az.cmd`. So
    // `cmd.exe` is named by its full path as well, and a program given by a relative path is made absolute first.
    let system_dir = if cfg!(windows) {
        std::env::var_os("SYSTEMROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\Windows"))
    } else if std::path::Path::new("/bin").is_dir() {
        PathBuf::from("/bin")
    } else {
        PathBuf::from("/")
    };
    let mut command = match program {
        Some(program) => {
            tokio::process::Command::new(std::path::absolute(program).map_err(|e| {
                Error::with_source(
                    ErrorKind::CredentialUnavailable,
                    format!("{who}: cannot run {}: {e}", program.display()),
                    e,
                )
            })?)
        }
        None if cfg!(windows) => {
            let mut c = tokio::process::Command::new(system_dir.join("System32").join("cmd.exe"));
            c.arg("/c").arg(name);
            c
        }
        None => tokio::process::Command::new(name),
    };
    command
        .args(args)
        .current_dir(&system_dir)
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

/// What a tool that failed said, trimmed, its tokens taken out ([`without_tokens`]), and cut to 500 characters.
pub(crate) fn said(stderr: &str, name: &str) -> String {
    let message = without_tokens(stderr.trim());
    if message.is_empty() {
        format!("{name} failed without a message")
    } else {
        message.chars().take(500).collect()
    }
}

/// `text` with the value of every JSON `"token"`, `"accessToken"` or `"access_token"` member, and every run
/// that looks like a JWT (`eyJ` and 20 or more base64url characters or dots), replaced by `****`: a tool may
/// print a token to stderr with its error (azure-identity sanitizes it as well).
pub(crate) fn without_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for key in ["\"token\"", "\"accessToken\"", "\"access_token\""] {
            if let Some(after_key) = rest.strip_prefix(key) {
                let after_colon = after_key
                    .trim_start()
                    .strip_prefix(':')
                    .map(str::trim_start);
                if let Some(value) = after_colon.and_then(|v| v.strip_prefix('"')) {
                    let mut end = value.len();
                    let mut chars = value.char_indices();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                chars.next();
                            }
                            '"' => {
                                end = i;
                                break;
                            }
                            _ => {}
                        }
                    }
                    out.push_str(&rest[..rest.len() - value.len()]);
                    out.push_str("****");
                    rest = &value[end..];
                    continue 'scan;
                }
            }
        }
        if rest.starts_with("eyJ") {
            let run = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(rest.len());
            if run >= 23 {
                out.push_str("****");
                rest = &rest[run..];
                continue;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_taken_out_of_what_a_tool_said() {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl";
        for (text, kept) in [
            (
                r#"ERROR: {"token": "secret-CANARY-1", "expiresOn": "2099-01-01T00:00:00Z"}"#,
                r#"ERROR: {"token": "****", "expiresOn": "2099-01-01T00:00:00Z"}"#,
            ),
            (
                r#"{"accessToken":"a\"b-CANARY-2","tokenType":"Bearer"}"#,
                r#"{"accessToken":"****","tokenType":"Bearer"}"#,
            ),
            (
                r#""access_token" : "CANARY-3""#,
                r#""access_token" : "****""#,
            ),
            (
                &format!("bad token {jwt} here") as &str,
                "bad token **** here",
            ),
            (
                "eyJ short and 'az login' is fine",
                "eyJ short and 'az login' is fine",
            ),
            (r#""token": 5, not a string"#, r#""token": 5, not a string"#),
            (r#"cut "token": "CANARY-4"#, r#"cut "token": "****"#),
            ("é\"token\":\"CANARY-5\"ü", "é\"token\":\"****\"ü"),
        ] {
            assert_eq!(without_tokens(text), kept);
            assert!(!said(text, "az").contains("CANARY"), "{text}");
        }
        assert_eq!(
            said(&format!("  {jwt}  "), "azd"),
            "****",
            "trimmed, then taken out"
        );
        assert_eq!(said("  ", "azd"), "azd failed without a message");
    }
}
