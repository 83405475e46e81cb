//! `keyvault rekey` (re-seal every stored value under the current key-encryption key) and `keyvault kek`
//! (make a new key file, show a key file's id): the server crate's store and keys, used as a library, with
//! the configuration `serve` reads (config file, environment, flags).

use crate::conn::{ConnArgs, Output};
use crate::errors::{CliError, CliResult, code};
use clap::{Args, Subcommand};
use keyvault_server::Config;
use keyvault_server::config::{StoreBackend, StoreLocation};
use keyvault_server::crypto::{CryptoError, Envelope, FileKeyProvider};
use keyvault_server::rekey::job::{RekeyJobView, RekeyStatus};
use keyvault_server::rekey::{AccessLocation, RekeyOptions, RekeyProgress, RekeyReport};
use keyvault_server::server::{KeyFileCreation, key_provider, open_store};
use keyvault_server::store::postgres::PostgresStore;
use std::io::Write;
use std::path::PathBuf;

/// Where the store is: the same settings (and variables) as `keyvault serve` (`rekey` and `snapshot`).
#[derive(Args)]
pub struct StoreArgs {
    /// TOML configuration file (the server's: `store`, `data_dir`, `kek_file`, `previous_kek_files`).
    #[arg(long, env = "KEYVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./keyvault-data].
    #[arg(long, env = "KEYVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Storage: `sqlite`, `sqlite:PATH` or `postgres://…` (TLS settings as for serve) [default: sqlite].
    #[arg(long, env = "KEYVAULT_STORE", hide_env_values = true)]
    store: Option<String>,
}

impl StoreArgs {
    /// The configuration file (if any) with the flags and variables over it.
    pub fn into_config(self) -> CliResult<Config> {
        let mut config = match &self.config {
            Some(path) => config_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.store {
            config.store = Some(StoreLocation(v));
        }
        Ok(config)
    }
}

/// The server's configuration file at `path` (exit code 2 if it cannot be read or parsed).
pub fn config_file(path: &std::path::Path) -> CliResult<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::new(
            code::BAD_INPUT,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let config = Config::from_toml(&text)
        .map_err(|e| CliError::new(code::BAD_INPUT, format!("{}: {e}", path.display())))?;
    crate::hardening::warn_if_config_exposes_password(path, &config);
    Ok(config)
}

#[derive(Args)]
#[command(
    after_help = "Rotating the key-encryption key (README: \"Rotating the key-encryption key\"):
  keyvault kek new /etc/keyvault/kek-new.key        # prints the new key's id
  # 1. every node: add the new file to previous_kek_files; restart
  # 2. every node: kek_file = the new file, previous_kek_files = [the old file]; restart
  keyvault rekey --config /etc/keyvault/keyvault.toml --dry-run
  keyvault rekey --config /etc/keyvault/keyvault.toml    # 3.
  keyvault rekey --config /etc/keyvault/keyvault.toml --check   # exit 0: nothing left under the old key
  # 4. every node: remove the old file from previous_kek_files; restart
A node must open whatever another node seals: so every node holds the new key (1) before any seals with it
(2), and every node seals with it (2) before rekey checks that nothing is left under the old one (3). A single
server can do 1 and 2 in one restart.

Online (--online): the running server re-seals, and this command follows its progress (GET /admin/rekey)
until it finishes: on SQLite the way to rotate without stopping the server; on PostgreSQL any one node can
run it. It needs a principal with the administration permission, e.g.
  keyvault rekey --online --dev-credentials ./keyvault-data --dry-run
  keyvault rekey --online --vault-url https://vault.example:8443 -o json
Offline (the default): this process opens the store itself. SQLite: stop the server first (rekey refuses a
database a server, or another rekey, holds). PostgreSQL: rekey runs while nodes serve (each version is
replaced only if it still holds what was read). Either way the output is the same: a summary, or with -o json
the report (-o defaults to the summary here, whatever standard output is). KEYVAULT_KEK and KEYVAULT_PREVIOUS_KEKS
are read as `serve` reads them. Backups made under the old key restore only while it is configured.

A rekey that completes moves the key check to the new key and records the old key ids as retired: a server
whose current key is a retired one is refused at start (make the new key current; the old one may stay
previous), and a running PostgreSQL node learns it within about a second and answers 503 to every write
that seals a value, and to backups. From its first re-seal until it completes, the store names the new key as the rekey's
target: a server without it is refused at start (configure it and run rekey again after an interruption).
On PostgreSQL, rekey then waits a few seconds and re-seals whatever a node still wrote under a retired key.

Exit codes: 0 done (or dry run; --check: nothing left under another key), 1 store failure or keys the store refuses (they do not open its key
check, or the current one was retired; online: the server's rekey failed), 4 online: a rekey is already
running on that server (--follow follows it), 5 online: the principal may not administer the vault, 2 bad configuration (a missing or malformed key file,
a bad KEYVAULT_KEK or KEYVAULT_PREVIOUS_KEKS, a bad config file), 6 finished with versions left under other
keys (listed; the key check stays under the old key, so it must stay configured; a dry run: versions it
cannot open; --check: anything left under another key), or with versions a node
wrote under a retired key during the rekey (re-sealed; restart that node with the new key current)."
)]
pub struct RekeyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The current key-encryption key file (must exist; ignored when KEYVAULT_KEK is set)
    /// [default: DATA_DIR/kek.key].
    #[arg(long, env = "KEYVAULT_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// Ask a running server to re-seal (the admin API, `POST /admin/rekey`): no downtime on SQLite, and no
    /// store credentials needed here. Takes the connection options of `principal` (--vault-url,
    /// --dev-credentials, … with the administration permission); the store options are not used.
    #[arg(long)]
    online: bool,
    /// With --online: start nothing; follow the server's rekey job (one already running, e.g. after this
    /// command was interrupted) until it finishes, or show the last one's report. Exit codes as for a rekey
    /// this command started.
    #[arg(long, requires = "online", conflicts_with = "dry_run")]
    follow: bool,
    /// Count the stored versions per key id; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// A dry run that exits 6 unless nothing is left under another key (every version, the key check and the
    /// access-control document under the current key): the gate before removing a previous key, also
    /// --online, where the server still holds both keys.
    #[arg(long, conflicts_with = "follow")]
    check: bool,
    /// Versions read and re-sealed per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=10000))]
    batch_size: u16,
    /// Connection (with --online) and output: `-o json` prints the report as one JSON object (for scripts);
    /// otherwise a summary for people (progress on standard error).
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum KekCommand {
    /// Create a new key-encryption key file (32 random bytes, hex, mode 0600); never overwrites a file.
    #[command(after_help = "Example:\n  keyvault kek new /etc/keyvault/kek-2026.key")]
    New {
        /// Where to write it (must not exist).
        path: PathBuf,
    },
    /// Print the id of the key in a key file (the id values, backups and errors name; not the key).
    #[command(after_help = "Example:\n  keyvault kek id /etc/keyvault/kek.key")]
    Id {
        /// The key file.
        path: PathBuf,
    },
}

pub fn run_kek(command: KekCommand, out: &mut impl Write) -> CliResult {
    match command {
        KekCommand::New { path } => {
            let made = FileKeyProvider::create_new(&path).map_err(|e| match e {
                CryptoError::KeyFileExists(_) => CliError::new(code::CONFLICT, e.to_string()),
                // A file that cannot be created (a missing directory, no permission): bad input, as for `rekey`.
                e => CliError::new(code::BAD_INPUT, e.to_string()),
            })?;
            writeln!(out, "created {} (key id {})", path.display(), made.kek_id())
                .map_err(crate::errors::io_error)
        }
        KekCommand::Id { path } => {
            // A missing or malformed key file: bad input, as `rekey` says of the same file.
            let key = FileKeyProvider::load_existing(&path)
                .map_err(|e| CliError::new(code::BAD_INPUT, e.to_string()))?;
            writeln!(out, "{}", key.kek_id()).map_err(crate::errors::io_error)
        }
    }
}

pub async fn run_rekey(mut args: RekeyArgs, out: &mut impl Write) -> CliResult {
    // The summary unless JSON is asked for (whatever standard output is: the progress goes to stderr).
    let json = matches!(args.conn.output, Some(Output::Json));
    let check = args.check;
    args.dry_run |= check;
    let report = if args.online {
        run_online(&args, json).await?
    } else {
        run_offline(
            args.store,
            args.kek_file,
            args.dry_run,
            args.batch_size,
            json,
        )
        .await?
    };
    finish(&report, json, out)?;
    if check {
        nothing_left(&report)?;
    }
    Ok(())
}

/// `--check`: whether a dry run found everything under the current key (exit 6 if not).
fn nothing_left(r: &RekeyReport) -> CliResult {
    let check_current = r.key_check_before.as_deref() == Some(r.current_kek_id.as_str());
    if r.remaining() == 0 && check_current && !r.access_document_pending() {
        return Ok(());
    }
    let mut left = Vec::new();
    if r.remaining() > 0 {
        left.push(format!("{} version(s) under other keys", r.remaining()));
    }
    if !check_current {
        left.push(format!(
            "the key check under key id {}",
            r.key_check_before.as_deref().unwrap_or("none")
        ));
    }
    if r.access_document_pending() {
        left.push("the access-control document tagged under another key".to_owned());
    }
    Err(CliError::new(
        code::PARTIAL,
        format!(
            "not everything is under the current key (id {}): {}; run keyvault rekey, and keep the previous \
             key configured until this check passes",
            r.current_kek_id,
            left.join(", ")
        ),
    ))
}

/// The rekey in this process, over the store the configuration names.
async fn run_offline(
    store_args: StoreArgs,
    kek_file: Option<PathBuf>,
    dry_run: bool,
    batch_size: u16,
    json: bool,
) -> CliResult<RekeyReport> {
    let mut config = store_args.into_config()?;
    if let Some(v) = kek_file {
        config.kek_file = Some(v);
    }
    let backend = config
        .store_backend()
        .map_err(|e| CliError::new(code::BAD_INPUT, e.to_string()))?;
    if let StoreBackend::Sqlite(path) = &backend
        && !path.exists()
    {
        return Err(CliError::new(
            code::BAD_INPUT,
            format!(
                "there is no database at {} (set --data-dir, --store or --config as for `keyvault serve`)",
                path.display()
            ),
        ));
    }
    // The URL's settings and TLS files are configuration too (exit code 2, as `serve`); only connecting
    // and what follows are not.
    if let StoreBackend::Postgres(url) = &backend {
        PostgresStore::check_url(url).map_err(|e| {
            CliError::new(
                code::BAD_INPUT,
                format!("cannot open the PostgreSQL store: {e}"),
            )
        })?;
    }
    let store = open_store(&config).await.map_err(|e| {
        let message = e.to_string();
        match &backend {
            StoreBackend::Sqlite(path) if message.contains("in use by another keyvault process") => {
                CliError::new(
                    code::OTHER,
                    format!(
                        "the database {} is in use by another process (its lock file is held): a running \
                         keyvault server or another keyvault rekey; on SQLite, rekey needs the database to \
                         itself (stop the server, or wait for the other rekey to finish)",
                        path.display()
                    ),
                )
            }
            _ => CliError::new(code::OTHER, message),
        }
    })?;
    // Keys are configuration (a missing or malformed key file, a bad variable): exit code 2.
    let provider = key_provider(&config, store.as_ref(), KeyFileCreation::Never)
        .await
        .map_err(|e| CliError::new(code::BAD_INPUT, e.to_string()))?;
    let envelope = Envelope::new(provider);
    let table = !json;
    if table {
        let previous = envelope.previous_kek_ids();
        stderr_line!(
            "current key id {}; previous key ids: {}",
            envelope.current_kek_id(),
            if previous.is_empty() {
                "none".to_string()
            } else {
                previous.join(", ")
            }
        );
    }
    // The access-control document's tag moves to the current key too: in the store when it is shared,
    // else the data directory's access.json.
    let binding =
        keyvault_server::admin::tagged::Binding::new(&config.vault_name, &config.tenant_id);
    let access = if store.is_shared() {
        AccessLocation::Store(binding)
    } else {
        AccessLocation::File(
            config.data_dir.join(keyvault_server::admin::ACCESS_FILE),
            binding,
        )
    };
    let options = RekeyOptions {
        batch_size: usize::from(batch_size),
        dry_run,
        access,
    };
    let report = keyvault_server::rekey::rekey(store.as_ref(), &envelope, &options, |p| {
        if table {
            stderr_line!("  {}", progress_line(p));
        }
    })
    .await
    .map_err(|e| CliError::new(code::OTHER, e))?;
    drop(store);
    Ok(report)
}

/// How often `--online` asks the server how its rekey is going: soon at first (a small store is done in
/// moments), then every 2 s at most (each ask is a request the server audits).
const FIRST_POLL: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The rekey run by the server (`POST /admin/rekey`), followed until it finishes (`GET /admin/rekey`).
async fn run_online(args: &RekeyArgs, json: bool) -> CliResult<RekeyReport> {
    use keyvault_secrets::http::Method;
    let conn = args.conn.connect(None)?;
    let body = serde_json::json!({
        "dryRun": args.dry_run,
        "batchSize": args.batch_size,
    });
    let started: RekeyJobView = if args.follow {
        let view = match crate::admin::call(&conn, Method::GET, "/admin/rekey", None).await {
            Ok(v) => job_view(v)?,
            Err(e) if e.code == code::NOT_FOUND => {
                return Err(CliError::new(
                    code::NOT_FOUND,
                    format!(
                        "{} has run no rekey since it started: nothing to follow",
                        conn.vault()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        if !json {
            stderr_line!(
                "following rekey job {} on {}{} ({})",
                view.id,
                conn.vault(),
                if view.dry_run { " (dry run)" } else { "" },
                view.status.as_str()
            );
        }
        view
    } else {
        let started = crate::admin::call(&conn, Method::POST, "/admin/rekey", Some(body))
            .await
            .map_err(|e| {
                if e.code == code::CONFLICT {
                    let message = e.message.trim_end_matches('.');
                    CliError::new(
                        e.code,
                        format!("{message} (follow it: keyvault rekey --online --follow)"),
                    )
                } else {
                    e
                }
            })?;
        let started = job_view(started)?;
        if !json {
            stderr_line!(
                "rekey job {} started on {}{}",
                started.id,
                conn.vault(),
                if started.dry_run { " (dry run)" } else { "" }
            );
        }
        started
    };
    let mut shown: Option<(u64, u64)> = None;
    let mut poll = FIRST_POLL;
    let gone = || {
        CliError::new(
            code::OTHER,
            format!(
                "the server no longer shows rekey job {} (it restarted, or another rekey started): run \
                 keyvault rekey again (what was re-sealed stays re-sealed)",
                started.id
            ),
        )
    };
    loop {
        // A 404: the server has no job at all, so it restarted since.
        let view = match crate::admin::call(&conn, Method::GET, "/admin/rekey", None).await {
            Ok(v) => job_view(v)?,
            Err(e) if e.code == code::NOT_FOUND => return Err(gone()),
            Err(e) => return Err(e),
        };
        if view.id != started.id || view.dry_run != started.dry_run {
            return Err(gone());
        }
        let seen = (view.progress.scanned, view.progress.resealed);
        if !json && shown != Some(seen) && view.progress.scanned > 0 {
            stderr_line!(
                "  {}",
                progress_line(&RekeyProgress {
                    scanned: view.progress.scanned,
                    resealed: view.progress.resealed,
                    dry_run: view.dry_run,
                })
            );
            shown = Some(seen);
        }
        match view.status {
            RekeyStatus::Running => {
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(MAX_POLL);
            }
            RekeyStatus::Failed => {
                return Err(CliError::new(
                    code::OTHER,
                    format!(
                        "the server's rekey failed: {}",
                        view.error.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            RekeyStatus::Succeeded | RekeyStatus::Incomplete => {
                return view.report.ok_or_else(|| {
                    CliError::new(code::OTHER, "the server's finished rekey has no report")
                });
            }
        }
    }
}

fn job_view(v: serde_json::Value) -> CliResult<RekeyJobView> {
    serde_json::from_value(v).map_err(|e| {
        CliError::new(
            code::OTHER,
            format!("the server's rekey job is not in the expected shape ({e})"),
        )
    })
}

/// Prints the report and turns what is left into the exit code.
fn finish(report: &RekeyReport, json: bool, out: &mut impl Write) -> CliResult {
    if json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| CliError::new(code::OTHER, format!("cannot encode the report: {e}")))?;
        writeln!(out, "{text}").map_err(crate::errors::io_error)?;
    } else {
        print_summary(report, out).map_err(crate::errors::io_error)?;
    }
    if report.dry_run && report.failed > 0 {
        // The gate before dropping a key: a script reads the exit code, not the summary.
        return Err(CliError::new(
            code::PARTIAL,
            format!(
                "{} version(s) could not be opened with these keys (listed in the report): a rekey would leave them \
                 where they are, and the key check with them; configure the key they name (or find out who \
                 wrote them) before removing any key",
                report.failed
            ),
        ));
    }
    if report.dry_run || report.complete() {
        return Ok(());
    }
    if report.late > 0 && report.failed == 0 && report.remaining() == 0 {
        return Err(CliError::new(
            code::PARTIAL,
            format!(
                "{} version(s) were written under a retired key during the rekey: some node still had it \
                 current (each node must make the new key current before rekey runs), or runs a build older \
                 than key rotation (one without previous_kek_files), which does not learn that a key was \
                 retired and goes on writing under it. They were re-sealed and the key check is under key id \
                 {}; restart every node with key id {} current (upgrade an older build first), then run \
                 keyvault rekey again, and remove the old key only once it finds nothing left",
                report.late,
                report.key_check_after.as_deref().unwrap_or("none"),
                report.current_kek_id,
            ),
        ));
    }
    Err(CliError::new(
        code::PARTIAL,
        format!(
            "{} version(s) remain under other keys ({} could not be opened){}: the key check is under key \
             id {}, so keep the previous key configured; fix what is listed, then run keyvault rekey again",
            report.remaining(),
            report.failed,
            if report.access_document_pending() {
                ", and the access-control document is still tagged under another key"
            } else {
                ""
            },
            report.key_check_after.as_deref().unwrap_or("none"),
        ),
    ))
}

/// The progress line of a page (a dry run changes nothing: it says what it would do).
fn progress_line(p: &RekeyProgress) -> String {
    if p.dry_run {
        format!("read {} versions, would re-seal {}", p.scanned, p.resealed)
    } else {
        format!("read {} versions, re-sealed {}", p.scanned, p.resealed)
    }
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "no versions".to_string();
    }
    map.iter()
        .map(|(id, n)| format!("{id}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The access-control document's line of the summary (none when it was not looked at).
fn access_line(r: &RekeyReport) -> Option<String> {
    let a = r.access_document.as_ref()?;
    let Some(before) = &a.kek_id_before else {
        return Some("access-control document: none".to_string());
    };
    let after = a.kek_id_after.as_deref().unwrap_or("none");
    Some(if r.dry_run && before != &r.current_kek_id {
        format!(
            "access-control document: tagged under key id {before}; would be re-tagged under key id {}",
            r.current_kek_id
        )
    } else if before == after {
        format!("access-control document: tagged under key id {before}")
    } else {
        format!("access-control document: re-tagged, key id {before} -> {after}")
    })
}

fn print_summary(r: &RekeyReport, out: &mut impl Write) -> std::io::Result<()> {
    if let Some(line) = access_line(r) {
        writeln!(out, "{line}")?;
    }
    if r.dry_run {
        writeln!(out, "dry run: nothing was changed")?;
        writeln!(out, "versions per key id: {}", counts(&r.before))?;
        writeln!(
            out,
            "would re-seal {} version(s) under key id {}; {} already under it; {} cannot be opened",
            r.resealed, r.current_kek_id, r.already_current, r.failed
        )?;
    } else {
        writeln!(
            out,
            "re-sealed {} version(s) under key id {}; {} already under it; {} changed meanwhile (skipped); \
             {} cannot be opened",
            r.resealed, r.current_kek_id, r.already_current, r.skipped, r.failed
        )?;
        writeln!(out, "versions per key id before: {}", counts(&r.before))?;
        writeln!(out, "versions per key id after:  {}", counts(&r.after))?;
        writeln!(
            out,
            "key check: {} -> {}",
            r.key_check_before.as_deref().unwrap_or("none"),
            r.key_check_after.as_deref().unwrap_or("none")
        )?;
        if !r.retired.is_empty() {
            writeln!(
                out,
                "retired key ids: {} (no server may make them current again)",
                r.retired.join(", ")
            )?;
        }
        if r.late > 0 {
            writeln!(
                out,
                "{} version(s) were written under a retired key while the rekey ran (a node still had it \
                 current)",
                r.late
            )?;
        }
        if r.complete() && !r.previous_kek_ids.is_empty() {
            writeln!(
                out,
                "every version is under the current key: previous keys may now be removed from the \
                 configuration once every server has started with the current key and its audit log goes on \
                 under it (after an offline rekey: start once with both keys first; a start without the old key \
                 is refused until then), and backups made under them will then no longer restore"
            )?;
        }
    }
    for f in &r.failures {
        writeln!(
            out,
            "cannot open {}/{}/{} (key id {}): {}",
            f.vault, f.name_key, f.version, f.kek_id, f.error
        )?;
    }
    if r.failed as usize > r.failures.len() {
        writeln!(out, "… and {} more", r.failed as usize - r.failures.len())?;
    }
    Ok(())
}
