//! Logging, alone in its own test binary: `tracing`'s per-callsite interest cache is process-wide, so a
//! thread-local subscriber racing with other tests' threads could miss events.

mod common;

use common::*;
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
    quiet.set_secret("quiet-one", "v", None).await.unwrap();
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
    v.shutdown().await;
}
