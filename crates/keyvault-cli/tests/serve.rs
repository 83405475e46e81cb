//! The real `keyvault` binary: `serve` from a config file with TLS files and a configured client,
//! configuration errors, graceful shutdown.

mod cli_support;

use cli_support::{BIN, LogLines, Server, command, hash_secret, log_field, spawn_server};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Start the server and read its listening address from the log on stderr.
fn start(args: &[&str]) -> (Server, String) {
    let (server, addr, _) = start_with_env(args, &[]);
    (server, addr)
}

/// [`start`] with these environment variables; also the metrics URL the server logs, if it logs one.
fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> (Server, String, Option<String>) {
    let mut c = command(None);
    c.args(args).envs(env.iter().copied());
    let (server, addr, lines) = spawn_server(c);
    // The metrics line, if any, follows the address's at once.
    let start = Instant::now();
    let metrics = loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| log_field(l, " metrics="));
        if found.is_some() || start.elapsed() > Duration::from_millis(500) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (server, addr, metrics)
}

/// The arguments of `serve --dev` on `data`, on a port the kernel picks.
fn dev_args(data: &std::path::Path) -> [&str; 6] {
    [
        "serve",
        "--dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ]
}

/// `dev-credentials.json` at `path` is complete and written by the server listening on `addr`.
fn dev_credentials_for(path: &std::path::Path, addr: &str) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|c| c["vault_url"] == format!("https://{addr}"))
}

/// Wait (at most 10 s) until the server on `addr` has written its credentials to `path`.
fn wait_for_dev_credentials(path: &std::path::Path, addr: &str) {
    let start = Instant::now();
    while !dev_credentials_for(path, addr) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no credentials from the server on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(Server(child): &Server) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(Server(child): &mut Server, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "the server did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn serves_with_tls_files_and_configured_clients() {
    let dir = tempfile::tempdir().unwrap();
    // Any PEM certificate and key will do; the dev PKI makes a valid pair signed by its own CA.
    let pki = dir.path().join("pki");
    keyvault_server::tls::load_or_create_dev_pki(&pki).unwrap();
    let secret = "s3cret-for-config-test";
    let config = dir.path().join("keyvault.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            addr = "127.0.0.1:0"
            data_dir = "{data}"
            tenant_id = "contoso"
            retention_days = 7
            purge_protection = true
            [tls]
            cert = "{pki}/server.pem"
            key = "{pki}/server-key.pem"
            [[clients]]
            client_id = "app-one"
            secret_hashes = ["{hash}"]
            secrets = [{{ hash = "{expired}", expires_on = 1 }}, {{ hash = "{next}", expires_on = 4102444800 }}]
            "#,
            data = dir.path().join("data").display(),
            pki = pki.display(),
            hash = hash_secret(secret),
            expired = hash_secret("retired-secret"),
            next = hash_secret("next-secret"),
        ),
    )
    .unwrap();
    // A flag overrides the file.
    let (mut child, addr) = start(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--retention-days",
        "30",
    ]);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let base = format!("https://{addr}");
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();

    let token_url = format!("{base}/contoso/oauth2/v2.0/token");
    let form = |s: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", "app-one")
            .append_pair("client_secret", s)
            .append_pair("scope", &format!("https://localhost:{port}/.default"))
            .finish()
    };
    let post = |body: String| {
        http.post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let resp = post(form("wrong")).await.unwrap();
    assert_eq!(resp.status(), 401);
    // Rotation from the config file: an expired secret is refused, one that expires later works.
    let resp = post(form("retired-secret")).await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = post(form("next-secret")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = post(form(secret)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let token: serde_json::Value = resp.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();

    let resp = http
        .get(format!("{base}/secrets?api-version=7.6"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        format!(
            "Bearer authorization=\"https://{addr}/contoso\", resource=\"https://localhost:{port}\""
        )
        .as_str()
    );
    let resp = http
        .put(format!("{base}/secrets/from-config?api-version=7.6"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["attributes"]["recoverableDays"], 30);
    assert_eq!(body["attributes"]["recoveryLevel"], "CustomizedRecoverable");

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let (code, err) = run(&["serve", "--data-dir", data, "--addr", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("TLS certificate and key are required"),
        "{err}"
    );
    let (code, err) = run(&[
        "serve",
        "--dev",
        "--data-dir",
        data,
        "--addr",
        "127.0.0.1:0",
        "--retention-days",
        "5",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("retention_days must be from 7 to 90"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "retention_days = \"many\"\n").unwrap();
    let (code, err) = run(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml"), "{err}");
    let (code, err) = run(&["serve", "--config", "/nonexistent/keyvault.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read"), "{err}");

    // A certificate that does not load stops the start before anything is made in a new data directory (no
    // key-encryption key, database or store marker for a vault that never served: a89-4).
    let fresh = dir.path().join("fresh");
    let missing = dir.path().join("missing.pem");
    let (code, err) = run(&[
        "serve",
        "--data-dir",
        fresh.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot load the TLS certificate"), "{err}");
    let mut made: Vec<String> = std::fs::read_dir(&fresh)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made, ["serve.lock"], "only the lock");
}

/// `serve` on a data dir whose database holds secrets: the exit status and stderr of a start that fails.
fn refused_start(data: &std::path::Path, kek_env: Option<&str>) -> String {
    let mut command = Command::new(BIN);
    command.args(dev_args(data)).env_remove("KEYVAULT_KEK");
    if let Some(kek) = kek_env {
        command.env("KEYVAULT_KEK", kek);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the server started: {stderr}");
    stderr
}

/// A `--dev` data directory (key file, database) holding one secret, `db-password`, made in-process.
async fn dev_data_with_a_secret(data: &std::path::Path) {
    let server = keyvault_server::Server::bind(keyvault_server::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        dev: true,
        ..keyvault_server::Config::default()
    })
    .await
    .unwrap();
    server
        .vault()
        .set(
            "db-password",
            keyvault_secrets::SecretString::new("hunter2"),
            Default::default(),
        )
        .await
        .unwrap();
}

/// The real binary over a database with secrets: another key (`KEYVAULT_KEK`) and a missing key file are
/// refused at start, naming the key ids, and no new key file is made; the right key still starts.
#[tokio::test]
async fn a_key_that_does_not_open_the_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    dev_data_with_a_secret(&data).await;
    let kek = data.join("kek.key");
    let written_with = keyvault_server::crypto::FileKeyProvider::load_or_create(&kek)
        .unwrap()
        .kek_id()
        .to_string();

    // 32 bytes of 2, another key than the one the database was written with.
    let other = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    let other_id = keyvault_server::crypto::StaticKeyProvider::from_text(other)
        .unwrap()
        .kek_id()
        .to_string();
    let stderr = refused_start(&data, Some(other));
    assert!(
        stderr.contains(&format!(
            "the key-encryption key (id {other_id}) is not the one this database was written with \
             (key id {written_with})"
        )),
        "{stderr}"
    );

    let saved = std::fs::read(&kek).unwrap();
    std::fs::remove_file(&kek).unwrap();
    let stderr = refused_start(&data, None);
    assert!(stderr.contains("is missing"), "{stderr}");
    assert!(
        stderr.contains(&format!("key id {written_with}")),
        "{stderr}"
    );
    assert!(!kek.exists(), "no new key file was made");

    use std::os::unix::fs::PermissionsExt;
    std::fs::write(&kek, saved).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (mut child, _addr) = start(&dev_args(&data));
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[test]
fn dev_mode_writes_credentials_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let args = dev_args(&data);
    let creds_path = data.join("dev-credentials.json");
    let mut first = None;
    for round in 0..2 {
        let (mut child, addr) = start(&args);
        wait_for_dev_credentials(&creds_path, &addr);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let creds: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&creds_path).unwrap()).unwrap();
        assert_eq!(creds["vault_url"], format!("https://{addr}"));
        assert_eq!(creds["authority_host"], format!("https://{addr}"));
        let port = addr.rsplit(':').next().unwrap();
        assert_eq!(
            creds["vault_url_named"],
            format!("https://myvault.localhost:{port}")
        );
        assert!(std::path::Path::new(creds["ca_cert"].as_str().unwrap()).is_absolute());
        let identity = (
            creds["client_id"].clone(),
            creds["client_secret"].clone(),
            std::fs::read(creds["ca_cert"].as_str().unwrap()).unwrap(),
        );
        // The secret's hash is kept (0600) and reused: the client still gets tokens after a restart.
        let hash_path = data.join("dev-client.hash");
        assert_eq!(
            std::fs::metadata(&hash_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let kept_hash = std::fs::read_to_string(&hash_path).unwrap();
        assert!(kept_hash.starts_with(creds["client_id"].as_str().unwrap()));
        assert!(!kept_hash.contains(creds["client_secret"].as_str().unwrap()));
        let token = std::process::Command::new(BIN)
            .args(["token", "--dev-credentials", creds_path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            token.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&token.stderr)
        );
        assert_eq!(token.stdout.split(|b| *b == b'.').count(), 3, "a JWT");
        let identity = (identity.0, identity.1, identity.2, kept_hash);
        if round == 0 {
            // A second server on the same data directory is refused (the directory is in use), and the
            // running one is unaffected.
            let second = Command::new(BIN)
                .args(args)
                .env("KEYVAULT_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut second = Server(second);
            let status = wait_exit(&mut second, Duration::from_secs(15));
            assert!(!status.success(), "a second server on one data dir started");
            let mut stderr = String::new();
            use std::io::Read;
            second
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(
                stderr.contains("in use by another keyvault server"),
                "{stderr}"
            );
            assert!(
                dev_credentials_for(&creds_path, &addr),
                "the first server's credentials stay"
            );
        }
        match &first {
            None => first = Some(identity),
            Some(f) => assert_eq!(
                f, &identity,
                "round {round}: same client, CA and kept hash after a restart"
            ),
        }
        sigterm(&child);
        assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    }
}

#[tokio::test]
async fn audit_verify_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (mut server, addr) = start(&dev_args(&data));
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();
    for path in ["secrets", "secrets/a/", "deletedsecrets"] {
        let resp = http
            .get(format!("https://{addr}/{path}?api-version=7.6"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).success());

    let log = data.join("audit.log");
    let (code, out) = audit_verify(&log);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok: 3 line(s)"), "{out}");

    let text = std::fs::read_to_string(&log).unwrap();
    let edited = text.replacen("\"status\":401", "\"status\":200", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    let (code, out) = audit_verify(&log);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not intact"), "{out}");
}

/// `keyvault audit verify PATH`: its exit code, and what it printed (stdout, then stderr).
fn audit_verify(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `RssAnon` of a process, in KiB (Linux).
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The allocator gives freed memory back: each client-secret check (argon2, 19 MiB) is freed when done, and an
/// idle server is small again within a second of token requests (mimalloc's defaults kept ≈ 20–27 MiB
/// resident here; with the purge delay and purger thread of `allocator.rs`, ≈ 4.5 MiB after 0.2 s).
#[test]
fn idle_server_gives_freed_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (mut child, addr) = start(&dev_args(&data));
    let creds_path = data.join("dev-credentials.json");
    wait_for_dev_credentials(&creds_path, &addr);
    for _ in 0..3 {
        let token = Command::new(BIN)
            .args(["token", "--dev-credentials", creds_path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
    }
    // Freed memory is returned at the purger's next turn (every 0.1 s) once it has been free for 100 ms.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut anon = rss_anon_kib(child.0.id());
    while anon >= 12 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        anon = rss_anon_kib(child.0.id());
    }
    assert!(
        anon < 12 * 1024,
        "an idle server holds {anon} KiB of anonymous memory after three token requests"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// Whether the process maps `vault.db` (its readers do with `mmap_mib`).
fn maps_database(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .any(|l| l.ends_with("/vault.db"))
}

/// `mmap_mib` in the config file reaches the store: with it (and no cache, so reads go to the database) the
/// server maps its database file once it reads pages from it, and reads answer what was written; without it,
/// nothing is mapped. (A reader takes pages still in the WAL from the WAL: the file is read, and mapped, once
/// the checkpointer has copied them, within about 100 ms; so the reads are repeated for up to 5 s.)
#[test]
fn mmap_mib_maps_the_database_for_reads() {
    for mmap_mib in [16, 0] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("dev");
        let config = dir.path().join("keyvault.toml");
        std::fs::write(&config, format!("mmap_mib = {mmap_mib}\ncache_mib = 0\n")).unwrap();
        let mut args = dev_args(&data).to_vec();
        args.extend(["--config", config.to_str().unwrap()]);
        // A non-dumpable server's /proc/PID/maps is root's only: this test reads it.
        let (mut child, addr, _) = start_with_env(&args, &[("KEYVAULT_ALLOW_CORE_DUMPS", "1")]);
        let creds_path = data.join("dev-credentials.json");
        wait_for_dev_credentials(&creds_path, &addr);
        let cli = |args: &[&str], stdin: &str| {
            use std::io::Write;
            let mut c = Command::new(BIN)
                .args(args)
                .args(["--dev-credentials", creds_path.to_str().unwrap()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        cli(
            &["secret", "set", "mapped", "--value-stdin"],
            "through the map",
        );
        let started = Instant::now();
        let mut reads = 0;
        while started.elapsed() < Duration::from_secs(if mmap_mib > 0 { 5 } else { 1 }) {
            let shown = cli(&["secret", "show", "mapped", "-o", "value"], "");
            assert_eq!(shown.trim_end(), "through the map");
            reads += 1;
            if maps_database(child.0.id()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            maps_database(child.0.id()),
            mmap_mib > 0,
            "mmap_mib = {mmap_mib}, after {reads} reads"
        );
        sigterm(&child);
        assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    }
}

/// A TLS connection to the server on `addr`, handshake done, as a blocking stream.
fn tls_connection(
    ca_pem: &[u8],
    addr: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    try_tls_connection(ca_pem, addr).unwrap()
}

/// [`tls_connection`], or why the connection or its handshake failed.
fn try_tls_connection(
    ca_pem: &[u8],
    addr: &str,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    // These connections speak HTTP/1.1 text: they offer only that (the server speaks what ALPN chose).
    tls_connection_offering(ca_pem, addr, b"http/1.1")
}

/// A TLS connection to the server offering only `protocol` by ALPN.
fn tls_connection_offering(
    ca_pem: &[u8],
    addr: &str,
    protocol: &[u8],
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let mut config = keyvault_server::tls::client_config_trusting(ca_pem).unwrap();
    config.alpn_protocols = vec![protocol.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// How long until the server ends the connection (a read returns end of input or an error).
fn closed_after(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
) -> Duration {
    use std::io::Read;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => continue,
        }
    }
}

/// Connections that go quiet are closed (`idle_timeout_secs`): one that never sends a request, one that stops
/// in the middle of its headers, and a keep-alive connection left unused; one in use stays open.
#[test]
fn quiet_connections_are_closed() {
    use std::io::{Read, Write};
    let (_dir, mut child, addr, ca) = dev_server_configured("idle_timeout_secs = 2\n");
    // The open-file limit leaves room for the 4,096 connections the server admits (up to the hard limit).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).unwrap();
    let files: Vec<String> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(str::to_string)
        .collect();
    let (soft, hard) = (&files[0], &files[1]);
    let want = hard.parse::<u64>().map_or(5120, |h| h.min(5120));
    assert!(
        soft == "unlimited" || soft.parse::<u64>().unwrap() >= want,
        "{limits}"
    );

    let mut silent = tls_connection(&ca, &addr);
    let mut partial = tls_connection(&ca, &addr);
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut used = tls_connection(&ca, &addr);
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut buf = [0u8; 4096];
    // In use: a request every 0.5 s for 4 s (twice the limit) is answered on the same connection.
    for _ in 0..8 {
        used.write_all(request).unwrap();
        let n = used.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // By now the two quiet ones were closed (after about 2 s); the used one closes 2 s after its last answer.
    for (what, stream) in [("silent", &mut silent), ("partial headers", &mut partial)] {
        let waited = closed_after(stream);
        assert!(
            waited < Duration::from_secs(1),
            "{what}: still open {waited:?} after 4 s"
        );
    }
    let waited = closed_after(&mut used);
    assert!(
        waited > Duration::from_millis(800) && waited < Duration::from_secs(6),
        "unused keep-alive connection closed after {waited:?}"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// A quiet HTTP/2 connection is told it is being closed (GOAWAY, no error, no stream processed) before the
/// server closes it, after the idle limit even when the client's last frame got no answer (a SETTINGS
/// acknowledgement); a client that answers the GOAWAY's PING is closed at once, one that does not within the
/// closing grace (5 s).
#[test]
fn quiet_http2_connections_are_told_before_they_are_closed() {
    use std::io::{Read, Write};
    let (_dir, mut child, addr, ca) = dev_server_configured("idle_timeout_secs = 2\n");
    /// Frames read until the server ends the connection: (type, flags, payload, when), answering the
    /// server's SETTINGS and, if `answer_pings`, its PINGs.
    fn frames_until_closed(
        mut tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
        answer_pings: bool,
    ) -> Vec<(u8, u8, Vec<u8>, Instant)> {
        let frame = |kind: u8, flags: u8, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([kind, flags, 0, 0, 0, 0]);
            f.extend(payload);
            f
        };
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        tls.write_all(&frame(4, 0, &[])).unwrap();
        tls.flush().unwrap();
        let (mut buf, mut frames) = (Vec::new(), Vec::new());
        let mut chunk = [0u8; 4096];
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                let reply = match (kind, flags & 1) {
                    (4, 0) => Some(frame(4, 1, &[])),
                    (6, 0) if answer_pings => Some(frame(6, 1, &payload)),
                    _ => None,
                };
                if let Some(reply) = reply {
                    tls.write_all(&reply).unwrap();
                    tls.flush().unwrap();
                }
                frames.push((kind, flags, payload, Instant::now()));
            }
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    frames.push((u8::MAX, 0, Vec::new(), Instant::now()));
                    return frames;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let connect = || tls_connection_offering(&ca, &addr, b"h2").unwrap();
    let (answering, silent) = (connect(), connect());
    let started = Instant::now();
    let silent = std::thread::spawn(move || frames_until_closed(silent, false));
    let answering = frames_until_closed(answering, true);
    let silent = silent.join().unwrap();
    for (what, frames, grace) in [
        ("answering", &answering, Duration::ZERO),
        ("silent", &silent, Duration::from_secs(5)),
    ] {
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        let goaway = frames
            .iter()
            .position(|f| f.0 == 7)
            .unwrap_or_else(|| panic!("{what}: no GOAWAY before the close: {kinds:?}"));
        let (_, _, payload, told) = &frames[goaway];
        // Last stream id 0 or the maximum (a graceful GOAWAY's first), error code NO_ERROR.
        assert_eq!(payload[4..8], [0, 0, 0, 0], "{what}: {payload:?}");
        let quiet_for = told.duration_since(started);
        assert!(
            quiet_for > Duration::from_millis(1500) && quiet_for < Duration::from_secs(5),
            "{what}: GOAWAY after {quiet_for:?}"
        );
        let closed = frames.last().unwrap().3.duration_since(*told);
        assert!(
            closed >= grace.saturating_sub(Duration::from_millis(500))
                && closed < grace + Duration::from_secs(2),
            "{what}: closed {closed:?} after the GOAWAY: {kinds:?}"
        );
    }
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// One source cannot hold every connection (`max_connections_per_source`): past its limit a new connection
/// from it is closed before TLS, and counted; once one of its connections ends, it may open another.
#[test]
fn one_source_cannot_hold_every_connection() {
    use std::io::{Read, Write};
    let (_dir, mut child, addr, ca) = dev_server_configured("max_connections_per_source = 2\n");

    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let healthz =
        |stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
            stream.write_all(request).unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        };
    let mut first = tls_connection(&ca, &addr);
    let mut second = tls_connection(&ca, &addr);
    healthz(&mut first);
    healthz(&mut second);
    // The third from the same address: closed at once (the server would otherwise wait 10 s for a TLS
    // handshake; this read gives up after 5).
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match tcp.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a third connection was kept: {other:?}"),
    }
    // The two held still work.
    healthz(&mut first);
    drop(second);
    // Once the server has seen one end, a new connection is admitted.
    let started = Instant::now();
    let mut third = loop {
        if let Ok(stream) = try_tls_connection(&ca, &addr) {
            break stream;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never admitted again"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    healthz(&mut third);
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// `serve --dev` on `data` with `extra`, which must be refused at start (exit 2): its standard error.
fn refused_start_with(data: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(dev_args(data))
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// A second server on a data directory another one serves from is refused (exit 2, saying why), whatever
/// its store: the two would share one audit log. The first's files are left as they were.
#[test]
fn a_second_server_on_one_data_directory_is_refused() {
    let (dir, mut child, _addr) = dev_server();
    let data = dir.path().join("dev");
    let marker = std::fs::read(data.join("store.initialized")).unwrap();
    let audit_before = std::fs::read(data.join("audit.log")).unwrap_or_default();
    let other = dir.path().join("other.db");
    let stderr = refused_start_with(&data, &["--store", &format!("sqlite:{}", other.display())]);
    assert!(
        stderr.contains("in use by another keyvault server"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(data.join("store.initialized")).unwrap(),
        marker
    );
    assert_eq!(
        std::fs::read(data.join("audit.log")).unwrap_or_default(),
        audit_before
    );
    assert!(!other.exists(), "the second server opened its store");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    // Stopped, the directory is free again.
    let (mut again, _) = start(&dev_args(&data));
    sigterm(&again);
    assert!(wait_exit(&mut again, Duration::from_secs(15)).success());

    // Directories of their own, one audit log outside both: the second is refused too.
    let shared = dir.path().join("shared-audit.log");
    let toml = format!("audit_log = {:?}\n", shared.display().to_string());
    let (_first_dir, mut first, _, _) = dev_server_configured(&toml);
    let second_dir = tempfile::tempdir().unwrap();
    let config = second_dir.path().join("keyvault.toml");
    std::fs::write(&config, &toml).unwrap();
    let second_data = second_dir.path().join("dev");
    let stderr = refused_start_with(&second_data, &["--config", config.to_str().unwrap()]);
    assert!(
        stderr.contains("the audit log") && stderr.contains("in use by another keyvault server"),
        "{stderr}"
    );
    sigterm(&first);
    assert!(wait_exit(&mut first, Duration::from_secs(15)).success());

    // Another naming a running server's own log (in that server's data directory), through a symlink: refused.
    let (third_dir, mut third, _) = dev_server();
    let link = dir.path().join("link-to-third");
    std::os::unix::fs::symlink(third_dir.path().join("dev"), &link).unwrap();
    let toml = format!(
        "audit_log = {:?}\n",
        link.join("audit.log").display().to_string()
    );
    std::fs::write(&config, &toml).unwrap();
    let stderr = refused_start_with(&second_data, &["--config", config.to_str().unwrap()]);
    assert!(stderr.contains("the audit log"), "{stderr}");
    sigterm(&third);
    assert!(wait_exit(&mut third, Duration::from_secs(15)).success());
}

/// An HTTP/1.1 client that pipelines requests and never reads the answers: once the answers fill the socket
/// buffers, hyper waits on the write alone (it reads no more while a request is already buffered), and the
/// idle limit (here 2 s) must still close the connection — cut in the middle of its answers, not kept open
/// until the client reads them all.
#[test]
fn a_client_that_never_reads_its_pipelined_answers_is_cut_off() {
    use std::io::{Read, Write};
    let (_dir, mut child, addr, ca) = dev_server_configured("idle_timeout_secs = 2\n");
    const REQUESTS: usize = 200_000;
    let (tx, rx) = std::sync::mpsc::channel();
    let addr2 = addr.clone();
    std::thread::spawn(move || {
        let mut stream = tls_connection(&ca, &addr2);
        let one = format!("GET /healthz HTTP/1.1\r\nHost: {addr2}\r\n\r\n");
        let all = one.repeat(REQUESTS);
        // Blocks once the server stops reading; fails when it closes the connection.
        let _ = stream
            .write_all(all.as_bytes())
            .and_then(|_| stream.flush());
        // Past the idle limit, whatever the write did, before reading anything.
        std::thread::sleep(Duration::from_secs(5));
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        let answers = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
        let _ = tx.send(answers);
    });
    let answers = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the connection was never closed: the client's write still waits");
    assert!(answers < REQUESTS, "every answer was delivered: {answers}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// Over HTTP/1.1 a body that stops coming is cut off by the connection's answer timeout (here 2 s:
/// `idle_timeout_secs`), and the request gets 408 `RequestTimeout` (as over HTTP/2), not a 400 that would say
/// it was malformed; nothing is stored. The token endpoint answers the same in its OAuth shape.
#[tokio::test]
async fn a_stalled_body_gets_408_over_http1() {
    use std::io::{Read, Write};
    let (dir, mut child, addr, _) = dev_server_configured("idle_timeout_secs = 2\n");
    let creds = dir.path().join("dev/dev-credentials.json");
    let (ca, token, _) = dev_token(&creds, &addr).await;
    let tenant: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    let tenant = tenant["tenant_id"].as_str().unwrap().to_string();

    let stalled = |head: String, part: &str| {
        let mut stream = tls_connection(&ca, &addr);
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(part.as_bytes()).unwrap();
        stream.flush().unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    let got = stalled(
        format!(
            "PUT /secrets/slow?api-version=7.6 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ),
        r#"{"value":"#,
    );
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""code":"RequestTimeout""#), "{got}");
    // On a new connection: the server closed the token request's after 2 s without traffic.
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();
    let resp = http
        .get(format!("https://{addr}/secrets/slow?api-version=7.6"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);

    let got = stalled(
        format!(
            "POST /{tenant}/oauth2/v2.0/token HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        ),
        "grant_type=client_credentials&client_id=",
    );
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""error":"invalid_request""#), "{got}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// An HTTP/1.1 request whose body is over the limit gets its 413 (Key Vault-shaped), even when the client sends
/// the whole body before it reads the answer (as `requests`, under the Python SDK, does): the server reads the
/// rest before it answers, so closing the connection does not reset the answer away. A badly framed chunked
/// body gets 400, not a 413.
#[tokio::test]
async fn oversized_and_broken_bodies_get_their_answers() {
    use std::io::{Read, Write};
    let (dir, mut child, addr) = dev_server();
    let (ca, token, _http) = dev_token(&dir.path().join("dev/dev-credentials.json"), &addr).await;

    let answer = |request: Vec<u8>| {
        let mut stream = tls_connection(&ca, &addr);
        stream.write_all(&request).unwrap();
        stream.flush().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(2).any(|w| w == b"}}") {
                        break;
                    }
                }
                Err(e) => panic!("the connection failed before the answer was read: {e}"),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let body = format!(r#"{{"value":"x","pad":"{}"}}"#, "a".repeat(2_000_000));
    let mut request = format!(
        "PUT /secrets/big?api-version=7.6 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    for _ in 0..3 {
        let got = answer(request.clone());
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        assert!(got.contains(r#""code":"RequestEntityTooLarge""#), "{got}");
    }
    // The same body sent chunked (no declared length), in 64 KiB chunks.
    let mut chunked = format!(
        "PUT /secrets/big?api-version=7.6 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for _ in 0..2 {
        let got = answer(chunked.clone());
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        assert!(got.contains(r#""code":"RequestEntityTooLarge""#), "{got}");
    }
    // A chunked body within the limit is read whole.
    let small = r#"{"value":"chunked value"}"#;
    let got = answer(
        format!(
            "PUT /secrets/chunked?api-version=7.6 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &small[..5],
            small.len() - 5,
            &small[5..]
        )
        .into_bytes(),
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains(r#""value":"chunked value""#), "{got}");
    let broken = format!(
        "PUT /secrets/b?api-version=7.6 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    let got = answer(broken.into_bytes());
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains(r#""code":"BadParameter""#), "{got}");
    // Headers: up to 64 KiB (the same on HTTP/2), give or take hyper's reads.
    let status_line = |extra: usize| {
        let mut stream = tls_connection(&ca, &addr);
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(extra)
        );
        // Refused, the rest of the request may not be read: the write and the answer may break off.
        let _ = stream.write_all(request.as_bytes());
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(status_line(40_000).starts_with("HTTP/1.1 200"));
    // hyper checks its limit between reads: a head that arrives in one piece can pass up to its buffer's next
    // size, 128 KiB (a 100,000-byte one did); past that it never passes.
    let refused = status_line(200_000);
    assert!(
        refused.is_empty() || refused.starts_with("HTTP/1.1 431"),
        "{refused}"
    );
    // The token's connection (HTTP/2) closes when the server says so: this runtime must stay free meanwhile.
    sigterm(&child);
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)));
    assert!(exit.await.unwrap().success());
}

/// A `--dev` server in a new temporary directory (its data in `dev/`), ready.
fn dev_server() -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (child, addr) = start(&dev_args(&data));
    wait_for_dev_credentials(&data.join("dev-credentials.json"), &addr);
    (dir, child, addr)
}

/// [`dev_server`] with `toml` as its configuration file; also its CA (`DIR/dev/tls/ca.pem`).
fn dev_server_configured(toml: &str) -> (tempfile::TempDir, Server, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let config = dir.path().join("keyvault.toml");
    std::fs::write(&config, toml).unwrap();
    let mut args = dev_args(&data).to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let (child, addr) = start(&args);
    wait_for_dev_credentials(&data.join("dev-credentials.json"), &addr);
    let ca = std::fs::read(data.join("tls").join("ca.pem")).unwrap();
    (dir, child, addr, ca)
}

/// The dev server's CA, a token for its client, and the HTTPS client that fetched it (keep it alive).
async fn dev_token(creds_path: &std::path::Path, addr: &str) -> (Vec<u8>, String, reqwest::Client) {
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(creds_path).unwrap()).unwrap();
    let ca = std::fs::read(creds["ca_cert"].as_str().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();
    let port = addr.rsplit(':').next().unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", creds["client_id"].as_str().unwrap())
        .append_pair("client_secret", creds["client_secret"].as_str().unwrap())
        .append_pair("scope", &format!("https://localhost:{port}/.default"))
        .finish();
    let token: serde_json::Value = http
        .post(format!(
            "https://{addr}/{}/oauth2/v2.0/token",
            creds["tenant_id"].as_str().unwrap()
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    (ca, token, http)
}

/// A token request whose client hangs up before the answer (here while its secret is checked: the client's
/// configured hash costs seconds to check) still gets its audit line, with status 499 and the client it named:
/// a credential guess leaves a trace (a92-2: it left none; a93-1: without the client).
#[test]
fn a_token_request_whose_client_leaves_is_audited() {
    use std::io::Write;
    // A hash of another secret whose argon2 time cost makes one check take seconds.
    let slow = hash_secret("the-right-secret").replacen(",t=2,", ",t=400,", 1);
    assert!(slow.contains(",t=400,"), "{slow}");
    let (dir, child, addr, ca) = dev_server_configured(&format!(
        "[[clients]]\nclient_id = \"slow\"\nsecret_hashes = [\"{slow}\"]\n"
    ));
    let data = dir.path().join("dev");
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("dev-credentials.json")).unwrap()).unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", "slow")
        .append_pair("client_secret", "a-wrong-secret")
        .append_pair(
            "scope",
            &format!(
                "https://localhost:{}/.default",
                addr.rsplit(':').next().unwrap()
            ),
        )
        .finish();
    let request = format!(
        "POST /{}/oauth2/v2.0/token HTTP/1.1\r\nhost: {addr}\r\ncontent-type: \
         application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
        creds["tenant_id"].as_str().unwrap(),
        form.len()
    );
    let mut stream = tls_connection(&ca, &addr);
    stream.write_all(request.as_bytes()).unwrap();
    stream.flush().unwrap();
    // Gone while the secret is checked.
    std::thread::sleep(Duration::from_millis(300));
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
    let _ = stream.sock.shutdown(std::net::Shutdown::Both);
    drop(stream);

    let log = data.join("audit.log");
    let start = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("\"TokenRequest\"")) {
            break line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no TokenRequest line:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        line.contains("\"status\":499")
            && line.contains("\"rejected\"")
            && line.contains("\"target\":\"slow\""),
        "{line}"
    );
    assert!(!line.contains("a-wrong-secret"), "{line}");
    sigterm(&child);
}

/// SIGTERM waits for a request in flight (here one whose body never arrives, up to the 10-s drain); a second
/// signal ends the process at once, with exit code 130.
#[tokio::test]
async fn a_second_signal_stops_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let (dir, mut child, addr) = dev_server();
    let (ca, token, _http) = dev_token(&dir.path().join("dev/dev-credentials.json"), &addr).await;
    let stuck = stuck_put(&ca, &addr, &token);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the first signal waits for the request"
    );
    let second = Instant::now();
    sigterm(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{status:?} {:?}", status.signal());
    drop(stuck);
}

/// A store that holds secrets of another vault name, and none of this one's, is most likely a renamed or
/// mistyped `vault_name` (values are bound to their vault's name, so the vault looks empty): the server says
/// so when it starts.
#[tokio::test]
async fn another_vault_name_over_a_store_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    dev_data_with_a_secret(&data).await;
    // The lines a server logs up to the one with its address.
    let start_lines = |vault_name: &str| {
        let mut args = dev_args(&data).to_vec();
        args.extend(["--vault-name", vault_name]);
        let mut child = Command::new(BIN)
            .args(&args)
            .env_remove("KEYVAULT_KEK")
            .env("KEYVAULT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let server = Server(child);
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("addr="))
            .collect();
        drop(server);
        lines.join("\n")
    };
    let renamed = start_lines("othervault");
    assert!(
        renamed.contains("store holds secrets of another vault name")
            && renamed.contains("store_holds=myvault"),
        "{renamed}"
    );
    let same = start_lines("myvault");
    assert!(!same.contains("another vault name"), "{same}");
}

/// Starts the server and keeps every line it logs: (server, address, the lines so far).
fn start_logged(args: &[&str]) -> (Server, String, LogLines) {
    let mut c = command(None);
    c.args(args);
    spawn_server(c)
}

/// Waits (at most 10 s) for a logged line containing `text`; returns it.
fn wait_for_line(lines: &std::sync::Mutex<Vec<String>>, text: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no line with '{text}' in {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A kept-alive HTTP/1.1 connection over TLS trusting `ca_pem`, or the handshake's error.
fn http1_connection(
    ca_pem: &[u8],
    addr: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, rustls::Error> {
    let mut config = keyvault_server::tls::client_config_trusting(ca_pem).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return Err(e
                .into_inner()
                .and_then(|e| e.downcast::<rustls::Error>().ok())
                .map_or(rustls::Error::General("handshake".into()), |e| *e));
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// `GET /healthz` on `stream`: whether it answered 200 (and kept the connection open).
fn healthz_ok(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
) -> bool {
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    // /healthz answers a short body that comes with its head.
    String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200")
}

/// A CA and a `localhost` certificate it signs, expiring in `days`: (CA PEM, certificate PEM, key PEM).
fn certificate_expiring_in(days: i64) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// SIGHUP to the real binary reloads the certificate files: new connections get the new certificate, a
/// kept-alive connection from before keeps working; a bad pair is refused (logged, old certificate kept);
/// the server keeps running through it all. A certificate about to expire is warned about.
#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let write = |path: &std::path::Path, contents: &str| {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let (ca_a, pem_a, key_a) = certificate_expiring_in(10);
    write(&cert, &pem_a);
    write(&key, &key_a);
    let config = dir.path().join("keyvault.toml");
    // The watch is off: only SIGHUP reloads.
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval_secs = 0\n",
            dir.path().join("data").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let (server, addr, lines) = start_logged(&["serve", "--config", config.to_str().unwrap()]);
    let expiring = wait_for_line(&lines, "expires within 14 days");
    assert!(expiring.contains("WARN"), "{expiring}");
    let mut open = http1_connection(ca_a.as_bytes(), &addr).unwrap();
    assert!(healthz_ok(&mut open));

    let (ca_b, pem_b, key_b) = certificate_expiring_in(90);
    assert!(http1_connection(ca_b.as_bytes(), &addr).is_err());
    write(&cert, &pem_b);
    write(&key, &key_b);
    let hup = |Server(child): &Server| {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup(&server);
    let reloaded = wait_for_line(&lines, "TLS certificate reloaded");
    assert!(
        reloaded.contains("sha256=") && reloaded.contains("not_after="),
        "{reloaded}"
    );
    let mut fresh = http1_connection(ca_b.as_bytes(), &addr).unwrap();
    assert!(healthz_ok(&mut fresh));
    assert!(http1_connection(ca_a.as_bytes(), &addr).is_err());
    assert!(
        healthz_ok(&mut open),
        "the connection from before still answers"
    );

    // A key that is not the certificate's: refused, logged, the current certificate kept.
    write(&key, &key_a);
    hup(&server);
    let refused = wait_for_line(&lines, "reload refused");
    assert!(
        refused.contains("ERROR") && refused.contains("tls.key"),
        "{refused}"
    );
    assert!(healthz_ok(
        &mut http1_connection(ca_b.as_bytes(), &addr).unwrap()
    ));
    let mut server = server;
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the server"
    );
    // No key material in the log.
    let log = lines.lock().unwrap().join("\n");
    for key_pem in [&key_a, &key_b] {
        for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(line));
        }
    }
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).success());
}

/// `--metrics-addr` and `KEYVAULT_METRICS_ADDR` start the metrics listener, whose URL is logged; without
/// them there is none.
#[test]
fn metrics_listener_from_the_flag_or_the_environment() {
    use std::io::{Read, Write};
    for via_env in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("dev");
        let mut args = dev_args(&data).to_vec();
        let mut env = Vec::new();
        if via_env {
            env.push(("KEYVAULT_METRICS_ADDR", "127.0.0.1:0"));
        } else {
            args.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        let (_server, _addr, metrics) = start_with_env(&args, &env);
        let url = metrics.expect("the metrics URL is logged");
        let host = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("{url}"));
        let mut tcp = std::net::TcpStream::connect(host).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
        assert!(
            answer.contains("\nkeyvault_build_info{version=\""),
            "{answer}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, _addr, metrics) = start_with_env(&dev_args(&dir.path().join("dev")), &[]);
    assert_eq!(metrics, None);
}

/// `serve` raises its soft limit on open files towards the hard one (to 5,120: its 4,096 connections and its
/// files), so that a default soft limit of 1,024 does not make `accept` fail early. Started through
/// `prlimit` with 1,024 soft and 8,192 hard.
#[test]
fn serve_raises_its_open_file_limit() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit (util-linux) is not installed: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = command(None);
    let mut c = Command::new("prlimit");
    c.arg("--nofile=1024:8192")
        .arg("--")
        .arg(BIN)
        .args(["serve", "--dev", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"));
    for (k, v) in reference.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let (server, _, _) = spawn_server(c);
    let open_files = || {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.0.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        let mut fields = line["Max open files".len()..].split_whitespace();
        (
            fields.next().unwrap().to_string(),
            fields.next().unwrap().to_string(),
        )
    };
    let start = Instant::now();
    while open_files().0 == "1024" && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_files(), ("5120".to_string(), "8192".to_string()));
}

/// A disk that fills up under the audit log (here: the file-size limit, `RLIMIT_FSIZE`, reached by the log,
/// with `SIGXFSZ` ignored so that writes fail with `EFBIG` as they would with `ENOSPC`): the change whose
/// line could not be written is answered (it is committed) and named in the server's log; the part of its
/// line that reached the file is cut off (the file still verifies and ends in a whole line); changes are then
/// refused with 503 before they are made; reads go on; once the log can be written again the refusals end
/// by themselves; and the server starts again on that log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_audit_log_refuses_changes_until_it_can_be_written() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit (util-linux) is not installed: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    // First run: an audit log much larger than every other file (unauthenticated reads write nothing else).
    let (mut server, addr) = start(&dev_args(&data));
    wait_for_dev_credentials(&data.join("dev-credentials.json"), &addr);
    let (_, _, http) = dev_token(&data.join("dev-credentials.json"), &addr).await;
    for _ in 0..400 {
        let resp = http
            .get(format!("https://{addr}/secrets?api-version=7.6"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).success());
    let log = data.join("audit.log");
    let audit_size = std::fs::metadata(&log).unwrap().len();
    // Room for the next start's token request's line (as long as this run's), and about one more line: the
    // second change's line fails part-way.
    let token_line = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find(|l| l.contains("\"TokenRequest\""))
        .map_or(0, |l| l.len() as u64 + 1);
    let limit = audit_size + token_line + 500;
    for entry in walk(&data) {
        let len = std::fs::metadata(&entry).unwrap().len();
        assert!(
            entry == log || len + 64 * 1024 < limit,
            "{} ({len} bytes) would reach the limit too",
            entry.display()
        );
    }

    let reference = command(None);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"trap '' XFSZ; exec prlimit --fsize="$1":unlimited -- "$2" serve --dev --addr 127.0.0.1:0 --data-dir "$3""#)
        .arg("sh")
        .arg(limit.to_string())
        .arg(BIN)
        .arg(&data);
    for (k, v) in reference.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let (mut server, addr, lines) = spawn_server(c);
    wait_for_dev_credentials(&data.join("dev-credentials.json"), &addr);
    let (_, token2, http) = dev_token(&data.join("dev-credentials.json"), &addr).await;
    let put = |name: String| {
        let (http, token2, addr) = (&http, &token2, &addr);
        async move {
            let resp = http
                .put(format!("https://{addr}/secrets/{name}?api-version=7.6"))
                .bearer_auth(token2)
                .json(&serde_json::json!({"value": "v"}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (status, body, retry_after)
        }
    };
    let mut made = Vec::new();
    let (refused, retry_after) = loop {
        let name = format!("s{}", made.len());
        let (status, body, retry_after) = put(name.clone()).await;
        match status {
            200 => made.push(name),
            503 => break (body, retry_after),
            other => panic!("{other}: {body}"),
        }
        assert!(made.len() < 20, "changes were never refused");
    };
    assert_eq!(refused["error"]["code"], "ServiceUnavailable", "{refused}");
    // Every 503 says when to try again.
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit log"),
        "{refused}"
    );
    // The change whose line failed was made, answered, and named in the server's log.
    let unaudited = made.last().unwrap().clone();
    let logged = wait_for_line(&lines, "its audit line could not be written");
    assert!(logged.contains("SecretSet"), "{logged}");
    // Every acknowledged change is there; reads are served while changes are refused.
    for name in &made {
        let resp = http
            .get(format!("https://{addr}/secrets/{name}?api-version=7.6"))
            .bearer_auth(&token2)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
    }
    // The file ends in a whole line and verifies; the unaudited change has no line.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    assert!(!text.contains(&format!("\"secret\":\"{unaudited}\"")));
    let (code, out) = audit_verify(&log);
    assert_eq!(code, Some(0), "{out}");

    // Room again (the soft limit raised from outside): a refusal's own line gets written, and changes go on.
    let raised = Command::new("prlimit")
        .args(["--pid", &server.0.id().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(raised.success());
    let mut statuses = Vec::new();
    for attempt in 0..3 {
        let (status, body, _) = put(format!("after{attempt}")).await;
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).success());
    let (code, out) = audit_verify(&log);
    assert_eq!(code, Some(0), "{out}");
    let (server, _) = start(&dev_args(&data));
    drop(server);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A previous token-signing key still verifies tokens (whoever reads it can mint them): a file others may read
/// is warned about at start, as the current key's is.
#[test]
fn a_readable_previous_signing_key_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let (first, mut server, _) = dev_server();
    sigterm(&server);
    wait_exit(&mut server, Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let previous = dir.path().join("previous-signing-key.pk8");
    std::fs::copy(first.path().join("dev/token-signing-key.pk8"), &previous).unwrap();
    std::fs::set_permissions(&previous, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("keyvault.toml");
    std::fs::write(
        &config,
        format!(
            "previous_signing_key_files = [{:?}]\n",
            previous.to_str().unwrap()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut args = dev_args(&data).to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let (server, _, lines) = start_logged(&args);
    let line = wait_for_line(&lines, "private key file is accessible by group or others");
    assert!(line.contains("previous-signing-key.pk8"), "{line}");
    sigterm(&server);
}

/// A data directory others can write is warned about at start (they could replace the database or the
/// access-control document in it); a private one is not.
#[test]
fn a_data_directory_others_can_write_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    for (mode, warned) in [(0o777, true), (0o700, false)] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut c = command(None);
        c.args(cli_support::dev_serve_args(&data));
        let (server, _, lines) = spawn_server(c);
        let said = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("the data directory is writable by group or others"))
            .count();
        drop(server);
        assert_eq!(said, usize::from(warned), "mode {mode:o}");
    }
}

/// Version ids continue after the store's record of how far they had reached (moved on before a set whose id
/// passes it is stored, so a crash right after the answer keeps it): after a restart with the clock set back — here
/// the record says the earlier ids were made an hour ahead of the clock — a new version still lists after the
/// earlier ones, its id in the hour after the record, and the server says why at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_made_after_a_restart_with_the_clock_set_back_list_after_the_earlier_ones() {
    use cli_support::{kv_dev, serve_dev, stop_server, wait_for_dev_credentials_at};
    use keyvault_server::store::{SecretStore, VERSION_CLOCK, sqlite::SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let set = |value: &str| {
        let out = kv_dev(
            &data,
            &["secret", "set", "rolling", "--value", value, "-o", "json"],
        );
        out.ok().json()["version"].as_str().unwrap().to_string()
    };
    let ms = |id: &str| u64::from_str_radix(&id[..12], 16).unwrap();
    async fn recorded(store: &SqliteStore) -> (Vec<u8>, u64) {
        let bytes = store.meta(VERSION_CLOCK).await.unwrap().expect("recorded");
        (bytes.clone(), u64::from_be_bytes(bytes.try_into().unwrap()))
    }
    let db = data.join("vault.db");
    // Starts the server again over `data`; it must log a line containing `said` on its way up.
    let restart_saying = |said: &str| {
        let mut c = command(None);
        c.args(cli_support::dev_serve_args(&data));
        let (server, addr, lines) = spawn_server(c);
        wait_for_dev_credentials_at(&data, &addr);
        let lines = lines.lock().unwrap();
        assert!(lines.iter().any(|l| l.contains(said)), "{said}: {lines:?}");
        server
    };

    let server = serve_dev(&data, &[], &[]);
    let first = set("one");
    stop_server(server);
    let store = SqliteStore::open(&db).unwrap();
    let (old, at_stop) = recorded(&store).await;
    assert!(at_stop >= ms(&first), "recorded before the set");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ahead = now + 3_600_000;
    assert!(
        store
            .meta_replace(VERSION_CLOCK, &old, &ahead.to_be_bytes())
            .await
            .unwrap()
    );
    store.close().await;
    drop(store);

    let server = restart_saying("ahead of this machine's clock");
    let second = set("two");
    assert!(
        ms(&second) > ahead && ms(&second) < ahead + 60_000,
        "{second} after {ahead}"
    );
    let listed = kv_dev(&data, &["secret", "list-versions", "rolling", "-o", "json"])
        .ok()
        .json();
    let order: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(order, [first.as_str(), second.as_str()]);

    // Recorded before the set was answered: a crash at once keeps it.
    drop(server); // SIGKILL
    let store = SqliteStore::open(&db).unwrap();
    let (bytes, after_crash) = recorded(&store).await;
    assert!(after_crash >= ms(&second), "{after_crash} < {second}");

    // A damaged record is only a hint gone bad: the server starts, says so, and sets go on.
    assert!(
        store
            .meta_replace(VERSION_CLOCK, &bytes, b"bad")
            .await
            .unwrap()
    );
    store.close().await;
    drop(store);
    let server = restart_saying("is damaged: ignored");
    set("three");
    stop_server(server);
}

/// A mistyped log level (`warning`) or an empty `KEYVAULT_LOG` does not turn the server's log off (the filter
/// would take the word for a target and show nothing else, errors included): the server logs at info, and
/// says why the value was not used.
#[test]
fn a_mistyped_log_level_logs_at_the_default_and_says_so() {
    for (value, warned) in [("warning", true), ("", false)] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut c = command(None);
        c.env("KEYVAULT_LOG", value).args(dev_args(&data));
        // spawn_server waits for the info-level "keyvault listening" line.
        let (server, _, lines) = spawn_server(c);
        let said =
            lines.lock().unwrap().iter().any(|l| {
                l.contains("KEYVAULT_LOG: \"warning\" is not a level") && l.contains("WARN")
            });
        assert_eq!(said, warned, "{value:?}: {:?}", lines.lock().unwrap());
        drop(server);
    }
}

/// A checkpoint that cannot write the database file back (a sync's EIO, which Linux reports once per open file
/// and then forgets) stops the server at once — before its WAL can be started over on top of pages the disk
/// never got — and the next start finds every acknowledged write. The failure is injected by a small
/// LD_PRELOAD library (`tests/fault/fsync_eio.c`) into the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_back_of_the_database_stops_the_server_and_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, trigger) = (dir.path().join("dev"), dir.path().join("fail-syncs"));
    let (mut child, addr, lines) = serve_with_faults(dir.path(), &data, &trigger, &[]);
    let creds = data.join("dev-credentials.json");
    let (_, token, http) = dev_token(&creds, &addr).await;

    // Four writers until the server is gone; every acknowledged (name, value) is kept.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (http, token, addr) = (http.clone(), token.clone(), addr.clone());
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let (name, value) = (format!("w{w}-{}", i % 50), format!("value-{w}-{i}"));
                    let sent = http
                        .put(format!("https://{addr}/secrets/{name}?api-version=7.6"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({ "value": value }))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 200 => {
                            acknowledged.lock().unwrap().push((name, value))
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&trigger, b"").unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running after a failed sync: {:?}",
            std::fs::read_to_string(dir.path().join("fail-syncs.log"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(status.signal(), Some(6), "aborted: {status:?}");
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("could not sync its files"), "{log}");
    assert!(
        std::fs::read_to_string(dir.path().join("fail-syncs.log"))
            .unwrap()
            .contains("EIO")
    );

    // Started again (without the fault): the latest acknowledged value of every name is there.
    let (_again, addr, token, http) = restarted(&data).await;
    let mut latest = std::collections::HashMap::new();
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(acknowledged.len() >= 300);
    for (name, value) in acknowledged {
        latest.insert(name, value);
    }
    for (name, value) in latest {
        let got = secret_json(&http, &addr, &token, &name).await;
        // The latest acknowledged value or a later one a writer sent as the server stopped (made, never
        // acknowledged): never an earlier one.
        let got = got["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {got}"));
        let index = |v: &str| v.rsplit('-').next().unwrap().parse::<u64>().unwrap();
        assert!(index(got) >= index(&value), "{name}: {got} after {value}");
    }
}

/// The dev server of `data` started again (no faults): it, its address, a token and the client that got it.
async fn restarted(data: &std::path::Path) -> (Server, String, String, reqwest::Client) {
    let (server, addr) = start(&dev_args(data));
    let creds = data.join("dev-credentials.json");
    wait_for_dev_credentials(&creds, &addr);
    let (_, token, http) = dev_token(&creds, &addr).await;
    (server, addr, token, http)
}

/// `GET /secrets/{name}`'s JSON body.
async fn secret_json(
    http: &reqwest::Client,
    addr: &str,
    token: &str,
    name: &str,
) -> serde_json::Value {
    http.get(format!("https://{addr}/secrets/{name}?api-version=7.6"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A dev server on `data` with `tests/fault/fsync_eio.c` preloaded (built into `dir`), its faults armed by the
/// file `trigger` (and `env`): the server, its address (credentials written) and its log lines.
fn serve_with_faults(
    dir: &std::path::Path,
    data: &std::path::Path,
    trigger: &std::path::Path,
    env: &[(&str, &str)],
) -> (Server, String, LogLines) {
    let shim = dir.join("fsync_eio.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&shim)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fault/fsync_eio.c"
        ))
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(built.success());
    let mut c = command(None);
    c.args(dev_args(data))
        .env("LD_PRELOAD", &shim)
        .env("KV_FAULT_TRIGGER", trigger)
        .envs(env.iter().copied());
    let (child, addr, lines) = spawn_server(c);
    wait_for_dev_credentials(&data.join("dev-credentials.json"), &addr);
    (child, addr, lines)
}

/// A checkpoint whose writes the kernel refuses at once (here EDQUOT: a quota) loses nothing and is tried
/// again: the server goes on serving reads and sets (a commit writes only the WAL), and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_of_the_database_is_tried_again_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (data, trigger) = (dir.path().join("dev"), dir.path().join("refuse-writes"));
    let (mut child, addr, lines) =
        serve_with_faults(dir.path(), &data, &trigger, &[("KV_FAULT_WRITES", "1")]);
    let creds = data.join("dev-credentials.json");
    let (_, token, http) = dev_token(&creds, &addr).await;
    let set = async |name: &str, value: &str| {
        http.put(format!("https://{addr}/secrets/{name}?api-version=7.6"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "value": value }))
            .send()
            .await
            .unwrap()
            .status()
    };
    std::fs::write(&trigger, b"").unwrap();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(set(&format!("s{}", i % 20), &format!("v{i}")).await, 200);
        i += 1;
    }
    assert!(child.0.try_wait().unwrap().is_none(), "the server stopped");
    let refused = std::fs::read_to_string(dir.path().join("refuse-writes.log")).unwrap_or_default();
    assert!(
        refused.contains("EDQUOT"),
        "no checkpoint write was refused"
    );
    std::fs::remove_file(&trigger).unwrap();
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    assert!(
        !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("could not sync")),
        "{:?}",
        lines.lock().unwrap()
    );
    // Started again: every set is there.
    let (_again, addr, token, http) = restarted(&data).await;
    for n in 0..20.min(i) {
        let got = secret_json(&http, &addr, &token, &format!("s{n}")).await;
        let latest = (0..i).filter(|k| k % 20 == n).max().unwrap();
        assert_eq!(got["value"], format!("v{latest}"), "s{n}");
    }
}

/// A PUT whose body never arrives (its first bytes sent, its length declared): a request held in flight.
fn stuck_put(
    ca: &[u8],
    addr: &str,
    token: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use std::io::Write;
    let mut stuck = tls_connection(ca, addr);
    let head = format!(
        "PUT /secrets/s?api-version=7.6 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"val"
    );
    stuck.write_all(head.as_bytes()).unwrap();
    stuck.flush().unwrap();
    stuck
}

/// A request still in flight when the 10-s drain runs out is given up while the audit log is open: its line
/// is written before the chain's head is logged at shutdown, so the logged head is the file's last line. Its
/// body never came whole, so nothing was changed: 408, not 499 (which says the change may have been made).
#[tokio::test]
async fn the_head_logged_at_shutdown_is_the_last_line_even_after_the_drain_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let mut c = command(None);
    c.args(dev_args(&data));
    let (mut child, addr, lines) = spawn_server(c);
    let creds = data.join("dev-credentials.json");
    wait_for_dev_credentials(&creds, &addr);
    let (ca, token, _http) = dev_token(&creds, &addr).await;
    let stuck = stuck_put(&ca, &addr, &token);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    drop(stuck);
    let logged = lines.lock().unwrap().clone();
    let head_line = logged
        .iter()
        .find(|l| l.contains("chain head at shutdown"))
        .unwrap_or_else(|| panic!("{logged:?}"));
    let logged_seq: u64 = log_field(head_line, " seq=").unwrap().parse().unwrap();
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["seq"], logged_seq, "{audit}");
    assert_eq!(last["status"], 408, "{audit}");
    assert_eq!(last["operation"], "SecretSet", "{audit}");
    assert!(
        logged
            .iter()
            .any(|l| l.contains("before its body was whole")),
        "{logged:?}"
    );
}
