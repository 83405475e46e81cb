//! The audit log: one JSON line per request decision, hash-chained, rotated by size.
//!
//! A line is `{"seq":N,"time":"…","requestId":"…",["clientRequestId":"…",]"principal":"…"|null,"operation":"SecretGet"|null,
//! "secret":"…"|null,"version":"…"|null,["target":"…",]"outcome":"allowed"|"denied"|"unauthenticated"|"rejected"|"throttled",
//! "status":200,"prev":"<hex>","hash":"<hex>"}`: `hash` is the SHA-256 of the line as written without its
//! `hash` member (that is, the text up to `"prev":"<hex>"` and a closing `}`), and `prev` is the `hash` of
//! the line before (64 zeros for the very first line). `seq` counts from 0 across rotations. Editing,
//! removing, inserting or reordering a line breaks the chain at that line; [`verify_files`] says where.
//! Never a secret value or a token.
//!
//! The hash alone is keyed by nothing: whoever can write the file can edit a line and compute every later
//! hash again. So a line written by a server also carries `"mac":"<hex>"` after its `hash`: HMAC-SHA256, under
//! a key derived from the key-encryption key for this purpose only ([`crate::crypto::audit_mac_key`]), over
//! the 32 bytes of the line's hash (hex-decoded), which cover the whole line and its `prev`. A writer without
//! the KEK cannot make a line whose MAC verifies. The line names no key: a verifier given keys
//! ([`AuditKeys`]: the current KEK's, then the previous KEKs') tries each, so lines written before a KEK
//! rotation verify while the old key is configured as a previous one ([`verify_chain_keyed`]). Lines without
//! a MAC (written by a build before MACs) are accepted only before the first line that has one: once a MAC
//! has been seen, a line without one is a stripped MAC. What no MAC can show is lines removed from the end
//! (or every file removed): the server logs the chain's head (file, `seq`, `hash`) to its own log, a sink
//! apart from this file, when it opens the log, at every rotation and at a clean shutdown, to compare against.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"` (before the line's closing `}`, or its `mac` member).
const HASH_MEMBER_LEN: usize = 9 + 64 + 1;
/// `,"mac":"` + 64 hex + `"`.
const MAC_MEMBER_LEN: usize = 8 + 64 + 1;

/// How long the background thread waits for more queued lines after a write, so that lines under load go out in
/// batches. [`AuditLog::flush`] cuts the wait short.
pub const LINGER: Duration = Duration::from_millis(2);

/// Queued lines the background thread formats and writes per hold of the chain's mutex.
const LOCK_CHUNK: usize = 32;

/// Records queued for the background thread at most (a few hundred bytes each): past it,
/// [`AuditLog::record_queued`] waits for room. Reached only when the thread cannot write (a disk that hangs):
/// reads then slow down to what the log can take, rather than the queue growing with every read for as long
/// as the stall lasts (half a second of reads at 60k/s in normal running is far below it).
pub const QUEUE_CAP: usize = 32_768;

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
    /// The client's own id for the request (`x-ms-client-request-id`, which the SDKs send and log), so that a
    /// request a user knows by it can be found; absent from lines without one.
    pub client_request_id: Option<String>,
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
            client_request_id: None,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_request_id: Option<&'a str>,
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

/// A line's hash (or MAC) as lowercase hex.
type HashHex = [u8; 64];

fn to_hex(bytes: &[u8]) -> HashHex {
    let mut out = [0u8; 64];
    // Cannot fail: 32 bytes make exactly 64 hex digits.
    let _ = hex::encode_to_slice(bytes, &mut out);
    out
}

fn sha256_hex(data: &[u8]) -> HashHex {
    to_hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// 64 lowercase hex digits as their 32 bytes (`None` for anything else).
fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let lower = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (lower && hex::decode_to_slice(text, &mut out).is_ok()).then_some(out)
}

/// The keys that sign and check the MACs of audit lines: HMAC-SHA256 keys derived from the current
/// key-encryption key (which signs new lines) and the previous ones (which only check). `Debug` shows how
/// many, never a key.
#[derive(Clone)]
pub struct AuditKeys {
    /// The current KEK's first; never empty.
    keys: Vec<ring::hmac::Key>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl AuditKeys {
    /// The keys of a provider's current key-encryption key, then of its previous ones.
    pub fn from_provider(
        provider: &dyn crate::crypto::KeyProvider,
    ) -> Result<AuditKeys, crate::crypto::CryptoError> {
        let mut keys = vec![crate::crypto::audit_mac_key(provider.current().1)?];
        for id in provider.previous_ids() {
            if let Some(kek) = provider.get(id) {
                keys.push(crate::crypto::audit_mac_key(kek)?);
            }
        }
        Ok(AuditKeys { keys })
    }

    /// How many keys (1 + the previous keys).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never: there is always the current key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The MAC of a line whose hash is `hash` (its 32 bytes), under the current key, as hex.
    fn sign(key: &ring::hmac::Key, hash: &[u8]) -> HashHex {
        to_hex(ring::hmac::sign(key, hash).as_ref())
    }

    /// Which key (0 = the current one) `mac` (hex) verifies under for the line hash `hash` (hex), if any.
    fn check(&self, hash: &str, mac: &str) -> Option<usize> {
        let (hash, mac) = (from_hex(hash)?, from_hex(mac)?);
        self.keys
            .iter()
            .position(|k| ring::hmac::verify(k, &hash, &mac).is_ok())
    }
}

fn hex_str(h: &HashHex) -> &str {
    // Hex digits are ASCII.
    std::str::from_utf8(h).unwrap_or_default()
}

/// The line for `record` at position `seq` after `prev`, without the trailing newline; and its hash.
#[cfg(test)]
fn make_line(record: &AuditRecord, seq: u64, prev: &str) -> (String, String) {
    make_line_signed(record, seq, prev, None)
}

/// [`make_line`], with a MAC under `key` if there is one.
#[cfg(test)]
fn make_line_signed(
    record: &AuditRecord,
    seq: u64,
    prev: &str,
    key: Option<&ring::hmac::Key>,
) -> (String, String) {
    let mut buf = Vec::new();
    let hash = append_line(&mut buf, &mut TimeText::default(), record, seq, prev, key);
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
/// hash. With a key, the line's `mac` member follows its `hash`. Formats straight into `buf`: no allocation
/// once `buf` has grown.
fn append_line(
    buf: &mut Vec<u8>,
    time: &mut TimeText,
    record: &AuditRecord,
    seq: u64,
    prev: &str,
    mac_key: Option<&ring::hmac::Key>,
) -> HashHex {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    crate::json::push_int(buf, seq);
    buf.extend_from_slice(b",\"time\":");
    crate::json::push_str(buf, time.at(record.time_ms));
    buf.extend_from_slice(b",\"requestId\":");
    crate::json::push_str(buf, &record.request_id);
    if let Some(id) = record.client_request_id.as_deref() {
        buf.extend_from_slice(b",\"clientRequestId\":");
        crate::json::push_str(buf, id);
    }
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
    let digest = ring::digest::digest(&ring::digest::SHA256, &buf[start..]);
    let hash = to_hex(digest.as_ref());
    buf.pop(); // the closing brace
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(&hash);
    if let Some(key) = mac_key {
        buf.extend_from_slice(b"\",\"mac\":\"");
        buf.extend_from_slice(&AuditKeys::sign(key, digest.as_ref()));
    }
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// The member `,"NAME":"<64 hex>"` at the end of `text`: (what comes before it, the hex).
fn split_member<'a>(text: &'a str, name: &str, len: usize) -> Option<(&'a str, &'a str)> {
    // `len` counts ASCII bytes only: a char boundary if the text is long enough and ends in ASCII.
    if text.len() < len + 1 || !text.is_char_boundary(text.len() - len) {
        return None;
    }
    let (head, member) = text.split_at(text.len() - len);
    let value = member
        .strip_prefix(',')?
        .strip_prefix('"')?
        .strip_prefix(name)?
        .strip_prefix("\":\"")?
        .strip_suffix('"')
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some((head, value))
}

/// A line checked on its own (see [`check_line`]).
#[derive(Debug, PartialEq, Eq)]
struct CheckedLine {
    seq: u64,
    prev: String,
    hash: String,
    /// The `mac` member's hex, if the line has one (checked only against keys: [`AuditKeys::check`]).
    mac: Option<String>,
}

/// Checks one line on its own: its `hash` matches its content (its MAC, if any, is left to the caller).
fn check_line(line: &str) -> Result<CheckedLine, String> {
    let bad_shape = || "not an audit line (no trailing hash member)".to_string();
    let inner = line.strip_suffix('}').ok_or_else(bad_shape)?;
    let (inner, mac) = match split_member(inner, "mac", MAC_MEMBER_LEN) {
        Some((head, mac)) => (head, Some(mac)),
        None => (inner, None),
    };
    let (head, hash) = split_member(inner, "hash", HASH_MEMBER_LEN).ok_or_else(bad_shape)?;
    if head.len() < 2 {
        return Err(bad_shape());
    }
    let mut body = String::with_capacity(head.len() + 1);
    body.push_str(head);
    body.push('}');
    if hex_str(&sha256_hex(body.as_bytes())) != hash {
        return Err("the line's content does not match its hash (edited)".to_string());
    }
    let fields: ChainFields =
        serde_json::from_str(&body).map_err(|_| "the line is not valid audit JSON".to_string())?;
    Ok(CheckedLine {
        seq: fields.seq,
        prev: fields.prev,
        hash: hash.to_string(),
        mac: mac.map(str::to_string),
    })
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
    /// Whether the lines' MACs were checked (keys were given: [`verify_chain_keyed`]).
    pub macs_checked: bool,
    /// Lines that carry a MAC (each verified under one of the keys, when [`VerifyReport::macs_checked`]).
    pub mac_lines: u64,
    /// Of those, lines whose MAC verified under a previous key (not the first one given).
    pub previous_key_lines: u64,
    /// Lines before the first line with a MAC (written by a build before MACs): not authenticated by any key.
    pub lines_before_macs: u64,
    /// Lines under a previous key that come after a line under the current one, and the first of them (file,
    /// line number): written before the key was rolled back (a previous key made current again), or written —
    /// or rewritten — by someone holding a retired key. Not an error (a rollback is legitimate), but worth a
    /// look: whoever holds a previous key can forge lines after the rotation while it is configured.
    pub previous_key_after_current: u64,
    pub first_previous_key_after_current: Option<(PathBuf, u64)>,
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
/// Checks no MAC: [`verify_file_keyed`] does.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_files(&[path.to_path_buf()])
}

/// [`verify_file`], also checking every line's MAC under `keys`.
pub fn verify_file_keyed(path: &Path, keys: &AuditKeys) -> Result<VerifyReport, VerifyError> {
    verify_files_keyed(&[path.to_path_buf()], keys)
}

/// Verifies files that form one chain, oldest first: every line's hash, `seq` + 1 and `prev` = the hash of
/// the line before, across files. The first line may start mid-chain unless its `seq` is 0, in which case
/// its `prev` must be [`GENESIS`]. Without keys, no MAC is checked (anyone can compute the hashes again:
/// see the module documentation); a line without a MAC after one with a MAC still fails (a stripped MAC).
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    verify_files_with(paths, None)
}

/// [`verify_files`], also checking the MAC of every line that has one under `keys` (any of them): a MAC that
/// verifies under none fails at that line.
pub fn verify_files_keyed(
    paths: &[PathBuf],
    keys: &AuditKeys,
) -> Result<VerifyReport, VerifyError> {
    verify_files_with(paths, Some(keys))
}

fn verify_files_with(
    paths: &[PathBuf],
    keys: Option<&AuditKeys>,
) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        files: 0,
        lines: 0,
        first_seq: None,
        last_seq: None,
        first_prev: None,
        last_hash: None,
        complete: false,
        macs_checked: keys.is_some(),
        mac_lines: 0,
        previous_key_lines: 0,
        lines_before_macs: 0,
        previous_key_after_current: 0,
        first_previous_key_after_current: None,
    };
    // Once a line is under the current key, a line under a previous one after it was written before a rollback
    // of the key, or (re)written by someone holding a retired key: counted and reported.
    let mut current_key_seen = false;
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
            let CheckedLine {
                seq,
                prev,
                hash,
                mac,
            } = check_line(line).map_err(|r| err(n, r))?;
            match (&mac, keys) {
                (Some(mac), Some(keys)) => match keys.check(&hash, mac) {
                    Some(0) => current_key_seen = true,
                    Some(_) => {
                        report.previous_key_lines += 1;
                        if current_key_seen {
                            report.previous_key_after_current += 1;
                            report
                                .first_previous_key_after_current
                                .get_or_insert_with(|| (path.clone(), n));
                        }
                    }
                    None => {
                        return Err(err(
                            n,
                            "the line's MAC does not verify under any of the keys given (the line was written \
                             or rewritten without the key-encryption key, or under a key that was not given)"
                                .into(),
                        ));
                    }
                },
                (Some(_), None) => {}
                (None, _) if report.mac_lines > 0 => {
                    return Err(err(
                        n,
                        "the line has no MAC, but a line before it has one (a MAC was removed)"
                            .into(),
                    ));
                }
                (None, _) => report.lines_before_macs += 1,
            }
            if mac.is_some() {
                report.mac_lines += 1;
            }
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
/// Checks no MAC: [`verify_chain_keyed`] does.
pub fn verify_chain(active: &Path) -> Result<VerifyReport, VerifyError> {
    verify_listed(active, chain_files, None)
}

/// [`verify_chain`], also checking every line's MAC under `keys` ([`verify_files_keyed`]).
pub fn verify_chain_keyed(active: &Path, keys: &AuditKeys) -> Result<VerifyReport, VerifyError> {
    verify_listed(active, chain_files, Some(keys))
}

fn verify_listed(
    active: &Path,
    mut list: impl FnMut(&Path) -> Vec<PathBuf>,
    keys: Option<&AuditKeys>,
) -> Result<VerifyReport, VerifyError> {
    let mut files = list(active);
    let mut tries = 1;
    loop {
        let result = verify_files_with(&files, keys);
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
    /// The last line's MAC verifies under none of the server's keys, or was removed.
    #[error(
        "audit log {}: {reason}: the log was rewritten by someone without the key-encryption key, or written \
         under a key that is no longer configured (list it in previous_kek_files or KEYVAULT_PREVIOUS_KEKS); \
         check it with `keyvault audit verify --chain --config …` and move the files aside", path.display()
    )]
    Unauthenticated { path: PathBuf, reason: String },
}

enum Msg {
    Record(AuditRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Makes the background thread panic, as a bug in it would (tests of what follows).
    #[cfg(test)]
    Panic,
}

/// A handle to the audit log. Cloning is cheap; the background thread ends when every handle is gone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// Records sent to the background thread that it has not written yet (see [`QUEUE_CAP`]).
    queued: Arc<AtomicUsize>,
    /// Signalled by the background thread for each record it takes while the queue was full.
    room: Arc<tokio::sync::Notify>,
    /// Set if the background thread has stopped on a panic: records are then written by their requests.
    stopped: Arc<AtomicBool>,
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
    /// Signs every line (the current key-encryption key's [`AuditKeys`] key); none: lines without a MAC.
    mac_key: Option<ring::hmac::Key>,
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

/// Whether any line of the file ends in a `mac` member.
fn has_mac_line(path: &Path) -> std::io::Result<bool> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(false);
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let Some(inner) = line.strip_suffix(b"}") else {
            continue;
        };
        let tail = &inner[inner.len().saturating_sub(MAC_MEMBER_LEN + 1)..];
        if std::str::from_utf8(tail).is_ok_and(|t| split_member(t, "mac", MAC_MEMBER_LEN).is_some())
        {
            return Ok(true);
        }
    }
}

/// Whether a line of `active`'s chain (its rotated files too) has a MAC that verifies under `keys`' key
/// `index` (0: the current one).
fn any_line_under(active: &Path, keys: &AuditKeys, index: usize) -> std::io::Result<bool> {
    for path in chain_files(active) {
        let mut reader = BufReader::new(File::open(&path)?);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let Some(checked) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| check_line(l).ok())
            else {
                continue;
            };
            if checked
                .mac
                .is_some_and(|mac| keys.check(&checked.hash, &mac) == Some(index))
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether the file before `file` in `active`'s chain ends with a line that carries a MAC.
fn previous_file_signed(active: &Path, file: &Path) -> std::io::Result<bool> {
    let files = chain_files(active);
    let Some(at) = files.iter().position(|f| f == file) else {
        return Ok(false);
    };
    let Some(previous) = at.checked_sub(1).map(|i| &files[i]) else {
        return Ok(false);
    };
    Ok(last_line(previous)?
        .and_then(|line| check_line(&line).ok())
        .is_some_and(|checked| checked.mac.is_some()))
}

/// The operation of the line a server writes at start when the log's last line is signed under a previous
/// key-encryption key: it carries the chain over to the current key (no principal, no request id).
pub const KEY_CHANGE_OPERATION: &str = "AuditKeyChange";

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
    /// oldest beyond that many are deleted. Its lines carry no MAC (the server opens its log with
    /// [`AuditLog::open_signed`]).
    pub fn open_keeping(
        path: &Path,
        max_bytes: u64,
        keep_files: u32,
    ) -> Result<AuditLog, AuditError> {
        Self::open_with(path, max_bytes, keep_files, None)
    }

    /// [`AuditLog::open_keeping`], every line signed with the first of `keys` (see the module documentation).
    /// The last line of the log, if it has a MAC, must verify under one of `keys`
    /// ([`AuditError::Unauthenticated`]); one without (written before MACs) is continued, with a warning.
    pub fn open_signed(
        path: &Path,
        max_bytes: u64,
        keep_files: u32,
        keys: &AuditKeys,
    ) -> Result<AuditLog, AuditError> {
        Self::open_with(path, max_bytes, keep_files, Some(keys))
    }

    fn open_with(
        path: &Path,
        max_bytes: u64,
        keep_files: u32,
        keys: Option<&AuditKeys>,
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
        let mut under_previous_key = false;
        let (next_seq, prev) = match last {
            None => {
                tracing::info!(file = %path.display(), "the audit log starts a new chain (no earlier line)");
                (0, GENESIS.to_string())
            }
            Some((file, line)) => {
                let checked = check_line(&line).map_err(|reason| AuditError::Damaged {
                    path: file.clone(),
                    reason,
                })?;
                match (&checked.mac, keys) {
                    (Some(mac), Some(keys)) => match keys.check(&checked.hash, mac) {
                        Some(0) => {}
                        // Under a previous key: a line under the current one is written at once (below), so
                        // that the previous key can go without the next start finding a last line it cannot
                        // verify. If the chain has lines under the current key before it, the key was rolled
                        // back — or the lines after them were written with a retired key: said.
                        Some(_) => {
                            under_previous_key = true;
                            if any_line_under(path, keys, 0).map_err(io)? {
                                tracing::warn!(
                                    file = %file.display(),
                                    "the audit log's last line is under a previous key, after lines under the \
                                     current key: the key was rolled back, or lines were written with a retired \
                                     key; `keyvault audit verify` says where"
                                );
                            }
                        }
                        None => {
                            return Err(AuditError::Unauthenticated {
                                path: file,
                                reason: "the last line's MAC does not verify under this server's keys (current \
                                         or previous)"
                                    .into(),
                            });
                        }
                    },
                    // Read through only here: at the first start after an upgrade, or after tampering. The file
                    // before this one in the chain counts too (its last line): every MAC of the newest file
                    // removed is as much a removal as one.
                    (None, Some(_))
                        if has_mac_line(&file).map_err(io)?
                            || previous_file_signed(path, &file).map_err(io)? =>
                    {
                        return Err(AuditError::Unauthenticated {
                            path: file,
                            reason: "the last line has no MAC, but a line before it has one (a MAC was removed)"
                                .into(),
                        });
                    }
                    (None, Some(_)) => tracing::warn!(
                        file = %file.display(),
                        seq = checked.seq,
                        "the audit log's last line has no MAC (written by a build before audit MACs, or its MAC \
                         was removed): the chain continues, with a MAC on every line from here on; `keyvault \
                         audit verify` given the keys reports the lines before as not authenticated"
                    ),
                    (_, None) => {}
                }
                tracing::info!(
                    file = %file.display(),
                    seq = checked.seq,
                    hash = %checked.hash,
                    "the audit log continues its chain after this head"
                );
                (checked.seq + 1, checked.hash)
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
            mac_key: keys.map(|k| k.keys[0].clone()),
        };
        let failing = writer.failing.clone();
        let state = Arc::new(Mutex::new(writer));
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread_state = state.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let (thread_queued, thread_room) = (queued.clone(), room.clone());
        let watch = PanicWatch {
            stopped: stopped.clone(),
            room: room.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let _watch = watch;
                writer_loop(&thread_state, rx, &thread_queued, &thread_room)
            })
            .map_err(io)?;
        let log = AuditLog {
            tx,
            queued,
            room,
            stopped,
            writer: handle.thread().clone(),
            state,
            failing,
            path: path.to_path_buf(),
        };
        if under_previous_key {
            let mut line = AuditRecord::new(String::new());
            line.operation = Some(KEY_CHANGE_OPERATION);
            line.outcome = Outcome::Allowed;
            line.status = 200;
            line.target = Some("the chain continues under the current key-encryption key".into());
            if log.record_written(line) {
                tracing::info!(
                    file = %path.display(),
                    "the audit log's last line was signed under a previous key-encryption key: a line under \
                     the current key follows it (AuditKeyChange), so the previous key may now go"
                );
            } else {
                tracing::warn!(
                    file = %path.display(),
                    "the audit log's last line is signed under a previous key-encryption key and a line under \
                     the current one could not be written: keep the previous key configured until one is (a \
                     start without it is refused)"
                );
            }
        }
        Ok(log)
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record (never blocks on I/O); it is written within about [`LINGER`]. Requests use
    /// [`AuditLog::record_queued`], which bounds the queue.
    pub fn record(&self, record: AuditRecord) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(msg)) = self.tx.send(Msg::Record(record)) {
            // The background thread has stopped (only a panic ends it while a handle exists): the line is
            // written here instead of being lost.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            if let Msg::Record(record) = msg {
                self.record_written(record);
            }
        }
    }

    /// [`AuditLog::record`], once fewer than [`QUEUE_CAP`] records wait for the background thread: while it
    /// cannot write, the caller waits (woken as the thread takes records) instead of the queue growing.
    pub async fn record_queued(&self, record: AuditRecord) {
        self.room().await;
        self.record(record);
    }

    /// Returns once fewer than [`QUEUE_CAP`] records wait for the background thread (at once, nearly always).
    pub async fn room(&self) {
        if self.queued.load(Ordering::Relaxed) >= QUEUE_CAP {
            // Boxed: the future of every read holds no timer for what only a stall needs.
            Box::pin(self.wait_for_room()).await;
        }
    }

    #[cold]
    async fn wait_for_room(&self) {
        loop {
            // Registered before the count is read: a record taken in between wakes it.
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Records the stopped thread held are never counted out: without it, nothing makes room.
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            if self.queued.load(Ordering::Relaxed) < QUEUE_CAP {
                // The wake-up goes on to the next waiter: the background thread wakes them only for the
                // records it takes while the queue is full, and after a stall it drains the backlog in
                // chunks of which only the first starts full (a65-1).
                self.room.notify_one();
                return;
            }
            notified.await;
        }
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

    /// The chain's head: the last line written (`seq`, `hash`) and the file it is in; `None` before any line.
    pub fn head(&self) -> Option<(PathBuf, u64, String)> {
        let w = lock(&self.state);
        let (next_seq, prev, size) = w.written;
        let seq = next_seq.checked_sub(1)?;
        // Just rotated, nothing written since: the last line is in the newest rotated file.
        let file = if size > 0 {
            w.path.clone()
        } else {
            let files = chain_files(&w.path);
            match files.len() {
                n if n >= 2 && files[n - 1] == w.path => files[n - 2].clone(),
                _ => files.last().cloned().unwrap_or_else(|| w.path.clone()),
            }
        };
        Some((file, seq, hex_str(&prev).to_string()))
    }

    /// Writes what is queued, then logs the chain's head (to the server's own log, not the audit file): an
    /// anchor outside the file, for a clean shutdown.
    pub async fn close(&self) {
        self.flush().await;
        match self.head() {
            Some((file, seq, hash)) => tracing::info!(
                file = %file.display(),
                seq,
                hash = %hash,
                "the audit log's chain head at shutdown (keep it to detect lines removed from the end)"
            ),
            None => {
                tracing::info!(file = %self.path.display(), "the audit log has no line at shutdown")
            }
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

/// Dropped when the background thread ends: on a panic, records are from then on written by the requests
/// that make them ([`AuditLog::record`]), and reads waiting for room in the queue go on.
struct PanicWatch {
    stopped: Arc<AtomicBool>,
    room: Arc<tokio::sync::Notify>,
}

impl Drop for PanicWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the audit log's background thread stopped on a panic: lines are written by each request from \
                 now on; the lines of reads it held unwritten (at most one queue's worth) are lost"
            );
            self.stopped.store(true, Ordering::SeqCst);
            self.room.notify_waiters();
        }
    }
}

/// The background thread: take what is queued, write it in chunks, answer the flushes, linger, repeat.
fn writer_loop(
    state: &Mutex<Writer>,
    rx: mpsc::Receiver<Msg>,
    queued: &AtomicUsize,
    room: &tokio::sync::Notify,
) {
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
        let mut taken = pending.drain(..).peekable();
        while taken.peek().is_some() {
            let mut w = lock(state);
            let mut records = 0;
            for msg in taken.by_ref().take(LOCK_CHUNK) {
                match msg {
                    Msg::Record(record) => {
                        records += 1;
                        // Formatting writes nothing (unless it rotates): only its failure is news. A success
                        // here must not end a failure only a write can end.
                        if let Err(e) = w.append(&record) {
                            w.report(Err(e));
                        }
                    }
                    Msg::Flush(done) => waiters.push(done),
                    #[cfg(test)]
                    Msg::Panic => {
                        panic!("the audit log's background thread, made to panic by a test")
                    }
                }
            }
            // Only a write that happened can end a failure (an empty buffer proves nothing).
            if !w.buf.is_empty() {
                let result = w.write_out();
                w.report(result);
            }
            drop(w);
            // Counted out once written (or failed): the bound covers what this thread holds as well. Each
            // record taken while the queue was full wakes one read waiting for room.
            if queued.fetch_sub(records, Ordering::Relaxed) >= QUEUE_CAP {
                for _ in 0..records {
                    room.notify_one();
                }
            }
        }
        drop(taken);
        // A backlog after a stall is not kept as capacity for the rest of the process's life.
        pending.shrink_to(4 * LOCK_CHUNK);
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
            self.mac_key.as_ref(),
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
        let rotated = PathBuf::from(rotated);
        std::fs::rename(&self.path, &rotated)?;
        // What the rotated file ends with (everything buffered was written before rotating): an anchor in
        // the server's own log.
        if let Some(seq) = self.next_seq.checked_sub(1) {
            tracing::info!(
                file = %rotated.display(),
                seq,
                hash = %hex_str(&self.prev),
                "the audit log was rotated: the chain's head"
            );
        }
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
            client_request_id: None,
            principal: Some("client".into()),
            operation: Some("SecretGet"),
            secret: Some(format!("s{i}")),
            version: None,
            target: None,
            outcome: Outcome::Allowed,
            status: 200,
        }
    }

    fn keys_of(current: u8, previous: &[u8]) -> AuditKeys {
        use crate::crypto::{Kek, KeyRing};
        let ring = KeyRing::new(
            Kek::from_bytes([current; 32]),
            previous.iter().map(|b| Kek::from_bytes([*b; 32])),
        );
        AuditKeys::from_provider(&ring).unwrap()
    }

    /// `n` lines written through a log opened with `keys` (none: lines without MACs).
    async fn write_lines(path: &Path, keys: Option<&AuditKeys>, from: u64, n: u64) {
        let log = match keys {
            Some(k) => AuditLog::open_signed(path, 1 << 20, 0, k).unwrap(),
            None => AuditLog::open(path, 1 << 20).unwrap(),
        };
        for i in from..from + n {
            if i % 2 == 0 {
                log.record_written(record(i));
            } else {
                log.record(record(i));
            }
        }
        log.close().await;
    }

    /// The tampering audit's rewrite (a19 t6_rechain.py): line `n` (1-based) edited, and every hash and `prev`
    /// from there on computed again with plain SHA-256. Like the script, the rewritten lines lose their `mac`
    /// (everything from `,"hash":` is replaced), unless `keep_mac` keeps each line's old one.
    fn rechain(path: &Path, n: usize, keep_mac: bool) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut prev: Option<String> = None;
        for (i, line) in lines.iter_mut().enumerate().skip(n - 1) {
            let cut = line.rfind(",\"hash\":").unwrap();
            let mac = line
                .find(",\"mac\":")
                .map(|m| line[m..line.len() - 1].to_string());
            let mut body = line[..cut].to_string();
            if i == n - 1 {
                body = body
                    .replacen("\"status\":200", "\"status\":201", 1)
                    .replacen("\"principal\":\"", "\"principal\":\"someone-else-", 1);
            }
            if let Some(p) = &prev {
                let at = body.find(",\"prev\":\"").unwrap() + 9;
                body.replace_range(at..at + 64, p);
            }
            let hash = hex_str(&sha256_hex(format!("{body}}}").as_bytes())).to_string();
            *line = match (keep_mac, mac) {
                (true, Some(mac)) => format!("{body},\"hash\":\"{hash}\"{mac}}}"),
                _ => format!("{body},\"hash\":\"{hash}\"}}"),
            };
            prev = Some(hash);
        }
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[tokio::test]
    async fn signed_lines_carry_a_mac_after_their_hash_and_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_of(1, &[]);
        let (plain, hash) = make_line(&record(3), 3, GENESIS);
        let (signed, signed_hash) = make_line_signed(&record(3), 3, GENESIS, Some(&keys.keys[0]));
        assert_eq!(hash, signed_hash);
        let mac = signed
            .strip_prefix(&plain[..plain.len() - 1])
            .and_then(|rest| rest.strip_prefix(",\"mac\":\""))
            .and_then(|rest| rest.strip_suffix("\"}"))
            .unwrap_or_else(|| panic!("{signed}"));
        // HMAC-SHA256 over the hash's 32 bytes, under the key derived from the KEK.
        let expected = ring::hmac::sign(
            &crate::crypto::audit_mac_key(&crate::crypto::Kek::from_bytes([1; 32])).unwrap(),
            &hex::decode(&hash).unwrap(),
        );
        assert_eq!(mac, hex::encode(expected.as_ref()));
        let checked = check_line(&signed).unwrap();
        assert_eq!((checked.hash, checked.mac), (hash, Some(mac.to_string())));

        let path = dir.path().join("audit.log");
        write_lines(&path, Some(&keys), 0, 10).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\",\"mac\":\"").count(), 10);
        let r = verify_file_keyed(&path, &keys).unwrap();
        assert_eq!(
            (
                r.lines,
                r.mac_lines,
                r.lines_before_macs,
                r.previous_key_lines
            ),
            (10, 10, 0, 0)
        );
        assert!(r.macs_checked);
        // Without keys the chain verifies, and the MACs are counted, not checked.
        let r = verify_file(&path).unwrap();
        assert_eq!((r.lines, r.mac_lines, r.macs_checked), (10, 10, false));
        // Another KEK's keys: the first line fails.
        let e = verify_file_keyed(&path, &keys_of(2, &[])).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("MAC does not verify"), "{e}");
    }

    /// The audit's F3: a line edited and every later hash computed again passes the unkeyed check (when the
    /// MACs are kept), and fails the keyed one at the edited line.
    #[tokio::test]
    async fn a_rewritten_chain_fails_keyed_verification_at_the_edited_line() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_of(1, &[]);
        let path = dir.path().join("audit.log");
        write_lines(&path, Some(&keys), 0, 20).await;
        let pristine = std::fs::read(&path).unwrap();

        // The MACs kept: the hash chain holds, so only the keys tell.
        rechain(&path, 12, true);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("someone-else-")
        );
        let r = verify_file(&path).unwrap();
        assert_eq!(r.lines, 20);
        let e = verify_file_keyed(&path, &keys).unwrap_err();
        assert_eq!((e.file.clone(), e.line), (path.clone(), 12), "{e}");
        assert!(e.reason.contains("MAC does not verify"), "{e}");
        let e = verify_chain_keyed(&path, &keys).unwrap_err();
        assert_eq!(e.line, 12);

        // As the audit's script does it (the MACs dropped from the rewritten lines): a removed MAC.
        std::fs::write(&path, &pristine).unwrap();
        rechain(&path, 12, false);
        for e in [
            verify_file_keyed(&path, &keys).unwrap_err(),
            verify_file(&path).unwrap_err(),
        ] {
            assert_eq!(e.line, 12, "{e}");
            assert!(e.reason.contains("no MAC"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_rewritten_last_line_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_of(1, &[]);
        let path = dir.path().join("audit.log");
        write_lines(&path, Some(&keys), 0, 8).await;
        let pristine = std::fs::read(&path).unwrap();
        for keep_mac in [true, false] {
            std::fs::write(&path, &pristine).unwrap();
            rechain(&path, 8, keep_mac);
            let e = AuditLog::open_signed(&path, 1 << 20, 0, &keys).unwrap_err();
            assert!(matches!(e, AuditError::Unauthenticated { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains("audit.log"), "{text}");
            assert!(
                text.contains(if keep_mac {
                    "MAC does not verify"
                } else {
                    "a MAC was removed"
                }),
                "{text}"
            );
            // Nothing was written.
            assert_eq!(verify_file(&path).is_ok(), keep_mac);
        }
        // Untouched, it starts (and continues the chain).
        std::fs::write(&path, &pristine).unwrap();
        write_lines(&path, Some(&keys), 8, 2).await;
        assert_eq!(verify_file_keyed(&path, &keys).unwrap().lines, 10);
    }

    #[tokio::test]
    async fn a_stripped_mac_after_signed_lines_fails() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_of(1, &[]);
        let path = dir.path().join("audit.log");
        write_lines(&path, Some(&keys), 0, 6).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // Line 4 without its `mac` member: its hash still matches.
        let at = lines[3].find(",\"mac\":").unwrap();
        lines[3] = format!("{}}}", &lines[3][..at]);
        assert!(check_line(&lines[3]).is_ok());
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        for e in [
            verify_file_keyed(&path, &keys).unwrap_err(),
            verify_file(&path).unwrap_err(),
        ] {
            assert_eq!(e.line, 4, "{e}");
            assert!(e.reason.contains("a MAC was removed"), "{e}");
        }
        // Across files too: a rotated file with MACs, then an active file without.
        let active = dir.path().join("split.log");
        let rotated = dir.path().join("split.log.1");
        std::fs::write(&rotated, lines[..3].join("\n") + "\n").unwrap();
        std::fs::write(&active, lines[3..].join("\n") + "\n").unwrap();
        let e = verify_chain_keyed(&active, &keys).unwrap_err();
        assert_eq!((e.file, e.line), (active.clone(), 1));
        // Every MAC of the active file removed (its lines re-hashed needlessly: the hashes do not cover the
        // MAC): the start is refused too, for the rotated file before it ends signed.
        let stripped: Vec<String> = lines[3..]
            .iter()
            .map(|l| match l.find(",\"mac\":") {
                Some(at) => format!("{}}}", &l[..at]),
                None => l.clone(),
            })
            .collect();
        std::fs::write(&active, stripped.join("\n") + "\n").unwrap();
        assert!(
            !std::fs::read_to_string(&active)
                .unwrap()
                .contains("\"mac\"")
        );
        assert!(matches!(
            AuditLog::open_signed(&active, 1 << 20, 0, &keys),
            Err(AuditError::Unauthenticated { .. })
        ));
    }

    /// The upgrade boundary: an old log (no MACs) is continued, and its lines are reported as not
    /// authenticated.
    #[tokio::test]
    async fn a_log_from_before_macs_is_continued_with_macs() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_of(1, &[]);
        let path = dir.path().join("audit.log");
        write_lines(&path, None, 0, 5).await;
        let old = std::fs::read_to_string(&path).unwrap();
        assert!(!old.contains("\"mac\""));
        write_lines(&path, Some(&keys), 5, 3).await;
        let text = std::fs::read_to_string(&path).unwrap();
        // The old lines are as they were.
        assert!(text.starts_with(&old));
        let r = verify_file_keyed(&path, &keys).unwrap();
        assert_eq!(
            (r.lines, r.lines_before_macs, r.mac_lines, r.last_seq),
            (8, 5, 3, Some(7))
        );
        // Opened again: the last line now has a MAC, which is checked.
        write_lines(&path, Some(&keys), 8, 1).await;
        assert_eq!(verify_file_keyed(&path, &keys).unwrap().mac_lines, 4);
    }

    /// KEK rotation: lines signed under the old key verify while it is given as a previous key.
    #[tokio::test]
    async fn lines_under_a_previous_key_verify_when_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, Some(&keys_of(1, &[])), 0, 3).await;
        // Rotated: key 2 current, key 1 previous. The start checks the last line under key 1, and carries the
        // chain over to key 2 at once with a line of its own (no request needed).
        let rotated = keys_of(2, &[1]);
        drop(AuditLog::open_signed(&path, 1 << 20, 0, &rotated).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let carried = text.lines().nth(3).unwrap();
        assert!(
            carried.contains("\"operation\":\"AuditKeyChange\""),
            "{carried}"
        );
        // So key 1 may go: a start with key 2 alone continues, and writes no second such line.
        write_lines(&path, Some(&keys_of(2, &[])), 4, 3).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("AuditKeyChange").count(), 1);
        let r = verify_file_keyed(&path, &rotated).unwrap();
        assert_eq!((r.lines, r.mac_lines, r.previous_key_lines), (7, 7, 3));
        // Without the old key, its lines fail.
        let e = verify_file_keyed(&path, &keys_of(2, &[])).unwrap_err();
        assert_eq!(e.line, 1);
        // Without the new one, its first line fails.
        let e = verify_file_keyed(&path, &keys_of(1, &[])).unwrap_err();
        assert_eq!(e.line, 4);
        // A server that holds neither refuses to continue.
        assert!(matches!(
            AuditLog::open_signed(&path, 1 << 20, 0, &keys_of(3, &[])),
            Err(AuditError::Unauthenticated { .. })
        ));
        // A line under the old key 1 after lines under key 2 — written after a rollback, or by whoever holds
        // only the retired key — is reported (not refused: a rollback is legitimate), and a start continues.
        let last = check_line(text.lines().last().unwrap()).unwrap();
        let (late, _) = make_line_signed(
            &record(99),
            last.seq + 1,
            &last.hash,
            Some(&keys_of(1, &[]).keys[0]),
        );
        std::fs::write(&path, format!("{text}{late}\n")).unwrap();
        let r = verify_file_keyed(&path, &rotated).unwrap();
        assert_eq!(r.previous_key_after_current, 1);
        assert_eq!(r.first_previous_key_after_current, Some((path.clone(), 8)));
        // The key rolled back (1 current again, 2 previous) over the honest log: the start carries the chain
        // over to key 1, and the log verifies (key 2's lines reported as after key 1's).
        std::fs::write(&path, &text).unwrap();
        let back = keys_of(1, &[2]);
        drop(AuditLog::open_signed(&path, 1 << 20, 0, &back).unwrap());
        let r = verify_file_keyed(&path, &back).unwrap();
        assert_eq!((r.lines, r.previous_key_after_current), (8, 4));
    }

    #[tokio::test]
    async fn the_head_is_the_last_line_written_even_just_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let keys = keys_of(1, &[]);
        let log = AuditLog::open_signed(&path, 4096, 0, &keys).unwrap();
        assert_eq!(log.head(), None);
        let mut i = 0;
        while chain_files(&path).len() < 2 {
            log.record_written(record(i));
            i += 1;
        }
        let r = verify_chain_keyed(&path, &keys).unwrap();
        let (file, seq, hash) = log.head().unwrap();
        assert_eq!((Some(seq), Some(hash)), (r.last_seq, r.last_hash));
        // The line that rotated is in the new active file.
        assert_eq!(file, path);
        // Written out with nothing after a rotation (forced here): the newest rotated file holds the head.
        {
            let mut w = lock(&log.state);
            w.rotate().unwrap();
            w.written.2 = 0;
        }
        let (file, seq2, _) = log.head().unwrap();
        assert_eq!(seq2, seq);
        assert_eq!(file, chain_files(&path)[chain_files(&path).len() - 2]);
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
                    client_request_id: some(5),
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
                let hash = append_line(&mut buf, &mut time, &record, seq, text, None);
                let line = String::from_utf8(buf).unwrap();
                let time_text = rfc3339_ms(record.time_ms);
                let reference = serde_json::to_string(&Body {
                    seq,
                    time: &time_text,
                    request_id: &record.request_id,
                    client_request_id: record.client_request_id.as_deref(),
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
        let checked = |seq, prev: &str, hash: &str| CheckedLine {
            seq,
            prev: prev.to_string(),
            hash: hash.to_string(),
            mac: None,
        };
        assert_eq!(check_line(&a).unwrap(), checked(0, GENESIS, &ha));
        assert_eq!(check_line(&b).unwrap(), checked(1, &ha, &hb));
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["requestId"], "req-0");
        assert_eq!(v["outcome"], "allowed");
        assert_eq!(v["version"], serde_json::Value::Null);
        let edited = a.replace("\"status\":200", "\"status\":201");
        assert!(check_line(&edited).unwrap_err().contains("edited"));
    }

    /// The background thread kept from writing, as by a write that hangs: the chain's mutex held by another
    /// thread until [`Stall::release`].
    struct Stall {
        release: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<()>,
    }

    impl Stall {
        fn of(log: &Arc<AuditLog>) -> Stall {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let (locked, is_locked) = std::sync::mpsc::channel::<()>();
            let log = log.clone();
            let holder = std::thread::spawn(move || {
                let _stalled = lock(&log.state);
                locked.send(()).unwrap();
                let _ = held.recv();
            });
            is_locked.recv().unwrap();
            Stall { release, holder }
        }

        fn release(self) {
            self.release.send(()).unwrap();
            self.holder.join().unwrap();
        }
    }

    /// While the background thread cannot write (here: the chain's mutex held, as by a write that hangs), no
    /// more than QUEUE_CAP records wait: the next read waits for room, and once the thread can write again,
    /// every record is in the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_writer_holds_reads_at_the_queue_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&path, 1 << 30).unwrap());
        let stall = Stall::of(&log);
        let extra = 10;
        let producer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..(QUEUE_CAP + extra) as u64 {
                    log.record_queued(record(i)).await;
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while log.queued.load(Ordering::Relaxed) < QUEUE_CAP {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never filled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.queued.load(Ordering::Relaxed), QUEUE_CAP);
        assert!(!producer.is_finished(), "recorded past the cap");
        stall.release();
        tokio::time::timeout(Duration::from_secs(20), producer)
            .await
            .expect("the waiting read never got room")
            .unwrap();
        log.flush().await;
        assert_eq!(log.queued.load(Ordering::Relaxed), 0);
        assert_eq!(
            verify_file(&path).unwrap().lines,
            (QUEUE_CAP + extra) as u64
        );
    }

    /// Should the background thread ever panic, reads go on — those waiting for room in a full queue too — and
    /// their lines are written by the requests themselves instead of being lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_logged_and_go_on_after_the_background_thread_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&path, 1 << 30).unwrap());
        log.record(record(0));
        log.flush().await;
        // A full queue, as the records the thread holds when it panics leave it: never counted out.
        log.queued.store(QUEUE_CAP, Ordering::Relaxed);
        let waiting = {
            let log = log.clone();
            tokio::spawn(async move { log.record_queued(record(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a read passed the cap");
        log.tx.send(Msg::Panic).unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("a read waiting for room hangs after the thread's panic")
            .unwrap();
        assert!(log.stopped.load(Ordering::SeqCst));
        tokio::time::timeout(Duration::from_secs(10), log.record_queued(record(2)))
            .await
            .expect("a read hangs after the thread's panic");
        let report = verify_file(&path).unwrap();
        assert_eq!(report.lines, 3, "every read's line is in the file");
    }

    /// Reads waiting for room after a stall all go on once the background thread writes again, some of them
    /// cancelled meanwhile (a65-1: after the first chunk of the backlog, nothing woke the others).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_read_waiting_for_room_goes_on_after_a_stall() {
        for (waiters, cancel_every) in [(40, 0), (200, 3)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.log");
            let log = Arc::new(AuditLog::open(&path, 1 << 30).unwrap());
            let stall = Stall::of(&log);
            for i in 0..QUEUE_CAP as u64 {
                log.record(record(i));
            }
            let mut kept = Vec::new();
            for i in 0..waiters {
                let log = log.clone();
                let task = tokio::spawn(async move {
                    log.record_queued(record(1_000_000 + i as u64)).await;
                });
                if cancel_every > 0 && i % cancel_every == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    task.abort();
                } else {
                    kept.push(task);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                kept.iter().all(|t| !t.is_finished()),
                "a read passed the cap"
            );
            stall.release();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut stuck = 0;
            for t in kept {
                if tokio::time::timeout_at(deadline, t).await.is_err() {
                    stuck += 1;
                }
            }
            assert_eq!(
                stuck, 0,
                "{stuck} of {waiters} reads still wait 10 s after the stall"
            );
        }
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
        let r = verify_listed(
            &path,
            |p| {
                calls += 1;
                if calls == 1 {
                    stale.clone()
                } else {
                    chain_files(p)
                }
            },
            None,
        )
        .unwrap();
        assert_eq!((r.lines, calls), (100, 2));
        assert!(verify_listed(&path, |_| stale.clone(), None).is_err());
    }
}
