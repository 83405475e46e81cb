//! `keyvault serve`: configuration from a TOML file, the environment and flags (in rising precedence).

use clap::Args;
use keyvault_server::{Config, Server};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args)]
#[command(
    after_help = "Example:\n  keyvault serve --dev --data-dir ./vault-data --addr 127.0.0.1:8443"
)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "KEYVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "KEYVAULT_ADDR")]
    addr: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP, no auth) on this address, e.g. 127.0.0.1:9090
    /// or 0.0.0.0:9090 for a scraper on the pod network [default: off].
    #[arg(long, env = "KEYVAULT_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Data directory: database, keys, dev certificates [default: ./keyvault-data].
    #[arg(long, env = "KEYVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Development mode: generate a CA and server certificate, create a client, write dev-credentials.json.
    #[arg(long)]
    dev: bool,
    /// Server certificate chain (PEM). Reloaded without a restart on SIGHUP and when the files change.
    #[arg(long, env = "KEYVAULT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "KEYVAULT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Seconds between looks at the certificate and key files; a change reloads them (a bad pair is refused
    /// and the current certificate kept). 0 = off (SIGHUP still reloads), at most 86400 [default: 60].
    #[arg(long, env = "KEYVAULT_TLS_RELOAD_INTERVAL_SECS", value_name = "SECS")]
    tls_reload_interval_secs: Option<u64>,
    /// Days a deleted secret stays recoverable, 7-90 [default: 90].
    #[arg(long, env = "KEYVAULT_RETENTION_DAYS")]
    retention_days: Option<u32>,
    /// Refuse every purge request: deleted secrets are purged only by the server, when their retention period
    /// ends (cannot be undone). Takes true/false, 1/0, yes/no, on/off (the flag alone: true); overrides the
    /// configuration file either way.
    #[arg(
        long,
        env = "KEYVAULT_PURGE_PROTECTION",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    purge_protection: Option<bool>,
    /// Tenant id in tokens and the auth challenge [default: keyvault-rs].
    #[arg(long, env = "KEYVAULT_TENANT_ID")]
    tenant_id: Option<String>,
    /// Vault name [default: myvault].
    #[arg(long, env = "KEYVAULT_VAULT_NAME")]
    vault_name: Option<String>,
    /// DNS suffix vaults are addressed under (`https://{name}.{suffix}`) [default: localhost:{port}].
    #[arg(long, env = "KEYVAULT_RESOURCE_SUFFIX")]
    resource_suffix: Option<String>,
    /// Host (and port) in the `iss` claim of issued tokens; nodes behind one address must share it
    /// [default: the listening address].
    #[arg(long, env = "KEYVAULT_ISSUER_HOST")]
    issuer_host: Option<String>,
    /// Storage: `sqlite` (the data directory's vault.db), `sqlite:PATH`, or
    /// `postgres://user:password@host:port/dbname` for several nodes over one database (TLS:
    /// `?sslmode=verify-full&sslrootcert=CA.pem`, as libpq). Prefer the environment variable or the config
    /// file for a URL with a password [default: sqlite].
    #[arg(long, env = "KEYVAULT_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Key-encryption key file (created if missing; ignored when KEYVAULT_KEK is set)
    /// [default: DATA_DIR/kek.key].
    #[arg(long, env = "KEYVAULT_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// Token signing key file (created if missing) [default: DATA_DIR/token-signing-key.pk8].
    #[arg(long, env = "KEYVAULT_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,
    /// Accept an access-control document without an integrity tag (one written by a build before the tag)
    /// and save it tagged under the key-encryption key; once, at an upgrade, after checking its principals
    /// and assignments. A flag only (no variable, no file setting): an untagged document is also what a
    /// writer of the store without the key would leave.
    #[arg(long)]
    adopt_access_document: bool,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let config =
                    Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                crate::hardening::warn_if_config_exposes_password(path, &config);
                config
            }
            None => Config::default(),
        };
        if let Some(v) = self.addr {
            config.addr = v;
        }
        if let Some(v) = self.metrics_addr {
            config.metrics_addr = Some(v);
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        config.dev |= self.dev;
        config.adopt_access_document |= self.adopt_access_document;
        if let Some(v) = self.tls_cert {
            config.tls.cert = Some(v);
        }
        if let Some(v) = self.tls_key {
            config.tls.key = Some(v);
        }
        if let Some(v) = self.tls_reload_interval_secs {
            config.tls.reload_interval_secs = v;
        }
        if let Some(v) = self.retention_days {
            config.retention_days = v;
        }
        if let Some(v) = self.purge_protection {
            config.purge_protection = v;
        }
        if let Some(v) = self.tenant_id {
            config.tenant_id = v;
        }
        if let Some(v) = self.vault_name {
            config.vault_name = v;
        }
        if let Some(v) = self.resource_suffix {
            config.resource_suffix = Some(v);
        }
        if let Some(v) = self.issuer_host {
            config.issuer_host = Some(v);
        }
        if let Some(v) = self.store {
            config.store = Some(keyvault_server::config::StoreLocation(v));
        }
        if let Some(v) = self.kek_file {
            config.kek_file = Some(v);
        }
        if let Some(v) = self.signing_key_file {
            config.signing_key_file = Some(v);
        }
        Ok(config)
    }
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let mut shutdown = Box::pin(shutdown_signal()?);
        let mut hangup = hangup_signal()?;
        // A stop asked for while the server starts (which can wait, e.g. for another node's migration of a
        // PostgreSQL store) ends the start: what it opened is dropped (a migration in progress rolls back
        // once the database notices the connection gone: within a second, on PostgreSQL 14 and later).
        let server = tokio::select! {
            bound = Server::bind(config) => bound.map_err(|e| e.to_string())?,
            () = &mut shutdown => {
                tracing::info!("stopped while starting: nothing was served");
                return Ok(());
            }
        };
        // SIGHUP: read the TLS certificate and key files again (the outcome is logged).
        let certificate = server.tls_certificate().clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the TLS certificate");
                let _ = certificate.reload_in_background().await;
            }
        });
        // Start-up is done (with `--dev`, an argon2 hash of the client's secret: 19 MiB, freed): give back
        // what it used now rather than at the purger's next forced turn.
        crate::allocator::collect(true);
        let info = server.info().clone();
        tracing::info!(addr = %info.local_addr, resource = %info.resource, "keyvault listening");
        if let Some(metrics) = info.metrics_addr {
            tracing::info!(metrics = %format!("http://{metrics}/metrics"), "serving metrics");
        }
        if let Some(dev) = &info.dev {
            let creds =
                std::path::absolute(data_dir.join("dev-credentials.json")).unwrap_or_default();
            let mut banner = format!(
                "keyvault dev server listening on {}\n  vault_url:       {}\n  vault_url_named: {} (where \
                 *.localhost resolves)\n  ca_cert:         {}\n  tenant_id:       {}\n  client_id:       {}\n  \
                 client_secret:   (in {})\n  authority_host:  {}\n",
                info.local_addr,
                dev.vault_url,
                dev.vault_url_named,
                dev.ca_cert.display(),
                dev.tenant_id,
                dev.client_id,
                creds.display(),
                dev.authority_host
            );
            if let Some(metrics) = info.metrics_addr {
                banner.push_str(&format!("  metrics:         http://{metrics}/metrics\n"));
            }
            // Information only: a closed or full standard output does not stop the server.
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
        }
        server.serve(shutdown).await.map_err(|e| e.to_string())?;
        tracing::info!("keyvault stopped");
        Ok(())
    })
}

/// SIGHUP, which reloads the TLS certificate. Handled from the start, so a SIGHUP during start-up does not end
/// the process (the files are read at start anyway).
fn hangup_signal() -> Result<tokio::signal::unix::Signal, String> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future is first
/// polled, so a signal that arrives right after start-up (e.g. once dev-credentials.json is written)
/// still shuts the server down gracefully. A second signal while the server drains (which waits up to 10 s
/// for requests in flight) ends the process at once, with exit code 130: what was acknowledged is already on
/// disk, as after a crash.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down (a second signal stops at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            tracing::warn!("second signal: stopping without waiting for requests in flight");
            std::process::exit(130);
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Purge protection as the file says, the flag alone, or the flag with a value (which wins either way,
    /// as flags do over the file; a vault that had it refuses to start without it, in the server).
    #[test]
    fn the_purge_protection_flag_overrides_the_file_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let resolved = |file: &str, flags: &[&str]| {
            let path = dir.path().join("keyvault.toml");
            std::fs::write(&path, file).unwrap();
            let mut args = vec!["keyvault", "--config", path.to_str().unwrap()];
            args.extend_from_slice(flags);
            let cli = Cli::try_parse_from(args).unwrap();
            cli.serve.into_config().unwrap().purge_protection
        };
        let on = "purge_protection = true\n";
        assert!(resolved(on, &[]));
        assert!(!resolved("", &[]));
        assert!(resolved("", &["--purge-protection"]));
        assert!(resolved("", &["--purge-protection=on"]));
        assert!(!resolved(on, &["--purge-protection=false"]));
        assert!(!resolved(on, &["--purge-protection=0"]));
        assert!(Cli::try_parse_from(["keyvault", "--purge-protection=maybe"]).is_err());
    }
}
