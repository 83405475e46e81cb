//! The load generator: closed-loop workers (each sends its next request when the previous one is answered),
//! every run bounded by a request budget and a deadline, per-request latencies kept exactly.

use crate::client::{Call, Conn};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The API version every request names.
pub const API: &str = "7.6";

/// One measured operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The baseline server's fixed answer.
    Baseline,
    GetLatest,
    GetVersion,
    ListFirst,
    ListDeep,
    Update,
    Set,
    /// DELETE then POST recover of the same name: one op = two durable writes.
    DeleteRecover,
    /// A read-mostly mix on random names: nine GETs of the latest version for each SET (drawn at random).
    Mixed,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::GetLatest,
        Op::GetVersion,
        Op::ListFirst,
        Op::ListDeep,
        Op::Update,
        Op::Set,
        Op::DeleteRecover,
        Op::Mixed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::Baseline => "baseline",
            Op::GetLatest => "get",
            Op::GetVersion => "get-version",
            Op::ListFirst => "list-first",
            Op::ListDeep => "list-deep",
            Op::Update => "update",
            Op::Set => "set",
            Op::DeleteRecover => "delete-recover",
            Op::Mixed => "mixed",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.label() == s)
    }
}

/// The preloaded secrets the operations address.
pub struct Dataset {
    pub names: Vec<String>,
    /// The version of each name made by the preload.
    pub versions: Vec<String>,
    /// The `$skiptoken` of a page deep in the listing (the name before it, lowercased).
    pub deep_token: String,
    pub value: String,
}

impl Dataset {
    /// Names `bench-0000000`…: zero-padded, so sorted order is numeric order.
    pub fn name(i: usize) -> String {
        format!("bench-{i:07}")
    }
}

/// A small, fast, per-worker PRNG (xorshift64*): request mix only, nothing secret.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// The outcome of one run.
#[derive(Default)]
pub struct Cell {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latencies of the successful operations, nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// Largest VmRSS of the server seen during the run (KiB), if a pid was sampled.
    pub peak_rss_kib: u64,
    /// CPU seconds the server (or the baseline's threads) spent during the run.
    pub server_cpu_s: f64,
    /// Bytes the server sent to storage during the run.
    pub server_write_bytes: u64,
    /// CPU seconds the server's database (PostgreSQL) spent during the run; None for the embedded store.
    pub store_cpu_s: Option<f64>,
    /// Server syscalls counted during the run (`--perf-stat`): (name, count).
    pub syscalls: Vec<(String, f64)>,
    /// Seconds the server's threads (or the baseline's) were ready to run but waited for a CPU.
    pub server_wait_s: f64,
    /// The same for the load generator's threads (the harness's own threads other than the baseline's).
    pub client_wait_s: f64,
    /// CPU seconds the load generator's threads spent during the run.
    pub client_cpu_s: f64,
    /// The machine's CPU seconds during the run: idle (or waiting for I/O), and in all.
    pub machine_idle_s: f64,
    pub machine_all_s: f64,
}

impl Cell {
    /// Pool another run of the same operation into this one (interleaved rounds): counts, time, CPU and bytes
    /// add up, latencies merge, the peak is the larger one.
    pub fn absorb(&mut self, other: Cell) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.peak_rss_kib = self.peak_rss_kib.max(other.peak_rss_kib);
        self.server_cpu_s += other.server_cpu_s;
        self.store_cpu_s = match (self.store_cpu_s, other.store_cpu_s) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.server_write_bytes += other.server_write_bytes;
        self.server_wait_s += other.server_wait_s;
        self.client_wait_s += other.client_wait_s;
        self.client_cpu_s += other.client_cpu_s;
        self.machine_idle_s += other.machine_idle_s;
        self.machine_all_s += other.machine_all_s;
        for (name, count) in other.syscalls {
            match self.syscalls.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += count,
                None => self.syscalls.push((name, count)),
            }
        }
    }

    /// Server CPU microseconds per successful operation.
    pub fn cpu_us_per_op(&self) -> f64 {
        1e6 * self.server_cpu_s / self.ok.max(1) as f64
    }

    /// The database's (PostgreSQL's) CPU microseconds per successful operation, if it was measured.
    pub fn store_cpu_us_per_op(&self) -> Option<f64> {
        self.store_cpu_s.map(|s| 1e6 * s / self.ok.max(1) as f64)
    }

    /// Microseconds the server's threads waited for a CPU per successful operation.
    pub fn server_wait_us_per_op(&self) -> f64 {
        1e6 * self.server_wait_s / self.ok.max(1) as f64
    }

    /// Microseconds the load generator's threads waited for a CPU per successful operation.
    pub fn client_wait_us_per_op(&self) -> f64 {
        1e6 * self.client_wait_s / self.ok.max(1) as f64
    }

    /// The load generator's CPU microseconds per successful operation.
    pub fn client_cpu_us_per_op(&self) -> f64 {
        1e6 * self.client_cpu_s / self.ok.max(1) as f64
    }

    /// Share of the machine's CPU time that was idle during the run (0 to 1; NaN if not measured).
    pub fn idle_share(&self) -> f64 {
        if self.machine_all_s > 0.0 {
            self.machine_idle_s / self.machine_all_s
        } else {
            f64::NAN
        }
    }

    /// KiB sent to storage per successful operation.
    pub fn write_kib_per_op(&self) -> f64 {
        self.server_write_bytes as f64 / 1024.0 / self.ok.max(1) as f64
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.latencies, q).map_or(f64::NAN, |ns| ns as f64 / 1e6)
    }
}

/// The `q` quantile (nearest rank) of sorted values; `None` when there are none.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Bounds of one run.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub max_requests: u64,
    pub max_time: Duration,
}

/// Everything a worker needs to build its requests.
pub struct Workload {
    pub op: Op,
    pub data: Arc<Dataset>,
    pub bearer: HeaderValue,
    pub workers: usize,
}

/// Whose CPU time and storage writes a run accounts.
#[derive(Clone, Copy)]
pub enum Server {
    /// The `keyvault serve` process (its RSS is sampled too).
    Process(u32),
    /// The in-process baseline's threads.
    Baseline,
    /// Nobody (warm-up).
    Untracked,
}

impl Server {
    fn cpu(self) -> f64 {
        match self {
            Server::Process(pid) => crate::process::cpu_seconds(&format!("/proc/{pid}/stat")),
            Server::Baseline => crate::process::own_threads_cpu_seconds("baseline"),
            Server::Untracked => 0.0,
        }
    }

    /// Seconds its threads waited for a CPU so far.
    fn waited(self) -> f64 {
        match self {
            Server::Process(pid) => crate::process::run_queue_wait_seconds(Some(pid), ""),
            Server::Baseline => crate::process::run_queue_wait_seconds(None, "baseline"),
            Server::Untracked => 0.0,
        }
    }

    fn written(self) -> u64 {
        match self {
            Server::Process(pid) => crate::process::storage_write_bytes(pid),
            _ => 0,
        }
    }
}

/// Run `workload` unrecorded within `warm` on `conns` (nothing if `warm` has no time), then hand them back.
pub async fn warm_up(workload: &Arc<Workload>, conns: Vec<Conn>, warm: Bounds) -> Vec<Conn> {
    if warm.max_time.is_zero() {
        return conns;
    }
    run(workload.clone(), conns, warm, Server::Untracked)
        .await
        .1
}

/// Run `workload` on `conns` (one per worker) within `bounds`, accounting `server`'s CPU, writes and RSS.
/// The connections are handed back for the next run (keep-alive across runs).
pub async fn run(
    workload: Arc<Workload>,
    conns: Vec<Conn>,
    bounds: Bounds,
    server: Server,
) -> (Cell, Vec<Conn>) {
    let pid = match server {
        Server::Process(pid) => Some(pid),
        _ => None,
    };
    let cpu_before = server.cpu();
    let written_before = server.written();
    let waited_before = server.waited();
    let client_waited_before = crate::process::run_queue_wait_seconds(None, "!baseline");
    let client_cpu_before = crate::process::threads_cpu_seconds(None, "!baseline");
    let machine_before = crate::process::machine_cpu_seconds();
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + bounds.max_time;
    let sampler = pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(crate::process::memory_kib(pid).0);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if Instant::now() >= deadline {
                    return peak.max(crate::process::memory_kib(pid).0);
                }
            }
        })
    });
    let mut tasks = Vec::with_capacity(conns.len());
    for (w, conn) in conns.into_iter().enumerate() {
        let workload = workload.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(worker(
            w, conn, workload, issued, bounds, deadline,
        )));
    }
    let mut cell = Cell::default();
    let mut conns = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok((w, conn)) => {
                conns.push(conn);
                cell.ok += w.latencies.len() as u64;
                cell.errors += w.errors;
                if cell.first_error.is_none() {
                    cell.first_error = w.first_error;
                }
                cell.latencies.extend(w.latencies);
            }
            Err(e) => {
                cell.errors += 1;
                cell.first_error
                    .get_or_insert(format!("worker panicked: {e}"));
            }
        }
    }
    cell.elapsed = started.elapsed();
    cell.server_cpu_s = (server.cpu() - cpu_before).max(0.0);
    cell.server_write_bytes = server.written().saturating_sub(written_before);
    cell.server_wait_s = (server.waited() - waited_before).max(0.0);
    cell.client_wait_s =
        (crate::process::run_queue_wait_seconds(None, "!baseline") - client_waited_before).max(0.0);
    cell.client_cpu_s =
        (crate::process::threads_cpu_seconds(None, "!baseline") - client_cpu_before).max(0.0);
    let machine_after = crate::process::machine_cpu_seconds();
    cell.machine_idle_s = (machine_after.0 - machine_before.0).max(0.0);
    cell.machine_all_s = (machine_after.1 - machine_before.1).max(0.0);
    if let Some(s) = sampler {
        s.abort();
        cell.peak_rss_kib = pid.map(|p| crate::process::memory_kib(p).0).unwrap_or(0);
        if let Ok(peak) = s.await {
            cell.peak_rss_kib = cell.peak_rss_kib.max(peak);
        }
    }
    cell.latencies.sort_unstable();
    (cell, conns)
}

struct WorkerResult {
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    w: usize,
    mut conn: Conn,
    workload: Arc<Workload>,
    issued: Arc<AtomicU64>,
    bounds: Bounds,
    deadline: Instant,
) -> (WorkerResult, Conn) {
    let mut out = WorkerResult {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
    };
    let mut rng = Rng::new(w as u64 + 1 + (workload.op as u64) * 1000);
    let data = &workload.data;
    let n = data.names.len();
    // Names owned by this worker (delete-recover must not race another worker on one name).
    let owned = (n.saturating_sub(w) + workload.workers - 1) / workload.workers.max(1);
    let mut path = String::with_capacity(128);
    let mut k: u64 = 0;
    loop {
        if Instant::now() >= deadline
            || issued.fetch_add(1, Ordering::Relaxed) >= bounds.max_requests
        {
            break;
        }
        k += 1;
        let started = Instant::now();
        let result = match workload.op {
            Op::Baseline => one(&mut conn, Method::GET, "/", &workload.bearer, None).await,
            Op::GetLatest => {
                let i = rng.below(n);
                path.clear();
                let _ = write!(path, "/secrets/{}?api-version={API}", data.names[i]);
                one(&mut conn, Method::GET, &path, &workload.bearer, None).await
            }
            Op::Mixed if rng.below(10) != 0 => {
                let i = rng.below(n);
                path.clear();
                let _ = write!(path, "/secrets/{}?api-version={API}", data.names[i]);
                one(&mut conn, Method::GET, &path, &workload.bearer, None).await
            }
            Op::GetVersion => {
                let i = rng.below(n);
                path.clear();
                let _ = write!(
                    path,
                    "/secrets/{}/{}?api-version={API}",
                    data.names[i], data.versions[i]
                );
                one(&mut conn, Method::GET, &path, &workload.bearer, None).await
            }
            Op::ListFirst => {
                path.clear();
                let _ = write!(path, "/secrets?api-version={API}&maxresults=25");
                one(&mut conn, Method::GET, &path, &workload.bearer, None).await
            }
            Op::ListDeep => {
                path.clear();
                let _ = write!(
                    path,
                    "/secrets?api-version={API}&maxresults=25&$skiptoken={}",
                    data.deep_token
                );
                one(&mut conn, Method::GET, &path, &workload.bearer, None).await
            }
            Op::Update => {
                let i = rng.below(n);
                path.clear();
                let _ = write!(path, "/secrets/{}?api-version={API}", data.names[i]);
                let body = format!(
                    r#"{{"contentType":"text/plain","tags":{{"bench":"{}"}}}}"#,
                    k % 1000
                );
                one(
                    &mut conn,
                    Method::PATCH,
                    &path,
                    &workload.bearer,
                    Some(Bytes::from(body)),
                )
                .await
            }
            Op::Set | Op::Mixed => {
                let i = rng.below(n);
                path.clear();
                let _ = write!(path, "/secrets/{}?api-version={API}", data.names[i]);
                let body = format!(r#"{{"value":"{}"}}"#, data.value);
                one(
                    &mut conn,
                    Method::PUT,
                    &path,
                    &workload.bearer,
                    Some(Bytes::from(body)),
                )
                .await
            }
            Op::DeleteRecover => {
                if owned == 0 {
                    Err("no name for this worker (fewer secrets than workers)".to_string())
                } else {
                    let i = w + workload.workers * ((k as usize - 1) % owned);
                    path.clear();
                    let _ = write!(path, "/secrets/{}?api-version={API}", data.names[i]);
                    match one(&mut conn, Method::DELETE, &path, &workload.bearer, None).await {
                        Ok(()) => {
                            path.clear();
                            let _ = write!(
                                path,
                                "/deletedsecrets/{}/recover?api-version={API}",
                                data.names[i]
                            );
                            one(&mut conn, Method::POST, &path, &workload.bearer, None).await
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match result {
            Ok(()) => out.latencies.push(started.elapsed().as_nanos() as u64),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    (out, conn)
}

async fn one(
    conn: &mut Conn,
    method: Method,
    path: &str,
    bearer: &HeaderValue,
    body: Option<Bytes>,
) -> Result<(), String> {
    let (status, bytes) = conn
        .send(Call {
            method: method.clone(),
            path,
            bearer: Some(bearer),
            body,
            form: false,
        })
        .await?;
    if status == StatusCode::OK || status == StatusCode::NO_CONTENT {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(ok: u64, ms: u64, latencies: &[u64], cpu: f64, rss: u64, futex: f64) -> Cell {
        Cell {
            ok,
            errors: 1,
            first_error: Some(format!("error after {ok}")),
            elapsed: Duration::from_millis(ms),
            latencies: latencies.to_vec(),
            peak_rss_kib: rss,
            server_cpu_s: cpu,
            store_cpu_s: Some(cpu / 2.0),
            server_write_bytes: 1024 * ok,
            syscalls: vec![("futex".into(), futex)],
            server_wait_s: cpu / 4.0,
            client_wait_s: cpu / 8.0,
            client_cpu_s: cpu / 2.0,
            machine_idle_s: cpu,
            machine_all_s: 4.0 * cpu,
        }
    }

    /// Pooled rounds: counts, time, CPU and bytes add up, latencies merge in order, the peak is the larger.
    #[test]
    fn absorb_pools_two_rounds() {
        let mut a = cell(100, 1000, &[1, 5, 9], 0.5, 300, 10.0);
        let mut b = cell(300, 1000, &[2, 3, 20], 1.5, 200, 30.0);
        b.syscalls.push(("fsync".into(), 4.0));
        a.absorb(b);
        assert_eq!((a.ok, a.errors), (400, 2));
        assert_eq!(a.first_error.as_deref(), Some("error after 100"));
        assert_eq!(a.elapsed, Duration::from_secs(2));
        assert_eq!(a.latencies, vec![1, 2, 3, 5, 9, 20]);
        assert_eq!(a.peak_rss_kib, 300);
        assert_eq!(a.rate(), 200.0);
        assert_eq!(a.cpu_us_per_op(), 5000.0);
        assert_eq!(a.store_cpu_us_per_op(), Some(2500.0));
        // A run without the database's CPU (the embedded store) stays without it.
        let mut sqlite = cell(1, 1, &[1], 1.0, 1, 0.0);
        sqlite.store_cpu_s = None;
        sqlite.absorb(Cell {
            store_cpu_s: None,
            ..cell(1, 1, &[1], 1.0, 1, 0.0)
        });
        assert_eq!(sqlite.store_cpu_us_per_op(), None);
        assert_eq!(a.write_kib_per_op(), 1.0);
        // Waits add up (0.125 + 0.375 s over 400 ops), and the idle share is of the pooled machine time.
        assert_eq!(a.server_wait_us_per_op(), 1250.0);
        assert_eq!(a.client_wait_us_per_op(), 625.0);
        assert_eq!(a.client_cpu_us_per_op(), 2500.0);
        assert_eq!(a.idle_share(), 0.25);
        assert!(Cell::default().idle_share().is_nan());
        assert_eq!(
            a.syscalls,
            vec![("futex".to_string(), 40.0), ("fsync".to_string(), 4.0)]
        );
        assert_eq!(a.quantile_ms(0.5), 3e-6);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.99), Some(4));
        assert_eq!(quantile(&[7], 0.0), Some(7));
        assert_eq!(quantile::<u64>(&[], 0.5), None);
    }
}
