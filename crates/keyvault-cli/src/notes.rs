//! Notes on standard error about what the client is waiting for: a request throttled by the vault (HTTP 429)
//! is retried after the time the vault names, which can be many seconds of silence otherwise.

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Prints `note: …` for each retry of a throttled request (the client's `RETRY_LOG_TARGET` events).
pub struct ThrottleNotes;

#[derive(Default)]
struct Retry {
    url: String,
    status: Option<u64>,
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

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "url" {
            self.url = format!("{value:?}");
        }
    }
}

impl Retry {
    fn note(&self) -> Option<String> {
        if self.status != Some(429) {
            return None;
        }
        // The URL without its query (api-version and the like say nothing here).
        let url = self.url.split('?').next().unwrap_or_default();
        let url = url.trim_end_matches('/');
        Some(format!(
            "note: {url} answered 429 (too many requests): waiting {:.1} s before retry {} of {}",
            self.delay_ms as f64 / 1000.0,
            self.retry,
            self.max_retries
        ))
    }
}

impl<S: tracing::Subscriber> Layer<S> for ThrottleNotes {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut retry = Retry::default();
        event.record(&mut retry);
        if let Some(note) = retry.note() {
            stderr_line!("{note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Retry;

    #[test]
    fn only_a_throttled_retry_is_noted() {
        let mut r = Retry {
            url: "https://v.example/secrets/a?api-version=7.6".into(),
            status: Some(429),
            retry: 1,
            max_retries: 3,
            delay_ms: 9500,
        };
        assert_eq!(
            r.note().unwrap(),
            "note: https://v.example/secrets/a answered 429 (too many requests): waiting 9.5 s before retry 1 of 3"
        );
        r.status = Some(503);
        assert_eq!(r.note(), None);
        r.status = None;
        assert_eq!(r.note(), None);
    }
}
