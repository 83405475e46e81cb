//! Where the vault is and who we are: `--vault-url`, credentials, CA, output format.

use crate::errors::{CliError, CliResult};
use clap::{Args, ValueEnum};
use keyvault_secrets::credentials::{
    AccessToken, ClientSecretCredential, ClientSecretCredentialOptions, DEFAULT_AUTHORITY_HOST,
    DefaultAzureCredential, DefaultAzureCredentialOptions, TokenCredential, TokenRequestOptions,
};
use keyvault_secrets::{
    ApiVersion, CallOptions, RetryOptions, SecretClient, SecretClientOptions, SecretString,
};
use serde::Deserialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns with a header (the default on a terminal).
    Table,
    /// JSON (the default when standard output is not a terminal).
    Json,
    /// Tab-separated columns, no header, one line per item (a backslash doubled; tabs, newlines, control
    /// characters, line/paragraph separators and invisible format characters written as escapes such as \t, \n, \u{1b}, \u{202e}; in the tags
    /// column also ',' and '=' inside a tag's name or value escaped with a backslash).
    Tsv,
    /// Only the value: the secret's value for `show`, else one bare field per item (see each command's help).
    Value,
}

/// Connection and output options shared by every command that talks to a vault. `Debug` hides the client
/// secret.
#[derive(Args, Clone)]
pub struct ConnArgs {
    /// The vault's URL, e.g. https://myvault.vault.azure.net.
    #[arg(long, env = "KEYVAULT_URL", global = true, value_name = "URL")]
    pub vault_url: Option<String>,
    /// The dev-credentials.json written by `keyvault serve --dev` (or its data directory): vault URL,
    /// CA, tenant, client id and secret in one go.
    #[arg(
        long,
        env = "KEYVAULT_DEV_CREDENTIALS",
        global = true,
        value_name = "FILE"
    )]
    pub dev_credentials: Option<PathBuf>,
    /// Extra trusted CA certificate(s), PEM (for a vault with a private CA).
    #[arg(long, env = "KEYVAULT_CA_FILE", global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Tenant of a client-secret credential.
    #[arg(long, env = "AZURE_TENANT_ID", global = true, hide_env_values = true)]
    pub tenant_id: Option<String>,
    /// Client (application) id of a client-secret credential.
    #[arg(long, env = "AZURE_CLIENT_ID", global = true, hide_env_values = true)]
    pub client_id: Option<String>,
    /// Client secret (prefer the AZURE_CLIENT_SECRET variable: flags show up in `ps`).
    #[arg(
        long,
        env = "AZURE_CLIENT_SECRET",
        global = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub client_secret: Option<String>,
    /// Token authority of a client secret, certificate or workload identity [default:
    /// https://login.microsoftonline.com, only for a vault on an Azure Key Vault domain (*.vault.azure.net, …);
    /// any other vault needs it: for a keyvault-rs server, its own URL].
    #[arg(long, env = "AZURE_AUTHORITY_HOST", global = true, value_name = "URL")]
    pub authority_host: Option<String>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(long, short = 'o', env = "KEYVAULT_OUTPUT", global = true, value_enum)]
    pub output: Option<Output>,
    /// Retries of a failed request, the token request included (connection errors, 408, 429, 5xx).
    #[arg(long, env = "KEYVAULT_MAX_RETRIES", global = true, default_value_t = 3)]
    pub max_retries: u32,
    /// The longest each request of the command may take, in seconds, its token request, retries and waits
    /// included (each page of a listing, each poll of --wait and each secret of an import or export gets this
    /// long; --wait-timeout bounds the whole wait); 0: no limit.
    #[arg(
        long,
        env = "KEYVAULT_TIMEOUT",
        global = true,
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub timeout: u64,
    /// Skip the check that the vault's authentication challenge names a resource of the vault's own
    /// domain (needed for a vault on an IP address without --dev-credentials; never use it with real
    /// Azure credentials against a vault you do not trust).
    #[arg(long, global = true)]
    pub no_challenge_verification: bool,
    /// The Key Vault REST api-version to send [default: the newest the client knows]: an older one for a
    /// vault that does not know the newest yet (7.6, 2025-07-01, …).
    #[arg(
        long,
        env = "KEYVAULT_API_VERSION",
        global = true,
        value_name = "VERSION",
        value_parser = parse_api_version
    )]
    pub api_version: Option<ApiVersion>,
}

fn parse_api_version(text: &str) -> Result<ApiVersion, String> {
    text.parse().map_err(|_| {
        let known: Vec<&str> = ApiVersion::ALL.iter().map(|v| v.as_str()).collect();
        format!(
            "not an api-version this client knows; one of: {}",
            known.join(", ")
        )
    })
}

/// The `dev-credentials.json` of `keyvault serve --dev`.
#[derive(Deserialize)]
struct DevCredentials {
    vault_url: String,
    ca_cert: PathBuf,
    tenant_id: String,
    client_id: String,
    client_secret: SecretString,
    authority_host: String,
}

/// The longest a TCP connection and TLS handshake may take (less when `--timeout` is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Extra trusted CA certificates, PEM.
type CaCerts = Vec<Vec<u8>>;

/// A connected vault client and how to print.
pub struct Conn {
    pub client: SecretClient,
    pub output: Output,
}

impl Conn {
    pub fn vault(&self) -> &str {
        self.client.vault_url()
    }
}

impl ConnArgs {
    /// The output format: the flag, else table on a terminal and JSON otherwise.
    pub fn output(&self) -> Output {
        self.output.unwrap_or_else(|| {
            if std::io::stdout().is_terminal() {
                Output::Table
            } else {
                Output::Json
            }
        })
    }

    /// `--timeout`: how long each call may take (`None`: no limit).
    pub fn call_timeout(&self) -> Option<Duration> {
        (self.timeout > 0).then(|| Duration::from_secs(self.timeout))
    }

    fn dev_credentials(&self) -> CliResult<Option<DevCredentials>> {
        let Some(path) = &self.dev_credentials else {
            return Ok(None);
        };
        let path = if path.is_dir() {
            path.join("dev-credentials.json")
        } else {
            path.clone()
        };
        let bytes = crate::input::read_file(
            &path,
            1 << 20,
            &format!("the dev credentials {}", path.display()),
            "a dev-credentials.json (1 MiB)",
        )?;
        let creds = serde_json::from_slice(&bytes).map_err(|e| {
            CliError::bad_input(format!(
                "{} is not a dev-credentials.json: it {}",
                path.display(),
                crate::errors::json_error(&e)
            ))
        })?;
        Ok(Some(creds))
    }

    /// Build the client. `fallback_url` is used when neither a flag, the environment nor dev
    /// credentials name a vault (e.g. the vault of a secret id).
    pub fn connect(&self, fallback_url: Option<&str>) -> CliResult<Conn> {
        self.connect_with(fallback_url, |c| c)
    }

    /// [`ConnArgs::connect`], with the credential passed through `wrap` first.
    pub fn connect_with(
        &self,
        fallback_url: Option<&str>,
        wrap: impl FnOnce(Arc<dyn TokenCredential>) -> Arc<dyn TokenCredential>,
    ) -> CliResult<Conn> {
        let dev = self.dev_credentials()?;
        let vault_url = self
            .vault_url
            .clone()
            .or_else(|| dev.as_ref().map(|d| d.vault_url.clone()))
            .or_else(|| fallback_url.map(str::to_string))
            .ok_or_else(|| {
                CliError::bad_input(
                    "no vault URL: pass --vault-url, set KEYVAULT_URL, or pass --dev-credentials",
                )
            })?;
        refuse_secret_url(&vault_url)?;
        let (credential, cas) = self.credential_from(&dev, &vault_url)?;
        let credential = wrap(credential);
        let local = is_local_host(&vault_url);
        let options = SecretClientOptions {
            verify_challenge_resource: !(self.no_challenge_verification
                || (dev.is_some() && local)),
            additional_ca_certificates: cas,
            retry: RetryOptions {
                max_retries: self.max_retries,
                initial_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(30),
            },
            connect_timeout: Some(
                self.call_timeout()
                    .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT)),
            ),
            polling_interval: Duration::from_secs(1),
            user_agent_suffix: Some(format!("keyvault-cli/{}", env!("CARGO_PKG_VERSION"))),
            api_version: self.api_version.unwrap_or_default(),
            ..Default::default()
        };
        let fail = |e| CliError::from_client(&e, crate::errors::Target::Vault, &vault_url);
        let mut client = SecretClient::new(&vault_url, credential, Some(options)).map_err(fail)?;
        if let Some(limit) = self.call_timeout() {
            client = client
                .with_call_options(CallOptions::default().timeout(limit))
                .map_err(fail)?;
        }
        Ok(Conn {
            client,
            output: self.output(),
        })
    }

    /// The credential the flags, the environment or the dev credentials describe, for tokens of `resource`
    /// (a URL: a vault's, or a scope).
    pub fn credential(&self, resource: &str) -> CliResult<Arc<dyn TokenCredential>> {
        Ok(self.credential_from(&self.dev_credentials()?, resource)?.0)
    }

    /// `--authority-host` (`AZURE_AUTHORITY_HOST`); an empty one is none, as an unset variable (the Azure SDKs
    /// read an empty variable so).
    fn authority(&self) -> Option<&str> {
        self.authority_host.as_deref().filter(|a| !a.is_empty())
    }

    /// A credential that would send a secret (a client secret, a certificate's or a workload identity's
    /// assertion) to Microsoft's authority because none is configured, for tokens of a resource that is not
    /// on an Azure Key Vault domain, is refused before anything is sent: such a vault (e.g. keyvault-rs) has
    /// its own authority, and Microsoft has no business seeing the secret. The authority a vault names in its
    /// challenge is never followed (a rogue vault could name its own, to collect the secret).
    fn check_authority(&self, what: &str, resource: &str) -> CliResult {
        if self.authority().is_some() || is_azure_resource(resource) {
            return Ok(());
        }
        let origin = origin(resource);
        Err(CliError::bad_input(format!(
            "refusing to send {what} to the default authority ({DEFAULT_AUTHORITY_HOST}) for {origin}, which is \
             not an Azure Key Vault domain: pass --authority-host (or set AZURE_AUTHORITY_HOST) to the authority \
             that issues its tokens (for a keyvault-rs server, its own URL, e.g. --authority-host {origin}), or \
             --authority-host {DEFAULT_AUTHORITY_HOST} for a custom domain in front of Azure Key Vault"
        )))
    }

    fn credential_from(
        &self,
        dev: &Option<DevCredentials>,
        resource: &str,
    ) -> CliResult<(Arc<dyn TokenCredential>, CaCerts)> {
        let mut cas = Vec::new();
        if let Some(d) = &dev {
            cas.push(read_pem_certificates(&d.ca_cert, "the dev CA certificate")?);
        }
        if let Some(p) = &self.ca_file {
            cas.push(read_pem_certificates(p, "the CA file")?);
        }
        let credential: Arc<dyn TokenCredential> = match (dev, &self.client_secret) {
            (Some(d), _) => Arc::new(client_secret_credential(
                &d.tenant_id,
                &d.client_id,
                d.client_secret.expose(),
                d.authority_host.clone(),
                cas.clone(),
                self.max_retries,
            )?),
            (None, Some(secret)) => {
                let (Some(tenant), Some(client)) = (&self.tenant_id, &self.client_id) else {
                    return Err(CliError::bad_input(
                        "a client secret needs a tenant and a client id: pass --tenant-id and \
                         --client-id (or set AZURE_TENANT_ID and AZURE_CLIENT_ID)",
                    ));
                };
                self.check_authority("the client secret", resource)?;
                Arc::new(client_secret_credential(
                    tenant,
                    client,
                    secret,
                    self.authority()
                        .map(str::to_string)
                        .unwrap_or_else(|| ClientSecretCredentialOptions::default().authority_host),
                    cas.clone(),
                    self.max_retries,
                )?)
            }
            (None, None) => {
                let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
                if set("AZURE_CLIENT_CERTIFICATE_PATH") {
                    self.check_authority(
                        "an assertion signed with the client certificate",
                        resource,
                    )?;
                } else if set("AZURE_FEDERATED_TOKEN_FILE") {
                    self.check_authority("the workload identity's federated token", resource)?;
                }
                self.default_credential(cas.clone())?
            }
        };
        Ok((credential, cas))
    }

    /// The chain of `DefaultAzureCredential`, with the extra CAs and `--authority-host`.
    fn default_credential(&self, cas: CaCerts) -> CliResult<Arc<dyn TokenCredential>> {
        let mut environment = ClientSecretCredentialOptions {
            additional_ca_certificates: cas,
            retry: token_retry(self.max_retries),
            ..Default::default()
        };
        if let Some(a) = self.authority() {
            environment.authority_host = a.to_string();
        }
        Ok(Arc::new(
            DefaultAzureCredential::with_options(DefaultAzureCredentialOptions {
                environment,
                tenant_id: self.tenant_id.clone(),
                managed_identity_client_id: self.client_id.clone(),
                ..Default::default()
            })
            .map_err(|e| CliError::from_client(&e, crate::errors::Target::Vault, ""))?,
        ))
    }
}

/// The retries of a token request: `--max-retries`, and as the vault's, a `Retry-After` longer than 30 s
/// given back, not waited for.
fn token_retry(max_retries: u32) -> RetryOptions {
    RetryOptions {
        max_retries,
        initial_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(30),
    }
}

fn client_secret_credential(
    tenant: &str,
    client: &str,
    secret: &str,
    authority_host: String,
    cas: Vec<Vec<u8>>,
    max_retries: u32,
) -> CliResult<ClientSecretCredential> {
    ClientSecretCredential::new(
        tenant,
        client,
        secret,
        Some(ClientSecretCredentialOptions {
            authority_host,
            additional_ca_certificates: cas,
            // `--max-retries` bounds the token request's retries too (a busy token endpoint answers 503
            // with Retry-After: 1).
            retry: token_retry(max_retries),
            ..Default::default()
        }),
    )
    .map_err(|e| CliError::bad_input(format!("invalid credential: {}", e.message())))
}

/// A certificate, key or CA bundle file (at most 16 MiB).
fn read_file(path: &Path, what: &str) -> CliResult<Vec<u8>> {
    let described = format!("{what} {}", path.display());
    crate::input::read_file(
        path,
        16 << 20,
        &described,
        "a certificate or CA file (16 MiB)",
    )
}

/// A file that must hold PEM certificates (a CA bundle); one that holds none is named in the error.
fn read_pem_certificates(path: &Path, what: &str) -> CliResult<Vec<u8>> {
    let bytes = read_file(path, what)?;
    if bytes
        .windows(CERT_PEM_BEGIN.len())
        .any(|w| w == CERT_PEM_BEGIN)
    {
        Ok(bytes)
    } else {
        Err(CliError::bad_input(format!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )))
    }
}

const CERT_PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The DNS suffixes of Azure Key Vault and Managed HSM in Azure's clouds (public, China, US Government,
/// Germany).
const AZURE_VAULT_SUFFIXES: &[&str] = &[
    "vault.azure.net",
    "vault.azure.cn",
    "vault.usgovcloudapi.net",
    "vault.microsoftazure.de",
    "managedhsm.azure.net",
    "managedhsm.azure.cn",
    "managedhsm.usgovcloudapi.net",
    "managedhsm.microsoftazure.de",
];

/// Whether a URL (a vault's, or a scope such as `https://vault.azure.net/.default`) is on an Azure Key Vault
/// domain.
pub fn is_azure_resource(url: &str) -> bool {
    let host = url_host(url);
    let host = host.trim_end_matches('.');
    AZURE_VAULT_SUFFIXES.iter().any(|suffix| {
        host == *suffix
            || host
                .strip_suffix(suffix)
                .is_some_and(|name| name.ends_with('.'))
    })
}

/// `scheme://host[:port]` of a URL (for messages).
fn origin(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            &url[..scheme.len() + 3 + end]
        }
        None => url,
    }
}

/// The URL's host, lowercase, without its port (an IPv6 address in its brackets).
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

/// A vault URL whose path names the vault's own routes (`…/secrets`, `…/secrets/x`, `…/deletedsecrets`): a
/// secret's URL pasted where the vault's belongs. Every name would then be looked up under it, and a script would
/// read the 404s as "no such secret" (exit 3). On an Azure Key Vault domain, which serves a vault at its root, it
/// is refused; elsewhere the path may be a gateway's (the client allows one), so it is only pointed out.
fn refuse_secret_url(url: &str) -> CliResult {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.split('/').skip(1);
    if !segments
        .any(|s| s.eq_ignore_ascii_case("secrets") || s.eq_ignore_ascii_case("deletedsecrets"))
    {
        return Ok(());
    }
    let advice = "give the vault's own URL (such as https://myvault.vault.azure.net) and the secret by its name, \
                  or a secret's full URL to `secret show --id`";
    // The URL is not quoted: it may carry user information (`user:password@`).
    if is_azure_resource(url) {
        return Err(CliError::bad_input(format!(
            "the vault URL names a secrets route in its path (Key Vault serves a vault at its root): {advice}"
        )));
    }
    stderr_line!(
        "note: the vault URL names a secrets route in its path; unless a gateway serves the vault there, \
         {advice}"
    );
    Ok(())
}

/// Whether the URL's host is an IP address, `localhost` or a `*.localhost` name.
pub fn is_local_host(url: &str) -> bool {
    let host = url_host(url);
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
}

/// A credential that remembers the last token it handed out (for `keyvault token`).
#[derive(Debug)]
pub struct Capturing {
    pub inner: Arc<dyn TokenCredential>,
    pub last: Arc<Mutex<Option<(String, AccessToken)>>>,
}

#[async_trait::async_trait]
impl TokenCredential for Capturing {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> keyvault_secrets::Result<AccessToken> {
        // The token is printed for tools (curl) that cannot answer a CAE claims challenge: asked for without the
        // CAE capability, as `--scope` asks (a59-6).
        let options = options.map(|o| TokenRequestOptions {
            enable_cae: false,
            ..o
        });
        let token = self.inner.get_token(scopes, options).await?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some((scopes.join(" "), token.clone()));
        }
        Ok(token)
    }
}

impl std::fmt::Debug for ConnArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnArgs")
            .field("vault_url", &self.vault_url)
            .field("dev_credentials", &self.dev_credentials)
            .field("ca_file", &self.ca_file)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("authority_host", &self.authority_host)
            .field("output", &self.output)
            .field("timeout", &self.timeout)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn a_secret_url_given_as_the_vault_url_is_refused() {
        use super::refuse_secret_url;
        for bad in [
            "https://v.vault.azure.net/secrets",
            "https://v.vault.azure.net/secrets/",
            "https://v.vault.azure.net/Secrets/db-pass",
            "https://v.vault.azure.net/gw/secrets/x/0123",
            "https://v.vault.azure.net/deletedsecrets?api-version=7.6",
        ] {
            let e = refuse_secret_url(bad).unwrap_err();
            assert_eq!(e.code, crate::errors::code::BAD_INPUT, "{bad}");
        }
        for good in [
            "https://v.vault.azure.net",
            "https://v.vault.azure.net/",
            "https://gw.example/kv/secrets-vault",
            "https://gw.example/kv?x=/secrets",
            "https://secrets.example",
            // Elsewhere, a gateway's path may hold the word: pointed out on stderr, not refused.
            "https://gw.example/secrets/prod-vault",
            "https://127.0.0.1:8443/secrets",
        ] {
            assert!(refuse_secret_url(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn debug_hides_the_client_secret() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            conn: super::ConnArgs,
        }
        let cli = Cli::parse_from([
            "kv",
            "--client-id",
            "app",
            "--client-secret",
            "-S3cret-canary",
        ]);
        let shown = format!("{:?}", cli.conn);
        assert!(!shown.contains("S3cret-canary"), "{shown}");
        assert!(
            shown.contains("app") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn azure_resources() {
        use super::{is_azure_resource, origin};
        for azure in [
            "https://myvault.vault.azure.net",
            "https://myvault.vault.azure.net:443/secrets/x",
            "https://MyVault.Vault.Azure.Net/",
            "https://vault.azure.net/.default",
            "https://v.vault.azure.cn",
            "https://v.vault.usgovcloudapi.net",
            "https://v.vault.microsoftazure.de",
            "https://h.managedhsm.azure.net",
            "https://myvault.vault.azure.net./",
        ] {
            assert!(is_azure_resource(azure), "{azure}");
        }
        for other in [
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
            "https://vault.example.com",
            "https://evilvault.azure.net",
            "https://vault.azure.net.evil.example",
            "https://myvault.vault.azure.net@evil.example/",
            "https://localhost:8443/.default",
        ] {
            assert!(!is_azure_resource(other), "{other}");
        }
        assert_eq!(
            origin("https://127.0.0.1:8443/.default"),
            "https://127.0.0.1:8443"
        );
        assert_eq!(origin("https://h:1"), "https://h:1");
    }

    #[test]
    fn local_hosts() {
        for local in [
            "https://127.0.0.1:8443",
            "https://localhost:1",
            "https://myvault.localhost:8443/",
            "https://[::1]:8443",
            "https://10.0.0.1",
        ] {
            assert!(is_local_host(local), "{local}");
        }
        for remote in [
            "https://v.vault.azure.net",
            "https://localhost.example.com:1",
        ] {
            assert!(!is_local_host(remote), "{remote}");
        }
    }
}

#[cfg(test)]
mod capturing_tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<TokenRequestOptions>>);

    #[async_trait::async_trait]
    impl TokenCredential for Seen {
        async fn get_token(
            &self,
            _: &[&str],
            options: Option<TokenRequestOptions>,
        ) -> keyvault_secrets::Result<AccessToken> {
            self.0.lock().unwrap().push(options.unwrap_or_default());
            Ok(AccessToken::new(
                "t".to_string(),
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            ))
        }
    }

    /// `keyvault token` prints a token for tools that cannot answer a CAE challenge: it is asked for without the
    /// CAE capability even though the client's policy asks with it (a59-6); the tenant and claims pass on.
    #[tokio::test]
    async fn a_printed_token_is_asked_for_without_cae() {
        let seen = Arc::new(Seen::default());
        let c = Capturing {
            inner: seen.clone(),
            last: Arc::new(Mutex::new(None)),
        };
        let options = TokenRequestOptions {
            tenant_id: Some("t1".into()),
            enable_cae: true,
            ..Default::default()
        };
        c.get_token(&["https://vault.azure.net/.default"], Some(options))
            .await
            .unwrap();
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert!(!seen[0].enable_cae);
        assert_eq!(seen[0].tenant_id.as_deref(), Some("t1"));
        assert!(c.last.lock().unwrap().is_some());
    }
}
