//! `keyvault-bench --smoke` against the real `keyvault` binary: every operation on N = 200 secrets, a few
//! seconds, and sequential gets through the `keyvault-secrets` client (not Python, not PostgreSQL); exit
//! status 0 only if every request succeeded. No timing assertions.
//!
//! The server binary is the workspace's `target/<profile>/keyvault`, which `cargo test --workspace` builds
//! (keyvault-cli's integration tests run it); alone: `cargo build -p keyvault-cli && cargo test -p keyvault-bench`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_run_exercises_every_operation() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_keyvault-bench"));
    let server = bench.with_file_name("keyvault");
    assert!(
        server.is_file(),
        "no server binary at {}: build it first (cargo build -p keyvault-cli)",
        server.display()
    );
    let out = Command::new(&bench)
        .arg("--smoke")
        // Two interleaved rounds: each row must pool both (one row per operation, protocol and concurrency).
        .args(["--rounds", "2"])
        .arg("--server-bin")
        .arg(&server)
        .output()
        .expect("keyvault-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keyvault-bench --smoke failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for op in [
        "baseline",
        "get",
        "get-version",
        "list-first",
        "list-deep",
        "update",
        "set",
        "delete+recover",
    ] {
        for proto in ["h1", "h2"] {
            let rows = stdout
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("| {op} ")) && l.contains(&format!("| {proto} |"))
                })
                .count();
            assert_eq!(
                rows, 3,
                "{op} {proto}: not one row per concurrency (1, 16, 64) in:\n{stdout}"
            );
        }
    }
    assert!(stdout.contains("## Targets"), "{stdout}");
    assert!(stdout.contains("2 interleaved rounds"), "{stdout}");
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
