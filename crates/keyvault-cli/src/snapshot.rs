//! `keyvault snapshot --out DIR`: an online backup of a SQLite vault (the database, copied while the server
//! may be writing, and the data directory's `access.json`), with the configuration `serve` reads.

use crate::errors::{CliError, CliResult, code};
use crate::rekey::StoreArgs;
use clap::{Args, ValueEnum};
use keyvault_server::admin::ACCESS_FILE;
use keyvault_server::config::StoreBackend;
use keyvault_server::store::sqlite::snapshot::{SnapshotError, SnapshotReport, snapshot, sync_dir};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The database's name in a snapshot directory (the name `serve` gives it in a data directory).
const DATABASE_FILE: &str = "vault.db";

/// What a snapshot does not hold (and why), for the summary and the report.
const NOT_COPIED: [&str; 5] = [
    "the key-encryption key (back it up apart)",
    "the token-signing key (re-made at start; tokens it signed stop working)",
    "TLS files and dev credentials (re-made or re-issued)",
    "the audit log",
    "store.initialized (the data directory's own record)",
];

#[derive(Args)]
#[command(after_help = "Backing up a vault (README: \"Backing up a vault\"):
  keyvault snapshot --data-dir /var/lib/keyvault --out /backups/keyvault-$(date +%F)
  keyvault snapshot --config /etc/keyvault/keyvault.toml --out /backups/kv-1 -o json
The server may be running and writing: the database is read through a separate read-only connection (its lock
is not taken, nothing is written to it) and copied with SQLite's VACUUM INTO, as it was when the copy began
(every write acknowledged before then is in it), then checked (quick_check) and synced. DIR must not exist or
be empty; it gets vault.db and, when the data directory has one, access.json (principals and role assignments
made through the admin API), each 0600, DIR 0700. Nothing is overwritten.

Not in a snapshot: the key-encryption key, which opens the values (keep it backed up apart, never next to the
snapshots: the report names the key ids the copy needs), the token-signing key, TLS files and dev credentials
(re-made or re-issued), the audit log and store.initialized.

Restore: stop the server; remove vault.db-wal and vault.db-shm from the data directory; put the snapshot's
vault.db (and access.json) there; start it with the key-encryption key the report names.

A PostgreSQL store is refused (exit 2): back it up with pg_dump or a base backup.

The copy is made under a temporary name in DIR and named vault.db only once checked; Ctrl-C, SIGTERM or
SIGHUP removes it (exit 130); a SIGKILL leaves the temporary .vault.db.partial-PID file, never a vault.db.

Exit codes: 0 done, 1 the copy failed (reading the database, writing the copy, or the copy's check), 2 bad
input (no database, not a vault's database, a PostgreSQL store, a bad config file, DIR not a directory, not
creatable or another user's), 4 DIR is not empty, 130 interrupted.")]
pub struct SnapshotArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The directory to write the snapshot into (must not exist, or be empty; made 0700).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// What to print (whatever standard output is).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A summary for people.
    Table,
    /// The report as one JSON object (for scripts).
    Json,
}

/// What `-o json` prints.
#[derive(serde::Serialize)]
struct Report {
    /// The snapshot directory.
    path: PathBuf,
    /// The database that was copied.
    source: PathBuf,
    /// The copy.
    database: SnapshotReport,
    /// The copy of the data directory's access.json, if it had one.
    access_file: Option<PathBuf>,
    /// When the copy's read began (RFC 3339).
    started_at: String,
    /// Every key id the copy needs (its key check's, its values', a pending rekey's target), sorted.
    kek_ids_needed: Vec<String>,
    not_copied: [&'static str; 5],
    reminder: String,
}

pub fn run_snapshot(args: SnapshotArgs, out: &mut impl Write) -> CliResult {
    let json = args.output == Format::Json;
    let config = args.store.into_config()?;
    let backend = config
        .store_backend()
        .map_err(|e| CliError::new(code::BAD_INPUT, e.to_string()))?;
    let source = match backend {
        StoreBackend::Sqlite(path) => path,
        // The URL is not repeated: it may hold a password.
        StoreBackend::Postgres(_) => {
            return Err(CliError::new(
                code::BAD_INPUT,
                "keyvault snapshot copies a SQLite database, and this store is PostgreSQL: back it up with \
                 PostgreSQL's own tools (pg_dump, or a base backup with WAL archiving; README \"Backing up a \
                 vault\"), and keep the key-encryption key apart from those backups",
            ));
        }
    };
    if !source.exists() {
        return Err(CliError::new(
            code::BAD_INPUT,
            format!(
                "there is no database at {} (set --data-dir, --store or --config as for `keyvault serve`)",
                source.display()
            ),
        ));
    }
    let made_dir = prepare_dir(&args.out)?;
    let access_source = config.data_dir.join(ACCESS_FILE);
    let result = take_unless_interrupted(&source, &args.out, &access_source);
    let (database, access_file) = match result {
        Ok(done) => done,
        Err(e) => {
            // Nothing half-made is left to be taken for a snapshot.
            keyvault_server::store::sqlite::snapshot::remove_partial(&args.out.join(DATABASE_FILE));
            for name in [DATABASE_FILE, ACCESS_FILE] {
                let _ = std::fs::remove_file(args.out.join(name));
            }
            if made_dir {
                let _ = std::fs::remove_dir(&args.out);
            }
            return Err(e);
        }
    };
    // Paths in the report as absolute ones (a script may read it from elsewhere).
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (out_dir, source) = (absolute(&args.out), absolute(&source));
    let mut database = database;
    database.path = absolute(&database.path);
    let access_file = access_file.map(|p| absolute(&p));
    let mut needed: Vec<String> = database
        .key_check_kek_id
        .iter()
        .chain(database.rekey_target_kek_id.iter())
        .chain(database.versions_per_kek_id.keys())
        .filter(|id| id.as_str() != "unknown")
        .cloned()
        .collect();
    needed.sort();
    needed.dedup();
    let reminder = format!(
        "The key-encryption key is not in the snapshot: keep a backup of key id {} apart from the snapshots \
         (never beside them); without it the copy opens no value, and with it anyone holding the copy opens \
         every value",
        if needed.is_empty() {
            "(none recorded yet)".to_string()
        } else {
            needed.join(", ")
        }
    );
    let report = Report {
        path: out_dir,
        source,
        started_at: rfc3339(database.started_at),
        database,
        access_file,
        kek_ids_needed: needed,
        not_copied: NOT_COPIED,
        reminder,
    };
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::new(code::OTHER, format!("cannot encode the report: {e}")))?;
        writeln!(out, "{text}").map_err(crate::errors::io_error)
    } else {
        print_summary(&report, out).map_err(crate::errors::io_error)
    }
}

/// Makes `dir` (0700, with its parents) or checks that it is an empty directory (then made 0700). Returns
/// whether it was made here.
fn prepare_dir(dir: &Path) -> CliResult<bool> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(CliError::new(
            code::BAD_INPUT,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Ok(meta) => {
            // Another user's directory (even 0700 afterwards, it stays theirs): they could swap the copy
            // for a link to a place of their choosing while it is made, or replace it before a restore.
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                let me = rustix::process::geteuid().as_raw();
                if meta.uid() != me {
                    return Err(CliError::new(
                        code::BAD_INPUT,
                        format!(
                            "{} belongs to another user (uid {}): a snapshot goes into a directory of this \
                             user's own (another could swap the copy for a link while it is made)",
                            dir.display(),
                            meta.uid()
                        ),
                    ));
                }
            }
            let mut entries = std::fs::read_dir(dir).map_err(|e| {
                CliError::new(
                    code::BAD_INPUT,
                    format!("cannot read the directory {}: {e}", dir.display()),
                )
            })?;
            if entries.next().is_some() {
                return Err(CliError::new(
                    code::CONFLICT,
                    format!(
                        "{} is not empty: a snapshot goes into a new or empty directory (nothing is \
                         overwritten)",
                        dir.display()
                    ),
                ));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                    |e| {
                        CliError::new(
                            code::BAD_INPUT,
                            format!("cannot make {} private (0700): {e}", dir.display()),
                        )
                    },
                )?;
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(|e| {
                CliError::new(
                    code::BAD_INPUT,
                    format!("cannot create the directory {}: {e}", dir.display()),
                )
            })?;
            Ok(true)
        }
        Err(e) => Err(CliError::new(
            code::BAD_INPUT,
            format!("cannot read {}: {e}", dir.display()),
        )),
    }
}

/// [`take`] on a thread of its own, while this one waits for it or for Ctrl-C, SIGTERM or SIGHUP: then the
/// command ends at once (exit 130), and the caller removes what was made (the copy under its temporary name
/// included: a file named vault.db is only ever a whole, checked copy). A SIGKILL leaves the temporary file.
fn take_unless_interrupted(
    source: &Path,
    dir: &Path,
    access_source: &Path,
) -> CliResult<(SnapshotReport, Option<PathBuf>)> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the runtime: {e}")))?;
    let (source, dir, access_source) = (
        source.to_path_buf(),
        dir.to_path_buf(),
        access_source.to_path_buf(),
    );
    rt.block_on(async move {
        let listen = |kind: SignalKind| {
            signal(kind).map_err(|e| CliError::other(format!("cannot listen for signals: {e}")))
        };
        let (mut interrupt, mut terminate, mut hangup) = (
            listen(SignalKind::interrupt())?,
            listen(SignalKind::terminate())?,
            listen(SignalKind::hangup())?,
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(take(&source, &dir, &access_source));
        });
        let interrupted = || {
            Err(CliError::new(
                code::INTERRUPTED,
                "interrupted: the unfinished snapshot was removed",
            ))
        };
        tokio::select! {
            done = rx => done.unwrap_or_else(|_| Err(CliError::other("the snapshot stopped"))),
            _ = interrupt.recv() => interrupted(),
            _ = terminate.recv() => interrupted(),
            _ = hangup.recv() => interrupted(),
        }
    })
}

/// The database's copy, then access.json's; both synced, with the directory.
fn take(
    source: &Path,
    dir: &Path,
    access_source: &Path,
) -> CliResult<(SnapshotReport, Option<PathBuf>)> {
    let database = snapshot(source, &dir.join(DATABASE_FILE)).map_err(|e| {
        let code = match &e {
            SnapshotError::NotAVault(_) | SnapshotError::Target(_) => code::BAD_INPUT,
            SnapshotError::TargetExists(_) => code::CONFLICT,
            SnapshotError::Source(_) | SnapshotError::Copy(_) => code::OTHER,
        };
        CliError::new(code, e.to_string())
    })?;
    let access_file = copy_access_file(access_source, &dir.join(ACCESS_FILE))?;
    // The directory's entry in its parent (when it was just made).
    let parent = dir.parent().unwrap_or(Path::new("."));
    for d in [dir, parent] {
        sync_dir(d).map_err(|e| {
            CliError::new(
                code::OTHER,
                format!("cannot sync the directory {}: {e}", d.display()),
            )
        })?;
    }
    Ok((database, access_file))
}

/// Copies access.json (the server replaces it whole, by a rename, so a read sees one version) into a new
/// owner-only file, synced. None when the data directory has none.
fn copy_access_file(from: &Path, to: &Path) -> CliResult<Option<PathBuf>> {
    let bytes = match std::fs::read(from) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::new(
                code::OTHER,
                format!("cannot read {}: {e}", from.display()),
            ));
        }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(to)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()));
    written
        .map_err(|e| CliError::new(code::OTHER, format!("cannot write {}: {e}", to.display())))?;
    Ok(Some(to.to_path_buf()))
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(crate::when::format)
        .unwrap_or_else(|_| unix.to_string())
}

fn print_summary(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let d = &r.database;
    writeln!(
        out,
        "snapshot of {} in {} (as of {}: every write acknowledged before then is in it)",
        r.source.display(),
        r.path.display(),
        r.started_at
    )?;
    writeln!(
        out,
        "  {}: {} name(s) ({} soft-deleted), {} version(s), {} bytes; quick_check ok",
        d.path.display(),
        d.names,
        d.deleted_names,
        d.versions,
        d.bytes
    )?;
    match &r.access_file {
        Some(p) => writeln!(
            out,
            "  {}: principals and role assignments made through the admin API",
            p.display()
        )?,
        None => writeln!(
            out,
            "  no access.json in the data directory (nothing was made through the admin API): none copied"
        )?,
    }
    let per_key = if d.versions_per_kek_id.is_empty() {
        "no versions".to_string()
    } else {
        d.versions_per_kek_id
            .iter()
            .map(|(id, n)| format!("{id}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        out,
        "  key check under key id {}; versions per key id: {per_key}{}",
        d.key_check_kek_id.as_deref().unwrap_or("none"),
        match &d.rekey_target_kek_id {
            Some(t) => format!("; an unfinished rekey's target: {t}"),
            None => String::new(),
        }
    )?;
    writeln!(out, "  not copied: {}", r.not_copied.join(", "))?;
    writeln!(out, "{}", r.reminder)
}
