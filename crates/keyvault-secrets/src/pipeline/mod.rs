//! The request pipeline: retry → challenge auth → logging → [`Transport`].

pub(crate) mod challenge;
pub(crate) mod logging;
pub(crate) mod retry;

use crate::error::{Error, ErrorKind, Result};
use crate::http::{HeaderMap, HeaderValue, Request, Response, Transport};
use challenge::ChallengeAuth;
use retry::{RETRY_LOG_TARGET as RETRY_TARGET, RetryOptions};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A random `u64` from std's randomly keyed hasher (good enough for jitter and request ids).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A random number in [0, 1).
pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random UUID-shaped request id.
pub(crate) fn request_id() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Sends requests with retries, optional challenge auth and logging. A clone shares the transport and the
/// challenge state (the cached token).
#[derive(Clone)]
pub(crate) struct Pipeline {
    pub transport: Arc<dyn Transport>,
    pub retry: RetryOptions,
    pub auth: Option<Arc<ChallengeAuth>>,
    pub logging: bool,
    /// Headers added to every request (per-call options); they replace the pipeline's own of the same name.
    pub headers: Arc<HeaderMap>,
    /// The longest one try may take (per-call options; else the transport's own timeout).
    pub try_timeout: Option<Duration>,
    /// The longest a whole send may take, retries and their delays included (per-call options).
    pub timeout: Option<Duration>,
    /// Every request may be sent again after a connection error, POSTs included: a credential's token
    /// requests, which change nothing (a second token at worst). Off for the vault's requests, where a
    /// POST or PATCH that got no response may have been applied (azure-core's rule).
    pub resend_any: bool,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("transport", &self.transport)
            .field("retry", &self.retry)
            .field("auth", &self.auth.is_some())
            .field("logging", &self.logging)
            .field("headers", &logging::redacted_headers(&self.headers))
            .field("try_timeout", &self.try_timeout)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Pipeline {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        retry: RetryOptions,
        auth: Option<Arc<ChallengeAuth>>,
        logging: bool,
    ) -> Self {
        Pipeline {
            transport,
            retry,
            auth,
            logging,
            headers: Arc::new(HeaderMap::new()),
            try_timeout: None,
            timeout: None,
            resend_any: false,
        }
    }

    /// A pipeline for token requests ([`Pipeline::resend_any`]).
    pub(crate) fn for_tokens(transport: Arc<dyn Transport>, retry: RetryOptions) -> Self {
        Pipeline {
            resend_any: true,
            ..Pipeline::new(transport, retry, None, false)
        }
    }

    async fn send_once(&self, mut req: Request) -> Result<Response> {
        if req.timeout.is_none() {
            req.timeout = self.try_timeout;
        }
        logging::log_request(&req, self.logging);
        let start = Instant::now();
        // The built-in transport applies `req.timeout` itself; this bounds any other transport too.
        let result = match req.timeout {
            Some(limit) => match tokio::time::timeout(limit, self.transport.send(&req)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "request timed out after {limit:?} ({})",
                        logging::redacted_url(&req.url)
                    ),
                )),
            },
            None => self.transport.send(&req).await,
        };
        match &result {
            Ok(resp) => logging::log_response(&req, resp, start.elapsed(), self.logging),
            Err(e) => tracing::info!(
                target: logging::TARGET,
                method = %req.method,
                url = %logging::redacted_url(&req.url),
                elapsed_ms = start.elapsed().as_millis() as u64,
                error = %e,
                "no response"
            ),
        }
        result
    }

    async fn send_authorized(&self, req: &Request) -> Result<Response> {
        match &self.auth {
            Some(auth) => auth.send(req, |r| self.send_once(r)).await,
            None => self.send_once(req.clone()).await,
        }
    }

    /// Send `req` (absolute URL) and return the final response, whatever its status.
    pub(crate) async fn send(&self, req: Request) -> Result<Response> {
        let Some(limit) = self.timeout else {
            return self.send_with_retries(req, None).await;
        };
        let url = logging::redacted_url(&req.url);
        // A timeout too long to be a time (`Duration::MAX`) is no timeout.
        let Some(deadline) = tokio::time::Instant::now().checked_add(limit) else {
            return self.send_with_retries(req, None).await;
        };
        match tokio::time::timeout_at(deadline, self.send_with_retries(req, Some(deadline))).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::new(
                ErrorKind::Connection,
                format!("the call did not complete within its timeout of {limit:?} ({url})"),
            )),
        }
    }

    /// Send with the retry policy. A delay after an error status that would end after `deadline` (the call's
    /// timeout) is not waited: the response is returned at once (a 429 stays a 429, not a timeout), and so is
    /// one the server asks for (`Retry-After`) that is longer than `max_delay` (retrying sooner than asked
    /// would only be throttled again).
    async fn send_with_retries(
        &self,
        mut req: Request,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response> {
        if !req.headers.contains_key(http::header::ACCEPT) {
            req.headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&request_id()) {
            req.headers.insert("x-ms-client-request-id", v);
        }
        // The caller's headers replace ours of the same name (a caller's x-ms-client-request-id is sent as is).
        for name in self.headers.keys() {
            req.headers.remove(name);
        }
        for (name, value) in self.headers.iter() {
            req.headers.append(name, value.clone());
        }
        let mut attempt = 0u32;
        loop {
            let result = self.send_authorized(&req).await;
            let delay = match &result {
                Ok(resp) if retry::retry_status(resp.status, &req.method, &resp.headers) => {
                    match retry::retry_after(&resp.headers) {
                        Some(asked) if asked > self.retry.max_delay => return result,
                        Some(asked) => asked,
                        None => self.retry.backoff(attempt),
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::Connection
                        && (self.resend_any || retry::retry_connection_error(&req.method)) =>
                {
                    if e.is_permanent() || e.message().contains("the client is closed") {
                        return result;
                    }
                    self.retry.backoff(attempt)
                }
                _ => return result,
            };
            if attempt >= self.retry.max_retries {
                return result;
            }
            let delay = delay.min(self.retry.max_delay);
            // A response is returned rather than lost to the timeout; a connection error waits on, and the
            // call ends as timed out (what its caller set a timeout for).
            let past_deadline =
                |d| (tokio::time::Instant::now().checked_add(delay)).is_none_or(|end| end >= d);
            if result.is_ok() && deadline.is_some_and(past_deadline) {
                return result;
            }
            // At INFO under its own target, so that an application can tell its user why a call waits (a 429's
            // `Retry-After` can be many seconds) without turning on the HTTP log.
            let url = logging::redacted_url(&req.url);
            match &result {
                Ok(resp) => tracing::info!(
                    target: RETRY_TARGET,
                    url = %url,
                    method = %req.method,
                    status = resp.status.as_u16(),
                    retry = attempt + 1,
                    max_retries = self.retry.max_retries,
                    delay_ms = delay.as_millis() as u64,
                    "retrying after an error status"
                ),
                Err(e) => tracing::info!(
                    target: RETRY_TARGET,
                    url = %url,
                    method = %req.method,
                    // Whether the failed try may have reached the service.
                    sent = !e.is_request_unsent(),
                    error = %e,
                    retry = attempt + 1,
                    max_retries = self.retry.max_retries,
                    delay_ms = delay.as_millis() as u64,
                    "retrying after a connection error"
                ),
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids() {
        let a = request_id();
        assert_eq!(a.len(), 36);
        assert_ne!(a, request_id());
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
