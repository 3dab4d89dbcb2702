//! The client side of the RFC 6455 opening handshake: the upgrade request, and the bounded
//! read and check of the server's answer.
//!
//! Request headers may carry secrets (`Authorization: Bearer …`): they are written to the
//! socket and nowhere else, never into errors or logs.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use url::Url;

use super::WsError;

/// The largest response head read before the handshake is refused.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// The most of an error response's body kept in [`WsError::Status`].
pub const MAX_ERROR_BODY: usize = 512;
/// How long to wait for the rest of an error body before giving up on it.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(1);
/// Headers the client writes itself; callers may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn generate_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The upgrade request for `url` (ws or wss) with `key` and the caller's extra `headers`.
///
/// Refuses header names that are not HTTP tokens, values with control characters (CR, LF, NUL
/// and the others but HTAB), and headers the handshake sets itself (Host, Upgrade, Sec-WebSocket-Key, …); errors name the header, never
/// its value.
pub fn build_request(url: &Url, key: &str, headers: &[(&str, String)]) -> Result<Vec<u8>, WsError> {
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(WsError::Handshake(format!(
            "unsupported URL scheme {:?} (want ws or wss)",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| WsError::Handshake("URL has no host".into()))?;
    let mut path = url.path();
    if path.is_empty() {
        path = "/";
    }
    let mut req = Vec::with_capacity(
        256 + headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>(),
    );
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(path.as_bytes());
    if let Some(query) = url.query() {
        req.push(b'?');
        req.extend_from_slice(query.as_bytes());
    }
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(host.as_bytes());
    if let Some(port) = url.port() {
        req.extend_from_slice(format!(":{port}").as_bytes());
    }
    req.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
    for (name, value) in headers {
        if !is_token(name) {
            return Err(WsError::Handshake(format!(
                "header name {:?} is not a valid HTTP token",
                name.chars().take(64).collect::<String>()
            )));
        }
        if RESERVED_HEADERS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
        {
            return Err(WsError::Handshake(format!(
                "header {name} is set by the WebSocket client itself"
            )));
        }
        // RFC 9110 §5.5: no control character but HTAB; CR and LF would start a header of the
        // value's own choosing, and servers refuse the others.
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7F) {
            return Err(WsError::Handshake(format!(
                "header {name} has a value with a control character (CR, LF, NUL, ...)"
            )));
        }
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value.trim().as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    Ok(req)
}

/// What the client needs from the response head.
#[derive(Debug, Default)]
struct ResponseHead {
    status: u16,
    len: usize,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    accept: Option<String>,
    extensions: Option<String>,
    protocol: Option<String>,
    retry_after: Option<Duration>,
    content_length: Option<usize>,
}

/// Parses the response head at the start of `buf`; `Ok(None)` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<ResponseHead>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(WsError::Handshake(format!("malformed HTTP response: {e}")));
        }
    };
    let mut head = ResponseHead {
        status: response.code.unwrap_or(0),
        len,
        ..ResponseHead::default()
    };
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            head.connection_upgrade |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            head.accept = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            head.extensions = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.protocol = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("retry-after") {
            head.retry_after = value.parse::<u64>().ok().map(Duration::from_secs);
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        }
    }
    Ok(Some(head))
}

/// What the server answered to the upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A valid 101: the connection speaks WebSocket from byte `head_len` of the input on.
    Upgraded {
        /// Bytes of the response head; what follows are the server's first frames.
        head_len: usize,
    },
    /// Another status: the upgrade was refused.
    Refused {
        /// Bytes of the response head; what follows is the start of its body.
        head_len: usize,
        /// The HTTP status.
        status: u16,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
        /// The body's announced length.
        content_length: Option<usize>,
    },
}

/// Checks the answer at the start of `buf` (every byte read so far) to an upgrade request made
/// with `key` and the caller's `headers`. Pure, so the read loop around it is trivial.
///
/// `Ok(None)` while the head is incomplete and shorter than [`MAX_RESPONSE_HEAD`]. A malformed
/// or over-long head is [`WsError::Handshake`], and so is a 101 without the right `Upgrade`,
/// `Connection` and `Sec-WebSocket-Accept`, or with an extension or a subprotocol that was not
/// offered. Once it answers, more input never changes the answer.
pub fn check_answer(
    buf: &[u8],
    key: &str,
    headers: &[(&str, String)],
) -> Result<Option<Answer>, WsError> {
    let buf = &buf[..buf.len().min(MAX_RESPONSE_HEAD)];
    let Some(head) = parse_head(buf)? else {
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(WsError::Handshake(format!(
                "response head exceeds {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        return Ok(None);
    };
    if head.status != 101 {
        return Ok(Some(Answer::Refused {
            head_len: head.len,
            status: head.status,
            retry_after: head.retry_after,
            content_length: head.content_length,
        }));
    }
    if !head.upgrade_websocket {
        return Err(WsError::Handshake(
            "101 response without \"Upgrade: websocket\"".into(),
        ));
    }
    if !head.connection_upgrade {
        return Err(WsError::Handshake(
            "101 response without \"Connection: Upgrade\"".into(),
        ));
    }
    if head.accept.as_deref() != Some(accept_key(key).as_str()) {
        return Err(WsError::Handshake(
            "Sec-WebSocket-Accept does not match the key".into(),
        ));
    }
    if let Some(ext) = head.extensions.filter(|e| !e.is_empty()) {
        return Err(WsError::Handshake(format!(
            "server enabled extension {ext:?} that was not offered"
        )));
    }
    if let Some(chosen) = head.protocol.filter(|p| !p.is_empty()) {
        let offered = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|(_, v)| v.split(','))
            .any(|p| p.trim() == chosen);
        if !offered {
            return Err(WsError::Handshake(format!(
                "server chose subprotocol {chosen:?} that was not offered"
            )));
        }
    }
    Ok(Some(Answer::Upgraded { head_len: head.len }))
}

/// Sends the upgrade request for `url` over `stream` and checks the answer (see
/// [`check_answer`]).
///
/// Returns the bytes the server sent after its response head (frames it sent at once), which
/// are the codec's first input. A status other than 101 is [`WsError::Status`], with the start
/// of its body. The caller bounds the time.
pub async fn client_handshake<S>(
    stream: &mut S,
    url: &Url,
    headers: &[(&str, String)],
) -> Result<Vec<u8>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = generate_key();
    let request = build_request(url, &key, headers)?;
    stream.write_all(&request).await?;
    stream.flush().await?;
    drop(request);

    // 2 KiB, not 1: this buffer lives only while a socket connects, and in the allocator's
    // 1 KiB class it sat between the sessions' futures (1,016 bytes each, alive as long as
    // their streams), leaving a quarter of that class's pages holding holes once every stream
    // had connected (sidecar bench with jemalloc's bin statistics, 1,000 `ws` streams: 334
    // pages for 1,004 futures, 251 with this).
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let answer = loop {
        if let Some(answer) = check_answer(&buf, &key, headers)? {
            break answer;
        }
        // check_answer refused a full buffer, so there is room; never read past the limit.
        let room = MAX_RESPONSE_HEAD - buf.len();
        buf.reserve(room.min(1024));
        if (&mut *stream).take(room as u64).read_buf(&mut buf).await? == 0 {
            return Err(WsError::Handshake(
                "connection closed before the upgrade response".into(),
            ));
        }
    };
    match answer {
        Answer::Refused {
            head_len,
            status,
            retry_after,
            content_length,
        } => {
            let body = match content_length {
                Some(len) => read_error_body(stream, &buf[head_len..], len).await,
                None => String::new(),
            };
            Err(WsError::Status {
                status,
                retry_after,
                body,
            })
        }
        Answer::Upgraded { head_len } if head_len == buf.len() => Ok(Vec::new()),
        Answer::Upgraded { head_len } => Ok(buf[head_len..].to_vec()),
    }
}

/// Best effort: up to [`MAX_ERROR_BODY`] bytes of a `content_length` body, starting with the
/// bytes already read after the head; waits briefly for the rest.
async fn read_error_body<S>(stream: &mut S, already: &[u8], content_length: usize) -> String
where
    S: AsyncRead + Unpin,
{
    let want = content_length.min(MAX_ERROR_BODY);
    let mut body = already[..already.len().min(want)].to_vec();
    let _ = tokio::time::timeout(ERROR_BODY_WAIT, async {
        let mut chunk = [0u8; MAX_ERROR_BODY];
        while body.len() < want {
            match stream.read(&mut chunk[..want - body.len()]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn request_text(u: &str, headers: &[(&str, String)]) -> String {
        String::from_utf8(
            build_request(&url(u), "dGhlIHNhbXBsZSBub25jZQ==", headers).expect("request"),
        )
        .expect("ascii")
    }

    #[test]
    fn request_has_path_query_host_and_extra_headers() {
        let text = request_text(
            "wss://platform.example:8443/ws/v1?topic=a%20b&x=1#frag",
            &[
                ("Authorization", "Bearer tok".to_owned()),
                ("Last-Event-ID", "42".to_owned()),
            ],
        );
        assert_eq!(
            text,
            "GET /ws/v1?topic=a%20b&x=1 HTTP/1.1\r\n\
             Host: platform.example:8443\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Authorization: Bearer tok\r\n\
             Last-Event-ID: 42\r\n\r\n"
        );
    }

    #[test]
    fn default_ports_are_not_in_host() {
        assert!(request_text("wss://a.example:443", &[]).contains("\r\nHost: a.example\r\n"));
        assert!(request_text("ws://a.example:80/", &[]).contains("\r\nHost: a.example\r\n"));
        assert!(request_text("ws://a.example:443/", &[]).contains("\r\nHost: a.example:443\r\n"));
        assert!(request_text("ws://[::1]:9000", &[]).contains("\r\nHost: [::1]:9000\r\n"));
        assert!(request_text("ws://a.example", &[]).starts_with("GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn bad_headers_are_refused_without_showing_values() {
        let secret = "Bearer s3cret\r\nX-Injected: 1".to_owned();
        let err = build_request(&url("wss://a.example"), "k", &[("Authorization", secret)])
            .expect_err("CRLF");
        let text = err.to_string();
        assert!(
            text.contains("Authorization") && !text.contains("s3cret"),
            "{text}"
        );
        // Other control characters are refused too (a server would refuse the request); a
        // tab is allowed.
        for value in ["a\x01b", "a\x7fb", "a\x1bb"] {
            let err = build_request(&url("wss://a.example"), "k", &[("X-Id", value.into())])
                .expect_err("control character");
            assert!(err.to_string().contains("X-Id"), "{err}");
        }
        assert!(build_request(&url("wss://a.example"), "k", &[("X-Id", "a\tb".into())]).is_ok());
        for name in ["Host", "sec-websocket-key", "Upgrade", "Bad Name", ""] {
            assert!(
                build_request(&url("wss://a.example"), "k", &[(name, "v".into())]).is_err(),
                "{name}"
            );
        }
        assert!(build_request(&url("https://a.example"), "k", &[]).is_err());
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(generate_key())
                .expect("base64")
                .len(),
            16
        );
    }

    /// Runs the handshake against a scripted server answer built from the request's key.
    async fn against(answer: impl FnOnce(&str) -> Vec<u8>) -> Result<Vec<u8>, WsError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let server_task = async move {
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                server.read_exact(&mut b).await.expect("request");
                req.push(b[0]);
            }
            let req = String::from_utf8(req).expect("ascii");
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("key")
                .to_owned();
            server.write_all(&answer(&key)).await.expect("answer");
            server
        };
        let target = url("ws://a.example/");
        let (result, _server) =
            tokio::join!(client_handshake(&mut client, &target, &[]), server_task);
        result
    }

    fn ok_101(key: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            accept_key(key)
        )
    }

    #[tokio::test]
    async fn bytes_after_the_head_are_returned() {
        let rest = against(|key| {
            let mut a = ok_101(key, "").into_bytes();
            a.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
            a
        })
        .await
        .expect("upgrade");
        assert_eq!(rest, [0x81, 0x02, b'h', b'i']);
        let none = against(|key| ok_101(key, "").into_bytes())
            .await
            .expect("upgrade");
        assert!(none.is_empty() && none.capacity() == 0);
    }

    #[tokio::test]
    async fn bad_101_answers_are_refused() {
        let wrong_accept = against(|_| ok_101("other", "").into_bytes()).await;
        assert!(matches!(wrong_accept, Err(WsError::Handshake(m)) if m.contains("Accept")));
        let ext = against(|key| {
            ok_101(key, "Sec-WebSocket-Extensions: permessage-deflate\r\n").into_bytes()
        })
        .await;
        assert!(matches!(ext, Err(WsError::Handshake(m)) if m.contains("permessage-deflate")));
        let proto =
            against(|key| ok_101(key, "Sec-WebSocket-Protocol: chat\r\n").into_bytes()).await;
        assert!(matches!(proto, Err(WsError::Handshake(m)) if m.contains("subprotocol")));
        let no_upgrade = against(|key| {
            format!(
                "HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(key)
            )
            .into_bytes()
        })
        .await;
        assert!(matches!(no_upgrade, Err(WsError::Handshake(_))));
        let garbage = against(|_| b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
        assert!(matches!(garbage, Err(WsError::Handshake(m)) if m.contains("malformed")));
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let result = against(|_| {
            let mut a = b"HTTP/1.1 101 Switching Protocols\r\nX-Padding: ".to_vec();
            a.resize(MAX_RESPONSE_HEAD + 100, b'a');
            a
        })
        .await;
        assert!(matches!(result, Err(WsError::Handshake(m)) if m.contains("exceeds")),);
    }

    #[tokio::test]
    async fn error_status_keeps_retry_after_and_the_start_of_the_body() {
        let long_body = "x".repeat(2000);
        let result = against(|_| {
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Length: {}\r\n\r\n{long_body}",
                long_body.len()
            )
            .into_bytes()
        })
        .await;
        match result {
            Err(WsError::Status {
                status,
                retry_after,
                body,
            }) => {
                assert_eq!(status, 503);
                assert_eq!(retry_after, Some(Duration::from_secs(30)));
                assert_eq!(body.len(), MAX_ERROR_BODY);
            }
            other => panic!("expected Status, got {other:?}"),
        }
        // An HTTP-date Retry-After is not understood: None rather than a guess.
        let result = against(|_| {
            b"HTTP/1.1 429 Too Many\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n".to_vec()
        })
        .await;
        assert!(matches!(
            result,
            Err(WsError::Status { status: 429, retry_after: None, ref body }) if body.is_empty()
        ));
    }
}
