//! The bounds on what requests may hold, over real TLS and raw HTTP/2 streams (`http::limits`): a body
//! that stalls gets 408 at its deadline whatever the connection does, a spent body budget gives 503 and
//! recovers, and a backup whose answer is not read keeps its place from further backups and restores.

mod common;

use bytes::Bytes;
use common::{answer, api_url, h2_connect, status_within_10s, vault_client, vault_token};
use keyvault_server::http::limits::RequestLimits;
use keyvault_server::local::{LocalVault, LocalVaultOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Starts a request on `h2` with these headers and `body` sent (not ended: the stream stays open for more).
async fn start_request(
    h2: &mut h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let (resp, mut stream) = h2.send_request(req.body(()).unwrap(), false).unwrap();
    if !body.is_empty() {
        stream.reserve_capacity(body.len());
        stream
            .send_data(Bytes::copy_from_slice(body), false)
            .unwrap();
    }
    (resp, stream)
}

fn token_path(lv: &LocalVault) -> String {
    format!("/{}/oauth2/v2.0/token", lv.tenant_id())
}

/// A body that stops coming gets 408 once its deadline has passed, on the vault API (Key Vault's shape,
/// nothing stored) and on the token endpoint (the OAuth shape), though its connection stays open.
#[tokio::test]
async fn a_stalled_body_gets_408_and_nothing_is_stored() {
    let lv = LocalVault::start_with(LocalVaultOptions {
        request_limits: RequestLimits {
            body_deadline: Duration::from_secs(1),
            ..RequestLimits::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let http = vault_client(&lv);
    let token = vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let mut h2 = h2_connect(&lv, None).await;

    let (resp, _stream) = start_request(
        &mut h2,
        "PUT",
        "/secrets/stalled?api-version=7.6",
        &[
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
            ("content-length", "100".into()),
        ],
        br#"{"value":"never fin"#,
    )
    .await;
    let (status, _, body) = answer(resp).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "RequestTimeout", "{body}");
    let (status, body) = common::send_json(
        http.get(api_url(lv.vault_url(), "/secrets/stalled", "7.6"))
            .bearer_auth(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (resp, _stream) = start_request(
        &mut h2,
        "POST",
        &token_path(&lv),
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("content-length", "1000".into()),
        ],
        b"grant_type=client_credentials&client_id=",
    )
    .await;
    let (status, _, body) = answer(resp).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    lv.shutdown().await;
}

/// A body's deadline is renewed as its bytes keep coming (`body_min_rate`): an upload that keeps above the
/// minimum rate is stored though it takes longer than the deadline; one below it, or a burst followed by a
/// trickle, gets 408 and nothing is stored. The token endpoint's deadline does not move.
#[tokio::test]
async fn an_upload_above_the_minimum_rate_outlasts_the_deadline() {
    let lv = LocalVault::start_with(LocalVaultOptions {
        request_limits: RequestLimits {
            body_deadline: Duration::from_secs(1),
            // A second more for every 2 KiB.
            body_min_rate: 2048,
            ..RequestLimits::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let http = vault_client(&lv);
    let token = vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let mut h2 = h2_connect(&lv, None).await;
    let value = "v".repeat(16 * 1024);
    let body = serde_json::to_vec(&json!({ "value": value })).unwrap();
    // `first` bytes with the head, then `piece` bytes every `every`.
    let upload = async |h2: &mut h2::client::SendRequest<Bytes>,
                        name: &str,
                        first: usize,
                        piece: usize,
                        every| {
        let (resp, mut stream) = start_request(
            h2,
            "PUT",
            &format!("/secrets/{name}?api-version=7.6"),
            &[
                ("authorization", format!("Bearer {token}")),
                ("content-type", "application/json".into()),
                ("content-length", body.len().to_string()),
            ],
            &body[..first],
        )
        .await;
        let started = std::time::Instant::now();
        let sender = async {
            for chunk in body[first..].chunks(piece) {
                tokio::time::sleep(every).await;
                stream.reserve_capacity(chunk.len());
                if stream
                    .send_data(Bytes::copy_from_slice(chunk), false)
                    .is_err()
                {
                    return;
                }
            }
            let _ = stream.send_data(Bytes::new(), true);
        };
        let ((status, _, answer), ()) = tokio::join!(answer(resp), sender);
        (status, answer, started.elapsed())
    };

    // 1 KiB every 100 ms (≈ 10 KiB/s, five times the minimum): about 1.6 s, past the 1 s deadline.
    let (status, body_back, took) =
        upload(&mut h2, "slow-link", 1024, 1024, Duration::from_millis(100)).await;
    assert_eq!(status, StatusCode::OK, "{body_back}");
    assert!(took > Duration::from_secs(1), "{took:?}");
    let (status, got) = common::send_json(
        http.get(api_url(lv.vault_url(), "/secrets/slow-link", "7.6"))
            .bearer_auth(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["value"], value.as_str());

    // 256 bytes every 250 ms (1 KiB/s, half the minimum): 2 KiB never comes within a second, so it is cut
    // off, and nothing stored. Then most of the body at once and the rest trickled: time is not banked (at
    // 2 KiB a second the burst would have bought 7 s, and the trickle ends within them), so it is cut off too.
    for (name, first) in [("trickle", 256), ("burst", body.len() - 2048)] {
        let (status, body_back, _) =
            upload(&mut h2, name, first, 256, Duration::from_millis(250)).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{name}: {body_back}");
        assert_eq!(body_back["error"]["code"], "RequestTimeout", "{body_back}");
        let message = body_back["error"]["message"].as_str().unwrap();
        assert!(message.contains("each 2 KiB within 1 seconds"), "{message}");
        let (status, got) = common::send_json(
            http.get(api_url(lv.vault_url(), &format!("/secrets/{name}"), "7.6"))
                .bearer_auth(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{got}");
    }

    // The token endpoint: 1 s, whatever comes. Its body would be whole after 1.6 s at 2.5 KiB/s (and then
    // refused for its scope): a deadline that moved would answer 400, not 408.
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=https%3A%2F%2Fvault.azure.net%2F.default",
        lv.client_id(),
        lv.client_secret()
    );
    let (resp, mut stream) = start_request(
        &mut h2,
        "POST",
        &token_path(&lv),
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("content-length", (form.len() + 4096).to_string()),
        ],
        form.as_bytes(),
    )
    .await;
    let sender = async {
        for _ in 0..16 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.reserve_capacity(256);
            if stream
                .send_data(Bytes::from(vec![b'x'; 256]), false)
                .is_err()
            {
                return;
            }
        }
    };
    let ((status, _, answer), ()) = tokio::join!(answer(resp), sender);
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{answer}");
    assert_eq!(answer["error"], "invalid_request", "{answer}");
    lv.shutdown().await;
}

/// The value of an unlabelled sample in a metrics exposition.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// The three body budgets: an anonymous client's unfinished token requests spend the token endpoint's, and
/// then token requests wait and get 503 `temporarily_unavailable` while the vault's writes go on; a restore's
/// unfinished body spends restores', and then other restores get 503 while the vault's writes go on; an
/// authorised caller's unfinished PUT spends the vault's, and then other writes wait and get 503 (Key Vault's
/// shape, `Retry-After`). Once the holders go, their budgets come back and requests succeed again.
#[tokio::test]
async fn a_spent_body_budget_gives_503_and_recovers() {
    let lv = LocalVault::start_with(LocalVaultOptions {
        request_limits: RequestLimits {
            body_budget_bytes: 64 * 1024,
            token_body_budget_bytes: 64 * 1024,
            restore_body_budget_bytes: 64 * 1024,
            body_budget_wait: Duration::from_millis(300),
            ..RequestLimits::default()
        },
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let http = vault_client(&lv);
    let plain = reqwest::Client::new();
    let metrics_url = lv.metrics_url().unwrap().to_string();
    let scrape = async || {
        plain
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let buffered = async |budget: &str| {
        let name = format!("keyvault_http_body_bytes_buffered{{budget=\"{budget}\"}}");
        sample(&scrape().await, &name)
    };
    // Until `budget` has `want` bytes in use (a held body's bytes arrive a little after they are sent).
    let wait_buffered = async |budget: &str, want: usize| {
        for _ in 0..200 {
            if buffered(budget).await == want as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(buffered(budget).await, want as u64, "{budget}");
    };
    let token = vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let put = async |value: &str| {
        common::send_json(
            http.put(api_url(lv.vault_url(), "/secrets/budget", "7.6"))
                .bearer_auth(&token),
            Some(json!({ "value": value })),
        )
        .await
    };
    let value = "a value longer than what is left of the budget";

    // All but 36 bytes of the token endpoint's budget, held by a token request that never ends.
    let held = 64 * 1024 - 36;
    let mut h2 = h2_connect(&lv, None).await;
    let (_resp, mut token_holder) = start_request(
        &mut h2,
        "POST",
        &token_path(&lv),
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("content-length", (64 * 1024).to_string()),
        ],
        &vec![b'a'; held],
    )
    .await;
    wait_buffered("token", held).await;
    let (status, body) =
        common::request_vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    // The vault's writes are not held back by it.
    let (status, body) = put(value).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(buffered("vault").await, 0);

    // All but 36 bytes of restores' budget, held by a restore that never ends: another restore waits and
    // gets 503, the vault's writes go on.
    let restore_head = [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".into()),
        ("content-length", (64 * 1024).to_string()),
    ];
    let (_resp, mut restore_holder) = start_request(
        &mut h2,
        "POST",
        "/secrets/restore?api-version=7.6",
        &restore_head,
        &vec![b' '; held],
    )
    .await;
    wait_buffered("restore", held).await;
    let (resp, _second) = start_request(
        &mut h2,
        "POST",
        "/secrets/restore?api-version=7.6",
        &restore_head,
        &[b' '; 100],
    )
    .await;
    let (status, retry, body) = answer(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry.is_some());
    let (status, body) = put(value).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(buffered("vault").await, 0);

    // All but 36 bytes of the vault's budget, held by an authorised PUT that never ends.
    let (_resp, mut put_holder) = start_request(
        &mut h2,
        "PUT",
        "/secrets/held?api-version=7.6",
        &[
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
            ("content-length", (64 * 1024).to_string()),
        ],
        &vec![b' '; held],
    )
    .await;
    wait_buffered("vault", held).await;
    let resp = http
        .put(api_url(lv.vault_url(), "/secrets/budget", "7.6"))
        .bearer_auth(&token)
        .json(&json!({ "value": value }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
    let text = scrape().await;
    for refused in [
        // The PUT's, and the restore's (counted with the vault's).
        "keyvault_http_busy_refusals_total{reason=\"body_budget\"} 2",
        "keyvault_http_busy_refusals_total{reason=\"token_body_budget\"} 1",
    ] {
        assert!(text.contains(refused), "{refused} in {text}");
    }

    // The holders go: their budgets come back, and requests are answered again.
    token_holder.send_reset(h2::Reason::CANCEL);
    put_holder.send_reset(h2::Reason::CANCEL);
    restore_holder.send_reset(h2::Reason::CANCEL);
    let status = status_within_10s(StatusCode::OK, async || put("stored").await.0).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        common::request_vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(buffered("vault").await, 0);
    assert_eq!(buffered("token").await, 0);
    wait_buffered("restore", 0).await;
    lv.shutdown().await;
}

/// A backup whose answer the client does not read (its window kept small) keeps its place until the answer
/// is sent or dropped: with one place, a further backup and a restore get 503 with `Retry-After`, and get
/// through once the first client goes.
#[tokio::test]
async fn an_unread_backup_keeps_its_place() {
    let lv = LocalVault::start_with(LocalVaultOptions {
        request_limits: RequestLimits {
            bulk_operations: 1,
            bulk_wait: Duration::from_millis(300),
            ..RequestLimits::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let http = vault_client(&lv);
    let token = vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    // About 300 KB of values that do not compress (the backup is far larger than the client's window).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..12 {
        let value: String = (0..25_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        let (status, body) = common::send_json(
            http.put(api_url(lv.vault_url(), "/secrets/big", "7.6"))
                .bearer_auth(&token),
            Some(json!({ "value": value })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let backup = async || {
        http.post(api_url(lv.vault_url(), "/secrets/big/backup", "7.6"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
    };
    // The blob to restore from, taken while the place is free.
    let blob: Value = backup().await.json().await.unwrap();

    let mut h2 = h2_connect(&lv, Some(16 * 1024)).await;
    let (resp, _s) = start_request(
        &mut h2,
        "POST",
        "/secrets/big/backup?api-version=7.6",
        &[("authorization", format!("Bearer {token}"))],
        b"",
    )
    .await;
    let unread = resp.await.unwrap();
    assert_eq!(unread.status(), 200);
    let length: usize = unread.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 300_000, "{length}");

    let resp = backup().await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
    let restore = async || {
        common::send_json(
            http.post(api_url(lv.vault_url(), "/secrets/restore", "7.6"))
                .bearer_auth(&token),
            Some(blob.clone()),
        )
        .await
        .0
    };
    assert_eq!(restore().await, StatusCode::SERVICE_UNAVAILABLE);
    // A restore whose client goes away while it waits for a place changed nothing: audited 408, not 499.
    let gone = http
        .post(api_url(lv.vault_url(), "/secrets/restore", "7.6"))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(100))
        .json(&blob)
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = lv.audit().expect("dev mode audits");
    audit.flush().await;
    let log = std::fs::read_to_string(audit.path()).unwrap();
    let last: Value = serde_json::from_str(
        log.lines()
            .rfind(|l| l.contains("\"operation\":\"SecretRestore\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["status"], 408, "{last}");

    // The unread answer dropped (the connection closed): the place comes back.
    drop((unread, _s, h2));
    let status = status_within_10s(StatusCode::OK, async || backup().await.status()).await;
    assert_eq!(status, StatusCode::OK);
    // The secret exists, so the restore itself is refused: a conflict, not a busy server.
    assert_eq!(restore().await, StatusCode::CONFLICT);
    lv.shutdown().await;
}

/// A whole request whose handling outlasts its connection's idle and answer limits is answered, not cut off
/// with its work given up: with both limits at 1 s, an HTTP/1.1 backup that waits 3 s for a place (held by a
/// restore whose body is still coming) gets its 503 after those 3 s, and its connection serves the next
/// request.
#[tokio::test]
async fn a_request_handled_past_the_idle_limit_is_answered() {
    let lv = LocalVault::start_with(LocalVaultOptions {
        request_limits: RequestLimits {
            bulk_operations: 1,
            bulk_wait: Duration::from_secs(3),
            ..RequestLimits::default()
        },
        idle_timeout_secs: Some(1),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let http = common::vault_client_h1(&lv);
    let token = vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let (status, body) = common::send_json(
        http.put(api_url(lv.vault_url(), "/secrets/kept", "7.6"))
            .bearer_auth(&token),
        Some(json!({ "value": "v" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The one place, held by a restore whose body has only begun (its deadline is 30 s).
    let mut h2 = h2_connect(&lv, None).await;
    let (_resp, mut holder) = start_request(
        &mut h2,
        "POST",
        "/secrets/restore?api-version=7.6",
        &[
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
            ("content-length", "1000".into()),
        ],
        b"{\"value\": \"",
    )
    .await;
    let metrics_url = lv.metrics_url().unwrap().to_string();
    let restore_buffered = async || {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sample(
            &text,
            "keyvault_http_body_bytes_buffered{budget=\"restore\"}",
        )
    };
    for _ in 0..100 {
        if restore_buffered().await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restore_buffered().await > 0, "the holder's body is read");

    let started = std::time::Instant::now();
    let resp = http
        .post(api_url(lv.vault_url(), "/secrets/kept/backup", "7.6"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("an answer, not a connection cut off while the backup waits");
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
    let resp = http
        .get(api_url(lv.vault_url(), "/secrets/kept", "7.6"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    holder.send_reset(h2::Reason::CANCEL);
    lv.shutdown().await;
}
