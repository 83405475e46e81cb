//! # keyvault-secrets
//!
//! An Azure Key Vault secrets client: the API of Python's `azure-keyvault-secrets`, in idiomatic async
//! Rust, with a blocking wrapper. It speaks Key Vault's wire (challenge authentication, paging, soft
//! delete), so it works against Azure Key Vault and against `keyvault-server`.
//!
//! ## Module map
//!
//! | Module | What is in it |
//! |---|---|
//! | crate root | [`SecretClient`] (async), [`SecretClientOptions`], [`CallOptions`] (per-call headers, timeouts, retries, logging: [`SecretClient::with_call_options`]); the models re-exported |
//! | [`models`] | [`KeyVaultSecret`], [`SecretProperties`], [`DeletedSecret`], [`KeyVaultSecretIdentifier`], [`SetSecretOptions`], [`UpdateSecretPropertiesOptions`] |
//! | [`credentials`] | [`TokenCredential`](credentials::TokenCredential) and the credentials: static token, client secret, client certificate, client assertion, workload identity, environment, managed identity, Azure CLI, chained, default chain |
//! | [`pager`] | [`Pager`] (a `Stream` of items, resumable) and [`Pages`] |
//! | [`poller`] | [`Poller`] for `begin_delete_secret` / `begin_recover_deleted_secret`: done callbacks, continuation tokens |
//! | [`error`] | [`Error`] and [`ErrorKind`] (not found, exists, authentication, HTTP, connection, credential, data, invalid argument) |
//! | [`http`] | raw [`Request`](http::Request) / [`Response`](http::Response) for [`SecretClient::send_request`], the [`Transport`](http::Transport) trait |
//! | [`blocking`] | `blocking::SecretClient` with the same methods; pagers are `Iterator`s (feature `blocking`, on by default) |
//!
//! Dates are [`time::OffsetDateTime`] (UTC). Secret values are [`SecretString`]: `Debug` never shows them.
//!
//! ## Runtime
//!
//! The async [`SecretClient`] needs a Tokio 1.x runtime with its I/O and time drivers (`#[tokio::main]`, or a
//! `Builder` with `enable_all()`), of either flavour (`current_thread` or `multi_thread`): its connections,
//! timeouts, retry delays and pollers use Tokio. Driven by another executor (smol, async-std,
//! `futures::executor`) a call panics with Tokio's "there is no reactor running". The
//! [`blocking`] client brings its own runtime; from async code it returns an [`ErrorKind::Other`] error
//! instead of blocking (use the async client there, or call it inside `tokio::task::spawn_blocking`).
//! Iterating a [`Pager`] with `.next().await` takes `futures_util::StreamExt` (or `futures::StreamExt`): add
//! `futures-util = "0.3"` (or `futures`) to your dependencies.
//!
//! ## Secret values in memory
//!
//! A [`SecretString`] (the `value` of [`KeyVaultSecret`] and [`DeletedSecret`]) wipes its bytes when dropped.
//! Copies on the way to and from the service are wiped where this crate owns them: the JSON body of a request
//! it serialises (`set_secret`, `restore_secret_backup`, a credential's token request) and the body of a
//! response its built-in transport reads, once the last copy of either is dropped. Buffers inside hyper,
//! reqwest and rustls (the TLS records, encrypted or not), serde_json's scratch buffer for a value with escape
//! sequences, a value you copied out of a `SecretString`, and the bodies of a
//! [`Transport`](http::Transport) of your own are out of its reach, so copies of a value may stay in freed
//! memory until it is reused.
//!
//! ## Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use keyvault_secrets::{SecretClient, SetSecretOptions, credentials::ClientSecretCredential};
//! use std::sync::Arc;
//!
//! # async fn demo() -> keyvault_secrets::Result<()> {
//! let credential = Arc::new(ClientSecretCredential::new("tenant-id", "client-id", "client-secret", None)?);
//! let client = SecretClient::new("https://my-vault.vault.azure.net", credential, None)?;
//!
//! let options = SetSecretOptions::default().content_type("text/plain").tag("env", "prod");
//! let secret = client.set_secret("api-key", "sk-123", Some(options)).await?;
//! assert_eq!(secret.value(), Some("sk-123"));
//!
//! let mut secrets = client.list_properties_of_secrets(None)?;
//! while let Some(properties) = secrets.next().await {
//!     println!("{}", properties?.name);
//! }
//!
//! let deleted = client.begin_delete_secret("api-key").await?.await?; // wait until deleted
//! println!("deleted on {:?}", deleted.deleted_on);
//! client.purge_deleted_secret("api-key").await?;
//! # Ok(()) }
//! ```
//!
//! ## The pipeline
//!
//! Every request goes through retries (azure-core's rules and defaults: 408/429/5xx and connection errors,
//! exponential backoff, honouring `Retry-After`; see [`RetryOptions`]), Key Vault's challenge authentication (the first request learns the
//! scope and tenant from the 401; tokens are cached and refreshed before they expire), and logging with
//! `tracing` (one span per operation). As in the Python SDK, every request and response is logged at INFO
//! (target `keyvault_secrets::http`: method, URL, status, time taken, headers), and `logging_enable` adds DEBUG
//! lines with the bodies; header values outside an allow-list, query values other than `api-version` and
//! `maxresults`, secret values, tokens and client secrets are `REDACTED` in every line.

#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
pub mod credentials;
pub mod error;
pub mod http;
pub mod models;
pub mod pager;
mod pipeline;
pub mod poller;

pub use client::{CallOptions, SecretClient, SecretClientOptions};
pub use error::{Error, ErrorKind, Result};
pub use keyvault_types::{ApiVersion, DeletionRecoveryLevel, SecretString};
pub use models::{
    ContentType, DeletedSecret, KeyVaultSecret, KeyVaultSecretIdentifier, SecretProperties,
    SetSecretOptions, Tags, UpdateSecretPropertiesOptions,
};
pub use pager::{Page, Pager, Pages};
pub use pipeline::retry::{RETRY_LOG_TARGET, RetryOptions};
pub use poller::{DoneCallbackId, Poller, PollerResult, PollerStatus, RESUMED_NOT_FOUND_LIMIT};
pub use time::OffsetDateTime;

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
