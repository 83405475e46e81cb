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
mod chained;
mod client_assertion;
mod client_certificate;
mod client_secret;
mod default;
mod environment;
mod managed_identity;
mod static_token;
mod workload_identity;

pub use azure_cli::{AzureCliCredential, AzureCliCredentialOptions};
pub use chained::ChainedTokenCredential;
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
