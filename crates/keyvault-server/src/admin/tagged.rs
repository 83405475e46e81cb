//! The access document's stored form: one JSON object carrying the document (as a string: its exact bytes are
//! what is tagged, so no canonical form is needed), its revision, the id of the key-encryption key it was
//! tagged under, and the tag ([`Envelope::tag_access_doc`]: HMAC-SHA256 under a key derived from that KEK):
//!
//! ```text
//! {"format":"keyvault-access/3","revision":<n>,"kek":"<8 hex>","tag":"<base64url>","document":"<the document's JSON>"}
//! ```
//!
//! The tagged bytes ([`message`]) bind the document to its vault and revision: a domain label, the vault's
//! name (lower case), the tenant id and the revision, each length-prefixed, then the document. So a document
//! copied from another vault that shares the KEK does not verify, nor does a shared store's older row put back
//! under a later revision. (Two vaults with the same name, tenant and KEK cannot be told apart: each
//! deployment has its own KEK.)
//!
//! Whoever can write the store or the data directory but does not hold the KEK cannot make a document that
//! verifies. A document without the wrapper (what builds before the tag wrote, or what someone wrote by hand),
//! or one in the earlier tagged form (`keyvault-access/2`, which bound neither vault nor revision), is
//! *untagged*: refused, unless the operator adopts it (`keyvault serve --adopt-access-document`), and never once
//! the store records that its document was tagged ([`TAGGED_MARKER`]).

use serde::{Deserialize, Serialize};

use crate::crypto::{AccessTag, CryptoError, Envelope};

/// The `format` of a tagged document.
pub const FORMAT: &str = "keyvault-access/3";
/// The earlier tagged form: its tag covered the document alone (no vault, no revision).
const FORMAT_V2: &str = "keyvault-access/2";
/// The domain label that starts every tagged message.
const LABEL: &[u8] = b"keyvault-rs access document v3";

/// The store's meta record saying that its access document has been saved tagged: from then on an untagged
/// one is tampering, never an upgrade, and `--adopt-access-document` does not take it.
pub const TAGGED_MARKER: &str = "access-document-tagged";

/// What a tag binds a document to besides its bytes and revision: the vault it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// The vault's name (compared in lower case, as a host name is).
    pub vault: String,
    /// The tenant id tokens are issued for.
    pub tenant: String,
}

impl Binding {
    pub fn new(vault: &str, tenant: &str) -> Self {
        Binding {
            vault: vault.to_ascii_lowercase(),
            tenant: tenant.to_owned(),
        }
    }
}

/// The bytes a tag covers: the label, the vault, the tenant and the revision (decimal), each prefixed by its
/// length (u32, big-endian), then the document.
pub fn message(binding: &Binding, revision: i64, document: &str) -> Vec<u8> {
    let revision = revision.to_string();
    let mut out =
        Vec::with_capacity(64 + binding.vault.len() + binding.tenant.len() + document.len());
    for field in [
        LABEL,
        binding.vault.to_ascii_lowercase().as_bytes(),
        binding.tenant.as_bytes(),
        revision.as_bytes(),
    ] {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(document.as_bytes());
    out
}

/// Why a stored document is refused: the first words of every such error.
pub const NOT_VERIFIED: &str = "the access-control document does not verify: it was changed outside the server, \
                                or written under a key this server does not hold";

#[derive(Serialize)]
struct Wrapper<'a> {
    format: &'a str,
    revision: i64,
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
    revision: Option<i64>,
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
    /// The revision it was tagged with.
    pub revision: i64,
}

/// Why a stored document was not accepted. Messages never quote the document.
#[derive(Debug)]
pub enum DocError {
    /// Not JSON, or not an object.
    Invalid(String),
    /// A wrapper that does not verify (a tag that does not match, a key not held, a malformed wrapper).
    /// `replaceable`: whether a change through the admin API may store a document over it — not when it names
    /// a key this server does not hold (it may be genuine), nor when it is an older revision put back (a
    /// change would store a revision other nodes have passed).
    NotVerified { message: String, replaceable: bool },
    /// No wrapper at all (written by an older build, or by hand), or the earlier tagged form (`v2`: it bound
    /// neither the vault nor the revision).
    Untagged { v2: bool },
}

/// The stored form of `document` (JSON) at `revision`, for the vault `binding` names, tagged under the current
/// key. `pretty`: the wrapper on several lines (the file).
pub fn wrap(
    envelope: &Envelope,
    binding: &Binding,
    revision: i64,
    document: &str,
    pretty: bool,
) -> Result<Vec<u8>, CryptoError> {
    let AccessTag { kek_id, tag } =
        envelope.tag_access_doc(&message(binding, revision, document))?;
    let wrapper = Wrapper {
        format: FORMAT,
        revision,
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

/// Whether stored `bytes` are an access document without this build's tag (no tag at all, or the earlier
/// `keyvault-access/2` form): what [`unwrap`] answers [`DocError::Untagged`] for, told without any key.
pub fn untagged(bytes: &[u8]) -> Option<DocError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    match probe.format.as_deref() {
        None if probe.kek.is_none() && probe.tag.is_none() && probe.document.is_none() => {
            Some(DocError::Untagged { v2: false })
        }
        Some(FORMAT_V2) => Some(DocError::Untagged { v2: true }),
        _ => None,
    }
}

/// The document in stored `bytes`, if its tag verifies under a key `envelope` holds, for the vault `binding`
/// names and (`revision`: the shared store's row) at that revision. `origin` names where it was read (a path,
/// "the store").
pub fn unwrap(
    envelope: &Envelope,
    binding: &Binding,
    bytes: &[u8],
    revision: Option<i64>,
    origin: &str,
) -> Result<Verified, DocError> {
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
        replaceable: true,
    };
    let Some(format) = probe.format else {
        if probe.kek.is_some() || probe.tag.is_some() || probe.document.is_some() {
            return Err(not_verified("a wrapper without its format"));
        }
        return Err(DocError::Untagged { v2: false });
    };
    if format == FORMAT_V2 {
        return Err(DocError::Untagged { v2: true });
    }
    if format != FORMAT {
        return Err(not_verified(
            "a format this build does not know: written by a newer build?",
        ));
    }
    let (Some(tagged_revision), Some(kek_id), Some(tag), Some(document)) =
        (probe.revision, probe.kek, probe.tag, probe.document)
    else {
        return Err(not_verified(
            "its wrapper lacks the revision, the key id, the tag or the document",
        ));
    };
    let tag = AccessTag { kek_id, tag };
    match envelope.verify_access_doc(&tag, &message(binding, tagged_revision, &document)) {
        Ok(()) if revision.is_some_and(|r| r != tagged_revision) => Err(not_verified(&format!(
            "it was tagged as revision {tagged_revision}, not as the store's revision: an older document put \
             back"
        ))),
        Ok(()) => Ok(Verified {
            document,
            kek_id: tag.kek_id,
            revision: tagged_revision,
        }),
        Err(CryptoError::UnknownKey(id)) => Err(DocError::NotVerified {
            message: format!(
                "{origin}: {NOT_VERIFIED} (tagged under key-encryption key id {id}, which is not configured: \
                 neither the current key nor a previous one)"
            ),
            replaceable: false,
        }),
        Err(_) => Err(not_verified(
            "its tag does not match: changed, or tagged for another vault or tenant",
        )),
    }
}

impl DocError {
    /// The reason a server gives for not starting over it.
    pub fn at_start(&self, origin: &str) -> String {
        match self {
            DocError::Invalid(m) | DocError::NotVerified { message: m, .. } => m.clone(),
            DocError::Untagged { v2: true } => format!(
                "{origin}: the access-control document is in the earlier tagged form (keyvault-access/2), whose \
                 tag bound neither the vault nor the revision. Start once with `keyvault serve \
                 --adopt-access-document` to accept it and save it in the current form, then check its \
                 principals and role assignments (`keyvault principal list`, `keyvault role list`)"
            ),
            DocError::Untagged { v2: false } => format!(
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
            DocError::Untagged { .. } => format!(
                "the store: {NOT_VERIFIED} (revision {revision} has no integrity tag of this build: written by a node of an \
                 older build, or by hand; a running node never adopts a document: upgrade every node before \
                 changing access)"
            ),
        }
    }
}

/// The document an operator adopts from stored `bytes` that [`unwrap`] found untagged: the bytes themselves,
/// or the document inside the earlier tagged form (whose tag must verify as that form's did: over the
/// document's bytes alone). Refused when it is not an access document: a JSON object whose members are all
/// of the document's own (`principals`, `assignments`, `roles`), so that an arbitrary object (a wrapper with
/// its members' names changed, say) is not adopted as an empty document. Messages never quote it.
pub fn adoptable(envelope: &Envelope, bytes: &[u8], origin: &str) -> Result<String, String> {
    let invalid =
        |why: &str| format!("{origin}: not a valid access document ({why}); nothing was adopted");
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        invalid(&format!(
            "{:?} error at line {}, column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Object(object) = value else {
        return Err(invalid("not a JSON object"));
    };
    let document = if object.get("format").and_then(|f| f.as_str()) == Some(FORMAT_V2) {
        let field = |name: &str| object.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(kek_id), Some(tag), Some(document)) =
            (field("kek"), field("tag"), field("document"))
        else {
            return Err(format!(
                "{origin}: {NOT_VERIFIED} (an earlier tagged form that lacks the key id, the tag or the document)"
            ));
        };
        let tag = AccessTag { kek_id, tag };
        envelope
            .verify_access_doc(&tag, document.as_bytes())
            .map_err(|e| match e {
                CryptoError::UnknownKey(id) => format!(
                    "{origin}: {NOT_VERIFIED} (tagged under key-encryption key id {id}, which is not configured)"
                ),
                _ => format!("{origin}: {NOT_VERIFIED} (its earlier form's tag does not match)"),
            })?;
        document
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid("not UTF-8"))?
    };
    let inner: serde_json::Value =
        serde_json::from_str(&document).map_err(|_| invalid("its document is not JSON"))?;
    let serde_json::Value::Object(members) = inner else {
        return Err(invalid("not a JSON object"));
    };
    if let Some(other) = members
        .keys()
        .find(|k| !["principals", "assignments", "roles"].contains(&k.as_str()))
    {
        let shown = if other.len() <= 32
            && other
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            other.as_str()
        } else {
            "(not shown)"
        };
        return Err(invalid(&format!(
            "a member an access document does not have: {shown}"
        )));
    }
    Ok(document)
}
