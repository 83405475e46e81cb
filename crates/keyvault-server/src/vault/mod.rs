//! The vault domain: versions, latest, soft delete, recover, purge, retention sweep, backup and restore.
//!
//! It speaks in names, versions and attributes; it knows nothing about HTTP. Values are sealed by
//! [`crate::crypto::Envelope`] before they reach the [`SecretStore`] and opened only on the way out.

mod backup;
pub use backup::MAX_BACKUP_BLOB_BYTES;
pub mod clock;
pub(crate) mod version_id;

use crate::crypto::Envelope;
use crate::store::{
    DeletedRow, PAST_EVERY_KEY, SecretStore, StoreError, Tags, VersionPatch, VersionRow,
};
use keyvault_types::rules::{self, name_key};
use keyvault_types::{DeletionRecoveryLevel, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use clock::{Clock, ManualClock, SystemClock};
pub use version_id::new_version;

/// How this vault treats deleted secrets.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// The vault's name: part of every value's associated data, so values cannot move between vaults.
    pub name: String,
    /// Days a deleted secret stays recoverable (7–90).
    pub retention_days: u32,
    /// When on, deleted secrets cannot be purged before their retention ends.
    pub purge_protection: bool,
}

/// What can go wrong in a vault operation. The HTTP layer maps each to a status and Key Vault error code.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("secret {name} not found")]
    NotFound { name: String },
    #[error("deleted secret {name} not found")]
    DeletedNotFound { name: String },
    #[error("secret {name} is disabled")]
    Disabled { name: String },
    #[error("secret {name} is deleted but recoverable")]
    DeletedButRecoverable { name: String },
    #[error("restore conflict for {name}/{version}")]
    RestoreConflict { name: String, version: String },
    /// Purge refused: purge protection is on for the vault (named for Key Vault's message).
    #[error("purge protection is on")]
    PurgeProtected { vault: String },
    /// A restore blob that does not open: not made by this vault's key, altered, or not a backup at all.
    #[error("malformed backup blob")]
    MalformedBackup,
    #[error("{0}")]
    BadParameter(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// This node's current key-encryption key was retired by `keyvault rekey`: it seals no new value.
    #[error("{0}")]
    KeyRetired(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type VaultResult<T> = Result<T, VaultError>;

impl VaultError {
    /// A secret, or one version of it, that does not exist: Key Vault's 404 names `name/version` for a
    /// version.
    pub fn not_found(name: &str, version: Option<&str>) -> Self {
        let name = match version {
            Some(version) => format!("{name}/{version}"),
            None => name.to_string(),
        };
        VaultError::NotFound { name }
    }
}

/// A failure to seal a value: a retired key is the node's configuration, not an internal error.
pub(crate) fn seal_error(e: crate::crypto::CryptoError) -> VaultError {
    match e {
        crate::crypto::CryptoError::Retired(_) => VaultError::KeyRetired(e.to_string()),
        other => VaultError::Internal(other.to_string()),
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => VaultError::Unavailable(m),
            other => VaultError::Internal(other.to_string()),
        }
    }
}

/// One version of a secret, with its value when the operation returns one.
#[derive(Clone, Debug)]
pub struct Secret {
    pub row: VersionRow,
    pub value: Option<SecretString>,
}

/// The attributes a caller may set.
#[derive(Clone, Debug, Default)]
pub struct SecretAttributesInput {
    pub content_type: Option<String>,
    pub tags: Option<Tags>,
    pub enabled: Option<bool>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

/// A page of a listing and the cursor of the next page, if there is one.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The vault: the domain operations over a store, an envelope and a clock.
pub struct Vault {
    store: Arc<dyn SecretStore>,
    envelope: Arc<Envelope>,
    clock: Arc<dyn Clock>,
    settings: VaultSettings,
    /// Purge protection found recorded in the store without being configured here: another node over the
    /// same store turned it on (it cannot be turned off again).
    purge_protection_recorded: AtomicBool,
    /// How far the store's record of version ids' time is known to reach ([`Vault::reserve_time`]).
    clock_reserved: std::sync::atomic::AtomicU64,
    /// One reservation at a time; holds the last failed one's number and message (see [`Vault::reserve_time`]).
    clock_reserving: tokio::sync::Mutex<Option<(u64, String)>>,
    /// Reservations made (ended, either way) so far.
    clock_attempts: std::sync::atomic::AtomicU64,
}

impl Vault {
    pub fn new(
        store: Arc<dyn SecretStore>,
        envelope: Arc<Envelope>,
        clock: Arc<dyn Clock>,
        settings: VaultSettings,
    ) -> Vault {
        Vault {
            store,
            envelope,
            clock,
            settings,
            purge_protection_recorded: AtomicBool::new(false),
            clock_reserved: std::sync::atomic::AtomicU64::new(0),
            clock_reserving: tokio::sync::Mutex::new(None),
            clock_attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    /// Whether purge protection is on: configured here, or seen recorded in the store.
    pub fn purge_protection(&self) -> bool {
        self.settings.purge_protection || self.purge_protection_recorded.load(Ordering::Relaxed)
    }

    /// The recovery level this vault reports (and enforces).
    pub fn recovery_level(&self) -> DeletionRecoveryLevel {
        DeletionRecoveryLevel::for_vault(self.settings.retention_days, self.purge_protection())
    }

    /// Read whether purge protection was turned on by another node over the same store since this one
    /// started (the server does this at every sweep interval), so that this node reports it too.
    pub async fn refresh_purge_protection(&self) -> VaultResult<bool> {
        if !self.purge_protection()
            && crate::store::purge_protection_recorded(self.store.as_ref(), self.vault()).await?
        {
            self.note_purge_protection_recorded();
        }
        Ok(self.purge_protection())
    }

    fn note_purge_protection_recorded(&self) {
        if !self.purge_protection_recorded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                vault = %self.settings.name,
                "purge protection was turned on for this vault by another server over the same store: \
                 purges are refused from now on; configure purge_protection = true here too"
            );
        }
    }

    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// The envelope values are sealed with.
    pub fn envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    fn vault(&self) -> &str {
        &self.settings.name
    }

    /// Before a version id whose time is `ms` is stored: the store's record of how far ids have reached is at
    /// or past it ([`crate::store::reserve_version_clock`], [`crate::store::VERSION_CLOCK_RESERVE`] ahead),
    /// so that a restart — after a crash, with the clock set back — continues after every stored id. A set
    /// checks an atomic; about once per reserve, one set writes the record first.
    ///
    /// While the store cannot be reached, the sets waiting for a reservation do not try again one after
    /// another (each taking the store's whole timeout: N waiting sets answered after N timeouts): a set whose
    /// wait saw a reservation fail is answered with that failure.
    pub(crate) async fn reserve_time(&self, ms: u64) -> VaultResult<()> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        if ms <= self.clock_reserved.load(Acquire) {
            return Ok(());
        }
        let before = self.clock_attempts.load(Acquire);
        let mut turn = self.clock_reserving.lock().await;
        if ms <= self.clock_reserved.load(Acquire) {
            return Ok(());
        }
        if let Some((attempt, message)) = turn.as_ref()
            && *attempt > before
        {
            return Err(VaultError::Unavailable(message.clone()));
        }
        // Past the id, and a reserve past the clock: writes come about once per reserve under steady sets,
        // while ids pinned ahead of a clock that is behind (after a restart) move the record no further than
        // they are (a record that moved a reserve past each quick restart's first id ran away).
        let reserve = u64::try_from(crate::store::VERSION_CLOCK_RESERVE.as_millis()).unwrap_or(0);
        let until = ms.max(version_id::now_ms().saturating_add(reserve));
        let result = crate::store::reserve_version_clock(self.store.as_ref(), until).await;
        let attempt = self.clock_attempts.fetch_add(1, AcqRel) + 1;
        let recorded = match result {
            Ok(recorded) => {
                *turn = None;
                self.clock_reserved.fetch_max(recorded, AcqRel);
                recorded
            }
            Err(e) => {
                let e = VaultError::from(e);
                if let VaultError::Unavailable(message) = &e {
                    *turn = Some((attempt, message.clone()));
                }
                return Err(e);
            }
        };
        // A record cannot pass the last millisecond ids may carry (`reserve_version_clock` stops there, about
        // 50 days short of the year 10889): an id past it is not stored.
        if recorded < ms {
            return Err(VaultError::Unavailable(
                "version ids have reached the end of their time range (the clock is near the year 10889)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// Add a new version of `name` holding `value`; it becomes the latest.
    pub async fn set(
        &self,
        name: &str,
        value: SecretString,
        attrs: SecretAttributesInput,
    ) -> VaultResult<Secret> {
        self.set_as(name, new_version(), value, attrs).await
    }

    /// [`Vault::set`], the new version's id made by the caller ([`new_version`]), who can then name it
    /// before the write is done (an audit line of a change whose client went away).
    pub async fn set_as(
        &self,
        name: &str,
        version: String,
        value: SecretString,
        attrs: SecretAttributesInput,
    ) -> VaultResult<Secret> {
        check_name(name)?;
        check_value(&value)?;
        check_attributes(&attrs)?;
        if let Some(ms) = rules::time_ordered_version_ms(&version) {
            self.reserve_time(ms).await?;
        }
        let now = self.now();
        let sealed = self
            .envelope
            .seal(
                self.vault(),
                &name_key(name),
                &version,
                value.expose().as_bytes(),
            )
            .map_err(seal_error)?;
        let row = VersionRow {
            name: name.to_string(),
            version,
            sealed,
            content_type: attrs.content_type,
            tags: attrs.tags,
            enabled: attrs.enabled.unwrap_or(true),
            nbf: attrs.nbf,
            exp: attrs.exp,
            created: now,
            updated: now,
        };
        match self.store.put_version(self.vault(), row.clone()).await {
            Ok(()) => Ok(Secret {
                row,
                value: Some(value),
            }),
            Err(StoreError::Deleted) => Err(VaultError::DeletedButRecoverable {
                name: name.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// A version of `name` (the latest when `version` is None), with its value.
    pub async fn get(&self, name: &str, version: Option<&str>) -> VaultResult<Secret> {
        let row = self.find(name, version).await?;
        if !row.enabled {
            return Err(VaultError::Disabled { name: row.name });
        }
        if version.is_some_and(|v| !v.is_empty() && !row.version.eq_ignore_ascii_case(v)) {
            return Err(VaultError::Internal(format!(
                "the stored row for {name}/{} is labelled version {}: the store was changed outside the server",
                version.unwrap_or_default(),
                row.version
            )));
        }
        let value = self.open(name, &row)?;
        Ok(Secret {
            row,
            value: Some(value),
        })
    }

    async fn find(&self, name: &str, version: Option<&str>) -> VaultResult<VersionRow> {
        check_name(name)?;
        let lower = version.map(str::to_ascii_lowercase);
        self.store
            .get_version(self.vault(), name, lower.as_deref())
            .await?
            .ok_or_else(|| VaultError::not_found(name, version))
    }

    /// The value of `row`, read for the secret `name`. The value is opened bound to the name that was asked
    /// for (and authorised), never to the name the row says it has: a row moved or relabelled under another
    /// name outside the server (by a writer of the store, who has no key) is refused, not served as this one.
    fn open(&self, name: &str, row: &VersionRow) -> VaultResult<SecretString> {
        if !row.name.eq_ignore_ascii_case(name) {
            return Err(VaultError::Internal(format!(
                "the stored row for {name}/{} is labelled {}: the store was changed outside the server",
                row.version, row.name
            )));
        }
        let plain = self
            .envelope
            .open(self.vault(), &name_key(name), &row.version, &row.sealed)
            .map_err(|e| {
                VaultError::Internal(format!("cannot open {}/{}: {e}", row.name, row.version))
            })?;
        let text = std::str::from_utf8(&plain).map_err(|_| {
            VaultError::Internal(format!("{}/{} is not UTF-8", row.name, row.version))
        })?;
        Ok(SecretString::new(text))
    }

    /// Change the given attributes of one version (the latest when `version` is None).
    pub async fn update(
        &self,
        name: &str,
        version: Option<&str>,
        attrs: SecretAttributesInput,
    ) -> VaultResult<Secret> {
        check_name(name)?;
        check_attributes(&attrs)?;
        let patch = VersionPatch {
            content_type: attrs.content_type,
            tags: attrs.tags,
            enabled: attrs.enabled,
            nbf: attrs.nbf,
            exp: attrs.exp,
            updated: self.now(),
        };
        let lower = version.map(str::to_ascii_lowercase);
        let row = self
            .store
            .update_version(self.vault(), name, lower.as_deref(), patch)
            .await?
            .ok_or_else(|| VaultError::not_found(name, version))?;
        Ok(Secret { row, value: None })
    }

    /// Live secrets, each as its latest version, after the cursor `after`. With `visible`, only the names it
    /// allows (see [`Vault::scan`]).
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        visible: Option<Visible<'_>>,
    ) -> VaultResult<Page<VersionRow>> {
        let vault = self.vault();
        let store = &self.store;
        self.scan(
            "secrets",
            after,
            limit,
            visible,
            |r: &VersionRow| &r.name,
            |after, until, n| async move {
                store
                    .list_latest_upto(vault, after.as_deref(), &until, n)
                    .await
            },
        )
        .await
    }

    /// The versions of a live secret sorted by version id, as Key Vault lists them (oldest first for the ids
    /// this server makes). The cursor is the last version id of the previous page. An unknown name gives an
    /// empty page.
    pub async fn list_versions(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> VaultResult<Page<VersionRow>> {
        check_name(name)?;
        let after = match after {
            Some(s) if rules::is_valid_version(s) => Some(s.to_ascii_lowercase()),
            Some(_) => return Err(bad_skiptoken()),
            None => None,
        };
        let mut rows = self
            .store
            .list_versions(self.vault(), name, after.as_deref(), limit + 1)
            .await?;
        let next = next_cursor(&mut rows, limit, |r| r.version.clone());
        Ok(Page { items: rows, next })
    }

    /// Soft-delete a secret: all its versions leave the live listings until recovered or purged.
    pub async fn delete(&self, name: &str) -> VaultResult<DeletedRow> {
        check_name(name)?;
        let now = self.now();
        let purge_at = now + i64::from(self.settings.retention_days) * 86_400;
        self.store
            .soft_delete(self.vault(), name, now, purge_at)
            .await?
            .ok_or_else(|| VaultError::NotFound {
                name: name.to_string(),
            })
    }

    /// A deleted secret (its latest version's attributes, never a value). As in Key Vault, a deleted secret
    /// whose latest version is disabled is refused like a GET of that version (403 `SecretDisabled`); it is
    /// still listed, recovered and purged (the SDKs' delete pollers take the 403 as "deleted").
    pub async fn get_deleted(&self, name: &str) -> VaultResult<DeletedRow> {
        check_name(name)?;
        let row = self
            .store
            .get_deleted(self.vault(), name)
            .await?
            .ok_or_else(|| VaultError::DeletedNotFound {
                name: name.to_string(),
            })?;
        if !row.latest.enabled {
            return Err(VaultError::Disabled {
                name: row.latest.name,
            });
        }
        Ok(row)
    }

    /// Deleted secrets after the cursor `after`; with `visible`, only the names it allows.
    pub async fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
        visible: Option<Visible<'_>>,
    ) -> VaultResult<Page<DeletedRow>> {
        let vault = self.vault();
        let store = &self.store;
        self.scan(
            "deletedsecrets",
            after,
            limit,
            visible,
            |r: &DeletedRow| &r.latest.name,
            |after, until, n| async move {
                store
                    .list_deleted_upto(vault, after.as_deref(), &until, n)
                    .await
            },
        )
        .await
    }

    /// One page of a listing in name order. For a caller who may see every name (`visible` = `None`) the
    /// cursor is the last name of the page, as it is. For a caller who may see only some names, hidden
    /// names must not show, through the page, its cursor or whether it has one, and pages should not come
    /// back empty for every hidden name in a row. The scan reads the visible stretches of the name order
    /// one after the other, each store call bounded by its stretch's end ([`Stretch`]), so no hidden row is
    /// read at all; it stops after [`SCAN_BUDGET`] rows or [`SCAN_CALLS`] store calls with what it has (both
    /// counted over visible rows and stretches only). The cursor is sealed (opaque, authenticated, and bound
    /// to the listing and to the names its caller may see: such a caller cannot start a listing anywhere but
    /// where a page of a listing with the same view ended, so another principal's cursor tells it nothing);
    /// it holds the last name listed or, when a page stopped between stretches, the end of the last stretch
    /// read.
    async fn scan<T, Fut>(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: usize,
        visible: Option<Visible<'_>>,
        name_of: impl Fn(&T) -> &str,
        fetch: impl Fn(Option<String>, String, usize) -> Fut,
    ) -> VaultResult<Page<T>>
    where
        Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
    {
        let binding = cursor_binding(kind, visible);
        let kind = binding.as_str();
        let after = match after {
            None => None,
            Some(t) => Some(match t.strip_prefix(SEALED_CURSOR) {
                Some(sealed) => self
                    .envelope
                    .open_cursor(kind, sealed)
                    .map(|c| c.trim_end_matches('\0').to_string())
                    .filter(|c| is_scan_position(c))
                    .ok_or_else(bad_skiptoken)?,
                None if visible.is_none() => parse_name_cursor(t)?,
                None => return Err(bad_skiptoken()),
            }),
        };
        let Some(visible) = visible else {
            let mut rows = fetch(after, PAST_EVERY_KEY.to_string(), limit + 1).await?;
            let next = next_cursor(&mut rows, limit, |r| name_key(name_of(r)));
            return Ok(Page { items: rows, next });
        };
        let stretches = Stretch::all(visible);
        let mut items = Vec::new();
        let (mut scanned, mut calls) = (0, 0);
        // Everything up to `at` has been listed (a name key, or a stretch's end).
        let mut at = after;
        while let Some(stretch) = stretches.iter().find(|s| s.goes_past(at.as_deref())) {
            if scanned >= SCAN_BUDGET || calls >= SCAN_CALLS {
                // More stretches to read: the next page goes on from here (`at` is set by the first call).
                let next = at.map(|k| self.seal_cursor(kind, &k)).transpose()?;
                return Ok(Page { items, next });
            }
            let from = match at {
                Some(a) if a.as_str() >= stretch.first.as_str() => Some(a),
                _ => just_before(&stretch.first),
            };
            // Rows of a stretch are all visible: ask for what the page still needs, and one more.
            let batch = limit + 1 - items.len();
            let rows = fetch(from, stretch.last.clone(), batch).await?;
            scanned += rows.len();
            calls += 1;
            at = match rows.last() {
                Some(row) if rows.len() == batch => Some(name_key(name_of(row))),
                _ => Some(stretch.last.clone()),
            };
            for row in rows {
                if !visible.iter().any(|r| r.covers(name_of(&row))) {
                    continue;
                }
                if items.len() == limit {
                    // One more visible name: there is a next page, and it starts after this page's last.
                    let key = items.last().map(|r| name_key(name_of(r)));
                    return Ok(Page {
                        next: key.map(|k| self.seal_cursor(kind, &k)).transpose()?,
                        items,
                    });
                }
                items.push(row);
            }
        }
        Ok(Page { items, next: None })
    }

    fn seal_cursor(&self, kind: &str, cursor: &str) -> VaultResult<String> {
        // Padded to the longest name: the cursor's length must not tell how long the name it holds is.
        let mut padded = String::with_capacity(rules::MAX_NAME_CHARS);
        padded.push_str(cursor);
        padded.extend(std::iter::repeat_n(
            '\0',
            rules::MAX_NAME_CHARS.saturating_sub(cursor.len()),
        ));
        let sealed = self
            .envelope
            .seal_cursor(kind, &padded)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        Ok(format!("{SEALED_CURSOR}{sealed}"))
    }

    /// Make a deleted secret live again, with all its versions. Returns its latest version. A name with no
    /// deleted secret gets Key Vault's answer for it: the plain "secret not found" (recorded in 2022), not the
    /// "Deleted Secret not found" of a GET or purge.
    pub async fn recover(&self, name: &str) -> VaultResult<VersionRow> {
        check_name(name)?;
        self.store
            .recover(self.vault(), name)
            .await?
            .ok_or_else(|| VaultError::NotFound {
                name: name.to_string(),
            })
    }

    /// Remove a deleted secret for good. Refused while purge protection is on.
    pub async fn purge(&self, name: &str) -> VaultResult<()> {
        check_name(name)?;
        if self.store.get_deleted(self.vault(), name).await?.is_none() {
            return Err(VaultError::DeletedNotFound {
                name: name.to_string(),
            });
        }
        if self.purge_protection() {
            return Err(VaultError::PurgeProtected {
                vault: self.settings.name.clone(),
            });
        }
        if crate::store::purge_protection_recorded(self.store.as_ref(), self.vault()).await? {
            self.note_purge_protection_recorded();
            return Err(VaultError::PurgeProtected {
                vault: self.settings.name.clone(),
            });
        }
        if self.store.purge(self.vault(), name).await? {
            Ok(())
        } else {
            Err(VaultError::DeletedNotFound {
                name: name.to_string(),
            })
        }
    }

    /// Purge every deleted secret whose retention has ended. Returns how many were purged.
    pub async fn sweep(&self) -> VaultResult<u64> {
        Ok(self.store.purge_expired(self.now()).await?)
    }
}

/// Which names a caller may see in a listing: those in any of these ranges.
pub type Visible<'a> = &'a [NameRange];

/// What a listing's sealed cursor is bound to (its associated data): the listing (`kind`) and, for a caller
/// who may see only some names, those names' ranges in one order and case (the same view, however its
/// assignments list it, gives the same binding). A cursor handed out under one view does not open under
/// another: a principal given another's `nextLink` gets a 400, not a position among names it may not see. A
/// caller whose view changes mid-listing starts it again.
fn cursor_binding(kind: &str, visible: Option<Visible<'_>>) -> String {
    let Some(visible) = visible else {
        return kind.to_owned();
    };
    let mut ranges: Vec<String> = visible
        .iter()
        .map(|r| match r {
            NameRange::Name(n) => format!("n:{}", n.to_ascii_lowercase()),
            NameRange::Prefix(p) => format!("p:{}", p.to_ascii_lowercase()),
        })
        .collect();
    ranges.sort_unstable();
    ranges.dedup();
    let mut binding = String::from(kind);
    for r in ranges {
        // Names and prefixes hold no NUL (names are letters, digits and dashes).
        binding.push('\0');
        binding.push_str(&r);
    }
    binding
}

/// A stretch of the name order: one name, or every name that starts with a prefix. Held lowercase (name
/// keys); names of any case match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameRange {
    Name(String),
    Prefix(String),
}

impl NameRange {
    /// Whether the range holds `name` (any case).
    pub fn covers(&self, name: &str) -> bool {
        match self {
            NameRange::Name(n) => n.eq_ignore_ascii_case(name),
            NameRange::Prefix(p) => name
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
        }
    }
}

/// A stretch of the name-key order that a filtered listing reads in one go: the keys from `first` to `last`
/// (both included), every one of them visible. Ranges that overlap (a prefix inside another, a name under a
/// prefix) make one stretch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stretch {
    first: String,
    last: String,
}

impl Stretch {
    /// The stretches `ranges` cover, in key order, apart from each other.
    fn all(ranges: &[NameRange]) -> Vec<Stretch> {
        let mut each: Vec<Stretch> = ranges
            .iter()
            .map(|r| match r {
                NameRange::Name(k) => Stretch {
                    first: k.clone(),
                    last: k.clone(),
                },
                // Every key that starts with the prefix, and no other, sorts from it to it + `\x7f`.
                NameRange::Prefix(p) => Stretch {
                    first: p.clone(),
                    last: format!("{p}{PAST_EVERY_KEY}"),
                },
            })
            .collect();
        each.sort_unstable_by(|a, b| a.first.cmp(&b.first));
        let mut merged: Vec<Stretch> = Vec::with_capacity(each.len());
        for s in each {
            match merged.last_mut() {
                Some(m) if s.first <= m.last => {
                    if s.last > m.last {
                        m.last = s.last;
                    }
                }
                _ => merged.push(s),
            }
        }
        merged
    }

    /// Whether the stretch holds a key after `at` (anything, for `None`).
    fn goes_past(&self, at: Option<&str>) -> bool {
        at.is_none_or(|a| a < self.last.as_str())
    }
}

/// What a sealed cursor may hold: a name key, or a stretch's end (a prefix and `\x7f`).
fn is_scan_position(c: &str) -> bool {
    rules::is_valid_name(c.strip_suffix(PAST_EVERY_KEY).unwrap_or(c))
}

/// A bound that sorts before `key` and after every name key that sorts before `key` (name keys are ASCII
/// below `\x7f`). `None` (the start of the listing) for the empty key.
fn just_before(key: &str) -> Option<String> {
    let (&last, _) = key.as_bytes().split_last()?;
    let mut bound = key[..key.len() - 1].to_string();
    bound.push(char::from(last.checked_sub(1)?));
    bound.push('\x7f');
    Some(bound)
}

/// Marks a sealed cursor (`_` is not a name character, and is URL-safe base64's).
const SEALED_CURSOR: &str = "_";
/// Rows a filtered listing reads at most for one page before it returns what it has.
const SCAN_BUDGET: usize = 1000;
/// Store calls a filtered listing makes at most for one page (one per range it crosses, about).
const SCAN_CALLS: usize = 50;

fn next_cursor<T>(
    rows: &mut Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(cursor)
    } else {
        None
    }
}

fn parse_name_cursor(s: &str) -> VaultResult<String> {
    if rules::is_valid_name(s) {
        Ok(name_key(s))
    } else {
        Err(bad_skiptoken())
    }
}

fn bad_skiptoken() -> VaultError {
    VaultError::BadParameter("The $skiptoken parameter is not valid.".to_string())
}

pub(crate) fn check_name(name: &str) -> VaultResult<()> {
    if rules::is_valid_name(name) {
        Ok(())
    } else {
        Err(VaultError::BadParameter(format!(
            "The request URI contains an invalid name: {}",
            printable(name)
        )))
    }
}

/// A name as it may appear in a message: printable ASCII only, bounded in length.
fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn check_value(value: &SecretString) -> VaultResult<()> {
    if value.len() > rules::MAX_VALUE_BYTES {
        return Err(VaultError::BadParameter(format!(
            "The secret value is too large: {} bytes; the maximum is {} bytes.",
            value.len(),
            rules::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}

pub(crate) fn check_attributes(attrs: &SecretAttributesInput) -> VaultResult<()> {
    // A NUL character: PostgreSQL's text cannot hold one, so neither store takes it (the same answer on both).
    let has_nul = |s: &str| s.contains('\0');
    if attrs.content_type.as_deref().is_some_and(has_nul)
        || attrs
            .tags
            .as_ref()
            .is_some_and(|t| t.iter().any(|(k, v)| has_nul(k) || has_nul(v)))
    {
        return Err(VaultError::BadParameter(
            "The content type and tags cannot contain a NUL character (U+0000).".to_string(),
        ));
    }
    if let Some(ct) = &attrs.content_type
        && ct.chars().count() > rules::MAX_CONTENT_TYPE_CHARS
    {
        return Err(VaultError::BadParameter(format!(
            "The content type is too long; the maximum is {} characters.",
            rules::MAX_CONTENT_TYPE_CHARS
        )));
    }
    if let Some(tags) = &attrs.tags {
        if tags.len() > rules::MAX_TAGS {
            return Err(VaultError::BadParameter(format!(
                "Too many tags: {}; the maximum is {}.",
                tags.len(),
                rules::MAX_TAGS
            )));
        }
        for (k, v) in tags {
            if k.is_empty() || k.chars().count() > rules::MAX_TAG_NAME_CHARS {
                return Err(VaultError::BadParameter(format!(
                    "Tag names must be 1 to {} characters long.",
                    rules::MAX_TAG_NAME_CHARS
                )));
            }
            if v.chars().count() > rules::MAX_TAG_VALUE_CHARS {
                return Err(VaultError::BadParameter(format!(
                    "Tag values must be at most {} characters long.",
                    rules::MAX_TAG_VALUE_CHARS
                )));
            }
        }
    }
    // Dates a client can hold: Key Vault's service and SDKs keep them as calendar dates of years 1–9999 (.NET's
    // `DateTime`, Python's `datetime`); one past them would break every listing that includes the secret.
    for (field, at) in [("nbf", attrs.nbf), ("exp", attrs.exp)] {
        if let Some(at) = at
            && !(MIN_DATE..=MAX_DATE).contains(&at)
        {
            return Err(VaultError::BadParameter(format!(
                "The attribute '{field}' is out of range: a Unix time from {MIN_DATE} (year 1) to {MAX_DATE} (year 9999) is expected."
            )));
        }
    }
    Ok(())
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z as Unix times.
const MIN_DATE: i64 = -62_135_596_800;
const MAX_DATE: i64 = 253_402_300_799;

#[cfg(test)]
mod tests;
