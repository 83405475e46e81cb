//! The data disk's sync latency, measured next to the figures it explains: a durable SET waits for its
//! batch's `fsync`, and on a shared VM that latency swings by 10× from one minute to the next, so SET's
//! rate and p99 cannot be read without it.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes written before each sync: one small commit.
const WRITE: usize = 4096;
/// The scratch file is overwritten in place in this many blocks, as a rewound WAL is.
const BLOCKS: u64 = 16;

pub struct SyncLatency {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl SyncLatency {
    pub fn describe(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} syncs)",
            crate::ms(self.p50),
            crate::ms(self.p99),
            crate::ms(self.max),
            self.samples
        )
    }
}

/// Times `count` rounds (or as many as fit in `budget`) of a 4 KiB write followed by `fsync` (what SQLite
/// calls on every commit) on a scratch file in `dir`, which is removed afterwards.
pub fn sync_latency(dir: &Path, count: usize, budget: Duration) -> std::io::Result<SyncLatency> {
    let file = tempfile::Builder::new()
        .prefix("sync-probe-")
        .tempfile_in(dir)?;
    let mut f = file.as_file();
    let block = [0x5au8; WRITE];
    // Allocate the blocks first, so that the timed writes overwrite (no file growth, no allocation).
    for _ in 0..BLOCKS {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let started = Instant::now();
    let mut times = Vec::with_capacity(count);
    for i in 0..count.max(1) {
        if i > 0 && started.elapsed() >= budget {
            break;
        }
        f.seek(SeekFrom::Start((i as u64 % BLOCKS) * WRITE as u64))?;
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_all()?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    // At least one sync ran (the loop's first round ignores the budget).
    let at = |q: f64| crate::load::quantile(&times, q).unwrap_or_default();
    Ok(SyncLatency {
        samples: times.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_each_sync_within_its_bounds_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = sync_latency(dir.path(), 20, Duration::from_secs(60)).unwrap();
        assert_eq!(s.samples, 20);
        assert!(s.p50 <= s.p99 && s.p99 <= s.max, "{}", s.describe());
        assert!(s.p50 > Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // The time budget ends the probe early, after at least one sync.
        let s = sync_latency(dir.path(), 1_000_000, Duration::ZERO).unwrap();
        assert_eq!(s.samples, 1);
    }
}
