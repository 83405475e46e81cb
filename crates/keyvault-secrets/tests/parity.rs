//! Parity with the Python SDK against the real server (in-process, HTTPS on 127.0.0.1:0): per-call options,
//! tags absent vs empty, poller continuation tokens and done callbacks.

mod common;

use base64::Engine;
use common::*;
use futures_util::StreamExt;
use keyvault_secrets::http::{HeaderName, HeaderValue, Method, Request};
use keyvault_secrets::{
    CallOptions, DeletedSecret, ErrorKind, Poller, PollerStatus, SecretClient, SecretProperties,
    SetSecretOptions, Tags, UpdateSecretPropertiesOptions,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const REQUEST_ID: &str = "0f0e6c1c-2a2b-4c4d-8e8f-9a9b0c0d1e1f";

fn echoed_id(headers: Option<&keyvault_secrets::http::HeaderMap>) -> Option<String> {
    headers?
        .get("x-ms-client-request-id")?
        .to_str()
        .ok()
        .map(str::to_string)
}

#[tokio::test]
async fn a_per_call_header_reaches_the_server() {
    let v = vault().await;
    let c = client(&v);
    let view = c
        .with_call_options(CallOptions::default().header(
            HeaderName::from_static("x-ms-client-request-id"),
            HeaderValue::from_static(REQUEST_ID),
        ))
        .unwrap();
    // The server echoes the client's request id: the caller's replaced the generated one.
    let e = view.get_secret("missing", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    assert_eq!(echoed_id(e.response_headers()).as_deref(), Some(REQUEST_ID));
    let r = view
        .send_request(Request::new(Method::GET, "/secrets/missing/"))
        .await
        .unwrap();
    assert_eq!(echoed_id(Some(&r.headers)).as_deref(), Some(REQUEST_ID));
    // The client itself is unchanged: its calls get generated ids.
    let e = c.get_secret("missing", None).await.unwrap_err();
    let generated = echoed_id(e.response_headers()).expect("an echoed id");
    assert_ne!(generated, REQUEST_ID);
    assert_eq!(generated.len(), 36);
    // Calls through the view work end to end (the header rides along with the challenge and the token).
    let s = view.set_secret("with-header", "v1", None).await.unwrap();
    assert_eq!(s.value(), Some("v1"));
    v.shutdown().await;
}

#[tokio::test]
async fn headers_the_client_owns_are_refused() {
    // No I/O: the vault address is never contacted.
    let c = SecretClient::new(
        "https://127.0.0.1:9",
        Arc::new(keyvault_secrets::credentials::StaticTokenCredential::from_token("t")),
        None,
    )
    .unwrap();
    for name in ["authorization", "Authorization", "host", "content-length"] {
        let options = CallOptions::default().header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("Bearer stolen"),
        );
        let e = c.with_call_options(options).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}");
        assert!(
            e.message().contains(&name.to_ascii_lowercase()),
            "{name}: {e}"
        );
        assert!(!e.to_string().contains("stolen"), "{e}");
    }
    let e = c
        .with_call_options(CallOptions::default().timeout(Duration::ZERO))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // Debug never shows a header's value unless it is on the logging allow-list.
    let options = CallOptions::default().header(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("hunter2"),
    );
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[tokio::test]
async fn tags_absent_empty_and_replaced_round_trip() {
    let v = vault().await;
    let c = client(&v);

    // No tags sent: none come back (Python: tags is None).
    let none = c.set_secret("no-tags", "v", None).await.unwrap();
    assert_eq!(none.properties.tags_or_none(), None);
    assert_eq!(
        c.get_secret("no-tags", None)
            .await
            .unwrap()
            .properties
            .tags_or_none(),
        None
    );

    // An empty tag object comes back as one (Python: tags == {}).
    let empty = c
        .set_secret(
            "empty-tags",
            "v",
            Some(SetSecretOptions::default().tags(Vec::<(String, String)>::new())),
        )
        .await
        .unwrap();
    assert_eq!(empty.properties.tags_or_none(), Some(&Tags::new()));
    let got = c.get_secret("empty-tags", None).await.unwrap();
    assert_eq!(got.properties.tags_or_none(), Some(&Tags::new()));
    assert_ne!(got.properties, none.properties);

    // The listing tells them apart too.
    let listed: Vec<SecretProperties> = c
        .list_properties_of_secrets(None)
        .unwrap()
        .map(|p| p.unwrap())
        .collect()
        .await;
    let find = |name: &str| listed.iter().find(|p| p.name == name).unwrap();
    assert_eq!(find("no-tags").tags_or_none(), None);
    assert_eq!(find("empty-tags").tags_or_none(), Some(&Tags::new()));

    // Update: tags not given = unchanged; given = replaced; cleared = an empty set, not "no tags".
    c.set_secret(
        "tagged",
        "v",
        Some(SetSecretOptions::default().tag("a", "1").tag("b", "2")),
    )
    .await
    .unwrap();
    let unchanged = c
        .update_secret_properties(
            "tagged",
            None,
            UpdateSecretPropertiesOptions::default().content_type("text/plain"),
        )
        .await
        .unwrap();
    assert_eq!(unchanged.tags.len(), 2);
    let replaced = c
        .update_secret_properties(
            "tagged",
            None,
            UpdateSecretPropertiesOptions::default().tags([("c", "3")]),
        )
        .await
        .unwrap();
    assert_eq!(
        replaced
            .tags_or_none()
            .map(|t| t.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["c".to_string()])
    );
    let cleared = c
        .update_secret_properties(
            "tagged",
            None,
            UpdateSecretPropertiesOptions::default().clear_tags(),
        )
        .await
        .unwrap();
    assert_eq!(cleared.tags_or_none(), Some(&Tags::new()));
    let got = c.get_secret("tagged", None).await.unwrap();
    assert_eq!(got.properties.tags_or_none(), Some(&Tags::new()));
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    v.shutdown().await;
}

#[tokio::test]
async fn a_delete_resumes_from_its_continuation_token_in_a_fresh_client() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("resumable", "do-not-put-me-in-a-token", None)
        .await
        .unwrap();
    let poller = c.begin_delete_secret("resumable").await.unwrap();
    assert_eq!(poller.status(), PollerStatus::InProgress);
    let first = poller.result().clone();
    let token = poller.continuation_token();
    drop(poller);
    // The token is opaque base64url, versioned, and holds no value.
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&token)
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["v"], 1);
    assert!(!token.contains("do-not-put-me"));
    assert!(!json.to_string().contains("do-not-put-me"));

    // Another client (its own credential, connections and token cache) resumes and finishes it.
    let fresh = client(&v);
    let mut resumed: Poller<DeletedSecret> =
        Poller::from_continuation_token(&fresh, &token).unwrap();
    assert_eq!(resumed.status(), PollerStatus::InProgress);
    assert_eq!(resumed.result(), &first);
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = ran.clone();
    resumed.add_done_callback(move |d: &DeletedSecret| {
        assert_eq!(d.name, "resumable");
        seen.fetch_add(1, Ordering::SeqCst);
    });
    resumed.set_polling_interval(Duration::from_millis(20));
    let deleted = resumed.await.unwrap();
    assert_eq!(deleted, first);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    fresh
        .get_deleted_secret("resumable")
        .await
        .expect("deleted for real");

    // A recovery resumes the same way, with its own kind of poller.
    let token = c
        .begin_recover_deleted_secret("resumable")
        .await
        .unwrap()
        .continuation_token();
    let recovered: Poller<SecretProperties> =
        Poller::from_continuation_token(&fresh, &token).unwrap();
    let props = recovered.await.unwrap();
    assert_eq!(props.name, "resumable");
    assert_eq!(
        fresh.get_secret("resumable", None).await.unwrap().value(),
        Some("do-not-put-me-in-a-token")
    );

    // A recovery's token cannot make a delete's poller, and the reverse.
    let e = Poller::<DeletedSecret>::from_continuation_token(&fresh, &token).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("recover"), "{e}");
    v.shutdown().await;
}

#[tokio::test]
async fn malformed_continuation_tokens_are_refused_clearly() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("t", "v", None).await.unwrap();
    let token = c
        .begin_delete_secret("t")
        .await
        .unwrap()
        .continuation_token();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let reencode = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json: serde_json::Value =
            serde_json::from_slice(&b64.decode(&token).unwrap()).unwrap();
        edit(&mut json);
        b64.encode(json.to_string())
    };
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty"),
        ("not a token!".into(), "base64url"),
        (b64.encode("[1,2,3]"), "does not hold a token"),
        (b64.encode("{}"), "no version"),
        (reencode(&|j| j["v"] = 2.into()), "version is 2"),
        (reencode(&|j| j["op"] = "purge".into()), "purge"),
        (
            reencode(&|j| j["vault"] = "https://elsewhere.vault.azure.net".into()),
            "elsewhere.vault.azure.net",
        ),
        (
            reencode(&|j| j["name"] = "bad_name".into()),
            "invalid secret name",
        ),
        (reencode(&|j| j["name"] = "other".into()), "not 'other'"),
        (
            reencode(&|j| {
                j.as_object_mut().unwrap().remove("resource");
            }),
            "'resource' is missing",
        ),
        (reencode(&|j| j["resource"] = 7.into()), "resource"),
        ("A".repeat(300 * 1024), "longer than"),
    ];
    for (bad, why) in cases {
        let e = Poller::<DeletedSecret>::from_continuation_token(&c, &bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{why}");
        assert!(e.message().contains("continuation token"), "{e}");
        assert!(e.message().contains(why), "{why}: {e}");
    }
    // The genuine token still works.
    Poller::<DeletedSecret>::from_continuation_token(&c, &token).unwrap();
    v.shutdown().await;
}

#[tokio::test]
async fn done_callbacks_run_once_and_can_be_removed() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("cb", "v", None).await.unwrap();
    let mut poller = c.begin_delete_secret("cb").await.unwrap();
    poller.set_polling_interval(Duration::from_millis(20));
    let kept = Arc::new(AtomicUsize::new(0));
    let removed = Arc::new(AtomicUsize::new(0));
    let k = kept.clone();
    poller.add_done_callback(move |d| {
        assert_eq!(d.name, "cb");
        k.fetch_add(1, Ordering::SeqCst);
    });
    let r = removed.clone();
    let id = poller.add_done_callback(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert!(poller.remove_done_callback(id));
    assert!(!poller.remove_done_callback(id));
    poller.wait().await.unwrap();
    assert!(poller.done());
    assert_eq!(kept.load(Ordering::SeqCst), 1);
    // Waiting or polling again runs nothing again.
    poller.wait().await.unwrap();
    assert_eq!(poller.poll().await.unwrap(), PollerStatus::Succeeded);
    assert_eq!(kept.load(Ordering::SeqCst), 1);
    assert_eq!(removed.load(Ordering::SeqCst), 0);
    // Added once done: runs at once (as azure-core's add_done_callback), and is not pending afterwards.
    let late = Arc::new(AtomicUsize::new(0));
    let l = late.clone();
    let id = poller.add_done_callback(move |_| {
        l.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(late.load(Ordering::SeqCst), 1);
    assert!(!poller.remove_done_callback(id));
    // A done poller's token says so, but a token is not trusted: the resumed poller asks the service once,
    // and its callbacks run when that answer says done.
    let token = poller.continuation_token();
    let mut resumed: Poller<DeletedSecret> = Poller::from_continuation_token(&c, &token).unwrap();
    assert!(!resumed.done());
    let l = late.clone();
    resumed.add_done_callback(move |_| {
        l.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(late.load(Ordering::SeqCst), 1);
    assert_eq!(resumed.poll().await.unwrap(), PollerStatus::Succeeded);
    assert_eq!(late.load(Ordering::SeqCst), 2);
    v.shutdown().await;
}

/// A delete's continuation token for `name`, decoded, edited and encoded again.
fn edited(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut json: serde_json::Value = serde_json::from_slice(&b64.decode(token).unwrap()).unwrap();
    edit(&mut json);
    b64.encode(json.to_string())
}

/// A client on `v` whose requests are counted.
fn counted_client(v: &keyvault_server::local::LocalVault) -> (SecretClient, Arc<Throttling>) {
    let counter = Arc::new(Throttling {
        inner: options(v).build_transport().unwrap(),
        throttle: AtomicUsize::new(0),
        headers: vec![],
        seen: AtomicUsize::new(0),
    });
    let mut o = options(v);
    o.transport = Some(counter.clone());
    o.polling_interval = Duration::from_millis(5);
    (
        SecretClient::new(v.vault_url(), credential(v), Some(o)).unwrap(),
        counter,
    )
}

#[tokio::test]
async fn tampered_continuation_tokens_are_refused() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("ct", "v", None).await.unwrap();
    c.set_secret("other", "v", None).await.unwrap();
    let token = c
        .begin_delete_secret("ct")
        .await
        .unwrap()
        .continuation_token();
    let vault = c.vault_url().to_string();
    let port = port_of(&vault);
    let elsewhere = vault.replace(&format!(":{port}"), &format!(":{}", port + 1));
    let cases: Vec<(String, &str)> = vec![
        // The auditor's: the resource's id on another host.
        (
            edited(&token, |j| {
                j["resource"]["id"] = "https://evil.example/secrets/ct/abc".into()
            }),
            "'https://evil.example'",
        ),
        // The same host on another port is another vault.
        (
            edited(&token, |j| {
                j["resource"]["id"] = format!("{elsewhere}/secrets/ct/abc").into()
            }),
            "not on this client's vault",
        ),
        (
            edited(&token, |j| {
                j["resource"]["recoveryId"] = "https://evil.example/deletedsecrets/ct".into()
            }),
            "'recoveryId' is on 'https://evil.example'",
        ),
        // Ids naming another secret than the token's.
        (
            edited(&token, |j| {
                j["resource"]["id"] = format!("{vault}/secrets/other/abc").into()
            }),
            "not 'ct'",
        ),
        (
            edited(&token, |j| {
                j["resource"]["recoveryId"] = format!("{vault}/deletedsecrets/other").into()
            }),
            "'recoveryId' does not name /deletedsecrets/ct",
        ),
        (
            edited(&token, |j| {
                j["resource"]["recoveryId"] = format!("{vault}/secrets/ct").into()
            }),
            "'recoveryId' does not name /deletedsecrets/ct",
        ),
        (
            edited(&token, |j| {
                j["resource"]["recoveryId"] = format!("{vault}/deletedsecrets/ct/extra").into()
            }),
            "'recoveryId' does not name /deletedsecrets/ct",
        ),
        (
            edited(&token, |j| {
                j["resource"]["kid"] = "https://evil.example/keys/ct/abc".into()
            }),
            "'kid' is on 'https://evil.example'",
        ),
        (
            edited(&token, |j| {
                j["resource"]["kid"] = format!("{vault}/keys/other/abc").into()
            }),
            "'kid' does not name /keys/ct",
        ),
        (
            edited(&token, |j| j["resource"]["kid"] = "not a url".into()),
            "'kid' is not a URL",
        ),
    ];
    for (bad, why) in cases {
        let e = Poller::<DeletedSecret>::from_continuation_token(&c, &bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{why}");
        assert!(e.message().contains("continuation token"), "{e}");
        assert!(e.message().contains(why), "{why}: {e}");
    }
    // Ids on the vault naming the secret are fine (a certificate's secret names its key).
    let fine = edited(&token, |j| {
        j["resource"]["kid"] = format!("{vault}/keys/ct/0123").into()
    });
    let resumed = Poller::<DeletedSecret>::from_continuation_token(&c, &fine).unwrap();
    assert_eq!(
        resumed.result().properties.key_id.as_deref(),
        Some(format!("{vault}/keys/ct/0123").as_str())
    );
    v.shutdown().await;
}

fn port_of(vault_url: &str) -> u16 {
    vault_url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_forged_done_token_is_checked_with_the_service() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("real", "v", None).await.unwrap();
    let mut poller = c.begin_delete_secret("real").await.unwrap();
    poller.set_polling_interval(Duration::from_millis(5));
    poller.wait().await.unwrap();
    let token = poller.continuation_token();
    let vault = c.vault_url().to_string();

    // A done token for a secret that never existed: no "deleted" result from the token alone; the service is
    // asked, says 404 every time, and the poller gives up after RESUMED_NOT_FOUND_LIMIT polls.
    let ghost = edited(&token, |j| {
        j["done"] = true.into();
        j["name"] = "ghost".into();
        j["resource"]["id"] = format!("{vault}/secrets/ghost/0123").into();
        j["resource"]["recoveryId"] = format!("{vault}/deletedsecrets/ghost").into();
    });
    let (counted, requests) = counted_client(&v);
    let resumed = Poller::<DeletedSecret>::from_continuation_token(&counted, &ghost).unwrap();
    assert_eq!(resumed.status(), PollerStatus::InProgress);
    assert!(!resumed.done());
    assert_eq!(requests.seen.load(Ordering::SeqCst), 0);
    let e = resumed.await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    assert!(e.message().contains("continuation token"), "{e}");
    assert!(e.message().contains("'ghost'"), "{e}");
    // The challenge round, then the polls.
    assert_eq!(
        requests.seen.load(Ordering::SeqCst),
        1 + keyvault_secrets::RESUMED_NOT_FOUND_LIMIT as usize
    );

    // A done token with forged facts about a real deletion: the result is the service's, not the token's.
    let forged = edited(&token, |j| {
        j["done"] = true.into();
        j["resource"]["scheduledPurgeDate"] = 4_000_000_000i64.into();
        j["resource"]["tags"] = serde_json::json!({"forged": "yes"});
    });
    let resumed = Poller::<DeletedSecret>::from_continuation_token(&c, &forged).unwrap();
    assert_eq!(
        resumed
            .result()
            .properties
            .tags
            .get("forged")
            .map(String::as_str),
        Some("yes")
    );
    let deleted = resumed.await.unwrap();
    assert_eq!(deleted, c.get_deleted_secret("real").await.unwrap());
    assert!(deleted.properties.tags.is_empty());
    v.shutdown().await;
}

#[tokio::test]
async fn stale_continuation_tokens_fail_instead_of_polling_for_ever() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("stale", "v", None).await.unwrap();
    let delete_token = c
        .begin_delete_secret("stale")
        .await
        .unwrap()
        .continuation_token();
    let mut recover = c.begin_recover_deleted_secret("stale").await;
    // The delete has to finish before the recovery can start.
    while recover.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        recover = c.begin_recover_deleted_secret("stale").await;
    }
    let recover_token = recover.unwrap().continuation_token();
    c.get_secret("stale", None).await.unwrap();

    // Deleted again: the recovery's token finds no secret.
    let mut again = c.begin_delete_secret("stale").await.unwrap();
    again.set_polling_interval(Duration::from_millis(5));
    again.wait().await.unwrap();
    let (counted, _) = counted_client(&v);
    let e = Poller::<SecretProperties>::from_continuation_token(&counted, &recover_token)
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    assert!(e.message().contains("recover of the secret 'stale'"), "{e}");

    // Purged: the first delete's token finds no deleted secret.
    c.purge_deleted_secret("stale").await.unwrap();
    let mut resumed =
        Poller::<DeletedSecret>::from_continuation_token(&counted, &delete_token).unwrap();
    let e = resumed.wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    assert!(e.message().contains("delete of the secret 'stale'"), "{e}");
    assert!(!resumed.done());
    v.shutdown().await;
}

#[tokio::test]
async fn a_zero_polling_interval_is_refused_or_raised() {
    let v = vault().await;
    let mut o = options(&v);
    o.polling_interval = Duration::ZERO;
    let e = SecretClient::new(v.vault_url(), credential(&v), Some(o)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("polling_interval"), "{e}");
    let c = client(&v);
    c.set_secret("z", "v", None).await.unwrap();
    let mut poller = c.begin_delete_secret("z").await.unwrap();
    poller.set_polling_interval(Duration::ZERO);
    assert_eq!(poller.polling_interval(), Duration::from_millis(1));
    v.shutdown().await;
}
