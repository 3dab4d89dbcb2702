//! The Genesys REST routes: `/oauth/token` (shared with the generic dialect: the credentials
//! decide), `/api/v2/tokens/me`, and the notification channels and their subscriptions.

use http::header::CACHE_CONTROL;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::debug;

use super::{ChannelError, ChannelView, SubMode};
use crate::auth;
use crate::http::{Body, empty, error, json as respond, rate_limited, read_body, with_retry_after};
use crate::state::{Shared, TokenFault};
use crate::tokens::{Platform, TokenInfo};
use crate::util::{lock, uuid4};

/// The Genesys notifications API.
const NOTIFICATIONS: &str = "/api/v2/notifications/channels";

/// A Genesys error body.
fn genesys_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    respond(
        status,
        &json!({
            "message": message,
            "code": code,
            "status": status.as_u16(),
            "contextId": uuid4(),
            "details": [],
            "errors": [],
        }),
    )
}

/// 401 for a missing, unknown or expired token.
fn bad_credentials() -> Response<Body> {
    genesys_error(
        StatusCode::UNAUTHORIZED,
        "bad.credentials",
        "Invalid login credentials.",
    )
}

/// 404 for an unknown or stopped channel.
fn not_found() -> Response<Body> {
    genesys_error(
        StatusCode::NOT_FOUND,
        "not.found",
        "The requested channel could not be found.",
    )
}

/// 403 for `/api/v2/users/me` with a client-credentials token.
pub(crate) fn users_me_forbidden() -> Response<Body> {
    genesys_error(
        StatusCode::FORBIDDEN,
        "not.authorized.no.user",
        "This request requires a user context. Client credentials cannot be used for requests to this resource.",
    )
}

/// The 429 of an armed Genesys rate limit on this request, counted under `route`.
pub(crate) fn limited(
    shared: &Shared,
    method: &Method,
    path: &str,
    route: &str,
) -> Option<Response<Body>> {
    let secs = shared.take_rest_limit(Platform::Genesys, method.as_str(), path, route)?;
    let message = format!(
        "Rate limit exceeded the maximum [300] requests within [60] seconds. Retry the request in [{secs}] seconds"
    );
    let body = json!({
        "message": message,
        "code": "too.many.requests.retry.after",
        "status": 429,
        "messageParams": {"limit": "300", "interval": "60", "retryAfter": secs.to_string()},
        "contextId": uuid4(),
        "details": [],
        "errors": [],
    });
    Some(with_retry_after(
        respond(StatusCode::TOO_MANY_REQUESTS, &body),
        secs,
    ))
}

/// `POST /oauth/token`: a Genesys client gets a Genesys token, the generic client a generic
/// one.
pub(crate) async fn oauth_token(
    shared: &Shared,
    req: Request<Incoming>,
    route: &str,
) -> Response<Body> {
    match shared.take_token_fault() {
        Some(TokenFault::RateLimited(secs)) => {
            shared.count_rate_limited(route);
            return rate_limited(secs);
        }
        Some(TokenFault::Refused) => return error(StatusCode::UNAUTHORIZED, "invalid_client"),
        None => {}
    }
    if let Some(resp) = limited(shared, &Method::POST, "/oauth/token", route) {
        return resp;
    }
    let creds = auth::basic_credentials(req.headers());
    let Ok(body) = read_body(req).await else {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let grant_ok = url::form_urlencoded::parse(&body)
        .any(|(k, v)| k == "grant_type" && v == "client_credentials");
    let Some((id, secret)) = creds else {
        return error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let genesys = auth::accepts(&shared.cfg.genesys.clients, &id, &secret);
    let generic = id == shared.cfg.client_id
        && auth::same(secret.as_bytes(), shared.cfg.client_secret.as_bytes());
    let (platform, ttl) = match (genesys, generic) {
        (true, _) => (Platform::Genesys, shared.cfg.genesys.token_ttl),
        (false, true) => (Platform::Generic, shared.cfg.token_ttl),
        (false, false) => {
            debug!(grant_ok, "token request refused: unknown client");
            shared.count_token(Platform::Genesys, &id, "client_credentials", None);
            return error(StatusCode::UNAUTHORIZED, "invalid_client");
        }
    };
    let refused = platform == Platform::Genesys && shared.take_genesys_refusal(&id);
    if !grant_ok || refused {
        debug!(grant_ok, refused, "token request refused");
        shared.count_token(platform, &id, "client_credentials", None);
        return error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let (token, info) = lock(&shared.tokens).issue_for(platform, &id, ttl);
    shared.count_token(platform, &id, "client_credentials", Some(info.serial));
    let mut resp = respond(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl.as_secs(),
        }),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The live token of a request, of `platform` when given.
fn token_of(
    shared: &Shared,
    req: &Request<Incoming>,
    platform: Option<Platform>,
) -> Option<(String, TokenInfo)> {
    let token = auth::bearer(req.headers())?;
    let info = lock(&shared.tokens).check(token, platform)?;
    Some((token.to_string(), info))
}

/// `GET /api/v2/tokens/me`: what the token is, for any live token.
pub(crate) fn tokens_me(shared: &Shared, req: &Request<Incoming>, route: &str) -> Response<Body> {
    if let Some(resp) = limited(shared, req.method(), req.uri().path(), route) {
        return resp;
    }
    let Some((_, info)) = token_of(shared, req, None) else {
        return bad_credentials();
    };
    let left = info
        .expires
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs();
    respond(
        StatusCode::OK,
        &json!({
            "name": format!("{} token", info.client),
            "homeOrganization": {"id": "emulated-org", "name": "Emulated Org"},
            "OAuthClient": {"id": info.client, "name": info.client, "organization": {"id": "emulated-org"}},
            "authorizedScope": ["notifications"],
            "expiresIn": left,
        }),
    )
}

/// Everything under `/api/v2/notifications/channels`.
pub(crate) async fn notifications(
    shared: &Shared,
    req: Request<Incoming>,
    route: &str,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Some(resp) = limited(shared, &method, &path, route) {
        return resp;
    }
    let Some((token, info)) = token_of(shared, &req, Some(Platform::Genesys)) else {
        return if method == Method::HEAD {
            empty(StatusCode::UNAUTHORIZED)
        } else {
            bad_credentials()
        };
    };
    let rest = path[NOTIFICATIONS.len()..].trim_start_matches('/');
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    let g = &shared.genesys;
    match (&method, id, tail) {
        (&Method::POST, "", None) => {
            let ch = g.create(shared, &info.client, &token, info.serial);
            respond(StatusCode::OK, &channel_json(&ch))
        }
        (&Method::GET, "", None) => {
            let entities: Vec<Value> = g
                .list(shared, &info.client)
                .iter()
                .map(channel_json)
                .collect();
            respond(StatusCode::OK, &json!({ "entities": entities }))
        }
        (&Method::HEAD, id, None) if !id.is_empty() => {
            if g.exists(shared, id) {
                empty(StatusCode::OK)
            } else {
                empty(StatusCode::NOT_FOUND)
            }
        }
        (m, id, Some("subscriptions")) if !id.is_empty() => {
            let id = id.to_string();
            subscriptions(shared, m.clone(), &id, &info.client, req).await
        }
        (_, "", None) => genesys_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method.not.allowed",
            "Method not allowed.",
        ),
        _ => genesys_error(StatusCode::NOT_FOUND, "not.found", "Resource not found."),
    }
}

/// `/channels/{id}/subscriptions`.
async fn subscriptions(
    shared: &Shared,
    method: Method,
    id: &str,
    client: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let g = &shared.genesys;
    let result = match method {
        Method::GET => g.topics(shared, id, client),
        Method::DELETE => g
            .subscribe(shared, id, Some(client), &[], SubMode::Clear)
            .map(|_| Vec::new()),
        Method::PUT | Method::POST => {
            let Ok(body) = read_body(req).await else {
                return bad_request("The request body could not be read.");
            };
            let topics = match topic_list(&body) {
                Ok(t) => t,
                Err(why) => return bad_request(&why),
            };
            let mode = if method == Method::PUT {
                SubMode::Replace
            } else {
                SubMode::Add
            };
            g.subscribe(shared, id, Some(client), &topics, mode)
        }
        _ => {
            return genesys_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method.not.allowed",
                "Method not allowed.",
            );
        }
    };
    match result {
        Ok(_) if method == Method::DELETE => empty(StatusCode::NO_CONTENT),
        Ok(topics) => respond(StatusCode::OK, &entities(&topics)),
        Err(e) => channel_error(&e),
    }
}

/// `{"entities":[{"id":T}, ...]}`.
pub(crate) fn entities(topics: &[String]) -> Value {
    let list: Vec<Value> = topics.iter().map(|t| json!({ "id": t })).collect();
    json!({ "entities": list })
}

/// The response for a failed channel call.
fn channel_error(e: &ChannelError) -> Response<Body> {
    match e {
        ChannelError::NotFound => not_found(),
        ChannelError::TooManyTopics { .. } | ChannelError::BadTopic(_) => {
            bad_request(&error_message(e))
        }
    }
}

/// The message of a failed channel call (REST body and socket reply).
pub(crate) fn error_message(e: &ChannelError) -> String {
    match e {
        ChannelError::NotFound => "The requested channel could not be found.".into(),
        ChannelError::TooManyTopics { would_have, max } => {
            format!("The channel would have {would_have} topics; a channel allows at most {max}.")
        }
        ChannelError::BadTopic(t) => format!("Invalid topic: {t:?}."),
    }
}

/// 400 `bad.request`.
fn bad_request(message: &str) -> Response<Body> {
    genesys_error(StatusCode::BAD_REQUEST, "bad.request", message)
}

/// The topics of a `[{"id": T}, ...]` body.
pub(crate) fn topic_list(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("The body is not JSON: {e}."))?;
    let Value::Array(items) = v else {
        return Err("The body must be a JSON array of {\"id\": topic}.".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("Item {i} has no string \"id\"."))
        })
        .collect()
}

/// A channel as the API shows it.
fn channel_json(ch: &ChannelView) -> Value {
    json!({"connectUri": ch.connect_uri, "id": ch.id, "expires": ch.expires})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_lists_must_be_arrays_of_ids() {
        assert_eq!(
            topic_list(br#"[{"id":"v2.a"},{"id":"v2.b","extra":1}]"#),
            Ok(vec!["v2.a".to_string(), "v2.b".to_string()])
        );
        assert!(topic_list(br#"{"id":"v2.a"}"#).is_err());
        assert!(
            topic_list(br#"[{"id":1}]"#)
                .expect_err("number")
                .contains("Item 0")
        );
        assert!(topic_list(b"nope").is_err());
    }
}
