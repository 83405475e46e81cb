//! `keyvault`: serve a Key Vault-compatible vault (and, later, operate on its secrets).
//! Parsing and wiring only; the work is done by the library crates.

mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keyvault",
    version,
    about = "A Key Vault-compatible secret store: server and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the vault server.
    Serve(Box<serve::ServeArgs>),
    /// Print the argon2 hash of a client secret read from standard input (for `[[clients]]` in the config).
    HashSecret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYVAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::HashSecret => hash_secret(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn hash_secret() -> Result<(), String> {
    let mut secret = String::new();
    std::io::stdin()
        .read_line(&mut secret)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    let secret = zeroize::Zeroizing::new(secret.trim_end_matches(['\r', '\n']).to_string());
    if secret.is_empty() {
        return Err("no secret on standard input".to_string());
    }
    let hash = keyvault_server::auth::hash_secret(&secret).map_err(|e| e.to_string())?;
    println!("{hash}");
    Ok(())
}
