//! The audit log through the real HTTP API: every request of a run appears exactly once, with its
//! decision and never a value or a token; the chain verifies; every kind of tampering is detected.

use keyvault_server::audit::{self, GENESIS};
use keyvault_server::auth::policy::{READER, Scope};
use keyvault_server::local::LocalVault;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

mod common;

const VALUE: &str = "super-secret-value-6c1f";

/// Sends a request; returns (status, x-ms-request-id).
async fn send(
    lv: &LocalVault,
    http: &reqwest::Client,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = http.request(method, format!("{}{path}", lv.vault_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let id = resp.headers()["x-ms-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    (resp.status(), id)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// (token, method, path, body; then the expected principal, operation, secret, outcome, status).
type Step<'a> = (
    Option<&'a str>,
    Method,
    String,
    Option<Value>,
    Option<String>,
    Value,
    Value,
    &'static str,
    u16,
);

#[tokio::test]
async fn every_request_is_audited_once_and_the_chain_detects_tampering() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let (reader_id, reader_secret) = lv.add_client();
    common::assign(&lv, &reader_id, READER, Scope::Vault);
    let reader = common::vault_token(&lv, &http, &reader_id, &reader_secret).await;

    // (principal, operation, secret, outcome, status) expected per request id.
    let mut want: HashMap<String, (Option<String>, Value, Value, &str, u16)> = HashMap::new();
    let a = Some(lv.client_id().to_string());
    let r = Some(reader_id.clone());
    let q = "?api-version=7.6";
    let steps: Vec<Step> = vec![
        (
            None,
            Method::GET,
            format!("/secrets/s1{q}"),
            None,
            None,
            Value::Null,
            Value::Null,
            "unauthenticated",
            401,
        ),
        (
            Some(&admin),
            Method::PUT,
            format!("/secrets/s1{q}"),
            Some(json!({"value": VALUE})),
            a.clone(),
            json!("SecretSet"),
            json!("s1"),
            "allowed",
            200,
        ),
        (
            Some(&admin),
            Method::GET,
            format!("/secrets/s1/{q}"),
            None,
            a.clone(),
            json!("SecretGet"),
            json!("s1"),
            "allowed",
            200,
        ),
        (
            Some(&admin),
            Method::GET,
            format!("/secrets/nope/{q}"),
            None,
            a.clone(),
            json!("SecretGet"),
            json!("nope"),
            "allowed",
            404,
        ),
        (
            Some(&admin),
            Method::GET,
            "/secrets?api-version=bogus".to_string(),
            None,
            a.clone(),
            Value::Null,
            Value::Null,
            "rejected",
            400,
        ),
        (
            Some(&reader),
            Method::GET,
            format!("/secrets{q}"),
            None,
            r.clone(),
            json!("SecretList"),
            Value::Null,
            "allowed",
            200,
        ),
        (
            Some(&reader),
            Method::GET,
            format!("/secrets/s1/{q}"),
            None,
            r.clone(),
            json!("SecretGet"),
            json!("s1"),
            "denied",
            403,
        ),
        (
            Some(&reader),
            Method::DELETE,
            format!("/secrets/s1{q}"),
            None,
            r.clone(),
            json!("SecretDelete"),
            json!("s1"),
            "denied",
            403,
        ),
        (
            Some(&admin),
            Method::DELETE,
            format!("/secrets/s1{q}"),
            None,
            a.clone(),
            json!("SecretDelete"),
            json!("s1"),
            "allowed",
            200,
        ),
        (
            Some(&admin),
            Method::DELETE,
            format!("/deletedsecrets/s1{q}"),
            None,
            a.clone(),
            json!("SecretPurge"),
            json!("s1"),
            "allowed",
            204,
        ),
    ];
    for (tok, method, path, body, principal, op, secret, outcome, status) in steps {
        let (s, id) = send(&lv, &http, tok, method, &path, body).await;
        assert_eq!(s.as_u16(), status, "{path}");
        want.insert(id, (principal, op, secret, outcome, status));
    }
    let log = lv.audit().expect("dev mode audits");
    log.flush().await;
    let path = log.path().to_path_buf();
    assert_eq!(path, lv.data_dir().join("audit.log"));

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(VALUE), "a value leaked into the audit log");
    assert!(
        !text.contains(&admin) && !text.contains(&reader),
        "a token leaked"
    );
    assert!(!text.contains(lv.client_secret()), "a client secret leaked");
    let lines = lines(&path);
    // The two token requests made first, then one line per vault request.
    let mut tokens = Vec::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["operation"] == "TokenRequest" {
            assert_eq!(
                (&v["outcome"], &v["status"]),
                (&json!("allowed"), &json!(200))
            );
            assert_eq!(v["principal"], v["target"], "{line}");
            tokens.push(v["principal"].as_str().unwrap().to_string());
            continue;
        }
        let id = v["requestId"].as_str().unwrap();
        let (principal, op, secret, outcome, status) = want.remove(id).expect("each request once");
        assert_eq!(
            v["principal"].as_str().map(String::from),
            principal,
            "{line}"
        );
        assert_eq!(v["operation"], op, "{line}");
        assert_eq!(v["secret"], secret, "{line}");
        // A set names the version it made; one refused, none.
        if op == "SecretSet" {
            let made = v["version"].as_str().is_some_and(|id| id.len() == 32);
            assert_eq!(made, status == 200, "{line}");
        }
        assert_eq!(v["outcome"], outcome, "{line}");
        assert_eq!(v["status"], status, "{line}");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
    assert!(want.is_empty(), "one line per request:\n{text}");
    assert_eq!(tokens, [lv.client_id(), reader_id.as_str()]);

    let report = audit::verify_file(&path).unwrap();
    assert_eq!(report.lines, lines.len() as u64);
    assert_eq!(report.first_prev.as_deref(), Some(GENESIS));
    assert_eq!(audit::verify_chain(&path).unwrap(), report);

    // Tampering, each on a copy of the real log. Lines are in the order they were written, which need not be the
    // order of the requests (a read's queued line may follow a later change's), so edits touch a member every
    // line has.
    let edit = |line: &str| line.replacen("\"requestId\":\"", "\"requestId\":\"x", 1);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("audit.log");
    let tampered = |name: &str, f: &dyn Fn(&mut Vec<String>)| {
        let mut l = lines.clone();
        f(&mut l);
        write_lines(&copy, &l);
        let err = audit::verify_file(&copy).expect_err(name);
        (err.line, err.reason)
    };
    let (line, reason) = tampered("edit", &|l| {
        l[6] = edit(&l[6]);
    });
    assert_eq!(line, 7);
    assert!(reason.contains("edited"), "{reason}");
    let (line, _) = tampered("edit the last line", &|l| {
        let last = l.len() - 1;
        l[last] = edit(&l[last]);
    });
    assert_eq!(line, lines.len() as u64);
    let (line, reason) = tampered("remove", &|l| {
        l.remove(3);
    });
    assert_eq!(line, 4);
    assert!(reason.contains("removed"), "{reason}");
    // Removing the first line: the rest verifies on its own (a rotated file starts mid-chain too), but the
    // report says the chain does not start at the beginning.
    let mut l = lines.clone();
    l.remove(0);
    write_lines(&copy, &l);
    let r = audit::verify_file(&copy).unwrap();
    assert!(!r.complete);
    assert_eq!(r.first_seq, Some(1));
    assert!(report.complete);
    let (line, _) = tampered("reorder", &|l| l.swap(2, 3));
    assert_eq!(line, 3);
    let (line, _) = tampered("insert a copy", &|l| {
        let dup = l[4].clone();
        l.insert(5, dup);
    });
    assert_eq!(line, 6);
    let (line, reason) = tampered("re-hash an edited line", &|l| {
        // An edit whose own hash is recomputed (its MAC kept: it is not checked here) still breaks the link
        // from the next line.
        let edited = edit(&l[2]);
        let cut = edited.rfind(",\"hash\":").unwrap();
        let mac = &edited[edited.rfind(",\"mac\":").unwrap()..edited.len() - 1];
        let mut body = edited[..cut].to_string();
        body.push('}');
        let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()));
        body.pop();
        l[2] = format!("{body},\"hash\":\"{hash}\"{mac}}}");
    });
    assert_eq!(line, 4, "{reason}");
    assert!(reason.contains("chain"), "{reason}");
    let (line, _) = tampered("truncated line", &|l| {
        let last = l.len() - 1;
        l[last].truncate(20);
    });
    assert_eq!(line, lines.len() as u64);
    let mut text = lines.join("\n");
    text.push('\n');
    text.truncate(text.len() - 1);
    std::fs::write(&copy, &text).unwrap();
    let err = audit::verify_file(&copy).unwrap_err();
    assert!(err.reason.contains("incomplete"), "{err}");

    // A restarted server continues the chain in the same file.
    lv.shutdown().await;
}

#[tokio::test]
async fn a_reopened_log_continues_the_chain_and_rotation_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut seq = 0;
    for round in 0..3 {
        let log = audit::AuditLog::open(&path, 4096).unwrap();
        for i in 0..40 {
            let mut r = audit::AuditRecord::new(format!("r{round}-{i}"));
            r.principal = Some("p".into());
            r.operation = Some("SecretGet");
            r.secret = Some("name".into());
            r.outcome = audit::Outcome::Allowed;
            r.status = 200;
            log.record(r);
            seq += 1;
        }
        log.flush().await;
    }
    let files = audit::chain_files(&path);
    assert!(files.len() >= 3, "{files:?}");
    let report = audit::verify_chain(&path).unwrap();
    assert_eq!(report.lines, seq);
    assert_eq!(report.last_seq, Some(seq - 1));
    // Removing a whole middle file breaks the chain.
    let mut without = files.clone();
    without.remove(1);
    assert!(audit::verify_files(&without).is_err());
    // Reordering files too.
    let mut reordered = files.clone();
    reordered.swap(0, 1);
    assert!(audit::verify_files(&reordered).is_err());
}

#[tokio::test]
async fn throttling_is_429_with_retry_after_after_authentication_and_audited() {
    let lv = LocalVault::start_with(keyvault_server::local::LocalVaultOptions {
        throttle: keyvault_server::http::throttle::ThrottleSettings {
            limit: Some(100),
            create_limit: Some(2),
            window: std::time::Duration::from_secs(60),
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let q = "?api-version=7.6";
    let url = |p: &str| format!("{}{p}{q}", lv.vault_url());
    // Two creates pass; the third is throttled, with Key Vault's body and a Retry-After.
    for i in 0..2 {
        let r = http
            .put(url(&format!("/secrets/t{i}")))
            .bearer_auth(&admin)
            .json(&json!({"value": VALUE}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = http
        .put(url("/secrets/t9"))
        .bearer_auth(&admin)
        .json(&json!({"value": VALUE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let throttled_id = r.headers()["x-ms-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "Throttled", "message": "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"}})
    );
    // Creates have their own budget: reads still pass, and the throttled PUT created nothing.
    let (status, _) = send(
        &lv,
        &http,
        Some(&admin),
        Method::GET,
        &format!("/secrets/t9{q}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without a valid token it is still 401 (the budget is decided after authentication).
    let (status, unauth_id) = send(
        &lv,
        &http,
        None,
        Method::PUT,
        &format!("/secrets/t9{q}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(
        &lv,
        &http,
        Some("not-a-token"),
        Method::GET,
        &format!("/secrets{q}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    lv.audit().unwrap().flush().await;
    let log = lv.data_dir().join("audit.log");
    audit::verify_chain(&log).unwrap();
    let records: Vec<Value> = lines(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |id: &str| {
        records
            .iter()
            .find(|r| r["requestId"] == id)
            .unwrap()
            .clone()
    };
    let t = find(&throttled_id);
    assert_eq!(t["outcome"], "throttled");
    assert_eq!(t["status"], 429);
    assert_eq!(t["principal"], lv.client_id());
    assert_eq!(find(&unauth_id)["outcome"], "unauthenticated");
    lv.shutdown().await;
}

/// A principal refused by access control spends its own refusal budget, not the vault's: a flood of 403s
/// turns into 429s for the flooder alone, and the administrator still reads and administers (audit finding 2).
/// Permitted vault traffic that spends the vault's budget leaves the admin API its own.
#[tokio::test]
async fn refusals_spend_the_refused_principals_budget_not_the_vaults() {
    let lv = LocalVault::start_with(keyvault_server::local::LocalVaultOptions {
        throttle: keyvault_server::http::throttle::ThrottleSettings {
            limit: Some(40),
            create_limit: None,
            window: std::time::Duration::from_secs(3600),
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    // A principal that may read one secret, and nothing else.
    let (id, secret) = lv.add_client();
    common::assign(&lv, &id, READER, Scope::Secret("mine".into()));
    let flooder = common::vault_token(&lv, &http, &id, &secret).await;
    let q = "?api-version=7.6";
    let (status, _) = send(
        &lv,
        &http,
        Some(&admin),
        Method::PUT,
        &format!("/secrets/top{q}"),
        Some(json!({"value": VALUE})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // More refused requests than the whole vault's budget: the first 10 (a tenth of 40, at least 10) are
    // 403, the rest 429 with a Retry-After.
    let mut statuses = Vec::new();
    let mut last_id = String::new();
    for _ in 0..50 {
        let (status, id) = send(
            &lv,
            &http,
            Some(&flooder),
            Method::GET,
            &format!("/secrets/top{q}"),
            None,
        )
        .await;
        statuses.push(status);
        last_id = id;
    }
    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::FORBIDDEN),
        "{statuses:?}"
    );
    assert!(
        statuses[10..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    // Nobody else paid: the administrator reads, and uses the admin API.
    let (status, _) = send(
        &lv,
        &http,
        Some(&admin),
        Method::GET,
        &format!("/secrets/top{q}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&lv, &http, Some(&admin), Method::GET, "/admin/roles", None).await;
    assert_eq!(status, StatusCode::OK);

    // Permitted requests do spend the vault's budget (2 used so far)...
    let mut vault_statuses = Vec::new();
    for _ in 0..40 {
        let (status, _) = send(
            &lv,
            &http,
            Some(&admin),
            Method::GET,
            &format!("/secrets/top{q}"),
            None,
        )
        .await;
        vault_statuses.push(status);
    }
    assert_eq!(
        vault_statuses
            .iter()
            .filter(|s| **s == StatusCode::OK)
            .count(),
        38,
        "{vault_statuses:?}"
    );
    assert_eq!(vault_statuses[39], StatusCode::TOO_MANY_REQUESTS);
    // ... and the admin API keeps a budget of its own.
    let (status, _) = send(
        &lv,
        &http,
        Some(&admin),
        Method::GET,
        "/admin/principals",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    lv.audit().unwrap().flush().await;
    let log = lv.data_dir().join("audit.log");
    let records: Vec<Value> = lines(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = records.iter().find(|r| r["requestId"] == last_id).unwrap();
    assert_eq!(last["outcome"], "throttled");
    assert_eq!(last["principal"], id.as_str());
    assert_eq!(last["operation"], "SecretGet");
    lv.shutdown().await;
}

/// A change's line is in the file by the time its response arrives (no flush, no waiting): a crash right
/// after the response could not lose it. Checked for changes that succeed and for one that fails (404).
#[tokio::test]
async fn a_change_is_in_the_audit_file_before_its_response() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let path = lv.audit().expect("dev mode audits").path().to_path_buf();
    let q = "?api-version=7.6";
    for i in 0..20 {
        let (method, url, body, status) = match i % 3 {
            0 => (
                Method::PUT,
                format!("/secrets/c{i}{q}"),
                Some(json!({"value": VALUE})),
                200,
            ),
            1 => (
                Method::PATCH,
                format!("/secrets/c{}{q}", i - 1),
                Some(json!({"contentType": "t"})),
                200,
            ),
            _ => (Method::DELETE, format!("/secrets/missing{i}{q}"), None, 404),
        };
        let (s, id) = send(&lv, &http, Some(&admin), method, &url, body).await;
        assert_eq!(s.as_u16(), status, "{url}");
        let line = lines(&path)
            .into_iter()
            .find(|l| l.contains(&format!("\"requestId\":\"{id}\"")))
            .unwrap_or_else(|| panic!("no line for request {id} ({url}) when its response came"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], status, "{line}");
    }
    audit::verify_file(&path).unwrap();
}

/// A client that sends a change and resets its connection at once: hyper drops the request's future, and a
/// change already authorized may still commit; its line is written as the future is dropped (status 499), so
/// every change that was made has its audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_client_goes_away_is_still_audited() {
    use tokio::io::AsyncWriteExt;
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let path = lv.audit().expect("dev mode audits").path().to_path_buf();
    let base = lv.vault_url().to_string();
    let authority = base.trim_start_matches("https://").to_string();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        keyvault_server::tls::client_config_trusting(lv.ca_cert_pem()).unwrap(),
    ));
    let host = authority.rsplit_once(':').unwrap().0.to_string();
    let server_name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
    for i in 0..40 {
        let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let mut stream = tls.connect(server_name.clone(), tcp).await.unwrap();
        let body = format!("{{\"value\":\"{VALUE}\"}}");
        let request = format!(
            "PUT /secrets/gone-{i}?api-version=7.6 HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        // Reset, not close: the server sees the connection end without a goodbye.
        let (tcp, _) = stream.into_inner();
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    }
    // Let the changes still under way finish, then compare what was made with what was audited.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    lv.audit().unwrap().flush().await;
    let audited = lines(&path);
    let mut made = 0;
    for i in 0..40 {
        let (status, body) = common::send_json(
            http.get(format!("{base}/secrets/gone-{i}?api-version=7.6"))
                .bearer_auth(&admin),
            None,
        )
        .await;
        // A line saying 408 (dropped before its body was whole) says nothing was changed: true.
        let timed_out = audited.iter().any(|l| {
            l.contains(&format!("\"secret\":\"gone-{i}\"")) && l.contains("\"status\":408")
        });
        assert!(
            !(timed_out && status == StatusCode::OK),
            "gone-{i} was set, but its audit line says 408"
        );
        if status == StatusCode::OK {
            made += 1;
            // The line names the version that was made (whether it says 200 or 499).
            let version = body["id"].as_str().unwrap().rsplit('/').next().unwrap();
            assert!(
                audited
                    .iter()
                    .any(|l| l.contains(&format!("\"secret\":\"gone-{i}\""))
                        && l.contains("\"operation\":\"SecretSet\"")
                        && l.contains(&format!("\"version\":\"{version}\""))),
                "gone-{i} was set but has no audit line naming version {version}"
            );
        }
    }
    eprintln!("{made} of 40 changes were made after their client went away");
    audit::verify_file(&path).unwrap();
}

/// The client's own request id (`x-ms-client-request-id`, which the SDKs send and log) is in the request's
/// audit line, so a request a user knows by it can be found: cut to 128 characters, and left out when it is not
/// visible ASCII.
#[tokio::test]
async fn the_clients_request_id_is_in_the_audit_line() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let token = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let long = "x".repeat(300);
    let mut ids = Vec::new();
    for client_id in [
        "b5f0c7f4-3d8e-4a55-9d1a-2f3c4b5a6d7e",
        long.as_str(),
        "has space",
    ] {
        let resp = http
            .get(format!("{}/secrets?api-version=7.6", lv.vault_url()))
            .bearer_auth(&token)
            .header("x-ms-client-request-id", client_id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // Echoed whole, as Key Vault does.
        assert_eq!(resp.headers()["x-ms-client-request-id"], client_id);
        ids.push(
            resp.headers()["x-ms-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    let log = lv.audit().expect("dev mode audits");
    log.flush().await;
    let records: Vec<Value> = lines(log.path())
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: &str| {
        records
            .iter()
            .find(|r| r["requestId"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        of(&ids[0])["clientRequestId"],
        "b5f0c7f4-3d8e-4a55-9d1a-2f3c4b5a6d7e"
    );
    assert_eq!(of(&ids[1])["clientRequestId"], "x".repeat(128));
    assert!(
        of(&ids[2]).get("clientRequestId").is_none(),
        "{}",
        of(&ids[2])
    );
    assert!(
        audit::verify_chain(log.path()).is_ok(),
        "the chain verifies"
    );
    lv.shutdown().await;
}

/// The token endpoint's requests are audited too (`TokenRequest`): the client id a request named (`target`;
/// `principal` only once it got a token), how it ended, the client's `client-request-id`; never a secret.
/// Every answer carries an `x-ms-request-id`, which is the line's `requestId` and an error's `trace_id`, and
/// echoes `client-request-id`, as Entra ID does.
#[tokio::test]
async fn token_requests_are_audited_with_their_request_ids() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let url = common::token_url(&lv);
    let scope = common::vault_scope(&lv);
    let ask = async |pairs: &[(&str, &str)], correlation: &str| {
        let resp = http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("client-request-id", correlation)
            .body(common::form_body(pairs))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["client-request-id"], correlation);
        let id = resp.headers()["x-ms-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if status != 200 {
            assert_eq!(body["trace_id"], id, "{body}");
            assert_eq!(body["correlation_id"], correlation, "{body}");
        }
        (id, status)
    };
    let creds = |id: &'static str, secret: &'static str| {
        [
            ("client_id", id),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
            ("scope", scope.as_str()),
        ]
    };
    let me: &'static str = lv.client_id().to_string().leak();
    let my_secret: &'static str = lv.client_secret().to_string().leak();
    let correlation = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let good = ask(&creds(me, my_secret), correlation).await;
    let wrong = ask(&creds(me, "not-the-secret-1234"), correlation).await;
    let unknown = ask(&creds("no-such-client", "whatever-5678"), correlation).await;
    let bad_grant = ask(
        &[("client_id", me), ("grant_type", "password")],
        correlation,
    )
    .await;
    let unprintable = ask(&creds("has space", "x"), correlation).await;
    assert_eq!(
        [good.1, wrong.1, unknown.1, bad_grant.1, unprintable.1],
        [200, 401, 401, 400, 401]
    );
    // Discovery has its id too; it is not audited.
    let discovery_url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        lv.authority_host(),
        lv.tenant_id()
    );
    let discovery = http.get(&discovery_url).send().await.unwrap();
    assert_eq!(discovery.status(), StatusCode::OK);
    let discovery_id = discovery.headers()["x-ms-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    // A 405 (the token endpoint asked with GET, discovery with POST) has its id too, and no audit line.
    let wrong_method = http.get(&url).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.headers().contains_key("x-ms-request-id"));
    let posted = http.post(&discovery_url).send().await.unwrap();
    assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(posted.headers().contains_key("x-ms-request-id"));

    let log = lv.audit().expect("dev mode audits");
    log.flush().await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    for secret in [
        my_secret,
        "not-the-secret-1234",
        "whatever-5678",
        "no-such-client",
    ] {
        assert!(!text.contains(secret), "a client secret leaked: {text}");
    }
    assert!(!text.contains(&discovery_id), "{text}");
    let records: Vec<Value> = lines(log.path())
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 5, "{text}");
    let of = |id: &str| records.iter().find(|r| r["requestId"] == id).unwrap();
    for ((id, status), principal, target, outcome) in [
        (&good, json!(me), json!(me), "allowed"),
        (&wrong, Value::Null, json!(me), "unauthenticated"),
        // An id this server does not know is not written (it may be a secret pasted into the wrong field).
        (&unknown, Value::Null, Value::Null, "unauthenticated"),
        (&bad_grant, Value::Null, json!(me), "rejected"),
        (&unprintable, Value::Null, Value::Null, "unauthenticated"),
    ] {
        let line = of(id);
        assert_eq!(line["operation"], "TokenRequest", "{line}");
        assert_eq!(line["principal"], principal, "{line}");
        assert_eq!(
            line.get("target").unwrap_or(&Value::Null),
            &target,
            "{line}"
        );
        assert_eq!(line["outcome"], outcome, "{line}");
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["clientRequestId"], correlation, "{line}");
    }
    assert!(audit::verify_chain(log.path()).is_ok());
    lv.shutdown().await;
}
