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
    /// A Genesys fault: `{"action":"genesys","fault":...}`.
    Genesys(GenesysFault),
    /// A CXone DFO event hub fault: `{"action":"cxone-dfo","fault":...}`.
    CxoneDfo(DfoFault),
    /// A CXone Agent Assist Hub fault: `{"action":"cxone-aah","fault":...}`.
    CxoneAah(AahFault),
    /// A CXone authentication fault: `{"action":"cxone","fault":...}`.
    Cxone(CxoneFault),
}

/// What a socket fault does to each socket it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SocketAct {
    Reset,
    Blackhole,
    Heal,
    StopPongs,
    DelayPongs(u64),
    Close(u16, String),
    Garbage(GarbageKind, Option<usize>),
}

/// The socket faults every platform has, with that platform's selectors, then its own faults.
macro_rules! platform_faults {
    (
        $(#[$m:meta])*
        $name:ident { $($(#[$sm:meta])* $sel:ident : $sty:ty),+ $(,)? }
        { $($extra:tt)* }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(
            tag = "fault",
            rename_all = "kebab-case",
            rename_all_fields = "camelCase",
            deny_unknown_fields
        )]
        pub enum $name {
            /// Abortive close (SO_LINGER 0): the client sees ECONNRESET.
            Reset {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
            },
            /// Stop reading and writing, keep the socket open: a hung peer.
            Blackhole {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
            },
            /// Undo a blackhole and pong faults on the sockets hit.
            Heal {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
            },
            /// Keep sending events but answer no ping (RFC 6455 or the platform's own).
            StopPongs {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
            },
            /// Answer each ping `delayMs` late.
            DelayPongs {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
                /// How late, in milliseconds.
                delay_ms: u64,
            },
            /// A close frame with this code and reason.
            Close {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
                /// The close code (sent as given).
                code: u16,
                /// The close reason (cut to 123 bytes).
                #[serde(default)]
                reason: String,
            },
            /// One bad text frame.
            SendGarbage {
                $($(#[$sm])* #[serde(default, skip_serializing_if = "Option::is_none")] $sel: Option<$sty>,)+
                /// What kind of bad frame.
                kind: GarbageKind,
                /// Payload size (defaults as for [`Fault::SendGarbage`]).
                #[serde(default, skip_serializing_if = "Option::is_none")]
                bytes: Option<usize>,
            },
            $($extra)*
        }

        impl $name {
            /// The selectors and the act of a socket fault; `None` for the platform's own faults.
            #[allow(clippy::type_complexity)]
            pub(crate) fn socket(&self) -> Option<(($(Option<$sty>,)+), SocketAct)> {
                let (sel, act) = match self {
                    Self::Reset { $($sel),+ } => (($($sel.clone(),)+), SocketAct::Reset),
                    Self::Blackhole { $($sel),+ } => (($($sel.clone(),)+), SocketAct::Blackhole),
                    Self::Heal { $($sel),+ } => (($($sel.clone(),)+), SocketAct::Heal),
                    Self::StopPongs { $($sel),+ } => (($($sel.clone(),)+), SocketAct::StopPongs),
                    Self::DelayPongs { $($sel,)+ delay_ms } => {
                        (($($sel.clone(),)+), SocketAct::DelayPongs(*delay_ms))
                    }
                    Self::Close { $($sel,)+ code, reason } => {
                        (($($sel.clone(),)+), SocketAct::Close(*code, reason.clone()))
                    }
                    Self::SendGarbage { $($sel,)+ kind, bytes } => {
                        (($($sel.clone(),)+), SocketAct::Garbage(*kind, *bytes))
                    }
                    #[allow(unreachable_patterns)]
                    _ => return None,
                };
                Some((sel, act))
            }
        }
    };
}

platform_faults! {
    /// A fault on the emulated Genesys Cloud, tagged by `"fault"` (kebab-case, camelCase
    /// fields). Socket faults hit the sockets of the selected channels (`channel`: one channel
    /// id; `client`: every channel of that OAuth client; neither: every Genesys socket).
    ///
    /// ```
    /// use streamkeeper_emulator::{Fault, GenesysFault};
    /// let f: Fault = serde_json::from_str(
    ///     r#"{"action":"genesys","fault":"socket-closing","closeAfterMs":500}"#,
    /// ).unwrap();
    /// assert_eq!(f, Fault::Genesys(GenesysFault::SocketClosing {
    ///     channel: None, client: None, close_after_ms: Some(500), code: None,
    /// }));
    /// ```
    GenesysFault {
        /// Only this channel's socket.
        channel: String,
        /// Only the sockets of this OAuth client's channels.
        client: String,
    }
    {
        /// Send `v2.system.socket_closing`, then close `closeAfterMs` later.
        SocketClosing {
            /// Only this channel's socket.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            channel: Option<String>,
            /// Only the sockets of this OAuth client's channels.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            client: Option<String>,
            /// Delay between the message and the close (default 60,000).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            close_after_ms: Option<u64>,
            /// The close code (default 1001).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            code: Option<u16>,
        },
        /// Stop the selected channels now, as if they had reached their expiry.
        ExpireChannel {
            /// Only this channel.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            channel: Option<String>,
            /// Only this OAuth client's channels.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            client: Option<String>,
        },
        /// The selected Genesys tokens expire now (their channels stop).
        ExpireToken {
            /// Only this client's tokens.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            client: Option<String>,
            /// Only this token.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            token: Option<String>,
        },
        /// The selected Genesys tokens are revoked (their channels stop).
        RevokeToken {
            /// Only this client's tokens.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            client: Option<String>,
            /// Only this token.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            token: Option<String>,
        },
        /// The next `count` Genesys token requests (of `client`, if given) get 401.
        RefuseToken {
            /// Only this client's requests.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            client: Option<String>,
            /// How many.
            count: u64,
        },
        /// The next `count` Genesys REST calls (whose path starts with `path`, with `method`,
        /// when given) get 429 with the platform's body and `Retry-After`.
        RateLimit {
            /// A path prefix, e.g. `/api/v2/notifications/channels`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            path: Option<String>,
            /// Only this method (`GET`, `PUT`, ...).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            method: Option<String>,
            /// How many calls.
            count: u64,
            /// `Retry-After` seconds (also in the body).
            retry_after_secs: u64,
        },
    }
}

platform_faults! {
    /// A fault on the emulated CXone DFO event hub. Socket faults hit the sockets of the
    /// selected streams (`tenantId`, `userId`; neither: every DFO socket).
    DfoFault {
        /// Only sockets with this tenantId.
        tenant_id: String,
        /// Only sockets with this userId.
        user_id: String,
    }
    {
        /// Send `RATE_LIMIT_EXCEEDED` to the selected sockets now (then close them unless
        /// `close` is false), and answer the next `count` registers the same way.
        RateLimitExceeded {
            /// Only sockets with this tenantId.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            tenant_id: Option<String>,
            /// Only sockets with this userId.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            user_id: Option<String>,
            /// How many later registers get it too.
            #[serde(default)]
            count: u64,
            /// Close after sending it (default true).
            #[serde(default = "yes")]
            close: bool,
        },
    }
}

platform_faults! {
    /// A fault on the emulated CXone Agent Assist Hub. Socket faults hit the selected sockets
    /// (`socket`: the id its stats are under; `topic`: every socket subscribed to that contact
    /// id; neither: every AAH socket).
    AahFault {
        /// Only this socket.
        socket: u64,
        /// Only sockets subscribed to this contact id.
        topic: String,
    }
    {}
}

/// Which CXone token requests a `refuse-token` fault turns away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantKind {
    /// `POST /authentication/v1/token/access-key` (401).
    AccessKey,
    /// `grant_type=refresh_token` at the token endpoint (400 invalid_grant).
    RefreshToken,
    /// Both.
    #[default]
    Any,
}

/// A fault on CXone authentication (shared by DFO and AAH), tagged by `"fault"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "fault",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum CxoneFault {
    /// The selected access tokens expire now (their refresh tokens still work).
    ExpireToken {
        /// Only this access key's tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// Only this token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// The selected access tokens and their refresh tokens are revoked.
    RevokeToken {
        /// Only this access key's tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// Only this token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// The next `count` token requests of `grant` (of `client`, if given) are refused.
    RefuseToken {
        /// Only this access key's requests (refresh grants: the key the token was issued to).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// Which grant.
        #[serde(default)]
        grant: GrantKind,
        /// How many.
        count: u64,
    },
    /// The next `count` CXone REST calls (path prefix and method, when given) get 429.
    RateLimit {
        /// A path prefix, e.g. `/auth/token`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Only this method.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        /// How many calls.
        count: u64,
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
}

fn yes() -> bool {
    true
}

impl Fault {
    /// This fault with any token it names replaced by `<redacted>`, for logs.
    pub fn redacted(&self) -> Fault {
        let hide = |t: &Option<String>| t.as_ref().map(|_| "<redacted>".to_string());
        match self {
            Fault::Genesys(GenesysFault::ExpireToken { client, token }) => {
                Fault::Genesys(GenesysFault::ExpireToken {
                    client: client.clone(),
                    token: hide(token),
                })
            }
            Fault::Genesys(GenesysFault::RevokeToken { client, token }) => {
                Fault::Genesys(GenesysFault::RevokeToken {
                    client: client.clone(),
                    token: hide(token),
                })
            }
            Fault::Cxone(CxoneFault::ExpireToken { client, token }) => {
                Fault::Cxone(CxoneFault::ExpireToken {
                    client: client.clone(),
                    token: hide(token),
                })
            }
            Fault::Cxone(CxoneFault::RevokeToken { client, token }) => {
                Fault::Cxone(CxoneFault::RevokeToken {
                    client: client.clone(),
                    token: hide(token),
                })
            }
            other => other.clone(),
        }
    }

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
            Fault::Genesys(_) | Fault::CxoneDfo(_) | Fault::CxoneAah(_) | Fault::Cxone(_) => None,
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

/// What a fault did: `{"applied": N, "hit": [...]}`: the sockets, channels or tokens it hit
/// (named `genesys:CHANNEL#SOCKET`, `cxone-dfo:TENANT/USER#SOCKET`, `cxone-aah:#SOCKET`,
/// `generic:STREAM#SOCKET`, `channel:ID`, `token#SERIAL`), and `applied` = how many, plus the
/// requests armed to fail (request faults name nothing). The original (generic) actions report
/// the count only, as they always have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultReport {
    /// Things hit plus requests armed.
    pub applied: u64,
    /// What was hit, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hit: Vec<String>,
}

impl FaultReport {
    /// A report naming what was hit.
    pub(crate) fn hit(hit: Vec<String>) -> Self {
        Self {
            applied: hit.len() as u64,
            hit,
        }
    }

    /// A report of `count` requests armed.
    pub(crate) fn armed(count: u64) -> Self {
        Self {
            applied: count,
            hit: Vec::new(),
        }
    }

    /// This report plus `count` requests armed.
    pub(crate) fn plus_armed(mut self, count: u64) -> Self {
        self.applied += count;
        self
    }
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
    fn platform_faults_nest_under_their_action_and_hide_tokens_in_logs() {
        let f: Fault = serde_json::from_str(
            r#"{"action":"cxone","fault":"expire-token","token":"secret-token"}"#,
        )
        .expect("nested");
        assert_eq!(
            f,
            Fault::Cxone(CxoneFault::ExpireToken {
                client: None,
                token: Some("secret-token".into())
            })
        );
        let logged = serde_json::to_string(&f.redacted()).expect("ser");
        assert!(!logged.contains("secret-token"), "{logged}");
        let back: Fault =
            serde_json::from_str(&serde_json::to_string(&f).expect("ser")).expect("round trip");
        assert_eq!(back, f);
        let f: Fault = serde_json::from_str(
            r#"{"action":"cxone-aah","fault":"delay-pongs","socket":3,"delayMs":50}"#,
        )
        .expect("aah");
        assert_eq!(
            f,
            Fault::CxoneAah(AahFault::DelayPongs {
                socket: Some(3),
                topic: None,
                delay_ms: 50
            })
        );
        let f: Fault =
            serde_json::from_str(r#"{"action":"cxone-dfo","fault":"rate-limit-exceeded"}"#)
                .expect("defaults");
        assert_eq!(
            f,
            Fault::CxoneDfo(DfoFault::RateLimitExceeded {
                tenant_id: None,
                user_id: None,
                count: 0,
                close: true
            })
        );
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
