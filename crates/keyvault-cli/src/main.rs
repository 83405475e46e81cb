//! `keyvault`: serve a Key Vault-compatible vault, and operate on the secrets of any vault (this one or
//! Azure Key Vault) through the `keyvault-secrets` client. Parsing and wiring only; the work is done by
//! the library crates.

/// `eprintln!` that ignores a failed write: a closed or broken standard error (`2>&- `, `2>&1 | true`) must
/// not turn into a panic (exit 101) instead of the command's own exit code.
macro_rules! stderr_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that ignores a failed write (see `stderr_line!`).
macro_rules! stderr_text {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut err = std::io::stderr();
        let _ = write!(err, $($arg)*);
        let _ = err.flush();
    }};
}

#[macro_use]
mod errors;
#[macro_use]
mod when;
mod admin;
mod allocator;
mod audit;
mod bulk;
mod conn;
mod hardening;
mod input;
mod notes;
mod rekey;
mod render;
mod secret;
mod serve;
mod snapshot;
mod token;
mod tty;

use clap::{CommandFactory, Parser, Subcommand};
use errors::{CliError, CliResult, io_error};
use std::io::Write;
use std::process::ExitCode;

const AFTER_HELP: &str = concat!(
    "Quick start:
  keyvault serve --dev --data-dir ./vault-data &
  export KEYVAULT_DEV_CREDENTIALS=./vault-data/dev-credentials.json
  keyvault secret set db-pass --value-stdin        # prompts; what is typed is not echoed
  keyvault secret show db-pass -o value

Connection: --vault-url (KEYVAULT_URL); credentials from --dev-credentials (KEYVAULT_DEV_CREDENTIALS), else a
client secret from --tenant-id/--client-id/--client-secret (AZURE_TENANT_ID, AZURE_CLIENT_ID,
AZURE_CLIENT_SECRET, AZURE_AUTHORITY_HOST: required unless the vault is on an Azure Key Vault domain), else a
certificate (AZURE_CLIENT_CERTIFICATE_PATH), a workload identity (AZURE_FEDERATED_TOKEN_FILE), managed identity,
the Azure CLI or the Azure Developer CLI; --ca-file (KEYVAULT_CA_FILE) trusts a private CA; --timeout (KEYVAULT_TIMEOUT) bounds each
request (default 60 s); --api-version (KEYVAULT_API_VERSION) sends an older api-version.

Logs: on stderr, warnings and errors by default (serve: info); KEYVAULT_LOG=debug (or info, trace, target=level,…) shows more,
the HTTP requests included (values and tokens are never logged); NO_COLOR turns colours off.

Key rotation: keyvault kek new NEW.key; make it kek_file and the old key a previous_kek_files entry; then
keyvault rekey (see keyvault rekey --help).

Backup (SQLite, while the server runs): keyvault snapshot --data-dir DATA --out DIR copies the database and
access.json; the key-encryption key is not in it: keep it apart (see keyvault snapshot --help).

",
    exit_codes_help!()
);

#[derive(Parser)]
#[command(
    name = "keyvault",
    version,
    about = "A Key Vault-compatible secret store: server and tools",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the vault server.
    Serve(Box<serve::ServeArgs>),
    /// Operate on secrets: set, show, list, update, delete, recover, purge, backup, restore, import, export.
    Secret(secret::SecretArgs),
    /// Print a bearer token for the configured credential (for curl and debugging).
    Token(token::TokenArgs),
    /// Manage the applications (OAuth clients) that may get tokens: create, list, show, delete, add-secret,
    /// remove-secret (the server's admin API; needs Key Vault Administrator).
    Principal(admin::PrincipalArgs),
    /// Manage role assignments and custom roles: assign, list, remove, definitions, define, delete-definition
    /// (the server's admin API; needs Key Vault Administrator).
    Role(admin::RoleArgs),
    /// Re-seal every stored value under the current key-encryption key (after a key rotation; reads the
    /// server's configuration).
    Rekey(Box<rekey::RekeyArgs>),
    /// Copy a SQLite vault's database (and access.json) into a new directory while the server runs: an online
    /// backup (reads the server's configuration; the key-encryption key is not copied).
    Snapshot(Box<snapshot::SnapshotArgs>),
    /// Key-encryption key files: new (create one), id (print a key file's id).
    #[command(subcommand)]
    Kek(rekey::KekCommand),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  keyvault completions bash > ~/.local/share/bash-completion/completions/keyvault
  keyvault completions zsh > \"${fpath[1]}/_keyvault\"
  keyvault completions fish > ~/.config/fish/completions/keyvault.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the argon2 hash of a client secret read from standard input (for `[[clients]]` in the config).
    ///
    /// On a terminal it prompts and reads one line without echo.
    #[command(
        after_help = "Examples:\n  keyvault hash-secret                # prompts; what is typed is not echoed\n  \
                      keyvault hash-secret < client-secret.txt"
    )]
    HashSecret,
    /// Work with the server's hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that an audit log has not been edited, truncated or reordered, and with the server's keys that
    /// its lines' MACs verify (exit 0 when intact, 2 when not, 1 when it cannot be read or the keys cannot be
    /// loaded).
    Verify(audit::VerifyArgs),
}

/// Where tokio_postgres logs, at debug, every statement's parameters: sealed values, their names and tags.
const PG_QUERY_TARGET: &str = "tokio_postgres::query";

/// Where the HTTP/2 library warns of what a peer did (such as too many streams reset: a rapid-reset attack), once
/// per connection: lines anyone can cause without a token, so capped at errors unless named.
const H2_TARGET: &str = "h2";

/// The log filter: `KEYVAULT_LOG` (else `default`), with `tokio_postgres::query=info` added unless one of its
/// directives names exactly that target (`tokio_postgres=debug` or `debug` alone still leave it capped), and
/// `h2=error` unless one names `h2` or a module of it; and,
/// when `KEYVAULT_LOG` was set but not used, why (to be logged). An empty value counts as unset. A value that
/// does not parse, or that holds a bare word which is not a level (`warning`, `verbose`: the filter would take
/// it for a target, and log nothing else — errors included), is not used: the default is.
fn log_filter(
    configured: Option<&str>,
    default: &str,
) -> (tracing_subscriber::EnvFilter, Option<String>) {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let mut problem = None;
    // Empty, or only commas and spaces (no directive at all: the filter would log nothing), counts as unset.
    let given = configured.filter(|t| t.split(',').any(|d| !d.trim().is_empty()));
    let text = match given.map(str::trim) {
        None => default,
        Some(t) => {
            // A directive is `target[span{field}]=level`, or a level alone, or a target alone; a target
            // alone in plain letters is almost always a mistyped level.
            let stray = t.split(',').map(str::trim).find(|d| {
                !d.is_empty()
                    && d.chars().all(|c| c.is_ascii_alphabetic())
                    && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
            });
            let wrong = match stray {
                Some(word) => Some(format!(
                    "{word:?} is not a level; a target alone takes a level (target=debug)"
                )),
                None => tracing_subscriber::EnvFilter::try_new(t)
                    .is_err()
                    .then(|| "it is not a log filter".to_owned()),
            };
            match wrong {
                Some(why) => {
                    problem = Some(format!(
                        "KEYVAULT_LOG: {why} (levels: {}; directives: target=level, comma-separated). \
                         Logging at the default ({default}) instead",
                        LEVELS.join(", ")
                    ));
                    default
                }
                None => t,
            }
        }
    };
    // A directive is `target[span{field}]=level`; its target is what comes before `[` or `=`.
    let mut directives: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    let target = |d: &String| {
        d.split(['[', '='])
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let targets: Vec<String> = directives.iter().map(target).collect();
    if !targets.iter().any(|t| t == PG_QUERY_TARGET) {
        directives.push(format!("{PG_QUERY_TARGET}=info"));
    }
    if !targets
        .iter()
        .any(|t| t == H2_TARGET || t.starts_with("h2::"))
    {
        directives.push(format!("{H2_TARGET}=error"));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(directives.join(","))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    (filter, problem)
}

fn main() -> ExitCode {
    allocator::configure();
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "info",
        // rekey says what protects its database connection (the store's start-up line).
        Command::Rekey(_) => "warn,keyvault_server::store::postgres=info",
        _ => "warn",
    };
    let log_problem = {
        use tracing_subscriber::prelude::*;
        let (filter, problem) =
            log_filter(std::env::var("KEYVAULT_LOG").ok().as_deref(), default_log);
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour_on(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR"),
            ))
            .with_filter(filter);
        // Whatever the log level: a retry, and a throttled request's wait, is announced.
        let notes = notes::RetryNotes.with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target() == keyvault_secrets::RETRY_LOG_TARGET
        }));
        tracing_subscriber::registry().with(log).with(notes).init();
        problem
    };
    if let Some(problem) = log_problem {
        tracing::warn!("{problem}");
    }
    // Before any key (or, for snapshot, the vault's database) is read (audit verify may read the keys): no
    // core dumps, no ptrace, no /proc/PID/environ for the same user.
    if matches!(
        cli.command,
        Command::Serve(_)
            | Command::Rekey(_)
            | Command::Kek(_)
            | Command::Snapshot(_)
            | Command::Audit(_)
    ) {
        hardening::protect_process();
    }
    let result = match cli.command {
        Command::Serve(args) => {
            allocator::start_purger();
            serve::run(*args).map_err(|e| CliError::new(2, e))
        }
        Command::HashSecret => hash_secret(),
        Command::Kek(command) => {
            let mut out = std::io::stdout().lock();
            rekey::run_kek(command, &mut out).and(out.flush().map_err(io_error))
        }
        Command::Rekey(args) => runtime().and_then(|rt| {
            let mut out = std::io::stdout().lock();
            let result = rt.block_on(rekey::run_rekey(*args, &mut out));
            out.flush().map_err(io_error).and(result)
        }),
        Command::Snapshot(args) => {
            let mut out = std::io::stdout().lock();
            let result = snapshot::run_snapshot(*args, &mut out);
            out.flush().map_err(io_error).and(result)
        }
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(args),
        Command::Completions { shell } => completions(shell),
        Command::Secret(args) => runtime().and_then(|rt| {
            let mut out = std::io::stdout().lock();
            let result = rt.block_on(async {
                let fallback = secret::fallback_url(&args.command)?;
                let conn = args.conn.connect(fallback.as_deref())?;
                secret::run(&conn, args.command, &mut out).await
            });
            result.and(out.flush().map_err(io_error))
        }),
        Command::Principal(args) => runtime().and_then(|rt| {
            let mut out = std::io::stdout().lock();
            let result = rt.block_on(async {
                let conn = args.conn.connect(None)?;
                admin::run_principal(&conn, args.command, &mut out).await
            });
            result.and(out.flush().map_err(io_error))
        }),
        Command::Role(args) => runtime().and_then(|rt| {
            let mut out = std::io::stdout().lock();
            let result = rt.block_on(async {
                let conn = args.conn.connect(None)?;
                admin::run_role(&conn, args.command, &mut out).await
            });
            result.and(out.flush().map_err(io_error))
        }),
        Command::Token(args) => runtime().and_then(|rt| {
            let mut out = std::io::stdout().lock();
            let result = rt.block_on(token::run(args, &mut out));
            result.and(out.flush().map_err(io_error))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.code == 0 => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line!("error: {e}");
            ExitCode::from(e.code)
        }
    }
}

/// The runtime of the client commands: one thread is plenty for a CLI (bulk commands overlap requests).
fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the runtime: {e}")))
}

fn completions(shell: clap_complete::Shell) -> CliResult {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "keyvault", &mut buf);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)
        .and_then(|()| out.flush())
        .map_err(io_error)
}

/// Whether log lines are coloured: on a terminal, unless `NO_COLOR` is set to anything but "" (no-color.org).
fn colour_on(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn hash_secret() -> CliResult {
    let secret = if tty::stdin_is_terminal() {
        runtime()?.block_on(tty::read_hidden_line("Client secret: "))?
    } else {
        let mut secret = zeroize::Zeroizing::new(String::new());
        // One line of at most 64 KiB: `< /dev/zero` ends at once.
        const LIMIT: u64 = 64 << 10;
        let mut input = std::io::BufReader::new(std::io::Read::take(std::io::stdin(), LIMIT));
        std::io::BufRead::read_line(&mut input, &mut secret)
            .map_err(|e| CliError::bad_input(format!("cannot read standard input: {e}")))?;
        if secret.len() as u64 == LIMIT && !secret.ends_with('\n') {
            return Err(CliError::bad_input(
                "the line on standard input is longer than a client secret may be (64 KiB)",
            ));
        }
        zeroize::Zeroizing::new(secret.trim_end_matches(['\r', '\n']).to_string())
    };
    if secret.is_empty() {
        return Err(CliError::bad_input("no secret on standard input"));
    }
    let hash = keyvault_server::auth::hash_secret(&secret)
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    writeln!(std::io::stdout(), "{hash}").map_err(io_error)
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_color_turns_colours_off_on_a_terminal() {
        use super::colour_on;
        assert!(colour_on(true, None));
        assert!(colour_on(true, Some("".into())));
        assert!(!colour_on(true, Some("1".into())));
        assert!(!colour_on(false, None));
    }

    use super::log_filter;

    /// tokio_postgres logs statement parameters (sealed values) at debug: its `query` module is capped at info
    /// unless a directive names that module exactly.
    #[test]
    fn log_filter_caps_tokio_postgres_unless_named() {
        let capped = "tokio_postgres::query=info";
        for configured in [
            Some("debug"),
            None,
            Some(""),
            Some("debug,tokio_postgres=trace"),
            Some("tokio_postgres=debug"),
            Some("warn,tokio_postgres::queryx=debug"),
            Some("keyvault_server=debug,tokio_postgres::prepare=debug"),
            Some("not a filter ==="),
        ] {
            let f = log_filter(configured, "info").0.to_string();
            assert!(f.contains(capped), "{configured:?}: {f}");
        }
        let f = log_filter(Some("debug,tokio_postgres=trace"), "warn")
            .0
            .to_string();
        assert!(f.contains("tokio_postgres=trace"), "{f}");
        for named in [
            "debug,tokio_postgres::query=debug",
            "tokio_postgres::query=trace",
            "info,tokio_postgres::query",
        ] {
            let f = log_filter(Some(named), "warn").0.to_string();
            assert!(!f.contains(capped), "{named}: {f}");
            assert!(f.contains("tokio_postgres::query"), "{named}: {f}");
        }
    }

    /// The HTTP/2 library's warnings about peers (a rapid reset) are anyone's to cause: capped at errors
    /// unless a directive names `h2`.
    #[test]
    fn log_filter_caps_h2_unless_named() {
        for configured in [
            None,
            Some("debug"),
            Some("warn,hyper=debug"),
            Some("h2x=debug"),
        ] {
            let f = log_filter(configured, "info").0.to_string();
            assert!(f.split(',').any(|d| d == "h2=error"), "{configured:?}: {f}");
        }
        for named in ["h2=debug", "info,h2::proto=trace"] {
            let f = log_filter(Some(named), "info").0.to_string();
            assert!(!f.contains("h2=error"), "{named}: {f}");
        }
    }

    /// A mistyped level, or an empty value, never turns logging off: the default is used, and a value that was
    /// not used is reported.
    #[test]
    fn log_filter_falls_back_to_the_default_on_a_mistake() {
        for (configured, reported) in [
            (Some(""), false),
            (Some("  "), false),
            (Some(","), false),
            (Some(" , "), false),
            (None, false),
            (Some("warning"), true),
            (Some("information"), true),
            (Some("debug,verbose"), true),
            (Some("not a filter ==="), true),
        ] {
            let (f, problem) = log_filter(configured, "info");
            let f = f.to_string();
            assert!(f.split(',').any(|d| d == "info"), "{configured:?}: {f}");
            assert_eq!(problem.is_some(), reported, "{configured:?}: {problem:?}");
        }
        for used in [
            "WARN",
            "debug",
            "keyvault_server=debug",
            "warn,keyvault_server::audit=trace",
        ] {
            let (f, problem) = log_filter(Some(used), "info");
            assert!(problem.is_none(), "{used}: {problem:?}");
            let f = f.to_string().to_lowercase();
            for d in used.split(',') {
                assert!(f.split(',').any(|x| x == d.to_lowercase()), "{used}: {f}");
            }
        }
    }
}
