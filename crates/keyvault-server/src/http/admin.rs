//! The admin API: JSON endpoints under `/admin`, for principals holding the administration permission
//! (Key Vault Administrator, or a custom role with `admin`). Authenticated and throttled like every request;
//! `api-version` is not required (and ignored). Errors have Key Vault's shape.
//!
//! | Method and path | Does |
//! |---|---|
//! | `GET /admin/principals` | every principal that may get tokens: `{"value":[…]}` |
//! | `POST /admin/principals` `{"displayName"?, "expiresOn"?, "role"?, "scope"?}` | creates an application; 201 with `clientSecret` (shown once) |
//! | `GET /admin/principals/{id}` | one principal |
//! | `DELETE /admin/principals/{id}` | deletes a managed principal and its assignments |
//! | `POST /admin/principals/{id}/secrets` `{"expiresOn"?}` | adds a secret (rotation); 201 with `clientSecret` (shown once) |
//! | `DELETE /admin/principals/{id}/secrets/{keyId}` | removes a secret; 204 |
//! | `GET /admin/roleAssignments[?principal=ID]` | the assignments |
//! | `POST /admin/roleAssignments` `{"principal", "role", "scope"?}` | assigns a role; 201 (200 if it existed) |
//! | `DELETE /admin/roleAssignments/{id}` | removes a managed assignment |
//! | `GET /admin/roles` | the roles (`managed`: defined through this API) |
//! | `PUT /admin/roles/{name}` `{"permissions": ["get", "list", …]}` | defines or redefines a custom role; 201 (200 if it existed) |
//! | `DELETE /admin/roles/{name}` | removes a custom role made here (409 while assigned) |
//! | `POST /admin/rekey` `{"dryRun"?, "batchSize"?}` | starts re-sealing every value under this node's current key-encryption key in the background (`crate::rekey::job`); 202 with the job (409 while one runs) |
//! | `GET /admin/rekey` | this node's last rekey job: status, progress, the report when finished (404: none since it started) |
//!
//! `expiresOn` is unix seconds, like Key Vault's `exp`. Permissions: get, list, set, delete, recover,
//! backup, restore, purge, admin.

use super::error::ApiError;
use super::respond::{empty, json_response};
use super::{HttpState, IncomingBody, gate, printable};
use crate::admin::AdminError;
use crate::audit::AuditRecord;
use crate::auth::policy::shown;
use crate::auth::policy::{Operation, Permission, Scope};
use axum::response::Response;
use http::{Method, StatusCode};
use serde::Deserialize;

const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

impl AdminError {
    fn into_api(self) -> ApiError {
        match self {
            AdminError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "NotFound", m),
            AdminError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "Conflict", m),
            AdminError::BadParameter(m) => ApiError::bad_parameter(m),
            AdminError::Unavailable(cause) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please retry the request.",
            )
            .with_cause(format!("admin API: {cause}")),
            AdminError::Internal(cause) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "The server encountered an internal error. Please retry the request.",
            )
            .with_cause(format!("admin API: {cause}")),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreatePrincipal {
    display_name: Option<String>,
    expires_on: Option<i64>,
    role: Option<String>,
    scope: Option<String>,
}

const DISPLAY_NAME: Property = ("displayName", "a string of at most 256 characters", false);
const EXPIRES_ON: Property = ("expiresOn", "an integer of Unix seconds", false);
const ROLE: Property = ("role", "a role's name (a string)", false);
const SCOPE: Property = (
    "scope",
    "a scope (a string: \"/\", \"/secrets/NAME\" or \"/secrets/PREFIX*\")",
    false,
);

impl AdminBody for CreatePrincipal {
    const PROPERTIES: &'static [Property] = &[DISPLAY_NAME, EXPIRES_ON, ROLE, SCOPE];
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddSecret {
    expires_on: Option<i64>,
}

impl AdminBody for AddSecret {
    const PROPERTIES: &'static [Property] = &[EXPIRES_ON];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateAssignment {
    principal: String,
    role: String,
    scope: Option<String>,
}

impl AdminBody for CreateAssignment {
    const PROPERTIES: &'static [Property] = &[
        ("principal", "a principal's client id (a string)", true),
        (ROLE.0, ROLE.1, true),
        SCOPE,
    ];
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartRekey {
    #[serde(default)]
    dry_run: bool,
    batch_size: Option<usize>,
}

impl AdminBody for StartRekey {
    const PROPERTIES: &'static [Property] = &[
        ("dryRun", "true or false", false),
        ("batchSize", "an integer from 1 to 10000", false),
    ];
}

/// The most versions a rekey reads and re-seals per batch (as `keyvault rekey --batch-size`).
const MAX_REKEY_BATCH: usize = 10_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefineRole {
    permissions: Vec<Permission>,
}

impl AdminBody for DefineRole {
    const PROPERTIES: &'static [Property] = &[(
        "permissions",
        "a list of permissions (get, list, set, delete, recover, backup, restore, purge, admin)",
        true,
    )];
}

/// A property of an admin body: its name (camelCase, the only casing read), what its value must be (for the
/// message when it is not), and whether it is required.
type Property = (&'static str, &'static str, bool);

/// An admin API body: a JSON object of these properties.
trait AdminBody: serde::de::DeserializeOwned {
    const PROPERTIES: &'static [Property];
}

/// An object's properties in the order given (each name as many times as given).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// An admin body, or a 400 that says which property is wrong and what it must be, in the API's words (never
/// serde's, which name Rust types): an unknown or mis-cased property by its name (echoed as [`shown`]), a
/// property given twice, a required one missing.
fn parse_admin_body<T: AdminBody>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_parameter(
            "The request body is not a JSON object.",
        ));
    }
    let Entries(entries) = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_parameter(format!(
            "The request body is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        ))
    })?;
    let names = || {
        T::PROPERTIES
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut object = serde_json::Map::new();
    for (name, value) in entries {
        if !T::PROPERTIES.iter().any(|p| p.0 == name) {
            let message = match T::PROPERTIES
                .iter()
                .find(|p| p.0.eq_ignore_ascii_case(&name))
            {
                Some(p) => format!(
                    "The request body's property '{}' is not known: property names are camelCase ('{}').",
                    shown(&name),
                    p.0
                ),
                None => format!(
                    "The request body's property '{}' is not known (this operation reads {}).",
                    shown(&name),
                    names()
                ),
            };
            return Err(ApiError::bad_parameter(message));
        }
        if object.contains_key(&name) {
            return Err(ApiError::bad_parameter(format!(
                "The request body has the property '{name}' more than once."
            )));
        }
        object.insert(name, value);
    }
    if let Some(p) = T::PROPERTIES
        .iter()
        .find(|p| p.2 && object.get(p.0).is_none_or(serde_json::Value::is_null))
    {
        return Err(ApiError::bad_parameter(format!(
            "The request body lacks the required property '{}' ({}).",
            p.0, p.1
        )));
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(object)).map_err(|e| {
        let path = e.path().to_string();
        let root = match e.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => key.as_str(),
            _ => "",
        };
        let expected = T::PROPERTIES
            .iter()
            .find(|p| p.0 == root)
            .map_or("another value", |p| p.1);
        // Our own words (a permission's name) are given as they are; serde's are not.
        let inner = e.inner().to_string();
        let detail = if inner.starts_with("unknown permission") {
            inner
        } else {
            format!("it must be {expected}")
        };
        ApiError::bad_parameter(format!(
            "The request body's property '{}' is not valid: {detail}.",
            shown(&path)
        ))
    })
}

/// An optional JSON body: empty = the default.
async fn optional_json<T: AdminBody + Default>(
    limiter: &super::limits::Limiter,
    rec: &mut AuditRecord,
    body: IncomingBody,
) -> Result<T, ApiError> {
    let bytes =
        super::change_body(rec, super::read_body(limiter, body, MAX_ADMIN_BODY_BYTES)).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_admin_body(&bytes)
}

/// A required JSON body.
async fn required_json<T: AdminBody>(
    limiter: &super::limits::Limiter,
    rec: &mut AuditRecord,
    body: IncomingBody,
) -> Result<T, ApiError> {
    let bytes =
        super::change_body(rec, super::read_body(limiter, body, MAX_ADMIN_BODY_BYTES)).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_parameter("The request body is missing."));
    }
    parse_admin_body(&bytes)
}

fn scope_of(s: Option<&str>) -> Result<Scope, ApiError> {
    Scope::parse(s.unwrap_or("/")).map_err(|e| ApiError::bad_parameter(e.0))
}

fn query_principal(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "principal")
        .map(|(_, v)| v.into_owned())
}

/// Handles a request under `/admin` from the authenticated `who`.
pub(super) async fn handle(
    state: &HttpState,
    who: &str,
    rec: &mut AuditRecord,
    method: Method,
    segs: &[&str],
    query: Option<&str>,
    body: IncomingBody,
) -> Result<Response, ApiError> {
    gate(state, who, rec, Operation::VaultAdmin, None, None)?;
    let admin = &state.admin;
    let now = state.vault.now();
    let err = AdminError::into_api;
    let mut op = |name: &'static str, target: Option<&str>| {
        rec.operation = Some(name);
        rec.target = target.map(printable);
    };
    match (&method, segs) {
        (&Method::GET, ["admin", "principals"]) => {
            op("PrincipalList", None);
            let value = admin.principals();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "value": value }),
            ))
        }
        (&Method::POST, ["admin", "principals"]) => {
            op("PrincipalCreate", None);
            let p: CreatePrincipal = optional_json(&state.limiter, rec, body).await?;
            let role = match (p.role, p.scope) {
                (Some(role), scope) => Some((role, scope_of(scope.as_deref())?)),
                (None, Some(_)) => {
                    return Err(ApiError::bad_parameter("scope is given without a role"));
                }
                (None, None) => None,
            };
            let (view, secret, assignment) = admin
                .create_principal(p.display_name, p.expires_on, role, now)
                .await
                .map_err(err)?;
            rec.target = Some(view.client_id.clone());
            let mut body = serde_json::to_value(&view).unwrap_or_default();
            body["clientSecret"] = serde_json::Value::String(secret.client_secret.to_string());
            body["keyId"] = serde_json::Value::String(secret.key_id.clone());
            if let Some(a) = assignment {
                body["assignments"] = serde_json::json!([a]);
            }
            let resp = json_response(StatusCode::CREATED, &body);
            zeroize_value(body);
            Ok(resp)
        }
        (&Method::GET, ["admin", "principals", id]) => {
            op("PrincipalGet", Some(id));
            let view = admin.principal(id).map_err(err)?;
            Ok(json_response(StatusCode::OK, &view))
        }
        (&Method::DELETE, ["admin", "principals", id]) => {
            op("PrincipalDelete", Some(id));
            let view = admin.delete_principal(id).await.map_err(err)?;
            Ok(json_response(StatusCode::OK, &view))
        }
        (&Method::POST, ["admin", "principals", id, "secrets"]) => {
            op("PrincipalSecretAdd", Some(id));
            let p: AddSecret = optional_json(&state.limiter, rec, body).await?;
            let secret = admin.add_secret(id, p.expires_on, now).await.map_err(err)?;
            Ok(json_response(StatusCode::CREATED, &secret))
        }
        (&Method::DELETE, ["admin", "principals", id, "secrets", key_id]) => {
            op("PrincipalSecretRemove", Some(&format!("{id}/{key_id}")));
            admin.remove_secret(id, key_id).await.map_err(err)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, ["admin", "roleAssignments"]) => {
            op("RoleAssignmentList", None);
            let principal = query_principal(query);
            let value = admin.assignments(principal.as_deref());
            // Not assignments (no id; they go when one names the principal), but what those principals hold.
            let defaults = admin.default_roles(principal.as_deref());
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "value": value, "defaultRoles": defaults }),
            ))
        }
        (&Method::POST, ["admin", "roleAssignments"]) => {
            op("RoleAssignmentCreate", None);
            let p: CreateAssignment = required_json(&state.limiter, rec, body).await?;
            let scope = scope_of(p.scope.as_deref())?;
            let (a, created) = admin
                .assign(&p.principal, &p.role, scope)
                .await
                .map_err(err)?;
            rec.target = Some(a.id.clone());
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &a))
        }
        (&Method::DELETE, ["admin", "roleAssignments", id]) => {
            op("RoleAssignmentDelete", Some(id));
            let a = admin.unassign(id).await.map_err(err)?;
            let mut body = serde_json::to_value(&a).unwrap_or_default();
            // Its last assignment gone, a configured client holds the default role again: say so.
            if let Some(default) = admin.default_roles(Some(&a.principal)).pop() {
                body["defaultRoleApplies"] = serde_json::to_value(default).unwrap_or_default();
            }
            Ok(json_response(StatusCode::OK, &body))
        }
        (&Method::GET, ["admin", "roles"]) => {
            op("RoleList", None);
            let value = admin.roles();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "value": value }),
            ))
        }
        (&Method::PUT, ["admin", "roles", name]) => {
            op("RoleDefine", Some(name));
            let p: DefineRole = required_json(&state.limiter, rec, body).await?;
            let (role, created) = admin.define_role(name, p.permissions).await.map_err(err)?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &role))
        }
        (&Method::DELETE, ["admin", "roles", name]) => {
            op("RoleDelete", Some(name));
            let role = admin.remove_role(name).await.map_err(err)?;
            Ok(json_response(StatusCode::OK, &role))
        }
        (&Method::POST, ["admin", "rekey"]) => {
            op("RekeyStart", None);
            let p: StartRekey = optional_json(&state.limiter, rec, body).await?;
            let batch_size = p.batch_size.unwrap_or(crate::rekey::DEFAULT_BATCH);
            if !(1..=MAX_REKEY_BATCH).contains(&batch_size) {
                return Err(ApiError::bad_parameter(format!(
                    "batchSize must be between 1 and {MAX_REKEY_BATCH}."
                )));
            }
            let options = crate::rekey::RekeyOptions {
                batch_size,
                dry_run: p.dry_run,
                access: crate::rekey::AccessLocation::Admin(state.admin.clone()),
            };
            let vault = state.vault.clone();
            // The job's end changes what the store holds (and, when it completes, retires keys): it gets an
            // audit line of its own, under the starting request's id and principal.
            let audit = state.audit.clone();
            let (request_id, principal) = (rec.request_id.clone(), rec.principal.clone());
            let finished = move |view: &crate::rekey::job::RekeyJobView| {
                let Some(audit) = audit else { return };
                let mut line = AuditRecord::new(request_id);
                line.principal = principal;
                line.operation = Some("RekeyFinished");
                line.outcome = crate::audit::Outcome::Allowed;
                // How the job ended, as a request's status would say it: a job that failed (a store error,
                // or the server stopping mid-rekey) is the server's failure.
                line.status = match view.status {
                    crate::rekey::job::RekeyStatus::Failed => 500,
                    _ => 200,
                };
                let retired = view
                    .report
                    .as_ref()
                    .map(|r| r.retired.join(","))
                    .unwrap_or_default();
                line.target = Some(format!(
                    "job={} dryRun={} status={} retired={}",
                    view.id,
                    view.dry_run,
                    view.status.as_str(),
                    if retired.is_empty() { "none" } else { &retired }
                ));
                audit.record_written(line);
            };
            let started = state.rekey.start(
                vault.store().clone(),
                vault.envelope().clone(),
                options,
                move || vault.now(),
                finished,
            );
            match started {
                Ok(view) => {
                    rec.target = Some(format!(
                        "job={} dryRun={} batchSize={}",
                        view.id, view.dry_run, view.batch_size
                    ));
                    Ok(json_response(StatusCode::ACCEPTED, &view))
                }
                Err(crate::rekey::job::AlreadyRunning(running)) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "A rekey (job {running}) is already running on this node; wait for it to finish."
                    ),
                )),
            }
        }
        (&Method::GET, ["admin", "rekey"]) => {
            op("RekeyGet", None);
            match state.rekey.view() {
                Some(view) => Ok(json_response(StatusCode::OK, &view)),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "No rekey has run on this node since it started.",
                )),
            }
        }
        _ => Err(super::unrouted(&method, admin_route_methods(segs), segs)),
    }
}

/// The methods an admin route answers (its 405's `Allow`), or `None` for a path that is no route.
fn admin_route_methods(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["admin", "rekey"] | ["admin", "principals"] | ["admin", "roleAssignments"] => "GET, POST",
        ["admin", "principals", _] => "GET, DELETE",
        ["admin", "principals", _, "secrets"] => "POST",
        ["admin", "principals", _, "secrets", _] | ["admin", "roleAssignments", _] => "DELETE",
        ["admin", "roles"] => "GET",
        ["admin", "roles", _] => "PUT, DELETE",
        _ => return None,
    })
}

/// Overwrites the strings of a JSON value that held a generated secret.
fn zeroize_value(value: serde_json::Value) {
    use zeroize::Zeroize;
    if let serde_json::Value::Object(map) = value {
        for (_, v) in map {
            if let serde_json::Value::String(mut s) = v {
                s.zeroize();
            }
        }
    }
}
