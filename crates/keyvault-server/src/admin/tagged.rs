//! The access document's stored form: one JSON object carrying the document (as a string: its exact bytes are
//! what is tagged, so no canonical form is needed), the id of the key-encryption key it was tagged under, and
//! the tag ([`Envelope::tag_access_doc`]: HMAC-SHA256 under a key derived from that KEK):
//!
//! ```text
//! {"format":"keyvault-access/2","kek":"<8 hex>","tag":"<base64url>","document":"<the document's JSON>"}
//! ```
//!
//! Whoever can write the store or the data directory but does not hold the KEK cannot make a document that
//! verifies. A document without the wrapper (what builds before the tag wrote, or what someone wrote by hand)
//! is *untagged*: refused, unless the operator adopts it (`keyvault serve --adopt-access-document`).

use serde::{Deserialize, Serialize};

use crate::crypto::{AccessTag, CryptoError, Envelope};

/// The `format` of a tagged document.
pub const FORMAT: &str = "keyvault-access/2";

/// Why a stored document is refused: the first words of every such error.
pub const NOT_VERIFIED: &str = "the access-control document does not verify: it was changed outside the server, \
                                or written under a key this server does not hold";

#[derive(Serialize)]
struct Wrapper<'a> {
    format: &'a str,
    kek: &'a str,
    tag: &'a str,
    document: &'a str,
}

/// Any JSON object: a wrapper's members if it has them (an untagged document has none of them).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    kek: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    document: Option<String>,
}

/// A stored document that verified.
pub struct Verified {
    /// The document's JSON.
    pub document: String,
    /// The KEK it was tagged under.
    pub kek_id: String,
}

/// Why a stored document was not accepted. Messages never quote the document.
#[derive(Debug)]
pub enum DocError {
    /// Not JSON, or not an object.
    Invalid(String),
    /// A wrapper that does not verify (a tag that does not match, a key not held, a malformed wrapper).
    /// `unknown_key`: it names a key this server does not hold (the document may be genuine).
    NotVerified { message: String, unknown_key: bool },
    /// No wrapper at all: written by an older build, or by hand.
    Untagged,
}

/// The stored form of `document` (JSON), tagged under the current key. `pretty`: the wrapper on several
/// lines (the file).
pub fn wrap(envelope: &Envelope, document: &str, pretty: bool) -> Result<Vec<u8>, CryptoError> {
    let AccessTag { kek_id, tag } = envelope.tag_access_doc(document.as_bytes())?;
    let wrapper = Wrapper {
        format: FORMAT,
        kek: &kek_id,
        tag: &tag,
        document,
    };
    let bytes = if pretty {
        serde_json::to_vec_pretty(&wrapper)
    } else {
        serde_json::to_vec(&wrapper)
    };
    // Serialising strings into a vector cannot fail.
    Ok(bytes.unwrap_or_default())
}

/// The document in stored `bytes`, if its tag verifies under a key `envelope` holds. `origin` names where it
/// was read (a path, "the store").
pub fn unwrap(envelope: &Envelope, bytes: &[u8], origin: &str) -> Result<Verified, DocError> {
    // serde would read a JSON array as a struct's fields in order: only an object is a document.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DocError::Invalid(format!(
            "{origin}: not a valid access document (not a JSON object)"
        )));
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
        DocError::Invalid(format!(
            "{origin}: not a valid access document ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let not_verified = |detail: &str| DocError::NotVerified {
        message: format!("{origin}: {NOT_VERIFIED} ({detail})"),
        unknown_key: false,
    };
    let Some(format) = probe.format else {
        if probe.kek.is_some() || probe.tag.is_some() || probe.document.is_some() {
            return Err(not_verified("a wrapper without its format"));
        }
        return Err(DocError::Untagged);
    };
    if format != FORMAT {
        return Err(not_verified(
            "a format this build does not know: written by a newer build?",
        ));
    }
    let (Some(kek_id), Some(tag), Some(document)) = (probe.kek, probe.tag, probe.document) else {
        return Err(not_verified(
            "its wrapper lacks the key id, the tag or the document",
        ));
    };
    let tag = AccessTag { kek_id, tag };
    match envelope.verify_access_doc(&tag, document.as_bytes()) {
        Ok(()) => Ok(Verified {
            document,
            kek_id: tag.kek_id,
        }),
        Err(CryptoError::UnknownKey(id)) => Err(DocError::NotVerified {
            message: format!(
                "{origin}: {NOT_VERIFIED} (tagged under key-encryption key id {id}, which is not configured: \
                 neither the current key nor a previous one)"
            ),
            unknown_key: true,
        }),
        Err(_) => Err(not_verified("its tag does not match")),
    }
}

impl DocError {
    /// The reason a server gives for not starting over it.
    pub fn at_start(&self, origin: &str) -> String {
        match self {
            DocError::Invalid(m) | DocError::NotVerified { message: m, .. } => m.clone(),
            DocError::Untagged => format!(
                "{origin}: the access-control document has no integrity tag: it was written by an older \
                 keyvault (before access documents were tagged), or by someone other than this server. If \
                 you upgraded, start once with `keyvault serve --adopt-access-document` to accept it and save \
                 it tagged under the key-encryption key, then check its principals and role assignments \
                 (`keyvault principal list`, `keyvault role list`): anyone who could write it could have \
                 granted access"
            ),
        }
    }

    /// The reason a refresh gives for refusing another node's change.
    pub fn at_refresh(&self, revision: i64) -> String {
        match self {
            DocError::Invalid(m) | DocError::NotVerified { message: m, .. } => {
                format!("{m} (revision {revision})")
            }
            DocError::Untagged => format!(
                "the store: {NOT_VERIFIED} (revision {revision} has no integrity tag: written by a node of an \
                 older build, or by hand; a running node never adopts a document: upgrade every node before \
                 changing access)"
            ),
        }
    }
}
