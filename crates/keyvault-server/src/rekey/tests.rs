use super::*;
use crate::crypto::{Kek, KeyRing};
use crate::store::SecretStore;
use crate::store::sqlite::SqliteStore;
use crate::vault::{SystemClock, Vault, VaultSettings};
use keyvault_types::SecretString;
use std::sync::Arc;

fn envelope(current: u8, previous: &[u8]) -> Arc<Envelope> {
    Arc::new(Envelope::new(Arc::new(KeyRing::new(
        Kek::from_bytes([current; 32]),
        previous.iter().map(|b| Kek::from_bytes([*b; 32])),
    ))))
}

fn vault(store: Arc<SqliteStore>, envelope: Arc<Envelope>) -> Vault {
    Vault::new(
        store,
        envelope,
        Arc::new(SystemClock),
        VaultSettings {
            name: "v".into(),
            retention_days: 7,
            purge_protection: false,
        },
    )
}

async fn value(v: &Vault, name: &str, version: Option<&str>) -> String {
    let s = v.get(name, version).await.unwrap();
    s.value.unwrap().expose().to_string()
}

/// A store written under key 1 (three versions of one name, a deleted name, a backup), re-sealed with key 2
/// current and key 1 previous: afterwards key 2 alone opens everything, key 1 alone is refused by the key
/// check, a second rekey finds nothing to do, and the old backup no longer restores without key 1.
#[tokio::test]
async fn rekey_moves_every_version_and_the_key_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let old = envelope(1, &[]);
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    crate::store::check_key(store.as_ref(), &old).await.unwrap();
    let v = vault(store.clone(), old.clone());
    let mut versions = Vec::new();
    for i in 0..3 {
        let s = v
            .set(
                "db",
                SecretString::new(format!("db-{i}")),
                Default::default(),
            )
            .await
            .unwrap();
        versions.push(s.row.version);
    }
    v.set("gone", SecretString::new("bye"), Default::default())
        .await
        .unwrap();
    v.delete("gone").await.unwrap();
    v.set("kept", SecretString::new("k"), Default::default())
        .await
        .unwrap();
    let old_blob = v.backup("kept").await.unwrap();

    let rotated = envelope(2, &[1]);
    // Start-up with the new key current and the old one previous is accepted.
    crate::store::check_key(store.as_ref(), &rotated)
        .await
        .unwrap();
    let dry = rekey(
        store.as_ref(),
        &rotated,
        &RekeyOptions {
            batch_size: 2,
            dry_run: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    let old_id = old.current_kek_id().to_string();
    let new_id = rotated.current_kek_id().to_string();
    assert_eq!(dry.before, BTreeMap::from([(old_id.clone(), 5)]));
    assert_eq!(dry.resealed, 5);
    assert!(!dry.complete());
    assert_eq!(count_per_key(store.as_ref(), 3).await.unwrap(), dry.before);

    let mut pages = 0;
    let report = rekey(
        store.as_ref(),
        &rotated,
        &RekeyOptions {
            batch_size: 2,
            dry_run: false,
            ..Default::default()
        },
        |_| pages += 1,
    )
    .await
    .unwrap();
    assert_eq!(pages, 3, "5 versions in pages of 2");
    assert_eq!(report.scanned, 5);
    assert_eq!(report.resealed, 5);
    assert_eq!(report.already_current, 0);
    assert_eq!((report.skipped, report.failed), (0, 0));
    assert_eq!(report.before, BTreeMap::from([(old_id.clone(), 5)]));
    assert_eq!(report.after, BTreeMap::from([(new_id.clone(), 5)]));
    assert_eq!(report.key_check_before.as_deref(), Some(old_id.as_str()));
    assert_eq!(report.key_check_after.as_deref(), Some(new_id.as_str()));
    assert!(report.complete());

    // The new key alone: every version reads, the deleted one recovers, the old backup is refused (its key
    // is gone) while a new one restores.
    let new_only = envelope(2, &[]);
    crate::store::check_key(store.as_ref(), &new_only)
        .await
        .unwrap();
    let v2 = vault(store.clone(), new_only.clone());
    for (i, version) in versions.iter().enumerate() {
        assert_eq!(value(&v2, "db", Some(version)).await, format!("db-{i}"));
    }
    v2.recover("gone").await.unwrap();
    assert_eq!(value(&v2, "gone", None).await, "bye");
    let new_blob = v2.backup("kept").await.unwrap();
    v2.delete("kept").await.unwrap();
    v2.purge("kept").await.unwrap();
    assert!(matches!(
        v2.restore(&old_blob).await,
        Err(crate::vault::VaultError::MalformedBackup)
    ));
    v2.restore(&new_blob).await.unwrap();
    assert_eq!(value(&v2, "kept", None).await, "k");
    // With the old key kept as a previous key, the old backup restores too.
    v2.delete("kept").await.unwrap();
    v2.purge("kept").await.unwrap();
    vault(store.clone(), rotated.clone())
        .restore(&old_blob)
        .await
        .unwrap();

    // The old key alone is refused, naming both ids.
    let err = crate::store::check_key(store.as_ref(), &old)
        .await
        .unwrap_err();
    assert!(err.contains(&old_id) && err.contains(&new_id), "{err}");

    // Nothing left to do.
    let again = rekey(store.as_ref(), &rotated, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((again.resealed, again.already_current), (0, 5));
    assert!(again.complete());
}

/// A value under a key that is not configured is reported by vault, name, version and key id, and the key
/// check stays under the previous key (which must not be removed yet); the others are re-sealed.
#[tokio::test]
async fn a_value_under_an_unknown_key_is_reported_and_keeps_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("v.db")).unwrap());
    let old = envelope(1, &[]);
    crate::store::check_key(store.as_ref(), &old).await.unwrap();
    vault(store.clone(), old.clone())
        .set("fine", SecretString::new("f"), Default::default())
        .await
        .unwrap();
    // A version sealed under a third key (as if written by a misconfigured node).
    let stranger = envelope(9, &[]);
    let lost = vault(store.clone(), stranger.clone())
        .set("lost", SecretString::new("l"), Default::default())
        .await
        .unwrap();

    let rotated = envelope(2, &[1]);
    let report = rekey(store.as_ref(), &rotated, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((report.resealed, report.failed), (1, 1));
    let failure = &report.failures[0];
    assert_eq!(
        (failure.name_key.as_str(), failure.version.as_str()),
        ("lost", lost.row.version.as_str())
    );
    assert_eq!(failure.kek_id, stranger.current_kek_id());
    assert!(
        failure.error.contains(stranger.current_kek_id()),
        "{failure:?}"
    );
    assert_eq!(report.remaining(), 1);
    assert_eq!(
        report.key_check_after.as_deref(),
        Some(old.current_kek_id()),
        "the check stays under the old key"
    );
    assert!(!report.complete());
    // Reading it names the key id.
    let err = vault(store.clone(), rotated.clone())
        .get("lost", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(stranger.current_kek_id()), "{err}");
}

/// Keys that do not open the store's key check are refused before anything is read or written.
#[tokio::test]
async fn rekey_refuses_keys_that_do_not_open_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("v.db")).unwrap());
    let old = envelope(1, &[]);
    crate::store::check_key(store.as_ref(), &old).await.unwrap();
    vault(store.clone(), old.clone())
        .set("s", SecretString::new("x"), Default::default())
        .await
        .unwrap();
    let err = rekey(
        store.as_ref(),
        &envelope(2, &[3]),
        &RekeyOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.contains(old.current_kek_id()), "{err}");
    assert_eq!(
        count_per_key(store.as_ref(), 10).await.unwrap(),
        BTreeMap::from([(old.current_kek_id().to_string(), 1)])
    );
}

/// A store under key 1 with three versions, its key check written.
/// What a server's start does with its keys: the key check, then (once the start can no longer fail) its
/// current key noted.
async fn start(store: &SqliteStore, envelope: &Envelope) {
    crate::store::check_key(store, envelope).await.unwrap();
    crate::store::note_current_key(store, envelope)
        .await
        .unwrap();
}

async fn store_under_key_1(dir: &std::path::Path) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(&dir.join("v.db")).unwrap());
    let old = envelope(1, &[]);
    start(&store, &old).await;
    let v = vault(store.clone(), old);
    for i in 0..3 {
        v.set("s", SecretString::new(format!("s-{i}")), Default::default())
            .await
            .unwrap();
    }
    store
}

/// After a complete rekey from key 1 to key 2, key 1 is retired: a server with key 1 current and key 2
/// previous (which opens the key check) is refused with what to change, and so is a rekey back to key 1;
/// key 2 current with key 1 previous starts. An envelope whose key was retired seals nothing (503).
#[tokio::test]
async fn a_completed_rekey_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_under_key_1(dir.path()).await;
    let rotated = envelope(2, &[1]);
    let report = rekey(store.as_ref(), &rotated, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete());
    let (id1, id2) = (
        envelope(1, &[]).current_kek_id().to_string(),
        rotated.current_kek_id().to_string(),
    );
    assert_eq!(report.retired, vec![id1.clone()]);
    assert_eq!(
        crate::store::kek_retired(store.as_ref()).await.unwrap(),
        vec![id1.clone()]
    );
    assert_eq!(
        store.meta(crate::store::KEK_REKEY_TARGET).await.unwrap(),
        None,
        "a completed rekey clears its target"
    );

    let backwards = envelope(1, &[2]);
    let err = crate::store::check_key(store.as_ref(), &backwards)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "key-encryption key id {id1} was retired by `keyvault rekey`; make key {id2} current (kek_file or \
             KEYVAULT_KEK; {id1} may stay as a previous key)"
        )
    );
    let err = rekey(store.as_ref(), &backwards, &RekeyOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(err.contains("was retired"), "{err}");
    crate::store::check_key(store.as_ref(), &rotated)
        .await
        .unwrap();
    assert!(
        crate::store::current_kek_retired(store.as_ref(), &backwards)
            .await
            .unwrap()
    );
    assert!(
        !crate::store::current_kek_retired(store.as_ref(), &rotated)
            .await
            .unwrap()
    );

    // A node that learnt its key was retired refuses every write that seals, and still reads.
    let node = vault(store.clone(), backwards.clone());
    backwards.retire_current();
    let err = node
        .set("s", SecretString::new("late"), Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, crate::vault::VaultError::KeyRetired(m) if m.contains(&id1)),
        "{err:?}"
    );
    assert_eq!(value(&node, "s", None).await, "s-2");
    // Nor does it make backups: one under the retired key would stop restoring once that key is removed.
    let err = node.backup("s").await.unwrap_err();
    assert!(
        matches!(&err, crate::vault::VaultError::KeyRetired(m) if m.contains(&id1)),
        "{err:?}"
    );

    // A second rotation (to key 3) keeps key 1 retired and retires key 2.
    let third = envelope(3, &[2]);
    let report = rekey(store.as_ref(), &third, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete());
    assert_eq!(
        crate::store::kek_retired(store.as_ref()).await.unwrap(),
        vec![id1, id2]
    );
}

/// A rekey records its target before its first re-seal: interrupted after re-sealing part of the store,
/// a server with the old key alone (which still opens the key check) is refused, naming the target; with
/// the target configured it starts, and the rekey run again completes and clears the target.
#[tokio::test]
async fn an_interrupted_rekey_refuses_servers_without_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_under_key_1(dir.path()).await;
    let old = envelope(1, &[]);
    let rotated = envelope(2, &[1]);
    let id2 = rotated.current_kek_id().to_string();
    // What an interrupted rekey leaves: the target, one version re-sealed, the check under key 1.
    crate::store::begin_rekey(store.as_ref(), &rotated)
        .await
        .unwrap();
    let first = store.sealed_page(None, 1).await.unwrap().remove(0);
    let new = rotated
        .reseal(&first.vault, &first.name_key, &first.version, &first.sealed)
        .unwrap();
    let change = first.replace_with(new);
    assert_eq!(store.replace_sealed(vec![change]).await.unwrap(), 1);

    let err = crate::store::check_key(store.as_ref(), &old)
        .await
        .unwrap_err();
    assert!(
        err.contains(&format!(
            "a `keyvault rekey` to key-encryption key id {id2} started (and may have been interrupted)"
        )) && err.contains("run `keyvault rekey` again"),
        "{err}"
    );
    // Holding the target as a previous key is enough to start (the node can open what was re-sealed).
    crate::store::check_key(store.as_ref(), &envelope(1, &[2]))
        .await
        .unwrap();
    crate::store::check_key(store.as_ref(), &rotated)
        .await
        .unwrap();

    let report = rekey(store.as_ref(), &rotated, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete());
    assert_eq!((report.resealed, report.already_current), (2, 1));
    assert_eq!(
        store.meta(crate::store::KEK_REKEY_TARGET).await.unwrap(),
        None
    );
    // A dry run records nothing.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = store_under_key_1(dir2.path()).await;
    rekey(
        store2.as_ref(),
        &rotated,
        &RekeyOptions {
            batch_size: 10,
            dry_run: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        store2.meta(crate::store::KEK_REKEY_TARGET).await.unwrap(),
        None
    );
}

/// A store in `dir` holding three versions of one secret under key 1, and the envelope of its rotation to
/// key 2 (key 1 previous).
async fn three_versions_to_rotate(dir: &std::path::Path) -> (Arc<SqliteStore>, Arc<Envelope>) {
    let store = Arc::new(SqliteStore::open(&dir.join("v.db")).unwrap());
    let old = envelope(1, &[]);
    crate::store::check_key(store.as_ref(), &old).await.unwrap();
    let v = vault(store.clone(), old);
    for i in 0..3 {
        v.set("s", SecretString::new(format!("s-{i}")), Default::default())
            .await
            .unwrap();
    }
    (store, envelope(2, &[1]))
}

/// A node's rekey job: one at a time (a second start while one runs is refused with the running job's
/// view), its view follows the rekey to its report, and a finished job makes way for the next.
#[tokio::test]
async fn a_node_runs_one_rekey_job_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rotated) = three_versions_to_rotate(dir.path()).await;
    let jobs = job::RekeyJobs::default();
    assert!(jobs.view().is_none());
    let start = |dry_run| {
        jobs.start(
            store.clone(),
            rotated.clone(),
            RekeyOptions {
                batch_size: 1,
                dry_run,
                ..Default::default()
            },
            || 1_700_000_000,
            |_| {},
        )
    };
    // This runtime runs one task at a time: the job cannot have finished before the second start.
    let first = start(false).unwrap();
    assert_eq!(first.status, job::RekeyStatus::Running);
    assert!(
        first.id.len() == 16 && first.id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        first.id
    );
    let refused = start(true).unwrap_err();
    assert_eq!(refused.0, first.id);

    let done = loop {
        let view = jobs.view().unwrap();
        if view.status != job::RekeyStatus::Running {
            break view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(done.status, job::RekeyStatus::Succeeded);
    assert_eq!(done.finished_on, Some(1_700_000_000));
    assert_eq!(done.progress.scanned, 3);
    let report = done.report.unwrap();
    assert_eq!((report.resealed, report.failed), (3, 0));
    assert!(report.complete());

    // The next job (a dry run) gets another id.
    let second = start(true).unwrap();
    assert_ne!(second.id, first.id);
    assert!(second.dry_run);
}

/// A shutdown stops a running job: it ends as failed, saying why, and its end is reported (audited) before
/// `stop` returns; a job started afterwards stops at once.
#[tokio::test]
async fn a_shutdown_stops_the_rekey_job_and_reports_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rotated) = three_versions_to_rotate(dir.path()).await;
    let jobs = job::RekeyJobs::default();
    let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = || {
        let ended = ended.clone();
        jobs.start(
            store.clone(),
            rotated.clone(),
            RekeyOptions {
                batch_size: 1,
                ..Default::default()
            },
            || 1_700_000_000,
            move |view: &job::RekeyJobView| ended.lock().unwrap().push(view.clone()),
        )
        .unwrap()
    };
    // This runtime runs one task at a time: the job has not begun when the shutdown comes.
    let first = start();
    jobs.stop(std::time::Duration::from_secs(5)).await;
    let reported = ended.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].id, first.id);
    assert_eq!(reported[0].status, job::RekeyStatus::Failed);
    assert_eq!(reported[0].error.as_deref(), Some(job::STOPPED_BY_SHUTDOWN));
    assert_eq!(jobs.view().unwrap().status, job::RekeyStatus::Failed);

    let second = start();
    jobs.stop(std::time::Duration::from_secs(5)).await;
    let reported = ended.lock().unwrap().clone();
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert_eq!(reported[1].id, second.id);
    assert_eq!(reported[1].error.as_deref(), Some(job::STOPPED_BY_SHUTDOWN));
    // What it did not do stays for the next run: every version is still under key 1.
    let report = crate::rekey::rekey(
        store.as_ref(),
        &rotated,
        &RekeyOptions {
            dry_run: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.resealed, 3, "{report:?}");
}

/// A rotation from key 1 to key 2 under way: node A already seals under key 2 (key 1 previous), node B not yet
/// (key 1 current, key 2 previous). A rekey sent to B (a load balancer's choice) re-seals A's values under
/// key 1, which every node holds, and retires nothing: key 2 is newer, not older, and retiring it would stop
/// A's writes and keep it from ever becoming current. A's own rekey then completes the rotation.
#[tokio::test]
async fn a_rekey_on_a_node_behind_the_rotation_retires_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_under_key_1(dir.path()).await;
    let (ahead, behind) = (envelope(2, &[1]), envelope(1, &[2]));
    let (id1, id2) = (
        behind.current_kek_id().to_string(),
        ahead.current_kek_id().to_string(),
    );
    let a = vault(store.clone(), ahead.clone());
    a.set("new", SecretString::new("from A"), Default::default())
        .await
        .unwrap();
    let report = rekey(store.as_ref(), &behind, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete());
    assert_eq!(report.before.get(&id2), Some(&1));
    assert!(report.retired.is_empty(), "{:?}", report.retired);
    assert!(
        crate::store::kek_retired(store.as_ref())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(report.after, BTreeMap::from([(id1.clone(), 4)]));
    // A still starts and writes under key 2; B reads what A wrote.
    crate::store::check_key(store.as_ref(), &ahead)
        .await
        .unwrap();
    a.set("new", SecretString::new("again"), Default::default())
        .await
        .unwrap();
    assert_eq!(
        value(&vault(store.clone(), behind.clone()), "new", None).await,
        "again"
    );
    // A's rekey completes the rotation: key 1 retired, B refused from then on.
    let report = rekey(store.as_ref(), &ahead, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete());
    assert_eq!(report.retired, vec![id1.clone()]);
    assert_eq!(report.after, BTreeMap::from([(id2, 5)]));
    let err = crate::store::check_key(store.as_ref(), &behind)
        .await
        .unwrap_err();
    assert!(err.contains(&format!("{id1} was retired")), "{err}");
}

/// Two rekeys toward different keys do not overlap: while one toward key 2 has started (and not completed),
/// a rekey toward key 1 (a node behind the rotation) or toward key 3 is refused before it re-seals anything,
/// naming the target to finish; the one toward key 2 then completes. A rekey whose key was retired, or whose
/// target was replaced, while it ran completes nothing.
#[tokio::test]
async fn rekeys_toward_different_keys_do_not_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_under_key_1(dir.path()).await;
    let rotated = envelope(2, &[1]);
    let id2 = rotated.current_kek_id().to_string();
    crate::store::begin_rekey(store.as_ref(), &rotated)
        .await
        .unwrap();
    for other in [envelope(1, &[2]), envelope(3, &[1, 2])] {
        let err = rekey(store.as_ref(), &other, &RekeyOptions::default(), |_| {})
            .await
            .unwrap_err();
        assert!(
            err.contains(&format!(
                "a `keyvault rekey` to key-encryption key id {id2} has started"
            )),
            "{err}"
        );
        let err = crate::store::reseal_key_check(store.as_ref(), &other, &[])
            .await
            .unwrap_err();
        assert!(
            err.contains(&format!(
                "another `keyvault rekey`, to key-encryption key id {id2}"
            )),
            "{err}"
        );
    }
    assert_eq!(
        count_per_key(store.as_ref(), 10).await.unwrap(),
        BTreeMap::from([(envelope(1, &[]).current_kek_id().to_string(), 3)]),
        "the refused rekeys re-sealed nothing"
    );
    let report = rekey(store.as_ref(), &rotated, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete());
    // The retired key 1 cannot complete a rekey (its check would move under a retired key).
    let err = crate::store::reseal_key_check(store.as_ref(), &envelope(1, &[2]), &[])
        .await
        .unwrap_err();
    assert!(err.contains("was retired while this rekey ran"), "{err}");
}

/// A rekey with `envelope`'s keys that completes: its report.
async fn completed_rekey(store: &SqliteStore, envelope: &Envelope) -> RekeyReport {
    let report = rekey(store, envelope, &RekeyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.complete(), "{report:?}");
    report
}

/// Removes the order of current keys, as on a store used by builds that kept none.
async fn forget_the_order(store: &SqliteStore) {
    let old = store.meta(crate::store::KEK_CURRENT_ORDER).await.unwrap();
    let forget = crate::store::MetaSwap {
        key: crate::store::KEK_CURRENT_ORDER.to_owned(),
        expect: old,
        set: None,
    };
    assert!(store.meta_swap(vec![forget]).await.unwrap());
}

/// K1 -> K2 -> K3 with no rekey between: the key check stays under K1 and values are under all three (each
/// key current on a server in turn). Returns the store and the three key ids.
async fn three_keys_current_in_turn(dir: &std::path::Path) -> (Arc<SqliteStore>, Vec<String>) {
    let store = store_under_key_1(dir).await;
    for (e, v) in [(envelope(2, &[1]), "two"), (envelope(3, &[2, 1]), "three")] {
        start(&store, &e).await;
        vault(store.clone(), e)
            .set("s", SecretString::new(v), Default::default())
            .await
            .unwrap();
    }
    let ids: Vec<String> = (1..=3u8)
        .map(|b| envelope(b, &[]).current_kek_id().to_string())
        .collect();
    assert_eq!(
        crate::store::note_current_key(store.as_ref(), &envelope(3, &[]))
            .await
            .unwrap(),
        ids,
        "the servers' starts noted their current keys in order"
    );
    (store, ids)
}

/// After K1 -> K2 -> K3 with no rekey between, the rekey to K3 retires K2 with K1 (every key current before
/// K3, not only the key check's), so a server from a stale configuration cannot make K2 current again, nor
/// run a rekey that would retire K3.
#[tokio::test]
async fn a_rekey_retires_every_key_current_before_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = three_keys_current_in_turn(dir.path()).await;
    let report = completed_rekey(&store, &envelope(3, &[2, 1])).await;
    assert_eq!(report.retired, ids[..2].to_vec());
    assert_eq!(report.after, BTreeMap::from([(ids[2].clone(), 5)]));
    assert_eq!(
        crate::store::kek_retired(store.as_ref()).await.unwrap(),
        ids[..2].to_vec()
    );
    let stale = envelope(2, &[3, 1]);
    let err = crate::store::check_key(store.as_ref(), &stale)
        .await
        .unwrap_err();
    assert!(err.contains(&format!("{} was retired", ids[1])), "{err}");
    let err = rekey(store.as_ref(), &stale, &RekeyOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(err.contains("was retired"), "{err}");
}

/// The same history, rekeyed by a node with K2 current (K3 previous: a node behind the rotation to K3): the
/// check moves to K2 and K1 alone is retired; K3 is newer, not older, and stays free to become current.
#[tokio::test]
async fn a_rekey_does_not_retire_a_key_current_after_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = three_keys_current_in_turn(dir.path()).await;
    let report = completed_rekey(&store, &envelope(2, &[3, 1])).await;
    assert_eq!(report.retired, vec![ids[0].clone()]);
    assert_eq!(report.after, BTreeMap::from([(ids[1].clone(), 5)]));
    crate::store::check_key(store.as_ref(), &envelope(3, &[2]))
        .await
        .unwrap();
}

/// A store used before the order of current keys was kept (no list): the keys its servers note from then on
/// may have been current before in another order (here the node behind, with K2 current, restarts last), so
/// they are not ranked, and a rekey retires only the key check's key, as before — never K3, which is newer.
/// Once a rekey has completed, keys first current after it are ranked: the next rotation retires them too.
#[tokio::test]
async fn keys_noted_over_a_store_used_before_the_order_are_not_ranked() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_under_key_1(dir.path()).await;
    forget_the_order(&store).await;
    let ids: Vec<String> = (1..=5u8)
        .map(|b| envelope(b, &[]).current_kek_id().to_string())
        .collect();
    let (ahead, behind) = (envelope(3, &[2, 1]), envelope(2, &[3, 1]));
    for e in [&ahead, &behind] {
        start(&store, e).await;
        vault(store.clone(), e.clone())
            .set("s", SecretString::new("v"), Default::default())
            .await
            .unwrap();
    }
    let report = completed_rekey(&store, &behind).await;
    assert_eq!(report.retired, vec![ids[0].clone()]);
    start(&store, &ahead).await;

    // After that rekey: K4 then K5 current in turn, with no rekey between. The rekey to K5 retires the
    // check's key (K2) and K4, ranked before K5; K3, noted before any rekey completed, stays unranked.
    let (k4, k5) = (envelope(4, &[2, 3]), envelope(5, &[4, 2, 3]));
    for e in [&k4, &k5] {
        start(&store, e).await;
        vault(store.clone(), e.clone())
            .set("s", SecretString::new("v"), Default::default())
            .await
            .unwrap();
    }
    let report = completed_rekey(&store, &k5).await;
    assert_eq!(report.retired, vec![ids[1].clone(), ids[3].clone()]);
}

/// A server's key is noted only once its start can no longer fail: a start refused after the key check (its
/// metrics address taken) leaves the new store's list empty; the next start, which succeeds, notes it.
#[tokio::test]
async fn a_refused_start_notes_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = |metrics_addr| crate::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        dev: true,
        metrics_addr,
        ..crate::Config::default()
    };
    let order = || async {
        let store = SqliteStore::open(&dir.path().join("vault.db")).unwrap();
        store.meta(crate::store::KEK_CURRENT_ORDER).await.unwrap()
    };
    let Err(err) = crate::Server::bind(config(Some(taken.local_addr().unwrap()))).await else {
        panic!("the start was not refused");
    };
    assert!(
        matches!(err, crate::server::StartError::Bind { .. }),
        "{err}"
    );
    assert_eq!(order().await, Some(Vec::new()));
    let server = crate::Server::bind(config(None)).await.unwrap();
    let id = server.vault().envelope().current_kek_id().to_owned();
    drop(server);
    assert_eq!(order().await, Some(id.into_bytes()));
}

/// A store used before the order was kept, after K1 -> K2 -> K3 with no rekey between: the first rekey (to
/// K3) puts the keys it found values under (K1, K2) in the unranked part, so a node from a stale configuration
/// that makes K2 current again later is not ranked as the newest key: its rekey, with K5 newer (another node
/// current), retires the key check's key alone — not K5, which would stop that node's writes for good.
#[tokio::test]
async fn a_key_with_values_before_the_first_rekey_stays_unranked() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = three_keys_current_in_turn(dir.path()).await;
    forget_the_order(&store).await;
    let k3 = envelope(3, &[2, 1]);
    start(&store, &k3).await;
    let report = completed_rekey(&store, &k3).await;
    assert_eq!(report.retired, vec![ids[0].clone()]);

    let (k5, stale) = (envelope(5, &[3]), envelope(2, &[5, 3]));
    let id5 = k5.current_kek_id().to_string();
    for e in [&k5, &stale] {
        start(&store, e).await;
        vault(store.clone(), e.clone())
            .set("s", SecretString::new("v"), Default::default())
            .await
            .unwrap();
    }
    let report = completed_rekey(&store, &stale).await;
    assert_eq!(report.retired, vec![ids[2].clone()]);
    assert!(
        !crate::store::kek_retired(store.as_ref())
            .await
            .unwrap()
            .contains(&id5)
    );
    crate::store::check_key(store.as_ref(), &envelope(5, &[2]))
        .await
        .unwrap();
}
