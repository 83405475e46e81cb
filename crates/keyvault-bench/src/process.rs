//! The server under test: the real `keyvault serve --dev` binary in its own process.

use crate::client::{Call, Proto, Target};
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to write its credentials and answer /healthz.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd server may take to drain and exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What `dev-credentials.json` says.
pub struct Creds {
    pub vault_url: String,
    pub ca_pem: Vec<u8>,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub authority_host: String,
}

/// A running `keyvault serve`, killed on drop if still running.
pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub creds: Creds,
    pub target: Target,
    /// From spawn to `dev-credentials.json` written.
    pub creds_after: Duration,
    /// From spawn to the first 200 on /healthz.
    pub ready_after: Duration,
    log: PathBuf,
}

impl ServerProc {
    /// Start `bin serve --dev` on `data_dir` (port chosen by the kernel) and wait until it is ready.
    pub async fn start(bin: &Path, data_dir: &Path) -> Result<ServerProc, String> {
        ServerProc::start_with(bin, data_dir, &[]).await
    }

    /// [`ServerProc::start`] with more `serve` arguments (e.g. `--store postgres://…`).
    pub async fn start_with(
        bin: &Path,
        data_dir: &Path,
        extra: &[String],
    ) -> Result<ServerProc, String> {
        let creds_path = data_dir.join("dev-credentials.json");
        // Readiness is "the file appears": remove the previous run's copy (the server then makes a new client).
        match std::fs::remove_file(&creds_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", creds_path.display())),
        }
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--dev", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("KEYVAULT_LOG", "warn")
            // A non-dumpable server's /proc/PID/io (write_bytes) is root's only: this harness reads it.
            .env("KEYVAULT_ALLOW_CORE_DUMPS", "1")
            .env_remove("KEYVAULT_STORE")
            .env_remove("KEYVAULT_CONFIG")
            .env_remove("KEYVAULT_KEK")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();

        // 1. The credentials file (written atomically just before the accept loop starts).
        let creds_after = loop {
            if creds_path.exists() {
                break started.elapsed();
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the server exited ({status}) before it was ready; log: {}",
                    tail(&log)
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                return Err(format!("the server was not ready within {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        let creds = match read_creds(&creds_path) {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };
        let target = match Target::new(&creds.vault_url, &creds.ca_pem) {
            Ok(t) => t,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };

        // 2. The first 200 on /healthz, each attempt on a new connection (as a fresh client would).
        let ready_after = loop {
            if let Ok(mut conn) = target.connect(Proto::H1).await
                && let Ok((StatusCode::OK, _)) = conn
                    .send(Call {
                        method: Method::GET,
                        path: "/healthz",
                        bearer: None,
                        body: None,
                        form: false,
                    })
                    .await
            {
                break started.elapsed();
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                return Err("the server never answered /healthz".to_string());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        Ok(ServerProc {
            child,
            pid,
            creds,
            target,
            creds_after,
            ready_after,
            log,
        })
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid)
    }

    /// SIGTERM, wait for the graceful exit (killing after [`STOP_TIMEOUT`]). Returns how long it took.
    pub async fn stop(mut self) -> Result<Duration, String> {
        let asked = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            let _ = self.child.kill();
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(asked.elapsed()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "the server exited with {status}; log: {}",
                        tail(&self.log)
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for the server: {e}")),
            }
            if asked.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                return Err(format!("the server did not stop within {STOP_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_creds(path: &Path) -> Result<Creds, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{} lacks {k}", path.display()))
    };
    let ca_path = field("ca_cert")?;
    Ok(Creds {
        vault_url: field("vault_url")?,
        ca_pem: std::fs::read(&ca_path).map_err(|e| format!("cannot read {ca_path}: {e}"))?,
        tenant_id: field("tenant_id")?,
        client_id: field("client_id")?,
        client_secret: field("client_secret")?,
        authority_host: field("authority_host")?,
    })
}

/// (VmRSS, VmHWM) of a process in KiB, from /proc (0 when unreadable).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of a process (or thread: `/proc/PID/task/TID`), in seconds.
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU seconds of this process's threads whose name starts with `prefix` (the in-process baseline), in the
/// same ticks as the server's [`cpu_seconds`].
pub fn own_threads_cpu_seconds(prefix: &str) -> f64 {
    threads(None, prefix)
        .map(|t| cpu_seconds(&t.join("stat").to_string_lossy()))
        .sum()
}

/// The `/proc/…/task/TID` directories of the threads of `pid` (this process if `None`) whose name starts
/// with `prefix` ("" for all, `!`-prefixed for all but those). Threads that ended are not listed.
fn threads(pid: Option<u32>, prefix: &str) -> impl Iterator<Item = std::path::PathBuf> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_string(),
    };
    let (wanted, prefix) = match prefix.strip_prefix('!') {
        Some(p) => (false, p.to_string()),
        None => (true, prefix.to_string()),
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|t| t.path())
        .filter(move |t| {
            prefix.is_empty()
                || std::fs::read_to_string(t.join("comm"))
                    .map(|c| c.starts_with(prefix.as_str()) == wanted)
                    .unwrap_or(false)
        })
}

/// Seconds the threads of a process spent ready to run but waiting for a CPU (the run-queue delay the kernel
/// keeps per thread: the second field of `/proc/PID/task/TID/schedstat`, in ns), summed over the threads
/// whose name starts with `prefix` ("" for all, `!`-prefixed for all but those). Threads that ended are not
/// counted.
pub fn run_queue_wait_seconds(pid: Option<u32>, prefix: &str) -> f64 {
    schedstat_seconds(pid, prefix, 1)
}

/// CPU seconds of the threads of a process (selected as by [`run_queue_wait_seconds`]), from the first field
/// of their `schedstat` (ns: finer than `/proc/PID/stat`'s ticks of 10 ms, which short runs need).
pub fn threads_cpu_seconds(pid: Option<u32>, prefix: &str) -> f64 {
    schedstat_seconds(pid, prefix, 0)
}

/// Field `field` (ns) of `schedstat`, summed over the threads of `pid` (this process if `None`) named by
/// `prefix`, in seconds.
fn schedstat_seconds(pid: Option<u32>, prefix: &str, field: usize) -> f64 {
    threads(pid, prefix)
        .filter_map(|t| std::fs::read_to_string(t.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(field)?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// The machine's CPU time so far, in seconds: (idle, including waiting for I/O; all), from `/proc/stat`.
pub fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = ticks.iter().skip(3).take(2).sum::<u64>();
    let all = ticks.iter().take(8).sum::<u64>();
    (idle as f64 / 100.0, all as f64 / 100.0)
}

/// Bytes the process caused to be sent to storage (`write_bytes` of /proc/PID/io).
pub fn storage_write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The last lines of the server's log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that computes for a while shows that much more CPU in its `schedstat`, counted for the
    /// threads its name selects and not for the others; the machine's counters move forward.
    #[test]
    fn schedstat_counts_a_named_threads_cpu() {
        let machine_before = machine_cpu_seconds();
        let [mine, all, others] = std::thread::Builder::new()
            .name("kvb-test-spin".into())
            .spawn(|| {
                let read = || {
                    [
                        threads_cpu_seconds(None, "kvb-test-spin"),
                        threads_cpu_seconds(None, ""),
                        threads_cpu_seconds(None, "!kvb-test-spin"),
                    ]
                };
                let before = read();
                // Compute until this thread has had 30 ms of CPU by its own count (or 5 s have passed, on
                // a machine too busy to give it that).
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let mut x = 1u64;
                while threads_cpu_seconds(None, "kvb-test-spin") - before[0] < 0.03
                    && std::time::Instant::now() < give_up
                {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
                let after = read();
                [0, 1, 2].map(|i| after[i] - before[i])
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(mine >= 0.03, "{mine}");
        // "!name" selects every thread but those: what all threads used, less what they used, is the named
        // thread's (other tests' threads, running meanwhile, count in both and cancel out).
        assert!(
            all - others >= 0.02,
            "all {all}, others {others}, mine {mine}"
        );
        let machine_after = machine_cpu_seconds();
        assert!(
            machine_after.1 > machine_before.1,
            "{machine_before:?} → {machine_after:?}"
        );
        assert!(machine_after.0 <= machine_after.1);
        // Waits are never negative, and a process that does not exist has none.
        assert!(run_queue_wait_seconds(None, "") >= 0.0);
        assert_eq!(run_queue_wait_seconds(Some(u32::MAX), ""), 0.0);
    }
}
