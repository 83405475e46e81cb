//! The access-control document's integrity tag with the real binary over SQLite (`{data_dir}/access.json`):
//! a document edited by hand (a backdoor principal with an Administrator assignment) is refused at start,
//! with or without the old tag kept; an untagged document (what a build before the tag wrote) is refused
//! naming `--adopt-access-document`, and adopted with it: saved tagged, its principals and assignments kept.

mod cli_support;

use cli_support::{
    command, dev_serve_args, hash_secret, kv_dev, run_dev_serve, run_with, serve_dev, spawn_server,
    stop_server,
};
use serde_json::{Value, json};
use std::path::Path;

const NOT_VERIFIED: &str = "the access-control document does not verify: it was changed outside the server, or \
                            written under a key this server does not hold";

/// The token endpoint's status for these credentials, at the dev server of `data`.
fn token_status(data: &Path, client_id: &str, secret: &str) -> u16 {
    let creds: Value =
        serde_json::from_slice(&std::fs::read(data.join("dev-credentials.json")).unwrap()).unwrap();
    let ca = std::fs::read(creds["ca_cert"].as_str().unwrap()).unwrap();
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        creds["authority_host"]
            .as_str()
            .unwrap()
            .trim_end_matches('/'),
        creds["tenant_id"].as_str().unwrap()
    );
    let port = creds["vault_url"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let scope = format!("https://localhost:{port}/.default");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
            .build()
            .unwrap();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", secret)
            .append_pair("scope", &scope)
            .finish();
        http.post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// A dev data directory with a secret and a principal made through the admin API (Key Vault Reader):
/// (its client id, its secret).
fn vault_with_a_principal(data: &Path) -> (String, String) {
    let server = serve_dev(data, &[], &[]);
    kv_dev(
        data,
        &["secret", "set", "payroll", "--value", "PAYROLL-SECRET"],
    )
    .ok();
    let made = kv_dev(
        data,
        &[
            "principal",
            "create",
            "--name",
            "app",
            "--role",
            "Key Vault Reader",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(
        token_status(
            data,
            made["clientId"].as_str().unwrap(),
            made["clientSecret"].as_str().unwrap()
        ),
        200
    );
    stop_server(server);
    (
        made["clientId"].as_str().unwrap().to_string(),
        made["clientSecret"].as_str().unwrap().to_string(),
    )
}

/// [`vault_with_a_principal`], its access.json then rewritten without its tag (as a build before the tag
/// stored it): also the document.
fn vault_with_an_untagged_document(data: &Path) -> (String, String, Value) {
    let (app, app_secret) = vault_with_a_principal(data);
    let (_, doc) = stored(data);
    std::fs::write(
        data.join("access.json"),
        serde_json::to_vec_pretty(&doc).unwrap(),
    )
    .unwrap();
    (app, app_secret, doc)
}

/// The stored wrapper of `data`'s access.json, and the document it carries.
fn stored(data: &Path) -> (Value, Value) {
    let wrapper: Value =
        serde_json::from_slice(&std::fs::read(data.join("access.json")).unwrap()).unwrap();
    assert_eq!(wrapper["format"], "keyvault-access/3", "{wrapper}");
    let doc = serde_json::from_str(wrapper["document"].as_str().unwrap()).unwrap();
    (wrapper, doc)
}

fn write(data: &Path, value: &Value) {
    std::fs::write(data.join("access.json"), serde_json::to_vec(value).unwrap()).unwrap();
}

/// The audit's F2 over SQLite: a writer of the data directory adds a principal with a hash of his own and an
/// Administrator assignment. Untagged, or with the old tag kept: the server does not start (exit 2), saying
/// why; the backdoor never gets a token. The genuine document back: it starts, the backdoor is unknown.
#[test]
fn a_hand_edited_access_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (app, app_secret) = vault_with_a_principal(&data);
    let genuine = std::fs::read(data.join("access.json")).unwrap();
    let (wrapper, mut doc) = stored(&data);
    let kek_id = run_with(
        command(None),
        &["kek", "id", data.join("kek.key").to_str().unwrap()],
        None,
    )
    .ok()
    .stdout
    .trim()
    .to_string();
    assert_eq!(wrapper["kek"], kek_id.as_str());
    // Not the document in the clear beside the tag: its own fields are inside the string only.
    assert!(wrapper.get("principals").is_none());

    let hash = hash_secret("backdoor-pass");
    doc["principals"].as_array_mut().unwrap().push(json!({
        "clientId": "backdoor", "displayName": "backdoor", "createdOn": 1,
        "secrets": [{"hash": hash, "expiresOn": null, "createdOn": 1}]
    }));
    doc["assignments"].as_array_mut().unwrap().push(json!({
        "id": "00000000-0000-0000-0000-0000000000bd", "principal": "backdoor",
        "role": "Key Vault Administrator", "scope": "/"
    }));

    // Re-serialised without the wrapper (untagged): refused, naming the flag.
    write(&data, &doc);
    let out = run_dev_serve(&data, &[]).code(2);
    assert!(
        out.stderr.contains("has no integrity tag"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--adopt-access-document"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("backdoor") && !out.stderr.contains("$argon2"),
        "{}",
        out.stderr
    );

    // The old tag kept over the new document.
    let mut kept = wrapper.clone();
    kept["document"] = Value::String(serde_json::to_string(&doc).unwrap());
    write(&data, &kept);
    let out = run_dev_serve(&data, &[]).code(2);
    assert!(out.stderr.contains(NOT_VERIFIED), "{}", out.stderr);
    assert!(
        out.stderr.contains("its tag does not match"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("backdoor") && !out.stderr.contains("$argon2"),
        "{}",
        out.stderr
    );
    // --adopt-access-document adopts only an untagged document, never one whose tag does not verify.
    run_dev_serve(&data, &["--adopt-access-document"]).code(2);

    // A tag naming a key this server does not hold.
    let mut foreign = kept.clone();
    foreign["kek"] = json!("0badc0de");
    write(&data, &foreign);
    let out = run_dev_serve(&data, &[]).code(2);
    assert!(
        out.stderr.contains(NOT_VERIFIED)
            && out
                .stderr
                .contains("key id 0badc0de, which is not configured"),
        "{}",
        out.stderr
    );

    // The genuine document back: it starts; the backdoor gets no token, the app does.
    std::fs::write(data.join("access.json"), genuine).unwrap();
    let server = serve_dev(&data, &[], &[]);
    assert_ne!(token_status(&data, "backdoor", "backdoor-pass"), 200);
    assert_eq!(token_status(&data, &app, &app_secret), 200);
    stop_server(server);
}

/// An untagged access.json (the document as a build before the tag stored it): refused at start with the
/// flag named; `--adopt-access-document` starts, logs what it adopted, saves it tagged, keeps its principal
/// and assignment; later starts need no flag, and the flag over a tagged document adopts nothing.
#[test]
fn an_untagged_access_file_is_adopted_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (app, app_secret, doc) = vault_with_an_untagged_document(&data);
    // This build recorded in the store that its document is tagged: an untagged one is then refused even
    // with the flag (tampering, not an upgrade).
    let out = run_dev_serve(&data, &["--adopt-access-document"]).code(2);
    assert!(
        out.stderr.contains(NOT_VERIFIED) && out.stderr.contains("saved tagged before"),
        "{}",
        out.stderr
    );
    // A data directory an older build wrote has no such record.
    forget_tagged(&data);

    let out = run_dev_serve(&data, &[]).code(2);
    assert!(
        out.stderr.contains("has no integrity tag")
            && out
                .stderr
                .contains("start once with `keyvault serve --adopt-access-document`"),
        "{}",
        out.stderr
    );
    // Nothing was written.
    assert!(
        serde_json::from_slice::<Value>(&std::fs::read(data.join("access.json")).unwrap())
            .unwrap()
            .get("format")
            .is_none()
    );

    let mut c = command(None);
    c.args(dev_serve_args(&data)).arg("--adopt-access-document");
    let (server, addr, lines) = spawn_server(c);
    cli_support::wait_for_dev_credentials_at(&data, &addr);
    let adopted = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("adopted the untagged access-control document"))
        .cloned()
        .expect("the adoption is logged");
    assert!(
        adopted.contains("principals=1") && adopted.contains("assignments=1"),
        "{adopted}"
    );
    let (_, now) = stored(&data);
    assert_eq!(now, doc, "the same principals and assignments, now tagged");
    assert_eq!(token_status(&data, &app, &app_secret), 200);
    let listed = kv_dev(&data, &["role", "list", "-o", "json"]).ok().json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["principal"] == app.as_str() && a["role"] == "Key Vault Reader"),
        "{listed}"
    );
    stop_server(server);

    // Tagged now: starts without the flag; with it, nothing to adopt.
    let server = serve_dev(&data, &[], &[]);
    stop_server(server);
    let mut c = command(None);
    c.args(dev_serve_args(&data)).arg("--adopt-access-document");
    let (server, addr, lines) = spawn_server(c);
    cli_support::wait_for_dev_credentials_at(&data, &addr);
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("nothing to adopt"))
    );
    assert!(
        !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("adopted the untagged"))
    );
    assert_eq!(token_status(&data, &app, &app_secret), 200);
    stop_server(server);

    // The audit's M4: the flag left on (a unit file), and an untagged document written by hand: refused.
    write(
        &data,
        &json!({"principals": doc["principals"], "assignments": doc["assignments"], "roles": []}),
    );
    let out = run_dev_serve(&data, &["--adopt-access-document"]).code(2);
    assert!(
        out.stderr.contains(NOT_VERIFIED) && out.stderr.contains("saved tagged before"),
        "{}",
        out.stderr
    );
}

/// The SQLite schema version of `data`'s database.
fn schema_version(data: &Path) -> i64 {
    rusqlite::Connection::open(data.join("vault.db"))
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// A data directory as a build before the tag left it — an untagged access.json beside a database of an older
/// schema (5: no `meta` table, so no record of a tagged document): without the flag the start is refused
/// before the database is upgraded (a87-2), so that the older build still opens it while the document is
/// checked; with the flag the database is upgraded and the document adopted.
#[test]
fn an_untagged_access_file_is_refused_before_the_database_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (app, app_secret, doc) = vault_with_an_untagged_document(&data);
    rusqlite::Connection::open(data.join("vault.db"))
        .unwrap()
        .execute_batch("DROP TABLE meta; PRAGMA user_version = 5;")
        .unwrap();

    let out = run_dev_serve(&data, &[]).code(2);
    assert!(
        out.stderr.contains("has no integrity tag")
            && out
                .stderr
                .contains("start once with `keyvault serve --adopt-access-document`")
            && out.stderr.contains("Nothing was changed")
            && out
                .stderr
                .contains("(schema version 5), which this build upgrades"),
        "{}",
        out.stderr
    );
    assert_eq!(schema_version(&data), 5, "the database was not upgraded");

    let mut c = command(None);
    c.args(dev_serve_args(&data)).arg("--adopt-access-document");
    let (server, addr, _) = spawn_server(c);
    cli_support::wait_for_dev_credentials_at(&data, &addr);
    let (_, now) = stored(&data);
    assert_eq!(now, doc);
    assert_eq!(token_status(&data, &app, &app_secret), 200);
    assert_eq!(
        kv_dev(&data, &["secret", "show", "payroll", "-o", "value"])
            .ok()
            .stdout
            .trim(),
        "PAYROLL-SECRET"
    );
    stop_server(server);
    assert!(schema_version(&data) > 5);
}

/// Removes the store's record that its access document was tagged (what a data directory of a build before
/// the record looks like).
fn forget_tagged(data: &Path) {
    use keyvault_server::store::SecretStore;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store =
            keyvault_server::store::sqlite::SqliteStore::open(&data.join("vault.db")).unwrap();
        let key = keyvault_server::admin::tagged::TAGGED_MARKER;
        let held = store.meta(key).await.unwrap();
        assert!(held.is_some(), "the record is there");
        assert!(
            store
                .meta_swap(vec![keyvault_server::store::MetaSwap {
                    key: key.to_string(),
                    expect: held,
                    set: None,
                }])
                .await
                .unwrap()
        );
    });
}
