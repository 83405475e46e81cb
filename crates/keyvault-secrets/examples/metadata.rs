//! Seed example "Secret with Metadata": content type, expiry and tags; then update the tags.
//!
//! `cargo run -p keyvault-secrets --example metadata`

mod common;

use keyvault_secrets::blocking::SecretClient;
use keyvault_secrets::{OffsetDateTime, SetSecretOptions, UpdateSecretPropertiesOptions};

fn main() -> keyvault_secrets::Result<()> {
    let target = common::Target::start_blocking();
    let client = SecretClient::new(
        &target.vault_url,
        target.credential.clone(),
        Some(target.options.clone()),
    )?;

    // Store secret with metadata and expiration
    let expiry_date = OffsetDateTime::now_utc() + time::Duration::days(365);
    let secret = client.set_secret(
        "api-key",
        "sk-1234567890abcdef",
        Some(
            SetSecretOptions::default()
                .content_type("text/plain")
                .expires_on(expiry_date)
                .tags([
                    ("environment", "production"),
                    ("service", "payment-api"),
                    ("owner", "team-alpha"),
                ]),
        ),
    )?;
    println!(
        "{} expires on {:?}, tags {:?}",
        secret.name, secret.properties.expires_on, secret.properties.tags
    );

    // Update secret properties
    let updated = client.update_secret_properties(
        "api-key",
        None,
        UpdateSecretPropertiesOptions::default().tags([
            ("environment", "production"),
            ("service", "payment-api"),
            ("owner", "team-beta"), // Changed owner
            ("last-rotated", "2024-01-15"),
        ]),
    )?;
    println!("Updated tags: {:?}", updated.tags);

    drop(client); // closes its connections, so the local vault stops at once
    target.stop_blocking();
    Ok(())
}
