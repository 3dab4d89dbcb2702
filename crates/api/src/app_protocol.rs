//! The local app protocol: JSON text frames on `ws://{listen}/streams/{namespace}/{name}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ConnectionId, DropReason, EventId, StreamId, StreamState};

/// A frame from the sidecar to the app.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToApp<'a> {
    /// A platform event. `data` is forwarded byte for byte.
    Event {
        /// The stream.
        stream: &'a StreamId,
        /// The event's stable id: ack it.
        id: &'a EventId,
        /// The platform's payload.
        data: &'a RawValue,
    },
    /// The upstream connection was reaped.
    #[serde(rename_all = "camelCase")]
    Dropped {
        /// The stream.
        stream: &'a StreamId,
        /// The reaped socket.
        connection_id: &'a ConnectionId,
        /// Why.
        reason: DropReason,
        /// Bytes queued for the app and not yet acked when the socket died.
        pending_bytes: u64,
        /// The last id the app acked (the resume point).
        last_acked_id: Option<&'a EventId>,
        /// Epoch milliseconds.
        at: u64,
    },
    /// Events were lost (upstream could not replay, or the app buffer overflowed): mark the
    /// period INCOMPLETE.
    Gap {
        /// The stream.
        stream: &'a StreamId,
        /// Start of the lost period, epoch milliseconds.
        from: u64,
        /// End of the lost period, epoch milliseconds.
        to: u64,
        /// Why.
        reason: &'a str,
    },
    /// Forwarding stopped; events are held until `resumed`.
    Paused {
        /// The stream.
        stream: &'a StreamId,
        /// Why (`token_mismatch`).
        reason: &'a str,
    },
    /// Forwarding goes on.
    Resumed {
        /// The stream.
        stream: &'a StreamId,
    },
    /// The stream changed state.
    State {
        /// The stream.
        stream: &'a StreamId,
        /// The new state.
        state: StreamState,
    },
}

impl ToApp<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, number or raw JSON.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"message\":\"{e}\"}}"))
    }
}

/// A frame from the app to the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum FromApp {
    /// The app has processed this event and every event delivered before it.
    Ack {
        /// The event id.
        id: EventId,
    },
}

/// An owned copy of a sidecar-to-app frame, for apps and tests that read the protocol.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AppFrame {
    /// See [`ToApp::Event`].
    Event {
        /// The stream.
        stream: StreamId,
        /// The event id.
        id: EventId,
        /// The payload.
        data: serde_json::Value,
    },
    /// See [`ToApp::Dropped`].
    #[serde(rename_all = "camelCase")]
    Dropped {
        /// The stream.
        stream: StreamId,
        /// The reaped socket.
        connection_id: ConnectionId,
        /// Why.
        reason: DropReason,
        /// Unacked bytes.
        pending_bytes: u64,
        /// The resume point.
        last_acked_id: Option<EventId>,
        /// Epoch milliseconds.
        at: u64,
    },
    /// See [`ToApp::Gap`].
    Gap {
        /// The stream.
        stream: StreamId,
        /// Start, epoch milliseconds.
        from: u64,
        /// End, epoch milliseconds.
        to: u64,
        /// Why.
        reason: String,
    },
    /// See [`ToApp::Paused`].
    Paused {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: String,
    },
    /// See [`ToApp::Resumed`].
    Resumed {
        /// The stream.
        stream: StreamId,
    },
    /// See [`ToApp::State`].
    State {
        /// The stream.
        stream: StreamId,
        /// The new state.
        state: StreamState,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_and_dropped_have_the_documented_shape() {
        let stream: StreamId = "cc/q".parse().expect("id");
        let id = EventId("e-1".into());
        let data = RawValue::from_string("{\"a\":1}".into()).expect("raw");
        let ev = ToApp::Event {
            stream: &stream,
            id: &id,
            data: &data,
        }
        .to_json();
        assert_eq!(
            ev,
            r#"{"type":"event","stream":"cc/q","id":"e-1","data":{"a":1}}"#
        );

        let conn = ConnectionId("c1".into());
        let dropped = ToApp::Dropped {
            stream: &stream,
            connection_id: &conn,
            reason: DropReason::PongTimeout,
            pending_bytes: 12,
            last_acked_id: Some(&id),
            at: 5,
        };
        let v: serde_json::Value = serde_json::from_str(&dropped.to_json()).expect("json");
        assert_eq!(v["reason"], "pong_timeout");
        assert_eq!(v["connectionId"], "c1");
        assert_eq!(v["pendingBytes"], 12);
        assert_eq!(v["lastAckedId"], "e-1");
        let back: AppFrame = serde_json::from_value(v).expect("parse back");
        assert!(matches!(
            back,
            AppFrame::Dropped {
                pending_bytes: 12,
                ..
            }
        ));
    }

    #[test]
    fn ack_parses_and_unknown_frames_are_refused() {
        let ack: FromApp = serde_json::from_str(r#"{"type":"ack","id":"e-9"}"#).expect("ack");
        assert_eq!(
            ack,
            FromApp::Ack {
                id: EventId("e-9".into())
            }
        );
        assert!(serde_json::from_str::<FromApp>(r#"{"type":"nack","id":"e"}"#).is_err());
        assert!(serde_json::from_str::<FromApp>(r#"{"type":"ack"}"#).is_err());
    }
}
