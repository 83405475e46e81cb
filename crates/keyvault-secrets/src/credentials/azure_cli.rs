use super::client_secret::as_i64;
use super::{AccessToken, TokenCredential, TokenRequestOptions, one_scope, scope_to_resource};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use time::OffsetDateTime;

/// Options of [`AzureCliCredential`] (`program`: default `az`).
pub type AzureCliCredentialOptions = super::CliCredentialOptions;

/// The signed-in Azure CLI user's token: runs `az account get-access-token --output json --resource …`.
///
/// Errors, as azure-identity's: [`ErrorKind::CredentialUnavailable`] when `az` is not installed (not found,
/// or the shell's 127), cannot be started, does not answer within the timeout, or says to run `az login` /
/// `az account set` (without an Entra `AADSTS` error); [`ErrorKind::Credential`] when it ran and failed
/// otherwise, or printed something that is not a token — except inside
/// [`DefaultAzureCredential`](super::DefaultAzureCredential), where those count as unavailable too.
#[derive(Clone, Debug, Default)]
pub struct AzureCliCredential {
    options: AzureCliCredentialOptions,
    /// Inside `DefaultAzureCredential` (azure-identity's `within_dac`): every failure is "unavailable".
    in_default_chain: bool,
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
        let options = AzureCliCredentialOptions::checked(options)?;
        Ok(AzureCliCredential {
            options,
            in_default_chain: false,
        })
    }

    /// The same credential as `DefaultAzureCredential` runs it.
    pub(crate) fn in_default_chain(mut self) -> Self {
        self.in_default_chain = true;
        self
    }

    /// The kind of a failure of `az` that ran: unavailable inside `DefaultAzureCredential`, else failed.
    fn failed_kind(&self) -> ErrorKind {
        super::cli::failed_kind(self.in_default_chain)
    }
}

const WHO: &str = "AzureCliCredential";

fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, format!("{WHO}: {}", message.into()))
}

fn unavailable(message: impl Into<String>) -> Error {
    error(ErrorKind::CredentialUnavailable, message)
}

/// Parse `az account get-access-token --output json`; a failure is of `kind`.
fn parse_cli_output(stdout: &[u8], kind: ErrorKind) -> Result<AccessToken> {
    // Only the kind of error and its position: serde's own message can quote the text (`invalid type:
    // string "…"`), which may hold a token.
    let t: CliToken = serde_json::from_slice(stdout).map_err(|e| {
        error(
            kind,
            format!(
                "cannot parse the output of az: {}",
                crate::error::json_failure(&e)
            ),
        )
    })?;
    let token = t
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| error(kind, "the output of az has no accessToken"))?;
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
        if !super::cli::safe_argument(resource) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{WHO}: invalid resource '{resource}'"),
            ));
        }
        let requested = options.and_then(|o| o.tenant_id);
        let tenant = self.options.tenant_for(WHO, requested.as_deref())?;
        let mut args = vec![
            "account",
            "get-access-token",
            "--output",
            "json",
            "--resource",
            resource,
        ];
        if let Some(t) = &tenant {
            args.extend(["--tenant", t]);
        }
        let tool = super::cli::Tool {
            who: WHO,
            what: "Azure CLI",
            name: "az",
            program: self.options.program.as_ref(),
            timeout: self.options.timeout,
            failure: cli_failure,
            failed: self.failed_kind(),
        };
        let stdout = super::cli::output(&tool, &args).await?;
        parse_cli_output(&stdout, self.failed_kind())
    }
}

/// The error for `az` that exited with `code` and said `stderr`; `failed` is the kind of a real failure.
fn cli_failure(code: Option<i32>, stderr: &str, failed: ErrorKind) -> Error {
    if super::cli::not_found(code, stderr, "az") {
        // The shell (`cmd /c az`, or a wrapper script) did not find it.
        return unavailable("Azure CLI not found on path");
    }
    if (stderr.contains("az login") || stderr.contains("az account set"))
        && !stderr.contains("AADSTS")
    {
        return unavailable("please run 'az login' to set up an account");
    }
    error(failed, super::cli::said(stderr, "az"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_output() {
        let t = parse_cli_output(
            br#"{"accessToken":"eyJ0","expiresOn":"2023-10-31 21:59:10.000000","expires_on":1698789550,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#,
            ErrorKind::Credential,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "eyJ0");
        assert_eq!(t.expires_on.unix_timestamp(), 1698789550);
        let t = parse_cli_output(
            br#"{"accessToken":"x","expiresOn":"2023-10-31 21:59:10.000000"}"#,
            ErrorKind::Credential,
        )
        .unwrap();
        assert!(t.expires_on > OffsetDateTime::now_utc());
        for kind in [ErrorKind::Credential, ErrorKind::CredentialUnavailable] {
            assert_eq!(parse_cli_output(b"nope", kind).unwrap_err().kind(), kind);
        }
        // A field of the wrong type: serde would quote its value, which may be a token; the error does not.
        for output in [
            &br#"{"accessToken":{"x":1},"expiresOn":"eyJ0-CANARY"}"#[..],
            br#""eyJ0-CANARY""#,
            br#"{"accessToken":"eyJ0-CANARY","expires_on":"eyJ0-CANARY"}"#,
        ] {
            if let Err(e) = parse_cli_output(output, ErrorKind::Credential) {
                assert!(!e.to_string().contains("CANARY"), "{e}");
            }
        }
        let e = parse_cli_output(br#""eyJ0-CANARY""#, ErrorKind::Credential).unwrap_err();
        assert!(
            e.to_string()
                .contains("JSON without the expected fields or types (at line 1, column"),
            "{e}"
        );
    }

    /// azure-identity's rules: not installed or not logged in is unavailable; an Entra error, or any other
    /// failure of a CLI that ran, is a failure (outside `DefaultAzureCredential`).
    #[test]
    fn cli_failures_unavailable_or_failed() {
        let f = ErrorKind::Credential;
        let u = ErrorKind::CredentialUnavailable;
        for (code, stderr, want) in [
            (Some(127), "sh: az: not found", u),
            (
                Some(1),
                "'az' is not recognized as an internal or external command",
                u,
            ),
            (Some(1), "ERROR: Please run 'az login' to setup account.", u),
            (
                Some(1),
                "ERROR: Please run 'az account set' to select a subscription.",
                u,
            ),
            (
                Some(1),
                "ERROR: AADSTS70043: The refresh token has expired. Please run 'az login'.",
                f,
            ),
            (
                Some(1),
                "ERROR: The command failed with an unexpected error.",
                f,
            ),
            (Some(2), "", f),
        ] {
            let e = cli_failure(code, stderr, f);
            assert_eq!(e.kind(), want, "{stderr}: {e}");
            assert!(e.message().starts_with("AzureCliCredential: "), "{e}");
        }
        assert_eq!(
            cli_failure(Some(1), "ERROR: something else", u).kind(),
            u,
            "inside DefaultAzureCredential"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn runs_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let az = crate::credentials::cli::fake_tool(
            dir.path(),
            "az",
            "#!/bin/sh\nif [ \"$5\" = \"--resource\" ] && [ \"$6\" = \"https://vault.azure.net\" ]; then\n  echo '{\"accessToken\":\"tok-'\"$8\"'\",\"expires_on\":4102444800}'\nelse\n  echo 'ERROR: Please run az login to setup account.' >&2; exit 1\nfi\n",
        );
        let c = AzureCliCredential::new(Some(AzureCliCredentialOptions {
            program: Some(az.clone()),
            ..Default::default()
        }))
        .unwrap();
        let opts = TokenRequestOptions {
            tenant_id: Some("t1".into()),
            ..Default::default()
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
        assert_eq!(e.kind(), ErrorKind::CredentialUnavailable);
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
        assert_eq!(e.kind(), ErrorKind::CredentialUnavailable);
    }
}
