//! CXone authentication: OIDC discovery, the access-key token, the refresh grant and userinfo.

use http::header::{CACHE_CONTROL, HOST, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tracing::debug;

use crate::auth;
use crate::fault::GrantKind;
use crate::http::{Body, json as respond, read_body, with_retry_after};
use crate::state::Shared;
use crate::tokens::{Platform, TokenInfo};
use crate::util::{lock, uuid4};

/// OIDC discovery.
pub(crate) const DISCOVERY: &str = "/.well-known/openid-configuration";
/// The access-key token endpoint.
pub(crate) const ACCESS_KEY: &str = "/authentication/v1/token/access-key";
/// The OAuth token endpoint (refresh grant).
pub(crate) const TOKEN: &str = "/auth/token";
/// OIDC userinfo.
pub(crate) const USERINFO: &str = "/auth/userinfo";

/// Marks a request that came over TLS (set by the connection, read for absolute URLs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OverTls;

/// An OAuth error body.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    respond(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// The 429 of an armed CXone rate limit on this request.
fn limited(shared: &Shared, req: &Request<Incoming>, route: &str) -> Option<Response<Body>> {
    let secs = shared.take_rest_limit(
        Platform::Cxone,
        req.method().as_str(),
        req.uri().path(),
        route,
    )?;
    let body = json!({
        "error": "rate_limit_exceeded",
        "error_description": format!("Retry in {secs} seconds"),
    });
    Some(with_retry_after(
        respond(StatusCode::TOO_MANY_REQUESTS, &body),
        secs,
    ))
}

/// `{scheme}://{host}` as the client addressed the emulator.
fn base(req: &Request<Incoming>) -> String {
    let scheme = if req.extensions().get::<OverTls>().is_some() {
        "https"
    } else {
        "http"
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// `GET /.well-known/openid-configuration`.
pub(crate) fn discovery(shared: &Shared, req: &Request<Incoming>, route: &str) -> Response<Body> {
    if let Some(resp) = limited(shared, req, route) {
        return resp;
    }
    let b = base(req);
    respond(
        StatusCode::OK,
        &json!({
            "issuer": b,
            "authorization_endpoint": format!("{b}/auth/authorize"),
            "token_endpoint": format!("{b}{TOKEN}"),
            "userinfo_endpoint": format!("{b}{USERINFO}"),
            "jwks_uri": format!("{b}/auth/jwks"),
            "response_types_supported": ["code", "token", "id_token"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "profile", "email"],
        }),
    )
}

/// The body of `POST /authentication/v1/token/access-key`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessKeyRequest {
    access_key_id: String,
    access_key_secret: String,
}

/// `POST /authentication/v1/token/access-key`.
pub(crate) async fn access_key(
    shared: &Shared,
    req: Request<Incoming>,
    route: &str,
) -> Response<Body> {
    if let Some(resp) = limited(shared, &req, route) {
        return resp;
    }
    let Ok(body) = read_body(req).await else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable body",
        );
    };
    let ask: AccessKeyRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("body must be {{\"accessKeyId\",\"accessKeySecret\"}}: {e}"),
            );
        }
    };
    let id = ask.access_key_id;
    let known = auth::accepts(&shared.cxone.cfg().access_keys, &id, &ask.access_key_secret);
    if !known || shared.take_cxone_refusal(GrantKind::AccessKey, &id) {
        debug!(known, "access-key token refused");
        shared.count_token(Platform::Cxone, &id, "access_key", None);
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The access key is invalid or inactive.",
        );
    }
    grant(shared, &id, "access_key")
}

/// `POST /auth/token` with `grant_type=refresh_token`.
pub(crate) async fn refresh(
    shared: &Shared,
    req: Request<Incoming>,
    route: &str,
) -> Response<Body> {
    if let Some(resp) = limited(shared, &req, route) {
        return resp;
    }
    let Ok(body) = read_body(req).await else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable body",
        );
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("grant_type") != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only refresh_token is supported here",
        );
    }
    let Some(r) = field("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token missing",
        );
    };
    // A refused refresh leaves the refresh token usable, so a later retry can succeed.
    let owner = lock(&shared.tokens).refresh_client(r);
    if let Some(owner) = &owner
        && shared.take_cxone_refusal(GrantKind::RefreshToken, owner)
    {
        shared.count_token(Platform::Cxone, owner, "refresh_token", None);
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token was refused.",
        );
    }
    let client = lock(&shared.tokens).redeem_refresh(r);
    let Some(client) = client else {
        debug!("refresh refused: unknown, used, expired or revoked");
        shared.count_token(
            Platform::Cxone,
            owner.as_deref().unwrap_or("unknown"),
            "refresh_token",
            None,
        );
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token is invalid or expired.",
        );
    };
    grant(shared, &client, "refresh_token")
}

/// A new access token and refresh token for access key `client`.
fn grant(shared: &Shared, client: &str, grant: &str) -> Response<Body> {
    let cfg = shared.cxone.cfg();
    let (access, info, refresh) = {
        let mut tokens = lock(&shared.tokens);
        let (access, info) = tokens.issue_for(Platform::Cxone, client, cfg.token_ttl);
        let refresh = tokens.issue_refresh(client, &access, cfg.refresh_ttl);
        (access, info, refresh)
    };
    shared.count_token(Platform::Cxone, client, grant, Some(info.serial));
    let mut resp = respond(
        StatusCode::OK,
        &json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": cfg.token_ttl.as_secs(),
            "refresh_token": refresh,
            "refresh_token_expires_in": cfg.refresh_ttl.as_secs(),
            "id_token": format!("emulated-id-token-{}", uuid4()),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The live CXone access token `token`, if it is one.
pub(crate) fn check(shared: &Shared, token: &str) -> Option<TokenInfo> {
    lock(&shared.tokens).check(token, Some(Platform::Cxone))
}

/// `GET /auth/userinfo`.
pub(crate) fn userinfo(shared: &Shared, req: &Request<Incoming>, route: &str) -> Response<Body> {
    if let Some(resp) = limited(shared, req, route) {
        return resp;
    }
    let info = auth::bearer(req.headers()).and_then(|t| check(shared, t));
    let Some(info) = info else {
        let mut resp = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token is invalid or expired.",
        );
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        return resp;
    };
    respond(
        StatusCode::OK,
        &json!({
            "sub": format!("user:{}", info.client),
            "tenantId": shared.cxone.cfg().tenant_id,
            "name": format!("{} (access key)", info.client),
        }),
    )
}
