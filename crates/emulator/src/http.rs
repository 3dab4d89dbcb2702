//! The router of the emulator's one port (every platform's routes and `/faults`, `/stats`,
//! `/healthz`) and the response helpers the platforms share.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_TYPE, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::fault::Fault;
use crate::state::Shared;
use crate::{cxone, generic, genesys};

/// The response body type.
pub(crate) type Body = Full<Bytes>;

/// Largest request body read (token forms, subscription lists and fault JSON).
const MAX_BODY: usize = 1 << 20;

/// Where generic streams live.
const STREAMS: &str = "/streams/";
/// Where Genesys channel sockets live.
const CHANNELS: &str = "/channels/";
/// The Genesys notifications API.
const NOTIFICATIONS: &str = "/api/v2/notifications/channels";

/// Route one request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/stats") => return json(StatusCode::OK, &shared.stats()),
        (&Method::POST, "/faults") => return faults(&shared, req).await,
        (_, "/healthz" | "/stats" | "/faults") => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        }
        _ => {}
    }
    let route = format!("{method} {}", route_name(&path));
    shared.count_rest(&route);
    let p = path.as_str();
    match (&method, p) {
        (&Method::POST, "/oauth/token") => genesys::rest::oauth_token(&shared, req, &route).await,
        (&Method::GET, "/api/v2/users/me") => {
            if let Some(limited) = genesys::rest::limited(&shared, &method, p, &route) {
                return limited;
            }
            generic::users_me(&shared, &req)
        }
        (&Method::GET, "/api/v2/tokens/me") => genesys::rest::tokens_me(&shared, &req, &route),
        (_, p) if p == NOTIFICATIONS || p.starts_with(&format!("{NOTIFICATIONS}/")) => {
            genesys::rest::notifications(&shared, req, &route).await
        }
        (&Method::GET, p) if p.len() > CHANNELS.len() && p.starts_with(CHANNELS) => {
            genesys::socket::upgrade(&shared, req, &p[CHANNELS.len()..])
        }
        (&Method::GET, p) if p.len() > STREAMS.len() && p.starts_with(STREAMS) => {
            generic::upgrade(&shared, req, &p[STREAMS.len()..])
        }
        (&Method::GET, cxone::auth::DISCOVERY) => cxone::auth::discovery(&shared, &req, &route),
        (&Method::POST, cxone::auth::ACCESS_KEY) => {
            cxone::auth::access_key(&shared, req, &route).await
        }
        (&Method::POST, cxone::auth::TOKEN) => cxone::auth::refresh(&shared, req, &route).await,
        (&Method::GET, cxone::auth::USERINFO) => cxone::auth::userinfo(&shared, &req, &route),
        (&Method::GET, cxone::dfo::PATH) => cxone::dfo::upgrade(&shared, req),
        (&Method::GET, cxone::aah::PATH) => cxone::aah::upgrade(&shared, req),
        (
            _,
            "/oauth/token"
            | "/api/v2/users/me"
            | "/api/v2/tokens/me"
            | cxone::auth::DISCOVERY
            | cxone::auth::ACCESS_KEY
            | cxone::auth::TOKEN
            | cxone::auth::USERINFO
            | cxone::dfo::PATH
            | cxone::aah::PATH,
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (_, p)
            if (p.len() > STREAMS.len() && p.starts_with(STREAMS))
                || (p.len() > CHANNELS.len() && p.starts_with(CHANNELS)) =>
        {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// The path with its ids replaced by placeholders, for stats.
fn route_name(path: &str) -> String {
    if let Some(rest) = path.strip_prefix(&format!("{NOTIFICATIONS}/")) {
        return match rest.split_once('/') {
            Some((_, tail)) => format!("{NOTIFICATIONS}/{{id}}/{tail}"),
            None => format!("{NOTIFICATIONS}/{{id}}"),
        };
    }
    if path.len() > CHANNELS.len() && path.starts_with(CHANNELS) {
        return format!("{CHANNELS}{{id}}");
    }
    if path.len() > STREAMS.len() && path.starts_with(STREAMS) {
        return format!("{STREAMS}{{name}}");
    }
    path.to_string()
}

/// `POST /faults`: inject a fault.
async fn faults(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Ok(body) = read_body(req).await else {
        return error(StatusCode::BAD_REQUEST, "body unreadable or over 1 MiB");
    };
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => json(StatusCode::OK, &shared.apply(fault)),
        Err(e) => error(StatusCode::BAD_REQUEST, &format!("bad fault: {e}")),
    }
}

/// Why an upgrade request is not a valid WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadUpgrade {
    /// No `Upgrade: websocket` / `Connection: upgrade`.
    NotWebSocket,
    /// `Sec-WebSocket-Version` is not 13.
    Version,
    /// No `Sec-WebSocket-Key`.
    NoKey,
}

impl BadUpgrade {
    /// The refusal sent for it.
    pub fn response(self) -> Response<Body> {
        let (status, what, header) = match self {
            BadUpgrade::NotWebSocket => (
                StatusCode::UPGRADE_REQUIRED,
                "websocket upgrade required",
                Some((UPGRADE, "websocket")),
            ),
            BadUpgrade::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "Sec-WebSocket-Version 13 required",
                Some((SEC_WEBSOCKET_VERSION, "13")),
            ),
            BadUpgrade::NoKey => (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key missing", None),
        };
        let mut resp = error(status, what);
        if let Some((name, value)) = header {
            resp.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        resp
    }
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request.
pub(crate) fn websocket_accept(headers: &HeaderMap) -> Result<HeaderValue, BadUpgrade> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        return Err(BadUpgrade::NotWebSocket);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(BadUpgrade::Version);
    }
    let key = headers.get(SEC_WEBSOCKET_KEY).ok_or(BadUpgrade::NoKey)?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&accept).map_err(|_| BadUpgrade::NoKey)
}

/// The 101 answer to a valid upgrade.
pub(crate) fn switching(accept: HeaderValue) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// The whole request body, at most [`MAX_BODY`] bytes.
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, ()> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| ())
}

/// 429 with `Retry-After` and the generic dialect's body.
pub(crate) fn rate_limited(secs: u64) -> Response<Body> {
    with_retry_after(
        json(
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({"message": "Rate limit exceeded", "status": 429}),
        ),
        secs,
    )
}

/// `resp` with `Retry-After: secs`.
pub(crate) fn with_retry_after(mut resp: Response<Body>, secs: u64) -> Response<Body> {
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// `{"error": what}` with `status`.
pub(crate) fn error(status: StatusCode, what: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": what }))
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Body::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An empty response.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = status;
    resp
}

/// A plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_headers_are_checked() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        // The RFC 6455 example.
        assert_eq!(
            websocket_accept(&h).expect("valid"),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(websocket_accept(&h), Err(BadUpgrade::Version));
        assert_eq!(
            BadUpgrade::Version.response().status(),
            StatusCode::UPGRADE_REQUIRED
        );
        h.remove(UPGRADE);
        assert_eq!(websocket_accept(&h), Err(BadUpgrade::NotWebSocket));
    }

    #[test]
    fn routes_hide_their_ids() {
        assert_eq!(
            route_name("/api/v2/notifications/channels/streaming-0-a/subscriptions"),
            "/api/v2/notifications/channels/{id}/subscriptions"
        );
        assert_eq!(
            route_name("/api/v2/notifications/channels/x"),
            "/api/v2/notifications/channels/{id}"
        );
        assert_eq!(
            route_name("/api/v2/notifications/channels"),
            "/api/v2/notifications/channels"
        );
        assert_eq!(route_name("/channels/abc"), "/channels/{id}");
        assert_eq!(route_name("/streams/q/1"), "/streams/{name}");
        assert_eq!(route_name("/oauth/token"), "/oauth/token");
    }
}
