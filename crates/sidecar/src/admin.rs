//! The admin HTTP endpoint: every route the sidecar serves to Kubernetes and Prometheus.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | 200, Prometheus text 0.0.4 ([`Metrics::encode`]) |
//! | `GET /healthz` | liveness: 200 `ok`, or 503 with the reason ([`StatusSource::healthy`]) |
//! | `GET /readyz` | readiness: 200 `ok`, or 503 with the reason ([`StatusSource::ready`]) |
//! | `GET /status` | 200, JSON view of every stream ([`StatusSource::status`]) |
//! | `GET /debug/heap` | built with the `heap-stats` feature only: 200, the live-heap census (`heap::census_json`) |
//! | another method on one of those paths | 405 with `Allow: GET` |
//! | any other path | 404 |
//!
//! The query string is ignored. The server speaks HTTP/1.1 with keep-alive, runs one task per
//! connection, closes a connection whose request head is not complete within
//! [`HEADER_READ_TIMEOUT`] (this also bounds idle keep-alive connections) and serves at most
//! [`MAX_CONNECTIONS`] connections at once (others wait in the listen backlog).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// How long a client may take to send a complete request head (and how long a keep-alive
/// connection may sit idle) before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`serve`] waits, after its shutdown future completes, for in-flight requests to
/// finish before it drops the connections that remain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 128;

/// The first pause after a failed `accept` (out of file descriptors, ...); it doubles up to 1 s.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the admin endpoint reports about the sidecar, beyond its metrics.
///
/// Called on the runtime for every request, so each method must answer quickly from state it
/// already has (a snapshot, a flag), never by doing I/O.
pub trait StatusSource: Send + Sync {
    /// A JSON view of every stream, served at `/status`.
    fn status(&self) -> serde_json::Value;
    /// [`status`](Self::status) as JSON text, what `/status` sends. A source with many streams
    /// writes it straight from its own types, without building the `Value` tree.
    fn status_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.status())
    }
    /// `Ok` when the sidecar should receive traffic (`/readyz`); else why not.
    fn ready(&self) -> Result<(), String>;
    /// `Ok` while the sidecar's loops are running (`/healthz`); else what is stuck.
    fn healthy(&self) -> Result<(), String>;
}

/// Limits of one server; [`serve`] uses the module's constants, tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    drain_timeout: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves the admin routes on `listener` until `shutdown` completes.
///
/// On shutdown it stops accepting (the listener is closed), lets in-flight requests finish and
/// closes idle connections, waits at most [`DRAIN_TIMEOUT`] for them, then drops whatever is
/// left and returns. A failed `accept` is logged and retried after a short pause, so the only
/// error is failing to read the listener's own address at start.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    source: Arc<dyn StatusSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, metrics, source, shutdown, Limits::default()).await
}

async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    source: Arc<dyn StatusSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin endpoint listening");

    // Dropping `stop` tells every connection task to shut down gracefully.
    let (stop, stopped) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF;

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined
                    && error.is_panic()
                {
                    tracing::error!(%error, "admin connection task panicked");
                }
            }
            accepted = listener.accept(), if connections.len() < limits.max_connections => {
                match accepted {
                    Ok((stream, peer)) => {
                        backoff = ACCEPT_BACKOFF;
                        connections.spawn(connection(
                            stream,
                            peer,
                            Arc::clone(&metrics),
                            Arc::clone(&source),
                            stopped.clone(),
                            limits.header_read_timeout,
                        ));
                    }
                    // The peer gave up before we accepted: nothing to do.
                    Err(error) if is_peer_error(&error) => {}
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?backoff, "admin endpoint: accept failed");
                        tokio::select! {
                            biased;
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                }
            }
        }
    }

    drop(listener);
    drop(stop);
    let in_flight = connections.len();
    tracing::info!(addr = %local, in_flight, "admin endpoint shutting down");
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            addr = %local,
            left = connections.len(),
            timeout = ?limits.drain_timeout,
            "admin connections still open after the drain timeout; dropping them"
        );
        // Abort without waiting: a task stuck in a blocking call could not be waited out.
        connections.abort_all();
    }
    Ok(())
}

/// Accept errors that concern one connection only, not the listener.
fn is_peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Serves one connection until the client leaves or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    source: Arc<dyn StatusSource>,
    mut stopped: watch::Receiver<()>,
    header_read_timeout: Duration,
) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = route(&request, &metrics, source.as_ref());
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // Never sent to: this completes (with Err) when the server drops the sender.
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "admin connection ended with an error");
    }
}

/// The admin routes. Generic over the request body, which no route reads.
fn route<B>(
    request: &Request<B>,
    metrics: &Metrics,
    source: &dyn StatusSource,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    #[cfg(feature = "heap-stats")]
    if path == "/debug/heap" && request.method() == Method::GET {
        return respond(
            StatusCode::OK,
            "application/json",
            crate::heap::census_json().into(),
        );
    }
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            crate::metrics::TEXT_FORMAT,
            metrics.encode().into(),
        ),
        "/healthz" => check(source.healthy()),
        "/readyz" => check(source.ready()),
        _ => match source.status_json() {
            Ok(json) => respond(StatusCode::OK, "application/json", json.into()),
            Err(error) => {
                tracing::warn!(%error, "admin /status: cannot serialise the status");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "status not serialisable\n",
                )
            }
        },
    }
}

/// 200 `ok`, or 503 with the reason.
fn check(result: Result<(), String>) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(reason) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("{reason}\n").into(),
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::mpsc;

    use serde_json::json;
    use streamkeeper_api::{StreamId, StreamState, Tenant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;
    use crate::metrics::tests::{FAMILIES, samples, touch_all};

    /// Generous bound for anything that should happen at once, so a slow CI box cannot flake.
    const BOUND: Duration = Duration::from_secs(10);

    struct FakeSource {
        status: serde_json::Value,
        ready: Mutex<Result<(), String>>,
        healthy: Mutex<Result<(), String>>,
    }

    impl FakeSource {
        fn new() -> Self {
            Self {
                status: json!({"streams": [{"id": "cc/acme-queue", "state": "ACTIVE"}]}),
                ready: Mutex::new(Err("no stream connected yet".into())),
                healthy: Mutex::new(Ok(())),
            }
        }
    }

    impl StatusSource for FakeSource {
        fn status(&self) -> serde_json::Value {
            self.status.clone()
        }
        fn ready(&self) -> Result<(), String> {
            self.ready.lock().expect("not poisoned").clone()
        }
        fn healthy(&self) -> Result<(), String> {
            self.healthy.lock().expect("not poisoned").clone()
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    async fn start(metrics: Arc<Metrics>, source: Arc<dyn StatusSource>, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with(listener, metrics, source, shutdown, limits));
        Server { addr, stop, task }
    }

    impl Server {
        /// Fires the shutdown future and waits (bounded) for `serve` to return.
        async fn stop(self) {
            let _ = self.stop.send(());
            timeout(BOUND, self.task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task did not panic")
                .expect("serve returns Ok");
        }
    }

    struct Reply {
        status: u16,
        headers: HashMap<String, String>,
        body: String,
    }

    /// Reads one response (head, then `Content-Length` bytes of body unless it answers a HEAD)
    /// from a connection.
    async fn read_reply(stream: &mut TcpStream, head_only: bool) -> Reply {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "connection closed before a full response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        let mut body = buf[head_end..].to_vec();
        while !head_only && body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        Reply {
            status,
            headers,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }

    async fn send(stream: &mut TcpStream, method: &str, path: &str, close: bool) {
        let connection = if close { "close" } else { "keep-alive" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: {connection}\r\nContent-Length: 0\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        timeout(BOUND, async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            send(&mut stream, method, path, true).await;
            read_reply(&mut stream, method == "HEAD").await
        })
        .await
        .expect("reply within bound")
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        request(addr, "GET", path).await
    }

    #[tokio::test]
    async fn metrics_route_serves_every_family_in_text_format() {
        let metrics = Arc::new(Metrics::new());
        let stream: StreamId = "cc/acme-queue".parse().expect("valid");
        let tenant: Tenant = "acme".parse().expect("valid");
        touch_all(&metrics, &stream, &tenant);
        metrics.set_state(&stream, &tenant, StreamState::Degraded);
        let server = start(metrics, Arc::new(FakeSource::new()), Limits::default()).await;

        let reply = get(server.addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-type"], "text/plain; version=0.0.4");
        for family in FAMILIES {
            assert!(
                reply.body.contains(&format!("# TYPE {family} ")),
                "{family}"
            );
        }
        let on: Vec<_> = samples(&reply.body, "streamkeeper_stream_state")
            .into_iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(l, _)| l["state"].clone())
            .collect();
        assert_eq!(on, ["DEGRADED"]);
        // The query string is ignored.
        assert_eq!(get(server.addr, "/metrics?debug=1").await.status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_flips_from_503_with_the_reason_to_200() {
        let source = Arc::new(FakeSource::new());
        let server = start(Arc::new(Metrics::new()), source.clone(), Limits::default()).await;

        let reply = get(server.addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body.trim_end(), "no stream connected yet");

        *source.ready.lock().expect("not poisoned") = Ok(());
        let reply = get(server.addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
        server.stop().await;
    }

    #[tokio::test]
    async fn healthz_is_200_while_healthy_and_503_with_the_reason_when_not() {
        let source = Arc::new(FakeSource::new());
        let server = start(Arc::new(Metrics::new()), source.clone(), Limits::default()).await;

        let reply = get(server.addr, "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));

        *source.healthy.lock().expect("not poisoned") = Err("reaper loop stalled for 31s".into());
        let reply = get(server.addr, "/healthz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body.trim_end(), "reaper loop stalled for 31s");
        server.stop().await;
    }

    #[tokio::test]
    async fn status_returns_the_sources_json() {
        let source = Arc::new(FakeSource::new());
        let server = start(Arc::new(Metrics::new()), source.clone(), Limits::default()).await;

        let reply = get(server.addr, "/status").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_str(&reply.body).expect("json body");
        assert_eq!(body, source.status);
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405_with_allow() {
        let server = start(
            Arc::new(Metrics::new()),
            Arc::new(FakeSource::new()),
            Limits::default(),
        )
        .await;

        for path in ["/", "/nope", "/metrics/extra", "/statusz"] {
            assert_eq!(get(server.addr, path).await.status, 404, "{path}");
        }
        assert_eq!(request(server.addr, "POST", "/nope").await.status, 404);
        for (method, path) in [
            ("POST", "/metrics"),
            ("PUT", "/readyz"),
            ("DELETE", "/status"),
            ("HEAD", "/healthz"),
        ] {
            let reply = request(server.addr, method, path).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(reply.headers["allow"], "GET", "{method} {path}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections_and_the_listener() {
        // A drain timeout far above the bound: returning in time proves idle connections are
        // closed at once rather than waited out.
        let limits = Limits {
            drain_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let server = start(
            Arc::new(Metrics::new()),
            Arc::new(FakeSource::new()),
            limits,
        )
        .await;
        let addr = server.addr;

        let mut idle = TcpStream::connect(addr).await.expect("connect");
        send(&mut idle, "GET", "/healthz", false).await;
        let reply = timeout(BOUND, read_reply(&mut idle, false))
            .await
            .expect("reply");
        assert_eq!(reply.status, 200);

        server.stop().await;
        let mut rest = Vec::new();
        let n = timeout(BOUND, idle.read_to_end(&mut rest))
            .await
            .expect("idle connection closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing more is sent on the idle connection");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once serve returns"
        );
    }

    /// A source whose `status` blocks its runtime worker until the test releases it.
    struct GatedSource {
        entered: Mutex<Option<oneshot::Sender<()>>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl StatusSource for GatedSource {
        fn status(&self) -> serde_json::Value {
            if let Some(entered) = self.entered.lock().expect("not poisoned").take() {
                let _ = entered.send(());
            }
            let _ = self.release.lock().expect("not poisoned").recv();
            json!({"gated": true})
        }
        fn ready(&self) -> Result<(), String> {
            Ok(())
        }
        fn healthy(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// Releases the gated source when dropped too, so a failing test cannot leave a runtime
    /// worker blocked (which would hang the runtime's shutdown).
    struct Release(mpsc::Sender<()>);

    impl Release {
        fn send(&self) {
            let _ = self.0.send(());
        }
    }

    impl Drop for Release {
        fn drop(&mut self) {
            self.send();
        }
    }

    fn gated() -> (Arc<GatedSource>, oneshot::Receiver<()>, Release) {
        let (entered_tx, entered) = oneshot::channel();
        let (release, release_rx) = mpsc::channel();
        let source = GatedSource {
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(release_rx),
        };
        (Arc::new(source), entered, Release(release))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_an_in_flight_request_finish() {
        let (source, entered, release) = gated();
        let server = start(Arc::new(Metrics::new()), source, Limits::default()).await;
        let addr = server.addr;
        let client = tokio::spawn(async move { get(addr, "/status").await });
        timeout(BOUND, entered)
            .await
            .expect("request reached the source")
            .expect("entered sent");

        let _ = server.stop.send(());
        let mut task = server.task;
        // Only a wrong server could return here: the request is still held by the source.
        assert!(
            timeout(Duration::from_millis(200), &mut task)
                .await
                .is_err(),
            "serve returned while a request was in flight"
        );
        release.send();

        let reply = timeout(BOUND, client)
            .await
            .expect("reply within bound")
            .expect("client task did not panic");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, r#"{"gated":true}"#);
        timeout(BOUND, task)
            .await
            .expect("serve returns once the request is done")
            .expect("serve task did not panic")
            .expect("serve returns Ok");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_gives_up_on_a_stuck_request_after_the_drain_timeout() {
        let (source, entered, release) = gated();
        let limits = Limits {
            drain_timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        let server = start(Arc::new(Metrics::new()), source, limits).await;
        let addr = server.addr;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        send(&mut client, "GET", "/status", true).await;
        timeout(BOUND, entered)
            .await
            .expect("request reached the source")
            .expect("entered sent");

        // The source never answers until after serve has returned.
        server.stop().await;
        release.send();
    }
}
