use super::{AccessToken, TokenCredential, TokenRequestOptions};
use crate::error::Result;
use async_trait::async_trait;
use keyvault_types::SecretString;
use std::fmt;
use time::OffsetDateTime;

/// A credential that always returns the same token (for tests, or tokens obtained elsewhere).
#[derive(Clone)]
pub struct StaticTokenCredential {
    token: AccessToken,
}

impl StaticTokenCredential {
    /// A token that the client treats as valid until `expires_on`.
    pub fn new(token: impl Into<SecretString>, expires_on: OffsetDateTime) -> Self {
        StaticTokenCredential {
            token: AccessToken::new(token, expires_on),
        }
    }

    /// A token that the client treats as valid for the next 24 hours.
    pub fn from_token(token: impl Into<SecretString>) -> Self {
        Self::new(token, OffsetDateTime::now_utc() + time::Duration::hours(24))
    }
}

impl fmt::Debug for StaticTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenCredential")
            .field("token", &self.token)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for StaticTokenCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        Ok(self.token.clone())
    }
}
