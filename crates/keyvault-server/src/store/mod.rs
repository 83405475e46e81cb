//! Storage: the [`SecretStore`] trait (bytes and rows; nothing above it knows about SQL) and its
//! implementations: embedded SQLite ([`sqlite::SqliteStore`], the default) and PostgreSQL
//! ([`postgres::PostgresStore`], for several server nodes over one database).
//!
//! Names compare case-insensitively: a store keys on the *name key* `name.to_ascii_lowercase()` and keeps the
//! display casing of the latest write. Versions are compared as given (lowercase hex). Every key includes the
//! vault. Values arrive sealed ([`crate::crypto::Envelope`]) and are opaque bytes to the store.
//!
//! [`conformance::run_all`] is the behavioural contract every backend must pass.

use std::fmt;

mod cache;
#[doc(hidden)]
pub mod conformance;
#[doc(hidden)]
pub mod pgtest;
pub mod postgres;
pub mod sqlite;

/// Tags of a secret version.
pub type Tags = std::collections::BTreeMap<String, String>;

/// One version of a secret as stored. `sealed` is the envelope-encrypted value (opaque bytes to the store).
#[derive(Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// The name in its display casing (that of the latest write of the name).
    pub name: String,
    pub version: String,
    pub sealed: Vec<u8>,
    pub content_type: Option<String>,
    pub tags: Option<Tags>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

impl fmt::Debug for VersionRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VersionRow")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sealed_len", &self.sealed.len())
            .field("content_type", &self.content_type)
            .field("tags", &self.tags)
            .field("enabled", &self.enabled)
            .field("nbf", &self.nbf)
            .field("exp", &self.exp)
            .field("created", &self.created)
            .field("updated", &self.updated)
            .finish()
    }
}

/// A soft-deleted name: its latest version and when it was deleted / will be purged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedRow {
    pub latest: VersionRow,
    pub deleted_on: i64,
    pub scheduled_purge: i64,
}

/// A change to the attributes of one version. `None` = unchanged; `updated` is always set.
#[derive(Clone, Debug, Default)]
pub struct VersionPatch {
    pub content_type: Option<String>,
    pub tags: Option<Tags>,
    pub enabled: Option<bool>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub updated: i64,
}

impl VersionPatch {
    /// Change the fields this patch sets (the others stay), and the `updated` time — never to before the
    /// version's `created` or its last `updated` (after the clock stepped back, `updated` stays put rather
    /// than show a change made before the version existed).
    pub fn apply_to(self, row: &mut VersionRow) {
        if self.content_type.is_some() {
            row.content_type = self.content_type;
        }
        if self.tags.is_some() {
            row.tags = self.tags;
        }
        if let Some(enabled) = self.enabled {
            row.enabled = enabled;
        }
        if self.nbf.is_some() {
            row.nbf = self.nbf;
        }
        if self.exp.is_some() {
            row.exp = self.exp;
        }
        row.updated = self.updated.max(row.updated).max(row.created);
    }
}

/// Errors of a store. Messages never contain sealed bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the name is deleted but recoverable")]
    Deleted,
    #[error("the name already exists")]
    Exists,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The storage of one or more vaults: versioned rows keyed by (vault, name key, version), the live/deleted
/// state of each name, keyset-paged listings and transactional set / delete / recover / purge / restore.
/// A listing bound above every name key (name keys are ASCII below `\x7f`): the `until` of a listing that
/// goes to the end.
pub const PAST_EVERY_KEY: &str = "\x7f";

#[async_trait::async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Add a version and make it the latest of its name; the name's display casing becomes row.name.
    /// Err(Deleted) if the name is soft-deleted. (A restored or recovered name behaves like any live name.)
    /// Err(Exists) if the name already has a version with this id.
    async fn put_version(&self, vault: &str, row: VersionRow) -> StoreResult<()>;
    /// A version of a live name (the latest when `version` is None). Ok(None) if absent, or if the name is deleted.
    async fn get_version(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<VersionRow>>;
    /// Apply `patch` to one version of a live name (latest when None) and return the row after the change.
    async fn update_version(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
        patch: VersionPatch,
    ) -> StoreResult<Option<VersionRow>>;
    /// Live names whose key sorts after `after` (a name key), ascending by key, each as its latest version. At most `limit`.
    /// Listings return rows without their values (`sealed` empty): no listing shows a value, so none reads one.
    async fn list_latest(
        &self,
        vault: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        self.list_latest_upto(vault, after, PAST_EVERY_KEY, limit)
            .await
    }
    /// [`SecretStore::list_latest`] for the keys up to `until` (inclusive) only: no name past it is read.
    async fn list_latest_upto(
        &self,
        vault: &str,
        after: Option<&str>,
        until: &str,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>>;
    /// Versions of a live name sorted by version id (as Key Vault lists them; ids this server makes grow with
    /// time, see [`crate::vault::new_version`]), those after the version id `after` (the last one of the
    /// previous page), at most `limit`. Unknown or deleted name → empty. Without values, like every listing.
    async fn list_versions(
        &self,
        vault: &str,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>>;
    /// Every version of a live name, creation order (for backup); but if it has more than `at_most`, some
    /// `at_most` of them (whoever asks refuses so many, without reading every value). Empty if absent or
    /// deleted.
    async fn all_versions(
        &self,
        vault: &str,
        name: &str,
        at_most: usize,
    ) -> StoreResult<Vec<VersionRow>>;
    /// Soft-delete a live name (all its versions leave the live listings). None if not live.
    async fn soft_delete(
        &self,
        vault: &str,
        name: &str,
        deleted_on: i64,
        scheduled_purge: i64,
    ) -> StoreResult<Option<DeletedRow>>;
    /// A deleted name with its latest version. None if not deleted.
    async fn get_deleted(&self, vault: &str, name: &str) -> StoreResult<Option<DeletedRow>>;
    /// Deleted names after `after` (name key), ascending, at most `limit`. Without values, like every listing.
    async fn list_deleted(
        &self,
        vault: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeletedRow>> {
        self.list_deleted_upto(vault, after, PAST_EVERY_KEY, limit)
            .await
    }
    /// [`SecretStore::list_deleted`] for the keys up to `until` (inclusive) only: no name past it is read.
    async fn list_deleted_upto(
        &self,
        vault: &str,
        after: Option<&str>,
        until: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeletedRow>>;
    /// Make a deleted name live again with all its versions; returns its latest version. None if not deleted.
    async fn recover(&self, vault: &str, name: &str) -> StoreResult<Option<VersionRow>>;
    /// Remove a deleted name and all its versions for good. false if it was not deleted.
    async fn purge(&self, vault: &str, name: &str) -> StoreResult<bool>;
    /// Purge, in every vault, deleted names whose scheduled_purge <= now. Returns how many names.
    async fn purge_expired(&self, now: i64) -> StoreResult<u64>;
    /// Create a name from `versions` (creation order; the last is the latest). Err(Exists) if the name is live OR deleted. All or nothing.
    async fn restore(&self, vault: &str, versions: Vec<VersionRow>) -> StoreResult<()>;
    /// Is the store usable (for /readyz)?
    async fn health(&self) -> StoreResult<()>;
    /// What the store has counted (group commit, its cache, checkpoints), for `/metrics`. Cheap: counters
    /// read, no query. Default: nothing.
    fn metrics(&self) -> crate::metrics::StoreMetrics {
        crate::metrics::StoreMetrics::default()
    }
    /// Should this node run background work (the retention sweeper) now? Called before each run. A store
    /// shared by several nodes answers true on one node at a time and moves the role to another node when
    /// that one dies; a store private to this node is always the leader.
    async fn try_acquire_leadership(&self) -> StoreResult<bool> {
        Ok(true)
    }
    /// Is this store shared by several nodes? Then it keeps, for all of them, the access-control document
    /// (what the admin API made: principals, their secret hashes, role assignments, custom roles). A store
    /// private to one node answers false, and the node keeps the document in its data directory.
    fn is_shared(&self) -> bool {
        false
    }
    /// The shared access-control document and its revision (None before the first change).
    async fn access_doc(&self) -> StoreResult<Option<AccessDoc>> {
        Ok(None)
    }
    /// The revision of the shared access-control document (0 before the first change): a cheap query
    /// nodes poll to learn that another node changed it.
    async fn access_revision(&self) -> StoreResult<i64> {
        Ok(0)
    }
    /// A small value kept beside the secrets (the key check [`KEY_CHECK`], the purge-protection record; on a
    /// shared store, one for every node); None if absent. Every store keeps them: a store without them could
    /// not stop a server started with the wrong key.
    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Keeps `value` under `key` unless a value is there already; returns the value kept (the first one).
    async fn meta_insert(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>>;
    /// One stored version (of any vault and name, live or deleted) with what its value was sealed for; None
    /// if the store holds no version. A store written before the key check existed has values but no check:
    /// [`check_key`] opens one of them before it writes the check.
    async fn any_sealed(&self) -> StoreResult<Option<SealedValue>>;
    /// Stored versions of every vault and name, live or deleted, with their sealed values, in (vault, name
    /// key, version) order: those after `after` (the last of the previous page), at most `limit`. For
    /// re-sealing every value under a new key-encryption key (`keyvault rekey`); nothing else reads values
    /// in bulk.
    async fn sealed_page(
        &self,
        after: Option<&SealedKey>,
        limit: usize,
    ) -> StoreResult<Vec<SealedValue>>;
    /// Replaces the sealed value of each version in `changes` whose row still holds `old` (compare and
    /// swap: a version purged meanwhile, or given another value, is left as it is). Only the value changes:
    /// attributes, and whether the name is live or deleted, stay what they are when the change commits.
    /// Each change stands on its own (no lock is held across changes). Returns how many were replaced.
    async fn replace_sealed(&self, changes: Vec<SealedChange>) -> StoreResult<u64>;
    /// Replaces the value under `key` if it is still `old` (compare and swap); true if it was replaced.
    async fn meta_replace(&self, key: &str, old: &[u8], new: &[u8]) -> StoreResult<bool>;
    /// Several compare-and-swaps of meta values in one transaction: every key must hold its `expect` (None:
    /// absent) for any to change; then each is set to its `set` (None: removed). true if they were applied.
    async fn meta_swap(&self, swaps: Vec<MetaSwap>) -> StoreResult<bool>;
    /// Replaces the shared access-control document if its revision is still `expected` (0: there is none
    /// yet). Ok(Some(new revision)), or Ok(None) when another node changed it first (read it again, redo
    /// the change, and try again).
    async fn put_access_doc(&self, expected: i64, doc: &[u8]) -> StoreResult<Option<i64>> {
        let _ = (expected, doc);
        Err(StoreError::Internal(
            "this store does not keep an access-control document".into(),
        ))
    }
}

/// A sealed value as stored, with the (vault, name key, version) it was sealed for ([`SecretStore::any_sealed`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub vault: String,
    pub name_key: String,
    pub version: String,
    pub sealed: Vec<u8>,
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedValue")
            .field("vault", &self.vault)
            .field("name_key", &self.name_key)
            .field("version", &self.version)
            .field("sealed_len", &self.sealed.len())
            .finish()
    }
}

impl SealedValue {
    /// The compare-and-swap change of this version from what it holds now to `new`.
    pub fn replace_with(self, new: Vec<u8>) -> SealedChange {
        SealedChange {
            vault: self.vault,
            name_key: self.name_key,
            version: self.version,
            old: self.sealed,
            new,
        }
    }
}

/// Where a stored version is: the keyset position of [`SecretStore::sealed_page`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SealedKey {
    pub vault: String,
    pub name_key: String,
    pub version: String,
}

impl SealedValue {
    /// This version's position (for the next [`SecretStore::sealed_page`]).
    pub fn key(&self) -> SealedKey {
        SealedKey {
            vault: self.vault.clone(),
            name_key: self.name_key.clone(),
            version: self.version.clone(),
        }
    }
}

/// One compare-and-swap of a meta value ([`SecretStore::meta_swap`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaSwap {
    pub key: String,
    /// What the key must hold (None: absent).
    pub expect: Option<Vec<u8>>,
    /// What it then holds (None: removed).
    pub set: Option<Vec<u8>>,
}

/// One compare-and-swap change of a sealed value ([`SecretStore::replace_sealed`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedChange {
    pub vault: String,
    pub name_key: String,
    pub version: String,
    /// What the row must still hold.
    pub old: Vec<u8>,
    /// What it then holds.
    pub new: Vec<u8>,
}

impl fmt::Debug for SealedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedChange")
            .field("vault", &self.vault)
            .field("name_key", &self.name_key)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The name under which a store keeps its key check ([`check_key`]).
pub const KEY_CHECK: &str = "kek-check";

/// The name under which a store keeps the ids of the key-encryption keys a completed `keyvault rekey`
/// retired (comma-separated): no server may seal with them again ([`check_key`], [`kek_retired`]).
pub const KEK_RETIRED: &str = "kek-retired";

/// The name under which a store keeps the id of the key a `keyvault rekey` is re-sealing under, from before
/// its first re-seal until it completes: a server that does not hold that key is refused ([`check_key`]).
pub const KEK_REKEY_TARGET: &str = "kek-rekey-target";

/// The name under which a store keeps the ids of the key-encryption keys servers (and `keyvault rekey`) have
/// had current, comma-separated in the order each was first current ([`note_current_key`]): a rekey that moves
/// the key check retires every key ranked before its own in this order, not only the check's
/// ([`keys_ranked_before`], [`crate::rekey`]). A store made by a build that keeps the list starts it empty,
/// with its key check; a store that had a key check before (written by a build that kept no list) starts it
/// with [`ORDER_UNRANKED`].
pub const KEK_CURRENT_ORDER: &str = "kek-current-order";

/// The first entry of a [`KEK_CURRENT_ORDER`] begun over a store used before it was kept: the keys noted
/// from then on may have been current before, in another order (a node with an older key restarted last),
/// so they are not ranked; the first rekey that completes adds the keys it found values under, then
/// [`ORDER_RANKED_FROM`] ([`rank_from_here`]), and the keys noted after it are ranked among themselves.
const ORDER_UNRANKED: &str = "?";
/// Where the ranked part of an [`ORDER_UNRANKED`] list starts.
const ORDER_RANKED_FROM: &str = "~";

/// How often a node over a shared store reads [`KEK_RETIRED`] to learn that its current key was retired by a
/// rekey (then it refuses every write that seals). `keyvault rekey` waits longer than this before its final
/// pass ([`crate::rekey`]).
pub const KEK_RETIRED_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the key check holds: a fixed text sealed under a key-encryption key.
const KEY_CHECK_TEXT: &[u8] = b"keyvault-rs key check";

/// The ids in a [`KEK_RETIRED`] value.
fn parse_ids(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The key ids a completed `keyvault rekey` retired (empty if none).
pub async fn kek_retired(store: &dyn SecretStore) -> StoreResult<Vec<String>> {
    Ok(store
        .meta(KEK_RETIRED)
        .await?
        .map(|v| parse_ids(&v))
        .unwrap_or_default())
}

/// Whether this node's current key is among the retired ones (what a node over a shared store polls).
pub async fn current_kek_retired(
    store: &dyn SecretStore,
    envelope: &crate::crypto::Envelope,
) -> StoreResult<bool> {
    let current = envelope.current_kek_id();
    Ok(kek_retired(store).await?.iter().any(|id| id == current))
}

/// The refusal of a server (or a rekey) whose current key was retired; `check_id` is the key check's key.
fn refuse_retired(envelope: &crate::crypto::Envelope, check_id: &str) -> Result<(), String> {
    let current = envelope.current_kek_id();
    if check_id == current {
        // Only two rekeys racing (before they were kept apart) could leave the check under a retired key.
        return Err(format!(
            "key-encryption key id {current} was retired by `keyvault rekey`, and the store's key check is \
             under it: configure a new key as current (kek_file or KEYVAULT_KEK), keep {current} as a previous \
             key, and run `keyvault rekey`"
        ));
    }
    Err(format!(
        "key-encryption key id {current} was retired by `keyvault rekey`; make key {check_id} current (kek_file \
         or KEYVAULT_KEK; {current} may stay as a previous key)"
    ))
}

/// Refuses keys that cannot open what the store holds, or would seal under a key a rekey retired. The
/// first server over a store seals a fixed text under its KEK and keeps it in the store; every start then
/// opens it, under the current key or a previous one (`previous_kek_files`, `KEYVAULT_PREVIOUS_KEKS`: a
/// rotation in progress). A server whose keys open none of it (another `kek_file` or `KEYVAULT_KEK`, or a
/// lost key file made anew) could open none of the stored values and would seal new ones under its own key,
/// leaving the store with values under keys no one server holds: it stops here instead, naming the key ids.
/// Over a shared store, this keeps every node able to open what the others seal.
///
/// The check moves to the current key only once every stored version is under it ([`reseal_key_check`],
/// at the end of `keyvault rekey`), which also records the keys it moved away from as retired
/// ([`KEK_RETIRED`]): from then on, a server with the previous key alone is refused, so is one whose current
/// key is a retired one, and the previous key can be dropped. While a rekey runs (or after one was
/// interrupted) the store names its target key ([`KEK_REKEY_TARGET`]): a server without that key, which
/// could not open the values already re-sealed, is refused.
///
/// A store written before the check existed holds values but no check. The check is written only once the
/// keys have opened one of those values: written blindly, it would make a wrong key the one every later start
/// must have.
pub async fn check_key(
    store: &dyn SecretStore,
    envelope: &crate::crypto::Envelope,
) -> Result<(), String> {
    let stored = match store.meta(KEY_CHECK).await.map_err(|e| e.to_string())? {
        Some(v) => v,
        None => {
            let any = store.any_sealed().await.map_err(|e| e.to_string())?;
            let had_values = any.is_some();
            if let Some(value) = any {
                let opened =
                    envelope.open(&value.vault, &value.name_key, &value.version, &value.sealed);
                if opened.is_err() {
                    return Err(wrong_key(store, envelope, &value.sealed));
                }
            }
            let sealed = envelope
                .seal("", KEY_CHECK, "", KEY_CHECK_TEXT)
                .map_err(|e| e.to_string())?;
            // A new store: the check and an empty key order (every key noted from now on is ranked:
            // [`KEK_CURRENT_ORDER`]) in one write. Two writes left a store whose start failed between them
            // (a crash, a lock timeout, a stop) looking like one an older build made, its keys unranked
            // (a91-2). Another node's check, written first, wins, with its list.
            let swapped = !had_values
                && store
                    .meta_swap(vec![
                        MetaSwap {
                            key: KEY_CHECK.to_owned(),
                            expect: None,
                            set: Some(sealed.clone()),
                        },
                        MetaSwap {
                            key: KEK_CURRENT_ORDER.to_owned(),
                            expect: None,
                            set: Some(Vec::new()),
                        },
                    ])
                    .await
                    .map_err(|e| e.to_string())?;
            if swapped {
                sealed
            } else {
                store
                    .meta_insert(KEY_CHECK, &sealed)
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    };
    let check_id = match envelope.open("", KEY_CHECK, "", &stored) {
        Ok(text) if text.as_slice() == KEY_CHECK_TEXT => crate::crypto::sealed_kek_id(&stored)
            .unwrap_or("unknown")
            .to_owned(),
        _ => return Err(wrong_key(store, envelope, &stored)),
    };
    let current = envelope.current_kek_id();
    if current_kek_retired(store, envelope)
        .await
        .map_err(|e| e.to_string())?
    {
        refuse_retired(envelope, &check_id)?;
    }
    let target = store
        .meta(KEK_REKEY_TARGET)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned());
    if let Some(target) = &target {
        if !envelope.knows(target) {
            return Err(format!(
                "a `keyvault rekey` to key-encryption key id {target} started (and may have been interrupted): \
                 values may already be sealed under it, which this server could not open. Configure key \
                 {target} (kek_file or KEYVAULT_KEK, or previous_kek_files or KEYVAULT_PREVIOUS_KEKS) and run \
                 `keyvault rekey` again"
            ));
        }
        tracing::warn!(
            kek_id = %current,
            rekey_target = %target,
            "a `keyvault rekey` to key id {target} has started and not completed (it is running, or was \
             interrupted: then run it again); until it completes, keep every key configured"
        );
    } else if check_id != current {
        tracing::warn!(
            kek_id = %current,
            key_check_kek_id = %check_id,
            "the key check is still under key id {check_id}, a previous key of this server: values may be \
             sealed under it until `keyvault rekey` has re-sealed them under the current key, so keep it \
             configured (previous_kek_files or KEYVAULT_PREVIOUS_KEKS) until then"
        );
    }
    Ok(())
}

/// Adds this server's current key to [`KEK_CURRENT_ORDER`] if it is not there yet (a compare and swap,
/// tried again if another node changed the list meanwhile), and returns the list's entries. A server notes
/// its key once its start can no longer fail (a start refused later would rank a key that never was
/// current); `keyvault rekey` notes its own before it retires keys. A store without the list (used by
/// builds that kept none) gets one that starts [`ORDER_UNRANKED`].
pub async fn note_current_key(
    store: &dyn SecretStore,
    envelope: &crate::crypto::Envelope,
) -> Result<Vec<String>, String> {
    let current = envelope.current_kek_id();
    for _ in 0..16 {
        let old = store
            .meta(KEK_CURRENT_ORDER)
            .await
            .map_err(|e| e.to_string())?;
        let mut order = match old.as_deref() {
            Some(text) => parse_ids(text),
            None => vec![ORDER_UNRANKED.to_owned()],
        };
        if order.iter().any(|id| id == current) {
            return Ok(order);
        }
        order.push(current.to_owned());
        let swapped = store
            .meta_swap(vec![MetaSwap {
                key: KEK_CURRENT_ORDER.to_owned(),
                expect: old,
                set: Some(order.join(",").into_bytes()),
            }])
            .await
            .map_err(|e| e.to_string())?;
        if swapped {
            return Ok(order);
        }
    }
    Err("the list of key-encryption keys servers have had current kept changing (other nodes starting?): \
         try again"
        .to_owned())
}

/// The keys a [`KEK_CURRENT_ORDER`] list (`order`, its entries) ranks before `current`: none if `current` is
/// not ranked (not in the list, or in its unranked part), and only ranked ones.
pub fn keys_ranked_before(order: &[String], current: &str) -> Vec<String> {
    let ranked = match order.first().map(String::as_str) {
        Some(ORDER_UNRANKED) => match order.iter().position(|id| id == ORDER_RANKED_FROM) {
            Some(at) => &order[at + 1..],
            None => &[],
        },
        _ => order,
    };
    match ranked.iter().position(|id| id == current) {
        Some(at) => ranked[..at].to_vec(),
        None => Vec::new(),
    }
}

/// The key id of the store's key check, after making sure these keys open it and that the current key was
/// not retired (read only: a store without a check answers None). The refusals are [`check_key`]'s.
pub async fn verify_key_check(
    store: &dyn SecretStore,
    envelope: &crate::crypto::Envelope,
) -> Result<Option<String>, String> {
    let Some(stored) = store.meta(KEY_CHECK).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let check_id = match envelope.open("", KEY_CHECK, "", &stored) {
        Ok(text) if text.as_slice() == KEY_CHECK_TEXT => crate::crypto::sealed_kek_id(&stored)
            .unwrap_or("unknown")
            .to_owned(),
        _ => return Err(wrong_key(store, envelope, &stored)),
    };
    if current_kek_retired(store, envelope)
        .await
        .map_err(|e| e.to_string())?
    {
        refuse_retired(envelope, &check_id)?;
    }
    Ok(Some(check_id))
}

/// Records, before a rekey's first re-seal, that it re-seals under the current key ([`KEK_REKEY_TARGET`]):
/// a compare and swap over no target. A rekey toward another key, running (on another node) or interrupted,
/// is finished first: two rekeys toward different keys would each re-seal what the other did and retire the
/// other's key.
pub async fn begin_rekey(
    store: &dyn SecretStore,
    envelope: &crate::crypto::Envelope,
) -> Result<(), String> {
    let current = envelope.current_kek_id();
    let old = store
        .meta(KEK_REKEY_TARGET)
        .await
        .map_err(|e| e.to_string())?;
    match old.as_deref() {
        Some(target) if target == current.as_bytes() => return Ok(()),
        Some(target) => {
            let target = String::from_utf8_lossy(target);
            let target = target.trim();
            return Err(format!(
                "a `keyvault rekey` to key-encryption key id {target} has started and not completed (it is \
                 running on another node, or was interrupted), and this node's current key is {current}: run \
                 `keyvault rekey` on a node whose current key is {target} (to finish that rotation first)"
            ));
        }
        None => {}
    }
    let swapped = store
        .meta_swap(vec![MetaSwap {
            key: KEK_REKEY_TARGET.to_owned(),
            expect: old,
            set: Some(current.as_bytes().to_vec()),
        }])
        .await
        .map_err(|e| e.to_string())?;
    if !swapped {
        return Err(
            "the rekey target changed while it was being written (another rekey?): run keyvault rekey again"
                .to_owned(),
        );
    }
    Ok(())
}

/// Completes a rekey, once every stored version is sealed under the current key (the caller, `keyvault
/// rekey`, has made sure of that), in one compare-and-swap of three meta values: the key check moves to the
/// current key (from then on a server whose keys do not include it is refused, and previous keys may be
/// removed), the key ids in `retire` join the retired ones ([`KEK_RETIRED`]: no server may make them
/// current again), and the rekey target is cleared. If another process changed any of them meanwhile,
/// nothing changes (an error). Returns the key id of the check before and after.
pub async fn reseal_key_check(
    store: &dyn SecretStore,
    envelope: &crate::crypto::Envelope,
    retire: &[String],
) -> Result<(Option<String>, String), String> {
    let current = envelope.current_kek_id().to_owned();
    let meta = |key: &'static str| async move { store.meta(key).await.map_err(|e| e.to_string()) };
    let stored = meta(KEY_CHECK).await?;
    let before = match &stored {
        None => None,
        Some(stored) => {
            match envelope.open("", KEY_CHECK, "", stored) {
                Ok(text) if text.as_slice() == KEY_CHECK_TEXT => {}
                _ => return Err(wrong_key(store, envelope, stored)),
            }
            Some(
                crate::crypto::sealed_kek_id(stored)
                    .unwrap_or("unknown")
                    .to_owned(),
            )
        }
    };
    let check = if before.as_deref() == Some(current.as_str()) {
        stored.clone()
    } else {
        Some(
            envelope
                .seal("", KEY_CHECK, "", KEY_CHECK_TEXT)
                .map_err(|e| e.to_string())?,
        )
    };
    let retired_old = meta(KEK_RETIRED).await?;
    let mut retired = retired_old.as_deref().map(parse_ids).unwrap_or_default();
    if retired.contains(&current) {
        // Retired while this rekey ran (by one toward another key): completing would put the check under it.
        return Err(format!(
            "key-encryption key id {current} was retired while this rekey ran (another rekey completed): nothing \
             was completed; run `keyvault rekey` on a node whose current key is the store's"
        ));
    }
    for id in retire.iter().chain(before.iter()) {
        if *id != current && !retired.contains(id) {
            retired.push(id.clone());
        }
    }
    let retired_new = (!retired.is_empty()).then(|| retired.join(",").into_bytes());
    let target_old = meta(KEK_REKEY_TARGET).await?;
    if let Some(target) = target_old.as_deref().filter(|t| *t != current.as_bytes()) {
        return Err(format!(
            "another `keyvault rekey`, to key-encryption key id {}, started while this one ran: nothing was \
             completed; finish that one (on a node whose current key is {0})",
            String::from_utf8_lossy(target).trim()
        ));
    }
    let mut swaps = vec![MetaSwap {
        key: KEY_CHECK.to_owned(),
        expect: stored,
        set: check,
    }];
    if retired_new != retired_old {
        swaps.push(MetaSwap {
            key: KEK_RETIRED.to_owned(),
            expect: retired_old,
            set: retired_new,
        });
    }
    if target_old.is_some() {
        swaps.push(MetaSwap {
            key: KEK_REKEY_TARGET.to_owned(),
            expect: target_old,
            set: None,
        });
    }
    let swapped = store.meta_swap(swaps).await.map_err(|e| e.to_string())?;
    if !swapped {
        return Err(
            "the key check, the retired keys or the rekey target changed while the rekey completed (another \
             rekey?): run keyvault rekey again"
                .to_owned(),
        );
    }
    Ok((before, current))
}

/// After a rekey completed over a store whose [`KEK_CURRENT_ORDER`] is [`ORDER_UNRANKED`]: keys first noted
/// from here on are ranked ([`ORDER_RANKED_FROM`] is added, once). Every key the rekey found values under
/// (`seen`) joins the unranked part first: some server had it current before, so one that makes it current
/// again later must not rank it as the newest. Not part of the completing swap (a node noting its key would
/// make the completion fail): a key noted in between stays unranked, which retires less, never more.
pub async fn rank_from_here(store: &dyn SecretStore, seen: &[String]) -> StoreResult<()> {
    for _ in 0..16 {
        let Some(old) = store.meta(KEK_CURRENT_ORDER).await? else {
            return Ok(());
        };
        let mut order = parse_ids(&old);
        if order.first().map(String::as_str) != Some(ORDER_UNRANKED)
            || order.iter().any(|id| id == ORDER_RANKED_FROM)
        {
            return Ok(());
        }
        for id in seen {
            if id != "unknown" && !order.contains(id) {
                order.push(id.clone());
            }
        }
        order.push(ORDER_RANKED_FROM.to_owned());
        let swap = MetaSwap {
            key: KEK_CURRENT_ORDER.to_owned(),
            expect: Some(old),
            set: Some(order.join(",").into_bytes()),
        };
        if store.meta_swap(vec![swap]).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// Why [`check_key`] refuses these keys: the key ids, and what to change.
fn wrong_key(store: &dyn SecretStore, envelope: &crate::crypto::Envelope, sealed: &[u8]) -> String {
    let ours = envelope.current_kek_id();
    let previous = envelope.previous_kek_ids();
    let theirs = crate::crypto::sealed_kek_id(sealed).unwrap_or("unknown");
    let keys = if previous.is_empty() {
        format!("key-encryption key (id {ours})")
    } else {
        format!(
            "key-encryption key (id {ours}) and previous keys (ids {})",
            previous.join(", ")
        )
    };
    let verb = if previous.is_empty() { "is" } else { "are" };
    if envelope.knows(theirs) {
        // Sealed under a key this server holds, and still it does not open: the stored value was damaged or
        // changed outside the server (the key is not the problem).
        return format!(
            "what the store holds to check its key (its key check, or else a stored value) is sealed under key \
             id {theirs}, which this server holds, and does not open: it was damaged or changed outside the \
             server, the key is not the problem. Restore the database from a backup, or find out who wrote to it"
        );
    }
    if store.is_shared() {
        format!(
            "this node's {keys} cannot open what the other nodes of this store wrote (key id {theirs}): every \
             node over one store must hold the key the others seal with (kek_file or KEYVAULT_KEK, or a \
             previous key during a rotation)"
        )
    } else {
        format!(
            "the {keys} {verb} not the one this database was written with (key id {theirs}): start with the \
             kek_file or KEYVAULT_KEK it was written with, or list that key in previous_kek_files or \
             KEYVAULT_PREVIOUS_KEKS"
        )
    }
}

/// The id of the key-encryption key the store's values are sealed under (that of its key check, or else of
/// a stored value); None for a store that holds neither. A server whose key file is missing asks this before
/// making a new key: a store that already holds values needs the key they were sealed under.
pub async fn sealed_key_id(store: &dyn SecretStore) -> StoreResult<Option<String>> {
    let sealed = match store.meta(KEY_CHECK).await? {
        Some(check) => check,
        None => match store.any_sealed().await? {
            Some(value) => value.sealed,
            None => return Ok(None),
        },
    };
    Ok(Some(
        crate::crypto::sealed_kek_id(&sealed)
            .unwrap_or("unknown")
            .to_owned(),
    ))
}

/// The meta key under which a store keeps the millisecond that version ids made over it had reached (8 bytes,
/// big-endian): ids made after a restart with the clock set back continue after it, so a name's versions
/// still list in the order they were made (see `vault::version_id`).
pub const VERSION_CLOCK: &str = "version-clock";

/// The latest record of [`VERSION_CLOCK`] taken as sound: 2^32 ms (about 50 days) short of the 48 bits an id
/// has for its time. Ids continuing after a record take its next millisecond and stay there (their random
/// part counts on), so a record in range never brings the time bits near their end.
const VERSION_CLOCK_LAST_MS: u64 = (1 << 48) - 1 - (1 << 32);

/// How far ahead of a new version id a reservation reaches ([`reserve_version_clock`]): a set whose id passes
/// the store's record first moves the record this far past it, so under steady writes the record is written
/// about once per this long. Ids made after a restart with the clock behind carry a time up to this much
/// ahead of the last ones.
pub const VERSION_CLOCK_RESERVE: std::time::Duration = std::time::Duration::from_secs(2);

/// At start: version ids continue after the millisecond recorded in `store` (see [`VERSION_CLOCK`]). Returns
/// how far ahead of this machine's clock that is, in ms, when it is ahead. A record that cannot be read, is not
/// 8 bytes, or lies past [`VERSION_CLOCK_LAST_MS`] (ids would run out of time bits and start over at zero) is
/// only an ordering hint gone bad: it is ignored with a warning (and replaced by the next record).
pub async fn load_version_clock(store: &dyn SecretStore) -> Option<u64> {
    let value = match store.meta(VERSION_CLOCK).await {
        Ok(Some(value)) => value,
        Ok(None) => return None,
        // The store answered the reads before this one at start: a record it cannot read (one edited by
        // hand, stored as text) is a damaged hint, not a reason to stay down.
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the store's record of how far version ids have reached ({VERSION_CLOCK}) cannot be read: \
                 ignored (delete it from the store's meta table to stop this warning)"
            );
            return None;
        }
    };
    let recorded = match <[u8; 8]>::try_from(value.as_slice()).map(u64::from_be_bytes) {
        Ok(ms) if ms <= VERSION_CLOCK_LAST_MS => ms,
        _ => {
            tracing::warn!(
                bytes = value.len(),
                "the store's record of how far version ids have reached ({VERSION_CLOCK}) is damaged: ignored \
                 (the next record replaces it)"
            );
            return None;
        }
    };
    crate::vault::version_id::continue_after(recorded);
    recorded.checked_sub(crate::vault::version_id::now_ms())
}

/// Makes the store's record of how far version ids have reached (see [`VERSION_CLOCK`]) at least `until` (a
/// millisecond), keeping a larger one another node wrote: a compare-and-swap, a few tries. Returns the record
/// as it now is. Called before an id past the record is stored ([`crate::vault::Vault`]'s sets and restores),
/// so that every stored id is at or below it and a restart — after a crash too — continues after them all.
pub async fn reserve_version_clock(store: &dyn SecretStore, until: u64) -> StoreResult<u64> {
    let until = until.min(VERSION_CLOCK_LAST_MS);
    let new = until.to_be_bytes();
    for _ in 0..8 {
        let Some(old) = store.meta(VERSION_CLOCK).await? else {
            if store.meta_insert(VERSION_CLOCK, &new).await? == new {
                return Ok(until);
            }
            continue;
        };
        // A damaged record (see `load_version_clock`) counts as none: it is replaced.
        let recorded = <[u8; 8]>::try_from(old.as_slice())
            .map(u64::from_be_bytes)
            .ok()
            .filter(|ms| *ms <= VERSION_CLOCK_LAST_MS)
            .unwrap_or(0);
        if recorded >= until {
            return Ok(recorded);
        }
        if store.meta_replace(VERSION_CLOCK, &old, &new).await? {
            return Ok(until);
        }
    }
    Err(StoreError::Unavailable(
        "the record of how far version ids have reached kept changing under this node".into(),
    ))
}

fn purge_protection_key(vault: &str) -> String {
    format!("purge-protection:{vault}")
}

/// Keeps purge protection on once it has been turned on, as Key Vault does (enabling it cannot be undone).
/// A server started with it records that in the store (over a shared store, for every node); one started
/// without it over a store holding that record refuses to start, instead of letting secrets deleted under
/// protection be purged.
pub async fn check_purge_protection(
    store: &dyn SecretStore,
    vault: &str,
    enabled: bool,
) -> Result<(), String> {
    let key = purge_protection_key(vault);
    if enabled {
        store
            .meta_insert(&key, b"enabled")
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    if purge_protection_recorded(store, vault)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!(
            "purge protection was enabled on this vault and cannot be turned off (vault {vault}): start \
             with purge_protection = true (--purge-protection)"
        ));
    }
    Ok(())
}

/// Whether another server over this store turned purge protection on for `vault` after this one started: a
/// node started without it must not purge what the vault now protects (read at each purge; purges are rare).
pub async fn purge_protection_recorded(store: &dyn SecretStore, vault: &str) -> StoreResult<bool> {
    Ok(store.meta(&purge_protection_key(vault)).await?.is_some())
}

/// The access-control document shared through a store, as opaque bytes, with its revision (incremented
/// by every change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessDoc {
    pub revision: i64,
    pub doc: Vec<u8>,
}

/// Tags as the stores keep them: JSON text (None: no tags).
pub(crate) fn tags_json(tags: &Option<Tags>) -> StoreResult<Option<String>> {
    tags.as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Internal(format!("cannot encode tags: {e}")))
}

/// Tags back from their stored JSON text.
pub(crate) fn tags_from_json(json: Option<String>) -> serde_json::Result<Option<Tags>> {
    json.map(|j| serde_json::from_str::<Tags>(&j)).transpose()
}

/// The name key of a name: names compare case-insensitively (ASCII).
pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// What every backend checks before a restore: at least one version, one name, no repeated version id.
/// Returns the latest version (the last) and the name key.
pub(crate) fn check_restore(versions: &[VersionRow]) -> StoreResult<(&VersionRow, String)> {
    let Some(latest) = versions.last() else {
        return Err(StoreError::Internal(
            "nothing to restore: no versions".into(),
        ));
    };
    let key = name_key(&latest.name);
    if versions.iter().any(|v| name_key(&v.name) != key) {
        return Err(StoreError::Internal(
            "the versions to restore belong to different names".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if !versions.iter().all(|v| seen.insert(v.version.as_str())) {
        return Err(StoreError::Internal(
            "the versions to restore repeat a version id".into(),
        ));
    }
    Ok((latest, key))
}
