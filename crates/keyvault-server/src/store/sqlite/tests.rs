use super::*;
use crate::store::conformance;
use crate::store::{PAST_EVERY_KEY, Tags};
use std::sync::atomic::{AtomicI64, AtomicUsize};

fn row(name: &str, version: &str, n: i64) -> VersionRow {
    VersionRow {
        name: name.to_string(),
        version: version.to_string(),
        sealed: format!("sealed-{name}-{version}").into_bytes(),
        content_type: Some("text/plain".into()),
        tags: Some(Tags::from([("n".to_string(), n.to_string())])),
        enabled: true,
        nbf: None,
        exp: Some(2_000_000_000),
        created: n,
        updated: n,
    }
}

fn version(n: usize) -> String {
    format!("{n:032x}")
}

/// A new database (`kv.db` in the returned directory), migrated, and its writer connection.
fn migrated_writer() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = open_writer(&dir.path().join("kv.db")).unwrap();
    migrate(&mut c).unwrap();
    (dir, c)
}

/// Every row of `sql` (no parameters), each as `read` makes it.
fn all_rows<T>(
    c: &Connection,
    sql: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    c.prepare(sql)
        .unwrap()
        .query_map([], read)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kv.db")).unwrap());
    conformance::run_all(store.clone()).await;
    // Run it again on the same (now populated) database: the suite must not depend on an empty store.
    conformance::run_all(store.clone()).await;
    store.close().await;
}

/// The suite again with every read going to a reader that maps the file (no cache): `mmap_mib` changes how
/// pages are read, never what.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_mapped_without_cache() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        cache_bytes: 0,
        mmap_bytes: 64 << 20,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open_with(&dir.path().join("kv.db"), options).unwrap());
    conformance::run_all(store.clone()).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let (live, deleted, versions) = {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..50usize {
            let name = format!("Secret-{i:02}");
            store
                .put_version("v", row(&name, &version(i * 10), 1))
                .await
                .unwrap();
            store
                .put_version("v", row(&name, &version(i * 10 + 1), 2))
                .await
                .unwrap();
        }
        let patch = VersionPatch {
            enabled: Some(false),
            updated: 99,
            ..Default::default()
        };
        store
            .update_version("v", "secret-03", None, patch)
            .await
            .unwrap()
            .unwrap();
        for i in (0..50).step_by(5) {
            store
                .soft_delete("v", &format!("secret-{i:02}"), 10, 1_000_000)
                .await
                .unwrap()
                .unwrap();
        }
        store
            .restore(
                "w",
                vec![
                    row("Restored", &version(7), 1),
                    row("Restored", &version(3), 2),
                ],
            )
            .await
            .unwrap();
        let live = store.list_latest("v", None, 1000).await.unwrap();
        let deleted = store.list_deleted("v", None, 1000).await.unwrap();
        let versions = store
            .all_versions("w", "restored", usize::MAX)
            .await
            .unwrap();
        (live, deleted, versions)
        // Dropped here without close(): the writer drains and exits.
    };
    assert_eq!(live.len(), 40);
    assert_eq!(deleted.len(), 10);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.list_latest("v", None, 1000).await.unwrap(), live);
    assert_eq!(store.list_deleted("v", None, 1000).await.unwrap(), deleted);
    assert_eq!(
        store
            .all_versions("w", "RESTORED", usize::MAX)
            .await
            .unwrap(),
        versions
    );
    let updated = store
        .get_version("v", "secret-03", None)
        .await
        .unwrap()
        .unwrap();
    assert!(!updated.enabled);
    assert_eq!(updated.updated, 99);
    // A version set after a reopen becomes the latest (positions are not reused), whatever its id's place in
    // the listing: version(5) sorts between the name's two earlier ids (10 and 11).
    store
        .put_version("v", row("secret-01", &version(5), 3))
        .await
        .unwrap();
    let listed: Vec<String> = store
        .list_versions("v", "secret-01", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(listed, [version(5), version(10), version(11)]);
    let latest = store.get_version("v", "secret-01", None).await.unwrap();
    assert_eq!(latest.map(|r| r.version), Some(version(5)));
    store.close().await;
}

/// A quarter of the writes hit one shared name; the rest spread over 97 names.
fn name_for(i: usize) -> String {
    match i % 4 {
        0 => "shared".to_string(),
        _ => format!("name-{}", i % 97),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_puts_all_land() {
    const TASKS: usize = 64;
    const TOTAL: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kv.db")).unwrap());
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            for i in (t..TOTAL).step_by(TASKS) {
                let name = name_for(i);
                store
                    .put_version("v", row(&name, &version(i), i as i64))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut acknowledged = 0;
    for h in handles {
        acknowledged += h.await.unwrap();
    }
    assert_eq!(acknowledged, TOTAL);

    let mut found = 0;
    let names = store.list_latest("v", None, 1000).await.unwrap();
    let expected: std::collections::BTreeSet<String> = (0..TOTAL).map(name_for).collect();
    assert_eq!(
        names
            .iter()
            .map(|r| r.name.clone())
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    for r in &names {
        found += store
            .all_versions("v", &r.name, usize::MAX)
            .await
            .unwrap()
            .len();
    }
    assert_eq!(found, TOTAL, "every acknowledged put is stored");
    assert_eq!(
        store
            .all_versions("v", "shared", usize::MAX)
            .await
            .unwrap()
            .len(),
        TOTAL / 4
    );

    let (batches, writes) = (store.committed_batches(), store.committed_writes());
    println!("{writes} writes in {batches} commits");
    assert_eq!(writes, TOTAL as u64);
    assert!(
        batches < writes,
        "group commit: concurrent writes share transactions"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_does_not_spoil_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kv.db")).unwrap());
    store
        .put_version("v", row("dead", &version(0), 0))
        .await
        .unwrap();
    store
        .soft_delete("v", "dead", 1, 1_000_000)
        .await
        .unwrap()
        .unwrap();
    let mut handles = Vec::new();
    for i in 1..=200usize {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let name = if i % 2 == 0 {
                "dead".to_string()
            } else {
                format!("alive-{i}")
            };
            (i, store.put_version("v", row(&name, &version(i), 0)).await)
        }));
    }
    for h in handles {
        let (i, result) = h.await.unwrap();
        if i % 2 == 0 {
            assert!(
                matches!(result, Err(StoreError::Deleted)),
                "{i}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "{i}: {result:?}");
        }
    }
    assert_eq!(store.list_latest("v", None, 1000).await.unwrap().len(), 100);
    store.recover("v", "dead").await.unwrap().unwrap();
    assert_eq!(
        store
            .all_versions("v", "dead", usize::MAX)
            .await
            .unwrap()
            .len(),
        1,
        "no refused version slipped in"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_finishes_queued_writes_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let mut handles = Vec::new();
    for i in 0..300usize {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            (
                i,
                store
                    .put_version("v", row(&format!("n{i}"), &version(i), 0))
                    .await,
            )
        }));
    }
    tokio::task::yield_now().await;
    store.close().await;
    let mut ok = Vec::new();
    for h in handles {
        let (i, result) = h.await.unwrap();
        match result {
            Ok(()) => ok.push(i),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("{i}: {e}"),
        }
    }
    assert!(matches!(
        store.put_version("v", row("late", &version(1), 0)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.get_version("v", "n0", None).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(store.health().await.is_err());
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    for i in &ok {
        assert!(
            store
                .get_version("v", &format!("n{i}"), None)
                .await
                .unwrap()
                .is_some(),
            "acknowledged n{i}"
        );
    }
    store.close().await;
}

#[tokio::test]
async fn schema_is_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    SqliteStore::open(&path).unwrap().close().await;
    {
        let c = Connection::open(&path).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    // Reopening an up-to-date database is a no-op.
    SqliteStore::open(&path).unwrap().close().await;
    // A database from a newer server is refused, not damaged.
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::Internal(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

/// The metadata (the key check, the purge-protection record) survives a reopen; a version 5 database (no
/// `meta` table) gets one and keeps its rows, and `any_sealed` finds the first of them with what it was
/// sealed for.
#[tokio::test]
async fn meta_is_kept_and_a_version_5_database_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.any_sealed().await.unwrap(), None);
    store
        .put_version("v", row("First", &version(1), 1))
        .await
        .unwrap();
    store
        .put_version("v", row("second", &version(2), 2))
        .await
        .unwrap();
    assert_eq!(store.meta_insert("k", b"one").await.unwrap(), b"one");
    store.close().await;
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(store.meta_insert("k", b"two").await.unwrap(), b"one");
    store.close().await;

    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE meta; PRAGMA user_version = 5;")
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.meta("k").await.unwrap(), None);
    assert_eq!(
        store.any_sealed().await.unwrap(),
        Some(crate::store::SealedValue {
            vault: "v".into(),
            name_key: "first".into(),
            version: version(1),
            sealed: row("First", &version(1), 1).sealed,
        })
    );
    assert_eq!(store.meta_insert("k", b"three").await.unwrap(), b"three");
    store.close().await;
    let v: i64 = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

/// A version-clock record edited by hand (stored as text, which the store cannot read as bytes, or of the
/// wrong size) is ignored at start, not a reason to stay down.
#[tokio::test]
async fn a_damaged_version_clock_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(crate::store::load_version_clock(&store).await, None);
    store
        .meta_insert(crate::store::VERSION_CLOCK, b"bad")
        .await
        .unwrap();
    assert_eq!(crate::store::load_version_clock(&store).await, None);
    store.close().await;
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE meta SET value = '1700000000000' WHERE key = ?1",
            [crate::store::VERSION_CLOCK],
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(crate::store::load_version_clock(&store).await, None);
    store.close().await;
}

/// A reservation of version ids' time moves the store's record on, never back (another node's larger one is
/// kept), and replaces a damaged one.
#[tokio::test]
async fn a_version_clock_reservation_only_moves_the_record_on() {
    use crate::store::{VERSION_CLOCK, reserve_version_clock};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kv.db")).unwrap();
    let stored = async || store.meta(VERSION_CLOCK).await.unwrap().unwrap();
    let at = 1_800_000_000_000u64;
    assert_eq!(reserve_version_clock(&store, at).await.unwrap(), at);
    assert_eq!(stored().await, at.to_be_bytes());
    assert_eq!(reserve_version_clock(&store, at - 1).await.unwrap(), at);
    assert_eq!(stored().await, at.to_be_bytes());
    assert_eq!(reserve_version_clock(&store, at + 5).await.unwrap(), at + 5);
    assert!(
        store
            .meta_replace(VERSION_CLOCK, &(at + 5).to_be_bytes(), b"bad")
            .await
            .unwrap()
    );
    assert_eq!(reserve_version_clock(&store, at).await.unwrap(), at);
    assert_eq!(stored().await, at.to_be_bytes());
    store.close().await;
}

/// Reads run inline on the caller's thread: they work on a current-thread runtime and see every acknowledged
/// write at once; pages too large to read inline are read whole as well.
#[tokio::test(flavor = "current_thread")]
async fn inline_reads_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kv.db")).unwrap();
    for i in 0..(INLINE_SCAN_ROWS + 10) {
        let name = format!("n{i:04}");
        store
            .put_version("v", row(&name, &version(i), i as i64))
            .await
            .unwrap();
        // Read-your-writes right after the acknowledgement.
        let got = store.get_version("v", &name, None).await.unwrap().unwrap();
        assert_eq!(got.version, version(i));
    }
    let small = store.list_latest("v", None, 5).await.unwrap();
    assert_eq!(small.len(), 5);
    let large = store
        .list_latest("v", None, INLINE_SCAN_ROWS + 100)
        .await
        .unwrap();
    assert_eq!(large.len(), INLINE_SCAN_ROWS + 10);
    assert!(store.health().await.is_ok());
    store.close().await;
    assert!(matches!(
        store.get_version("v", "n0000", None).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// A put on a deleted name is refused and leaves nothing behind, whether or not its version id is taken.
#[tokio::test]
async fn a_refused_put_on_a_deleted_name_leaves_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kv.db")).unwrap();
    store
        .put_version("v", row("Gone", &version(1), 1))
        .await
        .unwrap();
    store
        .soft_delete("v", "gone", 5, 1_000)
        .await
        .unwrap()
        .unwrap();
    for v in [version(2), version(1)] {
        assert!(matches!(
            store.put_version("v", row("GONE", &v, 2)).await,
            Err(StoreError::Deleted)
        ));
    }
    let deleted = store.get_deleted("v", "gone").await.unwrap().unwrap();
    assert_eq!(deleted.latest.name, "Gone");
    store.recover("v", "gone").await.unwrap().unwrap();
    let versions = store.all_versions("v", "gone", usize::MAX).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].version, version(1));
    store.close().await;
}

/// New databases get the small page size; an existing database keeps the one it was created with.
#[tokio::test]
async fn page_size_of_new_and_existing_databases() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |path: &Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap()
    };
    let fresh = dir.path().join("fresh.db");
    SqliteStore::open(&fresh).unwrap().close().await;
    assert_eq!(page_size(&fresh), PAGE_SIZE);

    let old = dir.path().join("old.db");
    {
        let c = Connection::open(&old).unwrap();
        c.pragma_update(None, "page_size", 4096).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
            .unwrap();
    }
    let store = SqliteStore::open(&old).unwrap();
    store
        .put_version("v", row("a", &version(1), 1))
        .await
        .unwrap();
    assert!(store.get_version("v", "a", None).await.unwrap().is_some());
    store.close().await;
    assert_eq!(page_size(&old), 4096);
}

#[tokio::test]
async fn not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    assert!(SqliteStore::open(&path).is_err());
    assert!(SqliteStore::open(&dir.path().join("missing-dir").join("kv.db")).is_err());
}

/// Every query used for lookups and paging is answered from an index: no table scan, no sort.
#[test]
fn queries_use_indexes() {
    let (_dir, c) = migrated_writer();
    for (name, sql) in [
        ("list_latest", SQL_LIST_LATEST),
        ("list_live", SQL_LIST_LIVE),
        ("list_deleted", SQL_LIST_DELETED),
        ("find_latest", SQL_FIND_LATEST),
        ("find_version", SQL_FIND_VERSION),
        ("find_deleted", SQL_FIND_DELETED),
        ("versions_of_live", SQL_VERSIONS_OF_LIVE),
        ("purge_due", SQL_PURGE_DUE),
    ] {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        println!("{name}: {plan:?}");
        // A co-routine (a subquery with its own LIMIT) is read row by row as it yields: "SCAN" of it is no
        // table scan.
        let coroutines: Vec<&str> = plan
            .iter()
            .filter_map(|s| s.strip_prefix("CO-ROUTINE "))
            .collect();
        for step in &plan {
            let table_step = !step.starts_with("CO-ROUTINE ")
                && !step
                    .strip_prefix("SCAN ")
                    .is_some_and(|t| coroutines.contains(&t));
            assert!(
                !table_step || step.starts_with("SEARCH"),
                "{name}: {plan:?}"
            );
            assert!(!step.contains("TEMP B-TREE"), "{name}: {plan:?}");
        }
    }
}

/// The bundled SQLite is built as `.cargo/config.toml` asks: connections' page caches are separate (no
/// global page-cache mutex, which concurrent readers contended for) and allocations are not counted under a
/// global mutex.
#[test]
fn sqlite_is_built_without_global_page_cache_and_memory_statistics() {
    let c = Connection::open_in_memory().unwrap();
    let options: Vec<String> = all_rows(&c, "PRAGMA compile_options", |r| r.get(0));
    assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{options:?}"
    );
    // SQLite lists DEFAULT_MEMSTATUS only when it is not its default (1).
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
}

#[test]
fn version_row_debug_hides_sealed() {
    let r = VersionRow {
        sealed: vec![0xde, 0xad, 0xbe, 0xef, 0x42],
        ..row("n", "v", 1)
    };
    let shown = format!("{r:?}");
    assert!(shown.contains("sealed_len: 5"), "{shown}");
    assert!(!shown.contains("222") && !shown.contains("dead"), "{shown}");
    let d = DeletedRow {
        latest: r,
        deleted_on: 1,
        scheduled_purge: 2,
    };
    assert!(format!("{d:?}").contains("sealed_len: 5"));
}

/// Acknowledged writes survive `kill -9`: a child process writes and reports each acknowledgement, the
/// parent kills it mid-stream, reopens the file and finds every acknowledged version.
#[test]
fn acknowledged_writes_survive_sigkill() {
    const CHILD_ENV: &str = "KEYVAULT_STORE_SIGKILL_CHILD";
    if let Ok(path) = std::env::var(CHILD_ENV) {
        sigkill_child(Path::new(&path));
        return;
    }
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::sqlite::tests::acknowledged_writes_survive_sigkill",
            "--nocapture",
        ])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (name, version) = rest.split_once(' ').unwrap();
            acked.push((name.to_string(), version.to_string()));
            if acked.len() >= 400 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        acked.len() >= 400,
        "the child stopped early after {} writes",
        acked.len()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        for (name, version) in &acked {
            let got = store.get_version("v", name, Some(version)).await.unwrap();
            assert!(got.is_some(), "acknowledged {name}/{version} was lost");
        }
        store.close().await;
    });
    let c = Connection::open(&path).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

fn sigkill_child(path: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(path).unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for t in 0..16usize {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while tokio::time::Instant::now() < deadline {
                    let name = format!("n{}", i % 50);
                    let v = version(t * 1_000_000 + i);
                    store.put_version("v", row(&name, &v, 0)).await.unwrap();
                    println!("ACK {name} {v}");
                    i += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Paging cost does not grow with depth. Run with `--ignored --nocapture` (KV_BENCH_NAMES to resize).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a benchmark over many names"]
async fn deep_pages_cost_like_first_pages() {
    let n: usize = std::env::var("KV_BENCH_NAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    {
        let mut c = open_writer(&path).unwrap();
        migrate(&mut c).unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut put_v = tx
                .prepare(
                    "INSERT INTO versions (vault, name_key, version, sealed, enabled, created, updated)
                     VALUES ('v', ?1, ?2, x'00112233445566778899', 1, 0, 0)",
                )
                .unwrap();
            let mut put_n = tx
                .prepare(
                    "INSERT INTO names (vault, name_key, display_name, latest_seq, deleted_on, scheduled_purge)
                     VALUES ('v', ?1, ?1, ?2, ?3, ?3)",
                )
                .unwrap();
            for i in 0..n {
                let key = format!("name-{i:08}");
                put_v.execute(params![key, version(i)]).unwrap();
                // Every third name is deleted, interleaved with the live ones.
                let deleted = (i % 3 == 0).then_some(5_i64);
                put_n
                    .execute(params![key, tx.last_insert_rowid(), deleted])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let time = |after: Option<String>, deleted: bool| {
        let store = &store;
        async move {
            let start = std::time::Instant::now();
            for _ in 0..20 {
                let len = if deleted {
                    store
                        .list_deleted("v", after.as_deref(), 25)
                        .await
                        .unwrap()
                        .len()
                } else {
                    store
                        .list_latest("v", after.as_deref(), 25)
                        .await
                        .unwrap()
                        .len()
                };
                assert_eq!(len, 25);
            }
            start.elapsed() / 20
        }
    };
    for deleted in [false, true] {
        let first = time(None, deleted).await;
        let deep = time(Some(format!("name-{:08}", n * 9 / 10)), deleted).await;
        println!("{n} names, deleted={deleted}: first page {first:?}, page at 90% {deep:?}");
        assert!(
            deep < first * 5 + Duration::from_millis(5),
            "deep page {deep:?} vs first {first:?}"
        );
    }
    store.close().await;
}

/// Listing live names seeks the primary key (keyset paging), with no temporary sort; a version 1 database
/// (with the former covering `names_live` and `versions_by_name` indexes) is migrated and keeps its rows.
#[tokio::test]
async fn live_listing_seeks_the_primary_key_and_v1_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO versions (vault, name_key, version, sealed, enabled, created, updated)
                 VALUES ('v', 'a', '01', x'01', 1, 1, 1);
             INSERT INTO names (vault, name_key, display_name, latest_seq) VALUES ('v', 'a', 'A', 1);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let listed = store.list_latest("v", None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "A");
    store.close().await;
    let c = Connection::open(&path).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let index_sql = |index: &str| -> Option<String> {
        c.query_row(
            "SELECT sql FROM sqlite_master WHERE name = ?1",
            [index],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    };
    // Version 3 dropped `versions_by_name`; version 2 dropped the covering `names_live` (it held `latest_seq`,
    // which every set changes), and version 4 brought back a `names_live` of the key alone.
    assert_eq!(index_sql("versions_by_name"), None);
    let live = index_sql("names_live").expect("names_live");
    assert!(
        live.contains("(vault, name_key) WHERE deleted_on IS NULL"),
        "{live}"
    );
    let plan: Vec<String> = c
        .prepare(&format!("EXPLAIN QUERY PLAN {SQL_LIST_LATEST} LIMIT 25"))
        .unwrap()
        .query_map(params!["v", "", PAST_EVERY_KEY], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let plan = plan.join(" | ");
    assert!(
        plan.contains("SEARCH n USING PRIMARY KEY (vault=? AND name_key>? AND name_key<?)"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

/// A version 4 database (the sealed value in the middle of `versions`) is rebuilt with the value last: every
/// version keeps its `seq`, value and attributes; AUTOINCREMENT's high-water mark survives (a purged last
/// version's seq is not handed out again); the unique (vault, name_key, version) index is there again.
#[tokio::test]
async fn a_version_4_database_gets_its_values_last_and_keeps_every_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let big = row("big", &version(2), 2);
    let big = VersionRow {
        sealed: (0..=255u8).cycle().take(5_000).collect(),
        ..big
    };
    {
        let c = Connection::open(&path).unwrap();
        for script in [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4] {
            c.execute_batch(script).unwrap();
        }
        c.pragma_update(None, "user_version", 4).unwrap();
        let mut put = c
            .prepare(
                "INSERT INTO versions (vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp,
                                       created, updated)
                 VALUES ('v', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .unwrap();
        for r in [
            row("a", &version(1), 1),
            big.clone(),
            row("gone", &version(3), 3),
        ] {
            put.execute(params![
                name_key(&r.name),
                r.version,
                r.sealed,
                r.content_type,
                tags_json(&r.tags).unwrap(),
                r.enabled,
                r.nbf,
                r.exp,
                r.created,
                r.updated
            ])
            .unwrap();
        }
        c.execute_batch(
            "INSERT INTO names (vault, name_key, display_name, latest_seq) VALUES ('v', 'a', 'a', 1);
             INSERT INTO names (vault, name_key, display_name, latest_seq) VALUES ('v', 'big', 'big', 2);
             DELETE FROM versions WHERE seq = 3;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get_version("v", "big", None).await.unwrap(),
        Some(big.clone())
    );
    assert_eq!(
        store.get_version("v", "a", None).await.unwrap(),
        Some(row("a", &version(1), 1))
    );
    let listed = store.list_latest("v", None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a", "big"]
    );
    store
        .put_version("v", row("a", &version(4), 4))
        .await
        .unwrap();
    store.close().await;

    let c = Connection::open(&path).unwrap();
    let columns: Vec<String> = all_rows(
        &c,
        "SELECT name FROM pragma_table_info('versions') ORDER BY cid",
        |r| r.get(0),
    );
    assert_eq!(
        columns.last().map(String::as_str),
        Some("sealed"),
        "{columns:?}"
    );
    assert_eq!(columns.len(), 12, "{columns:?}");
    let seqs: Vec<(i64, String)> =
        all_rows(&c, "SELECT seq, version FROM versions ORDER BY seq", |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
    // Seq 3 was taken (and its version purged) before the upgrade: the new version gets 4.
    assert_eq!(
        seqs,
        [(1, version(1)), (2, version(2)), (4, version(4))],
        "kept seqs, and no reuse"
    );
    let sequences: Vec<(String, i64)> = all_rows(
        &c,
        "SELECT name, seq FROM sqlite_sequence ORDER BY name",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(sequences, [("versions".to_string(), 4)]);
    let unique: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'versions'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        unique
            .contains("UNIQUE INDEX versions_name_version ON versions (vault, name_key, version)"),
        "{unique}"
    );
}

/// (bytes read, read calls, bytes written, write calls) of this thread so far.
fn thread_io() -> [u64; 4] {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    let get = |key: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    [get("rchar:"), get("syscr:"), get("wchar:"), get("syscw:")]
}

/// Write system calls this thread made so far (`syscw` of `/proc/thread-self/io`).
fn thread_writes() -> u64 {
    thread_io()[3]
}

/// Rows of about 600 bytes each in a plain table, `n` of them from `from` on, in one transaction; returns the
/// write system calls the commit made on this thread (the frames go to the WAL at the commit).
fn insert_blobs(c: &Connection, from: i64, n: i64) -> u64 {
    c.execute_batch("BEGIN").unwrap();
    for i in from..from + n {
        c.execute(
            "INSERT INTO blobs (id, body) VALUES (?1, ?2)",
            rusqlite::params![i, vec![(i % 251) as u8; 600]],
        )
        .unwrap();
    }
    let before = thread_writes();
    c.execute_batch("COMMIT").unwrap();
    thread_writes() - before
}

/// Every blob `[from, from + n)` is there, with its own bytes, as `c` sees it.
fn assert_blobs(c: &Connection, from: i64, n: i64) {
    let found: i64 = c
        .query_row(
            "SELECT count(*) FROM blobs WHERE id >= ?1 AND id < ?2",
            [from, from + n],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(found, n, "rows {from}..{}", from + n);
    let mut st = c
        .prepare("SELECT id, body FROM blobs WHERE id >= ?1 AND id < ?2")
        .unwrap();
    let rows = st
        .query_map([from, from + n], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap();
    for row in rows {
        let (id, body) = row.unwrap();
        assert_eq!(body, vec![(id % 251) as u8; 600], "row {id}");
    }
}

/// The writer's connection (the `walbuf` VFS) hands a commit's WAL frames to the kernel in one or two writes,
/// where SQLite alone makes two per frame; what it committed is what another connection (the default VFS,
/// as readers and the checkpointer use) reads at once, and what the file holds after a reopen.
#[test]
fn a_commit_reaches_the_wal_in_a_write_or_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let run = |buffered: bool, from: i64| {
        let c = open_writer_with(&path, buffered).unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        )
        .unwrap();
        // Warm: the table's first pages and the WAL's header are written before the measured commit.
        insert_blobs(&c, from, 1);
        let writes = insert_blobs(&c, from + 1, 60);
        let reader = open_reader(&path, 0).unwrap();
        assert_blobs(&reader, from, 61);
        writes
    };
    // 60 rows of 600 bytes on 1-KiB pages: at least 36 frames, 72 writes without the buffer.
    let plain = run(false, 0);
    let buffered = run(true, 1000);
    assert!(plain >= 72, "without the buffer: {plain} writes");
    assert!(buffered <= 2, "with the buffer: {buffered} writes");
    // A commit is in the file when SQLite publishes it even without a sync (the store always syncs; the
    // buffer does not depend on it).
    {
        let c = open_writer(&path).unwrap();
        c.pragma_update(None, "synchronous", "OFF").unwrap();
        insert_blobs(&c, 2000, 61);
        assert_blobs(&open_reader(&path, 0).unwrap(), 2000, 61);
    }
    let c = open_writer(&path).unwrap();
    assert_blobs(&c, 0, 61);
    assert_blobs(&c, 1000, 61);
    assert_blobs(&c, 2000, 61);
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// On a device that does not promise power-safe overwrites (here: the `psow=0` URI parameter), SQLite pads a
/// commit to a sector boundary and writes a frame's tail after its sync, which the buffer's commit rule would
/// not see: such a WAL file is not buffered at all, and its commits are as SQLite writes them.
#[test]
fn without_powersafe_overwrite_the_wal_is_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let uri = format!("file:{}?psow=0", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags_and_vfs(&uri, flags, walbuf::name().unwrap()).unwrap();
    c.pragma_update(None, "page_size", PAGE_SIZE).unwrap();
    let mode: String = c
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .unwrap();
    insert_blobs(&c, 0, 1);
    let writes = insert_blobs(&c, 1, 60);
    assert!(writes >= 72, "{writes} writes");
    assert_blobs(&open_reader(&path, 0).unwrap(), 0, 61);
}

/// A transaction larger than the writer's page cache spills pages into the WAL before its commit and reads
/// them back (and rewrites some in place, at earlier offsets, when it changes them again): the buffered
/// frames must be in the file before any of that. Each transaction here inserts, then rewrites every row
/// it inserted; both are checked from the writer itself, from another connection, and after a reopen.
#[test]
fn spilled_frames_are_read_back_and_rewritten_through_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    {
        let c = open_writer(&path).unwrap();
        // 16 pages of cache: 2,000 rows of 600 bytes spill many times over.
        c.pragma_update(None, "cache_size", 16).unwrap();
        c.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .unwrap();
        for round in 0..3i64 {
            let from = round * 10_000;
            c.execute_batch("BEGIN").unwrap();
            for i in from..from + 2_000 {
                c.execute(
                    "INSERT INTO blobs (id, body) VALUES (?1, zeroblob(600))",
                    [i],
                )
                .unwrap();
            }
            for i in from..from + 2_000 {
                c.execute(
                    "UPDATE blobs SET body = ?2 WHERE id = ?1",
                    rusqlite::params![i, vec![(i % 251) as u8; 600]],
                )
                .unwrap();
            }
            assert_blobs(&c, from, 2_000);
            c.execute_batch("COMMIT").unwrap();
            assert_blobs(&open_reader(&path, 0).unwrap(), from, 2_000);
        }
    }
    let c = open_writer(&path).unwrap();
    for round in 0..3i64 {
        assert_blobs(&c, round * 10_000, 2_000);
    }
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// Name number `i` of the store benchmarks below, with a 120-byte (sealed) value.
fn bench_row(i: usize, version: String) -> VersionRow {
    VersionRow {
        name: format!("bench-{i:07}"),
        version,
        sealed: vec![0x5a; 120],
        content_type: None,
        tags: None,
        enabled: true,
        nbf: None,
        exp: None,
        created: 1,
        updated: 1,
    }
}

/// (CPU nanoseconds, user ticks, system ticks) of this thread so far.
fn thread_cpu() -> [u64; 3] {
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    [
        ns.split_whitespace().next().unwrap().parse().unwrap(),
        fields[11].parse().unwrap(),
        fields[12].parse().unwrap(),
    ]
}

/// What the writer spends per set, measured without the other threads: sets over 10,000 names run the way
/// the writer runs them (one transaction per batch of KV_BENCH_BATCH, default 34 — what 64 concurrent
/// callers make —, one savepoint per set) on this thread, after KV_BENCH_WARM_UP sets (default a tenth of
/// KV_BENCH_PUTS, default 50,000) in batches of 64, through the writer's own `run_batch`. A checkpoint every 50 batches is left out of the counts.
/// Prints CPU time and file reads and writes per set (a WAL frame is two writes); KV_BENCH_CACHE_KIB
/// overrides [`WRITER_CACHE_KIB`]. Run it alone, in release:
/// `cargo test --release -p keyvault-server --lib writer_cost_direct -- --ignored --nocapture`
#[test]
#[ignore = "slow: a benchmark"]
fn writer_cost_direct() {
    const NAMES: usize = 10_000;
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<i64>().ok());
    let puts = env("KV_BENCH_PUTS").map_or(50_000, |n| n as usize);
    let batch = env("KV_BENCH_BATCH").map_or(34, |n| n as usize);
    let warm_up = env("KV_BENCH_WARM_UP").map_or(puts / 10, |n| n as usize);
    let (dir, c) = migrated_writer();
    let path = dir.path().join("kv.db");
    if let Some(kib) = env("KV_BENCH_CACHE_KIB") {
        c.pragma_update(None, "cache_size", -kib).unwrap();
    }
    let checkpointer = open_checkpointer(&path).unwrap();
    let w = Tx::new(&c).unwrap();
    let stats = Stats::default();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_row = |k: usize, preload: bool| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let i = if preload {
            k
        } else {
            (r >> 33) as usize % NAMES
        };
        bench_row(i, format!("{r:016x}{k:016x}"))
    };
    // Counts (CPU ns, user ticks, system ticks, bytes read, reads, bytes written, writes) so far.
    let counts = || {
        let (cpu, io) = (thread_cpu(), thread_io());
        [cpu[0], cpu[1], cpu[2], io[0], io[1], io[2], io[3]]
    };
    let mut spent = [0; 7];
    let mut k = 0;
    for (preload, total, size) in [
        (true, NAMES, 64),
        (false, warm_up, 64),
        (false, puts, batch),
    ] {
        let start = counts();
        let mut left_out = [0; 7];
        let end = k + total;
        let mut batches = 0;
        while k < end {
            let rows: Vec<VersionRow> = (k..(k + size).min(end))
                .map(|k| next_row(k, preload))
                .collect();
            k += rows.len();
            // The writer's own batch path (one transaction, a savepoint per set, one commit).
            let jobs: Vec<Box<dyn WriteJob>> = rows
                .into_iter()
                .map(|row| {
                    let (reply, _) = oneshot::channel();
                    Box::new(Job {
                        f: Some(move |c: &Tx<'_>| put(c, "v", &row)),
                        out: None,
                        reply,
                        mark: WriteMark::none(),
                    }) as Box<dyn WriteJob>
                })
                .collect();
            let commits = stats.commits.load(Ordering::Relaxed);
            run_batch(&w, jobs, &stats);
            assert_eq!(
                stats.commits.load(Ordering::Relaxed),
                commits + 1,
                "the batch committed"
            );
            batches += 1;
            if batches % 50 == 0 {
                let before = counts();
                checkpointer
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .unwrap();
                let after = counts();
                (0..7).for_each(|i| left_out[i] += after[i] - before[i]);
            }
        }
        let stop = counts();
        spent = std::array::from_fn(|i| stop[i] - start[i] - left_out[i]);
    }
    let per_put = |n: u64| n as f64 / puts as f64;
    println!(
        "{puts} sets in batches of {batch}: writer {:.1} µs/set (user {:.1}, system {:.1}); per set {:.2} reads \
         ({:.0} B), {:.2} writes ({:.0} B); database {} KiB",
        per_put(spent[0]) / 1000.0,
        per_put(spent[1]) * 10_000.0,
        per_put(spent[2]) * 10_000.0,
        per_put(spent[4]),
        per_put(spent[3]),
        per_put(spent[6]),
        per_put(spent[5]),
        std::fs::metadata(&path).unwrap().len() / 1024,
    );
}

/// What a GET that misses the cache costs SQLite: KV_BENCH_NAMES names (default 100,000, one version each,
/// 120-byte values) are written, then one reader looks up KV_BENCH_READS random names (default 200,000) by
/// name through [`find_live`], as a GET that misses the cache does, after as many unmeasured lookups.
/// Prints CPU time and file reads per lookup. KV_BENCH_READER_KIB overrides [`READER_CACHE_KIB`],
/// KV_BENCH_MMAP maps that many bytes of the file, as `mmap_mib` does. Run it alone, in release:
/// `cargo test --release -p keyvault-server --lib reader_cost_direct -- --ignored --nocapture`
#[test]
#[ignore = "slow: a benchmark"]
fn reader_cost_direct() {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<i64>().ok());
    let names = env("KV_BENCH_NAMES").map_or(100_000, |n| n as usize);
    let reads = env("KV_BENCH_READS").map_or(200_000, |n| n as usize);
    let (dir, mut c) = migrated_writer();
    let path = dir.path().join("kv.db");
    // Written in a scattered order, as clients create names: the B-trees fill as they do in service.
    let order: Vec<usize> = (0..names).map(|i| i.wrapping_mul(7_919) % names).collect();
    assert!(names % 7_919 != 0, "a permutation of the names");
    for chunk in order.chunks(1_000) {
        let tx = c.transaction().unwrap();
        let w = Tx::new(&tx).unwrap();
        for &i in chunk {
            let version = format!("{:032x}", (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            put(&w, "v", &bench_row(i, version)).unwrap();
        }
        drop(w);
        tx.commit().unwrap();
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    // Opened as the store opens its readers (`mmap_mib` = KV_BENCH_MMAP bytes).
    let reader = open_reader(&path, env("KV_BENCH_MMAP").unwrap_or(0)).unwrap();
    if let Some(kib) = env("KV_BENCH_READER_KIB") {
        reader.pragma_update(None, "cache_size", -kib).unwrap();
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lookup = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let i = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % names;
        let found = find_live(&reader, "v", &format!("bench-{i:07}"), None).unwrap();
        assert!(found.is_some_and(|(_, row, latest)| latest && row.sealed.len() == 120));
    };
    (0..reads).for_each(|_| lookup());
    let (cpu, io) = (thread_cpu(), thread_io());
    (0..reads).for_each(|_| lookup());
    let (cpu2, io2) = (thread_cpu(), thread_io());
    let per = |a: u64, b: u64| (b - a) as f64 / reads as f64;
    println!(
        "{reads} lookups among {names} names: {:.2} µs/lookup (user {:.2}, system {:.2}); {:.2} reads ({:.0} B) \
         per lookup; database {} KiB",
        per(cpu[0], cpu2[0]) / 1000.0,
        per(cpu[1], cpu2[1]) * 10_000.0,
        per(cpu[2], cpu2[2]) * 10_000.0,
        per(io[1], io2[1]),
        per(io[0], io2[0]),
        std::fs::metadata(&path).unwrap().len() / 1024,
    );
}

// The cache of latest versions (`store/cache.rs`) inside the store: exact under concurrent writes, and the
// store's lock.

/// Writers put ever newer versions while readers read: a read never returns a version older than one
/// acknowledged before the read started, and most reads are served by the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_never_go_back_behind_acknowledged_writes() {
    const NAMES: usize = 4;
    const WRITES: i64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kv.db")).unwrap());
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..NAMES).map(|_| AtomicI64::new(0)).collect());
    for (i, floor) in acked.iter().enumerate() {
        store
            .put_version("v", row(&format!("n{i}"), &version(1), 1))
            .await
            .unwrap();
        floor.store(1, Ordering::SeqCst);
    }
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (store, acked, done, reads) =
            (store.clone(), acked.clone(), done.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !done.load(Ordering::SeqCst) {
                let n = i % NAMES;
                i += 1;
                let floor = acked[n].load(Ordering::SeqCst);
                let got = store
                    .get_version("v", &format!("N{n}"), None)
                    .await
                    .unwrap();
                let got = got.expect("a live name");
                assert!(
                    got.created >= floor,
                    "read version {} of n{n} after {floor} was acknowledged",
                    got.created
                );
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut writers = Vec::new();
    for n in 0..NAMES {
        let (store, acked) = (store.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for k in 2..=WRITES {
                if k % 10 == 0 {
                    let patch = VersionPatch {
                        updated: k,
                        ..VersionPatch::default()
                    };
                    store
                        .update_version("v", &format!("n{n}"), None, patch)
                        .await
                        .unwrap();
                }
                store
                    .put_version("v", row(&format!("n{n}"), &version(k as usize), k))
                    .await
                    .unwrap();
                acked[n].store(k, Ordering::SeqCst);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 100);
    // Quiet now: the latest versions are cached after one read each, and are the latest.
    for n in 0..NAMES {
        let name = format!("n{n}");
        store.get_version("v", &name, None).await.unwrap();
        let cached = match store.cache.get("v", &name, None) {
            Lookup::Hit(row) => row,
            _ => panic!("{name} not cached after a read"),
        };
        assert_eq!(cached.created, WRITES);
    }
    // A delete hides the name at once; a recover shows it again.
    store.soft_delete("v", "n0", 10, 20).await.unwrap().unwrap();
    assert!(store.get_version("v", "n0", None).await.unwrap().is_none());
    assert!(store.get_version("v", "n0", None).await.unwrap().is_none());
    store.recover("v", "n0").await.unwrap().unwrap();
    assert_eq!(
        store
            .get_version("v", "n0", None)
            .await
            .unwrap()
            .unwrap()
            .created,
        WRITES
    );
    // By version: the cached latest answers its own version; an older one comes from the database.
    let old = version(5);
    assert_eq!(
        store
            .get_version("v", "n1", Some(&old))
            .await
            .unwrap()
            .unwrap()
            .created,
        5
    );
    store.close().await;
}

/// `mmap_bytes` maps the file into each reader (and only there: the writer keeps `pread`/`pwrite`); the
/// default maps nothing. Reads through the mapping see every committed write.
#[tokio::test]
async fn readers_map_the_file_only_when_asked() {
    let mmap_of = |store: &SqliteStore| -> i64 {
        let c = store.readers.checkout().unwrap();
        let v = c.query_row("PRAGMA mmap_size", [], |r| r.get(0)).unwrap();
        store.readers.checkin(c);
        v
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("plain.db")).unwrap();
    assert_eq!(mmap_of(&store), 0);
    store.close().await;

    let options = SqliteOptions {
        cache_bytes: 0, // every read goes to a reader
        mmap_bytes: 8 << 20,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&dir.path().join("mapped.db"), options).unwrap();
    assert_eq!(mmap_of(&store), 8 << 20);
    for n in 1..=3 {
        for name in ["a", "b"] {
            store
                .put_version("v", row(name, &version(n), n as i64))
                .await
                .unwrap();
            let got = store.get_version("v", name, None).await.unwrap().unwrap();
            assert_eq!(got, row(name, &version(n), n as i64));
        }
    }
    let page = store.list_latest("v", None, 10).await.unwrap();
    assert_eq!(page.len(), 2);
    store.close().await;
}

/// Puts, updates and deletes race on a few names from many tasks: once all are answered, the cache holds
/// for each name exactly what the database holds as its latest version. Every task ends with puts and
/// writes each name every third call, so each name's last write is a put, which caches its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writes_leave_only_the_latest_version_cached() {
    const NAMES: usize = 3;
    const TASKS: usize = 8;
    const WRITES: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..WRITES {
                let name = format!("Name{}", (t + k) % NAMES);
                let n = (t * WRITES + k) as i64;
                match if k + 3 < WRITES { k % 12 } else { 0 } {
                    // Now and then an update of the latest version, or a delete and a recover: writes that
                    // are not puts, in flight while puts to the same name end.
                    5 => {
                        let patch = VersionPatch {
                            content_type: Some(format!("updated-{n}")),
                            updated: n,
                            ..VersionPatch::default()
                        };
                        store.update_version("v", &name, None, patch).await.unwrap();
                    }
                    11 => {
                        if store
                            .soft_delete("v", &name, n, n + 1)
                            .await
                            .unwrap()
                            .is_some()
                        {
                            store.recover("v", &name).await.unwrap();
                        }
                    }
                    _ => {
                        // A put to a name being deleted is refused (Deleted); that is one of the races.
                        let _ = store
                            .put_version("v", row(&name, &version(n as usize + 1), n))
                            .await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reader = open_reader(&path, 0).unwrap();
    for i in 0..NAMES {
        let key = format!("name{i}");
        let (_, latest, _) = find_live(&reader, "v", &key, None).unwrap().expect("live");
        match store.cache.get("v", &key, None) {
            Lookup::Hit(cached) => assert!(
                cached == latest,
                "{key}: {cached:?} cached, {latest:?} stored"
            ),
            Lookup::Miss(_) => panic!("{key}: its last write, a put, did not cache its row"),
            Lookup::MissOlder(_) | Lookup::Busy => panic!("{key}: no write is in flight"),
        }
    }
    store.close().await;
}

/// Reads of older versions by id racing puts, updates of older versions by id, and deletes with recovers:
/// whatever older version the cache holds in the end is what the database holds for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writes_leave_no_stale_older_version_cached() {
    const NAMES: usize = 2;
    const TASKS: usize = 4;
    const WRITES: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    for i in 0..NAMES {
        store
            .put_version("v", row(&format!("name{i}"), &version(1), 1))
            .await
            .unwrap();
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for r in 0..TASKS {
        let (store, done) = (store.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut k = r;
            while done.load(Ordering::SeqCst) < TASKS {
                let name = format!("name{}", k % NAMES);
                // Versions 1 to 40 of each name: some exist, some are not written yet.
                let v = version(1 + (k * 7) % 40);
                store.get_version("v", &name, Some(&v)).await.unwrap();
                k += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut writers = Vec::new();
    for t in 0..TASKS {
        let (store, done) = (store.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            for k in 0..WRITES {
                let name = format!("name{}", (t + k) % NAMES);
                let n = 2 + t * WRITES + k;
                match k % 6 {
                    // An update of an older version, by id.
                    1 | 4 => {
                        let patch = VersionPatch {
                            content_type: Some(format!("updated-{n}")),
                            updated: n as i64,
                            ..VersionPatch::default()
                        };
                        let older = version(1 + (n * 7) % 40);
                        store
                            .update_version("v", &name, Some(&older), patch)
                            .await
                            .unwrap();
                    }
                    5 => {
                        if store
                            .soft_delete("v", &name, n as i64, n as i64 + 1)
                            .await
                            .unwrap()
                            .is_some()
                        {
                            store.recover("v", &name).await.unwrap();
                        }
                    }
                    _ => {
                        // Versions 2 to 40 only (ids the readers ask for); a repeated one is refused.
                        let v = version(2 + n % 39);
                        let _ = store.put_version("v", row(&name, &v, n as i64)).await;
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    // Quiet now: each name's latest and two older versions read, so the check below covers entries filled
    // during the race (if any survived) and after it.
    for i in 0..NAMES {
        let key = format!("name{i}");
        store.get_version("v", &key, None).await.unwrap();
        for n in [1, 2, 3] {
            store
                .get_version("v", &key, Some(&version(n)))
                .await
                .unwrap();
        }
    }
    let reader = open_reader(&path, 0).unwrap();
    let mut older_cached = 0;
    for i in 0..NAMES {
        let key = format!("name{i}");
        for n in 1..=40 {
            let v = version(n);
            if let Lookup::Hit(cached) = store.cache.get("v", &key, Some(&v)) {
                let (_, stored, _) = find_live(&reader, "v", &key, Some(&v))
                    .unwrap()
                    .expect("a cached version exists");
                assert!(
                    cached == stored,
                    "{key} {v}: {cached:?} cached, {stored:?} stored"
                );
                older_cached += 1;
            }
        }
    }
    assert!(older_cached > 0, "nothing cached to check");
    store.close().await;
}

/// A put caches the version it makes latest; a read by version fills the cache with the latest, or, when an
/// older version is asked for and the latest is cached, with that version beside it; any write to the name
/// drops both, and every read answers what the database holds.
#[tokio::test]
async fn reads_by_version_cache_the_latest_and_older_versions_beside_it() {
    /// `created` of version `v` of "n" (its latest if `None`): each version below is created at its number.
    async fn created(store: &SqliteStore, v: Option<usize>) -> i64 {
        let version = v.map(version);
        let row = store.get_version("v", "n", version.as_deref()).await;
        row.unwrap().expect("found").created
    }
    fn cached(store: &SqliteStore) -> Option<String> {
        match store.cache.get("v", "n", None) {
            Lookup::Hit(r) => Some(r.version),
            Lookup::Miss(_) => None,
            Lookup::MissOlder(_) | Lookup::Busy => panic!("no write is in flight"),
        }
    }
    /// Whether version `v` of "n" is served from the cache.
    fn cached_version(store: &SqliteStore, v: usize) -> bool {
        matches!(store.cache.get("v", "n", Some(&version(v))), Lookup::Hit(r) if r.version == version(v))
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kv.db")).unwrap();
    for n in 1..=2 {
        store
            .put_version("v", row("n", &version(n), n as i64))
            .await
            .unwrap();
        assert_eq!(
            cached(&store),
            Some(version(n)),
            "the put cached its version"
        );
    }
    // An older version comes from the database once, then from the cache, beside the latest.
    assert!(!cached_version(&store, 1));
    assert_eq!(created(&store, Some(1)).await, 1);
    assert!(cached_version(&store, 1));
    assert_eq!(created(&store, Some(1)).await, 1);
    assert_eq!(cached(&store), Some(version(2)));
    // Updating the older version drops it (and the latest): the next reads see the update.
    let patch = VersionPatch {
        content_type: Some("changed".into()),
        tags: None,
        enabled: Some(false),
        nbf: None,
        exp: None,
        updated: 50,
    };
    store
        .update_version("v", "n", Some(&version(1)), patch)
        .await
        .unwrap()
        .expect("updated");
    assert!(!cached_version(&store, 1));
    assert_eq!(cached(&store), None);
    assert_eq!(created(&store, None).await, 2);
    for _ in 0..2 {
        let row = store
            .get_version("v", "n", Some(&version(1)))
            .await
            .unwrap()
            .expect("found");
        assert_eq!(
            (row.content_type.as_deref(), row.enabled, row.updated),
            (Some("changed"), false, 50)
        );
    }
    assert!(cached_version(&store, 1), "read again after the update");
    // Once the entry is gone (a write that did not commit here: a put of a name in the way), an older
    // version is not cached without its latest; the latest, asked for by its version, fills it.
    let clash = store.put_version("v", row("n", &version(2), 9)).await;
    assert!(clash.is_err(), "a repeated version id is refused");
    assert_eq!(cached(&store), None);
    assert_eq!(created(&store, Some(1)).await, 1);
    assert_eq!(cached(&store), None);
    assert!(!cached_version(&store, 1));
    assert_eq!(created(&store, Some(2)).await, 2);
    assert_eq!(cached(&store), Some(version(2)));
    // A new version replaces them; the old latest, read by version, is cached beside it.
    assert_eq!(created(&store, Some(1)).await, 1);
    assert!(cached_version(&store, 1));
    store
        .put_version("v", row("n", &version(3), 3))
        .await
        .unwrap();
    assert!(
        !cached_version(&store, 1),
        "the put dropped the older versions"
    );
    assert_eq!(created(&store, Some(2)).await, 2);
    assert!(cached_version(&store, 2));
    assert_eq!(cached(&store), Some(version(3)));
    assert_eq!(created(&store, None).await, 3);
    // A delete hides every version at once.
    store.soft_delete("v", "n", 10, 20).await.unwrap().unwrap();
    assert!(
        store
            .get_version("v", "n", Some(&version(2)))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!cached_version(&store, 2));
    store.close().await;
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let first = SqliteStore::open(&path).unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("in use"), "{m}"),
        other => panic!("expected the second open to be refused, got {other:?}"),
    }
    first.close().await;
    let second = open_once_released(&path).await;
    second.close().await;
    drop(first);
    drop(second);
    // Dropping (not closing) also releases it.
    let third = open_once_released(&path).await;
    drop(third);
    open_once_released(&path).await.close().await;
}

/// Opens the store at `path` once its lock is released. Another test of this binary may fork (to start a
/// process) while a store's lock file is open: the child holds the lock (an `flock`, on the shared open file)
/// until it execs and closes its close-on-exec copy, so a release may take a moment to show under load (a CI
/// run failed here on the first open after a close).
async fn open_once_released(path: &std::path::Path) -> SqliteStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SqliteStore::open(path) {
            Ok(store) => return store,
            Err(StoreError::Unavailable(m))
                if m.contains("in use") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the store did not open: {e:?}"),
        }
    }
}

/// Soft-deleted names crowding the key order do not make a page read them all: with 3,000 deleted names
/// before the first live ones (and 40 more between two live ones further on), every page is right (the live
/// names in order, exactly once, across page boundaries), and reading the first page costs SQLite a bounded
/// multiple of what a page among live names costs (virtual-machine steps of the statements it runs: about 6×,
/// the step budget spent among deleted names before it switches to `names_live`), not 3,000 rows' worth (27×
/// without the budget).
#[test]
fn pages_do_not_read_every_deleted_name() {
    let (_dir, mut c) = migrated_writer();
    let tx = c.transaction().unwrap();
    let w = Tx::new(&tx).unwrap();
    let mut live = Vec::new();
    for i in 0..4_000 {
        let name = format!("n-{i:05}");
        put(&w, "v", &row(&name, &version(i), i as i64)).unwrap();
        if i < 3_000 || (3_500..3_540).contains(&i) {
            tx.execute(
                "UPDATE names SET deleted_on = 1, scheduled_purge = 2 WHERE name_key = ?1",
                [&name],
            )
            .unwrap();
        } else {
            live.push(name);
        }
    }
    drop(w);
    tx.commit().unwrap();

    // Every live name once, in order, for several page sizes.
    for limit in [1, 7, 26, 100] {
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = list_latest(&c, "v", (&after, PAST_EVERY_KEY), limit).unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = name_key(&last.name);
            seen.extend(page.into_iter().map(|r| r.name));
        }
        assert_eq!(seen, live, "page size {limit}");
    }

    // The cost of a page: SQLite VM steps of both listing statements (their counters reset first).
    let steps = |after: &str| {
        for sql in [SQL_LIST_LATEST, SQL_LIST_LIVE] {
            c.prepare_cached(sql)
                .unwrap()
                .reset_status(rusqlite::StatementStatus::VmStep);
        }
        let page = list_latest(&c, "v", (after, PAST_EVERY_KEY), 26).unwrap();
        assert_eq!(page.len(), 26);
        [SQL_LIST_LATEST, SQL_LIST_LIVE]
            .iter()
            .map(|sql| {
                c.prepare_cached(sql)
                    .unwrap()
                    .get_status(rusqlite::StatementStatus::VmStep)
            })
            .sum::<i32>()
    };
    let among_live = steps("n-03100");
    let first = steps("");
    let across_deleted = steps("n-03490");
    assert!(
        first < among_live * 8 && across_deleted < among_live * 8,
        "VM steps: first page {first}, page across 40 deleted names {across_deleted}, page among live names \
         {among_live}"
    );
}

/// The writer thread runs ten nice levels above the process when the process may raise a thread's priority
/// (root or `CAP_SYS_NICE`), and keeps the process's priority, without failing, when it may not.
#[cfg(target_os = "linux")]
#[test]
fn writer_priority_is_raised_when_permitted() {
    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }
    // Whether this process may lower a thread's nice value: try it on a scratch thread.
    let (base, permitted) = std::thread::spawn(|| {
        let base = own_nice();
        let tid = rustix::thread::gettid();
        let permitted =
            base > -20 && rustix::process::setpriority_process(Some(tid), base - 1).is_ok();
        (base, permitted)
    })
    .join()
    .unwrap();
    let nice = std::thread::spawn(|| {
        raise_writer_priority();
        own_nice()
    })
    .join()
    .unwrap();
    if permitted {
        assert_eq!(nice, (base - WRITER_NICE_BOOST).max(-20));
    } else {
        assert_eq!(nice, base);
    }
    // A store's writer thread does it: every `sqlite-writer` thread of this process runs at that priority
    // (those of other tests too, all started the same way) once it is running.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kv.db")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let writers = loop {
        let writers: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                // Field 19 of `stat` is the nice value; the command name before it is in parentheses.
                let after_name = stat.rsplit_once(')')?.1;
                let nice = after_name.split_whitespace().nth(16)?.parse().ok()?;
                (comm.trim() == "sqlite-writer").then_some(nice)
            })
            .collect();
        if writers.iter().all(|&n| n == nice) && !writers.is_empty()
            || std::time::Instant::now() > deadline
        {
            break writers;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!writers.is_empty(), "no sqlite-writer thread found");
    assert!(
        writers.iter().all(|&n| n == nice),
        "{writers:?}, expected {nice}"
    );
    drop(store);
}

/// Under writes that never pause, the checkpointer has the WAL started over (pausing the writer for one
/// short pass) instead of leaving it to grow until SQLite checkpoints inside a commit. SQLite counts every
/// start-over in the WAL file's header (its checkpoint sequence number, bytes 12..16). Nothing written is
/// lost, before or after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_writes_have_the_wal_started_over_by_the_checkpointer() {
    const TASKS: usize = 8;
    const NAMES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let options = SqliteOptions {
        wal_rewind_frames: 128,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open_with(&path, options).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            // Each task writes its own names, so the last version it acknowledged is each one's latest.
            let mut last = std::collections::BTreeMap::new();
            let mut i = t;
            while store.wal_rewinds() < 4 && std::time::Instant::now() < deadline {
                let name = format!("n{}", i % NAMES);
                store
                    .put_version("v", row(&name, &version(i), i as i64))
                    .await
                    .unwrap();
                last.insert(name, i);
                i += TASKS;
            }
            last
        }));
    }
    let mut latest = std::collections::BTreeMap::new();
    for h in handles {
        latest.extend(h.await.unwrap());
    }
    let rewinds = store.wal_rewinds();
    let commits = store.committed_batches();
    let wal = std::fs::read(dir.path().join("kv.db-wal")).unwrap();
    let restarts = u32::from_be_bytes(wal[12..16].try_into().unwrap());
    let wal_frames = (wal.len() - 32) / (1024 + 24);
    println!(
        "{commits} commits, {rewinds} rewinds, {restarts} restarts, WAL file {wal_frames} frames"
    );
    assert!(
        rewinds >= 4,
        "the checkpointer copied the whole log with the writer paused"
    );
    // The writer starts the log over at its first commit after such a pass.
    assert!(restarts >= 3, "the log was started over {restarts} times");
    // Without the rewinds it grows to the writer's own checkpoint inside a commit (WAL_AUTOCHECKPOINT_PAGES).
    assert!(
        wal_frames < 20_000,
        "the log stayed short ({wal_frames} frames)"
    );
    let check = |store: Arc<SqliteStore>, latest: std::collections::BTreeMap<String, usize>| async move {
        for (name, i) in &latest {
            let got = store.get_version("v", name, None).await.unwrap().unwrap();
            assert_eq!(got.version, version(*i), "{name}");
        }
    };
    check(store.clone(), latest.clone()).await;
    store.close().await;
    drop(store);
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    check(store.clone(), latest).await;
    store.close().await;
}

/// A reader that keeps an old state of the database open holds every checkpoint back from the log's end: the
/// checkpointer then never pauses the writer (the pause could not lead to a start-over), writes go on, and
/// once the reader ends the log is started over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_reader_holds_rewinds_back_without_pausing_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let options = SqliteOptions {
        wal_rewind_frames: 64,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open_with(&path, options).unwrap());
    store
        .put_version("v", row("first", &version(0), 0))
        .await
        .unwrap();
    // A read transaction on the state with one secret, open while the writes below go on.
    let reader = store.readers.checkout().unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM names", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let write_for = |store: Arc<SqliteStore>, from: usize, until: std::time::Duration| async move {
        let end = std::time::Instant::now() + until;
        let mut i = from;
        while std::time::Instant::now() < end {
            store
                .put_version("v", row(&format!("n{}", i % 50), &version(i), i as i64))
                .await
                .unwrap();
            i += 1;
        }
        i
    };
    // Several checkpointer turns (100 ms each) with a log far past the threshold.
    let next = write_for(store.clone(), 1, Duration::from_millis(700)).await;
    assert!(next > 50, "writes went on ({next})");
    assert_eq!(
        store.wal_rewind_pauses(),
        0,
        "no pause while the reader holds the log"
    );
    assert_eq!(store.wal_rewinds(), 0);
    // The reader still sees its own state.
    let n: i64 = reader
        .query_row("SELECT count(*) FROM names", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    reader.execute_batch("COMMIT").unwrap();
    store.readers.checkin(reader);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut i = next;
    while store.wal_rewinds() == 0 && std::time::Instant::now() < deadline {
        i = write_for(store.clone(), i, Duration::from_millis(50)).await;
    }
    assert!(
        store.wal_rewinds() >= 1,
        "rewinds resume once the reader ended"
    );
    store.close().await;
}

/// The checkpointer's pause waits for the batch in progress and holds the next one back until it ends; a
/// writer that keeps starting batches cannot hold it off (the pause is requested before it waits).
#[test]
fn the_batch_gate_pauses_between_batches() {
    use std::sync::mpsc::channel;
    let gate = Arc::new(BatchGate::default());
    let batch = gate.begin_batch();
    let (paused_tx, paused_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let checkpointer = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            let pause = gate.pause();
            paused_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(pause);
        })
    };
    // The batch in progress keeps the pause waiting.
    assert!(paused_rx.recv_timeout(Duration::from_millis(200)).is_err());
    drop(batch);
    paused_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Paused: the writer's next batch waits.
    let (started_tx, started_rx) = channel();
    let writer = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            let _batch = gate.begin_batch();
            started_tx.send(()).unwrap();
        })
    };
    assert!(started_rx.recv_timeout(Duration::from_millis(200)).is_err());
    release_tx.send(()).unwrap();
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    checkpointer.join().unwrap();
    writer.join().unwrap();
    // And a writer that starts batch after batch does not keep a pause waiting beyond the current one.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (gate, stop) = (gate.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _batch = gate.begin_batch();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    for _ in 0..20 {
        let pause = gate.pause();
        assert!(!gate.lock().writing, "no batch runs while paused");
        drop(pause);
    }
    stop.store(true, Ordering::SeqCst);
    busy.join().unwrap();
}

/// A purged secret's bytes (sealed value, name, tags) are not left in the database file's free space.
#[tokio::test]
async fn purged_bytes_are_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut doomed = row("Doomed-Name-7f3a", &version(1), 1);
    // Large enough to spill into overflow pages (1 KiB pages), which a purge frees whole.
    doomed.sealed = b"SEALED-CANARY-".repeat(300);
    doomed.tags = Some(Tags::from([(
        "tag-canary".to_string(),
        "tv-canary".to_string(),
    )]));
    store.put_version("v", doomed).await.unwrap();
    for i in 0..20 {
        store
            .put_version("v", row(&format!("keep-{i}"), &version(i + 10), 1))
            .await
            .unwrap();
    }
    store
        .soft_delete("v", "doomed-name-7f3a", 10, 1_000_000)
        .await
        .unwrap()
        .unwrap();
    assert!(store.purge("v", "doomed-name-7f3a").await.unwrap());
    store.close().await;
    // Everything in the database file itself (the checkpoint copies the purge's pages over the old ones).
    let c = Connection::open(&path).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    let bytes = std::fs::read(&path).unwrap();
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for canary in [
        &b"SEALED-CANARY-"[..],
        b"Doomed-Name-7f3a",
        b"tag-canary",
        b"tv-canary",
    ] {
        assert!(
            !find(canary),
            "{} is still in the file",
            String::from_utf8_lossy(canary)
        );
    }
    assert!(find(b"keep-19"), "the other secrets are there");
}

/// The database and its log are readable by their owner only: new ones are made so, and an existing one that
/// others could read is made private when the store opens.
#[cfg(unix)]
#[tokio::test]
async fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .put_version("v", row("a", &version(1), 1))
        .await
        .unwrap();
    let files = [
        path.clone(),
        sibling(&path, "-wal"),
        sibling(&path, "-shm"),
        sibling(&path, ".lock"),
    ];
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    store.close().await;
    drop(store);
    // The log files are gone after a clean close.
    for file in [&files[0], &files[3]] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&files[3]), 0o600, "the lock file");
    assert_eq!(
        store
            .get_version("v", "a", None)
            .await
            .unwrap()
            .unwrap()
            .name,
        "a"
    );
}

/// A file SQLite finds damaged (`SQLITE_CORRUPT`): the read that found it fails (500), and from then on
/// changes are refused (503) and the store is not healthy (`/readyz`), so nothing more goes into it.
#[tokio::test]
async fn a_damaged_file_refuses_changes_and_is_not_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..400usize {
            store
                .put_version("v", row(&format!("name-{i:03}"), &version(i), 1))
                .await
                .unwrap();
        }
        store.close().await;
    }
    for side in ["kv.db-wal", "kv.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(side));
    }
    // The second half of the file's pages overwritten (the schema, at its start, stays readable).
    let mut bytes = std::fs::read(&path).unwrap();
    let half = bytes.len() / 2;
    assert!(half > 16 * 1024, "{} bytes", bytes.len());
    bytes[half..].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();

    let store = SqliteStore::open(&path).unwrap();
    let mut after: Option<String> = None;
    let found = loop {
        match store.list_latest("v", after.as_deref(), 25).await {
            Ok(rows) if rows.is_empty() => break None,
            Ok(rows) => after = rows.last().map(|r| r.name.clone()),
            Err(e) => break Some(e),
        }
    };
    let found = found.expect("a listing of every name reads a damaged page");
    assert!(
        matches!(&found, StoreError::Internal(m) if m.starts_with(DAMAGED)),
        "{found:?}"
    );
    let refused = store
        .put_version("v", row("new", &version(10_000), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Unavailable(m) if m.contains("damaged")),
        "{refused:?}"
    );
    assert!(store.health().await.is_err());
    store.close().await;
}

/// A restored snapshot (a database in rollback-journal mode) put next to the write-ahead log of the database
/// it replaced is refused, naming the log to remove: SQLite would apply the old log's pages to it. Without
/// the log it opens, and a database the store wrote itself (WAL mode) opens next to its own log.
#[tokio::test]
async fn a_restored_copy_next_to_the_replaced_databases_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .put_version("v", row("a", &version(1), 1))
        .await
        .unwrap();
    let copy = dir.path().join("copy.db");
    super::snapshot::snapshot(&path, &copy).unwrap();
    store.close().await;
    drop(store);
    let wal = dir.path().join("copy.db-wal");
    std::fs::write(&wal, vec![7u8; 4096]).unwrap();
    let e = SqliteStore::open(&copy).unwrap_err().to_string();
    assert!(
        e.contains("copy.db-wal") && e.contains("rollback-journal"),
        "{e}"
    );
    std::fs::remove_file(&wal).unwrap();
    let store = SqliteStore::open(&copy).unwrap();
    assert!(store.get_version("v", "a", None).await.unwrap().is_some());
    store.close().await;
    drop(store);
    // Now in WAL mode: its own (empty or not) log is no reason to refuse.
    std::fs::write(&wal, b"").unwrap();
    SqliteStore::open(&copy).unwrap().close().await;
}

/// The retention sweep's write requests end at a number of versions as well as of names, so a few names with
/// many versions each do not hold the writer (and every set) for long; each request says whether more may
/// be due, and the sweep goes on until none is.
#[test]
fn a_purge_chunk_ends_at_its_versions_too() {
    let (_dir, c) = migrated_writer();
    let setup = |c: &Connection| {
        for n in 0..3 {
            let key = format!("gone-{n}");
            for v in 0..5 {
                c.execute(
                    "INSERT INTO versions (vault, name_key, version, enabled, created, updated, sealed)
                     VALUES ('v', ?1, ?2, 1, 1, 1, X'00')",
                    params![key, version(n * 10 + v)],
                )
                .unwrap();
            }
            c.execute(
                "INSERT INTO names (vault, name_key, display_name, latest_seq, deleted_on, scheduled_purge)
                 VALUES ('v', ?1, ?1, (SELECT max(seq) FROM versions), 1, 10)",
                params![key],
            )
            .unwrap();
        }
    };
    let versions = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM versions", [], |r| r.get(0))
            .unwrap()
    };
    setup(&c);
    // At most 6 versions a request: two names (5 + 5 reach it), more may be due; then the last one.
    assert_eq!(purge_expired_chunk(&c, 100, 256, 6).unwrap(), (2, true));
    assert_eq!(versions(&c), 5);
    assert_eq!(purge_expired_chunk(&c, 100, 256, 6).unwrap(), (1, false));
    assert_eq!(versions(&c), 0);
    // Not yet due: nothing.
    setup(&c);
    assert_eq!(purge_expired_chunk(&c, 5, 256, 6).unwrap(), (0, false));
    // The bound on names still holds.
    assert_eq!(purge_expired_chunk(&c, 100, 2, 1000).unwrap(), (2, true));
    assert_eq!(purge_expired_chunk(&c, 100, 2, 1000).unwrap(), (1, false));
    assert_eq!(versions(&c), 0);
}

/// A lock that its holder lets go of within `LOCK_WAIT` is taken (a store closed a moment before, whose lock
/// a forked child still held); one held past it is refused.
#[test]
fn a_lock_released_within_the_wait_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let holder = super::lock_database(&path).unwrap();
    let started = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(150));
        drop(holder);
    });
    let taken = super::lock_database(&path).unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    release.join().unwrap();
    let started = std::time::Instant::now();
    match super::lock_database(&path) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("in use"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(started.elapsed() >= super::LOCK_WAIT);
    drop(taken);
}
