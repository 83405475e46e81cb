//! The `keyvault` binary against a broken or hostile vault: a small HTTPS server on 127.0.0.1 (rustls over
//! std sockets, a connection per request) that answers what each test tells it to. What the server says must
//! reach the terminal escaped, and `--wait` must end.

mod cli_support;

use cli_support::{Out, command, run_with};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// An answer: status (0: close the connection without answering), extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

struct FakeVault {
    url: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// Start a fake vault whose every answer is `answer(method, target)`.
fn fake_vault(answer: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> FakeVault {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let (config, answer) = (config.clone(), answer.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut first = head.lines().next().unwrap_or_default().split(' ');
                let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let length: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                if tls.read_exact(&mut body).is_err() {
                    return;
                }
                let (status, headers, body) = answer(method, target);
                if status == 0 {
                    // The request read, the connection closed without an answer.
                    return;
                }
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = tls.write_all(out.as_bytes());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    FakeVault {
        url,
        ca: ca_path,
        _dir: dir,
    }
}

/// `keyvault ARGS` against `vault`, with a client secret whose authority is the fake vault too.
fn kv_at(vault: &FakeVault, args: &[&str]) -> Out {
    kv_at_env(vault, &[], args)
}

/// [`kv_at`] with more environment variables (which may replace its own).
fn kv_at_env(vault: &FakeVault, env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut c = command(None);
    c.env("KEYVAULT_URL", &vault.url)
        .env("KEYVAULT_CA_FILE", &vault.ca)
        .env("AZURE_TENANT_ID", "tenant-1")
        .env("AZURE_CLIENT_ID", "app-1")
        .env("AZURE_CLIENT_SECRET", "CLIENTSECRET-CANARY")
        .env("AZURE_AUTHORITY_HOST", &vault.url)
        .env("KEYVAULT_MAX_RETRIES", "0");
    // The test's own variables last: they may replace these.
    c.envs(env.iter().copied());
    let mut all = args.to_vec();
    all.push("--no-challenge-verification");
    run_with(c, &all, None)
}

fn json(status: u16, body: impl Into<String>) -> Answer {
    (
        status,
        vec![("content-type", "application/json".to_string())],
        body.into(),
    )
}

/// Control characters a terminal would act on, and the invisible and bidirectional format characters.
const HOSTILE: &str =
    "\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[31mFAKE\u{1b}[0m\rline\u{202e}txt\u{200b}\u{9b}";

fn assert_terminal_safe(text: &str) {
    for c in ['\u{1b}', '\u{7}', '\r', '\u{202e}', '\u{200b}', '\u{9b}'] {
        assert!(!text.contains(c), "{c:?} printed raw: {text:?}");
    }
}

fn secret_bundle(url: &str, value: &str, content_type: &str) -> String {
    serde_json::json!({
        "value": value,
        "contentType": content_type,
        "id": format!("{url}/secrets/x/0123456789abcdef0123456789abcdef"),
        "attributes": {"enabled": true, "created": 1613504488, "updated": 1613504488},
        "tags": {"t": value},
    })
    .to_string()
}

/// An error's code and message, an HTML error page, and a token endpoint's error, as a hostile server writes
/// them with escape sequences, reach stderr escaped (`\u{1b}`), on one line, with the exit code of the status.
#[test]
fn what_a_server_says_on_stderr_is_escaped() {
    let v = fake_vault(|_, target| {
        let path = target.split('?').next().unwrap_or_default();
        let error =
            serde_json::json!({"error": {"code": format!("Bad{HOSTILE}Code"), "message": HOSTILE}});
        match path {
            "/secrets/json400/" => json(400, error.to_string()),
            "/secrets/html500/" => (
                500,
                vec![("content-type", "text/html".to_string())],
                format!("<html>{HOSTILE}</html>"),
            ),
            _ => json(404, "{}"),
        }
    });
    let e = kv_at(&v, &["secret", "show", "json400"]).code(2);
    assert_terminal_safe(&e.stderr);
    assert!(
        e.stderr.contains(r"\u{1b}]0;owned\u{7}\u{1b}[2J") && e.stderr.contains(r"(Bad\u{1b}]0;"),
        "{}",
        e.stderr
    );
    assert_eq!(e.stderr.lines().count(), 1, "{}", e.stderr);
    let e = kv_at(&v, &["secret", "show", "html500"]).code(1);
    assert_terminal_safe(&e.stderr);
    assert!(e.stderr.contains(r"<html>\u{1b}]0;owned"), "{}", e.stderr);
    drop(v);

    // A vault that challenges, and an authority whose error is hostile.
    let v = fake_vault(|_, target| {
        let path = target.split('?').next().unwrap_or_default();
        if path.ends_with("/oauth2/v2.0/token") {
            json(
                400,
                serde_json::json!({"error": format!("invalid_client{HOSTILE}"), "error_description": HOSTILE})
                    .to_string(),
            )
        } else {
            let mut a = json(401, "{}");
            a.1.push((
                "www-authenticate",
                r#"Bearer authorization="https://login.example/tenant-1", resource="https://vault.azure.net""#
                    .to_string(),
            ));
            a
        }
    });
    let e = kv_at(&v, &["secret", "show", "x"]).code(5);
    assert_terminal_safe(&e.stderr);
    assert!(
        e.stderr.contains(r"invalid_client\u{1b}]0;owned") && !e.stderr.contains("CANARY"),
        "{}",
        e.stderr
    );
}

/// `-o tsv` escapes what a terminal would act on (and stays one line of fields a reader can split on tabs);
/// table output too; `-o value` prints the value as it is.
#[test]
fn tsv_and_table_output_escape_controls_value_stays_raw() {
    let v = fake_vault(|_, target| {
        let url = "https://kv.vault.azure.net";
        if target.starts_with("/secrets/x/") {
            json(200, secret_bundle(url, HOSTILE, "text/\u{202e}plain"))
        } else {
            json(404, "{}")
        }
    });
    for format in ["tsv", "table"] {
        let out = kv_at(&v, &["secret", "show", "x", "-o", format]).ok();
        assert_terminal_safe(&out.stdout);
        assert!(
            out.stdout.contains(r"\u{1b}]0;owned\u{7}")
                && out.stdout.contains(r"text/\u{202e}plain"),
            "{format}: {}",
            out.stdout
        );
    }
    let tsv = kv_at(&v, &["secret", "show", "x", "-o", "tsv"]).ok();
    assert_eq!(tsv.stdout.lines().count(), 1, "{}", tsv.stdout);
    let raw = kv_at(&v, &["secret", "show", "x", "-o", "value"]).ok();
    assert_eq!(raw.stdout, format!("{HOSTILE}\n"));
}

/// A JSON error message of 20,000 characters is cut to 2,000, saying how much was left out.
#[test]
fn a_huge_error_message_is_cut() {
    let v = fake_vault(|_, _| {
        json(
            400,
            serde_json::json!({"error": {"code": "BadParameter", "message": "m".repeat(20_000)}})
                .to_string(),
        )
    });
    let e = kv_at(&v, &["secret", "show", "x"]).code(2);
    assert!(
        e.stderr.contains(&format!(
            "{}… [18000 more characters cut]",
            "m".repeat(2000)
        )) && !e.stderr.contains(&"m".repeat(2001)),
        "{} bytes",
        e.stderr.len()
    );
    // Codes too (the outer one, an inner one): a code is an identifier, cut at 128 characters.
    let v = fake_vault(|_, _| {
        json(
            404,
            serde_json::json!({"error": {"code": "C".repeat(200_000), "message": "m",
                "innererror": {"code": "I".repeat(200_000)}}})
            .to_string(),
        )
    });
    let e = kv_at(&v, &["secret", "show", "x"]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.len() < 4_000, "{} bytes", e.stderr.len());
    assert!(
        e.stderr.contains(&format!("{}…", "C".repeat(128))),
        "{}",
        e.stderr
    );
}

/// `delete --wait` against a vault that never finishes the deletion (the deleted secret stays "not found")
/// ends after --wait-timeout with exit 1 and an error that says the delete was accepted and is still running;
/// `recover --wait` likewise.
#[test]
fn wait_ends_after_the_wait_timeout() {
    // An answer about another secret is refused: `--wait` must not poll, and confirm, another secret's delete.
    let v = fake_vault(|method, target| {
        let url = "https://kv.vault.azure.net";
        match (method, target.split('?').next().unwrap_or_default()) {
            ("DELETE", "/secrets/mine") => json(
                200,
                serde_json::json!({
                    "recoveryId": format!("{url}/deletedsecrets/other-secret"),
                    "deletedDate": 1613504488, "scheduledPurgeDate": 1614109288,
                    "id": format!("{url}/secrets/other-secret"),
                    "attributes": {"enabled": true, "recoveryLevel": "Recoverable+Purgeable"},
                })
                .to_string(),
            ),
            ("GET", "/deletedsecrets/other-secret") => json(200, "{}"),
            _ => json(404, r#"{"error":{"code":"SecretNotFound","message":"no"}}"#),
        }
    });
    let e = kv_at(&v, &["secret", "delete", "mine", "--wait"]);
    assert_ne!(e.code, 0, "{}", e.stdout);
    assert!(e.stderr.contains("not 'mine'"), "{}", e.stderr);

    let v = fake_vault(|method, target| {
        let url = "https://kv.vault.azure.net";
        match (method, target.split('?').next().unwrap_or_default()) {
            ("DELETE", "/secrets/x") => json(
                200,
                serde_json::json!({
                    "recoveryId": format!("{url}/deletedsecrets/x"),
                    "deletedDate": 1613504488, "scheduledPurgeDate": 1614109288,
                    "id": format!("{url}/secrets/x"),
                    "attributes": {"enabled": true, "recoveryLevel": "Recoverable+Purgeable"},
                })
                .to_string(),
            ),
            ("POST", "/deletedsecrets/x/recover") => json(
                200,
                serde_json::json!({
                    "id": format!("{url}/secrets/x/0123456789abcdef0123456789abcdef"),
                    "attributes": {"enabled": true},
                })
                .to_string(),
            ),
            _ => json(
                404,
                r#"{"error":{"code":"SecretNotFound","message":"not yet"}}"#,
            ),
        }
    });
    let e = kv_at(
        &v,
        &["secret", "delete", "x", "--wait", "--wait-timeout", "2"],
    )
    .code(1);
    assert!(
        e.stderr.contains(
            "error: the vault accepted the request and is still deleting secret 'x' after 2 s of --wait"
        ) && e.stderr.contains("--wait-timeout SECS"),
        "{}",
        e.stderr
    );
    let e = kv_at(
        &v,
        &["secret", "recover", "x", "--wait", "--wait-timeout", "2"],
    )
    .code(1);
    assert!(
        e.stderr
            .contains("still recovering secret 'x' after 2 s of --wait"),
        "{}",
        e.stderr
    );
    // Without --wait there is nothing to bound: the setting (here from the environment, as a user would set
    // it for every command) changes nothing.
    let wait_env = [("KEYVAULT_WAIT_TIMEOUT", "2")];
    let out = kv_at_env(&v, &wait_env, &["secret", "delete", "x", "-o", "json"]).code(0);
    assert!(out.stdout.contains("deletedsecrets/x"), "{}", out.stdout);
}

/// A listing whose nextLink goes back to a page already read ends with an error (exit 1) instead of
/// fetching forever.
#[test]
fn a_paging_loop_ends_the_listing() {
    let v = fake_vault(|_, target| {
        let item = r#"{"id":"https://kv.vault.azure.net/secrets/a","attributes":{"enabled":true}}"#;
        let next = "/secrets?api-version=2026-04-01&$skiptoken=again";
        if target.contains("skiptoken=again") || target.starts_with("/secrets?") {
            json(200, format!(r#"{{"value":[{item}],"nextLink":"{next}"}}"#))
        } else {
            json(404, "{}")
        }
    });
    let e = kv_at(&v, &["secret", "list"]).code(1);
    assert!(e.stderr.contains("paging loop"), "{}", e.stderr);
    // Links that differ only in what is not sent (their api-version, which the client replaces, a fragment,
    // the case of the path, a trailing `/`) are one page all the same.
    let pages = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = pages.clone();
    let v = fake_vault(move |_, target| {
        let item = r#"{"id":"https://kv.vault.azure.net/secrets/a","attributes":{"enabled":true}}"#;
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n > 20 {
            // A client that does not see the loop: ended here (and the test fails below).
            return json(404, "{}");
        }
        let next = match n % 4 {
            0 => format!("/secrets?api-version=7.{n}&$skiptoken=same"),
            1 => format!("/secrets?$skiptoken=same#{n}"),
            2 => "/Secrets/?$skiptoken=same".to_string(),
            _ => "https://elsewhere.example/secrets?$skiptoken=same".to_string(),
        };
        if target.starts_with("/secrets?") || target.starts_with("/Secrets/?") {
            json(200, format!(r#"{{"value":[{item}],"nextLink":"{next}"}}"#))
        } else {
            json(404, "{}")
        }
    });
    let e = kv_at(&v, &["secret", "list"]).code(1);
    assert!(e.stderr.contains("paging loop"), "{}", e.stderr);
    assert!(
        pages.load(std::sync::atomic::Ordering::SeqCst) <= 3,
        "{}",
        e.stderr
    );
}

/// A connection that ends after the request was sent is not "cannot reach": the change may have been made,
/// and the error says so; a vault that cannot be connected to at all is "cannot reach".
#[test]
fn a_connection_lost_after_the_request_says_a_change_may_have_been_made() {
    let v = fake_vault(|_, _| (0, Vec::new(), String::new()));
    let e = kv_at(&v, &["secret", "set", "x", "--value", "v"]).code(1);
    assert!(
        e.stderr.starts_with(&format!(
            "error: lost the connection to {} after sending the request",
            v.url
        )) && e.stderr.contains("may have been made"),
        "{}",
        e.stderr
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = kv_at(&v, &["secret", "show", "x", "--vault-url", &gone]).code(1);
    assert!(
        e.stderr.starts_with(&format!("error: cannot reach {gone}")),
        "{}",
        e.stderr
    );
}

/// An authority whose certificate this machine does not trust is a configuration error, said as one (with
/// the CLI's hint), not "the authority is unavailable" nor a refused credential; an authority answering 503
/// is unavailable (exit 1), one refusing the client (400 invalid_client) a refused credential (exit 5).
#[test]
fn token_authority_failures_are_told_apart() {
    let challenge = || {
        let mut a = json(401, "{}");
        a.1.push((
            "www-authenticate",
            r#"Bearer authorization="https://login.example/tenant-1", resource="https://vault.azure.net""#
                .to_string(),
        ));
        a
    };
    // The vault challenges; its token endpoint answers `token` (a fake vault is its own authority).
    let vault_with = |token: Answer| {
        fake_vault(move |_, target| {
            let path = target.split('?').next().unwrap_or_default();
            if path.ends_with("/oauth2/v2.0/token") {
                token.clone()
            } else {
                challenge()
            }
        })
    };
    let v = vault_with(json(
        400,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: bad secret"}"#,
    ));
    let busy = vault_with(json(
        503,
        r#"{"error":"temporarily_unavailable","error_description":"busy"}"#,
    ));
    let untrusted = fake_vault(|_, _| json(200, "{}"));
    let e = kv_at_env(
        &v,
        &[("AZURE_AUTHORITY_HOST", &untrusted.url)],
        &["secret", "show", "x"],
    )
    .code(1);
    assert!(
        e.stderr
            .starts_with("error: cannot get a token, the authority's certificate was refused:")
            && e.stderr.contains("invalid peer certificate")
            && e.stderr.matches("invalid peer certificate").count() == 1
            && !e.stderr.contains("SecretClientOptions"),
        "{}",
        e.stderr
    );
    // The authority's certificate, trusted, but not for the name used: the hint names --authority-host.
    let by_name = v.url.replace("127.0.0.1", "localhost");
    let e = kv_at_env(
        &v,
        &[("AZURE_AUTHORITY_HOST", &by_name)],
        &["secret", "show", "x"],
    )
    .code(1);
    assert!(
        e.stderr.contains("the authority's certificate was refused")
            && e.stderr.contains("--authority-host")
            && !e.stderr.contains("--vault-url"),
        "{}",
        e.stderr
    );
    let e = kv_at(&busy, &["secret", "show", "x"]).code(1);
    assert!(
        e.stderr
            .starts_with("error: cannot get a token, the authority is unavailable:"),
        "{}",
        e.stderr
    );
    let e = kv_at(&v, &["secret", "show", "x"]).code(5);
    assert!(
        e.stderr.starts_with("error: cannot get a token:"),
        "{}",
        e.stderr
    );
}

/// A delete whose answer was lost is tried again and meets a secret already deleted (404): if the vault
/// deleted it while the command ran, the command reports it deleted (with a note), not "not found"; not when
/// the 404 came without a retry (someone else deleted it), nor for a secret deleted long before (exit 3).
#[test]
fn a_retried_delete_that_finds_its_own_deletion_succeeds() {
    let tried = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let v = fake_vault(move |method, target| {
        let path = target.split('?').next().unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let deleted = |name: &str, at: u64| json(200, deleted_bundle(name, at));
        match (method, path) {
            // Each name's first DELETE "applied" and its answer lost (the connection closed); then 404.
            ("DELETE", _) if tried.lock().unwrap().insert(path.to_string()) => {
                (0, Vec::new(), String::new())
            }
            ("DELETE", _) => json(
                404,
                r#"{"error":{"code":"SecretNotFound","message":"A secret with (name/id) was not found in this key vault."}}"#,
            ),
            ("GET", "/deletedsecrets/just-now") => deleted("just-now", now),
            ("GET", "/deletedsecrets/long-ago") => deleted("long-ago", now - 3600),
            _ => json(404, "{}"),
        }
    });
    let retry = [("KEYVAULT_MAX_RETRIES", "1")];
    let out = kv_at_env(&v, &retry, &["secret", "delete", "just-now", "-o", "json"]).code(0);
    assert!(
        out.stderr
            .contains("it was deleted just now: an earlier try of this delete did it"),
        "{}",
        out.stderr
    );
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["name"], "just-now", "{shown}");
    // Again: a 404 at the first try (no retry) is "not found", whoever deleted it just now.
    let e = kv_at_env(&v, &retry, &["secret", "delete", "just-now"]).code(3);
    assert!(e.stderr.contains("not found"), "{}", e.stderr);
    let e = kv_at_env(&v, &retry, &["secret", "delete", "long-ago"]).code(3);
    assert!(e.stderr.contains("not found"), "{}", e.stderr);
}

/// A poll of `delete --wait` throttled past what the client waits fails the wait, and the error says the
/// delete itself was accepted (exit 7: throttled).
#[test]
fn a_throttled_wait_says_the_request_was_accepted() {
    let deleted = deleted_bundle("x", 1_700_000_000);
    let v = fake_vault(move |method, _| match method {
        "DELETE" => json(200, deleted.clone()),
        _ => {
            let mut a = json(
                429,
                r#"{"error":{"code":"Throttled","message":"slow down"}}"#,
            );
            a.1.push(("retry-after", "3600".to_string()));
            a
        }
    });
    let e = kv_at(&v, &["secret", "delete", "x", "--wait"]).code(7);
    assert!(
        e.stderr.starts_with(
            "error: the vault accepted the request (deleting secret 'x'), but waiting for it to finish failed:"
        ) && e.stderr.contains("429"),
        "{}",
        e.stderr
    );
}

/// A deleted secret's bundle as Key Vault answers it, deleted at `at` (Unix seconds).
fn deleted_bundle(name: &str, at: u64) -> String {
    serde_json::json!({
        "recoveryId": format!("https://kv.example/deletedsecrets/{name}"),
        "deletedDate": at,
        "scheduledPurgeDate": at + 7 * 86400,
        "id": format!("https://kv.example/secrets/{name}/968bc1b35f5449dfaf7109294020deb5"),
        "attributes": {"enabled": true, "created": at - 10, "updated": at - 10,
            "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 7}
    })
    .to_string()
}
