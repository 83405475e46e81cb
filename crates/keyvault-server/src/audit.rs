//! The audit log: one JSON line per request decision, hash-chained, rotated by size.
//!
//! A line is `{"seq":N,"time":"…","requestId":"…","principal":"…"|null,"operation":"SecretGet"|null,
//! "secret":"…"|null,"version":"…"|null,["target":"…",]"outcome":"allowed"|"denied"|"unauthenticated"|"rejected"|"throttled",
//! "status":200,"prev":"<hex>","hash":"<hex>"}`: `hash` is the SHA-256 of the line as written without its
//! `hash` member (that is, the text up to `"prev":"<hex>"` and a closing `}`), and `prev` is the `hash` of
//! the line before (64 zeros for the very first line). `seq` counts from 0 across rotations. Editing,
//! removing, inserting or reordering a line breaks the chain at that line; [`verify_files`] says where.
//! Never a secret value or a token.
//!
//! Rotation: when the active file would exceed the size limit it is renamed `FILE.1`, `FILE.2`, … (higher
//! = newer) and a new `FILE` continues the chain: its first line's `prev` is the last hash of the previous
//! file. [`chain_files`] lists a chain's files oldest first; [`verify_chain`] verifies all of them.
//!
//! Writing: the chain's state (next `seq`, last hash, the open file) sits behind one mutex. Durability,
//! decided per request:
//!
//! - **Mutating requests** (every method but GET/HEAD) use [`AuditLog::record_written`]: the caller formats
//!   its line and hands it to the kernel itself, under the mutex, before its response goes out, so a crash of
//!   the server process can never lose the audit line of a change a client was told about. Writing inline
//!   costs one `write` of a few hundred bytes into the page cache; handing the line to a thread and waiting to
//!   be woken cost far more (two cross-thread wake-ups per request: 20–30 µs of server CPU per SET measured).
//!   If the write itself fails (a full disk), the error is logged with the request's id and operation and the
//!   response still goes out (the change is already committed); whatever part of the lines reached the file is
//!   cut off again, so the chain resumes after the last line written and the file still verifies. While the
//!   log cannot be written ([`AuditLog::is_failing`]), the HTTP layer refuses further changes (503) before
//!   making them; the refusal's own line is the next attempt, and the first that is written ends the refusals.
//! - At start, a last line without its newline (a write torn by a power failure) is moved to `FILE.torn-N`
//!   and cut off, with a warning, so the server starts; a complete last line that does not verify still
//!   stops it ([`AuditError::Damaged`]).
//! - **Reads** use [`AuditLog::record`]: queued for a background thread, which takes whatever is queued,
//!   formats it and hands it to the kernel in a few `write`s (taking the mutex per [`LOCK_CHUNK`] lines, so
//!   an inline writer never waits long), then waits up to [`LINGER`] for more (no wake-up, no syscall per
//!   line under load). A crash of the process loses at most the lines of the reads answered in that last
//!   instant.
//! - Lines appear in the order they were written, which for concurrent requests need not be the order in
//!   which they were answered (a read's queued line may follow a later change's).
//! - Lines are **not fsynced** one by one (the chain would then cost a disk flush per request): a power
//!   failure can lose the tail the kernel had not yet written back. The file is fsynced on rotation and on
//!   shutdown. A lost tail leaves a chain that still verifies up to its last line; record
//!   [`VerifyReport::last_hash`] elsewhere to detect one.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// How long the background thread waits for more queued lines after a write, so that lines under load go out in
/// batches. [`AuditLog::flush`] cuts the wait short.
pub const LINGER: Duration = Duration::from_millis(2);

/// Queued lines the background thread formats and writes per hold of the chain's mutex.
const LOCK_CHUNK: usize = 32;

/// How a request was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// No valid token: 401.
    Unauthenticated,
    /// Refused before an authorization decision (bad api-version, unknown route, invalid name).
    Rejected,
    /// The policy refused it: 403.
    Denied,
    /// Authenticated, but over the vault's request budget: 429 (no authorization decision was made).
    Throttled,
    /// The policy allowed it; `status` tells how it ended.
    Allowed,
}

impl Outcome {
    /// The name in a line (as serde names it: lower case).
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Rejected => "rejected",
            Outcome::Denied => "denied",
            Outcome::Throttled => "throttled",
            Outcome::Allowed => "allowed",
        }
    }
}

/// What the HTTP layer records about one request.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub request_id: String,
    /// Shared with the token cache's copy (no allocation per request).
    pub principal: Option<std::sync::Arc<str>>,
    pub operation: Option<&'static str>,
    pub secret: Option<String>,
    pub version: Option<String>,
    /// What an admin API call acted on (a client id, an assignment id); absent from lines without one.
    pub target: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
}

impl AuditRecord {
    /// A record for a request that has just arrived: unauthenticated until the token is checked.
    pub fn new(request_id: String) -> Self {
        AuditRecord {
            time_ms: now_ms(),
            request_id,
            principal: None,
            operation: None,
            secret: None,
            version: None,
            target: None,
            outcome: Outcome::Unauthenticated,
            status: 0,
        }
    }
}

/// The body of a line, members in the order they are written: what [`append_line`] writes by hand, kept as
/// the reference it is tested against.
#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    request_id: &'a str,
    principal: Option<&'a str>,
    operation: Option<&'a str>,
    secret: Option<&'a str>,
    version: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    outcome: Outcome,
    status: u16,
    prev: &'a str,
}

/// Just what verification and recovery read.
#[derive(Deserialize)]
struct ChainFields {
    seq: u64,
    prev: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC, `2024-05-01T12:34:56.789Z`.
#[cfg(test)]
fn rfc3339_ms(ms: i64) -> String {
    let mut buf = [0u8; TIME_BUF];
    let len = rfc3339_ms_into(ms, &mut buf);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Room for any `i64` millisecond time (years beyond 9999 take more digits).
const TIME_BUF: usize = 48;

/// Unix milliseconds as RFC 3339 UTC (`2024-05-01T12:34:56.789Z`) into a buffer, without allocating; returns
/// the length written.
fn rfc3339_ms_into(ms: i64, buf: &mut [u8; TIME_BUF]) -> usize {
    let millis = ms.rem_euclid(1000);
    let (year, month, day, hour, minute, second) =
        crate::auth::util::utc_from_unix(ms.div_euclid(1000));
    let mut out = &mut buf[..];
    let start = out.len();
    // Cannot fail: TIME_BUF holds the longest possible text.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
    );
    start - out.len()
}

/// A line's hash as lowercase hex.
type HashHex = [u8; 64];

fn sha256_hex(data: &[u8]) -> HashHex {
    let mut out = [0u8; 64];
    // Cannot fail: 32 bytes make exactly 64 hex digits.
    let _ = hex::encode_to_slice(
        ring::digest::digest(&ring::digest::SHA256, data).as_ref(),
        &mut out,
    );
    out
}

fn hex_str(h: &HashHex) -> &str {
    // Hex digits are ASCII.
    std::str::from_utf8(h).unwrap_or_default()
}

/// The line for `record` at position `seq` after `prev`, without the trailing newline; and its hash.
#[cfg(test)]
fn make_line(record: &AuditRecord, seq: u64, prev: &str) -> (String, String) {
    let mut buf = Vec::new();
    let hash = append_line(&mut buf, &mut TimeText::default(), record, seq, prev);
    buf.pop(); // the newline
    (
        String::from_utf8(buf).unwrap_or_default(),
        hex_str(&hash).to_string(),
    )
}

/// The RFC 3339 text of the last millisecond formatted: lines come many to a millisecond under load, and
/// formatting a date costs more than the rest of a line's fields.
struct TimeText {
    ms: i64,
    buf: [u8; TIME_BUF],
    len: usize,
}

impl Default for TimeText {
    fn default() -> Self {
        let mut t = TimeText {
            ms: 0,
            buf: [0; TIME_BUF],
            len: 0,
        };
        t.len = rfc3339_ms_into(0, &mut t.buf);
        t
    }
}

impl TimeText {
    fn at(&mut self, ms: i64) -> &str {
        if ms != self.ms {
            self.len = rfc3339_ms_into(ms, &mut self.buf);
            self.ms = ms;
        }
        // Digits and punctuation: always ASCII.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// Appends the line for `record` at position `seq` after `prev`, with its newline, to `buf`; returns its
/// hash. Formats straight into `buf`: no allocation once `buf` has grown.
fn append_line(
    buf: &mut Vec<u8>,
    time: &mut TimeText,
    record: &AuditRecord,
    seq: u64,
    prev: &str,
) -> HashHex {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    crate::json::push_int(buf, seq);
    buf.extend_from_slice(b",\"time\":");
    crate::json::push_str(buf, time.at(record.time_ms));
    buf.extend_from_slice(b",\"requestId\":");
    crate::json::push_str(buf, &record.request_id);
    for (key, value) in [
        (&b",\"principal\":"[..], record.principal.as_deref()),
        (b",\"operation\":", record.operation),
        (b",\"secret\":", record.secret.as_deref()),
        (b",\"version\":", record.version.as_deref()),
    ] {
        buf.extend_from_slice(key);
        match value {
            Some(v) => crate::json::push_str(buf, v),
            None => buf.extend_from_slice(b"null"),
        }
    }
    if let Some(target) = record.target.as_deref() {
        buf.extend_from_slice(b",\"target\":");
        crate::json::push_str(buf, target);
    }
    buf.extend_from_slice(b",\"outcome\":\"");
    buf.extend_from_slice(record.outcome.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"status\":");
    crate::json::push_int(buf, record.status);
    buf.extend_from_slice(b",\"prev\":");
    crate::json::push_str(buf, prev);
    buf.push(b'}');
    let hash = sha256_hex(&buf[start..]);
    buf.pop(); // the closing brace
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(&hash);
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// Checks one line on its own: its `hash` matches its content. Returns (seq, prev, hash).
fn check_line(line: &str) -> Result<(u64, String, String), String> {
    let bad_shape = || "not an audit line (no trailing hash member)".to_string();
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.is_char_boundary(line.len() - HASH_SUFFIX_LEN) {
        return Err(bad_shape());
    }
    let (head, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let hash = suffix
        .strip_prefix(",\"hash\":\"")
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(bad_shape)?;
    let mut body = String::with_capacity(head.len() + 1);
    body.push_str(head);
    body.push('}');
    if hex_str(&sha256_hex(body.as_bytes())) != hash {
        return Err("the line's content does not match its hash (edited)".to_string());
    }
    let fields: ChainFields =
        serde_json::from_str(&body).map_err(|_| "the line is not valid audit JSON".to_string())?;
    Ok((fields.seq, fields.prev, hash.to_string()))
}

/// What a verified chain looks like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub files: usize,
    pub lines: u64,
    /// `seq` of the first line (0 unless the oldest files are gone); `None` when there are no lines.
    pub first_seq: Option<u64>,
    /// `seq` of the last line.
    pub last_seq: Option<u64>,
    /// The `prev` of the first line ([`GENESIS`] for a complete chain).
    pub first_prev: Option<String>,
    /// The hash of the last line: record it elsewhere to detect a truncated tail later.
    pub last_hash: Option<String>,
    /// Whether the chain starts at its beginning (`seq` 0 after [`GENESIS`]). `false` for a rotated file on
    /// its own, or when the oldest files or lines are missing.
    pub complete: bool,
}

/// Where and why verification failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct VerifyError {
    pub file: PathBuf,
    /// 1-based line number in `file` (0 = the file itself).
    pub line: u64,
    pub reason: String,
}

/// Verifies one file (it may start mid-chain: a rotated file's first line follows the previous file).
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_files(&[path.to_path_buf()])
}

/// Verifies files that form one chain, oldest first: every line's hash, `seq` + 1 and `prev` = the hash of
/// the line before, across files. The first line may start mid-chain unless its `seq` is 0, in which case
/// its `prev` must be [`GENESIS`].
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        files: 0,
        lines: 0,
        first_seq: None,
        last_seq: None,
        first_prev: None,
        last_hash: None,
        complete: false,
    };
    for path in paths {
        let err = |line: u64, reason: String| VerifyError {
            file: path.clone(),
            line,
            reason,
        };
        let file = File::open(path).map_err(|e| err(0, format!("cannot open: {e}")))?;
        report.files += 1;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                // Reading failed (a directory, an I/O error): the file itself, not the chain (line 0).
                .map_err(|e| err(0, format!("cannot read line {}: {e}", n + 1)))?;
            if read == 0 {
                break;
            }
            n += 1;
            if buf.last() != Some(&b'\n') {
                return Err(err(n, "the last line is incomplete (no newline)".into()));
            }
            buf.pop();
            let line = std::str::from_utf8(&buf).map_err(|_| err(n, "not UTF-8".into()))?;
            let (seq, prev, hash) = check_line(line).map_err(|r| err(n, r))?;
            match (&report.last_seq, &report.last_hash) {
                (Some(last_seq), Some(last_hash)) => {
                    if seq != last_seq + 1 {
                        return Err(err(
                            n,
                            format!(
                                "sequence {seq} follows {last_seq} (a line was removed, inserted or moved)"
                            ),
                        ));
                    }
                    if &prev != last_hash {
                        return Err(err(
                            n,
                            "the line does not chain to the line before (a line was removed, inserted or moved)"
                                .into(),
                        ));
                    }
                }
                _ => {
                    if seq == 0 && prev != GENESIS {
                        return Err(err(n, "the first line does not start the chain".into()));
                    }
                    report.complete = seq == 0;
                    report.first_seq = Some(seq);
                    report.first_prev = Some(prev);
                }
            }
            report.lines += 1;
            report.last_seq = Some(seq);
            report.last_hash = Some(hash);
        }
    }
    Ok(report)
}

/// The files of the chain whose active file is `active`, oldest first: `FILE.1`, `FILE.2`, …, `FILE`
/// (the ones that exist).
pub fn chain_files(active: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (active.parent(), active.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", name.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let fname = entry.file_name().to_string_lossy().into_owned();
                if let Some(n) = fname
                    .strip_prefix(&prefix)
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    files.push((n, active.with_file_name(&fname)));
                }
            }
        }
    }
    files.sort();
    let mut out: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    if active.exists() {
        out.push(active.to_path_buf());
    }
    out
}

/// Verifies the whole chain of an active file and its rotated predecessors. A running server may rotate while
/// the files are read (the list then misses the files made meanwhile, and the chain seems to skip lines): a
/// failure is checked again on a fresh list, up to three times, and reported only if the list did not change.
pub fn verify_chain(active: &Path) -> Result<VerifyReport, VerifyError> {
    verify_listed(active, chain_files)
}

fn verify_listed(
    active: &Path,
    mut list: impl FnMut(&Path) -> Vec<PathBuf>,
) -> Result<VerifyReport, VerifyError> {
    let mut files = list(active);
    let mut tries = 1;
    loop {
        let result = verify_files(&files);
        if result.is_ok() || tries == 3 {
            return result;
        }
        let now = list(active);
        if now == files {
            return result;
        }
        files = now;
        tries += 1;
    }
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {}: the last line is damaged ({reason}); verify the file and move it aside", path.display())]
    Damaged { path: PathBuf, reason: String },
}

enum Msg {
    Record(AuditRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A handle to the audit log. Cloning is cheap; the background thread ends when every handle is gone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// The background thread, woken early by [`AuditLog::flush`].
    writer: std::thread::Thread,
    /// The chain and the file, shared by the background thread and inline writers.
    state: Arc<Mutex<Writer>>,
    /// Whether the last write failed (read without the mutex by every change before it is made).
    failing: Arc<AtomicBool>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes in the file, including those still in `buf`.
    size: u64,
    max_bytes: u64,
    /// Rotated files kept (0 = all).
    keep_files: usize,
    next_seq: u64,
    /// The hash of the last line appended to `buf` (or written).
    prev: HashHex,
    /// Lines formatted but not yet written.
    buf: Vec<u8>,
    /// `(next_seq, prev, size)` as of the last successful write: where the chain resumes if a write fails.
    written: (u64, HashHex, u64),
    /// Whether the last write failed (a failure is logged once, not per line); shared with [`AuditLog`].
    failing: Arc<AtomicBool>,
    /// Lines in `buf`, lines handed to the kernel, and writes that failed (for metrics).
    buffered_lines: u64,
    lines_written: u64,
    write_errors: u64,
    time: TimeText,
}

/// The last line of a file (without the newline), if the file has any.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // Lines are short (well under 4 KiB); read the tail.
    let start = len.saturating_sub(16 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail).into_owned();
    if !text.ends_with('\n') {
        // A torn write: hand back the whole fragment so that the check fails.
        return Ok(Some(
            text.rsplit('\n').next().unwrap_or_default().to_string(),
        ));
    }
    let trimmed = &text[..text.len() - 1];
    Ok(Some(
        trimmed.rsplit('\n').next().unwrap_or_default().to_string(),
    ))
}

/// A last line without its newline (a write torn by a power failure, or by a full disk in a build that did not
/// cut it off): a whole, well-formed line gets its newline; anything else is moved to `FILE.torn-N` (N: Unix
/// seconds) and cut off, with a warning, so that the chain continues from the last whole line.
fn repair_torn_tail(path: &Path) -> std::io::Result<()> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Read back from the end until the last newline (a torn tail can be long: zero bytes a crash left).
    let mut start = len;
    let mut tail = Vec::new();
    loop {
        let from = start.saturating_sub(64 * 1024);
        let mut chunk = vec![0u8; (start - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        if tail.last() == Some(&b'\n') {
            return Ok(());
        }
        // (The last byte is not a newline: any newline is an earlier one.)
        if start == 0 || tail.contains(&b'\n') {
            break;
        }
    }
    let cut = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let fragment = &tail[cut..];
    if std::str::from_utf8(fragment).is_ok_and(|line| check_line(line).is_ok()) {
        f.seek(SeekFrom::End(0))?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        tracing::warn!(path = %path.display(), "the audit log's last line had no newline; added");
        return Ok(());
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A name no earlier repair took (two within a second would collide on the seconds alone).
    let (aside, mut out) = {
        use std::os::unix::fs::OpenOptionsExt;
        let mut n = 0u32;
        loop {
            let mut name = path.as_os_str().to_owned();
            name.push(if n == 0 {
                format!(".torn-{secs}")
            } else {
                format!(".torn-{secs}-{n}")
            });
            let name = PathBuf::from(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&name)
            {
                Ok(file) => break (name, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    };
    out.write_all(fragment)?;
    out.sync_all()?;
    f.set_len(start + cut as u64)?;
    f.sync_all()?;
    drop(out);
    tracing::warn!(
        path = %path.display(),
        moved_to = %aside.display(),
        bytes = fragment.len(),
        "the audit log ended in a torn line (a write cut short): moved aside; the chain continues from the last whole line"
    );
    Ok(())
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the audit log at `path`, continuing its chain (or that of its newest
    /// rotated file), and starts the writer thread. Every rotated file is kept.
    pub fn open(path: &Path, max_bytes: u64) -> Result<AuditLog, AuditError> {
        Self::open_keeping(path, max_bytes, 0)
    }

    /// [`AuditLog::open`], keeping at most `keep_files` rotated files (0 = all): after each rotation the
    /// oldest beyond that many are deleted.
    pub fn open_keeping(
        path: &Path,
        max_bytes: u64,
        keep_files: u32,
    ) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        repair_torn_tail(path).map_err(io)?;
        // Where the chain stands: the active file's last line, or the newest rotated file's.
        let mut last = None;
        for candidate in chain_files(path).iter().rev() {
            if let Some(line) = last_line(candidate).map_err(io)? {
                last = Some((candidate.clone(), line));
                break;
            }
        }
        let (next_seq, prev) = match last {
            None => (0, GENESIS.to_string()),
            Some((file, line)) => {
                let (seq, _, hash) = check_line(&line)
                    .map_err(|reason| AuditError::Damaged { path: file, reason })?;
                (seq + 1, hash)
            }
        };
        let mut prev_hex = [0u8; 64];
        // check_line and GENESIS guarantee 64 hex digits.
        prev_hex.copy_from_slice(prev.as_bytes());
        let file = open_append(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep_files: keep_files as usize,
            next_seq,
            prev: prev_hex,
            buf: Vec::with_capacity(64 * 1024),
            written: (next_seq, prev_hex, size),
            failing: Arc::new(AtomicBool::new(false)),
            buffered_lines: 0,
            lines_written: 0,
            write_errors: 0,
            time: TimeText::default(),
        };
        let failing = writer.failing.clone();
        let state = Arc::new(Mutex::new(writer));
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread_state = state.clone();
        let handle = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer_loop(&thread_state, rx))
            .map_err(io)?;
        Ok(AuditLog {
            tx,
            writer: handle.thread().clone(),
            state,
            failing,
            path: path.to_path_buf(),
        })
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record (never blocks on I/O); it is written within about [`LINGER`].
    pub fn record(&self, record: AuditRecord) {
        let _ = self.tx.send(Msg::Record(record));
    }

    /// Writes the record's line now, on the calling thread, and returns once it has been handed to the
    /// kernel (for mutating requests: see the module documentation). Blocks for one `write` into the page
    /// cache, and for the background thread's current chunk if it holds the chain; on the rare call that
    /// rotates the file, also for the old file's `fsync`.
    /// Returns whether the line was written.
    pub fn record_written(&self, record: AuditRecord) -> bool {
        let mut w = lock(&self.state);
        let result = w.append(&record).and_then(|()| w.write_out());
        let written = result.is_ok();
        w.report(result);
        written
    }

    /// Whether the last attempt to write the log failed (a full disk): changes are then refused before they
    /// are made, until a line can be written again.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Lines written and failed writes so far (for metrics).
    pub fn metrics(&self) -> crate::metrics::AuditMetrics {
        let w = lock(&self.state);
        crate::metrics::AuditMetrics {
            lines_written: w.lines_written,
            write_errors: w.write_errors,
        }
    }

    /// Waits until every record queued before this call is written.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            self.writer.unpark();
            let _ = rx.await;
        }
    }
}

fn lock(state: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    // Nothing done under the lock panics (strings and integers formatted into a `Vec`, file calls that return
    // errors). Should it ever, the state is used as left: at worst a buffered line the next one does not chain
    // to, which verification reports — better than an audit log that stops for good.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The background thread: take what is queued, write it in chunks, answer the flushes, linger, repeat.
fn writer_loop(state: &Mutex<Writer>, rx: mpsc::Receiver<Msg>) {
    let mut waiters = Vec::new();
    let mut pending = Vec::new();
    let mut open = true;
    while open {
        match rx.recv() {
            Ok(first) => pending.push(first),
            Err(_) => break,
        }
        loop {
            match rx.try_recv() {
                Ok(msg) => pending.push(msg),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let mut queued = pending.drain(..).peekable();
        while queued.peek().is_some() {
            let mut w = lock(state);
            for msg in queued.by_ref().take(LOCK_CHUNK) {
                match msg {
                    Msg::Record(record) => {
                        // Formatting writes nothing (unless it rotates): only its failure is news. A success
                        // here must not end a failure only a write can end.
                        if let Err(e) = w.append(&record) {
                            w.report(Err(e));
                        }
                    }
                    Msg::Flush(done) => waiters.push(done),
                }
            }
            // Only a write that happened can end a failure (an empty buffer proves nothing).
            if !w.buf.is_empty() {
                let result = w.write_out();
                w.report(result);
            }
        }
        drop(queued);
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
        if open {
            // Let records gather; `flush` unparks us early.
            std::thread::park_timeout(LINGER);
        }
    }
    let mut w = lock(state);
    if !w.buf.is_empty() {
        let result = w.write_out();
        w.report(result);
    }
    let _ = w.file.sync_all();
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

impl Writer {
    /// Logs a failed write once (not once per line while the disk stays full).
    fn report(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), "the audit log is written again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %e,
                        path = %self.path.display(),
                        "cannot write the audit log: changes are refused (503) until it can be written again"
                    );
                }
            }
        }
    }

    /// Formats the record's line into the buffer (rotating first, after writing what is buffered, if the
    /// line would not fit in the active file).
    fn append(&mut self, record: &AuditRecord) -> std::io::Result<()> {
        let start = self.buf.len();
        let prev = self.prev;
        let hash = append_line(
            &mut self.buf,
            &mut self.time,
            record,
            self.next_seq,
            hex_str(&prev),
        );
        let len = (self.buf.len() - start) as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            // The line goes to the next file: write out the ones before it, rotate, and keep it buffered.
            let line = self.buf.split_off(start);
            // On failure the line is dropped; the chain resumes after the last line written.
            self.write_out().and_then(|()| self.rotate())?;
            self.buf = line;
        }
        self.size += len;
        self.next_seq += 1;
        self.prev = hash;
        self.buffered_lines += 1;
        Ok(())
    }

    /// Hands the buffered lines to the kernel in one write. On failure they are dropped and the chain
    /// resumes after the last line written (so the file still verifies).
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf);
        self.buf.clear();
        let lines = std::mem::take(&mut self.buffered_lines);
        match result {
            Ok(()) => {
                self.written = (self.next_seq, self.prev, self.size);
                self.lines_written += lines;
                Ok(())
            }
            Err(e) => {
                (self.next_seq, self.prev, self.size) = self.written;
                self.write_errors += 1;
                // Part of the buffer may have reached the file (a disk that filled up mid-write): cut it off,
                // so that the next line follows the last whole one. Shrinking a file needs no free space.
                if let Err(cut) = self.file.set_len(self.size) {
                    tracing::error!(error = %cut, path = %self.path.display(), "cannot cut a partly written audit line off");
                }
                Err(e)
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let next = chain_files(&self.path)
            .iter()
            .filter_map(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .and_then(|e| e.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0)
            + 1;
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(format!(".{next}"));
        std::fs::rename(&self.path, PathBuf::from(rotated))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.written.2 = 0;
        if self.keep_files > 0 {
            // `chain_files` lists the rotated files oldest first, then the (new, empty) active file.
            let files = chain_files(&self.path);
            let rotated = files.len().saturating_sub(1);
            for old in files.iter().take(rotated.saturating_sub(self.keep_files)) {
                // A file that cannot be removed is retried at the next rotation; the chain is unaffected.
                if let Err(e) = std::fs::remove_file(old) {
                    tracing::warn!(file = %old.display(), error = %e, "cannot remove an old audit file");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            time_ms: 1_700_000_000_000 + i as i64,
            request_id: format!("req-{i}"),
            principal: Some("client".into()),
            operation: Some("SecretGet"),
            secret: Some(format!("s{i}")),
            version: None,
            target: None,
            outcome: Outcome::Allowed,
            status: 200,
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_000_123_456), "2026-11-18T11:08:43.456Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-62_167_219_200_000), "0000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn hand_written_lines_are_what_serde_writes() {
        let odd = [
            "plain",
            "",
            "quote\"d",
            "back\\slash",
            "tab\tnew\nline\r\u{1}\u{1f}",
            "del\u{7f} é ü 日本 🙂",
            "</script>",
        ];
        let outcomes = [
            Outcome::Unauthenticated,
            Outcome::Rejected,
            Outcome::Denied,
            Outcome::Throttled,
            Outcome::Allowed,
        ];
        let mut time = TimeText::default();
        for (i, text) in odd.iter().enumerate() {
            for (j, outcome) in outcomes.iter().enumerate() {
                let some = |k: usize| (!(i + j + k).is_multiple_of(3)).then(|| text.to_string());
                let record = AuditRecord {
                    time_ms: 1_795_000_123_456 + (i * 7 + j) as i64,
                    request_id: text.to_string(),
                    principal: some(1).map(Into::into),
                    operation: ((i + j) % 2 == 0).then_some("SecretGet"),
                    secret: some(2),
                    version: some(3),
                    target: some(4),
                    outcome: *outcome,
                    status: [0, 200, 401, 65535][(i + j) % 4],
                };
                let seq = [0, 1, u64::MAX][(i + j) % 3];
                let mut buf = Vec::new();
                let hash = append_line(&mut buf, &mut time, &record, seq, text);
                let line = String::from_utf8(buf).unwrap();
                let time_text = rfc3339_ms(record.time_ms);
                let reference = serde_json::to_string(&Body {
                    seq,
                    time: &time_text,
                    request_id: &record.request_id,
                    principal: record.principal.as_deref(),
                    operation: record.operation,
                    secret: record.secret.as_deref(),
                    version: record.version.as_deref(),
                    target: record.target.as_deref(),
                    outcome: record.outcome,
                    status: record.status,
                    prev: text,
                })
                .unwrap();
                assert_eq!(hex_str(&hash), hex_str(&sha256_hex(reference.as_bytes())));
                let with_hash = format!(
                    "{},\"hash\":\"{}\"}}\n",
                    &reference[..reference.len() - 1],
                    hex_str(&hash)
                );
                assert_eq!(line, with_hash);
                assert!(check_line(line.trim_end()).is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn time_text_formats_each_new_millisecond() {
        let mut t = TimeText::default();
        for ms in [
            0,
            0,
            1_795_000_123_456,
            1_795_000_123_456,
            1_795_000_123_457,
            -1,
            0,
        ] {
            assert_eq!(t.at(ms), rfc3339_ms(ms));
        }
    }

    #[test]
    fn lines_hash_and_chain() {
        let (a, ha) = make_line(&record(0), 0, GENESIS);
        let (b, hb) = make_line(&record(1), 1, &ha);
        assert_eq!(
            check_line(&a).unwrap(),
            (0, GENESIS.to_string(), ha.clone())
        );
        assert_eq!(check_line(&b).unwrap(), (1, ha.clone(), hb));
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["requestId"], "req-0");
        assert_eq!(v["outcome"], "allowed");
        assert_eq!(v["version"], serde_json::Value::Null);
        let edited = a.replace("\"status\":200", "\"status\":201");
        assert!(check_line(&edited).unwrap_err().contains("edited"));
    }

    #[tokio::test]
    async fn record_written_returns_once_the_line_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1 << 20).unwrap();
        log.record_written(record(5));
        // No flush: the line is in the file when the call returns.
        let r = verify_file(&path).unwrap();
        assert_eq!((r.lines, r.last_seq), (1, Some(0)));
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("\"requestId\":\"req-5\"")
        );
        // Lines queued with `record` go out within about LINGER without anyone waiting.
        log.record(record(6));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while verify_file(&path).unwrap().lines < 2 {
            assert!(std::time::Instant::now() < deadline, "the line never came");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Inline writers on several threads and queued lines interleave into one unbroken chain: every line
    /// once, `seq` without gaps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inline_and_queued_lines_share_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Small files: some inline writes rotate.
        let log = AuditLog::open(&path, 16 * 1024).unwrap();
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let n = t * 1000 + i;
                        if i % 2 == 0 {
                            log.record_written(record(n));
                        } else {
                            log.record(record(n));
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        log.flush().await;
        let files = chain_files(&path);
        assert!(files.len() > 2, "{files:?}");
        let r = verify_chain(&path).unwrap();
        assert_eq!((r.lines, r.last_seq), (800, Some(799)));
        let mut ids: Vec<String> = files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v["requestId"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 800);
    }

    #[tokio::test]
    async fn rotation_keeps_only_the_newest_files_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open_keeping(&path, 4096, 2).unwrap();
        for i in 0..200 {
            log.record(record(i));
        }
        log.flush().await;
        // Every line is ~300 bytes: 200 lines rotate far more than twice.
        let files = chain_files(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        let numbers: Vec<u64> = files[..2]
            .iter()
            .map(|f| f.extension().unwrap().to_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            numbers[0] > 1 && numbers[1] == numbers[0] + 1,
            "{numbers:?}"
        );
        // What is left verifies, up to the last line, but no longer from the genesis.
        let r = verify_chain(&path).unwrap();
        assert_eq!(r.last_seq, Some(199));
        assert!(!r.complete);
        assert!(r.first_seq.unwrap() > 0);
        assert_eq!(r.lines, 200 - r.first_seq.unwrap());
    }

    /// While writes fail, nothing but a write that succeeds ends the failure: not a queued read's line being
    /// formatted, not a flush with nothing to write (either made changes pass unaudited in a full-disk race).
    #[tokio::test]
    async fn only_a_successful_write_ends_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1 << 20).unwrap();
        assert!(log.record_written(record(0)));
        // Writes fail from now on: the file handle is read-only.
        lock(&log.state).file = File::open(&path).unwrap();
        assert!(!log.record_written(record(1)));
        assert!(log.is_failing());
        log.flush().await;
        assert!(
            log.is_failing(),
            "a flush with nothing to write ended the failure"
        );
        for i in 2..10 {
            log.record(record(i));
        }
        log.flush().await;
        assert!(log.is_failing());
        // Writable again: the next line written ends it, and the file verifies.
        lock(&log.state).file = open_append(&path).unwrap();
        assert!(log.record_written(record(10)));
        assert!(!log.is_failing());
        let r = verify_file(&path).unwrap();
        assert_eq!(r.lines, 2);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_moved_aside_and_a_whole_one_gets_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1 << 20).unwrap();
        for i in 0..3 {
            log.record(record(i));
        }
        log.flush().await;
        drop(log);
        let whole = std::fs::read(&path).unwrap();
        // A write cut short: the start of a line.
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":3,\"time\":\"2026-");
        std::fs::write(&path, &torn).unwrap();
        assert!(verify_file(&path).is_err());
        let log = AuditLog::open(&path, 1 << 20).unwrap();
        log.record(record(3));
        log.flush().await;
        drop(log);
        let r = verify_file(&path).unwrap();
        assert_eq!((r.lines, r.last_seq), (4, Some(3)));
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("audit.log.torn-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read(dir.path().join(&aside[0])).unwrap(),
            b"{\"seq\":3,\"time\":\"2026-"
        );
        // A long torn tail (zero bytes a crash left, beyond any one read), repaired within the same second as
        // the first: moved aside whole, under a name of its own.
        let mut zeros = std::fs::read(&path).unwrap();
        zeros.extend(std::iter::repeat_n(0u8, 100 * 1024));
        std::fs::write(&path, &zeros).unwrap();
        drop(AuditLog::open(&path, 1 << 20).unwrap());
        assert_eq!(verify_file(&path).unwrap().lines, 4);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("audit.log.torn-"))
            .collect();
        assert_eq!(aside.len(), 2, "{aside:?}");
        assert!(
            aside
                .iter()
                .any(|p| std::fs::metadata(p).unwrap().len() == 100 * 1024)
        );
        // A whole last line without its newline keeps its place in the chain.
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 1]).unwrap();
        let log = AuditLog::open(&path, 1 << 20).unwrap();
        log.record(record(4));
        log.flush().await;
        drop(log);
        let r = verify_file(&path).unwrap();
        assert_eq!((r.lines, r.last_seq), (5, Some(4)));
        // A complete last line that does not verify (edited) still stops the start.
        let text = std::fs::read_to_string(&path).unwrap();
        let (before, last) = text.trim_end().rsplit_once('\n').unwrap();
        let edited = last.replacen("\"status\":", "\"status\":1", 1);
        assert_ne!(edited, last);
        std::fs::write(&path, format!("{before}\n{edited}\n")).unwrap();
        assert!(matches!(
            AuditLog::open(&path, 1 << 20),
            Err(AuditError::Damaged { .. })
        ));
    }

    #[tokio::test]
    async fn writes_reopens_and_rotates_keeping_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 4096).unwrap();
        for i in 0..10 {
            log.record(record(i));
        }
        log.flush().await;
        drop(log);
        let r = verify_chain(&path).unwrap();
        assert_eq!((r.files, r.lines, r.last_seq), (1, 10, Some(9)));
        // Reopen: the chain continues; small files force rotations.
        let log = AuditLog::open(&path, 4096).unwrap();
        for i in 10..100 {
            log.record(record(i));
        }
        log.flush().await;
        let files = chain_files(&path);
        assert!(files.len() > 2, "{files:?}");
        let r = verify_chain(&path).unwrap();
        assert_eq!(r.lines, 100);
        assert_eq!(r.first_prev.as_deref(), Some(GENESIS));
        // A rotated file alone verifies, starting mid-chain; out of order, the files do not.
        let second = verify_file(&files[1]).unwrap();
        assert!(second.first_seq.unwrap() > 0);
        let mut swapped = files.clone();
        swapped.swap(0, 1);
        assert!(verify_files(&swapped).is_err());
        // Dropping the oldest file leaves a chain that verifies but does not start at the genesis.
        let r = verify_files(&files[1..]).unwrap();
        assert_ne!(r.first_prev.as_deref(), Some(GENESIS));

        // A listing made before a rotation misses the file it made: the chain seems to skip lines. Verified
        // again on a fresh listing, it is intact; a listing that stays the same keeps the failure.
        let stale: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != files.len() - 2)
            .map(|(_, f)| f.clone())
            .collect();
        assert!(verify_files(&stale).is_err());
        let mut calls = 0;
        let r = verify_listed(&path, |p| {
            calls += 1;
            if calls == 1 {
                stale.clone()
            } else {
                chain_files(p)
            }
        })
        .unwrap();
        assert_eq!((r.lines, calls), (100, 2));
        assert!(verify_listed(&path, |_| stale.clone()).is_err());
    }
}
