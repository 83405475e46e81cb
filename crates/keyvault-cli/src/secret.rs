//! `keyvault secret …`: one command per operation of the secrets API, on the `keyvault-secrets` client.

use crate::bulk::{ExportArgs, ImportArgs};
use crate::conn::{Conn, ConnArgs};
use crate::errors::{CliError, CliResult, Target, io_error};
use crate::render::{self, View};
use crate::when::when_arg;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use keyvault_secrets::{
    KeyVaultSecretIdentifier, OffsetDateTime, Pager, SetSecretOptions, Tags,
    UpdateSecretPropertiesOptions,
};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = exit_codes_help!())]
pub struct SecretArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a secret's value: creates the secret, or a new version of it.
    #[command(after_help = SET_HELP)]
    Set(SetArgs),
    /// Show a secret with its value: the latest version, a given version, or a full secret id.
    #[command(
        after_help = "Output: `-o value` prints only the value (followed by a newline); `--file PATH` writes its
bytes exactly (`--file -`: to standard output, nothing added).

Examples:
  keyvault secret show db-pass
  keyvault secret show tls-key --file tls-key.pem
  keyvault secret show db-pass --version 3f0c5d2e8b6a4c1e9d7f0a2b4c6d8e0f -o json
  keyvault secret show --id https://myvault.vault.azure.net/secrets/db-pass/3f0c5d2e8b6a4c1e9d7f0a2b4c6d8e0f
  export DB_PASS=\"$(keyvault secret show db-pass -o value)\"",
        visible_alias = "get"
    )]
    Show(ShowArgs),
    /// List the secrets of the vault (names and properties; never values).
    #[command(after_help = "Output: `-o value` prints one name per line.

Examples:
  keyvault secret list
  keyvault secret list -o tsv | cut -f1")]
    List,
    /// List the versions of a secret (properties; never values).
    #[command(
        after_help = "Output: `-o value` prints one version per line. A secret that does not exist has
no versions (an empty list and exit code 0, as Key Vault answers); table output says so on stderr.

Example:
  keyvault secret list-versions db-pass"
    )]
    ListVersions(NameArg),
    /// Change a version's properties (not its value): the latest version, or --version.
    #[command(after_help = UPDATE_HELP)]
    Update(UpdateArgs),
    /// Delete a secret (every version). With soft delete it stays recoverable until purged.
    #[command(after_help = "Output: `-o value` prints the name.

Examples:
  keyvault secret delete db-pass
  keyvault secret delete db-pass --wait && keyvault secret purge db-pass")]
    Delete(WaitArgs),
    /// List the deleted (recoverable) secrets.
    #[command(after_help = "Output: `-o value` prints one name per line.

Example:
  keyvault secret list-deleted")]
    ListDeleted,
    /// Show a deleted secret: when it was deleted and when it will be purged.
    #[command(after_help = "Output: `-o value` prints the name.

Example:
  keyvault secret show-deleted db-pass")]
    ShowDeleted(NameArg),
    /// Recover a deleted secret (every version).
    #[command(after_help = "Output: `-o value` prints the id of the latest version.

Example:
  keyvault secret recover db-pass --wait")]
    Recover(WaitArgs),
    /// Permanently delete a deleted secret.
    #[command(
        after_help = "Output: `-o value` prints the name; `-o json` prints {\"name\", \"purged\": true}.

Example:
  keyvault secret delete db-pass --wait && keyvault secret purge db-pass"
    )]
    Purge(NameArg),
    /// Write a protected backup of a secret (every version) to a file.
    #[command(
        after_help = "The backup can only be restored into a vault of the same kind. Written to a file, `-o value` \
prints the file's path and `-o json` prints {\"name\", \"file\", \"bytes\"}; `--file -` writes the backup itself \
to standard output.

Example:
  keyvault secret backup db-pass --file db-pass.kvbackup"
    )]
    Backup(BackupArgs),
    /// Restore a secret from a backup file (the name must be free: not in use, not deleted).
    #[command(
        after_help = "Output: `-o value` prints the id of the restored secret's latest version.

Example:
  keyvault secret restore --file db-pass.kvbackup"
    )]
    Restore(RestoreArgs),
    /// Set many secrets from a .env file or a JSON object of name → value.
    #[command(after_help = crate::bulk::IMPORT_HELP)]
    Import(ImportArgs),
    /// Write every enabled secret's latest value to a JSON object or a .env file.
    #[command(after_help = crate::bulk::EXPORT_HELP)]
    Export(ExportArgs),
}

const SET_HELP: &str = concat!(
    "Exactly one of --value, --file or --value-stdin gives the value. --file is read as is (`--file -`: \
     standard input, as is); --value-stdin \
     drops one trailing newline, `\\n` or `\\r\\n` (so `echo pass | …` stores `pass`). A value holds at most \
     25,600 bytes: a longer one is refused (exit 2) before anything is sent (input is read no further). An empty value (no input, an empty file, \
     `--value ''`) is refused with exit code 2 unless --allow-empty is given, so that `producer | keyvault \
     secret set …` does not wipe the secret when the producer fails. On a terminal, --value-stdin prompts \
     and reads one line without echo, and `--file -` everything typed until Ctrl-D, as is, without echo \
     (Ctrl-C: exit 130). Values must be UTF-8 text (encode binary \
     data first, e.g. with base64). Prefer --file or --value-stdin to --value: command lines end up in shell \
     history and `ps`.

",
    when_help!(),
    "

Output: `-o value` prints the id of the new version.

Examples:
  keyvault secret set db-pass --value-stdin < password.txt
  printf %s \"$TOKEN\" | keyvault secret set api-token --value-stdin --expires 30d --tags env=prod team=web
  keyvault secret set tls-key --file key.pem --content-type application/x-pem-file"
);

const UPDATE_HELP: &str = concat!(
    "Only the flags given change. --tags replaces every tag; `--tags` with nothing after it removes them all.

",
    when_help!(),
    "

Output: `-o value` prints the id of the version.

Examples:
  keyvault secret update db-pass --expires 2030-01-01 --tags env=prod
  keyvault secret update db-pass --version 3f0c5d2e8b6a4c1e9d7f0a2b4c6d8e0f --disabled"
);

#[derive(Args)]
pub struct NameArg {
    /// The secret's name: 1-127 characters of 0-9, a-z, A-Z and '-'.
    pub name: String,
}

#[derive(Args)]
pub struct WaitArgs {
    /// The secret's name.
    pub name: String,
    /// Wait until the vault has finished the operation.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the longest to wait in all, in seconds (each poll also gets --timeout); past it, exit 1
    /// with an error saying the operation was accepted and is still running. 0: no limit. Without --wait it
    /// does nothing (so KEYVAULT_WAIT_TIMEOUT can be set for every command).
    #[arg(
        long,
        env = "KEYVAULT_WAIT_TIMEOUT",
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub wait_timeout: u64,
}

/// The deleted secret `name`, if it was deleted at or after `since` (with 5 s for the two clocks' difference).
async fn deleted_since(
    client: &keyvault_secrets::SecretClient,
    name: &str,
    since: OffsetDateTime,
) -> Option<keyvault_secrets::DeletedSecret> {
    let deleted = client.get_deleted_secret(name).await.ok()?;
    let when = deleted.deleted_date()?;
    (when >= since - time::Duration::seconds(5)).then_some(deleted)
}

/// Wait for `poller` for at most `secs` seconds (0: no limit); past it, an error (exit 1) saying that the
/// vault accepted the operation (`doing`, e.g. "deleting secret 'x'") and has not finished it yet.
async fn wait_bounded<T: keyvault_secrets::PollerResult>(
    poller: &mut keyvault_secrets::Poller<T>,
    secs: u64,
    doing: &str,
    on_error: impl Fn(keyvault_secrets::Error) -> CliError,
) -> CliResult {
    // A poll that fails (throttled, the vault unavailable) fails the wait, not the request: say so.
    let on_error = |e: keyvault_secrets::Error| {
        let cli = on_error(e);
        CliError::new(
            cli.code,
            format!(
                "the vault accepted the request ({doing}), but waiting for it to finish failed: {}",
                cli.message
            ),
        )
    };
    if secs == 0 {
        return poller.wait().await.map_err(on_error);
    }
    let status = poller
        .wait_timeout(std::time::Duration::from_secs(secs))
        .await
        .map_err(on_error)?;
    if status == keyvault_secrets::PollerStatus::Succeeded {
        Ok(())
    } else {
        Err(CliError::other(format!(
            "the vault accepted the request and is still {doing} after {secs} s of --wait; it may finish \
             later [--wait-timeout SECS sets how long to wait; 0: no limit]"
        )))
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ValueSource {
    /// The value (visible in shell history and `ps`: prefer --file or --value-stdin). It may start with
    /// '-' (`--value -x` is the value "-x").
    #[arg(long, value_name = "VALUE", allow_hyphen_values = true)]
    pub value: Option<String>,
    /// Read the value from a file, as is (`-`: standard input, as is).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Read the value from standard input (one trailing newline is dropped); on a terminal, one line typed
    /// at a prompt, not echoed.
    #[arg(long)]
    pub value_stdin: bool,
}

#[derive(Args)]
pub struct PropertyArgs {
    /// Content type, e.g. text/plain or application/json.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Tags: space-separated KEY=VALUE pairs (a bare KEY has an empty value; the value is everything after
    /// the first '=', commas included). Table and TSV output print them as KEY=VALUE,KEY=VALUE with '\', ','
    /// and '=' inside a key or value escaped by a backslash.
    #[arg(long, num_args = 0.., value_name = "KEY=VALUE")]
    pub tags: Option<Vec<String>>,
    /// Expiry date (see WHEN below).
    #[arg(long, value_name = "WHEN", value_parser = when_arg)]
    pub expires: Option<OffsetDateTime>,
    /// Not-before date (see WHEN below).
    #[arg(long, value_name = "WHEN", value_parser = when_arg)]
    pub not_before: Option<OffsetDateTime>,
    /// Disable the version (it cannot be read until enabled again).
    #[arg(long, conflicts_with = "enabled")]
    pub disabled: bool,
    /// Enable the version.
    #[arg(long)]
    pub enabled: bool,
}

#[derive(Args)]
pub struct SetArgs {
    /// The secret's name: 1-127 characters of 0-9, a-z, A-Z and '-'.
    pub name: String,
    #[command(flatten)]
    pub source: ValueSource,
    /// Store an empty value (refused otherwise: empty input is more often a failed command before a pipe,
    /// an empty file or an unset variable than a wish to wipe the secret).
    #[arg(long)]
    pub allow_empty: bool,
    #[command(flatten)]
    pub props: PropertyArgs,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The secret's name.
    #[arg(required_unless_present = "id")]
    pub name: Option<String>,
    /// A version (default: the latest).
    #[arg(long, conflicts_with = "id")]
    pub version: Option<String>,
    /// A full secret id, https://{vault}/secrets/{name}[/{version}] (also gives the vault URL).
    #[arg(long, value_name = "URL", conflicts_with = "name")]
    pub id: Option<String>,
    /// Write only the value, its bytes exactly (no newline added), to PATH (mode 0600; `-` for standard
    /// output) instead of printing the secret.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Replace the --file if it exists.
    #[arg(long, requires = "file")]
    pub overwrite: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// The secret's name.
    pub name: String,
    /// A version (default: the latest).
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub props: PropertyArgs,
}

#[derive(Args)]
pub struct BackupArgs {
    /// The secret's name.
    pub name: String,
    /// Where to write the backup (`-` for standard output).
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
}

/// Parse `KEY=VALUE` tags.
pub fn parse_tags(tags: &[String]) -> CliResult<Tags> {
    let mut out = Tags::new();
    for t in tags {
        let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
        if k.is_empty() {
            return Err(CliError::bad_input(format!(
                "invalid tag '{t}': expected KEY=VALUE"
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(CliError::bad_input(format!(
                "tag '{k}' is given twice (tag names are case-sensitive: each names one tag)"
            )));
        }
    }
    Ok(out)
}

impl PropertyArgs {
    fn enabled(&self) -> Option<bool> {
        match (self.enabled, self.disabled) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    pub fn set_options(&self) -> CliResult<SetSecretOptions> {
        Ok(SetSecretOptions {
            content_type: self.content_type.clone(),
            enabled: self.enabled(),
            expires_on: self.expires,
            not_before: self.not_before,
            tags: self.tags.as_deref().map(parse_tags).transpose()?,
        })
    }

    fn update_options(&self) -> CliResult<UpdateSecretPropertiesOptions> {
        Ok(UpdateSecretPropertiesOptions {
            content_type: self.content_type.clone(),
            enabled: self.enabled(),
            expires_on: self.expires,
            not_before: self.not_before,
            tags: self.tags.as_deref().map(parse_tags).transpose()?,
        })
    }
}

/// Bytes that must be text: say where the first bad byte is, never what the value is.
pub fn utf8_value(bytes: Vec<u8>, from: &str) -> CliResult<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        CliError::bad_input(format!(
            "the value from {from} is not valid UTF-8 (byte {at}, line {line}): Key Vault secret values \
             are text; encode binary data first (e.g. base64)"
        ))
    })
}

fn read_value(source: &ValueSource) -> CliResult<String> {
    if let Some(v) = &source.value {
        return Ok(v.clone());
    }
    // With `--value-stdin`, room for the line break dropped below.
    let what = "a secret value may be (25,600 bytes)";
    let limit = keyvault_types::rules::MAX_VALUE_BYTES + 2;
    let path = source.file.as_deref().unwrap_or(Path::new("-"));
    let (bytes, from) = crate::input::read_bounded(path, limit, what)?;
    if path != Path::new("-") {
        return utf8_value(bytes, &from);
    }
    let mut value = utf8_value(bytes, "standard input")?;
    // `--file -` is read as is, as any --file.
    if source.value_stdin && value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

/// The vault to use for `show --id`, when no other source names one.
pub fn fallback_url(command: &SecretCommand) -> CliResult<Option<String>> {
    if let SecretCommand::Show(ShowArgs { id: Some(id), .. }) = command {
        let id = KeyVaultSecretIdentifier::parse(id)
            .map_err(|e| CliError::bad_input(e.message().to_string()))?;
        return Ok(Some(id.vault_url().to_string()));
    }
    Ok(None)
}

async fn collect<T: Unpin>(
    mut pager: Pager<T>,
    conn: &Conn,
    target: Target<'_>,
) -> CliResult<Vec<T>> {
    let mut items = Vec::new();
    while let Some(item) = pager.next().await {
        items.push(item.map_err(|e| CliError::from_client(&e, target, conn.vault()))?);
    }
    Ok(items)
}

pub async fn run(conn: &Conn, command: SecretCommand, out: &mut dyn Write) -> CliResult {
    let client = &conn.client;
    let vault = conn.vault();
    let fmt = conn.output;
    let err = |target| on(target, vault);
    match command {
        SecretCommand::Set(a) => {
            let options = a.props.set_options()?;
            let from_stdin =
                a.source.value_stdin || a.source.file.as_deref() == Some(Path::new("-"));
            let at_terminal = from_stdin && crate::tty::stdin_is_terminal();
            let value = if at_terminal && a.source.value_stdin {
                crate::tty::read_hidden_line(&format!("Value for '{}': ", a.name)).await?
            } else if at_terminal {
                // `--file -`: as is, every line typed or pasted, until Ctrl-D.
                crate::tty::read_hidden_text(&format!(
                    "Value for '{}' (as is, end with Ctrl-D on a line of its own): ",
                    a.name
                ))
                .await?
            } else {
                zeroize::Zeroizing::new(read_value(&a.source)?)
            };
            let from = || match (&a.source.value, &a.source.file) {
                (Some(_), _) => "--value".to_string(),
                (None, Some(p)) if p != Path::new("-") => format!("'{}'", p.display()),
                (None, _) => "standard input".to_string(),
            };
            if value.is_empty() && !a.allow_empty {
                return Err(CliError::bad_input(format!(
                    "the value from {} is empty; nothing was written (a failed command before a pipe, an \
                     empty file or an unset variable gives no input): pass --allow-empty to store an empty value",
                    from()
                )));
            }
            if value.len() > keyvault_types::rules::MAX_VALUE_BYTES {
                return Err(CliError::bad_input(format!(
                    "the value from {} is {} bytes, more than a secret value may be (25,600 bytes); nothing \
                     was sent",
                    from(),
                    value.len()
                )));
            }
            let s = client
                .set_secret(&a.name, value.as_str(), Some(options))
                .await
                .map_err(err(Target::Secret(&a.name, None)))?;
            let v = View::from_properties(&s.properties);
            render::print_one(out, fmt, &v, render::DETAIL, render::value_id)
        }
        SecretCommand::Show(a) => {
            if let Some(file) = &a.file {
                refuse_existing(file, a.overwrite)?;
            }
            let s = match (&a.id, &a.name) {
                (Some(id), _) => {
                    let id = KeyVaultSecretIdentifier::parse(id)
                        .map_err(|e| CliError::bad_input(e.message().to_string()))?;
                    client
                        .get_secret_by_id(&id)
                        .await
                        .map_err(err(Target::Secret(id.name(), id.version())))?
                }
                (None, Some(name)) => client
                    .get_secret(name, a.version.as_deref())
                    .await
                    .map_err(err(Target::Secret(name, a.version.as_deref())))?,
                (None, None) => return Err(CliError::bad_input("a name or --id is required")),
            };
            if let Some(file) = &a.file {
                let value = s.value().unwrap_or_default().as_bytes();
                return write_result(
                    out,
                    fmt,
                    file,
                    value,
                    &s.name,
                    "the value",
                    "wrote the value of",
                );
            }
            let v = View::from_secret(&s);
            render::print_one(out, fmt, &v, render::DETAIL_WITH_VALUE, render::value_value)
        }
        SecretCommand::List => {
            let pager = client
                .list_properties_of_secrets(None)
                .map_err(err(Target::Vault))?;
            let items = collect(pager, conn, Target::Vault).await?;
            let views: Vec<View> = items.iter().map(View::from_properties).collect();
            render::print_list(out, fmt, &views, render::LIST, render::value_name)
        }
        SecretCommand::ListVersions(a) => {
            let target = Target::Secret(&a.name, None);
            let pager = client
                .list_properties_of_secret_versions(&a.name, None)
                .map_err(err(target))?;
            let mut items = collect(pager, conn, target).await?;
            // Oldest first, like a history. This server's version ids grow in the order the versions were
            // made (even across a clock set back, which `created` does not), and it lists them in that order;
            // Key Vault's ids are random, so there the versions are put in order by creation time.
            if !items.iter().all(|p| {
                p.version
                    .as_deref()
                    .and_then(keyvault_types::rules::time_ordered_version_ms)
                    .is_some()
            }) {
                items.sort_by_key(|p| p.created_on);
            }
            let views: Vec<View> = items.iter().map(View::from_properties).collect();
            // Key Vault answers an empty list for a secret that does not exist: a person is told.
            if views.is_empty() && fmt == crate::conn::Output::Table {
                stderr_line!(
                    "no versions: there is no secret '{}' in {vault} (a deleted one is in list-deleted)",
                    a.name
                );
            }
            render::print_list(out, fmt, &views, render::VERSIONS, render::value_version)
        }
        SecretCommand::Update(a) => {
            let options = a.props.update_options()?;
            if options == UpdateSecretPropertiesOptions::default() {
                return Err(CliError::bad_input(
                    "nothing to update: give at least one of --content-type, --tags, --expires, \
                     --not-before, --enabled, --disabled",
                ));
            }
            let p = client
                .update_secret_properties(&a.name, a.version.as_deref(), options)
                .await
                .map_err(err(Target::Secret(&a.name, a.version.as_deref())))?;
            render::print_one(
                out,
                fmt,
                &View::from_properties(&p),
                render::DETAIL,
                render::value_id,
            )
        }
        SecretCommand::Delete(a) => {
            let target = Target::Secret(&a.name, None);
            let started = OffsetDateTime::now_utc();
            let mut poller = match client.begin_delete_secret(&a.name).await {
                Ok(poller) => poller,
                // A delete whose answer was lost (a dropped connection, a gateway's 5xx) is tried again and
                // meets the secret it deleted: 404. A secret deleted while this command ran is taken as this
                // command's doing, not as "not found".
                Err(e)
                    if e.kind() == keyvault_secrets::ErrorKind::ResourceNotFound
                        && crate::notes::retried_after_a_try_that_may_have_been_applied() =>
                {
                    let Some(d) = deleted_since(client, &a.name, started).await else {
                        return Err(err(target)(e));
                    };
                    stderr_line!(
                        "note: {vault} answered that secret '{}' does not exist, and it was deleted just now: \
                         an earlier try of this delete did it (its answer was lost)",
                        a.name
                    );
                    return render::print_one(
                        out,
                        fmt,
                        &View::from_deleted(&d),
                        render::DELETED_DETAIL,
                        render::value_name,
                    );
                }
                Err(e) => return Err(err(target)(e)),
            };
            if a.wait {
                let doing = format!("deleting secret '{}'", a.name);
                wait_bounded(&mut poller, a.wait_timeout, &doing, err(target)).await?;
            }
            let d = poller.into_result();
            render::print_one(
                out,
                fmt,
                &View::from_deleted(&d),
                render::DELETED_DETAIL,
                render::value_name,
            )
        }
        SecretCommand::ListDeleted => {
            let pager = client
                .list_deleted_secrets(None)
                .map_err(err(Target::Vault))?;
            let items = collect(pager, conn, Target::Vault).await?;
            let views: Vec<View> = items.iter().map(View::from_deleted).collect();
            render::print_list(out, fmt, &views, render::DELETED_LIST, render::value_name)
        }
        SecretCommand::ShowDeleted(a) => {
            let d = client
                .get_deleted_secret(&a.name)
                .await
                .map_err(err(Target::Deleted(&a.name)))?;
            render::print_one(
                out,
                fmt,
                &View::from_deleted(&d),
                render::DELETED_DETAIL,
                render::value_name,
            )
        }
        SecretCommand::Recover(a) => {
            let target = Target::Deleted(&a.name);
            let mut poller = client
                .begin_recover_deleted_secret(&a.name)
                .await
                .map_err(err(target))?;
            if a.wait {
                let doing = format!("recovering secret '{}'", a.name);
                let on_error = err(Target::Secret(&a.name, None));
                wait_bounded(&mut poller, a.wait_timeout, &doing, on_error).await?;
            }
            let p = poller.into_result();
            render::print_one(
                out,
                fmt,
                &View::from_properties(&p),
                render::DETAIL,
                render::value_id,
            )
        }
        SecretCommand::Purge(a) => {
            client
                .purge_deleted_secret(&a.name)
                .await
                .map_err(err(Target::Deleted(&a.name)))?;
            let done = serde_json::json!({ "name": a.name, "purged": true });
            done_line(out, fmt, &done, &a.name, || format!("purged '{}'", a.name))
        }
        SecretCommand::Backup(a) => {
            refuse_existing(&a.file, a.overwrite)?;
            let bytes = client
                .backup_secret(&a.name)
                .await
                .map_err(err(Target::Secret(&a.name, None)))?;
            write_result(
                out,
                fmt,
                &a.file,
                &bytes,
                &a.name,
                "the backup",
                "backed up",
            )
        }
        SecretCommand::Restore(a) => {
            let (bytes, _) = crate::input::read_bounded(
                &a.file,
                keyvault_server::vault::MAX_BACKUP_BLOB_BYTES,
                "the largest backup (24 MiB)",
            )?;
            let p = client
                .restore_secret_backup(&bytes)
                .await
                .map_err(err(Target::Vault))?;
            render::print_one(
                out,
                fmt,
                &View::from_properties(&p),
                render::DETAIL,
                render::value_id,
            )
        }
        SecretCommand::Import(a) => crate::bulk::import(conn, a, out).await,
        SecretCommand::Export(a) => crate::bulk::export(conn, a, out).await,
    }
}

/// What a command that returns nothing from the vault prints when it is done: `json` as JSON, `bare` alone
/// with `-o value` (as it is) and `-o tsv` (escaped), so scripts can check it, and with table output a
/// sentence for people, on standard error.
fn done_line(
    out: &mut dyn Write,
    fmt: crate::conn::Output,
    json: &serde_json::Value,
    bare: &str,
    sentence: impl FnOnce() -> String,
) -> CliResult {
    use crate::conn::Output;
    match fmt {
        Output::Json => {
            let text = render::json_text(json);
            writeln!(out, "{text}").map_err(io_error)
        }
        Output::Tsv => writeln!(out, "{}", render::tsv_escape(bare)).map_err(io_error),
        // As it is: `$(… -o value)` must give the real path.
        Output::Value => writeln!(out, "{bare}").map_err(io_error),
        Output::Table => {
            stderr_line!("{}", sentence());
            Ok(())
        }
    }
}

/// Turn a client error about `target` into the CLI's error.
fn on<'a>(target: Target<'a>, vault: &'a str) -> impl Fn(keyvault_secrets::Error) -> CliError + 'a {
    move |e| CliError::from_client(&e, target, vault)
}

/// `--file PATH` to write: an existing file is refused unless `--overwrite` (before any request is made).
fn refuse_existing(file: &Path, overwrite: bool) -> CliResult {
    if file != Path::new("-") && !overwrite && file.exists() {
        return Err(CliError::bad_input(format!(
            "{} exists (pass --overwrite to replace it)",
            file.display()
        )));
    }
    Ok(())
}

/// What `backup` and `show --file` write: `bytes` exactly, to standard output (`-`: all of them, or an error)
/// or to a file readable by its owner only, which is then reported in the output format.
fn write_result(
    out: &mut dyn Write,
    fmt: crate::conn::Output,
    file: &Path,
    bytes: &[u8],
    name: &str,
    what: &'static str,
    done: &str,
) -> CliResult {
    if file == Path::new("-") {
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(crate::errors::whole_output_error(what));
    }
    write_private(file, bytes)?;
    let file = file.display().to_string();
    let json = serde_json::json!({ "name": name, "file": file, "bytes": bytes.len() });
    done_line(out, fmt, &json, &file, || {
        format!("{done} '{name}' to {file} ({} bytes)", bytes.len())
    })
}

/// Write a file readable by its owner only (it holds secrets). A regular file that already exists (`--overwrite`)
/// is made private before it is emptied and written, not left with the mode it had; a file that cannot be made
/// private is not written. Other files (a pipe, a terminal) are written as they are.
pub fn write_private(path: &Path, bytes: &[u8]) -> CliResult {
    let fail = |e: std::io::Error| CliError::other(format!("cannot write {}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    // A path that cannot be opened for writing (a missing directory, no permission, a directory) is bad input;
    // a write that fails after (a full disk) is not.
    let mut f = options
        .open(path)
        .map_err(|e| CliError::bad_input(format!("cannot write {}: {e}", path.display())))?;
    let meta = f.metadata().map_err(fail)?;
    if meta.is_file() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o7777 != 0o600 {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| {
                        CliError::other(format!(
                            "cannot make {} readable by its owner only: {e}",
                            path.display()
                        ))
                    })?;
            }
        }
        f.set_len(0).map_err(fail)?;
    }
    f.write_all(bytes).and_then(|()| f.flush()).map_err(fail)
}
