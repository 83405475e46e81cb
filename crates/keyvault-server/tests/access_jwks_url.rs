//! Trusted external issuers whose JWKS comes from a URL (`[[trusted_issuers]] jwks_url`): a test identity
//! provider signs tokens and publishes its keys from a small HTTP(S) endpoint on 127.0.0.1, which counts the
//! requests it gets and can be made to fail. Shown: a token of the issuer works and maps to its assignments;
//! after a key rotation at the provider a token with the new `kid` works at once (the unknown `kid` makes the
//! vault fetch the keys again) and tokens of the withdrawn key, even one accepted before, are refused; when
//! the endpoint fails (error status, garbage, no usable key, gone) the last good keys stay; an issuer that is
//! down at start is retried; a flood of unknown `kid`s causes a single fetch; an https endpoint with a
//! private CA works with `ca_file` and not without it; a redirect or a document over 1 MiB gives no keys.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use keyvault_server::auth::{Scope, SigningKey, TokenIssuer, unix_now};
use keyvault_server::config::TrustedIssuerConfig;
use keyvault_server::local::{LocalVault, LocalVaultOptions};
use reqwest::StatusCode;

mod common;

const ISS: &str = "https://idp.example.com/corp/v2.0";
const AUD: &str = "api://keyvault";
const ALICE: &str = "alice@corp";

/// What the JWKS endpoint answers.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// The current JWKS.
    Serve,
    /// 503.
    Unavailable,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a JWKS without keys.
    NoKeys,
    /// 302 to `/real`, which serves the current JWKS.
    Redirect,
    /// 200 with the current JWKS padded with whitespace past 1 MiB (a valid document, but too large).
    Oversized,
}

struct EndpointState {
    jwks: Mutex<String>,
    mode: Mutex<Mode>,
    hits: AtomicUsize,
}

/// The identity provider's JWKS endpoint.
struct Endpoint {
    state: Arc<EndpointState>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

async fn jwks_handler(State(state): State<Arc<EndpointState>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.hits.fetch_add(1, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap();
    let jwks = state.jwks.lock().unwrap().clone();
    match mode {
        Mode::Serve => (StatusCode::OK, jwks).into_response(),
        Mode::Unavailable => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Garbage => (StatusCode::OK, "<html>maintenance</html>").into_response(),
        Mode::NoKeys => (StatusCode::OK, r#"{"keys":[]}"#).into_response(),
        Mode::Redirect => (StatusCode::FOUND, [("location", "/real")]).into_response(),
        Mode::Oversized => {
            (StatusCode::OK, format!("{jwks}{}", " ".repeat(1 << 21))).into_response()
        }
    }
}

async fn real_handler(State(state): State<Arc<EndpointState>>) -> (StatusCode, String) {
    (StatusCode::OK, state.jwks.lock().unwrap().clone())
}

impl Endpoint {
    fn router(state: &Arc<EndpointState>) -> Router {
        Router::new()
            .route("/jwks", get(jwks_handler))
            .route("/real", get(real_handler))
            .with_state(state.clone())
    }

    fn state(jwks: String, mode: Mode) -> Arc<EndpointState> {
        Arc::new(EndpointState {
            jwks: Mutex::new(jwks),
            mode: Mutex::new(mode),
            hits: AtomicUsize::new(0),
        })
    }

    /// Plain http on 127.0.0.1.
    async fn http(jwks: String, mode: Mode) -> Endpoint {
        let state = Self::state(jwks, mode);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let app = Self::router(&state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint { state, url, task }
    }

    /// https on 127.0.0.1 with a certificate of a private CA (the dev PKI made in `dir`); returns the CA file.
    async fn https(jwks: String, dir: &std::path::Path) -> (Endpoint, PathBuf) {
        let state = Self::state(jwks, Mode::Serve);
        let (base, ca, task) = common::serve_https(Self::router(&state), dir).await;
        let url = format!("{base}/jwks");
        (Endpoint { state, url, task }, ca)
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn publish(&self, jwks: String) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Waits until the endpoint has had at least `n` requests.
    async fn wait_for_hits(&self, n: usize) {
        for _ in 0..150 {
            if self.hits() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the endpoint got {} requests, expected {n}", self.hits());
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The test identity provider: one signing key (ES256, with its `kid`).
struct Idp(TokenIssuer);

impl Idp {
    fn new() -> Idp {
        let key = Arc::new(SigningKey::generate().unwrap());
        Idp(TokenIssuer::new(key, ISS.into(), "corp".into(), 3600))
    }

    fn jwks(&self) -> String {
        self.0.jwks().to_string()
    }

    /// A new token (each one differs: a fresh `jti`).
    fn token(&self, sub: &str) -> String {
        self.0.issue(sub, AUD, unix_now()).unwrap().0
    }
}

struct Vault {
    lv: LocalVault,
    http: reqwest::Client,
}

impl Vault {
    async fn start(url: &str, ca_file: Option<PathBuf>, refresh_secs: Option<u64>) -> Vault {
        let lv = LocalVault::start_with(LocalVaultOptions {
            trusted_issuers: vec![TrustedIssuerConfig {
                issuer: ISS.into(),
                audience: AUD.into(),
                jwks_url: Some(url.into()),
                ca_file,
                jwks_refresh_secs: refresh_secs,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let http = common::vault_client(&lv);
        Vault { lv, http }
    }

    /// Lists secrets with this token.
    async fn get(&self, token: &str) -> StatusCode {
        common::list_status(&self.http, self.lv.vault_url(), token).await
    }

    fn assign_alice(&self) {
        common::assign(&self.lv, ALICE, "Key Vault Reader", Scope::Vault);
    }
}

#[tokio::test]
async fn a_url_issuer_works_and_a_key_rotation_is_picked_up_at_once() {
    let old = Idp::new();
    let endpoint = Endpoint::http(old.jwks(), Mode::Serve).await;
    let v = Vault::start(&endpoint.url, None, None).await;
    assert_eq!(endpoint.hits(), 1, "the keys are fetched at start");

    // Authenticated, but no assignment: 403; assigned by the `sub` claim: 200.
    let accepted_before = old.token(ALICE);
    assert_eq!(v.get(&accepted_before).await, StatusCode::FORBIDDEN);
    v.assign_alice();
    assert_eq!(v.get(&accepted_before).await, StatusCode::OK);
    assert_eq!(endpoint.hits(), 1, "known keys need no fetch");

    // The provider rotates: its JWKS now has only the new key. The first token with the new kid works.
    let new = Idp::new();
    endpoint.publish(new.jwks());
    assert_eq!(v.get(&new.token(ALICE)).await, StatusCode::OK);
    assert_eq!(endpoint.hits(), 2, "one fetch, caused by the unknown kid");
    assert_eq!(v.get(&new.token(ALICE)).await, StatusCode::OK);

    // The withdrawn key: a new token of it, and the one accepted (and cached) before, are refused; asking
    // again so soon fetches nothing.
    assert_eq!(v.get(&old.token(ALICE)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(v.get(&accepted_before).await, StatusCode::UNAUTHORIZED);
    assert_eq!(endpoint.hits(), 2);

    // A token of a key the provider never published stays refused.
    assert_eq!(
        v.get(&Idp::new().token(ALICE)).await,
        StatusCode::UNAUTHORIZED
    );
    v.lv.shutdown().await;
}

#[tokio::test]
async fn when_the_jwks_endpoint_fails_the_last_good_keys_stay() {
    let idp = Idp::new();
    let mut endpoint = Endpoint::http(idp.jwks(), Mode::Serve).await;
    // Refreshed every second, so the failures below are met by the periodic refresh.
    let v = Vault::start(&endpoint.url, None, Some(1)).await;
    v.assign_alice();
    assert_eq!(v.get(&idp.token(ALICE)).await, StatusCode::OK);
    endpoint.wait_for_hits(2).await;

    for mode in [Mode::Unavailable, Mode::Garbage, Mode::NoKeys] {
        endpoint.set_mode(mode);
        // Two failed fetches at least (the first may have started before the switch).
        let seen = endpoint.hits();
        endpoint.wait_for_hits(seen + 2).await;
        assert_eq!(v.get(&idp.token(ALICE)).await, StatusCode::OK, "{mode:?}");
        assert_eq!(
            v.get(&Idp::new().token(ALICE)).await,
            StatusCode::UNAUTHORIZED,
            "{mode:?}"
        );
    }

    // The endpoint goes away altogether (connections refused).
    endpoint.task.abort();
    let _ = (&mut endpoint.task).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(v.get(&idp.token(ALICE)).await, StatusCode::OK);
    v.lv.shutdown().await;
}

#[tokio::test]
async fn an_issuer_down_at_start_is_retried() {
    let idp = Idp::new();
    let endpoint = Endpoint::http(idp.jwks(), Mode::Unavailable).await;
    // The vault starts anyway; the issuer's tokens are refused while it has no keys.
    let v = Vault::start(&endpoint.url, None, None).await;
    v.assign_alice();
    assert_eq!(v.get(&idp.token(ALICE)).await, StatusCode::UNAUTHORIZED);
    endpoint.set_mode(Mode::Serve);
    // Retried with backoff (1 s, 2 s, …): the tokens work within seconds.
    assert_eq!(
        common::status_within_10s(StatusCode::OK, async || v.get(&idp.token(ALICE)).await).await,
        StatusCode::OK
    );
    v.lv.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_one_fetch() {
    let idp = Idp::new();
    let endpoint = Endpoint::http(idp.jwks(), Mode::Serve).await;
    let v = Arc::new(Vault::start(&endpoint.url, None, None).await);
    v.assign_alice();
    assert_eq!(endpoint.hits(), 1);

    // 40 tokens at once, each signed by a key (and kid) the provider never published, then 20 more in turn.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let v = v.clone();
        let token = Idp::new().token(ALICE);
        tasks.push(tokio::spawn(async move { v.get(&token).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..20 {
        assert_eq!(
            v.get(&Idp::new().token(ALICE)).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        endpoint.hits(),
        2,
        "the start, and one fetch for the unknown kids"
    );
    assert_eq!(v.get(&idp.token(ALICE)).await, StatusCode::OK);
    assert_eq!(endpoint.hits(), 2);
}

#[tokio::test]
async fn an_https_jwks_url_of_a_private_ca_needs_its_ca_file() {
    let idp = Idp::new();
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, ca_file) = Endpoint::https(idp.jwks(), dir.path()).await;

    let with_ca = Vault::start(&endpoint.url, Some(ca_file), None).await;
    with_ca.assign_alice();
    assert_eq!(with_ca.get(&idp.token(ALICE)).await, StatusCode::OK);
    assert_eq!(endpoint.hits(), 1);

    // Trusting the platform's roots only, the vault cannot fetch the keys (the TLS handshake fails before
    // any request): the issuer's tokens are refused, the vault runs.
    let without_ca = Vault::start(&endpoint.url, None, None).await;
    without_ca.assign_alice();
    assert_eq!(
        without_ca.get(&idp.token(ALICE)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(endpoint.hits(), 1);
    with_ca.lv.shutdown().await;
    without_ca.lv.shutdown().await;
}

#[tokio::test]
async fn a_redirect_or_an_oversized_jwks_gives_no_keys() {
    let idp = Idp::new();
    for mode in [Mode::Redirect, Mode::Oversized] {
        let endpoint = Endpoint::http(idp.jwks(), mode).await;
        let v = Vault::start(&endpoint.url, None, None).await;
        v.assign_alice();
        assert_eq!(endpoint.hits(), 1, "{mode:?}: fetched once at start");
        assert_eq!(
            v.get(&idp.token(ALICE)).await,
            StatusCode::UNAUTHORIZED,
            "{mode:?}: the document is refused, so the issuer has no keys"
        );
        // The same endpoint serving normally: the issuer's tokens work (the failure was the mode).
        endpoint.set_mode(Mode::Serve);
        let fixed = Vault::start(&endpoint.url, None, None).await;
        fixed.assign_alice();
        assert_eq!(
            fixed.get(&idp.token(ALICE)).await,
            StatusCode::OK,
            "{mode:?}"
        );
        v.lv.shutdown().await;
        fixed.lv.shutdown().await;
    }
}
