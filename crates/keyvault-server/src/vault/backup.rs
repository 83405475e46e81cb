//! Backup and restore: every version of a secret in one sealed, self-contained blob.
//!
//! The payload (JSON, values in clear) only ever exists in zeroizing buffers; the blob is sealed by
//! [`Envelope::seal_backup`] under a key derived from the key-encryption key, so any vault that shares
//! the key can restore it and nobody else can read or alter it.

use super::{Vault, VaultError, VaultResult, check_attributes, check_name};
use crate::store::{StoreError, Tags, VersionRow};
use keyvault_types::SecretString;
use keyvault_types::rules::{self, name_key};
use serde::{Deserialize, Serialize};

/// The largest backup blob made and restored. Within the limits on values (25 KB) and tags, 500 versions can
/// exceed it (JSON escapes a control character in six bytes), so the size is checked, not assumed.
pub const MAX_BACKUP_BLOB_BYTES: usize = 24 * 1024 * 1024;
const FORMAT: &str = "keyvault-rs/secret-backup/1";

#[derive(Serialize, Deserialize)]
struct Payload {
    format: String,
    versions: Vec<BackupVersion>,
}

#[derive(Serialize, Deserialize)]
struct BackupVersion {
    name: String,
    version: String,
    value: SecretString,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    tags: Option<Tags>,
    enabled: bool,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    exp: Option<i64>,
    created: i64,
    updated: i64,
}

/// A backup's payload is padded with trailing white space (which JSON readers skip: older builds restore it
/// too) to a multiple of this many bytes, so that a blob's size does not tell a value's length (a one-version
/// secret's blob is one size whatever its value, up to about 3.9 KB).
const BACKUP_PAD: usize = 4096;

/// `json` padded to a multiple of [`BACKUP_PAD`] (in a buffer of its final size: a grown one would leave
/// copies of the values in freed memory; the unpadded one is wiped when dropped), unless the padding would
/// take the blob past [`MAX_BACKUP_BLOB_BYTES`].
fn padded(json: zeroize::Zeroizing<Vec<u8>>) -> zeroize::Zeroizing<Vec<u8>> {
    // Room for the seal's header, nonce and tag.
    const SEAL_ROOM: usize = 1024;
    let target = json.len().div_ceil(BACKUP_PAD) * BACKUP_PAD;
    if target == json.len() || target > MAX_BACKUP_BLOB_BYTES - SEAL_ROOM {
        return json;
    }
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(target));
    out.extend_from_slice(&json);
    out.resize(target, b' ');
    out
}

fn bad_blob() -> VaultError {
    VaultError::MalformedBackup
}

impl Vault {
    /// Every version of a live secret, sealed into one blob.
    pub async fn backup(&self, name: &str) -> VaultResult<Vec<u8>> {
        check_name(name)?;
        // One more than a backup may hold: enough to refuse a name with too many, without reading them all.
        let rows = (self.store)
            .all_versions(self.vault(), name, rules::MAX_BACKUP_VERSIONS + 1)
            .await?;
        if rows.is_empty() {
            return Err(VaultError::NotFound {
                name: name.to_string(),
            });
        }
        if rows.len() > rules::MAX_BACKUP_VERSIONS {
            return Err(VaultError::BadParameter(format!(
                "Secret {name} has more than {} versions; a backup holds at most {}.",
                rules::MAX_BACKUP_VERSIONS,
                rules::MAX_BACKUP_VERSIONS
            )));
        }
        let mut versions = Vec::with_capacity(rows.len());
        for row in rows {
            let value = self.open(name, &row)?;
            versions.push(BackupVersion {
                name: row.name,
                version: row.version,
                value,
                content_type: row.content_type,
                tags: row.tags,
                enabled: row.enabled,
                nbf: row.nbf,
                exp: row.exp,
                created: row.created,
                updated: row.updated,
            });
        }
        let payload = Payload {
            format: FORMAT.to_string(),
            versions,
        };
        // In a buffer that never grows (a grown one would leave copies of the values in freed memory).
        let json = keyvault_types::secret::to_json_wiped(&payload)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let json = padded(json);
        let blob = self
            .envelope
            .seal_backup(&json)
            .map_err(super::seal_error)?;
        // A backup that restore would refuse is no backup: refuse it now, while the secret still exists.
        if blob.len() > MAX_BACKUP_BLOB_BYTES {
            return Err(VaultError::BadParameter(format!(
                "The backup of secret {name} would be {} bytes, more than the {MAX_BACKUP_BLOB_BYTES} bytes \
                 a restore accepts.",
                blob.len()
            )));
        }
        Ok(blob)
    }

    /// Recreate a secret, with all its versions and their original ids, from a backup blob.
    /// Returns the latest version. Conflicts when the name is live or deleted.
    pub async fn restore(&self, blob: &[u8]) -> VaultResult<VersionRow> {
        let json = self.envelope.open_backup(blob).map_err(|e| {
            // A blob made under a key-encryption key this server no longer holds (made before a rotation
            // whose old key was removed): the caller sees a malformed blob, as Key Vault answers a blob of
            // another vault; the operator is told which key it needs (an id, not key material).
            if let crate::crypto::CryptoError::UnknownKey(id) = &e {
                tracing::warn!(
                    kek_id = %id,
                    "a backup blob to restore was made under a key-encryption key that is not configured \
                     (add it to previous_kek_files or KEYVAULT_PREVIOUS_KEKS to restore it)"
                );
            }
            bad_blob()
        })?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| bad_blob())?;
        // What a backup of this server holds, and nothing else: one valid name, at most as many versions as a
        // backup takes, each id once, values and attributes within what a set accepts. A blob that passes
        // the seal's check and still breaks one of these was made with the key outside the server: malformed,
        // like any other (a repeated id reached the store as a 500).
        if payload.format != FORMAT
            || payload.versions.is_empty()
            || payload.versions.len() > rules::MAX_BACKUP_VERSIONS
        {
            return Err(bad_blob());
        }
        let key = name_key(&payload.versions[0].name);
        let mut rows = Vec::with_capacity(payload.versions.len());
        let mut ids = std::collections::HashSet::with_capacity(payload.versions.len());
        for v in payload.versions {
            let within_rules = check_name(&v.name).is_ok()
                && name_key(&v.name) == key
                && rules::is_valid_version(&v.version)
                && ids.insert(v.version.to_ascii_lowercase())
                && super::check_value(&v.value).is_ok()
                && check_attributes(&super::SecretAttributesInput {
                    content_type: v.content_type.clone(),
                    tags: v.tags.clone(),
                    ..Default::default()
                })
                .is_ok();
            if !within_rules {
                return Err(bad_blob());
            }
            let sealed = self
                .envelope
                .seal(self.vault(), &key, &v.version, v.value.expose().as_bytes())
                .map_err(super::seal_error)?;
            rows.push(VersionRow {
                name: v.name,
                version: v.version,
                sealed,
                content_type: v.content_type,
                tags: v.tags,
                enabled: v.enabled,
                nbf: v.nbf,
                exp: v.exp,
                created: v.created,
                updated: v.updated,
            });
        }
        let latest = rows.last().cloned().ok_or_else(bad_blob)?;
        let restored_time =
            super::version_id::latest_time_in(rows.iter().map(|r| r.version.as_str()));
        if let Some(ms) = restored_time {
            // Stored ids are all at or below the store's record, restored ones too. A name that is taken is
            // refused first, so that its restore does not move the record (for ids made ahead of this clock,
            // up to a day) for nothing; one taken between this look and the restore still may.
            let taken = self
                .store
                .get_version(self.vault(), &latest.name, None)
                .await?
                .is_some()
                || self
                    .store
                    .get_deleted(self.vault(), &latest.name)
                    .await?
                    .is_some();
            if taken {
                return Err(VaultError::RestoreConflict {
                    name: latest.name,
                    version: latest.version,
                });
            }
            self.reserve_time(ms).await?;
        }
        match self.store.restore(self.vault(), rows).await {
            Ok(()) => {
                // Versions set after this one list after the restored ones, even if their vault's clock
                // ran ahead of this one's.
                if let Some(ms) = restored_time {
                    super::version_id::continue_after(ms);
                }
                Ok(latest)
            }
            Err(StoreError::Exists) | Err(StoreError::Deleted) => {
                Err(VaultError::RestoreConflict {
                    name: latest.name,
                    version: latest.version,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}
