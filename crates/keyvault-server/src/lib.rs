//! The Key Vault secrets-compatible server, as a library.
//!
//! Data flows one way: HTTP request → auth (who) → vault domain (what it means) → crypto (seal/open) →
//! store (bytes and rows). Nothing below [`vault`] knows about HTTP; nothing above [`store`] knows about SQL.
//!
//! - [`http`]: the axum router, Key Vault wire mapping, one error → response table.
//! - [`auth`]: the built-in token issuer (OAuth2 client credentials, OIDC discovery, JWKS), verification,
//!   and access control ([`auth::policy`]).
//! - [`admin`]: principals, client secrets and role assignments managed at run time (the admin API).
//! - [`audit`]: the hash-chained audit log and its verification.
//! - [`vault`]: versions, latest, soft delete, recover, purge, retention sweeper, backup.
//! - [`crypto`]: envelope encryption, key providers (a current key-encryption key and previous ones).
//! - [`rekey`]: re-sealing every stored value under the current key-encryption key (`keyvault rekey`).
//! - [`store`]: the `SecretStore` trait and its SQLite implementation.
//! - [`metrics`]: Prometheus counters and the `/metrics` listener (`metrics_addr`).
//! - [`tls`]: certificates (files or a generated dev CA) and the rustls configuration.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod http;
mod idle;
mod json;
pub mod local;
pub mod lograte;
pub mod metrics;
pub mod rekey;
pub mod server;
pub mod store;
pub mod tls;
pub mod vault;

pub use config::Config;
pub use local::LocalVault;
pub use server::{DevCredentials, Server, ServerInfo, StartError};
