//! The one table from errors to Key Vault responses: status, error code, inner code, message.

use super::respond::json_response;
use crate::auth::policy::{Denied, Permission};
use crate::vault::VaultError;
use axum::response::Response;
use http::StatusCode;
use keyvault_types::models::ErrorBody;

/// `Retry-After` of a refusal while access control is unconfirmed: the refresher polls each second.
pub const ACCESS_RETRY_AFTER_SECS: u64 = crate::admin::POLL_INTERVAL.as_secs();

/// An error on its way to the client, already in Key Vault's terms.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub inner: Option<&'static str>,
    pub message: String,
    /// Seconds for a `Retry-After` header (throttling).
    pub retry_after: Option<u64>,
    /// The methods for an `Allow` header (a 405 names what its route answers: RFC 9110 §15.5.6).
    pub allow: Option<&'static str>,
    /// For a 5xx: what went wrong inside, for the server's log (logged with the request's id where the
    /// request is answered, never sent to the client).
    pub cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            inner: None,
            message: message.into(),
            retry_after: None,
            allow: None,
            cause: None,
        }
    }

    /// 405 `MethodNotAllowed` in Key Vault's words, with an `Allow` header naming `allow` (the methods the
    /// route answers; empty for a target that is no route, such as CONNECT's host and port).
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> Self {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            // Key Vault's text (recorded for `PUT /secrets/`, 2022); the method is bounded and printable.
            format!("HTTP {} not allowed", super::printable(method.as_str())),
        );
        e.allow = Some(allow);
        e
    }

    /// With the internal cause the server logs.
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    pub fn with_inner(mut self, inner: &'static str) -> Self {
        self.inner = Some(inner);
        self
    }

    pub fn body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.code, self.message.clone());
        match self.inner {
            Some(inner) => body.with_inner(inner),
            None => body,
        }
    }

    pub fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &self.body());
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        resp
    }

    /// Over the vault's request budget: 429 `Throttled`, as Key Vault words it, with `Retry-After`.
    pub fn throttled(retry_after_secs: u64) -> Self {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            "Request was not processed because too many requests were received. Reason: \
             VaultRequestTypeLimitReached",
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// A node that cannot confirm that its access control is current ([`crate::admin::UNCONFIRMED_LIMIT`]):
    /// 503 `ServiceUnavailable` with `Retry-After` (the next refresh may succeed; another node may answer).
    pub fn access_unconfirmed() -> Self {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The service is temporarily unavailable (this node cannot confirm that its access control is \
             current). Please retry.",
        );
        e.retry_after = Some(ACCESS_RETRY_AFTER_SECS);
        e
    }

    /// A denial by the access policy: 403 `Forbidden` / `ForbiddenByRbac`, in the shape of Key Vault's RBAC
    /// message, naming the principal, the data action and the missing permission.
    pub fn forbidden(denied: &Denied, vault_name: &str) -> Self {
        let resource = match &denied.name {
            Some(name) => format!("/vaults/{vault_name}/secrets/{name}"),
            None => format!("/vaults/{vault_name}"),
        };
        let permission = match denied.permission {
            Permission::Admin => "vault administration".to_string(),
            p => format!("secrets {p}"),
        };
        let p = &denied.principal;
        ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or \
                 role definitions were changed recently, please observe propagation time.\r\nCaller: \
                 appid={p};oid={p}\r\nAction: '{action}'\r\nResource: '{resource}'\r\nAssignment: (not found)\r\n\
                 DecisionReason: 'DeniedWithNoValidRBAC'\r\nPrincipal: '{p}' does not have {permission} permission \
                 on key vault '{vault_name}'\r\nVault: {vault_name};location=local\r\n",
                action = denied.operation.data_action(),
            ),
        )
        .with_inner("ForbiddenByRbac")
    }

    /// Map a vault error. `vault_url` is this vault's base URL as the client addressed it.
    pub fn from_vault(e: VaultError, vault_url: &str) -> Self {
        match e {
            VaultError::NotFound { name } => ApiError::new(
                StatusCode::NOT_FOUND,
                "SecretNotFound",
                format!(
                    "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this \
                     secret you may be able to recover it using the correct recovery command. For help resolving \
                     this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
                ),
            ),
            VaultError::DeletedNotFound { name } => {
                ApiError::new(StatusCode::NOT_FOUND, "SecretNotFound", format!("Deleted Secret not found: {name}"))
            }
            VaultError::Disabled { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "Forbidden", "Operation get is not allowed on a disabled secret.")
                    .with_inner("SecretDisabled")
            }
            VaultError::DeletedButRecoverable { name } => ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; \
                     in this state, the secret can only be recovered or purged."
                ),
            )
            .with_inner("ObjectIsDeletedButRecoverable"),
            VaultError::RestoreConflict { name, version } => ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "There was a conflict restoring the secret '{vault_url}/secrets/{name}/{version}'. This can \
                     happen if either: a second secret with the same name was created after the first secret was \
                     deleted; thus trying to restore a secret whose name is already in use. To fix this, rename the \
                     second secret to something else so that the restore works. The second probable cause of this \
                     exception is when multiple operations are performed in parallel against the secret. To avoid \
                     this error, perform operations against a secret in a sequential manner."
                ),
            ),
            VaultError::PurgeProtected { vault } => ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Key \
                     Vault service will automatically purge it after the retention period has passed.\r\nVault: \
                     {vault};location=local"
                ),
            ),
            // Key Vault's own code and text for a blob it cannot restore (the JS SDK's tests compare the text).
            VaultError::MalformedBackup => ApiError::new(
                StatusCode::BAD_REQUEST,
                "Malformed backup blob",
                "Backup blob contains invalid or corrupt version.",
            ),
            VaultError::BadParameter(message) => ApiError::bad_parameter(message),
            VaultError::Unavailable(cause) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please retry.",
            )
            .with_cause(cause),
            // A node whose key a rekey retired: retrying elsewhere (a node with the new key) succeeds.
            VaultError::KeyRetired(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("The service is temporarily unavailable. Please retry. ({message})"),
            ),
            VaultError::Internal(cause) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "The server encountered an internal error. Please retry the request.",
            )
            .with_cause(cause),
        }
    }
}
