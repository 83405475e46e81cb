use super::{
    AccessToken, DEFAULT_AUTHORITY_HOST, TokenCredential, TokenRequestOptions, one_scope,
    resolve_tenant, valid_tenant,
};
use crate::client::{make_transport, user_agent};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{HeaderValue, Method, Request, Response, Transport, TransportConfig};
use crate::pipeline::Pipeline;
use crate::pipeline::retry::RetryOptions;
use async_trait::async_trait;
use keyvault_types::SecretString;
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Options of [`ClientSecretCredential`], and the token-request options every client credential shares
/// ([`ClientCertificateCredential`](super::ClientCertificateCredential),
/// [`WorkloadIdentityCredential`](super::WorkloadIdentityCredential),
/// [`ClientAssertionCredential`](super::ClientAssertionCredential)).
#[derive(Clone, Debug)]
pub struct ClientSecretCredentialOptions {
    /// The authority, e.g. `https://login.microsoftonline.com` (default) or a vault server's issuer.
    pub authority_host: String,
    /// Tenants besides the credential's own that a vault's challenge may name (`"*"` for any).
    pub additionally_allowed_tenants: Vec<String>,
    /// Extra trusted CA certificates, PEM.
    pub additional_ca_certificates: Vec<Vec<u8>>,
    /// Trust the operating system's root certificates (default `true`).
    pub trust_system_roots: bool,
    /// Retries of the token request.
    pub retry: RetryOptions,
    /// Timeout of one token request (default 30 s).
    pub timeout: Option<Duration>,
    /// Send through this transport instead of the built-in one.
    pub transport: Option<Arc<dyn Transport>>,
}

impl Default for ClientSecretCredentialOptions {
    fn default() -> Self {
        ClientSecretCredentialOptions {
            authority_host: DEFAULT_AUTHORITY_HOST.to_string(),
            additionally_allowed_tenants: Vec::new(),
            additional_ca_certificates: Vec::new(),
            trust_system_roots: true,
            retry: RetryOptions::default(),
            timeout: Some(Duration::from_secs(30)),
            transport: None,
        }
    }
}

/// A service principal's client secret, exchanged at `{authority}/{tenant}/oauth2/v2.0/token`
/// (OAuth2 client credentials). Works with Entra ID and with `keyvault-server`'s issuer.
pub struct ClientSecretCredential {
    endpoint: TokenEndpoint,
    client_secret: SecretString,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("tenant_id", &self.endpoint.tenant_id)
            .field("client_id", &self.endpoint.client_id)
            .field("client_secret", &"<redacted>")
            .field("authority", &self.endpoint.authority)
            .finish()
    }
}

/// What the client-credentials grant shares whatever proves the client's identity (a secret, a certificate's
/// signed assertion, a federated token): tenant, client id, authority, allowed tenants and the HTTP pipeline.
pub(crate) struct TokenEndpoint {
    pub(crate) tenant_id: String,
    pub(crate) client_id: String,
    pub(crate) authority: String,
    allowed_tenants: Vec<String>,
    pipeline: Pipeline,
}

/// How a token request proves the client's identity.
pub(crate) enum ClientAuth<'a> {
    /// `client_secret`.
    Secret(&'a SecretString),
    /// `client_assertion` with `client_assertion_type` = [`JWT_BEARER`].
    Assertion(&'a SecretString),
}

/// RFC 7523's client assertion type: the assertion is a JWT.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl TokenEndpoint {
    /// Checks the arguments (without I/O) and builds the pipeline.
    pub(crate) fn new(
        tenant_id: String,
        client_id: String,
        options: &ClientSecretCredentialOptions,
    ) -> Result<Self> {
        if !valid_tenant(&tenant_id) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid tenant id '{tenant_id}'"),
            ));
        }
        if client_id.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the client id is empty",
            ));
        }
        let authority = normalize_authority(&options.authority_host)?;
        let transport = make_transport(
            options.transport.clone(),
            TransportConfig {
                extra_ca_pem: options.additional_ca_certificates.clone(),
                trust_system_roots: options.trust_system_roots,
                connect_timeout: options.timeout,
                timeout: options.timeout,
                user_agent: user_agent(None),
                http2: false,
                max_body_bytes: crate::http::TOKEN_RESPONSE_LIMIT,
                max_body_setting: crate::http::TOKEN_RESPONSE_LIMIT_SETTING,
            },
        )?;
        Ok(TokenEndpoint {
            tenant_id,
            client_id,
            authority,
            allowed_tenants: options.additionally_allowed_tenants.clone(),
            pipeline: Pipeline::for_tokens(transport, options.retry.clone()),
        })
    }

    /// The token endpoint's URL for this request's tenant (the credential's own, or one the vault's challenge
    /// names and the options allow). A certificate's assertion names it as its audience.
    pub(crate) fn token_url(&self, who: &str, options: &TokenRequestOptions) -> Result<String> {
        let tenant = resolve_tenant(
            who,
            &self.tenant_id,
            options.tenant_id.as_deref(),
            &self.allowed_tenants,
        )?;
        Ok(format!("{}/{tenant}/oauth2/v2.0/token", self.authority))
    }

    /// Posts the client-credentials grant for `scope` to `url` and reads the answer.
    pub(crate) async fn request(
        &self,
        who: &str,
        url: String,
        scope: &str,
        options: &TokenRequestOptions,
        auth: ClientAuth<'_>,
    ) -> Result<AccessToken> {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("client_id", &self.client_id);
            match &auth {
                ClientAuth::Secret(secret) => {
                    form.append_pair("client_secret", secret.expose());
                }
                ClientAuth::Assertion(assertion) => {
                    form.append_pair("client_assertion_type", JWT_BEARER)
                        .append_pair("client_assertion", assertion.expose());
                }
            }
            form.append_pair("grant_type", "client_credentials")
                .append_pair("scope", scope);
            if let Some(claims) = super::request_claims(options) {
                form.append_pair("claims", &claims);
            }
            SecretString::new(form.finish())
        };
        let mut request = Request::new(Method::POST, url);
        request.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        // The copy sent holds the client secret (or assertion): wiped when the request is done with it.
        request.body = Some(bytes::Bytes::from_owner(crate::http::Wiped(
            body.expose().as_bytes().to_vec(),
        )));
        let response = self.pipeline.send(request).await.map_err(|e| {
            if e.kind() == ErrorKind::Connection {
                let message = format!("{who}: cannot reach the authority: {}", e.message());
                Error::with_source(ErrorKind::Credential, message, e)
            } else {
                // The message says it all (a source would repeat it).
                let message = format!("{who}: cannot read the authority's answer: {}", e.message());
                Error::new(ErrorKind::Credential, message)
            }
        })?;
        let own_secret = match &auth {
            ClientAuth::Secret(s) | ClientAuth::Assertion(s) => s.expose(),
        };
        parse_token_response(who, &response, &[own_secret])
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// A number or a numeric string (services disagree).
pub(crate) fn as_i64(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What an error answer of a token endpoint says: OAuth's `error: error_description`, else the message of
/// the body as the vault's errors are read; cut as a vault's error messages are. `secrets` (what the request
/// carried to prove the client's identity) are taken out of the text before it is cut, so no part of one is
/// left at a cut either.
pub(crate) fn error_detail(response: &Response, secrets: &[&str]) -> String {
    let oauth = serde_json::from_slice::<OAuthError>(&response.body)
        .ok()
        .filter(|e| e.error.is_some() || e.error_description.is_some());
    match oauth {
        Some(e) => crate::http::cut_message(redact_secrets(
            &format!(
                "{}: {}",
                e.error.unwrap_or_default(),
                e.error_description.unwrap_or_default()
            ),
            secrets,
        )),
        None if secrets.is_empty() => response.to_error().message().to_string(),
        None => {
            let text = redact_secrets(&response.text(), secrets);
            let redacted = Response::new(response.status, response.headers.clone(), text);
            redact_secrets(redacted.to_error().message(), secrets)
        }
    }
}

/// The notice that replaces an authority's text that still holds a secret in some encoding not taken out.
const QUOTED_SECRET: &str =
    "(the authority's answer quotes this credential's secret in some form: not shown)";

/// `text` with every occurrence of each of `secrets` replaced by `REDACTED`: as it is, percent-encoded (as a
/// form encodes it, or leaving `~` as it is; upper- or lower-case hex), and HTML-escaped. An authority's error
/// may quote the request (or a client id that is really the secret, when the two were swapped), and the
/// error ends up in logs. If the text still holds a secret once percent-decoded or HTML-unescaped, all of it
/// is replaced by a notice.
pub(crate) fn redact_secrets(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for form in secret_forms(secret) {
            if out.contains(&form) {
                out = out.replace(&form, "REDACTED");
            }
        }
        if decoded_forms(&out).iter().any(|d| d.contains(secret)) {
            return QUOTED_SECRET.to_string();
        }
    }
    out
}

/// The ways a secret can be written in an authority's text.
fn secret_forms(secret: &str) -> Vec<String> {
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    // RFC 3986's unreserved characters kept (`~` is one; a form encodes it), space as %20.
    let mut percent = String::new();
    for b in secret.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            percent.push(b as char);
        } else {
            percent.push_str(&format!("%{b:02X}"));
        }
    }
    let html = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let mut forms = vec![secret.to_string()];
    for f in [form, percent, html] {
        let lower = lower_hex(&f);
        for f in [f, lower] {
            if !forms.contains(&f) {
                forms.push(f);
            }
        }
    }
    // Longest first: a form that contains another is replaced whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

/// `s` with the hex digits of its percent escapes in lower case.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_percent = 0;
    for c in s.chars() {
        if after_percent > 0 {
            out.push(c.to_ascii_lowercase());
            after_percent -= 1;
        } else {
            if c == '%' {
                after_percent = 2;
            }
            out.push(c);
        }
    }
    out
}

/// `text` percent-decoded (with `+` as a space, and without), and HTML-unescaped (the usual entities).
fn decoded_forms(text: &str) -> [String; 3] {
    let percent = |t: &str| {
        form_urlencoded::parse(
            format!("x={}", t.replace('&', "%26").replace('=', "%3D")).as_bytes(),
        )
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
    };
    let plus_kept = percent(&text.replace('+', "%2B"));
    let html = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&");
    [percent(text), plus_kept, html]
}

/// Turn a token endpoint's answer into an [`AccessToken`] (`expires_in` seconds, or `expires_on` Unix time).
/// `secrets`, what the request carried to prove the client's identity, are kept out of an error's text.
pub(crate) fn parse_token_response(
    who: &str,
    response: &Response,
    secrets: &[&str],
) -> Result<AccessToken> {
    if !response.status.is_success() {
        let detail = error_detail(response, secrets);
        return Err(Error::new(
            ErrorKind::Credential,
            format!(
                "{who}: the token request failed with status {}: {detail}",
                response.status.as_u16()
            ),
        )
        .with_status(response.status));
    }
    let t: TokenResponse = response.json().map_err(|e| {
        Error::new(
            ErrorKind::Credential,
            format!("{who}: {}", redact_secrets(e.message(), secrets)),
        )
    })?;
    let token = t.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        Error::new(
            ErrorKind::Credential,
            format!("{who}: the token response has no access_token"),
        )
    })?;
    let now = OffsetDateTime::now_utc();
    let expires_on = if let Some(secs) = t.expires_in.as_ref().and_then(as_i64) {
        if secs <= 0 {
            now
        } else {
            // A lifetime past the calendar's end (an `expires_in` of 1e19) is the latest date, not a panic.
            now.checked_add(time::Duration::seconds(secs))
                .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
        }
    } else if let Some(at) = t.expires_on.as_ref().and_then(as_i64) {
        OffsetDateTime::from_unix_timestamp(at).unwrap_or(now)
    } else {
        // A missing lifetime counts as expired: usable once, fetched again next time.
        now
    };
    Ok(AccessToken::new(token, expires_on))
}

impl ClientSecretCredential {
    /// A credential for `client_id` in `tenant_id`. Fails (without I/O) on a bad tenant or authority.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
        options: Option<ClientSecretCredentialOptions>,
    ) -> Result<Self> {
        let options = options.unwrap_or_default();
        Ok(ClientSecretCredential {
            endpoint: TokenEndpoint::new(tenant_id.into(), client_id.into(), &options)?,
            client_secret: client_secret.into(),
        })
    }
}

/// `https://host[:port][/path]` without a trailing slash; https only. A bare host (`login.microsoftonline.us`,
/// as azure-identity's `AzureAuthorityHosts` spell them and `AZURE_AUTHORITY_HOST` often holds) means https.
pub(crate) fn normalize_authority(authority: &str) -> Result<String> {
    let authority = authority.trim();
    let with_scheme;
    let authority = if authority.is_empty() || authority.contains("://") {
        authority
    } else {
        with_scheme = format!("https://{authority}");
        &with_scheme
    }
    .trim_end_matches('/');
    let url = reqwest::Url::parse(authority).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidArgument,
            format!("invalid authority host '{authority}'"),
            e,
        )
    })?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("invalid authority host '{authority}': it must be an https URL"),
        ));
    }
    Ok(authority.to_string())
}

#[async_trait]
impl TokenCredential for ClientSecretCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        const WHO: &str = "ClientSecretCredential";
        let scope = one_scope(WHO, scopes)?;
        let options = options.unwrap_or_default();
        let url = self.endpoint.token_url(WHO, &options)?;
        let auth = ClientAuth::Secret(&self.client_secret);
        self.endpoint.request(WHO, url, scope, &options, auth).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeaderMap, StatusCode};
    use bytes::Bytes;

    fn answer(body: &str) -> Response {
        Response {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    /// An authority that quotes the client's secret, in whatever encoding, does not get it into the error;
    /// nor does a cut leave part of it (the secret is taken out before the text is cut).
    #[test]
    fn a_quoted_secret_is_taken_out_in_every_form() {
        const SECRET: &str = "Abc~d.E_f-8Q~xyz+/=&<q'é";
        let fail = |body: String| {
            let r = Response {
                status: StatusCode::BAD_REQUEST,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            let e = parse_token_response("T", &r, &[SECRET]).unwrap_err();
            // The authority's status is kept (a 5xx there is its trouble, not the credential's).
            assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
            e.message().to_string()
        };
        let form: String = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        let quote = |keep: &str| -> String {
            SECRET
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || keep.as_bytes().contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02x}")
                    }
                })
                .collect()
        };
        let html = SECRET.replace('&', "&amp;").replace('<', "&lt;");
        let quoted = [
            SECRET.to_string(),
            form.clone(),
            lower_hex(&form),
            quote("-._~"),
            quote("-._~/"),
            html.clone(),
        ];
        for q in &quoted {
            for body in [
                serde_json::json!({"error": "invalid_client", "error_description": format!("got {q} here")})
                    .to_string(),
                format!("<html>got {q}</html>"),
                serde_json::json!({"error": {"code": "X", "message": format!("{}{q}", "m".repeat(1995))}})
                    .to_string(),
                format!("{}{q}", "t".repeat(505)),
            ] {
                let shown = fail(body.clone());
                for part in [&SECRET[..8], &form[..8], &q[..8]] {
                    assert!(!shown.contains(part), "{part:?} of {q:?} in {shown:?}");
                }
            }
        }
        // Text without the secret is kept (and an OAuth description cut like a vault's message).
        let shown = fail(
            serde_json::json!({"error": "invalid_client", "error_description": "x".repeat(3000)})
                .to_string(),
        );
        assert!(shown.contains("invalid_client: xxx"), "{shown}");
        assert!(shown.ends_with("[1016 more characters cut]"), "{shown}");
    }

    #[test]
    fn authority_hosts() {
        for (given, want) in [
            (
                "https://login.microsoftonline.com/",
                "https://login.microsoftonline.com",
            ),
            (
                "login.microsoftonline.us",
                "https://login.microsoftonline.us",
            ),
            ("localhost:8443", "https://localhost:8443"),
            (" https://127.0.0.1:9/x/ ", "https://127.0.0.1:9/x"),
        ] {
            assert_eq!(normalize_authority(given).unwrap(), want, "{given}");
        }
        for bad in [
            "http://login.microsoftonline.com",
            "",
            "https://",
            "ftp://x",
        ] {
            assert_eq!(
                normalize_authority(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }

    /// A token endpoint's lifetime is input: out of any calendar's range it is the latest date (never a panic),
    /// and zero or negative it is expired now.
    #[test]
    fn token_lifetimes_out_of_range() {
        let far = parse_token_response(
            "t",
            &answer(r#"{"access_token":"a","expires_in":1e19}"#),
            &[],
        )
        .unwrap();
        assert_eq!(far.expires_on, time::PrimitiveDateTime::MAX.assume_utc());
        let far = parse_token_response(
            "t",
            &answer(r#"{"access_token":"a","expires_in":"9223372036854775807"}"#),
            &[],
        )
        .unwrap();
        assert_eq!(far.expires_on, time::PrimitiveDateTime::MAX.assume_utc());
        let before = OffsetDateTime::now_utc();
        for lifetime in ["-1e19", "-5", "0"] {
            let t = parse_token_response(
                "t",
                &answer(&format!(
                    r#"{{"access_token":"a","expires_in":{lifetime}}}"#
                )),
                &[],
            )
            .unwrap();
            assert!(
                t.expires_on >= before && t.expires_on <= OffsetDateTime::now_utc(),
                "{lifetime}"
            );
        }
        let hour = parse_token_response(
            "t",
            &answer(r#"{"access_token":"a","expires_in":3600}"#),
            &[],
        )
        .unwrap();
        assert!(hour.expires_on > before + time::Duration::seconds(3590));
    }
}
