//! [`OAuthClient`]: the OAuth client-credentials grant (`generic`, `genesys`) and the call
//! that validates a token.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::{ClientCredentials, Secret, Token, TokenError};

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub(super) access_token: String,
    pub(super) expires_in: u64,
    #[serde(default)]
    pub(super) refresh_token: Option<String>,
}

/// `base` with `path` appended to its path.
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

/// The `Retry-After` of a response, in seconds.
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What went wrong sending a request: the TLS problem when there is one (an untrusted
/// certificate says so), never the URL's query or a header.
pub(crate) fn transport_error(e: reqwest::Error) -> String {
    match crate::net::certificate_problem(&e) {
        Some(reason) => format!("TLS: the server certificate was refused: {reason}"),
        None => {
            let mut causes = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                causes.push_str(": ");
                causes.push_str(&s.to_string());
                source = s.source();
            }
            format!("{}{causes}", e.without_url())
        }
    }
}

/// Reads a token response.
pub(super) async fn token_from(
    resp: reqwest::Response,
    obtained: Instant,
) -> Result<(Token, Option<Secret>), TokenError> {
    let status = resp.status().as_u16();
    if status == 429 {
        return Err(TokenError::RateLimited(retry_after(&resp)));
    }
    if matches!(status, 400 | 401 | 403) {
        return Err(TokenError::Refused(status));
    }
    if !(200..300).contains(&status) {
        return Err(TokenError::Transport(format!("HTTP {status}")));
    }
    let body: TokenResponse = resp
        .json()
        .await
        .map_err(|e| TokenError::Malformed(e.without_url().to_string()))?;
    if body.access_token.is_empty() || body.expires_in == 0 {
        return Err(TokenError::Malformed(
            "empty access_token or zero expires_in".into(),
        ));
    }
    let token = Token {
        value: Secret::new(body.access_token),
        obtained,
        expires: obtained + Duration::from_secs(body.expires_in),
    };
    Ok((
        token,
        body.refresh_token
            .filter(|r| !r.is_empty())
            .map(Secret::new),
    ))
}

/// Proves a token works at `url` (a Bearer GET) before it is used.
pub(super) async fn validate_at(
    http: &reqwest::Client,
    url: &Url,
    token: &Token,
) -> Result<(), TokenError> {
    let resp = http
        .get(url.clone())
        .bearer_auth(token.value.expose())
        .send()
        .await
        .map_err(|e| TokenError::Transport(transport_error(e)))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        429 => Err(TokenError::RateLimited(retry_after(&resp))),
        s => Err(TokenError::Invalid(s)),
    }
}

/// Talks to `{login}/oauth/token` (client credentials: Basic auth, form body) and validates at
/// `{api}{validate_path}`.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    token_url: Url,
    validate_url: Url,
}

impl OAuthClient {
    /// A client for `{login}/oauth/token` and `{api}{validate_path}`.
    pub fn new(http: reqwest::Client, login: &Url, api: &Url, validate_path: &str) -> Self {
        Self {
            http,
            token_url: join(login, "/oauth/token"),
            validate_url: join(api, validate_path),
        }
    }

    /// The client-credentials grant.
    pub async fn fetch(&self, creds: &ClientCredentials) -> Result<Token, TokenError> {
        let obtained = Instant::now();
        let resp = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&creds.client_id, Some(creds.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| TokenError::Transport(transport_error(e)))?;
        token_from(resp, obtained).await.map(|(t, _)| t)
    }

    /// Proves a token works before it is used.
    pub async fn validate(&self, token: &Token) -> Result<(), TokenError> {
        validate_at(&self.http, &self.validate_url, token).await
    }
}
