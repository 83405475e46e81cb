//! Test support: a private, throwaway PostgreSQL cluster on 127.0.0.1 (`initdb` + `pg_ctl` in a temporary
//! directory, a free port, trust authentication for the `postgres` user). Not part of the API.
//!
//! Binaries are looked up in `$KEYVAULT_PG_BIN`, then on `PATH`, then in `/usr/lib/postgresql/<ver>/bin`
//! (Debian's layout; the newest version wins). PostgreSQL refuses to run as root, so when the tests run as
//! root the cluster runs as an unprivileged user (`$KEYVAULT_PG_USER`, default `nobody`) through `runuser`,
//! in a directory handed over to that user.
//!
//! The cluster is stopped (`-m immediate`) and its directory removed when the [`PgCluster`] is dropped.
//!
//! [`PgCluster::enable_tls`] turns TLS on with a certificate from a [`TestCa`] and replaces `pg_hba.conf`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where `initdb` and `pg_ctl` live, if anywhere.
pub fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let given = std::env::var_os("KEYVAULT_PG_BIN")
        .map(PathBuf::from)
        .filter(|d| has_both(d));
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_both(d)))
    };
    if let Some(dir) = given.or_else(on_path) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Start a private cluster, or print why the calling test is skipped and return `None` when no PostgreSQL
/// binaries exist at all. Any other failure to start panics: a machine with PostgreSQL must run the test.
pub fn start_or_skip(test: &str) -> Option<PgCluster> {
    let Some(bin) = find_binaries() else {
        eprintln!(
            "SKIPPED {test}: no PostgreSQL binaries (initdb and pg_ctl) found in $KEYVAULT_PG_BIN, on PATH or \
             in /usr/lib/postgresql/*/bin; install PostgreSQL (Debian: apt-get install postgresql) to run it"
        );
        return None;
    };
    match PgCluster::start(&bin) {
        Ok(cluster) => Some(cluster),
        Err(e) => panic!(
            "cannot start a private PostgreSQL cluster with {}: {e}",
            bin.display()
        ),
    }
}

/// A running private PostgreSQL cluster.
pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    run_as: Option<String>,
    /// Production durability (`fsync`, `full_page_writes` on) rather than the tests' fast settings.
    durable: bool,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn id_of(user: &str, flag: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("no such user: {user}"))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn check(what: &str, out: std::io::Result<Output>) -> Result<(), String> {
    let out = out.map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl PgCluster {
    /// `initdb` a new cluster in a temporary directory and start it on a free port of 127.0.0.1, with `fsync`
    /// and `full_page_writes` off (tests: fast, and a crash of the machine loses nothing that matters).
    pub fn start(bin: &Path) -> Result<PgCluster, String> {
        Self::start_in(bin, None, false)
    }

    /// [`PgCluster::start`] with production durability (`fsync`, `synchronous_commit`, `full_page_writes` on),
    /// in a temporary directory under `parent` (for benchmarks: the filesystem matters).
    pub fn start_durable(bin: &Path, parent: &Path) -> Result<PgCluster, String> {
        Self::start_in(bin, Some(parent), true)
    }

    fn start_in(bin: &Path, parent: Option<&Path>, durable: bool) -> Result<PgCluster, String> {
        let root = running_as_root();
        let mut builder = tempfile::Builder::new();
        builder.prefix("kvpg-");
        // The unprivileged user must be able to reach the directory: /tmp, not a private $TMPDIR.
        let dir = match (root, parent) {
            (true, _) => builder.tempdir_in("/tmp"),
            (false, Some(parent)) => builder.tempdir_in(parent),
            (false, None) => builder.tempdir(),
        }
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let run_as = if root {
            let user = std::env::var("KEYVAULT_PG_USER").unwrap_or_else(|_| "nobody".into());
            let (uid, gid) = (id_of(&user, "-u")?, id_of(&user, "-g")?);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("cannot hand {} to {user}: {e}", dir.path().display()))?;
            Some(user)
        } else {
            None
        };
        let mut cluster = PgCluster {
            bin: bin.to_path_buf(),
            dir,
            port: 0,
            run_as,
            durable,
        };
        check(
            "initdb",
            cluster
                .command("initdb")
                .arg("-D")
                .arg(cluster.data_dir())
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ])
                .output(),
        )?;
        // Another process may take the port between our probe and the server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_again() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A connection URL for another database of the cluster (see [`PgCluster::create_database`]).
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Create a database in the cluster and return its URL (one per test keeps tests independent).
    pub async fn create_database(&self, name: &str) -> Result<String, String> {
        self.create_database_with(name, "").await
    }

    /// [`PgCluster::create_database`] with `CREATE DATABASE` options (e.g. `TEMPLATE template0 LOCALE …`).
    pub async fn create_database_with(&self, name: &str, options: &str) -> Result<String, String> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect: {}", crate::store::postgres::describe(&e)))?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\" {options}"))
            .await
            .map_err(|e| {
                format!(
                    "cannot create database {name}: {}",
                    crate::store::postgres::describe(&e)
                )
            })?;
        drop(client);
        let _ = driver.await;
        Ok(self.url_for(name))
    }

    /// Run `sql` on the cluster's `postgres` database and return the first column of each row as text
    /// (NULL as `None`); cast in the query (`::text`) where needed.
    pub async fn query_text(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect: {}", crate::store::postgres::describe(&e)))?;
        let driver = tokio::spawn(connection);
        let rows = client
            .query(sql, &[])
            .await
            .map_err(|e| format!("query failed: {}", crate::store::postgres::describe(&e)))?;
        drop(client);
        let _ = driver.await;
        rows.iter()
            .map(|r| r.try_get::<_, Option<String>>(0).map_err(|e| e.to_string()))
            .collect()
    }

    /// Begin a transaction on a session of its own on database `dbname` and run `sql` in it (e.g. `LOCK TABLE
    /// …`): what it takes (its locks) is held until [`OpenTransaction::commit`], or until the session is dropped
    /// (which ends it, rolling back).
    pub async fn begin_holding(&self, dbname: &str, sql: &str) -> Result<OpenTransaction, String> {
        let (client, connection) =
            tokio_postgres::connect(&self.url_for(dbname), tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("cannot connect: {}", crate::store::postgres::describe(&e)))?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("BEGIN; {sql}"))
            .await
            .map_err(|e| format!("query failed: {}", crate::store::postgres::describe(&e)))?;
        Ok(OpenTransaction { client, driver })
    }

    /// The `application_name` of the session holding the background-work leader lock
    /// ([`crate::store::postgres::LEADER_LOCK_KEY`]) in the `postgres` database, if any.
    pub async fn leader(&self) -> Result<Option<String>, String> {
        let key = crate::store::postgres::LEADER_LOCK_KEY;
        let sql = format!(
            "SELECT a.application_name::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid::text::bigint = {} AND l.objid::text::bigint = {}",
            (key >> 32) & 0xffff_ffff,
            key & 0xffff_ffff
        );
        Ok(self.query_text(&sql).await?.into_iter().flatten().next())
    }

    /// The postmaster's pid (the first line of `postmaster.pid`), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The cluster's directory (its data directory is `data` inside it).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Start the (stopped) cluster again on the same port and wait until it accepts connections.
    pub fn start_again(&self) -> Result<(), String> {
        let fast = if self.durable {
            ""
        } else {
            " -c fsync=off -c full_page_writes=off"
        };
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}{fast} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        check(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output(),
        )
    }

    /// Stop the cluster: `mode` is `fast` (disconnect clients, clean shutdown) or `immediate` (like a crash;
    /// recovery runs at the next start).
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "60", "stop"])
                .output(),
        )
    }
}

/// A transaction left open on a session of its own ([`PgCluster::begin_holding`]).
pub struct OpenTransaction {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl OpenTransaction {
    /// Run more of the transaction: `sql`, one or more statements.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("query failed: {}", crate::store::postgres::describe(&e)))
    }

    /// Commit the transaction and close the session.
    pub async fn commit(self) -> Result<(), String> {
        self.execute("COMMIT").await?;
        drop(self.client);
        let _ = self.driver.await;
        Ok(())
    }
}

impl PgCluster {
    /// Turn TLS on (`ssl = on`) with `cert_pem` and `key_pem` as the server's certificate and key, trust
    /// `client_ca_pem` for client certificates (`ssl_ca_file`, for `cert` authentication), replace
    /// `pg_hba.conf` with `hba`, and restart the cluster. Keep a `host all postgres 127.0.0.1/32 trust` line in
    /// `hba` for [`PgCluster::create_database`] and [`PgCluster::query_text`], which connect without TLS.
    pub fn enable_tls(
        &self,
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
        hba: &str,
    ) -> Result<(), String> {
        let data = self.data_dir();
        let write = |name: &str, contents: &str, mode: u32| -> Result<(), String> {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, contents).map_err(|e| format!("cannot write {name}: {e}"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot chmod {name}: {e}"))?;
            if let Some(user) = &self.run_as {
                let (uid, gid) = (id_of(user, "-u")?, id_of(user, "-g")?);
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot hand {name} to {user}: {e}"))?;
            }
            Ok(())
        };
        write("server.crt", cert_pem, 0o644)?;
        // PostgreSQL refuses a key file that others can read.
        write("server.key", key_pem, 0o600)?;
        write("root.crt", client_ca_pem, 0o644)?;
        write("pg_hba.conf", hba, 0o600)?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(|e| format!("cannot read postgresql.conf: {e}"))?;
        text.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
        );
        std::fs::write(&conf, text).map_err(|e| format!("cannot write postgresql.conf: {e}"))?;
        self.stop("fast")?;
        self.start_again()
    }
}

/// A throwaway certificate authority for tests (ECDSA P-256): it issues server and client certificates.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("a CA certificate");
        TestCa { key, cert }
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate with common name `cn` and `sans` (DNS names, or IP addresses) as its subject
    /// alternative names, signed by this CA: (certificate PEM, PKCS#8 key PEM).
    pub fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let names = sans.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).expect("valid names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Whatever state it is in; an already stopped cluster makes pg_ctl complain, which is fine.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
