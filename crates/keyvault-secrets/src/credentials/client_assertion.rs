use super::client_secret::{ClientAuth, TokenEndpoint};
use super::{
    AccessToken, ClientSecretCredentialOptions, TokenCredential, TokenRequestOptions, one_scope,
};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use keyvault_types::SecretString;
use std::fmt;
use std::sync::Arc;

/// Gives a client assertion (a JWT) each time a token is requested.
pub type AssertionFn = Arc<dyn Fn() -> Result<String> + Send + Sync>;

/// A client that proves its identity with an assertion your code provides (azure-identity's
/// `ClientAssertionCredential`): a federated token from another identity provider, or a JWT signed
/// elsewhere (an HSM, a key vault). `func` is called at each token request; its result is posted as
/// `client_assertion` with the `jwt-bearer` assertion type and never appears in errors or `Debug`.
pub struct ClientAssertionCredential {
    endpoint: TokenEndpoint,
    func: AssertionFn,
}

impl fmt::Debug for ClientAssertionCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAssertionCredential")
            .field("tenant_id", &self.endpoint.tenant_id)
            .field("client_id", &self.endpoint.client_id)
            .field("authority", &self.endpoint.authority)
            .finish_non_exhaustive()
    }
}

impl ClientAssertionCredential {
    /// Fails (without I/O) on a bad tenant or authority.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        func: AssertionFn,
        options: Option<ClientSecretCredentialOptions>,
    ) -> Result<Self> {
        let options = options.unwrap_or_default();
        Ok(ClientAssertionCredential {
            endpoint: TokenEndpoint::new(tenant_id.into(), client_id.into(), &options)?,
            func,
        })
    }
}

#[async_trait]
impl TokenCredential for ClientAssertionCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        const WHO: &str = "ClientAssertionCredential";
        let scope = one_scope(WHO, scopes)?;
        let options = options.unwrap_or_default();
        let url = self.endpoint.token_url(WHO, &options)?;
        let assertion = SecretString::new((self.func)()?);
        if assertion.expose().trim().is_empty() {
            return Err(Error::new(
                ErrorKind::Credential,
                format!("{WHO}: the assertion function returned an empty assertion"),
            ));
        }
        self.endpoint
            .request(WHO, url, scope, &options, ClientAuth::Assertion(&assertion))
            .await
    }
}
