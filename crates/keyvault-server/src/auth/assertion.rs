//! Client assertions at the token endpoint (RFC 7523 `client_assertion_type` =
//! `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`), as Entra ID takes them:
//!
//! - **certificate credentials**: a JWT the client signs with the private key of a certificate configured for
//!   it (`[[clients]] certificates`). The header's `x5t#S256` (or `x5t`) picks the certificate; the signature
//!   must verify with its public key (RS256 or PS256 for RSA, ES256 for EC P-256); `iss` = `sub` = the client
//!   id; `aud` = this server's token endpoint (`https://{issuer_host}/{tenant}/oauth2/v2.0/token`); `exp` in
//!   the future and at most [`MAX_ASSERTION_LIFETIME_SECS`] away; `nbf` (if any) not in the future; a `jti`
//!   that was not used before (a replayed assertion is refused while it is valid), unless reuse is allowed
//!   ([`ClientAssertions::allow_reuse`]: Entra accepts reuse, and MSAL relies on it for up to 9 minutes).
//!   The certificate must be within its validity period (notBefore to notAfter, read when it is loaded) at the
//!   time of the request: an expired or not yet valid certificate's assertions are refused as Entra refuses a
//!   key credential outside its dates, so that with two certificates configured for a rotation, the one whose
//!   time has come works and the other does not.
//! - **federated credentials** (workload identity): a token of a `[[trusted_issuers]]` issuer (e.g. a
//!   Kubernetes service account token) whose `sub` is the subject configured for the client
//!   (`[[clients]] federated`) and whose `aud` is the entry's audience ([`DEFAULT_FEDERATED_AUDIENCE`] unless
//!   set). Such a token may be presented again while it is valid (as the kubelet's projected token is).
//!
//! Either kind is refused if its header has a `crit` member (RFC 7515 §4.1.11: the header is read by
//! `jws::decode_header`, as for access tokens).
//!
//! Clock skew: [`CLOCK_SKEW_SECS`] on both ends (of a certificate's validity too). No assertion or key appears
//! in errors, logs or `Debug`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Header};

use super::external::{TrustedIssuer, token_times};
use super::jws::HeaderError;
use super::token::CLOCK_SKEW_SECS;

/// The assertion type of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience of federated tokens unless a `federated` entry sets another (Entra ID's).
pub const DEFAULT_FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The longest a certificate assertion may be valid (`exp` − now).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// The most assertion ids remembered per client (each until its assertion expires) to refuse replays. Per
/// client, so that one client cannot use up the others' room.
pub const REPLAY_CAPACITY: usize = 20_000;
/// The longest assertion accepted (a certificate chain in `x5c` makes a few KiB).
const MAX_ASSERTION_LEN: usize = 32 * 1024;

/// Why an assertion was refused. The token endpoint turns each into an OAuth error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    /// Not a JWT (or too large).
    Malformed,
    /// The header has a `crit` member (no JWS extension is understood: RFC 7515 §4.1.11).
    CriticalHeader,
    /// Unknown client, no certificate of its matches, or the signature does not verify.
    BadSignature,
    /// The assertion is signed by the certificate, which has expired (its notAfter has passed).
    CertificateExpired(CertificateInfo),
    /// The assertion is signed by the certificate, which is not valid yet (its notBefore is to come).
    CertificateNotYetValid(CertificateInfo),
    /// `iss` or `sub` is not the client id.
    WrongClient,
    /// `aud` is not this token endpoint.
    WrongAudience,
    /// Expired, not yet valid, lasting more than an hour, or without `exp`.
    NotInValidTimeRange,
    /// The `jti` is missing or was used before.
    Replayed,
    /// Too many assertions in flight to remember them all: try again later.
    ReplayCacheFull,
    /// Federated: the client has no federated credential for the token's issuer.
    NoFederatedIssuer,
    /// Federated: the token's `aud` is not the credential's audience.
    NoFederatedAudience,
    /// Federated: the token's `sub` is not the credential's subject.
    NoFederatedSubject,
    /// Federated: the token's signature does not verify with its issuer's keys.
    FederatedSignature,
}

/// A configured certificate as it is shown (admin API, errors, logs): public facts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The base64url SHA-256 thumbprint (`x5t#S256`).
    pub x5t_s256: String,
    /// Unix seconds: the validity period, both ends included (RFC 5280 §4.1.2.5).
    pub not_before: i64,
    pub not_after: i64,
}

/// Where a time falls in a certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Valid,
    Expired,
}

/// A client's certificate: its thumbprints, validity period and public key.
pub struct ClientCertificate {
    x5t: String,
    x5t_s256: String,
    not_before: i64,
    not_after: i64,
    key: DecodingKey,
    rsa: bool,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.x5t_s256)
            .field("not_before", &super::util::rfc3339(self.not_before))
            .field("not_after", &super::util::rfc3339(self.not_after))
            .field("key", &if self.rsa { "RSA" } else { "EC P-256" })
            .finish()
    }
}

impl ClientCertificate {
    /// Every certificate of a PEM file (public certificates: a private key in the file is ignored). Errors
    /// say what is wrong with the file, never its content.
    pub fn load(path: &Path) -> Result<Vec<ClientCertificate>, String> {
        let pem = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("certificate file {}: not found", path.display())
            } else {
                format!("certificate file {}: {e}", path.display())
            }
        })?;
        Self::from_pem(&pem).map_err(|e| format!("certificate file {}: {e}", path.display()))
    }

    /// Every certificate of a PEM document.
    pub fn from_pem(pem: &[u8]) -> Result<Vec<ClientCertificate>, String> {
        let mut out = Vec::new();
        for der in rustls_pemfile::certs(&mut &pem[..]) {
            let der = der.map_err(|_| "not a valid PEM file".to_string())?;
            out.push(Self::from_der(der.as_ref())?);
        }
        if out.is_empty() {
            return Err("no certificate (a CERTIFICATE block)".into());
        }
        Ok(out)
    }

    /// A DER X.509 certificate (any version) with an RSA or EC P-256 key.
    pub fn from_der(der: &[u8]) -> Result<ClientCertificate, String> {
        let parts = certificate_parts(der).ok_or("not a valid X.509 certificate")?;
        let (not_before, not_after) = (parts.not_before, parts.not_after);
        let (Some(not_before), Some(not_after)) = (der_time(not_before), der_time(not_after))
        else {
            return Err(
                "the certificate's validity dates cannot be read (UTCTime or GeneralizedTime \
                        in UTC expected)"
                    .into(),
            );
        };
        let SubjectPublicKey {
            algorithm,
            curve,
            key: public,
        } = parts.key;
        let (key, rsa) = match (algorithm, curve) {
            (OID_RSA, _) => (DecodingKey::from_rsa_der(public), true),
            (OID_EC, Some(OID_P256)) if public.len() == 65 && public[0] == 4 => {
                (DecodingKey::from_ec_der(public), false)
            }
            _ => return Err("unsupported key type (RSA or EC P-256 keys are supported)".into()),
        };
        let digest = |alg| URL_SAFE_NO_PAD.encode(ring::digest::digest(alg, der));
        Ok(ClientCertificate {
            x5t: digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            x5t_s256: digest(&ring::digest::SHA256),
            not_before,
            not_after,
            key,
            rsa,
        })
    }

    /// The base64url SHA-256 thumbprint (`x5t#S256`).
    pub fn thumbprint_sha256(&self) -> &str {
        &self.x5t_s256
    }

    /// The start of the validity period (notBefore), Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// The end of the validity period (notAfter, included), Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Where `now` falls in the validity period, with `skew` seconds of tolerance at both ends.
    pub fn validity_at(&self, now: i64, skew: i64) -> Validity {
        if now.saturating_add(skew) < self.not_before {
            Validity::NotYetValid
        } else if now.saturating_sub(skew) > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// Its thumbprint and validity period, to show.
    pub fn info(&self) -> CertificateInfo {
        CertificateInfo {
            x5t_s256: self.x5t_s256.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }

    fn accepts(&self, alg: Algorithm) -> bool {
        if self.rsa {
            matches!(alg, Algorithm::RS256 | Algorithm::PS256)
        } else {
            alg == Algorithm::ES256
        }
    }
}

/// A federated credential: tokens of `issuer` with this `sub` and `aud` stand for the client.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    pub issuer: TrustedIssuer,
    pub subject: String,
    pub audience: String,
}

#[derive(Default, Debug)]
struct ClientKeys {
    certificates: Vec<ClientCertificate>,
    federated: Vec<FederatedCredential>,
}

/// One client's assertion ids, each until its assertion expires by both clocks: the wall clock (its `exp`,
/// against which `verify` checks it) and the monotonic one (the time it had left when it was seen, counted
/// from then). An id is forgotten only once both say it has expired, so that a step of the wall clock (NTP,
/// a VM resumed) forgets no id whose assertion is still valid: neither a step forward and back (a63-2) nor a
/// step back after the monotonic time ran out (a64-3) lets a used assertion in again. The price: after a
/// step back, a full memory refuses new assertions for as long as the step.
#[derive(Default)]
struct SeenIds {
    /// `jti` → when its assertion expires (skew included).
    ids: HashMap<String, Until>,
    /// While full: no id is due to expire by both clocks before this, so there is nothing to sweep until then.
    full_until: Option<Until>,
    /// The latest wall-clock expiry of an id swept: an assertion expiring at or before it may be one of them,
    /// valid again only by a step back of the wall clock, and is refused (a65-3). Without a step back no new
    /// assertion expires that early.
    swept_wall: i64,
}

/// A time by both clocks: the wall clock's seconds, and the monotonic clock's instant.
#[derive(Clone, Copy)]
struct Until {
    wall: i64,
    mono: Instant,
}

/// The clients that may authenticate with assertions, and the assertion ids seen.
#[derive(Default)]
pub struct ClientAssertions {
    clients: HashMap<String, ClientKeys>,
    /// Client id → the assertion ids it used.
    seen: Mutex<HashMap<String, SeenIds>>,
    /// Per client.
    capacity: usize,
    /// Accept an assertion id again (no replay check).
    allow_reuse: bool,
}

impl std::fmt::Debug for ClientAssertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.clients.iter()).finish()
    }
}

impl ClientAssertions {
    pub fn new() -> Self {
        ClientAssertions {
            capacity: REPLAY_CAPACITY,
            ..Default::default()
        }
    }

    /// Accepts a certificate assertion's `jti` more than once while the assertion is valid, as Entra ID does
    /// (MSAL reuses an assertion for up to 9 minutes). Refused after its first use unless set (the server's
    /// configuration sets it by default: `allow_client_assertion_reuse`).
    pub fn allow_reuse(&mut self, allow: bool) {
        self.allow_reuse = allow;
    }

    /// Adds certificates a client may sign assertions with.
    pub fn add_certificates(&mut self, client_id: &str, certificates: Vec<ClientCertificate>) {
        let keys = self.clients.entry(client_id.to_string()).or_default();
        keys.certificates.extend(certificates);
    }

    /// Adds a federated credential of a client.
    pub fn add_federated(&mut self, client_id: &str, federated: FederatedCredential) {
        let keys = self.clients.entry(client_id.to_string()).or_default();
        keys.federated.push(federated);
    }

    /// A client's certificates (`x5t#S256` thumbprint, validity period), for the admin API.
    pub fn certificates_of(&self, client_id: &str) -> Vec<CertificateInfo> {
        (self.clients.get(client_id))
            .map(|k| k.certificates.iter().map(ClientCertificate::info).collect())
            .unwrap_or_default()
    }

    /// A client's federated credentials as (issuer, subject, audience), for the admin API.
    pub fn federated_of(&self, client_id: &str) -> Vec<(String, String, String)> {
        (self.clients.get(client_id))
            .map(|k| {
                (k.federated.iter())
                    .map(|f| {
                        let issuer = f.issuer.issuer().to_string();
                        (issuer, f.subject.clone(), f.audience.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a client has any certificate or federated credential.
    pub fn has_client(&self, client_id: &str) -> bool {
        self.clients.contains_key(client_id)
    }

    /// Verifies `assertion` for the client named by the request's `client_id` (or, when the request names
    /// none, by the assertion's `iss`). `audiences`: the token endpoint URLs a certificate assertion may name.
    /// Returns the client id.
    pub async fn verify(
        &self,
        client_id: Option<&str>,
        assertion: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<String, AssertionError> {
        if assertion.len() > MAX_ASSERTION_LEN {
            return Err(AssertionError::Malformed);
        }
        let header = super::jws::decode_assertion_header(assertion).map_err(|e| match e {
            HeaderError::Malformed => AssertionError::Malformed,
            HeaderError::Critical => AssertionError::CriticalHeader,
        })?;
        let unverified = unverified_claims(assertion).ok_or(AssertionError::Malformed)?;
        let iss = unverified["iss"]
            .as_str()
            .ok_or(AssertionError::Malformed)?;
        let client_id = client_id.unwrap_or(iss);
        let Some(keys) = self.clients.get(client_id) else {
            return Err(if iss == client_id {
                AssertionError::BadSignature
            } else {
                AssertionError::NoFederatedIssuer
            });
        };
        if iss == client_id {
            self.verify_certificate(client_id, keys, assertion, &header, audiences, now)?;
        } else {
            verify_federated(keys, iss, assertion, &header, now).await?;
        }
        Ok(client_id.to_string())
    }

    fn verify_certificate(
        &self,
        client_id: &str,
        keys: &ClientKeys,
        assertion: &str,
        header: &Header,
        audiences: &[String],
        now: i64,
    ) -> Result<(), AssertionError> {
        let s256 = header.x5t_s256.as_deref().map(thumbprint);
        let sha1 = header.x5t.as_deref().map(thumbprint);
        let certificate = keys
            .certificates
            .iter()
            .find(|c| match (&s256, &sha1) {
                (Some(t), _) => c.x5t_s256 == *t,
                (None, Some(t)) => c.x5t == *t,
                (None, None) => false,
            })
            .filter(|c| c.accepts(header.alg))
            .ok_or(AssertionError::BadSignature)?;
        let claims = verified_claims(assertion, certificate, header.alg)?;
        // Signed by the certificate's key (so what follows is told only to its holder), at a time the
        // certificate is not valid.
        match certificate.validity_at(now, CLOCK_SKEW_SECS) {
            Validity::Valid => {}
            Validity::Expired => {
                return Err(AssertionError::CertificateExpired(certificate.info()));
            }
            Validity::NotYetValid => {
                return Err(AssertionError::CertificateNotYetValid(certificate.info()));
            }
        }
        if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
            return Err(AssertionError::WrongClient);
        }
        if !audience_matches(&claims["aud"], audiences) {
            return Err(AssertionError::WrongAudience);
        }
        // (MSAL writes `exp` with a fraction: Python's `time.time()`.)
        let (nbf, exp) = token_times(&claims).map_err(|_| AssertionError::NotInValidTimeRange)?;
        if exp.saturating_add(CLOCK_SKEW_SECS) <= now
            || nbf.saturating_sub(CLOCK_SKEW_SECS) > now
            || exp.saturating_sub(now) > MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS
        {
            return Err(AssertionError::NotInValidTimeRange);
        }
        let jti = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(AssertionError::Replayed)?;
        if self.allow_reuse {
            return Ok(());
        }
        self.remember(client_id, jti, exp, now, Instant::now())
    }

    /// Records an assertion id until its assertion expires (`exp` by the wall clock's `now`, kept as the time
    /// left from `mono`); refuses one seen before.
    fn remember(
        &self,
        client_id: &str,
        jti: &str,
        exp: i64,
        now: i64,
        mono: Instant,
    ) -> Result<(), AssertionError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.contains_key(client_id) {
            seen.insert(client_id.to_string(), SeenIds::default());
        }
        let Some(mine) = seen.get_mut(client_id) else {
            return Err(AssertionError::ReplayCacheFull);
        };
        // Live while either clock says so.
        let live = |until: &Until| until.wall > now || until.mono > mono;
        let wall = exp.saturating_add(CLOCK_SKEW_SECS);
        if mine.ids.get(jti).is_some_and(live) || (mine.swept_wall > 0 && wall <= mine.swept_wall) {
            return Err(AssertionError::Replayed);
        }
        if mine.ids.len() >= self.capacity {
            if mine.full_until.is_some_and(|t| live(&t)) {
                return Err(AssertionError::ReplayCacheFull);
            }
            let mut swept_wall = mine.swept_wall;
            mine.ids.retain(|_, until| {
                let keep = live(until);
                if !keep {
                    swept_wall = swept_wall.max(until.wall);
                }
                keep
            });
            mine.swept_wall = swept_wall;
            if mine.ids.len() >= self.capacity {
                // Nothing can be swept before the earliest expiry by either clock.
                mine.full_until = Some(Until {
                    wall: mine.ids.values().map(|u| u.wall).min().unwrap_or(now),
                    mono: mine.ids.values().map(|u| u.mono).min().unwrap_or(mono),
                });
                return Err(AssertionError::ReplayCacheFull);
            }
            mine.full_until = None;
        }
        // `verify` bounds what is left (`MAX_ASSERTION_LIFETIME_SECS` and the skew).
        let left = wall.saturating_sub(now).max(0);
        let until = Until {
            wall,
            mono: mono + Duration::from_secs(left as u64),
        };
        mine.ids.insert(jti.to_string(), until);
        Ok(())
    }
}

async fn verify_federated(
    keys: &ClientKeys,
    iss: &str,
    assertion: &str,
    header: &Header,
    now: i64,
) -> Result<(), AssertionError> {
    let of_issuer: Vec<&FederatedCredential> = (keys.federated.iter())
        .filter(|f| f.issuer.issuer() == iss)
        .collect();
    let Some(first) = of_issuer.first() else {
        return Err(AssertionError::NoFederatedIssuer);
    };
    let issuer = &first.issuer;
    if issuer.is_unknown_kid(header) {
        issuer.refresh_for_unknown_kid().await;
    }
    // The most telling refusal: a subject mismatch over an audience mismatch over a bad signature.
    let mut refusal = AssertionError::FederatedSignature;
    for credential in of_issuer {
        let claims = match issuer.verify_claims(assertion, header, &credential.audience) {
            Ok(claims) => claims,
            Err(super::AuthError::InvalidToken("wrong audience")) => {
                if refusal == AssertionError::FederatedSignature {
                    refusal = AssertionError::NoFederatedAudience;
                }
                continue;
            }
            Err(_) => continue,
        };
        let (nbf, exp) = token_times(&claims).map_err(|_| AssertionError::NotInValidTimeRange)?;
        if exp.saturating_add(CLOCK_SKEW_SECS) <= now || nbf.saturating_sub(CLOCK_SKEW_SECS) > now {
            return Err(AssertionError::NotInValidTimeRange);
        }
        if claims["sub"].as_str() == Some(credential.subject.as_str()) {
            return Ok(());
        }
        refusal = AssertionError::NoFederatedSubject;
    }
    Err(refusal)
}

/// `aud` (a string or an array of them) names one of `audiences` (ASCII case and a trailing `/` aside).
fn audience_matches(aud: &serde_json::Value, audiences: &[String]) -> bool {
    let same = |a: &str| {
        let a = a.trim_end_matches('/');
        audiences
            .iter()
            .any(|want| want.trim_end_matches('/').eq_ignore_ascii_case(a))
    };
    match aud {
        serde_json::Value::String(a) => same(a),
        serde_json::Value::Array(all) => all.iter().filter_map(|a| a.as_str()).any(same),
        _ => false,
    }
}

/// A thumbprint as the certificates hold it: base64url without padding. Senders pad it, and the Rust
/// `azure_identity` crate writes `x5t` in standard base64 (`+` and `/`); the digest is the same.
fn thumbprint(t: &str) -> String {
    t.trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// The claims of a certificate assertion whose signature, over its first two parts exactly as sent,
/// verifies with `certificate`'s key under `alg` (one the certificate accepts: [`ClientCertificate::accepts`]
/// keeps an RSA key out of HMAC). Any part may carry `=` padding ([`super::jws::trim_padding`]).
fn verified_claims(
    assertion: &str,
    certificate: &ClientCertificate,
    alg: jsonwebtoken::Algorithm,
) -> Result<serde_json::Value, AssertionError> {
    let (signed, signature) = assertion
        .rsplit_once('.')
        .ok_or(AssertionError::Malformed)?;
    let signature = super::jws::trim_padding(signature);
    let verified =
        jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &certificate.key, alg)
            .unwrap_or(false);
    if !verified {
        return Err(AssertionError::BadSignature);
    }
    unverified_claims(assertion).ok_or(AssertionError::Malformed)
}

/// A JWT's claims, not verified (to choose how to verify them).
fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(super::jws::trim_padding(payload))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(|c| c.is_object())
}

// --- A minimal DER reader: just enough of X.509 to find the validity and the subject public key. ----------

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One DER element: (tag, content, rest).
pub(crate) fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A certificate's SubjectPublicKeyInfo, in parts.
struct SubjectPublicKey<'a> {
    /// The key algorithm's OID.
    algorithm: &'a [u8],
    /// The curve's OID (EC keys).
    curve: Option<&'a [u8]>,
    /// The BIT STRING's bytes: an RSAPublicKey's DER, an EC point.
    key: &'a [u8],
}

/// A DER time of the validity period: (tag, content).
pub(crate) type DerTime<'a> = (u8, &'a [u8]);

/// What the server reads of a certificate.
struct CertificateParts<'a> {
    /// The validity period's notBefore and notAfter, not yet parsed.
    not_before: DerTime<'a>,
    not_after: DerTime<'a>,
    key: SubjectPublicKey<'a>,
}

/// The certificate's validity period and subject public key. Any version: a v1 certificate has no `[0]`
/// version field.
fn certificate_parts(cert: &[u8]) -> Option<CertificateParts<'_>> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der(certificate)? else {
        return None;
    };
    // [0] version (optional), serialNumber, signature, issuer, validity, subject.
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = der(tbs)?.2;
    }
    let (SEQUENCE, validity, rest) = der(tbs)? else {
        return None;
    };
    let (nb_tag, nb, after) = der(validity)?;
    let (na_tag, na, _) = der(after)?;
    // Past the subject.
    tbs = der(rest)?.2;
    let (SEQUENCE, spki, _) = der(tbs)? else {
        return None;
    };
    let (SEQUENCE, algorithm, rest) = der(spki)? else {
        return None;
    };
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    let (0x06, oid, params) = der(algorithm)? else {
        return None;
    };
    let curve = match der(params) {
        Some((0x06, curve, _)) => Some(curve),
        _ => None,
    };
    // A BIT STRING's first byte counts the unused bits of its last: a key has none.
    let (0, public) = bits.split_first()? else {
        return None;
    };
    Some(CertificateParts {
        not_before: (nb_tag, nb),
        not_after: (na_tag, na),
        key: SubjectPublicKey {
            algorithm: oid,
            curve,
            key: public,
        },
    })
}

/// A validity time as Unix seconds: UTCTime `YYMMDDHHMMSSZ` (years 1950-2049; `YYMMDDHHMMZ` also read) or
/// GeneralizedTime `YYYYMMDDHHMMSSZ`, in UTC (RFC 5280 §4.1.2.5). `None` for anything else, or a date that
/// does not exist.
pub(crate) fn der_time((tag, content): DerTime<'_>) -> Option<i64> {
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    let digits = content.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |d: &[u8]| d.iter().fold(0i32, |n, &b| n * 10 + i32::from(b - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 10 | 12) => {
            let yy = number(&digits[..2]);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (number(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let two = |i: usize| rest.get(i..i + 2).map(number);
    let month = time::Month::try_from(u8::try_from(two(0)?).ok()?).ok()?;
    let day = u8::try_from(two(2)?).ok()?;
    let hour = u8::try_from(two(4)?).ok()?;
    let minute = u8::try_from(two(6)?).ok()?;
    let second = u8::try_from(two(8).unwrap_or(0)).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(hour, minute, second).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const CLIENT: &str = "cert-app";
    const AUD: &str = "https://127.0.0.1:8443/keyvault-rs/oauth2/v2.0/token";

    struct TestCert {
        key: ring::signature::EcdsaKeyPair,
        der: Vec<u8>,
    }

    fn test_cert() -> TestCert {
        // rcgen's default validity: 1975 to 4096.
        cert_valid(None)
    }

    /// A certificate valid from `not_before` to `not_after` (Unix seconds), or rcgen's default dates.
    fn cert_valid(dates: Option<(i64, i64)>) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["app".into()]).unwrap();
        if let Some((nb, na)) = dates {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(nb).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(na).unwrap();
        }
        let cert = params.self_signed(&key).unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        TestCert {
            key: pair,
            der: cert.der().to_vec(),
        }
    }

    fn sign(cert: &TestCert, header: serde_json::Value, claims: serde_json::Value) -> String {
        let mut t = URL_SAFE_NO_PAD.encode(header.to_string());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = cert
            .key
            .sign(&ring::rand::SystemRandom::new(), t.as_bytes())
            .unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        t
    }

    fn header(cert: &TestCert) -> serde_json::Value {
        let s256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &cert.der));
        serde_json::json!({"alg": "ES256", "typ": "JWT", "x5t#S256": s256})
    }

    fn claims(jti: &str) -> serde_json::Value {
        serde_json::json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "jti": jti,
            "nbf": NOW, "iat": NOW, "exp": NOW + 600})
    }

    fn registry(cert: &TestCert) -> ClientAssertions {
        let mut a = ClientAssertions::new();
        a.add_certificates(
            CLIENT,
            vec![ClientCertificate::from_der(&cert.der).unwrap()],
        );
        a
    }

    fn check(a: &ClientAssertions, token: &str, now: i64) -> Result<String, AssertionError> {
        let audiences = [AUD.to_string()];
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(a.verify(Some(CLIENT), token, &audiences, now))
    }

    #[test]
    fn certificate_assertions() {
        let cert = test_cert();
        let a = registry(&cert);
        let ok = sign(&cert, header(&cert), claims("1"));
        assert_eq!(check(&a, &ok, NOW).unwrap(), CLIENT);
        // The same assertion again: a replay; unless reuse is allowed (as Entra allows it).
        assert_eq!(check(&a, &ok, NOW + 1), Err(AssertionError::Replayed));
        let mut lenient = registry(&cert);
        lenient.allow_reuse(true);
        assert!(check(&lenient, &ok, NOW).is_ok() && check(&lenient, &ok, NOW + 1).is_ok());
        // A NumericDate with a fraction, as MSAL writes them.
        let mut c = claims("1.5");
        c["exp"] = serde_json::json!(NOW as f64 + 600.25);
        c["iat"] = serde_json::json!(NOW as f64 + 0.25);
        assert!(check(&a, &sign(&cert, header(&cert), c), NOW).is_ok());
        // Expired, not yet valid (beyond the skew), or lasting more than an hour.
        let mut c = claims("2");
        c["exp"] = (NOW - CLOCK_SKEW_SECS).into();
        assert_eq!(
            check(&a, &sign(&cert, header(&cert), c), NOW),
            Err(AssertionError::NotInValidTimeRange)
        );
        let mut c = claims("3");
        c["nbf"] = (NOW + CLOCK_SKEW_SECS + 1).into();
        assert_eq!(
            check(&a, &sign(&cert, header(&cert), c), NOW),
            Err(AssertionError::NotInValidTimeRange)
        );
        let mut c = claims("4");
        c["exp"] = (NOW + 2 * 3600).into();
        assert_eq!(
            check(&a, &sign(&cert, header(&cert), c), NOW),
            Err(AssertionError::NotInValidTimeRange)
        );
        // Another audience, another subject, no jti.
        let mut c = claims("5");
        c["aud"] = "https://login.microsoftonline.com/t/oauth2/v2.0/token".into();
        assert_eq!(
            check(&a, &sign(&cert, header(&cert), c), NOW),
            Err(AssertionError::WrongAudience)
        );
        let mut c = claims("6");
        c["sub"] = "someone-else".into();
        assert_eq!(
            check(&a, &sign(&cert, header(&cert), c), NOW),
            Err(AssertionError::WrongClient)
        );
        let mut c = claims("7");
        c.as_object_mut().unwrap().remove("jti");
        assert_eq!(
            check(&a, &sign(&cert, header(&cert), c), NOW),
            Err(AssertionError::Replayed)
        );
        // Signed by another key with the configured certificate's thumbprint; an unknown thumbprint; none.
        let other = test_cert();
        assert_eq!(
            check(&a, &sign(&other, header(&cert), claims("8")), NOW),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(
            check(&a, &sign(&other, header(&other), claims("9")), NOW),
            Err(AssertionError::BadSignature)
        );
        let bare = serde_json::json!({"alg": "ES256", "typ": "JWT"});
        assert_eq!(
            check(&a, &sign(&cert, bare, claims("10")), NOW),
            Err(AssertionError::BadSignature)
        );
        // The algorithm is fixed by the key: HS256 with the thumbprint is refused.
        let mut h = header(&cert);
        h["alg"] = "HS256".into();
        assert_eq!(
            check(&a, &sign(&cert, h, claims("11")), NOW),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(check(&a, "not-a-jwt", NOW), Err(AssertionError::Malformed));
        // An unknown client: the same answer as a bad signature.
        let audiences = [AUD.to_string()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let unknown = rt.block_on(a.verify(Some("nobody"), &ok, &audiences, NOW));
        assert_eq!(unknown, Err(AssertionError::NoFederatedIssuer));
        let mut c = claims("12");
        c["iss"] = "nobody".into();
        c["sub"] = "nobody".into();
        let unknown = rt.block_on(a.verify(None, &sign(&cert, header(&cert), c), &audiences, NOW));
        assert_eq!(unknown, Err(AssertionError::BadSignature));
    }

    /// Python azure-identity's async `CertificateCredential` pads every part (`base64.urlsafe_b64encode`)
    /// and signs the padded text; the Rust `azure_identity` crate pads too and writes `x5t` in standard
    /// base64. Entra accepts both; so does this server, verifying the signature over the text as sent.
    #[test]
    fn padded_assertions_and_standard_base64_thumbprints() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        fn sign_padded(
            cert: &TestCert,
            header: &serde_json::Value,
            claims: &serde_json::Value,
        ) -> String {
            let signed = format!(
                "{}.{}",
                URL_SAFE.encode(header.to_string()),
                URL_SAFE.encode(claims.to_string())
            );
            let rng = ring::rand::SystemRandom::new();
            let sig = cert.key.sign(&rng, signed.as_bytes()).unwrap();
            // A P-256 signature is 64 bytes: its base64 always ends in '='.
            format!("{signed}.{}", URL_SAFE.encode(sig.as_ref()))
        }
        // A certificate whose SHA-1 thumbprint has a '+' or '/' in standard base64 (most do).
        let (cert, x5t) = (0..64)
            .map(|_| test_cert())
            .find_map(|c| {
                let t = STANDARD.encode(ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    &c.der,
                ));
                t.contains(['+', '/']).then_some((c, t))
            })
            .unwrap();
        let a = registry(&cert);
        let mut padded_header = header(&cert);
        let s256 = URL_SAFE.encode(ring::digest::digest(&ring::digest::SHA256, &cert.der));
        padded_header["x5t#S256"] = s256.into();
        for (i, h) in [
            padded_header,
            serde_json::json!({"alg": "ES256", "typ": "JWT", "x5t": x5t}),
        ]
        .iter()
        .enumerate()
        {
            // Header and payload lengths that need padding, and ones that do not.
            for pad in ["", "x", "xx"] {
                let mut c = claims(&format!("p{i}{pad}"));
                c["pad"] = pad.into();
                let token = sign_padded(&cert, h, &c);
                assert!(token.ends_with('='), "{token}");
                assert_eq!(check(&a, &token, NOW).unwrap(), CLIENT, "{token}");
                // The signature covers the padded text: the same parts unpadded do not verify.
                let mut c = claims(&format!("q{i}{pad}"));
                c["pad"] = pad.into();
                let token = sign_padded(&cert, h, &c);
                let unpadded: Vec<&str> =
                    token.split('.').map(|p| p.trim_end_matches('=')).collect();
                let unpadded = unpadded.join(".");
                if unpadded.len() + 2 < token.len() {
                    assert_eq!(check(&a, &unpadded, NOW), Err(AssertionError::BadSignature));
                }
            }
        }
        // More '=' than padding can be, or '=' inside a part: malformed, or a signature that fails.
        let token = sign_padded(&cert, &header(&cert), &claims("r1"));
        let (head, rest) = token.split_once('.').unwrap();
        let triple = format!("{}===.{rest}", head.trim_end_matches('='));
        assert_eq!(check(&a, &triple, NOW), Err(AssertionError::Malformed));
        let extra = format!("{token}==");
        assert_eq!(check(&a, &extra, NOW), Err(AssertionError::BadSignature));
    }

    const DAY: i64 = 86_400;

    /// An expired or not yet valid certificate signs assertions that are refused (after its signature is
    /// checked), naming the certificate; with a valid one configured beside it (a rotation), that one works.
    #[test]
    fn certificates_outside_their_validity_are_refused() {
        let expired = cert_valid(Some((NOW - 400 * DAY, NOW - DAY)));
        let current = cert_valid(Some((NOW - DAY, NOW + 365 * DAY)));
        let next = cert_valid(Some((NOW + DAY, NOW + 400 * DAY)));
        let mut a = ClientAssertions::new();
        let configured: Vec<ClientCertificate> = [&expired, &current, &next]
            .iter()
            .map(|c| ClientCertificate::from_der(&c.der).unwrap())
            .collect();
        let infos: Vec<CertificateInfo> = configured.iter().map(ClientCertificate::info).collect();
        assert_eq!(
            (infos[0].not_before, infos[0].not_after),
            (NOW - 400 * DAY, NOW - DAY)
        );
        a.add_certificates(CLIENT, configured);
        assert_eq!(a.certificates_of(CLIENT), infos);

        assert_eq!(
            check(&a, &sign(&current, header(&current), claims("1")), NOW).unwrap(),
            CLIENT
        );
        assert_eq!(
            check(&a, &sign(&expired, header(&expired), claims("2")), NOW),
            Err(AssertionError::CertificateExpired(infos[0].clone()))
        );
        assert_eq!(
            check(&a, &sign(&next, header(&next), claims("3")), NOW),
            Err(AssertionError::CertificateNotYetValid(infos[2].clone()))
        );
        // Someone else's key with the expired certificate's thumbprint learns nothing about it.
        assert_eq!(
            check(&a, &sign(&current, header(&expired), claims("4")), NOW),
            Err(AssertionError::BadSignature)
        );
        // Once its notBefore has come (less the clock skew), the next certificate works; notAfter is included,
        // then the skew.
        let soon = NOW + DAY - CLOCK_SKEW_SECS;
        let mut c = claims("5");
        c["exp"] = (soon + 600).into();
        assert!(check(&a, &sign(&next, header(&next), c), soon).is_ok());
        let end = NOW - DAY + CLOCK_SKEW_SECS;
        let mut c = claims("6");
        (c["nbf"], c["exp"]) = (end.into(), (end + 600).into());
        assert!(check(&a, &sign(&expired, header(&expired), c), end).is_ok());
        let mut c = claims("7");
        (c["nbf"], c["exp"]) = (end.into(), (end + 601).into());
        assert!(matches!(
            check(&a, &sign(&expired, header(&expired), c), end + 1),
            Err(AssertionError::CertificateExpired(_))
        ));
    }

    fn federated_setup() -> (crate::auth::SigningKey, ClientAssertions) {
        let idp = crate::auth::SigningKey::generate().unwrap();
        let jwks = serde_json::json!({"keys": [idp.jwk()]}).to_string();
        let issuer = TrustedIssuer::from_jwks(FED_ISS, "api://keyvault", &jwks, None).unwrap();
        let mut a = ClientAssertions::new();
        a.add_federated(
            CLIENT,
            FederatedCredential {
                issuer,
                subject: FED_SUB.into(),
                audience: DEFAULT_FEDERATED_AUDIENCE.into(),
            },
        );
        (idp, a)
    }

    const FED_ISS: &str = "https://oidc.example.com/cluster";
    const FED_SUB: &str = "system:serviceaccount:apps:app";

    fn sign_es256(
        key: &crate::auth::SigningKey,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        let mut t = URL_SAFE_NO_PAD.encode(header.to_string());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = key.sign(t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    /// RFC 7515 §4.1.11: a `crit` header member (any value) makes a certificate assertion or a federated token
    /// refused, however well it is signed; without it the same assertion is accepted.
    #[test]
    fn crit_headers_are_refused() {
        let cert = test_cert();
        let a = registry(&cert);
        assert!(check(&a, &sign(&cert, header(&cert), claims("ok")), NOW).is_ok());
        let (idp, fed) = federated_setup();
        let fed_claims = serde_json::json!({"iss": FED_ISS, "sub": FED_SUB,
            "aud": DEFAULT_FEDERATED_AUDIENCE, "nbf": NOW, "exp": NOW + 600});
        let fed_header = serde_json::json!({"alg": "ES256", "kid": idp.kid()});
        assert_eq!(
            check(&fed, &sign_es256(&idp, &fed_header, &fed_claims), NOW).unwrap(),
            CLIENT
        );
        for (i, crit) in [
            serde_json::json!(["b64"]),
            serde_json::json!([]),
            serde_json::json!(null),
        ]
        .into_iter()
        .enumerate()
        {
            let mut h = header(&cert);
            h["crit"] = crit.clone();
            h["b64"] = true.into();
            assert_eq!(
                check(&a, &sign(&cert, h, claims(&format!("crit-{i}"))), NOW),
                Err(AssertionError::CriticalHeader),
                "{crit}"
            );
            let mut h = fed_header.clone();
            h["crit"] = crit.clone();
            assert_eq!(
                check(&fed, &sign_es256(&idp, &h, &fed_claims), NOW),
                Err(AssertionError::CriticalHeader),
                "{crit}"
            );
        }
    }

    /// The validity dates of any X.509 version, UTCTime or GeneralizedTime; unreadable ones are an error.
    #[test]
    fn certificate_validity_dates() {
        // 2049 is written as UTCTime, 2050 and later as GeneralizedTime.
        let utc_end = 2_524_607_999; // 2049-12-31T23:59:59Z
        let generalized_end = 2_871_763_200; // 2061-01-01T00:00:00Z
        for (nb, na) in [(NOW, utc_end), (-631_152_000, generalized_end)] {
            let c = ClientCertificate::from_der(&cert_valid(Some((nb, na))).der).unwrap();
            assert_eq!((c.not_before(), c.not_after()), (nb, na));
        }
        // A v1 certificate (no version field): the same dates and key.
        let v3 = cert_valid(Some((NOW, utc_end))).der;
        let v1 = without_version(&v3);
        assert_ne!(v1, v3);
        let c = ClientCertificate::from_der(&v1).unwrap();
        assert_eq!((c.not_before(), c.not_after()), (NOW, utc_end));
        // A month 13: the file is refused with a clear error (not a panic, not a certificate without dates).
        let good = b"491231235959Z";
        let i = v3.windows(good.len()).position(|w| w == good).unwrap();
        let mut bad = v3.clone();
        bad[i + 2..i + 4].copy_from_slice(b"13");
        let e = ClientCertificate::from_der(&bad).unwrap_err();
        assert!(e.contains("validity dates cannot be read"), "{e}");

        let t = |tag: u8, s: &str| der_time((tag, s.as_bytes()));
        assert_eq!(t(0x17, "231114221320Z"), Some(1_700_000_000));
        assert_eq!(t(0x17, "2311142213Z"), Some(1_700_000_000 - 20));
        assert_eq!(t(0x18, "20231114221320Z"), Some(1_700_000_000));
        assert_eq!(t(0x17, "500101000000Z"), Some(-631_152_000));
        assert_eq!(t(0x18, "99991231235959Z"), Some(253_402_300_799));
        assert_eq!(t(0x17, "000229000000Z"), Some(951_782_400));
        for (tag, s) in [
            (0x17, "010229000000Z"), // not a leap year
            (0x17, "231114221320"),  // no Z
            (0x17, "231114221320+0100"),
            (0x17, "2311142213200Z"),
            (0x18, "20231114221320.5Z"),
            (0x18, "231114221320Z"), // GeneralizedTime needs four year digits
            (0x17, "231114246000Z"), // hour 24
            (0x17, "23111422136aZ"),
            (0x17, "-31114221320Z"),
            (0x04, "231114221320Z"), // not a time
            (0x17, ""),
        ] {
            assert_eq!(t(tag, s), None, "{s}");
        }
    }

    /// The same certificate as version 1: the TBSCertificate without its `[0]` version (the signature no
    /// longer matches, which does not matter here: the configured certificate is trusted as it is).
    fn without_version(cert: &[u8]) -> Vec<u8> {
        fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let len = content.len();
            if len < 0x80 {
                out.push(len as u8);
            } else {
                let bytes: Vec<u8> = len
                    .to_be_bytes()
                    .into_iter()
                    .skip_while(|&b| b == 0)
                    .collect();
                out.push(0x80 | bytes.len() as u8);
                out.extend(bytes);
            }
            out.extend_from_slice(content);
            out
        }
        let (_, certificate, _) = der(cert).unwrap();
        let (_, tbs, after_tbs) = der(certificate).unwrap();
        let (0xa0, _, fields) = der(tbs).unwrap() else {
            panic!("not a v3 certificate");
        };
        let mut inner = wrap(0x30, fields);
        inner.extend_from_slice(after_tbs);
        wrap(0x30, &inner)
    }

    #[test]
    fn replay_memory_is_bounded() {
        let cert = test_cert();
        let mut a = registry(&cert);
        a.capacity = 2;
        // The monotonic clock at wall time `t`, the wall clock not stepped.
        let base = Instant::now();
        let at = |t: i64| base + Duration::from_secs((t - NOW) as u64);
        a.remember(CLIENT, "a", NOW + 10, NOW, at(NOW)).unwrap();
        a.remember(CLIENT, "b", NOW + 600, NOW, at(NOW)).unwrap();
        assert_eq!(
            a.remember(CLIENT, "c", NOW + 600, NOW, at(NOW)),
            Err(AssertionError::ReplayCacheFull)
        );
        // Another client's room is its own.
        a.remember("other", "c", NOW + 600, NOW, at(NOW)).unwrap();
        // Nothing expires before "a": still full a second before, without a sweep.
        let later = NOW + 10 + CLOCK_SKEW_SECS;
        assert_eq!(
            a.remember(CLIENT, "c", NOW + 600, later - 1, at(later - 1)),
            Err(AssertionError::ReplayCacheFull)
        );
        // Once "a" has expired its room is free again, and its id may come back.
        a.remember(CLIENT, "c", later + 600, later, at(later))
            .unwrap();
        assert_eq!(
            a.remember(CLIENT, "b", NOW + 600, later, at(later)),
            Err(AssertionError::Replayed)
        );
    }

    /// A step of the wall clock lets no used assertion in again: neither forward and back (a63-2), nor back
    /// after an id's monotonic time ran out (a64-3), nor back after its id was swept (a65-3).
    #[test]
    fn replay_memory_ignores_wall_clock_steps() {
        let cert = test_cert();
        let mut a = registry(&cert);
        a.capacity = 2;
        let base = Instant::now();
        let after = |secs: u64| base + Duration::from_secs(secs);
        a.remember(CLIENT, "a", NOW + 10, NOW, after(0)).unwrap();
        a.remember(CLIENT, "b", NOW + 600, NOW, after(0)).unwrap();
        // The wall clock a day ahead a second later: "a" is still live, so the memory is still full...
        let day = 86_400;
        assert_eq!(
            a.remember(CLIENT, "c", NOW + day + 600, NOW + day, after(1)),
            Err(AssertionError::ReplayCacheFull)
        );
        // ...and once the clock is back, "a" (still valid) is a replay, not a new assertion.
        assert_eq!(
            a.remember(CLIENT, "a", NOW + 10, NOW + 2, after(2)),
            Err(AssertionError::Replayed)
        );
        // Once "a" has expired by both clocks its room is free.
        let gone = 10 + CLOCK_SKEW_SECS;
        a.remember(
            CLIENT,
            "d",
            NOW + gone + 600,
            NOW + gone,
            after(gone as u64),
        )
        .unwrap();
        // A step back after an id's monotonic time ran out: the id is still known while its assertion is
        // valid by the wall clock, which is what `verify` checks it against (a64-3).
        let a = registry(&cert);
        a.remember(CLIENT, "e", NOW + 60, NOW, after(0)).unwrap();
        let back = NOW + 361 - 600;
        assert_eq!(
            a.remember(CLIENT, "e", NOW + 60, back, after(361)),
            Err(AssertionError::Replayed)
        );
        // Swept (expired by both clocks, the memory full), then the wall clock steps back into its validity.
        let mut a = registry(&cert);
        a.capacity = 2;
        a.remember(CLIENT, "f", NOW + 60, NOW, after(0)).unwrap();
        a.remember(CLIENT, "g", NOW + 60, NOW, after(0)).unwrap();
        a.remember(CLIENT, "h", NOW + 1600, NOW + 1000, after(1000))
            .unwrap();
        assert_eq!(
            a.remember(CLIENT, "f", NOW + 60, NOW + 10, after(1001)),
            Err(AssertionError::Replayed)
        );
        // A new assertion expiring later than the swept ones goes in as before.
        a.remember(CLIENT, "i", NOW + 1700, NOW + 1100, after(1100))
            .unwrap();
    }

    #[test]
    fn certificate_files() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = ClientCertificate::from_pem(cert.pem().as_bytes()).unwrap();
        assert_eq!(c.len(), 1);
        let rsa = rcgen::KeyPair::from_pem_and_sign_algo(
            include_str!("testdata/rsa-test-key.pem"),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap();
        let rsa_cert = rcgen::CertificateParams::new(vec!["app".into()])
            .unwrap()
            .self_signed(&rsa)
            .unwrap();
        let both = format!("{}{}", cert.pem(), rsa_cert.pem());
        let c = ClientCertificate::from_pem(both.as_bytes()).unwrap();
        assert!(!c[0].rsa && c[1].rsa);
        let e = ClientCertificate::from_pem(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = ClientCertificate::load(Path::new("/nonexistent/c.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/c.pem: not found"), "{e}");
        // An Ed25519 certificate: not a supported key type.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_cert = rcgen::CertificateParams::new(vec!["app".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        let e = ClientCertificate::from_pem(ed_cert.pem().as_bytes()).unwrap_err();
        assert!(e.contains("unsupported key type"), "{e}");
        assert!(ClientCertificate::from_der(b"\x30\x03\x02\x01\x01").is_err());
    }
}
