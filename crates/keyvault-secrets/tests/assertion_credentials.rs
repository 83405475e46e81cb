//! Certificate and workload identity credentials against the real server (in process, HTTPS):
//! `ClientCertificateCredential` signs a client assertion that the server's token endpoint verifies with the
//! certificate configured for the client (`[[clients]] certificates`), and `WorkloadIdentityCredential` posts a
//! federated token (a trusted issuer's JWT, as the kubelet projects a service account token) that the server
//! matches against the client's `federated` credentials. Shown: both read a secret through `SecretClient`;
//! an unknown certificate, an expired or not yet valid one, a wrong client, a wrong subject or audience get
//! the OAuth errors; the token file
//! is read again at each request; `DefaultAzureCredential` finds the workload identity from the environment.

mod common;

use keyvault_secrets::credentials::{
    ClientAssertionCredential, ClientCertificateCredential, ClientCertificateCredentialOptions,
    ClientSecretCredentialOptions, DefaultAzureCredential, DefaultAzureCredentialOptions,
    TokenCredential, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use keyvault_secrets::{ErrorKind, SecretClient};
use keyvault_server::auth::{SigningKey, TokenIssuer, unix_now};
use keyvault_server::config::{ClientConfig, FederatedConfig, TrustedIssuerConfig};
use keyvault_server::local::{LocalVault, LocalVaultOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const RSA_TEST_KEY: &str = include_str!("data/rsa-test-key.pem");

/// A certificate and its key: (certificate PEM, key PEM).
fn certificate(rsa: bool) -> (String, String) {
    let key = if rsa {
        rcgen::KeyPair::from_pem_and_sign_algo(RSA_TEST_KEY, &rcgen::PKCS_RSA_SHA256).unwrap()
    } else {
        rcgen::KeyPair::generate().unwrap()
    };
    let cert = rcgen::CertificateParams::new(vec!["cert-app".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn common_options(lv: &LocalVault) -> ClientSecretCredentialOptions {
    ClientSecretCredentialOptions {
        authority_host: lv.authority_host().to_string(),
        additional_ca_certificates: vec![lv.ca_cert_pem().to_vec()],
        trust_system_roots: false,
        ..Default::default()
    }
}

/// `GET /admin/principals/{id}` as the dev client (an administrator).
async fn admin_view(lv: &LocalVault, client_id: &str) -> serde_json::Value {
    use keyvault_secrets::http::{Method, Request};
    let path = format!("/admin/principals/{client_id}");
    let r = common::client(lv)
        .send_request(Request::new(Method::GET, path))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn scope(lv: &LocalVault) -> String {
    // The resource the vault's challenge names (`https://localhost:{port}`).
    let port = lv.vault_url().rsplit(':').next().unwrap();
    format!("https://localhost:{port}/.default")
}

#[tokio::test]
async fn certificate_credential_reads_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (ec_cert, ec_key) = certificate(false);
    let (rsa_cert, rsa_key) = certificate(true);
    let lv = LocalVault::start_with(LocalVaultOptions {
        clients: vec![ClientConfig {
            client_id: "cert-app".into(),
            certificates: vec![
                write(dir.path(), "ec-cert.pem", &ec_cert),
                write(dir.path(), "rsa-cert.pem", &rsa_cert),
            ],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    common::client(&lv)
        .set_secret("db-password", "hunter2", None)
        .await
        .unwrap();
    let credential = |pem: &str, client_id: &str, chain: bool| {
        ClientCertificateCredential::new(
            lv.tenant_id(),
            client_id,
            write(dir.path(), "client.pem", pem),
            Some(ClientCertificateCredentialOptions {
                common: common_options(&lv),
                send_certificate_chain: chain,
                ..Default::default()
            }),
        )
        .unwrap()
    };
    // EC (ES256) and RSA (RS256) keys, with and without the chain in x5c: a token, then the secret.
    for (pem, chain) in [
        (format!("{ec_cert}{ec_key}"), false),
        (format!("{rsa_key}{rsa_cert}"), true),
    ] {
        let c = SecretClient::new(
            lv.vault_url(),
            Arc::new(credential(&pem, "cert-app", chain)),
            Some(common::options(&lv)),
        )
        .unwrap();
        let got = c.get_secret("db-password", None).await.unwrap();
        assert_eq!(got.value.as_ref().unwrap().expose(), "hunter2");
    }
    // A certificate the server doesn't know for this client: the token request fails with the OAuth error.
    let (other_cert, other_key) = certificate(false);
    let stranger = credential(&format!("{other_cert}{other_key}"), "cert-app", false);
    let e = stranger.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential);
    assert!(
        e.message().contains("status 401") && e.message().contains("invalid_client: AADSTS700027"),
        "{e}"
    );
    // The right certificate for another client id (the dev client, which has none): refused the same way.
    let impostor = credential(&format!("{ec_cert}{ec_key}"), lv.client_id(), false);
    let e = impostor.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert!(e.message().contains("AADSTS700027"), "{e}");
    // Each request carries a new assertion (a new jti): asking twice works.
    let fine = credential(&format!("{ec_cert}{ec_key}"), "cert-app", false);
    fine.get_token(&[&scope(&lv)], None).await.unwrap();
    fine.get_token(&[&scope(&lv)], None).await.unwrap();
    // The admin API shows the client's certificates by thumbprint (x5t#S256), as the credential computes it,
    // with their validity periods (rcgen's default: 1975-01-01 to 4096-01-01).
    let shown = admin_view(&lv, "cert-app").await;
    let rsa = credential(&format!("{rsa_key}{rsa_cert}"), "cert-app", false);
    let dates = (
        rcgen::date_time_ymd(1975, 1, 1),
        rcgen::date_time_ymd(4096, 1, 1),
    );
    let view = |x5t: &str| {
        serde_json::json!({"x5t#S256": x5t, "notBefore": dates.0.unix_timestamp(),
            "notAfter": dates.1.unix_timestamp()})
    };
    assert_eq!(
        shown["certificates"],
        serde_json::json!([
            view(fine.thumbprint_sha256()),
            view(rsa.thumbprint_sha256())
        ])
    );
    assert!(shown.get("federated").is_none(), "{shown}");
    lv.shutdown().await;
}

/// A certificate and its key valid between two dates: (certificate PEM, key PEM).
fn certificate_between(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["cert-app".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A rotation through the real token endpoint: the client has an expired certificate and a valid one
/// configured. The valid one gets a token; the expired one is refused with Entra's code for a key credential
/// outside its dates (AADSTS700027), naming the certificate's thumbprint and notAfter; one not yet valid is
/// refused the same way, naming its notBefore. The server still starts with them (it only warns).
#[tokio::test]
async fn certificates_outside_their_validity_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old_cert, old_key) = certificate_between((2020, 1, 1), (2021, 1, 1));
    let (new_cert, new_key) = certificate_between((2021, 1, 1), (2090, 1, 1));
    let (next_cert, next_key) = certificate_between((2089, 1, 1), (2099, 1, 1));
    let lv = LocalVault::start_with(LocalVaultOptions {
        clients: vec![ClientConfig {
            client_id: "cert-app".into(),
            certificates: vec![
                write(dir.path(), "old.pem", &old_cert),
                write(dir.path(), "new.pem", &format!("{new_cert}{next_cert}")),
            ],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let credential = |name: &str, pem: &str| {
        ClientCertificateCredential::new(
            lv.tenant_id(),
            "cert-app",
            write(dir.path(), name, pem),
            Some(ClientCertificateCredentialOptions {
                common: common_options(&lv),
                ..Default::default()
            }),
        )
        .unwrap()
    };
    let valid = credential("new-client.pem", &format!("{new_cert}{new_key}"));
    valid.get_token(&[&scope(&lv)], None).await.unwrap();

    let expired = credential("old-client.pem", &format!("{old_cert}{old_key}"));
    let e = expired.get_token(&[&scope(&lv)], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential);
    let text = e.message();
    for part in [
        "status 401",
        "invalid_client: AADSTS700027",
        "expired certificate",
        &format!("x5t#S256 '{}'", expired.thumbprint_sha256()),
        "notAfter 2021-01-01T00:00:00Z",
    ] {
        assert!(text.contains(part), "{part}: {e}");
    }

    let early = credential("next-client.pem", &format!("{next_cert}{next_key}"));
    let e = early.get_token(&[&scope(&lv)], None).await.unwrap_err();
    let text = e.message();
    for part in [
        "invalid_client: AADSTS700027",
        "not yet valid",
        &format!("x5t#S256 '{}'", early.thumbprint_sha256()),
        "notBefore 2089-01-01T00:00:00Z",
    ] {
        assert!(text.contains(part), "{part}: {e}");
    }

    // The admin API shows each certificate's dates.
    let shown = admin_view(&lv, "cert-app").await;
    let day = |y, m, d| rcgen::date_time_ymd(y, m, d).unix_timestamp();
    assert_eq!(
        shown["certificates"][0]["x5t#S256"],
        expired.thumbprint_sha256()
    );
    assert_eq!(shown["certificates"][0]["notAfter"], day(2021, 1, 1));
    assert_eq!(shown["certificates"][2]["notBefore"], day(2089, 1, 1));
    lv.shutdown().await;
}

const ISS: &str = "https://oidc.prod-aks.example.com/0000-cluster/";
const SUBJECT: &str = "system:serviceaccount:apps:billing";
const EXCHANGE: &str = "api://AzureADTokenExchange";

struct Cluster {
    idp: Arc<TokenIssuer>,
    lv: LocalVault,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A vault trusting a "cluster" issuer (JWKS file), with client `wi-app` federated to SUBJECT.
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let idp = Arc::new(TokenIssuer::new(
            Arc::new(SigningKey::generate().unwrap()),
            ISS.into(),
            "cluster".into(),
            3600,
        ));
        let jwks = write(dir.path(), "jwks.json", &idp.jwks().to_string());
        let lv = LocalVault::start_with(LocalVaultOptions {
            trusted_issuers: vec![TrustedIssuerConfig {
                issuer: ISS.into(),
                audience: "api://keyvault".into(),
                jwks_file: Some(jwks),
                ..Default::default()
            }],
            clients: vec![ClientConfig {
                client_id: "wi-app".into(),
                federated: vec![FederatedConfig {
                    issuer: ISS.into(),
                    subject: SUBJECT.into(),
                    audience: None,
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        Cluster { idp, lv, dir }
    }

    /// The projected token file, as the kubelet writes it.
    fn token_file(&self, subject: &str, audience: &str) -> PathBuf {
        let (token, _) = self.idp.issue(subject, audience, unix_now()).unwrap();
        write(self.dir.path(), "azure-identity-token", &token)
    }

    fn credential(&self, file: PathBuf) -> WorkloadIdentityCredential {
        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            tenant_id: Some(self.lv.tenant_id().into()),
            client_id: Some("wi-app".into()),
            token_file_path: Some(file),
            common: common_options(&self.lv),
        }))
        .unwrap()
    }
}

#[tokio::test]
async fn workload_identity_reads_a_secret() {
    let k = Cluster::start().await;
    common::client(&k.lv)
        .set_secret("billing-key", "k-42", None)
        .await
        .unwrap();
    let file = k.token_file(SUBJECT, EXCHANGE);
    let c = SecretClient::new(
        k.lv.vault_url(),
        Arc::new(k.credential(file.clone())),
        Some(common::options(&k.lv)),
    )
    .unwrap();
    let got = c.get_secret("billing-key", None).await.unwrap();
    assert_eq!(got.value.as_ref().unwrap().expose(), "k-42");
    // The same federated token from code (azure-identity's ClientAssertionCredential): asked for at each
    // token request; an empty one is refused before any request.
    let idp = k.idp.clone();
    let assertion = ClientAssertionCredential::new(
        k.lv.tenant_id(),
        "wi-app",
        Arc::new(move || Ok(idp.issue(SUBJECT, EXCHANGE, unix_now()).unwrap().0)),
        Some(common_options(&k.lv)),
    )
    .unwrap();
    let c = SecretClient::new(
        k.lv.vault_url(),
        Arc::new(assertion),
        Some(common::options(&k.lv)),
    )
    .unwrap();
    let got = c.get_secret("billing-key", None).await.unwrap();
    assert_eq!(got.value.as_ref().unwrap().expose(), "k-42");
    let empty = ClientAssertionCredential::new(
        k.lv.tenant_id(),
        "wi-app",
        Arc::new(|| Ok(" ".to_string())),
        Some(common_options(&k.lv)),
    )
    .unwrap();
    let e = empty.get_token(&[&scope(&k.lv)], None).await.unwrap_err();
    assert!(e.message().contains("empty assertion"), "{e}");
    // The admin API shows the federated credential.
    assert_eq!(
        admin_view(&k.lv, "wi-app").await["federated"],
        serde_json::json!([{ "issuer": ISS, "subject": SUBJECT, "audience": EXCHANGE }])
    );

    // The file is read at each request: the same credential follows a rotation, and a file holding another
    // service account's token (or one for another audience) is refused.
    let wi = k.credential(file);
    let scope = scope(&k.lv);
    wi.get_token(&[&scope], None).await.unwrap();
    k.token_file("system:serviceaccount:apps:other", EXCHANGE);
    let e = wi.get_token(&[&scope], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Credential);
    assert!(e.message().contains("invalid_client: AADSTS700213"), "{e}");
    k.token_file(SUBJECT, "api://somewhere-else");
    let e = wi.get_token(&[&scope], None).await.unwrap_err();
    assert!(e.message().contains("AADSTS700212"), "{e}");
    // A token of the right subject signed by someone else.
    let rogue = TokenIssuer::new(
        Arc::new(SigningKey::generate().unwrap()),
        ISS.into(),
        "cluster".into(),
        3600,
    );
    let (forged, _) = rogue.issue(SUBJECT, EXCHANGE, unix_now()).unwrap();
    write(k.dir.path(), "azure-identity-token", &forged);
    let e = wi.get_token(&[&scope], None).await.unwrap_err();
    assert!(e.message().contains("AADSTS50013"), "{e}");
    // An expired one.
    let (old, _) = k.idp.issue(SUBJECT, EXCHANGE, unix_now() - 7200).unwrap();
    write(k.dir.path(), "azure-identity-token", &old);
    let e = wi.get_token(&[&scope], None).await.unwrap_err();
    assert!(e.message().contains("AADSTS700024"), "{e}");
    // Rotated back to a good token: works again.
    k.token_file(SUBJECT, EXCHANGE);
    wi.get_token(&[&scope], None).await.unwrap();
    k.lv.shutdown().await;
}

/// As on AKS: the webhook's variables, and DefaultAzureCredential picks the workload identity.
#[tokio::test]
async fn default_credential_uses_the_workload_identity() {
    let k = Cluster::start().await;
    let file = k.token_file(SUBJECT, EXCHANGE);
    let env = {
        let (tenant, authority) = (
            k.lv.tenant_id().to_string(),
            k.lv.authority_host().to_string(),
        );
        let file = file.display().to_string();
        move |n: &str| match n {
            "AZURE_TENANT_ID" => Some(tenant.clone()),
            "AZURE_CLIENT_ID" => Some("wi-app".to_string()),
            "AZURE_FEDERATED_TOKEN_FILE" => Some(file.clone()),
            "AZURE_AUTHORITY_HOST" => Some(authority.clone()),
            _ => None,
        }
    };
    let c = DefaultAzureCredential::with_env(
        DefaultAzureCredentialOptions {
            environment: common_options(&k.lv),
            exclude_managed_identity_credential: true,
            exclude_cli_credential: true,
            exclude_developer_cli_credential: true,
            ..Default::default()
        },
        env,
    )
    .unwrap();
    let client =
        SecretClient::new(k.lv.vault_url(), Arc::new(c), Some(common::options(&k.lv))).unwrap();
    client.set_secret("from-aks", "yes", None).await.unwrap();
    let got = client.get_secret("from-aks", None).await.unwrap();
    assert_eq!(got.value.as_ref().unwrap().expose(), "yes");
    k.lv.shutdown().await;
}

/// A configuration the server cannot use says which client and what is wrong, and the server does not start.
#[tokio::test]
async fn misconfigured_clients_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |client: ClientConfig| async move {
        match LocalVault::start_with(LocalVaultOptions {
            clients: vec![client],
            ..Default::default()
        })
        .await
        {
            Ok(_) => panic!("the vault started"),
            Err(e) => e.to_string(),
        }
    };
    let missing = dir.path().join("missing.pem");
    let e = start(ClientConfig {
        client_id: "app".into(),
        certificates: vec![missing.clone()],
        ..Default::default()
    })
    .await;
    assert!(
        e.contains("[[clients]] 'app'") && e.contains(&format!("{}: not found", missing.display())),
        "{e}"
    );
    let (_, key) = certificate(false);
    let e = start(ClientConfig {
        client_id: "app".into(),
        certificates: vec![write(dir.path(), "key-only.pem", &key)],
        ..Default::default()
    })
    .await;
    assert!(
        e.contains("no certificate") && !e.contains("PRIVATE KEY"),
        "{e}"
    );
    let e = start(ClientConfig {
        client_id: "app".into(),
        federated: vec![FederatedConfig {
            issuer: "https://not-trusted.example/".into(),
            subject: "s".into(),
            audience: None,
        }],
        ..Default::default()
    })
    .await;
    assert!(e.contains("is not one of the [[trusted_issuers]]"), "{e}");
}
