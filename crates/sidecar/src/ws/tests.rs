//! End-to-end tests of [`WsClient`] against a real tokio-tungstenite server on loopback.

// tungstenite's handshake `Callback` returns a large `ErrorResponse`; not ours to shrink.
#![allow(clippy::result_large_err)]

use std::{io, sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{
    WebSocketStream, accept_hdr_async,
    tungstenite::{
        self, Message,
        handshake::server::{ErrorResponse, Request, Response},
        protocol::{
            CloseFrame,
            frame::{
                Frame as TFrame, FrameHeader,
                coding::{CloseCode, Data, OpCode as TOpCode},
            },
        },
    },
};
use url::Url;

use super::*;
use crate::net::{self, SocketOptions};

/// Upper bound on every wait; tests finish far sooner.
const WAIT: Duration = Duration::from_secs(10);

fn direct() -> ConnectOptions {
    ConnectOptions {
        proxy: ProxyMode::Direct,
        ..ConnectOptions::default()
    }
}

async fn bound<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn listen() -> (TcpListener, u16) {
    listen_on("127.0.0.1").await
}

async fn listen_on(ip: &str) -> (TcpListener, u16) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

fn ws_url(port: u16, path: &str) -> Url {
    Url::parse(&format!("ws://127.0.0.1:{port}{path}")).expect("url")
}

/// Accepts one connection and upgrades it, accepting any request.
async fn accept(listener: &TcpListener) -> WebSocketStream<TcpStream> {
    let (tcp, _) = listener.accept().await.expect("accept");
    tokio_tungstenite::accept_async(tcp)
        .await
        .expect("server upgrade")
}

/// Raw bytes of an unmasked server frame.
fn raw_frame(opcode: TOpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    TFrame::from_payload(header, payload.to_vec().into())
        .format(&mut out)
        .expect("format");
    out
}

async fn next_message(
    ws: &mut WebSocketStream<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
) -> Message {
    bound("server read", ws.next())
        .await
        .expect("stream open")
        .expect("valid message")
}

#[test]
fn ws_client_is_small() {
    let size = std::mem::size_of::<WsClient>();
    println!("size_of::<WsClient>() = {size} bytes");
    assert!(size <= 200, "WsClient grew to {size} bytes");
}

#[tokio::test]
async fn handshake_carries_custom_headers_and_text_flows_both_ways() {
    let (listener, port) = listen().await;
    let (seen_tx, seen_rx) = oneshot::channel::<(String, Option<String>, Option<String>)>();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = accept_hdr_async(tcp, |req: &Request, resp: Response| {
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let _ = seen_tx.send((
                req.uri().to_string(),
                header("authorization"),
                header("last-event-id"),
            ));
            Ok(resp)
        })
        .await
        .expect("server upgrade");
        ws.send(Message::text("hello")).await.expect("send");
        let got = next_message(&mut ws).await;
        ws.send(Message::text(format!(
            "echo:{}",
            got.to_text().expect("text")
        )))
        .await
        .expect("send");
        ws
    });
    let headers = [
        ("Authorization", "Bearer t0ken".to_owned()),
        ("Last-Event-ID", "evt-41".to_owned()),
    ];
    let mut client = bound(
        "connect",
        connect(&ws_url(port, "/streams/v1?topic=q1"), &headers, &direct()),
    )
    .await
    .expect("connect");
    let (uri, auth, last_id) = bound("headers", seen_rx).await.expect("callback ran");
    assert_eq!(uri, "/streams/v1?topic=q1");
    assert_eq!(auth.as_deref(), Some("Bearer t0ken"));
    assert_eq!(last_id.as_deref(), Some("evt-41"));

    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Text("hello".into())
    );
    // Queued, never flushed explicitly: recv writes it while it waits for the echo.
    client.queue_text("from client");
    assert!(client.pending_out() > 0);
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Text("echo:from client".into())
    );
    assert_eq!(client.pending_out(), 0);
    let (partial_cap, out_cap) = client.buffer_capacities();
    assert_eq!(partial_cap, 0, "no input buffer held while idle");
    assert_eq!(out_cap, 0, "a drained text frame's buffer is released");
    bound("server", server).await.expect("server task");
}

#[tokio::test]
async fn server_ping_is_answered_and_returned_and_client_ping_gets_pong() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        ws.send(Message::Ping(b"hb".to_vec().into()))
            .await
            .expect("ping");
        // The client's pong, then its own ping (tungstenite answers it while reading).
        let pong = next_message(&mut ws).await;
        let ping = next_message(&mut ws).await;
        // Reading on flushes tungstenite's pong; wait for the client to go away.
        let _ = bound("client gone", ws.next()).await;
        (pong, ping)
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Ping(b"hb".to_vec())
    );
    assert!(client.pending_out() > 0, "a pong is queued");
    bound("flush", client.flush()).await.expect("flush");
    client.queue_ping(b"c1");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Pong(b"c1".to_vec())
    );
    drop(client);
    let (pong, ping) = bound("server", server).await.expect("server task");
    assert_eq!(pong, Message::Pong(b"hb".to_vec().into()));
    assert_eq!(ping, Message::Ping(b"c1".to_vec().into()));
}

/// Accepts one connection, answers the upgrade by hand and writes `after_101` in the same
/// write as the answer (frames a server sends at once land in the client's handshake read).
async fn accept_raw(listener: &TcpListener, after_101: &[u8]) -> TcpStream {
    let (mut tcp, _) = listener.accept().await.expect("accept");
    let mut req = Vec::new();
    while !req.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.expect("request");
        req.push(b[0]);
    }
    let req = String::from_utf8(req).expect("ascii");
    let key = req
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key");
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        handshake::accept_key(key)
    )
    .into_bytes();
    answer.extend_from_slice(after_101);
    tcp.write_all(&answer).await.expect("answer");
    tcp
}

/// The server side of an upgraded raw socket, to read what the client sends.
async fn server_side(tcp: TcpStream) -> WebSocketStream<TcpStream> {
    WebSocketStream::from_raw_socket(tcp, tungstenite::protocol::Role::Server, None).await
}

#[tokio::test]
async fn frames_sent_with_the_101_are_not_lost() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut frames = raw_frame(TOpCode::Data(Data::Text), true, b"first");
        frames.extend(raw_frame(TOpCode::Data(Data::Text), true, b"second"));
        accept_raw(&listener, &frames).await
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    assert_eq!(
        client.recv().await.expect("frame"),
        Frame::Text("first".into())
    );
    assert_eq!(
        client.recv().await.expect("frame"),
        Frame::Text("second".into())
    );
    assert_eq!(client.buffer_capacities().0, 0);
    drop(bound("server", server).await.expect("server task"));
}

#[tokio::test]
async fn fragmented_text_is_reassembled_around_a_ping() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let tcp = ws.get_mut();
        for bytes in [
            raw_frame(TOpCode::Data(Data::Text), false, b"frag-"),
            raw_frame(
                TOpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
                true,
                b"mid",
            ),
            raw_frame(TOpCode::Data(Data::Continue), false, "mén".as_bytes()),
            raw_frame(TOpCode::Data(Data::Continue), true, b"ted"),
        ] {
            tcp.write_all(&bytes).await.expect("write");
            tcp.flush().await.expect("flush");
        }
        ws
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Ping(b"mid".to_vec())
    );
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Text("frag-ménted".into())
    );
    drop(bound("server", server).await.expect("server task"));
}

/// Connects to a server that writes `bytes` raw after the upgrade, and returns the client's
/// first `recv` result.
async fn first_recv_after(
    bytes: Vec<u8>,
    opts: ConnectOptions,
) -> (Result<Frame, WsError>, WsClient) {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        ws.get_mut().write_all(&bytes).await.expect("write");
        // Keep the socket open until the client is done.
        let _ = ws.next().await;
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &opts))
        .await
        .expect("connect");
    let first = bound("recv", client.recv()).await;
    drop(server);
    (first, client)
}

#[tokio::test]
async fn oversized_frame_is_refused_from_its_header_without_buffering() {
    // Only the header of a 5 MiB binary frame is ever sent.
    let mut header = vec![0x82, 127];
    header.extend_from_slice(&(5u64 << 20).to_be_bytes());
    let (first, mut client) = first_recv_after(header, direct()).await;
    match first {
        Err(err @ WsError::Protocol { .. }) => {
            assert_eq!(err.close_code(), Some(1009));
            assert!(
                err.to_string()
                    .contains("frame of 5242880 bytes exceeds limit 1048576"),
                "{err}"
            );
        }
        other => panic!("expected a 1009 protocol error, got {other:?}"),
    }
    assert_eq!(client.buffer_capacities().0, 0, "no input was buffered");
    assert!(client.pending_out() > 0, "the 1009 close is queued");
    assert!(matches!(client.recv().await, Err(WsError::Closed)));
    assert_eq!(client.buffer_capacities(), (0, 0), "the close was written");
}

#[tokio::test]
async fn max_frame_is_configurable() {
    let opts = ConnectOptions {
        max_frame: 16,
        ..direct()
    };
    let (first, _client) = first_recv_after(
        raw_frame(TOpCode::Data(Data::Text), true, &[b'a'; 17]),
        opts,
    )
    .await;
    assert_eq!(first.expect_err("too big").close_code(), Some(1009));
}

#[tokio::test]
async fn invalid_utf8_text_is_1007() {
    let (first, _client) = first_recv_after(
        raw_frame(TOpCode::Data(Data::Text), true, &[0xC3, 0x28]),
        direct(),
    )
    .await;
    let err = first.expect_err("bad utf8");
    assert_eq!(err.close_code(), Some(1007));
    assert!(
        err.to_string().contains("text frame is not valid UTF-8"),
        "{err}"
    );
}

#[tokio::test]
async fn masked_server_frame_is_1002() {
    let mut masked = Vec::new();
    frame::encode_frame(frame::OpCode::Text, true, b"x", &mut masked);
    let (first, _client) = first_recv_after(masked, direct()).await;
    assert_eq!(first.expect_err("masked").close_code(), Some(1002));
}

/// A server that refuses the upgrade with `status`, extra headers and a body.
async fn refusing_server(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> u16 {
    let (listener, port) = listen().await;
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let _ = accept_hdr_async(tcp, move |_: &Request, _: Response| {
            let mut resp = tungstenite::http::Response::builder()
                .status(status)
                .header("Content-Length", body.len());
            for (n, v) in headers {
                resp = resp.header(*n, *v);
            }
            Err::<Response, ErrorResponse>(resp.body(Some(body.to_owned())).expect("response"))
        })
        .await;
    });
    port
}

#[tokio::test]
async fn refused_upgrades_report_status_retry_after_and_body() {
    let port = refusing_server(401, &[], "token expired").await;
    let headers = [("Authorization", "Bearer s3cret-token".to_owned())];
    let err = bound("connect", connect(&ws_url(port, "/"), &headers, &direct()))
        .await
        .expect_err("refused");
    match &err {
        WsError::Status {
            status,
            retry_after,
            body,
        } => {
            assert_eq!(*status, 401);
            assert_eq!(*retry_after, None);
            assert_eq!(body, "token expired");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cret"), "request headers leaked: {shown}");

    let port = refusing_server(429, &[("Retry-After", "7")], "slow down").await;
    let err = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            WsError::Status { status: 429, retry_after: Some(d), body } if *d == Duration::from_secs(7) && body == "slow down"
        ),
        "{err:?}"
    );
    assert_eq!(err.http_status(), Some(429));
}

#[tokio::test]
async fn recv_is_cancel_safe_while_a_large_frame_trickles_in() {
    cancel_safety_scenario().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_is_cancel_safe_on_the_multi_thread_runtime() {
    cancel_safety_scenario().await;
}

/// A 256 KiB text frame arrives in 64 pieces, one each time a timer cancels `recv`.
async fn cancel_safety_scenario() {
    const PIECES: usize = 64;
    const PIECE: usize = 4096;
    let text: String = (0..PIECES * PIECE)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let wire = raw_frame(TOpCode::Data(Data::Text), true, text.as_bytes());
    let (listener, port) = listen().await;
    let (next_tx, mut next_rx) = mpsc::unbounded_channel::<()>();
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        // One piece each time the client's timer has cancelled a recv.
        for piece in wire.chunks(wire.len().div_ceil(PIECES)) {
            next_rx.recv().await.expect("client alive");
            let tcp = ws.get_mut();
            tcp.write_all(piece).await.expect("write");
            tcp.flush().await.expect("flush");
        }
        // The text the client queued before the loop arrived without an explicit flush.
        next_message(&mut ws).await
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    client.queue_text("queued during recv");
    let mut cancelled = 0usize;
    let received = bound("large frame", async {
        loop {
            tokio::select! {
                frame = client.recv() => break frame,
                _ = tokio::time::sleep(Duration::from_millis(1)) => {
                    cancelled += 1;
                    let _ = next_tx.send(());
                }
            }
        }
    })
    .await
    .expect("frame");
    assert!(cancelled >= PIECES, "recv was cancelled {cancelled} times");
    assert_eq!(received, Frame::Text(text));
    assert_eq!(
        client.buffer_capacities().0,
        0,
        "input buffer freed after the frame"
    );
    assert_eq!(
        bound("server", server).await.expect("server task"),
        Message::text("queued during recv")
    );
}

#[tokio::test]
async fn server_close_is_echoed_and_returned() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "rotating".into(),
        }))
        .await
        .expect("close");
        // tungstenite ends the stream once our close is answered.
        bound("close reply", async {
            loop {
                match ws.next().await {
                    None => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => return Err(err.to_string()),
                }
            }
        })
        .await
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Close(Some((1001, "rotating".into())))
    );
    assert!(client.is_closing());
    client.queue_text("ignored after close");
    assert!(matches!(
        bound("recv", client.recv()).await,
        Err(WsError::Closed)
    ));
    assert_eq!(client.pending_out(), 0, "the echo was written");
    bound("server", server)
        .await
        .expect("server task")
        .expect("server saw a clean close handshake");
}

#[tokio::test]
async fn client_close_completes_and_unsendable_codes_become_a_bare_close() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let first = next_message(&mut ws).await;
        // tungstenite echoes the close while reading on, then ends the stream.
        let end = bound("stream end", ws.next()).await;
        (first, end.is_none())
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    client.queue_close(1006, "abnormal is not sendable");
    client.queue_text("never sent after close");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Close(None)
    );
    assert!(matches!(client.recv().await, Err(WsError::Closed)));
    let (first, ended) = bound("server", server).await.expect("server task");
    assert_eq!(first, Message::Close(None));
    assert!(ended, "the server saw a clean close handshake");
}

#[tokio::test]
async fn peer_eof_is_closed() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move { drop(accept(&listener).await) });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    bound("server", server).await.expect("server task");
    assert!(matches!(
        bound("recv", client.recv()).await,
        Err(WsError::Closed)
    ));
}

/// Waits for the server side to see the client's reset.
async fn expect_reset<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match bound("reset seen", ws.next()).await {
        Some(Err(tungstenite::Error::Io(err))) => {
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}")
        }
        other => panic!("expected ECONNRESET, got {other:?}"),
    }
}

#[tokio::test]
async fn reset_is_a_tcp_rst_not_a_close() {
    let (listener, port) = listen().await;
    let (ready_tx, ready_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        ws.send(Message::text("up")).await.expect("send");
        let _ = ready_tx.send(());
        expect_reset(ws).await;
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    assert_eq!(
        client.recv().await.expect("frame"),
        Frame::Text("up".into())
    );
    bound("server ready", ready_rx).await.expect("ready");
    client.reset();
    bound("server", server).await.expect("server saw a reset");
}

#[tokio::test]
async fn socket_options_are_applied() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move { accept(&listener).await });
    let opts = ConnectOptions {
        socket: SocketOptions {
            user_timeout: Duration::from_secs(7),
            ..SocketOptions::default()
        },
        ..direct()
    };
    let client = bound("connect", connect(&ws_url(port, "/"), &[], &opts))
        .await
        .expect("connect");
    let sock = socket2::SockRef::from(client.tcp());
    assert!(sock.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(
        sock.tcp_keepalive_time().expect("idle"),
        Duration::from_secs(30)
    );
    assert_eq!(
        sock.tcp_keepalive_interval().expect("interval"),
        Duration::from_secs(10)
    );
    assert_eq!(sock.tcp_keepalive_retries().expect("retries"), 3);
    assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
    #[cfg(target_os = "linux")]
    assert_eq!(
        sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        client.local_addr().expect("local").ip(),
        client.peer_addr().expect("peer").ip()
    );
    drop(bound("server", server).await.expect("server task"));
}

#[tokio::test]
async fn connects_through_a_connect_proxy_chosen_from_the_environment() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let got = next_message(&mut ws).await;
        ws.send(got).await.expect("echo");
        ws
    });
    // A tiny CONNECT proxy that checks credentials and splices.
    let (proxy_listener, proxy_port) = listen().await;
    let proxy = tokio::spawn(async move {
        let (mut client, _) = proxy_listener.accept().await.expect("proxy accept");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.expect("CONNECT");
            head.push(b[0]);
        }
        let head = String::from_utf8(head).expect("ascii");
        let target = head.split(' ').nth(1).expect("target").to_owned();
        let mut upstream = TcpStream::connect(&target).await.expect("upstream");
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .expect("answer");
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        head
    });
    let url = ws_url(port, "/via-proxy");
    let env = move |var: &str| {
        (var == "http_proxy").then(|| format!("http://agent:pa%20ss@127.0.0.1:{proxy_port}"))
    };
    let target = net::proxy_for(&url, &env)
        .expect("proxy settings")
        .expect("a proxy applies");
    let opts = ConnectOptions {
        proxy: ProxyMode::Via(target),
        ..ConnectOptions::default()
    };
    let mut client = bound("connect", connect(&url, &[], &opts))
        .await
        .expect("connect through proxy");
    assert_eq!(client.peer_addr().expect("peer").port(), proxy_port);
    client.queue_text("tunnelled");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Text("tunnelled".into())
    );
    drop(client);
    drop(bound("server", server).await.expect("server task"));
    let head = bound("proxy", proxy).await.expect("proxy task");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "agent:pa ss");
    assert!(
        head.starts_with(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nProxy-Authorization: Basic {auth}\r\n")),
        "{head}"
    );
}

/// A TLS acceptor with the test server certificate (localhost and 127.0.0.1, signed by
/// `testdata/ca.pem`).
pub(crate) fn test_tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(include_bytes!("testdata/server.pem"))
            .collect::<Result<_, _>>()
            .expect("server cert");
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn wss_with_a_private_ca_then_reset() {
    let (listener, port) = listen().await;
    let acceptor = test_tls_acceptor();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("TLS accept");
        let mut ws = tokio_tungstenite::accept_async(tls).await.expect("upgrade");
        let got = next_message(&mut ws).await;
        ws.send(got).await.expect("echo");
        expect_reset(ws).await;
    });
    let ca = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/ws/testdata/ca.pem"
    ));
    let opts = ConnectOptions {
        tls: Some(net::socket_tls_config(Some(ca)).expect("TLS config")),
        ..direct()
    };
    let url = Url::parse(&format!("wss://localhost:{port}/secure")).expect("url");
    let mut client = bound("connect", connect(&url, &[], &opts))
        .await
        .expect("wss connect");
    assert!(client.is_tls());
    client.queue_text("over tls");
    assert_eq!(
        bound("recv", client.recv()).await.expect("frame"),
        Frame::Text("over tls".into())
    );
    client.reset();
    bound("server", server).await.expect("server saw a reset");
}

#[tokio::test]
async fn wss_refuses_a_certificate_for_another_name() {
    // The certificate is for localhost/127.0.0.1; 127.0.0.2 is loopback too, but another name.
    let (listener, port) = listen_on("127.0.0.2").await;
    let acceptor = test_tls_acceptor();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let _ = acceptor.accept(tcp).await;
    });
    let ca = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/ws/testdata/ca.pem"
    ));
    let opts = ConnectOptions {
        tls: Some(net::socket_tls_config(Some(ca)).expect("TLS config")),
        ..direct()
    };
    let url = Url::parse(&format!("wss://127.0.0.2:{port}/")).expect("url");
    let err = bound("connect", connect(&url, &[], &opts))
        .await
        .expect_err("name mismatch");
    assert!(
        matches!(err, WsError::Net(net::NetError::TlsHandshake { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn handshake_timeout_bounds_a_silent_server() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        // Read the request, never answer.
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.read(&mut buf).await;
    });
    let opts = ConnectOptions {
        handshake_timeout: Duration::from_millis(200),
        ..direct()
    };
    let err = bound("connect", connect(&ws_url(port, "/"), &[], &opts))
        .await
        .expect_err("timeout");
    assert!(
        matches!(&err, WsError::Handshake(m) if m.contains("within")),
        "{err:?}"
    );
    bound("server", server).await.expect("server task");
}

/// The close frame the server side reads next (skipping nothing else: it must come next).
async fn expect_close(ws: &mut WebSocketStream<TcpStream>) -> (u16, String) {
    match next_message(ws).await {
        Message::Close(Some(close)) => (u16::from(close.code), close.reason.to_string()),
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

/// A server that writes `bytes` after the upgrade and then waits, socket open, sending
/// nothing more (so only fail-fast checks can end the client's `recv`), then reads what the
/// client sends: returns the close code it got.
async fn silent_after(bytes: Vec<u8>) -> (u16, tokio::task::JoinHandle<(u16, String)>) {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        ws.get_mut().write_all(&bytes).await.expect("write");
        expect_close(&mut ws).await
    });
    (port, server)
}

/// RFC 6455 §8.1 and Autobahn 6.4.1/6.4.2: a fragment with invalid UTF-8 fails the connection
/// at once, while the rest of the message has not come (and never does here).
#[tokio::test]
async fn invalid_utf8_in_a_fragment_fails_before_the_message_ends() {
    let mut bytes = raw_frame(TOpCode::Data(Data::Text), false, "κόσμε".as_bytes());
    // U+110000 in UTF-8's scheme: 0xF4 0x90 is invalid from its second byte on.
    bytes.extend(raw_frame(
        TOpCode::Data(Data::Continue),
        false,
        &[0xF4, 0x90, 0x80, 0x80],
    ));
    let (port, server) = silent_after(bytes).await;
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    let err = bound("fail fast", client.recv())
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(err.close_code(), Some(1007), "{err}");
    bound("flush", client.flush()).await.expect("close written");
    let (code, _) = bound("server", server).await.expect("server task");
    assert_eq!(code, 1007);
}

/// Autobahn 6.4.3/6.4.4: the same inside one frame whose payload is only partly here.
#[tokio::test]
async fn invalid_utf8_in_part_of_a_frame_fails_before_the_frame_ends() {
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
    payload.extend_from_slice(b"edited");
    let whole = raw_frame(TOpCode::Data(Data::Text), true, &payload);
    // The header and the payload up to the bad bytes; the rest never comes.
    let cut = whole.len() - b"edited".len() - 2;
    let (port, server) = silent_after(whole[..cut].to_vec()).await;
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    let err = bound("fail fast", client.recv())
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(err.close_code(), Some(1007), "{err}");
    assert_eq!(
        client.buffer_capacities().0,
        0,
        "the partial frame was dropped"
    );
    bound("flush", client.flush()).await.expect("close written");
    let (code, _) = bound("server", server).await.expect("server task");
    assert_eq!(code, 1007);
}

/// RFC 6455 §7.1.7: failing the connection sends a close with the error's code; a close the
/// owner queues afterwards (the session's polite 1000) does not replace it.
#[tokio::test]
async fn a_protocol_violation_is_answered_with_a_close_of_its_code() {
    let mut masked = Vec::new();
    frame::encode_frame(frame::OpCode::Text, true, b"x", &mut masked);
    let (port, server) = silent_after(masked).await;
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    let err = bound("recv", client.recv()).await.expect_err("masked");
    assert_eq!(err.close_code(), Some(1002));
    assert!(client.is_closing(), "the failure queued a close");
    client.queue_close(1000, "too late");
    client.queue_text("never sent");
    bound("flush", client.flush()).await.expect("close written");
    let (code, reason) = bound("server", server).await.expect("server task");
    assert_eq!(code, 1002);
    assert_eq!(reason, "server frame is masked");
    assert!(matches!(client.recv().await, Err(WsError::Closed)));
}

/// Frames queued before the violation are written, in order, before the close.
#[tokio::test]
async fn frames_queued_before_a_failure_are_sent_before_its_close() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        // An unknown opcode arrives with the 101, so the client fails on its first recv
        // before it wrote anything it queued.
        let mut ws = server_side(accept_raw(&listener, &[0x83, 0x00]).await).await;
        let first = next_message(&mut ws).await;
        let ping = next_message(&mut ws).await;
        (first, ping, expect_close(&mut ws).await)
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    client.queue_text("queued before");
    client.queue_ping(b"p1");
    let err = bound("recv", client.recv()).await.expect_err("opcode 0x3");
    assert_eq!(err.close_code(), Some(1002));
    assert!(client.pending_out() > 0, "the queued frames were kept");
    // recv delivers them (and the close) too, then reports the end.
    assert!(matches!(
        bound("recv", client.recv()).await,
        Err(WsError::Closed)
    ));
    assert_eq!(client.pending_out(), 0);
    let (first, ping, (code, _)) = bound("server", server).await.expect("server task");
    assert_eq!(first, Message::text("queued before"));
    assert_eq!(ping, Message::Ping(b"p1".to_vec().into()));
    assert_eq!(code, 1002);
}

/// `close` waits for the server to end TCP after the closing handshake, and returns then.
#[tokio::test]
async fn close_completes_the_handshake_and_returns_when_the_server_closes() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let close = expect_close(&mut ws).await;
        // tungstenite answered the close while reading; the stream then ends cleanly.
        let end = bound("stream end", ws.next()).await;
        (close, end.is_none())
    });
    let client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    bound("close", client.close(1001, "going away", WAIT)).await;
    let (close, clean) = bound("server", server).await.expect("server task");
    assert_eq!(close, (1001, "going away".to_owned()));
    assert!(clean, "the server saw a clean close handshake");
}

/// A server that neither reads nor closes cannot hold `close` past its bound: the socket is
/// reset then, with frames still unwritten.
#[tokio::test]
async fn close_is_bounded_and_resets_a_server_that_never_reads() {
    let (listener, port) = listen().await;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
        // Read nothing until the client gave up, then find the reset behind its bytes.
        bound("client gave up", done_rx).await.expect("signal");
        let tcp = ws.get_mut();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match bound("read", tcp.read(&mut buf)).await {
                Ok(0) => return Err("EOF, not a reset".to_owned()),
                Ok(_) => continue,
                Err(err) => return Ok(err.kind()),
            }
        }
    });
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &direct()))
        .await
        .expect("connect");
    // Far more than the socket buffers of both ends hold.
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..32 {
        client.queue_binary(&chunk);
    }
    let started = std::time::Instant::now();
    bound(
        "bounded close",
        client.close(1000, "bye", Duration::from_millis(300)),
    )
    .await;
    let took = started.elapsed();
    let _ = done_tx.send(());
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    let kind = bound("server", server)
        .await
        .expect("server task")
        .expect("the server saw a reset");
    assert_eq!(kind, io::ErrorKind::ConnectionReset);
}

/// A read that completes a kept partial header and brings more than a frame limit's worth of
/// small frames: cutting them used to panic (`clamp` with min > max) with a small limit.
#[tokio::test]
async fn many_small_frames_in_one_read_after_a_partial_header() {
    let (listener, port) = listen().await;
    let server = tokio::spawn(async move {
        let mut frames = Vec::new();
        for i in 0..50u8 {
            frames.extend(raw_frame(
                TOpCode::Data(Data::Text),
                true,
                &[b'a' + i % 26; 10],
            ));
        }
        // The first byte of the first frame comes with the 101, so the client keeps it.
        let mut tcp = accept_raw(&listener, &frames[..1]).await;
        // The rest once the client is past its handshake (it says so with a frame).
        let mut hello = [0u8; 1];
        tcp.read_exact(&mut hello).await.expect("client frame");
        tcp.write_all(&frames[1..]).await.expect("write");
        tcp
    });
    let opts = ConnectOptions {
        max_frame: 16,
        ..direct()
    };
    let mut client = bound("connect", connect(&ws_url(port, "/"), &[], &opts))
        .await
        .expect("connect");
    client.queue_text("go");
    bound("flush", client.flush()).await.expect("flush");
    for i in 0..50u8 {
        let expected = char::from(b'a' + i % 26).to_string().repeat(10);
        assert_eq!(
            bound("recv", client.recv()).await.expect("frame"),
            Frame::Text(expected),
            "frame {i}"
        );
    }
    assert_eq!(client.buffer_capacities().0, 0);
    drop(bound("server", server).await.expect("server task"));
}
