//! [`Poller`]: the long-running delete and recover operations (Python: `LROPoller`).
//!
//! [`Poller::result`] is the service's first answer, available at once; [`Poller::wait`] polls until the
//! operation is done server-side, with the SDKs' rule: 404 = still going, 200 or 403 = done, any other
//! error fails. Awaiting a `Poller` waits and then returns the result.

use crate::client::ClientInner;
use crate::error::Result;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Where a long-running operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PollerStatus {
    /// The service has not finished yet (or the poller has not checked).
    InProgress,
    /// Done.
    Succeeded,
}

/// A long-running operation with its initial result.
pub struct Poller<T> {
    result: T,
    status: PollerStatus,
    /// The path to GET to learn whether the operation is done.
    status_path: String,
    client: Arc<ClientInner>,
    interval: Duration,
}

impl<T: fmt::Debug> fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("result", &self.result)
            .field("status", &self.status)
            .field("status_path", &self.status_path)
            .field("interval", &self.interval)
            .finish()
    }
}

impl<T> Poller<T> {
    pub(crate) fn new(
        result: T,
        done: bool,
        status_path: String,
        client: Arc<ClientInner>,
        interval: Duration,
    ) -> Self {
        Poller {
            result,
            status: if done {
                PollerStatus::Succeeded
            } else {
                PollerStatus::InProgress
            },
            status_path,
            client,
            interval,
        }
    }

    /// The operation's result as the service first returned it, without waiting.
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

    /// Whether the operation is known to be done.
    pub fn done(&self) -> bool {
        self.status == PollerStatus::Succeeded
    }

    /// The delay between polls (default 2 s, from the client options).
    pub fn polling_interval(&self) -> Duration {
        self.interval
    }

    /// Change the delay between polls.
    pub fn set_polling_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Check once whether the operation is done.
    pub async fn poll(&mut self) -> Result<PollerStatus> {
        if !self.done() && self.client.operation_done(&self.status_path).await? {
            self.status = PollerStatus::Succeeded;
        }
        Ok(self.status)
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
    /// then (Python: `poller.wait(timeout)`; `InProgress` when the time ran out).
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

impl<T: Send + 'static> IntoFuture for Poller<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait_for_result())
    }
}
