//! Rotating the server's own token signing key: a new key signs, the retired key stays published and
//! accepted until it is dropped from `previous_signing_key_files`.

use keyvault_server::{Config, Server};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;

const HOST: &str = "vault.rotation.test";

struct Running {
    base: String,
    ca: Vec<u8>,
    client_id: String,
    client_secret: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(data: &Path, signing: PathBuf, previous: Vec<PathBuf>) -> Running {
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        dev: true,
        issuer_host: Some(HOST.into()),
        resource_suffix: Some(HOST.into()),
        signing_key_file: Some(signing),
        previous_signing_key_files: previous,
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let dev = server.info().dev.clone().unwrap();
    let ca = std::fs::read(&dev.ca_cert).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    Running {
        base: dev.vault_url.clone(),
        ca,
        client_id: dev.client_id.clone(),
        client_secret: dev.client_secret.expose().to_string(),
        stop,
        task,
    }
}

impl Running {
    fn http(&self) -> reqwest::Client {
        common::https_client(&self.ca)
    }

    async fn token(&self) -> String {
        common::client_token(
            &self.http(),
            &format!("{}/keyvault-rs/oauth2/v2.0/token", self.base),
            &self.client_id,
            &self.client_secret,
            &format!("https://{HOST}/.default"),
        )
        .await
    }

    async fn list_status(&self, token: &str) -> StatusCode {
        common::list_status(&self.http(), &self.base, token).await
    }

    async fn jwks_kids(&self) -> Vec<String> {
        let v: Value = self
            .http()
            .get(format!("{}/keyvault-rs/discovery/v2.0/keys", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_retired_key_stays_valid_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (old_key, new_key) = (dir.path().join("old.pk8"), dir.path().join("new.pk8"));

    // Before: the old key signs.
    let before = start(&data, old_key.clone(), vec![]).await;
    let old_token = before.token().await;
    let old_kid = kid_of(&old_token);
    assert_eq!(before.jwks_kids().await, vec![old_kid.clone()]);
    assert_eq!(before.list_status(&old_token).await, StatusCode::OK);
    before.stop().await;

    // Rotation: a new key signs; the old one is published and its tokens still work.
    let during = start(&data, new_key.clone(), vec![old_key.clone()]).await;
    let new_token = during.token().await;
    let new_kid = kid_of(&new_token);
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        during.jwks_kids().await,
        vec![new_kid.clone(), old_kid.clone()]
    );
    assert_eq!(during.list_status(&old_token).await, StatusCode::OK);
    assert_eq!(during.list_status(&new_token).await, StatusCode::OK);
    during.stop().await;

    // After: the old key is dropped; its tokens are refused, the new ones work.
    let after = start(&data, new_key.clone(), vec![]).await;
    assert_eq!(after.jwks_kids().await, vec![new_kid]);
    assert_eq!(
        after.list_status(&old_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(after.list_status(&new_token).await, StatusCode::OK);
    after.stop().await;

    // A retired key that does not exist is a start-up error, not a silent new key.
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        dev: true,
        signing_key_file: Some(new_key),
        previous_signing_key_files: vec![dir.path().join("missing.pk8")],
        ..Config::default()
    };
    let err = Server::bind(config)
        .await
        .err()
        .expect("a missing previous key is refused");
    assert!(
        err.to_string().contains("previous token signing key"),
        "{err}"
    );
    assert!(!dir.path().join("missing.pk8").exists());
}
