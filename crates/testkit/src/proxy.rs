//! [`ConnectProxy`]: a small HTTP `CONNECT` proxy on loopback, the test double for a corporate
//! egress proxy. It answers `CONNECT host:port` with 200 and splices bytes both ways (TLS
//! stays end to end: it never sees inside a tunnel), records every tunnel it opened and every
//! request it refused, optionally demands `Proxy-Authorization: Basic` (407 without it), and
//! refuses anything but `CONNECT` with 405.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use streamkeeper_testkit::proxy::ConnectProxy;
//! let proxy = ConnectProxy::start().await?;
//! // Point a client at it: HTTPS_PROXY=http://127.0.0.1:PORT
//! println!("HTTPS_PROXY={}", proxy.url());
//! assert!(proxy.wait_for(Duration::from_secs(5), |t| !t.is_empty()).await);
//! println!("tunnel to {}", proxy.tunnels()[0].target);
//! # Ok(()) }
//! ```

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use base64::Engine as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::{JoinHandle, JoinSet},
};

/// The largest request head read (a CONNECT head is a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head, and the proxy to reach a target.
const STEP_BOUND: Duration = Duration::from_secs(10);

/// One tunnel the proxy opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// The `CONNECT` target as the client wrote it (`host:port`, `[v6]:port`).
    pub target: String,
    /// The client's address.
    pub client: SocketAddr,
}

/// One request the proxy turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request's method.
    pub method: String,
    /// The request target as written.
    pub target: String,
    /// The status answered: 400 (unreadable), 405 (not `CONNECT`), 407 (no or wrong
    /// credentials), 502 (the target could not be reached).
    pub status: u16,
}

#[derive(Debug, Default)]
struct Log {
    tunnels: Vec<Tunnel>,
    refusals: Vec<Refusal>,
}

#[derive(Debug)]
struct Shared {
    log: Mutex<Log>,
    changed: Notify,
    /// The `Proxy-Authorization` value demanded, if any.
    auth: Option<String>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.log());
        self.changed.notify_waiters();
    }
}

/// A running `CONNECT` proxy on `127.0.0.1`. Dropping it stops it and cuts every tunnel.
#[derive(Debug)]
pub struct ConnectProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// A proxy that tunnels for anyone. Must be called inside a Tokio runtime.
    pub async fn start() -> io::Result<Self> {
        Self::bind(None).await
    }

    /// A proxy that demands `Proxy-Authorization: Basic base64(user:password)` and answers
    /// 407 without it.
    pub async fn with_basic_auth(user: &str, password: &str) -> io::Result<Self> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::bind(Some(format!("Basic {encoded}"))).await
    }

    async fn bind(auth: Option<String>) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            log: Mutex::default(),
            changed: Notify::new(),
            auth,
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the value for `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every tunnel opened so far, in order.
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.shared.log().tunnels.clone()
    }

    /// The targets of every tunnel opened so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.shared
            .log()
            .tunnels
            .iter()
            .map(|t| t.target.clone())
            .collect()
    }

    /// Every request refused so far, in order.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.log().refusals.clone()
    }

    /// Waits until the tunnels opened so far satisfy `pred`, at most `bound`; false if the
    /// bound passed first.
    pub async fn wait_for(&self, bound: Duration, pred: impl Fn(&[Tunnel]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.shared.log().tunnels) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.shared.log().tunnels);
            }
        }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        // The accept task owns the tunnels' tasks: aborting it drops them all.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut tunnels = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    tunnels.spawn(serve(client, peer, Arc::clone(&shared)));
                }
                // Out of descriptors, typically: a test proxy may simply stop accepting.
                Err(_) => return,
            },
            // Reap finished tunnels so the set does not grow with a long test.
            Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
        }
    }
}

/// What the client asked for.
struct Request {
    method: String,
    target: String,
    authorization: Option<String>,
    /// Bytes the client sent after the head (the start of its TLS handshake, typically).
    rest: Vec<u8>,
}

/// Reads one request head; `None` when the client went away or sent too much.
async fn read_request(client: &mut TcpStream) -> Option<Result<Request, ()>> {
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() >= MAX_HEAD {
            return Some(Err(()));
        }
        let n = client.read_buf(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let authorization = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                return Some(Ok(Request {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    authorization,
                    rest: buf[len..].to_vec(),
                }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Some(Err(())),
        }
    }
}

async fn refuse(client: &mut TcpStream, shared: &Shared, method: &str, target: &str, status: u16) {
    let (reason, extra) = match status {
        405 => ("Method Not Allowed", "Allow: CONNECT\r\n"),
        407 => (
            "Proxy Authentication Required",
            "Proxy-Authenticate: Basic realm=\"streamkeeper test proxy\"\r\n",
        ),
        502 => ("Bad Gateway", ""),
        _ => ("Bad Request", ""),
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
    shared.record(|log| {
        log.refusals.push(Refusal {
            method: method.to_owned(),
            target: target.to_owned(),
            status,
        })
    });
}

async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let Ok(Some(request)) = tokio::time::timeout(STEP_BOUND, read_request(&mut client)).await
    else {
        return;
    };
    let Ok(request) = request else {
        refuse(&mut client, &shared, "", "", 400).await;
        return;
    };
    let (method, target) = (request.method.as_str(), request.target.as_str());
    if !method.eq_ignore_ascii_case("CONNECT") {
        refuse(&mut client, &shared, method, target, 405).await;
        return;
    }
    if let Some(want) = &shared.auth
        && request.authorization.as_deref() != Some(want.as_str())
    {
        refuse(&mut client, &shared, method, target, 407).await;
        return;
    }
    let upstream = match tokio::time::timeout(STEP_BOUND, TcpStream::connect(target)).await {
        Ok(Ok(upstream)) => upstream,
        _ => {
            refuse(&mut client, &shared, method, target, 502).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    shared.record(|log| {
        log.tunnels.push(Tunnel {
            target: target.to_owned(),
            client: peer,
        })
    });
    let mut upstream = upstream;
    if !request.rest.is_empty() && upstream.write_all(&request.rest).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    async fn ask(proxy: &ConnectProxy, head: &str) -> (TcpStream, String) {
        let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
        tcp.write_all(head.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(BOUND, tcp.read(&mut byte))
                .await
                .expect("an answer in time")
                .expect("read");
            assert_eq!(n, 1, "closed before the head ended: {answer:?}");
            answer.push(byte[0]);
        }
        (tcp, String::from_utf8_lossy(&answer).into_owned())
    }

    #[tokio::test]
    async fn tunnels_bytes_both_ways_and_records_the_target() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.expect("accept");
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let proxy = ConnectProxy::start().await.expect("proxy");
        let (mut tcp, head) = ask(&proxy, &format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tcp.write_all(b"ping").await.expect("send");
        let mut back = [0u8; 4];
        tokio::time::timeout(BOUND, tcp.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(&back, b"ping");
        assert_eq!(proxy.targets(), [target]);
        assert!(proxy.refusals().is_empty());
    }

    #[tokio::test]
    async fn refuses_other_methods_missing_credentials_and_unreachable_targets() {
        let proxy = ConnectProxy::with_basic_auth("alice", "s3cret")
            .await
            .expect("proxy");
        let (_, head) = ask(&proxy, "GET http://example.invalid/ HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        let (_, head) = ask(&proxy, "CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        assert!(head.contains("Proxy-Authenticate: Basic"), "{head}");
        let wrong = base64::engine::general_purpose::STANDARD.encode("alice:wrong");
        let (_, head) = ask(
            &proxy,
            &format!("CONNECT 127.0.0.1:9 HTTP/1.1\r\nProxy-Authorization: Basic {wrong}\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        // Right credentials, but nothing listens on the discard port.
        let right = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let (_, head) = ask(
            &proxy,
            &format!("CONNECT 127.0.0.1:9 HTTP/1.1\r\nProxy-Authorization: Basic {right}\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        let statuses: Vec<u16> = proxy.refusals().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [405, 407, 407, 502]);
        assert!(proxy.tunnels().is_empty());
    }
}
