//! Trusted external OIDC issuers: access tokens signed by another identity provider (Entra, Keycloak, a CI
//! system's OIDC tokens…) are accepted when their `iss` is exactly a configured issuer, their `aud` is the
//! configured audience, and their signature verifies with one of the issuer's keys (its JWKS).
//!
//! - Algorithms: ES256 (EC P-256 keys) and RS256 (RSA keys) only. The algorithm a key verifies is fixed by
//!   its type, and must be the token header's `alg` (no algorithm confusion; `none` and HMAC are refused).
//! - `kid`: a token with a `kid` is verified only with the key of that id; a token without one only when the
//!   issuer has exactly one key of its algorithm.
//! - `exp` is required, `nbf` honoured if present (with the same clock skew as our own tokens).
//! - The principal is the value of the configured claim (default `sub`): role assignments name it.
//!
//! Where the keys come from:
//!
//! - a JWKS file ([`TrustedIssuer::load`]), read once at start; or
//! - a JWKS URL ([`TrustedIssuer::from_url`]): `https` only (plain `http` only to 127.0.0.1, `localhost` or
//!   `::1`), trusting the platform's root certificates or only those of a configured CA file; no redirects;
//!   5 s to connect, 10 s in all, at most [`MAX_JWKS_BYTES`]; or
//! - OpenID Connect discovery ([`TrustedIssuer::from_discovery`]): each fetch first reads the issuer's
//!   provider configuration, `{issuer}/.well-known/openid-configuration` ([`discovery_url`]; at most
//!   [`MAX_DISCOVERY_BYTES`], same client rules), requires its `issuer` to be the configured issuer exactly
//!   (Discovery 1.0 §4.3), and then fetches the JWKS from its `jwks_uri` (the URL rules of a JWKS URL; and
//!   `https` whenever the issuer is). The document is read again at every fetch below, so a provider that
//!   moves its keys is followed.
//!
//! Keys that are fetched (a JWKS URL, or discovery): the server fetches them at start (a failure is logged
//! and the server starts anyway: that issuer's tokens get 401 until a fetch succeeds, retried with backoff
//! from 1 s up to 5 min), then every `jwks_refresh_secs` ([`refresh_loop`]). A token whose `kid` the issuer
//! does not know triggers a fetch right away and is verified again after it (at most one such fetch per
//! [`KID_MISS_REFRESH_INTERVAL`] per issuer, so a flood of made-up `kid`s cannot hammer the identity
//! provider), so a key rotation at the provider works at once. A failed or unusable fetch (with discovery:
//! of either document, or a document for another issuer) keeps the last good keys. A new key set replaces
//! the old one atomically; when it drops a key, the token verifier forgets the tokens it had cached (so
//! tokens signed by a withdrawn key stop working at once, not when they expire). Fetch errors name the URL
//! (its query redacted), never a token.
//!
//! [`refresh_loop`]: TrustedIssuer::refresh_loop

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

use super::AuthError;
use super::token::Principal;

/// How often a JWKS URL is fetched again unless configured otherwise (`jwks_refresh_secs`).
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 3600;
/// The longest `jwks_refresh_secs` (a week).
pub const MAX_JWKS_REFRESH_SECS: u64 = 7 * 24 * 3600;
/// The largest JWKS document accepted from a URL.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The largest OpenID Provider configuration document accepted (discovery). Real ones are a few KiB.
pub const MAX_DISCOVERY_BYTES: usize = 256 * 1024;
/// Where a provider configuration document is, under its issuer (OpenID Connect Discovery 1.0 §4).
pub const WELL_KNOWN_PATH: &str = "/.well-known/openid-configuration";
/// At most one fetch per issuer in this interval is caused by tokens with an unknown `kid`.
pub const KID_MISS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after failed fetches: 1 s, 2 s, 4 s… up to this (and never later than the refresh period).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Where to fetch an issuer's JWKS, and how often.
#[derive(Clone, Debug)]
pub struct RemoteJwks {
    /// `https://…` (or `http://` to a loopback address).
    pub url: String,
    /// PEM certificates: the only roots trusted for this URL. `None`: the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Time between fetches.
    pub refresh: Duration,
}

/// One trusted issuer and its keys. Clones share the keys (and their refreshing).
#[derive(Clone)]
pub struct TrustedIssuer {
    inner: Arc<Inner>,
}

type Hook = Box<dyn Fn() + Send + Sync>;

struct Inner {
    issuer: String,
    audience: String,
    principal_claim: String,
    /// The current key set, replaced as a whole.
    keys: RwLock<Arc<Vec<IssuerKey>>>,
    /// Bumped each time the key set changes.
    generation: AtomicU64,
    /// Called after a new key set dropped a key (the verifier's cache clears itself).
    on_keys_removed: Mutex<Vec<Hook>>,
    remote: Option<Remote>,
}

struct IssuerKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// The JWK as JSON: what tells a key set's changes.
    jwk: String,
}

struct Remote {
    source: Source,
    client: reqwest::Client,
    refresh: Duration,
    /// Held during a fetch (one at a time); the time of the last fetch an unknown `kid` caused.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// Where fetched keys come from.
enum Source {
    /// A configured JWKS URL.
    Jwks(reqwest::Url),
    /// OpenID Connect discovery: the `jwks_uri` of the provider configuration at `document`, read at each fetch.
    Discovery {
        document: reqwest::Url,
        /// The `jwks_uri` of the last fetch that gave keys.
        jwks_uri: RwLock<Option<reqwest::Url>>,
    },
}

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("principal_claim", &self.inner.principal_claim)
            .field("discovery_url", &self.discovery_url())
            .field("jwks_url", &self.jwks_url().as_deref().map(redact_query))
            .field("kids", &self.kids())
            .finish()
    }
}

impl TrustedIssuer {
    fn build(
        issuer: &str,
        audience: &str,
        principal_claim: Option<&str>,
        keys: Vec<IssuerKey>,
        remote: Option<Remote>,
    ) -> Result<TrustedIssuer, String> {
        if issuer.trim().is_empty() || audience.trim().is_empty() {
            return Err("a trusted issuer needs an issuer and an audience".into());
        }
        let principal_claim = principal_claim
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or("sub")
            .to_string();
        Ok(TrustedIssuer {
            inner: Arc::new(Inner {
                issuer: issuer.to_string(),
                audience: audience.to_string(),
                principal_claim,
                keys: RwLock::new(Arc::new(keys)),
                generation: AtomicU64::new(0),
                on_keys_removed: Mutex::new(Vec::new()),
                remote,
            }),
        })
    }

    /// An issuer from its JWKS document (`{"keys":[…]}`). Keys other than EC P-256 and RSA signature keys are
    /// skipped; at least one must remain.
    pub fn from_jwks(
        issuer: &str,
        audience: &str,
        jwks: &str,
        principal_claim: Option<&str>,
    ) -> Result<TrustedIssuer, String> {
        let keys = parse_jwks(jwks)?;
        Self::build(issuer, audience, principal_claim, keys, None)
    }

    /// [`from_jwks`](Self::from_jwks) reading the JWKS from a file.
    pub fn load(
        issuer: &str,
        audience: &str,
        jwks_file: &Path,
        principal_claim: Option<&str>,
    ) -> Result<TrustedIssuer, String> {
        let text = std::fs::read_to_string(jwks_file)
            .map_err(|e| format!("cannot read {}: {e}", jwks_file.display()))?;
        Self::from_jwks(issuer, audience, &text, principal_claim)
            .map_err(|e| format!("{}: {e}", jwks_file.display()))
    }

    /// An issuer whose JWKS is fetched from a URL. It has no keys until [`refresh`](Self::refresh) (or
    /// [`refresh_loop`](Self::refresh_loop), or a token with an unknown `kid`) fetches them.
    pub fn from_url(
        issuer: &str,
        audience: &str,
        source: RemoteJwks,
        principal_claim: Option<&str>,
    ) -> Result<TrustedIssuer, String> {
        let url = check_jwks_url(&source.url)?;
        if source.refresh.is_zero() {
            return Err("the JWKS refresh period must be at least one second".into());
        }
        let client = http_client(source.ca_pem.as_deref(), url.scheme() == "https")?;
        let remote = Remote {
            source: Source::Jwks(url),
            client,
            refresh: source.refresh,
            fetching: tokio::sync::Mutex::new(None),
        };
        Self::build(issuer, audience, principal_claim, Vec::new(), Some(remote))
    }

    /// An issuer whose JWKS URL comes from its OpenID Provider configuration ([`discovery_url`]), read
    /// again at every fetch. `ca_pem`: the only roots trusted for both documents (`None`: the platform's).
    /// Like [`from_url`](Self::from_url), it has no keys until a fetch.
    pub fn from_discovery(
        issuer: &str,
        audience: &str,
        ca_pem: Option<&[u8]>,
        refresh: Duration,
        principal_claim: Option<&str>,
    ) -> Result<TrustedIssuer, String> {
        let document = discovery_url(issuer)?;
        if refresh.is_zero() {
            return Err("the JWKS refresh period must be at least one second".into());
        }
        let client = http_client(ca_pem, document.scheme() == "https")?;
        let remote = Remote {
            source: Source::Discovery {
                document,
                jwks_uri: RwLock::new(None),
            },
            client,
            refresh,
            fetching: tokio::sync::Mutex::new(None),
        };
        Self::build(issuer, audience, principal_claim, Vec::new(), Some(remote))
    }

    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Whether the keys are fetched (a JWKS URL or discovery), rather than read from a file.
    pub fn fetches_keys(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// The JWKS URL of an issuer whose keys are fetched: the configured one, or with discovery the
    /// `jwks_uri` of the last fetch that gave keys (`None` before it).
    pub fn jwks_url(&self) -> Option<String> {
        match &self.inner.remote.as_ref()?.source {
            Source::Jwks(url) => Some(url.to_string()),
            Source::Discovery { jwks_uri, .. } => jwks_uri
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|u| u.to_string()),
        }
    }

    /// The provider configuration's URL, for an issuer whose keys are found by discovery.
    pub fn discovery_url(&self) -> Option<&str> {
        match &self.inner.remote.as_ref()?.source {
            Source::Jwks(_) => None,
            Source::Discovery { document, .. } => Some(document.as_str()),
        }
    }

    /// The `kid`s of the current keys (`None` for a key without one).
    pub fn kids(&self) -> Vec<Option<String>> {
        self.snapshot().iter().map(|k| k.kid.clone()).collect()
    }

    /// Whether the issuer has keys (an issuer fetched from a URL has none before its first good fetch).
    pub fn has_keys(&self) -> bool {
        !self.snapshot().is_empty()
    }

    fn snapshot(&self) -> Arc<Vec<IssuerKey>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts the key set's changes.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Calls `hook` whenever a new key set drops a key.
    pub(crate) fn on_keys_removed(&self, hook: Hook) {
        self.inner
            .on_keys_removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    /// Replaces the key set; tells whether it changed.
    fn install(&self, keys: Vec<IssuerKey>) -> bool {
        let new = Arc::new(keys);
        let old = std::mem::replace(
            &mut *self
                .inner
                .keys
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            new.clone(),
        );
        let within = |a: &[IssuerKey], b: &[IssuerKey]| {
            a.iter().all(|k| b.iter().any(|other| other.jwk == k.jwk))
        };
        let removed = !within(&old, &new);
        let changed = removed || !within(&new, &old);
        if changed {
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        if removed {
            let hooks = self
                .inner
                .on_keys_removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for hook in hooks.iter() {
                hook();
            }
        }
        changed
    }

    /// Fetches the JWKS from the issuer's URL now and, if it is usable, makes it the key set. Returns whether
    /// the key set changed. On an error the keys stay as they were. (Fetches of one issuer take turns.)
    pub async fn refresh(&self) -> Result<bool, String> {
        let Some(remote) = &self.inner.remote else {
            return Err("this issuer's keys come from a file".into());
        };
        let _turn = remote.fetching.lock().await;
        self.fetch_and_install(remote).await
    }

    /// [`refresh`](Self::refresh), logging a failure; tells whether the issuer has keys afterwards.
    pub async fn refresh_logged(&self) -> bool {
        if let Err(e) = self.refresh().await {
            self.log_failure(&e);
        }
        self.has_keys()
    }

    /// Fetches the keys (and, with discovery, the provider configuration first) and installs them, all within
    /// [`FETCH_TIMEOUT`]: a request waiting on an unknown `kid` waits at most that long, however many
    /// documents the fetch reads.
    async fn fetch_and_install(&self, remote: &Remote) -> Result<bool, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_and_install_within(remote))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "fetching the keys took longer than {} s",
                    FETCH_TIMEOUT.as_secs()
                ))
            })
    }

    async fn fetch_and_install_within(&self, remote: &Remote) -> Result<bool, String> {
        let url = match &remote.source {
            Source::Jwks(url) => url.clone(),
            Source::Discovery { document, .. } => {
                let text = fetch(
                    &remote.client,
                    document,
                    "application/json",
                    MAX_DISCOVERY_BYTES,
                    "the discovery document",
                )
                .await?;
                jwks_uri_of(&self.inner.issuer, document, &text)?
            }
        };
        let text = fetch(
            &remote.client,
            &url,
            "application/jwk-set+json, application/json",
            MAX_JWKS_BYTES,
            "the JWKS",
        )
        .await?;
        let keys = parse_jwks(&text).map_err(|e| format!("{}: {e}", redact_query(url.as_str())))?;
        let count = keys.len();
        let changed = self.install(keys);
        if let Source::Discovery { jwks_uri, .. } = &remote.source {
            let mut known = jwks_uri.write().unwrap_or_else(PoisonError::into_inner);
            if known.as_ref() != Some(&url) {
                tracing::info!(issuer = %self.inner.issuer, jwks_url = %redact_query(url.as_str()),
                    "trusted issuer: JWKS URL discovered");
                *known = Some(url);
            }
        }
        if changed {
            tracing::info!(issuer = %self.inner.issuer, keys = count,
                "trusted issuer: signing keys fetched");
        } else {
            tracing::debug!(issuer = %self.inner.issuer, keys = count,
                "trusted issuer: signing keys unchanged");
        }
        Ok(changed)
    }

    fn log_failure(&self, error: &str) {
        if self.has_keys() {
            tracing::warn!(issuer = %self.inner.issuer, %error,
                "cannot refresh a trusted issuer's JWKS; keeping its last good keys");
        } else {
            tracing::error!(issuer = %self.inner.issuer, %error,
                "cannot fetch a trusted issuer's JWKS; its tokens are refused until a fetch succeeds");
        }
    }

    /// Keeps the keys of an issuer with a JWKS URL fresh until `stop` changes (or its sender is dropped):
    /// a fetch every refresh period, and after a failure retries at 1 s, 2 s, 4 s… (at most 5 min, at most
    /// the refresh period). Returns at once for an issuer whose keys come from a file.
    pub async fn refresh_loop(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(remote) = &self.inner.remote else {
            return;
        };
        let mut failures = u32::from(!self.has_keys());
        loop {
            let wait = match failures {
                0 => remote.refresh,
                n => retry_delay(n).min(remote.refresh),
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let result = tokio::select! {
                _ = stop.changed() => return,
                result = self.refresh() => result,
            };
            match result {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(issuer = %self.inner.issuer, "trusted issuer: JWKS fetched again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.log_failure(&e);
                }
            }
        }
    }

    /// Whether this token header names a `kid` (of an algorithm we accept) that none of the keys has.
    pub(crate) fn is_unknown_kid(&self, header: &Header) -> bool {
        let Some(kid) = &header.kid else {
            return false;
        };
        matches!(header.alg, Algorithm::ES256 | Algorithm::RS256)
            && !self
                .snapshot()
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid.as_str()) && k.alg == header.alg)
    }

    /// For a token with an unknown `kid`: fetches the JWKS, unless a fetch for that reason happened less than
    /// [`KID_MISS_REFRESH_INTERVAL`] ago (or the issuer's keys come from a file). Waits for a fetch already
    /// under way. Returns whether the keys changed meanwhile (so verifying again may succeed).
    pub(crate) async fn refresh_for_unknown_kid(&self) -> bool {
        let Some(remote) = &self.inner.remote else {
            return false;
        };
        let seen = self.generation();
        let mut last = remote.fetching.lock().await;
        if self.generation() != seen {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < KID_MISS_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch_and_install(remote).await {
            Ok(changed) => changed,
            Err(e) => {
                self.log_failure(&e);
                false
            }
        }
    }

    /// Verifies a token whose (unverified) `iss` is this issuer's. Returns the principal, `nbf` and `exp`.
    pub(crate) fn verify(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<(Principal, i64, i64), AuthError> {
        let inner = &*self.inner;
        // Its audience is the issuer's configured one, not this vault's resource: the 401's AKV10022 text
        // (which names the vault's resource as the one expected) would mislead, so it gets another reason.
        let claims = self
            .verify_claims(token, header, &inner.audience)
            .map_err(|e| match e {
                AuthError::InvalidToken("wrong audience") => {
                    AuthError::InvalidToken("wrong audience for its issuer")
                }
                other => other,
            })?;
        let (nbf, exp) = token_times(&claims)?;
        let id = claims[inner.principal_claim.as_str()]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(AuthError::InvalidToken("missing claim"))?
            .into();
        let tenant = claims["tid"].as_str().unwrap_or_default().into();
        Ok((Principal { id, tenant }, nbf, exp))
    }

    /// Checks a token's signature (with the key its header selects), `iss` (this issuer) and `aud` (`audience`:
    /// the issuer's own for access tokens, a federated credential's for client assertions). Returns its claims;
    /// the times are the caller's to check ([`token_times`]).
    pub(crate) fn verify_claims(
        &self,
        token: &str,
        header: &Header,
        audience: &str,
    ) -> Result<serde_json::Value, AuthError> {
        let alg = header.alg;
        if alg != Algorithm::ES256 && alg != Algorithm::RS256 {
            return Err(AuthError::InvalidToken("unsupported signing algorithm"));
        }
        let keys = self.snapshot();
        let key = match &header.kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()) && k.alg == alg),
            None => {
                let mut of_alg = keys.iter().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
        .ok_or(AuthError::InvalidToken("unknown signing key"))?;
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[audience]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| super::token::map_jwt_error(e.kind()))?;
        Ok(data.claims)
    }
}

/// A verified token's `nbf` (very early when absent) and `exp` (required).
pub(crate) fn token_times(claims: &serde_json::Value) -> Result<(i64, i64), AuthError> {
    // A NumericDate may have a fraction (RFC 7519 §2; MSAL writes one): a fractional `exp` counts from its
    // whole second, never later than it says. Beyond the range of seconds it is not a date.
    let exp = match &claims["exp"] {
        v if v.is_i64() => v.as_i64(),
        v => (v.as_f64())
            .filter(|f| f.is_finite() && f.abs() < 9.0e18)
            .map(|f| f.floor() as i64),
    }
    .ok_or(AuthError::InvalidToken("missing claim"))?;
    // `nbf` is optional, but when present it counts, whatever JSON number it is (RFC 7519's NumericDate may
    // have a fraction): a fractional, exponent-form or out-of-range `nbf` is read as the second it falls in
    // (rounded up), and one that is not a number at all makes the token invalid.
    let nbf = match &claims["nbf"] {
        serde_json::Value::Null => i64::MIN / 2,
        v => numeric_date_ceil(v).ok_or(AuthError::InvalidToken("bad nbf"))?,
    };
    Ok((nbf, exp))
}

/// A JSON number as whole seconds, rounded up (saturating); not a number: `None`.
fn numeric_date_ceil(v: &serde_json::Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    // `as` saturates at i64's bounds (and NaN cannot come from JSON).
    Some(f.ceil() as i64)
}

/// A JWKS document, each key read on its own: one of a kind the JWK parser does not model (an encryption key
/// such as `ECDH-ES`, a curve or algorithm it lacks) is skipped, not a reason to refuse the others.
#[derive(serde::Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document: EC P-256 (ES256) and RSA (RS256) signature keys; at least one. Others
/// are skipped (logged at debug; a signature key that does not load, at warn).
fn parse_jwks(jwks: &str) -> Result<Vec<IssuerKey>, String> {
    let set: RawJwkSet =
        serde_json::from_str(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!(kid = ?kid, error = %e, "a JWKS key of a kind not used here is skipped");
                continue;
            }
        };
        let jwk = &jwk;
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        if let Some(declared) = jwk.common.key_algorithm {
            let matches = matches!(
                (declared, alg),
                (jsonwebtoken::jwk::KeyAlgorithm::ES256, Algorithm::ES256)
                    | (jsonwebtoken::jwk::KeyAlgorithm::RS256, Algorithm::RS256)
            );
            if !matches {
                continue;
            }
        }
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(kid = ?kid, error = %e, "a JWKS signature key that does not load is skipped");
                continue;
            }
        };
        keys.push(IssuerKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
            jwk: serde_json::to_string(jwk).unwrap_or_default(),
        });
    }
    if keys.is_empty() {
        return Err("the JWKS has no ES256 (EC P-256) or RS256 (RSA) signature key".into());
    }
    Ok(keys)
}

/// A URL for logs and `Debug`: its query (which may carry a signature or a key) replaced by `?…`, and any
/// user information in it (`user:password@`) by `…@`.
pub fn redact_query(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?…"),
        None => (url, ""),
    };
    // User information (`user:password@`) in the authority goes too: a URL we refuse may still carry it.
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    format!("{base}{query}")
}

/// A JWKS URL we are willing to fetch: `https`, or `http` to a loopback address; no credentials in it.
pub fn check_jwks_url(url: &str) -> Result<reqwest::Url, String> {
    check_url("jwks_url", url)
}

/// The URL of an issuer's OpenID Provider configuration (OpenID Connect Discovery 1.0 §4): the issuer with
/// any terminating `/` removed, then [`WELL_KNOWN_PATH`]. The issuer must be a URL without a query or a
/// fragment (§2), under [`check_jwks_url`]'s rules (`https`, or `http` to a loopback address).
pub fn discovery_url(issuer: &str) -> Result<reqwest::Url, String> {
    let what = "an issuer found by discovery";
    let parsed = check_url(what, issuer)?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{what} must not have a query or a fragment"));
    }
    let base = issuer.trim().trim_end_matches('/');
    check_url(what, &format!("{base}{WELL_KNOWN_PATH}"))
}

/// `url` (named `what` in errors) if we are willing to fetch it: `https`, or `http` to a loopback address;
/// no credentials in it.
fn check_url(what: &str, url: &str) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url.trim()).map_err(|e| format!("{what} is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{what} must not contain credentials"));
    }
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{what} has no host"));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(parsed),
        _ => Err(format!(
            "{what} must be an https:// URL (http:// only to 127.0.0.1, localhost or ::1)"
        )),
    }
}

/// The HTTP client for one issuer's JWKS: rustls with the ring provider, the given roots (or the
/// platform's), no redirects, bounded time.
fn http_client(ca_pem: Option<&[u8]>, https: bool) -> Result<reqwest::Client, String> {
    let tls = match ca_pem {
        Some(pem) => crate::tls::client_config_trusting(pem)
            .map_err(|e| format!("cannot use the CA file: {e}"))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) =
                roots.add_parsable_certificates(crate::tls::platform_roots().iter().cloned());
            if added == 0 && https {
                tracing::warn!(
                    "no platform root certificates found: set ca_file for a trusted issuer's jwks_url or discovery"
                );
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cannot configure TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    let mut builder = reqwest::Client::builder();
    if !https {
        // Plain http is allowed to loopback only: never through a proxy from the environment.
        builder = builder.no_proxy();
    }
    builder
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("keyvault-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", describe(e)))
}

/// GETs `what` (the JWKS, the discovery document) from `url`: a 2xx answer of at most `limit` bytes of UTF-8.
/// Errors name the URL (its query redacted).
async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
    accept: &str,
    limit: usize,
    what: &str,
) -> Result<String, String> {
    let at = redact_query(url.as_str());
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {what} from {at}: {}", describe(e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{at} answered {status} for {what}"));
    }
    let too_large = || format!("{what} at {at} is larger than {limit} bytes");
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read {what} from {at}: {}", describe(e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| format!("{what} at {at} is not UTF-8 text"))
}

/// The `jwks_uri` of the provider configuration fetched from `document` for `issuer`: the document's `issuer`
/// must be `issuer` exactly (Discovery 1.0 §4.3), and its `jwks_uri` a URL we fetch ([`check_jwks_url`]'s
/// rules), `https` when the document came over `https`.
fn jwks_uri_of(issuer: &str, document: &reqwest::Url, text: &str) -> Result<reqwest::Url, String> {
    #[derive(serde::Deserialize)]
    struct ProviderConfiguration {
        issuer: Option<String>,
        jwks_uri: Option<String>,
    }
    let at = document.as_str();
    let config: ProviderConfiguration = serde_json::from_str(text)
        .map_err(|e| format!("{at}: not an OpenID Provider configuration document: {e}"))?;
    let found = config
        .issuer
        .ok_or_else(|| format!("{at}: the discovery document has no issuer"))?;
    if found != issuer {
        return Err(format!(
            "{at}: the discovery document is for the issuer {}, not {issuer:?} (they must be equal exactly)",
            shown(&found)
        ));
    }
    let uri = config
        .jwks_uri
        .ok_or_else(|| format!("{at}: the discovery document has no jwks_uri"))?;
    let url = check_url("the discovery document's jwks_uri", &uri)
        .map_err(|e| format!("{at}: {e} (it is {})", shown(&redact_query(&uri))))?;
    if document.scheme() == "https" && url.scheme() != "https" {
        return Err(format!(
            "{at}: the discovery document's jwks_uri must be an https:// URL (it is {})",
            shown(&redact_query(&uri))
        ));
    }
    Ok(url)
}

/// A value from a fetched document, for a message: quoted and escaped, at most 200 characters.
fn shown(value: &str) -> String {
    match value.char_indices().nth(200) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// A reqwest error and its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(MAX_RETRY_DELAY)
}

/// The `iss` of a token, read without verifying anything (to choose the issuer whose keys verify it).
pub(crate) fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_lose_their_query_and_credentials() {
        assert_eq!(
            redact_query("https://idp.example/keys?sig=abc"),
            "https://idp.example/keys?…"
        );
        assert_eq!(
            redact_query("http://user:pw@127.0.0.1:19001/keys"),
            "http://…@127.0.0.1:19001/keys"
        );
        assert_eq!(
            redact_query("https://a:b@c@idp.example/k@eys?x=1"),
            "https://…@idp.example/k@eys?…"
        );
        assert_eq!(redact_query("not a url"), "not a url");
    }
    use crate::auth::SigningKey;

    const ISS: &str = "https://idp.example.com/corp";
    const AUD: &str = "api://keyvault";

    fn sign(key: &SigningKey, header: serde_json::Value, claims: serde_json::Value) -> String {
        let mut t = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()));
        let sig = key.sign(t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": ISS, "aud": AUD, "sub": "s-1", "oid": "alice-oid", "exp": 2_000, "nbf": 1_000})
    }

    fn check(issuer: &TrustedIssuer, token: &str) -> Result<(Principal, i64, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token).unwrap();
        issuer.verify(token, &header)
    }

    #[test]
    fn verifies_with_the_kid_and_maps_the_claim() {
        let (a, b) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let jwks = serde_json::json!({"keys": [a.jwk(), b.jwk()]}).to_string();
        let issuer = TrustedIssuer::from_jwks(ISS, AUD, &jwks, Some("oid")).unwrap();
        let h = |k: &SigningKey| serde_json::json!({"alg": "ES256", "kid": k.kid()});
        let (p, nbf, exp) = check(&issuer, &sign(&b, h(&b), claims())).unwrap();
        assert_eq!((&*p.id, nbf, exp), ("alice-oid", 1_000, 2_000));
        assert_eq!(
            unverified_issuer(&sign(&b, h(&b), claims())).as_deref(),
            Some(ISS)
        );

        // Signed by b, but claiming a's kid: refused. No kid with two keys: refused.
        assert!(check(&issuer, &sign(&b, h(&a), claims())).is_err());
        assert!(
            check(
                &issuer,
                &sign(&a, serde_json::json!({"alg": "ES256"}), claims())
            )
            .is_err()
        );
        // Another algorithm in the header, a wrong audience or issuer, a missing claim: refused.
        for alg in ["HS256", "RS256", "none"] {
            let t = sign(
                &a,
                serde_json::json!({"alg": alg, "kid": a.kid()}),
                claims(),
            );
            assert!(
                jsonwebtoken::decode_header(&t).map_or(true, |hd| issuer.verify(&t, &hd).is_err()),
                "{alg}"
            );
        }
        let mut c = claims();
        c["aud"] = "other".into();
        assert!(check(&issuer, &sign(&a, h(&a), c)).is_err());
        let mut c = claims();
        c["iss"] = "https://evil.example.com".into();
        assert!(check(&issuer, &sign(&a, h(&a), c)).is_err());
        let mut c = claims();
        c.as_object_mut().unwrap().remove("oid");
        assert!(check(&issuer, &sign(&a, h(&a), c)).is_err());
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(check(&issuer, &sign(&a, h(&a), c)).is_err());
        // `exp` with a fraction counts from its whole second (certificate and federated assertions, access
        // tokens alike); out of range or not a number, the token is refused.
        for (exp, want) in [
            (serde_json::json!(1_000), Some(1_000)),
            (serde_json::json!(1_500.75), Some(1_500)),
            (serde_json::json!(1e300), None),
            (serde_json::json!("1000"), None),
        ] {
            let times = token_times(&serde_json::json!({ "exp": exp.clone() }));
            assert_eq!(times.ok().map(|(_, exp)| exp), want, "{exp}");
        }
        // `nbf` in any JSON number form counts (rounded up); not a number, the token is refused.
        for (nbf, want) in [
            (serde_json::json!(1_500.5), Some(1_501)),
            (serde_json::json!(1e10), Some(10_000_000_000)),
            (serde_json::json!(1e300), Some(i64::MAX)),
            (serde_json::json!(1_000), Some(1_000)),
            (serde_json::json!("1000"), None),
            (serde_json::json!(true), None),
        ] {
            let mut c = claims();
            c["nbf"] = nbf.clone();
            let got = check(&issuer, &sign(&a, h(&a), c))
                .ok()
                .map(|(_, nbf, _)| nbf);
            assert_eq!(got, want, "{nbf}");
        }

        // One key: a token without kid is accepted.
        let single = serde_json::json!({"keys": [a.jwk()]}).to_string();
        let issuer = TrustedIssuer::from_jwks(ISS, AUD, &single, None).unwrap();
        let (p, _, _) = check(
            &issuer,
            &sign(&a, serde_json::json!({"alg": "ES256"}), claims()),
        )
        .unwrap();
        assert_eq!(&*p.id, "s-1");
    }

    /// A key the JWK parser does not model (an `ECDH-ES` encryption key, an Ed448 key), or a signature key
    /// that does not load, is skipped: the document's other keys are used.
    #[test]
    fn keys_of_kinds_not_used_are_skipped_not_fatal() {
        let a = SigningKey::generate().unwrap();
        let broken = serde_json::json!({"kty": "RSA", "use": "sig", "kid": "broken", "n": "!!", "e": "AQAB"});
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "use": "enc", "alg": "ECDH-ES", "crv": "P-256", "kid": "enc-1",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "OKP", "crv": "Ed448", "x": "AAAA", "kid": "okp-1"},
            broken,
            a.jwk(),
        ]})
        .to_string();
        let keys = parse_jwks(&jwks).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some(a.kid()));
        let issuer = TrustedIssuer::from_jwks(ISS, AUD, &jwks, None).unwrap();
        let (p, _, _) = check(
            &issuer,
            &sign(
                &a,
                serde_json::json!({"alg": "ES256", "kid": a.kid()}),
                claims(),
            ),
        )
        .unwrap();
        assert_eq!(&*p.id, "s-1");
        // Nothing usable at all is still refused.
        let none = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed448", "x": "AAAA"}]});
        assert!(parse_jwks(&none.to_string()).is_err());
    }

    #[test]
    fn a_new_key_set_tells_what_changed() {
        use std::sync::atomic::AtomicUsize;
        let (a, b) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let set = |keys: &[&SigningKey]| {
            let keys: Vec<_> = keys.iter().map(|k| k.jwk()).collect();
            parse_jwks(&serde_json::json!({ "keys": keys }).to_string()).unwrap()
        };
        let jwks = serde_json::json!({"keys": [a.jwk()]}).to_string();
        let issuer = TrustedIssuer::from_jwks(ISS, AUD, &jwks, None).unwrap();
        let removals = Arc::new(AtomicUsize::new(0));
        let counter = removals.clone();
        issuer.on_keys_removed(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        let header = |k: &SigningKey| {
            jsonwebtoken::decode_header(&sign(
                k,
                serde_json::json!({"alg": "ES256", "kid": k.kid()}),
                claims(),
            ))
            .unwrap()
        };
        assert!(!issuer.is_unknown_kid(&header(&a)));
        assert!(issuer.is_unknown_kid(&header(&b)));

        // The same keys again: no change. A key added: a change, nothing removed. A key dropped: both.
        let g0 = issuer.generation();
        assert!(!issuer.install(set(&[&a])));
        assert_eq!(
            (issuer.generation(), removals.load(Ordering::SeqCst)),
            (g0, 0)
        );
        assert!(issuer.install(set(&[&a, &b])));
        assert_eq!(
            (issuer.generation(), removals.load(Ordering::SeqCst)),
            (g0 + 1, 0)
        );
        assert!(issuer.install(set(&[&b])));
        assert_eq!(
            (issuer.generation(), removals.load(Ordering::SeqCst)),
            (g0 + 2, 1)
        );
        assert_eq!(issuer.kids(), vec![Some(b.kid().to_string())]);
        assert!(issuer.is_unknown_kid(&header(&a)));
        let c = claims();
        assert!(
            check(
                &issuer,
                &sign(&a, serde_json::json!({"alg": "ES256", "kid": a.kid()}), c)
            )
            .is_err()
        );

        // A file-based issuer never fetches.
        assert_eq!(issuer.jwks_url(), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(issuer.refresh()).is_err());
        assert!(!rt.block_on(issuer.refresh_for_unknown_kid()));
    }

    #[test]
    fn a_document_s_values_are_quoted_and_cut_in_messages() {
        let document = discovery_url("https://idp.example.com/corp/").unwrap();
        assert_eq!(
            document.as_str(),
            "https://idp.example.com/corp/.well-known/openid-configuration"
        );
        // Another issuer, with a line break and far too long: one quoted line of at most 200 characters.
        let forged = format!(
            "https://x.example/\n2030-01-01 INFO all good{}",
            "a".repeat(5000)
        );
        let doc = serde_json::json!({"issuer": forged, "jwks_uri": "https://x.example/keys"});
        let e = jwks_uri_of(ISS, &document, &doc.to_string()).unwrap_err();
        assert!(
            !e.contains('\n') && e.contains("\\n2030") && e.len() < 600,
            "{e}"
        );
        assert!(
            e.contains(document.as_str()) && e.contains(&format!("not {ISS:?}")),
            "{e}"
        );
        // A jwks_uri's query (it may carry a key) is not shown.
        let doc =
            serde_json::json!({"issuer": ISS, "jwks_uri": "http://x.example/keys?sig=s3cret"});
        let e = jwks_uri_of(ISS, &document, &doc.to_string()).unwrap_err();
        assert!(e.contains("https://") && !e.contains("s3cret"), "{e}");
        // The issuer as configured, the jwks_uri of the document.
        let doc = serde_json::json!({"issuer": ISS, "jwks_uri": "https://keys.example/jwks?v=2"});
        let url = jwks_uri_of(ISS, &document, &doc.to_string()).unwrap();
        assert_eq!(url.as_str(), "https://keys.example/jwks?v=2");
    }

    #[test]
    fn retries_back_off() {
        let secs = |n| retry_delay(n).as_secs();
        assert_eq!((secs(1), secs(2), secs(3), secs(9)), (1, 2, 4, 256));
        assert_eq!((secs(10), secs(u32::MAX)), (300, 300));
    }

    #[test]
    fn rejects_unusable_jwks() {
        assert!(TrustedIssuer::from_jwks(ISS, AUD, "{}", None).is_err());
        assert!(TrustedIssuer::from_jwks(ISS, AUD, r#"{"keys":[]}"#, None).is_err());
        let hmac = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(TrustedIssuer::from_jwks(ISS, AUD, hmac, None).is_err());
        let k = SigningKey::generate().unwrap();
        let jwks = serde_json::json!({"keys": [k.jwk()]}).to_string();
        assert!(TrustedIssuer::from_jwks("", AUD, &jwks, None).is_err());
    }
}

#[cfg(test)]
mod rs256_tests {
    use super::*;

    /// A 2048-bit RSA key made for this test only (openssl genpkey), and its public JWKS.
    const KEY_PEM: &[u8] = include_bytes!("testdata/rsa-test-key.pem");
    const JWKS: &str = include_str!("testdata/rsa-test-jwks.json");

    fn sign_rs256(header: serde_json::Value, claims: serde_json::Value) -> String {
        let der = match rustls_pemfile::private_key(&mut &KEY_PEM[..]) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k))) => k.secret_pkcs8_der().to_vec(),
            other => panic!("the test key is PKCS#8: {other:?}"),
        };
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let mut t = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()));
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            t.as_bytes(),
            &mut sig,
        )
        .unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    #[test]
    fn rs256_tokens_verify_with_an_rsa_jwks_and_nothing_else_does() {
        let issuer =
            TrustedIssuer::from_jwks("https://idp.example.com/rsa", "api://kv", JWKS, Some("oid"))
                .unwrap();
        let claims = serde_json::json!({"iss": "https://idp.example.com/rsa", "aud": "api://kv",
            "sub": "s", "oid": "rsa-user", "exp": 2_000, "nbf": 1_000});
        let check = |token: &str| {
            let header = jsonwebtoken::decode_header(token).unwrap();
            issuer.verify(token, &header)
        };
        let good = sign_rs256(
            serde_json::json!({"alg": "RS256", "kid": "rsa-test-1"}),
            claims.clone(),
        );
        let (p, nbf, exp) = check(&good).unwrap();
        assert_eq!((&*p.id, nbf, exp), ("rsa-user", 1_000, 2_000));
        // One RSA key: a token without kid is accepted; a wrong kid is not.
        assert!(
            check(&sign_rs256(
                serde_json::json!({"alg": "RS256"}),
                claims.clone()
            ))
            .is_ok()
        );
        assert!(
            check(&sign_rs256(
                serde_json::json!({"alg": "RS256", "kid": "other"}),
                claims.clone()
            ))
            .is_err()
        );
        // The RSA key verifies RS256 only: the same signature labelled PS256 or ES256 is refused.
        for alg in ["PS256", "ES256", "HS256"] {
            let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
            parts[0] = URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&serde_json::json!({"alg": alg, "kid": "rsa-test-1"})).unwrap(),
            );
            assert!(check(&parts.join(".")).is_err(), "{alg}");
        }
        // A tampered payload fails the signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({"iss": "https://idp.example.com/rsa",
                "aud": "api://kv", "sub": "s", "oid": "admin", "exp": 2_000, "nbf": 1_000}))
            .unwrap(),
        );
        parts[1] = &forged;
        assert!(check(&parts.join(".")).is_err());
    }
}
