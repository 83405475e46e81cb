use super::client_secret::{ClientAuth, TokenEndpoint};
use super::{
    AccessToken, ClientSecretCredentialOptions, TokenCredential, TokenRequestOptions, one_scope,
};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use keyvault_types::SecretString;
use std::fmt;
use std::path::PathBuf;

/// The most a federated token file may hold (a Kubernetes service account token is about 1 KiB).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Options of [`WorkloadIdentityCredential`]. `tenant_id`, `client_id` and `token_file_path` default to
/// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_FEDERATED_TOKEN_FILE`, and `common.authority_host` to
/// `AZURE_AUTHORITY_HOST` when that is set (what the AKS workload identity webhook injects).
#[derive(Clone, Debug, Default)]
pub struct WorkloadIdentityCredentialOptions {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// The file holding the federated token (a projected service account token); read at each token
    /// request, since the kubelet rotates it.
    pub token_file_path: Option<PathBuf>,
    /// Authority, allowed tenants, CAs, retries… of the token request.
    pub common: ClientSecretCredentialOptions,
}

/// An AKS workload identity (azure-identity's `WorkloadIdentityCredential`): the federated token in
/// `token_file_path` (a Kubernetes service account token) is exchanged for an access token, posted as the
/// client assertion of a client-credentials request. Entra ID accepts it when the app has a federated
/// credential for the token's issuer and subject; `keyvault-server` when a `[[clients]]` entry lists it in
/// `federated`.
pub struct WorkloadIdentityCredential {
    endpoint: TokenEndpoint,
    token_file: PathBuf,
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("tenant_id", &self.endpoint.tenant_id)
            .field("client_id", &self.endpoint.client_id)
            .field("authority", &self.endpoint.authority)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl WorkloadIdentityCredential {
    /// Options first, then the process environment. Fails (without I/O) when the tenant, client id or
    /// token file is given nowhere (the error names the variables), or on a bad tenant or authority.
    pub fn new(options: Option<WorkloadIdentityCredentialOptions>) -> Result<Self> {
        Self::with_env(|name| std::env::var(name).ok(), options)
    }

    /// [`new`](Self::new) reading the variables through `lookup`.
    pub fn with_env(
        lookup: impl Fn(&str) -> Option<String>,
        options: Option<WorkloadIdentityCredentialOptions>,
    ) -> Result<Self> {
        let get = |n: &str| lookup(n).filter(|v| !v.is_empty());
        let mut options = options.unwrap_or_default();
        let tenant = options.tenant_id.take().or_else(|| get("AZURE_TENANT_ID"));
        let client = options.client_id.take().or_else(|| get("AZURE_CLIENT_ID"));
        let file = (options.token_file_path.take())
            .or_else(|| get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from));
        let (Some(tenant), Some(client), Some(file)) =
            (tenant.clone(), client.clone(), file.clone())
        else {
            let missing: Vec<&str> = [
                ("tenant_id (AZURE_TENANT_ID)", tenant.is_none()),
                ("client_id (AZURE_CLIENT_ID)", client.is_none()),
                (
                    "token_file_path (AZURE_FEDERATED_TOKEN_FILE)",
                    file.is_none(),
                ),
            ]
            .into_iter()
            .filter(|(_, m)| *m)
            .map(|(n, _)| n)
            .collect();
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "WorkloadIdentityCredential authentication unavailable: missing {}",
                    missing.join(", ")
                ),
            ));
        };
        if let Some(a) = get("AZURE_AUTHORITY_HOST") {
            options.common.authority_host = a;
        }
        Ok(WorkloadIdentityCredential {
            endpoint: TokenEndpoint::new(tenant, client, &options.common)?,
            token_file: file,
        })
    }

    /// The federated token, read now (it rotates).
    async fn read_token(&self, who: &str) -> Result<SecretString> {
        use tokio::io::AsyncReadExt;
        let path = self.token_file.display();
        let fail = |what: String| {
            Error::new(
                ErrorKind::Credential,
                format!("{who}: federated token file {path}: {what}"),
            )
        };
        let file = tokio::fs::File::open(&self.token_file).await.map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "not found".into()
            } else {
                e.to_string()
            })
        })?;
        let mut text = String::new();
        file.take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .await
            .map_err(|e| fail(format!("cannot read it ({})", e.kind())))?;
        let text = SecretString::new(text);
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(fail("larger than 64 KiB".into()));
        }
        let token = text.expose().trim();
        if token.is_empty() {
            return Err(fail("empty".into()));
        }
        Ok(SecretString::new(token))
    }
}

#[async_trait]
impl TokenCredential for WorkloadIdentityCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        const WHO: &str = "WorkloadIdentityCredential";
        let scope = one_scope(WHO, scopes)?;
        let options = options.unwrap_or_default();
        let url = self.endpoint.token_url(WHO, &options)?;
        let assertion = self.read_token(WHO).await?;
        self.endpoint
            .request(WHO, url, scope, &options, ClientAuth::Assertion(&assertion))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn environment_and_file_errors() {
        let e = WorkloadIdentityCredential::with_env(
            |n| (n == "AZURE_CLIENT_ID").then(|| "c".to_string()),
            None,
        )
        .unwrap_err();
        assert!(
            e.message().contains("AZURE_TENANT_ID")
                && e.message().contains("AZURE_FEDERATED_TOKEN_FILE")
                && !e.message().contains("AZURE_CLIENT_ID"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let c = WorkloadIdentityCredential::with_env(
            |n| match n {
                "AZURE_TENANT_ID" => Some("t".into()),
                "AZURE_CLIENT_ID" => Some("c".into()),
                "AZURE_FEDERATED_TOKEN_FILE" => Some(file.display().to_string()),
                "AZURE_AUTHORITY_HOST" => Some("https://login.example.com".into()),
                _ => None,
            },
            None,
        )
        .unwrap();
        assert!(format!("{c:?}").contains("https://login.example.com"));
        let scope = ["https://vault.azure.net/.default"];
        let e = c.get_token(&scope, None).await.unwrap_err();
        assert!(e.message().contains("not found"), "{e}");
        std::fs::write(&file, "  \n").unwrap();
        let e = c.get_token(&scope, None).await.unwrap_err();
        assert!(e.message().contains("empty"), "{e}");
        std::fs::write(&file, "eyJhbGciOi.secret-part.sig\n").unwrap();
        assert_eq!(
            c.read_token("t").await.unwrap().expose(),
            "eyJhbGciOi.secret-part.sig"
        );
        assert!(!format!("{c:?}").contains("secret-part"));
    }
}
