//! A bounded in-memory cache of the latest version of live names, in front of the SQLite store.
//!
//! A GET of a secret is a point read; SQLite answers it in ~7 µs (two B-tree descents, page-cache mutexes),
//! most of a GET's cost after HTTP and TLS. The SQLite store is used by one server process only (its writer
//! holds a lock file), and every write goes through its writer thread, so the store knows about every change
//! and can keep a cache exact. Entries hold the row as stored: the value stays **sealed** (the cache holds
//! nothing the database file does not).
//!
//! Exactness, without a lock held across a database read:
//! - A write marks each name it touches *busy* before it is queued ([`LiveCache::begin_write`]); the mark
//!   ([`WriteMark`]) is dropped by the writer only after the batch holding the write committed or failed.
//!   While a name is busy, reads neither use nor fill its entry; dropping the mark removes the entry and
//!   bumps its shard's generation.
//! - A read that misses remembers the shard's generation ([`Lookup::Miss`]), reads the database, and fills
//!   the entry only if the generation is unchanged and no write marked the name meanwhile
//!   ([`LiveCache::fill`]). A row read before a write committed can therefore never be cached after it.
//!
//! So a read served from the cache returns what a database read at the same moment would return: the cache
//! never serves a version older than the latest committed one, and a write acknowledged to its caller is
//! seen by every read that starts after it.
//!
//! Size: entries are bounded by an estimate of their bytes; a shard over its share evicts about half of its
//! rows (amortised O(1) per fill). Only found, live rows are cached (a miss for an absent name is not).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::VersionRow;

/// Shards: concurrent readers on different names rarely share a lock.
const SHARDS: usize = 16;
/// Per-entry bookkeeping counted on top of the strings and bytes of a row (map slot, `Arc`, allocations).
const ENTRY_OVERHEAD: usize = 160;

/// See the module documentation.
pub(crate) struct LiveCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Bytes a shard may hold; 0 disables the cache (every lookup misses, nothing is filled).
    shard_budget: usize,
    /// Set when the store closes: lookups go to the (closed) database from then on.
    disabled: AtomicBool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Slot>,
    /// Estimated bytes of the cached rows.
    bytes: usize,
    /// Bumped whenever a write to a name of this shard finishes.
    generation: u64,
    /// Alternates which half of the rows an eviction keeps.
    evictions: u64,
}

enum Slot {
    Row(Arc<VersionRow>),
    /// Writes to this name in flight (queued or in an uncommitted batch).
    Busy(u32),
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Arc<VersionRow>),
    /// Not cached: read the database, then offer the row to [`LiveCache::fill`] with this ticket.
    Miss(Ticket),
    /// A write to the name is in flight: read the database and do not fill.
    Busy,
}

/// Where and when a miss happened.
pub(crate) struct Ticket {
    shard: usize,
    generation: u64,
}

impl LiveCache {
    /// A cache holding at most about `budget` bytes of rows (0: disabled).
    pub(crate) fn new(budget: usize) -> LiveCache {
        LiveCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            shard_budget: budget / SHARDS,
            disabled: AtomicBool::new(false),
        }
    }

    fn enabled(&self) -> bool {
        self.shard_budget > 0 && !self.disabled.load(Ordering::Acquire)
    }

    /// Forget every row and serve nothing from now on (the store is closing).
    pub(crate) fn disable(&self) {
        self.disabled.store(true, Ordering::Release);
        for shard in 0..SHARDS {
            let mut guard = self.lock(shard);
            guard.generation += 1;
            guard.map.retain(|_, slot| matches!(slot, Slot::Busy(_)));
            guard.bytes = 0;
        }
    }

    fn key(vault: &str, name_key: &str) -> String {
        let mut key = String::with_capacity(vault.len() + 1 + name_key.len());
        key.push_str(vault);
        // Secret names cannot hold a NUL (letters, digits and dashes only): the pair is unambiguous.
        key.push('\0');
        key.push_str(name_key);
        key
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a half-made entry (every change is one map call), so a
        // poisoned lock is still consistent.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached latest version of a live name.
    pub(crate) fn get(&self, vault: &str, name_key: &str) -> Lookup {
        if !self.enabled() {
            return Lookup::Busy;
        }
        let key = Self::key(vault, name_key);
        let shard = self.shard_of(&key);
        let guard = self.lock(shard);
        match guard.map.get(&key) {
            Some(Slot::Row(row)) => Lookup::Hit(row.clone()),
            Some(Slot::Busy(_)) => Lookup::Busy,
            None => Lookup::Miss(Ticket {
                shard,
                generation: guard.generation,
            }),
        }
    }

    /// Offer the latest version read from the database after `ticket`'s miss. Kept only if no write to the
    /// shard finished, and none to the name started, since the miss.
    pub(crate) fn fill(&self, vault: &str, name_key: &str, ticket: Ticket, row: &VersionRow) {
        let key = Self::key(vault, name_key);
        let size = ENTRY_OVERHEAD + key.len() + row_bytes(row);
        if size > self.shard_budget / 8 {
            return; // one huge value must not flush a shard
        }
        let mut shard = self.lock(ticket.shard);
        if shard.generation != ticket.generation || shard.map.contains_key(&key) {
            return;
        }
        if shard.bytes + size > self.shard_budget {
            shard.evict_half();
        }
        shard.bytes += size;
        shard.map.insert(key, Slot::Row(Arc::new(row.clone())));
    }

    /// Mark a name busy until the returned mark is dropped (after the write committed or failed).
    pub(crate) fn begin_write(self: &Arc<Self>, vault: &str, name_key: &str) -> WriteMark {
        if !self.enabled() {
            return WriteMark { marked: None };
        }
        let key = Self::key(vault, name_key);
        let shard = self.shard_of(&key);
        let mut guard = self.lock(shard);
        let freed = match guard.map.get_mut(&key) {
            Some(Slot::Busy(n)) => {
                *n += 1;
                0
            }
            Some(slot @ Slot::Row(_)) => {
                let Slot::Row(row) = std::mem::replace(slot, Slot::Busy(1)) else {
                    unreachable!()
                };
                ENTRY_OVERHEAD + key.len() + row_bytes(&row)
            }
            None => {
                guard.map.insert(key.clone(), Slot::Busy(1));
                0
            }
        };
        guard.bytes -= freed;
        drop(guard);
        WriteMark {
            marked: Some((self.clone(), shard, key)),
        }
    }

    fn end_write(&self, shard: usize, key: &str) {
        let mut guard = self.lock(shard);
        guard.generation += 1;
        if let Some(Slot::Busy(n)) = guard.map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                guard.map.remove(key);
            }
        }
    }

    /// Rows cached now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn rows(&self) -> usize {
        (0..SHARDS)
            .map(|s| {
                self.lock(s)
                    .map
                    .values()
                    .filter(|v| matches!(v, Slot::Row(_)))
                    .count()
            })
            .sum()
    }
}

impl Shard {
    fn evict_half(&mut self) {
        self.evictions += 1;
        let keep_odd = self.evictions.is_multiple_of(2);
        let mut i = 0u64;
        let mut freed = 0;
        self.map.retain(|key, slot| match slot {
            Slot::Busy(_) => true,
            Slot::Row(row) => {
                i += 1;
                let keep = (i % 2 == 1) == keep_odd;
                if !keep {
                    freed += ENTRY_OVERHEAD + key.len() + row_bytes(row);
                }
                keep
            }
        });
        self.bytes -= freed;
    }
}

fn row_bytes(row: &VersionRow) -> usize {
    let tags = row
        .tags
        .as_ref()
        .map_or(0, |t| t.iter().map(|(k, v)| k.len() + v.len() + 48).sum());
    row.name.len()
        + row.version.len()
        + row.sealed.len()
        + row.content_type.as_ref().map_or(0, String::len)
        + tags
}

/// Keeps a name busy in the cache; see [`LiveCache::begin_write`].
#[must_use]
pub(crate) struct WriteMark {
    marked: Option<(Arc<LiveCache>, usize, String)>,
}

impl WriteMark {
    /// A mark that marks nothing (writes that cannot touch a cached row).
    pub(crate) fn none() -> WriteMark {
        WriteMark { marked: None }
    }
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        if let Some((cache, shard, key)) = self.marked.take() {
            cache.end_write(shard, &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, version: &str, value_len: usize) -> VersionRow {
        VersionRow {
            name: name.into(),
            version: version.into(),
            sealed: vec![7; value_len],
            content_type: None,
            tags: None,
            enabled: true,
            nbf: None,
            exp: None,
            created: 1,
            updated: 1,
        }
    }

    fn miss(cache: &LiveCache, name: &str) -> Ticket {
        match cache.get("v", name) {
            Lookup::Miss(t) => t,
            Lookup::Hit(_) => panic!("{name}: unexpected hit"),
            Lookup::Busy => panic!("{name}: unexpected busy"),
        }
    }

    fn hit(cache: &LiveCache, name: &str) -> Arc<VersionRow> {
        match cache.get("v", name) {
            Lookup::Hit(r) => r,
            _ => panic!("{name}: expected a hit"),
        }
    }

    #[test]
    fn fill_then_hit_per_vault_and_name() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let t = miss(&cache, "a");
        cache.fill("v", "a", t, &row("A", "1", 10));
        assert_eq!(hit(&cache, "a").version, "1");
        // Another vault, another name: still misses.
        assert!(matches!(cache.get("w", "a"), Lookup::Miss(_)));
        miss(&cache, "b");
    }

    #[test]
    fn a_write_in_flight_hides_the_entry_and_ending_it_drops_it() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let t = miss(&cache, "a");
        cache.fill("v", "a", t, &row("A", "1", 10));
        let mark = cache.begin_write("v", "a");
        assert!(matches!(cache.get("v", "a"), Lookup::Busy));
        let second = cache.begin_write("v", "a");
        drop(mark);
        assert!(
            matches!(cache.get("v", "a"), Lookup::Busy),
            "still busy while a second write is in flight"
        );
        drop(second);
        miss(&cache, "a");
        assert_eq!(cache.rows(), 0);
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        // Miss, then a write starts and finishes before the (old) row is offered.
        let t = miss(&cache, "a");
        drop(cache.begin_write("v", "a"));
        cache.fill("v", "a", t, &row("A", "old", 10));
        miss(&cache, "a");
        // Miss, then a write starts (not finished) before the row is offered.
        let t = miss(&cache, "a");
        let mark = cache.begin_write("v", "a");
        cache.fill("v", "a", t, &row("A", "old", 10));
        assert!(matches!(cache.get("v", "a"), Lookup::Busy));
        drop(mark);
        miss(&cache, "a");
        assert_eq!(cache.rows(), 0);
    }

    #[test]
    fn bounded_by_bytes() {
        let budget = 64 * 1024;
        let cache = Arc::new(LiveCache::new(budget));
        for i in 0..2000 {
            let name = format!("n{i}");
            if let Lookup::Miss(t) = cache.get("v", &name) {
                cache.fill("v", &name, t, &row(&name, "1", 100));
            }
        }
        let held: usize = (0..SHARDS).map(|s| cache.lock(s).bytes).sum();
        assert!(held <= budget, "{held} bytes held, budget {budget}");
        assert!(cache.rows() > 50, "evicts only part of the rows");
        // A value larger than an eighth of a shard is never cached.
        let t = miss(&cache, "huge");
        cache.fill("v", "huge", t, &row("huge", "1", budget));
        miss(&cache, "huge");
    }

    #[test]
    fn disabled_cache_never_hits() {
        let cache = Arc::new(LiveCache::new(0));
        assert!(matches!(cache.get("v", "a"), Lookup::Busy));
        drop(cache.begin_write("v", "a"));
        assert_eq!(cache.rows(), 0);
    }
}
