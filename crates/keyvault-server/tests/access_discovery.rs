//! Trusted external issuers found by OpenID Connect discovery (`[[trusted_issuers]] discovery = true`): a test
//! identity provider on 127.0.0.1 serves, over https with a certificate of a private CA, its provider
//! configuration at `{issuer}/.well-known/openid-configuration` and its JWKS at the document's `jwks_uri`; it
//! signs tokens with `iss` = that issuer. Shown: a token of the issuer works (with the issuer written with or
//! without a terminating slash); a key rotation works at once (the unknown `kid` makes the vault read the
//! document and the keys again) and a provider that moves its keys to another `jwks_uri` with another key is
//! followed by the periodic refresh; a document naming another issuer, a `jwks_uri` that is not https, a
//! document without `jwks_uri` or over its size limit, and a provider whose CA the vault does not trust give
//! no keys, with errors that name the issuer's document URL; the last good keys stay while the document is
//! wrong.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use keyvault_server::auth::{Scope, SigningKey, TokenIssuer, unix_now};
use keyvault_server::config::TrustedIssuerConfig;
use keyvault_server::local::{LocalVault, LocalVaultOptions};
use reqwest::StatusCode;

mod common;

const AUD: &str = "api://keyvault";
const ALICE: &str = "alice@corp";
const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// What the provider serves: a body per path, and the requests per path.
#[derive(Default)]
struct Files {
    bodies: Mutex<HashMap<String, String>>,
    hits: Mutex<HashMap<String, usize>>,
}

async fn serve_file(State(files): State<Arc<Files>>, uri: Uri) -> (StatusCode, String) {
    let path = uri.path().to_string();
    *files.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    match files.bodies.lock().unwrap().get(&path) {
        Some(body) => (StatusCode::OK, body.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// A small web server on 127.0.0.1 serving [`Files`]: https (a private CA's certificate) or plain http.
struct Provider {
    files: Arc<Files>,
    /// `https://127.0.0.1:port` (or `http://…`).
    base: String,
    /// The CA file trusting the https server's certificate.
    ca_file: Option<PathBuf>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Provider {
    async fn https() -> Provider {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(Files::default());
        let app = Router::new().fallback(serve_file).with_state(files.clone());
        let (base, ca_file, task) = common::serve_https(app, dir.path()).await;
        Provider {
            files,
            base,
            ca_file: Some(ca_file),
            task,
            _dir: dir,
        }
    }

    async fn http() -> Provider {
        let files = Arc::new(Files::default());
        let app = Router::new().fallback(serve_file).with_state(files.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Provider {
            files,
            base,
            ca_file: None,
            task,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn put(&self, path: &str, body: String) {
        self.files
            .bodies
            .lock()
            .unwrap()
            .insert(path.to_string(), body);
    }

    /// An issuer at `/corp` with its document (naming `/corp/keys`) and one key published there: the issuer,
    /// the document's path and the key.
    fn corp(&self) -> (String, String, Key) {
        let issuer = format!("{}/corp", self.base);
        let document = format!("/corp{WELL_KNOWN}");
        let key = Key::new(&issuer);
        self.put_document(&document, &issuer, &format!("{}/corp/keys", self.base));
        self.put("/corp/keys", key.jwks());
        (issuer, document, key)
    }

    /// Serves a provider configuration for `issuer` (the `issuer` member) at `path`.
    fn put_document(&self, path: &str, issuer: &str, jwks_uri: &str) {
        let document = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "authorization_endpoint": format!("{}/authorize", self.base),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        });
        self.put(path, document.to_string());
    }

    fn hits(&self, path: &str) -> usize {
        self.files
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `path` has had at least `n` requests.
    async fn wait_for_hits(&self, path: &str, n: usize) {
        for _ in 0..150 {
            if self.hits(path) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} got {} requests, expected {n}", self.hits(path));
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A signing key of the identity provider: ES256 with its `kid`, tokens with `iss` = `issuer`.
struct Key(TokenIssuer);

impl Key {
    fn new(issuer: &str) -> Key {
        let key = Arc::new(SigningKey::generate().unwrap());
        Key(TokenIssuer::new(key, issuer.into(), "corp".into(), 3600))
    }

    fn jwks(&self) -> String {
        self.0.jwks().to_string()
    }

    fn token(&self, sub: &str) -> String {
        self.0.issue(sub, AUD, unix_now()).unwrap().0
    }
}

fn discovery_config(
    issuer: &str,
    ca_file: Option<PathBuf>,
    refresh_secs: Option<u64>,
) -> TrustedIssuerConfig {
    TrustedIssuerConfig {
        issuer: issuer.into(),
        audience: AUD.into(),
        discovery: true,
        ca_file,
        jwks_refresh_secs: refresh_secs,
        ..Default::default()
    }
}

struct Vault {
    lv: LocalVault,
    http: reqwest::Client,
}

impl Vault {
    async fn start(config: TrustedIssuerConfig) -> Vault {
        let lv = LocalVault::start_with(LocalVaultOptions {
            trusted_issuers: vec![config],
            ..Default::default()
        })
        .await
        .unwrap();
        common::assign(&lv, ALICE, "Key Vault Reader", Scope::Vault);
        let http = common::vault_client(&lv);
        Vault { lv, http }
    }

    /// Lists secrets with this token.
    async fn get(&self, token: &str) -> StatusCode {
        common::list_status(&self.http, self.lv.vault_url(), token).await
    }
}

/// The error of one fetch of the issuer configured by `config`, made outside any vault.
async fn fetch_error(config: &TrustedIssuerConfig) -> String {
    let issuer = config.load().unwrap();
    let e = issuer.refresh().await.unwrap_err();
    assert!(!issuer.has_keys(), "{e}");
    e
}

#[tokio::test]
async fn discovery_finds_the_keys_and_a_rotation_works_at_once() {
    let idp = Provider::https().await;
    let (issuer, document, old) = idp.corp();

    let v = Vault::start(discovery_config(&issuer, idp.ca_file.clone(), None)).await;
    assert_eq!(
        (idp.hits(&document), idp.hits("/corp/keys")),
        (1, 1),
        "the document, then the keys, at start"
    );
    let accepted_before = old.token(ALICE);
    assert_eq!(v.get(&accepted_before).await, StatusCode::OK);
    // A token whose `iss` is the issuer with a terminating slash is not this issuer's (exact match).
    let elsewhere = Key(TokenIssuer::new(
        Arc::new(SigningKey::generate().unwrap()),
        format!("{issuer}/"),
        "corp".into(),
        3600,
    ));
    assert_eq!(
        v.get(&elsewhere.token(ALICE)).await,
        StatusCode::UNAUTHORIZED
    );

    // The provider rotates: its JWKS has only the new key. The unknown kid makes the vault read the document
    // and the keys again, and the token works at once.
    let new = Key::new(&issuer);
    idp.put("/corp/keys", new.jwks());
    assert_eq!(v.get(&new.token(ALICE)).await, StatusCode::OK);
    assert_eq!((idp.hits(&document), idp.hits("/corp/keys")), (2, 2));
    // The withdrawn key's tokens, even the one accepted before, are refused.
    assert_eq!(v.get(&old.token(ALICE)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(v.get(&accepted_before).await, StatusCode::UNAUTHORIZED);
    v.lv.shutdown().await;

    // Outside a vault: the issuer tells where its keys came from.
    let t = discovery_config(&issuer, idp.ca_file.clone(), None)
        .load()
        .unwrap();
    assert_eq!(
        t.discovery_url(),
        Some(format!("{}{document}", idp.base).as_str())
    );
    assert_eq!(t.jwks_url(), None);
    assert!(t.refresh().await.unwrap());
    assert_eq!(
        t.jwks_url().as_deref(),
        Some(format!("{}/corp/keys", idp.base).as_str())
    );
}

#[tokio::test]
async fn an_issuer_with_a_terminating_slash_has_its_document_under_it() {
    let idp = Provider::https().await;
    // `…/corp/`: the document is at `…/corp/.well-known/…` (Discovery 1.0 §4), and names `…/corp/` exactly.
    let issuer = format!("{}/corp/", idp.base);
    let key = Key::new(&issuer);
    idp.put_document(
        &format!("/corp{WELL_KNOWN}"),
        &issuer,
        &format!("{}/corp/keys", idp.base),
    );
    idp.put("/corp/keys", key.jwks());
    let v = Vault::start(discovery_config(&issuer, idp.ca_file.clone(), None)).await;
    assert_eq!(v.get(&key.token(ALICE)).await, StatusCode::OK);
    assert_eq!(idp.hits(&format!("/corp{WELL_KNOWN}")), 1);
    v.lv.shutdown().await;

    // Configured without the slash, the same document names another issuer (`…/corp/` is not `…/corp`).
    let e = fetch_error(&discovery_config(
        issuer.trim_end_matches('/'),
        idp.ca_file.clone(),
        None,
    ))
    .await;
    assert!(
        e.contains(&format!("{}/corp{WELL_KNOWN}", idp.base))
            && e.contains(&format!("is for the issuer \"{issuer}\""))
            && e.contains("equal exactly"),
        "{e}"
    );
}

#[tokio::test]
async fn a_document_naming_another_issuer_gives_no_keys_and_the_last_good_keys_stay() {
    let idp = Provider::https().await;
    let issuer = format!("{}/corp", idp.base);
    let document = format!("/corp{WELL_KNOWN}");
    let jwks_uri = format!("{}/corp/keys", idp.base);
    let key = Key::new(&issuer);
    idp.put("/corp/keys", key.jwks());

    // At start: the vault starts, the document is read, the keys are not; the issuer's tokens get 401.
    idp.put_document(&document, "https://evil.example.com/corp", &jwks_uri);
    let v = Vault::start(discovery_config(&issuer, idp.ca_file.clone(), None)).await;
    assert_eq!((idp.hits(&document), idp.hits("/corp/keys")), (1, 0));
    assert_eq!(v.get(&key.token(ALICE)).await, StatusCode::UNAUTHORIZED);
    let e = fetch_error(&discovery_config(&issuer, idp.ca_file.clone(), None)).await;
    assert!(
        e.contains(&format!("{}{document}", idp.base))
            && e.contains("\"https://evil.example.com/corp\"")
            && e.contains(&format!("not \"{issuer}\"")),
        "{e}"
    );
    v.lv.shutdown().await;

    // At a refresh: a vault with good keys meets a wrong document (every second). The keys it has stay; a
    // rotation is not picked up until the document is right again.
    idp.put_document(&document, &issuer, &jwks_uri);
    let v = Vault::start(discovery_config(&issuer, idp.ca_file.clone(), Some(1))).await;
    assert_eq!(v.get(&key.token(ALICE)).await, StatusCode::OK);
    idp.put_document(&document, &format!("{issuer}/other"), &jwks_uri);
    let seen = idp.hits(&document);
    idp.wait_for_hits(&document, seen + 2).await;
    let keys_seen = idp.hits("/corp/keys");
    let new = Key::new(&issuer);
    idp.put("/corp/keys", new.jwks());
    assert_eq!(v.get(&key.token(ALICE)).await, StatusCode::OK);
    assert_eq!(v.get(&new.token(ALICE)).await, StatusCode::UNAUTHORIZED);
    idp.wait_for_hits(&document, idp.hits(&document) + 1).await;
    assert_eq!(
        idp.hits("/corp/keys"),
        keys_seen,
        "no keys are fetched on a wrong document's word"
    );
    idp.put_document(&document, &issuer, &jwks_uri);
    let token = new.token(ALICE);
    assert_eq!(
        common::status_within_10s(StatusCode::OK, async || v.get(&token).await).await,
        StatusCode::OK
    );
    v.lv.shutdown().await;
}

#[tokio::test]
async fn a_provider_moving_its_keys_is_followed_by_the_periodic_refresh() {
    let idp = Provider::https().await;
    let (issuer, document, old) = idp.corp();
    let v = Vault::start(discovery_config(&issuer, idp.ca_file.clone(), Some(1))).await;
    let accepted_before = old.token(ALICE);
    assert_eq!(v.get(&accepted_before).await, StatusCode::OK);

    // The provider publishes a new key set at a new URL and names it in its document; the old URL keeps
    // serving the old key. Two fetches of the new URL: the first one's keys are installed.
    let new = Key::new(&issuer);
    idp.put("/v2/keys", new.jwks());
    idp.put_document(&document, &issuer, &format!("{}/v2/keys", idp.base));
    idp.wait_for_hits("/v2/keys", 2).await;
    assert_eq!(v.get(&new.token(ALICE)).await, StatusCode::OK);
    assert_eq!(v.get(&accepted_before).await, StatusCode::UNAUTHORIZED);
    assert_eq!(v.get(&old.token(ALICE)).await, StatusCode::UNAUTHORIZED);
    v.lv.shutdown().await;
}

#[tokio::test]
async fn a_jwks_uri_that_is_not_https_is_refused() {
    let idp = Provider::https().await;
    // A plain-http endpoint that does serve the keys: the vault must not fetch them from it.
    let plain = Provider::http().await;
    let issuer = format!("{}/corp", idp.base);
    let document = format!("/corp{WELL_KNOWN}");
    let key = Key::new(&issuer);
    plain.put("/keys", key.jwks());
    idp.put("/corp/keys", key.jwks());
    let config = discovery_config(&issuer, idp.ca_file.clone(), None);

    for (jwks_uri, want) in [
        (
            format!("{}/keys", plain.base),
            "jwks_uri must be an https:// URL",
        ),
        (
            "http://idp.example.com/keys".to_string(),
            "jwks_uri must be an https:// URL",
        ),
        (
            "ftp://idp.example.com/keys".to_string(),
            "jwks_uri must be an https:// URL",
        ),
        ("keys.json".to_string(), "jwks_uri is not a URL"),
    ] {
        idp.put_document(&document, &issuer, &jwks_uri);
        let v = Vault::start(config.clone()).await;
        assert_eq!(
            v.get(&key.token(ALICE)).await,
            StatusCode::UNAUTHORIZED,
            "{jwks_uri}"
        );
        v.lv.shutdown().await;
        let e = fetch_error(&config).await;
        assert!(
            e.contains(want) && e.contains(&format!("{}{document}", idp.base)),
            "{jwks_uri}: {e}"
        );
    }
    assert_eq!(plain.hits("/keys"), 0);
    assert_eq!(idp.hits("/corp/keys"), 0);

    // The same document with an https jwks_uri: the keys work (the refusals were the jwks_uri's).
    idp.put_document(&document, &issuer, &format!("{}/corp/keys", idp.base));
    let v = Vault::start(config).await;
    assert_eq!(v.get(&key.token(ALICE)).await, StatusCode::OK);
    v.lv.shutdown().await;
}

#[tokio::test]
async fn unusable_documents_and_an_untrusted_provider_give_no_keys() {
    let idp = Provider::https().await;
    let issuer = format!("{}/corp", idp.base);
    let document = format!("/corp{WELL_KNOWN}");
    let doc_url = format!("{}{document}", idp.base);
    let key = Key::new(&issuer);
    idp.put("/corp/keys", key.jwks());
    let config = discovery_config(&issuer, idp.ca_file.clone(), None);

    let no_jwks_uri = serde_json::json!({ "issuer": issuer }).to_string();
    let no_issuer =
        serde_json::json!({ "jwks_uri": format!("{}/corp/keys", idp.base) }).to_string();
    let padded = format!(
        "{}{}",
        serde_json::json!({ "issuer": issuer, "jwks_uri": format!("{}/corp/keys", idp.base) }),
        " ".repeat(300 * 1024)
    );
    for (body, want) in [
        (no_jwks_uri, "has no jwks_uri".to_string()),
        (no_issuer, "has no issuer".to_string()),
        (
            "<html>sign in</html>".to_string(),
            "not an OpenID Provider configuration document".to_string(),
        ),
        (padded, format!("larger than {} bytes", 256 * 1024)),
    ] {
        idp.put(&document, body);
        let e = fetch_error(&config).await;
        assert!(e.contains(&want) && e.contains(&doc_url), "{e}");
    }
    assert_eq!(idp.hits("/corp/keys"), 0);

    // No document at all: the status, and the URL asked.
    let e = fetch_error(&discovery_config(
        &format!("{}/nowhere", idp.base),
        idp.ca_file.clone(),
        None,
    ))
    .await;
    assert!(
        e.contains("404") && e.contains(&format!("{}/nowhere{WELL_KNOWN}", idp.base)),
        "{e}"
    );

    // A good document, but the vault trusts the platform's roots only: the TLS handshake fails.
    idp.put_document(&document, &issuer, &format!("{}/corp/keys", idp.base));
    let e = fetch_error(&discovery_config(&issuer, None, None)).await;
    assert!(
        e.contains("cannot fetch the discovery document") && e.contains(&doc_url),
        "{e}"
    );
    let untrusted = Vault::start(discovery_config(&issuer, None, None)).await;
    assert_eq!(
        untrusted.get(&key.token(ALICE)).await,
        StatusCode::UNAUTHORIZED
    );
    untrusted.lv.shutdown().await;
    let trusted = Vault::start(config).await;
    assert_eq!(trusted.get(&key.token(ALICE)).await, StatusCode::OK);
    trusted.lv.shutdown().await;
}
