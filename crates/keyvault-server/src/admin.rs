//! Run-time administration of access: principals (OAuth clients) created through the admin API, their
//! secrets (with optional expiry, for rotation), custom roles and role assignments.
//!
//! What the admin API makes is *managed*, and kept in one **access document** (JSON; argon2 hashes only — a
//! generated client secret is returned once, by the call that creates it, and never stored in the clear):
//!
//! - with a store private to this node (SQLite), in `{data_dir}/access.json` (mode 0600, written atomically:
//!   temporary file, fsync, rename);
//! - with a store shared by several nodes (PostgreSQL), in the store itself
//!   ([`SecretStore::put_access_doc`]), replaced by compare-and-set on a revision number, so two nodes
//!   changing access at once never lose each other's change. Every node polls the revision
//!   ([`POLL_INTERVAL`]) and applies what another node changed, so a principal or assignment made through
//!   one node works on every node within about a second, and a revocation takes effect as fast. A node
//!   switching to a shared store imports its `access.json` if the store has no document yet.
//!
//!   A node that cannot confirm its copy is current (the document cannot be read within
//!   [`REFRESH_TIMEOUT`], or cannot be parsed) fails closed: once [`UNCONFIRMED_LIMIT`] has passed since the
//!   start of the last read (or save of its own) that confirmed it, [`AccessAdmin::unconfirmed`] says so, and
//!   the node refuses every request that depends on access control (503) and fails `/readyz` until a refresh
//!   succeeds. So a revocation is in force on every node within about a second, and no node acts on an access
//!   state more than [`UNCONFIRMED_LIMIT`] older than the database's (measured on the monotonic clock).
//!
//! What the configuration declares (`[[clients]]`, `[[roles]]`, `[[assignments]]`, the default and dev
//! roles) is not managed: it is listed, but it can only be changed in the configuration (the API answers
//! 409).
//!
//! A change is saved first and then applied in memory ([`ClientRegistry`], [`Policy`]) as the difference
//! between the old and the new document, so it takes effect on the next request and survives a restart.
//! Changes on one node are serialised by one async mutex (they are rare); decisions never take it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::clients::{SecretInfo, generate_selected_secret, key_id_of};
use crate::auth::policy::{Assignment, Permission, Policy, Role, Scope, check_role_name, shown};
use crate::auth::{ClientRegistry, generate_client_id, hash_secret};
use crate::crypto::{CryptoError, Envelope};
use crate::store::{SecretStore, StoreError};

pub mod tagged;
use tagged::DocError;

/// How often a node asks a shared store whether another node changed the access document.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest one refresh may take (reading the revision and, if it changed, reading and applying the
/// document, including the wait for a change of this node's own): one that takes longer fails, and the next
/// poll tries again. Well under [`UNCONFIRMED_LIMIT`], so that a hung read cannot hold the node past it
/// unnoticed, and well over a refresh's usual milliseconds.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a node over a shared store may go without confirming that its access state is current, counted
/// from the start of the last refresh (or save of its own change) that succeeded. Past it the node refuses
/// every request that depends on access control (503 with `Retry-After`) and fails `/readyz`, until a
/// refresh succeeds. It allows one failed refresh (at most [`REFRESH_TIMEOUT`]) between two polls, so a
/// moment of contention does not take a node out, and bounds how long a revoked assignment or principal
/// can still be honoured on a node that cannot read the document.
pub const UNCONFIRMED_LIMIT: Duration = Duration::from_secs(5);

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
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => AdminError::Unavailable(m),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

/// The access document.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessFile {
    #[serde(default)]
    principals: Vec<StoredPrincipal>,
    #[serde(default)]
    assignments: Vec<Assignment>,
    #[serde(default)]
    roles: Vec<StoredRole>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRole {
    name: String,
    permissions: Vec<Permission>,
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

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSecret {
    /// argon2id PHC string.
    hash: String,
    #[serde(default)]
    expires_on: Option<i64>,
    created_on: i64,
    /// The selector the secret starts with, which picks this hash out of the principal's (see
    /// [`generate_selected_secret`]). Absent for secrets made before selectors: those are tried in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selector: Option<String>,
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
    /// The certificates it may sign client assertions with (`[[clients]] certificates`): thumbprints and
    /// validity periods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateView>,
    /// The federated credentials it may present (`[[clients]] federated`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub federated: Vec<FederatedView>,
    /// The role it holds on the whole vault because no assignment names it (`default_client_role`); absent
    /// when an assignment names it, or it gets no default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_role: Option<DefaultRoleView>,
}

/// A default role a principal holds (`default_client_role`, `dev_client_role`): not an assignment (it has no
/// id, and goes when an assignment names the principal), always on the whole vault.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultRoleView {
    pub principal: String,
    pub role: String,
    pub scope: Scope,
}

impl DefaultRoleView {
    pub fn new(principal: &str, role: String) -> Self {
        DefaultRoleView {
            principal: principal.to_string(),
            role,
            scope: Scope::Vault,
        }
    }
}

/// A configured client certificate as the admin API shows it: its SHA-256 thumbprint (`x5t#S256`, base64url,
/// as an assertion's header names it) and its validity period (Unix seconds; an assertion it signs is refused
/// outside it).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// A federated credential as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FederatedView {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
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
    /// Stored, but not in force on this node: its role is not defined here (another node's configuration
    /// has it, or it was removed from this one). It grants nothing, and keeps the default role from its
    /// principal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_in_force: bool,
}

/// A role as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleView {
    #[serde(flatten)]
    pub role: Role,
    /// Defined through the admin API (`false`: built in, or from the configuration).
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

/// Where the access document is kept.
enum Backend {
    /// Nowhere: changes live as long as the process (tests).
    Memory,
    /// `{data_dir}/access.json`: a store private to this node.
    File(PathBuf),
    /// In the store, shared by every node that uses it.
    Shared(Arc<dyn SecretStore>),
}

/// The document whose contents are in the registry and the policy now, and its revision.
struct Applied {
    revision: i64,
    doc: AccessFile,
    /// The KEK the stored document was tagged under (None: nothing stored yet, or memory only).
    kek_id: Option<String>,
    /// The shared store's document at this revision was refused (its tag does not verify): this node keeps
    /// the state above, and a change through the admin API replaces that document with it.
    refused: Option<Refused>,
}

/// A shared document a node refused.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Refused {
    revision: i64,
    /// A change of this node's may replace it: it does not name a key this node lacks (a document tagged
    /// under a key this node does not hold may be genuine: another node's, with a key this one was not
    /// given).
    replaceable: bool,
}

/// What a reload found.
enum Reload {
    Unchanged,
    Applied,
    Refused(Refused, String),
}

/// The keys that tag the access document, and whether an untagged one is adopted at start
/// (`keyvault serve --adopt-access-document`).
#[derive(Clone)]
pub struct AccessKeys {
    pub envelope: Arc<Envelope>,
    /// The vault (name, tenant) the document's tag binds it to.
    pub binding: tagged::Binding,
    pub adopt: bool,
}

impl AccessKeys {
    /// Tagging under `envelope` for an unnamed vault (tests), adopting nothing.
    pub fn new(envelope: Arc<Envelope>) -> Self {
        AccessKeys {
            envelope,
            binding: tagged::Binding::default(),
            adopt: false,
        }
    }
}

/// When a node over a shared store last confirmed that its access state is current, on the monotonic clock
/// (a wall-clock jump changes nothing).
struct Confirmation {
    /// The origin of `at`.
    origin: Instant,
    /// Nanoseconds from `origin` to the start of the last read or save that confirmed the state.
    at: AtomicU64,
    /// Whether the refresher has logged that the node refuses (its next success logs that it serves again).
    refusing: AtomicBool,
    /// Refreshes that failed (a metric).
    failures: AtomicU64,
}

impl Confirmation {
    fn new(origin: Instant) -> Self {
        Confirmation {
            origin,
            at: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        }
    }

    /// A read or save that started at `started` succeeded: the state is current as of then (or later).
    fn confirm(&self, started: Instant) {
        let nanos = started.saturating_duration_since(self.origin).as_nanos();
        self.at
            .fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long ago (at `now`) the state was last confirmed.
    fn age(&self, now: Instant) -> Duration {
        let at = self.origin + Duration::from_nanos(self.at.load(Ordering::Relaxed));
        now.saturating_duration_since(at)
    }
}

/// The admin side of access control.
pub struct AccessAdmin {
    clients: Arc<ClientRegistry>,
    /// Certificates and federated credentials of configured clients (shown, never changed, here).
    assertions: Option<Arc<crate::auth::assertion::ClientAssertions>>,
    policy: Arc<Policy>,
    backend: Backend,
    applied: Mutex<Applied>,
    /// Serialises changes and reloads on this node (held across the save).
    writer: tokio::sync::Mutex<()>,
    /// With a shared store: when the access state was last confirmed current.
    confirmation: Option<Confirmation>,
    /// The keys the stored document is tagged under.
    envelope: Arc<Envelope>,
    /// The vault the tag binds the document to.
    binding: tagged::Binding,
    /// Where the record that the document is tagged is kept ([`tagged::TAGGED_MARKER`]), and whether this
    /// process has seen it kept.
    marker: Option<Arc<dyn SecretStore>>,
    marked: AtomicBool,
    /// `applied.refused` is set (read on every request, without the lock).
    refusing_document: AtomicBool,
}

impl std::fmt::Debug for AccessAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Memory => "memory".to_string(),
            Backend::File(p) => p.display().to_string(),
            Backend::Shared(_) => "shared store".to_string(),
        };
        f.debug_struct("AccessAdmin")
            .field("backend", &backend)
            .finish()
    }
}

/// A display name is shown in listings: the same characters are refused as in role names (spoofing by
/// direction overrides or invisible characters), only the length differs.
fn valid_display_name(name: &str) -> Result<(), AdminError> {
    if name.chars().count() > 256
        || name.chars().any(|c| {
            c.is_control()
                || crate::auth::policy::is_invisible_format(c)
                || c == char::REPLACEMENT_CHARACTER
        })
    {
        return Err(AdminError::BadParameter(
            "displayName must be at most 256 characters, without control, invisible or \
             bidirectional-formatting characters"
                .into(),
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

/// How many principals, assignments and roles a document holds (for log lines: never what they are).
fn counts(doc: &AccessFile) -> (usize, usize, usize) {
    (doc.principals.len(), doc.assignments.len(), doc.roles.len())
}

fn tag_error(e: CryptoError) -> AdminError {
    match e {
        CryptoError::Retired(_) => AdminError::Unavailable(e.to_string()),
        other => AdminError::Internal(format!("cannot tag the access document: {other}")),
    }
}

/// The document in stored `bytes` (tagged for `binding`'s vault, verified; at `revision` if given), the key
/// it was tagged under and the revision it was tagged with.
fn open_tagged(
    envelope: &Envelope,
    binding: &tagged::Binding,
    bytes: &[u8],
    revision: Option<i64>,
    origin: &str,
) -> Result<(AccessFile, String, i64), DocError> {
    let verified = tagged::unwrap(envelope, binding, bytes, revision, origin)?;
    let doc = parse_doc(verified.document.as_bytes(), origin).map_err(DocError::Invalid)?;
    Ok((doc, verified.kek_id, verified.revision))
}

/// A document read at start: tagged and verified, or untagged and adopted (`keys.adopt`, unless the store
/// records that its document was tagged before: `tagged_before`), else the reason the server does not
/// start. Returns the document, the key it is tagged under (None: adopted, it must be saved tagged) and its
/// revision.
fn load_at_start(
    keys: &AccessKeys,
    bytes: &[u8],
    revision: Option<i64>,
    origin: &str,
    tagged_before: bool,
) -> Result<(AccessFile, Option<String>, i64), String> {
    let envelope = keys.envelope.as_ref();
    match open_tagged(envelope, &keys.binding, bytes, revision, origin) {
        Ok((doc, kek_id, revision)) => {
            if keys.adopt {
                tracing::info!(
                    origin,
                    "--adopt-access-document: the access-control document is tagged already; nothing to adopt"
                );
            }
            Ok((doc, Some(kek_id), revision))
        }
        Err(DocError::Untagged { .. }) if tagged_before => Err(format!(
            "{origin}: {} (it has no integrity tag of this build, and this store records that its document was \
             saved tagged before: an untagged document now was written by someone other than this server, not \
             left by an older build, and --adopt-access-document does not accept it). Put back the document \
             this server saved, or a backup of it",
            tagged::NOT_VERIFIED
        )),
        Err(DocError::Untagged { .. }) if keys.adopt => {
            let document = tagged::adoptable(envelope, bytes, origin)?;
            Ok((
                parse_doc(document.as_bytes(), origin)?,
                None,
                revision.unwrap_or(0),
            ))
        }
        Err(e) => Err(e.at_start(origin)),
    }
}

/// Whether `store` records that its access document was saved tagged.
async fn tagged_before(store: Option<&Arc<dyn SecretStore>>) -> Result<bool, String> {
    match store {
        Some(store) => Ok(store
            .meta(tagged::TAGGED_MARKER)
            .await
            .map_err(|e| format!("cannot read the store's access-document record: {e}"))?
            .is_some()),
        None => Ok(false),
    }
}

fn log_adopted(doc: &AccessFile, origin: &str, kek_id: &str) {
    let (principals, assignments, roles) = counts(doc);
    tracing::warn!(
        origin,
        principals,
        assignments,
        roles,
        kek_id,
        "--adopt-access-document: adopted the untagged access-control document and saved it tagged; every \
         principal and role assignment in it grants access from now on: check them"
    );
}

/// The document in `bytes`. The error names where it failed, never what is there (serde's message can quote
/// the document's text: hashes, client ids).
fn parse_doc(bytes: &[u8], origin: &str) -> Result<AccessFile, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "{origin}: not a valid access document ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })
}

pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl AccessAdmin {
    /// Loads the access document into the registry and the policy: from `store` when it shares one between
    /// nodes (importing `{data_dir}/access.json` if the store has none yet), else from
    /// `{data_dir}/access.json`; with neither, changes are kept in memory only. A managed assignment whose
    /// role no longer exists is kept in the document and skipped, with a warning.
    ///
    /// The stored document must carry a tag that verifies under `keys` (see [`tagged`]); an untagged one is
    /// refused unless `keys.adopt`, which saves it tagged.
    pub async fn open(
        data_dir: Option<&Path>,
        store: Option<Arc<dyn SecretStore>>,
        clients: Arc<ClientRegistry>,
        policy: Arc<Policy>,
        keys: AccessKeys,
    ) -> Result<AccessAdmin, String> {
        let path = data_dir.map(|d| d.join(ACCESS_FILE));
        let started = Instant::now();
        let envelope = keys.envelope.as_ref();
        let marker = store.clone();
        let was_tagged = tagged_before(marker.as_ref()).await?;
        let (backend, revision, doc, kek_id) = match (store.filter(|s| s.is_shared()), path) {
            (Some(store), path) => {
                let (revision, doc, kek_id) =
                    Self::load_shared(store.as_ref(), path.as_deref(), &keys, was_tagged).await?;
                (Backend::Shared(store), revision, doc, kek_id)
            }
            (None, Some(path)) => {
                let origin = path.display().to_string();
                let (doc, kek_id, revision) = match read_file(&path)? {
                    Some(bytes) => {
                        let (doc, kek_id, revision) =
                            load_at_start(&keys, &bytes, None, &origin, was_tagged)?;
                        if kek_id.is_none() {
                            let json = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
                            let stored =
                                tagged::wrap(envelope, &keys.binding, revision + 1, &json, true)
                                    .map_err(|e| format!("cannot tag the access document: {e}"))?;
                            crate::server::write_private_file(&path, &stored)
                                .map_err(|e| format!("cannot write {origin}: {e}"))?;
                            log_adopted(&doc, &origin, envelope.current_kek_id());
                            (
                                doc,
                                Some(envelope.current_kek_id().to_owned()),
                                revision + 1,
                            )
                        } else {
                            (doc, kek_id, revision)
                        }
                    }
                    None => {
                        if keys.adopt {
                            tracing::info!(
                                "--adopt-access-document: there is no access-control document; nothing to adopt"
                            );
                        }
                        (AccessFile::default(), None, 0)
                    }
                };
                (Backend::File(path), revision, doc, kek_id)
            }
            (None, None) => (Backend::Memory, 0, AccessFile::default(), None),
        };
        // What was just loaded from a shared store is current as of the start of the load.
        let confirmation =
            matches!(backend, Backend::Shared(_)).then(|| Confirmation::new(started));
        let admin = AccessAdmin {
            clients,
            assertions: None,
            policy,
            backend,
            applied: Mutex::new(Applied {
                revision: 0,
                doc: AccessFile::default(),
                kek_id: None,
                refused: None,
            }),
            writer: tokio::sync::Mutex::new(()),
            confirmation,
            envelope: keys.envelope,
            binding: keys.binding,
            marker,
            marked: AtomicBool::new(was_tagged),
            refusing_document: AtomicBool::new(false),
        };
        let stored = kek_id.is_some();
        {
            let mut applied = admin.lock();
            admin.install(&mut applied, doc, revision);
            applied.kek_id = kek_id;
        }
        if stored {
            admin.record_tagged().await.map_err(|e| e.to_string())?;
        }
        Ok(admin)
    }

    /// Shows these certificates and federated credentials with the principals they belong to.
    pub fn with_assertions(
        mut self,
        assertions: Arc<crate::auth::assertion::ClientAssertions>,
    ) -> Self {
        self.assertions = Some(assertions);
        self
    }

    /// The shared document, after importing a local `access.json` into an empty store (it must verify,
    /// or be adopted, as the store's own), with the key it is tagged under.
    async fn load_shared(
        store: &dyn SecretStore,
        local: Option<&Path>,
        keys: &AccessKeys,
        tagged_before: bool,
    ) -> Result<(i64, AccessFile, Option<String>), String> {
        let envelope = keys.envelope.as_ref();
        let local_doc = match local {
            Some(p) => read_file(p)?.map(|b| (p, b)),
            None => None,
        };
        let current = envelope.current_kek_id().to_owned();
        for _ in 0..4 {
            if let Some(shared) = store.access_doc().await.map_err(|e| e.to_string())? {
                if let Some((p, _)) = &local_doc {
                    tracing::warn!(
                        file = %p.display(),
                        "ignoring the local access file: the shared store's access document is used"
                    );
                }
                let (doc, kek_id, _) = load_at_start(
                    keys,
                    &shared.doc,
                    Some(shared.revision),
                    "the store",
                    tagged_before,
                )?;
                if kek_id.is_some() {
                    return Ok((shared.revision, doc, kek_id));
                }
                let json = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
                let stored =
                    tagged::wrap(envelope, &keys.binding, shared.revision + 1, &json, false)
                        .map_err(|e| format!("cannot tag the access document: {e}"))?;
                if let Some(revision) = store
                    .put_access_doc(shared.revision, &stored)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    log_adopted(&doc, "the store", &current);
                    return Ok((revision, doc, Some(current)));
                }
                // Another node changed it meanwhile: look again.
                continue;
            }
            let Some((p, bytes)) = &local_doc else {
                if keys.adopt {
                    tracing::info!(
                        "--adopt-access-document: there is no access-control document; nothing to adopt"
                    );
                }
                return Ok((0, AccessFile::default(), None));
            };
            let origin = p.display().to_string();
            let (doc, kek_id, _) = load_at_start(keys, bytes, None, &origin, tagged_before)?;
            let adopted = kek_id.is_none();
            let json = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
            let stored = tagged::wrap(envelope, &keys.binding, 1, &json, false)
                .map_err(|e| format!("cannot tag the access document: {e}"))?;
            if let Some(revision) = store
                .put_access_doc(0, &stored)
                .await
                .map_err(|e| e.to_string())?
            {
                if adopted {
                    log_adopted(&doc, &origin, &current);
                }
                tracing::info!(file = %p.display(), "imported the local access file into the shared store");
                return Ok((revision, doc, Some(current)));
            }
            // Another node wrote the first document meanwhile: use it.
        }
        Err("the shared access document kept changing while loading it".into())
    }

    /// Starts polling a shared store for other nodes' changes (no-op otherwise). The task ends when the
    /// admin is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) {
        if !matches!(self.backend, Backend::Shared(_)) {
            return;
        }
        let weak: Weak<AccessAdmin> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(admin) = weak.upgrade() else { return };
                admin.poll().await;
            }
        });
    }

    /// One poll of the refresher: [`AccessAdmin::refresh`], and the log lines saying why the node refuses
    /// requests (once, when it starts to) and that it serves again.
    async fn poll(&self) {
        let Some(confirmation) = &self.confirmation else {
            return;
        };
        match self.refresh().await {
            Ok(_) => {
                if confirmation.refusing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "the shared access document is confirmed current again: authorizing requests again"
                    );
                }
            }
            Err(e) => {
                confirmation.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot read the shared access document");
                if let Some(age) = self.unconfirmed()
                    && !confirmation.refusing.swap(true, Ordering::Relaxed)
                {
                    tracing::error!(
                        unconfirmed_secs = age.as_secs(),
                        limit_secs = UNCONFIRMED_LIMIT.as_secs(),
                        error = %e,
                        "cannot confirm that this node's access control is current (the shared access document \
                         cannot be read or parsed): refusing requests that depend on it (503) and failing /readyz \
                         until it can"
                    );
                }
            }
        }
    }

    /// Some(how long ago it was last confirmed) when this node keeps access control in a shared store and
    /// has not confirmed it current for longer than [`UNCONFIRMED_LIMIT`]: it must not authorize anything
    /// until it has. None otherwise (always None for a private store: nothing can change it elsewhere).
    pub fn unconfirmed(&self) -> Option<Duration> {
        let age = self.confirmation.as_ref()?.age(Instant::now());
        // A shared document this node refuses: at once (its last good state is no longer the store's).
        (age > UNCONFIRMED_LIMIT || self.refusing_document.load(Ordering::Relaxed)).then_some(age)
    }

    /// With a shared store: how long ago the access state was last confirmed current, and how many refreshes
    /// have failed (for the metrics).
    pub fn confirmation_state(&self) -> Option<(Duration, u64)> {
        let c = self.confirmation.as_ref()?;
        Some((c.age(Instant::now()), c.failures.load(Ordering::Relaxed)))
    }

    /// Applies what other nodes changed in a shared store's access document, within [`REFRESH_TIMEOUT`], and
    /// on success counts the access state confirmed as of the start of the call. Returns whether anything
    /// changed. (Nothing to do for a private store.) A document that cannot be read in time, or cannot be
    /// parsed, is an error, and the state stays unconfirmed.
    pub async fn refresh(&self) -> Result<bool, AdminError> {
        let (Backend::Shared(store), Some(confirmation)) = (&self.backend, &self.confirmation)
        else {
            return Ok(false);
        };
        let started = Instant::now();
        let refresh = async {
            if store.access_revision().await? == self.lock().revision {
                return Ok(false);
            }
            let _writer = self.writer.lock().await;
            match self.reload_locked().await? {
                Reload::Unchanged => Ok(false),
                Reload::Applied => Ok(true),
                Reload::Refused(_, message) => Err(AdminError::Unavailable(message)),
            }
        };
        let changed = tokio::time::timeout(REFRESH_TIMEOUT, refresh)
            .await
            .map_err(|_| {
                AdminError::Unavailable(format!(
                    "the refresh did not finish within {REFRESH_TIMEOUT:?}"
                ))
            })??;
        confirmation.confirm(started);
        Ok(changed)
    }

    /// Whether this node refuses the shared document (its tag does not verify) in a way a change through the
    /// admin API may repair: the admin API stays open (to whom the last good state lets in) while the rest
    /// is refused, so that an administrator can save a tagged document again.
    pub fn refuses_replaceable_document(&self) -> bool {
        self.lock().refused.is_some_and(|r| r.replaceable)
    }

    /// Whether `who` may use the admin API while this node refuses the shared document: only while a change
    /// may replace it, and only a principal the configuration declares (`[[clients]]`, the dev client: not a
    /// managed one of the document, which another node may have removed) holding the admin permission on the
    /// whole vault through an assignment of the configuration (or the configured default role), with a role
    /// that is not one of the document's. The node's last good state may lack a revocation made elsewhere;
    /// what the configuration grants, it does not.
    pub fn admits_while_refusing(&self, who: &str) -> bool {
        let applied = self.lock();
        if !applied.refused.is_some_and(|r| r.replaceable)
            || !self.clients.contains(who)
            || applied.doc.principals.iter().any(|p| p.client_id == who)
        {
            return false;
        }
        let managed_role = |name: &str| {
            let name = self
                .policy
                .role_name(name)
                .unwrap_or_else(|| name.to_owned());
            applied
                .doc
                .roles
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(&name))
        };
        let grants_admin = |role: &str| {
            !managed_role(role)
                && self.policy.roles().iter().any(|r| {
                    (r.name.eq_ignore_ascii_case(role) || r.id.as_deref() == Some(role))
                        && r.permissions.contains(&Permission::Admin)
                })
        };
        let configured = (self.policy.assignments(Some(who)).into_iter())
            .filter(|a| !applied.doc.assignments.iter().any(|m| m.id == a.id))
            .any(|a| a.scope == Scope::Vault && grants_admin(&a.role));
        configured
            || self
                .policy
                .default_role_of(who)
                .is_some_and(|r| grants_admin(&r))
    }

    /// Records in the store that its access document is tagged (once per process: the record, once there,
    /// stays).
    async fn record_tagged(&self) -> Result<(), AdminError> {
        let Some(store) = &self.marker else {
            return Ok(());
        };
        if self.marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        store
            .meta_insert(tagged::TAGGED_MARKER, tagged::FORMAT.as_bytes())
            .await?;
        self.marked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the shared document and applies it if it is newer and verifies; one that does not verify is
    /// refused (logged once per revision), and the last good state kept. The caller holds `writer`.
    async fn reload_locked(&self) -> Result<Reload, AdminError> {
        let Backend::Shared(store) = &self.backend else {
            return Ok(Reload::Unchanged);
        };
        let Some(shared) = store.access_doc().await? else {
            return Ok(Reload::Unchanged);
        };
        let (revision, refused) = {
            let applied = self.lock();
            (applied.revision, applied.refused)
        };
        if shared.revision == revision {
            return Ok(Reload::Unchanged);
        }
        // A verified document older than the one applied: an older row put back with its own revision.
        let opened = if shared.revision < revision {
            Err(DocError::NotVerified {
                message: format!(
                    "the store: {} (its revision {} is lower than revision {revision}, which this node applied: \
                     an older document was put back; a change through the admin API cannot replace it: put the \
                     newer document back, or restart every node to accept this one, then check principals, \
                     secrets and role assignments)",
                    tagged::NOT_VERIFIED,
                    shared.revision
                ),
                // A change would store a revision other nodes have passed.
                replaceable: false,
            })
        } else {
            open_tagged(
                &self.envelope,
                &self.binding,
                &shared.doc,
                Some(shared.revision),
                "the store",
            )
        };
        match opened {
            Ok((doc, kek_id, _)) => {
                let mut applied = self.lock();
                self.install(&mut applied, doc, shared.revision);
                applied.kek_id = Some(kek_id);
                self.refusing_document.store(false, Ordering::Relaxed);
                if applied.refused.take().is_some() {
                    tracing::warn!(
                        revision = shared.revision,
                        "the shared access-control document verifies again: applied it"
                    );
                } else {
                    tracing::info!(
                        revision = shared.revision,
                        "applied another node's access-control change"
                    );
                }
                Ok(Reload::Applied)
            }
            Err(e) => {
                let message = e.at_refresh(shared.revision);
                let now = Refused {
                    revision: shared.revision,
                    replaceable: !matches!(
                        e,
                        DocError::NotVerified {
                            replaceable: false,
                            ..
                        }
                    ),
                };
                if refused != Some(now) {
                    tracing::error!(
                        error = %message,
                        kept_revision = revision,
                        "refusing the shared access-control document: this node keeps its last good access \
                         state, refuses requests that depend on access control (503) and fails /readyz until a \
                         document that verifies is stored (a change through the admin API saves one)"
                    );
                    self.lock().refused = Some(now);
                    self.refusing_document.store(true, Ordering::Relaxed);
                }
                Ok(Reload::Refused(now, message))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves `next` if the document is still at `revision`: the new revision, or None when another node
    /// changed it first.
    /// Either way the stored form is tagged under the current key.
    async fn save(&self, revision: i64, next: &AccessFile) -> Result<Option<i64>, AdminError> {
        let json = || serde_json::to_string(next).map_err(|e| AdminError::Internal(e.to_string()));
        match &self.backend {
            Backend::Memory => Ok(Some(revision + 1)),
            Backend::File(path) => {
                let stored =
                    tagged::wrap(&self.envelope, &self.binding, revision + 1, &json()?, true)
                        .map_err(tag_error)?;
                // A file that cannot be written (a full disk, above all) is the store being unavailable, as
                // for the vault's own writes: a 503 with Retry-After, nothing changed.
                crate::server::write_private_file(path, &stored).map_err(|e| {
                    tracing::error!(error = %e, path = %path.display(), "cannot write the access file");
                    AdminError::Unavailable(
                        "The change could not be saved: the access-control file cannot be written.".into(),
                    )
                })?;
                Ok(Some(revision + 1))
            }
            Backend::Shared(store) => {
                let stored =
                    tagged::wrap(&self.envelope, &self.binding, revision + 1, &json()?, false)
                        .map_err(tag_error)?;
                Ok(store.put_access_doc(revision, &stored).await?)
            }
        }
    }

    /// Makes one change: `edit` the current document (it may refuse), save it, apply it. When another node
    /// changed the document meanwhile, its change is applied first and `edit` runs again on the result.
    async fn change<T>(
        &self,
        mut edit: impl FnMut(&mut AccessFile) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let _writer = self.writer.lock().await;
        // Over a shared store, another node's latest first: a change naming what it just made (an assignment,
        // a principal) is then found here, instead of a 404 that leaves the grant in force.
        let mut replace = self.replaceable(self.reload_locked().await?)?;
        for _ in 0..8 {
            let (revision, mut next) = {
                let applied = self.lock();
                (applied.revision, applied.doc.clone())
            };
            let out = edit(&mut next)?;
            self.keeps_an_administrator(&next)?;
            let started = Instant::now();
            // A refused document is replaced by this node's last good state with the change.
            let expected = replace.take().map_or(revision, |r| r.revision);
            match self.save(expected, &next).await? {
                Some(new_revision) => {
                    // Saved: applied at once, before anything else is awaited. A request dropped at a later
                    // await (its client gone) would otherwise leave the change saved but not in force, and
                    // the next change would save over it from the state without it (a92-1).
                    {
                        let mut applied = self.lock();
                        self.install(&mut applied, next, new_revision);
                        applied.kek_id = (!matches!(self.backend, Backend::Memory))
                            .then(|| self.envelope.current_kek_id().to_owned());
                        self.refusing_document.store(false, Ordering::Relaxed);
                        if let Some(refused) = applied.refused.take() {
                            tracing::warn!(
                                refused_revision = refused.revision,
                                kept_revision = revision,
                                revision = new_revision,
                                "replaced the shared access-control document that did not verify with this \
                                 node's last good state and an admin change"
                            );
                        }
                    }
                    // A shared store took it by compare-and-set: `revision` was the latest when it did.
                    if let Some(confirmation) = &self.confirmation {
                        confirmation.confirm(started);
                    }
                    // The store's record that its document is tagged: tried again at the next change (and
                    // start) if it cannot be written now; the change itself is made.
                    if !matches!(self.backend, Backend::Memory)
                        && let Err(e) = self.record_tagged().await
                    {
                        tracing::warn!(
                            error = %e,
                            "cannot record in the store that its access document is tagged (tried again at the \
                             next change)"
                        );
                    }
                    return Ok(out);
                }
                None => {
                    replace = self.replaceable(self.reload_locked().await?)?;
                }
            }
        }
        Err(AdminError::Unavailable(
            "the access document kept changing on other nodes; try again".into(),
        ))
    }

    /// Refuses a change after which no principal would hold the admin permission on the whole vault while
    /// one does now: nobody could use the admin API again but through the configuration and a restart of
    /// every node (Azure has a subscription's owners above a vault; here nothing is). What counts is what the
    /// configuration declares (its assignments, its roles, its default role) with `next`'s assignments and
    /// roles; any principal counts, whether or not it can get a token today.
    fn keeps_an_administrator(&self, next: &AccessFile) -> Result<(), AdminError> {
        let applied = self.lock();
        let current = &applied.doc;
        if !self.administered(current, current) || self.administered(current, next) {
            return Ok(());
        }
        Err(AdminError::Conflict(
            "This change would leave no principal with the admin permission on the whole vault, and nobody \
             could administer it again but through the server's configuration; give another principal an \
             administrator role first."
                .into(),
        ))
    }

    /// Whether some principal holds `admin` on the whole vault under `doc` (the document's part; `current` is
    /// the one in force, whose roles and assignments the policy holds now) and the configuration.
    fn administered(&self, current: &AccessFile, doc: &AccessFile) -> bool {
        let is_managed_role =
            |name: &str| (current.roles.iter()).any(|r| r.name.eq_ignore_ascii_case(name));
        // Roles granting `admin`: the built-in and configured ones (the policy's, less the document's), and
        // the document's own; by name or Azure id.
        let mut admin_roles: Vec<String> = (self.policy.roles().into_iter())
            .filter(|r| !is_managed_role(&r.name) && r.permissions.contains(&Permission::Admin))
            .flat_map(|r| r.id.into_iter().chain([r.name]))
            .collect();
        admin_roles.extend(
            (doc.roles.iter())
                .filter(|r| r.permissions.contains(&Permission::Admin))
                .map(|r| r.name.clone()),
        );
        let grants_admin = |role: &str| admin_roles.iter().any(|r| r.eq_ignore_ascii_case(role));
        // The configuration's assignments (those in force that are not the document's), and the document's.
        let managed: HashSet<&str> = (current.assignments.iter())
            .map(|m| m.id.as_str())
            .collect();
        let configured: Vec<Assignment> = (self.policy.assignments(None).into_iter())
            .filter(|a| !managed.contains(a.id.as_str()))
            .collect();
        let all = || configured.iter().chain(&doc.assignments);
        if all().any(|a| a.scope == Scope::Vault && grants_admin(&a.role)) {
            return true;
        }
        // The default role (a built-in or configured one), held by those of its principals that no assignment
        // names (one whose role is unknown here displaces it too).
        let Some((role, principals)) = self.policy.default_role_setting() else {
            return false;
        };
        let named: HashSet<&str> = all().map(|a| a.principal.as_str()).collect();
        grants_admin(&role) && principals.iter().any(|p| !named.contains(p.as_str()))
    }

    /// After a reload: the refused document a change may replace (None: nothing refused), or why no change
    /// can be made (a document under a key this node does not hold may be another node's genuine one).
    fn replaceable(&self, reload: Reload) -> Result<Option<Refused>, AdminError> {
        match reload {
            Reload::Refused(refused, _) if refused.replaceable => Ok(Some(refused)),
            Reload::Refused(_, message) => Err(AdminError::Unavailable(message)),
            Reload::Unchanged | Reload::Applied => Ok(None),
        }
    }

    /// [`AccessAdmin::refresh`] before a change: a refused document is no error here (the change replaces
    /// it).
    async fn catch_up(&self) -> Result<(), AdminError> {
        match self.refresh().await {
            Err(_) if self.refuses_replaceable_document() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The KEK the stored document is tagged under (None: nothing stored yet, or memory only).
    pub fn stored_kek_id(&self) -> Option<String> {
        self.lock().kek_id.clone()
    }

    /// Saves the document again, tagged under the current key, if it is stored under another (a rekey; a
    /// dry run only says). Returns the key id before and after.
    pub async fn retag(
        &self,
        dry_run: bool,
    ) -> Result<(Option<String>, Option<String>), AdminError> {
        self.refresh().await?;
        let before = self.stored_kek_id();
        let current = self.envelope.current_kek_id();
        if dry_run || before.as_deref().is_none_or(|id| id == current) {
            return Ok((before.clone(), before));
        }
        self.change(|_| Ok(())).await?;
        Ok((before, self.stored_kek_id()))
    }

    /// Puts `next` into the registry and the policy, as the difference from what is there now.
    fn install(&self, applied: &mut Applied, next: AccessFile, revision: i64) {
        let old = std::mem::replace(&mut applied.doc, next);
        applied.revision = revision;
        let new = &applied.doc;
        let same_name = |a: &StoredRole, b: &StoredRole| a.name.eq_ignore_ascii_case(&b.name);
        // Roles first: new assignments may name them.
        for role in new.roles.iter().filter(|r| !old.roles.contains(r)) {
            if let Err(e) = self
                .policy
                .define_role(&role.name, role.permissions.clone())
            {
                tracing::warn!(role = %role.name, error = %e, "skipping a stored role");
            }
        }
        // Indexed once: with thousands of principals and assignments, comparing each with every other (as
        // this once did) cost about a second per change.
        let old_principals: HashMap<&str, &StoredPrincipal> = (old.principals.iter())
            .map(|p| (p.client_id.as_str(), p))
            .collect();
        let new_principals: HashSet<&str> = (new.principals.iter())
            .map(|p| p.client_id.as_str())
            .collect();
        for gone in
            (old.principals.iter()).filter(|o| !new_principals.contains(o.client_id.as_str()))
        {
            self.clients.remove(&gone.client_id);
        }
        for p in &new.principals {
            let before = old_principals.get(p.client_id.as_str()).copied();
            self.clients.ensure(p.client_id.as_str());
            if let Some(before) = before {
                for s in before.secrets.iter().filter(|s| !p.secrets.contains(s)) {
                    self.clients.remove_secret(&p.client_id, &s.hash);
                }
            }
            for s in &p.secrets {
                if before.is_some_and(|b| b.secrets.contains(s)) {
                    continue;
                }
                if let Err(e) = self.clients.add_selected(
                    p.client_id.as_str(),
                    s.hash.as_str(),
                    s.expires_on,
                    s.selector.clone(),
                ) {
                    tracing::warn!(client = %p.client_id, error = %e, "skipping a stored secret");
                }
            }
        }
        let ids = |doc: &'_ AccessFile| -> HashSet<String> {
            doc.assignments.iter().map(|a| a.id.clone()).collect()
        };
        let (old_ids, new_ids) = (ids(&old), ids(new));
        let gone: HashSet<&str> = (old.assignments.iter())
            .filter(|o| !new_ids.contains(&o.id))
            .map(|o| o.id.as_str())
            .collect();
        self.policy.unassign_all(&gone);
        let added: Vec<Assignment> = (new.assignments.iter())
            .filter(|a| !old_ids.contains(&a.id))
            .cloned()
            .collect();
        let ids: Vec<String> = added.iter().map(|a| a.id.clone()).collect();
        for (id, result) in ids.iter().zip(self.policy.assign_all(added)) {
            if let Err(e) = result {
                tracing::warn!(
                    assignment = %id,
                    error = %e,
                    "skipping a stored role assignment (it grants nothing here, and its principal gets no \
                     default role)"
                );
            }
        }
        // Stored assignments not in force here (skipped now or before) still take the default role away.
        let applied: HashSet<String> = (self.policy.assignments(None).into_iter())
            .map(|a| a.id)
            .collect();
        self.policy.set_unapplied(
            (new.assignments.iter())
                .filter(|a| !applied.contains(&a.id))
                .map(|a| a.principal.clone())
                .collect(),
        );
        for role in old
            .roles
            .iter()
            .filter(|o| !new.roles.iter().any(|r| same_name(r, o)))
        {
            if let Err(e) = self.policy.remove_role(&role.name) {
                tracing::warn!(role = %role.name, error = %e, "cannot remove a role");
            }
        }
    }

    fn view(&self, doc: &AccessFile, client_id: &str) -> Option<PrincipalView> {
        let stored = doc.principals.iter().find(|p| p.client_id == client_id);
        self.view_of(stored, client_id)
    }

    /// Every principal that may get tokens (managed or not), by client id.
    pub fn principals(&self) -> Vec<PrincipalView> {
        let applied = self.lock();
        let stored: HashMap<&str, &StoredPrincipal> = (applied.doc.principals.iter())
            .map(|p| (p.client_id.as_str(), p))
            .collect();
        self.clients
            .client_ids()
            .iter()
            .filter_map(|id| self.view_of(stored.get(id.as_str()).copied(), id))
            .collect()
    }

    pub fn principal(&self, client_id: &str) -> Result<PrincipalView, AdminError> {
        let applied = self.lock();
        self.view(&applied.doc, client_id)
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
        let (secret, stored) = new_secret_and_hash(expires_on, now).await?;
        let hash = stored.hash.clone();
        let client_id = generate_client_id();
        let assignment = self
            .change(|doc| {
                let assignment = match &role {
                    Some((role, scope)) => {
                        Some(self.new_assignment(doc, &client_id, role, scope.clone())?.0)
                    }
                    None => None,
                };
                doc.principals.push(StoredPrincipal {
                    client_id: client_id.clone(),
                    display_name: display_name.clone(),
                    created_on: now,
                    secrets: vec![stored.clone()],
                });
                if let Some(a) = &assignment {
                    doc.assignments.push(a.clone());
                }
                Ok(assignment)
            })
            .await?;
        let view = self.principal(&client_id)?;
        Ok((
            view,
            NewSecret {
                client_id,
                key_id: key_id_of(&hash),
                client_secret: secret,
                expires_on,
            },
            assignment.map(|a| managed_view(a, true)),
        ))
    }

    /// Deletes a managed principal, its secrets and every assignment naming it.
    pub async fn delete_principal(&self, client_id: &str) -> Result<PrincipalView, AdminError> {
        self.catch_up().await?;
        let view = self.principal(client_id)?;
        self.change(|doc| {
            if !doc.principals.iter().any(|p| p.client_id == client_id) {
                return Err(if self.clients.contains(client_id) {
                    not_managed_principal(client_id)
                } else {
                    not_found_principal(client_id)
                });
            }
            doc.principals.retain(|p| p.client_id != client_id);
            doc.assignments.retain(|a| a.principal != client_id);
            Ok(())
        })
        .await?;
        Ok(PrincipalView {
            managed: true,
            ..view
        })
    }

    /// Adds a secret to a managed principal (rotation); returns it once.
    pub async fn add_secret(
        &self,
        client_id: &str,
        expires_on: Option<i64>,
        now: i64,
    ) -> Result<NewSecret, AdminError> {
        valid_expiry(expires_on, now)?;
        self.catch_up().await?;
        self.check_managed(client_id)?;
        let (secret, stored) = new_secret_and_hash(expires_on, now).await?;
        let hash = stored.hash.clone();
        self.change(|doc| {
            let principal = managed_mut(doc, client_id, &self.clients)?;
            if principal.secrets.len() >= 16 {
                return Err(AdminError::Conflict(
                    "a principal may have at most 16 secrets; remove an old one first".into(),
                ));
            }
            principal.secrets.push(stored.clone());
            Ok(())
        })
        .await?;
        Ok(NewSecret {
            client_id: client_id.to_string(),
            key_id: key_id_of(&hash),
            client_secret: secret,
            expires_on,
        })
    }

    /// Removes one secret of a managed principal (the end of a rotation).
    pub async fn remove_secret(&self, client_id: &str, key_id: &str) -> Result<(), AdminError> {
        self.change(|doc| {
            let stored = managed_mut(doc, client_id, &self.clients)?;
            let before = stored.secrets.len();
            stored.secrets.retain(|s| key_id_of(&s.hash) != key_id);
            if stored.secrets.len() == before {
                return Err(AdminError::NotFound(format!(
                    "Principal '{}' has no secret with key id '{}'.",
                    shown(client_id),
                    shown(key_id)
                )));
            }
            Ok(())
        })
        .await
    }

    fn check_managed(&self, client_id: &str) -> Result<(), AdminError> {
        let applied = self.lock();
        let mut doc = applied.doc.clone();
        managed_mut(&mut doc, client_id, &self.clients).map(|_| ())
    }

    /// The role named `role` (name, case-insensitive, or a built-in role's Azure id).
    fn find_role(&self, role: &str) -> Option<Role> {
        let role = role.trim();
        self.policy.roles().into_iter().find(|r| {
            r.name.eq_ignore_ascii_case(role)
                || r.id
                    .as_deref()
                    .is_some_and(|id| id.eq_ignore_ascii_case(role))
        })
    }

    /// A role of the document that the policy refused when it was loaded (saved before the rule on role
    /// names was the same everywhere): it can only be removed.
    fn stored_role_not_in_force(&self, name: &str) -> Option<Role> {
        let name = name.trim();
        let applied = self.lock();
        let stored = applied
            .doc
            .roles
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))?;
        Some(Role {
            name: stored.name.clone(),
            id: None,
            permissions: stored.permissions.clone(),
            builtin: false,
        })
    }

    /// A new assignment for `doc` (not yet added), or the identical one in force, with whether it is new.
    fn new_assignment(
        &self,
        doc: &AccessFile,
        principal: &str,
        role: &str,
        scope: Scope,
    ) -> Result<(Assignment, bool), AdminError> {
        // As the configuration's (`valid_principal_id`): ids compare exactly, and no character that would let a
        // listing show one principal as another.
        if !crate::auth::policy::valid_principal_id(principal) {
            return Err(AdminError::BadParameter(
                "a principal id must be 1-256 bytes, without leading or trailing whitespace, control, \
                 invisible or bidirectional-formatting characters (nor U+FFFD)"
                    .into(),
            ));
        }
        let role = self
            .find_role(role)
            .ok_or_else(|| AdminError::BadParameter(format!("unknown role '{}'", shown(role))))?;
        let same =
            |a: &Assignment| a.principal == principal && a.role == role.name && a.scope == scope;
        if let Some(existing) = doc.assignments.iter().find(|a| same(a)) {
            return Ok((existing.clone(), false));
        }
        if let Some(existing) = self
            .policy
            .assignments(Some(principal))
            .into_iter()
            .find(|a| same(a))
        {
            return Ok((existing, false));
        }
        Ok((
            Assignment {
                id: generate_client_id(),
                principal: principal.to_string(),
                role: role.name,
                scope,
            },
            true,
        ))
    }

    /// The default roles held now (principals no assignment names), optionally of one principal.
    pub fn default_roles(&self, principal: Option<&str>) -> Vec<DefaultRoleView> {
        match principal {
            Some(p) => (self.policy.default_role_of(p).into_iter())
                .map(|role| DefaultRoleView::new(p, role))
                .collect(),
            None => (self.policy.default_role_holders().into_iter())
                .map(|(p, role)| DefaultRoleView::new(&p, role))
                .collect(),
        }
    }

    /// The assignments, optionally of one principal.
    pub fn assignments(&self, principal: Option<&str>) -> Vec<AssignmentView> {
        let applied = self.lock();
        let managed: HashSet<&str> = (applied.doc.assignments.iter())
            .map(|m| m.id.as_str())
            .collect();
        let in_force = self.policy.assignments(principal);
        let roles = self.policy.roles();
        let known = |name: &str| {
            roles.iter().any(|r| {
                r.name.eq_ignore_ascii_case(name.trim())
                    || r.id
                        .as_deref()
                        .is_some_and(|id| id.eq_ignore_ascii_case(name.trim()))
            })
        };
        let unapplied: Vec<AssignmentView> = (applied.doc.assignments.iter())
            .filter(|a| !known(&a.role))
            .filter(|a| principal.is_none_or(|p| a.principal == p))
            .map(|a| AssignmentView {
                not_in_force: true,
                ..managed_view(a.clone(), true)
            })
            .collect();
        (in_force.into_iter())
            .map(|a| {
                let managed = managed.contains(a.id.as_str());
                managed_view(a, managed)
            })
            .chain(unapplied)
            .collect()
    }

    /// Gives `principal` (a client id or an external identity's id) `role` at `scope`. An identical
    /// assignment is returned as it is; the flag says whether a new one was made.
    pub async fn assign(
        &self,
        principal: &str,
        role: &str,
        scope: Scope,
    ) -> Result<(AssignmentView, bool), AdminError> {
        let (a, created) = self
            .change(|doc| {
                let (a, created) = self.new_assignment(doc, principal, role, scope.clone())?;
                if created {
                    doc.assignments.push(a.clone());
                }
                Ok((a, created))
            })
            .await?;
        let managed = created || self.lock().doc.assignments.iter().any(|m| m.id == a.id);
        Ok((managed_view(a, managed), created))
    }

    /// Removes a managed assignment.
    pub async fn unassign(&self, id: &str) -> Result<AssignmentView, AdminError> {
        let removed = self
            .change(|doc| {
                if let Some(at) = doc.assignments.iter().position(|m| m.id == id) {
                    return Ok(doc.assignments.remove(at));
                }
                if self.policy.assignments(None).iter().any(|a| a.id == id) {
                    return Err(AdminError::Conflict(format!(
                        "Role assignment '{}' is declared in the server configuration; change it there.",
                        shown(id)
                    )));
                }
                Err(AdminError::NotFound(format!(
                    "Role assignment '{}' was not found.",
                    shown(id)
                )))
            })
            .await?;
        Ok(managed_view(removed, true))
    }

    /// Every role (built-in, configured, managed), built-in first.
    pub fn roles(&self) -> Vec<RoleView> {
        let applied = self.lock();
        self.policy
            .roles()
            .into_iter()
            .map(|role| {
                let managed = applied
                    .doc
                    .roles
                    .iter()
                    .any(|r| r.name.eq_ignore_ascii_case(&role.name));
                RoleView { role, managed }
            })
            .collect()
    }

    /// Defines a custom role, or redefines one made through the API. Built-in and configured roles cannot
    /// be changed here. Returns the role and whether it is new.
    pub async fn define_role(
        &self,
        name: &str,
        permissions: Vec<Permission>,
    ) -> Result<(RoleView, bool), AdminError> {
        // The policy's own rule, checked before anything is saved: a name it would refuse must never reach
        // the document (it would be saved but not in force, and not removable).
        let name = check_role_name(name)
            .map_err(|e| AdminError::BadParameter(e.0))?
            .to_string();
        if permissions.is_empty() {
            return Err(AdminError::BadParameter(
                "a role needs at least one permission".into(),
            ));
        }
        let mut permissions = permissions;
        permissions.sort();
        permissions.dedup();
        let created = self
            .change(|doc| {
                let existing = doc
                    .roles
                    .iter()
                    .position(|r| r.name.eq_ignore_ascii_case(&name));
                // Stored assignments of a role this node does not define (not in force): defining one of
                // that name here would give them its permissions — at the next start, silently. They go
                // first.
                let waiting: Vec<&str> = doc
                    .assignments
                    .iter()
                    .filter(|a| a.role.eq_ignore_ascii_case(&name))
                    .map(|a| a.id.as_str())
                    .collect();
                if existing.is_none() && self.find_role(&name).is_none() && !waiting.is_empty() {
                    return Err(AdminError::Conflict(format!(
                        "Role '{name}' is named by {} assignment(s) not in force (their role is not defined \
                         here): {}{}. Defining it would put them in force; remove them first.",
                        waiting.len(),
                        waiting.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                        if waiting.len() > 5 { ", …" } else { "" }
                    )));
                }
                if existing.is_none()
                    && let Some(r) = self.find_role(&name)
                {
                    return Err(AdminError::Conflict(format!(
                        "Role '{}' is {}; it cannot be changed through the admin API.",
                        r.name,
                        if r.builtin {
                            "built in"
                        } else {
                            "declared in the server configuration"
                        }
                    )));
                }
                let role = StoredRole {
                    name: match existing {
                        Some(at) => doc.roles[at].name.clone(),
                        None => name.clone(),
                    },
                    permissions: permissions.clone(),
                };
                match existing {
                    Some(at) => doc.roles[at] = role,
                    None => doc.roles.push(role),
                }
                Ok(existing.is_none())
            })
            .await?;
        let role = self
            .find_role(&name)
            .ok_or_else(|| AdminError::Internal("the role was saved but is not in force".into()))?;
        Ok((
            RoleView {
                role,
                managed: true,
            },
            created,
        ))
    }

    /// Removes a custom role made through the API; refused while any assignment uses it.
    pub async fn remove_role(&self, name: &str) -> Result<RoleView, AdminError> {
        let role = self
            .find_role(name)
            .or_else(|| self.stored_role_not_in_force(name))
            .ok_or_else(|| {
                AdminError::NotFound(format!("Role '{}' was not found.", shown(name.trim())))
            })?;
        self.change(|doc| {
            let Some(at) = doc
                .roles
                .iter()
                .position(|r| r.name.eq_ignore_ascii_case(&role.name))
            else {
                return Err(AdminError::Conflict(format!(
                    "Role '{}' is {}; it cannot be removed through the admin API.",
                    role.name,
                    if role.builtin {
                        "built in"
                    } else {
                        "declared in the server configuration"
                    }
                )));
            };
            let in_use = doc
                .assignments
                .iter()
                .any(|a| a.role.eq_ignore_ascii_case(&role.name))
                || self
                    .policy
                    .assignments(None)
                    .iter()
                    .any(|a| a.role.eq_ignore_ascii_case(&role.name));
            if in_use {
                return Err(AdminError::Conflict(format!(
                    "Role '{}' is still assigned; remove its assignments first.",
                    role.name
                )));
            }
            doc.roles.remove(at);
            Ok(())
        })
        .await?;
        Ok(RoleView {
            role,
            managed: true,
        })
    }
}

/// The managed principal `client_id` in `doc`, or why it cannot be changed.
fn managed_mut<'d>(
    doc: &'d mut AccessFile,
    client_id: &str,
    clients: &ClientRegistry,
) -> Result<&'d mut StoredPrincipal, AdminError> {
    match doc.principals.iter_mut().find(|p| p.client_id == client_id) {
        Some(p) => Ok(p),
        None if clients.contains(client_id) => Err(not_managed_principal(client_id)),
        None => Err(not_found_principal(client_id)),
    }
}

impl AccessAdmin {
    /// How the admin API shows `client_id`, `stored` in the document if it is managed.
    fn view_of(&self, stored: Option<&StoredPrincipal>, client_id: &str) -> Option<PrincipalView> {
        let secrets = self.clients.secrets(client_id)?;
        let assertions = self.assertions.as_deref();
        let federated = assertions
            .map(|a| a.federated_of(client_id))
            .unwrap_or_default();
        let default_role = (self.policy.default_role_of(client_id))
            .map(|role| DefaultRoleView::new(client_id, role));
        Some(PrincipalView {
            default_role,
            client_id: client_id.to_string(),
            display_name: stored.and_then(|p| p.display_name.clone()),
            managed: stored.is_some(),
            created_on: stored.map(|p| p.created_on),
            secrets,
            certificates: (assertions.map(|a| a.certificates_of(client_id)))
                .unwrap_or_default()
                .into_iter()
                .map(|c| CertificateView {
                    x5t_s256: c.x5t_s256,
                    not_before: c.not_before,
                    not_after: c.not_after,
                })
                .collect(),
            federated: (federated.into_iter())
                .map(|(issuer, subject, audience)| FederatedView {
                    issuer,
                    subject,
                    audience,
                })
                .collect(),
        })
    }
}

fn managed_view(a: Assignment, managed: bool) -> AssignmentView {
    AssignmentView {
        id: a.id,
        principal: a.principal,
        role: a.role,
        scope: a.scope,
        managed,
        not_in_force: false,
    }
}

fn not_found_principal(client_id: &str) -> AdminError {
    AdminError::NotFound(format!("Principal '{}' was not found.", shown(client_id)))
}

fn not_managed_principal(client_id: &str) -> AdminError {
    AdminError::Conflict(format!(
        "Principal '{}' is declared in the server configuration (or is the dev client); change it there.",
        shown(client_id)
    ))
}

/// A new secret (with a selector), and the secret to store: its argon2 hash (computed on a blocking thread)
/// and selector.
async fn new_secret_and_hash(
    expires_on: Option<i64>,
    now: i64,
) -> Result<(zeroize::Zeroizing<String>, StoredSecret), AdminError> {
    tokio::task::spawn_blocking(move || {
        let (selector, secret) = generate_selected_secret();
        let hash = hash_secret(&secret).map_err(|e| AdminError::Internal(e.to_string()))?;
        let stored = StoredSecret {
            hash,
            expires_on,
            created_on: now,
            selector: Some(selector),
        };
        Ok((secret, stored))
    })
    .await
    .map_err(|e| AdminError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::{ADMINISTRATOR, READER};

    /// The keys of every test here: one fixed KEK (and another, for documents tagged elsewhere).
    fn test_envelope(byte: u8) -> Arc<Envelope> {
        Arc::new(Envelope::new(Arc::new(
            crate::crypto::StaticKeyProvider::from_bytes([byte; 32]),
        )))
    }

    fn test_keys() -> AccessKeys {
        AccessKeys::new(test_envelope(7))
    }

    /// The document in stored bytes tagged under the test key.
    fn read_stored(bytes: &[u8]) -> AccessFile {
        let (doc, kek_id, _) = open_tagged(
            &test_envelope(7),
            &tagged::Binding::default(),
            bytes,
            None,
            "test",
        )
        .unwrap();
        assert_eq!(kek_id, test_envelope(7).current_kek_id());
        doc
    }

    /// `doc` (JSON) in the stored form, tagged under the test key.
    fn tagged_json(doc: &str) -> Vec<u8> {
        tagged::wrap(&test_envelope(7), &tagged::Binding::default(), 1, doc, true).unwrap()
    }

    /// An admin change whose request is dropped once it is saved (its client gone while the store records that
    /// the document is tagged: the first change over a new data directory waits there) is in force as saved,
    /// and the next change keeps it. It was saved but not applied, and the next change saved over it (a92-1).
    #[tokio::test]
    async fn a_change_dropped_after_its_save_is_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let store: Arc<dyn SecretStore> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("v.db")).unwrap());
        let (clients, policy) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin = AccessAdmin::open(Some(&data), Some(store), clients, policy, test_keys())
            .await
            .unwrap();
        let saved = |principal: &str| {
            read_stored(&std::fs::read(data.join(ACCESS_FILE)).unwrap())
                .assignments
                .iter()
                .any(|a| a.principal == principal)
        };
        let mut change = Box::pin(admin.assign("external-1", READER, Scope::Vault));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            change.as_mut().poll(&mut cx).is_pending(),
            "the change waits for the store's record"
        );
        drop(change);
        assert!(saved("external-1"));
        assert_eq!(admin.assignments(Some("external-1")).len(), 1, "in force");

        admin
            .assign("external-2", READER, Scope::Vault)
            .await
            .unwrap();
        assert!(saved("external-1") && saved("external-2"));
        assert_eq!(admin.assignments(Some("external-1")).len(), 1);
    }

    #[tokio::test]
    async fn a_change_that_cannot_be_saved_is_unavailable_and_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (clients, policy) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin = AccessAdmin::open(Some(&data), None, clients, policy, test_keys())
            .await
            .unwrap();
        // The directory gone: the file cannot be written (as with a full disk).
        std::fs::remove_dir_all(&data).unwrap();
        match admin.assign("external-1", READER, Scope::Vault).await {
            Err(AdminError::Unavailable(m)) => assert!(m.contains("cannot be written"), "{m}"),
            other => panic!("{:?}", other.map(|(a, created)| (a.id, created))),
        }
        // Writable again: the change is made then, as a new one (it was not applied before).
        std::fs::create_dir(&data).unwrap();
        let (_, created) = admin
            .assign("external-1", READER, Scope::Vault)
            .await
            .unwrap();
        assert!(created);
    }

    #[tokio::test]
    async fn changes_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (clients, policy) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin = AccessAdmin::open(
            Some(dir.path()),
            None,
            clients.clone(),
            policy.clone(),
            test_keys(),
        )
        .await
        .unwrap();
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
        let (ext, created) = admin
            .assign("external-1", READER, Scope::Vault)
            .await
            .unwrap();
        assert!(created);
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
        let admin2 = AccessAdmin::open(
            Some(dir.path()),
            None,
            clients2.clone(),
            policy2.clone(),
            test_keys(),
        )
        .await
        .unwrap();
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
        admin2.unassign(&ext.id).await.unwrap();
        admin2.delete_principal(&view.client_id).await.unwrap();
        let (clients3, policy3) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin3 = AccessAdmin::open(
            Some(dir.path()),
            None,
            clients3.clone(),
            policy3,
            test_keys(),
        )
        .await
        .unwrap();
        assert!(admin3.principals().is_empty());
        assert!(admin3.assignments(None).is_empty());
        assert!(!clients3.contains(&view.client_id));
    }

    /// The last administrator cannot be removed: narrowing the configured one by an assignment, removing the
    /// only administrator assignment, deleting the principal that holds it, or taking `admin` out of the role
    /// that grants it is refused (409) while nobody else would hold it; with another administrator, each is
    /// allowed.
    #[tokio::test]
    async fn the_last_administrator_is_kept() {
        use crate::auth::policy::{ADMINISTRATOR, Operation, Permission};
        let policy = Arc::new(Policy::new());
        policy
            .set_default_role(ADMINISTRATOR, ["cfg".to_string()])
            .unwrap();
        let clients = Arc::new(ClientRegistry::new());
        clients.ensure("cfg");
        let admin = AccessAdmin::open(None, None, clients, policy.clone(), test_keys())
            .await
            .unwrap();
        let last = |r: Result<_, AdminError>| match r {
            Err(AdminError::Conflict(m)) => {
                assert!(m.contains("no principal with the admin permission"), "{m}")
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("the last administrator was removed"),
        };
        // The configured client, administrator by default, narrowed: refused.
        last(
            admin
                .assign("cfg", "Key Vault Reader", Scope::Vault)
                .await
                .map(|_| ()),
        );
        // An administrator role at a narrower scope is not the vault's administration either.
        last(
            admin
                .assign("cfg", ADMINISTRATOR, Scope::parse("/secrets/x").unwrap())
                .await
                .map(|_| ()),
        );
        assert!(policy.authorize("cfg", Operation::VaultAdmin, None).is_ok());

        // A custom role with `admin`, given to a managed principal: then the configured client may be narrowed.
        admin
            .define_role("Keeper", vec![Permission::Admin, Permission::List])
            .await
            .unwrap();
        let (keeper, _, _) = admin
            .create_principal(
                Some("keeper".into()),
                None,
                Some(("Keeper".into(), Scope::Vault)),
                1_700_000_000,
            )
            .await
            .unwrap();
        let keeper = keeper.client_id;
        let (narrowed, _) = admin
            .assign("cfg", "Key Vault Reader", Scope::Vault)
            .await
            .unwrap();
        assert!(
            policy
                .authorize("cfg", Operation::VaultAdmin, None)
                .is_err()
        );
        // Now the keeper is the last: its role cannot lose `admin`, be deleted, its assignment removed, or the
        // principal deleted.
        last(
            admin
                .define_role("keeper", vec![Permission::List])
                .await
                .map(|_| ()),
        );
        let keeper_assignment = admin.assignments(Some(&keeper)).pop().unwrap();
        last(admin.unassign(&keeper_assignment.id).await.map(|_| ()));
        last(admin.delete_principal(&keeper).await.map(|_| ()));
        assert!(
            policy
                .authorize(&keeper, Operation::VaultAdmin, None)
                .is_ok()
        );
        // With the configured client's narrowing removed it holds the default again: then all of it goes.
        admin.unassign(&narrowed.id).await.unwrap();
        admin.delete_principal(&keeper).await.unwrap();
        assert!(policy.authorize("cfg", Operation::VaultAdmin, None).is_ok());
    }

    /// A configured client narrowed by an assignment to a role of the configuration; the role is removed from
    /// the configuration and the server restarts (or another node never had it): the stored assignment is
    /// skipped, grants nothing, and the client does not fall back to its default role (Administrator).
    #[tokio::test]
    async fn an_assignment_to_a_role_not_defined_here_keeps_the_default_away() {
        use crate::auth::policy::{ADMINISTRATOR, Operation, Permission};
        let dir = tempfile::tempdir().unwrap();
        let with_role = || {
            let policy = Arc::new(Policy::new());
            policy
                .define_role("Rotator", vec![Permission::Get, Permission::Set])
                .unwrap();
            policy
                .set_default_role(ADMINISTRATOR, ["cfgdef".to_string()])
                .unwrap();
            policy
        };
        let policy = with_role();
        let admin = AccessAdmin::open(
            Some(dir.path()),
            None,
            Arc::new(ClientRegistry::new()),
            policy.clone(),
            test_keys(),
        )
        .await
        .unwrap();
        // Another administrator first: narrowing the only one is refused (`keeps_an_administrator`).
        admin
            .assign("other-admin", ADMINISTRATOR, Scope::Vault)
            .await
            .unwrap();
        admin
            .assign("cfgdef", "Rotator", Scope::parse("/secrets/pub").unwrap())
            .await
            .unwrap();
        assert!(
            policy
                .authorize("cfgdef", Operation::VaultAdmin, None)
                .is_err()
        );

        // Restarted without the role.
        let policy2 = Arc::new(Policy::new());
        policy2
            .set_default_role(ADMINISTRATOR, ["cfgdef".to_string()])
            .unwrap();
        let admin2 = AccessAdmin::open(
            Some(dir.path()),
            None,
            Arc::new(ClientRegistry::new()),
            policy2.clone(),
            test_keys(),
        )
        .await
        .unwrap();
        // Listed, marked as not in force here.
        let listed = admin2.assignments(Some("cfgdef"));
        assert_eq!(listed.len(), 1);
        assert!(listed[0].not_in_force && listed[0].role == "Rotator");
        let json = serde_json::to_value(&listed[0]).unwrap();
        assert_eq!(json["notInForce"], true, "{json}");
        assert!(
            policy2
                .authorize("cfgdef", Operation::VaultAdmin, None)
                .is_err()
        );
        assert!(
            policy2
                .authorize("cfgdef", Operation::SecretGet, Some("pub"))
                .is_err()
        );
        assert_eq!(policy2.default_role_of("cfgdef"), None);
        // A role of that name cannot be made through the API meanwhile: it would put the forgotten assignment
        // in force (at the next start) with whatever permissions the new role has.
        let refused = admin2
            .define_role("rotator", vec![Permission::Get, Permission::Admin])
            .await;
        let Err(AdminError::Conflict(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(message.contains(&listed[0].id), "{message}");
        assert_eq!(admin2.assignments(Some("cfgdef")).len(), 1);
        // With the role back, the assignment is in force again.
        let policy3 = with_role();
        let admin3 = AccessAdmin::open(
            Some(dir.path()),
            None,
            Arc::new(ClientRegistry::new()),
            policy3.clone(),
            test_keys(),
        )
        .await
        .unwrap();
        let listed = admin3.assignments(Some("cfgdef"));
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].not_in_force);
        assert!(
            serde_json::to_value(&listed[0])
                .unwrap()
                .get("notInForce")
                .is_none()
        );
        assert!(
            policy3
                .authorize("cfgdef", Operation::SecretGet, Some("pub"))
                .is_ok()
        );
        assert!(
            policy3
                .authorize("cfgdef", Operation::VaultAdmin, None)
                .is_err()
        );
    }

    #[tokio::test]
    async fn api_secrets_keep_their_selector_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, _) = file_admin(dir.path()).await;
        let (view, first, _) = admin
            .create_principal(None, None, None, 1_000)
            .await
            .unwrap();
        let second = admin
            .add_secret(&view.client_id, None, 1_000)
            .await
            .unwrap();
        let bytes = std::fs::read(dir.path().join(ACCESS_FILE)).unwrap();
        let doc = read_stored(&bytes);
        let selectors: Vec<&str> = doc.principals[0]
            .secrets
            .iter()
            .map(|s| s.selector.as_deref().unwrap())
            .collect();
        assert_eq!(selectors.len(), 2);
        for (selector, secret) in selectors.iter().zip([&first, &second]) {
            assert_eq!(
                secret
                    .client_secret
                    .strip_prefix(selector)
                    .unwrap()
                    .chars()
                    .next(),
                Some('~')
            );
        }

        let clients = Arc::new(ClientRegistry::new());
        AccessAdmin::open(
            Some(dir.path()),
            None,
            clients.clone(),
            Arc::new(Policy::new()),
            test_keys(),
        )
        .await
        .unwrap();
        assert!(clients.verify(&view.client_id, &first.client_secret));
        assert!(clients.verify(&view.client_id, &second.client_secret));
        // The other secret's selector with this one's random part is just a wrong secret.
        let crossed = format!(
            "{}{}",
            selectors[1],
            &first.client_secret[selectors[0].len()..]
        );
        assert!(!clients.verify(&view.client_id, &crossed));
    }

    /// Not a CI test (it times things): the cost of loading and changing a document of `KV_N` (default
    /// 10,000) principals, each with an assignment. `cargo test -p keyvault-server --release
    /// many_principals -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn many_principals_load_and_change_in_linear_time() {
        let n: usize = std::env::var("KV_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let hash = crate::auth::clients::tests_dummy_hash();
        let mut doc = AccessFile::default();
        for i in 0..n {
            let client_id = format!("client-{i:06}");
            doc.assignments.push(Assignment {
                id: format!("assignment-{i:06}"),
                principal: client_id.clone(),
                role: READER.into(),
                scope: Scope::Vault,
            });
            doc.principals.push(StoredPrincipal {
                client_id,
                display_name: None,
                created_on: 1,
                secrets: vec![StoredSecret {
                    hash: hash.to_string(),
                    expires_on: None,
                    created_on: 1,
                    selector: None,
                }],
            });
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(ACCESS_FILE),
            tagged_json(&serde_json::to_string(&doc).unwrap()),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let (admin, policy) = file_admin(dir.path()).await;
        eprintln!("open with {n} principals: {:?}", started.elapsed());
        assert_eq!(policy.assignments(None).len(), n);
        for k in 0..3 {
            let started = std::time::Instant::now();
            admin
                .assign(&format!("external-{k}"), READER, Scope::Vault)
                .await
                .unwrap();
            eprintln!("assign: {:?}", started.elapsed());
        }
        let started = std::time::Instant::now();
        admin.delete_principal("client-000000").await.unwrap();
        eprintln!("delete principal: {:?}", started.elapsed());
        let started = std::time::Instant::now();
        assert_eq!(admin.assignments(None).len(), n + 2);
        assert_eq!(admin.principals().len(), n - 1);
        eprintln!("list assignments and principals: {:?}", started.elapsed());
    }

    /// An admin over the access file in `dir`, with no clients, and its policy.
    async fn file_admin(dir: &Path) -> (AccessAdmin, Arc<Policy>) {
        let policy = Arc::new(Policy::new());
        let admin = AccessAdmin::open(
            Some(dir),
            None,
            Arc::new(ClientRegistry::new()),
            policy.clone(),
            test_keys(),
        )
        .await
        .unwrap();
        (admin, policy)
    }

    fn stored_role_names(dir: &Path) -> Vec<String> {
        let Ok(bytes) = std::fs::read(dir.join(ACCESS_FILE)) else {
            return Vec::new();
        };
        let doc = read_stored(&bytes);
        doc.roles.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn display_names_refuse_what_role_names_refuse() {
        assert!(valid_display_name("billing app — é 日本").is_ok());
        assert!(valid_display_name(&"é".repeat(256)).is_ok());
        for bad in [
            "é".repeat(257),
            "admin\u{202E}nimda".into(),
            "a\u{200B}b".into(),
            "a\u{FFFD}b".into(),
            "a\nb".into(),
        ] {
            assert!(valid_display_name(&bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn role_names_are_checked_once_before_saving() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, policy) = file_admin(dir.path()).await;
        // 100 two-byte characters: 100 characters, 200 bytes. Saved, in force, and removable.
        let long = "é".repeat(100);
        let (role, created) = admin
            .define_role(&long, vec![Permission::Get])
            .await
            .unwrap();
        assert!(created);
        assert_eq!(role.role.name, long);
        assert!(policy.roles().iter().any(|r| r.name == long));
        assert_eq!(stored_role_names(dir.path()), vec![long.clone()]);
        admin.remove_role(&long).await.unwrap();
        assert!(stored_role_names(dir.path()).is_empty());

        // Refused with 400 before anything is saved or applied.
        for bad in [
            "é".repeat(129),
            "a\u{202E}b".into(),
            "a\u{200B}b".into(),
            "a\u{FFFD}b".into(),
            "a\u{7}b".into(),
        ] {
            let e = admin
                .define_role(&bad, vec![Permission::Get])
                .await
                .unwrap_err();
            assert!(matches!(e, AdminError::BadParameter(_)), "{bad:?}: {e:?}");
        }
        assert!(stored_role_names(dir.path()).is_empty());
        assert!(admin.roles().iter().all(|r| !r.managed));

        // An assignment's principal follows the same rule (a listing must not show one principal as another),
        // and surrounding whitespace is refused as the configuration refuses it, not trimmed; an identifier has
        // no space but ASCII's, nor a variation selector.
        for bad in [
            "ops\u{202E}\u{2066}nimda",
            "a\u{200B}b",
            " spaced ",
            "a\u{7}b",
            "",
            "a\u{034F}b",
            "a\u{FE0F}b",
            "admin\u{E0100}",
            "a\u{180B}b",
            "admin\u{2800}",
            "admin\u{1D159}",
            "admin\u{E0080}",
            "admin\u{E0FFF}",
            "a\u{3164}b",
            "a\u{115F}b",
            "a\u{00A0}b",
            "a\u{3000}b",
        ] {
            let e = admin.assign(bad, "Key Vault Reader", Scope::Vault).await;
            assert!(
                matches!(e, Err(AdminError::BadParameter(_))),
                "{bad:?}: {e:?}"
            );
        }
        assert!(admin.assignments(None).is_empty());
        // Names people have, in role names: accepted.
        for name in [
            "山田\u{3000}太郎",
            "App \u{2764}\u{FE0F}",
            "José a\u{00A0}b",
        ] {
            admin
                .define_role(name, vec![Permission::Get])
                .await
                .unwrap_or_else(|e| panic!("{name:?}: {e:?}"));
            admin.remove_role(name).await.unwrap();
        }
        // A bad scope is echoed as every echo is: cut, its control and bidirectional characters escaped.
        let e = Scope::parse(&format!("\u{202E}\u{7}{}", "x".repeat(300))).unwrap_err();
        assert!(
            e.0.contains("\\u{202e}\\u{0007}") && e.0.len() < 300,
            "{}",
            e.0
        );
    }

    #[tokio::test]
    async fn a_stored_role_the_policy_refuses_can_still_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Saved by an older version, whose rule let it through.
        std::fs::write(
            dir.path().join(ACCESS_FILE),
            tagged_json(r#"{"roles":[{"name":"a\u202eb","permissions":["get"]}]}"#),
        )
        .unwrap();
        let (admin, policy) = file_admin(dir.path()).await;
        assert_eq!(policy.roles().len(), 4, "not in force");
        admin.remove_role("a\u{202E}b").await.unwrap();
        assert!(stored_role_names(dir.path()).is_empty());
        assert!(matches!(
            admin.remove_role("a\u{202E}b").await,
            Err(AdminError::NotFound(_))
        ));
    }

    #[test]
    fn the_confirmation_keeps_the_latest_and_ages_on_the_monotonic_clock() {
        let origin = Instant::now();
        let c = Confirmation::new(origin);
        let at = |secs| origin + Duration::from_secs(secs);
        assert_eq!(c.age(at(3)), Duration::from_secs(3));
        c.confirm(at(10));
        // A read that started earlier but finished later confirms nothing newer.
        c.confirm(at(4));
        assert_eq!(c.age(at(12)), Duration::from_secs(2));
        assert_eq!(c.age(at(10) + UNCONFIRMED_LIMIT), UNCONFIRMED_LIMIT);
        // Before the confirmation (a reading taken earlier): not negative.
        assert_eq!(c.age(at(9)), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_private_store_is_never_unconfirmed() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, _) = file_admin(dir.path()).await;
        assert!(admin.confirmation.is_none());
        assert_eq!(admin.unconfirmed(), None);
        assert_eq!(admin.confirmation_state(), None);
        assert!(!admin.refresh().await.unwrap());
    }

    /// A store over the test cluster's database.
    async fn pg_store(pg: &crate::store::pgtest::PgCluster) -> Arc<dyn SecretStore> {
        Arc::new(
            crate::store::postgres::PostgresStore::open(&pg.url())
                .await
                .unwrap(),
        )
    }

    /// Over a real PostgreSQL store: reads and own changes confirm the state; a document that cannot be
    /// parsed (written by another version, damaged) does not, and its error quotes none of it.
    #[tokio::test]
    async fn only_a_read_and_applied_document_confirms_the_state() {
        let Some(pg) = crate::store::pgtest::start_or_skip(
            "admin::only_a_read_and_applied_document_confirms_the_state",
        ) else {
            return;
        };
        let store = pg_store(&pg).await;
        let (clients, policy) = (Arc::new(ClientRegistry::new()), Arc::new(Policy::new()));
        let admin = AccessAdmin::open(None, Some(store), clients, policy.clone(), test_keys())
            .await
            .unwrap();
        let at = |a: &AccessAdmin| a.confirmation.as_ref().unwrap().at.load(Ordering::Relaxed);
        assert_eq!(admin.unconfirmed(), None);

        let before = at(&admin);
        admin
            .define_role("Reader Two", vec![Permission::Get])
            .await
            .unwrap();
        assert!(at(&admin) > before, "a change saved by compare-and-set");
        let before = at(&admin);
        assert!(!admin.refresh().await.unwrap());
        assert!(at(&admin) > before, "a refresh that found nothing new");

        pg.query_text(
            "UPDATE kv_access SET revision = revision + 1, \
             doc = convert_to('[\"quoted-document-text\"]', 'UTF8')",
        )
        .await
        .unwrap();
        let before = at(&admin);
        let e = admin.refresh().await.unwrap_err().to_string();
        assert!(e.contains("not a valid access document"), "{e}");
        assert!(!e.contains("quoted-document-text"), "{e}");
        assert_eq!(
            at(&admin),
            before,
            "an unparseable document confirms nothing"
        );
        let has_role = || policy.roles().iter().any(|r| r.name == "Reader Two");
        assert!(has_role(), "what was applied stays");

        // An untagged document (what an older build wrote, or a DBA): refused the same way.
        pg.query_text(
            "UPDATE kv_access SET revision = revision + 1, doc = convert_to('{}', 'UTF8')",
        )
        .await
        .unwrap();
        let e = admin.refresh().await.unwrap_err().to_string();
        assert!(e.contains(tagged::NOT_VERIFIED), "{e}");
        assert_eq!(at(&admin), before);
        assert!(has_role());

        // Tagged, for this vault, at the row's revision (define_role: 1, and three updates).
        let empty = String::from_utf8(
            tagged::wrap(
                &test_envelope(7),
                &tagged::Binding::default(),
                4,
                "{}",
                false,
            )
            .unwrap(),
        )
        .unwrap();
        pg.query_text(&format!(
            "UPDATE kv_access SET revision = revision + 1, doc = convert_to('{empty}', 'UTF8')"
        ))
        .await
        .unwrap();
        assert!(admin.refresh().await.unwrap());
        assert!(at(&admin) > before);
        assert!(!has_role());
    }

    /// The audit's H1: the tag binds the vault's name and tenant (the name in any case), and the revision
    /// when the caller knows the row's.
    #[test]
    fn a_tag_binds_the_vault_the_tenant_and_the_revision() {
        let envelope = test_envelope(7);
        let vx = tagged::Binding::new("vx", "tenant-a");
        let stored = tagged::wrap(&envelope, &vx, 3, r#"{"principals":[]}"#, false).unwrap();
        let open = |binding: &tagged::Binding, revision: Option<i64>| {
            tagged::unwrap(&envelope, binding, &stored, revision, "test")
        };
        let ok = open(&tagged::Binding::new("VX", "tenant-a"), Some(3)).unwrap();
        assert_eq!(
            (ok.revision, ok.document.as_str()),
            (3, r#"{"principals":[]}"#)
        );
        assert!(open(&vx, None).is_ok(), "a file: any revision it carries");
        for (binding, revision) in [
            (tagged::Binding::new("vy", "tenant-a"), Some(3)),
            (tagged::Binding::new("vx", "tenant-b"), Some(3)),
            (vx.clone(), Some(4)),
        ] {
            match open(&binding, revision) {
                Err(DocError::NotVerified {
                    message,
                    replaceable: true,
                }) => {
                    assert!(message.contains(tagged::NOT_VERIFIED), "{message}")
                }
                Err(e) => panic!("{e:?}"),
                Ok(_) => panic!("verified for {binding:?} at {revision:?}"),
            }
        }
        // The revision in the wrapper changed by hand: the tag no longer matches.
        let text = String::from_utf8(stored.clone()).unwrap();
        let bumped = text.replace(r#""revision":3"#, r#""revision":4"#);
        assert_ne!(bumped, text);
        assert!(matches!(
            tagged::unwrap(&envelope, &vx, bumped.as_bytes(), Some(4), "test"),
            Err(DocError::NotVerified { .. })
        ));
    }

    /// H1 over files: access.json copied from a vault of another name (the same KEK) is refused at start.
    #[tokio::test]
    async fn an_access_file_of_another_vault_is_refused_at_start() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let keys = |vault: &str| AccessKeys {
            binding: tagged::Binding::new(vault, "tenant"),
            ..test_keys()
        };
        let open = |dir: PathBuf, vault: &'static str| async move {
            AccessAdmin::open(
                Some(&dir),
                None,
                Arc::new(ClientRegistry::new()),
                Arc::new(Policy::new()),
                keys(vault),
            )
            .await
        };
        let admin = open(x.path().to_owned(), "vx").await.unwrap();
        admin
            .create_principal(
                Some("evil".into()),
                None,
                Some((ADMINISTRATOR.into(), Scope::Vault)),
                0,
            )
            .await
            .unwrap();
        drop(admin);
        std::fs::copy(x.path().join(ACCESS_FILE), y.path().join(ACCESS_FILE)).unwrap();
        let e = open(y.path().to_owned(), "vy").await.unwrap_err();
        assert!(e.contains(tagged::NOT_VERIFIED), "{e}");
        // Its own vault still reads it (and a revision that counts its changes).
        let admin = open(x.path().to_owned(), "vx").await.unwrap();
        assert_eq!(admin.principals().len(), 1);
        assert_eq!(admin.lock().revision, 1);
    }

    /// M4: once a store recorded that its document is tagged, an untagged one is refused even with
    /// --adopt-access-document; and an object that is not an access document is never adopted.
    #[tokio::test]
    async fn adoption_is_once_per_store_and_only_of_an_access_document() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("vault.db")).unwrap(),
        );
        let adopting = AccessKeys {
            adopt: true,
            ..test_keys()
        };
        let open = |keys: AccessKeys| {
            AccessAdmin::open(
                Some(dir.path()),
                Some(store.clone()),
                Arc::new(ClientRegistry::new()),
                Arc::new(Policy::new()),
                keys,
            )
        };
        let file = dir.path().join(ACCESS_FILE);
        // Not an access document (a wrapper's members renamed): refused, nothing written.
        let renamed =
            br#"{"Format":"keyvault-access/3","Kek":"00000000","Tag":"x","Document":"{}"}"#;
        std::fs::write(&file, renamed).unwrap();
        let e = open(adopting.clone()).await.unwrap_err();
        assert!(e.contains("not a valid access document"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), renamed);
        assert_eq!(store.meta(tagged::TAGGED_MARKER).await.unwrap(), None);

        // An old build's document: adopted once, and the store records that it is tagged.
        std::fs::write(
            &file,
            br#"{"principals":[],"roles":[{"name":"R1","permissions":["get"]}]}"#,
        )
        .unwrap();
        let admin = open(adopting.clone()).await.unwrap();
        assert_eq!(
            admin.roles().iter().filter(|r| r.role.name == "R1").count(),
            1
        );
        drop(admin);
        assert!(store.meta(tagged::TAGGED_MARKER).await.unwrap().is_some());

        // The flag left on, and an untagged document written by hand: tampering, not an upgrade.
        std::fs::write(&file, br#"{"roles":[{"name":"R2","permissions":["get"]}]}"#).unwrap();
        let e = open(adopting.clone()).await.unwrap_err();
        assert!(e.contains("saved tagged before"), "{e}");
        assert!(e.contains(tagged::NOT_VERIFIED), "{e}");
        let e = open(test_keys()).await.unwrap_err();
        assert!(e.contains("saved tagged before"), "{e}");
    }

    /// M1 and H2 over a real PostgreSQL store: an older row put back under a later revision, or with its
    /// own lower revision, is refused by a running node (at once unconfirmed); while it refuses, only a
    /// configured administrator may use the admin API, never a managed one.
    #[tokio::test]
    async fn an_older_row_is_refused_and_only_configured_administrators_may_repair() {
        let Some(pg) = crate::store::pgtest::start_or_skip(
            "admin::an_older_row_is_refused_and_only_configured_administrators_may_repair",
        ) else {
            return;
        };
        let store = pg_store(&pg).await;
        let clients = Arc::new(ClientRegistry::new());
        let policy = Arc::new(Policy::new());
        clients.ensure("cfg-admin");
        clients.ensure("cfg-reader");
        for (principal, role) in [("cfg-admin", ADMINISTRATOR), ("cfg-reader", READER)] {
            policy
                .assign(Assignment {
                    id: format!("configured-{principal}"),
                    principal: principal.into(),
                    role: role.into(),
                    scope: Scope::Vault,
                })
                .unwrap();
        }
        let admin = AccessAdmin::open(None, Some(store.clone()), clients, policy, test_keys())
            .await
            .unwrap();
        let (p, _, _) = admin
            .create_principal(
                Some("p".into()),
                None,
                Some((ADMINISTRATOR.into(), Scope::Vault)),
                0,
            )
            .await
            .unwrap();
        let old = store.access_doc().await.unwrap().unwrap();
        assert_eq!(old.revision, 1);
        admin.delete_principal(&p.client_id).await.unwrap();
        let old_text = String::from_utf8(old.doc.clone())
            .unwrap()
            .replace('\'', "''");

        // The revision-1 row put back as revision 3: refused, at once.
        pg.query_text(&format!(
            "UPDATE kv_access SET revision = revision + 1, doc = convert_to('{old_text}', 'UTF8')"
        ))
        .await
        .unwrap();
        let e = admin.refresh().await.unwrap_err().to_string();
        assert!(
            e.contains(tagged::NOT_VERIFIED) && e.contains("tagged as revision 1"),
            "{e}"
        );
        assert!(admin.unconfirmed().is_some());
        assert!(
            admin
                .principals()
                .iter()
                .all(|v| v.client_id != p.client_id)
        );
        // While refusing: a configured administrator only.
        assert!(admin.admits_while_refusing("cfg-admin"));
        assert!(!admin.admits_while_refusing("cfg-reader"));
        assert!(!admin.admits_while_refusing(&p.client_id));
        assert!(!admin.admits_while_refusing("unknown"));

        // The same row with its own revision (1, below the 2 applied): refused, and not replaceable.
        pg.query_text(&format!(
            "UPDATE kv_access SET revision = 1, doc = convert_to('{old_text}', 'UTF8')"
        ))
        .await
        .unwrap();
        let e = admin.refresh().await.unwrap_err().to_string();
        assert!(e.contains("is lower than revision 2"), "{e}");
        assert!(admin.unconfirmed().is_some());
        assert!(!admin.refuses_replaceable_document());
        assert!(!admin.admits_while_refusing("cfg-admin"));
        assert!(
            admin
                .principals()
                .iter()
                .all(|v| v.client_id != p.client_id)
        );
    }
}
