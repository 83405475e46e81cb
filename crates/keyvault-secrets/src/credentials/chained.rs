use super::{AccessToken, TokenCredential, TokenRequestOptions};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A sequence of credentials that is itself a credential (azure-identity's `ChainedTokenCredential`).
///
/// `get_token` asks each credential in order and returns the first token. A credential that answers
/// [`ErrorKind::CredentialUnavailable`] (not set up here: settings missing, no endpoint, no CLI login) is
/// skipped; any other error stops the chain and is returned, so that a credential that is set up but fails
/// (a wrong client secret, a refused assertion) is not masked by a later one (say, the developer's `az
/// login`). The stopping error keeps its kind ([`ErrorKind::Credential`], [`ErrorKind::ClientAuthentication`],
/// …) and its message names the credential. When every credential is unavailable the error is
/// [`ErrorKind::CredentialUnavailable`] and lists each one's reason.
///
/// The credential that returned a token is remembered: later calls go to it alone (as
/// [`DefaultAzureCredential`](super::DefaultAzureCredential) does in azure-identity), and its errors are
/// returned as they are.
pub struct ChainedTokenCredential {
    /// Who the errors and logs say failed: `ChainedTokenCredential` or `DefaultAzureCredential`.
    label: &'static str,
    pub(crate) chain: Vec<(String, Arc<dyn TokenCredential>)>,
    chosen: Mutex<Option<usize>>,
}

impl fmt::Debug for ChainedTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(self.label)
            .field("chain", &self.names())
            .field("chosen", &self.chosen())
            .finish()
    }
}

/// The type name a credential's `Debug` starts with (`ClientSecretCredential { … }` → `ClientSecretCredential`).
fn debug_name(credential: &dyn TokenCredential) -> String {
    let dbg = format!("{credential:?}");
    let name: String = dbg
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        "credential".to_string()
    } else {
        name
    }
}

impl ChainedTokenCredential {
    /// A chain of `credentials`, tried in order; each is named in errors by its type (the start of its
    /// `Debug`). Fails with [`ErrorKind::InvalidArgument`] when there are none (Python: `ValueError`).
    pub fn new(credentials: Vec<Arc<dyn TokenCredential>>) -> Result<Self> {
        let named = credentials
            .into_iter()
            .map(|c| (debug_name(c.as_ref()), c))
            .collect();
        Self::with_names(named)
    }

    /// A chain of named credentials, tried in order; the names are what errors and logs call them.
    pub fn with_names(credentials: Vec<(String, Arc<dyn TokenCredential>)>) -> Result<Self> {
        if credentials.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "ChainedTokenCredential: at least one credential is required",
            ));
        }
        Ok(Self::labelled("ChainedTokenCredential", credentials))
    }

    /// The chain behind [`DefaultAzureCredential`](super::DefaultAzureCredential) (which may be empty, when
    /// every credential is excluded: then `get_token` says so).
    pub(crate) fn labelled(
        label: &'static str,
        chain: Vec<(String, Arc<dyn TokenCredential>)>,
    ) -> Self {
        ChainedTokenCredential {
            label,
            chain,
            chosen: Mutex::new(None),
        }
    }

    /// The credentials' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.chain.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The name of the credential that returned a token, once one has.
    pub fn chosen_name(&self) -> Option<&str> {
        self.chosen().map(|i| self.chain[i].0.as_str())
    }

    fn chosen(&self) -> Option<usize> {
        self.chosen.lock().ok().and_then(|c| *c)
    }
}

#[async_trait]
impl TokenCredential for ChainedTokenCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        if let Some(i) = self.chosen() {
            return self.chain[i].1.get_token(scopes, options).await;
        }
        let label = self.label;
        let mut unavailable = Vec::new();
        for (i, (name, credential)) in self.chain.iter().enumerate() {
            match credential.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    tracing::info!(credential = %name, "{label} acquired a token");
                    if let Ok(mut c) = self.chosen.lock() {
                        *c = Some(i);
                    }
                    return Ok(token);
                }
                Err(e) if e.kind() == ErrorKind::CredentialUnavailable => {
                    tracing::debug!(credential = %name, reason = %e.message(), "{label}: credential unavailable, trying the next");
                    unavailable.push(format!("- {name}: {}", e.message()));
                }
                Err(e) => {
                    tracing::debug!(credential = %name, error = %e, "{label}: credential failed, the chain stops");
                    let mut message = format!(
                        "{label} failed to retrieve a token: {name} failed to authenticate (a credential that \
                         is set up but fails stops the chain): {}",
                        e.message()
                    );
                    if !unavailable.is_empty() {
                        message.push_str("\nUnavailable credentials tried before it:\n");
                        message.push_str(&unavailable.join("\n"));
                    }
                    return Err(e.with_message(message));
                }
            }
        }
        let reasons = if unavailable.is_empty() {
            "- none: every credential is excluded".to_string()
        } else {
            unavailable.join("\n")
        };
        Err(Error::new(
            ErrorKind::CredentialUnavailable,
            format!(
                "{label} failed to retrieve a token from the included credentials (none is available):\n{reasons}"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::StaticTokenCredential;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails with a fixed kind and message, and counts its calls.
    #[derive(Debug)]
    struct Fails {
        kind: ErrorKind,
        message: &'static str,
        calls: AtomicUsize,
    }

    impl Fails {
        fn new(kind: ErrorKind, message: &'static str) -> Arc<Self> {
            Arc::new(Fails {
                kind,
                message,
                calls: AtomicUsize::new(0),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl TokenCredential for Fails {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions>,
        ) -> Result<AccessToken> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::new(self.kind, self.message))
        }
    }

    fn token() -> Arc<dyn TokenCredential> {
        Arc::new(StaticTokenCredential::from_token("tok"))
    }

    const SCOPE: &[&str] = &["https://vault.azure.net/.default"];

    #[tokio::test]
    async fn unavailable_goes_on_to_the_next_and_the_one_that_worked_is_kept() {
        let first = Fails::new(ErrorKind::CredentialUnavailable, "not set up");
        let c = ChainedTokenCredential::new(vec![first.clone(), token()]).unwrap();
        assert_eq!(c.names(), ["Fails", "StaticTokenCredential"]);
        assert_eq!(c.chosen_name(), None);
        let t = c.get_token(SCOPE, None).await.unwrap();
        assert_eq!(t.token.expose(), "tok");
        assert_eq!(c.chosen_name(), Some("StaticTokenCredential"));
        // The next call goes to the one that worked alone.
        c.get_token(SCOPE, None).await.unwrap();
        assert_eq!(first.calls(), 1);
    }

    #[tokio::test]
    async fn a_failure_stops_the_chain_and_keeps_its_kind() {
        for kind in [
            ErrorKind::Credential,
            ErrorKind::ClientAuthentication,
            ErrorKind::Connection,
        ] {
            let skipped = Fails::new(ErrorKind::CredentialUnavailable, "env missing");
            let failing = Fails::new(kind, "AADSTS7000215: Invalid client secret provided");
            let after = Fails::new(ErrorKind::CredentialUnavailable, "never asked");
            let c = ChainedTokenCredential::with_names(vec![
                ("EnvironmentCredential".into(), skipped.clone()),
                ("ClientSecretCredential".into(), failing.clone()),
                ("AzureCliCredential".into(), after.clone()),
                ("Static".into(), token()),
            ])
            .unwrap();
            let e = c.get_token(SCOPE, None).await.unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(!e.is_credential_unavailable());
            let m = e.message();
            assert!(
                m.starts_with("ChainedTokenCredential failed to retrieve a token: ClientSecretCredential failed")
                    && m.contains("AADSTS7000215: Invalid client secret provided")
                    && m.contains("- EnvironmentCredential: env missing")
                    && !m.contains("AzureCliCredential"),
                "{m}"
            );
            assert_eq!((skipped.calls(), failing.calls(), after.calls()), (1, 1, 0));
            assert_eq!(c.chosen_name(), None, "nothing worked");
            // Nothing is remembered: the next call tries again from the start.
            c.get_token(SCOPE, None).await.unwrap_err();
            assert_eq!(skipped.calls(), 2);
        }
    }

    #[tokio::test]
    async fn all_unavailable_lists_every_reason() {
        let c = ChainedTokenCredential::with_names(vec![
            (
                "EnvironmentCredential".into(),
                Fails::new(ErrorKind::CredentialUnavailable, "no AZURE_CLIENT_ID"),
            ),
            (
                "AzureCliCredential".into(),
                Fails::new(
                    ErrorKind::CredentialUnavailable,
                    "Azure CLI not found on path",
                ),
            ),
        ])
        .unwrap();
        let e = c.get_token(SCOPE, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CredentialUnavailable);
        assert!(e.is_client_authentication());
        assert!(
            e.message().starts_with(
                "ChainedTokenCredential failed to retrieve a token from the included credentials"
            ) && e
                .message()
                .contains("\n- EnvironmentCredential: no AZURE_CLIENT_ID\n- AzureCliCredential: Azure CLI not found on path"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_chain_is_refused() {
        assert_eq!(
            ChainedTokenCredential::new(Vec::new()).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let c = ChainedTokenCredential::new(vec![token()]).unwrap();
        let dbg = format!("{c:?}");
        assert!(
            dbg.starts_with("ChainedTokenCredential") && dbg.contains("StaticTokenCredential"),
            "{dbg}"
        );
        assert!(!dbg.contains("tok\""), "{dbg}");
    }
}
