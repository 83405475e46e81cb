//! The admin API through real HTTPS (in-process LocalVault): principals, their secrets (rotation, expiry),
//! role assignments; guarded by the administration permission; changes take effect at once; audited
//! without a secret.

use keyvault_server::local::{LocalVault, LocalVaultOptions};
use keyvault_server::vault::ManualClock;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

mod common;

const NOW: i64 = 1_800_000_000;

struct H {
    lv: LocalVault,
    http: reqwest::Client,
    clock: Arc<ManualClock>,
    admin: String,
}

impl H {
    async fn start() -> H {
        let clock = Arc::new(ManualClock::new(NOW));
        let lv = LocalVault::start_with(LocalVaultOptions {
            clock: clock.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let http = common::vault_client(&lv);
        let mut h = H {
            lv,
            http,
            clock,
            admin: String::new(),
        };
        let (id, secret) = (
            h.lv.client_id().to_string(),
            h.lv.client_secret().to_string(),
        );
        h.admin = h.token(&id, &secret).await.unwrap();
        h
    }

    /// A token, or the token endpoint's (status, body).
    async fn token(&self, client_id: &str, secret: &str) -> Result<String, (StatusCode, Value)> {
        let (status, body) =
            common::request_vault_token(&self.lv, &self.http, client_id, secret).await;
        if status == StatusCode::OK {
            Ok(body["access_token"].as_str().unwrap().to_string())
        } else {
            Err((status, body))
        }
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.lv.vault_url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        common::send_json(req, body).await
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(Some(&self.admin), method, path, body).await
    }
}

#[tokio::test]
async fn principals_are_created_used_rotated_and_deleted_at_run_time() {
    let h = H::start().await;
    // Create an application with a role in one call; the secret is returned once.
    let (status, created) = h
        .admin(
            Method::POST,
            "/admin/principals",
            Some(json!({"displayName": "billing app", "role": "Key Vault Secrets User", "scope": "/secrets/billing-*"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["clientId"].as_str().unwrap().to_string();
    let secret1 = created["clientSecret"].as_str().unwrap().to_string();
    let key1 = created["keyId"].as_str().unwrap().to_string();
    assert_eq!(created["displayName"], "billing app");
    assert_eq!(created["managed"], true);
    assert_eq!(created["assignments"][0]["scope"], "/secrets/billing-*");
    assert_eq!(
        created["secrets"],
        json!([{"keyId": key1, "expiresOn": null}])
    );

    // It works at once, with exactly its role.
    h.admin(
        Method::PUT,
        "/secrets/billing-db?api-version=7.6",
        Some(json!({"value": "v"})),
    )
    .await;
    let app = h.token(&id, &secret1).await.unwrap();
    let (status, _) = h
        .call(
            Some(&app),
            Method::GET,
            "/secrets/billing-db?api-version=7.6",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h
        .call(
            Some(&app),
            Method::PUT,
            "/secrets/billing-db?api-version=7.6",
            Some(json!({"value": "w"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "Forbidden");
    // Not an administrator: the admin API is 403; without a token, 401.
    let (status, body) = h
        .call(Some(&app), Method::GET, "/admin/principals", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vault administration")
    );
    let (status, _) = h.call(None, Method::GET, "/admin/principals", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Listed (with the dev client, which is not managed), never with a secret or a hash.
    let (status, list) = h.admin(Method::GET, "/admin/principals", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    assert!(
        !text.contains(&secret1) && !text.contains("argon2"),
        "{text}"
    );
    let dev = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["clientId"] == h.lv.client_id())
        .unwrap();
    assert_eq!(dev["managed"], false);
    let (status, _) = h
        .admin(
            Method::DELETE,
            &format!("/admin/principals/{}", h.lv.client_id()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Rotation: a second secret (expiring), both work; the first is removed and refused.
    let (status, added) = h
        .admin(
            Method::POST,
            &format!("/admin/principals/{id}/secrets"),
            Some(json!({"expiresOn": NOW + 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let secret2 = added["clientSecret"].as_str().unwrap().to_string();
    assert_eq!(added["expiresOn"], NOW + 60);
    assert_ne!(secret1, secret2);
    h.token(&id, &secret1).await.unwrap();
    h.token(&id, &secret2).await.unwrap();
    let (status, _) = h
        .admin(
            Method::DELETE,
            &format!("/admin/principals/{id}/secrets/{key1}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = h.token(&id, &secret1).await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // An expired secret is refused with Entra's "expired" error.
    h.clock.advance(61);
    let (status, body) = h.token(&id, &secret2).await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000222"),
        "{body}"
    );
    let (status, _) = h
        .admin(
            Method::POST,
            &format!("/admin/principals/{id}/secrets"),
            Some(json!({"expiresOn": NOW})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Deleted: its unexpired token (verified and cached above) is refused at once, as a token, with 401 and a
    // challenge — not 403: it names an identity that no longer exists — and it cannot get another.
    let (status, deleted) = h
        .admin(Method::DELETE, &format!("/admin/principals/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["clientId"], id);
    let get_with_old_token = || {
        h.call(
            Some(&app),
            Method::GET,
            "/secrets/billing-db?api-version=7.6",
            None,
        )
    };
    let (status, body) = get_with_old_token().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Said as it is (not "missing a token", which the SDKs would show for a token they did send).
    assert_eq!(
        body["error"]["message"],
        "The access token was issued to a client that has since been deleted.",
        "{body}"
    );
    // A role assigned later to the deleted client's id (the API takes any id, for external subjects) does
    // not bring the old token back.
    let (status, a) = h
        .admin(
            Method::POST,
            "/admin/roleAssignments",
            Some(json!({"principal": id, "role": "Key Vault Secrets User"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(get_with_old_token().await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .admin(
            Method::DELETE,
            &format!("/admin/roleAssignments/{}", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h
        .admin(Method::DELETE, &format!("/admin/principals/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NotFound");
    let (_, list) = h
        .admin(
            Method::GET,
            &format!("/admin/roleAssignments?principal={id}"),
            None,
        )
        .await;
    assert_eq!(list["value"], json!([]));

    // The audit log names the operations and targets, never a secret.
    h.lv.audit().unwrap().flush().await;
    let log = std::fs::read_to_string(h.lv.data_dir().join("audit.log")).unwrap();
    assert!(!log.contains(&secret1) && !log.contains(&secret2));
    let created_line = log
        .lines()
        .find(|l| l.contains("\"operation\":\"PrincipalCreate\""))
        .unwrap();
    assert!(
        created_line.contains(&format!("\"target\":\"{id}\"")),
        "{created_line}"
    );
    keyvault_server::audit::verify_chain(&h.lv.data_dir().join("audit.log")).unwrap();
    // …and the access file holds hashes only.
    let stored = std::fs::read_to_string(h.lv.data_dir().join("access.json")).unwrap();
    assert!(!stored.contains(&secret2));
    h.lv.shutdown().await;
}

#[tokio::test]
async fn role_assignments_through_the_api() {
    let h = H::start().await;
    let (id, secret) = h.lv.add_client();
    let tok = h.token(&id, &secret).await.unwrap();
    let (status, _) = h
        .call(Some(&tok), Method::GET, "/secrets?api-version=7.6", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let body = json!({"principal": id, "role": "Key Vault Reader"});
    let (status, a) = h
        .admin(Method::POST, "/admin/roleAssignments", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["scope"], "/");
    assert_eq!(a["role"], "Key Vault Reader");
    assert_eq!(a["managed"], true);
    let (status, again) = h
        .admin(Method::POST, "/admin/roleAssignments", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], a["id"]);
    // Effective at once, with the same token.
    let (status, _) = h
        .call(Some(&tok), Method::GET, "/secrets?api-version=7.6", None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (_, list) = h
        .admin(
            Method::GET,
            &format!("/admin/roleAssignments?principal={id}"),
            None,
        )
        .await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let (_, all) = h.admin(Method::GET, "/admin/roleAssignments", None).await;
    let dev = all["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["principal"] == h.lv.client_id())
        .unwrap()
        .clone();
    assert_eq!(dev["managed"], false);
    let (status, body) = h
        .admin(
            Method::DELETE,
            &format!("/admin/roleAssignments/{}", dev["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    for bad in [
        json!({"principal": id, "role": "nope"}),
        json!({"principal": id, "role": "Key Vault Reader", "scope": "/keys/x"}),
        json!({"principal": "", "role": "Key Vault Reader"}),
        json!({"role": "Key Vault Reader"}),
    ] {
        let (status, body) = h
            .admin(Method::POST, "/admin/roleAssignments", Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "BadParameter");
    }

    let (status, _) = h
        .admin(
            Method::DELETE,
            &format!("/admin/roleAssignments/{}", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(Some(&tok), Method::GET, "/secrets?api-version=7.6", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .admin(Method::DELETE, "/admin/roleAssignments/nope", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, roles) = h.admin(Method::GET, "/admin/roles", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(roles["value"].as_array().unwrap().len(), 4);
    let (status, _) = h.admin(Method::PUT, "/admin/roles", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Role names: counted in characters (100 'é' = 200 bytes is fine, and removable); invalid UTF-8 after
    // percent-decoding, bidirectional overrides and zero-width characters are 400, and nothing is defined.
    let perms = json!({"permissions": ["get"]});
    let long = "%C3%A9".repeat(100);
    let (status, body) = h
        .admin(
            Method::PUT,
            &format!("/admin/roles/{long}"),
            Some(perms.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "é".repeat(100));
    let (status, body) = h
        .admin(Method::DELETE, &format!("/admin/roles/{long}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for bad in [
        "a%FFb",
        "a%E2%80%AEb",
        "a%E2%80%8Bb",
        "%EF%BB%BFab",
        &"%C3%A9".repeat(129),
    ] {
        let (status, body) = h
            .admin(
                Method::PUT,
                &format!("/admin/roles/{bad}"),
                Some(perms.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "BadParameter");
    }
    // The admin API's bodies carry no secret: a wrong value is named, with what was expected.
    let (status, body) = h
        .admin(
            Method::PUT,
            "/admin/roles/Typo",
            Some(serde_json::json!({"permissions": ["get", "lst"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown permission 'lst' (expected get, list,")
            && !message.contains(" at line "),
        "{message}"
    );
    let (status, body) = h
        .admin(
            Method::POST,
            "/admin/principals",
            Some(serde_json::json!({"displayName": "x", "rol": "Key Vault Reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("property 'rol' is not known"),
        "{body}"
    );
    let (_, roles) = h.admin(Method::GET, "/admin/roles", None).await;
    assert_eq!(roles["value"].as_array().unwrap().len(), 4);
    let (status, _) = h.admin(Method::GET, "/admin/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.lv.shutdown().await;
}

#[tokio::test]
async fn tokens_of_a_trusted_external_issuer_map_to_assignments() {
    use keyvault_server::auth::{SigningKey, TokenIssuer, unix_now};
    const ISS: &str = "https://idp.example.com/corp/v2.0";
    const AUD: &str = "api://keyvault";
    // The test issuer: its own key, published as a JWKS file.
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::generate().unwrap());
    let idp = TokenIssuer::new(key.clone(), ISS.into(), "corp".into(), 3600);
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, idp.jwks().to_string()).unwrap();
    let lv = LocalVault::start_with(LocalVaultOptions {
        trusted_issuers: vec![keyvault_server::config::TrustedIssuerConfig {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks_file: Some(jwks),
            ..Default::default()
        }],
        // A configured client without credentials (yet): it holds the default role all the same.
        clients: vec![keyvault_server::config::ClientConfig {
            client_id: "ghost".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let http = common::vault_client(&lv);
    let get = |token: String| {
        let (http, base) = (&http, lv.vault_url());
        async move { common::list_status(http, base, &token).await }
    };
    let now = unix_now();
    let (alice, _) = idp.issue("alice@corp", AUD, now).unwrap();
    // Authenticated, but no assignment yet: 403. Assigned by the claim's value: 200.
    assert_eq!(get(alice.clone()).await, StatusCode::FORBIDDEN);
    common::assign(
        &lv,
        "alice@corp",
        "Key Vault Reader",
        keyvault_server::auth::Scope::Vault,
    );
    assert_eq!(get(alice).await, StatusCode::OK);
    // Wrong audience, an expired token, or a key the issuer never published: 401.
    let (wrong_aud, _) = idp.issue("alice@corp", "api://other", now).unwrap();
    assert_eq!(get(wrong_aud.clone()).await, StatusCode::UNAUTHORIZED);
    // Its 401 does not name the vault's own resource as the audience expected (AKV10022 is for tokens of
    // this vault's issuer): that would send whoever debugs it after the wrong scope.
    let (_, body) = common::send_json(
        http.get(common::api_url(lv.vault_url(), "/secrets", "7.6"))
            .bearer_auth(&wrong_aud),
        None,
    )
    .await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("AKV10000") && !message.contains("AKV10022"),
        "{body}"
    );
    let (expired, _) = idp.issue("alice@corp", AUD, now - 7200).unwrap();
    assert_eq!(get(expired).await, StatusCode::UNAUTHORIZED);
    let rogue = TokenIssuer::new(
        Arc::new(SigningKey::generate().unwrap()),
        ISS.into(),
        "corp".into(),
        3600,
    );
    let (forged, _) = rogue.issue("alice@corp", AUD, now).unwrap();
    assert_eq!(get(forged).await, StatusCode::UNAUTHORIZED);
    // The identity provider cannot speak for a local application (here the dev client, an Administrator),
    // whether it existed at start or was made at run time.
    let (as_dev, _) = idp.issue(lv.client_id(), AUD, now).unwrap();
    assert_eq!(get(as_dev).await, StatusCode::UNAUTHORIZED);
    let (app_id, _) = lv.add_client();
    let (as_app, _) = idp.issue(&app_id, AUD, now).unwrap();
    assert_eq!(get(as_app).await, StatusCode::UNAUTHORIZED);
    // Nor for a configured client that has no credentials.
    let (as_ghost, _) = idp.issue("ghost", AUD, now).unwrap();
    assert_eq!(get(as_ghost).await, StatusCode::UNAUTHORIZED);
    lv.shutdown().await;
}

/// `/admin/rekey`: nothing to show before a job; bad bodies are Key Vault-shaped 400s and start nothing; a
/// dry run is accepted (202) and its report appears; a principal without `admin` is refused.
#[tokio::test]
async fn rekey_jobs_through_the_api() {
    let h = H::start().await;
    let (status, e) = h.admin(Method::GET, "/admin/rekey", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["code"], "NotFound");
    for bad in [
        json!({"batchSize": 0}),
        json!({"batchSize": 10001}),
        json!({"dryRun": "yes"}),
        json!({"dry_run": true}),
    ] {
        let (status, e) = h
            .admin(Method::POST, "/admin/rekey", Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "BadParameter", "{bad}: {e}");
    }
    let (status, _) = h.admin(Method::GET, "/admin/rekey", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = h
        .call(
            Some(&h.admin),
            Method::PUT,
            "/secrets/r1?api-version=7.6",
            Some(json!({"value": "v"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, job) = h
        .admin(Method::POST, "/admin/rekey", Some(json!({"dryRun": true})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["dryRun"], true);
    let job_id = job["id"].as_str().unwrap().to_string();
    let done = loop {
        let (status, view) = h.admin(Method::GET, "/admin/rekey", None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] != "running" {
            break view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["report"]["dry_run"], true);
    assert_eq!(done["report"]["scanned"], 1);
    assert_eq!(done["report"]["already_current"], 1);

    let (id, secret) = h.lv.add_client();
    let tok = h.token(&id, &secret).await.unwrap();
    let (status, e) = h.call(Some(&tok), Method::POST, "/admin/rekey", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    let (_, view) = h.admin(Method::GET, "/admin/rekey", None).await;
    assert_eq!(view["id"], job_id.as_str(), "the refused start made no job");
}

/// A configured client that no assignment names holds `default_client_role` (Administrator by default), and
/// the admin API says so (the auth audit's finding 4: deleting its last assignment made it Administrator
/// again while the API showed it with no role): the principal view's `defaultRole`, the listing's
/// `defaultRoles`, and the deletion's `defaultRoleApplies`.
#[tokio::test]
async fn the_default_role_a_configured_client_holds_is_shown() {
    let secret = keyvault_server::auth::generate_secret();
    let lv = LocalVault::start_with(LocalVaultOptions {
        clients: vec![keyvault_server::config::ClientConfig {
            client_id: "cfgdef".into(),
            secret_hashes: vec![keyvault_server::auth::hash_secret(&secret).unwrap()],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let http = common::vault_client(&lv);
    let admin = common::vault_token(&lv, &http, lv.client_id(), lv.client_secret()).await;
    let call = async |method: Method, path: &str, body: Option<Value>| {
        let req = http.request(method, format!("{}{path}", lv.vault_url()));
        common::send_json(req.bearer_auth(&admin), body).await
    };
    let administrator =
        json!({"principal": "cfgdef", "role": "Key Vault Administrator", "scope": "/"});

    let (status, view) = call(Method::GET, "/admin/principals/cfgdef", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["defaultRole"], administrator, "{view}");
    let (_, list) = call(Method::GET, "/admin/roleAssignments?principal=cfgdef", None).await;
    assert_eq!(list["value"], json!([]), "{list}");
    assert_eq!(list["defaultRoles"], json!([administrator]), "{list}");
    let (_, all) = call(Method::GET, "/admin/roleAssignments", None).await;
    assert!(
        all["defaultRoles"]
            .as_array()
            .unwrap()
            .contains(&administrator),
        "{all}"
    );
    let (_, principals) = call(Method::GET, "/admin/principals", None).await;
    let listed = principals["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["clientId"] == "cfgdef")
        .unwrap();
    assert_eq!(listed["defaultRole"], administrator);

    // Narrowed: the default goes, and the views say so.
    let (status, a) = call(
        Method::POST,
        "/admin/roleAssignments",
        Some(json!({"principal": "cfgdef", "role": "Key Vault Reader", "scope": "/secrets/pub"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let (_, view) = call(Method::GET, "/admin/principals/cfgdef", None).await;
    assert!(view.get("defaultRole").is_none(), "{view}");
    let (_, list) = call(Method::GET, "/admin/roleAssignments?principal=cfgdef", None).await;
    assert_eq!(list["defaultRoles"], json!([]), "{list}");
    let cfg_token = common::vault_token(&lv, &http, "cfgdef", &secret).await;
    let get_other = async || {
        let url = format!("{}/secrets/other?api-version=7.6", lv.vault_url());
        http.get(url)
            .bearer_auth(&cfg_token)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(get_other().await, StatusCode::FORBIDDEN);

    // Its last assignment deleted: the answer says the default applies again, and it does.
    let id = a["id"].as_str().unwrap();
    let (status, removed) = call(
        Method::DELETE,
        &format!("/admin/roleAssignments/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["defaultRoleApplies"], administrator, "{removed}");
    let (_, view) = call(Method::GET, "/admin/principals/cfgdef", None).await;
    assert_eq!(view["defaultRole"], administrator, "{view}");
    // (Administrator again: the secret is not there, and it may look.)
    assert_eq!(get_other().await, StatusCode::NOT_FOUND);

    // A principal without a default: nothing said.
    let (_, view) = call(
        Method::GET,
        &format!("/admin/principals/{}", lv.client_id()),
        None,
    )
    .await;
    assert!(view.get("defaultRole").is_none(), "{view}");
    lv.shutdown().await;
}
