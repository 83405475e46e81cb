//! The metrics listener: plain HTTP/1.1, `GET /metrics` (and `HEAD`), 404 for any other path, 405 for
//! another method. No authentication and no TLS: what it shows is counts, never a secret's name or value
//! (see the module above), and scrapers (Prometheus, a Kubernetes pod's annotations) expect plain HTTP.

use super::Metrics;
use super::text::CONTENT_TYPE;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Scrapes served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A scrape connection that sends nothing for this long is closed; so is one whose client takes nothing of
/// an answer for this long (`IdleIo`: hyper does not read while it writes to a client that pipelined its next
/// request, so a read timeout alone would never fire).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one request on the metrics listener.
pub fn respond(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    if path != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let body = metrics.render();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let answer = move |method: &Method, path: &str| respond(&metrics, method, path);
    serve_within(listener, answer, stop, HEADER_TIMEOUT).await
}

/// [`serve`] with `answer` for each request, connections closed after `quiet` without a request or an
/// answer taken.
async fn serve_within<A>(
    listener: TcpListener,
    answer: A,
    mut stop: tokio::sync::watch::Receiver<bool>,
    quiet: Duration,
) where
    A: Fn(&Method, &str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(quiet)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let tcp = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let answer = answer.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let resp = answer(req.method(), req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let mut io = crate::idle::IdleIo::new(tcp, quiet, quiet, 0);
            // A scrape's answer is a few KiB: one that waits this long is not being read.
            io.limit_write_stalls(quiet);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "metrics: connection ended with an error");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A scraper that pipelines requests and never reads the answers is cut off at the quiet limit (here
    /// 1 s), in the middle of its answers.
    #[tokio::test]
    async fn a_scraper_that_never_reads_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // An exposition's size (a few KiB), as the real one.
        let answer = |_: &Method, _: &str| Response::new(Full::new(Bytes::from(vec![b'#'; 4096])));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve_within(listener, answer, stop, Duration::from_secs(1)));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        const REQUESTS: usize = 100_000;
        let all = "GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n".repeat(REQUESTS);
        // Blocks once the server stops reading; ends (or fails) when it closes the connection.
        let written =
            tokio::time::timeout(Duration::from_secs(30), tcp.write_all(all.as_bytes())).await;
        assert!(written.is_ok(), "the server never closed the connection");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut got))
            .await
            .expect("closed");
        let answers = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
        assert!(answers < REQUESTS, "every answer was delivered: {answers}");
        let _ = stop_tx.send(true);
        server.await.unwrap();
    }
}
