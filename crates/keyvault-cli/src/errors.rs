//! The CLI's error: one line for the user and an exit code for scripts.

use keyvault_secrets::{Error, ErrorKind};
use std::fmt;

/// Exit codes (documented in `keyvault --help`).
pub mod code {
    /// Connection failures, server errors, anything else.
    pub const OTHER: u8 = 1;
    /// Bad input: usage errors, invalid names, values or files, a 400 or 413 from the vault.
    pub const BAD_INPUT: u8 = 2;
    /// The secret (or version, or deleted secret) does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Conflict: e.g. the name is held by a deleted secret, or a restore over an existing secret.
    pub const CONFLICT: u8 = 4;
    /// Unauthorized or forbidden: no token, a refused token, a disabled secret, a denied operation.
    pub const FORBIDDEN: u8 = 5;
    /// A bulk import or export (or a rekey) finished, but some items failed.
    pub const PARTIAL: u8 = 6;
    /// The vault throttled the request (429): the retries ran out, or it asked for a longer wait than the client makes.
    pub const THROTTLED: u8 = 7;
    /// Interrupted (Ctrl-C) at a prompt: 128 + SIGINT, as shells report it.
    pub const INTERRUPTED: u8 = 130;
}

/// The exit-code table, for `--help` (a macro so that `concat!` can use it).
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0  success
  1  connection failure or timeout, server error, anything else (audit verify: the log cannot be read,
     or its keys cannot be loaded)
  2  bad input (usage, invalid name/value/date, a file that cannot be read or created, 400 or 413 from the
     vault; audit verify: the log is not intact)
  3  not found (secret, version or deleted secret)
  4  conflict (e.g. name held by a deleted secret, restore over an existing secret, snapshot into a
     directory that is not empty)
  5  unauthorized or forbidden (credential failure, 401, 403, disabled secret)
  6  bulk import/export or rekey finished with some items failed
  7  throttled: the vault answered 429 (too many requests) after every retry
130  interrupted (Ctrl-C, Ctrl-\\, SIGTERM or SIGHUP at a prompt)"
    };
}

#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

/// What an operation was about, to word a not-found or conflict error.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A secret, optionally one version of it.
    Secret(&'a str, Option<&'a str>),
    /// A deleted secret.
    Deleted(&'a str),
    /// The vault itself (listings, restore, token).
    Vault,
}

impl CliError {
    /// An error with `message` made one line (services put line breaks in some descriptions) and safe for a
    /// terminal (a server's text may hold escape sequences: see [`crate::render::terminal_safe`]).
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = if message.contains(['\n', '\r']) {
            message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            message
        };
        let message = crate::render::terminal_safe(&message);
        CliError { code, message }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(code::BAD_INPUT, message)
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self::new(code::OTHER, message)
    }

    /// An error of the client library, worded for `target` in `vault`.
    pub fn from_client(e: &Error, target: Target<'_>, vault: &str) -> Self {
        let codes = match (e.error_code(), e.inner_error_code()) {
            (Some(c), Some(i)) if c != i => format!(" ({c}: {i})"),
            (Some(c), _) => format!(" ({c})"),
            (None, Some(i)) => format!(" ({i})"),
            (None, None) => String::new(),
        };
        let what = match target {
            Target::Secret(name, None) => format!("secret '{name}'"),
            Target::Secret(name, Some(v)) => format!("secret '{name}' version '{v}'"),
            Target::Deleted(name) => format!("deleted secret '{name}'"),
            Target::Vault => String::new(),
        };
        let msg = e.message().trim_end_matches('.');
        let status = e.status().map(|s| s.as_u16());
        let (code, message) = match e.kind() {
            ErrorKind::ResourceNotFound if !what.is_empty() => {
                (code::NOT_FOUND, format!("{what} not found in {vault}"))
            }
            ErrorKind::ResourceNotFound => (code::NOT_FOUND, format!("not found: {msg}")),
            ErrorKind::ResourceExists if !what.is_empty() => (
                code::CONFLICT,
                format!("conflict on {what} in {vault}: {msg}"),
            ),
            ErrorKind::ResourceExists => (code::CONFLICT, format!("conflict: {msg}")),
            ErrorKind::ClientAuthentication => {
                let mut m = format!("not authorized by {vault}: {}", with_sources(e));
                if m.contains("verify_challenge_resource") {
                    m.push_str(
                        " [keyvault: --dev-credentials turns the check off for a local dev vault; \
                         --no-challenge-verification turns it off always]",
                    );
                }
                (code::FORBIDDEN, m)
            }
            // The authority unreachable or answering 5xx/408/429 is not a refused credential (exit 5): a
            // script would conclude the secret is wrong.
            // The authority's certificate refused: configuration, not an outage.
            ErrorKind::Credential if let Some(hint) = certificate_hint(&with_sources(e)) => {
                let hint = if hint.contains("--vault-url") {
                    "it is not for this host name: use a name in its SANs in --authority-host \
                     (AZURE_AUTHORITY_HOST)"
                } else {
                    hint
                };
                (
                    code::OTHER,
                    format!(
                        "cannot get a token, the authority's certificate was refused: {} [{hint}]",
                        without_library_hint(e.message().to_string())
                    ),
                )
            }
            ErrorKind::Credential
                if matches!(status, Some(408 | 429 | 500..=599))
                    || std::error::Error::source(e)
                        .and_then(|s| s.downcast_ref::<Error>())
                        .is_some_and(|s| s.kind() == ErrorKind::Connection) =>
            {
                (
                    code::OTHER,
                    format!(
                        "cannot get a token, the authority is unavailable: {}",
                        with_sources(e)
                    ),
                )
            }
            ErrorKind::Credential | ErrorKind::CredentialUnavailable => {
                let mut m = format!("cannot get a token: {}", with_sources(e));
                // The library's advice names its option; the CLI's is the tenant itself.
                if let Some((cause, _)) = m.split_once("; add it to `additionally_allowed_tenants`")
                {
                    m = format!(
                        "{cause} [keyvault: if the credential's application is registered in the vault's tenant, \
                         pass that tenant as --tenant-id (AZURE_TENANT_ID)]"
                    );
                }
                (code::FORBIDDEN, m)
            }
            ErrorKind::HttpResponse if status == Some(403) => {
                let on = if what.is_empty() {
                    String::new()
                } else {
                    format!(" on {what}")
                };
                (code::FORBIDDEN, format!("forbidden{on}: {msg}"))
            }
            ErrorKind::HttpResponse if status == Some(429) => {
                // The client waits for a Retry-After of up to its longest delay (30 s), retries left; a
                // longer one, or one past --timeout, is given back at once.
                let asked = (e.response_headers())
                    .and_then(|h| h.get("retry-after"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|secs| format!("; it asks to wait {secs} s (Retry-After)"))
                    .unwrap_or_default();
                (
                    code::THROTTLED,
                    format!(
                        "{vault} is throttling requests (429){asked}: {msg} [the client waits for it at most \
                         30 s, within --timeout, and --max-retries (KEYVAULT_MAX_RETRIES) times; wait and try \
                         again]"
                    ),
                )
            }
            // 413 too: whether a too-large value gets 400 or 413 depends only on how large it is.
            ErrorKind::HttpResponse if matches!(status, Some(400 | 413)) => {
                (code::BAD_INPUT, format!("rejected by {vault}: {msg}"))
            }
            ErrorKind::HttpResponse => (
                code::OTHER,
                format!(
                    "{vault} answered {}: {msg}",
                    status.map(|s| s.to_string()).unwrap_or_default()
                ),
            ),
            ErrorKind::InvalidArgument => (code::BAD_INPUT, with_sources(e)),
            // The call's time ran out (`--timeout`): the vault may have been reached (e.g. a throttled call that
            // waits to retry), so not "cannot reach".
            ErrorKind::Connection if msg.contains("did not complete within its timeout") => (
                code::OTHER,
                format!(
                    "gave up on {vault}: {msg} [--timeout SECS (KEYVAULT_TIMEOUT) sets the limit; 0: none]"
                ),
            ),
            ErrorKind::Connection => match certificate_hint(msg) {
                // Reached, and its certificate refused: say which way it is wrong, in the CLI's terms (the
                // library's own hint names its Rust option).
                Some(hint) => {
                    let text = without_library_hint(with_sources(e));
                    (
                        code::OTHER,
                        format!("refused the certificate of {vault}: {text} [{hint}]"),
                    )
                }
                None if e.is_request_unsent() => (
                    code::OTHER,
                    format!("cannot reach {vault}: {}", with_sources(e)),
                ),
                // The request may have reached the vault: a change may have been made (a set, a restore).
                None => (
                    code::OTHER,
                    format!(
                        "lost the connection to {vault} after sending the request: {} [a change it asked for \
                         may have been made: look before repeating it]",
                        with_sources(e)
                    ),
                ),
            },
            _ => (code::OTHER, with_sources(e)),
        };
        CliError::new(code, format!("{message}{codes}"))
    }
}

/// `text` without the library's own advice on an untrusted CA (it names a Rust option; the CLI's hint
/// names its flag).
fn without_library_hint(text: String) -> String {
    match text.find(" (the server's certificate is not issued") {
        Some(at) => {
            let end = text[at..].find(')').map_or(text.len(), |i| at + i + 1);
            format!("{}{}", &text[..at], &text[end..])
        }
        None => text,
    }
}

/// What to do about a server certificate the client refused, from rustls's words for it (`None`: not such
/// an error).
fn certificate_hint(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if !m.contains("invalid peer certificate") {
        return None;
    }
    Some(
        if m.contains("unknownissuer") || m.contains("unknown issuer") {
            "it is not issued by a CA this machine trusts: trust a private CA with --ca-file (KEYVAULT_CA_FILE)"
        } else if m.contains("notvalidforname") || m.contains("not valid for name") {
            "it is not for this host name: use a name in its SANs in --vault-url"
        } else if m.contains("expired") || m.contains("notvalidyet") || m.contains("not valid yet")
        {
            "it is outside its validity period: renew it, or check this machine's clock"
        } else if m.contains("ca used as end entity") || m.contains("causedasendentity") {
            "it is a CA certificate: the server needs an end-entity certificate issued by a CA"
        } else {
            "the server's certificate or chain is not acceptable"
        },
    )
}

/// The message followed by its causes (`a: b: c`), without repeats.
fn with_sources(e: &Error) -> String {
    let mut out = e.message().to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Writing to standard output: a closed pipe ends the program quietly (exit 0).
pub fn io_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::new(0, "")
    } else {
        CliError::other(format!("cannot write the output: {e}"))
    }
}

/// Writing something to standard output that is of no use in part (an export, a backup): a closed pipe is an
/// error here, not the quiet end [`io_error`] makes of it, since the reader did not get all of `what`.
pub fn whole_output_error(what: &'static str) -> impl Fn(std::io::Error) -> CliError {
    move |e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::other(format!(
                "standard output was closed before {what} was written: its reader did not get all of it"
            ))
        } else {
            io_error(e)
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// What is wrong with a JSON file, and where, without its text: serde's own messages quote the input
/// (`invalid type: string "…"`), which may be a secret.
pub fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "could not be read",
        Category::Eof => "ends too early",
        Category::Syntax => "is not valid JSON",
        Category::Data => "has a value of the wrong type or shape",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::certificate_hint;
    use rustls::{CertificateError, Error};

    /// Each refusal rustls reports gets its own hint; other connection errors none.
    #[test]
    fn certificate_refusals_are_told_apart() {
        let hint =
            |e: CertificateError| certificate_hint(&Error::InvalidCertificate(e).to_string());
        assert!(
            hint(CertificateError::UnknownIssuer)
                .unwrap()
                .contains("--ca-file")
        );
        assert!(
            hint(CertificateError::NotValidForName)
                .unwrap()
                .contains("host name")
        );
        assert!(
            hint(CertificateError::Expired)
                .unwrap()
                .contains("validity")
        );
        assert!(
            hint(CertificateError::NotValidYet)
                .unwrap()
                .contains("validity")
        );
        assert!(hint(CertificateError::BadSignature).is_some());
        assert_eq!(
            certificate_hint("error trying to connect: Connection refused"),
            None
        );
    }
}
