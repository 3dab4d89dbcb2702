//! The fault API: what can be injected (`POST /faults`, [`Emulator::fault`](crate::Emulator::fault))
//! and what the emulator reports back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame;

/// One fault to inject, as JSON tagged by `"action"` (kebab-case) with camelCase fields.
///
/// Every variant takes an optional `stream`; absent means every connected socket (or, for the
/// sticky pong settings, the global setting).
///
/// * Socket faults (`blackhole`, `reset`, `close`, `send-garbage`) act once on the sockets
///   connected now; later connections are healthy.
/// * Pong faults (`stop-pongs`, `delay-pongs`) are sticky: they act on the sockets connected now
///   and on every later socket of their scope, until `heal`.
/// * Request faults (`refuse-token`, `rate-limit`) arm a counter of requests to fail; a new one
///   replaces the one armed before.
///
/// ```
/// use streamkeeper_emulator::Fault;
/// let f: Fault = serde_json::from_str(r#"{"action":"delay-pongs","stream":"a","delayMs":500}"#).unwrap();
/// assert_eq!(f, Fault::DelayPongs { stream: Some("a".into()), delay_ms: 500 });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Fault {
    /// Stop reading and writing on the socket(s) but keep them open: a half-open peer.
    Blackhole {
        /// Only this stream's sockets; absent = all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
    },
    /// Keep sending events but never answer pings.
    StopPongs {
        /// Only this stream; absent = all streams (the global setting).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
    },
    /// Keep sending events but answer each ping `delayMs` late.
    DelayPongs {
        /// Only this stream; absent = all streams (the global setting).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// How late each pong goes out, in milliseconds.
        delay_ms: u64,
    },
    /// Clear pong faults (for new and existing sockets) and blackholes; without a stream it
    /// also disarms `refuse-token` and `rate-limit`.
    Heal {
        /// Only this stream; absent = everything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
    },
    /// Abortive close: SO_LINGER 0, then drop; the client sees ECONNRESET.
    Reset {
        /// Only this stream's sockets; absent = all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
    },
    /// A close frame with this code and reason, then TCP close once the client answers (or
    /// after 2 s). The code is sent as given, valid or not.
    Close {
        /// Only this stream's sockets; absent = all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// The close code.
        code: u16,
        /// The close reason (cut to 123 bytes).
        #[serde(default)]
        reason: String,
    },
    /// The next `count` token requests get 401 `{"error":"invalid_client"}`.
    RefuseToken {
        /// Ignored: token requests belong to no stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// How many requests to refuse.
        count: u64,
    },
    /// The next `count` token requests and the next `count` upgrade requests get 429 with
    /// `Retry-After: retryAfterSecs`.
    RateLimit {
        /// Only this stream's upgrades (token requests are always counted); absent = any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// How many token requests, and how many upgrade requests, to turn away.
        count: u64,
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Send one bad text frame.
    SendGarbage {
        /// Only this stream's sockets; absent = all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// What kind of bad frame.
        kind: GarbageKind,
        /// Payload size; defaults: 32 for `non-utf8` and `bad-json`, 16 MiB + 1 for `oversized`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<usize>,
    },
}

impl Fault {
    /// The stream this fault is scoped to, if any.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Fault::Blackhole { stream }
            | Fault::StopPongs { stream }
            | Fault::DelayPongs { stream, .. }
            | Fault::Heal { stream }
            | Fault::Reset { stream }
            | Fault::Close { stream, .. }
            | Fault::RefuseToken { stream, .. }
            | Fault::RateLimit { stream, .. }
            | Fault::SendGarbage { stream, .. } => stream.as_deref(),
        }
    }
}

/// The kind of bad frame [`Fault::SendGarbage`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GarbageKind {
    /// A text frame whose payload is not UTF-8 (bytes 0xFF): a protocol violation.
    NonUtf8,
    /// A valid UTF-8 text frame that is not JSON.
    BadJson,
    /// A valid UTF-8 text frame of the given size (`x` repeated).
    Oversized,
}

impl GarbageKind {
    /// The payload size used when the fault names none.
    fn default_bytes(self) -> usize {
        match self {
            GarbageKind::NonUtf8 | GarbageKind::BadJson => 32,
            GarbageKind::Oversized => (16 << 20) + 1,
        }
    }

    /// The whole frame (header and payload) to write, built once and shared by every socket.
    pub(crate) fn frame(self, bytes: Option<usize>) -> Bytes {
        let n = bytes.unwrap_or_else(|| self.default_bytes());
        let payload: Vec<u8> = match self {
            GarbageKind::NonUtf8 => vec![0xFF; n.max(1)],
            GarbageKind::BadJson => b"this is not json {"
                .iter()
                .copied()
                .cycle()
                .take(n.max(1))
                .collect(),
            GarbageKind::Oversized => vec![b'x'; n],
        };
        frame::encode(frame::OP_TEXT, &payload)
    }
}

/// What a fault did: `{"applied": N}`, the number of sockets affected (socket and pong
/// faults) or of requests armed to fail (request faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultReport {
    /// Sockets affected, or requests armed.
    pub applied: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_round_trips_with_kebab_actions_and_camel_fields() {
        let cases = [
            (
                r#"{"action":"blackhole"}"#,
                Fault::Blackhole { stream: None },
            ),
            (
                r#"{"action":"rate-limit","count":3,"retryAfterSecs":7}"#,
                Fault::RateLimit {
                    stream: None,
                    count: 3,
                    retry_after_secs: 7,
                },
            ),
            (
                r#"{"action":"send-garbage","stream":"s","kind":"non-utf8","bytes":4}"#,
                Fault::SendGarbage {
                    stream: Some("s".into()),
                    kind: GarbageKind::NonUtf8,
                    bytes: Some(4),
                },
            ),
            (
                r#"{"action":"close","code":4000,"reason":"bye"}"#,
                Fault::Close {
                    stream: None,
                    code: 4000,
                    reason: "bye".into(),
                },
            ),
        ];
        for (json, want) in cases {
            let got: Fault = serde_json::from_str(json).expect(json);
            assert_eq!(got, want);
            let back: Fault = serde_json::from_str(&serde_json::to_string(&got).expect("ser"))
                .expect("round trip");
            assert_eq!(back, want);
        }
    }

    #[test]
    fn bad_fault_json_names_the_problem() {
        let err = serde_json::from_str::<Fault>(r#"{"action":"explode"}"#).expect_err("unknown");
        assert!(err.to_string().contains("explode"), "{err}");
        let err = serde_json::from_str::<Fault>(r#"{"action":"delay-pongs","delay_ms":5}"#)
            .expect_err("snake case");
        assert!(err.to_string().contains("delay_ms"), "{err}");
        let err = serde_json::from_str::<Fault>(r#"{"action":"rate-limit","count":1}"#)
            .expect_err("missing");
        assert!(err.to_string().contains("retryAfterSecs"), "{err}");
    }

    #[test]
    fn garbage_frames_have_the_asked_size_and_kind() {
        let f = GarbageKind::NonUtf8.frame(Some(5));
        assert_eq!(&f[..], &[0x81, 5, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        let f = GarbageKind::BadJson.frame(Some(10));
        assert_eq!(&f[2..], b"this is no");
        let f = GarbageKind::Oversized.frame(Some(70_000));
        assert_eq!(f.len(), 70_000 + 10);
    }
}
