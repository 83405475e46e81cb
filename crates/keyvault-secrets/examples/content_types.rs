//! Seed example "Working with Different Content Types": JSON, PEM and a connection string.
//!
//! `cargo run -p keyvault-secrets --example content_types`

mod common;

use keyvault_secrets::SetSecretOptions;
use keyvault_secrets::blocking::SecretClient;

fn main() -> keyvault_secrets::Result<()> {
    let target = common::Target::start_blocking();
    let client = SecretClient::new(
        &target.vault_url,
        target.credential.clone(),
        Some(target.options.clone()),
    )?;

    // JSON configuration
    let config = serde_json::json!({
        "database_url": "postgresql://user:pass@host:5432/db",
        "redis_url": "redis://localhost:6379/0",
        "debug": false
    });
    client.set_secret(
        "app-config",
        config.to_string(),
        Some(SetSecretOptions::default().content_type("application/json")),
    )?;

    // Certificate/PEM data
    let cert_data = "-----BEGIN CERTIFICATE-----\nMIIDXTCCAkWgAwIBAgIJAKoK/heBjcOuMA0GCSqGSIb3DQEBBQUAMEUxCzAJBgNV\n...\n-----END CERTIFICATE-----";
    client.set_secret(
        "ssl-certificate",
        cert_data,
        Some(SetSecretOptions::default().content_type("application/x-pem-file")),
    )?;

    // Connection string
    client.set_secret(
        "storage-connection",
        "DefaultEndpointsProtocol=https;AccountName=...",
        Some(SetSecretOptions::default().content_type("text/plain")),
    )?;

    for name in ["app-config", "ssl-certificate", "storage-connection"] {
        let s = client.get_secret(name, None)?;
        println!(
            "{name}: {:?}, {} bytes",
            s.properties.content_type,
            s.value().unwrap_or_default().len()
        );
    }
    let parsed: serde_json::Value = serde_json::from_str(
        client
            .get_secret("app-config", None)?
            .value()
            .unwrap_or("null"),
    )
    .unwrap_or_default();
    println!("debug = {}", parsed["debug"]);

    drop(client); // closes its connections, so the local vault stops at once
    target.stop_blocking();
    Ok(())
}
