//! The server's token-signing key.
//!
//! ES256 (ECDSA P-256 with SHA-256): the JOSE algorithm every JWT/OIDC library and gateway supports
//! (Microsoft.IdentityModel, for one, does not support EdDSA), and the same curve as the dev TLS keys.
//! The key lives in the data dir as a PKCS#8 PEM file, created once with mode 0600 and reused afterwards,
//! so tokens stay valid across restarts.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use zeroize::Zeroizing;

use super::AuthError;
use super::util::{pem_encode, warn_if_exposed, write_file_atomic};

/// The JWS algorithm of the tokens this server issues (and the only one its verifier accepts).
pub const TOKEN_ALG: &str = "ES256";

/// An ECDSA P-256 key pair used to sign access tokens. `Debug` shows the key id only.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

impl SigningKey {
    /// Generates a fresh key in memory (tests, ephemeral servers).
    pub fn generate() -> Result<Self, AuthError> {
        let pkcs8 = generate_pkcs8()?;
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Loads the key from a PKCS#8 file (PEM `PRIVATE KEY`, or raw DER), or creates it with mode 0600 when the
    /// file does not exist. A file that exists but cannot be parsed is an error (it is never overwritten).
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                warn_if_exposed(path);
                Self::from_file_bytes(&bytes, path)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| {
                        AuthError::Key(format!("cannot create directory {}: {e}", parent.display()))
                    })?;
                }
                let pkcs8 = generate_pkcs8()?;
                let pem = Zeroizing::new(pem_encode("PRIVATE KEY", &pkcs8));
                match write_file_atomic(path, pem.as_bytes(), 0o600, false) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "created token signing key");
                        Self::from_pkcs8_der(&pkcs8)
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let bytes = Zeroizing::new(fs::read(path).map_err(|e| {
                            AuthError::Key(format!("cannot read {}: {e}", path.display()))
                        })?);
                        Self::from_file_bytes(&bytes, path)
                    }
                    Err(e) => Err(AuthError::Key(format!(
                        "cannot create {}: {e}",
                        path.display()
                    ))),
                }
            }
            Err(e) => Err(AuthError::Key(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Loads an existing key file (PEM or DER PKCS#8); never creates one. A previous key still verifies
    /// tokens (whoever reads it can mint them), so a file others may read is warned about, as the current one.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| AuthError::Key(format!("{}: cannot read: {e}", path.display())))?,
        );
        warn_if_exposed(path);
        Self::from_file_bytes(&bytes, path)
    }

    /// Builds the key from PKCS#8 v1/v2 DER bytes of a P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, AuthError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| AuthError::Key("not a PKCS#8 ECDSA P-256 private key".into()))?;
        let kid = thumbprint(pair.public_key().as_ref());
        Ok(Self { pair, rng, kid })
    }

    fn from_file_bytes(bytes: &[u8], path: &Path) -> Result<Self, AuthError> {
        let der: Zeroizing<Vec<u8>> = if bytes.trim_ascii_start().starts_with(b"-----") {
            match rustls_pemfile::private_key(&mut &bytes[..]) {
                Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k))) => {
                    Zeroizing::new(k.secret_pkcs8_der().to_vec())
                }
                _ => {
                    return Err(AuthError::Key(format!(
                        "{}: no PKCS#8 PRIVATE KEY block",
                        path.display()
                    )));
                }
            }
        } else {
            Zeroizing::new(bytes.to_vec())
        };
        Self::from_pkcs8_der(&der).map_err(|_| {
            AuthError::Key(format!(
                "{}: not a PKCS#8 ECDSA P-256 private key",
                path.display()
            ))
        })
    }

    /// The key id: the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as an uncompressed SEC1 point (`0x04 || x || y`, 65 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a JWK: `{"kty":"EC","crv":"P-256","x","y","kid","use":"sig","alg":"ES256"}`.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = xy(self.public_key());
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "kid": self.kid,
            "use": "sig",
            "alg": TOKEN_ALG,
        })
    }

    /// Signs `message`; returns the JWS ES256 signature (r || s, 64 bytes).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuthError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| AuthError::Key("signing failed".into()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &TOKEN_ALG)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| AuthError::Key("key generation failed".into()))?;
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}

/// base64url `x` and `y` of an uncompressed P-256 point.
fn xy(point: &[u8]) -> (String, String) {
    debug_assert_eq!(point.len(), 65);
    (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

/// RFC 7638 thumbprint of an EC P-256 public key.
fn thumbprint(point: &[u8]) -> String {
    let (x, y) = xy(point);
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("token-signing-key.pem");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.public_key(), b.public_key());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn garbage_file_is_an_error_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, b"not a key").unwrap();
        let err = SigningKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn jwk_shape_and_kid() {
        let key = SigningKey::generate().unwrap();
        let jwk = key.jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["y"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(key.kid().len(), 43);
        assert!(!format!("{key:?}").contains("pair"));
        assert_ne!(key.kid(), SigningKey::generate().unwrap().kid());
    }

    #[test]
    fn rfc7638_thumbprint_vector() {
        // Canonical JSON per RFC 7638 §3.2, SHA-256, base64url; expected value computed independently
        // (Python: json.dumps(sort_keys=True, separators=(",", ":")) + hashlib.sha256).
        let x = URL_SAFE_NO_PAD
            .decode("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0")
            .unwrap();
        let mut point = vec![4u8];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let expected = "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U";
        assert_eq!(thumbprint(&point), expected);
    }
}
