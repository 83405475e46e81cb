//! Access control: who may do what. Key Vault's permissions, Azure's built-in roles, custom roles,
//! assignments of a role to a principal at a scope, and the one decision point, [`Policy::authorize`].
//!
//! - A [`Permission`] is one of Key Vault's secret permissions (get, list, set, delete, recover, backup,
//!   restore, purge) or vault administration.
//! - An [`Operation`] is one route of the API; it needs exactly one permission and names Azure's data action
//!   in a denial.
//! - A [`Role`] is a named permission set: the built-ins mirror Azure's (Key Vault Administrator, Secrets
//!   Officer, Secrets User, Reader); custom roles come from the configuration or the admin API.
//! - An [`Assignment`] gives a principal a role at a [`Scope`]: the whole vault, one secret, or every secret
//!   whose name starts with a prefix. Names compare case-insensitively, as Key Vault's do.
//!
//! The [`Policy`] is shared (`Arc`) and swappable at run time: changes take effect on the next request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::vault::NameRange;

/// One of Key Vault's secret permissions, or vault administration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read a secret's value (GET a secret).
    Get,
    /// Read metadata: list secrets, versions and deleted secrets; read a deleted secret (which has no value).
    List,
    /// Create a secret or a version, and update attributes (PUT, PATCH).
    Set,
    Delete,
    Recover,
    Backup,
    Restore,
    Purge,
    /// Manage principals, roles and assignments (the admin API).
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::Get,
        Permission::List,
        Permission::Set,
        Permission::Delete,
        Permission::Recover,
        Permission::Backup,
        Permission::Restore,
        Permission::Purge,
        Permission::Admin,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The name used in configuration, the admin API and access-policy messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Get => "get",
            Permission::List => "list",
            Permission::Set => "set",
            Permission::Delete => "delete",
            Permission::Recover => "recover",
            Permission::Backup => "backup",
            Permission::Restore => "restore",
            Permission::Purge => "purge",
            Permission::Admin => "admin",
        }
    }

    /// Parses a permission name (case-insensitive; `administration` is accepted for `admin`).
    pub fn parse(s: &str) -> Option<Permission> {
        let s = s.trim().to_ascii_lowercase();
        if s == "administration" {
            return Some(Permission::Admin);
        }
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Permission::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown permission '{}' (expected get, list, set, delete, recover, backup, restore, purge or admin)",
                shown(&s)
            ))
        })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u16);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);

    pub fn of(perms: &[Permission]) -> Permissions {
        Permissions(perms.iter().fold(0, |acc, p| acc | p.bit()))
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One route of the API: what it is called in the audit log, which permission it needs, and Azure's data
/// action (named in a denial).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    SecretGet,
    SecretSet,
    SecretUpdate,
    SecretDelete,
    SecretList,
    SecretListVersions,
    SecretListDeleted,
    SecretGetDeleted,
    SecretPurge,
    SecretRecover,
    SecretBackup,
    SecretRestore,
    /// Any admin API call.
    VaultAdmin,
}

impl Operation {
    /// The permission the operation needs.
    pub fn permission(self) -> Permission {
        match self {
            Operation::SecretGet => Permission::Get,
            Operation::SecretSet | Operation::SecretUpdate => Permission::Set,
            Operation::SecretDelete => Permission::Delete,
            Operation::SecretList
            | Operation::SecretListVersions
            | Operation::SecretListDeleted
            | Operation::SecretGetDeleted => Permission::List,
            Operation::SecretPurge => Permission::Purge,
            Operation::SecretRecover => Permission::Recover,
            Operation::SecretBackup => Permission::Backup,
            Operation::SecretRestore => Permission::Restore,
            Operation::VaultAdmin => Permission::Admin,
        }
    }

    /// Azure RBAC's data action for the operation.
    pub fn data_action(self) -> &'static str {
        match self {
            Operation::SecretGet => "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            Operation::SecretSet => "Microsoft.KeyVault/vaults/secrets/setSecret/action",
            Operation::SecretUpdate => "Microsoft.KeyVault/vaults/secrets/update/action",
            Operation::SecretDelete => "Microsoft.KeyVault/vaults/secrets/delete",
            Operation::SecretList
            | Operation::SecretListVersions
            | Operation::SecretListDeleted
            | Operation::SecretGetDeleted => {
                "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
            }
            Operation::SecretPurge => "Microsoft.KeyVault/vaults/secrets/purge/action",
            Operation::SecretRecover => "Microsoft.KeyVault/vaults/secrets/recover/action",
            Operation::SecretBackup => "Microsoft.KeyVault/vaults/secrets/backup/action",
            Operation::SecretRestore => "Microsoft.KeyVault/vaults/secrets/restore/action",
            Operation::VaultAdmin => "Microsoft.KeyVault/vaults/write",
        }
    }

    /// The operation's name in the audit log (Azure's diagnostic-log operation names).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::SecretGet => "SecretGet",
            Operation::SecretSet => "SecretSet",
            Operation::SecretUpdate => "SecretUpdate",
            Operation::SecretDelete => "SecretDelete",
            Operation::SecretList => "SecretList",
            Operation::SecretListVersions => "SecretListVersions",
            Operation::SecretListDeleted => "SecretListDeleted",
            Operation::SecretGetDeleted => "SecretGetDeleted",
            Operation::SecretPurge => "SecretPurge",
            Operation::SecretRecover => "SecretRecover",
            Operation::SecretBackup => "SecretBackup",
            Operation::SecretRestore => "SecretRestore",
            Operation::VaultAdmin => "VaultAdmin",
        }
    }
}

/// Where an assignment applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole vault: every secret, and the vault-level operations (list, restore, administration).
    Vault,
    /// One secret (lowercased name).
    Secret(String),
    /// Every secret whose (lowercased) name starts with this prefix.
    Prefix(String),
}

impl Scope {
    /// Parses `/` (or empty, or `vault`) = the vault; `/secrets/NAME` = one secret; `/secrets/PREFIX*` = a name
    /// prefix. The leading slash is optional.
    pub fn parse(s: &str) -> Result<Scope, PolicyError> {
        let t = s.trim();
        if t.is_empty() || t == "/" || t.eq_ignore_ascii_case("vault") {
            return Ok(Scope::Vault);
        }
        let t = t.trim_start_matches('/');
        let bad = || {
            PolicyError(format!(
                "scope must be \"/\", \"/secrets/NAME\" or \"/secrets/PREFIX*\", not '{}'",
                shown(s)
            ))
        };
        let rest = t.strip_prefix("secrets/").ok_or_else(bad)?;
        let (name, prefix) = match rest.strip_suffix('*') {
            Some(p) => (p, true),
            None => (rest, false),
        };
        let name_ok =
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && name.len() <= 127;
        if !name_ok || (!prefix && name.is_empty()) {
            return Err(bad());
        }
        let name = name.to_ascii_lowercase();
        Ok(if prefix {
            Scope::Prefix(name)
        } else {
            Scope::Secret(name)
        })
    }

    /// Whether the scope covers the secret `name` (`None` = a vault-level operation).
    fn covers(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (Scope::Vault, _) => true,
            (_, None) => false,
            (Scope::Secret(s), Some(n)) => s.eq_ignore_ascii_case(n),
            (Scope::Prefix(p), Some(n)) => {
                n.len() >= p.len() && n.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Vault => f.write_str("/"),
            Scope::Secret(n) => write!(f, "/secrets/{n}"),
            Scope::Prefix(p) => write!(f, "/secrets/{p}*"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A named permission set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Azure's role definition id for the built-ins; `None` for custom roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub builtin: bool,
}

impl Role {
    fn perms(&self) -> Permissions {
        Permissions::of(&self.permissions)
    }
}

pub const ADMINISTRATOR: &str = "Key Vault Administrator";
pub const SECRETS_OFFICER: &str = "Key Vault Secrets Officer";
pub const SECRETS_USER: &str = "Key Vault Secrets User";
pub const READER: &str = "Key Vault Reader";

/// Azure's built-in Key Vault roles, restricted to secrets:
///
/// | Role | Permissions |
/// |---|---|
/// | Key Vault Administrator | everything, including administration |
/// | Key Vault Secrets Officer | every secret permission (get, list, set, delete, recover, backup, restore, purge) |
/// | Key Vault Secrets User | get, list (Azure: `getSecret` + `readMetadata`) |
/// | Key Vault Reader | list: metadata only, never a value (Azure: `readMetadata`) |
pub fn builtin_roles() -> Vec<Role> {
    use Permission::*;
    let secret_all = vec![Get, List, Set, Delete, Recover, Backup, Restore, Purge];
    let mut admin = secret_all.clone();
    admin.push(Admin);
    let role = |name: &str, id: &str, permissions: Vec<Permission>| Role {
        name: name.to_string(),
        id: Some(id.to_string()),
        permissions,
        builtin: true,
    };
    vec![
        role(ADMINISTRATOR, "00482a5a-887f-4fb3-b363-3b7fe8e74483", admin),
        role(
            SECRETS_OFFICER,
            "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
            secret_all,
        ),
        role(
            SECRETS_USER,
            "4633458b-17de-408a-b874-0445c86b69e6",
            vec![Get, List],
        ),
        role(READER, "21090545-7ca7-4776-b22c-e363c2ee13ab", vec![List]),
    ]
}

/// The most characters (not bytes) a role name may have.
pub const MAX_ROLE_NAME_CHARS: usize = 128;

/// The one rule for role names, wherever a role is defined (configuration, admin API, a stored access
/// document), so that a name accepted and saved by one is never refused by another: trimmed, 1 to
/// [`MAX_ROLE_NAME_CHARS`] characters, with no control character and no invisible or bidirectional-formatting
/// one (a name that displays like another, or reorders the text around it in a listing, an audit line or a
/// 409 message, must not be definable), and no U+FFFD, which is what a malformed percent-encoded path segment
/// decodes to. Returns the trimmed name.
pub fn check_role_name(name: &str) -> Result<&str, PolicyError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0
        || chars > MAX_ROLE_NAME_CHARS
        || name
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c) || c == char::REPLACEMENT_CHARACTER)
    {
        return Err(PolicyError(format!(
            "a role name must be 1-{MAX_ROLE_NAME_CHARS} characters, without control, invisible or \
             bidirectional-formatting characters (nor U+FFFD, which invalid UTF-8 in a path decodes to)"
        )));
    }
    Ok(name)
}

/// Text from a request (an id, a name) as a message echoes it: at most 128 characters (then `…`), its control,
/// invisible and bidirectional-formatting characters escaped (`\u{202e}`), so that an echo can neither grow an
/// answer without bound nor reorder or hide the text around it.
pub fn shown(text: &str) -> String {
    const MAX: usize = 128;
    let mut out = String::with_capacity(text.len().min(MAX * 2));
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() || is_invisible_format(c) || c == char::REPLACEMENT_CHARACTER {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) use keyvault_types::rules::is_invisible_format;

/// Whether `id` can name a principal (a client id, an e-mail, a UPN, an object id): 1-256 bytes, compared
/// exactly, so no surrounding whitespace (it would be trimmed away by eye, not by the comparison); and nothing
/// that would let a listing show one principal as another: no control, invisible or direction-changing
/// character, no U+FFFD, no space but ASCII's, no variation selector. The admin API and the configuration
/// apply the same rule.
pub(crate) fn valid_principal_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id.trim() == id
        && !id.chars().any(|c| {
            c.is_control()
                || is_invisible_format(c)
                || c == char::REPLACEMENT_CHARACTER
                || (c.is_whitespace() && c != ' ')
                || is_variation_selector(c)
                // Blank, yet not white space: `admin\u{2800}` lines up as `admin` in a table.
                || matches!(c, '\u{2800}' | '\u{1D159}')
        })
}

/// The variation selectors (U+FE00–FE0F, U+E0100–E01EF) and Mongolian's free variation selectors
/// (U+180B–180F): invisible, they change how the character before them looks. Emoji need U+FE0F, so role
/// and display names keep them; an id does not.
fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' | '\u{180B}'..='\u{180F}')
}

/// A role given to a principal at a scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Generated when absent.
    #[serde(default)]
    pub id: String,
    /// The principal: a client id (the `sub` of our tokens) or an external identity's id.
    pub principal: String,
    /// A role name (case-insensitive) or a built-in role's Azure id.
    pub role: String,
    #[serde(default = "vault_scope")]
    pub scope: Scope,
}

fn vault_scope() -> Scope {
    Scope::Vault
}

/// A policy change that cannot be made, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// A denial: who was refused what, for the 403 message and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub principal: String,
    pub operation: Operation,
    pub permission: Permission,
    pub name: Option<String>,
}

/// Which names a principal may list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Everything (the permission is held at vault scope).
    All,
    /// Only names covered by these scopes.
    Some(Vec<Scope>),
}

impl Visibility {
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Some(scopes) => scopes.iter().any(|s| s.covers(Some(name))),
        }
    }

    /// Whether every name is visible.
    pub fn is_all(&self) -> bool {
        matches!(self, Visibility::All)
    }

    /// The visible names as ranges of the listing order; `None` when every name is visible.
    pub fn name_ranges(&self) -> Option<Vec<NameRange>> {
        let Visibility::Some(scopes) = self else {
            return None;
        };
        let ranges = scopes.iter().map(|s| match s {
            // Not in `Some` (a vault scope makes it `All`), but it would cover every name.
            Scope::Vault => NameRange::Prefix(String::new()),
            Scope::Secret(n) => NameRange::Name(n.clone()),
            Scope::Prefix(p) => NameRange::Prefix(p.clone()),
        });
        Some(ranges.collect())
    }
}

#[derive(Default)]
struct Snapshot {
    /// Lowercased role name → role.
    roles: BTreeMap<String, Role>,
    /// In insertion order.
    assignments: Vec<Assignment>,
    /// Principal → (permissions, scope), derived from the above.
    grants: HashMap<String, Vec<(Permissions, Scope)>>,
    /// A role on the whole vault for these principals while no assignment names them
    /// ([`Policy::set_default_role`]).
    default_role: Option<(String, HashSet<String>)>,
    /// Principals named by stored assignments this node could not apply (their role is not defined here):
    /// they grant nothing, and they still displace the default role ([`Policy::set_unapplied`]).
    unapplied: HashSet<String>,
}

impl Snapshot {
    fn role(&self, name_or_id: &str) -> Option<&Role> {
        let key = name_or_id.trim().to_ascii_lowercase();
        self.roles.get(&key).or_else(|| {
            self.roles.values().find(|r| {
                r.id.as_deref()
                    .is_some_and(|id| id.eq_ignore_ascii_case(&key))
            })
        })
    }

    fn rebuild(&mut self) {
        let mut grants: HashMap<String, Vec<(Permissions, Scope)>> = HashMap::new();
        for a in &self.assignments {
            if let Some(role) = self.role(&a.role) {
                grants
                    .entry(a.principal.clone())
                    .or_default()
                    .push((role.perms(), a.scope.clone()));
            }
        }
        if let Some((role, principals)) = &self.default_role
            && let Some(role) = self.role(role)
        {
            for p in principals {
                if !grants.contains_key(p) && !self.unapplied.contains(p) {
                    grants.insert(p.clone(), vec![(role.perms(), Scope::Vault)]);
                }
            }
        }
        self.grants = grants;
    }
}

/// Roles and assignments, and the decision point. Readers never wait for long: a decision takes the read
/// lock, looks up the principal and scans its grants.
pub struct Policy {
    inner: RwLock<Snapshot>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Policy")
            .field("roles", &s.roles.len())
            .field("assignments", &s.assignments.len())
            .finish()
    }
}

impl Policy {
    /// The built-in roles and no assignments: every request is denied.
    pub fn new() -> Self {
        let mut snapshot = Snapshot::default();
        for r in builtin_roles() {
            snapshot.roles.insert(r.name.to_ascii_lowercase(), r);
        }
        Policy {
            inner: RwLock::new(snapshot),
        }
    }

    /// The one decision point: may `principal` perform `operation` on the secret `name` (`None` for the
    /// vault-level operations: list, list deleted, restore, administration)?
    pub fn authorize(
        &self,
        principal: &str,
        operation: Operation,
        name: Option<&str>,
    ) -> Result<(), Denied> {
        let permission = operation.permission();
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let allowed = s.grants.get(principal).is_some_and(|grants| {
            grants
                .iter()
                .any(|(perms, scope)| perms.contains(permission) && scope.covers(name))
        });
        if allowed {
            Ok(())
        } else {
            Err(Denied {
                principal: principal.to_string(),
                operation,
                permission,
                name: name.map(str::to_string),
            })
        }
    }

    /// Which secrets `principal` may see with `permission`: all, some, or none (`Err`, for a 403).
    pub fn visibility(&self, principal: &str, operation: Operation) -> Result<Visibility, Denied> {
        let permission = operation.permission();
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut scopes = Vec::new();
        for (perms, scope) in s.grants.get(principal).into_iter().flatten() {
            if !perms.contains(permission) {
                continue;
            }
            if *scope == Scope::Vault {
                return Ok(Visibility::All);
            }
            scopes.push(scope.clone());
        }
        if scopes.is_empty() {
            Err(Denied {
                principal: principal.to_string(),
                operation,
                permission,
                name: None,
            })
        } else {
            Ok(Visibility::Some(scopes))
        }
    }

    /// Every permission `principal` holds at vault scope or for `name`.
    pub fn effective(&self, principal: &str, name: Option<&str>) -> Permissions {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let bits = s
            .grants
            .get(principal)
            .into_iter()
            .flatten()
            .filter(|(_, scope)| scope.covers(name))
            .fold(0, |acc, (p, _)| acc | p.0);
        Permissions(bits)
    }

    /// The name of the role `name_or_id` names (any case, or the role's Azure id), if it is defined.
    pub fn role_name(&self, name_or_id: &str) -> Option<String> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        s.role(name_or_id).map(|r| r.name.clone())
    }

    /// All roles, built-in first, then custom by name.
    pub fn roles(&self) -> Vec<Role> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut roles: Vec<Role> = s.roles.values().cloned().collect();
        roles.sort_by(|a, b| b.builtin.cmp(&a.builtin).then(a.name.cmp(&b.name)));
        roles
    }

    /// Defines (or redefines) a custom role. Built-in roles cannot be changed.
    pub fn define_role(
        &self,
        name: &str,
        permissions: Vec<Permission>,
    ) -> Result<Role, PolicyError> {
        let name = check_role_name(name)?;
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if s.role(name).is_some_and(|r| r.builtin) {
            return Err(PolicyError(format!(
                "'{name}' is a built-in role and cannot be redefined"
            )));
        }
        let mut permissions = permissions;
        permissions.sort();
        permissions.dedup();
        let role = Role {
            name: name.to_string(),
            id: None,
            permissions,
            builtin: false,
        };
        s.roles.insert(name.to_ascii_lowercase(), role.clone());
        s.rebuild();
        Ok(role)
    }

    /// Removes a custom role that no assignment uses. Returns whether it existed.
    pub fn remove_role(&self, name: &str) -> Result<bool, PolicyError> {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Some(role) = s.role(name).cloned() else {
            return Ok(false);
        };
        if role.builtin {
            return Err(PolicyError(format!(
                "'{}' is a built-in role and cannot be removed",
                role.name
            )));
        }
        if s.assignments
            .iter()
            .any(|a| a.role.eq_ignore_ascii_case(&role.name))
        {
            return Err(PolicyError(format!(
                "role '{}' is still assigned; remove its assignments first",
                role.name
            )));
        }
        s.roles.remove(&role.name.to_ascii_lowercase());
        Ok(true)
    }

    /// Gives each of `principals` `role` on the whole vault for as long as no assignment names it: the
    /// first assignment made for one (in the configuration or through the admin API, on any node) replaces
    /// its default, and removing its last assignment gives the default back. Not an assignment: it is not
    /// listed, and cannot be removed but by the configuration.
    pub fn set_default_role(
        &self,
        role: &str,
        principals: impl IntoIterator<Item = String>,
    ) -> Result<(), PolicyError> {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Some(role) = s.role(role) else {
            return Err(PolicyError(format!("unknown role '{role}'")));
        };
        s.default_role = Some((role.name.clone(), principals.into_iter().collect()));
        s.rebuild();
        Ok(())
    }

    /// The default role (see [`set_default_role`](Self::set_default_role)) `principal` holds now, on the whole
    /// vault: `None` when it is not one of the default's principals, or an assignment names it.
    pub fn default_role_of(&self, principal: &str) -> Option<String> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let (role, principals) = s.default_role.as_ref()?;
        let holds = principals.contains(principal)
            && !s.assignments.iter().any(|a| a.principal == principal)
            && !s.unapplied.contains(principal)
            && s.role(role).is_some();
        holds.then(|| role.clone())
    }

    /// The default role's setting: the role's name and the principals it is for (whether or not an
    /// assignment names them now).
    pub fn default_role_setting(&self) -> Option<(String, Vec<String>)> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let (role, principals) = s.default_role.as_ref()?;
        Some((role.clone(), principals.iter().cloned().collect()))
    }

    /// Every principal that holds the default role now, with it (by principal).
    pub fn default_role_holders(&self) -> Vec<(String, String)> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let Some((role, principals)) = s.default_role.as_ref() else {
            return Vec::new();
        };
        if s.role(role).is_none() {
            return Vec::new();
        }
        let named: HashSet<&str> = (s.assignments.iter().map(|a| a.principal.as_str()))
            .chain(s.unapplied.iter().map(String::as_str))
            .collect();
        let mut holders: Vec<(String, String)> = (principals.iter())
            .filter(|p| !named.contains(p.as_str()))
            .map(|p| (p.clone(), role.clone()))
            .collect();
        holders.sort();
        holders
    }

    /// Adds an assignment (the role must exist). An identical assignment (same principal, role and scope) is
    /// not added twice: the existing one is returned. The returned assignment carries its id and the role's
    /// canonical name.
    pub fn assign(&self, assignment: Assignment) -> Result<Assignment, PolicyError> {
        self.assign_all(vec![assignment])
            .pop()
            .expect("one result per assignment")
    }

    /// [`assign`](Self::assign) for each assignment, in order, under one lock and with one rebuild of the
    /// grants: loading a document of thousands of assignments one [`assign`](Self::assign) at a time
    /// rebuilt the grants and scanned every assignment once per assignment (quadratic).
    pub fn assign_all(&self, assignments: Vec<Assignment>) -> Vec<Result<Assignment, PolicyError>> {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let mut ids: HashSet<String> = s.assignments.iter().map(|a| a.id.clone()).collect();
        let mut same: HashMap<(String, String, Scope), usize> = (s.assignments.iter().enumerate())
            .map(|(i, a)| ((a.principal.clone(), a.role.clone(), a.scope.clone()), i))
            .collect();
        let mut added = false;
        let mut out = Vec::with_capacity(assignments.len());
        for mut assignment in assignments {
            let principal = assignment.principal.trim();
            if principal.is_empty() || principal.len() > 256 {
                out.push(Err(PolicyError(
                    "a principal id must be 1-256 characters".into(),
                )));
                continue;
            }
            assignment.principal = principal.to_string();
            let Some(role) = s.role(&assignment.role) else {
                out.push(Err(PolicyError(format!(
                    "unknown role '{}'",
                    assignment.role
                ))));
                continue;
            };
            assignment.role = role.name.clone();
            let key = (
                assignment.principal.clone(),
                assignment.role.clone(),
                assignment.scope.clone(),
            );
            if let Some(&at) = same.get(&key) {
                out.push(Ok(s.assignments[at].clone()));
                continue;
            }
            if assignment.id.is_empty() {
                assignment.id = crate::auth::generate_client_id();
            } else if ids.contains(&assignment.id) {
                out.push(Err(PolicyError(format!(
                    "an assignment with id '{}' exists",
                    assignment.id
                ))));
                continue;
            }
            ids.insert(assignment.id.clone());
            same.insert(key, s.assignments.len());
            s.assignments.push(assignment.clone());
            added = true;
            out.push(Ok(assignment));
        }
        if added {
            s.rebuild();
        }
        out
    }

    /// Removes an assignment by id. Returns whether it existed.
    pub fn unassign(&self, id: &str) -> bool {
        self.unassign_all(&HashSet::from([id])) == 1
    }

    /// Removes the assignments with these ids, with one rebuild of the grants. Returns how many there were.
    pub fn unassign_all(&self, ids: &HashSet<&str>) -> usize {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let before = s.assignments.len();
        s.assignments.retain(|a| !ids.contains(a.id.as_str()));
        let removed = before - s.assignments.len();
        if removed > 0 {
            s.rebuild();
        }
        removed
    }

    /// Removes every assignment of a principal. Returns how many there were.
    pub fn unassign_principal(&self, principal: &str) -> usize {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let before = s.assignments.len();
        s.assignments.retain(|a| a.principal != principal);
        let removed = before - s.assignments.len();
        if removed > 0 {
            s.rebuild();
        }
        removed
    }

    /// The assignments, optionally of one principal, in the order they were made.
    pub fn assignments(&self, principal: Option<&str>) -> Vec<Assignment> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        s.assignments
            .iter()
            .filter(|a| principal.is_none_or(|p| a.principal == p))
            .cloned()
            .collect()
    }

    /// Records the principals named by stored assignments that could not be applied (a role this node does not
    /// define: configurations differ between nodes, or a role was removed from the configuration). An
    /// administrator who narrowed a configured client with such an assignment meant it to hold that, not the
    /// default role (Administrator by default): such a principal gets nothing from the default (fail closed).
    pub fn set_unapplied(&self, principals: HashSet<String>) {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if s.unapplied != principals {
            s.unapplied = principals;
            s.rebuild();
        }
    }

    /// Whether the principal has any assignment.
    pub fn has_assignments(&self, principal: &str) -> bool {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        s.assignments.iter().any(|a| a.principal == principal)
    }
}

/// A shared policy.
pub type SharedPolicy = Arc<Policy>;

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(p: &Policy, principal: &str, role: &str, scope: &str) -> Assignment {
        p.assign(Assignment {
            id: String::new(),
            principal: principal.into(),
            role: role.into(),
            scope: Scope::parse(scope).unwrap(),
        })
        .unwrap()
    }

    #[test]
    fn scopes_parse_and_cover() {
        assert_eq!(Scope::parse("/").unwrap(), Scope::Vault);
        assert_eq!(Scope::parse("").unwrap(), Scope::Vault);
        assert_eq!(
            Scope::parse("/secrets/Db-Pass").unwrap(),
            Scope::Secret("db-pass".into())
        );
        assert_eq!(
            Scope::parse("secrets/app-*").unwrap(),
            Scope::Prefix("app-".into())
        );
        assert_eq!(
            Scope::parse("/secrets/*").unwrap(),
            Scope::Prefix("".into())
        );
        for bad in ["/keys/x", "/secrets/", "/secrets/a_b", "/secrets/a*b", "x"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        let s = Scope::parse("/secrets/app-*").unwrap();
        assert!(s.covers(Some("APP-one")));
        assert!(!s.covers(Some("ap")));
        assert!(!s.covers(None));
        assert!(Scope::Secret("x".into()).covers(Some("X")));
        assert_eq!(s.to_string(), "/secrets/app-*");
    }

    #[test]
    fn builtin_roles_grant_what_azure_grants() {
        let p = Policy::new();
        assign(&p, "admin", ADMINISTRATOR, "/");
        assign(&p, "officer", SECRETS_OFFICER, "/");
        assign(&p, "user", "key vault secrets user", "/");
        assign(&p, "reader", "21090545-7ca7-4776-b22c-e363c2ee13ab", "/");
        let ops = |who: &str| -> Vec<Permission> {
            Permission::ALL
                .into_iter()
                .filter(|perm| p.effective(who, None).contains(*perm))
                .collect()
        };
        use Permission::*;
        assert_eq!(ops("admin"), Permission::ALL.to_vec());
        assert_eq!(
            ops("officer"),
            vec![Get, List, Set, Delete, Recover, Backup, Restore, Purge]
        );
        assert_eq!(ops("user"), vec![Get, List]);
        assert_eq!(ops("reader"), vec![List]);
        assert_eq!(ops("nobody"), vec![]);
        assert!(p.authorize("reader", Operation::SecretList, None).is_ok());
        let d = p
            .authorize("reader", Operation::SecretGet, Some("x"))
            .unwrap_err();
        assert_eq!(d.permission, Get);
        assert_eq!(d.principal, "reader");
    }

    /// The default role (configured clients named by no assignment) yields to any assignment, made in the
    /// configuration or later: an admin who narrows a configured client gets what was asked for, not the
    /// narrow role on top of Administrator. Removing the last assignment gives the default back.
    #[test]
    fn a_default_role_yields_to_any_assignment() {
        let p = Policy::new();
        p.set_default_role(ADMINISTRATOR, ["cfg".to_string(), "named".to_string()])
            .unwrap();
        assert!(p.set_default_role("nope", ["x".to_string()]).is_err());
        assert!(
            p.authorize("cfg", Operation::SecretPurge, Some("a"))
                .is_ok()
        );
        assert!(
            p.authorize("other", Operation::SecretGet, Some("a"))
                .is_err()
        );
        // Not an assignment: nothing listed; but said where asked.
        assert!(p.assignments(Some("cfg")).is_empty());
        assert_eq!(p.default_role_of("cfg").as_deref(), Some(ADMINISTRATOR));
        assert_eq!(p.default_role_of("other"), None);
        assert_eq!(
            p.default_role_holders(),
            [
                ("cfg".to_string(), ADMINISTRATOR.to_string()),
                ("named".to_string(), ADMINISTRATOR.to_string())
            ]
        );
        let a = assign(&p, "cfg", READER, "/");
        assert_eq!(p.default_role_of("cfg"), None);
        assert_eq!(p.default_role_holders().len(), 1);
        assert!(p.authorize("cfg", Operation::SecretList, None).is_ok());
        assert!(p.authorize("cfg", Operation::SecretGet, Some("a")).is_err());
        assert!(p.authorize("cfg", Operation::VaultAdmin, None).is_err());
        // The other default principal keeps its default.
        assert!(p.authorize("named", Operation::VaultAdmin, None).is_ok());
        assert!(p.unassign(&a.id));
        assert!(p.authorize("cfg", Operation::VaultAdmin, None).is_ok());
        assert_eq!(p.default_role_of("cfg").as_deref(), Some(ADMINISTRATOR));
    }

    /// A stored assignment this node cannot apply (its role is not defined here) grants nothing and still
    /// takes the default role away: the configured client it narrowed does not become an Administrator.
    #[test]
    fn an_unapplied_assignment_still_displaces_the_default_role() {
        let p = Policy::new();
        p.set_default_role(ADMINISTRATOR, ["cfg".to_string(), "other".to_string()])
            .unwrap();
        p.set_unapplied(HashSet::from(["cfg".to_string()]));
        assert!(p.authorize("cfg", Operation::SecretGet, Some("a")).is_err());
        assert!(p.authorize("cfg", Operation::VaultAdmin, None).is_err());
        assert_eq!(p.default_role_of("cfg"), None);
        assert_eq!(
            p.default_role_holders(),
            [("other".to_string(), ADMINISTRATOR.to_string())]
        );
        assert!(p.authorize("other", Operation::VaultAdmin, None).is_ok());
        // Once no unapplied assignment names it (deleted, or applied after all), the default is back.
        p.set_unapplied(HashSet::new());
        assert!(p.authorize("cfg", Operation::VaultAdmin, None).is_ok());
    }

    #[test]
    fn secret_and_prefix_scopes() {
        let p = Policy::new();
        assign(&p, "u", SECRETS_USER, "/secrets/one");
        assign(&p, "u", READER, "/secrets/team-*");
        assert!(p.authorize("u", Operation::SecretGet, Some("ONE")).is_ok());
        assert!(p.authorize("u", Operation::SecretGet, Some("two")).is_err());
        assert!(
            p.authorize("u", Operation::SecretGet, Some("team-a"))
                .is_err()
        );
        assert!(
            p.authorize("u", Operation::SecretListVersions, Some("team-a"))
                .is_ok()
        );
        // Vault-level operations need a vault-scope grant.
        assert!(p.authorize("u", Operation::SecretList, None).is_err());
        let v = p.visibility("u", Operation::SecretList).unwrap();
        assert!(v.allows("one") && v.allows("Team-b") && !v.allows("two"));
        // The listing's ranges say the same.
        let ranges = v.name_ranges().unwrap();
        assert_eq!(
            ranges,
            [
                NameRange::Name("one".into()),
                NameRange::Prefix("team-".into())
            ]
        );
        for name in [
            "one", "ONE", "Team-b", "team-", "two", "on", "one1", "team", "tea",
        ] {
            assert_eq!(
                ranges.iter().any(|r| r.covers(name)),
                v.allows(name),
                "{name}"
            );
        }
        assert!(p.visibility("x", Operation::SecretList).is_err());
        assign(&p, "u", READER, "/");
        assert_eq!(
            p.visibility("u", Operation::SecretList).unwrap(),
            Visibility::All
        );
    }

    #[test]
    fn custom_roles_and_changes_at_run_time() {
        let p = Policy::new();
        assert!(p.define_role(ADMINISTRATOR, vec![]).is_err());
        p.define_role("Rotator", vec![Permission::Set, Permission::List])
            .unwrap();
        assert!(
            p.assign(Assignment {
                id: String::new(),
                principal: "r".into(),
                role: "nope".into(),
                scope: Scope::Vault
            })
            .is_err()
        );
        let a = assign(&p, "r", "rotator", "/");
        assert_eq!(a.role, "Rotator");
        assert_eq!(assign(&p, "r", "ROTATOR", "/").id, a.id, "no duplicate");
        assert!(p.authorize("r", Operation::SecretSet, Some("x")).is_ok());
        assert!(p.authorize("r", Operation::SecretUpdate, Some("x")).is_ok());
        assert!(p.authorize("r", Operation::SecretGet, Some("x")).is_err());
        assert!(p.remove_role("rotator").is_err(), "still assigned");
        // Redefining a role changes what its holders may do at once.
        p.define_role("rotator", vec![Permission::Get]).unwrap();
        assert!(p.authorize("r", Operation::SecretGet, Some("x")).is_ok());
        assert!(p.authorize("r", Operation::SecretSet, Some("x")).is_err());
        assert!(p.unassign(&a.id));
        assert!(!p.unassign(&a.id));
        assert!(p.authorize("r", Operation::SecretGet, Some("x")).is_err());
        assert!(p.remove_role("rotator").unwrap());
        assert!(p.remove_role(READER).is_err());
    }

    #[test]
    fn role_names_count_characters_and_refuse_invisible_ones() {
        let p = Policy::new();
        // 128 two-byte characters (256 bytes) are a valid name; 129 are not.
        let long = "é".repeat(MAX_ROLE_NAME_CHARS);
        assert_eq!(check_role_name(&format!(" {long} ")), Ok(long.as_str()));
        assert_eq!(
            p.define_role(&long, vec![Permission::Get]).unwrap().name,
            long
        );
        assert!(p.roles().iter().any(|r| r.name == long));
        assert!(check_role_name(&format!("{long}é")).is_err());
        for bad in [
            "",
            "  ",
            "a\u{7}b",
            "a\u{202E}b",
            "a\u{200B}b",
            "a\u{200F}b",
            "a\u{2066}b",
            "a\u{2069}b",
            "\u{FEFF}ab",
            "a\u{FFFD}b",
            "a\u{E0041}b",
        ] {
            assert!(check_role_name(bad).is_err(), "{bad:?}");
            assert!(
                p.define_role(bad, vec![Permission::Get]).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(p.roles().len(), builtin_roles().len() + 1);
        // Letters of any script are fine.
        for good in ["Rotator", "CI Reader", "Ротатор", "ローテーター", "Café-1"] {
            assert_eq!(check_role_name(good), Ok(good));
        }
    }
}
