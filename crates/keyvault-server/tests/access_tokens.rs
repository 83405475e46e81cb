//! Token checks through the real HTTP API: tokens made with the server's own signing key but with one thing
//! wrong (expired, not yet valid, wrong issuer, wrong audience, bad signature, `alg: none`, HS256 keyed with
//! the public key, unknown or missing `kid`) and garbage all get 401 with the challenge; the clock-skew
//! allowance holds; a well-made token works.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyvault_server::auth::SigningKey;
use keyvault_server::local::LocalVault;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

mod common;

struct Setup {
    lv: LocalVault,
    http: reqwest::Client,
    pair: EcdsaKeyPair,
    kid: String,
    public_key: Vec<u8>,
    /// The public key as a JWK (JSON text).
    jwk: String,
    /// The claims of a real token from the issuer.
    claims: Value,
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

impl Setup {
    async fn start() -> Setup {
        let lv = LocalVault::start().await.unwrap();
        let http = common::vault_client(&lv);
        let key_path = lv.data_dir().join("token-signing-key.pk8");
        let pem = std::fs::read(&key_path).unwrap();
        let der = rustls_pemfile::private_key(&mut pem.as_slice())
            .unwrap()
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        let key = SigningKey::load_or_create(&key_path).unwrap();
        let token = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        Setup {
            kid: key.kid().to_string(),
            public_key: key.public_key().to_vec(),
            jwk: key.jwk().to_string(),
            lv,
            http,
            pair,
            claims,
        }
    }

    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Claims of a valid token, with `changes` applied (a `null` removes the claim).
    fn claims(&self, changes: Value) -> Value {
        let now = self.now();
        let mut c = self.claims.clone();
        c["iat"] = json!(now);
        c["nbf"] = json!(now);
        c["exp"] = json!(now + 600);
        c["jti"] = json!(format!("t{}", rand_u64()));
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign_es256(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn token(&self, changes: Value) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        self.sign_es256(&header, &self.claims(changes))
    }

    async fn status(&self, token: &str) -> StatusCode {
        let resp = self
            .http
            .get(format!("{}/secrets?api-version=7.6", self.lv.vault_url()))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.starts_with("Bearer authorization=\"https://"),
                "{challenge}"
            );
            assert!(
                challenge.contains("resource=\"https://localhost:"),
                "{challenge}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized", "{body}");
        }
        status
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn hs256(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_challenge() {
    let s = Setup::start().await;
    let now = s.now();

    // The well-made token works, and so do tokens within the 300 s clock-skew allowance (Microsoft's token
    // validation's default: a vault whose clock steps back two minutes keeps taking the SDKs' cached tokens).
    assert_eq!(s.status(&s.token(json!({}))).await, StatusCode::OK);
    for (exp, nbf) in [
        (now - 30, now - 4000),
        (now - 290, now - 4000),
        (now + 3600, now + 290),
    ] {
        assert_eq!(
            s.status(&s.token(json!({"exp": exp, "nbf": nbf, "iat": nbf})))
                .await,
            StatusCode::OK,
            "exp {exp}, nbf {nbf} at {now}"
        );
    }

    let iss = s.claims["iss"].as_str().unwrap().to_string();
    let aud = s.claims["aud"].as_str().unwrap().to_string();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            s.token(json!({"exp": now - 320, "iat": now - 4000, "nbf": now - 4000})),
        ),
        ("not yet valid", s.token(json!({"nbf": now + 320}))),
        ("no exp", s.token(json!({"exp": null}))),
        ("no nbf", s.token(json!({"nbf": null}))),
        (
            "wrong issuer",
            s.token(json!({"iss": iss.replace("/v2.0", "/v1.0")})),
        ),
        (
            "other tenant issuer",
            s.token(json!({"iss": "https://login.microsoftonline.com/x/v2.0"})),
        ),
        (
            "wrong audience",
            s.token(json!({"aud": "https://vault.azure.net"})),
        ),
        (
            "audience of another port",
            s.token(json!({"aud": aud.replace("localhost:", "localhost:1")})),
        ),
        ("no audience", s.token(json!({"aud": null}))),
        ("no subject", s.token(json!({"sub": null}))),
        ("bad signature", {
            let t = s.token(json!({}));
            let (head, sig) = t.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[10] ^= 1;
            format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig))
        }),
        ("claims swapped under a valid signature", {
            let t = s.token(json!({}));
            let parts: Vec<&str> = t.split('.').collect();
            let other = b64(&s.claims(json!({"sub": "someone-else"})));
            format!("{}.{other}.{}", parts[0], parts[2])
        }),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"typ": "JWT", "alg": "none", "kid": s.kid})),
                b64(&s.claims(json!({})))
            ),
        ),
        ("alg none with a signature", {
            let t = s.token(json!({}));
            let parts: Vec<&str> = t.split('.').collect();
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "none", "kid": s.kid})),
                parts[1],
                parts[2]
            )
        }),
        (
            "HS256 keyed with the public key",
            hs256(
                &s.public_key,
                &json!({"typ": "JWT", "alg": "HS256", "kid": s.kid}),
                &s.claims(json!({})),
            ),
        ),
        (
            "HS256 keyed with the JWK",
            hs256(
                s.jwk.as_bytes(),
                &json!({"typ": "JWT", "alg": "HS256", "kid": s.kid}),
                &s.claims(json!({})),
            ),
        ),
        (
            "ES384 header",
            s.sign_es256(&json!({"alg": "ES384", "kid": s.kid}), &s.claims(json!({}))),
        ),
        (
            "RS256 header",
            s.sign_es256(&json!({"alg": "RS256", "kid": s.kid}), &s.claims(json!({}))),
        ),
        (
            "unknown kid",
            s.sign_es256(
                &json!({"alg": "ES256", "kid": "not-a-key"}),
                &s.claims(json!({})),
            ),
        ),
        (
            "no kid",
            s.sign_es256(&json!({"alg": "ES256"}), &s.claims(json!({}))),
        ),
        ("garbage", "garbage".to_string()),
        ("three dots of garbage", "a.b.c".to_string()),
        (
            "non-JSON parts",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("x"),
                URL_SAFE_NO_PAD.encode("y"),
                "z"
            ),
        ),
        ("long", "a".repeat(8_000)),
    ];
    for (what, token) in &cases {
        assert_eq!(
            s.status(token).await,
            StatusCode::UNAUTHORIZED,
            "{what} must be refused"
        );
    }
    // Refusals in Key Vault's words where it has some: a well-signed token for another resource names both
    // audiences (AKV10022); a token of another issuer names both issuers (AKV10032); an unknown key shows
    // the token's encoded header back (AKV10046); an expired token gets the [TokenExpired] text; every other
    // reason the generic AKV10000 text.
    let message = |token: String| {
        let (http, url) = (
            &s.http,
            format!("{}/secrets?api-version=7.6", s.lv.vault_url()),
        );
        async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized", "{body}");
            body["error"]["message"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(
        message(s.token(json!({"aud": "https://management.azure.com/"}))).await,
        format!(
            "AKV10022: Invalid audience. Expected {aud}, found: https://management.azure.com/."
        )
    );
    let foreign_header = json!({"alg": "ES256", "kid": "other-idp-key"});
    for foreign in [
        s.token(json!({"iss": "https://sts.windows.net/other-tenant/"})),
        s.sign_es256(
            &foreign_header,
            &s.claims(json!({"iss": "https://sts.windows.net/other-tenant/"})),
        ),
    ] {
        assert_eq!(
            message(foreign).await,
            format!(
                "AKV10032: Invalid issuer. Expected one of {iss}, found https://sts.windows.net/other-tenant/."
            )
        );
    }
    let unknown_key = s.sign_es256(
        &json!({"alg": "ES256", "kid": "not-a-key"}),
        &s.claims(json!({})),
    );
    let header = unknown_key.split('.').next().unwrap().to_string();
    assert_eq!(
        message(unknown_key).await,
        format!(
            "AKV10046: Unable to resolve the key used for signature validation. EncodedJwtHeader: '{header}'."
        )
    );
    assert_eq!(
        message(s.token(json!({"exp": now - 320, "iat": now - 4000, "nbf": now - 4000}))).await,
        "[TokenExpired] Error validating token: 'S2S12086'."
    );
    // A token not valid yet says so (a clock out of step is not a missing token).
    assert_eq!(
        message(s.token(json!({"nbf": now + 4000}))).await,
        "The access token is not yet valid: its nbf is more than 300 s ahead of the vault's clock. Check the \
         clocks of the token's issuer and of this vault."
    );
    for generic in ["a.b.c".to_string(), {
        let t = s.token(json!({}));
        format!("{}x", t)
    }] {
        assert_eq!(
            message(generic).await,
            "AKV10000: Request is missing a Bearer or PoP token."
        );
    }
    // A token too big for the server's header limit is refused before it reaches the verifier.
    let status = s.status(&"a".repeat(20_000)).await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{status}"
    );
    // No Authorization at all, and other schemes.
    for header in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer ")] {
        let mut req = s
            .http
            .get(format!("{}/secrets?api-version=7.6", s.lv.vault_url()));
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    // Tokens that are not text, or text outside ASCII: refused like any other bad token.
    for raw in [&b"Bearer \xff\xfe.\x80"[..], "Bearer é.é.é".as_bytes()] {
        let resp = s
            .http
            .get(format!("{}/secrets?api-version=7.6", s.lv.vault_url()))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(raw).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{raw:?}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
}

#[tokio::test]
async fn a_valid_token_maps_to_its_principal_assignments() {
    let s = Setup::start().await;
    // A well-signed token of this server's issuer for a client it does not have (never registered, or
    // deleted): 401, whatever is assigned to that id — the admin API takes any id, for external subjects.
    let ghost = s.token(json!({"sub": "ghost", "appid": "ghost"}));
    assert_eq!(s.status(&ghost).await, StatusCode::UNAUTHORIZED);
    common::assign(
        &s.lv,
        "ghost",
        "Key Vault Reader",
        keyvault_server::auth::Scope::Vault,
    );
    assert_eq!(s.status(&ghost).await, StatusCode::UNAUTHORIZED);
    // A client that exists: authenticated, and then the policy decides.
    let stranger = s.token(json!({"sub": "stranger", "appid": "stranger"}));
    s.lv.clients().ensure("stranger");
    let resp = s
        .http
        .get(format!("{}/secrets?api-version=7.6", s.lv.vault_url()))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Principal: 'stranger'"),
        "{body}"
    );
    common::assign(
        &s.lv,
        "stranger",
        "Key Vault Reader",
        keyvault_server::auth::Scope::Vault,
    );
    assert_eq!(s.status(&stranger).await, StatusCode::OK);
}

/// Asks for a token with client credentials in a task that has to wait in the line of secret checks (the
/// test holds every check), and returns once it waits there.
async fn waiting_token_request(
    lv: &LocalVault,
    http: &reqwest::Client,
    client_id: &str,
    secret: &str,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let before = lv.clients().waiting_verifications().0;
    let (http, url, scope) = (http.clone(), common::token_url(lv), common::vault_scope(lv));
    let (id, secret) = (client_id.to_owned(), secret.to_owned());
    let task =
        tokio::spawn(async move { common::request_token(&http, &url, &id, &secret, &scope).await });
    while lv.clients().waiting_verifications().0 == before {
        assert!(
            !task.is_finished(),
            "{client_id}'s request was answered instead of waiting: {:?}",
            task.await.unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    task
}

/// A token request answered at once with Entra's transient error (503 `temporarily_unavailable`,
/// `Retry-After: 1`), without the secret in the answer.
async fn assert_busy(lv: &LocalVault, http: &reqwest::Client, client_id: &str, secret: &str) {
    let resp = http
        .post(common::token_url(lv))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::form_body(&[
            ("client_id", client_id),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
            ("scope", &common::vault_scope(lv)),
        ]))
        // Not a timing assertion: a request let into the held line would wait for ever instead of failing.
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .expect("answered at once, not queued in the line");
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{client_id}"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_eq!(body["error_codes"], json!([90033]), "{body}");
    assert!(
        !body.to_string().contains(secret),
        "the secret is not echoed"
    );
}

/// The token endpoint's argon2 checks wait in a bounded line whose places are shared out by who asks (the
/// argon2 audit: a paced flood of wrong secrets for random client ids kept the whole line full, and
/// legitimate first requests failed every retry). While the few places of unknown client ids are all taken
/// (and every check is held), another unknown id is answered at once with 503 `temporarily_unavailable`, but a
/// configured client's first request still gets a place, and its token once the checks run.
#[tokio::test]
async fn a_line_full_of_unknown_client_ids_does_not_keep_a_configured_client_from_its_token() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let (id, secret) = lv.add_client();
    let held = lv.clients().hold_verifications().await;
    let mut flood = Vec::new();
    for i in 0..keyvault_server::auth::clients::UNKNOWN_CLIENT_PLACES {
        flood.push(waiting_token_request(&lv, &http, &format!("nobody-{i}"), "wrong").await);
    }
    assert_busy(&lv, &http, "nobody-else", "wrong").await;

    let legit = waiting_token_request(&lv, &http, &id, &secret).await;
    drop(held);
    let (status, body) = legit.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["access_token"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    for f in flood {
        let (status, body) = f.await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(lv.clients().waiting_verifications().0, 0);
    assert_eq!(lv.clients().places_in_line().0, 0);
    lv.shutdown().await;
}

/// A flood of wrong secrets naming one configured client id fills that id's own places only: its next request
/// (the right secret too) is answered at once with 503 `temporarily_unavailable` and `Retry-After`, not queued
/// behind the flood, while another client's first request still gets its token; once the line drains, the
/// flooded client gets its token too.
#[tokio::test]
async fn a_flood_naming_one_client_id_answers_that_id_503_and_no_other() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let (id, secret) = lv.add_client();
    let (other, other_secret) = lv.add_client();
    let held = lv.clients().hold_verifications().await;
    let mut flood = Vec::new();
    for _ in 0..keyvault_server::auth::clients::CLIENT_PLACES {
        flood.push(waiting_token_request(&lv, &http, &id, "wrong").await);
    }
    assert_busy(&lv, &http, &id, &secret).await;
    let legit = waiting_token_request(&lv, &http, &other, &other_secret).await;

    drop(held);
    let (status, body) = legit.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    for f in flood {
        let (status, body) = f.await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(lv.clients().places_in_line().0, 0);
    common::vault_token(&lv, &http, &id, &secret).await;
    lv.shutdown().await;
}

/// Two `Authorization` headers are refused with Key Vault's 400, in either order, on the vault API and the
/// admin API (the auth audit's finding 8: the first one was used).
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let lv = LocalVault::start().await.unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let (id, secret) = lv.add_client();
    common::assign(
        &lv,
        &id,
        keyvault_server::auth::policy::READER,
        keyvault_server::auth::policy::Scope::Secret("mine".into()),
    );
    let narrow = common::vault_token(&lv, &http, &id, &secret).await;
    let put = http
        .put(format!("{}/secrets/top?api-version=7.6", lv.vault_url()))
        .bearer_auth(&admin)
        .json(&json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let urls = [
        format!("{}/secrets/top?api-version=7.6", lv.vault_url()),
        format!("{}/admin/roles", lv.vault_url()),
    ];
    for url in &urls {
        for (first, second) in [(&narrow, &admin), (&admin, &narrow), (&admin, &admin)] {
            let mut headers = reqwest::header::HeaderMap::new();
            for t in [first, second] {
                headers.append(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {t}").parse().unwrap(),
                );
            }
            let resp = http.get(url).headers(headers).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{url}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "BadParameter", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("more than one Authorization header"),
                "{body}"
            );
        }
        // One header still works.
        let resp = http.get(url).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
    }
    // The token endpoint's client credentials in Basic headers: two are refused there too.
    use base64::Engine;
    let basic = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let token = |headers: reqwest::header::HeaderMap| {
        http.post(common::token_url(&lv))
            .headers(headers)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(format!(
                "grant_type=client_credentials&scope={}",
                common::vault_scope(&lv)
                    .replace(':', "%3A")
                    .replace('/', "%2F")
            ))
            .send()
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (i, s) in [
        (id.as_str(), secret.as_str()),
        (lv.client_id(), lv.client_secret()),
    ] {
        headers.append(reqwest::header::AUTHORIZATION, basic(i, s).parse().unwrap());
    }
    let resp = token(headers).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        basic(&id, &secret).parse().unwrap(),
    );
    assert_eq!(token(headers).await.unwrap().status(), StatusCode::OK);
    lv.shutdown().await;
}

/// An ES256 JWS of `payload` as written, with `kid` in its header.
fn sign_raw(pair: &EcdsaKeyPair, kid: &str, payload: &str) -> String {
    let header = json!({"typ": "JWT", "alg": "ES256", "kid": kid});
    let input = format!("{}.{}", b64(&header), URL_SAFE_NO_PAD.encode(payload));
    let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

const EXT_ISS: &str = "https://idp.example.com/corp/v2.0";
const EXT_AUD: &str = "api://keyvault";

/// A trusted issuer of our own making (a JWKS file), whose tokens are signed from raw JSON text, so that a
/// payload may name a member twice; the vault trusts it with `principal_claim = "oid"`, and a configured
/// client `fed` has a federated credential of it (subject `repo:x`).
struct ExtIdp {
    pair: EcdsaKeyPair,
    kid: String,
    lv: LocalVault,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ExtIdp {
    async fn start() -> ExtIdp {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng).unwrap();
        let key = SigningKey::from_pkcs8_der(der.as_ref()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [key.jwk()]}).to_string()).unwrap();
        let lv = LocalVault::start_with(keyvault_server::local::LocalVaultOptions {
            trusted_issuers: vec![keyvault_server::config::TrustedIssuerConfig {
                issuer: EXT_ISS.into(),
                audience: EXT_AUD.into(),
                jwks_file: Some(jwks),
                principal_claim: Some("oid".into()),
                ..Default::default()
            }],
            clients: vec![keyvault_server::config::ClientConfig {
                client_id: "fed".into(),
                federated: vec![keyvault_server::config::FederatedConfig {
                    issuer: EXT_ISS.into(),
                    subject: "repo:x".into(),
                    audience: None,
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let http = common::vault_client(&lv);
        ExtIdp {
            pair,
            kid: key.kid().to_string(),
            lv,
            http,
            _dir: dir,
        }
    }

    /// A token whose payload is `payload` as written.
    fn sign(&self, payload: &str) -> String {
        sign_raw(&self.pair, &self.kid, payload)
    }

    fn now() -> i64 {
        keyvault_server::auth::unix_now()
    }

    /// An access token's payload: `members` (JSON members, comma-separated) and valid times, issuer, audience.
    fn access_payload(members: &str) -> String {
        let now = Self::now();
        format!(
            r#"{{"iss":"{EXT_ISS}","aud":"{EXT_AUD}","nbf":{},"exp":{},{members}}}"#,
            now - 10,
            now + 600
        )
    }

    /// A federated assertion's payload for `fed`: `members` and valid times, issuer, audience.
    fn assertion_payload(members: &str) -> String {
        let now = Self::now();
        format!(
            r#"{{"iss":"{EXT_ISS}","aud":"api://AzureADTokenExchange","nbf":{},"exp":{},{members}}}"#,
            now - 10,
            now + 600
        )
    }

    async fn list_status(&self, token: &str) -> StatusCode {
        common::list_status(&self.http, self.lv.vault_url(), token).await
    }

    /// Asks for a token for `client_id` with `assertion`: the status and the JSON body.
    async fn assertion_token(&self, client_id: &str, assertion: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(common::token_url(&self.lv))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(common::form_body(&[
                ("client_id", client_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("grant_type", "client_credentials"),
                ("scope", &common::vault_scope(&self.lv)),
            ]))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }
}

/// A payload that names a member twice is refused (the auth audit's finding 10): a trusted issuer's access
/// token (where, with `principal_claim = "oid"`, the last `oid` used to win), our own access token (where
/// members we do not read were ignored however often given), and a federated client assertion (whose last
/// `sub` used to win).
#[tokio::test]
async fn payloads_naming_a_member_twice_are_refused() {
    let idp = ExtIdp::start().await;
    common::assign(
        &idp.lv,
        "ext-oid-1",
        keyvault_server::auth::policy::READER,
        keyvault_server::auth::policy::Scope::Vault,
    );
    let once = idp.sign(&ExtIdp::access_payload(r#""sub":"s","oid":"ext-oid-1""#));
    assert_eq!(idp.list_status(&once).await, StatusCode::OK);
    for twice in [
        r#""sub":"s","oid":"nobody","oid":"ext-oid-1""#,
        r#""sub":"s","oid":"ext-oid-1","oid":"ext-oid-1""#,
        r#""sub":"s","oid":"nobody","o\u0069d":"ext-oid-1""#,
        r#""sub":"s","oid":"ext-oid-1","groups":[],"groups":[]"#,
    ] {
        let token = idp.sign(&ExtIdp::access_payload(twice));
        assert_eq!(
            idp.list_status(&token).await,
            StatusCode::UNAUTHORIZED,
            "{twice}"
        );
    }

    // Federated assertions: the right subject once works; twice (last one right) is malformed.
    let (status, body) = idp
        .assertion_token(
            "fed",
            &idp.sign(&ExtIdp::assertion_payload(r#""sub":"repo:x""#)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = idp
        .assertion_token(
            "fed",
            &idp.sign(&ExtIdp::assertion_payload(
                r#""sub":"repo:y","sub":"repo:x""#,
            )),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error_codes"], json!([50027]), "{body}");
    idp.lv.shutdown().await;

    // Our own tokens: a member we do not read, given twice.
    let s = Setup::start().await;
    let claims = s.claims(json!({}));
    let text = claims.to_string();
    let sign_text = |payload: &str| sign_raw(&s.pair, &s.kid, payload);
    assert_eq!(s.status(&sign_text(&text)).await, StatusCode::OK);
    let twice = text.replacen('{', r#"{"xms_x":1,"xms_x":2,"#, 1);
    assert_eq!(s.status(&sign_text(&twice)).await, StatusCode::UNAUTHORIZED);
    s.lv.shutdown().await;
}

/// A junk assertion naming a trusted issuer gets one refusal whichever client it names, so it does not tell
/// which client ids have a federated credential for that issuer (the auth audit's finding 5b: 50013 for
/// those, 700211 for the others); an assertion the issuer did sign still gets the telling codes.
#[tokio::test]
async fn an_unverified_assertion_does_not_tell_which_clients_are_federated() {
    let idp = ExtIdp::start().await;
    let rng = SystemRandom::new();
    let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let rogue =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng).unwrap();
    // Signed by another key under the issuer's kid.
    let junk = sign_raw(
        &rogue,
        &idp.kid,
        &ExtIdp::assertion_payload(r#""sub":"repo:x""#),
    );
    let dev_client = idp.lv.client_id().to_string();
    let mut answers = Vec::new();
    for client in ["fed", "nobody", dev_client.as_str()] {
        let (status, body) = idp.assertion_token(client, &junk).await;
        let first_line = body["error_description"]
            .as_str()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        answers.push((
            status,
            body["error"].clone(),
            body["error_codes"].clone(),
            first_line,
        ));
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[0].2, json!([50013]), "{answers:?}");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");

    // Signed by the issuer: the codes that help, only now.
    let (status, body) = idp
        .assertion_token(
            "fed",
            &idp.sign(&ExtIdp::assertion_payload(r#""sub":"repo:other""#)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_codes"], json!([700213]), "{body}");
    let now = ExtIdp::now();
    let elsewhere = format!(
        r#"{{"iss":"{EXT_ISS}","aud":"api://elsewhere","nbf":{},"exp":{},"sub":"repo:x"}}"#,
        now - 10,
        now + 600
    );
    let (status, body) = idp.assertion_token("fed", &idp.sign(&elsewhere)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_codes"], json!([700212]), "{body}");
    idp.lv.shutdown().await;
}
