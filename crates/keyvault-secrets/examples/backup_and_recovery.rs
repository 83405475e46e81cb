//! Seed example "Backup and Recovery": backup, delete (poller), recover (poller), purge, restore.
//!
//! `cargo run -p keyvault-secrets --example backup_and_recovery`

mod common;

use keyvault_secrets::blocking::SecretClient;

fn main() -> keyvault_secrets::Result<()> {
    let target = common::Target::start_blocking();
    let client = SecretClient::new(
        &target.vault_url,
        target.credential.clone(),
        Some(target.options.clone()),
    )?;
    client.set_secret("important-secret", "keep me safe", None)?;

    // Backup secret
    let backup_data = client.backup_secret("important-secret")?;
    println!("Backup: {} bytes", backup_data.len());

    // Delete secret (soft delete)
    let mut delete_poller = client.begin_delete_secret("important-secret")?;
    let deleted_secret = delete_poller.result().clone();
    println!("Secret deleted on: {:?}", deleted_secret.deleted_on);
    delete_poller.wait()?; // block until the deletion is complete
    drop(delete_poller);

    // Recover deleted secret
    let recover_poller = client.begin_recover_deleted_secret("important-secret")?;
    let recovered = recover_poller.wait_for_result()?;
    println!("Recovered: {}", recovered.name);

    // Permanently delete (delete, wait, purge)
    client.begin_delete_secret("important-secret")?.wait()?;
    client.purge_deleted_secret("important-secret")?;

    // Restore from backup
    let restored_properties = client.restore_secret_backup(&backup_data)?;
    println!(
        "Restored: {} ({})",
        restored_properties.name, restored_properties.id
    );

    drop(client); // closes its connections, so the local vault stops at once
    target.stop_blocking();
    Ok(())
}
