//! Retry policy, after azure-core's `RetryPolicy` (Python): the statuses 408, 429, 500, 502, 503, 504 and
//! 506–998 and connection errors are retried; the first retry is immediate, then the delay doubles from
//! `initial_delay` (±20 % jitter), at most `max_delay`; `retry-after-ms`, `x-ms-retry-after-ms` and
//! `Retry-After` are honoured (one longer than `max_delay` ends the retries: the response is returned). See
//! [`RetryOptions`] for the differences from Python.

use crate::http::{HeaderMap, Method, StatusCode};
use std::time::{Duration, SystemTime};

/// The tracing target of the INFO event logged before each retry (fields: `url` (redacted), `status` or
/// `error`, `retry` (1, 2, …), `max_retries`, `delay_ms`), e.g. to tell a user that a throttled (429) call
/// is waiting.
pub const RETRY_LOG_TARGET: &str = "keyvault_secrets::retry";

/// How the client retries. The defaults are azure-core's (Python `RetryPolicy`) where this type can say the
/// same thing:
///
/// | azure-core | default there | here |
/// |---|---|---|
/// | `retry_total` / `retry_connect` / `retry_read` / `retry_status` | 10 / 3 / 3 / 3 | one budget, `max_retries`: 3 |
/// | `retry_backoff_factor` | 0.8 s | `initial_delay`: 800 ms |
/// | `retry_backoff_max` | 120 s | `max_delay`: 120 s |
/// | `retry_mode` | exponential: 0, then factor × 2ⁿ⁻¹ | the same (0, 1.6 s, 3.2 s, …), with ±20 % jitter |
/// | `Retry-After` | honoured, uncapped | honoured up to `max_delay`; a longer one returns the response at once |
/// | `timeout` (whole call) | 7 days | none by default; per call: [`CallOptions::timeout`](crate::CallOptions::timeout) |
///
/// The differences are deliberate: one budget instead of four counters (azure-core's total of 10 is only
/// reachable by mixing connection, read and status failures; any one kind stops at 3, as here); jitter so that
/// clients do not retry their own failures in lockstep (a delay the server asks for is kept as it is, as
/// azure-core does); and a server's `Retry-After` cannot stall a call for longer than `max_delay`: the
/// caller gets the 429 (or 503) at once instead, with its `Retry-After`. No retry waits past the call's
/// timeout ([`CallOptions::timeout`](crate::CallOptions::timeout)) after an error status either: the response
/// is returned when the next delay would reach it.
///
/// Which requests are retried (as azure-core): 408, 429, 500, 502, 503, 504 and 506–998 for GET, PUT, DELETE
/// and HEAD; POST and PATCH only on 500, 503 and 504. A response carrying `Retry-After` (any error status) is
/// retried for every method. Connection errors (no response, including a timed-out try) are retried for every
/// method but POST and PATCH, except a credential's token requests (POSTs that change nothing), which are
/// retried after a connection error too. A server certificate the client refuses (an untrusted CA, a name it is
/// not for, expired) is not retried, for any method: every retry would meet the same certificate (azure-core
/// retries it like any connection error). One difference: 429 is retried for POST and PATCH even without `Retry-After`
/// (the service refused the request without processing it; Key Vault always sends `Retry-After` with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOptions {
    /// Retries after the first try (0 disables retrying). Default 3.
    pub max_retries: u32,
    /// The delay before the second retry is twice this, and it doubles from there (the first retry is
    /// immediate); ±20 % jitter. Default 800 ms (azure-core's `retry_backoff_factor`).
    pub initial_delay: Duration,
    /// Longest delay between tries; a `Retry-After` asking for longer ends the retries (the response is
    /// returned). Default 120 s.
    pub max_delay: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_retries: 3,
            initial_delay: Duration::from_millis(800),
            max_delay: Duration::from_secs(120),
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

    /// The backoff before retry number `attempt` (0-based), with jitter: 0 for the first retry, then
    /// `initial_delay × 2^attempt` (azure-core: `backoff_factor × 2^(retries − 1)`, 0 for the first), at most
    /// `max_delay`. Never panics, whatever the durations (`Duration::MAX` included) and the attempt.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_with(attempt, crate::pipeline::random_unit())
    }

    /// [`RetryOptions::backoff`] with the random number in [0, 1] given (tests try the extremes).
    fn backoff_with(&self, attempt: u32, unit: f64) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        // Capped before the jitter, so that the float arithmetic only ever sees a delay that fits; the
        // jittered delay is capped again (1.2 × the cap may not fit, or be longer than the cap).
        let base = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max_delay);
        let jitter = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * jitter)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Whether a response with this status is worth another try (azure-core's `is_retry`, see [`RetryOptions`]).
pub(crate) fn retry_status(status: StatusCode, method: &Method, headers: &HeaderMap) -> bool {
    let code = status.as_u16();
    if code < 400 {
        return false;
    }
    if headers.contains_key(http::header::RETRY_AFTER) || code == 429 {
        return true;
    }
    if *method == Method::POST || *method == Method::PATCH {
        return matches!(code, 500 | 503 | 504);
    }
    matches!(code, 408 | 500 | 502 | 503 | 504 | 506..=998)
}

/// Whether a request that got no response may be sent again: every method but POST and PATCH (azure-core's
/// method allow-list).
pub(crate) fn retry_connection_error(method: &Method) -> bool {
    *method != Method::POST && *method != Method::PATCH
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
        let none = HeaderMap::new();
        let r = |code: u16, m: &Method| retry_status(StatusCode::from_u16(code).unwrap(), m, &none);
        for code in [408, 429, 500, 502, 503, 504, 506, 599, 600, 998] {
            assert!(r(code, &Method::GET), "{code}");
            assert!(r(code, &Method::PUT), "{code}");
            assert!(r(code, &Method::DELETE), "{code}");
        }
        for code in [200, 204, 400, 401, 403, 404, 409, 501, 505, 999] {
            assert!(!r(code, &Method::GET), "{code}");
        }
        for m in [Method::POST, Method::PATCH] {
            for code in [429, 500, 503, 504] {
                assert!(r(code, &m), "{m} {code}");
            }
            for code in [408, 502, 506, 404] {
                assert!(!r(code, &m), "{m} {code}");
            }
        }
        // A Retry-After makes any error status retryable, for any method (azure-core).
        let mut after = HeaderMap::new();
        after.insert("retry-after", HeaderValue::from_static("1"));
        assert!(retry_status(StatusCode::BAD_GATEWAY, &Method::POST, &after));
        assert!(retry_status(StatusCode::CONFLICT, &Method::GET, &after));
        assert!(!retry_status(StatusCode::OK, &Method::GET, &after));
        assert!(retry_connection_error(&Method::GET));
        assert!(retry_connection_error(&Method::DELETE));
        assert!(!retry_connection_error(&Method::POST));
        assert!(!retry_connection_error(&Method::PATCH));
    }

    #[test]
    fn defaults_are_azure_cores() {
        let d = RetryOptions::default();
        assert_eq!(d.max_retries, 3);
        assert_eq!(d.initial_delay, Duration::from_millis(800));
        assert_eq!(d.max_delay, Duration::from_secs(120));
        // 0, then 1.6 s and 3.2 s (±20 %).
        assert_eq!(d.backoff(0), Duration::ZERO);
        let d1 = d.backoff(1);
        assert!(
            d1 >= Duration::from_millis(1280) && d1 <= Duration::from_millis(1920),
            "{d1:?}"
        );
        let d2 = d.backoff(2);
        assert!(
            d2 >= Duration::from_millis(2560) && d2 <= Duration::from_millis(3840),
            "{d2:?}"
        );
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
        assert_eq!(o.backoff(0), Duration::ZERO);
        let d1 = o.backoff(1);
        assert!(
            d1 >= Duration::from_millis(160) && d1 <= Duration::from_millis(240),
            "{d1:?}"
        );
        let d2 = o.backoff(2);
        assert!(
            d2 >= Duration::from_millis(320) && d2 <= Duration::from_millis(480),
            "{d2:?}"
        );
        // Capped, then jittered (−20 %), then capped again.
        let d10 = o.backoff(10);
        assert!(
            d10 >= Duration::from_millis(800) && d10 <= Duration::from_secs(1),
            "{d10:?}"
        );
        assert_eq!(o.backoff_with(10, 1.0), Duration::from_secs(1));
    }

    /// The backoff never panics: `Duration::MAX` anywhere, a cap below the initial delay, zeros, any attempt
    /// number (a huge `max_retries` reaches them all), and both ends of the jitter.
    #[test]
    fn backoff_never_panics_on_extreme_durations() {
        let ms = Duration::from_millis;
        let durations = [
            Duration::ZERO,
            Duration::from_nanos(1),
            ms(10),
            ms(800),
            Duration::from_secs(u64::MAX / 4),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ];
        let attempts = [0, 1, 2, 3, 19, 20, 21, 63, 64, 1000, u32::MAX - 1, u32::MAX];
        for initial_delay in durations {
            for max_delay in durations {
                let o = RetryOptions {
                    max_retries: u32::MAX,
                    initial_delay,
                    max_delay,
                };
                for attempt in attempts {
                    for unit in [0.0, 0.5, 0.999_999, 1.0] {
                        let d = o.backoff_with(attempt, unit);
                        assert!(d <= max_delay, "{o:?} {attempt} {unit}: {d:?}");
                        if attempt == 0 {
                            assert_eq!(d, Duration::ZERO);
                        }
                    }
                    assert!(o.backoff(attempt) <= max_delay);
                }
            }
        }
        // The auditor's case: the delay is the cap, whatever the jitter.
        let o = RetryOptions {
            max_retries: 2,
            initial_delay: Duration::MAX,
            max_delay: ms(10),
        };
        assert_eq!(o.backoff_with(1, 0.0), ms(8));
        assert_eq!(o.backoff_with(1, 1.0), ms(10));
        // A cap below the initial delay: the cap (−20 % at most).
        let o = RetryOptions {
            max_retries: 5,
            initial_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(o.backoff_with(1, 1.0), Duration::from_secs(1));
        assert_eq!(o.backoff_with(4, 0.0), ms(800));
        // No cap at all: Duration::MAX is the longest delay, not an overflow.
        let o = RetryOptions {
            max_retries: 5,
            initial_delay: Duration::MAX,
            max_delay: Duration::MAX,
        };
        assert_eq!(o.backoff_with(3, 1.0), Duration::MAX);
        assert!(o.backoff_with(3, 0.0) > Duration::from_secs(u64::MAX / 2));
        // Zero initial delay: retries at once.
        let o = RetryOptions {
            max_retries: u32::MAX,
            initial_delay: Duration::ZERO,
            max_delay: Duration::MAX,
        };
        assert_eq!(o.backoff_with(u32::MAX, 1.0), Duration::ZERO);
    }
}
