//! Harness: one `keyvault serve --dev` child per test (fresh data dir, 127.0.0.1:0), and
//! official-SDK clients built from `DIR/dev-credentials.json`.
//!
//! What the Rust SDK needs to talk to our server:
//! - authority host: `ClientOptions::cloud = CloudConfiguration::Custom { authority_host }` on the
//!   credential's options (azure_identity also reads `AZURE_AUTHORITY_HOST`, but only when no cloud
//!   is configured; we do not touch the environment).
//! - CA: no option for extra roots, so we supply our own `reqwest::Client` as the transport
//!   (`ClientOptions::transport`) for both the credential and the `SecretClient`; it trusts only
//!   `ca_cert` (`tls_certs_only`) and resolves `myvault.localhost` to 127.0.0.1.
//! - challenge: `SecretClientOptions::verify_challenge_resource` defaults to true and requires the
//!   request host to end with `.<challenge resource host>`; our resource is
//!   `https://localhost:PORT`, so `vault_url_named` (`https://myvault.localhost:PORT`) passes and
//!   `vault_url` (`https://127.0.0.1:PORT`) needs `verify_challenge_resource: Some(false)`.
#![allow(dead_code)]

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::Secret as CredentialSecret,
    http::{ClientOptions, Transport},
};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Credentials and endpoints written by `keyvault serve --dev` (dev-credentials.json).
#[derive(Clone)]
pub struct DevCreds {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub authority_host: String,
    pub ca_cert: PathBuf,
    pub vault_url: String,
    pub vault_url_named: String,
}

impl DevCreds {
    fn parse(text: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let s = |k: &str| v.get(k)?.as_str().map(str::to_owned);
        Some(Self {
            tenant_id: s("tenant_id")?,
            client_id: s("client_id")?,
            client_secret: s("client_secret")?,
            authority_host: s("authority_host")?,
            ca_cert: PathBuf::from(s("ca_cert")?),
            vault_url: s("vault_url")?,
            vault_url_named: s("vault_url_named")?,
        })
    }

    pub fn port(&self) -> u16 {
        let url: azure_core::http::Url = self.vault_url.parse().expect("vault_url is a URL");
        url.port().expect("vault_url has a port")
    }
}

/// A running `keyvault serve --dev`; killed (and its data dir removed) on drop.
pub struct Server {
    child: Child,
    root: PathBuf,
    pub creds: DevCreds,
}

fn keyvault_bin() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("KEYVAULT_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                // Relative paths are relative to the repository root, as in run.sh.
                manifest.join("../../..").join(p)
            }
        }
        None => manifest.join("../../../target/debug/keyvault"),
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Server {
    pub fn start() -> Self {
        let bin = keyvault_bin();
        assert!(
            bin.exists(),
            "keyvault binary not found at {} (set KEYVAULT_BIN or build it: cargo build -p keyvault-cli)",
            bin.display()
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root = std::env::temp_dir().join(format!(
            "keyvault-e2e-rust-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("create data dir");
        let log = std::fs::File::create(root.join("server.log")).expect("create log");
        let child = Command::new(&bin)
            .args(["serve", "--dev", "--data-dir"])
            .arg(&data)
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .current_dir(&root)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut server = Server {
            child,
            root,
            creds: DevCreds {
                tenant_id: String::new(),
                client_id: String::new(),
                client_secret: String::new(),
                authority_host: String::new(),
                ca_cert: PathBuf::new(),
                vault_url: String::new(),
                vault_url_named: String::new(),
            },
        };
        let creds_path = data.join("dev-credentials.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!(
                    "keyvault exited with {status} during startup:\n{}",
                    server.log_tail()
                );
            }
            if let Some(creds) = std::fs::read_to_string(&creds_path)
                .ok()
                .and_then(|t| DevCreds::parse(&t))
            {
                server.creds = creds;
                return server;
            }
            if Instant::now() > deadline {
                panic!(
                    "keyvault did not write {} within 30s:\n{}",
                    creds_path.display(),
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.root.join("server.log")) {
            let _ = f.read_to_end(&mut buf);
        }
        let start = buf.len().saturating_sub(4000);
        String::from_utf8_lossy(&buf[start..]).into_owned()
    }

    /// The HTTP transport for every SDK pipeline: rustls (ring), our dev CA as the only root,
    /// `myvault.localhost` → 127.0.0.1.
    pub fn transport(&self) -> Transport {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(&self.creds.ca_cert).expect("read ca_cert");
        let ca = reqwest::Certificate::from_pem(&pem).expect("parse ca_cert");
        let named: azure_core::http::Url =
            self.creds.vault_url_named.parse().expect("vault_url_named");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve(
                named.host_str().expect("named host"),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.creds.port()),
            )
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .expect("build reqwest client");
        Transport::new(Arc::new(client))
    }

    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            transport: Some(self.transport()),
            ..Default::default()
        }
    }

    pub fn credential(&self) -> Arc<ClientSecretCredential> {
        self.credential_for(&self.creds)
    }

    /// A `ClientSecretCredential` for (possibly altered) credentials, talking to this server.
    pub fn credential_for(&self, creds: &DevCreds) -> Arc<ClientSecretCredential> {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = creds.authority_host.clone();
        let mut client_options = self.client_options();
        client_options.cloud = Some(Arc::new(CloudConfiguration::from(cloud)));
        ClientSecretCredential::new(
            &creds.tenant_id,
            creds.client_id.clone(),
            CredentialSecret::new(creds.client_secret.clone()),
            Some(ClientSecretCredentialOptions { client_options }),
        )
        .expect("ClientSecretCredential::new")
    }

    /// `SecretClient` on `vault_url` (https://127.0.0.1:PORT) with challenge verification off, or
    /// on `vault_url_named` (https://myvault.localhost:PORT) with the SDK default (verification on).
    pub fn client(&self, named: bool) -> SecretClient {
        if named {
            self.client_with(&self.creds.vault_url_named, self.credential(), None)
        } else {
            self.client_with(&self.creds.vault_url, self.credential(), Some(false))
        }
    }

    /// `SecretClient` for `url`; `verify_challenge_resource: None` keeps the SDK default (true).
    pub fn client_with(
        &self,
        url: &str,
        credential: Arc<ClientSecretCredential>,
        verify_challenge_resource: Option<bool>,
    ) -> SecretClient {
        let mut options = SecretClientOptions {
            client_options: self.client_options(),
            ..Default::default()
        };
        if verify_challenge_resource.is_some() {
            options.verify_challenge_resource = verify_challenge_resource;
        }
        SecretClient::new(url, credential, Some(options)).expect("SecretClient::new")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- keyvault log ({}) ---\n{}",
                self.root.display(),
                self.log_tail()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A valid, unique secret name.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{:x}{:x}",
        nanos & 0xffff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
