//! `/metrics` on its own listener (`metrics_addr`), scraped from a real in-process server: the counters move by
//! exactly the requests made, and nothing of a secret (name, value) or of a credential shows.

use keyvault_server::local::{LocalVault, LocalVaultOptions};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::BTreeMap;

mod common;

/// Every sample of an exposition, by `name{labels}` (comments checked to be HELP or TYPE lines).
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP keyvault_") || line.starts_with("# TYPE keyvault_"),
                "{line}"
            );
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("a sample is `name value`");
        assert!(key.starts_with("keyvault_"), "{line}");
        let value: f64 = value.parse().expect("a number");
        assert!(
            out.insert(key.to_string(), value).is_none(),
            "repeated: {key}"
        );
    }
    out
}

async fn scrape(http: &reqwest::Client, url: &str) -> (String, BTreeMap<String, f64>) {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let parsed = samples(&text);
    (text, parsed)
}

/// How much each sample moved between two scrapes (0 for one that did not, absent before = 0).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_exactly_the_requests_made_and_name_no_secret() {
    let lv = LocalVault::start_with(LocalVaultOptions {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let metrics_url = lv.metrics_url().expect("metrics are on").to_string();
    assert!(
        metrics_url.starts_with("http://127.0.0.1:"),
        "{metrics_url}"
    );
    let plain = reqwest::Client::new();
    let vault = common::vault_client(&lv);
    let token = common::vault_token(&lv, &vault, lv.client_id(), lv.client_secret()).await;
    // The token request's own audit line is written before the first scrape, not counted among the four.
    lv.audit().expect("dev mode audits").flush().await;

    let (_, before) = scrape(&plain, &metrics_url).await;
    let name = "metrics-probe-name-7f3a";
    let value = "value-that-must-not-leak-91c2";
    let url = |path: &str| common::api_url(lv.vault_url(), path, "7.6");

    // A set, a get, a 404 and a 401.
    let (status, body) = common::send_json(
        vault
            .put(url(&format!("/secrets/{name}")))
            .bearer_auth(&token),
        Some(json!({ "value": value })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret_version = body["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (status, body) = common::send_json(
        vault
            .get(url(&format!("/secrets/{name}")))
            .bearer_auth(&token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["value"].as_str()),
        (StatusCode::OK, Some(value))
    );
    let (status, _) = common::send_json(
        vault
            .get(url("/secrets/metrics-probe-absent"))
            .bearer_auth(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = common::send_json(
        vault
            .get(url(&format!("/secrets/{name}")))
            .bearer_auth("not-a-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    lv.audit().expect("dev mode audits").flush().await;

    let (text, after) = scrape(&plain, &metrics_url).await;
    let d = |key: &str| delta(&before, &after, key);
    let requests = |op: &str, code: &str| {
        format!("keyvault_http_requests_total{{operation=\"{op}\",code=\"{code}\"}}")
    };
    assert_eq!(d(&requests("set", "200")), 1.0);
    assert_eq!(d(&requests("get", "200")), 1.0);
    assert_eq!(d(&requests("get", "404")), 1.0);
    assert_eq!(d(&requests("get", "401")), 1.0);
    // Nothing else was counted.
    let all_requests: f64 = after
        .keys()
        .filter(|k| k.starts_with("keyvault_http_requests_total{"))
        .map(|k| d(k))
        .sum();
    assert_eq!(all_requests, 4.0);
    assert_eq!(d("keyvault_http_refused_total{code=\"401\"}"), 1.0);
    assert_eq!(d("keyvault_http_refused_total{code=\"403\"}"), 0.0);
    assert_eq!(d("keyvault_http_refused_total{code=\"429\"}"), 0.0);
    // Durations: three gets and a set, each in some bucket, all under +Inf.
    let get_count = "keyvault_http_request_duration_seconds_count{operation=\"get\"}";
    assert_eq!(d(get_count), 3.0);
    assert_eq!(
        d("keyvault_http_request_duration_seconds_bucket{operation=\"get\",le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(
        d("keyvault_http_request_duration_seconds_count{operation=\"set\"}"),
        1.0
    );
    assert!(d("keyvault_http_request_duration_seconds_sum{operation=\"get\"}") > 0.0);
    // The token was first verified by the set; the get and the 404 found it cached; the bad one was not.
    assert_eq!(d("keyvault_token_cache_misses_total"), 2.0);
    assert_eq!(d("keyvault_token_cache_hits_total"), 2.0);
    // The set was one write in one batch, after the write that moved the store's record of version ids' time
    // past its id (the vault's first set: see `Vault::reserve_time`); the get found the version the set
    // cached; the 404 missed.
    assert_eq!(d("keyvault_store_commit_batch_size_count"), 2.0);
    assert_eq!(d("keyvault_store_commit_batch_size_sum"), 2.0);
    assert_eq!(d("keyvault_store_commit_duration_seconds_count"), 2.0);
    assert_eq!(d("keyvault_store_cache_hits_total"), 1.0);
    assert_eq!(d("keyvault_store_cache_misses_total"), 1.0);
    assert!(after["keyvault_store_cache_bytes"] > 0.0);
    assert!(after.contains_key("keyvault_store_checkpoints_total"));
    // Every request's decision is one audit line (dev mode audits).
    assert_eq!(d("keyvault_audit_lines_written_total"), 4.0);
    assert_eq!(after["keyvault_audit_write_errors_total"], 0.0);
    // Process facts.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        after[&format!("keyvault_build_info{{version=\"{version}\"}}")],
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = after["keyvault_process_start_time_seconds"];
    assert!(started <= now && started > now - 600.0, "{started}");
    assert!(after["keyvault_http_open_connections"] >= 1.0);

    // Nothing of the secret, the credentials or the token.
    for needle in [
        name,
        value,
        secret_version.as_str(),
        lv.client_id(),
        lv.client_secret(),
        token.as_str(),
        "metrics-probe-absent",
    ] {
        assert!(!text.contains(needle), "the scrape shows {needle}");
    }

    // Only GET (and HEAD) /metrics.
    let resp = plain
        .get(metrics_url.replace("/metrics", "/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = plain.post(&metrics_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let resp = plain.head(&metrics_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    lv.shutdown().await;
}

#[tokio::test]
async fn off_by_default() {
    let lv = LocalVault::start().await.unwrap();
    assert!(lv.metrics_url().is_none());
    lv.shutdown().await;
}
