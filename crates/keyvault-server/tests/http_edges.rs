//! The HTTP surface's edges that a fuzzing audit found answered loosely, through a real in-process HTTPS
//! server: 405s name their route's methods (`Allow`) and carry Key Vault's JSON, a method no route answers
//! is a 405 whatever the query, a coded body is 415, an oversized body a client waits to send is refused
//! before it is asked for, a tag name given twice is a 400, a Host's port must be one, and a restore blob
//! that is not base64url is the same malformed backup as one that decodes to garbage.

mod common;

use keyvault_server::local::LocalVault;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Vault {
    lv: LocalVault,
    http: reqwest::Client,
    token: String,
}

impl Vault {
    async fn start() -> Vault {
        let lv = LocalVault::start().await.unwrap();
        let http = common::vault_client(&lv);
        let token = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
        Vault { lv, http, token }
    }

    /// `method` on `path` (as given: no api-version added) with `body` as JSON: status, `Allow`, JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.lv.vault_url()))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        };
        (status, allow, json)
    }

    /// The secret `name`'s latest version (404: `Null`).
    async fn get(&self, name: &str) -> Value {
        let (s, _, b) = self
            .send(
                Method::GET,
                &format!("/secrets/{name}?api-version=7.6"),
                None,
                &[],
            )
            .await;
        if s == StatusCode::NOT_FOUND {
            Value::Null
        } else {
            b
        }
    }

    /// Sends `request` (a raw HTTP/1.1 head, and a body if any) over a new TLS connection and reads what comes
    /// back until the server closes it or 5 s pass without a byte.
    async fn raw_http1(&self, request: &[u8]) -> String {
        String::from_utf8_lossy(&self.raw(b"http/1.1", request).await).into_owned()
    }

    /// A new TLS connection to the vault whose client offers the protocol `alpn`.
    async fn tls(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut tls = keyvault_server::tls::client_config_trusting(self.lv.ca_cert_pem()).unwrap();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let port: u16 = self.port().parse().unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// An HTTP/2 `PUT` of the secret `name` with the vault's token and these headers (the body is sent apart).
    fn h2_put(&self, scheme: &str, name: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut req = http::Request::builder()
            .method("PUT")
            .uri(format!(
                "{scheme}://localhost:{}/secrets/{name}?api-version=7.6",
                self.port()
            ))
            .header("authorization", format!("Bearer {}", self.token));
        for (header, value) in headers {
            req = req.header(*header, *value);
        }
        req.body(()).unwrap()
    }

    /// Sends `request` over a new TLS connection whose client offers the protocol `alpn`, and reads what comes
    /// back until the server closes it or 5 s pass without a byte.
    async fn raw(&self, alpn: &[u8], request: &[u8]) -> Vec<u8> {
        let mut stream = self.tls(alpn).await;
        stream.write_all(request).await.unwrap();
        stream.flush().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                    .await;
            match read {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        got
    }

    fn port(&self) -> &str {
        self.lv.vault_url().rsplit(':').next().unwrap()
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Every 405 carries `Allow` with the methods its route answers, and Key Vault's JSON: the vault's and the
/// admin API's, HEAD and methods no route knows (before the api-version is looked at), and the router's own
/// (health, the token issuer's routes).
#[tokio::test]
async fn every_405_names_its_routes_methods_and_has_a_key_vault_body() {
    let v = Vault::start().await;
    let foo = Method::from_bytes(b"FOO").unwrap();
    for (method, path, allow) in [
        (Method::PUT, "/secrets?api-version=7.6", "GET"),
        (
            Method::POST,
            "/secrets/a?api-version=7.6",
            "GET, PUT, PATCH, DELETE",
        ),
        (
            Method::OPTIONS,
            "/secrets/a?api-version=7.6",
            "GET, PUT, PATCH, DELETE",
        ),
        (
            Method::HEAD,
            "/secrets/a?api-version=7.6",
            "GET, PUT, PATCH, DELETE",
        ),
        (
            Method::PUT,
            "/secrets/a/versions?api-version=7.6",
            "GET, PATCH",
        ),
        (
            Method::PUT,
            "/secrets/a/backup?api-version=7.6",
            "GET, PATCH, POST",
        ),
        (
            Method::PUT,
            "/secrets/a/0123456789abcdef0123456789abcdef?api-version=7.6",
            "GET, PATCH",
        ),
        (
            Method::PATCH,
            "/deletedsecrets/a?api-version=7.6",
            "GET, DELETE",
        ),
        (
            Method::GET,
            "/deletedsecrets/a/recover?api-version=7.6",
            "POST",
        ),
        // Methods no route answers: 405 even without an api-version (it was the api-version's 400).
        (Method::TRACE, "/secrets/a", "GET, PUT, PATCH, DELETE"),
        (foo.clone(), "/secrets", "GET"),
        (foo.clone(), "/nowhere", ""),
        (Method::PUT, "/admin/principals", "GET, POST"),
        (Method::POST, "/admin/roles/r", "PUT, DELETE"),
        (Method::HEAD, "/admin/rekey", "GET, POST"),
    ] {
        let (s, got, b) = v.send(method.clone(), path, None, &[]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {b}");
        assert_eq!(got.as_deref(), Some(allow), "{method} {path}");
        if method != Method::HEAD {
            assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
            assert_eq!(b["error"]["message"], format!("HTTP {method} not allowed"));
        }
    }
    // The router's 405s: the same JSON, and their `Allow`.
    let tenant = v.lv.tenant_id().to_string();
    for (method, path, allow) in [
        (Method::DELETE, "/healthz".to_string(), "GET,HEAD"),
        (Method::POST, "/readyz".to_string(), "GET,HEAD"),
        (Method::GET, format!("/{tenant}/oauth2/v2.0/token"), "POST"),
        (
            Method::PUT,
            format!("/{tenant}/discovery/v2.0/keys"),
            "GET,HEAD",
        ),
        (
            Method::OPTIONS,
            format!("/{tenant}/v2.0/.well-known/openid-configuration"),
            "GET,HEAD",
        ),
    ] {
        let (s, got, b) = v.send(method.clone(), &path, None, &[]).await;
        assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
        assert_eq!(b["error"]["message"], format!("HTTP {method} not allowed"));
        let got = got.unwrap_or_else(|| panic!("{method} {path}: no Allow"));
        assert_eq!(got.replace(' ', ""), allow, "{method} {path}");
    }
    // CONNECT (its target a host and port, no route): 405, not the api-version's 400.
    let response = v
        .raw_http1(
            format!(
                "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {token}\r\n\r\n",
                port = v.port(),
                token = v.token
            )
            .as_bytes(),
        )
        .await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("\r\nallow:"),
        "{response}"
    );
    assert!(response.contains("\"MethodNotAllowed\""), "{response}");
    v.lv.shutdown().await;
}

/// A body with a `Content-Encoding` (other than identity) is 415 and changes nothing; `Content-Type` is not
/// looked at (curl's default form type works).
#[tokio::test]
async fn a_coded_body_is_415_and_the_content_type_is_not_checked() {
    let v = Vault::start().await;
    let put = |name: &str| format!("/secrets/{name}?api-version=7.6");
    for coding in ["gzip", "br", "identity, gzip", "x-custom"] {
        let (s, _, b) = v
            .send(
                Method::PUT,
                &put("coded"),
                Some(br#"{"value":"v"}"#),
                &[("content-encoding", coding)],
            )
            .await;
        assert_error(
            s,
            &b,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
        );
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{coding}' is not supported")),
            "{message}"
        );
    }
    assert_eq!(v.get("coded").await, Value::Null);
    // A PATCH and the token endpoint too (in the OAuth shape there).
    let (s, _, b) = v
        .send(
            Method::PATCH,
            &put("coded"),
            Some(br#"{"contentType":"x"}"#),
            &[("content-encoding", "deflate")],
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
    );
    let resp = v
        .http
        .post(common::token_url(&v.lv))
        .header("content-encoding", "gzip")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
    // A transfer coding other than chunked (HTTP/1.1): 501, nothing stored; chunked alone is read.
    for (transfer, want) in [("gzip, chunked", "501 "), ("chunked", "200 ")] {
        let body = r#"{"value":"v"}"#;
        let request = format!(
            "PUT {} HTTP/1.1\r\nHost: localhost:{}\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: {transfer}\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            put("transfer"),
            v.port(),
            v.token,
            body.len()
        );
        let got = v.raw_http1(request.as_bytes()).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {want}")),
            "{transfer}: {got}"
        );
        if want == "501 " {
            assert!(
                got.contains("\"NotImplemented\"") && got.contains("'gzip, chunked'"),
                "{got}"
            );
            assert_eq!(v.get("transfer").await, Value::Null);
        }
    }
    assert_eq!(v.get("transfer").await["value"], "v");
    // identity is no coding; any content type is read as JSON.
    for (headers, name) in [
        (vec![("content-encoding", "identity")], "plain"),
        (
            vec![("content-type", "application/x-www-form-urlencoded")],
            "form",
        ),
    ] {
        let mut req = v
            .http
            .put(format!("{}{}", v.lv.vault_url(), put(name)))
            .bearer_auth(&v.token)
            .body(r#"{"value":"v"}"#);
        for (n, val) in headers {
            req = req.header(n, val);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK, "{name}");
        assert_eq!(v.get(name).await["value"], "v");
    }
    v.lv.shutdown().await;
}

/// A declared length over the route's limit with `Expect: 100-continue` is answered 413 at once: no
/// `100 Continue` asks for a body that would only be dropped. Within the limit, the body is asked for.
#[tokio::test]
async fn an_oversized_body_a_client_waits_to_send_is_refused_before_100_continue() {
    let v = Vault::start().await;
    let head = |length: usize| {
        format!(
            "PUT /secrets/ec?api-version=7.6 HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n",
            port = v.port(),
            token = v.token
        )
    };
    // 1 MB against the 256 KiB limit (under the 64 MiB that was refused at once before).
    let response = v.raw_http1(head(1_000_000).as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    assert!(response.contains("\"RequestEntityTooLarge\""), "{response}");
    // A coded body is refused the same way, unread.
    let coded = head(13).replace("Expect:", "Content-Encoding: gzip\r\nExpect:");
    let response = v.raw_http1(coded.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    // Within the limit: 100 Continue, then the answer to the body sent.
    let mut request = head(13)
        .replace("Expect:", "Connection: close\r\nExpect:")
        .into_bytes();
    request.extend_from_slice(br#"{"value":"v"}"#);
    let response = v.raw_http1(&request).await;
    assert!(response.starts_with("HTTP/1.1 100 Continue"), "{response}");
    assert!(response.contains("HTTP/1.1 200 OK"), "{response}");
    v.lv.shutdown().await;
}

/// A tag name given twice (exactly equal) is a 400 rather than one value dropped, for a set and an update,
/// and changes nothing; names that differ in case are two tags. A body is UTF-8 throughout (an ignored
/// property too); `-0` seconds are 0.
#[tokio::test]
async fn bodies_a_tag_twice_invalid_utf8_and_minus_zero() {
    let v = Vault::start().await;
    let path = "/secrets/t?api-version=7.6";
    let (s, _, b) = v
        .send(
            Method::PUT,
            path,
            Some(br#"{"value":"a","tags":{"k":"1"}}"#),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for (method, body) in [
        (
            Method::PUT,
            &br#"{"value":"b","tags":{"k":"1","k":"2"}}"#[..],
        ),
        (Method::PATCH, br#"{"tags":{"env":"prod","env":"dev"}}"#),
        (Method::PUT, b"{\"value\":\"b\",\"x\":\"\xff\xfe\"}"),
        (
            Method::PATCH,
            b"{\"value\":\"\xff\xfe\",\"contentType\":\"c\"}",
        ),
    ] {
        let (s, _, b) = v.send(method.clone(), path, Some(body), &[]).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("has a tag name more than once") || message.contains("not UTF-8"),
            "{method}: {message}"
        );
    }
    let now = v.get("t").await;
    assert_eq!(
        (&now["value"], &now["tags"]),
        (&json!("a"), &json!({"k": "1"}))
    );
    assert!(now.get("contentType").is_none(), "{now}");
    let (s, _, b) = v
        .send(
            Method::PUT,
            path,
            Some(br#"{"value":"c","tags":{"k":"1","K":"2"},"attributes":{"nbf":-0}}"#),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["tags"], json!({"k": "1", "K": "2"}));
    assert_eq!(b["attributes"]["nbf"], 0);
    v.lv.shutdown().await;
}

/// The Host's port must be a port (1 to 65535): an empty one or one past 65535 is a 400, as a bad host is.
#[tokio::test]
async fn a_host_port_must_be_one_to_65535() {
    let v = Vault::start().await;
    let get = |host: &str| {
        format!(
            "GET /secrets?api-version=7.6 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
            token = v.token
        )
    };
    for host in ["h:", "h:99999", "h:0", "[::1]:"] {
        let response = v.raw_http1(get(host).as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{host}: {response}");
        assert!(
            response.contains("missing or invalid Host header"),
            "{host}: {response}"
        );
    }
    let response = v.raw_http1(get("h:65535").as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    v.lv.shutdown().await;
}

/// A connection speaks the protocol its TLS handshake chose: HTTP/1.1 text on a connection that negotiated
/// `h2` gets no HTTP/1.1 answer: only the server's HTTP/2 SETTINGS, before the bad preface ends the connection.
/// Over HTTP/2 a `Host` line naming another host than `:authority`, or a scheme other than https, is a 400
/// and nothing is stored; the same host in other letter cases is the same host.
#[tokio::test]
async fn h2_connections_speak_h2_and_check_their_authority_and_scheme() {
    let v = Vault::start().await;
    let got = v
        .raw(b"h2", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // HTTP/2 frames: a 9-byte header (length: 3 bytes, type, flags, stream id) and the payload.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= got.len() {
        let len =
            usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
        types.push(got[at + 3]);
        at += 9 + len;
    }
    assert_eq!(
        types,
        [4],
        "the server's SETTINGS, and nothing more: {got:?}"
    );

    let port = v.port().to_string();
    let mut h2 = common::h2_connect(&v.lv, None).await;
    let mut put = |scheme: &str, host: Option<&str>, name: &str| {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(host.map(|h| ("host", h)));
        let req = v.h2_put(scheme, name, &headers);
        let (resp, mut body) = h2.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(br#"{"value":"v"}"#), true)
            .unwrap();
        async move {
            let (status, _, body) = common::answer(resp).await;
            (status.as_u16(), body.to_string())
        }
    };
    let (status, body) = put("https", Some("evil.example"), "other-host").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("disagrees with its :authority"), "{body}");
    let (status, body) = put("http", None, "plain-scheme").await;
    assert_eq!(status, 400, "{body}");
    let same = format!("LOCALHOST:{}", v.port());
    let (status, body) = put("https", Some(&same), "same-host").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put("https", None, "no-host").await;
    assert_eq!(status, 200, "{body}");
    assert!(v.get("other-host").await.is_null());
    assert!(v.get("plain-scheme").await.is_null());
    // The routes besides the vault API's check the same (health, the token issuer, the admin API).
    for (scheme, host, path, want) in [
        ("http", None, "/healthz", 400),
        ("https", Some("evil.example"), "/healthz", 400),
        ("https", Some("evil.example"), "/admin/principals", 400),
        ("https", None, "/healthz", 200),
    ] {
        let mut req = http::Request::builder()
            .uri(format!("{scheme}://localhost:{port}{path}"))
            .header("authorization", format!("Bearer {}", v.token));
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let (resp, _) = h2.send_request(req.body(()).unwrap(), true).unwrap();
        let status = resp.await.unwrap().status().as_u16();
        assert_eq!(status, want, "{scheme} {host:?} {path}");
    }
    v.lv.shutdown().await;
}

/// A client that goes away in the middle of a body, with or without TLS's close_notify (a killed process, a
/// dropped network), or over HTTP/2 resets its stream, timed out its request: the audit line says 408, not a
/// 400 that would call the body malformed; nothing is stored.
#[tokio::test]
async fn a_client_gone_mid_body_is_audited_as_408() {
    let v = Vault::start().await;
    let port = v.port();
    for (name, notify) in [("gone-abruptly", false), ("gone-with-notify", true)] {
        let mut stream = v.tls(b"http/1.1").await;
        let head = format!(
            "PUT /secrets/{name}?api-version=7.6 HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {}\r\nContent-Length: 5000\r\n\r\n{{\"value\":\"",
            v.token
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b'a'; 100]).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if notify {
            stream.shutdown().await.unwrap();
        } else {
            // The TCP connection closed under TLS: no close_notify.
            let (tcp, _) = stream.into_inner();
            drop(tcp);
        }
    }
    // Over HTTP/2: the stream reset mid-body.
    let mut h2 = common::h2_connect(&v.lv, None).await;
    let req = v.h2_put("https", "gone-h2-reset", &[("content-length", "5000")]);
    let (_resp, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(br#"{"value":"aaaa"#), false)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    body.send_reset(h2::Reason::CANCEL);
    // A stream the client breaks itself — more body than it declared — is malformed (400), even though the
    // server's HTTP/2 library answers it with a reset too.
    let req = v.h2_put("https", "malformed-h2-length", &[("content-length", "5")]);
    let (_resp, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(br#"{"value":"too long"}"#), true)
        .unwrap();
    let audit = v.lv.audit().expect("dev mode audits");
    let started = std::time::Instant::now();
    for (name, status) in [
        ("gone-abruptly", 408),
        ("gone-with-notify", 408),
        ("gone-h2-reset", 408),
        ("malformed-h2-length", 400),
    ] {
        let line = loop {
            audit.flush().await;
            let text = std::fs::read_to_string(audit.path()).unwrap();
            if let Some(line) = text.lines().find(|l| l.contains(name)) {
                break line.to_string();
            }
            assert!(
                started.elapsed().as_secs() < 10,
                "no audit line for {name}:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let line: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["status"], status, "{name}: {line}");
        assert!(v.get(name).await.is_null(), "{name} stored");
    }
    v.lv.shutdown().await;
}

/// A restore blob that is not base64url and one that decodes to garbage get one code, Key Vault's for a
/// malformed backup; a body that is not a restore object stays a BadParameter.
#[tokio::test]
async fn every_bad_restore_blob_is_a_malformed_backup() {
    let v = Vault::start().await;
    let path = "/secrets/restore?api-version=7.6";
    for body in [
        &br#"{"value":"!!!not base64!!!"}"#[..],
        br#"{"value":"AAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        br#"{"value":"AAAAA"}"#,
        br#"{"Value":"a-b+c"}"#,
    ] {
        let (s, _, b) = v.send(Method::POST, path, Some(body), &[]).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "Malformed backup blob");
        assert_eq!(
            b["error"]["message"],
            "Backup blob contains invalid or corrupt version."
        );
    }
    for body in [
        &br#"{"value":7}"#[..],
        br#"{"value":"a","VALUE":"b"}"#,
        br#"{"blob":"AAAA"}"#,
    ] {
        let (s, _, b) = v.send(Method::POST, path, Some(body), &[]).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    }
    v.lv.shutdown().await;
}

/// The admin API's errors follow the vault API's conventions: an echoed id or name is cut (128 characters and
/// an ellipsis) with its control and bidirectional characters escaped; a bad body names the property and what
/// it must be, never a Rust type or serde's text; a mis-cased property is named (camelCase only).
#[tokio::test]
async fn admin_errors_bound_and_escape_what_they_echo_and_name_the_property() {
    let v = Vault::start().await;
    let long = "p".repeat(20_000);
    for path in [
        format!("/admin/principals/{long}"),
        format!("/admin/principals/{long}/secrets/{long}"),
        format!("/admin/roleAssignments/{long}"),
    ] {
        let method = if path.contains("/secrets/") || path.contains("roleAssignments") {
            Method::DELETE
        } else {
            Method::GET
        };
        let (s, _, b) = v.send(method, &path, None, &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(
            message.contains(&format!("{}…'", "p".repeat(128))),
            "{message}"
        );
    }
    let (s, _, b) = v
        .send(Method::GET, "/admin/principals/%E2%80%AEevil%0A", None, &[])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(
        b["error"]["message"],
        "Principal '\\u{202e}evil\\u{000a}' was not found."
    );
    for (method, path, body, want) in [
        (
            Method::POST,
            "/admin/principals",
            &br#"{"expiresOn":"x"}"#[..],
            "The request body's property 'expiresOn' is not valid: it must be an integer of Unix seconds.",
        ),
        (
            Method::POST,
            "/admin/principals",
            br#"{"Role":"Key Vault Reader"}"#,
            "The request body's property 'Role' is not known: property names are camelCase ('role').",
        ),
        (
            Method::POST,
            "/admin/principals",
            br#"[1, 2, 3, 4]"#,
            "The request body is not a JSON object.",
        ),
        (
            Method::POST,
            "/admin/roleAssignments",
            br#"{"role":"Key Vault Reader"}"#,
            "The request body lacks the required property 'principal' (a principal's client id (a string)).",
        ),
        (
            Method::PUT,
            "/admin/roles/r",
            br#"{"permissions":["get"],"permissions":["list"]}"#,
            "The request body has the property 'permissions' more than once.",
        ),
        (
            Method::PUT,
            "/admin/roles/r",
            br#"{"permissions":"get"}"#,
            "The request body's property 'permissions' is not valid: it must be a list of permissions (get, list, set, \
             delete, recover, backup, restore, purge, admin).",
        ),
        (
            Method::POST,
            "/admin/rekey",
            br#"{"batchSize":-1}"#,
            "The request body's property 'batchSize' is not valid: it must be an integer from 1 to 10000.",
        ),
    ] {
        let (s, _, b) = v.send(method.clone(), path, Some(body), &[]).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
        assert_eq!(b["error"]["message"], want, "{method} {path}");
    }
    // A permission's own message names the value, bounded.
    let (s, _, b) = v
        .send(
            Method::PUT,
            "/admin/roles/r",
            Some(format!(r#"{{"permissions":["get","{}"]}}"#, "l".repeat(1000)).as_bytes()),
            &[],
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadParameter");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "The request body's property 'permissions[1]' is not valid: unknown permission 'lll"
        ) && message.len() < 500,
        "{message}"
    );
    v.lv.shutdown().await;
}

/// Key Vault reads its routes' words in any case; a secret's name keeps the case it was sent in (names
/// compare without case), and `Restore` is the restore route for POST only.
#[tokio::test]
async fn route_words_are_read_in_any_case() {
    let v = Vault::start().await;
    let api = "api-version=7.6";
    let (s, _, set) = v
        .send(
            Method::PUT,
            &format!("/SECRETS/Mixed-Case?{api}"),
            Some(br#"{"value":"v1"}"#),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    let id = set["id"].as_str().unwrap();
    assert!(id.contains("/secrets/Mixed-Case/"), "{id}");
    let version = id.rsplit('/').next().unwrap();
    for path in [
        format!("/Secrets/mixed-case?{api}"),
        format!("/sEcReTs/MIXED-CASE/{version}?{api}"),
    ] {
        let (s, _, got) = v.send(Method::GET, &path, None, &[]).await;
        assert_eq!(
            (s, got["value"].as_str()),
            (StatusCode::OK, Some("v1")),
            "{path}: {got}"
        );
    }
    let (s, _, list) = v
        .send(Method::GET, &format!("/SECRETS?{api}"), None, &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert!(
        list["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"].as_str().unwrap().ends_with("/secrets/Mixed-Case"))
    );
    let (s, _, versions) = v
        .send(
            Method::GET,
            &format!("/secrets/mixed-case/Versions?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (s, versions["value"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1)),
        "{versions}"
    );
    let (s, _, backup) = v
        .send(
            Method::POST,
            &format!("/Secrets/mixed-case/BACKUP?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{backup}");
    let (s, _, deleted) = v
        .send(
            Method::DELETE,
            &format!("/SECRETS/mixed-case?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{deleted}");
    let (s, _, got) = v
        .send(
            Method::GET,
            &format!("/DeletedSecrets/MIXED-case?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    let (s, _, recovered) = v
        .send(
            Method::POST,
            &format!("/DELETEDSECRETS/mixed-case/Recover?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{recovered}");
    // Recovery is asynchronous in Key Vault's model; here it is done when answered.
    assert_eq!(v.get("mixed-case").await["value"], "v1");
    // Restore by POST in any case; PUT sets a secret of that name, shown as sent.
    v.send(
        Method::DELETE,
        &format!("/secrets/mixed-case?{api}"),
        None,
        &[],
    )
    .await;
    let (s, _, _) = v
        .send(
            Method::DELETE,
            &format!("/deletedsecrets/mixed-case?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let blob = serde_json::to_vec(&json!({"value": backup["value"]})).unwrap();
    let (s, _, restored) = v
        .send(
            Method::POST,
            &format!("/Secrets/RESTORE?{api}"),
            Some(&blob),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{restored}");
    assert!(
        restored["id"]
            .as_str()
            .unwrap()
            .contains("/secrets/Mixed-Case/"),
        "{restored}"
    );
    let (s, _, named) = v
        .send(
            Method::PUT,
            &format!("/secrets/Restore?{api}"),
            Some(br#"{"value":"r"}"#),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{named}");
    assert!(
        named["id"].as_str().unwrap().contains("/secrets/Restore/"),
        "{named}"
    );
    // A 405 names POST for the restore route in any case (a64-5).
    for path in ["/secrets/Restore", "/SECRETS/RESTORE/"] {
        let (s, allow, _) = v
            .send(Method::OPTIONS, &format!("{path}?{api}"), None, &[])
            .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(
            allow.as_deref(),
            Some("GET, PUT, PATCH, DELETE, POST"),
            "{path}"
        );
    }
    // Words that are not the route's stay refused: a 404 in Key Vault's shape.
    let (s, _, body) = v
        .send(
            Method::GET,
            &format!("/secretz/mixed-case?{api}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
}
