//! Re-sealing every stored value under the current key-encryption key (`keyvault rekey`), the step of a KEK
//! rotation after which the previous key can be removed.
//!
//! Every version of every vault and name, live or soft-deleted, is read in pages of its sealed value
//! ([`SecretStore::sealed_page`]). A version under a previous key is opened and sealed again under the
//! current key ([`Envelope::reseal`]: the KEK id is part of the associated data of both the data key's wrap
//! and the value's own encryption, so re-wrapping the data key alone would not do), and the page's new values
//! are written by compare and swap ([`SecretStore::replace_sealed`]): a version whose row no longer holds
//! the bytes that were read (purged, or re-made, meanwhile) is skipped, and a concurrent change of
//! attributes, a delete or a recover is never undone (only the value column changes). So on PostgreSQL it
//! runs while nodes serve; on SQLite the store's lock keeps it to when the server is stopped.
//!
//! Before its first re-seal a rekey records its target, the current key's id
//! ([`crate::store::KEK_REKEY_TARGET`]): from then on a server that does not hold that key is refused at
//! start (after an interruption, some values are under it). After the pass, a read-only pass counts the
//! versions per KEK id. If every version opened, and whatever a node wrote meanwhile is under a key these
//! keys hold, the rekey completes ([`crate::store::reseal_key_check`], one compare and swap): the key check
//! moves to the current key, the key it was under and every key servers had current before the current one
//! ([`crate::store::KEK_CURRENT_ORDER`]) are recorded as retired (a server whose
//! current key is retired is refused at start; a running PostgreSQL node learns it within
//! [`crate::store::KEK_RETIRED_POLL`] and then refuses every write that seals) and the target is cleared.
//! Over a shared store it then waits [`RETIRE_WAIT`] and re-seals, in a final pass, whatever a node still
//! wrote under a retired key (reported as `late`). Otherwise the key check stays where it was and the
//! previous key must stay configured.
//!
//! Nothing here logs, prints or returns a value or key material; the report names key ids (hash prefixes)
//! and, for versions that would not open, their vault, name and version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{Envelope, sealed_kek_id};
use crate::store::{SealedKey, SecretStore};

/// Versions read (and re-sealed) per page, unless told otherwise.
pub const DEFAULT_BATCH: usize = 256;
/// The most failures listed in a report (the count is always complete).
const MAX_LISTED_FAILURES: usize = 20;

/// How to run a rekey.
#[derive(Clone, Debug)]
pub struct RekeyOptions {
    /// Versions per page (and per compare-and-swap batch), at least 1.
    pub batch_size: usize,
    /// Count the versions per KEK id only; change nothing.
    pub dry_run: bool,
    /// Where the access-control document is, whose tag a rekey moves to the current key too.
    pub access: AccessLocation,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        RekeyOptions {
            batch_size: DEFAULT_BATCH,
            dry_run: false,
            access: AccessLocation::None,
        }
    }
}

/// Where a rekey finds the access-control document (see [`crate::admin::tagged`]).
#[derive(Clone, Debug, Default)]
pub enum AccessLocation {
    /// Nowhere (or not to be looked at).
    #[default]
    None,
    /// A file (`{data_dir}/access.json` of a SQLite vault, whose server is stopped), of the vault named.
    File(std::path::PathBuf, crate::admin::tagged::Binding),
    /// The shared store's document (re-tagged by compare and set while nodes serve), of the vault named.
    Store(crate::admin::tagged::Binding),
    /// A running server's own (an online rekey): re-saved through its admin side.
    Admin(std::sync::Arc<crate::admin::AccessAdmin>),
}

/// What a rekey found of the access-control document's tag, and did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessDocRekey {
    /// The KEK id it was tagged under before (None: there is no document). Snake case, as the rest of the
    /// report (camelCase read too, as reports before session 31 wrote it).
    #[serde(alias = "kekIdBefore")]
    pub kek_id_before: Option<String>,
    /// The KEK id it is tagged under after (in a dry run: the same).
    #[serde(alias = "kekIdAfter")]
    pub kek_id_after: Option<String>,
}

/// Where a rekey is, after each page.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RekeyProgress {
    /// Versions read so far.
    pub scanned: u64,
    /// Versions re-sealed under the current key so far (in a dry run: that would be).
    pub resealed: u64,
    /// A dry run: nothing is changed.
    pub dry_run: bool,
}

/// A version that could not be re-sealed (its value does not open: a key not configured, or damaged bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RekeyFailure {
    pub vault: String,
    pub name_key: String,
    pub version: String,
    /// The KEK id the value names ("unknown" if its header is not one this server writes).
    pub kek_id: String,
    /// Why (never key material or plaintext).
    pub error: String,
}

/// What a rekey did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RekeyReport {
    /// The key every value is re-sealed under.
    pub current_kek_id: String,
    /// The previous keys configured.
    pub previous_kek_ids: Vec<String>,
    pub dry_run: bool,
    /// Versions read in the first pass.
    pub scanned: u64,
    /// Versions per KEK id when the pass read them.
    pub before: BTreeMap<String, u64>,
    /// Versions per KEK id after the pass (a second, read-only pass; equal to `before` in a dry run).
    pub after: BTreeMap<String, u64>,
    /// Versions re-sealed under the current key (in a dry run: that would be).
    pub resealed: u64,
    /// Versions already under the current key.
    pub already_current: u64,
    /// Versions skipped because their row changed between the read and the write (purged, or re-made, by a
    /// node meanwhile; a value a node writes is under the current key once every node has it current).
    pub skipped: u64,
    /// Versions that could not be opened (the first few are listed in `failures`).
    pub failed: u64,
    pub failures: Vec<RekeyFailure>,
    /// The key id of the key check before and after (None: the store had none).
    pub key_check_before: Option<String>,
    pub key_check_after: Option<String>,
    /// The key ids this rekey recorded as retired (no server may make them current again).
    pub retired: Vec<String>,
    /// Versions found under another key by the final pass (over a shared store, after the old keys were
    /// retired): written during the rekey by a node that still had a retired key current. They are
    /// re-sealed (counted in `resealed`) or, if they do not open, in `failed`.
    pub late: u64,
    /// The access-control document's tag (None: not looked at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_document: Option<AccessDocRekey>,
}

impl RekeyReport {
    /// Every version is under the current key and so is the key check: the previous keys may be removed.
    pub fn complete(&self) -> bool {
        !self.dry_run
            && self.failed == 0
            && self.late == 0
            && self.after.keys().all(|id| *id == self.current_kek_id)
            && self.key_check_after.as_deref() == Some(self.current_kek_id.as_str())
            && !self.access_document_pending()
    }

    /// The access-control document is tagged under a key other than the current one (after the rekey; in
    /// a dry run: before it). The old key must stay configured until it is not.
    pub fn access_document_pending(&self) -> bool {
        self.access_document.as_ref().is_some_and(|a| {
            a.kek_id_after
                .as_deref()
                .is_some_and(|id| id != self.current_kek_id)
        })
    }

    /// Versions under a key other than the current one after the pass.
    pub fn remaining(&self) -> u64 {
        (self.after.iter())
            .filter(|(id, _)| **id != self.current_kek_id)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The KEK id a sealed value names, as the report shows it.
fn id_of(sealed: &[u8]) -> String {
    sealed_kek_id(sealed)
        .filter(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("unknown")
        .to_owned()
}

/// What one pass over every stored version found and did.
#[derive(Default)]
struct Pass {
    scanned: u64,
    before: BTreeMap<String, u64>,
    resealed: u64,
    already_current: u64,
    skipped: u64,
    failed: u64,
    failures: Vec<RekeyFailure>,
}

/// Re-seal every version not under the current key (with `dry_run`, count only). `progress` is called
/// after each page with the pass's totals.
async fn pass(
    store: &dyn SecretStore,
    envelope: &Envelope,
    batch: usize,
    dry_run: bool,
    only: Option<&[String]>,
    progress: &mut impl FnMut(&RekeyProgress),
) -> Result<Pass, String> {
    let current = envelope.current_kek_id().to_owned();
    let mut report = Pass::default();
    let mut after: Option<SealedKey> = None;
    loop {
        let page = store
            .sealed_page(after.as_ref(), batch)
            .await
            .map_err(|e| format!("cannot read the stored versions: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        let mut changes = Vec::new();
        for value in page {
            report.scanned += 1;
            let id = id_of(&value.sealed);
            *report.before.entry(id.clone()).or_default() += 1;
            if id == current {
                report.already_current += 1;
                continue;
            }
            if only.is_some_and(|keys| !keys.contains(&id)) {
                continue;
            }
            match envelope.reseal(&value.vault, &value.name_key, &value.version, &value.sealed) {
                Ok(new) => {
                    if dry_run {
                        report.resealed += 1;
                    } else {
                        changes.push(value.replace_with(new));
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    if report.failures.len() < MAX_LISTED_FAILURES {
                        report.failures.push(RekeyFailure {
                            vault: value.vault,
                            name_key: value.name_key,
                            version: value.version,
                            kek_id: id,
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
        if !changes.is_empty() {
            let tried = changes.len() as u64;
            let replaced = store
                .replace_sealed(changes)
                .await
                .map_err(|e| format!("cannot write re-sealed versions: {e}"))?;
            report.resealed += replaced;
            report.skipped += tried.saturating_sub(replaced);
        }
        progress(&RekeyProgress {
            scanned: report.scanned,
            resealed: report.resealed,
            dry_run,
        });
    }
    Ok(report)
}

/// How long a rekey over a shared store waits, after it retired the old keys, before its final pass: longer
/// than a node's poll ([`crate::store::KEK_RETIRED_POLL`]), so that every node serving has learnt that its
/// key was retired (and refuses to seal) and the writes it sealed before then have landed.
pub const RETIRE_WAIT: std::time::Duration = crate::store::KEK_RETIRED_POLL
    .saturating_mul(2)
    .saturating_add(std::time::Duration::from_secs(1));

/// Re-seal every version not under the current key (see the module documentation). `progress` is called
/// after each page. Errors are the store's (or a key check that none of the keys opens, or a current key a
/// rekey retired); versions that do not open are counted in the report, and leave the key check where it was.
pub async fn rekey(
    store: &dyn SecretStore,
    envelope: &Envelope,
    options: &RekeyOptions,
    mut progress: impl FnMut(&RekeyProgress),
) -> Result<RekeyReport, String> {
    let batch = options.batch_size.max(1);
    let current = envelope.current_kek_id().to_owned();
    // The keys must open the store's key check, as at a server's start, and the current key must not be
    // a retired one.
    let key_check_before = crate::store::verify_key_check(store, envelope).await?;
    if !options.dry_run {
        // Before the first re-seal: a server without the target key is refused from now on.
        crate::store::begin_rekey(store, envelope).await?;
    }
    let access = retag_access(store, envelope, &options.access, options.dry_run).await?;
    let first = pass(store, envelope, batch, options.dry_run, None, &mut progress).await?;
    let mut report = RekeyReport {
        current_kek_id: current.clone(),
        previous_kek_ids: (envelope.previous_kek_ids().iter())
            .map(|s| s.to_string())
            .collect(),
        dry_run: options.dry_run,
        scanned: first.scanned,
        after: BTreeMap::new(),
        resealed: first.resealed,
        already_current: first.already_current,
        skipped: first.skipped,
        failed: first.failed,
        failures: first.failures,
        key_check_before: key_check_before.clone(),
        key_check_after: key_check_before.clone(),
        retired: Vec::new(),
        late: 0,
        before: first.before,
        access_document: access,
    };
    if options.dry_run {
        report.after = report.before.clone();
        return Ok(report);
    }
    report.after = count_per_key(store, batch).await?;
    // Versions left under another key after the pass were written meanwhile (by a node that still seals
    // under an old key): if these keys open them, the final pass below re-seals them; if not (or if the
    // pass found versions that do not open), the rekey stops here and the key check stays where it is.
    let unopenable = (report.after.keys()).any(|id| *id != current && !envelope.knows(id));
    if report.failed != 0 || unopenable {
        return Ok(report);
    }
    // When the check moves, every key the rotation moves away from is retired: the key the check was under,
    // and every key servers had current before this one (in the order kept since servers note their current
    // key: K1 -> K2 -> K3 with no rekey between leaves the check under K1, and K2 is retired with it). A key
    // the store holds values under that is neither retired nor older is newer: another node seals under it as
    // its current key (a rotation toward it is under way, and this node has not made it current yet), or its
    // place is unknown (noted before a rekey completed over a store used before the order was kept). The
    // pass re-sealed those values under this node's key, which every node holds; that key is not retired (it
    // would stop that node's writes, and no node could ever make it current). When the check already is
    // under this node's key, nothing is.
    let order = crate::store::note_current_key(store, envelope).await?;
    let moves = key_check_before.as_deref().is_some_and(|id| id != current);
    let older = crate::store::keys_ranked_before(&order, &current);
    let retire: Vec<String> = (key_check_before.iter())
        .chain(older.iter().filter(|_| moves))
        .filter(|id| **id != current && id.as_str() != "unknown")
        .fold(Vec::new(), |mut ids, id| {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
            ids
        });
    let retired_before = crate::store::kek_retired(store)
        .await
        .map_err(|e| format!("cannot read the retired keys: {e}"))?;
    let newer: Vec<&String> = (report.before.keys())
        .chain(report.after.keys())
        .filter(|id| {
            **id != current
                && id.as_str() != "unknown"
                && !retire.contains(id)
                && !retired_before.contains(id)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !newer.is_empty() {
        tracing::warn!(
            kek_id = %current,
            other_kek_ids = ?newer,
            "values were sealed under keys that are neither retired nor older than this node's current key: \
             another node seals under one as its current key (a rotation toward it under way?); they were \
             re-sealed under this node's key and are not retired; to rotate toward one, run `keyvault rekey` on \
             a node whose current key it is"
        );
    }
    let (_, now) = crate::store::reseal_key_check(store, envelope, &retire).await?;
    let seen: Vec<String> = (report.before.keys())
        .chain(report.after.keys())
        .filter(|id| **id != current)
        .cloned()
        .collect();
    if let Err(e) = crate::store::rank_from_here(store, &seen).await {
        tracing::warn!(error = %e, "the order of current keys could not be marked as ranked from here");
    }
    report.key_check_after = Some(now);
    report.retired = retire.clone();
    // What a node still sealing under a retired key wrote behind the pass (or after the count) is re-sealed
    // in a final pass, once every node has learnt that its key was retired (it polls). Only values under the
    // keys just retired: a value under a newer key is another node's current work (a rekey toward that key
    // may be running by now), and nothing was retired when the check already was under this node's key.
    if !retire.is_empty() && (store.is_shared() || report.remaining() > 0) {
        if store.is_shared() {
            tokio::time::sleep(RETIRE_WAIT).await;
        }
        let last = pass(store, envelope, batch, false, Some(&retire), &mut progress).await?;
        report.late = last.resealed + last.skipped + last.failed;
        report.resealed += last.resealed;
        report.skipped += last.skipped;
        report.failed += last.failed;
        for f in last.failures {
            if report.failures.len() < MAX_LISTED_FAILURES {
                report.failures.push(f);
            }
        }
        report.after = count_per_key(store, batch).await?;
        // A node that had not yet learnt that its key was retired may have tagged a change under it too.
        if store.is_shared() {
            let late = retag_access(store, envelope, &options.access, false).await?;
            if let (Some(first), Some(late)) = (&mut report.access_document, late) {
                first.kek_id_after = late.kek_id_after;
            }
        }
    }
    Ok(report)
}

/// Re-tags the access-control document under the current key if it is tagged under another (`dry_run`:
/// only says which). A document that does not verify (or has no tag) stops the rekey: it is refused at every
/// start anyway, and re-tagging it would make it look genuine.
async fn retag_access(
    store: &dyn SecretStore,
    envelope: &Envelope,
    location: &AccessLocation,
    dry_run: bool,
) -> Result<Option<AccessDocRekey>, String> {
    let what = "the access-control document";
    let current = envelope.current_kek_id().to_owned();
    let verified = |binding: &crate::admin::tagged::Binding,
                    bytes: &[u8],
                    revision: Option<i64>,
                    origin: &str| {
        crate::admin::tagged::unwrap(envelope, binding, bytes, revision, origin)
            .map_err(|e| format!("{what} cannot be re-tagged: {}", e.at_start(origin)))
    };
    match location {
        AccessLocation::None => Ok(None),
        AccessLocation::Admin(admin) => {
            let (kek_id_before, kek_id_after) = admin
                .retag(dry_run)
                .await
                .map_err(|e| format!("{what} cannot be re-tagged: {e}"))?;
            Ok(Some(AccessDocRekey {
                kek_id_before,
                kek_id_after,
            }))
        }
        AccessLocation::File(path, binding) => {
            let origin = path.display().to_string();
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Some(AccessDocRekey::default()));
                }
                Err(e) => return Err(format!("cannot read {origin}: {e}")),
            };
            let doc = verified(binding, &bytes, None, &origin)?;
            let before = Some(doc.kek_id.clone());
            if dry_run || doc.kek_id == current {
                return Ok(Some(AccessDocRekey {
                    kek_id_before: before.clone(),
                    kek_id_after: before,
                }));
            }
            let stored =
                crate::admin::tagged::wrap(envelope, binding, doc.revision, &doc.document, true)
                    .map_err(|e| format!("cannot tag {what}: {e}"))?;
            crate::server::write_private_file(path, &stored)
                .map_err(|e| format!("cannot write {origin}: {e}"))?;
            Ok(Some(AccessDocRekey {
                kek_id_before: before,
                kek_id_after: Some(current),
            }))
        }
        AccessLocation::Store(binding) => {
            let mut before = None;
            for _ in 0..8 {
                let Some(shared) = store
                    .access_doc()
                    .await
                    .map_err(|e| format!("cannot read {what}: {e}"))?
                else {
                    return Ok(Some(AccessDocRekey::default()));
                };
                let doc = verified(binding, &shared.doc, Some(shared.revision), "the store")?;
                let first = before.get_or_insert_with(|| doc.kek_id.clone()).clone();
                if dry_run || doc.kek_id == current {
                    return Ok(Some(AccessDocRekey {
                        kek_id_before: Some(first),
                        kek_id_after: Some(doc.kek_id),
                    }));
                }
                let stored = crate::admin::tagged::wrap(
                    envelope,
                    binding,
                    shared.revision + 1,
                    &doc.document,
                    false,
                )
                .map_err(|e| format!("cannot tag {what}: {e}"))?;
                // Compare and set: a node's change meanwhile is read again (and is under its current key).
                if store
                    .put_access_doc(shared.revision, &stored)
                    .await
                    .map_err(|e| format!("cannot write {what}: {e}"))?
                    .is_some()
                {
                    return Ok(Some(AccessDocRekey {
                        kek_id_before: Some(first),
                        kek_id_after: Some(current),
                    }));
                }
            }
            Err(format!(
                "{what} kept changing while re-tagging it; run keyvault rekey again"
            ))
        }
    }
}

/// Stored versions per KEK id (a read-only pass).
pub async fn count_per_key(
    store: &dyn SecretStore,
    batch: usize,
) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    let mut after: Option<SealedKey> = None;
    loop {
        let page = store
            .sealed_page(after.as_ref(), batch.max(1))
            .await
            .map_err(|e| format!("cannot read the stored versions: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        for value in &page {
            *counts.entry(id_of(&value.sealed)).or_default() += 1;
        }
    }
    Ok(counts)
}

pub mod job;
#[cfg(test)]
mod tests;
