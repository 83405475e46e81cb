//! Certificates and the rustls configuration.
//!
//! Either PEM files given by the operator ([`load_pem_files`]) or, for `--dev`, a generated PKI
//! ([`load_or_create_dev_pki`]): a dev CA and a server certificate signed by it. The leaf is deliberately not a
//! CA certificate: rustls (the Rust SDK) rejects a CA used as the server's end-entity certificate. Clients
//! trust the CA's PEM (`ca.pem`), which survives restarts.
//!
//! The server presents its certificate through a [`ServerCertificate`], which [`reload`] can replace while
//! serving (certificate rotation without a restart).
//!
//! rustls always runs with the ring provider, chosen explicitly (no process-wide default is needed).

pub mod reload;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use zeroize::Zeroizing;

use crate::auth::util::{unix_now, utc_from_unix, warn_if_exposed, write_file_atomic};
pub use reload::{CertificateSummary, Reload, ServerCertificate};

/// Subject common name of the generated dev CA.
pub const DEV_CA_NAME: &str = "keyvault-rs dev CA";

/// The names the dev server certificate always carries.
///
/// Note: `*.localhost` matches **nothing** in OpenSSL (Python), Node or rustls/webpki (the Rust SDK): they
/// all refuse a wildcard directly above a single-label name. A vault host such as `myvault.localhost` must
/// be listed explicitly: see [`load_or_create_dev_pki_with_names`].
pub const DEV_SERVER_NAMES: [&str; 4] = ["localhost", "*.localhost", "127.0.0.1", "::1"];

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";

const DAY: i64 = 86_400;
const CA_VALIDITY_DAYS: i64 = 3652;
const LEAF_VALIDITY_DAYS: i64 = 365;
/// A stored leaf expiring sooner than this is replaced at start-up.
const LEAF_RENEW_BEFORE_DAYS: i64 = 30;

/// Certificate chain and private key for the server. `Debug` does not show the key.
pub struct TlsMaterial {
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The CA clients should trust (set for the dev PKI).
    pub ca_pem_path: Option<PathBuf>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca_pem_path: self.ca_pem_path.clone(),
        }
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .field("ca_pem_path", &self.ca_pem_path)
            .finish()
    }
}

/// TLS set-up errors. They name files and causes, never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}: no PEM CERTIFICATE block found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key (PKCS#8, SEC1 or PKCS#1) found", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: invalid PEM ({reason})", path.display())]
    InvalidPem { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("not a valid DNS name or IP address for a certificate: '{0}'")]
    InvalidName(String),
    #[error("no PEM CERTIFICATE in the given CA bundle")]
    NoCaCertificate,
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The platform's root certificates (read once; a JWKS URL's and PostgreSQL's `verify-full` default).
pub(crate) fn platform_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "could not load some platform root certificates");
        }
        found.certs
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Loads a PEM certificate chain (leaf first) and a PEM private key, and checks that they belong together.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
    let cert_chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key_der.clone_key(), &provider())
        .map_err(|e| TlsError::Invalid {
            path: key.to_owned(),
            reason: format!("does not match the certificate in {}: {e}", cert.display()),
        })?;
    Ok(TlsMaterial {
        cert_chain,
        key: key_der,
        ca_pem_path: None,
    })
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    parse_certs(&bytes).map_err(|e| match e {
        None => TlsError::NoCertificate {
            path: path.to_owned(),
        },
        Some(reason) => TlsError::InvalidPem {
            path: path.to_owned(),
            reason,
        },
    })
}

/// `Err(None)`: no certificate; `Err(Some(reason))`: bad PEM.
fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Option<String>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Some(e.to_string()))?;
    if certs.is_empty() {
        return Err(None);
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    warn_if_exposed(path);
    match rustls_pemfile::private_key(&mut &bytes[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
        }),
        // The pemfile error describes the PEM structure, not the key bytes.
        Err(e) => Err(TlsError::InvalidPem {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The dev PKI in `dir` (created if missing, mode 0700): `ca.pem` + `ca-key.pem` (0600), and `server.pem` +
/// `server-key.pem` (0600) for `localhost`, `*.localhost`, `127.0.0.1` and `::1`, signed by the CA.
///
/// Existing files are reused, so clients keep trusting the same CA across restarts. The server certificate
/// is re-issued by the same CA when it is missing, unreadable, about to expire or not valid for those names;
/// the CA is generated only when `ca.pem` or `ca-key.pem` is missing. A CA pair that exists but cannot be
/// used is an error (delete the directory to start over), never silently replaced.
///
/// The CA is ECDSA P-256, valid 10 years, path length 0; the leaf ECDSA P-256, valid 1 year,
/// `CA:FALSE`, EKU serverAuth. (Name constraints on the CA would be nice, but webpki refuses the
/// `*.localhost` SAN under a DNS name constraint: `MalformedDnsIdentifier`.)
pub fn load_or_create_dev_pki(dir: &Path) -> Result<TlsMaterial, TlsError> {
    load_or_create_dev_pki_with_names(dir, &[])
}

/// [`load_or_create_dev_pki`], with `extra_names` (DNS names such as `myvault.localhost`, or IP addresses)
/// added to the server certificate's SANs. A stored server certificate that does not cover every requested
/// name is re-issued (by the same CA).
pub fn load_or_create_dev_pki_with_names(
    dir: &Path,
    extra_names: &[&str],
) -> Result<TlsMaterial, TlsError> {
    let mut names: Vec<String> = DEV_SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect();
    for name in extra_names {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(TlsError::InvalidName(name));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    create_private_dir(dir)?;
    let ca_path = dir.join(CA_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let server_path = dir.join(SERVER_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    let now = unix_now();

    let ca = if ca_path.exists() && ca_key_path.exists() {
        DevCa::load(&ca_path, &ca_key_path)?
    } else {
        if ca_path.exists() || ca_key_path.exists() {
            tracing::warn!(dir = %dir.display(), "half of the dev CA is missing; creating a new CA (clients must trust the new ca.pem)");
        }
        let ca = DevCa::generate(now)?;
        write(&ca_key_path, ca.key.serialize_pem().as_bytes(), 0o600)?;
        write(&ca_path, ca.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(path = %ca_path.display(), "created dev CA");
        ca
    };

    if server_path.exists() && server_key_path.exists() {
        let reused = read_certs(&server_path).and_then(|chain| {
            let key = read_key(&server_key_path)?;
            Ok((chain, key))
        });
        match reused {
            Ok((chain, key)) => match check_dev_leaf(&ca.cert_der, &chain, &key, &names, now) {
                Ok(()) => {
                    return Ok(TlsMaterial {
                        cert_chain: chain,
                        key,
                        ca_pem_path: Some(ca_path),
                    });
                }
                Err(reason) => {
                    tracing::info!(path = %server_path.display(), %reason, "re-issuing the dev server certificate");
                }
            },
            Err(e) => {
                tracing::info!(error = %e, "re-issuing the dev server certificate");
            }
        }
    }

    let (leaf_der, leaf_pem, leaf_key) = ca.issue_leaf(&names, now)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain = vec![leaf_der];
    // The CA on disk must be the one that signed the new leaf (a ca.pem / ca-key.pem mismatch shows here).
    check_dev_leaf(&ca.cert_der, &chain, &key, &names, now).map_err(|reason| {
        TlsError::Invalid {
            path: ca_path.clone(),
            reason: format!(
                "cannot issue a server certificate that verifies against this CA ({reason}); \
             does {CA_KEY_FILE} belong to it? Delete {} to start over",
                dir.display()
            ),
        }
    })?;
    write(&server_key_path, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write(&server_path, leaf_pem.as_bytes(), 0o644)?;
    tracing::info!(path = %server_path.display(), "issued dev server certificate");
    Ok(TlsMaterial {
        cert_chain: chain,
        key,
        ca_pem_path: Some(ca_path),
    })
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    write_file_atomic(path, contents, mode, true).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The dev CA: its key, the certificate as stored, and an rcgen certificate with the same subject and key
/// to sign leaves with.
struct DevCa {
    key: KeyPair,
    signer: rcgen::Certificate,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl DevCa {
    fn generate(now: i64) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = ca_params();
        set_validity(&mut params, now - DAY, now + CA_VALIDITY_DAYS * DAY);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            signer: cert,
            key,
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_der = read_certs(cert_path)?.swap_remove(0);
        let key_pem = read(key_path)?;
        warn_if_exposed(key_path);
        let key_pem = std::str::from_utf8(&key_pem).map_err(|_| TlsError::InvalidPem {
            path: key_path.to_owned(),
            reason: "not UTF-8".into(),
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| TlsError::Invalid {
            path: key_path.to_owned(),
            reason: "not a PEM PKCS#8 private key".into(),
        })?;
        // Same subject and key as the stored CA: leaves signed through it chain to the stored certificate.
        let signer = ca_params().self_signed(&key).map_err(gen_err)?;
        let cert_pem = crate::auth::util::pem_encode("CERTIFICATE", &cert_der);
        Ok(Self {
            key,
            signer,
            cert_der,
            cert_pem,
        })
    }

    /// A server certificate for `names`: (DER, PEM, key).
    fn issue_leaf(
        &self,
        names: &[String],
        now: i64,
    ) -> Result<(CertificateDer<'static>, String, KeyPair), TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        dn.push(DnType::OrganizationName, "keyvault-rs");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now - DAY, now + LEAF_VALIDITY_DAYS * DAY);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&key, &self.signer, &self.key)
            .map_err(gen_err)?;
        Ok((cert.der().clone(), cert.pem(), key))
    }
}

/// Parameters of the dev CA except validity and serial (also used to rebuild the signer of a stored CA).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, DEV_CA_NAME);
    dn.push(DnType::OrganizationName, "keyvault-rs");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Checks a stored dev leaf: key matches, chains to the CA, valid now and for [`LEAF_RENEW_BEFORE_DAYS`]
/// more days, for every name in `names` (wildcards skipped: no client matches them for `*.localhost`
/// anyway), as a server (not CA) certificate.
fn check_dev_leaf(
    ca_der: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    names: &[String],
    now: i64,
) -> Result<(), String> {
    let provider = provider();
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider)
        .map_err(|e| format!("key does not match: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca_der.clone())
        .map_err(|e| format!("bad CA: {e}"))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("verifier: {e}"))?;
    let later = now + LEAF_RENEW_BEFORE_DAYS * DAY;
    for at in [now, later] {
        let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).unwrap_or(0)));
        for name in names.iter().filter(|n| !n.contains('*')) {
            let server_name =
                ServerName::try_from(name.as_str()).map_err(|e| format!("{name}: {e}"))?;
            verifier
                .verify_server_cert(leaf, intermediates, &server_name, &[], time)
                .map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(())
}

fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let ymd = |unix: i64| {
        let (y, m, d, ..) = utc_from_unix(unix);
        rcgen::date_time_ymd(i32::try_from(y).unwrap_or(9999), m, d)
    };
    params.not_before = ymd(from);
    params.not_after = ymd(to);
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TlsError::Generate("no randomness".into()))?;
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from(bytes.to_vec()))
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// A rustls server configuration (ring provider, safe default protocol versions, no client auth, ALPN `h2`
/// then `http/1.1`).
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(ServerCertificate::fixed(m)?)
}

/// [`server_config`] presenting whatever `certificate` holds at each handshake (see [`reload`]).
pub fn server_config_with(
    certificate: Arc<ServerCertificate>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// A rustls client configuration trusting exactly the PEM certificates in `ca_pem` (ring provider, ALPN `h2`
/// then `http/1.1`).
pub fn client_config_trusting(ca_pem: &[u8]) -> Result<ClientConfig, TlsError> {
    let certs = parse_certs(ca_pem).map_err(|e| match e {
        None => TlsError::NoCaCertificate,
        Some(reason) => TlsError::Config(format!("invalid CA PEM: {reason}")),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(config_err)?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn();
    Ok(config)
}

fn config_err(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn default_names() -> Vec<String> {
        DEV_SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Serves TLS on 127.0.0.1:0 (answering "hello" with "world"); returns the port.
    async fn serve(material: &TlsMaterial) -> u16 {
        let acceptor = TlsAcceptor::from(server_config(material).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 5];
                        if tls.read_exact(&mut buf).await.is_ok() && &buf == b"hello" {
                            let _ = tls.write_all(b"world").await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        port
    }

    /// Connects to 127.0.0.1:`port` presenting `name` as the server name; returns the ALPN protocol.
    async fn handshake(port: u16, ca_pem: &[u8], name: &str) -> Result<Option<Vec<u8>>, io::Error> {
        let connector = TlsConnector::from(Arc::new(client_config_trusting(ca_pem).unwrap()));
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = connector.connect(server_name, tcp).await?;
        tls.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"world");
        Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn dev_pki_handshakes_for_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("tls");
        let material = load_or_create_dev_pki_with_names(&pki, &["myvault.localhost"]).unwrap();
        assert_eq!(material.cert_chain.len(), 1);
        assert_eq!(
            material.ca_pem_path.as_deref(),
            Some(pki.join("ca.pem").as_path())
        );
        assert!(!format!("{material:?}").contains("Pkcs8"));
        let ca_pem = std::fs::read(pki.join("ca.pem")).unwrap();

        let port = serve(&material).await;
        // rustls refuses a CA certificate as the end entity (CaUsedAsEndEntity), so these handshakes also
        // prove the leaf is not a CA; each name proves a SAN.
        for name in ["localhost", "myvault.localhost", "127.0.0.1", "::1"] {
            let alpn = handshake(port, &ca_pem, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{name}");
        }
        // Names not in the certificate fail.
        for name in [
            "example.com",
            "other.localhost",
            "a.b.localhost",
            "127.0.0.2",
        ] {
            assert!(handshake(port, &ca_pem, name).await.is_err(), "{name}");
        }
        // Another CA is not trusted.
        let other = tempfile::tempdir().unwrap();
        load_or_create_dev_pki(other.path()).unwrap();
        let other_ca = std::fs::read(other.path().join("ca.pem")).unwrap();
        assert!(handshake(port, &other_ca, "localhost").await.is_err());
    }

    #[tokio::test]
    async fn wildcard_localhost_matches_nothing_so_names_are_added_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let plain = load_or_create_dev_pki(dir.path()).unwrap();
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let port = serve(&plain).await;
        handshake(port, &ca_pem, "localhost").await.unwrap();
        // `*.localhost` is in the certificate, but webpki (like OpenSSL and Node) will not match it.
        assert!(handshake(port, &ca_pem, "myvault.localhost").await.is_err());

        // Asking for the name re-issues the leaf with the same CA; asking again reuses it.
        let named = load_or_create_dev_pki_with_names(dir.path(), &["MyVault.localhost."]).unwrap();
        assert_ne!(named.cert_chain, plain.cert_chain);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_pem);
        let again = load_or_create_dev_pki_with_names(dir.path(), &["myvault.localhost"]).unwrap();
        assert_eq!(again.cert_chain, named.cert_chain);
        let port = serve(&named).await;
        handshake(port, &ca_pem, "myvault.localhost").await.unwrap();

        assert!(matches!(
            load_or_create_dev_pki_with_names(dir.path(), &["bad name"]),
            Err(TlsError::InvalidName(_))
        ));
    }

    #[test]
    fn the_leaf_is_not_a_ca_and_a_ca_leaf_would_be_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = load_or_create_dev_pki(dir.path()).unwrap();
        let ca = read_certs(&dir.path().join("ca.pem")).unwrap().remove(0);
        check_dev_leaf(&ca, &m.cert_chain, &m.key, &default_names(), unix_now()).unwrap();
        // The CA presented as the server certificate is refused by the same check (rustls/webpki).
        let ca_key = read_key(&dir.path().join("ca-key.pem")).unwrap();
        let err = check_dev_leaf(
            &ca,
            std::slice::from_ref(&ca),
            &ca_key,
            &default_names(),
            unix_now(),
        )
        .unwrap_err();
        assert!(err.contains("CaUsedAsEndEntity"), "{err}");
        // Expiry is checked: the leaf lasts ~1 year, so in 2 years it is refused.
        let err = check_dev_leaf(
            &ca,
            &m.cert_chain,
            &m.key,
            &default_names(),
            unix_now() + 730 * DAY,
        )
        .unwrap_err();
        assert!(err.contains("xpired"), "{err}");
    }

    #[test]
    fn dev_pki_is_reused_and_the_leaf_reissued_by_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_dev_pki(dir.path()).unwrap();
        let ca1 = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let ca_key1 = std::fs::read(dir.path().join("ca-key.pem")).unwrap();

        let second = load_or_create_dev_pki(dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca1);
        assert_eq!(first.cert_chain, second.cert_chain);
        assert_eq!(first.key.secret_der(), second.key.secret_der());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| {
                std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("ca-key.pem"), 0o600);
            assert_eq!(mode("server-key.pem"), 0o600);
            assert_eq!(mode("ca.pem"), 0o644);
        }

        // A lost or broken leaf is re-issued by the stored CA.
        std::fs::remove_file(dir.path().join("server.pem")).unwrap();
        let third = load_or_create_dev_pki(dir.path()).unwrap();
        assert_ne!(third.cert_chain, first.cert_chain);
        std::fs::write(dir.path().join("server.pem"), "garbage").unwrap();
        let fourth = load_or_create_dev_pki(dir.path()).unwrap();
        assert_ne!(fourth.cert_chain, third.cert_chain);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca1);
        assert_eq!(
            std::fs::read(dir.path().join("ca-key.pem")).unwrap(),
            ca_key1
        );
        let ca = read_certs(&dir.path().join("ca.pem")).unwrap().remove(0);
        check_dev_leaf(
            &ca,
            &fourth.cert_chain,
            &fourth.key,
            &default_names(),
            unix_now(),
        )
        .unwrap();

        // A leaf whose key does not match is replaced too.
        std::fs::copy(
            dir.path().join("ca-key.pem"),
            dir.path().join("server-key.pem"),
        )
        .unwrap();
        let fifth = load_or_create_dev_pki(dir.path()).unwrap();
        check_dev_leaf(
            &ca,
            &fifth.cert_chain,
            &fifth.key,
            &default_names(),
            unix_now(),
        )
        .unwrap();

        // A broken CA key is an error naming the file, and is left alone.
        std::fs::write(dir.path().join("ca-key.pem"), "garbage").unwrap();
        let err = load_or_create_dev_pki(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("ca-key.pem")).unwrap(),
            b"garbage"
        );
        // A CA key from another CA is detected.
        let other = tempfile::tempdir().unwrap();
        load_or_create_dev_pki(other.path()).unwrap();
        std::fs::copy(
            other.path().join("ca-key.pem"),
            dir.path().join("ca-key.pem"),
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("server.pem")).unwrap();
        let err = load_or_create_dev_pki(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn load_pem_files_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_dev_pki(dir.path()).unwrap();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server-key.pem");
        let m = load_pem_files(&cert, &key).unwrap();
        assert_eq!(m.cert_chain.len(), 1);
        assert!(m.ca_pem_path.is_none());
        server_config(&m).unwrap();

        let missing = dir.path().join("nope.pem");
        let err = load_pem_files(&missing, &key).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let err = load_pem_files(&cert, &missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let err = load_pem_files(&junk, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"));
        let err = load_pem_files(&cert, &junk).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"));

        // Key of another certificate.
        let err = load_pem_files(&cert, &dir.path().join("ca-key.pem")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // Never any key material in messages.
        let key_pem = std::fs::read_to_string(&key).unwrap();
        let body_line = key_pem.lines().nth(1).unwrap();
        assert!(!format!("{err} {err:?} {m:?}").contains(body_line));
    }

    #[test]
    fn client_config_needs_a_certificate() {
        assert!(matches!(
            client_config_trusting(b"nothing here"),
            Err(TlsError::NoCaCertificate)
        ));
        let dir = tempfile::tempdir().unwrap();
        load_or_create_dev_pki(dir.path()).unwrap();
        let cfg =
            client_config_trusting(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
