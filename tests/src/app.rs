//! A local app: connects to `ws://{listen}/streams/{ns}/{name}`, reads every frame in a
//! background task (so the sidecar's pings are answered however long the test looks away),
//! and acks on request or by itself.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use streamkeeper_api::{EventId, StreamId, app_protocol::AppFrame};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinHandle,
    time::timeout,
};
use tokio_tungstenite::tungstenite::Message;

/// How long connecting (TCP and handshake) may take.
const CONNECT_BOUND: Duration = Duration::from_secs(5);

/// Whether the app acks events by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Only [`App::ack`] acks.
    Manual,
    /// Every event is acked as soon as it is read, before the test sees it.
    All,
}

/// What the app read.
#[derive(Debug, Clone, PartialEq)]
pub enum FromServer {
    /// A protocol frame.
    Frame(AppFrame),
    /// A text frame that is not an [`AppFrame`].
    Unreadable(String),
    /// The sidecar's close frame.
    Closed {
        /// Its code, if it had one.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// The socket ended (after a close, a reset, or an error).
    Ended(String),
}

/// A connected app. Dropping it drops the socket without a close handshake.
#[derive(Debug)]
pub struct App {
    frames: mpsc::UnboundedReceiver<FromServer>,
    out: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

/// The request path of a stream.
pub fn path_of(stream: &StreamId) -> String {
    format!("/streams/{}/{}", stream.namespace(), stream.name())
}

impl App {
    /// Connects to the sidecar's app endpoint for `stream`; fails the test if it cannot.
    pub async fn connect(addr: SocketAddr, stream: &StreamId, mode: AckMode) -> Self {
        let url = format!("ws://{addr}{}", path_of(stream));
        let (ws, _) = timeout(CONNECT_BOUND, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("{url}: no handshake within {CONNECT_BOUND:?}"))
            .unwrap_or_else(|e| panic!("{url}: handshake refused: {e}"));
        let (tx, frames) = mpsc::unbounded_channel();
        let (out, mut cmds) = mpsc::unbounded_channel::<Message>();
        let task = tokio::spawn(async move {
            let mut ws = ws;
            loop {
                tokio::select! {
                    msg = ws.next() => {
                        let seen = match msg {
                            Some(Ok(Message::Text(text))) => match serde_json::from_str::<AppFrame>(&text) {
                                Ok(frame) => {
                                    if let (AckMode::All, AppFrame::Event { id, .. }) = (mode, &frame)
                                        && let Err(e) = ws.send(ack_message(id)).await
                                    {
                                        let _ = tx.send(FromServer::Ended(format!("ack not sent: {e}")));
                                        return;
                                    }
                                    FromServer::Frame(frame)
                                }
                                Err(_) => FromServer::Unreadable(text.as_str().to_owned()),
                            },
                            Some(Ok(Message::Close(frame))) => FromServer::Closed {
                                code: frame.as_ref().map(|f| u16::from(f.code)),
                                reason: frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
                            },
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => {
                                let _ = tx.send(FromServer::Ended(e.to_string()));
                                return;
                            }
                            None => {
                                let _ = tx.send(FromServer::Ended("end of stream".into()));
                                return;
                            }
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    cmd = cmds.recv() => match cmd {
                        Some(msg) => {
                            if let Err(e) = ws.send(msg).await {
                                let _ = tx.send(FromServer::Ended(format!("send failed: {e}")));
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Self { frames, out, task }
    }

    /// The next thing read, waiting at most `bound`; fails the test on a timeout.
    pub async fn recv(&mut self, bound: Duration) -> FromServer {
        match timeout(bound, self.frames.recv()).await {
            Ok(Some(seen)) => seen,
            Ok(None) => FromServer::Ended("reader task gone".into()),
            Err(_) => panic!("the app read nothing within {bound:?}"),
        }
    }

    /// The next thing read, if one arrives within `bound`.
    pub async fn try_recv(&mut self, bound: Duration) -> Option<FromServer> {
        timeout(bound, self.frames.recv()).await.ok().flatten()
    }

    /// Everything read so far, without waiting.
    pub fn drain(&mut self) -> Vec<FromServer> {
        let mut out = Vec::new();
        while let Ok(seen) = self.frames.try_recv() {
            out.push(seen);
        }
        out
    }

    /// Reads until `pred` holds (bounded by `bound` in all); returns what was read before it
    /// and the match. Fails the test when the socket ends first or time runs out.
    pub async fn recv_until(
        &mut self,
        bound: Duration,
        what: &str,
        pred: impl Fn(&FromServer) -> bool,
    ) -> (Vec<FromServer>, FromServer) {
        let deadline = tokio::time::Instant::now() + bound;
        let mut before = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, self.frames.recv()).await;
            match next {
                Ok(Some(seen)) if pred(&seen) => return (before, seen),
                Ok(Some(FromServer::Ended(why))) => {
                    panic!("the app socket ended ({why}) before {what}; read before: {before:?}")
                }
                Ok(Some(seen)) => before.push(seen),
                Ok(None) => panic!("the app reader is gone before {what}"),
                Err(_) => panic!("no {what} within {bound:?}; read before: {before:?}"),
            }
        }
    }

    /// The next event (other frames are skipped), waiting at most `bound`.
    pub async fn next_event(&mut self, bound: Duration) -> (EventId, serde_json::Value) {
        let (_, hit) = self
            .recv_until(bound, "an event", |s| {
                matches!(s, FromServer::Frame(AppFrame::Event { .. }))
            })
            .await;
        match hit {
            FromServer::Frame(AppFrame::Event { id, data, .. }) => (id, data),
            _ => unreachable!("recv_until returned a non-matching frame"),
        }
    }

    /// Sends any message.
    pub fn send(&self, msg: Message) {
        self.out.send(msg).expect("the app socket is still open");
    }

    /// Acks `id` (and, per the protocol, every event delivered before it).
    pub fn ack(&self, id: &EventId) {
        self.send(ack_message(id));
    }

    /// Closes politely (close 1000) and waits, at most `bound`, for the close handshake.
    pub async fn close(mut self, bound: Duration) {
        self.send(Message::Close(None));
        let done = timeout(bound, async {
            while let Some(seen) = self.frames.recv().await {
                if matches!(seen, FromServer::Ended(_)) {
                    break;
                }
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "the close handshake did not finish within {bound:?}"
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `{"type":"ack","id":ID}`.
pub fn ack_message(id: &EventId) -> Message {
    Message::text(serde_json::json!({"type": "ack", "id": id}).to_string())
}

/// An app that completes the WebSocket handshake by hand and then never reads nor writes,
/// with a small receive buffer so the sidecar's writes stall soon.
pub async fn raw_app(addr: SocketAddr, stream: &StreamId) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = timeout(CONNECT_BOUND, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        path_of(stream)
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = timeout(CONNECT_BOUND, tcp.read_u8())
            .await
            .expect("handshake answered in time")
            .expect("handshake byte");
        head.push(byte);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}
