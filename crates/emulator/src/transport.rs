//! A socket's byte transport after the upgrade: the raw `TcpStream`, or rustls over it.
//!
//! The socket engine works on readiness and non-blocking `try_` calls (so it never blocks on a
//! write and obeys faults at once); TLS gets the same shape by driving a
//! `rustls::ServerConnection` by hand over the non-blocking `TcpStream`.

use std::io::{self, IoSlice, Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Read size for TLS records.
const TLS_CHUNK: usize = 4096;

/// Plain TCP or TLS over TCP.
pub(crate) enum Transport {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsIo>),
}

/// rustls driven over a non-blocking `TcpStream`.
pub(crate) struct TlsIo {
    tcp: TcpStream,
    conn: rustls::ServerConnection,
    /// Decrypted bytes may be waiting in `conn` (so do not wait for the socket).
    plain_ready: bool,
}

/// `Read` over a non-blocking `TcpStream` (WouldBlock passes through).
struct TcpRead<'a>(&'a TcpStream);

impl Read for TcpRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// `Write` over a non-blocking `TcpStream`.
struct TcpWrite<'a>(&'a TcpStream);

impl Write for TcpWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport {
    /// TLS over `tcp` with the state rustls had when hyper let go of it.
    pub fn tls(tcp: TcpStream, conn: rustls::ServerConnection) -> Self {
        Transport::Tls(Box::new(TlsIo {
            tcp,
            conn,
            plain_ready: true,
        }))
    }

    /// The TCP socket under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(t) => t,
            Transport::Tls(t) => &t.tcp,
        }
    }

    /// Resolves when a `try_read_buf` may make progress.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Tls(t) if t.plain_ready => Ok(()),
            _ => self.tcp().readable().await,
        }
    }

    /// Resolves when the socket takes writes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Resolves when the socket has an error (a reset from the peer).
    pub async fn error(&self) -> io::Result<tokio::io::Ready> {
        self.tcp().ready(Interest::ERROR).await
    }

    /// Whether encrypted bytes wait to be written.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Read what is there into `buf` without blocking: `Ok(0)` at the end of the stream.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(t) => t.try_read_buf(buf),
            Transport::Tls(t) => t.try_read_buf(buf),
        }
    }

    /// Write as much of `bufs` as the socket takes without blocking.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(t) => t.try_write_vectored(bufs),
            Transport::Tls(t) => t.try_write_vectored(bufs),
        }
    }

    /// Write pending encrypted bytes (TLS) without blocking.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_tls(),
        }
    }

    /// Make the close send RST instead of FIN (SO_LINGER 0).
    pub fn set_reset(&self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO));
    }

    /// Say goodbye at the TLS layer (best effort) before the socket is dropped.
    pub fn close_notify(&mut self) {
        if let Transport::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush_tls();
        }
    }
}

impl TlsIo {
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut chunk = [0u8; TLS_CHUNK];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                // Closed without close_notify: an end of stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut TcpRead(&self.tcp)) {
                Ok(0) => continue, // EOF: the reader reports it next turn
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.plain_ready = false;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.flush_tls(); // the alert
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.plain_ready = true;
        }
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush_tls()?;
        let n = self.conn.writer().write_vectored(bufs)?;
        match self.flush_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // rustls's buffer is full and the socket did not take its contents.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut TcpWrite(&self.tcp))?;
        }
        Ok(())
    }
}
