//! `DeletionRecoveryLevel`: what a vault does with deleted secrets.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The recovery level of a secret, as the service reports it in `attributes.recoveryLevel`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeletionRecoveryLevel {
    Purgeable,
    RecoverablePurgeable,
    Recoverable,
    RecoverableProtectedSubscription,
    CustomizedRecoverablePurgeable,
    CustomizedRecoverable,
    CustomizedRecoverableProtectedSubscription,
    /// A value this library does not know.
    Unknown(String),
}

impl DeletionRecoveryLevel {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Purgeable => "Purgeable",
            Self::RecoverablePurgeable => "Recoverable+Purgeable",
            Self::Recoverable => "Recoverable",
            Self::RecoverableProtectedSubscription => "Recoverable+ProtectedSubscription",
            Self::CustomizedRecoverablePurgeable => "CustomizedRecoverable+Purgeable",
            Self::CustomizedRecoverable => "CustomizedRecoverable",
            Self::CustomizedRecoverableProtectedSubscription => {
                "CustomizedRecoverable+ProtectedSubscription"
            }
            Self::Unknown(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "Purgeable" => Self::Purgeable,
            "Recoverable+Purgeable" => Self::RecoverablePurgeable,
            "Recoverable" => Self::Recoverable,
            "Recoverable+ProtectedSubscription" => Self::RecoverableProtectedSubscription,
            "CustomizedRecoverable+Purgeable" => Self::CustomizedRecoverablePurgeable,
            "CustomizedRecoverable" => Self::CustomizedRecoverable,
            "CustomizedRecoverable+ProtectedSubscription" => {
                Self::CustomizedRecoverableProtectedSubscription
            }
            other => Self::Unknown(other.to_string()),
        }
    }

    /// The level of a soft-delete vault with this retention and purge protection setting (protocol.md §6).
    pub fn for_vault(retention_days: u32, purge_protection: bool) -> Self {
        match (retention_days >= 90, purge_protection) {
            (true, false) => Self::RecoverablePurgeable,
            (true, true) => Self::Recoverable,
            (false, false) => Self::CustomizedRecoverablePurgeable,
            (false, true) => Self::CustomizedRecoverable,
        }
    }

    /// Whether a deleted secret may be purged on request.
    pub fn is_purgeable(&self) -> bool {
        self.as_str().contains("Purgeable")
    }
}

impl fmt::Display for DeletionRecoveryLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeletionRecoveryLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeletionRecoveryLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_configuration() {
        use DeletionRecoveryLevel as L;
        assert_eq!(L::for_vault(90, false), L::RecoverablePurgeable);
        assert_eq!(L::for_vault(90, true), L::Recoverable);
        assert_eq!(L::for_vault(7, false), L::CustomizedRecoverablePurgeable);
        assert_eq!(L::for_vault(7, true), L::CustomizedRecoverable);
        assert!(L::for_vault(7, false).is_purgeable());
        assert!(!L::for_vault(90, true).is_purgeable());
        for s in [
            "Purgeable",
            "Recoverable+Purgeable",
            "Recoverable",
            "Recoverable+ProtectedSubscription",
            "CustomizedRecoverable+Purgeable",
            "CustomizedRecoverable",
            "CustomizedRecoverable+ProtectedSubscription",
        ] {
            assert_eq!(L::parse(s).as_str(), s);
            assert!(!matches!(L::parse(s), L::Unknown(_)));
        }
        assert_eq!(L::parse("Future"), L::Unknown("Future".into()));
    }
}
