//! A thin HTTPS client straight on hyper's connection API: one TLS connection per HTTP/1.1 worker, or one
//! multiplexed HTTP/2 connection shared by all workers. No pool, no URL parsing per request, so the client
//! spends as little of the (shared) CPU as possible and the figures are the server's.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The HTTP version a run speaks (chosen by ALPN, which the client pins to one protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive: one connection per concurrent worker.
    H1,
    /// HTTP/2: one connection, one stream per concurrent worker.
    H2,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
        }
    }
}

/// Where to connect and how to trust it.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:port` (HTTP/2 requests carry it as `:authority`).
    pub base: String,
    host: HeaderValue,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Target {
    /// A target at `base` (`https://127.0.0.1:port`) whose certificate chains to `ca_pem`.
    pub fn new(base: &str, ca_pem: &[u8]) -> Result<Target, String> {
        let hostport = base
            .strip_prefix("https://")
            .ok_or_else(|| format!("not an https URL: {base}"))?
            .trim_end_matches('/');
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|e| format!("not an address: {hostport}: {e}"))?;
        let config = keyvault_server::tls::client_config_trusting(ca_pem)
            .map_err(|e| format!("bad CA: {e}"))?;
        let mut h1 = config.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2 = config;
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Target {
            addr,
            base: format!("https://{hostport}"),
            host: HeaderValue::from_str(hostport).map_err(|e| e.to_string())?,
            h1: Arc::new(h1),
            h2: Arc::new(h2),
            server_name: ServerName::IpAddress(addr.ip().into()),
        })
    }

    /// Open one connection speaking `proto`.
    pub async fn connect(&self, proto: Proto) -> Result<Conn, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let config = match proto {
            Proto::H1 => self.h1.clone(),
            Proto::H2 => self.h2.clone(),
        };
        let tls = TlsConnector::from(config)
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
        let io = TokioIo::new(tls);
        let sender = match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(sender)
            }
        };
        Ok(Conn {
            sender,
            host: self.host.clone(),
            base: self.base.clone(),
        })
    }

    /// `connections` connections for `workers` workers: HTTP/1.1 gets one each, HTTP/2 shares one.
    pub async fn connect_workers(&self, proto: Proto, workers: usize) -> Result<Vec<Conn>, String> {
        let mut conns = Vec::with_capacity(workers);
        match proto {
            Proto::H1 => {
                for _ in 0..workers {
                    conns.push(self.connect(proto).await?);
                }
            }
            Proto::H2 => {
                let conn = self.connect(proto).await?;
                for _ in 1..workers {
                    conns.push(conn.share()?);
                }
                conns.push(conn);
            }
        }
        Ok(conns)
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One worker's handle on a connection.
pub struct Conn {
    sender: Sender,
    host: HeaderValue,
    base: String,
}

/// A request as the load generator describes it.
pub struct Call<'a> {
    pub method: Method,
    /// Path and query (`/secrets/x?api-version=7.6`).
    pub path: &'a str,
    pub bearer: Option<&'a HeaderValue>,
    /// A JSON body, or none.
    pub body: Option<Bytes>,
    /// `application/x-www-form-urlencoded` instead of JSON.
    pub form: bool,
}

impl Conn {
    /// Another handle on the same HTTP/2 connection (HTTP/1.1 connections cannot be shared).
    fn share(&self) -> Result<Conn, String> {
        match &self.sender {
            Sender::H2(s) => Ok(Conn {
                sender: Sender::H2(s.clone()),
                host: self.host.clone(),
                base: self.base.clone(),
            }),
            Sender::H1(_) => Err("an HTTP/1.1 connection cannot be shared".into()),
        }
    }

    /// Send one request and read the whole response.
    pub async fn send(&mut self, call: Call<'_>) -> Result<(StatusCode, Bytes), String> {
        let uri = match self.sender {
            // HTTP/1.1: origin-form plus Host; HTTP/2: absolute form (hyper sends it as :scheme/:authority).
            Sender::H1(_) => call.path.to_string(),
            Sender::H2(_) => format!("{}{}", self.base, call.path),
        };
        let mut builder = Request::builder().method(call.method).uri(uri);
        if let Sender::H1(_) = self.sender {
            builder = builder.header(header::HOST, self.host.clone());
        }
        if let Some(token) = call.bearer {
            builder = builder.header(header::AUTHORIZATION, token.clone());
        }
        let body = match call.body {
            Some(b) => {
                let ct = if call.form {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/json"
                };
                builder = builder.header(header::CONTENT_TYPE, HeaderValue::from_static(ct));
                b
            }
            None => Bytes::new(),
        };
        let req = builder
            .body(Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// A bearer token from the built-in issuer (client credentials).
pub async fn fetch_token(
    target: &Target,
    authority_host: &str,
    tenant_id: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<String, String> {
    let authority = authority_host.trim_end_matches('/');
    if authority != target.base {
        return Err(format!(
            "the token issuer {authority} is not the vault {}",
            target.base
        ));
    }
    let port = target.addr.port();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("client_secret", client_secret)
        .append_pair("scope", &format!("https://localhost:{port}/.default"))
        .finish();
    let mut conn = target.connect(Proto::H1).await?;
    let path = format!("/{tenant_id}/oauth2/v2.0/token");
    let (status, bytes) = conn
        .send(Call {
            method: Method::POST,
            path: &path,
            bearer: None,
            body: Some(Bytes::from(body)),
            form: true,
        })
        .await?;
    if status != StatusCode::OK {
        return Err(format!(
            "token request answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("token response: {e}"))?;
    json["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "token response without access_token".to_string())
}
