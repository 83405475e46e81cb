use super::{
    AccessToken, AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredentialOptions,
    EnvironmentCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    TokenCredential, TokenRequestOptions,
};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::retry::RetryOptions;
use async_trait::async_trait;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Options of [`DefaultAzureCredential`].
#[derive(Clone, Debug, Default)]
pub struct DefaultAzureCredentialOptions {
    /// Options of the environment credential (authority, extra CAs, …).
    pub environment: ClientSecretCredentialOptions,
    /// Client id of a user-assigned managed identity.
    pub managed_identity_client_id: Option<String>,
    /// Tenant for the Azure CLI credential.
    pub tenant_id: Option<String>,
    pub exclude_environment_credential: bool,
    pub exclude_managed_identity_credential: bool,
    pub exclude_cli_credential: bool,
}

/// Tries, in order, [`EnvironmentCredential`], [`ManagedIdentityCredential`] and
/// [`AzureCliCredential`]; uses the first that returns a token (and keeps using it). When none does,
/// the error lists why each failed.
pub struct DefaultAzureCredential {
    chain: Vec<(&'static str, Box<dyn TokenCredential>)>,
    chosen: Mutex<Option<usize>>,
}

impl fmt::Debug for DefaultAzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultAzureCredential")
            .field(
                "chain",
                &self.chain.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .field("chosen", &self.chosen.lock().ok().and_then(|c| *c))
            .finish()
    }
}

impl DefaultAzureCredential {
    /// The default chain, reading the process environment.
    pub fn new() -> Result<Self> {
        Self::with_options(DefaultAzureCredentialOptions::default())
    }

    pub fn with_options(options: DefaultAzureCredentialOptions) -> Result<Self> {
        Self::build(options, |n| std::env::var(n).ok())
    }

    /// A chain that reads its environment through `lookup`.
    pub fn with_env(
        options: DefaultAzureCredentialOptions,
        lookup: impl Fn(&str) -> Option<String> + Clone,
    ) -> Result<Self> {
        Self::build(options, lookup)
    }

    fn build(
        options: DefaultAzureCredentialOptions,
        lookup: impl Fn(&str) -> Option<String> + Clone,
    ) -> Result<Self> {
        let mut chain: Vec<(&'static str, Box<dyn TokenCredential>)> = Vec::new();
        if !options.exclude_environment_credential {
            chain.push((
                "EnvironmentCredential",
                Box::new(EnvironmentCredential::with_env(
                    lookup.clone(),
                    Some(options.environment.clone()),
                )),
            ));
        }
        if !options.exclude_managed_identity_credential {
            chain.push((
                "ManagedIdentityCredential",
                Box::new(ManagedIdentityCredential::with_env(
                    lookup,
                    Some(ManagedIdentityCredentialOptions {
                        client_id: options.managed_identity_client_id.clone(),
                        connect_timeout: Some(Duration::from_secs(1)),
                        retry: RetryOptions::none(),
                        ..Default::default()
                    }),
                )?),
            ));
        }
        if !options.exclude_cli_credential {
            chain.push((
                "AzureCliCredential",
                Box::new(AzureCliCredential::new(Some(AzureCliCredentialOptions {
                    tenant_id: options.tenant_id.clone(),
                    ..Default::default()
                }))?),
            ));
        }
        Ok(DefaultAzureCredential {
            chain,
            chosen: Mutex::new(None),
        })
    }

    /// A chain of your own credentials, tried in order.
    pub fn from_chain(chain: Vec<(&'static str, Box<dyn TokenCredential>)>) -> Self {
        DefaultAzureCredential {
            chain,
            chosen: Mutex::new(None),
        }
    }
}

#[async_trait]
impl TokenCredential for DefaultAzureCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        let chosen = self.chosen.lock().ok().and_then(|c| *c);
        if let Some(i) = chosen {
            return self.chain[i].1.get_token(scopes, options).await;
        }
        let mut failures = Vec::new();
        for (i, (name, credential)) in self.chain.iter().enumerate() {
            match credential.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    tracing::info!(credential = name, "DefaultAzureCredential acquired a token");
                    if let Ok(mut c) = self.chosen.lock() {
                        *c = Some(i);
                    }
                    return Ok(token);
                }
                Err(e) => failures.push(format!("- {name}: {}", e.message())),
            }
        }
        Err(Error::new(
            ErrorKind::Credential,
            format!(
                "DefaultAzureCredential failed to retrieve a token from the included credentials:\n{}",
                failures.join("\n")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::StaticTokenCredential;

    #[derive(Debug)]
    struct Failing;
    #[async_trait]
    impl TokenCredential for Failing {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions>,
        ) -> Result<AccessToken> {
            Err(Error::new(ErrorKind::Credential, "nope"))
        }
    }

    #[tokio::test]
    async fn first_that_works_and_combined_error() {
        let c = DefaultAzureCredential::from_chain(vec![
            ("Failing", Box::new(Failing)),
            ("Static", Box::new(StaticTokenCredential::from_token("t"))),
        ]);
        assert_eq!(
            c.get_token(&["s/.default"], None)
                .await
                .unwrap()
                .token
                .expose(),
            "t"
        );
        assert_eq!(*c.chosen.lock().unwrap(), Some(1));

        let c = DefaultAzureCredential::with_env(
            DefaultAzureCredentialOptions {
                exclude_managed_identity_credential: true,
                exclude_cli_credential: true,
                ..Default::default()
            },
            |_| None,
        )
        .unwrap();
        let e = c
            .get_token(&["https://vault.azure.net/.default"], None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Credential);
        assert!(
            e.message().contains(
                "- EnvironmentCredential: EnvironmentCredential authentication unavailable"
            ),
            "{e}"
        );
    }
}
