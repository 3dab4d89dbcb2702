//! [`Link`]: the sockets of one stream bound to one token (one, or one per Genesys channel),
//! and waiting on all of them (and on a successor's during an overlap) at once.

use std::{future::Future, pin::Pin, sync::Arc};

use futures_util::future::{Either, select_all};
use streamkeeper_api::ConnectionId;
use tokio::time::Instant;

use super::{
    monitor::{Tick, Upstream},
    overlap::Side,
};
use crate::{auth::Token, platforms::Connection, ws::WsError};

/// One platform socket and its protocol state.
pub(super) struct Socket {
    pub(super) up: Upstream,
    pub(super) conn: Box<dyn Connection>,
    /// Registered / subscribed: it delivers.
    pub(super) ready: bool,
    /// Pings sent since the last pong.
    pub(super) pings_since_pong: u32,
}

impl Socket {
    /// Terminates the socket at once (RST).
    pub(super) fn reset(self) {
        self.up.into_ws().reset();
    }
}

/// The sockets bound to one token: what the stream's connection id names.
pub(super) struct Link {
    pub(super) id: ConnectionId,
    pub(super) sockets: Vec<Socket>,
    /// The token the platform knows these sockets by.
    pub(super) token: Arc<Token>,
    pub(super) generation: u64,
    /// When it was opened.
    pub(super) opened: Instant,
}

impl Link {
    /// Whether every socket delivers.
    pub(super) fn ready(&self) -> bool {
        self.sockets.iter().all(|s| s.ready)
    }
}

/// What one wait produced: which link and socket, and what happened there.
pub(super) struct Next {
    pub(super) side: Side,
    pub(super) socket: usize,
    pub(super) tick: Result<Tick, WsError>,
}

type Waiting<'a> = Pin<Box<dyn Future<Output = Next> + Send + 'a>>;

/// Waits for the next frame or liveness duty on any socket of `current` and `successor`, or
/// for `until` (the drive loop's own timer: [`Tick::Due`]). Cancel-safe, as
/// [`Upstream::next`] is. One socket (the common case) allocates nothing.
///
/// The one-socket wait and the many-sockets one are futures of their own: as two paths of one
/// `async` block they would share its layout, which places the first's wait after the
/// second's locals (32 bytes more of a future that lives as long as the stream).
pub(super) fn next<'a>(
    current: &'a mut Link,
    successor: Option<&'a mut Link>,
    until: Instant,
) -> impl Future<Output = Next> + Send + 'a {
    if successor.is_none() && current.sockets.len() == 1 {
        Either::Left(next_of_one(current, until))
    } else {
        Either::Right(next_of_all(current, successor, until))
    }
}

/// The next tick of a link's only socket. Not an `async fn`, which would keep its arguments in
/// the future twice.
// Clippy would have it an `async fn` again: the doc line above says why not.
#[allow(clippy::manual_async_fn)]
fn next_of_one(link: &mut Link, until: Instant) -> impl Future<Output = Next> + Send + '_ {
    async move {
        let token = link.token.value.expose();
        let Socket { up, conn, .. } = &mut link.sockets[0];
        let tick = up.next(|seq| conn.ping(seq, token), Some(until)).await;
        Next {
            side: Side::Old,
            socket: 0,
            tick,
        }
    }
}

/// The next tick of any socket of both links (an overlap, or a link of several sockets).
async fn next_of_all(current: &mut Link, successor: Option<&mut Link>, until: Instant) -> Next {
    let mut waiting: Vec<Waiting<'_>> = Vec::new();
    for (side, link) in [(Side::Old, Some(current)), (Side::New, successor)] {
        let Some(link) = link else { continue };
        let token: &str = link.token.value.expose();
        for (i, s) in link.sockets.iter_mut().enumerate() {
            let Socket { up, conn, .. } = s;
            let conn: &dyn Connection = &**conn;
            waiting.push(Box::pin(async move {
                let tick = up.next(|seq| conn.ping(seq, token), Some(until)).await;
                Next {
                    side,
                    socket: i,
                    tick,
                }
            }));
        }
    }
    if waiting.is_empty() {
        tokio::time::sleep_until(until).await;
        return Next {
            side: Side::Old,
            socket: 0,
            tick: Ok(Tick::Due),
        };
    }
    select_all(waiting).await.0
}

#[cfg(test)]
mod tests {
    use super::Socket;

    #[test]
    fn a_socket_fits_the_allocators_256_byte_class() {
        // A stream's sockets are a `Vec` of one (a Genesys one of a few): one byte more is 320.
        let size = size_of::<Socket>();
        assert!(size <= 256, "{size} bytes");
    }
}
