//! `keyvault secret import` and `export`: many secrets at once, with progress, a summary, and
//! per-item errors that do not stop the rest.

use crate::conn::{Conn, Output};
use crate::errors::{CliError, CliResult, Target, code, io_error};
use crate::secret::{parse_tags, utf8_value, write_private};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use keyvault_secrets::{ErrorKind, SetSecretOptions};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const IMPORT_HELP: &str = "Input: a JSON object of name → value (the output of `export`), or a .env file (either may start with a UTF-8 \
byte-order mark) \
(NAME=value lines; `export NAME=…`, # comments, 'single' and \"double\" quotes with \\n, \\\", \\\\, \\$ escapes). \
In a .env file every '_' in a name becomes '-' (Key Vault names allow only letters, digits and '-'), so \
DB_PASSWORD is stored as DB-PASSWORD; names in JSON are used as they are. JSON values are strings; true and \
false are stored as that text; a number, null, an array or an object fails that secret (quote a number, \
\"0.10\", to store its digits as written: a JSON reader does not keep them). Names are case-insensitive: when \
one appears twice, the last value wins.

Safe to re-run: each secret's latest value is read first, and a new version is written only when the secret \
does not exist, its value differs, or its latest version is disabled. Secrets already equal are left alone \
(\"unchanged\"), so re-running an import does not pile up versions. Only values are compared: --content-type \
and --tags apply to the versions that import writes.

A failed secret (bad name, deleted but not purged, …) is reported and the others go on; the exit code is then \
6. A credential or connection failure stops the import. A summary goes to standard error; with -o json a \
report ({\"created\": […], \"updated\": […], \"unchanged\": […], \"failed\": [{\"name\", \"error\"}]}) goes \
to standard output, with -o tsv one `name<TAB>result` line per secret.

Examples:
  keyvault secret import --file .env
  keyvault secret import --file secrets.json --tags source=import --dry-run
  keyvault secret export --file all.json && keyvault secret import --file all.json --vault-url https://other.vault.azure.net";

pub const EXPORT_HELP: &str = "Writes a JSON object of name → value (sorted by name), or a .env file where \
every '-' in a name becomes '_' (so the file can be sourced; `import` maps them back; a name that starts \
with a digit cannot be a shell variable and is reported instead of written). Disabled secrets \
cannot be read and are skipped, as are secrets deleted while the export runs. The file is created readable by its owner only (mode 600). A secret that \
fails is reported and the others go on; the exit code is then 6.
Written to standard output, an export whose reader closes the pipe before it is all written fails (exit 1, no \
summary).

Examples:
  keyvault secret export --file secrets.json
  keyvault secret export --format env > .env
  keyvault secret export | jq -r '.[\"db-pass\"]'";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A JSON object of name → value.
    Json,
    /// NAME=\"value\" lines.
    Env,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The file to import (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    /// The file's format [default: json for *.json or when it starts with '{', else env].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Content type of the versions written.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Tags of the versions written: KEY=VALUE pairs.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub tags: Option<Vec<String>>,
    /// Read and compare, but write nothing: report what would change.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub bulk: BulkArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Where to write (default: standard output; `-` too).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The format [default: env for *.env and .env, else json].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Replace the file if it exists.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub bulk: BulkArgs,
}

#[derive(Args)]
pub struct BulkArgs {
    /// Requests in flight at once (1-64).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// No progress bar (there is one only when standard error is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

// ------------------------------------------------------------------ progress

/// A one-line progress bar on standard error (only when it is a terminal).
struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(label: &'static str, total: usize, no_progress: bool) -> Self {
        Progress {
            label,
            total,
            done: 0,
            enabled: !no_progress && total > 0 && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn draw(&mut self) {
        if !self.enabled {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        stderr_text!(
            "\r\x1b[2K{} [{}{}] {}/{}",
            self.label,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done,
            self.total
        );
        self.last = Some(Instant::now());
    }

    fn tick(&mut self) {
        self.done += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(80));
        if due || self.done == self.total {
            self.draw();
        }
    }

    /// Print a line above the bar.
    fn message(&mut self, line: &str) {
        if self.enabled {
            stderr_text!("\r\x1b[2K");
        }
        stderr_line!("{line}");
        if self.enabled && self.last.is_some() {
            self.draw();
        }
    }

    fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            stderr_text!("\r\x1b[2K");
        }
    }
}

// ------------------------------------------------------------------ .env files

/// Parse a .env file into (name, value) pairs, in order. Errors name the line.
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    let mut out = Vec::new();
    let n = chars.len();
    while i < n {
        // Start of a line: skip blanks.
        while i < n && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= n {
            break;
        }
        if chars[i] == '\n' || chars[i] == '\r' {
            if chars[i] == '\n' {
                line += 1;
            }
            i += 1;
            continue;
        }
        if chars[i] == '#' {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let start_line = line;
        let eol = (i..n).find(|&j| chars[j] == '\n').unwrap_or(n);
        let Some(eq) = (i..eol).find(|&j| chars[j] == '=') else {
            return Err(format!("line {start_line}: expected NAME=value"));
        };
        let mut key: String = chars[i..eq].iter().collect::<String>().trim().to_string();
        if let Some(rest) = key.strip_prefix("export ") {
            key = rest.trim().to_string();
        }
        if key.is_empty() {
            return Err(format!("line {start_line}: missing name before '='"));
        }
        i = eq + 1;
        while i < n && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        let mut value = String::new();
        let quote = chars.get(i).copied().filter(|c| *c == '"' || *c == '\'');
        if let Some(q) = quote {
            i += 1;
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err(format!("line {start_line}: unterminated {q}quoted value"));
                };
                i += 1;
                if c == q {
                    break;
                }
                if c == '\n' {
                    line += 1;
                }
                if c == '\\' && q == '"' {
                    let Some(&e) = chars.get(i) else {
                        return Err(format!("line {start_line}: unterminated \"quoted value"));
                    };
                    i += 1;
                    match e {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        '"' | '\\' | '$' | '`' | '\'' => value.push(e),
                        '\n' => line += 1, // a line continuation
                        other => {
                            value.push('\\');
                            value.push(other);
                        }
                    }
                } else {
                    value.push(c);
                }
            }
            // Only blanks or a comment may follow on the line.
            let eol = (i..n).find(|&j| chars[j] == '\n').unwrap_or(n);
            let rest: String = chars[i..eol].iter().collect();
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                return Err(format!(
                    "line {line}: unexpected text after the closing quote"
                ));
            }
            i = eol;
        } else {
            let raw: String = chars[i..eol].iter().collect();
            // An inline comment starts at a '#' after a blank.
            let cut = raw
                .char_indices()
                .find(|&(j, c)| c == '#' && j > 0 && raw[..j].ends_with([' ', '\t']))
                .map_or(raw.len(), |(j, _)| j);
            value = raw[..cut].trim().to_string();
            i = eol;
        }
        out.push((key, value));
    }
    Ok(out)
}

/// A .env line for `name` = `value`, double-quoted. Inside double quotes a POSIX shell keeps every character as
/// it is except `\\`, `"`, `$` and `` ` ``, which are escaped; line breaks are written as they are (a shell keeps
/// them; `\\n` would stay two characters when the file is sourced), and `import` reads both forms.
pub fn env_line(name: &str, value: &str) -> String {
    let mut s = String::with_capacity(name.len() + value.len() + 4);
    s.push_str(name);
    s.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '$' => s.push_str("\\$"),
            '`' => s.push_str("\\`"),
            c => s.push(c),
        }
    }
    s.push_str("\"\n");
    s
}

/// [`env_line`] for a terminal, when the value holds characters a terminal would act on (escape sequences can
/// retitle a window, write the clipboard, or hide text): bash's `$'…'` form, those characters' bytes as `\xHH`
/// escapes, so the line shows what the value is and, pasted into bash, sets it exactly (but for a NUL, which no
/// shell variable can hold).
pub fn env_line_escaped(name: &str, value: &str) -> String {
    let mut s = String::with_capacity(name.len() + value.len() + 16);
    s.push_str(name);
    s.push_str("=$'");
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\'' => s.push_str("\\'"),
            c if crate::render::unsafe_char(c) => {
                // Byte by byte: bash turns a `\U` escape into text only in a UTF-8 locale.
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    s.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => s.push(c),
        }
    }
    s.push_str("'\n");
    s
}

/// Whether `name` can be a shell variable's name (letters, digits and '_', not starting with a digit), so that a
/// sourced line assigns it instead of running as a command.
fn is_shell_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ------------------------------------------------------------------ import

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Whether an error is about the connection or the credential rather than one secret.
fn is_fatal(e: &keyvault_secrets::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Connection
            | ErrorKind::Credential
            | ErrorKind::CredentialUnavailable
            | ErrorKind::ClientAuthentication
    )
}

/// The largest import file read (about ten thousand secrets of the largest size): a bound for a mistaken
/// `--file /dev/zero`, whose reading buffer may take twice as much.
const MAX_IMPORT_BYTES: usize = 256 << 20;

/// A JSON object's members in the order the file has them (a `serde_json::Map` sorts them by name, which would
/// make "the last value wins" depend on the names' order instead of the file's).
struct InOrder(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = InOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<InOrder, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(member) = map.next_entry()? {
                    out.push(member);
                }
                Ok(InOrder(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// The entries of an import file, each a value or a per-item error.
fn parse_input(
    text: &str,
    format: Format,
    from: &str,
) -> CliResult<Vec<(String, Result<String, String>)>> {
    match format {
        Format::Env => {
            let pairs = parse_env(text).map_err(|e| CliError::bad_input(format!("{from}: {e}")))?;
            Ok(pairs
                .into_iter()
                .map(|(k, v)| (k.replace('_', "-"), Ok(v)))
                .collect())
        }
        Format::Json => {
            let InOrder(entries) = serde_json::from_str(text).map_err(|e| {
                CliError::bad_input(format!(
                    "{from} is not a JSON object of name → value: it {}",
                    crate::errors::json_error(&e)
                ))
            })?;
            Ok(entries
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => Ok(s),
                        // `true` and `false` have one spelling each: stored as that text, exactly.
                        serde_json::Value::Bool(b) => Ok(b.to_string()),
                        // A number's digits are not kept as written (`0.10` is read as 0.1, a big integer
                        // rounds): a value must be stored exactly, so the file has to say which text it means.
                        serde_json::Value::Number(_) => Err(
                            "the value is a JSON number, whose digits would not be kept exactly as written: \
                             quote it (e.g. \"0.10\") to store that text"
                                .to_string(),
                        ),
                        serde_json::Value::Null => {
                            Err("the value is null, not a string: quote it or leave the name out".to_string())
                        }
                        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Err(
                            "the value is not a string (an array or object): store JSON as a quoted string"
                                .to_string(),
                        ),
                    };
                    (k, v)
                })
                .collect())
        }
    }
}

/// Why a secret was not imported.
#[derive(Debug, PartialEq, Eq)]
enum Failed {
    /// This secret failed; the others go on.
    Error(String),
    /// This secret failed with an error that stops the import (connection, credential): it is the import's error.
    Fatal(String),
    /// Not attempted: an earlier fatal error stopped the import.
    NotAttempted,
}

pub async fn import(conn: &Conn, args: ImportArgs, out: &mut dyn Write) -> CliResult {
    let (mut text, from) = if args.file == Path::new("-") && crate::tty::stdin_is_terminal() {
        // Typed or pasted values are not echoed, as with `secret set --file -`.
        let text = crate::tty::read_hidden_text(
            "name=value lines or a JSON object to import (not echoed; end with Ctrl-D on a line of its own): ",
        )
        .await?;
        (text, "standard input".to_string())
    } else {
        let (bytes, from) = crate::input::read_bounded(
            &args.file,
            MAX_IMPORT_BYTES,
            "an import file may be (256 MiB: split it)",
        )?;
        (zeroize::Zeroizing::new(utf8_value(bytes, &from)?), from)
    };
    // A byte-order mark (Windows editors write one) is not part of the content, in JSON as in .env.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    let format = args.format.unwrap_or_else(|| {
        let by_name = args
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if by_name || text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Env
        }
    });
    let entries = parse_input(&text, format, &from)?;
    // Names are case-insensitive: the last of a name wins, at the place of the first.
    let mut order: Vec<(String, Result<String, String>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (name, value) in entries {
        match seen.get(&name.to_ascii_lowercase()) {
            Some(&at) => {
                stderr_line!(
                    "warning: '{}' appears more than once (names are case-insensitive); the last value wins",
                    crate::render::terminal_safe(&name)
                );
                order[at] = (name, value);
            }
            None => {
                seen.insert(name.to_ascii_lowercase(), order.len());
                order.push((name, value));
            }
        }
    }
    let options = SetSecretOptions {
        content_type: args.content_type.clone(),
        tags: args.tags.as_deref().map(parse_tags).transpose()?,
        ..Default::default()
    };
    let client = &conn.client;
    let vault = conn.vault();
    let stop = AtomicBool::new(false);
    let fatal: std::sync::Mutex<Option<CliError>> = std::sync::Mutex::new(None);
    let dry_run = args.dry_run;
    let one = |name: String, value: Result<String, String>| {
        let options = options.clone();
        let stop = &stop;
        let fatal = &fatal;
        async move {
            let value = match value {
                Ok(v) => zeroize::Zeroizing::new(v),
                Err(e) => return (name, Err(Failed::Error(e))),
            };
            if stop.load(Ordering::Relaxed) {
                return (name, Err(Failed::NotAttempted));
            }
            let fail = |e: keyvault_secrets::Error, name: &str| {
                let cli = CliError::from_client(&e, Target::Secret(name, None), vault);
                if is_fatal(&e) {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut f) = fatal.lock() {
                        f.get_or_insert(CliError::new(cli.code, cli.message.clone()));
                    }
                    // Attempted and failed; reported once, as the import's error, not per secret.
                    Failed::Fatal(cli.message)
                } else {
                    Failed::Error(cli.message)
                }
            };
            let outcome = match client.get_secret(&name, None).await {
                Ok(s) if s.value() == Some(value.as_str()) => Outcome::Unchanged,
                Ok(_) => Outcome::Updated,
                Err(e) if e.kind() == ErrorKind::ResourceNotFound => Outcome::Created,
                Err(e)
                    if e.status().map(|s| s.as_u16()) == Some(403)
                        && e.inner_error_code() == Some("SecretDisabled") =>
                {
                    Outcome::Updated
                }
                Err(e) => return (name.clone(), Err(fail(e, &name))),
            };
            // A dry run cannot learn from a write that the name is held by a deleted secret: ask.
            if dry_run && outcome == Outcome::Created {
                match client.get_deleted_secret(&name).await {
                    Ok(_) => {
                        return (
                            name.clone(),
                            Err(Failed::Error(format!(
                                "secret '{name}' is deleted but recoverable in {vault}: recover or purge it first"
                            ))),
                        );
                    }
                    Err(e) if e.kind() == ErrorKind::ResourceNotFound => {}
                    Err(e) => return (name.clone(), Err(fail(e, &name))),
                }
            }
            if outcome != Outcome::Unchanged
                && !dry_run
                && let Err(e) = client
                    .set_secret(&name, value.as_str(), Some(options))
                    .await
            {
                return (name.clone(), Err(fail(e, &name)));
            }
            (name, Ok(outcome))
        }
    };
    let mut progress = Progress::new(
        if dry_run { "checking" } else { "importing" },
        order.len(),
        args.bulk.no_progress,
    );
    let mut results = futures_util::stream::iter(order.into_iter().map(|(n, v)| one(n, v)))
        .buffered(args.bulk.concurrency.into());
    let mut report: Vec<(String, Result<Outcome, Failed>)> = Vec::new();
    while let Some((name, result)) = results.next().await {
        if let Err(Failed::Error(e)) = &result {
            progress.message(&format!(
                "error: {}: {e}",
                crate::render::terminal_safe(&name)
            ));
        }
        progress.tick();
        report.push((name, result));
    }
    progress.finish();

    let count = |o: Outcome| report.iter().filter(|(_, r)| *r == Ok(o)).count();
    let failed: Vec<(&str, &str)> = report
        .iter()
        .filter_map(|(n, r)| match r {
            Err(Failed::Error(e) | Failed::Fatal(e)) => Some((n.as_str(), e.as_str())),
            _ => None,
        })
        .collect();
    let skipped = report
        .iter()
        .filter(|(_, r)| *r == Err(Failed::NotAttempted))
        .count();
    let (created, updated, unchanged) = (
        count(Outcome::Created),
        count(Outcome::Updated),
        count(Outcome::Unchanged),
    );
    let mut summary = if dry_run {
        format!(
            "dry run: {} secrets: {created} would be created, {updated} would be updated, {unchanged} unchanged, {} failed",
            report.len(),
            failed.len()
        )
    } else {
        format!(
            "imported {} secrets: {created} created, {updated} updated, {unchanged} unchanged, {} failed",
            report.len(),
            failed.len()
        )
    };
    if skipped > 0 {
        summary.push_str(&format!(", {skipped} not attempted"));
    }
    stderr_line!("{summary}");

    match conn.output {
        Output::Json => {
            let names = |o: Outcome| -> Vec<&str> {
                report
                    .iter()
                    .filter(|(_, r)| *r == Ok(o))
                    .map(|(n, _)| n.as_str())
                    .collect()
            };
            let json = serde_json::json!({
                "dryRun": dry_run,
                "created": names(Outcome::Created),
                "updated": names(Outcome::Updated),
                "unchanged": names(Outcome::Unchanged),
                "failed": failed.iter().map(|(n, e)| serde_json::json!({"name": n, "error": e})).collect::<Vec<_>>(),
            });
            let text = crate::render::json_text(&json);
            writeln!(out, "{text}").map_err(io_error)?;
        }
        Output::Tsv => {
            for (name, r) in &report {
                let result = match r {
                    Ok(o) => o.as_str(),
                    Err(Failed::Error(_) | Failed::Fatal(_)) => "failed",
                    Err(Failed::NotAttempted) => "not-attempted",
                };
                writeln!(out, "{}\t{result}", crate::render::tsv_escape(name)).map_err(io_error)?;
            }
        }
        Output::Table | Output::Value => {}
    }
    if let Some(e) = fatal.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    if !failed.is_empty() {
        return Err(CliError::new(
            code::PARTIAL,
            format!("{} of {} secrets failed", failed.len(), report.len()),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------ export

pub async fn export(conn: &Conn, args: ExportArgs, out: &mut dyn Write) -> CliResult {
    let to_file = args.file.as_ref().filter(|p| *p != Path::new("-"));
    if let Some(p) = to_file
        && !args.overwrite
        && p.exists()
    {
        return Err(CliError::bad_input(format!(
            "{} exists (pass --overwrite to replace it)",
            p.display()
        )));
    }
    let format = args.format.unwrap_or_else(|| {
        let is_env = to_file.is_some_and(|p| {
            p.extension().is_some_and(|e| e.eq_ignore_ascii_case("env"))
                || p.file_name().is_some_and(|n| n == ".env")
        });
        if is_env { Format::Env } else { Format::Json }
    });
    let client = &conn.client;
    let vault = conn.vault();
    let mut pager = client
        .list_properties_of_secrets(None)
        .map_err(|e| CliError::from_client(&e, Target::Vault, vault))?;
    let mut names = Vec::new();
    let mut disabled = 0usize;
    while let Some(p) = pager.next().await {
        let p = p.map_err(|e| CliError::from_client(&e, Target::Vault, vault))?;
        if p.enabled == Some(false) {
            disabled += 1;
        } else {
            names.push(p.name);
        }
    }
    let mut progress = Progress::new("exporting", names.len(), args.bulk.no_progress);
    let mut results = futures_util::stream::iter(names.into_iter().map(|name| async move {
        let r = client.get_secret(&name, None).await;
        (name, r)
    }))
    .buffer_unordered(args.bulk.concurrency.into());
    let mut values: BTreeMap<String, zeroize::Zeroizing<String>> = BTreeMap::new();
    let (mut failed, mut gone) = (0usize, 0usize);
    while let Some((name, r)) = results.next().await {
        match r {
            Ok(s) => {
                values.insert(
                    name,
                    zeroize::Zeroizing::new(s.value().unwrap_or_default().to_string()),
                );
            }
            Err(e) if is_fatal(&e) => {
                progress.finish();
                return Err(CliError::from_client(&e, Target::Vault, vault));
            }
            // Deleted since it was listed: not there to export, as if the listing had come later.
            Err(e) if e.kind() == ErrorKind::ResourceNotFound => gone += 1,
            Err(e) => {
                failed += 1;
                let msg = CliError::from_client(&e, Target::Secret(&name, None), vault);
                progress.message(&format!(
                    "error: {}: {msg}",
                    crate::render::terminal_safe(&name)
                ));
            }
        }
        progress.tick();
    }
    progress.finish();
    let mut skipped = 0usize;
    let at_terminal = to_file.is_none() && std::io::stdout().is_terminal();
    let text = zeroize::Zeroizing::new(match format {
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> = values
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                .collect();
            let mut s =
                serde_json::to_string_pretty(&serde_json::Value::Object(map)).expect("serialises");
            if at_terminal && let Some(escaped) = crate::render::json_for_terminal(&s) {
                zeroize::Zeroize::zeroize(&mut s);
                s = escaped;
            }
            s.push('\n');
            s
        }
        Format::Env => {
            let mut text = String::new();
            for (k, v) in &values {
                let var = k.replace('-', "_");
                if is_shell_name(&var) {
                    if at_terminal && v.chars().any(crate::render::unsafe_char) {
                        text.push_str(&env_line_escaped(&var, v));
                    } else {
                        text.push_str(&env_line(&var, v));
                    }
                } else {
                    // Sourced, the line would run as a command (and show the value in its error).
                    skipped += 1;
                    stderr_line!(
                        "error: {k}: a name that starts with a digit cannot be a shell variable; not written (--format json keeps it)"
                    );
                }
            }
            text
        }
    });
    let place = match to_file {
        Some(p) => {
            write_private(p, text.as_bytes())?;
            p.display().to_string()
        }
        None => {
            // Flushed before the summary, and a closed pipe is an error here (not the quiet end of other
            // commands): the export did not reach its reader.
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(crate::errors::whole_output_error("the export"))?;
            "standard output".to_string()
        }
    };
    failed += skipped;
    let mut summary = format!("exported {} secrets to {place}", values.len() - skipped);
    if disabled > 0 {
        summary.push_str(&format!(", {disabled} disabled skipped"));
    }
    if gone > 0 {
        summary.push_str(&format!(", {gone} deleted since listed"));
    }
    if failed > 0 {
        summary.push_str(&format!(", {failed} failed"));
    }
    stderr_line!("{summary}");
    if failed > 0 {
        return Err(CliError::new(
            code::PARTIAL,
            format!("{failed} secrets could not be exported"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a terminal, a value with escape sequences is shown escaped, and the line still sets it exactly in bash.
    #[test]
    fn an_escaped_env_line_shows_no_control_character_and_sets_the_value() {
        let v = "a\u{1b}]52;c;eA==\u{7}b\u{1b}[31m'q'\\ \"$x\u{202e}\u{85}\u{e9}\nend\r";
        let line = env_line_escaped("K", v);
        assert!(
            !line[..line.len() - 1]
                .chars()
                .any(crate::render::unsafe_char),
            "{line:?}"
        );
        let out = std::process::Command::new("bash")
            .env("LC_ALL", "C")
            .args(["-c", &format!("{line}printf %s \"$K\"")])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
    }

    #[test]
    fn env_parsing() {
        let text = "\u{feff}# comment\nA=1\nexport B = two words # note\n\nC=\"x\\ny \\\"q\\\" \\$HOME\"\nD='a\\nb'\nE=\nF=\"multi\nline\"\nG=a#b\n";
        let got = parse_env(text).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x\ny \"q\" $HOME"),
            ("D", "a\\nb"),
            ("E", ""),
            ("F", "multi\nline"),
            ("G", "a#b"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        assert!(parse_env("JUSTTEXT\n").unwrap_err().contains("line 1"));
        assert!(parse_env("A=1\nB=\"open\n").unwrap_err().contains("line 2"));
        assert!(parse_env("A=\"x\" y\n").is_err());
    }

    #[test]
    fn env_round_trip() {
        for v in [
            "plain",
            "",
            "with \"quotes\" and 'single'",
            "back\\slash\\n",
            "$VAR `cmd` # not a comment",
            "multi\nline\r\nvalue\n",
            "  padded  ",
            "unicode ✓ é",
        ] {
            let line = env_line("K", v);
            assert_eq!(
                parse_env(&line).unwrap(),
                vec![("K".to_string(), v.to_string())],
                "{line}"
            );
        }
    }

    /// What `source` in a real shell makes of an exported line: the value, byte for byte.
    #[test]
    fn env_lines_source_in_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.env");
        for v in [
            "plain",
            "",
            "multi\nline\r\nvalue\n",
            "with \"quotes\" and 'single' \\n back\\slash",
            "$HOME `id` $(id) # not a comment ! *",
            "unicode ✓ é\ttab",
        ] {
            std::fs::write(&file, env_line("K_1", v)).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(r#"set -e; . "$1"; printf '%s' "$K_1""#)
                .arg("sh")
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "{v:?}: {out:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
            assert_eq!(
                parse_env(&std::fs::read_to_string(&file).unwrap()).unwrap(),
                vec![("K_1".to_string(), v.to_string())]
            );
        }
    }

    #[test]
    fn shell_names() {
        for ok in ["A", "db_pass", "_x", "X9_"] {
            assert!(is_shell_name(ok), "{ok}");
        }
        for bad in ["", "9lives", "a.b", "é"] {
            assert!(!is_shell_name(bad), "{bad}");
        }
    }

    #[test]
    fn json_members_keep_the_file_order() {
        let got =
            parse_input(r#"{"j1":"v","b":"2","J1":"w","a":true}"#, Format::Json, "f").unwrap();
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["j1", "b", "J1", "a"]);
        assert_eq!(got[2].1, Ok("w".to_string()));
        assert_eq!(got[1].1, Ok("2".to_string()));
        assert_eq!(got[3].1, Ok("true".to_string()));
        assert!(parse_input("[1]", Format::Json, "f").is_err());
        let got = parse_input(
            r#"{"bignum": 12345678901234567890123, "pin": 0.10, "exp": 1e3, "neg": -0, "n": null, "o": {}}"#,
            Format::Json,
            "f",
        )
        .unwrap();
        for (name, v) in &got[..4] {
            let e = v.as_ref().unwrap_err();
            assert!(
                e.contains("JSON number") && e.contains("quote it"),
                "{name}: {e}"
            );
        }
        assert!(got[4].1.as_ref().unwrap_err().contains("null"));
        assert!(got[5].1.as_ref().unwrap_err().contains("not a string"));
    }

    #[cfg(unix)]
    #[test]
    fn an_overwritten_file_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.json");
        std::fs::write(&file, "a much longer old content than the new one").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"new").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        let fresh = dir.path().join("fresh.json");
        write_private(&fresh, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
