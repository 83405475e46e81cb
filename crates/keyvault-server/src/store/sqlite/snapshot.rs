//! An online backup of a SQLite vault: a consistent, point-in-time copy of the database file, taken while a
//! server may be running and writing ([`snapshot`], used by `keyvault snapshot`).
//!
//! The copy is made by a separate, **read-only** connection (WAL mode lets a reader in another process run
//! alongside the server's writer) with `VACUUM INTO`: SQLite reads the database inside one read transaction,
//! so the copy holds exactly the writes committed before that transaction began, and none of the ones after
//! it. The server's `DB.lock` is for writers and is not taken; nothing is written to the source (the
//! connection does not checkpoint at close). A reader of a WAL database shares SQLite's index of the log
//! (`DB-shm`): on a database no process has open, it creates that and an empty `DB-wal` beside it, which a
//! server opening the database later uses as its own. While a snapshot reads, the server's checkpointer
//! cannot start the log over, so the WAL grows until the copy is done. The copy is a new, compact file: no free pages (so none of what a
//! purge or re-seal left in free space), no WAL, in rollback-journal mode until a server opens it.
//!
//! The copy is written under a temporary name beside the target ([`partial_path`]), created empty first,
//! owner-only (0600), so it is never readable by others, even for a moment; then it is filled, checked
//! (`PRAGMA quick_check`), counted and synced, and only then linked under the target's name (never replacing
//! a file) and synced with its directory: a file found under the target's name is always a whole, checked
//! copy, and an interrupted snapshot leaves only the temporary file (and SQLite's journal beside it). The
//! directory must be the caller's own (`keyvault snapshot` makes sure): `VACUUM INTO` opens the temporary
//! file again by name. Values
//! are never read or opened: the counts come from the tables' keys, and the key ids from the first bytes of
//! each sealed value (its header names the key-encryption key it was sealed under).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{BUSY_TIMEOUT, SCHEMA_VERSION};
use crate::store::{KEK_REKEY_TARGET, KEY_CHECK};

/// What a snapshot holds (never a value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotReport {
    /// The copy.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Names, live and soft-deleted.
    pub names: u64,
    /// Of those, the soft-deleted ones.
    pub deleted_names: u64,
    /// Versions of every name (soft-deleted names' included).
    pub versions: u64,
    /// The copy's schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    /// The id of the key-encryption key the copy's key check is sealed under: a server over the copy must
    /// hold it (as its current key, or as a previous key until a `keyvault rekey` moved the check). `None`:
    /// a database from before the key check (schema < 6) or one no server has started on.
    pub key_check_kek_id: Option<String>,
    /// How many versions are sealed under each key id ("unknown" for a value whose header is not one this
    /// build reads): a server over the copy needs every one of these keys to open every value.
    pub versions_per_kek_id: BTreeMap<String, u64>,
    /// A `keyvault rekey` that started and has not completed names its target key here: a server over the
    /// copy must hold it too.
    pub rekey_target_kek_id: Option<String>,
    /// When the copy's read began (Unix seconds): every write acknowledged before then is in the copy. Not
    /// serialized: `keyvault snapshot`'s report gives it once, as RFC 3339 text.
    #[serde(skip)]
    pub started_at: i64,
}

/// Why a snapshot failed. Messages name files and SQLite's reasons, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The source database cannot be opened or read.
    #[error("{0}")]
    Source(String),
    /// The source is not a vault's database (not a regular file, not SQLite, no vault schema, or a schema
    /// newer than this build reads).
    #[error("{0}")]
    NotAVault(String),
    /// The target already exists (it is never overwritten).
    #[error("{} already exists (a snapshot never overwrites a file)", .0.display())]
    TargetExists(PathBuf),
    /// The target cannot be created (a missing directory, no permission).
    #[error("{0}")]
    Target(String),
    /// The copy failed (while reading the source or writing the target), or the copy does not pass its
    /// check. The target was removed.
    #[error("{0}")]
    Copy(String),
}

/// Copies the SQLite vault database `source` into `target` (which must not exist) while a server may be
/// running on it: see the module documentation. The copy is made under [`partial_path`] and linked under
/// `target` only once checked; on any error the partial files are removed.
pub fn snapshot(source: &Path, target: &Path) -> Result<SnapshotReport, SnapshotError> {
    let meta = std::fs::metadata(source)
        .map_err(|e| SnapshotError::Source(format!("cannot read {}: {e}", source.display())))?;
    if !meta.is_file() {
        return Err(SnapshotError::NotAVault(format!(
            "{} is not a regular file",
            source.display()
        )));
    }
    if std::fs::symlink_metadata(target).is_ok() {
        return Err(SnapshotError::TargetExists(target.to_path_buf()));
    }
    let conn = open_source(source)?;
    let partial = partial_path(target);
    create_private(&partial)?;
    let result = copy_and_check(&conn, source, &partial).and_then(|mut report| {
        // Under the final name only now, never replacing anything (a link fails on an existing name).
        std::fs::hard_link(&partial, target).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                SnapshotError::TargetExists(target.to_path_buf())
            } else {
                SnapshotError::Copy(format!("cannot name the copy {}: {e}", target.display()))
            }
        })?;
        report.path = target.to_path_buf();
        Ok(report)
    });
    drop(conn);
    remove_partial(target);
    let report = result?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir).map_err(|e| {
            SnapshotError::Copy(format!("cannot sync the directory {}: {e}", dir.display()))
        })?;
    }
    Ok(report)
}

/// The temporary name a copy for `target` is made under (beside it, hidden, naming this process):
/// `DIR/.vault.db.partial-PID`.
pub fn partial_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".to_string());
    target.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Removes what an unfinished copy for `target` left (the partial file and SQLite's journal beside it).
pub fn remove_partial(target: &Path) {
    let partial = partial_path(target);
    let mut journal = partial.clone().into_os_string();
    journal.push("-journal");
    let _ = std::fs::remove_file(&partial);
    let _ = std::fs::remove_file(PathBuf::from(journal));
}

/// A read-only connection to the source that never checkpoints (nor deletes the WAL) when it closes, after
/// checking that the file is a vault's database of a schema this build reads.
fn open_source(source: &Path) -> Result<Connection, SnapshotError> {
    let fail = |e: rusqlite::Error| {
        let message = format!("cannot read the database {}: {e}", source.display());
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            SnapshotError::NotAVault(message)
        } else {
            SnapshotError::Source(message)
        }
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(source, flags).map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    // A read-only connection cannot checkpoint anyway; this makes sure it does not try.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(fail)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    if version < 1 {
        return Err(SnapshotError::NotAVault(format!(
            "{} is not a keyvault database (it has no vault schema)",
            source.display()
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(SnapshotError::NotAVault(format!(
            "{} has schema version {version}, newer than this keyvault reads ({SCHEMA_VERSION}): use the \
             keyvault build that serves it",
            source.display()
        )));
    }
    Ok(conn)
}

/// Creates `target` empty, owner-only; refuses an existing one.
fn create_private(target: &Path) -> Result<(), SnapshotError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(target) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(SnapshotError::TargetExists(target.to_path_buf()))
        }
        Err(e) => Err(SnapshotError::Target(format!(
            "cannot create {}: {e}",
            target.display()
        ))),
    }
}

fn copy_and_check(
    conn: &Connection,
    source: &Path,
    target: &Path,
) -> Result<SnapshotReport, SnapshotError> {
    let target_text = target.to_str().ok_or_else(|| {
        SnapshotError::Target(format!(
            "{} is not valid UTF-8 (SQLite takes file names as text)",
            target.display()
        ))
    })?;
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    conn.execute("VACUUM INTO ?1", [target_text]).map_err(|e| {
        SnapshotError::Copy(format!(
            "copying {} into {} failed: {e}",
            source.display(),
            target.display()
        ))
    })?;
    let mut report = inspect(target)?;
    report.started_at = started_at;
    sync(target)?;
    report.bytes = std::fs::metadata(target)
        .map_err(|e| SnapshotError::Copy(format!("cannot read {}: {e}", target.display())))?
        .len();
    Ok(report)
}

/// Checks the copy (`PRAGMA quick_check`) and counts what it holds, over a read-only connection (the copy is
/// in rollback-journal mode: reading it creates no file beside it).
fn inspect(copy: &Path) -> Result<SnapshotReport, SnapshotError> {
    let fail = |e: rusqlite::Error| {
        SnapshotError::Copy(format!("cannot read the copy {}: {e}", copy.display()))
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(copy, flags).map_err(fail)?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(10)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(fail)?;
    if problems.len() != 1 || problems[0] != "ok" {
        return Err(SnapshotError::Copy(format!(
            "the copy {} does not pass SQLite's quick_check: {}",
            copy.display(),
            problems.join("; ")
        )));
    }
    let count = |sql: &str| -> Result<u64, SnapshotError> {
        let n: i64 = conn.query_row(sql, [], |r| r.get(0)).map_err(fail)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let names = count("SELECT count(*) FROM names")?;
    let deleted_names = count("SELECT count(*) FROM names WHERE deleted_on IS NOT NULL")?;
    let versions = count("SELECT count(*) FROM versions")?;
    let schema_version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    // The sealed format's header: a format byte, the key id's length (one byte), the key id.
    let mut versions_per_kek_id = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT substr(sealed, 1, 257) FROM versions")
            .map_err(fail)?;
        let mut rows = stmt.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let head = row.get_ref(0).map_err(fail)?.as_blob().unwrap_or_default();
            let id = crate::crypto::sealed_kek_id(head).unwrap_or("unknown");
            *versions_per_kek_id.entry(id.to_owned()).or_insert(0u64) += 1;
        }
    }
    let (key_check_kek_id, rekey_target_kek_id) = if schema_version >= 6 {
        let meta = |key: &str| -> Result<Option<Vec<u8>>, SnapshotError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map_err(fail)
        };
        let check = meta(KEY_CHECK)?.map(|sealed| {
            crate::crypto::sealed_kek_id(&sealed)
                .unwrap_or("unknown")
                .to_owned()
        });
        let target = meta(KEK_REKEY_TARGET)?
            .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
            .filter(|id| !id.is_empty());
        (check, target)
    } else {
        (None, None)
    };
    Ok(SnapshotReport {
        path: copy.to_path_buf(),
        bytes: 0,
        names,
        deleted_names,
        versions,
        schema_version,
        key_check_kek_id,
        versions_per_kek_id,
        rekey_target_kek_id,
        started_at: 0,
    })
}

/// The copy's bytes and its directory entry on disk.
fn sync(path: &Path) -> Result<(), SnapshotError> {
    let fail =
        |e: std::io::Error| SnapshotError::Copy(format!("cannot sync {}: {e}", path.display()));
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(fail)?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(|e| {
        SnapshotError::Copy(format!(
            "cannot sync the directory of {}: {e}",
            path.display()
        ))
    })
}

/// A directory's entries on disk (a new file's name survives a crash). An empty path is the current one.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Envelope, Kek, KeyRing};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{SecretStore, VersionRow};
    use std::sync::Arc;

    fn envelope(byte: u8) -> Envelope {
        Envelope::new(Arc::new(KeyRing::new(Kek::from_bytes([byte; 32]), [])))
    }

    fn row(envelope: &Envelope, name: &str, version: &str, value: &str) -> VersionRow {
        VersionRow {
            name: name.to_string(),
            version: version.to_string(),
            sealed: envelope
                .seal("v", &name.to_ascii_lowercase(), version, value.as_bytes())
                .unwrap(),
            content_type: None,
            tags: None,
            enabled: true,
            nbf: None,
            exp: None,
            created: 1,
            updated: 1,
        }
    }

    /// A vault with a key check under key A, names a (2 versions), b (1), c (1, soft-deleted), and one more
    /// version of a sealed under key B (a rotation not yet re-sealed): the copy passes quick_check, counts
    /// them, names both keys, is 0600 and opens as a store with every version; the source's file is unchanged
    /// by a snapshot taken while no server has it open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_a_checked_private_copy_and_counts_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("vault.db");
        let (a, b) = (envelope(1), envelope(2));
        let store = SqliteStore::open(&source).unwrap();
        crate::store::check_key(&store, &a).await.unwrap();
        for (name, version, value) in [("a", "01", "a1"), ("a", "02", "a2"), ("b", "01", "b1")] {
            store
                .put_version("v", row(&a, name, version, value))
                .await
                .unwrap();
        }
        store
            .put_version("v", row(&b, "a", "03", "a3"))
            .await
            .unwrap();
        store
            .put_version("v", row(&a, "c", "01", "c1"))
            .await
            .unwrap();
        store.soft_delete("v", "c", 5, 10).await.unwrap().unwrap();

        // While the store (the "server") is open.
        let target = dir.path().join("copy.db");
        let report = snapshot(&source, &target).unwrap();
        assert_eq!(report.path, target);
        // Made under a temporary name, then linked: nothing of it is left beside the copy.
        assert!(!partial_path(&target).exists());
        let beside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".copy.db"))
            .collect();
        assert!(beside.is_empty(), "{beside:?}");
        assert_eq!(
            (report.names, report.deleted_names, report.versions),
            (3, 1, 5)
        );
        assert_eq!(report.schema_version, SCHEMA_VERSION);
        assert_eq!(report.key_check_kek_id.as_deref(), Some(a.current_kek_id()));
        assert_eq!(
            report.versions_per_kek_id,
            BTreeMap::from([
                (a.current_kek_id().to_owned(), 4),
                (b.current_kek_id().to_owned(), 1)
            ])
        );
        assert_eq!(report.rekey_target_kek_id, None);
        assert_eq!(report.bytes, std::fs::metadata(&target).unwrap().len());
        assert!(report.bytes > 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let check: String = Connection::open(&target)
            .unwrap()
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");

        // The same target again: refused, and the copy is left as it was.
        let before = std::fs::read(&target).unwrap();
        assert!(matches!(
            snapshot(&source, &target),
            Err(SnapshotError::TargetExists(p)) if p == target
        ));
        assert_eq!(std::fs::read(&target).unwrap(), before);

        // The copy is a vault: its versions open under their keys, the deleted name stays deleted.
        let both = Envelope::new(Arc::new(KeyRing::new(
            Kek::from_bytes([1; 32]),
            [Kek::from_bytes([2; 32])],
        )));
        let copy = SqliteStore::open(&target).unwrap();
        for (name, version, value) in [("a", "01", "a1"), ("a", "03", "a3"), ("b", "01", "b1")] {
            let got = copy
                .get_version("v", name, Some(version))
                .await
                .unwrap()
                .unwrap();
            let plain = both.open("v", name, version, &got.sealed).unwrap();
            assert_eq!(plain.as_slice(), value.as_bytes());
        }
        assert!(copy.get_version("v", "c", None).await.unwrap().is_none());
        assert!(copy.get_deleted("v", "c").await.unwrap().is_some());
        copy.close().await;

        // With the store closed: the source's bytes are not changed by a snapshot.
        store.close().await;
        let source_bytes = std::fs::read(&source).unwrap();
        let offline = dir.path().join("offline.db");
        let report = snapshot(&source, &offline).unwrap();
        assert_eq!((report.names, report.versions), (3, 5));
        assert_eq!(std::fs::read(&source).unwrap(), source_bytes);
    }

    /// What is not a vault's database is refused before any target is created; a missing source too.
    #[test]
    fn a_file_that_is_not_a_vault_is_refused_and_no_target_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.db");
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
        let empty_sqlite = dir.path().join("empty.db");
        Connection::open(&empty_sqlite)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        for source in [garbage, empty_sqlite, dir.path().to_path_buf()] {
            let e = snapshot(&source, &target).unwrap_err();
            assert!(matches!(e, SnapshotError::NotAVault(_)), "{source:?}: {e}");
            assert!(!target.exists(), "{source:?}");
        }
        let e = snapshot(&dir.path().join("missing.db"), &target).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Source(m) if m.contains("missing.db")),
            "{e}"
        );
        assert!(!target.exists());
    }

    /// A target in a directory that does not exist: a clear error, nothing created.
    #[test]
    fn a_target_that_cannot_be_created_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("vault.db");
        let mut c = super::super::open_writer(&source).unwrap();
        super::super::migrate(&mut c).unwrap();
        drop(c);
        let target = dir.path().join("missing").join("copy.db");
        let e = snapshot(&source, &target).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Target(m) if m.contains("cannot create")),
            "{e}"
        );
    }
}
