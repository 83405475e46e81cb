//! Shared by the `cli_*` tests: an in-process vault (a real HTTPS server on 127.0.0.1:0) with its
//! dev-credentials.json, and a runner for the real `keyvault` binary.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyvault");

/// A running vault and the dev-credentials.json that points at it.
pub struct Vault {
    pub url: String,
    pub creds: PathBuf,
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// Start a vault on its own runtime thread; it runs until the test process ends.
pub fn start_vault() -> Vault {
    start_vault_with(keyvault_server::local::LocalVaultOptions::default())
}

/// [`start_vault`] with these settings (e.g. throttling).
pub fn start_vault_with(options: keyvault_server::local::LocalVaultOptions) -> Vault {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let lv = keyvault_server::LocalVault::start_with(options)
                .await
                .unwrap();
            let creds = serde_json::to_vec(lv.credentials()).unwrap();
            tx.send((
                creds,
                lv.vault_url().to_string(),
                lv.credentials().ca_cert.clone(),
            ))
            .unwrap();
            std::future::pending::<()>().await;
            drop(lv);
        });
    });
    let (creds, url, ca) = rx.recv().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev-credentials.json");
    std::fs::write(&path, creds).unwrap();
    Vault {
        url,
        creds: path,
        ca,
        _dir: dir,
    }
}

/// The vault shared by the tests of one file.
pub fn shared() -> &'static Vault {
    static VAULT: OnceLock<Vault> = OnceLock::new();
    VAULT.get_or_init(start_vault)
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A command for the binary with a clean environment (no ambient Azure or keyvault settings).
pub fn command(vault: Option<&Vault>) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("AZURE_") || k.starts_with("KEYVAULT_") || k == "IDENTITY_ENDPOINT" {
            c.env_remove(k);
        }
    }
    if let Some(v) = vault {
        c.env("KEYVAULT_DEV_CREDENTIALS", &v.creds);
    }
    c
}

pub fn run_with(mut c: Command, args: &[&str], stdin: Option<&[u8]>) -> Out {
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The command may exit (e.g. on a usage error) before it reads all of its input: a broken pipe
        // here is not the test's failure; the exit code and output below say what happened.
        if let Err(e) = pipe.write_all(input) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe,
                "writing stdin: {e}"
            );
        }
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_bytes: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `keyvault ARGS` whose reader takes 10 bytes of standard output and closes it (`| head -c 10`): the exit code
/// and standard error.
pub fn with_reader_gone_early(mut c: Command, args: &[&str]) -> (Option<i32>, String) {
    let mut child = c
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `keyvault ARGS` against `vault`.
pub fn kv(vault: &Vault, args: &[&str]) -> Out {
    run_with(command(Some(vault)), args, None)
}

/// `keyvault ARGS < stdin` against `vault`.
pub fn kv_in(vault: &Vault, args: &[&str], stdin: &[u8]) -> Out {
    run_with(command(Some(vault)), args, Some(stdin))
}

/// A `keyvault serve` child process, killed (and reaped) if a test panics before stopping it.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every line a server has logged so far (stderr), kept by a reader thread.
pub type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Spawns `serve` as `c` describes (its stderr is taken over, at `KEYVAULT_LOG=info` unless `c` sets it) and
/// waits (at most 30 s) for the "keyvault listening" line: (server, its `addr=`, every line it logs).
pub fn spawn_server(mut c: Command) -> (Server, String, LogLines) {
    use std::io::{BufRead, BufReader};
    if !c.get_envs().any(|(k, _)| k == "KEYVAULT_LOG") {
        c.env("KEYVAULT_LOG", "info");
    }
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = LogLines::default();
    let kept = lines.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("keyvault listening") {
                let _ = tx.send(log_field(&line, " addr=").unwrap_or_default());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let server = Server(child);
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the server reports its address");
    (server, addr, lines)
}

/// The value of `name` (such as `" addr="`) in a log line, up to the next space.
pub fn log_field(line: &str, name: &str) -> Option<String> {
    line.split(name).nth(1).map(|rest| {
        rest.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// The arguments of `serve --dev` on 127.0.0.1 (any port) over the data directory `data`.
pub fn dev_serve_args(data: &std::path::Path) -> Vec<String> {
    ["serve", "--dev", "--addr", "127.0.0.1:0", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([data.display().to_string()])
        .collect()
}

/// `serve --dev` on `data` (plus `extra` arguments and `env` variables), ready: its dev-credentials.json
/// written for the address it reports (at most 10 s after it listens).
pub fn serve_dev(data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut c = command(None);
    c.envs(env.iter().copied());
    c.args(dev_serve_args(data)).args(extra);
    let (server, addr, _) = spawn_server(c);
    wait_for_dev_credentials_at(data, &addr);
    server
}

/// Waits (at most 10 s) until the dev server of `data` listening on `addr` has written its credentials.
pub fn wait_for_dev_credentials_at(data: &std::path::Path, addr: &str) {
    let creds = data.join("dev-credentials.json");
    let start = std::time::Instant::now();
    loop {
        let written = std::fs::read(&creds)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|c| c["vault_url"] == format!("https://{addr}"));
        if written {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no credentials"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Stops a server with SIGTERM and checks that it exits cleanly (within 15 s).
pub fn stop_server(mut server: Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `serve --dev` on `data` (plus `extra` arguments) run to its end: a server that must not start.
pub fn run_dev_serve(data: &std::path::Path, extra: &[&str]) -> Out {
    let mut c = command(None);
    c.args(dev_serve_args(data)).args(extra);
    run_with(c, &[], None)
}

/// The argon2 hash `keyvault hash-secret` prints for `secret` (checked to be one, and not to contain it).
pub fn hash_secret(secret: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(secret));
    hash
}

/// `keyvault ARGS` against the dev server of the data directory `data`.
pub fn kv_dev(data: &std::path::Path, args: &[&str]) -> Out {
    let mut c = command(None);
    c.env(
        "KEYVAULT_DEV_CREDENTIALS",
        data.join("dev-credentials.json"),
    );
    run_with(c, args, None)
}
