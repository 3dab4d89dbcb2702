//! Server-side RFC 6455 framing: parse masked client frames, encode unmasked server frames.
//!
//! The emulator frames by hand (rather than through tungstenite's protocol layer) so that it
//! decides itself whether and when a ping is answered, and can write frames no conforming
//! library would (invalid UTF-8 text).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Continuation frame.
pub(crate) const OP_CONT: u8 = 0x0;
/// Text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// Close code: the server is going away.
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error.
pub(crate) const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: text that is not UTF-8.
pub(crate) const CLOSE_BAD_DATA: u16 = 1007;
/// Close code: message too big.
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the socket's token expired (the generic dialect).
pub(crate) const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// One frame from a client, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low four bits of the first byte).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Bytes,
}

/// Why the bytes from a client are not a frame we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// An RFC 6455 violation; answered with close 1002.
    Protocol(&'static str),
    /// A payload above the configured limit; answered with close 1009.
    TooBig,
}

/// Take one complete client frame off the front of `buf`, or `None` while it is incomplete.
pub(crate) fn parse(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::Protocol("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let (len, mut off) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(FrameError::Protocol("bad control frame"));
    }
    let len = match usize::try_from(len) {
        Ok(n) if n <= max_payload => n,
        _ => return Err(FrameError::TooBig),
    };
    if buf.len() < off + 4 + len {
        return Ok(None);
    }
    let mask = [buf[off], buf[off + 1], buf[off + 2], buf[off + 3]];
    off += 4;
    buf.advance(off);
    let mut payload = buf.split_to(len);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// Append a final, unmasked frame header for a payload of `len` bytes.
pub(crate) fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | (opcode & 0x0F));
    if len < 126 {
        // Fits in the 7-bit length.
        out.put_u8(len as u8);
    } else if let Ok(n) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(n);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Append one final, unmasked frame.
pub(crate) fn put(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    put_header(out, opcode, payload.len());
    out.put_slice(payload);
}

/// One final, unmasked frame.
pub(crate) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put(&mut out, opcode, payload);
    out.freeze()
}

/// A close frame with `code` and `reason` (cut to 123 bytes on a character boundary).
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> BytesMut {
        let mask = [1u8, 2, 3, 4];
        let mut out = BytesMut::new();
        out.put_u8(first);
        if payload.len() < 126 {
            out.put_u8(0x80 | payload.len() as u8);
        } else if payload.len() <= 0xFFFF {
            out.put_u8(0x80 | 126);
            out.put_u16(payload.len() as u16);
        } else {
            out.put_u8(0x80 | 127);
            out.put_u64(payload.len() as u64);
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn parses_masked_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = masked(0x82, &payload);
            buf.put_slice(b"\x89"); // the start of the next frame stays
            let f = parse(&mut buf, 1 << 20).expect("valid").expect("complete");
            assert!(f.fin);
            assert_eq!(f.opcode, OP_BINARY);
            assert_eq!(&f.payload[..], &payload[..]);
            assert_eq!(&buf[..], b"\x89");
        }
    }

    #[test]
    fn waits_for_the_whole_frame() {
        let full = masked(0x81, b"hello world");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut part, 1024), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn rejects_what_rfc_6455_forbids_and_oversized_payloads() {
        let mut unmasked = BytesMut::from(&b"\x81\x02hi"[..]);
        assert_eq!(
            parse(&mut unmasked, 1024),
            Err(FrameError::Protocol("unmasked client frame"))
        );
        let mut rsv = masked(0xC1, b"x");
        assert!(matches!(
            parse(&mut rsv, 1024),
            Err(FrameError::Protocol(_))
        ));
        let mut opcode = masked(0x83, b"x");
        assert!(matches!(
            parse(&mut opcode, 1024),
            Err(FrameError::Protocol(_))
        ));
        let mut fragmented_ping = masked(0x09, b"x");
        assert!(matches!(
            parse(&mut fragmented_ping, 1024),
            Err(FrameError::Protocol(_))
        ));
        let mut big = masked(0x82, &[0u8; 200]);
        assert_eq!(parse(&mut big, 100), Err(FrameError::TooBig));
    }

    #[test]
    fn encodes_unmasked_frames_and_close_codes() {
        assert_eq!(&encode(OP_PONG, b"ab")[..], b"\x8A\x02ab");
        let long = encode(OP_TEXT, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        let huge = encode(OP_TEXT, &vec![b'x'; 70_000]);
        assert_eq!(&huge[..2], &[0x81, 127]);
        assert_eq!(huge.len(), 70_010);
        assert_eq!(&close(4001, "token expired")[..4], &[0x88, 15, 0x0F, 0xA1]);
        let cut = close(1000, &"é".repeat(100));
        assert_eq!(cut.len(), 2 + 2 + 122, "cut on a char boundary");
    }
}
