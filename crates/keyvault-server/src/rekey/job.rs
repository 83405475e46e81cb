//! A rekey run by a serving node (`POST /admin/rekey`, `keyvault rekey --online`): the same
//! [`rekey`](super::rekey) as the offline command, over the node's own store and keys, in a background task
//! whose progress and report the admin API shows. On SQLite it is the way to rotate without stopping the
//! server (the offline command needs the database to itself); on PostgreSQL any one node can run it.
//!
//! One rekey at a time per node: a second start while one runs is refused (409). Nodes sharing a PostgreSQL
//! store do not lock against each other; two concurrent rekeys are still safe (every write is a compare and
//! swap), they just do the work twice. The last job's view stays until the next start or a restart; a
//! shutdown mid-rekey stops it where it was, as failed, with its audit line (a rekey can be run again: what
//! is done stays done, and the store keeps naming its target key until one completes).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{RekeyOptions, RekeyProgress, RekeyReport};
use crate::crypto::Envelope;
use crate::store::SecretStore;

/// How a job ended (or that it has not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RekeyStatus {
    Running,
    /// Every version and the key check are under the current key (or: a dry run finished).
    Succeeded,
    /// Finished, but versions remain under other keys or were written under a retired key meanwhile (the
    /// report says which): the previous keys must stay configured.
    Incomplete,
    /// Stopped by an error (the store, or keys the store refuses); `error` says which.
    Failed,
}

impl RekeyStatus {
    /// The name the admin API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            RekeyStatus::Running => "running",
            RekeyStatus::Succeeded => "succeeded",
            RekeyStatus::Incomplete => "incomplete",
            RekeyStatus::Failed => "failed",
        }
    }
}

/// A node's rekey job, as the admin API shows it. `report` is the document `keyvault rekey -o json` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RekeyJobView {
    /// The job's id: 16 random hex digits, so that a client following a job never mistakes another one (made
    /// after a restart, or on another node) for it.
    pub id: String,
    pub status: RekeyStatus,
    pub dry_run: bool,
    pub batch_size: usize,
    /// Unix seconds.
    pub started_on: i64,
    pub finished_on: Option<i64>,
    pub progress: JobProgress,
    pub report: Option<RekeyReport>,
    /// Why a failed job stopped (never key material or values).
    pub error: Option<String>,
}

/// How far a job got: versions read and re-sealed so far (in a dry run: that would be).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    pub scanned: u64,
    pub resealed: u64,
}

/// The node's rekey job, if one has run since it started.
pub struct RekeyJobs {
    last: Arc<Mutex<Option<RekeyJobView>>>,
    /// Becomes true when the node shuts down: a running job stops there and ends as failed, with its audit
    /// line written before the log is closed.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The running (or last) job's task, for [`RekeyJobs::stop`] to wait for.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for RekeyJobs {
    fn default() -> Self {
        RekeyJobs {
            last: Default::default(),
            stopping: tokio::sync::watch::Sender::new(false),
            task: Mutex::new(None),
        }
    }
}

/// Why a job stopped by a shutdown failed (the admin API's `error`, the audit line's).
pub const STOPPED_BY_SHUTDOWN: &str =
    "stopped: the server shut down (run the rekey again: what is done stays done)";

/// A start refused because a job is running: the running job's id.
#[derive(Debug)]
pub struct AlreadyRunning(pub String);

impl RekeyJobs {
    /// The last (or running) job's view.
    pub fn view(&self) -> Option<RekeyJobView> {
        lock(&self.last).clone()
    }

    /// Stops a running job (the node is shutting down) and waits, at most `within`, for it to end: its view
    /// says failed, and `finished` has been called (its audit line written) when this returns in time. Jobs
    /// started afterwards stop at once.
    pub async fn stop(&self, within: std::time::Duration) {
        self.stopping.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(task) = task
            && tokio::time::timeout(within, task).await.is_err()
        {
            tracing::warn!("the rekey job did not stop within {within:?}");
        }
    }

    /// Starts a rekey of `store` under `envelope`'s current key in a background task, unless one is
    /// running. `now` gives unix seconds (the vault's clock); `finished` is called once with the job's final
    /// view (to audit it).
    pub fn start(
        &self,
        store: Arc<dyn SecretStore>,
        envelope: Arc<Envelope>,
        options: RekeyOptions,
        now: impl Fn() -> i64 + Send + Sync + 'static,
        finished: impl FnOnce(&RekeyJobView) + Send + 'static,
    ) -> Result<RekeyJobView, AlreadyRunning> {
        let view = {
            let mut last = lock(&self.last);
            if let Some(running) = last.as_ref().filter(|v| v.status == RekeyStatus::Running) {
                return Err(AlreadyRunning(running.id.clone()));
            }
            let view = RekeyJobView {
                id: new_job_id(),
                status: RekeyStatus::Running,
                dry_run: options.dry_run,
                batch_size: options.batch_size.max(1),
                started_on: now(),
                finished_on: None,
                progress: JobProgress::default(),
                report: None,
                error: None,
            };
            *last = Some(view.clone());
            view
        };
        let shared = self.last.clone();
        let id = view.id.clone();
        let mut stopping = self.stopping.subscribe();
        let task = tokio::spawn(async move {
            tracing::info!(
                job = %id,
                dry_run = options.dry_run,
                current_kek_id = envelope.current_kek_id(),
                "rekey started"
            );
            let progress = {
                let (shared, id) = (shared.clone(), id.clone());
                move |p: &RekeyProgress| {
                    if let Some(v) = lock(&shared).as_mut().filter(|v| v.id == id) {
                        v.progress = JobProgress {
                            scanned: p.scanned,
                            resealed: p.resealed,
                        };
                    }
                }
            };
            let mut run = {
                let options = options.clone();
                tokio::spawn(async move {
                    super::rekey(store.as_ref(), &envelope, &options, progress).await
                })
            };
            let result = tokio::select! {
                // A panic inside the rekey ends the job as failed rather than leaving it running for ever.
                ended = &mut run => {
                    ended.unwrap_or_else(|e| Err(format!("the rekey task ended abnormally: {e}")))
                }
                // Where it is: each of its writes is a compare and swap of its own, so what it did stays.
                _ = async {
                    // (Its sender gone, nothing can stop the job: it runs on.)
                    let stopped = stopping.wait_for(|stop| *stop).await.is_ok();
                    if !stopped {
                        std::future::pending::<()>().await;
                    }
                } => {
                    run.abort();
                    let _ = run.await;
                    Err(STOPPED_BY_SHUTDOWN.to_string())
                }
            };
            match &result {
                Ok(report) => tracing::info!(
                    job = %id,
                    dry_run = report.dry_run,
                    resealed = report.resealed,
                    remaining = report.remaining(),
                    failed = report.failed,
                    late = report.late,
                    complete = report.complete(),
                    key_check = report.key_check_after.as_deref().unwrap_or("none"),
                    retired = %report.retired.join(","),
                    "rekey finished"
                ),
                Err(e) => tracing::warn!(job = %id, error = %e, "rekey failed"),
            }
            if let Some(v) = lock(&shared).as_mut().filter(|v| v.id == id) {
                v.finished_on = Some(now());
                match result {
                    Ok(report) => {
                        v.status = if report.dry_run || report.complete() {
                            RekeyStatus::Succeeded
                        } else {
                            RekeyStatus::Incomplete
                        };
                        v.progress.scanned = report.scanned;
                        v.progress.resealed = report.resealed;
                        v.report = Some(report);
                    }
                    Err(e) => {
                        v.status = RekeyStatus::Failed;
                        v.error = Some(e);
                    }
                }
            }
            let last = lock(&shared).clone().filter(|v| v.id == id);
            if let Some(view) = last {
                finished(&view);
            }
        });
        *lock(&self.task) = Some(task);
        Ok(view)
    }
}

/// 16 random hex digits (a clock-derived id if the system's generator fails, which it does not on Linux).
fn new_job_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64).to_be_bytes();
    }
    hex::encode(bytes)
}

/// The job's lock: a panic while it was held leaves a view that is still whole (every update is a plain
/// field assignment), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
