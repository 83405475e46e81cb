//! Credentials: anything that can get an OAuth2 access token for a scope.
//!
//! - [`TokenCredential`]: the trait the client calls (async, object safe).
//! - [`StaticTokenCredential`]: a token you already have.
//! - [`ClientSecretCredential`]: a service principal's client secret, against Entra ID or any issuer with
//!   the same token endpoint shape (`{authority}/{tenant}/oauth2/v2.0/token`), e.g. our server's.
//! - [`ClientCertificateCredential`]: a service principal's certificate (a PEM file with its private key):
//!   the token request carries a JWT signed with the key (`client_assertion`).
//! - [`WorkloadIdentityCredential`]: an AKS workload identity: the federated token in
//!   `AZURE_FEDERATED_TOKEN_FILE`, exchanged as a client assertion.
//! - [`ClientAssertionCredential`]: a client assertion your code provides.
//! - [`EnvironmentCredential`]: a client secret from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//!   `AZURE_CLIENT_SECRET`, or else a certificate from `AZURE_CLIENT_CERTIFICATE_PATH` (and
//!   `AZURE_AUTHORITY_HOST`).
//! - [`ManagedIdentityCredential`]: IMDS, or App Service's `IDENTITY_ENDPOINT`.
//! - [`AzureCliCredential`]: `az account get-access-token`.
//! - [`ChainedTokenCredential`]: credentials of your choice, tried in order.
//! - [`DefaultAzureCredential`]: environment → workload identity → managed identity → Azure CLI, the first
//!   that works.
//!
//! ## Unavailable or failed
//!
//! As in azure-identity, a credential's error says whether it *could not try* or *tried and failed*:
//!
//! - [`ErrorKind::CredentialUnavailable`] (Python's `CredentialUnavailableError`): the credential is not set
//!   up here — environment variables missing, no managed identity endpoint answering (or IMDS saying no
//!   identity is assigned), the Azure CLI not installed or not logged in, workload identity settings missing.
//! - [`ErrorKind::Credential`] (Python's `ClientAuthenticationError` from a credential): it is set up and
//!   authentication failed — a wrong client secret, a refused assertion, an error from the authority, a
//!   certificate or token file named but not usable.
//!
//! A chain ([`ChainedTokenCredential`], [`DefaultAzureCredential`]) goes on to its next credential only after
//! the first kind; any other error stops it, so a misconfigured service principal is reported instead of being
//! masked by, say, the developer's `az login`. Both kinds are
//! [`Error::is_client_authentication`](crate::Error::is_client_authentication).

mod azure_cli;
mod azure_developer_cli;
mod chained;
mod cli;
mod client_assertion;
mod client_certificate;
mod client_secret;
mod default;
mod environment;
mod managed_identity;
mod static_token;
mod workload_identity;

pub use azure_cli::{AzureCliCredential, AzureCliCredentialOptions};
pub use azure_developer_cli::{AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions};
pub use chained::ChainedTokenCredential;
pub use cli::CliCredentialOptions;
pub use client_assertion::{AssertionFn, ClientAssertionCredential};
pub use client_certificate::{ClientCertificateCredential, ClientCertificateCredentialOptions};
pub use client_secret::{ClientSecretCredential, ClientSecretCredentialOptions};
pub use default::{DefaultAzureCredential, DefaultAzureCredentialOptions};
pub use environment::{EnvironmentCredential, EnvironmentCredentialOptions};
pub use managed_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions};
pub use static_token::StaticTokenCredential;
pub use workload_identity::{WorkloadIdentityCredential, WorkloadIdentityCredentialOptions};

use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use keyvault_types::SecretString;
use std::fmt;
use time::OffsetDateTime;

/// Entra ID's public-cloud authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// An access token and when it expires. `Debug` redacts the token.
#[derive(Clone)]
#[non_exhaustive]
pub struct AccessToken {
    /// The bearer token.
    pub token: SecretString,
    /// When it stops being valid.
    pub expires_on: OffsetDateTime,
}

impl AccessToken {
    pub fn new(token: impl Into<SecretString>, expires_on: OffsetDateTime) -> Self {
        AccessToken {
            token: token.into(),
            expires_on,
        }
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Extra facts for a token request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenRequestOptions {
    /// The tenant named by the vault's challenge, if any.
    pub tenant_id: Option<String>,
    /// CAE claims from a challenge, if any.
    pub claims: Option<String>,
    /// The caller handles continuous access evaluation's claims challenges (Python: `enable_cae`; the
    /// [`SecretClient`](crate::SecretClient) does): the credentials that post to a token endpoint announce
    /// the client capability `CP1` (in the request's `claims`), so that Entra ID may issue tokens that CAE can
    /// revoke — and that live longer.
    pub enable_cae: bool,
}

/// The `claims` a token request sends: the challenge's claims, with the client capability `CP1` added
/// (`{"access_token": {"xms_cc": {"values": ["CP1"]}}}`, merged) when the caller handles CAE challenges, as
/// MSAL merges its `client_capabilities`. Claims that are not a JSON object are sent as they are.
pub(crate) fn request_claims(options: &TokenRequestOptions) -> Option<String> {
    use serde_json::{Map, Value, json};
    if !options.enable_cae {
        return options.claims.clone();
    }
    let mut claims = match options.claims.as_deref().map(serde_json::from_str::<Value>) {
        None => Map::new(),
        Some(Ok(Value::Object(map))) => map,
        Some(_) => return options.claims.clone(),
    };
    let access_token = claims.entry("access_token").or_insert_with(|| json!({}));
    if !access_token.is_object() {
        *access_token = json!({});
    }
    let xms_cc = access_token
        .as_object_mut()
        .map(|a| a.entry("xms_cc").or_insert_with(|| json!({})));
    if let Some(xms_cc) = xms_cc {
        if !xms_cc.is_object() {
            *xms_cc = json!({});
        }
        if let Some(cc) = xms_cc.as_object_mut() {
            let values = cc.entry("values").or_insert_with(|| json!([]));
            if !values.is_array() {
                *values = json!([]);
            }
            if let Some(values) = values.as_array_mut()
                && !values.iter().any(|v| v.as_str() == Some("CP1"))
            {
                values.push(json!("CP1"));
            }
        }
    }
    Some(Value::Object(claims).to_string())
}

/// Something that can get an access token. Implement it to plug in your own source of tokens.
#[async_trait]
pub trait TokenCredential: Send + Sync + fmt::Debug {
    /// A token valid for `scopes` (the client passes one, e.g. `https://vault.azure.net/.default`).
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken>;
}

/// The resource of a `…/.default` scope (what IMDS and the Azure CLI want).
pub(crate) fn scope_to_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

pub(crate) fn one_scope<'a>(name: &str, scopes: &[&'a str]) -> Result<&'a str> {
    match scopes {
        [s] => Ok(s),
        _ => Err(Error::new(
            ErrorKind::Credential,
            format!("{name}: expected exactly one scope, got {}", scopes.len()),
        )),
    }
}

/// Whether a tenant id is safe to put in a URL path or a command line.
pub(crate) fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Tenant choice shared by the client-secret credentials: the challenge's tenant must be the
/// credential's own, or be allowed.
pub(crate) fn resolve_tenant<'a>(
    name: &str,
    own: &'a str,
    requested: Option<&'a str>,
    allowed: &[String],
) -> Result<&'a str> {
    match requested {
        None => Ok(own),
        Some(t) if t.eq_ignore_ascii_case(own) => Ok(own),
        Some(t)
            if allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(t)) =>
        {
            if valid_tenant(t) {
                Ok(t)
            } else {
                Err(Error::new(
                    ErrorKind::Credential,
                    format!("{name}: invalid tenant id '{t}'"),
                ))
            }
        }
        Some(t) => Err(Error::new(
            ErrorKind::Credential,
            format!(
                "{name}: the vault's challenge names tenant '{t}', but the credential is for tenant '{own}'; \
                 add it to `additionally_allowed_tenants` (or \"*\") to allow it"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(enable_cae: bool, claims: Option<&str>) -> Option<serde_json::Value> {
        request_claims(&TokenRequestOptions {
            tenant_id: None,
            claims: claims.map(str::to_string),
            enable_cae,
        })
        .map(|c| serde_json::from_str(&c).unwrap_or(serde_json::Value::String(c)))
    }

    #[test]
    fn cae_callers_announce_cp1_merged_with_a_challenges_claims() {
        let cp1 = serde_json::json!({"access_token": {"xms_cc": {"values": ["CP1"]}}});
        assert_eq!(claims(false, None), None);
        assert_eq!(claims(true, None), Some(cp1.clone()));
        // A CAE challenge's claims keep what they ask, with the capability beside it.
        let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        assert_eq!(
            claims(true, Some(challenge)),
            Some(serde_json::json!({"access_token": {
                "nbf": {"essential": true, "value": "1700000000"},
                "xms_cc": {"values": ["CP1"]}
            }}))
        );
        assert_eq!(
            claims(false, Some(challenge)),
            Some(serde_json::from_str(challenge).unwrap())
        );
        // Already there: not twice; other capabilities kept.
        let both = r#"{"access_token":{"xms_cc":{"values":["CP2","CP1"]}}}"#;
        assert_eq!(
            claims(true, Some(both)),
            Some(serde_json::from_str(both).unwrap())
        );
        // Claims that are not a JSON object go as they came.
        assert_eq!(
            claims(true, Some("not json")),
            Some(serde_json::Value::String("not json".into()))
        );
        // Odd shapes inside are replaced by the capability's.
        assert_eq!(
            claims(true, Some(r#"{"access_token":{"xms_cc":7}}"#)),
            Some(cp1)
        );
    }
}
