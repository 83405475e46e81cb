//! The api-versions of the Key Vault secrets data plane that the official SDKs can send.

use std::fmt;
use std::str::FromStr;

/// One api-version of the Key Vault data plane. Ordered oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ApiVersion {
    V2016_10_01,
    V7_0,
    V7_1,
    V7_2,
    V7_3,
    V7_4,
    V7_5,
    V7_6Preview2,
    V7_6,
    V2025_06_01Preview,
    V2025_07_01,
    V2026_01_01Preview,
    V2026_03_01Preview,
    V2026_04_01,
}

impl ApiVersion {
    /// Every version, oldest first.
    pub const ALL: [ApiVersion; 14] = [
        ApiVersion::V2016_10_01,
        ApiVersion::V7_0,
        ApiVersion::V7_1,
        ApiVersion::V7_2,
        ApiVersion::V7_3,
        ApiVersion::V7_4,
        ApiVersion::V7_5,
        ApiVersion::V7_6Preview2,
        ApiVersion::V7_6,
        ApiVersion::V2025_06_01Preview,
        ApiVersion::V2025_07_01,
        ApiVersion::V2026_01_01Preview,
        ApiVersion::V2026_03_01Preview,
        ApiVersion::V2026_04_01,
    ];

    /// The newest version (the default of the Python and JS SDKs 4.12).
    pub const LATEST: ApiVersion = ApiVersion::V2026_04_01;

    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V2016_10_01 => "2016-10-01",
            ApiVersion::V7_0 => "7.0",
            ApiVersion::V7_1 => "7.1",
            ApiVersion::V7_2 => "7.2",
            ApiVersion::V7_3 => "7.3",
            ApiVersion::V7_4 => "7.4",
            ApiVersion::V7_5 => "7.5",
            ApiVersion::V7_6Preview2 => "7.6-preview.2",
            ApiVersion::V7_6 => "7.6",
            ApiVersion::V2025_06_01Preview => "2025-06-01-preview",
            ApiVersion::V2025_07_01 => "2025-07-01",
            ApiVersion::V2026_01_01Preview => "2026-01-01-preview",
            ApiVersion::V2026_03_01Preview => "2026-03-01-preview",
            ApiVersion::V2026_04_01 => "2026-04-01",
        }
    }

    /// Whether responses in this version carry `recoverableDays` and the `CustomizedRecoverable*` levels.
    pub fn has_recoverable_days(self) -> bool {
        self >= ApiVersion::V7_1
    }
}

impl Default for ApiVersion {
    fn default() -> Self {
        Self::LATEST
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An api-version the service does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownApiVersion(pub String);

impl fmt::Display for UnknownApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "The specified version ({}) is not recognized. Consider using the latest supported version ({}).",
            self.0,
            ApiVersion::LATEST
        )
    }
}

impl std::error::Error for UnknownApiVersion {}

impl FromStr for ApiVersion {
    type Err = UnknownApiVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownApiVersion(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_version() {
        for v in ApiVersion::ALL {
            assert_eq!(v.as_str().parse::<ApiVersion>().unwrap(), v);
        }
        assert!(ApiVersion::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn unknown_version_has_key_vault_message() {
        let err = "7.9".parse::<ApiVersion>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "The specified version (7.9) is not recognized. Consider using the latest supported version (2026-04-01)."
        );
    }
}
