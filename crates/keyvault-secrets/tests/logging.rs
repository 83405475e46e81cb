//! Logging, alone in its own test binary: `tracing`'s per-callsite interest cache is process-wide, so a
//! thread-local subscriber racing with other tests' threads could miss events.

mod common;

use common::*;
use futures_util::StreamExt;
use keyvault_secrets::SecretClient;
use keyvault_secrets::credentials::TokenCredential;
use std::sync::Arc;

#[tokio::test]
async fn logging_redacts_values_and_tokens() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let v = vault().await;
    let mut o = options(&v);
    o.logging_enable = true;
    let c = SecretClient::new(v.vault_url(), credential(&v), Some(o)).unwrap();
    c.set_secret("logged", "TOP-SECRET-VALUE", None)
        .await
        .unwrap();
    c.get_secret("logged", None).await.unwrap();
    let token = credential(&v)
        .get_token(
            &[&format!(
                "{}/.default",
                v.vault_url().replace("127.0.0.1", "localhost")
            )],
            None,
        )
        .await
        .unwrap();
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("keyvault_secrets.set_secret"), "{log}");
    assert!(log.contains("REDACTED"), "{log}");
    assert!(!log.contains("TOP-SECRET-VALUE"), "{log}");
    assert!(!log.contains(v.client_secret()), "{log}");
    assert!(!log.contains(&token.token.expose()[..20]), "{log}");

    // Logging for one call (Python's per-call `logging_enable=True`): a view of a quiet client that shares its
    // connections and token cache.
    let counting = Arc::new(Counting::new(credential(&v)));
    let quiet = SecretClient::new(v.vault_url(), counting.clone(), Some(options(&v))).unwrap();
    quiet
        .set_secret("quiet-one", "QUIET-SECRET-VALUE", None)
        .await
        .unwrap();
    quiet
        .with_logging_enable(true)
        .get_secret("loud-one", None)
        .await
        .unwrap_err();
    quiet.get_secret("quiet-one", None).await.unwrap();
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let detailed = |name: &str| {
        log.lines()
            .any(|l| l.contains(name) && l.contains("headers=") && l.contains("DEBUG"))
    };
    assert!(detailed("loud-one"), "{log}");
    assert!(!detailed("quiet-one"), "{log}");
    assert_eq!(counting.calls(), 1, "the view shares the client's token");

    // Without `logging_enable`, as Python's HttpLoggingPolicy: INFO lines with the method, the URL (query values
    // outside the allow-list redacted), the allow-listed headers, and the response's status and time taken.
    // The server's skip token is the last name of a page: this one (first in order) is created in the vault
    // directly, so that no request URL carries it, and the first page of one item ends with it.
    v.vault()
        .set(
            "aaa-skiptoken-canary",
            keyvault_types::SecretString::new("x"),
            Default::default(),
        )
        .await
        .unwrap();
    let mut pages = quiet.list_properties_of_secrets(Some(1)).unwrap().by_page();
    let first = pages.next().await.unwrap().unwrap();
    let next_link = first.continuation_token.clone().expect("a second page");
    pages.next().await.unwrap().unwrap();
    let skiptoken = url_query(&next_link, "$skiptoken").expect("a $skiptoken");
    assert_eq!(skiptoken, "aaa-skiptoken-canary");
    let quiet_token = counting
        .get_token(
            &[&format!(
                "{}/.default",
                v.vault_url().replace("127.0.0.1", "localhost")
            )],
            None,
        )
        .await
        .unwrap();

    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let info = |what: &str, name: &str| {
        log.lines().any(|l| {
            l.contains(" INFO ")
                && l.contains("keyvault_secrets::http")
                && l.contains(&format!(": {what} "))
                && l.contains(name)
        })
    };
    let api_version = format!("api-version={}", quiet.api_version().as_str());
    for (what, name) in [
        ("request", "/secrets/quiet-one?api-version="),
        ("response", "/secrets/quiet-one?api-version="),
        ("request", "$skiptoken=REDACTED"),
        ("response", "$skiptoken=REDACTED"),
        ("request", "maxresults=1"),
    ] {
        assert!(info(what, name), "no INFO {what} line with {name}:\n{log}");
    }
    assert!(log.contains(&api_version), "{log}");
    let quiet_lines: Vec<&str> = log.lines().filter(|l| l.contains("quiet-one")).collect();
    assert!(
        quiet_lines.iter().any(|l| l.contains("status=200")
            && l.contains("elapsed_ms=")
            && l.contains("(\"x-ms-request-id\", \"")),
        "{log}"
    );
    assert!(
        quiet_lines
            .iter()
            .any(|l| l.contains("(\"authorization\", \"REDACTED\")")),
        "{log}"
    );
    // Never: a secret value, the bearer token, a client secret or a $skiptoken's value.
    assert!(!log.contains("QUIET-SECRET-VALUE"), "{log}");
    assert!(!log.contains(quiet_token.token.expose()), "{log}");
    assert!(!log.contains(v.client_secret()), "{log}");
    assert!(!log.contains(&skiptoken), "{log}");
    let raw = next_link.split("$skiptoken=").nth(1).unwrap();
    let raw = raw.split('&').next().unwrap();
    assert!(!log.contains(raw), "{log}");
    v.shutdown().await;
}

/// The decoded value of the query parameter `name` of `url`.
fn url_query(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
