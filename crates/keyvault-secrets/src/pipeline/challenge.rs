//! Key Vault's challenge authentication (protocol.md §4).
//!
//! The first request goes out without a token and without its body; the 401's `WWW-Authenticate: Bearer
//! authorization="…/{tenant}", resource="…"` (or `scope="…"`) names the scope and tenant. The client checks
//! that the resource is a parent domain of the vault (unless told not to), gets a token, caches it, and
//! resends. Later requests carry the cached token, refreshed 5 minutes before it expires; a 401 with a
//! challenge on an authorised request triggers one fresh challenge round.

use crate::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::Mutex;

/// Refresh a cached token this long before it expires.
const REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);

/// What a challenge told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scope: String,
    pub tenant_id: Option<String>,
    pub claims: Option<String>,
    /// The host of the resource/scope URL (for verification).
    pub resource_host: Option<String>,
}

/// The parameters of a `Bearer` challenge that matter here.
#[derive(Default)]
struct BearerParams {
    scope: Option<String>,
    resource: Option<String>,
    authorization: Option<String>,
    claims: Option<String>,
}

/// The parameters of the header's `Bearer` challenge; `None` when it has none.
fn bearer_params(header: &str) -> Option<BearerParams> {
    let header = header.trim();
    let idx = header.to_ascii_lowercase().find("bearer")?;
    let mut p = BearerParams::default();
    for part in header[idx + "bearer".len()..].split(',') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = Some(v.trim().trim_matches('"').trim().to_string());
        match k.trim().to_ascii_lowercase().as_str() {
            "scope" => p.scope = v,
            "resource" => p.resource = v,
            "authorization" | "authorization_uri" => p.authorization = v,
            "claims" => p.claims = v,
            _ => {}
        }
    }
    Some(p)
}

/// The `claims` of a CAE challenge that names no scope or resource (Key Vault's form: `Bearer realm="",
/// authorization_uri="…/common/…", error="insufficient_claims", claims="…"`): the scope and tenant are the
/// ones already in use, as azure-core's Key Vault policy takes them.
fn claims_only(header: &str) -> Option<String> {
    let p = bearer_params(header)?;
    let named = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    if named(&p.scope) || named(&p.resource) {
        return None;
    }
    p.claims.filter(|c| !c.trim().is_empty())
}

/// Parse the parameters of a `Bearer` challenge. `None` when there is no usable Bearer challenge.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let BearerParams {
        scope,
        resource,
        authorization,
        claims,
    } = bearer_params(header)?;
    let scope = match (scope, &resource) {
        (Some(s), _) if !s.is_empty() => s,
        (_, Some(r)) if !r.is_empty() => format!("{}/.default", r.trim_end_matches('/')),
        _ => return None,
    };
    let resource_host = reqwest::Url::parse(&scope)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let tenant_id = authorization
        .as_deref()
        .and_then(|a| reqwest::Url::parse(a).ok())
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next().map(str::to_string))
        })
        .filter(|t| !t.is_empty() && !t.to_ascii_lowercase().ends_with("adfs"));
    Some(Challenge {
        scope,
        tenant_id,
        claims,
        resource_host,
    })
}

/// Whether the challenge's resource is a parent domain of the vault host (ports are ignored, as in the
/// Rust and JS SDKs).
pub(crate) fn verify_resource(challenge: &Challenge, request_url: &str) -> Result<()> {
    let host = reqwest::Url::parse(request_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let ok = match &challenge.resource_host {
        Some(r) => host.ends_with(&format!(".{r}")),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::ClientAuthentication,
            format!(
                "the challenge resource '{}' does not match the requested domain '{host}'; set \
                 `verify_challenge_resource: false` in the client options to disable this check \
                 (see https://aka.ms/azsdk/blog/vault-uri)",
                challenge.scope
            ),
        ))
    }
}

/// A challenge's text in an error: at most 200 characters of it.
fn shown(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The challenge's scope (its `scope`, or its `resource` + `/.default`) must be one absolute https URL: no
/// whitespace (several scopes), no user info, query or fragment. It is sent to the authority as the token
/// request's scope as it is.
fn check_scope(scope: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::new(
            ErrorKind::ClientAuthentication,
            format!(
                "the vault's challenge names the scope '{}', which is {why}; the challenge is refused",
                shown(scope)
            ),
        ))
    };
    if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("not one URL (it holds whitespace: several scopes?)");
    }
    let Ok(url) = reqwest::Url::parse(scope) else {
        return refuse("not an absolute URL");
    };
    if url.scheme() != "https" {
        return refuse("not an https URL");
    }
    if url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return refuse("not a plain https URL (a host, no user info, query or fragment)");
    }
    Ok(())
}

/// A challenge's claims as the credential is given them: decoded ([`decode_claims`]); an empty `claims=""`
/// asks for nothing, as if the challenge had none.
fn claims_of(claims: Option<&str>) -> Result<Option<String>> {
    claims
        .filter(|c| !c.trim().is_empty())
        .map(decode_claims)
        .transpose()
}

/// A challenge's `claims` (CAE): base64url, padded or not, of a JSON object. The credential is given the JSON,
/// as azure-core's challenge policies decode it.
fn decode_claims(encoded: &str) -> Result<String> {
    use base64::Engine;
    let trimmed = encoded.trim_end_matches('=');
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| {
            serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object())
        });
    json.ok_or_else(|| {
        Error::new(
            ErrorKind::ClientAuthentication,
            format!(
                "the vault's challenge has claims '{}' that are not base64url-encoded JSON; the challenge is refused",
                shown(encoded)
            ),
        )
    })
}

#[derive(Default)]
struct State {
    challenge: Option<Challenge>,
    token: Option<AccessToken>,
}

/// The challenge policy: one per client.
pub(crate) struct ChallengeAuth {
    credential: Arc<dyn TokenCredential>,
    verify_resource: bool,
    state: Mutex<State>,
}

impl std::fmt::Debug for ChallengeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeAuth")
            .field("credential", &self.credential)
            .field("verify_resource", &self.verify_resource)
            .finish()
    }
}

/// The first of a 401's `WWW-Authenticate` headers that `read` makes something of.
fn from_challenges<T>(resp: &Response, read: fn(&str) -> Option<T>) -> Option<T> {
    if resp.status != StatusCode::UNAUTHORIZED {
        return None;
    }
    resp.headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(read)
}

fn challenge_of(resp: &Response) -> Option<Challenge> {
    from_challenges(resp, parse_challenge)
}

/// The claims of a 401's CAE challenge that names no scope ([`claims_only`]).
fn claims_challenge_of(resp: &Response) -> Option<String> {
    from_challenges(resp, claims_only)
}

fn with_token(req: &Request, token: &AccessToken) -> Result<Request> {
    let mut req = req.clone();
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.token.expose())).map_err(|_| {
            Error::new(
                ErrorKind::Credential,
                "the access token is not a valid header value",
            )
        })?;
    value.set_sensitive(true);
    req.headers.insert(http::header::AUTHORIZATION, value);
    Ok(req)
}

impl ChallengeAuth {
    pub(crate) fn new(credential: Arc<dyn TokenCredential>, verify_resource: bool) -> Self {
        ChallengeAuth {
            credential,
            verify_resource,
            state: Mutex::new(State::default()),
        }
    }

    /// A valid token for `challenge`, from the cache unless `force` or close to expiry.
    async fn token(&self, challenge: &Challenge, force: bool) -> Result<AccessToken> {
        let mut state = self.state.lock().await;
        let fresh = |t: &AccessToken| t.expires_on - OffsetDateTime::now_utc() > REFRESH_MARGIN;
        let cached = if !force && state.challenge.as_ref() == Some(challenge) {
            state.token.as_ref().filter(|t| fresh(t)).cloned()
        } else {
            None
        };
        if let Some(t) = cached {
            return Ok(t);
        }
        let options = TokenRequestOptions {
            tenant_id: challenge.tenant_id.clone(),
            claims: challenge.claims.clone(),
            // This policy answers claims challenges (as Key Vault's policy in the Python SDK does).
            enable_cae: true,
        };
        let token = self
            .credential
            .get_token(&[challenge.scope.as_str()], Some(options))
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Credential | ErrorKind::CredentialUnavailable => e,
                _ => Error::with_source(
                    ErrorKind::Credential,
                    format!("cannot get a token: {}", e.message()),
                    e,
                ),
            })?;
        tracing::debug!(scope = %challenge.scope, tenant = ?challenge.tenant_id, "got an access token");
        // Claims answer one challenge: the challenge is kept without them, so that later tokens (refreshes) are
        // asked for without them, as azure-core's policy asks (a59-4: they were sent with every refresh).
        state.challenge = Some(Challenge {
            claims: None,
            ..challenge.clone()
        });
        state.token = Some(token.clone());
        Ok(token)
    }

    async fn cached_challenge(&self) -> Option<Challenge> {
        self.state.lock().await.challenge.clone()
    }

    async fn clear(&self) {
        let mut s = self.state.lock().await;
        s.challenge = None;
        s.token = None;
    }

    /// The challenge as the credential is asked for its token: its scope checked (and its resource, unless
    /// told not to), its claims decoded.
    fn accept(&self, mut challenge: Challenge, url: &str) -> Result<Challenge> {
        check_scope(&challenge.scope)?;
        if self.verify_resource {
            verify_resource(&challenge, url)?;
        }
        challenge.claims = claims_of(challenge.claims.as_deref())?;
        Ok(challenge)
    }

    /// Send `req` through `next`, authorising it.
    pub(crate) async fn send<F, Fut>(&self, req: &Request, next: F) -> Result<Response>
    where
        F: Fn(Request) -> Fut,
        Fut: std::future::Future<Output = Result<Response>>,
    {
        if !req.url.starts_with("https://") {
            return Err(Error::new(
                ErrorKind::ClientAuthentication,
                "bearer token authentication is not permitted for non-TLS protected (non-https) URLs",
            ));
        }
        let response = match self.cached_challenge().await {
            None => {
                // The first request: no token, no body; learn the scope from the challenge.
                let mut bare = req.clone();
                bare.body = None;
                bare.headers.remove(http::header::CONTENT_TYPE);
                let response = next(bare).await?;
                let Some(challenge) = challenge_of(&response) else {
                    return Ok(response);
                };
                let challenge = self.accept(challenge, &req.url)?;
                let token = self.token(&challenge, false).await?;
                next(with_token(req, &token)?).await?
            }
            Some(challenge) => {
                let token = self.token(&challenge, false).await?;
                next(with_token(req, &token)?).await?
            }
        };
        if response.status != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // A 401 on an authorised request: one more challenge round with a fresh token — for a CAE challenge
        // without a scope, the scope and tenant in use with its claims.
        let challenge = match challenge_of(&response) {
            Some(challenge) => self.accept(challenge, &req.url)?,
            None => match (
                claims_challenge_of(&response),
                self.cached_challenge().await,
            ) {
                (Some(claims), Some(in_use)) => Challenge {
                    claims: claims_of(Some(&claims))?,
                    ..in_use
                },
                _ => {
                    self.clear().await;
                    return Ok(response);
                }
            },
        };
        let token = self.token(&challenge, true).await?;
        next(with_token(req, &token)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each token request's options; its tokens are always within the refresh margin, so every request
    /// asks for one.
    #[derive(Debug, Default)]
    struct Recording(std::sync::Mutex<Vec<TokenRequestOptions>>);

    #[async_trait::async_trait]
    impl TokenCredential for Recording {
        async fn get_token(
            &self,
            _scopes: &[&str],
            options: Option<TokenRequestOptions>,
        ) -> Result<AccessToken> {
            self.0.lock().unwrap().push(options.unwrap_or_default());
            Ok(AccessToken::new(
                "tok".to_string(),
                OffsetDateTime::now_utc() + time::Duration::minutes(1),
            ))
        }
    }

    /// A CAE challenge's claims are sent with the one token request that answers it, not with the refreshes
    /// after it (a59-4); every request says the caller handles CAE.
    #[tokio::test]
    async fn the_claims_of_a_challenge_are_sent_once() {
        use base64::Engine;
        let cred = Arc::new(Recording::default());
        let auth = ChallengeAuth::new(cred.clone(), true);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let req = Request::new(http::Method::GET, "https://v.vault.azure.net/secrets/a/");
        let answer = |status: StatusCode, challenge: Option<String>| {
            let mut headers = http::HeaderMap::new();
            if let Some(c) = challenge {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_str(&c).unwrap(),
                );
            }
            Response::new(status, headers, "")
        };
        let next = |_r: Request| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let claims = claims.clone();
            async move {
                Ok(match n {
                    0 => answer(
                        StatusCode::UNAUTHORIZED,
                        Some(r#"Bearer authorization="https://login.example/t1", resource="https://vault.azure.net""#.into()),
                    ),
                    1 => answer(
                        StatusCode::UNAUTHORIZED,
                        Some(format!(
                            r#"Bearer realm="", authorization_uri="https://login.example/common/oauth2/authorize", error="insufficient_claims", claims="{claims}""#
                        )),
                    ),
                    _ => answer(StatusCode::OK, None),
                })
            }
        };
        for _ in 0..3 {
            assert_eq!(auth.send(&req, &next).await.unwrap().status, StatusCode::OK);
        }
        let seen = cred.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].claims.is_none());
        assert!(seen[1].claims.as_deref().unwrap().contains("1700000000"));
        assert!(
            seen[2].claims.is_none() && seen[3].claims.is_none(),
            "{seen:?}"
        );
        assert!(seen.iter().all(|o| o.enable_cae));
    }

    #[test]
    fn parses_key_vault_challenges() {
        let c = parse_challenge(
            r#"Bearer authorization="https://login.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#,
        )
        .unwrap();
        assert_eq!(c.scope, "https://vault.azure.net/.default");
        assert_eq!(
            c.tenant_id.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(c.resource_host.as_deref(), Some("vault.azure.net"));

        let c = parse_challenge(
            r#"Bearer authorization_uri="https://127.0.0.1:8443/tenant-1/", scope="https://localhost:8443/.default""#,
        )
        .unwrap();
        assert_eq!(c.scope, "https://localhost:8443/.default");
        assert_eq!(c.tenant_id.as_deref(), Some("tenant-1"));
        assert_eq!(c.resource_host.as_deref(), Some("localhost"));

        let c = parse_challenge(r#"Bearer authorization="https://adfs.example/adfs", resource="https://vault.azure.net/""#).unwrap();
        assert_eq!(c.tenant_id, None);
        assert_eq!(c.scope, "https://vault.azure.net/.default");

        assert_eq!(parse_challenge(r#"Basic realm="x""#), None);
        assert_eq!(
            parse_challenge(r#"Bearer authorization="https://login/x""#),
            None
        );
    }

    /// A challenge's scope is one absolute https URL, or the challenge is refused (verification on or off).
    #[test]
    fn a_scope_must_be_one_https_url() {
        for good in [
            "https://vault.azure.net/.default",
            "https://localhost:8443/.default",
        ] {
            assert!(check_scope(good).is_ok(), "{good}");
        }
        for bad in [
            "https://localhost/x https://management.azure.com/.default",
            "https://localhost/.default https://graph.microsoft.com/.default offline_access",
            "http://localhost/.default",
            "vault.azure.net/.default",
            "https://user:pw@vault.azure.net/.default",
            "https://vault.azure.net/.default?x=1",
            "https://vault.azure.net/.default#x",
            "https://vault.azure.net/\t.default",
        ] {
            let e = check_scope(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ClientAuthentication, "{bad}");
            assert!(
                e.message().contains("the challenge is refused"),
                "{bad}: {e}"
            );
        }
    }

    /// CAE claims are base64url of JSON, padded or not; anything else refuses the challenge.
    #[test]
    fn claims_are_decoded() {
        let json = r#"{"access_token":{"nbf":{"essential":true,"value":"1603742800"}}}"#;
        use base64::Engine;
        let padded = base64::engine::general_purpose::URL_SAFE.encode(json);
        assert!(padded.ends_with('='));
        assert_eq!(decode_claims(&padded).unwrap(), json);
        assert_eq!(decode_claims(padded.trim_end_matches('=')).unwrap(), json);
        for bad in ["not base64!", "bm90IGpzb24", json] {
            let e = decode_claims(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ClientAuthentication, "{bad}");
            assert!(claims_of(Some(bad)).is_err());
        }
        assert_eq!(claims_of(Some(&padded)).unwrap().as_deref(), Some(json));
        assert_eq!(claims_of(Some("")).unwrap(), None);
        assert_eq!(claims_of(Some("  ")).unwrap(), None);
        assert_eq!(claims_of(None).unwrap(), None);
    }

    #[test]
    fn resource_verification() {
        let c = parse_challenge(
            r#"Bearer authorization="https://l/t", resource="https://vault.azure.net""#,
        )
        .unwrap();
        assert!(verify_resource(&c, "https://myvault.vault.azure.net/secrets/x").is_ok());
        assert!(verify_resource(&c, "https://MyVault.Vault.Azure.NET:443/secrets/x").is_ok());
        let e = verify_resource(&c, "https://evil.example/secrets/x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ClientAuthentication);
        assert!(verify_resource(&c, "https://vault.azure.net/secrets/x").is_err());
        assert!(verify_resource(&c, "https://xvault.azure.net/secrets/x").is_err());
    }
}
