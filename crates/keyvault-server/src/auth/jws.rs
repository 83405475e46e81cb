//! The protected header of a compact JWS, read the same way wherever the server verifies one: its own access
//! tokens, trusted issuers' access tokens ([`super::external`]), and client assertions at the token endpoint
//! (certificate assertions and federated tokens, [`super::assertion`]).
//!
//! `jsonwebtoken`'s [`Header`] drops the members it does not know, `crit` among them. RFC 7515 §4.1.11: a
//! recipient that does not understand an extension listed in `crit` must refuse the JWS, and an empty list is
//! not allowed. This server understands no extension, so a header with a `crit` member, whatever its value,
//! is refused ([`HeaderError::Critical`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use serde::{Deserialize, Deserializer};

/// Why a JWS header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Not three dot-separated parts, not base64url, not a JSON object, or not a header `jsonwebtoken` reads
    /// (no `alg`, an unknown one, a member of the wrong type), or naming a member twice (any member).
    Malformed,
    /// The header has a `crit` member.
    Critical,
}

/// Only whether a header has a `crit` member (of any value, `null` included).
#[derive(Deserialize)]
struct CritProbe {
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// The header of a compact JWS (`header.payload.signature`), refused if it has a `crit` member.
pub(crate) fn decode_header(token: &str) -> Result<Header, HeaderError> {
    header_of(token, false)
}

/// [`decode_header`] for a client assertion, whose parts may carry base64 `=` padding
/// ([`trim_padding`]).
pub(crate) fn decode_assertion_header(token: &str) -> Result<Header, HeaderError> {
    header_of(token, true)
}

/// A base64url part without the `=` padding some signers keep (RFC 7515 says to omit it). Entra accepts
/// padded client assertions, and two official SDKs send them: azure-identity's async
/// `CertificateCredential` for Python (`base64.urlsafe_b64encode`, every part) and the Rust
/// `azure_identity` crate's `ClientCertificateCredential` (padded url-safe base64). At most two `=` can
/// be padding; a part with more is left as it is (and fails to decode).
pub(crate) fn trim_padding(part: &str) -> &str {
    let trimmed = part.trim_end_matches('=');
    if part.len() - trimmed.len() <= 2 {
        trimmed
    } else {
        part
    }
}

fn header_of(token: &str, padded: bool) -> Result<Header, HeaderError> {
    let mut parts = token.split('.');
    let (Some(encoded), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeaderError::Malformed);
    };
    let encoded = if padded {
        trim_padding(encoded)
    } else {
        encoded
    };
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| HeaderError::Malformed)?;
    // serde refuses a repeat of the members `Header` reads, not of the others (which it skips): the same
    // rule for every member as for a payload's (a88-2).
    if super::token::object_has_duplicate_member(&json) {
        return Err(HeaderError::Malformed);
    }
    let probe: CritProbe = serde_json::from_slice(&json).map_err(|_| HeaderError::Malformed)?;
    if probe.crit {
        return Err(HeaderError::Critical);
    }
    serde_json::from_slice(&json).map_err(|_| HeaderError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    fn token(header: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn crit_is_refused_whatever_its_value() {
        let ok = decode_header(&token(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#)).unwrap();
        assert_eq!((ok.alg, ok.kid.as_deref()), (Algorithm::ES256, Some("k1")));
        // Unknown members other than `crit` are ignored, as before; a nested `crit` is not the header's.
        let ok = decode_header(&token(r#"{"alg":"ES256","x-extra":{"crit":["b64"]}}"#)).unwrap();
        assert_eq!(ok.alg, Algorithm::ES256);
        for crit in [
            r#"["b64"]"#,
            r#"["exp"]"#,
            "[]",
            "null",
            r#""b64""#,
            "{}",
            "0",
        ] {
            let h = format!(r#"{{"alg":"ES256","crit":{crit},"b64":false}}"#);
            assert_eq!(
                decode_header(&token(&h)).unwrap_err(),
                HeaderError::Critical,
                "{h}"
            );
        }
        // `crit` before `alg`, and in a header that is otherwise not one jsonwebtoken reads: refused too.
        let h = token(r#"{"crit":["b64"],"alg":"ES256"}"#);
        assert_eq!(decode_header(&h).unwrap_err(), HeaderError::Critical);
        let h = token(r#"{"crit":[]}"#);
        assert_eq!(decode_header(&h).unwrap_err(), HeaderError::Critical);
    }

    #[test]
    fn malformed_headers() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for t in [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!!.e30.c2ln".into(),
            format!("{}=.e30.c2ln", b64(r#"{"alg":"ES256"}"#)),
            token("not json"),
            token("[]"),
            token(r#"{"typ":"JWT"}"#),
            token(r#"{"alg":"XX999"}"#),
            token(r#"{"alg":"ES256","kid":7}"#),
            // A member given twice, `crit` or another: not a header we read two ways.
            token(r#"{"alg":"ES256","crit":["b64"],"crit":["b64"]}"#),
            token(r#"{"alg":"ES256","alg":"HS256"}"#),
            // Also a member `Header` does not read (a88-2), escaped or not.
            token(r#"{"alg":"ES256","kid":"k1","foo":1,"foo":2}"#),
            token(r#"{"alg":"ES256","x5c":["a"],"\u0078\u0035c":["b"]}"#),
        ] {
            assert_eq!(
                decode_header(&t).unwrap_err(),
                HeaderError::Malformed,
                "{t}"
            );
        }
    }
}
