//! `--postgres`: the PostgreSQL store. Starts a private PostgreSQL cluster on 127.0.0.1 (durable settings:
//! `fsync` and `synchronous_commit` on, as a production database would run), `keyvault serve --dev --store
//! postgres://…` on it, preloads N secrets, and measures SET and GET at each concurrency — and, in the same
//! run and on the same cluster, PostgreSQL's own rate for
//!
//! - `pg insert`: single-row `INSERT INTO bench_t (id, v) VALUES ($1, $2)` in autocommit (one durable commit
//!   each) from `c` tokio-postgres connections, rows as large as the store's version rows;
//! - `pg put-shaped txn`: the statements of the store's former put path without HTTP and crypto (BEGIN;
//!   upsert-lock the name row; INSERT the version; UPDATE the name's latest; COMMIT: five round trips);
//! - `pg put statement`: the store's current put (one statement: upsert the name row pointing at the new
//!   version, insert the version),
//!
//! the two put shapes on tables with the store's kind of indexes (schema version 5: the names' primary key and
//! partial index of live names, the versions' unique (name, version)).
//!
//! The cluster is `keyvault_server::store::pgtest`'s, started with production durability
//! ([`PgCluster::start_durable`]). PostgreSQL refuses to run as root: as root, the cluster runs as
//! `$KEYVAULT_PG_USER` (default `nobody`) through `runuser`.

use crate::client::Proto;
use crate::load::{self, Bounds, Cell, Dataset, Op, Rng, Server, Workload};
use crate::process::{ServerProc, cpu_seconds};
use crate::report;
use keyvault_server::store::pgtest::{PgCluster, find_binaries};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls, Statement};

/// CPU seconds of the postmaster and its children (backends, WAL writer, checkpointer, …).
fn pg_cpu_seconds(postmaster: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = cpu_seconds(&format!("/proc/{postmaster}/stat"));
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            total += cpu_seconds(&format!("/proc/{pid}/stat"));
        }
    }
    total
}

async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL's own rates

const BENCH_SCHEMA: &str = r#"
CREATE TABLE bench_t (id TEXT PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE bench_names (
    k          TEXT COLLATE "C" PRIMARY KEY,
    display    TEXT NOT NULL,
    latest     TEXT COLLATE "C" NOT NULL,
    deleted_on BIGINT
) WITH (fillfactor = 80);
CREATE INDEX bench_names_live ON bench_names (k) WHERE deleted_on IS NULL;
CREATE TABLE bench_versions (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY,
    k       TEXT COLLATE "C" NOT NULL,
    version TEXT COLLATE "C" NOT NULL,
    v       BYTEA  NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (k, version)
);
"#;
const SQL_INSERT: &str = "INSERT INTO bench_t (id, v) VALUES ($1, $2)";
const SQL_LOCK: &str = "INSERT INTO bench_names (k, display, latest) VALUES ($1, $1, '')
     ON CONFLICT (k) DO UPDATE SET display = EXCLUDED.display WHERE bench_names.deleted_on IS NULL
     RETURNING 1";
const SQL_VERSION: &str =
    "INSERT INTO bench_versions (k, version, v, created) VALUES ($1, $2, $3, $4)";
const SQL_LATEST: &str = "UPDATE bench_names SET latest = $2 WHERE k = $1";
/// The store's one-statement put (schema version 4): create the name's row or lock it and point it at the
/// new version, then insert the version (one index entry).
const SQL_PUT_ONE: &str = "WITH n AS (
         INSERT INTO bench_names (k, display, latest)
         VALUES ($1::text, $1::text, $2::text)
         ON CONFLICT (k) DO UPDATE
             SET display = EXCLUDED.display,
                 latest = EXCLUDED.latest
             WHERE bench_names.deleted_on IS NULL
         RETURNING 1)
     INSERT INTO bench_versions (k, version, v, created)
     SELECT $1::text, $2::text, $3::bytea, $4::bigint FROM n
     RETURNING 1";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One autocommit single-row INSERT.
    Insert,
    /// The store's former put: BEGIN; lock/upsert; INSERT version; UPDATE latest; COMMIT.
    PutTxn,
    /// The store's current put: one autocommit statement (CTE upsert + insert).
    PutOne,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::Insert => "pg insert (autocommit)",
            Shape::PutTxn => "pg put-shaped txn (5 round trips)",
            Shape::PutOne => "pg put statement (1 round trip)",
        }
    }
}

struct PgConn {
    client: Client,
    stmts: Vec<Statement>,
}

async fn connect_workers(url: &str, shape: Shape, c: usize) -> Result<Vec<PgConn>, String> {
    let mut conns = Vec::with_capacity(c);
    for _ in 0..c {
        let client = connect(url).await?;
        let sqls: &[&str] = match shape {
            Shape::Insert => &[SQL_INSERT],
            Shape::PutTxn => &[SQL_LOCK, SQL_VERSION, SQL_LATEST],
            Shape::PutOne => &[SQL_PUT_ONE],
        };
        let mut stmts = Vec::new();
        for sql in sqls {
            stmts.push(client.prepare(sql).await.map_err(pg_err)?);
        }
        conns.push(PgConn { client, stmts });
    }
    Ok(conns)
}

/// Unique ids across every run of this process.
static RUN: AtomicU64 = AtomicU64::new(0);

/// A closed-loop run of `shape` on `conns` within `bounds` (as [`load::run`] does for HTTP).
async fn pg_run(
    conns: Vec<PgConn>,
    shape: Shape,
    bounds: Bounds,
    names: usize,
    row: Arc<Vec<u8>>,
) -> (Cell, Vec<PgConn>) {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + bounds.max_time;
    let mut tasks = Vec::new();
    for (w, mut conn) in conns.into_iter().enumerate() {
        let issued = issued.clone();
        let row = row.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first: Option<String> = None;
            let mut rng = Rng::new(run * 1000 + w as u64 + 1);
            let mut k = 0u64;
            while Instant::now() < deadline
                && issued.fetch_add(1, Ordering::Relaxed) < bounds.max_requests
            {
                k += 1;
                let id = format!("{run:04x}{w:04x}{k:024x}");
                let t = Instant::now();
                let result = match shape {
                    Shape::Insert => conn
                        .client
                        .execute(&conn.stmts[0], &[&id, &row.as_slice()])
                        .await
                        .map(|_| ()),
                    Shape::PutTxn => {
                        let key = Dataset::name(rng.below(names)).to_ascii_lowercase();
                        put_txn(&mut conn, &key, &id, &row).await
                    }
                    Shape::PutOne => {
                        let key = Dataset::name(rng.below(names)).to_ascii_lowercase();
                        let now: i64 = 1_700_000_000;
                        conn.client
                            .query_opt(&conn.stmts[0], &[&key, &id, &row.as_slice(), &now])
                            .await
                            .map(|_| ())
                    }
                };
                match result {
                    Ok(()) => lat.push(t.elapsed().as_nanos() as u64),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(pg_err(e));
                    }
                }
            }
            (lat, errors, first, conn)
        }));
    }
    let mut cell = Cell::default();
    let mut back = Vec::new();
    for t in tasks {
        match t.await {
            Ok((lat, errors, first, conn)) => {
                cell.ok += lat.len() as u64;
                cell.errors += errors;
                if cell.first_error.is_none() {
                    cell.first_error = first;
                }
                cell.latencies.extend(lat);
                back.push(conn);
            }
            Err(e) => {
                cell.errors += 1;
                cell.first_error
                    .get_or_insert(format!("worker panicked: {e}"));
            }
        }
    }
    cell.elapsed = started.elapsed();
    cell.latencies.sort_unstable();
    (cell, back)
}

async fn put_txn(
    conn: &mut PgConn,
    key: &str,
    version: &str,
    row: &[u8],
) -> Result<(), tokio_postgres::Error> {
    let PgConn { client, stmts } = conn;
    let tx = client.transaction().await?;
    tx.query_opt(&stmts[0], &[&key]).await?;
    let now: i64 = 1_700_000_000;
    tx.execute(&stmts[1], &[&key, &version, &row, &now]).await?;
    tx.execute(&stmts[2], &[&key, &version]).await?;
    tx.commit().await
}

// ---------------------------------------------------------------------------------------------------------
// The run

pub struct Settings {
    pub n: usize,
    pub concurrency: Vec<usize>,
    pub protos: Vec<Proto>,
    pub ops: Vec<Op>,
    pub bounds: Bounds,
    pub warm: Bounds,
    pub value_bytes: usize,
    pub preload_concurrency: usize,
    /// Diagnostics: log every statement (`log_statement = all`) and copy PostgreSQL's log here at the end.
    pub statement_log: Option<PathBuf>,
    /// Interleaved rounds per concurrency (each operation runs once per round; the figures pool them).
    pub rounds: usize,
}

pub struct PgRow {
    pub label: String,
    pub proto: Option<Proto>,
    pub c: usize,
    pub cell: Cell,
    /// CPU seconds of the keyvault process (HTTP rows only).
    pub kv_cpu_s: Option<f64>,
    pub pg_cpu_s: f64,
    pub wal_bytes: f64,
    pub op: Option<Op>,
    pub shape: Option<&'static str>,
}

pub struct PgReport {
    pub version: String,
    pub n: usize,
    pub preload: Duration,
    pub row_bytes: usize,
    pub kv_row_bytes: f64,
    pub kv_connections: i64,
    pub rounds: usize,
    pub data_fs: String,
    pub load_before: String,
    pub load_after: String,
    /// The cluster disk's sync latency before the first round and after the last ([`crate::disk`]).
    pub sync_before: String,
    pub sync_after: String,
    pub rows: Vec<PgRow>,
}

/// A private durable cluster with an admin connection, for `--postgres` and for the matrix on PostgreSQL
/// (`--store postgres`).
pub struct Cluster {
    cluster: PgCluster,
    admin: Client,
    postmaster: u32,
    /// PostgreSQL's version and its durability settings, for the report.
    pub version: String,
}

impl Cluster {
    /// Starts a cluster under `root`, or None (with a message) if PostgreSQL is not installed.
    pub async fn start(root: &Path) -> Result<Option<Cluster>, String> {
        let Some(pg_bin) = find_binaries() else {
            eprintln!(
                "postgres: SKIPPED: no PostgreSQL binaries (initdb and pg_ctl) in $KEYVAULT_PG_BIN, on PATH or \
                 in /usr/lib/postgresql/*/bin; install PostgreSQL (Debian: apt-get install postgresql) to run this mode"
            );
            return Ok(None);
        };
        eprintln!(
            "postgres: starting a private cluster with {}",
            pg_bin.display()
        );
        let cluster = PgCluster::start_durable(&pg_bin, root)?;
        let postmaster = cluster
            .postmaster_pid()
            .ok_or("cannot read the postmaster's pid")?;
        let admin = connect(&cluster.url_for("postgres")).await?;
        let row = admin
            .query_one(
                "SELECT current_setting('server_version'), current_setting('fsync'), \
                 current_setting('synchronous_commit'), current_setting('wal_level'), \
                 current_setting('shared_buffers')",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let version = format!(
            "PostgreSQL {} (fsync={}, synchronous_commit={}, wal_level={}, shared_buffers={})",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(4)
        );
        eprintln!("postgres: {version}");
        Ok(Some(Cluster {
            cluster,
            admin,
            postmaster,
            version,
        }))
    }

    /// Creates the database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, String> {
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(pg_err)?;
        Ok(self.cluster.url_for(name))
    }

    /// Bytes of the database `name` on disk (tables, indexes, TOAST; not the WAL).
    pub async fn database_bytes(&self, name: &str) -> Result<u64, String> {
        let bytes: i64 = self
            .admin
            .query_one("SELECT pg_database_size($1::text)", &[&name])
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    /// CPU seconds PostgreSQL (the postmaster and every process it started) has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        pg_cpu_seconds(self.postmaster)
    }
}

/// Run the PostgreSQL mode; `Ok(None)` when PostgreSQL is not installed (the message is printed).
pub async fn measure(bin: &Path, root: &Path, s: &Settings) -> Result<Option<PgReport>, String> {
    let load_before = report::loadavg();
    let sync_before = crate::probe_sync(root);
    let Some(pg) = Cluster::start(root).await? else {
        return Ok(None);
    };
    let Cluster {
        cluster,
        admin,
        postmaster,
        version,
    } = pg;
    admin
        .batch_execute("CREATE DATABASE kv")
        .await
        .map_err(pg_err)?;
    admin.batch_execute(BENCH_SCHEMA).await.map_err(pg_err)?;
    if s.statement_log.is_some() {
        for sql in [
            "ALTER SYSTEM SET log_statement = 'all'",
            "ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '",
            "SELECT pg_reload_conf()",
        ] {
            admin.batch_execute(sql).await.map_err(pg_err)?;
        }
    }

    // keyvault on the cluster.
    let dir = root.join("pg-keyvault");
    let server =
        ServerProc::start_with(bin, &dir, &["--store".to_string(), cluster.url_for("kv")]).await?;
    let token = crate::bearer(&server).await?;
    let value: String = "v".repeat(s.value_bytes);
    eprintln!("postgres: preloading {} secrets…", s.n);
    let (versions, preload) =
        crate::preload(&server.target, &token, s.n, &value, s.preload_concurrency).await?;
    eprintln!(
        "postgres: preloaded {} in {:.2} s ({:.0}/s)",
        s.n,
        preload.as_secs_f64(),
        s.n as f64 / preload.as_secs_f64().max(1e-9)
    );
    let kv = connect(&cluster.url_for("kv")).await?;
    let kv_row_bytes: f64 = kv
        .query_one(
            "SELECT COALESCE(avg(pg_column_size(v.*)), 0)::float8 FROM kv_versions AS v",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    drop(kv);
    // The baseline's rows: as large as the store's version rows (id text of 32 characters + the bytes).
    let row_bytes = (kv_row_bytes as usize).saturating_sub(32 + 24).max(64);
    let row = Arc::new(vec![0x5a_u8; row_bytes]);
    let names: Vec<String> = (0..s.n).map(Dataset::name).collect();
    let data = Arc::new(Dataset {
        deep_token: String::new(),
        names,
        versions,
        value,
    });

    let wal_now = async || -> Result<String, String> {
        Ok(admin
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(pg_err)?
            .get(0))
    };
    let wal_since = async |lsn: &str| -> Result<f64, String> {
        Ok(admin
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
                &[&lsn],
            )
            .await
            .map_err(pg_err)?
            .get(0))
    };

    let mut rows = Vec::new();
    let url = cluster.url_for("postgres");
    for &c in &s.concurrency {
        // Rounds interleave every operation so that a slow stretch of the (shared) disk hits all of them.
        for round in 0..s.rounds.max(1) {
            eprintln!("postgres: c={c}, round {}", round + 1);
            for shape in [Shape::Insert, Shape::PutTxn, Shape::PutOne] {
                let mut conns = connect_workers(&url, shape, c).await?;
                if !s.warm.max_time.is_zero() {
                    conns = pg_run(conns, shape, s.warm, s.n, row.clone()).await.1;
                }
                let lsn = wal_now().await?;
                let cpu = pg_cpu_seconds(postmaster);
                let (cell, _) = pg_run(conns, shape, s.bounds, s.n, row.clone()).await;
                let pg_cpu_s = (pg_cpu_seconds(postmaster) - cpu).max(0.0);
                let wal_bytes = wal_since(&lsn).await?;
                eprintln!("{}", progress(shape.label(), c, &cell, pg_cpu_s, wal_bytes));
                push_merged(
                    &mut rows,
                    PgRow {
                        label: shape.label().into(),
                        proto: None,
                        c,
                        cell,
                        kv_cpu_s: None,
                        pg_cpu_s,
                        wal_bytes,
                        op: None,
                        shape: Some(shape.label()),
                    },
                );
            }
            for &proto in &s.protos {
                let mut conns = server.target.connect_workers(proto, c).await?;
                for &op in &s.ops {
                    let workload = Arc::new(Workload {
                        op,
                        data: data.clone(),
                        bearer: token.clone(),
                        workers: c,
                    });
                    conns = load::warm_up(&workload, conns, s.warm).await;
                    let lsn = wal_now().await?;
                    let cpu = pg_cpu_seconds(postmaster);
                    let (cell, back) =
                        load::run(workload, conns, s.bounds, Server::Process(server.pid)).await;
                    conns = back;
                    let pg_cpu_s = (pg_cpu_seconds(postmaster) - cpu).max(0.0);
                    let wal_bytes = wal_since(&lsn).await?;
                    let label = format!("keyvault {}", op.label());
                    eprintln!(
                        "{} ({})",
                        progress(&label, c, &cell, pg_cpu_s, wal_bytes),
                        proto.label()
                    );
                    if let Some(e) = &cell.first_error {
                        eprintln!("  first error: {e}");
                    }
                    push_merged(
                        &mut rows,
                        PgRow {
                            label,
                            proto: Some(proto),
                            c,
                            kv_cpu_s: Some(cell.server_cpu_s),
                            cell,
                            pg_cpu_s,
                            wal_bytes,
                            op: Some(op),
                            shape: None,
                        },
                    );
                }
            }
        }
    }
    let kv_connections: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'keyvault'",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    server.stop().await?;
    drop(admin);
    let data_fs = report::Machine::probe(cluster.path()).data_fs;
    if let Some(to) = &s.statement_log {
        std::fs::copy(cluster.path().join("server.log"), to)
            .map_err(|e| format!("cannot copy PostgreSQL's log to {}: {e}", to.display()))?;
    }
    drop(cluster);
    Ok(Some(PgReport {
        version,
        n: s.n,
        preload,
        row_bytes,
        kv_row_bytes,
        kv_connections,
        rounds: s.rounds.max(1),
        data_fs,
        load_before,
        load_after: report::loadavg(),
        sync_before,
        sync_after: crate::probe_sync(root),
        rows,
    }))
}

/// Add `row`, or fold it into the row of an earlier round of the same run (sums; latencies pooled).
fn push_merged(rows: &mut Vec<PgRow>, row: PgRow) {
    let Some(into) = rows
        .iter_mut()
        .find(|r| r.label == row.label && r.proto == row.proto && r.c == row.c)
    else {
        rows.push(row);
        return;
    };
    into.cell.absorb(row.cell);
    into.kv_cpu_s = match (into.kv_cpu_s, row.kv_cpu_s) {
        (Some(x), Some(y)) => Some(x + y),
        (x, y) => x.or(y),
    };
    into.pg_cpu_s += row.pg_cpu_s;
    into.wal_bytes += row.wal_bytes;
}

fn progress(label: &str, c: usize, cell: &Cell, pg_cpu: f64, wal: f64) -> String {
    let ops = cell.ok.max(1) as f64;
    format!(
        "postgres: {label:<34} c={c:<3} {:>8.0} op/s  p50 {:.3} ms  p99 {:.3} ms  pg cpu {:.0} µs/op  WAL {:.0} B/op  errors {}",
        cell.rate(),
        cell.quantile_ms(0.5),
        cell.quantile_ms(0.99),
        1e6 * pg_cpu / ops,
        wal / ops,
        cell.errors
    )
}

/// The markdown section of a `--postgres` run.
pub fn render(r: &PgReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## PostgreSQL store: keyvault SET / GET vs PostgreSQL's own single-row insert\n\n\
         {}; private cluster on 127.0.0.1, data on {}. keyvault: `serve --dev --store postgres://…`, {} secrets \
         preloaded in {:.2} s ({}/s, c=64); keyvault's connections to PostgreSQL at the end: {}. Version rows \
         average {:.0} bytes; the baseline's rows carry {} bytes of payload. Each row pools {} interleaved rounds (insert, put-shaped txn, keyvault ops, in turn). Load average {} \
         before, {} after. Disk sync (4 KiB write + fsync on the cluster's filesystem): {} before, {} after.\n",
        r.version,
        r.data_fs,
        report::group(r.n as f64),
        r.preload.as_secs_f64(),
        report::group(r.n as f64 / r.preload.as_secs_f64().max(1e-9)),
        r.kv_connections,
        r.kv_row_bytes,
        r.row_bytes,
        r.rounds,
        r.load_before,
        r.load_after,
        r.sync_before,
        r.sync_after
    );
    let _ = writeln!(
        out,
        "| operation | proto | c | op/s | p50 ms | p99 ms | p99.9 ms | keyvault CPU µs/op | PostgreSQL CPU µs/op | WAL bytes/op | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &r.rows {
        let c = &row.cell;
        let ops = c.ok.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {:.0} | {:.0} | {} |",
            row.label,
            row.proto.map(|p| p.label()).unwrap_or("–"),
            row.c,
            report::group(c.rate()),
            c.quantile_ms(0.5),
            c.quantile_ms(0.99),
            c.quantile_ms(0.999),
            row.kv_cpu_s
                .map(|s| format!("{:.0}", 1e6 * s / ops))
                .unwrap_or_else(|| "–".into()),
            1e6 * row.pg_cpu_s / ops,
            row.wal_bytes / ops,
            c.errors
        );
    }
    let _ = writeln!(
        out,
        "\n| c | proto | keyvault SET/s | pg insert/s | SET / insert (target ≥ 80 %) | pg put-shaped txn/s | SET / txn | pg put statement/s | SET / statement |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut concurrencies: Vec<usize> = r.rows.iter().map(|row| row.c).collect();
    concurrencies.dedup();
    for c in concurrencies {
        let shape = |s: Shape| {
            r.rows
                .iter()
                .find(|row| row.c == c && row.shape == Some(s.label()))
        };
        let (Some(insert), Some(txn), Some(one)) = (
            shape(Shape::Insert),
            shape(Shape::PutTxn),
            shape(Shape::PutOne),
        ) else {
            continue;
        };
        for set in r
            .rows
            .iter()
            .filter(|row| row.c == c && row.op == Some(Op::Set))
        {
            let ratio = set.cell.rate() / insert.cell.rate().max(1e-9);
            let _ = writeln!(
                out,
                "| {c} | {} | {} | {} | {:.0} % ({}) | {} | {:.0} % | {} | {:.0} % |",
                set.proto.map(|p| p.label()).unwrap_or("–"),
                report::group(set.cell.rate()),
                report::group(insert.cell.rate()),
                100.0 * ratio,
                if ratio >= 0.8 {
                    "**met**"
                } else {
                    "**MISSED**"
                },
                report::group(txn.cell.rate()),
                100.0 * set.cell.rate() / txn.cell.rate().max(1e-9),
                report::group(one.cell.rate()),
                100.0 * set.cell.rate() / one.cell.rate().max(1e-9)
            );
        }
    }
    out
}
