//! The audit log's MACs through the real binary: `keyvault audit verify` with and without the server's keys,
//! a rewritten chain (the tampering audit's F3), the server's start over a rewritten last line, a log from
//! before MACs continued, and the chain's head in the server's own log (start, rotation, shutdown).

mod cli_support;

use cli_support::{LogLines, Out, Server, command, log_field, run_with, spawn_server, stop_server};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `serve --dev` over `data` (plus `extra` arguments); its address and every line it logs.
fn serve(data: &Path, extra: &[&str]) -> (Server, String, LogLines) {
    let mut c = command(None);
    c.args(cli_support::dev_serve_args(data)).args(extra);
    spawn_server(c)
}

/// `n` unauthenticated GETs (each a 401 and an audit line).
async fn requests(data: &Path, addr: &str, n: usize) {
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();
    for _ in 0..n {
        let resp = http
            .get(format!("https://{addr}/secrets?api-version=7.6"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
}

/// `keyvault audit verify ARGS` (with `--config CONFIG` when given), in a clean environment.
fn verify(config: Option<&Path>, args: &[&str]) -> Out {
    let mut all = vec!["audit", "verify"];
    if let Some(c) = config {
        all.extend(["--config", c.to_str().unwrap()]);
    }
    all.extend(args);
    run_with(command(None), &all, None)
}

/// A configuration file naming `data` as the data directory (its kek.key is the key), plus `extra`.
fn config_for(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join("keyvault.toml");
    std::fs::write(
        &path,
        format!("data_dir = {:?}\n{extra}", data.to_str().unwrap()),
    )
    .unwrap();
    path
}

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

/// The tampering audit's rewrite (a19 t6_rechain.py): line `n` (1-based) made to say a request was allowed,
/// and every hash and `prev` from there on computed again with plain SHA-256. Like the script, the rewritten
/// lines lose their `mac`, unless `keep_mac` keeps each line's old one.
fn rechain(path: &Path, n: usize, keep_mac: bool) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut prev: Option<String> = None;
    for (i, line) in lines.iter_mut().enumerate().skip(n - 1) {
        let cut = line.rfind(",\"hash\":").unwrap();
        let mac = line
            .find(",\"mac\":")
            .map(|m| line[m..line.len() - 1].to_string());
        let mut body = line[..cut].to_string();
        if i == n - 1 {
            let edited = body
                .replacen(
                    "\"outcome\":\"unauthenticated\"",
                    "\"outcome\":\"allowed\"",
                    1,
                )
                .replacen("\"status\":401", "\"status\":200", 1);
            assert_ne!(edited, body);
            body = edited;
        }
        if let Some(p) = &prev {
            let at = body.find(",\"prev\":\"").unwrap() + 9;
            body.replace_range(at..at + 64, p);
        }
        let hash = sha256_hex(&format!("{body}}}"));
        *line = match (keep_mac, mac) {
            (true, Some(mac)) => format!("{body},\"hash\":\"{hash}\"{mac}}}"),
            _ => format!("{body},\"hash\":\"{hash}\"}}"),
        };
        prev = Some(hash);
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The value of `name` in the last logged line containing `text`.
fn logged(lines: &LogLines, text: &str, name: &str) -> String {
    let lines = lines.lock().unwrap();
    let line = (lines.iter().rev().find(|l| l.contains(text)))
        .unwrap_or_else(|| panic!("no line with '{text}' in {lines:?}"));
    log_field(line, name).unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Waits (at most 10 s) until a logged line contains `text`.
fn wait_for(lines: &LogLines, text: &str) {
    let start = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l.contains(text)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no line with '{text}' in {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_rewritten_chain_fails_verify_with_the_keys_and_a_rewritten_last_line_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let config = config_for(dir.path(), &data, "");
    let log = data.join("audit.log");
    let (server, addr, lines) = serve(&data, &[]);
    requests(&data, &addr, 20).await;
    stop_server(server);

    // Without keys: the chain holds, and it says the MACs were not checked and how to check them.
    let out = verify(None, &[log.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("ok: 20 line(s)"), "{}", out.stdout);
    assert!(
        out.stderr.contains("MACs were not checked (20 of 20"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--config"), "{}", out.stderr);
    // With them: every line authenticated.
    let out = verify(Some(&config), &["--chain", log.to_str().unwrap()]).ok();
    assert!(
        out.stdout
            .contains("macs: 20 line(s) authenticated; 0 line(s) from before MACs"),
        "{}",
        out.stdout
    );
    // The head logged at shutdown is the last line's.
    let last_hash = out
        .stdout
        .split("last hash ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        logged(&lines, "chain head at shutdown", " hash="),
        last_hash
    );
    assert_eq!(logged(&lines, "chain head at shutdown", " seq="), "19");
    let pristine = std::fs::read(&log).unwrap();

    // Line 12 rewritten, the MACs kept: the hash chain holds (the attack as it was), the keys catch it.
    rechain(&log, 12, true);
    let out = verify(None, &["--chain", log.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("ok: 20 line(s)"), "{}", out.stdout);
    let out = verify(Some(&config), &["--chain", log.to_str().unwrap()]).code(2);
    assert!(
        out.stderr.contains("not intact") && out.stderr.contains("audit.log:12: "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("MAC does not verify"), "{}", out.stderr);
    // The audit's script as it is (the rewritten lines lose their MACs): a removed MAC, with or without keys.
    std::fs::write(&log, &pristine).unwrap();
    rechain(&log, 12, false);
    for config in [None, Some(config.as_path())] {
        let out = verify(config, &[log.to_str().unwrap()]).code(2);
        assert!(out.stderr.contains("audit.log:12: "), "{}", out.stderr);
        assert!(out.stderr.contains("a MAC was removed"), "{}", out.stderr);
    }

    // The last line rewritten: the server refuses to start (exit 2), and says why; the log is untouched.
    for keep_mac in [true, false] {
        std::fs::write(&log, &pristine).unwrap();
        rechain(&log, 20, keep_mac);
        let rewritten = std::fs::read(&log).unwrap();
        let out = run_with(
            {
                let mut c = command(None);
                c.args(cli_support::dev_serve_args(&data));
                c
            },
            &[],
            None,
        )
        .code(2);
        assert!(
            out.stderr.contains("cannot open the audit log"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(if keep_mac {
                "the last line's MAC does not verify"
            } else {
                "a MAC was removed"
            }),
            "{}",
            out.stderr
        );
        assert_eq!(std::fs::read(&log).unwrap(), rewritten);
    }
    // Keys that cannot be loaded: the log cannot be checked (1), which is not "not intact" (2).
    std::fs::write(&log, &pristine).unwrap();
    let missing = config_for(dir.path(), &dir.path().join("nowhere"), "");
    let out = verify(Some(&missing), &[log.to_str().unwrap()]).code(1);
    assert!(
        out.stderr.contains("cannot verify the audit log's MACs"),
        "{}",
        out.stderr
    );
}

/// A log written before MACs is continued (the upgrade boundary), and the chain's head is logged at start and at
/// every rotation; verify with the keys reports the lines from before MACs.
#[tokio::test]
async fn an_old_log_is_continued_and_the_head_is_logged_at_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    // First start: the keys and the data directory; then the log is replaced by one from before MACs.
    let (server, _, _) = serve(&data, &[]);
    stop_server(server);
    let log = data.join("audit.log");
    std::fs::remove_file(&log).unwrap();
    {
        // Just under the 1 MiB the server is given below: the first lines it writes rotate the file.
        let old = keyvault_server::audit::AuditLog::open(&log, 1 << 30).unwrap();
        let mut i = 0;
        while std::fs::metadata(&log).map_or(0, |m| m.len()) < (1 << 20) - 2048 {
            let mut r = keyvault_server::audit::AuditRecord::new(format!("old-{i}"));
            r.status = 401;
            old.record_written(r);
            i += 1;
        }
        old.close().await;
    }
    let old = keyvault_server::audit::verify_file(&log).unwrap();
    assert_eq!(old.mac_lines, 0);
    let config = config_for(dir.path(), &data, "audit_max_bytes = 1048576\n");

    let (server, addr, lines) = serve(&data, &["--config", config.to_str().unwrap()]);
    // Where the chain continues, and that its last line had no MAC.
    assert_eq!(
        logged(&lines, "continues its chain after this head", " hash="),
        old.last_hash.clone().unwrap()
    );
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("last line has no MAC")),
        "{:?}",
        lines.lock().unwrap()
    );
    requests(&data, &addr, 30).await;
    wait_for(&lines, "the audit log was rotated");
    // The head logged at the rotation is the rotated file's last line.
    let rotated = keyvault_server::audit::verify_file(&data.join("audit.log.1")).unwrap();
    assert_eq!(
        logged(&lines, "the audit log was rotated", " file="),
        data.join("audit.log.1").display().to_string()
    );
    assert_eq!(
        logged(&lines, "the audit log was rotated", " seq="),
        rotated.last_seq.unwrap().to_string()
    );
    assert_eq!(
        logged(&lines, "the audit log was rotated", " hash="),
        rotated.last_hash.unwrap()
    );
    stop_server(server);

    let out = verify(Some(&config), &["--chain", log.to_str().unwrap()]).ok();
    let total = old.lines + 30;
    assert!(
        out.stdout
            .contains(&format!("ok: {total} line(s) in 2 file(s)")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "macs: 30 line(s) authenticated; {} line(s) from before MACs (not authenticated)",
            old.lines
        )),
        "{}",
        out.stdout
    );
}

/// A KEK rotation: lines signed under the old key verify while it is given as a previous key, and not without
/// it; the restarted server, whose current key is the new one, continues a log whose last line is under the old
/// with a line of its own under the new key (`AuditKeyChange`).
#[tokio::test]
async fn lines_under_a_previous_kek_verify_while_it_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let log = data.join("audit.log");
    let (server, addr, _) = serve(&data, &[]);
    requests(&data, &addr, 3).await;
    stop_server(server);
    let new_key = dir.path().join("kek-new.key");
    run_with(
        command(None),
        &["kek", "new", new_key.to_str().unwrap()],
        None,
    )
    .ok();
    let old_key = data.join("kek.key");
    let rotated = config_for(
        dir.path(),
        &data,
        &format!(
            "kek_file = {:?}\nprevious_kek_files = [{:?}]\n",
            new_key.to_str().unwrap(),
            old_key.to_str().unwrap()
        ),
    );
    let (server, addr, _) = serve(&data, &["--config", rotated.to_str().unwrap()]);
    requests(&data, &addr, 4).await;
    stop_server(server);

    // 3 lines under the old key, the start's own AuditKeyChange line under the new one, then 4 requests.
    let out = verify(Some(&rotated), &[log.to_str().unwrap()]).ok();
    assert!(
        out.stdout.contains(
            "macs: 8 line(s) authenticated (3 under a previous key); 0 line(s) from before MACs"
        ),
        "{}",
        out.stdout
    );
    let fourth = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .nth(3)
        .unwrap()
        .to_string();
    assert!(
        fourth.contains("\"operation\":\"AuditKeyChange\""),
        "{fourth}"
    );
    // The new key alone: the old key's first line fails.
    let new_only = dir.path().join("new-only.toml");
    std::fs::write(
        &new_only,
        format!(
            "data_dir = {:?}\nkek_file = {:?}\n",
            data.to_str().unwrap(),
            new_key.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = verify(Some(&new_only), &[log.to_str().unwrap()]).code(2);
    assert!(out.stderr.contains("audit.log:1: "), "{}", out.stderr);
    // The old key alone: the first line under the new key fails.
    let old_only = config_for(dir.path(), &data, "");
    let out = verify(Some(&old_only), &[log.to_str().unwrap()]).code(2);
    assert!(out.stderr.contains("audit.log:4: "), "{}", out.stderr);
    // The same keys in the variables, as the key files hold them (64 hex characters, what `kek new` and the
    // server write), not only as base64.
    let hex_of = |path: &Path| std::fs::read_to_string(path).unwrap().trim().to_string();
    let mut c = command(None);
    c.env("KEYVAULT_KEK", hex_of(&new_key))
        .env("KEYVAULT_PREVIOUS_KEKS", format!("{},", hex_of(&old_key)));
    let out = run_with(c, &["audit", "verify", log.to_str().unwrap()], None).ok();
    assert!(
        out.stdout
            .contains("macs: 8 line(s) authenticated (3 under a previous key)"),
        "{}",
        out.stdout
    );
}

/// A dev vault (started without a configuration file): `--data-dir` gives its kek.key, which checks the MACs
/// and catches an edit the chain alone does not.
#[tokio::test]
async fn a_dev_vault_log_is_checked_with_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let log = data.join("audit.log");
    let (server, addr, _) = serve(&data, &[]);
    requests(&data, &addr, 5).await;
    stop_server(server);
    let with_dir = |args: &[&str]| {
        let mut all = vec!["--data-dir", data.to_str().unwrap()];
        all.extend(args);
        verify(None, &all)
    };
    let out = with_dir(&[log.to_str().unwrap()]).ok();
    assert!(
        out.stdout
            .contains("macs: 5 line(s) authenticated; 0 line(s) from before MACs"),
        "{}",
        out.stdout
    );
    rechain(&log, 3, true);
    assert!(
        verify(None, &[log.to_str().unwrap()])
            .ok()
            .stdout
            .contains("ok: 5 line(s)")
    );
    let out = with_dir(&[log.to_str().unwrap()]).code(2);
    assert!(
        out.stderr.contains("audit.log:3: ") && out.stderr.contains("MAC does not verify"),
        "{}",
        out.stderr
    );
    // With KEYVAULT_CONFIG in the environment, --data-dir wins (no usage error, whose exit 2 would read as "not
    // intact"); with --config on the command line too, refused (exit 1).
    // `audit verify --data-dir DATA LOG` with `var` set in its environment.
    let with_dir_and = |var: &str, value: &str| {
        let mut c = command(None);
        c.env(var, value);
        let (data, log) = (data.to_str().unwrap(), log.to_str().unwrap());
        run_with(c, &["audit", "verify", "--data-dir", data, log], None)
    };
    let out = with_dir_and("KEYVAULT_CONFIG", "/nonexistent/keyvault.toml").code(2);
    assert!(out.stderr.contains("MAC does not verify"), "{}", out.stderr);
    let out = with_dir(&[
        "--config",
        "/nonexistent/keyvault.toml",
        log.to_str().unwrap(),
    ])
    .code(1);
    assert!(out.stderr.contains("not both"), "{}", out.stderr);
    // KEYVAULT_KEK set as well: refused (exit 1), not a log reported forged under another key.
    let out = with_dir_and("KEYVAULT_KEK", &"11".repeat(32)).code(1);
    assert!(out.stderr.contains("KEYVAULT_KEK is set"), "{}", out.stderr);
    // A directory without a key: the MACs cannot be checked (exit 1), said so.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = verify(
        None,
        &["--data-dir", empty.to_str().unwrap(), log.to_str().unwrap()],
    )
    .code(1);
    assert!(
        out.stderr.contains("cannot verify the audit log's MACs"),
        "{}",
        out.stderr
    );
}
