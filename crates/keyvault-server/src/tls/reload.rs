//! The server's certificate, replaceable while serving.
//!
//! rustls asks a [`ServerCertificate`] for the certificate at every handshake (a read lock and an `Arc`
//! clone; requests on an established connection never see it). A reload reads the PEM files again, checks
//! them (every certificate of the chain parses, the key is the leaf's) and swaps the new pair in: connections
//! made from then on get it, those already open keep theirs. A pair that fails a check is refused and the
//! previous certificate stays, so half-written files (a rotation in progress) or a key that belongs to
//! another certificate never take the server down; the next trigger tries again.
//!
//! Triggers: [`ServerCertificate::reload`] (the CLI calls it on SIGHUP), and [`ServerCertificate::watch`],
//! which looks at what the paths resolve to now (size, times, inode: a symlink swap as cert-manager and
//! Kubernetes secret volumes do it shows up) every interval and reloads when anything changed. The `--dev`
//! certificates are fixed: a restart re-issues them when needed.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{TlsError, TlsMaterial, provider, read_certs, read_key};
use crate::auth::assertion::{der, der_time};
use crate::auth::util::{rfc3339, unix_now};

/// How long changed files must stay unchanged before the watch reads them ([`ServerCertificate::reload_if_changed`]).
pub const SETTLE: Duration = Duration::from_secs(1);
/// Looks at most for files to settle: files that keep changing are read after this many.
const SETTLE_LOOKS: usize = 10;

/// A certificate expiring within this many days is warned about at start and at each reload.
pub const EXPIRY_WARNING_DAYS: i64 = 14;
const DAY: i64 = 86_400;

/// Public facts about a certificate, for logs and tests (never anything about the key).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateSummary {
    /// The subject's usual attributes, as `CN=…, O=…`.
    pub subject: String,
    /// The subjectAltName extension's DNS names and IP addresses.
    pub names: Vec<String>,
    /// The serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl CertificateSummary {
    /// Whether the certificate is within its validity period at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

impl CertificateSummary {
    /// The summary of a DER X.509 certificate; `None` when it does not parse.
    pub fn from_der(cert: &[u8]) -> Option<CertificateSummary> {
        summarize(cert)
    }
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reload {
    /// A new certificate is served from now on.
    Replaced(CertificateSummary),
    /// The files hold the certificate already served.
    Unchanged(CertificateSummary),
    /// `--dev` certificates are not reloaded.
    NotReloadable,
}

#[derive(Clone, Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// What a file looks like now, through any symlinks: a replaced or rewritten file differs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// Device, inode, ctime (seconds, nanoseconds).
    #[cfg(unix)]
    node: (u64, u64, i64, i64),
}

fn stamp(path: &Path) -> Option<FileStamp> {
    // `metadata` follows symlinks: what the path resolves to now.
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        node: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        },
    })
}

type Stamps = [Option<FileStamp>; 2];

struct ReloadState {
    /// The files as they were just before the last load.
    stamps: Stamps,
    /// The last reload was refused: the watch tries again at its next turn even if nothing changed.
    failed: bool,
}

/// The certificate the server presents, and where it comes from. Resolves rustls handshakes.
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    /// `None`: fixed (`--dev`).
    files: Option<CertFiles>,
    /// Serializes reloads.
    state: Mutex<ReloadState>,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert", &self.files.as_ref().map(|f| &f.cert))
            .field("key", &self.files.as_ref().map(|f| &f.key))
            .field("sha256", &self.summary().map(|s| s.sha256))
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ServerCertificate {
    /// Loads the PEM certificate chain (leaf first) and private key, checks them as a reload does, and logs
    /// what was loaded (and a warning or an error when it expires within [`EXPIRY_WARNING_DAYS`] or has).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<ServerCertificate>, TlsError> {
        let stamps = [stamp(cert), stamp(key)];
        let (certified, summary) = load_checked(cert, key)?;
        log_certificate("TLS certificate loaded", cert, &summary);
        Ok(Arc::new(ServerCertificate {
            current: RwLock::new(Arc::new(certified)),
            files: Some(CertFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }),
            state: Mutex::new(ReloadState {
                stamps,
                failed: false,
            }),
        }))
    }

    /// A certificate that is never reloaded (`--dev`'s).
    pub fn fixed(material: &TlsMaterial) -> Result<Arc<ServerCertificate>, TlsError> {
        let certified = certified_key(
            material.cert_chain.clone(),
            material.key.clone_key(),
            Path::new("(key in memory)"),
            Path::new("(certificate in memory)"),
        )?;
        if let Some(summary) = certified.cert.first().and_then(|c| summarize(c)) {
            warn_if_expiring(Path::new("(certificate in memory)"), &summary);
        }
        Ok(Arc::new(ServerCertificate {
            current: RwLock::new(Arc::new(certified)),
            files: None,
            state: Mutex::new(ReloadState {
                stamps: [None, None],
                failed: false,
            }),
        }))
    }

    /// The certificate and key presented to new connections.
    pub fn current(&self) -> Arc<CertifiedKey> {
        // Nothing panics while the lock is held; a poisoned lock still holds a whole `Arc`.
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Facts about the leaf certificate presented to new connections.
    pub fn summary(&self) -> Option<CertificateSummary> {
        self.current().cert.first().and_then(|c| summarize(c))
    }

    /// Whether the certificate comes from files that [`ServerCertificate::reload`] reads again.
    pub fn is_reloadable(&self) -> bool {
        self.files.is_some()
    }

    /// Reads the files again and, if they hold a good pair, serves it to new connections. A pair that fails
    /// a check is refused (the previous certificate stays) and logged as an error naming the file and the
    /// reason; a good one is logged at info with its subject, names, serial, SHA-256 and notAfter.
    /// Blocking (file reads, key parsing): from async code, see [`ServerCertificate::reload_in_background`].
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let Some(files) = &self.files else {
            tracing::info!(
                "the --dev certificates are not reloaded (a restart re-issues them when needed)"
            );
            return Ok(Reload::NotReloadable);
        };
        let mut state = lock(&self.state);
        // Taken before reading: a change made while the files are read shows at the watch's next turn.
        state.stamps = [stamp(&files.cert), stamp(&files.key)];
        let (certified, summary) = match load_checked(&files.cert, &files.key) {
            Ok(loaded) => loaded,
            Err(e) => {
                state.failed = true;
                tracing::error!(
                    error = %e,
                    "TLS certificate reload refused; still serving the previous certificate"
                );
                return Err(e);
            }
        };
        // A new certificate outside its validity period would put every client offline: refused while the one
        // served is valid (a not-yet-valid one is taken at the first check after its notBefore: the watch
        // tries again at every interval while a reload stays refused).
        let now = unix_now();
        let serving_valid = chain_invalid_at(&self.current().cert, now).is_none();
        let new_invalid = chain_invalid_at(&certified.cert, now);
        if let (true, Some((position, bad))) = (serving_valid, &new_invalid)
            && certified.cert != self.current().cert
        {
            state.failed = true;
            let which = if *position == 0 {
                "the certificate".to_string()
            } else {
                format!(
                    "certificate {} of the chain ({})",
                    position + 1,
                    bad.subject
                )
            };
            let e = TlsError::Invalid {
                path: files.cert.clone(),
                reason: if bad.not_after < now {
                    format!("{which} expired at {}", rfc3339(bad.not_after))
                } else {
                    format!("{which} is not valid before {}", rfc3339(bad.not_before))
                },
            };
            tracing::error!(
                error = %e,
                "TLS certificate reload refused; still serving the previous certificate, which is valid"
            );
            return Err(e);
        }
        state.failed = false;
        if certified.cert == self.current().cert {
            tracing::info!(
                cert = %files.cert.display(),
                sha256 = %summary.sha256,
                not_after = %rfc3339(summary.not_after),
                "TLS certificate files read again: the certificate is unchanged"
            );
            warn_if_expiring(&files.cert, &summary);
            return Ok(Reload::Unchanged(summary));
        }
        {
            let mut current = match self.current.write() {
                Ok(current) => current,
                Err(poisoned) => poisoned.into_inner(),
            };
            *current = Arc::new(certified);
        }
        log_certificate("TLS certificate reloaded", &files.cert, &summary);
        Ok(Reload::Replaced(summary))
    }

    /// [`ServerCertificate::reload`] if the files changed since the last load (or the last reload was
    /// refused); `None` when there was nothing to do. Files that changed are read once they have stayed as
    /// they are for [`SETTLE`]: a chain written in place a certificate at a time (`cat leaf.pem ca.pem >
    /// chain.pem`) is a shorter valid chain while half-written, and would be served until the next look.
    pub fn reload_if_changed(&self) -> Option<Result<Reload, TlsError>> {
        self.reload_if_changed_settling(SETTLE, &|| false)
    }

    /// [`ServerCertificate::reload_if_changed`], given up (`None`, nothing read) while files settle once
    /// `stopped` holds: a server shutting down does not wait for a certificate it will not serve (a89-2).
    fn reload_if_changed_settling(
        &self,
        settle: Duration,
        stopped: &dyn Fn() -> bool,
    ) -> Option<Result<Reload, TlsError>> {
        let files = self.files.as_ref()?;
        let mut seen = [stamp(&files.cert), stamp(&files.key)];
        {
            let state = lock(&self.state);
            if state.stamps == seen {
                if !state.failed {
                    return None;
                }
                // Refused before and not changed since: tried again as it is.
                drop(state);
                return Some(self.reload());
            }
        }
        for _ in 0..SETTLE_LOOKS {
            if stopped() {
                return None;
            }
            std::thread::sleep(settle);
            let now = [stamp(&files.cert), stamp(&files.key)];
            if now == seen {
                break;
            }
            seen = now;
        }
        if stopped() {
            return None;
        }
        Some(self.reload())
    }

    /// [`ServerCertificate::reload`] on a blocking thread.
    pub async fn reload_in_background(self: &Arc<Self>) -> Result<Reload, TlsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload())
            .await
            .map_err(|e| TlsError::Config(format!("the certificate reload did not finish: {e}")))?
    }

    /// Every `every`, reloads when the files changed ([`ServerCertificate::reload_if_changed`]), until `stop`
    /// changes. Returns at once for a fixed certificate.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if !self.is_reloadable() || every.is_zero() {
            return;
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticker.tick() => {}
            }
            let this = self.clone();
            let stopping = stop.clone();
            // The outcome is logged by `reload`.
            let _ = tokio::task::spawn_blocking(move || {
                this.reload_if_changed_settling(SETTLE, &|| *stopping.borrow())
            })
            .await;
        }
    }
}

fn lock(state: &Mutex<ReloadState>) -> MutexGuard<'_, ReloadState> {
    match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Reads and checks a certificate chain and its key: every certificate parses as X.509, the key loads and is
/// the leaf's (their public keys are equal).
fn load_checked(cert: &Path, key: &Path) -> Result<(CertifiedKey, CertificateSummary), TlsError> {
    let chain = read_certs(cert)?;
    let mut leaf = None;
    for (i, der) in chain.iter().enumerate() {
        let summary = summarize(der).ok_or_else(|| TlsError::Invalid {
            path: cert.to_owned(),
            reason: format!(
                "certificate {} of {} is not a valid X.509 certificate",
                i + 1,
                chain.len()
            ),
        })?;
        leaf.get_or_insert(summary);
    }
    let summary = leaf.ok_or_else(|| TlsError::NoCertificate {
        path: cert.to_owned(),
    })?;
    let key_der = read_key(key)?;
    let certified = certified_key(chain, key_der, key, cert)?;
    Ok((certified, summary))
}

/// The chain and key as rustls uses them, once the key is known to be the leaf's.
fn certified_key(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: rustls::pki_types::PrivateKeyDer<'static>,
    key: &Path,
    cert: &Path,
) -> Result<CertifiedKey, TlsError> {
    // rustls's messages describe the key's type or structure, never its bytes.
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Invalid {
            path: key.to_owned(),
            reason: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // `CertifiedKey::from_der` lets a key whose public half is unknown through; this does not.
    certified.keys_match().map_err(|e| TlsError::Invalid {
        path: key.to_owned(),
        reason: format!("does not match the certificate in {}: {e}", cert.display()),
    })?;
    Ok(certified)
}

fn log_certificate(what: &str, path: &Path, s: &CertificateSummary) {
    tracing::info!(
        cert = %path.display(),
        subject = %s.subject,
        names = %s.names.join(","),
        serial = %s.serial,
        sha256 = %s.sha256,
        not_after = %rfc3339(s.not_after),
        "{what}"
    );
    warn_if_expiring(path, s);
}

/// The first certificate of a chain (its position, leaf first, and summary) outside its validity period at
/// `now`; None when every one is valid (one that does not parse counts as invalid: clients refuse it too).
fn chain_invalid_at(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    now: i64,
) -> Option<(usize, CertificateSummary)> {
    chain
        .iter()
        .enumerate()
        .find_map(|(i, der)| match summarize(der) {
            Some(s) if s.is_valid_at(now) => None,
            Some(s) => Some((i, s)),
            None => Some((
                i,
                CertificateSummary {
                    subject: String::new(),
                    names: Vec::new(),
                    serial: String::new(),
                    sha256: String::new(),
                    not_before: i64::MAX,
                    not_after: i64::MIN,
                },
            )),
        })
}

/// A warning when the certificate expires within [`EXPIRY_WARNING_DAYS`], an error when it has expired.
fn warn_if_expiring(path: &Path, s: &CertificateSummary) {
    let now = unix_now();
    if s.not_after < now {
        tracing::error!(
            cert = %path.display(),
            sha256 = %s.sha256,
            not_after = %rfc3339(s.not_after),
            "the TLS certificate has expired: clients refuse it; replace the files (a reload or SIGHUP picks them up)"
        );
    } else if s.not_after - now < EXPIRY_WARNING_DAYS * DAY {
        tracing::warn!(
            cert = %path.display(),
            sha256 = %s.sha256,
            not_after = %rfc3339(s.not_after),
            days_left = (s.not_after - now) / DAY,
            "the TLS certificate expires within {EXPIRY_WARNING_DAYS} days"
        );
    }
}

// --- What the logs show of a certificate: a DER walk over X.509's fixed layout (RFC 5280 §4.1). -----------

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// The certificate's subject, SANs, serial, fingerprint and notAfter; `None` unless the whole certificate has
/// X.509's shape (nothing after it) and its dates parse.
fn summarize(cert: &[u8]) -> Option<CertificateSummary> {
    let (SEQUENCE, certificate, []) = der(cert)? else {
        return None;
    };
    // tbsCertificate, signatureAlgorithm, signatureValue.
    let (SEQUENCE, mut tbs, rest) = der(certificate)? else {
        return None;
    };
    let (SEQUENCE, _, rest) = der(rest)? else {
        return None;
    };
    let (0x03, _, []) = der(rest)? else {
        return None;
    };
    // [0] version (optional), serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then
    // [1], [2] unique ids and [3] extensions, all optional.
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    let (0x02, serial, rest) = der(tbs)? else {
        return None;
    };
    let (SEQUENCE, _, rest) = der(rest)? else {
        return None;
    };
    let (SEQUENCE, _, rest) = der(rest)? else {
        return None;
    };
    let (SEQUENCE, validity, rest) = der(rest)? else {
        return None;
    };
    let (nb_tag, nb, after) = der(validity)?;
    let (na_tag, na, _) = der(after)?;
    let not_before = der_time((nb_tag, nb))?;
    let not_after = der_time((na_tag, na))?;
    let (SEQUENCE, subject, rest) = der(rest)? else {
        return None;
    };
    let (SEQUENCE, _, mut rest) = der(rest)? else {
        return None;
    };
    let mut names = Vec::new();
    while !rest.is_empty() {
        let (tag, content, next) = der(rest)?;
        if tag == 0xa3 {
            names = san_names(content)?;
        }
        rest = next;
    }
    Some(CertificateSummary {
        subject: subject_text(subject)?,
        names,
        serial: hex::encode(serial),
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, cert)),
        not_before,
        not_after,
    })
}

/// The subject's common attributes (CN, O, OU, L, ST, C), in order, as `CN=…, O=…`; others are left out.
fn subject_text(mut name: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, next) = der(name)? else {
            return None;
        };
        name = next;
        while !set.is_empty() {
            let (SEQUENCE, attribute, next) = der(set)? else {
                return None;
            };
            set = next;
            let (0x06, oid, value) = der(attribute)? else {
                return None;
            };
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                [0x55, 0x04, 0x06] => "C",
                _ => continue,
            };
            let (_, value, _) = der(value)?;
            parts.push(format!("{label}={}", printable(value)));
        }
    }
    Some(parts.join(", "))
}

/// The DNS names and IP addresses of an Extensions SEQUENCE's subjectAltName.
fn san_names(extensions: &[u8]) -> Option<Vec<String>> {
    let (SEQUENCE, mut extensions, _) = der(extensions)? else {
        return None;
    };
    while !extensions.is_empty() {
        let (SEQUENCE, extension, next) = der(extensions)? else {
            return None;
        };
        extensions = next;
        let (0x06, oid, mut rest) = der(extension)? else {
            return None;
        };
        if oid != OID_SAN {
            continue;
        }
        // critical BOOLEAN (optional), then the OCTET STRING holding GeneralNames.
        if rest.first() == Some(&0x01) {
            rest = der(rest)?.2;
        }
        let (0x04, value, _) = der(rest)? else {
            return None;
        };
        let (SEQUENCE, mut general, _) = der(value)? else {
            return None;
        };
        let mut names = Vec::new();
        while !general.is_empty() {
            let (tag, content, next) = der(general)?;
            general = next;
            match tag {
                // dNSName [2]
                0x82 => names.push(printable(content)),
                // iPAddress [7]
                0x87 => {
                    if let Ok(v4) = <[u8; 4]>::try_from(content) {
                        names.push(Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(content) {
                        names.push(Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
        return Some(names);
    }
    Some(Vec::new())
}

/// A certificate's string as text for a log line: control characters (a forged line break) become `?`.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `localhost` and 127.0.0.1 signed by `ca`, with `key`: its PEM.
    fn leaf(ca: &Ca, key: &KeyPair, cn: &str) -> String {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "keyvault-rs tests");
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x01, 0x02, 0x03]));
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        params.signed_by(key, &ca.cert, &ca.key).unwrap().pem()
    }

    /// Replaces `path` the way careful tools do: a new file renamed over the old one.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn sha256_of_pem(pem: &str) -> String {
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &der))
    }

    fn served(c: &ServerCertificate) -> String {
        c.summary().unwrap().sha256
    }

    #[test]
    fn the_summary_shows_public_facts() {
        let ca = ca("Test CA");
        let key = KeyPair::generate().unwrap();
        let pem = leaf(&ca, &key, "vault.example.com");
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let s = CertificateSummary::from_der(&der).unwrap();
        assert_eq!(s.subject, "CN=vault.example.com, O=keyvault-rs tests");
        assert_eq!(s.names, ["localhost", "127.0.0.1"]);
        assert_eq!(s.serial, "010203");
        assert_eq!(s.sha256, sha256_of_pem(&pem));
        assert_eq!(rfc3339(s.not_after), "2099-12-31T00:00:00Z");
        // Not a certificate, or one with bytes after it.
        assert!(CertificateSummary::from_der(b"\x30\x03\x02\x01\x01").is_none());
        let mut longer = der.to_vec();
        longer.push(0);
        assert!(CertificateSummary::from_der(&longer).is_none());
        assert!(CertificateSummary::from_der(&der[..der.len() - 1]).is_none());
        assert_eq!(printable(b"a\nb\x1b"), "a?b?");
    }

    #[test]
    fn a_bad_pair_is_refused_and_the_current_certificate_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca1 = ca("CA one");
        let key_a = KeyPair::generate().unwrap();
        let pem_a = leaf(&ca1, &key_a, "a");
        replace(&cert, &pem_a);
        replace(&key, &key_a.serialize_pem());
        let c = ServerCertificate::from_files(&cert, &key).unwrap();
        assert!(c.is_reloadable());
        assert_eq!(served(&c), sha256_of_pem(&pem_a));

        let ca2 = ca("CA two");
        let key_b = KeyPair::generate().unwrap();
        let pem_b = leaf(&ca2, &key_b, "b");
        let mut errors = Vec::new();
        let mut refused = |what: &str, check: &dyn Fn(&TlsError) -> bool| {
            let e = c.reload().expect_err(what);
            assert!(check(&e), "{what}: {e}");
            assert_eq!(served(&c), sha256_of_pem(&pem_a), "{what}");
            errors.push(format!("{e} {e:?}"));
        };

        // The new certificate, the old key (the key file not yet written).
        replace(&cert, &pem_b);
        refused("mismatch", &|e| {
            let s = e.to_string();
            s.contains("tls.key") && s.contains("does not match") && s.contains("tls.crt")
        });
        // Half-written certificate.
        replace(&cert, &pem_b[..pem_b.len() / 2]);
        refused("half a certificate", &|e| {
            matches!(
                e,
                TlsError::InvalidPem { .. } | TlsError::NoCertificate { .. }
            ) && e.to_string().contains("tls.crt")
        });
        // A chain whose second certificate is not X.509 (well-formed PEM around junk).
        let junk = crate::auth::util::pem_encode("CERTIFICATE", b"\x30\x03\x02\x01\x01");
        replace(&cert, &format!("{pem_b}{junk}"));
        refused("junk in the chain", &|e| {
            e.to_string()
                .contains("certificate 2 of 2 is not a valid X.509")
        });
        // Half-written and garbage keys, a missing key.
        replace(&cert, &pem_b);
        let key_b_pem = key_b.serialize_pem();
        replace(&key, &key_b_pem[..key_b_pem.len() / 2]);
        refused("half a key", &|e| e.to_string().contains("tls.key"));
        replace(&key, "garbage");
        refused("garbage key", &|e| {
            matches!(e, TlsError::NoPrivateKey { .. }) && e.to_string().contains("tls.key")
        });
        std::fs::remove_file(&key).unwrap();
        refused("missing key", &|e| matches!(e, TlsError::Read { .. }));
        // Never key material in what is said.
        for key_pem in [key_a.serialize_pem(), key_b_pem.clone()] {
            for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
                for e in &errors {
                    assert!(!e.contains(line), "{e}");
                }
            }
        }
        assert!(!format!("{c:?}").contains("PRIVATE"));

        // The good pair, at last; reading it again changes nothing.
        replace(&key, &key_b_pem);
        let Reload::Replaced(summary) = c.reload().unwrap() else {
            panic!("not replaced")
        };
        assert_eq!(summary.sha256, sha256_of_pem(&pem_b));
        assert_eq!(served(&c), sha256_of_pem(&pem_b));
        assert!(matches!(c.reload().unwrap(), Reload::Unchanged(_)));
        // A new certificate for the same key.
        let pem_b2 = leaf(&ca2, &key_b, "b2");
        replace(&cert, &pem_b2);
        assert!(matches!(c.reload().unwrap(), Reload::Replaced(_)));
        assert_eq!(served(&c), sha256_of_pem(&pem_b2));
    }

    /// cert-manager and Kubernetes secret volumes: `tls.crt -> ..data/tls.crt`, `..data -> ..2026_01_01`, and
    /// an update makes a new directory and renames a new `..data` link over the old one.
    #[cfg(unix)]
    #[test]
    fn the_watch_follows_what_the_paths_resolve_to() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let publish = |version: &str, cert_pem: &str, key_pem: &str| {
            std::fs::create_dir(d.join(version)).unwrap();
            std::fs::write(d.join(version).join("tls.crt"), cert_pem).unwrap();
            std::fs::write(d.join(version).join("tls.key"), key_pem).unwrap();
            symlink(version, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        };
        let ca = ca("CA");
        let (key_a, key_b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (pem_a, pem_b) = (leaf(&ca, &key_a, "a"), leaf(&ca, &key_b, "b"));
        publish("..v1", &pem_a, &key_a.serialize_pem());
        symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
        symlink("..data/tls.key", d.join("tls.key")).unwrap();
        let c = ServerCertificate::from_files(&d.join("tls.crt"), &d.join("tls.key")).unwrap();
        assert!(c.reload_if_changed().is_none(), "nothing changed");

        // Same sizes, another target: seen.
        publish("..v2", &pem_b, &key_b.serialize_pem());
        assert!(matches!(
            c.reload_if_changed(),
            Some(Ok(Reload::Replaced(_)))
        ));
        assert_eq!(served(&c), sha256_of_pem(&pem_b));
        assert!(c.reload_if_changed().is_none());

        // A mismatched pair is refused, and tried again at each turn until it is fixed.
        publish("..v3", &pem_a, &key_b.serialize_pem());
        assert!(matches!(c.reload_if_changed(), Some(Err(_))));
        assert!(matches!(c.reload_if_changed(), Some(Err(_))));
        assert_eq!(served(&c), sha256_of_pem(&pem_b));
        publish("..v4", &pem_a, &key_a.serialize_pem());
        assert!(matches!(
            c.reload_if_changed(),
            Some(Ok(Reload::Replaced(_)))
        ));
        assert_eq!(served(&c), sha256_of_pem(&pem_a));
        assert!(c.reload_if_changed().is_none());
    }

    /// A server stopping while its watch waits for files that keep changing to settle: the watch ends within
    /// one look, not after all of them (up to 10 s, which delayed the shutdown: a89-2), and serves on what it
    /// had.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_ends_while_files_are_still_changing() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = ca("CA");
        let key_a = KeyPair::generate().unwrap();
        let pem = leaf(&ca, &key_a, "a");
        std::fs::write(&cert, &pem).unwrap();
        std::fs::write(&key, key_a.serialize_pem()).unwrap();
        let c = ServerCertificate::from_files(&cert, &key).unwrap();
        let before = served(&c);
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = {
            let (writing, cert) = (writing.clone(), cert.clone());
            std::thread::spawn(move || {
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::write(&cert, &pem).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                }
            })
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let watch = tokio::spawn(c.clone().watch(Duration::from_millis(10), stopped));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let asked = std::time::Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3), watch)
            .await
            .expect("the watch ended within 3 s of the stop")
            .unwrap();
        assert!(
            asked.elapsed() <= SETTLE + Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(served(&c), before);
    }

    /// A chain written in place a certificate at a time, seen by the watch between the two writes: read
    /// only once the file stopped changing, so the whole chain is served, not the leaf alone.
    #[test]
    fn a_chain_being_written_is_read_once_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = ca("CA");
        let (key_a, key_b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        std::fs::write(&cert, leaf(&ca, &key_a, "a")).unwrap();
        std::fs::write(&key, key_a.serialize_pem()).unwrap();
        let c = ServerCertificate::from_files(&cert, &key).unwrap();
        // The new key, then the chain's leaf (the half-written state), then the rest of it 300 ms later.
        replace(&key, &key_b.serialize_pem());
        let leaf_b = leaf(&ca, &key_b, "b");
        std::fs::write(&cert, &leaf_b).unwrap();
        let writer = {
            let (cert, rest) = (cert.clone(), ca.cert.pem());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&cert)
                    .unwrap();
                std::io::Write::write_all(&mut f, rest.as_bytes()).unwrap();
            })
        };
        assert!(matches!(
            c.reload_if_changed_settling(Duration::from_millis(500), &|| false),
            Some(Ok(Reload::Replaced(_)))
        ));
        writer.join().unwrap();
        assert_eq!(served(&c), sha256_of_pem(&leaf_b));
        assert_eq!(c.current().cert.len(), 2, "the whole chain is served");
        assert!(
            c.reload_if_changed_settling(Duration::from_millis(10), &|| false)
                .is_none()
        );
    }

    #[test]
    fn fixed_certificates_are_not_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let material = crate::tls::load_or_create_dev_pki(dir.path()).unwrap();
        let c = ServerCertificate::fixed(&material).unwrap();
        assert!(!c.is_reloadable());
        let before = served(&c);
        assert_eq!(c.reload().unwrap(), Reload::NotReloadable);
        assert!(c.reload_if_changed().is_none());
        assert_eq!(served(&c), before);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let ca = ca("CA");
        std::fs::write(&cert, leaf(&ca, &KeyPair::generate().unwrap(), "a")).unwrap();
        std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = ServerCertificate::from_files(&cert, &key).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
