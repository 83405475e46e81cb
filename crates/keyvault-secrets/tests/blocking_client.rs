//! The blocking client against the real server. The server runs on its own multi-thread runtime;
//! the client is used from plain (non-async) test code.
#![cfg(feature = "blocking")]

mod common;

use common::*;
use keyvault_secrets::blocking::SecretClient;
use keyvault_secrets::credentials::StaticTokenCredential;
use keyvault_secrets::http::{Method, Request, StatusCode};
use keyvault_secrets::{
    ErrorKind, KeyVaultSecretIdentifier, PollerStatus, SetSecretOptions,
    UpdateSecretPropertiesOptions,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn server() -> (tokio::runtime::Runtime, keyvault_server::local::LocalVault) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let v = rt.block_on(vault());
    (rt, v)
}

#[test]
fn every_operation_blocking() {
    let (rt, v) = server();
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(options(&v))).unwrap();
    assert_eq!(c.vault_url(), v.vault_url());

    let s = c
        .set_secret(
            "app-config",
            r#"{"debug":false}"#,
            Some(SetSecretOptions::default().content_type("application/json")),
        )
        .unwrap();
    assert_eq!(s.value(), Some(r#"{"debug":false}"#));
    let v1 = s.properties.version.clone().unwrap();
    c.set_secret("app-config", "two", None).unwrap();
    assert_eq!(
        c.get_secret("app-config", None).unwrap().value(),
        Some("two")
    );
    assert_eq!(
        c.get_secret("app-config", Some(&v1))
            .unwrap()
            .properties
            .content_type
            .as_deref(),
        Some("application/json")
    );
    let id = KeyVaultSecretIdentifier::parse(&s.id).unwrap();
    assert_eq!(
        c.get_secret_by_id(&id).unwrap().value(),
        Some(r#"{"debug":false}"#)
    );
    let p = c
        .update_secret_properties(
            "app-config",
            Some(&v1),
            UpdateSecretPropertiesOptions::default().tag("a", "b"),
        )
        .unwrap();
    assert_eq!(p.tags["a"], "b");

    for i in 0..7 {
        c.set_secret(&format!("many-{i}"), "x", None).unwrap();
    }
    let names: Vec<String> = c
        .list_properties_of_secrets(Some(3))
        .unwrap()
        .map(|p| p.unwrap().name)
        .collect();
    assert_eq!(names.len(), 8);
    let pages: Vec<_> = c
        .list_properties_of_secrets(Some(3))
        .unwrap()
        .by_page()
        .map(|p| p.unwrap())
        .collect();
    assert_eq!(pages.len(), 3);
    let token = pages[0].continuation_token.clone().unwrap();
    let rest = c
        .list_properties_of_secrets(Some(3))
        .unwrap()
        .resume_from(token)
        .count();
    assert_eq!(rest, 5);
    assert_eq!(
        c.list_properties_of_secret_versions("app-config", Some(1))
            .unwrap()
            .count(),
        2
    );

    let backup = c.backup_secret("app-config").unwrap();
    let started = Instant::now();
    let mut poller = c.begin_delete_secret("app-config").unwrap();
    assert_eq!(poller.result().name, "app-config");
    assert_eq!(
        poller.wait_timeout(Duration::from_secs(5)).unwrap(),
        PollerStatus::Succeeded
    );
    poller.wait().unwrap();
    assert!(poller.done());
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        c.get_deleted_secret("app-config").unwrap().name,
        "app-config"
    );
    assert_eq!(c.list_deleted_secrets(None).unwrap().count(), 1);
    let recovered = c
        .begin_recover_deleted_secret("app-config")
        .unwrap()
        .wait_for_result()
        .unwrap();
    assert_eq!(recovered.name, "app-config");
    // The one-call forms (the seed's sync `recover_deleted_secret`): each returns once the service is done.
    assert_eq!(c.delete_secret("app-config").unwrap().name, "app-config");
    assert_eq!(
        c.get_deleted_secret("app-config").unwrap().name,
        "app-config"
    );
    assert_eq!(
        c.recover_deleted_secret("app-config").unwrap().name,
        "app-config"
    );
    assert_eq!(
        c.get_secret("app-config", None).unwrap().value(),
        Some("two")
    );
    c.begin_delete_secret("app-config").unwrap().wait().unwrap();
    c.purge_deleted_secret("app-config").unwrap();
    let restored = c.restore_secret_backup(&backup).unwrap();
    assert_eq!(restored.name, "app-config");
    assert_eq!(
        c.get_secret("app-config", None).unwrap().value(),
        Some("two")
    );

    let r = c
        .send_request(Request::new(Method::GET, "/secrets/app-config/"))
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // Errors.
    assert_eq!(
        c.get_secret("missing", None).unwrap_err().kind(),
        ErrorKind::ResourceNotFound
    );
    assert_eq!(
        c.set_secret("bad name", "v", None).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let bad = SecretClient::new(
        v.vault_url(),
        Arc::new(StaticTokenCredential::from_token("x")),
        Some(options(&v)),
    )
    .unwrap();
    assert_eq!(
        bad.get_secret("missing", None).unwrap_err().kind(),
        ErrorKind::ClientAuthentication
    );
    c.close();
    // Used again after close: new connections, as in the Python SDK.
    assert_eq!(
        c.get_secret("missing", None).unwrap_err().kind(),
        ErrorKind::ResourceNotFound
    );
    // Dropping the clients and pollers (and so their runtimes) closes their sockets: the server drains at once.
    drop((c, bad, poller));
    rt.block_on(v.shutdown());
}

#[test]
fn blocking_retries_429() {
    let (rt, v) = server();
    let base = options(&v);
    let throttling = Arc::new(Throttling {
        inner: base.build_transport().unwrap(),
        throttle: AtomicUsize::new(1),
        headers: vec![("x-ms-retry-after-ms", "300")],
        seen: AtomicUsize::new(0),
    });
    let mut o = options(&v);
    o.transport = Some(throttling.clone());
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(o)).unwrap();
    let started = Instant::now();
    c.set_secret("t", "v", None).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(throttling.seen.load(Ordering::SeqCst), 3);
    drop(c);
    rt.block_on(v.shutdown());
}

/// One credential shared by several blocking clients (the usual pattern): the credential's pooled connection to
/// the token endpoint, opened during one client's call, must still work for another client's token request.
/// Each blocking client used to drive its own runtime only while inside a call, so the second client's token
/// request waited on a connection nobody drove until it timed out.
#[test]
fn blocking_clients_share_one_credential() {
    let (_rt, v) = server();
    let shared = credential(&v);
    let a = SecretClient::new(v.vault_url(), shared.clone(), Some(options(&v))).unwrap();
    a.set_secret("shared-cred", "one", None).unwrap();
    let started = Instant::now();
    let b = SecretClient::new(v.vault_url(), shared.clone(), Some(options(&v))).unwrap();
    assert_eq!(
        b.get_secret("shared-cred", None).unwrap().value(),
        Some("one")
    );
    let c = SecretClient::new(v.vault_url(), shared, Some(options(&v))).unwrap();
    drop(a);
    assert_eq!(
        c.get_secret("shared-cred", None).unwrap().value(),
        Some("one")
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "token requests through the shared credential took {:?}",
        started.elapsed()
    );
}

#[test]
fn blocking_call_options_tokens_and_callbacks() {
    use keyvault_secrets::blocking::Poller;
    use keyvault_secrets::http::{HeaderName, HeaderValue};
    use keyvault_secrets::{CallOptions, DeletedSecret};

    let (rt, v) = server();
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(options(&v))).unwrap();
    c.set_secret("blocking-token", "v", None).unwrap();

    // A per-call header reaches the server (it echoes the client request id).
    let id = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let view = c
        .with_call_options(CallOptions::default().header(
            HeaderName::from_static("x-ms-client-request-id"),
            HeaderValue::from_static(id),
        ))
        .unwrap();
    let r = view
        .send_request(Request::new(Method::GET, "/secrets/blocking-token/"))
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers
            .get("x-ms-client-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(id)
    );
    let e = c
        .with_call_options(CallOptions::default().header(
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer x"),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    // A delete's token resumes in another blocking client; the callback runs once, on the polling thread.
    let token = view
        .begin_delete_secret("blocking-token")
        .unwrap()
        .continuation_token();
    let other = SecretClient::new(v.vault_url(), credential(&v), Some(options(&v))).unwrap();
    let mut poller: Poller<DeletedSecret> =
        Poller::from_continuation_token(&other, &token).unwrap();
    assert_eq!(poller.status(), PollerStatus::InProgress);
    poller.set_polling_interval(Duration::from_millis(20));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    poller.add_done_callback(move |d| {
        assert_eq!(d.name, "blocking-token");
        r.fetch_add(1, Ordering::SeqCst);
    });
    let deleted = poller.wait_for_result().unwrap();
    assert_eq!(deleted.name, "blocking-token");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(other.get_deleted_secret("blocking-token").is_ok());
    rt.block_on(v.shutdown());
}

/// A done callback may use the blocking client: it runs after the wait's `block_on` has returned (inside it,
/// Tokio panicked with "Cannot start a runtime from within a runtime"). Here it purges what the delete deleted.
#[test]
fn blocking_done_callback_purges_with_the_blocking_client() {
    let (rt, v) = server();
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(options(&v))).unwrap();
    c.set_secret("callback-purge", "v", None).unwrap();
    let mut poller = c.begin_delete_secret("callback-purge").unwrap();
    poller.set_polling_interval(Duration::from_millis(20));
    let purged = Arc::new(std::sync::Mutex::new(None));
    let (c2, p2) = (c.clone(), purged.clone());
    poller.add_done_callback(move |d| {
        *p2.lock().unwrap() = Some(c2.purge_deleted_secret(&d.name));
    });
    poller.wait().unwrap();
    let outcome = purged.lock().unwrap().take().expect("the callback ran");
    outcome.expect("the purge in the callback succeeded");
    let e = c.get_deleted_secret("callback-purge").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound, "{e}");

    // The same through `poll` (a callback added to a poller whose operation is still going).
    c.set_secret("callback-purge-2", "v", None).unwrap();
    let mut poller = c.begin_delete_secret("callback-purge-2").unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let (c3, r3) = (c.clone(), ran.clone());
    poller.add_done_callback(move |d| {
        c3.purge_deleted_secret(&d.name).unwrap();
        r3.fetch_add(1, Ordering::SeqCst);
    });
    while poller.poll().unwrap() != PollerStatus::Succeeded {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.get_deleted_secret("callback-purge-2").unwrap_err().kind(),
        ErrorKind::ResourceNotFound
    );
    rt.block_on(v.shutdown());
}

/// Called from async code (here a `#[tokio::test]`'s body and a spawned task), the blocking client returns an
/// `Other` error that names the way out, instead of Tokio's "Cannot start a runtime from within a runtime"
/// panic; its pagers' iterators and pollers' waits too. Inside `spawn_blocking` it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_from_async_code_are_refused_and_spawn_blocking_works() {
    let v = vault().await;
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(options(&v))).unwrap();
    let refused = |e: keyvault_secrets::Error| {
        assert_eq!(e.kind(), ErrorKind::Other, "{e}");
        let shown = e.to_string();
        assert!(
            shown.contains("spawn_blocking") && shown.contains("async"),
            "{shown}"
        );
    };
    refused(c.get_secret("in-async", None).unwrap_err());
    refused(c.set_secret("in-async", "v", None).unwrap_err());
    let mut pager = c.list_properties_of_secrets(None).unwrap();
    refused(pager.next().unwrap().unwrap_err());
    assert!(pager.next().is_none(), "the refusal ends the iteration");

    // In a spawned task as well.
    let c2 = c.clone();
    let e = tokio::spawn(async move { c2.get_secret("in-async", None) })
        .await
        .unwrap()
        .unwrap_err();
    refused(e);
    // Nothing was sent: the secret the refused set_secret named does not exist.
    let async_client = client(&v);
    assert_eq!(
        async_client
            .get_secret("in-async", None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::ResourceNotFound
    );

    // Inside spawn_blocking every call works, and the poller made there can be waited on there.
    let c3 = c.clone();
    let poller = tokio::task::spawn_blocking(move || {
        c3.set_secret("in-blocking", "v", None).unwrap();
        assert_eq!(
            c3.get_secret("in-blocking", None).unwrap().value(),
            Some("v")
        );
        assert_eq!(c3.list_properties_of_secrets(None).unwrap().count(), 1);
        c3.begin_delete_secret("in-blocking").unwrap()
    })
    .await
    .unwrap();
    // Back in async code, its wait is refused…
    let mut poller = poller;
    refused(poller.wait().unwrap_err());
    // …and works again in spawn_blocking.
    tokio::task::spawn_blocking(move || poller.wait_for_result().unwrap())
        .await
        .unwrap();
    c.close();
    v.shutdown().await;
}

/// The same on a current-thread runtime: the refusal does not depend on the runtime's flavour.
#[tokio::test(flavor = "current_thread")]
async fn blocking_calls_in_a_current_thread_runtime_are_refused() {
    let c = SecretClient::new(
        "https://192.0.2.1:9",
        Arc::new(StaticTokenCredential::from_token("t")),
        None,
    )
    .unwrap();
    let e = c.get_deleted_secret("x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(e.to_string().contains("spawn_blocking"), "{e}");
}
