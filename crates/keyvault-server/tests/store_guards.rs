//! What a server checks about its store before it serves, on the default SQLite store in temp dirs: that its
//! key-encryption key is the one the database was written with (a wrong, lost or mistyped key would read
//! nothing and seal new values under a second key), and that purge protection, once on, stays on.

use keyvault_server::crypto::StaticKeyProvider;
use keyvault_server::vault::{SecretAttributesInput, VaultError};
use keyvault_server::{Config, Server};
use keyvault_types::SecretString;
use std::path::{Path, PathBuf};

/// A data dir's server: dev mode on a port the kernel picks, the key file `kek` (None: `kek.key` in the
/// data dir), purge protection as given.
fn config(data: &Path, kek: Option<&Path>, purge_protection: bool) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        dev: true,
        kek_file: kek.map(Path::to_path_buf),
        purge_protection,
        ..Config::default()
    }
}

/// Writes a key file (0600, hex) holding 32 bytes of `byte`; returns its path and the key's id.
fn key_file(dir: &Path, name: &str, byte: u8) -> (PathBuf, String) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(f, "{}", hex::encode([byte; 32])).unwrap();
    (
        path,
        StaticKeyProvider::from_bytes([byte; 32])
            .kek_id()
            .to_string(),
    )
}

async fn start(config: Config) -> Result<Server, String> {
    Server::bind(config).await.map_err(|e| e.to_string())
}

async fn set(server: &Server, name: &str, value: &str) {
    server
        .vault()
        .set(
            name,
            SecretString::new(value),
            SecretAttributesInput::default(),
        )
        .await
        .unwrap();
}

async fn value_of(server: &Server, name: &str) -> String {
    let secret = server.vault().get(name, None).await.unwrap();
    secret.value.unwrap().expose().to_string()
}

/// Rows of the key check in the database of `data`.
fn key_checks(data: &Path) -> i64 {
    rusqlite::Connection::open(data.join("vault.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM meta WHERE key = ?1",
            [keyvault_server::store::KEY_CHECK],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_fresh_data_dir_starts_and_makes_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(config(&data, None, false)).await.unwrap();
    assert!(data.join("kek.key").is_file());
    assert_eq!(key_checks(&data), 1);
    set(&server, "kept", "across restarts").await;
    drop(server);
    let server = start(config(&data, None, false)).await.unwrap();
    assert_eq!(value_of(&server, "kept").await, "across restarts");
}

/// A data directory whose database was lost, emptied or replaced (its key file kept) does not start as a new,
/// empty vault in its place: `store.initialized` records the store it used. Deleting that file, or naming
/// another store (a move, such as to PostgreSQL), starts an empty vault, with a warning for the latter.
#[tokio::test]
async fn a_lost_or_emptied_database_does_not_start_as_a_new_empty_vault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(config(&data, None, false)).await.unwrap();
    set(&server, "kept", "v").await;
    drop(server);
    let marker = data.join(keyvault_server::server::STORE_MARKER);
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .contains("vault.db")
    );
    let db = data.join("vault.db");
    let saved = std::fs::read(&db).unwrap();
    let wal = std::fs::read(data.join("vault.db-wal")).unwrap_or_default();

    // Deleted, or emptied to 0 bytes (with its WAL): refused, naming the marker; nothing is written.
    for emptied in [false, true] {
        for f in ["vault.db", "vault.db-wal", "vault.db-shm"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        if emptied {
            std::fs::write(&db, b"").unwrap();
        }
        let err = start(config(&data, None, false))
            .await
            .err()
            .expect("an empty store under a marker is refused");
        assert!(
            err.contains("is empty") && err.contains(&marker.display().to_string()),
            "{err}"
        );
    }
    // Restored: it starts and holds what it held.
    for f in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    std::fs::write(&db, &saved).unwrap();
    if !wal.is_empty() {
        std::fs::write(data.join("vault.db-wal"), &wal).unwrap();
    }
    let server = start(config(&data, None, false)).await.unwrap();
    assert_eq!(value_of(&server, "kept").await, "v");
    drop(server);

    // Another store named (here another SQLite file): a move, allowed; the marker then names it.
    let other = dir.path().join("other.db");
    let moved = || Config {
        store: Some(keyvault_server::config::StoreLocation(format!(
            "sqlite:{}",
            other.display()
        ))),
        ..config(&data, None, false)
    };
    drop(start(moved()).await.unwrap());
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .contains("other.db")
    );
    // That one lost in turn: refused; deleting the marker is how to start anew over an empty store.
    for f in ["other.db", "other.db-wal", "other.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    assert!(start(moved()).await.is_err());
    std::fs::remove_file(&marker).unwrap();
    drop(start(moved()).await.unwrap());
    assert!(marker.exists(), "written again, for the new store");
}

#[tokio::test]
async fn a_key_the_database_was_not_written_with_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key_a, id_a) = key_file(dir.path(), "a.key", 1);
    let (key_b, id_b) = key_file(dir.path(), "b.key", 2);
    let server = start(config(&data, Some(&key_a), false)).await.unwrap();
    set(&server, "db-password", "hunter2").await;
    drop(server);

    let err = start(config(&data, Some(&key_b), false))
        .await
        .err()
        .expect("another key is refused");
    assert!(
        err.contains(&format!(
            "the key-encryption key (id {id_b}) is not the one this database was written with (key id {id_a})"
        )),
        "{err}"
    );
    assert!(
        err.contains("kek_file") && err.contains("KEYVAULT_KEK"),
        "{err}"
    );
    // Nothing was written under the other key: the right one still reads and starts.
    let server = start(config(&data, Some(&key_a), false)).await.unwrap();
    assert_eq!(value_of(&server, "db-password").await, "hunter2");
    drop(server);

    // The key check damaged (its last byte, in the tag): the right key is refused, and told that the stored
    // check, not the key, is at fault.
    let db = rusqlite::Connection::open(data.join("vault.db")).unwrap();
    let mut check: Vec<u8> = db
        .query_row("SELECT value FROM meta WHERE key = 'kek-check'", [], |r| {
            r.get(0)
        })
        .unwrap();
    *check.last_mut().unwrap() ^= 1;
    db.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'kek-check'",
        [&check],
    )
    .unwrap();
    drop(db);
    let err = start(config(&data, Some(&key_a), false))
        .await
        .err()
        .expect("a damaged key check is refused");
    assert!(
        err.contains(&format!(
            "sealed under key id {id_a}, which this server holds"
        )) && err.contains("damaged or changed outside the server"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_key_file_is_not_made_anew_for_a_database_with_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(config(&data, None, false)).await.unwrap();
    set(&server, "s", "v").await;
    drop(server);
    let kek = data.join("kek.key");
    let saved = std::fs::read(&kek).unwrap();
    let id = keyvault_server::crypto::FileKeyProvider::load_or_create(&kek)
        .unwrap()
        .kek_id()
        .to_string();
    std::fs::remove_file(&kek).unwrap();

    let err = start(config(&data, None, false))
        .await
        .err()
        .expect("a missing key file is refused");
    assert!(err.contains(&kek.display().to_string()), "{err}");
    assert!(err.contains("is missing"), "{err}");
    assert!(err.contains(&format!("key id {id}")), "{err}");
    assert!(!kek.exists(), "no new key file was made");
    // A mistyped kek_file is the same case.
    let typo = data.join("kek.kye");
    let err = start(config(&data, Some(&typo), false))
        .await
        .err()
        .expect("a mistyped key file is refused");
    assert!(err.contains("is missing"), "{err}");
    assert!(!typo.exists(), "no new key file was made");

    std::fs::write(&kek, saved).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = start(config(&data, None, false)).await.unwrap();
    assert_eq!(value_of(&server, "s").await, "v");
}

/// A database from a release without the key check (schema version 5, no `meta` table): the right key
/// starts and writes the check; a wrong one is refused, without writing a check under itself.
#[tokio::test]
async fn a_database_from_before_the_key_check_is_checked_against_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key_a, id_a) = key_file(dir.path(), "a.key", 1);
    let (key_b, id_b) = key_file(dir.path(), "b.key", 2);
    let server = start(config(&data, Some(&key_a), false)).await.unwrap();
    set(&server, "old", "value").await;
    drop(server);
    rusqlite::Connection::open(data.join("vault.db"))
        .unwrap()
        .execute_batch("DROP TABLE meta; PRAGMA user_version = 5;")
        .unwrap();

    let err = start(config(&data, Some(&key_b), false))
        .await
        .err()
        .expect("a key that opens none of the values is refused");
    assert!(
        err.contains(&format!("(id {id_b})")) && err.contains(&format!("(key id {id_a})")),
        "{err}"
    );
    assert_eq!(key_checks(&data), 0, "no check written under the wrong key");

    let server = start(config(&data, Some(&key_a), false)).await.unwrap();
    assert_eq!(key_checks(&data), 1);
    assert_eq!(value_of(&server, "old").await, "value");
    drop(server);
    // From now on the check itself keeps the other key out.
    let err = start(config(&data, Some(&key_b), false))
        .await
        .err()
        .expect("refused by the check");
    assert!(err.contains(&format!("(key id {id_a})")), "{err}");
}

#[tokio::test]
async fn purge_protection_cannot_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Off, then off again: nothing recorded, nothing refused.
    drop(start(config(&data, None, false)).await.unwrap());
    let server = start(config(&data, None, true)).await.unwrap();
    set(&server, "guarded", "v").await;
    server.vault().delete("guarded").await.unwrap();
    drop(server);

    let err = start(config(&data, None, false))
        .await
        .err()
        .expect("turning purge protection off is refused");
    assert!(
        err.contains("purge protection was enabled on this vault and cannot be turned off"),
        "{err}"
    );
    let server = start(config(&data, None, true)).await.unwrap();
    assert!(matches!(
        server.vault().purge("guarded").await,
        Err(VaultError::PurgeProtected { .. })
    ));
    assert!(server.vault().get_deleted("guarded").await.is_ok());
}
