//! Raw HTTP: the [`Request`] and [`Response`] of [`SecretClient::send_request`](crate::SecretClient::send_request),
//! and the one-method [`Transport`] trait the pipeline sends through (swap it in tests with
//! [`SecretClientOptions::transport`](crate::SecretClientOptions::transport)).

use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use keyvault_types::models::{ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use http::header::{HeaderMap, HeaderName, HeaderValue};
pub use http::{Method, StatusCode};

/// An HTTP request. For [`SecretClient::send_request`](crate::SecretClient::send_request) the URL may be
/// relative to the vault (`/secrets/name/`); `api-version` is added when missing.
#[derive(Clone)]
#[non_exhaustive]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// The longest one try of this request may take, from sending to the end of the body; `None`: the client's
    /// [`request_timeout`](crate::SecretClientOptions::request_timeout) (or
    /// [`CallOptions::request_timeout`](crate::CallOptions::request_timeout)). A [`Transport`] should honour it;
    /// the pipeline enforces it either way.
    pub timeout: Option<Duration>,
    /// The most bytes of this request's response body to read, when that is less than the transport's own
    /// limit ([`max_response_body_size`](crate::SecretClientOptions::max_response_body_size)); `None`: the
    /// transport's. [`SecretClient`](crate::SecretClient) sets [`ANSWER_LIMIT`] on every operation's
    /// requests but a backup's, so that many requests in flight cannot each hold the transport's limit.
    pub max_response_bytes: Option<usize>,
}

/// The most bytes [`SecretClient`](crate::SecretClient) reads of an answer other than a backup's (4 MiB): Key
/// Vault's largest such answers — a secret of 25 KiB with its tags, a page of 25 items with theirs — are far
/// smaller.
pub const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

impl Request {
    /// A request without headers or body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: None,
            timeout: None,
            max_response_bytes: None,
        }
    }

    /// Read at most `bytes` of the response body (see [`Request::max_response_bytes`]).
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = Some(bytes);
        self
    }

    /// Set a JSON body (and `Content-Type: application/json`). The body is written into one buffer of its
    /// exact size (measured first, so no growing buffer leaves partial copies behind), which is wiped when the
    /// last clone of the body is dropped: a secret's value in it does not stay in freed memory through it.
    pub fn with_json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Result<Self> {
        let cannot =
            |e| Error::with_source(ErrorKind::InvalidArgument, "cannot serialise the body", e);
        let bytes = keyvault_types::secret::to_json_wiped(body).map_err(cannot)?;
        self.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.body = Some(Bytes::from_owner(bytes));
        Ok(self)
    }

    /// Add a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Set the timeout of one try (see [`Request::timeout`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &crate::pipeline::logging::redacted_url(&self.url))
            .field(
                "headers",
                &crate::pipeline::logging::redacted_headers(&self.headers),
            )
            .field(
                "body",
                &self.body.as_ref().map(|b| format!("<{} bytes>", b.len())),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A buffer wiped (its whole capacity) when dropped: the owner of a request body this crate serialised or of a
/// response body its transport read, held by every [`Bytes`] cut from it, so that a secret's value does not
/// stay in freed memory through this crate's own buffers. (Buffers inside hyper, reqwest and rustls, and
/// serde_json's scratch buffer for a string with escapes, are out of its reach.)
pub(crate) struct Wiped(pub(crate) Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// An HTTP response, whatever its status.
#[derive(Clone)]
#[non_exhaustive]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field(
                "headers",
                &crate::pipeline::logging::redacted_headers(&self.headers),
            )
            .field("body", &format!("<{} bytes>", self.body.len()))
            .finish()
    }
}

impl Response {
    pub fn new(status: StatusCode, headers: HeaderMap, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            headers,
            body: body.into(),
        }
    }

    /// Parse the body as JSON; a body that does not fit is an [`ErrorKind::Data`] error. The error says what
    /// kind of mismatch it is and where (line and column), and quotes nothing of the body (which may hold a
    /// secret's value or a token): serde's own message, which does, is not kept, not even as the source.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                ErrorKind::Data,
                format!(
                    "cannot parse the {} response body: {}",
                    self.status.as_u16(),
                    crate::error::json_failure(&e)
                ),
            )
        })
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Ok(self)` for 2xx, else the [`Error`] for this response.
    pub fn error_for_status(self) -> Result<Self> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.to_error())
        }
    }

    /// The error this response stands for: kind by status, Key Vault code from the `x-ms-error-code`
    /// header or the body, message from the body.
    pub fn to_error(&self) -> Error {
        let body: Option<ErrorBody> = serde_json::from_slice(&self.body).ok();
        let header_code = self
            .headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (code, inner, message) = match body {
            Some(ErrorBody { error }) => {
                let mut inner: Option<&ErrorDetail> = error.innererror.as_deref();
                let mut inner_code = None;
                while let Some(d) = inner {
                    if d.code.is_some() {
                        inner_code = d.code.clone();
                    }
                    inner = d.innererror.as_deref();
                }
                (error.code, inner_code, error.message.map(cut_message))
            }
            None => {
                let text = self.text();
                let text = text.trim();
                (
                    None,
                    None,
                    (!text.is_empty()).then(|| text.chars().take(512).collect()),
                )
            }
        };
        let message = if self.status.is_redirection() {
            Some(self.redirect_message())
        } else {
            message
        };
        // A code is a short identifier (`SecretNotFound`): a longer one is cut as a message is, shorter.
        let code = header_code.or(code).map(cut_code);
        Error::from_response(self.status, code, inner.map(cut_code), message)
            .with_response(self.headers.clone(), self.body.clone())
    }

    /// A 3xx is not followed (a token must not go elsewhere): the error says so, naming where it pointed by
    /// its origin only (a path or query may carry anything).
    fn redirect_message(&self) -> String {
        let to = self
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| match reqwest::Url::parse(l.trim()) {
                Ok(url) => format!("to {}", url.origin().ascii_serialization()),
                Err(_) => "to another path of the same host".to_string(),
            })
            .unwrap_or_else(|| "without a Location".to_string());
        format!(
            "a redirect ({} {to}), which the client does not follow",
            self.status.as_u16()
        )
    }
}

/// The most characters of a service's error message kept in an [`Error`]; a longer one is cut, with a note
/// of how much was cut.
const MAX_ERROR_MESSAGE_CHARS: usize = 2000;

/// An error code cut to [`MAX_ERROR_CODE_CHARS`] (then `…`).
fn cut_code(code: String) -> String {
    match code.char_indices().nth(MAX_ERROR_CODE_CHARS) {
        None => code,
        Some((cut, _)) => format!("{}…", &code[..cut]),
    }
}

/// The longest error code kept whole (Key Vault's are identifiers of a few dozen characters).
const MAX_ERROR_CODE_CHARS: usize = 128;

pub(crate) fn cut_message(message: String) -> String {
    match message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        None => message,
        Some((cut, _)) => {
            let rest = message[cut..].chars().count();
            format!("{}… [{rest} more characters cut]", &message[..cut])
        }
    }
}

/// Sends one request and returns its response (any status). Errors are for requests without an answer.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    /// Send `request` (its URL is absolute).
    async fn send(&self, request: &Request) -> Result<Response>;

    /// Release connections now; a later send opens new ones (azure-core's transports refuse sends after
    /// `close()` instead). The default does nothing.
    fn close(&self) {}
}

/// TLS and timeout settings of the built-in transport.
#[derive(Clone, Debug)]
pub(crate) struct TransportConfig {
    pub extra_ca_pem: Vec<Vec<u8>>,
    pub trust_system_roots: bool,
    pub connect_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    pub user_agent: String,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    pub http2: bool,
    /// The most bytes of a response body read; a longer body is refused with [`ErrorKind::Data`].
    pub max_body_bytes: usize,
    /// What sets `max_body_bytes`, for the error past it.
    pub max_body_setting: &'static str,
}

/// What the built-in transport reads at most of a token endpoint's answer (every credential's): a token
/// response is a few KB.
pub(crate) const TOKEN_RESPONSE_LIMIT: usize = 1024 * 1024;
/// What sets [`TOKEN_RESPONSE_LIMIT`], as its error says.
pub(crate) const TOKEN_RESPONSE_LIMIT_SETTING: &str = "the fixed limit of a token response";

/// The built-in transport: reqwest over rustls with the ring provider. `close` drops the connection pool;
/// the next send builds a new one from the same settings.
pub(crate) struct ReqwestTransport {
    config: TransportConfig,
    client: Mutex<Option<reqwest::Client>>,
}

impl fmt::Debug for ReqwestTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = self.client.lock().map(|c| c.is_some()).unwrap_or(false);
        f.debug_struct("ReqwestTransport")
            .field("open", &open)
            .finish()
    }
}

fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "could not load some system root certificates");
        }
        found.certs
    })
}

/// A rustls client configuration with the ring provider, the system roots (if asked) and extra PEM CAs.
pub(crate) fn tls_config(config: &TransportConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if config.trust_system_roots {
        let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    }
    for pem in &config.extra_ca_pem {
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidArgument,
                    "cannot read a CA certificate PEM",
                    e,
                )
            })?;
            roots.add(cert).map_err(|e| {
                Error::with_source(ErrorKind::InvalidArgument, "cannot use a CA certificate", e)
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "an additional CA certificate PEM contains no certificate",
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::with_source(ErrorKind::Other, "cannot configure TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = if config.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tls)
}

impl ReqwestTransport {
    pub(crate) fn new(config: &TransportConfig) -> Result<Self> {
        Ok(ReqwestTransport {
            client: Mutex::new(Some(Self::build(config)?)),
            config: config.clone(),
        })
    }

    fn build(config: &TransportConfig) -> Result<reqwest::Client> {
        let tls = tls_config(config)?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(config.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none());
        if let Some(t) = config.connect_timeout {
            builder = builder.connect_timeout(t);
        }
        if let Some(t) = config.timeout {
            builder = builder.timeout(t);
        }
        builder
            .build()
            .map_err(|e| Error::with_source(ErrorKind::Other, "cannot build the HTTP client", e))
    }

    /// The connection pool, opened again after a `close`.
    fn client(&self) -> Result<reqwest::Client> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| Error::new(ErrorKind::Other, "transport lock poisoned"))?;
        if let Some(open) = client.as_ref() {
            return Ok(open.clone());
        }
        let opened = Self::build(&self.config)?;
        *client = Some(opened.clone());
        Ok(opened)
    }
}

#[async_trait]
impl Transport for ReqwestTransport {
    async fn send(&self, request: &Request) -> Result<Response> {
        let mut builder = self
            .client()?
            .request(request.method.clone(), &request.url)
            .headers(request.headers.clone());
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        let mut response = builder.send().await.map_err(connection_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let limit = match request.max_response_bytes {
            Some(bytes) if bytes < self.config.max_body_bytes => {
                (bytes, "the operation's limit on its answer")
            }
            _ => (self.config.max_body_bytes, self.config.max_body_setting),
        };
        let body = read_body(&mut response, limit, &request.url).await?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn close(&self) {
        if let Ok(mut c) = self.client.lock() {
            c.take();
        }
    }
}

/// Read a response body of at most `limit` bytes into one buffer, chunk by chunk (reqwest's `bytes()` would
/// read any length, and hold it twice at its end). A longer body, announced by its `Content-Length` or found
/// while reading, is not read further: an [`ErrorKind::Data`] error naming the limit and the URL (without its
/// query). The connection is dropped with the response.
async fn read_body(
    response: &mut reqwest::Response,
    (limit, setting): (usize, &str),
    url: &str,
) -> Result<Bytes> {
    let too_large = |announced: Option<u64>| {
        let url = url.split(['?', '#']).next().unwrap_or_default();
        let is = match announced {
            Some(len) => format!("is {len} bytes (its Content-Length), more than"),
            None => "is longer than".to_string(),
        };
        Error::new(
            ErrorKind::Data,
            format!(
                "the response of {url} {is} the client reads of a response ({limit} bytes: {setting}); not \
                 read further"
            ),
        )
    };
    let announced = response.content_length();
    if let Some(len) = announced
        && len > limit as u64
    {
        return Err(too_large(Some(len)));
    }
    // Announced (and within the limit): one allocation; else grown as chunks come, each outgrown buffer wiped
    // (a `Vec`'s own growth would free it as it is). The buffer is wiped when dropped, read or not.
    let capacity = announced.map_or(0, |len| len as usize);
    let mut body = Wiped(Vec::with_capacity(capacity));
    while let Some(chunk) = response.chunk().await.map_err(connection_error)? {
        if chunk.len() > limit - body.0.len() {
            return Err(too_large(None));
        }
        let needed = body.0.len() + chunk.len();
        if needed > body.0.capacity() {
            let mut bigger = Vec::with_capacity(needed.max(body.0.capacity() * 2).min(limit));
            bigger.extend_from_slice(&body.0);
            body = Wiped(bigger);
        }
        body.0.extend_from_slice(&chunk);
    }
    Ok(Bytes::from_owner(body))
}

fn connection_error(e: reqwest::Error) -> Error {
    // The URL as the logs show it (a `$skiptoken`'s value redacted), not as reqwest's Display would.
    let url = e
        .url()
        .map(|u| crate::pipeline::logging::redacted_url(u.as_str()));
    let e = e.without_url();
    // reqwest's Display omits the cause chain; include it, it is where TLS and DNS errors are told.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let what = if e.is_timeout() {
        "request timed out"
    } else {
        "request failed"
    };
    let what = match url {
        Some(url) => format!("{what} ({url})"),
        None => what.to_string(),
    };
    if message.contains("UnknownIssuer") {
        message.push_str(
            " (the server's certificate is not issued by a CA this client trusts: add the CA's PEM to \
             SecretClientOptions::additional_ca_certificates, or to the credential options' \
             additional_ca_certificates for a token authority)",
        );
    }
    let refused = certificate_refused(&e);
    let unsent = e.is_connect();
    let mut error = Error::with_source(ErrorKind::Connection, format!("{what}: {message}"), e);
    if unsent {
        error = error.unsent();
    }
    if refused { error.permanent() } else { error }
}

/// Whether the TLS handshake failed because this client refused the server's certificate (an untrusted CA, a
/// name it is not for, outside its validity, a CA used as the server's own): the same server answers the same
/// way to every retry, so it is not retried. rustls's error sits inside `io::Error`s (nested), whose `source`
/// skips the error they wrap: those are walked through `get_ref`.
fn certificate_refused(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_));
        }
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

#[cfg(test)]
mod alpn_tests {
    use super::*;

    fn config(http2: bool) -> TransportConfig {
        TransportConfig {
            extra_ca_pem: Vec::new(),
            trust_system_roots: false,
            connect_timeout: None,
            timeout: None,
            user_agent: "test".into(),
            http2,
            max_body_bytes: 1024,
            max_body_setting: "test",
        }
    }

    #[test]
    fn http2_is_offered_only_when_asked_for() {
        let h1 = tls_config(&config(false)).unwrap();
        assert_eq!(h1.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let h2 = tls_config(&config(true)).unwrap();
        assert_eq!(
            h2.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's `Debug` shows its URL as the HTTP log does: query values such as `$skiptoken` redacted.
    #[test]
    fn long_messages_are_cut_and_redirects_named() {
        let long = format!(
            r#"{{"error":{{"code":"X","message":"{}"}}}}"#,
            "é".repeat(2500)
        );
        let e = Response::new(StatusCode::BAD_REQUEST, HeaderMap::new(), long).to_error();
        assert_eq!(e.message().chars().filter(|c| *c == 'é').count(), 2000);
        assert!(
            e.message().ends_with("… [500 more characters cut]"),
            "{}",
            e.message()
        );
        let short = r#"{"error":{"code":"X","message":"short"}}"#;
        let e = Response::new(StatusCode::BAD_REQUEST, HeaderMap::new(), short).to_error();
        assert_eq!(e.message(), "short");

        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::LOCATION,
            HeaderValue::from_static("https://evil.example:8443/steal?token=CANARY"),
        );
        let e = Response::new(StatusCode::MOVED_PERMANENTLY, headers, "{}").to_error();
        assert_eq!(e.kind(), ErrorKind::HttpResponse);
        assert_eq!(
            e.message(),
            "a redirect (301 to https://evil.example:8443), which the client does not follow"
        );
        let e = Response::new(StatusCode::TEMPORARY_REDIRECT, HeaderMap::new(), "").to_error();
        assert!(
            e.message().contains("307 without a Location"),
            "{}",
            e.message()
        );
    }

    /// `with_json` writes the body in one buffer of its measured size: the same bytes as `serde_json::to_vec`,
    /// escapes and non-ASCII included.
    #[test]
    fn with_json_writes_the_same_body_in_one_buffer() {
        let body = serde_json::json!({"value": "a \"quoted\" \\ é 🦀 \u{1}", "tags": {"k": "v"}, "n": 1.5});
        let r = Request::new(Method::PUT, "/secrets/x")
            .with_json(&body)
            .unwrap();
        assert_eq!(
            r.body.as_deref().unwrap(),
            serde_json::to_vec(&body).unwrap().as_slice()
        );
        assert_eq!(r.headers[http::header::CONTENT_TYPE], "application/json");
        let clone = r.clone();
        drop(r);
        assert_eq!(
            clone.body.as_deref().unwrap(),
            serde_json::to_vec(&body).unwrap().as_slice(),
            "a clone keeps the buffer alive"
        );
    }

    #[test]
    fn request_debug_redacts_the_url() {
        let r = Request::new(
            Method::GET,
            "https://v.example/secrets?api-version=7.6&$skiptoken=CANARY-cursor",
        );
        let shown = format!("{r:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("$skiptoken=REDACTED"), "{shown}");
    }

    /// `close` drops the connection pool (its sockets with it); the next send builds a new one.
    #[test]
    fn close_drops_the_pool_and_a_send_reopens_it() {
        let t = ReqwestTransport::new(&TransportConfig {
            extra_ca_pem: Vec::new(),
            trust_system_roots: false,
            connect_timeout: None,
            timeout: None,
            user_agent: "test".into(),
            http2: false,
            max_body_bytes: 1024,
            max_body_setting: "test",
        })
        .unwrap();
        let open = |t: &ReqwestTransport| t.client.lock().unwrap().is_some();
        assert!(open(&t));
        t.close();
        assert!(!open(&t));
        t.client().unwrap();
        assert!(open(&t));
    }
}
