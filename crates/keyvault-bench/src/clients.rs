//! `--clients`: sequential (c = 1) `get_secret` through client libraries against one `keyvault serve --dev`
//! with N preloaded secrets: the `keyvault-secrets` crate's async `SecretClient`, the official Python SDK
//! (`azure-keyvault-secrets`, run by `python/seq_get.py` in the e2e venv), and — as the floor the server
//! allows — the harness's own bare hyper client. Reports each rate and the Rust / Python ratio.

use crate::client::Proto;
use crate::load::{self, Bounds, Cell, Dataset, Op, Rng, Server, Workload};
use crate::process::{ServerProc, cpu_seconds};
use crate::report;
use keyvault_secrets::credentials::{ClientSecretCredential, ClientSecretCredentialOptions};
use keyvault_secrets::{SecretClient, SecretClientOptions};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What a `--clients` run needs.
pub struct Settings {
    pub n: usize,
    pub value_bytes: usize,
    pub preload_concurrency: usize,
    pub bounds: Bounds,
    /// Unrecorded gets before each measured run.
    pub warmup_ops: u64,
    /// The Python interpreter with the SDK installed and the script, or why Python is skipped.
    pub python: Result<(PathBuf, PathBuf), String>,
}

/// One client's run.
pub struct ClientRow {
    pub client: String,
    pub proto: &'static str,
    pub cell: Cell,
    /// CPU seconds the client itself spent in the measured run, if known.
    pub client_cpu_s: Option<f64>,
}

pub struct ClientsReport {
    pub n: usize,
    pub get_body_bytes: usize,
    pub load_before: String,
    pub load_after: String,
    pub rows: Vec<ClientRow>,
    /// Why the Python half did not run, if it did not.
    pub python_skipped: Option<String>,
    /// Library versions the Python side reported.
    pub python_versions: String,
}

/// The default interpreter (`tests/e2e/.venv`, made by `E2E_SETUP_ONLY=1 tests/e2e/run.sh`) and script.
pub fn default_python() -> (PathBuf, PathBuf) {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    (
        crate_dir.join("../../tests/e2e/.venv/bin/python"),
        crate_dir.join("python/seq_get.py"),
    )
}

/// Where the Python half can run, or why not.
pub fn locate_python(
    interpreter: Option<PathBuf>,
    skip: bool,
) -> Result<(PathBuf, PathBuf), String> {
    if skip {
        return Err("the Python half was not asked for".into());
    }
    let (default_interp, script) = default_python();
    let interp = interpreter.unwrap_or(default_interp);
    if !interp.is_file() {
        return Err(format!(
            "no Python venv at {} (make it with `E2E_SETUP_ONLY=1 tests/e2e/run.sh`, or pass --python)",
            interp.display()
        ));
    }
    if !script.is_file() {
        return Err(format!("no script at {}", script.display()));
    }
    Ok((interp, script))
}

/// Start a server on `dir`, preload, and measure every client sequentially.
pub async fn measure(bin: &Path, dir: &Path, s: &Settings) -> Result<ClientsReport, String> {
    let load_before = report::loadavg();
    let server = ServerProc::start(bin, dir).await?;
    let token = crate::bearer(&server).await?;
    let value: String = "v".repeat(s.value_bytes);
    eprintln!("clients: preloading {} secrets…", s.n);
    let (versions, _) =
        crate::preload(&server.target, &token, s.n, &value, s.preload_concurrency).await?;
    let names: Vec<String> = (0..s.n).map(Dataset::name).collect();
    let data = Arc::new(Dataset {
        deep_token: String::new(),
        names,
        versions,
        value,
    });
    let get_body_bytes = crate::sample_get(&server.target, &token, &data).await?;
    let mut rows = Vec::new();

    // 1. The floor: the harness's bare hyper client, one keep-alive HTTP/1.1 connection.
    {
        let workload = Arc::new(Workload {
            op: Op::GetLatest,
            data: data.clone(),
            bearer: token.clone(),
            workers: 1,
        });
        let mut conns = server.target.connect_workers(Proto::H1, 1).await?;
        let warm = Bounds {
            max_requests: s.warmup_ops,
            max_time: s.bounds.max_time,
        };
        conns = load::warm_up(&workload, conns, warm).await;
        let own = self_cpu();
        let (cell, _) = load::run(workload, conns, s.bounds, Server::Process(server.pid)).await;
        let client_cpu = self_cpu() - own;
        eprintln!("{}", progress("harness hyper client", &cell));
        rows.push(ClientRow {
            client: "harness: bare hyper + rustls (no SDK; the floor)".into(),
            proto: "h1",
            cell,
            client_cpu_s: Some(client_cpu),
        });
    }

    // 2. keyvault-secrets' async SecretClient, built as an application would from dev-credentials.json.
    {
        let client = rust_client(&server)?;
        let row = rust_run(&client, &data, s, server.pid).await;
        eprintln!("{}", progress("keyvault-secrets", &row.cell));
        if let Some(e) = &row.cell.first_error {
            eprintln!("  first error: {e}");
        }
        rows.push(row);
    }

    // 3. The Python SDK, in its own process.
    let mut python_versions = String::new();
    let python_skipped = match &s.python {
        Ok((interp, script)) => {
            let creds = dir.join("dev-credentials.json");
            match python_run(interp, script, &creds, s, server.pid).await {
                Ok((row, versions)) => {
                    eprintln!("{}", progress("python sdk", &row.cell));
                    if let Some(e) = &row.cell.first_error {
                        eprintln!("  first error: {e}");
                    }
                    rows.push(row);
                    python_versions = versions;
                    None
                }
                Err(e) => return Err(format!("the Python half failed: {e}")),
            }
        }
        Err(why) => {
            eprintln!("clients: Python half skipped: {why}");
            Some(why.clone())
        }
    };
    server.stop().await?;
    Ok(ClientsReport {
        n: s.n,
        get_body_bytes,
        load_before,
        load_after: report::loadavg(),
        rows,
        python_skipped,
        python_versions,
    })
}

fn self_cpu() -> f64 {
    cpu_seconds("/proc/self/stat")
}

fn progress(label: &str, cell: &Cell) -> String {
    format!(
        "clients: {label:<22} {:>8.0} get/s  p50 {:.3} ms  p99 {:.3} ms  server cpu {:.0} µs/op  errors {}",
        cell.rate(),
        cell.quantile_ms(0.5),
        cell.quantile_ms(0.99),
        cell.cpu_us_per_op(),
        cell.errors
    )
}

fn rust_client(server: &ServerProc) -> Result<SecretClient, String> {
    let c = &server.creds;
    let credential = ClientSecretCredential::new(
        c.tenant_id.as_str(),
        c.client_id.as_str(),
        c.client_secret.as_str(),
        Some(ClientSecretCredentialOptions {
            authority_host: c.authority_host.clone(),
            additional_ca_certificates: vec![c.ca_pem.clone()],
            trust_system_roots: false,
            ..Default::default()
        }),
    )
    .map_err(|e| format!("credential: {e}"))?;
    SecretClient::new(
        &c.vault_url,
        Arc::new(credential),
        Some(SecretClientOptions {
            // The vault is on 127.0.0.1: no domain for the challenge's resource to match.
            verify_challenge_resource: false,
            additional_ca_certificates: vec![c.ca_pem.clone()],
            trust_system_roots: false,
            ..Default::default()
        }),
    )
    .map_err(|e| format!("SecretClient: {e}"))
}

async fn rust_run(client: &SecretClient, data: &Dataset, s: &Settings, pid: u32) -> ClientRow {
    let n = data.names.len();
    let mut rng = Rng::new(42);
    let mut cell = Cell::default();
    // Warm-up: the challenge, the token, the connection.
    for _ in 0..s.warmup_ops.max(1) {
        if let Err(e) = client.get_secret(&data.names[rng.below(n)], None).await {
            cell.errors += 1;
            cell.first_error.get_or_insert(format!("warm-up: {e}"));
        }
    }
    let own = self_cpu();
    let srv = cpu_seconds(&format!("/proc/{pid}/stat"));
    let started = Instant::now();
    let deadline = started + s.bounds.max_time;
    while cell.ok + cell.errors < s.bounds.max_requests && Instant::now() < deadline {
        let name = &data.names[rng.below(n)];
        let t = Instant::now();
        match client.get_secret(name, None).await {
            Ok(secret) if secret.value().is_some() => {
                cell.ok += 1;
                cell.latencies.push(t.elapsed().as_nanos() as u64);
            }
            Ok(_) => {
                cell.errors += 1;
                cell.first_error
                    .get_or_insert(format!("{name}: no value in the answer"));
            }
            Err(e) => {
                cell.errors += 1;
                cell.first_error.get_or_insert(format!("{name}: {e}"));
            }
        }
    }
    cell.elapsed = started.elapsed();
    cell.server_cpu_s = (cpu_seconds(&format!("/proc/{pid}/stat")) - srv).max(0.0);
    let client_cpu = self_cpu() - own;
    cell.latencies.sort_unstable();
    ClientRow {
        client: "keyvault-secrets SecretClient (async, reqwest)".into(),
        // The built-in transport speaks HTTP/1.1 unless `http2` is set.
        proto: "h1",
        cell,
        client_cpu_s: Some(client_cpu),
    }
}

/// How long the Python side may take to start, fetch its token and warm up.
const PYTHON_START_TIMEOUT: Duration = Duration::from_secs(120);

async fn python_run(
    interp: &Path,
    script: &Path,
    creds: &Path,
    s: &Settings,
    pid: u32,
) -> Result<(ClientRow, String), String> {
    let mut child = tokio::process::Command::new(interp)
        .arg(script)
        .arg(creds)
        .args([
            "--n",
            &s.n.to_string(),
            "--seconds",
            &s.bounds.max_time.as_secs_f64().to_string(),
            "--max-ops",
            &s.bounds.max_requests.to_string(),
            "--warmup-ops",
            &s.warmup_ops.max(1).to_string(),
        ])
        // Only the flags above point Python at the server: no proxies, no stray CA bundles.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", interp.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let fail = |what: String, child: &mut tokio::process::Child| {
        let _ = child.start_kill();
        what
    };
    let ready = tokio::time::timeout(PYTHON_START_TIMEOUT, lines.next_line()).await;
    match ready {
        Ok(Ok(Some(l))) if l.trim() == "READY" => {}
        other => {
            let _ = child.start_kill();
            let err = errors.await.unwrap_or_default();
            return Err(format!(
                "seq_get.py did not get ready ({other:?}); stderr:\n{}",
                tail(&err)
            ));
        }
    }
    let srv = cpu_seconds(&format!("/proc/{pid}/stat"));
    stdin
        .write_all(b"GO\n")
        .await
        .map_err(|e| fail(format!("cannot signal seq_get.py: {e}"), &mut child))?;
    let limit = s.bounds.max_time + Duration::from_secs(60);
    let line = match tokio::time::timeout(limit, lines.next_line()).await {
        Ok(Ok(Some(l))) => l,
        other => {
            let _ = child.start_kill();
            let err = errors.await.unwrap_or_default();
            return Err(format!(
                "seq_get.py gave no result ({other:?}); stderr:\n{}",
                tail(&err)
            ));
        }
    };
    let server_cpu = (cpu_seconds(&format!("/proc/{pid}/stat")) - srv).max(0.0);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let json: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("seq_get.py printed {line:?}: {e}"))?;
    let mut latencies: Vec<u64> = json["latencies_us"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|us| us * 1000)
                .collect()
        })
        .unwrap_or_default();
    latencies.sort_unstable();
    let cell = Cell {
        ok: json["ops"].as_u64().unwrap_or(0),
        errors: json["errors"].as_u64().unwrap_or(0),
        first_error: json["first_error"].as_str().map(str::to_string),
        elapsed: Duration::from_secs_f64(json["seconds"].as_f64().unwrap_or(0.0)),
        server_cpu_s: server_cpu,
        latencies,
        ..Cell::default()
    };
    let versions = json["versions"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let sdk = json["versions"]["azure-keyvault-secrets"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    Ok((
        ClientRow {
            client: format!("Python azure-keyvault-secrets {sdk} SecretClient (sync, requests)"),
            proto: "h1",
            cell,
            client_cpu_s: json["cpu_seconds"].as_f64(),
        },
        versions,
    ))
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The markdown section of a `--clients` run.
pub fn render(r: &ClientsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Sequential GET through client libraries (c = 1)\n\n{} secrets; GET body {} bytes; one client, one \
         request at a time, random names. Load average {} before, {} after.\n",
        report::group(r.n as f64),
        r.get_body_bytes,
        r.load_before,
        r.load_after
    );
    let _ = writeln!(
        out,
        "| client | proto | gets | seconds | get/s | p50 ms | p99 ms | client CPU µs/get | server CPU µs/get | errors |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let c = &row.cell;
        let client_cpu = row
            .client_cpu_s
            .map(|s| format!("{:.0}", 1e6 * s / c.ok.max(1) as f64))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} | {:.3} | {:.3} | {} | {:.0} | {} |",
            row.client,
            row.proto,
            c.ok,
            c.elapsed.as_secs_f64(),
            report::group(c.rate()),
            c.quantile_ms(0.5),
            c.quantile_ms(0.99),
            client_cpu,
            c.cpu_us_per_op(),
            c.errors
        );
    }
    let _ = writeln!(out);
    let rust = r
        .rows
        .iter()
        .find(|row| row.client.starts_with("keyvault-secrets"));
    let python = r.rows.iter().find(|row| row.client.starts_with("Python"));
    match (rust, python) {
        (Some(rust), Some(py)) => {
            let ratio = rust.cell.rate() / py.cell.rate().max(1e-9);
            let _ = writeln!(
                out,
                "- Rust client vs Python SDK, sequential get: {} vs {} get/s = **{:.1}×** (target ≥ 10×: {})",
                report::group(rust.cell.rate()),
                report::group(py.cell.rate()),
                ratio,
                if ratio >= 10.0 {
                    "**met**"
                } else {
                    "**MISSED**"
                }
            );
            if !r.python_versions.is_empty() {
                let _ = writeln!(out, "- Python side: {}", r.python_versions);
            }
        }
        _ => {
            let why = r.python_skipped.as_deref().unwrap_or("no Python row");
            let _ = writeln!(
                out,
                "- Rust client vs Python SDK: not measured (Python half skipped: {why})"
            );
        }
    }
    out
}
