//! Rotating the server's TLS certificate without a restart: a reload serves the new certificate to new
//! connections while connections already open keep working; a bad pair is refused and the old certificate
//! stays on the wire; the watch picks up a symlink swap on its own.

use keyvault_server::config::TlsConfig;
use keyvault_server::tls::{Reload, ServerCertificate, client_config_trusting};
use keyvault_server::{Config, Server};
use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> Vec<u8> {
        self.cert.pem().into_bytes()
    }

    /// A server certificate for `localhost` with `key`: (PEM, DER).
    fn leaf(&self, key: &KeyPair) -> (String, Vec<u8>) {
        self.leaf_valid(key, None)
    }

    /// [`Ca::leaf`], valid from 1 January of the first year to 1 January of the second when given.
    fn leaf_valid(&self, key: &KeyPair, years: Option<(i32, i32)>) -> (String, Vec<u8>) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let cert = params.signed_by(key, &self.cert, &self.key).unwrap();
        (cert.pem(), cert.der().to_vec())
    }
}

/// Replaces `path` with a new file renamed over it.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Running {
    addr: SocketAddr,
    certificate: Arc<ServerCertificate>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(data: &Path, cert: PathBuf, key: PathBuf, reload_interval_secs: u64) -> Running {
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        tls: TlsConfig {
            cert: Some(cert),
            key: Some(key),
            reload_interval_secs,
        },
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let addr = server.info().local_addr;
    let certificate = server.tls_certificate().clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        certificate,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A new TLS connection (HTTP/1.1) trusting only `ca_pem`; a fresh client configuration each time, so no
/// session is resumed.
async fn connect(addr: SocketAddr, ca_pem: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = client_config_trusting(ca_pem).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented on `tls`.
fn presented(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// `GET /healthz` on a kept-alive HTTP/1.1 connection: the status.
async fn healthz(tls: &mut TlsStream<TcpStream>, addr: SocketAddr) -> u16 {
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
        addr.port()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let (head_len, body_len) = loop {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed");
        response.extend_from_slice(&buf[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            assert!(!head.contains("connection: close"), "{head}");
            let body_len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            break (end + 4, body_len);
        }
    };
    while response.len() < head_len + body_len {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed");
        response.extend_from_slice(&buf[..n]);
    }
    let status_line = String::from_utf8_lossy(&response[..head_len]).to_string();
    status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (ca1, ca2) = (Ca::new("CA one"), Ca::new("CA two"));
    let key_a = KeyPair::generate().unwrap();
    let (pem_a, der_a) = ca1.leaf(&key_a);
    replace(&cert, &pem_a);
    replace(&key, &key_a.serialize_pem());
    // The watch is off: only the explicit reloads below change the certificate.
    let server = start(&dir.path().join("data"), cert.clone(), key.clone(), 0).await;

    let mut open = connect(server.addr, &ca1.pem()).await.unwrap();
    assert_eq!(presented(&open), der_a);
    assert_eq!(healthz(&mut open, server.addr).await, 200);

    // Certificate B, from another CA and with a new key.
    let key_b = KeyPair::generate().unwrap();
    let (pem_b, der_b) = ca2.leaf(&key_b);
    replace(&cert, &pem_b);
    replace(&key, &key_b.serialize_pem());
    let Reload::Replaced(summary) = server.certificate.reload().unwrap() else {
        panic!("not replaced");
    };
    assert_eq!(summary.names, ["localhost"]);

    let fresh = connect(server.addr, &ca2.pem()).await.unwrap();
    assert_eq!(presented(&fresh), der_b);
    assert!(
        connect(server.addr, &ca1.pem()).await.is_err(),
        "CA one's clients no longer get a certificate they trust"
    );
    // The connection from before still answers, with the certificate it started with.
    assert_eq!(healthz(&mut open, server.addr).await, 200);
    assert_eq!(presented(&open), der_a);

    // Certificate C, same CA and same key as B: only the certificate file changes.
    let (pem_c, der_c) = ca2.leaf(&key_b);
    replace(&cert, &pem_c);
    assert!(matches!(
        server.certificate.reload_in_background().await.unwrap(),
        Reload::Replaced(_)
    ));
    let mut fresh = connect(server.addr, &ca2.pem()).await.unwrap();
    assert_eq!(presented(&fresh), der_c);
    assert_eq!(healthz(&mut fresh, server.addr).await, 200);
    assert_eq!(healthz(&mut open, server.addr).await, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_keeps_the_old_certificate_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (ca1, ca2) = (Ca::new("CA one"), Ca::new("CA two"));
    let key_a = KeyPair::generate().unwrap();
    let (pem_a, der_a) = ca1.leaf(&key_a);
    replace(&cert, &pem_a);
    replace(&key, &key_a.serialize_pem());
    let server = start(&dir.path().join("data"), cert.clone(), key.clone(), 0).await;

    let key_b = KeyPair::generate().unwrap();
    let (pem_b, der_b) = ca2.leaf(&key_b);
    let key_b_pem = key_b.serialize_pem();
    // The certificate is new, the key still A's; then garbage; then half-written files.
    for (cert_pem, key_pem) in [
        (pem_b.as_str(), key_a.serialize_pem()),
        (
            "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
            key_b_pem.clone(),
        ),
        (&pem_b[..pem_b.len() / 2], key_b_pem.clone()),
        (pem_b.as_str(), key_b_pem[..key_b_pem.len() / 3].to_string()),
    ] {
        replace(&cert, cert_pem);
        replace(&key, &key_pem);
        let e = server.certificate.reload().unwrap_err().to_string();
        assert!(e.contains("tls.crt") || e.contains("tls.key"), "{e}");
        let mut tls = connect(server.addr, &ca1.pem()).await.unwrap();
        assert_eq!(presented(&tls), der_a, "{e}");
        assert_eq!(healthz(&mut tls, server.addr).await, 200);
    }

    // Once both files are complete, the next trigger succeeds.
    replace(&cert, &pem_b);
    replace(&key, &key_b_pem);
    server.certificate.reload().unwrap();
    assert_eq!(
        presented(&connect(server.addr, &ca2.pem()).await.unwrap()),
        der_b
    );
    server.stop().await;
}

/// A new pair outside its validity period (expired, or not valid yet) would put every client offline: while
/// the certificate served is valid, it is refused and the old one stays on the wire. Over an expired one, an
/// expired replacement is taken (nothing to lose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_outside_its_validity_does_not_replace_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = Ca::new("CA");
    let key_a = KeyPair::generate().unwrap();
    let (pem_a, der_a) = ca.leaf(&key_a);
    replace(&cert, &pem_a);
    replace(&key, &key_a.serialize_pem());
    let server = start(&dir.path().join("data"), cert.clone(), key.clone(), 0).await;

    let key_b = KeyPair::generate().unwrap();
    for (validity, want) in [
        (
            (2001, 2002),
            "the certificate expired at 2002-01-01T00:00:00Z",
        ),
        (
            (2090, 2091),
            "the certificate is not valid before 2090-01-01T00:00:00Z",
        ),
    ] {
        let (pem_b, _) = ca.leaf_valid(&key_b, Some(validity));
        replace(&cert, &pem_b);
        replace(&key, &key_b.serialize_pem());
        let e = server.certificate.reload().unwrap_err().to_string();
        assert!(e.contains("tls.crt") && e.contains(want), "{e}");
        let mut tls = connect(server.addr, &ca.pem()).await.unwrap();
        assert_eq!(presented(&tls), der_a);
        assert_eq!(healthz(&mut tls, server.addr).await, 200);
    }
    // A valid leaf whose intermediate has expired: clients refuse the chain, so it is refused too.
    let inter_key = KeyPair::generate().unwrap();
    let mut inter_params = CertificateParams::default();
    inter_params
        .distinguished_name
        .push(DnType::CommonName, "Expired intermediate");
    inter_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    inter_params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    inter_params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let inter = inter_params
        .signed_by(&inter_key, &ca.cert, &ca.key)
        .unwrap();
    let leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&key_b, &inter, &inter_key).unwrap();
    replace(&cert, &format!("{}{}", leaf.pem(), inter.pem()));
    replace(&key, &key_b.serialize_pem());
    let e = server.certificate.reload().unwrap_err().to_string();
    assert!(
        e.contains(
            "certificate 2 of the chain (CN=Expired intermediate) expired at 2002-01-01T00:00:00Z"
        ),
        "{e}"
    );
    assert_eq!(
        presented(&connect(server.addr, &ca.pem()).await.unwrap()),
        der_a
    );
    server.stop().await;

    // Serving an expired certificate already: an expired replacement is no worse, and is taken.
    let (pem_old, _) = ca.leaf_valid(&key_a, Some((2001, 2002)));
    replace(&cert, &pem_old);
    replace(&key, &key_a.serialize_pem());
    let server = start(&dir.path().join("data2"), cert.clone(), key.clone(), 0).await;
    let (pem_b, der_b) = ca.leaf_valid(&key_b, Some((2003, 2004)));
    replace(&cert, &pem_b);
    replace(&key, &key_b.serialize_pem());
    assert!(matches!(
        server.certificate.reload().unwrap(),
        Reload::Replaced(_)
    ));
    assert_eq!(server.certificate.current().cert[0].as_ref(), &der_b[..]);
    server.stop().await;
}

/// With `tls.reload_interval_secs`, nobody has to ask: a Kubernetes-style symlink swap (cert-manager) is
/// picked up within an interval or two.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_picks_up_a_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let publish = |version: &str, cert_pem: &str, key_pem: &str| {
        let v = secret.join(version);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(v.join("tls.key"), key_pem).unwrap();
        symlink(version, secret.join("..data_tmp")).unwrap();
        std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    };
    let ca = Ca::new("CA");
    let (key_a, key_b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let ((pem_a, der_a), (pem_b, der_b)) = (ca.leaf(&key_a), ca.leaf(&key_b));
    publish("..v1", &pem_a, &key_a.serialize_pem());
    symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let server = start(
        &dir.path().join("data"),
        secret.join("tls.crt"),
        secret.join("tls.key"),
        1,
    )
    .await;
    assert_eq!(
        presented(&connect(server.addr, &ca.pem()).await.unwrap()),
        der_a
    );

    publish("..v2", &pem_b, &key_b.serialize_pem());
    let start = Instant::now();
    loop {
        let tls = connect(server.addr, &ca.pem()).await.unwrap();
        if presented(&tls) == der_b {
            break;
        }
        assert_eq!(presented(&tls), der_a);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the watch did not reload within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
