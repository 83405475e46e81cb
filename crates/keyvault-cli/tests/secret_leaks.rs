//! The real `keyvault` binary keeps secrets where they belong: not in its log (a client secret pasted as a
//! client id), not in core dumps or other processes' reach (`serve`, `rekey`, `kek` are non-dumpable, with no
//! core limit), not in error messages (a JSON file's text), and it says so when a configuration file shows a
//! database password to other users.

mod cli_support;

use cli_support::{LogLines, Server, command, run_with, spawn_server};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const ALLOW_CORE_DUMPS: &str = "KEYVAULT_ALLOW_CORE_DUMPS";

/// This process's real uid (from /proc: no `unsafe` needed).
fn own_uid() -> u32 {
    uid_of("self")
}

/// The real uid of process `pid` (`"self"` for this one).
fn uid_of(pid: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A `serve --dev` over a new data directory, as `nobody` when the tests run as root (so that the owner of its
/// /proc files tells whether it is dumpable), with `env`: (dir, server, address, log).
fn dev_server(env: &[(&str, &str)]) -> (tempfile::TempDir, Server, String, LogLines) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    std::fs::create_dir(&data).unwrap();
    let mut c = command(None);
    c.args(["serve", "--dev", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .envs(env.iter().copied());
    if own_uid() == 0 {
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
        c.uid(65534).gid(65534);
    }
    let (server, addr, lines) = spawn_server(c);
    let creds = data.join("dev-credentials.json");
    let start = Instant::now();
    while !std::fs::read(&creds)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|c| c["vault_url"] == format!("https://{addr}"))
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no credentials");
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, server, addr, lines)
}

fn dev_credentials(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("dev/dev-credentials.json")).unwrap()).unwrap()
}

/// Waits (at most 10 s) until `n` logged lines contain `text`; returns every line logged so far.
fn wait_for_lines(lines: &LogLines, text: &str, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let all = lines.lock().unwrap().clone();
        if all.iter().filter(|l| l.contains(text)).count() >= n {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fewer than {n} lines with {text:?}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client secret sent as the client id (the two swapped), a secret in HTTP Basic's user name, or in the
/// client id of a client assertion is refused without its text reaching the log; a known client's id is
/// still logged.
#[tokio::test]
async fn refused_token_requests_log_only_known_client_ids() {
    let (dir, mut server, addr, lines) = dev_server(&[]);
    let creds = dev_credentials(dir.path());
    let client_id = creds["client_id"].as_str().unwrap().to_string();
    let secret = creds["client_secret"].as_str().unwrap().to_string();
    let ca = std::fs::read(creds["ca_cert"].as_str().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();
    let url = format!(
        "https://{addr}/{}/oauth2/v2.0/token",
        creds["tenant_id"].as_str().unwrap()
    );
    let scope = format!(
        "https://localhost:{}/.default",
        addr.rsplit(':').next().unwrap()
    );
    let form = |pairs: &[(&str, &str)]| {
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", "client_credentials")
            .append_pair("scope", &scope);
        for (k, v) in pairs {
            f.append_pair(k, v);
        }
        f.finish()
    };
    let basic_id = "CANARY-basic-user-4f1c";
    let assertion_id = "CANARY-assertion-client-9d2e";
    let requests = [
        // Swapped: the secret as the id, the id as the secret.
        http.post(&url).body(form(&[
            ("client_id", &secret),
            ("client_secret", &client_id),
        ])),
        http.post(&url)
            .basic_auth(basic_id, Some("whatever"))
            .body(form(&[])),
        http.post(&url).body(form(&[
            ("client_id", assertion_id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "not.a.jwt"),
        ])),
        // A known client with a wrong secret.
        http.post(&url).body(form(&[
            ("client_id", &client_id),
            ("client_secret", "wrong"),
        ])),
    ];
    for request in requests {
        let resp = request
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let all = wait_for_lines(&lines, "token request refused", 4);
    let refused: Vec<&String> = all
        .iter()
        .filter(|l| l.contains("token request refused"))
        .collect();
    for line in &all {
        for canary in [secret.as_str(), basic_id, assertion_id] {
            assert!(!line.contains(canary), "{canary} logged: {line}");
        }
    }
    let unknown = |chars: usize| format!("(unknown, {chars} characters)");
    for (what, id) in [
        ("secret", secret.as_str()),
        ("basic", basic_id),
        ("assertion", assertion_id),
    ] {
        assert!(
            refused
                .iter()
                .any(|l| l.contains(&unknown(id.chars().count()))),
            "no unknown-id line for the {what} case: {refused:#?}"
        );
    }
    assert!(
        refused
            .iter()
            .any(|l| l.contains("invalid client credentials")
                && l.contains(&format!("client_id=\"{client_id}\""))),
        "the known client's id is logged: {refused:#?}"
    );
    drop(http);
    let _ = server.0.kill();
    let _ = server.0.wait();
}

/// `/proc/PID/limits`'s core-file line: (soft, hard).
fn core_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let mut fields = line["Max core file size".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

/// `serve` turns core dumps off and makes itself non-dumpable (its /proc files then belong to root, so another
/// process of its user cannot read its environment or memory, nor attach to it), unless
/// KEYVAULT_ALLOW_CORE_DUMPS=1 asks otherwise, which it logs as a warning.
#[test]
fn serve_is_not_dumpable_unless_asked() {
    let (_dir, mut server, _, lines) = dev_server(&[]);
    let pid = server.0.id();
    let uid = uid_of(&pid.to_string());
    assert_ne!(uid, 0, "the server runs as an ordinary user");
    assert_eq!(core_limit(pid), ("0".to_string(), "0".to_string()));
    let environ = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(
        environ.uid(),
        0,
        "a non-dumpable process's files are root's"
    );
    assert!(
        !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(ALLOW_CORE_DUMPS)),
        "no warning without the variable"
    );
    let _ = server.0.kill();
    let _ = server.0.wait();

    let (_dir, mut server, _, lines) = dev_server(&[(ALLOW_CORE_DUMPS, "1")]);
    let pid = server.0.id();
    let environ = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(environ.uid(), uid, "dumpable: its files are its user's");
    let (soft, hard) = core_limit(pid);
    let (own_soft, own_hard) = core_limit(std::process::id());
    assert_eq!((soft, hard), (own_soft, own_hard), "the inherited limit");
    let warned = wait_for_lines(&lines, ALLOW_CORE_DUMPS, 1);
    assert!(
        warned
            .iter()
            .any(|l| l.contains("WARN") && l.contains("core dumps and ptrace stay allowed")),
        "{warned:#?}"
    );
    let _ = server.0.kill();
    let _ = server.0.wait();
}

/// `kek new` and `rekey` protect themselves as `serve` does (the opt-out's warning shows they ask); a client
/// command does not.
#[test]
fn kek_and_rekey_protect_themselves_too() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("new.key");
    let data = dir.path().join("data");
    let mut runs = Vec::new();
    for allow in [false, true] {
        let _ = std::fs::remove_file(&key);
        let mut c = command(None);
        if allow {
            c.env(ALLOW_CORE_DUMPS, "1");
        }
        let out = run_with(c, &["kek", "new", key.to_str().unwrap()], None);
        assert_eq!(out.code, 0, "{}", out.stderr);
        runs.push(("kek new", allow, out.stderr));
        let mut c = command(None);
        if allow {
            c.env(ALLOW_CORE_DUMPS, "1");
        }
        let out = run_with(
            c,
            &["rekey", "--dry-run", "--data-dir", data.to_str().unwrap()],
            None,
        );
        runs.push(("rekey", allow, out.stderr));
    }
    let mut c = command(None);
    c.env(ALLOW_CORE_DUMPS, "1");
    let out = run_with(c, &["completions", "bash"], None);
    runs.push(("completions", false, out.stderr));
    for (what, warned, stderr) in runs {
        assert_eq!(
            stderr.contains("core dumps and ptrace stay allowed"),
            warned,
            "{what}: {stderr}"
        );
    }
}

/// A JSON file the CLI cannot use is described by what is wrong and where, never by its text.
#[test]
fn json_file_errors_do_not_quote_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    std::fs::write(&file, "\"CANARY-import-7a1b\"").unwrap();
    let mut c = command(None);
    c.env("KEYVAULT_URL", "https://127.0.0.1:1");
    let out = run_with(
        c,
        &["secret", "import", "--file", file.to_str().unwrap()],
        None,
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!out.stderr.contains("CANARY"), "{}", out.stderr);
    assert!(
        out.stderr.contains("not a JSON object") && out.stderr.contains("line 1, column"),
        "{}",
        out.stderr
    );

    let creds = dir.path().join("creds.json");
    for text in [
        "\"CANARY-creds-3c9d\"",
        "{\"vault_url\": \"CANARY-creds-3c9d\"",
        "{\"CANARY-creds-3c9d\": 1}",
    ] {
        std::fs::write(&creds, text).unwrap();
        let out = run_with(
            command(None),
            &[
                "secret",
                "list",
                "--dev-credentials",
                creds.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(!out.stderr.contains("CANARY"), "{text}: {}", out.stderr);
        assert!(
            out.stderr.contains("is not a dev-credentials.json")
                && out.stderr.contains("line 1, column"),
            "{}",
            out.stderr
        );
    }
}

/// `serve` and `rekey` warn when the configuration file holds the store's password and others may read it.
#[test]
fn a_readable_config_file_with_a_store_password_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyvault.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"postgres://kv:CANARY-pw-51e0@127.0.0.1:1/kv\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let warning = "holds the store's password and is readable by group or others";
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false)] {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        for args in [
            // No TLS files: refused after the configuration is read, before any connection.
            &["serve", "--config", config.to_str().unwrap()][..],
            &["rekey", "--dry-run", "--config", config.to_str().unwrap()][..],
        ] {
            let mut c = command(None);
            c.env("KEYVAULT_LOG", "warn");
            let out = run_with(c, args, None);
            assert_ne!(out.code, 0, "{}", out.stderr);
            assert_eq!(
                out.stderr.contains(warning),
                warned,
                "{mode:o} {args:?}: {}",
                out.stderr
            );
            assert!(!out.stderr.contains("CANARY"), "{}", out.stderr);
        }
    }
    // Without a password in the file there is nothing to warn about.
    std::fs::write(&config, "store = \"postgres://kv@127.0.0.1:1/kv\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_with(
        command(None),
        &["rekey", "--dry-run", "--config", config.to_str().unwrap()],
        None,
    );
    assert!(!out.stderr.contains(warning), "{}", out.stderr);
}
