//! Seed example "Basic Secret Management": set, get, list.
//!
//! `cargo run -p keyvault-secrets --example basic` (set `VAULT_URL` to use a real vault).

mod common;

use keyvault_secrets::blocking::SecretClient;

fn main() -> keyvault_secrets::Result<()> {
    let target = common::Target::start_blocking();
    let client = SecretClient::new(
        &target.vault_url,
        target.credential.clone(),
        Some(target.options.clone()),
    )?;

    // Store a secret
    let secret = client.set_secret("database-password", "super-secret-password", None)?;
    println!("Stored secret: {} (ID: {})", secret.name, secret.id);

    // Retrieve secret value
    let retrieved = client.get_secret("database-password", None)?;
    println!("Secret value: {}", retrieved.value().unwrap_or_default());

    // List all secrets
    for properties in client.list_properties_of_secrets(None)? {
        println!("Secret: {}", properties?.name);
    }

    client.close();
    drop(client); // closes its connections, so the local vault stops at once
    target.stop_blocking();
    Ok(())
}
