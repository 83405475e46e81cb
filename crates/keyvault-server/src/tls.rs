//! TLS (being written).
