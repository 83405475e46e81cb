//! The connection-string settings (no database), and TLS against a real PostgreSQL (a private cluster with
//! `ssl = on` and certificates made here): each `sslmode`, a wrong CA, a wrong host name, a server without
//! TLS, `hostssl`-only access without TLS, client certificates and SCRAM channel binding. One cluster serves
//! every case. Skipped (with a message) only where no PostgreSQL binaries exist.

use super::*;
use crate::store::pgtest::{self, PgCluster, TestCa};
use crate::store::postgres::PostgresStore;
use crate::store::{SecretStore, StoreError, VersionRow};

fn settings_of(conn: &str) -> TlsSettings {
    split(conn).unwrap().1
}

#[test]
fn url_settings_are_taken_out_and_the_rest_is_left_as_written() {
    let (rest, s) = split(
        "postgres://kv:p%40ss?w0rd@db.example:5433/vault?application_name=a%20b&sslmode=verify-full\
         &sslrootcert=%2Fetc%2Fkv%2Fca.pem&connect_timeout=3&sslcert=/c.pem&sslkey=/k.pem&sslsni=0",
    )
    .unwrap();
    assert_eq!(
        rest,
        "postgres://kv:p%40ss?w0rd@db.example:5433/vault?application_name=a%20b&connect_timeout=3"
    );
    assert_eq!(
        s,
        TlsSettings {
            mode: SslMode::VerifyFull,
            mode_given: true,
            root: Some(Roots::File("/etc/kv/ca.pem".into())),
            client: Some(("/c.pem".into(), "/k.pem".into())),
            sni: false,
        }
    );
    // tokio-postgres reads what is left.
    let config: tokio_postgres::Config = rest.parse().unwrap();
    assert_eq!(config.get_password(), Some(&b"p@ss?w0rd"[..]));
    assert_eq!(config.get_application_name(), Some("a b"));

    // Nothing but TLS settings: no '?' left; nothing at all: the URL as given.
    let (rest, s) = split("postgresql://h/db?sslmode=require").unwrap();
    assert_eq!(
        (rest.as_str(), s.mode),
        ("postgresql://h/db", SslMode::Require)
    );
    let (rest, s) = split("postgres://u:pw@h/db").unwrap();
    assert_eq!(rest, "postgres://u:pw@h/db");
    assert_eq!(
        (s.mode, s.mode_given, s.root, s.client, s.sni),
        (SslMode::Prefer, false, None, None, true)
    );
    // The last of a repeated key wins, as in libpq.
    assert_eq!(
        settings_of("postgres://h/db?sslmode=disable&sslmode=verify-full").mode,
        SslMode::VerifyFull
    );
}

#[test]
fn key_value_settings_are_taken_out_and_the_rest_is_left_as_written() {
    let e = split(
        "host=db.example  sslmode = 'verify-ca' password='it''s' sslrootcert='/etc/my ca.pem' dbname=kv",
    )
    .unwrap_err();
    // A doubled quote is not libpq's escape (a backslash is): this string does not parse, and is refused
    // without repeating any of it.
    assert!(
        e.contains("not followed by '='") && !e.contains("'s'"),
        "{e}"
    );

    let (rest, s) = split(
        r"host=db.example  sslmode = 'verify-ca' password='it\'s' sslrootcert='/etc/my ca.pem' dbname=kv",
    )
    .unwrap();
    assert_eq!(rest, r"host=db.example   password='it\'s'  dbname=kv");
    assert_eq!(s.mode, SslMode::VerifyCa);
    assert_eq!(s.root, Some(Roots::File("/etc/my ca.pem".into())));
    let config: tokio_postgres::Config = rest.parse().unwrap();
    assert_eq!(config.get_password(), Some(&b"it's"[..]));
    assert_eq!(config.get_dbname(), Some("kv"));
}

#[test]
fn key_value_strings_are_read_as_tokio_postgres_reads_them_or_refused() {
    // Whitespace is any Unicode whitespace (a no-break space, a vertical tab), as tokio-postgres has it:
    // the sslmode it would read is the one taken out.
    for sep in ["\u{a0}", "\u{b}", "\u{2003}", "\t\n"] {
        let conn = format!("host=db.example{sep}sslmode=require{sep}dbname=kv");
        let (rest, s) = split(&conn).unwrap();
        assert_eq!(s.mode, SslMode::Require, "{sep:?}");
        assert!(!rest.contains("sslmode"), "{rest:?}");
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_dbname(), Some("kv"));
    }
    // A trailing backslash ends a bare value (tokio-postgres drops it): read, not passed on whole.
    let (rest, s) =
        split(r"host=h sslmode=verify-ca sslrootcert=/ca.pem password=SECRETPW\").unwrap();
    assert_eq!(s.mode, SslMode::VerifyCa);
    let config: tokio_postgres::Config = rest.parse().unwrap();
    assert_eq!(config.get_password(), Some(&b"SECRETPW"[..]));
    // What does not parse is refused, repeating no value.
    for conn in [
        "host=h password=SECRET PW sslmode=require",
        "host=h password='SECRETPW sslmode=require",
        "host=h sslmode=",
        "host=h =SECRETPW",
    ] {
        let e = split(conn).unwrap_err();
        assert!(
            e.starts_with("a key=value connection string") && !e.contains("SECRET"),
            "{conn}: {e}"
        );
    }
}

#[test]
fn an_at_sign_outside_the_user_information_is_refused() {
    // The auditor's URL: tokio-postgres would read everything before the '@' as credentials and drop the
    // TLS settings with it.
    for url in [
        "postgres://localhost:55432/vault?sslmode=verify-full&sslrootcert=/x&application_name=kv@localhost:55432",
        "postgres://h/db?user=kv@corp&sslmode=require",
        "postgres://h/db?SSLMODE=verify-full@h",
        "postgres://h/db?a=1&b=2@h",
        // A password with an unencoded '@': it would end at the first one, the host name begin with the rest.
        "postgres://kv:S3cr3t@PW@h/db",
        "postgres://kv:S3cr3t@PW-canary@127.0.0.1:55431/vault",
        // The same with a '?' in the rest of the password: its pieces would read as a host and a query (a60-3).
        "postgres://kv:S3cr3t@PW10?PW11=1@h/db",
        "postgres://kv:S3cr3t@PW12?PW13=%ff@h/db",
        "postgres://kv:S3cr3t@PW14?sslmode=x&PW15=1@h/db",
        // Keys as tokio-postgres reads them: in their case, and up to the '=' (a64-2).
        "postgres://kv:S3cr3t@PW16?Application_Name=1@h/db",
        "postgres://kv:S3cr3t@PW17?PW18&user=x@h/db",
        // A '/' instead of the '?': the rest reads as a host and a database name (a64-1).
        "postgres://kv:S3cr3t@PWhost/PWdb-canary@127.0.0.1:55431/vault",
        "postgres://kv:S3cr3t@PW19/PW20@h",
        // An '@' in the database name is refused the same way (write it %40), with or without credentials
        // before it (a65-2).
        "postgres://kv:pw@h/d@b",
        "postgres://localhost/my@db",
        "postgres://h/d@b?sslmode=verify-full",
        "postgres:///d@b",
        "postgres://[::1]/my@db",
        "postgres://[::1]:5432/my@db",
    ] {
        let e = split(url).unwrap_err();
        assert!(
            e.contains("Percent-encode '@' as %40")
                && !e.contains("S3cr3t")
                && !e.contains("PW1")
                && !e.contains("canary")
                && !e.contains("vault"),
            "{url}: {e}"
        );
    }
    // Kept: unencoded '/', '?' or '=' in a password (tokio-postgres reads them as written), an '@' in the
    // query after the credentials, and an encoded one.
    for (url, password) in [
        ("postgres://u:pa/ss@h/db?sslmode=require", &b"pa/ss"[..]),
        ("postgres://u:pa?ss@h/db?sslmode=require", b"pa?ss"),
        ("postgres://u:pa?s=s@h/db?sslmode=require", b"pa?s=s"),
        (
            "postgres://u:S3cr3t%40PW@h/db?sslmode=require",
            b"S3cr3t@PW",
        ),
    ] {
        let (rest, s) = split(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(s.mode, SslMode::Require, "{url}");
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(password), "{url}");
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("h".into())],
            "{url}"
        );
    }
    for url in [
        "postgres://u:p@h/db?application_name=kv@h&sslmode=verify-full",
        "postgres://u:p@h?application_name=kv@h&sslmode=verify-full",
    ] {
        let (rest, s) = split(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(s.mode, SslMode::VerifyFull);
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_application_name(), Some("kv@h"));
    }
}

#[test]
fn connection_string_errors_say_why_and_repeat_no_value() {
    let prepared = |url: &str| crate::store::postgres::prepare(url);
    let e = prepared("postgres://kv:SECRETPW@h/db?sslrootcrt=/x").unwrap_err();
    assert!(
        e.contains("invalid connection string: unknown option `sslrootcrt`")
            && !e.contains("SECRETPW"),
        "{e}"
    );
    // A key=value string whose password has a space and no quotes: the rest of the password reads as another
    // option, which is refused without being named.
    let e = prepared("host=h user=kv password=SECRET PWPART=x dbname=db").unwrap_err();
    assert!(
        e.contains("an unknown option (not named")
            && !e.contains("PWPART")
            && !e.contains("SECRET"),
        "{e}"
    );
    // Without a password, or after a quoted one, or not right after it, the unknown option is named (a60-4).
    for conn in [
        "host=h user=kv sslrootcrt=/x",
        "host=h password='quoted ok' sslrootcrt=/x",
        "host=h password=p user=kv sslrootcrt=/x",
    ] {
        let e = prepared(conn).unwrap_err();
        assert!(e.contains("unknown option `sslrootcrt`"), "{conn}: {e}");
    }
    // The splitter's own errors do not name a key that may be a piece of the password either (a60-2).
    for conn in [
        "host=h password=SECRET PIECE4='x",
        "host=h password=SECRET PIECE5=",
    ] {
        let e = prepared(conn).unwrap_err();
        assert!(!e.contains("PIECE") && !e.contains("SECRET"), "{conn}: {e}");
    }
    let e = prepared("postgres://kv:SECRETPW@h/db?port=SECRETPW").unwrap_err();
    assert!(
        e.contains("invalid value for option `port`") && !e.contains("SECRETPW"),
        "{e}"
    );
    let e = prepared("postgres://kv:SECRETPW@h/db?channel_binding=SECRETPW").unwrap_err();
    assert!(
        e.contains("`channel_binding`") && !e.contains("SECRETPW"),
        "{e}"
    );

    // An encrypted client key: said so.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("unit CA");
    let (cert, _) = ca.issue("kv", &[]);
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(
        dir.path().join("k.pem"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = prepared(&format!(
        "postgres://h/db?sslcert={0}/c.pem&sslkey={0}/k.pem",
        dir.path().display()
    ))
    .unwrap_err();
    assert!(
        e.contains("the key is encrypted, and encrypted keys are not supported"),
        "{e}"
    );
}

#[test]
fn hostaddr_alone_names_the_tls_host_except_under_verify_full() {
    let prepared = |url: &str| crate::store::postgres::prepare(url);
    let c =
        prepared("postgres://kv@/vault?hostaddr=127.0.0.1,::1&port=5433&sslmode=require").unwrap();
    assert_eq!(
        c.config.get_hosts(),
        &[
            tokio_postgres::config::Host::Tcp("127.0.0.1".into()),
            tokio_postgres::config::Host::Tcp("::1".into())
        ]
    );
    assert_eq!(
        crate::store::postgres::describe_target(&c.config),
        "127.0.0.1:5433,::1:5433/vault"
    );
    let e = prepared("postgres://kv@/vault?hostaddr=127.0.0.1&sslmode=verify-full").unwrap_err();
    assert!(
        e.contains("set host= to the name in the server's certificate"),
        "{e}"
    );
    // With host= as well, nothing changes.
    let c = prepared("postgres://kv@db.example/vault?hostaddr=127.0.0.1").unwrap();
    assert_eq!(
        c.config.get_hosts(),
        &[tokio_postgres::config::Host::Tcp("db.example".into())]
    );
}

#[test]
fn targets_and_modes_in_messages() {
    let prepared = |url: &str| crate::store::postgres::prepare(url).unwrap();
    // Several hosts: every one (a connection may go to any), each with its port.
    let c = prepared("postgres://kv@a.example:5433,b.example:5434/vault");
    assert_eq!(
        crate::store::postgres::describe_target(&c.config),
        "a.example:5433,b.example:5434/vault"
    );
    // A host name with an '@' (the tail of a password tokio-postgres cut): only what follows the last '@'.
    let c = prepared("host=PW-canary@127.0.0.1 port=55431 dbname=vault");
    let target = crate::store::postgres::describe_target(&c.config);
    assert_eq!(target, "127.0.0.1:55431/vault");
    // A Unix-domain socket: TLS does not apply, said so rather than "disable".
    let c = prepared("postgres://kv@/vault?host=/run/postgresql&sslmode=verify-full");
    assert_eq!(
        c.sslmode_label(),
        "sslmode=verify-full, not used: TLS does not apply to a Unix-domain socket"
    );
    assert!(c.tls.is_none());
    let c = prepared("postgres://kv@h/vault?sslmode=require");
    assert_eq!(c.sslmode_label(), "sslmode=require");
}

#[test]
fn unverified_tls_without_required_channel_binding_is_warned_about_off_this_machine() {
    let warns = |conn: &str, verifies: &str| {
        let c = crate::store::postgres::prepare(conn).unwrap();
        crate::store::postgres::unverified_tls_warning(&c.config, verifies).is_some()
    };
    assert!(warns(
        "postgres://kv@db.example/vault?sslmode=require",
        "nothing"
    ));
    assert!(warns("postgres://kv@db.example/vault", "nothing"));
    assert!(warns("postgres://kv@localhost,db.example/vault", "nothing"));
    assert!(warns("postgres://kv@/vault?hostaddr=10.1.2.3", "nothing"));
    // Not: channel binding required, a verified chain, or this machine.
    assert!(!warns(
        "postgres://kv@db.example/vault?sslmode=require&channel_binding=require",
        "nothing"
    ));
    assert!(!warns("postgres://kv@db.example/vault", "chain"));
    assert!(!warns(
        "postgres://kv@db.example/vault",
        "chain and host name"
    ));
    assert!(!warns(
        "postgres://kv@localhost/vault?sslmode=require",
        "nothing"
    ));
    assert!(!warns("postgres://kv@127.0.0.1,[::1]/vault", "nothing"));
    assert!(!warns(
        "postgres://kv@db.example/vault?hostaddr=127.0.0.1",
        "nothing"
    ));
    // The warning names both ways out.
    let c = crate::store::postgres::prepare("postgres://kv@db.example/vault").unwrap();
    let text = crate::store::postgres::unverified_tls_warning(&c.config, "nothing").unwrap();
    assert!(
        text.contains("sslmode=verify-full and sslrootcert=PATH")
            && text.contains("channel_binding=require"),
        "{text}"
    );
}

#[test]
fn settings_are_checked_and_errors_repeat_no_value() {
    let err = |conn: &str| split(conn).unwrap_err();
    let e = err("postgres://u:SECRETPW@h/db?sslmode=SECRETPW");
    assert!(
        e.contains("sslmode must be") && !e.contains("SECRETPW"),
        "{e}"
    );
    assert!(err("postgres://h/db?sslmode=allow").contains("use prefer or disable"));
    let e = err("postgres://h/db?sslmode=verify-ca");
    assert!(e.contains("verify-ca needs sslrootcert=PATH"), "{e}");
    let e = err("postgres://h/db?sslmode=verify-ca&sslrootcert=system");
    assert!(e.contains("weaker than sslrootcert=system"), "{e}");
    let e = err("postgres://h/db?sslmode=require&sslrootcert=system");
    assert!(e.contains("sslmode=require is weaker"), "{e}");
    let e = err("postgres://h/db?sslcert=/c.pem");
    assert!(e.contains("sslcert and sslkey go together"), "{e}");
    let e = err("postgres://h/db?sslrootcert=");
    assert!(e.contains("sslrootcert is empty"), "{e}");
    let e = err("postgres://h/db?sslsni=SECRETPW");
    assert!(
        e.contains("sslsni must be 0 or 1") && !e.contains("SECRETPW"),
        "{e}"
    );
    let e = err("postgres://h/db?sslcrl=/crl.pem");
    assert!(e.contains("sslcrl is not supported"), "{e}");
    let e = err("host=h sslpassword=SECRETPW");
    assert!(
        e.contains("sslpassword is not supported") && !e.contains("SECRETPW"),
        "{e}"
    );

    // sslrootcert=system: verify-full by default; verify-full without roots: the system's.
    let s = settings_of("postgres://h/db?sslrootcert=system");
    assert_eq!((s.mode, s.root), (SslMode::VerifyFull, Some(Roots::System)));
    let s = settings_of("postgres://h/db?sslmode=verify-full");
    assert_eq!((s.mode, s.root), (SslMode::VerifyFull, None));
}

#[test]
fn certificate_files_that_cannot_be_used_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let new = |conn: &str| PgTls::new(&settings_of(conn)).map(|t| t.map(|t| t.verifies()));
    let missing = dir.path().join("missing.pem");
    let e = new(&format!(
        "postgres://h/db?sslmode=verify-full&sslrootcert={}",
        missing.display()
    ))
    .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "sslrootcert {}: cannot read it",
            missing.display()
        )),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = new(&format!(
        "postgres://h/db?sslmode=require&sslrootcert={}",
        empty.display()
    ))
    .unwrap_err();
    assert!(e.contains("no PEM CERTIFICATE block found"), "{e}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = new(&format!(
        "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
        garbage.display()
    ))
    .unwrap_err();
    assert!(e.contains("certificate 1 is not usable"), "{e}");

    // A client key that is not the certificate's.
    let ca = TestCa::new("unit CA");
    let (cert, _) = ca.issue("kv", &[]);
    let (_, other_key) = ca.issue("other", &[]);
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), other_key).unwrap();
    let e = new(&format!(
        "postgres://h/db?sslcert={0}/c.pem&sslkey={0}/k.pem",
        dir.path().display()
    ))
    .unwrap_err();
    assert!(
        e.starts_with("sslcert/sslkey:") && e.contains("does not match"),
        "{e}"
    );

    // What each mode verifies; disable makes no connector.
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let root = format!("sslrootcert={}/ca.pem", dir.path().display());
    let cases = [
        ("sslmode=disable", None),
        ("sslmode=prefer", Some("nothing")),
        ("sslmode=require", Some("nothing")),
        (&format!("sslmode=require&{root}") as &str, Some("chain")),
        (&format!("sslmode=verify-ca&{root}"), Some("chain")),
        (
            &format!("sslmode=verify-full&{root}"),
            Some("chain and host name"),
        ),
    ];
    for (query, want) in cases {
        assert_eq!(
            new(&format!("postgres://h/db?{query}")).unwrap(),
            want,
            "{query}"
        );
    }
}

#[test]
fn the_channel_binding_hash_follows_the_signature_algorithm() {
    let ca = TestCa::new("unit CA");
    let (pem, _) = ca.issue("db", &["db.example"]);
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    // ECDSA with SHA-256: SHA-256 of the whole certificate.
    assert_eq!(
        tls_server_end_point(&der).unwrap(),
        ring::digest::digest(&ring::digest::SHA256, &der)
            .as_ref()
            .to_vec()
    );
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["db.example".to_string()])
        .unwrap()
        .self_signed(&p384)
        .unwrap();
    assert_eq!(
        tls_server_end_point(cert.der()).unwrap(),
        ring::digest::digest(&ring::digest::SHA384, cert.der())
            .as_ref()
            .to_vec()
    );
    // Ed25519 has no hash of its own: no channel binding (PostgreSQL has none for it either).
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["db.example".to_string()])
        .unwrap()
        .self_signed(&ed)
        .unwrap();
    assert_eq!(tls_server_end_point(cert.der()), None);
    assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01\x00"), None);
}

// ---------------------------------------------------------------------------------------------------------
// Against a real server

const PASSWORD: &str = "CANARY-pw-4711";

struct Setup {
    pg: PgCluster,
    dir: tempfile::TempDir,
}

impl Setup {
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The URL of database `db` as `kv` (password authentication), through `host` (`hostaddr` is
    /// 127.0.0.1 either way), with `query` added.
    fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!(
            "postgres://kv:{PASSWORD}@{host}:{}/{db}?hostaddr=127.0.0.1&{query}",
            self.pg.port()
        )
    }

    /// Sessions of `user` (other than the asking one), by whether they use TLS.
    async fn sessions(&self, user: &str) -> (usize, usize) {
        let rows = self
            .pg
            .query_text(&format!(
                "SELECT s.ssl::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.usename = '{user}'"
            ))
            .await
            .unwrap();
        let on = rows.iter().filter(|r| r.as_deref() == Some("true")).count();
        (on, rows.len() - on)
    }
}

fn row(name: &str) -> VersionRow {
    VersionRow {
        name: name.to_string(),
        version: format!("{:032x}", name.len()),
        sealed: b"sealed bytes".to_vec(),
        content_type: None,
        tags: None,
        enabled: true,
        nbf: None,
        exp: None,
        created: 1,
        updated: 1,
    }
}

/// A write and a read through the store, and the TLS state of the store's own session.
async fn write_and_read(store: &PostgresStore, name: &str) -> bool {
    store.put_version("v", row(name)).await.unwrap();
    let got = store.get_version("v", name, None).await.unwrap().unwrap();
    assert_eq!(got.sealed, b"sealed bytes");
    store
        .run(async |c| {
            let row = c
                .client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?;
            Ok(row.get::<_, bool>(0))
        })
        .await
        .unwrap()
}

/// The start-up error for `url`, which must not show the password.
async fn refused(url: &str) -> String {
    let e = match PostgresStore::open(url).await {
        Ok(_) => panic!("connected with {}", url.replace(PASSWORD, "***")),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains(PASSWORD), "the password shows: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_real_postgresql() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::tls::tls_to_a_real_postgresql") else {
        return;
    };
    let s = Setup {
        pg,
        dir: tempfile::tempdir().unwrap(),
    };
    s.pg.query_text(&format!("CREATE ROLE kv LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    s.pg.query_text("CREATE ROLE kvcert LOGIN").await.unwrap();
    s.pg.create_database_with("tls", "OWNER kv").await.unwrap();
    s.pg.create_database_with("certs", "OWNER kvcert")
        .await
        .unwrap();

    // Before TLS is on: require is refused, prefer (the default) connects without it.
    let e = refused(&s.url("127.0.0.1", "tls", "sslmode=require")).await;
    assert!(
        e.contains("(sslmode=require)") && e.contains("server does not support TLS"),
        "{e}"
    );
    let store = PostgresStore::open(&s.url("127.0.0.1", "tls", "connect_timeout=5"))
        .await
        .unwrap();
    assert!(!write_and_read(&store, "plain").await, "no TLS yet");
    store.close().await;
    drop(store);

    // TLS on: the server's certificate names 127.0.0.1 only; kv must use TLS, kvcert a client certificate.
    let ca = TestCa::new("keyvault test CA");
    let other = TestCa::new("another CA");
    let (cert, key) = ca.issue("127.0.0.1", &["127.0.0.1"]);
    std::fs::write(s.file("ca.pem"), ca.pem()).unwrap();
    std::fs::write(s.file("both.pem"), format!("{}{}", other.pem(), ca.pem())).unwrap();
    std::fs::write(s.file("other.pem"), other.pem()).unwrap();
    let (client_cert, client_key) = ca.issue("kvcert", &[]);
    std::fs::write(s.file("client.pem"), client_cert).unwrap();
    std::fs::write(s.file("client-key.pem"), client_key).unwrap();
    let (stray_cert, stray_key) = other.issue("kvcert", &[]);
    std::fs::write(s.file("stray.pem"), stray_cert).unwrap();
    std::fs::write(s.file("stray-key.pem"), stray_key).unwrap();
    s.pg.enable_tls(
        &cert,
        &key,
        &ca.pem(),
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         hostssl all kv 127.0.0.1/32 scram-sha-256\n\
         hostssl all kvcert 127.0.0.1/32 cert\n",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.pg.log()));
    let ca_file = s.file("ca.pem");

    // verify-full: the chain and the name (an IP address SAN) verify; a secret is written and read over TLS,
    // and SCRAM used channel binding (required here, so it fails without it).
    let url = s.url(
        "127.0.0.1",
        "tls",
        &format!("sslmode=verify-full&sslrootcert={ca_file}&channel_binding=require"),
    );
    let store = PostgresStore::open(&url).await.unwrap();
    assert!(write_and_read(&store, "full").await, "TLS in use");
    assert!(
        format!("{store:?}").contains("verify-full") && !format!("{store:?}").contains(PASSWORD)
    );
    let (on, off) = s.sessions("kv").await;
    assert!(
        on >= 1 && off == 0,
        "kv sessions: {on} with TLS, {off} without"
    );
    store.close().await;
    drop(store);
    // A file of several CAs: the one that signed is among them.
    let store = PostgresStore::open(&s.url(
        "127.0.0.1",
        "tls",
        &format!("sslmode=verify-full&sslrootcert={}", s.file("both.pem")),
    ))
    .await
    .unwrap();
    assert!(write_and_read(&store, "bundle").await);
    store.close().await;

    // Another CA: refused, under verify-full, verify-ca, and require with a root file (as libpq).
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let e = refused(&s.url(
            "127.0.0.1",
            "tls",
            &format!("sslmode={mode}&sslrootcert={}", s.file("other.pem")),
        ))
        .await;
        assert!(
            e.contains(&format!(
                "not signed by a CA in sslrootcert {}",
                s.file("other.pem")
            )) && e.contains(&format!("sslmode={mode}")),
            "{mode}: {e}"
        );
    }

    // Another host name (connecting to 127.0.0.1 all the same): refused under verify-full only.
    let e = refused(&s.url(
        "db.example.test",
        "tls",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    ))
    .await;
    assert!(
        e.contains("not valid for the host name 'db.example.test'"),
        "{e}"
    );
    let store = PostgresStore::open(&s.url(
        "db.example.test",
        "tls",
        &format!("sslmode=verify-ca&sslrootcert={ca_file}"),
    ))
    .await
    .unwrap();
    assert!(write_and_read(&store, "ca-only").await);
    store.close().await;

    // require (and the default, prefer) without roots: encrypted, not verified.
    for query in ["sslmode=require", "connect_timeout=5"] {
        let store = PostgresStore::open(&s.url("db.example.test", "tls", query))
            .await
            .unwrap();
        assert!(write_and_read(&store, query).await, "{query}: TLS in use");
        store.close().await;
    }

    // Only hostaddr (no host): the address names the TLS connection (the default prefer, and require).
    for query in ["connect_timeout=5", "sslmode=require"] {
        let url = format!(
            "postgres://kv:{PASSWORD}@/tls?hostaddr=127.0.0.1&port={}&{query}",
            s.pg.port()
        );
        let store = PostgresStore::open(&url)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert!(
            write_and_read(&store, &format!("by-address, {query}")).await,
            "{query}: TLS in use"
        );
        store.close().await;
    }

    // disable, where pg_hba.conf lets kv in over TLS only: refused, saying so.
    let e = refused(&s.url("127.0.0.1", "tls", "sslmode=disable")).await;
    assert!(
        e.contains("(sslmode=disable)")
            && e.contains("no pg_hba.conf entry")
            && e.contains("no encryption"),
        "{e}"
    );
    // A wrong password over TLS is the server's refusal, and does not show either password.
    let e = refused(
        &s.url("127.0.0.1", "tls", "sslmode=require")
            .replace(PASSWORD, "wrong-pw-0815"),
    )
    .await;
    assert!(
        e.contains("password authentication failed") && !e.contains("wrong-pw-0815"),
        "{e}"
    );

    // Client certificates: kvcert gets in with the CA's certificate, not without one or with a stray one.
    let cert_url = |files: &str| {
        format!(
            "postgres://kvcert@127.0.0.1:{}/certs?sslmode=verify-full&sslrootcert={ca_file}{files}",
            s.pg.port()
        )
    };
    let store = PostgresStore::open(&cert_url(&format!(
        "&sslcert={}&sslkey={}",
        s.file("client.pem"),
        s.file("client-key.pem")
    )))
    .await
    .unwrap();
    assert!(write_and_read(&store, "by-certificate").await);
    store.close().await;
    let e = refused(&cert_url("")).await;
    assert!(e.contains("certificate"), "{e}");
    let e = refused(&cert_url(&format!(
        "&sslcert={}&sslkey={}",
        s.file("stray.pem"),
        s.file("stray-key.pem")
    )))
    .await;
    assert!(e.contains("cannot connect to PostgreSQL"), "{e}");

    // A server certificate signed with Ed25519 has no tls-server-end-point hash: channel_binding=require
    // cannot be met, and the connection fails saying so (not that the server skipped channel binding).
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&ed)
        .unwrap();
    // OpenSSL (PostgreSQL 15) does not load ring's PKCS#8 v2 Ed25519 key: the same seed as PKCS#8 v1.
    let v2 = ed.serialize_der();
    // SEQUENCE, version 1, the Ed25519 algorithm, OCTET STRING { OCTET STRING seed }, then the public key.
    assert_eq!(
        &v2[2..16],
        b"\x02\x01\x01\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20"
    );
    let mut v1 = b"\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20".to_vec();
    v1.extend_from_slice(&v2[16..48]);
    let ed_key = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &v1)
    );
    s.pg.enable_tls(
        &ed_cert.pem(),
        &ed_key,
        &ca.pem(),
        "host all postgres 127.0.0.1/32 trust\nhostssl all kv 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.pg.log()));
    let e = refused(&s.url(
        "127.0.0.1",
        "tls",
        "sslmode=require&channel_binding=require",
    ))
    .await;
    assert!(
        e.contains("channel_binding=require cannot be met")
            && e.contains("no tls-server-end-point hash"),
        "{e}"
    );
    // Without it, SCRAM runs without channel binding (what the start-up warning is about).
    let store = PostgresStore::open(&s.url("127.0.0.1", "tls", "sslmode=require"))
        .await
        .unwrap();
    assert!(write_and_read(&store, "ed25519-signed server certificate").await);
    store.close().await;
}

/// The store's errors for the cases above are `Unavailable` (a connection failure) or `Internal` (a setting).
#[test]
fn setting_errors_are_internal() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(PostgresStore::open(&format!(
            "postgres://kv:{PASSWORD}@127.0.0.1:1/db?sslmode=verify-ca"
        )))
        .unwrap_err();
    assert!(matches!(e, StoreError::Internal(_)), "{e}");
    assert!(
        e.to_string().starts_with(
            "storage failure: invalid PostgreSQL connection string: sslmode=verify-ca needs"
        ) && !e.to_string().contains(PASSWORD),
        "{e}"
    );
}
