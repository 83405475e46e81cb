//! `keyvault snapshot` with the real binary over SQLite: `serve --dev` with secrets (versions, tags, a
//! soft-deleted one) and a principal made through the admin API; a snapshot taken while another thread keeps
//! setting new versions; the server stopped; a new data directory made of the original `kek.key` and the
//! snapshot's files serves every secret acknowledged before the snapshot began, and the writes of the busy
//! thread as one point in time; the README's restore into the original data directory starts too. A second
//! snapshot into the same directory is refused, and so is a PostgreSQL store.

mod cli_support;

use cli_support::{Out, command, kv_dev, run_with, serve_dev, stop_server};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `keyvault ARGS` (no vault).
fn tool(args: &[&str]) -> Out {
    run_with(command(None), args, None)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// One version of a secret as the vault shows it.
fn show(data: &Path, name: &str, version: &str) -> serde_json::Value {
    kv_dev(
        data,
        &["secret", "show", name, "--version", version, "-o", "json"],
    )
    .ok()
    .json()
}

/// The version ids of `name`, sorted.
fn versions(data: &Path, name: &str) -> Vec<String> {
    let out = kv_dev(data, &["secret", "list-versions", name, "-o", "value"]).ok();
    let mut ids: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    ids.sort();
    ids
}

/// Sets `name` to `value` (and `extra` arguments): the new version's id.
fn set(data: &Path, name: &str, value: &str, extra: &[&str]) -> String {
    let mut args = vec!["secret", "set", name, "--value", value, "-o", "json"];
    args.extend_from_slice(extra);
    kv_dev(data, &args).ok().json()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_snapshot_taken_while_serving_restores_every_acknowledged_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve_dev(&data, &[], &[]);

    // What the vault holds before the snapshot: versions with and without tags, a soft-deleted secret.
    let mut db = Vec::new();
    for i in 0..3 {
        let tags: &[&str] = if i == 1 {
            &["--tags", "env=prod", "team=web"]
        } else {
            &[]
        };
        db.push((set(&data, "db", &format!("db-value-{i}"), tags), i));
    }
    let plain = set(&data, "plain", "plain-value", &["--content-type", "text/x"]);
    set(&data, "gone", "gone-value", &[]);
    kv_dev(&data, &["secret", "delete", "gone", "--wait"]).ok();
    let principal = kv_dev(
        &data,
        &[
            "principal",
            "create",
            "--name",
            "billing",
            "--role",
            "Key Vault Secrets User",
            "--scope",
            "/secrets/db",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    let client_id = principal["clientId"].as_str().unwrap().to_string();
    assert!(data.join("access.json").exists());

    // A thread keeps setting new versions of `busy`, one after another, recording each acknowledged one.
    let busy: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (busy, stop, data) = (busy.clone(), stop.clone(), data.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let version = set(&data, "busy", &format!("busy-{i}"), &[]);
                busy.lock().unwrap().push(version);
                i += 1;
            }
        })
    };
    let wait_for_busy = |n: usize| {
        while busy.lock().unwrap().len() < n {
            assert!(!writer.is_finished(), "the writer thread stopped");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for_busy(2);

    // The snapshot, under those writes.
    let acknowledged_before = busy.lock().unwrap().clone();
    let out_dir = dir.path().join("backups").join("snap-1");
    let out_arg = out_dir.to_str().unwrap();
    let data_arg = data.to_str().unwrap();
    let taken = tool(&[
        "snapshot",
        "--data-dir",
        data_arg,
        "--out",
        out_arg,
        "-o",
        "json",
    ])
    .ok();
    let acknowledged_after_count = busy.lock().unwrap().len();
    // Writes go on after the snapshot ended (so it was taken between writes, not after the last one).
    wait_for_busy(acknowledged_after_count + 1);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let all_busy = busy.lock().unwrap().clone();
    let report = taken.json();

    // The report: the copy's counts, the key it needs (the data directory's kek.key), access.json.
    let kek_id = tool(&["kek", "id", data.join("kek.key").to_str().unwrap()])
        .ok()
        .stdout
        .trim()
        .to_string();
    let copy = out_dir.join("vault.db");
    assert_eq!(report["path"], out_arg);
    assert_eq!(report["database"]["path"], copy.to_str().unwrap());
    assert_eq!(report["database"]["names"], 4);
    assert_eq!(report["database"]["deleted_names"], 1);
    assert_eq!(report["database"]["key_check_kek_id"], kek_id.as_str());
    assert_eq!(
        report["kek_ids_needed"],
        serde_json::json!([kek_id.as_str()])
    );
    assert_eq!(
        report["database"]["bytes"],
        std::fs::metadata(&copy).unwrap().len()
    );
    let copied_busy = report["database"]["versions"].as_u64().unwrap() - 5;
    assert_eq!(
        report["access_file"],
        out_dir.join("access.json").to_str().unwrap()
    );
    assert!(
        report["reminder"]
            .as_str()
            .unwrap()
            .contains("not in the snapshot"),
        "{report}"
    );
    // Nothing of a value, nor the key, in what it printed.
    let key_text = std::fs::read_to_string(data.join("kek.key")).unwrap();
    for secret in [
        "db-value-",
        "plain-value",
        "gone-value",
        "busy-",
        key_text.trim(),
    ] {
        assert!(
            !taken.stdout.contains(secret) && !taken.stderr.contains(secret),
            "{secret}"
        );
    }
    // Only the database and access.json, owner-only.
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["access.json", "vault.db"]);
    #[cfg(unix)]
    {
        assert_eq!(mode(&out_dir), 0o700);
        assert_eq!(mode(&copy), 0o600);
        assert_eq!(mode(&out_dir.join("access.json")), 0o600);
    }

    // A second snapshot into the same directory is refused (exit 4), and leaves the first one as it was.
    let first = std::fs::read(&copy).unwrap();
    let again = tool(&["snapshot", "--data-dir", data_arg, "--out", out_arg]).code(4);
    assert!(again.stderr.contains("is not empty"), "{}", again.stderr);
    assert_eq!(std::fs::read(&copy).unwrap(), first);

    // The table summary says the same, for people.
    let summary_dir = dir.path().join("backups").join("snap-table");
    let summary = tool(&[
        "snapshot",
        "--data-dir",
        data_arg,
        "--out",
        summary_dir.to_str().unwrap(),
    ])
    .ok();
    assert!(
        summary.stdout.contains("4 name(s) (1 soft-deleted)")
            && summary
                .stdout
                .contains(&format!("key check under key id {kek_id}"))
            && summary
                .stdout
                .contains("not copied: the key-encryption key"),
        "{}",
        summary.stdout
    );
    stop_server(server);

    // A new data directory: the original key and the snapshot's files.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(data.join("kek.key"), restored.join("kek.key")).unwrap();
    std::fs::copy(&copy, restored.join("vault.db")).unwrap();
    std::fs::copy(out_dir.join("access.json"), restored.join("access.json")).unwrap();
    let server = serve_dev(&restored, &[], &[]);
    check_restored(&restored, &db, &plain, &client_id);
    // `busy`: every version acknowledged before the snapshot began, and the versions of the copy are the
    // first ones written (one point in time: no later write without every earlier one).
    let copied = versions(&restored, "busy");
    assert_eq!(copied.len() as u64, copied_busy);
    let mut expected: Vec<String> = all_busy[..copied.len()].to_vec();
    expected.sort();
    assert_eq!(copied, expected);
    assert!(copied.len() >= acknowledged_before.len());
    // At most one set is in flight at a time: it may have committed before the copy began and been
    // acknowledged only after the snapshot ended.
    assert!(copied.len() <= acknowledged_after_count + 1);
    for version in &copied {
        let i = all_busy.iter().position(|v| v == version).unwrap();
        assert_eq!(
            show(&restored, "busy", version)["value"],
            format!("busy-{i}")
        );
    }
    // The restored vault takes writes.
    set(&restored, "after-restore", "x", &[]);
    stop_server(server);

    // The README's restore into the original data directory: stop (done), remove the WAL files, put the
    // snapshot's files back, start. The store marker there names this same store, which is not empty.
    for stale in ["vault.db-wal", "vault.db-shm"] {
        let _ = std::fs::remove_file(data.join(stale));
    }
    std::fs::copy(&copy, data.join("vault.db")).unwrap();
    std::fs::copy(out_dir.join("access.json"), data.join("access.json")).unwrap();
    let server = serve_dev(&data, &[], &[]);
    check_restored(&data, &db, &plain, &client_id);
    assert_eq!(versions(&data, "busy").len(), copied.len());
    stop_server(server);
}

/// What was acknowledged before the snapshot, in the vault of `data`.
fn check_restored(data: &Path, db: &[(String, usize)], plain: &str, client_id: &str) {
    let mut expected: Vec<String> = db.iter().map(|(v, _)| v.clone()).collect();
    expected.sort();
    assert_eq!(versions(data, "db"), expected);
    for (version, i) in db {
        let shown = show(data, "db", version);
        assert_eq!(shown["value"], format!("db-value-{i}"));
        let tags: BTreeMap<String, String> =
            serde_json::from_value(shown["tags"].clone()).unwrap_or_default();
        if *i == 1 {
            assert_eq!(
                tags,
                BTreeMap::from([
                    ("env".to_string(), "prod".to_string()),
                    ("team".to_string(), "web".to_string())
                ])
            );
        } else {
            assert!(tags.is_empty(), "{shown}");
        }
    }
    // The latest is the last set.
    let latest = kv_dev(data, &["secret", "show", "db", "-o", "value"]).ok();
    assert_eq!(latest.stdout, "db-value-2\n");
    let shown = show(data, "plain", plain);
    assert_eq!(shown["value"], "plain-value");
    assert_eq!(shown["contentType"], "text/x");
    // Still soft-deleted, and recoverable with its value.
    kv_dev(data, &["secret", "show", "gone"]).code(3);
    let deleted = kv_dev(data, &["secret", "list-deleted", "-o", "value"]).ok();
    assert!(
        deleted.stdout.lines().any(|l| l == "gone"),
        "{}",
        deleted.stdout
    );
    kv_dev(data, &["secret", "recover", "gone", "--wait"]).ok();
    assert_eq!(
        kv_dev(data, &["secret", "show", "gone", "-o", "value"])
            .ok()
            .stdout,
        "gone-value\n"
    );
    // The principal made through the admin API, from access.json.
    let principals = kv_dev(data, &["principal", "list", "-o", "value"]).ok();
    assert!(
        principals.stdout.lines().any(|l| l == client_id),
        "{}",
        principals.stdout
    );
}

/// A PostgreSQL store is refused before anything is connected to or created (the URL's password is not
/// repeated); so is a data directory without a database, and a --out that is a file.
#[test]
fn snapshot_refuses_postgres_a_missing_database_and_a_file_as_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snap");
    let pg = tool(&[
        "snapshot",
        "--store",
        "postgres://keyvault:hunter2-pw@127.0.0.1:1/vault",
        "--out",
        out.to_str().unwrap(),
    ])
    .code(2);
    assert!(
        pg.stderr.contains("PostgreSQL") && pg.stderr.contains("pg_dump"),
        "{}",
        pg.stderr
    );
    assert!(!pg.stderr.contains("hunter2-pw"), "{}", pg.stderr);
    assert!(!out.exists());

    let empty = dir.path().join("empty-data");
    // `snapshot --data-dir DATA --out OUT`, expected to exit 2.
    let refused = |data: &std::path::Path, out: &std::path::Path| {
        tool(&[
            "snapshot",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .code(2)
    };
    let missing = refused(&empty, &out);
    assert!(
        missing.stderr.contains("there is no database"),
        "{}",
        missing.stderr
    );
    assert!(!out.exists());

    // A data directory with a database that is not a vault's: exit 2, and no directory left behind.
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("vault.db"), b"not a database, just text").unwrap();
    let not_vault = refused(&empty, &out);
    assert!(
        not_vault.stderr.contains("vault.db"),
        "{}",
        not_vault.stderr
    );
    assert!(!out.exists());

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // Another user's directory, even empty and whatever its mode: refused (they could swap the copy for a
    // link while it is made). Only when this test may give a directory away (root).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
        let e = refused(&empty, &theirs);
        assert!(e.stderr.contains("belongs to another user"), "{}", e.stderr);
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    }
    let not_dir = refused(&empty, &file);
    assert!(
        not_dir.stderr.contains("not a directory"),
        "{}",
        not_dir.stderr
    );
}

/// Ctrl-C (SIGINT) while the copy is being made: exit 130, and nothing is left — no `vault.db`, no temporary
/// copy, and the directory the command made is gone. The database is made large enough (about 40 MB, through
/// the store library: a snapshot never opens values) for the copy to take a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_leaves_nothing() {
    use keyvault_server::store::{SecretStore, VersionRow, sqlite::SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let store = SqliteStore::open(&data.join("vault.db")).unwrap();
    let mut writes = Vec::new();
    for i in 0..5_000u32 {
        writes.push(store.put_version(
            "v",
            VersionRow {
                name: format!("s{i}"),
                version: format!("{i:032x}"),
                sealed: vec![(i % 251) as u8; 8192],
                content_type: None,
                tags: None,
                enabled: true,
                nbf: None,
                exp: None,
                created: 1,
                updated: 1,
            },
        ));
        if writes.len() == 512 {
            for w in writes.drain(..) {
                w.await.unwrap();
            }
        }
    }
    for w in writes {
        w.await.unwrap();
    }
    store.close().await;
    drop(store);

    let out = dir.path().join("snap");
    let child = command(None)
        .args([
            "snapshot",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        // The temporary copy appears once the copy has begun.
        let copying = || {
            std::fs::read_dir(&out).is_ok_and(|mut d| {
                d.any(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(".vault.db.partial-")
                })
            })
        };
        while !copying() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the copy never began"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let sent = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let output = child.wait_with_output().unwrap();
        (output, out)
    })
    .await
    .unwrap();
    let (output, out) = status;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.code() == Some(0) {
        // The copy won the race (a fast disk): then it is whole, and named.
        eprintln!("the copy finished before the signal");
        assert!(out.join("vault.db").is_file(), "{stderr}");
        return;
    }
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        !out.exists(),
        "left behind: {:?}",
        std::fs::read_dir(&out).map(|d| d.count())
    );
}
