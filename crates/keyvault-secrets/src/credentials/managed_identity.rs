use super::client_secret::{error_detail, parse_token_response};
use super::{AccessToken, TokenCredential, TokenRequestOptions, one_scope, scope_to_resource};
use crate::client::{make_transport, user_agent};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{HeaderValue, Method, Request, Transport, TransportConfig};
use crate::pipeline::Pipeline;
use crate::pipeline::retry::RetryOptions;
use async_trait::async_trait;
use keyvault_types::SecretString;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The Azure Instance Metadata Service's token endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// Options of [`ManagedIdentityCredential`].
#[derive(Clone, Debug)]
pub struct ManagedIdentityCredentialOptions {
    /// The client id of a user-assigned identity (default: the system-assigned identity).
    pub client_id: Option<String>,
    /// Use this IMDS-style endpoint instead of [`IMDS_ENDPOINT`] (when `IDENTITY_ENDPOINT` is not set).
    pub imds_endpoint: Option<String>,
    /// Connect timeout (default 2 s: IMDS answers fast or not at all).
    pub connect_timeout: Option<Duration>,
    /// Timeout of one request (default 30 s).
    pub timeout: Option<Duration>,
    /// Retries of the token request.
    pub retry: RetryOptions,
    /// Send through this transport instead of the built-in one.
    pub transport: Option<Arc<dyn Transport>>,
}

impl Default for ManagedIdentityCredentialOptions {
    fn default() -> Self {
        ManagedIdentityCredentialOptions {
            client_id: None,
            imds_endpoint: None,
            connect_timeout: Some(Duration::from_secs(2)),
            timeout: Some(Duration::from_secs(30)),
            retry: RetryOptions::default(),
            transport: None,
        }
    }
}

enum Source {
    /// App Service / Functions / Container Apps: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`.
    AppService {
        endpoint: String,
        header: SecretString,
    },
    /// IMDS (VMs, scale sets, AKS).
    Imds { endpoint: String },
}

/// A managed identity's token, from App Service's `IDENTITY_ENDPOINT` (with `IDENTITY_HEADER`) when
/// those are set, else from IMDS.
///
/// Errors, as azure-identity's: [`ErrorKind::CredentialUnavailable`] when no endpoint answers (a connection
/// error or timeout: not on Azure), when IMDS answers 400 (no identity is assigned to this resource, or not
/// the requested user-assigned one), when IMDS answers 403 saying the address is unreachable (what Docker
/// Desktop's proxy says), or when what answers at the IMDS address does not speak JSON (it is not IMDS);
/// [`ErrorKind::Credential`] for any other error answer (the identity is there and the token request failed).
pub struct ManagedIdentityCredential {
    source: Source,
    client_id: Option<String>,
    pipeline: Pipeline,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, endpoint) = match &self.source {
            Source::AppService { endpoint, .. } => ("app-service", endpoint),
            Source::Imds { endpoint } => ("imds", endpoint),
        };
        f.debug_struct("ManagedIdentityCredential")
            .field("source", &kind)
            .field("endpoint", endpoint)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl ManagedIdentityCredential {
    /// Read `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` from the process environment.
    pub fn new(options: Option<ManagedIdentityCredentialOptions>) -> Result<Self> {
        Self::with_env(|n| std::env::var(n).ok(), options)
    }

    /// Read the variables through `lookup`.
    pub fn with_env(
        lookup: impl Fn(&str) -> Option<String>,
        options: Option<ManagedIdentityCredentialOptions>,
    ) -> Result<Self> {
        let options = options.unwrap_or_default();
        let get = |n: &str| lookup(n).filter(|v| !v.is_empty());
        let source = match (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => Source::AppService {
                endpoint,
                header: SecretString::new(header),
            },
            _ => Source::Imds {
                endpoint: options
                    .imds_endpoint
                    .clone()
                    .unwrap_or_else(|| IMDS_ENDPOINT.to_string()),
            },
        };
        let transport = make_transport(
            options.transport.clone(),
            TransportConfig {
                extra_ca_pem: Vec::new(),
                trust_system_roots: true,
                connect_timeout: options.connect_timeout,
                timeout: options.timeout,
                user_agent: user_agent(None),
                http2: false,
                max_body_bytes: crate::http::TOKEN_RESPONSE_LIMIT,
                max_body_setting: crate::http::TOKEN_RESPONSE_LIMIT_SETTING,
            },
        )?;
        Ok(ManagedIdentityCredential {
            source,
            client_id: options.client_id,
            pipeline: Pipeline::for_tokens(transport, options.retry),
        })
    }
}

#[async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        const WHO: &str = "ManagedIdentityCredential";
        let resource = scope_to_resource(one_scope(WHO, scopes)?);
        let (endpoint, api_version, header) = match &self.source {
            Source::AppService { endpoint, header } => (
                endpoint.as_str(),
                "2019-08-01",
                ("x-identity-header", header.expose()),
            ),
            Source::Imds { endpoint } => (endpoint.as_str(), "2018-02-01", ("metadata", "true")),
        };
        let mut url = reqwest::Url::parse(endpoint).map_err(|e| {
            Error::with_source(
                ErrorKind::Credential,
                format!("{WHO}: invalid endpoint '{endpoint}'"),
                e,
            )
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", api_version)
                .append_pair("resource", resource);
            if let Some(id) = &self.client_id {
                q.append_pair("client_id", id);
            }
        }
        let mut value = HeaderValue::from_str(header.1).map_err(|_| {
            Error::new(
                ErrorKind::Credential,
                format!("{WHO}: IDENTITY_HEADER is not a valid header value"),
            )
        })?;
        value.set_sensitive(true);
        let mut request = Request::new(Method::GET, url.to_string());
        request.headers.insert(header.0, value);
        let response = self.pipeline.send(request).await.map_err(|e| {
            if e.kind() == ErrorKind::Connection {
                Error::with_source(
                    ErrorKind::CredentialUnavailable,
                    format!(
                        "{WHO} authentication unavailable: no managed identity endpoint responded ({})",
                        e.message()
                    ),
                    e,
                )
            } else {
                Error::with_source(
                    ErrorKind::Credential,
                    format!("{WHO}: the token request failed: {}", e.message()),
                    e,
                )
            }
        })?;
        if matches!(self.source, Source::Imds { .. })
            && let Some(reason) = imds_unavailable(&response, self.client_id.is_some())
        {
            return Err(Error::new(
                ErrorKind::CredentialUnavailable,
                format!("{WHO} authentication unavailable: {reason}"),
            ));
        }
        // App Service's header is a secret of the identity: an error that quotes it does not show it.
        let secrets = match &self.source {
            Source::AppService { header, .. } => vec![header.expose()],
            Source::Imds { .. } => Vec::new(),
        };
        parse_token_response(WHO, &response, &secrets)
    }
}

/// Why an IMDS answer means that the managed identity is not available here, if it does.
fn imds_unavailable(response: &crate::http::Response, user_assigned: bool) -> Option<String> {
    let status = response.status.as_u16();
    if status == 400 {
        // IMDS's answer when the resource has no managed identity, or not the one asked for.
        let what = if user_assigned {
            "the requested identity has not been assigned to this resource"
        } else {
            "no identity has been assigned to this resource"
        };
        return Some(format!(
            "{what} (IMDS answered 400: {})",
            error_detail(response, &[])
        ));
    }
    if status == 403 && response.text().to_ascii_lowercase().contains("unreachable") {
        // A proxy in front of the address (Docker Desktop's) that cannot reach IMDS.
        return Some(format!(
            "the IMDS endpoint is unreachable (403: {})",
            error_detail(response, &[])
        ));
    }
    if serde_json::from_slice::<serde_json::Value>(&response.body).is_err() {
        return Some(format!(
            "what answered at the IMDS endpoint is not IMDS (status {status}, not JSON)"
        ));
    }
    None
}
