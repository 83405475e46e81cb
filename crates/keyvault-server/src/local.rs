//! An in-process vault for tests: a real HTTPS server on 127.0.0.1:0 with a fresh data directory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let vault = keyvault_server::local::LocalVault::start().await?;
//! println!("{} trusts {} bytes of CA", vault.vault_url(), vault.ca_cert_pem().len());
//! vault.shutdown().await;
//! # Ok(()) }
//! ```

use crate::config::Config;
use crate::server::{DevCredentials, Server, StartError};
use crate::vault::{Clock, SystemClock};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings of a [`LocalVault`].
#[derive(Clone)]
pub struct LocalVaultOptions {
    pub retention_days: u32,
    pub purge_protection: bool,
    /// The clock the vault and its token checks use.
    pub clock: Arc<dyn Clock>,
    /// Throttling (`rate_limit_per_10s`, `rate_limit_create_per_10s`, `rate_limit_window_secs` of the
    /// configuration). Default: off.
    pub throttle: crate::http::throttle::ThrottleSettings,
    /// Trusted external OIDC issuers (`[[trusted_issuers]]`). Default: none.
    pub trusted_issuers: Vec<crate::config::TrustedIssuerConfig>,
    /// The tenant of the built-in issuer (`tenant_id`). Default: the configuration's default.
    pub tenant_id: Option<String>,
    /// Configured clients (`[[clients]]`: secrets, certificates, federated credentials), besides the dev
    /// client. Default: none.
    pub clients: Vec<crate::config::ClientConfig>,
    /// Serve `/metrics` on this address (`127.0.0.1:0`: a port the kernel picks; see
    /// [`LocalVault::metrics_url`]). Default: off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The bounds on request bodies and on backups and restores ([`crate::http::limits`]). Default: the
    /// server's.
    pub request_limits: crate::http::limits::RequestLimits,
    /// `idle_timeout_secs`: quiet connections, and requests trickled for this long (30 s at most), are
    /// cut off. Default: the configuration's (120).
    pub idle_timeout_secs: Option<u64>,
}

impl Default for LocalVaultOptions {
    fn default() -> Self {
        LocalVaultOptions {
            retention_days: 90,
            purge_protection: false,
            clock: Arc::new(SystemClock),
            throttle: Default::default(),
            trusted_issuers: Vec::new(),
            tenant_id: None,
            clients: Vec::new(),
            metrics_addr: None,
            request_limits: Default::default(),
            idle_timeout_secs: None,
        }
    }
}

/// A running in-process vault. Stops when [`LocalVault::shutdown`] is awaited or when dropped.
pub struct LocalVault {
    creds: DevCredentials,
    ca_pem: Vec<u8>,
    vault: Arc<crate::vault::Vault>,
    policy: Arc<crate::auth::Policy>,
    clients: Arc<crate::auth::ClientRegistry>,
    audit: Option<crate::audit::AuditLog>,
    metrics_url: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
}

impl LocalVault {
    /// Start a vault with default settings.
    pub async fn start() -> Result<LocalVault, StartError> {
        Self::start_with(LocalVaultOptions::default()).await
    }

    /// Start a vault with these settings.
    pub async fn start_with(options: LocalVaultOptions) -> Result<LocalVault, StartError> {
        let dir = tempfile::tempdir()
            .map_err(|e| StartError::Setup(format!("cannot create a temp dir: {e}")))?;
        let defaults = Config::default();
        let config = Config {
            tenant_id: options
                .tenant_id
                .unwrap_or_else(|| defaults.tenant_id.clone()),
            addr: "127.0.0.1:0".parse().expect("a valid address"),
            data_dir: dir.path().to_path_buf(),
            dev: true,
            retention_days: options.retention_days,
            purge_protection: options.purge_protection,
            rate_limit_per_10s: options.throttle.limit,
            rate_limit_create_per_10s: options.throttle.create_limit,
            rate_limit_window_secs: options.throttle.window.as_secs().max(1),
            trusted_issuers: options.trusted_issuers,
            clients: options.clients,
            metrics_addr: options.metrics_addr,
            request_limits: options.request_limits,
            idle_timeout_secs: options
                .idle_timeout_secs
                .unwrap_or(defaults.idle_timeout_secs),
            ..defaults
        };
        let server = Server::bind_with_clock(config, options.clock).await?;
        let creds = server
            .info()
            .dev
            .clone()
            .expect("dev mode always has credentials");
        let ca_pem = std::fs::read(&creds.ca_cert)
            .map_err(|e| StartError::Setup(format!("cannot read the dev CA: {e}")))?;
        let vault = server.vault().clone();
        let policy = server.policy().clone();
        let clients = server.clients().clone();
        let audit = server.audit().cloned();
        let metrics_url = server
            .info()
            .metrics_addr
            .map(|addr| format!("http://{addr}/metrics"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Ok(LocalVault {
            creds,
            ca_pem,
            vault,
            policy,
            clients,
            audit,
            metrics_url,
            stop: Some(tx),
            task: Some(task),
            dir,
        })
    }

    /// `https://127.0.0.1:{port}` (clients turn challenge-resource verification off for it).
    pub fn vault_url(&self) -> &str {
        &self.creds.vault_url
    }

    /// `https://myvault.localhost:{port}` (passes challenge-resource verification where it resolves).
    pub fn vault_url_named(&self) -> &str {
        &self.creds.vault_url_named
    }

    /// The dev CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    pub fn tenant_id(&self) -> &str {
        &self.creds.tenant_id
    }

    pub fn client_id(&self) -> &str {
        &self.creds.client_id
    }

    pub fn client_secret(&self) -> &str {
        self.creds.client_secret.expose()
    }

    /// `https://127.0.0.1:{port}`: the token endpoint is `{authority_host}/{tenant}/oauth2/v2.0/token`.
    pub fn authority_host(&self) -> &str {
        &self.creds.authority_host
    }

    /// Everything at once, as `keyvault serve --dev` writes it.
    pub fn credentials(&self) -> &DevCredentials {
        &self.creds
    }

    /// The data directory (deleted when the vault is dropped).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The vault domain behind the server (for tests that drive the sweeper or inspect state).
    pub fn vault(&self) -> &Arc<crate::vault::Vault> {
        &self.vault
    }

    /// The access policy: assign roles to principals at run time (the dev client is Key Vault
    /// Administrator).
    pub fn policy(&self) -> &Arc<crate::auth::Policy> {
        &self.policy
    }

    /// The OAuth clients that may get tokens.
    pub fn clients(&self) -> &Arc<crate::auth::ClientRegistry> {
        &self.clients
    }

    /// Registers another OAuth client with a new random secret; returns (client id, secret). It may do
    /// nothing until given a role through [`LocalVault::policy`].
    pub fn add_client(&self) -> (String, String) {
        let id = crate::auth::generate_client_id();
        let secret = crate::auth::generate_secret();
        let hash = crate::auth::hash_secret(&secret).expect("argon2 hashing works");
        self.clients
            .add(id.as_str(), hash)
            .expect("a fresh hash is valid");
        (id, secret)
    }

    /// `http://127.0.0.1:{port}/metrics`, if metrics are on ([`LocalVaultOptions::metrics_addr`]).
    pub fn metrics_url(&self) -> Option<&str> {
        self.metrics_url.as_deref()
    }

    /// The audit log (`{data_dir}/audit.log`).
    pub fn audit(&self) -> Option<&crate::audit::AuditLog> {
        self.audit.as_ref()
    }

    /// Stop the server and wait until it has finished.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LocalVault {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
