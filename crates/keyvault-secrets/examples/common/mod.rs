#![allow(dead_code)]
//! Where the examples run: the vault named by `VAULT_URL` (with `DefaultAzureCredential`), or else a
//! fresh in-process `keyvault-server` LocalVault on 127.0.0.1.

use keyvault_secrets::SecretClientOptions;
use keyvault_secrets::credentials::{
    ClientSecretCredential, ClientSecretCredentialOptions, DefaultAzureCredential, TokenCredential,
};
use keyvault_server::local::LocalVault;
use std::sync::Arc;

pub struct Target {
    pub vault_url: String,
    pub credential: Arc<dyn TokenCredential>,
    pub options: SecretClientOptions,
    local: Option<LocalVault>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Target {
    fn local(v: LocalVault) -> Target {
        let credential = ClientSecretCredential::new(
            v.tenant_id(),
            v.client_id(),
            v.client_secret(),
            Some(ClientSecretCredentialOptions {
                authority_host: v.authority_host().to_string(),
                additional_ca_certificates: vec![v.ca_cert_pem().to_vec()],
                ..Default::default()
            }),
        )
        .expect("a credential");
        Target {
            vault_url: v.vault_url().to_string(),
            credential: Arc::new(credential),
            options: SecretClientOptions {
                // The local vault is on an IP address, which no challenge resource can be a parent of.
                verify_challenge_resource: false,
                additional_ca_certificates: vec![v.ca_cert_pem().to_vec()],
                ..Default::default()
            },
            local: Some(v),
            runtime: None,
        }
    }

    fn remote(url: String) -> Target {
        Target {
            vault_url: url,
            credential: Arc::new(DefaultAzureCredential::new().expect("a credential")),
            options: SecretClientOptions::default(),
            local: None,
            runtime: None,
        }
    }

    /// For async examples.
    pub async fn start() -> Target {
        match std::env::var("VAULT_URL") {
            Ok(url) => Self::remote(url),
            Err(_) => {
                let v = LocalVault::start().await.expect("the local vault starts");
                println!("(running against a local vault at {})", v.vault_url());
                Self::local(v)
            }
        }
    }

    /// For blocking examples: the local vault gets a runtime of its own.
    pub fn start_blocking() -> Target {
        match std::env::var("VAULT_URL") {
            Ok(url) => Self::remote(url),
            Err(_) => {
                let rt = tokio::runtime::Runtime::new().expect("a runtime");
                let v = rt
                    .block_on(LocalVault::start())
                    .expect("the local vault starts");
                println!("(running against a local vault at {})", v.vault_url());
                let mut t = Self::local(v);
                t.runtime = Some(rt);
                t
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(v) = self.local.take() {
            v.shutdown().await;
        }
    }

    pub fn stop_blocking(mut self) {
        if let (Some(v), Some(rt)) = (self.local.take(), self.runtime.take()) {
            rt.block_on(v.shutdown());
        }
    }
}
