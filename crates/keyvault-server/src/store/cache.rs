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
//! - A put caches the version it makes latest when it commits ([`LiveCache::begin_put`]), if no other write
//!   to the name is in flight by then: writes end in the order the single writer applied them, so the last
//!   one to end wrote the latest version. A secret is often read right after it is set.
//!
//! So a read served from the cache returns what a database read at the same moment would return: the cache
//! never serves a version older than the latest committed one, and a write acknowledged to its caller is
//! seen by every read that starts after it.
//!
//! Size: a row is packed into one allocation (its strings, attributes and sealed value: about half of what
//! a [`VersionRow`] takes), and rows are bounded by what they take in memory (measured, see
//! [`ENTRY_OVERHEAD`]). A shard over its share evicts a quarter of its rows (amortised O(1) per fill).
//! Only found, live rows are cached (a miss for an absent name is not).

use std::hash::BuildHasher;
use std::hash::RandomState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;

use super::VersionRow;

/// Shards: concurrent readers on different names rarely share a lock.
const SHARDS: usize = 16;
/// Bytes a cached row costs besides its packed bytes: its slot in the table (with the table's spare capacity
/// and control byte), the `Arc`'s two counts, the allocator's rounding and the gaps evictions leave. Set from
/// a measurement (`cache_memory` in the tests: about 400 bytes of resident memory per row of a 64-byte
/// value, whose packed bytes are about 220), so that the budget is memory, not an estimate of the contents.
const ENTRY_OVERHEAD: usize = 160;
/// Older versions kept per name ([`Older`]).
const OLDER_PER_NAME: usize = 2;
/// A shard over its budget evicts one in this many of its rows (amortised O(1) per fill, and the cache stays
/// close to full).
const EVICT_ONE_IN: u64 = 4;

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
    table: HashTable<Slot>,
    /// Bytes of the cached rows, overhead included.
    bytes: usize,
    /// Bumped whenever a write to a name of this shard finishes.
    generation: u64,
    /// Rotates which rows an eviction drops.
    evictions: u64,
    /// Lookups that found the row, and that did not (counted under the lock taken anyway: for metrics).
    hits: u64,
    misses: u64,
}

struct Slot {
    hash: u64,
    state: State,
    /// Older versions of the name read by id since its latest was cached (with [`State::Row`] only).
    older: Option<Box<Older>>,
}

/// The last [`OLDER_PER_NAME`] older versions of a name read by id: clients that pin a version keep reading
/// it after a newer one is set. Dropped with the slot's row, so every write to the name drops them too.
#[derive(Default)]
struct Older {
    rows: [Option<Arc<[u8]>>; OLDER_PER_NAME],
    /// Where the next one goes (the oldest is replaced).
    next: usize,
}

impl Older {
    fn find(&self, version: &str) -> Option<&Arc<[u8]>> {
        self.rows
            .iter()
            .flatten()
            .find(|packed| packed_version_is(packed, version))
    }

    fn bytes(&self) -> usize {
        self.rows.iter().flatten().map(|p| entry_bytes(p)).sum()
    }
}

impl Slot {
    /// Bytes of the rows held (overhead included).
    fn bytes(&self) -> usize {
        match &self.state {
            State::Row(packed) => {
                entry_bytes(packed) + self.older.as_ref().map_or(0, |o| o.bytes())
            }
            State::Busy(_) => 0,
        }
    }
}

enum State {
    /// The latest version, packed ([`pack`]).
    Row(Arc<[u8]>),
    /// Writes to this name in flight (queued or in an uncommitted batch).
    Busy(Box<Busy>),
}

struct Busy {
    vault: String,
    name_key: String,
    writes: u32,
}

impl Slot {
    fn is(&self, hash: u64, vault: &str, name_key: &str) -> bool {
        self.hash == hash
            && match &self.state {
                State::Row(packed) => packed_key_is(packed, vault, name_key),
                State::Busy(b) => b.vault == vault && b.name_key == name_key,
            }
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(VersionRow),
    /// Not cached: read the database, then offer the row to [`LiveCache::fill`] with this ticket.
    Miss(Ticket),
    /// A version other than the cached latest, not cached: read the database, then offer the row to
    /// [`LiveCache::fill_older`] with this ticket.
    MissOlder(Ticket),
    /// A write to the name is in flight: read the database and do not fill.
    Busy,
}

/// Where and when a miss happened.
pub(crate) struct Ticket {
    hash: u64,
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
            guard
                .table
                .retain(|slot| matches!(slot.state, State::Busy(_)));
            guard.bytes = 0;
        }
    }

    fn hash(&self, vault: &str, name_key: &str) -> u64 {
        self.hasher.hash_one((vault, name_key))
    }

    /// The shard of a hash: bits the table itself does not use (it indexes by the low bits and tags slots
    /// with the top seven).
    fn shard_of(hash: u64) -> usize {
        (hash >> 40) as usize % SHARDS
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a half-made entry (every change is one table call), so a
        // poisoned lock is still consistent.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached latest version of a live name, or (`version`) that version of it.
    pub(crate) fn get(&self, vault: &str, name_key: &str, version: Option<&str>) -> Lookup {
        if !self.enabled() {
            return Lookup::Busy;
        }
        let hash = self.hash(vault, name_key);
        let mut guard = self.lock(Self::shard_of(hash));
        let ticket = Ticket {
            hash,
            generation: guard.generation,
        };
        let packed = match guard.table.find(hash, |s| s.is(hash, vault, name_key)) {
            Some(Slot {
                state: State::Row(latest),
                older,
                ..
            }) => match version {
                Some(v) if !packed_version_is(latest, v) => {
                    match older.as_ref().and_then(|o| o.find(v)) {
                        Some(packed) => packed.clone(),
                        None => {
                            guard.misses += 1;
                            return Lookup::MissOlder(ticket);
                        }
                    }
                }
                _ => latest.clone(),
            },
            Some(_) => {
                guard.misses += 1;
                return Lookup::Busy;
            }
            None => {
                guard.misses += 1;
                return Lookup::Miss(ticket);
            }
        };
        guard.hits += 1;
        drop(guard);
        // Unpacking allocates: outside the lock. A row that does not unpack (never: it was packed here) is
        // read from the database instead.
        unpack(&packed).map_or(Lookup::Busy, Lookup::Hit)
    }

    /// Offer the latest version read from the database after `ticket`'s miss. Kept only if no write to the
    /// shard finished, and none to the name started, since the miss.
    pub(crate) fn fill(&self, vault: &str, name_key: &str, ticket: Ticket, row: &VersionRow) {
        let Some(packed) = self.pack_to_cache(vault, name_key, row) else {
            return;
        };
        let hash = ticket.hash;
        let mut shard = self.lock(Self::shard_of(hash));
        if shard.generation != ticket.generation
            || shard
                .table
                .find(hash, |s| s.is(hash, vault, name_key))
                .is_some()
        {
            return;
        }
        shard.insert_row(hash, packed, self.shard_budget);
    }

    /// Offer an older version of a name read from the database after `ticket`'s [`Lookup::MissOlder`]. Kept
    /// with the name's cached latest version only if no write to the shard finished, and none to the name
    /// started, since the miss (the same rule as [`Self::fill`]); dropped with it.
    pub(crate) fn fill_older(&self, vault: &str, name_key: &str, ticket: Ticket, row: &VersionRow) {
        let Some(packed) = self.pack_to_cache(vault, name_key, row) else {
            return;
        };
        let hash = ticket.hash;
        let mut guard = self.lock(Self::shard_of(hash));
        let shard = &mut *guard;
        if shard.generation != ticket.generation {
            return;
        }
        let Some(slot) = shard.table.find_mut(hash, |s| s.is(hash, vault, name_key)) else {
            return;
        };
        let State::Row(latest) = &slot.state else {
            return;
        };
        if packed_version_is(latest, &row.version) {
            return;
        }
        let older = slot.older.get_or_insert_with(Box::default);
        if older.find(&row.version).is_some() {
            return;
        }
        let at = older.next;
        older.next = (at + 1) % OLDER_PER_NAME;
        let added = entry_bytes(&packed);
        let dropped = older.rows[at]
            .replace(packed)
            .map_or(0, |p| entry_bytes(&p));
        shard.bytes = shard.bytes + added - dropped;
        while shard.bytes > self.shard_budget && shard.bytes > 0 {
            shard.evict_some();
        }
    }

    /// The row packed, if the cache takes it: a row of another name (never: the caller looked it up by this
    /// name), or one too large (one huge value must not flush a shard), is not cached.
    fn pack_to_cache(&self, vault: &str, name_key: &str, row: &VersionRow) -> Option<Arc<[u8]>> {
        if !row.name.eq_ignore_ascii_case(name_key) {
            return None;
        }
        let packed = pack(vault, row);
        (entry_bytes(&packed) <= self.shard_budget / 8).then(|| Arc::from(packed))
    }

    /// Mark a name busy until the returned mark is dropped (after the write committed or failed).
    pub(crate) fn begin_write(self: &Arc<Self>, vault: &str, name_key: &str) -> WriteMark {
        self.begin(vault, name_key, None)
    }

    /// Like [`Self::begin_write`], for a write that makes `row` the name's latest version: if the write
    /// commits ([`WriteMark::committed`]) and no other write to the name is in flight when it ends, the row
    /// is cached (a secret is often read right after it is set).
    pub(crate) fn begin_put(self: &Arc<Self>, vault: &str, row: &VersionRow) -> WriteMark {
        let name_key = super::name_key(&row.name);
        let packed = if self.enabled() {
            self.pack_to_cache(vault, &name_key, row)
        } else {
            None
        };
        self.begin(vault, &name_key, packed)
    }

    fn begin(self: &Arc<Self>, vault: &str, name_key: &str, row: Option<Arc<[u8]>>) -> WriteMark {
        if !self.enabled() {
            return WriteMark::none();
        }
        let hash = self.hash(vault, name_key);
        let busy = || {
            State::Busy(Box::new(Busy {
                vault: vault.to_owned(),
                name_key: name_key.to_owned(),
                writes: 1,
            }))
        };
        let mut guard = self.lock(Self::shard_of(hash));
        let shard = &mut *guard;
        match shard.table.find_mut(hash, |s| s.is(hash, vault, name_key)) {
            Some(Slot {
                state: State::Busy(b),
                ..
            }) => b.writes += 1,
            Some(slot) => {
                shard.bytes -= slot.bytes();
                slot.older = None;
                slot.state = busy();
            }
            None => {
                shard.table.insert_unique(
                    hash,
                    Slot {
                        hash,
                        state: busy(),
                        older: None,
                    },
                    |s| s.hash,
                );
            }
        }
        drop(guard);
        WriteMark {
            marked: Some(Marked {
                cache: self.clone(),
                hash,
                vault: vault.to_owned(),
                name_key: name_key.to_owned(),
                row,
                committed: false,
            }),
        }
    }

    /// A write to the name ended: forget the name's row, or cache `install` (the row the write made latest,
    /// if it committed) when no other write to the name is in flight. Writes end in the order the single
    /// writer applied them, so when the last one in flight ends, the row it wrote is the latest.
    fn end_write(&self, hash: u64, vault: &str, name_key: &str, install: Option<Arc<[u8]>>) {
        let mut guard = self.lock(Self::shard_of(hash));
        let shard = &mut *guard;
        shard.generation += 1;
        let Ok(mut entry) = shard
            .table
            .find_entry(hash, |s| s.is(hash, vault, name_key))
        else {
            return;
        };
        let State::Busy(busy) = &mut entry.get_mut().state else {
            return;
        };
        busy.writes -= 1;
        if busy.writes > 0 {
            return;
        }
        entry.remove();
        if let Some(packed) = install.filter(|_| self.enabled()) {
            shard.insert_row(hash, packed, self.shard_budget);
        }
    }

    /// Lookups that hit, lookups that missed, and bytes held by the cached rows now (overhead included);
    /// `None` when the cache is off.
    pub(crate) fn metrics(&self) -> Option<(u64, u64, u64)> {
        if self.shard_budget == 0 {
            return None;
        }
        let (mut hits, mut misses, mut bytes) = (0u64, 0u64, 0u64);
        for shard in 0..SHARDS {
            let s = self.lock(shard);
            hits += s.hits;
            misses += s.misses;
            bytes += s.bytes as u64;
        }
        Some((hits, misses, bytes))
    }

    /// Rows cached now (for tests).
    #[cfg(test)]
    pub(crate) fn rows(&self) -> usize {
        (0..SHARDS)
            .map(|s| {
                self.lock(s)
                    .table
                    .iter()
                    .filter(|slot| matches!(slot.state, State::Row(_)))
                    .count()
            })
            .sum()
    }

    /// Bytes held by the cached rows now, overhead included (for tests).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).bytes).sum()
    }
}

impl Shard {
    fn insert_row(&mut self, hash: u64, packed: Arc<[u8]>, budget: usize) {
        let size = entry_bytes(&packed);
        while self.bytes + size > budget && self.bytes > 0 {
            self.evict_some();
        }
        self.bytes += size;
        self.table.insert_unique(
            hash,
            Slot {
                hash,
                state: State::Row(packed),
                older: None,
            },
            |s| s.hash,
        );
    }

    /// Drops one in [`EVICT_ONE_IN`] rows (a different share each time).
    fn evict_some(&mut self) {
        self.evictions += 1;
        let drop_at = self.evictions % EVICT_ONE_IN;
        let mut i = 0u64;
        let mut freed = 0;
        self.table.retain(|slot| match &slot.state {
            State::Busy(_) => true,
            State::Row(_) => {
                i += 1;
                let keep = i % EVICT_ONE_IN != drop_at;
                if !keep {
                    freed += slot.bytes();
                }
                keep
            }
        });
        // Four passes in a row drop at least one row whenever there is one. Should the count ever disagree with
        // the rows (it cannot), a fourth pass that drops nothing resets the count, so the caller's loop ends.
        self.bytes -= freed;
        if freed == 0 && self.evictions.is_multiple_of(EVICT_ONE_IN) {
            self.table
                .retain(|slot| matches!(slot.state, State::Busy(_)));
            self.bytes = 0;
        }
    }
}

fn entry_bytes(packed: &[u8]) -> usize {
    ENTRY_OVERHEAD + packed.len()
}

/// Keeps a name busy in the cache; see [`LiveCache::begin_write`].
#[must_use]
pub(crate) struct WriteMark {
    marked: Option<Marked>,
}

struct Marked {
    cache: Arc<LiveCache>,
    hash: u64,
    vault: String,
    name_key: String,
    /// The row a put makes latest ([`LiveCache::begin_put`]).
    row: Option<Arc<[u8]>>,
    committed: bool,
}

impl WriteMark {
    /// A mark that marks nothing (writes that cannot touch a cached row).
    pub(crate) fn none() -> WriteMark {
        WriteMark { marked: None }
    }

    /// The write succeeded and its batch committed: a put's row may be cached when the mark is dropped.
    pub(crate) fn committed(&mut self) {
        if let Some(m) = &mut self.marked {
            m.committed = true;
        }
    }
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        if let Some(m) = self.marked.take() {
            let install = m.row.filter(|_| m.committed);
            m.cache.end_write(m.hash, &m.vault, &m.name_key, install);
        }
    }
}

// A cached row is packed into one allocation (about half the memory of a `VersionRow` and its strings):
//   flags: u8 (FLAG_*)
//   vault, name: length-prefixed (varint) UTF-8
//   version: 16 bytes if FLAG_HEX_VERSION (32 lower-case hex digits, as this server makes them), else
//            length-prefixed
//   content type (FLAG_CONTENT_TYPE), tags (FLAG_TAGS: count, then length-prefixed key and value per tag)
//   created, updated, nbf (FLAG_NBF), exp (FLAG_EXP): zig-zag varints
//   the sealed value: the rest.
const FLAG_ENABLED: u8 = 1;
const FLAG_NBF: u8 = 2;
const FLAG_EXP: u8 = 4;
const FLAG_CONTENT_TYPE: u8 = 8;
const FLAG_TAGS: u8 = 16;
const FLAG_HEX_VERSION: u8 = 32;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// 32 lower-case hex digits as 16 bytes.
fn hex_version(version: &str) -> Option<[u8; 16]> {
    let digits = version.as_bytes();
    if digits.len() != 32
        || !digits
            .iter()
            .all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// The row packed.
fn pack(vault: &str, row: &VersionRow) -> Vec<u8> {
    let hex = hex_version(&row.version);
    let mut flags = 0;
    for (set, flag) in [
        (row.enabled, FLAG_ENABLED),
        (row.nbf.is_some(), FLAG_NBF),
        (row.exp.is_some(), FLAG_EXP),
        (row.content_type.is_some(), FLAG_CONTENT_TYPE),
        (row.tags.is_some(), FLAG_TAGS),
        (hex.is_some(), FLAG_HEX_VERSION),
    ] {
        if set {
            flags |= flag;
        }
    }
    let tags_len: usize = row
        .tags
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(
        1 + vault.len() + row.name.len() + row.version.len() + tags_len + row.sealed.len() + 48,
    );
    out.push(flags);
    put_str(&mut out, vault);
    put_str(&mut out, &row.name);
    match hex {
        Some(bytes) => out.extend_from_slice(&bytes),
        None => put_str(&mut out, &row.version),
    }
    if let Some(ct) = &row.content_type {
        put_str(&mut out, ct);
    }
    if let Some(tags) = &row.tags {
        put_varint(&mut out, tags.len() as u64);
        for (k, v) in tags {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
    }
    put_int(&mut out, row.created);
    put_int(&mut out, row.updated);
    for v in [row.nbf, row.exp].into_iter().flatten() {
        put_int(&mut out, v);
    }
    out.extend_from_slice(&row.sealed);
    out
}

/// Reads a packed row front to back; every read is checked (None at the first that does not fit).
struct Unpacker<'a>(&'a [u8]);

impl<'a> Unpacker<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn int(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// The vault and name of a packed row match (vault, name key). Compares bytes: on every lookup.
fn packed_key_is(packed: &[u8], vault: &str, name_key: &str) -> bool {
    let mut r = Unpacker(packed);
    r.take(1).is_some()
        && r.bytes() == Some(vault.as_bytes())
        && r.bytes()
            .is_some_and(|name| name.eq_ignore_ascii_case(name_key.as_bytes()))
}

/// The version of a packed row is `version` (compared without unpacking the row).
fn packed_version_is(packed: &[u8], version: &str) -> bool {
    let mut r = Unpacker(packed);
    let Some(&flags) = r.take(1).and_then(|f| f.first()) else {
        return false;
    };
    if r.bytes().is_none() || r.bytes().is_none() {
        return false; // the vault, the name
    }
    if flags & FLAG_HEX_VERSION != 0 {
        hex_version(version).is_some_and(|bytes| r.take(16) == Some(&bytes[..]))
    } else {
        r.bytes() == Some(version.as_bytes())
    }
}

fn unpack(packed: &[u8]) -> Option<VersionRow> {
    let mut r = Unpacker(packed);
    let flags = *r.take(1)?.first()?;
    let has = |flag: u8| flags & flag != 0;
    r.str()?; // the vault
    let name = r.str()?.to_owned();
    let version = if has(FLAG_HEX_VERSION) {
        // `hex::encode` collects chars one by one: ten times the work of this.
        let mut digits = [0u8; 32];
        hex::encode_to_slice(r.take(16)?, &mut digits).ok()?;
        std::str::from_utf8(&digits).ok()?.to_owned()
    } else {
        r.str()?.to_owned()
    };
    let content_type = if has(FLAG_CONTENT_TYPE) {
        Some(r.str()?.to_owned())
    } else {
        None
    };
    let tags = if has(FLAG_TAGS) {
        let count = r.varint()?;
        let mut tags = super::Tags::new();
        for _ in 0..count {
            let k = r.str()?.to_owned();
            tags.insert(k, r.str()?.to_owned());
        }
        Some(tags)
    } else {
        None
    };
    let created = r.int()?;
    let updated = r.int()?;
    let nbf = if has(FLAG_NBF) { Some(r.int()?) } else { None };
    let exp = if has(FLAG_EXP) { Some(r.int()?) } else { None };
    Some(VersionRow {
        name,
        version,
        sealed: r.0.to_vec(),
        content_type,
        tags,
        enabled: has(FLAG_ENABLED),
        nbf,
        exp,
        created,
        updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Tags;

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
        match cache.get("v", name, None) {
            Lookup::Miss(t) => t,
            Lookup::Hit(_) => panic!("{name}: unexpected hit"),
            Lookup::MissOlder(_) => panic!("{name}: unexpected older-version miss"),
            Lookup::Busy => panic!("{name}: unexpected busy"),
        }
    }

    fn hit(cache: &LiveCache, name: &str) -> VersionRow {
        match cache.get("v", name, None) {
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
        assert!(matches!(cache.get("w", "a", None), Lookup::Miss(_)));
        miss(&cache, "b");
    }

    #[test]
    fn a_write_in_flight_hides_the_entry_and_ending_it_drops_it() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let t = miss(&cache, "a");
        cache.fill("v", "a", t, &row("A", "1", 10));
        let mark = cache.begin_write("v", "a");
        assert!(matches!(cache.get("v", "a", None), Lookup::Busy));
        let second = cache.begin_write("v", "a");
        drop(mark);
        assert!(
            matches!(cache.get("v", "a", None), Lookup::Busy),
            "still busy while a second write is in flight"
        );
        drop(second);
        miss(&cache, "a");
        assert_eq!(cache.rows(), 0);
    }

    fn get_version(cache: &LiveCache, name: &str, version: &str) -> Lookup {
        cache.get("v", name, Some(version))
    }

    fn v(n: u32) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn older_versions_read_by_id_are_kept_beside_the_latest_and_dropped_by_any_write() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        // No row for the name: a read by version misses as any read does.
        assert!(matches!(get_version(&cache, "a", &v(1)), Lookup::Miss(_)));
        let t = miss(&cache, "a");
        cache.fill("v", "a", t, &row("A", &v(3), 10));
        let latest_bytes = cache.bytes();
        // The latest by its id: a hit. An older one: a miss that may be filled beside it.
        assert_eq!(
            match get_version(&cache, "a", &v(3)) {
                Lookup::Hit(r) => r.version,
                _ => panic!("the latest by id"),
            },
            v(3)
        );
        let Lookup::MissOlder(t) = get_version(&cache, "a", &v(1)) else {
            panic!("an older version should miss as older");
        };
        cache.fill_older("v", "a", t, &row("A", &v(1), 10));
        let Lookup::Hit(r) = get_version(&cache, "a", &v(1)) else {
            panic!("the older version is cached");
        };
        assert_eq!((r.version.as_str(), r.sealed.len()), (v(1).as_str(), 10));
        assert_eq!(
            hit(&cache, "a").version,
            v(3),
            "the latest is still the latest"
        );
        assert!(cache.bytes() > latest_bytes);
        // Offering it again, or offering the latest as older, changes nothing.
        let Lookup::MissOlder(t) = get_version(&cache, "a", &v(2)) else {
            panic!("v2 is not cached");
        };
        cache.fill_older("v", "a", t, &row("A", &v(3), 10));
        assert!(matches!(
            get_version(&cache, "a", &v(2)),
            Lookup::MissOlder(_)
        ));
        // At most OLDER_PER_NAME: the oldest offered goes first.
        for n in [2, 0] {
            let Lookup::MissOlder(t) = get_version(&cache, "a", &v(n)) else {
                panic!("v{n} is not cached yet");
            };
            cache.fill_older("v", "a", t, &row("A", &v(n), 10));
        }
        assert!(matches!(
            get_version(&cache, "a", &v(1)),
            Lookup::MissOlder(_)
        ));
        assert!(matches!(get_version(&cache, "a", &v(2)), Lookup::Hit(_)));
        assert!(matches!(get_version(&cache, "a", &v(0)), Lookup::Hit(_)));
        // Any write to the name (an update of an older version included) drops them all.
        let mark = cache.begin_write("v", "a");
        assert!(matches!(get_version(&cache, "a", &v(2)), Lookup::Busy));
        assert_eq!(cache.bytes(), 0);
        drop(mark);
        assert!(matches!(get_version(&cache, "a", &v(2)), Lookup::Miss(_)));
        assert_eq!((cache.rows(), cache.bytes()), (0, 0));
    }

    #[test]
    fn an_older_version_read_that_raced_a_write_is_not_cached() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let t = miss(&cache, "a");
        cache.fill("v", "a", t, &row("A", &v(2), 10));
        let Lookup::MissOlder(t) = get_version(&cache, "a", &v(1)) else {
            panic!("an older version should miss as older");
        };
        // A write to the name begins and ends meanwhile, and its latest is cached again: the offer is refused
        // (the shard's generation moved), as any fill after a write ended.
        drop(cache.begin_write("v", "a"));
        let t2 = miss(&cache, "a");
        cache.fill("v", "a", t2, &row("A", &v(2), 10));
        cache.fill_older("v", "a", t, &row("A", &v(1), 10));
        assert!(matches!(
            get_version(&cache, "a", &v(1)),
            Lookup::MissOlder(_)
        ));
    }

    #[test]
    fn older_versions_count_against_the_budget() {
        let budget = 64 * 1024;
        let cache = Arc::new(LiveCache::new(budget));
        for i in 0..400 {
            let name = format!("n{i}");
            if let Lookup::Miss(t) = cache.get("v", &name, None) {
                cache.fill("v", &name, t, &row(&name, &v(9), 100));
            }
            for n in 0..3 {
                if let Lookup::MissOlder(t) = cache.get("v", &name, Some(&v(n))) {
                    cache.fill_older("v", &name, t, &row(&name, &v(n), 100));
                }
            }
        }
        let held = cache.bytes();
        assert!(held <= budget, "{held} > {budget}");
        assert!(cache.rows() > 0);
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
        assert!(matches!(cache.get("v", "a", None), Lookup::Busy));
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
            if let Lookup::Miss(t) = cache.get("v", &name, None) {
                cache.fill("v", &name, t, &row(&name, "1", 100));
            }
        }
        let held = cache.bytes();
        assert!(held <= budget, "{held} bytes held, budget {budget}");
        // Each row costs its packed bytes (about 110 here) and the overhead: the cache stays most of the way
        // full (evictions drop a quarter of a shard's rows at a time).
        let fits = budget / (ENTRY_OVERHEAD + 110);
        assert!(
            cache.rows() * 10 >= fits * 6,
            "{} rows cached, about {fits} fit",
            cache.rows()
        );
        // A value larger than an eighth of a shard is never cached.
        let t = miss(&cache, "huge");
        cache.fill("v", "huge", t, &row("huge", "1", budget));
        miss(&cache, "huge");
    }

    #[test]
    fn disabled_cache_never_hits() {
        let cache = Arc::new(LiveCache::new(0));
        assert!(matches!(cache.get("v", "a", None), Lookup::Busy));
        drop(cache.begin_write("v", "a"));
        assert_eq!(cache.rows(), 0);
    }

    #[test]
    fn a_put_ending_after_the_cache_closed_caches_nothing() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let mut put = cache.begin_put("v", &row("A", "1", 10));
        cache.disable();
        put.committed();
        drop(put);
        assert_eq!((cache.rows(), cache.bytes()), (0, 0));
        assert!(matches!(cache.get("v", "a", None), Lookup::Busy));
    }

    fn full_row() -> VersionRow {
        VersionRow {
            name: "Db-Password".into(),
            version: "0123456789abcdef0123456789abcdef".into(),
            sealed: (0..=255).collect(),
            content_type: Some("text/plain; charset=\"utf-8\" ünïcode".into()),
            tags: Some(
                [("env", "prod"), ("", ""), ("ключ", "значение")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            enabled: false,
            nbf: Some(-1),
            exp: Some(i64::MAX),
            created: i64::MIN,
            updated: 1_700_000_000,
        }
    }

    #[test]
    fn rows_pack_and_unpack_unchanged() {
        let mut rows = vec![full_row(), row("a", "1", 0), row("b", "", 3)];
        let mut r = full_row();
        r.version = "0123456789ABCDEF0123456789ABCDEF".into(); // not lower-case hex: kept as text
        rows.push(r);
        let mut r = full_row();
        r.tags = Some(Tags::new()); // no tags and an empty set of tags differ
        r.content_type = Some(String::new());
        rows.push(r);
        for r in rows {
            let packed = pack("vault-1", &r);
            let back = unpack(&packed).expect("unpacks");
            assert!(back == r, "{back:?} unpacked from {r:?}");
            assert!(packed_key_is(
                &packed,
                "vault-1",
                &r.name.to_ascii_lowercase()
            ));
            assert!(!packed_key_is(
                &packed,
                "vault-2",
                &r.name.to_ascii_lowercase()
            ));
            assert!(!packed_key_is(&packed, "vault-1", "other"));
            // Every truncation is refused, never a panic (a varint or length running past the end).
            for cut in 0..packed.len().saturating_sub(r.sealed.len()) {
                assert!(unpack(&packed[..cut]).is_none(), "cut at {cut}");
            }
        }
        // A lower-case hex version takes 16 bytes, not 33.
        let hex = pack("v", &full_row()).len();
        let mut text = full_row();
        text.version = "0123456789ABCDEF0123456789ABCDEF".into();
        assert_eq!(pack("v", &text).len(), hex + 17);
    }

    #[test]
    fn a_committed_put_caches_its_row_when_it_ends_last() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let r = full_row();
        let mut mark = cache.begin_put("v", &r);
        assert!(matches!(cache.get("v", "db-password", None), Lookup::Busy));
        mark.committed();
        drop(mark);
        let cached = hit(&cache, "db-password");
        assert!(cached == r, "{cached:?} cached for {r:?}");

        // A put that failed (or whose batch did not commit) caches nothing, and the old row is gone.
        drop(cache.begin_put("v", &row("Db-Password", "2", 10)));
        miss(&cache, "db-password");

        // Two writes in flight: only the one ending last, with none left in flight, caches its row. Writes end
        // in the order the writer applied them.
        let mut first = cache.begin_put("v", &row("Db-Password", "3", 10));
        let mut second = cache.begin_put("v", &row("DB-PASSWORD", "4", 10));
        first.committed();
        drop(first);
        assert!(matches!(cache.get("v", "db-password", None), Lookup::Busy));
        second.committed();
        drop(second);
        let cached = hit(&cache, "db-password");
        assert_eq!(
            (cached.version.as_str(), cached.name.as_str()),
            ("4", "DB-PASSWORD")
        );

        // A put ending while another kind of write is still in flight caches nothing: that write may change
        // the name after it.
        let mut put = cache.begin_put("v", &row("Db-Password", "5", 10));
        let delete = cache.begin_write("v", "db-password");
        put.committed();
        drop(put);
        drop(delete);
        miss(&cache, "db-password");
        assert_eq!(cache.rows(), 0);
    }

    #[test]
    fn a_read_that_missed_before_a_put_does_not_overwrite_its_row() {
        let cache = Arc::new(LiveCache::new(1 << 20));
        let t = miss(&cache, "a");
        let mut put = cache.begin_put("v", &row("A", "new", 10));
        put.committed();
        drop(put);
        // The read that missed before the put offers the row it read then.
        cache.fill("v", "a", t, &row("A", "old", 10));
        assert_eq!(hit(&cache, "a").version, "new");
    }

    /// The memory a full cache takes, against its budget: fills a 32 MiB cache with rows of a 64-byte value
    /// (sealed: 170 bytes) and prints the process's resident memory before and after. Run it alone:
    /// `cargo test --release -p keyvault-server --lib cache_memory -- --ignored --nocapture`
    #[test]
    #[ignore = "measures the whole process: run alone"]
    fn cache_memory() {
        fn rss_kib() -> usize {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let budget = 32 << 20;
        let cache = Arc::new(LiveCache::new(budget));
        let before = rss_kib();
        for i in 0..400_000u64 {
            let name = format!("bench-{i:07}");
            let mut r = row(&name, &format!("{:032x}", i * 7_919), 170);
            r.created = 1_790_000_000;
            r.updated = r.created;
            if let Lookup::Miss(t) = cache.get("bench", &name, None) {
                cache.fill("bench", &name, t, &r);
            }
        }
        let after = rss_kib();
        println!(
            "{} rows, {} bytes counted (budget {budget}); resident memory {} KiB → {} KiB: {:.0} bytes per row",
            cache.rows(),
            cache.bytes(),
            before,
            after,
            (after - before) as f64 * 1024.0 / cache.rows() as f64
        );
    }
}
