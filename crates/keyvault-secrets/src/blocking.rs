//! A blocking [`SecretClient`]: the async client driven by a Tokio runtime (no logic is written twice). Pagers
//! are [`Iterator`]s; pollers block in `wait()`.
//!
//! Every blocking client of the process shares one runtime with one worker thread (`keyvault-blocking`), started
//! by the first client. A call runs on the calling thread; the connection tasks (the clients' and the
//! credentials' pooled connections) run on that worker, so a connection opened during one client's call keeps
//! working for another client that shares its credential or transport.
//!
//! Like `reqwest::blocking`, do not call it inside an async runtime.
//!
//! ```no_run
//! use keyvault_secrets::blocking::SecretClient;
//! use keyvault_secrets::credentials::AzureCliCredential;
//! use std::sync::Arc;
//!
//! # fn demo() -> keyvault_secrets::Result<()> {
//! let client = SecretClient::new("https://my-vault.vault.azure.net", Arc::new(AzureCliCredential::new(None)?), None)?;
//! client.set_secret("greeting", "hello", None)?;
//! for properties in client.list_properties_of_secrets(None)? {
//!     println!("{}", properties?.name);
//! }
//! # Ok(()) }
//! ```

use crate::credentials::TokenCredential;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Request, Response};
use crate::models::{
    DeletedSecret, KeyVaultSecret, KeyVaultSecretIdentifier, SecretProperties, SetSecretOptions,
    UpdateSecretPropertiesOptions,
};
use crate::pager::Page;
use crate::poller::{DoneCallbackId, PollerResult, PollerStatus};
use crate::{ApiVersion, CallOptions, SecretClientOptions};
use futures_util::StreamExt;
use keyvault_types::SecretString;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::runtime::Runtime;

/// The runtime all blocking clients drive their calls on (see the module documentation).
fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keyvault-blocking")
        .enable_all()
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Other, "cannot start a runtime", e))?;
    // Two first clients racing: one runtime wins, the other is dropped here (outside any runtime).
    Ok(RUNTIME.get_or_init(|| rt))
}

/// The blocking counterpart of [`crate::SecretClient`], with the same methods.
#[derive(Clone)]
pub struct SecretClient {
    inner: crate::SecretClient,
    rt: &'static Runtime,
}

impl fmt::Debug for SecretClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::SecretClient")
            .field(&self.inner)
            .finish()
    }
}

/// A listing as an [`Iterator`] of items.
pub struct Pager<T> {
    inner: crate::Pager<T>,
    rt: &'static Runtime,
}

/// A listing as an [`Iterator`] of pages.
pub struct Pages<T> {
    inner: crate::Pages<T>,
    rt: &'static Runtime,
}

/// A long-running operation; [`Poller::wait`] blocks until it is done.
pub struct Poller<T> {
    inner: crate::Poller<T>,
    rt: &'static Runtime,
}

impl<T> fmt::Debug for Pager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T> fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: PollerResult + fmt::Debug> fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: Unpin> Iterator for Pager<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        self.rt.block_on(self.inner.next())
    }
}

impl<T> Iterator for Pages<T> {
    type Item = Result<Page<T>>;
    fn next(&mut self) -> Option<Result<Page<T>>> {
        self.rt.block_on(self.inner.next())
    }
}

impl<T> Pager<T> {
    /// Page by page.
    pub fn by_page(self) -> Pages<T> {
        Pages {
            inner: self.inner.by_page(),
            rt: self.rt,
        }
    }
    /// Page by page, from the page `continuation_token` names.
    pub fn by_page_from(self, continuation_token: impl Into<String>) -> Pages<T> {
        Pages {
            inner: self.inner.by_page_from(continuation_token),
            rt: self.rt,
        }
    }
    /// Restart at the page `continuation_token` names.
    pub fn resume_from(self, continuation_token: impl Into<String>) -> Self {
        Pager {
            inner: self.inner.resume_from(continuation_token),
            rt: self.rt,
        }
    }
    /// The token of the next page to fetch.
    pub fn continuation_token(&self) -> Option<&str> {
        self.inner.continuation_token()
    }
}

impl<T> Pages<T> {
    /// The token of the next page to fetch.
    pub fn continuation_token(&self) -> Option<&str> {
        self.inner.continuation_token()
    }
}

impl<T> Poller<T> {
    /// The service's first answer, without waiting.
    pub fn result(&self) -> &T {
        self.inner.result()
    }
    /// The result, without waiting.
    pub fn into_result(self) -> T {
        self.inner.into_result()
    }
    pub fn status(&self) -> PollerStatus {
        self.inner.status()
    }
    pub fn done(&self) -> bool {
        self.inner.done()
    }
    pub fn polling_interval(&self) -> Duration {
        self.inner.polling_interval()
    }
    pub fn set_polling_interval(&mut self, interval: Duration) {
        self.inner.set_polling_interval(interval);
    }
}

impl<T: PollerResult> Poller<T> {
    /// Check once.
    pub fn poll(&mut self) -> Result<PollerStatus> {
        self.rt.block_on(self.inner.poll())
    }
    /// Block until the operation is done.
    pub fn wait(&mut self) -> Result<()> {
        self.rt.block_on(self.inner.wait())
    }
    /// Block until the operation is done or `timeout` has passed, whichever comes first; the status then
    /// (Python: `poller.wait(timeout)`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<PollerStatus> {
        self.rt.block_on(self.inner.wait_timeout(timeout))
    }
    /// Block until done, then return the result.
    pub fn wait_for_result(mut self) -> Result<T> {
        self.wait()?;
        Ok(self.inner.into_result())
    }
    /// See [`crate::Poller::add_done_callback`]: the callback runs in the thread that polls.
    pub fn add_done_callback(
        &mut self,
        callback: impl FnOnce(&T) + Send + 'static,
    ) -> DoneCallbackId {
        self.inner.add_done_callback(callback)
    }
    /// See [`crate::Poller::remove_done_callback`].
    pub fn remove_done_callback(&mut self, id: DoneCallbackId) -> bool {
        self.inner.remove_done_callback(id)
    }
    /// See [`crate::Poller::continuation_token`] (the tokens of async and blocking pollers are the same).
    pub fn continuation_token(&self) -> String {
        self.inner.continuation_token()
    }
    /// See [`crate::Poller::from_continuation_token`].
    pub fn from_continuation_token(client: &SecretClient, token: &str) -> Result<Self> {
        Ok(Poller {
            inner: crate::Poller::from_continuation_token(&client.inner, token)?,
            rt: client.rt,
        })
    }
}

impl SecretClient {
    /// See [`crate::SecretClient::new`].
    pub fn new(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        options: Option<SecretClientOptions>,
    ) -> Result<Self> {
        let rt = runtime()?;
        let inner = {
            let _guard = rt.enter();
            crate::SecretClient::new(vault_url, credential, options)?
        };
        Ok(SecretClient { inner, rt })
    }

    /// The async client this one drives.
    pub fn as_async(&self) -> &crate::SecretClient {
        &self.inner
    }

    pub fn vault_url(&self) -> &str {
        self.inner.vault_url()
    }

    pub fn api_version(&self) -> ApiVersion {
        self.inner.api_version()
    }

    /// The same client with detailed (DEBUG) request and response logging switched on or off (see
    /// [`crate::SecretClient::with_logging_enable`]; Python's per-call `logging_enable=True`).
    pub fn with_logging_enable(&self, enabled: bool) -> SecretClient {
        SecretClient {
            inner: self.inner.with_logging_enable(enabled),
            rt: self.rt,
        }
    }

    /// The same client with per-call options on top (see [`crate::SecretClient::with_call_options`]; Python's
    /// per-call keyword arguments): every call through it, and its pagers' pages and pollers' polls, use them.
    pub fn with_call_options(&self, options: CallOptions) -> Result<SecretClient> {
        Ok(SecretClient {
            inner: self.inner.with_call_options(options)?,
            rt: self.rt,
        })
    }

    /// Release the connections now (see [`crate::SecretClient::close`]); the runtime is driven briefly so
    /// that the connection tasks see it and close their sockets.
    pub fn close(&self) {
        self.inner.close();
        self.rt.block_on(async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        });
    }

    pub fn set_secret(
        &self,
        name: &str,
        value: impl Into<SecretString>,
        options: Option<SetSecretOptions>,
    ) -> Result<KeyVaultSecret> {
        self.rt
            .block_on(self.inner.set_secret(name, value, options))
    }

    pub fn get_secret(&self, name: &str, version: Option<&str>) -> Result<KeyVaultSecret> {
        self.rt.block_on(self.inner.get_secret(name, version))
    }

    pub fn get_secret_by_id(&self, id: &KeyVaultSecretIdentifier) -> Result<KeyVaultSecret> {
        self.rt.block_on(self.inner.get_secret_by_id(id))
    }

    fn pager<T>(&self, inner: crate::Pager<T>) -> Pager<T> {
        Pager { inner, rt: self.rt }
    }

    pub fn list_properties_of_secrets(
        &self,
        max_page_size: Option<u32>,
    ) -> Result<Pager<SecretProperties>> {
        Ok(self.pager(self.inner.list_properties_of_secrets(max_page_size)?))
    }

    pub fn list_properties_of_secret_versions(
        &self,
        name: &str,
        max_page_size: Option<u32>,
    ) -> Result<Pager<SecretProperties>> {
        Ok(self.pager(
            self.inner
                .list_properties_of_secret_versions(name, max_page_size)?,
        ))
    }

    pub fn list_deleted_secrets(&self, max_page_size: Option<u32>) -> Result<Pager<DeletedSecret>> {
        Ok(self.pager(self.inner.list_deleted_secrets(max_page_size)?))
    }

    pub fn update_secret_properties(
        &self,
        name: &str,
        version: Option<&str>,
        options: UpdateSecretPropertiesOptions,
    ) -> Result<SecretProperties> {
        self.rt
            .block_on(self.inner.update_secret_properties(name, version, options))
    }

    pub fn begin_delete_secret(&self, name: &str) -> Result<Poller<DeletedSecret>> {
        let inner = self.rt.block_on(self.inner.begin_delete_secret(name))?;
        Ok(Poller { inner, rt: self.rt })
    }

    pub fn get_deleted_secret(&self, name: &str) -> Result<DeletedSecret> {
        self.rt.block_on(self.inner.get_deleted_secret(name))
    }

    pub fn begin_recover_deleted_secret(&self, name: &str) -> Result<Poller<SecretProperties>> {
        let inner = self
            .rt
            .block_on(self.inner.begin_recover_deleted_secret(name))?;
        Ok(Poller { inner, rt: self.rt })
    }

    pub fn purge_deleted_secret(&self, name: &str) -> Result<()> {
        self.rt.block_on(self.inner.purge_deleted_secret(name))
    }

    pub fn backup_secret(&self, name: &str) -> Result<Vec<u8>> {
        self.rt.block_on(self.inner.backup_secret(name))
    }

    pub fn restore_secret_backup(&self, backup: &[u8]) -> Result<SecretProperties> {
        self.rt.block_on(self.inner.restore_secret_backup(backup))
    }

    pub fn send_request(&self, request: Request) -> Result<Response> {
        self.rt.block_on(self.inner.send_request(request))
    }
}
