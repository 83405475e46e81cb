//! A blocking [`SecretClient`]: the async client driven by a Tokio runtime (no logic is written twice). Pagers
//! are [`Iterator`]s; pollers block in `wait()`.
//!
//! Every blocking client of the process shares one runtime with one worker thread (`keyvault-blocking`), started
//! by the first client. A call runs on the calling thread; the connection tasks (the clients' and the
//! credentials' pooled connections) run on that worker, so a connection opened during one client's call keeps
//! working for another client that shares its credential or transport.
//!
//! Do not call it from async code (like `reqwest::blocking`): a call made inside a Tokio runtime's task or
//! `block_on` (a `#[tokio::main]` function, a `tokio::spawn`ed task) returns an [`ErrorKind::Other`] error
//! that says so, without doing anything, instead of blocking the runtime's thread. From async code, use the
//! async [`crate::SecretClient`], or call the blocking client inside `tokio::task::spawn_blocking` (that works:
//! the call then runs on a helper thread of its own). The same holds for the iterators of its pagers (the
//! refusal is their one item) and for its pollers' `poll`/`wait`.
//!
//! Done callbacks of a blocking [`Poller`] run on the calling thread after the wait has returned, outside the
//! runtime, so a callback may use the blocking client (e.g. purge the secret a delete has just deleted).
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
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
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
    // Two first clients racing: one runtime wins; the other is shut down without waiting for its threads (a
    // client may be made in async code, where dropping a runtime, which waits, panics).
    if let Err(lost) = RUNTIME.set(rt) {
        lost.shutdown_background();
    }
    RUNTIME
        .get()
        .ok_or_else(|| Error::new(ErrorKind::Other, "cannot start a runtime"))
}

/// The message of the error a blocking call made from async code returns.
const IN_ASYNC_CODE: &str = "the blocking client was called from async code running on a Tokio runtime, \
     where it must not block the runtime's thread; use the async keyvault_secrets::SecretClient (with .await), or \
     call the blocking client inside tokio::task::spawn_blocking";

/// Whether the calling thread is running async code of a Tokio runtime: a task, or the future of a `block_on`
/// (where Tokio's `block_on` would panic). Tokio gives such code a cooperative budget (128 operations a poll)
/// and leaves every other thread unconstrained, including those of `spawn_blocking` and a thread under
/// `Runtime::enter`, which may block. The budget is probed by taking it until Tokio says it is spent (it
/// never is, unconstrained), and then given back as it was: every guard restores the budget it found, and the
/// first one is dropped last. The probe costs nothing outside a runtime (the first check), and errs only on
/// the safe side: async code made `unconstrained` looks like a blocking thread, and [`block_on`] then runs the
/// call on a helper thread, which works (it blocks the caller's thread, as a blocking call does).
fn in_async_code() -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = Vec::new();
    let mut spent = false;
    for _ in 0..4096 {
        match tokio::task::coop::poll_proceed(&mut cx) {
            Poll::Ready(restore) => taken.push(restore),
            Poll::Pending => {
                spent = true;
                break;
            }
        }
    }
    while let Some(restore) = taken.pop() {
        drop(restore);
    }
    spent
}

/// Drive `future` to its end on the blocking clients' runtime, from a thread that may block. From async
/// code: the error that says to use the async client or `spawn_blocking`, before anything is done. From a
/// thread where a runtime is current but blocking is allowed (`spawn_blocking`, `Runtime::enter`): on a
/// scoped helper thread, where no runtime is current (Tokio refuses a `block_on` nested in another runtime's
/// context).
fn block_on<F>(rt: &'static Runtime, future: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(future));
    }
    if in_async_code() {
        return Err(Error::new(ErrorKind::Other, IN_ASYNC_CODE));
    }
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("keyvault-blocking-call".into())
            .spawn_scoped(scope, || rt.block_on(future))
            .map_err(|e| Error::with_source(ErrorKind::Other, "cannot start a thread", e))?
            .join()
        {
            Ok(output) => Ok(output),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
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
    /// A call from async code was refused: the refusal was the last item.
    ended: bool,
}

/// A listing as an [`Iterator`] of pages.
pub struct Pages<T> {
    inner: crate::Pages<T>,
    rt: &'static Runtime,
    /// A call from async code was refused: the refusal was the last item.
    ended: bool,
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

/// The next item of a blocking iterator: a refusal (a call from async code) is its last item.
fn next_item<I>(
    rt: &'static Runtime,
    ended: &mut bool,
    next: impl Future<Output = Option<Result<I>>> + Send,
) -> Option<Result<I>>
where
    I: Send,
{
    if *ended {
        return None;
    }
    block_on(rt, next).unwrap_or_else(|refused| {
        *ended = true;
        Some(Err(refused))
    })
}

/// Items, fetching pages as needed. Called from async code, the one item is the error that says to use the
/// async client or `spawn_blocking` (see the [module documentation](self)).
impl<T: Unpin + Send> Iterator for Pager<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        next_item(self.rt, &mut self.ended, self.inner.next())
    }
}

/// Pages. Called from async code, the one item is the error that says to use the async client or
/// `spawn_blocking` (see the [module documentation](self)).
impl<T: Send> Iterator for Pages<T> {
    type Item = Result<Page<T>>;
    fn next(&mut self) -> Option<Result<Page<T>>> {
        next_item(self.rt, &mut self.ended, self.inner.next())
    }
}

impl<T> Pager<T> {
    /// Page by page.
    pub fn by_page(self) -> Pages<T> {
        Pages {
            inner: self.inner.by_page(),
            rt: self.rt,
            ended: self.ended,
        }
    }
    /// Page by page, from the page `continuation_token` names.
    pub fn by_page_from(self, continuation_token: impl Into<String>) -> Pages<T> {
        Pages {
            inner: self.inner.by_page_from(continuation_token),
            rt: self.rt,
            ended: false,
        }
    }
    /// Restart at the page `continuation_token` names.
    pub fn resume_from(self, continuation_token: impl Into<String>) -> Self {
        Pager {
            inner: self.inner.resume_from(continuation_token),
            rt: self.rt,
            ended: false,
        }
    }
    /// The token of the next page to fetch; after an error, the failed page's, when fetching it again may help
    /// (see [`crate::Pages`]).
    pub fn continuation_token(&self) -> Option<&str> {
        self.inner.continuation_token()
    }
}

impl<T> Pages<T> {
    /// The token of the next page to fetch; after an error, the failed page's, when fetching it again may help
    /// (see [`crate::Pages`]).
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
    fn new(mut inner: crate::Poller<T>, rt: &'static Runtime) -> Self {
        inner.defer_done_callbacks();
        Poller { inner, rt }
    }
    /// Check once (and run the done callbacks when done).
    pub fn poll(&mut self) -> Result<PollerStatus> {
        let result = block_on(self.rt, self.inner.poll());
        self.inner.run_done_callbacks();
        result?
    }
    /// Block until the operation is done (then run the done callbacks).
    pub fn wait(&mut self) -> Result<()> {
        let result = block_on(self.rt, self.inner.wait());
        self.inner.run_done_callbacks();
        result?
    }
    /// Block until the operation is done or `timeout` has passed, whichever comes first; the status then
    /// (Python: `poller.wait(timeout)`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<PollerStatus> {
        let result = block_on(self.rt, self.inner.wait_timeout(timeout));
        self.inner.run_done_callbacks();
        result?
    }
    /// Block until done, then return the result.
    pub fn wait_for_result(mut self) -> Result<T> {
        self.wait()?;
        Ok(self.inner.into_result())
    }
    /// See [`crate::Poller::add_done_callback`]: the callback runs in the thread that polls, after the poll
    /// or wait that found the operation done has returned (outside the blocking clients' runtime), so it may
    /// call the blocking client, e.g. to purge the deleted secret.
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
        Ok(Poller::new(
            crate::Poller::from_continuation_token(&client.inner, token)?,
            client.rt,
        ))
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
        // From async code there is no driving (the runtime's worker still closes the sockets, a moment later).
        let _ = block_on(self.rt, async {
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
        // Converted here: the value's type need not be `Send`.
        let value: SecretString = value.into();
        block_on(self.rt, self.inner.set_secret(name, value, options))?
    }

    pub fn get_secret(&self, name: &str, version: Option<&str>) -> Result<KeyVaultSecret> {
        block_on(self.rt, self.inner.get_secret(name, version))?
    }

    /// [`crate::SecretClient::get_secret_as`]: a certificate-backed secret's value in `format`.
    pub fn get_secret_as(
        &self,
        name: &str,
        version: Option<&str>,
        format: crate::ContentType,
    ) -> Result<KeyVaultSecret> {
        block_on(self.rt, self.inner.get_secret_as(name, version, format))?
    }

    pub fn get_secret_by_id(&self, id: &KeyVaultSecretIdentifier) -> Result<KeyVaultSecret> {
        block_on(self.rt, self.inner.get_secret_by_id(id))?
    }

    fn pager<T>(&self, inner: crate::Pager<T>) -> Pager<T> {
        Pager {
            inner,
            rt: self.rt,
            ended: false,
        }
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
        block_on(
            self.rt,
            self.inner.update_secret_properties(name, version, options),
        )?
    }

    pub fn begin_delete_secret(&self, name: &str) -> Result<Poller<DeletedSecret>> {
        let inner = block_on(self.rt, self.inner.begin_delete_secret(name))??;
        Ok(Poller::new(inner, self.rt))
    }

    pub fn get_deleted_secret(&self, name: &str) -> Result<DeletedSecret> {
        block_on(self.rt, self.inner.get_deleted_secret(name))?
    }

    pub fn begin_recover_deleted_secret(&self, name: &str) -> Result<Poller<SecretProperties>> {
        let inner = block_on(self.rt, self.inner.begin_recover_deleted_secret(name))??;
        Ok(Poller::new(inner, self.rt))
    }

    /// Delete a secret and wait until the deletion is done (`begin_delete_secret(name)?.wait_for_result()`).
    pub fn delete_secret(&self, name: &str) -> Result<DeletedSecret> {
        block_on(self.rt, self.inner.delete_secret(name))?
    }

    /// Recover a deleted secret and wait until it can be read, as the seed's sync example calls it
    /// (`begin_recover_deleted_secret(name)?.wait_for_result()`).
    pub fn recover_deleted_secret(&self, name: &str) -> Result<SecretProperties> {
        block_on(self.rt, self.inner.recover_deleted_secret(name))?
    }

    pub fn purge_deleted_secret(&self, name: &str) -> Result<()> {
        block_on(self.rt, self.inner.purge_deleted_secret(name))?
    }

    pub fn backup_secret(&self, name: &str) -> Result<Vec<u8>> {
        block_on(self.rt, self.inner.backup_secret(name))?
    }

    pub fn restore_secret_backup(&self, backup: &[u8]) -> Result<SecretProperties> {
        block_on(self.rt, self.inner.restore_secret_backup(backup))?
    }

    pub fn send_request(&self, request: Request) -> Result<Response> {
        block_on(self.rt, self.inner.send_request(request))?
    }
}
