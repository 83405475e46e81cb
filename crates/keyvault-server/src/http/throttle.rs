//! Per-vault request throttling, shaped like Key Vault's service limits (a number of transactions per
//! 10 seconds, creates counted apart from everything else).
//!
//! Each budget is a fixed window: one `AtomicU64` holding the window's index (high 32 bits) and the count of
//! requests admitted in it (low 32 bits), advanced with a compare-and-swap. O(1), lock-free, no allocation.
//! A request over the budget gets `Retry-After: <seconds until the window ends>` (at least 1).
//!
//! What counts where (decided once the policy has answered, so refusals never spend what others need):
//! - a permitted vault request counts against the vault's budget (`limit`; a create against `create_limit`
//!   when set);
//! - a permitted admin API request counts against the admin API's own budget (also `limit`), so that no
//!   amount of vault traffic keeps an administrator out;
//! - a request refused by access control (403) counts against its principal's own refusal budget
//!   ([`Throttle::refusal_limit`] per window): past it the principal gets 429 instead of 403, and nobody
//!   else is affected. Principals are hashed (with a key chosen at random per process) into a fixed table of
//!   [`REFUSAL_SLOTS`] budgets, so memory stays bounded however many identities a trusted issuer mints; two
//!   principals sharing a slot share its refusals, and only their refusals.
//!
//! Off by default. One server process = one vault: with several nodes over a shared store, each node has
//! its own budget.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many per-principal refusal budgets are kept (8 bytes each).
pub const REFUSAL_SLOTS: usize = 1024;

/// One budget: at most `limit` requests per window.
#[derive(Debug)]
struct Budget {
    limit: u32,
    /// (window index << 32) | admitted count.
    state: AtomicU64,
}

impl Budget {
    fn new(limit: u32) -> Self {
        Budget {
            limit,
            state: AtomicU64::new(0),
        }
    }

    /// Admits one request in window `window` (or refuses it).
    fn admit(&self, window: u32) -> bool {
        admit(&self.state, self.limit, window)
    }
}

/// Admits one request in window `window` against the count in `state` (or refuses it).
fn admit(state: &AtomicU64, limit: u32, window: u32) -> bool {
    let mut current = state.load(Ordering::Relaxed);
    loop {
        let (w, n) = ((current >> 32) as u32, current as u32);
        let next = if w != window {
            // A new window (or, after a wrap-around of the index, an old one): start counting afresh.
            (u64::from(window) << 32) | 1
        } else if n >= limit {
            return false;
        } else {
            current + 1
        };
        match state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
}

/// Per-principal budgets for refused requests: a fixed table indexed by a keyed hash of the principal.
struct Refusals {
    limit: u32,
    hasher: std::hash::RandomState,
    slots: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No principal, no hash key.
        f.debug_struct("Refusals")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Throttle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Requests of any kind per window (creates too, unless `create_limit` is set); `None` = unlimited.
    pub limit: Option<u32>,
    /// PUT requests (set secret) per window, counted apart; `None` = they count against `limit`.
    pub create_limit: Option<u32>,
    /// The window. Key Vault's is 10 seconds.
    pub window: Duration,
}

impl Default for ThrottleSettings {
    /// Off, with Key Vault's 10-second window.
    fn default() -> Self {
        ThrottleSettings {
            limit: None,
            create_limit: None,
            window: Duration::from_secs(10),
        }
    }
}

impl ThrottleSettings {
    /// Whether any limit is on.
    pub fn enabled(&self) -> bool {
        self.limit.is_some() || self.create_limit.is_some()
    }
}

/// The vault's request budgets.
#[derive(Debug)]
pub struct Throttle {
    epoch: Instant,
    window_ms: u64,
    all: Option<Budget>,
    create: Option<Budget>,
    /// The admin API's budget (same size as `all`).
    admin: Option<Budget>,
    /// Refused requests, per principal (on when `all` is).
    refused: Option<Refusals>,
}

/// The kind of request, for choosing a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// PUT: creates a secret or a version.
    Create,
    /// A call of the admin API.
    Admin,
    Other,
}

impl Throttle {
    /// `None` when no limit is set.
    pub fn new(settings: ThrottleSettings) -> Option<Throttle> {
        if !settings.enabled() {
            return None;
        }
        Some(Throttle {
            epoch: Instant::now(),
            window_ms: (settings.window.as_millis() as u64).max(1),
            all: settings.limit.map(Budget::new),
            create: settings.create_limit.map(Budget::new),
            admin: settings.limit.map(Budget::new),
            refused: settings.limit.map(|limit| Refusals {
                limit: Self::refusal_limit(limit),
                hasher: std::hash::RandomState::new(),
                slots: (0..REFUSAL_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            }),
        })
    }

    /// Refused requests a principal may make per window before its refusals become 429: a tenth of the
    /// vault's budget, at least 10.
    pub fn refusal_limit(limit: u32) -> u32 {
        (limit / 10).max(10)
    }

    /// Counts a request refused by access control against `principal`'s refusal budget: `Err(Retry-After)`
    /// once that budget is spent (the caller answers 429 instead of 403).
    pub fn admit_refusal(&self, principal: &str) -> Result<(), u64> {
        self.admit_refusal_at(principal, self.epoch.elapsed())
    }

    fn admit_refusal_at(&self, principal: &str, elapsed: Duration) -> Result<(), u64> {
        let Some(refused) = &self.refused else {
            return Ok(());
        };
        let ms = elapsed.as_millis() as u64;
        let window = ms / self.window_ms;
        let slot = refused.hasher.hash_one(principal) as usize % refused.slots.len();
        if admit(&refused.slots[slot], refused.limit, window as u32) {
            Ok(())
        } else {
            Err(self.retry_after(window, ms))
        }
    }

    fn retry_after(&self, window: u64, ms: u64) -> u64 {
        let left_ms = (window + 1) * self.window_ms - ms;
        left_ms.div_ceil(1000).max(1)
    }

    /// Admits a request, or says how many seconds to wait (the `Retry-After` value).
    pub fn admit(&self, kind: RequestKind) -> Result<(), u64> {
        self.admit_at(kind, self.epoch.elapsed())
    }

    fn admit_at(&self, kind: RequestKind, elapsed: Duration) -> Result<(), u64> {
        let ms = elapsed.as_millis() as u64;
        let window = ms / self.window_ms;
        let budget = match (kind, &self.create) {
            (RequestKind::Admin, _) => self.admin.as_ref(),
            (RequestKind::Create, Some(create)) => Some(create),
            _ => self.all.as_ref(),
        };
        match budget {
            None => Ok(()),
            Some(b) if b.admit(window as u32) => Ok(()),
            Some(_) => Err(self.retry_after(window, ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(limit: Option<u32>, create: Option<u32>) -> Throttle {
        Throttle::new(ThrottleSettings {
            limit,
            create_limit: create,
            window: Duration::from_secs(10),
        })
        .unwrap()
    }

    #[test]
    fn off_by_default() {
        assert!(
            Throttle::new(ThrottleSettings {
                limit: None,
                create_limit: None,
                window: Duration::from_secs(10)
            })
            .is_none()
        );
    }

    #[test]
    fn fixed_window_counts_and_resets() {
        let t = throttle(Some(3), None);
        let at = Duration::from_millis(2_500);
        for _ in 0..3 {
            assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        }
        // 7.5 s left in the window → Retry-After 8.
        assert_eq!(t.admit_at(RequestKind::Other, at), Err(8));
        assert_eq!(t.admit_at(RequestKind::Create, at), Err(8));
        assert_eq!(
            t.admit_at(RequestKind::Other, Duration::from_millis(9_999)),
            Err(1)
        );
        // The next window starts afresh.
        assert_eq!(
            t.admit_at(RequestKind::Other, Duration::from_secs(10)),
            Ok(())
        );
    }

    #[test]
    fn creates_have_their_own_budget() {
        let t = throttle(Some(2), Some(1));
        let at = Duration::ZERO;
        assert_eq!(t.admit_at(RequestKind::Create, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Create, at), Err(10));
        assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Other, at), Err(10));
        // Only a create limit: everything else is unlimited.
        let t = throttle(None, Some(1));
        for _ in 0..100 {
            assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        }
    }

    #[test]
    fn the_admin_api_has_a_budget_of_its_own() {
        let t = throttle(Some(2), None);
        let at = Duration::ZERO;
        assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Other, at), Err(10));
        // The vault's budget is spent; the admin API's is not.
        assert_eq!(t.admit_at(RequestKind::Admin, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Admin, at), Ok(()));
        assert_eq!(t.admit_at(RequestKind::Admin, at), Err(10));
    }

    #[test]
    fn refusals_count_per_principal_and_spend_nothing_shared() {
        let t = throttle(Some(300), None);
        let at = Duration::from_millis(4_000);
        assert_eq!(Throttle::refusal_limit(300), 30);
        for _ in 0..30 {
            assert_eq!(t.admit_refusal_at("flooder", at), Ok(()));
        }
        // The flooder's own budget is spent: 429, Retry-After 6.
        assert_eq!(t.admit_refusal_at("flooder", at), Err(6));
        // Nobody else's: the vault's and admin budgets are whole, and other principals' refusals are their own
        // (unless one shares the flooder's slot, a 1 in 1024 chance per principal: find one that does not).
        for _ in 0..300 {
            assert_eq!(t.admit_at(RequestKind::Other, at), Ok(()));
        }
        assert_eq!(t.admit_at(RequestKind::Admin, at), Ok(()));
        let other = (0..)
            .map(|i| format!("p{i}"))
            .find(|p| t.admit_refusal_at(p, at).is_ok())
            .unwrap();
        for _ in 1..30 {
            assert_eq!(t.admit_refusal_at(&other, at), Ok(()));
        }
        // The next window forgives.
        assert_eq!(
            t.admit_refusal_at("flooder", Duration::from_secs(10)),
            Ok(())
        );
        // Small budgets still allow a few refusals; no vault limit, no refusal budget.
        assert_eq!(Throttle::refusal_limit(20), 10);
        let t = throttle(None, Some(1));
        for _ in 0..100 {
            assert_eq!(t.admit_refusal_at("x", at), Ok(()));
        }
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let t = std::sync::Arc::new(throttle(Some(1000), None));
        let admitted: u32 = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| t.admit_at(RequestKind::Other, Duration::ZERO).is_ok())
                        .count() as u32
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 1000);
    }
}
