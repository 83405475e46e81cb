//! The async client against the real server (in-process, HTTPS on 127.0.0.1:0).

mod common;

use common::*;
use futures_util::StreamExt;
use keyvault_secrets::credentials::{
    ClientSecretCredential, ClientSecretCredentialOptions, StaticTokenCredential, TokenCredential,
};
use keyvault_secrets::http::{Method, Request, StatusCode};
use keyvault_secrets::{
    ApiVersion, DeletionRecoveryLevel, ErrorKind, KeyVaultSecretIdentifier, OffsetDateTime,
    PollerStatus, SecretClient, SecretClientOptions, SetSecretOptions,
    UpdateSecretPropertiesOptions,
};
use keyvault_server::local::{LocalVault, LocalVaultOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

#[tokio::test]
async fn set_get_update_with_every_field() {
    let v = vault().await;
    let c = client(&v);
    assert_eq!(c.vault_url(), v.vault_url());

    let options = SetSecretOptions::default()
        .content_type("text/plain")
        .enabled(true)
        .not_before(at(1_700_000_000))
        .expires_on(at(4_102_444_800))
        .tag("environment", "production")
        .tag("owner", "team-alpha");
    let s = c
        .set_secret("api-key", "sk-1234567890abcdef", Some(options))
        .await
        .unwrap();
    assert_eq!(s.name, "api-key");
    assert_eq!(s.value(), Some("sk-1234567890abcdef"));
    let p = &s.properties;
    assert_eq!(s.id, p.id);
    assert!(
        p.id.starts_with(&format!("{}/secrets/api-key/", v.vault_url())),
        "{}",
        p.id
    );
    let version = p.version.clone().expect("a version");
    assert_eq!(version.len(), 32);
    assert_eq!(p.vault_url, v.vault_url());
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.enabled, Some(true));
    assert_eq!(p.not_before, Some(at(1_700_000_000)));
    assert_eq!(p.expires_on, Some(at(4_102_444_800)));
    assert!(p.created_on.is_some() && p.updated_on.is_some());
    assert_eq!(
        p.recovery_level,
        Some(DeletionRecoveryLevel::RecoverablePurgeable)
    );
    assert_eq!(p.recoverable_days, Some(90));
    assert_eq!(p.tags.get("owner").map(String::as_str), Some("team-alpha"));
    assert_eq!(p.key_id, None);
    assert!(p.managed.is_none() || p.managed == Some(false));
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("sk-1234567890abcdef"), "{dbg}");

    // Latest, by version, by id.
    let got = c.get_secret("api-key", None).await.unwrap();
    assert_eq!(got.value(), Some("sk-1234567890abcdef"));
    assert_eq!(got.properties, s.properties);
    let got = c.get_secret("api-key", Some(&version)).await.unwrap();
    assert_eq!(got.id, s.id);
    // An empty version is the latest, as in the Python SDK (`version or ""`).
    let got = c.get_secret("api-key", Some("")).await.unwrap();
    assert_eq!(got.id, s.id);
    // A secret not backed by a certificate comes back as it is, whatever format is asked for.
    let got = c
        .get_secret_as("api-key", None, keyvault_secrets::ContentType::Pfx)
        .await
        .unwrap();
    assert_eq!(got.value(), Some("sk-1234567890abcdef"));
    assert_eq!(got.properties, s.properties);
    assert_eq!(got.properties.previous_version, None);
    let id = KeyVaultSecretIdentifier::parse(&s.id).unwrap();
    assert_eq!(id.name(), "api-key");
    assert_eq!(id.version(), Some(version.as_str()));
    let got = c.get_secret_by_id(&id).await.unwrap();
    assert_eq!(got.value(), Some("sk-1234567890abcdef"));

    // Update: tags replaced, content type changed, the rest kept.
    let updated = c
        .update_secret_properties(
            "api-key",
            None,
            UpdateSecretPropertiesOptions::default()
                .content_type("application/json")
                .tags([("owner", "team-beta"), ("last-rotated", "2024-01-15")]),
        )
        .await
        .unwrap();
    assert_eq!(updated.version.as_deref(), Some(version.as_str()));
    assert_eq!(updated.content_type.as_deref(), Some("application/json"));
    assert_eq!(updated.tags.len(), 2);
    assert_eq!(updated.tags["owner"], "team-beta");
    assert_eq!(updated.expires_on, Some(at(4_102_444_800)));
    assert_eq!(updated.enabled, Some(true));

    // Disable one version explicitly: GET of it is 403 Forbidden / SecretDisabled.
    let disabled = c
        .update_secret_properties(
            "api-key",
            Some(&version),
            UpdateSecretPropertiesOptions::default().enabled(false),
        )
        .await
        .unwrap();
    assert_eq!(disabled.enabled, Some(false));
    let e = c.get_secret("api-key", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HttpResponse);
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(e.error_code(), Some("Forbidden"));
    assert_eq!(e.inner_error_code(), Some("SecretDisabled"));
    v.shutdown().await;
}

#[tokio::test]
async fn versions_and_listing_over_many_pages() {
    let v = vault().await;
    let c = client(&v);
    let v1 = c
        .set_secret("connection-string", "Server=old-server;Database=app", None)
        .await
        .unwrap();
    let v2 = c
        .set_secret("connection-string", "Server=new-server;Database=app", None)
        .await
        .unwrap();
    assert_ne!(v1.properties.version, v2.properties.version);
    let latest = c.get_secret("connection-string", None).await.unwrap();
    assert_eq!(latest.value(), Some("Server=new-server;Database=app"));
    let old = c
        .get_secret("connection-string", v1.properties.version.as_deref())
        .await
        .unwrap();
    assert_eq!(old.value(), Some("Server=old-server;Database=app"));
    for i in 0..10 {
        c.set_secret("connection-string", format!("v{i}"), None)
            .await
            .unwrap();
    }
    let versions: Vec<_> = c
        .list_properties_of_secret_versions("connection-string", Some(5))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(versions.len(), 12);
    assert!(
        versions
            .iter()
            .all(|p| p.version.as_deref().is_some_and(|v| v.len() == 32))
    );
    assert!(versions.iter().any(|p| p.version == v1.properties.version));
    // Unknown name: an empty listing.
    let none: Vec<_> = c
        .list_properties_of_secret_versions("nothing-here", None)
        .unwrap()
        .collect()
        .await;
    assert!(none.is_empty());

    for i in 0..31 {
        c.set_secret(
            &format!("s-{i:02}"),
            "x",
            Some(SetSecretOptions::default().tag("i", i.to_string())),
        )
        .await
        .unwrap();
    }
    // Items across pages of at most 4.
    let all: Vec<_> = c
        .list_properties_of_secrets(Some(4))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 32);
    assert!(all.iter().all(|p| p.version.is_none()));
    let s7 = all.iter().find(|p| p.name == "s-07").unwrap();
    assert_eq!(s7.tags["i"], "7");
    // Page by page, then resume from the second page's token.
    let mut pages = c.list_properties_of_secrets(Some(4)).unwrap().by_page();
    let mut count = 0;
    let mut tokens = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        assert!(page.items.len() <= 4);
        count += page.items.len();
        tokens.push(page.continuation_token.clone());
    }
    assert_eq!(count, 32);
    assert!(tokens.len() >= 8, "{}", tokens.len());
    assert_eq!(tokens.last().unwrap(), &None);
    let token = tokens[1].clone().unwrap();
    let rest: Vec<_> = c
        .list_properties_of_secrets(Some(4))
        .unwrap()
        .resume_from(token.clone())
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(rest.len(), 32 - 8);
    let rest_pages: Vec<_> = c
        .list_properties_of_secrets(None)
        .unwrap()
        .by_page_from(token)
        .collect()
        .await;
    assert_eq!(
        rest_pages
            .iter()
            .map(|p| p.as_ref().unwrap().items.len())
            .sum::<usize>(),
        24
    );
    v.shutdown().await;
}

#[tokio::test]
async fn delete_recover_purge_with_pollers() {
    let v = vault().await;
    let mut opts = options(&v);
    opts.polling_interval = Duration::from_secs(2); // the default: waits must still be fast
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(opts)).unwrap();
    c.set_secret(
        "important-secret",
        "v1",
        Some(SetSecretOptions::default().content_type("text/plain")),
    )
    .await
    .unwrap();
    c.set_secret("important-secret", "v2", None).await.unwrap();

    let started = Instant::now();
    let mut poller = c.begin_delete_secret("important-secret").await.unwrap();
    let deleted = poller.result().clone();
    assert_eq!(deleted.name, "important-secret");
    assert_eq!(
        deleted.recovery_id.as_deref(),
        Some(format!("{}/deletedsecrets/important-secret", v.vault_url()).as_str())
    );
    let deleted_on = deleted.deleted_on.unwrap();
    let purge = deleted.scheduled_purge_date.unwrap();
    assert_eq!((purge - deleted_on).whole_days(), 90);
    poller.wait().await.unwrap();
    assert!(poller.done());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Gone from the live listing, 404 on get, listed as deleted.
    let e = c.get_secret("important-secret", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    assert_eq!(e.error_code(), Some("SecretNotFound"));
    // Python's `error.reason` and `error.response.text()`: the reason phrase and the body as it came.
    assert_eq!(e.reason(), Some("Not Found"));
    let body: serde_json::Value = serde_json::from_slice(e.response_body().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "SecretNotFound");
    assert_eq!(body["error"]["message"].as_str(), Some(e.message()));
    assert!(!format!("{e:?}{e}").contains("\"error\""));
    let live: Vec<_> = c.list_properties_of_secrets(None).unwrap().collect().await;
    assert!(live.is_empty());
    let d = c.get_deleted_secret("important-secret").await.unwrap();
    assert_eq!(d.recovery_id, deleted.recovery_id);
    assert_eq!(d.properties.content_type, None); // latest version (v2) has none
    let listed: Vec<_> = c
        .list_deleted_secrets(None)
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "important-secret");
    assert!(listed[0].scheduled_purge_date.is_some());

    // The name is reserved while deleted: 409.
    let e = c
        .set_secret("important-secret", "again", None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExists);
    assert_eq!(e.status(), Some(StatusCode::CONFLICT));

    // Recover: awaiting the poller waits and returns the first answer.
    let started = Instant::now();
    let recovered = c
        .begin_recover_deleted_secret("important-secret")
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(recovered.name, "important-secret");
    assert_eq!(
        c.get_secret("important-secret", None)
            .await
            .unwrap()
            .value(),
        Some("v2")
    );
    let versions: Vec<_> = c
        .list_properties_of_secret_versions("important-secret", None)
        .unwrap()
        .collect()
        .await;
    assert_eq!(versions.len(), 2);

    // Delete again and purge.
    let gone = c
        .begin_delete_secret("important-secret")
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(gone.name, "important-secret");
    c.purge_deleted_secret("important-secret").await.unwrap();
    let e = c.get_deleted_secret("important-secret").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    let e = c
        .purge_deleted_secret("important-secret")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    let e = c
        .begin_recover_deleted_secret("important-secret")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    let e = c.begin_delete_secret("important-secret").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    // The name is free again.
    c.set_secret("important-secret", "fresh", None)
        .await
        .unwrap();

    // The async Python client's one-call forms: delete and recover, each waiting until done.
    let deleted = c.delete_secret("important-secret").await.unwrap();
    assert!(deleted.recovery_id.is_some());
    let recovered = c.recover_deleted_secret("important-secret").await.unwrap();
    assert_eq!(recovered.name, "important-secret");
    assert_eq!(
        c.get_secret("important-secret", None)
            .await
            .unwrap()
            .value(),
        Some("fresh")
    );

    // A bounded wait (Python: `poller.wait(timeout)`): a recovery whose secret is deleted again before it is
    // seen never completes, and the wait returns InProgress when its time is up.
    c.delete_secret("important-secret").await.unwrap();
    let mut poller = c
        .begin_recover_deleted_secret("important-secret")
        .await
        .unwrap();
    c.delete_secret("important-secret").await.unwrap();
    poller.set_polling_interval(Duration::from_millis(20));
    let started = Instant::now();
    assert_eq!(
        poller
            .wait_timeout(Duration::from_millis(300))
            .await
            .unwrap(),
        PollerStatus::InProgress
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    c.recover_deleted_secret("important-secret").await.unwrap();
    assert_eq!(
        poller.wait_timeout(Duration::from_secs(5)).await.unwrap(),
        PollerStatus::Succeeded
    );
    v.shutdown().await;
}

#[tokio::test]
async fn backup_and_restore() {
    let v = vault().await;
    let c = client(&v);
    let v1 = c.set_secret("b", "one", None).await.unwrap();
    c.set_secret("b", "two", Some(SetSecretOptions::default().tag("k", "v")))
        .await
        .unwrap();
    let backup = c.backup_secret("b").await.unwrap();
    assert!(!backup.is_empty());
    // Restoring over a live secret: 409.
    let e = c.restore_secret_backup(&backup).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExists);
    c.begin_delete_secret("b")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    // Over a deleted one: still 409.
    let e = c.restore_secret_backup(&backup).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExists);
    c.purge_deleted_secret("b").await.unwrap();
    let restored = c.restore_secret_backup(&backup).await.unwrap();
    assert_eq!(restored.name, "b");
    assert_eq!(restored.tags["k"], "v");
    assert_eq!(c.get_secret("b", None).await.unwrap().value(), Some("two"));
    assert_eq!(
        c.get_secret("b", v1.properties.version.as_deref())
            .await
            .unwrap()
            .value(),
        Some("one")
    );
    // A damaged backup: 400.
    let mut bad = backup.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let e = c.restore_secret_backup(&bad).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HttpResponse);
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    let e = c.backup_secret("missing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    v.shutdown().await;
}

#[tokio::test]
async fn error_kinds() {
    let v = vault().await;
    let c = client(&v);
    // Not found.
    let e = c.get_secret("nope", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    assert!(e.message().contains("was not found"), "{e}");
    // The response's headers, and its request id (Python: `e.response.headers["x-ms-request-id"]`).
    let id = e.request_id().expect("x-ms-request-id");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        e.response_headers()
            .unwrap()
            .get("x-ms-request-id")
            .unwrap(),
        id
    );
    assert!(format!("{e:?}").contains(id));
    assert!(!e.is_client_authentication());
    let e = c
        .get_secret("nope", Some("0123456789abcdef0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    let e = c
        .update_secret_properties(
            "nope",
            None,
            UpdateSecretPropertiesOptions::default().enabled(true),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceNotFound);
    // Invalid arguments: before any I/O.
    assert_eq!(
        c.get_secret("no_underscores", None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        c.set_secret(&"x".repeat(128), "v", None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    // Bad token: the server says 401 (twice: after one fresh challenge round).
    let bad = SecretClient::new(
        v.vault_url(),
        Arc::new(StaticTokenCredential::from_token("garbage")),
        Some(options(&v)),
    )
    .unwrap();
    let e = bad.get_secret("nope", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClientAuthentication);
    assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
    // Wrong client secret: the credential fails.
    let wrong = ClientSecretCredential::new(
        v.tenant_id(),
        v.client_id(),
        "wrong-secret",
        Some(ClientSecretCredentialOptions {
            authority_host: v.authority_host().to_string(),
            additional_ca_certificates: vec![v.ca_cert_pem().to_vec()],
            ..Default::default()
        }),
    )
    .unwrap();
    let wc = SecretClient::new(v.vault_url(), Arc::new(wrong), Some(options(&v))).unwrap();
    let e = wc.get_secret("nope", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential, "{e}");
    assert!(
        e.is_client_authentication(),
        "Python: a ClientAuthenticationError"
    );
    // Challenge resource verification is on by default: 127.0.0.1 is not under the challenge's resource.
    let mut strict = options(&v);
    strict.verify_challenge_resource = true;
    let sc = SecretClient::new(v.vault_url(), credential(&v), Some(strict)).unwrap();
    let e = sc.get_secret("nope", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClientAuthentication);
    assert!(e.message().contains("verify_challenge_resource"), "{e}");
    // An untrusted server certificate: connection error.
    let mut untrusted = options(&v);
    untrusted.additional_ca_certificates.clear();
    untrusted.retry = keyvault_secrets::RetryOptions::none();
    let uc = SecretClient::new(v.vault_url(), credential(&v), Some(untrusted)).unwrap();
    assert_eq!(
        uc.get_secret("nope", None).await.unwrap_err().kind(),
        ErrorKind::Connection
    );
    // Nobody listening: connection error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = options(&v);
    o.retry = keyvault_secrets::RetryOptions::none();
    let dead = SecretClient::new(
        &format!("https://127.0.0.1:{port}"),
        credential(&v),
        Some(o),
    )
    .unwrap();
    assert_eq!(
        dead.get_secret("x", None).await.unwrap_err().kind(),
        ErrorKind::Connection
    );
    v.shutdown().await;
}

#[tokio::test]
async fn purge_protection_is_403() {
    let v = LocalVault::start_with(LocalVaultOptions {
        purge_protection: true,
        retention_days: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = client(&v);
    let s = c.set_secret("p", "v", None).await.unwrap();
    assert_eq!(
        s.properties.recovery_level,
        Some(DeletionRecoveryLevel::CustomizedRecoverable)
    );
    assert_eq!(s.properties.recoverable_days, Some(7));
    c.begin_delete_secret("p")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let e = c.purge_deleted_secret("p").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HttpResponse);
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    v.shutdown().await;
}

#[tokio::test]
async fn retries_429_honouring_retry_after() {
    let v = vault().await;
    let base = options(&v);
    let throttling = Arc::new(Throttling {
        inner: base.build_transport().unwrap(),
        throttle: AtomicUsize::new(2),
        headers: vec![("retry-after", "1")],
        seen: AtomicUsize::new(0),
    });
    let mut o = options(&v);
    o.transport = Some(throttling.clone());
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(o)).unwrap();
    let started = Instant::now();
    c.set_secret("t", "v", None).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "waited {took:?}");
    assert!(took < Duration::from_secs(10), "waited {took:?}");
    // 2 throttled + challenge + authorised.
    assert_eq!(throttling.seen.load(Ordering::SeqCst), 4);

    // retry-after-ms, and giving up after max_retries with the 429 as the error.
    let throttling = Arc::new(Throttling {
        inner: base.build_transport().unwrap(),
        throttle: AtomicUsize::new(100),
        headers: vec![("retry-after-ms", "20")],
        seen: AtomicUsize::new(0),
    });
    let mut o = options(&v);
    o.transport = Some(throttling.clone());
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(o)).unwrap();
    let started = Instant::now();
    let e = c.get_secret("t", None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(e.kind(), ErrorKind::HttpResponse);
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(e.error_code(), Some("Throttled"));
    assert_eq!(throttling.seen.load(Ordering::SeqCst), 4); // 1 + 3 retries
    v.shutdown().await;
}

/// Records the status of every response that passes through.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn keyvault_secrets::http::Transport>,
    statuses: std::sync::Mutex<Vec<u16>>,
}

#[async_trait::async_trait]
impl keyvault_secrets::http::Transport for Recording {
    async fn send(
        &self,
        request: &Request,
    ) -> keyvault_secrets::Result<keyvault_secrets::http::Response> {
        let resp = self.inner.send(request).await?;
        self.statuses.lock().unwrap().push(resp.status.as_u16());
        Ok(resp)
    }
}

#[tokio::test]
async fn the_servers_own_429_is_retried_once_the_window_passes() {
    // A budget of 3 requests per 1-second window on the real server.
    let v = LocalVault::start_with(LocalVaultOptions {
        throttle: keyvault_server::http::throttle::ThrottleSettings {
            limit: Some(3),
            create_limit: None,
            window: Duration::from_secs(1),
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let base = options(&v);
    let recording = Arc::new(Recording {
        inner: base.build_transport().unwrap(),
        statuses: std::sync::Mutex::new(Vec::new()),
    });
    let mut o = options(&v);
    o.transport = Some(recording.clone());
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(o)).unwrap();
    c.set_secret("t", "v", None).await.unwrap(); // fetches this client's token
    // Without retries, the 4th request in one window is refused with Key Vault's 429.
    let mut strict = options(&v);
    strict.retry = keyvault_secrets::RetryOptions::none();
    let no_retry = SecretClient::new(v.vault_url(), credential(&v), Some(strict)).unwrap();
    // (Rarely, a window ends between the last refusal and the next request: then try again.)
    for _ in 0..3 {
        let e = loop {
            if let Err(e) = no_retry.get_secret("t", None).await {
                break e;
            }
        };
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(e.error_code(), Some("Throttled"));
        // The retrying client is refused too (one budget per vault), waits Retry-After, and succeeds.
        recording.statuses.lock().unwrap().clear();
        let s = c.get_secret("t", None).await.unwrap();
        assert_eq!(s.value(), Some("v"));
        let statuses = recording.statuses.lock().unwrap().clone();
        assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
        if statuses.contains(&429) {
            v.shutdown().await;
            return;
        }
    }
    panic!("the retrying client was never throttled");
}

#[tokio::test]
async fn tokens_are_cached_refreshed_and_rechallenged() {
    let v = vault().await;
    // Cached: one token for many requests.
    let counting = Arc::new(Counting::new(credential(&v)));
    let c = SecretClient::new(v.vault_url(), counting.clone(), Some(options(&v))).unwrap();
    for i in 0..3 {
        c.set_secret("r", format!("{i}"), None).await.unwrap();
    }
    assert_eq!(counting.calls(), 1);
    // Refreshed: a token that expires within the refresh margin is replaced before use.
    let mut short = Counting::new(credential(&v));
    short.lifetime = Some(time::Duration::seconds(60));
    let short = Arc::new(short);
    let c = SecretClient::new(v.vault_url(), short.clone(), Some(options(&v))).unwrap();
    for _ in 0..3 {
        c.get_secret("r", None).await.unwrap();
    }
    assert_eq!(short.calls(), 3);
    // Re-challenged: a rejected token is replaced once, and the request succeeds.
    let mut bad_first = Counting::new(credential(&v));
    bad_first.bad_first = 1;
    let bad_first = Arc::new(bad_first);
    let c = SecretClient::new(v.vault_url(), bad_first.clone(), Some(options(&v))).unwrap();
    assert_eq!(c.get_secret("r", None).await.unwrap().value(), Some("2"));
    assert_eq!(bad_first.calls(), 2);
    c.get_secret("r", None).await.unwrap();
    assert_eq!(bad_first.calls(), 2);
    v.shutdown().await;
}

#[tokio::test]
async fn client_secret_credential_against_the_issuer() {
    let v = vault().await;
    let cred = credential(&v);
    let scope = format!(
        "{}/.default",
        v.authority_host().replace("127.0.0.1", "localhost")
    );
    let t = cred.get_token(&[&scope], None).await.unwrap();
    assert!(!t.token.expose().is_empty());
    assert!(t.expires_on > OffsetDateTime::now_utc() + time::Duration::minutes(10));
    assert!(!format!("{t:?}").contains(t.token.expose()));
    // A tenant other than the credential's is refused unless allowed.
    let opts = keyvault_secrets::credentials::TokenRequestOptions {
        tenant_id: Some("other-tenant".into()),
        ..Default::default()
    };
    let e = cred.get_token(&[&scope], Some(opts)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential);
    v.shutdown().await;
}

#[tokio::test]
async fn every_api_version_and_send_request() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("raw", "value", None).await.unwrap();
    for version in ApiVersion::ALL {
        let vc = SecretClient::new(
            v.vault_url(),
            credential(&v),
            Some(SecretClientOptions {
                api_version: version,
                ..options(&v)
            }),
        )
        .unwrap();
        assert_eq!(vc.api_version(), version);
        assert_eq!(
            vc.get_secret("raw", None).await.unwrap().value(),
            Some("value"),
            "{version}"
        );
    }
    let r = c
        .send_request(Request::new(Method::GET, "/secrets/raw/"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["value"], "value");
    let r = c
        .send_request(Request::new(Method::GET, "/secrets/missing/"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.to_error().error_code(), Some("SecretNotFound"));
    let put = Request::new(
        Method::PUT,
        format!("{}/secrets/raw2?api-version=7.6", v.vault_url()),
    )
    .with_json(&serde_json::json!({"value": "v2"}))
    .unwrap();
    assert_eq!(c.send_request(put).await.unwrap().status, StatusCode::OK);
    assert_eq!(
        c.get_secret("raw2", None).await.unwrap().value(),
        Some("v2")
    );
    v.shutdown().await;
}

#[tokio::test]
async fn a_closed_client_reopens() {
    let v = vault().await;
    let c = client(&v);
    c.set_secret("c", "v", None).await.unwrap();
    let clone = c.clone();
    c.close();
    // As in the Python SDK, a closed client opens new connections when it is used again.
    assert_eq!(
        clone.get_secret("c", None).await.unwrap().value(),
        Some("v")
    );
    c.close();
    assert_eq!(c.get_secret("c", None).await.unwrap().value(), Some("v"));
    v.shutdown().await;
}

/// A continuation token belongs to its listing (the a17 audit's H1): a secret's id given as a token (fetched,
/// it would answer with the value, which the parse error then quoted), another listing's token, another
/// secret's versions token or text that is not a token is an InvalidArgument error without any request, and
/// the error shows no value. The listings' own tokens (and the server's nextLinks) keep working.
#[tokio::test]
async fn continuation_tokens_must_belong_to_their_listing() {
    let v = vault().await;
    let counting = Arc::new(Throttling {
        inner: options(&v).build_transport().unwrap(),
        throttle: AtomicUsize::new(0),
        headers: Vec::new(),
        seen: AtomicUsize::new(0),
    });
    let c = SecretClient::new(
        v.vault_url(),
        credential(&v),
        Some(SecretClientOptions {
            transport: Some(counting.clone()),
            ..options(&v)
        }),
    )
    .unwrap();
    const VALUE: &str = "CANARY-value-3";
    let first = c.set_secret("tok-a", VALUE, None).await.unwrap();
    c.set_secret("tok-a", "CANARY-value-4", None).await.unwrap();
    c.set_secret("tok-b", "CANARY-value-5", None).await.unwrap();
    c.set_secret("tok-c", "x", None).await.unwrap();
    c.begin_delete_secret("tok-c").await.unwrap().await.unwrap();

    // The listings' own tokens resume them.
    let secrets_token = {
        let mut pages = c.list_properties_of_secrets(Some(1)).unwrap().by_page();
        pages
            .next()
            .await
            .unwrap()
            .unwrap()
            .continuation_token
            .unwrap()
    };
    let versions_token = {
        let mut pages = c
            .list_properties_of_secret_versions("tok-a", Some(1))
            .unwrap()
            .by_page();
        pages
            .next()
            .await
            .unwrap()
            .unwrap()
            .continuation_token
            .unwrap()
    };
    let rest: Vec<_> = c
        .list_properties_of_secret_versions("TOK-A", Some(1))
        .unwrap()
        .resume_from(versions_token.clone())
        .collect()
        .await;
    assert_eq!(rest.len(), 1);
    assert!(rest[0].is_ok(), "{:?}", rest[0]);
    let rest: Vec<_> = c
        .list_properties_of_secrets(Some(1))
        .unwrap()
        .resume_from(secrets_token.clone())
        .collect()
        .await;
    assert_eq!(rest.len(), 1, "tok-b after tok-a");
    assert!(rest[0].is_ok());

    let vault_url = v.vault_url().to_string();
    let secret_id = first.id.clone();
    let refused = [
        ("the secret's id", secret_id.clone(), "secrets"),
        (
            "the latest version's path",
            format!("{vault_url}/secrets/tok-a/"),
            "secrets",
        ),
        ("text", "not a token".to_string(), "secrets"),
        ("the live listing's token", secrets_token.clone(), "deleted"),
        (
            "the deleted listing's path",
            format!("{vault_url}/deletedsecrets"),
            "secrets",
        ),
        (
            "another secret's versions",
            versions_token.clone(),
            "versions-b",
        ),
        (
            "a deleted secret",
            format!("{vault_url}/deletedsecrets/tok-c"),
            "deleted",
        ),
    ];
    for (what, token, listing) in refused {
        let before = counting.seen.load(Ordering::SeqCst);
        let first: keyvault_secrets::Result<()> = match listing {
            "secrets" => c
                .list_properties_of_secrets(None)
                .unwrap()
                .resume_from(token.clone())
                .next()
                .await
                .unwrap()
                .map(drop),
            "deleted" => c
                .list_deleted_secrets(None)
                .unwrap()
                .by_page_from(token.clone())
                .next()
                .await
                .unwrap()
                .map(drop),
            _ => c
                .list_properties_of_secret_versions("tok-b", None)
                .unwrap()
                .resume_from(token.clone())
                .next()
                .await
                .unwrap()
                .map(drop),
        };
        let e = first.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {e}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("CANARY"), "{what}: {shown}");
        assert!(
            !shown.contains(&token),
            "{what}: the token is not quoted: {shown}"
        );
        assert!(shown.contains("continuation token"), "{shown}");
        assert_eq!(
            counting.seen.load(Ordering::SeqCst),
            before,
            "{what}: no request"
        );
    }
    // The blocking pager refuses the same way (its iterator's first item).
    #[cfg(feature = "blocking")]
    {
        let blocking = keyvault_secrets::blocking::SecretClient::new(
            v.vault_url(),
            credential(&v),
            Some(options(&v)),
        )
        .unwrap();
        let e = tokio::task::spawn_blocking(move || {
            blocking
                .list_properties_of_secrets(None)
                .unwrap()
                .resume_from(secret_id)
                .next()
                .unwrap()
                .unwrap_err()
        })
        .await
        .unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(!format!("{e} {e:?}").contains("CANARY"), "{e:?}");
    }
    v.shutdown().await;
}

/// A gateway that routes by path: what comes to `{vault}/kv/…` goes to the vault's `/…` (and what does not
/// start with `/kv/` is refused). It passes answers on untouched, so the vault's `nextLink`s lack `/kv`.
#[derive(Debug)]
struct PathGateway {
    inner: Arc<dyn keyvault_secrets::http::Transport>,
    vault: String,
    seen: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl keyvault_secrets::http::Transport for PathGateway {
    async fn send(
        &self,
        request: &Request,
    ) -> keyvault_secrets::Result<keyvault_secrets::http::Response> {
        self.seen.lock().unwrap().push(request.url.clone());
        let routed = format!("{}/kv/", self.vault);
        let Some(rest) = request.url.strip_prefix(&routed) else {
            return Err(keyvault_secrets::Error::new(
                ErrorKind::Connection,
                format!("the gateway routes only {routed}…, not {}", request.url),
            ));
        };
        let mut forwarded = request.clone();
        forwarded.url = format!("{}/{rest}", self.vault);
        self.inner.send(&forwarded).await
    }
}

/// A vault URL with a path (a gateway that routes by path): every request goes under it — operations, the
/// pages after the first (the vault's `nextLink`s do not carry the path), a poller's polls, `send_request`'s
/// relative paths — as the Python SDK sends them (it was refused: "the vault must be at the root").
#[tokio::test]
async fn a_vault_url_with_a_path_sends_every_request_under_it() {
    let v = vault().await;
    let gateway = Arc::new(PathGateway {
        inner: options(&v).build_transport().unwrap(),
        vault: v.vault_url().to_string(),
        seen: std::sync::Mutex::new(Vec::new()),
    });
    let mut o = options(&v);
    o.transport = Some(gateway.clone());
    let url = format!("{}/kv/", v.vault_url());
    let c = SecretClient::new(&url, credential(&v), Some(o)).unwrap();
    assert_eq!(c.vault_url(), format!("{}/kv", v.vault_url()));

    for i in 0..5 {
        c.set_secret(&format!("g-{i}"), format!("value-{i}"), None)
            .await
            .unwrap();
    }
    assert_eq!(
        c.get_secret("g-3", None).await.unwrap().value(),
        Some("value-3")
    );
    let names: Vec<_> = c
        .list_properties_of_secrets(Some(2))
        .unwrap()
        .map(|r| r.unwrap().name)
        .collect()
        .await;
    assert_eq!(names, ["g-0", "g-1", "g-2", "g-3", "g-4"]);
    let mut poller = c.begin_delete_secret("g-4").await.unwrap();
    poller.wait().await.unwrap();
    let raw = c
        .send_request(Request::new(Method::GET, "/deletedsecrets/g-4"))
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::OK);

    let seen = gateway.seen.lock().unwrap().clone();
    let pages = seen
        .iter()
        .filter(|u| u.contains("/kv/secrets?") && u.contains("skiptoken"))
        .count();
    assert!(pages >= 2, "{seen:#?}");
    assert!(
        seen.iter().any(|u| u.contains("/kv/deletedsecrets/g-4")),
        "{seen:#?}"
    );
    v.shutdown().await;
}
