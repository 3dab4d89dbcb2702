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
use crate::fault::{Fault, FaultReport};
use crate::http;
use crate::state::Shared;
use crate::stats::Stats;
use crate::util::stopped;

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
    /// Closes when every task has ended.
    done: Option<mpsc::Receiver<()>>,
}

impl Emulator {
    /// Bind `cfg.listen`, create the configured streams (their event timers start now) and
    /// serve until [`shutdown`](Emulator::shutdown). Must be called inside a Tokio runtime.
    pub async fn start(cfg: EmulatorConfig) -> io::Result<Emulator> {
        let listener = bind(cfg.listen)?;
        let addr = listener.local_addr()?;
        let (tracker, done) = mpsc::channel(1);
        let names = cfg.streams.clone();
        let shared = Arc::new(Shared::new(cfg, tracker, tokio::runtime::Handle::current()));
        for name in &names {
            shared.stream(name);
        }
        shared.spawn(accept(shared.clone(), listener));
        info!(%addr, streams = names.len(), "emulator listening");
        Ok(Emulator {
            shared,
            addr,
            done: Some(done),
        })
    }

    /// The address it listens on (with the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, with loopback for HOST when listening on every address.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.connect_addr())
    }

    /// `ws://HOST:PORT/streams/{name}`.
    pub fn stream_url(&self, name: &str) -> String {
        format!("ws://{}/streams/{name}", self.connect_addr())
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
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }
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
async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    shared.spawn(connection(shared.clone(), tcp, peer));
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

/// Serve HTTP/1.1 on one connection until it ends, upgrades, or shutdown.
async fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let mut stop = shared.shutdown.subscribe();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(http::handle(shared, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
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
