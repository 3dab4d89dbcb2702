//! [`TokenClient`]: the token endpoint (client-credentials grant) and the validation call.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::{ClientCredentials, Secret, Token, TokenError};

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// Talks to the token endpoint and the validation endpoint.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    token_url: Url,
    validate_url: Url,
    creds: ClientCredentials,
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl TokenClient {
    /// A client for `{login}/oauth/token` and `{api}{validate_path}`.
    pub fn new(
        http: reqwest::Client,
        login: &Url,
        api: &Url,
        validate_path: &str,
        creds: ClientCredentials,
    ) -> Self {
        Self {
            http,
            token_url: join(login, "/oauth/token"),
            validate_url: join(api, validate_path),
            creds,
        }
    }

    /// Client-credentials grant: Basic auth, form body.
    pub async fn fetch(&self) -> Result<Token, TokenError> {
        let obtained = Instant::now();
        let resp = self
            .http
            .post(self.token_url.clone())
            .basic_auth(
                &self.creds.client_id,
                Some(self.creds.client_secret.expose()),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| TokenError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        if status.as_u16() == 429 {
            return Err(TokenError::RateLimited(retry_after(&resp)));
        }
        if status.as_u16() == 400 || status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(TokenError::Refused(status.as_u16()));
        }
        if !status.is_success() {
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
        Ok(Token {
            value: Secret::new(body.access_token),
            obtained,
            expires: obtained + Duration::from_secs(body.expires_in),
        })
    }

    /// Proves a token works before it is used.
    pub async fn validate(&self, token: &Token) -> Result<(), TokenError> {
        let resp = self
            .http
            .get(self.validate_url.clone())
            .bearer_auth(token.value.expose())
            .send()
            .await
            .map_err(|e| TokenError::Transport(e.without_url().to_string()))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            429 => Err(TokenError::RateLimited(retry_after(&resp))),
            s => Err(TokenError::Invalid(s)),
        }
    }

    /// Fetches and validates.
    pub async fn obtain(&self) -> Result<Token, TokenError> {
        let token = self.fetch().await?;
        self.validate(&token).await?;
        Ok(token)
    }
}
