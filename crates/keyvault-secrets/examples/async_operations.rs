//! Seed example "Async Secret Operations": the async client, async iteration, close.
//!
//! `cargo run -p keyvault-secrets --example async_operations`

mod common;

use futures_util::StreamExt;
use keyvault_secrets::SecretClient;

#[tokio::main]
async fn main() -> keyvault_secrets::Result<()> {
    let target = common::Target::start().await;
    let client = SecretClient::new(
        &target.vault_url,
        target.credential.clone(),
        Some(target.options.clone()),
    )?;

    let result = async {
        // Async secret operations
        let secret = client
            .set_secret("async-secret", "async-value", None)
            .await?;
        println!("Set {} ({:?})", secret.name, secret.properties.version);
        let retrieved = client.get_secret("async-secret", None).await?;
        println!("Got {}", retrieved.value().unwrap_or_default());

        // Async iteration
        let mut secrets = client.list_properties_of_secrets(None)?;
        while let Some(properties) = secrets.next().await {
            println!("Secret: {}", properties?.name);
        }
        Ok::<_, keyvault_secrets::Error>(())
    }
    .await;

    // finally: close
    client.close();
    target.stop().await;
    result
}
