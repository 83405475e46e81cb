//! A small connection pool for [`tokio_postgres`]: a bounded set of connections, each with its own cache of
//! prepared statements, handed out for one store operation at a time.
//!
//! - Waiting for a free connection and opening a new one are both bounded ([`WAIT_TIMEOUT`],
//!   [`CONNECT_TIMEOUT`]), so when the database is unreachable a request fails in seconds with
//!   [`StoreError::Unavailable`] instead of hanging.
//! - A connection goes back to the pool only if the operation that used it finished and did not fail with a
//!   connection-level error. A connection whose operation was cancelled half-way (the caller went away) or
//!   that broke is dropped; the next checkout opens a fresh one. That is how the pool recovers by itself after
//!   the database restarts: idle connections the server closed are noticed (`is_closed`) and replaced.
//! - Connections are opened by a [`Connector`]: the driver's configuration and, unless `sslmode=disable`, the
//!   TLS connector ([`super::tls`]). TLS costs only connection setup and the encryption of the bytes: the
//!   pooled [`Client`]s are the same either way, and with `sslmode=disable` nothing of TLS is on the path.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Statement};

use super::tls::{PgTls, SslMode};
use crate::store::{StoreError, StoreResult};

/// How long an operation waits for a free connection before failing with `Unavailable`.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a connection (TCP, startup, authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Pooled::lost_while_pooled`] waits for a connection whose operation failed to close.
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// One connection and the statements prepared on it.
pub struct Conn {
    pub client: Client,
    pub stmts: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The prepared statement for `sql` on this connection (prepared on first use), via `client`
    /// (the connection itself or a transaction on it).
    pub async fn prepare<C: tokio_postgres::GenericClient>(
        stmts: &mut HashMap<&'static str, Statement>,
        client: &C,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = stmts.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = client.prepare(sql).await?;
        stmts.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

/// A bounded pool of connections to one database.
pub struct Pool {
    connector: Connector,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    size: usize,
}

impl Pool {
    pub fn new(connector: Connector, size: usize) -> Pool {
        Pool {
            connector,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            size,
        }
    }

    /// Put an already open connection in the pool (the one used for migrations at start).
    pub fn add_idle(&self, client: Client) {
        self.lock_idle().push(Conn {
            client,
            stmts: HashMap::new(),
        });
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for one operation: an idle one that is still open, or a new one.
    pub async fn get(&self) -> StoreResult<Pooled<'_>> {
        self.checkout(true).await
    }

    /// A connection opened for one operation (no idle one: they may all be dead, as after a failover).
    pub async fn get_fresh(&self) -> StoreResult<Pooled<'_>> {
        self.checkout(false).await
    }

    async fn checkout(&self, idle: bool) -> StoreResult<Pooled<'_>> {
        let permit = match tokio::time::timeout(WAIT_TIMEOUT, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(StoreError::Unavailable("the pool is closed".into())),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "all {} database connections stayed busy for {WAIT_TIMEOUT:?}",
                    self.size
                )));
            }
        };
        if idle {
            loop {
                let Some(conn) = self.lock_idle().pop() else {
                    break;
                };
                if !conn.client.is_closed() {
                    return Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                        reused: true,
                        reusable: false,
                        finished: false,
                        _permit: permit,
                    });
                }
            }
        }
        let client = self.connector.connect().await?;
        Ok(Pooled {
            pool: self,
            conn: Some(Conn {
                client,
                stmts: HashMap::new(),
            }),
            reused: false,
            reusable: false,
            finished: false,
            _permit: permit,
        })
    }

    /// Drop every idle connection (the ones in use are dropped when they come back).
    pub fn clear(&self) {
        self.lock_idle().clear();
    }
}

/// How to open a connection: the driver's configuration (its `ssl_mode` already set from [`SslMode`]) and
/// the TLS connector (`None` with `sslmode=disable`).
#[derive(Clone, Debug)]
pub struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: Option<PgTls>,
    pub mode: SslMode,
    /// The `sslmode` the URL asked for, when it does not apply: every host is a Unix-domain socket, where
    /// PostgreSQL offers no TLS (`mode` is then `disable`).
    pub unix_socket_mode: Option<SslMode>,
}

impl Connector {
    /// Connections without TLS (`sslmode=disable`).
    pub fn plain(mut config: tokio_postgres::Config) -> Connector {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Connector {
            config,
            tls: None,
            mode: SslMode::Disable,
            unix_socket_mode: None,
        }
    }

    /// `sslmode=…` for messages, saying when TLS does not apply (a Unix-domain socket).
    pub fn sslmode_label(&self) -> String {
        match self.unix_socket_mode {
            Some(asked) if asked != SslMode::Disable => format!(
                "sslmode={}, not used: TLS does not apply to a Unix-domain socket",
                asked.as_str()
            ),
            _ => format!("sslmode={}", self.mode.as_str()),
        }
    }

    /// Asks the server to cancel what `client`'s session is running (a request on a connection of its own,
    /// sent from a task; nothing happens outside a runtime). Best effort: a session that is idle ignores it.
    pub fn cancel(&self, client: &Client) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let token = client.cancel_token();
        let tls = self.tls.clone();
        runtime.spawn(async move {
            let sent = tokio::time::timeout(CONNECT_TIMEOUT, async {
                match tls {
                    None => token.cancel_query(NoTls).await,
                    Some(tls) => token.cancel_query(tls).await,
                }
            })
            .await;
            if let Ok(Err(e)) = sent {
                tracing::debug!(error = %super::describe(&e), "cancelling an abandoned PostgreSQL query failed");
            }
        });
    }

    /// Open one connection (bounded by [`CONNECT_TIMEOUT`]) and drive it on a background task.
    pub async fn connect(&self) -> StoreResult<Client> {
        let connected = match &self.tls {
            None => connect_with(&self.config, NoTls)
                .await
                .map(|(client, connection)| {
                    tokio::spawn(drive(connection));
                    client
                }),
            Some(tls) => {
                connect_with(&self.config, tls.clone())
                    .await
                    .map(|(client, connection)| {
                        tokio::spawn(drive(connection));
                        client
                    })
            }
        };
        let client = connected.map_err(|e| {
            let target = super::describe_target(&self.config);
            let mode = self.sslmode_label();
            StoreError::Unavailable(match e {
                Some(e) => format!(
                    "cannot connect to PostgreSQL at {target} ({mode}): {}",
                    super::describe(&e)
                ),
                None => format!(
                    "connecting to PostgreSQL at {target} ({mode}) took longer than {CONNECT_TIMEOUT:?}"
                ),
            })
        })?;
        insist_on_durable_commits(&client).await?;
        client.batch_execute(super::SQL_SESSION_LIMITS).await?;
        Ok(client)
    }
}

/// Commits are acknowledged only once they are on disk: a database, role or URL that sets
/// `synchronous_commit = off` (which acknowledges a commit before its WAL is flushed: a crash of PostgreSQL
/// loses the last ones) gets `on` for this connection, with a warning (once per process). Every other value
/// (`local`, `remote_write`, `on`, `remote_apply`) flushes the commit locally first and is kept.
async fn insist_on_durable_commits(client: &Client) -> StoreResult<()> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let setting: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .try_get(0)?;
    if setting == "off" {
        client.batch_execute("SET synchronous_commit = on").await?;
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "PostgreSQL's synchronous_commit is off for this database or role: keyvault sets it on for its \
                 own connections (a commit acknowledged before it is on disk could be lost)"
            );
        }
    }
    Ok(())
}

type Connected<T> = (
    Client,
    tokio_postgres::Connection<
        tokio_postgres::Socket,
        <T as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
    >,
);

/// Connect with `tls`: the error, or `None` when [`CONNECT_TIMEOUT`] passed.
async fn connect_with<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<Connected<T>, Option<tokio_postgres::Error>>
where
    T: MakeTlsConnect<tokio_postgres::Socket>,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// Run a connection until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %super::describe(&e), "a PostgreSQL connection ended");
    }
}

/// A connection checked out of the pool. It returns to the pool on drop only if [`Pooled::finish`] said the
/// operation completed without a connection-level failure.
pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    /// Taken from the idle connections (not opened for this checkout).
    reused: bool,
    reusable: bool,
    /// [`Pooled::finish`] was called: dropped without it, the operation was given up half-way.
    finished: bool,
    _permit: SemaphorePermit<'a>,
}

impl Pooled<'_> {
    pub fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until drop")
    }

    /// Whether this connection was taken from the idle ones and has closed since: the database ended its
    /// session (a restart, a failover, `pg_terminate_backend`) while it idled or under the operation. A
    /// session ended by the server sends its error first and then closes, so a connection that is still open
    /// is given [`CLOSE_GRACE`] to close.
    pub async fn lost_while_pooled(&self) -> bool {
        let Some(conn) = self.conn.as_ref().filter(|_| self.reused) else {
            return false;
        };
        let until = tokio::time::Instant::now() + CLOSE_GRACE;
        while !conn.client.is_closed() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// The operation is over with `result`: keep the connection unless the failure was the connection's.
    pub fn finish<T>(mut self, result: StoreResult<T>) -> StoreResult<T> {
        self.reusable = !matches!(result, Err(StoreError::Unavailable(_)));
        self.finished = true;
        result
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.finished && !conn.client.is_closed() {
            // Given up half-way (its caller gone, or its time up): a statement may still be running or
            // waiting for a lock in the database, where dropping the connection is not noticed until it ends.
            // Cancelled there, so that no session outlives what this side gave up on.
            self.pool.connector.cancel(&conn.client);
        }
        if self.reusable && !conn.client.is_closed() {
            self.pool.lock_idle().push(conn);
        }
    }
}
