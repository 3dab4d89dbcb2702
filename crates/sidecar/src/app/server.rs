//! The local app server: `ws://{listen}/streams/{namespace}/{name}`, one app connection per
//! stream at a time.
//!
//! Each accepted socket is routed to its stream's [`Hub`], handed a `state` frame and then every
//! frame the hub's consumer yields, in order; the app's acks go back to the hub. A newer
//! connection for the same stream replaces the older one (close 4000); one that falls more than
//! a thousand control frames behind is closed with 4001. The sidecar pings the app
//! with the same [`Liveness`] engine it uses upstream and reaps a silent app, or one that stopped
//! reading, with a TCP reset; its unacked events stay in the hub for the next connection.
//!
//! One task per connection drives reads, writes, the hub and one timer together, so a write to
//! an app that stopped reading never delays pong handling, the heartbeat or the reaping.

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use streamkeeper_api::{FromApp, StreamId, ToApp};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::{Instant, sleep, sleep_until, timeout, timeout_at},
};
use tokio_tungstenite::{
    WebSocketStream, accept_hdr_async_with_config,
    tungstenite::{
        Bytes, Error as WsError, Message,
        error::ProtocolError,
        handshake::server::{ErrorResponse, Request, Response},
        http::{HeaderValue, StatusCode, header::CONTENT_TYPE},
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::{
    app::hub::{Ack, Consumer, Detached, Hub},
    liveness::{Due, Health, HeartbeatPolicy, Liveness},
};

/// Close code for a connection replaced by a newer one for the same stream.
pub const CLOSE_REPLACED: u16 = 4000;
/// Close code for a connection that left too many control frames unread (the hub gave up on it).
pub const CLOSE_LAGGED: u16 = 4001;
/// Close reason sent with [`CLOSE_LAGGED`].
pub const LAGGED_REASON: &str = "too far behind: reconnect to see the stream afresh";
/// Close reason (code 1001) when the stream is removed from this sidecar.
pub const REMOVED_REASON: &str = "stream removed from this sidecar";
/// Close reason sent with [`CLOSE_REPLACED`].
pub const REPLACED_REASON: &str = "replaced by a newer connection";
/// Close reason sent with 1001 when the sidecar stops.
pub const SHUTDOWN_REASON: &str = "sidecar shutting down";

/// How long a close handshake (ours or the app's) may take before the socket is reset.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long [`serve`] waits for its connections to close after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Pause after a failed `accept` (out of file descriptors, ...), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The shortest ping interval honoured; a zero interval would ping in a busy loop.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);
/// The most characters of app-supplied text (ids, serde errors) one log line carries.
const LOG_CLIP: usize = 200;
/// Read buffer of an app socket: app frames are small acks.
const READ_BUFFER: usize = 4 * 1024;

/// Where the app server finds the hub of a stream. The sidecar runtime implements it; streams
/// come and go with config reloads, so the server asks again for every connection.
pub trait HubDirectory: Send + Sync + 'static {
    /// The hub of `stream`, or `None` when this sidecar does not run that stream.
    fn hub(&self, stream: &StreamId) -> Option<Arc<Hub>>;
}

/// Limits and heartbeat of the app server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppServerConfig {
    /// The largest frame or message accepted from an app, in bytes; larger ones close the
    /// connection with 1009. Default 1 MiB.
    pub max_frame: usize,
    /// How often the app is pinged, and how long it may stay silent (or leave a write
    /// unfinished) before its socket is reaped. Default 15 s / 35 s.
    pub heartbeat: HeartbeatPolicy,
    /// App connections served at once; one more is answered `503 Service Unavailable` (with
    /// `Retry-After`) and closed. Default 1024.
    pub max_connections: usize,
}

impl Default for AppServerConfig {
    fn default() -> Self {
        Self {
            max_frame: 1024 * 1024,
            heartbeat: HeartbeatPolicy {
                interval: Duration::from_secs(15),
                timeout: Duration::from_secs(35),
            },
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// [`AppServerConfig::max_connections`] by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Serves apps on `listener` until `shutdown` completes, then stops accepting, closes every app
/// socket with 1001 "sidecar shutting down" and returns (within a few seconds, resetting the
/// sockets of apps that do not finish the close handshake in time).
///
/// Errors of one connection end only that connection; a failed `accept` is logged and retried.
/// The only error returned is failing to read the listener's own address at start.
///
/// ```no_run
/// # use std::{collections::HashMap, sync::Arc};
/// # use streamkeeper_api::StreamId;
/// # use streamkeeper_sidecar::app::{Hub, server::{serve, AppServerConfig, HubDirectory}};
/// struct Hubs(HashMap<StreamId, Arc<Hub>>);
/// impl HubDirectory for Hubs {
///     fn hub(&self, stream: &StreamId) -> Option<Arc<Hub>> {
///         self.0.get(stream).cloned()
///     }
/// }
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
/// let hubs = Arc::new(Hubs(HashMap::new()));
/// serve(listener, hubs, AppServerConfig::default(), async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    hubs: Arc<dyn HubDirectory>,
    cfg: AppServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, hubs, watch::channel(cfg).1, shutdown).await
}

/// [`serve`], taking each new connection's limits and heartbeat from `cfg` as it is then (the
/// sidecar sends a new one with every config reload; connections already open keep theirs).
pub async fn serve_with(
    listener: TcpListener,
    hubs: Arc<dyn HubDirectory>,
    cfg: watch::Receiver<AppServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    info!(%local, "app server listening");

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done),
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let cfg = *cfg.borrow();
                    if conns.len() >= cfg.max_connections {
                        refuse_busy(&tcp, cfg.max_connections);
                        warn!(%peer, limit = cfg.max_connections, "app connection refused with 503: too many app connections");
                        continue;
                    }
                    let span = info_span!("app_socket", %peer, stream = tracing::field::Empty);
                    let conn = connection(tcp, Arc::clone(&hubs), checked(cfg), stop_rx.clone());
                    conns.spawn(conn.instrument(span));
                }
                Err(e) => {
                    warn!(%local, "accepting an app connection failed: {e}");
                    sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    info!(%local, connections = conns.len(), "app server shutting down");
    stop_tx.send_replace(true);
    let drained = timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = conns.join_next().await {
            log_join(done);
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = conns.len(),
            "app connections still open after {SHUTDOWN_GRACE:?}: aborted"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// The config with its heartbeat interval raised to [`MIN_PING_INTERVAL`] (zero would ping in
/// a busy loop).
fn checked(mut cfg: AppServerConfig) -> AppServerConfig {
    if cfg.heartbeat.interval < MIN_PING_INTERVAL {
        debug!(
            "app heartbeat interval {:?} raised to {MIN_PING_INTERVAL:?}",
            cfg.heartbeat.interval
        );
        cfg.heartbeat.interval = MIN_PING_INTERVAL;
    }
    cfg
}

/// Answers a connection over the limit with `503` and closes it, without waiting: the
/// response fits any socket buffer, and an app that does not read it sees the close.
fn refuse_busy(tcp: &TcpStream, limit: usize) {
    let body = format!("too many app connections: this sidecar serves at most {limit}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; \
         charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = tcp.try_write(response.as_bytes()) {
        debug!("503 not written: {e}");
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!("an app connection task panicked: {e}");
    }
}

type Ws = WebSocketStream<TcpStream>;

fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// The stream a request path names, and its hub; or the one-line reason for a 404.
fn route(path: &str, hubs: &dyn HubDirectory) -> Result<(StreamId, Arc<Hub>), String> {
    let Some((ns, name)) = path
        .strip_prefix("/streams/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return Err(format!(
            "no stream at {}: the path is /streams/{{namespace}}/{{name}}",
            clip(path)
        ));
    };
    let stream =
        StreamId::new(ns, name).map_err(|e| format!("no stream at {}: {e}", clip(path)))?;
    match hubs.hub(&stream) {
        Some(hub) => Ok((stream, hub)),
        None => Err(format!(
            "unknown stream {stream}: this sidecar does not run it"
        )),
    }
}

fn not_found(why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(format!("{why}\n")));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// One accepted socket: the handshake, then the app session.
async fn connection(
    tcp: TcpStream,
    hubs: Arc<dyn HubDirectory>,
    cfg: AppServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!("TCP_NODELAY not set: {e}");
    }
    let mut routed = None;
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback returns its ErrorResponse by value"
    )]
    let callback = |req: &Request, resp: Response| match route(req.uri().path(), &*hubs) {
        Ok(found) => {
            routed = Some(found);
            Ok(resp)
        }
        Err(why) => {
            info!("app connection refused with 404: {why}");
            Err(not_found(&why))
        }
    };
    let handshake = accept_hdr_async_with_config(tcp, callback, Some(ws_config(cfg.max_frame)));
    // An app that does not finish its handshake within the dead timeout never will.
    let ws = tokio::select! {
        res = timeout(cfg.heartbeat.timeout, handshake) => match res {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!("app handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!("app handshake not finished within {:?}", cfg.heartbeat.timeout);
                return;
            }
        },
        _ = stop.wait_for(|stopping| *stopping) => return,
    };
    let Some((stream, hub)) = routed else { return };
    tracing::Span::current().record("stream", tracing::field::display(&stream));
    session(&stream, &hub, ws, cfg, &mut stop).await;
}

/// Why a session ended, and so how its socket goes.
#[derive(Debug)]
enum End {
    /// Close handshake with this code and reason, bounded by [`CLOSE_GRACE`].
    Close(CloseCode, String, Input),
    /// Nothing arrived for this long: reset.
    Silent(Duration),
    /// A write made no progress for this long (the app stopped reading): reset.
    Stalled(Duration),
    /// The app sent a close frame: send the reply, then hang up.
    PeerClosed,
    /// The socket is already gone.
    Gone,
}

/// Serves one app connection until it ends, then closes or resets its socket.
async fn session(
    stream: &StreamId,
    hub: &Arc<Hub>,
    mut ws: Ws,
    cfg: AppServerConfig,
    stop: &mut watch::Receiver<bool>,
) {
    let mut consumer = hub.attach();
    let start = Instant::now();
    let timeout = cfg.heartbeat.timeout;
    let mut live = Liveness::new(cfg.heartbeat, start, cfg.heartbeat.interval);
    let mut out = Outbox::new(start);
    // Read after attaching: a state change in between is then also queued as a control frame.
    let state = ToApp::State {
        stream,
        state: hub.state(),
    }
    .to_json();
    out.push_back(Out::Frame(state.into()), start);
    info!("app connected to stream {stream}");

    let mut frames = Vec::new();
    let end = 'session: loop {
        let wakeup = match out.stall_deadline(timeout) {
            Some(stall) => stall.min(live.next_wakeup()),
            None => live.next_wakeup(),
        };
        // Pull from the hub only when everything pulled before is written: the hub holds the
        // backlog, so a slow app costs no memory here.
        let pull = out.idle();
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => {
                let reason = SHUTDOWN_REASON.into();
                break 'session End::Close(CloseCode::Away, reason, Input::Framed);
            }
            () = sleep_until(wakeup) => {
                let now = Instant::now();
                if out.stall_deadline(timeout).is_some_and(|stall| now >= stall) {
                    break 'session End::Stalled(now.saturating_duration_since(out.progress));
                }
                while let Some(due) = live.poll(now) {
                    match due {
                        Due::Ping { seq } => out.push_front(Out::Ping(seq), now),
                        Due::Degraded => debug!("app on stream {stream} is late answering pings"),
                        Due::Dead { last_inbound, .. } => {
                            break 'session End::Silent(now.saturating_duration_since(last_inbound));
                        }
                    }
                }
            }
            io = poll_fn(|cx| out.poll_io(&mut ws, cx)) => match io {
                Io::Drained => {}
                Io::WriteFailed(e) => {
                    info!("app socket for stream {stream} lost: write failed: {e}");
                    break 'session End::Gone;
                }
                Io::Inbound(None) => {
                    info!("app socket for stream {stream} closed");
                    break 'session End::Gone;
                }
                Io::Inbound(Some(Err(e))) => break 'session read_error(stream, cfg.max_frame, e),
                Io::Inbound(Some(Ok(msg))) => {
                    let now = Instant::now();
                    live.on_inbound(now);
                    match msg {
                        Message::Text(text) => on_text(stream, &consumer, text.as_str()),
                        Message::Binary(_) => warn!(
                            "frame from the app on stream {stream} ignored: \
                             binary frames are not part of the app protocol"
                        ),
                        Message::Pong(payload) => on_pong(stream, &mut live, now, &payload),
                        // tungstenite queues the pong itself; raw frames are never read.
                        Message::Ping(_) | Message::Frame(_) => {}
                        Message::Close(frame) => {
                            let code = frame.map(|f| u16::from(f.code));
                            info!(?code, "app closed its socket for stream {stream}");
                            break 'session End::PeerClosed;
                        }
                    }
                }
            },
            pulled = consumer.next(&mut frames), if pull => match pulled {
                Ok(()) => {
                    let now = Instant::now();
                    for frame in frames.drain(..) {
                        out.push_back(Out::Frame(frame), now);
                    }
                }
                Err(Detached::Replaced) => {
                    info!("app socket for stream {stream} replaced by a newer connection");
                    let code = CloseCode::from(CLOSE_REPLACED);
                    break 'session End::Close(code, REPLACED_REASON.into(), Input::Framed);
                }
                Err(Detached::Lagged) => {
                    warn!(
                        "app on stream {stream} left too many control frames unread; \
                         closing its socket (its unacked events wait for the next connection)"
                    );
                    let code = CloseCode::from(CLOSE_LAGGED);
                    break 'session End::Close(code, LAGGED_REASON.into(), Input::Framed);
                }
                Err(Detached::Closed) => {
                    info!("stream {stream} left this sidecar; closing its app socket");
                    break 'session End::Close(CloseCode::Away, REMOVED_REASON.into(), Input::Framed);
                }
            },
        }
    };
    // Release the hub before the (bounded) close: the next consumer does not depend on it.
    drop(consumer);

    match end {
        End::Silent(quiet) => {
            warn!(
                "app socket for stream {stream} reaped: no frame for {:.1}s",
                quiet.as_secs_f64()
            );
            reset(ws);
        }
        End::Stalled(stuck) => {
            warn!(
                "app socket for stream {stream} reaped: no write progress for {:.1}s \
                 (the app stopped reading)",
                stuck.as_secs_f64()
            );
            reset(ws);
        }
        End::Close(code, reason, input) => close(ws, code, reason, input).await,
        End::PeerClosed => {
            // Writes the queued close reply; as the server, tungstenite then ends the session.
            if timeout_at(Instant::now() + CLOSE_GRACE, ws.flush())
                .await
                .is_err()
            {
                reset(ws);
            }
        }
        End::Gone => {}
    }
}

/// A pong carries the sequence number of the ping it answers (8 bytes, big-endian).
fn on_pong(stream: &StreamId, live: &mut Liveness, now: Instant, payload: &[u8]) {
    let seq = <[u8; 8]>::try_from(payload).ok().map(u64::from_be_bytes);
    match live.on_pong(now, seq).changed {
        Some(Health::Active) => debug!("app on stream {stream} answers pings on time again"),
        Some(Health::Degraded) => debug!("app on stream {stream} answers pings slowly"),
        None => {}
    }
}

/// Handles a text frame from the app: an ack, or a warning.
fn on_text(stream: &StreamId, consumer: &Consumer, text: &str) {
    match serde_json::from_str::<FromApp>(text) {
        Ok(FromApp::Ack { id }) => match consumer.ack(&id) {
            Ack::Acked(n) => trace!(acked = n, "ack {}", clip(id.as_str())),
            Ack::Already => debug!(
                "ack {} on stream {stream} was acked before",
                clip(id.as_str())
            ),
            Ack::Unknown => warn!(
                "ack from the app on stream {stream} names unknown event id {}",
                clip(id.as_str())
            ),
        },
        Err(e) => warn!(
            "frame from the app on stream {stream} ignored: {}",
            clip(&e.to_string())
        ),
    }
}

/// What a read error means for the connection.
fn read_error(stream: &StreamId, max_frame: usize, e: WsError) -> End {
    match e {
        WsError::Capacity(e) => {
            warn!("frame from the app on stream {stream} over the {max_frame}-byte limit: {e}");
            let reason = format!("frame over the {max_frame}-byte limit");
            End::Close(CloseCode::Size, reason, Input::Broken)
        }
        // The error text carries the frame's bytes: never logged.
        WsError::Utf8(_) => {
            warn!("text frame from the app on stream {stream} is not valid UTF-8");
            End::Close(
                CloseCode::Invalid,
                "text frames must be UTF-8".into(),
                Input::Broken,
            )
        }
        WsError::Io(_)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            info!("app socket for stream {stream} lost: {e}");
            End::Gone
        }
        WsError::Protocol(e) => {
            warn!("app socket for stream {stream} broke the WebSocket protocol: {e}");
            End::Close(CloseCode::Protocol, "protocol error".into(), Input::Broken)
        }
        e => {
            warn!("app socket for stream {stream} failed: {e}");
            End::Gone
        }
    }
}

/// Whether the app's input can still be read as WebSocket frames after our close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Yes: read up to the app's close reply, then hang up.
    Framed,
    /// No (a read failed part-way through a frame): send FIN and discard input until the app
    /// hangs up, so unread input does not turn our close into a reset that overtakes the frame.
    Broken,
}

/// Sends a close frame and finishes the close handshake; resets the socket when that takes
/// longer than [`CLOSE_GRACE`].
async fn close(mut ws: Ws, code: CloseCode, reason: String, input: Input) {
    let until = Instant::now() + CLOSE_GRACE;
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    match timeout_at(until, ws.send(Message::Close(Some(frame)))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!("close frame not sent: {e}");
            return;
        }
        Err(_) => {
            debug!("the app did not take the close frame within {CLOSE_GRACE:?}");
            reset(ws);
            return;
        }
    }
    let finished = match input {
        // Frames the app sent before it saw our close are dropped; tungstenite ends the stream
        // once the app's close reply arrives.
        Input::Framed => timeout_at(until, async { while let Some(Ok(_)) = ws.next().await {} })
            .await
            .is_ok(),
        Input::Broken => {
            let tcp = ws.get_mut();
            let drained = timeout_at(until, async {
                tcp.shutdown().await?;
                let mut discard = [0u8; 4096];
                while tcp.read(&mut discard).await? > 0 {}
                io::Result::Ok(())
            });
            drained.await.is_ok()
        }
    };
    if !finished {
        debug!("the app did not finish the close handshake within {CLOSE_GRACE:?}");
        reset(ws);
    }
}

/// Drops the socket with a TCP reset: nothing waits on a peer that may be gone.
fn reset(ws: Ws) {
    if let Err(e) = ws.get_ref().set_zero_linger() {
        debug!("SO_LINGER 0 not set: {e}");
    }
    drop(ws);
}

/// A frame waiting to be written.
#[derive(Debug)]
enum Out {
    /// Ready-made JSON text from the hub.
    Frame(Arc<str>),
    /// A heartbeat ping carrying its sequence number.
    Ping(u64),
}

impl Out {
    fn into_message(self) -> Message {
        match self {
            Out::Frame(text) => Message::text(&*text),
            Out::Ping(seq) => Message::Ping(Bytes::copy_from_slice(&seq.to_be_bytes())),
        }
    }
}

/// What [`Outbox::poll_io`] saw.
#[derive(Debug)]
enum Io {
    /// Everything queued was written and flushed.
    Drained,
    /// Writing failed: the socket is gone.
    WriteFailed(WsError),
    /// The next inbound frame, a read error, or the end of the stream.
    Inbound(Option<Result<Message, WsError>>),
}

/// Frames waiting for the app, and the progress of writing them.
#[derive(Debug)]
struct Outbox {
    queue: VecDeque<Out>,
    /// Frames were handed to the socket and not yet flushed.
    unflushed: bool,
    /// The last time the writer got anything through (or went from idle to busy).
    progress: Instant,
}

impl Outbox {
    fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            unflushed: false,
            progress: now,
        }
    }

    /// Nothing queued and nothing unflushed.
    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.unflushed
    }

    fn push_back(&mut self, out: Out, now: Instant) {
        if self.idle() {
            self.progress = now;
        }
        self.queue.push_back(out);
    }

    fn push_front(&mut self, out: Out, now: Instant) {
        if self.idle() {
            self.progress = now;
        }
        self.queue.push_front(out);
    }

    /// When a busy writer that made no progress counts as stalled.
    fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        (!self.idle()).then(|| self.progress + timeout)
    }

    /// Writes what it can, then reads. Ready when the outbox drained, a write failed, or a
    /// frame (or error) arrived; cancel-safe (a frame leaves the queue only when the socket
    /// took it).
    fn poll_io(&mut self, ws: &mut Ws, cx: &mut Context<'_>) -> Poll<Io> {
        while !self.queue.is_empty() {
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    let Some(next) = self.queue.pop_front() else {
                        break;
                    };
                    if let Err(e) = ws.start_send_unpin(next.into_message()) {
                        return Poll::Ready(Io::WriteFailed(e));
                    }
                    self.unflushed = true;
                    self.progress = Instant::now();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e)),
                Poll::Pending => break,
            }
        }
        if self.queue.is_empty() && self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    self.progress = Instant::now();
                    return Poll::Ready(Io::Drained);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e)),
                Poll::Pending => {}
            }
        }
        ws.poll_next_unpin(cx).map(Io::Inbound)
    }
}

/// At most [`LOG_CLIP`] characters of app-supplied text.
fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(LOG_CLIP) {
        Some((at, _)) => format!("{}...", &s[..at]).into(),
        None => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::SocketAddr};

    use serde_json::{Value, value::RawValue};
    use streamkeeper_api::EventId;
    use tokio::{
        io::Interest,
        net::TcpSocket,
        sync::oneshot,
        task::JoinHandle,
        time::{Instant, timeout},
    };
    use tokio_tungstenite::{
        client_async,
        tungstenite::protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        },
    };

    use super::*;

    /// The bound on every wait for the server.
    const WAIT: Duration = Duration::from_secs(3);
    const SLOW_BEAT: HeartbeatPolicy = HeartbeatPolicy {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(35),
    };
    const FAST_BEAT: HeartbeatPolicy = HeartbeatPolicy {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(600),
    };

    struct Hubs(HashMap<StreamId, Arc<Hub>>);

    impl HubDirectory for Hubs {
        fn hub(&self, stream: &StreamId) -> Option<Arc<Hub>> {
            self.0.get(stream).cloned()
        }
    }

    struct Server {
        addr: SocketAddr,
        hub: Arc<Hub>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn shutdown(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            timeout(WAIT + SHUTDOWN_GRACE, self.task)
                .await
                .expect("serve returns within its shutdown bound")
                .expect("serve did not panic")
                .expect("serve returned Ok");
        }
    }

    async fn start(cfg: AppServerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        start_on(listener, cfg)
    }

    fn start_on(listener: TcpListener, cfg: AppServerConfig) -> Server {
        let addr = listener.local_addr().expect("local addr");
        let stream: StreamId = "cc/q".parse().expect("stream id");
        let other: StreamId = "cc/r".parse().expect("stream id");
        let hub = Hub::new(stream.clone(), 10_000, None);
        let hubs = Arc::new(Hubs(HashMap::from([
            (stream, Arc::clone(&hub)),
            (other.clone(), Hub::new(other, 10, None)),
        ])));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, hubs, cfg, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            hub,
            stop: Some(stop),
            task,
        }
    }

    /// A listener whose accepted sockets have a tiny send buffer, so writes stall quickly.
    fn small_buffer_listener() -> TcpListener {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        socket.listen(16).expect("listen")
    }

    fn cfg(heartbeat: HeartbeatPolicy) -> AppServerConfig {
        AppServerConfig {
            max_frame: 1024,
            heartbeat,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    type Client = WebSocketStream<TcpStream>;

    async fn connect(addr: SocketAddr, path: &str) -> Result<Client, WsError> {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let (ws, _) = timeout(WAIT, client_async(format!("ws://{addr}{path}"), tcp))
            .await
            .expect("handshake answered in time")?;
        Ok(ws)
    }

    /// An app on `cc/q` that has checked that the first frame is the stream's state.
    async fn app(addr: SocketAddr) -> Client {
        app_on(addr, "cc/q").await
    }

    async fn app_on(addr: SocketAddr, stream: &str) -> Client {
        let mut ws = connect(addr, &format!("/streams/{stream}"))
            .await
            .expect("handshake accepted");
        let first = recv_json(&mut ws).await;
        assert_eq!(
            first["type"], "state",
            "the first frame is the state: {first}"
        );
        assert_eq!(first["stream"], stream);
        assert_eq!(first["state"], "CONNECTING");
        ws
    }

    /// The next frame other than a ping or pong.
    async fn recv(ws: &mut Client) -> Message {
        loop {
            let msg = timeout(WAIT, ws.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .expect("a valid frame");
            if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                return msg;
            }
        }
    }

    async fn recv_json(ws: &mut Client) -> Value {
        match recv(ws).await {
            Message::Text(text) => serde_json::from_str(text.as_str()).expect("JSON text"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Ids of the next `n` event frames.
    async fn recv_events(ws: &mut Client, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let frame = recv_json(ws).await;
            assert_eq!(frame["type"], "event", "{frame}");
            ids.push(frame["id"].as_str().expect("id is a string").to_owned());
        }
        ids
    }

    async fn recv_close(ws: &mut Client) -> (u16, String) {
        match recv(ws).await {
            Message::Close(Some(frame)) => {
                (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    fn id(n: usize) -> EventId {
        EventId(format!("e{n}"))
    }

    fn ids(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
        range.map(|n| format!("e{n}")).collect()
    }

    fn push(hub: &Hub, n: usize, pad: usize) {
        let data = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(pad));
        let data = RawValue::from_string(data).expect("raw json");
        hub.push_event(&id(n), &data, n as u64);
    }

    async fn ack(ws: &mut Client, n: usize) {
        let frame = format!("{{\"type\":\"ack\",\"id\":\"e{n}\"}}");
        ws.send(Message::text(frame)).await.expect("ack sent");
    }

    async fn acked(hub: &Hub, n: usize) {
        timeout(WAIT, hub.wait_for_ack(|a| a == &id(n)))
            .await
            .expect("the ack reached the hub in time");
    }

    /// A client that completes the handshake by hand and then reads nothing, with a tiny receive
    /// buffer so the server's writes stall.
    async fn raw_app(addr: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut tcp = socket.connect(addr).await.expect("connect");
        let request = "GET /streams/cc/q HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";
        tcp.write_all(request.as_bytes())
            .await
            .expect("request sent");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = timeout(WAIT, tcp.read_u8())
                .await
                .expect("response in time")
                .expect("byte");
            head.push(byte);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tcp
    }

    #[tokio::test]
    async fn the_first_frame_is_the_state_and_events_follow_in_order() {
        let srv = start(cfg(SLOW_BEAT)).await;
        let mut ws = app(srv.addr).await;
        for n in 1..=3 {
            push(&srv.hub, n, 0);
        }
        assert_eq!(recv_events(&mut ws, 3).await, ids(1..=3));
        let stream = srv.hub.stream().clone();
        srv.hub.push_control(&ToApp::State {
            stream: &stream,
            state: streamkeeper_api::StreamState::Active,
        });
        let state = recv_json(&mut ws).await;
        assert_eq!(
            (&state["type"], &state["state"]),
            (&Value::from("state"), &Value::from("ACTIVE"))
        );
        drop(ws);
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn acked_events_are_never_redelivered_and_unacked_ones_are_in_order() {
        let srv = start(cfg(SLOW_BEAT)).await;
        for n in 1..=4 {
            push(&srv.hub, n, 0);
        }
        let mut first = app(srv.addr).await;
        assert_eq!(recv_events(&mut first, 4).await, ids(1..=4));
        ack(&mut first, 2).await;
        acked(&srv.hub, 2).await;
        // The app hangs up cleanly; the server answers the close and ends the session.
        first.close(None).await.expect("close sent");
        let rest = timeout(WAIT, async { while first.next().await.is_some() {} }).await;
        assert!(rest.is_ok(), "the server finished the close handshake");

        let mut second = app(srv.addr).await;
        assert_eq!(recv_events(&mut second, 2).await, ids(3..=4));
        push(&srv.hub, 5, 0);
        assert_eq!(recv_events(&mut second, 1).await, ids(5..=5));
        drop(second);
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn a_second_connection_replaces_the_first_with_close_4000() {
        let srv = start(cfg(SLOW_BEAT)).await;
        let mut first = app(srv.addr).await;
        let mut second = app(srv.addr).await;
        assert_eq!(
            recv_close(&mut first).await,
            (CLOSE_REPLACED, REPLACED_REASON.to_owned())
        );
        push(&srv.hub, 1, 0);
        assert_eq!(recv_events(&mut second, 1).await, ids(1..=1));
        drop((first, second));
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused_with_503_until_one_closes() {
        let srv = start(AppServerConfig {
            max_connections: 2,
            ..cfg(SLOW_BEAT)
        })
        .await;
        let first = app(srv.addr).await;
        let _second = app_on(srv.addr, "cc/r").await;
        match connect(srv.addr, "/streams/cc/q").await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert!(resp.headers().contains_key("retry-after"));
                let body =
                    String::from_utf8(resp.body().clone().expect("a body")).expect("utf-8 body");
                assert!(body.contains("at most 2"), "{body}");
            }
            Err(e) => panic!("expected a 503, got {e}"),
            Ok(_) => panic!("expected a 503, the upgrade was accepted"),
        }
        // A slot frees when a connection ends: a new app gets in (polled, bounded).
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match connect(srv.addr, "/streams/cc/q").await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn an_unknown_stream_or_a_bad_path_is_refused_with_404() {
        let srv = start(cfg(SLOW_BEAT)).await;
        for (path, named) in [
            ("/streams/cc/nope", "cc/nope"),
            ("/elsewhere", "/elsewhere"),
            ("/streams/cc/Q", "/streams/cc/Q"),
        ] {
            match connect(srv.addr, path).await {
                Err(WsError::Http(resp)) => {
                    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
                    let body = String::from_utf8(resp.body().clone().expect("a body"))
                        .expect("utf-8 body");
                    assert!(body.contains(named), "{path}: {body}");
                    assert_eq!(body.lines().count(), 1, "one line: {body}");
                }
                Err(e) => panic!("{path}: expected a 404, got {e}"),
                Ok(_) => panic!("{path}: expected a 404, the upgrade was accepted"),
            }
        }
        // The server still serves the stream it knows.
        drop(app(srv.addr).await);
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_json_and_binary_frames_keep_the_connection() {
        let srv = start(cfg(SLOW_BEAT)).await;
        let mut ws = app(srv.addr).await;
        push(&srv.hub, 1, 0);
        assert_eq!(recv_events(&mut ws, 1).await, ids(1..=1));
        for junk in [
            "not json",
            r#"{"type":"nack","id":"e1"}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","id":"e99"}"#,
        ] {
            ws.send(Message::text(junk)).await.expect("junk sent");
        }
        ws.send(Message::binary(vec![1u8, 2, 3]))
            .await
            .expect("binary sent");
        ack(&mut ws, 1).await;
        acked(&srv.hub, 1).await;
        assert_eq!(srv.hub.pending_events(), 0);
        push(&srv.hub, 2, 0);
        assert_eq!(recv_events(&mut ws, 1).await, ids(2..=2));
        drop(ws);
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_with_1009_and_the_server_keeps_serving() {
        let srv = start(cfg(SLOW_BEAT)).await;
        let mut ws = app(srv.addr).await;
        ws.send(Message::text("x".repeat(2048)))
            .await
            .expect("big frame sent");
        let (code, reason) = recv_close(&mut ws).await;
        assert_eq!(code, 1009, "{reason}");
        assert!(reason.contains("1024"), "{reason}");
        drop(ws);

        let mut next = app(srv.addr).await;
        push(&srv.hub, 1, 0);
        assert_eq!(recv_events(&mut next, 1).await, ids(1..=1));
        drop(next);
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn non_utf8_text_closes_with_1007() {
        let srv = start(cfg(SLOW_BEAT)).await;
        let mut ws = app(srv.addr).await;
        let bad = Frame::message(vec![0xffu8, 0xfe, 0x22], OpCode::Data(Data::Text), true);
        ws.send(Message::Frame(bad)).await.expect("frame sent");
        assert_eq!(recv_close(&mut ws).await.0, 1007);
        drop(ws);
        srv.shutdown().await;
    }

    /// Waits for the reset of `tcp` without reading it; returns the error the socket holds.
    async fn reset_seen(tcp: &TcpStream) -> io::ErrorKind {
        let ready = timeout(WAIT, tcp.ready(Interest::ERROR))
            .await
            .expect("the socket was reset in time")
            .expect("readiness");
        assert!(ready.is_error(), "{ready:?}");
        tcp.take_error()
            .expect("SO_ERROR")
            .map(|e| e.kind())
            .unwrap_or(io::ErrorKind::Other)
    }

    #[tokio::test]
    async fn a_silent_app_that_stopped_reading_is_reset_and_its_events_go_to_the_next_app() {
        let srv = start_on(small_buffer_listener(), cfg(FAST_BEAT));
        let raw = raw_app(srv.addr).await;
        let since = Instant::now();
        // About 1 MiB: far more than both socket buffers, so the server's writes stall.
        for n in 1..=64 {
            push(&srv.hub, n, 16 * 1024);
        }
        assert_eq!(reset_seen(&raw).await, io::ErrorKind::ConnectionReset);
        let took = since.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "reaped after {took:?}, before the timeout"
        );
        assert!(took <= FAST_BEAT.timeout + WAIT, "reaped after {took:?}");

        let mut next = app(srv.addr).await;
        assert_eq!(recv_events(&mut next, 64).await, ids(1..=64));
        drop((raw, next));
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn an_app_that_sends_but_never_reads_is_reset_when_writes_stall() {
        let srv = start_on(small_buffer_listener(), cfg(FAST_BEAT));
        let mut raw = raw_app(srv.addr).await;
        let since = Instant::now();
        for n in 1..=64 {
            push(&srv.hub, n, 16 * 1024);
        }
        // Masked, empty pings every 100 ms keep the app "alive" for the liveness engine.
        let ping = [0x89u8, 0x80, 1, 2, 3, 4];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let seen = timeout(WAIT, async {
            loop {
                tokio::select! {
                    ready = raw.ready(Interest::ERROR) => {
                        ready.expect("readiness");
                        return raw.take_error().expect("SO_ERROR").map(|e| e.kind());
                    }
                    _ = tick.tick() => {
                        if let Err(e) = raw.write_all(&ping).await {
                            return Some(e.kind());
                        }
                    }
                }
            }
        })
        .await
        .expect("the socket was reset in time");
        assert!(
            matches!(
                seen,
                Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
            ),
            "{seen:?}"
        );
        let took = since.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "reaped after {took:?}, before the timeout"
        );

        let mut next = app(srv.addr).await;
        assert_eq!(recv_events(&mut next, 64).await, ids(1..=64));
        drop((raw, next));
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_every_app_with_1001_and_stops_accepting() {
        let srv = start(cfg(SLOW_BEAT)).await;
        let addr = srv.addr;
        let mut apps = [app_on(addr, "cc/q").await, app_on(addr, "cc/r").await];
        let stop = tokio::spawn(srv.shutdown());
        for ws in &mut apps {
            assert_eq!(recv_close(ws).await, (1001, SHUTDOWN_REASON.to_owned()));
            // Polling on sends the close reply; the server hangs up once it has it.
            let rest = timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
            assert!(rest.is_ok(), "the server hung up after the close handshake");
        }
        timeout(WAIT, stop)
            .await
            .expect("serve returned in time")
            .expect("no panic");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[test]
    fn defaults_are_one_mebibyte_and_15s_35s() {
        let cfg = AppServerConfig::default();
        assert_eq!(cfg.max_frame, 1 << 20);
        assert_eq!(cfg.heartbeat, SLOW_BEAT);
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("e1"), "e1");
        let long = "é".repeat(LOG_CLIP + 5);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), LOG_CLIP + 3);
    }
}
