//! `keyvault audit verify`: the audit log's hash chain, and with the server's keys its lines' MACs.

use crate::errors::{CliError, CliResult, io_error};
use clap::Args;
use keyvault_server::audit::{self, AuditKeys, VerifyReport};
use keyvault_server::server::{KEK_ENV, PREVIOUS_KEKS_ENV, configured_keys};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = "Examples:
  keyvault audit verify vault-data/audit.log
  keyvault audit verify --chain vault-data/audit.log   # with audit.log.1, .2, … rotated files
  keyvault audit verify --chain --config /etc/keyvault/keyvault.toml /var/lib/keyvault/audit.log
  keyvault audit verify --data-dir vault-data vault-data/audit.log   # a dev vault: its kek.key

Without keys, only the hash chain is checked, and anyone who can write the log can compute it again. With the
keys (--config, which names kek_file and previous_kek_files as for `keyvault serve`; --data-dir, whose kek.key
is the key; or KEYVAULT_KEK and KEYVAULT_PREVIOUS_KEKS), every line's MAC is checked too: a line that was edited, inserted or forged without
the key-encryption key fails. Lines removed from the end (or every file) are found only against a head kept
elsewhere: the server logs it at start, at each rotation and at shutdown; compare it with the last hash here.")]
pub struct VerifyArgs {
    /// The audit log file.
    file: PathBuf,
    /// Also verify the rotated files (FILE.1, FILE.2, …) as one chain, oldest first.
    #[arg(long)]
    chain: bool,
    /// The server's TOML configuration file: its kek_file (or data_dir's kek.key) and previous_kek_files
    /// give the keys that check the lines' MACs.
    #[arg(long, env = "KEYVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory, for a server started without a configuration file (as `serve --dev
    /// --data-dir DIR`): its kek.key is the key that checks the lines' MACs (with KEYVAULT_KEK unset).
    /// (Wins over KEYVAULT_CONFIG; with --config as well it is refused.)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Where the keys come from: a configuration file, or a data directory's key file.
enum KeySource<'a> {
    Config(&'a Path),
    DataDir(&'a Path),
}

/// The keys to check MACs with, if any were given (`--config`, `--data-dir`, `KEYVAULT_KEK`,
/// `KEYVAULT_PREVIOUS_KEKS`).
fn keys(source: Option<KeySource<'_>>) -> CliResult<Option<AuditKeys>> {
    let from_env = [KEK_ENV, PREVIOUS_KEKS_ENV]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if source.is_none() && !from_env {
        return Ok(None);
    }
    let config = match source {
        Some(KeySource::Config(path)) => crate::rekey::config_file(path)?,
        // The directory's key is the key: a KEYVAULT_KEK (which a server would take over it) would check the
        // lines under another key and call them forged.
        Some(KeySource::DataDir(_)) if std::env::var_os(KEK_ENV).is_some() => {
            return Err(CliError::other(format!(
                "--data-dir checks the MACs with the directory's kek.key, but {KEK_ENV} is set: unset it, or \
                 leave out --data-dir to use it"
            )));
        }
        Some(KeySource::DataDir(dir)) => keyvault_server::Config {
            data_dir: dir.to_path_buf(),
            ..keyvault_server::Config::default()
        },
        None => keyvault_server::Config::default(),
    };
    // Keys that cannot be loaded leave the log unchecked: exit 1, as for a log that cannot be read (2 says
    // the log is not intact).
    let ring = configured_keys(&config)
        .map_err(|e| CliError::other(format!("cannot verify the audit log's MACs: {e}")))?;
    AuditKeys::from_provider(&ring)
        .map(Some)
        .map_err(|e| CliError::other(format!("cannot derive the audit log's key: {e}")))
}

pub fn verify(args: VerifyArgs) -> CliResult {
    // --data-dir names the keys on the command line: it wins over a KEYVAULT_CONFIG in the environment (a
    // usage error here would exit 2, which says "not intact"), not over --config given with it.
    let config_from_env =
        std::env::var_os("KEYVAULT_CONFIG").is_some_and(|v| Some(PathBuf::from(v)) == args.config);
    let source = match (&args.config, &args.data_dir) {
        (Some(_), Some(_)) if !config_from_env => {
            return Err(CliError::other(
                "give --config or --data-dir, not both: each names the keys that check the MACs",
            ));
        }
        (_, Some(dir)) => Some(KeySource::DataDir(dir)),
        (Some(path), None) => Some(KeySource::Config(path)),
        (None, None) => None,
    };
    let keys = keys(source)?;
    let report = match (&keys, args.chain) {
        (None, false) => audit::verify_file(&args.file),
        (None, true) => audit::verify_chain(&args.file),
        (Some(k), false) => audit::verify_file_keyed(&args.file, k),
        (Some(k), true) => audit::verify_chain_keyed(&args.file, k),
    };
    match report {
        Ok(r) => print_report(&r),
        // Line 0 is the file itself: it could not be read, which says nothing about the chain (exit 1, apart
        // from a log that is not intact).
        Err(e) if e.line == 0 => Err(CliError::other(format!("cannot verify the audit log: {e}"))),
        Err(e) => Err(CliError::bad_input(format!("audit log is not intact: {e}"))),
    }
}

fn print_report(r: &VerifyReport) -> CliResult {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ok: {} line(s) in {} file(s), seq {}..{}, last hash {}",
        r.lines,
        r.files,
        r.first_seq.map_or("-".to_string(), |s| s.to_string()),
        r.last_seq.map_or("-".to_string(), |s| s.to_string()),
        r.last_hash.as_deref().unwrap_or("-")
    )
    .map_err(io_error)?;
    if r.macs_checked {
        let previous = if r.previous_key_lines > 0 {
            format!(" ({} under a previous key)", r.previous_key_lines)
        } else {
            String::new()
        };
        writeln!(
            out,
            "macs: {} line(s) authenticated{previous}; {} line(s) from before MACs (not authenticated)",
            r.mac_lines, r.lines_before_macs
        )
        .map_err(io_error)?;
        if let Some((file, line)) = &r.first_previous_key_after_current {
            stderr_line!(
                "warning: {} line(s) under a previous key come after lines under the current key, the first at \
                 {}:{line}: the key was rolled back after them, or they were written (or rewritten) by someone \
                 holding a previous key",
                r.previous_key_after_current,
                file.display()
            );
        }
        if r.lines > 0 && r.mac_lines == 0 {
            stderr_line!(
                "warning: no line has a MAC, so none is authenticated (a log written before audit MACs, or one \
                 whose MACs were all removed)"
            );
        }
    } else {
        stderr_line!(
            "note: the MACs were not checked ({} of {} line(s) carry one): without them, anyone who can write the \
             log can compute its hashes again; check them with --config PATH (the server's configuration), \
             --data-dir DIR (a server started without one) or KEYVAULT_KEK and KEYVAULT_PREVIOUS_KEKS",
            r.mac_lines,
            r.lines
        );
    }
    if !r.complete && r.lines > 0 {
        stderr_line!(
            "warning: the chain does not start at its first line (older lines are missing: pruned by \
             audit_keep_files, or removed)"
        );
    }
    Ok(())
}
