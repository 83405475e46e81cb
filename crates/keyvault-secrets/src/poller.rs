//! [`Poller`]: the long-running delete and recover operations (Python: `LROPoller`).
//!
//! [`Poller::result`] is the service's first answer, available at once; [`Poller::wait`] polls until the
//! operation is done server-side, with the SDKs' rule: 404 = still going, 200 or 403 = done, any other
//! error fails. Awaiting a `Poller` waits and then returns the result.
//!
//! Like azure-core's `LROPoller`, a poller runs done callbacks ([`Poller::add_done_callback`]) and can be
//! resumed elsewhere from a [`Poller::continuation_token`] with [`Poller::from_continuation_token`].
//!
//! An operation the service forgets (a deleted secret purged, or deleted again after a recovery, by someone
//! else) answers 404 for ever, which reads as "still going": a poller started by `begin_*` then waits until
//! dropped, so bound such waits with [`Poller::wait_timeout`]. A poller resumed from a token, which may be
//! stale, gives up instead after [`RESUMED_NOT_FOUND_LIMIT`] "not found" answers in a row.

use crate::SecretClient;
use crate::client::ClientInner;
use crate::error::{Error, ErrorKind, Result};
use crate::models::{DeletedSecret, SecretProperties};
use base64::Engine;
use keyvault_types::models::{DeletedSecretBundle, SecretBundle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where a long-running operation is. Its text ([`PollerStatus::as_str`], `Display`) is what the Python SDK's
/// Key Vault pollers' `status()` returns: `"polling"` and `"finished"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PollerStatus {
    /// The service has not finished yet (or the poller has not checked). Python: `"polling"`.
    InProgress,
    /// Done. Python: `"finished"`.
    Succeeded,
}

impl PollerStatus {
    /// The Python SDK's `poller.status()` text: `"polling"` ([`PollerStatus::InProgress`]) or `"finished"`
    /// ([`PollerStatus::Succeeded`]).
    pub fn as_str(&self) -> &'static str {
        match self {
            PollerStatus::InProgress => "polling",
            PollerStatus::Succeeded => "finished",
        }
    }
}

impl fmt::Display for PollerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The results a [`Poller`] can have: [`DeletedSecret`] (`begin_delete_secret`) and [`SecretProperties`]
/// (`begin_recover_deleted_secret`). Sealed: it only names the operations this crate has.
pub trait PollerResult: sealed::Sealed + Send + Sized + 'static {}

impl PollerResult for DeletedSecret {}
impl PollerResult for SecretProperties {}

pub(crate) mod sealed {
    use super::*;

    /// What a poller needs to know about its operation (crate-internal).
    pub trait Sealed: Sized {
        /// The service's answer to the first request.
        type Bundle: DeserializeOwned + Serialize;
        /// The operation's name in continuation tokens.
        const OPERATION: &'static str;
        /// The method that starts it, for error messages.
        const METHOD: &'static str;
        /// The path polled until the operation is done.
        fn status_path(name: &str) -> String;
        /// Remove anything secret from the answer before it goes into a token.
        fn strip(bundle: &mut Self::Bundle);
        fn from_bundle(bundle: Self::Bundle) -> Result<Self>;
        /// Whether the operation is done as soon as it starts.
        fn done_at_once(&self) -> bool;
        /// The secret's name.
        fn name(&self) -> &str;
        /// The vault of the secret's id, `https://host[:port]`.
        fn vault_url(&self) -> &str;
        /// The answer's other ids: (field, id, collection, whether a version may follow the name).
        fn other_ids(&self) -> Vec<(&'static str, &str, &'static str, bool)>;
    }

    impl Sealed for DeletedSecret {
        type Bundle = DeletedSecretBundle;
        const OPERATION: &'static str = "delete";
        const METHOD: &'static str = "begin_delete_secret";
        fn status_path(name: &str) -> String {
            format!("/deletedsecrets/{name}")
        }
        fn strip(bundle: &mut DeletedSecretBundle) {
            bundle.secret.value = None;
        }
        fn from_bundle(bundle: DeletedSecretBundle) -> Result<Self> {
            DeletedSecret::from_bundle(bundle)
        }
        /// No recovery id: the vault has no soft delete, the secret is gone at once.
        fn done_at_once(&self) -> bool {
            self.recovery_id.is_none()
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn vault_url(&self) -> &str {
            &self.properties.vault_url
        }
        fn other_ids(&self) -> Vec<(&'static str, &str, &'static str, bool)> {
            let mut ids = self.properties.other_ids();
            if let Some(id) = &self.recovery_id {
                ids.push(("recoveryId", id, "deletedsecrets", false));
            }
            ids
        }
    }

    impl Sealed for SecretProperties {
        type Bundle = SecretBundle;
        const OPERATION: &'static str = "recover";
        const METHOD: &'static str = "begin_recover_deleted_secret";
        fn status_path(name: &str) -> String {
            format!("/secrets/{name}/")
        }
        fn strip(bundle: &mut SecretBundle) {
            bundle.value = None;
        }
        fn from_bundle(bundle: SecretBundle) -> Result<Self> {
            SecretProperties::from_bundle(bundle)
        }
        fn done_at_once(&self) -> bool {
            false
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn vault_url(&self) -> &str {
            &self.vault_url
        }
        fn other_ids(&self) -> Vec<(&'static str, &str, &'static str, bool)> {
            // A certificate's secret names its key: `/keys/{the same name}/{version}`.
            self.key_id
                .as_deref()
                .map(|kid| ("kid", kid, "keys", true))
                .into_iter()
                .collect()
        }
    }
}

/// The version of the continuation tokens this crate writes and reads.
const TOKEN_VERSION: u64 = 1;
/// A token longer than this is not one of ours (ours are a few KB at most: ≤ 15 tags of ≤ 512 characters).
const MAX_TOKEN_LEN: usize = 256 * 1024;
/// A poller resumed from a continuation token fails after this many "not found" (404) answers in a row
/// (a minute at the default 2 s interval): the token may be stale, its operation forgotten by the service, and
/// 404 would otherwise mean "still going" for ever.
pub const RESUMED_NOT_FOUND_LIMIT: u32 = 30;

/// Identifies a done callback, to remove it with [`Poller::remove_done_callback`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DoneCallbackId(u64);

type DoneCallback<T> = Box<dyn FnOnce(&T) + Send>;

struct Callbacks<T> {
    next_id: u64,
    pending: Vec<(DoneCallbackId, DoneCallback<T>)>,
}

/// A long-running operation with its initial result.
pub struct Poller<T> {
    result: T,
    status: PollerStatus,
    /// The secret's name (the operation's subject).
    name: String,
    /// The service's first answer without any value: the continuation token carries it.
    resource: Value,
    client: Arc<ClientInner>,
    interval: Duration,
    /// Resumed from a continuation token: the result is the token's until a poll finds the operation done
    /// and reads the service's own answer, and "not found" answers are counted.
    resumed: bool,
    /// "Not found" answers in a row (counted for resumed pollers only).
    not_found: u32,
    /// In a mutex only so that a poller stays `Sync` (callbacks need only be `Send`); never locked, `&mut self`
    /// reaches it through `get_mut`.
    callbacks: Mutex<Callbacks<T>>,
    /// A poll that finds the operation done leaves the callbacks to [`Poller::run_done_callbacks`] (the
    /// blocking poller runs them after its `block_on` has returned, so that they may block).
    defer_callbacks: bool,
}

impl<T: PollerResult + fmt::Debug> fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let callbacks = self
            .callbacks
            .lock()
            .map(|c| c.pending.len())
            .unwrap_or_default();
        f.debug_struct("Poller")
            .field("operation", &T::OPERATION)
            .field("name", &self.name)
            .field("result", &self.result)
            .field("status", &self.status)
            .field("interval", &self.interval)
            .field("resumed", &self.resumed)
            .field("done_callbacks", &callbacks)
            .finish()
    }
}

impl<T: PollerResult> Poller<T> {
    /// A poller for an operation on the secret `asked` that the service just answered with `bundle`: an answer
    /// about another secret (names compare without case, as Key Vault's do) is refused, so that the poller
    /// never polls, and confirms, another secret's operation. (Its ids' host is not checked: a vault reached
    /// through another name, such as a private endpoint's, answers with ids of its own name.)
    pub(crate) fn start(
        client: Arc<ClientInner>,
        interval: Duration,
        asked: &str,
        mut bundle: T::Bundle,
    ) -> Result<Self> {
        T::strip(&mut bundle);
        let resource = serde_json::to_value(&bundle).map_err(|e| {
            Error::with_source(ErrorKind::Data, "cannot keep the operation's answer", e)
        })?;
        let result = T::from_bundle(bundle)?;
        if !result.name().eq_ignore_ascii_case(asked) {
            return Err(Error::new(
                ErrorKind::Data,
                format!(
                    "the service's answer does not fit the operation: its resource is the secret '{}', not \
                     '{asked}'",
                    result.name()
                ),
            ));
        }
        let done = result.done_at_once();
        Ok(Self::assemble(result, done, resource, client, interval))
    }

    fn assemble(
        result: T,
        done: bool,
        resource: Value,
        client: Arc<ClientInner>,
        interval: Duration,
    ) -> Self {
        Poller {
            resumed: false,
            not_found: 0,
            name: result.name().to_string(),
            result,
            status: if done {
                PollerStatus::Succeeded
            } else {
                PollerStatus::InProgress
            },
            resource,
            client,
            interval,
            callbacks: Mutex::new(Callbacks {
                next_id: 0,
                pending: Vec::new(),
            }),
            defer_callbacks: false,
        }
    }

    /// An opaque string from which [`Poller::from_continuation_token`] resumes this operation, in another
    /// client or process (Python: `poller.continuation_token()`). It names the vault and the secret and holds
    /// the service's first answer (the secret's properties and deletion facts, never a value), so treat it like
    /// the secret's metadata. Versioned: a future format is refused with a clear error, not misread.
    pub fn continuation_token(&self) -> String {
        let token = json!({
            "v": TOKEN_VERSION,
            "op": T::OPERATION,
            "vault": self.client.vault_url(),
            "name": self.name,
            "done": self.done(),
            "resource": self.resource,
        });
        token_b64().encode(token.to_string())
    }

    /// Resume an operation from a [`Poller::continuation_token`], polling through `client` (Python:
    /// `LROPoller.from_continuation_token`). The client must be on the token's vault; its polling interval and
    /// per-call options apply. A token that is not one of ours, is of a newer version, is for another
    /// operation (a delete's token cannot make a recover's poller) or another vault, or whose answer carries an
    /// id (`id`, `recoveryId`, `kid`) on another host or naming another secret, is refused with
    /// [`ErrorKind::InvalidArgument`], before any I/O.
    ///
    /// Tokens are not signed, so a resumed poller trusts the service, not the token: it starts
    /// [`PollerStatus::InProgress`] even when the token says the operation was done, and its first poll (or
    /// wait, or `.await`) asks the service. When the service says done, [`Poller::result`] becomes the service's
    /// answer (the deleted secret, or the recovered secret's properties) in place of the token's; until then it
    /// is the token's. A resumed poller whose operation the service does not know (404) fails with
    /// [`ErrorKind::ResourceNotFound`] after [`RESUMED_NOT_FOUND_LIMIT`] polls in a row instead of polling for
    /// ever: a delete replayed after the secret was purged, a recovery after it was deleted again, a forged
    /// token, or a delete on a vault without soft delete (nothing left to find). A resumed poller's first poll is
    /// immediate, so the limit runs out after about `RESUMED_NOT_FOUND_LIMIT − 1` polling intervals.
    ///
    /// ```no_run
    /// # async fn demo(client: keyvault_secrets::SecretClient, other: keyvault_secrets::SecretClient) -> keyvault_secrets::Result<()> {
    /// use keyvault_secrets::{DeletedSecret, Poller};
    /// let token = client.begin_delete_secret("db-password").await?.continuation_token();
    /// // … later, maybe in another process:
    /// let poller: Poller<DeletedSecret> = Poller::from_continuation_token(&other, &token)?;
    /// let deleted = poller.await?;
    /// # Ok(()) }
    /// ```
    pub fn from_continuation_token(client: &SecretClient, token: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid poller continuation token: {why}"),
            )
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad(format!("it is longer than {MAX_TOKEN_LEN} bytes")));
        }
        let bytes = token_b64().decode(token).map_err(|_| {
            bad("it is not base64url (not a token from Poller::continuation_token)".into())
        })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|_| bad("it does not hold a token from Poller::continuation_token".into()))?;
        let Value::Object(mut fields) = value else {
            return Err(bad(
                "it does not hold a token from Poller::continuation_token".into(),
            ));
        };
        match fields.get("v").and_then(Value::as_u64) {
            Some(TOKEN_VERSION) => {}
            Some(v) => {
                return Err(bad(format!(
                    "its version is {v}; this client reads version {TOKEN_VERSION}"
                )));
            }
            None => return Err(bad("it has no version".into())),
        }
        let text = |fields: &serde_json::Map<String, Value>, key: &str| {
            fields
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("'{key}' is missing")))
        };
        let op = text(&fields, "op")?;
        if op != T::OPERATION {
            return Err(bad(format!(
                "it resumes a {op} operation, not a {} ({})",
                T::OPERATION,
                T::METHOD
            )));
        }
        let vault = text(&fields, "vault")?;
        if !client.inner().same_vault(&vault) {
            return Err(bad(format!(
                "it is for the vault '{vault}', not this client's vault '{}'",
                client.vault_url()
            )));
        }
        let name = text(&fields, "name")?;
        crate::client::check_name(&name).map_err(|e| bad(e.message().to_string()))?;
        // Required by the format, but not trusted: the resumed poller asks the service (see above).
        fields
            .get("done")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad("'done' is missing".into()))?;
        let resource = fields
            .remove("resource")
            .ok_or_else(|| bad("'resource' is missing".into()))?;
        let mut bundle: T::Bundle = serde_json::from_value(resource).map_err(|e| {
            bad(format!(
                "its resource is not a {}: {}",
                T::OPERATION,
                crate::error::json_failure(&e)
            ))
        })?;
        T::strip(&mut bundle);
        let resource = serde_json::to_value(&bundle)
            .map_err(|e| bad(format!("its resource cannot be kept: {e}")))?;
        let result = T::from_bundle(bundle).map_err(|e| bad(e.message().to_string()))?;
        check_ids(client.inner(), &name, &result).map_err(bad)?;
        let inner = client.inner().clone();
        let interval = inner.polling_interval();
        let mut poller = Self::assemble(result, false, resource, inner, interval);
        poller.resumed = true;
        Ok(poller)
    }

    /// Check once whether the operation is done (and run the done callbacks when it is). A poller resumed
    /// from a token fails with [`ErrorKind::ResourceNotFound`] when this is its
    /// [`RESUMED_NOT_FOUND_LIMIT`]th "not found" answer in a row (see [`Poller::from_continuation_token`]).
    pub async fn poll(&mut self) -> Result<PollerStatus> {
        if self.done() {
            return Ok(self.status);
        }
        let (done, response) = self
            .client
            .operation_done(&T::status_path(&self.name))
            .await?;
        if !done {
            if self.resumed {
                self.not_found += 1;
                if self.not_found >= RESUMED_NOT_FOUND_LIMIT {
                    let gone = response.to_error();
                    let message = format!(
                        "the {} of the secret '{}' resumed from a continuation token is unknown to the service: \
                         {} polls in a row found nothing (the token may be stale: the secret purged, deleted \
                         again or never there); the last answer: {}",
                        T::OPERATION,
                        self.name,
                        self.not_found,
                        gone.message()
                    );
                    return Err(gone.with_message(message));
                }
            }
            return Ok(self.status);
        }
        if self.resumed && response.status.is_success() {
            self.take_services_answer(&response)?;
        }
        self.status = PollerStatus::Succeeded;
        if !self.defer_callbacks {
            self.run_callbacks();
        }
        Ok(self.status)
    }

    /// A resumed poller's result becomes the service's answer (what the status request returned), after the
    /// same checks as the token's.
    fn take_services_answer(&mut self, response: &crate::http::Response) -> Result<()> {
        let mut bundle: T::Bundle = response.json()?;
        T::strip(&mut bundle);
        let resource = serde_json::to_value(&bundle).map_err(|e| {
            Error::with_source(ErrorKind::Data, "cannot keep the operation's answer", e)
        })?;
        let result = T::from_bundle(bundle)?;
        check_ids(&self.client, &self.name, &result).map_err(|why| {
            Error::new(
                ErrorKind::Data,
                format!("the service's answer to a poll does not fit the operation: {why}"),
            )
        })?;
        self.result = result;
        self.resource = resource;
        Ok(())
    }

    /// Run `callback` with the result once the operation is done (Python: `add_done_callback`): at once if it
    /// already is, else when a [`Poller::poll`] (or a wait) finds it done. Each callback runs at most once; a
    /// poller dropped (or only waited on with a timeout that ran out) before the operation is done never runs
    /// them. Callbacks run in the task that polls, in the order they were added.
    pub fn add_done_callback(
        &mut self,
        callback: impl FnOnce(&T) + Send + 'static,
    ) -> DoneCallbackId {
        let id = {
            let callbacks = self.callbacks_mut();
            callbacks.next_id += 1;
            DoneCallbackId(callbacks.next_id - 1)
        };
        if self.done() {
            callback(&self.result);
        } else {
            self.callbacks_mut().pending.push((id, Box::new(callback)));
        }
        id
    }

    /// Remove a done callback that has not run yet (Python: `remove_done_callback`); `false` if there is none
    /// with this id (it has run, or it was removed).
    pub fn remove_done_callback(&mut self, id: DoneCallbackId) -> bool {
        let pending = &mut self.callbacks_mut().pending;
        let before = pending.len();
        pending.retain(|(i, _)| *i != id);
        pending.len() != before
    }

    fn callbacks_mut(&mut self) -> &mut Callbacks<T> {
        self.callbacks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, polls leave the done callbacks to [`Poller::run_done_callbacks`].
    #[cfg(feature = "blocking")]
    pub(crate) fn defer_done_callbacks(&mut self) {
        self.defer_callbacks = true;
    }

    /// Run the pending done callbacks if the operation is done.
    #[cfg(feature = "blocking")]
    pub(crate) fn run_done_callbacks(&mut self) {
        if self.done() {
            self.run_callbacks();
        }
    }

    fn run_callbacks(&mut self) {
        let pending = std::mem::take(&mut self.callbacks_mut().pending);
        for (_, callback) in pending {
            callback(&self.result);
        }
    }

    /// Poll (at once, then every interval) until the operation is done.
    pub async fn wait(&mut self) -> Result<()> {
        loop {
            if self.poll().await? == PollerStatus::Succeeded {
                return Ok(());
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Poll until the operation is done or `timeout` has passed, whichever comes first, and return the status
    /// then (Python: `poller.wait(timeout)`; `InProgress` when the time ran out). Python's
    /// `poller.result(timeout)` is this followed by [`Poller::result`].
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Result<PollerStatus> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(waited) => waited.map(|()| self.status),
            Err(_elapsed) => Ok(self.status),
        }
    }

    /// Wait, then return the result.
    pub async fn wait_for_result(mut self) -> Result<T> {
        self.wait().await?;
        Ok(self.result)
    }
}

impl<T> Poller<T> {
    /// The operation's result as the service first returned it, without waiting. For a poller resumed from a
    /// continuation token: the token's, until a poll finds the operation done and reads the service's.
    pub fn result(&self) -> &T {
        &self.result
    }

    /// The result, without waiting.
    pub fn into_result(self) -> T {
        self.result
    }

    /// The status as of the last check.
    pub fn status(&self) -> PollerStatus {
        self.status
    }

    /// Whether the operation is known to be done, as of the last check: it changes only when this poller
    /// polls ([`Poller::poll`], [`Poller::wait`], [`Poller::wait_timeout`], awaiting it), never by itself.
    /// (Python's Key Vault pollers poll on a thread only from `wait()`; before it, their `done()` is
    /// already true while `status()` still says "polling".)
    pub fn done(&self) -> bool {
        self.status == PollerStatus::Succeeded
    }

    /// The delay between polls (default 2 s, from the client options).
    pub fn polling_interval(&self) -> Duration {
        self.interval
    }

    /// Change the delay between polls. Zero is raised to 1 ms (a zero interval would poll without pause;
    /// [`SecretClientOptions::polling_interval`](crate::SecretClientOptions::polling_interval) refuses it).
    pub fn set_polling_interval(&mut self, interval: Duration) {
        self.interval = interval.max(MIN_POLLING_INTERVAL);
    }
}

/// The shortest delay between polls ([`Poller::set_polling_interval`] raises a zero to it).
const MIN_POLLING_INTERVAL: Duration = Duration::from_millis(1);

/// Why the answer `result` (from a token, or a poll of a resumed poller) does not belong to the secret `name`
/// of `client`'s vault: its id on another host or naming another secret, or another id it carries
/// (`recoveryId`, `kid`) elsewhere than `{vault}/{collection}/{name}[/{version}]`.
fn check_ids<T: PollerResult>(
    client: &ClientInner,
    name: &str,
    result: &T,
) -> std::result::Result<(), String> {
    if !client.same_vault(result.vault_url()) {
        return Err(format!(
            "its resource's id is on '{}', not on this client's vault '{}'",
            result.vault_url(),
            client.vault_url()
        ));
    }
    if result.name() != name {
        return Err(format!(
            "its resource is the secret '{}', not '{name}'",
            result.name()
        ));
    }
    for (field, id, collection, versioned) in result.other_ids() {
        let url = reqwest::Url::parse(id)
            .map_err(|_| format!("its resource's '{field}' is not a URL"))?;
        if !client.same_origin(&url) {
            return Err(format!(
                "its resource's '{field}' is on '{}', not on this client's vault '{}'",
                url.origin().ascii_serialization(),
                client.vault_url()
            ));
        }
        let segments: Vec<&str> = url.path().trim_start_matches('/').split('/').collect();
        let fits = url.query().is_none()
            && url.fragment().is_none()
            && match segments.as_slice() {
                [c, n] => *c == collection && *n == name,
                [c, n, version] => {
                    versioned && *c == collection && *n == name && !version.is_empty()
                }
                _ => false,
            };
        if !fits {
            return Err(format!(
                "its resource's '{field}' does not name /{collection}/{name} on this vault"
            ));
        }
    }
    Ok(())
}

/// base64url without padding (padding accepted on input).
fn token_b64() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

impl<T: PollerResult> IntoFuture for Poller<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait_for_result())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status reads as the Python SDK's Key Vault pollers' `status()`.
    #[test]
    fn status_text_is_pythons() {
        assert_eq!(PollerStatus::InProgress.as_str(), "polling");
        assert_eq!(PollerStatus::Succeeded.to_string(), "finished");
        assert_eq!(
            format!("{:>9}", PollerStatus::Succeeded.as_str()),
            " finished"
        );
    }
}
