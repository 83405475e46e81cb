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
    let output = run(tool, args).await?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err((tool.failure)(output.status.code(), &stderr, tool.failed));
    }
    Ok(output.stdout)
}

/// Runs the tool's program (default: its `name`, found on `PATH`; on Windows through `cmd /c`, as
/// azure-identity does) with `args`, no input, for at most its timeout. Not found, not startable or not
/// answering in time is [`ErrorKind::CredentialUnavailable`].
async fn run(tool: &Tool<'_>, args: &[&str]) -> Result<std::process::Output> {
    let Tool {
        who,
        what,
        name,
        program,
        timeout,
        ..
    } = *tool;
    // The tool runs in a directory of the system's, not the caller's (a59-2): on Windows `cmd` looks for the
    // program in the current directory before `PATH`, and a cloned repository could hold an `az.cmd`. So
    // `cmd.exe` is named by its full path as well, and a program given by a relative path is made absolute first.
    let system_dir = if cfg!(windows) {
        std::env::var_os("SYSTEMROOT")
            .filter(|root| !root.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\Windows"))
    } else if std::path::Path::new("/bin").is_dir() {
        PathBuf::from("/bin")
    } else {
        PathBuf::from("/")
    };
    let mut command = match program {
        // A bare name is looked up on `PATH`, as documented; a path with a directory in it is made absolute.
        Some(program) if program.components().count() == 1 => tokio::process::Command::new(program),
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
    // A program file that is still open for writing somewhere cannot be run (`ETXTBSY`): another thread that
    // forks while a program is being written lends the child its descriptor until the child execs (tests that
    // write a fake tool and run it meet this). Tried again a few times, briefly.
    let mut busy_tries = 0;
    let started = tokio::time::Instant::now();
    let output = loop {
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, command.output()).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && busy_tries < 5 => {
                busy_tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    output
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

/// Options of the credentials that run a developer tool: [`AzureCliCredential`](super::AzureCliCredential)
/// (as `AzureCliCredentialOptions`) and [`AzureDeveloperCliCredential`](super::AzureDeveloperCliCredential)
/// (as `AzureDeveloperCliCredentialOptions`).
#[derive(Clone, Debug)]
pub struct CliCredentialOptions {
    /// Ask the tool for a token of this tenant (default: the tool's current tenant, or the challenge's).
    pub tenant_id: Option<String>,
    /// Tenants besides `tenant_id` that a challenge may name (`"*"` for any).
    pub additionally_allowed_tenants: Vec<String>,
    /// The program (default `az` or `azd`, found on `PATH`).
    pub program: Option<PathBuf>,
    /// How long the tool may take (default 10 s).
    pub timeout: Duration,
}

impl Default for CliCredentialOptions {
    fn default() -> Self {
        CliCredentialOptions {
            tenant_id: None,
            additionally_allowed_tenants: Vec::new(),
            program: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl CliCredentialOptions {
    /// The options as a credential is made with them: `tenant_id` checked.
    pub(crate) fn checked(options: Option<Self>) -> Result<Self> {
        let options = options.unwrap_or_default();
        if let Some(t) = options
            .tenant_id
            .as_deref()
            .filter(|t| !super::valid_tenant(t))
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid tenant id '{t}'"),
            ));
        }
        Ok(options)
    }

    /// The tenant to ask the tool for: the credential's own (a challenge's other tenant only if allowed), else
    /// the challenge's, else none (the tool's current one).
    pub(crate) fn tenant_for(&self, who: &str, requested: Option<&str>) -> Result<Option<String>> {
        Ok(match self.tenant_id.as_deref() {
            Some(own) => Some(
                super::resolve_tenant(who, own, requested, &self.additionally_allowed_tenants)?
                    .to_string(),
            ),
            None => requested
                .filter(|t| super::valid_tenant(t))
                .map(str::to_string),
        })
    }
}

/// Whether `s` may go to a tool as a scope or resource: not empty, and only ASCII letters, digits and `-_.:/`
/// (no white space, quotes or shell characters; as azure-identity checks).
pub(crate) fn safe_argument(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
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

/// `text` with the value of every token member — `token`, `accessToken`, `access_token`, `refresh_token`,
/// `id_token`, in any case, as JSON (`"key": "…"`), a Python dict (`'key': '…'`), JSON escaped in a string
/// (`\"key\": \"…\"`) or `key=…` — and every run that looks like a JWT (`eyJ` and 20 or more base64url
/// characters or dots), replaced by `****`: a tool may print a token to stderr with its error (azure-identity
/// sanitizes it as well).
pub(crate) fn without_tokens(text: &str) -> String {
    const KEYS: [&str; 5] = [
        "accesstoken",
        "access_token",
        "refresh_token",
        "id_token",
        "token",
    ];
    const QUOTES: [&str; 3] = ["\\\"", "\"", "'"];
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        if let Some((kept, skipped)) = token_member(&text[at..], &lower[at..], &lower[..at]) {
            out.push_str(&text[at..at + kept]);
            out.push_str("****");
            at += kept + skipped;
            continue;
        }
        let rest = &text[at..];
        if rest.starts_with("eyJ") {
            let run = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(rest.len());
            if run >= 23 {
                out.push_str("****");
                at += run;
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        at += c.len_utf8();
    }
    return out;

    /// At the start of `rest` (`lower`: the same, lower-cased; `before`: the text before it, lower-cased), a
    /// token member: how many bytes to keep (the key, the separator, the value's opening quote) and how many
    /// to replace (the value).
    fn token_member(rest: &str, lower: &str, before: &str) -> Option<(usize, usize)> {
        for key in KEYS {
            for quote in QUOTES.iter().copied().chain([""]) {
                let Some(after_key) = lower
                    .strip_prefix(quote)
                    .and_then(|r| r.strip_prefix(key))
                    .and_then(|r| r.strip_prefix(quote))
                else {
                    continue;
                };
                // A bare key starts a word (`mytoken=` is not one).
                if quote.is_empty()
                    && before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                {
                    continue;
                }
                let trimmed = after_key.trim_start();
                let separator = if quote.is_empty() { '=' } else { ':' };
                let Some(after_separator) = trimmed.strip_prefix(separator) else {
                    continue;
                };
                let value = after_separator.trim_start();
                let value_at = rest.len() - value.len();
                let open = QUOTES.iter().copied().find(|q| value.starts_with(q));
                let len = match open {
                    Some(q) => {
                        let inner = &value[q.len()..];
                        let mut end = inner.len();
                        let mut chars = inner.char_indices();
                        while let Some((i, c)) = chars.next() {
                            if inner[i..].starts_with(q) {
                                end = i;
                                break;
                            }
                            if c == '\\' {
                                chars.next();
                            }
                        }
                        return Some((value_at + q.len(), end));
                    }
                    None if quote.is_empty() => value
                        .find(|c: char| c.is_whitespace() || matches!(c, '&' | ',' | ';'))
                        .unwrap_or(value.len()),
                    None => continue,
                };
                return Some((value_at, len));
            }
        }
        None
    }
}

/// A fake tool for tests: an executable shell script `name` in `dir`, closed before it is returned.
#[cfg(all(test, unix))]
pub(crate) fn fake_tool(dir: &std::path::Path, name: &str, script: &str) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let program = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&program)
        .and_then(|mut file| file.write_all(script.as_bytes()))
        .unwrap();
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool running `program`, failing with a plain error.
    fn tool(program: &PathBuf) -> Tool<'_> {
        Tool {
            who: "W",
            what: "tool",
            name: "tool",
            program: Some(program),
            timeout: Duration::from_secs(10),
            failure: |_, _, kind| Error::new(kind, "failed"),
            failed: ErrorKind::Credential,
        }
    }

    /// Shapes a60 found passing through (a60-6), and some that must be left alone.
    #[test]
    fn tokens_in_other_shapes_are_taken_out() {
        for (text, kept) in [
            (
                "{'accessToken': 'CANARY-1', 'tokenType': 'Bearer'}",
                "{'accessToken': '****', 'tokenType': 'Bearer'}",
            ),
            (r#"{"AccessToken":"CANARY-2"}"#, r#"{"AccessToken":"****"}"#),
            (
                r#""refresh_token": "CANARY-3""#,
                r#""refresh_token": "****""#,
            ),
            (r#""id_token":"CANARY-4""#, r#""id_token":"****""#),
            (
                r#"msg "{\"accessToken\": \"CANARY-5\"}""#,
                r#"msg "{\"accessToken\": \"****\"}""#,
            ),
            ("access_token=CANARY-6&x=1", "access_token=****&x=1"),
            ("Token = CANARY-7 more", "Token = **** more"),
            ("mytoken=kept", "mytoken=kept"),
            ("a token: not a member", "a token: not a member"),
        ] {
            let got = without_tokens(text);
            assert!(!got.contains("CANARY"), "{text} → {got}");
            assert_eq!(got, kept, "{text}");
        }
        // Any text: no panic (slices stay on character boundaries), and a planted token never stays.
        let pieces = [
            "\"",
            "'",
            "\\",
            ":",
            "=",
            " ",
            "token",
            "Access_Token",
            "eyJ",
            "é",
            "𝄞",
            "a",
            "&",
            "\\\"",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let planted = format!("{text} \"token\": \"CANARY\"");
            assert!(!without_tokens(&planted).contains("CANARY"), "{planted:?}");
        }
    }

    /// A program named without a directory is found on `PATH`, as documented (a60-1: it was made absolute
    /// against the current directory, and not found).
    #[tokio::test]
    async fn a_bare_program_name_is_looked_up_on_the_path() {
        let echo = PathBuf::from("echo");
        let out = output(&tool(&echo), &["hello"]).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "hello");
    }

    /// A program still open for writing (`ETXTBSY`: a fake tool written by a test while another thread forks)
    /// is run once it is closed, within a few tries.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_program_still_open_for_writing_is_tried_again() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("tool");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&program)
            .unwrap();
        file.write_all(b"#!/bin/sh\necho ran\n").unwrap();
        file.flush().unwrap();
        let closing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            drop(file);
        });
        let out = output(&tool(&program), &[]).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "ran");
        closing.await.unwrap();
    }

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
