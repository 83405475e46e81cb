//! The client against a broken or hostile vault or token authority (a hand-made HTTPS server on 127.0.0.1):
//! answers too large to read, paging loops, redirects, authorities that quote the client's secret, and
//! challenges naming several scopes or encoded claims.

mod mock;

use async_trait::async_trait;
use futures_util::StreamExt;
use keyvault_secrets::credentials::{
    AccessToken, ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, TokenCredential, TokenRequestOptions,
};
use keyvault_secrets::{ErrorKind, RetryOptions, SecretClient, SecretClientOptions};
use mock::{MockResponse, MockServer, start};
use std::sync::{Arc, Mutex};

const BUNDLE: &str = r#"{"value":"v","id":"https://kv.vault.azure.net/secrets/n/968bc1b35f5449dfaf7109294020deb5","attributes":{"enabled":true,"created":1613504488,"updated":1613504488,"recoveryLevel":"CustomizedRecoverable+Purgeable","recoverableDays":7}}"#;
const SCOPE: &str = "https://vault.azure.net/.default";

/// A credential that records what it was asked for, and answers a fixed token.
#[derive(Debug, Default)]
struct Recording {
    asked: Mutex<Vec<(String, Option<TokenRequestOptions>)>>,
}

#[async_trait]
impl TokenCredential for Recording {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> keyvault_secrets::Result<AccessToken> {
        self.asked.lock().unwrap().push((scopes.join(" "), options));
        Ok(AccessToken::new(
            "tok-1",
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

fn client_with(
    url: &str,
    ca: &[u8],
    credential: Arc<dyn TokenCredential>,
    tweak: impl FnOnce(&mut SecretClientOptions),
) -> SecretClient {
    let mut options = SecretClientOptions {
        verify_challenge_resource: false,
        additional_ca_certificates: vec![ca.to_vec()],
        trust_system_roots: false,
        retry: RetryOptions::none(),
        ..Default::default()
    };
    tweak(&mut options);
    SecretClient::new(url, credential, Some(options)).unwrap()
}

/// A client-secret credential (tenant-1, app-1, `secret`) whose authority is `server`, without retries.
fn credential_at(server: &MockServer, secret: &str) -> ClientSecretCredential {
    ClientSecretCredential::new(
        "tenant-1",
        "app-1",
        secret,
        Some(ClientSecretCredentialOptions {
            authority_host: server.url.clone(),
            additional_ca_certificates: vec![server.ca_pem.clone()],
            trust_system_roots: false,
            retry: RetryOptions::none(),
            ..Default::default()
        }),
    )
    .unwrap()
}

fn path(target: &str) -> &str {
    target.split('?').next().unwrap_or_default()
}

/// An answer longer than `max_response_body_size` is not read past the limit, whether its length is announced
/// (`Content-Length`) or not (chunked): a Data error names the limit and the URL without its query, and the
/// call is not retried. Answers within the limit are read as before.
#[tokio::test]
async fn an_answer_past_the_body_limit_is_refused() {
    let server = start(|req, _| match path(&req.target) {
        "/secrets/big/" => MockResponse::json(200, "x".repeat(5000)),
        "/secrets/chunked/" => MockResponse::json(200, "x".repeat(5000)).chunked(),
        _ => MockResponse::json(200, BUNDLE),
    })
    .await;
    let c = client_with(
        &server.url,
        &server.ca_pem,
        Arc::new(Recording::default()),
        |o| {
            o.max_response_body_size = 1000;
            o.retry = RetryOptions {
                max_retries: 2,
                initial_delay: std::time::Duration::from_millis(1),
                max_delay: std::time::Duration::from_millis(1),
            };
        },
    );
    for name in ["big", "chunked"] {
        let e = c.get_secret(name, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data, "{name}: {e}");
        let m = e.message();
        assert!(
            m.contains("(1000 bytes: SecretClientOptions::max_response_body_size)")
                && m.contains(&format!("{}/secrets/{name}/ is", server.url))
                && !m.contains("api-version"),
            "{name}: {m}"
        );
        let asked = server
            .requests()
            .iter()
            .filter(|r| path(&r.target) == format!("/secrets/{name}/"))
            .count();
        assert_eq!(asked, 1, "{name}: not retried");
    }
    assert_eq!(c.get_secret("n", None).await.unwrap().value(), Some("v"));

    let zero = SecretClient::new(
        &server.url,
        Arc::new(Recording::default()),
        Some(SecretClientOptions {
            max_response_body_size: 0,
            ..Default::default()
        }),
    )
    .unwrap_err();
    assert_eq!(zero.kind(), ErrorKind::InvalidArgument);
}

/// Only a backup's answer may be as long as `max_response_body_size`: every other operation's is read up to
/// 4 MiB (`ANSWER_LIMIT`), so that many requests in flight (an export's) cannot each hold 64 MiB of a hostile
/// server's answer.
#[tokio::test]
async fn answers_other_than_a_backup_are_read_up_to_4_mib() {
    use keyvault_secrets::http::ANSWER_LIMIT;
    let big = "A".repeat(ANSWER_LIMIT + 1000);
    let backup = format!(r#"{{"value":"{big}"}}"#);
    let server = start(move |req, _| match path(&req.target) {
        "/secrets/big/" => MockResponse::json(200, "x".repeat(ANSWER_LIMIT + 1)).chunked(),
        "/secrets/big/backup" => MockResponse::json(200, backup.clone()),
        _ => MockResponse::json(200, BUNDLE),
    })
    .await;
    let c = client_with(
        &server.url,
        &server.ca_pem,
        Arc::new(Recording::default()),
        |o| o.retry = RetryOptions::none(),
    );
    let e = c.get_secret("big", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert!(
        e.message().contains(&format!(
            "({ANSWER_LIMIT} bytes: the operation's limit on its answer)"
        )),
        "{e}"
    );
    let blob = c.backup_secret("big").await.unwrap();
    assert_eq!(blob.len(), (ANSWER_LIMIT + 1000) / 4 * 3);
}

/// A token endpoint's answer is read up to 1 MiB: a longer one fails the credential, without reading it all.
#[tokio::test]
async fn a_token_answer_past_one_mib_is_refused() {
    let server = start(|_, _| {
        MockResponse::json(
            200,
            format!(
                r#"{{"access_token":"{}","expires_in":3600}}"#,
                "t".repeat(2 * 1024 * 1024)
            ),
        )
        .chunked()
    })
    .await;
    let credential = credential_at(&server, "the-secret");
    let e = credential.get_token(&[SCOPE], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(
        e.message().contains("cannot read the authority's answer")
            && e.message()
                .contains("(1048576 bytes: the fixed limit of a token response)"),
        "{e}"
    );
}

/// A managed identity endpoint (App Service's, plain http) that streams a body without end: the credential
/// stops at 1 MiB with an error (it used to read until memory ran out).
#[tokio::test]
async fn a_managed_identity_endpoint_that_never_stops_is_cut_off() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/msi", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                // Chunks until the client hangs up.
                while conn.write_all(chunk.as_bytes()).is_ok() {}
            });
        }
    });
    let credential = ManagedIdentityCredential::with_env(
        |n| match n {
            "IDENTITY_ENDPOINT" => Some(url.clone()),
            "IDENTITY_HEADER" => Some("hdr".into()),
            _ => None,
        },
        Some(ManagedIdentityCredentialOptions {
            retry: RetryOptions::none(),
            ..Default::default()
        }),
    )
    .unwrap();
    let e = credential.get_token(&[SCOPE], None).await.unwrap_err();
    assert!(e.is_client_authentication(), "{e}");
    assert!(
        e.message()
            .contains("(1048576 bytes: the fixed limit of a token response)"),
        "{e}"
    );
}

/// An authority whose error quotes the request (or a client id that was really the secret) does not get the
/// credential's secret into the error: it is `REDACTED`, as written and as form-encoded.
#[tokio::test]
async fn an_authority_quoting_the_secret_does_not_get_it_into_the_error() {
    const SECRET: &str = "CANARY-s3cr+t/=x";
    let server = start(|req, _| {
        let body = String::from_utf8_lossy(&req.body).to_string();
        MockResponse::json(
            400,
            serde_json::json!({
                "error": "invalid_client",
                "error_description": format!("got: {body}; application '{SECRET}' was not found"),
            })
            .to_string(),
        )
    })
    .await;
    let credential = credential_at(&server, SECRET);
    let e = credential.get_token(&[SCOPE], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential);
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("CANARY"), "{shown}");
    assert!(
        shown.contains("client_secret=REDACTED&") && shown.contains("application 'REDACTED'"),
        "{shown}"
    );
}

/// A challenge whose resource or scope is not one absolute https URL is refused before any token is asked
/// for (verification off: the check is not the domain check); a well-formed one is used.
#[tokio::test]
async fn a_challenge_must_name_one_https_scope() {
    let challenge = |params: &'static str| {
        move |req: &mock::MockRequest, _| match req.header("authorization") {
            None => MockResponse::json(401, "{}").header(
                "www-authenticate",
                &format!(r#"Bearer authorization="https://login.example/tenant-1", {params}"#),
            ),
            Some(_) => MockResponse::json(200, BUNDLE),
        }
    };
    for params in [
        r#"resource="https://localhost/x https://management.azure.com""#,
        r#"scope="https://localhost/.default https://graph.microsoft.com/.default offline_access""#,
        r#"resource="http://localhost""#,
    ] {
        let server = start(challenge(params)).await;
        let credential = Arc::new(Recording::default());
        let c = client_with(&server.url, &server.ca_pem, credential.clone(), |_| {});
        let e = c.get_secret("n", None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ClientAuthentication, "{params}: {e}");
        assert!(
            e.message().contains("the challenge is refused"),
            "{params}: {e}"
        );
        assert!(credential.asked.lock().unwrap().is_empty(), "{params}");
    }
    let server = start(challenge(r#"resource="https://vault.azure.net""#)).await;
    let credential = Arc::new(Recording::default());
    let c = client_with(&server.url, &server.ca_pem, credential.clone(), |_| {});
    c.get_secret("n", None).await.unwrap();
    assert_eq!(credential.asked.lock().unwrap()[0].0, SCOPE);
}

/// CAE: a challenge's `claims` are base64url (here unpadded) JSON, and the credential is given the JSON; claims
/// that are not are refused.
#[tokio::test]
async fn challenge_claims_are_decoded_for_the_credential() {
    const CLAIMS_JSON: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(CLAIMS_JSON);
    let header = format!(
        r#"Bearer authorization="https://login.example/tenant-1", resource="https://vault.azure.net", claims="{encoded}""#
    );
    let server = start(move |req, _| match req.header("authorization") {
        None => MockResponse::json(401, "{}").header("www-authenticate", &header),
        Some(_) => MockResponse::json(200, BUNDLE),
    })
    .await;
    let credential = Arc::new(Recording::default());
    let c = client_with(&server.url, &server.ca_pem, credential.clone(), |_| {});
    c.get_secret("n", None).await.unwrap();
    let asked = credential.asked.lock().unwrap().clone();
    assert_eq!(
        asked[0].1.as_ref().and_then(|o| o.claims.as_deref()),
        Some(CLAIMS_JSON)
    );

    let server = start(|req, _| match req.header("authorization") {
        None => MockResponse::json(401, "{}").header(
            "www-authenticate",
            r#"Bearer resource="https://vault.azure.net", claims="not base64 json""#,
        ),
        Some(_) => MockResponse::json(200, BUNDLE),
    })
    .await;
    let credential = Arc::new(Recording::default());
    let c = client_with(&server.url, &server.ca_pem, credential.clone(), |_| {});
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClientAuthentication, "{e}");
    assert!(e.message().contains("not base64url-encoded JSON"), "{e}");
    assert!(credential.asked.lock().unwrap().is_empty());
}

/// CAE in Key Vault's own form — a 401 on an authorised request whose challenge names no scope or resource,
/// only `claims` (tenant `common`) — gets a token for the scope and tenant in use, with the claims, and the
/// request goes through (azure-core's Key Vault policy does the same).
#[tokio::test]
async fn a_claims_only_challenge_reuses_the_scope_in_use() {
    const CLAIMS_JSON: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(CLAIMS_JSON);
    let cae = format!(
        r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="{encoded}""#
    );
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = answered.clone();
    let challenge = cae.clone();
    let server = start(move |req, _| {
        match (req.header("authorization"), seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst)) {
            (None, _) => MockResponse::json(401, "{}").header(
                "www-authenticate",
                r#"Bearer authorization="https://login.example/tenant-1", resource="https://vault.azure.net""#,
            ),
            (Some(_), 1) => MockResponse::json(401, "{}").header("www-authenticate", &challenge),
            (Some(_), _) => MockResponse::json(200, BUNDLE),
        }
    })
    .await;
    let credential = Arc::new(Recording::default());
    let c = client_with(&server.url, &server.ca_pem, credential.clone(), |_| {});
    c.get_secret("n", None).await.unwrap();
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 3);
    let asked = credential.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    let (scope, options) = &asked[1];
    assert_eq!(scope, SCOPE);
    let options = options.as_ref().unwrap();
    assert_eq!(options.tenant_id.as_deref(), Some("tenant-1"));
    assert_eq!(options.claims.as_deref(), Some(CLAIMS_JSON));

    // Without a scope in use (the first answer is such a challenge), it is no challenge to follow: the 401.
    let server =
        start(move |_, _| MockResponse::json(401, "{}").header("www-authenticate", &cae)).await;
    let credential = Arc::new(Recording::default());
    let c = client_with(&server.url, &server.ca_pem, credential.clone(), |_| {});
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClientAuthentication, "{e}");
    assert!(credential.asked.lock().unwrap().is_empty());
}

/// A listing whose nextLink leads back to a page already read (here on another host, which the client
/// rebases onto the vault anyway) ends with a Data error after the items read, instead of going round.
#[tokio::test]
async fn a_paging_loop_is_refused() {
    let server = start(|req, _| {
        let item = |n: &str| {
            format!(
                r#"{{"id":"https://kv.vault.azure.net/secrets/{n}","attributes":{{"enabled":true}}}}"#
            )
        };
        if req.target.contains("skiptoken=b") {
            MockResponse::json(
                200,
                format!(
                    r#"{{"value":[{}],"nextLink":"https://elsewhere.example/secrets?api-version=2026-04-01&$skiptoken=a"}}"#,
                    item("second")
                ),
            )
        } else if req.target.contains("skiptoken=a") {
            MockResponse::json(
                200,
                format!(
                    r#"{{"value":[{}],"nextLink":"/secrets?api-version=2026-04-01&$skiptoken=b"}}"#,
                    item("first")
                ),
            )
        } else {
            MockResponse::json(
                200,
                r#"{"value":[],"nextLink":"/secrets?api-version=2026-04-01&$skiptoken=a"}"#,
            )
        }
    })
    .await;
    let c = client_with(
        &server.url,
        &server.ca_pem,
        Arc::new(Recording::default()),
        |_| {},
    );
    let results: Vec<_> = c.list_properties_of_secrets(None).unwrap().collect().await;
    let names: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|p| p.name.clone()))
        .collect();
    assert_eq!(names, ["first", "second"]);
    let e = results.last().unwrap().as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert!(e.message().contains("paging loop"), "{e}");
    assert_eq!(server.requests().len(), 3, "each page read once");
}

/// A redirect is not followed, and the error says so, naming where it pointed by its origin only.
#[tokio::test]
async fn a_redirect_is_named_in_the_error() {
    let server = start(|_, _| {
        MockResponse::json(301, r#"{"x":1}"#)
            .header("location", "https://evil.example:8443/steal?token=CANARY")
    })
    .await;
    let c = client_with(
        &server.url,
        &server.ca_pem,
        Arc::new(Recording::default()),
        |_| {},
    );
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(301));
    assert_eq!(
        e.message(),
        "a redirect (301 to https://evil.example:8443), which the client does not follow"
    );
    assert_eq!(server.requests().len(), 1);
}

/// A body that does not parse as expected gives a Data error with serde's category and position, never the
/// text serde would quote (a value where a list was expected, a string where a flag was): neither in
/// `Display`, nor `Debug`, nor the source chain. The same for a token endpoint's answer (a credential error).
#[tokio::test]
async fn a_body_that_does_not_parse_is_not_quoted() {
    let server = start(|req, _| match path(&req.target) {
        "/secrets" => MockResponse::json(200, r#"{"value":"CANARY-value-3","nextLink":null}"#),
        "/secrets/flag/" => MockResponse::json(
            200,
            r#"{"value":"v","id":"https://kv.vault.azure.net/secrets/flag/0123","attributes":{"enabled":"CANARY-flag"}}"#,
        ),
        "/tenant-1/oauth2/v2.0/token" => MockResponse::json(200, r#""eyJ0-CANARY-token""#),
        _ => MockResponse::json(200, BUNDLE),
    })
    .await;
    let c = client_with(
        &server.url,
        &server.ca_pem,
        Arc::new(Recording::default()),
        |_| {},
    );
    let shown = |e: &keyvault_secrets::Error| {
        let mut all = format!("{e} {e:?}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            all.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        all
    };
    let e = c
        .list_properties_of_secrets(None)
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    let all = shown(&e);
    assert!(!all.contains("CANARY"), "{all}");
    assert!(
        all.contains("cannot parse the 200 response body: JSON without the expected fields or types (at line 1, column"),
        "{all}"
    );
    let e = c.get_secret("flag", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    let all = shown(&e);
    assert!(!all.contains("CANARY"), "{all}");

    let credential = credential_at(&server, "s3cret");
    let e = credential.get_token(&[SCOPE], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    let all = shown(&e);
    assert!(!all.contains("CANARY"), "{all}");
    assert!(all.contains("line 1, column"), "{all}");
}

/// A vault whose certificate's CA the client does not trust: a Connection error whose message names the
/// option that adds a CA (rustls says only `UnknownIssuer`), after one try even with retries on (every retry
/// would meet the same certificate); the same for a token authority.
#[tokio::test]
async fn an_untrusted_ca_names_the_option_that_adds_one() {
    let server = start(|_, _| MockResponse::json(200, BUNDLE)).await;
    let c = client_with(
        &server.url,
        &server.ca_pem,
        Arc::new(Recording::default()),
        |o| {
            o.additional_ca_certificates.clear();
            o.retry = RetryOptions::default();
        },
    );
    let e = c.get_secret("n", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(
        e.message().contains("UnknownIssuer")
            && e.message()
                .contains("SecretClientOptions::additional_ca_certificates"),
        "{e}"
    );
    assert_eq!(server.connections(), 1);

    let credential = ClientSecretCredential::new(
        "tenant-1",
        "app-1",
        "s3cret",
        Some(ClientSecretCredentialOptions {
            authority_host: server.url.clone(),
            trust_system_roots: false,
            ..Default::default()
        }),
    )
    .unwrap();
    let e = credential.get_token(&[SCOPE], None).await.unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert_eq!(server.connections(), 2);
}
