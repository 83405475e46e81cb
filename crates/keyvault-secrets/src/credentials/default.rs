use super::{
    AccessToken, AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredentialOptions,
    EnvironmentCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    TokenCredential, TokenRequestOptions, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
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
    /// Options of the environment and workload identity credentials (authority, extra CAs, …).
    pub environment: ClientSecretCredentialOptions,
    /// Client id of a user-assigned managed identity. Default: `AZURE_CLIENT_ID` (as azure-identity).
    pub managed_identity_client_id: Option<String>,
    /// Client id of the workload identity. Default: `AZURE_CLIENT_ID`.
    pub workload_identity_client_id: Option<String>,
    /// Tenant for the Azure CLI credential.
    pub tenant_id: Option<String>,
    pub exclude_environment_credential: bool,
    pub exclude_workload_identity_credential: bool,
    pub exclude_managed_identity_credential: bool,
    pub exclude_cli_credential: bool,
}

/// A credential of the chain that could not be made (its settings are missing): says why when asked.
#[derive(Debug)]
struct Unavailable(String);

#[async_trait]
impl TokenCredential for Unavailable {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions>) -> Result<AccessToken> {
        Err(Error::new(ErrorKind::Credential, self.0.clone()))
    }
}

/// Tries, in order, [`EnvironmentCredential`], [`WorkloadIdentityCredential`] (when
/// `AZURE_FEDERATED_TOKEN_FILE` & co. are set, as on AKS), [`ManagedIdentityCredential`] (user-assigned
/// with `managed_identity_client_id`, else `AZURE_CLIENT_ID` when set) and [`AzureCliCredential`]; uses the first that returns a token (and keeps using it). When none does,
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
        let client_id_from_env = || lookup("AZURE_CLIENT_ID").filter(|v| !v.is_empty());
        if !options.exclude_workload_identity_credential {
            let workload = WorkloadIdentityCredential::with_env(
                lookup.clone(),
                Some(WorkloadIdentityCredentialOptions {
                    client_id: options.workload_identity_client_id.clone(),
                    common: options.environment.clone(),
                    ..Default::default()
                }),
            );
            chain.push((
                "WorkloadIdentityCredential",
                match workload {
                    Ok(c) => Box::new(c),
                    Err(e) => Box::new(Unavailable(e.message().to_string())),
                },
            ));
        }
        if !options.exclude_managed_identity_credential {
            let client_id =
                (options.managed_identity_client_id.clone()).or_else(client_id_from_env);
            chain.push((
                "ManagedIdentityCredential",
                Box::new(ManagedIdentityCredential::with_env(
                    lookup,
                    Some(ManagedIdentityCredentialOptions {
                        client_id,
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
        assert_eq!(
            c.chain.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["EnvironmentCredential", "WorkloadIdentityCredential"]
        );
        let e = c
            .get_token(&["https://vault.azure.net/.default"], None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Credential);
        assert!(
            e.message().contains(
                "- EnvironmentCredential: EnvironmentCredential authentication unavailable"
            ) && e.message().contains(
                "- WorkloadIdentityCredential: WorkloadIdentityCredential authentication unavailable"
            ),
            "{e}"
        );
    }

    /// On AKS (the webhook's variables set): environment → workload identity → managed identity (for
    /// `AZURE_CLIENT_ID`) → CLI; the workload identity can be left out.
    #[test]
    fn chain_order_and_the_managed_identitys_client_id() {
        let env = |n: &str| match n {
            "AZURE_TENANT_ID" => Some("t".to_string()),
            "AZURE_CLIENT_ID" => Some("wi-client".to_string()),
            "AZURE_FEDERATED_TOKEN_FILE" => Some("/var/run/secrets/token".to_string()),
            _ => None,
        };
        let c = DefaultAzureCredential::with_env(Default::default(), env).unwrap();
        let names: Vec<&str> = c.chain.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "EnvironmentCredential",
                "WorkloadIdentityCredential",
                "ManagedIdentityCredential",
                "AzureCliCredential"
            ]
        );
        let dbg = format!("{:?}", c.chain[1].1);
        assert!(
            dbg.contains("wi-client") && dbg.contains("/var/run/secrets/token"),
            "{dbg}"
        );
        let dbg = format!("{:?}", c.chain[2].1);
        assert!(dbg.contains("Some(\"wi-client\")"), "{dbg}");
        let c = DefaultAzureCredential::with_env(
            DefaultAzureCredentialOptions {
                exclude_workload_identity_credential: true,
                managed_identity_client_id: Some("mi-client".into()),
                ..Default::default()
            },
            env,
        )
        .unwrap();
        let names: Vec<&str> = c.chain.iter().map(|(n, _)| *n).collect();
        assert!(!names.contains(&"WorkloadIdentityCredential"), "{names:?}");
        assert!(format!("{:?}", c.chain[1].1).contains("mi-client"));
    }
}
