//! Group commit for sets, and shared statements for reads: concurrent
//! [`put_version`](crate::store::SecretStore::put_version) calls on one node share a statement, a transaction
//! and its commit; concurrent [`get_version`](crate::store::SecretStore::get_version) calls share a query.
//!
//! - An operation that finds nothing running or waiting runs at once, by its caller, with its one-row
//!   statement. Otherwise it joins its kind's queue, drained by batch tasks, each with its own pooled
//!   connection: a batch takes what waits when it starts (up to [`MAX_BATCH`]), so the operations that arrive
//!   while one runs share the next. PostgreSQL's cost of a statement, a round trip and (for sets) a commit is then paid once per batch
//!   instead of once per operation.
//! - One task runs while it keeps up: that makes batches largest and PostgreSQL's work per operation
//!   smallest. When the oldest waiting operation has waited [`STALL`] (a batch waits for a row lock another
//!   session holds, or for a slow commit), another task starts, up to [`MAX_IN_FLIGHT`]; an extra task stops
//!   once the queue no longer falls behind.
//! - Sets: a name is in one running batch at most. A later set of it waits for the next batch (until the
//!   earlier one is acknowledged both are in flight, so either order is a valid outcome), and a name whose row
//!   is locked holds up its own batch, not the ones after it. A batch is one autocommit statement
//!   ([`SQL_PUT_MANY`]): its sets commit together or not at all, and none is acknowledged before the commit.
//!   It locks its names' rows in byte order, so batches (from any node) cannot deadlock each other; the name
//!   rows are what serializes sets of one name across nodes, as with single sets. A set to a deleted name is
//!   answered `Deleted` without failing the others (its row is not returned). If the statement fails because
//!   of one set (a version id its name already has) or is rolled back (a deadlock with some other write),
//!   each set of the batch runs again alone and gets its own answer.
//! - Reads ([`SQL_GET_MANY`]): one query looks up every requested name (its latest version, or the version
//!   asked for). It starts after each of its reads arrived, so each sees every write acknowledged before it.
//! - A queued operation whose caller went away before its batch started is dropped: a set is then never
//!   written.

use crate::metrics::text::HistogramSnapshot;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::pool::{Conn, Pool};
use super::{
    OPERATION_TIMEOUT, SQL_GET_MANY, find_live, is_unique_violation, put, read_on_for, run_on_for,
    version_row,
};
use crate::store::{StoreError, StoreResult, VersionRow, tags_json};

/// Operations in one batch at most.
pub const MAX_BATCH: usize = 128;
/// Batches of one kind a node runs at once at most (never more than its pool's connections). One runs while
/// it keeps up, which makes batches largest and PostgreSQL's work per operation smallest; another starts only
/// when the operations waiting have waited [`STALL`] (a batch waiting for a row lock another session holds,
/// a slow commit).
pub const MAX_IN_FLIGHT: usize = 4;
/// How long the oldest waiting operation may wait before the running batches count as stalled.
pub const STALL: Duration = Duration::from_millis(20);
/// How long an operation waits in the queue for a batch to take it; one still queued then is taken out and
/// answered `Unavailable` (never written). Once a batch has taken it, it waits for that batch's answer,
/// which the batch's own bound ([`Work::LIMIT`]) makes come.
const ANSWER_TIMEOUT: Duration = OPERATION_TIMEOUT.saturating_mul(2);
/// A batch of sets that failed because of one of them writes each alone (see [`write_sets`]): those not
/// started this long after the batch began are answered `Unavailable` unwritten. (Each alone may wait
/// `lock_timeout` for a row another session holds: a batch with several such names would otherwise run on
/// for as many times that.)
const FALLBACK_STARTS_WITHIN: Duration = OPERATION_TIMEOUT;

/// Many sets in one statement: the arrays hold one set each, at the same index (the parameters of
/// [`super::SQL_PUT`], each as an array). Names are created, or locked and pointed at their new versions
/// unless deleted, in byte order; then a version is inserted for each name that was (drawing its `seq` while
/// the name's row is locked). The (vault, name key) of each set that was done comes back. `$13` is the sets'
/// deadline ([`super::set_deadline_ms`]).
pub(super) const SQL_PUT_MANY: &str = concat!(
    r#"WITH i AS (
         SELECT vault COLLATE "C" AS vault, name_key COLLATE "C" AS name_key, version, sealed,
                content_type, tags, enabled, nbf, exp, created, updated, display_name
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[],
                     $7::boolean[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[])
              AS u(vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp, created,
                   updated, display_name)),
     n AS (
         INSERT INTO kv_names (vault, name_key, display_name, latest_version)
         SELECT vault, name_key, display_name, version FROM i
         "#,
    before_deadline!(),
    r#"
         ORDER BY vault, name_key
         ON CONFLICT (vault, name_key) DO UPDATE
             SET display_name = EXCLUDED.display_name,
                 latest_version = EXCLUDED.latest_version
             WHERE kv_names.deleted_on IS NULL
         RETURNING vault, name_key)
     INSERT INTO kv_versions
         (vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp, created, updated)
     SELECT i.vault, i.name_key, i.version, i.sealed, i.content_type, i.tags, i.enabled, i.nbf, i.exp,
            i.created, i.updated
     FROM i JOIN n ON n.vault = i.vault AND n.name_key = i.name_key
     ORDER BY i.vault, i.name_key
     RETURNING vault, name_key"#
);

/// Work that concurrent callers can share a statement for.
pub trait Work: Sized + Send + Sync + 'static {
    /// What each caller gets back.
    type Answer: Send + 'static;
    /// The (vault, name key) this operation holds while it runs, if operations of one name must not share a
    /// batch nor run in two batches at once.
    fn exclusive_name(&self) -> Option<(&str, &str)>;
    /// How long a batch of this work may run on its connection before this side gives up on it: longer than
    /// any statement it can still start may take in the database ([`super::STATEMENT_LIMIT`]), so that an
    /// operation answered `Unavailable` for it was not done.
    const LIMIT: Duration;
    /// Whether this work only reads: then a batch whose pooled connection the database closed under it runs
    /// once more on another ([`super::read_on_for`]); a write never does (its first try may have committed).
    const READ_ONLY: bool;
    /// Run `batch` on `conn`: each operation's answer, in order; Err when the whole batch failed.
    fn run(
        conn: &mut Conn,
        batch: &[Self],
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<Self::Answer>>>> + Send;
}

/// One operation waiting for (or in) a batch.
struct Job<W: Work> {
    /// Unique within its batcher: how a caller whose wait ran out finds its job still queued.
    id: u64,
    work: W,
    /// Of [`Work::exclusive_name`], with the batcher's hasher.
    name: Option<u64>,
    queued: Instant,
    answer: oneshot::Sender<StoreResult<W::Answer>>,
}

struct Queue<W: Work> {
    waiting: VecDeque<Job<W>>,
    /// Batch tasks running (each takes batches until the queue is empty or another task keeps up).
    running: usize,
    /// The exclusive names ([`Job::name`]) in the running batches. (Two names with one hash only wait for each
    /// other.)
    writing: HashSet<u64>,
}

impl<W: Work> Queue<W> {
    /// Whether the operation waiting longest has waited [`STALL`] or more.
    fn behind(&self) -> bool {
        self.waiting
            .front()
            .is_some_and(|job| job.queued.elapsed() >= STALL)
    }
}

/// A queue of operations and the batches that drain it. See the module documentation.
pub struct Batcher<W: Work> {
    pool: Arc<Pool>,
    max_in_flight: usize,
    hasher: RandomState,
    queue: Mutex<Queue<W>>,
    /// Batches of more than one operation run so far, for tests and diagnostics.
    batches: AtomicU64,
    /// The next [`Job::id`].
    next_id: AtomicU64,
    /// Operations per batch that ran (a batch of one included), and the batches' times (for metrics).
    sizes: crate::metrics::Histogram,
    durations: crate::metrics::Histogram,
}

impl<W: Work> Batcher<W> {
    /// A batcher over `pool`, running at most `max_in_flight` batches at once.
    pub fn new(pool: Arc<Pool>, max_in_flight: usize) -> Arc<Batcher<W>> {
        Arc::new(Batcher {
            pool,
            max_in_flight: max_in_flight.max(1),
            hasher: RandomState::new(),
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                running: 0,
                writing: HashSet::new(),
            }),
            batches: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            sizes: crate::metrics::Histogram::batch_sizes(),
            durations: crate::metrics::Histogram::seconds(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<W>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Batches of more than one operation so far.
    pub fn batches_run(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Operations per batch and the batches' times, for batches that ran to their end (a batch of one
    /// included).
    pub fn metrics(&self) -> (HistogramSnapshot, HistogramSnapshot) {
        (self.sizes.snapshot(), self.durations.snapshot())
    }

    fn ran(&self, operations: usize, started: Instant) {
        self.sizes.observe(operations as u64);
        self.durations.observe_duration(started.elapsed());
    }

    /// Do `work` in the next batch that can take it; answers once that batch is done (for sets: committed).
    pub async fn submit(self: &Arc<Self>, work: W) -> StoreResult<W::Answer> {
        let name = work.exclusive_name().map(|n| self.hasher.hash_one(n));
        let alone = {
            let mut queue = self.lock();
            let alone = queue.running == 0 && queue.waiting.is_empty();
            if alone {
                queue.running = 1;
                queue.writing.extend(name);
            }
            alone
        };
        if alone {
            // Nothing runs or waits: run it here, as a batch of one, without a task's hand-offs; what arrives
            // meanwhile queues, and a task takes it when this ends.
            let _turn = Alone {
                batcher: self,
                name,
            };
            let started = Instant::now();
            let mut answers = run_batch(&self.pool, std::slice::from_ref(&work)).await?;
            self.ran(1, started);
            return answers.pop().unwrap_or_else(|| {
                Err(StoreError::Internal("a batch of one had no answer".into()))
            });
        }
        let (answer, mut answered) = oneshot::channel();
        let queued = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            name,
            work,
            queued,
            answer,
        };
        self.lock().waiting.push_back(job);
        self.start_if_needed();
        loop {
            match tokio::time::timeout(STALL, &mut answered).await {
                Ok(Ok(answer)) => return answer,
                Ok(Err(_)) => {
                    return Err(StoreError::Unavailable(
                        "the operation was interrupted (the server is stopping)".into(),
                    ));
                }
                Err(_) if queued.elapsed() >= ANSWER_TIMEOUT => {
                    // Still queued: taken out, never written. Taken by a batch: its answer comes.
                    let mut queue = self.lock();
                    if let Some(at) = queue.waiting.iter().position(|job| job.id == id) {
                        queue.waiting.remove(at);
                        return Err(StoreError::Unavailable(format!(
                            "no database connection took the operation within {ANSWER_TIMEOUT:?}"
                        )));
                    }
                }
                // Still waiting: if the batches ahead are stalled, another may take this operation.
                Err(_) => self.start_if_needed(),
            }
        }
    }

    /// Start a batch task if operations wait and none runs, or if the running ones have fallen [`STALL`]
    /// behind and fewer than `max_in_flight` run.
    fn start_if_needed(self: &Arc<Self>) {
        {
            let mut queue = self.lock();
            let start = !queue.waiting.is_empty()
                && (queue.running == 0 || (queue.running < self.max_in_flight && queue.behind()));
            if !start {
                return;
            }
            queue.running += 1;
        }
        let mut task = Running {
            batcher: Arc::clone(self),
            counted: true,
            names: Vec::new(),
        };
        tokio::spawn(async move {
            let batcher = Arc::clone(&task.batcher);
            while let Some((works, answers)) = batcher.next_batch(&mut task) {
                batcher.run(works, answers).await;
            }
        });
    }

    /// The next batch for `task`, once its previous batch's names are released: waiting operations in
    /// arrival order (one per exclusive name, and none of a name another batch holds), at
    /// most [`MAX_BATCH`]; operations whose caller went away are dropped. None when there is nothing to take,
    /// or when another task runs and keeps up: then this task stops counting as running, in the same critical
    /// section, so that an operation arriving next starts a task if it needs one.
    #[allow(clippy::type_complexity)]
    fn next_batch(
        &self,
        task: &mut Running<W>,
    ) -> Option<(Vec<W>, Vec<oneshot::Sender<StoreResult<W::Answer>>>)> {
        let mut queue = self.lock();
        for name in task.names.drain(..) {
            queue.writing.remove(&name);
        }
        let mut works = Vec::new();
        let mut answers = Vec::new();
        if queue.running == 1 || queue.behind() {
            let mut later = VecDeque::new();
            while let Some(job) = queue.waiting.pop_front() {
                if job.answer.is_closed() {
                    continue;
                }
                if works.len() == MAX_BATCH {
                    later.push_back(job);
                    later.append(&mut queue.waiting);
                    break;
                }
                if let Some(name) = job.name {
                    if !queue.writing.insert(name) {
                        later.push_back(job);
                        continue;
                    }
                    task.names.push(name);
                }
                works.push(job.work);
                answers.push(job.answer);
            }
            queue.waiting = later;
        }
        if works.is_empty() {
            queue.running -= 1;
            task.counted = false;
            return None;
        }
        Some((works, answers))
    }

    /// Run one batch and answer its operations.
    async fn run(&self, works: Vec<W>, answers: Vec<oneshot::Sender<StoreResult<W::Answer>>>) {
        let started = Instant::now();
        let results = run_batch(&self.pool, &works).await;
        if results.is_ok() {
            self.ran(works.len(), started);
        }
        if works.len() > 1 {
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
        match results {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Run `works` as one batch on a pooled connection, bounded by [`Work::LIMIT`].
async fn run_batch<W: Work>(pool: &Pool, works: &[W]) -> StoreResult<Vec<StoreResult<W::Answer>>> {
    if W::READ_ONLY {
        read_on_for(pool, W::LIMIT, || async |c| W::run(c, works).await).await
    } else {
        run_on_for(pool, W::LIMIT, async |c| W::run(c, works).await).await
    }
}

/// An operation run by its own caller (see [`Batcher::submit`]): counted as running, and holding its name,
/// until it ends or its caller goes away; then a task starts for what queued meanwhile.
struct Alone<'a, W: Work> {
    batcher: &'a Arc<Batcher<W>>,
    name: Option<u64>,
}

impl<W: Work> Drop for Alone<'_, W> {
    fn drop(&mut self) {
        {
            let mut queue = self.batcher.lock();
            queue.running -= 1;
            if let Some(name) = &self.name {
                queue.writing.remove(name);
            }
        }
        // Without a runtime (it is shutting down) nothing can run; a waiting caller that is still there starts a
        // task itself when it has waited `STALL`.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.batcher.start_if_needed();
        }
    }
}

/// A batch task: counted as running, and holding the names of its batch, until it stops. When it is dropped
/// half-way (the runtime is shutting down) it releases both, so later operations never wait for a task that
/// is gone.
struct Running<W: Work> {
    batcher: Arc<Batcher<W>>,
    counted: bool,
    names: Vec<u64>,
}

impl<W: Work> Drop for Running<W> {
    fn drop(&mut self) {
        if self.counted {
            let mut queue = self.batcher.lock();
            queue.running -= 1;
            for name in &self.names {
                queue.writing.remove(name);
            }
        }
    }
}

/// A set: `row` becomes the latest version of its name in `vault`.
pub struct Set {
    pub vault: String,
    pub key: String,
    pub row: VersionRow,
}

impl Work for Set {
    type Answer = ();
    /// The batch's statement, then (after a failure one set caused) each set alone, started only within
    /// [`FALLBACK_STARTS_WITHIN`]: the last one started ends within two statements' bound after (its
    /// statement may be prepared first, a statement of its own).
    const LIMIT: Duration = FALLBACK_STARTS_WITHIN
        .saturating_add(super::STATEMENT_LIMIT.saturating_mul(2))
        .saturating_add(Duration::from_secs(2));
    const READ_ONLY: bool = false;

    fn exclusive_name(&self) -> Option<(&str, &str)> {
        Some((&self.vault, &self.key))
    }

    async fn run(conn: &mut Conn, batch: &[Set]) -> StoreResult<Vec<StoreResult<()>>> {
        write_sets(conn, batch).await
    }
}

/// A read of a live name's latest version, or of the version asked for.
pub struct Get {
    pub vault: String,
    pub key: String,
    pub version: Option<String>,
}

impl Work for Get {
    type Answer = Option<VersionRow>;
    const LIMIT: Duration = OPERATION_TIMEOUT;
    const READ_ONLY: bool = true;

    fn exclusive_name(&self) -> Option<(&str, &str)> {
        None
    }

    async fn run(
        conn: &mut Conn,
        batch: &[Get],
    ) -> StoreResult<Vec<StoreResult<Option<VersionRow>>>> {
        if let [get] = batch {
            let Conn { client, stmts } = conn;
            let found = find_live(
                stmts,
                &*client,
                &get.vault,
                &get.key,
                get.version.as_deref(),
            )
            .await?;
            return Ok(vec![Ok(found.map(|(_, row)| row))]);
        }
        let Conn { client, stmts } = conn;
        let st = Conn::prepare(stmts, &*client, SQL_GET_MANY).await?;
        let vaults: Vec<&str> = batch.iter().map(|g| g.vault.as_str()).collect();
        let keys: Vec<&str> = batch.iter().map(|g| g.key.as_str()).collect();
        let versions: Vec<Option<&str>> = batch.iter().map(|g| g.version.as_deref()).collect();
        let rows = client.query(&st, &[&vaults, &keys, &versions]).await?;
        let mut found: Vec<StoreResult<Option<VersionRow>>> =
            batch.iter().map(|_| Ok(None)).collect();
        for r in &rows {
            let at: i64 = r.try_get(0)?;
            let slot = usize::try_from(at - 1)
                .ok()
                .and_then(|i| found.get_mut(i))
                .ok_or_else(|| {
                    StoreError::Internal(format!("a read batch answered for row {at}"))
                })?;
            *slot = Ok(Some(version_row(r, 1)?));
        }
        Ok(found)
    }
}

/// The answer of each set of `batch`, in order: one statement for the whole batch, or (for one set, or after
/// a failure caused by one of them) the one-set statement for each.
async fn write_sets(conn: &mut Conn, batch: &[Set]) -> StoreResult<Vec<StoreResult<()>>> {
    let started = Instant::now();
    let deadline_ms = super::set_deadline_ms(Set::LIMIT);
    // Tags are checked when a request is parsed; should one still not serialize, the one-set statement
    // reports it for that set alone.
    let tags: StoreResult<Vec<Option<String>>> =
        batch.iter().map(|job| tags_json(&job.row.tags)).collect();
    if let (true, Ok(tags)) = (batch.len() > 1, tags) {
        match put_many(conn, batch, &tags, deadline_ms).await {
            Ok(done) => {
                return Ok(batch
                    .iter()
                    .map(|job| {
                        if done.iter().any(|(v, k)| *k == job.key && *v == job.vault) {
                            Ok(())
                        } else {
                            Err(StoreError::Deleted)
                        }
                    })
                    .collect());
            }
            // Too late for every set of it: none was written.
            Err(e) if super::is_past_deadline(&e) => {
                return Ok(batch.iter().map(|_| Err(super::past_deadline())).collect());
            }
            // One set's fault (a version id its name has, or data the database refuses, class 22), a
            // rollback, or a name's row another session held past `lock_timeout`: each on its own below, so
            // that the others are not failed with it.
            Err(e)
                if is_unique_violation(&e)
                    || is_rollback(&e)
                    || is_data_exception(&e)
                    || e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                tracing::debug!(sets = batch.len(), error = %super::describe(&e), "a batch of sets failed; writing them one by one");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut answers: Vec<StoreResult<()>> = Vec::with_capacity(batch.len());
    for job in batch {
        let answer = match answers.last() {
            // The connection broke: the rest cannot be written on it (the sets written before keep their
            // answers: they are committed).
            Some(Err(e @ StoreError::Unavailable(_))) if conn.client.is_closed() => Err(e.clone()),
            _ if started.elapsed() >= FALLBACK_STARTS_WITHIN => Err(StoreError::Unavailable(
                "not written: the sets before it in its batch waited too long for rows another session \
                 holds"
                    .into(),
            )),
            _ => put(conn, &job.vault, &job.row, deadline_ms).await,
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// A data exception (class 22: a value the database cannot hold, such as a NUL character in text), which is
/// one set's and not the batch's.
fn is_data_exception(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

/// A transaction rollback (class 40: serialization failure, deadlock), which running again may not repeat.
fn is_rollback(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("40"))
}

/// Run [`SQL_PUT_MANY`] for `batch`: the (vault, name key) of each set done.
async fn put_many(
    conn: &mut Conn,
    batch: &[Set],
    tags: &[Option<String>],
    deadline_ms: i64,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let Conn { client, stmts } = conn;
    let st = Conn::prepare(stmts, &*client, SQL_PUT_MANY).await?;
    let column = |f: fn(&Set) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
    let vaults = column(|j| &j.vault);
    let keys = column(|j| &j.key);
    let versions = column(|j| &j.row.version);
    let names = column(|j| &j.row.name);
    let sealed: Vec<&[u8]> = batch.iter().map(|j| j.row.sealed.as_slice()).collect();
    let content_types: Vec<Option<&str>> = batch
        .iter()
        .map(|j| j.row.content_type.as_deref())
        .collect();
    let tags: Vec<Option<&str>> = tags.iter().map(Option::as_deref).collect();
    let enabled: Vec<bool> = batch.iter().map(|j| j.row.enabled).collect();
    let nbf: Vec<Option<i64>> = batch.iter().map(|j| j.row.nbf).collect();
    let exp: Vec<Option<i64>> = batch.iter().map(|j| j.row.exp).collect();
    let created: Vec<i64> = batch.iter().map(|j| j.row.created).collect();
    let updated: Vec<i64> = batch.iter().map(|j| j.row.updated).collect();
    let rows = client
        .query(
            &st,
            &[
                &vaults,
                &keys,
                &versions,
                &sealed,
                &content_types,
                &tags,
                &enabled,
                &nbf,
                &exp,
                &created,
                &updated,
                &names,
                &deadline_ms,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
