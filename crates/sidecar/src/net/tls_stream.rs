//! [`TlsStream`]: TLS over TCP on rustls's unbuffered API, holding no buffer while idle.
//!
//! tokio-rustls drives rustls's buffered `ClientConnection`, whose receive buffer is resized
//! to 4 KiB before every read and kept at that size while the connection waits: measured with
//! the sidecar bench, 4 KiB of every idle `wss` stream's heap. Here ciphertext is read into a
//! per-thread buffer shared by every connection polled on the thread, and a connection keeps
//! only what is left over: the bytes of an incomplete record, plaintext its reader had no room
//! for, records not yet written. Each is freed once drained, so an idle connection holds none.

use std::{
    cell::RefCell,
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use rustls::{
    ClientConfig,
    client::UnbufferedClientConnection,
    unbuffered::{
        AppDataRecord, ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
        UnbufferedStatus,
    },
};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The per-thread read buffer: the largest TLS record (16 KiB of payload, 256 B of expansion,
/// a 5-byte header) fits, so a record read at once is decrypted without being copied.
const SCRATCH_LEN: usize = 16 * 1024 + 256 + 5;
/// How much a connection's own input grows by per read while it holds an incomplete record.
const GROW_BY: usize = 4096;
/// Plaintext encrypted per write call (one record's worth).
const MAX_WRITE: usize = 16 * 1024;
/// A record's bytes beyond its plaintext with the ring provider's AEAD suites (header, nonce,
/// tag, content type: 29 at most), rounded up; a larger need is asked for and retried.
const RECORD_OVERHEAD: usize = 64;
/// Encrypted bytes waiting for the socket above which a write first waits for them to drain.
const HIGH_WATER: usize = 64 * 1024;

thread_local! {
    /// Where ciphertext is read; shared by every connection polled on this thread. Not the
    /// WebSocket client's per-thread buffer: that one receives the plaintext decrypted here.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// A TLS client connection over TCP (rustls, unbuffered).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    /// What the connection holds between calls; none while idle. Boxed: with it inline the
    /// stream (rustls's connection alone is 976 bytes) would take jemalloc's 1,280-byte class
    /// rather than the 1 KiB one, 256 bytes more for every idle `wss` stream.
    held: Option<Box<Held>>,
}

/// A connection's buffers and close flags: all empty and unset while it is idle.
#[derive(Default)]
struct Held {
    /// Ciphertext received and not yet processed: an incomplete record.
    incoming: Vec<u8>,
    /// Plaintext decrypted and not yet read; `plain[plain_pos..]` is still to be read.
    plain: Vec<u8>,
    plain_pos: usize,
    /// TLS records for the peer; `outgoing[out_pos..]` is still to be written.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify: reads return end of stream.
    peer_closed: bool,
    /// Our close_notify is queued: nothing more is encrypted.
    closing: bool,
}

impl Held {
    fn idle(&self) -> bool {
        self.incoming.is_empty()
            && self.plain_pos == self.plain.len()
            && self.out_pos == self.outgoing.len()
            && !self.peer_closed
            && !self.closing
    }
}

/// The connection while a call works on it: its socket, its TLS state and what it holds.
struct Io<'a> {
    tcp: &'a mut TcpStream,
    conn: &'a mut UnbufferedClientConnection,
    held: &'a mut Held,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.held.as_deref();
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("incoming", &held.map_or(0, |h| h.incoming.len()))
            .field("plain", &held.map_or(0, |h| h.plain.len() - h.plain_pos))
            .field(
                "outgoing",
                &held.map_or(0, |h| h.outgoing.len() - h.out_pos),
            )
            .field("peer_closed", &held.is_some_and(|h| h.peer_closed))
            .finish_non_exhaustive()
    }
}

/// What a pass over the received records left the connection waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// More bytes from the peer (the handshake is not done, or no complete record is left).
    ForInput,
    /// Nothing: the handshake is done and no complete record is left; data may be written.
    Established,
    /// The peer closed its side (close_notify).
    PeerClosed,
}

/// Plaintext to encrypt, or the close_notify to send, once the connection allows writing.
#[derive(Clone, Copy)]
enum Job<'a> {
    None,
    Encrypt(&'a [u8]),
    CloseNotify,
}

impl TlsStream {
    /// Runs the handshake with `name` over `tcp`. A refused certificate is an
    /// `io::ErrorKind::InvalidData` error wrapping the `rustls::Error` (as tokio-rustls
    /// reports it), so [`super::certificate_problem`] can say what was wrong.
    pub async fn connect(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut stream = Self {
            tcp,
            conn,
            held: None,
        };
        std::future::poll_fn(|cx| stream.with_io(|io| io.poll_handshake(cx))).await?;
        Ok(stream)
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TCP socket, dropping the TLS state (for an abortive close).
    pub fn into_tcp(self) -> TcpStream {
        self.tcp
    }

    /// Capacities of the connection's own buffers: input, plaintext, output (tests check
    /// that idle holds none).
    #[cfg(test)]
    fn buffer_capacities(&self) -> (usize, usize, usize) {
        self.held.as_deref().map_or((0, 0, 0), |h| {
            (
                h.incoming.capacity(),
                h.plain.capacity(),
                h.outgoing.capacity(),
            )
        })
    }

    /// Runs `f` on the connection with what it holds (empty buffers on the stack when it
    /// holds nothing, so an idle connection's calls allocate nothing), and keeps afterwards
    /// only what is not empty.
    fn with_io<R>(&mut self, f: impl FnOnce(&mut Io<'_>) -> R) -> R {
        let mut local = Held::default();
        let boxed = self.held.is_some();
        let held = self.held.as_deref_mut().unwrap_or(&mut local);
        let result = f(&mut Io {
            tcp: &mut self.tcp,
            conn: &mut self.conn,
            held,
        });
        if boxed {
            if self.held.as_deref().is_some_and(Held::idle) {
                self.held = None;
            }
        } else if !local.idle() {
            self.held = Some(Box::new(local));
        }
        result
    }
}

impl Io<'_> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let waiting = self.process_incoming(&mut ReadBuf::new(&mut []), Job::None)?;
            // The flight is written before waiting for the peer's answer to it.
            ready!(self.poll_send(cx))?;
            match waiting {
                Waiting::Established => {
                    if self.held.incoming.is_empty() {
                        self.held.incoming = Vec::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                Waiting::ForInput if ready!(self.poll_read_incoming(cx))? > 0 => {}
                Waiting::ForInput | Waiting::PeerClosed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    )));
                }
            }
        }
    }

    /// Processes the records held in `incoming`: plaintext into `out` (the rest into
    /// `plain`), handshake records into `outgoing`, and `job` once writing is allowed.
    fn process_incoming(&mut self, out: &mut ReadBuf<'_>, job: Job<'_>) -> io::Result<Waiting> {
        let mut incoming = std::mem::take(&mut self.held.incoming);
        let result = self.process(&mut incoming, out, job);
        let used = result.as_ref().map_or(0, |(used, _)| *used);
        incoming.drain(..used);
        self.held.incoming = if incoming.is_empty() {
            Vec::new()
        } else {
            incoming
        };
        result.map(|(_, waiting)| waiting)
    }

    /// Processes the records in `data` (see [`Self::process_incoming`]) and returns how many
    /// of its bytes were used; the rest begin an incomplete record.
    fn process(
        &mut self,
        data: &mut [u8],
        out: &mut ReadBuf<'_>,
        mut job: Job<'_>,
    ) -> io::Result<(usize, Waiting)> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut data[used..]);
            let waiting = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let AppDataRecord {
                            discard: more,
                            payload,
                        } = record.map_err(tls_error)?;
                        discard += more;
                        let room = payload.len().min(out.remaining());
                        out.put_slice(&payload[..room]);
                        if room < payload.len() {
                            if self.held.plain_pos == self.held.plain.len() {
                                self.held.plain.clear();
                                self.held.plain_pos = 0;
                            }
                            self.held.plain.extend_from_slice(&payload[room..]);
                        }
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.held.outgoing, 256, |buf| {
                        encode.encode(buf).map_err(|err| match err {
                            EncodeError::InsufficientSize(size) => Room::Need(size),
                            EncodeError::AlreadyEncoded => Room::Fail(io::Error::other(
                                "TLS record encoded twice (a bug in the TLS driver)",
                            )),
                        })
                    })?;
                    None
                }
                // The records sit in `outgoing`, written in order before anything queued
                // later; they are never sent twice.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Waiting::ForInput),
                ConnectionState::WriteTraffic(mut write) => {
                    match std::mem::replace(&mut job, Job::None) {
                        Job::None => {}
                        Job::Encrypt(plain) => append(
                            &mut self.held.outgoing,
                            plain.len() + RECORD_OVERHEAD,
                            |buf| write.encrypt(plain, buf).map_err(encrypt_room),
                        )?,
                        Job::CloseNotify => {
                            append(&mut self.held.outgoing, RECORD_OVERHEAD, |buf| {
                                write.queue_close_notify(buf).map_err(encrypt_room)
                            })?
                        }
                    }
                    Some(Waiting::Established)
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.held.peer_closed = true;
                    Some(Waiting::PeerClosed)
                }
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected TLS state {other:?} on a client connection"
                    )));
                }
            };
            used += discard;
            if let Some(waiting) = waiting {
                return Ok((used, waiting));
            }
        }
    }

    /// Reads more ciphertext into `incoming` (which holds an incomplete record, or nothing
    /// during the handshake). `Ok(0)` at end of stream.
    fn poll_read_incoming(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let start = self.held.incoming.len();
        self.held.incoming.resize(start + GROW_BY, 0);
        let mut buf = ReadBuf::new(&mut self.held.incoming[start..]);
        let result = Pin::new(&mut *self.tcp).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.held.incoming.truncate(start + n);
        if self.held.incoming.is_empty() {
            self.held.incoming = Vec::new();
        }
        ready!(result)?;
        Poll::Ready(Ok(n))
    }

    /// Reads ciphertext into the thread's scratch buffer and processes it there: plaintext
    /// into `out`, the rest of an incomplete record into `incoming`. `Ok(0)` at end of stream.
    fn poll_read_scratch(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.poll_read_into(cx, &mut scratch, out),
            // Only reachable by re-entrancy: read into the connection's own buffer instead.
            Err(_) => self.poll_read_incoming(cx),
        })
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(scratch);
        ready!(Pin::new(&mut *self.tcp).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n > 0 {
            let (used, _) = self.process(&mut scratch[..n], out, Job::None)?;
            self.held.incoming.extend_from_slice(&scratch[used..n]);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes `outgoing` until it is empty (then frees it) or the socket would block.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held.out_pos < self.held.outgoing.len() {
            let n = ready!(
                Pin::new(&mut *self.tcp).poll_write(cx, &self.held.outgoing[self.held.out_pos..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.out_pos += n;
        }
        self.held.outgoing = Vec::new();
        self.held.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Copies plaintext already decrypted into `out`; whether there was any.
    fn read_plain(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let held = &self.held.plain[self.held.plain_pos..];
        if held.is_empty() {
            return false;
        }
        let n = held.len().min(out.remaining());
        out.put_slice(&held[..n]);
        self.held.plain_pos += n;
        if self.held.plain_pos == self.held.plain.len() {
            self.held.plain = Vec::new();
            self.held.plain_pos = 0;
        }
        true
    }

    /// Encrypts `job` into `outgoing`, first taking in the records already received (their
    /// plaintext is kept for the reader), since rustls hands out its writer only then.
    fn queue(&mut self, job: Job<'_>) -> io::Result<()> {
        // Two passes at most: the peer's close_notify is reported once (edge-triggered) and
        // the pass after it hands out the writer, as a half-closed TLS connection may write.
        for _ in 0..2 {
            match self.process_incoming(&mut ReadBuf::new(&mut []), job)? {
                Waiting::Established => return Ok(()),
                Waiting::PeerClosed => {}
                Waiting::ForInput => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS handshake not finished",
                    ));
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the TLS connection is closed",
        ))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.read_plain(out) || self.held.peer_closed || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = out.filled().len();
            if !self.held.incoming.is_empty() {
                self.process_incoming(out, Job::None)?;
                if out.filled().len() > before || self.held.peer_closed {
                    return Poll::Ready(Ok(()));
                }
            }
            // Records of our own that reading caused (a key update, an alert) go out first;
            // a socket that cannot take them now does not stop the read.
            if let Poll::Ready(Err(err)) = self.poll_send(cx) {
                return Poll::Ready(Err(err));
            }
            let n = if self.held.incoming.is_empty() {
                ready!(self.poll_read_scratch(cx, out))?
            } else {
                ready!(self.poll_read_incoming(cx))?
            };
            if n == 0 {
                // rustls's own wording and kind for a peer that closed TCP without
                // close_notify (the WebSocket client treats it as a close at a frame boundary).
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            if out.filled().len() > before || self.held.peer_closed {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closing",
            )));
        }
        if self.held.outgoing.len() - self.held.out_pos >= HIGH_WATER {
            ready!(self.poll_send(cx))?;
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        self.queue(Job::Encrypt(data))?;
        // Written as far as the socket takes it now; the rest by the next write or a flush.
        if let Poll::Ready(Err(err)) = self.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut *self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.held.closing {
            self.held.closing = true;
            // A peer that already closed gets no close_notify; TCP's FIN still ends it.
            if let Err(err) = self.queue(Job::CloseNotify)
                && err.kind() != io::ErrorKind::BrokenPipe
            {
                return Poll::Ready(Err(err));
            }
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut *self.tcp).poll_shutdown(cx)
    }
}

/// What an encoder said of the buffer it was given.
enum Room {
    Need(InsufficientSizeError),
    Fail(io::Error),
}

fn encrypt_room(err: EncryptError) -> Room {
    match err {
        EncryptError::InsufficientSize(size) => Room::Need(size),
        EncryptError::EncryptExhausted => Room::Fail(io::Error::other(
            "TLS sequence numbers exhausted: the connection must be replaced",
        )),
    }
}

/// Appends what `encode` writes to `out`, trying `room` bytes first and then the size the
/// encoder asks for.
fn append(
    out: &mut Vec<u8>,
    mut room: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Room>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Room::Need(InsufficientSizeError { required_size })) => room = required_size,
            Err(Room::Fail(err)) => {
                out.truncate(start);
                return Err(err);
            }
        }
    }
}

/// A rustls error as tokio-rustls reports it.
fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().with_io(|io| io.poll_read(cx, out))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().with_io(|io| io.poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with_io(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with_io(|io| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, path::Path, time::Duration};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;
    use crate::net::{certificate_problem, client_config_without_roots, socket_tls_config};

    async fn bound<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish in 20 s"))
    }

    fn trusting_the_test_ca() -> Arc<ClientConfig> {
        let ca = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/ws/testdata/ca.pem"
        ));
        socket_tls_config(Some(ca)).expect("the test CA loads")
    }

    /// A client connected to a tokio-rustls server (rustls's buffered API: another driver of
    /// the same protocol) with the test certificate.
    async fn pair(
        config: Arc<ClientConfig>,
    ) -> (
        io::Result<TlsStream>,
        io::Result<tokio_rustls::server::TlsStream<TcpStream>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = crate::ws::tests::test_tls_acceptor();
        let client = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            TlsStream::connect(config, name, tcp).await
        };
        let server = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            acceptor.accept(tcp).await
        };
        bound("handshake", async { tokio::join!(client, server) }).await
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn many_records_through_a_small_reader_arrive_whole_and_idle_holds_no_buffer() {
        let (client, server) = pair(trusting_the_test_ca()).await;
        let (mut client, mut server) = (client.expect("client"), server.expect("server"));
        assert_eq!(client.buffer_capacities(), (0, 0, 0), "after the handshake");
        let sent = pattern(300_000);
        let len = sent.len();
        let echo = tokio::spawn(async move {
            let mut got = vec![0; len];
            server.read_exact(&mut got).await.expect("server read");
            server.write_all(&got).await.expect("server write");
            server.flush().await.expect("server flush");
            server
        });
        bound("write", client.write_all(&sent))
            .await
            .expect("write");
        bound("flush", client.flush()).await.expect("flush");
        // 7 bytes a read: records are split across reads and kept between them.
        let mut back = Vec::with_capacity(len);
        let mut small = [0u8; 7];
        while back.len() < len {
            let n = bound("read", client.read(&mut small)).await.expect("read");
            assert!(n > 0, "end of stream after {} bytes", back.len());
            back.extend_from_slice(&small[..n]);
        }
        assert!(back == sent, "the echo differs from what was sent");
        assert_eq!(client.buffer_capacities(), (0, 0, 0), "idle after traffic");
        drop(bound("server", echo).await.expect("server task"));
    }

    #[test]
    fn a_stream_fits_the_allocators_one_kib_class() {
        // Boxed by the transport and kept as long as its socket: one byte more is 1,280.
        assert!(
            size_of::<TlsStream>() <= 1024,
            "{} bytes",
            size_of::<TlsStream>()
        );
    }

    #[tokio::test]
    async fn close_notify_reads_as_end_of_stream_and_a_bare_fin_does_not() {
        let (client, server) = pair(trusting_the_test_ca()).await;
        let (mut client, mut server) = (client.expect("client"), server.expect("server"));
        server.write_all(b"bye").await.expect("write");
        server.shutdown().await.expect("close_notify");
        let mut got = Vec::new();
        bound("read", client.read_to_end(&mut got))
            .await
            .expect("a clean end");
        assert_eq!(got, b"bye");

        let (client, server) = pair(trusting_the_test_ca()).await;
        let (mut client, mut server) = (client.expect("client"), server.expect("server"));
        server.write_all(b"cut").await.expect("write");
        server.flush().await.expect("flush");
        drop(server.into_inner().0);
        let mut got = [0u8; 16];
        let n = bound("read", client.read(&mut got)).await.expect("data");
        assert_eq!(&got[..n], b"cut");
        let err = bound("read", client.read(&mut got))
            .await
            .expect_err("TCP closed without close_notify");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn traffic_continues_across_a_key_update_from_the_server() {
        let (client, server) = pair(trusting_the_test_ca()).await;
        let (mut client, mut server) = (client.expect("client"), server.expect("server"));
        server
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        server.write_all(b"new keys").await.expect("write");
        server.flush().await.expect("flush");
        let mut got = [0u8; 8];
        bound("read", client.read_exact(&mut got))
            .await
            .expect("read");
        assert_eq!(&got, b"new keys");
        client.write_all(b"still here").await.expect("write");
        client.flush().await.expect("flush");
        let mut got = [0u8; 10];
        bound("server read", server.read_exact(&mut got))
            .await
            .expect("the server reads the client after the update");
        assert_eq!(&got, b"still here");
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_refused_and_says_so() {
        let mut config = client_config_without_roots();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (client, _server) = pair(Arc::new(config)).await;
        let err = client.expect_err("no root trusts the test CA");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let said = certificate_problem(&err).expect("a certificate problem");
        assert!(said.contains("not trusted"), "{said}");
    }
}
