use super::{
    AccessToken, ClientSecretCredential, ClientSecretCredentialOptions, TokenCredential,
    TokenRequestOptions,
};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use std::fmt;

/// Options of [`EnvironmentCredential`]: those of the underlying [`ClientSecretCredential`]
/// (`authority_host` is overridden by `AZURE_AUTHORITY_HOST` when that is set).
pub type EnvironmentCredentialOptions = ClientSecretCredentialOptions;

/// A client secret from the environment: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
/// and optionally `AZURE_AUTHORITY_HOST`. When they are incomplete the credential still builds, and
/// `get_token` says which are missing.
pub struct EnvironmentCredential {
    inner: std::result::Result<ClientSecretCredential, String>,
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Ok(c) => f.debug_tuple("EnvironmentCredential").field(c).finish(),
            Err(e) => f.debug_tuple("EnvironmentCredential").field(e).finish(),
        }
    }
}

impl EnvironmentCredential {
    /// Read the process environment.
    pub fn new(options: Option<EnvironmentCredentialOptions>) -> Self {
        Self::with_env(|name| std::env::var(name).ok(), options)
    }

    /// Read the variables through `lookup` (for tests and custom sources).
    pub fn with_env(
        lookup: impl Fn(&str) -> Option<String>,
        options: Option<EnvironmentCredentialOptions>,
    ) -> Self {
        let get = |n: &str| lookup(n).filter(|v| !v.is_empty());
        let tenant = get("AZURE_TENANT_ID");
        let client = get("AZURE_CLIENT_ID");
        let secret = get("AZURE_CLIENT_SECRET");
        let inner = match (tenant, client, secret) {
            (Some(t), Some(c), Some(s)) => {
                let mut options = options.unwrap_or_default();
                if let Some(a) = get("AZURE_AUTHORITY_HOST") {
                    options.authority_host = a;
                }
                ClientSecretCredential::new(t, c, s, Some(options)).map_err(|e| {
                    format!(
                        "EnvironmentCredential: the environment is not usable: {}",
                        e.message()
                    )
                })
            }
            (t, c, s) => {
                let missing: Vec<&str> = [
                    ("AZURE_TENANT_ID", t.is_none()),
                    ("AZURE_CLIENT_ID", c.is_none()),
                    ("AZURE_CLIENT_SECRET", s.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| n)
                .collect();
                Err(format!(
                    "EnvironmentCredential authentication unavailable: environment variables are not fully \
                     configured (missing {})",
                    missing.join(", ")
                ))
            }
        };
        EnvironmentCredential { inner }
    }

    /// Whether the environment had every variable.
    pub fn is_configured(&self) -> bool {
        self.inner.is_ok()
    }
}

#[async_trait]
impl TokenCredential for EnvironmentCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        match &self.inner {
            Ok(c) => c.get_token(scopes, options).await,
            Err(e) => Err(Error::new(ErrorKind::Credential, e.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn says_what_is_missing() {
        let c = EnvironmentCredential::with_env(
            |n| (n == "AZURE_CLIENT_ID").then(|| "c".to_string()),
            None,
        );
        assert!(!c.is_configured());
        let e = c
            .get_token(&["https://vault.azure.net/.default"], None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Credential);
        assert!(
            e.message().contains("AZURE_TENANT_ID, AZURE_CLIENT_SECRET"),
            "{e}"
        );
        let c = EnvironmentCredential::with_env(
            |n| match n {
                "AZURE_TENANT_ID" => Some("t".into()),
                "AZURE_CLIENT_ID" => Some("c".into()),
                "AZURE_CLIENT_SECRET" => Some("s3cr3t".into()),
                "AZURE_AUTHORITY_HOST" => Some("https://login.example.com/".into()),
                _ => None,
            },
            None,
        );
        assert!(c.is_configured());
        let dbg = format!("{c:?}");
        assert!(
            dbg.contains("https://login.example.com") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
    }
}
