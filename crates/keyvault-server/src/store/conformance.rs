//! The behavioural contract of a [`SecretStore`], as one async function every backend's tests call:
//! `conformance::run_all(Arc::new(MyStore::open(..))).await`.
//!
//! Every check uses vaults named after a fresh random run id, so the suite can run against a database that
//! already holds data. It assumes no *other* deleted names are due for purge at the tiny timestamps
//! (around 1000) it uses for `purge_expired`. Panics (assertions) on the first deviation.

use std::collections::BTreeSet;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use super::{
    DeletedRow, MetaSwap, PAST_EVERY_KEY, SealedChange, SealedKey, SealedValue, SecretStore,
    StoreError, Tags, VersionPatch, VersionRow, name_key,
};

/// A purge date far in the future: never due in this suite.
const FAR: i64 = 4_000_000_000_000;

/// Run every check against `store`.
pub async fn run_all(store: Arc<dyn SecretStore>) {
    let run = random_hex(6);
    let s = &*store;
    health(s).await;
    put_and_get(s, &format!("put-{run}")).await;
    case_insensitive_names(s, &format!("case-{run}")).await;
    update_changes_only_given_fields(s, &format!("update-{run}")).await;
    list_latest_paging(s, &format!("list-{run}")).await;
    list_versions_paging(s, &format!("versions-{run}")).await;
    soft_delete_and_recover(s, &format!("delete-{run}")).await;
    list_deleted_paging(s, &format!("deleted-{run}")).await;
    purge(s, &format!("purge-{run}")).await;
    purge_expired(store.clone(), &run).await;
    restore(s, &format!("restore-{run}")).await;
    vaults_are_separate(s, &format!("va-{run}"), &format!("vb-{run}")).await;
    concurrent_puts(store.clone(), &format!("conc-{run}")).await;
    meta_keeps_the_first_value(s, &format!("meta-{run}")).await;
    any_sealed_finds_a_stored_value(s).await;
    meta_replace_is_compare_and_swap(s, &format!("metacas-{run}")).await;
    meta_swap_is_all_or_nothing(s, &format!("metaswap-{run}")).await;
    sealed_pages_and_replace(s, &format!("reseal-{run}")).await;
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    SystemRandom::new().fill(&mut b).expect("system RNG");
    hex::encode(b)
}

/// A fresh version id: 32 lowercase hex characters, random (so ids do not sort in creation order).
fn new_version() -> String {
    random_hex(16)
}

/// A row with distinctive, non-UTF-8 "sealed" bytes and all attributes set from `n`.
fn row(name: &str, n: i64) -> VersionRow {
    let mut sealed = vec![0u8, 0xff, 0x80, 0x01];
    sealed.extend_from_slice(format!("{name}:{n}").as_bytes());
    VersionRow {
        name: name.to_string(),
        version: new_version(),
        sealed,
        content_type: Some(format!("type/{n}")),
        tags: Some(Tags::from([
            ("n".to_string(), n.to_string()),
            ("k".to_string(), "v".to_string()),
        ])),
        enabled: n % 3 != 0,
        nbf: Some(1_000 + n),
        exp: Some(2_000_000_000 + n),
        created: 1_700_000_000 + n,
        updated: 1_700_000_000 + n,
    }
}

/// A row with every optional attribute absent.
fn bare_row(name: &str, n: i64) -> VersionRow {
    VersionRow {
        content_type: None,
        tags: None,
        nbf: None,
        exp: None,
        enabled: true,
        ..row(name, n)
    }
}

/// `row` as a store returns it: with the name's current display casing.
fn shown(row: &VersionRow, display: &str) -> VersionRow {
    VersionRow {
        name: display.to_string(),
        ..row.clone()
    }
}

async fn put(s: &dyn SecretStore, vault: &str, row: &VersionRow) {
    s.put_version(vault, row.clone())
        .await
        .expect("put_version");
}

async fn latest(s: &dyn SecretStore, vault: &str, name: &str) -> Option<VersionRow> {
    s.get_version(vault, name, None).await.expect("get_version")
}

/// `r` as listings return it: without its sealed value (listings never carry values).
fn listed(r: &VersionRow) -> VersionRow {
    VersionRow {
        sealed: Vec::new(),
        ..r.clone()
    }
}

fn listed_all(rows: &[VersionRow]) -> Vec<VersionRow> {
    rows.iter().map(listed).collect()
}

fn assert_no_values(rows: &[VersionRow], listing: &str) {
    assert!(
        rows.iter().all(|r| r.sealed.is_empty()),
        "{listing} returned sealed values"
    );
}

async fn all_live(s: &dyn SecretStore, vault: &str, page: usize) -> Vec<VersionRow> {
    let mut out: Vec<VersionRow> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = s
            .list_latest(vault, after.as_deref(), page)
            .await
            .expect("list_latest");
        assert!(
            rows.len() <= page,
            "list_latest returned more than the limit"
        );
        assert_no_values(&rows, "list_latest");
        let Some(last) = rows.last() else { break };
        after = Some(name_key(&last.name));
        out.extend(rows);
    }
    out
}

async fn all_deleted(s: &dyn SecretStore, vault: &str, page: usize) -> Vec<DeletedRow> {
    let mut out: Vec<DeletedRow> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = s
            .list_deleted(vault, after.as_deref(), page)
            .await
            .expect("list_deleted");
        assert!(
            rows.len() <= page,
            "list_deleted returned more than the limit"
        );
        let latest: Vec<VersionRow> = rows.iter().map(|d| d.latest.clone()).collect();
        assert_no_values(&latest, "list_deleted");
        let Some(last) = rows.last() else { break };
        after = Some(name_key(&last.latest.name));
        out.extend(rows);
    }
    out
}

async fn all_version_pages(
    s: &dyn SecretStore,
    vault: &str,
    name: &str,
    page: usize,
) -> Vec<VersionRow> {
    let mut out: Vec<VersionRow> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = s
            .list_versions(vault, name, after.as_deref(), page)
            .await
            .expect("list_versions");
        assert!(
            rows.len() <= page,
            "list_versions returned more than the limit"
        );
        assert_no_values(&rows, "list_versions");
        let Some(last) = rows.last() else { break };
        after = Some(last.version.clone());
        out.extend(rows);
    }
    out
}

/// `rows` as `list_versions` orders them: by version id.
fn by_version(rows: &[VersionRow]) -> Vec<VersionRow> {
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| a.version.cmp(&b.version));
    sorted
}

// ---------------------------------------------------------------------------------------------------------
// Checks

async fn health(s: &dyn SecretStore) {
    s.health().await.expect("health");
}

async fn put_and_get(s: &dyn SecretStore, v: &str) {
    assert_eq!(latest(s, v, "alpha").await, None);
    assert_eq!(
        s.get_version(v, "alpha", Some(&new_version()))
            .await
            .unwrap(),
        None
    );
    assert!(
        s.all_versions(v, "alpha", usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.list_versions(v, "alpha", None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let v1 = row("alpha", 1);
    put(s, v, &v1).await;
    assert_eq!(
        latest(s, v, "alpha").await.as_ref(),
        Some(&v1),
        "latest after the first put"
    );
    assert_eq!(
        s.get_version(v, "alpha", Some(&v1.version))
            .await
            .unwrap()
            .as_ref(),
        Some(&v1)
    );

    let v2 = bare_row("alpha", 2);
    put(s, v, &v2).await;
    assert_eq!(
        latest(s, v, "alpha").await.as_ref(),
        Some(&v2),
        "latest follows the last put"
    );
    assert_eq!(
        s.get_version(v, "alpha", Some(&v1.version))
            .await
            .unwrap()
            .as_ref(),
        Some(&v1)
    );
    assert_eq!(
        s.get_version(v, "alpha", Some(&v2.version))
            .await
            .unwrap()
            .as_ref(),
        Some(&v2)
    );
    assert_eq!(
        s.get_version(v, "alpha", Some(&new_version()))
            .await
            .unwrap(),
        None,
        "unknown version"
    );
    assert_eq!(
        s.get_version(v, "beta", Some(&v1.version)).await.unwrap(),
        None,
        "a version of another name"
    );

    // A repeated version id is refused and changes nothing.
    let dup = VersionRow {
        sealed: b"other".to_vec(),
        ..v1.clone()
    };
    assert!(
        matches!(s.put_version(v, dup).await, Err(StoreError::Exists)),
        "a repeated version id"
    );
    assert_eq!(latest(s, v, "alpha").await.as_ref(), Some(&v2));
    assert_eq!(
        s.all_versions(v, "alpha", usize::MAX).await.unwrap(),
        vec![v1.clone(), v2.clone()]
    );

    // Attribute fidelity: empty tags stay empty (not absent), every byte value and a large value survive.
    let mut v3 = row("alpha", 3);
    v3.tags = Some(Tags::new());
    v3.sealed = (0..=255u8).cycle().take(40_000).collect();
    v3.nbf = Some(i64::MIN + 1);
    v3.exp = Some(i64::MAX);
    put(s, v, &v3).await;
    assert_eq!(latest(s, v, "alpha").await.as_ref(), Some(&v3));

    // The row a store returns has the same Debug as any row: no sealed bytes in it.
    let debug = format!("{v3:?}");
    assert!(
        debug.contains("sealed_len") && !debug.contains("255, 0, 1"),
        "{debug}"
    );
}

async fn case_insensitive_names(s: &dyn SecretStore, v: &str) {
    let v1 = row("MySecret", 1);
    put(s, v, &v1).await;
    for spelling in ["mysecret", "MYSECRET", "MySecret", "mYsEcReT"] {
        assert_eq!(
            latest(s, v, spelling).await.as_ref(),
            Some(&v1),
            "get as {spelling}"
        );
    }
    // A write with another casing adds a version to the same name, and its casing becomes the display name.
    let v2 = row("MYSECRET", 2);
    put(s, v, &v2).await;
    assert_eq!(latest(s, v, "mysecret").await.as_ref(), Some(&v2));
    let old = s
        .get_version(v, "MySecret", Some(&v1.version))
        .await
        .unwrap()
        .expect("the first version");
    assert_eq!(
        old,
        shown(&v1, "MYSECRET"),
        "every version shows the latest display casing"
    );
    assert_eq!(
        all_live(s, v, 10).await,
        vec![listed(&v2)],
        "one name, listed as its latest version"
    );
    let versions = s.all_versions(v, "mysecret", usize::MAX).await.unwrap();
    assert_eq!(versions, vec![shown(&v1, "MYSECRET"), v2.clone()]);
    assert_eq!(
        s.list_versions(v, "MySeCrEt", None, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    // Deleting, recovering and purging are case-insensitive too.
    assert!(
        s.soft_delete(v, "mysecret", 10, FAR)
            .await
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        s.put_version(v, row("MySECRET", 3)).await,
        Err(StoreError::Deleted)
    ));
    assert_eq!(
        s.get_deleted(v, "MYSECRET")
            .await
            .unwrap()
            .map(|d| d.latest),
        Some(v2.clone())
    );
    assert_eq!(s.recover(v, "MySecret").await.unwrap(), Some(v2.clone()));
}

async fn update_changes_only_given_fields(s: &dyn SecretStore, v: &str) {
    // Update times after the rows' `created` (an update never sets `updated` before it).
    const T: i64 = 1_800_000_000;
    let v1 = row("upd", 1);
    let v2 = row("upd", 2);
    put(s, v, &v1).await;
    put(s, v, &v2).await;

    // Nothing but `updated` given: only `updated` changes.
    let got = s
        .update_version(
            v,
            "upd",
            None,
            VersionPatch {
                updated: T + 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut want = VersionRow {
        updated: T + 5,
        ..v2.clone()
    };
    assert_eq!(got.as_ref(), Some(&want));

    // Each field on its own.
    let patch = VersionPatch {
        enabled: Some(!want.enabled),
        updated: T + 6,
        ..Default::default()
    };
    want.enabled = !want.enabled;
    want.updated = T + 6;
    assert_eq!(
        s.update_version(v, "UPD", None, patch)
            .await
            .unwrap()
            .as_ref(),
        Some(&want)
    );
    let patch = VersionPatch {
        content_type: Some("text/x".into()),
        updated: T + 7,
        ..Default::default()
    };
    want.content_type = Some("text/x".into());
    want.updated = T + 7;
    assert_eq!(
        s.update_version(v, "upd", None, patch)
            .await
            .unwrap()
            .as_ref(),
        Some(&want)
    );
    let tags = Tags::from([("new".to_string(), "tag".to_string())]);
    let patch = VersionPatch {
        tags: Some(tags.clone()),
        updated: T + 8,
        ..Default::default()
    };
    want.tags = Some(tags);
    want.updated = T + 8;
    assert_eq!(
        s.update_version(v, "upd", None, patch)
            .await
            .unwrap()
            .as_ref(),
        Some(&want)
    );
    let patch = VersionPatch {
        tags: Some(Tags::new()),
        nbf: Some(11),
        exp: Some(12),
        updated: T + 9,
        ..Default::default()
    };
    want.tags = Some(Tags::new());
    want.nbf = Some(11);
    want.exp = Some(12);
    want.updated = T + 9;
    assert_eq!(
        s.update_version(v, "upd", None, patch)
            .await
            .unwrap()
            .as_ref(),
        Some(&want)
    );
    assert_eq!(
        latest(s, v, "upd").await.as_ref(),
        Some(&want),
        "the update is stored"
    );
    // A clock stepped back: the change is made, `updated` does not go back (nor below `created`).
    let patch = VersionPatch {
        content_type: Some("text/after-a-step-back".into()),
        updated: 3,
        ..Default::default()
    };
    want.content_type = Some("text/after-a-step-back".into());
    assert_eq!(want.updated, T + 9);
    assert_eq!(
        s.update_version(v, "upd", None, patch)
            .await
            .unwrap()
            .as_ref(),
        Some(&want)
    );
    assert_eq!(latest(s, v, "upd").await.as_ref(), Some(&want));

    // An older version by id; the latest stays the latest and untouched.
    let patch = VersionPatch {
        enabled: Some(false),
        updated: T + 10,
        ..Default::default()
    };
    let old = s
        .update_version(v, "upd", Some(&v1.version), patch)
        .await
        .unwrap();
    assert_eq!(
        old,
        Some(VersionRow {
            enabled: false,
            updated: T + 10,
            ..v1.clone()
        })
    );
    assert_eq!(latest(s, v, "upd").await.as_ref(), Some(&want));
    assert_eq!(
        s.get_version(v, "upd", Some(&v1.version)).await.unwrap(),
        old
    );

    // Absent name or version: None, and nothing created.
    let patch = VersionPatch {
        enabled: Some(true),
        updated: T + 11,
        ..Default::default()
    };
    assert_eq!(
        s.update_version(v, "nope", None, patch.clone())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.update_version(v, "upd", Some(&new_version()), patch.clone())
            .await
            .unwrap(),
        None
    );
    assert_eq!(latest(s, v, "nope").await, None);

    // A deleted name cannot be updated.
    s.soft_delete(v, "upd", 20, FAR)
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(
        s.update_version(v, "upd", None, patch.clone())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.update_version(v, "upd", Some(&v1.version), patch)
            .await
            .unwrap(),
        None
    );
    let back = s.recover(v, "upd").await.unwrap();
    assert_eq!(
        back.as_ref(),
        Some(&want),
        "a refused update changed nothing"
    );
}

async fn list_latest_paging(s: &dyn SecretStore, v: &str) {
    assert!(
        s.list_latest(v, None, 10).await.unwrap().is_empty(),
        "an empty vault lists nothing"
    );

    // 103 names, inserted out of order, with mixed casing; some with two versions.
    let mut names: Vec<String> = (0..103)
        .map(|i| {
            let n = format!("name-{:03}", (i * 37) % 103);
            if i % 4 == 0 { n.to_uppercase() } else { n }
        })
        .collect();
    names.push("a".into());
    names.push("zzz-last".into());
    names.push("Mixed-Case-9".into());
    let mut want = std::collections::BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let i = i as i64;
        let mut last = row(name, i);
        put(s, v, &last).await;
        if i % 5 == 0 {
            last = bare_row(name, 2_000 + i);
            put(s, v, &last).await;
        }
        want.insert(name_key(name), last);
    }
    // Two deleted names sit between live ones; neither may appear.
    for gone in ["name-050", "name-051"] {
        assert!(s.soft_delete(v, gone, 1, FAR).await.unwrap().is_some());
        want.remove(gone);
    }
    let want: Vec<VersionRow> = want.into_values().collect();

    for page in [1, 2, 7, 50, 1000] {
        let got = all_live(s, v, page).await;
        let got_names: Vec<&str> = got.iter().map(|r| r.name.as_str()).collect();
        let want_names: Vec<&str> = want.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            got_names, want_names,
            "page size {page}: every live name exactly once, ascending by key"
        );
        assert_eq!(
            got,
            listed_all(&want),
            "page size {page}: ascending by name key, each its latest version"
        );
    }
    assert!(
        s.list_latest(v, None, 0).await.unwrap().is_empty(),
        "limit 0"
    );

    // A cursor that is not itself a name continues from where it would sort: a longer name, or the bound a
    // filtered listing jumps to (just before `name-1`, `name-04`: a character below `\x7f` appended).
    for after in ["name-0505", "name-0\x7f", "name-03\x7f"] {
        let got = s.list_latest(v, Some(after), 3).await.unwrap();
        let expect: Vec<VersionRow> = want
            .iter()
            .filter(|r| name_key(&r.name).as_str() > after)
            .take(3)
            .map(listed)
            .collect();
        assert_eq!(got, expect, "after {after:?}");
    }
    // After the last name: nothing.
    assert!(
        s.list_latest(v, Some("zzz-last"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Up to a bound (included), and no further, however many rows the limit allows: one name, the names
    // under a prefix (its end: the prefix and `\x7f`), a bound that is not a name, none past the last.
    for (after, until) in [
        (Some("name-00\x7f"), "name-010"),
        (None, "a"),
        (Some("name-01"), "name-01\x7f"),
        (Some("name-050"), "name-0525"),
        (Some("name-09"), "name-0\x7f"),
        (Some("name-100"), "name-100"),
        (Some("zzz-last"), PAST_EVERY_KEY),
    ] {
        let got = s.list_latest_upto(v, after, until, 50).await.unwrap();
        let expect: Vec<VersionRow> = want
            .iter()
            .filter(|r| {
                let key = name_key(&r.name);
                after.is_none_or(|a| key.as_str() > a) && key.as_str() <= until
            })
            .map(listed)
            .collect();
        assert_eq!(got, expect, "after {after:?} up to {until:?}");
    }
}

async fn list_versions_paging(s: &dyn SecretStore, v: &str) {
    let mut rows: Vec<VersionRow> = (0..25).map(|i| row("many", i)).collect();
    for r in &rows {
        put(s, v, r).await;
    }
    // Noise: another name's versions interleave with this one's.
    put(s, v, &row("other", 1)).await;
    let r25 = row("many", 25);
    put(s, v, &r25).await;
    rows.push(r25);
    assert_eq!(
        s.all_versions(v, "many", usize::MAX).await.unwrap(),
        rows,
        "all_versions in creation order"
    );
    // At most so many: a name with more gives that many (of its own), and no more is read.
    let some = s.all_versions(v, "many", 5).await.unwrap();
    assert_eq!(some.len(), 5);
    assert!(some.iter().all(|r| rows.contains(r)));
    assert_eq!(s.all_versions(v, "many", 26).await.unwrap(), rows);
    // The ids are random here, so version-id order is not creation order.
    let sorted = by_version(&rows);
    assert_ne!(
        sorted, rows,
        "the test's ids happen to be in creation order"
    );

    for page in [1, 4, 10, 26, 100] {
        let got = all_version_pages(s, v, "MANY", page).await;
        assert_eq!(
            got,
            listed_all(&sorted),
            "page size {page}: every version once, in version-id order"
        );
    }
    let first = s.list_versions(v, "many", None, 3).await.unwrap();
    assert_eq!(first, listed_all(&sorted[..3]));
    assert!(
        s.list_versions(v, "many", None, 0)
            .await
            .unwrap()
            .is_empty(),
        "limit 0"
    );
    let rest = s
        .list_versions(v, "many", Some(&first[2].version), 1000)
        .await
        .unwrap();
    assert_eq!(rest, listed_all(&sorted[3..]));
    let last = &sorted.last().expect("versions").version;
    assert!(
        s.list_versions(v, "many", Some(last), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A cursor need not be an id the name has: the page starts after it.
    let mid = &sorted[12].version;
    let between = format!("{}0", &mid[..31]);
    let from_between = s
        .list_versions(v, "many", Some(&between), 1000)
        .await
        .unwrap();
    assert_eq!(
        from_between,
        sorted
            .iter()
            .filter(|r| r.version > between)
            .map(listed)
            .collect::<Vec<_>>()
    );
    assert!(
        s.list_versions(v, "unknown", None, 10)
            .await
            .unwrap()
            .is_empty(),
        "unknown name"
    );

    // Cursors stay valid across new versions: a later page picks up a version added since whose id sorts
    // after the cursor, and the newest version is the latest whatever its id.
    let mut added = row("many", 99);
    added.version = "f".repeat(32);
    put(s, v, &added).await;
    let tail = s.list_versions(v, "many", Some(last), 10).await.unwrap();
    assert_eq!(tail, vec![listed(&added)]);
    let mut low = row("many", 100);
    low.version = "0".repeat(32);
    put(s, v, &low).await;
    assert_eq!(latest(s, v, "many").await, Some(low.clone()));
    let pages = all_version_pages(s, v, "many", 7).await;
    assert_eq!(pages.first(), Some(&listed(&low)));
    assert_eq!(pages.last(), Some(&listed(&added)));
}

async fn soft_delete_and_recover(s: &dyn SecretStore, v: &str) {
    let rows: Vec<VersionRow> = (1..=3).map(|i| row("Doomed", i)).collect();
    for r in &rows {
        put(s, v, r).await;
    }
    put(s, v, &row("survivor", 1)).await;
    assert_eq!(
        s.soft_delete(v, "absent", 1, FAR).await.unwrap(),
        None,
        "deleting an absent name"
    );
    assert_eq!(
        s.get_deleted(v, "doomed").await.unwrap(),
        None,
        "a live name is not deleted"
    );
    assert_eq!(
        s.recover(v, "doomed").await.unwrap(),
        None,
        "recovering a live name"
    );

    let deleted = s.soft_delete(v, "doomed", 1_234, FAR).await.unwrap();
    let expected = DeletedRow {
        latest: rows[2].clone(),
        deleted_on: 1_234,
        scheduled_purge: FAR,
    };
    assert_eq!(deleted.as_ref(), Some(&expected));
    assert_eq!(
        s.soft_delete(v, "doomed", 5_678, FAR).await.unwrap(),
        None,
        "deleting twice"
    );
    assert_eq!(
        s.get_deleted(v, "DOOMED").await.unwrap().as_ref(),
        Some(&expected),
        "the first deletion stands"
    );

    // Gone from every live view.
    assert_eq!(latest(s, v, "doomed").await, None);
    for r in &rows {
        assert_eq!(
            s.get_version(v, "doomed", Some(&r.version)).await.unwrap(),
            None
        );
    }
    assert!(
        s.list_versions(v, "doomed", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.all_versions(v, "doomed", usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let live: Vec<String> = all_live(s, v, 10)
        .await
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(live, vec!["survivor".to_string()]);

    // No new versions while deleted, whatever the casing.
    for name in ["Doomed", "doomed", "DOOMED"] {
        assert!(
            matches!(
                s.put_version(v, row(name, 9)).await,
                Err(StoreError::Deleted)
            ),
            "put on deleted"
        );
    }
    assert_eq!(
        s.get_deleted(v, "doomed").await.unwrap().as_ref(),
        Some(&expected),
        "the refused put changed nothing"
    );

    // Recover brings back every version, in order, and the name behaves like any live name again.
    assert_eq!(
        s.recover(v, "doomed").await.unwrap().as_ref(),
        Some(&rows[2])
    );
    assert_eq!(
        s.recover(v, "doomed").await.unwrap(),
        None,
        "recovering twice"
    );
    assert_eq!(s.get_deleted(v, "doomed").await.unwrap(), None);
    assert_eq!(s.all_versions(v, "doomed", usize::MAX).await.unwrap(), rows);
    assert_eq!(all_live(s, v, 10).await.len(), 2);
    let v4 = row("doomed", 4);
    put(s, v, &v4).await;
    assert_eq!(latest(s, v, "Doomed").await.as_ref(), Some(&v4));
    assert_eq!(
        s.all_versions(v, "doomed", usize::MAX).await.unwrap().len(),
        4
    );
    assert!(
        s.soft_delete(v, "doomed", 2_000, FAR)
            .await
            .unwrap()
            .is_some(),
        "a recovered name can be deleted again"
    );
    assert_eq!(
        s.get_deleted(v, "doomed").await.unwrap().map(|d| d.latest),
        Some(v4)
    );
}

async fn list_deleted_paging(s: &dyn SecretStore, v: &str) {
    assert!(s.list_deleted(v, None, 10).await.unwrap().is_empty());
    let mut want = Vec::new();
    for i in 0..23i64 {
        let name = format!("Del-{:02}", (i * 7) % 23);
        let r = row(&name, i);
        put(s, v, &r).await;
        if i % 4 != 0 {
            let d = s
                .soft_delete(v, &name, 100 + i, FAR + i)
                .await
                .unwrap()
                .expect("deleted");
            want.push(d);
        }
    }
    want.sort_by_key(|d| name_key(&d.latest.name));
    for page in [1, 3, 100] {
        let want: Vec<DeletedRow> = want
            .iter()
            .map(|d| DeletedRow {
                latest: listed(&d.latest),
                ..d.clone()
            })
            .collect();
        assert_eq!(all_deleted(s, v, page).await, want, "page size {page}");
    }
    assert!(
        s.list_deleted(v, None, 0).await.unwrap().is_empty(),
        "limit 0"
    );
    // Up to a bound, and no further.
    for (after, until, names) in [
        (None, "del-04", &["Del-01", "Del-03", "Del-04"][..]),
        (
            Some("del-1"),
            "del-1\x7f",
            &[
                "Del-11", "Del-12", "Del-13", "Del-14", "Del-16", "Del-17", "Del-18", "Del-19",
            ][..],
        ),
        (Some("del-21"), "del-21", &[][..]),
    ] {
        let got: Vec<String> = s
            .list_deleted_upto(v, after, until, 50)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.latest.name)
            .collect();
        assert_eq!(got, names, "after {after:?} up to {until:?}");
    }
    // Live names are not listed as deleted, nor deleted ones as live.
    let live = all_live(s, v, 100).await;
    assert_eq!(live.len() + want.len(), 23);
    assert!(live.iter().all(|r| {
        want.iter()
            .all(|d| name_key(&d.latest.name) != name_key(&r.name))
    }));
}

async fn purge(s: &dyn SecretStore, v: &str) {
    let old = row("Gone", 1);
    put(s, v, &old).await;
    assert!(
        !s.purge(v, "gone").await.unwrap(),
        "a live name is not purged"
    );
    assert_eq!(
        latest(s, v, "gone").await.as_ref(),
        Some(&old),
        "a refused purge changes nothing"
    );
    assert!(!s.purge(v, "absent").await.unwrap());

    s.soft_delete(v, "gone", 1, FAR)
        .await
        .unwrap()
        .expect("deleted");
    assert!(s.purge(v, "GONE").await.unwrap());
    assert!(!s.purge(v, "gone").await.unwrap(), "purging twice");
    assert_eq!(s.get_deleted(v, "gone").await.unwrap(), None);
    assert_eq!(latest(s, v, "gone").await, None);
    assert_eq!(
        s.get_version(v, "gone", Some(&old.version)).await.unwrap(),
        None
    );
    assert_eq!(s.recover(v, "gone").await.unwrap(), None);
    assert!(all_deleted(s, v, 10).await.is_empty());

    // The name is free again: a new secret with only its own versions (even reusing an old version id).
    let new = VersionRow {
        version: old.version.clone(),
        ..row("gone", 2)
    };
    put(s, v, &new).await;
    assert_eq!(
        s.all_versions(v, "gone", usize::MAX).await.unwrap(),
        vec![new]
    );
}

async fn purge_expired(store: Arc<dyn SecretStore>, run: &str) {
    let s = &*store;
    let va = format!("exp-a-{run}");
    let vb = format!("exp-b-{run}");
    // Due at 1000 and 1500 in one vault, 1200 in another; 1501 and FAR are not due; a live name never is.
    for (v, name, purge_at) in [
        (&va, "due-1", 1_000),
        (&va, "due-2", 1_500),
        (&vb, "due-3", 1_200),
        (&va, "later", 1_501),
        (&vb, "far", FAR),
    ] {
        put(s, v, &row(name, 1)).await;
        put(s, v, &row(name, 2)).await;
        s.soft_delete(v, name, 900, purge_at)
            .await
            .unwrap()
            .expect("deleted");
    }
    put(s, &va, &row("live", 1)).await;

    assert_eq!(s.purge_expired(999).await.unwrap(), 0, "nothing due yet");
    assert_eq!(
        s.purge_expired(1_500).await.unwrap(),
        3,
        "due names in every vault"
    );
    assert_eq!(s.get_deleted(&va, "due-1").await.unwrap(), None);
    assert_eq!(s.get_deleted(&va, "due-2").await.unwrap(), None);
    assert_eq!(s.get_deleted(&vb, "due-3").await.unwrap(), None);
    assert!(s.get_deleted(&va, "later").await.unwrap().is_some());
    assert!(s.get_deleted(&vb, "far").await.unwrap().is_some());
    assert!(latest(s, &va, "live").await.is_some());
    assert_eq!(s.purge_expired(1_500).await.unwrap(), 0, "nothing left due");
    assert_eq!(s.purge_expired(1_501).await.unwrap(), 1);
    assert!(s.get_deleted(&vb, "far").await.unwrap().is_some());
    // Purged names are free again.
    put(s, &va, &row("due-1", 3)).await;
    assert_eq!(
        s.all_versions(&va, "due-1", usize::MAX)
            .await
            .unwrap()
            .len(),
        1
    );

    // Many due names at once (more than any batch a backend might use internally).
    let vc = format!("exp-c-{run}");
    let count = 600usize;
    let mut tasks = Vec::new();
    for i in 0..count {
        let store = store.clone();
        let vc = vc.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("bulk-{i}");
            store
                .put_version(&vc, bare_row(&name, 1))
                .await
                .expect("put");
            store
                .soft_delete(&vc, &name, 900, 1_100)
                .await
                .expect("delete")
                .expect("deleted");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(all_deleted(s, &vc, 1000).await.len(), count);
    assert_eq!(s.purge_expired(1_100).await.unwrap(), count as u64);
    assert!(all_deleted(s, &vc, 10).await.is_empty());
}

async fn restore(s: &dyn SecretStore, v: &str) {
    // Version ids in no particular order, attributes varied; creation order is the list's order.
    let versions: Vec<VersionRow> = vec![
        row("Restored", 1),
        bare_row("Restored", 2),
        row("Restored", 3),
    ];
    s.restore(v, versions.clone()).await.expect("restore");
    assert_eq!(
        s.all_versions(v, "restored", usize::MAX).await.unwrap(),
        versions,
        "ids, order and attributes kept"
    );
    let listed = all_version_pages(s, v, "restored", 2).await;
    assert_eq!(listed, listed_all(&by_version(&versions)));
    assert_eq!(
        latest(s, v, "RESTORED").await.as_ref(),
        versions.last(),
        "the last is the latest"
    );
    for r in &versions {
        assert_eq!(
            s.get_version(v, "restored", Some(&r.version))
                .await
                .unwrap()
                .as_ref(),
            Some(r)
        );
    }
    // A restored name behaves like any live name.
    let next = row("restored", 4);
    put(s, v, &next).await;
    assert_eq!(latest(s, v, "restored").await.as_ref(), Some(&next));
    assert_eq!(
        s.all_versions(v, "restored", usize::MAX)
            .await
            .unwrap()
            .len(),
        4
    );

    // Conflicts: a live name (any casing) or a deleted name; nothing changes.
    let again = vec![row("RESTORED", 10)];
    assert!(
        matches!(s.restore(v, again.clone()).await, Err(StoreError::Exists)),
        "restore over a live name"
    );
    assert_eq!(
        s.all_versions(v, "restored", usize::MAX)
            .await
            .unwrap()
            .len(),
        4
    );
    s.soft_delete(v, "restored", 1, FAR)
        .await
        .unwrap()
        .expect("deleted");
    assert!(
        matches!(s.restore(v, again.clone()).await, Err(StoreError::Exists)),
        "restore over a deleted name"
    );
    assert!(latest(s, v, "restored").await.is_none(), "still deleted");
    assert_eq!(
        s.recover(v, "restored").await.unwrap().as_ref(),
        Some(&next)
    );
    assert_eq!(
        s.all_versions(v, "restored", usize::MAX)
            .await
            .unwrap()
            .len(),
        4,
        "the refused restores added nothing"
    );

    // After a purge the name can be restored again, with the very same version ids.
    s.soft_delete(v, "restored", 2, FAR)
        .await
        .unwrap()
        .expect("deleted");
    assert!(s.purge(v, "restored").await.unwrap());
    s.restore(v, versions.clone())
        .await
        .expect("restore after purge");
    assert_eq!(
        s.all_versions(v, "restored", usize::MAX).await.unwrap(),
        versions
    );

    // All or nothing: a restore that cannot complete (a repeated version id) leaves no trace.
    let mut bad = vec![row("halfway", 1), row("halfway", 2)];
    bad.push(VersionRow {
        sealed: b"x".to_vec(),
        ..bad[0].clone()
    });
    assert!(
        s.restore(v, bad).await.is_err(),
        "a restore with a repeated version id"
    );
    assert_eq!(latest(s, v, "halfway").await, None);
    assert_eq!(s.get_deleted(v, "halfway").await.unwrap(), None);
    assert!(
        s.all_versions(v, "halfway", usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    // And an empty restore is refused.
    assert!(s.restore(v, Vec::new()).await.is_err(), "an empty restore");
}

async fn vaults_are_separate(s: &dyn SecretStore, va: &str, vb: &str) {
    let a = row("shared", 1);
    let b = row("shared", 2);
    put(s, va, &a).await;
    put(s, vb, &b).await;
    assert_eq!(latest(s, va, "shared").await.as_ref(), Some(&a));
    assert_eq!(latest(s, vb, "shared").await.as_ref(), Some(&b));
    assert_eq!(
        s.get_version(vb, "shared", Some(&a.version)).await.unwrap(),
        None
    );
    s.soft_delete(va, "shared", 1, FAR)
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(
        latest(s, vb, "shared").await.as_ref(),
        Some(&b),
        "a delete in one vault leaves the other"
    );
    assert!(s.get_deleted(vb, "shared").await.unwrap().is_none());
    put(s, vb, &row("shared", 3)).await;
    assert_eq!(all_live(s, va, 10).await, Vec::<VersionRow>::new());
    assert_eq!(all_deleted(s, vb, 10).await, Vec::<DeletedRow>::new());
    assert!(s.purge(va, "shared").await.unwrap());
    assert_eq!(
        s.all_versions(vb, "shared", usize::MAX)
            .await
            .unwrap()
            .len(),
        2
    );
    // A restore in one vault does not conflict with the same name in another.
    s.restore(va, vec![row("shared", 4)])
        .await
        .expect("restore into the other vault");
}

async fn concurrent_puts(store: Arc<dyn SecretStore>, v: &str) {
    const TASKS: usize = 64;
    const EACH: usize = 8;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let v = v.to_string();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..EACH {
                // Everyone writes the same name (with varying casing) and a name of their own.
                let r = bare_row(
                    if t % 2 == 0 { "hot" } else { "HOT" },
                    (t * EACH + i) as i64,
                );
                store
                    .put_version(&v, r.clone())
                    .await
                    .expect("concurrent put");
                store
                    .put_version(&v, bare_row(&format!("own-{t}"), i as i64))
                    .await
                    .expect("own put");
                mine.push(r.version);
            }
            mine
        }));
    }
    let mut written = BTreeSet::new();
    for h in handles {
        for version in h.await.expect("task") {
            assert!(written.insert(version), "distinct versions");
        }
    }
    let s = &*store;
    let stored = all_version_pages(s, v, "hot", 100).await;
    assert_eq!(stored.len(), TASKS * EACH, "every concurrent put landed");
    let stored_ids: BTreeSet<String> = stored.iter().map(|r| r.version.clone()).collect();
    assert_eq!(stored_ids, written);
    assert!(
        stored.windows(2).all(|w| w[0].version < w[1].version),
        "listed by version id"
    );
    let newest = latest(s, v, "hot").await.expect("latest");
    assert_eq!(
        s.all_versions(v, "hot", usize::MAX).await.unwrap().last(),
        Some(&newest),
        "the latest is the last created"
    );
    let live = all_live(s, v, 1000).await;
    assert_eq!(live.len(), TASKS + 1);
    for t in 0..TASKS {
        assert_eq!(
            s.all_versions(v, &format!("own-{t}"), usize::MAX)
                .await
                .unwrap()
                .len(),
            EACH
        );
    }
}

/// The key check and the purge-protection record rely on this: the first value kept stays.
async fn meta_keeps_the_first_value(s: &dyn SecretStore, key: &str) {
    assert_eq!(s.meta(key).await.unwrap(), None);
    assert_eq!(s.meta_insert(key, b"first").await.unwrap(), b"first");
    assert_eq!(s.meta_insert(key, b"second").await.unwrap(), b"first");
    assert_eq!(s.meta(key).await.unwrap().as_deref(), Some(&b"first"[..]));
}

/// After the checks above the store holds versions: one of them comes back, with its value (every value this
/// suite writes is non-empty) and the name key it was sealed for.
async fn any_sealed_finds_a_stored_value(s: &dyn SecretStore) {
    let found = s
        .any_sealed()
        .await
        .unwrap()
        .expect("a store holding versions has one to show");
    assert_eq!(name_key(&found.name_key), found.name_key);
    assert_eq!(found.version.len(), 32, "{found:?}");
    assert!(!found.sealed.is_empty());
}

/// The key check moves to a new key by compare and swap: a stale `old` changes nothing.
async fn meta_replace_is_compare_and_swap(s: &dyn SecretStore, key: &str) {
    assert!(!s.meta_replace(key, b"a", b"b").await.unwrap(), "absent");
    assert_eq!(s.meta(key).await.unwrap(), None);
    s.meta_insert(key, b"a").await.unwrap();
    assert!(!s.meta_replace(key, b"stale", b"b").await.unwrap());
    assert_eq!(s.meta(key).await.unwrap().as_deref(), Some(&b"a"[..]));
    assert!(s.meta_replace(key, b"a", b"b").await.unwrap());
    assert_eq!(s.meta(key).await.unwrap().as_deref(), Some(&b"b"[..]));
}

/// A rekey completes by one swap of several meta values (key check, retired keys, target): either every
/// expectation holds and every key changes (set or removed), or nothing changes.
async fn meta_swap_is_all_or_nothing(s: &dyn SecretStore, prefix: &str) {
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let swap = |key: &str, expect: Option<&[u8]>, set: Option<&[u8]>| MetaSwap {
        key: key.to_owned(),
        expect: expect.map(<[u8]>::to_vec),
        set: set.map(<[u8]>::to_vec),
    };
    s.meta_insert(&a, b"1").await.unwrap();
    // b is expected to hold something it does not: neither changes.
    assert!(
        !s.meta_swap(vec![
            swap(&a, Some(b"1"), Some(b"2")),
            swap(&b, Some(b"x"), None)
        ])
        .await
        .unwrap()
    );
    assert_eq!(s.meta(&a).await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(s.meta(&b).await.unwrap(), None);
    // Both hold: a changes, b is created.
    assert!(
        s.meta_swap(vec![
            swap(&a, Some(b"1"), Some(b"2")),
            swap(&b, None, Some(b"t"))
        ])
        .await
        .unwrap()
    );
    assert_eq!(s.meta(&a).await.unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.meta(&b).await.unwrap().as_deref(), Some(&b"t"[..]));
    // b is removed; a stays as it is (expected and set to the same value).
    assert!(
        s.meta_swap(vec![
            swap(&a, Some(b"2"), Some(b"2")),
            swap(&b, Some(b"t"), None)
        ])
        .await
        .unwrap()
    );
    assert_eq!(s.meta(&b).await.unwrap(), None);
    // A stale expectation of absence changes nothing.
    assert!(!s.meta_swap(vec![swap(&a, None, Some(b"3"))]).await.unwrap());
    assert_eq!(s.meta(&a).await.unwrap().as_deref(), Some(&b"2"[..]));
}

/// Every stored version of the vault `v`, by paging through every vault's versions `page` at a time.
async fn sealed_of(s: &dyn SecretStore, v: &str, page: usize) -> Vec<SealedValue> {
    let mut out = Vec::new();
    let mut after: Option<SealedKey> = None;
    loop {
        let got = s
            .sealed_page(after.as_ref(), page)
            .await
            .expect("sealed_page");
        assert!(got.len() <= page, "a page of at most {page}");
        for w in got.windows(2) {
            assert!(w[0].key() < w[1].key(), "pages are in key order");
        }
        if let (Some(a), Some(first)) = (&after, got.first()) {
            assert!(*a < first.key(), "a page starts after the previous one");
        }
        let Some(last) = got.last() else { break };
        after = Some(last.key());
        out.extend(got.into_iter().filter(|x| x.vault == v));
    }
    out
}

fn change(x: &SealedValue, old: &[u8], new: &[u8]) -> SealedChange {
    SealedChange {
        vault: x.vault.clone(),
        name_key: x.name_key.clone(),
        version: x.version.clone(),
        old: old.to_vec(),
        new: new.to_vec(),
    }
}

/// `keyvault rekey` relies on this: paging reaches every version of every name, live or deleted, with its
/// value; a replace changes only the value, and only where the row still holds the old one.
async fn sealed_pages_and_replace(s: &dyn SecretStore, v: &str) {
    let live: Vec<VersionRow> = (0..5).map(|n| row("Live", n)).collect();
    for r in &live {
        put(s, v, r).await;
    }
    let gone: Vec<VersionRow> = (0..3).map(|n| row("gone", n)).collect();
    for r in &gone {
        put(s, v, r).await;
    }
    s.soft_delete(v, "gone", 1, FAR)
        .await
        .unwrap()
        .expect("deleted");
    let purged = row("purged", 0);
    put(s, v, &purged).await;

    let all = sealed_of(s, v, 3).await;
    assert_eq!(all.len(), 9, "every version, live and deleted");
    for x in &all {
        let stored = live
            .iter()
            .chain(&gone)
            .chain([&purged])
            .find(|r| r.version == x.version)
            .expect("a stored version");
        assert_eq!(x.sealed, stored.sealed, "with its value");
        assert_eq!(x.name_key, name_key(&stored.name), "and its name key");
    }

    // A purge between the read and the replace: that change is skipped; a stale `old` too.
    s.soft_delete(v, "purged", 1, FAR).await.unwrap();
    assert!(s.purge(v, "purged").await.unwrap());
    let mut changes = Vec::new();
    for x in &all {
        let mut new = b"resealed:".to_vec();
        new.extend_from_slice(&x.sealed);
        changes.push(change(x, &x.sealed, &new));
    }
    let stale = all.iter().find(|x| x.name_key == "live").unwrap();
    changes.push(change(stale, b"not what it holds", b"never"));
    // Meanwhile an attribute update: the replace must not undo it.
    let patched = s
        .update_version(
            v,
            "Live",
            Some(&live[1].version),
            VersionPatch {
                content_type: Some("patched".into()),
                updated: 42,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    // Read the latest version so that a store with a cache holds it when its value changes.
    assert_eq!(latest(s, v, "live").await.unwrap().sealed, live[4].sealed);
    assert_eq!(s.replace_sealed(changes).await.unwrap(), 8);

    let after = sealed_of(s, v, 100).await;
    assert_eq!(after.len(), 8);
    assert!(after.iter().all(|x| x.sealed.starts_with(b"resealed:")));
    let read = s
        .get_version(v, "live", Some(&live[1].version))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.content_type.as_deref(), Some("patched"));
    assert_eq!(read.updated, patched.updated);
    assert!(
        read.sealed.starts_with(b"resealed:"),
        "reads see the new value"
    );
    // The latest version through the read path (a cache, if any) too.
    assert!(
        latest(s, v, "live")
            .await
            .unwrap()
            .sealed
            .starts_with(b"resealed:")
    );
    // The deleted name stays deleted, and recovers with its new values.
    assert!(latest(s, v, "gone").await.is_none());
    let back = s.recover(v, "gone").await.unwrap().expect("recovered");
    assert!(back.sealed.starts_with(b"resealed:"));
    // Replacing again with the first `old` bytes changes nothing.
    let again: Vec<_> = all.iter().map(|x| change(x, &x.sealed, b"x")).collect();
    assert_eq!(s.replace_sealed(again).await.unwrap(), 0);
    assert_eq!(s.replace_sealed(Vec::new()).await.unwrap(), 0);
}
