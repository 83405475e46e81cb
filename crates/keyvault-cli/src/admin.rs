//! `keyvault principal …` and `keyvault role …`: the server's admin API (`/admin/…`), through the client
//! library's `send_request` (the same authentication pipeline as every other command). Needs the
//! administration permission (Key Vault Administrator). A generated client secret is printed once, to
//! standard output only.

use crate::conn::{Conn, ConnArgs, Output};
use crate::errors::{CliError, CliResult, Target, io_error};
use clap::{Args, Subcommand};
use keyvault_secrets::http::{Method, Request};
use serde_json::Value;
use std::io::Write;

#[derive(Args)]
pub struct PrincipalArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: PrincipalCommand,
}

#[derive(Subcommand)]
pub enum PrincipalCommand {
    /// Create an application (OAuth client): prints its client id and a generated secret, shown once.
    #[command(
        after_help = "Output: `-o value` prints only the client secret; `-o json` prints clientId, \
clientSecret, keyId, secrets and assignments.

Examples:
  keyvault principal create --name billing --role \"Key Vault Secrets User\" --scope '/secrets/billing-*'
  keyvault principal create --name ci --expires 90d -o json"
    )]
    Create {
        /// A display name.
        #[arg(long)]
        name: Option<String>,
        /// When the secret expires: 30d, 12h, 2w, 2030-01-01 or RFC 3339 [default: never].
        #[arg(long, value_name = "WHEN", value_parser = crate::when::when_arg)]
        expires: Option<time::OffsetDateTime>,
        /// A role to assign at once (name or built-in role id).
        #[arg(long)]
        role: Option<String>,
        /// The role's scope: /, /secrets/NAME or /secrets/PREFIX* [default: /].
        #[arg(long, requires = "role")]
        scope: Option<String>,
    },
    /// List the principals that may get tokens (`-o value`: their client ids).
    #[command(after_help = "Examples:
  keyvault principal list
  keyvault principal list -o value | xargs -n1 keyvault principal show")]
    List,
    /// Show one principal (`-o value`: its secrets' key ids).
    #[command(after_help = "Example:
  keyvault principal show 6f1c…")]
    Show {
        /// The client id (an argument of its own: `--client-id` is the credential's).
        #[arg(value_name = "CLIENT_ID")]
        principal: String,
    },
    /// Delete a principal made with `principal create`, its secrets and its role assignments.
    #[command(
        after_help = "Its tokens stop working at once (401), as do its secrets.

Example:
  keyvault principal delete 6f1c…"
    )]
    Delete {
        /// The client id (an argument of its own: `--client-id` is the credential's).
        #[arg(value_name = "CLIENT_ID")]
        principal: String,
    },
    /// Add a secret to a principal (rotation): printed once. Remove the old one with `remove-secret`.
    #[command(after_help = "Output: `-o value` prints only the new client secret.

Examples:
  keyvault principal add-secret 6f1c… --expires 90d
  keyvault principal show 6f1c…            # the key ids of its secrets
  keyvault principal remove-secret 6f1c… KEY_ID_OF_THE_OLD_ONE")]
    AddSecret {
        /// The client id (an argument of its own: `--client-id` is the credential's).
        #[arg(value_name = "CLIENT_ID")]
        principal: String,
        /// When the secret expires: 30d, 12h, 2w, 2030-01-01 or RFC 3339 [default: never].
        #[arg(long, value_name = "WHEN", value_parser = crate::when::when_arg)]
        expires: Option<time::OffsetDateTime>,
    },
    /// Remove one secret of a principal, by key id (see `principal show`).
    #[command(after_help = "Example:
  keyvault principal remove-secret 6f1c… 2c9d…")]
    RemoveSecret {
        /// The client id (an argument of its own: `--client-id` is the credential's).
        #[arg(value_name = "CLIENT_ID")]
        principal: String,
        /// The secret's key id.
        key_id: String,
    },
}

#[derive(Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: RoleCommand,
}

#[derive(Subcommand)]
pub enum RoleCommand {
    /// Assign a role to a principal (a client id, or an external identity's id) at a scope.
    #[command(
        after_help = "Roles: Key Vault Administrator, Key Vault Secrets Officer, Key Vault Secrets User, \
Key Vault Reader, and custom roles (`role define`, or the configuration's [[roles]]).

Examples:
  keyvault role assign --principal 6f1c…  --role \"Key Vault Reader\"
  keyvault role assign --principal 6f1c…  --role \"Key Vault Secrets User\" --scope /secrets/db-password"
    )]
    Assign {
        #[arg(long)]
        principal: String,
        #[arg(long)]
        role: String,
        /// /, /secrets/NAME or /secrets/PREFIX* [default: /].
        #[arg(long)]
        scope: Option<String>,
    },
    /// List role assignments (`-o value`: their ids).
    #[command(after_help = "Examples:
  keyvault role list
  keyvault role list --principal 6f1c… -o json")]
    List {
        /// Only this principal's.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Remove a role assignment made with `role assign` (by id; see `role list`).
    #[command(after_help = "Example:
  keyvault role remove 0b7e…")]
    Remove {
        /// The assignment id.
        id: String,
    },
    /// List the role definitions (`-o value`: their names).
    #[command(after_help = "Example:
  keyvault role definitions")]
    Definitions,
    /// Define a custom role (or redefine one made with `role define`): a name and its permissions.
    #[command(
        after_help = "Permissions: get, list, set, delete, recover, backup, restore, purge, admin.

Examples:
  keyvault role define \"CI Reader\" --permissions get,list
  keyvault role assign --principal 6f1c… --role \"CI Reader\" --scope '/secrets/ci-*'"
    )]
    Define {
        /// The role's name (1-128 characters).
        name: String,
        /// Comma-separated permissions.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<String>,
    },
    /// Delete a custom role made with `role define` (refused while it is assigned).
    #[command(after_help = "Example:
  keyvault role delete-definition \"CI Reader\"")]
    DeleteDefinition {
        /// The role's name.
        name: String,
    },
}

/// A role name as one path segment (percent-encoded).
fn role_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.trim().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn role_row(r: &Value) -> Vec<String> {
    let perms: Vec<String> = r["permissions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(s)
        .collect();
    let kind = if r["builtin"] == true {
        "built-in"
    } else if r["managed"] == true {
        "custom"
    } else {
        "configured"
    };
    vec![s(&r["name"]), kind.to_string(), perms.join(",")]
}

const ROLE_HEADER: [&str; 3] = ["Name", "Kind", "Permissions"];

/// An id as one path segment: letters, digits, '-', '_' and '.'.
fn segment(id: &str) -> CliResult<&str> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(id)
    } else {
        Err(CliError::bad_input(format!(
            "'{id}' is not a valid id (letters, digits, '-', '_' and '.')"
        )))
    }
}

/// Sends an admin request; a non-2xx answer becomes the CLI's error.
pub(crate) async fn call(
    conn: &Conn,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> CliResult<Value> {
    let vault = conn.vault().to_string();
    let mut req = Request::new(method, path);
    if let Some(b) = &body {
        req = req
            .with_json(b)
            .map_err(|e| CliError::from_client(&e, Target::Vault, &vault))?;
    }
    let resp = conn
        .client
        .send_request(req)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| CliError::from_client(&e, Target::Vault, &vault))?;
    if resp.body.is_empty() {
        return Ok(Value::Null);
    }
    resp.json::<Value>()
        .map_err(|e| CliError::from_client(&e, Target::Vault, &vault))
}

fn expires(t: Option<time::OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| Value::from(t.unix_timestamp()))
}

/// A time the admin API gives as Unix seconds: RFC 3339, or the seconds themselves when no date can show it
/// (the admin API takes any 64-bit `expiresOn`, far past year 9999); "never" only for none.
fn when(v: &Value) -> String {
    match v {
        Value::Null => "never".to_string(),
        Value::Number(n) => n
            .as_i64()
            .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
            .map(crate::when::format)
            .filter(|text| text.contains('T'))
            .unwrap_or_else(|| format!("{n} (Unix seconds)")),
        other => s(other),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Prints rows: a table (with header), TSV, or one bare field per row.
fn rows(
    out: &mut dyn Write,
    output: Output,
    header: &[&str],
    rows: &[Vec<String>],
    value_column: usize,
) -> CliResult {
    let mut text = String::new();
    match output {
        Output::Value => {
            for r in rows {
                text.push_str(&r[value_column]);
                text.push('\n');
            }
        }
        Output::Tsv => {
            for r in rows {
                // As the secret commands' TSV: a backslash doubled, a terminal-unsafe character as its escape.
                let fields: Vec<String> = r.iter().map(|f| crate::render::tsv_escape(f)).collect();
                text.push_str(&fields.join("\t"));
                text.push('\n');
            }
        }
        Output::Table | Output::Json => {
            // Shown to a person: a stored name or id must not move the cursor, hide text or reorder it.
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| r.iter().map(|f| crate::render::terminal_safe(f)).collect())
                .collect();
            let rows = &rows;
            let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
            for r in rows {
                for (w, f) in widths.iter_mut().zip(r) {
                    *w = (*w).max(f.chars().count());
                }
            }
            let line = |fields: Vec<&str>| {
                let mut l = String::new();
                for (i, (f, w)) in fields.iter().zip(&widths).enumerate() {
                    if i + 1 == fields.len() {
                        l.push_str(f);
                    } else {
                        l.push_str(&format!("{f:<w$}  "));
                    }
                }
                l.trim_end().to_string() + "\n"
            };
            text.push_str(&line(header.to_vec()));
            for r in rows {
                text.push_str(&line(r.iter().map(String::as_str).collect()));
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(io_error)
}

fn json(out: &mut dyn Write, v: &Value) -> CliResult {
    let text = zeroize::Zeroizing::new(format!(
        "{}\n",
        serde_json::to_string_pretty(v).expect("json serialises")
    ));
    out.write_all(text.as_bytes()).map_err(io_error)
}

fn principal_rows(list: &[Value]) -> Vec<Vec<String>> {
    list.iter()
        .map(|p| {
            let secrets = p["secrets"].as_array().map_or(0, Vec::len);
            vec![
                s(&p["clientId"]),
                s(&p["displayName"]),
                if p["managed"] == true {
                    "api"
                } else {
                    "config"
                }
                .to_string(),
                secrets.to_string(),
            ]
        })
        .collect()
}

fn assignment_rows(list: &[Value]) -> Vec<Vec<String>> {
    list.iter()
        .map(|a| {
            vec![
                s(&a["id"]),
                s(&a["principal"]),
                s(&a["role"]),
                s(&a["scope"]),
                if a["notInForce"] == true {
                    // Its role is not defined on the node that answered.
                    "api (not in force: unknown role)"
                } else if a["managed"] == true {
                    "api"
                } else {
                    "config"
                }
                .to_string(),
            ]
        })
        .collect()
}

/// What a principal's default role (`defaultRole`, `defaultRoleApplies`) means, in a line; `None` if absent.
fn default_role_line(d: &Value) -> Option<String> {
    d.is_object().then(|| {
        format!(
            "it holds the default role '{}' on {} (default_client_role in the server's configuration) until \
             an assignment names it",
            s(&d["role"]),
            s(&d["scope"])
        )
    })
}

/// [`default_role_line`] as a note on stderr (for outputs that other programs read).
fn default_role_note(d: &Value) {
    if let Some(line) = default_role_line(d) {
        stderr_line!("note: {}: {line}", s(&d["principal"]));
    }
}

const PRINCIPAL_HEADER: [&str; 4] = ["Client id", "Name", "Source", "Secrets"];
const ASSIGNMENT_HEADER: [&str; 5] = ["Id", "Principal", "Role", "Scope", "Source"];

/// Prints a newly generated secret (with the client id) in the chosen format.
fn print_new_secret(out: &mut dyn Write, output: Output, v: &Value) -> CliResult {
    let secret = zeroize::Zeroizing::new(s(&v["clientSecret"]));
    let text = zeroize::Zeroizing::new(match output {
        Output::Json => {
            json(out, v)?;
            stderr_line!("note: store the client secret now; it cannot be shown again");
            return Ok(());
        }
        Output::Value => format!("{}\n", secret.as_str()),
        Output::Tsv => format!(
            "{}\t{}\t{}\t{}\n",
            s(&v["clientId"]),
            secret.as_str(),
            s(&v["keyId"]),
            when(&v["expiresOn"])
        ),
        Output::Table => format!(
            "Client id      {}\nClient secret  {}\nKey id         {}\nExpires        {}\n",
            s(&v["clientId"]),
            secret.as_str(),
            s(&v["keyId"]),
            when(&v["expiresOn"])
        ),
    });
    out.write_all(text.as_bytes()).map_err(io_error)?;
    stderr_line!("note: store the client secret now; it cannot be shown again");
    Ok(())
}

pub async fn run_principal(
    conn: &Conn,
    command: PrincipalCommand,
    out: &mut dyn Write,
) -> CliResult {
    let output = conn.output;
    match command {
        PrincipalCommand::Create {
            name,
            expires: exp,
            role,
            scope,
        } => {
            let mut body = serde_json::json!({ "expiresOn": expires(exp) });
            if let Some(n) = name {
                body["displayName"] = Value::String(n);
            }
            if let Some(r) = role {
                body["role"] = Value::String(r);
            }
            if let Some(sc) = scope {
                body["scope"] = Value::String(sc);
            }
            let mut v = call(conn, Method::POST, "/admin/principals", Some(body)).await?;
            // The secret's own expiry, for the table.
            if v.get("expiresOn").is_none() {
                let e = v["secrets"][0]["expiresOn"].clone();
                v["expiresOn"] = e;
            }
            let r = print_new_secret(out, output, &v);
            if let Some(Value::String(secret)) = v.get_mut("clientSecret") {
                zeroize::Zeroize::zeroize(secret);
            }
            r
        }
        PrincipalCommand::List => {
            let v = call(conn, Method::GET, "/admin/principals", None).await?;
            if output == Output::Json {
                return json(out, &v["value"]);
            }
            let list = v["value"].as_array().cloned().unwrap_or_default();
            rows(out, output, &PRINCIPAL_HEADER, &principal_rows(&list), 0)
        }
        PrincipalCommand::Show { principal } => {
            let path = format!("/admin/principals/{}", segment(&principal)?);
            let v = call(conn, Method::GET, &path, None).await?;
            if output == Output::Json {
                return json(out, &v);
            }
            let secrets: Vec<Vec<String>> = v["secrets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|x| vec![s(&x["keyId"]), when(&x["expiresOn"])])
                .collect();
            if output == Output::Table {
                rows(
                    out,
                    output,
                    &PRINCIPAL_HEADER,
                    &principal_rows(std::slice::from_ref(&v)),
                    0,
                )?;
                out.write_all(b"\n").map_err(io_error)?;
            }
            rows(out, output, &["Secret key id", "Expires"], &secrets, 0)?;
            if output != Output::Table {
                default_role_note(&v["defaultRole"]);
            }
            if output == Output::Table {
                if let Some(line) = default_role_line(&v["defaultRole"]) {
                    out.write_all(format!("\n{line}\n").as_bytes())
                        .map_err(io_error)?;
                }
                // What else it may sign in with (`[[clients]] certificates`, `federated`).
                let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
                let certificates: Vec<Vec<String>> = (list("certificates").iter())
                    .map(|c| {
                        vec![
                            s(&c["x5t#S256"]),
                            when(&c["notBefore"]),
                            when(&c["notAfter"]),
                        ]
                    })
                    .collect();
                if !certificates.is_empty() {
                    out.write_all(b"\n").map_err(io_error)?;
                    rows(
                        out,
                        output,
                        &["Certificate (x5t#S256)", "Not before", "Not after"],
                        &certificates,
                        0,
                    )?;
                }
                let federated: Vec<Vec<String>> = (list("federated").iter())
                    .map(|f| vec![s(&f["issuer"]), s(&f["subject"]), s(&f["audience"])])
                    .collect();
                if !federated.is_empty() {
                    out.write_all(b"\n").map_err(io_error)?;
                    rows(
                        out,
                        output,
                        &["Federated issuer", "Subject", "Audience"],
                        &federated,
                        0,
                    )?;
                }
            }
            Ok(())
        }
        PrincipalCommand::Delete { principal } => {
            let path = format!("/admin/principals/{}", segment(&principal)?);
            let v = call(conn, Method::DELETE, &path, None).await?;
            match output {
                Output::Json => json(out, &v),
                _ => Ok(()),
            }
        }
        PrincipalCommand::AddSecret {
            principal,
            expires: exp,
        } => {
            let path = format!("/admin/principals/{}/secrets", segment(&principal)?);
            let body = serde_json::json!({ "expiresOn": expires(exp) });
            let mut v = call(conn, Method::POST, &path, Some(body)).await?;
            let r = print_new_secret(out, output, &v);
            if let Some(Value::String(secret)) = v.get_mut("clientSecret") {
                zeroize::Zeroize::zeroize(secret);
            }
            r
        }
        PrincipalCommand::RemoveSecret { principal, key_id } => {
            let path = format!(
                "/admin/principals/{}/secrets/{}",
                segment(&principal)?,
                segment(&key_id)?
            );
            call(conn, Method::DELETE, &path, None).await.map(|_| ())
        }
    }
}

pub async fn run_role(conn: &Conn, command: RoleCommand, out: &mut dyn Write) -> CliResult {
    let output = conn.output;
    match command {
        RoleCommand::Assign {
            principal,
            role,
            scope,
        } => {
            let mut body = serde_json::json!({ "principal": principal, "role": role });
            if let Some(sc) = scope {
                body["scope"] = Value::String(sc);
            }
            let v = call(conn, Method::POST, "/admin/roleAssignments", Some(body)).await?;
            if output == Output::Json {
                return json(out, &v);
            }
            rows(out, output, &ASSIGNMENT_HEADER, &assignment_rows(&[v]), 0)
        }
        RoleCommand::List { principal } => {
            let path = match principal {
                // Any principal an assignment may name (a client id or an external subject), encoded.
                Some(p) => format!(
                    "/admin/roleAssignments?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("principal", &p)
                        .finish()
                ),
                None => "/admin/roleAssignments".to_string(),
            };
            let v = call(conn, Method::GET, &path, None).await?;
            let defaults = v["defaultRoles"].as_array().cloned().unwrap_or_default();
            if matches!(output, Output::Json | Output::Value) {
                // The output stays a list of assignments (ids); what defaults are held goes to stderr.
                defaults.iter().for_each(default_role_note);
                if output == Output::Json {
                    return json(out, &v["value"]);
                }
            }
            let mut list = assignment_rows(&v["value"].as_array().cloned().unwrap_or_default());
            if output != Output::Value {
                // Not assignments (no id): the role held while none names the principal.
                list.extend(defaults.iter().map(|d| {
                    vec![
                        "-".to_string(),
                        s(&d["principal"]),
                        s(&d["role"]),
                        s(&d["scope"]),
                        "default".to_string(),
                    ]
                }));
            }
            rows(out, output, &ASSIGNMENT_HEADER, &list, 0)
        }
        RoleCommand::Remove { id } => {
            let path = format!("/admin/roleAssignments/{}", segment(&id)?);
            let v = call(conn, Method::DELETE, &path, None).await?;
            if let Some(line) = default_role_line(&v["defaultRoleApplies"]) {
                stderr_line!(
                    "note: {} has no role assignment left: {line}",
                    s(&v["principal"])
                );
            }
            match output {
                Output::Json => json(out, &v),
                _ => Ok(()),
            }
        }
        RoleCommand::Definitions => {
            let v = call(conn, Method::GET, "/admin/roles", None).await?;
            if output == Output::Json {
                return json(out, &v["value"]);
            }
            let list: Vec<Vec<String>> = v["value"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(role_row)
                .collect();
            rows(out, output, &ROLE_HEADER, &list, 0)
        }
        RoleCommand::Define { name, permissions } => {
            let permissions: Vec<String> = permissions
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect();
            let body = serde_json::json!({ "permissions": permissions });
            let path = format!("/admin/roles/{}", role_segment(&name));
            let v = call(conn, Method::PUT, &path, Some(body)).await?;
            if output == Output::Json {
                return json(out, &v);
            }
            rows(out, output, &ROLE_HEADER, &[role_row(&v)], 0)
        }
        RoleCommand::DeleteDefinition { name } => {
            let path = format!("/admin/roles/{}", role_segment(&name));
            let v = call(conn, Method::DELETE, &path, None).await?;
            match output {
                Output::Json => json(out, &v),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A principal stored before its characters were checked (an older access document, another node's) is
    /// shown escaped: a table cell cannot reorder or hide text, a TSV line stays one line of its columns.
    #[test]
    fn listed_ids_are_escaped() {
        let list = [serde_json::json!({
            "id": "a1", "principal": "evil\u{202e}nimda\tx\\y\n", "role": "Reader", "scope": "/"
        })];
        let rows_of = |output| {
            let mut out = Vec::new();
            rows(
                &mut out,
                output,
                &ASSIGNMENT_HEADER,
                &assignment_rows(&list),
                0,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        let tsv = rows_of(Output::Tsv);
        assert_eq!(
            tsv,
            "a1\tevil\\u{202e}nimda\\tx\\\\y\\n\tReader\t/\tconfig\n"
        );
        let table = rows_of(Output::Table);
        assert!(
            table.contains("evil\\u{202e}nimda\\tx\\y\\n  Reader"),
            "{table}"
        );
        assert!(
            !table.contains('\u{202e}') && table.lines().count() == 2,
            "{table}"
        );
    }

    /// An expiry no date can show is printed as its seconds, never as "never" (which means none).
    #[test]
    fn times_past_year_9999_print_as_seconds() {
        assert_eq!(when(&Value::Null), "never");
        assert_eq!(when(&serde_json::json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            when(&serde_json::json!(253402300799i64)),
            "9999-12-31T23:59:59Z"
        );
        for secs in [99999999999999i64, i64::MAX, i64::MIN] {
            assert_eq!(
                when(&serde_json::json!(secs)),
                format!("{secs} (Unix seconds)")
            );
        }
        assert_eq!(
            when(&serde_json::json!(u64::MAX)),
            format!("{} (Unix seconds)", u64::MAX)
        );
    }
}
