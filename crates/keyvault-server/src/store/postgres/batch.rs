//! Group commit for sets: concurrent [`SecretStore::put_version`](crate::store::SecretStore::put_version)
//! calls on one node share a statement, a transaction and its commit.
//!
//! - Every set joins a queue. At most `in_flight` batches run at once, each a task with its own pooled
//!   connection. A batch takes what is queued when it starts (up to [`MAX_BATCH`] sets, one per name), so a
//!   set on an idle node runs alone, with the one-set statement, and under load the sets that arrive while
//!   batches run share the next one. PostgreSQL's cost of a commit, a statement and a round trip is then paid
//!   once per batch instead of once per set.
//! - A batch is one autocommit statement ([`SQL_PUT_MANY`]): its sets commit together or not at all, and none
//!   is acknowledged before the commit. It locks its names' rows in byte order, so batches (from any node)
//!   cannot deadlock each other; the name rows are what serializes sets of one name, across nodes, as
//!   with single sets.
//! - A set to a deleted name is answered `Deleted` without failing the others (its row is not returned). If
//!   the statement fails because of one set (a version id its name already has) or is rolled back (a
//!   deadlock with some other write), each set of the batch runs again alone and gets its own answer.
//! - A set whose caller went away before its batch started is dropped, never written.
//! - Two sets of the same name never share a batch; the later one waits for the next. (Until the earlier is
//!   acknowledged both are in flight, so either order is a valid outcome.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::pool::{Conn, Pool};
use super::{OPERATION_TIMEOUT, is_unique_violation, put, run_on};
use crate::store::{StoreError, StoreResult, VersionRow, name_key, tags_json};

/// Sets in one batch at most.
pub const MAX_BATCH: usize = 128;
/// Batches a node runs at once at most (never more than its pool's connections).
pub const IN_FLIGHT: usize = 4;
/// How long a set waits for its batch's answer: its turn in the queue plus the batch itself, which is bounded
/// by [`OPERATION_TIMEOUT`]; a set that waits longer is answered `Unavailable` (it may still commit).
const ANSWER_TIMEOUT: Duration = OPERATION_TIMEOUT.saturating_mul(2);

/// Many sets in one statement: the arrays hold one set each, at the same index (the parameters of
/// [`super::SQL_PUT`], each as an array). Names are created, or locked and pointed at their new versions
/// unless deleted, in byte order; then a version is inserted for each name that was (drawing its `seq` while
/// the name's row is locked). The (vault, name key) of each set that was done comes back.
pub(super) const SQL_PUT_MANY: &str = r#"WITH i AS (
         SELECT vault COLLATE "C" AS vault, name_key COLLATE "C" AS name_key, version, sealed,
                content_type, tags, enabled, nbf, exp, created, updated, display_name
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[],
                     $7::boolean[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[])
              AS u(vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp, created,
                   updated, display_name)),
     n AS (
         INSERT INTO kv_names (vault, name_key, display_name, latest_version)
         SELECT vault, name_key, display_name, version FROM i ORDER BY vault, name_key
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
     RETURNING vault, name_key"#;

/// One set waiting for (or in) a batch.
struct Job {
    vault: String,
    key: String,
    row: VersionRow,
    answer: oneshot::Sender<StoreResult<()>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Job>,
    /// Batch tasks running (each takes batches until the queue is empty).
    running: usize,
}

/// The queue of sets and the batches that drain it. See the module documentation.
pub struct Batcher {
    pool: Arc<Pool>,
    in_flight: usize,
    queue: Mutex<Queue>,
    /// Batch statements run so far (with more than one set), for tests and diagnostics.
    batches: std::sync::atomic::AtomicU64,
}

impl Batcher {
    pub fn new(pool: Arc<Pool>, in_flight: usize) -> Arc<Batcher> {
        Arc::new(Batcher {
            pool,
            in_flight: in_flight.max(1),
            queue: Mutex::default(),
            batches: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Statements that wrote more than one set so far.
    pub fn batches_run(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Add `row` as its name's latest version (see [`crate::store::SecretStore::put_version`]) in the next
    /// batch that can take it; answers once that batch committed (or failed).
    pub async fn put(self: &Arc<Self>, vault: &str, row: VersionRow) -> StoreResult<()> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            vault: vault.to_owned(),
            key: name_key(&row.name),
            row,
            answer,
        };
        let start = {
            let mut queue = self.lock();
            queue.waiting.push_back(job);
            let start = queue.running < self.in_flight;
            queue.running += usize::from(start);
            start
        };
        if start {
            let mut task = Running {
                batcher: Arc::clone(self),
                counted: true,
            };
            tokio::spawn(async move {
                while let Some(batch) = task.batcher.take_batch(&mut task.counted) {
                    task.batcher.run(batch).await;
                }
            });
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "the set was interrupted (the server is stopping)".into(),
            )),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the set was not answered within {ANSWER_TIMEOUT:?}"
            ))),
        }
    }

    /// The next batch: waiting sets in arrival order, one per name, at most [`MAX_BATCH`]; sets whose caller
    /// went away are dropped. None when nothing waits: then the task stops counting as running (`counted`), in
    /// the same critical section, so a set that arrives next starts a new task.
    fn take_batch(&self, counted: &mut bool) -> Option<Vec<Job>> {
        let mut queue = self.lock();
        let mut batch: Vec<Job> = Vec::new();
        let mut later = VecDeque::new();
        while let Some(job) = queue.waiting.pop_front() {
            if job.answer.is_closed() {
                continue;
            }
            if batch.len() == MAX_BATCH {
                later.push_back(job);
                later.append(&mut queue.waiting);
                break;
            }
            if batch
                .iter()
                .any(|b| b.key == job.key && b.vault == job.vault)
            {
                later.push_back(job);
            } else {
                batch.push(job);
            }
        }
        queue.waiting = later;
        if batch.is_empty() {
            queue.running -= 1;
            *counted = false;
            return None;
        }
        Some(batch)
    }

    /// Write one batch and answer its sets.
    async fn run(&self, batch: Vec<Job>) {
        let answers = run_on(&self.pool, async |c| write_batch(c, &batch).await).await;
        if batch.len() > 1 {
            self.batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    let _ = job.answer.send(answer);
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A batch task. It stops counting as running when it finds the queue empty, or else when it is dropped
/// half-way (the runtime is shutting down), so that later sets never wait for a task that is gone.
struct Running {
    batcher: Arc<Batcher>,
    counted: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.counted {
            self.batcher.lock().running -= 1;
        }
    }
}

/// The answer of each set of `batch`, in order: one statement for the whole batch, or (for one set, or after
/// a failure caused by one of them) the one-set statement for each.
async fn write_batch(conn: &mut Conn, batch: &[Job]) -> StoreResult<Vec<StoreResult<()>>> {
    // Tags are checked when a request is parsed; should one still not serialize, the one-set statement
    // reports it for that set alone.
    let tags: StoreResult<Vec<Option<String>>> =
        batch.iter().map(|job| tags_json(&job.row.tags)).collect();
    if let (true, Ok(tags)) = (batch.len() > 1, tags) {
        match put_many(conn, batch, &tags).await {
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
            // One set's fault (a version id its name has) or a rollback: each on its own below.
            Err(e) if is_unique_violation(&e) || is_rollback(&e) => {
                tracing::debug!(sets = batch.len(), error = %super::describe(&e), "a batch of sets failed; writing them one by one");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        let answer = put(conn, &job.vault, &job.row).await;
        if let Err(StoreError::Unavailable(_)) = &answer {
            // The connection is gone: the rest cannot be written on it either.
            return Err(answer.unwrap_err());
        }
        answers.push(answer);
    }
    Ok(answers)
}

/// A transaction rollback (class 40: serialization failure, deadlock), which running again may not repeat.
fn is_rollback(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("40"))
}

/// Run [`SQL_PUT_MANY`] for `batch`: the (vault, name key) of each set done.
async fn put_many(
    conn: &mut Conn,
    batch: &[Job],
    tags: &[Option<String>],
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let Conn { client, stmts } = conn;
    let st = Conn::prepare(stmts, &*client, SQL_PUT_MANY).await?;
    let column = |f: fn(&Job) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
    let vaults = column(|j| &j.vault);
    let keys = column(|j| &j.key);
    let versions = column(|j| &j.row.version);
    let names = column(|j| &j.row.name);
    let sealed: Vec<&[u8]> = batch.iter().map(|j| j.row.sealed.as_slice()).collect();
    let content_types: Vec<Option<&str>> =
        batch.iter().map(|j| j.row.content_type.as_deref()).collect();
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
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
