use super::{AccessToken, TokenCredential, TokenRequestOptions};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use time::OffsetDateTime;

/// Options of [`AzureDeveloperCliCredential`] (`program`: default `azd`).
pub type AzureDeveloperCliCredentialOptions = super::CliCredentialOptions;

/// The token of the user signed in to the Azure Developer CLI: runs
/// `azd auth token --output json --no-prompt --scope …` (Python: `AzureDeveloperCliCredential`).
///
/// Errors, as azure-identity's: [`ErrorKind::CredentialUnavailable`] when `azd` is not installed, cannot be
/// started, does not answer within the timeout, or says to run `azd auth login` (without an Entra `AADSTS`
/// error); [`ErrorKind::Credential`] when it ran and failed otherwise, or printed something that is not a
/// token — except inside [`DefaultAzureCredential`](super::DefaultAzureCredential), where those count as
/// unavailable too.
#[derive(Clone, Debug, Default)]
pub struct AzureDeveloperCliCredential {
    options: AzureDeveloperCliCredentialOptions,
    /// Inside `DefaultAzureCredential` (azure-identity's `within_dac`): every failure is "unavailable".
    in_default_chain: bool,
}

const WHO: &str = "AzureDeveloperCliCredential";

impl AzureDeveloperCliCredential {
    pub fn new(options: Option<AzureDeveloperCliCredentialOptions>) -> Result<Self> {
        let options = AzureDeveloperCliCredentialOptions::checked(options)?;
        Ok(AzureDeveloperCliCredential {
            options,
            in_default_chain: false,
        })
    }

    /// The same credential as `DefaultAzureCredential` runs it.
    pub(crate) fn in_default_chain(mut self) -> Self {
        self.in_default_chain = true;
        self
    }

    fn failed_kind(&self) -> ErrorKind {
        super::cli::failed_kind(self.in_default_chain)
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, format!("{WHO}: {}", message.into()))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzdToken {
    token: Option<String>,
    expires_on: Option<String>,
}

/// Parse `azd auth token --output json` (`{"token": "…", "expiresOn": "2025-01-01T00:00:00Z"}`); a failure is
/// of `kind`, and never quotes the output (it may hold a token).
fn parse_output(stdout: &[u8], kind: ErrorKind) -> Result<AccessToken> {
    let t: AzdToken = serde_json::from_slice(stdout).map_err(|e| {
        error(
            kind,
            format!(
                "cannot parse the output of azd: {}",
                crate::error::json_failure(&e)
            ),
        )
    })?;
    let token = t
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| error(kind, "the output of azd has no token"))?;
    let expires_on = t
        .expires_on
        .as_deref()
        .and_then(|s| {
            OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).ok()
        })
        .ok_or_else(|| error(kind, "the output of azd has no readable expiresOn"))?;
    Ok(AccessToken::new(token, expires_on))
}

/// The error for `azd` that exited with `code` and said `stderr`; `failed` is the kind of a real failure.
fn failure(code: Option<i32>, stderr: &str, failed: ErrorKind) -> Error {
    if super::cli::not_found(code, stderr, "azd") {
        return error(
            ErrorKind::CredentialUnavailable,
            "Azure Developer CLI not found on path",
        );
    }
    if stderr.contains("azd auth login") && !stderr.contains("AADSTS") {
        return error(
            ErrorKind::CredentialUnavailable,
            "please run 'azd auth login' to sign in",
        );
    }
    error(failed, super::cli::said(stderr, "azd"))
}

#[async_trait]
impl TokenCredential for AzureDeveloperCliCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<AccessToken> {
        if scopes.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{WHO}: at least one scope is required"),
            ));
        }
        if let Some(bad) = scopes.iter().find(|s| !super::cli::safe_argument(s)) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{WHO}: invalid scope '{bad}'"),
            ));
        }
        let requested = options.and_then(|o| o.tenant_id);
        let tenant = self.options.tenant_for(WHO, requested.as_deref())?;
        let mut args = vec!["auth", "token", "--output", "json", "--no-prompt"];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        if let Some(t) = &tenant {
            args.extend(["--tenant-id", t]);
        }
        let tool = super::cli::Tool {
            who: WHO,
            what: "Azure Developer CLI",
            name: "azd",
            program: self.options.program.as_ref(),
            timeout: self.options.timeout,
            failure,
            failed: self.failed_kind(),
        };
        let stdout = super::cli::output(&tool, &args).await?;
        parse_output(&stdout, self.failed_kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azd_output() {
        let t = parse_output(
            br#"{"token":"eyJ0","expiresOn":"2099-10-05T20:04:44Z"}"#,
            ErrorKind::Credential,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "eyJ0");
        assert_eq!(t.expires_on.year(), 2099);
        for (output, why) in [
            (&b"nope"[..], "cannot parse"),
            (
                br#"{"token":"","expiresOn":"2099-10-05T20:04:44Z"}"#,
                "no token",
            ),
            (br#"{"token":"x"}"#, "no readable expiresOn"),
            (
                br#"{"token":"x","expiresOn":"tomorrow"}"#,
                "no readable expiresOn",
            ),
        ] {
            for kind in [ErrorKind::Credential, ErrorKind::CredentialUnavailable] {
                let e = parse_output(output, kind).unwrap_err();
                assert_eq!(e.kind(), kind);
                assert!(e.message().contains(why), "{e}");
            }
        }
        // A field of the wrong type: serde would quote its value, which may be a token; the error does not.
        let e = parse_output(
            br#"{"token":{"x":1},"expiresOn":"eyJ0-CANARY"}"#,
            ErrorKind::Credential,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("CANARY"), "{e}");
    }

    /// azure-identity's rules: not installed or not signed in is unavailable; an Entra error, or any other
    /// failure of an azd that ran, is a failure (outside `DefaultAzureCredential`).
    #[test]
    fn azd_failures_unavailable_or_failed() {
        let f = ErrorKind::Credential;
        let u = ErrorKind::CredentialUnavailable;
        for (code, stderr, want) in [
            (Some(127), "sh: azd: not found", u),
            (
                Some(1),
                "'azd' is not recognized as an internal or external command",
                u,
            ),
            (
                Some(1),
                "ERROR: not logged in, run `azd auth login` to login",
                u,
            ),
            (
                Some(1),
                "ERROR: AADSTS70043: The refresh token has expired; run `azd auth login`",
                f,
            ),
            (Some(1), "ERROR: fetching token: unexpected", f),
            (Some(2), "", f),
        ] {
            let e = failure(code, stderr, f);
            assert_eq!(e.kind(), want, "{stderr}: {e}");
            assert!(
                e.message().starts_with("AzureDeveloperCliCredential: "),
                "{e}"
            );
        }
        assert_eq!(failure(Some(1), "ERROR: other", u).kind(), u);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn runs_the_program() {
        let dir = tempfile::tempdir().unwrap();
        // Prints its arguments back in the token, so the test sees what was asked.
        let azd = crate::credentials::cli::fake_tool(
            dir.path(),
            "azd",
            "#!/bin/sh\nif [ \"$6\" = \"--scope\" ] && [ \"$7\" = \"https://vault.azure.net/.default\" ]; then\n  echo \"{\\\"token\\\":\\\"tok $* in $(pwd)\\\",\\\"expiresOn\\\":\\\"2099-01-01T00:00:00Z\\\"}\"\nelse\n  echo 'ERROR: not logged in, run `azd auth login` to login' >&2; exit 1\nfi\n",
        );
        let c = AzureDeveloperCliCredential::new(Some(AzureDeveloperCliCredentialOptions {
            program: Some(azd.clone()),
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
        let bin = std::fs::canonicalize("/bin").unwrap();
        assert_eq!(
            t.token.expose(),
            format!(
                "tok auth token --output json --no-prompt --scope https://vault.azure.net/.default --tenant-id t1 in {}",
                bin.display()
            ),
            "run from a directory of the system's, not the caller's (a59-2)"
        );
        let e = c
            .get_token(&["https://other/.default"], None)
            .await
            .unwrap_err();
        assert!(e.message().contains("azd auth login"), "{e}");
        assert_eq!(e.kind(), ErrorKind::CredentialUnavailable);
        let e = c
            .get_token(&["https://x/.default y"], None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let missing = AzureDeveloperCliCredential::new(Some(AzureDeveloperCliCredentialOptions {
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
