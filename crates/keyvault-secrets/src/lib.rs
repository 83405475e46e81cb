//! The Key Vault secrets client (being written).
