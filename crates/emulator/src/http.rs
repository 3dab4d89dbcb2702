//! Every HTTP endpoint on the emulator's one port: the generic dialect's token, identity and
//! stream-upgrade routes, plus `/faults`, `/stats` and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::fault::Fault;
use crate::socket::{self, Setup};
use crate::state::{Shared, TokenFault};
use crate::util::lock;

/// The response body type.
pub(crate) type Body = Full<Bytes>;

/// Largest request body read (token forms and fault JSON are tiny).
const MAX_BODY: usize = 64 * 1024;

/// Where streams live.
const STREAMS: &str = "/streams/";

/// Route one request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/stats") => json(StatusCode::OK, &shared.stats()),
        (&Method::POST, "/oauth/token") => token(&shared, req).await,
        (&Method::GET, "/api/v2/users/me") => users_me(&shared, req.headers()),
        (&Method::POST, "/faults") => faults(&shared, req).await,
        (&Method::GET, p) if p.len() > STREAMS.len() && p.starts_with(STREAMS) => {
            upgrade(&shared, req, &p[STREAMS.len()..])
        }
        (_, "/healthz" | "/stats" | "/oauth/token" | "/api/v2/users/me" | "/faults") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        (_, p) if p.len() > STREAMS.len() && p.starts_with(STREAMS) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// `POST /oauth/token`: client credentials in, a bearer token out.
async fn token(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    match shared.take_token_fault() {
        Some(TokenFault::RateLimited(secs)) => return rate_limited(secs),
        Some(TokenFault::Refused) => return error(StatusCode::UNAUTHORIZED, "invalid_client"),
        None => {}
    }
    let creds_ok = basic_credentials(req.headers()).is_some_and(|(id, secret)| {
        id == shared.cfg.client_id && secret == shared.cfg.client_secret
    });
    let Ok(body) = read_body(req).await else {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let grant_ok = url::form_urlencoded::parse(&body)
        .any(|(k, v)| k == "grant_type" && v == "client_credentials");
    if !creds_ok || !grant_ok {
        debug!(creds_ok, grant_ok, "token request refused");
        return error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let ttl = shared.cfg.token_ttl;
    let (token, _) = lock(&shared.tokens).issue(ttl);
    shared.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl.as_secs(),
        }),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /api/v2/users/me`: 200 for a valid bearer token, else 401.
fn users_me(shared: &Shared, headers: &HeaderMap) -> Response<Body> {
    if valid_bearer(shared, headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "invalid_token");
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"id": "emulated-user", "name": "Emulated User"}),
    )
}

/// `POST /faults`: inject a fault.
async fn faults(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Ok(body) = read_body(req).await else {
        return error(StatusCode::BAD_REQUEST, "body unreadable or over 64 KiB");
    };
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => json(StatusCode::OK, &shared.apply(fault)),
        Err(e) => error(StatusCode::BAD_REQUEST, &format!("bad fault: {e}")),
    }
}

/// `GET /streams/{name}`: check the request, register the socket, answer 101, and hand the
/// connection to [`socket::serve`] once hyper lets go of it.
fn upgrade(shared: &Arc<Shared>, mut req: Request<Incoming>, name: &str) -> Response<Body> {
    if let Some(secs) = shared.take_upgrade_rate_limit(name) {
        return rate_limited(secs);
    }
    let Some(token_expiry) = valid_bearer(shared, req.headers()) else {
        return error(StatusCode::UNAUTHORIZED, "invalid_token");
    };
    let accept = match websocket_accept(req.headers()) {
        Ok(accept) => accept,
        Err(bad) => return bad.response(),
    };
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let stream = shared.stream(name);
    // Subscribe before choosing the start, so no event falls between the two.
    let latest = stream.subscribe();
    let next_seq = stream.start_after(last_event_id);
    let (reg, ctl, pong) = shared.register(stream);
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared.spawn(socket::serve(
        on_upgrade,
        Setup {
            reg,
            ctl,
            pong,
            next_seq,
            latest,
            token_expiry,
        },
    ));
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Why an upgrade request is not a valid WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadUpgrade {
    /// No `Upgrade: websocket` / `Connection: upgrade`.
    NotWebSocket,
    /// `Sec-WebSocket-Version` is not 13.
    Version,
    /// No `Sec-WebSocket-Key`.
    NoKey,
}

impl BadUpgrade {
    /// The refusal sent for it.
    fn response(self) -> Response<Body> {
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
fn websocket_accept(headers: &HeaderMap) -> Result<HeaderValue, BadUpgrade> {
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

/// The expiry of the request's bearer token if it is issued and unexpired.
fn valid_bearer(shared: &Shared, headers: &HeaderMap) -> Option<tokio::time::Instant> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    lock(&shared.tokens).valid(token.trim())
}

/// The `(id, secret)` pair of a Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// The whole request body, at most [`MAX_BODY`] bytes.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ()> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| ())
}

/// 429 with `Retry-After` and the platform's body.
fn rate_limited(secs: u64) -> Response<Body> {
    let mut resp = json(
        StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({"message": "Rate limit exceeded", "status": 429}),
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// `{"error": what}` with `status`.
fn error(status: StatusCode, what: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": what }))
}

/// A JSON response.
fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Body::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode("id:se:cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&v).expect("header"));
        assert_eq!(
            basic_credentials(&h),
            Some(("id".to_string(), "se:cret".to_string()))
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(basic_credentials(&h), None);
    }

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
}
