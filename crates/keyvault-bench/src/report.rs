//! The report: machine, scale figures, one table per store size (every figure also as a ratio to the
//! baseline), and the targets marked met or missed.

use crate::client::Proto;
use crate::load::{Cell, Op};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub mem: String,
    pub kernel: String,
    pub data_fs: String,
}

impl Machine {
    pub fn probe(data_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu,
            mem,
            kernel,
            data_fs: filesystem_of(data_dir),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {} RAM, Linux {}; data dir on {}",
            self.nproc, self.cpu, self.mem, self.kernel, self.data_fs
        )
    }
}

/// The filesystem type holding `path` (longest matching mount point in /proc/mounts).
fn filesystem_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} ({dev})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average, as text.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub struct Row {
    pub op: Op,
    pub proto: Proto,
    pub concurrency: usize,
    pub cell: Cell,
}

pub struct SizeReport {
    pub n: usize,
    pub preload: Duration,
    pub preload_concurrency: usize,
    pub empty_ready: Duration,
    pub empty_rss_kib: u64,
    pub creds_after: Duration,
    pub ready_after: Duration,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub hwm_kib: u64,
    pub db_bytes: u64,
    /// The server's store when it is not the embedded SQLite one (PostgreSQL: version, settings, database).
    pub store: Option<String>,
    pub get_body_bytes: usize,
    pub load_before: String,
    pub load_after: String,
    /// The data disk's sync latency before the size's first run and after its last ([`crate::disk`]).
    pub sync_before: String,
    pub sync_after: String,
    pub rows: Vec<Row>,
}

impl SizeReport {
    fn find(&self, op: Op, proto: Proto, c: usize) -> Option<&Cell> {
        self.rows
            .iter()
            .find(|r| r.op == op && r.proto == proto && r.concurrency == c)
            .map(|r| &r.cell)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Thousands separators: 12345 → 12,345.
pub fn group(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// One line per run, for the progress log.
pub fn progress(n: usize, op: Op, proto: Proto, c: usize, cell: &Cell) -> String {
    format!(
        "n={n} {:<14} {} c={:<3} {:>9} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  cpu {:>5.0} µs/op  disk {:>5.1} KiB/op  errors {}",
        op.label(),
        proto.label(),
        c,
        group(cell.rate()),
        cell.quantile_ms(0.5),
        cell.quantile_ms(0.99),
        cell.quantile_ms(0.999),
        cell.cpu_us_per_op(),
        cell.write_kib_per_op(),
        cell.errors
    )
}

/// An operation as the tables name it.
fn row_label(op: Op) -> &'static str {
    match op {
        Op::DeleteRecover => "delete+recover (pairs)",
        Op::Mixed => "mixed (9 get : 1 set)",
        op => op.label(),
    }
}

/// The table of one store size.
pub fn render_size(s: &SizeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} secrets\n\nGET body {} bytes (the baseline answers as many). Load average {} before, {} after. \
         Disk sync (4 KiB write + fsync in the data directory, what a commit waits for): {} before, {} after.\n",
        group(s.n as f64),
        s.get_body_bytes,
        s.load_before,
        s.load_after,
        s.sync_before,
        s.sync_after
    );
    // On PostgreSQL: its CPU per operation too (the server's own disk writes are then only its audit log).
    let pg = s.store.is_some();
    if let Some(store) = &s.store {
        let _ = writeln!(out, "Store: {store}.\n");
    }
    let _ = writeln!(
        out,
        "| operation | proto | c | req/s | vs baseline | p50 ms | p99 ms | p99.9 ms | p50 / p99 vs baseline | server CPU µs/op (vs baseline) | {}disk KiB/op | errors |",
        if pg { "PostgreSQL CPU µs/op | " } else { "" }
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|{}---:|---:|",
        if pg { "---:|" } else { "" }
    );
    for r in &s.rows {
        let cell = &r.cell;
        let base = (r.op != Op::Baseline)
            .then(|| s.find(Op::Baseline, r.proto, r.concurrency))
            .flatten();
        let (vs, lat, cpu) = match base {
            Some(b) => (
                format!("{:.0} %", 100.0 * cell.rate() / b.rate()),
                format!(
                    "{:.1}× / {:.1}×",
                    cell.quantile_ms(0.5) / b.quantile_ms(0.5),
                    cell.quantile_ms(0.99) / b.quantile_ms(0.99)
                ),
                format!(
                    "{:.0} ({:.1}×)",
                    cell.cpu_us_per_op(),
                    cell.cpu_us_per_op() / b.cpu_us_per_op()
                ),
            ),
            None if r.op == Op::Baseline => (
                "100 %".into(),
                "1×".into(),
                format!("{:.0}", cell.cpu_us_per_op()),
            ),
            None => (
                "–".into(),
                "–".into(),
                format!("{:.0}", cell.cpu_us_per_op()),
            ),
        };
        let label = row_label(r.op);
        let store_cpu = match (pg, cell.store_cpu_us_per_op()) {
            (false, _) => String::new(),
            (true, Some(us)) => format!("{us:.0} | "),
            (true, None) => "– | ".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {}{:.1} | {} |",
            label,
            r.proto.label(),
            r.concurrency,
            group(cell.rate()),
            vs,
            cell.quantile_ms(0.5),
            cell.quantile_ms(0.99),
            cell.quantile_ms(0.999),
            lat,
            cpu,
            store_cpu,
            cell.write_kib_per_op(),
            cell.errors
        );
    }
    let measured: Vec<&Row> = s
        .rows
        .iter()
        .filter(|r| r.cell.machine_all_s > 0.0)
        .collect();
    if !measured.is_empty() {
        let _ = writeln!(
            out,
            "\nCPU and scheduling during the measured run (`/proc`): the machine's CPU time left idle, the load \
             generator's CPU per operation (it shares the machine), and how long the server's threads and the \
             load generator's were ready to run but waited for a CPU, per operation:\n"
        );
        let _ = writeln!(
            out,
            "| operation | proto | c | CPU idle | client CPU µs/op | server waited µs/op | client waited µs/op |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for r in measured {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} % | {:.1} | {:.1} | {:.1} |",
                row_label(r.op),
                r.proto.label(),
                r.concurrency,
                100.0 * r.cell.idle_share(),
                r.cell.client_cpu_us_per_op(),
                r.cell.server_wait_us_per_op(),
                r.cell.client_wait_us_per_op()
            );
        }
    }
    let with_syscalls: Vec<&Row> = s
        .rows
        .iter()
        .filter(|r| !r.cell.syscalls.is_empty())
        .collect();
    if let Some(first) = with_syscalls.first() {
        let names: Vec<&str> = first
            .cell
            .syscalls
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let _ = writeln!(
            out,
            "\nServer syscalls per operation (`perf stat` tracepoints during the measured run):\n"
        );
        let _ = writeln!(out, "| operation | proto | c | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|---|---:|{}", "---:|".repeat(names.len()));
        for r in with_syscalls {
            let per: Vec<String> = r
                .cell
                .syscalls
                .iter()
                .map(|(_, v)| format!("{:.2}", v / r.cell.ok.max(1) as f64))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                row_label(r.op),
                r.proto.label(),
                r.concurrency,
                per.join(" | ")
            );
        }
    }
    out
}

/// The whole report.
pub fn render(
    machine: &Machine,
    settings: &str,
    sizes: &[SizeReport],
    concurrency: &[usize],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Machine\n\n{}\n\n{settings}\n", machine.describe());
    let _ = writeln!(out, "## Scale\n");
    let _ = writeln!(
        out,
        "| secrets | preload (SET over HTTPS) | ready, empty store | ready with N: creds written / first /healthz 200 | RSS empty | RSS idle with N | RSS peak under load | VmHWM | DB on disk |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in sizes {
        let _ = writeln!(
            out,
            "| {} | {}/s (c={}, h1) | {:.0} ms | {:.0} ms / {:.0} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            group(s.n as f64),
            group(s.n as f64 / s.preload.as_secs_f64().max(1e-9)),
            s.preload_concurrency,
            ms(s.empty_ready),
            ms(s.creds_after),
            ms(s.ready_after),
            mib(s.empty_rss_kib),
            mib(s.idle_rss_kib),
            mib(s.peak_rss_kib),
            mib(s.hwm_kib),
            s.db_bytes as f64 / 1024.0 / 1024.0
        );
    }
    let _ = writeln!(out);
    for s in sizes {
        let _ = writeln!(out, "{}", render_size(s));
    }
    let top = concurrency.iter().copied().max().unwrap_or(0);
    let low = concurrency.iter().copied().min().unwrap_or(0);
    let _ = writeln!(out, "## Targets\n");
    for s in sizes {
        for line in targets(s, top, low) {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**MISSED**" }
}

fn targets(s: &SizeReport, top: usize, low: usize) -> Vec<String> {
    let n = match s.store {
        Some(_) => format!("{} on PostgreSQL", group(s.n as f64)),
        None => group(s.n as f64),
    };
    let mut lines = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        if let (Some(get), Some(base)) = (
            s.find(Op::GetLatest, proto, top),
            s.find(Op::Baseline, proto, top),
        ) {
            let ratio = get.rate() / base.rate();
            let p99 = get.quantile_ms(0.99);
            lines.push(format!(
                "{n}, GET latest, {} c={top}: {} req/s = {:.0} % of baseline (target ≥ 75 %: {}), p99 {:.2} ms (target ≤ 5 ms: {})",
                proto.label(),
                group(get.rate()),
                100.0 * ratio,
                verdict(ratio >= 0.75),
                p99,
                verdict(p99 <= 5.0)
            ));
        }
        if let Some(set) = s.find(Op::Set, proto, top) {
            let p99 = set.quantile_ms(0.99);
            lines.push(format!(
                "{n}, SET (durable), {} c={top}: {} req/s (target ≥ 25,000: {}), p99 {:.2} ms (target ≤ 10 ms: {})",
                proto.label(),
                group(set.rate()),
                verdict(set.rate() >= 25_000.0),
                p99,
                verdict(p99 <= 10.0)
            ));
        }
    }
    if let (Some(first), Some(deep)) = (
        s.find(Op::ListFirst, Proto::H1, low),
        s.find(Op::ListDeep, Proto::H1, low),
    ) {
        let ratio = deep.quantile_ms(0.5) / first.quantile_ms(0.5);
        lines.push(format!(
            "{n}, list deep page vs first page, h1 c={low}: p50 {:.3} vs {:.3} ms = {:.2}× (target ≤ 1.2×: {})",
            deep.quantile_ms(0.5),
            first.quantile_ms(0.5),
            ratio,
            verdict(ratio <= 1.2)
        ));
    }
    if s.n >= 1_000_000 {
        lines.push(format!(
            "{n}, RSS with 1M secrets: idle {:.1} MiB, peak under load {:.1} MiB (target ≤ 200 MB: {})",
            mib(s.idle_rss_kib),
            mib(s.peak_rss_kib),
            verdict(s.peak_rss_kib as f64 * 1024.0 <= 200e6)
        ));
        lines.push(format!(
            "{n}, ready with 1M secrets: {:.0} ms to /healthz (target ≤ 200 ms: {})",
            ms(s.ready_after),
            verdict(ms(s.ready_after) <= 200.0)
        ));
    } else {
        lines.push(format!(
            "{n}, RSS idle: {:.1} MiB (target ≤ 50 MB: {}); ready in {:.0} ms",
            mib(s.idle_rss_kib),
            verdict(s.idle_rss_kib as f64 * 1024.0 <= 50e6),
            ms(s.ready_after)
        ));
    }
    lines
}
