//! RFC 6455 frames: a pure parser for server frames and an encoder for masked client frames.
//!
//! The parser works on a borrowed byte slice and never buffers on its own: it says how many
//! bytes a complete frame used, or that the frame is not complete yet. Limits are enforced as
//! soon as a frame header is readable, so an oversized frame is refused before any of its
//! payload is held.

use std::fmt;

use super::utf8::Utf8Check;

/// Close code 1000: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code 1002: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code 1007: a text payload (or close reason) is not valid UTF-8.
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code 1009: a frame or message is larger than the configured limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The largest close reason that fits a control frame beside its 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: UTF-8 text.
    Text,
    /// 0x2: binary data.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble of a frame's first byte, if RFC 6455 defines it.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The wire value of this opcode.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Continuation => "continuation",
            Self::Text => "text",
            Self::Binary => "binary",
            Self::Close => "close",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }
}

/// A complete message or control frame received from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text message (fragments already reassembled and checked as UTF-8).
    Text(String),
    /// A binary message (fragments already reassembled).
    Binary(Vec<u8>),
    /// A ping with its payload (the client answers it on its own).
    Ping(Vec<u8>),
    /// A pong with its payload.
    Pong(Vec<u8>),
    /// A close frame: `None` when it carried no status code, else the code and reason.
    Close(Option<(u16, String)>),
}

/// A protocol violation in the input: the close code to fail the connection with, and a
/// message naming the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct ProtocolError {
    /// 1002 (protocol error), 1007 (invalid payload) or 1009 (too big).
    pub code: u16,
    /// What was wrong, e.g. "text frame is not valid UTF-8".
    pub reason: String,
}

impl ProtocolError {
    fn protocol(reason: impl fmt::Display) -> Self {
        Self {
            code: CLOSE_PROTOCOL_ERROR,
            reason: reason.to_string(),
        }
    }

    fn invalid_payload(reason: impl fmt::Display) -> Self {
        Self {
            code: CLOSE_INVALID_PAYLOAD,
            reason: reason.to_string(),
        }
    }

    fn too_big(what: &str, len: u64, limit: usize) -> Self {
        Self {
            code: CLOSE_TOO_BIG,
            reason: format!("{what} of {len} bytes exceeds limit {limit}"),
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// Bytes the header itself takes (2, 4 or 10 for unmasked server frames).
    pub header_len: usize,
    /// The payload length the header announces.
    pub payload_len: u64,
}

impl Header {
    /// Header plus payload, in bytes (saturating on absurd lengths).
    pub fn frame_len(&self) -> u64 {
        (self.header_len as u64).saturating_add(self.payload_len)
    }
}

/// Parses and checks a server frame header.
///
/// Returns `Ok(None)` when `buf` is too short to hold the whole header. Refuses (1002) set RSV
/// bits, unknown opcodes, masked frames (servers never mask), fragmented control frames, control
/// payloads over 125 bytes and 64-bit lengths with the top bit set.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let rsv = (b0 >> 4) & 0x7;
    if rsv != 0 {
        return Err(ProtocolError::protocol(format_args!(
            "reserved bits set (RSV {rsv:03b}) without a negotiated extension"
        )));
    }
    let Some(opcode) = OpCode::from_bits(b0 & 0x0F) else {
        return Err(ProtocolError::protocol(format_args!(
            "unknown opcode 0x{:X}",
            b0 & 0x0F
        )));
    };
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 != 0 {
        return Err(ProtocolError::protocol("server frame is masked"));
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::protocol(format_args!(
                "{} frame is fragmented",
                opcode.name()
            )));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            // 126/127 announce an extended length, which a control frame may not have.
            return Err(ProtocolError::protocol(format_args!(
                "{} frame payload exceeds 125 bytes",
                opcode.name()
            )));
        }
    }
    let (payload_len, header_len) = match len7 {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(ext);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(ProtocolError::protocol(
                    "payload length has the most significant bit set",
                ));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    Ok(Some(Header {
        fin,
        opcode,
        header_len,
        payload_len,
    }))
}

/// One frame borrowed from the input (server frames are unmasked, so the payload is a slice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The payload, borrowed from the input.
    pub payload: &'a [u8],
}

/// Parses one server frame from `buf` without copying it.
///
/// Returns `Ok(None)` while the frame is incomplete and `Ok(Some((frame, consumed)))` once it is
/// whole. A payload over `max_payload` is refused (1009) as soon as the header is readable.
pub fn parse_frame(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(RawFrame<'_>, usize)>, ProtocolError> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    if header.payload_len > max_payload as u64 {
        return Err(ProtocolError::too_big(
            "frame",
            header.payload_len,
            max_payload,
        ));
    }
    // Fits in usize: payload_len <= max_payload.
    let total = header.header_len + header.payload_len as usize;
    let Some(payload) = buf.get(header.header_len..total) else {
        return Ok(None);
    };
    Ok(Some((
        RawFrame {
            fin: header.fin,
            opcode: header.opcode,
            payload,
        },
        total,
    )))
}

/// A text or binary message being reassembled from its fragments.
#[derive(Clone, Debug)]
pub struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// The UTF-8 check of `data` so far (text only).
    utf8: Utf8Check,
}

impl Fragments {
    /// Bytes reassembled so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no payload has been reassembled yet.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes the reassembly buffer holds room for.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }
}

/// The frame parser with what it carries from one call to the next: the fragmented message
/// being reassembled, and how much of an incomplete text frame's payload is already known to
/// be valid UTF-8. Pure: it never does I/O and never buffers input on its own.
///
/// Feed it one input stream: each call starts where the bytes the previous call consumed end
/// (an incomplete frame is passed again, with more of it, on the next call).
#[derive(Clone, Debug)]
pub struct Decoder {
    fragments: Option<Box<Fragments>>,
    /// The largest frame payload or reassembled message.
    max_frame: u32,
    /// Payload bytes of the incomplete text frame at the head of the input already checked;
    /// the check is on a character boundary there, so it resumes from a clean state (or, at 0,
    /// from the fragmented message's state).
    checked: u32,
}

impl Decoder {
    /// A decoder refusing frames and messages over `max_frame` bytes (at most 4 GiB - 1).
    pub fn new(max_frame: usize) -> Self {
        Self {
            fragments: None,
            max_frame: u32::try_from(max_frame).unwrap_or(u32::MAX),
            checked: 0,
        }
    }

    /// The largest frame payload or reassembled message accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame as usize
    }

    /// Whether a fragmented message is unfinished.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// The fragmented message being reassembled, if any.
    pub fn fragments(&self) -> Option<&Fragments> {
        self.fragments.as_deref()
    }

    /// Forgets the message in progress (the connection failed or closed).
    pub fn clear(&mut self) {
        self.fragments = None;
        self.checked = 0;
    }

    /// Decodes the next frame in `buf`, reassembling fragmented messages.
    ///
    /// Returns `Ok(None)` while `buf` holds no complete frame, and `Ok(Some((frame, consumed)))`
    /// otherwise, where `frame` is `None` when the frame was a fragment kept for reassembly.
    /// The frame size limit bounds a single frame's payload and a reassembled message's total
    /// (1009, checked from the header). Text is checked as UTF-8 as it arrives (1007): in each
    /// fragment, and in the part of a frame that is here while the rest is not. Control frames
    /// may arrive between fragments.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Option<Frame>, usize)>, ProtocolError> {
        let Some(header) = parse_header(buf)? else {
            return Ok(None);
        };
        let max_frame = self.max_frame();
        match header.opcode {
            OpCode::Continuation => {
                let Some(partial) = self.fragments.as_deref() else {
                    return Err(ProtocolError::protocol(
                        "continuation frame without a fragmented message",
                    ));
                };
                let total = (partial.len() as u64).saturating_add(header.payload_len);
                if total > max_frame as u64 {
                    return Err(ProtocolError::too_big(
                        "fragmented message",
                        total,
                        max_frame,
                    ));
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.fragments.is_some() {
                    return Err(ProtocolError::protocol(format_args!(
                        "{} frame while a fragmented message is unfinished",
                        header.opcode.name()
                    )));
                }
                if header.payload_len > max_frame as u64 {
                    return Err(ProtocolError::too_big(
                        "frame",
                        header.payload_len,
                        max_frame,
                    ));
                }
            }
            // parse_header bounded control payloads to 125 bytes.
            OpCode::Close | OpCode::Ping | OpCode::Pong => {}
        }
        // Fits in usize: the payload is at most max_frame (or 125) bytes.
        let total = header.header_len + header.payload_len as usize;
        let Some(payload) = buf.get(header.header_len..total) else {
            // parse_header saw the whole header, so the rest of `buf` is payload.
            self.check_partial_text(header.opcode, &buf[header.header_len..])?;
            return Ok(None);
        };
        let checked = std::mem::take(&mut self.checked) as usize;
        let frame = match header.opcode {
            OpCode::Text | OpCode::Binary => {
                let text = header.opcode == OpCode::Text;
                if header.fin {
                    Some(data_frame(text, payload.to_vec())?)
                } else {
                    let mut utf8 = Utf8Check::default();
                    if text {
                        utf8.feed(&payload[checked.min(payload.len())..])
                            .map_err(|_| invalid_text())?;
                    }
                    self.fragments = Some(Box::new(Fragments {
                        text,
                        data: payload.to_vec(),
                        utf8,
                    }));
                    None
                }
            }
            OpCode::Continuation => {
                let Some(partial) = self.fragments.as_deref_mut() else {
                    // Checked above; kept as an error rather than a panic.
                    return Err(ProtocolError::protocol(
                        "continuation frame without a fragmented message",
                    ));
                };
                if partial.text {
                    let mut utf8 = if checked > 0 {
                        Utf8Check::default()
                    } else {
                        partial.utf8
                    };
                    utf8.feed(&payload[checked.min(payload.len())..])
                        .map_err(|_| invalid_text())?;
                    partial.utf8 = utf8;
                }
                grow_bounded(&mut partial.data, payload.len(), max_frame);
                partial.data.extend_from_slice(payload);
                if header.fin {
                    match self.fragments.take() {
                        Some(done) => {
                            let Fragments { text, data, utf8 } = *done;
                            if !utf8.is_complete() {
                                return Err(invalid_text());
                            }
                            Some(data_frame(text, data)?)
                        }
                        None => None,
                    }
                } else {
                    None
                }
            }
            OpCode::Ping => Some(Frame::Ping(payload.to_vec())),
            OpCode::Pong => Some(Frame::Pong(payload.to_vec())),
            OpCode::Close => Some(Frame::Close(parse_close(payload)?)),
        };
        Ok(Some((frame, total)))
    }

    /// Checks the part of an incomplete text frame (or text continuation) that is here, from
    /// where the last call stopped, so invalid text fails before the frame is whole.
    fn check_partial_text(&mut self, opcode: OpCode, here: &[u8]) -> Result<(), ProtocolError> {
        let before = match (opcode, self.fragments.as_deref()) {
            (OpCode::Text, _) => Utf8Check::default(),
            (OpCode::Continuation, Some(partial)) if partial.text => partial.utf8,
            _ => return Ok(()),
        };
        let from = (self.checked as usize).min(here.len());
        let mut utf8 = if from > 0 {
            Utf8Check::default()
        } else {
            before
        };
        utf8.feed(&here[from..]).map_err(|_| invalid_text())?;
        // Resume at the last character boundary next time; when the cut code point began
        // before this frame, that boundary is its start (0).
        let boundary = here.len().saturating_sub(utf8.pending());
        self.checked = u32::try_from(boundary).unwrap_or(0);
        Ok(())
    }
}

fn invalid_text() -> ProtocolError {
    ProtocolError::invalid_payload("text frame is not valid UTF-8")
}

/// Reserves room for `extra` more bytes, doubling like `Vec` but never past `limit`.
fn grow_bounded(data: &mut Vec<u8>, extra: usize, limit: usize) {
    let needed = data.len() + extra;
    if needed <= data.capacity() {
        return;
    }
    let target = needed
        .max(data.capacity().saturating_mul(2))
        .min(limit.max(needed));
    data.reserve_exact(target - data.len());
}

fn data_frame(text: bool, data: Vec<u8>) -> Result<Frame, ProtocolError> {
    if !text {
        return Ok(Frame::Binary(data));
    }
    // A second pass over text checked piece by piece before: without unsafe code, a String
    // is only made this way, and std's check is cheap next to the copy that brought the bytes.
    String::from_utf8(data)
        .map(Frame::Text)
        .map_err(|_| invalid_text())
}

/// Parses a close payload: empty, or a 2-byte code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(ProtocolError::protocol(format_args!(
                    "close frame with invalid code {code}"
                )));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| ProtocolError::invalid_payload("close reason is not valid UTF-8"))?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// Whether a close code may appear on the wire (RFC 6455 §7.4 and the IANA registry).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends a client frame, masked with a fresh random key, to `out`.
///
/// Control payloads must be at most 125 bytes (callers truncate; see `WsClient::queue_ping`).
pub fn encode_frame(opcode: OpCode, fin: bool, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_with_mask(opcode, fin, payload, rand::random(), out);
}

/// Appends a client frame masked with `mask` to `out` (byte-exact tests use a fixed mask).
pub fn encode_frame_with_mask(
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut Vec<u8>,
) {
    debug_assert!(!opcode.is_control() || (fin && payload.len() <= MAX_CONTROL_PAYLOAD));
    let len = payload.len();
    out.reserve(MAX_HEADER_LEN + len);
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Appends a masked close frame with `code` and `reason` (cut to 123 bytes on a character
/// boundary) to `out`.
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    encode_close_with_mask(code, reason, rand::random(), out);
}

/// [`encode_close`] with a fixed mask.
pub fn encode_close_with_mask(code: u16, reason: &str, mask: [u8; 4], out: &mut Vec<u8>) {
    let reason = truncate_utf8(reason, MAX_CLOSE_REASON);
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode_frame_with_mask(OpCode::Close, true, &payload[..2 + reason.len()], mask, out);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// XORs `buf` with the 4-byte masking key (RFC 6455 §5.3).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = buf.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut b = [0u8; 4];
        b.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(b) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::{
        Frame as TFrame, FrameHeader as TFrameHeader,
        coding::{Control, Data, OpCode as TOpCode},
    };

    const MAX: usize = 1 << 20;

    /// A server frame as tungstenite writes it (unmasked).
    fn server(opcode: TOpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header = TFrameHeader {
            is_final: fin,
            opcode,
            ..TFrameHeader::default()
        };
        let mut out = Vec::new();
        TFrame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .expect("format frame");
        out
    }

    fn text(fin: bool, payload: &[u8]) -> Vec<u8> {
        server(TOpCode::Data(Data::Text), fin, payload)
    }

    fn cont(fin: bool, payload: &[u8]) -> Vec<u8> {
        server(TOpCode::Data(Data::Continue), fin, payload)
    }

    fn decode_all(buf: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut decoder = Decoder::new(MAX);
        let mut frames = Vec::new();
        let mut off = 0;
        while let Some((frame, used)) = decoder.decode(&buf[off..])? {
            off += used;
            frames.extend(frame);
        }
        assert_eq!(off, buf.len(), "all input consumed");
        Ok(frames)
    }

    fn code_of(r: Result<Vec<Frame>, ProtocolError>) -> u16 {
        r.expect_err("must be refused").code
    }

    #[test]
    fn parses_every_length_encoding_like_tungstenite() {
        for len in [0usize, 1, 125, 126, 127, 1000, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = server(TOpCode::Data(Data::Binary), true, &payload);
            let (raw, used) = parse_frame(&wire, MAX).expect("valid").expect("complete");
            assert_eq!(used, wire.len(), "len {len}");
            assert_eq!(raw.payload, &payload[..]);
            assert_eq!(raw.opcode, OpCode::Binary);
            assert!(raw.fin);
            // Every strict prefix is incomplete, not an error.
            for cut in [0, 1, wire.len() / 2, wire.len() - 1] {
                if cut < wire.len() {
                    assert_eq!(parse_frame(&wire[..cut], MAX).expect("valid"), None);
                }
            }
        }
    }

    #[test]
    fn consumes_exactly_one_frame_of_several() {
        let mut wire = text(true, b"one");
        wire.extend(text(true, b"two"));
        assert_eq!(
            decode_all(&wire).expect("valid"),
            vec![Frame::Text("one".into()), Frame::Text("two".into())]
        );
    }

    #[test]
    fn rsv_bits_are_refused() {
        for bit in [0x40u8, 0x20, 0x10] {
            let mut wire = text(true, b"x");
            wire[0] |= bit;
            assert_eq!(code_of(decode_all(&wire)), CLOSE_PROTOCOL_ERROR);
        }
    }

    #[test]
    fn unknown_opcodes_are_refused() {
        for op in [0x3u8, 0x7, 0xB, 0xF] {
            let err = parse_header(&[0x80 | op, 0]).expect_err("unknown opcode");
            assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);
            assert!(err.reason.contains("unknown opcode"), "{}", err.reason);
        }
    }

    #[test]
    fn masked_server_frames_are_refused() {
        let mut wire = Vec::new();
        encode_frame_with_mask(OpCode::Text, true, b"hi", [1, 2, 3, 4], &mut wire);
        let err = parse_header(&wire).expect_err("masked");
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);
        assert_eq!(err.reason, "server frame is masked");
    }

    #[test]
    fn control_frames_must_be_small_and_final() {
        let big = server(TOpCode::Control(Control::Ping), true, &[0; 126]);
        assert_eq!(code_of(decode_all(&big)), CLOSE_PROTOCOL_ERROR);
        let fragmented = server(TOpCode::Control(Control::Pong), false, b"p");
        let err = decode_all(&fragmented).expect_err("fragmented control");
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);
        assert_eq!(err.reason, "pong frame is fragmented");
        // Exactly 125 is fine.
        let ok = server(TOpCode::Control(Control::Ping), true, &[7; 125]);
        assert_eq!(
            decode_all(&ok).expect("valid"),
            vec![Frame::Ping(vec![7; 125])]
        );
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        // Only the 10-byte header of a 5 MiB frame: no payload at all.
        let mut header = vec![0x82, 127];
        header.extend_from_slice(&(5u64 << 20).to_be_bytes());
        let err = parse_frame(&header, MAX).expect_err("too big");
        assert_eq!(err.code, CLOSE_TOO_BIG);
        assert_eq!(err.reason, "frame of 5242880 bytes exceeds limit 1048576");
        let err = Decoder::new(MAX).decode(&header).expect_err("too big");
        assert_eq!(err.code, CLOSE_TOO_BIG);
        // The top bit of a 64-bit length is a protocol error, not an overflow.
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            parse_header(&huge).expect_err("msb").code,
            CLOSE_PROTOCOL_ERROR
        );
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between() {
        let mut wire = text(false, "héllo ".as_bytes());
        wire.extend(server(TOpCode::Control(Control::Ping), true, b"hb"));
        // Split a multi-byte character across fragments: only the whole message must be UTF-8.
        let tail = "wörld".as_bytes();
        wire.extend(cont(false, &tail[..2]));
        wire.extend(cont(true, &tail[2..]));
        assert_eq!(
            decode_all(&wire).expect("valid"),
            vec![
                Frame::Ping(b"hb".to_vec()),
                Frame::Text("héllo wörld".into())
            ]
        );
        let mut bin = server(TOpCode::Data(Data::Binary), false, &[1, 2]);
        bin.extend(cont(true, &[3]));
        assert_eq!(
            decode_all(&bin).expect("valid"),
            vec![Frame::Binary(vec![1, 2, 3])]
        );
    }

    #[test]
    fn fragment_order_is_enforced() {
        let err = decode_all(&cont(true, b"x")).expect_err("orphan continuation");
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);
        let mut wire = text(false, b"a");
        wire.extend(text(true, b"b"));
        let err = decode_all(&wire).expect_err("new message inside a fragmented one");
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn reassembled_total_is_bounded_from_the_header() {
        let mut decoder = Decoder::new(10);
        let first = text(false, &[b'a'; 8]);
        let (frame, used) = decoder.decode(&first).expect("valid").expect("complete");
        assert_eq!((frame, used), (None, first.len()));
        // The next fragment's header alone (it claims 5 bytes; 8 + 5 > 10) is refused.
        let next = cont(true, &[b'b'; 5]);
        let err = decoder.decode(&next[..2]).expect_err("too big");
        assert_eq!(err.code, CLOSE_TOO_BIG);
        assert_eq!(
            err.reason,
            "fragmented message of 13 bytes exceeds limit 10"
        );
    }

    #[test]
    fn invalid_utf8_text_is_1007() {
        let err = decode_all(&text(true, &[0xFF, 0xFE])).expect_err("bad utf8");
        assert_eq!(err.code, CLOSE_INVALID_PAYLOAD);
        assert_eq!(err.reason, "text frame is not valid UTF-8");
        let mut wire = text(false, b"ok");
        wire.extend(cont(true, &[0xC3]));
        assert_eq!(code_of(decode_all(&wire)), CLOSE_INVALID_PAYLOAD);
        // Binary is not checked.
        let bin = server(TOpCode::Data(Data::Binary), true, &[0xFF]);
        assert_eq!(
            decode_all(&bin).expect("valid"),
            vec![Frame::Binary(vec![0xFF])]
        );
    }

    #[test]
    fn close_payloads() {
        let close = |p: &[u8]| decode_all(&server(TOpCode::Control(Control::Close), true, p));
        assert_eq!(close(b"").expect("valid"), vec![Frame::Close(None)]);
        let mut p = 1001u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"going away");
        assert_eq!(
            close(&p).expect("valid"),
            vec![Frame::Close(Some((1001, "going away".into())))]
        );
        assert_eq!(code_of(close(&[3])), CLOSE_PROTOCOL_ERROR);
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(
                code_of(close(&bad.to_be_bytes())),
                CLOSE_PROTOCOL_ERROR,
                "{bad}"
            );
        }
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.push(0xFF);
        assert_eq!(code_of(close(&p)), CLOSE_INVALID_PAYLOAD);
    }

    /// tungstenite writes the same bytes for the same frame and mask.
    fn tungstenite_masked(opcode: TOpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let header = TFrameHeader {
            opcode,
            mask: Some(mask),
            ..TFrameHeader::default()
        };
        let mut out = Vec::new();
        TFrame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .expect("format");
        out
    }

    #[test]
    fn encodings_are_byte_exact() {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        // RFC 6455 §5.7: a masked "Hello".
        let mut out = Vec::new();
        encode_frame_with_mask(OpCode::Text, true, b"Hello", mask, &mut out);
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58
            ]
        );
        for len in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut ours = Vec::new();
            encode_frame_with_mask(OpCode::Text, true, &payload, mask, &mut ours);
            assert_eq!(
                ours,
                tungstenite_masked(TOpCode::Data(Data::Text), &payload, mask),
                "text len {len}"
            );
        }
        for (op, t) in [
            (OpCode::Ping, TOpCode::Control(Control::Ping)),
            (OpCode::Pong, TOpCode::Control(Control::Pong)),
        ] {
            let mut ours = Vec::new();
            encode_frame_with_mask(op, true, b"beat", mask, &mut ours);
            assert_eq!(ours, tungstenite_masked(t, b"beat", mask));
        }
        let mut ours = Vec::new();
        encode_close_with_mask(1000, "bye", mask, &mut ours);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            ours,
            tungstenite_masked(TOpCode::Control(Control::Close), &payload, mask)
        );
    }

    #[test]
    fn random_masks_round_trip_through_tungstenite_parser() {
        let mut wire = Vec::new();
        encode_frame(OpCode::Text, true, b"payload", &mut wire);
        let mut cursor = std::io::Cursor::new(&wire);
        let (header, len) = TFrameHeader::parse(&mut cursor)
            .expect("valid")
            .expect("complete");
        let mask = header.mask.expect("client frames are masked");
        let mut body = wire[cursor.position() as usize..].to_vec();
        assert_eq!(len as usize, body.len());
        apply_mask(&mut body, mask);
        assert_eq!(body, b"payload");
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        encode_close_with_mask(1000, &reason, [0; 4], &mut out);
        let payload = &out[6..];
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn mask_is_an_involution_on_odd_lengths() {
        let mut data: Vec<u8> = (0..11).collect();
        apply_mask(&mut data, [9, 8, 7, 6]);
        assert_eq!(data[0], 9);
        assert_eq!(data[4], 4 ^ 9);
        apply_mask(&mut data, [9, 8, 7, 6]);
        assert_eq!(data, (0..11).collect::<Vec<u8>>());
    }
}
