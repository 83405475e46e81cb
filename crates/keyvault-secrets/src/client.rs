//! The async [`SecretClient`] and its [`SecretClientOptions`].

use crate::credentials::TokenCredential;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{
    ANSWER_LIMIT, HeaderMap, HeaderName, HeaderValue, Method, Request, ReqwestTransport, Response,
    StatusCode, Transport, TransportConfig,
};
use crate::models::{
    ContentType, DeletedSecret, KeyVaultSecret, KeyVaultSecretIdentifier, SecretProperties,
    SetSecretOptions, UpdateSecretPropertiesOptions,
};
use crate::pager::{FetchPage, NextPage, Page, PageFuture, Pager};
use crate::pipeline::Pipeline;
use crate::pipeline::challenge::ChallengeAuth;
use crate::pipeline::retry::RetryOptions;
use crate::poller::Poller;
use base64::Engine;
use keyvault_types::models::{
    BackupSecretResult, DeletedSecretBundle, DeletedSecretListResult, SecretBundle,
    SecretListResult, SecretRestoreParameters, SecretSetParameters, SecretUpdateParameters,
};
use keyvault_types::{ApiVersion, SecretString, rules};
use reqwest::Url;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Options of [`SecretClient::new`]. Start from `Default` and change what you need:
///
/// ```
/// # use keyvault_secrets::{SecretClientOptions, ApiVersion};
/// let options = SecretClientOptions {
///     api_version: ApiVersion::V7_6,
///     verify_challenge_resource: false,
///     ..Default::default()
/// };
/// ```
#[derive(Clone, Debug)]
pub struct SecretClientOptions {
    /// The api-version sent with every request. Default: the newest, [`ApiVersion::LATEST`].
    pub api_version: ApiVersion,
    /// Retries (default: azure-core's: 3 retries, the first at once, then 1.6 s, 3.2 s, … (±20 % jitter), at
    /// most 120 s apart; see [`RetryOptions`]).
    pub retry: RetryOptions,
    /// Check that the challenge's resource is a parent domain of the vault (default `true`).
    /// Turn off for vaults on `localhost`/IP addresses.
    pub verify_challenge_resource: bool,
    /// Extra trusted CA certificates, PEM (each entry may hold several certificates).
    pub additional_ca_certificates: Vec<Vec<u8>>,
    /// Trust the operating system's root certificates (default `true`).
    pub trust_system_roots: bool,
    /// TCP + TLS connect timeout (default 30 s).
    pub connect_timeout: Option<Duration>,
    /// Timeout of one try, from sending to the end of the body (default 120 s).
    pub request_timeout: Option<Duration>,
    /// Appended to the `User-Agent` header.
    pub user_agent_suffix: Option<String>,
    /// Also log requests and responses in detail (headers and bodies, redacted) at `DEBUG` on target
    /// `keyvault_secrets::http` (Python: `logging_enable`). Default `false`: then only the INFO lines (method,
    /// redacted URL, status, time taken, allow-listed headers) that every request gets.
    pub logging_enable: bool,
    /// Default delay between polls of a [`Poller`] (default 2 s). Zero is refused by [`SecretClient::new`]
    /// with [`ErrorKind::InvalidArgument`] (it would poll without pause).
    pub polling_interval: Duration,
    /// Send requests through this transport instead of the built-in one (tests, proxies, …).
    pub transport: Option<Arc<dyn Transport>>,
    /// Offer HTTP/2 (ALPN `h2`) when connecting. Default `false`: HTTP/1.1 keep-alive, like the Azure SDKs'
    /// default transports; for one request at a time it costs the client (and the server) about a third of
    /// what HTTP/2 does (`BENCHMARKS.md`). Turn it on to multiplex many concurrent requests on one connection.
    pub http2: bool,
    /// The most bytes the built-in transport reads of one response body (default 64 MiB: the largest answer
    /// of Key Vault, a backup of a secret with 500 versions, is under 33 MiB; every other operation asks for
    /// at most [`ANSWER_LIMIT`](crate::http::ANSWER_LIMIT), 4 MiB). A longer answer is not read
    /// further and fails with [`ErrorKind::Data`], so a broken or hostile server cannot fill the client's
    /// memory. Zero is refused by [`SecretClient::new`]. A [`SecretClientOptions::transport`] of your own sets
    /// its own limit. (Credentials' token requests are limited to 1 MiB.)
    pub max_response_body_size: usize,
}

/// [`SecretClientOptions::max_response_body_size`]'s default: 64 MiB.
const DEFAULT_MAX_RESPONSE_BODY_SIZE: usize = 64 * 1024 * 1024;

impl Default for SecretClientOptions {
    fn default() -> Self {
        SecretClientOptions {
            api_version: ApiVersion::LATEST,
            retry: RetryOptions::default(),
            verify_challenge_resource: true,
            additional_ca_certificates: Vec::new(),
            trust_system_roots: true,
            connect_timeout: Some(Duration::from_secs(30)),
            request_timeout: Some(Duration::from_secs(120)),
            user_agent_suffix: None,
            logging_enable: false,
            polling_interval: Duration::from_secs(2),
            transport: None,
            http2: false,
            max_response_body_size: DEFAULT_MAX_RESPONSE_BODY_SIZE,
        }
    }
}

impl SecretClientOptions {
    /// The built-in transport for these options (TLS roots, extra CAs, timeouts, user agent), e.g. to
    /// wrap it in a [`Transport`] of your own and pass that back in [`SecretClientOptions::transport`].
    pub fn build_transport(&self) -> Result<Arc<dyn Transport>> {
        self.check_body_limit()?;
        make_transport(None, self.transport_config())
    }

    fn check_body_limit(&self) -> Result<()> {
        if self.max_response_body_size == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "max_response_body_size must be more than zero (no answer could be read)",
            ));
        }
        Ok(())
    }

    fn transport_config(&self) -> TransportConfig {
        TransportConfig {
            extra_ca_pem: self.additional_ca_certificates.clone(),
            trust_system_roots: self.trust_system_roots,
            connect_timeout: self.connect_timeout,
            timeout: self.request_timeout,
            user_agent: user_agent(self.user_agent_suffix.as_deref()),
            http2: self.http2,
            max_body_bytes: self.max_response_body_size,
            max_body_setting: "SecretClientOptions::max_response_body_size",
        }
    }
}

/// Options of one call, Python's per-call keyword arguments (`headers=…`, `timeout=…`, `read_timeout=…`,
/// `retry_total=…`, `logging_enable=…`). Apply them with [`SecretClient::with_call_options`], which returns a
/// view of the client (the same connections and token cache) whose calls, and the pages and polls of the pagers
/// and pollers it returns, all use them:
///
/// ```no_run
/// # async fn demo(client: keyvault_secrets::SecretClient) -> keyvault_secrets::Result<()> {
/// use keyvault_secrets::{CallOptions, RetryOptions};
/// use keyvault_secrets::http::{HeaderName, HeaderValue};
/// use std::time::Duration;
///
/// let options = CallOptions::default()
///     .header(HeaderName::from_static("x-ms-client-request-id"), HeaderValue::from_static("0f0e6c1c-2a2b-4c4d-8e8f-9a9b0c0d1e1f"))
///     .timeout(Duration::from_secs(10))
///     .retry(RetryOptions::none());
/// let secret = client.with_call_options(options)?.get_secret("db-password", None).await?;
/// # Ok(()) }
/// ```
///
/// Headers replace the pipeline's own of the same name (so `x-ms-client-request-id` can be set); a few cannot
/// be set and are refused with [`ErrorKind::InvalidArgument`]: `Authorization` (the credential authorizes every
/// request: a header would either be overwritten or leak past the challenge, so neither happens silently) and
/// the connection's own `Host`, `Content-Length`, `Transfer-Encoding`, `Connection` and `Proxy-Authorization`.
/// Header values are logged `REDACTED` unless the header is on the logging allow-list.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Extra headers sent with every request of the call (Python: `headers=`).
    pub headers: HeaderMap,
    /// The longest the call may take, every try, token request and retry delay included (Python: `timeout=`,
    /// azure-core's absolute retry timeout). Fails with an [`ErrorKind::Connection`] error when it runs out.
    /// For a pager or poller it bounds each page or poll request.
    pub timeout: Option<Duration>,
    /// The longest one try may take, from sending to the end of the body; replaces
    /// [`SecretClientOptions::request_timeout`] (Python: `read_timeout=`). A try that runs out is a connection
    /// error, retried like one. (There is no per-call connect timeout: connections are pooled, and the
    /// client's [`SecretClientOptions::connect_timeout`] applies; `timeout` bounds everything.)
    pub request_timeout: Option<Duration>,
    /// Retries of the call, instead of the client's (Python: `retry_total=`, `retry_backoff_factor=`, …).
    pub retry: Option<RetryOptions>,
    /// Detailed (DEBUG) logging on or off for the call (Python: `logging_enable=`).
    pub logging_enable: Option<bool>,
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field(
                "headers",
                &crate::pipeline::logging::redacted_headers(&self.headers),
            )
            .field("timeout", &self.timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("logging_enable", &self.logging_enable)
            .finish()
    }
}

/// Headers a caller cannot set: the credential's, and the HTTP connection's own.
const REFUSED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

impl CallOptions {
    /// Add a header (another value of the same name is added too, as `HeaderMap::append` does).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
    /// Set [`CallOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Set [`CallOptions::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
    /// Set [`CallOptions::retry`].
    pub fn retry(mut self, retry: RetryOptions) -> Self {
        self.retry = Some(retry);
        self
    }
    /// Set [`CallOptions::logging_enable`].
    pub fn logging_enable(mut self, enabled: bool) -> Self {
        self.logging_enable = Some(enabled);
        self
    }

    fn check(&self) -> Result<()> {
        for name in self.headers.keys() {
            if REFUSED_HEADERS.contains(&name.as_str()) {
                let why = if name.as_str() == "authorization" {
                    "the client's credential authorizes every request"
                } else {
                    "the HTTP connection sets it"
                };
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("the header '{name}' cannot be set per call: {why}"),
                ));
            }
        }
        for (what, t) in [
            ("timeout", self.timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if t == Some(Duration::ZERO) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("{what} must be longer than zero"),
                ));
            }
        }
        Ok(())
    }

    /// `pipeline` with these options on top.
    fn apply(self, mut pipeline: Pipeline) -> Pipeline {
        if !self.headers.is_empty() {
            let mut headers = (*pipeline.headers).clone();
            for name in self.headers.keys() {
                headers.remove(name);
            }
            for (name, value) in self.headers.iter() {
                headers.append(name, value.clone());
            }
            pipeline.headers = Arc::new(headers);
        }
        if self.timeout.is_some() {
            pipeline.timeout = self.timeout;
        }
        if self.request_timeout.is_some() {
            pipeline.try_timeout = self.request_timeout;
        }
        if let Some(retry) = self.retry {
            pipeline.retry = retry;
        }
        if let Some(enabled) = self.logging_enable {
            pipeline.logging = enabled;
        }
        pipeline
    }
}

pub(crate) fn user_agent(suffix: Option<&str>) -> String {
    let base = format!(
        "azsdk-rust-keyvault-secrets/{} ({}; {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    match suffix {
        Some(s) if !s.is_empty() => format!("{base} {s}"),
        _ => base,
    }
}

/// Build the built-in transport, or take the given one.
pub(crate) fn make_transport(
    given: Option<Arc<dyn Transport>>,
    config: TransportConfig,
) -> Result<Arc<dyn Transport>> {
    match given {
        Some(t) => Ok(t),
        None => Ok(Arc::new(ReqwestTransport::new(&config)?)),
    }
}

/// Check a vault URL and reduce it to `https://host[:port]` and its path, if any, without a trailing `/` (a
/// vault behind a gateway that routes by path, `https://gateway/keyvault`: requests go under that path, as the
/// Python SDK sends them).
fn parse_vault_url(vault_url: &str) -> Result<Url> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("invalid vault URL '{vault_url}': {why}"),
        )
    };
    let url = Url::parse(vault_url.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("the scheme must be https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("missing host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not allowed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    let mut vault =
        Url::parse(&url.origin().ascii_serialization()).map_err(|e| bad(&e.to_string()))?;
    vault.set_path(url.path().trim_end_matches('/'));
    Ok(vault)
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if rules::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "invalid secret name '{name}': names are 1-127 characters of 0-9, a-z, A-Z and '-'"
            ),
        ))
    }
}

/// A version id, or `""`: the latest version, as in the Python SDK (`version or ""`).
fn check_version(version: &str) -> Result<()> {
    if version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("invalid secret version '{version}'"),
        ))
    }
}

fn check_page_size(max_page_size: Option<u32>) -> Result<()> {
    match max_page_size {
        Some(n) if !(rules::MIN_PAGE_SIZE..=rules::MAX_PAGE_SIZE).contains(&n) => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "max_page_size must be between {} and {}, got {n}",
                rules::MIN_PAGE_SIZE,
                rules::MAX_PAGE_SIZE
            ),
        )),
        _ => Ok(()),
    }
}

/// base64url, padding optional on input and absent on output (as the service and SDKs do).
fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// The state shared by a client, its clones, its pagers and its pollers.
pub(crate) struct ClientInner {
    vault: Url,
    api_version: ApiVersion,
    pipeline: Pipeline,
    polling_interval: Duration,
}

impl ClientInner {
    /// The vault URL's path (`/keyvault` for `https://gateway/keyvault`), `""` for a vault at the root: every
    /// request's path starts with it.
    fn prefix(&self) -> &str {
        self.vault.path().trim_end_matches('/')
    }

    /// `{vault}{path}?api-version=…` plus extra query pairs.
    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut url = self.vault.clone();
        url.set_path(&format!("{}{path}", self.prefix()));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", self.api_version.as_str());
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url.into()
    }

    pub(crate) fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.vault.origin()
    }

    /// `https://host[:port]`, and the path the client was given, if any.
    pub(crate) fn vault_url(&self) -> &str {
        self.vault.as_str().trim_end_matches('/')
    }

    /// Whether `vault_url` names this client's vault.
    pub(crate) fn same_vault(&self, vault_url: &str) -> bool {
        parse_vault_url(vault_url).is_ok_and(|u| self.same_origin(&u))
    }

    pub(crate) fn polling_interval(&self) -> Duration {
        self.polling_interval
    }

    /// Send and turn an error status into an [`Error`]. The answer is read up to [`ANSWER_LIMIT`] unless the
    /// request says otherwise (a backup's).
    async fn call(&self, mut request: Request) -> Result<Response> {
        request.max_response_bytes.get_or_insert(ANSWER_LIMIT);
        self.pipeline.send(request).await?.error_for_status()
    }

    async fn call_json<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        self.call(request).await?.json()
    }

    /// One poll of a long-running operation: 200/403 = done (`true`), 404 = not yet (`false`), else an
    /// error (as Python's poller: a 429 or 503 the retries gave back fails the wait, with the service's
    /// answer, rather than polling on without saying why). The response comes back for the poller to read
    /// (the service's answer, or the 404's error).
    pub(crate) async fn operation_done(&self, path: &str) -> Result<(bool, Response)> {
        let response = self
            .pipeline
            .send(
                Request::new(Method::GET, self.url(path, &[]))
                    .with_max_response_bytes(ANSWER_LIMIT),
            )
            .await?;
        match response.status {
            s if s.is_success() || s == StatusCode::FORBIDDEN => Ok((true, response)),
            StatusCode::NOT_FOUND => Ok((false, response)),
            _ => Err(response.to_error()),
        }
    }

    /// The URL of a next page: the path and query of `next.link` on this vault, with our api-version. The link
    /// must name the listing's own `path` (a continuation token of another listing, a secret's id or any other
    /// text is refused: fetched, it could answer with a secret's value); its scheme and host are not used.
    fn next_page_url(&self, next: &NextPage, path: &str) -> Result<String> {
        let refused = || {
            if next.from_caller {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the continuation token is not one of this listing's (GET {path}): resume a listing \
                         with a Page::continuation_token of the same listing"
                    ),
                )
            } else {
                Error::new(
                    ErrorKind::Data,
                    format!(
                        "the service's nextLink names another path than this listing's (GET {path}); the \
                         listing stops here"
                    ),
                )
            }
        };
        let next_link = next.link.as_str();
        let link = Url::parse(next_link)
            .or_else(|_| self.vault.join(next_link))
            .map_err(|_| refused())?;
        // What is sent is the link's path as the URL parser normalised it (dot segments resolved), so that is
        // what is compared. Key Vault's paths (and secret names) are case-insensitive; a trailing `/` is kept
        // by some proxies. Under a vault URL with a path, the link may carry it or not (a gateway that passes
        // the vault's answers on untouched: the usual case, as ids must keep their Key Vault form to be read):
        // either way the next page is asked for under it. That path is matched exactly (a gateway may route by it
        // case-sensitively) and is sent as the client was given it.
        let prefix = self.prefix();
        let rest = match link.path().strip_prefix(prefix) {
            Some(rest) if !prefix.is_empty() && rest.starts_with('/') => rest,
            _ => link.path(),
        };
        let rest_path = rest.strip_suffix('/').unwrap_or(rest);
        if !rest_path.eq_ignore_ascii_case(path) {
            return Err(refused());
        }
        let mut url = self.vault.clone();
        url.set_path(&format!("{prefix}{rest}"));
        // Keep the link's query verbatim (the skip token is opaque), replacing only the api-version.
        let mut query = format!("api-version={}", self.api_version.as_str());
        for part in link.query().unwrap_or("").split('&') {
            let name = part.split('=').next().unwrap_or("");
            if part.is_empty()
                || name == "api-version"
                || name == "api%2Dversion"
                || name == "api%2dversion"
            {
                continue;
            }
            query.push('&');
            query.push_str(part);
        }
        url.set_query(Some(&query));
        Ok(url.into())
    }
}

/// A client for the secrets of one vault (Python: `azure.keyvault.secrets.aio.SecretClient`).
///
/// Cheap to clone (clones share connections, the token cache and the retry settings).
///
/// ```no_run
/// # async fn demo() -> keyvault_secrets::Result<()> {
/// use keyvault_secrets::{SecretClient, credentials::DefaultAzureCredential};
/// use std::sync::Arc;
///
/// let credential = Arc::new(DefaultAzureCredential::new()?);
/// let client = SecretClient::new("https://my-vault.vault.azure.net/", credential, None)?;
/// let secret = client.set_secret("db-password", "s3cr3t", None).await?;
/// println!("{} {:?}", secret.name, secret.properties.version);
/// let secret = client.get_secret("db-password", None).await?;
/// assert_eq!(secret.value(), Some("s3cr3t"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SecretClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for SecretClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretClient")
            .field("vault_url", &self.vault_url())
            .field("api_version", &self.inner.api_version)
            .finish()
    }
}

macro_rules! span {
    ($op:literal $(, $k:ident = $v:expr)*) => {
        tracing::info_span!(concat!("keyvault_secrets.", $op) $(, $k = %$v)*)
    };
}

impl SecretClient {
    /// A client for the vault at `vault_url` (`https://{name}.vault.azure.net`), authenticating with
    /// `credential`. A vault behind a gateway that routes by path may be named with that path
    /// (`https://gateway.example/keyvault`): requests go under it, as the Python SDK sends them. Fails (without
    /// I/O) on a URL that is not https, or has credentials, a query or a fragment, and on a zero
    /// [`SecretClientOptions::polling_interval`] or [`SecretClientOptions::max_response_body_size`].
    pub fn new(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        options: Option<SecretClientOptions>,
    ) -> Result<Self> {
        let options = options.unwrap_or_default();
        let vault = parse_vault_url(vault_url)?;
        if options.polling_interval.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "polling_interval must be longer than zero (a zero interval would poll the vault without pause)",
            ));
        }
        options.check_body_limit()?;
        let transport = make_transport(options.transport.clone(), options.transport_config())?;
        Ok(SecretClient {
            inner: Arc::new(ClientInner {
                vault,
                api_version: options.api_version,
                pipeline: Pipeline::new(
                    transport,
                    options.retry,
                    Some(Arc::new(ChallengeAuth::new(
                        credential,
                        options.verify_challenge_resource,
                    ))),
                    options.logging_enable,
                ),
                polling_interval: options.polling_interval,
            }),
        })
    }

    /// The vault's URL, `https://host[:port]` (no trailing slash).
    pub fn vault_url(&self) -> &str {
        self.inner.vault_url()
    }

    pub(crate) fn inner(&self) -> &Arc<ClientInner> {
        &self.inner
    }

    /// The api-version this client sends.
    pub fn api_version(&self) -> ApiVersion {
        self.inner.api_version
    }

    /// Release the connections now (this client's and its clones'). A later call opens new ones (where the
    /// Python SDK's clients refuse every call after `close()`). Dropping the last clone releases them too.
    pub fn close(&self) {
        self.inner.pipeline.transport.close();
    }

    /// Set a secret's value: creates the secret, or a new version of it. `PUT /secrets/{name}`.
    pub async fn set_secret(
        &self,
        name: &str,
        value: impl Into<SecretString>,
        options: Option<SetSecretOptions>,
    ) -> Result<KeyVaultSecret> {
        check_name(name)?;
        let options = options.unwrap_or_default();
        let body = SecretSetParameters {
            value: value.into(),
            tags: options.tags.clone(),
            content_type: options.content_type.clone(),
            attributes: options.attributes(),
        };
        let req = Request::new(
            Method::PUT,
            self.inner.url(&format!("/secrets/{name}"), &[]),
        )
        .with_json(&body)?;
        async { KeyVaultSecret::from_bundle(self.inner.call_json::<SecretBundle>(req).await?) }
            .instrument(span!("set_secret", name = name))
            .await
    }

    /// Get a secret with its value: the latest version (`None` or `Some("")`), or `version`.
    /// `GET /secrets/{name}/{version}`.
    pub async fn get_secret(&self, name: &str, version: Option<&str>) -> Result<KeyVaultSecret> {
        self.get(name, version, &[]).await
    }

    /// [`SecretClient::get_secret`], with a certificate-backed secret's value in `format` (Python:
    /// `get_secret(name, version, out_content_type=…)`; `outContentType`). Needs api-version 2025-06-01-preview
    /// or later (refused before any request otherwise, as Python does); a secret not backed by a
    /// certificate comes back as it is.
    pub async fn get_secret_as(
        &self,
        name: &str,
        version: Option<&str>,
        format: ContentType,
    ) -> Result<KeyVaultSecret> {
        if self.inner.api_version < ApiVersion::V2025_06_01Preview {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "get_secret_as (outContentType) needs api-version 2025-06-01-preview or later, not {}",
                    self.inner.api_version
                ),
            ));
        }
        self.get(name, version, &[("outContentType", format.as_str().into())])
            .await
    }

    async fn get(
        &self,
        name: &str,
        version: Option<&str>,
        query: &[(&str, String)],
    ) -> Result<KeyVaultSecret> {
        check_name(name)?;
        if let Some(v) = version {
            check_version(v)?;
        }
        let path = format!("/secrets/{name}/{}", version.unwrap_or(""));
        let req = Request::new(Method::GET, self.inner.url(&path, query));
        async { KeyVaultSecret::from_bundle(self.inner.call_json::<SecretBundle>(req).await?) }
            .instrument(span!("get_secret", name = name))
            .await
    }

    /// Get a secret by its full id (which must be on this client's vault).
    pub async fn get_secret_by_id(&self, id: &KeyVaultSecretIdentifier) -> Result<KeyVaultSecret> {
        let vault = parse_vault_url(id.vault_url())?;
        if !self.inner.same_origin(&vault) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the secret id '{id}' is not on this client's vault '{}'",
                    self.vault_url()
                ),
            ));
        }
        if id.is_deleted() {
            // `/deletedsecrets/{name}` is not the live secret: reading the live one instead would answer with
            // another object than the one named (a deleted secret is read with `get_deleted_secret`).
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "'{id}' is a deleted secret's id; get_deleted_secret reads a deleted secret"
                ),
            ));
        }
        self.get_secret(id.name(), id.version()).await
    }

    /// Properties of every secret (no values, no versions). `GET /secrets`.
    pub fn list_properties_of_secrets(
        &self,
        max_page_size: Option<u32>,
    ) -> Result<Pager<SecretProperties>> {
        check_page_size(max_page_size)?;
        Ok(self.pager::<SecretListResult, _, _>(
            "/secrets".to_string(),
            max_page_size,
            "list_properties_of_secrets",
            |l| (l.value, l.next_link),
            SecretProperties::from_item,
        ))
    }

    /// Properties of every version of a secret (no values). `GET /secrets/{name}/versions`.
    pub fn list_properties_of_secret_versions(
        &self,
        name: &str,
        max_page_size: Option<u32>,
    ) -> Result<Pager<SecretProperties>> {
        check_name(name)?;
        check_page_size(max_page_size)?;
        Ok(self.pager::<SecretListResult, _, _>(
            format!("/secrets/{name}/versions"),
            max_page_size,
            "list_properties_of_secret_versions",
            |l| (l.value, l.next_link),
            SecretProperties::from_item,
        ))
    }

    /// Every deleted secret. `GET /deletedsecrets`.
    pub fn list_deleted_secrets(&self, max_page_size: Option<u32>) -> Result<Pager<DeletedSecret>> {
        check_page_size(max_page_size)?;
        Ok(self.pager::<DeletedSecretListResult, _, _>(
            "/deletedsecrets".to_string(),
            max_page_size,
            "list_deleted_secrets",
            |l| (l.value, l.next_link),
            DeletedSecret::from_item,
        ))
    }

    fn pager<L, W, T>(
        &self,
        path: String,
        max_page_size: Option<u32>,
        op: &'static str,
        split: fn(L) -> (Vec<W>, Option<String>),
        convert: fn(W) -> Result<T>,
    ) -> Pager<T>
    where
        L: DeserializeOwned + 'static,
        W: 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        let query: Vec<(&str, String)> = max_page_size
            .map(|n| vec![("maxresults", n.to_string())])
            .unwrap_or_default();
        let first = inner.url(&path, &query);
        let fetch: FetchPage<T> = Arc::new(move |token: Option<NextPage>| {
            let inner = inner.clone();
            let first = first.clone();
            let path = path.clone();
            Box::pin(
                async move {
                    let url = match token {
                        None => first,
                        Some(next) => inner.next_page_url(&next, &path)?,
                    };
                    let list: L = inner.call_json(Request::new(Method::GET, url)).await?;
                    let (items, next) = split(list);
                    let items = items.into_iter().map(convert).collect::<Result<Vec<T>>>()?;
                    Ok(Page {
                        items,
                        continuation_token: next.filter(|n| !n.is_empty()),
                    })
                }
                .instrument(tracing::info_span!("keyvault_secrets.list", op)),
            ) as PageFuture<T>
        });
        Pager::new(fetch)
    }

    /// Update a version's properties (not its value): the latest version (`None` or `Some("")`), or
    /// `version`. `PATCH /secrets/{name}/{version}`.
    pub async fn update_secret_properties(
        &self,
        name: &str,
        version: Option<&str>,
        options: UpdateSecretPropertiesOptions,
    ) -> Result<SecretProperties> {
        check_name(name)?;
        if let Some(v) = version {
            check_version(v)?;
        }
        let body = SecretUpdateParameters {
            content_type: options.content_type.clone(),
            attributes: options.attributes(),
            tags: options.tags.clone(),
        };
        let path = format!("/secrets/{name}/{}", version.unwrap_or(""));
        let req = Request::new(Method::PATCH, self.inner.url(&path, &[])).with_json(&body)?;
        async { SecretProperties::from_bundle(self.inner.call_json::<SecretBundle>(req).await?) }
            .instrument(span!("update_secret_properties", name = name))
            .await
    }

    /// Delete every version of a secret. `DELETE /secrets/{name}`; the poller then watches
    /// `GET /deletedsecrets/{name}` (done at once when the vault has no soft delete).
    pub async fn begin_delete_secret(&self, name: &str) -> Result<Poller<DeletedSecret>> {
        check_name(name)?;
        let req = Request::new(
            Method::DELETE,
            self.inner.url(&format!("/secrets/{name}"), &[]),
        );
        let bundle: DeletedSecretBundle = self
            .inner
            .call_json(req)
            .instrument(span!("begin_delete_secret", name = name))
            .await?;
        Poller::start(
            self.inner.clone(),
            self.inner.polling_interval,
            name,
            bundle,
        )
    }

    /// Delete a secret and wait until the deletion is done: the async Python client's `delete_secret`
    /// (`begin_delete_secret(name).await?.await`).
    pub async fn delete_secret(&self, name: &str) -> Result<DeletedSecret> {
        self.begin_delete_secret(name).await?.await
    }

    /// Recover a deleted secret and wait until it can be read: the async Python client's
    /// `recover_deleted_secret` (`begin_recover_deleted_secret(name).await?.await`).
    pub async fn recover_deleted_secret(&self, name: &str) -> Result<SecretProperties> {
        self.begin_recover_deleted_secret(name).await?.await
    }

    /// A deleted secret. `GET /deletedsecrets/{name}`.
    pub async fn get_deleted_secret(&self, name: &str) -> Result<DeletedSecret> {
        check_name(name)?;
        let req = Request::new(
            Method::GET,
            self.inner.url(&format!("/deletedsecrets/{name}"), &[]),
        );
        async {
            DeletedSecret::from_bundle(self.inner.call_json::<DeletedSecretBundle>(req).await?)
        }
        .instrument(span!("get_deleted_secret", name = name))
        .await
    }

    /// Recover a deleted secret (all its versions). `POST /deletedsecrets/{name}/recover`; the poller
    /// then watches `GET /secrets/{name}/`.
    pub async fn begin_recover_deleted_secret(
        &self,
        name: &str,
    ) -> Result<Poller<SecretProperties>> {
        check_name(name)?;
        let req = Request::new(
            Method::POST,
            self.inner
                .url(&format!("/deletedsecrets/{name}/recover"), &[]),
        );
        let bundle: SecretBundle = self
            .inner
            .call_json(req)
            .instrument(span!("begin_recover_deleted_secret", name = name))
            .await?;
        Poller::start(
            self.inner.clone(),
            self.inner.polling_interval,
            name,
            bundle,
        )
    }

    /// Permanently delete a deleted secret. `DELETE /deletedsecrets/{name}` (204).
    pub async fn purge_deleted_secret(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let req = Request::new(
            Method::DELETE,
            self.inner.url(&format!("/deletedsecrets/{name}"), &[]),
        );
        async { self.inner.call(req).await.map(drop) }
            .instrument(span!("purge_deleted_secret", name = name))
            .await
    }

    /// A protected backup of every version of a secret. `POST /secrets/{name}/backup`.
    pub async fn backup_secret(&self, name: &str) -> Result<Vec<u8>> {
        check_name(name)?;
        // The one answer that may be large: read up to the transport's own limit.
        let req = Request::new(
            Method::POST,
            self.inner.url(&format!("/secrets/{name}/backup"), &[]),
        )
        .with_max_response_bytes(usize::MAX);
        async {
            let r: BackupSecretResult = self.inner.call_json(req).await?;
            let value = r
                .value
                .ok_or_else(|| Error::new(ErrorKind::Data, "the backup response has no value"))?;
            b64()
                .decode(value.trim_end_matches('='))
                .map_err(|e| Error::with_source(ErrorKind::Data, "the backup is not base64url", e))
        }
        .instrument(span!("backup_secret", name = name))
        .await
    }

    /// Restore a backup made by [`SecretClient::backup_secret`]. `POST /secrets/restore`.
    pub async fn restore_secret_backup(&self, backup: &[u8]) -> Result<SecretProperties> {
        if backup.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the backup is empty",
            ));
        }
        let body = SecretRestoreParameters {
            value: b64().encode(backup),
        };
        let req =
            Request::new(Method::POST, self.inner.url("/secrets/restore", &[])).with_json(&body)?;
        async { SecretProperties::from_bundle(self.inner.call_json::<SecretBundle>(req).await?) }
            .instrument(span!("restore_secret_backup"))
            .await
    }

    /// The same client (the same connections, token cache and options) with detailed (DEBUG) request and
    /// response logging switched on or off: the Python SDK's per-call `logging_enable=True`, as a view of the
    /// client. The INFO lines are logged either way.
    ///
    /// ```no_run
    /// # async fn demo(client: keyvault_secrets::SecretClient) -> keyvault_secrets::Result<()> {
    /// let secret = client.with_logging_enable(true).get_secret("my-secret", None).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_logging_enable(&self, enabled: bool) -> SecretClient {
        self.view(
            CallOptions::default()
                .logging_enable(enabled)
                .apply(self.inner.pipeline.clone()),
        )
    }

    /// The same client (the same connections, token cache and options) with per-call options on top: Python's
    /// per-call keyword arguments. Every call made through the returned client uses them, and so do the page
    /// requests of its pagers and the polls of its pollers. Options given to a view are added to the view's.
    ///
    /// ```no_run
    /// # async fn demo(client: keyvault_secrets::SecretClient) -> keyvault_secrets::Result<()> {
    /// use keyvault_secrets::CallOptions;
    /// use std::time::Duration;
    /// let quick = client.with_call_options(CallOptions::default().timeout(Duration::from_secs(5)))?;
    /// let secret = quick.get_secret("my-secret", None).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`ErrorKind::InvalidArgument`], before any I/O, for a header that cannot be set (see
    /// [`CallOptions`]) or a zero timeout.
    pub fn with_call_options(&self, options: CallOptions) -> Result<SecretClient> {
        options.check()?;
        Ok(self.view(options.apply(self.inner.pipeline.clone())))
    }

    fn view(&self, pipeline: Pipeline) -> SecretClient {
        let inner = &self.inner;
        SecretClient {
            inner: Arc::new(ClientInner {
                vault: inner.vault.clone(),
                api_version: inner.api_version,
                pipeline,
                polling_interval: inner.polling_interval,
            }),
        }
    }

    /// Send a raw request through this client's pipeline (auth, retries, logging), like the SDK's
    /// `send_request`. The URL may be relative to the vault (a path starting with `/`: `/secrets/x/`) or
    /// absolute on the vault;
    /// `api-version` is added when missing. Returns the response whatever its status.
    ///
    /// ```no_run
    /// # async fn demo(client: keyvault_secrets::SecretClient) -> keyvault_secrets::Result<()> {
    /// use keyvault_secrets::http::{Method, Request};
    /// let response = client.send_request(Request::new(Method::GET, "/secrets/my-secret/")).await?;
    /// println!("{} {}", response.status, response.text().len());
    /// # Ok(()) }
    /// ```
    pub async fn send_request(&self, mut request: Request) -> Result<Response> {
        let mut url = if request.url.starts_with('/') {
            self.inner
                .vault
                .join(&format!("{}{}", self.inner.prefix(), request.url))
        } else {
            Url::parse(&request.url)
        }
        .map_err(|e| {
            let shown = crate::pipeline::logging::redacted_url(&request.url);
            let why = if !request.url.contains("://") {
                format!(
                    "it is neither absolute (https://…) nor a path relative to the vault, which must start with \
                     '/' (e.g. '/{}')",
                    shown.trim_start_matches(['.', '/'])
                )
            } else {
                e.to_string()
            };
            Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid request URL '{shown}': {why}"),
            )
        })?;
        // On the vault: its host, and under its path when it has one (a gateway that routes by path sends what is
        // outside it elsewhere, and the request carries the vault's token).
        // What follows the path must not climb out of it once a gateway decodes it. The URL parser resolves
        // `..` and its `%2e` spellings itself; what it leaves, and a gateway may read as a way out, is refused: an
        // encoded `/` or `\`, an encoded `%` (a gateway that decodes twice), and a segment that is `.` or `..`
        // before a `;` (path parameters, as some servers read `..;`) (a59-1, a60-5); and the spellings of `.` and
        // `/` older servers decode: IIS's `%u002e`, and overlong UTF-8 (`%c0%ae`), which is not UTF-8 at all.
        let prefix = self.inner.prefix();
        let stays_inside = |rest: &str| {
            let lower = rest.to_ascii_lowercase();
            !["%2f", "%5c", "%25", "%u"]
                .iter()
                .any(|encoded| lower.contains(encoded))
                && decodes_to_utf8(rest)
                && !lower.split('/').any(|segment| {
                    let name = segment.split(';').next().unwrap_or(segment);
                    segment.contains(';') && matches!(name, "." | "..")
                })
        };
        let under_prefix = prefix.is_empty()
            || url.path().strip_prefix(prefix).is_some_and(|rest| {
                (rest.is_empty() || rest.starts_with('/')) && stays_inside(rest)
            });
        if !self.inner.same_origin(&url) || !under_prefix {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the request URL '{}' is not on this client's vault '{}'",
                    crate::pipeline::logging::redacted_url(&request.url),
                    self.vault_url()
                ),
            ));
        }
        if !url.query_pairs().any(|(k, _)| k == "api-version") {
            url.query_pairs_mut()
                .append_pair("api-version", self.inner.api_version.as_str());
        }
        request.url = url.into();
        self.inner
            .pipeline
            .send(request)
            .instrument(span!("send_request"))
            .await
    }
}

/// Whether `path`, its `%XX` escapes decoded, is UTF-8 (an escape that is not two hex digits is kept as written).
fn decodes_to_utf8(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::StaticTokenCredential;

    fn client(url: &str) -> Result<SecretClient> {
        SecretClient::new(url, Arc::new(StaticTokenCredential::from_token("t")), None)
    }

    #[test]
    fn vault_urls() {
        assert_eq!(
            client("https://v.vault.azure.net/").unwrap().vault_url(),
            "https://v.vault.azure.net"
        );
        assert_eq!(
            client("https://V.vault.azure.net:443").unwrap().vault_url(),
            "https://v.vault.azure.net"
        );
        assert_eq!(
            client("https://127.0.0.1:8443").unwrap().vault_url(),
            "https://127.0.0.1:8443"
        );
        // A path (a gateway that routes by path) is kept, without its trailing '/'.
        assert_eq!(
            client("https://gw.example/keyvault/").unwrap().vault_url(),
            "https://gw.example/keyvault"
        );
        assert_eq!(
            client("https://gw.example/a/b").unwrap().vault_url(),
            "https://gw.example/a/b"
        );
        for bad in [
            "http://v.vault.azure.net",
            "v.vault.azure.net",
            "https://v/x?a=b",
            "https://v/#f",
            "https://v/?a=b",
            "https://u:p@v/",
        ] {
            assert_eq!(
                client(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn arguments_fail_before_io() {
        // Port 9 (discard) on a reserved address: any I/O would be a connection error, not this.
        let c = client("https://192.0.2.1:9").unwrap();
        let kind = |r: Result<KeyVaultSecret>| r.unwrap_err().kind();
        assert_eq!(
            kind(c.get_secret("bad_name", None).await),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(c.get_secret("ok", Some("../x")).await),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(c.set_secret("", "v", None).await),
            ErrorKind::InvalidArgument
        );
        let deleted: KeyVaultSecretIdentifier =
            "https://192.0.2.1:9/deletedsecrets/gone".parse().unwrap();
        let e = c.get_secret_by_id(&deleted).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("get_deleted_secret"), "{e}");
        assert_eq!(
            c.list_properties_of_secrets(Some(0)).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            c.list_properties_of_secrets(Some(26)).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            c.list_properties_of_secret_versions("a.b", None)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            c.restore_secret_backup(b"").await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let other: KeyVaultSecretIdentifier =
            "https://other.vault.azure.net/secrets/x".parse().unwrap();
        assert_eq!(
            kind(c.get_secret_by_id(&other).await),
            ErrorKind::InvalidArgument
        );
        let r = c
            .send_request(Request::new(Method::GET, "https://evil.example/secrets"))
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidArgument);
        // Its message names the URL as the logs do: no user information, no query values.
        let e = c
            .send_request(Request::new(
                Method::GET,
                "https://user:pw@other.example/secrets?$skiptoken=CANARY",
            ))
            .await
            .unwrap_err();
        assert!(
            !e.message().contains("pw@") && !e.message().contains("CANARY"),
            "{e}"
        );
    }

    /// A request URL without the leading `/` (the a17 audit's L1) is refused before any I/O with an error that
    /// names the URL (query values redacted, as in the logs) and says a relative path must start with `/`.
    #[tokio::test]
    async fn send_request_names_a_path_without_its_slash() {
        let c = client("https://192.0.2.1:9").unwrap();
        let e = c
            .send_request(Request::new(Method::GET, "secrets/x?$skiptoken=CANARY"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .starts_with("invalid request URL 'secrets/x?$skiptoken=REDACTED'")
                && e.message()
                    .contains("must start with '/' (e.g. '/secrets/x?"),
            "{e}"
        );
        let e = c
            .send_request(Request::new(Method::GET, "https://[::1"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .starts_with("invalid request URL 'https://[::1': "),
            "{e}"
        );
    }

    fn caller(link: &str) -> NextPage {
        NextPage {
            link: link.to_string(),
            from_caller: true,
        }
    }

    #[test]
    fn next_links_stay_on_the_vault() {
        let c = client("https://v.vault.azure.net").unwrap();
        let u = c
            .inner
            .next_page_url(
                &caller("https://v.vault.azure.net:443/secrets?api-version=7.2&$skiptoken=eyJ+a=&maxresults=1"),
                "/secrets",
            )
            .unwrap();
        assert_eq!(
            u,
            "https://v.vault.azure.net/secrets?api-version=2026-04-01&$skiptoken=eyJ+a=&maxresults=1"
        );
        let u = c
            .inner
            .next_page_url(
                &caller("https://elsewhere.example/deletedsecrets?$skiptoken=x"),
                "/deletedsecrets",
            )
            .unwrap();
        assert!(
            u.starts_with("https://v.vault.azure.net/deletedsecrets?"),
            "{u}"
        );
        // A versions listing's own link, in another case or with a trailing slash; a relative link.
        for ok in [
            "https://v.vault.azure.net:443/secrets/My-Secret/versions?api-version=7.6&$skiptoken=a-b_c&maxresults=3",
            "https://v.vault.azure.net/SECRETS/my-secret/Versions/?$skiptoken=a",
            "/secrets/my-secret/versions?$skiptoken=a",
        ] {
            c.inner
                .next_page_url(&caller(ok), "/secrets/my-secret/versions")
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    /// Under a vault URL with a path (a gateway that routes by it): a next link with or without that path is
    /// asked for under it, spelled as the client was given it; one whose path differs from it (in case too:
    /// gateways route by exact paths), or lies outside it, is refused (the a58 audit's L5).
    #[test]
    fn next_links_under_a_vault_path() {
        let c = client("https://gw.example/kv").unwrap();
        for link in [
            "https://gw.example/kv/secrets?$skiptoken=x",
            "https://backend.internal/secrets?$skiptoken=x",
            "/kv/secrets/?$skiptoken=x",
            "https://gw.example/kv/SECRETS?$skiptoken=x",
        ] {
            let url = c.inner.next_page_url(&caller(link), "/secrets").unwrap();
            assert!(
                url.starts_with("https://gw.example/kv/")
                    && url.to_ascii_lowercase().contains("/kv/secrets"),
                "{link} → {url}"
            );
        }
        for link in [
            "https://gw.example/KV/secrets?$skiptoken=x",
            "https://gw.example/kvsecrets?$skiptoken=x",
            "https://gw.example/kv/kv/secrets?$skiptoken=x",
            "https://gw.example/other/secrets?$skiptoken=x",
            "https://gw.example/kv/secrets/db/0123abcd",
            "https://gw.example/kv/%73ecrets?$skiptoken=x",
        ] {
            let e = c
                .inner
                .next_page_url(&caller(link), "/secrets")
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{link}: {e}");
        }
    }

    /// `send_request` under a vault URL with a path stays under it: an absolute URL elsewhere on the host, or a
    /// relative path that climbs out with `..`, is refused before any I/O (it would carry the vault's token to
    /// what the gateway routes there; the a58 audit's L6).
    #[tokio::test]
    async fn send_request_stays_under_the_vault_path() {
        // Port 9 (discard) on a reserved address: any I/O would be a connection error, not this.
        let c = client("https://192.0.2.1:9/kv").unwrap();
        for url in [
            "https://192.0.2.1:9/other/secrets/a/",
            "https://192.0.2.1:9/kvx/secrets/a/",
            "https://192.0.2.1:9/",
            "/../other/secrets/b/",
            "/x/../../other/secrets/b/",
            // Encoded so that the URL parser leaves them, while a gateway decodes them (a59-1).
            "/..%2Fother/secrets/x/",
            "https://192.0.2.1:9/kv/..%2fother/secrets/x/",
            "/%2e%2e%2Fother/secrets/x/",
            "/secrets%5C..%5Cother/",
            "/..;/other/secrets/x/",
            "/%252e%252e%252fother/secrets/x/",
            // What legacy IIS decodes: `%u` escapes, overlong UTF-8 for '.' and '/'.
            "/%u002e%u002e/other/secrets/x/",
            "/%U002E%U002E%u2215other/secrets/x/",
            "/%c0%ae%c0%ae/other/secrets/x/",
            "/%C0%AE%C0%AE%c0%afother/secrets/x/",
            "/%e0%80%ae%e0%80%ae/other/secrets/x/",
            // Resolved by the URL parser itself (refused as outside, whatever the check after it).
            "/%2E%2E/other/secrets/x/",
            "/.%2e/other/secrets/x/",
        ] {
            let e = c
                .send_request(Request::new(Method::GET, url))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{url}: {e}");
            assert!(e.message().contains("is not on this client's vault"), "{e}");
        }
    }

    #[test]
    fn escapes_decode_to_utf8_or_not() {
        for ok in [
            "/secrets/a/",
            "/a%C3%A9b",
            "/%zz",
            "/100%",
            "/%4",
            "/%e2%88%95",
        ] {
            assert!(decodes_to_utf8(ok), "{ok}");
        }
        for bad in ["/%c0%ae", "/%ff", "/a%C3", "/%e0%80%ae"] {
            assert!(!decodes_to_utf8(bad), "{bad}");
        }
    }

    /// A token must name its listing's path: another listing's token, a secret's id (which would be fetched
    /// with its value), a path that only resolves to the listing's with dot segments elsewhere, or text that is
    /// not a token is an InvalidArgument error when the caller gave it, a Data error when the service did;
    /// neither quotes the token.
    #[test]
    fn next_links_must_name_the_listing() {
        let c = client("https://v.vault.azure.net").unwrap();
        let cases = [
            ("https://v.vault.azure.net/secrets/db/0123abcd", "/secrets"),
            ("https://v.vault.azure.net/secrets/db/", "/secrets"),
            (
                "https://v.vault.azure.net/secrets?$skiptoken=x",
                "/deletedsecrets",
            ),
            (
                "https://v.vault.azure.net/deletedsecrets?$skiptoken=x",
                "/secrets",
            ),
            (
                "/secrets/other/versions?$skiptoken=x",
                "/secrets/db/versions",
            ),
            (
                "/secrets/db/versions/../../db2/versions?$skiptoken=x",
                "/secrets/db/versions",
            ),
            ("/secrets/db/versions/0123abcd", "/secrets/db/versions"),
            ("not a token", "/secrets"),
            ("", "/secrets"),
            ("https://", "/secrets"),
        ];
        for (link, path) in cases {
            let e = c.inner.next_page_url(&caller(link), path).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{link}: {e}");
            assert!(e.message().contains(path), "{e}");
            let shown = format!("{e} {e:?}");
            assert!(
                link.is_empty() || !shown.contains(link),
                "the token is not quoted: {shown}"
            );
            let service = NextPage {
                link: link.to_string(),
                from_caller: false,
            };
            let e = c.inner.next_page_url(&service, path).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Data, "{link}: {e}");
        }
    }

    #[test]
    fn backup_base64_tolerates_padding() {
        assert_eq!(b64().decode("AQI").unwrap(), vec![1, 2]);
        assert_eq!(b64().decode("AQI=").unwrap(), vec![1, 2]);
        assert_eq!(b64().encode([1u8, 2]), "AQI");
        assert_eq!(b64().encode([0xfbu8, 0xff]), "-_8");
    }
}
