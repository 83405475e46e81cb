use super::client_secret::as_i64;
use super::{
    AccessToken, TokenCredential, TokenRequestOptions, one_scope, resolve_tenant,
    scope_to_resource, valid_tenant,
};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// Options of [`AzureCliCredential`].
#[derive(Clone, Debug)]
pub struct AzureCliCredentialOptions {
    /// Ask the CLI for a token of this tenant (default: the CLI's current tenant, or the challenge's).
    pub tenant_id: Option<String>,
    /// Tenants besides `tenant_id` that a challenge may name (`"*"` for any).
    pub additionally_allowed_tenants: Vec<String>,
    /// The `az` program (default `az`, found on `PATH`).
    pub program: Option<PathBuf>,
    /// How long `az` may take (default 10 s).
    pub timeout: Duration,
}

impl Default for AzureCliCredentialOptions {
    fn default() -> Self {
        AzureCliCredentialOptions {
            tenant_id: None,
            additionally_allowed_tenants: Vec::new(),
            program: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The signed-in Azure CLI user's token: runs `az account get-access-token --output json --resource …`.
#[derive(Clone, Debug, Default)]
pub struct AzureCliCredential {
    options: AzureCliCredentialOptions,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CliToken {
    access_token: Option<String>,
    #[serde(default, rename = "expires_on")]
    expires_on_unix: Option<serde_json::Value>,
}

impl AzureCliCredential {
    pub fn new(options: Option<AzureCliCredentialOptions>) -> Result<Self> {
        let options = options.unwrap_or_default();
        if let Some(t) = options.tenant_id.as_deref().filter(|t| !valid_tenant(t)) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid tenant id '{t}'"),
            ));
        }
        Ok(AzureCliCredential { options })
    }
}

const WHO: &str = "AzureCliCredential";

fn unavailable(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Credential, format!("{WHO}: {}", message.into()))
}

/// Parse `az account get-access-token --output json`.
fn parse_cli_output(stdout: &[u8]) -> Result<AccessToken> {
    let t: CliToken = serde_json::from_slice(stdout)
        .map_err(|e| unavailable(format!("cannot parse the output of az: {e}")))?;
    let token = t
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unavailable("the output of az has no accessToken"))?;
    let expires_on = t
        .expires_on_unix
        .as_ref()
        .and_then(as_i64)
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        // Older CLIs give only a local-time `expiresOn`; assume a short life and refresh early.
        .unwrap_or_else(|| OffsetDateTime::now_utc() + time::Duration::minutes(10));
    Ok(AccessToken::new(token, expires_on))
}

#[async_trait]
impl TokenCredential for AzureCliCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        let resource = scope_to_resource(one_scope(WHO, scopes)?);
        if !resource
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
        {
            return Err(unavailable(format!("invalid resource '{resource}'")));
        }
        let requested = options.and_then(|o| o.tenant_id);
        let tenant = match &self.options.tenant_id {
            Some(own) => Some(
                resolve_tenant(
                    WHO,
                    own,
                    requested.as_deref(),
                    &self.options.additionally_allowed_tenants,
                )?
                .to_string(),
            ),
            None => requested.filter(|t| valid_tenant(t)),
        };
        let program = self
            .options
            .program
            .clone()
            .unwrap_or_else(|| PathBuf::from("az"));
        let mut command = if cfg!(windows) && self.options.program.is_none() {
            let mut c = tokio::process::Command::new("cmd");
            c.arg("/c").arg("az");
            c
        } else {
            tokio::process::Command::new(&program)
        };
        command.args([
            "account",
            "get-access-token",
            "--output",
            "json",
            "--resource",
            resource,
        ]);
        if let Some(t) = &tenant {
            command.args(["--tenant", t]);
        }
        command
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.options.timeout, command.output())
            .await
            .map_err(|_| unavailable("az did not answer in time"))?
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    unavailable("Azure CLI not found on path")
                } else {
                    Error::with_source(
                        ErrorKind::Credential,
                        format!("{WHO}: cannot run az: {e}"),
                        e,
                    )
                }
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let hint = if stderr.contains("az login") || stderr.contains("az account set") {
                "please run 'az login' to set up an account"
            } else {
                stderr.trim()
            };
            return Err(unavailable(hint.chars().take(500).collect::<String>()));
        }
        parse_cli_output(&output.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_output() {
        let t = parse_cli_output(
            br#"{"accessToken":"eyJ0","expiresOn":"2023-10-31 21:59:10.000000","expires_on":1698789550,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "eyJ0");
        assert_eq!(t.expires_on.unix_timestamp(), 1698789550);
        let t =
            parse_cli_output(br#"{"accessToken":"x","expiresOn":"2023-10-31 21:59:10.000000"}"#)
                .unwrap();
        assert!(t.expires_on > OffsetDateTime::now_utc());
        assert_eq!(
            parse_cli_output(b"nope").unwrap_err().kind(),
            ErrorKind::Credential
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn runs_the_program() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let az = dir.path().join("az");
        std::fs::write(
            &az,
            "#!/bin/sh\nif [ \"$5\" = \"--resource\" ] && [ \"$6\" = \"https://vault.azure.net\" ]; then\n  echo '{\"accessToken\":\"tok-'\"$8\"'\",\"expires_on\":4102444800}'\nelse\n  echo 'ERROR: Please run az login to setup account.' >&2; exit 1\nfi\n",
        )
        .unwrap();
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = AzureCliCredential::new(Some(AzureCliCredentialOptions {
            program: Some(az.clone()),
            ..Default::default()
        }))
        .unwrap();
        let opts = TokenRequestOptions {
            tenant_id: Some("t1".into()),
            claims: None,
        };
        let t = c
            .get_token(&["https://vault.azure.net/.default"], Some(opts))
            .await
            .unwrap();
        assert_eq!(t.token.expose(), "tok-t1");
        let e = c
            .get_token(&["https://other/.default"], None)
            .await
            .unwrap_err();
        assert!(e.message().contains("az login"), "{e}");
        let missing = AzureCliCredential::new(Some(AzureCliCredentialOptions {
            program: Some(dir.path().join("nope")),
            ..Default::default()
        }))
        .unwrap();
        let e = missing
            .get_token(&["https://vault.azure.net/.default"], None)
            .await
            .unwrap_err();
        assert!(e.message().contains("not found"), "{e}");
    }
}
