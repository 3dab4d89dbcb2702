//! [`TokenSource`]: one credential's way to a valid token — its files, its grant, its
//! validation — whatever the platform.

use streamkeeper_api::config::Platform;
use url::Url;

use super::{CredentialFiles, CxoneClient, OAuthClient, Token, TokenError};

/// The grant flow of a platform.
#[derive(Debug)]
pub enum Grant {
    /// OAuth client credentials at `{login}/oauth/token` (generic, genesys).
    OAuth(OAuthClient),
    /// CXone: access key, then refresh tokens (cxone-dfo, cxone-aah).
    Cxone(CxoneClient),
}

impl Grant {
    /// The grant for `platform`: `login` is the token host, `api` the REST host (validation
    /// for the OAuth platforms).
    pub fn for_platform(
        platform: Platform,
        http: reqwest::Client,
        login: &Url,
        api: Option<&Url>,
    ) -> Result<Self, TokenError> {
        let validate_path = match platform {
            Platform::CxoneDfo | Platform::CxoneAah => {
                return Ok(Self::Cxone(CxoneClient::new(http, login)));
            }
            // Client-credentials tokens cannot call /users/me on Genesys.
            Platform::Genesys => "/api/v2/tokens/me",
            Platform::Generic => "/api/v2/users/me",
        };
        let api = api.ok_or_else(|| {
            TokenError::Credentials("endpoints.api (or endpoints.region) is required".into())
        })?;
        Ok(Self::OAuth(OAuthClient::new(
            http,
            login,
            api,
            validate_path,
        )))
    }
}

/// Where one credential's tokens come from.
#[derive(Debug)]
pub struct TokenSource {
    files: CredentialFiles,
    grant: Grant,
}

impl TokenSource {
    /// A source reading `files` for every grant.
    pub fn new(files: CredentialFiles, grant: Grant) -> Self {
        Self { files, grant }
    }

    /// A new token, validated: the credential files are read now (a rotated Secret is used at
    /// once), a token is granted, and it is proven to work before anyone uses it.
    pub async fn obtain(&mut self) -> Result<Token, TokenError> {
        let creds = self.files.read().await?;
        match &mut self.grant {
            Grant::OAuth(c) => {
                let token = c.fetch(&creds).await?;
                c.validate(&token).await?;
                Ok(token)
            }
            Grant::Cxone(c) => {
                let token = c.fetch(&creds).await?;
                c.validate(&token).await?;
                Ok(token)
            }
        }
    }
}
