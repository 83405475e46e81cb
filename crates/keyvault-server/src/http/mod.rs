//! The HTTP face of the vault: Key Vault's secrets REST API, wire-exact (protocol.md).
//!
//! Every vault request goes through [`vault_request`]: authentication first (before the body is read or
//! anything is validated, as the SDKs' challenge flow requires), then api-version, route, name,
//! authorization ([`Policy::authorize`], before the body is read or the store touched) with the request
//! budgets ([`throttle`]: a permitted request spends the vault's, a refused one its principal's), body.
//! Errors become responses in one place ([`error::ApiError`]). Every request's decision is written to the
//! audit log, if there is one.

mod admin;
pub mod error;
pub mod limits;
mod ready;
mod respond;
pub mod throttle;
mod wire;

use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::auth::TokenVerifier;
use crate::auth::policy::{Operation, Policy, Visibility};
use crate::vault::{SecretAttributesInput, Vault};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use error::ApiError;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use keyvault_types::models::{
    BackupSecretResult, ListResult, SecretSetParameters, SecretUpdateParameters,
};
use keyvault_types::{ApiVersion, rules};
use respond::{bundle_response, empty, json_response};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;
use wire::WireContext;
use zeroize::Zeroizing;

/// Largest body of a set or update request.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest body of a restore request: the base64 text of the largest backup blob, and room for the JSON around it.
pub const MAX_RESTORE_BODY_BYTES: usize =
    crate::vault::MAX_BACKUP_BLOB_BYTES.div_ceil(3) * 4 + 1024;

/// What the vault routes share.
pub struct HttpState {
    /// Request counters (read by the metrics listener, if there is one).
    pub metrics: Arc<crate::metrics::HttpMetrics>,
    pub vault: Arc<Vault>,
    pub verifier: Arc<TokenVerifier>,
    /// The `WWW-Authenticate` value of every 401.
    pub challenge: HeaderValue,
    /// Who may do what.
    pub policy: Arc<Policy>,
    /// Where request decisions are recorded (if anywhere).
    pub audit: Option<AuditLog>,
    /// The vault's request budgets (`None` = unlimited).
    pub throttle: Option<throttle::Throttle>,
    /// Principals, their secrets and role assignments made through the admin API.
    pub admin: Arc<crate::admin::AccessAdmin>,
    /// The bounds on request bodies, and on backups and restores in progress.
    pub limiter: Arc<limits::Limiter>,
    /// This node's rekey job (`/admin/rekey`).
    pub rekey: crate::rekey::job::RekeyJobs,
    /// What `/readyz` last found of the store, so that a failing probe warns once.
    pub store_health: ready::StoreHealthLog,
}

/// The whole HTTP application: health, the token issuer's routes, and the vault API (see [`App`]).
pub fn app(state: Arc<HttpState>, auth_routes: Router) -> App {
    App {
        router: router(state.clone(), auth_routes),
        state,
        in_flight: Arc::default(),
        on_connection: None,
    }
}

/// The server's request handler. Requests for the vault's secrets (`/secrets…`, `/deletedsecrets…`) go
/// straight to [`vault_request`]; the others go through the router (health, the token issuer's routes, and
/// the router's fallback, which is [`vault_request`] too). The answer is the router's in either case: the
/// shortcut only skips its route lookup and the boxed services around the fallback (about 3 % of a GET's
/// instructions, BENCHMARKS.md session 11). HEAD and CONNECT always take the router, which shapes their
/// responses (a HEAD answer keeps its `content-length` and loses its body; HTTP/2 refuses a body there).
#[derive(Clone)]
pub struct App {
    state: Arc<HttpState>,
    router: Router,
    /// Requests being handled: over HTTP/2 each runs as a task of its own, which outlives its connection's.
    in_flight: Arc<std::sync::atomic::AtomicU64>,
    /// The requests being handled on this App's connection ([`App::for_connection`]).
    on_connection: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl App {
    /// Requests being handled now (a shutdown waits for them before it closes the audit log).
    pub fn requests_in_flight(&self) -> u64 {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// This App for one connection, and the count of that connection's requests being handled (from the
    /// call with a whole request head until the answer is handed back), which its idle limits wait for
    /// ([`crate::idle::IdleIo::wait_for_requests`]).
    pub fn for_connection(&self) -> (App, Arc<std::sync::atomic::AtomicU64>) {
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut app = self.clone();
        app.on_connection = Some(count.clone());
        (app, count)
    }

    /// Stops this node's rekey job if one runs (a shutdown), waiting at most `within` for its end to be
    /// recorded.
    pub async fn stop_rekey(&self, within: std::time::Duration) {
        self.state.rekey.stop(within).await;
    }
}

/// Counts a request as in flight while it lives on the server, and as being handled on its connection
/// (when the connection counts) from when it is whole until it is answered: at once for a request without a
/// body (or over HTTP/2, whose streams' bodies have their own deadline), once its body has been read to its
/// end for an HTTP/1.1 one ([`BodyEnd`]) — until then, a body that stops coming is the connection's answer
/// limit's to cut.
struct InFlight {
    server: Arc<std::sync::atomic::AtomicU64>,
    connection: OnConnection,
}

enum OnConnection {
    Uncounted,
    Counted(Arc<std::sync::atomic::AtomicU64>),
    OnceWhole(Arc<BodyEnd>),
}

impl InFlight {
    fn new(app: &App, body: Option<&Arc<BodyEnd>>) -> InFlight {
        use std::sync::atomic::Ordering::AcqRel;
        app.in_flight.fetch_add(1, AcqRel);
        let connection = match (body, &app.on_connection) {
            (Some(body), _) => OnConnection::OnceWhole(body.clone()),
            (None, Some(count)) => {
                count.fetch_add(1, AcqRel);
                OnConnection::Counted(count.clone())
            }
            (None, None) => OnConnection::Uncounted,
        };
        InFlight {
            server: app.in_flight.clone(),
            connection,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::AcqRel;
        self.server.fetch_sub(1, AcqRel);
        match &self.connection {
            OnConnection::Uncounted => {}
            OnConnection::Counted(count) => {
                count.fetch_sub(1, AcqRel);
            }
            OnConnection::OnceWhole(body) => body.answered(),
        }
    }
}

/// Where an HTTP/1.1 request's declared body is: whether it has been read to its end (an answer to one that
/// was not closes the connection), and its part in its connection's count of requests being handled.
struct BodyEnd {
    read: std::sync::atomic::AtomicBool,
    /// The connection's count of requests being handled, if it keeps one.
    connection: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// 0: not counted on the connection yet; 1: counted (the body was read whole); 2: answered (not counted
    /// again).
    counted: std::sync::atomic::AtomicU8,
}

impl BodyEnd {
    /// The body has been read to its end: the request counts as being handled.
    fn reached(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        self.read.store(true, Release);
        if let Some(count) = &self.connection {
            // Counted before it is marked, so that an answer seeing the mark always has a count to take back;
            // taken back at once if it was counted already or has been answered.
            count.fetch_add(1, AcqRel);
            if self
                .counted
                .compare_exchange(0, 1, AcqRel, Acquire)
                .is_err()
            {
                count.fetch_sub(1, AcqRel);
            }
        }
    }

    /// The request has been answered (or given up): it no longer counts.
    fn answered(&self) {
        use std::sync::atomic::Ordering::AcqRel;
        if self.counted.swap(2, AcqRel) == 1
            && let Some(count) = &self.connection
        {
            count.fetch_sub(1, AcqRel);
        }
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for App {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        // Counted here, for every request (the router's too): by route and status, with the time taken.
        let started = Instant::now();
        let route = crate::metrics::Route::of(req.method(), req.uri().path());
        // A request with a body may be answered before its body is read (refused: 401, 403, 429, 503, a bad
        // name): hyper then cannot reuse the connection and closes it after the answer, which without
        // `Connection: close` a client learns only when its next request on it fails. Tracked for requests
        // that declare a body (not GETs).
        let (req, body_read) = ReadTracker::wrap(req, self.on_connection.as_ref());
        let shaped_by_router = matches!(*req.method(), Method::HEAD | Method::CONNECT);
        let state = self.state.clone();
        let in_flight = InFlight::new(self, body_read.as_ref());
        if !shaped_by_router && skips_router(req.uri().path()) {
            Box::pin(async move {
                let _in_flight = in_flight;
                let mut resp = serve_vault(&state, req).await;
                ReadTracker::close_if_unread(body_read, &mut resp);
                state
                    .metrics
                    .record(route, resp.status().as_u16(), started.elapsed());
                Ok(resp)
            })
        } else {
            let router = self.router.clone();
            let misdirected = misdirected_answer(&req);
            Box::pin(async move {
                let _in_flight = in_flight;
                let mut result = match misdirected {
                    Some(resp) => Ok(resp),
                    None => tower::ServiceExt::oneshot(router, req).await,
                };
                if let Ok(resp) = &mut result {
                    ReadTracker::close_if_unread(body_read, resp);
                    state
                        .metrics
                        .record(route, resp.status().as_u16(), started.elapsed());
                }
                result
            })
        }
    }
}

/// A request body that records when it has been read to its end ([`App::call`]).
struct ReadTracker {
    inner: hyper::body::Incoming,
    done: Arc<BodyEnd>,
}

impl ReadTracker {
    /// The request with its body as an axum [`Body`]; for a request that declares a body, also what its end
    /// sets (and counts on `connection`).
    fn wrap(
        req: Request<hyper::body::Incoming>,
        connection: Option<&Arc<std::sync::atomic::AtomicU64>>,
    ) -> (Request, Option<Arc<BodyEnd>>) {
        // HTTP/1 only: HTTP/2 has no `Connection` header (a stream is reset, not the connection). GETs and
        // DELETEs carry no body here: skipped before any header lookup (the GET path is the hot one).
        let headers = req.headers();
        let declares_body = !matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE)
            && req.version() <= http::Version::HTTP_11
            && (headers.contains_key(header::TRANSFER_ENCODING)
                || (headers.get(header::CONTENT_LENGTH)).is_some_and(|v| v.as_bytes() != b"0"));
        if !declares_body {
            return (req.map(Body::new), None);
        }
        let done = Arc::new(BodyEnd {
            read: std::sync::atomic::AtomicBool::new(false),
            connection: connection.cloned(),
            counted: std::sync::atomic::AtomicU8::new(0),
        });
        let flag = done.clone();
        (
            req.map(|inner| Body::new(ReadTracker { inner, done })),
            Some(flag),
        )
    }

    /// `Connection: close` on the answer to a request whose body was not read to its end.
    fn close_if_unread(done: Option<Arc<BodyEnd>>, resp: &mut Response) {
        if done.is_some_and(|d| !d.read.load(std::sync::atomic::Ordering::Acquire)) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

impl hyper::body::Body for ReadTracker {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.reached();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the router would hand this path to its fallback ([`vault_request`]) for sure: its first segment is
/// one of the vault's collections, and it is not the shape of a token issuer route (`/{tenant}/oauth2/…`,
/// `/{tenant}/v2.0/…`, `/{tenant}/.well-known/…`, `/{tenant}/discovery/…`, which a tenant named like a
/// collection would own). Compared as sent (percent-encoded), as the router compares.
fn skips_router(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let (first, after) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(first, "secrets" | "deletedsecrets") {
        return false;
    }
    let second = after.split('/').next().unwrap_or_default();
    !matches!(second, "oauth2" | "v2.0" | ".well-known" | "discovery")
}

/// Health, the token issuer's routes, and everything else to [`vault_request`].
fn router(state: Arc<HttpState>, auth_routes: Router) -> Router {
    let health_state = state.clone();
    Router::new()
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let state = health_state.clone();
                async move { ready::readyz(&state).await }
            }),
        )
        .fallback(vault_request)
        .with_state(state.clone())
        .merge(identity_routes(auth_routes, state))
        .layer(axum::middleware::from_fn(shape_router_405))
}

/// The identity endpoints (`auth_routes`). Every answer carries an `x-ms-request-id` (an error's `trace_id`
/// is the same id) and echoes the client's `client-request-id`, as Entra ID's do. A token request (a POST to
/// the token path) is refused with 503 `temporarily_unavailable` while [`ready::token_endpoint_refusal`] says
/// so, and gets its audit line (`TokenRequest`: the client id it named as `target` if the server knows it, and
/// as `principal` once it got a token).
fn identity_routes(auth_routes: Router, state: Arc<HttpState>) -> Router {
    use crate::auth::routes::{NamedClient, TokenRequestAudit, TraceId};
    auth_routes.layer(axum::middleware::from_fn(
        move |mut req: Request, next: axum::middleware::Next| {
            let state = state.clone();
            async move {
                let request_id = RequestId::next();
                let client_request_id = req.headers().get(CLIENT_REQUEST_ID).cloned();
                let token_request = req.method() == Method::POST && is_token_path(req.uri().path());
                let mut record = AuditRecord::new(request_id.as_str().to_owned());
                record.operation = Some("TokenRequest");
                record.client_request_id = client_request_id
                    .as_ref()
                    .or_else(|| req.headers().get(X_MS_CLIENT_REQUEST_ID))
                    .and_then(audited_client_id);
                let named = NamedClient::default();
                let mut line = TokenRequestLine {
                    state: state.clone(),
                    record: token_request.then_some(record),
                    named: named.clone(),
                };
                let mut resp = match ready::token_endpoint_refusal(&state) {
                    Some(why) if token_request => crate::auth::routes::temporarily_unavailable(
                        req.headers(),
                        state.vault.now(),
                        request_id.as_str(),
                        why,
                    ),
                    _ => {
                        req.extensions_mut()
                            .insert(TraceId(request_id.as_str().to_owned()));
                        req.extensions_mut().insert(named);
                        next.run(req).await
                    }
                };
                if let (Some(audit), Some(record)) = (&state.audit, line.record.as_mut()) {
                    record.status = resp.status().as_u16();
                    record.outcome = crate::audit::Outcome::Rejected;
                    if let Some(seen) = resp.extensions_mut().remove::<TokenRequestAudit>() {
                        record.outcome = seen.outcome;
                        if seen.outcome == crate::audit::Outcome::Allowed {
                            record.principal = seen.client_id.as_deref().map(Arc::from);
                        }
                        record.target = seen.client_id;
                    }
                    audit.room().await;
                    if let Some(record) = line.record.take() {
                        audit.record(record);
                    }
                }
                let headers = resp.headers_mut();
                headers.insert(X_MS_REQUEST_ID, request_id.header_value());
                if let Some(v) = client_request_id {
                    headers.insert(CLIENT_REQUEST_ID, v);
                }
                resp
            }
        },
    ))
}

/// Whether `path` is the token endpoint's (`/{tenant}/oauth2/v2.0/token`, with or without a trailing `/`).
fn is_token_path(path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    path.strip_suffix("/oauth2/v2.0/token")
        .is_some_and(|tenant| tenant.len() > 1 && tenant[1..].find('/').is_none())
}

/// The id MSAL (and so azure-identity) sends with a token request, which Entra ID echoes.
const CLIENT_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("client-request-id");

/// The router's own 405s (health, readiness, the token issuer's routes: a known path, another method) come
/// with an `Allow` header and an empty body: given Key Vault's JSON error, as the vault's own 405s have.
async fn shape_router_405(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let mut shaped = ApiError::method_not_allowed(&method, "").into_response();
    match resp.headers().get(header::ALLOW) {
        Some(allow) => shaped.headers_mut().insert(header::ALLOW, allow.clone()),
        None => shaped.headers_mut().remove(header::ALLOW),
    };
    // The identity endpoints' ids (`identity_routes`) stay.
    for name in [X_MS_REQUEST_ID, CLIENT_REQUEST_ID] {
        if let Some(v) = resp.headers().get(&name) {
            shaped.headers_mut().insert(name, v.clone());
        }
    }
    shaped
}

/// Entry point of every vault request.
pub async fn vault_request(State(state): State<Arc<HttpState>>, req: Request) -> Response {
    serve_vault(&state, req).await
}

/// [`vault_request`], on a borrowed state.
async fn serve_vault(state: &HttpState, req: Request) -> Response {
    let method = req.method().clone();
    // Only kept when it will be logged (the URI is reference-counted: no copy of the path).
    let uri = tracing::enabled!(tracing::Level::DEBUG).then(|| (req.uri().clone(), Instant::now()));
    let client_request_id = req.headers().get("x-ms-client-request-id").cloned();
    let request_id = RequestId::next();
    let reads = method == Method::GET || method == Method::HEAD;
    let mut guard = AbandonedChange {
        audit: if reads { None } else { state.audit.as_ref() },
        record: None,
    };
    let mut record = AuditRecord::new(request_id.as_str().to_owned());
    record.client_request_id = client_request_id.as_ref().and_then(audited_client_id);
    let handled = handle(state, req, guard.record.insert(record)).await;
    // Answered: the guard has nothing left to do (it always holds the record here).
    let mut record = guard
        .record
        .take()
        .unwrap_or_else(|| AuditRecord::new(String::new()));
    let mut resp = match handled {
        Ok(resp) => resp,
        Err(e) => {
            // With the id the client got (`x-ms-request-id`) and the audit log has: the three line up.
            if let Some(cause) = &e.cause {
                let id = request_id.as_str();
                if e.status == StatusCode::SERVICE_UNAVAILABLE {
                    tracing::warn!(request_id = id, %method, %cause, "storage unavailable");
                } else {
                    tracing::error!(request_id = id, %method, %cause, "internal error");
                }
            }
            e.into_response()
        }
    };
    let status = resp.status();
    if let Some(audit) = &state.audit {
        record.status = status.as_u16();
        if reads {
            audit.record_queued(record).await;
        } else {
            // A change (or an attempt at one) is in the audit log before the client hears of it.
            let (operation, made) = (record.operation, status.is_success());
            if !audit.record_written(record) && made {
                // Already committed: answered, and named here (the log's error says why).
                tracing::error!(
                    request_id = request_id.as_str(),
                    %method,
                    operation = operation.unwrap_or("-"),
                    status = status.as_u16(),
                    "a change was made but its audit line could not be written"
                );
            }
        }
    }
    let headers = resp.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, state.challenge.clone());
    } else if status == StatusCode::SERVICE_UNAVAILABLE
        && !headers.contains_key(header::RETRY_AFTER)
    {
        // Every 503 says when to try again (the store's, too: a full disk, a database away), so that clients
        // whose retry policy waits for the header (the JS SDK's throttling policy) retry whatever the cause.
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    decorate(headers, client_request_id, request_id.header_value());
    if let Some((uri, started)) = uri {
        tracing::debug!(request_id = request_id.as_str(), %method, path = uri.path(), status = status.as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    }
    resp
}

/// The client's request id as the audit line keeps it: text of at most 128 characters (longer ids are cut;
/// the SDKs send a 36-character UUID), or nothing if it is not visible ASCII.
fn audited_client_id(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let bytes = &bytes[..bytes.len().min(128)];
    (!bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// A token request's audit record until its line is queued. Dropped before (its client gone while the request
/// was read or its credential checked, or while the line waited for room), the line is written anyway, with
/// status 499: every token request has its line, also one whose client never saw the answer (a92-2: a
/// credential guess whose client hung up left no trace).
struct TokenRequestLine {
    state: Arc<HttpState>,
    record: Option<AuditRecord>,
    /// The client the request named, once the handler knows it is one of this server's (the line's target).
    named: crate::auth::routes::NamedClient,
}

impl Drop for TokenRequestLine {
    fn drop(&mut self) {
        if let (Some(audit), Some(mut record)) = (self.state.audit.as_ref(), self.record.take()) {
            if record.status == 0 {
                // Not answered: no token was issued.
                record.outcome = crate::audit::Outcome::Rejected;
            }
            if record.target.is_none() {
                record.target = self.named.0.get().cloned();
            }
            record.status = 499;
            audit.record(record);
        }
    }
}

/// A change's audit status while its body is being read: dropped then (its client gone, or given up at the
/// end of a shutdown's drain), the request changed nothing, and [`AbandonedChange`] writes 408 (the request
/// timed out, as one whose body stops coming does), not 499.
const BODY_PENDING: u16 = 408;

/// Reads a change's body (`read`), with the change's audit record saying [`BODY_PENDING`] until it is whole.
pub(crate) async fn change_body<T>(
    rec: &mut AuditRecord,
    read: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    rec.status = BODY_PENDING;
    let read = read.await;
    rec.status = 0;
    read
}

/// A change's audit record while the change runs. hyper drops a request's future when its client goes away;
/// a change whose store write was under way may still commit (the writer does not know), but its audit line,
/// written after, would never be. Dropped with the record still in it, after the change was authorized, the
/// guard writes the line with status 499 (the client closed the request before its answer: the change may or
/// may not have been made; the store says which). Cheaper than running every change as a task of its own
/// (measured: +4 % of a SET's instructions), and the line names the principal, operation and secret.
struct AbandonedChange<'a> {
    audit: Option<&'a crate::audit::AuditLog>,
    record: Option<AuditRecord>,
}

impl Drop for AbandonedChange<'_> {
    fn drop(&mut self) {
        let (Some(audit), Some(mut record)) = (self.audit, self.record.take()) else {
            return;
        };
        // Refused or never authorized: nothing can have been changed.
        if record.outcome != crate::audit::Outcome::Allowed {
            return;
        }
        let request_id = record.request_id.clone();
        let operation = record.operation.unwrap_or("-");
        if record.status == BODY_PENDING {
            tracing::warn!(
                request_id = %request_id,
                operation,
                "a change ended before its body was whole: audited with status 408 (nothing was changed)"
            );
        } else {
            record.status = 499;
            tracing::warn!(
                request_id = %request_id,
                operation,
                "the client went away during a change: audited with status 499 (it may or may not have been made)"
            );
        }
        if !audit.record_written(record) {
            tracing::error!(request_id = %request_id, "an abandoned change's audit line could not be written");
        }
    }
}

/// Key Vault's headers on a response: no caching, no sniffing, HSTS, the request ids and the service version.
fn decorate(
    headers: &mut HeaderMap,
    client_request_id: Option<HeaderValue>,
    request_id: HeaderValue,
) {
    // A JSON body and nothing else (nearly every answer): start from a copy of a decorated JSON response, which
    // costs a fraction of inserting each header (every insert hashes a name and probes the table).
    if headers.len() == 1
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == respond::JSON_CONTENT_TYPE)
    {
        static DECORATED_JSON: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
            let mut h = HeaderMap::with_capacity(respond::RESPONSE_HEADERS);
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(respond::JSON_CONTENT_TYPE),
            );
            // The request id is a placeholder, replaced in place below.
            decorate_each(&mut h, None, HeaderValue::from_static("-"));
            h
        });
        *headers = DECORATED_JSON.clone();
        headers.insert(X_MS_REQUEST_ID, request_id);
        if let Some(v) = client_request_id {
            headers.insert(X_MS_CLIENT_REQUEST_ID, v);
        }
    } else {
        decorate_each(headers, client_request_id, request_id);
    }
}

fn decorate_each(
    headers: &mut HeaderMap,
    client_request_id: Option<HeaderValue>,
    request_id: HeaderValue,
) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000;includeSubDomains"),
    );
    headers.insert(X_MS_REQUEST_ID, request_id);
    if let Some(v) = client_request_id {
        headers.insert(X_MS_CLIENT_REQUEST_ID, v);
    }
    headers.insert(
        X_MS_SERVICE_VERSION,
        HeaderValue::from_static(concat!("keyvault-rs/", env!("CARGO_PKG_VERSION"))),
    );
}

const X_MS_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-ms-request-id");
const X_MS_CLIENT_REQUEST_ID: header::HeaderName =
    header::HeaderName::from_static("x-ms-client-request-id");
const X_MS_SERVICE_VERSION: header::HeaderName =
    header::HeaderName::from_static("x-ms-keyvault-service-version");

/// A request id, GUID-shaped (`8-4-4-4-12` lowercase hex): 80 random bits drawn once per process, then a
/// 48-bit counter. Unique within a process and, with overwhelming probability, across processes; costs no
/// system call and no allocation (ids are not secrets, and need not be unpredictable).
struct RequestId([u8; 36]);

/// A permutation of the 48-bit numbers (the low 48 bits of `n`): three Feistel rounds over 24-bit halves, each
/// with the round function `f(round, half)`. One to one whatever `f` is.
fn permute48(n: u64, f: impl Fn(u8, u32) -> u64) -> u64 {
    const HALF: u64 = (1 << 24) - 1;
    let (mut left, mut right) = ((n >> 24) & HALF, n & HALF);
    for round in 0..3 {
        (left, right) = (right, left ^ (f(round, right as u32) & HALF));
    }
    (left << 24) | right
}

impl RequestId {
    /// A random prefix per process, then 48 bits that are a keyed permutation of a request counter (three
    /// Feistel rounds over SipHash with the process's random keys): unique within the process, since the
    /// permutation is one to one, and telling nothing of how many requests came between two ids (the counter
    /// itself did: anyone could read the vault's request rate off two 401s).
    fn next() -> RequestId {
        use std::hash::BuildHasher;
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static KEYS: OnceLock<([u8; 10], std::hash::RandomState)> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (prefix, keys) = KEYS.get_or_init(|| {
            let mut bytes = [0u8; 10];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .expect("the system random number generator failed");
            bytes[6] = (bytes[6] & 0x0f) | 0x40; // shaped like a UUIDv4
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            (bytes, std::hash::RandomState::new())
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // One u64 per call: a tuple is hashed as two writes (a third of the cost again).
        let n = permute48(n, |round, half| {
            keys.hash_one(u64::from(round) << 32 | u64::from(half))
        });
        let mut raw = [0u8; 16];
        raw[..10].copy_from_slice(prefix);
        raw[10..].copy_from_slice(&n.to_be_bytes()[2..]);
        let mut hex = [0u8; 32];
        // Cannot fail: 16 bytes make exactly 32 hex digits.
        let _ = hex::encode_to_slice(raw, &mut hex);
        let mut out = [b'-'; 36];
        out[0..8].copy_from_slice(&hex[0..8]);
        out[9..13].copy_from_slice(&hex[8..12]);
        out[14..18].copy_from_slice(&hex[12..16]);
        out[19..23].copy_from_slice(&hex[16..20]);
        out[24..36].copy_from_slice(&hex[20..32]);
        RequestId(out)
    }

    fn as_str(&self) -> &str {
        // Hex digits and dashes are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "AKV10000: Request is missing a Bearer or PoP token.",
    )
}

/// The 401 for a presented token that was refused, in Key Vault's words where it has some for the reason:
/// - `AKV10032` for a token of another issuer (the usual mistake: a token from another tenant or token
///   endpoint), naming the vault's own issuer and the token's (the client's own claim, shown back if short
///   printable text; trusted external issuers are not listed to anonymous callers);
/// - `AKV10022` for a token whose signature holds but whose audience is not this vault's (a token asked for
///   another resource's scope), naming both;
/// - `AKV10046` for a token signed by a key the issuer does not publish (its encoded header shown back);
/// - Key Vault's `[TokenExpired]` text for an expired token;
/// - for a token not valid yet (its `nbf` ahead of this vault's clock by more than the allowed skew), a text
///   that says so (Key Vault has none we know of), so that a clock out of step is not taken for a missing token;
/// - the generic `AKV10000` text for every other reason (malformed, bad signature, wrong algorithm…).
fn refused(
    e: &crate::auth::AuthError,
    token: &[u8],
    verifier: &crate::auth::TokenVerifier,
    challenge: &HeaderValue,
) -> ApiError {
    use crate::auth::AuthError::InvalidToken;
    let reason = match e {
        InvalidToken(reason) => *reason,
        _ => return unauthorized(),
    };
    let message = |text: String| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", text);
    // Key Vault has no such case (its identities live in Entra ID): say what happened, without an AKV code.
    if reason == crate::auth::token::CLIENT_GONE {
        return message(
            "The access token was issued to a client that has since been deleted.".into(),
        );
    }
    let issuer = token_claim(token, "iss");
    let foreign = match &issuer {
        Some(iss) => !verifier.knows_issuer(iss),
        None => false,
    };
    if foreign || reason == "wrong issuer" {
        return message(format!(
            "AKV10032: Invalid issuer. Expected one of {}, found {}.",
            verifier.issuer(),
            issuer.as_deref().unwrap_or("none")
        ));
    }
    match reason {
        "wrong audience" => {
            let expected = challenge
                .to_str()
                .ok()
                .and_then(|c| c.split("resource=\"").nth(1))
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            let found = token_claim(token, "aud").unwrap_or_else(|| "none".to_string());
            message(format!(
                "AKV10022: Invalid audience. Expected {expected}, found: {found}."
            ))
        }
        "unknown signing key" => {
            let header = token.split(|&b| b == b'.').next().unwrap_or_default();
            let shown = header.len() <= 1024
                && header
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
            let header = if shown {
                std::str::from_utf8(header).unwrap_or_default()
            } else {
                ""
            };
            message(format!(
                "AKV10046: Unable to resolve the key used for signature validation. EncodedJwtHeader: '{header}'."
            ))
        }
        "token expired" => message("[TokenExpired] Error validating token: 'S2S12086'.".into()),
        "token not yet valid" => message(format!(
            "The access token is not yet valid: its nbf is more than {} s ahead of the vault's clock. \
             Check the clocks of the token's issuer and of this vault.",
            crate::auth::token::CLOCK_SKEW_SECS
        )),
        _ => unauthorized(),
    }
}

/// A claim of a refused token (its first, if a list), if it is short printable text: the client's own claim,
/// shown back to it to help it ask for the right token. Unverified: only ever used in the 401's text.
fn token_claim(token: &[u8], claim: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split(|&b| b == b'.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let value = match &claims[claim] {
        serde_json::Value::Array(list) => list.first()?.as_str()?,
        v => v.as_str()?,
    };
    (value.len() <= 200 && value.bytes().all(|b| b.is_ascii_graphic())).then(|| value.to_string())
}

/// The bearer token of a request, if it carries one, as bytes: `handle` checks that it is text only when it
/// is not in the token cache. More than one `Authorization` header is a 400 (which one counts would be a
/// guess, and a proxy in front may have guessed otherwise).
fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::bad_parameter(
            "The request has more than one Authorization header.",
        ));
    }
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return Ok(None);
    };
    let token = value[space + 1..].trim_ascii();
    Ok((value[..space].eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token))
}

/// `https://host[:port]` as the client addressed us (HTTP/2 `:authority` or HTTP/1.1 `Host`), lowercased.
fn vault_url(
    uri: &http::Uri,
    headers: &HeaderMap,
    version: http::Version,
) -> Result<String, ApiError> {
    let host = request_host(uri, headers, version).ok_or_else(bad_host)?;
    let mut url = String::with_capacity("https://".len() + host.len());
    url.push_str("https://");
    url.push_str(host);
    url.make_ascii_lowercase();
    Ok(url)
}

/// The host a request addressed: the URI's authority (HTTP/2's `:authority`, or an absolute-form target),
/// else its one `Host` line. None for a missing or invalid host, for more than one `Host` line (RFC 9112
/// §3.2: a 400), for a scheme other than `https` (HTTP/2's `:scheme`, or an absolute-form target's: this server
/// speaks only TLS), and over HTTP/2 for a `Host` line naming another host than `:authority` (RFC 9113 §8.3.1;
/// over HTTP/1.1 an absolute-form target's authority wins over `Host`, as RFC 9112 §3.2.2 says).
pub(crate) fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
    version: http::Version,
) -> Option<&'a str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || misdirected(uri, first, version) {
        return None;
    }
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => first.and_then(|h| h.to_str().ok()).unwrap_or_default(),
    };
    valid_host(host).then_some(host)
}

/// Whether a request names a scheme other than https (in any case), or, over HTTP/2, carries a `Host` line
/// naming another origin than its `:authority` (in any case; a port of 443 is the default one). See
/// [`request_host`].
fn misdirected(uri: &http::Uri, host: Option<&HeaderValue>, version: http::Version) -> bool {
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("https"))
    {
        return true;
    }
    let (Some(authority), Some(host), true) =
        (uri.authority(), host, version == http::Version::HTTP_2)
    else {
        return false;
    };
    !default_port_off(authority.as_str().as_bytes())
        .eq_ignore_ascii_case(default_port_off(host.as_bytes()))
}

/// A `host[:port]` without its port when that is https's default, 443.
fn default_port_off(host: &[u8]) -> &[u8] {
    host.strip_suffix(b":443").unwrap_or(host)
}

/// The 400 for a request whose host [`request_host`] refuses.
fn bad_host() -> ApiError {
    ApiError::bad_parameter(
        "The request has a missing or invalid Host header (or one that disagrees with its :authority, or a \
         scheme other than https).",
    )
}

/// A request the router takes (health, the token issuer, discovery, JWKS, the admin API) that names another
/// scheme than https, or over HTTP/2 another host in `Host` than in `:authority` (see [`request_host`]): its
/// 400, as the vault API answers it. Requests without any `Host` (some health probes) are let through here.
fn misdirected_answer<B>(req: &http::Request<B>) -> Option<Response> {
    let host = req.headers().get(header::HOST);
    misdirected(req.uri(), host, req.version()).then(|| bad_host().into_response())
}

/// `host[:port]` as a client may send it: a name of letters, digits, `-`, `.`, `_` or `~`, or an IPv6
/// address in brackets, then at most a port number (1 to 65535).
fn valid_host(host: &str) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), after),
            None => return false,
        },
        None => {
            let (name, port) = match host.find(':') {
                Some(i) => host.split_at(i),
                None => (host, ""),
            };
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            (ok, port)
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        // A port is 1 to 65535 (`h:` and `h:99999` are not hosts a client could have reached).
        Some(digits) => {
            digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok_and(|port| port != 0)
        }
    };
    host.len() <= 255 && name_ok && port_ok
}

/// The query parameters the API reads, percent-decoded in names and values (JS sends `api%2Dversion`).
#[derive(Default)]
struct Query<'a> {
    api_version: Option<Cow<'a, str>>,
    maxresults: Option<Cow<'a, str>>,
    skiptoken: Option<Cow<'a, str>>,
}

/// Borrows from the query where nothing needed decoding (the usual case): no allocation.
fn parse_query(query: Option<&str>) -> Query<'_> {
    let query = query.unwrap_or_default();
    let mut q = Query::default();
    // Names match in any case, as Key Vault's (ASP.NET) query binding does: `API-Version`, `$SkipToken`.
    let mut take = |k: Cow<'_, str>, v| {
        let slot = match k.as_ref() {
            // The SDKs' spelling first: one comparison on every request.
            "api-version" => &mut q.api_version,
            "maxresults" => &mut q.maxresults,
            "$skiptoken" => &mut q.skiptoken,
            k if k.eq_ignore_ascii_case("api-version") => &mut q.api_version,
            k if k.eq_ignore_ascii_case("maxresults") => &mut q.maxresults,
            k if k.eq_ignore_ascii_case("$skiptoken") => &mut q.skiptoken,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(v);
        }
    };
    if query.contains(['%', '+']) {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            take(k, v);
        }
    } else {
        // Nothing to decode: split as `form_urlencoded` does (empty pieces skipped, a piece without `=` has an
        // empty value), without its byte-by-byte decoding.
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            take(Cow::Borrowed(k), Cow::Borrowed(v));
        }
    }
    q
}

fn api_version(q: &Query) -> Result<ApiVersion, ApiError> {
    match q.api_version.as_deref() {
        None | Some("") => Err(ApiError::bad_parameter(
            "The 'api-version' query parameter is required. Consider using the latest supported version (2026-04-01).",
        )),
        // The version is echoed in the message: bounded and printable, like every echoed input.
        Some(v) => v.parse::<ApiVersion>().map_err(|_| {
            ApiError::bad_parameter(keyvault_types::UnknownApiVersion(printable(v)).to_string())
        }),
    }
}

fn page_size(q: &Query) -> Result<usize, ApiError> {
    match q.maxresults.as_deref() {
        None | Some("") => Ok(rules::MAX_PAGE_SIZE as usize),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (rules::MIN_PAGE_SIZE..=rules::MAX_PAGE_SIZE).contains(&n) => Ok(n as usize),
            _ => Err(ApiError::bad_parameter(format!(
                "Invalid value for maxresults: {}. It must be an integer from {} to {}.",
                printable(s),
                rules::MIN_PAGE_SIZE,
                rules::MAX_PAGE_SIZE
            ))),
        },
    }
}

fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The path's segments, percent-decoded, with one trailing empty segment dropped (`/secrets/x/` = latest).
/// Borrowed from the path, or from `decoded` when the path has escapes: one allocation in the usual case.
fn path_segments<'a>(path: &'a str, decoded: &'a mut Vec<Cow<'a, str>>) -> Vec<&'a str> {
    let path = path.trim_start_matches('/');
    let mut segs: Vec<&'a str> = if path.contains('%') {
        *decoded = path
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
            .collect();
        let decoded: &'a Vec<Cow<'a, str>> = decoded;
        decoded.iter().map(|s| s.as_ref()).collect()
    } else {
        path.split('/').collect()
    };
    if segs.len() > 1 && segs.last().is_some_and(|s| s.is_empty()) {
        segs.pop();
    }
    segs
}

/// Key Vault reads the words of its routes in any case (`/Secrets/x/Versions` lists versions): they are put in
/// lower case, as the routes spell them. A secret's name keeps the case it was sent in (names compare without
/// case, and a new name is shown as first written), so `restore` in the second place is the route only for
/// POST, where it is one (`PUT /secrets/Restore` sets the secret `Restore`).
#[inline]
fn route_words_in_lower_case(method: &Method, segs: &mut [&str]) {
    const COLLECTIONS: [&str; 2] = ["secrets", "deletedsecrets"];
    let upper = |s: &str| s.bytes().any(|b| b.is_ascii_uppercase());
    // What every SDK sends, on every request: nothing to do.
    let maybe_folded = segs.first().is_some_and(|s| upper(s))
        || segs.get(2).is_some_and(|s| upper(s))
        || (method == Method::POST && segs.len() == 2);
    if !maybe_folded {
        return;
    }
    let Some(first) = COLLECTIONS
        .iter()
        .find(|c| segs.first().is_some_and(|s| s.eq_ignore_ascii_case(c)))
    else {
        return;
    };
    segs[0] = first;
    match segs {
        [_, second]
            if *first == "secrets"
                && method == Method::POST
                && second.eq_ignore_ascii_case("restore") =>
        {
            *second = "restore";
        }
        [_, _, third] => {
            if let Some(word) = ["versions", "backup", "recover"]
                .iter()
                .find(|w| third.eq_ignore_ascii_case(w))
            {
                *third = word;
            }
        }
        _ => {}
    }
}

/// The most of an oversized body read (and dropped) before its 413 is sent.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A request's body, with what its head says about reading it.
pub(crate) struct IncomingBody {
    body: Body,
    /// A `Content-Encoding` other than `identity` (as sent, bounded and printable): refused with 415.
    coding: Option<String>,
    /// A `Transfer-Encoding` with a coding other than `chunked` (gzip, …; HTTP/1.1 only): hyper takes the
    /// chunks apart and hands the coded bytes on, so it is refused with 501, as RFC 9112 §6.1 says.
    transfer_coding: Option<String>,
    /// The client sent `Expect: 100-continue`: it waits for `100 Continue` (which hyper sends when the body is
    /// first read) before it sends the body, so a body refused on its head alone is answered before any of it
    /// is read, and never sent.
    expects_continue: bool,
}

impl IncomingBody {
    pub(crate) fn new(headers: &HeaderMap, body: Body) -> IncomingBody {
        let mut codings = headers.get_all(header::CONTENT_ENCODING).iter().peekable();
        let coding = codings.peek().is_some().then(|| {
            codings
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        });
        // `identity` (in any case, listed any number of times) is no coding at all.
        let coding = coding.filter(|c| {
            c.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        });
        let mut transfer = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
        let transfer_coding = transfer
            .peek()
            .is_some()
            .then(|| {
                transfer
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|t| {
                t.split(',')
                    .map(str::trim)
                    .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
            });
        let expects_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        // Echoed in the refusal: bounded, printable (spaces kept: `identity, gzip`).
        let shown = |c: String| -> String {
            c.chars()
                .take(64)
                .map(|c| {
                    if c == ' ' || c.is_ascii_graphic() {
                        c
                    } else {
                        '?'
                    }
                })
                .collect()
        };
        IncomingBody {
            body,
            coding: coding.map(shown),
            transfer_coding: transfer_coding.map(shown),
            expects_continue,
        }
    }

    /// A body read for what it is, whatever the head said (the unit tests).
    #[cfg(test)]
    fn plain(body: Body) -> IncomingBody {
        IncomingBody {
            body,
            coding: None,
            transfer_coding: None,
            expects_continue: false,
        }
    }
}

/// A request body of at most `limit` bytes. A larger one gets 413, sent once the client has sent the body
/// (up to [`DRAIN_MAX_BYTES`]), not while it still sends: over HTTP/1.1 a server that closes a connection
/// with unread request bytes resets it, and the client then never sees the 413 (an SDK sees a broken
/// connection). A declared length over the limit is refused before any of the body is read (no
/// `100 Continue`) when the client waits for `100 Continue` before sending (`Expect`), or when the body is
/// too large to drain. A body that breaks off or is badly framed gets 400.
///
/// A body sent with a `Content-Encoding` (gzip, br, …) gets 415: bodies are read as sent (Key Vault documents
/// no compressed requests, and the SDKs send none). It is read (within the limit) before the 415 is sent, as
/// an oversized one is, unless the client waits for `100 Continue`.
///
/// The whole body must arrive within the body deadline ([`limits::BODY_DEADLINE`]; else 408), and the bytes
/// kept are taken from the server's body budget as they arrive ([`limits::BODY_BUDGET_BYTES`]; when it is
/// spent the read waits, within its deadline, then gets 503) and given back when this returns, whatever it
/// returns.
///
/// The body may hold a secret's value or a client secret: it is gathered into a buffer that is wiped when
/// dropped (and never reallocated with the old one left behind), and every frame read is wiped too when
/// nothing else holds it. (A frame that is a slice of hyper's connection buffer cannot be: that buffer is
/// reused for the connection's next bytes and freed unwiped; README, "Limits".)
pub(crate) async fn read_body(
    limiter: &limits::Limiter,
    body: IncomingBody,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    read_body_as(limiter.body_read(), body, limit).await
}

/// [`read_body`] for the token endpoint: from its own budget ([`limits::TOKEN_BODY_BUDGET_BYTES`]), so that
/// anonymous callers' unfinished bodies never hold back the vault's writes.
pub(crate) async fn read_token_body(
    limiter: &limits::Limiter,
    body: IncomingBody,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    read_body_as(limiter.token_body_read(), body, limit).await
}

async fn read_body_as(
    read: limits::BodyRead<'_>,
    incoming: IncomingBody,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let IncomingBody {
        body,
        coding,
        transfer_coding,
        expects_continue,
    } = incoming;
    let refused_coding = match (transfer_coding, coding) {
        (Some(transfer), _) => Some(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!(
                "The request's Transfer-Encoding '{transfer}' is not supported: send the body as it is, with \
                 Content-Length or chunked alone."
            ),
        )),
        (None, Some(coding)) => Some(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "The request body's Content-Encoding '{coding}' is not supported: send the body as it is \
                 (identity)."
            ),
        )),
        (None, None) => None,
    };
    if let Some(e) = refused_coding {
        if expects_continue {
            return Err(e);
        }
        // Read as any body is (an oversized one still gets its 413), then refused.
        read_identity(read, body, limit, false).await?;
        return Err(e);
    }
    read_identity(read, body, limit, expects_continue).await
}

/// [`read_body_as`] for a body sent as it is.
async fn read_identity(
    mut read: limits::BodyRead<'_>,
    mut body: Body,
    limit: usize,
    expects_continue: bool,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    };
    // One timer for the whole body, armed only if a frame is not there at once (a small body that came with
    // its request's head is read without one). It is renewed each time another `renewal` bytes within the
    // limit have come (`limits::BODY_MIN_RATE`), so a small body never renews it.
    let deadline = tokio::time::sleep_until(read.deadline());
    tokio::pin!(deadline);
    let renewal = read.renewal();
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        // A client waiting for `100 Continue` has sent none of it: answered at once, it sends none.
        if n <= DRAIN_MAX_BYTES && !expects_continue {
            // Drained within the deadline (its bytes are dropped as they come: no budget).
            while let Some(Some(Ok(frame))) = next_frame(&mut body, deadline.as_mut()).await {
                if let Ok(data) = frame.into_data() {
                    wipe_frame(data);
                }
            }
        }
        return Err(too_large());
    }
    let unreadable = || ApiError::bad_parameter("The request body could not be read.");
    // With a declared length (the usual case) the buffer is allocated once (up to 64 KiB: a client's word
    // reserves no more before it sends); without one (chunked, or HTTP/2 without `content-length`) it grows as
    // frames come, up to the limit, and what is left is drained.
    let capacity = declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY as u64) as usize;
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    let mut seen = 0u64;
    loop {
        let frame = match next_frame(&mut body, deadline.as_mut()).await {
            Some(Some(frame)) => frame,
            Some(None) => break,
            // Past the deadline: a body already over the limit was only being drained for its 413.
            None if seen > limit as u64 => return Err(too_large()),
            None => return Err(read.timed_out()),
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if seen > limit as u64 => return Err(too_large()),
            // The body's input ended before the body did: over HTTP/1.1 that is the connection's answer
            // timeout (`crate::idle`: 30 s of a request's bytes without an answer, which starts with the
            // request's head, so it comes before this read's own deadline) or a client that went away; the
            // request timed out (408, as over HTTP/2), it was not malformed.
            Err(e) if ended_early(&e) => return Err(read.timed_out()),
            Err(_) => return Err(unreadable()),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let before = seen;
        seen += data.len() as u64;
        if renewal > 0 && seen <= limit as u64 && seen / renewal > before / renewal {
            deadline.as_mut().reset(read.renewed());
        }
        if seen <= limit as u64 {
            // The budget counts the bytes received. A body declaring more than a set's limit (a restore, one of
            // at most `bulk_operations` in flight) gets one buffer of its declared length once the first
            // frames have filled the initial one: no chain of doublings, each leaving a freed copy with the
            // allocator (a 30 MiB restore held about twice its body that way). Reserving is not charged: a
            // caller declaring 32 MiB and sending 64 KiB would otherwise hold the budget with bytes it never
            // sends, and the pages of a fresh buffer are backed as its bytes are written.
            if let Err(e) = read.take(data.len()).await {
                wipe_frame(data);
                return Err(e);
            }
            if let Some(n) = declared.filter(|&n| n > MAX_BODY_BYTES as u64)
                && buf.capacity() < seen as usize
            {
                grow_wiped(&mut buf, n as usize);
            }
            append_wiped(&mut buf, &data);
        } else if !buf.is_empty() {
            // Over the limit: what was read is dropped (wiped on drop).
            buf = Zeroizing::new(Vec::new());
        }
        wipe_frame(data);
        if seen > DRAIN_MAX_BYTES {
            break;
        }
    }
    if seen > limit as u64 {
        return Err(too_large());
    }
    // hyper checks the declared length; a body longer than it declared is an error of its (unreadable).
    Ok(buf)
}

/// Whether a body error is its input ending before the body did (hyper's body decoder: an `UnexpectedEof`
/// under the error, or a connection reset or aborted — a client killed, or a network dropped, closes its TCP
/// connection without TLS's close_notify —; or an incomplete message; over HTTP/2, the stream reset, the
/// connection gone away or lost), rather than a badly framed body.
fn ended_early(e: &axum::Error) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || err
                .downcast_ref::<h2::Error>()
                // Reset or gone away by the client, or the connection lost; not a reset the server's own
                // HTTP/2 library sent for a malformed stream (a body longer or shorter than declared…).
                .is_some_and(|h2| {
                    h2.is_io() || ((h2.is_reset() || h2.is_go_away()) && h2.is_remote())
                })
            || err.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                )
            })
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The body's next frame (`Some(None)` at its end), or `None` once `deadline` has passed.
async fn next_frame(
    body: &mut Body,
    mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Option<Option<Result<hyper::body::Frame<axum::body::Bytes>, axum::Error>>> {
    use std::future::Future;
    use std::task::Poll;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(frame) =
            axum::body::HttpBody::poll_frame(std::pin::Pin::new(&mut *body), cx)
        {
            return Poll::Ready(Some(frame));
        }
        deadline.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The most [`read_body`] allocates for a body before its bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Appends `data` to `buf`; when `buf` must grow, its contents move to a new allocation and the old one is
/// wiped (a `Vec`'s own growth would free it with the bytes in it).
fn append_wiped(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        grow_wiped(buf, (buf.len() + data.len()).max(buf.capacity() * 2));
    }
    buf.extend_from_slice(data);
}

/// Moves `buf`'s contents to a new allocation of `capacity` bytes (when that is more), wiping the old one.
fn grow_wiped(buf: &mut Zeroizing<Vec<u8>>, capacity: usize) {
    if capacity > buf.capacity() {
        let mut bigger = Vec::with_capacity(capacity);
        bigger.extend_from_slice(buf);
        *buf = Zeroizing::new(bigger);
    }
}

/// Wipes a body frame read when this is its only handle; returns the wiped bytes (for the tests), or `None`
/// when something else holds them (such as hyper's connection buffer, which the frame is a slice of).
fn wipe_frame(data: axum::body::Bytes) -> Option<bytes::BytesMut> {
    let mut owned = data.try_into_mut().ok()?;
    zeroize::Zeroize::zeroize(&mut owned[..]);
    Some(owned)
}

async fn read_json<T: DeserializeOwned>(
    limiter: &limits::Limiter,
    body: IncomingBody,
    limit: usize,
) -> Result<T, ApiError> {
    read_json_describing(limiter.body_read(), body, limit).await
}

async fn read_json_describing<T: DeserializeOwned>(
    read: limits::BodyRead<'_>,
    body: IncomingBody,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body_as(read, body, limit).await?;
    parse_json(&bytes)
}

/// A request body's JSON object, read as [`read_json`] describes.
fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // A UTF-8 byte-order mark before the JSON is skipped, as Key Vault's .NET reader does.
    let json = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // Parsed in place: a copy would add an allocation and could not wipe the original buffer anyway.
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ApiError::bad_parameter("The request body is missing.")),
        // serde reads a struct from an array of its fields in order too: `["v"]` would set a secret.
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::bad_parameter(
                "The request body is not a JSON object.",
            ));
        }
    }
    // JSON is UTF-8 (RFC 8259 §8.1) throughout: serde checks the strings it reads, not those it skips (an
    // unknown property's value, PATCH's `value`).
    if let Err(e) = std::str::from_utf8(json) {
        return Err(ApiError::bad_parameter(format!(
            "The request body is not valid JSON: it is not UTF-8 (at byte {}).",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice(json).map_err(|e| {
        // serde's own message can quote the input (which may hold a value): describe, never quote.
        let what = match e.classify() {
            // `"\ud800"` with no trailing half after it, or a trailing half alone: JSON's grammar lets the
            // escape through, but it names no Unicode character, and a secret's text is Unicode (a JS string cut
            // inside an emoji gives one: the JS SDK review, a72-1).
            serde_json::error::Category::Syntax
                if e.to_string().contains("surrogate") || e.to_string().contains("end of hex escape") =>
            {
                "has a string with an unpaired UTF-16 surrogate escape (\\uD800 to \\uDFFF without its other \
                 half), which is no Unicode character"
            }
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "is not valid JSON"
            }
            _ if e.to_string().starts_with("missing field `value`") => {
                "lacks the required 'value' property"
            }
            // The secrets API matches property names in any case (`keyvault_types::models`): `value` and
            // `Value` are one property.
            _ if e.to_string().starts_with("duplicate field") => "has a property more than once",
            _ if e
                .to_string()
                .starts_with(keyvault_types::models::DUPLICATE_TAG) =>
            {
                "has a tag name more than once"
            }
            _ => "has a property of the wrong type or shape",
        };
        ApiError::bad_parameter(format!(
            "The request body {what} (line {}, column {}).",
            e.line(),
            e.column()
        ))
    })
}

fn attributes_input(
    content_type: Option<String>,
    tags: Option<keyvault_types::models::Tags>,
    attributes: Option<keyvault_types::models::SecretAttributes>,
) -> SecretAttributesInput {
    let attributes = attributes.unwrap_or_default();
    SecretAttributesInput {
        content_type,
        tags,
        enabled: attributes.enabled,
        nbf: attributes.nbf,
        exp: attributes.exp,
    }
}

/// The methods a vault route answers (its 405's `Allow`), or `None` for a path that is no route. `restore`
/// is a secret's name as well, and `versions` and `backup` a version's place (GET and PATCH answer them: 404).
fn vault_route_methods(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["secrets"] | ["deletedsecrets"] => "GET",
        ["secrets", restore] if restore.eq_ignore_ascii_case("restore") => {
            "GET, PUT, PATCH, DELETE, POST"
        }
        ["secrets", _] => "GET, PUT, PATCH, DELETE",
        ["secrets", _, "backup"] => "GET, PATCH, POST",
        ["secrets", _, _] => "GET, PATCH",
        ["deletedsecrets", _] => "GET, DELETE",
        ["deletedsecrets", _, "recover"] => "POST",
        _ => return None,
    })
}

/// The answer to a request no route takes: 405 with the methods its path answers (`allow`), or 404 for a
/// path that is no route.
pub(crate) fn unrouted(method: &Method, allow: Option<&'static str>, segs: &[&str]) -> ApiError {
    match allow {
        Some(allow) => ApiError::method_not_allowed(method, allow),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "The requested path was not found: {}",
                printable(&segs.join("/"))
            ),
        ),
    }
}

/// Whether any route of the vault or admin API answers this method (others, such as HEAD, OPTIONS, TRACE and
/// CONNECT, are a 405 wherever they go).
fn routed_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::PUT | Method::PATCH | Method::DELETE | Method::POST
    )
}

/// Records the operation and asks the policy; a denial becomes the 403.
fn gate(
    state: &HttpState,
    principal: &str,
    rec: &mut AuditRecord,
    op: Operation,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<(), ApiError> {
    rec.operation = Some(op.as_str());
    rec.secret = name.map(str::to_string);
    rec.version = version.map(printable);
    match state.policy.authorize(principal, op, name) {
        Ok(()) => admitted(state, rec, op),
        Err(denied) => Err(refused_by_policy(state, principal, rec, &denied)),
    }
}

/// A permitted request: over its budget (the vault's, creates', or the admin API's) → 429.
fn admitted(state: &HttpState, rec: &mut AuditRecord, op: Operation) -> Result<(), ApiError> {
    if let Some(throttle) = &state.throttle {
        let kind = match op {
            Operation::SecretSet => throttle::RequestKind::Create,
            Operation::VaultAdmin => throttle::RequestKind::Admin,
            _ => throttle::RequestKind::Other,
        };
        if let Err(retry_after) = throttle.admit(kind) {
            rec.outcome = Outcome::Throttled;
            return Err(ApiError::throttled(retry_after));
        }
    }
    rec.outcome = Outcome::Allowed;
    Ok(())
}

/// A request access control refused: 403, or 429 once its principal's refusal budget is spent.
fn refused_by_policy(
    state: &HttpState,
    principal: &str,
    rec: &mut AuditRecord,
    denied: &crate::auth::policy::Denied,
) -> ApiError {
    if let Some(Err(retry_after)) = state.throttle.as_ref().map(|t| t.admit_refusal(principal)) {
        rec.outcome = Outcome::Throttled;
        return ApiError::throttled(retry_after);
    }
    rec.outcome = Outcome::Denied;
    ApiError::forbidden(denied, &state.vault.settings().name)
}

/// [`gate`] for listings: which names the principal may see (a 403 if none).
fn gate_list(
    state: &HttpState,
    principal: &str,
    rec: &mut AuditRecord,
    op: Operation,
) -> Result<Visibility, ApiError> {
    rec.operation = Some(op.as_str());
    match state.policy.visibility(principal, op) {
        Ok(v) => admitted(state, rec, op).map(|()| v),
        Err(denied) => Err(refused_by_policy(state, principal, rec, &denied)),
    }
}

/// A valid secret name, or the vault's 400.
fn valid_name(name: &str, base: &str) -> Result<(), ApiError> {
    crate::vault::check_name(name).map_err(|e| ApiError::from_vault(e, base))
}

async fn handle(
    state: &HttpState,
    req: Request,
    rec: &mut AuditRecord,
) -> Result<Response, ApiError> {
    // 1. Who: before anything else, and before the body is read.
    let token = bearer(req.headers())?.ok_or_else(unauthorized)?;
    let now = state.vault.now();
    let cached = state.verifier.verify_cached(token, now);
    state.metrics.token_cache(cached.is_some());
    let verified = match cached {
        Some(cached) => cached,
        // Not seen before (or no longer cached): a token must be text to be parsed.
        None => match std::str::from_utf8(token) {
            Ok(token) => state.verifier.verify_async(token, now).await,
            Err(_) => Err(crate::auth::AuthError::InvalidToken("malformed token")),
        },
    };
    let principal = verified.map_err(|e| refused(&e, token, &state.verifier, &state.challenge))?;
    let who: &str = &principal.id;
    rec.principal = Some(principal.id.clone());

    // Access control this node cannot confirm is current is not used (admin.rs, UNCONFIRMED_LIMIT). Except the
    // admin API while the node refuses a shared document that does not verify, for a principal and admin role
    // the configuration declares (never a managed one, which another node may have revoked): a change through
    // it stores a tagged document again (the way back).
    let admin_path = req.uri().path() == "/admin" || req.uri().path().starts_with("/admin/");
    if state.admin.unconfirmed().is_some()
        && !(admin_path && state.admin.admits_while_refusing(who))
    {
        rec.outcome = crate::audit::Outcome::Rejected;
        return Err(ApiError::access_unconfirmed());
    }

    // A change is audited before its answer; while the log cannot be written (a full disk), changes are
    // refused before they are made (after authentication: anonymous callers learn nothing of it). This
    // refusal's own line is the next attempt to write.
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && state.audit.as_ref().is_some_and(|a| a.is_failing())
    {
        rec.outcome = crate::audit::Outcome::Rejected;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The service is temporarily unavailable (its audit log cannot be written). Please retry.",
        ));
    }

    // How much (the request budgets) is decided with the policy's answer, in `gate`: a request refused by
    // access control spends only its principal's refusal budget, never the vault's.
    rec.outcome = Outcome::Rejected;

    // The admin API (no api-version).
    if req.uri().path() == "/admin" || req.uri().path().starts_with("/admin/") {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut decoded = Vec::new();
        let segs = path_segments(&path, &mut decoded);
        let query = req.uri().query().map(str::to_string);
        let (parts, body) = req.into_parts();
        return admin::handle(
            state,
            who,
            rec,
            method,
            &segs,
            query.as_deref(),
            IncomingBody::new(&parts.headers, body),
        )
        .await;
    }

    // 2. Which version of the API, and where the client thinks we are (a method no route answers is a 405
    // whatever the query says).
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let body = IncomingBody::new(&parts.headers, body);
    let mut decoded = Vec::new();
    let mut segs = path_segments(parts.uri.path(), &mut decoded);
    route_words_in_lower_case(&method, &mut segs);
    if !routed_method(&method) {
        return Err(ApiError::method_not_allowed(
            &method,
            vault_route_methods(&segs).unwrap_or_default(),
        ));
    }
    let query = parse_query(parts.uri.query());
    let api_version = api_version(&query)?;
    let base = vault_url(&parts.uri, &parts.headers, parts.version)?;
    let ctx = WireContext {
        vault_url: &base,
        recovery_level: state.vault.recovery_level(),
        retention_days: state.vault.settings().retention_days,
        api_version,
    };
    let vault = &state.vault;
    let map = |e| ApiError::from_vault(e, &base);

    // 3. What: route on method and path segments.
    let next_link = |path: &str, token: Option<String>| {
        token.map(|t| {
            let mut link = format!("{base}{path}?api-version={api_version}&$skiptoken={t}");
            // The number as parsed, not as sent (`%2B2` arrives as `+2`, which a client would send as a space).
            if let (Some(_), Ok(n)) = (&query.maxresults, page_size(&query)) {
                link.push_str(&format!("&maxresults={n}"));
            }
            link
        })
    };

    match (&method, segs.as_slice()) {
        (&Method::GET, ["secrets"]) => {
            let visible = gate_list(state, who, rec, Operation::SecretList)?;
            let ranges = visible.name_ranges();
            let filter = ranges.as_deref();
            let page = vault
                .list(query.skiptoken.as_deref(), page_size(&query)?, filter)
                .await
                .map_err(map)?;
            let result = ListResult {
                value: page.items.into_iter().map(|r| ctx.item(r, false)).collect(),
                next_link: next_link("/secrets", page.next),
            };
            Ok(json_response(StatusCode::OK, &result))
        }
        (&Method::POST, ["secrets", "restore"]) => {
            gate(state, who, rec, Operation::SecretRestore, None, None)?;
            // A place among the backups and restores in progress, from before the body is read until the
            // restore is done (at most `bulk_operations` restore bodies and their work at once).
            // Dropped while it waits for its place, it changed nothing either (408, as `change_body` says).
            // From restores' own body budget: a slow restore keeps its bytes for as long as it takes.
            let (_place, mut bytes) = change_body(rec, async {
                let place = state.limiter.bulk_place().await?;
                let bytes = read_body_as(
                    state.limiter.restore_body_read(),
                    body,
                    MAX_RESTORE_BODY_BYTES,
                )
                .await?;
                Ok((place, bytes))
            })
            .await?;
            let blob = restore_blob(&mut bytes).map_err(map)?;
            let row = vault.restore(blob).await.map_err(map)?;
            Ok(bundle_response(
                StatusCode::OK,
                &ctx.bundle(crate::vault::Secret { row, value: None }),
            ))
        }
        (&Method::PUT, ["secrets", name]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretSet, Some(name), None)?;
            let p: SecretSetParameters =
                change_body(rec, read_json(&state.limiter, body, MAX_BODY_BYTES)).await?;
            let attrs = attributes_input(p.content_type, p.tags, p.attributes);
            // Named in the audit line before the write: if the client goes away during it, the line (status
            // 499) says which version may have been made. A set refused names none.
            let version = crate::vault::new_version();
            rec.version = Some(version.clone());
            let secret = vault.set_as(name, version, p.value, attrs).await;
            if secret.is_err() {
                rec.version = None;
            }
            let secret = secret.map_err(map)?;
            Ok(bundle_response(StatusCode::OK, &ctx.bundle(secret)))
        }
        (&Method::GET, ["secrets", name]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretGet, Some(name), None)?;
            let secret = vault.get(name, None).await.map_err(map)?;
            Ok(bundle_response(StatusCode::OK, &ctx.bundle(secret)))
        }
        (&Method::PATCH, ["secrets", name]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretUpdate, Some(name), None)?;
            update(state, &ctx, rec, name, None, body)
                .await
                .map_err(|e| e.or_vault(&base))
        }
        (&Method::DELETE, ["secrets", name]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretDelete, Some(name), None)?;
            let deleted = vault.delete(name).await.map_err(map)?;
            Ok(json_response(StatusCode::OK, &ctx.deleted_bundle(deleted)))
        }
        (&Method::GET, ["secrets", name, "versions"]) => {
            valid_name(name, &base)?;
            gate(
                state,
                who,
                rec,
                Operation::SecretListVersions,
                Some(name),
                None,
            )?;
            let page = vault
                .list_versions(name, query.skiptoken.as_deref(), page_size(&query)?)
                .await
                .map_err(map)?;
            let result = ListResult {
                value: page.items.into_iter().map(|r| ctx.item(r, true)).collect(),
                next_link: next_link(&format!("/secrets/{name}/versions"), page.next),
            };
            Ok(json_response(StatusCode::OK, &result))
        }
        (&Method::POST, ["secrets", name, "backup"]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretBackup, Some(name), None)?;
            // The place is held until the answer has been sent or dropped: a client that does not read its
            // answers cannot pile up more than `bulk_operations` of them.
            let place = state.limiter.bulk_place().await?;
            let blob = vault.backup(name).await.map_err(map)?;
            let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(blob);
            Ok(respond::json_response_holding(
                StatusCode::OK,
                &BackupSecretResult { value: Some(value) },
                place,
            ))
        }
        (&Method::GET, ["secrets", name, version]) => {
            valid_name(name, &base)?;
            gate(
                state,
                who,
                rec,
                Operation::SecretGet,
                Some(name),
                Some(version),
            )?;
            if !rules::is_valid_version(version) {
                return Err(map(crate::vault::VaultError::not_found(
                    name,
                    Some(&printable(version)),
                )));
            }
            let secret = vault.get(name, Some(version)).await.map_err(map)?;
            Ok(bundle_response(StatusCode::OK, &ctx.bundle(secret)))
        }
        (&Method::PATCH, ["secrets", name, version]) => {
            valid_name(name, &base)?;
            gate(
                state,
                who,
                rec,
                Operation::SecretUpdate,
                Some(name),
                Some(version),
            )?;
            if !rules::is_valid_version(version) {
                return Err(map(crate::vault::VaultError::not_found(
                    name,
                    Some(&printable(version)),
                )));
            }
            update(state, &ctx, rec, name, Some(version), body)
                .await
                .map_err(|e| e.or_vault(&base))
        }
        (&Method::GET, ["deletedsecrets"]) => {
            let visible = gate_list(state, who, rec, Operation::SecretListDeleted)?;
            let ranges = visible.name_ranges();
            let filter = ranges.as_deref();
            let page = vault
                .list_deleted(query.skiptoken.as_deref(), page_size(&query)?, filter)
                .await
                .map_err(map)?;
            let result = ListResult {
                value: page
                    .items
                    .into_iter()
                    .map(|d| ctx.deleted_item(d))
                    .collect(),
                next_link: next_link("/deletedsecrets", page.next),
            };
            Ok(json_response(StatusCode::OK, &result))
        }
        (&Method::GET, ["deletedsecrets", name]) => {
            valid_name(name, &base)?;
            gate(
                state,
                who,
                rec,
                Operation::SecretGetDeleted,
                Some(name),
                None,
            )?;
            let deleted = vault.get_deleted(name).await.map_err(map)?;
            Ok(json_response(StatusCode::OK, &ctx.deleted_bundle(deleted)))
        }
        (&Method::DELETE, ["deletedsecrets", name]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretPurge, Some(name), None)?;
            vault.purge(name).await.map_err(map)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["deletedsecrets", name, "recover"]) => {
            valid_name(name, &base)?;
            gate(state, who, rec, Operation::SecretRecover, Some(name), None)?;
            let row = vault.recover(name).await.map_err(map)?;
            Ok(bundle_response(
                StatusCode::OK,
                &ctx.bundle(crate::vault::Secret { row, value: None }),
            ))
        }
        _ => Err(unrouted(&method, vault_route_methods(&segs), &segs)),
    }
}

/// Either an API error already, or a vault error still to be mapped.
enum UpdateError {
    Api(ApiError),
    Vault(crate::vault::VaultError),
}

impl UpdateError {
    fn or_vault(self, base: &str) -> ApiError {
        match self {
            UpdateError::Api(e) => e,
            UpdateError::Vault(e) => ApiError::from_vault(e, base),
        }
    }
}

async fn update(
    state: &HttpState,
    ctx: &WireContext<'_>,
    rec: &mut AuditRecord,
    name: &str,
    version: Option<&str>,
    body: IncomingBody,
) -> Result<Response, UpdateError> {
    crate::vault::check_name(name).map_err(UpdateError::Vault)?;
    let vault = &state.vault;
    let p: SecretUpdateParameters =
        change_body(rec, read_json(&state.limiter, body, MAX_BODY_BYTES))
            .await
            .map_err(UpdateError::Api)?;
    let attrs = attributes_input(p.content_type, p.tags, p.attributes);
    let secret = vault
        .update(name, version, attrs)
        .await
        .map_err(UpdateError::Vault)?;
    Ok(bundle_response(StatusCode::OK, &ctx.bundle(secret)))
}

/// The body of `POST /secrets/restore` (`{"value": blob}`, the property's name in any case, once). Its value
/// is borrowed from the body where it can be (a base64 text has nothing to unescape).
struct RestoreBody<'a> {
    value: Cow<'a, str>,
}

impl<'de> serde::Deserialize<'de> for RestoreBody<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
        }
        struct Value<'de>(Cow<'de, str>);
        impl<'de> serde::Deserialize<'de> for Value<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(Text).map(Value)
            }
        }
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = RestoreBody<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a restore object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if !key.eq_ignore_ascii_case("value") {
                        map.next_value::<IgnoredAny>()?;
                    } else if value.is_some() {
                        return Err(A::Error::duplicate_field("value"));
                    } else {
                        value = Some(map.next_value::<Value<'de>>()?.0);
                    }
                }
                value
                    .map(|value| RestoreBody { value })
                    .ok_or_else(|| A::Error::missing_field("value"))
            }
        }
        d.deserialize_map(Object)
    }
}

/// The backup blob of a restore body, decoded in the body's own buffer: the request's bytes are not held
/// beside a decoded copy, so a restore in flight holds about its body once (README, "Limits"). A blob that is
/// not base64url (the SDKs send it without padding; padding and standard base64 are tolerated) is a malformed
/// backup, as a blob that decodes to something else is.
fn restore_blob(bytes: &mut Zeroizing<Vec<u8>>) -> Result<&[u8], crate::vault::VaultError> {
    // Escapes of plain characters (`\u0041`, `\/`; no SDK writes them) are written out in place first, so that
    // the value is borrowed from the body: serde would otherwise build it in a scratch buffer and hand over a
    // copy, two more of a 32 MiB text beside the body.
    unescape_plain_in_place(bytes);
    let parsed: RestoreBody<'_> = match parse_json(bytes) {
        Ok(parsed) => parsed,
        Err(e) => return Err(crate::vault::VaultError::BadParameter(e.message)),
    };
    let range = match &parsed.value {
        // Where the value lies in the body (it was borrowed from it).
        Cow::Borrowed(text) => {
            let start = text.as_ptr() as usize - bytes.as_ptr() as usize;
            start..start + text.len()
        }
        // Another escape is left (a quote, a backslash, a control or non-ASCII character): no base64 text
        // holds one.
        Cow::Owned(_) => return Err(crate::vault::VaultError::MalformedBackup),
    };
    let n = decode_blob_in_place(bytes, range)?;
    Ok(&bytes[..n])
}

/// Rewrites, inside the JSON strings of `buf`, each escape of a printable ASCII character other than `"` and
/// `\` (`\uXXXX`, `\/`) as the character itself, and each escape of ASCII whitespace as a space, in place (the
/// text only shrinks; the bytes freed at the end are wiped). What a restore reads is unchanged: those characters
/// need no escape in a JSON string, and a blob's text is trimmed of whitespace at its ends and refused with it
/// inside. Other escapes, and anything outside strings, are left as they are (a malformed body stays malformed).
fn unescape_plain_in_place(buf: &mut Zeroizing<Vec<u8>>) {
    let Some(first) = buf.iter().position(|&b| b == b'\\') else {
        return;
    };
    // Whether `first` is inside a string: the quotes before it, not escaped, are odd in number.
    let mut in_string = false;
    let mut i = 0;
    while i < first {
        match buf[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            _ => {}
        }
        i += 1;
    }
    let (mut r, mut w) = (first, first);
    while r < buf.len() {
        let b = buf[r];
        if b == b'"' {
            in_string = !in_string;
        } else if b == b'\\' && in_string && r + 1 < buf.len() {
            // ASCII whitespace (`\n`, `\u000a`, …) is written as a space: a blob's text is trimmed of it at its
            // ends and refused with it inside, so the value reads the same (and a raw control character would
            // not be JSON).
            let plain = match buf[r + 1] {
                b'/' => Some((b'/', 2)),
                b't' | b'n' | b'f' | b'r' => Some((b' ', 2)),
                b'u' if r + 6 <= buf.len() => std::str::from_utf8(&buf[r + 2..r + 6])
                    .ok()
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .map(|c| if c.is_ascii_whitespace() { b' ' } else { c })
                    .filter(|c| (0x20..0x7f).contains(c) && *c != b'"' && *c != b'\\')
                    .map(|c| (c, 6)),
                _ => None,
            };
            let (c, len) = plain.unwrap_or((b, 0));
            if len > 0 {
                buf[w] = c;
                w += 1;
                r += len;
                continue;
            }
            // Kept as it is: the backslash and the character it escapes.
            buf[w] = b;
            buf[w + 1] = buf[r + 1];
            w += 2;
            r += 2;
            continue;
        }
        buf[w] = b;
        w += 1;
        r += 1;
    }
    buf[w..].fill(0);
    buf.truncate(w);
}

/// Decodes the base64 text at `range` of `buf` into the start of `buf`, a chunk at a time (each chunk is copied
/// out before its decoded bytes, never more than its text, are written at or before where it lay); returns the
/// decoded length.
fn decode_blob_in_place(
    buf: &mut [u8],
    range: std::ops::Range<usize>,
) -> Result<usize, crate::vault::VaultError> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let text = &buf[range.clone()];
    let trimmed = text.trim_ascii();
    let trimmed =
        &trimmed[..trimmed.len() - trimmed.iter().rev().take_while(|&&b| b == b'=').count()];
    let start = range.start + (trimmed.as_ptr() as usize - text.as_ptr() as usize);
    let end = start + trimmed.len();
    // One alphabet for the whole text: standard base64 when it has `+` or `/` (a text with no character of
    // either alphabet's own reads the same in both).
    let engine = if trimmed.iter().any(|&b| b == b'+' || b == b'/') {
        &STANDARD_NO_PAD
    } else {
        &URL_SAFE_NO_PAD
    };
    const CHUNK: usize = 4 * 1024;
    let mut chunk = Zeroizing::new([0u8; CHUNK]);
    let (mut read, mut written) = (start, 0);
    while read < end {
        let n = (end - read).min(CHUNK);
        chunk[..n].copy_from_slice(&buf[read..read + n]);
        read += n;
        written += base64::Engine::decode_slice(engine, &chunk[..n], &mut buf[written..])
            .map_err(|_| crate::vault::VaultError::MalformedBackup)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 request with a body counts as being handled on its connection from when its body has been
    /// read to its end until it is answered — however often its end is seen — and not at all when it is
    /// answered first (refused, or given up, before its body was whole).
    #[test]
    fn a_body_counts_on_its_connection_from_its_end_to_its_answer() {
        use std::sync::atomic::Ordering::SeqCst;
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let body = || {
            Arc::new(BodyEnd {
                read: std::sync::atomic::AtomicBool::new(false),
                connection: Some(count.clone()),
                counted: std::sync::atomic::AtomicU8::new(0),
            })
        };
        let whole = body();
        assert_eq!(count.load(SeqCst), 0);
        whole.reached();
        whole.reached();
        assert_eq!(count.load(SeqCst), 1);
        let other = body();
        other.reached();
        assert_eq!(count.load(SeqCst), 2);
        whole.answered();
        whole.answered();
        assert_eq!(count.load(SeqCst), 1);
        other.answered();
        assert_eq!(count.load(SeqCst), 0);
        let refused = body();
        refused.answered();
        refused.reached();
        assert_eq!(count.load(SeqCst), 0);
        assert!(refused.read.load(SeqCst));
    }

    /// [`super::read_body`] of a body sent as it is, without `Expect`.
    async fn read_body(
        limiter: &limits::Limiter,
        body: Body,
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, ApiError> {
        super::read_body(limiter, IncomingBody::plain(body), limit).await
    }

    /// A body frame is wiped once read unless something else still holds its bytes.
    #[test]
    fn read_frames_are_wiped_when_nothing_else_holds_them() {
        let frame = axum::body::Bytes::from(b"CANARY-frame".to_vec());
        let wiped = wipe_frame(frame).expect("the only handle");
        assert!(wiped.iter().all(|&b| b == 0), "{wiped:?}");
        let frame = axum::body::Bytes::from(b"CANARY-shared".to_vec());
        let other = frame.clone();
        assert!(wipe_frame(frame).is_none());
        assert_eq!(&other[..], b"CANARY-shared");
    }

    /// Bodies with and without a declared length, in one frame or several, arrive whole in a buffer that is
    /// wiped on drop; over the limit they get 413 either way.
    #[tokio::test]
    async fn bodies_arrive_whole_in_a_wiped_buffer() {
        use axum::body::Bytes;
        let chunks = |n: usize| {
            let frames: Vec<Result<Bytes, std::io::Error>> = (0..n)
                .map(|i| Ok(Bytes::from(format!("chunk {i:04};").into_bytes())))
                .collect();
            Body::from_stream(futures_util::stream::iter(frames))
        };
        let limiter = limits::Limiter::default();
        let whole: String = (0..300).map(|i| format!("chunk {i:04};")).collect();
        let got: Zeroizing<Vec<u8>> = read_body(&limiter, chunks(300), MAX_BODY_BYTES)
            .await
            .unwrap();
        assert_eq!(&got[..], whole.as_bytes());
        let got = read_body(&limiter, Body::from(whole.clone()), MAX_BODY_BYTES)
            .await
            .unwrap();
        assert_eq!(&got[..], whole.as_bytes());
        let got = read_body(&limiter, Body::empty(), MAX_BODY_BYTES)
            .await
            .unwrap();
        assert!(got.is_empty());
        for body in [chunks(300), Body::from(whole.clone())] {
            let e = read_body(&limiter, body, whole.len() - 1)
                .await
                .unwrap_err();
            assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        }
        // Growth keeps every byte (a new allocation each time, the old one wiped).
        let mut buf = Zeroizing::new(Vec::new());
        for i in 0..100u8 {
            append_wiped(&mut buf, &[i; 37]);
        }
        assert_eq!(buf.len(), 3700);
        assert!(
            buf.chunks(37)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8))
        );
    }

    /// The body budget a read takes is given back whatever the read ends in: a whole body, 413, a body
    /// that breaks off (400), one that stalls past its deadline (408, holding budget until then), and one
    /// the budget cannot hold (503).
    #[tokio::test(start_paused = true)]
    async fn the_body_budget_is_given_back_on_every_path() {
        use axum::body::Bytes;
        use futures_util::StreamExt;
        use std::time::Duration;
        let frames = |n: usize| -> Vec<Result<Bytes, std::io::Error>> {
            (0..n).map(|_| Ok(Bytes::from(vec![b'x'; 100]))).collect()
        };
        let limiter = Arc::new(limits::Limiter::new(limits::RequestLimits {
            body_deadline: Duration::from_secs(5),
            body_budget_bytes: 10_000,
            body_budget_wait: Duration::from_millis(100),
            ..Default::default()
        }));
        let l = &*limiter;
        let body = |n| Body::from_stream(futures_util::stream::iter(frames(n)));

        assert_eq!(read_body(l, body(30), 3000).await.unwrap().len(), 3000);
        assert_eq!(l.body_bytes_buffered(), 0);

        let e = read_body(l, body(30), 2999).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(l.body_bytes_buffered(), 0);

        let broken =
            futures_util::stream::iter(frames(5)).chain(futures_util::stream::iter([Err(
                std::io::Error::other("reset"),
            )]));
        let e = read_body(l, Body::from_stream(broken), 3000)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(l.body_bytes_buffered(), 0);

        // More than the budget: 503 once the wait is over.
        let e = read_body(l, body(101), 20_000).await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(limits::BUSY_RETRY_AFTER_SECS));
        assert_eq!(l.body_bytes_buffered(), 0);
        assert_eq!(l.budget_refusals(), 1);

        // A stalled body holds what it has until its deadline, then gets 408 and gives it back.
        let stalled = futures_util::stream::iter(frames(7)).chain(futures_util::stream::pending());
        let reading = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                read_body(&limiter, Body::from_stream(stalled), 3000)
                    .await
                    .map(|b| b.len())
            })
        };
        while l.body_bytes_buffered() < 700 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.body_bytes_buffered(), 700);
        let e = reading.await.unwrap().unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(e.code, "RequestTimeout");
        assert_eq!(l.body_bytes_buffered(), 0);
        assert_eq!(l.body_timeouts(), 1);
    }

    /// A body that declares `declared` bytes, sends its frames, then stalls.
    struct Declared {
        declared: u64,
        frames: std::collections::VecDeque<axum::body::Bytes>,
    }

    impl hyper::body::Body for Declared {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<axum::body::Bytes>, std::io::Error>>>
        {
            match self.frames.pop_front() {
                Some(data) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
                None => std::task::Poll::Pending,
            }
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.declared)
        }
    }

    /// A restore declaring 32 MiB that sends 64 KiB and a byte holds what it sent of the restore budget, not what
    /// it declared (the audit of the session's changes, M1: four such restores held the whole budget).
    #[tokio::test]
    async fn a_declared_length_is_not_charged_before_its_bytes_come() {
        let limiter = Arc::new(limits::Limiter::new(limits::RequestLimits {
            body_deadline: std::time::Duration::from_secs(60),
            ..Default::default()
        }));
        let sent = INITIAL_BODY_CAPACITY + 1;
        let body = Declared {
            declared: 32 << 20,
            frames: [
                axum::body::Bytes::from(vec![b' '; INITIAL_BODY_CAPACITY]),
                axum::body::Bytes::from_static(b" "),
            ]
            .into(),
        };
        let reading = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                read_body_as(
                    limiter.restore_body_read(),
                    IncomingBody::plain(Body::new(body)),
                    MAX_RESTORE_BODY_BYTES,
                )
                .await
                .map(|b| b.len())
            })
        };
        while limiter.restore_body_bytes_buffered() < sent {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.restore_body_bytes_buffered(), sent);
        reading.abort();
        let _ = reading.await;
        assert_eq!(limiter.restore_body_bytes_buffered(), 0);
    }

    /// The in-place unescaping gives what a full JSON parse gives: seeded random restore bodies whose blob text
    /// and another property mix plain escapes (`\uXXXX` of base64url characters in either case, `\/`) with
    /// escapes it must leave (`\"`, `\\`, `\n`, non-ASCII), compared with serde_json's reading of the same
    /// body followed by the same base64url decoding.
    #[test]
    fn in_place_unescaping_reads_as_a_json_parser_does() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut decoded, mut escaped) = (0, 0);
        for _ in 0..2_000 {
            let blob: Vec<u8> = (0..next(40)).map(|_| next(256) as u8).collect();
            let text = URL_SAFE_NO_PAD.encode(&blob);
            let mut value = String::new();
            for (i, c) in text.chars().enumerate() {
                match next(8) {
                    0 => value.push_str(&format!("\\u{:04x}", c as u32)),
                    1 => value.push_str(&format!("\\u{:04X}", c as u32)),
                    // Escapes a base64 text cannot hold, in its middle only (at its ends a JSON parser's
                    // whitespace would be trimmed away).
                    // Escaped whitespace, which a JSON parser's reading keeps and the blob's trim drops at
                    // its ends.
                    3 if (i == 0 || i + 1 == text.len()) && next(3) == 0 => {
                        let ws = ["\\n", "\\r\\n", "\\t", "\\f", "\\u000a", " "][next(6) as usize];
                        if i == 0 {
                            value.push_str(ws);
                            value.push(c);
                        } else {
                            value.push(c);
                            value.push_str(ws);
                        }
                    }
                    2 if i > 0 && next(6) == 0 => {
                        value.push_str(["\\\"", "\\\\", "\\n", "\\u00e9", "\\t"][next(5) as usize]);
                        value.push(c);
                    }
                    _ => value.push(c),
                }
            }
            let other = ["", r#""x":"a\"b\\","#, r#""x":"\u0022\/\"","#][next(3) as usize];
            let body = format!(r#"{{{other}"value":"{value}"}}"#);
            let reference = serde_json::from_str::<serde_json::Value>(&body).unwrap()["value"]
                .as_str()
                .map(|v| URL_SAFE_NO_PAD.decode(v.trim_ascii()).ok())
                .unwrap();
            let mut bytes = Zeroizing::new(body.clone().into_bytes());
            let ours = restore_blob(&mut bytes).ok().map(<[u8]>::to_vec);
            assert_eq!(ours, reference, "{body}");
            if reference.is_some() {
                assert_eq!(ours.as_deref(), Some(&blob[..]), "{body}");
                decoded += 1;
            }
            escaped += usize::from(body.contains("\\u"));
        }
        // Both outcomes, and escapes, were met.
        assert!(
            decoded > 500 && decoded < 2_000 && escaped > 1_000,
            "{decoded} {escaped}"
        );
    }

    #[test]
    fn a_restore_blob_is_decoded_in_the_body_buffer() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        // Several chunks and a remainder, with bytes that differ between the two alphabets.
        let blob: Vec<u8> = (0..10_000u32)
            .map(|i| (i * 7919 % 251) as u8 ^ 0xfb)
            .collect();
        let url = URL_SAFE_NO_PAD.encode(&blob);
        let std = STANDARD.encode(&blob);
        assert!(url.contains(['-', '_']) && std.contains(['+', '/']) && std.ends_with('='));
        for body in [
            format!(r#"{{"value":"{url}"}}"#),
            format!("\u{feff}{{ \"Value\" : \" {std} \", \"other\": [1] }}"),
            // Escapes of plain characters in the text (and in another property), written out in place.
            format!(
                r#"{{"x":"a\"\u0041\/","value":"\u{:04x}{}\u{:04X}"}}"#,
                url.as_bytes()[0],
                &url[1..url.len() - 1],
                url.as_bytes()[url.len() - 1]
            ),
        ] {
            let mut bytes = Zeroizing::new(body.into_bytes());
            assert_eq!(restore_blob(&mut bytes).unwrap(), &blob[..]);
        }
        for (body, malformed) in [
            (format!(r#"{{"value":"{}"}}"#, &url[..url.len() - 1]), true),
            (r#"{"value":"a-b+c"}"#.to_string(), true),
            (r#"{"value":"not base64!"}"#.to_string(), true),
            (r#"{"value":"a","VALUE":"b"}"#.to_string(), false),
            (r#"{"blob":"a"}"#.to_string(), false),
            (r#"{"value":null}"#.to_string(), false),
            // Other escapes: no base64 text holds them (whitespace inside the text neither).
            (r#"{"value":"AAAA\nAAAA"}"#.to_string(), true),
            (r#"{"value":"AAAA\u00e9AA"}"#.to_string(), true),
            (r#"{"value":"AAAA\u0022AA"}"#.to_string(), true),
            (r#"{"value":"AAAA\u+041"}"#.to_string(), false),
            // Outside a string an escape stays what it is: not JSON.
            (r#"{"value":"AAAA"\u007d"#.to_string(), false),
        ] {
            let mut bytes = Zeroizing::new(body.clone().into_bytes());
            let e = restore_blob(&mut bytes).unwrap_err();
            assert_eq!(
                matches!(e, crate::vault::VaultError::MalformedBackup),
                malformed,
                "{body}"
            );
        }
    }

    #[test]
    fn hosts_are_checked_and_one_is_required() {
        for good in [
            "myvault.localhost:8443",
            "127.0.0.1:443",
            "kv.vault.azure.net",
            "[::1]:8443",
            "[::1]",
            "under_score~x",
            "h:1",
            "h:65535",
            "[::1]:65535",
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            ":::",
            "a]b[:",
            "[::1",
            "[zz]:1",
            "a:b",
            "a:123456",
            "a b",
            "a/b",
            "a@b",
            ":80",
            // An empty port, port 0, or one past 65535.
            "h:",
            "h:0",
            "h:99999",
            "h:65536",
            "[::1]:",
            "[::1]:65536",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        let uri: http::Uri = "/secrets".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append(header::HOST, HeaderValue::from_static("a.example"));
        let h1 = http::Version::HTTP_11;
        assert_eq!(vault_url(&uri, &headers, h1).unwrap(), "https://a.example");
        headers.append(header::HOST, HeaderValue::from_static("b.example"));
        assert!(vault_url(&uri, &headers, h1).is_err());
        // An authority (HTTP/2's :authority, an absolute-form target) and a Host line: over HTTP/2 they must
        // agree (in any case); over HTTP/1.1 the target's authority wins. A scheme must be https.
        let h2 = http::Version::HTTP_2;
        let uri: http::Uri = "https://A.example:8443/secrets".parse().unwrap();
        let host = |h: &'static str| {
            let mut headers = HeaderMap::new();
            headers.append(header::HOST, HeaderValue::from_static(h));
            headers
        };
        assert_eq!(
            vault_url(&uri, &host("a.EXAMPLE:8443"), h2).unwrap(),
            "https://a.example:8443"
        );
        assert_eq!(
            vault_url(&uri, &HeaderMap::new(), h2).unwrap(),
            "https://a.example:8443"
        );
        assert!(vault_url(&uri, &host("evil.example"), h2).is_err());
        assert!(
            vault_url(&uri, &host("a.example"), h2).is_err(),
            "the port differs"
        );
        assert_eq!(
            vault_url(&uri, &host("evil.example"), h1).unwrap(),
            "https://a.example:8443"
        );
        for scheme in ["http", "ftp"] {
            let uri: http::Uri = format!("{scheme}://a.example/secrets").parse().unwrap();
            assert!(vault_url(&uri, &HeaderMap::new(), h2).is_err(), "{scheme}");
            assert!(vault_url(&uri, &HeaderMap::new(), h1).is_err(), "{scheme}");
        }
    }

    #[test]
    fn request_ids_are_unique_and_do_not_count() {
        // The permutation is one to one, whatever its round function.
        for f in [
            |r: u8, h: u32| u64::from(h) * 31 + u64::from(r),
            |_: u8, _: u32| 0,
        ] {
            let mut seen = std::collections::HashSet::new();
            for n in (0..20_000u64).chain((1 << 48) - 100..1 << 48) {
                assert!(seen.insert(permute48(n, f)), "{n}");
                assert!(permute48(n, f) < 1 << 48);
            }
        }
        let ids: Vec<String> = (0..10_000)
            .map(|_| RequestId::next().as_str().to_string())
            .collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4", "{id}");
            assert_eq!(id[..24], ids[0][..24], "one prefix per process");
        }
        // Consecutive ids are not consecutive numbers (nor, mostly, close: a counter showed the request rate).
        let tail = |id: &str| u64::from_str_radix(&id[24..], 16).unwrap();
        let close = ids
            .windows(2)
            .filter(|w| tail(&w[1]).abs_diff(tail(&w[0])) < 1 << 32)
            .count();
        assert!(
            close < 100,
            "{close} of 10,000 consecutive ids within 2^32 of each other"
        );
    }

    #[test]
    fn segments_decode_and_drop_one_trailing_slash() {
        let segments = |path: &str| path_segments(path, &mut Vec::new()).join("/");
        assert_eq!(segments("/secrets/abc/"), "secrets/abc");
        assert_eq!(segments("/secrets/abc"), "secrets/abc");
        assert_eq!(segments("/secrets"), "secrets");
        assert_eq!(segments("/secrets/"), "secrets");
        assert_eq!(segments("/"), "");
        assert_eq!(segments("/secrets/a%62c/versions"), "secrets/abc/versions");
        assert_eq!(segments("/secrets/a%2Fb/"), "secrets/a/b");
        assert_eq!(segments("/secrets/%zz%41/x"), "secrets/%zzA/x");
        let mut decoded = Vec::new();
        assert_eq!(
            path_segments("/secrets/a%2Fb/v", &mut decoded),
            ["secrets", "a/b", "v"]
        );
    }

    #[test]
    fn plain_queries_split_as_form_urlencoded_does() {
        for query in [
            "",
            "api-version=7.6",
            "api-version=7.6&maxresults=3&$skiptoken=abc",
            "&&api-version=7.4&",
            "api-version&maxresults=",
            "api-version==7.6=x&api-version=7.5",
            "maxresults=1&maxresults=2",
            "x=1&api-version=7.6;y",
        ] {
            let q = parse_query(Some(query));
            let mut expected: [Option<String>; 3] = Default::default();
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                let i = match k.as_ref() {
                    "api-version" => 0,
                    "maxresults" => 1,
                    "$skiptoken" => 2,
                    _ => continue,
                };
                expected[i].get_or_insert_with(|| v.into_owned());
            }
            let got = [&q.api_version, &q.maxresults, &q.skiptoken]
                .map(|v| v.as_deref().map(str::to_owned));
            assert_eq!(got, expected, "{query}");
        }
    }

    #[test]
    fn query_names_are_percent_decoded() {
        let q = parse_query(Some("api%2Dversion=7.4&maxresults=3&%24skiptoken=abc"));
        assert_eq!(q.api_version.as_deref(), Some("7.4"));
        assert_eq!(q.maxresults.as_deref(), Some("3"));
        assert_eq!(q.skiptoken.as_deref(), Some("abc"));
    }

    #[test]
    fn query_names_match_in_any_case() {
        for query in [
            "API-Version=7.4&MaxResults=3&$SkipToken=abc",
            "api%2DVERSION=7.4&MAXRESULTS=3&%24skipToken=abc",
        ] {
            let q = parse_query(Some(query));
            assert_eq!(q.api_version.as_deref(), Some("7.4"), "{query}");
            assert_eq!(q.maxresults.as_deref(), Some("3"), "{query}");
            assert_eq!(q.skiptoken.as_deref(), Some("abc"), "{query}");
        }
        // The first of two spellings counts, as for one.
        let q = parse_query(Some("Api-Version=7.5&api-version=7.6"));
        assert_eq!(q.api_version.as_deref(), Some("7.5"));
    }

    #[test]
    fn a_json_response_is_decorated_like_any_other() {
        let sorted = |h: &HeaderMap| {
            let mut v: Vec<(String, Vec<u8>)> = h
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            v.sort();
            v
        };
        for client in [None, Some(HeaderValue::from_static("client-1"))] {
            let json = || {
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(respond::JSON_CONTENT_TYPE),
                );
                h
            };
            let mut copied = json();
            decorate(
                &mut copied,
                client.clone(),
                HeaderValue::from_static("id-1"),
            );
            let mut each = json();
            decorate_each(&mut each, client.clone(), HeaderValue::from_static("id-1"));
            assert_eq!(sorted(&copied), sorted(&each));
            assert_eq!(copied.get(X_MS_REQUEST_ID).unwrap(), "id-1");
            assert_eq!(copied.len(), 8 + usize::from(client.is_some()));
        }
        // Anything else is decorated header by header, keeping its own headers.
        let mut other = HeaderMap::new();
        other.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        decorate(&mut other, None, HeaderValue::from_static("id-2"));
        assert_eq!(other.get(header::RETRY_AFTER).unwrap(), "3");
        assert_eq!(other.get(X_MS_REQUEST_ID).unwrap(), "id-2");
        assert_eq!(other.len(), 8);
    }

    #[test]
    fn only_collection_paths_skip_the_router() {
        for path in [
            "/secrets",
            "/secrets/",
            "/secrets/a",
            "/secrets/a/versions",
            "/secrets/restore",
            "/deletedsecrets",
            "/deletedsecrets/a/recover",
            "/secrets/oauth2x/v2.0/token",
        ] {
            assert!(skips_router(path), "{path}");
        }
        for path in [
            "",
            "/",
            "/healthz",
            "/readyz",
            "/admin",
            "/secretsx/a",
            "/Secrets/a",
            "/keyvault-rs/oauth2/v2.0/token",
            // The token issuer's routes of a tenant named like a collection.
            "/secrets/oauth2/v2.0/token",
            "/secrets/v2.0/.well-known/openid-configuration",
            "/deletedsecrets/.well-known/openid-configuration",
            "/secrets/discovery/keys",
        ] {
            assert!(!skips_router(path), "{path}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h).unwrap(), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER  a.b.c "),
        );
        assert_eq!(bearer(&h).unwrap(), Some(&b"a.b.c"[..]));
        // Not text: handed on as bytes; `handle` answers 401 unless the token cache holds exactly these bytes.
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer a\xffb").unwrap(),
        );
        assert_eq!(bearer(&h).unwrap(), Some(&b"a\xffb"[..]));
        // Two Authorization headers: refused, whatever they hold.
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y.z"),
        );
        let e = bearer(&h).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        h.remove(header::AUTHORIZATION);
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&h).is_err());
    }
}
