//! Notes on standard error about what the client is waiting for: a request throttled by the vault (HTTP 429)
//! is retried after the time the vault names, which can be many seconds of silence otherwise; a request
//! that failed with a retryable status (500, 503, …) or a connection error is retried after a back-off.

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Prints `note: …` for each retry (the client's `RETRY_LOG_TARGET` events).
pub struct RetryNotes;

/// Whether a secret's DELETE was retried after a try the vault may have applied (a connection lost after
/// the request was sent, or an error status other than 429, which a gateway may have sent after forwarding
/// it) — not a token request's retry, nor one after a 429 (refused) or a connection never made.
static RETRIED_AFTER_MAYBE_APPLIED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether this process retried a request after a try the vault may have applied (see [`RetryNotes`]).
pub fn retried_after_a_try_that_may_have_been_applied() -> bool {
    RETRIED_AFTER_MAYBE_APPLIED.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Default)]
struct Retry {
    url: String,
    method: String,
    /// For a connection error: whether the failed try may have reached the vault.
    sent: Option<bool>,
    status: Option<u64>,
    /// A connection error's description (no status then).
    error: Option<String>,
    retry: u64,
    max_retries: u64,
    delay_ms: u64,
}

impl Visit for Retry {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "status" => self.status = Some(value),
            "retry" => self.retry = value,
            "max_retries" => self.max_retries = value,
            "delay_ms" => self.delay_ms = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(v) = u64::try_from(value) {
            self.record_u64(field, v);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "sent" {
            self.sent = Some(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "url" => self.url = format!("{value:?}"),
            "method" => self.method = format!("{value:?}"),
            "error" => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl Retry {
    /// A retry of a secret's DELETE after a try the vault may have applied.
    fn may_have_applied_a_delete(&self) -> bool {
        let path = self.url.split('?').next().unwrap_or_default();
        let deletes_a_secret = self.method == "DELETE" && path.contains("/secrets/");
        let applied = match (self.status, self.sent) {
            (Some(status), _) => status != 429,
            (None, Some(sent)) => sent,
            (None, None) => false,
        };
        deletes_a_secret && applied
    }

    fn note(&self) -> Option<String> {
        // The URL without its query (api-version and the like say nothing here).
        let url = self.url.split('?').next().unwrap_or_default();
        let url = url.trim_end_matches('/');
        let (retry, of, secs) = (self.retry, self.max_retries, self.delay_ms as f64 / 1000.0);
        match (self.status, &self.error) {
            (Some(429), _) => Some(format!(
                "note: {url} answered 429 (too many requests): waiting {secs:.1} s before retry {retry} of {of}"
            )),
            (Some(status), _) => {
                let reason = match status {
                    408 => " (request timeout)",
                    500 => " (internal server error)",
                    502 => " (bad gateway)",
                    503 => " (service unavailable)",
                    504 => " (gateway timeout)",
                    _ => "",
                };
                Some(format!(
                    "note: {url} answered {status}{reason}: retry {retry} of {of} in {secs:.1} s"
                ))
            }
            (None, Some(error)) => {
                // The client's text repeats the URL (`connection error: request failed (URL): cause`, `…
                // request timed out (URL): cause`): the cause is what is new.
                let cause = error
                    .split_once(" (https://")
                    .or_else(|| error.split_once(" (http://"))
                    .and_then(|(_, rest)| rest.split_once("): "))
                    .map_or(error.as_str(), |(_, cause)| cause);
                Some(format!(
                    "note: {url} failed ({cause}): retry {retry} of {of} in {secs:.1} s"
                ))
            }
            (None, None) => None,
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for RetryNotes {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut retry = Retry::default();
        event.record(&mut retry);
        if retry.may_have_applied_a_delete() {
            RETRIED_AFTER_MAYBE_APPLIED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(note) = retry.note() {
            stderr_line!("{}", crate::render::terminal_safe(&note));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Retry;

    /// Only a secret's DELETE retried after a try the vault may have applied counts: not a token request's
    /// retry, not a 429, not a connection that was never made.
    #[test]
    fn a_delete_that_may_have_been_applied_is_told() {
        let mut r = Retry {
            url: "https://v.example/secrets/a?api-version=7.6".into(),
            method: "DELETE".into(),
            status: Some(503),
            ..Default::default()
        };
        assert!(r.may_have_applied_a_delete());
        r.status = Some(429);
        assert!(!r.may_have_applied_a_delete());
        r.status = None;
        r.sent = Some(true);
        assert!(r.may_have_applied_a_delete());
        r.sent = Some(false);
        assert!(!r.may_have_applied_a_delete());
        r.sent = None;
        r.status = Some(503);
        r.method = "POST".into();
        r.url = "https://login.example/t/oauth2/v2.0/token".into();
        assert!(!r.may_have_applied_a_delete());
        r.method = "GET".into();
        r.url = "https://v.example/deletedsecrets/a".into();
        assert!(!r.may_have_applied_a_delete());
    }

    #[test]
    fn every_retry_is_noted() {
        let mut r = Retry {
            url: "https://v.example/secrets/a?api-version=7.6".into(),
            status: Some(429),
            error: None,
            retry: 1,
            max_retries: 3,
            delay_ms: 9500,
            ..Default::default()
        };
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a answered 429 (too many requests): waiting 9.5 s before retry 1 of 3"
        );
        r.status = Some(503);
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a answered 503 (service unavailable): retry 1 of 3 in 9.5 s"
        );
        r.status = Some(599);
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a answered 599: retry 1 of 3 in 9.5 s"
        );
        r.status = None;
        assert_eq!(r.note(), None);
        r.error = Some("cannot connect: connection refused".into());
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a failed (cannot connect: connection refused): retry 1 of 3 in 9.5 s"
        );
        r.error = Some(
            "connection error: request failed (https://v.example/secrets/a?api-version=7.6): tcp connect error"
                .into(),
        );
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a failed (tcp connect error): retry 1 of 3 in 9.5 s"
        );
        r.error = Some(
            "connection error: request timed out (https://v.example/secrets/a?x=1): operation timed out"
                .into(),
        );
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a failed (operation timed out): retry 1 of 3 in 9.5 s"
        );
    }
}
