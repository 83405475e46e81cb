//! Putting the parts together: open the store, load keys and certificates, bind, serve until told to stop.

use crate::audit::AuditLog;
use crate::auth::policy::{Assignment, Policy, Scope};
use crate::auth::{
    AuthState, ClientAssertions, ClientCertificate, ClientRegistry, FederatedCredential,
    SigningKey, TokenIssuer, TokenVerifier,
};
use crate::config::{Config, ConfigError, StoreBackend};
use crate::crypto::{Envelope, FileKeyProvider, Kek, KeyProvider, KeyRing, StaticKeyProvider};
use crate::http::{self, HttpState};
use crate::metrics::{HttpMetrics, Metrics};
use crate::store::SecretStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::tls::ServerCertificate;
use crate::vault::{Clock, SystemClock, Vault, VaultSettings};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keyvault_types::SecretString;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The environment variable that may hold the key-encryption key (32 bytes: 64 hex characters, as a key file
/// holds them, or base64) instead of a key file.
pub const KEK_ENV: &str = "KEYVAULT_KEK";
/// The environment variable that may hold previous key-encryption keys (comma-separated, each 32 bytes as hex or
/// base64), in addition to `previous_kek_files`: they open, never seal.
pub const PREVIOUS_KEKS_ENV: &str = "KEYVAULT_PREVIOUS_KEKS";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request's headers may take (64 KiB: a bearer token with many group claims fits).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The longest a client may send without being answered, over HTTP/1.1: a request trickled byte by byte is cut
/// off.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits, after the drain, for requests whose connections are gone to end.
const REQUESTS_GIVEN_UP_WAIT: Duration = Duration::from_secs(3);
/// How long a shutdown waits for a running rekey job to stop (it stops at its next await: a store write).
const REKEY_STOP_WAIT: Duration = Duration::from_secs(2);
/// Most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;

/// `accept failed` is logged twice per 10 s at most (with a count of the lines left out).
static ACCEPT_FAILURES_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(2);

/// Raises the soft limit on open files towards the hard one, so that `MAX_CONNECTIONS` connections (and the
/// database's and logs' files) fit: a soft limit of 1,024, common by default, would make `accept` fail long
/// before the connection budget is spent.
fn raise_open_file_limit() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let wanted = (MAX_CONNECTIONS + 1024) as u64;
        let mut limit = getrlimit(Resource::Nofile);
        let current = limit.current.unwrap_or(u64::MAX);
        if current < wanted {
            let target = limit.maximum.map_or(wanted, |max| max.min(wanted));
            if target > current {
                limit.current = Some(target);
                match setrlimit(Resource::Nofile, limit) {
                    Ok(()) => {
                        tracing::debug!(from = current, to = target, "raised the open-file limit")
                    }
                    Err(e) => tracing::debug!(error = %e, "could not raise the open-file limit"),
                }
            }
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}", crate::config::scrub_secrets(.0))]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Locks the data directory for this server (`DIR/serve.lock`, an advisory `flock` the kernel releases when
/// the process ends): two servers there would interleave two hash chains in one audit log (which then reads
/// as tampered with), and each would rewrite the other's `store.initialized` and `dev-credentials.json`. The
/// SQLite store's own lock catches two servers over one database; this, two over one directory whatever
/// their stores. The audit log, wherever it is, gets a lock of its own beside where it really is
/// (`PATH.lock`, symlinks followed): for two servers with directories of their own and one `audit_log`, or one
/// naming another's log inside that one's directory.
fn lock_server_files(config: &Config) -> Result<Vec<std::fs::File>, StartError> {
    let dir = &config.data_dir;
    let mut locks = Vec::new();
    let what = format!("the data directory {}", dir.display());
    locks.extend(lock_for_server(&dir.join("serve.lock"), &what)?);
    if let Some(audit) = config.audit_log_path() {
        // Named from where the log really is (a symlinked directory, another spelling of the path), in a
        // directory made now if it is not there yet (the log's own open would make it).
        let parent = audit
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| StartError::Setup(format!("cannot create {}: {e}", parent.display())))?;
        let mut name = where_it_really_is(&audit).into_os_string();
        name.push(".lock");
        let what = format!("the audit log {}", audit.display());
        locks.extend(lock_for_server(Path::new(&name), &what)?);
    }
    Ok(locks)
}

/// Where `path` is, symlinks followed, also when it is not there yet: a symlink to a file still to be made
/// (a fresh install's link to where the log will be) is followed to its target, and a missing file is named
/// in its directory's real path. At most 40 links are followed, as the kernel does.
fn where_it_really_is(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        if let Ok(real) = std::fs::canonicalize(&path) {
            return real;
        }
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        let here = parent.join(path.file_name().unwrap_or_default());
        match std::fs::read_link(&here) {
            // Relative to the link's directory; an absolute target replaces it.
            Ok(target) => path = parent.join(target),
            Err(_) => return here,
        }
    }
    path
}

/// An exclusive `flock` on `path` (made, mode 0600, if missing), or an error saying `what` another server
/// holds. A lock file that is missing and cannot be made (a read-only file system, a directory this user
/// may not write) is warned about and skipped: such a directory was served before there were locks, and a
/// lock on an existing file needs no write access.
fn lock_for_server(path: &Path, what: &str) -> Result<Option<std::fs::File>, StartError> {
    // For writing where it can be (an exclusive `flock` over NFS needs it), read-only where it cannot (a
    // read-only mount: a lock on a file opened for reading works locally).
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let opened = match options.open(path) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            std::fs::File::open(path).map_err(|read_only| {
                if read_only.kind() == std::io::ErrorKind::NotFound {
                    e
                } else {
                    read_only
                }
            })
        }
        opened => opened,
    };
    let file = match opened {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            tracing::warn!(
                lock = %path.display(),
                error = %e,
                "cannot make the lock that keeps a second server off {what}: serving without it"
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(StartError::Setup(format!(
                "cannot open {}: {e}",
                path.display()
            )));
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Setup(format!(
            "{what} is in use by another keyvault server (its lock {} is held); give each server a data \
             directory (and audit log) of its own",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StartError::Setup(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> StartError + '_ {
    move |e| StartError::Setup(format!("{what}: {e}"))
}

/// What a client needs to know to use this server (what `--dev` writes to `dev-credentials.json`).
#[derive(Clone, Serialize, Deserialize)]
pub struct DevCredentials {
    /// `https://127.0.0.1:{port}`: always resolvable; clients turn challenge-resource verification off.
    pub vault_url: String,
    /// `https://{vault}.localhost:{port}`: passes the SDKs' challenge-resource verification where
    /// `*.localhost` resolves to the loopback address.
    pub vault_url_named: String,
    /// The dev CA certificate (PEM) that clients must trust.
    pub ca_cert: PathBuf,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// The token issuer: `POST {authority_host}/{tenant_id}/oauth2/v2.0/token`.
    pub authority_host: String,
}

impl std::fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCredentials")
            .field("vault_url", &self.vault_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Facts about a bound server.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub local_addr: SocketAddr,
    /// `https://{addr}`.
    pub base_url: String,
    /// The challenge's resource (`https://{suffix}`), which is also the token audience.
    pub resource: String,
    pub ca_cert: Option<PathBuf>,
    pub dev: Option<DevCredentials>,
    /// Where `/metrics` is served (plain HTTP), if `metrics_addr` is set.
    pub metrics_addr: Option<SocketAddr>,
}

/// A bound, ready-to-serve vault server.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: http::App,
    vault: Arc<Vault>,
    policy: Arc<Policy>,
    clients: Arc<ClientRegistry>,
    issuer: Arc<TokenIssuer>,
    audit: Option<AuditLog>,
    info: ServerInfo,
    data_dir: PathBuf,
    /// Held while the server lives (`lock_server_files`).
    _locks: Vec<std::fs::File>,
    sweep_interval: Duration,
    /// A connection without traffic for this long is closed ([`crate::idle`]).
    idle_timeout: Duration,
    /// `RequestLimits::body_min_rate`: bytes per second an upload needs to keep its connection's answer timeout
    /// moving.
    min_body_rate: u64,
    /// Trusted external issuers (those with a JWKS URL are refreshed while serving).
    trusted_issuers: Vec<crate::auth::external::TrustedIssuer>,
    /// The certificate presented to new connections.
    certificate: Arc<ServerCertificate>,
    /// How often the certificate files are looked at (zero: never; SIGHUP still reloads).
    tls_reload_interval: Duration,
    /// The metrics listener (`metrics_addr`) and what it shows.
    metrics: Option<(TcpListener, Arc<Metrics>)>,
    /// Connections open now (shown by the metrics).
    open_connections: Arc<AtomicU64>,
    /// Connections open now per source, and the limit (`max_connections_per_source`).
    sources: Arc<SourceLimit>,
}

fn host_of(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StartError::Setup(format!(
                    "cannot create the data directory {}: {e}",
                    dir.display()
                ))
            })?;
    }
    Ok(())
}

/// Warns (once, at start) when group or others can write the data directory.
fn warn_if_others_can_write(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o022 != 0
    {
        // Whoever can write the directory can replace the database, the access-control document or the
        // audit log (the files themselves are made private, not the names in the directory).
        tracing::warn!(
            path = %dir.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the data directory is writable by group or others: they can replace the files in it; chmod 700 it"
        );
    }
}

/// Write `contents` to `path` atomically and durably (temporary file, fsync, rename, fsync of the directory:
/// without the last, a crash soon after could bring back the file's previous contents; if only that fails, it
/// is logged and the write counts as done) with mode 0600.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f
        .write_all(contents)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // Not left behind half-written (a full disk: a89-4).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // In place now, whatever follows: a failed sync of the directory is said, not reported as a failed write
    // (the file holds the new contents, and a caller told otherwise would act on the old ones).
    if let Err(e) = crate::store::sqlite::snapshot::sync_dir(path.parent().unwrap_or(Path::new("")))
    {
        tracing::warn!(
            file = %path.display(),
            error = %e,
            "a file was replaced, but its directory could not be synced: a crash soon after may bring back its previous contents"
        );
    }
    Ok(())
}

/// A file in the data directory that records which store this directory's server has used (see
/// [`check_store_marker`]).
pub const STORE_MARKER: &str = "store.initialized";

/// The marker's line naming the store (see [`store_identity`]).
fn store_line(identity: &str) -> String {
    format!("store: {identity}")
}

/// What identifies a store, however the setting spells it: a SQLite file's canonical path; a PostgreSQL
/// database's hosts, ports and name (no user, password or parameters).
fn store_identity(backend: &StoreBackend) -> String {
    match backend {
        StoreBackend::Sqlite(path) => {
            // The file may be missing (that is the case to catch): canonicalize its directory.
            let canonical = std::fs::canonicalize(path).or_else(|_| {
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
                std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
                    .map(|d| d.join(path.file_name().unwrap_or_default()))
            });
            let shown =
                canonical.unwrap_or_else(|_| std::path::absolute(path).unwrap_or(path.clone()));
            format!("sqlite {}", shown.display())
        }
        StoreBackend::Postgres(url) => {
            let parsed = crate::store::postgres::tls::split(url)
                .ok()
                .and_then(|(rest, _)| rest.parse::<tokio_postgres::Config>().ok());
            let Some(c) = parsed else {
                return "postgres (unparsed)".to_string();
            };
            let hosts: Vec<String> = if c.get_hosts().is_empty() {
                c.get_hostaddrs().iter().map(|a| a.to_string()).collect()
            } else {
                c.get_hosts()
                    .iter()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.to_ascii_lowercase(),
                        tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
                    })
                    .collect()
            };
            let ports = c.get_ports();
            let at: Vec<String> = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    format!("{h}:{port}")
                })
                .collect();
            // libpq's default database is the user's name.
            let db = c.get_dbname().or(c.get_user()).unwrap_or_default();
            format!("postgres {}/{db}", at.join(","))
        }
    }
}

/// Refuses a store that holds nothing (no values, no key check) when the data directory records
/// ([`STORE_MARKER`]) that its server used that same store before: the database was lost, emptied or
/// replaced, and starting would serve an empty vault in its place. A marker naming another store is a move
/// (such as from SQLite to PostgreSQL): allowed, with a warning when the new store is empty. Returns whether
/// the marker names this store (otherwise it is written once the key check passes).
async fn check_store_marker(config: &Config, store: &dyn SecretStore) -> Result<bool, StartError> {
    let marker = config.data_dir.join(STORE_MARKER);
    let recorded = match std::fs::read_to_string(&marker) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(StartError::Setup(format!(
                "cannot read {}: {e}",
                marker.display()
            )));
        }
    };
    let Some(recorded) = recorded else {
        return Ok(false);
    };
    let identity = store_identity(&config.store_backend()?);
    let same = recorded.lines().any(|l| l == store_line(&identity));
    let empty = crate::store::sealed_key_id(store)
        .await
        .map_err(setup("cannot read the database"))?
        .is_none();
    if same && empty {
        return Err(StartError::Setup(format!(
            "the store ({identity}) is empty (no values, no key check), but {} records that this data \
             directory's server used it when it held data: the database was lost, emptied or replaced. Restore \
             it; to start a new, empty vault here instead, delete {}",
            marker.display(),
            marker.display()
        )));
    }
    if !same && empty {
        tracing::warn!(
            marker = %marker.display(),
            "this data directory's server used another store before ({}); this one is empty: a new, empty vault \
             starts here (if that is not what you meant, stop and fix `store`)",
            recorded
                .lines()
                .find_map(|l| l.strip_prefix("store: "))
                .unwrap_or("unknown")
        );
    }
    Ok(same)
}

/// Whether [`key_provider`] may make a new key file for the current key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFileCreation {
    /// `serve`: a missing key file is made while the store holds no sealed value.
    WhileEmpty,
    /// Tools over an existing store (`keyvault rekey`): a missing key file is an error.
    Never,
}

/// The key-encryption keys: the current one (`KEYVAULT_KEK`, or the key file, created at the first start)
/// and the previous ones (`previous_kek_files`, `KEYVAULT_PREVIOUS_KEKS`), which open and never seal. A
/// missing key file is made anew only while the store holds no sealed value: a new key could open none of
/// those (the file was lost, or `kek_file` has a typo), and the values sealed from then on would be under a
/// second key. The server refuses to start instead, before anything is written. (A rotation's new key is made
/// with `keyvault kek new`, before it is made current.)
pub async fn key_provider(
    config: &Config,
    store: &dyn SecretStore,
    creation: KeyFileCreation,
) -> Result<Arc<dyn KeyProvider>, StartError> {
    let current = current_kek(config, store, creation).await?;
    let previous = previous_keks(config)?;
    Ok(Arc::new(KeyRing::new(current, previous)))
}

/// The keys `config` and the environment name, as [`key_provider`] reads them, without a store: the current key
/// (`KEYVAULT_KEK`, else `kek_file`, which must exist) and the previous ones. For tools that only check
/// (`keyvault audit verify`).
pub fn configured_keys(config: &Config) -> Result<KeyRing, StartError> {
    Ok(KeyRing::new(existing_kek(config)?, previous_keks(config)?))
}

/// The current key as it is: `KEYVAULT_KEK`, else the existing `kek_file`.
fn existing_kek(config: &Config) -> Result<Kek, StartError> {
    if let Ok(b64) = std::env::var(KEK_ENV) {
        if let Some(path) = &config.kek_file {
            // Documented, but against the flags-over-environment rule: say which key is in use.
            tracing::warn!(
                kek_file = %path.display(),
                "KEYVAULT_KEK is set: the key-encryption key is the one it holds, and kek_file (--kek-file, \
                 KEYVAULT_KEK_FILE) is not read"
            );
        }
        return Ok(StaticKeyProvider::from_text(&b64)
            .map_err(setup("the key in KEYVAULT_KEK is not usable"))?
            .kek()
            .clone());
    }
    Ok(FileKeyProvider::load_existing(&config.kek_path())
        .map_err(setup("cannot load the key-encryption key"))?
        .kek()
        .clone())
}

/// The previous keys: the files of `previous_kek_files` (which must exist), then `KEYVAULT_PREVIOUS_KEKS`.
fn previous_keks(config: &Config) -> Result<Vec<Kek>, StartError> {
    let mut keys = Vec::new();
    for path in &config.previous_kek_files {
        let provider = FileKeyProvider::load_existing(path)
            .map_err(setup("cannot load a previous key-encryption key"))?;
        keys.push(provider.kek().clone());
    }
    if let Ok(list) = std::env::var(PREVIOUS_KEKS_ENV) {
        keys.extend(
            KeyRing::parse_list(&list)
                .map_err(setup("a key in KEYVAULT_PREVIOUS_KEKS is not usable"))?,
        );
    }
    Ok(keys)
}

async fn current_kek(
    config: &Config,
    store: &dyn SecretStore,
    creation: KeyFileCreation,
) -> Result<Kek, StartError> {
    if std::env::var(KEK_ENV).is_ok() || creation == KeyFileCreation::Never {
        return existing_kek(config);
    }
    let path = config.kek_path();
    let missing = matches!(
        std::fs::symlink_metadata(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    );
    if missing
        && let Some(kek_id) = crate::store::sealed_key_id(store)
            .await
            .map_err(setup("cannot read the database"))?
    {
        return Err(StartError::Setup(format!(
            "the key-encryption key file {} is missing, but this database already holds values sealed \
             under key id {kek_id}: restore that key file, point kek_file at it, or set KEYVAULT_KEK \
             (a new key could not open them; to rotate keys, make the new key file with `keyvault kek new` \
             and keep the old one in previous_kek_files)",
            path.display()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    Ok(FileKeyProvider::load_or_create(&path)
        .map_err(setup("cannot load the key-encryption key"))?
        .kek()
        .clone())
}

/// Open the store `config` names (SQLite: locks the database file for this process, or fails if another
/// process holds it).
pub async fn open_store(config: &Config) -> Result<Arc<dyn SecretStore>, StartError> {
    Ok(match config.store_backend()? {
        StoreBackend::Sqlite(path) => {
            let options = SqliteOptions {
                cache_bytes: usize::try_from(config.cache_mib.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
                mmap_bytes: config.mmap_mib.saturating_mul(1 << 20),
                ..SqliteOptions::default()
            };
            Arc::new(
                SqliteStore::open_with(&path, options)
                    .map_err(setup("cannot open the database"))?,
            )
        }
        StoreBackend::Postgres(url) => Arc::new(
            PostgresStore::open_with_pool(&url, config.pg_pool_size)
                .await
                .map_err(setup("cannot open the PostgreSQL store"))?,
        ),
    })
}

/// Refuses, before the store is opened, a start over a SQLite store that opening would upgrade to this build's
/// schema, while its access document would then be refused (untagged, and `--adopt-access-document` not
/// given): an upgrade is one way, so a refusal after it would leave the operator unable to go back to the older
/// build while checking the document (a87-2). Over a store in this build's schema the same refusal comes when
/// the document is read.
fn check_access_document_before_an_upgrade(config: &Config) -> Result<(), StartError> {
    if config.adopt_access_document {
        return Ok(());
    }
    let Ok(StoreBackend::Sqlite(db)) = config.store_backend() else {
        return Ok(());
    };
    let Some(version) = crate::store::sqlite::schema_to_upgrade(&db) else {
        return Ok(());
    };
    let path = config.data_dir.join(crate::admin::ACCESS_FILE);
    let Ok(Some(bytes)) = crate::admin::read_file(&path) else {
        return Ok(());
    };
    let Some(untagged) = crate::admin::tagged::untagged(&bytes) else {
        return Ok(());
    };
    Err(StartError::Setup(format!(
        "{}. Nothing was changed: the database {} is still in an older build's form (schema version {version}), \
         which this build upgrades, one way, only at a start that goes on — an older build still opens it",
        untagged.at_start(&path.display().to_string()),
        db.display()
    )))
}

impl Server {
    /// Open everything and bind the listener. Nothing is served until [`Server::serve`].
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        Self::bind_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Server::bind`] with an injected clock (tests).
    pub async fn bind_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, StartError> {
        config.validate()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data_dir = config.data_dir.clone();
        create_private_dir(&data_dir)?;
        warn_if_others_can_write(&data_dir);
        let locks = lock_server_files(&config)?;

        check_access_document_before_an_upgrade(&config)?;
        // TLS first, before the store, keys and marker are made in a new data directory: a certificate that
        // does not load stops the start with none of them created (a89-4). Files are reloaded while serving (`tls::reload`); the dev
        // certificates are fixed.
        let (certificate, ca_pem_path) =
            if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
                let certificate = ServerCertificate::from_files(cert, key)
                    .map_err(setup("cannot load the TLS certificate"))?;
                (certificate, None)
            } else {
                let named = format!("{}.localhost", config.vault_name.to_ascii_lowercase());
                let material =
                    crate::tls::load_or_create_dev_pki_with_names(&data_dir.join("tls"), &[&named])
                        .map_err(setup("cannot create the development certificates"))?;
                let certificate =
                    ServerCertificate::fixed(&material).map_err(setup("bad TLS certificate"))?;
                (certificate, material.ca_pem_path)
            };
        let tls = crate::tls::server_config_with(certificate.clone())
            .map_err(setup("bad TLS configuration"))?;

        // Storage, then keys: whether a missing key file may be made anew depends on what the store holds.
        let store = open_store(&config).await?;
        let provider = key_provider(&config, store.as_ref(), KeyFileCreation::WhileEmpty).await?;
        let audit_keys = crate::audit::AuditKeys::from_provider(provider.as_ref())
            .map_err(setup("cannot derive the audit log's key"))?;
        let envelope = Arc::new(Envelope::new(provider));
        let initialized = check_store_marker(&config, store.as_ref()).await?;
        crate::store::check_key(store.as_ref(), &envelope)
            .await
            .map_err(StartError::Setup)?;
        if !initialized {
            let marker = format!(
                "This data directory's server has used this store since {}.\n{}\nkey id: {}\n\
                 While this file names it, the server refuses to start over it if it is found empty (a lost, \
                 emptied or replaced database). Delete this file to start a new, empty vault there.\n",
                crate::auth::util::rfc3339(crate::auth::util::unix_now()),
                store_line(&store_identity(&config.store_backend()?)),
                envelope.current_kek_id(),
            );
            let path = data_dir.join(STORE_MARKER);
            write_private_file(&path, marker.as_bytes()).map_err(|e| {
                StartError::Setup(format!(
                    "cannot write the store marker {}: {e}",
                    path.display()
                ))
            })?;
        }
        crate::store::check_purge_protection(
            store.as_ref(),
            &config.vault_name,
            config.purge_protection,
        )
        .await
        .map_err(StartError::Setup)?;
        if let Some(ahead) = crate::store::load_version_clock(store.as_ref())
            .await
            .filter(|ms| *ms > 60_000)
        {
            tracing::warn!(
                ahead_secs = ahead / 1000,
                "version ids made over this store have reached a time ahead of this machine's clock (its clock \
                 was ahead then, or is behind now): new version ids continue after them, so that versions list \
                 in the order they were made"
            );
        }
        warn_if_vault_looks_renamed(store.as_ref(), &config.vault_name).await;
        let settings = VaultSettings {
            name: config.vault_name.clone(),
            retention_days: config.retention_days,
            purge_protection: config.purge_protection,
        };
        let vault = Arc::new(Vault::new(store, envelope, clock.clone(), settings));

        // Listen: the port is known from here on.
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(setup("cannot read the listening address"))?;
        let host = host_of(&local_addr);
        let base_url = format!("https://{host}");
        let suffix = config
            .resource_suffix
            .clone()
            .unwrap_or_else(|| format!("localhost:{}", local_addr.port()));
        let resource = format!("https://{suffix}");
        let issuer_host = config.issuer_host.clone().unwrap_or_else(|| host.clone());
        let issuer = format!("https://{issuer_host}/{}/v2.0", config.tenant_id);

        // Tokens.
        let signing_key_path = config.signing_key_path();
        let made = !signing_key_path.exists();
        let signing_key = Arc::new(
            SigningKey::load_or_create(&signing_key_path)
                .map_err(setup("cannot load the token signing key"))?,
        );
        if made && vault.store().is_shared() {
            // Right for the first node over a shared store (the others then use this file); wrong for a node
            // whose file is missing (a typo, a secret not mounted): its tokens and the others' refuse each other.
            tracing::warn!(
                path = %signing_key_path.display(),
                kid = %signing_key.kid(),
                "created a new token signing key: every node over this store must sign with this same key \
                 (signing_key_file); a node with another key refuses the tokens of this one, and this one theirs"
            );
        }
        let previous_keys = config
            .previous_signing_key_files
            .iter()
            .map(|path| SigningKey::load(path).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(setup("cannot load a previous token signing key"))?;
        let token_issuer = Arc::new(
            TokenIssuer::new(
                signing_key.clone(),
                issuer.clone(),
                config.tenant_id.clone(),
                config.token_lifetime_secs,
            )
            .with_previous_keys(previous_keys),
        );
        let audiences = vec![resource.clone(), format!("{resource}/")];
        let trusted = config
            .trusted_issuers
            .iter()
            .map(|t| t.load())
            .collect::<Result<Vec<_>, _>>()?;
        if trusted.iter().any(|t| t.issuer() == issuer) {
            return Err(StartError::Setup(format!(
                "a trusted issuer cannot be this server's own issuer ({issuer})"
            )));
        }
        // Issuers whose keys are fetched (JWKS URL, discovery): the first fetches, side by side (a failure is
        // logged; `serve` keeps retrying).
        let first_fetches: Vec<_> = (trusted.iter())
            .filter(|t| t.fetches_keys())
            .map(|t| {
                let t = t.clone();
                tokio::spawn(async move { t.refresh_logged().await })
            })
            .collect();
        for fetch in first_fetches {
            let _ = fetch.await;
        }
        let verifier = Arc::new(TokenVerifier::with_trusted_issuers(
            token_issuer.verification_keys(),
            issuer,
            audiences.clone(),
            trusted.clone(),
        ));
        let clients = Arc::new(ClientRegistry::new());
        for c in &config.clients {
            // Every configured client is known, whatever its credentials (none at all, only certificates or
            // federated credentials): it holds the default role, and a known id is one no trusted issuer's
            // token may name, and one the admin API lists.
            clients.ensure(c.client_id.as_str());
            let never = c.secret_hashes.iter().map(|hash| (hash, None));
            let expiring = c.secrets.iter().map(|s| (&s.hash, s.expires_on));
            for (hash, expires_on) in never.chain(expiring) {
                clients
                    .add_with_expiry(c.client_id.as_str(), hash.as_str(), expires_on)
                    .map_err(setup("bad client in the configuration"))?;
            }
        }
        // Certificates and federated credentials (client assertions at the token endpoint).
        let mut assertions = ClientAssertions::new();
        assertions.allow_reuse(config.allow_client_assertion_reuse);
        for c in &config.clients {
            let bad = |e: String| StartError::Setup(format!("[[clients]] '{}': {e}", c.client_id));
            for path in &c.certificates {
                let certificates = ClientCertificate::load(path).map_err(bad)?;
                warn_if_out_of_dates(&c.client_id, path, &certificates, clock.now());
                assertions.add_certificates(&c.client_id, certificates);
            }
            for f in &c.federated {
                let issuer = (trusted.iter().find(|t| t.issuer() == f.issuer))
                    .ok_or_else(|| bad(format!("issuer '{}' is not a trusted issuer", f.issuer)))?;
                assertions.add_federated(
                    &c.client_id,
                    FederatedCredential {
                        issuer: issuer.clone(),
                        subject: f.subject.clone(),
                        audience: f.audience().to_string(),
                    },
                );
            }
        }
        let assertions = Arc::new(assertions);
        // What a certificate assertion's `aud` may be: the token endpoint under the issuer's host, or under
        // the listening address (and `localhost` for a loopback one), as clients spell the authority.
        let mut assertion_hosts = vec![issuer_host.clone(), host.clone()];
        if local_addr.ip().is_loopback() {
            assertion_hosts.push(format!("localhost:{}", local_addr.port()));
        }
        assertion_hosts.dedup();
        let assertion_audiences = (assertion_hosts.iter())
            .map(|h| format!("https://{h}/{}/oauth2/v2.0/token", config.tenant_id))
            .collect();
        verifier.refuse_local_client_ids(clients.clone());
        let dev = if config.dev {
            Some(dev_credentials(
                &config,
                &data_dir,
                &clients,
                &base_url,
                &host,
                ca_pem_path.as_deref(),
            )?)
        } else {
            None
        };

        // Access control: the configured roles and assignments, plus the dev client's role.
        let policy = Arc::new(config.policy()?);
        if let (Some(dev), Some(role)) =
            (&dev, crate::config::role_setting(&config.dev_client_role))
        {
            policy
                .assign(Assignment {
                    id: crate::auth::configured_assignment_id(
                        &dev.client_id,
                        &policy.role_name(role).unwrap_or_else(|| role.to_string()),
                        &Scope::Vault.to_string(),
                    ),
                    principal: dev.client_id.clone(),
                    role: role.to_string(),
                    scope: Scope::Vault,
                })
                .map_err(setup("dev_client_role"))?;
        }
        // What the admin API made earlier (managed principals, secrets and assignments).
        let admin = Arc::new(
            crate::admin::AccessAdmin::open(
                Some(&data_dir),
                Some(vault.store().clone()),
                clients.clone(),
                policy.clone(),
                crate::admin::AccessKeys {
                    envelope: vault.envelope().clone(),
                    binding: crate::admin::tagged::Binding::new(
                        &config.vault_name,
                        &config.tenant_id,
                    ),
                    adopt: config.adopt_access_document,
                },
            )
            .await
            .map_err(StartError::Setup)?
            .with_assertions(assertions.clone()),
        );
        admin.spawn_refresher();
        let audit = match config.audit_log_path() {
            Some(path) => Some(
                AuditLog::open_signed(
                    &path,
                    config.audit_max_bytes,
                    config.audit_keep_files,
                    &audit_keys,
                )
                .map_err(setup("cannot open the audit log"))?,
            ),
            None => None,
        };

        let challenge = format!(
            "Bearer authorization=\"https://{issuer_host}/{}\", resource=\"{resource}\"",
            config.tenant_id
        );
        let challenge =
            ::http::HeaderValue::from_str(&challenge).map_err(setup("bad challenge header"))?;
        let clock_fn: Arc<dyn Fn() -> i64 + Send + Sync> = {
            let clock = clock.clone();
            Arc::new(move || clock.now())
        };
        let limiter = Arc::new(crate::http::limits::Limiter::new(
            config.request_limits.clone(),
        ));
        let auth_state = AuthState {
            issuer: token_issuer.clone(),
            clients: clients.clone(),
            tenant: config.tenant_id.clone(),
            audiences,
            clock: clock_fn,
            assertions,
            assertion_audiences,
            limiter: limiter.clone(),
        };
        let http_metrics = Arc::new(HttpMetrics::new());
        let open_connections = Arc::new(AtomicU64::new(0));
        let sources = Arc::new(SourceLimit::new(config.max_connections_per_source));
        let metrics = match config.metrics_addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                let gauge = open_connections.clone();
                let metrics = Metrics {
                    http: http_metrics.clone(),
                    store: vault.store().clone(),
                    audit: audit.clone(),
                    connections: Arc::new(move || gauge.load(Ordering::Relaxed)),
                    connections_refused: {
                        let sources = sources.clone();
                        Arc::new(move || sources.refused.load(Ordering::Relaxed))
                    },
                    start_time: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                    access: admin.clone(),
                    limiter: limiter.clone(),
                };
                Some((listener, Arc::new(metrics)))
            }
            None => None,
        };
        let metrics_addr = match &metrics {
            Some((listener, _)) => Some(
                listener
                    .local_addr()
                    .map_err(setup("cannot read the metrics listener's address"))?,
            ),
            None => None,
        };
        let state = Arc::new(HttpState {
            metrics: http_metrics,
            vault: vault.clone(),
            verifier,
            challenge,
            policy: policy.clone(),
            audit: audit.clone(),
            throttle: crate::http::throttle::Throttle::new(config.throttle_settings()),
            admin: admin.clone(),
            limiter,
            rekey: Default::default(),
            store_health: Default::default(),
        });
        let app = http::app(state, crate::auth::router(auth_state));
        // Last, once nothing can refuse this start: the current key is noted as one servers have had current
        // (a key refused at start was never current).
        crate::store::note_current_key(vault.store().as_ref(), vault.envelope())
            .await
            .map_err(StartError::Setup)?;

        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(tls),
            app,
            vault,
            policy,
            clients,
            issuer: token_issuer,
            audit,
            info: ServerInfo {
                local_addr,
                base_url,
                resource,
                ca_cert: ca_pem_path,
                dev,
                metrics_addr,
            },
            certificate,
            tls_reload_interval: Duration::from_secs(config.tls.reload_interval_secs),
            data_dir,
            _locks: locks,
            sweep_interval: Duration::from_secs(config.sweep_interval_secs.max(1)),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs.max(1)),
            min_body_rate: config.request_limits.body_min_rate,
            trusted_issuers: trusted,
            metrics,
            open_connections,
            sources,
        })
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The access policy (roles and assignments); changes take effect on the next request.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The OAuth clients that may get tokens; changes take effect on the next token request.
    pub fn clients(&self) -> &Arc<ClientRegistry> {
        &self.clients
    }

    /// The built-in token issuer.
    pub fn issuer(&self) -> &Arc<TokenIssuer> {
        &self.issuer
    }

    /// The audit log, if on.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// The TLS certificate presented to new connections: [`ServerCertificate::reload`] replaces it from the
    /// configured files (the CLI does on SIGHUP; [`Server::serve`] also watches the files every
    /// `tls.reload_interval_secs`).
    pub fn tls_certificate(&self) -> &Arc<ServerCertificate> {
        &self.certificate
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight requests finish (up to 10 s),
    /// (every acknowledged write is already on disk).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        if let Some(dev) = &self.info.dev {
            let json = serde_json::to_vec_pretty(dev).map_err(std::io::Error::other)?;
            let path = self.data_dir.join("dev-credentials.json");
            write_private_file(&path, &json).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
            })?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let jwks_refreshers: Vec<_> = self
            .trusted_issuers
            .iter()
            .filter(|t| t.fetches_keys())
            .map(|t| tokio::spawn(t.clone().refresh_loop(stop_rx.clone())))
            .collect();
        let certificate_watch = tokio::spawn(
            self.certificate
                .clone()
                .watch(self.tls_reload_interval, stop_rx.clone()),
        );
        let retired_poll = self
            .vault
            .store()
            .is_shared()
            .then(|| tokio::spawn(kek_retired_loop(self.vault.clone(), stop_rx.clone())));
        let metrics_server = self.metrics.map(|(listener, metrics)| {
            tokio::spawn(crate::metrics::listener::serve(
                listener,
                metrics,
                stop_rx.clone(),
            ))
        });
        let sweeper = tokio::spawn(sweep_loop(
            self.vault.clone(),
            self.sweep_interval,
            stop_rx.clone(),
        ));
        raise_open_file_limit();
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The same header budget on both protocols (hyper's defaults differ: about 400 KiB on HTTP/1.1, 16 KiB
        // on HTTP/2), so a large token works or fails alike whichever protocol the client negotiated.
        builder
            .http2()
            // RFC 9113's floor; the SDKs and keyvault-bench (64) use fewer (each stream's body is bounded by
            // the body deadline and budget, `http::limits`).
            .max_concurrent_streams(100)
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        builder.http1().max_buf_size(MAX_HEADER_BYTES);
        // A connection speaks the protocol its TLS handshake chose (RFC 7301; over TLS, HTTP/2 only by ALPN:
        // RFC 9113 §3.3): HTTP/2 when the client offered `h2`, HTTP/1.1 otherwise. Sniffing the first bytes
        // instead answered HTTP/1.1 text on an `h2` connection, and a bad preface with an HTTP/1.1 400.
        let builders = Arc::new((builder.clone().http1_only(), builder.http2_only()));
        // Quiet connections, and clients that trickle a request without ever completing it, are cut off by
        // `IdleIo` (one timer per connection). hyper's own `header_read_timeout` would do the second for
        // HTTP/1.1 too, but makes and drops a timer for every request: 2.8 % of a GET's instructions.
        let (idle_timeout, answer_timeout) =
            (self.idle_timeout, self.idle_timeout.min(ANSWER_TIMEOUT));
        // An upload's bytes extend the answer timeout as they extend its body's deadline.
        let min_rate = self.min_body_rate;
        tokio::pin!(shutdown);
        // Every connection's task: drained at shutdown, and given up (aborted) past the drain's limit while the
        // audit log is still open, so that what their ends write (a 499 line) comes before its head is logged.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // Those that have ended, reaped (each keeps a few bytes until joined).
            while connections.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Repeats every 50 ms while file descriptors are exhausted.
                        crate::budgeted_log!(ACCEPT_FAILURES_LOG, warn, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(source) = self.sources.enter(peer.ip()) else {
                // Closed at once, before any TLS: the client sees its connection end, and the slot stays
                // free for other sources.
                crate::budgeted_log!(
                    SOURCE_LIMIT_LOG,
                    warn,
                    source = %source_key(peer.ip()),
                    limit = self.sources.limit,
                    "a connection was refused: its source has as many open as max_connections_per_source allows"
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let (service, handling) = self.app.for_connection();
            let builders = builders.clone();
            let mut stop = stop_rx.clone();
            let open = OpenConnection::new(&self.open_connections);
            connections.spawn(async move {
                let _permit = permit;
                let _open = open;
                let _source = source;
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let tls = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = stopping(&mut stop) => return,
                };
                // Over HTTP/2 a client's last bytes are often frames that get no answer (WINDOW_UPDATE,
                // a SETTINGS acknowledgement, PRIORITY): counted as a request left unanswered, they closed
                // quiet connections after the answer limit instead of the idle one. HTTP/2 needs no such
                // limit: a stream's body has its own deadline (`http::limits`), a header block is bounded by
                // the header list size, and PINGs keep a connection open whatever the limit.
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let answer = if h2 { idle_timeout } else { answer_timeout };
                let mut io = crate::idle::IdleIo::new(tls, idle_timeout, answer, min_rate);
                io.limit_write_stalls(idle_timeout);
                io.wait_for_requests(handling);
                // A quiet HTTP/2 connection is told it is being closed (GOAWAY) before it is (RFC 9113
                // §9.1), so that its client opens a new one for its next request instead of sending it on a
                // connection about to end. HTTP/1.1 has no such message: its idle connections just close.
                let idle = h2.then(|| {
                    let idle = Arc::new(tokio::sync::Notify::new());
                    io.notify_when_idle(idle.clone());
                    idle
                });
                let builder = if h2 { &builders.1 } else { &builders.0 };
                let conn = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                tokio::pin!(conn);
                let idle = async {
                    match idle {
                        Some(idle) => idle.notified().await,
                        None => std::future::pending().await,
                    }
                };
                // Stopping, or quiet: requests in flight finish, then the connection closes (HTTP/2: GOAWAY
                // first).
                let ended = tokio::select! {
                    ended = conn.as_mut() => ended,
                    _ = stopping(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                    _ = idle => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}: given up");
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
        // An HTTP/2 request runs as a task of its own, which outlives its connection's: those given up end
        // soon (their connection is gone), and their audit lines are written before the log's head is.
        let given_up = tokio::time::Instant::now() + REQUESTS_GIVEN_UP_WAIT;
        while self.app.requests_in_flight() > 0 && tokio::time::Instant::now() < given_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A rekey started by a request outlives it: stopped here, its end is audited before the log closes.
        self.app.stop_rekey(REKEY_STOP_WAIT).await;
        let _ = sweeper.await;
        let _ = certificate_watch.await;
        if let Some(poll) = retired_poll {
            let _ = poll.await;
        }
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        for refresher in jwks_refreshers {
            let _ = refresher.await;
        }
        if let Some(audit) = &self.audit {
            // Written out, and its head logged here: an anchor apart from the audit file.
            audit.close().await;
        }
        Ok(())
    }
}

/// A connection's source, as [`SourceLimit`] counts it: an IPv4 address (also when it comes IPv4-mapped),
/// or the /64 an IPv6 address is in (one host's usual share of addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(std::net::Ipv4Addr),
    V6(u64),
}

fn source_key(ip: std::net::IpAddr) -> SourceKey {
    match ip {
        std::net::IpAddr::V4(v4) => SourceKey::V4(v4),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SourceKey::V4(v4),
            None => SourceKey::V6((v6.to_bits() >> 64) as u64),
        },
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKey::V4(v4) => write!(f, "{v4}"),
            SourceKey::V6(prefix) => {
                let net = std::net::Ipv6Addr::from_bits(u128::from(*prefix) << 64);
                write!(f, "{net}/64")
            }
        }
    }
}

/// `accept`'s refusals for the per-source limit are logged twice per 10 s at most (with a count).
static SOURCE_LIMIT_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(2);

/// Open connections per source, against `max_connections_per_source`: without it one client could hold all
/// of the server's [`MAX_CONNECTIONS`] (a request a minute, or an HTTP/2 PING, keeps a connection from being
/// idle), and new clients would wait in the listen backlog.
struct SourceLimit {
    /// 0: no limit (nothing is counted).
    limit: u32,
    open: std::sync::Mutex<std::collections::HashMap<SourceKey, u32>>,
    /// Connections refused for the limit (for the metrics).
    refused: AtomicU64,
}

impl SourceLimit {
    fn new(limit: u32) -> SourceLimit {
        SourceLimit {
            limit,
            open: Default::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts a new connection from `ip`, or refuses it (`None`) when its source has `limit` open.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourceGuard> {
        if self.limit == 0 {
            return Some(SourceGuard(None));
        }
        let key = source_key(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *count += 1;
        Some(SourceGuard(Some((self.clone(), key))))
    }
}

/// A connection counted against its source while it lives.
struct SourceGuard(Option<(Arc<SourceLimit>, SourceKey)>);

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some((limit, key)) = self.0.take() {
            let mut open = limit
                .open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Until the server stops (or the sender is gone).
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Counts a connection as open while it lives (for the metrics).
struct OpenConnection(Arc<AtomicU64>);

impl OpenConnection {
    fn new(gauge: &Arc<AtomicU64>) -> OpenConnection {
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Warns about a configured client certificate that is expired or not yet valid: its assertions are refused
/// until it is valid (a rotation may configure the next certificate early, or leave the old one for a while).
/// Public facts only: the file, the thumbprint, the dates.
fn warn_if_out_of_dates(
    client_id: &str,
    path: &Path,
    certificates: &[ClientCertificate],
    now: i64,
) {
    use crate::auth::assertion::Validity;
    use crate::auth::util::rfc3339;
    for c in certificates {
        let why = match c.validity_at(now, 0) {
            Validity::Valid => continue,
            Validity::Expired => {
                "a configured client certificate has expired: assertions it signs are refused"
            }
            Validity::NotYetValid => {
                "a configured client certificate is not yet valid: assertions it signs are refused until notBefore"
            }
        };
        tracing::warn!(
            client_id,
            path = %path.display(),
            x5t_s256 = c.thumbprint_sha256(),
            not_before = %rfc3339(c.not_before()),
            not_after = %rfc3339(c.not_after()),
            "{why}"
        );
    }
}

/// Values are bound to their vault's name, so a store opened under another `vault_name` looks empty. When this
/// vault has no secret (live or deleted) but the store holds another vault's, say so: a renamed or mistyped
/// `vault_name` is the likely cause, and nothing else would tell.
async fn warn_if_vault_looks_renamed(store: &dyn SecretStore, vault: &str) {
    let empty = matches!(store.list_latest(vault, None, 1).await, Ok(rows) if rows.is_empty())
        && matches!(store.list_deleted(vault, None, 1).await, Ok(rows) if rows.is_empty());
    if !empty {
        return;
    }
    if let Ok(Some(other)) = store.any_sealed().await
        && other.vault != vault
    {
        tracing::warn!(
            vault_name = vault,
            store_holds = %other.vault,
            "this vault has no secrets, but the store holds secrets of another vault name: is vault_name right?"
        );
    }
}

/// Over a shared store, reads every [`crate::store::KEK_RETIRED_POLL`] whether `keyvault rekey` (run
/// elsewhere) retired this node's current key-encryption key; once it has, the envelope seals nothing more
/// (every write that seals a value gets 503) and the loop ends. One small meta read per interval; the write
/// path only loads the flag.
async fn kek_retired_loop(vault: Arc<Vault>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(crate::store::KEK_RETIRED_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        match crate::store::current_kek_retired(vault.store().as_ref(), vault.envelope()).await {
            Ok(false) => {}
            Ok(true) => {
                vault.envelope().retire_current();
                tracing::error!(
                    kek_id = %vault.envelope().current_kek_id(),
                    "`keyvault rekey` retired this node's key-encryption key: every write that seals a value \
                     now gets 503; restart this node with the new key current (the old one may stay previous)"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read whether this node's key-encryption key was retired")
            }
        }
    }
}

async fn sweep_loop(
    vault: Arc<Vault>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    let mut leader = false;
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        // Purge protection turned on by another node over the same store: report it from now on.
        if let Err(e) = vault.refresh_purge_protection().await {
            tracing::debug!(error = %e, "cannot read whether purge protection was turned on elsewhere");
        }
        // With a shared store, one node at a time sweeps; the others keep asking, and one of them takes
        // over when the leader dies.
        match vault.store().try_acquire_leadership().await {
            Ok(true) => {
                if !leader {
                    tracing::debug!("this node runs the retention sweeper");
                }
                leader = true;
            }
            Ok(false) => {
                if leader {
                    tracing::info!("another node now runs the retention sweeper");
                }
                leader = false;
                continue;
            }
            Err(e) => {
                leader = false;
                tracing::warn!(error = %e, "cannot tell whether this node should run the retention sweeper");
                continue;
            }
        }
        // A stop ends a sweep in progress (a backlog, or a database that makes it wait, would otherwise hold up
        // the shutdown): what it purged so far stays purged, the rest is left for the next start.
        let swept = tokio::select! {
            _ = stop.changed() => return,
            swept = vault.sweep() => swept,
        };
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "retention sweep purged deleted secrets"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}

/// The dev client's secret hash, kept between starts (see [`dev_credentials`]).
const DEV_HASH_FILE: &str = "dev-client.hash";

/// The dev client: reused from an earlier `dev-credentials.json` in the data dir, or made anew.
fn dev_credentials(
    config: &Config,
    data_dir: &Path,
    clients: &ClientRegistry,
    base_url: &str,
    host: &str,
    ca_pem_path: Option<&Path>,
) -> Result<DevCredentials, StartError> {
    let previous: Option<DevCredentials> = std::fs::read(data_dir.join("dev-credentials.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let (client_id, client_secret) = match previous {
        Some(p) if p.tenant_id == config.tenant_id => (p.client_id, p.client_secret),
        _ => (
            crate::auth::generate_client_id(),
            SecretString::new(crate::auth::generate_secret()),
        ),
    };
    // The secret's argon2 hash is kept beside the credentials (`{client id} {hash}`, 0600), so a restart
    // reuses it instead of spending an argon2 run (most of a dev start's CPU).
    let hash_path = data_dir.join(DEV_HASH_FILE);
    let kept = std::fs::read_to_string(&hash_path).ok().and_then(|text| {
        let (id, hash) = text.trim().split_once(' ')?;
        (id == client_id).then(|| hash.to_string())
    });
    let hash = match kept {
        Some(hash) => hash,
        None => {
            let hash = crate::auth::hash_secret(client_secret.expose())
                .map_err(setup("cannot hash the dev secret"))?;
            write_private_file(&hash_path, format!("{client_id} {hash}\n").as_bytes())
                .map_err(setup("cannot write the dev client's hash"))?;
            hash
        }
    };
    clients
        .add(client_id.as_str(), hash)
        .map_err(setup("cannot register the dev client"))?;
    let port = host.rsplit(':').next().unwrap_or_default();
    Ok(DevCredentials {
        vault_url: base_url.to_string(),
        vault_url_named: format!(
            "https://{}.localhost:{port}",
            config.vault_name.to_ascii_lowercase()
        ),
        ca_cert: ca_pem_path
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
            .unwrap_or_default(),
        tenant_id: config.tenant_id.clone(),
        client_id,
        client_secret,
        authority_host: base_url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server stopping while its retention sweep waits (here for the database's write lock, which another
    /// connection holds, as a long backlog would keep it busy) ends the sweep at once instead of waiting for it
    /// to finish or fail (a89).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_ends_a_sweep_in_progress() {
        use crate::store::VersionRow;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let row = VersionRow {
            name: "gone".into(),
            version: "0".repeat(32),
            sealed: vec![1, 2, 3],
            content_type: None,
            tags: None,
            enabled: true,
            nbf: None,
            exp: None,
            created: 1,
            updated: 1,
        };
        store.put_version("v", row).await.unwrap();
        // Deleted long ago: due for purging.
        store.soft_delete("v", "gone", 1, 2).await.unwrap();
        let envelope = Arc::new(Envelope::new(Arc::new(KeyRing::new(
            Kek::from_bytes([7; 32]),
            [],
        ))));
        let settings = VaultSettings {
            name: "v".into(),
            retention_days: 7,
            purge_protection: false,
        };
        let vault = Arc::new(Vault::new(store, envelope, Arc::new(SystemClock), settings));
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

        let (stop, stopped) = tokio::sync::watch::channel(false);
        // (The test keeps the vault: the last one dropped closes the store, which waits for its writer.)
        let sweeper = tokio::spawn(sweep_loop(
            vault.clone(),
            Duration::from_millis(10),
            stopped,
        ));
        // The first sweep has started, and waits for the lock.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = std::time::Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3), sweeper)
            .await
            .expect("the sweeper stopped within 3 s")
            .unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        drop(vault);
    }

    /// A private file whose write fails part-way leaves no temporary file behind (a89-4: a full disk left an
    /// empty `store.tmp` in the data directory). Here the rename fails: a non-empty directory holds the name.
    #[test]
    fn a_failed_private_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.initialized");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_private_file(&path, b"contents").is_err());
        assert!(!path.with_extension("tmp").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["store.initialized"]);
    }

    /// The audit log's lock is named from where the log really is, also before it exists: through a
    /// symlink to a file not made yet (relative or absolute, a link to a link), a symlinked directory, or
    /// another spelling of the path; a loop of links ends.
    #[cfg(unix)]
    #[test]
    fn a_path_is_followed_to_where_it_really_is_before_it_exists() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let real_dir = std::fs::canonicalize(dir.path()).unwrap();
        let logs = real_dir.join("logs");
        std::fs::create_dir(&logs).unwrap();
        let want = logs.join("audit.log");
        symlink(&want, dir.path().join("absolute")).unwrap();
        symlink("logs/audit.log", dir.path().join("relative")).unwrap();
        symlink("relative", dir.path().join("twice")).unwrap();
        symlink(&logs, dir.path().join("dir-link")).unwrap();
        for path in [
            "absolute",
            "relative",
            "twice",
            "dir-link/audit.log",
            "logs/../logs/audit.log",
        ] {
            assert_eq!(where_it_really_is(&dir.path().join(path)), want, "{path}");
        }
        // Once made, the same.
        std::fs::write(&want, b"").unwrap();
        assert_eq!(where_it_really_is(&dir.path().join("twice")), want);
        symlink("loop-b", dir.path().join("loop-a")).unwrap();
        symlink("loop-a", dir.path().join("loop-b")).unwrap();
        let _ = where_it_really_is(&dir.path().join("loop-a"));
    }

    /// One store, however it is spelled, has one identity in `store.initialized`: otherwise a start under
    /// another spelling rewrites the marker, and a later loss under the first goes unnoticed.
    #[test]
    fn a_store_has_one_identity_however_it_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let sqlite = |p: PathBuf| store_identity(&StoreBackend::Sqlite(p));
        let canonical = sqlite(data.join("vault.db"));
        assert_eq!(sqlite(data.join("../d/vault.db")), canonical);
        assert_eq!(sqlite(data.join("./vault.db")), canonical);
        std::fs::write(data.join("vault.db"), b"").unwrap();
        assert_eq!(
            sqlite(data.join("../d/./vault.db")),
            canonical,
            "existing or not"
        );
        assert_ne!(sqlite(data.join("other.db")), canonical);

        let pg = |u: &str| store_identity(&StoreBackend::Postgres(u.to_string()));
        let one = pg("postgres://kv@db.example:5432/vault");
        for same in [
            "postgres://kv:Sup3rSecretPw@db.example:5432/vault",
            "postgresql://kv@DB.example/vault",
            "postgres://kv@db.example:5432/vault?sslmode=verify-full&connect_timeout=5",
            "postgres://kv@db.example/vault?pass%77ord=Sup3rSecretPw",
            "host=db.example port=5432 dbname=vault user=other password=Sup3rSecretPw",
        ] {
            let id = pg(same);
            assert_eq!(id, one, "{same}");
            assert!(!id.contains("Sup3rSecretPw"));
        }
        assert_eq!(one, "postgres db.example:5432/vault");
        assert_ne!(pg("postgres://kv@db.example:5432/other"), one);
        assert_ne!(pg("postgres://kv@db2.example:5432/vault"), one);
        assert_eq!(
            pg("postgres://kv@db.example/"),
            "postgres db.example:5432/kv"
        );
    }
}
