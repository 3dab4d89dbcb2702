//! A memory-lean WebSocket client for upstream platform sockets.
//!
//! An idle [`WsClient`] holds no buffer: reads land in a per-thread scratch buffer and only the
//! bytes of an incomplete frame are copied into the connection's own `Vec`, which is freed once
//! the frame is consumed. Outbound frames wait in a `Vec` that is released once drained.

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
};
use tokio_rustls::TlsConnector;
use url::Url;

use super::{
    WsError,
    frame::{self, Fragments, Frame, MAX_CONTROL_PAYLOAD, OpCode},
    handshake,
};
use crate::net::{self, ProxyTarget, SocketOptions, Transport};

/// Size of the per-thread read buffer (one TLS record's worth of plaintext).
const SCRATCH_LEN: usize = 16 * 1024;
/// Partial-input capacity above which an over-sized buffer is shrunk after consuming from it.
const PARTIAL_SHRINK_ABOVE: usize = 4 * 1024;

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
    /// The largest frame payload or reassembled message accepted (default 1 MiB).
    pub max_frame: usize,
    /// The TLS connector for `wss` (build it once per stream with [`net::tls_connector`]).
    /// `None` builds one from the system roots on every connect, which is slow.
    pub tls: Option<Arc<TlsConnector>>,
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
const FAILED: u8 = 4;
const UNFLUSHED: u8 = 8;

/// A WebSocket client connection to a platform (RFC 6455, client side).
///
/// [`recv`](Self::recv) is cancel-safe and also writes queued frames while it waits, so the
/// `queue_*` methods never block and a peer that stops reading never stalls the receive loop.
#[derive(Debug)]
pub struct WsClient {
    transport: Transport,
    /// Bytes of an incomplete frame (empty, without capacity, when idle).
    partial: Vec<u8>,
    /// Encoded outbound frames; `out[out_pos..]` is still to be written.
    out: Vec<u8>,
    out_pos: usize,
    /// A fragmented message being reassembled (rare, so boxed).
    fragments: Option<Box<Fragments>>,
    max_frame: usize,
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
        let connector = match &opts.tls {
            Some(connector) => Arc::clone(connector),
            None => Arc::new(net::tls_connector(None)?),
        };
        match tokio::time::timeout_at(deadline, net::tls_handshake(&connector, host, tcp)).await {
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
        let mut partial = leftover;
        partial.shrink_to_fit();
        Self {
            transport,
            partial,
            out: Vec::new(),
            out_pos: 0,
            fragments: None,
            max_frame,
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
    /// After a close was received, after an error, or at EOF it returns [`WsError::Closed`]; a
    /// protocol violation is [`WsError::Protocol`] once, then the client is closed.
    pub async fn recv(&mut self) -> Result<Frame, WsError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Writes every queued frame. Cancel-safe (progress is kept in `self`); a peer that stops
    /// reading stalls it, so bound it with a timeout.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        if self.flags & FAILED != 0 {
            return Err(WsError::Closed);
        }
        poll_fn(|cx| self.poll_write_out(cx)).await.map_err(|err| {
            self.fail();
            WsError::Io(err)
        })
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
        (self.partial.capacity(), self.out.capacity())
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
        } else if self.out_pos > PARTIAL_SHRINK_ABOVE && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    fn fail(&mut self) {
        self.flags |= FAILED;
        self.partial = Vec::new();
        self.fragments = None;
        self.out = Vec::new();
        self.out_pos = 0;
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
        if self.flags & FAILED != 0 {
            return Poll::Ready(Err(WsError::Closed));
        }
        if self.flags & CLOSE_RECEIVED != 0 {
            // Deliver the close echo, then report the end.
            return match ready!(self.poll_write_out(cx)) {
                Ok(()) => Poll::Ready(Err(WsError::Closed)),
                Err(err) => {
                    self.fail();
                    Poll::Ready(Err(WsError::Io(err)))
                }
            };
        }
        match self.poll_recv_inner(cx) {
            Poll::Ready(Ok(frame)) => Poll::Ready(Ok(self.on_frame(frame))),
            Poll::Ready(Err(err)) => {
                self.fail();
                Poll::Ready(Err(err))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_recv_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, WsError>> {
        loop {
            if let Some(frame) = self.decode_partial()? {
                return Poll::Ready(Ok(frame));
            }
            // Write while waiting; Pending here just registers for writability.
            if let Poll::Ready(Err(err)) = self.poll_write_out(cx) {
                return Poll::Ready(Err(err.into()));
            }
            let step = SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => self.poll_read_into(cx, &mut scratch),
                // Only reachable by re-entrancy; fall back to a small stack buffer.
                Err(_) => self.poll_read_into(cx, &mut [0u8; 2048]),
            });
            match ready!(step)? {
                Some(frame) => return Poll::Ready(Ok(frame)),
                None => continue,
            }
        }
    }

    /// Reads once into `scratch` and decodes from it directly, keeping only the bytes of an
    /// incomplete frame (or of frames after the one returned) in `partial`.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
    ) -> Poll<Result<Option<Frame>, WsError>> {
        let mut buf = ReadBuf::new(scratch);
        ready!(Pin::new(&mut self.transport).poll_read(cx, &mut buf)).map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof && self.at_frame_boundary() {
                // rustls reports a peer that closed TCP without close_notify this way.
                WsError::Closed
            } else {
                WsError::Io(err)
            }
        })?;
        let data = buf.filled();
        if data.is_empty() {
            return Poll::Ready(Err(if self.at_frame_boundary() {
                WsError::Closed
            } else {
                WsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                ))
            }));
        }
        if !self.partial.is_empty() {
            self.partial.extend_from_slice(data);
            return Poll::Ready(Ok(None));
        }
        let mut offset = 0;
        loop {
            match frame::decode(&data[offset..], self.max_frame, &mut self.fragments)? {
                Some((Some(frame), used)) => {
                    offset += used;
                    self.stash(&data[offset..]);
                    return Poll::Ready(Ok(Some(frame)));
                }
                Some((None, used)) => offset += used,
                None => {
                    self.stash(&data[offset..]);
                    return Poll::Ready(Ok(None));
                }
            }
        }
    }

    fn at_frame_boundary(&self) -> bool {
        self.partial.is_empty() && self.fragments.is_none()
    }

    /// Keeps unconsumed input, reserving exactly the incomplete frame's size when known.
    fn stash(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        if self.partial.is_empty()
            && let Ok(Some(header)) = frame::parse_header(rest)
        {
            // decode() already checked the size against max_frame.
            let total = usize::try_from(header.frame_len()).unwrap_or(usize::MAX);
            self.partial.reserve_exact(
                total
                    .min(self.max_frame + frame::MAX_HEADER_LEN)
                    .max(rest.len()),
            );
        }
        self.partial.extend_from_slice(rest);
    }

    /// Decodes the next complete frame from `partial`, if it holds one, and drops the bytes
    /// it used.
    fn decode_partial(&mut self) -> Result<Option<Frame>, WsError> {
        if self.partial.is_empty() {
            return Ok(None);
        }
        let mut offset = 0;
        let result = loop {
            match frame::decode(&self.partial[offset..], self.max_frame, &mut self.fragments) {
                Ok(Some((Some(frame), used))) => {
                    offset += used;
                    break Ok(Some(frame));
                }
                Ok(Some((None, used))) => offset += used,
                Ok(None) => break Ok(None),
                Err(err) => break Err(err.into()),
            }
        };
        self.consume_partial(offset);
        result
    }

    fn consume_partial(&mut self, used: usize) {
        if used == 0 {
            return;
        }
        if used >= self.partial.len() {
            self.partial = Vec::new();
            return;
        }
        self.partial.drain(..used);
        let needed = match frame::parse_header(&self.partial) {
            Ok(Some(header)) => usize::try_from(header.frame_len()).unwrap_or(usize::MAX),
            _ => self.partial.len(),
        }
        .clamp(self.partial.len(), self.max_frame + frame::MAX_HEADER_LEN);
        if self.partial.capacity() > PARTIAL_SHRINK_ABOVE && self.partial.capacity() > needed * 2 {
            self.partial.shrink_to(needed);
        }
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
                self.partial = Vec::new();
                self.fragments = None;
            }
            Frame::Text(_) | Frame::Binary(_) | Frame::Pong(_) => {}
        }
        frame
    }
}
