//! The official Azure SDK for Rust (`azure_security_keyvault_secrets` + `azure_identity`) against
//! `keyvault serve --dev`. Each test starts its own server (see `common`).
//!
//! Secret values are compared with `assert!(a == b, "...")`, never printed.

mod common;

use azure_core::{
    error::ErrorKind,
    http::{StatusCode, Url},
    time::{Duration, OffsetDateTime},
};
use azure_security_keyvault_secrets::{
    ResourceExt as _, SecretClient,
    models::{
        DeletionRecoveryLevel, RestoreSecretParameters, Secret, SecretAttributes,
        SecretClientGetSecretOptions, SecretClientListDeletedSecretPropertiesOptions,
        SecretClientListSecretPropertiesOptions, SecretClientListSecretPropertiesVersionsOptions,
        SecretClientUpdateSecretPropertiesOptions, SecretProperties, SetSecretParameters,
        UpdateSecretPropertiesParameters,
    },
};
use common::{Server, unique_name};
use futures::TryStreamExt as _;
use std::collections::{BTreeSet, HashMap};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn params(value: &str) -> SetSecretParameters {
    SetSecretParameters {
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

async fn set(client: &SecretClient, name: &str, p: SetSecretParameters) -> Secret {
    client
        .set_secret(name, p.try_into().expect("RequestContent"), None)
        .await
        .unwrap_or_else(|e| panic!("set_secret({name}): {e}"))
        .into_model()
        .expect("Secret model")
}

async fn get(
    client: &SecretClient,
    name: &str,
    version: Option<&str>,
) -> azure_core::Result<Secret> {
    let options = SecretClientGetSecretOptions {
        secret_version: version.map(str::to_owned),
        ..Default::default()
    };
    client.get_secret(name, Some(options)).await?.into_model()
}

fn version_of(id: Option<&String>) -> String {
    let url: Url = id.expect("id").parse().expect("id is a URL");
    let segs: Vec<_> = url.path_segments().expect("path").collect();
    assert_eq!(segs.len(), 3, "versioned id expected: {url}");
    assert_eq!(segs[0], "secrets");
    let v = segs[2].to_owned();
    assert!(
        v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit()),
        "version {v:?}"
    );
    v
}

/// The SDK's error for a non-2xx response: (HTTP status, Key Vault error code).
fn http_error<T>(r: azure_core::Result<T>) -> (u16, Option<String>) {
    let Err(e) = r else {
        panic!("expected an HTTP error, got success")
    };
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            assert_eq!(e.http_status(), Some(*status));
            (u16::from(*status), error_code.clone())
        }
        other => panic!("expected ErrorKind::HttpResponse, got {other:?}: {e}"),
    }
}

fn assert_not_found<T>(r: azure_core::Result<T>, what: &str) {
    let (status, code) = http_error(r);
    assert_eq!(status, 404, "{what}");
    assert_eq!(code.as_deref(), Some("SecretNotFound"), "{what}");
}

/// Every item of a secret-properties pager, following nextLink; also returns the page sizes.
async fn all_properties(
    pager: azure_core::http::Pager<
        azure_security_keyvault_secrets::models::ListSecretPropertiesResult,
    >,
) -> (Vec<SecretProperties>, Vec<usize>) {
    let mut pages = pager.into_pages();
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    while let Some(page) = pages.try_next().await.expect("page") {
        let page = page.into_model().expect("page model");
        sizes.push(page.value.len());
        items.extend(page.value);
    }
    (items, sizes)
}

/// An error and all its sources, joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn name_of(id: Option<&String>) -> String {
    let url: Url = id.expect("id").parse().expect("id is a URL");
    url.path_segments()
        .expect("path")
        .nth(1)
        .expect("name")
        .to_owned()
}

fn recent(t: Option<OffsetDateTime>) -> OffsetDateTime {
    let t = t.expect("timestamp present");
    let now = OffsetDateTime::now_utc();
    assert!(
        t <= now + Duration::seconds(5) && t >= now - Duration::minutes(5),
        "not recent: {t}"
    );
    t
}

// ---------------------------------------------------------------------------------------------
// set / get / versions / update
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn set_get_versions_and_update() {
    let server = Server::start();
    let client = server.client(false);
    let name = unique_name("basic");

    // v1: value, content type, tags, enabled + expiry + not-before attributes
    let exp =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() + 86_400)
            .unwrap();
    let nbf = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() - 60)
        .unwrap();
    let v1 = set(
        &client,
        &name,
        SetSecretParameters {
            value: Some("first-value".into()),
            content_type: Some("text/plain".into()),
            tags: Some(tags(&[("env", "test"), ("owner", "e2e-rust")])),
            secret_attributes: Some(SecretAttributes {
                enabled: Some(true),
                expires: Some(exp),
                not_before: Some(nbf),
                ..Default::default()
            }),
        },
    )
    .await;
    assert!(
        v1.value.as_deref() == Some("first-value"),
        "set_secret returned a different value"
    );
    assert_eq!(v1.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        v1.tags,
        Some(tags(&[("env", "test"), ("owner", "e2e-rust")]))
    );
    let a = v1.attributes.clone().expect("attributes");
    assert_eq!(a.enabled, Some(true));
    assert_eq!(a.expires, Some(exp));
    assert_eq!(a.not_before, Some(nbf));
    let created = recent(a.created);
    assert_eq!(a.updated, Some(created));
    assert_eq!(a.recoverable_days, Some(90));
    assert_eq!(
        a.recovery_level,
        Some(DeletionRecoveryLevel::RecoverablePurgeable)
    );
    assert_ne!(v1.managed, Some(true));
    let v1_version = version_of(v1.id.as_ref());
    let rid = v1.resource_id().expect("resource_id");
    assert_eq!(rid.name, name);
    assert_eq!(rid.version.as_deref(), Some(v1_version.as_str()));
    assert_eq!(rid.vault_url, server.creds.vault_url.trim_end_matches('/'));

    // latest
    let got = get(&client, &name, None).await.expect("get latest");
    assert!(
        got.value.as_deref() == Some("first-value"),
        "get_secret returned a different value"
    );
    assert_eq!(got.id, v1.id);
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.attributes.as_ref().and_then(|a| a.expires), Some(exp));

    // v2 with a unicode value and no metadata
    let second = "pässwörd ✓ 秘密 🔑 \t\"quoted\" \\backslash";
    let v2 = set(&client, &name, params(second)).await;
    let v2_version = version_of(v2.id.as_ref());
    assert_ne!(v1_version, v2_version);
    assert_eq!(v2.content_type, None);
    assert!(v2.tags.as_ref().is_none_or(HashMap::is_empty));

    let latest = get(&client, &name, None).await.expect("get latest");
    assert!(latest.value.as_deref() == Some(second), "latest is not v2");
    assert_eq!(latest.id, v2.id);
    let old = get(&client, &name, Some(&v1_version))
        .await
        .expect("get v1");
    assert!(
        old.value.as_deref() == Some("first-value"),
        "v1 by version has a different value"
    );
    assert_eq!(old.id, v1.id);
    assert_eq!(
        old.tags,
        Some(tags(&[("env", "test"), ("owner", "e2e-rust")]))
    );

    // versions (small pages so the pager follows nextLink)
    for _ in 0..3 {
        set(&client, &name, params("more")).await;
    }
    let options = SecretClientListSecretPropertiesVersionsOptions {
        maxresults: Some(2),
        ..Default::default()
    };
    let (versions, sizes) = all_properties(
        client
            .list_secret_properties_versions(&name, Some(options))
            .expect("pager"),
    )
    .await;
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|&s| s <= 2),
        "page sizes {sizes:?}"
    );
    let in_order: Vec<String> = versions.iter().map(|p| version_of(p.id.as_ref())).collect();
    let listed: BTreeSet<String> = in_order.iter().cloned().collect();
    assert_eq!(listed.len(), 5, "5 distinct versions expected");
    assert!(listed.contains(&v1_version) && listed.contains(&v2_version));
    // Sorted by version id, as Key Vault lists them; this server's ids grow with time, so oldest first.
    assert!(
        in_order.iter().eq(listed.iter()),
        "not sorted by id: {in_order:?}"
    );
    assert_eq!(
        (in_order[0].as_str(), in_order[1].as_str()),
        (v1_version.as_str(), v2_version.as_str())
    );
    let p1 = versions
        .iter()
        .find(|p| version_of(p.id.as_ref()) == v1_version)
        .expect("v1 listed");
    assert_eq!(p1.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p1.attributes.as_ref().and_then(|a| a.expires), Some(exp));

    // update the properties of v1 (not latest): content type, tags, disable
    let update = UpdateSecretPropertiesParameters {
        content_type: Some("application/json".into()),
        tags: Some(tags(&[("stage", "updated")])),
        secret_attributes: Some(SecretAttributes {
            enabled: Some(false),
            ..Default::default()
        }),
    };
    let updated = client
        .update_secret_properties(
            &name,
            update.try_into().expect("RequestContent"),
            Some(SecretClientUpdateSecretPropertiesOptions {
                secret_version: Some(v1_version.clone()),
                ..Default::default()
            }),
        )
        .await
        .expect("update_secret_properties")
        .into_model()
        .expect("Secret model");
    assert_eq!(updated.id, v1.id);
    assert!(updated.value.is_none(), "update must not return the value");
    assert_eq!(updated.content_type.as_deref(), Some("application/json"));
    assert_eq!(updated.tags, Some(tags(&[("stage", "updated")])));
    let ua = updated.attributes.expect("attributes");
    assert_eq!(ua.enabled, Some(false));
    assert_eq!(ua.expires, Some(exp), "unspecified attributes are kept");
    assert_eq!(ua.created, Some(created));
    assert!(ua.updated.expect("updated") >= created);

    // a disabled version cannot be read: 403 Forbidden
    let (status, code) = http_error(get(&client, &name, Some(&v1_version)).await);
    assert_eq!(status, 403);
    assert_eq!(code.as_deref(), Some("Forbidden"));

    // update the latest version (no version in the path)
    let updated = client
        .update_secret_properties(
            &name,
            UpdateSecretPropertiesParameters {
                tags: Some(tags(&[("latest", "yes")])),
                ..Default::default()
            }
            .try_into()
            .expect("RequestContent"),
            None,
        )
        .await
        .expect("update latest")
        .into_model()
        .expect("Secret model");
    assert_eq!(updated.tags, Some(tags(&[("latest", "yes")])));
    assert_ne!(updated.id, v1.id);
}

// ---------------------------------------------------------------------------------------------
// listing with paging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_secret_properties_follows_next_link() {
    let server = Server::start();
    let client = server.client(false);
    let mut names = BTreeSet::new();
    for i in 0..30 {
        let name = unique_name(&format!("page{i}"));
        set(&client, &name, params("x")).await;
        names.insert(name);
    }

    // default page size (server maximum 25) → at least two pages
    let (items, sizes) = all_properties(client.list_secret_properties(None).expect("pager")).await;
    assert!(sizes.len() >= 2, "page sizes {sizes:?}");
    let listed: Vec<String> = items.iter().map(|p| name_of(p.id.as_ref())).collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), unique.len(), "duplicates across pages");
    assert_eq!(unique, names);
    for p in &items {
        let url: Url = p.id.as_ref().unwrap().parse().unwrap();
        assert_eq!(
            url.path_segments().unwrap().count(),
            2,
            "list ids are unversioned: {url}"
        );
        assert_eq!(p.attributes.as_ref().and_then(|a| a.enabled), Some(true));
    }

    // maxresults=7 → ceil(30/7) = 5 pages or more, none larger than 7
    let options = SecretClientListSecretPropertiesOptions {
        maxresults: Some(7),
        ..Default::default()
    };
    let (items, sizes) =
        all_properties(client.list_secret_properties(Some(options)).expect("pager")).await;
    assert!(
        sizes.len() >= 5 && sizes.iter().all(|&s| s <= 7),
        "page sizes {sizes:?}"
    );
    let unique: BTreeSet<String> = items.iter().map(|p| name_of(p.id.as_ref())).collect();
    assert_eq!(items.len(), 30);
    assert_eq!(unique, names);

    // item stream (the SDK's ItemIterator) yields the same set
    let streamed: Vec<SecretProperties> = client
        .list_secret_properties(None)
        .expect("pager")
        .try_collect()
        .await
        .expect("items");
    let unique: BTreeSet<String> = streamed.iter().map(|p| name_of(p.id.as_ref())).collect();
    assert_eq!(unique, names);

    // out of range maxresults → 400 BadParameter through the pager
    let options = SecretClientListSecretPropertiesOptions {
        maxresults: Some(26),
        ..Default::default()
    };
    let r: azure_core::Result<Vec<SecretProperties>> = client
        .list_secret_properties(Some(options))
        .expect("pager")
        .try_collect()
        .await;
    let (status, code) = http_error(r);
    assert_eq!(status, 400);
    assert_eq!(code.as_deref(), Some("BadParameter"));
}

// ---------------------------------------------------------------------------------------------
// delete / deleted / recover / purge
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_recover_purge() {
    let server = Server::start();
    let client = server.client(false);
    let base = server.creds.vault_url.trim_end_matches('/').to_owned();
    let name = unique_name("del");
    let v1 = set(&client, &name, params("one")).await;
    let v2 = set(
        &client,
        &name,
        SetSecretParameters {
            value: Some("two".into()),
            content_type: Some("text/plain".into()),
            tags: Some(tags(&[("t", "2")])),
            ..Default::default()
        },
    )
    .await;

    let deleted = client
        .delete_secret(&name, None)
        .await
        .expect("delete_secret")
        .into_model()
        .expect("DeletedSecret model");
    assert_eq!(deleted.id, v2.id);
    assert!(deleted.value.is_none(), "no value expected");
    assert_eq!(deleted.content_type.as_deref(), Some("text/plain"));
    assert_eq!(deleted.tags, Some(tags(&[("t", "2")])));
    assert_eq!(
        deleted.recovery_id.as_deref(),
        Some(format!("{base}/deletedsecrets/{name}").as_str())
    );
    let deleted_date = recent(deleted.deleted_date);
    assert_eq!(
        deleted.scheduled_purge_date,
        Some(deleted_date + Duration::days(90))
    );
    assert_eq!(deleted.resource_id().expect("resource_id").name, name);

    // gone from the live view
    assert_not_found(get(&client, &name, None).await, "get after delete");
    assert_not_found(
        get(&client, &name, Some(&version_of(v1.id.as_ref()))).await,
        "get v1 after delete",
    );
    assert_not_found(client.delete_secret(&name, None).await, "delete twice");

    // name reserved while soft-deleted: 409
    let r = client
        .set_secret(&name, params("three").try_into().unwrap(), None)
        .await;
    let (status, code) = http_error(r);
    assert_eq!(status, 409);
    assert_eq!(code.as_deref(), Some("Conflict"));

    let d = client
        .get_deleted_secret(&name, None)
        .await
        .expect("get_deleted_secret")
        .into_model()
        .expect("DeletedSecret model");
    assert_eq!(d.id, v2.id);
    assert_eq!(d.recovery_id, deleted.recovery_id);
    assert_eq!(d.deleted_date, deleted.deleted_date);
    assert_eq!(d.scheduled_purge_date, deleted.scheduled_purge_date);
    assert_eq!(d.tags, Some(tags(&[("t", "2")])));
    assert_eq!(
        d.attributes.as_ref().and_then(|a| a.recovery_level.clone()),
        Some(DeletionRecoveryLevel::RecoverablePurgeable)
    );

    // list deleted, with small pages
    let others: Vec<String> = (0..4)
        .map(|i| unique_name(&format!("deleted{i}")))
        .collect();
    for n in &others {
        set(&client, n, params("x")).await;
        client.delete_secret(n, None).await.expect("delete other");
    }
    let mut pages = client
        .list_deleted_secret_properties(Some(SecretClientListDeletedSecretPropertiesOptions {
            maxresults: Some(2),
            ..Default::default()
        }))
        .expect("pager")
        .into_pages();
    let mut listed = Vec::new();
    let mut sizes = Vec::new();
    while let Some(page) = pages.try_next().await.expect("page") {
        let page = page.into_model().expect("page model");
        sizes.push(page.value.len());
        listed.extend(page.value);
    }
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|&s| s <= 2),
        "page sizes {sizes:?}"
    );
    assert_eq!(listed.len(), 5);
    let item = listed
        .iter()
        .find(|x| x.id.as_deref() == Some(format!("{base}/secrets/{name}").as_str()))
        .expect("deleted secret listed with its unversioned id");
    assert_eq!(item.recovery_id, deleted.recovery_id);
    assert_eq!(item.deleted_date, deleted.deleted_date);
    assert_eq!(item.scheduled_purge_date, deleted.scheduled_purge_date);

    // recover brings back every version
    let recovered = client
        .recover_deleted_secret(&name, None)
        .await
        .expect("recover_deleted_secret")
        .into_model()
        .expect("Secret model");
    assert_eq!(recovered.id, v2.id);
    assert!(
        recovered.value.is_none(),
        "recover must not return the value"
    );
    let got = get(&client, &name, None).await.expect("get after recover");
    assert!(
        got.value.as_deref() == Some("two"),
        "recovered latest has a different value"
    );
    let got = get(&client, &name, Some(&version_of(v1.id.as_ref())))
        .await
        .expect("get v1 after recover");
    assert!(
        got.value.as_deref() == Some("one"),
        "recovered v1 has a different value"
    );
    assert_not_found(
        client.get_deleted_secret(&name, None).await,
        "get_deleted after recover",
    );
    assert_not_found(
        client.recover_deleted_secret(&name, None).await,
        "recover twice",
    );

    // purge: delete then purge removes it for good (204 → Ok)
    client
        .delete_secret(&name, None)
        .await
        .expect("delete again");
    client
        .purge_deleted_secret(&name, None)
        .await
        .expect("purge_deleted_secret");
    assert_not_found(
        client.get_deleted_secret(&name, None).await,
        "get_deleted after purge",
    );
    assert_not_found(
        client.purge_deleted_secret(&name, None).await,
        "purge twice",
    );
    assert_not_found(get(&client, &name, None).await, "get after purge");
    // the name is free again
    let again = set(&client, &name, params("fresh")).await;
    assert_ne!(again.id, v2.id);
}

// ---------------------------------------------------------------------------------------------
// backup / restore
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn backup_and_restore() {
    let server = Server::start();
    let client = server.client(false);
    let name = unique_name("bak");
    let v1 = set(&client, &name, params("alpha")).await;
    let v2 = set(
        &client,
        &name,
        SetSecretParameters {
            value: Some("beta".into()),
            content_type: Some("text/plain".into()),
            tags: Some(tags(&[("k", "v")])),
            ..Default::default()
        },
    )
    .await;

    let backup = client
        .backup_secret(&name, None)
        .await
        .expect("backup_secret")
        .into_model()
        .expect("BackupSecretResult model")
        .value
        .expect("backup blob");
    assert!(!backup.is_empty());

    // restoring over a live secret → 409
    let restore = |blob: Vec<u8>| RestoreSecretParameters {
        secret_backup: Some(blob),
    };
    let r = client
        .restore_secret(restore(backup.clone()).try_into().unwrap(), None)
        .await;
    let (status, _) = http_error(r);
    assert_eq!(status, 409);

    client.delete_secret(&name, None).await.expect("delete");
    client
        .purge_deleted_secret(&name, None)
        .await
        .expect("purge");
    assert_not_found(get(&client, &name, None).await, "get after purge");

    let restored = client
        .restore_secret(restore(backup).try_into().unwrap(), None)
        .await
        .expect("restore_secret")
        .into_model()
        .expect("Secret model");
    assert_eq!(restored.id, v2.id);
    assert!(
        restored.value.is_none(),
        "restore must not return the value"
    );
    assert_eq!(restored.content_type.as_deref(), Some("text/plain"));
    assert_eq!(restored.tags, Some(tags(&[("k", "v")])));

    let latest = get(&client, &name, None).await.expect("get restored");
    assert!(
        latest.value.as_deref() == Some("beta"),
        "restored latest has a different value"
    );
    let old = get(&client, &name, Some(&version_of(v1.id.as_ref())))
        .await
        .expect("get restored v1");
    assert!(
        old.value.as_deref() == Some("alpha"),
        "restored v1 has a different value"
    );
    let (versions, _) = all_properties(
        client
            .list_secret_properties_versions(&name, None)
            .expect("pager"),
    )
    .await;
    assert_eq!(versions.len(), 2);

    // a tampered backup is rejected with 400 and writes nothing
    let other = unique_name("tamper");
    set(&client, &other, params("gamma")).await;
    let mut blob = client
        .backup_secret(&other, None)
        .await
        .expect("backup")
        .into_model()
        .unwrap()
        .value
        .unwrap();
    client.delete_secret(&other, None).await.unwrap();
    client.purge_deleted_secret(&other, None).await.unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x01;
    let (status, _) = http_error(
        client
            .restore_secret(restore(blob).try_into().unwrap(), None)
            .await,
    );
    assert_eq!(status, 400);
    assert_not_found(
        get(&client, &other, None).await,
        "tampered restore wrote nothing",
    );
}

// ---------------------------------------------------------------------------------------------
// error mapping
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn errors_map_to_http_response_errors() {
    let server = Server::start();
    let client = server.client(false);
    let missing = unique_name("missing");

    let e = get(&client, &missing, None)
        .await
        .err()
        .expect("missing secret → error");
    assert_eq!(e.http_status(), Some(StatusCode::NotFound));
    let (status, code) = http_error::<()>(Err(e));
    assert_eq!((status, code.as_deref()), (404, Some("SecretNotFound")));

    assert_not_found(
        get(&client, &missing, Some("0123456789abcdef0123456789abcdef")).await,
        "get version",
    );
    assert_not_found(
        client.get_deleted_secret(&missing, None).await,
        "get_deleted",
    );
    assert_not_found(client.delete_secret(&missing, None).await, "delete");
    assert_not_found(
        client.recover_deleted_secret(&missing, None).await,
        "recover",
    );
    assert_not_found(client.purge_deleted_secret(&missing, None).await, "purge");
    assert_not_found(client.backup_secret(&missing, None).await, "backup");
    assert_not_found(
        client
            .update_secret_properties(
                &missing,
                UpdateSecretPropertiesParameters::default()
                    .try_into()
                    .unwrap(),
                None,
            )
            .await,
        "update",
    );
    // a version of an existing secret that does not exist
    set(&client, &missing, params("now it exists")).await;
    assert_not_found(
        get(&client, &missing, Some("0123456789abcdef0123456789abcdef")).await,
        "unknown version",
    );

    // invalid name → 400 BadParameter
    let (status, code) = http_error(get(&client, "bad_name!", None).await);
    assert_eq!(status, 400);
    assert_eq!(code.as_deref(), Some("BadParameter"));

    // bad client secret → the credential fails (ErrorKind::Credential), no request is authorized
    let mut creds = server.creds.clone();
    creds.client_secret.push('x');
    let bad = common::Server::credential_for(&server, &creds);
    let bad_client =
        common::Server::client_with(&server, &server.creds.vault_url, bad, Some(false));
    let e = get(&bad_client, &missing, None)
        .await
        .err()
        .expect("bad credential → error");
    assert_eq!(e.kind(), &ErrorKind::Credential, "{e}");
}

// ---------------------------------------------------------------------------------------------
// named vault: the SDK's challenge-resource verification on (its default)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn named_vault_with_challenge_verification() {
    let server = Server::start();
    let named = server.client(true);
    let name = unique_name("named");
    let s = set(&named, &name, params("via-named")).await;
    let id: Url = s.id.as_ref().unwrap().parse().unwrap();
    assert_eq!(
        id.host_str(),
        Some("myvault.localhost"),
        "ids use the requested host"
    );
    let got = get(&named, &name, None).await.expect("get via named");
    assert!(
        got.value.as_deref() == Some("via-named"),
        "named get has a different value"
    );
    let (items, _) = all_properties(named.list_secret_properties(None).expect("pager")).await;
    assert!(items.iter().any(|p| name_of(p.id.as_ref()) == name));
    named
        .delete_secret(&name, None)
        .await
        .expect("delete via named");
    named
        .purge_deleted_secret(&name, None)
        .await
        .expect("purge via named");

    // the IP URL with verification on is refused by the SDK itself (client-side check: the
    // challenge resource host `localhost` is not a parent domain of `127.0.0.1`)
    let strict =
        common::Server::client_with(&server, &server.creds.vault_url, server.credential(), None);
    let e = get(&strict, &name, None)
        .await
        .err()
        .expect("challenge mismatch → error");
    let chain = error_chain(&e);
    assert!(
        chain.contains("doesn't match the requested domain"),
        "unexpected error: {chain}"
    );
}
