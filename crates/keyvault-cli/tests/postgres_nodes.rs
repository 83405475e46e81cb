//! Several real `keyvault serve` nodes over one PostgreSQL database (a private cluster started by the test):
//! one node's writes are read, listed, deleted, recovered and restored through the other; concurrent sets,
//! deletes and recovers through both nodes leave every acknowledged version and one state per name; a killed
//! node hands the sweeper to the survivor; a database restart under load costs 503s, not data; `keyvault
//! rekey` re-seals every version under a new key-encryption key while a node serves, losing no update.
//!
//! Skipped (with a message) only where no PostgreSQL binaries exist.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyvault_server::store::pgtest::{self, PgCluster};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_keyvault");
const API: &str = "7.6";
const TENANT: &str = "contoso";
/// The address clients use for the vault (a load balancer in front of the nodes, in a real deployment):
/// every node issues tokens for it and accepts tokens for it.
const PUBLIC_HOST: &str = "vault.example.test";
const CLIENT_ID: &str = "app";
const CLIENT_SECRET: &str = "two-nodes-client-secret";

/// Everything the nodes share: the database, the key files, the TLS certificate and the client.
struct Shared {
    pg: PgCluster,
    dir: tempfile::TempDir,
    secret_hash: String,
    http: reqwest::Client,
    /// The key lines of the nodes' configuration (`kek_file`, `previous_kek_files`): a key rotation changes them.
    keys: Mutex<String>,
}

/// One running `keyvault serve` process.
struct Node {
    name: String,
    child: Child,
    base: String,
    /// Every line it logged so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Node {
    fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shared {
    fn new(pg: PgCluster) -> Shared {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        keyvault_server::tls::load_or_create_dev_pki(&pki).unwrap();
        let ca = std::fs::read(pki.join("ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let keys = Mutex::new(format!("kek_file = {:?}", dir.path().join("keys/kek.key")));
        Shared {
            pg,
            dir,
            secret_hash: keyvault_server::auth::hash_secret(CLIENT_SECRET).unwrap(),
            keys,
            http,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The configuration file of node `name`: its own data directory, everything else shared.
    fn config(&self, name: &str) -> PathBuf {
        let path = self.path(&format!("{name}.toml"));
        let p = |rel: &str| self.path(rel).display().to_string();
        std::fs::write(
            &path,
            format!(
                r#"
                addr = "127.0.0.1:0"
                data_dir = "{data}"
                vault_name = "shared"
                tenant_id = "{TENANT}"
                issuer_host = "{PUBLIC_HOST}"
                resource_suffix = "{PUBLIC_HOST}"
                retention_days = 7
                sweep_interval_secs = 1
                store = "{store}?application_name={name}"
                {keys}
                signing_key_file = "{signing}"
                [tls]
                cert = "{cert}"
                key = "{key}"
                [[clients]]
                client_id = "{CLIENT_ID}"
                secret_hashes = ["{hash}"]
                "#,
                data = p(name),
                store = self.pg.url(),
                keys = self.keys.lock().unwrap(),
                signing = p("keys/token-signing.pk8"),
                cert = p("pki/server.pem"),
                key = p("pki/server-key.pem"),
                hash = self.secret_hash,
            ),
        )
        .unwrap();
        path
    }

    /// Start node `name` and wait until it reports its address and is ready.
    async fn start(&self, name: &str) -> Node {
        let (child, log, rx) = self.launch(name);
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "node {name} did not start; database log:\n{}",
                    self.pg.log()
                )
            });
        let node = Node {
            name: name.to_string(),
            child,
            base: format!("https://{addr}"),
            log,
        };
        self.wait_ready(&node, Duration::from_secs(20)).await;
        node
    }

    /// Start node `name`'s process: it, every line it logs (as it logs them), and its address once it
    /// listens.
    fn launch(
        &self,
        name: &str,
    ) -> (
        Child,
        Arc<Mutex<Vec<String>>>,
        std::sync::mpsc::Receiver<String>,
    ) {
        let config = self.config(name);
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("KEYVAULT_LOG", "info")
            .env_remove("KEYVAULT_KEK")
            .env_remove("KEYVAULT_STORE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_name = name.to_string();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("KEYVAULT_TEST_LOGS").is_some() {
                    eprintln!("[{log_name}] {line}");
                }
                lines.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("addr=").nth(1) {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        (child, log, rx)
    }

    async fn ready(&self, node: &Node) -> Option<StatusCode> {
        let resp = self
            .http
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .ok()?;
        Some(resp.status())
    }

    async fn wait_ready(&self, node: &Node, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.ready(node).await != Some(StatusCode::OK) {
            assert!(
                Instant::now() < deadline,
                "node {} never became ready",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A token from `node`'s issuer (valid on every node).
    async fn token(&self, node: &Node) -> String {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", CLIENT_ID)
            .append_pair("client_secret", CLIENT_SECRET)
            .append_pair("scope", &format!("https://{PUBLIC_HOST}/.default"))
            .finish();
        let resp = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", node.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// The leader lock's holder (a node's name), waiting up to `limit` for it to be `want`.
    async fn wait_leader(&self, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let leader = self.pg.leader().await.ok().flatten();
            if leader.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the leader is {leader:?}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One API call; a transport error is `None`.
async fn try_call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<(StatusCode, Value)> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = if path.starts_with("https://") {
        path.to_string()
    } else {
        format!("{base}{path}{sep}api-version={API}")
    };
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status();
    let text = resp.text().await.ok()?;
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Some((status, json))
}

async fn call(
    s: &Shared,
    node: &Node,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    try_call(&s.http, &node.base, token, method, path, body)
        .await
        .unwrap_or_else(|| panic!("node {} did not answer {path}", node.name))
}

fn version_of(bundle: &Value) -> String {
    bundle["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// Every version id of a live secret, following nextLink pages.
async fn all_versions(s: &Shared, node: &Node, token: &str, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut next = format!("/secrets/{name}/versions?maxresults=7");
    loop {
        let (status, page) = call(s, node, token, Method::GET, &next, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for item in page["value"].as_array().unwrap() {
            out.insert(version_of(item));
        }
        match page["nextLink"].as_str() {
            Some(link) => next = link.to_string(),
            None => return out,
        }
    }
}

fn start_cluster(test: &str) -> Option<Shared> {
    let pg = pgtest::start_or_skip(test)?;
    Some(Shared::new(pg))
}

fn assert_key_vault_error(status: StatusCode, body: &Value, want: StatusCode) {
    assert_eq!(status, want, "{body}");
    assert!(
        body["error"]["code"].is_string(),
        "a Key Vault error body: {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "a Key Vault error body: {body}"
    );
}

fn keys_dir_exists(dir: &Path) -> bool {
    dir.join("kek.key").is_file() && dir.join("token-signing.pk8").is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_serve_one_vault() {
    let Some(s) = start_cluster("postgres_nodes::two_nodes_serve_one_vault") else {
        return;
    };
    let a = s.start("node-a").await;
    let b = s.start("node-b").await;
    assert!(
        keys_dir_exists(&s.path("keys")),
        "the nodes share one set of key files"
    );
    // The first node made the shared signing key and says that every node must use it; the second used it.
    let made =
        "created a new token signing key: every node over this store must sign with this same key";
    assert!(a.logged(made) && !b.logged(made));
    // Tokens from either node's issuer work on both.
    let ta = s.token(&a).await;
    let tb = s.token(&b).await;

    // Write through A, read and list through B.
    let marker = "plaintext-marker-5c1b0e";
    let (st, v1) = call(
        &s,
        &a,
        &tb,
        Method::PUT,
        "/secrets/Shared-One",
        Some(json!({"value": format!("{marker}-1")})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v1}");
    let (st, v2) = call(
        &s,
        &b,
        &ta,
        Method::PUT,
        "/secrets/shared-one",
        Some(json!({"value": "second", "contentType": "text/plain"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v2}");
    let (st, got) = call(&s, &b, &tb, Method::GET, "/secrets/shared-one", None).await;
    assert_eq!(st, StatusCode::OK, "{got}");
    assert_eq!(got["value"], "second");
    assert_eq!(version_of(&got), version_of(&v2));
    let (st, old) = call(
        &s,
        &b,
        &tb,
        Method::GET,
        &format!("/secrets/shared-one/{}", version_of(&v1)),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{old}");
    assert_eq!(old["value"], format!("{marker}-1"), "B opens what A sealed");
    let (st, list) = call(&s, &b, &tb, Method::GET, "/secrets", None).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    assert!(ids[0].ends_with("/secrets/shared-one"), "{list}");
    assert_eq!(
        all_versions(&s, &a, &ta, "shared-one").await,
        BTreeSet::from([version_of(&v1), version_of(&v2)])
    );

    // The database holds only sealed values.
    let sealed =
        s.pg.query_text("SELECT encode(sealed, 'escape') FROM kv_versions")
            .await
            .unwrap();
    assert_eq!(sealed.len(), 2);
    assert!(
        sealed
            .iter()
            .flatten()
            .all(|v| !v.contains(marker) && !v.contains("second"))
    );

    // Delete through B; A sees it deleted; recover through A; B sees it live.
    let (st, del) = call(&s, &b, &tb, Method::DELETE, "/secrets/shared-one", None).await;
    assert_eq!(st, StatusCode::OK, "{del}");
    let (st, body) = call(&s, &a, &ta, Method::GET, "/secrets/shared-one", None).await;
    assert_key_vault_error(st, &body, StatusCode::NOT_FOUND);
    let (st, body) = call(
        &s,
        &a,
        &ta,
        Method::PUT,
        "/secrets/shared-one",
        Some(json!({"value": "x"})),
    )
    .await;
    assert_key_vault_error(st, &body, StatusCode::CONFLICT);
    let (st, deleted) = call(&s, &a, &ta, Method::GET, "/deletedsecrets", None).await;
    assert_eq!(st, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["value"].as_array().unwrap().len(), 1, "{deleted}");
    let (st, rec) = call(
        &s,
        &a,
        &ta,
        Method::POST,
        "/deletedsecrets/shared-one/recover",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{rec}");
    let (st, got) = call(&s, &b, &tb, Method::GET, "/secrets/shared-one", None).await;
    assert_eq!(st, StatusCode::OK, "{got}");
    assert_eq!(got["value"], "second");

    // Backup through A, purge through B, restore through B, read through A (the backup key is shared).
    let (st, backup) = call(
        &s,
        &a,
        &ta,
        Method::POST,
        "/secrets/shared-one/backup",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{backup}");
    let (st, _) = call(&s, &a, &ta, Method::DELETE, "/secrets/shared-one", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = call(
        &s,
        &b,
        &tb,
        Method::DELETE,
        "/deletedsecrets/shared-one",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (st, restored) = call(
        &s,
        &b,
        &tb,
        Method::POST,
        "/secrets/restore",
        Some(json!({"value": backup["value"]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{restored}");
    let (st, got) = call(
        &s,
        &a,
        &ta,
        Method::GET,
        &format!("/secrets/shared-one/{}", version_of(&v1)),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{got}");
    assert_eq!(got["value"], format!("{marker}-1"));

    for node in [&a, &b] {
        assert_eq!(s.ready(node).await, Some(StatusCode::OK));
    }
}

/// Many concurrent sets, deletes and recovers of the same names through both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_through_both_nodes_keeps_every_acknowledged_version() {
    let Some(s) = start_cluster("postgres_nodes::racing_through_both_nodes") else {
        return;
    };
    let s = Arc::new(s);
    let nodes = Arc::new([s.start("node-a").await, s.start("node-b").await]);
    let token = Arc::new(s.token(&nodes[0]).await);
    const NAMES: [&str; 3] = ["race-one", "race-two", "Race-Three"];
    const TASKS: usize = 16;
    const OPS: usize = 24;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (s, nodes, token) = (s.clone(), nodes.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, String, String)> = Vec::new();
            for i in 0..OPS {
                let node = &nodes[(t + i) % 2];
                let name = NAMES[(t * 5 + i) % NAMES.len()];
                let key = name.to_ascii_lowercase();
                match (t + 2 * i) % 5 {
                    0..=2 => {
                        let value = format!("value-{t}-{i}");
                        let (st, body) = call(
                            &s,
                            node,
                            &token,
                            Method::PUT,
                            &format!("/secrets/{name}"),
                            Some(json!({ "value": value })),
                        )
                        .await;
                        match st {
                            StatusCode::OK => acked.push((key, version_of(&body), value)),
                            StatusCode::CONFLICT => {} // deleted at the moment
                            _ => panic!("set: {st} {body}"),
                        }
                    }
                    3 => {
                        let (st, body) = call(
                            &s,
                            node,
                            &token,
                            Method::DELETE,
                            &format!("/secrets/{name}"),
                            None,
                        )
                        .await;
                        assert!(
                            matches!(st, StatusCode::OK | StatusCode::NOT_FOUND),
                            "delete: {st} {body}"
                        );
                    }
                    _ => {
                        let (st, body) = call(
                            &s,
                            node,
                            &token,
                            Method::POST,
                            &format!("/deletedsecrets/{name}/recover"),
                            None,
                        )
                        .await;
                        assert!(
                            matches!(st, StatusCode::OK | StatusCode::NOT_FOUND),
                            "recover: {st} {body}"
                        );
                    }
                }
            }
            acked
        }));
    }
    let mut acked: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for t in tasks {
        for (key, version, value) in t.await.unwrap() {
            acked.entry(key).or_default().insert(version, value);
        }
    }
    assert_eq!(acked.len(), NAMES.len(), "every name got acknowledged sets");

    let (a, b) = (&nodes[0], &nodes[1]);
    for (key, versions) in &acked {
        // Exactly one state, and both nodes agree on it.
        let mut states = Vec::new();
        for node in [a, b] {
            let (live, _) = call(
                &s,
                node,
                &token,
                Method::GET,
                &format!("/secrets/{key}"),
                None,
            )
            .await;
            let (deleted, _) = call(
                &s,
                node,
                &token,
                Method::GET,
                &format!("/deletedsecrets/{key}"),
                None,
            )
            .await;
            let state = match (live, deleted) {
                (StatusCode::OK, StatusCode::NOT_FOUND) => "live",
                (StatusCode::NOT_FOUND, StatusCode::OK) => "deleted",
                other => panic!(
                    "{key} through {}: live/deleted answered {other:?}",
                    node.name
                ),
            };
            states.push(state);
        }
        assert_eq!(states[0], states[1], "{key}: the nodes disagree");
        if states[0] == "deleted" {
            let (st, body) = call(
                &s,
                b,
                &token,
                Method::POST,
                &format!("/deletedsecrets/{key}/recover"),
                None,
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{body}");
        }
        // Every acknowledged version is there (and nothing else), with its value.
        let stored = all_versions(&s, a, &token, key).await;
        let want: BTreeSet<String> = versions.keys().cloned().collect();
        assert_eq!(stored, want, "{key}: exactly the acknowledged versions");
        for (version, value) in versions.iter().take(5) {
            let (st, got) = call(
                &s,
                b,
                &token,
                Method::GET,
                &format!("/secrets/{key}/{version}"),
                None,
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{got}");
            assert_eq!(got["value"], value.as_str());
        }
    }
}

/// Kill a node under load, then restart the database under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_dies_and_the_database_restarts_under_load() {
    let Some(s) = start_cluster("postgres_nodes::failover") else {
        return;
    };
    let s = Arc::new(s);
    let a = s.start("node-a").await;
    s.wait_leader("node-a", Duration::from_secs(10)).await;
    let b = Arc::new(s.start("node-b").await);
    let token = Arc::new(s.token(&b).await);

    // Load: one writer per node, each recording the writes its node acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let b_ok = Arc::new(AtomicUsize::new(0));
    let b_unavailable = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for (who, base) in [("a", a.base.clone()), ("b", b.base.clone())] {
        let (s, token, stop, acked) = (s.clone(), token.clone(), stop.clone(), acked.clone());
        let (b_ok, b_unavailable) = (b_ok.clone(), b_unavailable.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("load-{who}-{i}");
                let value = format!("value-{who}-{i}");
                let answer = try_call(
                    &s.http,
                    &base,
                    &token,
                    Method::PUT,
                    &format!("/secrets/{name}"),
                    Some(json!({ "value": value })),
                )
                .await;
                match answer {
                    Some((StatusCode::OK, _)) => {
                        acked.lock().unwrap().push((name, value));
                        if who == "b" {
                            b_ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some((StatusCode::SERVICE_UNAVAILABLE, body)) => {
                        assert_key_vault_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &body,
                            StatusCode::SERVICE_UNAVAILABLE,
                        );
                        if who == "b" {
                            b_unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some((status, body)) => panic!("node {who}: unexpected {status} {body}"),
                    None if who == "a" => tokio::time::sleep(Duration::from_millis(50)).await, // killed
                    None => panic!("node b stopped answering"),
                }
            }
        }));
    }
    let wait_b_progress = |from: usize, limit: Duration| {
        let b_ok = b_ok.clone();
        async move {
            let deadline = Instant::now() + limit;
            while b_ok.load(Ordering::Relaxed) < from + 20 {
                assert!(Instant::now() < deadline, "node b made no progress");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_b_progress(0, Duration::from_secs(10)).await;

    // Kill node A (the leader): B keeps serving and takes over the sweeper.
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed_at = Instant::now();
    wait_b_progress(b_ok.load(Ordering::Relaxed), Duration::from_secs(10)).await;
    s.wait_leader("node-b", Duration::from_secs(10)).await;
    eprintln!(
        "the sweeper moved to node-b {:?} after node-a died",
        killed_at.elapsed()
    );

    // Restart the database (a crash: immediate stop) under load.
    s.pg.stop("immediate").unwrap();
    let down_at = Instant::now();
    let (st, body) = call(&s, &b, &token, Method::GET, "/secrets/load-b-1", None).await;
    assert_key_vault_error(st, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        down_at.elapsed() < Duration::from_secs(8),
        "503 took {:?}",
        down_at.elapsed()
    );
    assert_eq!(s.ready(&b).await, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(s.ready(&b).await, Some(StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.pg.start_again().unwrap();
    let up_at = Instant::now();
    wait_b_progress(b_ok.load(Ordering::Relaxed), Duration::from_secs(15)).await;
    eprintln!(
        "node-b served writes again {:?} after the database came back ({} answers were 503)",
        up_at.elapsed(),
        b_unavailable.load(Ordering::Relaxed)
    );
    s.wait_ready(&b, Duration::from_secs(10)).await;
    s.wait_leader("node-b", Duration::from_secs(10)).await;
    // Two failed probes (at least), one warning; and a line when the store came back.
    let warnings = b
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("/readyz: the store is not healthy"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", b.log.lock().unwrap());
    assert!(b.logged("/readyz: the store is healthy again"));

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // No acknowledged write is lost.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 60, "{} writes", acked.len());
    for (name, value) in &acked {
        let (st, got) = call(
            &s,
            &b,
            &token,
            Method::GET,
            &format!("/secrets/{name}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{name}: {got}");
        assert_eq!(got["value"], value.as_str(), "{name}");
    }
}

/// The venv of the end-to-end suite (`E2E_SETUP_ONLY=1 tests/e2e/run.sh` makes it; scripts/test.sh does so
/// before `cargo test`).
/// `keyvault rekey` with node `name`'s configuration: its exit code, stdout and stderr.
fn rekey(s: &Shared, name: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["rekey", "--config"])
        .arg(s.path(&format!("{name}.toml")))
        .args(extra)
        .env_remove("KEYVAULT_KEK")
        .env_remove("KEYVAULT_PREVIOUS_KEKS")
        .env_remove("KEYVAULT_STORE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A key rotation over PostgreSQL while a node serves: the node restarts with key B current and A previous,
/// and `keyvault rekey` re-seals every version (live and deleted) while attribute updates run through the
/// node. No update is lost (the re-seal replaces a row's value only if it still holds what was read, and
/// only the value), every value reads back through a node with B alone, and a node with A alone is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rekey_while_a_node_serves() {
    let Some(s) = start_cluster("postgres_nodes::rekey_while_a_node_serves") else {
        return;
    };
    let a = s.start("node-a").await;
    let token = s.token(&a).await;
    // 12 names of 10 versions, one name deleted.
    let mut versions: Vec<(String, String, String)> = Vec::new();
    for n in 0..12 {
        for i in 0..10 {
            let name = format!("rot-{n}");
            let value = format!("value-{n}-{i}");
            let (st, b) = call(
                &s,
                &a,
                &token,
                Method::PUT,
                &format!("/secrets/{name}"),
                Some(json!({"value": value})),
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{b}");
            versions.push((name, version_of(&b), value));
        }
    }
    let (st, _) = call(&s, &a, &token, Method::DELETE, "/secrets/rot-11", None).await;
    assert_eq!(st, StatusCode::OK);

    // Key B; node A restarts with B current and A previous.
    let key_a = s.path("keys/kek.key");
    let key_b = s.path("keys/kek-b.key");
    let made = Command::new(BIN)
        .args(["kek", "new"])
        .arg(&key_b)
        .output()
        .unwrap();
    assert!(made.status.success());
    *s.keys.lock().unwrap() = format!("kek_file = {key_b:?}\nprevious_kek_files = [{key_a:?}]");
    drop(a);
    let a = s.start("node-a").await;
    let token = s.token(&a).await;
    // Node M, misconfigured: it still has A current (B previous), so it seals new values under A while rekey
    // runs. It learns that rekey retired A within a poll and then refuses every write that seals (503).
    *s.keys.lock().unwrap() = format!("kek_file = {key_a:?}\nprevious_kek_files = [{key_b:?}]");
    let m = s.start("node-m").await;
    *s.keys.lock().unwrap() = format!("kek_file = {key_b:?}\nprevious_kek_files = [{key_a:?}]");
    let stop_m = Arc::new(AtomicBool::new(false));
    let writer_m = {
        let (http, base, token, stop) = (
            s.http.clone(),
            m.base.clone(),
            token.clone(),
            stop_m.clone(),
        );
        tokio::spawn(async move {
            let mut acked: Vec<(String, String, String)> = Vec::new();
            let mut refused = 0usize;
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let (name, value) = (format!("late-{}", k % 40), format!("late-value-{k}"));
                let (st, body) = try_call(
                    &http,
                    &base,
                    &token,
                    Method::PUT,
                    &format!("/secrets/{name}"),
                    Some(json!({"value": value})),
                )
                .await
                .unwrap();
                if st == StatusCode::OK {
                    assert_eq!(refused, 0, "a write was acknowledged after one was refused");
                    acked.push((name, version_of(&body), value));
                } else {
                    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                    assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
                    assert!(
                        body["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("retired"),
                        "{body}"
                    );
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (acked, refused)
        })
    };

    // Attribute updates through the node, as fast as it answers, while rekey runs (in small batches).
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let live: Vec<(String, String)> = versions
        .iter()
        .filter(|(name, _, _)| name != "rot-11")
        .map(|(name, version, _)| (name.clone(), version.clone()))
        .collect();
    let updater = {
        let (http, base, token, stop, live, acknowledged) = (
            s.http.clone(),
            a.base.clone(),
            token.clone(),
            stop.clone(),
            live.clone(),
            acknowledged.clone(),
        );
        tokio::spawn(async move {
            let mut last: BTreeMap<(String, String), usize> = BTreeMap::new();
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for (name, version) in &live {
                    round += 1;
                    let (st, body) = try_call(
                        &http,
                        &base,
                        &token,
                        Method::PATCH,
                        &format!("/secrets/{name}/{version}"),
                        Some(json!({"tags": {"round": round.to_string()}})),
                    )
                    .await
                    .unwrap();
                    assert_eq!(st, StatusCode::OK, "{body}");
                    last.insert((name.clone(), version.clone()), round);
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            }
            last
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s_ref = &s;
    let before_rekey = acknowledged.load(Ordering::Relaxed);
    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        rekey(s_ref, "node-a", &["--batch-size", "3", "-o", "json"])
    });
    let during_rekey = acknowledged.load(Ordering::Relaxed) - before_rekey;
    stop.store(true, Ordering::Relaxed);
    let last = updater.await.unwrap();
    assert!(
        during_rekey > 0,
        "no update was acknowledged while rekey ran"
    );
    // Node M's writes under A either landed ahead of the pass (re-sealed there) or were found by the final
    // pass after A was retired (re-sealed, exit code 6 naming them).
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: rekey exited {code:?}: {stdout}\n{stderr}"));
    match code {
        Some(0) => assert_eq!(report["late"], 0, "{report}"),
        Some(6) => {
            assert!(report["late"].as_u64().unwrap() > 0, "{report}");
            assert!(
                stderr.contains("written under a retired key during the rekey")
                    && stderr.contains("some node still had it current"),
                "{stderr}"
            );
        }
        other => panic!("rekey exited {other:?}: {stdout}\n{stderr}"),
    }
    // Rekey waited longer than a node's poll before its final pass: node M refuses to seal by now.
    let (st, body) = call(
        &s,
        &m,
        &token,
        Method::PUT,
        "/secrets/after-rekey",
        Some(json!({"value": "x"})),
    )
    .await;
    assert_key_vault_error(st, &body, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_m.store(true, Ordering::Relaxed);
    let (late_acked, late_refused) = writer_m.await.unwrap();
    assert!(
        !late_acked.is_empty(),
        "node M wrote nothing during the rekey"
    );
    assert!(late_refused > 0, "node M was never refused");
    drop(m);
    let id = |path: &Path| {
        keyvault_server::crypto::FileKeyProvider::load_existing(path)
            .unwrap()
            .kek_id()
            .to_string()
    };
    let (id_a, id_b) = (id(&key_a), id(&key_b));
    let total = 120 + late_acked.len() as u64;
    assert!(report["before"][&id_a].as_u64().unwrap() >= 120, "{report}");
    assert!(report["resealed"].as_u64().unwrap() >= 120, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["after"], json!({ id_b.as_str(): total }), "{report}");
    assert_eq!(report["key_check_after"], id_b.as_str());
    assert_eq!(report["retired"], json!([id_a.as_str()]), "{report}");
    assert_eq!(last.len(), live.len());

    // Node A with B alone: every value, every last acknowledged update, the deleted name recovers.
    *s.keys.lock().unwrap() = format!("kek_file = {key_b:?}");
    drop(a);
    let a = s.start("node-a").await;
    let token = s.token(&a).await;
    let (st, _) = call(
        &s,
        &a,
        &token,
        Method::POST,
        "/deletedsecrets/rot-11/recover",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, version, value) in &versions {
        let (st, got) = call(
            &s,
            &a,
            &token,
            Method::GET,
            &format!("/secrets/{name}/{version}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{got}");
        assert_eq!(got["value"], value.as_str());
        if let Some(round) = last.get(&(name.clone(), version.clone())) {
            assert_eq!(
                got["tags"]["round"],
                round.to_string(),
                "{name}/{version}: an update was lost"
            );
        }
    }
    // Every value node M acknowledged (sealed under A, re-sealed by rekey) reads with B alone.
    for (name, version, value) in &late_acked {
        let (st, got) = call(
            &s,
            &a,
            &token,
            Method::GET,
            &format!("/secrets/{name}/{version}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{name}/{version}: {got}");
        assert_eq!(got["value"], value.as_str());
    }
    drop(a);

    // A node with A current and B previous is refused: A was retired.
    *s.keys.lock().unwrap() = format!("kek_file = {key_a:?}\nprevious_kek_files = [{key_b:?}]");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config("node-d"))
        .env_remove("KEYVAULT_KEK")
        .env_remove("KEYVAULT_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "key-encryption key id {id_a} was retired by `keyvault rekey`; make key {id_b} current"
        )),
        "{stderr}"
    );

    // A node with A alone is refused.
    *s.keys.lock().unwrap() = format!("kek_file = {key_a:?}");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config("node-c"))
        .env_remove("KEYVAULT_KEK")
        .env_remove("KEYVAULT_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&id_a) && stderr.contains(&id_b), "{stderr}");
}

/// The e2e venv's Python (tests/e2e/.venv), or `None` — the test is skipped — where it is not prepared (never
/// in CI, which prepares it before `cargo test`).
fn e2e_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/.venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must prepare tests/e2e/.venv before cargo test"
    );
    eprintln!("skipped: no tests/e2e/.venv (run: E2E_SETUP_ONLY=1 tests/e2e/run.sh)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_python_sdk_sees_one_vault_through_either_node() {
    let Some(python) = e2e_python() else {
        return;
    };
    let Some(s) = start_cluster("postgres_nodes::the_official_python_sdk_sees_one_vault") else {
        return;
    };
    let a = s.start("node-a").await;
    let b = s.start("node-b").await;
    let ca = s.path("pki/ca.pem");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/python/two_nodes.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&ca)
        .args([TENANT, CLIENT_ID, &a.base, &b.base])
        .env("KV_CLIENT_SECRET", CLIENT_SECRET)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("SSL_CERT_FILE", &ca)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("two nodes: one vault"), "{stdout}");
}

/// Sends `child` SIGTERM and waits for it to exit, at most `limit`.
async fn stop_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {limit:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node whose start waits for the schema lock (another session holds it: a node migrating the store, an
/// operator's transaction) says so in its log, and stops when asked (SIGTERM), exit 0, without ever listening
/// — it waited, deaf to signals, until the lock was released, then listened a moment before stopping (a89-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waiting_for_the_schema_lock_says_so_and_stops_when_asked() {
    let Some(s) = start_cluster("postgres_nodes::a_start_waiting_for_the_schema_lock") else {
        return;
    };
    let lock = keyvault_server::store::postgres::MIGRATION_LOCK_KEY;
    let holder =
        s.pg.begin_holding("postgres", &format!("SELECT pg_advisory_xact_lock({lock})"))
            .await
            .unwrap();
    let (mut child, log, listening) = s.launch("waiting");
    let logged = |text: &str| log.lock().unwrap().iter().any(|l| l.contains(text));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logged("waiting for the schema lock") {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stop_within(&mut child, Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        logged("stopped while starting"),
        "{:?}",
        log.lock().unwrap()
    );
    assert!(listening.try_recv().is_err(), "it listened");
    drop(holder);
}

/// A start stopped while a statement of its migration waits (a lock another session holds; the migration's
/// timeouts are off) leaves no session behind: the database notices the client gone and ends it, so it does
/// not go on waiting, and holding the schema lock, after the node exited (a91-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_stopped_inside_its_migration_leaves_no_session_behind() {
    let Some(s) = start_cluster("postgres_nodes::a_start_stopped_inside_its_migration") else {
        return;
    };
    drop(s.start("first").await);
    let holder =
        s.pg.begin_holding(
            "postgres",
            "LOCK TABLE kv_schema_migrations IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let waiting = "SELECT count(*)::text FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE '%kv_schema_migrations%' AND pid <> pg_backend_pid()";
    let count = async || -> i64 {
        s.pg.query_text(waiting).await.unwrap()[0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (mut child, log, _) = s.launch("stopped");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count().await == 0 {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_within(&mut child, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the stopped start's session still waits in the database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(holder);
}

/// The official `azure-keyvault-secrets` test suite (tests/e2e/sdk-suite, live mode) against two dev nodes over
/// one PostgreSQL store, behind the runner's balancer, which hands their connections out in turn (a test's token
/// from one node, its requests to the other; consecutive tests on different nodes): the SDK's own tests of
/// every operation pass on this store, and across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdks_own_test_suite_passes_on_two_postgresql_nodes() {
    let Some(python) = e2e_python() else {
        return;
    };
    let Some(s) = start_cluster("postgres_nodes::the_python_sdks_own_test_suite_on_two_nodes")
    else {
        return;
    };
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/sdk-suite/run.py");
    let out = tokio::process::Command::new(python)
        .arg(runner)
        .args(["--bin", BIN])
        .arg(format!("--serve-arg=--store={}", s.pg.url()))
        .args(["--nodes", "2"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the suite failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .rfind(|l| l.contains(" passed"))
        .unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("failed"),
        "{stdout}"
    );
    // Both nodes served (the runner fails the run otherwise; its count is printed last).
    let served = stdout.lines().last().unwrap_or_default();
    assert!(served.starts_with("connections per node: ["), "{stdout}");
    // The vault's writes went to PostgreSQL.
    let versions: i64 =
        s.pg.query_text("SELECT count(*)::text FROM kv_versions")
            .await
            .unwrap()[0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
    assert!(versions >= 50, "{versions} versions in PostgreSQL");
}
