//! Trusted external OIDC issuers: access tokens signed by another identity provider (Entra, Keycloak, a CI
//! system's OIDC tokens…) are accepted when their `iss` is exactly a configured issuer, their `aud` is the
//! configured audience, and their signature verifies with one of the issuer's keys (a JWKS file).
//!
//! - Algorithms: ES256 (EC P-256 keys) and RS256 (RSA keys) only. The algorithm a key verifies is fixed by
//!   its type, and must be the token header's `alg` (no algorithm confusion; `none` and HMAC are refused).
//! - `kid`: a token with a `kid` is verified only with the key of that id; a token without one only when the
//!   issuer has exactly one key of its algorithm.
//! - `exp` is required, `nbf` honoured if present (with the same clock skew as our own tokens).
//! - The principal is the value of the configured claim (default `sub`): role assignments name it.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

use super::AuthError;
use super::token::Principal;

/// One trusted issuer and its keys.
#[derive(Clone)]
pub struct TrustedIssuer {
    issuer: String,
    audience: String,
    principal_claim: String,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("principal_claim", &self.principal_claim)
            .field(
                "kids",
                &self.keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TrustedIssuer {
    /// An issuer from its JWKS document (`{"keys":[…]}`). Keys other than EC P-256 and RSA signature keys are
    /// skipped; at least one must remain.
    pub fn from_jwks(
        issuer: &str,
        audience: &str,
        jwks: &str,
        principal_claim: Option<&str>,
    ) -> Result<TrustedIssuer, String> {
        if issuer.trim().is_empty() || audience.trim().is_empty() {
            return Err("a trusted issuer needs an issuer and an audience".into());
        }
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
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
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key in the JWKS: {e}"))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            return Err("the JWKS has no ES256 (EC P-256) or RS256 (RSA) signature key".into());
        }
        let principal_claim = principal_claim
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or("sub")
            .to_string();
        Ok(TrustedIssuer {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            principal_claim,
            keys,
        })
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

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies a token whose (unverified) `iss` is this issuer's. Returns the principal, `nbf` and `exp`.
    pub(crate) fn verify(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<(Principal, i64, i64), AuthError> {
        let alg = header.alg;
        if alg != Algorithm::ES256 && alg != Algorithm::RS256 {
            return Err(AuthError::InvalidToken("unsupported signing algorithm"));
        }
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, a, _)| k.as_deref() == Some(kid.as_str()) && *a == alg),
            None => {
                let mut of_alg = self.keys.iter().filter(|(_, a, _)| *a == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
        .ok_or(AuthError::InvalidToken("unknown signing key"))?;
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.2, &validation)
            .map_err(|e| super::token::map_jwt_error(e.kind()))?;
        let claims = data.claims;
        let exp = claims["exp"]
            .as_i64()
            .ok_or(AuthError::InvalidToken("missing claim"))?;
        let nbf = claims["nbf"].as_i64().unwrap_or(i64::MIN / 2);
        let id = claims[self.principal_claim.as_str()]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(AuthError::InvalidToken("missing claim"))?
            .to_string();
        let tenant = claims["tid"].as_str().unwrap_or_default().to_string();
        Ok((Principal { id, tenant }, nbf, exp))
    }
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
        assert_eq!((p.id.as_str(), nbf, exp), ("alice-oid", 1_000, 2_000));
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

        // One key: a token without kid is accepted.
        let single = serde_json::json!({"keys": [a.jwk()]}).to_string();
        let issuer = TrustedIssuer::from_jwks(ISS, AUD, &single, None).unwrap();
        let (p, _, _) = check(
            &issuer,
            &sign(&a, serde_json::json!({"alg": "ES256"}), claims()),
        )
        .unwrap();
        assert_eq!(p.id, "s-1");
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
        assert_eq!((p.id.as_str(), nbf, exp), ("rsa-user", 1_000, 2_000));
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
