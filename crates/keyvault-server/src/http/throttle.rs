//! Per-vault request throttling, shaped like Key Vault's service limits (a number of transactions per
//! 10 seconds, creates counted apart from everything else).
//!
//! Each budget is a fixed window: one `AtomicU64` holding the window's index (high 32 bits) and the count of
//! requests admitted in it (low 32 bits), advanced with a compare-and-swap. O(1), lock-free, no allocation.
//! A request over the budget gets `Retry-After: <seconds until the window ends>` (at least 1).
//!
//! Off by default. One server process = one vault: with several nodes over a shared store, each node has
//! its own budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (w, n) = ((current >> 32) as u32, current as u32);
            let next = if w != window {
                // A new window (or, after a wrap-around of the index, an old one): start counting afresh.
                (u64::from(window) << 32) | 1
            } else if n >= self.limit {
                return false;
            } else {
                current + 1
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
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
}

/// The kind of request, for choosing a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// PUT: creates a secret or a version.
    Create,
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
        })
    }

    /// Admits a request, or says how many seconds to wait (the `Retry-After` value).
    pub fn admit(&self, kind: RequestKind) -> Result<(), u64> {
        self.admit_at(kind, self.epoch.elapsed())
    }

    fn admit_at(&self, kind: RequestKind, elapsed: Duration) -> Result<(), u64> {
        let ms = elapsed.as_millis() as u64;
        let window = ms / self.window_ms;
        let budget = match (kind, &self.create) {
            (RequestKind::Create, Some(create)) => Some(create),
            _ => self.all.as_ref(),
        };
        match budget {
            None => Ok(()),
            Some(b) if b.admit(window as u32) => Ok(()),
            Some(_) => {
                let left_ms = (window + 1) * self.window_ms - ms;
                Err(left_ms.div_ceil(1000).max(1))
            }
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
