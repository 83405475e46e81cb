//! Run-time administration of access: principals (OAuth clients) created through the admin API, their
//! secrets (with optional expiry, for rotation) and role assignments.
//!
//! What the admin API makes is *managed*: kept in `{data_dir}/access.json` (mode 0600, written atomically:
//! temporary file, fsync, rename) and loaded again at start. What the configuration declares (`[[clients]]`,
//! `[[assignments]]`, the default and dev roles) is not managed: it is listed, but it can only be changed in
//! the configuration (the API answers 409). Only argon2 hashes are stored; a generated client secret is
//! returned once, by the call that creates it.
//!
//! Every change is made in memory ([`ClientRegistry`], [`Policy`]) after the file is written, so it takes
//! effect on the next request and survives a restart. Changes are serialised by one mutex (they are rare);
//! decisions never take it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::auth::clients::{SecretInfo, key_id_of};
use crate::auth::policy::{Assignment, Policy, Scope};
use crate::auth::{ClientRegistry, generate_client_id, generate_secret, hash_secret};

/// The file's name in the data directory.
pub const ACCESS_FILE: &str = "access.json";

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadParameter(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessFile {
    #[serde(default)]
    principals: Vec<StoredPrincipal>,
    #[serde(default)]
    assignments: Vec<Assignment>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPrincipal {
    client_id: String,
    #[serde(default)]
    display_name: Option<String>,
    created_on: i64,
    #[serde(default)]
    secrets: Vec<StoredSecret>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSecret {
    /// argon2id PHC string.
    hash: String,
    #[serde(default)]
    expires_on: Option<i64>,
    created_on: i64,
}

/// A principal as the admin API shows it (never a secret or a hash).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalView {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Made through the admin API (`false`: declared in the configuration, or the dev client).
    pub managed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_on: Option<i64>,
    pub secrets: Vec<SecretInfo>,
}

/// A role assignment as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentView {
    pub id: String,
    pub principal: String,
    pub role: String,
    pub scope: Scope,
    /// Made through the admin API (`false`: from the configuration).
    pub managed: bool,
}

/// A newly generated client secret: returned once, never stored in the clear.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSecret {
    pub client_id: String,
    pub key_id: String,
    pub client_secret: zeroize::Zeroizing<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<i64>,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("client_id", &self.client_id)
            .field("key_id", &self.key_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// The admin side of access control.
pub struct AccessAdmin {
    clients: Arc<ClientRegistry>,
    policy: Arc<Policy>,
    /// `None`: changes are kept in memory only (tests).
    path: Option<PathBuf>,
    file: Mutex<AccessFile>,
}

impl std::fmt::Debug for AccessAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessAdmin")
            .field("path", &self.path)
            .finish()
    }
}

fn valid_display_name(name: &str) -> Result<(), AdminError> {
    if name.chars().count() > 256 || name.chars().any(char::is_control) {
        return Err(AdminError::BadParameter(
            "displayName must be at most 256 characters, without control characters".into(),
        ));
    }
    Ok(())
}

fn valid_expiry(expires_on: Option<i64>, now: i64) -> Result<(), AdminError> {
    match expires_on {
        Some(exp) if exp <= now => Err(AdminError::BadParameter(
            "expiresOn must be in the future (unix seconds)".into(),
        )),
        _ => Ok(()),
    }
}

impl AccessAdmin {
    /// Loads `{data_dir}/access.json` (if there is one) into the registry and the policy. A managed
    /// assignment whose role no longer exists is kept in the file and skipped, with a warning.
    pub fn load(
        data_dir: Option<&Path>,
        clients: Arc<ClientRegistry>,
        policy: Arc<Policy>,
    ) -> Result<AccessAdmin, String> {
        let path = data_dir.map(|d| d.join(ACCESS_FILE));
        let file: AccessFile = match &path {
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a valid access file: {e}", p.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => AccessFile::default(),
                Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
            },
            None => AccessFile::default(),
        };
        for p in &file.principals {
            clients.ensure(p.client_id.as_str());
            for s in &p.secrets {
                clients
                    .add_with_expiry(p.client_id.as_str(), s.hash.as_str(), s.expires_on)
                    .map_err(|e| format!("access file: {e}"))?;
            }
        }
        for a in &file.assignments {
            if let Err(e) = policy.assign(a.clone()) {
                tracing::warn!(assignment = %a.id, error = %e, "skipping a stored role assignment");
            }
        }
        Ok(AccessAdmin {
            clients,
            policy,
            path,
            file: Mutex::new(file),
        })
    }

    fn persist(&self, file: &AccessFile) -> Result<(), AdminError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let json =
            serde_json::to_vec_pretty(file).map_err(|e| AdminError::Internal(e.to_string()))?;
        crate::server::write_private_file(path, &json).map_err(|e| {
            tracing::error!(error = %e, path = %path.display(), "cannot write the access file");
            AdminError::Internal("the change could not be saved".into())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AccessFile> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn view(&self, file: &AccessFile, client_id: &str) -> Option<PrincipalView> {
        let secrets = self.clients.secrets(client_id)?;
        let stored = file.principals.iter().find(|p| p.client_id == client_id);
        Some(PrincipalView {
            client_id: client_id.to_string(),
            display_name: stored.and_then(|p| p.display_name.clone()),
            managed: stored.is_some(),
            created_on: stored.map(|p| p.created_on),
            secrets,
        })
    }

    /// Every principal that may get tokens (managed or not), by client id.
    pub fn principals(&self) -> Vec<PrincipalView> {
        let file = self.lock();
        self.clients
            .client_ids()
            .iter()
            .filter_map(|id| self.view(&file, id))
            .collect()
    }

    pub fn principal(&self, client_id: &str) -> Result<PrincipalView, AdminError> {
        let file = self.lock();
        self.view(&file, client_id)
            .ok_or_else(|| not_found_principal(client_id))
    }

    /// Creates an application: a new client id and secret (returned once), optionally with a role.
    pub async fn create_principal(
        &self,
        display_name: Option<String>,
        expires_on: Option<i64>,
        role: Option<(String, Scope)>,
        now: i64,
    ) -> Result<(PrincipalView, NewSecret, Option<AssignmentView>), AdminError> {
        if let Some(name) = &display_name {
            valid_display_name(name)?;
        }
        valid_expiry(expires_on, now)?;
        if let Some((role, _)) = &role {
            self.check_role(role)?;
        }
        let (secret, hash) = new_secret_and_hash().await?;
        let client_id = generate_client_id();
        {
            let mut file = self.lock();
            let mut next = file.clone();
            next.principals.push(StoredPrincipal {
                client_id: client_id.clone(),
                display_name,
                created_on: now,
                secrets: vec![StoredSecret {
                    hash: hash.clone(),
                    expires_on,
                    created_on: now,
                }],
            });
            self.persist(&next)?;
            self.clients
                .add_with_expiry(client_id.as_str(), hash.as_str(), expires_on)
                .map_err(|e| AdminError::Internal(e.to_string()))?;
            *file = next;
        }
        let assignment = match role {
            Some((role, scope)) => Some(self.assign(&client_id, &role, scope)?),
            None => None,
        };
        let view = self.principal(&client_id)?;
        Ok((
            view,
            NewSecret {
                client_id,
                key_id: key_id_of(&hash),
                client_secret: secret,
                expires_on,
            },
            assignment,
        ))
    }

    /// Deletes a managed principal, its secrets and every assignment naming it.
    pub fn delete_principal(&self, client_id: &str) -> Result<PrincipalView, AdminError> {
        let mut file = self.lock();
        let view = self
            .view(&file, client_id)
            .ok_or_else(|| not_found_principal(client_id))?;
        if !view.managed {
            return Err(not_managed_principal(client_id));
        }
        let mut next = file.clone();
        next.principals.retain(|p| p.client_id != client_id);
        next.assignments.retain(|a| a.principal != client_id);
        self.persist(&next)?;
        self.clients.remove(client_id);
        self.policy.unassign_principal(client_id);
        *file = next;
        Ok(view)
    }

    /// Adds a secret to a managed principal (rotation); returns it once.
    pub async fn add_secret(
        &self,
        client_id: &str,
        expires_on: Option<i64>,
        now: i64,
    ) -> Result<NewSecret, AdminError> {
        valid_expiry(expires_on, now)?;
        self.check_managed(client_id)?;
        let (secret, hash) = new_secret_and_hash().await?;
        let mut file = self.lock();
        let mut next = file.clone();
        let stored = next
            .principals
            .iter_mut()
            .find(|p| p.client_id == client_id)
            .ok_or_else(|| not_found_principal(client_id))?;
        if stored.secrets.len() >= 16 {
            return Err(AdminError::Conflict(
                "a principal may have at most 16 secrets; remove an old one first".into(),
            ));
        }
        stored.secrets.push(StoredSecret {
            hash: hash.clone(),
            expires_on,
            created_on: now,
        });
        self.persist(&next)?;
        self.clients
            .add_with_expiry(client_id, hash.as_str(), expires_on)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        *file = next;
        Ok(NewSecret {
            client_id: client_id.to_string(),
            key_id: key_id_of(&hash),
            client_secret: secret,
            expires_on,
        })
    }

    /// Removes one secret of a managed principal (the end of a rotation).
    pub fn remove_secret(&self, client_id: &str, key_id: &str) -> Result<(), AdminError> {
        self.check_managed(client_id)?;
        let mut file = self.lock();
        let mut next = file.clone();
        let stored = next
            .principals
            .iter_mut()
            .find(|p| p.client_id == client_id)
            .ok_or_else(|| not_found_principal(client_id))?;
        let before = stored.secrets.len();
        stored.secrets.retain(|s| key_id_of(&s.hash) != key_id);
        if stored.secrets.len() == before {
            return Err(AdminError::NotFound(format!(
                "Principal '{client_id}' has no secret with key id '{key_id}'."
            )));
        }
        self.persist(&next)?;
        self.clients.remove_secret_by_key_id(client_id, key_id);
        *file = next;
        Ok(())
    }

    fn check_managed(&self, client_id: &str) -> Result<(), AdminError> {
        let file = self.lock();
        if file.principals.iter().any(|p| p.client_id == client_id) {
            Ok(())
        } else if self.clients.contains(client_id) {
            Err(not_managed_principal(client_id))
        } else {
            Err(not_found_principal(client_id))
        }
    }

    fn check_role(&self, role: &str) -> Result<(), AdminError> {
        let known = self.policy.roles().iter().any(|r| {
            r.name.eq_ignore_ascii_case(role.trim())
                || r.id
                    .as_deref()
                    .is_some_and(|id| id.eq_ignore_ascii_case(role.trim()))
        });
        if known {
            Ok(())
        } else {
            Err(AdminError::BadParameter(format!("unknown role '{role}'")))
        }
    }

    /// The assignments, optionally of one principal.
    pub fn assignments(&self, principal: Option<&str>) -> Vec<AssignmentView> {
        let file = self.lock();
        self.policy
            .assignments(principal)
            .into_iter()
            .map(|a| {
                let managed = file.assignments.iter().any(|m| m.id == a.id);
                AssignmentView {
                    id: a.id,
                    principal: a.principal,
                    role: a.role,
                    scope: a.scope,
                    managed,
                }
            })
            .collect()
    }

    /// Gives `principal` (a client id or an external identity's id) `role` at `scope`. An identical
    /// assignment is returned as it is.
    pub fn assign(
        &self,
        principal: &str,
        role: &str,
        scope: Scope,
    ) -> Result<AssignmentView, AdminError> {
        let mut file = self.lock();
        let before: Vec<String> = self
            .policy
            .assignments(None)
            .into_iter()
            .map(|a| a.id)
            .collect();
        let a = self
            .policy
            .assign(Assignment {
                id: String::new(),
                principal: principal.to_string(),
                role: role.to_string(),
                scope,
            })
            .map_err(|e| AdminError::BadParameter(e.0))?;
        let existed = before.contains(&a.id);
        if !existed {
            let mut next = file.clone();
            next.assignments.push(a.clone());
            if let Err(e) = self.persist(&next) {
                self.policy.unassign(&a.id);
                return Err(e);
            }
            *file = next;
        }
        let managed = file.assignments.iter().any(|m| m.id == a.id);
        Ok(AssignmentView {
            id: a.id,
            principal: a.principal,
            role: a.role,
            scope: a.scope,
            managed,
        })
    }

    /// Removes a managed assignment.
    pub fn unassign(&self, id: &str) -> Result<AssignmentView, AdminError> {
        let mut file = self.lock();
        let Some(a) = self
            .policy
            .assignments(None)
            .into_iter()
            .find(|a| a.id == id)
        else {
            return Err(AdminError::NotFound(format!(
                "Role assignment '{id}' was not found."
            )));
        };
        if !file.assignments.iter().any(|m| m.id == id) {
            return Err(AdminError::Conflict(format!(
                "Role assignment '{id}' is declared in the server configuration; change it there."
            )));
        }
        let mut next = file.clone();
        next.assignments.retain(|m| m.id != id);
        self.persist(&next)?;
        self.policy.unassign(id);
        *file = next;
        Ok(AssignmentView {
            id: a.id,
            principal: a.principal,
            role: a.role,
            scope: a.scope,
            managed: true,
        })
    }
}

fn not_found_principal(client_id: &str) -> AdminError {
    AdminError::NotFound(format!("Principal '{client_id}' was not found."))
}

fn not_managed_principal(client_id: &str) -> AdminError {
    AdminError::Conflict(format!(
        "Principal '{client_id}' is declared in the server configuration (or is the dev client); change it there."
    ))
}

/// A new secret and its argon2 hash (computed on a blocking thread).
async fn new_secret_and_hash() -> Result<(zeroize::Zeroizing<String>, String), AdminError> {
    tokio::task::spawn_blocking(|| {
        let secret = zeroize::Zeroizing::new(generate_secret());
        let hash = hash_secret(&secret).map_err(|e| AdminError::Internal(e.to_string()))?;
        Ok((secret, hash))
    })
    .await
    .map_err(|e| AdminError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::READER;

    #[tokio::test]
    async fn changes_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (clients, policy) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin = AccessAdmin::load(Some(dir.path()), clients.clone(), policy.clone()).unwrap();
        let (view, secret, a) = admin
            .create_principal(
                Some("app".into()),
                Some(2_000),
                Some((READER.into(), Scope::Vault)),
                1_000,
            )
            .await
            .unwrap();
        let a = a.unwrap();
        let ext = admin.assign("external-1", READER, Scope::Vault).unwrap();
        let path = dir.path().join(ACCESS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(secret.client_secret.as_str()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // A fresh start from the same data directory.
        let (clients2, policy2) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin2 =
            AccessAdmin::load(Some(dir.path()), clients2.clone(), policy2.clone()).unwrap();
        use crate::auth::clients::Verdict;
        assert_eq!(
            clients2.verify_at(&view.client_id, &secret.client_secret, 1_500),
            Verdict::Valid
        );
        assert_eq!(
            clients2.verify_at(&view.client_id, &secret.client_secret, 2_000),
            Verdict::Expired
        );
        let ids: Vec<String> = admin2.assignments(None).into_iter().map(|a| a.id).collect();
        assert_eq!(ids, vec![a.id.clone(), ext.id.clone()]);
        assert_eq!(
            admin2
                .principal(&view.client_id)
                .unwrap()
                .display_name
                .as_deref(),
            Some("app")
        );
        admin2.unassign(&ext.id).unwrap();
        admin2.delete_principal(&view.client_id).unwrap();
        let (clients3, policy3) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin3 = AccessAdmin::load(Some(dir.path()), clients3.clone(), policy3).unwrap();
        assert!(admin3.principals().is_empty());
        assert!(admin3.assignments(None).is_empty());
        assert!(!clients3.contains(&view.client_id));
    }
}
