//! TCP sockets to the platforms: keepalive, `TCP_USER_TIMEOUT` and no-delay set with
//! setsockopt before connecting, and the abortive close (RST) that reaps a dead connection.

use std::{net::SocketAddr, time::Duration};

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tokio::net::{TcpSocket, TcpStream};

use super::{
    NetError,
    addr::{authority, bare_host},
};

/// Socket options for an upstream connection (DESIGN.md "Liveness and reaping").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Idle time before the first keepalive probe (default 30 s).
    pub keepalive_idle: Duration,
    /// Time between keepalive probes (default 10 s).
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel drops the connection (default 3).
    pub keepalive_retries: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel drops
    /// the connection; set to the stream's heartbeat timeout (default 35 s; zero leaves the
    /// system default). Linux only.
    pub user_timeout: Duration,
    /// `TCP_NODELAY` (default true: heartbeats must not wait for Nagle).
    pub nodelay: bool,
    /// Bound on each TCP connect attempt and on a proxy's answer to `CONNECT` (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(35),
            nodelay: true,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Resolves `host` and connects to each address in turn with `opts` applied to the socket
/// before connecting. Returns the first connection made, or the last error.
pub async fn connect_tcp(
    host: &str,
    port: u16,
    opts: &SocketOptions,
) -> Result<TcpStream, NetError> {
    let host = bare_host(host);
    let target = authority(host, port);
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(opts.connect_timeout, tokio::net::lookup_host((host, port)))
            .await
        {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(source)) => {
                return Err(NetError::Resolve {
                    host: host.to_owned(),
                    source,
                });
            }
            Err(_) => {
                return Err(NetError::Timeout {
                    stage: "resolving",
                    target,
                    after: opts.connect_timeout,
                });
            }
        };
    let mut last = NetError::NoAddress {
        host: host.to_owned(),
    };
    for addr in addrs {
        match connect_addr(addr, &target, opts).await {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                tracing::debug!(%addr, error = %err, "connect attempt failed");
                last = err;
            }
        }
    }
    Err(last)
}

async fn connect_addr(
    addr: SocketAddr,
    target: &str,
    opts: &SocketOptions,
) -> Result<TcpStream, NetError> {
    let socket = configured_socket(addr, opts)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(opts.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(NetError::Connect {
            target: target.to_owned(),
            addr,
            source,
        }),
        Err(_) => Err(NetError::Timeout {
            stage: "connecting to",
            target: format!("{target} ({addr})"),
            after: opts.connect_timeout,
        }),
    }
}

/// A nonblocking TCP socket for `addr` with keepalive, user timeout and no-delay set.
fn configured_socket(addr: SocketAddr, opts: &SocketOptions) -> Result<Socket, NetError> {
    let sock_err = |what: &'static str| move |source| NetError::Socket { what, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(sock_err("creating a TCP socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(sock_err("making the socket nonblocking"))?;
    let keepalive = TcpKeepalive::new().with_time(opts.keepalive_idle);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
    let keepalive = keepalive
        .with_interval(opts.keepalive_interval)
        .with_retries(opts.keepalive_retries);
    socket
        .set_tcp_keepalive(&keepalive)
        .map_err(sock_err("setting TCP keepalive"))?;
    socket
        .set_tcp_nodelay(opts.nodelay)
        .map_err(sock_err("setting TCP_NODELAY"))?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if !opts.user_timeout.is_zero() {
        socket
            .set_tcp_user_timeout(Some(opts.user_timeout))
            .map_err(sock_err("setting TCP_USER_TIMEOUT"))?;
    }
    Ok(socket)
}

/// Closes `stream` abortively: `SO_LINGER` 0, then drop, so the kernel sends RST and frees the
/// socket at once instead of a FIN that waits on a peer that may be dead.
pub fn reset(stream: TcpStream) {
    if let Err(err) = stream.set_zero_linger() {
        tracing::debug!(error = %err, "setting SO_LINGER 0 before reset failed");
    }
    drop(stream);
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn socket_options_are_set_on_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let opts = SocketOptions {
            keepalive_idle: Duration::from_secs(31),
            keepalive_interval: Duration::from_secs(11),
            keepalive_retries: 4,
            user_timeout: Duration::from_secs(35),
            ..SocketOptions::default()
        };
        let (stream, accepted) =
            tokio::join!(connect_tcp("127.0.0.1", port, &opts), listener.accept());
        let stream = stream.expect("connect");
        accepted.expect("accept");
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            sock.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(31)
        );
        assert_eq!(
            sock.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(11)
        );
        assert_eq!(sock.tcp_keepalive_retries().expect("retries"), 4);
        assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(Duration::from_secs(35))
        );
    }

    #[tokio::test]
    async fn connect_errors_name_the_target() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = connect_tcp("127.0.0.1", port, &SocketOptions::default())
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(&err, NetError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn reset_sends_rst_to_the_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let opts = SocketOptions::default();
        let (stream, accepted) =
            tokio::join!(connect_tcp("127.0.0.1", port, &opts), listener.accept());
        let (mut server, _) = accepted.expect("accept");
        reset(stream.expect("connect"));
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .expect("peer sees the close");
        let err = read.expect_err("RST, not a clean EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
