//! Reading request bodies as Key Vault does: property names match in any case (`Value`, `contentType` and
//! `CONTENTTYPE` are one property each), so a client that writes PascalCase (.NET's default) is not silently
//! ignored — `{"value":"x","Attributes":{"Enabled":false}}` disables the secret instead of dropping its
//! attributes. A property given twice (in any cases) is refused; unknown properties are ignored; `null` is an
//! absent optional property. Only JSON objects are read (serde's derive would also take an array of the
//! fields in order, so that `"attributes": [false]` would disable a secret). A tag name given twice (the
//! same name exactly: tag names are data, and keep their case) is refused too, rather than one of its values
//! dropped. A timestamp may be written `-0` (a JSON integer, read as 0 as .NET reads it).

use super::{
    SecretAttributes, SecretRestoreParameters, SecretSetParameters, SecretUpdateParameters, Tags,
};
use crate::secret::SecretString;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// A property's canonical name among `names`, compared without ASCII case; `None` for one not read.
struct Field(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Field {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Field {
    type Value = Option<&'static str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|n| n.eq_ignore_ascii_case(key)))
    }
}

/// Fills a slot once: a second value for the same property (in whatever case) is an error.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

/// Tags whose names are each given once (serde's map would keep the last of two values for one name).
struct UniqueTags(Tags);

impl From<UniqueTags> for Tags {
    fn from(tags: UniqueTags) -> Tags {
        tags.0
    }
}

/// The start of the error for a tag name given twice (the caller words it; the name is not quoted).
pub const DUPLICATE_TAG: &str = "duplicate tag name";

impl<'de> Deserialize<'de> for UniqueTags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TagsVisitor;
        impl<'de> Visitor<'de> for TagsVisitor {
            type Value = UniqueTags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tags object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueTags, A::Error> {
                let mut tags = Tags::new();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    if let std::collections::btree_map::Entry::Vacant(slot) = tags.entry(name) {
                        slot.insert(value);
                    } else {
                        return Err(de::Error::custom(DUPLICATE_TAG));
                    }
                }
                Ok(UniqueTags(tags))
            }
        }
        d.deserialize_map(TagsVisitor)
    }
}

/// Unix seconds: a JSON integer, `-0` included (serde_json reads `-0` as the float -0.0).
struct Seconds(i64);

impl From<Seconds> for i64 {
    fn from(s: Seconds) -> i64 {
        s.0
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;
        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                i64::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                // serde_json reports the integer `-0` as the float -0.0, so it is taken as 0 here; `0.0`, `1e3`
                // and every other float stay refused (but `-0.0` and `-0e0`, which read the same as `-0`).
                if v == 0.0 && v.is_sign_negative() {
                    Ok(Seconds(0))
                } else {
                    Err(E::invalid_type(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_i64(SecondsVisitor)
    }
}

/// `Deserialize` for a struct from a JSON object whose property names match in any case. Each field is
/// `(field, "wireName", opt Type)` for an `Option<Type>` field (absent or `null`: `None`) or
/// `(field, "wireName", req Type)` for a required one.
macro_rules! read_any_case {
    ($ty:ident, $expecting:literal, $(($field:ident, $name:literal, $kind:ident $fty:ty)),+ $(,)?) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        const NAMES: &[&str] = &[$($name),+];
                        $(let mut $field: Option<read_any_case!(@slot $kind $fty)> = None;)+
                        while let Some(name) = map.next_key_seed(Field(NAMES))? {
                            match name {
                                $(Some($name) => once(&mut $field, map.next_value()?, $name)?,)+
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                }
                            }
                        }
                        Ok($ty { $($field: read_any_case!(@finish $kind $field, $name)),+ })
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
    (@slot opt $fty:ty) => { Option<$fty> };
    (@slot req $fty:ty) => { $fty };
    // Through `Into`: a field read through a wrapper (tags, seconds) becomes the struct's type.
    (@finish opt $field:ident, $name:literal) => { $field.flatten().map(Into::into) };
    (@finish req $field:ident, $name:literal) => {
        $field.ok_or_else(|| de::Error::missing_field($name))?
    };
}

read_any_case!(
    SecretAttributes,
    "an attributes object",
    (enabled, "enabled", opt bool),
    (nbf, "nbf", opt Seconds),
    (exp, "exp", opt Seconds),
    (created, "created", opt Seconds),
    (updated, "updated", opt Seconds),
    (recovery_level, "recoveryLevel", opt String),
    (recoverable_days, "recoverableDays", opt i32),
);

read_any_case!(
    SecretSetParameters,
    "a secret's parameters object",
    (value, "value", req SecretString),
    (tags, "tags", opt UniqueTags),
    (content_type, "contentType", opt String),
    (attributes, "attributes", opt SecretAttributes),
);

read_any_case!(
    SecretUpdateParameters,
    "a secret's update object",
    (content_type, "contentType", opt String),
    (attributes, "attributes", opt SecretAttributes),
    (tags, "tags", opt UniqueTags),
);

read_any_case!(
    SecretRestoreParameters,
    "a restore object",
    (value, "value", req String),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_names_match_in_any_case() {
        let p: SecretSetParameters = serde_json::from_str(
            r#"{"Value":"x","ContentType":"text/plain","TAGS":{"Env":"a"},"Attributes":{"Enabled":false,"EXP":5,"nBf":1}}"#,
        )
        .unwrap();
        assert_eq!(p.value.expose(), "x");
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        // Tag names are data, not properties: their case is kept.
        assert_eq!(p.tags.unwrap().get("Env").map(String::as_str), Some("a"));
        let a = p.attributes.unwrap();
        assert_eq!((a.enabled, a.exp, a.nbf), (Some(false), Some(5), Some(1)));
        let u: SecretUpdateParameters =
            serde_json::from_str(r#"{"contenttype":"t","attributes":{"ENABLED":true}}"#).unwrap();
        assert_eq!(u.content_type.as_deref(), Some("t"));
        assert_eq!(u.attributes.unwrap().enabled, Some(true));
        let r: SecretRestoreParameters = serde_json::from_str(r#"{"VALUE":"blob"}"#).unwrap();
        assert_eq!(r.value, "blob");
        let a: SecretAttributes =
            serde_json::from_str(r#"{"RecoveryLevel":"Purgeable","recoverabledays":7}"#).unwrap();
        assert_eq!(a.recovery_level.as_deref(), Some("Purgeable"));
        assert_eq!(a.recoverable_days, Some(7));
    }

    #[test]
    fn a_property_twice_in_any_case_is_refused() {
        for body in [
            r#"{"value":"a","Value":"b"}"#,
            r#"{"value":"a","value":"b"}"#,
            r#"{"value":"a","attributes":{"enabled":true,"Enabled":false}}"#,
            r#"{"value":"a","tags":null,"Tags":{}}"#,
        ] {
            let e = serde_json::from_str::<SecretSetParameters>(body).unwrap_err();
            assert!(e.to_string().starts_with("duplicate field"), "{body}: {e}");
        }
    }

    #[test]
    fn a_tag_name_twice_is_refused_and_names_differing_in_case_are_two() {
        for body in [
            r#"{"value":"a","tags":{"k":"1","k":"2"}}"#,
            r#"{"value":"a","tags":{"k":"1","\u006b":"1"}}"#,
        ] {
            let e = serde_json::from_str::<SecretSetParameters>(body).unwrap_err();
            assert!(e.to_string().starts_with(DUPLICATE_TAG), "{body}: {e}");
        }
        let e = serde_json::from_str::<SecretUpdateParameters>(
            r#"{"tags":{"env":"prod","env":"dev"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with(DUPLICATE_TAG), "{e}");
        let p: SecretSetParameters =
            serde_json::from_str(r#"{"value":"a","tags":{"k":"1","K":"2"}}"#).unwrap();
        assert_eq!(p.tags.unwrap().len(), 2);
    }

    #[test]
    fn minus_zero_seconds_are_zero_and_floats_stay_refused() {
        let a: SecretAttributes = serde_json::from_str(r#"{"nbf":-0,"exp":-0}"#).unwrap();
        assert_eq!((a.nbf, a.exp), (Some(0), Some(0)));
        for body in [
            r#"{"exp":0.0}"#,
            r#"{"exp":1e3}"#,
            r#"{"exp":0.5}"#,
            r#"{"exp":18446744073709551615}"#,
            r#"{"exp":"0"}"#,
        ] {
            assert!(
                serde_json::from_str::<SecretAttributes>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn unknown_properties_are_ignored_and_null_is_absent() {
        let p: SecretSetParameters = serde_json::from_str(
            r#"{"value":"x","kid":{"deep":[1,2]},"contentType":null,"tags":null,"attributes":null,"managed":true}"#,
        )
        .unwrap();
        assert!(p.content_type.is_none() && p.tags.is_none() && p.attributes.is_none());
        let e = serde_json::from_str::<SecretSetParameters>(r#"{"contentType":"t"}"#).unwrap_err();
        assert!(e.to_string().starts_with("missing field `value`"), "{e}");
        assert!(serde_json::from_str::<SecretSetParameters>(r#"{"value":null}"#).is_err());
        assert!(serde_json::from_str::<SecretSetParameters>(r#"["x"]"#).is_err());
        assert!(serde_json::from_str::<SecretRestoreParameters>(r#"["blob"]"#).is_err());
    }
}
