//! Access tokens: JWTs signed by the server's [`SigningKey`] (ES256), issued by [`TokenIssuer`] and checked by
//! [`TokenVerifier`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AuthError;
use super::keys::{SigningKey, TOKEN_ALG};

/// Token lifetime used unless configured otherwise. Well above the 300 s under which Python's azure-identity
/// renews a cached token.
pub const DEFAULT_TOKEN_LIFETIME_SECS: i64 = 3600;

/// Tolerated clock skew, applied to both `exp` and `nbf` (and to client assertions and certificates' dates):
/// five minutes, the default of Microsoft's token validation (`TokenValidationParameters.ClockSkew`), which
/// Key Vault and Entra ID apply. With less, a step of the vault's clock back by a minute or two (an NTP
/// correction), or a token issuer whose clock runs ahead, refused every token the SDKs had cached, for up to
/// their hour.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// Tokens longer than this are rejected before any parsing or hashing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// How many verified tokens the verifier remembers.
const CACHE_CAPACITY: usize = 10_000;
/// And how many bytes of them at most (tokens of external issuers can be several kilobytes).
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// A cached token is found by a keyed hash of this many of its last bytes: its signature's, which differ
/// from one token to the next; the whole token is then compared.
const CACHE_KEY_TAIL: usize = 32;

/// The claims of an access token issued by this server (an Entra v2 app-only token, trimmed down).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// `https://{host}/{tenant}/v2.0`.
    pub iss: String,
    /// The resource the token is for, e.g. `https://localhost:8443`.
    pub aud: String,
    /// The principal: the client id.
    pub sub: String,
    /// The client id (Entra's `appid`).
    pub appid: String,
    /// The tenant.
    pub tid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// A random token id.
    pub jti: String,
}

/// The warning for an external token that names a local client: 20 lines per 10 s (every request that carries
/// such a token is refused again, and its sender chooses how often).
static LOCAL_CLIENT_NAMED_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(20);

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The token's `sub` (for tokens of this server: the client id). Shared: every request of a cached token
    /// gets the cache's copy without allocating.
    pub id: Arc<str>,
    /// The token's `tid`.
    pub tenant: Arc<str>,
}

/// Issues access tokens for authenticated clients.
pub struct TokenIssuer {
    key: Arc<SigningKey>,
    /// Retired signing keys: no longer used to sign, still published and accepted (key rotation).
    previous: Vec<Arc<SigningKey>>,
    issuer: String,
    tenant: String,
    lifetime_secs: i64,
}

impl TokenIssuer {
    /// `issuer` is the exact `iss` claim (the server passes `https://{issuer_host}/{tenant}/v2.0`);
    /// `lifetime_secs` is clamped to at least 2 s (see [`DEFAULT_TOKEN_LIFETIME_SECS`]).
    pub fn new(key: Arc<SigningKey>, issuer: String, tenant: String, lifetime_secs: i64) -> Self {
        Self {
            key,
            previous: Vec::new(),
            issuer,
            tenant,
            lifetime_secs: lifetime_secs.max(2),
        }
    }

    /// The `iss` of the tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `tid` of the tokens.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// Token lifetime in seconds (`exp - iat`).
    pub fn lifetime_secs(&self) -> i64 {
        self.lifetime_secs
    }

    /// Issues a token for `client_id` (both `sub` and `appid`) and `audience` at time `now` (Unix seconds).
    /// Returns the compact JWS and the `expires_in` to report: one second under the lifetime, as Entra does
    /// (3599 for a one-hour token), so a client's expiry estimate is never later than the real one.
    pub fn issue(
        &self,
        client_id: &str,
        audience: &str,
        now: i64,
    ) -> Result<(String, i64), AuthError> {
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| AuthError::Key("no randomness".into()))?;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            sub: client_id.to_owned(),
            appid: client_id.to_owned(),
            tid: self.tenant.clone(),
            iat: now,
            nbf: now,
            exp: now + self.lifetime_secs,
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let header = serde_json::json!({ "typ": "JWT", "alg": TOKEN_ALG, "kid": self.key.kid() });
        let header = serde_json::to_vec(&header).map_err(|_| AuthError::Key("encode".into()))?;
        let claims = serde_json::to_vec(&claims).map_err(|_| AuthError::Key("encode".into()))?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = self.key.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok((token, self.lifetime_secs - 1))
    }

    /// Also publish and accept these retired keys (tokens they signed stay valid until they expire). A key
    /// given twice, or the signing key itself given again (a rotation's first step lists the new key as
    /// previous on every node, then makes it current), is kept once: the JWKS names each key once.
    pub fn with_previous_keys(mut self, previous: Vec<Arc<SigningKey>>) -> Self {
        let mut seen = std::collections::HashSet::from([self.key.kid().to_owned()]);
        self.previous = previous
            .into_iter()
            .filter(|k| seen.insert(k.kid().to_owned()))
            .collect();
        self
    }

    /// Every key tokens of this issuer may carry: the signing key first, then the retired ones.
    pub fn verification_keys(&self) -> Vec<Arc<SigningKey>> {
        std::iter::once(self.key.clone())
            .chain(self.previous.iter().cloned())
            .collect()
    }

    /// The JWKS document: `{"keys":[jwk, …]}`, the signing key first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.verification_keys().iter().map(|k| k.jwk()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// A verifier for the tokens of this issuer, accepting the given audiences.
    pub fn verifier(&self, audiences: Vec<String>) -> TokenVerifier {
        TokenVerifier::new(self.verification_keys(), self.issuer.clone(), audiences)
    }
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("tenant", &self.tenant)
            .field("kid", &self.key.kid())
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

/// Why a token of this server's own issuer is refused when its client has been deleted (the HTTP layer
/// words its 401 for it: the token itself is well formed and signed).
pub const CLIENT_GONE: &str = "the token's client does not exist";

/// Why a token whose header has a `crit` member is refused: RFC 7515 §4.1.11, and no extension is understood.
pub const UNSUPPORTED_CRIT: &str =
    "the token header has a crit parameter (no extension is supported)";

/// Verifies access tokens: no `crit` in the header, algorithm pinned to ES256, `kid` among the known keys,
/// signature, exact `iss`, `aud` among the accepted audiences, `exp`/`nbf` with [`CLOCK_SKEW_SECS`] of skew.
///
/// Verified tokens are cached by SHA-256 (bounded; earliest-expiring entries go first), so a repeated token
/// costs a hash and a map lookup; a cached token is still rejected once expired. Cloning is cheap and clones
/// share the cache.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    keys: HashMap<String, DecodingKey>,
    issuer: String,
    audiences: Vec<String>,
    validation: Validation,
    /// Trusted external issuers (by exact `iss`).
    external: Vec<super::external::TrustedIssuer>,
    /// This server's clients: an external identity may not carry one of their ids as its principal.
    local_clients: std::sync::OnceLock<Arc<super::ClientRegistry>>,
    cache: RwLock<Cache>,
}

impl TokenVerifier {
    /// A verifier trusting `keys`, for tokens whose `iss` is exactly `issuer` and whose `aud` is one of
    /// `audiences`.
    pub fn new(keys: Vec<Arc<SigningKey>>, issuer: String, audiences: Vec<String>) -> Self {
        Self::with_trusted_issuers(keys, issuer, audiences, Vec::new())
    }

    /// [`new`](Self::new), also accepting tokens of trusted external issuers (see [`super::external`]). An
    /// external issuer with our own `iss` is ignored.
    pub fn with_trusted_issuers(
        keys: Vec<Arc<SigningKey>>,
        issuer: String,
        audiences: Vec<String>,
        external: Vec<super::external::TrustedIssuer>,
    ) -> Self {
        let external: Vec<super::external::TrustedIssuer> = external
            .into_iter()
            .filter(|e| e.issuer() != issuer)
            .collect();
        let keys = keys
            .iter()
            .map(|k| (k.kid().to_owned(), DecodingKey::from_ec_der(k.public_key())))
            .collect();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&audiences);
        // Time is checked by us against the caller's clock (see `check_times`).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<VerifierInner>| {
            // A trusted issuer's new key set that drops a key: forget the cached tokens (some may have been
            // signed by that key).
            for ext in &external {
                let me = me.clone();
                ext.on_keys_removed(Box::new(move || {
                    if let Some(inner) = me.upgrade() {
                        *inner.cache.write().unwrap_or_else(PoisonError::into_inner) =
                            Cache::default();
                    }
                }));
            }
            VerifierInner {
                keys,
                issuer,
                audiences,
                validation,
                external,
                local_clients: std::sync::OnceLock::new(),
                cache: RwLock::new(Cache::default()),
            }
        });
        Self { inner }
    }

    /// Tells the verifier this server's clients (its own applications), for two rules; a token that breaks
    /// either is a 401:
    ///
    /// - an external token whose principal is the id of one of `clients` is refused: a trusted identity
    ///   provider can name its identities as it likes, and must not be able to speak for a local application
    ///   and get its role assignments;
    /// - a token of this server's own issuer must name a client that exists *now*: a deleted principal's
    ///   unexpired token stays refused even if an assignment naming its id is made later (the admin API
    ///   accepts any id, for external subjects).
    ///
    /// The second rule costs nothing on the path of a cached token (every request but a token's first): it is
    /// checked when a token is verified, before it is cached, and removing a client forgets its cached tokens
    /// (through a removal hook). A removal that runs while a token is being verified is caught by the
    /// registry's removal counter, read before the check and again after the token is cached (as a trusted
    /// issuer's key change is caught by its generation).
    pub fn refuse_local_client_ids(&self, clients: Arc<super::ClientRegistry>) {
        let me = Arc::downgrade(&self.inner);
        clients.on_removed(Box::new(move |client_id| {
            if let Some(inner) = me.upgrade() {
                inner
                    .cache
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove_principal(client_id);
            }
        }));
        let _ = self.inner.local_clients.set(clients);
    }

    /// The accepted `iss`.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Whether `iss` is this vault's own issuer or a trusted external one.
    pub fn knows_issuer(&self, iss: &str) -> bool {
        iss == self.inner.issuer || self.inner.external.iter().any(|e| e.issuer() == iss)
    }

    /// The accepted audiences.
    pub fn audiences(&self) -> &[String] {
        &self.inner.audiences
    }

    /// Verifies `token` at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::InvalidToken("empty token"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken("token too long"));
        }
        if let Some(cached) = self.verify_cached(token.as_bytes(), now) {
            return cached;
        }
        let inner = &*self.inner;

        let header = super::jws::decode_header(token).map_err(|e| match e {
            super::jws::HeaderError::Malformed => AuthError::InvalidToken("malformed token"),
            super::jws::HeaderError::Critical => AuthError::InvalidToken(UNSUPPORTED_CRIT),
        })?;
        // A claim given twice would be read one way here and perhaps another elsewhere (`serde_json` keeps
        // the last): refused, ours and trusted issuers' alike, as a header's are (checked once: a verified
        // token is cached).
        if payload_has_duplicate_member(token) {
            return Err(AuthError::InvalidToken("malformed token"));
        }
        if !inner.external.is_empty() {
            let iss = super::external::unverified_issuer(token);
            if let Some(ext) = iss.and_then(|iss| inner.external.iter().find(|e| e.issuer() == iss))
            {
                let generation = ext.generation();
                let (principal, nbf, exp) = ext.verify(token, &header)?;
                check_times(nbf, exp, now)?;
                if inner
                    .local_clients
                    .get()
                    .is_some_and(|c| c.contains(&principal.id))
                {
                    crate::budgeted_log!(
                        LOCAL_CLIENT_NAMED_LOG,
                        warn,
                        issuer = ext.issuer(),
                        "refused an external token whose principal is a local client id"
                    );
                    return Err(AuthError::InvalidToken(
                        "an external token cannot name a local client",
                    ));
                }
                let mut cache = inner.cache.write().unwrap_or_else(PoisonError::into_inner);
                cache.insert(token, principal.clone(), nbf, exp, now);
                // Verified with keys that were replaced meanwhile: don't keep it (the replacement may have
                // cleared the cache before this entry went in).
                if ext.generation() != generation {
                    cache.remove(token.as_bytes());
                }
                return Ok(principal);
            }
        }
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::InvalidToken("unsupported signing algorithm"));
        }
        let kid = header
            .kid
            .ok_or(AuthError::InvalidToken("no key id in the token header"))?;
        let key = inner
            .keys
            .get(&kid)
            .ok_or(AuthError::InvalidToken("unknown signing key"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &inner.validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;
        check_times(claims.nbf, claims.exp, now)?;
        // Our own token for a client that no longer exists (see `refuse_local_client_ids`).
        let clients = inner.local_clients.get();
        let removals = clients.map(|c| c.removals());
        if clients.is_some_and(|c| !c.contains(&claims.sub)) {
            return Err(AuthError::InvalidToken(CLIENT_GONE));
        }

        let principal = Principal {
            id: claims.sub.into(),
            tenant: claims.tid.into(),
        };
        let mut cache = inner.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.insert(token, principal.clone(), claims.nbf, claims.exp, now);
        // A client removed since the check: its hook may have run before this entry went in.
        if clients.map(|c| c.removals()) != removals {
            cache.remove(token.as_bytes());
        }
        Ok(principal)
    }

    /// A token verified before and still cached: its principal, or the error its times give at `now`. `None`
    /// when it is not cached ([`verify`](Self::verify) then). Takes the header's bytes: a cached token is
    /// compared byte for byte, so it needs no check that it is text first (a kilobyte on every request).
    pub fn verify_cached(&self, token: &[u8], now: i64) -> Option<Result<Principal, AuthError>> {
        let inner = &*self.inner;
        let (principal, nbf, exp) = inner
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)?;
        Some(match check_times(nbf, exp, now) {
            Ok(()) => Ok(principal),
            Err(e) => {
                if exp.saturating_add(CLOCK_SKEW_SECS) <= now {
                    let mut cache = inner.cache.write().unwrap_or_else(PoisonError::into_inner);
                    cache.remove(token);
                }
                Err(e)
            }
        })
    }

    /// [`verify`](Self::verify), and for a token of a trusted issuer with a JWKS URL whose `kid` the issuer
    /// does not know: fetch the issuer's keys (rate-limited, see [`super::external`]) and verify again, so
    /// that a key rotation at the identity provider works at once.
    pub async fn verify_async(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        let first = self.verify(token, now);
        if first.is_ok() || self.inner.external.is_empty() || token.len() > MAX_TOKEN_LEN {
            return first;
        }
        let Some(ext) = super::external::unverified_issuer(token)
            .and_then(|iss| self.inner.external.iter().find(|e| e.issuer() == iss))
        else {
            return first;
        };
        let unknown_kid = super::jws::decode_header(token).is_ok_and(|h| ext.is_unknown_kid(&h));
        if unknown_kid && ext.refresh_for_unknown_kid().await {
            self.verify(token, now)
        } else {
            first
        }
    }

    #[cfg(test)]
    fn cache_len(&self) -> usize {
        self.inner
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .table
            .len()
    }
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.inner.issuer)
            .field("audiences", &self.inner.audiences)
            .field("kids", &self.inner.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn check_times(nbf: i64, exp: i64, now: i64) -> Result<(), AuthError> {
    if exp.saturating_add(CLOCK_SKEW_SECS) <= now {
        return Err(AuthError::InvalidToken("token expired"));
    }
    if nbf.saturating_sub(CLOCK_SKEW_SECS) > now {
        return Err(AuthError::InvalidToken("token not yet valid"));
    }
    Ok(())
}

/// Whether the payload of a compact JWS (`header.payload.signature`), once decoded, is a JSON object that
/// names a member twice ([`object_has_duplicate_member`]). A payload that does not decode or is not an
/// object is `false`: the verification that follows refuses it.
pub(crate) fn payload_has_duplicate_member(token: &str) -> bool {
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(json) = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return false;
    };
    object_has_duplicate_member(&json)
}

/// Whether `json` is a JSON object that names a member twice (at the top level; escapes decoded, so `"oid"`
/// and `"o\u0069d"` are one name). Text that is not an object is `false`.
pub(crate) fn object_has_duplicate_member(json: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::borrow::Cow;

    /// Reads a member's name, borrowed when it has no escapes.
    struct Name;
    impl<'de> DeserializeSeed<'de> for Name {
        type Value = Cow<'de, str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Name {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a member name")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }

    /// Sets `found` (and stops, with an error) at the first name that repeats.
    struct Members<'a> {
        found: &'a std::cell::Cell<bool>,
    }
    impl<'de> Visitor<'de> for Members<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(name) = map.next_key_seed(Name)? {
                if !seen.insert(name) {
                    self.found.set(true);
                    return Err(serde::de::Error::custom("a member named twice"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let found = std::cell::Cell::new(false);
    let _ = serde_json::Deserializer::from_slice(json).deserialize_map(Members { found: &found });
    found.get()
}

pub(crate) fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    AuthError::InvalidToken(match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "unsupported signing algorithm"
        }
        ErrorKind::MissingRequiredClaim(_) => "missing claim",
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => "bad signature",
        _ => "malformed token",
    })
}

struct CacheEntry {
    /// The token itself, wiped from memory when the entry goes.
    token: Zeroizing<String>,
    hash: u64,
    /// Tells entries with the same hash apart in `by_exp`.
    serial: u64,
    principal: Principal,
    nbf: i64,
    exp: i64,
}

/// Verified tokens, kept whole and compared whole (in constant time), found by a keyed hash of their last
/// [`CACHE_KEY_TAIL`] bytes: hashing all of a token (a kilobyte or more) on every request cost more than the
/// rest of the lookup. With an index by expiry for eviction.
#[derive(Default)]
struct Cache {
    table: hashbrown::HashTable<CacheEntry>,
    /// `(exp, hash, serial)` of every entry.
    by_exp: BTreeSet<(i64, u64, u64)>,
    hasher: RandomState,
    /// Bytes of the cached tokens.
    bytes: usize,
    serials: u64,
}

/// Whether two tokens are the same, in time that depends on their length only.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Cache {
    fn hash(&self, token: &[u8]) -> u64 {
        self.hasher
            .hash_one(&token[token.len().saturating_sub(CACHE_KEY_TAIL)..])
    }

    /// The principal, `nbf` and `exp` of a cached token.
    fn get(&self, token: &[u8]) -> Option<(Principal, i64, i64)> {
        self.table
            .find(self.hash(token), |e| same_token(e.token.as_bytes(), token))
            .map(|e| (e.principal.clone(), e.nbf, e.exp))
    }

    fn insert(&mut self, token: &str, principal: Principal, nbf: i64, exp: i64, now: i64) {
        let hash = self.hash(token.as_bytes());
        if self
            .table
            .find(hash, |e| same_token(e.token.as_bytes(), token.as_bytes()))
            .is_some()
        {
            return;
        }
        let full =
            |c: &Cache| c.table.len() >= CACHE_CAPACITY || c.bytes + token.len() > CACHE_BYTES;
        if full(self) {
            // Drop what has expired, then, if still full, whatever expires first.
            while let Some(&(first_exp, hash, serial)) = self.by_exp.first() {
                if first_exp.saturating_add(CLOCK_SKEW_SECS) > now {
                    break;
                }
                self.remove_entry(first_exp, hash, serial);
            }
            while full(self) {
                let Some(&(first_exp, hash, serial)) = self.by_exp.first() else {
                    break;
                };
                self.remove_entry(first_exp, hash, serial);
            }
        }
        self.serials += 1;
        let serial = self.serials;
        self.by_exp.insert((exp, hash, serial));
        self.bytes += token.len();
        self.table.insert_unique(
            hash,
            CacheEntry {
                token: Zeroizing::new(token.to_owned()),
                hash,
                serial,
                principal,
                nbf,
                exp,
            },
            |e| e.hash,
        );
    }

    fn remove(&mut self, token: &[u8]) {
        let hash = self.hash(token);
        if let Ok(found) = self
            .table
            .find_entry(hash, |e| same_token(e.token.as_bytes(), token))
        {
            let (entry, _) = found.remove();
            self.by_exp.remove(&(entry.exp, hash, entry.serial));
            self.bytes -= entry.token.len();
        }
    }

    /// Forgets every token of `principal` (a scan: this runs when a client is removed, which is rare).
    fn remove_principal(&mut self, principal: &str) {
        let gone: Vec<(i64, u64, u64)> = self
            .table
            .iter()
            .filter(|e| &*e.principal.id == principal)
            .map(|e| (e.exp, e.hash, e.serial))
            .collect();
        for (exp, hash, serial) in gone {
            self.remove_entry(exp, hash, serial);
        }
    }

    fn remove_entry(&mut self, exp: i64, hash: u64, serial: u64) {
        self.by_exp.remove(&(exp, hash, serial));
        if let Ok(found) = self.table.find_entry(hash, |e| e.serial == serial) {
            let (entry, _) = found.remove();
            self.bytes -= entry.token.len();
        }
    }
}

#[cfg(test)]
mod duplicate_member_tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn a_member_named_twice_is_found_at_the_top_level_only() {
        for twice in [
            r#"{"oid":"a","oid":"b"}"#,
            r#"{"oid":"a","sub":"x","oid":"a"}"#,
            r#"{"oid":"a","o\u0069d":"b"}"#,
            r#"{"x":{"y":1},"x":null}"#,
        ] {
            assert!(payload_has_duplicate_member(&token(twice)), "{twice}");
        }
        for once in [
            r#"{"oid":"a","sub":"b","nested":{"oid":1,"oid":2}}"#,
            r#"{"aud":["a","a"]}"#,
            "{}",
            // Not an object, or not JSON, or not base64url: for the verification to refuse.
            "[]",
            "not json",
        ] {
            assert!(!payload_has_duplicate_member(&token(once)), "{once}");
        }
        assert!(!payload_has_duplicate_member("e30.!!!.c2ln"));
        assert!(!payload_has_duplicate_member("nodots"));
        // Case matters: JSON names are case-sensitive, and so are the claims read.
        assert!(!payload_has_duplicate_member(&token(
            r#"{"oid":"a","OID":"b"}"#
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const ISS: &str = "https://localhost:8443/t1/v2.0";
    const AUD: &str = "https://localhost:8443";
    const NOW: i64 = 1_700_000_000;

    fn setup() -> (TokenIssuer, TokenVerifier) {
        let key = Arc::new(SigningKey::generate().unwrap());
        let issuer = TokenIssuer::new(key, ISS.into(), "t1".into(), DEFAULT_TOKEN_LIFETIME_SECS);
        let verifier = issuer.verifier(vec![AUD.into(), "https://vault.azure.net".into()]);
        (issuer, verifier)
    }

    fn invalid(r: Result<Principal, AuthError>) -> &'static str {
        match r {
            Err(AuthError::InvalidToken(reason)) => reason,
            other => panic!("expected InvalidToken, got {other:?}"),
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn round_trip() {
        let (issuer, verifier) = setup();
        let (token, expires_in) = issuer.issue("client-1", AUD, NOW).unwrap();
        assert_eq!(expires_in, 3599);
        let p = verifier.verify(&token, NOW).unwrap();
        assert_eq!(
            p,
            Principal {
                id: "client-1".into(),
                tenant: "t1".into()
            }
        );
        // Second audience works too.
        let (token, _) = issuer
            .issue("client-1", "https://vault.azure.net", NOW)
            .unwrap();
        verifier.verify(&token, NOW + 10).unwrap();

        // The claims look like an Entra app token.
        let payload = token.split('.').nth(1).unwrap();
        let claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims.iss, ISS);
        assert_eq!(claims.appid, "client-1");
        assert_eq!(claims.exp - claims.iat, 3600);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(issuer.key().kid()));
    }

    #[test]
    fn each_key_is_published_once() {
        let (issuer, _) = setup();
        let current = issuer.key().clone();
        let other = Arc::new(SigningKey::generate().unwrap());
        let issuer = issuer.with_previous_keys(vec![other.clone(), current.clone(), other.clone()]);
        let kids: Vec<String> = issuer.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [current.kid(), other.kid()]);
    }

    #[test]
    fn jsonwebtoken_verifies_with_the_published_jwk() {
        // Interop: a generic verifier given only the JWKS accepts our signature.
        let (issuer, _) = setup();
        let (token, _) = issuer.issue("c", AUD, NOW).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(issuer.jwks()).unwrap();
        let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.set_audience(&[AUD]);
        jsonwebtoken::decode::<Claims>(&token, &key, &v).unwrap();
    }

    #[test]
    fn expiry_and_not_before_with_skew() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("c", AUD, NOW).unwrap();
        let exp = NOW + DEFAULT_TOKEN_LIFETIME_SECS;
        // Fresh verifier each time so the cache does not answer.
        let fresh = || issuer.verifier(vec![AUD.into()]);
        assert!(fresh().verify(&token, exp + CLOCK_SKEW_SECS - 1).is_ok());
        assert_eq!(
            invalid(fresh().verify(&token, exp + CLOCK_SKEW_SECS)),
            "token expired"
        );
        assert!(fresh().verify(&token, NOW - CLOCK_SKEW_SECS).is_ok());
        assert_eq!(
            invalid(fresh().verify(&token, NOW - CLOCK_SKEW_SECS - 1)),
            "token not yet valid"
        );
        assert_eq!(
            invalid(verifier.verify(&token, exp + 3600)),
            "token expired"
        );
    }

    #[test]
    fn wrong_issuer_and_audience() {
        let (issuer, _) = setup();
        let other = TokenIssuer::new(
            issuer.key().clone(),
            "https://evil/t1/v2.0".into(),
            "t1".into(),
            3600,
        );
        let (token, _) = other.issue("c", AUD, NOW).unwrap();
        assert_eq!(
            invalid(issuer.verifier(vec![AUD.into()]).verify(&token, NOW)),
            "wrong issuer"
        );
        let (token, _) = issuer.issue("c", "https://other", NOW).unwrap();
        assert_eq!(
            invalid(issuer.verifier(vec![AUD.into()]).verify(&token, NOW)),
            "wrong audience"
        );
    }

    #[test]
    fn bad_signature() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("c", AUD, NOW).unwrap();
        // Flip a character in the middle of the signature (the last one may only carry padding bits).
        let sig_start = token.rfind('.').unwrap() + 1;
        let i = sig_start + 10;
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(invalid(verifier.verify(&tampered, NOW)), "bad signature");

        // Tampered payload with the original signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = "admin".into();
        parts[1] = b64(&claims);
        assert_eq!(
            invalid(verifier.verify(&parts.join("."), NOW)),
            "bad signature"
        );

        // Signed by another key that claims our kid.
        let impostor = TokenIssuer::new(
            Arc::new(SigningKey::generate().unwrap()),
            ISS.into(),
            "t1".into(),
            3600,
        );
        let (token2, _) = impostor.issue("c", AUD, NOW).unwrap();
        let mut parts2: Vec<&str> = token2.split('.').collect();
        let header = b64(&serde_json::json!({"typ":"JWT","alg":"ES256","kid": issuer.key().kid()}));
        parts2[0] = &header;
        assert_eq!(
            invalid(verifier.verify(&parts2.join("."), NOW)),
            "bad signature"
        );
    }

    #[test]
    fn alg_none_and_hs256_confusion_rejected() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("c", AUD, NOW).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let kid = issuer.key().kid();

        for alg in ["none", "None", "NONE"] {
            let header = b64(&serde_json::json!({"typ":"JWT","alg": alg,"kid": kid}));
            assert!(
                verifier
                    .verify(&format!("{header}.{payload}."), NOW)
                    .is_err()
            );
            assert!(
                verifier
                    .verify(&format!("{header}.{payload}"), NOW)
                    .is_err()
            );
        }

        // HS256 with the public key bytes (raw point, and the JWK JSON) as the HMAC secret.
        let claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let jwk_json = serde_json::to_vec(&issuer.key().jwk()).unwrap();
        for secret in [issuer.key().public_key(), &jwk_json[..]] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            let forged =
                jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
            assert_eq!(
                invalid(verifier.verify(&forged, NOW)),
                "unsupported signing algorithm"
            );
        }

        // ES384 / EdDSA / RS256 labels are refused before any signature work.
        for alg in ["ES384", "EdDSA", "RS256", "PS256"] {
            let header = b64(&serde_json::json!({"typ":"JWT","alg": alg,"kid": kid}));
            let sig = token.rsplit('.').next().unwrap();
            assert!(
                verifier
                    .verify(&format!("{header}.{payload}.{sig}"), NOW)
                    .is_err()
            );
        }
    }

    #[test]
    fn unknown_or_missing_kid() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("c", AUD, NOW).unwrap();
        let rest = token.split_once('.').unwrap().1;
        let header = b64(&serde_json::json!({"typ":"JWT","alg":"ES256","kid":"nope"}));
        assert_eq!(
            invalid(verifier.verify(&format!("{header}.{rest}"), NOW)),
            "unknown signing key"
        );
        let header = b64(&serde_json::json!({"typ":"JWT","alg":"ES256"}));
        assert_eq!(
            invalid(verifier.verify(&format!("{header}.{rest}"), NOW)),
            "no key id in the token header"
        );
        // A token from an issuer with another key.
        let other = TokenIssuer::new(
            Arc::new(SigningKey::generate().unwrap()),
            ISS.into(),
            "t1".into(),
            3600,
        );
        let (token, _) = other.issue("c", AUD, NOW).unwrap();
        assert_eq!(invalid(verifier.verify(&token, NOW)), "unknown signing key");
    }

    /// A compact JWS of `claims` with this header, signed by `key` (ES256).
    fn signed(key: &SigningKey, header: serde_json::Value, claims: &serde_json::Value) -> String {
        let mut t = format!("{}.{}", b64(&header), b64(claims));
        let sig = key.sign(t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    /// RFC 7515 §4.1.11: a header with `crit` is refused, whatever it lists (an empty list included), for our
    /// own tokens and for a trusted issuer's, with a valid signature; the same token without it is accepted.
    #[test]
    fn crit_in_the_header_is_refused() {
        let (issuer, verifier) = setup();
        let own = serde_json::json!({"iss": ISS, "aud": AUD, "sub": "c", "appid": "c", "tid": "t1",
            "iat": NOW, "nbf": NOW, "exp": NOW + 600, "jti": "j"});
        let kid = issuer.key().kid();
        let plain = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": kid});
        verifier
            .verify(&signed(issuer.key(), plain, &own), NOW)
            .unwrap();

        let idp_key = SigningKey::generate().unwrap();
        let idp_iss = "https://idp.example.com/corp";
        let jwks = serde_json::json!({"keys": [idp_key.jwk()]}).to_string();
        let ext =
            super::super::external::TrustedIssuer::from_jwks(idp_iss, AUD, &jwks, None).unwrap();
        let with_ext = TokenVerifier::with_trusted_issuers(
            issuer.verification_keys(),
            ISS.into(),
            vec![AUD.into()],
            vec![ext],
        );
        let external = serde_json::json!({"iss": idp_iss, "aud": AUD, "sub": "alice",
            "nbf": NOW, "exp": NOW + 600});
        let plain = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": idp_key.kid()});
        let p = with_ext
            .verify(&signed(&idp_key, plain, &external), NOW)
            .unwrap();
        assert_eq!(&*p.id, "alice");

        for crit in [
            serde_json::json!(["b64"]),
            serde_json::json!(["exp"]),
            serde_json::json!([]),
            serde_json::Value::Null,
        ] {
            let h = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": kid, "crit": crit,
                "b64": true, "exp": NOW + 600});
            let token = signed(issuer.key(), h, &own);
            assert_eq!(
                invalid(verifier.verify(&token, NOW)),
                UNSUPPORTED_CRIT,
                "{crit}"
            );
            assert_eq!(
                invalid(with_ext.verify(&token, NOW)),
                UNSUPPORTED_CRIT,
                "{crit}"
            );
            let h = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": idp_key.kid(),
                "crit": crit, "b64": true});
            let token = signed(&idp_key, h, &external);
            assert_eq!(
                invalid(with_ext.verify(&token, NOW)),
                UNSUPPORTED_CRIT,
                "{crit}"
            );
            // The async path (a trusted issuer's unknown `kid` may fetch its keys) refuses it the same way.
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert_eq!(
                invalid(rt.block_on(with_ext.verify_async(&token, NOW))),
                UNSUPPORTED_CRIT
            );
        }
    }

    #[test]
    fn garbage_and_empty() {
        let (_, verifier) = setup();
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        for t in [
            "",
            "garbage",
            "a.b",
            "a.b.c",
            "...",
            "eyJhbGciOiJFUzI1NiJ9..",
            "Bearer x",
            "\u{0}\u{1}",
            "ü.ü.ü",
            long.as_str(),
        ] {
            assert!(verifier.verify(t, NOW).is_err(), "{t:?}");
        }
    }

    #[test]
    fn errors_never_contain_the_token() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("c", "https://other", NOW).unwrap();
        let err = verifier.verify(&token, NOW).unwrap_err();
        let text = format!("{err} {err:?}");
        for part in token.split('.') {
            assert!(!text.contains(part), "{text}");
        }
    }

    #[test]
    fn cache_hits_and_expired_cached_token_is_rejected() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("c", AUD, NOW).unwrap();
        assert_eq!(verifier.cache_len(), 0);
        verifier.verify(&token, NOW).unwrap();
        assert_eq!(verifier.cache_len(), 1);
        // Clones share the cache; a hit gives the same principal.
        let clone = verifier.clone();
        assert_eq!(clone.verify(&token, NOW + 1).unwrap().id, "c".into());
        assert_eq!(verifier.cache_len(), 1);
        // The cache still enforces time.
        assert_eq!(
            invalid(verifier.verify(&token, NOW - 3600)),
            "token not yet valid"
        );
        assert_eq!(verifier.cache_len(), 1);
        let late = NOW + DEFAULT_TOKEN_LIFETIME_SECS + CLOCK_SKEW_SECS;
        assert_eq!(invalid(verifier.verify(&token, late)), "token expired");
        assert_eq!(verifier.cache_len(), 0);
        // Failures are not cached.
        let _ = verifier.verify("x.y.z", NOW);
        assert_eq!(verifier.cache_len(), 0);
    }

    #[test]
    fn tokens_of_a_removed_client_are_refused_even_when_cached() {
        let (issuer, verifier) = setup();
        let clients = Arc::new(crate::auth::ClientRegistry::new());
        clients.ensure("app");
        clients.ensure("other");
        verifier.refuse_local_client_ids(clients.clone());
        let (app, _) = issuer.issue("app", AUD, NOW).unwrap();
        let (other, _) = issuer.issue("other", AUD, NOW).unwrap();
        let (never, _) = issuer.issue("never-existed", AUD, NOW).unwrap();
        assert_eq!(
            invalid(verifier.verify(&never, NOW)),
            "the token's client does not exist"
        );
        verifier.verify(&app, NOW).unwrap();
        verifier.verify(&other, NOW).unwrap();
        assert_eq!(verifier.cache_len(), 2);
        assert!(verifier.verify_cached(app.as_bytes(), NOW).is_some());

        // Removed: its cached token goes at once (the other client's stays), and verifying it again fails.
        assert!(clients.remove("app"));
        assert_eq!(verifier.cache_len(), 1);
        assert!(verifier.verify_cached(app.as_bytes(), NOW).is_none());
        assert_eq!(
            invalid(verifier.verify(&app, NOW)),
            "the token's client does not exist"
        );
        assert!(verifier.verify_cached(other.as_bytes(), NOW).is_some());
        // An id that exists again (here: re-added) is accepted again; tokens do not outlive their client.
        clients.ensure("app");
        assert_eq!(&*verifier.verify(&app, NOW).unwrap().id, "app");
    }

    #[test]
    fn verify_cached_finds_verified_tokens_by_their_bytes() {
        let (issuer, verifier) = setup();
        let (token, _) = issuer.issue("client-1", AUD, NOW).unwrap();
        assert!(verifier.verify_cached(token.as_bytes(), NOW).is_none());
        verifier.verify(&token, NOW).unwrap();
        let p = verifier
            .verify_cached(token.as_bytes(), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(&*p.id, "client-1");
        // One byte off (the signature's last): not cached.
        let mut other = token.clone().into_bytes();
        *other.last_mut().unwrap() ^= 1;
        assert!(verifier.verify_cached(&other, NOW).is_none());
        assert!(verifier.verify_cached(b"\xff\xfe", NOW).is_none());
        // Expired: an error, and the token leaves the cache.
        let late = NOW + DEFAULT_TOKEN_LIFETIME_SECS + CLOCK_SKEW_SECS + 1;
        assert!(matches!(
            verifier.verify_cached(token.as_bytes(), late),
            Some(Err(_))
        ));
        assert!(verifier.verify_cached(token.as_bytes(), NOW).is_none());
        assert_eq!(verifier.cache_len(), 0);
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = Cache::default();
        let principal = || Principal {
            id: "c".into(),
            tenant: "t".into(),
        };
        let token = |prefix: &str, i: u32| format!("{prefix}.{i:08}");
        for i in 0..CACHE_CAPACITY as u32 {
            // Half of them already expired at t=1000.
            let exp = if i % 2 == 0 { 500 } else { 5000 + i64::from(i) };
            cache.insert(&token("a", i), principal(), 0, exp, 0);
        }
        assert_eq!(cache.table.len(), CACHE_CAPACITY);
        assert!(cache.get(token("a", 1).as_bytes()).is_some());
        // Full: inserting at t=1000 purges the expired half.
        cache.insert("b", principal(), 0, 9000, 1000);
        assert_eq!(cache.table.len(), CACHE_CAPACITY / 2 + 1);
        assert_eq!(cache.by_exp.len(), cache.table.len());
        assert!(cache.get(token("a", 0).as_bytes()).is_none());
        assert!(cache.get(token("a", 1).as_bytes()).is_some());
        // Fill again with live entries; the earliest-expiring one goes first.
        let mut i = 0u32;
        while cache.table.len() < CACHE_CAPACITY {
            cache.insert(&token("c", i), principal(), 0, 100_000, 1000);
            i += 1;
        }
        cache.insert("d", principal(), 0, 100_000, 1000);
        assert_eq!(cache.table.len(), CACHE_CAPACITY);
        assert!(
            cache.get(token("a", 1).as_bytes()).is_none(),
            "the earliest expiry went"
        );
        assert!(cache.get(b"d").is_some());
        assert_eq!(cache.by_exp.len(), cache.table.len());
        let bytes: usize = cache.table.iter().map(|e| e.token.len()).sum();
        assert_eq!(cache.bytes, bytes);
    }

    #[test]
    fn cache_is_bounded_in_bytes_and_compares_whole_tokens() {
        let mut cache = Cache::default();
        let principal = |id: &str| Principal {
            id: id.into(),
            tenant: "t".into(),
        };
        // Tokens that share their last bytes (what the hash reads) are still told apart.
        let tail = "x".repeat(CACHE_KEY_TAIL);
        cache.insert(&format!("one.{tail}"), principal("one"), 0, 10, 0);
        cache.insert(&format!("two.{tail}"), principal("two"), 0, 20, 0);
        let get = |c: &Cache, t: &str| c.get(t.as_bytes());
        assert_eq!(&*get(&cache, &format!("one.{tail}")).unwrap().0.id, "one");
        assert_eq!(&*get(&cache, &format!("two.{tail}")).unwrap().0.id, "two");
        assert!(get(&cache, &format!("owe.{tail}")).is_none());
        assert!(get(&cache, &tail).is_none());
        assert!(get(&cache, "").is_none());
        cache.remove(format!("one.{tail}").as_bytes());
        assert!(get(&cache, &format!("one.{tail}")).is_none());
        assert!(get(&cache, &format!("two.{tail}")).is_some());
        // Large tokens: at most CACHE_BYTES of them, the earliest expiry evicted first.
        let big = |i: usize| format!("{i:04}{}", "y".repeat(64 * 1024));
        let n = CACHE_BYTES / big(0).len();
        for i in 0..n + 3 {
            cache.insert(&big(i), principal("big"), 0, 1000 + i as i64, 0);
        }
        assert!(cache.bytes <= CACHE_BYTES, "{}", cache.bytes);
        assert!(get(&cache, &big(0)).is_none());
        assert!(get(&cache, &big(n + 2)).is_some());
        let bytes: usize = cache.table.iter().map(|e| e.token.len()).sum();
        assert_eq!(cache.bytes, bytes);
        assert_eq!(cache.by_exp.len(), cache.table.len());
    }
}
