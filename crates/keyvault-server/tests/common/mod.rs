//! Helpers shared by the integration tests: an HTTPS client trusting the server's CA, tokens from the token
//! endpoint (client credentials), requests answered with JSON, role assignments.
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use keyvault_server::auth::{Assignment, Scope};
use keyvault_server::local::LocalVault;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

/// An HTTPS client that trusts the CA in `ca_pem` (the dev PKI of the server under test).
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    let tls = keyvault_server::tls::client_config_trusting(ca_pem).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// An HTTPS client that trusts the LocalVault's CA.
pub fn vault_client(lv: &LocalVault) -> reqwest::Client {
    https_client(lv.ca_cert_pem())
}

/// [`vault_client`] speaking HTTP/1.1 only (ALPN `http/1.1`).
pub fn vault_client_h1(lv: &LocalVault) -> reqwest::Client {
    let mut tls = keyvault_server::tls::client_config_trusting(lv.ca_cert_pem()).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .build()
        .unwrap()
}

/// `pairs` as an `application/x-www-form-urlencoded` body.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Asks the token endpoint at `url` for a token with client credentials: the status and the JSON body.
pub async fn request_token(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    secret: &str,
    scope: &str,
) -> (StatusCode, Value) {
    let resp = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("client_id", client_id),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ]))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (status, body)
}

/// A token from the token endpoint at `url`, which must answer 200.
pub async fn client_token(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    secret: &str,
    scope: &str,
) -> String {
    let (status, body) = request_token(http, url, client_id, secret, scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// The LocalVault's token endpoint.
pub fn token_url(lv: &LocalVault) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        lv.authority_host(),
        lv.tenant_id()
    )
}

/// The scope of the LocalVault's resource (`https://localhost:PORT/.default`).
pub fn vault_scope(lv: &LocalVault) -> String {
    let port = lv.vault_url().rsplit(':').next().unwrap();
    format!("https://localhost:{port}/.default")
}

/// Asks the LocalVault's token endpoint for a token for `client_id`: the status and the JSON body.
pub async fn request_vault_token(
    lv: &LocalVault,
    http: &reqwest::Client,
    client_id: &str,
    secret: &str,
) -> (StatusCode, Value) {
    request_token(http, &token_url(lv), client_id, secret, &vault_scope(lv)).await
}

/// A token from the LocalVault's token endpoint for `client_id`, which must answer 200.
pub async fn vault_token(
    lv: &LocalVault,
    http: &reqwest::Client,
    client_id: &str,
    secret: &str,
) -> String {
    client_token(http, &token_url(lv), client_id, secret, &vault_scope(lv)).await
}

/// `base` + `path` with `api-version=API` appended to the query.
pub fn api_url(base: &str, path: &str, api: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{base}{path}{sep}api-version={api}")
}

/// Sends `req` (with `body` as JSON, if any): the status and the JSON body (`Null` for an empty body).
pub async fn send_json(req: RequestBuilder, body: Option<Value>) -> (StatusCode, Value) {
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, json)
}

/// The status of listing secrets (`GET {base}/secrets?api-version=7.6`) with `token`.
pub async fn list_status(http: &reqwest::Client, base: &str, token: &str) -> StatusCode {
    http.get(format!("{base}/secrets?api-version=7.6"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// Assigns `role` to `principal` at `scope` in the LocalVault's policy.
pub fn assign(lv: &LocalVault, principal: &str, role: &str, scope: Scope) -> Assignment {
    lv.policy()
        .assign(Assignment {
            id: String::new(),
            principal: principal.to_string(),
            role: role.to_string(),
            scope,
        })
        .unwrap()
}

/// Serves `app` over https on 127.0.0.1 with a certificate of a private CA (the dev PKI made in `dir`), as
/// an identity provider or JWKS host would: the base URL (`https://127.0.0.1:port`), the CA file that
/// trusts it, and the accept loop's task.
pub async fn serve_https(
    app: axum::Router,
    dir: &std::path::Path,
) -> (String, std::path::PathBuf, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    let material = keyvault_server::tls::load_or_create_dev_pki(dir).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(keyvault_server::tls::server_config(&material).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (base, material.ca_pem_path.unwrap(), task)
}

/// Asks `status` every 250 ms until it answers `want`, for at most about 10 s: the last answer (for an
/// outcome that follows a background retry or refresh).
pub async fn status_within_10s(
    want: StatusCode,
    mut status: impl AsyncFnMut() -> StatusCode,
) -> StatusCode {
    let mut last = status().await;
    for _ in 0..40 {
        if last == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        last = status().await;
    }
    last
}

/// An HTTP/2 connection to the vault (over TLS, ALPN `h2`), with `window` as each stream's receive window.
pub async fn h2_connect(
    lv: &LocalVault,
    window: Option<u32>,
) -> h2::client::SendRequest<bytes::Bytes> {
    let mut tls = keyvault_server::tls::client_config_trusting(lv.ca_cert_pem()).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let port: u16 = lv.vault_url().rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut builder = h2::client::Builder::new();
    if let Some(window) = window {
        builder.initial_window_size(window);
    }
    let (send, conn) = builder.handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send.ready().await.unwrap()
}

/// A response's status, `Retry-After` and JSON body (read whole).
pub async fn answer(resp: h2::client::ResponseFuture) -> (StatusCode, Option<String>, Value) {
    let resp = resp.await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, retry, serde_json::from_slice(&bytes).unwrap())
}
