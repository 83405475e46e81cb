use super::{
    AccessToken, ClientCertificateCredential, ClientCertificateCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, TokenCredential, TokenRequestOptions,
};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use std::fmt;

/// Options of [`EnvironmentCredential`]: those of the underlying [`ClientSecretCredential`] or
/// [`ClientCertificateCredential`] (`authority_host` is overridden by `AZURE_AUTHORITY_HOST` when that is set).
pub type EnvironmentCredentialOptions = ClientSecretCredentialOptions;

/// A service principal from the environment, as azure-identity reads it: `AZURE_TENANT_ID`,
/// `AZURE_CLIENT_ID` and either `AZURE_CLIENT_SECRET` (a [`ClientSecretCredential`]) or, when there is no
/// secret, `AZURE_CLIENT_CERTIFICATE_PATH` (a [`ClientCertificateCredential`]; with
/// `AZURE_CLIENT_CERTIFICATE_PASSWORD`, refused as an encrypted key is, and
/// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` = `true`/`1`); optionally `AZURE_AUTHORITY_HOST`. When they are
/// incomplete, or the certificate file is not usable, the credential still builds, and `get_token` says why:
/// incomplete variables are [`ErrorKind::CredentialUnavailable`] (a chain goes on), while variables that are
/// all there but unusable (a bad tenant or authority, a certificate file missing or unreadable) are
/// [`ErrorKind::Credential`], as is a failed authentication (a wrong secret): the environment asked for this
/// service principal, so a chain stops and says what is wrong.
pub struct EnvironmentCredential {
    inner: std::result::Result<Box<dyn TokenCredential>, (ErrorKind, String)>,
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Ok(c) => f.debug_tuple("EnvironmentCredential").field(c).finish(),
            Err((_, e)) => f.debug_tuple("EnvironmentCredential").field(e).finish(),
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
        let certificate = get("AZURE_CLIENT_CERTIFICATE_PATH");
        let unusable = |e: Error| {
            (
                ErrorKind::Credential,
                format!(
                    "EnvironmentCredential: the environment is not usable: {}",
                    e.message()
                ),
            )
        };
        let mut options = options.unwrap_or_default();
        if let Some(a) = get("AZURE_AUTHORITY_HOST") {
            options.authority_host = a;
        }
        let inner = match (tenant, client, secret, certificate) {
            (Some(t), Some(c), Some(s), _) => ClientSecretCredential::new(t, c, s, Some(options))
                .map(|c| Box::new(c) as Box<dyn TokenCredential>)
                .map_err(unusable),
            (Some(t), Some(c), None, Some(path)) => {
                let send_chain = get("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
                    .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
                let options = ClientCertificateCredentialOptions {
                    common: options,
                    password: get("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Into::into),
                    send_certificate_chain: send_chain,
                };
                ClientCertificateCredential::new(t, c, path, Some(options))
                    .map(|c| Box::new(c) as Box<dyn TokenCredential>)
                    .map_err(unusable)
            }
            (t, c, s, cert) => {
                let mut missing: Vec<&str> = [
                    ("AZURE_TENANT_ID", t.is_none()),
                    ("AZURE_CLIENT_ID", c.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| n)
                .collect();
                if s.is_none() && cert.is_none() {
                    missing.push("AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH");
                }
                Err((
                    ErrorKind::CredentialUnavailable,
                    format!(
                        "EnvironmentCredential authentication unavailable: environment variables are not fully \
                         configured (missing {})",
                        missing.join(", ")
                    ),
                ))
            }
        };
        EnvironmentCredential { inner }
    }

    /// Whether the environment had every variable (and a usable certificate file, if that was chosen).
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
            Err((kind, e)) => Err(Error::new(*kind, e.clone())),
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
        assert_eq!(e.kind(), ErrorKind::CredentialUnavailable);
        assert!(
            e.message()
                .contains("AZURE_TENANT_ID, AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH"),
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

    #[tokio::test]
    async fn a_certificate_when_there_is_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        let env = |secret: Option<&str>| {
            let path = path.display().to_string();
            let secret = secret.map(str::to_string);
            move |n: &str| match n {
                "AZURE_TENANT_ID" => Some("t".into()),
                "AZURE_CLIENT_ID" => Some("c".into()),
                "AZURE_CLIENT_SECRET" => secret.clone(),
                "AZURE_CLIENT_CERTIFICATE_PATH" => Some(path.clone()),
                _ => None,
            }
        };
        // The file is missing: not usable, and the error says so.
        let c = EnvironmentCredential::with_env(env(None), None);
        assert!(!c.is_configured());
        let e = c.get_token(&["s/.default"], None).await.unwrap_err();
        assert!(e.message().contains("cert.pem: not found"), "{e}");
        // Named but missing: set up wrongly, not absent, so a chain stops here.
        assert_eq!(e.kind(), ErrorKind::Credential);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let c = EnvironmentCredential::with_env(env(None), None);
        assert!(
            format!("{c:?}").contains("ClientCertificateCredential"),
            "{c:?}"
        );
        // A secret wins, as in azure-identity.
        let c = EnvironmentCredential::with_env(env(Some("s")), None);
        assert!(format!("{c:?}").contains("ClientSecretCredential"), "{c:?}");
    }
}
