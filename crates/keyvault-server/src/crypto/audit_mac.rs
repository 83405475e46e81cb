//! The audit log's MAC key: derived from a key-encryption key with HKDF-SHA256 for this one purpose, so a
//! writer of the audit log who does not hold the KEK cannot make a line that verifies (`crate::audit`).

use super::{BACKUP_SALT, CryptoError, Kek};

/// HKDF info for the audit log's HMAC-SHA256 key (no other key is derived with it).
const AUDIT_MAC_INFO: &[u8] = b"keyvault-rs audit chain mac v1";

/// The HMAC-SHA256 key that authenticates audit lines, derived from `kek`. Build it once: a request's audit
/// line is signed with it.
pub fn audit_mac_key(kek: &Kek) -> Result<ring::hmac::Key, CryptoError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, BACKUP_SALT).extract(kek.bytes());
    let info = [AUDIT_MAC_INFO];
    let okm = prk
        .expand(&info, ring::hmac::HMAC_SHA256)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(ring::hmac::Key::from(okm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_kek_and_apart_from_the_other_derived_keys() {
        let a = Kek::from_bytes([1; 32]);
        let b = Kek::from_bytes([2; 32]);
        let tag = |k: &ring::hmac::Key| ring::hmac::sign(k, b"line hash").as_ref().to_vec();
        let ka = audit_mac_key(&a).unwrap();
        assert_eq!(tag(&ka), tag(&audit_mac_key(&a).unwrap()));
        assert_ne!(tag(&ka), tag(&audit_mac_key(&b).unwrap()));
        // Not the KEK itself used as an HMAC key.
        let raw = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1; 32]);
        assert_ne!(tag(&ka), tag(&raw));
    }
}
