//! Retry policy: exponential backoff with jitter on 408, 429 and 5xx (not 501/505) and on connection
//! errors (idempotent requests only), honouring `retry-after-ms`, `x-ms-retry-after-ms` and `Retry-After`.

use crate::http::{HeaderMap, Method, StatusCode};
use std::time::{Duration, SystemTime};

/// How the client retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOptions {
    /// Retries after the first try (0 disables retrying). Default 4.
    pub max_retries: u32,
    /// Delay before the first retry; doubled each time, ±20 % jitter. Default 800 ms.
    pub initial_delay: Duration,
    /// Longest delay between tries, including one asked for by `Retry-After`. Default 60 s.
    pub max_delay: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_retries: 4,
            initial_delay: Duration::from_millis(800),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryOptions {
    /// No retries at all.
    pub fn none() -> Self {
        RetryOptions {
            max_retries: 0,
            ..Default::default()
        }
    }

    /// The backoff before retry number `attempt` (0-based), with jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(20)));
        let jitter = 0.8 + 0.4 * crate::pipeline::random_unit();
        base.mul_f64(jitter).min(self.max_delay)
    }
}

/// Whether a response with this status is worth another try. 429 and 503 mean the request was not
/// processed, so they are retried for every method; the other statuses only for idempotent methods.
pub(crate) fn retry_status(status: StatusCode, method: &Method) -> bool {
    match status.as_u16() {
        429 | 503 => true,
        408 | 500 | 502 | 504 | 506..=599 => *method != Method::POST,
        _ => false,
    }
}

/// The delay the server asked for, if any. A delay too long for a `Duration` (say `Retry-After: 1e20`) is the
/// longest one, which the caller caps at its maximum delay: the server's header never panics the client.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs = |s: f64| {
        (s.is_finite() && s >= 0.0).then(|| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(delay) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|ms| secs(ms / 1000.0))
        {
            return Some(delay);
        }
    }
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        return secs(s);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeaderValue;

    #[test]
    fn statuses() {
        assert!(retry_status(StatusCode::TOO_MANY_REQUESTS, &Method::POST));
        assert!(retry_status(StatusCode::SERVICE_UNAVAILABLE, &Method::GET));
        assert!(retry_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            &Method::PUT
        ));
        assert!(!retry_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            &Method::POST
        ));
        assert!(retry_status(StatusCode::REQUEST_TIMEOUT, &Method::GET));
        assert!(!retry_status(StatusCode::NOT_IMPLEMENTED, &Method::GET));
        assert!(!retry_status(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            &Method::GET
        ));
        assert!(!retry_status(StatusCode::NOT_FOUND, &Method::GET));
        assert!(!retry_status(StatusCode::UNAUTHORIZED, &Method::GET));
    }

    #[test]
    fn huge_retry_after_is_the_longest_delay_not_a_panic() {
        for (name, value) in [
            ("retry-after", "1e20"),
            ("retry-after", "1e308"),
            ("retry-after-ms", "1e25"),
            ("x-ms-retry-after-ms", "18446744073709551616000"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            assert_eq!(retry_after(&h), Some(Duration::MAX), "{name}: {value}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        h.insert("retry-after-ms", HeaderValue::from_static("100"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(100)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let o = RetryOptions {
            max_retries: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let d0 = o.backoff(0);
        assert!(
            d0 >= Duration::from_millis(80) && d0 <= Duration::from_millis(120),
            "{d0:?}"
        );
        let d2 = o.backoff(2);
        assert!(
            d2 >= Duration::from_millis(320) && d2 <= Duration::from_millis(480),
            "{d2:?}"
        );
        assert_eq!(o.backoff(10), Duration::from_secs(1));
    }
}
