//! The PostgreSQL store against a private cluster: the shared conformance suite, several "nodes" (stores)
//! over one database racing each other, migrations from several nodes at once, leadership hand-over, and
//! recovery from a database restart. Skipped (with a message) only where no PostgreSQL binaries exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::store::conformance;
use crate::store::pgtest;

fn row(name: &str, version: String, n: i64) -> VersionRow {
    VersionRow {
        name: name.to_string(),
        version,
        sealed: vec![0, 0xff, n as u8],
        content_type: None,
        tags: None,
        enabled: true,
        nbf: None,
        exp: None,
        created: n,
        updated: n,
    }
}

fn unique_version(node: usize, n: usize) -> String {
    format!("{node:08x}{n:024x}")
}

/// The first column of every row `sql` (no parameters) returns, read on one of `store`'s connections.
async fn column<T: tokio_postgres::types::FromSqlOwned>(
    store: &PostgresStore,
    sql: &str,
) -> Vec<T> {
    store
        .run(async |c| {
            Ok(c.client
                .query(sql, &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let Some((pg, store)) = open_or_skip("store::postgres::conformance_suite").await else {
        return;
    };
    let store = Arc::new(store);
    conformance::run_all(store.clone()).await;
    // Again on the populated database, through a second "node" that finds the schema in place.
    let second = Arc::new(PostgresStore::open(&pg.url()).await.expect("reopen"));
    conformance::run_all(second.clone()).await;
    store.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_sort_by_bytes_like_sqlite() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::names_sort_by_bytes_like_sqlite") else {
        return;
    };
    // A database whose default collation is a linguistic one (where '-' sorts after letters, or is
    // ignored), to prove the columns' own COLLATE "C" decides; a `--no-locale` cluster sorts by bytes anyway.
    let mut url = None;
    for (name, options) in [
        (
            "icu",
            "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted-kn' LOCALE 'C'",
        ),
        (
            "libc",
            "TEMPLATE template0 LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'",
        ),
    ] {
        match pg.create_database_with(name, options).await {
            Ok(u) => {
                url = Some(u);
                break;
            }
            Err(e) => eprintln!("no {name} collation: {e}"),
        }
    }
    let url = url.unwrap_or_else(|| {
        eprintln!("no linguistic collation available; checking byte order on the default database");
        pg.url()
    });
    let store = PostgresStore::open(&url).await.expect("open");
    let names = [
        "a", "a-b", "a-c", "a0", "a1", "a10", "a9", "aa", "ab", "b", "z-9", "z9",
    ];
    for (i, name) in names.iter().rev().enumerate() {
        store
            .put_version("v", row(name, unique_version(0, i), i as i64))
            .await
            .unwrap();
    }
    let listed: Vec<String> = store
        .list_latest("v", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let mut bytes_order: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    bytes_order.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(listed, bytes_order);
    // Show that the database's own collation would have sorted differently (when it is linguistic).
    let default_order: Vec<String> = column(
        &store,
        "SELECT display_name::text FROM kv_names WHERE vault = 'v' ORDER BY 1",
    )
    .await;
    eprintln!("the database's default collation sorts: {default_order:?}");
    // And the keyset cursor continues in the same order.
    let after_a_c: Vec<String> = store
        .list_latest("v", Some("a-c"), 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(after_a_c, vec!["a0".to_string(), "a1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_migrate_at_once() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::nodes_migrate_at_once") else {
        return;
    };
    let url = pg.create_database("fresh").await.unwrap();
    let mut opening = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        opening.push(tokio::spawn(async move { PostgresStore::open(&url).await }));
    }
    for o in opening {
        let store = o.await.unwrap().expect("every node starts");
        store.health().await.unwrap();
    }
    let store = PostgresStore::open(&url).await.unwrap();
    let versions: Vec<i32> = column(
        &store,
        "SELECT version FROM kv_schema_migrations ORDER BY version",
    )
    .await;
    assert_eq!(
        versions,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "each migration applied exactly once"
    );

    // A database from a newer server is refused rather than misread.
    store
        .run(async |c| {
            c.client
                .execute(
                    "INSERT INTO kv_schema_migrations (version) VALUES (99)",
                    &[],
                )
                .await?;
            Ok(())
        })
        .await
        .unwrap();
    let err = PostgresStore::open(&url).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// Two "nodes" hammer the same few names with sets, deletes, recovers, purges and restores. Afterwards every
/// acknowledged set is there (unless its name was purged after it), and each name is in exactly one state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_race_on_the_same_names() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::two_nodes_race_on_the_same_names")
    else {
        return;
    };
    let nodes = [
        Arc::new(PostgresStore::open(&pg.url()).await.unwrap()),
        Arc::new(PostgresStore::open(&pg.url()).await.unwrap()),
    ];
    const NAMES: [&str; 3] = ["hot-a", "hot-b", "HOT-C"];
    const TASKS: usize = 12;
    const OPS: usize = 60;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = nodes[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            // (name key, version) of every acknowledged set, with the op index.
            let mut acked: Vec<(String, String)> = Vec::new();
            for i in 0..OPS {
                let name = NAMES[(t + i) % NAMES.len()];
                let key = name_key(name);
                match (t * 7 + i) % 10 {
                    0..=5 => {
                        let version = unique_version(t, i);
                        match store
                            .put_version("race", row(name, version.clone(), i as i64))
                            .await
                        {
                            Ok(()) => acked.push((key, version)),
                            Err(StoreError::Deleted) => {}
                            Err(e) => panic!("put: {e}"),
                        }
                    }
                    6 | 7 => {
                        store
                            .soft_delete("race", name, 1, 4_000_000_000_000)
                            .await
                            .unwrap();
                    }
                    8 => {
                        store.recover("race", name).await.unwrap();
                    }
                    _ => {
                        if t % 3 == 0 {
                            store.purge("race", name).await.unwrap();
                        } else {
                            let _ = store
                                .restore("race", vec![row(name, unique_version(1000 + t, i), 0)])
                                .await;
                        }
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());

    let s = &nodes[0];
    for name in NAMES {
        let key = name_key(name);
        let live = s.get_version("race", name, None).await.unwrap();
        let deleted = s.get_deleted("race", name).await.unwrap();
        assert!(
            !(live.is_some() && deleted.is_some()),
            "{name} is both live and deleted"
        );
        // Versions (of whichever state) as the database holds them, in creation order.
        let stored: Vec<(i64, String, String)> = s
            .run(async |c| {
                Ok(c.client
                    .query(
                        "SELECT seq, version, (SELECT latest_version FROM kv_names n
                                               WHERE n.vault = v.vault AND n.name_key = v.name_key)
                         FROM kv_versions v WHERE vault = 'race' AND name_key = $1 ORDER BY seq",
                        &[&key],
                    )
                    .await?
                    .iter()
                    .map(|r| {
                        (
                            r.get(0),
                            r.get(1),
                            r.get::<_, Option<String>>(2).unwrap_or_default(),
                        )
                    })
                    .collect())
            })
            .await
            .unwrap();
        let latest = live.as_ref().or(deleted.as_ref().map(|d| &d.latest));
        match latest {
            None => assert!(stored.is_empty(), "{name}: absent, yet versions remain"),
            Some(latest) => {
                let last = stored.last().expect("a present name has versions");
                assert_eq!(
                    last.1, latest.version,
                    "{name}: the latest is the last created"
                );
                assert_eq!(
                    last.2, last.1,
                    "{name}: the name points at the last version"
                );
            }
        }
        // Every acknowledged set since the name's last purge is still there: acknowledged versions of this
        // name that are missing must all be older than the oldest stored one (i.e. removed by a purge).
        let stored_ids: BTreeSet<&str> = stored.iter().map(|(_, v, _)| v.as_str()).collect();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(k, v)| *k == key && !stored_ids.contains(v.as_str()))
            .map(|(_, v)| v)
            .collect();
        if !missing.is_empty() {
            let purge_ops = (0..TASKS).filter(|t| t % 3 == 0).count();
            assert!(
                purge_ops > 0,
                "{name}: acknowledged versions vanished without a purge: {missing:?}"
            );
        }
    }
}

/// Every acknowledged set survives when nothing purges: the strict form of the race check.
/// Two nodes sweep the same due names at once while a third recovers some of them: every due name is either
/// purged by exactly one sweep, with all its versions, or recovered whole; the sweeps' counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweeps_and_recovers_share_the_due_names() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::concurrent_sweeps") else {
        return;
    };
    let url = pg.create_database("sweeps").await.unwrap();
    let nodes = [
        Arc::new(PostgresStore::open(&url).await.unwrap()),
        Arc::new(PostgresStore::open(&url).await.unwrap()),
        Arc::new(PostgresStore::open(&url).await.unwrap()),
    ];
    const NAMES: usize = 900;
    let name = |i: usize| format!("due-{i:04}");
    let mut fill = Vec::new();
    for part in 0..6 {
        let store = nodes[part % 3].clone();
        fill.push(tokio::spawn(async move {
            for i in (part..NAMES).step_by(6) {
                for n in 0..2 {
                    store
                        .put_version("s", row(&name(i), unique_version(i, n), n as i64))
                        .await
                        .unwrap();
                }
                store
                    .soft_delete("s", &name(i), 900, 1_100)
                    .await
                    .unwrap()
                    .expect("deleted");
            }
        }));
    }
    for t in fill {
        t.await.unwrap();
    }
    let recovering = nodes[2].clone();
    let recovers = tokio::spawn(async move {
        let mut recovered = BTreeSet::new();
        for i in (0..NAMES).rev().step_by(4) {
            if recovering.recover("s", &name(i)).await.unwrap().is_some() {
                recovered.insert(i);
            }
        }
        recovered
    });
    // The sweeps start while the recovers are under way (a few dozen in), so that they overlap.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let sweeps: Vec<_> = nodes[..2]
        .iter()
        .map(|store| {
            let store = store.clone();
            tokio::spawn(async move { store.purge_expired(1_100).await.unwrap() })
        })
        .collect();
    let mut purged = 0;
    for sweep in sweeps {
        purged += sweep.await.unwrap();
    }
    let recovered = recovers.await.unwrap();
    assert!(purged > 0, "the sweeps purged nothing");
    assert_eq!(
        purged as usize + recovered.len(),
        NAMES,
        "each due name purged once or recovered ({} recovered)",
        recovered.len()
    );
    for i in 0..NAMES {
        let versions = nodes[0]
            .all_versions("s", &name(i), usize::MAX)
            .await
            .unwrap();
        let deleted = nodes[0].get_deleted("s", &name(i)).await.unwrap();
        assert!(deleted.is_none(), "{}: still deleted", name(i));
        if recovered.contains(&i) {
            assert_eq!(versions.len(), 2, "{}: recovered whole", name(i));
        } else {
            assert!(versions.is_empty(), "{}: purged", name(i));
        }
    }
    let orphans: Vec<i64> = column(
        &nodes[0],
        "SELECT count(*) FROM kv_versions AS v WHERE v.vault = 's'
         AND NOT EXISTS (SELECT 1 FROM kv_names AS n WHERE n.vault = v.vault AND n.name_key = v.name_key)",
    )
    .await;
    assert_eq!(orphans, [0], "versions left without their name");
    for node in nodes {
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_set_is_lost_under_delete_recover_races() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::no_acknowledged_set_is_lost") else {
        return;
    };
    let nodes = [
        Arc::new(PostgresStore::open(&pg.url()).await.unwrap()),
        Arc::new(PostgresStore::open(&pg.url()).await.unwrap()),
    ];
    let mut tasks = Vec::new();
    for t in 0..10usize {
        let store = nodes[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::<String, Vec<String>>::new();
            for i in 0..80usize {
                let name = ["x", "y"][(t + i) % 2];
                match (t + 3 * i) % 5 {
                    0..=2 => {
                        let version = unique_version(t, i);
                        match store.put_version("r", row(name, version.clone(), 0)).await {
                            Ok(()) => acked.entry(name.to_string()).or_default().push(version),
                            Err(StoreError::Deleted) => {}
                            Err(e) => panic!("put: {e}"),
                        }
                    }
                    3 => {
                        store.soft_delete("r", name, 1, 2).await.unwrap();
                    }
                    _ => {
                        store.recover("r", name).await.unwrap();
                    }
                }
            }
            acked
        }));
    }
    let mut acked = BTreeMap::<String, BTreeSet<String>>::new();
    for t in tasks {
        for (name, versions) in t.await.unwrap() {
            acked.entry(name).or_default().extend(versions);
        }
    }
    for (name, versions) in acked {
        // Bring it back if it ended deleted, then compare.
        let _ = nodes[1].recover("r", &name).await.unwrap();
        let stored: BTreeSet<String> = nodes[0]
            .all_versions("r", &name, usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(
            stored, versions,
            "{name}: exactly the acknowledged versions"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_when_the_leader_goes() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::leadership_moves") else {
        return;
    };
    let a = PostgresStore::open(&pg.url()).await.unwrap();
    let b = PostgresStore::open(&pg.url()).await.unwrap();
    assert!(a.try_acquire_leadership().await.unwrap());
    assert!(
        a.try_acquire_leadership().await.unwrap(),
        "stays the leader"
    );
    assert!(
        !b.try_acquire_leadership().await.unwrap(),
        "one leader at a time"
    );
    // The leader goes away (its session ends): the other node takes over at its next try.
    a.close().await;
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.try_acquire_leadership().await.unwrap() {
        assert!(Instant::now() < deadline, "leadership never moved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_fails_fast_then_heals() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::a_database_restart") else {
        return;
    };
    let store = Arc::new(PostgresStore::open(&pg.url()).await.unwrap());
    store
        .put_version("v", row("kept", unique_version(0, 1), 1))
        .await
        .unwrap();
    assert!(store.try_acquire_leadership().await.unwrap());

    pg.stop("immediate").unwrap();
    let started = Instant::now();
    let err = store.get_version("v", "kept", None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store.health().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store
        .put_version("v", row("lost", unique_version(0, 2), 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failing took {:?}",
        started.elapsed()
    );
    assert!(store.try_acquire_leadership().await.is_err());

    pg.start_again().unwrap();
    // The very next calls work again, on fresh connections.
    store.health().await.expect("healthy after the restart");
    assert_eq!(
        store
            .get_version("v", "kept", None)
            .await
            .unwrap()
            .unwrap()
            .version,
        unique_version(0, 1)
    );
    assert!(store.try_acquire_leadership().await.unwrap());
}

/// Ends the sessions of backends `pids` from another thread, with its own runtime and connection, and returns
/// once they are gone. The calling thread is blocked meanwhile: on a current-thread runtime, the store's
/// connection tasks cannot notice their sessions ending before the store next uses them (connections that died
/// in the pool or under a statement, as when the database restarts or fails over).
fn end_sessions_unnoticed(url: &str, pids: &[i32]) {
    let (url, pids) = (url.to_owned(), pids.to_vec());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let other = pool::Connector::plain(tokio_postgres::Config::from_str(&url).unwrap())
                .connect()
                .await
                .unwrap();
            for pid in &pids {
                let ended: bool = other
                    .query_one("SELECT pg_terminate_backend($1)", &[pid])
                    .await
                    .unwrap()
                    .get(0);
                assert!(ended, "backend {pid} was not there to end");
            }
            let started = Instant::now();
            loop {
                let left: i64 = other
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                        &[&pids],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if left == 0 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "backends {pids:?} stayed"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
    .join()
    .unwrap();
}

/// A read whose pooled connection the database closed (a restart, a failover, `pg_terminate_backend`) runs
/// again on a connection opened for it instead of failing (a70-3) — not on another idle one, which after a
/// failover is as dead (a90-1); a write on such a connection fails `Unavailable` and is not run again (its
/// first try could have committed).
#[tokio::test]
async fn a_read_on_a_connection_the_database_closed_runs_again_on_another() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::a_read_on_a_closed_connection") else {
        return;
    };
    let store = PostgresStore::open_with_pool(&pg.url(), 2).await.unwrap();
    put_first_versions(&store, "v", &["kept"]).await;
    // The backends of both pooled connections (two operations at once hold both; both go back idle).
    let backends = async |store: &PostgresStore| {
        let pid = || async {
            store
                .run(async |c| {
                    let pid: i32 = c
                        .client
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await?
                        .get(0);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(pid)
                })
                .await
                .unwrap()
        };
        let pids = join_all(vec![pid(), pid()]).await;
        assert_ne!(pids[0], pids[1]);
        pids
    };

    end_sessions_unnoticed(&pg.url(), &backends(&store).await);
    let found = store.get_version("v", "kept", None).await.unwrap().unwrap();
    assert_eq!(found.version, unique_version(0, 0));

    end_sessions_unnoticed(&pg.url(), &backends(&store).await);
    let versions = store.list_versions("v", "kept", None, 25).await.unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");

    end_sessions_unnoticed(&pg.url(), &backends(&store).await);
    let err = store
        .put_version("v", row("kept", unique_version(0, 1), 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // Not written by a second try, and the store works on.
    let found = store.get_version("v", "kept", None).await.unwrap().unwrap();
    assert_eq!(found.version, unique_version(0, 0));
    store.close().await;
}

/// A TCP relay to the cluster standing for a failover behind a proxy: after [`FailoverRelay::fail_over`], every
/// connection made before it is closed when its client next writes, and looks open until then — no FATAL
/// message from the database first, as when a proxy or a load balancer moves to a new primary.
struct FailoverRelay {
    port: u16,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl FailoverRelay {
    async fn start(to: u16) -> FailoverRelay {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let current = current.clone();
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if current.load(Ordering::SeqCst) != born {
                            // Failed over: the client's connection is closed under it (no message first),
                            // as the proxy would.
                            back.abort();
                            let _ = back.await;
                            return;
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        FailoverRelay { port, generation }
    }

    fn fail_over(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// After a failover behind a proxy, every pooled connection is dead but looks open until written to: a read
/// meets one, and its second try, on a connection opened for it (not the next idle one, as dead: a90-1),
/// answers; so does every read after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_after_a_failover_that_left_every_pooled_connection_dead() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::reads_answer_after_a_failover") else {
        return;
    };
    let relay = FailoverRelay::start(pg.port()).await;
    let url = pg.url().replace(
        &format!("127.0.0.1:{}/", pg.port()),
        &format!("127.0.0.1:{}/", relay.port),
    );
    let store = PostgresStore::open_with_pool(&url, 3).await.unwrap();
    put_first_versions(&store, "v", &["kept"]).await;
    // Three operations at once: three pooled connections, all idle after.
    let hold = || async {
        store
            .run(async |c| {
                c.client.simple_query("SELECT 1").await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            })
            .await
            .unwrap()
    };
    join_all(vec![hold(), hold(), hold()]).await;

    relay.fail_over();
    for _ in 0..4 {
        let found = store.get_version("v", "kept", None).await.unwrap().unwrap();
        assert_eq!(found.version, unique_version(0, 0));
    }
    let versions = store.list_versions("v", "kept", None, 25).await.unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    store.close().await;
}

/// A database that turned read-only (a standby after a failover, a demoted primary,
/// `default_transaction_read_only`) refuses writes as unavailable (503 with Retry-After, the connection
/// dropped), not as an internal error; reads go on, and writes work again once it is writable (a89-3).
#[tokio::test]
async fn writes_to_a_read_only_database_are_unavailable() {
    let Some((pg, store)) = open_or_skip("store::postgres::writes_to_a_read_only_database").await
    else {
        return;
    };
    put_first_versions(&store, "v", &["kept"]).await;
    let admin = pool::Connector::plain(tokio_postgres::Config::from_str(&pg.url()).unwrap())
        .connect()
        .await
        .unwrap();
    let database: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{database}\" SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    // Connections opened from now on are read-only.
    store.pool.clear();
    let err = store
        .put_version("v", row("kept", unique_version(0, 1), 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store.soft_delete("v", "kept", 1, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let found = store.get_version("v", "kept", None).await.unwrap().unwrap();
    assert_eq!(found.version, unique_version(0, 0));

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{database}\" SET default_transaction_read_only = off"
        ))
        .await
        .unwrap();
    store.pool.clear();
    store
        .put_version("v", row("kept", unique_version(0, 1), 1))
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_is_refused() {
    use crate::crypto::{Envelope, StaticKeyProvider};
    let Some(pg) = pgtest::start_or_skip("store::postgres::a_node_with_another_key_is_refused")
    else {
        return;
    };
    let envelope = |byte: u8| Envelope::new(Arc::new(StaticKeyProvider::from_bytes([byte; 32])));
    let (first, same, other) = (envelope(1), envelope(1), envelope(2));
    let store = PostgresStore::open(&pg.url()).await.unwrap();
    assert!(store.meta(crate::store::KEY_CHECK).await.unwrap().is_none());
    crate::store::check_key(&store, &first)
        .await
        .expect("the first node sets the check");
    assert!(store.meta(crate::store::KEY_CHECK).await.unwrap().is_some());
    let second = PostgresStore::open(&pg.url()).await.unwrap();
    crate::store::check_key(&second, &same)
        .await
        .expect("the same key passes");
    let err = crate::store::check_key(&second, &other)
        .await
        .expect_err("another key is refused");
    assert!(err.contains(other.current_kek_id()), "{err}");
    assert!(err.contains(first.current_kek_id()), "{err}");
    // The first value kept stays: a second insert does not replace it.
    let kept = store.meta(crate::store::KEY_CHECK).await.unwrap().unwrap();
    assert_eq!(
        store
            .meta_insert(crate::store::KEY_CHECK, b"other")
            .await
            .unwrap(),
        kept
    );
    store.close().await;
    second.close().await;
}

/// A database from before the key check (rows, no `kv_meta` row): a node whose key opens none of its values
/// is refused without writing a check; the right key writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_check_is_checked_against_its_values() {
    use crate::crypto::{Envelope, StaticKeyProvider};
    let Some(pg) = pgtest::start_or_skip(
        "store::postgres::a_store_without_a_check_is_checked_against_its_values",
    ) else {
        return;
    };
    let envelope = |byte: u8| Envelope::new(Arc::new(StaticKeyProvider::from_bytes([byte; 32])));
    let (right, wrong) = (envelope(1), envelope(2));
    let store = PostgresStore::open(&pg.url()).await.unwrap();
    let version = unique_version(0, 1);
    let sealed = right.seal("v", "app", &version, b"value").unwrap();
    store
        .put_version(
            "v",
            VersionRow {
                sealed,
                ..row("App", version, 1)
            },
        )
        .await
        .unwrap();
    let err = crate::store::check_key(&store, &wrong)
        .await
        .expect_err("a key that opens none of the values is refused");
    assert!(err.contains(wrong.current_kek_id()), "{err}");
    assert!(err.contains(right.current_kek_id()), "{err}");
    assert!(store.meta(crate::store::KEY_CHECK).await.unwrap().is_none());
    crate::store::check_key(&store, &right)
        .await
        .expect("the key the values were sealed under");
    assert!(store.meta(crate::store::KEY_CHECK).await.unwrap().is_some());
    store.close().await;
}

/// Purge protection turned on by one node is on for every node over the store, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_protection_stays_on_for_every_node() {
    use crate::store::check_purge_protection;
    let Some(pg) =
        pgtest::start_or_skip("store::postgres::purge_protection_stays_on_for_every_node")
    else {
        return;
    };
    let (a, b) = (
        PostgresStore::open(&pg.url()).await.unwrap(),
        PostgresStore::open(&pg.url()).await.unwrap(),
    );
    check_purge_protection(&a, "v", false).await.unwrap();
    check_purge_protection(&a, "v", true).await.unwrap();
    let err = check_purge_protection(&b, "v", false)
        .await
        .expect_err("another node cannot turn it off");
    assert!(err.contains("cannot be turned off"), "{err}");
    check_purge_protection(&b, "v", true).await.unwrap();
    // Another vault over the same store keeps its own setting.
    check_purge_protection(&b, "other", false).await.unwrap();
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_with_its_data() {
    let Some(pg) =
        pgtest::start_or_skip("store::postgres::a_version_1_database_is_upgraded_with_its_data")
    else {
        return;
    };
    let url = pg.create_database("from_v1").await.unwrap();
    // The schema and rows exactly as version 1 of this store made them.
    let client = pool::Connector::plain(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE kv_schema_migrations (version INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             {SCHEMA_V1}
             INSERT INTO kv_schema_migrations (version) VALUES (1);
             INSERT INTO kv_versions (vault, name_key, version, sealed, enabled, created, updated) VALUES
                 ('v', 'app', 'aa', '\\x01', true, 1, 1),
                 ('v', 'app', 'bb', '\\x02', true, 2, 2),
                 ('v', 'gone', 'cc', '\\x03', true, 3, 3);
             INSERT INTO kv_names (vault, name_key, display_name, latest_seq, deleted_on, scheduled_purge)
             VALUES ('v', 'app', 'App', 2, NULL, NULL), ('v', 'gone', 'Gone', 3, 10, 20);"
        ))
        .await
        .unwrap();
    drop(client);

    let store = PostgresStore::open(&url).await.unwrap();
    // A set inserts one index entry: the versions' only index is the unique (vault, name_key, version).
    let indexes: Vec<String> = column(
        &store,
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'kv_versions'",
    )
    .await;
    assert_eq!(indexes, ["kv_versions_vault_name_key_version_key"]);
    let latest = store.get_version("v", "APP", None).await.unwrap().unwrap();
    assert_eq!(
        (latest.name.as_str(), latest.version.as_str()),
        ("App", "bb")
    );
    let older = store
        .get_version("v", "app", Some("aa"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(older.sealed, vec![1]);
    let versions: Vec<String> = store
        .list_versions("v", "app", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, ["aa", "bb"]);
    let deleted = store.get_deleted("v", "gone").await.unwrap().unwrap();
    assert_eq!(deleted.latest.version, "cc");
    // New writes after the upgrade: a new latest, an update by version, a recover.
    store
        .put_version("v", row("App", "dd".to_string(), 4))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_version("v", "app", None)
            .await
            .unwrap()
            .unwrap()
            .version,
        "dd"
    );
    let patched = store
        .update_version(
            "v",
            "app",
            Some("aa"),
            VersionPatch {
                enabled: Some(false),
                updated: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!patched.enabled);
    assert!(
        !store
            .get_version("v", "app", Some("aa"))
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    assert!(
        store
            .get_version("v", "app", Some("bb"))
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    assert_eq!(
        store.recover("v", "gone").await.unwrap().unwrap().version,
        "cc"
    );
    store.close().await;
}

/// `pg_pool_size` bounds the connections a node opens, however many requests wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_size_bounds_the_connections() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::the_pool_size_bounds_the_connections")
    else {
        return;
    };
    let url = pg.create_database("pool").await.unwrap();
    let store = Arc::new(PostgresStore::open_with_pool(&url, 3).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("p{}", i % 6);
            store
                .put_version("v", row(&name, crate::vault::new_version(), i))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let open: Vec<i64> = column(
        &store,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'keyvault'",
    )
    .await;
    assert!((1..=3).contains(&open[0]), "{open:?} connections open");
    let listed = store.list_latest("v", None, 100).await.unwrap();
    assert_eq!(listed.len(), 6);
}

/// A database whose `synchronous_commit` is `off` (acknowledging commits before their WAL is flushed) still
/// gets durable commits from keyvault: its connections set it `on`.
#[tokio::test]
async fn commits_are_durable_on_a_database_that_turned_synchronous_commit_off() {
    let Some(pg) = pgtest::start_or_skip(
        "store::postgres::commits_are_durable_on_a_database_that_turned_synchronous_commit_off",
    ) else {
        return;
    };
    let (admin, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let url = pg.create_database("lazy").await.unwrap();
    admin
        .batch_execute("ALTER DATABASE lazy SET synchronous_commit = off")
        .await
        .unwrap();
    let store = PostgresStore::open_with_pool(&url, 2).await.unwrap();
    let setting: Vec<String> = column(&store, "SHOW synchronous_commit").await;
    assert_eq!(setting, ["on"]);
    // Values that flush locally are kept as they are.
    let url = pg.create_database("standby").await.unwrap();
    admin
        .batch_execute("ALTER DATABASE standby SET synchronous_commit = local")
        .await
        .unwrap();
    let store = PostgresStore::open_with_pool(&url, 2).await.unwrap();
    let setting: Vec<String> = column(&store, "SHOW synchronous_commit").await;
    assert_eq!(setting, ["local"]);
}

/// Rows a plan's scans of tables and indexes read (`EXPLAIN (ANALYZE, FORMAT JSON)` output): returned and
/// filtered out, every loop. Scans of functions, subqueries and CTEs read no stored rows and are not counted,
/// nor are the rows a statement changes.
fn rows_scanned(plan: &serde_json::Value) -> f64 {
    let node = |key: &str| {
        plan.get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let scans_a_table = plan.get("Relation Name").is_some()
        && plan
            .get("Node Type")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|t| t.ends_with("Scan"));
    let own = if scans_a_table {
        (node("Actual Rows") + node("Rows Removed by Filter")) * node("Actual Loops").max(1.0)
    } else {
        0.0
    };
    let children = plan
        .get("Plans")
        .and_then(serde_json::Value::as_array)
        .map_or(0.0, |plans| plans.iter().map(rows_scanned).sum());
    own + children
}

/// A plan's shape in one line, for failure messages: `Nested Loop(Index Scan kv_names_pkey: 1, …)`, with each
/// node's relation or index and the rows it read per loop.
fn plan_outline(plan: &serde_json::Value) -> String {
    let text = |key: &str| plan.get(key).and_then(serde_json::Value::as_str);
    let mut out = text("Node Type").unwrap_or("?").to_owned();
    if let Some(on) = text("Index Name").or(text("Relation Name")) {
        out.push(' ');
        out.push_str(on);
    }
    let rows = |key: &str| {
        plan.get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    out.push_str(&format!(
        ": {}",
        rows("Actual Rows") + rows("Rows Removed by Filter")
    ));
    if let Some(children) = plan.get("Plans").and_then(serde_json::Value::as_array) {
        let inner: Vec<String> = children.iter().map(plan_outline).collect();
        out.push_str(&format!("({})", inner.join(", ")));
    }
    out
}

/// The rows a statement returned or, for an `INSERT`, `UPDATE` or `DELETE` without `RETURNING`, changed.
fn rows_out(root: &serde_json::Value) -> f64 {
    let rows = |plan: &serde_json::Value| plan["Actual Rows"].as_f64().unwrap_or(0.0);
    if root["Node Type"] != "ModifyTable" || rows(root) > 0.0 {
        return rows(root);
    }
    // `INSERT … ON CONFLICT` counts what it inserted; other changes without `RETURNING` what they were fed.
    match (root.get("Tuples Inserted"), root["Plans"].get(0)) {
        (Some(inserted), _) => inserted.as_f64().unwrap_or(0.0),
        (None, Some(input)) => rows(input),
        (None, None) => 0.0,
    }
}

/// Fills a fresh database directly (the store's put would take longer and prove nothing more for plans): 3,000
/// names with one version each, 500 of them (in the middle) deleted and due for purge at 2, and one live name
/// with 3,000 versions. No statistics until [`analyze`] (autovacuum is off for these tables).
async fn fill_for_plans(store: &PostgresStore) {
    let fill = "
        ALTER TABLE kv_names SET (autovacuum_enabled = false);
        ALTER TABLE kv_versions SET (autovacuum_enabled = false);
        INSERT INTO kv_names (vault, name_key, display_name, latest_version, deleted_on, scheduled_purge)
        SELECT 'v', 'n-' || lpad(i::text, 5, '0'), 'N-' || lpad(i::text, 5, '0'), md5(i::text),
               CASE WHEN i BETWEEN 1000 AND 1499 THEN 1 END, CASE WHEN i BETWEEN 1000 AND 1499 THEN 2 END
        FROM generate_series(0, 2999) AS i;
        INSERT INTO kv_versions (vault, name_key, version, sealed, enabled, created, updated)
        SELECT 'v', 'n-' || lpad(i::text, 5, '0'), md5(i::text), '\\x00ff', true, i, i
        FROM generate_series(0, 2999) AS i;
        INSERT INTO kv_names (vault, name_key, display_name, latest_version)
        VALUES ('v', 'many', 'many', md5('2999x'));
        INSERT INTO kv_versions (vault, name_key, version, sealed, enabled, created, updated)
        SELECT 'v', 'many', md5(i::text || 'x'), '\\x00ff', true, i, i FROM generate_series(0, 2999) AS i;";
    store
        .run(async |c| Ok(c.client.batch_execute(fill).await?))
        .await
        .unwrap();
}

async fn analyze(store: &PostgresStore) {
    store
        .run(async |c| {
            Ok(c.client
                .batch_execute("ANALYZE kv_names; ANALYZE kv_versions")
                .await?)
        })
        .await
        .unwrap();
}

/// The four planning situations a statement meets: tables without statistics (right after a bulk load, until
/// autovacuum analyzes them) and analyzed, each with PostgreSQL's custom plans and with the generic plan it
/// switches a prepared statement to. The caller runs [`analyze`] before the first "analyzed" one.
const PLAN_SITUATIONS: [(&str, &str); 4] = [
    ("no statistics", "auto"),
    ("no statistics", "force_generic_plan"),
    ("analyzed", "auto"),
    ("analyzed", "force_generic_plan"),
];

/// Runs `sql` as the prepared statement `name` with `args` (a parenthesised SQL list) six times — PostgreSQL
/// considers the generic plan after five custom ones — under `plan_cache_mode` = `mode`, then once more under
/// `EXPLAIN ANALYZE`; returns the rows the statement returned (or changed), the rows its scans read and the
/// plan's outline. All of
/// it runs in a transaction that is rolled back (each run in its own savepoint, so that a statement that
/// changes rows meets the same rows every time).
async fn explain(
    store: &PostgresStore,
    name: &str,
    sql: &str,
    args: &str,
    mode: &str,
) -> (f64, f64, String) {
    let prepare = format!("SET plan_cache_mode = {mode}; PREPARE {name} AS {sql}");
    let run = format!("SAVEPOINT p; EXECUTE {name}{args}; ROLLBACK TO SAVEPOINT p");
    let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}{args}");
    store
        .run(async |c| {
            c.client.batch_execute("BEGIN").await?;
            c.client.batch_execute(&prepare).await?;
            for _ in 0..6 {
                c.client.batch_execute(&run).await?;
            }
            // The simple protocol answers in text (the column's type is `json`).
            let json: String = c
                .client
                .simple_query(&explain)
                .await?
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_default();
            c.client
                .batch_execute(&format!(
                    "ROLLBACK; DEALLOCATE {name}; RESET plan_cache_mode"
                ))
                .await?;
            let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
            let root = &plan[0]["Plan"];
            Ok((rows_out(root), rows_scanned(root), plan_outline(root)))
        })
        .await
        .unwrap()
}

/// Every listing reads its page, not the table: with a few thousand names, the first page, a deep page, a page
/// of deleted names and a page of versions read at most a few pages' worth of rows, in every
/// [`PLAN_SITUATIONS`]. (The plain joins these statements replaced were planned as hash joins over both whole
/// tables: every page read every row; and without statistics, paging over the primary key read and sorted
/// every name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_read_only_their_page() {
    let Some(pg) = pgtest::start_or_skip("store::postgres::listings_read_only_their_page") else {
        return;
    };
    let url = pg.create_database("plans").await.unwrap();
    let store = PostgresStore::open(&url).await.unwrap();
    fill_for_plans(&store).await;
    let cases: [(&str, &str, &str, usize); 8] = [
        ("first page", SQL_LIST_LATEST, "('v', '', 26, chr(127))", 26),
        (
            "deep page",
            SQL_LIST_LATEST,
            "('v', 'n-02700', 26, chr(127))",
            26,
        ),
        (
            "deleted names",
            SQL_LIST_DELETED,
            "('v', '', 26, chr(127))",
            26,
        ),
        // A scoped listing's one-name range: the page ends at the range's end.
        (
            "one-name range",
            SQL_LIST_LATEST,
            "('v', 'n-02699', 26, 'n-02700')",
            1,
        ),
        (
            "one deleted name",
            SQL_LIST_DELETED,
            "('v', 'n-01099', 26, 'n-01100')",
            1,
        ),
        (
            "versions",
            SQL_VERSIONS_OF_LIVE,
            "('v', 'many', '', 26)",
            26,
        ),
        (
            "deep versions",
            SQL_VERSIONS_OF_LIVE,
            "('v', 'many', '8', 26)",
            26,
        ),
        // A deleted name's versions: nothing to list, nothing to read but the name.
        (
            "deleted name's versions",
            SQL_VERSIONS_OF_LIVE,
            "('v', 'n-01007', '', 26)",
            0,
        ),
    ];
    for (stats, mode) in PLAN_SITUATIONS {
        if stats == "analyzed" && mode == "auto" {
            analyze(&store).await;
        }
        for (i, (what, sql, args, expect)) in cases.iter().enumerate() {
            let name = format!("s{i}_{}_{}", stats.len(), mode.len());
            let (returned, scanned, plan) = explain(&store, &name, sql, args, mode).await;
            assert_eq!(
                returned as usize, *expect,
                "{what} ({stats}, {mode}): {plan}"
            );
            assert!(
                scanned <= 120.0,
                "{what} ({stats}, {mode}): the plan read {scanned} rows for a page of {returned}: {plan}\n{sql}"
            );
        }
    }
    // Sets on existing names stay HOT updates of their name's row (no index holds what a set changes): every
    // update of this transaction's 20 sets is HOT.
    let (updated, hot): (i64, i64) = store
        .run(async |c| {
            let tx = c.client.transaction().await?;
            let put = tx.prepare(SQL_PUT).await?;
            let deadline = set_deadline_ms(Duration::from_secs(60));
            for i in 0..20 {
                let key = format!("n-{:05}", 2000 + i * 7);
                let version = crate::vault::new_version();
                tx.query_opt(
                    &put,
                    &[&"v", &key, &version, &vec![0u8, 1], &None::<String>, &None::<String>, &true,
                      &None::<i64>, &None::<i64>, &1i64, &1i64, &key.to_uppercase(), &deadline],
                )
                .await?
                .expect("the name is live");
            }
            let row = tx
                .query_one(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'kv_names'",
                    &[],
                )
                .await?;
            Ok((row.get(0), row.get(1)))
        })
        .await
        .unwrap();
    assert_eq!(
        (updated, hot),
        (20, 20),
        "updates and HOT updates of kv_names"
    );
    store.close().await;
}

/// Every other statement reads the rows it is about, not the tables, in every [`PLAN_SITUATIONS`]: point
/// reads and changes of one name, a name's versions, and the retention sweeper — both when nothing is due
/// (what nearly every sweep finds) and when a chunk of names is (its names, then their versions, by index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_statements_and_sweeps_read_only_their_rows() {
    let Some(pg) =
        pgtest::start_or_skip("store::postgres::point_statements_and_sweeps_read_only_their_rows")
    else {
        return;
    };
    let url = pg.create_database("plans").await.unwrap();
    let store = PostgresStore::open(&url).await.unwrap();
    fill_for_plans(&store).await;
    // The names a sweep's first chunk deletes, as array literals (EXECUTE takes no subqueries).
    let due = 1000..1256;
    let due_vaults = format!("ARRAY[{}]", vec!["'v'"; due.len()].join(","));
    let due_keys = format!(
        "ARRAY[{}]",
        due.map(|i| format!("'n-{i:05}'"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let cases: Vec<(&str, &str, String, usize)> = vec![
        ("latest", SQL_FIND_LATEST, "('v', 'n-02000')".into(), 1),
        ("latest of many", SQL_FIND_LATEST, "('v', 'many')".into(), 1),
        (
            "latest of a deleted name",
            SQL_FIND_LATEST,
            "('v', 'n-01007')".into(),
            0,
        ),
        (
            "a version",
            SQL_FIND_VERSION,
            "('v', 'many', md5('17x'))".into(),
            1,
        ),
        (
            "a deleted name",
            SQL_FIND_DELETED,
            "('v', 'n-01007')".into(),
            1,
        ),
        (
            "all versions",
            SQL_ALL_VERSIONS_OF_LIVE,
            "('v', 'n-02000', 501)".into(),
            1,
        ),
        (
            "all versions of many",
            SQL_ALL_VERSIONS_OF_LIVE,
            "('v', 'many', 5000)".into(),
            3000,
        ),
        ("lock", SQL_LOCK_LIVE, "('v', 'n-02000')".into(), 1),
        (
            "set",
            SQL_PUT,
            "('v', 'n-02000', 'new', '\\x00', NULL, NULL, true, NULL, NULL, 1, 1, 'N', 99999999999999)".into(),
            1,
        ),
        (
            "set of a new name",
            SQL_PUT,
            "('v', 'n-09999', 'new', '\\x00', NULL, NULL, true, NULL, NULL, 1, 1, 'N', 99999999999999)".into(),
            1,
        ),
        (
            "set of many: live, deleted and new names",
            batch::SQL_PUT_MANY,
            "(ARRAY['v', 'v', 'v'], ARRAY['n-02000', 'n-01007', 'n-09999'], ARRAY['new1', 'new2', 'new3'], \
              ARRAY['\\x00', '\\x00', '\\x00']::bytea[], ARRAY[NULL, NULL, NULL]::text[], \
              ARRAY[NULL, NULL, NULL]::text[], ARRAY[true, true, true], ARRAY[NULL, NULL, NULL]::bigint[], \
              ARRAY[NULL, NULL, NULL]::bigint[], ARRAY[1, 1, 1]::bigint[], ARRAY[1, 1, 1]::bigint[], \
              ARRAY['N', 'N', 'N'], 99999999999999)"
                .into(),
            2,
        ),
        (
            "reads of many: latest, a version, deleted and absent names",
            SQL_GET_MANY,
            "(ARRAY['v', 'v', 'v', 'v', 'v'], ARRAY['n-02000', 'many', 'many', 'n-01007', 'n-09999'], \
              ARRAY[NULL, md5('17x'), NULL, NULL, NULL])"
                .into(),
            3,
        ),
        (
            "update",
            SQL_UPDATE_VERSION,
            "(md5('17x'), 'text/plain', NULL, true, NULL, NULL, 5, 'v', 'many')".into(),
            1,
        ),
        (
            "delete",
            SQL_SOFT_DELETE,
            "('v', 'n-02000', 5, 6)".into(),
            1,
        ),
        ("recover", SQL_RECOVER, "('v', 'n-01007')".into(), 1),
        ("purge", SQL_PURGE_NAME, "('v', 'n-01007')".into(), 1),
        (
            "purge versions",
            SQL_PURGE_VERSIONS,
            "('v', 'many')".into(),
            3000,
        ),
        (
            "restore's claim",
            SQL_CLAIM_FOR_RESTORE,
            "('v', 'n-09999', 'N', 'x')".into(),
            1,
        ),
        (
            "restore's claim, taken",
            SQL_CLAIM_FOR_RESTORE,
            "('v', 'n-02000', 'N', 'x')".into(),
            0,
        ),
        (
            "sweep, nothing due",
            SQL_PURGE_DUE_NAMES,
            "(1, 256)".into(),
            0,
        ),
        (
            "sweep, names due",
            SQL_PURGE_DUE_NAMES,
            "(3, 256)".into(),
            256,
        ),
        (
            "sweep, their versions",
            SQL_PURGE_DUE_VERSIONS,
            format!("({due_vaults}, {due_keys})"),
            256,
        ),
    ];
    let mut failures = Vec::new();
    for (stats, mode) in PLAN_SITUATIONS {
        if stats == "analyzed" && mode == "auto" {
            analyze(&store).await;
        }
        for (i, (what, sql, args, expect)) in cases.iter().enumerate() {
            let name = format!("p{i}_{}_{}", stats.len(), mode.len());
            let (out, scanned, plan) = explain(&store, &name, sql, args, mode).await;
            let bound = 2 * expect.max(&1) + 10;
            if out as usize != *expect || scanned > bound as f64 {
                failures.push(format!(
                    "{what} ({stats}, {mode}): {out} rows out of {expect}, {scanned} read (at most {bound}): {plan}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    store.close().await;
}

/// A private cluster and a store opened on it; None (with a message) where PostgreSQL is not installed.
async fn open_or_skip(test: &str) -> Option<(pgtest::PgCluster, PostgresStore)> {
    let pg = pgtest::start_or_skip(test)?;
    let store = PostgresStore::open(&pg.url()).await.expect("open");
    Some((pg, store))
}

/// A first version (version 0 of node 0) of each of `names` in vault `v`.
async fn put_first_versions(store: &PostgresStore, v: &str, names: &[&str]) {
    for name in names {
        store
            .put_version(v, row(name, unique_version(0, 0), 0))
            .await
            .unwrap();
    }
}

/// Another session (not keyvault's) holding the rows of `names` in vault `vault` locked, in a transaction
/// left open (never timed out), until it runs `COMMIT`.
async fn lock_rows_elsewhere(url: &str, names: &[&str]) -> tokio_postgres::Client {
    let other = pool::Connector::plain(tokio_postgres::Config::from_str(url).unwrap())
        .connect()
        .await
        .unwrap();
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    other
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = 0; BEGIN; \
             SELECT 1 FROM kv_names WHERE vault = 'vault' AND name_key IN ({list}) FOR UPDATE"
        ))
        .await
        .unwrap();
    other
}

/// Drive `futures` together on the calling task, each polled before any of them is polled twice: everything
/// they start without waiting (here: joining the queue of sets) happens before other tasks run.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none()
                && let std::task::Poll::Ready(out) = future.as_mut().poll(cx)
            {
                *output = Some(out);
            }
        }
        if outputs.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

/// Sets in flight together are written by one statement, and each gets its own answer: new names and live
/// ones get their version, deleted names `Deleted` (and keep their state), and sets of one name go in turn
/// (all land; the last one written is the latest).
#[tokio::test]
async fn sets_in_flight_together_share_one_statement() {
    let Some((_pg, store)) =
        open_or_skip("store::postgres::sets_in_flight_together_share_one_statement").await
    else {
        return;
    };
    let v = "vault";
    put_first_versions(&store, v, &["gone-1", "gone-2", "live"]).await;
    for name in ["gone-1", "gone-2"] {
        store.soft_delete(v, name, 10, 20).await.unwrap().unwrap();
    }
    let before = store.set_batches_run();

    let mut sets: Vec<VersionRow> = (0..40)
        .map(|i| row(&format!("new-{i}"), unique_version(1, i), 1))
        .collect();
    sets.push(row("live", unique_version(2, 0), 2));
    sets.push(row("gone-1", unique_version(2, 1), 2));
    sets.push(row("Gone-2", unique_version(2, 2), 2));
    for (i, casing) in ["Dup", "DUP", "dup"].into_iter().enumerate() {
        sets.push(row(casing, unique_version(3, i), 3));
    }
    let answers = join_all(
        sets.iter()
            .map(|r| store.put_version(v, r.clone()))
            .collect(),
    )
    .await;

    // The first set ran at once, alone; the other 42 distinct names, queued behind it, went in one statement;
    // the other two sets of "dup" each alone after that.
    assert_eq!(store.set_batches_run() - before, 1, "one batch statement");
    for (set, answer) in sets.iter().zip(&answers) {
        let name = set.name.to_lowercase();
        if name.starts_with("gone-") {
            assert!(
                matches!(answer, Err(StoreError::Deleted)),
                "{name}: {answer:?}"
            );
            let deleted = store
                .get_deleted(v, &name)
                .await
                .unwrap()
                .expect("still deleted");
            assert_eq!(
                deleted.latest.version,
                unique_version(0, 0),
                "{name} unchanged"
            );
        } else {
            assert!(answer.is_ok(), "{name}: {answer:?}");
        }
    }
    for set in &sets[..41] {
        let latest = store.get_version(v, &set.name, None).await.unwrap();
        assert_eq!(
            latest.as_ref(),
            Some(set),
            "{} is its new version",
            set.name
        );
    }
    let dups = store.all_versions(v, "dup", usize::MAX).await.unwrap();
    assert_eq!(dups.len(), 3, "every set of one name landed");
    let latest = store.get_version(v, "dup", None).await.unwrap().unwrap();
    assert_eq!(Some(&latest), dups.last(), "the last written is the latest");
    assert!(sets[43..].contains(&latest));
    store.close().await;
}

/// A set that fails on its own (a version id its name already has) fails alone: the others in its batch
/// are written.
#[tokio::test]
async fn a_failing_set_in_a_batch_fails_alone() {
    let Some((_pg, store)) =
        open_or_skip("store::postgres::a_failing_set_in_a_batch_fails_alone").await
    else {
        return;
    };
    let v = "vault";
    let taken = row("taken", unique_version(0, 0), 0);
    store.put_version(v, taken.clone()).await.unwrap();
    let mut sets: Vec<VersionRow> = (0..10)
        .map(|i| row(&format!("new-{i}"), unique_version(1, i), 1))
        .collect();
    sets.insert(5, row("taken", unique_version(0, 0), 7));
    let answers = join_all(
        sets.iter()
            .map(|r| store.put_version(v, r.clone()))
            .collect(),
    )
    .await;
    for (set, answer) in sets.iter().zip(&answers) {
        if set.name == "taken" {
            assert!(matches!(answer, Err(StoreError::Exists)), "{answer:?}");
        } else {
            assert!(answer.is_ok(), "{}: {answer:?}", set.name);
            let latest = store.get_version(v, &set.name, None).await.unwrap();
            assert_eq!(latest.as_ref(), Some(set));
        }
    }
    assert_eq!(
        store.all_versions(v, "taken", usize::MAX).await.unwrap(),
        vec![taken]
    );
    store.close().await;
}

/// A set whose data the database refuses (a NUL character, which PostgreSQL text cannot hold; the vault
/// refuses it earlier, this is the store's own guard) fails alone, not the sets batched with it.
#[tokio::test]
async fn a_set_the_database_refuses_fails_alone() {
    let Some((_pg, store)) =
        open_or_skip("store::postgres::a_set_the_database_refuses_fails_alone").await
    else {
        return;
    };
    let v = "vault";
    let mut sets: Vec<VersionRow> = (0..10)
        .map(|i| row(&format!("fine-{i}"), unique_version(2, i), 1))
        .collect();
    let mut bad = row("nul", unique_version(3, 0), 1);
    bad.content_type = Some("a\u{0}b".into());
    sets.insert(4, bad);
    let answers = join_all(
        sets.iter()
            .map(|r| store.put_version(v, r.clone()))
            .collect(),
    )
    .await;
    for (set, answer) in sets.iter().zip(&answers) {
        if set.name == "nul" {
            assert!(answer.is_err(), "{answer:?}");
        } else {
            assert!(answer.is_ok(), "{}: {answer:?}", set.name);
            let latest = store.get_version(v, &set.name, None).await.unwrap();
            assert_eq!(latest.as_ref(), Some(set));
        }
    }
    store.close().await;
}

/// A queued set whose caller went away before its batch started (the client disconnected) is never written.
#[tokio::test]
async fn a_set_abandoned_before_its_batch_is_not_written() {
    let Some((_pg, store)) =
        open_or_skip("store::postgres::a_set_abandoned_before_its_batch_is_not_written").await
    else {
        return;
    };
    let v = "vault";
    let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
    // The first set finds nothing running and runs at once; the second, polled while it runs, queues.
    let mut first = store.put_version(v, row("first", unique_version(0, 0), 0));
    assert!(first.as_mut().poll(noop).is_pending());
    let mut abandoned = store.put_version(v, row("abandoned", unique_version(0, 1), 0));
    assert!(abandoned.as_mut().poll(noop).is_pending());
    drop(abandoned);
    first.await.unwrap();
    store
        .put_version(v, row("kept", unique_version(0, 2), 0))
        .await
        .unwrap();
    assert!(store.get_version(v, "first", None).await.unwrap().is_some());
    assert!(store.get_version(v, "kept", None).await.unwrap().is_some());
    assert_eq!(store.get_version(v, "abandoned", None).await.unwrap(), None);
    assert!(
        store
            .all_versions(v, "abandoned", usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}

/// A set waiting for a name whose row another session has locked holds up its own batch only: sets of other
/// names that arrive after it are written meanwhile (another batch starts once the queue falls behind), and
/// the waiting set lands when the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_waiting_for_a_locked_name_does_not_hold_up_the_others() {
    let Some((pg, store)) = open_or_skip(
        "store::postgres::a_set_waiting_for_a_locked_name_does_not_hold_up_the_others",
    )
    .await
    else {
        return;
    };
    let store = Arc::new(store);
    let v = "vault";
    put_first_versions(&store, v, &["locked", "free"]).await;
    let other = lock_rows_elsewhere(&pg.url(), &["locked"]).await;
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_version(v, row("locked", unique_version(1, 0), 1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        let set = row("free", unique_version(2, i), 2);
        tokio::time::timeout(Duration::from_secs(10), store.put_version(v, set.clone()))
            .await
            .expect("a set of another name is not held up by the locked one")
            .unwrap();
        assert_eq!(store.get_version(v, "free", None).await.unwrap(), Some(set));
    }
    assert!(!waiting.is_finished(), "the set of the locked name waits");
    other.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().expect("lands once the lock is gone");
    let latest = store.get_version(v, "locked", None).await.unwrap().unwrap();
    assert_eq!(latest.version, unique_version(1, 0));
    store.close().await;
}

/// Reads in flight together are answered by one query, each as it would be alone: the latest version or the
/// one asked for, nothing for deleted or absent names or unknown versions, the same answer for a repeated read.
#[tokio::test]
async fn reads_in_flight_together_share_one_query() {
    let Some((_pg, store)) =
        open_or_skip("store::postgres::reads_in_flight_together_share_one_query").await
    else {
        return;
    };
    let v = "vault";
    let a1 = row("Alpha", unique_version(0, 1), 1);
    let a2 = row("ALPHA", unique_version(0, 2), 2);
    let b = row("beta", unique_version(0, 3), 3);
    let gone = row("gone", unique_version(0, 4), 4);
    for r in [&a1, &a2, &b, &gone] {
        store.put_version(v, r.clone()).await.unwrap();
    }
    store.soft_delete(v, "gone", 10, 20).await.unwrap().unwrap();
    // The latest's display name is that of the latest write; an older version reads with it too.
    let a1_now = VersionRow {
        name: "ALPHA".into(),
        ..a1.clone()
    };
    let reads: Vec<(&str, Option<String>, Option<VersionRow>)> = vec![
        ("alpha", None, Some(a2.clone())),
        ("alpha", Some(a1.version.clone()), Some(a1_now)),
        ("Alpha", Some(a2.version.clone()), Some(a2.clone())),
        ("alpha", Some(unique_version(9, 9)), None),
        ("alpha", Some(b.version.clone()), None),
        ("beta", None, Some(b.clone())),
        ("BETA", None, Some(b.clone())),
        ("gone", None, None),
        ("gone", Some(gone.version.clone()), None),
        ("absent", None, None),
    ];
    let before = store.get_batches_run();
    let answers = join_all(
        reads
            .iter()
            .map(|(name, version, _)| store.get_version(v, name, version.as_deref()))
            .collect(),
    )
    .await;
    assert_eq!(
        store.get_batches_run() - before,
        1,
        "one query (after the first read, run alone)"
    );
    for ((name, version, expected), answer) in reads.iter().zip(answers) {
        assert_eq!(
            answer.unwrap().as_ref(),
            expected.as_ref(),
            "{name} {version:?}"
        );
    }
    // Alone, through the one-read statement, the same.
    for (name, version, expected) in &reads {
        let alone = store
            .get_version(v, name, version.as_deref())
            .await
            .unwrap();
        assert_eq!(
            alone.as_ref(),
            expected.as_ref(),
            "{name} {version:?} alone"
        );
    }
    store.close().await;
}

/// Every keyvault session bounds what the database gives it (`SQL_SESSION_LIMITS`), and a row another
/// session keeps locked (a DBA's open transaction, a stalled node) fails the requests for that name in
/// seconds, in the database too: no session is left waiting behind them (the node opens no more than its
/// pool), the access document is still read (its own connection), a set answered `Unavailable` is not
/// committed when the lock goes, and other names are written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_elsewhere_fails_its_requests_and_ends_their_sessions() {
    let Some(pg) = pgtest::start_or_skip(
        "store::postgres::a_row_locked_elsewhere_fails_its_requests_and_ends_their_sessions",
    ) else {
        return;
    };
    let url = pg.create_database("locks").await.unwrap();
    let store = Arc::new(PostgresStore::open_with_pool(&url, 3).await.unwrap());
    let limits: Vec<String> = column(
        &store,
        "SELECT setting FROM pg_settings WHERE name IN \
         ('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout') ORDER BY name",
    )
    .await;
    let statement_ms = STATEMENT_LIMIT.as_millis().to_string();
    assert_eq!(limits, ["5000", "3000", statement_ms.as_str()]);

    let v = "vault";
    put_first_versions(&store, v, &["locked", "free"]).await;
    let other = lock_rows_elsewhere(&url, &["locked"]).await;
    let started = Instant::now();
    // Six writes of the locked name, more than the pool's three connections: they take turns (one
    // connection), each waiting `lock_timeout` in the database; those whose turn does not come within 10 s
    // are not tried.
    let mut waiting = Vec::new();
    for i in 0..6u8 {
        let store = store.clone();
        waiting.push(tokio::spawn(async move {
            let patch = VersionPatch {
                content_type: Some(format!("t{i}")),
                ..Default::default()
            };
            store.update_version(v, "locked", None, patch).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile other names are written at once, and the access document is read (its own connection).
    let patch = VersionPatch {
        content_type: Some("meanwhile".into()),
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(1),
        store.update_version(v, "free", None, patch),
    )
    .await
    .expect("another name's write is not held up by the locked one")
    .unwrap();
    tokio::time::timeout(Duration::from_secs(2), store.access_revision())
        .await
        .expect("the access read is not held up")
        .unwrap();
    let mut lock_timeouts = 0;
    for w in waiting {
        let e = w.await.unwrap().unwrap_err();
        assert!(matches!(&e, StoreError::Unavailable(_)), "{e:?}");
        lock_timeouts += usize::from(e.to_string().contains("55P03"));
    }
    assert!((1..=4).contains(&lock_timeouts), "{lock_timeouts}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    // A set of the locked name alongside another name's: the other is written, it fails.
    let sets = [
        row("locked", unique_version(1, 0), 1),
        row("free", unique_version(1, 1), 1),
    ];
    let answers = join_all(
        sets.iter()
            .map(|r| store.put_version(v, r.clone()))
            .collect(),
    )
    .await;
    assert!(
        matches!(&answers[0], Err(StoreError::Unavailable(_))),
        "{answers:?}"
    );
    assert!(answers[1].is_ok(), "{answers:?}");
    // No session of the store waits in the database behind the failed ones.
    let waiting_sessions: Vec<i64> = column(
        &store,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'keyvault' AND wait_event_type = 'Lock'",
    )
    .await;
    assert_eq!(waiting_sessions, [0]);
    let open: Vec<i64> = column(
        &store,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'keyvault'",
    )
    .await;
    // The pool's three and the access read's one; the other session does not say it is keyvault's.
    assert!(open[0] <= 4, "{open:?}");
    other.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let latest = store.get_version(v, "locked", None).await.unwrap().unwrap();
    assert_eq!(
        (latest.version.as_str(), latest.content_type.as_deref()),
        (unique_version(0, 0).as_str(), None),
        "nothing that failed landed later"
    );
    store.close().await;
}

/// A batch of sets that fails on a row another session keeps locked writes its sets one by one: those of
/// free names are written and answered as written, however long the locked ones wait (each `lock_timeout`),
/// and those of locked names are answered `Unavailable` and are not written (not even once the lock goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_locked_names_answers_each_set_as_it_was() {
    let Some((pg, store)) =
        open_or_skip("store::postgres::a_batch_with_locked_names_answers_each_set_as_it_was").await
    else {
        return;
    };
    let v = "vault";
    let names = ["free0", "l1", "f1", "l2", "f2", "l3"];
    put_first_versions(&store, v, &names).await;
    let other = lock_rows_elsewhere(&pg.url(), &["l1", "l2", "l3"]).await;
    let started = Instant::now();
    // The first runs alone (its name is free: at once); the others queue meanwhile and share a batch.
    let sets: Vec<VersionRow> = names
        .iter()
        .map(|n| row(n, unique_version(1, 0), 1))
        .collect();
    let answers = join_all(
        sets.iter()
            .map(|r| store.put_version(v, r.clone()))
            .collect(),
    )
    .await;
    let took = started.elapsed();
    for (name, answer) in names.iter().zip(&answers) {
        if name.starts_with('l') {
            assert!(
                matches!(answer, Err(StoreError::Unavailable(_))),
                "{name}: {answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "{name}: {answer:?}");
        }
    }
    assert!(store.set_batches_run() >= 1, "the sets shared a batch");
    assert!(took < <Set as batch::Work>::LIMIT, "{took:?}");
    other.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for name in names {
        let latest = store.get_version(v, name, None).await.unwrap().unwrap();
        let want = if name.starts_with('l') { 0 } else { 1 };
        assert_eq!(latest.version, unique_version(want, 0), "{name}");
    }
    store.close().await;
}

/// A name's turn is forgotten however its write ends — done, or dropped while it waits or runs — once no
/// other write of the name holds or awaits it; while one does, the others wait for it.
#[tokio::test]
async fn a_names_turn_is_forgotten_however_its_write_ends() {
    let turns = NameTurns::default();
    let done: StoreResult<u8> = turns.run("v", "a", async { Ok(1) }).await;
    assert_eq!(done.unwrap(), 1);
    assert!(turns.lock().is_empty());
    // Dropped while it runs (its request gone), and one dropped while it waits behind it.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let running = turns.run("v", "a", async move {
        let _ = started_tx.send(());
        std::future::pending::<StoreResult<()>>().await
    });
    let waiting = turns.run("v", "a", async { Ok(()) });
    let both = async {
        let _ = tokio::join!(running, waiting);
    };
    let _ = tokio::time::timeout(Duration::from_millis(100), both).await;
    let _ = started_rx.await;
    assert!(turns.lock().is_empty(), "{} left", turns.lock().len());
    // Two writes of one name: the second starts once the first is done.
    let order = std::sync::Mutex::new(Vec::new());
    let first = turns.run("v", "b", async {
        order.lock().unwrap().push("first in");
        tokio::time::sleep(Duration::from_millis(50)).await;
        order.lock().unwrap().push("first out");
        Ok(())
    });
    let second = turns.run("v", "b", async {
        order.lock().unwrap().push("second");
        Ok(())
    });
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();
    assert_eq!(*order.lock().unwrap(), ["first in", "first out", "second"]);
    assert!(turns.lock().is_empty());
}

/// Writes of one name ending at once, on two threads, leave no turn behind (a62-3, a64-4: the guard's copy was
/// dropped after the map's lock, so two guards could each count the other's; a few entries in 100k rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_of_writes_ending_at_once_are_all_forgotten() {
    let turns = Arc::new(NameTurns::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut rounds = 0u64;
    while std::time::Instant::now() < deadline {
        let name = format!("n{rounds}");
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (turns, name) = (turns.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                let r: StoreResult<()> = turns.run("v", &name, async { Ok(()) }).await;
                r
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        rounds += 1;
    }
    let left = turns.lock().len();
    assert_eq!(left, 0, "{left} of {rounds} names left behind");
}

/// A write given up by its caller while it waits in the database for a row another session holds is
/// cancelled there: no keyvault session is left waiting behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_is_cancelled_in_the_database() {
    let Some((pg, store)) =
        open_or_skip("store::postgres::a_write_given_up_is_cancelled_in_the_database").await
    else {
        return;
    };
    let v = "vault";
    store
        .put_version(v, row("locked", unique_version(0, 0), 0))
        .await
        .unwrap();
    let other = lock_rows_elsewhere(&pg.url(), &["locked"]).await;
    let waiting_sessions = async || -> i64 {
        let rows = other
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'keyvault' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        rows[0].get(0)
    };
    for i in 0..4 {
        let patch = VersionPatch {
            content_type: Some(format!("t{i}")),
            ..Default::default()
        };
        let given_up = tokio::time::timeout(
            Duration::from_millis(300),
            store.update_version(v, "locked", None, patch),
        )
        .await;
        assert!(given_up.is_err(), "{given_up:?}");
    }
    // Well within `lock_timeout` (3 s), which would end them otherwise.
    let started = Instant::now();
    while waiting_sessions().await > 0 {
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "sessions still waiting behind writes given up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.batch_execute("COMMIT").await.unwrap();
    let latest = store.get_version(v, "locked", None).await.unwrap().unwrap();
    assert_eq!(latest.content_type, None, "nothing given up was written");
    store.close().await;
}

/// A set's statement that reaches the database after its deadline — held in a stalled backend's socket or in the
/// network while this side gave up and answered 503 — writes nothing, alone or in a batch, so it cannot make an
/// older version the latest over one acknowledged meanwhile (a70-1). Before the deadline it is written.
#[tokio::test]
async fn a_set_reaching_the_database_after_its_deadline_is_not_written() {
    let Some((_pg, store)) = open_or_skip(
        "store::postgres::a_set_reaching_the_database_after_its_deadline_is_not_written",
    )
    .await
    else {
        return;
    };
    let v = "vault";
    let acknowledged = unique_version(0, 2);
    store
        .put_version(v, row("late", acknowledged.clone(), 2))
        .await
        .unwrap();
    let past = set_deadline_ms(Duration::ZERO) - 60_000;
    let late = row("late", unique_version(0, 1), 1);
    let answer = store.run(async |c| put(c, v, &late, past).await).await;
    match answer {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("after its deadline"), "{m}"),
        other => panic!("a late set answered {other:?}"),
    }
    // A batch's statement: refused whole, by the error that tells it.
    let refused = store
        .run(async |c| {
            let st = c.client.prepare(batch::SQL_PUT_MANY).await?;
            let e = c
                .client
                .query(
                    &st,
                    &[
                        &vec![v, v],
                        &vec!["late", "other"],
                        &vec![late.version.as_str(), "0".repeat(32).as_str()],
                        &vec![vec![0u8], vec![0u8]],
                        &vec![None::<String>, None],
                        &vec![None::<String>, None],
                        &vec![true, true],
                        &vec![None::<i64>, None],
                        &vec![None::<i64>, None],
                        &vec![1i64, 1],
                        &vec![1i64, 1],
                        &vec!["late", "other"],
                        &past,
                    ],
                )
                .await
                .expect_err("a late batch is refused");
            Ok(is_past_deadline(&e))
        })
        .await
        .unwrap();
    assert!(refused, "the batch failed with another error");
    let latest = store.get_version(v, "late", None).await.unwrap().unwrap();
    assert_eq!(latest.version, acknowledged, "a late set became the latest");
    assert_eq!(
        store
            .all_versions(v, "late", usize::MAX)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.get_version(v, "other", None).await.unwrap(), None);
    // In time, the same statement writes.
    let in_time = set_deadline_ms(Duration::from_secs(60));
    let next = row("late", unique_version(0, 3), 3);
    store
        .run(async |c| put(c, v, &next, in_time).await)
        .await
        .unwrap();
    let latest = store.get_version(v, "late", None).await.unwrap().unwrap();
    assert_eq!(latest.version, next.version);
    store.close().await;
}
