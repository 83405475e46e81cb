use super::{
    AccessToken, AzureCliCredential, AzureCliCredentialOptions, AzureDeveloperCliCredential,
    AzureDeveloperCliCredentialOptions, ChainedTokenCredential, ClientSecretCredentialOptions,
    EnvironmentCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    TokenCredential, TokenRequestOptions, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::retry::RetryOptions;
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
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
    /// Tenant for the Azure CLI and Azure Developer CLI credentials.
    pub tenant_id: Option<String>,
    pub exclude_environment_credential: bool,
    pub exclude_workload_identity_credential: bool,
    pub exclude_managed_identity_credential: bool,
    pub exclude_cli_credential: bool,
    pub exclude_developer_cli_credential: bool,
}

/// A credential of the chain that could not be made (its settings are missing): says why when asked.
#[derive(Debug)]
struct Unavailable(String);

#[async_trait]
impl TokenCredential for Unavailable {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions>) -> Result<AccessToken> {
        Err(Error::new(ErrorKind::CredentialUnavailable, self.0.clone()))
    }
}

/// Tries, in order, [`EnvironmentCredential`], [`WorkloadIdentityCredential`] (when
/// `AZURE_FEDERATED_TOKEN_FILE` & co. are set, as on AKS), [`ManagedIdentityCredential`] (user-assigned
/// with `managed_identity_client_id`, else `AZURE_CLIENT_ID` when set), [`AzureCliCredential`] and
/// [`AzureDeveloperCliCredential`], with the
/// rules of [`ChainedTokenCredential`]: a credential that is not set up here
/// ([`ErrorKind::CredentialUnavailable`]) is skipped; one that is set up and fails (a wrong
/// `AZURE_CLIENT_SECRET`, say) stops the chain with its error, naming it; the first that returns a token is
/// kept for later calls. When none is available, the error ([`ErrorKind::CredentialUnavailable`]) lists why
/// for each.
///
/// As in azure-identity: the managed identity is unavailable when no endpoint answers (within 1 s here, with
/// no retries) or IMDS says no identity (or not the requested one) is assigned (see
/// [`ManagedIdentityCredential`]); and inside this chain every failure of the Azure CLI or the Azure Developer
/// CLI counts as unavailable (as azure-identity's `within_dac`: they are the developer's fallbacks, and the
/// last ones), while on its own or in a [`ChainedTokenCredential`] a CLI that is logged in but fails is an
/// [`ErrorKind::Credential`]. Not in this chain (as in azure-identity, where they are excluded by default or
/// not here): the shared token cache, Azure PowerShell, Visual Studio Code, interactive browser sign-in.
pub struct DefaultAzureCredential {
    chain: ChainedTokenCredential,
}

impl fmt::Debug for DefaultAzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.chain.fmt(f)
    }
}

const LABEL: &str = "DefaultAzureCredential";

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
        let mut chain: Vec<(String, Arc<dyn TokenCredential>)> = Vec::new();
        if !options.exclude_environment_credential {
            chain.push((
                "EnvironmentCredential".into(),
                Arc::new(EnvironmentCredential::with_env(
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
                "WorkloadIdentityCredential".into(),
                match workload {
                    Ok(c) => Arc::new(c),
                    Err(e) => Arc::new(Unavailable(e.message().to_string())),
                },
            ));
        }
        if !options.exclude_managed_identity_credential {
            let client_id =
                (options.managed_identity_client_id.clone()).or_else(client_id_from_env);
            chain.push((
                "ManagedIdentityCredential".into(),
                Arc::new(ManagedIdentityCredential::with_env(
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
                "AzureCliCredential".into(),
                Arc::new(
                    AzureCliCredential::new(Some(AzureCliCredentialOptions {
                        tenant_id: options.tenant_id.clone(),
                        ..Default::default()
                    }))?
                    .in_default_chain(),
                ),
            ));
        }
        if !options.exclude_developer_cli_credential {
            chain.push((
                "AzureDeveloperCliCredential".into(),
                Arc::new(
                    AzureDeveloperCliCredential::new(Some(AzureDeveloperCliCredentialOptions {
                        tenant_id: options.tenant_id.clone(),
                        ..Default::default()
                    }))?
                    .in_default_chain(),
                ),
            ));
        }
        Ok(DefaultAzureCredential {
            chain: ChainedTokenCredential::labelled(LABEL, chain),
        })
    }

    /// A chain of your own credentials, tried in order, with the rules of [`ChainedTokenCredential`] (errors
    /// name the chain `DefaultAzureCredential`).
    pub fn from_chain(chain: Vec<(&'static str, Box<dyn TokenCredential>)>) -> Self {
        let chain = chain
            .into_iter()
            .map(|(n, c)| (n.to_string(), Arc::from(c)))
            .collect();
        DefaultAzureCredential {
            chain: ChainedTokenCredential::labelled(LABEL, chain),
        }
    }

    /// The credentials' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.chain.names()
    }

    /// The name of the credential that returned a token, once one has.
    pub fn chosen_name(&self) -> Option<&str> {
        self.chain.chosen_name()
    }
}

#[async_trait]
impl TokenCredential for DefaultAzureCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        self.chain.get_token(scopes, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::StaticTokenCredential;

    #[derive(Debug)]
    struct Failing(ErrorKind);
    #[async_trait]
    impl TokenCredential for Failing {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions>,
        ) -> Result<AccessToken> {
            Err(Error::new(self.0, "nope"))
        }
    }

    #[tokio::test]
    async fn from_chain_skips_the_unavailable_and_stops_at_a_failure() {
        let c = DefaultAzureCredential::from_chain(vec![
            (
                "Unavailable",
                Box::new(Failing(ErrorKind::CredentialUnavailable)),
            ),
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
        assert_eq!(c.chosen_name(), Some("Static"));

        let c = DefaultAzureCredential::from_chain(vec![
            ("Failing", Box::new(Failing(ErrorKind::Credential))),
            ("Static", Box::new(StaticTokenCredential::from_token("t"))),
        ]);
        let e = c.get_token(&["s/.default"], None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Credential);
        assert!(
            e.message()
                .starts_with("DefaultAzureCredential failed to retrieve a token: Failing failed")
                && e.message().ends_with(": nope"),
            "{e}"
        );
        assert_eq!(c.chosen_name(), None);
    }

    #[tokio::test]
    async fn nothing_configured_lists_every_reason() {
        let c = DefaultAzureCredential::with_env(
            DefaultAzureCredentialOptions {
                exclude_managed_identity_credential: true,
                exclude_cli_credential: true,
                exclude_developer_cli_credential: true,
                ..Default::default()
            },
            |_| None,
        )
        .unwrap();
        assert_eq!(
            c.names(),
            ["EnvironmentCredential", "WorkloadIdentityCredential"]
        );
        let e = c
            .get_token(&["https://vault.azure.net/.default"], None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CredentialUnavailable);
        assert!(e.is_client_authentication());
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
        assert_eq!(
            c.names(),
            [
                "EnvironmentCredential",
                "WorkloadIdentityCredential",
                "ManagedIdentityCredential",
                "AzureCliCredential",
                "AzureDeveloperCliCredential"
            ]
        );
        let dbg = format!("{:?}", c.chain.chain[1].1);
        assert!(
            dbg.contains("wi-client") && dbg.contains("/var/run/secrets/token"),
            "{dbg}"
        );
        let dbg = format!("{:?}", c.chain.chain[2].1);
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
        assert!(!c.names().contains(&"WorkloadIdentityCredential"), "{c:?}");
        assert!(format!("{:?}", c.chain.chain[1].1).contains("mi-client"));
    }
}
