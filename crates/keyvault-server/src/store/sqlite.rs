//! The embedded [`SecretStore`]: one SQLite file (bundled SQLite, WAL, `synchronous=FULL`).
//!
//! - **Writes** go to one dedicated writer thread that owns the only write connection. Requests arrive over
//!   a channel; the writer drains whatever is queued (up to [`BATCH_CAP`]), runs each request in its own
//!   `SAVEPOINT` inside one transaction (a failing request rolls back only itself), commits once (one fsync
//!   for the whole batch: group commit), then answers every caller. A write is durable before its method
//!   returns `Ok`.
//! - **Reads** use a small pool of read-only connections (WAL readers never block the writer, and see every
//!   write that has been acknowledged), each with its prepared statements cached. Point reads and pages of
//!   at most [`INLINE_SCAN_ROWS`] rows run *inline* on the calling thread (a primary-key lookup costs a few
//!   microseconds: a hand-off to another thread would cost more than the read, in context switches); reads
//!   of unbounded size (every version of a name) run on `spawn_blocking`. Inline reads work on any runtime
//!   flavour (no `block_in_place`). A WAL reader does not wait for the writer or the (PASSIVE)
//!   checkpointer, so an inline read does not block its thread for longer than the read itself.
//! - **Cache**: the latest version of recently read or set live names is kept in memory (`store/cache.rs`,
//!   sealed rows, bounded by bytes); writes hide a name from the moment they are queued until their batch
//!   committed (a set then caches the version it wrote, if no other write to the name is in flight), so the
//!   cache is exact. It relies on this process being the database's only writer: [`SqliteStore::open`] takes an
//!   exclusive lock on `DB.lock` and refuses a database another process holds.
//! - **Paging** is keyset-only (`name_key > ?` / `version > ?`) over the names' primary key (live names, with a
//!   partial index of live names where soft-deleted ones crowd the key order), a partial index (deleted names)
//!   and the versions' unique (vault, name_key, version) index (a name's versions, listed by version id as Key
//!   Vault does), so a page deep in a million names costs what the first page costs.
//! - The schema is versioned with `PRAGMA user_version` ([`SCHEMA_VERSION`]).
//!
//! Schema (version 6):
//!
//! ```text
//! names(vault, name_key, display_name, latest_seq, deleted_on, scheduled_purge)   PK (vault, name_key)
//!     (WITHOUT ROWID: the table is ordered by its key; live names are listed in that order)
//!     names_live    (vault, name_key)                WHERE deleted_on IS NULL
//!     names_deleted (vault, name_key, ...covering)   WHERE deleted_on IS NOT NULL
//!     names_purge   (scheduled_purge)                WHERE scheduled_purge IS NOT NULL
//! versions(seq AUTOINCREMENT, vault, name_key, version, content_type, tags (JSON), enabled, nbf, exp, created,
//!          updated, sealed)
//!     versions_name_version UNIQUE (vault, name_key, version)
//! meta(key, value)   PK (key)   (WITHOUT ROWID: small values read at start, e.g. the key check)
//! ```
//!
//! `seq` orders a name's versions by creation (`latest_seq` points at the latest); it is never reused
//! (AUTOINCREMENT). Version 3 dropped the `versions_by_name (vault, name_key, seq)` index: listings page by
//! version id over the unique index, and a set inserts into one index fewer (about a third less writer CPU and
//! disk writes per set, `BENCHMARKS.md`). Version 5 moved the sealed value to the end of the row, so that
//! listings (which never return values) do not walk a large value's overflow pages to reach the attributes.
//! Version 6 added `meta`, for the key check ([`super::check_key`]) and the purge-protection record.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Statement, TransactionBehavior, params,
};
use std::cell::RefCell;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::cache::{LiveCache, Lookup, WriteMark};
use super::{
    DeletedRow, MetaSwap, SealedChange, SealedKey, SealedValue, SecretStore, StoreError,
    StoreResult, VersionPatch, VersionRow, name_key, tags_json,
};

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i64 = 6;
/// Most write requests committed together in one transaction.
pub const BATCH_CAP: usize = 256;
/// Write requests that may wait for the writer before callers are held back.
const QUEUE_CAP: usize = 4096;
/// Most read connections open at once on `spawn_blocking` (long reads).
const MAX_READERS: usize = 8;
/// Idle read connections kept for reuse: enough for one inline read per runtime worker plus the
/// [`MAX_READERS`] long reads, so a busy server does not close and reopen connections.
fn max_idle_readers() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(64)
            + MAX_READERS
    })
}
/// Pages of at most this many rows are read inline; larger ones on `spawn_blocking`.
pub const INLINE_SCAN_ROWS: usize = 128;
/// Prepared statements cached per connection (every query of this module fits).
const STATEMENT_CACHE: usize = 32;
/// How often the checkpointer copies the WAL into the database. A page changed many times between two
/// checkpoints is copied once; the WAL grows meanwhile (bounded by the writer's own checkpoint, [`WAL_AUTOCHECKPOINT_PAGES`]).
const CHECKPOINT_EVERY_MS: u64 = 100;
/// WAL pages after which a commit checkpoints by itself (in the commit path): only a safety net should the
/// checkpointer fall behind or stop. About 100 MiB of WAL with 1 KiB pages, well above
/// [`WAL_REWIND_FRAMES`] plus what sustained sets add while the checkpointer catches up.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 100_000;
/// WAL frames (pages) past which the checkpointer has the log started over (see [`checkpoint_loop`]): about
/// 32 MiB of WAL with 1 KiB pages, half a second of sets at c = 64 on the benchmark machine. Each rewind
/// syncs the database file a few times; 16 Ki frames wrote ≈ 30 % more bytes per set than the old
/// behaviour, 32 Ki 10–18 % (BENCHMARKS.md, session 15).
pub const WAL_REWIND_FRAMES: u32 = 32_768;
/// The checkpointer pauses the writer for its last pass only once a pass copied at most this many frames
/// (so that the frames committed meanwhile, which the paused pass copies, are few as well).
const REWIND_FINAL_FRAMES: u32 = 512;
/// Catch-up passes the checkpointer runs, at most, before giving up a rewind until its next turn.
const REWIND_MAX_PASSES: u32 = 8;
/// The page size of new databases. Every commit writes each page it changed to the WAL in full, and a set
/// changes a leaf page at a random place in each of three B-trees (`names`, and the two indexes of
/// `versions`; new rows of `versions` itself are appended): smaller pages mean proportionally fewer bytes
/// written, copied and checksummed per write (and per checkpoint).
const PAGE_SIZE: i64 = 1024;
/// The writer's page cache, as SQLite's `cache_size` (negative = KiB): 2 MiB, small on purpose. When a
/// B-tree page splits, SQLite renumbers the new pages through a temporary page number (the lock-byte
/// page's, 2^30 / page size + 1) far above the database's size; the next COMMIT then drops cached pages
/// past the end of the file by walking the whole page cache (`pcache1Truncate`), on nearly every commit
/// (1 KiB pages split often). That walk costs in proportion to the pages cached: 70 to 250 µs per commit
/// with 16 MiB. A smaller cache reads more pages again instead (from the OS's cache, a few µs each).
/// Measured on sets (`writer_cost_direct` in the tests) with the larger cache full: 2 MiB takes about 15
/// to 20 % less of the writer's CPU than 16 MiB at 34 sets per commit (what 64 concurrent callers make),
/// and 40 % less at one set per commit, while reading about 5 pages per set back from the OS.
/// In effect it holds 512 KiB: [`open_writer_with`] sets it before the database's 1-KiB page size is known, and
/// SQLite counts it in pages of the size of that moment (4 KiB). A full 2 to 8 MiB reads far fewer pages per
/// set (2.58 → 0.95 → 0.01) for the same writer CPU per set within the noise (BENCHMARKS.md, session 16).
const WRITER_CACHE_KIB: i64 = -2 * 1024;
/// Each reader's page cache: 4 MiB (SQLite's default is 2). Like the writer's, it grows only as pages are
/// read; a reader drops it whenever it sees that the database changed. At most [`max_idle_readers`] of
/// them stay open, which bounds what the caches can hold on to when the server is idle.
const READER_CACHE_KIB: i64 = -4 * 1024;
/// Names purged per write request by `purge_expired` (keeps the writer responsive).
const PURGE_CHUNK: usize = 256;
/// Versions a write request of `purge_expired` removes before it ends (after the name it is at): a name's
/// versions are not limited in number, and 256 names of 500 versions held the writer — every set waiting —
/// for 1.5 s (about 11 µs a version; the long-run audit). 2,048 is about 25 ms.
const PURGE_CHUNK_VERSIONS: usize = 2048;
/// Bytes of rows the cache of latest versions ([`LiveCache`]) may hold.
const LIVE_CACHE_BYTES: usize = 64 << 20;
/// How long a connection waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE names (
    vault           TEXT    NOT NULL,
    name_key        TEXT    NOT NULL,
    display_name    TEXT    NOT NULL,
    latest_seq      INTEGER NOT NULL,
    deleted_on      INTEGER,
    scheduled_purge INTEGER,
    PRIMARY KEY (vault, name_key),
    CHECK ((deleted_on IS NULL) = (scheduled_purge IS NULL))
) WITHOUT ROWID;
CREATE INDEX names_live ON names (vault, name_key, display_name, latest_seq, deleted_on) WHERE deleted_on IS NULL;
CREATE INDEX names_deleted ON names (vault, name_key, display_name, latest_seq, deleted_on, scheduled_purge)
    WHERE deleted_on IS NOT NULL;
CREATE INDEX names_purge ON names (scheduled_purge) WHERE scheduled_purge IS NOT NULL;
CREATE TABLE versions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    vault        TEXT    NOT NULL,
    name_key     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    sealed       BLOB    NOT NULL,
    content_type TEXT,
    tags         TEXT,
    enabled      INTEGER NOT NULL,
    nbf          INTEGER,
    exp          INTEGER,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL,
    UNIQUE (vault, name_key, version)
);
CREATE INDEX versions_by_name ON versions (vault, name_key, seq);
";

/// Version 2: live names are listed in primary-key order (the table itself is that B-tree, `WITHOUT ROWID`),
/// so the covering `names_live` index goes: it held `latest_seq`, so every set rewrote an entry in it.
const SCHEMA_V2: &str = "DROP INDEX names_live;";

/// Version 3: a name's versions are listed by version id (as Key Vault lists them) over the unique
/// (vault, name_key, version) index, so the index by creation order goes: every set inserted into it.
const SCHEMA_V3: &str = "DROP INDEX versions_by_name;";

/// Version 4: an index of live names alone, for the pages that soft-deleted names would otherwise fill (see
/// [`list_latest`]). A set leaves it alone (it holds neither column a set changes, and its condition's column
/// changes only on delete and recover); a new name adds an entry.
const SCHEMA_V4: &str =
    "CREATE INDEX names_live ON names (vault, name_key) WHERE deleted_on IS NULL;";

/// Version 5: the sealed value is the last column of `versions`. A row larger than a page's share keeps its
/// first bytes in the leaf and the rest in a chain of overflow pages; every column stored after the value lay
/// at the chain's far end, so reading a version's attributes (a listing's whole work) walked the value's
/// overflow pages. With the value last, a listing reads only the leaf, and does not read the value at all:
/// a page of 25 secrets of 4 KiB took about twice the server CPU it takes after this change (BENCHMARKS.md,
/// session 8). SQLite cannot reorder columns in place, so the table is rebuilt (every version copied once, in
/// `seq` order, keeping each `seq`; AUTOINCREMENT's high-water mark carried over, so no seq is ever reused),
/// and its unique (vault, name_key, version) index is built after the copy, from sorted keys.
const SCHEMA_V5: &str = "
CREATE TABLE versions_v5 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    vault        TEXT    NOT NULL,
    name_key     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    content_type TEXT,
    tags         TEXT,
    enabled      INTEGER NOT NULL,
    nbf          INTEGER,
    exp          INTEGER,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL,
    sealed       BLOB    NOT NULL
);
INSERT INTO versions_v5
    (seq, vault, name_key, version, content_type, tags, enabled, nbf, exp, created, updated, sealed)
    SELECT seq, vault, name_key, version, content_type, tags, enabled, nbf, exp, created, updated, sealed
    FROM versions ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'versions_v5';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'versions_v5', max(seq) FROM sqlite_sequence WHERE name = 'versions' HAVING count(*) > 0;
DROP TABLE versions;
ALTER TABLE versions_v5 RENAME TO versions;
CREATE UNIQUE INDEX versions_name_version ON versions (vault, name_key, version);
";

/// Version 6: small values kept beside the secrets and read at start ([`SecretStore::meta`]): the key check
/// that stops a server whose key-encryption key is not the one the database was written with, and the record
/// that purge protection was turned on. A database from before has no check; [`super::check_key`] writes one
/// once the key has opened a value the database holds.
const SCHEMA_V6: &str = "
CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
";

/// The SQLite [`SecretStore`]. See the module documentation.
///
/// Dropping it (or [`SqliteStore::close`]) lets the writer finish the writes already queued, then stop.
pub struct SqliteStore {
    path: PathBuf,
    tx: Option<mpsc::Sender<Msg>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Moves WAL pages into the database file off the commit path (see [`checkpoint_loop`]).
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    stop_checkpoints: Arc<AtomicBool>,
    readers: Arc<ReadPool>,
    stats: Arc<Stats>,
    /// The latest version of recently read live names (see [`super::cache`]).
    cache: Arc<LiveCache>,
    /// `DB.lock`, locked exclusively while the store is open: the cache is exact only if this process is
    /// the database's only writer.
    lock: Mutex<Option<std::fs::File>>,
    /// Set when SQLite reported the file damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`): from then on changes are
    /// refused (503) and `/readyz` fails, so that nothing more is written into a damaged file (see
    /// [`SqliteStore::note_damage`]).
    damaged: AtomicBool,
}

/// How [`StoreError::Internal`] messages of a damaged database begin (`From<rusqlite::Error>`).
const DAMAGED: &str = "the database file is damaged: ";

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How a [`SqliteStore`] is set up, besides its file.
#[derive(Clone, Copy, Debug)]
pub struct SqliteOptions {
    /// Bytes of rows the cache of latest versions may hold (0: no cache). Default 64 MiB.
    pub cache_bytes: usize,
    /// Bytes of the file each reader maps into memory (SQLite's `mmap_size`, which caps it at 2 GiB; 0: none,
    /// the default). See `mmap_mib` in the server's configuration.
    pub mmap_bytes: u64,
    /// WAL frames past which the checkpointer rewinds the log under a sustained write load (default
    /// [`WAL_REWIND_FRAMES`]; 0 never does, leaving it to SQLite's own checkpoint inside a commit).
    pub wal_rewind_frames: u32,
    /// Whether the writer hands each commit's WAL frames to the kernel in one write (the `walbuf` VFS; default
    /// true) rather than SQLite's two per frame.
    pub buffer_wal_writes: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            cache_bytes: LIVE_CACHE_BYTES,
            mmap_bytes: 0,
            wal_rewind_frames: WAL_REWIND_FRAMES,
            buffer_wal_writes: true,
        }
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`, migrate its schema, and start the writer thread.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with these options.
    pub fn open_with(path: &Path, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let cache_bytes = options.cache_bytes;
        let lock = lock_database(path)?;
        refuse_foreign_wal(path)?;
        make_private(path)?;
        let mut conn = open_writer_with(path, options.buffer_wal_writes)?;
        migrate(&mut conn)?;
        // The writer's statements prepare on this schema (checked here, where an error can be returned).
        drop(Tx::new(&conn)?);
        let mmap_bytes = i64::try_from(options.mmap_bytes).unwrap_or(i64::MAX);
        let readers = Arc::new(ReadPool::new(path.to_path_buf(), mmap_bytes));
        // Fail now, not at the first request, if readers cannot open the file.
        let probe = readers.checkout()?;
        readers.checkin(probe);

        let (tx, rx) = mpsc::channel(QUEUE_CAP);
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        let gate = Arc::new(BatchGate::default());
        let writer_gate = gate.clone();
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                raise_writer_priority();
                writer_loop(conn, rx, &writer_stats, &writer_gate)
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the database writer: {e}")))?;
        let stop_checkpoints = Arc::new(AtomicBool::new(false));
        let checkpoint_conn = open_checkpointer(path)?;
        let stop = stop_checkpoints.clone();
        // The database file again, for the checkpointer to sync on its own (see `checkpoint_loop`).
        let db_file = std::fs::File::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let checkpointer = Checkpointer {
            conn: checkpoint_conn,
            db_file,
            gate,
            stats: stats.clone(),
            rewind_frames: options.wal_rewind_frames,
        };
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, &stop))
            .map_err(|e| StoreError::Internal(format!("cannot start the WAL checkpointer: {e}")))?;
        tracing::debug!(path = %path.display(), "opened the SQLite store");
        Ok(SqliteStore {
            path: path.to_path_buf(),
            tx: Some(tx),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stop_checkpoints,
            readers,
            stats,
            cache: Arc::new(LiveCache::new(cache_bytes)),
            lock: Mutex::new(Some(lock)),
            damaged: AtomicBool::new(false),
        })
    }

    /// Remembers a result that found the file damaged (logged once), and hands the result back.
    fn note_damage<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(StoreError::Internal(m)) = &result
            && m.starts_with(DAMAGED)
            && !self.damaged.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                path = %self.path.display(),
                error = %m,
                "the database file is damaged: changes are refused and /readyz fails from now on; stop the \
                 server and restore the database from a backup (reads of undamaged rows go on meanwhile)"
            );
        }
        result
    }

    /// The refusal of a change once the file is known to be damaged.
    fn refuse_if_damaged(&self) -> StoreResult<()> {
        if self.damaged.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "the database file is damaged: changes are refused until it is restored".into(),
            ));
        }
        Ok(())
    }

    /// Finish the writes already queued, stop the writer and close every connection. Later calls on this
    /// store fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        if let Some(tx) = &self.tx {
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Close(ack)).await.is_ok() {
                let _ = done.await;
            }
        }
        self.cache.disable();
        self.readers.close();
        self.stop_checkpointer();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The writer has acknowledged and is exiting; joining waits only for its last instructions.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Another store may open the file now.
        drop(
            self.lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    fn stop_checkpointer(&self) {
        self.stop_checkpoints.store(true, Ordering::SeqCst);
        let handle = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed so far (for metrics). Each holds one or more writes (group commit).
    pub fn committed_batches(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Write requests committed so far (for metrics), including those that answered with their own error.
    pub fn committed_writes(&self) -> u64 {
        self.stats.writes.load(Ordering::Relaxed)
    }

    /// Times the checkpointer copied the whole WAL into the database with the writer paused, so that the
    /// writer's next commit could start the log over (see [`checkpoint_loop`]).
    pub fn wal_rewinds(&self) -> u64 {
        self.stats.rewinds.load(Ordering::Relaxed)
    }

    /// Times the checkpointer paused the writer for the last pass of a rewind (at least
    /// [`SqliteStore::wal_rewinds`]: a reader that started before the pass can keep it from copying all).
    pub fn wal_rewind_pauses(&self) -> u64 {
        self.stats.rewind_pauses.load(Ordering::Relaxed)
    }

    /// A write that changes no live name's latest version (nothing cached can go stale).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.write_marked(WriteMark::none(), f).await
    }

    /// Hide the name `key` of `vault` in the cache until the write given to [`Self::write_marked`] with this
    /// mark has been committed (or has failed); then its entry is dropped.
    fn mark(&self, vault: &str, key: &str) -> WriteMark {
        self.cache.begin_write(vault, key)
    }

    /// A write, answered after its batch committed; `mark` is dropped just before the answer.
    async fn write_marked<T, F>(&self, mark: WriteMark, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.refuse_if_damaged()?;
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Msg::Job(Box::new(Job {
            f: Some(f),
            out: None,
            reply,
            mark,
        })))
        .await
        .map_err(|_| closed())?;
        let result = answer
            .await
            .map_err(|_| StoreError::Unavailable("the database writer stopped".into()))?;
        self.note_damage(result)
    }

    /// A short read, run on the calling thread (see the module documentation).
    fn read_inline<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let conn = self.readers.checkout()?;
        let result = f(&conn);
        self.readers.checkin(conn);
        self.note_damage(result)
    }

    /// A read of unbounded size, run on `spawn_blocking` (at most [`MAX_READERS`] at once).
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let pool = self.readers.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.checkout()?;
            let result = f(&conn);
            pool.checkin(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("a database read task failed: {e}")))?;
        self.note_damage(result)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop_checkpointer();
        // Closing the channel lets the writer drain what is queued and exit.
        drop(self.tx.take());
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            let _ = handle.join();
        }
    }
}

/// Refuses a database in rollback-journal mode next to a write-ahead log that holds frames: the database
/// was put there (a restored snapshot, whose copy is in rollback mode until a server opens it), and the log
/// is the replaced database's — SQLite would apply its pages to the new file and damage it. A database this
/// store has written is in WAL mode (file header bytes 18–19 are 2), and so is its log's.
fn refuse_foreign_wal(path: &Path) -> StoreResult<()> {
    use std::io::Read;
    let mut header = [0u8; 20];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    if read.is_err() || &header[..16] != b"SQLite format 3\0" || header[18..20] != [1, 1] {
        return Ok(());
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(StoreError::Internal(format!(
            "{} was put in place (it is in rollback-journal mode, as a snapshot's copy is) next to {}, the \
             write-ahead log of the database it replaced: remove {} and the -shm file beside it, then start \
             again (README: restoring a snapshot)",
            path.display(),
            wal.display(),
            wal.display()
        )));
    }
    Ok(())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

#[async_trait::async_trait]
impl SecretStore for SqliteStore {
    async fn put_version(&self, vault: &str, row: VersionRow) -> StoreResult<()> {
        // The new version is cached once committed, unless another write to the name is still in flight.
        let mark = self.cache.begin_put(vault, &row);
        let vault = vault.to_owned();
        self.write_marked(mark, move |c| put(c, &vault, &row)).await
    }

    async fn get_version(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<VersionRow>> {
        let key = name_key(name);
        let lookup = match self.cache.get(vault, &key, version) {
            Lookup::Hit(row) => return Ok(Some(row)),
            other => other,
        };
        let found = self.read_inline(|c| find_live(c, vault, &key, version))?;
        // A read by version fills the cache too (clients that pin the version they were given read it over
        // and over): as the name's latest when it is, or beside the cached latest when it is an older one.
        match (lookup, &found) {
            (Lookup::Miss(ticket), Some((_, row, true))) => {
                self.cache.fill(vault, &key, ticket, row)
            }
            (Lookup::MissOlder(ticket), Some((_, row, false))) => {
                self.cache.fill_older(vault, &key, ticket, row);
            }
            _ => {}
        }
        Ok(found.map(|(_, row, _)| row))
    }

    async fn update_version(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
        patch: VersionPatch,
    ) -> StoreResult<Option<VersionRow>> {
        let (vault, key, version) = (vault.to_owned(), name_key(name), version.map(str::to_owned));
        let mark = self.mark(&vault, &key);
        self.write_marked(mark, move |c| {
            update(c, &vault, &key, version.as_deref(), patch)
        })
        .await
    }

    async fn list_latest_upto(
        &self,
        vault: &str,
        after: Option<&str>,
        until: &str,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        let after = after.map(name_key).unwrap_or_default();
        if limit <= INLINE_SCAN_ROWS {
            return self.read_inline(|c| list_latest(c, vault, (&after, until), limit));
        }
        let (vault, until) = (vault.to_owned(), until.to_owned());
        self.read(move |c| list_latest(c, &vault, (&after, &until), limit))
            .await
    }

    async fn list_versions(
        &self,
        vault: &str,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        // Every version id sorts after "" (ids are 32 hex digits).
        let (key, after) = (name_key(name), after.unwrap_or_default());
        if limit <= INLINE_SCAN_ROWS {
            return self.read_inline(|c| versions_of_live(c, vault, &key, after, limit));
        }
        let (vault, after) = (vault.to_owned(), after.to_owned());
        self.read(move |c| versions_of_live(c, &vault, &key, &after, limit))
            .await
    }

    async fn all_versions(
        &self,
        vault: &str,
        name: &str,
        at_most: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        let (vault, key) = (vault.to_owned(), name_key(name));
        let limit = i64::try_from(at_most).unwrap_or(i64::MAX);
        self.read(move |c| {
            // Read in version-id order (the index), returned in creation order (a backup restores its last
            // version as the latest).
            let mut stmt = c.prepare_cached(SQL_ALL_VERSIONS_OF_LIVE)?;
            let mut rows = stmt
                .query_map(params![vault, key, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, version_row(r, 1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.sort_unstable_by_key(|(seq, _)| *seq);
            Ok(rows.into_iter().map(|(_, row)| row).collect())
        })
        .await
    }

    async fn soft_delete(
        &self,
        vault: &str,
        name: &str,
        deleted_on: i64,
        scheduled_purge: i64,
    ) -> StoreResult<Option<DeletedRow>> {
        let (vault, key) = (vault.to_owned(), name_key(name));
        let mark = self.mark(&vault, &key);
        self.write_marked(mark, move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE names SET deleted_on = ?3, scheduled_purge = ?4
                     WHERE vault = ?1 AND name_key = ?2 AND deleted_on IS NULL",
                )?
                .execute(params![vault, key, deleted_on, scheduled_purge])?;
            if changed == 0 {
                return Ok(None);
            }
            find_deleted(c, &vault, &key)
        })
        .await
    }

    async fn get_deleted(&self, vault: &str, name: &str) -> StoreResult<Option<DeletedRow>> {
        let key = name_key(name);
        self.read_inline(|c| find_deleted(c, vault, &key))
    }

    async fn list_deleted_upto(
        &self,
        vault: &str,
        after: Option<&str>,
        until: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeletedRow>> {
        let after = after.map(name_key).unwrap_or_default();
        if limit <= INLINE_SCAN_ROWS {
            return self.read_inline(|c| list_deleted(c, vault, (&after, until), limit));
        }
        let (vault, until) = (vault.to_owned(), until.to_owned());
        self.read(move |c| list_deleted(c, &vault, (&after, &until), limit))
            .await
    }

    async fn recover(&self, vault: &str, name: &str) -> StoreResult<Option<VersionRow>> {
        let (vault, key) = (vault.to_owned(), name_key(name));
        let mark = self.mark(&vault, &key);
        self.write_marked(mark, move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE names SET deleted_on = NULL, scheduled_purge = NULL
                     WHERE vault = ?1 AND name_key = ?2 AND deleted_on IS NOT NULL",
                )?
                .execute(params![vault, key])?;
            if changed == 0 {
                return Ok(None);
            }
            Ok(find_live(c, &vault, &key, None)?.map(|(_, row, _)| row))
        })
        .await
    }

    async fn purge(&self, vault: &str, name: &str) -> StoreResult<bool> {
        let (vault, key) = (vault.to_owned(), name_key(name));
        let mark = self.mark(&vault, &key);
        self.write_marked(mark, move |c| purge_deleted(c, &vault, &key))
            .await
    }

    async fn purge_expired(&self, now: i64) -> StoreResult<u64> {
        let mut total = 0u64;
        loop {
            let (n, more) = self
                .write(move |c| purge_expired_chunk(c, now, PURGE_CHUNK, PURGE_CHUNK_VERSIONS))
                .await?;
            total += n as u64;
            if !more {
                return Ok(total);
            }
        }
    }

    async fn restore(&self, vault: &str, versions: Vec<VersionRow>) -> StoreResult<()> {
        let vault = vault.to_owned();
        // The name must be absent (so not cached); marking it anyway keeps the rule simple: every write to a
        // name marks it.
        let key = versions
            .first()
            .map(|v| name_key(&v.name))
            .unwrap_or_default();
        let mark = self.mark(&vault, &key);
        self.write_marked(mark, move |c| restore(c, &vault, &versions))
            .await
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read_inline(|c| {
            let value = c
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            Ok(value)
        })
    }

    async fn meta_insert(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            )?
            .execute(params![key, value])?;
            let kept = c
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([&key], |r| r.get(0))?;
            Ok(kept)
        })
        .await
    }

    async fn any_sealed(&self) -> StoreResult<Option<SealedValue>> {
        self.read_inline(|c| {
            let found = c
                .prepare_cached(
                    "SELECT vault, name_key, version, sealed FROM versions ORDER BY seq LIMIT 1",
                )?
                .query_row([], |r| {
                    Ok(SealedValue {
                        vault: r.get(0)?,
                        name_key: r.get(1)?,
                        version: r.get(2)?,
                        sealed: r.get(3)?,
                    })
                })
                .optional()?;
            Ok(found)
        })
    }

    async fn sealed_page(
        &self,
        after: Option<&SealedKey>,
        limit: usize,
    ) -> StoreResult<Vec<SealedValue>> {
        let after = after.cloned().unwrap_or(SealedKey {
            vault: String::new(),
            name_key: String::new(),
            version: String::new(),
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            // Row values compare in order over the unique (vault, name_key, version) index.
            let mut stmt = c.prepare_cached(
                "SELECT vault, name_key, version, sealed FROM versions
                 WHERE (vault, name_key, version) > (?1, ?2, ?3)
                 ORDER BY vault, name_key, version LIMIT ?4",
            )?;
            let rows = stmt
                .query_map(
                    params![after.vault, after.name_key, after.version, limit],
                    |r| {
                        Ok(SealedValue {
                            vault: r.get(0)?,
                            name_key: r.get(1)?,
                            version: r.get(2)?,
                            sealed: r.get(3)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn replace_sealed(&self, changes: Vec<SealedChange>) -> StoreResult<u64> {
        // One write request per change, all queued before any answer is awaited: the writer commits them
        // together (group commit), each in its own savepoint, and each hides its name in the cache until then.
        self.refuse_if_damaged()?;
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        let mut answers = Vec::with_capacity(changes.len());
        for change in changes {
            let mark = self.mark(&change.vault, &change.name_key);
            let (reply, answer) = oneshot::channel();
            let f = move |c: &Tx<'_>| -> StoreResult<bool> {
                let changed = c
                    .prepare_cached(
                        "UPDATE versions SET sealed = ?5
                         WHERE vault = ?1 AND name_key = ?2 AND version = ?3 AND sealed = ?4",
                    )?
                    .execute(params![
                        change.vault,
                        change.name_key,
                        change.version,
                        change.old,
                        change.new
                    ])?;
                Ok(changed > 0)
            };
            tx.send(Msg::Job(Box::new(Job {
                f: Some(f),
                out: None,
                reply,
                mark,
            })))
            .await
            .map_err(|_| closed())?;
            answers.push(answer);
        }
        let mut replaced = 0;
        for answer in answers {
            let done = answer
                .await
                .map_err(|_| StoreError::Unavailable("the database writer stopped".into()))?;
            replaced += u64::from(self.note_damage(done)?);
        }
        Ok(replaced)
    }

    async fn meta_replace(&self, key: &str, old: &[u8], new: &[u8]) -> StoreResult<bool> {
        let (key, old, new) = (key.to_owned(), old.to_vec(), new.to_vec());
        self.write(move |c| {
            let changed = c
                .prepare_cached("UPDATE meta SET value = ?3 WHERE key = ?1 AND value = ?2")?
                .execute(params![key, old, new])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn meta_swap(&self, swaps: Vec<MetaSwap>) -> StoreResult<bool> {
        self.write(move |c| {
            // Every expectation is checked before anything changes (the writer runs one request at a time).
            for swap in &swaps {
                let held: Option<Vec<u8>> = c
                    .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                    .query_row([&swap.key], |r| r.get(0))
                    .optional()?;
                if held != swap.expect {
                    return Ok(false);
                }
            }
            for swap in &swaps {
                match &swap.set {
                    Some(value) => {
                        c.prepare_cached(
                            "INSERT INTO meta (key, value) VALUES (?1, ?2)
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![swap.key, value])?;
                    }
                    None => {
                        c.prepare_cached("DELETE FROM meta WHERE key = ?1")?
                            .execute([&swap.key])?;
                    }
                }
            }
            Ok(true)
        })
        .await
    }

    fn metrics(&self) -> crate::metrics::StoreMetrics {
        crate::metrics::StoreMetrics {
            batch_size: Some(self.stats.batch_sizes.snapshot()),
            commit_seconds: Some(self.stats.commit_seconds.snapshot()),
            cache: self
                .cache
                .metrics()
                .map(|(hits, misses, bytes)| crate::metrics::CacheMetrics {
                    hits,
                    misses,
                    bytes,
                }),
            checkpoints: Some(self.stats.checkpoints.load(Ordering::Relaxed)),
            wal_rewinds: Some(self.stats.rewinds.load(Ordering::Relaxed)),
        }
    }

    async fn health(&self) -> StoreResult<()> {
        self.refuse_if_damaged()?;
        match &self.tx {
            Some(tx) if !tx.is_closed() => {}
            _ => {
                return Err(StoreError::Unavailable(
                    "the database writer is not running".into(),
                ));
            }
        }
        self.read_inline(|c| {
            c.prepare_cached("SELECT 1 FROM names LIMIT 1")?
                .query([])?
                .next()?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Connections and schema

/// The database file readable and writable by its owner only, created so when new (SQLite gives its log and
/// shared-memory files the database file's mode). Values are sealed, but names, tags, content types and dates
/// are not, and a data directory that already existed may let others in. A file in the store's place that is
/// not a regular file (a device, `/dev/null`), or that this process may not change, is left as it is.
fn make_private(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let fail = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                for file in [
                    path.to_path_buf(),
                    sibling(path, "-wal"),
                    sibling(path, "-shm"),
                    sibling(path, ".lock"),
                ] {
                    if let Ok(meta) = std::fs::metadata(&file)
                        && meta.is_file()
                        && meta.permissions().mode() & 0o077 != 0
                        && let Err(e) =
                            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    {
                        tracing::warn!(file = %file.display(), error = %e, "cannot make the file private");
                    }
                }
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`vault.db` → `vault.db-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// How long a lock held by someone else is waited for before the database counts as in use. A lock file's
/// `flock` stays held while any copy of its descriptor is open: a process that forks to start another program
/// (a test binary starting a server, say) lends its children a copy until they exec, so a store closed just
/// before may look held for a moment (a CI run failed on that).
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Lock `DB.lock` exclusively (an advisory `flock`, released by the kernel if the process dies): a second
/// server on the same database would make the other's cache stale, so it is refused (after [`LOCK_WAIT`]).
fn lock_database(path: &Path) -> StoreResult<std::fs::File> {
    let lock_path = sibling(path, ".lock");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // Owner-only, like the database files beside it (it is empty, but says where they are and who runs them).
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&lock_path).map_err(|e| {
        StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
    })?;
    let waited_until = std::time::Instant::now() + LOCK_WAIT;
    let mut locked = file.try_lock();
    while matches!(locked, Err(std::fs::TryLockError::WouldBlock))
        && std::time::Instant::now() < waited_until
    {
        std::thread::sleep(Duration::from_millis(5));
        locked = file.try_lock();
    }
    match locked {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "{} is in use by another keyvault process (its lock {} is held)",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

#[cfg(test)]
fn open_writer(path: &Path) -> StoreResult<Connection> {
    open_writer_with(path, true)
}

/// The writer's connection; with `buffer_wal`, through the [`walbuf`] VFS (when it could be registered).
fn open_writer_with(path: &Path, buffer_wal: bool) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let opened = match walbuf::name().filter(|_| buffer_wal) {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
        None => Connection::open_with_flags(path, flags),
    };
    let conn = opened
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The writer's pages stay cached between batches (it is the only writer, so they stay valid), up to a
    // deliberately small bound (see WRITER_CACHE_KIB). Grows only as pages are used.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    // Only takes effect on a new database (before its first table), and must precede the switch to WAL.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "cannot put {} in WAL mode (got {mode})",
            path.display()
        )));
    }
    // WAL + FULL: every commit is fsynced before it returns, so acknowledged writes survive a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // What a write removes or replaces (a purged secret's sealed values and wrapped keys, its name and tags) is
    // overwritten with zeros in the pages written, not left in free space where a copy of the file (and the
    // key) would recover it. Copies in older WAL frames last until the log is overwritten.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Checkpoints run on their own thread (checkpoint_loop), not inside a commit; this is only a safety net
    // should that thread fall behind. SQLite's own (`wal_autocheckpoint`) ignores a checkpoint's errors: this
    // one stops on an I/O error, as the checkpointer does (`checkpoint_io_failed`).
    conn.wal_hook(Some(writer_wal_hook));
    Ok(conn)
}

/// After each of the writer's commits: a PASSIVE checkpoint once the WAL holds
/// [`WAL_AUTOCHECKPOINT_PAGES`]. Always `Ok`: the commit is made whatever the checkpoint does.
fn writer_wal_hook(wal: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    if i64::from(pages) >= WAL_AUTOCHECKPOINT_PAGES
        && let Err(e) = wal.checkpoint()
    {
        if is_sync_error(&e) {
            checkpoint_io_failed("a WAL checkpoint", &e);
        }
        tracing::debug!(error = %e, "the writer's WAL checkpoint skipped");
    }
    Ok(())
}

/// Whether a checkpoint failed syncing its files (`SQLITE_IOERR_FSYNC`, the WAL's or the database file's:
/// SQLite does not say which): the failure after which pages it wrote may never reach the disk although it can
/// read them back — also when the file system turned read-only under it (ext4's `errors=remount-ro`: its
/// unwritten pages are lost). A write the kernel refuses at once (a quota, a full disk) fails the pass before
/// it counts any page as copied, and the next pass tries again: no abort for those.
fn is_sync_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_IOERR_FSYNC
    )
}

/// Stops the process: a checkpoint's sync of its files failed. The pages it wrote may never
/// reach the disk while the page cache keeps serving them, and Linux reports a failed write-back once per
/// open file: the next sync would succeed, the checkpoint would count the pages as copied, and the writer's
/// next commit would start the WAL over — on top of the only good copy of writes already acknowledged. Stopped
/// now, the WAL keeps every committed frame and the next start copies them again (what PostgreSQL does on a
/// failed fsync, for the same reason).
fn checkpoint_io_failed(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(
        error = %error,
        "{what} could not sync its files to disk: stopping now, before the WAL can be started over; every \
         acknowledged write is in the WAL, and the next start copies it into the database again (check the disk)"
    );
    std::process::abort()
}

fn open_checkpointer(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// How far below the process's nice value the writer thread runs, when the process may raise a thread's
/// priority (root, or `CAP_SYS_NICE`): 10, about nine times the request threads' share of a core whenever
/// both want one.
const WRITER_NICE_BOOST: i32 = 10;

/// Lets the writer run ahead of the request threads (Linux, when permitted). Every write waits for the
/// single writer's batch, so under a write load the writer is the serial part: when it shares the cores
/// with request threads (and, on one machine, with the clients) at equal priority, the scheduler gives it
/// a fair share at best, and while it waits for a core every request queued behind it waits too (SET at
/// c = 64: 5 of 6 alternating runs faster with it, BENCHMARKS.md session 13). The writer never keeps a core
/// long: it sleeps on its queue when idle, on the disk at each commit, and a batch holds at most
/// [`BATCH_CAP`] writes.
/// Without the permission the writer keeps the process's priority (logged at debug).
fn raise_writer_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        let wanted = (current - WRITER_NICE_BOOST).max(-20);
        match rustix::process::setpriority_process(Some(tid), wanted) {
            Ok(()) => tracing::debug!(
                nice = wanted,
                "the database writer runs at a higher priority"
            ),
            Err(e) => tracing::debug!(
                error = %e,
                "the database writer keeps the process's priority (raising it needs CAP_SYS_NICE)"
            ),
        }
    }
}

/// The checkpointer's connection and what it shares with the writer.
struct Checkpointer {
    conn: Connection,
    /// The database file, synced by the checkpointer before it pauses the writer.
    db_file: std::fs::File,
    gate: Arc<BatchGate>,
    stats: Arc<Stats>,
    /// [`SqliteOptions::wal_rewind_frames`].
    rewind_frames: u32,
}

impl Checkpointer {
    /// One PASSIVE checkpoint: (frames in the WAL when it started, frames copied into the database by its
    /// end, this pass or earlier), or `None` if SQLite refused.
    fn pass(&self) -> Option<(u32, u32)> {
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
        match result {
            // -1 when the database is not in WAL mode (it always is here).
            Ok((log, done)) => {
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                Some((
                    u32::try_from(log).unwrap_or(0),
                    u32::try_from(done).unwrap_or(0),
                ))
            }
            Err(e) if is_sync_error(&e) => checkpoint_io_failed("a WAL checkpoint", &e),
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint skipped");
                None
            }
        }
    }

    /// Copies the rest of a long WAL while the writer keeps committing, then the last few frames with the
    /// writer paused between two batches, so that its next commit starts the log over. `first` is the
    /// turn's first pass.
    fn rewind(&self, first: (u32, u32), stop: &AtomicBool) {
        let (log, mut done) = first;
        // Frames the last pass copied: the frames committed while it (and the sync after it) ran are of the
        // same order.
        let mut copied = log;
        let mut passes = 1;
        // A pass that could not copy every frame it saw was held back by a reader still reading an older
        // state of the database: the log cannot be started over until it ends, so no pause now (the next
        // turn tries again).
        if done < log {
            return;
        }
        loop {
            // SQLite syncs the database file only in a pass that reaches the end of the log: that would be
            // the paused one, with every page copied since the last rewind still to write back. Sync here,
            // while the writer keeps going.
            if let Err(e) = self.db_file.sync_data() {
                checkpoint_io_failed("syncing the database file before a WAL rewind", &e);
            }
            if copied <= REWIND_FINAL_FRAMES {
                break;
            }
            if passes >= REWIND_MAX_PASSES || stop.load(Ordering::SeqCst) {
                return;
            }
            let Some((next_log, next_done)) = self.pass() else {
                return;
            };
            if next_done < next_log {
                return;
            }
            // The log may have been started over in between (then every frame in it is new).
            copied = if next_log >= done {
                next_log - done
            } else {
                next_log
            };
            done = next_done;
            passes += 1;
        }
        let _paused = self.gate.pause();
        self.stats.rewind_pauses.fetch_add(1, Ordering::Relaxed);
        if let Some((log, done)) = self.pass()
            && log > 0
            && done == log
        {
            self.stats.rewinds.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lets the checkpointer pause the writer between two batches, without waiting behind a writer that keeps
/// starting new ones.
#[derive(Default)]
struct BatchGate {
    state: Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    /// The writer is running a batch.
    writing: bool,
    /// The checkpointer is running its paused pass (or waiting for the batch in progress to end).
    paused: bool,
}

impl BatchGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer, before a batch: waits while the checkpointer's paused pass runs. The batch lasts until
    /// the returned guard is dropped (even by a panic, so the checkpointer never waits for a dead writer).
    fn begin_batch(&self) -> GateBatch<'_> {
        let mut state = self.lock();
        while state.paused {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.writing = true;
        GateBatch(self)
    }

    /// The checkpointer: waits for the batch in progress, if any, to end; no batch starts until the
    /// returned guard is dropped.
    fn pause(&self) -> GatePause<'_> {
        let mut state = self.lock();
        state.paused = true;
        while state.writing {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        GatePause(self)
    }
}

struct GateBatch<'g>(&'g BatchGate);

impl Drop for GateBatch<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.writing = false;
        if state.paused {
            self.0.changed.notify_all();
        }
    }
}

struct GatePause<'g>(&'g BatchGate);

impl Drop for GatePause<'_> {
    fn drop(&mut self) {
        self.0.lock().paused = false;
        self.0.changed.notify_all();
    }
}

/// Copy committed WAL pages into the database file every [`CHECKPOINT_EVERY_MS`] (PASSIVE: never blocks the
/// writer or readers), so that commits do not pay for checkpoints. Committed data is already durable in the
/// WAL; a checkpoint only moves it.
///
/// The log itself is started over only by a commit that begins when every frame in it has been copied. Under
/// a sustained write load that never happens by itself — the writer appends while a pass copies — so the
/// WAL would grow until the writer's own checkpoint ran inside a commit ([`writer_wal_hook`]), whose sync of the
/// database file (tens of milliseconds with many pages written) every queued write waited for: SET's p99.9
/// (BENCHMARKS.md, session 15). So once the WAL is past [`SqliteOptions::wal_rewind_frames`], the
/// checkpointer repeats passes while the writer keeps going, each copying what was committed during the
/// last one, syncing the database file after each, and once a pass copied at most [`REWIND_FINAL_FRAMES`],
/// pauses the writer between two batches ([`BatchGate`]), copies the last frames and lets it go: the writer
/// waits for that short pass only (its sync of the database file has little left to write back), and its
/// next commit starts the log over (if no reader still reads from it).
fn checkpoint_loop(checkpointer: Checkpointer, stop: &AtomicBool) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(CHECKPOINT_EVERY_MS);
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(EVERY);
        if let Some((log, done)) = checkpointer.pass()
            && checkpointer.rewind_frames > 0
            && log >= checkpointer.rewind_frames
        {
            checkpointer.rewind((log, done), stop);
        }
    }
}

/// A read-only connection; `mmap_bytes` > 0 maps that much of the file (reads then copy no pages).
fn open_reader(path: &Path, mmap_bytes: i64) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
    if mmap_bytes > 0 {
        conn.pragma_update(None, "mmap_size", mmap_bytes)?;
    }
    Ok(conn)
}

/// The schema version of the existing database at `path` when opening it would upgrade it (older than this
/// build's, not new), read without changing anything; None for a database in this build's schema, a newer one,
/// none at all, or one that cannot be read here (opening it says why).
pub fn schema_to_upgrade(path: &Path) -> Option<i64> {
    if !path.is_file() {
        return None;
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(BUSY_TIMEOUT).ok()?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .ok()?;
    (1..SCHEMA_VERSION).contains(&version).then_some(version)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "the database has schema version {version}, newer than this server supports ({SCHEMA_VERSION}): \
             a newer build has upgraded it, and an upgrade is one way; run that build (or a newer one), or \
             restore a copy taken before the upgrade"
        )));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_V3)?;
    }
    if version < 4 {
        tx.execute_batch(SCHEMA_V4)?;
    }
    if version < 5 {
        tx.execute_batch(SCHEMA_V5)?;
    }
    if version < 6 {
        tx.execute_batch(SCHEMA_V6)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    if (1..5).contains(&version) {
        // Version 5 copied the whole `versions` table through the WAL (330 MiB for a million versions): copy it
        // into the database now and give the WAL's disk space back. Nothing else has the database open yet.
        let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        match done {
            // Nothing may start the log over now: the start stops here, the WAL intact.
            Err(e) if is_sync_error(&e) => {
                return Err(StoreError::Unavailable(format!(
                    "the WAL checkpoint after the schema upgrade could not sync its files: {e}"
                )));
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint after the schema upgrade failed"),
            Ok(_) => {}
        }
    }
    if (1..SCHEMA_VERSION).contains(&version) {
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "upgraded the SQLite schema"
        );
    }
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    /// SQLite's messages name tables, columns and constraints, never bound values, so no sealed bytes leak.
    fn from(e: rusqlite::Error) -> Self {
        let transient = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _) if matches!(
                f.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::ReadOnly
            )
        );
        let damaged = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        );
        if transient {
            StoreError::Unavailable(e.to_string())
        } else if damaged {
            StoreError::Internal(format!("{DAMAGED}{e}"))
        } else {
            StoreError::Internal(e.to_string())
        }
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

// ---------------------------------------------------------------------------------------------------------
// Read pool

struct ReadPool {
    path: PathBuf,
    mmap_bytes: i64,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection that may be open at once.
    permits: Arc<Semaphore>,
    closed: AtomicBool,
}

impl ReadPool {
    fn new(path: PathBuf, mmap_bytes: i64) -> Self {
        ReadPool {
            path,
            mmap_bytes,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX_READERS)),
            closed: AtomicBool::new(false),
        }
    }

    fn checkout(&self) -> StoreResult<Connection> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path, self.mmap_bytes),
        }
    }

    fn checkin(&self, conn: Connection) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let surplus = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < max_idle_readers() {
                idle.push(conn);
                None
            } else {
                Some(conn)
            }
        };
        // A surplus connection is closed outside the lock.
        drop(surplus);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The writer: group commit

struct Stats {
    commits: AtomicU64,
    writes: AtomicU64,
    rewinds: AtomicU64,
    rewind_pauses: AtomicU64,
    /// PASSIVE checkpoint passes run.
    checkpoints: AtomicU64,
    /// Writes per committed batch.
    batch_sizes: crate::metrics::Histogram,
    /// Time to run and commit a batch (the WAL's sync included).
    commit_seconds: crate::metrics::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            rewinds: AtomicU64::new(0),
            rewind_pauses: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            batch_sizes: crate::metrics::Histogram::batch_sizes(),
            commit_seconds: crate::metrics::Histogram::seconds(),
        }
    }
}

enum Msg {
    Job(Box<dyn WriteJob>),
    Close(oneshot::Sender<()>),
}

/// Why a whole batch failed; turned into an error for each caller.
#[derive(Clone)]
struct BatchFailure {
    unavailable: bool,
    message: String,
}

impl BatchFailure {
    fn from_db(e: rusqlite::Error) -> Self {
        match StoreError::from(e) {
            StoreError::Unavailable(message) => BatchFailure {
                unavailable: true,
                message,
            },
            other => BatchFailure {
                unavailable: false,
                message: other.to_string(),
            },
        }
    }

    fn to_error(&self) -> StoreError {
        if self.unavailable {
            StoreError::Unavailable(self.message.clone())
        } else {
            StoreError::Internal(self.message.clone())
        }
    }
}

/// One queued write: run inside the batch's transaction, answered after the commit.
trait WriteJob: Send {
    /// Run the request; true if it succeeded (its savepoint is kept), false if it is to be rolled back.
    fn run(&mut self, tx: &Tx<'_>) -> bool;
    /// Answer the caller once the batch has committed (`None`) or failed.
    fn finish(self: Box<Self>, failure: Option<&BatchFailure>);
}

struct Job<T, F> {
    f: Option<F>,
    out: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    /// Dropped (un-hiding the name in the cache) after the batch committed or failed, before the answer.
    mark: WriteMark,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, tx: &Tx<'_>) -> bool {
        let Some(f) = self.f.take() else { return false };
        let out = f(tx);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<&BatchFailure>) {
        let Job {
            out,
            reply,
            mut mark,
            ..
        } = *self;
        if matches!((&out, failure), (Some(Ok(_)), None)) {
            mark.committed();
        }
        drop(mark);
        let answer = match (out, failure) {
            // A request that failed on its own keeps its own error (it was rolled back either way).
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), None) => Ok(v),
            (_, Some(f)) => Err(f.to_error()),
            (None, None) => Err(StoreError::Internal("the write was not run".into())),
        };
        // The caller may have gone away (cancelled); the write stands regardless.
        let _ = reply.send(answer);
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Msg>, stats: &Stats, gate: &BatchGate) {
    let mut acks = Vec::new();
    // Prepared before the store opened (see `SqliteStore::open_with`), so this fails only if SQLite does.
    let tx = match Tx::new(&conn) {
        Ok(tx) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot prepare the writer's statements");
            None
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(job) => batch.push(job),
                Msg::Close(ack) => {
                    // Refuse new requests; what is already queued is still drained below.
                    rx.close();
                    acks.push(ack);
                }
            }
            if batch.len() < BATCH_CAP {
                next = rx.try_recv().ok();
            }
        }
        match (&tx, batch.is_empty()) {
            (_, true) => {}
            (Some(tx), false) => {
                // The checkpointer may copy the WAL's last frames between two batches (`checkpoint_loop`).
                let _batch = gate.begin_batch();
                run_batch(tx, batch, stats);
            }
            (None, false) => {
                let failure = BatchFailure {
                    unavailable: false,
                    message: "the database writer could not prepare its statements".into(),
                };
                for job in batch {
                    job.finish(Some(&failure));
                }
            }
        }
    }
    drop(tx);
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the database writer connection failed");
    }
    for ack in acks {
        let _ = ack.send(());
    }
}

fn run_batch(tx: &Tx<'_>, mut batch: Vec<Box<dyn WriteJob>>, stats: &Stats) {
    let started = std::time::Instant::now();
    let failure = execute_batch(tx, &mut batch);
    match &failure {
        None => {
            stats.commit_seconds.observe_duration(started.elapsed());
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats.batch_sizes.observe(batch.len() as u64);
        }
        Some(f) => {
            tracing::error!(error = %f.message, writes = batch.len(), "a database write batch failed")
        }
    }
    for job in batch {
        job.finish(failure.as_ref());
    }
}

/// What a write request runs on: the writer's connection (it dereferences to it), with the statements of
/// every batch and every set prepared once. They bypass rusqlite's statement cache, which hashes a
/// statement's text twice per use (to find it, and to put it back): about 2k instructions each time, an
/// eighth of the writer's instructions per set (`writer_cost_direct` under callgrind, BENCHMARKS.md
/// session 11).
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
    begin: RefCell<Statement<'c>>,
    savepoint: RefCell<Statement<'c>>,
    release: RefCell<Statement<'c>>,
    commit: RefCell<Statement<'c>>,
    insert_version: RefCell<Statement<'c>>,
    point_name: RefCell<Statement<'c>>,
}

impl<'c> Tx<'c> {
    pub(crate) fn new(conn: &'c Connection) -> rusqlite::Result<Tx<'c>> {
        let prepare = |sql: &str| conn.prepare(sql).map(RefCell::new);
        Ok(Tx {
            conn,
            begin: prepare("BEGIN IMMEDIATE")?,
            savepoint: prepare("SAVEPOINT op")?,
            release: prepare("RELEASE op")?,
            commit: prepare("COMMIT")?,
            insert_version: prepare(SQL_INSERT_VERSION)?,
            point_name: prepare(SQL_POINT_NAME)?,
        })
    }

    /// Runs a prepared statement without parameters or results.
    fn exec(stmt: &RefCell<Statement<'c>>) -> rusqlite::Result<()> {
        stmt.borrow_mut().execute([]).map(drop)
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// Runs a statement without results through the statement cache (no parsing per call).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn execute_batch(tx: &Tx<'_>, batch: &mut [Box<dyn WriteJob>]) -> Option<BatchFailure> {
    let conn = tx.conn;
    if let Err(e) = Tx::exec(&tx.begin) {
        return Some(BatchFailure::from_db(e));
    }
    for job in batch.iter_mut() {
        let result = Tx::exec(&tx.savepoint).and_then(|()| {
            if job.run(tx) {
                Tx::exec(&tx.release)
            } else {
                exec_cached(conn, "ROLLBACK TO op").and_then(|()| Tx::exec(&tx.release))
            }
        });
        if let Err(e) = result {
            rollback(conn);
            return Some(BatchFailure::from_db(e));
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (e.g. an I/O error): nothing of this batch stands.
            return Some(BatchFailure {
                unavailable: true,
                message: "the write transaction was aborted".into(),
            });
        }
    }
    match Tx::exec(&tx.commit) {
        Ok(()) => None,
        Err(e) => {
            rollback(conn);
            Some(BatchFailure::from_db(e))
        }
    }
}

fn rollback(conn: &Connection) {
    if conn.is_autocommit() {
        return; // SQLite already rolled the transaction back.
    }
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::error!(error = %e, "rolling back a failed write batch failed");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Queries (constants, so tests can check their plans)

/// The version columns, in the order [`version_row`] reads them after the display name.
macro_rules! vcols {
    () => {
        "v.version, v.sealed, v.content_type, v.tags, v.enabled, v.nbf, v.exp, v.created, v.updated"
    };
}

/// [`vcols`] for listings: an empty blob where the sealed value would be (listings never carry values, and
/// do not read them).
macro_rules! listed_vcols {
    () => {
        "v.version, X'', v.content_type, v.tags, v.enabled, v.nbf, v.exp, v.created, v.updated"
    };
}

/// Live names after `?2` up to `?3` in key order, with their latest versions, reading `names` as `$names` says.
macro_rules! list_live {
    ($names:literal) => {
        concat!(
            "SELECT n.display_name, ",
            listed_vcols!(),
            " FROM ",
            $names,
            " JOIN versions AS v ON v.seq = n.latest_seq AND v.vault = n.vault AND v.name_key = n.name_key
             WHERE n.vault = ?1 AND n.deleted_on IS NULL AND n.name_key > ?2 AND n.name_key <= ?3
             ORDER BY n.name_key"
        )
    };
}
/// Over the primary key, skipping deleted names.
const SQL_LIST_LATEST: &str = list_live!("names AS n");
/// Over the index of live names (a table lookup per name).
const SQL_LIST_LIVE: &str = list_live!("names AS n INDEXED BY names_live");
const SQL_LIST_DELETED: &str = concat!(
    "SELECT n.display_name, ",
    listed_vcols!(),
    ", n.deleted_on, n.scheduled_purge FROM names AS n INDEXED BY names_deleted
     JOIN versions AS v ON v.seq = n.latest_seq AND v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = ?1 AND n.deleted_on IS NOT NULL AND n.name_key > ?2 AND n.name_key <= ?3
     ORDER BY n.name_key"
);
const SQL_FIND_LATEST: &str = concat!(
    "SELECT v.seq, n.display_name, ",
    vcols!(),
    " FROM names AS n JOIN versions AS v ON v.seq = n.latest_seq AND v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = ?1 AND n.name_key = ?2 AND n.deleted_on IS NULL"
);
const SQL_FIND_VERSION: &str = concat!(
    "SELECT v.seq, n.display_name, ",
    vcols!(),
    ", v.seq = n.latest_seq FROM names AS n JOIN versions AS v ON v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = ?1 AND n.name_key = ?2 AND n.deleted_on IS NULL AND v.version = ?3"
);
const SQL_FIND_DELETED: &str = concat!(
    "SELECT n.display_name, ",
    vcols!(),
    ", n.deleted_on, n.scheduled_purge FROM names AS n JOIN versions AS v ON v.seq = n.latest_seq AND v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = ?1 AND n.name_key = ?2 AND n.deleted_on IS NOT NULL"
);
const SQL_VERSIONS_OF_LIVE: &str = concat!(
    "SELECT n.display_name, ",
    listed_vcols!(),
    " FROM names AS n JOIN versions AS v ON v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = ?1 AND n.name_key = ?2 AND n.deleted_on IS NULL AND v.version > ?3 ORDER BY v.version"
);
const SQL_ALL_VERSIONS_OF_LIVE: &str = concat!(
    "SELECT v.seq, n.display_name, ",
    vcols!(),
    " FROM names AS n JOIN versions AS v ON v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = ?1 AND n.name_key = ?2 AND n.deleted_on IS NULL LIMIT ?3"
);
const SQL_INSERT_VERSION: &str = "INSERT INTO versions
    (vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp, created, updated)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
/// Create a name, or point a live one at its new latest version (a deleted one is left alone: 0 rows).
const SQL_POINT_NAME: &str =
    "INSERT INTO names (vault, name_key, display_name, latest_seq) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (vault, name_key) DO UPDATE SET display_name = excluded.display_name, latest_seq = excluded.latest_seq
     WHERE names.deleted_on IS NULL";
const SQL_PURGE_DUE: &str = "SELECT vault, name_key FROM names INDEXED BY names_purge
     WHERE scheduled_purge IS NOT NULL AND scheduled_purge <= ?1";

// ---------------------------------------------------------------------------------------------------------
// Rows

/// Columns read by [`version_row`] after the display name.
const NCOLS: usize = 10;

/// A [`VersionRow`] from the display name at `at` followed by [`VCOLS`].
fn version_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<VersionRow> {
    let tags = super::tags_from_json(r.get(at + 4)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at + 4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(VersionRow {
        name: r.get(at)?,
        version: r.get(at + 1)?,
        sealed: r.get(at + 2)?,
        content_type: r.get(at + 3)?,
        tags,
        enabled: r.get(at + 5)?,
        nbf: r.get(at + 6)?,
        exp: r.get(at + 7)?,
        created: r.get(at + 8)?,
        updated: r.get(at + 9)?,
    })
}

fn deleted_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeletedRow> {
    Ok(DeletedRow {
        latest: version_row(r, 0)?,
        deleted_on: r.get(NCOLS)?,
        scheduled_purge: r.get(NCOLS + 1)?,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Operations (each runs on one connection: reads on a reader, writes inside the writer's savepoint)

/// A live name's version (its latest if `version` is `None`): its `seq`, the row, and whether it is the name's
/// latest version.
fn find_live(
    c: &Connection,
    vault: &str,
    key: &str,
    version: Option<&str>,
) -> StoreResult<Option<(i64, VersionRow, bool)>> {
    let found = match version {
        None => c
            .prepare_cached(SQL_FIND_LATEST)?
            .query_row(params![vault, key], |r| {
                Ok((r.get(0)?, version_row(r, 1)?, true))
            })
            .optional()?,
        Some(version) => c
            .prepare_cached(SQL_FIND_VERSION)?
            .query_row(params![vault, key, version], |r| {
                Ok((r.get(0)?, version_row(r, 1)?, r.get(1 + NCOLS)?))
            })
            .optional()?,
    };
    Ok(found)
}

/// SQLite virtual-machine steps a page may take over the primary key before it switches to `names_live`: a
/// fixed allowance plus this much per row asked for. A page among live names takes about 17 steps a row;
/// skipping a deleted name takes a few, so a page skips a couple of hundred deleted names at most this way.
const LIST_SCAN_STEPS_PER_ROW: usize = 40;
const LIST_SCAN_STEPS_BASE: usize = 1_000;

/// A page of live names. Most vaults hold few soft-deleted names, so the page is read in key order from the
/// primary key (which holds every column: no lookup per name), skipping deleted names — on a budget of
/// virtual-machine steps (SQLite's progress handler interrupts the statement when it is spent). Where deleted
/// names crowd the key order (vaults that create and delete many secrets keep them for the whole retention
/// period), the rest of the page comes from the index of live names, one table lookup per name. A page never
/// wades through more than a couple of hundred deleted names, however many there are.
fn list_latest(
    c: &Connection,
    vault: &str,
    (after, until): (&str, &str),
    limit: usize,
) -> StoreResult<Vec<VersionRow>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut page = Vec::with_capacity(limit);
    let budget = LIST_SCAN_STEPS_BASE.saturating_add(LIST_SCAN_STEPS_PER_ROW.saturating_mul(limit));
    c.progress_handler(i32::try_from(budget).unwrap_or(i32::MAX), Some(|| true));
    let scanned = (|| -> rusqlite::Result<()> {
        let mut stmt = c.prepare_cached(SQL_LIST_LATEST)?;
        let mut rows = stmt.query(params![vault, after, until])?;
        while page.len() < limit {
            match rows.next()? {
                Some(r) => page.push(version_row(r, 0)?),
                None => break,
            }
        }
        Ok(())
    })();
    c.progress_handler(0, None::<fn() -> bool>);
    match scanned {
        Ok(()) => return Ok(page),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::OperationInterrupted => {}
        Err(e) => return Err(e.into()),
    }
    // The budget ran out among deleted names: continue after the last live name found.
    let from = page
        .last()
        .map_or_else(|| after.to_owned(), |r| name_key(&r.name));
    let mut stmt = c.prepare_cached(SQL_LIST_LIVE)?;
    let rest = stmt.query_map(params![vault, from, until], |r| version_row(r, 0))?;
    for row in rest.take(limit - page.len()) {
        page.push(row?);
    }
    Ok(page)
}

fn list_deleted(
    c: &Connection,
    vault: &str,
    (after, until): (&str, &str),
    limit: usize,
) -> StoreResult<Vec<DeletedRow>> {
    let mut stmt = c.prepare_cached(SQL_LIST_DELETED)?;
    let rows = stmt.query_map(params![vault, after, until], deleted_row)?;
    Ok(rows.take(limit).collect::<Result<Vec<_>, _>>()?)
}

fn find_deleted(c: &Connection, vault: &str, key: &str) -> StoreResult<Option<DeletedRow>> {
    Ok(c.prepare_cached(SQL_FIND_DELETED)?
        .query_row(params![vault, key], deleted_row)
        .optional()?)
}

/// Versions of a live name with a version id after `after`, in version-id order, at most `limit`.
fn versions_of_live(
    c: &Connection,
    vault: &str,
    key: &str,
    after: &str,
    limit: usize,
) -> StoreResult<Vec<VersionRow>> {
    let mut stmt = c.prepare_cached(SQL_VERSIONS_OF_LIVE)?;
    let rows = stmt.query_map(params![vault, key, after], |r| version_row(r, 0))?;
    Ok(rows.take(limit).collect::<Result<Vec<_>, _>>()?)
}

/// Insert one version row; a version id the name already has → Err(Exists).
fn insert_version(c: &Tx<'_>, vault: &str, key: &str, row: &VersionRow) -> StoreResult<i64> {
    let mut stmt = c.insert_version.borrow_mut();
    let inserted = stmt.execute(params![
        vault,
        key,
        row.version,
        row.sealed,
        row.content_type,
        tags_json(&row.tags)?,
        row.enabled,
        row.nbf,
        row.exp,
        row.created,
        row.updated
    ]);
    // The statement stays prepared: let it not keep a copy of the (sealed) value until the next set.
    stmt.clear_bindings();
    drop(stmt);
    match inserted {
        Ok(_) => Ok(c.last_insert_rowid()),
        Err(e) if is_constraint(&e) => Err(StoreError::Exists),
        Err(e) => Err(e.into()),
    }
}

/// Is the name deleted (Some(true)), live (Some(false)) or absent (None)?
fn name_state(c: &Connection, vault: &str, key: &str) -> StoreResult<Option<bool>> {
    Ok(c.prepare_cached(
        "SELECT deleted_on IS NOT NULL FROM names WHERE vault = ?1 AND name_key = ?2",
    )?
    .query_row(params![vault, key], |r| r.get(0))
    .optional()?)
}

/// Runs inside its own savepoint: on `Err`, the version inserted first is rolled back with it.
fn put(c: &Tx<'_>, vault: &str, row: &VersionRow) -> StoreResult<()> {
    let key = name_key(&row.name);
    // The common case takes two statements: insert the version, then point the (live) name at it. The
    // name's state is only looked up when something is in the way, to give the same answer as checking
    // it first would: a deleted name is `Deleted` whatever the version.
    let seq = match insert_version(c, vault, &key, row) {
        Ok(seq) => seq,
        Err(StoreError::Exists) if name_state(c, vault, &key)? == Some(true) => {
            return Err(StoreError::Deleted);
        }
        Err(e) => return Err(e),
    };
    let changed = c
        .point_name
        .borrow_mut()
        .execute(params![vault, key, row.name, seq])?;
    if changed == 0 {
        return Err(StoreError::Deleted);
    }
    Ok(())
}

fn update(
    c: &Connection,
    vault: &str,
    key: &str,
    version: Option<&str>,
    patch: VersionPatch,
) -> StoreResult<Option<VersionRow>> {
    let Some((seq, mut row, _)) = find_live(c, vault, key, version)? else {
        return Ok(None);
    };
    patch.apply_to(&mut row);
    c.prepare_cached(
        "UPDATE versions SET content_type = ?2, tags = ?3, enabled = ?4, nbf = ?5, exp = ?6, updated = ?7 WHERE seq = ?1",
    )?
    .execute(params![seq, row.content_type, tags_json(&row.tags)?, row.enabled, row.nbf, row.exp, row.updated])?;
    Ok(Some(row))
}

fn purge_deleted(c: &Connection, vault: &str, key: &str) -> StoreResult<bool> {
    Ok(purge_deleted_versions(c, vault, key)?.is_some())
}

/// [`purge_deleted`], saying how many versions went (None: the name was not deleted).
fn purge_deleted_versions(c: &Connection, vault: &str, key: &str) -> StoreResult<Option<usize>> {
    let removed = c
        .prepare_cached(
            "DELETE FROM names WHERE vault = ?1 AND name_key = ?2 AND deleted_on IS NOT NULL",
        )?
        .execute(params![vault, key])?;
    if removed == 0 {
        return Ok(None);
    }
    let versions = c
        .prepare_cached("DELETE FROM versions WHERE vault = ?1 AND name_key = ?2")?
        .execute(params![vault, key])?;
    Ok(Some(versions))
}

/// Purge deleted names due at `now`: at most `chunk` of them, and no more once `versions` versions have
/// gone. Returns how many names, and whether it stopped at a bound (more may be due).
fn purge_expired_chunk(
    c: &Connection,
    now: i64,
    chunk: usize,
    versions: usize,
) -> StoreResult<(usize, bool)> {
    let due: Vec<(String, String)> = {
        let mut stmt = c.prepare_cached(SQL_PURGE_DUE)?;
        let rows = stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.take(chunk).collect::<Result<_, _>>()?
    };
    let (mut purged, mut removed) = (0, 0);
    // Only progress asks for more (a due name that could not be purged must not loop).
    let mut more = false;
    for (vault, key) in &due {
        if let Some(n) = purge_deleted_versions(c, vault, key)? {
            purged += 1;
            removed += n;
        }
        if removed >= versions {
            more = true;
            break;
        }
    }
    more |= purged == chunk;
    if purged > 0 {
        tracing::debug!(
            purged,
            versions = removed,
            "purged deleted secrets past their retention"
        );
    }
    Ok((purged, more))
}

fn restore(c: &Tx<'_>, vault: &str, versions: &[VersionRow]) -> StoreResult<()> {
    let (latest, key) = super::check_restore(versions)?;
    if name_state(c, vault, &key)?.is_some() {
        return Err(StoreError::Exists);
    }
    let mut latest_seq = 0;
    for row in versions {
        latest_seq = insert_version(c, vault, &key, row)?;
    }
    c.prepare_cached(
        "INSERT INTO names (vault, name_key, display_name, latest_seq) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![vault, key, latest.name, latest_seq])?;
    Ok(())
}

pub mod snapshot;
#[cfg(test)]
mod tests;
mod walbuf;
