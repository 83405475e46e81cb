//! Rotating the key-encryption key with the real binary over SQLite: `serve` with key A, secrets written
//! (several versions, a soft-deleted one, a backup); `keyvault rekey` refused while the server holds the
//! database; `kek new` for key B; `rekey` with B current and A previous; `serve` with B alone reads every
//! value, recovers the deleted one and restores a new backup but not the old one; `serve` with A alone is
//! refused at start.

mod cli_support;

use cli_support::{Out, Server, command, kv_dev, run_dev_serve, run_with, serve_dev, stop_server};
use std::path::{Path, PathBuf};

/// `serve --dev` on `data` (plus `extra`), ready: its credentials written for the address it reports.
fn serve(data: &Path, extra: &[&str]) -> Server {
    serve_dev(data, extra, &[])
}

fn serve_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    serve_dev(data, extra, env)
}

/// `serve --dev` on `data` (plus `extra`) that must fail to start: its stderr.
fn refused(data: &Path, extra: &[&str]) -> String {
    let out = run_dev_serve(data, extra);
    assert_ne!(out.code, 0, "the server started: {}", out.stderr);
    out.stderr
}

fn stop(server: Server) {
    stop_server(server)
}

/// `keyvault ARGS` against the dev server of `data`.
fn kv(data: &Path, args: &[&str]) -> Out {
    kv_dev(data, args)
}

/// `keyvault ARGS` (no vault: rekey and kek).
fn tool(args: &[&str]) -> Out {
    run_with(command(None), args, None)
}

fn key_id(path: &Path) -> String {
    tool(&["kek", "id", path.to_str().unwrap()])
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn file_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// A rotation's paths under `dir`: the data directory, key A (made there by the first `serve`) and key B
/// (made by `kek new`, outside it).
fn rotation_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = dir.join("data");
    let key_a = data.join("kek.key");
    (data, key_a, dir.join("kek-b.key"))
}

/// `DIR/rotate.toml`: the data directory, key B current and key A previous.
fn rotation_config(dir: &Path, data: &Path, key_a: &Path, key_b: &Path) -> PathBuf {
    let config = dir.join("rotate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nkek_file = {:?}\nprevious_kek_files = [{:?}]\n",
            data.display().to_string(),
            key_b.display().to_string(),
            key_a.display().to_string()
        ),
    )
    .unwrap();
    config
}

#[test]
fn rotating_the_key_encryption_key_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key_a, key_b) = rotation_paths(dir.path());

    // Key A (made at the first start): three versions, a deleted secret, a backup.
    let server = serve(&data, &[]);
    let mut versions = Vec::new();
    for i in 0..3 {
        let set = kv(
            &data,
            &[
                "secret",
                "set",
                "db",
                "--value",
                &format!("db-{i}"),
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
        versions.push(set["version"].as_str().unwrap().to_string());
    }
    kv(&data, &["secret", "set", "gone", "--value", "bye"]).ok();
    kv(&data, &["secret", "delete", "gone", "--wait"]).ok();
    kv(&data, &["secret", "set", "kept", "--value", "k"]).ok();
    // A principal made through the admin API: the access document, tagged under key A.
    let app = kv(
        &data,
        &["principal", "create", "--name", "app", "-o", "json"],
    )
    .ok()
    .json();
    let app = app["clientId"].as_str().unwrap().to_string();
    let old_backup = dir.path().join("kept-old.kvbackup");
    kv(
        &data,
        &[
            "secret",
            "backup",
            "kept",
            "--file",
            old_backup.to_str().unwrap(),
        ],
    )
    .ok();

    // Key B, and a configuration with B current and A previous.
    let made = tool(&["kek", "new", key_b.to_str().unwrap()]).ok();
    let (id_a, id_b) = (key_id(&key_a), key_id(&key_b));
    assert_ne!(id_a, id_b);
    assert!(made.stdout.contains(&id_b), "{}", made.stdout);
    let again = tool(&["kek", "new", key_b.to_str().unwrap()]).code(4);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let config = rotation_config(dir.path(), &data, &key_a, &key_b);
    let config = config.to_str().unwrap();

    // The server holds the database: rekey refuses, and changes nothing.
    let busy = tool(&["rekey", "--config", config]).code(1);
    assert!(
        busy.stderr.contains("in use by another process")
            && busy
                .stderr
                .contains("a running keyvault server or another keyvault rekey"),
        "{}",
        busy.stderr
    );
    stop(server);

    // A dry run counts, per key id.
    let dry = tool(&["rekey", "--config", config, "--dry-run", "-o", "json"])
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["before"], serde_json::json!({ id_a.as_str(): 5 }));
    assert_eq!(dry["resealed"], 5);
    assert_eq!(dry["key_check_before"], id_a.as_str());
    // The access document is counted too: under A, it would move to B.
    assert_eq!(
        dry["access_document"],
        serde_json::json!({"kek_id_before": id_a.as_str(), "kek_id_after": id_a.as_str()})
    );
    // As a person reads it: the progress says what it would do, not what it did.
    let dry = tool(&["rekey", "--config", config, "--dry-run"]).ok();
    assert!(
        dry.stderr.contains("would re-seal 5") && !dry.stderr.contains("re-sealed"),
        "{}",
        dry.stderr
    );
    assert!(
        dry.stdout.contains(&format!(
            "access-control document: tagged under key id {id_a}; would be re-tagged under key id {id_b}"
        )),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.is_empty(), "{}", dry.stderr);

    // The rekey: five versions (live and deleted) move to B, and so does the key check.
    let done = tool(&[
        "rekey",
        "--config",
        config,
        "--batch-size",
        "2",
        "-o",
        "json",
    ])
    .ok();
    let report = done.json();
    assert_eq!(report["current_kek_id"], id_b.as_str());
    assert_eq!(
        report["previous_kek_ids"],
        serde_json::json!([id_a.as_str()])
    );
    assert_eq!(report["resealed"], 5);
    assert_eq!(report["already_current"], 0);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["before"], serde_json::json!({ id_a.as_str(): 5 }));
    assert_eq!(report["after"], serde_json::json!({ id_b.as_str(): 5 }));
    assert_eq!(report["key_check_after"], id_b.as_str());
    assert_eq!(
        report["access_document"],
        serde_json::json!({"kek_id_before": id_a.as_str(), "kek_id_after": id_b.as_str()})
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("access.json")).unwrap()).unwrap();
    assert_eq!(stored["kek"], id_b.as_str());
    // Again, as a person reads it: nothing left to do.
    let table = tool(&["rekey", "--config", config]).ok();
    assert!(
        table.stdout.contains("re-sealed 0 version(s)")
            && table.stdout.contains("5 already under it")
            && table.stdout.contains("previous keys may now be removed"),
        "{}",
        table.stdout
    );
    assert!(
        table.stderr.contains(&format!("current key id {id_b}")),
        "{}",
        table.stderr
    );
    // No key material anywhere in what rekey printed.
    for out in [&done, &table] {
        for key in [file_text(&key_a), file_text(&key_b)] {
            assert!(!out.stdout.contains(&key) && !out.stderr.contains(&key));
        }
    }

    // The audit log's last line is still signed under A: a server without A is refused until a line under B
    // is written (any request to a server with B current and A previous).
    let early = refused(&data, &["--kek-file", key_b.to_str().unwrap()]);
    assert!(
        early.contains("the last line's MAC does not verify under this server's keys"),
        "{early}"
    );
    let server = serve(&data, &["--config", config]);
    kv(&data, &["secret", "list"]).ok();
    stop(server);

    // Key B alone: every value, the deleted one recovered, a new backup restores, the old one does not.
    let server = serve(&data, &["--kek-file", key_b.to_str().unwrap()]);
    // The access document verifies under B alone: the principal is there.
    let listed = kv(&data, &["principal", "list", "-o", "json"]).ok().json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["clientId"] == app.as_str()),
        "{listed}"
    );
    for (i, version) in versions.iter().enumerate() {
        let shown = kv(
            &data,
            &["secret", "show", "db", "--version", version, "-o", "value"],
        )
        .ok();
        assert_eq!(shown.stdout, format!("db-{i}\n"));
    }
    kv(&data, &["secret", "recover", "gone", "--wait"]).ok();
    assert_eq!(
        kv(&data, &["secret", "show", "gone", "-o", "value"])
            .ok()
            .stdout,
        "bye\n"
    );
    let new_backup = dir.path().join("kept-new.kvbackup");
    kv(
        &data,
        &[
            "secret",
            "backup",
            "kept",
            "--file",
            new_backup.to_str().unwrap(),
        ],
    )
    .ok();
    kv(&data, &["secret", "delete", "kept", "--wait"]).ok();
    kv(&data, &["secret", "purge", "kept"]).ok();
    let old = kv(
        &data,
        &["secret", "restore", "--file", old_backup.to_str().unwrap()],
    )
    .code(2);
    assert!(
        old.stderr.to_lowercase().contains("backup"),
        "{}",
        old.stderr
    );
    kv(
        &data,
        &["secret", "restore", "--file", new_backup.to_str().unwrap()],
    )
    .ok();
    assert_eq!(
        kv(&data, &["secret", "show", "kept", "-o", "value"])
            .ok()
            .stdout,
        "k\n"
    );
    stop(server);

    // Key A alone is refused at start, naming both ids.
    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains(&format!(
            "the key-encryption key (id {id_a}) is not the one this database was written with (key id {id_b})"
        )),
        "{stderr}"
    );
    // KEYVAULT_KEK wins over --kek-file (as documented), and the server says so: here with key A's bytes,
    // refused like key A's file.
    let mut c = command(None);
    c.env("KEYVAULT_KEK", file_text(&key_a))
        .args(cli_support::dev_serve_args(&data))
        .args(["--kek-file", key_b.to_str().unwrap()]);
    let out = run_with(c, &[], None);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("KEYVAULT_KEK is set")
            && out
                .stderr
                .contains("kek_file (--kek-file, KEYVAULT_KEK_FILE) is not read")
            && out.stderr.contains(&format!("key id {id_b}")),
        "{}",
        out.stderr
    );
    // Key A current with B previous (which opens the key check) is refused too: rekey retired A.
    let backwards = dir.path().join("backwards.toml");
    std::fs::write(
        &backwards,
        format!("previous_kek_files = [{:?}]\n", key_b.display().to_string()),
    )
    .unwrap();
    let stderr = refused(&data, &["--config", backwards.to_str().unwrap()]);
    assert!(
        stderr.contains(&format!(
            "key-encryption key id {id_a} was retired by `keyvault rekey`; make key {id_b} current"
        )) && stderr.contains(&format!("{id_a} may stay as a previous key")),
        "{stderr}"
    );
}

/// Scripts read a dry run's exit code: with versions its keys cannot open (written under key B, which a
/// configuration with key A alone lacks) it exits 6, still printing its report; with both keys, 0 (a rekey
/// would re-seal what is under A); `--check`, the gate before dropping a key, exits 6 until nothing is left
/// under A, and 0 after the rekey.
#[test]
fn a_dry_run_that_cannot_open_versions_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key_a, key_b) = rotation_paths(dir.path());
    let server = serve(&data, &[]);
    kv(&data, &["secret", "set", "old", "--value", "a"]).ok();
    stop(server);
    tool(&["kek", "new", key_b.to_str().unwrap()]).ok();
    let config = rotation_config(dir.path(), &data, &key_a, &key_b);
    let config = config.to_str().unwrap();
    let server = serve(&data, &["--config", config]);
    kv(&data, &["secret", "set", "new", "--value", "b"]).ok();
    stop(server);

    let only_a = dir.path().join("only-a.toml");
    std::fs::write(
        &only_a,
        format!(
            "data_dir = {:?}\nkek_file = {:?}\n",
            data.display().to_string(),
            key_a.display().to_string()
        ),
    )
    .unwrap();
    let dry = tool(&[
        "rekey",
        "--config",
        only_a.to_str().unwrap(),
        "--dry-run",
        "-o",
        "json",
    ])
    .code(6);
    let report = dry.json();
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["failures"][0]["name_key"], "new", "{report}");
    assert!(
        dry.stderr
            .contains("1 version(s) could not be opened with these keys"),
        "{}",
        dry.stderr
    );
    let dry = tool(&["rekey", "--config", config, "--dry-run", "-o", "json"])
        .ok()
        .json();
    assert_eq!(dry["failed"], 0, "{dry}");
    assert_eq!(dry["resealed"], 1, "{dry}");
    let check = tool(&["rekey", "--config", config, "--check"]).code(6);
    assert!(
        check
            .stderr
            .contains("1 version(s) under other keys, the key check under key id"),
        "{}",
        check.stderr
    );
    tool(&["rekey", "--config", config]).ok();
    tool(&["rekey", "--config", config, "--check"]).ok();
}

/// What an interrupted rekey leaves (its target recorded, one version re-sealed under key B, the key check
/// still under A), made with the library, deterministically: a server with A alone is refused, naming B and
/// what to do; with B as a previous key it starts and reads every value; `keyvault rekey` then completes.
/// Key configuration errors exit 2.
#[test]
fn an_interrupted_rekey_refuses_a_server_without_its_target() {
    use keyvault_server::crypto::{Envelope, FileKeyProvider, KeyRing};
    use keyvault_server::store::{SecretStore, sqlite::SqliteStore};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (data, key_a, key_b) = rotation_paths(dir.path());
    let server = serve(&data, &[]);
    for i in 0..3 {
        kv(
            &data,
            &[
                "secret",
                "set",
                &format!("s{i}"),
                "--value",
                &format!("v{i}"),
            ],
        )
        .ok();
    }
    stop(server);
    tool(&["kek", "new", key_b.to_str().unwrap()]).ok();
    let (id_a, id_b) = (key_id(&key_a), key_id(&key_b));

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let load = |p: &Path| FileKeyProvider::load_existing(p).unwrap().kek().clone();
        let rotated = Envelope::new(Arc::new(KeyRing::new(load(&key_b), [load(&key_a)])));
        let store = SqliteStore::open(&data.join("vault.db")).unwrap();
        keyvault_server::store::begin_rekey(&store, &rotated)
            .await
            .unwrap();
        let first = store.sealed_page(None, 1).await.unwrap().remove(0);
        let new = rotated
            .reseal(&first.vault, &first.name_key, &first.version, &first.sealed)
            .unwrap();
        let change = first.replace_with(new);
        assert_eq!(store.replace_sealed(vec![change]).await.unwrap(), 1);
    });

    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains(&format!(
            "a `keyvault rekey` to key-encryption key id {id_b} started (and may have been interrupted)"
        )) && stderr.contains("run `keyvault rekey` again"),
        "{stderr}"
    );
    let previous_b = base64(&key_bytes(&key_b));
    let server = serve_with_env(&data, &[], &[("KEYVAULT_PREVIOUS_KEKS", &previous_b)]);
    for i in 0..3 {
        let shown = kv(&data, &["secret", "show", &format!("s{i}"), "-o", "value"]).ok();
        assert_eq!(shown.stdout, format!("v{i}\n"));
    }
    stop(server);

    // Key configuration errors are exit code 2; a variable's entry is named by position, not as a file.
    let data_arg = data.to_str().unwrap();
    let missing = tool(&[
        "rekey",
        "--data-dir",
        data_arg,
        "--kek-file",
        "/nonexistent/kek.key",
    ])
    .code(2);
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    let mut c = command(None);
    c.env("KEYVAULT_PREVIOUS_KEKS", "not-a-key");
    let garbage = run_with(c, &["rekey", "--data-dir", data_arg], None).code(2);
    assert!(
        garbage.stderr.contains("entry 1 is not") && !garbage.stderr.contains("key file:"),
        "{}",
        garbage.stderr
    );

    // The rekey run again completes (B current, A previous).
    let config = dir.path().join("rotate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nkek_file = {:?}\nprevious_kek_files = [{:?}]\n",
            data.display().to_string(),
            key_b.display().to_string(),
            key_a.display().to_string()
        ),
    )
    .unwrap();
    let done = tool(&["rekey", "--config", config.to_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    assert_eq!(done["resealed"], 2);
    assert_eq!(done["already_current"], 1);
    assert_eq!(done["retired"], serde_json::json!([id_a.as_str()]));
    // With no previous key configured, the summary does not talk of removing any.
    let table = tool(&[
        "rekey",
        "--data-dir",
        data_arg,
        "--kek-file",
        key_b.to_str().unwrap(),
    ])
    .ok();
    assert!(
        table.stdout.contains("3 already under it")
            && !table.stdout.contains("previous keys may now be removed"),
        "{}",
        table.stdout
    );
    // A line under B first (the audit log's last line is under A), then B alone.
    let server = serve(&data, &["--config", config.to_str().unwrap()]);
    kv(&data, &["secret", "list"]).ok();
    stop(server);
    let server = serve(&data, &["--kek-file", key_b.to_str().unwrap()]);
    stop(server);
    assert_ne!(id_a, id_b);
}

/// Standard base64 of `bytes` (the form of `KEYVAULT_PREVIOUS_KEKS`).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The key in a key file (64 hex digits), as raw bytes.
fn key_bytes(path: &Path) -> Vec<u8> {
    let hex = file_text(path);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// With the old key kept as a previous key (a file, or `KEYVAULT_PREVIOUS_KEKS`), a backup made before the
/// rotation still restores; a key file listed as previous must exist.
#[test]
fn an_old_backup_restores_while_its_key_is_a_previous_key() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key_a, key_b) = rotation_paths(dir.path());
    let server = serve(&data, &[]);
    kv(&data, &["secret", "set", "s", "--value", "v"]).ok();
    let blob = dir.path().join("s.kvbackup");
    kv(
        &data,
        &["secret", "backup", "s", "--file", blob.to_str().unwrap()],
    )
    .ok();
    stop(server);

    tool(&["kek", "new", key_b.to_str().unwrap()]).ok();
    let config = dir.path().join("rotate.toml");
    std::fs::write(
        &config,
        format!("previous_kek_files = [{:?}]\n", key_a.display().to_string()),
    )
    .unwrap();
    tool(&[
        "rekey",
        "--data-dir",
        data.to_str().unwrap(),
        "--kek-file",
        key_b.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .ok();
    let server = serve(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--kek-file",
            key_b.to_str().unwrap(),
        ],
    );
    kv(&data, &["secret", "delete", "s", "--wait"]).ok();
    kv(&data, &["secret", "purge", "s"]).ok();
    kv(
        &data,
        &["secret", "restore", "--file", blob.to_str().unwrap()],
    )
    .ok();
    assert_eq!(
        kv(&data, &["secret", "show", "s", "-o", "value"])
            .ok()
            .stdout,
        "v\n"
    );
    stop(server);

    // The same with the old key in KEYVAULT_PREVIOUS_KEKS (after an empty entry) instead of the file; and
    // without it, the blob is refused.
    let restore = |code: i32| {
        kv(&data, &["secret", "delete", "s", "--wait"]).ok();
        kv(&data, &["secret", "purge", "s"]).ok();
        kv(
            &data,
            &["secret", "restore", "--file", blob.to_str().unwrap()],
        )
        .code(code);
    };
    let listed = format!(",{}", base64(&key_bytes(&key_a)));
    let server = serve_with_env(
        &data,
        &["--kek-file", key_b.to_str().unwrap()],
        &[("KEYVAULT_PREVIOUS_KEKS", &listed)],
    );
    restore(0);
    stop(server);
    let server = serve(&data, &["--kek-file", key_b.to_str().unwrap()]);
    restore(2);
    stop(server);

    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "previous_kek_files = [\"/nonexistent/kek.key\"]\n",
    )
    .unwrap();
    let stderr = refused(
        &data,
        &[
            "--config",
            missing.to_str().unwrap(),
            "--kek-file",
            key_b.to_str().unwrap(),
        ],
    );
    assert!(
        stderr.contains("previous key-encryption key") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

/// `keyvault rekey --online` on SQLite: the server, restarted with key B current and A previous, re-seals
/// while it serves (no downtime beyond that restart). A dry run counts; the rekey moves every version, the
/// deleted one too, and the key check; writes go on meanwhile; a principal without the administration
/// permission is refused (exit 5); afterwards B alone serves every value and A current is refused.
#[test]
fn rekey_online_re_seals_while_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key_a, key_b) = rotation_paths(dir.path());

    let server = serve(&data, &[]);
    for i in 0..3 {
        kv(
            &data,
            &["secret", "set", "db", "--value", &format!("db-{i}")],
        )
        .ok();
    }
    kv(&data, &["secret", "set", "gone", "--value", "bye"]).ok();
    kv(&data, &["secret", "delete", "gone", "--wait"]).ok();
    stop(server);

    tool(&["kek", "new", key_b.to_str().unwrap()]).ok();
    let (id_a, id_b) = (key_id(&key_a), key_id(&key_b));
    let config = rotation_config(dir.path(), &data, &key_a, &key_b);
    let server = serve(&data, &["--config", config.to_str().unwrap()]);

    // A dry run through the server: the counts, nothing changed.
    let dry = kv(&data, &["rekey", "--online", "--dry-run", "-o", "json"])
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["before"], serde_json::json!({ id_a.as_str(): 4 }));
    assert_eq!(dry["resealed"], 4);
    // --check, the gate before dropping key A: the server holds both keys, and still it is not passed.
    let check = kv(&data, &["rekey", "--online", "--check"]).code(6);
    assert!(
        check.stderr.contains(&format!(
            "4 version(s) under other keys, the key check under key id {id_a}"
        )),
        "{}",
        check.stderr
    );

    // A write under B before the rekey, then the rekey with a small batch; the progress goes to stderr.
    kv(&data, &["secret", "set", "db", "--value", "db-3"]).ok();
    let done = kv(&data, &["rekey", "--online", "--batch-size", "2"]).ok();
    assert!(
        done.stdout.contains("re-sealed 4 version(s)")
            && done.stdout.contains("1 already under it")
            && done
                .stdout
                .contains(&format!("key check: {id_a} -> {id_b}"))
            && done.stdout.contains(&format!("retired key ids: {id_a}")),
        "{}",
        done.stdout
    );
    assert!(
        done.stderr.contains("rekey job ") && done.stderr.contains("re-sealed 4"),
        "{}",
        done.stderr
    );
    // The audit log has the job's start, with its settings, and its end, with the retired key id.
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let line_of = |op: &str| -> serde_json::Value {
        let line = audit
            .lines()
            .rfind(|l| l.contains(&format!("\"operation\":\"{op}\"")))
            .unwrap_or_else(|| panic!("no {op} line in {audit}"));
        serde_json::from_str(line).unwrap()
    };
    let started = line_of("RekeyStart");
    let finished = line_of("RekeyFinished");
    assert!(
        started["target"]
            .as_str()
            .is_some_and(|t| t.contains("dryRun=false batchSize=2")),
        "{started}"
    );
    assert_eq!(finished["requestId"], started["requestId"]);
    assert_eq!(finished["principal"], started["principal"]);
    assert_eq!(finished["status"], 200, "{finished}");
    assert!(
        finished["target"]
            .as_str()
            .is_some_and(|t| t.contains("dryRun=false status=succeeded")
                && t.ends_with(&format!("retired={id_a}"))),
        "{finished}"
    );

    // Now everything is under B: the gate passes.
    kv(&data, &["rekey", "--online", "--check"]).ok();

    // The server keeps serving, and the last job's report stays readable.
    assert_eq!(
        kv(&data, &["secret", "show", "db", "-o", "value"])
            .ok()
            .stdout,
        "db-3\n"
    );
    let again = kv(&data, &["rekey", "--online", "-o", "json"]).ok().json();
    assert_eq!(again["resealed"], 0);
    assert_eq!(again["after"], serde_json::json!({ id_b.as_str(): 5 }));

    // A principal that may read but not administer is refused, and starts nothing.
    let reader = kv(
        &data,
        &[
            "principal",
            "create",
            "--name",
            "reader",
            "--role",
            "Key Vault Secrets User",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("dev-credentials.json")).unwrap()).unwrap();
    let mut c = command(None);
    c.env("KEYVAULT_URL", creds["vault_url"].as_str().unwrap())
        .env("KEYVAULT_CA_FILE", creds["ca_cert"].as_str().unwrap())
        .env("AZURE_TENANT_ID", creds["tenant_id"].as_str().unwrap())
        .env(
            "AZURE_AUTHORITY_HOST",
            creds["authority_host"].as_str().unwrap(),
        )
        .env("AZURE_CLIENT_ID", reader["clientId"].as_str().unwrap())
        .env(
            "AZURE_CLIENT_SECRET",
            reader["clientSecret"].as_str().unwrap(),
        );
    let refused_rekey = run_with(
        c,
        &["rekey", "--online", "--no-challenge-verification"],
        None,
    )
    .code(5);
    assert!(
        refused_rekey.stderr.contains("forbidden"),
        "{}",
        refused_rekey.stderr
    );
    stop(server);

    // Key B alone serves every value, the deleted one included; key A current is refused.
    let server = serve(&data, &["--kek-file", key_b.to_str().unwrap()]);
    assert_eq!(
        kv(&data, &["secret", "list-versions", "db", "-o", "json"])
            .ok()
            .json()
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    kv(&data, &["secret", "recover", "gone", "--wait"]).ok();
    assert_eq!(
        kv(&data, &["secret", "show", "gone", "-o", "value"])
            .ok()
            .stdout,
        "bye\n"
    );
    stop(server);
    let stderr = refused(&data, &[]);
    assert!(stderr.contains(&id_b), "{stderr}");
}

/// A shutdown in the middle of `keyvault rekey --online`: the server still exits cleanly, the job ends as
/// failed with its `RekeyFinished` line written before the audit log closes (the log verifies), and a later
/// rekey completes the rotation (what was done stayed done).
#[test]
fn a_shutdown_mid_rekey_audits_the_jobs_end() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key_a, key_b) = rotation_paths(dir.path());
    let server = serve(&data, &[]);
    // Enough versions that a rekey one version per commit (each synced) runs for a while.
    let secrets = serde_json::Value::Object(
        (0..1500)
            .map(|i| (format!("s-{i}"), serde_json::json!(format!("v-{i}"))))
            .collect(),
    );
    let file = dir.path().join("many.json");
    std::fs::write(&file, secrets.to_string()).unwrap();
    kv(
        &data,
        &["secret", "import", "--file", file.to_str().unwrap()],
    )
    .ok();
    stop(server);

    tool(&["kek", "new", key_b.to_str().unwrap()]).ok();
    let id_b = key_id(&key_b);
    let config = rotation_config(dir.path(), &data, &key_a, &key_b);
    let server = serve(&data, &["--config", config.to_str().unwrap()]);
    let mut c = command(None);
    c.env(
        "KEYVAULT_DEV_CREDENTIALS",
        data.join("dev-credentials.json"),
    )
    .args(["rekey", "--online", "--batch-size", "1"])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut follower = c.spawn().unwrap();
    let audit = data.join("audit.log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .contains("\"operation\":\"RekeyStart\"")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no rekey started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // One job at a time: another is refused (4), pointing at --follow.
    let again = kv(&data, &["rekey", "--online"]).code(4);
    assert!(
        again.stderr.contains("already running")
            && again
                .stderr
                .contains("follow it: keyvault rekey --online --follow"),
        "{}",
        again.stderr
    );
    stop(server);
    let _ = follower.kill();
    let _ = follower.wait();

    let log = std::fs::read_to_string(&audit).unwrap();
    // The last line of an operation with that status (the refused second start is a RekeyStart too).
    let line_of = |op: &str, status: u16| -> serde_json::Value {
        let line = log
            .lines()
            .rfind(|l| {
                l.contains(&format!("\"operation\":\"{op}\""))
                    && l.contains(&format!("\"status\":{status}"))
            })
            .unwrap_or_else(|| panic!("no {op} line with status {status} in the audit log"));
        serde_json::from_str(line).unwrap()
    };
    let (start, end) = (line_of("RekeyStart", 202), line_of("RekeyFinished", 500));
    assert_eq!(end["requestId"], start["requestId"]);
    assert_eq!(line_of("RekeyStart", 409)["operation"], "RekeyStart");
    assert_eq!(end["status"], 500, "{end}");
    assert!(
        end["target"]
            .as_str()
            .is_some_and(|t| t.contains("status=failed") && t.ends_with("retired=none")),
        "{end}"
    );
    let verified = tool(&[
        "audit",
        "verify",
        "--chain",
        "--config",
        config.to_str().unwrap(),
        audit.to_str().unwrap(),
    ]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);

    // Run again, it completes: every version under key B.
    let server = serve(&data, &["--config", config.to_str().unwrap()]);
    let none = kv(&data, &["rekey", "--online", "--follow"]).code(3);
    assert!(
        none.stderr.contains("has run no rekey since it started"),
        "{}",
        none.stderr
    );
    let done = kv(&data, &["rekey", "--online", "-o", "json"]).ok().json();
    assert_eq!(done["after"], serde_json::json!({ id_b.as_str(): 1500 }));
    // --follow starts nothing: it shows the last job's report, with the same exit code.
    let followed = kv(&data, &["rekey", "--online", "--follow", "-o", "json"])
        .ok()
        .json();
    assert_eq!(followed, done);
    stop(server);
}
