//! The receive side of a connection, without I/O: what is kept between reads and how frames
//! are cut from them.
//!
//! Reads land in a buffer the caller owns (the client's per-thread scratch buffer); frames are
//! decoded from it directly, and only the bytes of an incomplete frame (or of frames after the
//! one returned) are copied into [`Inbound`]'s own `Vec`, which is freed once they are
//! consumed. An idle connection therefore holds no input buffer.

use super::frame::{self, Decoder, Frame, ProtocolError};

/// Partial-input capacity above which an over-sized buffer is shrunk after consuming from it.
const SHRINK_ABOVE: usize = 4 * 1024;

/// Input kept between reads, and the frame decoder's state.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// Bytes of an incomplete frame, or of frames not yet returned (empty, without capacity,
    /// when idle).
    partial: Vec<u8>,
    decoder: Decoder,
}

impl Inbound {
    /// Input state for frames of at most `max_frame` bytes; `leftover` is what the server sent
    /// right after its handshake answer.
    pub fn new(max_frame: usize, leftover: Vec<u8>) -> Self {
        let mut partial = leftover;
        partial.shrink_to_fit();
        Self {
            partial,
            decoder: Decoder::new(max_frame),
        }
    }

    /// The next frame from bytes kept from earlier reads, if they hold one.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.partial.is_empty() {
            return Ok(None);
        }
        let mut offset = 0;
        let result = loop {
            match self.decoder.decode(&self.partial[offset..]) {
                Ok(Some((Some(frame), used))) => {
                    offset += used;
                    break Ok(Some(frame));
                }
                Ok(Some((None, used))) => offset += used,
                Ok(None) => break Ok(None),
                Err(err) => break Err(err),
            }
        };
        self.consume(offset);
        result
    }

    /// Takes the bytes of one read and returns the first frame they complete, keeping only what
    /// is left over.
    pub fn take_read(&mut self, data: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        if !self.partial.is_empty() {
            self.partial.extend_from_slice(data);
            return self.next_buffered();
        }
        let mut offset = 0;
        loop {
            match self.decoder.decode(&data[offset..])? {
                Some((Some(frame), used)) => {
                    offset += used;
                    self.stash(&data[offset..]);
                    return Ok(Some(frame));
                }
                Some((None, used)) => offset += used,
                None => {
                    self.stash(&data[offset..]);
                    return Ok(None);
                }
            }
        }
    }

    /// Whether the input ends between messages (EOF here is a clean end).
    pub fn at_frame_boundary(&self) -> bool {
        self.partial.is_empty() && !self.decoder.in_message()
    }

    /// Drops everything kept (the connection failed or closed).
    pub fn clear(&mut self) {
        self.partial = Vec::new();
        self.decoder.clear();
    }

    /// Bytes kept from reads that are not consumed yet.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Capacity of the kept input, and of the message being reassembled.
    pub fn capacities(&self) -> (usize, usize) {
        (
            self.partial.capacity(),
            self.decoder
                .fragments()
                .map_or(0, frame::Fragments::capacity),
        )
    }

    /// Keeps unconsumed input, reserving exactly the incomplete frame's size when known.
    fn stash(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        if self.partial.is_empty()
            && let Ok(Some(header)) = frame::parse_header(rest)
        {
            // decode() already checked the size against max_frame.
            let total = usize::try_from(header.frame_len()).unwrap_or(usize::MAX);
            self.partial.reserve_exact(
                total
                    .min(self.decoder.max_frame() + frame::MAX_HEADER_LEN)
                    .max(rest.len()),
            );
        }
        self.partial.extend_from_slice(rest);
    }

    fn consume(&mut self, used: usize) {
        if used == 0 {
            return;
        }
        if used >= self.partial.len() {
            self.partial = Vec::new();
            return;
        }
        self.partial.drain(..used);
        // What is left may be longer than one frame (several frames came in one read), so
        // the bound on the next frame's size must not cap it (`clamp` panicked here).
        let needed = match frame::parse_header(&self.partial) {
            Ok(Some(header)) => usize::try_from(header.frame_len()).unwrap_or(usize::MAX),
            _ => 0,
        }
        .min(self.decoder.max_frame() + frame::MAX_HEADER_LEN)
        .max(self.partial.len());
        if self.partial.capacity() > SHRINK_ABOVE && self.partial.capacity() > needed * 2 {
            self.partial.shrink_to(needed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x81, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    /// A read that completes a kept partial header and brings many more frames than one frame
    /// limit's worth: what is left after the first frame is longer than any one frame may be.
    #[test]
    fn a_read_of_many_frames_after_a_partial_header_is_cut_into_all_of_them() {
        let mut wire = Vec::new();
        for i in 0..20u8 {
            wire.extend(text(&[b'a' + i; 10]));
        }
        let mut inbound = Inbound::new(16, wire[..1].to_vec());
        assert_eq!(inbound.next_buffered(), Ok(None));
        let mut frames = vec![inbound.take_read(&wire[1..]).expect("valid")];
        while let Some(frame) = inbound.next_buffered().expect("valid") {
            frames.push(Some(frame));
        }
        assert_eq!(frames.len(), 20);
        assert_eq!(frames[19], Some(Frame::Text("t".repeat(10))));
        assert!(inbound.at_frame_boundary());
        assert_eq!(inbound.capacities(), (0, 0), "nothing kept once consumed");
    }
}
