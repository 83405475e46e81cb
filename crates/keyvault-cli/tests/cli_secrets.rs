//! The real `keyvault` binary against a real vault: every secret command, every output format, exit
//! codes, value sources, errors, `token`, completions and help. One vault for the whole file; every test
//! uses its own secret names.

mod cli_support;

use cli_support::{command, kv, kv_in, run_with, shared, with_reader_gone_early};
use std::process::Stdio;

#[test]
fn set_and_show_in_every_format() {
    let v = shared();
    let set = kv(
        v,
        &[
            "secret",
            "set",
            "fmt-a",
            "--value",
            "hunter2",
            "--content-type",
            "text/plain",
            "--tags",
            "env=prod",
            "team=web",
            "--expires",
            "30d",
            "--not-before",
            "2024-01-01T00:00:00Z",
            "-o",
            "json",
        ],
    )
    .ok();
    let j = set.json();
    assert_eq!(j["name"], "fmt-a");
    assert_eq!(j["contentType"], "text/plain");
    assert_eq!(j["tags"]["env"], "prod");
    assert_eq!(j["tags"]["team"], "web");
    assert_eq!(j["notBefore"], "2024-01-01T00:00:00Z");
    assert_eq!(j["enabled"], true);
    assert!(j.get("value").is_none(), "set does not echo the value: {j}");
    let version = j["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 32);
    let expires = j["expires"].as_str().unwrap();
    assert!(
        expires.ends_with('Z') && expires.len() == 20,
        "RFC 3339: {expires}"
    );
    assert!(!set.stdout.contains("hunter2"));

    // Not a terminal: JSON by default.
    let j = kv(v, &["secret", "show", "fmt-a"]).ok().json();
    assert_eq!(j["value"], "hunter2");
    assert_eq!(j["version"], version.as_str());
    assert_eq!(
        j["id"],
        format!("{}/secrets/fmt-a/{version}", v.url).as_str()
    );

    let value = kv(v, &["secret", "show", "fmt-a", "-o", "value"]).ok();
    assert_eq!(value.stdout, "hunter2\n");

    let tsv = kv(v, &["secret", "show", "fmt-a", "-o", "tsv"]).ok();
    let cols: Vec<&str> = tsv.stdout.trim_end_matches('\n').split('\t').collect();
    assert_eq!(cols[0], "fmt-a");
    assert_eq!(cols[1], version);
    assert_eq!(cols[2], "hunter2");
    assert_eq!(cols[3], "true");
    assert_eq!(cols[4], "text/plain");
    assert_eq!(cols[10], "env=prod,team=web");
    assert_eq!(tsv.stdout.lines().count(), 1);

    let table = kv(v, &["secret", "show", "fmt-a", "-o", "table"]).ok();
    assert!(table.stdout.contains("Value"), "{}", table.stdout);
    assert!(table.stdout.contains("hunter2"));
    assert!(table.stdout.contains("Tags            env=prod,team=web"));

    // KEYVAULT_OUTPUT picks the format too.
    let mut c = command(Some(v));
    c.env("KEYVAULT_OUTPUT", "value");
    assert_eq!(
        run_with(c, &["secret", "show", "fmt-a"], None).ok().stdout,
        "hunter2\n"
    );

    // `-o value` of set is the new version's id.
    let id = kv(
        v,
        &["secret", "set", "fmt-a", "--value", "x", "-o", "value"],
    )
    .ok();
    assert!(
        id.stdout.starts_with(&format!("{}/secrets/fmt-a/", v.url)),
        "{}",
        id.stdout
    );
}

#[test]
fn tags_are_unambiguous_in_table_and_tsv() {
    let v = shared();
    kv(
        v,
        &[
            "secret", "set", "tags-one", "--value", "v", "--tags", "a=x,b=y",
        ],
    )
    .ok();
    kv(
        v,
        &[
            "secret", "set", "tags-two", "--value", "v", "--tags", "a=x", "b=y",
        ],
    )
    .ok();
    kv(
        v,
        &[
            "secret", "set", "tags-odd", "--value", "v", "--tags", "k\\=v\tw",
        ],
    )
    .ok();
    let tags = |name: &str, format: &str| {
        let out = kv(v, &["secret", "show", name, "-o", format]).ok();
        match format {
            "tsv" => out
                .stdout
                .trim_end()
                .split('\t')
                .nth(10)
                .unwrap()
                .to_string(),
            _ => out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("Tags"))
                .unwrap()
                .trim()
                .to_string(),
        }
    };
    for format in ["tsv", "table"] {
        assert_eq!(tags("tags-one", format), r"a=x\,b\=y", "{format}");
        assert_eq!(tags("tags-two", format), "a=x,b=y", "{format}");
    }
    // A tag's backslash is one escape, in TSV too (not escaped twice); its tab is \t.
    assert_eq!(tags("tags-odd", "tsv"), r"k\\=v\tw");
    // JSON has them as they are.
    let j = kv(v, &["secret", "show", "tags-one"]).ok().json();
    assert_eq!(j["tags"], serde_json::json!({"a": "x,b=y"}));
    let j = kv(v, &["secret", "show", "tags-odd"]).ok().json();
    assert_eq!(j["tags"], serde_json::json!({"k\\": "v\tw"}));
}

#[test]
fn value_sources_and_utf8() {
    let v = shared();
    let dir = tempfile::tempdir().unwrap();
    // --file: as is, trailing newline kept.
    let file = dir.path().join("value.txt");
    std::fs::write(&file, "line one\nline two ✓\n").unwrap();
    kv(
        v,
        &[
            "secret",
            "set",
            "src-file",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .ok();
    let j = kv(v, &["secret", "show", "src-file"]).ok().json();
    assert_eq!(j["value"], "line one\nline two ✓\n");

    // --value may start with '-' (and is never echoed back as an unknown argument).
    for dashed in ["--opt-like-secret", "-p4ss-word", "-"] {
        let out = kv(v, &["secret", "set", "src-dash", "--value", dashed]).ok();
        assert!(
            !out.stderr.contains(dashed) || dashed == "-",
            "{}",
            out.stderr
        );
        let j = kv(v, &["secret", "show", "src-dash"]).ok().json();
        assert_eq!(j["value"], dashed);
    }

    // --value-stdin: one trailing newline dropped.
    kv_in(
        v,
        &["secret", "set", "src-stdin", "--value-stdin"],
        b"from stdin\n",
    )
    .ok();
    let j = kv(v, &["secret", "show", "src-stdin"]).ok().json();
    assert_eq!(j["value"], "from stdin");
    // --file - is standard input too, read as is (as import, restore and backup read '-').
    kv_in(
        v,
        &["secret", "set", "src-dash-file", "--file", "-"],
        b"as is\n",
    )
    .ok();
    let j = kv(v, &["secret", "show", "src-dash-file"]).ok().json();
    assert_eq!(j["value"], "as is\n");
    kv_in(v, &["secret", "set", "src-dash-file", "--file", "-"], b"").code(2);

    // Empty input (a failed producer before the pipe, an empty file, an unset variable) writes nothing…
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = kv_in(v, &["secret", "set", "src-stdin", "--value-stdin"], b"").code(2);
    assert!(
        e.stderr
            .starts_with("error: the value from standard input is empty; nothing was written")
            && e.stderr.contains("--allow-empty"),
        "{}",
        e.stderr
    );
    kv_in(v, &["secret", "set", "src-stdin", "--value-stdin"], b"\n").code(2);
    let e = kv(
        v,
        &[
            "secret",
            "set",
            "src-file",
            "--file",
            empty.to_str().unwrap(),
        ],
    )
    .code(2);
    assert!(e.stderr.contains("empty.txt' is empty"), "{}", e.stderr);
    kv(v, &["secret", "set", "src-file", "--value", ""]).code(2);
    let versions = |name: &str| {
        kv(v, &["secret", "list-versions", name, "-o", "value"])
            .ok()
            .stdout
            .lines()
            .count()
    };
    assert_eq!(versions("src-stdin"), 1);
    assert_eq!(versions("src-file"), 1);
    assert_eq!(
        kv(v, &["secret", "show", "src-stdin"]).ok().json()["value"],
        "from stdin"
    );
    // …unless asked for.
    kv_in(
        v,
        &[
            "secret",
            "set",
            "src-empty",
            "--value-stdin",
            "--allow-empty",
        ],
        b"",
    )
    .ok();
    assert_eq!(
        kv(v, &["secret", "show", "src-empty"]).ok().json()["value"],
        ""
    );

    // Not UTF-8: a clear error, exit 2, and the bytes are never echoed.
    let bin = dir.path().join("binary.bin");
    std::fs::write(&bin, b"ok\n\xff\xfesecret-bytes").unwrap();
    let e = kv(
        v,
        &["secret", "set", "src-bin", "--file", bin.to_str().unwrap()],
    )
    .code(2);
    assert!(e.stderr.contains("not valid UTF-8"), "{}", e.stderr);
    assert!(e.stderr.contains("line 2"), "{}", e.stderr);
    assert!(!e.stderr.contains("secret-bytes"), "{}", e.stderr);
    let e = kv_in(
        v,
        &["secret", "set", "src-bin", "--value-stdin"],
        b"\xc3\x28",
    )
    .code(2);
    assert!(
        e.stderr
            .starts_with("error: the value from standard input is not valid UTF-8"),
        "{}",
        e.stderr
    );
    kv(v, &["secret", "show", "src-bin"]).code(3);

    // A value past Key Vault's 25,600 bytes is refused before anything is sent, from any source, and is not
    // echoed.
    let big = "v".repeat(25_601);
    let e = kv_in(
        v,
        &["secret", "set", "src-big", "--value-stdin"],
        big.as_bytes(),
    )
    .code(2);
    assert!(
        e.stderr
            .contains("is 25601 bytes, more than a secret value may be"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("vvvvvvvv"));
    let huge = "\u{1}".repeat(50_000);
    let e = kv(v, &["secret", "set", "src-big", "--value", &huge]).code(2);
    assert!(
        e.stderr.contains("more than a secret value may be"),
        "{}",
        e.stderr
    );
    kv(v, &["secret", "show", "src-big"]).code(3);

    // Exactly one source.
    kv(v, &["secret", "set", "src-none"]).code(2);
    kv_in(
        v,
        &["secret", "set", "src-two", "--value", "a", "--value-stdin"],
        b"b",
    )
    .code(2);
    let e = kv(
        v,
        &[
            "secret",
            "set",
            "src-missing",
            "--file",
            "/nonexistent/file",
        ],
    )
    .code(2);
    assert!(e.stderr.contains("cannot read /nonexistent/file"));
}

#[test]
fn names_are_checked_as_key_vault_does() {
    let v = shared();
    for bad in [
        "ünïcode",
        "has_underscore",
        "dot.ted",
        "名前",
        &"a".repeat(128),
    ] {
        let e = kv(v, &["secret", "set", bad, "--value", "v"]).code(2);
        assert!(
            e.stderr
                .starts_with(&format!("error: invalid secret name '{bad}'")),
            "{bad}: {}",
            e.stderr
        );
        kv(v, &["secret", "show", bad]).code(2);
    }
    kv(v, &["secret", "set", &"a".repeat(127), "--value", "v"]).ok();
    // Names are case-insensitive.
    kv(v, &["secret", "set", "Mixed-Case", "--value", "v1"]).ok();
    let j = kv(v, &["secret", "show", "mixed-case"]).ok().json();
    assert_eq!(j["value"], "v1");
}

#[test]
fn versions_update_and_ids() {
    let v = shared();
    let first = kv(
        v,
        &["secret", "set", "ver-a", "--value", "one", "-o", "json"],
    )
    .ok()
    .json();
    let old = first["version"].as_str().unwrap().to_string();
    kv(v, &["secret", "set", "ver-a", "--value", "two"]).ok();

    let versions = kv(v, &["secret", "list-versions", "ver-a", "-o", "value"]).ok();
    let listed: Vec<&str> = versions.stdout.lines().collect();
    assert_eq!(listed.len(), 2, "{}", versions.stdout);
    assert!(listed.contains(&old.as_str()));
    let j = kv(v, &["secret", "list-versions", "ver-a"]).ok().json();
    assert_eq!(j.as_array().unwrap().len(), 2);
    assert!(!versions.stdout.contains("one") && !versions.stdout.contains("two"));

    let j = kv(v, &["secret", "show", "ver-a", "--version", &old])
        .ok()
        .json();
    assert_eq!(j["value"], "one");
    let id = format!("{}/secrets/ver-a/{old}", v.url);
    let j = kv(v, &["secret", "show", "--id", &id]).ok().json();
    assert_eq!(j["value"], "one");
    // --id alone gives the vault URL (no dev credentials needed for the URL, only for the token).
    let j = kv(
        v,
        &[
            "secret",
            "show",
            "--id",
            &format!("{}/secrets/ver-a", v.url),
        ],
    )
    .ok()
    .json();
    assert_eq!(j["value"], "two");
    kv(v, &["secret", "show", "--id", "https://x/keys/k"]).code(2);
    kv(
        v,
        &[
            "secret",
            "show",
            "ver-a",
            "--version",
            "0123456789abcdef0123456789abcdef",
        ],
    )
    .code(3);

    // Update: only what is given changes.
    let j = kv(
        v,
        &[
            "secret",
            "update",
            "ver-a",
            "--content-type",
            "application/json",
            "--tags",
            "a=1",
            "flag",
            "--expires",
            "2031-02-03",
        ],
    )
    .ok()
    .json();
    assert_eq!(j["contentType"], "application/json");
    assert_eq!(j["tags"]["a"], "1");
    assert_eq!(j["tags"]["flag"], "");
    assert_eq!(j["expires"], "2031-02-03T00:00:00Z");
    let j = kv(v, &["secret", "update", "ver-a", "--tags"]).ok().json();
    assert_eq!(j["tags"], serde_json::json!({}));
    assert_eq!(j["contentType"], "application/json");

    // Disable the old version: reading it is forbidden (exit 5), the latest still reads.
    let j = kv(
        v,
        &["secret", "update", "ver-a", "--version", &old, "--disabled"],
    )
    .ok()
    .json();
    assert_eq!(j["enabled"], false);
    let e = kv(v, &["secret", "show", "ver-a", "--version", &old]).code(5);
    assert!(e.stderr.contains("SecretDisabled"), "{}", e.stderr);
    kv(v, &["secret", "show", "ver-a"]).ok();
    kv(
        v,
        &["secret", "update", "ver-a", "--version", &old, "--enabled"],
    )
    .ok();
    kv(v, &["secret", "show", "ver-a", "--version", &old]).ok();

    let e = kv(v, &["secret", "update", "ver-a"]).code(2);
    assert!(e.stderr.contains("nothing to update"));
    kv(v, &["secret", "update", "ver-missing", "--disabled"]).code(3);
    kv(v, &["secret", "update", "ver-a", "--enabled", "--disabled"]).code(2);
    let e = kv(v, &["secret", "update", "ver-a", "--expires", "soon"]).code(2);
    assert!(e.stderr.contains("invalid date 'soon'"), "{}", e.stderr);
}

#[test]
fn listings_never_print_values() {
    let v = shared();
    let value = "list-value-must-not-leak-7f3a";
    kv(
        v,
        &["secret", "set", "lst-a", "--value", value, "--tags", "k=v"],
    )
    .ok();
    kv(v, &["secret", "set", "lst-b", "--value", value]).ok();
    for format in ["table", "json", "tsv", "value"] {
        for cmd in [
            vec!["secret", "list", "-o", format],
            vec!["secret", "list-versions", "lst-a", "-o", format],
        ] {
            let out = kv(v, &cmd).ok();
            assert!(!out.stdout.contains(value), "{cmd:?}: {}", out.stdout);
        }
    }
    let names = kv(v, &["secret", "list", "-o", "value"]).ok();
    assert!(names.stdout.lines().any(|l| l == "lst-a"));
    assert!(names.stdout.lines().any(|l| l == "lst-b"));
    let table = kv(v, &["secret", "list", "-o", "table"]).ok();
    let mut lines = table.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("Name ") && header.contains("Tags"),
        "{header}"
    );
    assert!(lines.next().unwrap().starts_with("----"));
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("lst-a ") && l.ends_with("k=v"))
    );
    let tsv = kv(v, &["secret", "list", "-o", "tsv"]).ok();
    let row = tsv
        .stdout
        .lines()
        .find(|l| l.starts_with("lst-a\t"))
        .unwrap();
    assert_eq!(row.split('\t').count(), 6);
    let json = kv(v, &["secret", "list"]).ok().json();
    let item = json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lst-a")
        .unwrap();
    assert!(item.get("value").is_none());
    assert_eq!(item["version"], serde_json::Value::Null);
}

#[test]
fn delete_recover_purge() {
    let v = shared();
    kv(v, &["secret", "set", "del-a", "--value", "v1"]).ok();
    let d = kv(v, &["secret", "delete", "del-a", "-o", "json"])
        .ok()
        .json();
    assert_eq!(d["name"], "del-a");
    assert_eq!(
        d["recoveryId"],
        format!("{}/deletedsecrets/del-a", v.url).as_str()
    );
    assert!(d["deletedDate"].as_str().unwrap().ends_with('Z'));
    assert!(d["scheduledPurgeDate"].is_string());

    // The name is held: set is a conflict, show is not found.
    let e = kv(v, &["secret", "set", "del-a", "--value", "v2"]).code(4);
    assert!(
        e.stderr.contains("ObjectIsDeletedButRecoverable") && e.stderr.contains("'del-a'"),
        "{}",
        e.stderr
    );
    kv(v, &["secret", "show", "del-a"]).code(3);

    let names = kv(v, &["secret", "list-deleted", "-o", "value"]).ok();
    assert!(
        names.stdout.lines().any(|l| l == "del-a"),
        "{}",
        names.stdout
    );
    for format in ["table", "tsv", "json"] {
        kv(v, &["secret", "list-deleted", "-o", format]).ok();
    }
    let shown = kv(v, &["secret", "show-deleted", "del-a", "-o", "table"]).ok();
    assert!(shown.stdout.contains("Purge date"), "{}", shown.stdout);

    let r = kv(v, &["secret", "recover", "del-a", "--wait", "-o", "value"]).ok();
    assert!(r.stdout.starts_with(&format!("{}/secrets/del-a/", v.url)));
    assert_eq!(
        kv(v, &["secret", "show", "del-a", "-o", "value"])
            .ok()
            .stdout,
        "v1\n"
    );
    kv(v, &["secret", "show-deleted", "del-a"]).code(3);
    kv(v, &["secret", "recover", "del-a"]).code(3);

    let d = kv(v, &["secret", "delete", "del-a", "--wait", "-o", "value"]).ok();
    assert_eq!(d.stdout, "del-a\n");
    let p = kv(v, &["secret", "purge", "del-a", "-o", "json"])
        .ok()
        .json();
    assert_eq!(p, serde_json::json!({ "name": "del-a", "purged": true }));
    let e = kv(v, &["secret", "show-deleted", "del-a"]).code(3);
    assert_eq!(
        e.stderr,
        format!(
            "error: deleted secret 'del-a' not found in {} (SecretNotFound)\n",
            v.url
        )
    );
    kv(v, &["secret", "purge", "del-a"]).code(3);
    kv(v, &["secret", "delete", "del-a"]).code(3);
    // The name is free again.
    kv(v, &["secret", "set", "del-a", "--value", "v3"]).ok();
}

#[test]
fn backup_and_restore() {
    let v = shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bk.kvbackup");
    let f = file.to_str().unwrap();
    kv(v, &["secret", "set", "bk-a", "--value", "first"]).ok();
    kv(v, &["secret", "set", "bk-a", "--value", "second"]).ok();
    kv(v, &["secret", "backup", "bk-a", "--file", f]).ok();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let e = kv(v, &["secret", "backup", "bk-a", "--file", f]).code(2);
    assert!(e.stderr.contains("--overwrite"));
    // Over the file, printing the result as `out`.
    let backup_to = |file: &str, out: &str| {
        kv(
            v,
            &[
                "secret",
                "backup",
                "bk-a",
                "--file",
                file,
                "--overwrite",
                "-o",
                out,
            ],
        )
        .ok()
    };
    let b = backup_to(f, "json").json();
    assert_eq!(b["name"], "bk-a");
    assert_eq!(b["file"], f);
    assert_eq!(
        b["bytes"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len())
    );
    assert_eq!(backup_to(f, "value").stdout, format!("{f}\n"));
    // A path with a tab and a backslash: as it is with `-o value`, escaped with `-o tsv`.
    let odd = dir.path().join("we\\ird\tname");
    let o = odd.to_str().unwrap();
    assert_eq!(backup_to(o, "value").stdout, format!("{o}\n"));
    assert!(odd.exists());
    let b = backup_to(o, "tsv");
    assert!(b.stdout.ends_with("we\\\\ird\\tname\n"), "{}", b.stdout);
    kv(v, &["secret", "backup", "bk-missing", "--file", "-"]).code(3);

    // Restoring over the live secret is a conflict.
    kv(v, &["secret", "restore", "--file", f]).code(4);
    kv(v, &["secret", "delete", "bk-a", "--wait"]).ok();
    let p = kv(v, &["secret", "purge", "bk-a", "-o", "value"]).ok();
    assert_eq!(p.stdout, "bk-a\n");
    let r = kv(v, &["secret", "restore", "--file", f, "-o", "json"])
        .ok()
        .json();
    assert_eq!(r["name"], "bk-a");
    assert_eq!(
        kv(v, &["secret", "show", "bk-a", "-o", "value"])
            .ok()
            .stdout,
        "second\n"
    );
    let versions = kv(v, &["secret", "list-versions", "bk-a", "-o", "value"]).ok();
    assert_eq!(versions.stdout.lines().count(), 2);

    // Backup to stdout and restore from stdin.
    let bytes = kv(v, &["secret", "backup", "bk-a", "--file", "-"])
        .ok()
        .stdout_bytes;
    assert!(!bytes.is_empty());
    kv(v, &["secret", "delete", "bk-a", "--wait"]).ok();
    kv(v, &["secret", "purge", "bk-a"]).ok();
    kv_in(v, &["secret", "restore", "--file", "-"], &bytes).ok();
    kv_in(v, &["secret", "restore", "--file", "-"], b"").code(2);
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"not a backup").unwrap();
    kv(
        v,
        &["secret", "restore", "--file", garbage.to_str().unwrap()],
    )
    .code(2);
}

#[test]
fn connection_and_credential_errors() {
    let v = shared();
    // No vault.
    let e = run_with(command(None), &["secret", "list"], None).code(2);
    assert!(e.stderr.contains("no vault URL"), "{}", e.stderr);
    // Nothing listens: exit 1, quickly with --max-retries 0.
    let e = kv(
        v,
        &[
            "secret",
            "list",
            "--vault-url",
            "https://127.0.0.1:1",
            "--max-retries",
            "0",
        ],
    )
    .code(1);
    assert!(
        e.stderr
            .starts_with("error: cannot reach https://127.0.0.1:1"),
        "{}",
        e.stderr
    );
    // With a retry, the retry is announced before the error (retries of connection errors and 5xx are
    // otherwise silent).
    let e = kv(
        v,
        &[
            "secret",
            "list",
            "--vault-url",
            "https://127.0.0.1:1",
            "--max-retries",
            "1",
        ],
    )
    .code(1);
    let lines: Vec<&str> = e.stderr.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with("note: https://127.0.0.1:1/secrets failed (")
            && lines[0].contains("): retry 1 of 1 in ")
            && lines[1].starts_with("error: cannot reach https://127.0.0.1:1"),
        "{}",
        e.stderr
    );
    // Untrusted certificate: refused at once (no retry could change it, so none is made with the default
    // retries), said in the CLI's terms (how to trust the CA), not the library's Rust option.
    let e = run_with(
        command(None),
        &["secret", "list", "--vault-url", &v.url],
        None,
    )
    .code(1);
    assert!(
        e.stderr
            .starts_with(&format!("error: refused the certificate of {}: ", v.url)),
        "{}",
        e.stderr
    );
    assert!(
        e.stderr.contains("UnknownIssuer") && e.stderr.contains("--ca-file"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("SecretClientOptions"), "{}", e.stderr);
    assert!(!e.stderr.contains("retry"), "{}", e.stderr);
    // A client secret from the AZURE_* variables, for the authority at `authority`.
    let with_secret = |secret: &str, authority: &str| {
        let mut c = command(None);
        c.env("AZURE_TENANT_ID", "keyvault-rs")
            .env("AZURE_CLIENT_ID", "nobody")
            .env("AZURE_CLIENT_SECRET", secret)
            .env("AZURE_AUTHORITY_HOST", authority)
            .env("KEYVAULT_CA_FILE", &v.ca);
        c
    };
    // A wrong one: exit 5.
    let e = run_with(
        with_secret("wrong-secret-xyz", &v.url),
        &[
            "secret",
            "list",
            "--vault-url",
            &v.url,
            "--no-challenge-verification",
        ],
        None,
    )
    .code(5);
    assert!(
        e.stderr.starts_with("error: cannot get a token"),
        "{}",
        e.stderr
    );
    assert_eq!(e.stderr.lines().count(), 1, "one line: {}", e.stderr);
    assert!(!e.stderr.contains("wrong-secret-xyz"));
    // An authority that cannot be reached is not a refused credential: exit 1, not 5.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = run_with(
        with_secret("any-secret-xyz", &gone),
        &[
            "secret",
            "list",
            "--vault-url",
            &v.url,
            "--no-challenge-verification",
            "--max-retries",
            "0",
        ],
        None,
    )
    .code(1);
    assert!(
        e.stderr
            .starts_with("error: cannot get a token, the authority is unavailable:"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("any-secret-xyz"));
    // The challenge's resource does not match an IP-address URL without dev credentials.
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&v.creds).unwrap()).unwrap();
    let mut c = command(None);
    c.env("AZURE_TENANT_ID", creds["tenant_id"].as_str().unwrap())
        .env("AZURE_CLIENT_ID", creds["client_id"].as_str().unwrap())
        .env(
            "AZURE_CLIENT_SECRET",
            creds["client_secret"].as_str().unwrap(),
        )
        .env("AZURE_AUTHORITY_HOST", &v.url)
        .env("KEYVAULT_URL", &v.url)
        .env("KEYVAULT_CA_FILE", &v.ca);
    let e = run_with(c, &["secret", "list"], None).code(5);
    assert!(
        e.stderr.contains("--no-challenge-verification"),
        "{}",
        e.stderr
    );
    // …and works with the check off, with the credentials from the environment.
    let mut c = command(None);
    c.env("AZURE_TENANT_ID", creds["tenant_id"].as_str().unwrap())
        .env("AZURE_CLIENT_ID", creds["client_id"].as_str().unwrap())
        .env(
            "AZURE_CLIENT_SECRET",
            creds["client_secret"].as_str().unwrap(),
        )
        .env("AZURE_AUTHORITY_HOST", &v.url)
        .env("KEYVAULT_URL", &v.url)
        .env("KEYVAULT_CA_FILE", &v.ca);
    run_with(c, &["secret", "list", "--no-challenge-verification"], None).ok();
    // A credential for another tenant than the challenge names: the advice is the CLI's own flag.
    let mut c = command(None);
    c.env("AZURE_TENANT_ID", "other-tenant")
        .env("AZURE_CLIENT_ID", creds["client_id"].as_str().unwrap())
        .env(
            "AZURE_CLIENT_SECRET",
            creds["client_secret"].as_str().unwrap(),
        )
        .env("AZURE_AUTHORITY_HOST", &v.url)
        .env("KEYVAULT_URL", &v.url)
        .env("KEYVAULT_CA_FILE", &v.ca);
    let e = run_with(c, &["secret", "list", "--no-challenge-verification"], None).code(5);
    assert!(e.stderr.contains("--tenant-id"), "{}", e.stderr);
    assert!(
        !e.stderr.contains("additionally_allowed_tenants"),
        "{}",
        e.stderr
    );
    // The dev-credentials flag (a file or its directory) instead of the variable.
    let creds_path = v.creds.to_str().unwrap();
    run_with(
        command(None),
        &["secret", "list", "--dev-credentials", creds_path],
        None,
    )
    .ok();
    run_with(
        command(None),
        &[
            "secret",
            "--dev-credentials",
            v.creds.parent().unwrap().to_str().unwrap(),
            "list",
        ],
        None,
    )
    .ok();
    let e = run_with(
        command(None),
        &["secret", "list", "--dev-credentials", "/nonexistent.json"],
        None,
    )
    .code(2);
    assert!(e.stderr.contains("cannot read the dev credentials"));
    // Not found, worded for people.
    let e = kv(v, &["secret", "show", "no-such-secret"]).code(3);
    assert_eq!(
        e.stderr,
        format!(
            "error: secret 'no-such-secret' not found in {} (SecretNotFound)\n",
            v.url
        )
    );
    // Usage errors are bad input.
    kv(v, &["secret", "frobnicate"]).code(2);
    kv(v, &["secret", "list", "-o", "yaml"]).code(2);
}

#[test]
fn versions_of_a_missing_secret_are_an_empty_list_with_a_hint() {
    let v = shared();
    // Key Vault answers an empty list (exit 0); a person at a table is told why.
    let t = kv(
        v,
        &["secret", "list-versions", "no-such-versions", "-o", "table"],
    )
    .ok();
    assert!(
        t.stderr
            .contains("no versions: there is no secret 'no-such-versions' in"),
        "{}",
        t.stderr
    );
    let j = kv(
        v,
        &["secret", "list-versions", "no-such-versions", "-o", "json"],
    )
    .ok();
    assert_eq!(j.json(), serde_json::json!([]));
    assert!(j.stderr.is_empty(), "{}", j.stderr);
}

#[test]
fn broken_pipe_is_not_an_error() {
    let v = shared();
    kv(v, &["secret", "set", "pipe-a", "--value", "v"]).ok();
    let mut child = command(Some(v))
        .args(["secret", "list-versions", "pipe-a", "-o", "table"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the command has had time to reach the vault.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn token_prints_a_bearer_token() {
    let v = shared();
    let t = kv(v, &["token"]).ok();
    let token = t.stdout.trim_end();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(t.stdout.lines().count(), 1);
    let j = kv(v, &["token", "-o", "json"]).ok().json();
    assert_eq!(j["tokenType"], "Bearer");
    assert!(j["scope"].as_str().unwrap().ends_with("/.default"));
    assert!(j["expiresOn"].as_str().unwrap().ends_with('Z'));
    let scope = j["scope"].as_str().unwrap().to_string();
    let t = kv(v, &["token", "--scope", &scope]).ok();
    assert_eq!(t.stdout.trim_end().split('.').count(), 3);
    // The token works for a raw request (what `curl -H "Authorization: Bearer …"` does).
    let ca = std::fs::read(&v.ca).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::builder()
            .tls_backend_preconfigured(keyvault_server::tls::client_config_trusting(&ca).unwrap())
            .build()
            .unwrap()
            .get(format!("{}/secrets?api-version=7.6", v.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let e = run_with(
        command(None),
        &[
            "token",
            "--vault-url",
            "https://127.0.0.1:1",
            "--max-retries",
            "0",
        ],
        None,
    )
    .code(1);
    assert!(e.stderr.contains("cannot reach"));
}

#[test]
fn completions_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_with(command(None), &["completions", shell], None).ok();
        assert!(out.stdout.contains("keyvault"), "{shell}");
        assert!(out.stdout.contains("list-deleted"), "{shell}");
    }
    run_with(command(None), &["completions", "tcsh"], None).code(2);
    let top = run_with(command(None), &["--help"], None).ok();
    assert!(top.stdout.contains("Exit codes:"), "{}", top.stdout);
    let serve = run_with(command(None), &["serve", "--help"], None).ok();
    assert!(
        serve.stdout.contains("--metrics-addr") && serve.stdout.contains("KEYVAULT_METRICS_ADDR"),
        "{}",
        serve.stdout
    );
    for cmd in [
        vec!["secret"],
        vec!["token"],
        vec!["completions"],
        vec!["serve"],
        vec!["hash-secret"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = run_with(command(None), &args, None).ok();
        assert!(
            out.stdout.contains("Example") || out.stdout.contains("Exit codes"),
            "{cmd:?}: {}",
            out.stdout
        );
    }
    for sub in [
        "set",
        "show",
        "list",
        "list-versions",
        "update",
        "delete",
        "list-deleted",
        "show-deleted",
        "recover",
        "purge",
        "backup",
        "restore",
        "import",
        "export",
    ] {
        let out = run_with(command(None), &["secret", sub, "--help"], None).ok();
        assert!(
            out.stdout.contains("Example"),
            "secret {sub} --help has an example:\n{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!("keyvault secret {sub}")),
            "{sub}"
        );
    }
}

/// A listener on 127.0.0.1 that accepts connections and never says a word (not even TLS's): its URL. The
/// connections are held until the test process ends.
fn silent_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    url
}

#[test]
fn a_vault_that_never_answers_is_given_up_on_after_the_timeout() {
    let v = shared();
    let url = silent_server();
    // Without the limit this waits 15 s per try, 4 tries; with --timeout 1 the call ends after a second.
    let e = kv(
        v,
        &["secret", "show", "x", "--vault-url", &url, "--timeout", "1"],
    )
    .code(1);
    // A try that timed out within the second may have been retried: each retry is a note before the error.
    let last = e.stderr.lines().last().unwrap_or_default();
    assert!(
        e.stderr
            .lines()
            .all(|l| l == last || l.starts_with(&format!("note: {url}/secrets/x failed (")))
            && last.starts_with(&format!("error: gave up on {url}"))
            && last.contains("did not complete within its timeout of 1s")
            && e.stderr.contains("--timeout SECS (KEYVAULT_TIMEOUT)"),
        "{}",
        e.stderr
    );
    assert_eq!(
        e.stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{}",
        e.stderr
    );
    // The variable too, and for every command that talks to a vault.
    let mut c = command(Some(v));
    c.env("KEYVAULT_TIMEOUT", "2");
    let e = run_with(c, &["secret", "list", "--vault-url", &url], None).code(1);
    assert!(
        e.stderr
            .contains("did not complete within its timeout of 2s"),
        "{}",
        e.stderr
    );
    let e = kv(v, &["token", "--vault-url", &url, "--timeout", "1"]).code(1);
    assert!(e.stderr.contains("timeout of 1s"), "{}", e.stderr);
    let e = kv(
        v,
        &["principal", "list", "--vault-url", &url, "--timeout", "1"],
    )
    .code(1);
    assert!(e.stderr.contains("timeout of 1s"), "{}", e.stderr);
    kv(v, &["secret", "list", "--timeout", "soon"]).code(2);
}

#[test]
fn a_throttled_request_says_that_it_waits() {
    let v = cli_support::start_vault_with(keyvault_server::local::LocalVaultOptions {
        // One request an hour: the second is refused with a Retry-After of up to an hour.
        throttle: keyvault_server::http::throttle::ThrottleSettings {
            limit: Some(1),
            create_limit: None,
            window: std::time::Duration::from_secs(3600),
        },
        ..Default::default()
    });
    kv(&v, &["secret", "set", "slow", "--value", "x"]).ok();
    // The server asks for a wait longer than the client's longest (30 s): the 429 comes back at once, with
    // its own exit code and the wait asked for, instead of a retry sooner than asked or a timeout.
    let started = std::time::Instant::now();
    let e = kv(&v, &["secret", "show", "slow", "--timeout", "20"]).code(7);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        e.stderr.starts_with(&format!(
            "error: {} is throttling requests (429); it asks to wait ",
            v.url
        )) && e.stderr.contains("s (Retry-After)")
            && e.stderr.contains("--max-retries")
            && !e.stderr.contains("note:"),
        "{}",
        e.stderr
    );
}

/// A throttled request whose wait fits is waited for, and the user told: with a budget of 2 per 3-s window, a
/// set past it waits for the window's end (a note), then succeeds.
#[test]
fn a_throttled_request_that_fits_is_waited_for() {
    let v = cli_support::start_vault_with(keyvault_server::local::LocalVaultOptions {
        throttle: keyvault_server::http::throttle::ThrottleSettings {
            limit: Some(2),
            create_limit: None,
            window: std::time::Duration::from_secs(3),
        },
        ..Default::default()
    });
    // Fixed windows: a run may straddle one's end; sets go on (each succeeding) until one was made to wait.
    let mut notes = String::new();
    for i in 0..8 {
        let out = kv(&v, &["secret", "set", "waits", "--value", &format!("v{i}")]).ok();
        notes.push_str(&out.stderr);
        if notes.contains("note:") {
            break;
        }
    }
    assert!(
        notes.contains(&format!(
            "note: {}/secrets/waits answered 429 (too many requests): waiting",
            v.url
        )),
        "{notes}"
    );
}

#[test]
fn local_files_that_cannot_be_read_or_written_are_bad_input() {
    let v = shared();
    let dir = tempfile::tempdir().unwrap();
    kv(v, &["secret", "set", "file-codes", "--value", "v"]).ok();
    // A backup into a missing directory.
    let e = kv(
        v,
        &[
            "secret",
            "backup",
            "file-codes",
            "--file",
            "/nonexistent/dir/x",
        ],
    )
    .code(2);
    assert!(
        e.stderr.contains("cannot write /nonexistent/dir/x"),
        "{}",
        e.stderr
    );
    let e = kv(
        v,
        &["secret", "export", "--file", "/nonexistent/dir/all.json"],
    )
    .code(2);
    assert!(e.stderr.contains("cannot write"), "{}", e.stderr);
    // Key files: created into a missing directory, or malformed, as `rekey` says of them.
    let e = run_with(
        command(None),
        &["kek", "new", "/nonexistent/dir/k.key"],
        None,
    )
    .code(2);
    assert!(!e.stderr.is_empty());
    let bad = dir.path().join("bad.key");
    std::fs::write(
        &bad,
        "not a key
",
    )
    .unwrap();
    run_with(command(None), &["kek", "id", bad.to_str().unwrap()], None).code(2);
    // audit verify: 2 is for a log that is not intact; one that cannot be read is 1.
    let e = run_with(
        command(None),
        &["audit", "verify", "/nonexistent/audit.log"],
        None,
    )
    .code(1);
    assert!(
        e.stderr.contains("cannot verify the audit log"),
        "{}",
        e.stderr
    );
    // A directory opens but cannot be read: the same.
    let dir = tempfile::tempdir().unwrap();
    run_with(
        command(None),
        &["audit", "verify", dir.path().to_str().unwrap()],
        None,
    )
    .code(1);
}

/// A pseudo-terminal: its controller side, and a file on its terminal side (what a command's stdin and
/// stderr are given).
fn pty() -> (std::fs::File, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&controller).unwrap();
    unlockpt(&controller).unwrap();
    let name = ptsname(&controller, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    (std::fs::File::from(controller), terminal)
}

/// Run `keyvault ARGS` with stdin and stderr on a new terminal; once it shows `prompt`, type `typed` (unless
/// `None`: then send the command SIGINT instead). Its exit code, stdout, what the terminal showed, and whether
/// the terminal echoes after the command.
fn at_a_terminal(
    mut c: std::process::Command,
    args: &[&str],
    prompt: &str,
    typed: Option<&str>,
) -> (i32, String, String, bool) {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let (controller, terminal) = pty();
    let mut child = c
        .args(args)
        .stdin(terminal.try_clone().unwrap())
        .stderr(terminal.try_clone().unwrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(c);
    let shown = Arc::new(Mutex::new(Vec::new()));
    let mut reader = controller.try_clone().unwrap();
    let kept = shown.clone();
    // Reading ends with an error (EIO) once no process holds the terminal side open (`terminal` is dropped
    // after the command has exited).
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let start = std::time::Instant::now();
    while !String::from_utf8_lossy(&shown.lock().unwrap()).contains(prompt) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no prompt: {:?}",
            String::from_utf8_lossy(&shown.lock().unwrap())
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // What is typed; `None` or a signal's name (`"\u{1b}QUIT"`: ESC then the name) sends that signal instead.
    match typed {
        Some(t) if !t.starts_with('\u{1b}') => (&controller).write_all(t.as_bytes()).unwrap(),
        other => {
            let signal = other.map_or("INT", |t| &t[1..]);
            let status = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    let echoes = rustix::termios::tcgetattr(&terminal)
        .unwrap()
        .local_modes
        .contains(rustix::termios::LocalModes::ECHO);
    drop(terminal);
    // What the command wrote before it exited is in the terminal's buffer: read until the reader is done.
    let start = std::time::Instant::now();
    while Arc::strong_count(&shown) > 1 && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let shown = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    (code, stdout, shown, echoes)
}

#[test]
fn value_stdin_at_a_terminal_prompts_without_echo() {
    let v = shared();
    let (code, stdout, shown, echoes) = at_a_terminal(
        command(Some(v)),
        &["secret", "set", "tty-typed", "--value-stdin", "-o", "json"],
        "Value for 'tty-typed': ",
        Some("typed-s3cret-value\n"),
    );
    assert_eq!(code, 0, "{stdout} {shown}");
    assert!(!shown.contains("typed-s3cret-value"), "echoed: {shown:?}");
    assert!(shown.contains("Value for 'tty-typed': \r\n"), "{shown:?}");
    assert!(echoes, "the terminal echoes again");
    assert_eq!(
        kv(v, &["secret", "show", "tty-typed"]).ok().json()["value"],
        "typed-s3cret-value"
    );

    // Ctrl-C (SIGINT) at the prompt: exit 130, nothing written, the terminal restored.
    let (code, _, shown, echoes) = at_a_terminal(
        command(Some(v)),
        &["secret", "set", "tty-typed", "--value-stdin"],
        "Value for 'tty-typed': ",
        None,
    );
    assert_eq!(code, 130, "{shown:?}");
    assert!(shown.contains("error: interrupted"), "{shown:?}");
    assert!(echoes, "the terminal echoes again after Ctrl-C");
    let versions = kv(v, &["secret", "list-versions", "tty-typed", "-o", "value"]).ok();
    assert_eq!(versions.stdout.lines().count(), 1, "{}", versions.stdout);

    // Ctrl-\ (SIGQUIT) and a SIGTERM: the same.
    for signal in ["\u{1b}QUIT", "\u{1b}TERM"] {
        let (code, _, shown, echoes) = at_a_terminal(
            command(Some(v)),
            &["secret", "set", "tty-typed", "--value-stdin"],
            "Value for 'tty-typed': ",
            Some(signal),
        );
        assert_eq!(code, 130, "{signal}: {shown:?}");
        assert!(echoes, "the terminal echoes again after {signal}");
    }

    // `--file -` of set and import at a terminal: everything typed or pasted until Ctrl-D (at the start of a
    // line), as is, without echo.
    for (args, typed, name, value) in [
        (
            &["secret", "set", "tty-pem", "--file", "-"][..],
            "-----BEGIN X-----\nline two\n\u{4}",
            "tty-pem",
            "-----BEGIN X-----\nline two\n",
        ),
        (
            &["secret", "import", "--file", "-", "--no-progress"][..],
            "TTY_IMPORTED=pasted-import-value\n\u{4}",
            "tty-imported",
            "pasted-import-value",
        ),
    ] {
        let (code, _, shown, echoes) = at_a_terminal(
            command(Some(v)),
            args,
            "end with Ctrl-D on a line of its own): ",
            Some(typed),
        );
        assert_eq!(code, 0, "{args:?}: {shown:?}");
        let secret_part = value.lines().last().unwrap();
        assert!(!shown.contains(secret_part), "echoed: {shown:?}");
        assert!(echoes);
        assert_eq!(kv(v, &["secret", "show", name]).ok().json()["value"], value);
    }

    // hash-secret too.
    let (code, stdout, shown, echoes) = at_a_terminal(
        command(None),
        &["hash-secret"],
        "Client secret: ",
        Some("typed-client-secret\n"),
    );
    assert_eq!(code, 0, "{shown:?}");
    assert!(stdout.starts_with("$argon2"), "{stdout}");
    assert!(!shown.contains("typed-client-secret"), "echoed: {shown:?}");
    assert!(echoes);
}

/// A listener on 127.0.0.1 that counts the connections made to it (and closes them): its URL and the count.
fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for _ in listener.incoming() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (url, count)
}

#[test]
fn a_client_secret_is_not_sent_to_microsoft_for_a_vault_elsewhere() {
    let (url, connections) = counting_listener();
    let azure_client = |extra: &[(&str, &str)]| {
        let mut c = command(None);
        c.env("KEYVAULT_URL", &url)
            .env("AZURE_TENANT_ID", "my-tenant")
            .env("AZURE_CLIENT_ID", "my-app")
            .envs(extra.iter().copied());
        c
    };
    let e = run_with(
        azure_client(&[("AZURE_CLIENT_SECRET", "s3cret-for-azure")]),
        &["secret", "list", "--no-challenge-verification"],
        None,
    )
    .code(2);
    assert!(
        e.stderr.starts_with(
            "error: refusing to send the client secret to the default authority (https://login.microsoftonline.com)"
        ) && e.stderr.contains(&format!("--authority-host {url}"))
            && e.stderr.contains("custom domain in front of Azure Key Vault"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("s3cret-for-azure"), "{}", e.stderr);
    // The flag form, a certificate, and `token --scope` for a resource elsewhere: refused too.
    run_with(
        command(None),
        &[
            "secret",
            "list",
            "--vault-url",
            &url,
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--client-secret",
            "s",
        ],
        None,
    )
    .code(2);
    let e = run_with(
        azure_client(&[("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/cert.pem")]),
        &["secret", "list"],
        None,
    )
    .code(2);
    assert!(
        e.stderr
            .contains("an assertion signed with the client certificate"),
        "{}",
        e.stderr
    );
    let e = run_with(
        azure_client(&[("AZURE_CLIENT_SECRET", "s")]),
        &["token", "--scope", &format!("{url}/.default")],
        None,
    )
    .code(2);
    assert!(
        e.stderr.contains("refusing to send the client secret"),
        "{}",
        e.stderr
    );
    // Nothing was sent anywhere, not even to the vault.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A standard error that is closed (`2>&-`) or whose reader has gone (`2>&1 | true`): the command still
/// exits with its own code, not with a panic's 101.
#[test]
fn a_closed_standard_error_keeps_the_exit_code() {
    let v = shared();
    let mut c = command(Some(v));
    c.args(["secret", "show", "no-such-secret-here"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // The child's standard error: the write end of a pipe whose read end is closed at once.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = c.stderr(writer).status().unwrap();
    assert_eq!(status.code(), Some(3), "{status:?}");
}

/// Input larger than the vault takes is refused before any request, after reading only that much
/// (`--file /dev/zero` ends at once); a backup whose reader goes away is an error, not a success; a full
/// standard output is an error, never a panic.
#[test]
fn oversized_input_and_lost_output() {
    let v = shared();
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long");
    std::fs::write(&long, "x".repeat(25_603)).unwrap();
    for args in [
        vec!["secret", "set", "big-in", "--file", long.to_str().unwrap()],
        vec!["secret", "set", "big-in", "--file", "/dev/zero"],
    ] {
        let e = kv(v, &args).code(2);
        assert!(
            e.stderr.contains("longer than a secret value may be"),
            "{}",
            e.stderr
        );
    }
    let e = kv_in(
        v,
        &["secret", "set", "big-in", "--value-stdin"],
        &[b'y'; 100_000],
    )
    .code(2);
    assert!(
        e.stderr.contains("standard input is longer"),
        "{}",
        e.stderr
    );
    kv(v, &["secret", "show", "big-in"]).code(3);
    let e = kv(v, &["secret", "restore", "--file", "/dev/zero"]).code(2);
    assert!(
        e.stderr.contains("longer than the largest backup"),
        "{}",
        e.stderr
    );

    // A backup larger than a pipe's buffer, read by a reader that stops after 10 bytes.
    for i in 0..5 {
        kv_in(
            v,
            &["secret", "set", "big-out", "--file", "-"],
            format!("{i}{}", "v".repeat(20_000)).as_bytes(),
        )
        .ok();
    }
    let (code, stderr) = with_reader_gone_early(
        command(Some(v)),
        &["secret", "backup", "big-out", "--file", "-"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("standard output was closed before the backup was written"),
        "{stderr}"
    );

    // Standard output on a full device.
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for (mut c, args, input) in [
        (
            command(None),
            vec!["hash-secret"],
            &b"a-client-secret\n"[..],
        ),
        (
            command(Some(v)),
            vec!["secret", "show", "big-out", "-o", "value"],
            &b""[..],
        ),
    ] {
        let mut child = c
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(full())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("No space left on device"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `show --file` writes the value's bytes exactly (trailing newlines kept, none added), `get` is `show`, a tag
/// given twice is refused, `--api-version` picks what is sent (2016-10-01 answers have no recoverableDays).
#[test]
fn exact_values_aliases_tags_and_api_versions() {
    let v = shared();
    let dir = tempfile::tempdir().unwrap();
    let value = "line one\r\nline two\n\n";
    kv_in(
        v,
        &["secret", "set", "exact-a", "--file", "-"],
        value.as_bytes(),
    )
    .ok();
    let file = dir.path().join("value");
    let f = file.to_str().unwrap();
    let done = kv(v, &["secret", "show", "exact-a", "--file", f, "-o", "json"]).ok();
    assert_eq!(done.json()["bytes"], value.len());
    assert_eq!(std::fs::read(&file).unwrap(), value.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let e = kv(v, &["secret", "show", "exact-a", "--file", f]).code(2);
    assert!(e.stderr.contains("--overwrite"), "{}", e.stderr);
    kv_in(v, &["secret", "set", "exact-a", "--file", "-"], b"short").ok();
    kv(
        v,
        &["secret", "show", "exact-a", "--file", f, "--overwrite"],
    )
    .ok();
    assert_eq!(std::fs::read(&file).unwrap(), b"short");
    let raw = kv(v, &["secret", "get", "exact-a", "--file", "-"]).ok();
    assert_eq!(raw.stdout_bytes, b"short");

    let e = kv(
        v,
        &[
            "secret", "set", "exact-b", "--value", "x", "--tags", "a=1", "a=2",
        ],
    )
    .code(2);
    assert!(e.stderr.contains("tag 'a' is given twice"), "{}", e.stderr);
    kv(v, &["secret", "show", "exact-b"]).code(3);

    let latest = kv(v, &["secret", "show", "exact-a", "-o", "json"])
        .ok()
        .json();
    assert_eq!(latest["recoverableDays"], 90);
    let old = kv(
        v,
        &[
            "secret",
            "show",
            "exact-a",
            "-o",
            "json",
            "--api-version",
            "2016-10-01",
        ],
    )
    .ok()
    .json();
    assert_eq!(old["recoverableDays"], serde_json::Value::Null);
    let e = kv(v, &["secret", "show", "exact-a", "--api-version", "9.9"]).code(2);
    assert!(e.stderr.contains("2026-04-01"), "{}", e.stderr);

    // A vault URL whose path names a secrets route: refused on an Azure Key Vault domain (a unit test), pointed
    // out elsewhere (a gateway may serve a vault under such a path).
    let e = kv(
        v,
        &[
            "secret",
            "show",
            "exact-a",
            "--vault-url",
            &format!("{}/secrets", v.url),
        ],
    )
    .code(3);
    assert!(e.stderr.contains("note: the vault URL"), "{}", e.stderr);
}

/// Run `keyvault ARGS` with standard output on a new terminal: its exit code and what the terminal showed.
fn stdout_at_a_terminal(mut c: std::process::Command, args: &[&str]) -> (i32, String) {
    use std::io::Read;
    let (controller, terminal) = pty();
    let mut child = c
        .args(args)
        .stdin(Stdio::null())
        .stdout(terminal.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c);
    let mut reader = controller.try_clone().unwrap();
    let shown = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once no process holds the terminal side open.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let code = child.wait().unwrap().code().unwrap_or(-1);
    drop(terminal);
    let shown = shown.join().unwrap();
    (code, String::from_utf8_lossy(&shown).into_owned())
}

/// Values holding escape sequences and bidirectional controls are shown escaped when standard output is a
/// terminal, by `export --format env` (bash's `$'…'`) and by JSON (`\uXXXX`), so a secret cannot drive the
/// terminal of whoever lists it.
#[test]
fn terminal_output_escapes_what_a_terminal_would_act_on() {
    let v = shared();
    let value = "x\u{1b}]0;owned\u{7}y\u{9b}31m\u{202e}z";
    kv_in(
        v,
        &["secret", "set", "tty-esc", "--file", "-"],
        value.as_bytes(),
    )
    .ok();
    for (args, escaped) in [
        (
            vec!["secret", "export", "--format", "env", "--no-progress"],
            "tty_esc=$'x\\x1b]0;owned\\x07y\\xc2\\x9b31m\\xe2\\x80\\xaez'",
        ),
        (
            vec!["secret", "show", "tty-esc", "-o", "json"],
            "\"value\": \"x\\u001b]0;owned\\u0007y\\u009b31m\\u202ez\"",
        ),
    ] {
        let (code, shown) = stdout_at_a_terminal(command(Some(v)), &args);
        assert_eq!(code, 0, "{args:?}: {shown}");
        assert!(shown.contains(escaped), "{args:?}: {shown:?}");
        for c in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
            assert!(!shown.contains(c), "{args:?}: {c:?} reached the terminal");
        }
    }
}
