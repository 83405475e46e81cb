//! One error type for everything the client does: [`Error`], classified by [`ErrorKind`].
//!
//! The kinds map to the exceptions of the Python SDK (azure-core):
//!
//! | Python                      | Rust                                  |
//! |-----------------------------|---------------------------------------|
//! | `ResourceNotFoundError`     | [`ErrorKind::ResourceNotFound`] (404) |
//! | `ResourceExistsError`       | [`ErrorKind::ResourceExists`] (409)   |
//! | `ClientAuthenticationError` | [`ErrorKind::ClientAuthentication`] (401, or a challenge the client refuses) |
//! | `HttpResponseError`         | [`ErrorKind::HttpResponse`] (every other error status) |
//! | `ServiceRequestError`       | [`ErrorKind::Connection`]             |
//! | `CredentialUnavailableError` (a credential that is not set up here) | [`ErrorKind::CredentialUnavailable`] |
//! | `ClientAuthenticationError` from a credential (it is set up, and authentication failed) | [`ErrorKind::Credential`] |
//! | `DecodeError`               | [`ErrorKind::Data`]                   |
//! | `ValueError`                | [`ErrorKind::InvalidArgument`]        |
//!
//! [`ErrorKind::InvalidArgument`] is also what arguments the client checks before any request get — a bad
//! secret name or version, a `max_page_size` outside 1–25, an empty backup, a bad vault URL — where Python
//! sends the request and raises the service's error (`HttpResponseError` 400; `ResourceNotFoundError` for a
//! malformed version).
//!
//! Every error that came from an HTTP response carries [`Error::status`], the Key Vault error code
//! ([`Error::error_code`], e.g. `SecretNotFound`) and the service's message ([`Error::message`]).

use http::StatusCode;
use std::fmt;

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, coarsely. Match on it to decide what to do; read details through [`Error`]'s accessors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 404: the secret (or version, or deleted secret) does not exist. Python: `ResourceNotFoundError`.
    ResourceNotFound,
    /// 409: the name is in use (e.g. soft-deleted, or restore over an existing secret). Python: `ResourceExistsError`.
    ResourceExists,
    /// 401 from the vault, or a challenge the client refused. Python: `ClientAuthenticationError`.
    ClientAuthentication,
    /// Any other error status (400, 403, 429, 5xx, …). Python: `HttpResponseError`.
    HttpResponse,
    /// The request did not get an answer: DNS, TCP, TLS, timeout, or a closed client.
    Connection,
    /// A credential could not produce a token: it is set up, and authentication failed (a wrong secret, a
    /// refused assertion, an error from the authority). Python: `ClientAuthenticationError` raised by a
    /// credential. A credential chain stops at this error.
    Credential,
    /// A credential is not usable here, so it did not try to authenticate: its settings are missing (no
    /// `AZURE_CLIENT_SECRET`…), no managed identity endpoint answers, the Azure CLI is not installed or not
    /// logged in. Python: `CredentialUnavailableError` (a subclass of `ClientAuthenticationError`, so
    /// [`Error::is_client_authentication`] is true for it too). A credential chain
    /// ([`ChainedTokenCredential`](crate::credentials::ChainedTokenCredential),
    /// [`DefaultAzureCredential`](crate::credentials::DefaultAzureCredential)) tries its next credential
    /// after this error, and after no other.
    CredentialUnavailable,
    /// The service answered something this client cannot read.
    Data,
    /// An argument was rejected before any I/O (bad name, bad URL, bad id, bad page size, …).
    InvalidArgument,
    /// Anything else (e.g. an I/O error while reading a CA file), and a misuse that is not an argument: a
    /// [`blocking`](crate::blocking) client called from async code.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::ResourceNotFound => "resource not found",
            ErrorKind::ResourceExists => "resource exists",
            ErrorKind::ClientAuthentication => "client authentication failed",
            ErrorKind::HttpResponse => "HTTP error response",
            ErrorKind::Connection => "connection error",
            ErrorKind::Credential => "credential error",
            ErrorKind::CredentialUnavailable => "credential unavailable",
            ErrorKind::Data => "data error",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Other => "error",
        })
    }
}

/// The error of every fallible operation in this crate.
///
/// `Display` prints the kind, the HTTP status and Key Vault code when there are some, and the message; it
/// never prints the source (walk [`std::error::Error::source`] for the chain).
pub struct Error {
    kind: ErrorKind,
    message: String,
    status: Option<StatusCode>,
    error_code: Option<String>,
    inner_error_code: Option<String>,
    /// The error response's headers and body (boxed: most errors have none).
    response: Option<Box<(http::HeaderMap, bytes::Bytes)>>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// A connection error no retry can change (the server's certificate refused): not retried.
    permanent: bool,
    /// A connection error from before the request was sent (no connection could be made).
    unsent: bool,
}

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            status: None,
            error_code: None,
            inner_error_code: None,
            response: None,
            source: None,
            permanent: false,
            unsent: false,
        }
    }

    /// A new error of `kind` that wraps a cause.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let mut e = Error::new(kind, message);
        e.source = Some(Box::new(source));
        e
    }

    /// Marks a connection error that retrying cannot change.
    pub(crate) fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether retrying cannot change this error (a refused server certificate).
    pub(crate) fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Marks a connection error from before the request was sent.
    pub(crate) fn unsent(mut self) -> Self {
        self.unsent = true;
        self
    }

    /// For an [`ErrorKind::Connection`] error: whether it came before the request was sent (no connection
    /// could be made: name resolution, a refused connection, the TLS handshake), so the service did not get
    /// it. `false` when the request may have been sent (a connection dropped, or a try timed out, after it
    /// went out): a change it asked for may have been made — Python's `ServiceRequestError` against
    /// `ServiceResponseError`.
    pub fn is_request_unsent(&self) -> bool {
        self.unsent
    }

    /// The error for an HTTP error response: the kind follows the status (Python's `error_map`).
    pub(crate) fn from_response(
        status: StatusCode,
        error_code: Option<String>,
        inner_error_code: Option<String>,
        message: Option<String>,
    ) -> Self {
        let kind = match status.as_u16() {
            401 => ErrorKind::ClientAuthentication,
            404 => ErrorKind::ResourceNotFound,
            409 => ErrorKind::ResourceExists,
            _ => ErrorKind::HttpResponse,
        };
        let message = message.unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error response")
                .to_string()
        });
        Error {
            kind,
            message,
            status: Some(status),
            error_code,
            inner_error_code,
            response: None,
            source: None,
            permanent: false,
            unsent: false,
        }
    }

    /// The same error, with the headers and body of the response it came from.
    pub(crate) fn with_response(mut self, headers: http::HeaderMap, body: bytes::Bytes) -> Self {
        self.response = Some(Box::new((headers, body)));
        self
    }

    /// The coarse classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message: the service's `error.message` for HTTP errors, else a description.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status, for errors that came from a response (every kind from `ResourceNotFound` to
    /// `HttpResponse`, as Python's `HttpResponseError.status_code`; for a [`ErrorKind::Credential`] error
    /// from a token endpoint's answer, that answer's status: a 5xx, 408 or 429 there is the authority's
    /// trouble, not the credential's).
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Alias of [`Error::status`] (the name the Azure SDK for Rust uses).
    pub fn http_status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The Key Vault error code (`error.code` of the body, or the `x-ms-error-code` header), e.g.
    /// `SecretNotFound`, `Forbidden`, `BadParameter`, `Conflict`, `Throttled`.
    pub fn error_code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }

    /// The innermost `innererror.code` of the body, e.g. `SecretDisabled` or `ObjectIsDeletedButRecoverable`.
    pub fn inner_error_code(&self) -> Option<&str> {
        self.inner_error_code.as_deref()
    }

    /// Whether this is an HTTP error response (Python: an instance of `HttpResponseError`).
    pub fn is_http_response(&self) -> bool {
        self.status.is_some()
    }

    /// Whether authentication failed, at the vault (401, a refused challenge) or in the credential, or no
    /// credential was available (Python: an instance of `ClientAuthenticationError`, of which
    /// `CredentialUnavailableError` is a subclass).
    pub fn is_client_authentication(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ClientAuthentication
                | ErrorKind::Credential
                | ErrorKind::CredentialUnavailable
        )
    }

    /// Whether a credential was not usable here (Python: an instance of `CredentialUnavailableError`).
    pub fn is_credential_unavailable(&self) -> bool {
        self.kind == ErrorKind::CredentialUnavailable
    }

    /// The same error (kind, status, codes, headers and source kept) with another message.
    /// The status of the answer the error is about (a token endpoint's, for a credential's error).
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// The headers of the error response (Python: `error.response.headers`); `None` for errors that did not
    /// come from a response.
    pub fn response_headers(&self) -> Option<&http::HeaderMap> {
        self.response.as_deref().map(|(headers, _)| headers)
    }

    /// The body of the error response as it came (Python: `error.response.text()`, as bytes; Key Vault's is
    /// JSON, `{"error": {"code": …, "message": …}}`), read up to the client's limit for an answer; `None` for
    /// errors that did not come from a response. Neither `Display` nor `Debug` shows it.
    pub fn response_body(&self) -> Option<&[u8]> {
        self.response.as_deref().map(|(_, body)| body.as_ref())
    }

    /// The status's reason phrase, e.g. `Not Found` (Python: `HttpResponseError.reason`); `None` for errors
    /// that did not come from a response, and for statuses without a standard phrase.
    pub fn reason(&self) -> Option<&'static str> {
        self.status?.canonical_reason()
    }

    /// The service's id for the failed request (`x-ms-request-id`), the one to quote to its operators.
    pub fn request_id(&self) -> Option<&str> {
        self.response_headers()?
            .get("x-ms-request-id")?
            .to_str()
            .ok()
    }
}

/// What went wrong parsing JSON, without any of the text parsed: serde's category and position. (serde's own
/// message quotes what it found, `invalid type: string "…"`, which may be a secret's value or a token, so it
/// never goes into an [`Error`], not even as its source.)
pub(crate) fn json_failure(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "a read error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON without the expected fields or types",
        serde_json::error::Category::Eof => "JSON cut short",
    };
    format!("{what} (at line {}, column {})", e.line(), e.column())
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = self.status {
            d.field("status", &s.as_u16());
        }
        if let Some(c) = &self.error_code {
            d.field("error_code", c);
        }
        if let Some(c) = &self.inner_error_code {
            d.field("inner_error_code", c);
        }
        if let Some(id) = self.request_id() {
            d.field("request_id", &id);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(s) = self.status {
            write!(f, " ({}", s.as_u16())?;
            if let Some(c) = &self.error_code {
                write!(f, " {c}")?;
            }
            write!(f, ")")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_status() {
        let e = Error::from_response(
            StatusCode::NOT_FOUND,
            Some("SecretNotFound".into()),
            None,
            Some("gone".into()),
        );
        assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
        assert_eq!(
            e.to_string(),
            "resource not found (404 SecretNotFound): gone"
        );
        assert_eq!(
            Error::from_response(StatusCode::CONFLICT, None, None, None).kind(),
            ErrorKind::ResourceExists
        );
        assert_eq!(
            Error::from_response(StatusCode::UNAUTHORIZED, None, None, None).kind(),
            ErrorKind::ClientAuthentication
        );
        let e = Error::from_response(StatusCode::FORBIDDEN, None, None, None);
        assert_eq!(e.kind(), ErrorKind::HttpResponse);
        assert_eq!(e.message(), "Forbidden");
        assert!(e.is_http_response());
        assert_eq!(e.reason(), Some("Forbidden"));
        assert_eq!(e.response_body(), None);
        assert_eq!(Error::new(ErrorKind::Other, "x").reason(), None);
    }

    /// Python's `CredentialUnavailableError` is a `ClientAuthenticationError`.
    #[test]
    fn credential_unavailable_is_client_authentication() {
        let e = Error::new(ErrorKind::CredentialUnavailable, "no env");
        assert!(e.is_client_authentication() && e.is_credential_unavailable());
        assert_eq!(e.to_string(), "credential unavailable: no env");
        let e = Error::new(ErrorKind::Credential, "wrong secret");
        assert!(e.is_client_authentication() && !e.is_credential_unavailable());
    }

    /// serde's message quotes what it read; the failure text keeps only its category and position.
    #[test]
    fn json_failures_do_not_quote_the_text() {
        #[derive(Debug, serde::Deserialize)]
        struct List {
            #[allow(dead_code)]
            value: Vec<u8>,
        }
        for (body, what) in [
            (
                r#"{"value":"CANARY-value"}"#,
                "JSON without the expected fields or types",
            ),
            (r#"{"value": CANARY"#, "not JSON"),
            (r#"{"value":["CANARY"#, "JSON cut short"),
        ] {
            let e = serde_json::from_str::<List>(body).unwrap_err();
            if body.contains("CANARY-value") {
                assert!(e.to_string().contains("CANARY"), "serde quotes it: {e}");
            }
            let shown = json_failure(&e);
            assert!(!shown.contains("CANARY"), "{shown}");
            assert!(
                shown.starts_with(what) && shown.contains("line 1, column"),
                "{shown}"
            );
        }
    }

    #[test]
    fn error_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
