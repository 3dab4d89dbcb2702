//! A TCP relay on loopback that can blackhole: one pod reaches Redis through it, and the test
//! cuts that pod alone off Redis while every other pod still reaches it directly.
//!
//! Blackholed, the relay forwards nothing in either direction and closes nothing (no FIN, no
//! RST), like a network that drops every packet: bytes already read wait, as segments in
//! flight would, and arrive once it heals (TCP retransmits them). New connections are
//! accepted by the kernel but get nowhere until then. Healed, everything flows again.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// A relay to one target.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    hole: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying `127.0.0.1:{port}` (a free one) to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (hole, watch_hole) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let hole = watch_hole.clone();
                conns.spawn(relay(client, target, hole));
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, hole, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://` URL of the relay.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops forwarding, both ways, for every connection, old and new.
    pub fn blackhole(&self) {
        self.hole.send_replace(true);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.hole.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, mut hole: watch::Receiver<bool>) {
    if hole.wait_for(|h| !*h).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, hole.clone());
    let down = pump(sr, cw, hole);
    // Each direction ends on its own (a half-close is forwarded as one).
    tokio::join!(up, down);
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut hole: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = hole.wait_for(|h| *h) => continue,
        };
        // Read just as the hole opened: held until it heals, like a segment in flight.
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_blackholed_relay_forwards_nothing_and_closes_nothing_until_it_heals() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let relay = Relay::start(target).await;
        let mut c = TcpStream::connect(relay.addr()).await.expect("connect");
        let mut buf = [0u8; 5];
        c.write_all(b"hello").await.expect("write");
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"hello");

        relay.blackhole();
        c.write_all(b"again").await.expect("the kernel takes it");
        let silent = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(
            silent.is_err(),
            "nothing came back, not even a close: {silent:?}"
        );

        relay.heal();
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("the held bytes arrive after the heal")
            .expect("read");
        assert_eq!(&buf, b"again");
    }
}
