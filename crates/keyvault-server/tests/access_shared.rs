//! Access control over a shared PostgreSQL store: what the admin API changes through one node (principals,
//! their secrets, custom roles, assignments) is in force on every node, concurrent changes through two nodes
//! are all kept, and a node moving from its own data directory to a shared store brings its changes along.
//!
//! Two in-process servers over one private PostgreSQL cluster (skipped, with a message, when PostgreSQL is
//! not installed), real HTTPS, the admin API and the token endpoint.

use std::path::Path;
use std::time::{Duration, Instant};

use keyvault_server::auth::hash_secret;
use keyvault_server::config::Config;
use keyvault_server::server::Server;
use keyvault_server::store::pgtest::{self, PgCluster};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

mod common;

const ADMIN_ID: &str = "admin-app";
const ADMIN_SECRET: &str = "admin-secret-for-the-shared-access-test";
/// Longer than a node's poll interval, with room for a loaded machine.
const PROPAGATION: Duration = Duration::from_secs(10);

struct Node {
    base: String,
    /// `http://…/metrics`.
    metrics: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// A node over `store` (a PostgreSQL URL, or None for its own SQLite) with its own data directory and
    /// the key files in `shared`.
    async fn start(data_dir: &Path, shared: &Path, store: Option<&str>) -> Node {
        let server = Server::bind(Self::config(data_dir, shared, store))
            .await
            .unwrap();
        let ca = std::fs::read(server.info().ca_cert.as_ref().unwrap()).unwrap();
        let http = common::https_client(&ca);
        let base = server.info().base_url.clone();
        let metrics = format!("http://{}/metrics", server.info().metrics_addr.unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Node {
            base,
            metrics,
            http,
            stop: Some(tx),
            task,
        }
    }

    /// Creates a principal through this node's admin API (201 asserted): the answer, its client id and secret.
    async fn create_principal(&self, admin: &str, body: Value) -> (Value, String, String) {
        let (st, created) = self
            .call(admin, Method::POST, "/admin/principals", Some(body))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{created}");
        let id = created["clientId"].as_str().unwrap().to_string();
        let secret = created["clientSecret"].as_str().unwrap().to_string();
        (created, id, secret)
    }

    fn config(data_dir: &Path, shared: &Path, store: Option<&str>) -> Config {
        let hash = hash_secret(ADMIN_SECRET).unwrap();
        let store_line = store
            .map(|s| format!("store = \"{s}\"\n"))
            .unwrap_or_default();
        let toml = format!(
            r#"
addr = "127.0.0.1:0"
metrics_addr = "127.0.0.1:0"
dev = true
data_dir = "{data}"
{store_line}kek_file = "{shared}/kek.key"
signing_key_file = "{shared}/signing.pk8"
issuer_host = "issuer.test"
resource_suffix = "vault.test"

[[clients]]
client_id = "{ADMIN_ID}"
secret_hashes = ["{hash}"]

[[assignments]]
principal = "{ADMIN_ID}"
role = "Key Vault Administrator"
"#,
            data = data_dir.display(),
            shared = shared.display(),
        );
        Config::from_toml(&toml).unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }

    /// A token, or the token endpoint's status.
    async fn token(&self, client_id: &str, secret: &str) -> Result<String, StatusCode> {
        let url = format!("{}/keyvault-rs/oauth2/v2.0/token", self.base);
        let (status, body) = common::request_token(
            &self.http,
            &url,
            client_id,
            secret,
            "https://vault.test/.default",
        )
        .await;
        if status == StatusCode::OK {
            Ok(body["access_token"].as_str().unwrap().to_string())
        } else {
            Err(status)
        }
    }

    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = self
            .http
            .request(method, common::api_url(&self.base, path, "7.5"))
            .bearer_auth(token);
        common::send_json(req, body).await
    }

    async fn admin_token(&self) -> String {
        self.token(ADMIN_ID, ADMIN_SECRET).await.unwrap()
    }
}

/// Waits until `check` holds (it is retried), or fails the test after [`PROPAGATION`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PROPAGATION;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {PROPAGATION:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster(test: &str) -> Option<(PgCluster, String)> {
    let cluster = pgtest::start_or_skip(test)?;
    let url = cluster.create_database("access").await.unwrap();
    Some((cluster, url))
}

/// Two nodes over the database at `url`, sharing a directory of key files: (the shared directory, the nodes'
/// data directories, node A, node B).
async fn two_nodes(url: &str) -> (tempfile::TempDir, [tempfile::TempDir; 2], Node, Node) {
    let shared = tempfile::tempdir().unwrap();
    let data = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = Node::start(data[0].path(), shared.path(), Some(url)).await;
    let b = Node::start(data[1].path(), shared.path(), Some(url)).await;
    (shared, data, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_through_one_node_are_in_force_on_the_other() {
    let Some((_cluster, url)) =
        cluster("admin_changes_through_one_node_are_in_force_on_the_other").await
    else {
        return;
    };
    let (shared, _data, a, b) = two_nodes(&url).await;
    let (admin_a, admin_b) = (a.admin_token().await, b.admin_token().await);
    let (st, _) = a
        .call(
            &admin_a,
            Method::PUT,
            "/secrets/app-db",
            Some(json!({"value": "v1"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    // A principal made through A, with Secrets User: B issues it tokens and lets it read, not write.
    let (_, id, secret) = a
        .create_principal(
            &admin_a,
            json!({"displayName": "app", "role": "Key Vault Secrets User"}),
        )
        .await;
    eventually("B issues tokens to a principal made through A", || async {
        b.token(&id, &secret).await.is_ok()
    })
    .await;
    let app = b.token(&id, &secret).await.unwrap();
    let (st, got) = b.call(&app, Method::GET, "/secrets/app-db", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["value"], "v1");
    let (st, err) = b
        .call(
            &app,
            Method::PUT,
            "/secrets/app-db",
            Some(json!({"value": "v2"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(err["error"]["innererror"]["code"], "ForbiddenByRbac");

    // A custom role defined and assigned through B (prefix scope) lets it write through A.
    let (st, role) = b
        .call(
            &admin_b,
            Method::PUT,
            "/admin/roles/App%20Writer",
            Some(json!({"permissions": ["get", "set"]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{role}");
    assert_eq!(role["managed"], true);
    let (st, assignment) = b
        .call(
            &admin_b,
            Method::POST,
            "/admin/roleAssignments",
            Some(json!({"principal": id, "role": "app writer", "scope": "/secrets/app-*"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{assignment}");
    assert_eq!(assignment["role"], "App Writer");
    eventually("A enforces an assignment made through B", || async {
        let (st, _) = a
            .call(
                &app,
                Method::PUT,
                "/secrets/app-db",
                Some(json!({"value": "v2"})),
            )
            .await;
        st == StatusCode::OK
    })
    .await;
    let (st, _) = a
        .call(
            &app,
            Method::PUT,
            "/secrets/other",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "outside the prefix");

    // The role cannot go while assigned, on either node.
    eventually("A lists the role defined through B", || async {
        let (_, roles) = a.call(&admin_a, Method::GET, "/admin/roles", None).await;
        roles["value"].as_array().is_some_and(|v| {
            v.iter()
                .any(|r| r["name"] == "App Writer" && r["managed"] == true)
        })
    })
    .await;
    let (st, _) = a
        .call(&admin_a, Method::DELETE, "/admin/roles/App%20Writer", None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);

    // Concurrent changes through both nodes: every one is kept (compare-and-set, no lost update).
    let mut made = Vec::new();
    let jobs = (0..8).map(|i| {
        let (node, token) = if i % 2 == 0 {
            (&a, &admin_a)
        } else {
            (&b, &admin_b)
        };
        let principal = format!("external-{i}");
        async move {
            let (st, v) = node
                .call(
                    token,
                    Method::POST,
                    "/admin/roleAssignments",
                    Some(json!({"principal": principal, "role": "Key Vault Reader"})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
            v["id"].as_str().unwrap().to_string()
        }
    });
    for id in futures_join_all(jobs).await {
        made.push(id);
    }
    for node in [&a, &b] {
        let token = node.admin_token().await;
        eventually(
            "both nodes list all eight concurrent assignments",
            || async {
                let (_, list) = node
                    .call(&token, Method::GET, "/admin/roleAssignments", None)
                    .await;
                let ids: Vec<&str> = list["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|a| a["id"].as_str())
                    .collect();
                made.iter().all(|m| ids.contains(&m.as_str()))
            },
        )
        .await;
    }

    // Removing the assignment through A, then the role through B; deleting the principal through B ends its
    // access through A too.
    let assignment_id = assignment["id"].as_str().unwrap();
    let (st, _) = a
        .call(
            &admin_a,
            Method::DELETE,
            &format!("/admin/roleAssignments/{assignment_id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    eventually(
        "B removes the role once A removed its assignment",
        || async {
            let (st, _) = b
                .call(&admin_b, Method::DELETE, "/admin/roles/App%20Writer", None)
                .await;
            st == StatusCode::OK
        },
    )
    .await;
    let (st, _) = b
        .call(
            &admin_b,
            Method::DELETE,
            &format!("/admin/principals/{id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    eventually(
        "A refuses the deleted principal's token (401: its client is gone) and secret",
        || async {
            let (st, _) = a.call(&app, Method::GET, "/secrets/app-db", None).await;
            st == StatusCode::UNAUTHORIZED && a.token(&id, &secret).await.is_err()
        },
    )
    .await;

    // Made through A and removed through B at once (before B's poll applied it): B reads the store first,
    // so it finds them (it answered 404 and the grant stayed in force).
    for _ in 0..3 {
        let (st, fresh) = a
            .call(
                &admin_a,
                Method::POST,
                "/admin/principals",
                Some(json!({"role": "Key Vault Secrets User"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{fresh}");
        let fresh_id = fresh["clientId"].as_str().unwrap();
        let (st, quick) = a
            .call(
                &admin_a,
                Method::POST,
                "/admin/roleAssignments",
                Some(json!({"principal": "ext-quick", "role": "Key Vault Reader"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{quick}");
        let quick_id = quick["id"].as_str().unwrap();
        let (st, body) = b
            .call(
                &admin_b,
                Method::DELETE,
                &format!("/admin/roleAssignments/{quick_id}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let (st, body) = b
            .call(
                &admin_b,
                Method::DELETE,
                &format!("/admin/principals/{fresh_id}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }

    // A new node reads it all from the store.
    let dir_c = tempfile::tempdir().unwrap();
    let c = Node::start(dir_c.path(), shared.path(), Some(&url)).await;
    let admin_c = c.admin_token().await;
    let (_, list) = c
        .call(&admin_c, Method::GET, "/admin/roleAssignments", None)
        .await;
    let managed = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["managed"] == true)
        .count();
    assert_eq!(managed, 8);
    assert!(c.token(&id, &secret).await.is_err());
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moving_to_a_shared_store_brings_its_access_file() {
    let Some((_cluster, url)) =
        cluster("a_node_moving_to_a_shared_store_brings_its_access_file").await
    else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // On its own SQLite store first: the admin API writes DATA_DIR/access.json.
    let alone = Node::start(dir.path(), shared.path(), None).await;
    let admin = alone.admin_token().await;
    let (_, id, secret) = alone
        .create_principal(&admin, json!({"role": "Key Vault Reader"}))
        .await;
    alone.stop().await;
    assert!(dir.path().join("access.json").exists());

    // The same data directory over PostgreSQL: imported; a second node sees it.
    let moved = Node::start(dir.path(), shared.path(), Some(&url)).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = Node::start(other_dir.path(), shared.path(), Some(&url)).await;
    for node in [&moved, &other] {
        let token = node.token(&id, &secret).await.expect("imported principal");
        let (st, _) = node.call(&token, Method::GET, "/secrets", None).await;
        assert_eq!(st, StatusCode::OK, "Reader lists");
        let (st, _) = node
            .call(
                &token,
                Method::PUT,
                "/secrets/x",
                Some(json!({"value": "x"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }
    moved.stop().await;
    other.stop().await;
}

/// Runs futures concurrently on this task (no extra crate).
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in results {
        out.push(r.expect("every future finished"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_encryption_key_does_not_start() {
    let Some((_cluster, url)) =
        cluster("a_node_with_another_key_encryption_key_does_not_start").await
    else {
        return;
    };
    let (shared, other_keys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(dir.path(), shared.path(), Some(&url)).await;
    // Its own kek_file, which does not exist: refused before it serves anything, and no key is made for a
    // store that already holds a key check.
    let other_dir = tempfile::tempdir().unwrap();
    let other_config = || Node::config(other_dir.path(), other_keys.path(), Some(&url));
    let err = Server::bind(other_config())
        .await
        .err()
        .expect("a node without its key file is refused")
        .to_string();
    assert!(err.contains("key-encryption key file"), "{err}");
    assert!(!other_keys.path().join("kek.key").exists());
    // Another key in its kek_file: refused before it serves anything.
    keyvault_server::crypto::FileKeyProvider::load_or_create(&other_keys.path().join("kek.key"))
        .unwrap();
    let err = Server::bind(other_config())
        .await
        .err()
        .expect("a node with another KEK is refused")
        .to_string();
    assert!(err.contains("cannot open what the other nodes"), "{err}");
    // The same key file: starts.
    let same_dir = tempfile::tempdir().unwrap();
    let same = Node::start(same_dir.path(), shared.path(), Some(&url)).await;
    same.stop().await;
    first.stop().await;
}

/// The answer to a GET of `url` with `token` (if any): status, `Retry-After`, body text.
async fn get_raw(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let mut req = http.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status(), retry_after, resp.text().await.unwrap())
}

/// One sample of a scrape of `/metrics`.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Finding 1 of the access-control audit: an assignment is deleted through A, and B cannot read the access
/// document right after (`LOCK TABLE kv_access`, standing for any fault that stops that read). B must not go
/// on authorizing with what it has: it turns to 503 (with `Retry-After`) for the vault API, the admin API and
/// the token endpoint, and fails `/readyz`, and never serves the revoked principal meanwhile; once it can read
/// the document again it serves, with the revocation in force. `/readyz` names no address, also while the
/// database is down (finding 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_read_the_access_document_refuses_until_it_can() {
    let Some((cluster, url)) =
        cluster("a_node_that_cannot_read_the_access_document_refuses_until_it_can").await
    else {
        return;
    };
    let (_shared, _data, a, b) = two_nodes(&url).await;
    let (admin_a, admin_b) = (a.admin_token().await, b.admin_token().await);
    let plain = reqwest::Client::new();
    let (st, _) = a
        .call(
            &admin_a,
            Method::PUT,
            "/secrets/pub",
            Some(json!({"value": "v"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (created, id, secret) = a
        .create_principal(
            &admin_a,
            json!({"displayName": "p", "role": "Key Vault Secrets User", "scope": "/secrets/pub"}),
        )
        .await;
    let assignment = created["assignments"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("B issues tokens to a principal made through A", || async {
        b.token(&id, &secret).await.is_ok()
    })
    .await;
    let p = b.token(&id, &secret).await.unwrap();
    let read_on_b = format!("{}/secrets/pub?api-version=7.5", b.base);
    let (st, _, _) = get_raw(&b.http, &read_on_b, Some(&p)).await;
    assert_eq!(st, StatusCode::OK);
    let readyz_b = format!("{}/readyz", b.base);
    assert_eq!(
        metric(&plain, &b.metrics, "keyvault_access_refresh_failures_total").await,
        Some(0.0)
    );

    // Revoked through A; then B cannot read the document.
    let (st, body) = a
        .call(
            &admin_a,
            Method::DELETE,
            &format!("/admin/roleAssignments/{assignment}"),
            None,
        )
        .await;
    assert!(st.is_success(), "{st} {body}");
    let lock = cluster
        .begin_holding("access", "LOCK TABLE kv_access IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    // B answers 200 (it had not seen the revocation) or 403 (it had), then refuses.
    let deadline = Instant::now() + keyvault_server::admin::UNCONFIRMED_LIMIT + PROPAGATION;
    let (retry_after, body) = loop {
        let (st, retry_after, body) = get_raw(&b.http, &read_on_b, Some(&p)).await;
        match st {
            StatusCode::OK | StatusCode::FORBIDDEN => {
                assert!(Instant::now() < deadline, "B never stopped authorizing")
            }
            StatusCode::SERVICE_UNAVAILABLE => break (retry_after, body),
            other => panic!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    // While it lasts: every request that depends on access control is refused, the revoked principal is
    // never served, /readyz fails without details, and the metrics show it.
    for _ in 0..3 {
        let (st, _, body) = get_raw(&b.http, &read_on_b, Some(&p)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    let (st, _, body) = get_raw(
        &b.http,
        &format!("{}/admin/principals", b.base),
        Some(&admin_b),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let resp = b
        .http
        .post(format!("{}/keyvault-rs/oauth2/v2.0/token", b.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("client_id", ADMIN_ID),
            ("client_secret", ADMIN_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://vault.test/.default"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let token_body: Value = resp.json().await.unwrap();
    assert_eq!(
        token_body["error"], "temporarily_unavailable",
        "{token_body}"
    );
    assert_eq!(token_body["error_codes"], json!([90033]), "{token_body}");
    let (st, _, _) = get_raw(
        &b.http,
        &format!("{}/keyvault-rs/discovery/v2.0/keys", b.base),
        None,
    )
    .await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the signing keys decide nothing about access"
    );
    let (st, _, body) = get_raw(&b.http, &readyz_b, None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "unavailable", "reason": "access control not confirmed current"})
    );
    let unconfirmed = metric(&plain, &b.metrics, "keyvault_access_unconfirmed_seconds")
        .await
        .unwrap();
    assert!(
        unconfirmed > keyvault_server::admin::UNCONFIRMED_LIMIT.as_secs_f64(),
        "{unconfirmed}"
    );
    assert!(
        metric(&plain, &b.metrics, "keyvault_access_refresh_failures_total")
            .await
            .unwrap()
            >= 1.0
    );

    // The reads waiting on the lock are ended by the database (statement_timeout), not abandoned there: at
    // most one per node waits at any time, however long the lock is held.
    let waiting = cluster
        .query_text(
            "SELECT count(*)::text FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%kv_access%'",
        )
        .await
        .unwrap();
    let waiting: u32 = waiting[0].as_deref().unwrap().parse().unwrap();
    assert!(waiting <= 2, "{waiting} sessions wait on the lock");

    // The document can be read again: B serves, with the revocation in force.
    lock.commit().await.unwrap();
    eventually("B serves again, with the revocation in force", || async {
        get_raw(&b.http, &read_on_b, Some(&p)).await.0 == StatusCode::FORBIDDEN
    })
    .await;
    let (st, _, _) = get_raw(&b.http, &readyz_b, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(b.token(ADMIN_ID, ADMIN_SECRET).await.is_ok());

    // The database down: /readyz says so, and nothing about where it is or why.
    cluster.stop("immediate").unwrap();
    let (st, _, body) = get_raw(&b.http, &readyz_b, None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "unavailable", "reason": "storage unavailable"})
    );
    assert!(!body.contains(&cluster.port().to_string()), "{body}");
}

/// The audit's F2 over PostgreSQL: a DBA (no key-encryption key) adds a principal with a hash of his own and
/// an Administrator assignment to `kv_access`, keeping the old tag, and bumps the revision. Neither node
/// applies it: the backdoor never gets a token, both nodes turn to 503 for the vault API and fail `/readyz`,
/// and count failed refreshes. The way back: an administrator (the last good state's) makes a change through
/// the admin API, which stores that state, with the change, tagged: both nodes serve again, and the backdoor
/// is still unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dba_edit_of_the_access_document_is_refused_by_every_node() {
    let Some((_cluster, url)) =
        cluster("a_dba_edit_of_the_access_document_is_refused_by_every_node").await
    else {
        return;
    };
    let (_shared, _data, a, b) = two_nodes(&url).await;
    let admin_a = a.admin_token().await;
    let (st, _) = a
        .call(
            &admin_a,
            Method::PUT,
            "/secrets/prod-db-password",
            Some(json!({"value": "S3CRET-PROD"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, app, app_secret) = a
        .create_principal(
            &admin_a,
            json!({"displayName": "app", "role": "Key Vault Reader"}),
        )
        .await;
    eventually("B knows the principal made through A", || async {
        b.token(&app, &app_secret).await.is_ok()
    })
    .await;

    // The DBA's edit: the old tag kept over a document with his principal and assignment.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = db
        .query_one("SELECT revision, doc FROM kv_access WHERE id = 1", &[])
        .await
        .unwrap();
    let (revision, stored): (i64, Vec<u8>) = (row.get(0), row.get(1));
    let mut wrapper: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(wrapper["format"], "keyvault-access/3");
    let mut doc: Value = serde_json::from_str(wrapper["document"].as_str().unwrap()).unwrap();
    doc["principals"].as_array_mut().unwrap().push(json!({
        "clientId": "dba-backdoor", "createdOn": 1,
        "secrets": [{"hash": hash_secret("dba-pass-123").unwrap(), "createdOn": 1}]
    }));
    doc["assignments"].as_array_mut().unwrap().push(json!({
        "id": "00000000-0000-0000-0000-000000000001", "principal": "dba-backdoor",
        "role": "Key Vault Administrator", "scope": "/"
    }));
    wrapper["document"] = Value::String(doc.to_string());
    db.execute(
        "UPDATE kv_access SET doc = $1, revision = revision + 1 WHERE id = 1",
        &[&serde_json::to_vec(&wrapper).unwrap()],
    )
    .await
    .unwrap();

    // Both nodes refuse it: 503 for the vault API, /readyz fails, failed refreshes counted; the backdoor
    // never gets a token meanwhile.
    let plain = reqwest::Client::new();
    for node in [&a, &b] {
        let read = format!("{}/secrets/prod-db-password?api-version=7.5", node.base);
        let deadline = Instant::now() + keyvault_server::admin::UNCONFIRMED_LIMIT + PROPAGATION;
        loop {
            assert!(
                node.token("dba-backdoor", "dba-pass-123").await.is_err(),
                "the backdoor got a token"
            );
            let (st, _, _) = get_raw(&node.http, &read, Some(&admin_a)).await;
            if st == StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            assert_eq!(st, StatusCode::OK, "the last good state until it refuses");
            assert!(Instant::now() < deadline, "the node never refused");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (st, _, _) = get_raw(&node.http, &format!("{}/readyz", node.base), None).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        let failures = metric(
            &plain,
            &node.metrics,
            "keyvault_access_refresh_failures_total",
        )
        .await
        .unwrap();
        assert!(failures >= 1.0, "{failures}");
    }

    // The way back: B's administrator (a new token, from B's last good state) makes a change through B.
    let admin_b = b.admin_token().await;
    let (st, body) = b
        .call(
            &admin_b,
            Method::PUT,
            "/admin/roles/Auditor",
            Some(json!({"permissions": ["list"]})),
        )
        .await;
    assert!(st.is_success(), "{st} {body}");
    let row = db
        .query_one("SELECT revision, doc FROM kv_access WHERE id = 1", &[])
        .await
        .unwrap();
    let (now, stored): (i64, Vec<u8>) = (row.get(0), row.get(1));
    assert!(now > revision + 1);
    let wrapper: Value = serde_json::from_slice(&stored).unwrap();
    let doc = wrapper["document"].as_str().unwrap();
    assert!(!doc.contains("dba-backdoor") && doc.contains(&app), "{doc}");
    for node in [&a, &b] {
        let read = format!("{}/secrets/prod-db-password?api-version=7.5", node.base);
        eventually("the node serves again", || async {
            get_raw(&node.http, &read, Some(&admin_a)).await.0 == StatusCode::OK
        })
        .await;
        assert!(node.token("dba-backdoor", "dba-pass-123").await.is_err());
        let token = node.token(&app, &app_secret).await.unwrap();
        let (st, _) = node.call(&token, Method::GET, "/secrets", None).await;
        assert_eq!(st, StatusCode::OK, "the Reader made before the edit lists");
    }
    a.stop().await;
    b.stop().await;
}
