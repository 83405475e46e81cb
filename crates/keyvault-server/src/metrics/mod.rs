//! Prometheus metrics, served on a listener of their own (`metrics_addr`, off by default).
//!
//! Counting costs the request path next to nothing: the counters are relaxed atomics, no lock is taken and
//! nothing is allocated per request. The request counters ([`HttpMetrics`]) are sharded by thread, so that
//! the runtime's workers do not pass cache lines back and forth; the store, the audit log and the connection
//! limit keep their own counts where the work is done (mostly under locks they already hold), and those are
//! read only when `/metrics` is scraped ([`Metrics::render`]).
//!
//! Labels are fixed sets (operation, status code, bucket bounds, the build's version): never a secret's
//! name, a version id, a client id, a token or a value.

pub mod listener;
pub mod text;

use crate::store::SecretStore;
use http::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use text::{Exposition, HistogramSnapshot, Kind};

/// What a request was, as a metric label (the routes of the API, by method and path shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Get,
    Set,
    Update,
    Delete,
    Recover,
    Purge,
    List,
    ListVersions,
    ListDeleted,
    GetDeleted,
    Backup,
    Restore,
    Token,
    Admin,
    Other,
}

const ROUTES: usize = 15;

impl Route {
    const ALL: [Route; ROUTES] = [
        Route::Get,
        Route::Set,
        Route::Update,
        Route::Delete,
        Route::Recover,
        Route::Purge,
        Route::List,
        Route::ListVersions,
        Route::ListDeleted,
        Route::GetDeleted,
        Route::Backup,
        Route::Restore,
        Route::Token,
        Route::Admin,
        Route::Other,
    ];

    /// The `operation` label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Get => "get",
            Route::Set => "set",
            Route::Update => "update",
            Route::Delete => "delete",
            Route::Recover => "recover",
            Route::Purge => "purge",
            Route::List => "list",
            Route::ListVersions => "list_versions",
            Route::ListDeleted => "list_deleted",
            Route::GetDeleted => "get_deleted",
            Route::Backup => "backup",
            Route::Restore => "restore",
            Route::Token => "token",
            Route::Admin => "admin",
            Route::Other => "other",
        }
    }

    /// The route a request takes, from its method and path as sent (before authentication, so that a
    /// refused request counts under the operation it asked for). A name with an escaped `/` counts as the
    /// path's shape says; health checks, discovery, the JWKS and anything unknown are `other`.
    pub fn of<'p>(method: &Method, path: &'p str) -> Route {
        // Bytes, scanned once: on every request (a `str` split costs twice as much).
        let p = path.as_bytes();
        let p = p.strip_prefix(b"/").unwrap_or(p);
        // One trailing slash is the same route (`/secrets/x/` is the latest version of `x`).
        let p = p.strip_suffix(b"/").unwrap_or(p);
        let mut segs = [None::<&[u8]>; 4];
        let mut rest = Some(p);
        for seg in &mut segs {
            let Some(r) = rest else { break };
            match r.iter().position(|&b| b == b'/') {
                Some(i) => {
                    *seg = Some(&r[..i]);
                    rest = Some(&r[i + 1..]);
                }
                None => {
                    *seg = Some(r);
                    rest = None;
                }
            }
        }
        let more = rest.is_some();
        let route = Route::of_segments(method, &segs, more);
        // A third segment that can be a word (`versions`, `backup`, `recover`; not a version id) not in
        // lower case: another route than as sent.
        let odd_third =
            segs[2].is_some_and(|s| s.len() <= 8 && s.iter().any(u8::is_ascii_uppercase));
        if (route != Route::Other && !odd_third) || !p.iter().any(u8::is_ascii_uppercase) {
            return route;
        }
        // The routes' words in any case, as the server reads them (`route_words_in_lower_case`); looked at
        // only for a path that is no route as sent, or may be another (every SDK sends them in lower case).
        let word = |seg: Option<&'p [u8]>, words: &[&'static [u8]]| {
            seg.map(|s| {
                *words
                    .iter()
                    .find(|w| s.eq_ignore_ascii_case(w))
                    .unwrap_or(&s)
            })
        };
        segs[0] = word(segs[0], &[b"secrets", b"deletedsecrets"]);
        segs[2] = word(segs[2], &[b"versions", b"backup", b"recover"]);
        if method == Method::POST && segs[2].is_none() {
            segs[1] = word(segs[1], &[b"restore"]);
        }
        Route::of_segments(method, &segs, more)
    }

    /// [`Route::of`] for a path's first four segments, as sent; `more`: the path has more.
    #[inline]
    fn of_segments(m: &Method, segs: &[Option<&[u8]>; 4], more: bool) -> Route {
        match (segs[0].unwrap_or_default(), segs[1], segs[2], segs[3]) {
            (b"secrets", None, _, _) if m == Method::GET => Route::List,
            (b"secrets", Some(b"restore"), None, _) if m == Method::POST => Route::Restore,
            (b"secrets", Some(_), None, _) => match *m {
                Method::GET => Route::Get,
                Method::PUT => Route::Set,
                Method::PATCH => Route::Update,
                Method::DELETE => Route::Delete,
                _ => Route::Other,
            },
            (b"secrets", Some(_), Some(b"versions"), None) if m == Method::GET => {
                Route::ListVersions
            }
            (b"secrets", Some(_), Some(b"backup"), None) if m == Method::POST => Route::Backup,
            (b"secrets", Some(_), Some(_), None) => match *m {
                Method::GET => Route::Get,
                Method::PATCH => Route::Update,
                _ => Route::Other,
            },
            (b"deletedsecrets", None, _, _) if m == Method::GET => Route::ListDeleted,
            (b"deletedsecrets", Some(_), None, _) => match *m {
                Method::GET => Route::GetDeleted,
                Method::DELETE => Route::Purge,
                _ => Route::Other,
            },
            (b"deletedsecrets", Some(_), Some(b"recover"), None) if m == Method::POST => {
                Route::Recover
            }
            (b"admin", _, _, _) => Route::Admin,
            (_, Some(b"oauth2"), Some(b"v2.0"), Some(b"token")) if !more => Route::Token,
            _ => Route::Other,
        }
    }
}

/// The status codes counted one by one (every code the server sends itself); others are counted by class
/// (`1xx` … `5xx`: what hyper answers for itself never reaches these counts).
const CODES: [u16; 17] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 429, 500, 501, 503,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const CODE_SLOTS: usize = CODES.len() + CLASSES.len();

fn code_slot(status: u16) -> usize {
    match status {
        200 => 0,
        201 => 1,
        202 => 2,
        204 => 3,
        400 => 4,
        401 => 5,
        403 => 6,
        404 => 7,
        405 => 8,
        408 => 9,
        409 => 10,
        413 => 11,
        415 => 12,
        429 => 13,
        500 => 14,
        501 => 15,
        503 => 16,
        s => CODES.len() + (usize::from(s / 100).clamp(1, 5) - 1),
    }
}

fn code_label(slot: usize) -> String {
    match CODES.get(slot) {
        Some(code) => code.to_string(),
        None => CLASSES[slot - CODES.len()].to_string(),
    }
}

/// Request-duration buckets (seconds), and the same in nanoseconds.
pub const DURATION_BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const DURATION_BOUNDS_NS: [u64; 15] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];
const BUCKETS: usize = DURATION_BOUNDS.len() + 1;

/// The bucket of a duration in nanoseconds (Prometheus's `le`: at most the bound).
fn duration_bucket(ns: u64) -> usize {
    DURATION_BOUNDS_NS
        .iter()
        .position(|&bound| ns <= bound)
        .unwrap_or(DURATION_BOUNDS_NS.len())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One thread's share of the request counters (aligned so that no two shards share a cache line).
#[repr(align(128))]
struct Shard {
    requests: [[AtomicU64; CODE_SLOTS]; ROUTES],
    /// Not cumulative: each observation in one bucket.
    duration: [[AtomicU64; BUCKETS]; ROUTES],
    duration_sum_ns: [AtomicU64; ROUTES],
    token_cache_hits: AtomicU64,
    token_cache_misses: AtomicU64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            duration: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            duration_sum_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            token_cache_hits: AtomicU64::new(0),
            token_cache_misses: AtomicU64::new(0),
        }
    }
}

/// Request counters: requests by operation and status code, their durations, token-cache lookups.
pub struct HttpMetrics {
    shards: Box<[Shard]>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        // Twice the CPUs, a power of two: each runtime worker has a shard of its own.
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (cpus * 2).next_power_of_two().clamp(2, 64);
        HttpMetrics {
            shards: (0..shards).map(|_| Shard::default()).collect(),
        }
    }

    /// This thread's shard: threads are numbered in the order they first count something.
    fn shard(&self) -> &Shard {
        use std::cell::Cell;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        let slot = SLOT.with(|slot| {
            let mut n = slot.get();
            if n == usize::MAX {
                n = NEXT.fetch_add(1, Ordering::Relaxed);
                slot.set(n);
            }
            n
        });
        // The number of shards is a power of two.
        &self.shards[slot & (self.shards.len() - 1)]
    }

    /// Counts a request answered with `status` after `elapsed`.
    pub fn record(&self, route: Route, status: u16, elapsed: Duration) {
        let shard = self.shard();
        let r = route as usize;
        shard.requests[r][code_slot(status)].fetch_add(1, Ordering::Relaxed);
        let ns = nanos(elapsed);
        shard.duration[r][duration_bucket(ns)].fetch_add(1, Ordering::Relaxed);
        shard.duration_sum_ns[r].fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts a lookup in the cache of verified tokens.
    pub fn token_cache(&self, hit: bool) {
        let shard = self.shard();
        if hit {
            shard.token_cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            shard.token_cache_misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sum(&self, f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Requests with this route and status code (summed over the shards).
    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.sum(|s| &s.requests[route as usize][code_slot(status)])
    }

    fn duration(&self, route: Route) -> HistogramSnapshot {
        let r = route as usize;
        HistogramSnapshot {
            bounds: &DURATION_BOUNDS,
            counts: (0..BUCKETS)
                .map(|b| self.sum(|s| &s.duration[r][b]))
                .collect(),
            sum: self.sum(|s| &s.duration_sum_ns[r]) as f64 / 1e9,
        }
    }
}

/// A histogram kept with plain atomics (for counts made off the request path, by one thread or a few:
/// the store's writer). Observations are integers in a base unit; `scale` turns them into the family's
/// unit (1e-9 for nanoseconds reported in seconds).
pub struct Histogram {
    bounds: &'static [u64],
    bounds_out: &'static [f64],
    scale: f64,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// `bounds` (ascending, in the base unit) and the same bounds in the family's unit.
    pub fn new(bounds: &'static [u64], bounds_out: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            bounds_out,
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Durations in seconds, with the request buckets.
    pub fn seconds() -> Histogram {
        Histogram::new(&DURATION_BOUNDS_NS, &DURATION_BOUNDS, 1e-9)
    }

    /// Sizes of write batches (operations per batch).
    pub fn batch_sizes() -> Histogram {
        Histogram::new(&BATCH_BOUNDS, &BATCH_BOUNDS_OUT, 1.0)
    }

    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(nanos(d));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds_out,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
        }
    }
}

const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
const BATCH_BOUNDS_OUT: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// What a store reports ([`SecretStore::metrics`]); `None` where the store has no such thing.
#[derive(Clone, Debug, Default)]
pub struct StoreMetrics {
    /// Writes per committed write transaction (group commit): `_count` batches, `_sum` writes.
    pub batch_size: Option<HistogramSnapshot>,
    /// Time to run and commit a batch (SQLite: with the WAL's sync; PostgreSQL: the batch's round trips).
    pub commit_seconds: Option<HistogramSnapshot>,
    /// The cache of latest versions.
    pub cache: Option<CacheMetrics>,
    /// WAL checkpoint passes run (SQLite).
    pub checkpoints: Option<u64>,
    /// WAL rewinds: the whole log copied with the writer paused so it starts over (SQLite).
    pub wal_rewinds: Option<u64>,
}

/// The store's cache of latest versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheMetrics {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
}

/// The audit log's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditMetrics {
    /// Lines handed to the kernel.
    pub lines_written: u64,
    /// Writes that failed (their lines are dropped; the chain resumes after the last line written).
    pub write_errors: u64,
}

/// Everything `/metrics` shows, read from where it is kept.
pub struct Metrics {
    pub http: Arc<HttpMetrics>,
    pub store: Arc<dyn SecretStore>,
    pub audit: Option<crate::audit::AuditLog>,
    /// Connections open now.
    pub connections: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Connections refused because their source had `max_connections_per_source` open.
    pub connections_refused: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Unix seconds when the server started.
    pub start_time: f64,
    /// Access control (with a shared store: how current it is known to be).
    pub access: Arc<crate::admin::AccessAdmin>,
    /// The bounds on request bodies, backups and restores, with their counts.
    pub limiter: Arc<crate::http::limits::Limiter>,
}

impl Metrics {
    /// The exposition (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "keyvault_build_info",
            Kind::Gauge,
            "The server's build: always 1, with its version as a label.",
        );
        e.sample(
            "keyvault_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        e.family(
            "keyvault_process_start_time_seconds",
            Kind::Gauge,
            "When the server started, in Unix seconds.",
        );
        e.sample_f64("keyvault_process_start_time_seconds", &[], self.start_time);
        e.family(
            "keyvault_http_open_connections",
            Kind::Gauge,
            "Connections to the vault's listener open now.",
        );
        e.sample("keyvault_http_open_connections", &[], (self.connections)());
        e.family(
            "keyvault_http_connections_refused_total",
            Kind::Counter,
            "Connections closed at once because their source (an IPv4 address or an IPv6 /64) had \
             max_connections_per_source open.",
        );
        e.sample(
            "keyvault_http_connections_refused_total",
            &[],
            (self.connections_refused)(),
        );
        self.render_http(&mut e);
        self.render_limits(&mut e);
        self.render_store(&mut e);
        if let Some((age, failures)) = self.access.confirmation_state() {
            e.family(
                "keyvault_access_unconfirmed_seconds",
                Kind::Gauge,
                "Seconds since the shared access document was last confirmed current (over 5 the node \
                 refuses requests).",
            );
            e.sample_f64(
                "keyvault_access_unconfirmed_seconds",
                &[],
                age.as_secs_f64(),
            );
            e.family(
                "keyvault_access_refresh_failures_total",
                Kind::Counter,
                "Reads of the shared access document that failed or timed out.",
            );
            e.sample("keyvault_access_refresh_failures_total", &[], failures);
        }
        if let Some(audit) = &self.audit {
            let a = audit.metrics();
            e.family(
                "keyvault_audit_lines_written_total",
                Kind::Counter,
                "Audit lines handed to the kernel.",
            );
            e.sample("keyvault_audit_lines_written_total", &[], a.lines_written);
            e.family(
                "keyvault_audit_write_errors_total",
                Kind::Counter,
                "Audit log writes that failed (their lines are lost).",
            );
            e.sample("keyvault_audit_write_errors_total", &[], a.write_errors);
        }
        e.finish()
    }

    fn render_limits(&self, e: &mut Exposition) {
        let l = &self.limiter;
        e.family(
            "keyvault_http_body_bytes_buffered",
            Kind::Gauge,
            "Request-body bytes being received now, by the budget they are taken from (vault: the vault's and \
             the admin API's requests but restores; restore: restores'; token: the token endpoint's).",
        );
        e.sample(
            "keyvault_http_body_bytes_buffered",
            &[("budget", "vault")],
            l.body_bytes_buffered() as u64,
        );
        e.sample(
            "keyvault_http_body_bytes_buffered",
            &[("budget", "restore")],
            l.restore_body_bytes_buffered() as u64,
        );
        e.sample(
            "keyvault_http_body_bytes_buffered",
            &[("budget", "token")],
            l.token_body_bytes_buffered() as u64,
        );
        e.family(
            "keyvault_http_body_budget_bytes",
            Kind::Gauge,
            "The most request-body bytes received at once, by budget (over it, requests wait, then get 503).",
        );
        e.sample(
            "keyvault_http_body_budget_bytes",
            &[("budget", "vault")],
            l.settings().body_budget_bytes as u64,
        );
        e.sample(
            "keyvault_http_body_budget_bytes",
            &[("budget", "restore")],
            l.settings().restore_body_budget_bytes as u64,
        );
        e.sample(
            "keyvault_http_body_budget_bytes",
            &[("budget", "token")],
            l.settings().token_body_budget_bytes as u64,
        );
        e.family(
            "keyvault_http_body_timeouts_total",
            Kind::Counter,
            "Requests whose body did not arrive within its deadline (408).",
        );
        e.sample("keyvault_http_body_timeouts_total", &[], l.body_timeouts());
        e.family(
            "keyvault_http_busy_refusals_total",
            Kind::Counter,
            "Requests refused with 503 for want of body budget, or of a place among the backups and restores \
             in progress.",
        );
        e.sample(
            "keyvault_http_busy_refusals_total",
            &[("reason", "body_budget")],
            l.budget_refusals(),
        );
        e.sample(
            "keyvault_http_busy_refusals_total",
            &[("reason", "token_body_budget")],
            l.token_budget_refusals(),
        );
        e.sample(
            "keyvault_http_busy_refusals_total",
            &[("reason", "backup_restore")],
            l.bulk_refusals(),
        );
    }

    fn render_http(&self, e: &mut Exposition) {
        let http = &self.http;
        e.family(
            "keyvault_http_requests_total",
            Kind::Counter,
            "Requests answered, by operation and status code (a code the server does not send itself: its class).",
        );
        for route in Route::ALL {
            for slot in 0..CODE_SLOTS {
                let n = http.sum(|s| &s.requests[route as usize][slot]);
                if n > 0 {
                    let code = code_label(slot);
                    e.sample(
                        "keyvault_http_requests_total",
                        &[("operation", route.label()), ("code", &code)],
                        n,
                    );
                }
            }
        }
        e.family(
            "keyvault_http_refused_total",
            Kind::Counter,
            "Requests refused: 401 (no valid token, or refused client credentials), 403 (not permitted), 429 (throttled).",
        );
        for (code, reason) in [(401, "401"), (403, "403"), (429, "429")] {
            let n: u64 = Route::ALL
                .iter()
                .map(|&r| http.requests(r, code))
                .fold(0, u64::wrapping_add);
            e.sample("keyvault_http_refused_total", &[("code", reason)], n);
        }
        e.family(
            "keyvault_http_request_duration_seconds",
            Kind::Histogram,
            "Time from a request's head to its response's head, by operation.",
        );
        for route in Route::ALL {
            let h = http.duration(route);
            if h.count() > 0 {
                e.histogram(
                    "keyvault_http_request_duration_seconds",
                    &[("operation", route.label())],
                    &h,
                );
            }
        }
        e.family(
            "keyvault_token_cache_hits_total",
            Kind::Counter,
            "Bearer tokens found in the cache of verified tokens.",
        );
        e.sample(
            "keyvault_token_cache_hits_total",
            &[],
            http.sum(|s| &s.token_cache_hits),
        );
        e.family(
            "keyvault_token_cache_misses_total",
            Kind::Counter,
            "Bearer tokens not in the cache (verified in full).",
        );
        e.sample(
            "keyvault_token_cache_misses_total",
            &[],
            http.sum(|s| &s.token_cache_misses),
        );
    }

    fn render_store(&self, e: &mut Exposition) {
        let m = self.store.metrics();
        if let Some(h) = &m.batch_size {
            e.family(
                "keyvault_store_commit_batch_size",
                Kind::Histogram,
                "Writes per committed write batch (group commit): _count is batches, _sum writes.",
            );
            e.histogram("keyvault_store_commit_batch_size", &[], h);
        }
        if let Some(h) = &m.commit_seconds {
            e.family(
                "keyvault_store_commit_duration_seconds",
                Kind::Histogram,
                "Time to run and commit a write batch, durable sync included.",
            );
            e.histogram("keyvault_store_commit_duration_seconds", &[], h);
        }
        if let Some(c) = m.cache {
            e.family(
                "keyvault_store_cache_hits_total",
                Kind::Counter,
                "Reads answered from the cache of latest versions.",
            );
            e.sample("keyvault_store_cache_hits_total", &[], c.hits);
            e.family(
                "keyvault_store_cache_misses_total",
                Kind::Counter,
                "Reads that went to the database.",
            );
            e.sample("keyvault_store_cache_misses_total", &[], c.misses);
            e.family(
                "keyvault_store_cache_bytes",
                Kind::Gauge,
                "Memory the cached rows take (values stay sealed), overhead included.",
            );
            e.sample("keyvault_store_cache_bytes", &[], c.bytes);
        }
        if let Some(n) = m.checkpoints {
            e.family(
                "keyvault_store_checkpoints_total",
                Kind::Counter,
                "WAL checkpoint passes run.",
            );
            e.sample("keyvault_store_checkpoints_total", &[], n);
        }
        if let Some(n) = m.wal_rewinds {
            e.family(
                "keyvault_store_wal_rewinds_total",
                Kind::Counter,
                "Times the whole WAL was copied into the database so that the log could start over.",
            );
            e.sample("keyvault_store_wal_rewinds_total", &[], n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_api() {
        let cases = [
            ("GET", "/secrets", Route::List),
            ("GET", "/secrets/", Route::List),
            ("POST", "/secrets/restore", Route::Restore),
            ("PUT", "/secrets/restore", Route::Set),
            ("GET", "/secrets/a", Route::Get),
            ("GET", "/secrets/a/", Route::Get),
            ("PUT", "/secrets/a", Route::Set),
            ("PATCH", "/secrets/a", Route::Update),
            ("DELETE", "/secrets/a", Route::Delete),
            ("GET", "/secrets/a/versions", Route::ListVersions),
            ("POST", "/secrets/a/backup", Route::Backup),
            ("GET", "/secrets/a/0123", Route::Get),
            ("PATCH", "/secrets/a/0123", Route::Update),
            ("GET", "/deletedsecrets", Route::ListDeleted),
            ("GET", "/deletedsecrets/a", Route::GetDeleted),
            ("DELETE", "/deletedsecrets/a", Route::Purge),
            ("POST", "/deletedsecrets/a/recover", Route::Recover),
            ("GET", "/admin/principals", Route::Admin),
            ("POST", "/keyvault-rs/oauth2/v2.0/token", Route::Token),
            ("POST", "/keyvault-rs/oauth2/v2.0/token/", Route::Token),
            ("GET", "/healthz", Route::Other),
            ("GET", "/keyvault-rs/discovery/v2.0/keys", Route::Other),
            ("POST", "/secrets", Route::Other),
            ("HEAD", "/secrets/a", Route::Other),
            ("GET", "/secrets/a/b/c", Route::Other),
            ("GET", "/", Route::Other),
            // The words in any case, as the server reads them.
            ("GET", "/SECRETS", Route::List),
            ("POST", "/Secrets/RESTORE", Route::Restore),
            ("PUT", "/Secrets/RESTORE", Route::Set),
            ("PUT", "/sEcrets/A", Route::Set),
            ("GET", "/secrets/A/Versions", Route::ListVersions),
            ("POST", "/secrets/a/BACKUP", Route::Backup),
            ("GET", "/DeletedSecrets", Route::ListDeleted),
            ("POST", "/DELETEDSECRETS/a/Recover", Route::Recover),
            ("GET", "/secretz/a", Route::Other),
            ("GET", "/secrets/a/BACKUP", Route::Get),
            ("GET", "/secrets/A/0123ABCD", Route::Get),
            ("PATCH", "/Secrets/a/0123ABCD", Route::Update),
        ];
        for (method, path, want) in cases {
            let method: Method = method.parse().unwrap();
            assert_eq!(Route::of(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn codes_and_buckets() {
        assert_eq!(code_label(code_slot(200)), "200");
        assert_eq!(code_label(code_slot(429)), "429");
        // Every listed code has its own slot, in order.
        for (slot, code) in CODES.iter().enumerate() {
            assert_eq!(code_slot(*code), slot, "{code}");
        }
        assert_eq!(code_label(code_slot(418)), "4xx");
        assert_eq!(code_label(code_slot(302)), "3xx");
        assert_eq!(code_label(code_slot(101)), "1xx");
        assert_eq!(code_label(code_slot(599)), "5xx");
        assert_eq!(code_label(code_slot(0)), "1xx");
        assert_eq!(code_label(code_slot(999)), "5xx");
        assert_eq!(duration_bucket(0), 0);
        assert_eq!(duration_bucket(100_000), 0);
        assert_eq!(duration_bucket(100_001), 1);
        assert_eq!(duration_bucket(5_000_000_000), 14);
        assert_eq!(duration_bucket(u64::MAX), 15);
        for (ns, s) in DURATION_BOUNDS_NS.iter().zip(DURATION_BOUNDS) {
            assert_eq!(*ns as f64 / 1e9, s);
        }
    }

    #[test]
    fn counts_add_up_over_threads() {
        let m = Arc::new(HttpMetrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.record(Route::Get, 200, Duration::from_micros(20));
                    }
                    m.record(Route::Set, 401, Duration::from_secs(10));
                    m.token_cache(true);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.requests(Route::Get, 200), 4000);
        assert_eq!(m.requests(Route::Set, 401), 4);
        assert_eq!(m.sum(|s| &s.token_cache_hits), 4);
        let get = m.duration(Route::Get);
        assert_eq!((get.counts[0], get.count()), (4000, 4000));
        assert!((get.sum - 0.08).abs() < 1e-9, "{}", get.sum);
        let set = m.duration(Route::Set);
        assert_eq!(set.counts[BUCKETS - 1], 4);
    }

    #[test]
    fn plain_histograms() {
        let h = Histogram::batch_sizes();
        for n in [1, 1, 3, 300] {
            h.observe(n);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.sum, 305.0);
        let d = Histogram::seconds();
        d.observe_duration(Duration::from_millis(3));
        let s = d.snapshot();
        assert_eq!(s.counts[5], 1);
        assert!((s.sum - 0.003).abs() < 1e-12);
    }
}
