//! Known OAuth2 clients and their secrets, stored as argon2id PHC hashes (several per client, for rotation).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

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

/// A new client id shaped like Entra's: a random (version 4) UUID, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
pub fn generate_client_id() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
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

/// The OAuth2 clients this server knows: client id → argon2 PHC hashes of its secrets. Shareable (`Arc`) and
/// mutable at run time. `Debug` shows client ids and secret counts only.
pub struct ClientRegistry {
    clients: RwLock<HashMap<String, Vec<String>>>,
    /// Bounds concurrent argon2 verifications (each takes ~19 MiB and a core for tens of milliseconds).
    limiter: Arc<Semaphore>,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        let permits = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 16);
        Self {
            clients: RwLock::new(HashMap::new()),
            limiter: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Adds a secret hash (a PHC string from [`hash_secret`]) to `client_id`, creating the client if needed.
    /// Fails if the hash is not a valid argon2 PHC string.
    pub fn add(
        &self,
        client_id: impl Into<String>,
        phc_hash: impl Into<String>,
    ) -> Result<(), AuthError> {
        let client_id = client_id.into();
        let phc_hash = phc_hash.into();
        if !is_argon2_phc(&phc_hash) {
            return Err(AuthError::InvalidHash(client_id));
        }
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let hashes = clients.entry(client_id).or_default();
        if !hashes.contains(&phc_hash) {
            hashes.push(phc_hash);
        }
        Ok(())
    }

    /// Removes one secret hash of a client; the client stays (possibly with no secrets). Returns whether it
    /// was there.
    pub fn remove_secret(&self, client_id: &str, phc_hash: &str) -> bool {
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        match clients.get_mut(client_id) {
            Some(hashes) => {
                let before = hashes.len();
                hashes.retain(|h| h != phc_hash);
                hashes.len() != before
            }
            None => false,
        }
    }

    /// Removes a client and all its secrets. Returns whether it existed.
    pub fn remove(&self, client_id: &str) -> bool {
        self.clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(client_id)
            .is_some()
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

    /// Checks `secret` against the client's hashes (argon2 verification; the final comparison is
    /// constant-time). An unknown client, or one without secrets, is checked against a dummy hash so that it
    /// costs the same time. This is CPU-heavy (tens of milliseconds): call it from a blocking thread.
    pub fn verify(&self, client_id: &str, secret: &str) -> bool {
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return false;
        }
        let hashes = self
            .clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client_id)
            .cloned()
            .unwrap_or_default();
        let argon2 = Argon2::default();
        if hashes.is_empty() {
            if let Ok(dummy) = PasswordHash::new(DUMMY_HASH) {
                let _ = argon2.verify_password(secret.as_bytes(), &dummy);
            }
            return false;
        }
        hashes.iter().any(|phc| {
            PasswordHash::new(phc)
                .map(|parsed| argon2.verify_password(secret.as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
    }
}

impl ClientRegistry {
    /// [`verify`](Self::verify) on a blocking thread, with at most one verification per core at a time (the
    /// rest wait), so a burst of token requests can neither stall the async runtime nor exhaust memory.
    pub async fn verify_async(self: &Arc<Self>, client_id: &str, secret: &str) -> bool {
        let Ok(permit) = self.limiter.clone().acquire_owned().await else {
            return false;
        };
        let this = Arc::clone(self);
        let client_id = client_id.to_owned();
        let secret = Zeroizing::new(secret.to_owned());
        // The permit moves into the task: it is held until the hashing ends, even if this future is dropped.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.verify(&client_id, &secret)
        })
        .await
        .unwrap_or(false)
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
    }
}
