//! Server configuration: typed, explicit, passed in. Read from a TOML file, then overridden by the
//! environment and flags (the CLI does the overriding).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The most `mmap_mib` may be: SQLite maps at most 2 GiB less 64 KiB (its `SQLITE_MAX_MMAP_SIZE`).
pub const MAX_MMAP_MIB: u64 = 2047;

/// The smallest `audit_max_bytes` accepted (see [`Config::validate`]).
pub const MIN_AUDIT_MAX_BYTES: u64 = 1024 * 1024;

/// Everything `keyvault serve` needs to know.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen. Default `127.0.0.1:8443`.
    pub addr: SocketAddr,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP, no authentication: counts only, never a
    /// secret's name or value). Default: off. Any address is accepted, `0.0.0.0:9090` included (a scrape
    /// endpoint on the pod network is normal in Kubernetes); keep it off networks that should not see request
    /// rates.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the database, keys and dev certificates live. Default `./keyvault-data`.
    pub data_dir: PathBuf,
    /// Development mode: generate a CA and server certificate, create a client, write dev-credentials.json.
    pub dev: bool,
    /// The vault's name (part of the values' associated data; shown in `vault_url_named`). Default `myvault`.
    pub vault_name: String,
    /// The tenant id in tokens, the challenge and the issuer's paths. Default `keyvault-rs`.
    pub tenant_id: String,
    /// Days a deleted secret stays recoverable, 7–90. Default 90.
    pub retention_days: u32,
    /// Refuse purges of deleted secrets before their retention ends. Default off.
    pub purge_protection: bool,
    /// The DNS suffix vaults are addressed under: a vault at `https://{name}.{suffix}` answers the challenge
    /// with `resource="https://{suffix}"`. Default `localhost:{port}`.
    pub resource_suffix: Option<String>,
    /// The host (and port) in the `iss` claim of issued tokens and in the challenge's `authorization`.
    /// Default: the listening address.
    pub issuer_host: Option<String>,
    /// Lifetime of issued access tokens, in seconds. Default 3600.
    pub token_lifetime_secs: i64,
    /// Seconds between runs of the retention sweeper. Default 60.
    pub sweep_interval_secs: u64,
    /// Seconds a connection may stay without traffic either way before the server closes it (1–86400).
    /// Default 120. A client sending for 30 s (or this long, if shorter) without an answer is cut off too.
    pub idle_timeout_secs: u64,
    /// Connections one source may hold open at once (an IPv4 address, or an IPv6 /64: one host's usual
    /// share), so that one client cannot take all of the server's 4,096; past it, a new connection from that
    /// source is closed at once. 0: no limit per source (behind a proxy whose connections all come from one
    /// address, if it opens more than this many). Default 512.
    pub max_connections_per_source: u32,
    pub tls: TlsConfig,
    /// OAuth clients allowed to get tokens (client credentials).
    pub clients: Vec<ClientConfig>,
    /// Where secrets are stored: absent or `"sqlite"` = the embedded SQLite database `vault.db` in the data
    /// directory; `"sqlite:PATH"` = another SQLite file; `"postgres://user:password@host:port/dbname"` = a
    /// PostgreSQL database that any number of server nodes may share (TLS: libpq's `sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey` and `sslsni` as query parameters; see [`crate::store::postgres::tls`]).
    pub store: Option<StoreLocation>,
    /// MiB of memory for the SQLite store's cache of live secrets' latest versions (rows as stored: values
    /// stay sealed). Reads of cached secrets skip the database. 0 turns it off. Default 64. (PostgreSQL: no
    /// cache; other nodes write too.)
    pub cache_mib: u64,
    /// MiB of the SQLite database file each reader connection maps into memory (SQLite's `mmap_size`;
    /// 0–2047). Default 0: reads copy pages with `pread`. Mapped, a read that misses the cache costs about
    /// half as much (BENCHMARKS.md, session 9), but the mapped pages count in the process's resident memory
    /// (up to the file's size), and an I/O error on the file becomes a crash instead of an error.
    pub mmap_mib: u64,
    /// PostgreSQL connections this node keeps open at most (1–1000). Default 16. Size it so that every
    /// node's pool (plus two connections of its own per node: the leader lock's and the access document's) fits
    /// the database's `max_connections`.
    pub pg_pool_size: usize,
    /// The key-encryption key file (created at first start if missing). Default `{data_dir}/kek.key`.
    /// Every node over one shared store must use the same key (this file, or `KEYVAULT_KEK`).
    pub kek_file: Option<PathBuf>,
    /// Previous key-encryption key files (existing, one key each, like `kek_file`): they open values,
    /// backup blobs and listing cursors sealed under them, and never seal. Also `KEYVAULT_PREVIOUS_KEKS`
    /// (comma-separated, each 64 hex characters or base64). To rotate: make a new key (`keyvault kek new`), list the old one here and
    /// make the new one current, run `keyvault rekey`, then drop the old one (README: "Rotating the
    /// key-encryption key").
    pub previous_kek_files: Vec<PathBuf>,
    /// The token signing key file (PKCS#8 PEM; created at first start if missing). Default
    /// `{data_dir}/token-signing-key.pk8`. Nodes that share it accept each other's tokens.
    pub signing_key_file: Option<PathBuf>,
    /// Retired token signing keys (existing PKCS#8 files): still published in the JWKS and accepted, never
    /// used to sign. To rotate: generate a new `signing_key_file`, list the old one here until the tokens it
    /// signed have expired (`token_lifetime_secs`), then drop it.
    pub previous_signing_key_files: Vec<PathBuf>,
    /// Custom roles (`[[roles]] name = "…", permissions = ["get", "list"]`), in addition to the built-ins.
    pub roles: Vec<RoleConfig>,
    /// Role assignments (`[[assignments]] principal = "<client id>", role = "Key Vault Secrets User",
    /// scope = "/" | "/secrets/NAME" | "/secrets/PREFIX*"`).
    pub assignments: Vec<AssignmentConfig>,
    /// The role a `[[clients]]` entry gets on the whole vault when no `[[assignments]]` entry names it (so
    /// configurations from before access control keep working). Default `"Key Vault Administrator"`;
    /// `"none"` (or empty) = such clients may do nothing until assigned a role.
    pub default_client_role: String,
    /// The role of the `--dev` client on the whole vault (in addition to any assignment). Default
    /// `"Key Vault Administrator"`; `"none"` = only its assignments.
    pub dev_client_role: String,
    /// The audit log: one hash-chained JSON line per request decision. Default: off, except in `--dev`
    /// mode, where it is `{data_dir}/audit.log`. `"none"` turns it off in dev mode too.
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated (renamed to `FILE.N`; the chain continues in the new file).
    /// Default 64 MiB.
    pub audit_max_bytes: u64,
    /// Rotated audit files kept: after a rotation the oldest beyond this many are deleted (the chain then
    /// starts mid-way, which [`crate::audit::verify_chain`] reports as incomplete). Default 0 = keep them all.
    pub audit_keep_files: u32,
    /// Throttling, like Key Vault's service limits: at most this many authenticated requests per window
    /// (10 s) on this vault; more get 429 `Throttled` with `Retry-After`. Default: off. (Key Vault: 4000.)
    pub rate_limit_per_10s: Option<u32>,
    /// A separate budget for creates (PUT) per window; unset = creates count against
    /// `rate_limit_per_10s`. Default: off. (Key Vault: 300.)
    pub rate_limit_create_per_10s: Option<u32>,
    /// External OIDC issuers whose tokens are accepted (`[[trusted_issuers]] issuer, audience, jwks_file`,
    /// `jwks_url` or `discovery = true` (`ca_file`, `jwks_refresh_secs`), `principal_claim`); their principal
    /// is the claim's value (default `sub`), for `[[assignments]]`.
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
    /// Accept a certificate's client assertion again while it is valid. Default `true`, as Entra ID does:
    /// MSAL, under azure-identity's `CertificateCredential`, reuses one assertion for up to 9 minutes when it
    /// asks for another token, and the official SDKs must work unchanged. `false`: an assertion id (`jti`) is
    /// accepted once (replays refused, per node).
    pub allow_client_assertion_reuse: bool,
    /// The throttling window in seconds. Default 10 (Key Vault's); the limits' names keep saying "10s".
    pub rate_limit_window_secs: u64,
    /// The bounds on request bodies and on backups and restores in progress
    /// ([`crate::http::limits`]). Not read from the file (always the defaults there): tests shorten them.
    #[serde(skip)]
    pub request_limits: crate::http::limits::RequestLimits,
    /// Accept an access-control document without an integrity tag (one an older build wrote) and save it
    /// tagged (`keyvault serve --adopt-access-document`). Not read from the file: a one-time decision of the
    /// operator's at one start, never a standing setting (an untagged document is also what a writer of the
    /// store without the key-encryption key would leave).
    #[serde(skip)]
    pub adopt_access_document: bool,
}

/// A custom role: a name and a permission set (`get`, `list`, `set`, `delete`, `recover`, `backup`,
/// `restore`, `purge`, `admin`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    pub permissions: Vec<crate::auth::policy::Permission>,
}

/// A role assignment: a principal (client id or external identity id), a role (name or built-in Azure
/// role id) and a scope (default the whole vault).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentConfig {
    pub principal: String,
    pub role: String,
    #[serde(default)]
    pub scope: Option<String>,
}

/// A trusted external token issuer: the exact `iss`, the `aud` its tokens must carry, its keys (ES256 and
/// RS256 keys of a JWKS) and the claim naming the principal (default `sub`).
///
/// The keys come from exactly one of `jwks_file` (read at start), `jwks_url` (`https://…`; `http://` only
/// to 127.0.0.1, `localhost` or `::1`) and `discovery = true` (OpenID Connect discovery: the `jwks_uri` of
/// `{issuer}/.well-known/openid-configuration`, whose `issuer` must be `issuer` exactly; the issuer itself
/// is then a URL under `jwks_url`'s rules). Fetched keys are fetched at start, every `jwks_refresh_secs`
/// (default 3600), and when a token names a `kid` the issuer doesn't know (see [`crate::auth::external`]).
/// `ca_file`: PEM certificates that are then the only roots trusted for those fetches (for a private
/// issuer: Keycloak, Kubernetes…); default: the platform's roots.
#[derive(Clone, Default, Deserialize)]
#[serde(try_from = "TrustedIssuerToml")]
pub struct TrustedIssuerConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// Find the JWKS URL by OpenID Connect discovery. Default `false`.
    pub discovery: bool,
    pub ca_file: Option<PathBuf>,
    pub jwks_refresh_secs: Option<u64>,
    pub principal_claim: Option<String>,
}

impl std::fmt::Debug for TrustedIssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuerConfig")
            .field("issuer", &redact_url_password(&self.issuer))
            .field("audience", &self.audience)
            .field("jwks_file", &self.jwks_file)
            .field(
                "jwks_url",
                &self
                    .jwks_url
                    .as_deref()
                    .map(crate::auth::external::redact_query),
            )
            .field("discovery", &self.discovery)
            .field("ca_file", &self.ca_file)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("principal_claim", &self.principal_claim)
            .finish()
    }
}

/// [`TrustedIssuerConfig`] as written, checked on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedIssuerToml {
    issuer: String,
    audience: String,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    jwks_refresh_secs: Option<u64>,
    #[serde(default)]
    principal_claim: Option<String>,
}

impl TryFrom<TrustedIssuerToml> for TrustedIssuerConfig {
    type Error = ConfigError;

    fn try_from(t: TrustedIssuerToml) -> Result<Self, ConfigError> {
        let c = TrustedIssuerConfig {
            issuer: t.issuer,
            audience: t.audience,
            jwks_file: t.jwks_file,
            jwks_url: t.jwks_url,
            discovery: t.discovery,
            ca_file: t.ca_file,
            jwks_refresh_secs: t.jwks_refresh_secs,
            principal_claim: t.principal_claim,
        };
        c.validate()?;
        Ok(c)
    }
}

impl TrustedIssuerConfig {
    /// Checks the settings without reading any file or fetching anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let issuer = redact_url_password(&self.issuer);
        let bad = |what: &str| ConfigError(format!("trusted issuer '{issuer}': {what}"));
        if self.issuer.trim().is_empty() || self.audience.trim().is_empty() {
            return Err(bad("issuer and audience must not be empty"));
        }
        match (&self.jwks_file, &self.jwks_url) {
            _ if self.discovery && (self.jwks_file.is_some() || self.jwks_url.is_some()) => {
                return Err(bad(
                    "with discovery = true the keys' URL comes from the issuer's discovery document: \
                     leave out jwks_file and jwks_url",
                ));
            }
            (Some(_), Some(_)) => return Err(bad("set either jwks_file or jwks_url, not both")),
            (None, None) if self.discovery => {
                crate::auth::external::discovery_url(&self.issuer).map_err(|e| bad(&e))?;
            }
            (None, None) => return Err(bad("set jwks_file, jwks_url or discovery = true")),
            (Some(_), None) => {
                if self.ca_file.is_some() || self.jwks_refresh_secs.is_some() {
                    return Err(bad(
                        "ca_file and jwks_refresh_secs apply to jwks_url only, not to jwks_file",
                    ));
                }
            }
            (None, Some(url)) => {
                crate::auth::external::check_jwks_url(url).map_err(|e| bad(&e))?;
            }
        }
        let max = crate::auth::external::MAX_JWKS_REFRESH_SECS;
        if self
            .jwks_refresh_secs
            .is_some_and(|secs| secs == 0 || secs > max)
        {
            return Err(bad(&format!("jwks_refresh_secs must be 1 to {max}")));
        }
        Ok(())
    }

    /// Builds the issuer: reads the JWKS file, or prepares fetching the JWKS URL or the discovery document
    /// (nothing is fetched yet: see [`TrustedIssuer::refresh`](crate::auth::external::TrustedIssuer::refresh)).
    pub fn load(&self) -> Result<crate::auth::external::TrustedIssuer, ConfigError> {
        use crate::auth::external::{DEFAULT_JWKS_REFRESH_SECS, RemoteJwks, TrustedIssuer};
        self.validate()?;
        let issuer = redact_url_password(&self.issuer);
        let bad = |e: String| ConfigError(format!("trusted issuer '{issuer}': {e}"));
        let claim = self.principal_claim.as_deref();
        let ca_pem = || match &self.ca_file {
            Some(path) => std::fs::read(path)
                .map(Some)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            None => Ok(None),
        };
        let refresh = std::time::Duration::from_secs(
            self.jwks_refresh_secs.unwrap_or(DEFAULT_JWKS_REFRESH_SECS),
        );
        match (&self.jwks_file, &self.jwks_url) {
            (Some(file), _) => TrustedIssuer::load(&self.issuer, &self.audience, file, claim),
            (None, Some(url)) => ca_pem().and_then(|ca_pem| {
                let source = RemoteJwks {
                    url: url.clone(),
                    ca_pem,
                    refresh,
                };
                TrustedIssuer::from_url(&self.issuer, &self.audience, source, claim)
            }),
            (None, None) => ca_pem().and_then(|ca_pem| {
                TrustedIssuer::from_discovery(
                    &self.issuer,
                    &self.audience,
                    ca_pem.as_deref(),
                    refresh,
                    claim,
                )
            }),
        }
        .map_err(bad)
    }
}

/// The `store` setting: a backend name or URL. Its `Debug` hides a password in the URL.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreLocation(pub String);

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url_password(&self.0))
    }
}

/// A connection string with its passwords replaced by `***`: the URL form's
/// `scheme://user:password@host…` (up to the last `@` before the query: tokio-postgres ends the user
/// information at the first `@`, a person may mean the last; either way nothing of the password shows) and every
/// `password=` value, in a URL's query (`?password=…&…`) or in the key=value form (`host=h password=… user=u`,
/// quoted or not). White space around the string is kept, and read past as the store setting reads it. Other
/// strings are unchanged.
pub fn redact_url_password(url: &str) -> String {
    let trimmed = url.trim_start();
    let lead = &url[..url.len() - trimmed.len()];
    let redacted = redact_password_values(&redact_encoded_query_passwords(
        &redact_userinfo_password(trimmed),
    ));
    format!("{lead}{redacted}")
}

/// A URL query parameter whose name is `password` once percent-decoded (`pass%77ord=…`, which the driver
/// reads as `password`): its value, up to the next `&`, replaced by `***`. Other parameters are left as
/// written. Every `?` may start the query (one can sit in the user part, `postgres://me?x@host/db?…`, where the
/// driver's query starts at a later one), and a value runs past a `?` in it.
fn redact_encoded_query_passwords(url: &str) -> String {
    if url_scheme(url).is_none() || !url.contains('?') || !url.contains('%') {
        return url.to_string();
    }
    let bytes = url.as_bytes();
    let mut out = String::with_capacity(url.len());
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        // Every index compared or cut at is an ASCII byte's: a character boundary.
        if !matches!(bytes[i], b'?' | b'&') {
            i += 1;
            continue;
        }
        let start = i + 1;
        let name_end = url[start..]
            .find(['=', '&', '?'])
            .map_or(url.len(), |k| start + k);
        let name = form_urlencoded::parse(&bytes[start..name_end])
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        if bytes.get(name_end) != Some(&b'=') || !name.eq_ignore_ascii_case("password") {
            i += 1;
            continue;
        }
        let value_start = name_end + 1;
        let value_end = url[value_start..]
            .find('&')
            .map_or(url.len(), |k| value_start + k);
        out.push_str(&url[copied..value_start]);
        out.push_str("***");
        (copied, i) = (value_end, value_end);
    }
    out.push_str(&url[copied..]);
    out
}

/// Whether [`redact_url_password`] hides anything in `url`: it carries a password.
pub fn has_password(url: &str) -> bool {
    redact_url_password(url) != url
}

/// `scheme://user:password@rest` → `scheme://user:***@rest`, splitting at the last `@` before the query.
fn redact_userinfo_password(url: &str) -> String {
    let Some(scheme) = url_scheme(url) else {
        return url.to_string();
    };
    let rest = &url[scheme.len() + 3..];
    // The user part ends at the last `@` before the query, which starts at the first `?` after the first `@`
    // (a `?` before it is the user part's: `me?x@host`); an `@` in the query (`?password=a@b`) is the query's.
    let query = rest
        .find('@')
        .and_then(|at| rest[at..].find('?').map(|q| at + q))
        .unwrap_or(rest.len());
    match rest[..query].rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{}", &rest[query..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Replaces the value of every `password` parameter: in a URL's query (after `?` or `&`, up to the next `&`)
/// or in a key=value string ([`redact_key_value_passwords`]).
fn redact_password_values(s: &str) -> String {
    if url_scheme(s).is_none() {
        return redact_key_value_passwords(s);
    }
    const KEY: &str = "password";
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // `i` is at an ASCII byte when the key matches there, so `s[..i]` is on a character boundary.
        let at_key = i > 0
            && matches!(bytes[i - 1], b'?' | b'&')
            && bytes[i..].len() > KEY.len()
            && bytes[i..i + KEY.len()].eq_ignore_ascii_case(KEY.as_bytes())
            && bytes[i + KEY.len()] == b'=';
        if !at_key {
            i += 1;
            continue;
        }
        let value_start = i + KEY.len() + 1;
        let mut j = value_start;
        while j < bytes.len() && bytes[j] != b'&' {
            j += 1;
        }
        out.push_str(&s[copied..value_start]);
        out.push_str("***");
        copied = j;
        i = j;
    }
    out.push_str(&s[copied..]);
    out
}

/// The scheme of `s` when it is a URL (`scheme://…`; a key=value string's first key is followed by `=` or
/// white space, which no scheme holds).
fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && (scheme.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    is_scheme.then_some(scheme)
}

/// Whether `value` holds what reads as a password pair (`password=`, any case, white space before `=`
/// allowed): such a value is hidden too, whatever its key — a string a reader could split otherwise.
pub(crate) fn mentions_password(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    lower
        .match_indices("password")
        .any(|(at, key)| lower[at + key.len()..].trim_start().starts_with('='))
}

/// A key=value connection string with the value of every `password` key (any case) replaced by `***`, read
/// pair by pair as tokio-postgres reads it: pairs apart by any Unicode white space (or none after a quoted
/// value), a key up to white space or `=`, `=` with white space around it allowed, and a value quoted with `'`
/// (to the closing quote) or up to white space, a backslash escaping the next character in either. So a
/// `password=` inside another key's value is that value, not a key. Text that is not a pair is kept as it is.
fn redact_key_value_passwords(s: &str) -> String {
    /// The white space `rest` starts with, moved to `out`.
    fn white_space<'a>(rest: &'a str, out: &mut String) -> &'a str {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        trimmed
    }
    /// The length of the value `rest` starts with.
    fn value_len(rest: &str) -> usize {
        let quoted = rest.starts_with('\'');
        let mut chars = rest.char_indices().skip(usize::from(quoted));
        while let Some((k, c)) = chars.next() {
            if quoted && c == '\'' {
                return k + 1;
            }
            if !quoted && c.is_whitespace() {
                return k;
            }
            if c == '\\' {
                chars.next();
            }
        }
        rest.len()
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        rest = white_space(rest, &mut out);
        if rest.is_empty() {
            return out;
        }
        let key_len = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        out.push_str(key);
        rest = white_space(&rest[key_len..], &mut out);
        // Not a pair (tokio-postgres refuses the string): what follows is read as the next key.
        let Some(value) = rest.strip_prefix('=') else {
            continue;
        };
        out.push('=');
        rest = white_space(value, &mut out);
        let len = value_len(rest);
        if key.eq_ignore_ascii_case("password") || mentions_password(&rest[..len]) {
            out.push_str("***");
        } else {
            out.push_str(&rest[..len]);
        }
        rest = &rest[len..];
    }
}

/// The storage backend a configuration selects.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded SQLite database at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL database (connection URL, which may hold a password).
    Postgres(String),
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreBackend::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreBackend::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&redact_url_password(url))
                .finish(),
        }
    }
}

/// TLS certificate and key (PEM files). Required unless `dev` is on.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Seconds between looks at the certificate and key files (what their paths resolve to: size, times,
    /// inode); a change reloads them without a restart (as SIGHUP does). 0 turns the watch off. Default 60.
    /// The `--dev` certificates are not reloaded.
    pub reload_interval_secs: u64,
}

/// The default of [`TlsConfig::reload_interval_secs`].
pub const DEFAULT_TLS_RELOAD_INTERVAL_SECS: u64 = 60;

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            reload_interval_secs: DEFAULT_TLS_RELOAD_INTERVAL_SECS,
        }
    }
}

/// An OAuth client: its id and how it proves it: the argon2 hashes (PHC strings) of its secrets — several,
/// for rotation —, certificates (client assertions signed with their keys), federated credentials (tokens of
/// a trusted issuer: workload identity).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// Hashes of secrets that do not expire.
    #[serde(default)]
    pub secret_hashes: Vec<String>,
    /// Secrets with an expiry: `secrets = [{ hash = "$argon2id$…", expires_on = 2030-01-01T00:00:00Z }]`
    /// (a TOML date-time with an offset, the same as an RFC 3339 string, or Unix seconds).
    #[serde(default)]
    pub secrets: Vec<ClientSecretConfig>,
    /// PEM files of the client's certificates (public certificates; every certificate of a file counts). Each
    /// signs valid assertions only within its validity period (notBefore to notAfter): one that is expired or
    /// not yet valid is loaded all the same, with a warning at start, and its assertions are refused.
    #[serde(default)]
    pub certificates: Vec<PathBuf>,
    /// Federated credentials: `federated = [{ issuer = "…", subject = "system:serviceaccount:ns:sa" }]`.
    #[serde(default)]
    pub federated: Vec<FederatedConfig>,
}

/// The hashes are not shown: a hash is what an offline guess of the secret is checked against.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field(
                "secret_hashes",
                &format_args!("<{} redacted>", self.secret_hashes.len()),
            )
            .field("secrets", &self.secrets)
            .field("certificates", &self.certificates)
            .field("federated", &self.federated)
            .finish()
    }
}

/// A federated credential: tokens of `issuer` (one of `[[trusted_issuers]]`) whose `sub` is `subject` and whose
/// `aud` is `audience` (default `api://AzureADTokenExchange`) stand for the client.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedConfig {
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub audience: Option<String>,
}

impl FederatedConfig {
    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        self.audience
            .as_deref()
            .unwrap_or(crate::auth::assertion::DEFAULT_FEDERATED_AUDIENCE)
    }
}

/// One client secret's hash and, optionally, when it stops being accepted (Unix seconds).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSecretConfig {
    pub hash: String,
    #[serde(default, deserialize_with = "unix_seconds")]
    pub expires_on: Option<i64>,
}

/// The hash is not shown (see [`ClientConfig`]'s `Debug`).
impl std::fmt::Debug for ClientSecretConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecretConfig")
            .field("hash", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// A moment as Unix seconds, written as an integer, a TOML date-time with an offset, or an RFC 3339 string.
fn unix_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let rfc3339 = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| Some(t.unix_timestamp()))
            .map_err(|_| {
                // Not quoted: a configuration error never repeats the file's text.
                D::Error::custom(format!(
                    "not a date-time with an offset (e.g. 2030-01-01T00:00:00Z){}",
                    if s.is_empty() { " (empty)" } else { "" }
                ))
            })
    };
    match toml::Value::deserialize(d)? {
        toml::Value::Integer(secs) => Ok(Some(secs)),
        toml::Value::String(s) => rfc3339(&s),
        toml::Value::Datetime(t) => rfc3339(&t.to_string()),
        other => Err(D::Error::custom(format!(
            "expected a date-time or Unix seconds, not a {}",
            other.type_str()
        ))),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            metrics_addr: None,
            data_dir: PathBuf::from("keyvault-data"),
            dev: false,
            vault_name: "myvault".to_string(),
            tenant_id: "keyvault-rs".to_string(),
            retention_days: 90,
            purge_protection: false,
            resource_suffix: None,
            issuer_host: None,
            token_lifetime_secs: 3600,
            sweep_interval_secs: 60,
            idle_timeout_secs: 120,
            max_connections_per_source: 512,
            cache_mib: 64,
            mmap_mib: 0,
            pg_pool_size: crate::store::postgres::POOL_SIZE,
            tls: TlsConfig::default(),
            clients: Vec::new(),
            store: None,
            kek_file: None,
            previous_kek_files: Vec::new(),
            signing_key_file: None,
            previous_signing_key_files: Vec::new(),
            roles: Vec::new(),
            assignments: Vec::new(),
            default_client_role: crate::auth::policy::ADMINISTRATOR.to_string(),
            dev_client_role: crate::auth::policy::ADMINISTRATOR.to_string(),
            audit_log: None,
            audit_max_bytes: 64 * 1024 * 1024,
            audit_keep_files: 0,
            rate_limit_per_10s: None,
            rate_limit_create_per_10s: None,
            rate_limit_window_secs: 10,
            trusted_issuers: Vec::new(),
            allow_client_assertion_reuse: true,
            request_limits: Default::default(),
            adopt_access_document: false,
        }
    }
}

/// `invalid configuration: line L, column C: reason`, with any double-quoted text in the reason (serde quotes
/// a string value of the wrong type: `invalid type: string "…", expected u32`) hidden.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let mut reason = String::with_capacity(e.message().len());
    // Whether inside a double-quoted text being hidden (serde quotes a string value in `"`, with `\"` inside
    // it escaped); identifiers in backticks (property names) and this crate's own messages are kept.
    let mut quoted: Option<char> = None;
    let mut escaped = false;
    for c in e.message().trim().chars() {
        match quoted {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    reason.push(q);
                    quoted = None;
                }
            }
            None if c == '"' => {
                reason.push(c);
                reason.push('…');
                quoted = Some(c);
            }
            // toml's reasons can span lines ("invalid string\nexpected …"): one line.
            None if c == '\n' => reason.push_str("; "),
            None => reason.push(c),
        }
    }
    if quoted.is_some() {
        reason.push('…');
    }
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            format!("invalid configuration: line {line}, column {column}: {reason}")
        }
        None => format!("invalid configuration: {reason}"),
    }
}

/// Whether a `store` setting is libpq's `key=value` form (`host=db dbname=kv user=kv …`): it starts with a
/// setting's name (lower-case letters and `_`) and `=`. What it says is checked when the store is opened.
fn is_key_value_form(location: &str) -> bool {
    let name_end = location
        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .unwrap_or(location.len());
    name_end > 0 && location[name_end..].trim_start().starts_with('=')
}

/// A configuration that cannot be used, and why. Shown with what could be a secret put in the wrong
/// setting hidden ([`scrub_secrets`]): a URL's password, a client secret's hash.
#[derive(thiserror::Error)]
#[error("{}", scrub_secrets(.0))]
pub struct ConfigError(pub String);

impl std::fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConfigError")
            .field(&scrub_secrets(&self.0))
            .finish()
    }
}

/// `text` with every client-secret hash (`$argon2…`, up to the next white space or quote) cut to its
/// algorithm, and every URL's password (`scheme://user:password@…`) replaced by `***`: a refusal quotes the
/// setting's value, and a hash or a URL with credentials can be given in the wrong setting.
pub fn scrub_secrets(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("$argon2") && !text.contains("://") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("$argon2") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        // A PHC string's characters: `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`.
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "$=,+/.-_".contains(c)))
            .unwrap_or(tail.len());
        let algorithm_end = tail[1..].find('$').map_or(end, |i| (i + 1).min(end));
        out.push_str(&tail[..algorithm_end]);
        out.push_str("$…");
        rest = &tail[end..];
    }
    out.push_str(rest);
    if !out.contains("://") {
        return std::borrow::Cow::Owned(out);
    }
    // Each white-space- or quote-separated word that holds a URL, its password hidden.
    let mut scrubbed = String::with_capacity(out.len());
    let mut word_start = None;
    for (i, c) in out.char_indices().chain(std::iter::once((out.len(), ' '))) {
        let separator = c.is_whitespace() || matches!(c, '\'' | '"');
        match (word_start, separator) {
            (None, false) => word_start = Some(i),
            (Some(start), true) => {
                let word = &out[start..i];
                if word.contains("://") {
                    scrubbed.push_str(&redact_url_password(word));
                } else {
                    scrubbed.push_str(word);
                }
                word_start = None;
            }
            _ => {}
        }
        if separator && i < out.len() {
            scrubbed.push(c);
        }
    }
    std::borrow::Cow::Owned(scrubbed)
}

impl Config {
    /// Parse a TOML configuration file's text.
    /// A parse error names the place (line, column) and the reason, never the text there: the file can hold
    /// a store URL's password or a client secret (toml's own rendering quotes the line; serde's type errors
    /// quote the value).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(describe_toml_error(&e, text)))
    }

    /// The storage backend selected by `store`.
    pub fn store_backend(&self) -> Result<StoreBackend, ConfigError> {
        let Some(StoreLocation(location)) = &self.store else {
            return Ok(StoreBackend::Sqlite(self.data_dir.join("vault.db")));
        };
        let location = location.trim();
        if location.is_empty() {
            // Not the default: an empty value is more often a variable or template left unfilled (a
            // PostgreSQL URL that did not arrive) than a wish for SQLite, and on its own it would make each
            // node a vault of its own.
            return Err(ConfigError(
                "store is empty: leave it out (or write \"sqlite\") for the SQLite database in the data \
                 directory, or give \"sqlite:PATH\" or a postgres:// URL"
                    .to_string(),
            ));
        }
        if location == "sqlite" {
            Ok(StoreBackend::Sqlite(self.data_dir.join("vault.db")))
        } else if let Some(path) = location.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ConfigError(
                    "store = \"sqlite:\" needs a file path".to_string(),
                ));
            }
            Ok(StoreBackend::Sqlite(PathBuf::from(path)))
        } else if location.starts_with("postgres://")
            || location.starts_with("postgresql://")
            || is_key_value_form(location)
        {
            Ok(StoreBackend::Postgres(location.to_string()))
        } else {
            // Not echoed whole: a mistyped URL (`postgres:/user:password@…`) may carry a password anywhere.
            let start: String = location
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '-')
                .take(20)
                .collect();
            Err(ConfigError(format!(
                "store must be \"sqlite\", \"sqlite:PATH\", a postgres:// URL or a PostgreSQL key=value string; the one given starts with '{start}' and is not one of them"
            )))
        }
    }

    /// The key-encryption key file.
    pub fn kek_path(&self) -> PathBuf {
        self.kek_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("kek.key"))
    }

    /// The token signing key file.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("token-signing-key.pk8"))
    }

    /// The audit log file, if auditing is on.
    pub fn audit_log_path(&self) -> Option<PathBuf> {
        match &self.audit_log {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p.clone()),
            None if self.dev => Some(self.data_dir.join("audit.log")),
            None => None,
        }
    }

    /// The access policy the configuration describes: built-in and custom roles, the assignments, and the
    /// default role of `[[clients]]` entries without assignments. (The dev client is added by the server.)
    pub fn policy(&self) -> Result<crate::auth::policy::Policy, ConfigError> {
        use crate::auth::policy::{Assignment, Policy, Scope};
        let policy = Policy::new();
        let bad = |e: crate::auth::policy::PolicyError| ConfigError(format!("access control: {e}"));
        // A principal is compared exactly (with a token's `sub`), but an assignment's is trimmed when it is
        // made: `principal = " app"` would name "app" without saying so, and `client_id = " app"` would give a
        // default role to a principal no token names. Refused rather than trimmed here too, so that what the
        // file says is exactly what is in force.
        let named = (self.clients.iter()).map(|c| ("[[clients]] client_id", &c.client_id));
        let assigned =
            (self.assignments.iter()).map(|a| ("[[assignments]] principal", &a.principal));
        for (what, id) in named.chain(assigned) {
            if id.trim() != id {
                return Err(ConfigError(format!(
                    "access control: {what} {id:?} has leading or trailing whitespace; remove it"
                )));
            }
            // As the admin API's: nothing that would let a listing show one principal as another.
            if !crate::auth::policy::valid_principal_id(id) {
                return Err(ConfigError(format!(
                    "access control: {what} {id:?} must be 1-256 bytes, without control, invisible or \
                     bidirectional-formatting characters, spaces other than ASCII's or U+FFFD"
                )));
            }
        }
        for r in &self.roles {
            policy
                .define_role(&r.name, r.permissions.clone())
                .map_err(bad)?;
        }
        for a in &self.assignments {
            let scope = Scope::parse(a.scope.as_deref().unwrap_or("/")).map_err(bad)?;
            policy
                .assign(Assignment {
                    // Of the role's own name, however the configuration writes it.
                    id: crate::auth::configured_assignment_id(
                        &a.principal,
                        &policy.role_name(&a.role).unwrap_or_else(|| a.role.clone()),
                        &scope.to_string(),
                    ),
                    principal: a.principal.clone(),
                    role: a.role.clone(),
                    scope,
                })
                .map_err(bad)?;
        }
        if let Some(role) = role_setting(&self.default_client_role) {
            let clients = self.clients.iter().map(|c| c.client_id.clone());
            policy.set_default_role(role, clients).map_err(bad)?;
        }
        Ok(policy)
    }

    /// The request budgets.
    pub fn throttle_settings(&self) -> crate::http::throttle::ThrottleSettings {
        crate::http::throttle::ThrottleSettings {
            limit: self.rate_limit_per_10s,
            create_limit: self.rate_limit_create_per_10s,
            window: std::time::Duration::from_secs(self.rate_limit_window_secs),
        }
    }

    /// Check the values that have rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError(
                "data_dir is empty: give a directory (leave it out for ./keyvault-data)"
                    .to_string(),
            ));
        }
        if self
            .audit_log
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError(
                "audit_log is empty: give a file, or \"none\" to turn the audit log off"
                    .to_string(),
            ));
        }
        for (setting, value) in [
            ("resource_suffix", &self.resource_suffix),
            ("issuer_host", &self.issuer_host),
        ] {
            if let Some(v) = value
                && !is_host_and_port(v)
            {
                return Err(ConfigError(format!(
                    "{setting} must be a host name or address with an optional port (such as \
                     vault.example.com or vault.example.com:8443: no scheme, path, quotes or spaces), not {:?}",
                    v.chars().take(100).collect::<String>()
                )));
            }
        }
        if self.cache_mib > MAX_CACHE_MIB {
            return Err(ConfigError(format!(
                "cache_mib must be from 0 to {MAX_CACHE_MIB}, not {}",
                self.cache_mib
            )));
        }
        self.store_backend()?;
        self.policy()?;
        self.validate_client_credentials()?;
        if self
            .metrics_addr
            .is_some_and(|m| m == self.addr && m.port() != 0)
        {
            return Err(ConfigError(
                "metrics_addr must differ from addr (the metrics have a listener of their own)"
                    .to_string(),
            ));
        }
        if self.rate_limit_per_10s == Some(0) || self.rate_limit_create_per_10s == Some(0) {
            return Err(ConfigError(
                "rate_limit_per_10s and rate_limit_create_per_10s must be at least 1 (leave them out for no limit)"
                    .to_string(),
            ));
        }
        if !(1..=1000).contains(&self.pg_pool_size) {
            return Err(ConfigError(format!(
                "pg_pool_size must be from 1 to 1000, not {}",
                self.pg_pool_size
            )));
        }
        // Each rotation syncs the file it closes while mutations wait for their lines: files of a few KiB
        // rotate many times a second under load and slow every write (measured: a set took 0.9 s at 4 KiB).
        if self.audit_max_bytes < MIN_AUDIT_MAX_BYTES {
            return Err(ConfigError(format!(
                "audit_max_bytes must be at least {MIN_AUDIT_MAX_BYTES} (1 MiB), not {}",
                self.audit_max_bytes
            )));
        }
        if !(1..=86_400).contains(&self.idle_timeout_secs) {
            return Err(ConfigError(format!(
                "idle_timeout_secs must be from 1 to 86400, not {}",
                self.idle_timeout_secs
            )));
        }
        if self.max_connections_per_source > 4096 {
            return Err(ConfigError(format!(
                "max_connections_per_source must be from 0 (no limit) to 4096, not {}",
                self.max_connections_per_source
            )));
        }
        if self.mmap_mib > MAX_MMAP_MIB {
            return Err(ConfigError(format!(
                "mmap_mib must be from 0 to {MAX_MMAP_MIB}, not {}",
                self.mmap_mib
            )));
        }
        if !(1..=3600).contains(&self.rate_limit_window_secs) {
            return Err(ConfigError(
                "rate_limit_window_secs must be from 1 to 3600".to_string(),
            ));
        }
        use keyvault_types::rules::{MAX_RETENTION_DAYS, MIN_RETENTION_DAYS};
        if !(MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&self.retention_days) {
            return Err(ConfigError(format!(
                "retention_days must be from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS}, not {}",
                self.retention_days
            )));
        }
        if !keyvault_types::rules::is_valid_name(&self.vault_name) {
            return Err(ConfigError(format!(
                "vault_name must be 1-127 characters of 0-9, a-z, A-Z and '-', not '{}'",
                self.vault_name
            )));
        }
        let tenant_ok = !self.tenant_id.is_empty()
            && self.tenant_id.len() <= 64
            && self
                .tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !tenant_ok {
            return Err(ConfigError(
                "tenant_id must be 1-64 characters of 0-9, a-z, A-Z, '-' and '.'".to_string(),
            ));
        }
        // Entra ID's own range for access tokens: 10 minutes to a day.
        if !(600..=86_400).contains(&self.token_lifetime_secs) {
            return Err(ConfigError(format!(
                "token_lifetime_secs must be from 600 to 86400, not {}",
                self.token_lifetime_secs
            )));
        }
        if !(1..=86_400).contains(&self.sweep_interval_secs) {
            return Err(ConfigError(format!(
                "sweep_interval_secs must be from 1 to 86400, not {}",
                self.sweep_interval_secs
            )));
        }
        if self.tls.reload_interval_secs > 86_400 {
            return Err(ConfigError(format!(
                "tls.reload_interval_secs must be from 0 (off) to 86400, not {}",
                self.tls.reload_interval_secs
            )));
        }
        if !self.dev && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err(ConfigError(
                "a TLS certificate and key are required (tls.cert and tls.key, or --tls-cert/--tls-key); \
                 use --dev to generate a development CA"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `[[clients]]` certificates and federated credentials: federated issuers must be trusted issuers (files
    /// are read at start).
    pub fn validate_client_credentials(&self) -> Result<(), ConfigError> {
        for c in &self.clients {
            let bad = |what: String| ConfigError(format!("[[clients]] '{}': {what}", c.client_id));
            if c.certificates.iter().any(|p| p.as_os_str().is_empty()) {
                return Err(bad("a certificates entry is empty".into()));
            }
            for f in &c.federated {
                if f.subject.trim().is_empty() {
                    return Err(bad(format!(
                        "federated credential of issuer '{}': subject must not be empty",
                        f.issuer
                    )));
                }
                if f.audience.as_deref().is_some_and(|a| a.trim().is_empty()) {
                    return Err(bad(format!(
                        "federated credential of issuer '{}': audience must not be empty (leave it out for \
                         {})",
                        f.issuer,
                        crate::auth::assertion::DEFAULT_FEDERATED_AUDIENCE
                    )));
                }
                if !self.trusted_issuers.iter().any(|t| t.issuer == f.issuer) {
                    return Err(bad(format!(
                        "federated credential: issuer '{}' is not one of the [[trusted_issuers]] (add it there \
                         with its keys)",
                        f.issuer
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The largest `cache_mib` (1 TiB): more is a typo, not a cache.
pub const MAX_CACHE_MIB: u64 = 1 << 20;

/// `host[:port]` as `resource_suffix` and `issuer_host` take it (they are put after `https://` in tokens, the
/// challenge header and URLs): a DNS name or an IPv4 address, or an IPv6 address in brackets, then an optional
/// port.
fn is_host_and_port(v: &str) -> bool {
    let (host_ok, port) = match v.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((addr, after)) => (addr.parse::<std::net::Ipv6Addr>().is_ok(), after),
            None => return false,
        },
        None => {
            let (host, port) = v.split_at(v.find(':').unwrap_or(v.len()));
            // A fully qualified name may end with a dot; labels may hold underscores (docker-compose's
            // `project_service_1`), which TLS clients accept in server names.
            let host = host.strip_suffix('.').unwrap_or(host);
            let dns = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            (dns, port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n != 0)
        });
    host_ok && port_ok
}

/// A role setting: `None` for "none" or empty.
pub fn role_setting(s: &str) -> Option<&str> {
    let t = s.trim();
    (!t.is_empty() && !t.eq_ignore_ascii_case("none")).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = Config::from_toml(
            r#"
            addr = "0.0.0.0:9443"
            data_dir = "/var/lib/keyvault"
            retention_days = 7
            purge_protection = true
            tenant_id = "contoso"
            audit_keep_files = 5
            metrics_addr = "0.0.0.0:9090"
            [tls]
            cert = "server.pem"
            key = "server-key.pem"
            [[clients]]
            client_id = "app"
            secret_hashes = ["$argon2id$v=19$m=19456,t=2,p=1$abc$def"]
            "#,
        )
        .unwrap();
        assert_eq!(c.addr.port(), 9443);
        assert_eq!(c.retention_days, 7);
        assert!(c.purge_protection);
        assert_eq!(c.audit_keep_files, 5);
        assert_eq!(Config::default().audit_keep_files, 0);
        assert_eq!(c.clients[0].client_id, "app");
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(Config::default().metrics_addr, None);
        c.validate().unwrap();
        // The certificate files are watched every minute unless told otherwise; 0 turns the watch off.
        assert_eq!(c.tls.reload_interval_secs, 60);
        let off = Config::from_toml("dev = true\n[tls]\nreload_interval_secs = 0").unwrap();
        assert_eq!(off.tls.reload_interval_secs, 0);
        off.validate().unwrap();
        let same = Config {
            metrics_addr: Some(c.addr),
            ..c
        };
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("metrics_addr")
        );
    }

    /// A client secret's expiry: Unix seconds, a TOML date-time or an RFC 3339 string, all the same moment;
    /// a date-time without an offset, or another type, is refused with the expected form.
    #[test]
    fn client_secret_expiry_forms() {
        let expiry = |v: &str| {
            Config::from_toml(&format!(
                "[[clients]]\nclient_id = \"app\"\nsecrets = [{{ hash = \"h\", expires_on = {v} }}]"
            ))
            .map(|c| c.clients[0].secrets[0].expires_on)
            .map_err(|e| e.to_string())
        };
        for v in [
            "1893456000",
            "2030-01-01T00:00:00Z",
            "2030-01-01T01:00:00+01:00",
            "\"2030-01-01T00:00:00Z\"",
        ] {
            assert_eq!(expiry(v), Ok(Some(1_893_456_000)), "{v}");
        }
        for v in ["2030-01-01T00:00:00", "2030-01-01", "\"soon\"", "true"] {
            let e = expiry(v).unwrap_err();
            assert!(e.contains("date-time"), "{v}: {e}");
        }
    }

    #[test]
    fn throttling_and_trusted_issuers() {
        let c = Config::from_toml(
            r#"
            dev = true
            rate_limit_per_10s = 4000
            rate_limit_create_per_10s = 300
            [[trusted_issuers]]
            issuer = "https://idp.example.com"
            audience = "api://kv"
            jwks_file = "/nonexistent/jwks.json"
            principal_claim = "oid"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let t = c.throttle_settings();
        assert_eq!((t.limit, t.create_limit), (Some(4000), Some(300)));
        assert_eq!(t.window, std::time::Duration::from_secs(10));
        assert_eq!(c.trusted_issuers[0].principal_claim.as_deref(), Some("oid"));
        assert!(c.trusted_issuers[0].load().is_err(), "no JWKS file");
        assert!(!Config::default().throttle_settings().enabled());
        for bad in [
            "dev = true\nrate_limit_per_10s = 0",
            "dev = true\nrate_limit_window_secs = 0",
            "dev = true\npg_pool_size = 0",
            "dev = true\npg_pool_size = 1001",
            "dev = true\nmmap_mib = 2048",
            "dev = true\naudit_max_bytes = 4096",
            "dev = true\nidle_timeout_secs = 0",
            "dev = true\ntoken_lifetime_secs = 9223372036854775807",
            "dev = true\ntoken_lifetime_secs = 599",
            "dev = true\nsweep_interval_secs = 0",
            "dev = true\n[tls]\nreload_interval_secs = 86401",
        ] {
            let c = Config::from_toml(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(Config::from_toml("[[trusted_issuers]]\nissuer = \"x\"").is_err());
    }

    #[test]
    fn trusted_issuers_with_a_jwks_url() {
        let parse = |fields: &str| {
            Config::from_toml(&format!(
                "dev = true\n[[trusted_issuers]]\nissuer = \"https://idp.example.com\"\n\
                 audience = \"api://kv\"\n{fields}"
            ))
        };
        let c = parse(
            "jwks_url = \"https://idp.example.com/keys\"\nca_file = \"/etc/ca.pem\"\n\
             jwks_refresh_secs = 600",
        )
        .unwrap();
        let t = &c.trusted_issuers[0];
        assert_eq!(t.jwks_url.as_deref(), Some("https://idp.example.com/keys"));
        assert_eq!(
            t.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            (t.jwks_file.as_ref(), t.jwks_refresh_secs),
            (None, Some(600))
        );
        assert!(t.load().is_err(), "no such CA file");
        // Without a CA file: the platform roots; nothing is fetched yet, so no keys.
        let t = parse("jwks_url = \"https://idp.example.com/keys\"")
            .unwrap()
            .trusted_issuers[0]
            .load()
            .unwrap();
        assert_eq!(
            t.jwks_url().as_deref(),
            Some("https://idp.example.com/keys")
        );
        assert!(!t.has_keys());
        // Plain http only to a loopback address.
        for ok in [
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            parse(&format!("jwks_url = \"{ok}\"")).unwrap();
        }

        let must_fail = [
            // Both sources, or neither.
            "jwks_url = \"https://idp.example.com/keys\"\njwks_file = \"/etc/jwks.json\"",
            "principal_claim = \"oid\"",
            // Not https (http only to loopback), not a URL, credentials in it.
            "jwks_url = \"http://idp.example.com/keys\"",
            "jwks_url = \"http://10.0.0.1/keys\"",
            "jwks_url = \"ftp://idp.example.com/keys\"",
            "jwks_url = \"idp.example.com/keys\"",
            "jwks_url = \"https://user:pass@idp.example.com/keys\"",
            // URL-only settings with a file; a refresh period out of range; unknown fields.
            "jwks_file = \"/etc/jwks.json\"\nca_file = \"/etc/ca.pem\"",
            "jwks_file = \"/etc/jwks.json\"\njwks_refresh_secs = 60",
            "jwks_url = \"https://idp.example.com/keys\"\njwks_refresh_secs = 0",
            "jwks_url = \"https://idp.example.com/keys\"\njwks_refresh_secs = 99999999",
            "jwks_url = \"https://idp.example.com/keys\"\nrefresh = 60",
        ];
        for bad in must_fail {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("trusted") || err.contains("unknown field"),
                "{bad}: {err}"
            );
        }
        let err = parse("principal_claim = \"oid\"").unwrap_err().to_string();
        assert!(
            err.contains("set jwks_file, jwks_url or discovery = true"),
            "{err}"
        );
        let err = parse("jwks_url = \"http://idp.example.com/keys\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://"), "{err}");
        // Built in code: load() checks too.
        let both = TrustedIssuerConfig {
            issuer: "https://idp.example.com".into(),
            audience: "api://kv".into(),
            jwks_file: Some("/etc/jwks.json".into()),
            jwks_url: Some("https://idp.example.com/keys".into()),
            ..Default::default()
        };
        assert!(both.load().unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn trusted_issuers_with_discovery() {
        let parse = |issuer: &str, fields: &str| {
            Config::from_toml(&format!(
                "dev = true\n[[trusted_issuers]]\nissuer = \"{issuer}\"\naudience = \"api://kv\"\n{fields}"
            ))
        };
        // The document's URL: the issuer without its terminating slash, then the well-known path.
        for (issuer, document) in [
            (
                "https://token.actions.githubusercontent.com",
                "https://token.actions.githubusercontent.com/.well-known/openid-configuration",
            ),
            (
                "https://oidc.prod-aks.azure.com/c-1/",
                "https://oidc.prod-aks.azure.com/c-1/.well-known/openid-configuration",
            ),
            (
                "https://login.microsoftonline.com/t-1/v2.0",
                "https://login.microsoftonline.com/t-1/v2.0/.well-known/openid-configuration",
            ),
            (
                "http://127.0.0.1:5556/dex",
                "http://127.0.0.1:5556/dex/.well-known/openid-configuration",
            ),
        ] {
            let c = parse(issuer, "discovery = true\njwks_refresh_secs = 600").unwrap();
            let t = c.trusted_issuers[0].load().unwrap();
            assert_eq!(t.discovery_url(), Some(document), "{issuer}");
            assert!(t.fetches_keys());
            // Nothing is fetched yet: no keys, no JWKS URL known.
            assert_eq!((t.has_keys(), t.jwks_url()), (false, None));
            assert_eq!(c.trusted_issuers[0].issuer, issuer);
        }
        // Without discovery nothing changes: a JWKS URL issuer has no discovery URL.
        let t = parse(
            "https://idp.example.com",
            "jwks_url = \"https://idp.example.com/keys\"\ndiscovery = false",
        )
        .unwrap()
        .trusted_issuers[0]
            .load()
            .unwrap();
        assert_eq!(t.discovery_url(), None);

        for (issuer, fields, want) in [
            // Discovery and a key source of its own: which one would count?
            (
                "https://idp.example.com",
                "discovery = true\njwks_url = \"https://idp.example.com/keys\"",
                "leave out jwks_file and jwks_url",
            ),
            (
                "https://idp.example.com",
                "discovery = true\njwks_file = \"/etc/jwks.json\"",
                "leave out jwks_file and jwks_url",
            ),
            // An issuer that is not a URL we fetch, or has a query or fragment (Discovery 1.0 §2).
            ("idp-corp", "discovery = true", "not a URL"),
            (
                "http://idp.example.com",
                "discovery = true",
                "must be an https:// URL",
            ),
            (
                "https://idp.example.com/?tenant=1",
                "discovery = true",
                "query or a fragment",
            ),
            (
                "https://idp.example.com/#x",
                "discovery = true",
                "query or a fragment",
            ),
            (
                "https://u:p@idp.example.com",
                "discovery = true",
                "credentials",
            ),
            // discovery = false is no key source.
            (
                "https://idp.example.com",
                "discovery = false",
                "set jwks_file, jwks_url or discovery = true",
            ),
            (
                "https://idp.example.com",
                "discovery = true\njwks_refresh_secs = 0",
                "jwks_refresh_secs must be 1",
            ),
        ] {
            let err = parse(issuer, fields).unwrap_err().to_string();
            // Named as given, but for a password in it.
            let named = redact_url_password(issuer);
            assert!(
                err.contains(want) && err.contains(&format!("trusted issuer '{named}'")),
                "{issuer} {fields}: {err}"
            );
        }
        // The CA file is read at load.
        let e = parse(
            "https://idp.example.com",
            "discovery = true\nca_file = \"/nonexistent/ca.pem\"",
        )
        .unwrap()
        .trusted_issuers[0]
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn client_certificates_and_federated_credentials() {
        let base = "dev = true\n[[trusted_issuers]]\nissuer = \"https://aks.example/\"\naudience = \"kv\"\n\
                    jwks_file = \"jwks.json\"\n[[clients]]\nclient_id = \"app\"\ncertificates = [\"app.pem\"]\n";
        let ok = Config::from_toml(&format!(
            "{base}federated = [{{ issuer = \"https://aks.example/\", subject = \"system:serviceaccount:a:b\" }}]"
        ))
        .unwrap();
        ok.validate().unwrap();
        let c = &ok.clients[0];
        assert_eq!(c.certificates, [PathBuf::from("app.pem")]);
        assert_eq!(c.federated[0].audience(), "api://AzureADTokenExchange");
        for (federated, want) in [
            (
                "{ issuer = \"https://other.example/\", subject = \"s\" }",
                "issuer 'https://other.example/' is not one of the [[trusted_issuers]]",
            ),
            (
                "{ issuer = \"https://aks.example/\", subject = \" \" }",
                "subject must not be empty",
            ),
            (
                "{ issuer = \"https://aks.example/\", subject = \"s\", audience = \"\" }",
                "audience must not be empty",
            ),
        ] {
            let c = Config::from_toml(&format!("{base}federated = [{federated}]")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("[[clients]] 'app'") && e.contains(want), "{e}");
        }
        let e =
            Config::from_toml(&format!("{base}federated = [{{ issuer = \"x\" }}]")).unwrap_err();
        assert!(e.to_string().contains("subject"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_toml("retention_days = \"x\"").is_err());
        assert!(Config::from_toml("unknown_key = 1").is_err());
        let c = Config {
            retention_days: 6,
            dev: true,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("retention_days")
        );
        let c = Config::default();
        assert!(c.validate().unwrap_err().to_string().contains("TLS"));
        let c = Config {
            dev: true,
            ..Config::default()
        };
        c.validate().unwrap();
    }

    /// Empty values that would quietly change what the server does are refused, naming the setting: an
    /// empty `store` (an unfilled PostgreSQL URL would make each node a vault of its own), `audit_log` (off is
    /// "none"), `data_dir`; `resource_suffix` and `issuer_host` must be a host and optional port (they are put
    /// after `https://` and into the challenge header); `cache_mib` has a ceiling.
    #[test]
    fn empty_or_malformed_values_are_refused() {
        let dev = || Config {
            dev: true,
            ..Config::default()
        };
        let refused = |c: Config, setting: &str| {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(setting), "{setting}: {err}");
        };
        for empty in ["", "  "] {
            refused(
                Config {
                    store: Some(StoreLocation(empty.into())),
                    ..dev()
                },
                "store is empty",
            );
        }
        refused(
            Config {
                audit_log: Some(PathBuf::new()),
                ..dev()
            },
            "audit_log is empty",
        );
        let off = Config {
            audit_log: Some("none".into()),
            ..dev()
        };
        off.validate().unwrap();
        assert_eq!(off.audit_log_path(), None);
        refused(
            Config {
                data_dir: PathBuf::new(),
                ..dev()
            },
            "data_dir is empty",
        );
        for bad in [
            "",
            "https://vault.example",
            "vault.example/x",
            "vault.example\", evil=\"y",
            "vault example",
            "vault.example:",
            "vault.example:0",
            "vault.example:99999",
            "-vault.example",
            "vault..example",
            "vault.example..",
            "[::1",
            "[zz]:1",
            ":8443",
        ] {
            for setting in ["resource_suffix", "issuer_host"] {
                let mut c = dev();
                if setting == "issuer_host" {
                    c.issuer_host = Some(bad.into());
                } else {
                    c.resource_suffix = Some(bad.into());
                }
                refused(c, setting);
            }
        }
        for good in [
            "vault.example",
            "vault.example.",
            "my_host.internal:8443",
            "vault.example:8443",
            "localhost:1",
            "127.0.0.1:8443",
            "[::1]:8443",
            "[::1]",
        ] {
            let c = Config {
                resource_suffix: Some(good.into()),
                issuer_host: Some(good.into()),
                ..dev()
            };
            c.validate().unwrap();
        }
        refused(
            Config {
                cache_mib: MAX_CACHE_MIB + 1,
                ..dev()
            },
            "cache_mib",
        );
    }

    /// A refusal quotes the value given, and a secret can be given in the wrong setting: a client secret's
    /// hash or a URL's password never shows in a configuration error.
    #[test]
    fn refusals_do_not_show_hashes_or_url_passwords() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$CANARYHASH0123456789";
        let c = Config {
            vault_name: hash.into(),
            dev: true,
            ..Config::default()
        };
        let err = c.validate().unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                shown.contains("$argon2id$…") && !shown.contains("CANARYHASH"),
                "{shown}"
            );
        }
        let err = ConfigError(
            "trusted issuer 'https://u:CANARYPW@issuer.example/t' (\"https://v:CANARYPW2@x\"): bad"
                .into(),
        )
        .to_string();
        assert!(
            !err.contains("CANARYPW") && err.contains("https://u:***@issuer.example/t"),
            "{err}"
        );
        let err = crate::server::StartError::Setup(format!("certificate file {hash}: not found"));
        assert!(!err.to_string().contains("CANARYHASH"), "{err}");
        assert_eq!(
            scrub_secrets("nothing to hide: a:b@c"),
            "nothing to hide: a:b@c"
        );
        // A trusted issuer is named with its password hidden before the message is made (a quote or a space
        // in the password would end the word scrub_secrets looks at), and in its Debug output.
        for password in ["Pa'ss", "Pa ss"] {
            let t = TrustedIssuerConfig {
                issuer: format!("https://u:{password}@idp.example/x"),
                audience: "api://kv".into(),
                discovery: true,
                ..TrustedIssuerConfig::default()
            };
            let err = t.validate().unwrap_err().to_string();
            for shown in [err, format!("{t:?}")] {
                assert!(
                    !shown.contains("Pa") && shown.contains("https://u:***@idp.example/x"),
                    "{shown}"
                );
            }
        }
    }

    #[test]
    fn selects_the_store() {
        let c = Config::from_toml(r#"data_dir = "/d""#).unwrap();
        assert_eq!(
            c.store_backend().unwrap(),
            StoreBackend::Sqlite("/d/vault.db".into())
        );
        let c = Config::from_toml(
            r#"
            store = "postgres://kv:s3cret@db.example:5432/keyvault"
            kek_file = "/run/secrets/kek"
            signing_key_file = "/run/secrets/signing.pk8"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.store_backend().unwrap(),
            StoreBackend::Postgres("postgres://kv:s3cret@db.example:5432/keyvault".into())
        );
        assert_eq!(c.kek_path(), PathBuf::from("/run/secrets/kek"));
        assert_eq!(
            c.signing_key_path(),
            PathBuf::from("/run/secrets/signing.pk8")
        );
        let shown = format!("{c:?} {:?}", c.store_backend().unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("kv:***@db.example"), "{shown}");
        // libpq's key=value form, as the store opens it.
        let kv = "host=db.example dbname=keyvault user=kv password=s3cret";
        let c = Config {
            store: Some(StoreLocation(kv.into())),
            ..Config::default()
        };
        assert_eq!(
            c.store_backend().unwrap(),
            StoreBackend::Postgres(kv.into())
        );
        let shown = format!("{c:?} {:?}", c.store_backend().unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        for not_a_store in ["Host=db", "=x", "host db", "path/to=x"] {
            let c = Config {
                store: Some(StoreLocation(not_a_store.into())),
                ..Config::default()
            };
            assert!(c.store_backend().is_err(), "{not_a_store}");
        }
        let c = Config {
            store: Some(StoreLocation("sqlite:/x/y.db".into())),
            ..Config::default()
        };
        assert_eq!(
            c.store_backend().unwrap(),
            StoreBackend::Sqlite("/x/y.db".into())
        );
        let c = Config {
            store: Some(StoreLocation("mysql://u:pw@h/db".into())),
            dev: true,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("store") && !err.contains("pw"), "{err}");
        // A mistyped URL whose password the URL form does not delimit is not echoed either.
        let c = Config {
            store: Some(StoreLocation("postgres:/kv:CANARYPW6@x/db".into())),
            dev: true,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("'postgres'") && !err.contains("CANARYPW6"),
            "{err}"
        );
    }

    /// Every form tokio-postgres reads a password from is redacted: the URL's user information however the
    /// password is written (with `/`, `?`, `@` or `:` in it), `password=` in the query, the key=value form.
    #[test]
    fn store_passwords_are_redacted_in_every_form() {
        let cases = [
            (
                "postgres://kv:CANARY1@db:5432/vault",
                "postgres://kv:***@db:5432/vault",
            ),
            (
                "postgres://kv@db/vault?password=CANARY2",
                "postgres://kv@db/vault?password=***",
            ),
            (
                "postgresql://kv@db/vault?sslmode=require&password=CANARY3&application_name=x",
                "postgresql://kv@db/vault?sslmode=require&password=***&application_name=x",
            ),
            (
                "postgres://kv:pa/CANARY4@db/vault",
                "postgres://kv:***@db/vault",
            ),
            (
                "postgres://kv:pa?CANARY5@db/vault",
                "postgres://kv:***@db/vault",
            ),
            (
                "postgres://kv:pa@CANARY6@db/vault",
                "postgres://kv:***@db/vault",
            ),
            (
                "postgres://kv:pa:CANARY7@db/vault",
                "postgres://kv:***@db/vault",
            ),
            (
                "postgres://kv@db/vault?sslmode=require&pass%77ord=CANARY9&x=%41",
                "postgres://kv@db/vault?sslmode=require&pass%77ord=***&x=%41",
            ),
            (
                "postgres://kv@db/vault?%70assword=CANARY10",
                "postgres://kv@db/vault?%70assword=***",
            ),
            // White space before the URL (the store setting is trimmed before use).
            (
                " \tpostgres://kv:CANARY26@db/vault",
                " \tpostgres://kv:***@db/vault",
            ),
            // A `?` in the user part: the query is after the host; a `?` or `@` in a query's password is its.
            (
                "postgres://kv@db/vault?%70assword=CANARY23?horse",
                "postgres://kv@db/vault?%70assword=***",
            ),
            (
                "postgres://kv@db:5432/vault?password=CANARY24@horse-battery",
                "postgres://kv@db:5432/vault?password=***",
            ),
            (
                "postgres://kv:CANARY25@db:5432/vault?sslmode=require&password=x@y",
                "postgres://kv:***@db:5432/vault?sslmode=require&password=***",
            ),
            (
                "postgres://me?x@db/vault?%70assword=CANARY21",
                "postgres://me?x@db/vault?%70assword=***",
            ),
            (
                "postgres://me?x@db/vault?sslmode=require&password=CANARY22",
                "postgres://me?x@db/vault?sslmode=require&password=***",
            ),
            (
                "host=db password=CANARY8 user=kv",
                "host=db password=*** user=kv",
            ),
            (
                "host=db password = 'CANARY9 \\' x' user=kv",
                "host=db password = *** user=kv",
            ),
            ("password=CANARY10", "password=***"),
            ("host=db PASSWORD=CANARY11", "host=db PASSWORD=***"),
            // Pairs separated by Unicode white space, as tokio-postgres reads them.
            (
                "host=db\u{a0}password=CANARY12\u{3000}user=kv",
                "host=db\u{a0}password=***\u{3000}user=kv",
            ),
            (
                "host=db\u{2003}password\u{a0}=\u{a0}CANARY13",
                "host=db\u{2003}password\u{a0}=\u{a0}***",
            ),
            ("host=é password=CANARY\\é14 x=1", "host=é password=*** x=1"),
            ("host='db'password=CANARY15", "host='db'password=***"),
            // A `password=` inside another key's value is that value (hidden too); the real one is redacted.
            (
                "host=h'password='x password='CANARY16\\'x'",
                "host=*** password=***",
            ),
            (
                "options='-c password=x' password=CANARY17",
                "options=*** password=***",
            ),
            ("password=CANARY18\\ still", "password=***"),
            ("password='CANARY19", "password=***"),
            ("x y password=CANARY20", "x y password=***"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url_password(url), redacted, "{url}");
            assert!(has_password(url), "{url}");
            let shown = format!("{:?}", StoreLocation(url.into()));
            assert!(!shown.contains("CANARY"), "{shown}");
        }
        for plain in [
            "postgres://kv@db:5432/vault?sslmode=require",
            "postgres://db/vault",
            "sqlite:/var/lib/keyvault/vault.db",
            "sqlite",
            "host=db user=kv",
            "postgres://kv@db/vault?my_password_hint=x",
        ] {
            assert_eq!(redact_url_password(plain), plain);
            assert!(!has_password(plain), "{plain}");
        }
        let c = Config {
            store: Some(StoreLocation("postgres://kv@db/v?password=CANARY12".into())),
            ..Config::default()
        };
        let shown = format!("{c:?} {:?}", c.store_backend().unwrap());
        assert!(!shown.contains("CANARY"), "{shown}");
    }

    /// Redaction takes any string without panicking (odd quotes, backslashes at the end, multi-byte white
    /// space next to quotes and `=`), and a password pair appended to any of them is hidden.
    #[test]
    fn redaction_takes_any_string() {
        let alphabet = [
            "password", "=", "'", "\\", " ", "\u{3000}", "\u{a0}", "é", "x", "?", "&", "://", "@",
            ":",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = redact_url_password(&text);
            // A password pair after it, whether or not the text left a quote open.
            for pair in [
                format!("{text} password=CANARY"),
                format!("{text}' password=CANARY"),
            ] {
                if url_scheme(&pair).is_none() && !text.ends_with('\\') {
                    let shown = redact_url_password(&pair);
                    assert!(!shown.contains("CANARY"), "{pair:?} → {shown:?}");
                }
            }
            // In a URL: the text in the user part or the query, a password parameter after it.
            for url in [
                format!("postgres://{text}@db/v?x=1&password=CANARY"),
                format!("postgres://kv@db/v?{text}&pass%77ord=CANARY"),
                format!("postgres://kv:CANARY@db/v?{text}"),
            ] {
                let shown = redact_url_password(&url);
                assert!(!shown.contains("CANARY"), "{url:?} → {shown:?}");
            }
        }
    }

    /// `Config`'s `Debug` shows no client secret hash (one is what an offline guess is checked against).
    #[test]
    fn client_secret_hashes_are_not_in_debug() {
        let c = Config::from_toml(
            r#"
            [[clients]]
            client_id = "app"
            secret_hashes = ["$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$HASHCANARY1"]
            secrets = [{ hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$HASHCANARY2", expires_on = 1 }]
            "#,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("HASHCANARY") && !shown.contains("argon2"),
            "{shown}"
        );
        assert!(
            shown.contains("\"app\"") && shown.contains("expires_on: Some(1)"),
            "{shown}"
        );
    }

    #[test]
    fn access_control_section() {
        use crate::auth::policy::Operation;
        let c = Config::from_toml(
            r#"
            dev = true
            [[clients]]
            client_id = "legacy"
            secret_hashes = []
            [[clients]]
            client_id = "app"
            secret_hashes = []
            [[roles]]
            name = "Rotator"
            permissions = ["set", "list"]
            [[assignments]]
            principal = "app"
            role = "Key Vault Secrets User"
            scope = "/secrets/db-*"
            [[assignments]]
            principal = "ci"
            role = "rotator"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let p = c.policy().unwrap();
        // A client without assignments keeps full rights (the default); one with assignments has only those.
        assert!(
            p.authorize("legacy", Operation::SecretPurge, Some("x"))
                .is_ok()
        );
        assert!(p.authorize("legacy", Operation::VaultAdmin, None).is_ok());
        assert!(
            p.authorize("app", Operation::SecretGet, Some("db-pass"))
                .is_ok()
        );
        assert!(
            p.authorize("app", Operation::SecretGet, Some("other"))
                .is_err()
        );
        assert!(p.authorize("ci", Operation::SecretSet, Some("x")).is_ok());
        assert!(p.authorize("ci", Operation::SecretGet, Some("x")).is_err());
        assert_eq!(c.audit_log_path(), Some(c.data_dir.join("audit.log")));
        // Configured assignments keep their ids from one start (one node) to the next, and differ.
        let ids = |p: &crate::auth::policy::Policy| -> Vec<String> {
            let mut ids: Vec<String> = p.assignments(None).into_iter().map(|a| a.id).collect();
            ids.sort();
            ids
        };
        let first = ids(&p);
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert_eq!(ids(&c.policy().unwrap()), first);
        // The role written in another case, or by its Azure id, is the same assignment with the same id.
        let mut respelled = c.clone();
        respelled.assignments[0].role = "KEY VAULT SECRETS USER".into();
        respelled.assignments[1].role = "ROTATOR".into();
        assert_eq!(ids(&respelled.policy().unwrap()), first);
        respelled.assignments[0].role = "4633458b-17de-408a-b874-0445c86b69e6".into();
        assert_eq!(ids(&respelled.policy().unwrap()), first);

        let strict = Config {
            default_client_role: "none".into(),
            ..c.clone()
        };
        let p = strict.policy().unwrap();
        assert!(
            p.authorize("legacy", Operation::SecretGet, Some("x"))
                .is_err()
        );

        for bad in [
            "[[assignments]]\nprincipal = \"a\"\nrole = \"nope\"",
            "[[assignments]]\nprincipal = \"a\"\nrole = \"Key Vault Reader\"\nscope = \"/keys/x\"",
            "[[roles]]\nname = \"r\"\npermissions = [\"fly\"]",
            "[[roles]]\nname = \"Key Vault Reader\"\npermissions = [\"get\"]",
        ] {
            let r = Config::from_toml(bad).and_then(|c| c.policy().map(|_| ()));
            assert!(r.is_err(), "{bad}");
        }
        let off = Config {
            audit_log: Some("none".into()),
            ..c
        };
        assert_eq!(off.audit_log_path(), None);
    }

    /// A configured client named by no assignment gets `default_client_role`, until an assignment (here made
    /// at run time, as through the admin API) names it.
    #[test]
    fn configured_clients_get_the_default_role_until_assigned() {
        use crate::auth::policy::{Assignment, Operation, READER, Scope};
        let c =
            Config::from_toml("dev = true\n[[clients]]\nclient_id = \"app\"\nsecret_hashes = []")
                .unwrap();
        let policy = c.policy().unwrap();
        assert!(policy.authorize("app", Operation::VaultAdmin, None).is_ok());
        policy
            .assign(Assignment {
                id: String::new(),
                principal: "app".into(),
                role: READER.into(),
                scope: Scope::Vault,
            })
            .unwrap();
        assert!(
            policy
                .authorize("app", Operation::VaultAdmin, None)
                .is_err()
        );
        assert!(policy.authorize("app", Operation::SecretList, None).is_ok());
    }

    #[test]
    fn whitespace_around_a_principal_is_refused() {
        // Trimmed, the assignment would apply to "reader" while the default role (Administrator) did too.
        let c = Config::from_toml(
            r#"
            dev = true
            [[clients]]
            client_id = "reader"
            secret_hashes = []
            [[assignments]]
            principal = " reader"
            role = "Key Vault Reader"
            "#,
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("[[assignments]] principal \" reader\""), "{e}");
        assert!(c.policy().is_err());

        let c = Config::from_toml(
            "[[clients]]\nclient_id = \"reader\\t\"\nsecret_hashes = []\n[[assignments]]\nprincipal = \"reader\"\nrole = \"Key Vault Reader\"",
        )
        .unwrap();
        let e = c.policy().unwrap_err().to_string();
        assert!(e.contains("[[clients]] client_id \"reader\\t\""), "{e}");

        // Nor what the admin API refuses: a principal shown as another one in a listing.
        for id in [
            "read\u{200B}er",
            "reader\u{202E}",
            "read\u{00A0}er",
            "reader\u{FE0F}",
            "reader\u{E0100}",
            "",
        ] {
            let id: String = (id.chars())
                .map(|c| format!("\\U{:08X}", c as u32))
                .collect();
            let id = format!("\"{id}\"");
            for (text, what) in [
                (
                    format!(
                        "[[clients]]\nclient_id = \"reader\"\nsecret_hashes = []\n[[assignments]]\nprincipal = {id}\nrole = \"Key Vault Reader\""
                    ),
                    "[[assignments]] principal",
                ),
                (
                    format!("[[clients]]\nclient_id = {id}\nsecret_hashes = []"),
                    "[[clients]] client_id",
                ),
            ] {
                let e = Config::from_toml(&text)
                    .unwrap()
                    .policy()
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(what) && e.contains("invisible"), "{id:?}: {e}");
            }
        }

        // Without the whitespace: only the assignment, no default Administrator.
        let c = Config::from_toml(
            "[[clients]]\nclient_id = \"reader\"\nsecret_hashes = []\n[[assignments]]\nprincipal = \"reader\"\nrole = \"Key Vault Reader\"",
        )
        .unwrap();
        let p = c.policy().unwrap();
        use crate::auth::policy::Operation;
        assert!(p.authorize("reader", Operation::SecretList, None).is_ok());
        assert!(p.authorize("reader", Operation::VaultAdmin, None).is_err());
    }
    #[test]
    fn parse_errors_name_the_place_not_the_text() {
        for (text, want) in [
            (
                "retention_days = 7\nstore = \"postgres://kv:Sup3rSecretPw@db:5432/kv\n",
                "invalid configuration: line 2, column ",
            ),
            (
                "retention_days = \"Sup3rSecretPw\"\n",
                "invalid configuration: line 1, column 18: invalid type: string \"…\", expected u32",
            ),
            (
                "[[clients]]\nclient_id = 'a'\nsecret_hash = Sup3rSecretPw\n",
                "line 3, column ",
            ),
            // A quote inside the value: serde escapes it, and the hidden text goes on to the closing quote.
            (
                "retention_days = 'x7\"Sup3rSecretPw'\n",
                "invalid type: string \"…\"",
            ),
            (
                "retention_days = \"a\\\"b\\\\\\\"Sup3rSecretPw\"\n",
                "invalid type: string \"…\"",
            ),
            (
                "[[clients]]\nclient_id = 'a'\nexpires_on = \"Sup3rSecretPw\"\n",
                "line 3, column ",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.starts_with(want) || e.contains(want), "{e}");
            assert!(!e.contains("Sup3rSecretPw"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
