//! Token issuing and verification (being written).
