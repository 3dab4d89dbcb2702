//! Plain clients for the platform tests: HTTP/1.1 (hyper) and WebSocket (tokio-tungstenite)
//! over TCP or over TLS (rustls with the emulator's test CA), on 127.0.0.1.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::HOST;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use streamkeeper_emulator::{Emulator, EmulatorConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

/// Upper bound for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// Window in which something that must not happen is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

/// A byte stream to the emulator.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
/// A boxed byte stream.
pub type Io = Pin<Box<dyn Stream>>;
/// A WebSocket to the emulator.
pub type Ws = WebSocketStream<Io>;

/// An emulator with timed events off (tests drive them), tweaked.
pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut cfg = EmulatorConfig {
        event_interval: Duration::ZERO,
        ..EmulatorConfig::default()
    };
    cfg.genesys.event_interval = Duration::ZERO;
    cfg.cxone.event_interval = Duration::ZERO;
    tweak(&mut cfg);
    Emulator::start(cfg).await.expect("emulator starts")
}

/// How to reach the emulator: plain, or TLS trusting `roots`.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.body))
    }
}

impl Target {
    /// Plain TCP.
    pub fn plain(emu: &Emulator) -> Self {
        Self {
            addr: emu.addr(),
            tls: None,
        }
    }

    /// TLS trusting only `ca_pem`.
    pub fn tls(emu: &Emulator, ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("PEM")).expect("CA added");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            addr: emu.addr(),
            tls: Some(Arc::new(cfg)),
        }
    }

    /// A connected stream (TLS handshake done).
    pub async fn io(&self) -> std::io::Result<Io> {
        let tcp = TcpStream::connect(self.addr).await?;
        match &self.tls {
            None => Ok(Box::pin(tcp)),
            Some(cfg) => {
                let name = ServerName::try_from("localhost").expect("name");
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Box::pin(tls))
            }
        }
    }

    /// One HTTP request on a new connection.
    pub async fn http(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let io = self.io().await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let resp = timeout(WAIT, sender.send_request(req))
            .await
            .expect("answered in time")
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A GET with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.http(Method::GET, path, &[("authorization", &auth)], "")
            .await
    }

    /// A JSON request with a bearer token.
    pub async fn send_json(&self, method: Method, path: &str, token: &str, body: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.http(
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }

    /// A WebSocket to `url` (no auth header).
    pub async fn ws(&self, url: &str) -> Result<Ws, WsError> {
        let io = self.io().await.map_err(WsError::Io)?;
        let req = url.into_client_request()?;
        let (ws, _) = timeout(WAIT, client_async(req, io))
            .await
            .expect("handshake in time")?;
        Ok(ws)
    }
}

/// A Genesys client-credentials token.
pub async fn genesys_token(t: &Target, id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    let r = t
        .http(
            Method::POST,
            "/oauth/token",
            &[
                ("authorization", &basic),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// A CXone access-key grant: `(access_token, refresh_token, json)`.
pub async fn cxone_token(t: &Target, id: &str, secret: &str) -> (String, String, Value) {
    let body = serde_json::json!({"accessKeyId": id, "accessKeySecret": secret}).to_string();
    let r = t
        .http(
            Method::POST,
            "/authentication/v1/token/access-key",
            &[("content-type", "application/json")],
            &body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = r.json();
    (
        v["access_token"].as_str().expect("access").to_string(),
        v["refresh_token"].as_str().expect("refresh").to_string(),
        v,
    )
}

/// The next message, which must arrive in time.
pub async fn next(ws: &mut Ws) -> Result<Message, WsError> {
    timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("stream not ended")
}

/// The next message as JSON text.
pub async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await.expect("no error") {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON text"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next JSON message for which `skip` is false (heartbeats and the like are skipped).
pub async fn next_json_except(ws: &mut Ws, skip: impl Fn(&Value) -> bool) -> Value {
    loop {
        let v = next_json(ws).await;
        if !skip(&v) {
            return v;
        }
    }
}

/// Send a JSON text message.
pub async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("sent");
}

/// The close frame the server sends next (skipping other messages), or `None` when the
/// connection ends without one.
pub async fn close_frame(ws: &mut Ws) -> Option<CloseFrame> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closed in time");
        match got {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// Nothing but messages `ignore` accepts arrives within [`QUIET`].
pub async fn assert_quiet(ws: &mut Ws, what: &str, ignore: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                assert!(ignore(&v), "{what}: expected nothing, got {v}");
            }
            Ok(other) => panic!("{what}: expected nothing, got {other:?}"),
        }
    }
}

/// Poll `check` (bounded) for state that changes just after a socket event.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
