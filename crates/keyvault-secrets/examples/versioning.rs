//! Seed example "Secret Versioning": two versions, get latest and a specific one, list versions.
//!
//! `cargo run -p keyvault-secrets --example versioning`

mod common;

use keyvault_secrets::blocking::SecretClient;

fn main() -> keyvault_secrets::Result<()> {
    let target = common::Target::start_blocking();
    let client = SecretClient::new(
        &target.vault_url,
        target.credential.clone(),
        Some(target.options.clone()),
    )?;

    // Create initial version
    let secret_v1 =
        client.set_secret("connection-string", "Server=old-server;Database=app", None)?;
    // Update secret (creates new version)
    let _secret_v2 =
        client.set_secret("connection-string", "Server=new-server;Database=app", None)?;

    // Get latest version
    let latest = client.get_secret("connection-string", None)?;
    println!("Latest: {}", latest.value().unwrap_or_default());

    // Get specific version
    let specific =
        client.get_secret("connection-string", secret_v1.properties.version.as_deref())?;
    println!("First: {}", specific.value().unwrap_or_default());

    // List all versions
    for properties in client.list_properties_of_secret_versions("connection-string", None)? {
        let properties = properties?;
        println!(
            "Version: {:?}, Created: {:?}",
            properties.version, properties.created_on
        );
    }

    drop(client); // closes its connections, so the local vault stops at once
    target.stop_blocking();
    Ok(())
}
