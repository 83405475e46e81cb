#![allow(dead_code)]
//! Helpers: a LocalVault and clients for it.

use async_trait::async_trait;
use keyvault_secrets::credentials::{
    AccessToken, ClientSecretCredential, ClientSecretCredentialOptions, TokenCredential,
    TokenRequestOptions,
};
use keyvault_secrets::http::{Request, Response, Transport};
use keyvault_secrets::{RetryOptions, SecretClient, SecretClientOptions};
use keyvault_server::local::LocalVault;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub async fn vault() -> LocalVault {
    LocalVault::start().await.expect("the local vault starts")
}

pub fn credential(v: &LocalVault) -> Arc<ClientSecretCredential> {
    Arc::new(
        ClientSecretCredential::new(
            v.tenant_id(),
            v.client_id(),
            v.client_secret(),
            Some(ClientSecretCredentialOptions {
                authority_host: v.authority_host().to_string(),
                additional_ca_certificates: vec![v.ca_cert_pem().to_vec()],
                trust_system_roots: false,
                ..Default::default()
            }),
        )
        .expect("a valid credential"),
    )
}

pub fn options(v: &LocalVault) -> SecretClientOptions {
    SecretClientOptions {
        verify_challenge_resource: false,
        additional_ca_certificates: vec![v.ca_cert_pem().to_vec()],
        trust_system_roots: false,
        retry: RetryOptions {
            max_retries: 3,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        },
        ..Default::default()
    }
}

pub fn client(v: &LocalVault) -> SecretClient {
    SecretClient::new(v.vault_url(), credential(v), Some(options(v))).expect("a client")
}

/// Counts token requests and can make tokens look short-lived or bad.
#[derive(Debug)]
pub struct Counting {
    pub inner: Arc<dyn TokenCredential>,
    pub calls: AtomicUsize,
    /// Tokens claim to expire this soon (forces refreshes).
    pub lifetime: Option<time::Duration>,
    /// The first this-many tokens are garbage.
    pub bad_first: usize,
}

impl Counting {
    pub fn new(inner: Arc<dyn TokenCredential>) -> Self {
        Counting {
            inner,
            calls: AtomicUsize::new(0),
            lifetime: None,
            bad_first: 0,
        }
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl TokenCredential for Counting {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> keyvault_secrets::Result<AccessToken> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut t = self.inner.get_token(scopes, options).await?;
        if n < self.bad_first {
            t = AccessToken::new("not-a-token", t.expires_on);
        }
        if let Some(l) = self.lifetime {
            t = AccessToken::new(t.token.clone(), time::OffsetDateTime::now_utc() + l);
        }
        Ok(t)
    }
}

/// Answers the first `throttle` requests with 429 and the given headers, then passes through.
#[derive(Debug)]
pub struct Throttling {
    pub inner: Arc<dyn Transport>,
    pub throttle: AtomicUsize,
    pub headers: Vec<(&'static str, &'static str)>,
    pub seen: AtomicUsize,
}

#[async_trait]
impl Transport for Throttling {
    async fn send(&self, request: &Request) -> keyvault_secrets::Result<Response> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        let left = self.throttle.load(Ordering::SeqCst);
        if left > 0 {
            self.throttle.store(left - 1, Ordering::SeqCst);
            let mut headers = keyvault_secrets::http::HeaderMap::new();
            for (k, v) in &self.headers {
                headers.insert(*k, v.parse().unwrap());
            }
            return Ok(Response::new(
                keyvault_secrets::http::StatusCode::TOO_MANY_REQUESTS,
                headers,
                r#"{"error":{"code":"Throttled","message":"Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"}}"#,
            ));
        }
        self.inner.send(request).await
    }
}
