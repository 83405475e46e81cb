//! From domain rows to the wire models of `keyvault-types`.

use crate::store::{DeletedRow, VersionRow};
use crate::vault::Secret;
use keyvault_types::models::{
    DeletedSecretBundle, DeletedSecretItem, DeletionInfo, SecretAttributes, SecretBundle,
    SecretItem,
};
use keyvault_types::{ApiVersion, DeletionRecoveryLevel};

/// What every mapping needs: the vault's URL as addressed, its recovery settings, the request's api-version.
pub struct WireContext<'a> {
    pub vault_url: &'a str,
    pub recovery_level: DeletionRecoveryLevel,
    pub retention_days: u32,
    pub api_version: ApiVersion,
}

impl WireContext<'_> {
    fn attributes(&self, row: &VersionRow) -> SecretAttributes {
        SecretAttributes {
            enabled: Some(row.enabled),
            nbf: row.nbf,
            exp: row.exp,
            created: Some(row.created),
            updated: Some(row.updated),
            recovery_level: Some(self.recovery_level.as_str().to_string()),
            recoverable_days: self
                .api_version
                .has_recoverable_days()
                .then_some(self.retention_days as i32),
        }
    }

    /// `{vault}/secrets/{name}/{version}` (concatenated: on every GET, where `format!` costs more).
    pub fn versioned_id(&self, row: &VersionRow) -> String {
        let mut id = self.unversioned_id_with_room(row, 1 + row.version.len());
        id.push('/');
        id.push_str(&row.version);
        id
    }

    pub fn unversioned_id(&self, row: &VersionRow) -> String {
        self.unversioned_id_with_room(row, 0)
    }

    fn unversioned_id_with_room(&self, row: &VersionRow, extra: usize) -> String {
        const SECRETS: &str = "/secrets/";
        let mut id =
            String::with_capacity(self.vault_url.len() + SECRETS.len() + row.name.len() + extra);
        id.push_str(self.vault_url);
        id.push_str(SECRETS);
        id.push_str(&row.name);
        id
    }

    pub fn bundle(&self, secret: Secret) -> SecretBundle {
        SecretBundle {
            id: Some(self.versioned_id(&secret.row)),
            attributes: Some(self.attributes(&secret.row)),
            value: secret.value,
            content_type: secret.row.content_type,
            tags: secret.row.tags,
            kid: None,
            managed: None,
            previous_version: None,
        }
    }

    pub fn item(&self, row: VersionRow, versioned: bool) -> SecretItem {
        SecretItem {
            id: Some(if versioned {
                self.versioned_id(&row)
            } else {
                self.unversioned_id(&row)
            }),
            attributes: Some(self.attributes(&row)),
            tags: row.tags,
            content_type: row.content_type,
            managed: None,
        }
    }

    fn deletion(&self, d: &DeletedRow) -> DeletionInfo {
        DeletionInfo {
            recovery_id: Some(format!(
                "{}/deletedsecrets/{}",
                self.vault_url, d.latest.name
            )),
            deleted_date: Some(d.deleted_on),
            scheduled_purge_date: Some(d.scheduled_purge),
        }
    }

    pub fn deleted_bundle(&self, d: DeletedRow) -> DeletedSecretBundle {
        let deletion = self.deletion(&d);
        DeletedSecretBundle {
            secret: self.bundle(Secret {
                row: d.latest,
                value: None,
            }),
            deletion,
        }
    }

    pub fn deleted_item(&self, d: DeletedRow) -> DeletedSecretItem {
        let deletion = self.deletion(&d);
        DeletedSecretItem {
            item: self.item(d.latest, false),
            deletion,
        }
    }
}
