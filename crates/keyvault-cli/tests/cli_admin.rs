//! `keyvault principal …` and `keyvault role …`: the real binary against a real vault's admin API.

mod cli_support;

use cli_support::{command, kv, run_with, shared};

/// `keyvault ARGS` as the application `client_id` with `secret` (not the dev client).
fn as_app(client_id: &str, secret: &str, args: &[&str]) -> cli_support::Out {
    let v = shared();
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&v.creds).unwrap()).unwrap();
    let mut c = command(None);
    c.env("KEYVAULT_URL", &v.url)
        .env("KEYVAULT_CA_FILE", &v.ca)
        .env("AZURE_TENANT_ID", creds["tenant_id"].as_str().unwrap())
        .env(
            "AZURE_AUTHORITY_HOST",
            creds["authority_host"].as_str().unwrap(),
        )
        .env("AZURE_CLIENT_ID", client_id)
        .env("AZURE_CLIENT_SECRET", secret);
    let mut all = args.to_vec();
    all.push("--no-challenge-verification");
    run_with(c, &all, None)
}

#[test]
fn principals_and_roles_from_the_command_line() {
    let v = shared();
    kv(v, &["secret", "set", "adm-db", "--value", "v1"]).ok();
    kv(v, &["secret", "set", "other-db", "--value", "v1"]).ok();

    // Create an application with a role; its secret is printed once.
    let created = kv(
        v,
        &[
            "principal",
            "create",
            "--name",
            "billing",
            "--role",
            "Key Vault Secrets User",
            "--scope",
            "/secrets/adm-*",
            "-o",
            "json",
        ],
    )
    .ok();
    let j = created.json();
    let id = j["clientId"].as_str().unwrap().to_string();
    let secret = j["clientSecret"].as_str().unwrap().to_string();
    assert!(created.stderr.contains("cannot be shown again"));
    assert!(!created.stderr.contains(&secret));

    // The application can read but not write, and cannot administer.
    let shown = as_app(&id, &secret, &["secret", "show", "adm-db", "-o", "value"]).ok();
    assert_eq!(shown.stdout.trim_end(), "v1");
    as_app(&id, &secret, &["secret", "set", "adm-db", "--value", "v2"]).code(5);
    as_app(&id, &secret, &["principal", "list"]).code(5);

    // An administrator signed in with a client secret (environment, or flags) names another principal: the
    // positional CLIENT_ID is the principal shown, not the credential's client id (they shared one argument
    // id, and the administrator's secret was sent as the other's).
    let admin = kv(
        v,
        &[
            "principal",
            "create",
            "--role",
            "Key Vault Administrator",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    let (admin_id, admin_secret) = (
        admin["clientId"].as_str().unwrap(),
        admin["clientSecret"].as_str().unwrap(),
    );
    let shown = as_app(
        admin_id,
        admin_secret,
        &["principal", "show", &id, "-o", "json"],
    )
    .ok();
    assert_eq!(shown.json()["clientId"], id.as_str(), "{}", shown.stdout);
    let shown = as_app(
        admin_id,
        admin_secret,
        &[
            "principal",
            "show",
            &id,
            "--client-id",
            admin_id,
            "-o",
            "json",
        ],
    )
    .ok();
    assert_eq!(shown.json()["clientId"], id.as_str(), "{}", shown.stdout);
    kv(v, &["principal", "delete", admin_id]).ok();

    // Listed, with its assignment.
    let ids = kv(v, &["principal", "list", "-o", "value"]).ok();
    assert!(ids.stdout.lines().any(|l| l == id), "{}", ids.stdout);
    let table = kv(v, &["principal", "list", "-o", "table"]).ok();
    assert!(table.stdout.starts_with("Client id"), "{}", table.stdout);
    assert!(!table.stdout.contains(&secret));
    let assignments = kv(v, &["role", "list", "--principal", &id, "-o", "json"]).ok();
    let a = assignments.json();
    assert_eq!(a[0]["role"], "Key Vault Secrets User");
    assert_eq!(a[0]["scope"], "/secrets/adm-*");

    // Another role at vault scope: now it sees every name (before: only adm-*).
    let assigned = kv(
        v,
        &[
            "role",
            "assign",
            "--principal",
            &id,
            "--role",
            "Key Vault Reader",
            "-o",
            "value",
        ],
    )
    .ok();
    let assignment_id = assigned.stdout.trim().to_string();
    let names = as_app(&id, &secret, &["secret", "list", "-o", "value"]).ok();
    assert!(names.stdout.contains("other-db"), "{}", names.stdout);
    kv(v, &["role", "remove", &assignment_id]).ok();
    let names = as_app(&id, &secret, &["secret", "list", "-o", "value"]).ok();
    assert!(!names.stdout.contains("other-db") && names.stdout.contains("adm-db"));
    kv(v, &["role", "remove", &assignment_id]).code(3);
    let defs = kv(v, &["role", "definitions", "-o", "value"]).ok();
    assert!(defs.stdout.contains("Key Vault Secrets User"));

    // Rotation: a second secret, then the first removed.
    let added = kv(
        v,
        &[
            "principal",
            "add-secret",
            &id,
            "--expires",
            "30d",
            "-o",
            "json",
        ],
    )
    .ok();
    let secret2 = added.json()["clientSecret"].as_str().unwrap().to_string();
    let old_key = j["keyId"].as_str().unwrap();
    as_app(&id, &secret2, &["secret", "show", "adm-db", "-o", "value"]).ok();
    let keys = kv(v, &["principal", "show", &id, "-o", "value"]).ok();
    assert_eq!(keys.stdout.lines().count(), 2, "{}", keys.stdout);
    kv(v, &["principal", "remove-secret", &id, old_key]).ok();
    as_app(&id, &secret, &["secret", "show", "adm-db"]).code(5);
    as_app(&id, &secret2, &["secret", "show", "adm-db", "-o", "value"]).ok();

    // Deleted: gone, and a second delete is "not found"; the dev client is not deletable (conflict).
    kv(v, &["principal", "delete", &id]).ok();
    as_app(&id, &secret2, &["secret", "show", "adm-db"]).code(5);
    kv(v, &["principal", "delete", &id]).code(3);
    let dev_id = {
        let creds: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&v.creds).unwrap()).unwrap();
        creds["client_id"].as_str().unwrap().to_string()
    };
    kv(v, &["principal", "delete", &dev_id]).code(4);
    kv(v, &["principal", "delete", "not/valid"]).code(2);
}

#[test]
fn custom_roles_from_the_command_line() {
    let v = shared();
    kv(v, &["secret", "set", "ci-token", "--value", "t1"]).ok();
    let created = kv(v, &["principal", "create", "--name", "ci", "-o", "json"]).ok();
    let j = created.json();
    let (id, secret) = (
        j["clientId"].as_str().unwrap().to_string(),
        j["clientSecret"].as_str().unwrap().to_string(),
    );

    // Defined, listed as custom, assigned at a prefix: the application reads (get) but cannot write.
    let defined = kv(
        v,
        &[
            "role",
            "define",
            "CI Reader",
            "--permissions",
            "get,list",
            "-o",
            "json",
        ],
    )
    .ok();
    assert_eq!(
        defined.json()["permissions"],
        serde_json::json!(["get", "list"])
    );
    let table = kv(v, &["role", "definitions", "-o", "tsv"]).ok();
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l == "CI Reader\tcustom\tget,list"),
        "{}",
        table.stdout
    );
    // Built-in roles cannot be redefined; unknown permissions are bad input.
    kv(
        v,
        &["role", "define", "Key Vault Reader", "--permissions", "get"],
    )
    .code(4);
    kv(v, &["role", "define", "Odd", "--permissions", "get,fly"]).code(2);
    let assigned = kv(
        v,
        &[
            "role",
            "assign",
            "--principal",
            &id,
            "--role",
            "ci reader",
            "--scope",
            "/secrets/ci-*",
            "-o",
            "value",
        ],
    )
    .ok();
    // An external identity's subject (not a path segment) can be assigned and listed.
    kv(
        v,
        &[
            "role",
            "assign",
            "--principal",
            "user@example.com",
            "--role",
            "Key Vault Reader",
        ],
    )
    .ok();
    let listed = kv(
        v,
        &[
            "role",
            "list",
            "--principal",
            "user@example.com",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["principal"], "user@example.com");
    let shown = as_app(&id, &secret, &["secret", "show", "ci-token", "-o", "value"]).ok();
    assert_eq!(shown.stdout.trim_end(), "t1");
    as_app(
        &id,
        &secret,
        &["secret", "set", "ci-token", "--value", "t2"],
    )
    .code(5);

    // Redefined with set: takes effect on the next request.
    kv(
        v,
        &[
            "role",
            "define",
            "CI Reader",
            "--permissions",
            "get,list,set",
        ],
    )
    .ok();
    as_app(
        &id,
        &secret,
        &["secret", "set", "ci-token", "--value", "t2"],
    )
    .ok();

    // Not deletable while assigned; deletable after.
    kv(v, &["role", "delete-definition", "CI Reader"]).code(4);
    kv(v, &["role", "remove", assigned.stdout.trim()]).ok();
    kv(v, &["role", "delete-definition", "ci reader"]).ok();
    kv(v, &["role", "delete-definition", "CI Reader"]).code(3);
    let names = kv(v, &["role", "definitions", "-o", "value"]).ok();
    assert!(!names.stdout.contains("CI Reader"), "{}", names.stdout);
    kv(v, &["principal", "delete", &id]).ok();
}

/// A configured client that no assignment names holds the default role, and the CLI says so: `principal
/// show`, `role list` (a row of source `default`; a note on stderr with `-o json`), and `role remove` of its
/// last assignment (the auth audit's finding 4).
#[test]
fn the_default_role_of_a_configured_client_is_shown() {
    let hash = keyvault_server::auth::hash_secret("cfg-secret-not-used-here").unwrap();
    let v = cli_support::start_vault_with(keyvault_server::local::LocalVaultOptions {
        clients: vec![keyvault_server::config::ClientConfig {
            client_id: "cfgdef".into(),
            secret_hashes: vec![hash],
            ..Default::default()
        }],
        ..Default::default()
    });
    let says_default = |text: &str| {
        text.contains("default role 'Key Vault Administrator' on /")
            && text.contains("default_client_role")
    };
    let shown = kv(&v, &["principal", "show", "cfgdef", "-o", "table"]).ok();
    assert!(says_default(&shown.stdout), "{}", shown.stdout);
    let listed = kv(
        &v,
        &["role", "list", "--principal", "cfgdef", "-o", "table"],
    )
    .ok();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.contains("cfgdef"))
        .unwrap_or_else(|| panic!("{}", listed.stdout));
    assert!(
        row.starts_with('-') && row.contains("Key Vault Administrator") && row.ends_with("default"),
        "{row}"
    );
    let as_json = kv(&v, &["role", "list", "--principal", "cfgdef", "-o", "json"]).ok();
    assert_eq!(as_json.json(), serde_json::json!([]));
    assert!(says_default(&as_json.stderr), "{}", as_json.stderr);

    // Narrowed, then its only assignment removed: the removal says the default applies again.
    let assigned = kv(
        &v,
        &[
            "role",
            "assign",
            "--principal",
            "cfgdef",
            "--role",
            "Key Vault Reader",
            "-o",
            "json",
        ],
    )
    .ok();
    let id = assigned.json()["id"].as_str().unwrap().to_string();
    let shown = kv(&v, &["principal", "show", "cfgdef", "-o", "table"]).ok();
    assert!(!shown.stdout.contains("default role"), "{}", shown.stdout);
    let removed = kv(&v, &["role", "remove", &id]).ok();
    assert!(
        removed
            .stderr
            .contains("cfgdef has no role assignment left")
            && says_default(&removed.stderr),
        "{}",
        removed.stderr
    );
}

/// `--max-retries` bounds the token request's retries too, and each one is announced: a token endpoint that
/// cannot be reached (an authority on a closed port) is tried 1 + N times.
#[test]
fn the_token_request_is_retried_as_max_retries_says() {
    let v = shared();
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&v.creds).unwrap()).unwrap();
    for retries in [0usize, 2] {
        let mut c = command(None);
        c.env("KEYVAULT_URL", &v.url)
            .env("KEYVAULT_CA_FILE", &v.ca)
            .env("AZURE_TENANT_ID", creds["tenant_id"].as_str().unwrap())
            .env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:1")
            .env("AZURE_CLIENT_ID", creds["client_id"].as_str().unwrap())
            .env(
                "AZURE_CLIENT_SECRET",
                creds["client_secret"].as_str().unwrap(),
            );
        let max = retries.to_string();
        let out = run_with(
            c,
            &[
                "secret",
                "list",
                "--no-challenge-verification",
                "--max-retries",
                &max,
            ],
            None,
        );
        let notes = out
            .stderr
            .lines()
            .filter(|l| {
                l.starts_with("note: https://127.0.0.1:1/") && l.contains("/token failed (")
            })
            .count();
        assert_eq!(notes, retries, "{}", out.stderr);
        assert!(
            out.stderr
                .lines()
                .last()
                .unwrap_or_default()
                .starts_with("error: "),
            "{}",
            out.stderr
        );
        assert!(
            !out.stderr
                .contains(creds["client_secret"].as_str().unwrap())
        );
    }
}
