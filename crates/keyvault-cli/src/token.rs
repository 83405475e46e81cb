//! `keyvault token`: a bearer token for the configured credential.

use crate::conn::{Capturing, ConnArgs, Output};
use crate::errors::{CliError, CliResult, Target, io_error};
use clap::Args;
use keyvault_secrets::credentials::AccessToken;
use keyvault_secrets::http::{Method, Request};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Args)]
#[command(
    after_help = "Without --scope the vault is asked once (GET /secrets) to learn the scope from its \
authentication challenge, exactly as every other command does.

Output: the bare token by default (`-o value`); `-o json` gives {\"accessToken\", \"expiresOn\", \"scope\", \
\"tokenType\"}.

Examples (curl reads the header from standard input, so the token is not on a command line, where `ps` shows
it; curl 7.55 or later):
  keyvault token --dev-credentials ./keyvault-data | sed 's/^/Authorization: Bearer /' |
    curl -H @- --cacert ./keyvault-data/tls/ca.pem \"https://127.0.0.1:8443/secrets?api-version=7.6\"
  keyvault token --scope https://vault.azure.net/.default -o json"
)]
pub struct TokenArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The scope to ask for, e.g. https://vault.azure.net/.default (default: the vault's).
    #[arg(long)]
    pub scope: Option<String>,
}

pub async fn run(args: TokenArgs, out: &mut dyn Write) -> CliResult {
    let (scope, token) = match &args.scope {
        Some(scope) => {
            let credential = args.conn.credential(scope)?;
            let scopes = [scope.as_str()];
            let request = credential.get_token(&scopes, None);
            let token = match args.conn.call_timeout() {
                Some(limit) => tokio::time::timeout(limit, request).await.map_err(|_| {
                    CliError::other(format!(
                        "the token request did not complete within its timeout of {limit:?} \
                         [--timeout SECS (KEYVAULT_TIMEOUT) sets the limit; 0: none]"
                    ))
                })?,
                None => request.await,
            }
            .map_err(|e| CliError::from_client(&e, Target::Vault, ""))?;
            (scope.clone(), token)
        }
        None => {
            let last: Arc<Mutex<Option<(String, AccessToken)>>> = Arc::default();
            let conn = args.conn.connect_with(None, |inner| {
                Arc::new(Capturing {
                    inner,
                    last: last.clone(),
                })
            })?;
            let vault = conn.vault().to_string();
            // Any answer will do (even 403): the token was handed out before it.
            conn.client
                .send_request(Request::new(Method::GET, "/secrets?maxresults=1"))
                .await
                .map_err(|e| CliError::from_client(&e, Target::Vault, &vault))?;
            let captured = last.lock().ok().and_then(|mut l| l.take());
            captured.ok_or_else(|| {
                CliError::other(format!(
                    "{vault} did not ask for a token (no authentication challenge); pass --scope"
                ))
            })?
        }
    };
    let expires = crate::when::format(token.expires_on);
    let format = args.conn.output.unwrap_or(Output::Value);
    let text = match format {
        Output::Value => format!("{}\n", token.token.expose()),
        Output::Tsv => format!("{}\t{expires}\t{scope}\n", token.token.expose()),
        Output::Json => {
            let json = serde_json::json!({
                "accessToken": token.token.expose(),
                "expiresOn": expires,
                "scope": scope,
                "tokenType": "Bearer",
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&json).expect("json serialises")
            )
        }
        Output::Table => format!(
            "Access token  {}\nExpires       {expires}\nScope         {scope}\nToken type    Bearer\n",
            token.token.expose()
        ),
    };
    let text = zeroize::Zeroizing::new(text);
    out.write_all(text.as_bytes()).map_err(io_error)
}
