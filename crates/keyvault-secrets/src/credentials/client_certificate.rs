use super::client_secret::{ClientAuth, TokenEndpoint};
use super::{
    AccessToken, ClientSecretCredentialOptions, TokenCredential, TokenRequestOptions, one_scope,
};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keyvault_types::SecretString;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// How long a client assertion is valid (Entra's libraries use 10 minutes).
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// Options of [`ClientCertificateCredential`].
#[derive(Clone, Debug, Default)]
pub struct ClientCertificateCredentialOptions {
    /// Authority, allowed tenants, CAs, retries… of the token request.
    pub common: ClientSecretCredentialOptions,
    /// The password of an encrypted private key. Not supported: an encrypted key is refused (decrypt it
    /// with `openssl pkcs8 -in key.pem -out plain.pem`); kept for parity with azure-identity's argument.
    pub password: Option<SecretString>,
    /// Send the certificate chain (`x5c`) in the assertion's header, for subject name / issuer
    /// authentication (azure-identity's `send_certificate_chain`). Default `false`.
    pub send_certificate_chain: bool,
}

/// A service principal's certificate (azure-identity's `CertificateCredential`): the token request carries a
/// JWT signed with the certificate's private key (RFC 7523 `client_assertion`), as Entra ID's certificate
/// credentials expect. Works with Entra ID and with `keyvault-server`'s issuer (`[[clients]] certificates`).
///
/// The PEM file holds the private key and the certificate (and optionally its chain, leaf first or in any
/// order: the leaf is the certificate of the key). Keys: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`)
/// RSA keys of 2048 bits or more (signing RS256), and PKCS#8 EC P-256 keys (ES256). Not supported: encrypted
/// keys, SEC1 (`EC PRIVATE KEY`) keys and PKCS#12 files (convert them with `openssl pkcs8 -topk8 -nocrypt` or
/// `openssl pkcs12 -nodes`).
///
/// The file is read once, when the credential is made; its content never appears in errors or `Debug`.
pub struct ClientCertificateCredential {
    endpoint: TokenEndpoint,
    key: SigningKey,
    /// Base64url SHA-1 and SHA-256 thumbprints of the leaf certificate's DER.
    x5t: String,
    x5t_s256: String,
    /// Standard base64 DER certificates, leaf first, when the chain is sent.
    x5c: Option<Vec<String>>,
    rng: SystemRandom,
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    fn alg(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "RS256",
            SigningKey::Ec(_) => "ES256",
        }
    }

    fn public_key(&self) -> &[u8] {
        match self {
            SigningKey::Rsa(k) => k.public().as_ref(),
            SigningKey::Ec(k) => k.public_key().as_ref(),
        }
    }

    fn sign(&self, rng: &SystemRandom, message: &[u8]) -> Result<Vec<u8>> {
        let failed = |_| Error::new(ErrorKind::Credential, "could not sign the client assertion");
        match self {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, rng, message, &mut sig)
                    .map_err(failed)?;
                Ok(sig)
            }
            SigningKey::Ec(k) => Ok(k.sign(rng, message).map_err(failed)?.as_ref().to_vec()),
        }
    }
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("tenant_id", &self.endpoint.tenant_id)
            .field("client_id", &self.endpoint.client_id)
            .field("authority", &self.endpoint.authority)
            .field("alg", &self.key.alg())
            .field("x5t#S256", &self.x5t_s256)
            .field("send_certificate_chain", &self.x5c.is_some())
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ClientCertificateCredential {
    /// A credential for `client_id` in `tenant_id` with the certificate and private key in the PEM file at
    /// `certificate_path`. Fails without network I/O: on a bad tenant or authority, or a file that cannot be
    /// read or lacks a usable key or certificate (the error says which; never the file's content).
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        certificate_path: impl AsRef<Path>,
        options: Option<ClientCertificateCredentialOptions>,
    ) -> Result<Self> {
        let path = certificate_path.as_ref();
        // The file holds the private key: wiped once the key pair is made.
        let pem = Zeroizing::new(std::fs::read(path).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "not found".to_string()
            } else {
                e.to_string()
            };
            Error::with_source(
                ErrorKind::InvalidArgument,
                format!("certificate file {}: {what}", path.display()),
                e,
            )
        })?);
        Self::build(
            tenant_id.into(),
            client_id.into(),
            &pem,
            &path.display().to_string(),
            options,
        )
    }

    /// [`new`](Self::new) with the PEM text in memory (azure-identity's `certificate_data`).
    pub fn from_pem(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        pem: &[u8],
        options: Option<ClientCertificateCredentialOptions>,
    ) -> Result<Self> {
        Self::build(
            tenant_id.into(),
            client_id.into(),
            pem,
            "the certificate data",
            options,
        )
    }

    fn build(
        tenant_id: String,
        client_id: String,
        pem: &[u8],
        source: &str,
        options: Option<ClientCertificateCredentialOptions>,
    ) -> Result<Self> {
        let options = options.unwrap_or_default();
        let endpoint = TokenEndpoint::new(tenant_id, client_id, &options.common)?;
        let bad = |what: &str| Error::new(ErrorKind::InvalidArgument, format!("{source}: {what}"));
        let parsed = parse_pem(pem).map_err(|e| bad(&e))?;
        if parsed.encrypted_key {
            return Err(bad(
                "the private key is encrypted, which is not supported (with or without a password): \
                 decrypt it first (openssl pkcs8 -in key.pem -out plain.pem)",
            ));
        }
        let key = match parsed.key {
            Some(PemKey::Pkcs8(der)) => load_pkcs8(&der).map_err(|e| bad(&e))?,
            Some(PemKey::Pkcs1(der)) => SigningKey::Rsa(
                RsaKeyPair::from_der(&der)
                    .map_err(|_| bad("the RSA PRIVATE KEY block is not a usable RSA key"))?,
            ),
            Some(PemKey::Sec1) => {
                return Err(bad(
                    "EC PRIVATE KEY (SEC1) keys are not supported: convert the key to PKCS#8 \
                     (openssl pkcs8 -topk8 -nocrypt)",
                ));
            }
            None if pem.starts_with(&[0x30]) => {
                return Err(bad(
                    "not PEM (a PKCS#12 or DER file?): give a PEM file with the certificate and its \
                     private key (openssl pkcs12 -in cert.pfx -nodes -out cert.pem)",
                ));
            }
            None => return Err(bad("no private key (a PRIVATE KEY block)")),
        };
        if parsed.certificates.is_empty() {
            return Err(bad("no certificate (a CERTIFICATE block)"));
        }
        // The leaf is the certificate that carries the key's public key (in its SubjectPublicKeyInfo's BIT
        // STRING, byte for byte: the RSA public key's DER, or the uncompressed EC point).
        let public = key.public_key();
        let Some(leaf) = parsed.certificates.iter().position(|c| contains(c, public)) else {
            return Err(bad("no certificate in it matches the private key"));
        };
        let mut certificates = parsed.certificates;
        let leaf_der = certificates.remove(leaf);
        let x5t = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &leaf_der,
        ));
        let x5t_s256 =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &leaf_der));
        let x5c = options.send_certificate_chain.then(|| {
            std::iter::once(&leaf_der)
                .chain(&certificates)
                .map(|c| STANDARD.encode(c))
                .collect()
        });
        Ok(ClientCertificateCredential {
            endpoint,
            key,
            x5t,
            x5t_s256,
            x5c,
            rng: SystemRandom::new(),
        })
    }

    /// The SHA-256 thumbprint of the certificate (base64url), as the assertion's `x5t#S256` names it.
    pub fn thumbprint_sha256(&self) -> &str {
        &self.x5t_s256
    }

    /// A signed client assertion for the token endpoint `audience`, valid from `now` for 10 minutes.
    fn assertion(&self, audience: &str, now: i64) -> Result<SecretString> {
        let mut header = serde_json::json!({
            "alg": self.key.alg(),
            "typ": "JWT",
            "x5t": self.x5t,
            "x5t#S256": self.x5t_s256,
        });
        if let Some(x5c) = &self.x5c {
            header["x5c"] = serde_json::json!(x5c);
        }
        let claims = serde_json::json!({
            "aud": audience,
            "iss": self.endpoint.client_id,
            "sub": self.endpoint.client_id,
            "jti": self.jti()?,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.key.sign(&self.rng, jwt.as_bytes())?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(SecretString::new(jwt))
    }

    /// A random UUID (version 4).
    fn jti(&self) -> Result<String> {
        let mut b = [0u8; 16];
        self.rng
            .fill(&mut b)
            .map_err(|_| Error::new(ErrorKind::Credential, "no randomness for the assertion id"))?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ))
    }
}

#[async_trait]
impl TokenCredential for ClientCertificateCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        const WHO: &str = "ClientCertificateCredential";
        let scope = one_scope(WHO, scopes)?;
        let options = options.unwrap_or_default();
        let url = self.endpoint.token_url(WHO, &options)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let assertion = self.assertion(&url, now)?;
        self.endpoint
            .request(WHO, url, scope, &options, ClientAuth::Assertion(&assertion))
            .await
    }
}

/// A private key's DER, wiped when dropped (ring keeps its own copy in the key pair).
enum PemKey {
    Pkcs8(Zeroizing<Vec<u8>>),
    Pkcs1(Zeroizing<Vec<u8>>),
    Sec1,
}

#[derive(Default)]
struct ParsedPem {
    certificates: Vec<Vec<u8>>,
    key: Option<PemKey>,
    encrypted_key: bool,
}

/// The certificates and the (first) private key of a PEM document.
fn parse_pem(pem: &[u8]) -> std::result::Result<ParsedPem, String> {
    use rustls_pemfile::Item;
    let mut parsed = ParsedPem {
        encrypted_key: contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || contains(pem, b"Proc-Type: 4,ENCRYPTED"),
        ..Default::default()
    };
    let mut reader = pem;
    for item in rustls_pemfile::read_all(&mut reader) {
        // The parser's error names the block, never its content.
        let item = item.map_err(|e| format!("not a valid PEM file ({e:?})"))?;
        match item {
            Item::X509Certificate(der) => parsed.certificates.push(der.to_vec()),
            Item::Pkcs8Key(k) if parsed.key.is_none() => {
                parsed.key = Some(PemKey::Pkcs8(Zeroizing::new(k.secret_pkcs8_der().to_vec())))
            }
            Item::Pkcs1Key(k) if parsed.key.is_none() => {
                parsed.key = Some(PemKey::Pkcs1(Zeroizing::new(k.secret_pkcs1_der().to_vec())))
            }
            Item::Sec1Key(_) if parsed.key.is_none() => parsed.key = Some(PemKey::Sec1),
            _ => {}
        }
    }
    Ok(parsed)
}

/// An RSA or EC P-256 PKCS#8 key.
fn load_pkcs8(der: &[u8]) -> std::result::Result<SigningKey, String> {
    if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
        return Ok(SigningKey::Rsa(k));
    }
    match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new()) {
        Ok(k) => Ok(SigningKey::Ec(k)),
        Err(_) => Err(
            "unsupported private key type (RSA of 2048 bits or more, or EC P-256, are supported)"
                .into(),
        ),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_TEST_KEY: &str = include_str!("../../tests/data/rsa-test-key.pem");

    fn cert_pem(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn assertion_shape_and_signature() {
        for (alg, name) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
            (&rcgen::PKCS_RSA_SHA256, "RS256"),
        ] {
            // ring makes no RSA keys: the RSA one is a test key.
            let key = if name == "RS256" {
                rcgen::KeyPair::from_pem_and_sign_algo(RSA_TEST_KEY, alg).unwrap()
            } else {
                rcgen::KeyPair::generate_for(alg).unwrap()
            };
            let cert = rcgen::CertificateParams::new(vec!["app".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let pem = format!("{}{}", key.serialize_pem(), cert.pem());
            let c = ClientCertificateCredential::from_pem(
                "tenant",
                "client-1",
                pem.as_bytes(),
                Some(ClientCertificateCredentialOptions {
                    send_certificate_chain: true,
                    ..Default::default()
                }),
            )
            .unwrap();
            let url = "https://login.example.com/tenant/oauth2/v2.0/token";
            let jwt = c.assertion(url, 1_700_000_000).unwrap();
            let parts: Vec<&str> = jwt.expose().split('.').collect();
            let header = decode(parts[0]);
            let claims = decode(parts[1]);
            assert_eq!(header["alg"], name);
            assert_eq!(header["typ"], "JWT");
            let der = cert.der().to_vec();
            let s256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der));
            assert_eq!(header["x5t#S256"], s256.as_str());
            assert_eq!(header["x5c"][0], STANDARD.encode(&der).as_str());
            assert_eq!(
                header["x5t"].as_str().unwrap().len(),
                27,
                "SHA-1, base64url"
            );
            assert_eq!(claims["aud"], url);
            assert_eq!(claims["iss"], "client-1");
            assert_eq!(claims["sub"], "client-1");
            assert_eq!(claims["exp"], 1_700_000_600);
            assert_eq!(claims["nbf"], 1_700_000_000);
            assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
            let signed = format!("{}.{}", parts[0], parts[1]);
            let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            let verify_alg: &dyn ring::signature::VerificationAlgorithm = if name == "ES256" {
                &ring::signature::ECDSA_P256_SHA256_FIXED
            } else {
                &ring::signature::RSA_PKCS1_2048_8192_SHA256
            };
            ring::signature::UnparsedPublicKey::new(verify_alg, c.key.public_key())
                .verify(signed.as_bytes(), &sig)
                .unwrap();
            // A new assertion has a new id.
            let again = c.assertion(url, 1_700_000_000).unwrap();
            assert_ne!(
                decode(again.expose().split('.').nth(1).unwrap())["jti"],
                claims["jti"]
            );
            let dbg = format!("{c:?}");
            assert!(
                !dbg.contains("PRIVATE") && dbg.contains("<redacted>"),
                "{dbg}"
            );
        }
    }

    #[test]
    fn file_errors_say_what_is_wrong() {
        let (cert, key) = cert_pem(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (other_cert, _) = cert_pem(&rcgen::PKCS_ECDSA_P256_SHA256);
        let make = |pem: &str| {
            ClientCertificateCredential::from_pem("t", "c", pem.as_bytes(), None)
                .map(|_| ())
                .unwrap_err()
                .message()
                .to_string()
        };
        assert!(make(&cert).contains("no private key"), "{}", make(&cert));
        assert!(make(&key).contains("no certificate"), "{}", make(&key));
        let mismatched = make(&format!("{key}{other_cert}"));
        assert!(
            mismatched.contains("matches the private key"),
            "{mismatched}"
        );
        assert!(!mismatched.contains("BEGIN"), "{mismatched}");
        let encrypted = make(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(encrypted.contains("encrypted"), "{encrypted}");
        assert!(make("\u{30}\u{82}binary").contains("not PEM"));
        let (ed_cert, ed_key) = cert_pem(&rcgen::PKCS_ED25519);
        let unsupported = make(&format!("{ed_cert}{ed_key}"));
        assert!(
            unsupported.contains("unsupported private key type"),
            "{unsupported}"
        );
        // A chain in any order: the leaf is the certificate of the key.
        ClientCertificateCredential::from_pem(
            "t",
            "c",
            format!("{other_cert}{key}{cert}").as_bytes(),
            None,
        )
        .unwrap();
        let missing =
            ClientCertificateCredential::new("t", "c", "/nonexistent/cert.pem", None).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::InvalidArgument);
        assert!(
            missing
                .message()
                .contains("/nonexistent/cert.pem: not found"),
            "{missing}"
        );
    }
}
