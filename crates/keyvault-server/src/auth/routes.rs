//! The Entra-compatible identity endpoints: OAuth2 client-credentials token endpoint, OIDC discovery, JWKS.
//!
//! - `POST /{tenant}/oauth2/v2.0/token`
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration` (and `/{tenant}/.well-known/openid-configuration`)
//! - `GET /{tenant}/discovery/v2.0/keys` (and `/{tenant}/discovery/keys`)
//!
//! Each also answers with a trailing `/`. Query strings are ignored.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::assertion::{AssertionError, ClientAssertions, JWT_BEARER};
use super::clients::{ClientRegistry, generate_client_id};
use super::keys::TOKEN_ALG;
use super::token::TokenIssuer;
use super::util::{rfc3339, utc_from_unix};

/// Refused token requests are logged within budgets (anyone can cause them: a flood of wrong secrets or
/// made-up client ids): 20 lines per 10 s for each reason, then a count (`not_logged`) on the reason's next
/// line logged. One budget per reason, so that a flood of one kind (wrong secrets, a full line) does not hide
/// the lines of another (an expired secret, an assertion a real client got wrong).
static TOKEN_BUSY_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(20);
static TOKEN_EXPIRED_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(20);
static TOKEN_INVALID_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(20);
static TOKEN_ASSERTION_LOG: crate::lograte::LogBudget = crate::lograte::LogBudget::new(20);

/// What the identity endpoints need. Cheap to clone.
#[derive(Clone)]
pub struct AuthState {
    /// Signs the tokens; its `iss` should be `https://{host}/{tenant}/v2.0`.
    pub issuer: Arc<TokenIssuer>,
    /// Who may ask for tokens.
    pub clients: Arc<ClientRegistry>,
    /// The one tenant served (compared exactly with the path segment).
    pub tenant: String,
    /// The resources tokens may be issued for (e.g. `https://localhost:8443`); a scope must name one of them.
    pub audiences: Vec<String>,
    /// Current time, Unix seconds ([`super::unix_now`] in production).
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Clients that may authenticate with a client assertion (certificates, federated credentials).
    pub assertions: Arc<ClientAssertions>,
    /// The token endpoint's URLs a certificate assertion's `aud` may name
    /// (`https://{host}/{tenant}/oauth2/v2.0/token`).
    pub assertion_audiences: Vec<String>,
    /// The server's bounds on request bodies (the form's deadline and its share of the body budget).
    pub limiter: Arc<crate::http::limits::Limiter>,
}

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthState")
            .field("issuer", &self.issuer)
            .field("clients", &self.clients)
            .field("tenant", &self.tenant)
            .field("audiences", &self.audiences)
            .field("assertions", &self.assertions)
            .finish_non_exhaustive()
    }
}

/// The router of the identity endpoints (state applied; merge it into the server's router).
pub fn router(state: AuthState) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/token/", post(token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration/",
            get(openid_configuration),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration/",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/discovery/v2.0/keys/", get(jwks))
        .route("/{tenant}/discovery/keys", get(jwks))
        .route("/{tenant}/discovery/keys/", get(jwks))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------------------------

/// The token request's known form fields; everything else is ignored.
#[derive(Default)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Zeroizing<String>>,
    client_assertion_type: Option<String>,
    client_assertion: Option<Zeroizing<String>>,
    scope: Option<String>,
}

impl TokenForm {
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut form = TokenForm::default();
        for (name, value) in form_urlencoded::parse(body) {
            let duplicate = match name.as_ref() {
                "grant_type" => form.grant_type.replace(value.into_owned()).is_some(),
                "client_id" => form.client_id.replace(value.into_owned()).is_some(),
                "client_secret" => form
                    .client_secret
                    .replace(Zeroizing::new(value.into_owned()))
                    .is_some(),
                "scope" => form.scope.replace(value.into_owned()).is_some(),
                "client_assertion_type" => form
                    .client_assertion_type
                    .replace(value.into_owned())
                    .is_some(),
                "client_assertion" => form
                    .client_assertion
                    .replace(Zeroizing::new(value.into_owned()))
                    .is_some(),
                _ => false,
            };
            if duplicate {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("AADSTS90015: The request parameter '{}' is repeated.", name),
                    &[],
                ));
            }
        }
        Ok(form)
    }
}

/// The most a token request's form may take (a client credentials request is a few hundred bytes).
const MAX_TOKEN_FORM_BYTES: usize = 64 * 1024;

/// The request's id, when the server gave it one (`x-ms-request-id`): an error's `trace_id` is the same, as
/// Entra ID's are.
#[derive(Clone, Debug)]
pub(crate) struct TraceId(pub(crate) String);

impl TraceId {
    /// The request's id, or a fresh one (a router without the server's layer: tests).
    fn or_new(given: Option<axum::Extension<TraceId>>) -> String {
        given.map_or_else(generate_client_id, |axum::Extension(TraceId(id))| id)
    }
}

/// What a token request's audit line records of it, on its response: the client id it named, if this server
/// knows it (`None`: none, unknown, or not printable) and whether it got a token.
#[derive(Clone, Debug)]
pub(crate) struct TokenRequestAudit {
    pub(crate) client_id: Option<String>,
    pub(crate) outcome: crate::audit::Outcome,
}

/// Where a token request's handler leaves the client id it named, once known and known to this server, for the
/// request's audit line when the request is dropped before its answer (its client gone while the secret is
/// checked: the line's `target`).
#[derive(Clone, Default)]
pub(crate) struct NamedClient(pub(crate) Arc<std::sync::OnceLock<String>>);

/// `id` if it is a client this server knows: what a request names may be anything — a secret pasted into the
/// wrong field among them.
fn known_client(state: &AuthState, id: &str) -> Option<String> {
    (!id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_graphic())
        && state.clients.contains(id))
    .then(|| id.to_owned())
}

async fn token(
    State(state): State<AuthState>,
    tenant: Result<Path<String>, axum::extract::rejection::PathRejection>,
    trace_id: Option<axum::Extension<TraceId>>,
    named: Option<axum::Extension<NamedClient>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let correlation = correlation_id(&headers);
    let trace_id = TraceId::or_new(trace_id);
    let named = named.map(|n| n.0).unwrap_or_default();
    let mut client_id = None;
    // The extractors' own refusals are plain text; a client of this endpoint expects the OAuth error shape.
    let result = match (
        tenant,
        crate::http::read_token_body(
            &state.limiter,
            crate::http::IncomingBody::new(&headers, body),
            MAX_TOKEN_FORM_BYTES,
        )
        .await,
    ) {
        (Err(_), _) => Err(OAuthError::tenant_not_found(
            "invalid_request",
            "(not valid UTF-8)",
        )),
        // The body budget spent: Entra ID's transient 503, with `Retry-After`.
        (_, Err(e)) if e.status == StatusCode::SERVICE_UNAVAILABLE => Err(
            OAuthError::temporarily_unavailable("too many request bodies being received"),
        ),
        (_, Err(e)) => Err(OAuthError::new(e.status, "invalid_request", e.message, &[])),
        (Ok(Path(tenant)), Ok(body)) => {
            token_inner(&state, &tenant, &headers, &body, &mut client_id, &named).await
        }
    };
    use crate::audit::Outcome;
    let (mut response, outcome) = match result {
        Ok(response) => (response, Outcome::Allowed),
        Err(e) => {
            let outcome = match e.status {
                StatusCode::UNAUTHORIZED => Outcome::Unauthenticated,
                // The line of secret checks, or the body budget, is full.
                StatusCode::SERVICE_UNAVAILABLE => Outcome::Throttled,
                _ => Outcome::Rejected,
            };
            (e.into_response(&state, &trace_id, &correlation), outcome)
        }
    };
    let client_id = client_id.and_then(|id| known_client(&state, &id));
    response
        .extensions_mut()
        .insert(TokenRequestAudit { client_id, outcome });
    response
}

/// The token request in `body`; `client_id` is set to the client id it names as soon as that is known.
async fn token_inner(
    state: &AuthState,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
    client_id: &mut Option<String>,
    named: &NamedClient,
) -> Result<Response, OAuthError> {
    if tenant != state.tenant {
        return Err(OAuthError::tenant_not_found("invalid_request", tenant));
    }
    let form = TokenForm::parse(body)?;

    client_id.clone_from(&form.client_id);
    let grant_type = form
        .grant_type
        .as_deref()
        .ok_or_else(|| OAuthError::missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "AADSTS70003: The app requested an unsupported grant type '{}'.",
                truncate(grant_type, 64)
            ),
            &[70003],
        ));
    }

    // A client assertion (a certificate's signed JWT, or a federated token) instead of a secret.
    if form.client_assertion.is_some() || form.client_assertion_type.is_some() {
        if form.client_secret.is_some() || basic_credentials(headers)?.is_some() {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "AADSTS90014: More than one client authentication method was used.".into(),
                &[90014],
            ));
        }
        let audience = requested_audience(&form, state)?;
        if let Some(id) = form
            .client_id
            .as_deref()
            .and_then(|id| known_client(state, id))
        {
            let _ = named.0.set(id);
        }
        let verified = verify_assertion(state, &form).await?;
        *client_id = Some(verified.clone());
        return issue(state, &verified, &audience);
    }

    // Client credentials: in the body (client_secret_post) or in HTTP Basic (client_secret_basic), not both.
    let basic = basic_credentials(headers)?;
    if let Some((id, _)) = &basic {
        *client_id = Some(id.clone());
    }
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => {
            if form.client_secret.is_some() {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "AADSTS90014: More than one client authentication method was used.".into(),
                    &[90014],
                ));
            }
            if form
                .client_id
                .as_deref()
                .is_some_and(|body_id| body_id != id)
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "AADSTS90014: The client_id in the body does not match the Authorization header."
                        .into(),
                    &[90014],
                ));
            }
            (id, Some(secret))
        }
        None => (
            form.client_id
                .clone()
                .ok_or_else(|| OAuthError::missing_parameter("client_id"))?,
            form.client_secret.clone(),
        ),
    };

    let audience = requested_audience(&form, state)?;

    let Some(secret) = client_secret.filter(|s| !s.is_empty()) else {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
            &[7000218],
        ));
    };

    if let Some(id) = known_client(state, &client_id) {
        let _ = named.0.set(id);
    }
    let verdict = state
        .clients
        .verify_async_at(&client_id, &secret, (state.clock)())
        .await;
    if verdict == super::clients::Verdict::Busy {
        crate::budgeted_log!(TOKEN_BUSY_LOG, info, client_id = %logged_client_id(state, Some(&client_id)), "token request refused: too many client secret checks running and waiting");
        return Err(OAuthError::temporarily_unavailable(
            "too many token requests are being checked",
        ));
    }
    if verdict == super::clients::Verdict::Expired {
        crate::budgeted_log!(TOKEN_EXPIRED_LOG, info, client_id = %logged_client_id(state, Some(&client_id)), "token request refused: expired client secret");
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!(
                "AADSTS7000222: The provided client secret keys for app '{}' are expired. Create new keys for \
                 your app, or consider using certificate credentials for added security.",
                truncate(&client_id, 64)
            ),
            &[7000222],
        ));
    }
    if verdict != super::clients::Verdict::Valid {
        crate::budgeted_log!(TOKEN_INVALID_LOG, info, client_id = %logged_client_id(state, Some(&client_id)), "token request refused: invalid client credentials");
        // The same answer for an unknown client and a wrong secret.
        let mut err = OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.".into(),
            &[7000215],
        );
        err.basic_challenge = headers.contains_key(header::AUTHORIZATION);
        return Err(err);
    }

    issue(state, &client_id, &audience)
}

/// The audience the request's `scope` asks for (one of the configured resources).
fn requested_audience(form: &TokenForm, state: &AuthState) -> Result<String, OAuthError> {
    let scope = form
        .scope
        .as_deref()
        .ok_or_else(|| OAuthError::missing_parameter("scope"))?;
    audience_for_scope(scope, &state.audiences).ok_or_else(|| {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!(
                "AADSTS70011: The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {} is not valid.",
                truncate(scope, 200)
            ),
            &[70011],
        )
    })
}

/// Verifies the request's client assertion; returns the client it stands for.
async fn verify_assertion(state: &AuthState, form: &TokenForm) -> Result<String, OAuthError> {
    let assertion_type = (form.client_assertion_type.as_deref())
        .ok_or_else(|| OAuthError::missing_parameter("client_assertion_type"))?;
    if assertion_type != JWT_BEARER {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "AADSTS50027: The client_assertion_type '{}' is not supported; it must be '{JWT_BEARER}'.",
                truncate(assertion_type, 100)
            ),
            &[50027],
        ));
    }
    let assertion = (form.client_assertion.as_deref())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| OAuthError::missing_parameter("client_assertion"))?;
    let client_id = form.client_id.as_deref().filter(|c| !c.is_empty());
    let now = (state.clock)();
    // A claim given twice (certificate assertions and federated tokens alike): refused before anything else.
    let verdict = if super::token::payload_has_duplicate_member(assertion) {
        Err(AssertionError::Malformed)
    } else {
        state
            .assertions
            .verify(client_id, assertion, &state.assertion_audiences, now)
            .await
    };
    let verdict = verdict.and_then(|id| {
        // A client removed since (or only in the assertion configuration) gets no token.
        if state.clients.contains(&id) {
            Ok(id)
        } else {
            Err(AssertionError::BadSignature)
        }
    });
    verdict.map_err(|e| {
        crate::budgeted_log!(TOKEN_ASSERTION_LOG, info, client_id = %logged_client_id(state, client_id), reason = ?e, "token request refused: client assertion");
        let who = truncate(client_id.unwrap_or("(from the assertion)"), 64);
        assertion_error(e, who)
    })
}

/// The OAuth error of a refused assertion, worded as Entra words it.
fn assertion_error(e: AssertionError, client_id: &str) -> OAuthError {
    use AssertionError as A;
    let (status, error, description, codes): (_, _, String, &'static [u32]) = match e {
        A::Malformed => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS50027: JWT token is invalid or malformed.".into(),
            &[50027],
        ),
        A::CriticalHeader => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS50027: JWT token is invalid or malformed. Its header has a 'crit' parameter: no JWS \
             extension is supported (RFC 7515 section 4.1.11)."
                .into(),
            &[50027],
        ),
        // Entra answers a certificate (key credential) outside its dates with AADSTS700027 and the reason
        // "The key used is expired", naming the thumbprint and the key's start and end.
        A::CertificateExpired(c) => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!(
                "AADSTS700027: Client assertion is signed with an expired certificate of app '{client_id}': \
                 x5t#S256 '{}', notAfter {} (notBefore {}). Sign with a valid certificate configured for \
                 the app.",
                c.x5t_s256,
                rfc3339(c.not_after),
                rfc3339(c.not_before)
            ),
            &[700027],
        ),
        A::CertificateNotYetValid(c) => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!(
                "AADSTS700027: Client assertion is signed with a certificate of app '{client_id}' that is \
                 not yet valid: x5t#S256 '{}', notBefore {} (notAfter {}). Sign with a valid certificate \
                 configured for the app.",
                c.x5t_s256,
                rfc3339(c.not_before),
                rfc3339(c.not_after)
            ),
            &[700027],
        ),
        A::BadSignature => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!(
                "AADSTS700027: Client assertion failed signature validation. No certificate of app '{client_id}' \
                 matches the assertion's x5t#S256 (or x5t) and verifies its signature."
            ),
            &[700027],
        ),
        A::WrongClient => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter."
                .into(),
            &[700021],
        ),
        A::WrongAudience => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700023: Client assertion audience claim does not match Realm issuer: 'aud' must be this \
             server's token endpoint URL."
                .into(),
            &[700023],
        ),
        A::NotInValidTimeRange => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700024: Client assertion is not within its valid time range (it must have 'exp' in the \
             future, at most an hour away, and no 'nbf' in the future)."
                .into(),
            &[700024],
        ),
        A::Replayed => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS50027: The client assertion has no 'jti', or its 'jti' was used before: make a new \
             assertion for each request."
                .into(),
            &[50027],
        ),
        A::ReplayCacheFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "AADSTS90033: A transient error has occurred (too many client assertions in use). Please try \
             again."
                .into(),
            &[90033],
        ),
        A::NoFederatedAudience => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700212: No matching federated identity record found for presented assertion audience."
                .into(),
            &[700212],
        ),
        A::NoFederatedSubject => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700213: No matching federated identity record found for presented assertion subject."
                .into(),
            &[700213],
        ),
        // One answer until a signature has verified: whether the client has a federated credential for the
        // assertion's issuer at all (Entra's AADSTS700211) is not told to a caller who cannot sign for that
        // issuer (the log has the reason). The audience and subject codes above come only after it verified.
        A::NoFederatedIssuer | A::FederatedSignature => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS50013: Assertion failed signature validation: it is not signed by a key of an issuer \
             that a federated identity record of this app names (no record names the assertion's issuer, \
             or none of that issuer's keys verifies it)."
                .into(),
            &[50013],
        ),
    };
    OAuthError::new(status, error, description, codes)
}

/// A caller's client id as a log line shows it: the id when it names a known client; otherwise only that it is
/// unknown and its length, never its text (a secret pasted into the wrong field, such as `client_id` and
/// `client_secret` swapped, must not reach the log).
enum LoggedClientId<'a> {
    Known(&'a str),
    Unknown { chars: usize },
    FromAssertion,
}

fn logged_client_id<'a>(state: &AuthState, client_id: Option<&'a str>) -> LoggedClientId<'a> {
    match client_id {
        Some(id) if state.clients.contains(id) => LoggedClientId::Known(id),
        Some(id) => LoggedClientId::Unknown {
            chars: id.chars().count(),
        },
        None => LoggedClientId::FromAssertion,
    }
}

impl fmt::Display for LoggedClientId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoggedClientId::Known(id) => write!(f, "{id:?}"),
            LoggedClientId::Unknown { chars } => write!(f, "(unknown, {chars} characters)"),
            LoggedClientId::FromAssertion => f.write_str("(from the assertion)"),
        }
    }
}

/// Issues an access token to `client_id` for `audience`.
fn issue(state: &AuthState, client_id: &str, audience: &str) -> Result<Response, OAuthError> {
    let now = (state.clock)();
    let (access_token, expires_in) = state.issuer.issue(client_id, audience, now).map_err(|e| {
        tracing::error!(error = %e, "could not issue a token");
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "AADSTS50000: There was an error issuing a token.".into(),
            &[50000],
        )
    })?;
    tracing::info!(client_id = ?client_id, audience = %audience, "issued access token");
    let body = json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1: each part form-urlencoded). `None` when
/// there is no Basic header. Two `Authorization` headers are refused, as on the vault API: which one counts
/// would be a guess, and a proxy in front may have guessed otherwise.
fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<(String, Zeroizing<String>)>, OAuthError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request has more than one Authorization header.".into(),
            &[900144],
        ));
    }
    let bad = || {
        OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000216: The Authorization header does not carry valid Basic client credentials."
                .into(),
            &[7000216],
        )
    };
    let Ok(value) = value.to_str() else {
        return Err(bad());
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| bad())?);
    let decoded = std::str::from_utf8(&decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let id = form_decode(id).ok_or_else(bad)?;
    let secret = Zeroizing::new(form_decode(secret).ok_or_else(bad)?);
    if id.is_empty() {
        return Err(bad());
    }
    Ok(Some((id, secret)))
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte); `None` if the result is
/// not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The audience a scope asks for: `<resource>/.default` (or a bare `<resource>`), matched against the
/// configured audiences ignoring a trailing `/` and ASCII case. Several space-separated scopes are accepted
/// when exactly one of them is a `/.default` scope (the others, e.g. `openid`, are ignored).
fn audience_for_scope(scope: &str, audiences: &[String]) -> Option<String> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let defaults: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|s| s.ends_with("/.default"))
        .collect();
    let resource = match (defaults.len(), scopes.len()) {
        (1, _) => defaults[0].strip_suffix("/.default")?,
        (0, 1) => scopes[0],
        _ => return None,
    };
    let want = resource.trim_end_matches('/');
    if want.is_empty() {
        return None;
    }
    audiences
        .iter()
        .find(|a| a.trim_end_matches('/').eq_ignore_ascii_case(want))
        .cloned()
}

// ---------------------------------------------------------------------------------------------------------
// Discovery and JWKS
// ---------------------------------------------------------------------------------------------------------

async fn openid_configuration(
    State(state): State<AuthState>,
    Path(tenant): Path<String>,
    version: http::Version,
    trace_id: Option<axum::Extension<TraceId>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (trace_id, correlation) = (TraceId::or_new(trace_id), correlation_id(&headers));
    if tenant != state.tenant {
        return OAuthError::tenant_not_found("invalid_tenant", &tenant).into_response(
            &state,
            &trace_id,
            &correlation,
        );
    }
    let Some(host) = request_host(&headers, &uri, version) else {
        return OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900023: The request has no valid Host header.".into(),
            &[900023],
        )
        .into_response(&state, &trace_id, &correlation);
    };
    let base = format!("https://{host}/{tenant}");
    let doc = json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": [TOKEN_ALG],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "grant_types_supported": ["client_credentials"],
        "issuer": format!("{base}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "appid", "jti"],
        "tenant_region_scope": null,
    });
    json_response(StatusCode::OK, &doc)
}

async fn jwks(
    State(state): State<AuthState>,
    Path(tenant): Path<String>,
    trace_id: Option<axum::Extension<TraceId>>,
    headers: HeaderMap,
) -> Response {
    if tenant != state.tenant {
        return OAuthError::tenant_not_found("invalid_tenant", &tenant).into_response(
            &state,
            &TraceId::or_new(trace_id),
            &correlation_id(&headers),
        );
    }
    json_response(StatusCode::OK, &state.issuer.jwks())
}

/// `host[:port]` the client used: the `Host` header (HTTP/1.1), else the URI authority (HTTP/2
/// `:authority`). Only characters valid in a host and port are accepted.
/// The host the client addressed, by the vault API's rule ([`crate::http::request_host`]): the URI's
/// authority (HTTP/2) or the one `Host` line; none when there are two `Host` lines or the name is not a
/// valid host (the discovery document's URLs are built from it).
fn request_host(headers: &HeaderMap, uri: &Uri, version: http::Version) -> Option<String> {
    crate::http::request_host(uri, headers, version).map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------------------

/// An OAuth2 error in Entra's shape.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    codes: &'static [u32],
    /// Add `WWW-Authenticate: Basic` (RFC 6749 §5.2, when the client used HTTP Basic).
    basic_challenge: bool,
    /// `Retry-After` seconds (a busy endpoint: MSAL and the Azure SDKs' retry policies honour it).
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(
        status: StatusCode,
        error: &'static str,
        description: String,
        codes: &'static [u32],
    ) -> Self {
        Self {
            status,
            error,
            description,
            codes,
            basic_challenge: false,
            retry_after: None,
        }
    }

    fn tenant_not_found(error: &'static str, tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            error,
            format!(
                "AADSTS90002: Tenant '{}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.",
                truncate(tenant, 100)
            ),
            &[90002],
        )
    }

    fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "AADSTS900144: The request body must contain the following parameter: '{name}'."
            ),
            &[900144],
        )
    }

    /// Entra ID's answer to a transient failure (`AADSTS90033`, 503 with `Retry-After: 1`); `what` says what
    /// is too busy or not ready.
    fn temporarily_unavailable(what: &str) -> Self {
        let mut err = OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            format!("AADSTS90033: A transient error has occurred ({what}). Please try again."),
            &[90033],
        );
        err.retry_after = Some(1);
        err
    }

    fn into_response(self, state: &AuthState, trace_id: &str, correlation_id: &str) -> Response {
        self.into_response_at((state.clock)(), trace_id, correlation_id)
    }

    fn into_response_at(self, now: i64, trace_id: &str, correlation_id: &str) -> Response {
        let (y, mo, d, h, mi, s) = utc_from_unix(now);
        let timestamp = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z");
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "{}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.description
            ),
            "error_codes": self.codes,
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        });
        let mut response = json_response(self.status, &body);
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keyvault-rs\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The token endpoint's 503 `temporarily_unavailable` (`AADSTS90033`, `Retry-After: 1`) at time `now`, for a
/// refusal made in front of it; `what` says what is not ready.
pub(crate) fn temporarily_unavailable(
    headers: &HeaderMap,
    now: i64,
    trace_id: &str,
    what: &str,
) -> Response {
    OAuthError::temporarily_unavailable(what).into_response_at(
        now,
        trace_id,
        &correlation_id(headers),
    )
}

/// The client's `client-request-id` when it is UUID-shaped, else a fresh id.
fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 36 && v.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .unwrap_or_else(generate_client_id)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// At most `max` characters of `s` (for echoing client input in messages).
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::{SigningKey, hash_secret};

    const NOW: i64 = 1_700_000_000;
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT_ID: &str = "0e9f5a8e-6d2b-4c1e-9f3a-2b7c8d9e0f1a";
    // Contains characters that need form/percent encoding.
    const SECRET: &str = "s3cr3t~value+with/odd=chars&more";
    const AUD: &str = "https://localhost:8443";

    fn secret_hash() -> &'static str {
        static HASH: OnceLock<String> = OnceLock::new();
        HASH.get_or_init(|| hash_secret(SECRET).unwrap())
    }

    fn state() -> AuthState {
        let key = Arc::new(SigningKey::generate().unwrap());
        let issuer = TokenIssuer::new(
            key,
            format!("https://localhost:8443/{TENANT}/v2.0"),
            TENANT.into(),
            3600,
        );
        let clients = ClientRegistry::new();
        clients.add(CLIENT_ID, secret_hash()).unwrap();
        AuthState {
            issuer: Arc::new(issuer),
            clients: Arc::new(clients),
            tenant: TENANT.into(),
            audiences: vec![AUD.into()],
            clock: Arc::new(|| NOW),
            assertions: Arc::new(ClientAssertions::new()),
            assertion_audiences: vec![format!("https://localhost:8443/{TENANT}/oauth2/v2.0/token")],
            limiter: Default::default(),
        }
    }

    fn enc(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    fn python_form(client_id: &str, secret: &str, scope: &str) -> String {
        format!(
            "client_id={}&client_secret={}&grant_type=client_credentials&scope={}&client_info=1",
            enc(client_id),
            enc(secret),
            enc(scope)
        )
    }

    async fn send(state: &AuthState, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = router(state.clone()).oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, body)
    }

    fn post_form(path: &str, body: String) -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("host", "localhost:8443")
            .body(Body::from(body))
            .unwrap()
    }

    fn get(path: &str, host: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    }

    /// What the extractors would have refused as plain text is answered in the OAuth error shape.
    #[tokio::test]
    async fn bad_paths_and_oversized_forms_get_oauth_errors() {
        let state = state();
        let (status, _, body) =
            send(&state, post_form("/%ff/oauth2/v2.0/token", String::new())).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        let big = format!("grant_type=client_credentials&pad={}", "a".repeat(100_000));
        let (status, _, body) = send(&state, post_form(&token_path(), big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(body["error_codes"].is_array(), "{body}");
    }

    fn token_path() -> String {
        format!("/{TENANT}/oauth2/v2.0/token")
    }

    fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_error: &str) {
        assert_eq!(status, want_status, "{body}");
        assert_eq!(body["error"], want_error, "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS")
        );
        assert!(body["error_codes"].is_array());
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(body["trace_id"].as_str().unwrap().len(), 36);
        assert_eq!(body["correlation_id"].as_str().unwrap().len(), 36);
    }

    #[tokio::test]
    async fn token_success_with_python_form() {
        let state = state();
        let req = post_form(
            &format!("{}?client-request-id=abc&x=1", token_path()),
            python_form(CLIENT_ID, SECRET, "https://localhost:8443/.default"),
        );
        let (status, headers, body) = send(&state, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["content-type"], "application/json; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_in"].is_i64(), "{body}");
        assert_eq!(body["expires_in"], 3599);
        assert_eq!(body["ext_expires_in"], 3599);
        let token = body["access_token"].as_str().unwrap();

        let verifier = state.issuer.verifier(state.audiences.clone());
        let principal = verifier.verify(token, NOW).unwrap();
        assert_eq!(&*principal.id, CLIENT_ID);
        assert_eq!(&*principal.tenant, TENANT);

        // The JWKS publishes the key id the token is signed with.
        let (status, _, jwks) = send(
            &state,
            get(&format!("/{TENANT}/discovery/v2.0/keys"), "localhost:8443"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
        let (_, _, jwks2) = send(
            &state,
            get(&format!("/{TENANT}/discovery/keys/"), "localhost:8443"),
        )
        .await;
        assert_eq!(jwks, jwks2);
    }

    #[tokio::test]
    async fn token_with_basic_auth_and_several_scopes() {
        let state = state();
        let basic = STANDARD.encode(format!("{}:{}", enc(CLIENT_ID), enc(SECRET)));
        let req = Request::builder()
            .method("POST")
            .uri(format!("{}/", token_path()))
            .header("authorization", format!("Basic {basic}"))
            .body(Body::from(
                "grant_type=client_credentials&scope=openid+https%3A%2F%2Flocalhost%3A8443%2F.default+offline_access",
            ))
            .unwrap();
        let (status, _, body) = send(&state, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = body["access_token"].as_str().unwrap();
        let verifier = state.issuer.verifier(state.audiences.clone());
        assert_eq!(verifier.verify(token, NOW).unwrap().id, CLIENT_ID.into());

        // Basic and a body secret at once is refused.
        let req = Request::builder()
            .method("POST")
            .uri(token_path())
            .header("authorization", format!("Basic {basic}"))
            .body(Body::from(python_form(
                CLIENT_ID,
                SECRET,
                "https://localhost:8443/.default",
            )))
            .unwrap();
        let (status, _, body) = send(&state, req).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }

    #[tokio::test]
    async fn wrong_secret_and_unknown_client_look_the_same() {
        let state = state();
        let (status, headers, wrong) = send(
            &state,
            post_form(
                &token_path(),
                python_form(
                    CLIENT_ID,
                    "not-the-secret",
                    "https://localhost:8443/.default",
                ),
            ),
        )
        .await;
        assert_error(status, &wrong, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers.get("www-authenticate").is_none());
        let (status, _, unknown) = send(
            &state,
            post_form(
                &token_path(),
                python_form("someone-else", SECRET, "https://localhost:8443/.default"),
            ),
        )
        .await;
        assert_error(status, &unknown, StatusCode::UNAUTHORIZED, "invalid_client");
        let first_line = |v: &Value| {
            v["error_description"]
                .as_str()
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(first_line(&wrong), first_line(&unknown));
        assert_eq!(wrong["error_codes"], unknown["error_codes"]);
        // The secret is never echoed.
        assert!(!wrong.to_string().contains("not-the-secret"));
    }

    #[tokio::test]
    async fn request_errors() {
        let state = state();
        let scope = "https://localhost:8443/.default";

        // Wrong tenant.
        let (status, _, body) = send(
            &state,
            post_form(
                "/other-tenant/oauth2/v2.0/token",
                python_form(CLIENT_ID, SECRET, scope),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("AADSTS90002: Tenant 'other-tenant' not found")
        );

        // Bad scopes (refused before any secret is checked).
        for bad in [
            "https://vault.azure.net/.default",
            "https://localhost:8444/.default",
            "https://localhost:8443/.default https://other/.default",
            "openid profile",
            "/.default",
            "",
        ] {
            let (status, _, body) = send(
                &state,
                post_form(&token_path(), python_form(CLIENT_ID, SECRET, bad)),
            )
            .await;
            assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_scope");
        }

        // Missing scope.
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                format!("client_id={CLIENT_ID}&client_secret=x&grant_type=client_credentials"),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

        // Other grant types, missing grant type.
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                format!("grant_type=password&client_id={CLIENT_ID}&username=a&password=b"),
            ),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        );
        let (status, _, body) = send(
            &state,
            post_form(&token_path(), format!("client_id={CLIENT_ID}")),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

        // Missing client_id / client_secret.
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                format!("grant_type=client_credentials&scope={}", enc(scope)),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                format!(
                    "grant_type=client_credentials&client_id={CLIENT_ID}&scope={}",
                    enc(scope)
                ),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");

        // Repeated parameter.
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                "grant_type=client_credentials&grant_type=client_credentials".into(),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

        // Malformed Basic header.
        let req = Request::builder()
            .method("POST")
            .uri(token_path())
            .header("authorization", "Basic !!!")
            .body(Body::from(format!(
                "grant_type=client_credentials&scope={}",
                enc(scope)
            )))
            .unwrap();
        let (status, _, body) = send(&state, req).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");

        // The correlation id is echoed when the client sends one.
        let req = Request::builder()
            .method("POST")
            .uri("/nope/oauth2/v2.0/token")
            .header("client-request-id", "11111111-2222-3333-4444-555555555555")
            .body(Body::empty())
            .unwrap();
        let (_, _, body) = send(&state, req).await;
        assert_eq!(
            body["correlation_id"],
            "11111111-2222-3333-4444-555555555555"
        );
    }

    /// Client assertions: the form's rules (the assertion's own checks are `assertion`'s tests).
    #[tokio::test]
    async fn client_assertion_forms() {
        let state = state();
        let scope = enc("https://localhost:8443/.default");
        let jwt_bearer = enc(JWT_BEARER);
        let code = |body: &Value| body["error_codes"][0].as_u64();
        // A secret and an assertion together.
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                format!(
                    "client_id={CLIENT_ID}&client_secret=x&client_assertion_type={jwt_bearer}\
                     &client_assertion=a.b.c&grant_type=client_credentials&scope={scope}"
                ),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(code(&body), Some(90014));
        // Another assertion type; none; no assertion.
        for (form, want) in [
            (
                format!("client_assertion_type=saml&client_assertion=a.b.c&scope={scope}"),
                "not supported",
            ),
            (
                format!("client_assertion=a.b.c&scope={scope}"),
                "'client_assertion_type'",
            ),
            (
                format!("client_assertion_type={jwt_bearer}&scope={scope}"),
                "'client_assertion'",
            ),
        ] {
            let form = format!("client_id={CLIENT_ID}&grant_type=client_credentials&{form}");
            let (status, _, body) = send(&state, post_form(&token_path(), form)).await;
            assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
            let description = body["error_description"].as_str().unwrap();
            assert!(description.contains(want), "{description}");
        }
        // Not a JWT; a JWT of a client with no certificate.
        let (status, _, body) = send(
            &state,
            post_form(
                &token_path(),
                format!(
                    "client_id={CLIENT_ID}&client_assertion_type={jwt_bearer}&client_assertion=garbage\
                     &grant_type=client_credentials&scope={scope}"
                ),
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(code(&body), Some(50027));
        let b64 = |v: Value| {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            URL_SAFE_NO_PAD.encode(v.to_string())
        };
        // An assertion with this header, unsigned claims of the client and a made-up signature.
        let send_assertion = async |header: Value| {
            let assertion = format!(
                "{}.{}.c2ln",
                b64(header),
                b64(
                    json!({"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": "x", "exp": NOW + 60, "jti": "1"})
                )
            );
            let (status, _, body) = send(
                &state,
                post_form(
                    &token_path(),
                    format!(
                        "client_id={CLIENT_ID}&client_assertion_type={jwt_bearer}&client_assertion={assertion}\
                         &grant_type=client_credentials&scope={scope}"
                    ),
                ),
            )
            .await;
            (status, body)
        };
        let (status, body) =
            send_assertion(json!({"alg": "RS256", "typ": "JWT", "x5t#S256": "abc"})).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(code(&body), Some(700027));
        // A `crit` header member: refused as a malformed assertion (whoever it claims to come from).
        let (status, body) =
            send_assertion(json!({"alg": "RS256", "typ": "JWT", "x5t#S256": "abc", "crit": []}))
                .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(code(&body), Some(50027));
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains("'crit'"), "{description}");
    }

    /// The refusals of a certificate outside its validity period name it: thumbprint and dates.
    #[test]
    fn certificate_validity_errors_name_the_certificate() {
        let c = super::super::assertion::CertificateInfo {
            x5t_s256: "dGh1bWI".into(),
            not_before: 1_600_000_000,
            not_after: 1_700_000_000,
        };
        for (e, state) in [
            (AssertionError::CertificateExpired(c.clone()), "expired"),
            (AssertionError::CertificateNotYetValid(c), "not yet valid"),
        ] {
            let err = assertion_error(e, "cert-app");
            assert_eq!(err.status, StatusCode::UNAUTHORIZED);
            assert_eq!(err.error, "invalid_client");
            let d = &err.description;
            assert!(d.starts_with("AADSTS700027: "), "{d}");
            for part in [
                state,
                "'cert-app'",
                "x5t#S256 'dGh1bWI'",
                "notBefore 2020-09-13T12:26:40Z",
                "notAfter 2023-11-14T22:13:20Z",
            ] {
                assert!(d.contains(part), "{part}: {d}");
            }
        }
    }

    #[tokio::test]
    async fn discovery_uses_the_request_host() {
        let state = state();
        for path in [
            format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
            format!("/{TENANT}/v2.0/.well-known/openid-configuration/"),
            format!("/{TENANT}/.well-known/openid-configuration"),
            format!("/{TENANT}/v2.0/.well-known/openid-configuration?appid=x"),
        ] {
            let (status, headers, doc) = send(&state, get(&path, "myvault.localhost:9443")).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers["content-type"], "application/json; charset=utf-8");
            let base = format!("https://myvault.localhost:9443/{TENANT}");
            assert_eq!(doc["issuer"], format!("{base}/v2.0"));
            assert_eq!(doc["token_endpoint"], format!("{base}/oauth2/v2.0/token"));
            assert_eq!(
                doc["authorization_endpoint"],
                format!("{base}/oauth2/v2.0/authorize")
            );
            assert_eq!(doc["jwks_uri"], format!("{base}/discovery/v2.0/keys"));
            assert_eq!(
                doc["token_endpoint_auth_methods_supported"],
                json!([
                    "client_secret_post",
                    "client_secret_basic",
                    "private_key_jwt"
                ])
            );
            assert_eq!(
                doc["id_token_signing_alg_values_supported"],
                json!(["ES256"])
            );
        }

        // HTTP/2 style: no Host header, authority in the URI.
        let req = Request::builder()
            .uri(format!(
                "https://127.0.0.1:8443/{TENANT}/v2.0/.well-known/openid-configuration"
            ))
            .body(Body::empty())
            .unwrap();
        let (status, _, doc) = send(&state, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            doc["issuer"],
            format!("https://127.0.0.1:8443/{TENANT}/v2.0")
        );

        // Unknown tenant, bad host.
        let (status, _, body) = send(
            &state,
            get("/common/v2.0/.well-known/openid-configuration", "localhost"),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_tenant");
        let (status, _, body) = send(&state, get("/common/discovery/v2.0/keys", "localhost")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_tenant");
        let (status, _, body) = send(
            &state,
            get(
                &format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
                "evil\"host",
            ),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        // Two Host lines: which one the client meant is not known (RFC 9112 §3.2), so neither is used.
        let mut req = get(
            &format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
            "localhost",
        );
        req.headers_mut()
            .append(header::HOST, http::HeaderValue::from_static("evil.example"));
        let (status, _, body) = send(&state, req).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }

    /// Every refused assertion's description starts with the AADSTS code its `error_codes` carries (clients
    /// such as MSAL read the number; people read the text), and names no more than the client id given.
    #[test]
    fn assertion_errors_carry_their_aadsts_code() {
        use AssertionError as A;
        let cert = crate::auth::assertion::CertificateInfo {
            x5t_s256: "thumb".into(),
            not_before: 0,
            not_after: 1,
        };
        let all = [
            (A::Malformed, None),
            (A::CriticalHeader, None),
            (A::BadSignature, Some(700027)),
            (A::CertificateExpired(cert.clone()), Some(700027)),
            (A::CertificateNotYetValid(cert), Some(700027)),
            (A::WrongClient, Some(700021)),
            (A::WrongAudience, Some(700023)),
            (A::NotInValidTimeRange, Some(700024)),
            (A::Replayed, Some(50027)),
            (A::ReplayCacheFull, Some(90033)),
            (A::NoFederatedIssuer, Some(50013)),
            (A::NoFederatedAudience, Some(700212)),
            (A::NoFederatedSubject, Some(700213)),
            (A::FederatedSignature, Some(50013)),
        ];
        for (e, want) in all {
            let shown = format!("{e:?}");
            let err = assertion_error(e, "app-1");
            assert_eq!(err.codes.len(), 1, "{shown}");
            let code = err.codes[0];
            assert!(
                err.description.starts_with(&format!("AADSTS{code}: ")),
                "{shown}: {}",
                err.description
            );
            if let Some(want) = want {
                assert_eq!(code, want, "{shown}");
            }
        }
    }

    #[test]
    fn scope_to_audience() {
        let auds = vec![
            "https://localhost:8443".to_owned(),
            "https://vault.azure.net".to_owned(),
        ];
        let a = |s: &str| audience_for_scope(s, &auds);
        assert_eq!(a("https://localhost:8443/.default").as_deref(), Some(AUD));
        assert_eq!(a("https://localhost:8443").as_deref(), Some(AUD));
        assert_eq!(a("https://localhost:8443/").as_deref(), Some(AUD));
        assert_eq!(a("https://localhost:8443//.default").as_deref(), Some(AUD));
        assert_eq!(a("HTTPS://LOCALHOST:8443/.default").as_deref(), Some(AUD));
        assert_eq!(
            a("  openid https://vault.azure.net/.default  profile ").as_deref(),
            Some("https://vault.azure.net")
        );
        assert_eq!(
            a("https://localhost:8443/.default https://vault.azure.net/.default"),
            None
        );
        assert_eq!(a("https://localhost:8443 https://vault.azure.net"), None);
        assert_eq!(a("https://localhost/.default"), None);
        assert_eq!(a(""), None);
        assert_eq!(a("/.default"), None);
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%2Bc%25%3d").as_deref(), Some("a b+c%="));
        assert_eq!(form_decode("50%").as_deref(), Some("50%"));
        assert_eq!(form_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(form_decode("%C3%BC").as_deref(), Some("ü"));
        assert_eq!(form_decode("%FF"), None);
    }
}
