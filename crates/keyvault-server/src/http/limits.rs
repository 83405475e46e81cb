//! What requests may hold while they wait on their clients: a deadline for each request's body, a
//! process-wide budget of buffered request-body bytes, and a bound on backups and restores in progress.
//!
//! A connection's idle clock ([`crate::idle`]) counts any bytes, so over HTTP/2 a client that pings keeps a
//! connection, and every stream on it, alive: without these bounds each of its streams could hold a body
//! that never ends, or an answer it never reads, for as long as it liked (the resource audit's findings 2
//! and 3).
//!
//! The budget costs the request path one atomic compare-and-swap per body frame and one atomic subtraction
//! per body: nothing is locked, allocated or timed unless the budget is short (then the request waits on a
//! [`Notify`] for bytes to be given back, within its body deadline).

use super::error::ApiError;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a request's body may take to arrive, from when the server starts reading it (whatever else the
/// connection does: an HTTP/2 client's PINGs keep its connection open, not a stalled body), unless it keeps
/// coming ([`BODY_MIN_RATE`]). Past it: 408 `RequestTimeout`. HTTP/1.1 clients get the same in effect from
/// the connection's answer timeout, which an upload's bytes move alike.
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// A body that keeps coming at this rate (16 KiB/s, 128 kbit/s) is never cut off, however large (a 32 MiB
/// restore over a slow link): each time another [`BODY_DEADLINE`]'s worth at this rate (480 KiB) has come,
/// the body gets [`BODY_DEADLINE`] again from then. So time cannot be banked: a body sent in one burst and
/// then trickled gets 30 s after the burst's last whole 480 KiB, not the burst's size over the rate; a trickle
/// is cut off as before; the bytes of a request's head (at most 64 KiB) never move it; bytes past a route's
/// limit (drained only to answer 413) do not either. Not for the token endpoint, whose callers are anonymous
/// and whose bodies are small: its bodies get [`BODY_DEADLINE`] alone.
pub const BODY_MIN_RATE: u64 = 16 * 1024;

/// The bytes whose arrival renews a body's deadline: a deadline's worth at `rate` bytes per second (0: none).
pub(crate) fn renewal_bytes(deadline: Duration, rate: u64) -> u64 {
    (u128::from(rate) * deadline.as_millis() / 1000).min(u128::from(u64::MAX)) as u64
}

/// The most request-body bytes the server buffers at once, over every request being read whose caller has
/// been authenticated and authorised first (the vault API but restores, the admin API): 512 of the largest
/// secret bodies. A request that finds it spent waits for bytes to be given back (within its body deadline),
/// then gets 503.
pub const BODY_BUDGET_BYTES: usize = 128 * 1024 * 1024;

/// Restores' own budget (four of the largest, 32 MiB): a restore may take half an hour over a slow link and
/// keep its bytes meanwhile, so restores never spend the budget every other write needs.
pub const RESTORE_BODY_BUDGET_BYTES: usize = 128 * 1024 * 1024;

/// The token endpoint's own budget (its callers are anonymous until the body is read): a flood of unfinished
/// token requests spends this one, never the one the vault's writes use. 256 of its largest forms (64 KiB).
pub const TOKEN_BODY_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// The most backups and restores in progress at once (a backup answer can be tens of MB: it holds its place
/// until its body has been sent or dropped; a restore from before its body is read until it is done).
pub const BULK_OPERATIONS: usize = 8;

/// How long a backup or restore waits for a place before it gets 503.
pub const BULK_WAIT: Duration = Duration::from_secs(10);

/// `Retry-After` of a 503 for want of body budget or of a backup/restore place.
pub const BUSY_RETRY_AFTER_SECS: u64 = 2;

/// The bounds of [`Limiter`]; the defaults are the constants above. Not read from the configuration file:
/// tests shorten them so as not to wait 30 s.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// [`BODY_DEADLINE`].
    pub body_deadline: Duration,
    /// [`BODY_MIN_RATE`], in bytes per second; 0: every body gets the deadline alone.
    pub body_min_rate: u64,
    /// [`BODY_BUDGET_BYTES`].
    pub body_budget_bytes: usize,
    /// [`TOKEN_BODY_BUDGET_BYTES`].
    pub token_body_budget_bytes: usize,
    /// [`RESTORE_BODY_BUDGET_BYTES`].
    pub restore_body_budget_bytes: usize,
    /// The longest a body read waits for budget (never past its deadline). Default: the body deadline.
    pub body_budget_wait: Duration,
    /// [`BULK_OPERATIONS`].
    pub bulk_operations: usize,
    /// [`BULK_WAIT`].
    pub bulk_wait: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            body_deadline: BODY_DEADLINE,
            body_min_rate: BODY_MIN_RATE,
            body_budget_bytes: BODY_BUDGET_BYTES,
            token_body_budget_bytes: TOKEN_BODY_BUDGET_BYTES,
            restore_body_budget_bytes: RESTORE_BODY_BUDGET_BYTES,
            body_budget_wait: BODY_DEADLINE,
            bulk_operations: BULK_OPERATIONS,
            bulk_wait: BULK_WAIT,
        }
    }
}

/// The server's request bounds (one per server, shared by the vault API, the admin API and the token
/// endpoint), with their counts for `/metrics`.
#[derive(Debug)]
pub struct Limiter {
    settings: RequestLimits,
    budget: BodyBudget,
    /// The token endpoint's ([`TOKEN_BODY_BUDGET_BYTES`]).
    token_budget: BodyBudget,
    /// Restores' ([`RESTORE_BODY_BUDGET_BYTES`]).
    restore_budget: BodyBudget,
    bulk: Arc<Semaphore>,
    /// Bodies cut at their deadline (408).
    body_timeouts: AtomicU64,
    /// Requests refused for want of body budget (503).
    budget_refusals: AtomicU64,
    /// Token requests refused for want of the token endpoint's body budget (503).
    token_budget_refusals: AtomicU64,
    /// Backups and restores refused for want of a place (503).
    bulk_refusals: AtomicU64,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(RequestLimits::default())
    }
}

impl Limiter {
    pub fn new(settings: RequestLimits) -> Limiter {
        Limiter {
            budget: BodyBudget::new(settings.body_budget_bytes),
            token_budget: BodyBudget::new(settings.token_body_budget_bytes),
            restore_budget: BodyBudget::new(settings.restore_body_budget_bytes),
            bulk: Arc::new(Semaphore::new(settings.bulk_operations.max(1))),
            settings,
            body_timeouts: AtomicU64::new(0),
            budget_refusals: AtomicU64::new(0),
            token_budget_refusals: AtomicU64::new(0),
            bulk_refusals: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &RequestLimits {
        &self.settings
    }

    /// Request-body bytes buffered now (the vault's and the admin API's requests).
    pub fn body_bytes_buffered(&self) -> usize {
        self.budget.in_use.load(Ordering::Relaxed)
    }

    /// Token-request body bytes buffered now.
    pub fn token_body_bytes_buffered(&self) -> usize {
        self.token_budget.in_use.load(Ordering::Relaxed)
    }

    /// Restore body bytes buffered now.
    pub fn restore_body_bytes_buffered(&self) -> usize {
        self.restore_budget.in_use.load(Ordering::Relaxed)
    }

    /// Bodies cut at their deadline.
    pub fn body_timeouts(&self) -> u64 {
        self.body_timeouts.load(Ordering::Relaxed)
    }

    /// Requests refused for want of body budget.
    pub fn budget_refusals(&self) -> u64 {
        self.budget_refusals.load(Ordering::Relaxed)
    }

    /// Token requests refused for want of the token endpoint's body budget.
    pub fn token_budget_refusals(&self) -> u64 {
        self.token_budget_refusals.load(Ordering::Relaxed)
    }

    /// Backups and restores refused for want of a place.
    pub fn bulk_refusals(&self) -> u64 {
        self.bulk_refusals.load(Ordering::Relaxed)
    }

    /// A body read starting now: its deadline, and its hold on the budget (given back when dropped).
    pub(crate) fn body_read(&self) -> BodyRead<'_> {
        self.read_from(
            &self.budget,
            &self.budget_refusals,
            self.settings.body_min_rate,
        )
    }

    /// [`body_read`](Self::body_read) for a restore, from restores' own budget (refusals counted with the
    /// vault's).
    pub(crate) fn restore_body_read(&self) -> BodyRead<'_> {
        self.read_from(
            &self.restore_budget,
            &self.budget_refusals,
            self.settings.body_min_rate,
        )
    }

    /// [`body_read`](Self::body_read) for a token request, from the token endpoint's own budget.
    pub(crate) fn token_body_read(&self) -> BodyRead<'_> {
        self.read_from(&self.token_budget, &self.token_budget_refusals, 0)
    }

    fn read_from<'a>(
        &'a self,
        budget: &'a BodyBudget,
        refusals: &'a AtomicU64,
        min_rate: u64,
    ) -> BodyRead<'a> {
        let started = Instant::now();
        BodyRead {
            limiter: self,
            budget,
            refusals,
            deadline: started + self.settings.body_deadline,
            renewal: renewal_bytes(self.settings.body_deadline, min_rate),
            wait_until: started
                + self
                    .settings
                    .body_budget_wait
                    .min(self.settings.body_deadline),
            held: 0,
        }
    }

    /// A place for a backup or a restore, waiting for one up to [`RequestLimits::bulk_wait`]; else 503.
    pub(crate) async fn bulk_place(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let acquire = self.bulk.clone().acquire_owned();
        match tokio::time::timeout(self.settings.bulk_wait, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            // Never closed; refused like a timeout if it were.
            Ok(Err(_)) | Err(_) => {
                self.bulk_refusals.fetch_add(1, Ordering::Relaxed);
                Err(busy(
                    "The service is busy (too many backups and restores in progress). Please retry.",
                ))
            }
        }
    }
}

/// 503 `ServiceUnavailable` with `Retry-After` ([`BUSY_RETRY_AFTER_SECS`]).
fn busy(message: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    );
    e.retry_after = Some(BUSY_RETRY_AFTER_SECS);
    e
}

/// Bytes of the budget in use, and a way to wait for some to be given back.
#[derive(Debug)]
struct BodyBudget {
    limit: usize,
    in_use: AtomicUsize,
    /// Reads waiting for budget (given-back bytes wake them only when there are some).
    waiting: AtomicUsize,
    given_back: Notify,
}

impl BodyBudget {
    fn new(limit: usize) -> BodyBudget {
        BodyBudget {
            limit,
            in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            given_back: Notify::new(),
        }
    }

    /// Takes `n` bytes if the budget has them.
    fn try_take(&self, n: usize) -> bool {
        let mut now = self.in_use.load(Ordering::SeqCst);
        loop {
            match now.checked_add(n) {
                Some(after) if after <= self.limit => {}
                _ => return false,
            }
            match self.in_use.compare_exchange_weak(
                now,
                now + n,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    /// Takes `n` bytes, waiting for them until `until`; `false` if they did not come in time.
    async fn take_waiting(&self, n: usize, until: Instant) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted out however the wait ends, also when its request is dropped (its client gone): a count left
        // behind would make every later give-back wake nobody in vain (a92-3).
        let _waiting = Waiting(&self.waiting);
        loop {
            // Made before the check: bytes given back after it wake this (`notify_waiters` wakes every
            // `Notified` already made, polled or not).
            let notified = self.given_back.notified();
            if self.try_take(n) {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return false;
            }
        }
    }

    fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.in_use.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.given_back.notify_waiters();
        }
    }
}

/// A read counted in [`BodyBudget::waiting`] until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One body being read: its deadline, and the budget it holds (given back when dropped, on every path).
pub(crate) struct BodyRead<'a> {
    limiter: &'a Limiter,
    budget: &'a BodyBudget,
    /// Where a refusal for want of budget is counted.
    refusals: &'a AtomicU64,
    /// The deadline before any bytes are received.
    deadline: Instant,
    /// Bytes whose arrival renews the deadline ([`renewal_bytes`] of [`BODY_MIN_RATE`]); 0: none do.
    renewal: u64,
    /// No waiting for budget past this (at most the deadline).
    wait_until: Instant,
    held: usize,
}

impl BodyRead<'_> {
    /// The deadline before any bytes have come.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The bytes whose arrival renews the deadline (0: none do): each time the body's kept bytes pass another
    /// multiple of them, its deadline is [`BODY_DEADLINE`] from then.
    pub(crate) fn renewal(&self) -> u64 {
        self.renewal
    }

    /// The deadline renewed now.
    pub(crate) fn renewed(&self) -> Instant {
        Instant::now() + self.limiter.settings.body_deadline
    }

    /// Takes `n` more bytes of the budget (at once when it has them, else waiting within the body's
    /// deadline); 503 if they do not come.
    pub(crate) async fn take(&mut self, n: usize) -> Result<(), ApiError> {
        let budget = self.budget;
        if !budget.try_take(n) && !budget.take_waiting(n, self.wait_until).await {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(busy(
                "The service is busy (too many request bodies being received). Please retry.",
            ));
        }
        self.held += n;
        Ok(())
    }

    /// The body did not arrive by its deadline: 408 `RequestTimeout`.
    pub(crate) fn timed_out(&self) -> ApiError {
        self.limiter.body_timeouts.fetch_add(1, Ordering::Relaxed);
        let seconds = self.limiter.settings.body_deadline.as_secs_f64();
        let message = match self.renewal {
            0 => format!("The request body did not arrive within {seconds} seconds."),
            renewal => format!(
                "The request body did not arrive in time: it must keep coming, each {} KiB within {seconds} \
                 seconds of the last.",
                renewal as f64 / 1024.0
            ),
        };
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", message)
    }
}

impl Drop for BodyRead<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read waiting for budget that is dropped (its request gone) is no longer counted as waiting (a92-3).
    #[tokio::test]
    async fn a_dropped_wait_for_budget_is_counted_out() {
        let budget = BodyBudget::new(10);
        assert!(budget.try_take(10));
        let until = Instant::now() + Duration::from_secs(30);
        let mut wait = Box::pin(budget.take_waiting(5, until));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 1);
        drop(wait);
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
        // A wait that ends (here: the budget given back) is counted out too.
        let waiting = budget.take_waiting(5, until);
        budget.give_back(10);
        assert!(waiting.await);
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
    }

    fn limiter(budget: usize, wait: Duration) -> Limiter {
        Limiter::new(RequestLimits {
            body_budget_bytes: budget,
            body_budget_wait: wait,
            ..RequestLimits::default()
        })
    }

    /// Bytes taken are given back when the read ends; a read that cannot get its bytes in time gets 503 and
    /// gives back what it held; one waiting gets them when another gives them back.
    #[tokio::test]
    async fn the_budget_is_taken_and_given_back() {
        let l = limiter(100, Duration::from_millis(50));
        let mut a = l.body_read();
        a.take(60).await.unwrap();
        a.take(30).await.unwrap();
        assert_eq!(l.body_bytes_buffered(), 90);
        {
            let mut b = l.body_read();
            b.take(10).await.unwrap();
            let e = b.take(1).await.unwrap_err();
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code, "ServiceUnavailable");
            assert_eq!(e.retry_after, Some(BUSY_RETRY_AFTER_SECS));
            assert_eq!(l.budget_refusals(), 1);
        }
        assert_eq!(l.body_bytes_buffered(), 90);
        // More than the whole budget never comes.
        let l2 = limiter(100, Duration::from_millis(10));
        assert!(l2.body_read().take(101).await.is_err());
        assert_eq!(l2.body_bytes_buffered(), 0);

        // A waiting read gets its bytes once another gives them back.
        let l = Arc::new(limiter(100, Duration::from_secs(60)));
        let mut a = l.body_read();
        a.take(100).await.unwrap();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                let mut b = l.body_read();
                b.take(40).await.map(|()| l.body_bytes_buffered())
            })
        };
        while l.budget.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 40);
        assert_eq!(l.body_bytes_buffered(), 0);
    }

    #[tokio::test]
    async fn bulk_places_are_bounded_and_come_back() {
        let l = Limiter::new(RequestLimits {
            bulk_operations: 1,
            bulk_wait: Duration::from_millis(20),
            ..RequestLimits::default()
        });
        let first = l.bulk_place().await.unwrap();
        let e = l.bulk_place().await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(BUSY_RETRY_AFTER_SECS));
        assert_eq!(l.bulk_refusals(), 1);
        drop(first);
        let _again = l.bulk_place().await.unwrap();
    }
}
