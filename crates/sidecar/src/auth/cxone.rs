//! [`CxoneClient`]: NICE CXone authentication. OIDC discovery at
//! `{login}/.well-known/openid-configuration`; the first token from the access key
//! (`POST {login}/authentication/v1/token/access-key`, JSON); later ones by the discovery's
//! `token_endpoint` with `grant_type=refresh_token`, falling back to the access key when the
//! refresh token is refused; validation by `GET` on the discovery's `userinfo_endpoint`.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use url::Url;

use super::{
    ClientCredentials, Secret, Token, TokenError,
    client::{join, token_from, transport_error, validate_at},
};

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    token_endpoint: Url,
    userinfo_endpoint: Url,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AccessKeyRequest<'a> {
    access_key_id: &'a str,
    access_key_secret: &'a str,
}

/// One CXone credential's grants; keeps the refresh token (never shared with sessions).
#[derive(Debug)]
pub struct CxoneClient {
    http: reqwest::Client,
    login: Url,
    discovery: Option<Discovery>,
    refresh: Option<Secret>,
}

impl CxoneClient {
    /// A client for the auth host `login`.
    pub fn new(http: reqwest::Client, login: &Url) -> Self {
        Self {
            http,
            login: login.clone(),
            discovery: None,
            refresh: None,
        }
    }

    async fn discovery(&mut self) -> Result<Discovery, TokenError> {
        if let Some(d) = &self.discovery {
            return Ok(d.clone());
        }
        let url = join(&self.login, "/.well-known/openid-configuration");
        let resp = self.http.get(url).send().await.map_err(|e| {
            TokenError::Transport(format!("OIDC discovery: {}", transport_error(e)))
        })?;
        let status = resp.status().as_u16();
        if status == 429 {
            return Err(TokenError::RateLimited(super::client::retry_after(&resp)));
        }
        if !(200..300).contains(&status) {
            return Err(TokenError::Transport(format!(
                "OIDC discovery answered HTTP {status}"
            )));
        }
        let d: Discovery = resp
            .json()
            .await
            .map_err(|e| TokenError::Malformed(format!("OIDC discovery: {}", e.without_url())))?;
        self.discovery = Some(d.clone());
        Ok(d)
    }

    /// A new access token: by the refresh token when one is held, else (or when it is refused)
    /// by the access key.
    pub async fn fetch(&mut self, creds: &ClientCredentials) -> Result<Token, TokenError> {
        let discovery = match self.discovery().await {
            Ok(d) => d,
            Err(e) => return Err(e),
        };
        if let Some(refresh) = self.refresh.take() {
            match self.refresh_grant(&discovery, &refresh).await {
                Ok(token) => return Ok(token),
                Err(TokenError::Refused(status)) => {
                    tracing::info!(
                        status,
                        "refresh token refused; falling back to the access key"
                    );
                }
                Err(e) => {
                    // Not a refusal: the refresh token may still be good next time.
                    self.refresh = Some(refresh);
                    return Err(e);
                }
            }
        }
        self.access_key_grant(creds).await
    }

    async fn refresh_grant(
        &mut self,
        discovery: &Discovery,
        refresh: &Secret,
    ) -> Result<Token, TokenError> {
        let obtained = Instant::now();
        let resp = self
            .http
            .post(discovery.token_endpoint.clone())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
            ])
            .send()
            .await
            .map_err(|e| TokenError::Transport(transport_error(e)))?;
        let (token, next) = token_from(resp, obtained).await?;
        self.refresh = next;
        Ok(token)
    }

    async fn access_key_grant(&mut self, creds: &ClientCredentials) -> Result<Token, TokenError> {
        let obtained = Instant::now();
        let resp = self
            .http
            .post(join(&self.login, "/authentication/v1/token/access-key"))
            .json(&AccessKeyRequest {
                access_key_id: &creds.client_id,
                access_key_secret: creds.client_secret.expose(),
            })
            .send()
            .await
            .map_err(|e| TokenError::Transport(transport_error(e)))?;
        let (token, refresh) = token_from(resp, obtained).await?;
        self.refresh = refresh;
        Ok(token)
    }

    /// Proves a token works (`userinfo_endpoint`) before it is used.
    pub async fn validate(&mut self, token: &Token) -> Result<(), TokenError> {
        let discovery = self.discovery().await?;
        validate_at(&self.http, &discovery.userinfo_endpoint, token).await
    }
}
