//! Incremental UTF-8 validation of a text message that arrives in pieces (fragments, or parts of
//! one frame), so invalid text fails the connection as soon as the bad bytes arrive (RFC 6455
//! §8.1, Autobahn 6.4.*) rather than once the whole message is in.
//!
//! std's `from_utf8` does the work: on a piece it either accepts everything, or says where a
//! code point is cut short by the end of the piece (kept, at most 3 bytes, and completed with
//! the next piece), or where the first invalid byte is. No crate needed, and the common case
//! (ASCII JSON) runs std's word-at-a-time fast path.

/// The state of a UTF-8 check between pieces: the start of a code point cut by a piece
/// boundary (at most 3 bytes; empty on a character boundary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Check {
    pending: [u8; 3],
    pending_len: u8,
}

/// The bytes seen so far can never be valid UTF-8, whatever follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// How many bytes the code point that `lead` starts takes (`lead` is a valid lead byte).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        _ => 2,
    }
}

impl Utf8Check {
    /// Checks the next piece of the text. Fails on the first byte that cannot start or continue
    /// valid UTF-8; a code point cut by the end of `piece` is kept for the next one.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), InvalidUtf8> {
        let mut rest = piece;
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = sequence_len(self.pending[0]) - have;
            let take = need.min(rest.len());
            let mut point = [0u8; 4];
            point[..have].copy_from_slice(&self.pending[..have]);
            point[have..have + take].copy_from_slice(&rest[..take]);
            match std::str::from_utf8(&point[..have + take]) {
                Ok(_) => self.pending_len = 0,
                // Still short of its last byte: `piece` was too small to complete it.
                Err(e) if e.error_len().is_none() => {
                    self.keep(&point[..have + take]);
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            rest = &rest[take..];
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                self.keep(&rest[e.valid_up_to()..]);
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Whether the text so far ends on a character boundary (a message must, when it ends).
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// How many bytes at the end of the text so far belong to a cut code point (0 to 3).
    pub fn pending(&self) -> usize {
        usize::from(self.pending_len)
    }

    /// Keeps a cut code point (std reports at most 3 bytes of one).
    fn keep(&mut self, cut: &[u8]) {
        let len = cut.len().min(self.pending.len());
        self.pending[..len].copy_from_slice(&cut[..len]);
        self.pending_len = len as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` split at every pair of cut points and returns whether every split agrees
    /// with std's verdict on the whole.
    fn agrees_on_every_split(text: &[u8]) {
        let whole = std::str::from_utf8(text).is_ok();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let mut check = Utf8Check::default();
                let verdict = check.feed(&text[..a]).is_ok()
                    && check.feed(&text[a..b]).is_ok()
                    && check.feed(&text[b..]).is_ok()
                    && check.is_complete();
                assert_eq!(verdict, whole, "{text:02X?} split at {a}, {b}");
            }
        }
    }

    #[test]
    fn every_split_agrees_with_std() {
        for text in [
            "".as_bytes(),
            b"ascii only",
            "κόσμε €𝄞 ä".as_bytes(),
            &[0xF4, 0x90, 0x80, 0x80], // U+110000: out of range
            &[0xED, 0xA0, 0x80],       // a UTF-16 surrogate
            &[0xC0, 0xAF],             // overlong
            &[0xE2, 0x82],             // cut short at the end
            &[0x80],                   // a lone continuation byte
            &[b'a', 0xF0, 0x9D, 0x84, 0x9E, b'b', 0xFF],
        ] {
            agrees_on_every_split(text);
        }
    }

    #[test]
    fn fails_on_the_piece_that_holds_the_first_bad_byte() {
        let mut check = Utf8Check::default();
        check.feed("κόσμε".as_bytes()).expect("valid");
        // 0xF4 0x90 can start no code point (above U+10FFFF): fail now, not at the end.
        check
            .feed(&[0xF4])
            .expect("0xF4 may still start a valid code point");
        assert_eq!(check.feed(&[0x90]), Err(InvalidUtf8));
    }

    #[test]
    fn a_cut_code_point_is_completed_by_later_pieces() {
        let mut check = Utf8Check::default();
        let clef = "𝄞".as_bytes();
        for (i, byte) in clef.iter().enumerate() {
            check
                .feed(std::slice::from_ref(byte))
                .expect("valid so far");
            assert_eq!(check.pending(), (i + 1) % 4, "after byte {i}");
        }
        assert!(check.is_complete());
        check.feed(&clef[..2]).expect("a valid start");
        assert!(!check.is_complete(), "a message may not end here");
    }
}
