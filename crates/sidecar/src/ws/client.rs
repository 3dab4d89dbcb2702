//! A memory-lean WebSocket client for upstream platform sockets.
//!
//! An idle [`WsClient`] holds no buffer: reads land in a per-thread scratch buffer and only the
//! bytes of an incomplete frame are copied into the connection's own `Vec` (see `inbound.rs`),
//! which is freed once the frame is consumed. Outbound frames wait in a `Vec` that is released
//! once drained.
//!
//! When the server breaks the protocol the client fails the connection as RFC 6455 §7.1.7
//! says: the frames queued before, then a close frame with the error's code (1002, 1007,
//! 1009), are still written by [`WsClient::recv`], [`WsClient::flush`] or [`WsClient::close`];
//! nothing more is read.

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead as _, AsyncWrite as _, ReadBuf},
    net::TcpStream,
    time::Instant,
};
use url::Url;

use super::{
    WsError,
    frame::{self, Frame, MAX_CONTROL_PAYLOAD, OpCode},
    handshake,
    inbound::Inbound,
};
use crate::net::{self, ProxyTarget, SocketOptions, Transport};

/// Size of the per-thread read buffer (one TLS record's worth of plaintext).
const SCRATCH_LEN: usize = 16 * 1024;
/// Written-out space above which the output buffer is compacted before appending.
const OUT_COMPACT_ABOVE: usize = 4 * 1024;

thread_local! {
    /// Where reads land; shared by every connection polled on this thread.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Where the proxy for a connection comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the process environment (see
    /// [`net::proxy_for`]).
    #[default]
    FromEnv,
    /// Always connect directly.
    Direct,
    /// Always tunnel through this proxy.
    Via(ProxyTarget),
}

/// How to connect: socket options, limits, TLS, proxy and the handshake bound.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Options of the TCP socket (keepalive, user timeout, connect timeout).
    pub socket: SocketOptions,
    /// The largest frame payload or reassembled message accepted (default 1 MiB; at most
    /// 4 GiB - 1).
    pub max_frame: usize,
    /// The TLS config for `wss` (build it once and share it: [`net::socket_tls_config`]).
    /// `None` builds one from the system roots on every connect, which is slow.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on the TLS handshake plus the WebSocket upgrade (default 10 s).
    pub handshake_timeout: Duration,
    /// Proxy selection (default: from the environment).
    pub proxy: ProxyMode,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            socket: SocketOptions::default(),
            max_frame: 1 << 20,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            proxy: ProxyMode::FromEnv,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("socket", &self.socket)
            .field("max_frame", &self.max_frame)
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// Connection flags (bits of `WsClient::flags`).
const CLOSE_SENT: u8 = 1;
const CLOSE_RECEIVED: u8 = 2;
/// Nothing more is read: the server broke the protocol, or the socket failed.
const FAILED: u8 = 4;
const UNFLUSHED: u8 = 8;
/// The socket failed (or the peer ended it): nothing more can be written either.
const BROKEN: u8 = 16;

/// A WebSocket client connection to a platform (RFC 6455, client side).
///
/// [`recv`](Self::recv) is cancel-safe and also writes queued frames while it waits, so the
/// `queue_*` methods never block and a peer that stops reading never stalls the receive loop.
#[derive(Debug)]
pub struct WsClient {
    transport: Transport,
    /// Input kept between reads and the decoder's state (no buffer when idle).
    inbound: Inbound,
    /// Encoded outbound frames; `out[out_pos..]` is still to be written.
    out: Vec<u8>,
    out_pos: usize,
    flags: u8,
}

/// Connects to `url` (`ws` or `wss`), through a proxy when one applies, and performs the
/// upgrade with the extra request `headers` (e.g. `Authorization`, `Last-Event-ID`).
pub async fn connect(
    url: &Url,
    headers: &[(&str, String)],
    opts: &ConnectOptions,
) -> Result<WsClient, WsError> {
    let tls = match url.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(WsError::Handshake(format!(
                "unsupported URL scheme {other:?} (want ws or wss)"
            )));
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| WsError::Handshake("URL has no host".into()))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| WsError::Handshake("URL has no port".into()))?;
    let proxy = match &opts.proxy {
        ProxyMode::FromEnv => net::proxy_for(url, &|var| std::env::var(var).ok())?,
        ProxyMode::Direct => None,
        ProxyMode::Via(proxy) => Some(proxy.clone()),
    };
    let tcp = match &proxy {
        Some(proxy) => net::connect_via_proxy(proxy, host, port, &opts.socket).await?,
        None => net::connect_tcp(host, port, &opts.socket).await?,
    };
    let deadline = tokio::time::Instant::now() + opts.handshake_timeout;
    let timed_out = || {
        WsError::Handshake(format!(
            "no upgrade from {host}:{port} within {:?}",
            opts.handshake_timeout
        ))
    };
    let mut transport = if tls {
        let config = match &opts.tls {
            Some(config) => Arc::clone(config),
            None => net::socket_tls_config(None)?,
        };
        match tokio::time::timeout_at(deadline, net::tls_handshake(&config, host, tcp)).await {
            Ok(transport) => transport?,
            Err(_) => return Err(timed_out()),
        }
    } else {
        Transport::Plain(tcp)
    };
    match tokio::time::timeout_at(
        deadline,
        handshake::client_handshake(&mut transport, url, headers),
    )
    .await
    {
        Ok(Ok(leftover)) => Ok(WsClient::new(transport, leftover, opts.max_frame)),
        Ok(Err(err)) => Err(err),
        Err(_) => {
            transport.reset();
            Err(timed_out())
        }
    }
}

impl WsClient {
    fn new(transport: Transport, leftover: Vec<u8>, max_frame: usize) -> Self {
        Self {
            transport,
            inbound: Inbound::new(max_frame, leftover),
            out: Vec::new(),
            out_pos: 0,
            flags: 0,
        }
    }

    /// Connects; see [`connect`].
    pub async fn connect(
        url: &Url,
        headers: &[(&str, String)],
        opts: &ConnectOptions,
    ) -> Result<Self, WsError> {
        connect(url, headers, opts).await
    }

    /// Receives the next frame, writing queued frames while it waits.
    ///
    /// Cancel-safe: every byte read is kept in `self` before this returns `Pending`, so it can
    /// sit in `tokio::select!` beside timers. A server ping is answered (a pong is queued) and
    /// still returned, since it proves the peer alive; a server close is echoed and returned.
    /// A protocol violation is [`WsError::Protocol`] once: the client then fails the connection
    /// with a close frame of the error's code, queued after the frames already queued. After a
    /// close was received or sent on failure, it writes what is queued and then returns
    /// [`WsError::Closed`]; after a socket error or at EOF it returns [`WsError::Closed`].
    pub async fn recv(&mut self) -> Result<Frame, WsError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Writes every queued frame (after a protocol violation too: the frames queued before it
    /// and the close frame that fails the connection). Cancel-safe (progress is kept in
    /// `self`); a peer that stops reading stalls it, so bound it with a timeout, or use
    /// [`close`](Self::close). [`WsError::Closed`] once the socket failed.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        if self.flags & BROKEN != 0 {
            return Err(WsError::Closed);
        }
        poll_fn(|cx| self.poll_write_out(cx)).await.map_err(|err| {
            self.fail_io();
            WsError::Io(err)
        })
    }

    /// Ends the connection politely, never taking longer than `within`: queues a close frame
    /// with `code` and `reason` (see [`queue_close`](Self::queue_close); when a close was
    /// queued already, by the caller, as the echo of the server's or on a protocol violation,
    /// that one stands), writes everything queued, then waits for the server to close TCP
    /// (RFC 6455 §7.1.1), discarding what it still sends. A server that does not finish in
    /// time, or a failed socket, is reset (RST), so a dead peer never holds it longer.
    pub async fn close(mut self, code: u16, reason: &str, within: Duration) {
        self.queue_close(code, reason);
        let deadline = Instant::now() + within;
        if self.flags & BROKEN == 0
            && let Ok(Ok(())) = tokio::time::timeout_at(deadline, self.finish()).await
        {
            // The server closed first: a plain close sends our FIN after everything written.
            return;
        }
        self.transport.reset();
    }

    /// Queues a text frame (written by the next `recv` or `flush`). Ignored once a close was
    /// sent or the connection failed.
    pub fn queue_text(&mut self, text: &str) {
        self.queue(OpCode::Text, text.as_bytes());
    }

    /// Queues a binary frame.
    pub fn queue_binary(&mut self, data: &[u8]) {
        self.queue(OpCode::Binary, data);
    }

    /// Queues a ping; the payload is cut to 125 bytes.
    pub fn queue_ping(&mut self, payload: &[u8]) {
        self.queue(
            OpCode::Ping,
            &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
        );
    }

    /// Queues a close frame (the reason is cut to 123 bytes); nothing more is sent after it.
    /// A code that may not appear on the wire (1005, 1006, 1015, out of range) is sent as a
    /// close without a code.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        if !self.may_send() {
            return;
        }
        self.prepare_out();
        if frame::close_code_allowed(code) {
            frame::encode_close(code, reason, &mut self.out);
        } else {
            frame::encode_frame(OpCode::Close, true, &[], &mut self.out);
        }
        self.flags |= CLOSE_SENT;
    }

    /// Outbound bytes not yet handed to the socket (or TLS layer).
    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Whether a close frame was sent or received.
    pub fn is_closing(&self) -> bool {
        self.flags & (CLOSE_SENT | CLOSE_RECEIVED) != 0
    }

    /// Abortive close (RST): how a dead or unwanted connection is reaped.
    pub fn reset(self) {
        self.transport.reset();
    }

    /// The local address of the TCP socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.transport.tcp().local_addr()
    }

    /// The peer address of the TCP socket (the proxy when tunnelled).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.transport.tcp().peer_addr()
    }

    /// The TCP socket (e.g. to read socket options with `socket2::SockRef`).
    pub fn tcp(&self) -> &TcpStream {
        self.transport.tcp()
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.transport.is_tls()
    }

    /// Capacities of the input and output buffers (tests check that idle holds none).
    #[cfg(test)]
    pub(super) fn buffer_capacities(&self) -> (usize, usize) {
        (self.inbound.capacities().0, self.out.capacity())
    }

    fn may_send(&self) -> bool {
        self.flags & (CLOSE_SENT | FAILED) == 0
    }

    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        if !self.may_send() {
            tracing::debug!(?opcode, "frame dropped: connection closing");
            return;
        }
        self.prepare_out();
        frame::encode_frame(opcode, true, payload, &mut self.out);
    }

    /// Reclaims written space before appending.
    fn prepare_out(&mut self) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > OUT_COMPACT_ABOVE && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// The socket failed or the peer ended it: nothing more is read or written.
    fn fail_io(&mut self) {
        self.flags |= FAILED | BROKEN;
        self.inbound.clear();
        self.out = Vec::new();
        self.out_pos = 0;
    }

    /// The server broke the protocol: read no more, and fail the connection with a close
    /// frame of the error's `code` after what is queued (RFC 6455 §7.1.7).
    fn fail_protocol(&mut self, code: u16, reason: &str) {
        self.queue_close(code, reason);
        self.flags |= FAILED;
        self.inbound.clear();
    }

    /// Writes what is queued, then reads (and drops) until the server closes TCP.
    async fn finish(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await?;
        poll_fn(|cx| {
            SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => self.poll_drain(cx, &mut scratch),
                Err(_) => self.poll_drain(cx, &mut [0u8; 2048]),
            })
        })
        .await
    }

    /// Reads until EOF, discarding the bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>, scratch: &mut [u8]) -> Poll<io::Result<()>> {
        loop {
            let mut buf = ReadBuf::new(scratch);
            match ready!(Pin::new(&mut self.transport).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                // rustls: the peer closed TCP without close_notify; it closed all the same.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Writes `out` until it is empty or the socket would block, then flushes the transport.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n =
                ready!(Pin::new(&mut self.transport).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
            self.flags |= UNFLUSHED;
        }
        // Drained: release the buffer, so an idle connection holds none.
        self.out = Vec::new();
        self.out_pos = 0;
        if self.flags & UNFLUSHED != 0 {
            // TLS keeps records in rustls until flushed; for TCP this is a no-op.
            ready!(Pin::new(&mut self.transport).poll_flush(cx))?;
            self.flags &= !UNFLUSHED;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, WsError>> {
        if self.flags & BROKEN != 0 {
            return Poll::Ready(Err(WsError::Closed));
        }
        if self.flags & (CLOSE_RECEIVED | FAILED) != 0 {
            // Deliver what is queued (the close echo, or the close that failed the connection),
            // then report the end.
            return match ready!(self.poll_write_out(cx)) {
                Ok(()) => Poll::Ready(Err(WsError::Closed)),
                Err(err) => {
                    self.fail_io();
                    Poll::Ready(Err(WsError::Io(err)))
                }
            };
        }
        match self.poll_recv_inner(cx) {
            Poll::Ready(Ok(frame)) => Poll::Ready(Ok(self.on_frame(frame))),
            Poll::Ready(Err(err)) => {
                match &err {
                    WsError::Protocol { code, reason } => self.fail_protocol(*code, reason),
                    _ => self.fail_io(),
                }
                Poll::Ready(Err(err))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_recv_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, WsError>> {
        if let Some(frame) = self.inbound.next_buffered()? {
            return Poll::Ready(Ok(frame));
        }
        loop {
            // Write while waiting; Pending here just registers for writability.
            if let Poll::Ready(Err(err)) = self.poll_write_out(cx) {
                return Poll::Ready(Err(err.into()));
            }
            let step = SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => self.poll_read_into(cx, &mut scratch),
                // Only reachable by re-entrancy; fall back to a small stack buffer.
                Err(_) => self.poll_read_into(cx, &mut [0u8; 2048]),
            });
            // None: the read completed no frame, so nothing complete is buffered either.
            if let Some(frame) = ready!(step)? {
                return Poll::Ready(Ok(frame));
            }
        }
    }

    /// Reads once into `scratch` and decodes from it directly, keeping only the bytes of an
    /// incomplete frame (or of frames after the one returned) in `inbound`.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
    ) -> Poll<Result<Option<Frame>, WsError>> {
        let mut buf = ReadBuf::new(scratch);
        ready!(Pin::new(&mut self.transport).poll_read(cx, &mut buf)).map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof && self.inbound.at_frame_boundary() {
                // rustls reports a peer that closed TCP without close_notify this way.
                WsError::Closed
            } else {
                WsError::Io(err)
            }
        })?;
        let data = buf.filled();
        if data.is_empty() {
            return Poll::Ready(Err(if self.inbound.at_frame_boundary() {
                WsError::Closed
            } else {
                WsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                ))
            }));
        }
        Poll::Ready(Ok(self.inbound.take_read(data)?))
    }

    /// Answers pings and closes before handing the frame to the caller.
    fn on_frame(&mut self, frame: Frame) -> Frame {
        match &frame {
            Frame::Ping(payload) => {
                if self.may_send() {
                    self.prepare_out();
                    frame::encode_frame(OpCode::Pong, true, payload, &mut self.out);
                }
            }
            Frame::Close(close) => {
                if self.may_send() {
                    self.prepare_out();
                    match close {
                        Some((code, _)) => frame::encode_close(*code, "", &mut self.out),
                        None => frame::encode_frame(OpCode::Close, true, &[], &mut self.out),
                    }
                    self.flags |= CLOSE_SENT;
                }
                self.flags |= CLOSE_RECEIVED;
                self.inbound.clear();
            }
            Frame::Text(_) | Frame::Binary(_) | Frame::Pong(_) => {}
        }
        frame
    }
}
