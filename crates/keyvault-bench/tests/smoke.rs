//! `keyvault-bench --smoke` against the real `keyvault` binary: every operation on N = 200 secrets, a few
//! seconds, and sequential gets through the `keyvault-secrets` client (not Python); exit status 0 only if
//! every request succeeded. Then the same matrix with the server on PostgreSQL (`--store postgres`, a private
//! cluster; skipped without PostgreSQL binaries). No timing assertions. And `python/count_instructions.py`
//! (the server under callgrind) on a handful of requests (skipped without valgrind), and `python/ab.py` (two
//! builds compared in alternating runs) on one pair of smoke runs.
//!
//! The server binary is the workspace's `target/<profile>/keyvault`, which `cargo test --workspace` builds
//! (keyvault-cli's integration tests run it); alone: `cargo build -p keyvault-cli && cargo test -p keyvault-bench`.

use std::path::PathBuf;
use std::process::Command;

/// The operations every matrix row set has (besides the baseline).
const OPERATIONS: [&str; 8] = [
    "get",
    "get-version",
    "list-first",
    "list-deep",
    "update",
    "set",
    "delete+recover",
    "mixed",
];

/// Runs `keyvault-bench` with `args` against the workspace's server; returns its stdout, after checking that
/// it exited 0.
fn bench(args: &[&str]) -> String {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_keyvault-bench"));
    let server = bench.with_file_name("keyvault");
    assert!(
        server.is_file(),
        "no server binary at {}: build it first (cargo build -p keyvault-cli)",
        server.display()
    );
    let out = Command::new(&bench)
        .args(args)
        .arg("--server-bin")
        .arg(&server)
        .output()
        .expect("keyvault-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keyvault-bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The rows of `op` over `proto` in the report's main tables (throughput, latency, CPU: 12 columns or more).
fn rows<'a>(stdout: &'a str, op: &str, proto: &str) -> Vec<&'a str> {
    any_rows(stdout, op, proto)
        .into_iter()
        .filter(|l| l.matches('|').count() > 12)
        .collect()
}

/// Rows of `op` over `proto` in any of the report's tables.
fn any_rows<'a>(stdout: &'a str, op: &str, proto: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| l.starts_with(&format!("| {op} ")) && l.contains(&format!("| {proto} |")))
        .collect()
}

/// The rows of `op` over `proto` in the CPU and scheduling tables: (CPU idle %, client CPU µs/op, server
/// waited µs/op, client waited µs/op).
fn scheduling_rows(stdout: &str, op: &str, proto: &str) -> Vec<(f64, f64, f64, f64)> {
    any_rows(stdout, op, proto)
        .into_iter()
        .filter(|l| l.matches('|').count() == 8)
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let num = |s: &str| {
                s.trim_end_matches(" %")
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("not a number: {s:?} in {l}"))
            };
            (num(cells[4]), num(cells[5]), num(cells[6]), num(cells[7]))
        })
        .collect()
}

#[test]
fn smoke_run_exercises_every_operation() {
    // Two interleaved rounds: each row must pool both (one row per operation, protocol and concurrency).
    // Every secret is read once before the first run (a GET answered otherwise than 200 fails the harness).
    let stdout = bench(&["--smoke", "--rounds", "2", "--read-all-first"]);
    for op in std::iter::once("baseline").chain(OPERATIONS) {
        for proto in ["h1", "h2"] {
            assert_eq!(
                rows(&stdout, op, proto).len(),
                3,
                "{op} {proto}: not one row per concurrency (1, 16, 64) in:\n{stdout}"
            );
        }
    }
    // The CPU and scheduling table: a row per operation, protocol and concurrency, with an idle share in
    // 0–100 %, the load generator's CPU, and waits that are not negative.
    assert!(
        stdout.contains("CPU and scheduling during the measured run"),
        "{stdout}"
    );
    for op in std::iter::once("baseline").chain(OPERATIONS) {
        for proto in ["h1", "h2"] {
            let sched = scheduling_rows(&stdout, op, proto);
            assert_eq!(
                sched.len(),
                3,
                "{op} {proto}: scheduling rows in:\n{stdout}"
            );
            for (idle, client_cpu, server, client) in sched {
                assert!((0.0..=100.0).contains(&idle), "{op} {proto}: idle {idle}");
                // The load generator did the work of every request: it used some CPU.
                assert!(client_cpu > 0.0, "{op} {proto}: client CPU {client_cpu}");
                assert!(server >= 0.0 && client >= 0.0, "{op} {proto}: waits");
            }
        }
    }
    assert!(stdout.contains("## Targets"), "{stdout}");
    assert!(stdout.contains("2 interleaved rounds"), "{stdout}");
    assert!(
        stdout.contains("every secret read once after the restart"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Disk sync (4 KiB write + fsync"),
        "{stdout}"
    );
    // The client-library section, Rust client only (no Python in smoke runs).
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("| keyvault-secrets SecretClient")),
        "no keyvault-secrets client row in:\n{stdout}"
    );
}

/// `--smoke --store postgres`: the same matrix against `keyvault serve --store postgres://…` on a private
/// cluster, with PostgreSQL's CPU per operation. Skipped (with a message) without PostgreSQL binaries.
#[test]
fn smoke_run_on_postgres_exercises_every_operation() {
    let stdout = bench(&["--smoke", "--store", "postgres", "--protos", "h1"]);
    if stdout.contains("PostgreSQL matrix skipped") {
        eprintln!("SKIPPED smoke_run_on_postgres_exercises_every_operation: {stdout}");
        return;
    }
    assert!(stdout.contains("Store: PostgreSQL"), "{stdout}");
    assert!(stdout.contains("| PostgreSQL CPU µs/op |"), "{stdout}");
    for op in OPERATIONS {
        let rows = rows(&stdout, op, "h1");
        assert_eq!(
            rows.len(),
            3,
            "{op}: not one row per concurrency in:\n{stdout}"
        );
        for row in rows {
            // The PostgreSQL CPU column holds a figure (not "–") for every keyvault operation.
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(
                cells[11].parse::<f64>().is_ok(),
                "{op}: no PostgreSQL CPU figure in {row}"
            );
        }
    }
    assert!(stdout.contains("on PostgreSQL, GET latest"), "{stdout}");
}

/// `python/count_instructions.py` against the workspace's server, with a few requests of each kind: the
/// profile has a positive count for them. Skipped (with a message) without valgrind or Python 3.
#[test]
fn count_instructions_script_counts_requests() {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("valgrind") || !have("python3") {
        eprintln!("skipped: valgrind or python3 not found");
        return;
    }
    let server = PathBuf::from(env!("CARGO_BIN_EXE_keyvault-bench")).with_file_name("keyvault");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/count_instructions.py");
    let dir = tempfile::tempdir().unwrap();
    for (op, connections) in [("get", "1"), ("set", "2")] {
        let profile = dir.path().join(format!("{op}.callgrind"));
        let out = Command::new("python3")
            .arg(&script)
            .arg(&server)
            .args(["--op", op, "--requests", "6", "--names", "4"])
            .args(["--connections", connections, "--out"])
            .arg(&profile)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "count_instructions.py --op {op} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["requests"], 6, "{report}");
        assert!(
            report["instructions_per_request"].as_u64().unwrap() > 1_000,
            "{report}"
        );
        assert!(profile.is_file(), "the profile is kept where --out says");
    }
}

/// `python/ab.py` with the workspace's server as both builds, one pair of `--smoke` runs over HTTP/1.1: a
/// summary row for each operation and concurrency, with a share of the baseline for each build. Skipped (with
/// a message) without Python 3.
#[test]
fn ab_script_compares_two_builds() {
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("skipped: python3 not found");
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_keyvault-bench"));
    let server = bench.with_file_name("keyvault");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/ab.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&server)
        .arg(&server)
        .args(["--pairs", "1", "--bench"])
        .arg(&bench)
        .args(["--", "--smoke", "--protos", "h1", "--ops", "get,set"])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ab.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for op in ["get", "set"] {
        for c in [1, 16, 64] {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {op} | h1 | {c} | ")))
                .unwrap_or_else(|| panic!("no summary row for {op} c={c} in:\n{stdout}"));
            assert!(row.contains("% | ") && row.contains("of 1 |"), "{row}");
        }
    }
}
