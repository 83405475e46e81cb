//! Log lines that anyone can cause (a refused token request, a failed accept while file descriptors run out)
//! are budgeted: at most a few of each kind per window, and the first line of a later window says how many
//! were left out. A flood then costs the log a few lines per window instead of one per request (an audit measured
//! ~490 KB/s of refused-token lines from one anonymous client), and the lines that matter are not drowned, nor
//! dropped by journald's own rate limit.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The length of a budget's window, in seconds.
const WINDOW_SECS: u64 = 10;

/// One kind of log line's budget. Counters are approximate under races (a line more or less), never unbounded.
#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window: AtomicU64,
    used: AtomicU32,
    left_out: AtomicU64,
}

impl LogBudget {
    /// At most `per_window` lines per ten seconds.
    pub const fn new(per_window: u32) -> LogBudget {
        LogBudget {
            per_window,
            window: AtomicU64::new(0),
            used: AtomicU32::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were left out since the last one logged;
    /// `None` when this window's budget is spent (the line is counted instead).
    pub fn take(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.take_at(now / WINDOW_SECS)
    }

    fn take_at(&self, window: u64) -> Option<u64> {
        let seen = self.window.load(Ordering::Relaxed);
        if seen != window
            && self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_window {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            // Saturates long before it could wrap (4 billion calls in one window).
            self.used.store(self.per_window, Ordering::Relaxed);
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs with `tracing::$level!` within `$budget` ([`LogBudget`]), adding `not_logged = n` when lines were left
/// out before this one.
#[macro_export]
#[doc(hidden)]
macro_rules! budgeted_log {
    ($budget:expr, $level:ident, $($rest:tt)+) => {
        match $budget.take() {
            Some(0) => tracing::$level!($($rest)+),
            Some(not_logged) => tracing::$level!(not_logged, $($rest)+),
            None => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_logs_its_budget_and_the_next_says_what_was_left_out() {
        let b = LogBudget::new(3);
        let first: Vec<_> = (0..10).map(|_| b.take_at(7)).collect();
        assert_eq!(
            first,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(b.take_at(8), Some(7));
        assert_eq!(b.take_at(8), Some(0));
        assert_eq!(b.take_at(8), Some(0));
        assert_eq!(b.take_at(8), None);
        assert_eq!(b.take_at(9), Some(1));
    }
}
