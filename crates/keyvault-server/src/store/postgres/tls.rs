//! TLS between a node and PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `sslsni`
//! settings, read from the connection string, and a [`tokio_postgres`] TLS connector over rustls.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and has no TLS of its own, so [`split`] takes
//! these settings out of the connection string (URL query parameters, or `key=value` pairs) before
//! tokio-postgres parses the rest, and [`PgTls`] does the handshake with the verification they ask for:
//!
//! | `sslmode`     | TLS                                   | the server's certificate                         |
//! |---------------|---------------------------------------|--------------------------------------------------|
//! | `disable`     | never                                 | -                                                |
//! | `prefer`      | if the server offers it (the default) | not checked; with `sslrootcert=PATH`, its chain  |
//! | `require`     | always                                | not checked; with `sslrootcert=PATH`, its chain  |
//! | `verify-ca`   | always                                | chain to `sslrootcert=PATH`                      |
//! | `verify-full` | always                                | chain to `sslrootcert` (or the system's roots), and the host name |
//!
//! As in libpq, `sslrootcert=system` means the system's trusted roots, makes `verify-full` the default and
//! refuses weaker modes; unlike libpq, no file is read implicitly (`~/.postgresql/root.crt`), and
//! `verify-full` without `sslrootcert` uses the system's roots rather than failing. Unix-domain sockets never
//! use TLS (PostgreSQL does not offer it there).
//!
//! Unverified (`prefer`, `require` without `sslrootcert`), TLS stops a passive listener only. A man in the
//! middle can show a certificate of his own, and tokio-postgres's default `channel_binding=prefer` does not
//! stop him: it gives up channel binding when he shows a certificate without a `tls-server-end-point` hash
//! (Ed25519, RSA-PSS), and answers a request for a cleartext or MD5 password. Only `channel_binding=require`
//! (with SCRAM) or a verified certificate (`verify-full`) stops him; the store warns at start when neither
//! holds for a host that is not this machine. With `channel_binding=require`, a server certificate without
//! that hash fails the handshake, saying why.
//!
//! Unlike libpq: `verify-full` needs the host name among the certificate's subject alternative names (a
//! certificate with a common name only is refused); any certificate in `sslrootcert` is a trust anchor (an
//! intermediate CA alone there is trusted, libpq needs the chain up to a self-signed root); and a client key
//! file that others can read is warned about rather than refused.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`, except `allow` (refused: use `prefer` or `disable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // The value is not echoed: a mistyped string may carry a password anywhere.
            "allow" => return Err("sslmode=allow is not supported: use prefer or disable".into()),
            _ => {
                return Err(
                    "sslmode must be disable, prefer, require, verify-ca or verify-full".into(),
                );
            }
        })
    }
}

/// Where the trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// PEM file of one or more CA certificates (`sslrootcert=PATH`).
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`, or `verify-full` without `sslrootcert`).
    System,
}

/// The TLS settings of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// Whether `sslmode` was given (else [`SslMode::Prefer`], or `verify-full` with `sslrootcert=system`).
    pub mode_given: bool,
    /// `sslrootcert`, as given.
    pub root: Option<Roots>,
    /// `sslcert` and `sslkey`: a client certificate chain and its key (PEM files).
    pub client: Option<(PathBuf, PathBuf)>,
    /// `sslsni=0` turns off the server name indication (on by default, as in libpq).
    pub sni: bool,
}

/// The TLS settings this module reads.
const KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni"];
/// libpq's other TLS settings: refused by name rather than as tokio-postgres's "unknown option".
const UNSUPPORTED: [&str; 9] = [
    "sslcrl",
    "sslcrldir",
    "sslpassword",
    "sslcertmode",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslkeylogfile",
    "requiressl",
];

/// Take the TLS settings out of a connection string (`postgres://…?sslmode=…&sslrootcert=…` or libpq's
/// `key=value …` form): the string for tokio-postgres (everything else, untouched) and the settings.
/// Errors never repeat a value (a mistyped string may carry the password anywhere), only names and paths.
pub fn split(conn: &str) -> Result<(String, TlsSettings), String> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn, &mut found)?
    } else {
        split_key_values(conn, &mut found)?
    };
    Ok((rest, settings(found)?))
}

fn take(key: &str, value: String, found: &mut Vec<(String, String)>) -> Result<bool, String> {
    if KEYS.contains(&key) {
        found.push((key.to_string(), value));
        Ok(true)
    } else if UNSUPPORTED.contains(&key) {
        Err(format!(
            "{key} is not supported (the TLS settings are sslmode, sslrootcert, sslcert, sslkey and sslsni)"
        ))
    } else {
        Ok(false)
    }
}

/// The URL form: query parameters, percent-decoded as tokio-postgres decodes them.
fn split_url(url: &str, found: &mut Vec<(String, String)>) -> Result<String, String> {
    check_at_signs(url)?;
    // tokio-postgres reads the credentials up to the first '@', then the host and path up to the first '?'.
    let after_credentials = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[after_credentials..]
        .find('?')
        .map(|i| i + after_credentials)
    else {
        return Ok(url.to_string());
    };
    let mut kept = Vec::new();
    for segment in url[q + 1..].split('&') {
        let taken = match segment.split_once('=') {
            Some((key, value)) => {
                let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| format!("{key} is not valid UTF-8 once percent-decoded"))?;
                take(&key, value.into_owned(), found)?
            }
            None => false,
        };
        if !taken {
            kept.push(segment);
        }
    }
    let mut out = url[..q].to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

/// The settings tokio-postgres and libpq know, by name: what a query swallowed into the user information
/// (by an `@` in the query) is recognised by.
const KNOWN_PARAMETERS: [&str; 19] = [
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslnegotiation",
    "gssencmode",
];

/// tokio-postgres ends the user information at the URL's first `@`, wherever it is. Refused, rather than
/// read as tokio-postgres would:
/// - an `@` left in the host part (`postgres://kv:pa@ss@host/db`): the password would end at the first `@`
///   and the host name begin with the rest of it;
/// - a query swallowed into the user information (`postgres://host/db?sslmode=verify-full&application_name=
///   kv@host`): every setting before the `@` would be dropped, the TLS settings with them. Recognised by a
///   `?` followed by a known setting's name, or by two or more `name=value` pairs joined by `&`.
///
/// Passwords with an unencoded `/`, `?` or `=` (`postgres://u:pa/ss@h/db`, `postgres://u:pa?ss@h/db`) are
/// read by tokio-postgres as written, and pass. Errors repeat no part of the URL.
fn check_at_signs(url: &str) -> Result<(), String> {
    let body = url.split_once("://").map_or(url, |(_, b)| b);
    let Some((userinfo, after)) = body.split_once('@') else {
        return Ok(());
    };
    // Before the first '@', a '/' with no ':' ahead of it: no user name and password but a host and a path
    // (`postgres://localhost/my@db`), which tokio-postgres would read as credentials, the rest as the host
    // (a65-2). With a ':' ahead it is read as a password holding a '/' (`u:pa/ss@h`), as written.
    // Nor does one start with '[' (an IPv6 host: `postgres://[::1]/my@db`, a66-2).
    let host_like = userinfo.starts_with('[')
        || userinfo
            .split_once('/')
            .is_some_and(|(before_slash, _)| !before_slash.contains(':'));
    if host_like {
        return Err(
            "the URL has an '@' after a host or a '/', with no user name and password before it: \
             tokio-postgres would read what comes before the '@' as credentials. Percent-encode '@' as %40 \
             (in the database name and query too), and a '/' in a user name as %2F"
                .into(),
        );
    }
    let host_part = &after[..after.find(['/', '?']).unwrap_or(after.len())];
    if host_part.contains('@') {
        return Err(
            "the URL has more than one '@' before its host: the user name and password end at the \
             first one. Percent-encode '@' as %40 in the user name and password"
                .into(),
        );
    }
    // A password with an unencoded '@' and then a '?' (`kv:pa@ss?x=y@h/db`): the credentials end at its first
    // '@', and the rest of it reads as a host and a query whose keys are pieces of it. A query that runs into
    // a later '@' and holds a key nobody knows is taken for that (an '@' in a known setting's value, such as
    // `application_name=kv@h`, is kept), and refused before any key is named.
    if let Some(last) = after.rfind('@')
        && let Some((_, query)) = after[..last].split_once('?')
        && tokio_postgres_keys(query).iter().any(|k| !is_known(k))
    {
        return Err(
            "the URL has an '@' after a '?' that follows the first '@': a password with an unencoded '@' \
             ends there, and its rest would be read as the host and the query. Percent-encode '@' as %40 in \
             the user name and password"
                .into(),
        );
    }
    // The same with a '/' instead (`kv:pa@ss/x@h/db`): the rest reads as a host and a database name, which
    // errors name (a64-1). An '@' in the database name itself must be encoded as well.
    let before_query = &after[..after.find('?').unwrap_or(after.len())];
    if let Some((_, path)) = before_query.split_once('/')
        && path.contains('@')
    {
        return Err(
            "the URL has an '@' after its host, before any '?': in a password with an unencoded '@' the \
             password ends at its first '@' and its rest would be read as the host and the database name. \
             Percent-encode '@' as %40 (in the user name, password and database name)"
                .into(),
        );
    }
    if let Some((_, query)) = userinfo.split_once('?') {
        let keys = query_keys(query);
        let known = keys.iter().any(|k| is_known(k));
        let names = keys
            .iter()
            .filter(|k| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .count();
        if known || names >= 2 {
            return Err("the URL's query (or path) holds an '@': everything before it would be read as the \
                 user name and password, and the settings there (sslmode, sslrootcert, …) dropped. \
                 Percent-encode '@' as %40"
                .into());
        }
    }
    Ok(())
}

/// The keys of a URL query's `key=value` segments, percent-decoded and lower-cased.
fn query_keys(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|segment| segment.split_once('='))
        .map(|(key, _)| {
            percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_ascii_lowercase()
        })
        .collect()
}

/// A URL query's keys as tokio-postgres reads them: each up to the next '=' (an '&' before it is part of
/// the key), percent-decoded, in the case written.
fn tokio_postgres_keys(query: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = query;
    while let Some(eq) = rest.find('=') {
        keys.push(
            percent_encoding::percent_decode_str(&rest[..eq])
                .decode_utf8_lossy()
                .into_owned(),
        );
        let value = &rest[eq + 1..];
        rest = value.find('&').map_or("", |amp| &value[amp + 1..]);
    }
    keys
}

/// Whether tokio-postgres, libpq or this module knows a setting by that name (all lower case: `Sslmode` is not one).
fn is_known(key: &str) -> bool {
    KNOWN_PARAMETERS.contains(&key) || KEYS.contains(&key) || UNSUPPORTED.contains(&key)
}

/// libpq's `key = value` form (values bare with `\\` escapes, or single-quoted), read by tokio-postgres's
/// rules (any Unicode whitespace separates; a `\\` at the end of a bare value is dropped): the pairs this
/// module reads are cut out, the rest is left as written. Text that does not parse is refused here, so that
/// tokio-postgres never reads a setting this did not see.
fn split_key_values(conn: &str, found: &mut Vec<(String, String)>) -> Result<String, String> {
    let pairs = key_value_spans(conn)?;
    let mut out = String::with_capacity(conn.len());
    let mut from = 0;
    for (start, end, key, value) in pairs {
        if take(&key, value, found)? {
            out.push_str(&conn[from..start]);
            from = end;
        }
    }
    out.push_str(&conn[from..]);
    Ok(out)
}

/// Each pair's byte range, key and unescaped value. Errors give a byte offset and a key, never a value.
pub(super) fn key_value_spans(s: &str) -> Result<Vec<(usize, usize, String, String)>, String> {
    let mut it = s.char_indices().peekable();
    let mut out = Vec::new();
    let at = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        it.peek().map_or(s.len(), |&(i, _)| i)
    };
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let start = at(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &s[start..at(&mut it)];
        if key.is_empty() {
            if it.peek().is_none() {
                return Ok(out);
            }
            return Err(format!(
                "a key=value connection string: no key before the '=' at byte {start}"
            ));
        }
        skip_ws(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            // Not the key: unparsable text may be a piece of a password.
            return Err(format!(
                "a key=value connection string: the word at byte {start} is not followed by '=' (quote \
                 values with spaces in single quotes)"
            ));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(it.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                    None => {
                        // Not named: the key may be a piece of an unquoted password before it (a60-2).
                        return Err(format!(
                            "a key=value connection string: the quoted value of the key at byte {start} has no \
                             closing quote"
                        ));
                    }
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(format!(
                    "a key=value connection string: the key at byte {start} has no value"
                ));
            }
        }
        out.push((start, at(&mut it), key.to_string(), value));
    }
}

/// The settings from what [`split`] found (the last of a repeated key wins, as in libpq), checked.
fn settings(found: Vec<(String, String)>) -> Result<TlsSettings, String> {
    let last = |key: &str| {
        found
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let path = |key: &str| -> Result<Option<PathBuf>, String> {
        match last(key) {
            Some("") => Err(format!("{key} is empty: give a file path")),
            Some(v) => Ok(Some(PathBuf::from(v))),
            None => Ok(None),
        }
    };
    let given = last("sslmode").map(SslMode::parse).transpose()?;
    let root = match last("sslrootcert") {
        Some("system") => Some(Roots::System),
        _ => path("sslrootcert")?.map(Roots::File),
    };
    let mode = match (given, &root) {
        (Some(mode), Some(Roots::System)) if mode != SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={} is weaker than sslrootcert=system allows: any certificate from a public CA would \
                 pass; use sslmode=verify-full (the default with sslrootcert=system) or sslrootcert=PATH",
                mode.as_str()
            ));
        }
        (Some(mode), _) => mode,
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    };
    if mode == SslMode::VerifyCa && !matches!(root, Some(Roots::File(_))) {
        return Err("sslmode=verify-ca needs sslrootcert=PATH (a PEM file of the CA certificates that may \
             sign the server's certificate); with no host name check, the system's roots would let any \
             publicly trusted certificate pass"
            .into());
    }
    let client = match (path("sslcert")?, path("sslkey")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("sslcert and sslkey go together: give both files or neither".into()),
    };
    let sni = match last("sslsni") {
        None | Some("1") => true,
        Some("0") => false,
        Some(_) => return Err("sslsni must be 0 or 1".into()),
    };
    Ok(TlsSettings {
        mode,
        mode_given: given.is_some(),
        root,
        client,
        sni,
    })
}

/// What tokio-postgres itself does for `mode` (it verifies nothing; [`PgTls`] does).
pub fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The connector

/// A rustls TLS connector for tokio-postgres, made once from [`TlsSettings`] (root and client certificates
/// are read then) and cloned for each connection.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<ClientConfig>,
    /// Whether the host name is checked (`verify-full`): without it, a host that is not a valid DNS name or
    /// IP address still connects.
    check_name: bool,
    /// The trusted roots, for messages ("sslrootcert /etc/ca.pem", "the system's trusted roots").
    roots: Arc<str>,
    /// What is checked of the server's certificate: "chain and host name", "chain" or "nothing".
    verifies: &'static str,
    /// Handshakes completed (whether `prefer` got TLS).
    handshakes: Arc<AtomicU64>,
    /// `channel_binding=require`: a server certificate without a `tls-server-end-point` hash fails the
    /// handshake (tokio-postgres would only say that the server did not use channel binding).
    binding_required: bool,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("check_name", &self.check_name)
            .field("roots", &self.roots)
            .field("verifies", &self.verifies)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PgTls {
    /// The connector for `settings` (`None` for `sslmode=disable`). Errors name the file and what is wrong
    /// with it.
    pub fn new(settings: &TlsSettings) -> Result<Option<PgTls>, String> {
        if settings.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        let roots = match &settings.root {
            Some(Roots::File(path)) => Some((
                Arc::new(load_roots(path)?),
                format!("sslrootcert {}", path.display()),
            )),
            Some(Roots::System) => Some((Arc::new(system_roots()?), system_roots_name())),
            None if settings.mode == SslMode::VerifyFull => {
                Some((Arc::new(system_roots()?), system_roots_name()))
            }
            None => None,
        };
        let roots_name = roots
            .as_ref()
            .map_or_else(|| "no roots (not verified)".to_string(), |(_, n)| n.clone());
        let verifies = match (settings.mode, &roots) {
            (SslMode::VerifyFull, Some(_)) => "chain and host name",
            (_, Some(_)) => "chain",
            (_, None) => "nothing",
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, roots) {
            (SslMode::VerifyFull, Some((roots, _))) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("cannot set up certificate verification: {e}"))?
            }
            (_, Some((roots, _))) => Arc::new(ChainOnly { roots, algorithms }),
            (_, None) => Arc::new(Unverified { algorithms }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &settings.client {
            Some((cert, key)) => {
                let material = crate::tls::load_pem_files(cert, key).map_err(|e| {
                    if is_encrypted_key(key) {
                        format!(
                            "sslkey {}: the key is encrypted, and encrypted keys are not supported (no \
                             sslpassword): store it decrypted (e.g. `openssl pkey -in KEY -out NEW`), readable \
                             by the node's user only",
                            key.display()
                        )
                    } else {
                        format!("sslcert/sslkey: {e}")
                    }
                })?;
                builder
                    .with_client_auth_cert(material.cert_chain, material.key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        // What libpq (17) offers; required by servers that accept direct TLS (`sslnegotiation=direct`).
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        config.enable_sni = settings.sni;
        Ok(Some(PgTls {
            config: Arc::new(config),
            check_name: settings.mode == SslMode::VerifyFull,
            roots: roots_name.into(),
            verifies,
            handshakes: Arc::default(),
            binding_required: false,
        }))
    }

    /// With `channel_binding=require`: refuse, at the handshake, a server certificate that channel binding
    /// cannot use (signed with Ed25519 or RSA-PSS), saying so.
    pub fn with_channel_binding_required(mut self, required: bool) -> PgTls {
        self.binding_required = required;
        self
    }

    /// What is checked of the server's certificate: "chain and host name", "chain" or "nothing".
    pub fn verifies(&self) -> &'static str {
        self.verifies
    }

    /// TLS handshakes completed so far by this connector and its clones.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

/// Whether the PEM file at `path` holds an encrypted private key (PKCS#8 `ENCRYPTED PRIVATE KEY`, or a
/// traditional key with `Proc-Type: 4,ENCRYPTED`).
fn is_encrypted_key(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|pem| {
        let pem = zeroize::Zeroizing::new(pem);
        let text = String::from_utf8_lossy(&pem);
        text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || text.contains("Proc-Type: 4,ENCRYPTED")
    })
}

fn system_roots_name() -> String {
    "the system's trusted roots".to_string()
}

/// The CA certificates in a PEM file (at least one, each usable as a trust anchor).
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let where_ = || format!("sslrootcert {}", path.display());
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot read it: {e}", where_()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM ({e})", where_()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM CERTIFICATE block found", where_()));
    }
    let mut roots = RootCertStore::empty();
    for (n, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("{}: certificate {} is not usable: {e}", where_(), n + 1))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(crate::tls::platform_roots().iter().cloned());
    if roots.is_empty() {
        return Err(
            "no system root certificates found: set sslrootcert=PATH to the CA file".into(),
        );
    }
    Ok(roots)
}

/// Trusts any certificate the server shows (`prefer`, `require` without roots), but still checks the
/// handshake's signatures: the server proves it holds that certificate's key.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

/// Checks the chain against the roots and nothing about the name (`verify-ca`, or `prefer`/`require` with
/// `sslrootcert`, as libpq does).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, io::Error> {
        let name = match ServerName::try_from(host.to_string()) {
            Ok(name) => name,
            // Only verify-full needs the name; otherwise it is only sent as SNI (an IP address is not).
            Err(_) if !self.check_name => ServerName::IpAddress(rustls::pki_types::IpAddr::V4(
                rustls::pki_types::Ipv4Addr::from([0, 0, 0, 0]),
            )),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the host '{host}' is not a valid DNS name or IP address to check the server's \
                         certificate against (sslmode=verify-full)"
                    ),
                ));
            }
        };
        Ok(PgTlsConnect {
            tls: self.clone(),
            name,
        })
    }
}

/// One handshake, to one host.
pub struct PgTlsConnect {
    tls: PgTls,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.tls.config.clone());
            match connector.connect(self.name.clone(), stream).await {
                Ok(stream) => {
                    if self.tls.binding_required {
                        let hashable = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| tls_server_end_point(cert))
                            .is_some();
                        if !hashable {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "channel_binding=require cannot be met: the server's certificate is signed \
                                 with an algorithm that has no tls-server-end-point hash (Ed25519 or RSA-PSS); \
                                 give the server a certificate signed with ECDSA or RSA (PKCS#1 v1.5), or \
                                 verify it (sslmode=verify-full with sslrootcert) instead",
                            ));
                        }
                    }
                    self.tls.handshakes.fetch_add(1, Ordering::Relaxed);
                    Ok(PgTlsStream(stream))
                }
                Err(e) => Err(explain(e, &self.tls, &self.name)),
            }
        })
    }
}

/// A handshake failure, said in terms of the settings.
fn explain(e: io::Error, tls: &PgTls, name: &ServerName<'_>) -> io::Error {
    use rustls::CertificateError as C;
    let Some(rustls_error) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e;
    };
    let what = match rustls_error {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the server's certificate is not signed by a CA in {} ({rustls_error})",
            tls.roots
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!(
                "the server's certificate is not valid for the host name '{}' ({rustls_error})",
                name.to_str()
            )
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate is refused: it has expired".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is refused: it is not valid yet".to_string()
        }
        // webpki's reasons come as text (its Display is its Debug), e.g. `CaUsedAsEndEntity`.
        rustls::Error::InvalidCertificate(C::Other(other)) => match other.to_string().as_str() {
            "CaUsedAsEndEntity" => {
                "the server's certificate is refused: it is a CA certificate, not a server's".to_string()
            }
            reason if reason.starts_with("RequiredEkuNotFound") => {
                "the server's certificate is refused: its extended key usage does not allow a server"
                    .to_string()
            }
            reason => format!("the server's certificate is refused ({reason})"),
        },
        rustls::Error::InvalidCertificate(reason) => {
            format!("the server's certificate is refused ({reason:?})")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "TLS handshake failed: the server sent the alert {alert:?} (a server key it cannot use with \
             this client, e.g. RSA-PSS, or a client certificate it refused)"
        ),
        other => format!("TLS handshake failed: {other}"),
    };
    io::Error::new(e.kind(), what)
}

/// A TLS connection to PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.0.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| tls_server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929's `tls-server-end-point`: the hash of the server's certificate, with the hash function of the
/// certificate's signature algorithm (SHA-256 for MD5 and SHA-1). `None` for algorithms without one
/// (Ed25519, RSA-PSS): PostgreSQL cannot compute it either, and SCRAM then runs without channel binding.
fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use crate::auth::assertion::der;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, signature }
    let (SEQUENCE, certificate, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, _, rest) = der(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = der(rest)? else {
        return None;
    };
    let (OID, oid, _) = der(algorithm)? else {
        return None;
    };
    let digest = match oid {
        // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption, ecdsa-with-SHA1/SHA256
        [
            0x2a,
            0x86,
            0x48,
            0x86,
            0xf7,
            0x0d,
            0x01,
            0x01,
            0x04 | 0x05 | 0x0b,
        ]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => &ring::digest::SHA256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &ring::digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(digest, cert).as_ref().to_vec())
}

#[cfg(test)]
mod tests;
