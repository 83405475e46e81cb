//! The Key Vault secrets wire, shared by the `keyvault-secrets` client and the `keyvault-server`.
//!
//! - [`models`]: the JSON bodies (`SecretBundle`, `SecretItem`, list results, error body, …).
//! - [`api_version`]: every api-version the official SDKs send.
//! - [`rules`]: names, sizes and limits the service enforces.
//! - [`id`]: parsing secret identifiers (`https://{vault}/secrets/{name}[/{version}]`).
//! - [`recovery`]: the `DeletionRecoveryLevel` values.
//!
//! Nothing here does I/O.

pub mod api_version;
pub mod id;
pub mod models;
pub mod recovery;
pub mod rules;
pub mod secret;

pub use api_version::{ApiVersion, UnknownApiVersion};
pub use id::{SecretId, SecretIdError};
pub use recovery::DeletionRecoveryLevel;
pub use secret::SecretString;
