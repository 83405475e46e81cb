//! Request/response logging with `tracing`, target `keyvault_secrets::http`, as azure-core's
//! `HttpLoggingPolicy` and `NetworkTraceLoggingPolicy` do in Python:
//!
//! - always, at INFO: the request's method, URL and headers; the response's status, time taken and headers.
//! - with `logging_enable` (client or call), also at DEBUG: the same with the body.
//!
//! In every line, a query parameter's value outside [`ALLOWED_QUERY_PARAMS`] (e.g. a `$skiptoken`) and a
//! header's value outside [`ALLOWED_HEADERS`] (e.g. `Authorization`) are `REDACTED`; a body is JSON with every
//! secret field `REDACTED` (secret values, tokens, client secrets, passwords), or only its size. Unlike
//! Python's detailed mode, nothing is ever logged unredacted.

use crate::http::{HeaderMap, Request, Response};
use std::time::Duration;

/// Headers whose values are logged (azure-core's default allow-list, and Key Vault's `x-ms-keyvault-*`).
pub(crate) const ALLOWED_HEADERS: &[&str] = &[
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

/// Query parameters whose values are logged (compared without case, after percent-decoding). The Key Vault
/// clients of the other SDKs allow `api-version`; `maxresults` is the page size. Everything else — the
/// `$skiptoken` of a next link, IMDS's `resource` and `client_id` — is `REDACTED`.
pub(crate) const ALLOWED_QUERY_PARAMS: &[&str] = &["api-version", "maxresults"];

/// The tracing target of every HTTP line.
pub(crate) const TARGET: &str = "keyvault_secrets::http";

/// A URL as it may be logged: the value of each query parameter outside [`ALLOWED_QUERY_PARAMS`] replaced
/// by `REDACTED`, user information (`user:password@`) likewise, and the fragment dropped.
pub(crate) fn redacted_url(url: &str) -> String {
    let url = url.split('#').next().unwrap_or_default();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if !allowed_query_param(key) => format!("{key}=REDACTED"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn allowed_query_param(raw_key: &str) -> bool {
    let key: String = form_urlencoded::parse(raw_key.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default();
    ALLOWED_QUERY_PARAMS
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&key))
}

/// `scheme://user:pass@host/…` → `scheme://REDACTED@host/…`.
fn redact_userinfo(base: &str) -> String {
    if let Some((scheme, rest)) = base.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://REDACTED@{}", &rest[at + 1..]);
        }
    }
    base.to_string()
}

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
                } else if let (true, serde_json::Value::Array(items)) = (is_secret_key(k), &mut *v)
                {
                    redact_secret_list(items);
                } else if let (true, serde_json::Value::String(link)) =
                    (k.eq_ignore_ascii_case("nextLink"), &*v)
                {
                    // A next page's URL: its `$skiptoken` as the URLs of requests are logged.
                    *v = serde_json::Value::String(redacted_url(link));
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A list under a key [`is_secret_key`] names (a listing's `value`, a principal's `secrets`): its objects are
/// looked into, and anything else in it (at any depth of lists) is replaced.
fn redact_secret_list(items: &mut [serde_json::Value]) {
    for item in items {
        match item {
            serde_json::Value::Object(_) => redact(item),
            serde_json::Value::Array(inner) => redact_secret_list(inner),
            serde_json::Value::Null => {}
            _ => *item = serde_json::Value::String("REDACTED".into()),
        }
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
    tracing::info!(
        target: TARGET,
        method = %req.method,
        url = %redacted_url(&req.url),
        headers = ?redacted_headers(&req.headers),
        "request"
    );
    if detailed {
        tracing::debug!(
            target: TARGET,
            method = %req.method,
            url = %redacted_url(&req.url),
            headers = ?redacted_headers(&req.headers),
            body = %req.body.as_deref().map(redacted_body).unwrap_or_default(),
            "request"
        );
    }
}

pub(crate) fn log_response(req: &Request, resp: &Response, elapsed: Duration, detailed: bool) {
    tracing::info!(
        target: TARGET,
        method = %req.method,
        url = %redacted_url(&req.url),
        status = resp.status.as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        headers = ?redacted_headers(&resp.headers),
        "response"
    );
    if detailed {
        tracing::debug!(
            target: TARGET,
            method = %req.method,
            url = %redacted_url(&req.url),
            status = resp.status.as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            headers = ?redacted_headers(&resp.headers),
            body = %redacted_body(&resp.body),
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
        // Scalars in a list under such a key are replaced too; its objects are looked into (a86).
        let s = redacted_body(
            br#"{"clientSecrets":["CANARY-6",["CANARY-7"],null],"value":[{"id":"a","value":"CANARY-8"}]}"#,
        );
        assert!(!s.contains("CANARY"), "{s}");
        assert!(s.contains(r#""id":"a""#), "{s}");
    }

    #[test]
    fn bodies_are_redacted() {
        let b = br#"{"value":"hunter2","id":"x","attributes":{"enabled":true},"list":{"value":[{"id":"a"}]}}"#;
        let s = redacted_body(b);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains(r#""value":"REDACTED""#), "{s}");
        assert!(s.contains(r#""id":"a""#), "{s}");
        let s = redacted_body(
            br#"{"value":[],"nextLink":"https://v/secrets?api-version=7.6&$skiptoken=SKIP-CANARY&maxresults=1"}"#,
        );
        assert!(
            !s.contains("SKIP-CANARY") && s.contains("$skiptoken=REDACTED&maxresults=1"),
            "{s}"
        );
        let s = redacted_body(br#"{"access_token":"eyJ","expires_in":3599}"#);
        assert!(!s.contains("eyJ"));
        assert_eq!(
            redacted_body(b"client_secret=abc&x=y"),
            "<21 bytes, not JSON, not logged>"
        );
    }

    #[test]
    fn query_values_are_allow_listed() {
        assert_eq!(
            redacted_url(
                "https://v.vault.azure.net/secrets?api-version=2025-07-01&$skiptoken=eyJTOKEN&maxresults=2"
            ),
            "https://v.vault.azure.net/secrets?api-version=2025-07-01&$skiptoken=REDACTED&maxresults=2"
        );
        // Case and percent-encoding of the name do not matter; a name without a value stays as it is.
        assert_eq!(
            redacted_url(
                "https://h/p?API-Version=7.4&%24skiptoken=x&api%2Dversion=7.5&flag&resource=https%3A%2F%2Fv"
            ),
            "https://h/p?API-Version=7.4&%24skiptoken=REDACTED&api%2Dversion=7.5&flag&resource=REDACTED"
        );
        assert_eq!(
            redacted_url("https://user:pa55@h:8443/p?client_id=c#frag"),
            "https://REDACTED@h:8443/p?client_id=REDACTED"
        );
        assert_eq!(redacted_url("https://h/p"), "https://h/p");
        assert_eq!(redacted_url("/p?x=1"), "/p?x=REDACTED");
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
