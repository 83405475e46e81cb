use super::*;
use crate::crypto::StaticKeyProvider;
use crate::store::sqlite::SqliteStore;
use std::collections::BTreeSet;

fn vault_in(dir: &std::path::Path, clock: Arc<dyn Clock>, purge_protection: bool) -> Vault {
    let store = Arc::new(SqliteStore::open(&dir.join("v.db")).unwrap());
    let envelope = Arc::new(Envelope::new(Arc::new(StaticKeyProvider::from_bytes(
        [7u8; 32],
    ))));
    let settings = VaultSettings {
        name: "v".into(),
        retention_days: 7,
        purge_protection,
    };
    Vault::new(store, envelope, clock, settings)
}

/// Versions are listed by version id, as Key Vault lists them; the ids this server makes grow with time, so a
/// secret's versions list oldest first, across pages; a skiptoken that is not a version id is refused.
#[tokio::test]
async fn versions_list_oldest_first_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    let mut made = Vec::new();
    for i in 0..7 {
        let s = v
            .set(
                "rotated",
                SecretString::new(format!("v{i}")),
                Default::default(),
            )
            .await
            .unwrap();
        made.push(s.row.version);
    }
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = v
            .list_versions("ROTATED", after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        listed.extend(page.items.into_iter().map(|r| r.version));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, made);
    // An upper-case cursor is the same cursor.
    let upper = made[4].to_ascii_uppercase();
    let rest = v.list_versions("rotated", Some(&upper), 25).await.unwrap();
    assert_eq!(
        rest.items
            .into_iter()
            .map(|r| r.version)
            .collect::<Vec<_>>(),
        made[5..]
    );
    for bad in ["12", "not-a-version", &"g".repeat(32)] {
        assert!(
            matches!(
                v.list_versions("rotated", Some(bad), 25).await,
                Err(VaultError::BadParameter(_))
            ),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn values_are_sealed_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    let s = v
        .set("n", SecretString::new("plain-sentinel"), Default::default())
        .await
        .unwrap();
    let row = v
        .store()
        .get_version("v", "n", Some(&s.row.version))
        .await
        .unwrap()
        .unwrap();
    assert!(!row.sealed.windows(14).any(|w| w == b"plain-sentinel"));
    assert_eq!(
        v.get("N", None).await.unwrap().value.unwrap().expose(),
        "plain-sentinel"
    );
}

#[tokio::test]
async fn concurrent_sets_of_one_name_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(vault_in(dir.path(), Arc::new(SystemClock), false));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            v.set(
                "hot",
                SecretString::new(format!("v{i}")),
                Default::default(),
            )
            .await
            .unwrap()
            .row
            .version
        }));
    }
    let mut versions = std::collections::BTreeSet::new();
    for t in tasks {
        assert!(versions.insert(t.await.unwrap()));
    }
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = v.list_versions("hot", after.as_deref(), 25).await.unwrap();
        listed += page.items.len();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(listed, 64);
}

#[tokio::test]
async fn errors_by_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let v = vault_in(dir.path(), clock.clone(), true);
    assert!(matches!(
        v.get("x", None).await,
        Err(VaultError::NotFound { .. })
    ));
    assert!(matches!(
        v.set("bad name", SecretString::new("x"), Default::default())
            .await,
        Err(VaultError::BadParameter(_))
    ));
    v.set("x", SecretString::new("1"), Default::default())
        .await
        .unwrap();
    let d = v.delete("x").await.unwrap();
    assert_eq!(d.deleted_on, 1_000_000);
    assert_eq!(d.scheduled_purge, 1_000_000 + 7 * 86_400);
    assert!(matches!(
        v.set("X", SecretString::new("2"), Default::default()).await,
        Err(VaultError::DeletedButRecoverable { .. })
    ));
    assert!(matches!(
        v.purge("x").await,
        Err(VaultError::PurgeProtected { .. })
    ));
    assert!(matches!(
        v.purge("y").await,
        Err(VaultError::DeletedNotFound { .. })
    ));
    clock.advance(7 * 86_400);
    assert_eq!(v.sweep().await.unwrap(), 1);
    assert!(matches!(
        v.get_deleted("x").await,
        Err(VaultError::DeletedNotFound { .. })
    ));
}

/// A deleted secret whose latest version is disabled is refused like a GET of that version (Key Vault answers
/// 403 `SecretDisabled`), while it is still listed among the deleted and can be recovered.
#[tokio::test]
async fn a_disabled_deleted_secret_is_listed_and_recovered_but_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    let off = SecretAttributesInput {
        enabled: Some(false),
        ..Default::default()
    };
    v.set("dark", SecretString::new("v"), off).await.unwrap();
    v.set("lit", SecretString::new("v"), Default::default())
        .await
        .unwrap();
    v.delete("dark").await.unwrap();
    v.delete("lit").await.unwrap();
    assert!(matches!(
        v.get_deleted("DARK").await,
        Err(VaultError::Disabled { .. })
    ));
    assert_eq!(v.get_deleted("lit").await.unwrap().latest.name, "lit");
    let listed: Vec<String> = v
        .list_deleted(None, 25, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| d.latest.name)
        .collect();
    assert_eq!(listed, ["dark", "lit"]);
    assert!(!v.recover("dark").await.unwrap().enabled);
}

/// A vault holding `names` (set concurrently, 64 at a time).
async fn vault_holding(dir: &std::path::Path, names: &[String]) -> Arc<Vault> {
    let v = Arc::new(vault_in(dir, Arc::new(SystemClock), false));
    let mut sets = tokio::task::JoinSet::new();
    for chunk in names.chunks(64) {
        let (v, chunk) = (v.clone(), chunk.to_vec());
        sets.spawn(async move {
            for name in chunk {
                v.set(&name, SecretString::new("v"), Default::default())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = sets.join_next().await {
        done.unwrap();
    }
    v
}

/// A whole filtered listing, `limit` names a page: the names listed, each page's size and whether it had a
/// `nextLink`, and the lengths of the cursors (none shows a hidden name: every one is sealed).
async fn walk_filtered(
    v: &Vault,
    limit: usize,
    filter: Visible<'_>,
) -> (Vec<String>, Vec<(usize, bool)>, BTreeSet<usize>) {
    let (mut seen, mut pages, mut lengths) = (Vec::new(), Vec::new(), BTreeSet::new());
    let mut after: Option<String> = None;
    loop {
        let page = v.list(after.as_deref(), limit, Some(filter)).await.unwrap();
        pages.push((page.items.len(), page.next.is_some()));
        seen.extend(page.items.iter().map(|r| r.name.clone()));
        let Some(next) = page.next else { break };
        lengths.insert(next.len());
        assert!(next.starts_with('_'), "{next}");
        assert!(
            !next.contains("hidden") && !next.contains("payroll"),
            "{next}"
        );
        after = Some(next);
    }
    (seen, pages, lengths)
}

/// The names a filtered caller may see in the listing tests: app-0 … app-4 (one name each), 60 one-name ranges
/// whose names do not exist (gone-000 …), and team-*.
fn listing_ranges() -> Vec<NameRange> {
    let mut ranges: Vec<NameRange> = (0..5)
        .map(|i| NameRange::Name(format!("app-{i}")))
        .collect();
    ranges.extend((0..60).map(|i| NameRange::Name(format!("gone-{i:03}"))));
    ranges.push(NameRange::Prefix("team-".into()));
    ranges
}

const LISTED: [&str; 8] = [
    "app-0", "app-1", "app-2", "app-3", "app-4", "team-a", "Team-B", "team-c",
];

/// A caller who may see only some names pages through exactly those, in order, and no cursor shows a hidden
/// name: cursors are sealed, other callers' plain cursors are refused, a cursor of one listing does not open
/// in another. Long runs of hidden names between the visible ranges are jumped over (no empty pages), and a
/// page that crosses more ranges than a scan may is cut short, not wrong.
#[tokio::test]
async fn filtered_listings_show_no_hidden_name() {
    let dir = tempfile::tempdir().unwrap();
    // Hidden names sort between and around the visible ones, with a run of more than twice the scan budget
    // between app-3 and app-4, and more hidden names than a page asks for just past each empty range.
    let mut names: Vec<String> = LISTED.map(String::from).to_vec();
    names.extend((0..5).map(|i| format!("app-{i}-hidden")));
    names.extend((0..2 * SCAN_BUDGET + 50).map(|i| format!("app-3-z{i:05}")));
    names.extend((0..60 * 30).map(|i| format!("gone-{:03}-h{:02}", i / 30, i % 30)));
    names.extend(["teams", "zz-payroll"].map(String::from));
    let v = vault_holding(dir.path(), &names).await;
    let ranges = listing_ranges();
    let filter: Visible = &ranges;
    // One name per page: no empty page, though 2,000 hidden names sit between app-3 and app-4.
    let (seen, pages, lengths) = walk_filtered(&v, 1, filter).await;
    assert_eq!(seen, LISTED);
    assert_eq!(pages.iter().map(|p| p.0).collect::<Vec<_>>(), [1; 8]);
    // Every sealed cursor has the same length, whatever the length of the name it holds.
    assert_eq!(lengths.len(), 1, "{lengths:?}");
    // Pages of 25: the 60 empty ranges take more store calls than one page may make, so a page comes back
    // short with a cursor, and the walk still ends with every visible name once.
    let (seen, pages, _) = walk_filtered(&v, 25, filter).await;
    assert_eq!(seen, LISTED);
    assert!(pages.len() > 1 && pages[0].0 < 25, "{pages:?}");

    // A caller who sees everything gets plain cursors; the restricted caller cannot use one.
    let all = v.list(None, 2, None).await.unwrap();
    let plain = all.next.unwrap();
    assert_eq!(plain, "app-0-hidden");
    assert!(matches!(
        v.list(Some(&plain), 1, Some(filter)).await,
        Err(VaultError::BadParameter(_))
    ));
    // A sealed cursor opens only in its own listing, for a caller with the same view (however its ranges are
    // listed), and not once altered: not for a caller who sees everything, nor for one who sees other names
    // (it would learn where a name it may not see sorts among its own).
    let sealed = v.list(None, 1, Some(filter)).await.unwrap().next.unwrap();
    let mut same: Vec<NameRange> = ranges.iter().rev().cloned().collect();
    same.push(NameRange::Name("APP-0".into()));
    assert_eq!(
        v.list(Some(&sealed), 1, Some(&same)).await.unwrap().items[0].name,
        "app-1"
    );
    let other = [NameRange::Prefix("team-".into())];
    for view in [None, Some(&other[..])] {
        assert!(matches!(
            v.list(Some(&sealed), 1, view).await,
            Err(VaultError::BadParameter(_))
        ));
    }
    assert!(matches!(
        v.list_deleted(Some(&sealed), 1, Some(filter)).await,
        Err(VaultError::BadParameter(_))
    ));
    let mut bent = sealed.clone().into_bytes();
    let at = bent.len() - 3;
    bent[at] = if bent[at] == b'A' { b'B' } else { b'A' };
    let bent = String::from_utf8(bent).unwrap();
    assert!(matches!(
        v.list(Some(&bent), 1, Some(filter)).await,
        Err(VaultError::BadParameter(_))
    ));
}

/// A server started without purge protection does not purge once another server over the same store has
/// turned it on for this vault (a rolling change on PostgreSQL): the record in the store is read at each purge.
#[tokio::test]
async fn purge_protection_turned_on_elsewhere_stops_purges_here() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    for name in ["before", "after"] {
        v.set(name, SecretString::new("v"), Default::default())
            .await
            .unwrap();
        v.delete(name).await.unwrap();
    }
    v.purge("before").await.unwrap();
    assert!(v.recovery_level().is_purgeable());
    // Another node over this store starts with purge protection.
    crate::store::check_purge_protection(v.store().as_ref(), "v", true)
        .await
        .unwrap();
    assert!(matches!(
        v.purge("after").await,
        Err(VaultError::PurgeProtected { .. })
    ));
    // The refused purge noted it: this node reports the level the vault now has.
    assert_eq!(
        v.recovery_level(),
        DeletionRecoveryLevel::CustomizedRecoverable
    );
    assert!(v.recover("after").await.is_ok());

    // Without a purge, the server's periodic refresh notices it.
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    assert!(!v.refresh_purge_protection().await.unwrap());
    crate::store::check_purge_protection(v.store().as_ref(), "v", true)
        .await
        .unwrap();
    assert!(v.recovery_level().is_purgeable(), "not read yet");
    assert!(v.refresh_purge_protection().await.unwrap());
    assert_eq!(
        v.recovery_level(),
        DeletionRecoveryLevel::CustomizedRecoverable
    );
}

/// What a filtered caller learns from its pages — their sizes, which have a `nextLink`, what they list — does
/// not depend on hidden names: a vault with hidden names right past every range (and before, and between)
/// pages exactly as one holding only the visible names, at every page size. (Scans used to read a page's
/// worth past a range's end, and hidden rows there counted against the page's budget.)
#[tokio::test]
async fn filtered_pages_do_not_depend_on_hidden_names() {
    let (bare, crowded) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let listed = LISTED.map(String::from).to_vec();
    let mut names = listed.clone();
    for i in 0..60 {
        names.extend((0..30).map(|h| format!("gone-{i:03}-h{h:02}")));
        names.push(format!("gone-{i:03}0"));
    }
    for i in 0..5 {
        names.extend((0..30).map(|h| format!("app-{i}-hidden{h:02}")));
    }
    names.extend(["app", "app-", "team", "teams", "team0", "zz-payroll"].map(String::from));
    let bare = vault_holding(bare.path(), &listed).await;
    let crowded = vault_holding(crowded.path(), &names).await;
    let ranges = listing_ranges();
    for limit in [1, 2, 7, 25] {
        let (seen, pages, _) = walk_filtered(&crowded, limit, &ranges).await;
        assert_eq!(seen, LISTED, "page size {limit}");
        assert_eq!(
            pages,
            walk_filtered(&bare, limit, &ranges).await.1,
            "page size {limit}"
        );
    }
    // Deleted listings too.
    for v in [&bare, &crowded] {
        for name in ["app-1", "app-1-hidden00", "gone-003-h00", "team-a", "teams"] {
            if v.get(name, None).await.is_ok() {
                v.delete(name).await.unwrap();
            }
        }
    }
    let deleted = |v: Arc<Vault>| async move {
        let (mut pages, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = v
                .list_deleted(after.as_deref(), 1, Some(&listing_ranges()))
                .await
                .unwrap();
            pages.push(
                page.items
                    .iter()
                    .map(|r| r.latest.name.clone())
                    .collect::<Vec<_>>(),
            );
            let Some(next) = page.next else { break };
            after = Some(next);
        }
        pages
    };
    let seen = deleted(crowded).await;
    assert_eq!(seen, [vec!["app-1"], vec!["team-a"]]);
    assert_eq!(seen, deleted(bare).await);
}

/// The stretches a filtered scan reads: one per range, in key order, overlapping ranges made one; each holds
/// exactly the keys of its ranges.
#[test]
fn stretches_cover_the_ranges() {
    let ranges = [
        NameRange::Prefix("b-".into()),
        NameRange::Name("a0".into()),
        NameRange::Name("c".into()),
        NameRange::Name("b-x".into()),
        NameRange::Prefix("b-y".into()),
        NameRange::Name("b".into()),
    ];
    let stretch = |first: &str, last: &str| Stretch {
        first: first.into(),
        last: last.into(),
    };
    assert_eq!(
        Stretch::all(&ranges),
        [
            stretch("a0", "a0"),
            stretch("b", "b"),
            stretch("b-", "b-\x7f"),
            stretch("c", "c")
        ]
    );
    let prefix = &Stretch::all(&[NameRange::Prefix("b-".into())])[0];
    for key in ["b-", "b-0", "b-zzz", "b--"] {
        assert!(prefix.first.as_str() <= key && key <= prefix.last.as_str());
    }
    for key in ["b", "b,zzz", "b0", "c"] {
        assert!(!(prefix.first.as_str() <= key && key <= prefix.last.as_str()));
    }
    assert!(prefix.goes_past(None) && prefix.goes_past(Some("b-zzz")));
    assert!(!prefix.goes_past(Some("b-\x7f")) && !prefix.goes_past(Some("b0")));
    // A cursor holds a name key or a stretch's end, nothing else.
    assert!(is_scan_position("b-x") && is_scan_position("b-\x7f"));
    assert!(
        !is_scan_position("b-\x7f\x7f") && !is_scan_position("\x7f") && !is_scan_position("b x")
    );
    // The bound sorts after every name before the range and before the range's first name.
    let bound = just_before("b-").unwrap();
    assert!("b" < bound.as_str() && "b,zzz" < bound.as_str() && bound.as_str() < "b-");
    assert_eq!(just_before(""), None);
    assert!(NameRange::Prefix("b-".into()).covers("B-Q"));
    assert!(!NameRange::Prefix("b-".into()).covers("b"));
    assert!(
        NameRange::Name("a0".into()).covers("A0") && !NameRange::Name("a0".into()).covers("a00")
    );
}

/// The store's record of how far version ids reached covers every stored id: a set whose id is ahead of the
/// record moves it to that id (not a reserve past it: ids pinned ahead of a clock that is behind do not run
/// it away), one behind it writes nothing, and a set near the clock reserves 2 s past the clock. A restore
/// refused because its name is taken does not move it.
#[tokio::test]
async fn the_version_clock_record_covers_every_stored_id() {
    use crate::store::VERSION_CLOCK;
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    let record = async |v: &Vault| {
        v.store()
            .meta(VERSION_CLOCK)
            .await
            .unwrap()
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    let id_at = |ms: u64| format!("{ms:012x}7abc9def0123456789ab");
    let now = version_id::now_ms();
    let set_at = async |v: &Vault, name: &str, ms: u64| {
        v.set_as(name, id_at(ms), SecretString::new("v"), Default::default())
            .await
            .unwrap();
    };
    // Near the clock: 2 s past it.
    set_at(&v, "near", now).await;
    let reserved = record(&v).await.unwrap();
    assert!(
        reserved >= now + 2_000 && reserved < now + 60_000,
        "{reserved}"
    );
    // An hour ahead: the record is the id's time itself.
    let ahead = now + 3_600_000;
    set_at(&v, "ahead", ahead).await;
    assert_eq!(record(&v).await, Some(ahead));
    set_at(&v, "ahead", ahead + 1).await;
    assert_eq!(record(&v).await, Some(ahead + 1));
    // Behind the record: nothing written.
    set_at(&v, "near", now + 1).await;
    assert_eq!(record(&v).await, Some(ahead + 1));

    // A backup of the ids an hour ahead, restored over a vault where the name is taken: refused, and that
    // vault's record is as it was.
    let blob = v.backup("ahead").await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let w = vault_in(other.path(), Arc::new(SystemClock), false);
    w.set("ahead", SecretString::new("mine"), Default::default())
        .await
        .unwrap();
    let before = record(&w).await;
    assert!(before.unwrap() < ahead);
    assert!(matches!(
        w.restore(&blob).await,
        Err(VaultError::RestoreConflict { .. })
    ));
    assert_eq!(record(&w).await, before);
}

/// An id past the last millisecond a record may hold (about 50 days short of the year 10889) is refused with
/// 503 and not stored: the record could not cover it (a57-4: it was stored above the record).
#[tokio::test]
async fn an_id_the_record_cannot_cover_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    let last: u64 = (1 << 48) - 1 - (1 << 32);
    let id = format!("{:012x}7abc9def0123456789ab", last + 10);
    let refused = v
        .set_as("far", id, SecretString::new("v"), Default::default())
        .await;
    assert!(
        matches!(refused, Err(VaultError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(matches!(
        v.get("far", None).await,
        Err(VaultError::NotFound { .. })
    ));
    // At the last millisecond itself: stored.
    let id = format!("{last:012x}7abc9def0123456789ab");
    v.set_as("far", id, SecretString::new("v"), Default::default())
        .await
        .unwrap();
}

/// Over PostgreSQL, while the record cannot be reached (`kv_meta` locked by another session: each try fails
/// after the store's lock timeout, 3 s), concurrent sets that need a reservation are all answered (503) after
/// about one timeout: those that waited while a reservation failed share its failure instead of each trying
/// again in turn (a57-1: 5 sets answered after 3, 6, 9, 12 and 15 s). Once the lock goes, sets succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sets_waiting_for_an_unreachable_record_share_one_failure() {
    let Some(pg) = crate::store::pgtest::start_or_skip("clock_queue") else {
        return;
    };
    let store = Arc::new(
        crate::store::postgres::PostgresStore::open(&pg.url())
            .await
            .unwrap(),
    );
    let envelope = Arc::new(Envelope::new(Arc::new(StaticKeyProvider::from_bytes(
        [7u8; 32],
    ))));
    let settings = VaultSettings {
        name: "v".into(),
        retention_days: 7,
        purge_protection: false,
    };
    let v = Arc::new(Vault::new(store, envelope, Arc::new(SystemClock), settings));
    v.set("warm", SecretString::new("x"), Default::default())
        .await
        .unwrap();
    // Past the reserve: the next sets need a reservation.
    tokio::time::sleep(crate::store::VERSION_CLOCK_RESERVE + std::time::Duration::from_millis(200))
        .await;
    let hold = pg
        .begin_holding("postgres", "LOCK TABLE kv_meta IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let v = v.clone();
            tokio::spawn(async move {
                let r = v
                    .set(&format!("s{i}"), SecretString::new("x"), Default::default())
                    .await;
                (start.elapsed(), r)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    drop(hold);
    for (after, r) in &answers {
        assert!(matches!(r, Err(VaultError::Unavailable(_))), "{r:?}");
        assert!(
            *after < std::time::Duration::from_secs(7),
            "a set answered after {after:?} (one lock timeout is 3 s)"
        );
    }
    v.set("after", SecretString::new("x"), Default::default())
        .await
        .unwrap();
}

/// A backup holds at most `MAX_BACKUP_VERSIONS` versions (as Key Vault's): one more is refused with a 400 that
/// says so, while the secret is untouched; at the limit the backup is made and restores every version.
#[tokio::test]
async fn a_backup_holds_at_most_the_version_limit() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    for i in 0..rules::MAX_BACKUP_VERSIONS {
        v.set(
            "many",
            SecretString::new(format!("v{i}")),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let blob = v.backup("many").await.unwrap();
    v.set("many", SecretString::new("one more"), Default::default())
        .await
        .unwrap();
    let err = v.backup("many").await.unwrap_err();
    assert!(
        matches!(&err, VaultError::BadParameter(m)
            if m.contains(&format!("has more than {} versions", rules::MAX_BACKUP_VERSIONS))
                && m.contains(&format!("at most {}", rules::MAX_BACKUP_VERSIONS))),
        "{err:?}"
    );

    // The blob made at the limit restores all of its versions under a fresh vault.
    let other = tempfile::tempdir().unwrap();
    let fresh = vault_in(other.path(), Arc::new(SystemClock), false);
    fresh.restore(&blob).await.unwrap();
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let page = fresh
            .list_versions("many", after.as_deref(), 25)
            .await
            .unwrap();
        count += page.items.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(count, rules::MAX_BACKUP_VERSIONS);
}

/// A purge overwrites what it removes (SQLite's `secure_delete`): after a secret's versions are purged and the
/// store is closed (its log checkpointed into the database file), the database file holds none of their sealed
/// bytes, which it did hold before the purge; another secret's stay.
#[tokio::test]
async fn a_purge_leaves_no_sealed_bytes_in_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let envelope = Arc::new(Envelope::new(Arc::new(StaticKeyProvider::from_bytes(
        [7u8; 32],
    ))));
    let settings = || VaultSettings {
        name: "v".into(),
        retention_days: 7,
        purge_protection: false,
    };
    let sealed_of = |page: &[crate::store::SealedValue], name: &str| -> Vec<Vec<u8>> {
        page.iter()
            .filter(|s| s.name_key == name)
            .map(|s| s.sealed.clone())
            .collect()
    };
    let file_holds = |needle: &[u8]| {
        let bytes = std::fs::read(&path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    };

    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let v = Vault::new(
        store.clone(),
        envelope.clone(),
        Arc::new(SystemClock),
        settings(),
    );
    for i in 0..3 {
        v.set(
            "gone",
            SecretString::new(format!("{i}-{}", "x".repeat(600))),
            Default::default(),
        )
        .await
        .unwrap();
    }
    v.set(
        "kept",
        SecretString::new("y".repeat(600)),
        Default::default(),
    )
    .await
    .unwrap();
    let page = store.sealed_page(None, 100).await.unwrap();
    let (gone, kept) = (sealed_of(&page, "gone"), sealed_of(&page, "kept"));
    assert_eq!((gone.len(), kept.len()), (3, 1));
    store.close().await;
    drop(v);
    assert!(gone.iter().all(|s| file_holds(s)), "written to the file");

    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let v = Vault::new(store.clone(), envelope, Arc::new(SystemClock), settings());
    v.delete("gone").await.unwrap();
    v.purge("gone").await.unwrap();
    store.close().await;
    drop(v);
    assert!(
        !path.with_extension("db-wal").exists()
            || std::fs::metadata(path.with_extension("db-wal"))
                .unwrap()
                .len()
                == 0,
        "the log was checkpointed and removed at close"
    );
    for s in &gone {
        assert!(
            !file_holds(s),
            "a purged version's sealed bytes remain in the file"
        );
    }
    assert!(file_holds(&kept[0]), "another secret's stay");
}

/// A writer of the store (who holds no key) relabels or moves one secret's row under another name: the value
/// is opened bound to the name that was asked for, so the row is refused, never served as the other secret —
/// by the latest pointer, by version id, or in a backup (the tampering audit's finding 1).
#[tokio::test]
async fn a_row_moved_under_another_name_is_not_served_as_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = || vault_in(dir.path(), Arc::new(SystemClock), false);
    let tamper = |sql: &str| {
        let db = rusqlite::Connection::open(dir.path().join("v.db")).unwrap();
        db.execute_batch(sql).unwrap();
    };
    let served =
        |r: VaultResult<Secret>| r.ok().and_then(|s| s.value).map(|v| v.expose().to_owned());
    let alpha_version = {
        let v = open();
        v.set("beta", SecretString::new("beta-value"), Default::default())
            .await
            .unwrap();
        v.set(
            "alpha",
            SecretString::new("ALPHA-VALUE"),
            Default::default(),
        )
        .await
        .unwrap()
        .row
        .version
    };

    // 1. beta's latest pointer aimed at alpha's row, labelled alpha.
    tamper(
        "UPDATE names SET display_name = 'alpha',
             latest_seq = (SELECT latest_seq FROM names WHERE name_key = 'alpha')
         WHERE name_key = 'beta'",
    );
    {
        let v = open();
        let got = served(v.get("beta", None).await);
        assert_ne!(got.as_deref(), Some("ALPHA-VALUE"));
    }

    // 2. alpha's row copied under beta (same version id and sealed bytes), labelled alpha: what a PostgreSQL
    // writer can do too.
    tamper(
        "INSERT INTO versions (vault, name_key, version, content_type, tags, enabled, nbf, exp, created,
             updated, sealed)
         SELECT vault, 'beta', version, content_type, tags, enabled, nbf, exp, created, updated, sealed
         FROM versions WHERE name_key = 'alpha';
         UPDATE names SET display_name = 'alpha', latest_seq = (SELECT max(seq) FROM versions)
         WHERE name_key = 'beta';",
    );
    {
        let v = open();
        let latest = v.get("beta", None).await;
        assert!(matches!(latest, Err(VaultError::Internal(_))), "{latest:?}");
        let by_version = v.get("beta", Some(&alpha_version)).await;
        assert!(
            matches!(by_version, Err(VaultError::Internal(_))),
            "{by_version:?}"
        );
        let backup = v.backup("beta").await;
        assert!(matches!(backup, Err(VaultError::Internal(_))), "{backup:?}");
    }

    // Labelled beta instead: the value is bound to alpha, so it does not open under beta either.
    tamper("UPDATE names SET display_name = 'beta' WHERE name_key = 'beta'");
    let v = open();
    let relabelled = v.get("beta", None).await;
    assert!(relabelled.is_err(), "{:?}", served(relabelled));
    // alpha itself is untouched.
    assert_eq!(
        served(v.get("alpha", None).await).as_deref(),
        Some("ALPHA-VALUE")
    );
}

/// A blob that passes the seal's check but holds what no backup of this server holds (made with the key
/// outside it) is malformed, as any other (400, nothing restored): a version id twice (it reached the store
/// as a 500), more versions than a backup takes, a value over a set's limit, an invalid name.
#[tokio::test]
async fn a_sealed_blob_outside_the_rules_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    for i in 0..2 {
        v.set(
            "made",
            SecretString::new(format!("v{i}")),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let blob = v.backup("made").await.unwrap();
    let payload: serde_json::Value =
        serde_json::from_slice(&v.envelope().open_backup(&blob).unwrap()).unwrap();
    let resealed = |p: &serde_json::Value| {
        v.envelope()
            .seal_backup(&serde_json::to_vec(p).unwrap())
            .unwrap()
    };
    let other = tempfile::tempdir().unwrap();
    let fresh = vault_in(other.path(), Arc::new(SystemClock), false);
    let mut twice = payload.clone();
    twice["versions"][1]["version"] = twice["versions"][0]["version"].clone();
    let mut many = payload.clone();
    many["versions"] = (0..=rules::MAX_BACKUP_VERSIONS)
        .map(|i| {
            let mut one = payload["versions"][0].clone();
            one["version"] = format!("{i:032x}").into();
            one
        })
        .collect();
    let mut large = payload.clone();
    large["versions"][0]["value"] = "x".repeat(rules::MAX_VALUE_BYTES + 1).into();
    let mut named = payload.clone();
    for i in 0..2 {
        named["versions"][i]["name"] = "bad_name!".into();
    }
    for (what, p) in [
        ("an id twice", twice),
        ("too many", many),
        ("large", large),
        ("a bad name", named),
    ] {
        let err = fresh.restore(&resealed(&p)).await.unwrap_err();
        assert!(
            matches!(err, VaultError::MalformedBackup),
            "{what}: {err:?}"
        );
        assert!(matches!(
            fresh.get("made", None).await,
            Err(VaultError::NotFound { .. })
        ));
    }
    // The blob as made restores.
    fresh.restore(&resealed(&payload)).await.unwrap();
    let got = fresh.get("made", None).await.unwrap();
    assert_eq!(got.value.unwrap().expose(), "v1");
}

/// A blob's size does not tell its value's length: backups of one-version secrets with values of 1 and 3,000
/// bytes (and names of different lengths) are the same size, and both restore exactly.
#[tokio::test]
async fn backups_are_padded() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_in(dir.path(), Arc::new(SystemClock), false);
    let long = "b".repeat(3000);
    let mut sizes = Vec::new();
    for (name, value) in [("s", "a"), ("a-longer-name", long.as_str())] {
        v.set(name, SecretString::new(value), Default::default())
            .await
            .unwrap();
        let blob = v.backup(name).await.unwrap();
        sizes.push(blob.len());
        let other = tempfile::tempdir().unwrap();
        let fresh = vault_in(other.path(), Arc::new(SystemClock), false);
        fresh.restore(&blob).await.unwrap();
        let got = fresh.get(name, None).await.unwrap();
        assert_eq!(got.value.unwrap().expose(), value);
    }
    assert_eq!(sizes[0], sizes[1], "{sizes:?}");
}
