//! The [`Emulator`] handle: bind, accept, serve HTTP on each connection, shut down.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::EmulatorConfig;
use crate::cxone::auth::OverTls;
use crate::fault::{Fault, FaultReport};
use crate::feed;
use crate::http;
use crate::state::Shared;
use crate::stats::Stats;
use crate::tls::{self, Tls};
use crate::util::{lock, stopped};

/// How long [`Emulator::shutdown`] waits for its tasks to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Listen backlog, for connection bursts (the kernel caps it at `somaxconn`).
const BACKLOG: u32 = 4096;

/// A running platform emulator. Dropping it stops the server too (without waiting);
/// [`shutdown`](Emulator::shutdown) stops it and waits for every task.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault};
/// let emu = Emulator::start(EmulatorConfig::default()).await?;
/// println!("token endpoint: {}/oauth/token", emu.base_url());
/// println!("stream: {}", emu.stream_url("queue-events"));
/// emu.fault(Fault::StopPongs { stream: None });
/// emu.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The CA clients trust, with TLS on.
    ca_pem: Option<String>,
    /// Closes when every task has ended.
    done: Option<mpsc::Receiver<()>>,
}

impl Emulator {
    /// Bind `cfg.listen`, create the configured streams (their event timers start now) and
    /// serve until [`shutdown`](Emulator::shutdown). Must be called inside a Tokio runtime.
    pub async fn start(cfg: EmulatorConfig) -> io::Result<Emulator> {
        let tls = cfg.tls.as_ref().map(tls::setup).transpose()?.map(Arc::new);
        let listener = bind(cfg.listen)?;
        let addr = listener.local_addr()?;
        let (tracker, done) = mpsc::channel(1);
        let names = cfg.streams.clone();
        let shared = Arc::new(Shared::new(cfg, tracker, tokio::runtime::Handle::current()));
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        *shared
            .ws_base
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            format!("{scheme}://{}", connect_addr(addr));
        for name in &names {
            shared.stream(name);
        }
        let feeds = [
            (
                shared.genesys.feeds.clone(),
                shared.cfg.genesys.event_interval,
            ),
            (
                shared.cxone.dfo_feeds.clone(),
                shared.cfg.cxone.event_interval,
            ),
            (
                shared.cxone.aah_feeds.clone(),
                shared.cfg.cxone.event_interval,
            ),
        ];
        for (f, every) in feeds {
            if !every.is_zero() {
                shared.spawn(feed::tick(f, every, shared.shutdown.subscribe()));
            }
        }
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        shared.spawn(accept(shared.clone(), listener, tls));
        info!(%addr, streams = names.len(), tls = ca_pem.is_some(), "emulator listening");
        Ok(Emulator {
            shared,
            addr,
            ca_pem,
            done: Some(done),
        })
    }

    /// The address it listens on (with the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT` (`https://` with TLS), with loopback for HOST when listening on every
    /// address: the base of every platform's REST and login endpoints.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.connect_addr())
    }

    /// `ws://HOST:PORT/streams/{name}` (`wss://` with TLS): a generic stream.
    pub fn stream_url(&self, name: &str) -> String {
        format!("{}/streams/{name}", self.shared.ws_base())
    }

    /// The DFO event hub socket URL for `tenant_id` and `user_id`.
    pub fn dfo_url(&self, tenant_id: &str, user_id: &str) -> String {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("tenantId", tenant_id)
            .append_pair("userId", user_id)
            .finish();
        format!("{}{}?{q}", self.shared.ws_base(), crate::cxone::dfo::PATH)
    }

    /// The AAH notifications socket URL.
    pub fn aah_url(&self) -> String {
        format!("{}{}", self.shared.ws_base(), crate::cxone::aah::PATH)
    }

    /// The test CA's certificate (PEM) when TLS is on.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The serial number of an issued token (what stats show instead of tokens).
    pub fn token_serial(&self, token: &str) -> Option<u64> {
        lock(&self.shared.tokens).serial(token)
    }

    /// Every access and refresh token issued since start, of every platform, oldest first (the
    /// last 10,000): what a test greps a run's output for, to prove no token leaked.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.tokens).issued()
    }

    /// Produce `n` events on Genesys `topic` now (creating it if needed).
    pub fn emit_genesys(&self, topic: &str, n: usize) {
        self.shared.genesys.feeds.topic(topic).emit(n);
    }

    /// Produce `n` events on DFO stream `tenant_id/user_id` now.
    pub fn emit_dfo(&self, tenant_id: &str, user_id: &str, n: usize) {
        self.shared
            .cxone
            .dfo_feeds
            .topic(&format!("{tenant_id}/{user_id}"))
            .emit(n);
    }

    /// Produce `n` events on AAH contact id `topic` now.
    pub fn emit_aah(&self, topic: &str, n: usize) {
        self.shared.cxone.aah_feeds.topic(topic).emit(n);
    }

    /// Inject a fault, exactly as `POST /faults` does.
    pub fn fault(&self, f: Fault) -> FaultReport {
        self.shared.apply(f)
    }

    /// A snapshot of the counters, exactly as `GET /stats` returns.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Produce `n` events on `stream` now (creating the stream if needed), so tests can drive
    /// events deterministically.
    pub fn emit(&self, stream: &str, n: usize) {
        self.shared.stream(stream).emit(n);
    }

    /// Stop accepting, close every socket (close 1001 where the socket can take it) and wait,
    /// up to 5 s, for every task to end.
    pub async fn shutdown(mut self) {
        self.shared.begin_shutdown();
        if let Some(mut done) = self.done.take()
            && tokio::time::timeout(SHUTDOWN_WAIT, done.recv())
                .await
                .is_err()
        {
            warn!("emulator tasks still running after shutdown wait");
        }
        info!(addr = %self.addr, "emulator stopped");
    }

    /// Where a client on this host connects.
    fn connect_addr(&self) -> SocketAddr {
        connect_addr(self.addr)
    }
}

/// Where a client on this host connects to reach `addr`.
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
    }
}

/// A listening socket on `addr` with a large backlog.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accept connections until shutdown.
async fn accept(shared: Arc<Shared>, listener: TcpListener, tls: Option<Arc<Tls>>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    shared.spawn(connection(shared.clone(), tcp, peer, tls.clone()));
                }
                Err(e) => {
                    // Out of descriptors, typically: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// TLS handshake record type: a connection that starts with it speaks TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serve one connection (TLS when it starts with a TLS handshake and TLS is on).
async fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, tls: Option<Arc<Tls>>) {
    let mut stop = shared.shutdown.subscribe();
    let Some(tls) = tls else {
        serve(shared, tcp, peer, false).await;
        return;
    };
    let mut first = [0u8; 1];
    let is_tls = tokio::select! {
        peeked = tcp.peek(&mut first) => matches!(peeked, Ok(1)) && first[0] == TLS_HANDSHAKE,
        () = stopped(&mut stop) => return,
    };
    if !is_tls {
        serve(shared, tcp, peer, false).await;
        return;
    }
    let handshake = tokio::select! {
        h = tls.acceptor.accept(tcp) => h,
        () = stopped(&mut stop) => return,
    };
    match handshake {
        Ok(stream) => serve(shared, stream, peer, true).await,
        Err(e) => debug!(%peer, error = %e, "TLS handshake failed"),
    }
}

/// Serve HTTP/1.1 on one connection until it ends, upgrades, or shutdown.
async fn serve<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, over_tls: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        if over_tls {
            req.extensions_mut().insert(OverTls);
        }
        async move { Ok::<_, Infallible>(http::handle(shared, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        served = conn => {
            if let Err(e) = served {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {}
    }
}
