//! The secrets REST API through a real in-process HTTPS server (LocalVault), with a real token from the
//! built-in issuer: every operation, every error path, paging, the soft-delete lifecycle, backup/restore.

use keyvault_server::local::{LocalVault, LocalVaultOptions};
use keyvault_server::vault::ManualClock;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

mod common;

const API: &str = "7.6";

struct Vault {
    lv: LocalVault,
    http: reqwest::Client,
    token: String,
}

async fn token_for(lv: &LocalVault, http: &reqwest::Client) -> String {
    let (status, body) =
        common::request_vault_token(lv, http, lv.client_id(), lv.client_secret()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["expires_in"].is_i64());
    body["access_token"].as_str().unwrap().to_string()
}

impl Vault {
    async fn start() -> Vault {
        Self::start_with(LocalVaultOptions::default()).await
    }

    async fn start_with(options: LocalVaultOptions) -> Vault {
        let lv = LocalVault::start_with(options).await.unwrap();
        let http = common::vault_client(&lv);
        let token = token_for(&lv, &http).await;
        Vault { lv, http, token }
    }

    fn url(&self, path: &str) -> String {
        common::api_url(self.lv.vault_url(), path, API)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(method, &self.url(path), body).await
    }

    async fn raw(&self, method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = self.http.request(method, url).bearer_auth(&self.token);
        common::send_json(req, body).await
    }

    async fn set(&self, name: &str, body: Value) -> Value {
        let (s, b) = self
            .call(Method::PUT, &format!("/secrets/{name}"), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }
}

fn version_of(id: &str) -> String {
    id.rsplit('/').next().unwrap().to_string()
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn requests_without_a_valid_token_get_the_challenge() {
    let v = Vault::start().await;
    let port = v.lv.vault_url().rsplit(':').next().unwrap().to_string();
    let want = format!(
        "Bearer authorization=\"https://127.0.0.1:{port}/keyvault-rs\", resource=\"https://localhost:{port}\""
    );
    // The SDKs' first request: no token and an emptied body.
    for (method, path) in [
        (Method::PUT, "/secrets/a"),
        (Method::GET, "/secrets/a/"),
        (Method::GET, "/secrets"),
        (Method::GET, "/no/such/route"),
        (Method::PUT, "/secrets/bad_name"),
    ] {
        let resp = v
            .http
            .request(
                method,
                format!("{}{path}?api-version=bogus", v.lv.vault_url()),
            )
            .header("content-length", "0")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["www-authenticate"], want.as_str());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Unauthorized");
    }
    for bad in ["garbage", "a.b.c", &format!("{}x", v.token)] {
        let resp = v
            .http
            .get(v.url("/secrets"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().contains_key("www-authenticate"));
    }
}

#[tokio::test]
async fn api_versions() {
    let v = Vault::start().await;
    for ver in keyvault_types::ApiVersion::ALL {
        let url = format!("{}/secrets?api-version={}", v.lv.vault_url(), ver);
        let (s, b) = v.raw(Method::GET, &url, None).await;
        assert_eq!(s, StatusCode::OK, "{ver}: {b}");
        assert_eq!(b["value"], json!([]));
        assert_eq!(b["nextLink"], Value::Null);
    }
    // The JS SDK percent-encodes the parameter name.
    let (s, _) = v
        .raw(
            Method::GET,
            &format!("{}/secrets?api%2Dversion=2026-04-01", v.lv.vault_url()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = v
        .raw(
            Method::GET,
            &format!("{}/secrets?api-version=7.9", v.lv.vault_url()),
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    assert_eq!(
        b["error"]["message"],
        "The specified version (7.9) is not recognized. Consider using the latest supported version (2026-04-01)."
    );
    let (s, b) = v
        .raw(Method::GET, &format!("{}/secrets", v.lv.vault_url()), None)
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
}

#[tokio::test]
async fn set_get_and_versions() {
    let v = Vault::start().await;
    let base = v.lv.vault_url().to_string();
    let b1 = v
        .set(
            "db-Pass",
            json!({"value": "one", "contentType": "text/plain", "tags": {"env": "dev"},
                   "attributes": {"enabled": true, "nbf": 1700000000, "exp": -1}}),
        )
        .await;
    let id1 = b1["id"].as_str().unwrap();
    let ver1 = version_of(id1);
    assert!(
        ver1.len() == 32
            && ver1
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(id1, format!("{base}/secrets/db-Pass/{ver1}"));
    assert_eq!(b1["value"], "one");
    assert_eq!(b1["contentType"], "text/plain");
    assert_eq!(b1["tags"], json!({"env": "dev"}));
    let a = &b1["attributes"];
    assert_eq!(a["enabled"], true);
    assert_eq!(a["nbf"], 1700000000);
    assert_eq!(
        a["exp"], -1,
        "JS sends dates after 2038 as negative numbers"
    );
    assert!(a["created"].is_i64() && a["updated"].is_i64());
    assert_eq!(a["recoveryLevel"], "Recoverable+Purgeable");
    assert_eq!(a["recoverableDays"], 90);

    // A second version, written with other casing: same secret, casing follows the latest write.
    let b2 = v.set("DB-PASS", json!({"value": "two"})).await;
    let ver2 = version_of(b2["id"].as_str().unwrap());
    assert_ne!(ver1, ver2);
    assert!(b2.get("contentType").is_none() && b2.get("tags").is_none());

    for path in ["/secrets/db-pass", "/secrets/db-pass/", "/secrets/Db-Pass/"] {
        let (s, b) = v.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["value"], "two");
        assert_eq!(b["id"], format!("{base}/secrets/DB-PASS/{ver2}"));
    }
    let (s, b) = v
        .call(Method::GET, &format!("/secrets/db-pass/{ver1}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["value"], "one");
    // Version ids compare case-insensitively.
    let (s, _) = v
        .call(
            Method::GET,
            &format!("/secrets/db-pass/{}", ver1.to_uppercase()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, b) = v
        .call(
            Method::GET,
            "/secrets/db-pass/00000000000000000000000000000000",
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    // Key Vault's 404 for a version names name/version.
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "A secret with (name/id) db-pass/00000000000000000000000000000000 was not found in this key vault."
        ),
        "{message}"
    );
    let (s, b) = v
        .call(Method::GET, "/secrets/db-pass/not-a-version", None)
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("A secret with (name/id) db-pass/not-a-version was not found"),
        "{message}"
    );
    let (s, b) = v.call(Method::GET, "/secrets/missing", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("A secret with (name/id) missing was not found")
    );

    // Versions listing: both, versioned ids, no values.
    let (s, b) = v.call(Method::GET, "/secrets/db-pass/versions", None).await;
    assert_eq!(s, StatusCode::OK);
    let ids: BTreeSet<String> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| version_of(i["id"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, BTreeSet::from([ver1.clone(), ver2.clone()]));
    assert!(
        b["value"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i.get("value").is_none())
    );
    let (s, b) = v.call(Method::GET, "/secrets/nobody/versions", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, json!({"value": [], "nextLink": null}));

    // Empty values are values.
    let b = v.set("empty", json!({"value": ""})).await;
    assert_eq!(b["value"], "");
}

#[tokio::test]
async fn bad_input_gets_key_vault_errors() {
    let v = Vault::start().await;
    let (s, b) = v
        .call(
            Method::PUT,
            "/secrets/bad_name",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    assert_eq!(
        b["error"]["message"],
        "The request URI contains an invalid name: bad_name"
    );
    let long = "a".repeat(128);
    let (s, b) = v
        .call(
            Method::PUT,
            &format!("/secrets/{long}"),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    let (s, b) = v.call(Method::GET, "/secrets/%C3%BCnicode", None).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");

    // Value size: 25 KB is fine, one byte more is not.
    v.set("big", json!({"value": "x".repeat(25 * 1024)})).await;
    let (s, b) = v
        .call(
            Method::PUT,
            "/secrets/big",
            Some(json!({"value": "x".repeat(25 * 1024 + 1)})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    let (s, b) = v
        .call(
            Method::PUT,
            "/secrets/ct",
            Some(json!({"value": "x", "contentType": "c".repeat(256)})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    let tags: serde_json::Map<String, Value> =
        (0..16).map(|i| (format!("t{i}"), json!("v"))).collect();
    let (s, b) = v
        .call(
            Method::PUT,
            "/secrets/tags",
            Some(json!({"value": "x", "tags": tags})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    let (s, b) = v
        .call(
            Method::PUT,
            "/secrets/tags",
            Some(json!({"value": "x", "tags": {"k": "v".repeat(513)}})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");

    // Wrong shapes: the message never quotes the body (it could hold a value).
    for body in [
        json!({"value": 5}),
        json!({"value": "s3cret-sentinel", "tags": "s3cret-sentinel"}),
        json!({"value": "s3cret-sentinel", "attributes": {"enabled": "s3cret-sentinel"}}),
        json!({"value": "s3cret-sentinel", "attributes": {"exp": 1.5}}),
        // Dates past year 9999 (or before year 1): no client could list the secret.
        json!({"value": "s3cret-sentinel", "attributes": {"exp": 253_402_300_800i64}}),
        json!({"value": "s3cret-sentinel", "attributes": {"nbf": i64::MIN}}),
        // NUL: PostgreSQL's text cannot hold it, so neither store takes it.
        json!({"value": "s3cret-sentinel", "contentType": "a\u{0}b"}),
        json!({"value": "s3cret-sentinel", "tags": {"k": "v\u{0}"}}),
        json!({"nope": 1}),
        json!([1, 2]),
        // serde would read a struct from an array of its fields: not a Key Vault body.
        json!(["s3cret-sentinel"]),
        json!(["s3cret-sentinel", "text/plain"]),
    ] {
        let (s, b) = v
            .call(Method::PUT, "/secrets/shape", Some(body.clone()))
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
        assert!(!b.to_string().contains("s3cret-sentinel"), "{b}");
    }
    for raw in ["{not json", "", "   ", "null"] {
        let resp = v
            .http
            .put(v.url("/secrets/raw"))
            .bearer_auth(&v.token)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["error"]["code"], "BadParameter");
    }
    // A body over the limit is refused without being stored.
    let resp = v
        .http
        .put(v.url("/secrets/huge"))
        .bearer_auth(&v.token)
        .header("content-type", "application/json")
        .body(vec![b' '; 512 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = v.call(Method::GET, "/secrets/huge", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Routes and methods.
    let (s, b) = v.call(Method::GET, "/keys/k", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NotFound");
    let (s, b) = v.call(Method::POST, "/secrets/a", None).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    let (s, b) = v.call(Method::DELETE, "/secrets", None).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    // An empty name (`PUT /secrets/`), as Key Vault answers it.
    let (s, b) = v
        .call(Method::PUT, "/secrets/", Some(json!({"value": "x"})))
        .await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    assert_eq!(b["error"]["message"], "HTTP PUT not allowed");

    // Paging parameters.
    for bad in ["0", "26", "-1", "abc", "1.5"] {
        let (s, b) = v
            .call(Method::GET, &format!("/secrets?maxresults={bad}"), None)
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    }
    let (s, b) = v
        .call(Method::GET, "/secrets?$skiptoken=%00%01", None)
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    let (s, b) = v
        .call(Method::GET, "/secrets/a/versions?$skiptoken=xyz", None)
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");

    // Restore of garbage.
    let (s, b) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": "!!!not base64!!!"})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "Malformed backup blob");
    let (s, b) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": "AAAAAAAAAAAAAAAAAAAAAAAA"})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "Malformed backup blob");
    let (s, b) = v
        .call(Method::POST, "/secrets/restore", Some(json!({"value": 7})))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
}

/// Key Vault is an ASP.NET service: body property names and query parameter names match in any case (a
/// .NET client writing PascalCase is not silently ignored), and a UTF-8 byte-order mark before the JSON is
/// skipped. A property given twice (in any cases) is refused rather than one of them dropped.
#[tokio::test]
async fn names_in_any_case_and_a_byte_order_mark_are_read_as_key_vault_reads_them() {
    let v = Vault::start().await;
    let b = v
        .set(
            "pascal",
            json!({"Value": "x", "ContentType": "text/plain", "Tags": {"Env": "dev"},
                   "Attributes": {"Enabled": false, "EXP": 2000000000}}),
        )
        .await;
    assert_eq!(b["contentType"], "text/plain", "{b}");
    assert_eq!(b["tags"], json!({"Env": "dev"}), "{b}");
    assert_eq!(b["attributes"]["enabled"], false, "{b}");
    assert_eq!(b["attributes"]["exp"], 2000000000, "{b}");
    let (s, b) = v
        .call(
            Method::PATCH,
            "/secrets/pascal",
            Some(json!({"ATTRIBUTES": {"enabled": true}, "contenttype": "t2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (&b["attributes"]["enabled"], &b["contentType"]),
        (&json!(true), &json!("t2"))
    );
    // A property given twice; a lone UTF-16 surrogate escape (a JS string cut inside an emoji), which is no
    // Unicode text: each said so.
    for (body, says) in [
        (
            r#"{"value":"a","Value":"b"}"#,
            "has a property more than once",
        ),
        (
            r#"{"value":"a","attributes":{"enabled":true,"ENABLED":false}}"#,
            "has a property more than once",
        ),
        (r#"{"value":"a\ud800b"}"#, "unpaired UTF-16 surrogate"),
        (r#"{"value":"a\udc00b"}"#, "unpaired UTF-16 surrogate"),
        (r#"{"value":"a\ud800\u0041"}"#, "unpaired UTF-16 surrogate"),
        (
            r#"{"value":"ok","tags":{"t":"\ud83d"}}"#,
            "unpaired UTF-16 surrogate",
        ),
    ] {
        let resp = v
            .http
            .put(v.url("/secrets/twice"))
            .bearer_auth(&v.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let s = resp.status();
        let b: Value = resp.json().await.unwrap();
        assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {b}"
        );
    }
    let (s, _) = v.call(Method::GET, "/secrets/twice", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused body sets nothing");
    // A byte-order mark before the JSON.
    let resp = v
        .http
        .put(v.url("/secrets/bom"))
        .bearer_auth(&v.token)
        .header("content-type", "application/json; charset=utf-8")
        .body([&b"\xEF\xBB\xBF"[..], br#"{"value":"with a BOM"}"#].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, b) = v.call(Method::GET, "/secrets/bom", None).await;
    assert_eq!(b["value"], "with a BOM");
    // Query names: `API-Version`, `MaxResults`, `$SkipToken` (a client spelling it so gets the next page, not
    // the first one again).
    for name in ["a1", "a2", "a3"] {
        v.set(name, json!({"value": "x"})).await;
    }
    let base = v.lv.vault_url();
    let (s, first) = v
        .raw(
            Method::GET,
            &format!("{base}/secrets?API-Version={API}&MaxResults=2"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["value"].as_array().unwrap().len(), 2, "{first}");
    let link = first["nextLink"].as_str().unwrap();
    let token = link
        .split("$skiptoken=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let (s, second) = v
        .raw(
            Method::GET,
            &format!("{base}/secrets?api-version={API}&maxresults=2&$SkipToken={token}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    let ids = |page: &Value| -> Vec<String> {
        page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (first, second) = (ids(&first), ids(&second));
    assert!(
        !second.is_empty() && second.iter().all(|id| !first.contains(id)),
        "{first:?} {second:?}"
    );
}

#[tokio::test]
async fn update_changes_only_what_is_sent() {
    let v = Vault::start().await;
    let b1 = v
        .set(
            "u",
            json!({"value": "v1", "contentType": "a", "tags": {"x": "1"}}),
        )
        .await;
    let ver1 = version_of(b1["id"].as_str().unwrap());
    let b2 = v.set("u", json!({"value": "v2", "contentType": "b"})).await;
    let ver2 = version_of(b2["id"].as_str().unwrap());

    // PATCH latest (trailing slash, as the SDKs send it): only enabled changes.
    let (s, b) = v
        .call(
            Method::PATCH,
            "/secrets/u/",
            Some(json!({"attributes": {"exp": 1900000000}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.get("value").is_none());
    assert_eq!(b["id"], format!("{}/secrets/u/{ver2}", v.lv.vault_url()));
    assert_eq!(b["contentType"], "b");
    assert_eq!(b["attributes"]["exp"], 1900000000);
    assert_eq!(b["attributes"]["enabled"], true);

    // PATCH an older version: tags replaced, content type kept.
    let (s, b) = v
        .call(
            Method::PATCH,
            &format!("/secrets/u/{ver1}"),
            Some(json!({"tags": {"y": "2"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["tags"], json!({"y": "2"}));
    assert_eq!(b["contentType"], "a");
    let (_, got) = v
        .call(Method::GET, &format!("/secrets/u/{ver1}"), None)
        .await;
    assert_eq!(got["value"], "v1");
    assert_eq!(got["tags"], json!({"y": "2"}));

    // Disable: GET is 403 SecretDisabled, listing still shows it, re-enable works.
    let (s, _) = v
        .call(
            Method::PATCH,
            "/secrets/u",
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = v.call(Method::GET, "/secrets/u/", None).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(b["error"]["innererror"]["code"], "SecretDisabled");
    // As Key Vault sends it: the inner error has a code and nothing else.
    assert_eq!(b["error"]["innererror"], json!({"code": "SecretDisabled"}));
    assert_eq!(
        b["error"]["message"],
        "Operation get is not allowed on a disabled secret."
    );
    let (_, list) = v.call(Method::GET, "/secrets", None).await;
    assert_eq!(list["value"][0]["attributes"]["enabled"], false);
    let (s, _) = v
        .call(Method::GET, &format!("/secrets/u/{ver1}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "other versions stay readable");
    v.call(
        Method::PATCH,
        "/secrets/u",
        Some(json!({"attributes": {"enabled": true}})),
    )
    .await;
    let (s, _) = v.call(Method::GET, "/secrets/u", None).await;
    assert_eq!(s, StatusCode::OK);

    let (s, b) = v
        .call(
            Method::PATCH,
            "/secrets/nope",
            Some(json!({"contentType": "x"})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let (s, b) = v
        .call(
            Method::PATCH,
            "/secrets/u",
            Some(json!({"contentType": "c".repeat(300)})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
}

#[tokio::test]
async fn listing_pages_with_absolute_next_links() {
    let v = Vault::start().await;
    let names: BTreeSet<String> = (0..53).map(|i| format!("s-{i:03}")).collect();
    for n in &names {
        v.set(n, json!({"value": n, "contentType": "t", "tags": {"n": n}}))
            .await;
    }
    let mut seen = Vec::new();
    let mut url = v.url("/secrets?maxresults=7");
    let mut pages = 0;
    loop {
        let (s, b) = v.raw(Method::GET, &url, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        pages += 1;
        let items = b["value"].as_array().unwrap();
        assert!(items.len() <= 7);
        for i in items {
            assert!(i.get("value").is_none());
            let id = i["id"].as_str().unwrap();
            let name = id.rsplit('/').next().unwrap();
            assert_eq!(
                id,
                format!("{}/secrets/{name}", v.lv.vault_url()),
                "unversioned ids"
            );
            assert_eq!(i["contentType"], "t");
            assert_eq!(i["tags"]["n"], name);
            seen.push(name.to_string());
        }
        match &b["nextLink"] {
            Value::Null => break,
            Value::String(next) => {
                assert!(
                    next.starts_with(&format!("{}/secrets?", v.lv.vault_url())),
                    "{next}"
                );
                assert!(next.contains(&format!("api-version={API}")), "{next}");
                assert!(next.contains("maxresults=7"), "{next}");
                url = next.clone();
            }
            other => panic!("nextLink {other}"),
        }
    }
    assert_eq!(pages, 8);
    assert_eq!(seen.len(), 53, "each name exactly once");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), names);

    // Versions page too.
    for i in 0..9 {
        v.set("many", json!({"value": format!("v{i}")})).await;
    }
    let mut url = v.url("/secrets/many/versions?maxresults=2");
    let mut versions = BTreeSet::new();
    loop {
        let (_, b) = v.raw(Method::GET, &url, None).await;
        for i in b["value"].as_array().unwrap() {
            assert!(versions.insert(version_of(i["id"].as_str().unwrap())));
        }
        match b["nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(versions.len(), 9);
}

#[tokio::test]
async fn soft_delete_recover_purge() {
    let v = Vault::start().await;
    let b1 = v
        .set("gone", json!({"value": "a", "tags": {"k": "v"}}))
        .await;
    let b2 = v
        .set("gone", json!({"value": "b", "contentType": "ct"}))
        .await;
    v.set("stays", json!({"value": "s"})).await;

    let (s, d) = v.call(Method::DELETE, "/secrets/gone", None).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert!(d.get("value").is_none());
    assert_eq!(d["id"], b2["id"]);
    assert_eq!(
        d["recoveryId"],
        format!("{}/deletedsecrets/gone", v.lv.vault_url())
    );
    assert_eq!(d["contentType"], "ct");
    let deleted = d["deletedDate"].as_i64().unwrap();
    assert_eq!(
        d["scheduledPurgeDate"].as_i64().unwrap(),
        deleted + 90 * 86400
    );

    // While deleted: 404 on the live paths (never 403), 409 on set, absent from listings.
    for path in ["/secrets/gone", "/secrets/gone/"] {
        let (s, b) = v.call(Method::GET, path, None).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    }
    let (s, b) = v
        .call(Method::PUT, "/secrets/GONE", Some(json!({"value": "new"})))
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "Conflict");
    assert_eq!(
        b["error"]["innererror"]["code"],
        "ObjectIsDeletedButRecoverable"
    );
    let (s, b) = v
        .call(
            Method::PATCH,
            "/secrets/gone",
            Some(json!({"contentType": "x"})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let (s, b) = v.call(Method::DELETE, "/secrets/gone", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let (s, b) = v.call(Method::POST, "/secrets/gone/backup", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let (_, list) = v.call(Method::GET, "/secrets", None).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let (_, versions) = v.call(Method::GET, "/secrets/gone/versions", None).await;
    assert_eq!(versions["value"], json!([]));

    let (s, g) = v.call(Method::GET, "/deletedsecrets/gone", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(g["recoveryId"], d["recoveryId"]);
    assert_eq!(g["deletedDate"], d["deletedDate"]);
    let (s, l) = v.call(Method::GET, "/deletedsecrets", None).await;
    assert_eq!(s, StatusCode::OK);
    let items = l["value"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], format!("{}/secrets/gone", v.lv.vault_url()));
    assert_eq!(items[0]["scheduledPurgeDate"], d["scheduledPurgeDate"]);
    assert_eq!(l["nextLink"], Value::Null);

    // Recover: all versions come back with their ids.
    let (s, r) = v
        .call(Method::POST, "/deletedsecrets/gone/recover", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r.get("value").is_none());
    assert_eq!(r["id"], b2["id"]);
    let (_, got) = v
        .call(
            Method::GET,
            &format!("/secrets/gone/{}", version_of(b1["id"].as_str().unwrap())),
            None,
        )
        .await;
    assert_eq!(got["value"], "a");
    assert_eq!(got["tags"], json!({"k": "v"}));
    let (s, b) = v.call(Method::GET, "/deletedsecrets/gone", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    assert_eq!(b["error"]["message"], "Deleted Secret not found: gone");
    let (s, b) = v
        .call(Method::POST, "/deletedsecrets/gone/recover", None)
        .await;
    // Key Vault answers a recover of a name that is not deleted with its plain "not found" text.
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("A secret with (name/id) gone was not found in this key vault."),
        "{b}"
    );

    // Purge: 204, then the name is free.
    v.call(Method::DELETE, "/secrets/gone", None).await;
    let resp = v
        .http
        .delete(v.url("/deletedsecrets/gone"))
        .bearer_auth(&v.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());
    let (s, _) = v.call(Method::GET, "/deletedsecrets/gone", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = v.call(Method::DELETE, "/deletedsecrets/stays", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let b3 = v.set("gone", json!({"value": "reborn"})).await;
    let (_, versions) = v.call(Method::GET, "/secrets/gone/versions", None).await;
    assert_eq!(versions["value"].as_array().unwrap().len(), 1);
    assert_eq!(b3["value"], "reborn");
}

/// Vault requests skip the router; a tenant named like a collection still owns its issuer's routes, and the
/// vault's own paths still answer as the vault.
#[tokio::test]
async fn a_tenant_named_like_a_collection_keeps_its_token_routes() {
    let v = Vault::start_with(LocalVaultOptions {
        tenant_id: Some("secrets".into()),
        ..Default::default()
    })
    .await;
    assert!(common::token_url(&v.lv).contains("/secrets/oauth2/v2.0/token"));
    let discovery = format!(
        "{}/secrets/v2.0/.well-known/openid-configuration",
        v.lv.authority_host()
    );
    let resp = v.http.get(&discovery).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(
        doc["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/secrets/oauth2/v2.0/token")
    );
    let b = v.set("oauth2", json!({"value": "x"})).await;
    assert_eq!(b["value"], "x");
    let (s, b) = v.call(Method::GET, "/secrets/oauth2", None).await;
    assert_eq!((s, &b["value"]), (StatusCode::OK, &json!("x")));
    let (s, b) = v.call(Method::GET, "/secrets/absent", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "SecretNotFound");
    let (s, _) = v
        .raw(Method::GET, &format!("{}/healthz", v.lv.vault_url()), None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

/// HEAD on a vault path answers as the router shapes it, over both protocols: the vault's 405 with its
/// length and no body (HTTP/2 resets a stream whose HEAD answer carries a body).
#[tokio::test]
async fn head_requests_get_an_empty_405_over_http1_and_http2() {
    let v = Vault::start().await;
    v.set("h", json!({"value": "x"})).await;
    let mut h1 = keyvault_server::tls::client_config_trusting(v.lv.ca_cert_pem()).unwrap();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1 = reqwest::Client::builder()
        .tls_backend_preconfigured(h1)
        .build()
        .unwrap();
    for (client, version) in [
        (&v.http, reqwest::Version::HTTP_2),
        (&h1, reqwest::Version::HTTP_11),
    ] {
        for path in ["/secrets/h", "/secrets/absent", "/deletedsecrets/h"] {
            let resp = client
                .head(v.url(path))
                .bearer_auth(&v.token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("HEAD {path} over {version:?}: {e}"));
            assert_eq!(resp.version(), version);
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert!(resp.headers().get("content-length").is_some(), "{path}");
            assert!(resp.bytes().await.unwrap().is_empty(), "{path}");
        }
    }
}

#[tokio::test]
async fn purge_protection_and_custom_retention() {
    let v = Vault::start_with(LocalVaultOptions {
        retention_days: 7,
        purge_protection: true,
        ..Default::default()
    })
    .await;
    let b = v.set("p", json!({"value": "x"})).await;
    assert_eq!(b["attributes"]["recoveryLevel"], "CustomizedRecoverable");
    assert_eq!(b["attributes"]["recoverableDays"], 7);
    let (_, d) = v.call(Method::DELETE, "/secrets/p", None).await;
    assert_eq!(
        d["scheduledPurgeDate"].as_i64().unwrap() - d["deletedDate"].as_i64().unwrap(),
        7 * 86400
    );
    let (s, b) = v.call(Method::DELETE, "/deletedsecrets/p", None).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "Forbidden");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purge protection is enabled")
    );
    // Key Vault's text ends with the vault's name (not its URL), like the RBAC 403's.
    let message = b["error"]["message"].as_str().unwrap();
    let name = v.lv.vault().settings().name.clone();
    assert!(
        message.ends_with(&format!("\r\nVault: {name};location=local")),
        "{message}"
    );
    let (s, _) = v.call(Method::GET, "/deletedsecrets/p", None).await;
    assert_eq!(s, StatusCode::OK, "still there after the refused purge");
    // Older api-versions carry no recoverableDays.
    let (_, b) = v
        .raw(
            Method::GET,
            &format!("{}/deletedsecrets/p?api-version=7.0", v.lv.vault_url()),
            None,
        )
        .await;
    assert!(b["attributes"].get("recoverableDays").is_none(), "{b}");
}

#[tokio::test]
async fn retention_sweep_purges_what_is_due() {
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let mut v = Vault::start_with(LocalVaultOptions {
        retention_days: 7,
        purge_protection: true,
        clock: clock.clone(),
        ..Default::default()
    })
    .await;
    v.set("old", json!({"value": "x"})).await;
    v.set("young", json!({"value": "y"})).await;
    v.call(Method::DELETE, "/secrets/old", None).await;
    clock.advance(3 * 86400);
    v.token = token_for(&v.lv, &v.http).await;
    v.call(Method::DELETE, "/secrets/young", None).await;
    clock.advance(4 * 86400 - 1);
    assert_eq!(
        v.lv.vault().sweep().await.unwrap(),
        0,
        "nothing is due a second early"
    );
    clock.advance(1);
    assert_eq!(v.lv.vault().sweep().await.unwrap(), 1);
    v.token = token_for(&v.lv, &v.http).await;
    let (s, _) = v.call(Method::GET, "/deletedsecrets/old", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = v.call(Method::GET, "/deletedsecrets/young", None).await;
    assert_eq!(s, StatusCode::OK);
    v.set("old", json!({"value": "new"})).await;
}

#[tokio::test]
async fn backup_and_restore() {
    let v = Vault::start().await;
    let b1 = v
        .set(
            "bk",
            json!({"value": "first", "tags": {"a": "b"}, "attributes": {"exp": 2000000000}}),
        )
        .await;
    let b2 = v
        .set(
            "BK",
            json!({"value": "second", "contentType": "text/plain"}),
        )
        .await;
    let (s, backup) = v.call(Method::POST, "/secrets/bk/backup", None).await;
    assert_eq!(s, StatusCode::OK);
    let blob = backup["value"].as_str().unwrap().to_string();
    assert!(
        !blob.contains('=') && !blob.contains('+') && !blob.contains('/'),
        "base64url without padding"
    );

    // Live or deleted: conflict.
    let (s, b) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "Conflict");
    // Key Vault's text (recorded by the JS SDK's tests), naming the backed-up version.
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("There was a conflict restoring the secret '")
            && message.to_lowercase().contains("/secrets/bk/")
            && message.ends_with("perform operations against a secret in a sequential manner."),
        "{message}"
    );
    v.call(Method::DELETE, "/secrets/bk", None).await;
    let (s, b) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "Conflict");
    let (s, _) = v.call(Method::DELETE, "/deletedsecrets/bk", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Tampered: 400 and nothing written.
    let mut bytes = blob.clone().into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let (s, b) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": tampered})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "Malformed backup blob");
    assert_eq!(
        b["error"]["message"],
        "Backup blob contains invalid or corrupt version."
    );
    let (s, _) = v.call(Method::GET, "/secrets/bk", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Not a backup at all (the JS SDK's own test sends 4,728 zero bytes): the same answer.
    let zeros = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        [0u8; 4728],
    );
    let (s, b) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": zeros})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "Malformed backup blob");

    // Restore: every version with its id, value and attributes; padding tolerated.
    let (s, r) = v
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": format!("{blob}==")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["id"], b2["id"]);
    assert!(r.get("value").is_none());
    let (_, g1) = v
        .call(
            Method::GET,
            &format!("/secrets/bk/{}", version_of(b1["id"].as_str().unwrap())),
            None,
        )
        .await;
    assert_eq!(g1["value"], "first");
    assert_eq!(g1["tags"], json!({"a": "b"}));
    assert_eq!(g1["attributes"]["exp"], 2000000000);
    assert_eq!(g1["attributes"]["created"], b1["attributes"]["created"]);
    let (_, g2) = v.call(Method::GET, "/secrets/bk", None).await;
    assert_eq!(g2["value"], "second");
    assert_eq!(g2["id"], b2["id"]);

    // A blob from another vault (another key) is refused.
    let other = Vault::start().await;
    let (s, b) = other
        .call(
            Method::POST,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "Malformed backup blob");
}

#[tokio::test]
async fn responses_look_like_key_vault() {
    let v = Vault::start().await;
    let resp = v
        .http
        .put(v.url("/secrets/h"))
        .bearer_auth(&v.token)
        .header("x-ms-client-request-id", "abc-123")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/json; charset=utf-8");
    assert_eq!(h["x-ms-client-request-id"], "abc-123");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h.contains_key("x-ms-request-id"));
    assert!(!h.contains_key("retry-after"));
    // HTTP/2 is negotiated by ALPN.
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let h1 = reqwest::Client::builder()
        .tls_backend_preconfigured({
            let mut c = keyvault_server::tls::client_config_trusting(v.lv.ca_cert_pem()).unwrap();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c
        })
        .build()
        .unwrap();
    let resp = h1
        .get(v.url("/secrets/h"))
        .bearer_auth(&v.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    let resp = v
        .http
        .get(format!("{}/healthz", v.lv.vault_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = v
        .http
        .get(format!("{}/readyz", v.lv.vault_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Within the limits on a value (25,600 bytes) a secret's versions can make a backup larger than a restore
/// accepts (JSON writes a control character in six bytes): the backup is refused with 400, and the secret stays.
#[tokio::test]
async fn a_backup_too_large_to_restore_is_refused() {
    let v = Vault::start().await;
    let value = "\u{1}".repeat(25_600);
    // 25,600 × 6 bytes of JSON a version: 170 of them make about 26 MB before encryption.
    for _ in 0..170 {
        v.set("wide", json!({ "value": value })).await;
    }
    let (s, b) = v.call(Method::POST, "/secrets/wide/backup", None).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the 25165824 bytes a restore accepts"),
        "{b}"
    );
    let (s, _) = v.call(Method::GET, "/secrets/wide", None).await;
    assert_eq!(s, StatusCode::OK);
    // A smaller one of the same kind backs up, and its text fits the restore limit.
    for _ in 0..3 {
        v.set("narrow", json!({ "value": value })).await;
    }
    let (s, b) = v.call(Method::POST, "/secrets/narrow/backup", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["value"].as_str().unwrap().len() < keyvault_server::http::MAX_RESTORE_BODY_BYTES);
}

/// A request with a body answered before its body is read (refused: no token, a bad name) says
/// `Connection: close` over HTTP/1.1: the server cannot reuse the connection, and a client that pooled it would
/// otherwise learn so only when its next request failed. A request whose body was read keeps the connection.
#[tokio::test]
async fn answers_before_the_body_is_read_close_the_connection_and_say_so() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client_h1(&lv);
    let token = token_for(&lv, &http).await;
    let url = |name: &str| format!("{}/secrets/{name}?api-version=7.6", lv.vault_url());
    let body = json!({"value": "x".repeat(20_000)});
    let put = |name: &str, auth: bool| {
        let req = http
            .put(url(name))
            .version(reqwest::Version::HTTP_11)
            .json(&body);
        if auth { req.bearer_auth(&token) } else { req }
    };
    let connection = |r: &reqwest::Response| {
        r.headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let resp = put("bad_name!", true).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(connection(&resp).as_deref(), Some("close"));
    let resp = put("fine", false).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(connection(&resp).as_deref(), Some("close"));
    let resp = put("fine", true).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(connection(&resp), None);
    // A GET (no body) is never marked.
    let resp = http
        .get(url("nothing-here"))
        .version(reqwest::Version::HTTP_11)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(connection(&resp), None);
    lv.shutdown().await;
}
