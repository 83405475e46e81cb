//! Request/response logging with `tracing`: headers outside an allow-list, secret values, tokens and
//! client secrets never reach a log line.

use crate::http::{HeaderMap, Request, Response};
use std::time::Duration;

const ALLOWED_HEADERS: &[&str] = &[
    "accept",
    "cache-control",
    "content-length",
    "content-type",
    "date",
    "etag",
    "expires",
    "pragma",
    "retry-after",
    "retry-after-ms",
    "user-agent",
    "www-authenticate",
    "x-ms-client-request-id",
    "x-ms-error-code",
    "x-ms-keyvault-network-info",
    "x-ms-keyvault-region",
    "x-ms-keyvault-service-version",
    "x-ms-request-id",
    "x-ms-retry-after-ms",
];

/// Whether a JSON key's value is never logged: `value`, and any key that names a secret, token, password or
/// credential in any spelling (`client_secret`, `clientSecret`, `accessToken`, `refresh_token`, …). A pattern,
/// not a list, so that a field added later (or an admin API's) is covered too.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "value"
        || ["secret", "token", "password", "credential"]
            .iter()
            .any(|word| key.contains(word))
}

/// Headers as `name: value` pairs, with every header outside the allow-list shown as `REDACTED`.
pub(crate) fn redacted_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let name = k.as_str();
            let value = if ALLOWED_HEADERS.contains(&name) {
                v.to_str().unwrap_or("<binary>").to_string()
            } else {
                "REDACTED".to_string()
            };
            (name.to_string(), value)
        })
        .collect()
}

fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !v.is_array() && !v.is_null() {
                    *v = serde_json::Value::String("REDACTED".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A body as it may be logged: JSON with secret fields replaced, anything else only by its size.
pub(crate) fn redacted_body(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            redact(&mut v);
            v.to_string()
        }
        Err(_) => format!("<{} bytes, not JSON, not logged>", body.len()),
    }
}

pub(crate) fn log_request(req: &Request, detailed: bool) {
    if detailed {
        tracing::debug!(
            target: "keyvault_secrets::http",
            method = %req.method,
            url = %req.url,
            headers = ?redacted_headers(&req.headers),
            body = %req.body.as_deref().map(redacted_body).unwrap_or_default(),
            "request"
        );
    } else {
        tracing::trace!(target: "keyvault_secrets::http", method = %req.method, url = %req.url, "request");
    }
}

pub(crate) fn log_response(req: &Request, resp: &Response, elapsed: Duration, detailed: bool) {
    if detailed {
        tracing::debug!(
            target: "keyvault_secrets::http",
            method = %req.method,
            url = %req.url,
            status = resp.status.as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            headers = ?redacted_headers(&resp.headers),
            body = %redacted_body(&resp.body),
            "response"
        );
    } else {
        tracing::debug!(
            target: "keyvault_secrets::http",
            method = %req.method,
            url = %req.url,
            status = resp.status.as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            "response"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeaderValue;

    #[test]
    fn secret_keys_in_any_spelling_are_redacted() {
        let b = br#"{"clientId":"app","clientSecret":"CANARY-1","secrets":[{"client_secret":"CANARY-2"}],"refreshToken":"CANARY-3","Password":"CANARY-4","nested":{"credentialValue":"CANARY-5"}}"#;
        let s = redacted_body(b);
        assert!(!s.contains("CANARY"), "{s}");
        assert!(s.contains(r#""clientId":"app""#), "{s}");
    }

    #[test]
    fn bodies_are_redacted() {
        let b = br#"{"value":"hunter2","id":"x","attributes":{"enabled":true},"list":{"value":[{"id":"a"}]}}"#;
        let s = redacted_body(b);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains(r#""value":"REDACTED""#), "{s}");
        assert!(s.contains(r#""id":"a""#), "{s}");
        let s = redacted_body(br#"{"access_token":"eyJ","expires_in":3599}"#);
        assert!(!s.contains("eyJ"));
        assert_eq!(
            redacted_body(b"client_secret=abc&x=y"),
            "<21 bytes, not JSON, not logged>"
        );
    }

    #[test]
    fn headers_are_allow_listed() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer eyJ"));
        h.insert("x-ms-request-id", HeaderValue::from_static("r1"));
        let v = redacted_headers(&h);
        assert!(v.contains(&("authorization".into(), "REDACTED".into())));
        assert!(v.contains(&("x-ms-request-id".into(), "r1".into())));
    }
}
