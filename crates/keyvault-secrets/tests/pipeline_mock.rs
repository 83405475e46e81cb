//! One policy at a time, against a tiny hand-made HTTPS server: the challenge flow on the wire,
//! throttling with Retry-After, paging links, and error bodies.

mod mock;

use futures_util::StreamExt;
use keyvault_secrets::credentials::StaticTokenCredential;
use keyvault_secrets::http::StatusCode;
use keyvault_secrets::{ErrorKind, RetryOptions, SecretClient, SecretClientOptions};
use mock::{MockResponse, start};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHALLENGE: &str = r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#;
const BUNDLE: &str = r#"{"value":"v","id":"https://kv.vault.azure.net/secrets/n/968bc1b35f5449dfaf7109294020deb5","attributes":{"enabled":true,"created":1613504488,"updated":1613504488,"recoveryLevel":"CustomizedRecoverable+Purgeable","recoverableDays":7}}"#;

fn unauthorized() -> MockResponse {
    MockResponse::json(401, r#"{"error":{"code":"Unauthorized","message":"AKV10000: Request is missing a Bearer or PoP token."}}"#)
        .header("www-authenticate", CHALLENGE)
}

fn client(url: &str, ca: &[u8]) -> SecretClient {
    SecretClient::new(
        url,
        Arc::new(StaticTokenCredential::from_token("tok-1")),
        Some(SecretClientOptions {
            verify_challenge_resource: false,
            additional_ca_certificates: vec![ca.to_vec()],
            trust_system_roots: false,
            retry: RetryOptions {
                max_retries: 2,
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_secs(5),
            },
            ..Default::default()
        }),
    )
    .unwrap()
}

#[tokio::test]
async fn challenge_flow_on_the_wire() {
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some("Bearer tok-1") => MockResponse::json(200, BUNDLE),
        Some(_) => unauthorized(),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let s = c.set_secret("n", "v", None).await.unwrap();
    assert_eq!(s.value(), Some("v"));
    c.get_secret("n", None).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    // 1: bare PUT, no token, no body.
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].target, "/secrets/n?api-version=2026-04-01");
    assert!(reqs[0].header("authorization").is_none());
    assert!(reqs[0].body.is_empty());
    // 2: the same PUT with token and body.
    assert_eq!(reqs[1].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(reqs[1].header("content-type"), Some("application/json"));
    assert_eq!(String::from_utf8_lossy(&reqs[1].body), r#"{"value":"v"}"#);
    assert!(reqs[1].header("x-ms-client-request-id").is_some());
    assert!(
        reqs[1]
            .header("user-agent")
            .unwrap()
            .starts_with("azsdk-rust-keyvault-secrets/")
    );
    // 3: later requests carry the cached token at once; latest version has a trailing slash.
    assert_eq!(reqs[2].method, "GET");
    assert_eq!(reqs[2].target, "/secrets/n/?api-version=2026-04-01");
    assert_eq!(reqs[2].header("authorization"), Some("Bearer tok-1"));
}

#[tokio::test]
async fn resource_verification_blocks_a_foreign_resource() {
    let server = start(|_, _| unauthorized()).await;
    let c = SecretClient::new(
        &server.url,
        Arc::new(StaticTokenCredential::from_token("tok-1")),
        Some(SecretClientOptions {
            additional_ca_certificates: vec![server.ca_pem.clone()],
            ..Default::default()
        }),
    )
    .unwrap();
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClientAuthentication);
    // The token was never sent.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none())
    );
}

#[tokio::test]
async fn throttled_requests_wait_for_retry_after() {
    let server = start(|req, n| match (req.header("authorization"), n) {
        (None, _) => unauthorized(),
        (Some(_), 1) => MockResponse::json(
            429,
            r#"{"error":{"code":"Throttled","message":"slow down"}}"#,
        )
        .header("retry-after", "1"),
        (Some(_), _) => MockResponse::json(200, BUNDLE),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let started = Instant::now();
    // POST (not idempotent) is still retried on 429.
    c.begin_recover_deleted_secret("n").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 3);
}

/// A `Retry-After` longer than `max_delay` (5 s here) is not waited for, nor retried sooner than asked: the
/// 429 comes back at once, with its code. Nor does a retry wait past the call's timeout: a 3-s `Retry-After`
/// within a 2-s call ends the call with the 429, not with a timeout.
#[tokio::test]
async fn throttling_longer_than_the_caller_waits_returns_the_429() {
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) => MockResponse::json(
            429,
            r#"{"error":{"code":"Throttled","message":"slow down"}}"#,
        )
        .header(
            "retry-after",
            if req.target.contains("long") {
                "3600"
            } else {
                "3"
            },
        ),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let started = Instant::now();
    let e = c.get_secret("long", None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(e.error_code(), Some("Throttled"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 1 + 1); // challenge + 1 try
    let within = c
        .with_call_options(keyvault_secrets::CallOptions {
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .unwrap();
    let started = Instant::now();
    let e = within.get_secret("short", None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 2 + 1);
}

/// A delete poll throttled for longer than the client waits (the 429 given back at once) fails the wait
/// with the service's answer, as Python's poller does (it does not poll on without saying why); the delete
/// itself was accepted, and a later wait finds it done.
#[tokio::test]
async fn a_throttled_poll_fails_the_wait_with_the_429() {
    const DELETED: &str = r#"{"recoveryId":"https://kv.vault.azure.net/deletedsecrets/n","deletedDate":1613504488,"scheduledPurgeDate":1614109288,"id":"https://kv.vault.azure.net/secrets/n/968bc1b35f5449dfaf7109294020deb5","attributes":{"enabled":true,"created":1613504488,"updated":1613504488,"recoveryLevel":"CustomizedRecoverable+Purgeable","recoverableDays":7}}"#;
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = polls.clone();
    let server = start(move |req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) if req.method == "DELETE" => MockResponse::json(200, DELETED),
        Some(_) => {
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                MockResponse::json(
                    429,
                    r#"{"error":{"code":"Throttled","message":"slow down"}}"#,
                )
                .header("retry-after", "3600")
            } else {
                MockResponse::json(200, DELETED)
            }
        }
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let mut poller = c.begin_delete_secret("n").await.unwrap();
    poller.set_polling_interval(Duration::from_millis(20));
    let started = Instant::now();
    let e = poller
        .wait_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        poller.wait_timeout(Duration::from_secs(5)).await.unwrap(),
        keyvault_secrets::PollerStatus::Succeeded
    );
}

/// A connection error tells whether the request may have reached the service: not for a port that refuses
/// connections, yes for a try that timed out after the request went out (a change may have been made).
#[tokio::test]
async fn connection_errors_tell_whether_the_request_was_sent() {
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) => MockResponse::json(200, BUNDLE).delayed(Duration::from_secs(3)),
    })
    .await;
    let once = keyvault_secrets::CallOptions {
        request_timeout: Some(Duration::from_millis(300)),
        retry: Some(RetryOptions {
            max_retries: 0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = client(&server.url, &server.ca_pem)
        .with_call_options(once.clone())
        .unwrap();
    let e = c.set_secret("n", "v", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(!e.is_request_unsent(), "{e}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let c = client(&url, &server.ca_pem)
        .with_call_options(once)
        .unwrap();
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.is_request_unsent(), "{e}");
}

#[tokio::test]
async fn server_errors_are_retried_as_azure_core_does() {
    // 500 for everything; 502 for the path `/secrets/bad-gateway…`.
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) if req.target.contains("bad-gateway") => MockResponse::json(
            502,
            r#"{"error":{"code":"BadGateway","message":"upstream"}}"#,
        ),
        Some(_) => MockResponse::json(
            500,
            r#"{"error":{"code":"InternalError","message":"boom"}}"#,
        ),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HttpResponse);
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(e.error_code(), Some("InternalError"));
    assert_eq!(e.message(), "boom");
    assert_eq!(server.requests().len(), 1 + 3); // challenge + 1 try + 2 retries
    // POST and PATCH are retried on 500, 503 and 504 (azure-core's rule) …
    let before = server.requests().len();
    let e = c.backup_secret("n").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(server.requests().len(), before + 3);
    // … and not on 502, which GET is retried on.
    let before = server.requests().len();
    let e = c.backup_secret("bad-gateway").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
    assert_eq!(server.requests().len(), before + 1);
    let before = server.requests().len();
    let e = c
        .update_secret_properties(
            "bad-gateway",
            None,
            keyvault_secrets::UpdateSecretPropertiesOptions::default().enabled(true),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
    assert_eq!(server.requests().len(), before + 1);
    let before = server.requests().len();
    c.get_secret("bad-gateway", None).await.unwrap_err();
    assert_eq!(server.requests().len(), before + 3);
}

#[tokio::test]
async fn next_links_are_followed_with_our_api_version() {
    let server = start(|req, _| {
        if req.header("authorization").is_none() {
            return unauthorized();
        }
        let item = |n: &str| format!(r#"{{"id":"https://kv.vault.azure.net/secrets/{n}","attributes":{{"enabled":true}}}}"#);
        if req.target.contains("skiptoken") {
            MockResponse::json(200, format!(r#"{{"value":[{}],"nextLink":null}}"#, item("b")))
        } else {
            MockResponse::json(
                200,
                format!(r#"{{"value":[{}],"nextLink":"https://kv.vault.azure.net:443/secrets?api-version=7.2&$skiptoken=eyJOZXh0TWFya2VyIjoiMiJ9&maxresults=1"}}"#, item("a")),
            )
        }
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let names: Vec<String> = c
        .list_properties_of_secrets(Some(1))
        .unwrap()
        .map(|p| p.unwrap().name)
        .collect()
        .await;
    assert_eq!(names, vec!["a", "b"]);
    let reqs = server.requests();
    assert_eq!(
        reqs[1].target,
        "/secrets?api-version=2026-04-01&maxresults=1"
    );
    // Sent to our own vault, not to the link's host; api-version replaced; the token kept verbatim.
    assert_eq!(
        reqs[2].target,
        "/secrets?api-version=2026-04-01&$skiptoken=eyJOZXh0TWFya2VyIjoiMiJ9&maxresults=1"
    );
}

#[tokio::test]
async fn rejected_token_gets_one_fresh_challenge_then_fails() {
    let server = start(|_, _| unauthorized()).await;
    let c = client(&server.url, &server.ca_pem);
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClientAuthentication);
    assert!(e.message().contains("AKV10000"), "{e}");
    // bare + authorised + one re-challenged retry.
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn client_secret_credential_posts_the_v2_form() {
    use keyvault_secrets::credentials::{
        ClientSecretCredential, ClientSecretCredentialOptions, TokenCredential,
    };
    let server = start(|req, _| {
        if req.target == "/my-tenant/oauth2/v2.0/token" {
            MockResponse::json(200, r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"at-1"}"#)
        } else {
            MockResponse::json(400, r#"{"error":"invalid_request","error_description":"AADSTS900144: wrong path"}"#)
        }
    })
    .await;
    let options = ClientSecretCredentialOptions {
        authority_host: format!("{}/", server.url),
        additional_ca_certificates: vec![server.ca_pem.clone()],
        trust_system_roots: false,
        ..Default::default()
    };
    let c =
        ClientSecretCredential::new("my-tenant", "app-id", "p@ss&word=1", Some(options.clone()))
            .unwrap();
    let t = c
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .unwrap();
    assert_eq!(t.token.expose(), "at-1");
    let req = &server.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    assert!(form.contains(&("client_secret".into(), "p@ss&word=1".into())));
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
    assert!(form.contains(&("scope".into(), "https://vault.azure.net/.default".into())));
    assert!(form.contains(&("client_id".into(), "app-id".into())));
    // A caller that does not handle CAE challenges: no client capability announced.
    assert!(!form.iter().any(|(k, _)| k == "claims"), "{form:?}");
    assert!(!format!("{c:?}").contains("p@ss"));
    // One that does (the SecretClient): `CP1` in the claims, as MSAL sends its client capabilities.
    let cae = keyvault_secrets::credentials::TokenRequestOptions {
        enable_cae: true,
        ..Default::default()
    };
    c.get_token(&["https://vault.azure.net/.default"], Some(cae))
        .await
        .unwrap();
    let req = &server.requests()[1];
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let claims = form
        .iter()
        .find(|(k, _)| k == "claims")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        claims.map(|c| serde_json::from_str::<serde_json::Value>(c).unwrap()),
        Some(serde_json::json!({"access_token": {"xms_cc": {"values": ["CP1"]}}}))
    );
    let other = ClientSecretCredential::new("other", "app-id", "s", Some(options)).unwrap();
    let e = other
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential);
    assert!(e.message().contains("AADSTS900144"), "{e}");
}

#[tokio::test]
async fn managed_identity_imds_and_app_service() {
    use keyvault_secrets::credentials::{
        ManagedIdentityCredential, ManagedIdentityCredentialOptions, TokenCredential,
    };
    let server = start(|req, _| {
        if req.target.starts_with("/imds?") && req.header("metadata") == Some("true") {
            MockResponse::json(200, r#"{"access_token":"imds-tok","expires_on":"4102444800","resource":"https://vault.azure.net","token_type":"Bearer"}"#)
        } else if req.target.starts_with("/msi?") && req.header("x-identity-header") == Some("hdr") {
            MockResponse::json(200, r#"{"access_token":"app-tok","expires_on":4102444800}"#)
        } else {
            MockResponse::json(400, r#"{"error":"invalid_request","error_description":"Identity not found"}"#)
        }
    })
    .await;
    let transport = SecretClientOptions {
        additional_ca_certificates: vec![server.ca_pem.clone()],
        ..Default::default()
    }
    .build_transport()
    .unwrap();
    let options = ManagedIdentityCredentialOptions {
        imds_endpoint: Some(format!("{}/imds", server.url)),
        client_id: Some("user-assigned".into()),
        transport: Some(transport.clone()),
        ..Default::default()
    };
    let imds = ManagedIdentityCredential::with_env(|_| None, Some(options.clone())).unwrap();
    let t = imds
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .unwrap();
    assert_eq!(t.token.expose(), "imds-tok");
    assert_eq!(t.expires_on.unix_timestamp(), 4102444800);
    let r = &server.requests()[0];
    assert_eq!(
        r.target,
        "/imds?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=user-assigned"
    );
    let url = format!("{}/msi", server.url);
    let app = ManagedIdentityCredential::with_env(
        |n| match n {
            "IDENTITY_ENDPOINT" => Some(url.clone()),
            "IDENTITY_HEADER" => Some("hdr".into()),
            _ => None,
        },
        Some(options),
    )
    .unwrap();
    let t = app
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .unwrap();
    assert_eq!(t.token.expose(), "app-tok");
    assert!(
        server.requests()[1]
            .target
            .starts_with("/msi?api-version=2019-08-01&resource=")
    );
    assert!(!format!("{app:?}").contains("hdr"));
}

/// azure-identity's rules for IMDS: no answer, a 400 (no identity assigned, or not the one asked for), a 403
/// from a proxy that cannot reach it, or an answer that is not JSON mean "unavailable" (a chain goes on);
/// any other error answer is a failure. App Service's endpoint answering 400 is a failure too.
#[tokio::test]
async fn managed_identity_unavailable_or_failed() {
    use keyvault_secrets::credentials::{
        ManagedIdentityCredential, ManagedIdentityCredentialOptions, TokenCredential,
    };
    let server = start(|req, _| {
        let path = req.target.split('?').next().unwrap_or_default();
        match path {
            "/imds-400" | "/app-400" => MockResponse::json(
                400,
                r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
            ),
            "/imds-403" => MockResponse::json(
                403,
                r#"{"error":"connecting to 169.254.169.254:80: dial tcp: connectex: A socket operation was attempted to an unreachable network."}"#,
            ),
            "/imds-html" => MockResponse {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: "<html>captive portal</html>".into(),
                delay: None,
                chunked: false,
            },
            _ => MockResponse::json(
                500,
                r#"{"error":"unknown","error_description":"IMDS is having a bad day"}"#,
            ),
        }
    })
    .await;
    let transport = SecretClientOptions {
        additional_ca_certificates: vec![server.ca_pem.clone()],
        ..Default::default()
    }
    .build_transport()
    .unwrap();
    let scope = ["https://vault.azure.net/.default"];
    let imds = |path: &str, client_id: Option<&str>| {
        ManagedIdentityCredential::with_env(
            |_| None,
            Some(ManagedIdentityCredentialOptions {
                imds_endpoint: Some(format!("{}{path}", server.url)),
                client_id: client_id.map(str::to_string),
                transport: Some(transport.clone()),
                retry: RetryOptions::none(),
                ..Default::default()
            }),
        )
        .unwrap()
    };
    for (path, client_id, kind, says) in [
        (
            "/imds-400",
            None,
            ErrorKind::CredentialUnavailable,
            "no identity has been assigned to this resource",
        ),
        (
            "/imds-400",
            Some("user-assigned"),
            ErrorKind::CredentialUnavailable,
            "the requested identity has not been assigned to this resource",
        ),
        (
            "/imds-403",
            None,
            ErrorKind::CredentialUnavailable,
            "unreachable",
        ),
        (
            "/imds-html",
            None,
            ErrorKind::CredentialUnavailable,
            "not IMDS",
        ),
        (
            "/imds-500",
            None,
            ErrorKind::Credential,
            "IMDS is having a bad day",
        ),
    ] {
        let e = imds(path, client_id)
            .get_token(&scope, None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{path}: {e}");
        assert!(e.message().contains(says), "{path}: {e}");
    }
    let url = format!("{}/app-400", server.url);
    let app = ManagedIdentityCredential::with_env(
        |n| match n {
            "IDENTITY_ENDPOINT" => Some(url.clone()),
            "IDENTITY_HEADER" => Some("hdr".into()),
            _ => None,
        },
        Some(ManagedIdentityCredentialOptions {
            transport: Some(transport.clone()),
            retry: RetryOptions::none(),
            ..Default::default()
        }),
    )
    .unwrap();
    let e = app.get_token(&scope, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(e.message().contains("Identity not found"), "{e}");
}

/// Nothing listening at the IMDS address: unavailable.
#[tokio::test]
async fn managed_identity_unreachable_is_unavailable() {
    use keyvault_secrets::credentials::{
        ManagedIdentityCredential, ManagedIdentityCredentialOptions, TokenCredential,
    };
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = ManagedIdentityCredential::with_env(
        |_| None,
        Some(ManagedIdentityCredentialOptions {
            imds_endpoint: Some(format!(
                "http://127.0.0.1:{port}/metadata/identity/oauth2/token"
            )),
            connect_timeout: Some(Duration::from_secs(1)),
            retry: RetryOptions::none(),
            ..Default::default()
        }),
    )
    .unwrap();
    let e = c
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CredentialUnavailable, "{e}");
    assert!(
        e.message()
            .contains("no managed identity endpoint responded"),
        "{e}"
    );
}

/// A connection error names the URL as the logs show it: a `$skiptoken`'s value redacted.
#[tokio::test]
async fn connection_errors_redact_the_query() {
    use keyvault_secrets::http::{Method, Request};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let transport = SecretClientOptions::default().build_transport().unwrap();
    let e = transport
        .send(&Request::new(
            Method::GET,
            format!("http://127.0.0.1:{port}/secrets?api-version=7.6&$skiptoken=SKIP-CANARY"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    let all = format!("{e} {e:?}");
    assert!(
        !all.contains("SKIP-CANARY")
            && e.message()
                .contains("/secrets?api-version=7.6&$skiptoken=REDACTED"),
        "{all}"
    );
}

#[tokio::test]
async fn a_per_call_timeout_fires_against_a_slow_endpoint() {
    // Every authorised request takes far longer than the call may.
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) => MockResponse::json(200, BUNDLE).delayed(Duration::from_secs(600)),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let quick = c
        .with_call_options(
            keyvault_secrets::CallOptions::default().timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let e = quick.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(e.message().contains("timeout of 300ms"), "{e}");
    // The whole call is bounded: the retries the client allows did not all happen.
    assert!(server.requests().len() <= 3, "{}", server.requests().len());
    // A per-try timeout: each try times out and is retried (GET), then the call fails with the try's error.
    let per_try = c
        .with_call_options(
            keyvault_secrets::CallOptions::default()
                .request_timeout(Duration::from_millis(200))
                .retry(RetryOptions {
                    max_retries: 1,
                    initial_delay: Duration::from_millis(10),
                    max_delay: Duration::from_secs(1),
                }),
        )
        .unwrap();
    let before = server.requests().len();
    let e = per_try.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(e.message().contains("timed out"), "{e}");
    assert_eq!(server.requests().len(), before + 2);
}

#[tokio::test]
async fn a_timed_out_try_is_retried_and_the_retry_answers() {
    // The first authorised request is slow, the next ones are quick.
    let server = start(|req, n| match (req.header("authorization"), n) {
        (None, _) => unauthorized(),
        (Some(_), 1) => MockResponse::json(200, BUNDLE).delayed(Duration::from_secs(600)),
        (Some(_), _) => MockResponse::json(200, BUNDLE),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let view = c
        .with_call_options(
            keyvault_secrets::CallOptions::default().request_timeout(Duration::from_millis(200)),
        )
        .unwrap();
    let s = view.get_secret("n", None).await.unwrap();
    assert_eq!(s.value(), Some("v"));
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn per_call_headers_and_retries_ride_on_every_request_of_the_call() {
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) => MockResponse::json(
            503,
            r#"{"error":{"code":"ServiceUnavailable","message":"busy"}}"#,
        ),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let view = c
        .with_call_options(
            keyvault_secrets::CallOptions::default()
                .header(
                    keyvault_secrets::http::HeaderName::from_static("x-tenant-hint"),
                    keyvault_secrets::http::HeaderValue::from_static("blue"),
                )
                .header(
                    keyvault_secrets::http::HeaderName::from_static("accept"),
                    keyvault_secrets::http::HeaderValue::from_static(
                        "application/json; charset=utf-8",
                    ),
                ),
        )
        .unwrap();
    view.get_secret("n", None).await.unwrap_err();
    let reqs = server.requests();
    // The challenge round and the try with its 2 retries (the client's retry options).
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        assert_eq!(r.header("x-tenant-hint"), Some("blue"));
        assert_eq!(r.header("accept"), Some("application/json; charset=utf-8"));
    }
    // A view of the view keeps the header and changes the retries: one try, no retry.
    let no_retry = view
        .with_call_options(keyvault_secrets::CallOptions::default().retry(RetryOptions::none()))
        .unwrap();
    no_retry.get_secret("n", None).await.unwrap_err();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[4].header("x-tenant-hint"), Some("blue"));
    // The client itself sends neither.
    c.with_call_options(keyvault_secrets::CallOptions::default().retry(RetryOptions::none()))
        .unwrap()
        .get_secret("n", None)
        .await
        .unwrap_err();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(reqs[5].header("x-tenant-hint"), None);
    assert_eq!(reqs[5].header("accept"), Some("application/json"));
}

#[tokio::test]
async fn extreme_retry_delays_never_panic_and_statuses_up_to_998_are_retried() {
    // 503 for everything; the status in the path `/secrets/status-NNN` otherwise.
    let server = start(|req, _| match req.header("authorization") {
        None => unauthorized(),
        Some(_) => {
            let status = req
                .target
                .split("status-")
                .nth(1)
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or(503);
            let answer = MockResponse::json(
                status,
                r#"{"error":{"code":"ServiceUnavailable","message":"busy"}}"#,
            );
            if req.target.contains("huge") {
                answer.header("retry-after", &u64::MAX.to_string())
            } else {
                answer
            }
        }
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    // The auditor's options: the longest initial delay, a short cap. Two 503s used to panic in the backoff.
    for (i, initial_delay) in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::ZERO]
        .into_iter()
        .enumerate()
    {
        let view = c
            .with_call_options(
                keyvault_secrets::CallOptions::default().retry(RetryOptions {
                    max_retries: 2,
                    initial_delay,
                    max_delay: Duration::from_millis(10),
                }),
            )
            .unwrap();
        let before = server.requests().len();
        let e = view.get_secret("n", None).await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        // One try and 2 retries (the first call also has the challenge round).
        let challenge = usize::from(i == 0);
        assert_eq!(server.requests().len() - before, challenge + 3);
    }
    // The longest cap there is, with a Retry-After too long for any clock, within a call timeout: no panic
    // (the deadline's arithmetic overflows), the 503 comes back at once. And the longest timeout there is
    // is no timeout (no panic either).
    let options = |timeout| keyvault_secrets::CallOptions {
        timeout: Some(timeout),
        retry: Some(RetryOptions {
            max_retries: 1,
            initial_delay: Duration::ZERO,
            max_delay: Duration::MAX,
        }),
        ..Default::default()
    };
    let view = c
        .with_call_options(options(Duration::from_secs(3600)))
        .unwrap();
    let e = view.get_secret("status-503-huge", None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let view = c.with_call_options(options(Duration::MAX)).unwrap();
    let e = view.get_secret("status-404", None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    // azure-core retries 506..=998 (not 501, 505 nor 999).
    let before = server.requests().len();
    let cases = [(599, 3), (600, 3), (998, 3), (999, 1), (501, 1), (505, 1)];
    for (status, _) in cases {
        let e = c
            .get_secret(&format!("status-{status}"), None)
            .await
            .unwrap_err();
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status));
    }
    let counts: Vec<usize> = server.requests()[before..]
        .iter()
        .fold(Vec::<(String, usize)>::new(), |mut acc, r| {
            match acc.last_mut() {
                Some((t, n)) if *t == r.target => *n += 1,
                _ => acc.push((r.target.clone(), 1)),
            }
            acc
        })
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(counts, cases.map(|(_, tries)| tries));
}

/// A certificate-backed secret: `get_secret_as` asks for the value's format (`outContentType`), and the
/// answer's `previousVersion` reaches `SecretProperties::previous_version`; an api-version before
/// 2025-06-01-preview is refused before any request, as Python refuses `out_content_type` there.
#[tokio::test]
async fn a_certificate_backed_secret_in_another_format() {
    const CERT_BUNDLE: &str = r#"{"value":"-----BEGIN CERTIFICATE-----","contentType":"application/x-pem-file","id":"https://kv.vault.azure.net/secrets/cert/968bc1b35f5449dfaf7109294020deb5","kid":"https://kv.vault.azure.net/keys/cert/968bc1b35f5449dfaf7109294020deb5","managed":true,"previousVersion":"0123456789abcdef0123456789abcdef","attributes":{"enabled":true,"created":1613504488,"updated":1613504488}}"#;
    let server = start(|req, _| match req.header("authorization") {
        Some("Bearer tok-1") => MockResponse::json(200, CERT_BUNDLE),
        _ => unauthorized(),
    })
    .await;
    let c = client(&server.url, &server.ca_pem);
    let s = c
        .get_secret_as("cert", None, keyvault_secrets::ContentType::Pem)
        .await
        .unwrap();
    assert_eq!(
        s.properties.previous_version.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        s.properties.content_type.as_deref(),
        Some("application/x-pem-file")
    );
    let last = server.requests().pop().unwrap();
    assert_eq!(
        last.target,
        "/secrets/cert/?api-version=2026-04-01&outContentType=application%2Fx-pem-file"
    );
    let old = SecretClient::new(
        &server.url,
        Arc::new(StaticTokenCredential::from_token("tok-1")),
        Some(SecretClientOptions {
            api_version: keyvault_secrets::ApiVersion::V7_6,
            additional_ca_certificates: vec![server.ca_pem.clone()],
            trust_system_roots: false,
            ..Default::default()
        }),
    )
    .unwrap();
    let asked = server.requests().len();
    let e = old
        .get_secret_as("cert", None, keyvault_secrets::ContentType::Pfx)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(server.requests().len(), asked);
}
