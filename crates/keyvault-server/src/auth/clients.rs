//! Known OAuth2 clients and their secrets, stored as argon2id PHC hashes (several per client, for rotation).
//!
//! Successful verifications are remembered (bounded, [`VERIFIED_CAPACITY`]) under an HMAC-SHA256, keyed by a
//! random per-process key, of (client id, secret, stored hash): a client that asks for tokens again with
//! the same secret costs a few hashes instead of an argon2 run. Neither the secret nor anything
//! brute-forceable without the in-memory key is kept. A remembered verification only counts while its
//! stored hash is still one of the client's (the lookup goes through the client's current secrets, and
//! removing a secret or a client also forgets its entries), and the secret's expiry is checked on every
//! use. Failed verifications are never remembered (and unknown clients always pay the dummy argon2 run).
//!
//! A secret made by the admin API starts with a *selector* (see [`generate_selected_secret`]) kept next to its
//! hash, so a secret is checked against one hash only, whatever the number of the client's secrets (up to 16):
//! a wrong secret costs one argon2 run, as for an unknown client, and the time of a failure says nothing about
//! how many secrets a client has. Secrets without a selector (configured `secret_hashes` and `secrets`, the dev
//! client's, and admin-API secrets made before selectors) are still accepted by trying each such hash in turn:
//! a failed attempt then costs one run per selector-less hash of the client — at most 16 for a principal of the
//! admin API (its limit of secrets), as many as the configuration lists for a configured client. Rotating an
//! old secret (add a new one, remove the old) brings an admin-API principal down to one run.
//!
//! At most one argon2 verification runs per core (each takes ~19 MiB and a core for tens of milliseconds),
//! and at most [`QUEUE_PER_PERMIT`] per core wait for their turn. Places in that line (running or waiting)
//! are shared out by *who asks*: requests naming a client id that has no secret here (an unknown id, or a
//! client with certificates or federated credentials only) share [`UNKNOWN_CLIENT_PLACES`] places between
//! them, and each client id with a secret has [`CLIENT_PLACES`] of its own. A request that finds its
//! allowance (or the whole line) full is answered [`Verdict::Busy`] at once by
//! [`ClientRegistry::verify_async_at`] (the token endpoint's 503 `temporarily_unavailable`). So a flood of
//! wrong secrets for made-up client ids holds a few places at most and cannot keep a client that has a secret
//! from a place; a flood naming one client id can crowd out that id's own requests only (until the whole line
//! is full, which takes floods naming several ids). Both allowances are the same size, so without other
//! traffic a caller's own concurrency gets the same answers for a known id and an unknown one; under a flood of
//! unknown ids, whether a request naming an id is answered 503 at once tells whether the id has a secret.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::AuthError;

/// Secrets longer than this are refused without hashing.
const MAX_SECRET_LEN: usize = 1024;

/// Most remembered successful verifications (see the module documentation).
pub const VERIFIED_CAPACITY: usize = 4096;

/// A hash of a random, discarded secret with the same parameters as [`hash_secret`]: verifying an unknown
/// client's secret against it costs what verifying a known client's does, so timing does not tell which
/// client ids exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ir5MaFNRHOeaP0vPvSVQDA$wSNfvJRTHpN2iKCdVOIz1SGYCY2q66vvm9eWyKi+8DI";

/// Hashes a client secret with argon2id (default parameters: m=19 MiB, t=2, p=1) and a random salt; returns
/// the PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
pub fn hash_secret(secret: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AuthError::Hash)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| AuthError::Hash)?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hash)
}

/// A new client secret: 32 random bytes, base64url without padding (43 characters).
pub fn generate_secret() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    fill_random(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(&bytes[..])
}

/// How many characters a secret's selector has (base64url: 48 random bits, so that two secrets of one client
/// practically never share one).
pub const SELECTOR_LEN: usize = 8;

/// Ends the selector at the start of a secret. Not a base64url character, so a secret of the old format (43
/// base64url characters) never looks like it has a selector.
const SELECTOR_END: u8 = b'~';

/// A new client secret for the admin API, and its selector: `{selector}~{secret}`, where the selector is
/// [`SELECTOR_LEN`] random base64url characters and `secret` is [`generate_secret`]'s 32 random bytes. The
/// selector is not secret (it is stored in the clear next to the hash): it only says which of the client's
/// hashes to check (see the module documentation); the 32 bytes after it are what must be guessed.
pub fn generate_selected_secret() -> (String, Zeroizing<String>) {
    let mut bytes = [0u8; SELECTOR_LEN * 3 / 4];
    fill_random(&mut bytes);
    let selector = URL_SAFE_NO_PAD.encode(bytes);
    let secret = Zeroizing::new(format!(
        "{selector}{}{}",
        SELECTOR_END as char,
        generate_secret().as_str()
    ));
    (selector, secret)
}

/// Whether `s` can be a selector: [`SELECTOR_LEN`] base64url characters.
pub fn is_selector(s: &str) -> bool {
    s.len() == SELECTOR_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The selector a presented secret starts with, if it has the shape of [`generate_selected_secret`]'s.
fn selector_of(secret: &str) -> Option<&str> {
    let selector = secret.get(..SELECTOR_LEN)?;
    (is_selector(selector) && secret.as_bytes().get(SELECTOR_LEN) == Some(&SELECTOR_END))
        .then_some(selector)
}

/// A new client id shaped like Entra's: a random (version 4) UUID, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
pub fn generate_client_id() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    uuid_text(b, 0x40)
}

/// The id of a role assignment made by the configuration (`[[assignments]]`, `dev_client_role`): a version 8
/// (name-based, SHA-256) UUID of what it assigns, so that it is the same at every start and on every node
/// reading the same configuration (a random one changed at each start, so ids recorded from `role list` led
/// nowhere afterwards).
pub fn configured_assignment_id(principal: &str, role: &str, scope: &str) -> String {
    let mut input = Vec::with_capacity(32 + principal.len() + role.len() + scope.len());
    for part in ["keyvault configured assignment", principal, role, scope] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part.as_bytes());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    uuid_text(b, 0x80)
}

/// `b` as UUID text, with its version nibble set to `version` (`0x40`, `0x80`) and the RFC 9562 variant.
fn uuid_text(mut b: [u8; 16], version: u8) -> String {
    b[6] = (b[6] & 0x0f) | version;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing is not something a server can continue past.
    SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random number generator failed");
}

/// One stored client secret: its argon2 PHC hash and optional expiry.
#[derive(Clone, PartialEq, Eq)]
struct StoredSecret {
    hash: String,
    /// Unix seconds after which the secret is refused.
    expires_on: Option<i64>,
    /// The selector the secret starts with, if it was made with one ([`generate_selected_secret`]).
    selector: Option<String>,
}

/// What may be shown about a client secret: never the secret or its hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// A stable id of the secret (the first 16 hex digits of the SHA-256 of its hash).
    pub key_id: String,
    /// Unix seconds; `None` = never expires.
    pub expires_on: Option<i64>,
}

/// The id of a stored secret: derived from its hash (which is salted), so it says nothing about the secret.
pub fn key_id_of(phc_hash: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, phc_hash.as_bytes());
    hex::encode(&digest.as_ref()[..8])
}

/// The result of checking a client secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// The secret matches, but it has expired.
    Expired,
    /// Unknown client, or no matching secret.
    Invalid,
    /// Not checked: too many verifications are running and waiting (retry shortly).
    Busy,
}

/// How many verifications may wait for each one that runs (see the module documentation).
pub const QUEUE_PER_PERMIT: usize = 4;

/// Places in the line shared by every request naming a client id without a secret (see the module
/// documentation): such a request only runs the dummy hash (which accepts nothing, and is there so that a
/// failure takes as long as a known client's), so one running and two waiting are plenty, and they are all a
/// flood of made-up ids can hold.
pub const UNKNOWN_CLIENT_PLACES: usize = 3;

/// Places in the line of each client id that has a secret: as many as the unknown ids' (so that a caller's
/// own concurrency does not tell the two apart), enough for a few instances of one application starting at
/// once (the first verified secret is remembered and skips the line after), and few enough that a flood
/// naming one id leaves the rest of the line to the others.
pub const CLIENT_PLACES: usize = 3;

/// Who a place in the line is held for: a client id with a secret, or `None` for every other id.
type Group = Option<String>;

/// The places held in the line (running or waiting for a permit), in all and by group.
#[derive(Default)]
struct Line {
    total: usize,
    /// Only groups that hold a place (at most one entry per place).
    held: HashMap<Group, usize>,
}

/// A place in the line; given back when dropped (after the hashing ends, or when a waiter is dropped).
struct Place {
    registry: Arc<ClientRegistry>,
    group: Group,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut line = self
            .registry
            .line
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        line.total = line.total.saturating_sub(1);
        if let Some(n) = line.held.get_mut(&self.group) {
            *n -= 1;
            if *n == 0 {
                line.held.remove(&self.group);
            }
        }
    }
}

/// Counts a waiter while it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Called with a client's id after the client is removed.
pub(crate) type RemovalHook = Box<dyn Fn(&str) + Send + Sync>;

/// The OAuth2 clients this server knows: client id → argon2 PHC hashes of its secrets (each with an optional
/// expiry). Shareable (`Arc`) and mutable at run time. `Debug` shows client ids and secret counts only.
pub struct ClientRegistry {
    clients: RwLock<HashMap<String, Vec<StoredSecret>>>,
    /// Bounds concurrent argon2 verifications (each takes ~19 MiB and a core for tens of milliseconds).
    limiter: Arc<Semaphore>,
    /// `limiter`'s permits (one per core, at most 16).
    permits: usize,
    /// Verifications waiting for a permit of `limiter`, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Places in the line (running or waiting), shared out by who asks (see the module documentation);
    /// at most `limiter`'s permits + `max_waiting` in all.
    line: Mutex<Line>,
    /// Remembered successful verifications: tag → client id.
    verified: Mutex<HashMap<[u8; 32], String>>,
    /// The key of the tags (random, never leaves the process).
    verified_key: ring::hmac::Key,
    /// How many clients have been removed: lets a check that a client exists tell whether a removal ran
    /// while it was using the answer (see [`removals`](Self::removals)).
    removals: AtomicU64,
    /// Run after each removal (the token verifier forgets the client's cached tokens).
    on_removed: Mutex<Vec<RemovalHook>>,
    /// argon2 verifications run (tests count them: the cost of a failed attempt is the point).
    #[cfg(test)]
    argon2_runs: AtomicUsize,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::with_permits(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
    }

    /// An empty registry that runs at most `permits` argon2 verifications at once (one per core).
    fn with_permits(permits: usize) -> Self {
        let permits = permits.clamp(1, 16);
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(&mut key[..]);
        Self {
            clients: RwLock::new(HashMap::new()),
            limiter: Arc::new(Semaphore::new(permits)),
            permits,
            waiting: AtomicUsize::new(0),
            max_waiting: permits * QUEUE_PER_PERMIT,
            line: Mutex::new(Line::default()),
            verified: Mutex::new(HashMap::new()),
            verified_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key[..]),
            removals: AtomicU64::new(0),
            on_removed: Mutex::new(Vec::new()),
            #[cfg(test)]
            argon2_runs: AtomicUsize::new(0),
        }
    }

    /// Runs `hook` with the client's id after every removal of a client.
    pub(crate) fn on_removed(&self, hook: RemovalHook) {
        self.on_removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    /// A counter that grows with every removal of a client (bumped before the removal hooks run). Read it
    /// before [`contains`](Self::contains) and again after keeping something that relies on the answer: if it
    /// changed, a removal may have run in between, and what was kept may be stale.
    pub(crate) fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    /// The tag under which a successful verification of `secret` against `phc_hash` is remembered.
    fn tag(&self, client_id: &str, secret: &str, phc_hash: &str) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.verified_key);
        // Length-prefixed, so that no two different triples feed the same bytes.
        for part in [client_id, secret, phc_hash] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Remembers a successful verification of `phc_hash`, if the client still has that hash (checked under
    /// the clients' lock, so a removal that ran meanwhile wins).
    fn remember(&self, client_id: &str, phc_hash: &str, tag: [u8; 32]) {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        if !clients
            .get(client_id)
            .is_some_and(|secrets| secrets.iter().any(|s| s.hash == phc_hash))
        {
            return;
        }
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CAPACITY && !verified.contains_key(&tag) {
            // Full: drop an arbitrary entry (its client pays one argon2 run next time).
            if let Some(victim) = verified.keys().next().copied() {
                verified.remove(&victim);
            }
        }
        verified.insert(tag, client_id.to_owned());
    }

    fn forget_client(&self, client_id: &str) {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, c| c != client_id);
    }

    /// The verdict for a remembered verification of `secret` among `secrets`, if there is one.
    fn remembered(
        &self,
        client_id: &str,
        secret: &str,
        secrets: &[StoredSecret],
        now: i64,
    ) -> Option<Verdict> {
        if secrets.is_empty() {
            return None;
        }
        let tags: Vec<[u8; 32]> = secrets
            .iter()
            .map(|s| self.tag(client_id, secret, &s.hash))
            .collect();
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let i = tags.iter().position(|t| verified.contains_key(t))?;
        Some(if secrets[i].expires_on.is_some_and(|exp| now >= exp) {
            Verdict::Expired
        } else {
            Verdict::Valid
        })
    }

    /// The client's current secrets (a copy, so that no lock is held while hashing).
    fn secrets_of(&self, client_id: &str) -> Vec<StoredSecret> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Adds a secret hash (a PHC string from [`hash_secret`]) to `client_id`, creating the client if needed.
    /// Fails if the hash is not a valid argon2 PHC string.
    pub fn add(
        &self,
        client_id: impl Into<String>,
        phc_hash: impl Into<String>,
    ) -> Result<(), AuthError> {
        self.add_with_expiry(client_id, phc_hash, None)
    }

    /// [`add`](Self::add) with an expiry (unix seconds): after it, the secret is refused. Adding a hash that
    /// is already there updates its expiry.
    pub fn add_with_expiry(
        &self,
        client_id: impl Into<String>,
        phc_hash: impl Into<String>,
        expires_on: Option<i64>,
    ) -> Result<(), AuthError> {
        self.add_selected(client_id, phc_hash, expires_on, None)
    }

    /// [`add_with_expiry`](Self::add_with_expiry) for a secret that starts with `selector` (from
    /// [`generate_selected_secret`]): only a secret carrying that selector is checked against this hash.
    /// Fails if the selector is not [`SELECTOR_LEN`] base64url characters.
    pub fn add_selected(
        &self,
        client_id: impl Into<String>,
        phc_hash: impl Into<String>,
        expires_on: Option<i64>,
        selector: Option<String>,
    ) -> Result<(), AuthError> {
        let client_id = client_id.into();
        let phc_hash = phc_hash.into();
        if !is_argon2_phc(&phc_hash) || selector.as_deref().is_some_and(|s| !is_selector(s)) {
            return Err(AuthError::InvalidHash(client_id));
        }
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let secrets = clients.entry(client_id).or_default();
        match secrets.iter_mut().find(|s| s.hash == phc_hash) {
            Some(existing) => {
                existing.expires_on = expires_on;
                existing.selector = selector;
            }
            None => secrets.push(StoredSecret {
                hash: phc_hash,
                expires_on,
                selector,
            }),
        }
        Ok(())
    }

    /// Adds a client with no secrets (it cannot get tokens until it has one). No change if it exists.
    pub fn ensure(&self, client_id: impl Into<String>) {
        self.clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(client_id.into())
            .or_default();
    }

    /// Removes one secret hash of a client; the client stays (possibly with no secrets). Returns whether it
    /// was there.
    pub fn remove_secret(&self, client_id: &str, phc_hash: &str) -> bool {
        self.remove_secret_where(client_id, |s| s.hash == phc_hash)
    }

    /// Removes the secret with this [`key_id_of`] id. Returns whether it was there.
    pub fn remove_secret_by_key_id(&self, client_id: &str, key_id: &str) -> bool {
        self.remove_secret_where(client_id, |s| key_id_of(&s.hash) == key_id)
    }

    fn remove_secret_where(&self, client_id: &str, f: impl Fn(&StoredSecret) -> bool) -> bool {
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let removed = match clients.get_mut(client_id) {
            Some(secrets) => {
                let before = secrets.len();
                secrets.retain(|s| !f(s));
                secrets.len() != before
            }
            None => false,
        };
        if removed {
            // Entries of the removed hash could no longer match anyway (lookups go through the current
            // hashes); forget the client's entries so that none outlives the secret. Done under the
            // clients' lock, which `remember` also holds: no verification in flight can re-add one.
            self.forget_client(client_id);
        }
        removed
    }

    /// The client's secrets (ids and expiries), or `None` for an unknown client.
    pub fn secrets(&self, client_id: &str) -> Option<Vec<SecretInfo>> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client_id)
            .map(|secrets| {
                secrets
                    .iter()
                    .map(|s| SecretInfo {
                        key_id: key_id_of(&s.hash),
                        expires_on: s.expires_on,
                    })
                    .collect()
            })
    }

    /// Removes a client and all its secrets. Returns whether it existed.
    pub fn remove(&self, client_id: &str) -> bool {
        let removed = {
            let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
            let removed = clients.remove(client_id).is_some();
            self.forget_client(client_id);
            if removed {
                self.removals.fetch_add(1, Ordering::SeqCst);
            }
            removed
        };
        if removed {
            for hook in self
                .on_removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                hook(client_id);
            }
        }
        removed
    }

    /// Whether `client_id` is known.
    pub fn contains(&self, client_id: &str) -> bool {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(client_id)
    }

    /// The known client ids, sorted.
    pub fn client_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Checks `secret` against the client's hashes, ignoring expiry (see [`verify_at`](Self::verify_at)).
    pub fn verify(&self, client_id: &str, secret: &str) -> bool {
        self.verify_at(client_id, secret, i64::MIN) == Verdict::Valid
    }

    /// Checks `secret` against the client's hashes (argon2 verification; the final comparison is
    /// constant-time) at unix time `now`: a matching secret past its expiry is [`Verdict::Expired`]. A secret
    /// that carries the selector of one of the client's hashes is checked against that hash only; any other
    /// against each hash without a selector (see the module documentation). When there is nothing to check
    /// against (an unknown client, one without secrets, a selector-shaped secret matching none of a client
    /// whose secrets all have selectors), a dummy hash is checked, so that it costs the same time as one hash.
    /// This is CPU-heavy (tens of milliseconds per hash) unless the same secret was verified recently (see the
    /// module documentation): call it from a blocking thread.
    pub fn verify_at(&self, client_id: &str, secret: &str, now: i64) -> Verdict {
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Verdict::Invalid;
        }
        let secrets = self.secrets_of(client_id);
        if let Some(verdict) = self.remembered(client_id, secret, &secrets, now) {
            return verdict;
        }
        let selected = selector_of(secret)
            .and_then(|sel| secrets.iter().find(|s| s.selector.as_deref() == Some(sel)));
        let candidates: Vec<&StoredSecret> = match selected {
            Some(s) => vec![s],
            None => secrets.iter().filter(|s| s.selector.is_none()).collect(),
        };
        if candidates.is_empty() {
            self.argon2_matches(secret, DUMMY_HASH);
            return Verdict::Invalid;
        }
        let matching = candidates
            .into_iter()
            .find(|s| self.argon2_matches(secret, &s.hash));
        let Some(s) = matching else {
            return Verdict::Invalid;
        };
        self.remember(client_id, &s.hash, self.tag(client_id, secret, &s.hash));
        if s.expires_on.is_some_and(|exp| now >= exp) {
            Verdict::Expired
        } else {
            Verdict::Valid
        }
    }
}

impl ClientRegistry {
    /// One argon2 verification of `secret` against `phc_hash` (the only place one runs).
    fn argon2_matches(&self, secret: &str, phc_hash: &str) -> bool {
        #[cfg(test)]
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        PasswordHash::new(phc_hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok()
        })
    }

    /// [`verify`](Self::verify) on a blocking thread, with at most one verification per core at a time and
    /// [`QUEUE_PER_PERMIT`] per core waiting, shared out by who asks (the rest are refused, [`Verdict::Busy`];
    /// see the module documentation), so a burst of token requests can neither stall the async runtime, nor
    /// exhaust memory, nor make the next caller wait long, and made-up client ids cannot take every place.
    pub async fn verify_async(self: &Arc<Self>, client_id: &str, secret: &str) -> bool {
        self.verify_async_at(client_id, secret, i64::MIN).await == Verdict::Valid
    }

    /// [`verify_at`](Self::verify_at) on a blocking thread, like [`verify_async`](Self::verify_async).
    pub async fn verify_async_at(
        self: &Arc<Self>,
        client_id: &str,
        secret: &str,
        now: i64,
    ) -> Verdict {
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Verdict::Invalid;
        }
        // A remembered verification costs a few hashes: no need for a place in the line.
        let secrets = self.secrets_of(client_id);
        if let Some(verdict) = self.remembered(client_id, secret, &secrets, now) {
            return verdict;
        }
        // A place in the line of whoever is named, or none at all.
        let group = (!secrets.is_empty()).then(|| client_id.to_owned());
        let Some(place) = self.take_place(group) else {
            return Verdict::Busy;
        };
        let permit = match self.limiter.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Verdict::Invalid,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // Wait for a turn (first come, first served: the semaphore is fair).
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let _waiting = Waiting(&self.waiting);
                let Ok(permit) = self.limiter.clone().acquire_owned().await else {
                    return Verdict::Invalid;
                };
                permit
            }
        };
        let this = Arc::clone(self);
        let client_id = client_id.to_owned();
        let secret = Zeroizing::new(secret.to_owned());
        // The permit and the place move into the task: they are held until the hashing ends, even if this
        // future is dropped.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _place = place;
            this.verify_at(&client_id, &secret, now)
        })
        .await
        .unwrap_or(Verdict::Invalid)
    }

    /// A place in the line for `group`, if its allowance and the line have room.
    fn take_place(self: &Arc<Self>, group: Group) -> Option<Place> {
        let allowance = match group {
            Some(_) => CLIENT_PLACES,
            None => UNKNOWN_CLIENT_PLACES,
        };
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        let held = line.held.get(&group).copied().unwrap_or(0);
        if held >= allowance || line.total >= self.permits + self.max_waiting {
            return None;
        }
        line.total += 1;
        *line.held.entry(group.clone()).or_default() += 1;
        Some(Place {
            registry: Arc::clone(self),
            group,
        })
    }
}

impl ClientRegistry {
    /// For tests: takes every verification permit (verifications that need argon2 wait, or are refused
    /// once the line is full, until the result is dropped).
    #[doc(hidden)]
    pub async fn hold_verifications(&self) -> tokio::sync::OwnedSemaphorePermit {
        let all = self.limiter.available_permits().max(1) as u32;
        self.limiter
            .clone()
            .acquire_many_owned(all)
            .await
            .expect("the limiter is never closed")
    }

    /// For tests: how many verifications wait for a permit, and how many may (with every permit free).
    #[doc(hidden)]
    pub fn waiting_verifications(&self) -> (usize, usize) {
        (self.waiting.load(Ordering::Relaxed), self.max_waiting)
    }

    /// For tests: how many places in the line are held (running or waiting), and how many there are.
    #[doc(hidden)]
    pub fn places_in_line(&self) -> (usize, usize) {
        let line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        (line.total, self.permits + self.max_waiting)
    }
}

impl fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        let mut summary: Vec<(&String, usize)> =
            clients.iter().map(|(id, h)| (id, h.len())).collect();
        summary.sort();
        f.debug_struct("ClientRegistry")
            .field("clients", &summary)
            .finish()
    }
}

fn is_argon2_phc(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Algorithm::try_from(parsed.algorithm).is_ok()
        && Params::try_from(&parsed).is_ok()
        && parsed.hash.is_some()
}

/// A valid hash whose secret nobody knows, for tests elsewhere that need many hashes without hashing.
#[cfg(test)]
pub(crate) fn tests_dummy_hash() -> &'static str {
    DUMMY_HASH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_right_wrong_unknown_and_rotation() {
        let registry = ClientRegistry::new();
        let id = generate_client_id();
        let secret = generate_secret();
        let hash = hash_secret(&secret).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!hash.contains(&secret));
        registry.add(&id, hash.clone()).unwrap();
        assert!(registry.contains(&id));

        assert!(registry.verify(&id, &secret));
        assert!(!registry.verify(&id, "wrong"));
        assert!(!registry.verify(&id, ""));
        assert!(!registry.verify("unknown-client", &secret));

        // A second secret (rotation): both work until the first is removed. The dummy hash serves as a
        // ready-made second hash (its secret is unknown), so only check add/remove bookkeeping with it.
        registry.add(&id, DUMMY_HASH).unwrap();
        assert!(registry.verify(&id, &secret));
        assert!(registry.remove_secret(&id, &hash));
        assert!(!registry.verify(&id, &secret));
        assert!(registry.remove(&id));
        assert!(!registry.contains(&id));

        let debug = format!("{registry:?}");
        assert!(!debug.contains("argon2"), "{debug}");
    }

    #[test]
    fn expired_secrets_are_refused_and_listed_without_hashes() {
        let registry = ClientRegistry::new();
        let secret = generate_secret();
        let hash = hash_secret(&secret).unwrap();
        registry
            .add_with_expiry("c", hash.clone(), Some(1_000))
            .unwrap();
        assert_eq!(registry.verify_at("c", &secret, 999), Verdict::Valid);
        assert_eq!(registry.verify_at("c", &secret, 1_000), Verdict::Expired);
        assert_eq!(registry.verify_at("c", "wrong", 1_000), Verdict::Invalid);
        let info = registry.secrets("c").unwrap();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].key_id, key_id_of(&hash));
        assert_eq!(info[0].expires_on, Some(1_000));
        assert!(registry.secrets("nope").is_none());
        assert!(registry.remove_secret_by_key_id("c", &info[0].key_id));
        assert_eq!(registry.verify_at("c", &secret, 0), Verdict::Invalid);
        assert!(registry.contains("c"));
    }

    fn remembered_len(registry: &ClientRegistry) -> usize {
        registry.verified.lock().unwrap().len()
    }

    #[test]
    fn successful_verifications_are_remembered_until_the_secret_goes() {
        let registry = ClientRegistry::new();
        let secret = generate_secret();
        let hash = hash_secret(&secret).unwrap();
        registry
            .add_with_expiry("c", hash.clone(), Some(1_000))
            .unwrap();
        assert_eq!(registry.verify_at("c", "wrong", 0), Verdict::Invalid);
        assert_eq!(remembered_len(&registry), 0, "failures are not remembered");
        assert_eq!(registry.verify_at("c", &secret, 0), Verdict::Valid);
        assert_eq!(remembered_len(&registry), 1);
        let tag = registry.tag("c", &secret, &hash);
        assert!(registry.verified.lock().unwrap().contains_key(&tag));
        // A hit answers without argon2, and still checks the expiry.
        let secrets = registry.secrets_of("c");
        assert_eq!(
            registry.remembered("c", &secret, &secrets, 999),
            Some(Verdict::Valid)
        );
        assert_eq!(registry.verify_at("c", &secret, 1_000), Verdict::Expired);
        assert_eq!(registry.remembered("c", "wrong", &secrets, 0), None);
        assert_eq!(registry.remembered("other", &secret, &secrets, 0), None);
        // Removing the secret forgets it; a remembered entry cannot revive it.
        assert!(registry.remove_secret("c", &hash));
        assert_eq!(remembered_len(&registry), 0);
        assert_eq!(registry.verify_at("c", &secret, 0), Verdict::Invalid);
        // Re-added, verified, then the client removed: forgotten again.
        registry.add("c", hash.clone()).unwrap();
        assert_eq!(registry.verify_at("c", &secret, 0), Verdict::Valid);
        assert_eq!(remembered_len(&registry), 1);
        assert!(registry.remove("c"));
        assert_eq!(remembered_len(&registry), 0);
        assert_eq!(registry.verify_at("c", &secret, 0), Verdict::Invalid);
    }

    #[tokio::test]
    async fn remembered_verifications_skip_the_blocking_pool() {
        let registry = Arc::new(ClientRegistry::new());
        let secret = generate_secret();
        let hash = hash_secret(&secret).unwrap();
        registry.add("c", hash.clone()).unwrap();
        assert!(registry.verify_async("c", &secret).await);
        // With every blocking-pool permit taken, a remembered secret is still verified (no argon2 run).
        let permits = registry
            .limiter
            .clone()
            .acquire_many_owned(registry.limiter.available_permits() as u32)
            .await
            .unwrap();
        let hit = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            registry.verify_async("c", &secret),
        )
        .await;
        assert_eq!(hit, Ok(true), "answered from memory, without a permit");
        drop(permits);
        // Remove by key id: the remembered entry goes with it.
        assert!(registry.remove_secret_by_key_id("c", &key_id_of(&hash)));
        assert!(!registry.verify_async("c", &secret).await);
        assert_eq!(remembered_len(&registry), 0);
    }

    /// Starts a verification of `secret` for `client_id` that waits in the line (the caller holds every
    /// permit), and returns once it waits.
    async fn waiter(
        registry: &Arc<ClientRegistry>,
        client_id: &str,
        secret: &str,
    ) -> tokio::task::JoinHandle<Verdict> {
        let before = registry.waiting_verifications().0;
        let (r, id, secret) = (registry.clone(), client_id.to_owned(), secret.to_owned());
        let task = tokio::spawn(async move { r.verify_async_at(&id, &secret, 0).await });
        while registry.waiting_verifications().0 == before {
            assert!(!task.is_finished(), "{client_id} was not let into the line");
            tokio::task::yield_now().await;
        }
        task
    }

    /// The verdict of `verify_async_at` if it answers on its first poll (a refusal must not wait in the line;
    /// one that does fails here instead of hanging).
    fn at_once(registry: &Arc<ClientRegistry>, client_id: &str, secret: &str) -> Option<Verdict> {
        use futures_util::FutureExt;
        registry
            .verify_async_at(client_id, secret, 0)
            .now_or_never()
    }

    /// Made-up client ids share a few places; each client id with a secret has its own (the argon2 audit:
    /// a flood of wrong secrets for random ids kept every legitimate first request out).
    #[tokio::test]
    async fn places_in_the_line_are_shared_out_by_who_asks() {
        let registry = Arc::new(ClientRegistry::with_permits(2));
        let (c, d) = (generate_secret(), generate_secret());
        registry.add("c", hash_secret(&c).unwrap()).unwrap();
        registry.add("d", hash_secret(&d).unwrap()).unwrap();
        registry.ensure("no-secret");
        let held = registry.hold_verifications().await;

        // The made-up ids' allowance fills; then any id without a secret is refused at once, a known client
        // without a secret too (its check could only run the dummy hash).
        let mut unknown = Vec::new();
        for i in 0..UNKNOWN_CLIENT_PLACES {
            unknown.push(waiter(&registry, &format!("x{i}"), "wrong").await);
        }
        for id in ["x-next", "no-secret"] {
            assert_eq!(at_once(&registry, id, "wrong"), Some(Verdict::Busy), "{id}");
        }
        // A client with a secret still gets a place, and so do wrong secrets naming it, up to its allowance;
        // then its own requests are refused (the right secret too), while another client's are not.
        let mut flood_c = Vec::new();
        for _ in 0..CLIENT_PLACES {
            flood_c.push(waiter(&registry, "c", "wrong").await);
        }
        assert_eq!(at_once(&registry, "c", &c), Some(Verdict::Busy));
        let right_d = waiter(&registry, "d", &d).await;
        assert_eq!(
            registry.places_in_line().0,
            UNKNOWN_CLIENT_PLACES + CLIENT_PLACES + 1
        );

        drop(held);
        for w in unknown.into_iter().chain(flood_c) {
            assert_eq!(w.await.unwrap(), Verdict::Invalid);
        }
        assert_eq!(right_d.await.unwrap(), Verdict::Valid);
        assert_eq!(registry.places_in_line().0, 0);
        assert!(registry.line.lock().unwrap().held.is_empty());
        assert_eq!(registry.verify_async_at("c", &c, 0).await, Verdict::Valid);
    }

    /// The whole line stays bounded as before (one running and four waiting per core): floods naming several
    /// known ids fill it, and then every request that needs a check is refused at once.
    #[tokio::test]
    async fn the_whole_line_is_bounded_and_a_full_line_answers_busy_at_once() {
        let registry = Arc::new(ClientRegistry::with_permits(1));
        let (_, max) = registry.places_in_line();
        assert_eq!(max, 1 + QUEUE_PER_PERMIT);
        let secret = generate_secret();
        let ids: Vec<String> = (0..max.div_ceil(CLIENT_PLACES) + 1)
            .map(|i| format!("c{i}"))
            .collect();
        let hash = hash_secret(&secret).unwrap();
        for id in &ids {
            registry.add(id, hash.clone()).unwrap();
        }
        let held = registry.hold_verifications().await;
        let mut waiters = Vec::new();
        for i in 0..max {
            waiters.push(waiter(&registry, &ids[i / CLIENT_PLACES], "wrong").await);
        }
        assert_eq!(registry.places_in_line(), (max, max));
        // Full: the right secret of a client with room in its own allowance is not checked, nor is an unknown
        // id, and the answer does not wait for the line.
        let last = ids.last().unwrap();
        assert_eq!(at_once(&registry, last, &secret), Some(Verdict::Busy));
        assert_eq!(at_once(&registry, "unknown", "wrong"), Some(Verdict::Busy));
        drop(held);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Verdict::Invalid);
        }
        assert_eq!(registry.places_in_line().0, 0);
        assert_eq!(
            registry.verify_async_at(last, &secret, 0).await,
            Verdict::Valid
        );
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_line() {
        let registry = Arc::new(ClientRegistry::new());
        let held = registry.hold_verifications().await;
        let r = registry.clone();
        let waiter = tokio::spawn(async move { r.verify_async_at("x", "wrong", 0).await });
        while registry.waiting_verifications().0 < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(registry.places_in_line().0, 1);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(registry.waiting_verifications().0, 0);
        assert_eq!(registry.places_in_line().0, 0);
        drop(held);
    }

    /// How many argon2 runs `f` made.
    fn runs(registry: &ClientRegistry, f: impl FnOnce()) -> usize {
        let before = registry.argon2_runs.load(Ordering::Relaxed);
        f();
        registry.argon2_runs.load(Ordering::Relaxed) - before
    }

    #[test]
    fn a_failed_attempt_costs_one_argon2_run_whatever_the_number_of_secrets() {
        let registry = ClientRegistry::new();
        // 16 secrets made the admin API's way (its limit per principal).
        let made: Vec<(String, Zeroizing<String>)> = (0..16)
            .map(|_| {
                let (selector, secret) = generate_selected_secret();
                let hash = hash_secret(&secret).unwrap();
                registry
                    .add_selected("c", hash, None, Some(selector.clone()))
                    .unwrap();
                (selector, secret)
            })
            .collect();
        // A wrong secret with a valid-looking (even a real) selector: one run; so is any other wrong secret,
        // and an unknown client.
        let (sel, _) = &made[7];
        let wrong = format!("{sel}~{}", generate_secret());
        for attempt in [wrong.as_str(), "AAAAAAAA~nope", "no-selector", "x"] {
            let n = runs(&registry, || {
                assert_eq!(registry.verify_at("c", attempt, 0), Verdict::Invalid)
            });
            assert_eq!(n, 1, "{attempt}");
        }
        let n = runs(&registry, || {
            assert_eq!(registry.verify_at("unknown", &wrong, 0), Verdict::Invalid)
        });
        assert_eq!(n, 1);
        // Every one of the 16 is accepted, each for one run (then remembered: none).
        for (_, secret) in &made {
            assert_eq!(runs(&registry, || assert!(registry.verify("c", secret))), 1);
            assert_eq!(runs(&registry, || assert!(registry.verify("c", secret))), 0);
        }
    }

    #[test]
    fn secrets_without_a_selector_are_still_accepted() {
        let registry = ClientRegistry::new();
        // A configured (or pre-selector) secret, which may even look like it has a selector, next to a new one.
        let old = "abcdefgh~configured-by-hand";
        registry.add("c", hash_secret(old).unwrap()).unwrap();
        registry.add("c", hash_secret("plain").unwrap()).unwrap();
        let (selector, new) = generate_selected_secret();
        registry
            .add_selected("c", hash_secret(&new).unwrap(), None, Some(selector))
            .unwrap();
        assert!(registry.verify("c", old));
        assert!(registry.verify("c", "plain"));
        assert!(registry.verify("c", &new));
        // A wrong secret tries the selector-less hashes (two here), never the selected one.
        assert_eq!(
            runs(&registry, || assert!(!registry.verify("c", "wrong"))),
            2
        );
        assert!(
            registry
                .add_selected("c", DUMMY_HASH, None, Some("bad!".into()))
                .is_err()
        );
    }

    #[test]
    fn add_rejects_non_argon2_hashes() {
        let registry = ClientRegistry::new();
        for bad in [
            "",
            "plaintext",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
        ] {
            assert!(registry.add("c", bad).is_err(), "{bad}");
        }
        assert!(registry.client_ids().is_empty());
    }

    #[test]
    fn dummy_hash_uses_the_same_parameters_as_hash_secret() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&dummy).unwrap();
        let default = Params::default();
        assert_eq!(dummy.algorithm, Algorithm::Argon2id.ident());
        assert_eq!(params.m_cost(), default.m_cost());
        assert_eq!(params.t_cost(), default.t_cost());
        assert_eq!(params.p_cost(), default.p_cost());
        assert_eq!(params.output_len(), Some(32));
    }

    #[test]
    fn generated_ids_and_secrets() {
        let id = generate_client_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(parts[2].starts_with('4'));
        assert_ne!(id, generate_client_id());

        let secret = generate_secret();
        assert_eq!(secret.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&secret).unwrap().len(), 32);
        assert_ne!(secret, generate_secret());
        assert_eq!(selector_of(&secret), None);

        let (selector, secret) = generate_selected_secret();
        assert_eq!(secret.len(), SELECTOR_LEN + 1 + 43);
        assert_eq!(selector_of(&secret), Some(selector.as_str()));
        assert!(is_selector(&selector));
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(&secret[SELECTOR_LEN + 1..])
                .unwrap()
                .len(),
            32
        );
        assert_ne!(selector, generate_selected_secret().0);
    }
}
