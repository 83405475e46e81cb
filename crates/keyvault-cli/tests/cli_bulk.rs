//! `keyvault secret import` / `export` with the real binary: a 500-secret round trip through JSON and
//! .env, re-runs that do not pile up versions, and per-item errors that do not stop the rest.

mod cli_support;

use cli_support::{command, kv, kv_in, run_with, start_vault, with_reader_gone_early};
use std::collections::BTreeMap;

fn tricky_value(i: usize) -> String {
    match i % 5 {
        0 => format!("plain-{i}"),
        1 => format!("with \"quotes\", 'single' and \\back\\slashes {i}"),
        2 => format!("multi\nline\r\nvalue {i}\n"),
        3 => format!("$HOME `cmd` # not a comment {i}"),
        _ => format!("  unicode ✓ é 名前 {i}  "),
    }
}

#[test]
fn import_export_round_trip_of_500_secrets() {
    let v = start_vault();
    let dir = tempfile::tempdir().unwrap();
    let input: BTreeMap<String, String> = (0..500)
        .map(|i| (format!("bulk-{i:03}"), tricky_value(i)))
        .collect();
    let json_in = dir.path().join("in.json");
    std::fs::write(&json_in, serde_json::to_vec(&input).unwrap()).unwrap();
    let json_in = json_in.to_str().unwrap();

    let first = kv(&v, &["secret", "import", "--file", json_in, "-o", "json"]).ok();
    assert!(
        first
            .stderr
            .contains("imported 500 secrets: 500 created, 0 updated, 0 unchanged, 0 failed"),
        "{}",
        first.stderr
    );
    let report = first.json();
    assert_eq!(report["created"].as_array().unwrap().len(), 500);

    // Re-running changes nothing and adds no versions.
    let again = kv(&v, &["secret", "import", "--file", json_in]).ok();
    assert!(
        again.stderr.contains("0 created, 0 updated, 500 unchanged"),
        "{}",
        again.stderr
    );
    let versions = kv(&v, &["secret", "list-versions", "bulk-002", "-o", "value"]).ok();
    assert_eq!(versions.stdout.lines().count(), 1);

    // One changed value: one new version.
    let mut changed = input.clone();
    changed.insert("bulk-007".into(), "changed".into());
    let changed_path = dir.path().join("changed.json");
    std::fs::write(&changed_path, serde_json::to_vec(&changed).unwrap()).unwrap();
    let out = kv(
        &v,
        &[
            "secret",
            "import",
            "--file",
            changed_path.to_str().unwrap(),
            "-o",
            "tsv",
        ],
    )
    .ok();
    assert!(
        out.stderr.contains("0 created, 1 updated, 499 unchanged"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.lines().any(|l| l == "bulk-007\tupdated"));
    assert_eq!(out.stdout.lines().count(), 500);

    // Export to JSON: exactly what is in the vault.
    let json_out = dir.path().join("out.json");
    let e = kv(
        &v,
        &["secret", "export", "--file", json_out.to_str().unwrap()],
    )
    .ok();
    assert!(e.stderr.contains("exported 500 secrets"), "{}", e.stderr);
    let exported: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(exported, changed);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&json_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    kv(
        &v,
        &["secret", "export", "--file", json_out.to_str().unwrap()],
    )
    .code(2);

    // Export to .env on stdout ('-' → '_'), and import it back: everything unchanged.
    let env = kv(&v, &["secret", "export", "--format", "env"]).ok();
    assert!(
        env.stdout.starts_with("bulk_000=\"plain-0\"\n"),
        "{}",
        &env.stdout[..80]
    );
    // One assignment per secret; a value's line breaks stay inside its quotes (as a shell reads them).
    assert_eq!(
        env.stdout
            .lines()
            .filter(|l| l.starts_with("bulk_") && l.contains("=\""))
            .count(),
        500
    );
    let back = kv_in(
        &v,
        &["secret", "import", "--file", "-"],
        env.stdout.as_bytes(),
    )
    .ok();
    assert!(
        back.stderr.contains("0 created, 0 updated, 500 unchanged"),
        "{}",
        back.stderr
    );

    // A disabled secret is skipped by export, and re-enabled by import (a new version).
    kv(&v, &["secret", "update", "bulk-001", "--disabled"]).ok();
    let e = kv(&v, &["secret", "export"]).ok();
    assert!(e.stderr.contains("1 disabled skipped"), "{}", e.stderr);
    assert!(!e.json().as_object().unwrap().contains_key("bulk-001"));
    let out = kv(
        &v,
        &["secret", "import", "--file", json_out.to_str().unwrap()],
    )
    .ok();
    assert!(
        out.stderr.contains("1 updated, 499 unchanged"),
        "{}",
        out.stderr
    );
}

/// Names from an import file (often someone else's) reach stderr and TSV escaped: a name with escape sequences
/// sets no terminal title and colours nothing, in the duplicate warning, the error line or the report.
#[test]
fn import_escapes_the_names_it_prints() {
    let v = start_vault();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.json");
    std::fs::write(
        &path,
        r#"{"bad\u001b]0;TITLE\u0007name": "1", "dup\u001b[31mX": "2", "DUP\u001b[31mx": "3"}"#,
    )
    .unwrap();
    let out = kv(
        &v,
        &[
            "secret",
            "import",
            "--file",
            path.to_str().unwrap(),
            "-o",
            "tsv",
        ],
    );
    assert_ne!(out.code, 0);
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
    }
    assert!(
        out.stderr.contains("appears more than once"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("\\u{1b}"), "{}", out.stdout);
}

#[test]
fn import_reports_item_errors_and_goes_on() {
    let v = start_vault();
    let dir = tempfile::tempdir().unwrap();
    kv(&v, &["secret", "set", "held", "--value", "x"]).ok();
    kv(&v, &["secret", "delete", "held", "--wait"]).ok();
    let input = serde_json::json!({
        "good-one": "1",
        "bad_name": "2",
        "ünï": "3",
        "held": "4",
        "not-a-string": ["x"],
        "a-number": 42,
        "a-flag": true,
        "good-two": "5",
    });
    let path = dir.path().join("mixed.json");
    std::fs::write(&path, serde_json::to_vec(&input).unwrap()).unwrap();
    let p = path.to_str().unwrap();

    // A dry run writes nothing.
    let dry = kv(&v, &["secret", "import", "--file", p, "--dry-run"]).code(6);
    assert!(
        dry.stderr
            .contains("dry run: 8 secrets: 3 would be created"),
        "{}",
        dry.stderr
    );
    kv(&v, &["secret", "show", "good-one"]).code(3);

    let out = kv(
        &v,
        &[
            "secret", "import", "--file", p, "-o", "json", "--tags", "src=test",
        ],
    )
    .code(6);
    let r = out.json();
    let mut created: Vec<&str> = r["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    created.sort();
    assert_eq!(created, ["a-flag", "good-one", "good-two"]);
    let failed: BTreeMap<&str, &str> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["error"].as_str().unwrap()))
        .collect();
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(failed["bad_name"].contains("invalid secret name"));
    assert!(failed["ünï"].contains("invalid secret name"));
    assert!(failed["held"].contains("ObjectIsDeletedButRecoverable"));
    assert!(failed["not-a-string"].contains("not a string"));
    // A number's digits would not be kept as written: refused, naming the key, saying to quote it.
    assert!(
        failed["a-number"].contains("JSON number") && failed["a-number"].contains("quote it"),
        "{failed:?}"
    );
    assert!(
        out.stderr
            .contains("error: a-number: the value is a JSON number"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("error: held:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("error: 5 of 8 secrets failed"),
        "{}",
        out.stderr
    );
    // Values never appear in errors.
    assert!(!out.stderr.contains("\"4\""));
    kv(&v, &["secret", "show", "a-number"]).code(3);
    let j = kv(&v, &["secret", "show", "a-flag"]).ok().json();
    assert_eq!(j["value"], "true");
    assert_eq!(j["tags"]["src"], "test");

    // Numbers that a JSON reader would change (digits lost, 0.10 → 0.1, 1e3 → 1000.0, -0 → -0.0) are all
    // refused; nothing is written.
    let nums = dir.path().join("nums.json");
    std::fs::write(
        &nums,
        r#"{"bignum": 12345678901234567890123, "pin": 0.10, "exp": 1e3, "neg": -0}"#,
    )
    .unwrap();
    let out = kv(&v, &["secret", "import", "--file", nums.to_str().unwrap()]).code(6);
    for name in ["bignum", "pin", "exp", "neg"] {
        assert!(
            out.stderr
                .contains(&format!("error: {name}: the value is a JSON number")),
            "{}",
            out.stderr
        );
        kv(&v, &["secret", "show", name]).code(3);
    }

    // A .env file: '_' becomes '-', comments and quotes understood, the last of a name wins.
    let env = dir.path().join("app.env");
    std::fs::write(
        &env,
        "# app settings\nexport DB_PASSWORD='p@ss word'\nAPI_KEY=\"k\\n2\"\nEMPTY=\nDB_password=final # last wins\n",
    )
    .unwrap();
    let out = kv(&v, &["secret", "import", "--file", env.to_str().unwrap()]).ok();
    assert!(
        out.stderr.contains("appears more than once"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("3 created"), "{}", out.stderr);
    let j = kv(&v, &["secret", "show", "DB-PASSWORD"]).ok().json();
    assert_eq!(j["value"], "final");
    let j = kv(&v, &["secret", "show", "API-KEY"]).ok().json();
    assert_eq!(j["value"], "k\n2");

    // A credential failure stops the import (one error, not one per secret).
    let mut c = command(None);
    c.env("AZURE_TENANT_ID", "keyvault-rs")
        .env("AZURE_CLIENT_ID", "nobody")
        .env("AZURE_CLIENT_SECRET", "wrong")
        .env("AZURE_AUTHORITY_HOST", &v.url)
        .env("KEYVAULT_CA_FILE", &v.ca)
        .env("KEYVAULT_URL", &v.url);
    let e = run_with(
        c,
        &[
            "secret",
            "import",
            "--file",
            p,
            "--concurrency",
            "1",
            "--no-challenge-verification",
        ],
        None,
    )
    .code(5);
    assert!(e.stderr.contains("not attempted"), "{}", e.stderr);
    assert_eq!(
        e.stderr.matches("cannot get a token").count(),
        1,
        "{}",
        e.stderr
    );

    // Unreadable input is a bad-input error before anything is written.
    let bad = dir.path().join("bad.env");
    std::fs::write(&bad, b"A=1\nB=\xff\n").unwrap();
    let e = kv(&v, &["secret", "import", "--file", bad.to_str().unwrap()]).code(2);
    assert!(
        e.stderr.contains("not valid UTF-8") && e.stderr.contains("line 2"),
        "{}",
        e.stderr
    );
    std::fs::write(&bad, b"A=1\nnot a pair\n").unwrap();
    let e = kv(&v, &["secret", "import", "--file", bad.to_str().unwrap()]).code(2);
    assert!(
        e.stderr.contains("line 2: expected NAME=value"),
        "{}",
        e.stderr
    );
    kv(&v, &["secret", "show", "A"]).code(3);
    let e = kv_in(
        &v,
        &["secret", "import", "--file", "-", "--format", "json"],
        b"[1, 2]",
    )
    .code(2);
    assert!(e.stderr.contains("not a JSON object"), "{}", e.stderr);
}

#[test]
fn import_skips_a_byte_order_mark_and_export_notices_a_closed_pipe() {
    let v = start_vault();
    // A JSON file from a Windows editor, with a UTF-8 byte-order mark.
    let out = kv_in(
        &v,
        &["secret", "import", "--file", "-"],
        "\u{feff}{\"bom-a\": \"1\"}".as_bytes(),
    )
    .ok();
    assert!(out.stderr.contains("1 created"), "{}", out.stderr);
    assert_eq!(
        kv(&v, &["secret", "show", "bom-a"]).ok().json()["value"],
        "1"
    );

    // An export larger than a pipe's buffer, read by a reader that stops after 10 bytes (`| head -c 10`).
    let big: BTreeMap<String, String> = (0..25)
        .map(|i| (format!("big-{i:02}"), "x".repeat(20_000)))
        .collect();
    kv_in(
        &v,
        &["secret", "import", "--file", "-"],
        &serde_json::to_vec(&big).unwrap(),
    )
    .ok();
    let (code, stderr) = with_reader_gone_early(command(Some(&v)), &["secret", "export"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("exported 25"), "{stderr}");
    assert!(
        stderr.contains("standard output was closed before the export was written"),
        "{stderr}"
    );
}
