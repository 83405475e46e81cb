//! The scale-out [`SecretStore`]: one PostgreSQL database shared by any number of stateless server nodes.
//!
//! - **Connections**: a small pool ([`pool`]) with bounded waits; connection-level failures become
//!   [`StoreError::Unavailable`] (HTTP 503), and the pool replaces broken connections by itself, so a node
//!   keeps running through a database restart.
//! - **Concurrency** (READ COMMITTED + row locks): every write that reads before it writes first locks the
//!   name's row in `kv_names` (`INSERT … ON CONFLICT DO UPDATE` creates-or-locks it; `UPDATE`/`DELETE`
//!   lock it; `SELECT … FOR UPDATE` for attribute changes). Version rows are inserted only while the name's
//!   row is locked, so a version's `seq` (an identity column) orders versions by commit within a name, the
//!   latest is well defined when several nodes set the same name at once, and a name is never both live and
//!   deleted. Multi-statement operations run in one transaction; each statement sees what committed before it.
//!   A set (the hot write) is one statement and one round trip (`SQL_PUT`): the upsert that locks the name
//!   points it at the new version id, and the version is inserted (drawing its `seq`) in the same statement.
//! - **Batches** ([`batch`]): concurrent sets on a node share one statement and one commit (group commit,
//!   `batch::SQL_PUT_MANY`), and concurrent reads of a version one query (`SQL_GET_MANY`); alone, each
//!   runs its one-row statement.
//! - **Ordering**: keys are `COLLATE "C"`, so keyset paging sorts names by bytes, exactly as SQLite does.
//! - **Schema**: versioned migrations in `kv_schema_migrations`, applied at start inside a transaction that
//!   holds `pg_advisory_xact_lock(`[`MIGRATION_LOCK_KEY`]`)`, so several nodes may start at once.
//! - **Leadership**: [`SecretStore::try_acquire_leadership`] holds the session-level advisory lock
//!   [`LEADER_LOCK_KEY`] on a dedicated connection; when the leader node dies its session ends, the lock is
//!   released, and the next node to try takes over. (The sweeper is also safe if two nodes ever run it at
//!   once: purges lock rows with `SKIP LOCKED` and re-check the deleted state.)
//!
//! Schema (version 5):
//!
//! ```text
//! kv_names(vault, name_key, display_name, latest_version, deleted_on, scheduled_purge) PK (vault, name_key)
//!     fillfactor 80 (sets update the row in place: HOT)
//!     kv_names_live    (vault, name_key)                                      WHERE deleted_on IS NULL
//!     kv_names_deleted (vault, name_key)                                      WHERE deleted_on IS NOT NULL
//!     kv_names_purge   (scheduled_purge)                                      WHERE scheduled_purge IS NOT NULL
//! kv_versions(seq IDENTITY, vault, name_key, version, sealed BYTEA, content_type, tags (JSON text), enabled,
//!             nbf, exp, created, updated)  UNIQUE (vault, name_key, version) (also the replica identity)
//! kv_access(id = 1, revision, doc, updated_at)      kv_meta(key, value)
//! kv_schema_migrations(version, applied_at)
//! ```
//!
//! Version 2 adds `kv_access(id = 1, revision, doc BYTEA, updated_at)`: the access-control document (what the
//! admin API made), replaced by compare-and-set on `revision` so concurrent changes on two nodes never
//! overwrite each other; nodes poll `revision` to pick up each other's changes. It also adds `kv_meta(key,
//! value)`: the key check ([`crate::store::check_key`]) that stops a node with another KEK. Versions 3 and 4
//! make sets lighter (see `SCHEMA_V3`, `SCHEMA_V4`): a set updates its name's row in place and inserts one
//! version row with one index entry. Version 5 pages live names over a partial index of their own
//! (`SCHEMA_V5`).

/// The condition that fails a set's statement (`division_by_zero`) once it runs after its deadline, `$13`
/// ([`set_deadline_ms`]); shared by [`SQL_PUT`] and [`batch::SQL_PUT_MANY`].
macro_rules! before_deadline {
    () => {
        "WHERE 1 / (CASE WHEN clock_timestamp() < to_timestamp($13::bigint / 1000.0) THEN 1 ELSE 0 END) = 1"
    };
}

pub mod batch;
pub mod pool;
pub mod tls;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use self::batch::{Batcher, Get, Set};
use self::pool::{Conn, Connector, Pool};
use super::{
    DeletedRow, SealedChange, SealedKey, SealedValue, SecretStore, StoreError, StoreResult,
    VersionPatch, VersionRow, name_key, tags_json,
};

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i32 = 5;
/// Connections a node keeps open at most, unless configured (`pg_pool_size`).
pub const POOL_SIZE: usize = 16;
/// The advisory lock held (per transaction) while migrations run.
pub const MIGRATION_LOCK_KEY: i64 = 0x6b76_5f6d_6967_7261; // "kv_migra"
/// How often a start tries the schema lock while another session holds it.
const MIGRATION_LOCK_RETRY: Duration = Duration::from_millis(100);
/// How long a start waits for the schema lock before it says so in the log.
const MIGRATION_WAIT_TOLD_AFTER: Duration = Duration::from_secs(3);
/// The advisory lock held (per session) by the node that runs background work.
pub const LEADER_LOCK_KEY: i64 = 0x6b76_5f6c_6561_6472; // "kv_leadr"
/// Names purged per transaction by `purge_expired`.
const PURGE_CHUNK: i64 = 256;
/// Longest a single store operation may take before it fails with `Unavailable` (a hung database, a lock
/// held by a stalled session): the caller gets a 503 instead of waiting. Operations take milliseconds (a
/// restore of 500 versions of 25 KB, well under a second); a database host that stops answering (rather than
/// refusing connections, which fails within the pool's 5 s) is noticed within this.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// What every keyvault session tells PostgreSQL, so that the database ends what this side gives up on:
/// - `statement_timeout`, under [`OPERATION_TIMEOUT`] (which counts from when the statement's connection is
///   in hand): a statement this side stops waiting for has been ended by the database first, so a set
///   answered 503 was not committed, and no abandoned session goes on waiting past `pg_pool_size`;
/// - `lock_timeout`: a row lock another session holds (a DBA's open transaction, a stalled node) or a table
///   lock (`VACUUM FULL`) fails the request after 3 s instead of holding a connection for the whole 8 s —
///   the writes that wait for one another's row locks here take milliseconds;
/// - `idle_in_transaction_session_timeout`: a node frozen or cut off between two statements of a transaction
///   (delete, recover, update, purge hold a name's row across round trips) releases the row after 5 s,
///   instead of when its TCP connection is given up (hours, with the kernel's default keepalives).
///
/// Migrations, which may take long and wait for another node's, lift the first two for their transaction.
const SQL_SESSION_LIMITS: &str = "SET statement_timeout = 8000; SET lock_timeout = 3000; \
     SET idle_in_transaction_session_timeout = 5000";
/// `statement_timeout` of [`SQL_SESSION_LIMITS`].
const STATEMENT_LIMIT: Duration = Duration::from_secs(8);
/// How long the leader's liveness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read of the access document or its revision may take, on this side (the pool's wait included),
/// the same as a node's whole refresh ([`crate::admin::REFRESH_TIMEOUT`]).
const ACCESS_READ_TIMEOUT: Duration = crate::admin::REFRESH_TIMEOUT;
/// The same read's limit in the database (`statement_timeout`), shorter: a read waiting on a lock (`LOCK TABLE
/// kv_access`) is ended by the server, rather than abandoned by this side with its session still waiting in
/// the database (a node polls each second: one more such session, and connection slot, per poll for as long
/// as the lock is held).
const SQL_ACCESS_READ_LIMIT: &str = "SET LOCAL statement_timeout = 1500";

const MIGRATIONS: &[(i32, &str)] = &[
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
];

const SCHEMA_V1: &str = r#"
CREATE TABLE kv_names (
    vault           TEXT COLLATE "C" NOT NULL,
    name_key        TEXT COLLATE "C" NOT NULL,
    display_name    TEXT   NOT NULL,
    latest_seq      BIGINT NOT NULL,
    deleted_on      BIGINT,
    scheduled_purge BIGINT,
    PRIMARY KEY (vault, name_key),
    CHECK ((deleted_on IS NULL) = (scheduled_purge IS NULL))
);
CREATE INDEX kv_names_live ON kv_names (vault, name_key) INCLUDE (latest_seq, display_name)
    WHERE deleted_on IS NULL;
CREATE INDEX kv_names_deleted ON kv_names (vault, name_key) WHERE deleted_on IS NOT NULL;
CREATE INDEX kv_names_purge ON kv_names (scheduled_purge) WHERE scheduled_purge IS NOT NULL;
CREATE TABLE kv_versions (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vault        TEXT COLLATE "C" NOT NULL,
    name_key     TEXT COLLATE "C" NOT NULL,
    version      TEXT COLLATE "C" NOT NULL,
    sealed       BYTEA   NOT NULL,
    content_type TEXT,
    tags         TEXT,
    enabled      BOOLEAN NOT NULL,
    nbf          BIGINT,
    exp          BIGINT,
    created      BIGINT  NOT NULL,
    updated      BIGINT  NOT NULL,
    UNIQUE (vault, name_key, version)
);
CREATE INDEX kv_versions_by_name ON kv_versions (vault, name_key, seq);
"#;

/// Version 2: the access-control document the admin API writes (one row), shared by every node, and small
/// values every node reads at start (`kv_meta`: the key check).
const SCHEMA_V2: &str = r#"
CREATE TABLE kv_access (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    revision   BIGINT NOT NULL,
    doc        BYTEA  NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE kv_meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);
"#;

/// Version 3: lighter sets. A set updates its name's row in place (a HOT update: no index covers the columns
/// it changes, and pages keep room for the new tuple), and versions are keyed by (vault, name_key, seq) alone
/// (the seq-only primary key goes; every lookup by seq also names the name). A set then writes two index
/// entries instead of five. The identity sequence gets a fixed name, so a set draws from it without looking
/// it up (`pg_get_serial_sequence` reads the catalog on every call).
const SCHEMA_V3: &str = r#"
DROP INDEX kv_names_live;
ALTER TABLE kv_names SET (fillfactor = 80);
CREATE UNIQUE INDEX kv_versions_name_seq ON kv_versions (vault, name_key, seq);
ALTER TABLE kv_versions DROP CONSTRAINT kv_versions_pkey;
ALTER TABLE kv_versions ADD CONSTRAINT kv_versions_pkey PRIMARY KEY USING INDEX kv_versions_name_seq;
DROP INDEX kv_versions_by_name;
DO $$ BEGIN
    EXECUTE format('ALTER SEQUENCE %s RENAME TO kv_versions_seq', pg_get_serial_sequence('kv_versions', 'seq'));
END $$;
"#;

/// Version 4: a set inserts one index entry. A name points at its latest version by version id (through the
/// unique (vault, name_key, version) index, which also pages the versions listing), so the (vault, name_key,
/// seq) primary key goes; `seq` (still drawn while the name's row is locked) only orders a backup's versions.
/// The unique index becomes the replica identity (logical replication needs one).
const SCHEMA_V4: &str = r#"
ALTER TABLE kv_names ADD COLUMN latest_version TEXT COLLATE "C";
UPDATE kv_names AS n SET latest_version = v.version FROM kv_versions AS v
    WHERE v.vault = n.vault AND v.name_key = n.name_key AND v.seq = n.latest_seq;
ALTER TABLE kv_names ALTER COLUMN latest_version SET NOT NULL;
ALTER TABLE kv_names DROP COLUMN latest_seq;
ALTER TABLE kv_versions DROP CONSTRAINT kv_versions_pkey;
ALTER TABLE kv_versions REPLICA IDENTITY USING INDEX kv_versions_vault_name_key_version_key;
"#;

/// Version 5: live names are paged over their own partial index, so the listing's plan does not hang on
/// statistics. Without them (a table just filled, before autovacuum's first analyze) PostgreSQL guesses that
/// few rows have no `deleted_on`, and read and sorted every name for each page (3.6 ms a page at 10k names);
/// deleted names no longer lie in a page's way either. Sets stay HOT: the index holds no column a set changes,
/// and its predicate's column changes only on delete and recover.
const SCHEMA_V5: &str = r#"
CREATE INDEX kv_names_live ON kv_names (vault, name_key) WHERE deleted_on IS NULL;
"#;

// ---------------------------------------------------------------------------------------------------------
// Queries

/// The version columns, in the order [`version_row`] reads them after the display name.
macro_rules! vcols {
    () => {
        "v.version, v.sealed, v.content_type, v.tags, v.enabled, v.nbf, v.exp, v.created, v.updated"
    };
}

/// [`vcols`] for listings: an empty value where the sealed one would be (listings never carry values, so a
/// large, TOASTed value is never fetched for one).
macro_rules! listed_vcols {
    () => {
        "v.version, '\\x'::bytea, v.content_type, v.tags, v.enabled, v.nbf, v.exp, v.created, v.updated"
    };
}

/// The columns of `kv_versions` that [`vcols`] reads, for subqueries aliased `v`.
macro_rules! version_columns {
    () => {
        "version, sealed, content_type, tags, enabled, nbf, exp, created, updated"
    };
}

/// The latest version of the name row `n`, for a `LATERAL` subquery (optionally with more columns first).
macro_rules! latest_of_n {
    () => {
        latest_of_n!("")
    };
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            version_columns!(),
            " FROM kv_versions
             WHERE vault = n.vault AND name_key = n.name_key AND version = n.latest_version LIMIT 1"
        )
    };
}

/// A page of live names with their latest versions. The page of names is chosen first (keyset: the primary key
/// from `$2` on, `LIMIT` inside the subquery), then each name's latest version is looked up by the unique
/// (vault, name_key, version) index: a `LATERAL` subquery with its own `LIMIT 1` (one row anyway), which
/// PostgreSQL cannot flatten into a join, so it stays a lookup per name under every plan. As a plain join,
/// PostgreSQL estimates that the join on `latest_version` keeps almost no rows, so the `LIMIT` looks useless,
/// and it hash-joins both whole tables and sorts: every page, even the first, read every name and version
/// (22 ms per page at 10k secrets; the generic plan of the names-first join without `LATERAL` did the same).
const SQL_LIST_LATEST: &str = concat!(
    "SELECT n.display_name, ",
    listed_vcols!(),
    " FROM (SELECT vault, name_key, display_name, latest_version FROM kv_names
           WHERE vault = $1 AND deleted_on IS NULL AND name_key > $2 AND name_key <= $4
           ORDER BY name_key LIMIT $3) AS n
     CROSS JOIN LATERAL (",
    latest_of_n!(),
    ") AS v ORDER BY n.name_key"
);
/// A page of deleted names, like [`SQL_LIST_LATEST`] (over the partial index of deleted names).
const SQL_LIST_DELETED: &str = concat!(
    "SELECT n.display_name, ",
    listed_vcols!(),
    ", n.deleted_on, n.scheduled_purge
     FROM (SELECT vault, name_key, display_name, latest_version, deleted_on, scheduled_purge FROM kv_names
           WHERE vault = $1 AND deleted_on IS NOT NULL AND name_key > $2 AND name_key <= $4
           ORDER BY name_key LIMIT $3) AS n
     CROSS JOIN LATERAL (",
    latest_of_n!(),
    ") AS v ORDER BY n.name_key"
);
/// A live name's latest version: the name, then its version by id. Also a `LATERAL` lookup (see
/// [`SQL_LIST_LATEST`]): as a plain join, PostgreSQL scanned the name's versions by (vault, name_key) and
/// filtered on the version id under every plan — a name with thousands of versions read up to all of them.
const SQL_FIND_LATEST: &str = concat!(
    "SELECT v.seq, n.display_name, ",
    vcols!(),
    " FROM kv_names AS n CROSS JOIN LATERAL (",
    latest_of_n!("seq, "),
    ") AS v WHERE n.vault = $1 AND n.name_key = $2 AND n.deleted_on IS NULL"
);
const SQL_FIND_VERSION: &str = concat!(
    "SELECT v.seq, n.display_name, ",
    vcols!(),
    " FROM kv_names AS n JOIN kv_versions AS v ON v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = $1 AND n.name_key = $2 AND n.deleted_on IS NULL AND v.version = $3"
);
/// Many reads in one query (see [`batch`]): for each (vault, name key, version or NULL for the latest) at
/// the same index of the three arrays, the live name's version, as [`SQL_FIND_LATEST`] or
/// [`SQL_FIND_VERSION`] would answer it, numbered by its index (from 1). Absent and deleted names return no
/// row. Each name and each version is an index lookup: a `LATERAL` subquery with its own `LIMIT` (one row
/// anyway), as in [`SQL_LIST_LATEST`]. (As a plain join, without statistics PostgreSQL hash-joined the
/// requested names with every live name.)
const SQL_GET_MANY: &str = concat!(
    "SELECT g.i, n.display_name, ",
    vcols!(),
    r#" FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS g(vault, name_key, version, i)
     CROSS JOIN LATERAL (SELECT vault, name_key, display_name, latest_version FROM kv_names
         WHERE vault = g.vault COLLATE "C" AND name_key = g.name_key COLLATE "C" AND deleted_on IS NULL
         LIMIT 1) AS n
     CROSS JOIN LATERAL (SELECT "#,
    version_columns!(),
    r#" FROM kv_versions
         WHERE vault = n.vault AND name_key = n.name_key
           AND version = COALESCE(g.version COLLATE "C", n.latest_version) LIMIT 1) AS v"#
);
/// A deleted name and its latest version, like [`SQL_FIND_LATEST`].
const SQL_FIND_DELETED: &str = concat!(
    "SELECT n.display_name, ",
    vcols!(),
    ", n.deleted_on, n.scheduled_purge FROM kv_names AS n CROSS JOIN LATERAL (",
    latest_of_n!(),
    ") AS v WHERE n.vault = $1 AND n.name_key = $2 AND n.deleted_on IS NOT NULL"
);
/// A page of a live name's versions in version-id order (the unique (vault, name_key, version) index). The
/// name is looked up first: as a plain join PostgreSQL may walk the versions and check the name for each, all
/// of a deleted name's versions before answering nothing.
const SQL_VERSIONS_OF_LIVE: &str = concat!(
    "SELECT n.display_name, ",
    listed_vcols!(),
    " FROM kv_names AS n CROSS JOIN LATERAL (SELECT ",
    version_columns!(),
    " FROM kv_versions
         WHERE vault = n.vault AND name_key = n.name_key AND version > $3 ORDER BY version LIMIT $4) AS v
     WHERE n.vault = $1 AND n.name_key = $2 AND n.deleted_on IS NULL
     ORDER BY v.version"
);
/// Every version of a live name in creation order (a backup restores its last version as the latest).
const SQL_ALL_VERSIONS_OF_LIVE: &str = concat!(
    "SELECT n.display_name, ",
    vcols!(),
    " FROM kv_names AS n JOIN kv_versions AS v ON v.vault = n.vault AND v.name_key = n.name_key
     WHERE n.vault = $1 AND n.name_key = $2 AND n.deleted_on IS NULL ORDER BY v.seq LIMIT $3"
);
/// A new version in one statement (one round trip, autocommit): create the name's row, or lock and point
/// the existing one at the new version unless it is deleted (an update that changes no indexed column:
/// HOT), then insert the version; its `seq` is drawn while the row is locked, so seqs order a name's
/// versions by commit. No row back: the name is deleted. A repeated version id fails the whole statement
/// (unique violation), leaving the name as it was. `$13` is the set's deadline ([`set_deadline_ms`]).
const SQL_PUT: &str = concat!(
    "WITH n AS (
         INSERT INTO kv_names (vault, name_key, display_name, latest_version)
         SELECT $1::text, $2::text, $12::text, $3::text
         ",
    before_deadline!(),
    "
         ON CONFLICT (vault, name_key) DO UPDATE
             SET display_name = EXCLUDED.display_name,
                 latest_version = EXCLUDED.latest_version
             WHERE kv_names.deleted_on IS NULL
         RETURNING 1)
     INSERT INTO kv_versions
         (vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp, created, updated)
     SELECT $1, $2, $3::text, $4::bytea, $5::text, $6::text, $7::boolean, $8::bigint,
            $9::bigint, $10::bigint, $11::bigint FROM n
     RETURNING 1"
);
/// The deadline of the set statements of a batch whose connection this side got now, in ms since the epoch by
/// this node's clock. The database checks it, on its own clock, before a set's statement writes anything:
/// `1 / (CASE WHEN clock_timestamp() < deadline THEN 1 ELSE 0 END) = 1` fails the statement with
/// `division_by_zero` (22012), an error no other part of it can raise. A statement that starts by then ends
/// within [`STATEMENT_LIMIT`], so it has committed or failed [`DEADLINE_MARGIN`] before this side gives up on it
/// (`limit`) and answers 503 — the database's clock may be that much behind this node's. Without the check, a
/// statement that reached the database later (held in a stalled backend's socket, or in the network) would
/// still commit, and could make an older version the latest over a newer one acknowledged meanwhile (a70-1).
pub(crate) fn set_deadline_ms(limit: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let within = limit
        .saturating_sub(STATEMENT_LIMIT)
        .saturating_sub(DEADLINE_MARGIN);
    now.saturating_add(within.as_millis() as i64)
}

/// How far behind this node's clock the database's may be for [`set_deadline_ms`] to hold.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Whether a set's statement failed because it reached the database after its deadline.
pub(crate) fn is_past_deadline(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::DIVISION_BY_ZERO)
}

pub(crate) fn past_deadline() -> StoreError {
    StoreError::Unavailable(
        "the set reached the database after its deadline and was not written (the database or the network \
         held it, or the database's clock is ahead of this node's)"
            .into(),
    )
}

const SQL_INSERT_VERSION: &str = "INSERT INTO kv_versions
     (vault, name_key, version, sealed, content_type, tags, enabled, nbf, exp, created, updated)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const SQL_LOCK_LIVE: &str = "SELECT 1 FROM kv_names
     WHERE vault = $1 AND name_key = $2 AND deleted_on IS NULL FOR UPDATE";
const SQL_UPDATE_VERSION: &str = "UPDATE kv_versions
     SET content_type = $2, tags = $3, enabled = $4, nbf = $5, exp = $6, updated = $7
     WHERE vault = $8 AND name_key = $9 AND version = $1";
const SQL_SOFT_DELETE: &str = "UPDATE kv_names SET deleted_on = $3, scheduled_purge = $4
     WHERE vault = $1 AND name_key = $2 AND deleted_on IS NULL";
const SQL_RECOVER: &str = "UPDATE kv_names SET deleted_on = NULL, scheduled_purge = NULL
     WHERE vault = $1 AND name_key = $2 AND deleted_on IS NOT NULL";
const SQL_PURGE_NAME: &str =
    "DELETE FROM kv_names WHERE vault = $1 AND name_key = $2 AND deleted_on IS NOT NULL";
const SQL_PURGE_VERSIONS: &str = "DELETE FROM kv_versions WHERE vault = $1 AND name_key = $2";
/// Delete (and lock, skipping rows another transaction holds) up to $2 names due at $1, the longest due first.
/// The chunk is picked over the purge index (ordered, so that the `LIMIT` stops the scan whatever the
/// statistics) and its rows are deleted by their tuple ids, which the lock keeps valid. (The `IN (…)` form
/// this replaced was planned as a hash join that read every due name for each chunk, and without statistics
/// read the whole table for every sweep, even with nothing due.)
const SQL_PURGE_DUE_NAMES: &str = "DELETE FROM kv_names WHERE ctid = ANY(ARRAY(
         SELECT ctid FROM kv_names
         WHERE scheduled_purge IS NOT NULL AND scheduled_purge <= $1
         ORDER BY scheduled_purge LIMIT $2 FOR UPDATE SKIP LOCKED))
     AND deleted_on IS NOT NULL AND scheduled_purge <= $1
     RETURNING vault, name_key";
const SQL_PURGE_DUE_VERSIONS: &str = r#"DELETE FROM kv_versions AS v
     USING unnest($1::text[], $2::text[]) AS g(vault, name_key)
     WHERE v.vault = g.vault COLLATE "C" AND v.name_key = g.name_key COLLATE "C""#;
const SQL_CLAIM_FOR_RESTORE: &str =
    "INSERT INTO kv_names (vault, name_key, display_name, latest_version)
     VALUES ($1, $2, $3, $4) ON CONFLICT (vault, name_key) DO NOTHING RETURNING 1";
const SQL_HEALTH: &str = "SELECT 1 FROM kv_names LIMIT 1";
const SQL_ACCESS_REVISION: &str = "SELECT revision FROM kv_access WHERE id = 1";

// ---------------------------------------------------------------------------------------------------------
// The store

/// The PostgreSQL [`SecretStore`]. See the module documentation.
pub struct PostgresStore {
    connector: Connector,
    pool: Arc<Pool>,
    /// Sets, written in batches ([`batch`]).
    sets: Arc<Batcher<Set>>,
    /// Reads of one version (`get_version`), in batches.
    gets: Arc<Batcher<Get>>,
    /// The dedicated connection holding the leader lock, while this node is the leader.
    leader: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// Writes of one name that take a connection each, one at a time ([`NameTurns`]).
    turns: NameTurns,
    /// One connection of its own for reading the access document: a node that cannot read it for a few
    /// seconds refuses every request, so requests holding every connection of `pool` (waiting for a row
    /// another session has locked) must not keep it from the read.
    access: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &describe_target(&self.connector.config))
            .field("sslmode", &self.connector.sslmode_label())
            .finish_non_exhaustive()
    }
}

/// `host:port/db` of a configuration (never the password), for messages: every host, comma-separated, when
/// there are several (a connection may go to any of them); of a host name with an `@` in it (the rest of a
/// password tokio-postgres cut at its first `@`, in a `key=value` string), only what follows the last `@`.
pub(crate) fn describe_target(config: &tokio_postgres::Config) -> String {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let count = hosts.len().max(addrs.len()).max(1);
    let targets: Vec<String> = (0..count)
        .map(|i| {
            let host = match (hosts.get(i), addrs.get(i)) {
                (Some(tokio_postgres::config::Host::Tcp(h)), _) => {
                    h.rsplit('@').next().unwrap_or_default().to_string()
                }
                (Some(tokio_postgres::config::Host::Unix(p)), _) => p.display().to_string(),
                (None, Some(ip)) => ip.to_string(),
                (None, None) => "localhost".into(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("{}/{db}", targets.join(","))
}

/// Whether every server the configuration may connect to is this machine: a Unix-domain socket, `localhost`
/// or a loopback address (the `hostaddr`, where one is given, is where the connection goes).
fn all_local(config: &tokio_postgres::Config) -> bool {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    (0..hosts.len().max(addrs.len())).all(|i| match (addrs.get(i), hosts.get(i)) {
        (Some(ip), _) => ip.is_loopback(),
        (None, Some(tokio_postgres::config::Host::Tcp(h))) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        (None, Some(tokio_postgres::config::Host::Unix(_))) | (None, None) => true,
    })
}

/// The warning for connections that a man in the middle can take over: TLS whose certificate is not checked
/// (`prefer`, `require` without `sslrootcert`), without `channel_binding=require`, to a server that is not on
/// this machine. `None` when verification or channel binding stops him, or the server is local.
pub(crate) fn unverified_tls_warning(
    config: &tokio_postgres::Config,
    verifies: &str,
) -> Option<&'static str> {
    let binding = config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require;
    (verifies == "nothing" && !binding && !all_local(config)).then_some(
        "connections to PostgreSQL are encrypted but the server's certificate is not verified, and without \
         channel_binding=require a man in the middle can read them and take the password (by showing a \
         certificate channel binding cannot use, or by asking for the password in cleartext). Set \
         sslmode=verify-full and sslrootcert=PATH (the CA of the server's certificate), or, with SCRAM \
         password authentication, channel_binding=require",
    )
}

/// Log once, at open, what protects the connections to the database (from the first connection): a warning
/// when `prefer` found no TLS on a server that is not on this machine, or when TLS is not verified and
/// channel binding not required (see [`unverified_tls_warning`]).
fn report_tls(connector: &Connector) {
    let target = describe_target(&connector.config);
    let sslmode = match connector.unix_socket_mode {
        Some(asked) if asked != tls::SslMode::Disable => format!(
            "{} (not used: TLS does not apply to a Unix-domain socket)",
            asked.as_str()
        ),
        _ => connector.mode.as_str().to_string(),
    };
    let sslmode = sslmode.as_str();
    let Some(tls) = connector.tls.as_ref().filter(|t| t.handshakes() > 0) else {
        if connector.mode == tls::SslMode::Prefer && !all_local(&connector.config) {
            tracing::warn!(
                %target,
                sslmode,
                "connections to PostgreSQL are not encrypted: the server offers no TLS. Turn ssl on in \
                 PostgreSQL and set sslmode=verify-full (and sslrootcert) in the store URL"
            );
        } else {
            tracing::info!(%target, sslmode, tls = "off", "PostgreSQL connections");
        }
        return;
    };
    let channel_binding = match connector.config.get_channel_binding() {
        tokio_postgres::config::ChannelBinding::Require => "require",
        tokio_postgres::config::ChannelBinding::Disable => "disable",
        _ => "prefer",
    };
    if let Some(warning) = unverified_tls_warning(&connector.config, tls.verifies()) {
        tracing::warn!(%target, sslmode, tls = "on", verified = tls.verifies(), channel_binding, "{warning}");
    } else {
        tracing::info!(
            %target,
            sslmode,
            tls = "on",
            verified = tls.verifies(),
            channel_binding,
            "PostgreSQL connections"
        );
    }
}

/// A connection string error (from [`prepare`]): the driver's error with its causes, which name options,
/// never values; the one that quotes a character of the string is cut before it. In a key=value string, an
/// unknown option right after an unquoted password is not named: a password with white space in it, not
/// quoted, reads as more options, and the "option" named would be a piece of the password (other unknown
/// options, typos, are named).
fn invalid_connection_string(e: &tokio_postgres::Error, conn: &str) -> String {
    let key_value = !(conn.starts_with("postgres://") || conn.starts_with("postgresql://"));
    let after_unquoted_password = |option: &str| match tls::key_value_spans(conn) {
        Ok(spans) => spans.windows(2).any(|pair| {
            let (start, end, key, _) = &pair[0];
            let unquoted = conn[*start..*end]
                .split_once('=')
                .is_none_or(|(_, value)| !value.trim_start().starts_with('\''));
            key.eq_ignore_ascii_case("password") && unquoted && pair[1].2 == option
        }),
        // Unreadable here: named only when the string has no password at all.
        Err(_) => crate::config::mentions_password(conn),
    };
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let said = c.to_string();
        let said = match said.find(" but got ") {
            Some(i) => said[..i].to_string(),
            None if key_value
                && said
                    .strip_prefix("unknown option `")
                    .and_then(|rest| rest.strip_suffix('`'))
                    .is_some_and(after_unquoted_password) =>
            {
                "an unknown option (not named, as it may be a piece of the password: a password with white \
                 space in it must be quoted, password='…')"
                    .to_string()
            }
            None => said,
        };
        text.push_str(": ");
        text.push_str(&said);
        cause = c.source();
    }
    text
}

/// The connector for `url`, checked but not connected: its settings, the driver's configuration (with this
/// store's defaults) and the TLS connector (certificate files read). Errors are the URL's or its TLS files'
/// (bad configuration), never a connection's.
pub fn prepare(url: &str) -> Result<Connector, String> {
    let invalid = |e: String| format!("invalid PostgreSQL connection string: {e}");
    let (rest, settings) = tls::split(url).map_err(invalid)?;
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| invalid(invalid_connection_string(&e, &rest)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(pool::CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("keyvault");
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    // Only hostaddr: tokio-postgres would have no name for the TLS handshake. The addresses serve as names
    // (rustls sends no SNI for an IP address), except where the name is checked.
    if config.get_hosts().is_empty() && !config.get_hostaddrs().is_empty() {
        if settings.mode == tls::SslMode::VerifyFull {
            return Err(invalid(
                "sslmode=verify-full checks the server's certificate against the host name, and there is \
                 only hostaddr: set host= to the name in the server's certificate"
                    .into(),
            ));
        }
        for ip in config.get_hostaddrs().to_vec() {
            config.host(ip.to_string());
        }
    }
    // PostgreSQL never offers TLS on a Unix-domain socket (libpq does not ask there either).
    let all_unix = !config.get_hosts().is_empty()
        && config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
    let mode = if all_unix {
        tls::SslMode::Disable
    } else {
        settings.mode
    };
    config.ssl_mode(tls::driver_mode(mode));
    let binding_required =
        config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require;
    let tls = tls::PgTls::new(&tls::TlsSettings {
        mode,
        ..settings.clone()
    })
    .map_err(|e| format!("PostgreSQL TLS: {e}"))?
    .map(|t| t.with_channel_binding_required(binding_required));
    Ok(Connector {
        config,
        tls,
        mode,
        unix_socket_mode: all_unix.then_some(settings.mode),
    })
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user:password@host:port/dbname?…`, or a libpq
    /// key=value string), apply pending schema migrations, and make the pool ready.
    ///
    /// Unless the URL says otherwise, connections time out after [`pool::CONNECT_TIMEOUT`], use TCP
    /// keepalives (so a vanished database is noticed), and identify as `application_name=keyvault`. TLS is
    /// libpq's `sslmode` (default `prefer`), `sslrootcert`, `sslcert`, `sslkey` and `sslsni` (see [`tls`]); a
    /// certificate file that cannot be used, or a server that fails the mode's checks, fails here.
    pub async fn open(url: &str) -> StoreResult<PostgresStore> {
        Self::open_with_pool(url, POOL_SIZE).await
    }

    /// Check `url` as [`PostgresStore::open`] would, without connecting: its settings and the TLS files it
    /// names. An error here is bad configuration (the message names settings and files, never values).
    pub fn check_url(url: &str) -> Result<(), String> {
        prepare(url).map(drop)
    }

    /// [`PostgresStore::open`] with a pool of at most `pool_size` connections (at least 1).
    pub async fn open_with_pool(url: &str, pool_size: usize) -> StoreResult<PostgresStore> {
        let connector = prepare(url).map_err(StoreError::Internal)?;

        let mut client = connector.connect().await?;
        report_tls(&connector);
        migrate(&mut client).await?;
        let pool = Arc::new(Pool::new(connector.clone(), pool_size.max(1)));
        pool.add_idle(client);
        let in_flight = batch::MAX_IN_FLIGHT.min(pool_size);
        let sets = Batcher::new(pool.clone(), in_flight);
        let gets = Batcher::new(pool.clone(), in_flight);
        tracing::debug!(target = %describe_target(&connector.config), "opened the PostgreSQL store");
        let access = Pool::new(connector.clone(), 1);
        Ok(PostgresStore {
            connector,
            pool,
            sets,
            gets,
            leader: tokio::sync::Mutex::new(None),
            turns: NameTurns::default(),
            access,
        })
    }

    /// Drop the idle connections and give up leadership (in-use connections close as they come back).
    pub async fn close(&self) {
        self.pool.clear();
        self.access.clear();
        self.leader.lock().await.take();
    }

    /// Run one operation on a pooled connection, bounded by [`OPERATION_TIMEOUT`].
    async fn run<T, F>(&self, op: F) -> StoreResult<T>
    where
        F: for<'c> AsyncFnOnce(&'c mut Conn) -> StoreResult<T>,
    {
        run_on(&self.pool, op).await
    }

    /// Run one operation that only reads on a pooled connection, bounded by [`OPERATION_TIMEOUT`], and once
    /// more on another if the database closed that connection under it ([`read_on_for`]).
    async fn read<T, M, F>(&self, op: M) -> StoreResult<T>
    where
        M: Fn() -> F,
        F: for<'c> AsyncFnOnce(&'c mut Conn) -> StoreResult<T>,
    {
        read_on_for(&self.pool, OPERATION_TIMEOUT, op).await
    }

    /// Statements that wrote more than one set (see [`batch`]).
    pub fn set_batches_run(&self) -> u64 {
        self.sets.batches_run()
    }

    /// Queries that read more than one version (see [`batch`]).
    pub fn get_batches_run(&self) -> u64 {
        self.gets.batches_run()
    }

    /// Sets per committed statement, and the statements' times (for metrics).
    fn write_metrics(&self) -> crate::metrics::StoreMetrics {
        let (sizes, seconds) = self.sets.metrics();
        crate::metrics::StoreMetrics {
            batch_size: Some(sizes),
            commit_seconds: Some(seconds),
            ..Default::default()
        }
    }
}

/// Writes of one name that each take a connection of their own (update, delete, recover, purge) run one at
/// a time on a node, the others waiting for their turn without a connection. They would wait for one another
/// in the database anyway (each locks the name's row); waiting there, requests retrying a name whose row
/// another session keeps locked (a stalled node, an open transaction) would hold every pooled connection,
/// `lock_timeout` each, and starve every other name's requests. A turn not had within [`OPERATION_TIMEOUT`]
/// is answered `Unavailable`, the write not tried.
type Turns = std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

#[derive(Default)]
struct NameTurns {
    turns: std::sync::Mutex<Turns>,
}

impl NameTurns {
    async fn run<T>(
        &self,
        vault: &str,
        key: &str,
        write: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let name = (vault.to_owned(), key.to_owned());
        let turn = self.lock().entry(name.clone()).or_default().clone();
        // Forgotten however this ends (its request dropped too), once no one else holds or awaits it. The
        // guard's is this write's only copy: with a second one, dropped after the guard, two writes ending at
        // once could each see the other's copy and leave the entry behind (a62-3).
        let forget = ForgetTurn {
            turns: self,
            name,
            turn: Some(turn),
        };
        let Some(turn) = forget.turn.as_deref() else {
            return Err(StoreError::Internal("a name's turn went missing".into()));
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, turn.lock()).await {
            Ok(_mine) => write.await,
            Err(_) => Err(StoreError::Unavailable(format!(
                "other writes of this name waited before it for {OPERATION_TIMEOUT:?} (its row is locked \
                 by another session, or the database is slow): not tried"
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes a name's turn from [`NameTurns`] when dropped, unless another write holds or awaits it.
struct ForgetTurn<'a> {
    turns: &'a NameTurns,
    name: (String, String),
    /// The write's only copy (taken, and dropped under the map's lock, when the guard is dropped).
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Drop for ForgetTurn<'_> {
    fn drop(&mut self) {
        let mut turns = self.turns.lock();
        // The map's and this guard's: every clone is made, and every guard's copy dropped, under the map's
        // lock, so two writes ending at once cannot each count the other's copy (a62-3, a64-4).
        if let Some(turn) = self.turn.take() {
            if Arc::strong_count(&turn) <= 2 {
                turns.remove(&self.name);
            }
            drop(turn);
        }
    }
}

/// Run one operation on a connection of `pool`: the wait for the connection is bounded by the pool
/// ([`pool::WAIT_TIMEOUT`]), the operation by [`OPERATION_TIMEOUT`] from then on, which is longer than what
/// the database gives any of its statements ([`SQL_SESSION_LIMITS`]): a statement still running when this
/// side gives up is one the database stopped answering for altogether (the network), never one that would
/// commit later.
async fn run_on<T, F>(pool: &Pool, op: F) -> StoreResult<T>
where
    F: for<'c> AsyncFnOnce(&'c mut Conn) -> StoreResult<T>,
{
    run_on_for(pool, OPERATION_TIMEOUT, op).await
}

/// [`run_on`] with the operation bounded by `limit` (more than [`STATEMENT_LIMIT`]).
async fn run_on_for<T, F>(pool: &Pool, limit: Duration, op: F) -> StoreResult<T>
where
    F: for<'c> AsyncFnOnce(&'c mut Conn) -> StoreResult<T>,
{
    let mut pooled = pool.get().await?;
    match tokio::time::timeout(limit, op(pooled.conn())).await {
        Ok(result) => pooled.finish(result),
        Err(_) => Err(StoreError::Unavailable(format!(
            "the database did not answer within {limit:?}"
        ))),
    }
}

/// [`run_on_for`] for an operation that only reads: when the pooled connection it ran on was closed under it
/// (the database ended the session: a restart, a failover, `pg_terminate_backend`), it runs once more on
/// another connection within what is left of `limit`. A read changes nothing, so running it twice is safe;
/// a write is never run again (its first try may have committed). The second try is on a connection opened for
/// it, within what is left of `limit`. A connection opened for this read that fails is not retried: the
/// database itself is unreachable, and the caller gets `Unavailable` at once.
/// `op` makes the operation (called once per try).
async fn read_on_for<T, M, F>(pool: &Pool, limit: Duration, op: M) -> StoreResult<T>
where
    M: Fn() -> F,
    F: for<'c> AsyncFnOnce(&'c mut Conn) -> StoreResult<T>,
{
    let mut pooled = pool.get().await?;
    // Bounded as `run_on_for` bounds an operation: from when it has its connection.
    let deadline = tokio::time::Instant::now() + limit;
    let result = match tokio::time::timeout_at(deadline, op()(pooled.conn())).await {
        Ok(result) => result,
        Err(_) => {
            return Err(StoreError::Unavailable(format!(
                "the database did not answer within {limit:?}"
            )));
        }
    };
    let lost =
        matches!(result, Err(StoreError::Unavailable(_))) && pooled.lost_while_pooled().await;
    let result = pooled.finish(result);
    if !lost {
        return result;
    }
    if let Err(e) = &result {
        tracing::debug!(error = %e, "a pooled PostgreSQL connection was closed under a read: reading again on another");
    }
    // On a connection opened for it: after a failover every idle connection may be as dead as the first
    // (one the server or a proxy reset looks open until it is written to).
    let late = || StoreError::Unavailable(format!("the database did not answer within {limit:?}"));
    let mut pooled = match tokio::time::timeout_at(deadline, pool.get_fresh()).await {
        Ok(pooled) => pooled?,
        Err(_) => return Err(late()),
    };
    match tokio::time::timeout_at(deadline, op()(pooled.conn())).await {
        Ok(result) => pooled.finish(result),
        Err(_) => Err(late()),
    }
}

/// Run one operation on a connection of `pool`, bounded by `limit`.
async fn run_on_within<T, F>(pool: &Pool, limit: Duration, op: F) -> StoreResult<T>
where
    F: for<'c> AsyncFnOnce(&'c mut Conn) -> StoreResult<T>,
{
    let work = async {
        let mut pooled = pool.get().await?;
        let result = op(pooled.conn()).await;
        pooled.finish(result)
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "the database did not answer within {limit:?}"
        ))),
    }
}

/// A message for a driver error (never bound values: PostgreSQL's messages name relations and
/// constraints; `detail`, which may quote key values, is left out).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Is this driver error about the connection or the server's availability (rather than the request)?
fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let class = &code.code()[..2];
            // 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
            // 53 insufficient resources, 57 operator intervention (shutdown, cancel, timeouts), 58 system error;
            // and a lock another session held past `lock_timeout` (55P03).
            // And a session ended by `idle_in_transaction_session_timeout` (25P03: this node stalled inside a
            // transaction, a74-3).
            // And a write refused by a read-only database (25006: a standby after a failover, a primary
            // demoted, `default_transaction_read_only`): the connection is dropped, and a new one may reach
            // the new primary (a89-3).
            matches!(class, "08" | "40" | "53" | "57" | "58")
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        }
        None => {
            if e.is_closed() {
                return true;
            }
            let text = e.to_string();
            // Kinds without a public accessor: I/O, connect, timeout, protocol-level failures.
            std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                || text.starts_with("error communicating")
                || text.starts_with("error connecting")
                || text.starts_with("timeout")
                || text.starts_with("unexpected message")
                || text.starts_with("error parsing response")
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_transient(&e) {
            StoreError::Unavailable(describe(&e))
        } else {
            StoreError::Internal(describe(&e))
        }
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

async fn migrate(client: &mut tokio_postgres::Client) -> StoreResult<()> {
    // Its statements may wait without bound (the timeouts are off below): a start stopped meanwhile (its
    // process gone) would leave the session waiting, and holding the schema lock, until the statement ended;
    // with this the server notices the client gone within a second (a91-1). PostgreSQL 14 and later know the
    // setting; an older server is not asked (it would log an error at every start: a93-4).
    let version: i32 = client
        .query_one("SHOW server_version_num", &[])
        .await?
        .try_get::<_, String>(0)?
        .parse()
        .unwrap_or(0);
    let checking = version >= 140_000
        && client
            .batch_execute("SET client_connection_check_interval = 1000")
            .await
            .is_ok();
    migrate_in_transaction(client).await?;
    if checking {
        client
            .batch_execute("RESET client_connection_check_interval")
            .await?;
    }
    Ok(())
}

async fn migrate_in_transaction(client: &mut tokio_postgres::Client) -> StoreResult<()> {
    let tx = client.transaction().await?;
    // A migration may rewrite large tables, and waits for another node's (the lock below): not bounded as
    // requests are (`SQL_SESSION_LIMITS`).
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await?;
    // Serialize migrations across nodes starting at once; released at commit or rollback.
    // Taken by tries rather than by a wait, so that a start held up by another session (a node's long
    // migration, an open transaction of an operator) says so in the log.
    let waiting = std::time::Instant::now();
    let mut told = false;
    loop {
        let taken: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&MIGRATION_LOCK_KEY],
            )
            .await?
            .try_get(0)?;
        if taken {
            break;
        }
        if !told && waiting.elapsed() >= MIGRATION_WAIT_TOLD_AFTER {
            told = true;
            tracing::warn!(
                lock = MIGRATION_LOCK_KEY,
                "waiting for the schema lock, which another session holds (another node migrating the \
                 store, or a session that took pg_advisory_lock({MIGRATION_LOCK_KEY})): the start goes on \
                 once it is released"
            );
        }
        tokio::time::sleep(MIGRATION_LOCK_RETRY).await;
    }
    if told {
        tracing::info!(waited = ?waiting.elapsed(), "took the schema lock");
    }
    // `IF NOT EXISTS` on an existing table is a NOTICE, which tokio-postgres logs at INFO (every node start and
    // every `keyvault rekey` would print one): this transaction reports warnings and errors only.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS kv_schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM kv_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "the database has schema version {current}, newer than this server supports ({SCHEMA_VERSION}): \
             a newer build has upgraded it, and an upgrade is one way; run that build (or a newer one), or \
             restore a copy taken before the upgrade"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO kv_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Rows

/// A [`VersionRow`] from the display name at column `at` followed by the version columns.
fn version_row(r: &Row, at: usize) -> StoreResult<VersionRow> {
    let tags = super::tags_from_json(r.try_get(at + 4)?)
        .map_err(|e| StoreError::Internal(format!("stored tags are not valid JSON: {e}")))?;
    Ok(VersionRow {
        name: r.try_get(at)?,
        version: r.try_get(at + 1)?,
        sealed: r.try_get(at + 2)?,
        content_type: r.try_get(at + 3)?,
        tags,
        enabled: r.try_get(at + 5)?,
        nbf: r.try_get(at + 6)?,
        exp: r.try_get(at + 7)?,
        created: r.try_get(at + 8)?,
        updated: r.try_get(at + 9)?,
    })
}

/// Columns read by [`version_row`] after the display name.
const NCOLS: usize = 10;

fn deleted_row(r: &Row) -> StoreResult<DeletedRow> {
    Ok(DeletedRow {
        latest: version_row(r, 0)?,
        deleted_on: r.try_get(NCOLS)?,
        scheduled_purge: r.try_get(NCOLS + 1)?,
    })
}

fn seq_and_row(r: &Row) -> StoreResult<(i64, VersionRow)> {
    Ok((r.try_get(0)?, version_row(r, 1)?))
}

// ---------------------------------------------------------------------------------------------------------
// Operations on one connection (or transaction)

type Stmts = std::collections::HashMap<&'static str, tokio_postgres::Statement>;

async fn find_live<C: tokio_postgres::GenericClient>(
    stmts: &mut Stmts,
    c: &C,
    vault: &str,
    key: &str,
    version: Option<&str>,
) -> StoreResult<Option<(i64, VersionRow)>> {
    let row = match version {
        None => {
            let st = Conn::prepare(stmts, c, SQL_FIND_LATEST).await?;
            c.query_opt(&st, &[&vault, &key]).await?
        }
        Some(version) => {
            let st = Conn::prepare(stmts, c, SQL_FIND_VERSION).await?;
            c.query_opt(&st, &[&vault, &key, &version]).await?
        }
    };
    row.as_ref().map(seq_and_row).transpose()
}

async fn find_deleted<C: tokio_postgres::GenericClient>(
    stmts: &mut Stmts,
    c: &C,
    vault: &str,
    key: &str,
) -> StoreResult<Option<DeletedRow>> {
    let st = Conn::prepare(stmts, c, SQL_FIND_DELETED).await?;
    c.query_opt(&st, &[&vault, &key])
        .await?
        .as_ref()
        .map(deleted_row)
        .transpose()
}

/// A page of a live name's versions after the version id `after`, in version-id order.
async fn versions_of_live<C: tokio_postgres::GenericClient>(
    stmts: &mut Stmts,
    c: &C,
    vault: &str,
    key: &str,
    after: &str,
    limit: i64,
) -> StoreResult<Vec<VersionRow>> {
    let st = Conn::prepare(stmts, c, SQL_VERSIONS_OF_LIVE).await?;
    c.query(&st, &[&vault, &key, &after, &limit])
        .await?
        .iter()
        .map(|r| version_row(r, 0))
        .collect()
}

/// The parameters of [`SQL_INSERT_VERSION`] ($1-$11; [`SQL_PUT`] adds the display name as $12).
fn version_params<'a>(
    vault: &'a (dyn tokio_postgres::types::ToSql + Sync),
    key: &'a (dyn tokio_postgres::types::ToSql + Sync),
    row: &'a VersionRow,
    tags: &'a Option<String>,
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    vec![
        vault,
        key,
        &row.version,
        &row.sealed,
        &row.content_type,
        tags,
        &row.enabled,
        &row.nbf,
        &row.exp,
        &row.created,
        &row.updated,
    ]
}

/// Insert one version of a name whose row this transaction holds; a version id it already has → Exists.
async fn insert_version<C: tokio_postgres::GenericClient>(
    stmts: &mut Stmts,
    c: &C,
    vault: &str,
    key: &str,
    row: &VersionRow,
) -> StoreResult<()> {
    let st = Conn::prepare(stmts, c, SQL_INSERT_VERSION).await?;
    let tags = tags_json(&row.tags)?;
    let inserted = c
        .execute(&st, &version_params(&vault, &key, row, &tags))
        .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Exists),
        Err(e) => Err(e.into()),
    }
}

async fn put(conn: &mut Conn, vault: &str, row: &VersionRow, deadline_ms: i64) -> StoreResult<()> {
    let key = name_key(&row.name);
    let Conn { client, stmts } = conn;
    let st = Conn::prepare(stmts, &*client, SQL_PUT).await?;
    let tags = tags_json(&row.tags)?;
    let mut params = version_params(&vault, &key, row, &tags);
    params.push(&row.name);
    params.push(&deadline_ms);
    let inserted = client.query_opt(&st, &params).await;
    match inserted {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StoreError::Deleted),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Exists),
        Err(e) if is_past_deadline(&e) => Err(past_deadline()),
        Err(e) => Err(e.into()),
    }
}

async fn update(
    conn: &mut Conn,
    vault: &str,
    key: &str,
    version: Option<&str>,
    patch: VersionPatch,
) -> StoreResult<Option<VersionRow>> {
    let Conn { client, stmts } = conn;
    let tx = client.transaction().await?;
    // Lock the name so a concurrent delete or set waits for this change (and vice versa).
    let lock = Conn::prepare(stmts, &tx, SQL_LOCK_LIVE).await?;
    if tx.query_opt(&lock, &[&vault, &key]).await?.is_none() {
        return Ok(None);
    }
    let Some((_, mut row)) = find_live(stmts, &tx, vault, key, version).await? else {
        return Ok(None);
    };
    patch.apply_to(&mut row);
    let tags = tags_json(&row.tags)?;
    let st = Conn::prepare(stmts, &tx, SQL_UPDATE_VERSION).await?;
    tx.execute(
        &st,
        &[
            &row.version,
            &row.content_type,
            &tags,
            &row.enabled,
            &row.nbf,
            &row.exp,
            &row.updated,
            &vault,
            &key,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

async fn soft_delete(
    conn: &mut Conn,
    vault: &str,
    key: &str,
    deleted_on: i64,
    scheduled_purge: i64,
) -> StoreResult<Option<DeletedRow>> {
    let Conn { client, stmts } = conn;
    let tx = client.transaction().await?;
    let st = Conn::prepare(stmts, &tx, SQL_SOFT_DELETE).await?;
    if tx
        .execute(&st, &[&vault, &key, &deleted_on, &scheduled_purge])
        .await?
        == 0
    {
        return Ok(None);
    }
    // A new statement: sees every version committed before this transaction took the row.
    let deleted = find_deleted(stmts, &tx, vault, key).await?;
    tx.commit().await?;
    Ok(deleted)
}

async fn recover(conn: &mut Conn, vault: &str, key: &str) -> StoreResult<Option<VersionRow>> {
    let Conn { client, stmts } = conn;
    let tx = client.transaction().await?;
    let st = Conn::prepare(stmts, &tx, SQL_RECOVER).await?;
    if tx.execute(&st, &[&vault, &key]).await? == 0 {
        return Ok(None);
    }
    let live = find_live(stmts, &tx, vault, key, None).await?;
    tx.commit().await?;
    Ok(live.map(|(_, row)| row))
}

/// Purges delete every version of their names, however many (a name's versions are not limited): not
/// bounded by `statement_timeout` (`SQL_SESSION_LIMITS`), which would keep a name with very many versions from
/// ever being purged; their lock waits still are. This side waits [`PURGE_LIMIT`] for one (a transaction
/// given up by this side is rolled back when its statement ends).
const SQL_UNBOUNDED_DELETE: &str = "SET LOCAL statement_timeout = 0";
/// How long a purge (by name, or a chunk of the sweep) may take on its connection.
const PURGE_LIMIT: Duration = Duration::from_secs(120);

async fn purge(conn: &mut Conn, vault: &str, key: &str) -> StoreResult<bool> {
    let Conn { client, stmts } = conn;
    let tx = client.transaction().await?;
    tx.batch_execute(SQL_UNBOUNDED_DELETE).await?;
    let st = Conn::prepare(stmts, &tx, SQL_PURGE_NAME).await?;
    if tx.execute(&st, &[&vault, &key]).await? == 0 {
        return Ok(false);
    }
    // New versions of this name need its row, which this transaction holds until commit.
    let st = Conn::prepare(stmts, &tx, SQL_PURGE_VERSIONS).await?;
    tx.execute(&st, &[&vault, &key]).await?;
    tx.commit().await?;
    Ok(true)
}

/// Purge at most [`PURGE_CHUNK`] names due at `now` in one transaction; returns how many.
async fn purge_expired_chunk(conn: &mut Conn, now: i64) -> StoreResult<u64> {
    let Conn { client, stmts } = conn;
    let tx = client.transaction().await?;
    tx.batch_execute(SQL_UNBOUNDED_DELETE).await?;
    let st = Conn::prepare(stmts, &tx, SQL_PURGE_DUE_NAMES).await?;
    let gone = tx.query(&st, &[&now, &PURGE_CHUNK]).await?;
    if gone.is_empty() {
        return Ok(0);
    }
    let mut vaults = Vec::with_capacity(gone.len());
    let mut keys = Vec::with_capacity(gone.len());
    for r in &gone {
        vaults.push(r.try_get::<_, String>(0)?);
        keys.push(r.try_get::<_, String>(1)?);
    }
    let st = Conn::prepare(stmts, &tx, SQL_PURGE_DUE_VERSIONS).await?;
    tx.execute(&st, &[&vaults, &keys]).await?;
    tx.commit().await?;
    Ok(gone.len() as u64)
}

async fn restore(conn: &mut Conn, vault: &str, versions: &[VersionRow]) -> StoreResult<()> {
    let (latest, key) = super::check_restore(versions)?;
    let Conn { client, stmts } = conn;
    let tx = client.transaction().await?;
    let st = Conn::prepare(stmts, &tx, SQL_CLAIM_FOR_RESTORE).await?;
    if tx
        .query_opt(&st, &[&vault, &key, &latest.name, &latest.version])
        .await?
        .is_none()
    {
        return Err(StoreError::Exists);
    }
    // In order: the last inserted gets the highest seq, as it would have had when it was set.
    for row in versions {
        insert_version(stmts, &tx, vault, &key, row).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait::async_trait]
impl SecretStore for PostgresStore {
    async fn put_version(&self, vault: &str, row: VersionRow) -> StoreResult<()> {
        let set = Set {
            vault: vault.to_owned(),
            key: name_key(&row.name),
            row,
        };
        self.sets.submit(set).await
    }

    async fn get_version(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<VersionRow>> {
        let get = Get {
            vault: vault.to_owned(),
            key: name_key(name),
            version: version.map(str::to_owned),
        };
        self.gets.submit(get).await
    }

    async fn update_version(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
        patch: VersionPatch,
    ) -> StoreResult<Option<VersionRow>> {
        let key = name_key(name);
        let write = self.run(async |c| update(c, vault, &key, version, patch).await);
        self.turns.run(vault, &key, write).await
    }

    async fn list_latest_upto(
        &self,
        vault: &str,
        after: Option<&str>,
        until: &str,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        let after = after.map(name_key).unwrap_or_default();
        self.read(|| {
            async |c| {
                let st = Conn::prepare(&mut c.stmts, &c.client, SQL_LIST_LATEST).await?;
                c.client
                    .query(&st, &[&vault, &after, &sql_limit(limit), &until])
                    .await?
                    .iter()
                    .map(|r| version_row(r, 0))
                    .collect()
            }
        })
        .await
    }

    async fn list_versions(
        &self,
        vault: &str,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        let key = name_key(name);
        // Every version id sorts after "" (ids are 32 hex digits).
        let after = after.unwrap_or_default();
        self.read(|| {
            async |c| {
                let Conn { client, stmts } = c;
                versions_of_live(stmts, &*client, vault, &key, after, sql_limit(limit)).await
            }
        })
        .await
    }

    async fn all_versions(
        &self,
        vault: &str,
        name: &str,
        at_most: usize,
    ) -> StoreResult<Vec<VersionRow>> {
        let key = name_key(name);
        let limit = i64::try_from(at_most).unwrap_or(i64::MAX);
        self.read(|| {
            async |c| {
                let Conn { client, stmts } = c;
                let st = Conn::prepare(stmts, &*client, SQL_ALL_VERSIONS_OF_LIVE).await?;
                client
                    .query(&st, &[&vault, &key, &limit])
                    .await?
                    .iter()
                    .map(|r| version_row(r, 0))
                    .collect()
            }
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
        let key = name_key(name);
        let write =
            self.run(async |c| soft_delete(c, vault, &key, deleted_on, scheduled_purge).await);
        self.turns.run(vault, &key, write).await
    }

    async fn get_deleted(&self, vault: &str, name: &str) -> StoreResult<Option<DeletedRow>> {
        let key = name_key(name);
        self.read(|| {
            async |c| {
                let Conn { client, stmts } = c;
                find_deleted(stmts, &*client, vault, &key).await
            }
        })
        .await
    }

    async fn list_deleted_upto(
        &self,
        vault: &str,
        after: Option<&str>,
        until: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeletedRow>> {
        let after = after.map(name_key).unwrap_or_default();
        self.read(|| {
            async |c| {
                let st = Conn::prepare(&mut c.stmts, &c.client, SQL_LIST_DELETED).await?;
                c.client
                    .query(&st, &[&vault, &after, &sql_limit(limit), &until])
                    .await?
                    .iter()
                    .map(deleted_row)
                    .collect()
            }
        })
        .await
    }

    async fn recover(&self, vault: &str, name: &str) -> StoreResult<Option<VersionRow>> {
        let key = name_key(name);
        let write = self.run(async |c| recover(c, vault, &key).await);
        self.turns.run(vault, &key, write).await
    }

    async fn purge(&self, vault: &str, name: &str) -> StoreResult<bool> {
        let key = name_key(name);
        let write = run_on_for(&self.pool, PURGE_LIMIT, async |c| {
            purge(c, vault, &key).await
        });
        self.turns.run(vault, &key, write).await
    }

    async fn purge_expired(&self, now: i64) -> StoreResult<u64> {
        let mut total = 0u64;
        loop {
            let n = run_on_for(&self.pool, PURGE_LIMIT, async |c| {
                purge_expired_chunk(c, now).await
            })
            .await?;
            total += n;
            if n < PURGE_CHUNK as u64 {
                if total > 0 {
                    tracing::debug!(
                        purged = total,
                        "purged deleted secrets past their retention"
                    );
                }
                return Ok(total);
            }
        }
    }

    async fn restore(&self, vault: &str, versions: Vec<VersionRow>) -> StoreResult<()> {
        self.run(async |c| restore(c, vault, &versions).await).await
    }

    fn metrics(&self) -> crate::metrics::StoreMetrics {
        self.write_metrics()
    }

    async fn health(&self) -> StoreResult<()> {
        // `/readyz` answers within the probe's limit, not an operation's.
        run_on_within(&self.pool, PROBE_TIMEOUT, async |c| {
            let st = Conn::prepare(&mut c.stmts, &c.client, SQL_HEALTH).await?;
            c.client.query_opt(&st, &[]).await?;
            Ok(())
        })
        .await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|| {
            async |c| {
                let row = c
                    .client
                    .query_opt("SELECT value FROM kv_meta WHERE key = $1", &[&key])
                    .await?;
                row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
            }
        })
        .await
    }

    async fn meta_insert(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        self.run(async |c| {
            c.client
                .execute(
                    "INSERT INTO kv_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&key, &value],
                )
                .await?;
            let row = c
                .client
                .query_one("SELECT value FROM kv_meta WHERE key = $1", &[&key])
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn any_sealed(&self) -> StoreResult<Option<SealedValue>> {
        self.read(|| {
            async |c| {
                let row = c
                    .client
                    .query_opt(
                        "SELECT vault, name_key, version, sealed FROM kv_versions LIMIT 1",
                        &[],
                    )
                    .await?;
                row.map(|r| -> Result<SealedValue, tokio_postgres::Error> {
                    Ok(SealedValue {
                        vault: r.try_get(0)?,
                        name_key: r.try_get(1)?,
                        version: r.try_get(2)?,
                        sealed: r.try_get(3)?,
                    })
                })
                .transpose()
                .map_err(Into::into)
            }
        })
        .await
    }

    async fn sealed_page(
        &self,
        after: Option<&SealedKey>,
        limit: usize,
    ) -> StoreResult<Vec<SealedValue>> {
        let empty = SealedKey {
            vault: String::new(),
            name_key: String::new(),
            version: String::new(),
        };
        let after = after.unwrap_or(&empty);
        let limit = sql_limit(limit);
        self.read(|| {
            async |c| {
                // A row comparison over the unique (vault, name_key, version) index (COLLATE "C": byte order).
                let rows = c
                    .client
                    .query(
                        "SELECT vault, name_key, version, sealed FROM kv_versions
                     WHERE (vault, name_key, version) > ($1, $2, $3)
                     ORDER BY vault, name_key, version LIMIT $4",
                        &[&after.vault, &after.name_key, &after.version, &limit],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SealedValue {
                            vault: r.try_get(0)?,
                            name_key: r.try_get(1)?,
                            version: r.try_get(2)?,
                            sealed: r.try_get(3)?,
                        })
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(Into::into)
            }
        })
        .await
    }

    async fn replace_sealed(&self, changes: Vec<SealedChange>) -> StoreResult<u64> {
        // One statement per change, each its own (implicit) transaction, pipelined on one connection: an
        // update locks one version row and holds no other lock while it waits, so it cannot deadlock with a
        // purge or a restore of the same name (which lock several), whatever the order. Only `sealed`
        // changes, and only where the row still holds the old bytes: a concurrent attribute update stands,
        // and a version purged or re-made meanwhile is skipped.
        self.run(async |c| {
            let st = c
                .client
                .prepare(
                    "UPDATE kv_versions SET sealed = $5
                     WHERE vault = $1 AND name_key = $2 AND version = $3 AND sealed = $4",
                )
                .await?;
            let client = &c.client;
            let st = &st;
            let updates = changes.iter().map(|ch| async move {
                client
                    .execute(
                        st,
                        &[&ch.vault, &ch.name_key, &ch.version, &ch.old, &ch.new],
                    )
                    .await
            });
            let counts = futures_util::future::try_join_all(updates).await?;
            Ok(counts.iter().sum())
        })
        .await
    }

    async fn meta_replace(&self, key: &str, old: &[u8], new: &[u8]) -> StoreResult<bool> {
        self.run(async |c| {
            let changed = c
                .client
                .execute(
                    "UPDATE kv_meta SET value = $3 WHERE key = $1 AND value = $2",
                    &[&key, &old, &new],
                )
                .await?;
            Ok(changed > 0)
        })
        .await
    }

    async fn meta_swap(&self, swaps: Vec<super::MetaSwap>) -> StoreResult<bool> {
        self.run(async |c| {
            let tx = c.client.transaction().await?;
            for swap in &swaps {
                // FOR UPDATE: a concurrent swap of the same key waits, then sees this one's outcome.
                let held: Option<Vec<u8>> = tx
                    .query_opt(
                        "SELECT value FROM kv_meta WHERE key = $1 FOR UPDATE",
                        &[&swap.key],
                    )
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                if held != swap.expect {
                    return Ok(false);
                }
            }
            for swap in &swaps {
                let changed = match &swap.set {
                    Some(value) => match &swap.expect {
                        Some(_) => {
                            tx.execute(
                                "UPDATE kv_meta SET value = $2 WHERE key = $1",
                                &[&swap.key, value],
                            )
                            .await?
                        }
                        None => {
                            tx.execute(
                                "INSERT INTO kv_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                                &[&swap.key, value],
                            )
                            .await?
                        }
                    },
                    None => {
                        tx.execute("DELETE FROM kv_meta WHERE key = $1", &[&swap.key])
                            .await?
                    }
                };
                // An absent key cannot be locked: another insert may have won the race (then give up).
                if changed == 0 && !(swap.set.is_none() && swap.expect.is_none()) {
                    return Ok(false);
                }
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn access_doc(&self) -> StoreResult<Option<super::AccessDoc>> {
        run_on_within(&self.access, ACCESS_READ_TIMEOUT, async |c| {
            let tx = c.client.transaction().await?;
            tx.batch_execute(SQL_ACCESS_READ_LIMIT).await?;
            let row = tx
                .query_opt("SELECT revision, doc FROM kv_access WHERE id = 1", &[])
                .await?;
            tx.commit().await?;
            row.map(|r| {
                Ok(super::AccessDoc {
                    revision: r.try_get(0)?,
                    doc: r.try_get(1)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn access_revision(&self) -> StoreResult<i64> {
        run_on_within(&self.access, ACCESS_READ_TIMEOUT, async |c| {
            let tx = c.client.transaction().await?;
            tx.batch_execute(SQL_ACCESS_READ_LIMIT).await?;
            let st = Conn::prepare(&mut c.stmts, &tx, SQL_ACCESS_REVISION).await?;
            let row = tx.query_opt(&st, &[]).await?;
            tx.commit().await?;
            Ok(match row {
                Some(r) => r.try_get(0)?,
                None => 0,
            })
        })
        .await
    }

    async fn put_access_doc(&self, expected: i64, doc: &[u8]) -> StoreResult<Option<i64>> {
        self.run(async |c| {
            let row = if expected == 0 {
                c.client
                    .query_opt(
                        "INSERT INTO kv_access (id, revision, doc) VALUES (1, 1, $1)
                         ON CONFLICT (id) DO NOTHING RETURNING revision",
                        &[&doc],
                    )
                    .await?
            } else {
                c.client
                    .query_opt(
                        "UPDATE kv_access SET revision = revision + 1, doc = $2, updated_at = now()
                         WHERE id = 1 AND revision = $1 RETURNING revision",
                        &[&expected, &doc],
                    )
                    .await?
            };
            row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
        })
        .await
    }

    async fn try_acquire_leadership(&self) -> StoreResult<bool> {
        let mut leader = self.leader.lock().await;
        if let Some(client) = leader.as_ref() {
            // Still the leader while the session that holds the lock is alive.
            let alive = !client.is_closed()
                && matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await,
                    Ok(Ok(_))
                );
            if alive {
                return Ok(true);
            }
            leader.take();
            tracing::warn!("lost the connection that held background-work leadership");
        }
        let client = self.connector.connect().await?;
        let attempt = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK_KEY]),
        )
        .await
        .map_err(|_| StoreError::Unavailable("taking the leader lock timed out".into()))??;
        let acquired: bool = attempt.try_get(0)?;
        if acquired {
            tracing::info!("this node now runs background work (PostgreSQL advisory lock taken)");
            *leader = Some(client);
        }
        Ok(acquired)
    }
}

#[cfg(test)]
mod tests;
