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
    // A done poller's token resumes as done: no poll needed, callbacks run at once.
    let token = poller.continuation_token();
    let mut resumed: Poller<DeletedSecret> = Poller::from_continuation_token(&c, &token).unwrap();
    assert!(resumed.done());
    let l = late.clone();
    resumed.add_done_callback(move |_| {
        l.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(late.load(Ordering::SeqCst), 2);
    v.shutdown().await;
}
