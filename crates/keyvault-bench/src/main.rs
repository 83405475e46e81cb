//! `keyvault-bench`: starts the real `keyvault serve --dev` binary, preloads N secrets over HTTPS, measures
//! every secrets operation at several concurrencies (HTTP/1.1 keep-alive and HTTP/2), and compares each
//! figure with a bare hyper + rustls server answering a body of the same size, measured the same way.
//! Also: preload (SET) rate, time to ready and RSS with N secrets in the store.
//!
//! ```text
//! cargo build --release -p keyvault-cli -p keyvault-bench
//! target/release/keyvault-bench                # 10k and 100k secrets, c = 1, 16, 64, h1 and h2
//! target/release/keyvault-bench --large        # also 1M secrets
//! target/release/keyvault-bench --smoke        # N = 200, ~3 s, every operation (CI: exits non-zero on errors)
//! target/release/keyvault-bench --clients      # sequential get: keyvault-secrets vs the Python SDK
//! target/release/keyvault-bench --postgres     # PostgreSQL store: SET/GET vs PostgreSQL's own insert rate
//! target/release/keyvault-bench --store postgres   # the whole matrix with the server on PostgreSQL
//! ```
//!
//! Loads go to 127.0.0.1 only; every run is bounded by `--max-requests` and `--seconds`.

mod baseline;
mod client;
mod clients;
mod disk;
mod load;
mod pg;
mod process;
mod report;

use clap::Parser;
use client::{Call, Proto, Target};
use http::{HeaderValue, Method, StatusCode};
use load::{Bounds, Dataset, Op, Server, Workload};
use process::ServerProc;
use report::{Machine, Row, SizeReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
#[command(
    name = "keyvault-bench",
    about = "Load harness for `keyvault serve` (HTTPS, keep-alive), with a bare hyper + rustls baseline"
)]
struct Args {
    /// CI smoke run: N = 200, very short runs, every operation; exits non-zero only on request errors.
    #[arg(long)]
    smoke: bool,
    /// Also measure with 1,000,000 secrets (preloading them over HTTPS takes a few minutes).
    #[arg(long)]
    large: bool,
    /// Instead of the SQLite matrix: sequential (c = 1) `get_secret` through the `keyvault-secrets` crate's
    /// async SecretClient and through the official Python SDK (tests/e2e/.venv), on one server.
    #[arg(long, conflicts_with = "postgres")]
    clients: bool,
    /// `--clients`: the Python interpreter with azure-keyvault-secrets [default: tests/e2e/.venv/bin/python].
    #[arg(long)]
    python: Option<PathBuf>,
    /// `--clients`: measure the Rust clients only.
    #[arg(long)]
    no_python: bool,
    /// Instead of the SQLite matrix: the PostgreSQL store (a private cluster is started) — SET and GET at
    /// each concurrency, and PostgreSQL's own single-row insert rate at the same concurrencies.
    #[arg(long)]
    postgres: bool,
    /// The store behind the server in the matrix: `sqlite` (the embedded store, in the data directory) or
    /// `postgres` (a private durable PostgreSQL cluster is started, one database per size; the report adds
    /// PostgreSQL's CPU per operation; skipped with a message if PostgreSQL is not installed).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"], conflicts_with_all = ["postgres", "clients"])]
    store: String,
    /// `--postgres` diagnostics: log every SQL statement and copy PostgreSQL's log to this file at the end
    /// (slows PostgreSQL down: not for figures).
    #[arg(long, requires = "postgres")]
    pg_statement_log: Option<PathBuf>,
    /// `--postgres`: interleaved rounds per concurrency (every operation runs `--seconds` per round).
    #[arg(long, default_value_t = 3)]
    pg_rounds: usize,
    /// Store sizes to measure (secrets preloaded before measuring) [default: 10000,100000; --clients and
    /// --postgres: 10000, first size only].
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Concurrent workers (HTTP/1.1: one connection each; HTTP/2: streams on one connection).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Protocols: h1, h2 [default: h1,h2; --postgres: h1].
    #[arg(long, value_delimiter = ',')]
    protos: Vec<String>,
    /// Operations: get, get-version, list-first, list-deep, update, set, delete-recover, mixed (9 GETs : 1 SET on
    /// random names) [default: all;
    /// --postgres: set,get].
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Seconds per measured run (upper bound).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Requests per measured run (upper bound).
    #[arg(long, default_value_t = 300_000)]
    max_requests: u64,
    /// Unrecorded warm-up before each measured run, in seconds.
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,
    /// Workers for the preload (HTTP/1.1 connections).
    #[arg(long, default_value_t = 64)]
    preload_concurrency: usize,
    /// Bytes in each secret value.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// The `keyvault` binary [default: `keyvault` next to this program].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the temporary data directories go [default: the system temp dir].
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Record a `perf` profile of the server during each measured run into this directory.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Count the server's syscalls (fdatasync, pwrite64, futex, …) per operation with `perf stat` during each
    /// measured run; the counts go to this directory and into the report.
    #[arg(long)]
    perf_stat: Option<PathBuf>,
    /// Interleaved rounds per protocol and concurrency: the baseline and every operation run once per round
    /// (`--seconds` each), and each row pools its rounds. More rounds make ratios steadier on a noisy machine.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Skip the baseline (ratios are then not shown).
    #[arg(long)]
    no_baseline: bool,
    /// After the restart with N secrets, GET every secret once (`--preload-concurrency` connections) before
    /// measuring: the server as it runs after a while, its cache holding what fits, rather than just started.
    #[arg(long)]
    read_all_first: bool,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.smoke {
        args.sizes = vec![200];
        args.concurrency = vec![1, 16, 64];
        args.seconds = 0.03;
        args.warmup = 0.0;
        args.max_requests = 2_000;
        args.preload_concurrency = 16;
    } else if args.sizes.is_empty() {
        args.sizes = if args.clients || args.postgres {
            vec![10_000]
        } else {
            vec![10_000, 100_000]
        };
    }
    if args.large && !args.smoke && !args.sizes.contains(&1_000_000) {
        args.sizes.push(1_000_000);
    }
    if args.protos.is_empty() {
        args.protos = if args.postgres {
            vec!["h1".into()]
        } else {
            vec!["h1".into(), "h2".into()]
        };
    }
    if args.postgres && args.ops.is_empty() {
        args.ops = vec!["set".into(), "get".into()];
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some requests failed (see the errors column)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every request succeeded.
async fn run(args: Args) -> Result<bool, String> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("keyvault"),
    };
    if !bin.is_file() {
        return Err(format!(
            "no server binary at {} (build it: cargo build --release -p keyvault-cli, or pass --server-bin)",
            bin.display()
        ));
    }
    let protos = args
        .protos
        .iter()
        .map(|p| match p.as_str() {
            "h1" | "http1" => Ok(Proto::H1),
            "h2" | "http2" => Ok(Proto::H2),
            other => Err(format!("unknown protocol {other} (h1, h2)")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ops = if args.ops.is_empty() {
        Op::ALL.to_vec()
    } else {
        args.ops
            .iter()
            .map(|s| Op::parse(s).ok_or_else(|| format!("unknown operation {s}")))
            .collect::<Result<Vec<_>, _>>()?
    };
    for dir in [&args.perf, &args.perf_stat].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let root = match &args.data_root {
        Some(dir) => tempfile::Builder::new()
            .prefix("keyvault-bench-")
            .tempdir_in(dir),
        None => tempfile::Builder::new().prefix("keyvault-bench-").tempdir(),
    }
    .map_err(|e| format!("cannot make a temporary directory: {e}"))?;

    let machine = Machine::probe(root.path());
    let settings = format!(
        "runs: ≤ {:.2} s and ≤ {} requests each after {:.2} s warm-up{}{}; values {} bytes; client: {} tokio workers, \
         hyper conn API (HTTP/1.1: one keep-alive TLS connection per worker; HTTP/2: one connection, one stream per worker)",
        args.seconds,
        args.max_requests,
        args.warmup,
        match args.rounds {
            0 | 1 => String::new(),
            r => format!(
                "; {r} interleaved rounds (baseline, then each operation) per protocol and concurrency, pooled in each row"
            ),
        },
        if args.read_all_first {
            "; every secret read once after the restart, before the first run"
        } else {
            ""
        },
        args.value_bytes,
        machine.nproc
    );
    eprintln!("{}\n{settings}", machine.describe());
    let bounds = Bounds {
        max_requests: args.max_requests,
        max_time: Duration::from_secs_f64(args.seconds),
    };
    let warm = Bounds {
        max_requests: args.max_requests,
        max_time: Duration::from_secs_f64(args.warmup),
    };
    if args.clients {
        let s = clients_settings(&args, args.sizes[0], bounds);
        let r = clients::measure(&bin, &root.path().join("clients"), &s).await?;
        let text = format!(
            "## Machine\n\n{}\n\n{}",
            machine.describe(),
            clients::render(&r)
        );
        return finish(&args, &text, r.rows.iter().all(|row| row.cell.errors == 0));
    }
    if args.postgres {
        let s = pg::Settings {
            n: args.sizes[0],
            concurrency: args.concurrency.clone(),
            protos: protos.clone(),
            ops: ops.clone(),
            bounds,
            warm,
            value_bytes: args.value_bytes,
            preload_concurrency: args.preload_concurrency,
            statement_log: args.pg_statement_log.clone(),
            rounds: args.pg_rounds,
        };
        return match pg::measure(&bin, root.path(), &s).await? {
            Some(r) => {
                let text = format!(
                    "## Machine\n\n{}\n\n{settings}\n\n{}",
                    machine.describe(),
                    pg::render(&r)
                );
                finish(&args, &text, r.rows.iter().all(|row| row.cell.errors == 0))
            }
            None => {
                println!("PostgreSQL mode skipped: PostgreSQL is not installed.");
                Ok(true)
            }
        };
    }
    let cluster = match args.store.as_str() {
        "postgres" => match pg::Cluster::start(root.path()).await? {
            Some(c) => Some(c),
            None => {
                println!("PostgreSQL matrix skipped: PostgreSQL is not installed.");
                return Ok(true);
            }
        },
        _ => None,
    };
    let mut rig = Rig {
        bin: &bin,
        root: root.path(),
        baseline: None,
        cluster,
    };
    let mut sizes = Vec::new();
    let mut all_ok = true;
    for &n in &args.sizes {
        let size = measure_size(&args, &mut rig, n, &protos, &ops).await?;
        all_ok &= size.rows.iter().all(|r| r.cell.errors == 0);
        sizes.push(size);
    }
    drop(rig);
    let mut text = report::render(&machine, &settings, &sizes, &args.concurrency);
    if args.smoke && args.store == "sqlite" {
        // The client library too (Rust only: the smoke run must not need Python).
        let mut s = clients_settings(&args, args.sizes[0], bounds);
        s.python = Err("smoke runs do not start Python".into());
        let r = clients::measure(&bin, &root.path().join("clients"), &s).await?;
        all_ok &= r.rows.iter().all(|row| row.cell.errors == 0);
        text.push('\n');
        text.push_str(&clients::render(&r));
    }
    finish(&args, &text, all_ok)
}

/// Print the report (and write it to `--output`); returns `ok`.
fn finish(args: &Args, text: &str, ok: bool) -> Result<bool, String> {
    println!("{text}");
    if let Some(path) = &args.output {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(ok)
}

fn clients_settings(args: &Args, n: usize, bounds: Bounds) -> clients::Settings {
    clients::Settings {
        n,
        value_bytes: args.value_bytes,
        preload_concurrency: args.preload_concurrency,
        bounds,
        warmup_ops: if args.smoke { 2 } else { 50 },
        python: clients::locate_python(args.python.clone(), args.no_python),
    }
}

/// What the sizes of one matrix run share.
struct Rig<'a> {
    /// The `keyvault` binary.
    bin: &'a Path,
    /// The run's temporary directory.
    root: &'a Path,
    /// Started at the first size (unless `--no-baseline`), then reused.
    baseline: Option<baseline::Baseline>,
    /// With `--store postgres`: the cluster (a database per size).
    cluster: Option<pg::Cluster>,
}

async fn measure_size(
    args: &Args,
    rig: &mut Rig<'_>,
    n: usize,
    protos: &[Proto],
    ops: &[Op],
) -> Result<SizeReport, String> {
    let (bin, root, cluster) = (rig.bin, rig.root, rig.cluster.as_ref());
    let baseline = &mut rig.baseline;
    let dir = root.join(format!("n{n}"));
    let load_before = report::loadavg();
    let sync_before = probe_sync(root);
    // The store: SQLite in the data directory, or a fresh PostgreSQL database per size.
    let database = format!("kv_{n}");
    let (store_args, store) = match cluster {
        Some(c) => (
            vec!["--store".to_string(), c.create_database(&database).await?],
            Some(format!("{}, database `{database}`", c.version)),
        ),
        None => (Vec::new(), None),
    };
    let store_cpu = || cluster.map(pg::Cluster::cpu_seconds);

    // 1. Empty store: start, preload over HTTPS, stop.
    let server = ServerProc::start_with(bin, &dir, &store_args).await?;
    let empty_ready = server.ready_after;
    let (empty_rss, _) = server.memory_kib();
    let token = bearer(&server).await?;
    eprintln!(
        "n={n}: server up in {:.1} ms (empty store), preloading…",
        ms(empty_ready)
    );
    let value: String = "v".repeat(args.value_bytes);
    let (versions, preload) =
        preload(&server.target, &token, n, &value, args.preload_concurrency).await?;
    eprintln!(
        "n={n}: preloaded {n} secrets in {:.2} s ({:.0}/s)",
        preload.as_secs_f64(),
        n as f64 / preload.as_secs_f64()
    );
    server.stop().await?;

    // 2. Restart with N secrets in the store: time to ready, idle RSS.
    let server = ServerProc::start_with(bin, &dir, &store_args).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle_rss, _) = server.memory_kib();
    let token = bearer(&server).await?;
    let names: Vec<String> = (0..n).map(Dataset::name).collect();
    let deep = (n * 9 / 10).min(n.saturating_sub(1));
    let data = Arc::new(Dataset {
        deep_token: names[deep.saturating_sub(1)].to_ascii_lowercase(),
        names,
        versions,
        value,
    });
    let get_body = sample_get(&server.target, &token, &data).await?;
    if args.read_all_first {
        let took = read_all(&server.target, &token, &data, args.preload_concurrency).await?;
        eprintln!(
            "n={n}: read every secret once in {:.2} s ({:.0}/s)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }

    // 3. The baseline, answering a body as large as a GET's.
    if baseline.is_none() && !args.no_baseline {
        let b = baseline::Baseline::start(
            &root.join("baseline-tls"),
            bytes::Bytes::from(filler(get_body)),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )?;
        *baseline = Some(b);
    }
    let bounds = Bounds {
        max_requests: args.max_requests,
        max_time: Duration::from_secs_f64(args.seconds),
    };
    let warm = Bounds {
        max_requests: args.max_requests,
        max_time: Duration::from_secs_f64(args.warmup),
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut peak_rss = 0;
    let rounds = args.rounds.max(1);
    for &proto in protos {
        for &c in &args.concurrency {
            let mut base_conns = match baseline.as_ref() {
                Some(b) => Some(
                    Target::new(&b.base_url, &b.ca_pem)?
                        .connect_workers(proto, c)
                        .await?,
                ),
                None => None,
            };
            let mut conns = server.target.connect_workers(proto, c).await?;
            let workload = |op| {
                Arc::new(Workload {
                    op,
                    data: data.clone(),
                    bearer: token.clone(),
                    workers: c,
                })
            };
            // Rounds interleave the baseline and every operation, so that a slow stretch of this shared machine
            // hits all of them; each row pools its rounds.
            for round in 0..rounds {
                if let Some(bconns) = base_conns.take() {
                    let workload = workload(Op::Baseline);
                    let bconns = load::warm_up(&workload, bconns, warm).await;
                    let (cell, back) = load::run(workload, bconns, bounds, Server::Baseline).await;
                    base_conns = Some(back);
                    eprintln!("{}", report::progress(n, Op::Baseline, proto, c, &cell));
                    push_pooled(&mut rows, Op::Baseline, proto, c, cell);
                }
                for &op in ops {
                    let workload = workload(op);
                    conns = load::warm_up(&workload, conns, warm).await;
                    let mut label = format!("n{n}-{}-c{c}-{}", proto.label(), op.label());
                    if rounds > 1 {
                        label.push_str(&format!("-r{}", round + 1));
                    }
                    let mut perfs = Vec::new();
                    if let Some(dir) = &args.perf {
                        perfs.push(start_perf(&record_args(
                            server.pid,
                            &dir.join(format!("{label}.data")),
                        ))?);
                    }
                    let stat_file = args
                        .perf_stat
                        .as_ref()
                        .map(|d| d.join(format!("{label}.stat")));
                    if let Some(file) = &stat_file {
                        perfs.push(start_perf(&stat_args(server.pid, file))?);
                    }
                    if !perfs.is_empty() {
                        // Let perf attach before the measured run starts.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let store_cpu_before = store_cpu();
                    let (mut cell, back) =
                        load::run(workload, conns, bounds, Server::Process(server.pid)).await;
                    conns = back;
                    if let (Some(before), Some(after)) = (store_cpu_before, store_cpu()) {
                        cell.store_cpu_s = Some((after - before).max(0.0));
                    }
                    for p in perfs {
                        stop_perf(p).await;
                    }
                    if let Some(file) = &stat_file {
                        cell.syscalls = read_perf_stat(file);
                    }
                    eprintln!("{}", report::progress(n, op, proto, c, &cell));
                    if let Some(e) = &cell.first_error {
                        eprintln!("  first error: {e}");
                    }
                    peak_rss = peak_rss.max(cell.peak_rss_kib);
                    push_pooled(&mut rows, op, proto, c, cell);
                }
            }
        }
    }
    let (rss_after, hwm) = server.memory_kib();
    let restart = (server.creds_after, server.ready_after);
    server.stop().await?;
    let sync_after = probe_sync(root);
    Ok(SizeReport {
        n,
        preload,
        preload_concurrency: args.preload_concurrency,
        empty_ready,
        empty_rss_kib: empty_rss,
        creds_after: restart.0,
        ready_after: restart.1,
        idle_rss_kib: idle_rss,
        peak_rss_kib: peak_rss.max(rss_after),
        hwm_kib: hwm,
        db_bytes: match cluster {
            Some(c) => c.database_bytes(&database).await?,
            None => db_size(&dir),
        },
        store,
        get_body_bytes: get_body,
        load_before,
        load_after: report::loadavg(),
        sync_before,
        sync_after,
        rows,
    })
}

/// The data disk's sync latency now, as text for the report (see [`disk`]): 100 syncs or 1 s.
fn probe_sync(dir: &Path) -> String {
    match disk::sync_latency(dir, 100, Duration::from_secs(1)) {
        Ok(s) => s.describe(),
        Err(e) => format!("not measured ({e})"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn bearer(server: &ServerProc) -> Result<HeaderValue, String> {
    let c = &server.creds;
    let token = client::fetch_token(
        &server.target,
        &c.authority_host,
        &c.tenant_id,
        &c.client_id,
        &c.client_secret,
    )
    .await?;
    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())
}

/// PUT `n` secrets with `workers` concurrent connections; returns each one's version and the time taken.
async fn preload(
    target: &Target,
    bearer: &HeaderValue,
    n: usize,
    value: &str,
    workers: usize,
) -> Result<(Vec<String>, Duration), String> {
    let conns = target.connect_workers(Proto::H1, workers.max(1)).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let body = bytes::Bytes::from(format!(r#"{{"value":"{value}"}}"#));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let next = next.clone();
        let body = body.clone();
        let bearer = bearer.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(got);
                }
                let path = format!("/secrets/{}?api-version={}", Dataset::name(i), load::API);
                let (status, bytes) = conn
                    .send(Call {
                        method: Method::PUT,
                        path: &path,
                        bearer: Some(&bearer),
                        body: Some(body.clone()),
                        form: false,
                    })
                    .await?;
                if status != StatusCode::OK {
                    return Err(format!(
                        "preload PUT answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ));
                }
                let json: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| format!("preload answer: {e}"))?;
                let id = json["id"].as_str().ok_or("preload answer without id")?;
                let version = id.rsplit('/').next().unwrap_or_default().to_string();
                got.push((i, version));
            }
        }));
    }
    let mut versions = vec![String::new(); n];
    for t in tasks {
        for (i, v) in t.await.map_err(|e| format!("preload worker: {e}"))?? {
            versions[i] = v;
        }
    }
    Ok((versions, started.elapsed()))
}

/// GET every secret once with `workers` concurrent connections; returns the time taken.
async fn read_all(
    target: &Target,
    bearer: &HeaderValue,
    data: &Arc<Dataset>,
    workers: usize,
) -> Result<Duration, String> {
    let conns = target.connect_workers(Proto::H1, workers.max(1)).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (next, bearer, data) = (next.clone(), bearer.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = data.names.get(i) else {
                    return Ok::<_, String>(());
                };
                let path = format!("/secrets/{name}?api-version={}", load::API);
                let (status, bytes) = conn
                    .send(Call {
                        method: Method::GET,
                        path: &path,
                        bearer: Some(&bearer),
                        body: None,
                        form: false,
                    })
                    .await?;
                if status != StatusCode::OK {
                    return Err(format!(
                        "GET {name} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("read-all worker: {e}"))??;
    }
    Ok(started.elapsed())
}

/// GET one secret; returns the response body's size (the baseline answers as many bytes).
async fn sample_get(
    target: &Target,
    bearer: &HeaderValue,
    data: &Dataset,
) -> Result<usize, String> {
    let mut conn = target.connect(Proto::H1).await?;
    let path = format!("/secrets/{}?api-version={}", data.names[0], load::API);
    let (status, body) = conn
        .send(Call {
            method: Method::GET,
            path: &path,
            bearer: Some(bearer),
            body: None,
            form: false,
        })
        .await?;
    if status != StatusCode::OK {
        return Err(format!("GET {path} answered {status}"));
    }
    Ok(body.len())
}

/// A JSON body of exactly `len` bytes (at least the 12 of `{"value":""}`).
fn filler(len: usize) -> Vec<u8> {
    let pad = len.saturating_sub(12);
    format!(r#"{{"value":"{}"}}"#, "x".repeat(pad)).into_bytes()
}

fn db_size(dir: &Path) -> u64 {
    ["vault.db", "vault.db-wal", "vault.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

struct Perf {
    child: std::process::Child,
}

/// Add a run to the rows: pooled into the row of the same operation, protocol and concurrency if there is one.
fn push_pooled(rows: &mut Vec<Row>, op: Op, proto: Proto, concurrency: usize, cell: load::Cell) {
    match rows
        .iter_mut()
        .find(|r| r.op == op && r.proto == proto && r.concurrency == concurrency)
    {
        Some(row) => row.cell.absorb(cell),
        None => rows.push(Row {
            op,
            proto,
            concurrency,
            cell,
        }),
    }
}

/// The syscalls counted by `--perf-stat` (tracepoints), and context switches.
const STAT_EVENTS: &[&str] = &[
    "syscalls:sys_enter_fdatasync",
    "syscalls:sys_enter_fsync",
    "syscalls:sys_enter_pwrite64",
    "syscalls:sys_enter_pread64",
    "syscalls:sys_enter_fcntl",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_getrandom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_madvise",
    "context-switches",
    "page-faults",
];

fn record_args(pid: u32, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "record",
        "-q",
        "-e",
        "cpu-clock",
        "-F",
        "499",
        "--call-graph",
        "dwarf,16384",
        "-p",
    ]
    .map(String::from)
    .to_vec();
    a.push(pid.to_string());
    a.push("-o".into());
    a.push(out.to_string_lossy().into_owned());
    a
}

fn stat_args(pid: u32, out: &Path) -> Vec<String> {
    vec![
        "stat".into(),
        "-x,".into(),
        "-e".into(),
        STAT_EVENTS.join(","),
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        out.to_string_lossy().into_owned(),
    ]
}

fn start_perf(args: &[String]) -> Result<Perf, String> {
    let child = std::process::Command::new("perf")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    Ok(Perf { child })
}

/// (event, count) pairs from `perf stat -x,` output.
fn read_perf_stat(file: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let count = f.first()?.trim().parse::<f64>().ok()?;
            let event = f.get(2)?.trim();
            let short = event.strip_prefix("syscalls:sys_enter_").unwrap_or(event);
            Some((short.to_string(), count))
        })
        .collect()
}

async fn stop_perf(mut p: Perf) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &p.child.id().to_string()])
        .status();
    for _ in 0..600 {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}
