//! Access control through the real HTTP API (in-process LocalVault, tokens from the built-in issuer):
//! every operation × every built-in role × vault and secret scope → exactly the allowed set succeeds and
//! everything else is 403 with Key Vault's error body; listings show only what the caller may see;
//! changes to the policy take effect on the next request.

use keyvault_server::auth::policy::{
    ADMINISTRATOR, Assignment, Operation, Permission, READER, SECRETS_OFFICER, SECRETS_USER, Scope,
};
use keyvault_server::local::LocalVault;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;

mod common;

const API: &str = "7.6";

struct Harness {
    lv: LocalVault,
    http: reqwest::Client,
    admin: String,
}

impl Harness {
    async fn start() -> Harness {
        let lv = LocalVault::start().await.unwrap();
        let http = common::vault_client(&lv);
        let mut h = Harness {
            lv,
            http,
            admin: String::new(),
        };
        let (id, secret) = (
            h.lv.client_id().to_string(),
            h.lv.client_secret().to_string(),
        );
        h.admin = h.token(&id, &secret).await;
        h
    }

    async fn token(&self, client_id: &str, secret: &str) -> String {
        common::vault_token(&self.lv, &self.http, client_id, secret).await
    }

    /// A new client with `role` at `scope` (or no role), and its token.
    async fn principal(&self, role: Option<(&str, &str)>) -> (String, String) {
        let (id, secret) = self.lv.add_client();
        if let Some((role, scope)) = role {
            self.assign(&id, role, scope);
        }
        let token = self.token(&id, &secret).await;
        (id, token)
    }

    fn assign(&self, principal: &str, role: &str, scope: &str) -> Assignment {
        common::assign(&self.lv, principal, role, Scope::parse(scope).unwrap())
    }

    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = common::api_url(self.lv.vault_url(), path, API);
        let req = self.http.request(method, url).bearer_auth(token);
        common::send_json(req, body).await
    }

    async fn admin_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, b) = self.call(&self.admin, method, path, body).await;
        assert!(s.is_success(), "{path}: {s} {b}");
        b
    }

    async fn set(&self, name: &str) {
        self.admin_ok(
            Method::PUT,
            &format!("/secrets/{name}"),
            Some(json!({"value": "v"})),
        )
        .await;
    }

    async fn set_deleted(&self, name: &str) {
        self.set(name).await;
        self.admin_ok(Method::DELETE, &format!("/secrets/{name}"), None)
            .await;
    }

    async fn status_of(&self, path: &str) -> StatusCode {
        self.call(&self.admin, Method::GET, path, None).await.0
    }

    /// All names of a listing, following nextLinks.
    async fn list_all(&self, token: &str, path: &str) -> (StatusCode, BTreeSet<String>) {
        let (s, names, _) = self.list_with_links(token, path).await;
        (s, names)
    }

    /// All names of a listing and the nextLinks followed.
    async fn list_with_links(
        &self,
        token: &str,
        path: &str,
    ) -> (StatusCode, BTreeSet<String>, Vec<String>) {
        let mut names = BTreeSet::new();
        let mut links = Vec::new();
        let (s, mut body) = self.call(token, Method::GET, path, None).await;
        if s != StatusCode::OK {
            return (s, names, links);
        }
        loop {
            for item in body["value"].as_array().unwrap() {
                let id = item["id"].as_str().unwrap();
                names.insert(id.split('/').nth(4).unwrap().to_string());
            }
            let Some(next) = body["nextLink"].as_str() else {
                break;
            };
            links.push(next.to_string());
            let resp = self.http.get(next).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            body = resp.json().await.unwrap();
        }
        (s, names, links)
    }
}

const OPS: [Operation; 12] = [
    Operation::SecretGet,
    Operation::SecretSet,
    Operation::SecretUpdate,
    Operation::SecretDelete,
    Operation::SecretList,
    Operation::SecretListVersions,
    Operation::SecretListDeleted,
    Operation::SecretGetDeleted,
    Operation::SecretPurge,
    Operation::SecretRecover,
    Operation::SecretBackup,
    Operation::SecretRestore,
];

fn role_permissions(role: &str) -> Vec<Permission> {
    use Permission::*;
    match role {
        ADMINISTRATOR => Permission::ALL.to_vec(),
        SECRETS_OFFICER => vec![Get, List, Set, Delete, Recover, Backup, Restore, Purge],
        SECRETS_USER => vec![Get, List],
        READER => vec![List],
        _ => vec![],
    }
}

/// Prepares the state `op` needs on secret `name` (as the admin), performs `op` as `token`, and returns the
/// status and body; plus, for a denial, checks that nothing changed.
async fn perform(h: &Harness, token: &str, op: Operation, name: &str) -> (StatusCode, Value) {
    let secret = format!("/secrets/{name}");
    let deleted = format!("/deletedsecrets/{name}");
    match op {
        Operation::SecretGet => {
            h.set(name).await;
            h.call(token, Method::GET, &format!("{secret}/"), None)
                .await
        }
        Operation::SecretSet => {
            let r = h
                .call(token, Method::PUT, &secret, Some(json!({"value": "x"})))
                .await;
            if r.0 == StatusCode::FORBIDDEN {
                assert_eq!(h.status_of(&secret).await, StatusCode::NOT_FOUND);
            }
            r
        }
        Operation::SecretUpdate => {
            h.set(name).await;
            h.call(
                token,
                Method::PATCH,
                &format!("{secret}/"),
                Some(json!({"contentType": "text/plain"})),
            )
            .await
        }
        Operation::SecretDelete => {
            h.set(name).await;
            let r = h.call(token, Method::DELETE, &secret, None).await;
            if r.0 == StatusCode::FORBIDDEN {
                assert_eq!(h.status_of(&secret).await, StatusCode::OK);
            }
            r
        }
        Operation::SecretList => {
            h.set(name).await;
            h.call(token, Method::GET, "/secrets", None).await
        }
        Operation::SecretListVersions => {
            h.set(name).await;
            h.call(token, Method::GET, &format!("{secret}/versions"), None)
                .await
        }
        Operation::SecretListDeleted => {
            h.set_deleted(name).await;
            h.call(token, Method::GET, "/deletedsecrets", None).await
        }
        Operation::SecretGetDeleted => {
            h.set_deleted(name).await;
            h.call(token, Method::GET, &deleted, None).await
        }
        Operation::SecretPurge => {
            h.set_deleted(name).await;
            let r = h.call(token, Method::DELETE, &deleted, None).await;
            if r.0 == StatusCode::FORBIDDEN {
                assert_eq!(h.status_of(&deleted).await, StatusCode::OK);
            }
            r
        }
        Operation::SecretRecover => {
            h.set_deleted(name).await;
            let r = h
                .call(token, Method::POST, &format!("{deleted}/recover"), None)
                .await;
            if r.0 == StatusCode::FORBIDDEN {
                assert_eq!(h.status_of(&deleted).await, StatusCode::OK);
            }
            r
        }
        Operation::SecretBackup => {
            h.set(name).await;
            h.call(token, Method::POST, &format!("{secret}/backup"), None)
                .await
        }
        Operation::SecretRestore => {
            h.set(name).await;
            let blob = h
                .admin_ok(Method::POST, &format!("{secret}/backup"), None)
                .await;
            h.admin_ok(Method::DELETE, &secret, None).await;
            h.admin_ok(Method::DELETE, &deleted, None).await;
            let r = h
                .call(
                    token,
                    Method::POST,
                    "/secrets/restore",
                    Some(json!({"value": blob["value"]})),
                )
                .await;
            if r.0 == StatusCode::FORBIDDEN {
                assert_eq!(h.status_of(&secret).await, StatusCode::NOT_FOUND);
            }
            r
        }
        Operation::VaultAdmin => unreachable!(),
    }
}

fn assert_forbidden(status: StatusCode, body: &Value, principal: &str, op: Operation, ctx: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{ctx}: {body}");
    assert_eq!(body["error"]["code"], "Forbidden", "{ctx}: {body}");
    assert_eq!(
        body["error"]["innererror"]["code"], "ForbiddenByRbac",
        "{ctx}: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Caller is not authorized to perform action on resource."),
        "{message}"
    );
    assert!(
        message.contains(&format!("Principal: '{principal}'")),
        "{message}"
    );
    assert!(
        message.contains(&format!("Action: '{}'", op.data_action())),
        "{message}"
    );
    assert!(
        message.contains(&format!("secrets {} permission", op.permission())),
        "{message}"
    );
}

#[tokio::test]
async fn every_operation_by_every_builtin_role_at_vault_and_secret_scope() {
    let h = Harness::start().await;
    // A secret nobody but the admin is given: must never show in a scoped principal's listing.
    h.set("decoy").await;
    h.set_deleted("decoy-deleted").await;

    let mut case = 0;
    let roles = [ADMINISTRATOR, SECRETS_OFFICER, SECRETS_USER, READER, "none"];
    for role in roles {
        for vault_scope in [true, false] {
            if role == "none" && !vault_scope {
                continue;
            }
            let (id, token) = if role == "none" {
                h.principal(None).await
            } else if vault_scope {
                h.principal(Some((role, "/"))).await
            } else {
                h.principal(None).await
            };
            let perms = role_permissions(role);
            for op in OPS {
                case += 1;
                let name = format!("c{case}");
                if role != "none" && !vault_scope {
                    h.assign(&id, role, &format!("/secrets/{name}"));
                }
                let ctx = format!(
                    "{role} at {} / {op:?}",
                    if vault_scope { "vault" } else { "secret" }
                );
                let vault_level = matches!(op, Operation::SecretRestore);
                let listing = matches!(op, Operation::SecretList | Operation::SecretListDeleted);
                let allowed = perms.contains(&op.permission()) && (vault_scope || !vault_level);
                let (status, body) = perform(&h, &token, op, &name).await;
                if !allowed {
                    assert_forbidden(status, &body, &id, op, &ctx);
                    continue;
                }
                assert!(status.is_success(), "{ctx}: {status} {body}");
                if listing {
                    let path = if op == Operation::SecretList {
                        "/secrets?maxresults=1"
                    } else {
                        "/deletedsecrets?maxresults=1"
                    };
                    let (s, names) = h.list_all(&token, path).await;
                    assert_eq!(s, StatusCode::OK);
                    assert!(names.contains(&name), "{ctx}: {names:?}");
                    if vault_scope {
                        assert!(
                            names.iter().any(|n| n.starts_with("decoy")),
                            "{ctx}: {names:?}"
                        );
                    } else {
                        assert!(
                            names.iter().all(|n| n.starts_with('c')),
                            "{ctx}: a scoped principal sees only its secrets: {names:?}"
                        );
                        assert!(!names.iter().any(|n| n.starts_with("decoy")), "{ctx}");
                    }
                }
            }
        }
    }
    assert_eq!(case, 9 * OPS.len());
}

#[tokio::test]
async fn prefix_scopes_filter_listings_and_changes_apply_at_once() {
    let h = Harness::start().await;
    for name in ["team-a", "team-b", "other", "TEAM-c"] {
        h.set(name).await;
    }
    h.set_deleted("payroll-deleted").await;
    h.set_deleted("team-deleted").await;
    let (id, token) = h.principal(Some((READER, "/secrets/team-*"))).await;
    let (s, names, links) = h.list_with_links(&token, "/secrets?maxresults=1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        names,
        ["TEAM-c", "team-a", "team-b"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    // No nextLink names a secret the caller may not see (`other` sorts first: a plain cursor after the
    // first page would be its name). Nor in the deleted listing.
    assert!(!links.is_empty());
    for link in &links {
        assert!(!link.to_lowercase().contains("other"), "{link}");
    }
    let (s, names, links) = h
        .list_with_links(&token, "/deletedsecrets?maxresults=1")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names, ["team-deleted".to_string()].into_iter().collect());
    for link in &links {
        assert!(!link.contains("payroll"), "{link}");
    }
    // A cursor the caller makes up is refused: it could walk the names it may not see.
    let (s, b) = h
        .call(&token, Method::GET, "/secrets?$skiptoken=other", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // Reader: metadata only.
    let (s, b) = h
        .call(&token, Method::GET, "/secrets/team-a/versions", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = h.call(&token, Method::GET, "/secrets/team-a/", None).await;
    assert_forbidden(s, &b, &id, Operation::SecretGet, "reader get");
    let (s, b) = h
        .call(&token, Method::GET, "/secrets/other/versions", None)
        .await;
    assert_forbidden(s, &b, &id, Operation::SecretListVersions, "out of scope");

    // A new assignment works with the same token, and removing it takes the right away again.
    let a = h.assign(&id, SECRETS_USER, "/secrets/team-a");
    let (s, b) = h.call(&token, Method::GET, "/secrets/team-a/", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["value"], "v");
    assert!(h.lv.policy().unassign(&a.id));
    let (s, _) = h.call(&token, Method::GET, "/secrets/team-a/", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    h.lv.policy().unassign_principal(&id);
    let (s, b) = h.call(&token, Method::GET, "/secrets", None).await;
    assert_forbidden(s, &b, &id, Operation::SecretList, "no assignments");

    // Custom roles.
    h.lv.policy()
        .define_role("Rotator", vec![Permission::Set, Permission::Get])
        .unwrap();
    h.assign(&id, "rotator", "/secrets/team-*");
    let (s, b) = h
        .call(
            &token,
            Method::PUT,
            "/secrets/team-z",
            Some(json!({"value": "n"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = h
        .call(
            &token,
            Method::PUT,
            "/secrets/other",
            Some(json!({"value": "n"})),
        )
        .await;
    assert_forbidden(s, &b, &id, Operation::SecretSet, "custom role out of scope");
    let (s, b) = h
        .call(&token, Method::DELETE, "/secrets/team-z", None)
        .await;
    assert_forbidden(
        s,
        &b,
        &id,
        Operation::SecretDelete,
        "custom role lacks delete",
    );
}

#[tokio::test]
async fn checks_come_in_the_right_order() {
    let h = Harness::start().await;
    let (id, token) = h.principal(None).await;
    // Authentication before everything: no token → 401 even for a bad name.
    let resp = h
        .http
        .put(format!(
            "{}/secrets/bad_name?api-version={API}",
            h.lv.vault_url()
        ))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Then api-version and name: the same 400s as before, for anyone.
    let (s, b) = h
        .call(&token, Method::GET, "/secrets/bad_name/", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // Then authorization, before the body is read: an empty body still gets the 403.
    let resp = h
        .http
        .put(format!("{}/secrets/ok?api-version={API}", h.lv.vault_url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let b: Value = resp.json().await.unwrap();
    assert_forbidden(
        StatusCode::FORBIDDEN,
        &b,
        &id,
        Operation::SecretSet,
        "empty body",
    );
    // A missing secret is a 404 only for those allowed to know.
    let (s, _) = h.call(&token, Method::GET, "/secrets/missing/", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .call(&h.admin, Method::GET, "/secrets/missing/", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
