//! The baseline: a bare hyper + rustls server that answers every request with one fixed body, served the way
//! `keyvault serve` serves (tokio multi-thread runtime with as many workers, tokio-rustls, hyper-util's auto
//! HTTP/1.1 + HTTP/2 builder, the same dev PKI kind: ECDSA P-256). It runs on its own runtime in this process
//! so that it does not share the client's scheduler.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::path::Path;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A running baseline server; stopped (runtime dropped) on drop.
pub struct Baseline {
    pub base_url: String,
    pub ca_pem: Vec<u8>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Baseline {
    /// Start serving `body` (as `application/json`) on 127.0.0.1 with certificates made under `pki_dir`.
    pub fn start(pki_dir: &Path, body: Bytes, workers: usize) -> Result<Baseline, String> {
        let material = keyvault_server::tls::load_or_create_dev_pki(pki_dir)
            .map_err(|e| format!("baseline PKI: {e}"))?;
        let ca_path = material
            .ca_pem_path
            .clone()
            .ok_or("the dev PKI has no CA file")?;
        let ca_pem = std::fs::read(&ca_path).map_err(|e| format!("{}: {e}", ca_path.display()))?;
        let tls = keyvault_server::tls::server_config(&material)
            .map_err(|e| format!("baseline TLS: {e}"))?;
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("baseline")
            .enable_all()
            .build()
            .map_err(|e| format!("baseline runtime: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("baseline-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let acceptor = TlsAcceptor::from(tls);
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(256);
                    loop {
                        let (tcp, _) = tokio::select! {
                            _ = &mut stop_rx => break,
                            accepted = listener.accept() => match accepted {
                                Ok(c) => c,
                                Err(_) => continue,
                            },
                        };
                        let _ = tcp.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        let builder = builder.clone();
                        let body = body.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let service = service_fn(move |_req| {
                                let mut resp = Response::new(Full::new(body.clone()));
                                resp.headers_mut().insert(
                                    header::CONTENT_TYPE,
                                    HeaderValue::from_static("application/json; charset=utf-8"),
                                );
                                async move { Ok::<_, Infallible>(resp) }
                            });
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                .await;
                        });
                    }
                });
                // Dropping the runtime here ends every connection task.
            })
            .map_err(|e| format!("baseline thread: {e}"))?;
        Ok(Baseline {
            base_url: format!("https://{addr}"),
            ca_pem,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
