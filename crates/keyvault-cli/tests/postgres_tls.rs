//! The real `keyvault serve` and `keyvault rekey` over TLS to a real PostgreSQL (a private cluster with
//! `ssl = on`, a certificate from a CA made here, and `hostssl`-only access for the vault's role): secrets
//! written and read through the server cross TLS only, and a node given another CA does not start, saying why
//! without showing the password.
//!
//! Skipped (with a message) only where no PostgreSQL binaries exist.

mod cli_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{command, run_with, spawn_server};
use keyvault_server::store::pgtest::{self, TestCa};

const PASSWORD: &str = "CANARY-tls-pw-9931";

/// The exit status and stderr of a `serve` that must fail to start (killed, and the test failed, after 30 s).
fn failed_start(mut c: Command) -> (std::process::ExitStatus, String) {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server started (or hung) with a CA that did not sign the database's certificate"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_rekey_over_verified_tls() {
    let Some(pg) = pgtest::start_or_skip("postgres_tls::serve_and_rekey_over_verified_tls") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    pg.query_text(&format!("CREATE ROLE kv LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    pg.create_database_with("vault", "OWNER kv").await.unwrap();
    let ca = TestCa::new("keyvault test CA");
    let (cert, key) = ca.issue("localhost", &["localhost", "127.0.0.1"]);
    pg.enable_tls(
        &cert,
        &key,
        &ca.pem(),
        "host all postgres 127.0.0.1/32 trust\nhostssl all kv 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    std::fs::write(file("ca.pem"), ca.pem()).unwrap();
    std::fs::write(file("other.pem"), TestCa::new("another CA").pem()).unwrap();
    let url = |root: &str| {
        format!(
            "postgres://kv:{PASSWORD}@127.0.0.1:{}/vault?sslmode=verify-full&sslrootcert={}",
            pg.port(),
            file(root)
        )
    };
    let data = file("data");

    // The node starts over verified TLS and says so.
    let mut c = command(None);
    c.args([
        "serve",
        "--dev",
        "--data-dir",
        &data,
        "--addr",
        "127.0.0.1:0",
    ])
    .env("KEYVAULT_STORE", url("ca.pem"));
    let (server, addr, lines) = spawn_server(c);
    let said = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("PostgreSQL connections"))
        .cloned()
        .unwrap_or_default();
    assert!(
        said.contains("sslmode=\"verify-full\"")
            && said.contains("tls=\"on\"")
            && said.contains("verified=\"chain and host name\""),
        "{said}"
    );

    // A secret written and read through the node.
    let creds = format!("{data}/dev-credentials.json");
    let started = Instant::now();
    while !std::fs::read_to_string(&creds).is_ok_and(|c| c.contains(&addr)) {
        assert!(started.elapsed() < Duration::from_secs(10), "no {creds}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut args = args.to_vec();
        args.extend(["--dev-credentials", &creds]);
        run_with(command(None), &args, stdin).ok()
    };
    cli(
        &["secret", "set", "over-tls", "--value-stdin"],
        Some(b"sealed, then encrypted on the wire"),
    );
    let shown = cli(&["secret", "show", "over-tls", "-o", "value"], None);
    assert_eq!(
        shown.stdout.trim_end(),
        "sealed, then encrypted on the wire"
    );

    // Every session of the vault's role uses TLS (pg_hba.conf allows no other), and there are some.
    let sessions = pg
        .query_text(
            "SELECT s.ssl::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'kv'",
        )
        .await
        .unwrap();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|s| s.as_deref() == Some("true")),
        "{sessions:?}"
    );

    // keyvault rekey takes the same URL, TLS included (a dry run, while the node serves).
    let mut c = command(None);
    c.env("KEYVAULT_STORE", url("ca.pem"))
        .env("KEYVAULT_LOG", "info");
    let dry = run_with(
        c,
        &["rekey", "--data-dir", &data, "--dry-run", "-o", "json"],
        None,
    )
    .ok();
    assert_eq!(dry.json()["dry_run"], true, "{}", dry.stdout);
    // Its start-up says what protects its connection, and (even at INFO) no notice from the migration's
    // `CREATE TABLE IF NOT EXISTS` of a schema that exists.
    assert!(
        dry.stderr.contains("PostgreSQL connections") && !dry.stderr.contains("NOTICE"),
        "{}",
        dry.stderr
    );
    drop(server);

    // Another CA: the node does not start, says why, and shows no password.
    for tool in ["serve", "rekey"] {
        let mut c = command(None);
        c.args([tool, "--data-dir", &data])
            .env("KEYVAULT_STORE", url("other.pem"));
        if tool == "serve" {
            c.args(["--dev", "--addr", "127.0.0.1:0"]);
        }
        let (status, stderr) = failed_start(c);
        assert!(!status.success(), "{tool}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the server's certificate is not signed by a CA in sslrootcert {}",
                file("other.pem")
            )) && stderr.contains("(sslmode=verify-full)"),
            "{tool}: {stderr}"
        );
        assert!(!stderr.contains(PASSWORD), "{tool}: {stderr}");
    }
}

/// `keyvault rekey` with a store URL whose settings or TLS files are wrong exits 2 (bad configuration), as
/// `serve` does, before connecting (no database needed), and shows no password.
#[test]
fn rekey_setting_errors_are_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let missing = dir.path().join("missing-ca.pem").display().to_string();
    for (query, says) in [
        ("sslmode=bogus", "sslmode must be"),
        (
            &format!("sslmode=verify-full&sslrootcert={missing}") as &str,
            "cannot read it",
        ),
        ("sslmode=verify-ca", "verify-ca needs sslrootcert=PATH"),
        ("sslrootcrt=/x", "unknown option `sslrootcrt`"),
    ] {
        let mut c = command(None);
        c.args(["rekey", "--data-dir", &data]).env(
            "KEYVAULT_STORE",
            format!("postgres://kv:{PASSWORD}@127.0.0.1:1/vault?{query}"),
        );
        let (status, stderr) = failed_start(c);
        assert_eq!(status.code(), Some(2), "{query}: {stderr}");
        assert!(
            stderr.contains(says) && !stderr.contains(PASSWORD),
            "{query}: {stderr}"
        );
    }
}
