//! JSON bodies of the secrets data plane (protocol.md §1). Field names follow the wire (camelCase).
//!
//! Unset optional fields are omitted when serialising and accepted as absent or `null` when parsing.
//! Timestamps are Unix seconds as JSON integers.

use crate::secret::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

mod request_de;
pub use request_de::DUPLICATE_TAG;

/// Tags: name → value.
pub type Tags = BTreeMap<String, String>;

/// `attributes` of a secret. Read with property names in any case (see [`request_de`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_days: Option<i32>,
}

/// A secret with its value (GET, PUT) or without it (PATCH, recover, restore).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<SecretAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
}

impl fmt::Debug for SecretBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBundle")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("attributes", &self.attributes)
            .field("tags", &self.tags)
            .field("kid", &self.kid)
            .field("managed", &self.managed)
            .finish()
    }
}

/// The deletion facts that `DeletedSecretBundle` and `DeletedSecretItem` add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletionInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_date: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_purge_date: Option<i64>,
}

/// A deleted secret (DELETE, GET `/deletedsecrets/{name}`). Never carries a value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedSecretBundle {
    #[serde(flatten)]
    pub secret: SecretBundle,
    #[serde(flatten)]
    pub deletion: DeletionInfo,
}

/// A secret in a listing (no value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<SecretAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// A deleted secret in a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedSecretItem {
    #[serde(flatten)]
    pub item: SecretItem,
    #[serde(flatten)]
    pub deletion: DeletionInfo,
}

/// One page of a listing. `nextLink` is always written, as `null` on the last page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "T: Deserialize<'de>"))]
pub struct ListResult<T> {
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty")]
    pub value: Vec<T>,
    #[serde(default)]
    pub next_link: Option<String>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

pub type SecretListResult = ListResult<SecretItem>;
pub type DeletedSecretListResult = ListResult<DeletedSecretItem>;

/// Body of `PUT /secrets/{name}`. Read with property names in any case (see [`request_de`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSetParameters {
    pub value: SecretString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<SecretAttributes>,
}

impl fmt::Debug for SecretSetParameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSetParameters")
            .field("value", &"<redacted>")
            .field("tags", &self.tags)
            .field("content_type", &self.content_type)
            .field("attributes", &self.attributes)
            .finish()
    }
}

/// Body of `PATCH /secrets/{name}/{version}`: only the fields present change. Read with property names in any
/// case (see [`request_de`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretUpdateParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<SecretAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// Body of `POST /secrets/restore`: the backup blob, base64url without padding. Read with property names in
/// any case (see [`request_de`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SecretRestoreParameters {
    pub value: String,
}

/// Answer of `POST /secrets/{name}/backup`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSecretResult {
    #[serde(default)]
    pub value: Option<String>,
}

/// The error body: `{"error":{"code","message","innererror"?}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Key Vault's `innererror` carries a code only (`{"code":"SecretDisabled"}`): no `"message": null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innererror: Option<Box<ErrorDetail>>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: Some(code.to_string()),
                message: Some(message.into()),
                innererror: None,
            },
        }
    }

    pub fn with_inner(mut self, inner_code: &str) -> Self {
        self.error.innererror = Some(Box::new(ErrorDetail {
            code: Some(inner_code.to_string()),
            message: None,
            innererror: None,
        }));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_from_an_object_only() {
        let p: SecretSetParameters =
            serde_json::from_str(r#"{"value":"x","attributes":{"enabled":false,"exp":5}}"#)
                .unwrap();
        let a = p.attributes.unwrap();
        assert_eq!((a.enabled, a.exp), (Some(false), Some(5)));
        for absent in [r#"{"value":"x"}"#, r#"{"value":"x","attributes":null}"#] {
            let p: SecretSetParameters = serde_json::from_str(absent).unwrap();
            assert!(p.attributes.is_none());
        }
        for bad in [
            r#"{"value":"x","attributes":[false,5,2000000000]}"#,
            r#"{"value":"x","attributes":[]}"#,
            r#"{"value":"x","attributes":"enabled"}"#,
        ] {
            assert!(
                serde_json::from_str::<SecretSetParameters>(bad).is_err(),
                "{bad}"
            );
        }
        assert!(
            serde_json::from_str::<SecretUpdateParameters>(r#"{"attributes":[true]}"#).is_err()
        );
        let p: SecretUpdateParameters =
            serde_json::from_str(r#"{"attributes":{"enabled":true}}"#).unwrap();
        assert_eq!(p.attributes.unwrap().enabled, Some(true));
    }

    #[test]
    fn parses_real_set_response() {
        let body = r#"{"value":"v","id":"https://kv.vault.azure.net/secrets/n/968bc1b35f5449dfaf7109294020deb5","attributes":{"enabled":true,"created":1613504488,"updated":1613504488,"recoveryLevel":"CustomizedRecoverable+Purgeable","recoverableDays":7}}"#;
        let b: SecretBundle = serde_json::from_str(body).unwrap();
        assert_eq!(b.value.as_ref().unwrap().expose(), "v");
        let a = b.attributes.as_ref().unwrap();
        assert_eq!(a.recoverable_days, Some(7));
        assert_eq!(a.created, Some(1613504488));
        assert!(!format!("{b:?}").contains("\"v\""));
    }

    #[test]
    fn deleted_bundle_flattens() {
        let d = DeletedSecretBundle {
            secret: SecretBundle {
                id: Some("i".into()),
                ..Default::default()
            },
            deletion: DeletionInfo {
                recovery_id: Some("r".into()),
                deleted_date: Some(1),
                scheduled_purge_date: Some(2),
            },
        };
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(
            s,
            r#"{"id":"i","recoveryId":"r","deletedDate":1,"scheduledPurgeDate":2}"#
        );
        let back: DeletedSecretBundle = serde_json::from_str(&s).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn list_result_writes_null_next_link_and_tolerates_nulls() {
        let l: SecretListResult = ListResult {
            value: vec![],
            next_link: None,
        };
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"value":[],"nextLink":null}"#
        );
        let back: SecretListResult =
            serde_json::from_str(r#"{"value":null,"nextLink":null}"#).unwrap();
        assert!(back.value.is_empty());
        let with_nulls: SecretItem = serde_json::from_str(
            r#"{"id":"x","contentType":null,"tags":null,"attributes":{"nbf":null}}"#,
        )
        .unwrap();
        assert_eq!(with_nulls.content_type, None);
    }

    #[test]
    fn error_body_shape() {
        let e = ErrorBody::new("Forbidden", "no").with_inner("SecretDisabled");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":{"code":"Forbidden","message":"no","innererror":{"code":"SecretDisabled"}}}"#
        );
    }
}
