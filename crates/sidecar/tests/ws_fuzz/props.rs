//! The properties the upstream WebSocket client's parsers must keep on any input, shared by
//! the stable-Rust fuzz tests (`main.rs`, proptest) and the libFuzzer targets (`../../fuzz`):
//! a property fails by panicking.
//!
//! - the frame parser never panics, reads only its input, keeps its memory within the frame
//!   limit (plus what a read brings), and cuts frames exactly as [`model`], a plain
//!   whole-input reference decoder, does, whatever the split of the input into reads;
//! - what the encoder writes, the parser reads back;
//! - the handshake-answer check never panics, answers the same however the answer is split,
//!   and never changes its answer when more bytes come; the request builder never lets a
//!   header value inject another header.

// Each driver uses its part.
#![allow(dead_code)]

use streamkeeper_sidecar::ws::{
    Frame, WsError,
    frame::{self, Decoder, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode},
    handshake::{self, Answer},
    inbound::Inbound,
};

/// Close codes RFC 6455 lets a peer send (§7.4, and the registered 1012-1014).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// How a run over the whole input ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte was consumed, between messages.
    Clean,
    /// The input ends inside a frame or a fragmented message.
    Pending,
    /// The input broke the protocol: the close code.
    Failed(u16),
}

/// The frames the input holds and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Complete messages and control frames, in order.
    pub frames: Vec<Frame>,
    /// How the input ended.
    pub end: End,
}

/// Whether `bytes` can still become valid UTF-8 when more bytes follow.
fn valid_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// The reference decoder: the whole input at once, RFC 6455 read plainly, with no buffering
/// strategy, no incremental state and no care for speed. Checks come in the order the real
/// parser makes them (header bits, then lengths, then limits, then payload); text is checked as
/// soon as it is there, a fragment or the part of a frame that the input holds.
pub fn model(input: &[u8], max_frame: usize) -> Outcome {
    let max = max_frame.min(u32::MAX as usize) as u64;
    let mut frames = Vec::new();
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut pos = 0usize;
    let end = loop {
        let rest = &input[pos..];
        if rest.is_empty() {
            break if message.is_some() {
                End::Pending
            } else {
                End::Clean
            };
        }
        if rest.len() < 2 {
            break End::Pending;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        let len7 = u64::from(b1 & 0x7F);
        if b0 & 0x70 != 0 || !matches!(op, 0 | 1 | 2 | 8 | 9 | 10) || b1 & 0x80 != 0 {
            break End::Failed(1002);
        }
        let control = op >= 8;
        if control && (!fin || len7 > 125) {
            break End::Failed(1002);
        }
        let (len, header) = match len7 {
            126 if rest.len() < 4 => break End::Pending,
            126 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4usize),
            127 if rest.len() < 10 => break End::Pending,
            127 => {
                let len = u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    break End::Failed(1002);
                }
                (len, 10)
            }
            n => (n, 2),
        };
        match (op, &message) {
            (0, None) => break End::Failed(1002),
            (0, Some((_, data))) if data.len() as u64 + len > max => break End::Failed(1009),
            (1 | 2, Some(_)) => break End::Failed(1002),
            (1 | 2, None) if len > max => break End::Failed(1009),
            _ => {}
        }
        let text = op == 1 || (op == 0 && message.as_ref().is_some_and(|(t, _)| *t));
        let here = &rest[header..];
        if (here.len() as u64) < len {
            let mut so_far = match (&message, op) {
                (Some((_, data)), 0) => data.clone(),
                _ => Vec::new(),
            };
            so_far.extend_from_slice(here);
            break if text && !valid_prefix(&so_far) {
                End::Failed(1007)
            } else {
                End::Pending
            };
        }
        let payload = &here[..len as usize];
        pos += header + len as usize;
        match op {
            1 | 2 if fin => {
                if op == 1 {
                    match String::from_utf8(payload.to_vec()) {
                        Ok(s) => frames.push(Frame::Text(s)),
                        Err(_) => break End::Failed(1007),
                    }
                } else {
                    frames.push(Frame::Binary(payload.to_vec()));
                }
            }
            1 | 2 => {
                if text && !valid_prefix(payload) {
                    break End::Failed(1007);
                }
                message = Some((text, payload.to_vec()));
            }
            0 => {
                let Some((_, data)) = message.as_mut() else {
                    unreachable!("checked above")
                };
                data.extend_from_slice(payload);
                if text && !valid_prefix(data) {
                    break End::Failed(1007);
                }
                if fin {
                    let (_, data) = message.take().expect("in a message");
                    if text {
                        match String::from_utf8(data) {
                            Ok(s) => frames.push(Frame::Text(s)),
                            Err(_) => break End::Failed(1007),
                        }
                    } else {
                        frames.push(Frame::Binary(data));
                    }
                }
            }
            9 => frames.push(Frame::Ping(payload.to_vec())),
            10 => frames.push(Frame::Pong(payload.to_vec())),
            _ => match payload {
                [] => frames.push(Frame::Close(None)),
                [_] => break End::Failed(1002),
                [hi, lo, reason @ ..] => {
                    let code = u16::from_be_bytes([*hi, *lo]);
                    if !close_code_allowed(code) {
                        break End::Failed(1002);
                    }
                    match std::str::from_utf8(reason) {
                        Ok(r) => frames.push(Frame::Close(Some((code, r.to_owned())))),
                        Err(_) => break End::Failed(1007),
                    }
                }
            },
        }
    };
    Outcome { frames, end }
}

/// One run of the real receive path: `input` cut into reads of the given sizes (cycled; 0 is
/// taken as 1), the first read standing for the bytes that came with the handshake answer.
#[derive(Clone, Debug)]
pub struct FrameCase {
    /// The bytes the server sends.
    pub input: Vec<u8>,
    /// Sizes of successive reads.
    pub reads: Vec<usize>,
    /// The frame and message size limit.
    pub max_frame: usize,
}

impl FrameCase {
    /// The reads, as slices of the input (without allocating: memory is measured).
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut pos = 0;
        let mut sizes = self.reads.iter().copied().cycle();
        std::iter::from_fn(move || {
            if pos >= self.input.len() {
                return None;
            }
            let size = sizes.next().unwrap_or(usize::MAX).max(1);
            let end = pos.saturating_add(size).min(self.input.len());
            let chunk = &self.input[pos..end];
            pos = end;
            Some(chunk)
        })
    }

    /// The largest read.
    pub fn largest_read(&self) -> usize {
        self.chunks().map(<[u8]>::len).max().unwrap_or(0)
    }

    /// Builds a case from raw fuzzer bytes: a size limit, read sizes, then the input.
    pub fn from_bytes(data: &[u8]) -> Self {
        let (head, input) = data.split_at(data.len().min(6));
        let byte = |i: usize| usize::from(head.get(i).copied().unwrap_or(0));
        Self {
            input: input.to_vec(),
            reads: vec![
                byte(2) + 1,
                byte(3) % 7 + 1,
                byte(4) * 64 + 1,
                byte(5) % 3 + 1,
            ],
            max_frame: (byte(0) << 8 | byte(1)) % 4097,
        }
    }
}

/// Feeds `case` through [`Inbound`] as the client does (the handshake's leftover first, then
/// each read; every buffered frame is taken before the next read) and hands each frame to
/// `on_frame` as it comes (so a memory measurement does not count frames already checked).
/// Checks the memory bounds after every step.
pub fn run_inbound(case: &FrameCase, mut on_frame: impl FnMut(Frame)) -> End {
    let largest = case.largest_read();
    let max_frame = case.max_frame.min(u32::MAX as usize);
    let check_memory = |inbound: &Inbound| {
        let (partial, fragments) = inbound.capacities();
        // The kept input holds at most an incomplete frame (a control frame may be bigger than
        // a tiny limit) plus one read, doubled by growth.
        let frame = max_frame.max(MAX_CONTROL_PAYLOAD);
        let bound = 2 * (frame + MAX_HEADER_LEN + largest) + 64;
        assert!(
            partial <= bound,
            "kept input capacity {partial} > {bound} (max_frame {max_frame}, read {largest})"
        );
        assert!(
            fragments <= max_frame.max(8),
            "reassembly capacity {fragments} > max_frame {max_frame}"
        );
    };
    let mut chunks = case.chunks();
    let mut inbound = Inbound::new(case.max_frame, chunks.next().unwrap_or(&[]).to_vec());
    let drain = |inbound: &mut Inbound, on_frame: &mut dyn FnMut(Frame)| -> Result<(), u16> {
        loop {
            let next = inbound.next_buffered().map_err(|e| e.code)?;
            check_memory(inbound);
            match next {
                Some(frame) => on_frame(frame),
                None => return Ok(()),
            }
        }
    };
    if let Err(code) = drain(&mut inbound, &mut on_frame) {
        return End::Failed(code);
    }
    for chunk in chunks {
        let taken = inbound.take_read(chunk);
        check_memory(&inbound);
        match taken {
            Ok(Some(frame)) => on_frame(frame),
            Ok(None) => {}
            Err(e) => return End::Failed(e.code),
        }
        if let Err(code) = drain(&mut inbound, &mut on_frame) {
            return End::Failed(code);
        }
    }
    if inbound.at_frame_boundary() {
        assert_eq!(inbound.buffered(), 0);
        End::Clean
    } else {
        End::Pending
    }
}

/// The real receive path agrees with [`model`] on every frame and on how the input ends,
/// whatever the split into reads.
pub fn check_frames(case: &FrameCase) {
    let expected = model(&case.input, case.max_frame);
    let mut got = Vec::new();
    let end = run_inbound(case, |frame| got.push(frame));
    assert_eq!(
        Outcome { frames: got, end },
        expected,
        "reads of {:?} bytes, max_frame {}",
        case.chunks().map(<[u8]>::len).collect::<Vec<_>>(),
        case.max_frame
    );
}

/// A frame's parse depends on its own bytes only: the same with garbage after it, the same
/// error with more bytes after the point of failure, and nothing from a strict prefix of it.
pub fn check_locality(input: &[u8], max_frame: usize) {
    let first = Decoder::new(max_frame).decode(input);
    let mut longer = input.to_vec();
    longer.extend_from_slice(&[0xFF, 0x00, 0x81, 0x7F]);
    let with_more = Decoder::new(max_frame).decode(&longer);
    match &first {
        Ok(Some((_, used))) => {
            assert!(
                *used <= input.len() && *used >= 2,
                "used {used} of {}",
                input.len()
            );
            assert_eq!(
                &with_more, &first,
                "bytes after the frame changed its parse"
            );
            let alone = Decoder::new(max_frame).decode(&input[..*used]);
            assert_eq!(alone, first, "the frame alone parses differently");
            // A strict prefix of a whole frame is incomplete (its text valid so far).
            for cut in [0, 1, used / 2, used - 1] {
                assert_eq!(
                    Decoder::new(max_frame).decode(&input[..cut]),
                    Ok(None),
                    "prefix of {cut} bytes"
                );
            }
        }
        Ok(None) => {}
        Err(err) => assert_eq!(
            with_more.as_ref().map_err(|e| e.code),
            Err(err.code),
            "more input changed the error"
        ),
    }
}

/// The server-side (unmasked) frame for a masked client frame the encoder wrote, checking
/// the encoder's header on the way: the mask bit, the shortest length form, the sizes.
pub fn unmask(wire: &[u8]) -> Vec<u8> {
    assert!(wire.len() >= 6, "a client frame has a mask key");
    assert_ne!(wire[1] & 0x80, 0, "client frames are masked");
    let mut unmasked = wire.to_vec();
    unmasked[1] &= 0x7F;
    let header = frame::parse_header(&unmasked)
        .expect("the encoder writes valid headers")
        .expect("complete");
    let shortest = match header.payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    assert_eq!(header.header_len, shortest, "the shortest length form");
    assert_eq!(
        wire.len() as u64,
        header.header_len as u64 + 4 + header.payload_len,
        "frame size"
    );
    let key: [u8; 4] = wire[header.header_len..header.header_len + 4]
        .try_into()
        .expect("4 bytes");
    let mut payload = wire[header.header_len + 4..].to_vec();
    frame::apply_mask(&mut payload, key);
    let mut server = unmasked[..header.header_len].to_vec();
    server.extend_from_slice(&payload);
    server
}

/// What the encoder writes for a message, the parser reads back.
pub fn check_round_trip(text: bool, payload: &[u8], fragment: usize, mask: [u8; 4]) {
    let opcode = if text { OpCode::Text } else { OpCode::Binary };
    let mut server = Vec::new();
    if fragment == 0 || fragment >= payload.len() {
        let mut wire = Vec::new();
        frame::encode_frame_with_mask(opcode, true, payload, mask, &mut wire);
        server = unmask(&wire);
    } else {
        // As fragments: the encoder writes any opcode and FIN the caller asks for.
        for (i, piece) in payload.chunks(fragment).enumerate() {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            let last = (i + 1) * fragment >= payload.len();
            let mut wire = Vec::new();
            frame::encode_frame_with_mask(op, last, piece, mask, &mut wire);
            server.extend(unmask(&wire));
        }
    }
    let expected = if text {
        match std::str::from_utf8(payload) {
            Ok(s) => vec![Frame::Text(s.to_owned())],
            Err(_) => return check_frames_whole(&server, payload.len(), End::Failed(1007)),
        }
    } else {
        vec![Frame::Binary(payload.to_vec())]
    };
    let mut decoder = Decoder::new(payload.len());
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some((frame, used)) = decoder.decode(&server[pos..]).expect("valid") {
        pos += used;
        frames.extend(frame);
    }
    assert_eq!(pos, server.len(), "every byte consumed");
    assert_eq!(frames, expected);
}

fn check_frames_whole(server: &[u8], max_frame: usize, end: End) {
    let mut got = Vec::new();
    let case = FrameCase {
        input: server.to_vec(),
        reads: vec![server.len()],
        max_frame,
    };
    assert_eq!(run_inbound(&case, |f| got.push(f)), end);
}

/// Pings, pongs and closes the encoder writes read back the same (close reasons cut to 123
/// bytes on a character boundary).
pub fn check_control_round_trip(kind: u8, payload: &[u8], code: u16, reason: &str) {
    let mut wire = Vec::new();
    let expected = match kind % 3 {
        0 => {
            let p = &payload[..payload.len().min(125)];
            frame::encode_frame_with_mask(OpCode::Ping, true, p, [1, 2, 3, 4], &mut wire);
            Frame::Ping(p.to_vec())
        }
        1 => {
            let p = &payload[..payload.len().min(125)];
            frame::encode_frame(OpCode::Pong, true, p, &mut wire);
            Frame::Pong(p.to_vec())
        }
        _ => {
            frame::encode_close(code, reason, &mut wire);
            Frame::Close(Some((code, frame::truncate_utf8(reason, 123).to_owned())))
        }
    };
    let server = unmask(&wire);
    let decoded = Decoder::new(0).decode(&server);
    if matches!(expected, Frame::Close(_)) && !close_code_allowed(code) {
        assert_eq!(decoded.map_err(|e| e.code), Err(1002), "code {code}");
        return;
    }
    assert_eq!(decoded, Ok(Some((Some(expected), server.len()))));
}

/// A comparable form of a handshake verdict (errors compare by message).
fn verdict(result: Result<Option<Answer>, WsError>) -> Result<Option<Answer>, String> {
    result.map_err(|e| e.to_string())
}

/// The answer check, fed the answer cut into reads as the client reads it, stops at the same
/// verdict as on the whole answer, and once it answers, more bytes never change the answer.
pub fn check_answer_splits(answer: &[u8], reads: &[usize], key: &str) {
    let answer = &answer[..answer.len().min(handshake::MAX_RESPONSE_HEAD)];
    let whole = verdict(handshake::check_answer(answer, key, &[]));
    let mut decided: Option<(usize, Result<Option<Answer>, String>)> = None;
    let mut pos = 0;
    let mut sizes = reads.iter().copied().cycle();
    while pos < answer.len() {
        pos = (pos + sizes.next().unwrap_or(usize::MAX).max(1)).min(answer.len());
        let now = verdict(handshake::check_answer(&answer[..pos], key, &[]));
        match (&decided, &now) {
            (None, Ok(None)) => {}
            (None, _) => decided = Some((pos, now)),
            (Some((at, first)), _) => {
                assert_eq!(&now, first, "answered at {at} bytes, changed at {pos}")
            }
        }
    }
    let last = decided.map_or(Ok(None), |(_, v)| v);
    assert_eq!(last, whole, "the split changed the verdict");
    if let Ok(Some(Answer::Upgraded { head_len } | Answer::Refused { head_len, .. })) = &whole {
        assert!(*head_len <= answer.len());
        assert!(
            answer[..*head_len].ends_with(b"\n"),
            "the head ends with an empty line"
        );
    }
}

/// A valid 101 built from these parts is accepted, with the head's exact length; breaking one
/// required part refuses it.
pub fn check_valid_answer(key: &str, extra: &[(String, String)], trailing: &[u8], breakage: u8) {
    let accept = handshake::accept_key(key);
    let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    let mut required = vec![
        ("uPgRaDe".to_owned(), " websocket ".to_owned()),
        ("connection".to_owned(), "keep-alive, Upgrade".to_owned()),
        ("Sec-WebSocket-Accept".to_owned(), accept),
    ];
    let broken = match breakage % 5 {
        0 => None,
        1 => {
            required[0].1 = "h2c".to_owned();
            Some("Upgrade")
        }
        2 => {
            required[1].1 = "keep-alive".to_owned();
            Some("Connection")
        }
        3 => {
            required[2].1 = handshake::accept_key("another key");
            Some("Accept")
        }
        _ => {
            required.push((
                "Sec-WebSocket-Extensions".to_owned(),
                "permessage-deflate".to_owned(),
            ));
            Some("extension")
        }
    };
    let mut headers: Vec<&(String, String)> = extra.iter().collect();
    // The required headers go among the extra ones, in a place the input chooses.
    for (i, h) in required.iter().enumerate() {
        let at = (trailing.first().copied().unwrap_or(0) as usize + i) % (headers.len() + 1);
        headers.insert(at, h);
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}:{value}\r\n"));
    }
    head.push_str("\r\n");
    let mut answer = head.clone().into_bytes();
    answer.extend_from_slice(trailing);
    let result = handshake::check_answer(&answer, key, &[]);
    match broken {
        None if head.len() <= handshake::MAX_RESPONSE_HEAD => assert_eq!(
            verdict(result),
            Ok(Some(Answer::Upgraded {
                head_len: head.len()
            }))
        ),
        None => assert!(result.is_err(), "over-long head accepted"),
        Some(what) => match result {
            Err(WsError::Handshake(m)) => assert!(
                m.contains(what) || m.contains("exceeds") || m.contains("malformed"),
                "{m}"
            ),
            other => panic!("a 101 without a valid {what} was accepted: {other:?}"),
        },
    }
}

/// The request carries exactly the caller's headers after the handshake's own, or is refused;
/// no value can add a header of its own.
pub fn check_request(path: &str, headers: &[(String, String)]) {
    let url = url::Url::parse(&format!("wss://platform.example:8443/{path}")).expect("url");
    let refs: Vec<(&str, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    let key = handshake::generate_key();
    let built = handshake::build_request(&url, &key, &refs);
    let reserved = [
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
    let acceptable = headers.iter().all(|(n, v)| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            && !reserved.iter().any(|r| r.eq_ignore_ascii_case(n))
            && !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7F)
    });
    let request = match built {
        Ok(request) => {
            assert!(acceptable, "a bad header was let through: {headers:?}");
            request
        }
        Err(err) => {
            assert!(!acceptable, "a good header was refused: {err}");
            // Values may be secrets (tokens): the error names the header and never shows a
            // value, so it reads the same with every value replaced by one of its kind.
            let stand_ins: Vec<(&str, String)> = headers
                .iter()
                .map(|(n, v)| {
                    let bad = v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7F);
                    (n.as_str(), if bad { "\u{1}" } else { "v" }.to_owned())
                })
                .collect();
            let again = handshake::build_request(&url, &key, &stand_ins)
                .expect_err("the same header fails");
            assert_eq!(
                err.to_string(),
                again.to_string(),
                "the error shows a value"
            );
            return;
        }
    };
    let mut parsed = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut parsed);
    match req.parse(&request) {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, request.len(), "one request"),
        other => panic!("the request does not parse: {other:?}"),
    }
    assert_eq!(req.method, Some("GET"));
    let names: Vec<String> = req.headers.iter().map(|h| h.name.to_owned()).collect();
    assert_eq!(names.len(), 5 + headers.len(), "headers: {names:?}");
    for (h, (name, value)) in req.headers[5..].iter().zip(headers) {
        assert_eq!(h.name, name);
        // The builder trims the value; a parser would drop the spaces around it anyway.
        let want = value.trim();
        assert_eq!(
            std::str::from_utf8(h.value).expect("the value as given"),
            want,
            "value of {name}"
        );
    }
    let key_sent = req
        .headers
        .iter()
        .find(|h| h.name == "Sec-WebSocket-Key")
        .map(|h| h.value);
    assert_eq!(key_sent, Some(key.as_bytes()));
}
