//! Credential chains against the real server (in process, HTTPS): a credential that is not set up is skipped
//! (azure-identity's `CredentialUnavailableError`), one that is set up and fails stops the chain
//! (`ClientAuthenticationError`), so a wrong `AZURE_CLIENT_SECRET` is reported rather than masked by the
//! developer's `az login`.

mod common;

use keyvault_secrets::credentials::{
    AzureCliCredential, AzureCliCredentialOptions, ChainedTokenCredential,
    ClientSecretCredentialOptions, DefaultAzureCredential, DefaultAzureCredentialOptions,
    EnvironmentCredential, TokenCredential,
};
use keyvault_secrets::{ErrorKind, SecretClient};
use keyvault_server::local::LocalVault;
use std::sync::Arc;

fn common_options(lv: &LocalVault) -> ClientSecretCredentialOptions {
    ClientSecretCredentialOptions {
        authority_host: lv.authority_host().to_string(),
        additional_ca_certificates: vec![lv.ca_cert_pem().to_vec()],
        trust_system_roots: false,
        ..Default::default()
    }
}

/// The scope the vault's challenge names (`https://localhost:{port}/.default`).
fn scope(lv: &LocalVault) -> String {
    let port = lv.vault_url().rsplit(':').next().unwrap();
    format!("https://localhost:{port}/.default")
}

/// The environment of a service principal of `lv` with `secret` (`None`: the secret is not set).
fn service_principal_env(
    lv: &LocalVault,
    secret: Option<&str>,
) -> impl Fn(&str) -> Option<String> + Clone + use<> {
    let (tenant, client, authority) = (
        lv.tenant_id().to_string(),
        lv.client_id().to_string(),
        lv.authority_host().to_string(),
    );
    let secret = secret.map(str::to_string);
    move |n: &str| match n {
        "AZURE_TENANT_ID" => Some(tenant.clone()),
        "AZURE_CLIENT_ID" => Some(client.clone()),
        "AZURE_CLIENT_SECRET" => secret.clone(),
        "AZURE_AUTHORITY_HOST" => Some(authority.clone()),
        _ => None,
    }
}

/// `DefaultAzureCredential`, with every credential included, stops at the environment's wrong client secret:
/// the error is the authentication failure (not "unavailable"), names `EnvironmentCredential`, and no later
/// credential (managed identity, Azure CLI) was asked.
#[tokio::test]
async fn default_credential_stops_at_a_wrong_client_secret() {
    let lv = common::vault().await;
    let c = DefaultAzureCredential::with_env(
        DefaultAzureCredentialOptions {
            environment: common_options(&lv),
            ..Default::default()
        },
        service_principal_env(&lv, Some("wrong-secret-CANARY")),
    )
    .unwrap();
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
    let e = c.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(e.is_client_authentication() && !e.is_credential_unavailable());
    let m = e.message();
    assert!(
        m.starts_with(
            "DefaultAzureCredential failed to retrieve a token: EnvironmentCredential failed to authenticate"
        ) && m.contains("AADSTS7000215"),
        "{m}"
    );
    // The workload identity (unavailable) was tried before it; nothing after it was.
    assert!(
        !m.contains("ManagedIdentityCredential") && !m.contains("AzureCliCredential"),
        "{m}"
    );
    assert!(!m.contains("CANARY") && !format!("{e:?}").contains("CANARY"));
    assert_eq!(c.chosen_name(), None);

    // Through the client: the same kind, from the vault's challenge flow.
    let client =
        SecretClient::new(lv.vault_url(), Arc::new(c), Some(common::options(&lv))).unwrap();
    let e = client.get_secret("any", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(e.message().contains("EnvironmentCredential"), "{e}");
    lv.shutdown().await;
}

/// A missing environment is unavailable, alone and in `DefaultAzureCredential`; through the client the error
/// keeps that kind.
#[tokio::test]
async fn missing_environment_is_unavailable() {
    let lv = common::vault().await;
    let env = EnvironmentCredential::with_env(
        service_principal_env(&lv, None),
        Some(common_options(&lv)),
    );
    let e = env.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CredentialUnavailable, "{e}");
    assert!(e.message().contains("AZURE_CLIENT_SECRET"), "{e}");

    let c = DefaultAzureCredential::with_env(
        DefaultAzureCredentialOptions {
            environment: common_options(&lv),
            exclude_managed_identity_credential: true,
            exclude_cli_credential: true,
            exclude_developer_cli_credential: true,
            ..Default::default()
        },
        service_principal_env(&lv, None),
    )
    .unwrap();
    let client =
        SecretClient::new(lv.vault_url(), Arc::new(c), Some(common::options(&lv))).unwrap();
    let e = client.get_secret("any", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CredentialUnavailable, "{e}");
    assert!(e.is_client_authentication());
    assert!(
        e.message()
            .contains("- EnvironmentCredential: EnvironmentCredential authentication unavailable")
            && e.message().contains("- WorkloadIdentityCredential: "),
        "{e}"
    );
    lv.shutdown().await;
}

/// An `az` that would work (it prints a valid token for the vault, and leaves a mark when run): behind a wrong
/// client secret it is never run; behind a missing environment it is, and its token reads a secret.
#[cfg(unix)]
#[tokio::test]
async fn a_working_cli_does_not_mask_a_wrong_secret() {
    use std::os::unix::fs::PermissionsExt;
    let lv = common::vault().await;
    let token = common::credential(&lv)
        .get_token(&[&scope(&lv)], None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (az, mark) = (dir.path().join("az"), dir.path().join("ran"));
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"accessToken\":\"{}\",\"expires_on\":{}}}'\n",
            mark.display(),
            token.token.expose(),
            token.expires_on.unix_timestamp()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli = || -> Arc<dyn TokenCredential> {
        Arc::new(
            AzureCliCredential::new(Some(AzureCliCredentialOptions {
                program: Some(az.clone()),
                ..Default::default()
            }))
            .unwrap(),
        )
    };
    let env = |secret: Option<&str>| -> Arc<dyn TokenCredential> {
        Arc::new(EnvironmentCredential::with_env(
            service_principal_env(&lv, secret),
            Some(common_options(&lv)),
        ))
    };

    // A wrong secret: the chain stops, the CLI is not run.
    let chain = ChainedTokenCredential::new(vec![env(Some("wrong")), cli()]).unwrap();
    assert_eq!(
        chain.names(),
        ["EnvironmentCredential", "AzureCliCredential"]
    );
    let e = chain.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(
        e.message().starts_with(
            "ChainedTokenCredential failed to retrieve a token: EnvironmentCredential failed"
        ) && e.message().contains("invalid_client"),
        "{e}"
    );
    assert!(!mark.exists(), "the CLI was run");

    // The same through DefaultAzureCredential::from_chain.
    let dac = DefaultAzureCredential::from_chain(vec![
        (
            "EnvironmentCredential",
            Box::new(EnvironmentCredential::with_env(
                service_principal_env(&lv, Some("wrong")),
                Some(common_options(&lv)),
            )),
        ),
        (
            "AzureCliCredential",
            Box::new(
                AzureCliCredential::new(Some(AzureCliCredentialOptions {
                    program: Some(az.clone()),
                    ..Default::default()
                }))
                .unwrap(),
            ),
        ),
    ]);
    let e = dac.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(!mark.exists(), "the CLI was run");

    // No secret in the environment: unavailable, so the CLI is asked, and its token works at the vault.
    let chain = Arc::new(ChainedTokenCredential::new(vec![env(None), cli()]).unwrap());
    let client =
        SecretClient::new(lv.vault_url(), chain.clone(), Some(common::options(&lv))).unwrap();
    client.set_secret("via-cli", "yes", None).await.unwrap();
    let got = client.get_secret("via-cli", None).await.unwrap();
    assert_eq!(got.value.unwrap().expose(), "yes");
    assert!(mark.exists());
    assert_eq!(chain.chosen_name(), Some("AzureCliCredential"));

    // The right secret: the environment works, and is kept.
    let chain = ChainedTokenCredential::new(vec![env(Some(lv.client_secret())), cli()]).unwrap();
    chain.get_token(&[&scope(&lv)], None).await.unwrap();
    assert_eq!(chain.chosen_name(), Some("EnvironmentCredential"));
    lv.shutdown().await;
}
