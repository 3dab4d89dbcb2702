//! Errors of the WebSocket client.

use std::time::Duration;

use crate::net::NetError;

use super::frame::ProtocolError;

/// Why a WebSocket connection failed or ended. Messages never hold request headers (they may
/// carry tokens).
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// Connecting (resolve, TCP, proxy, TLS) failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The socket failed (reset, broken pipe, EOF in the middle of a frame).
    #[error("websocket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered the upgrade with a status other than 101.
    #[error("websocket upgrade refused with HTTP {status}{}{}",
        retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default(),
        if body.is_empty() { String::new() } else { format!(": {body:?}") })]
    Status {
        /// The HTTP status: 401/403 token refused, 429 rate limited, 5xx server trouble.
        status: u16,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
        /// The start of the response body (at most 512 bytes; empty when none was read).
        body: String,
    },
    /// The upgrade response was not a valid WebSocket handshake, or it timed out.
    #[error("websocket handshake: {0}")]
    Handshake(String),
    /// The server broke RFC 6455; `code` is the close code to report (1002, 1007, 1009).
    #[error("websocket protocol error {code}: {reason}")]
    Protocol {
        /// 1002 protocol error, 1007 invalid payload, 1009 too big.
        code: u16,
        /// What was wrong with the frame.
        reason: String,
    },
    /// The connection is closed (peer EOF, a close frame was received, or an earlier error
    /// ended it).
    #[error("websocket closed")]
    Closed,
}

impl WsError {
    /// The close code this error maps to, for protocol errors.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Protocol { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status of a refused upgrade.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ProtocolError> for WsError {
    fn from(err: ProtocolError) -> Self {
        Self::Protocol {
            code: err.code,
            reason: err.reason,
        }
    }
}
