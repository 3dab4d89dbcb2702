//! Client credentials read from the mounted Secret's directory (`credentials.dir`), afresh for
//! every grant (a rotated Secret is used for the next grant without a restart), with
//! `tokio::fs` so the runtime never blocks on the file system.

use std::path::{Path, PathBuf};

use streamkeeper_api::config::{Credentials, Platform};

use super::{Secret, TokenError};

/// An OAuth client id and secret (or a CXone access key id and secret).
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id or access key id (not secret, but kept out of logs anyway).
    pub client_id: String,
    /// The client secret or access key secret.
    pub client_secret: Secret,
}

/// Where one stream's credentials live: a directory and the two file names its platform uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    dir: PathBuf,
    id_file: &'static str,
    secret_file: &'static str,
}

impl CredentialFiles {
    /// The files of `platform` in the configured directory: `clientId`/`clientSecret`, or
    /// `accessKeyId`/`accessKeySecret` for CXone.
    pub fn new(platform: Platform, spec: &Credentials) -> Result<Self, TokenError> {
        let Some(dir) = &spec.dir else {
            return Err(TokenError::Credentials(
                "credentials.secret needs in-cluster Secret access, which this build does not have: \
                 mount the Secret and use credentials.dir"
                    .into(),
            ));
        };
        let (id_file, secret_file) = Self::names(platform);
        Ok(Self {
            dir: dir.to_path_buf(),
            id_file,
            secret_file,
        })
    }

    /// The file names `platform` reads.
    pub fn names(platform: Platform) -> (&'static str, &'static str) {
        match platform {
            Platform::CxoneDfo | Platform::CxoneAah => ("accessKeyId", "accessKeySecret"),
            Platform::Genesys | Platform::Generic => ("clientId", "clientSecret"),
        }
    }

    /// Reads both files now.
    pub async fn read(&self) -> Result<ClientCredentials, TokenError> {
        Ok(ClientCredentials {
            client_id: self.read_one(self.id_file).await?,
            client_secret: Secret::new(self.read_one(self.secret_file).await?),
        })
    }

    async fn read_one(&self, name: &str) -> Result<String, TokenError> {
        let path = self.dir.join(name);
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| TokenError::Credentials(format!("cannot read {}: {e}", path.display())))?;
        let value = text.trim().to_owned();
        if value.is_empty() {
            return Err(TokenError::Credentials(format!(
                "{} is empty",
                path.display()
            )));
        }
        Ok(value)
    }
}

impl ClientCredentials {
    /// Writes a `clientId`/`clientSecret` directory (for the demo and tests).
    pub fn write_dir(dir: &Path, client_id: &str, client_secret: &str) -> std::io::Result<()> {
        Self::write_files(dir, Platform::Generic, client_id, client_secret)
    }

    /// Writes the credential files `platform` reads (for the demo and tests). The secret is
    /// written to a temporary file and renamed, as a Secret volume update swaps it whole.
    pub fn write_files(
        dir: &Path,
        platform: Platform,
        id: &str,
        secret: &str,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let (id_file, secret_file) = CredentialFiles::names(platform);
        for (name, value) in [(id_file, id), (secret_file, secret)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, value)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = ClientCredentials {
            client_id: "id".into(),
            client_secret: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn credentials_are_read_per_platform_and_the_missing_file_is_named() {
        let tmp = streamkeeper_testkit::TempDir::new("creds");
        let dir = tmp.path();
        let spec = Credentials {
            dir: Some(dir.into()),
            secret: None,
        };
        ClientCredentials::write_dir(dir, "id\n", "sec\n").expect("write");
        let files = CredentialFiles::new(Platform::Genesys, &spec).expect("files");
        let c = files.read().await.expect("read");
        assert_eq!(
            (c.client_id.as_str(), c.client_secret.expose()),
            ("id", "sec")
        );
        // Rewritten on disk: the next read sees the new value, no restart.
        ClientCredentials::write_files(dir, Platform::Genesys, "id", "sec2").expect("rewrite");
        assert_eq!(
            files.read().await.expect("read").client_secret.expose(),
            "sec2"
        );
        let cxone = CredentialFiles::new(Platform::CxoneDfo, &spec).expect("files");
        let err = cxone.read().await.expect_err("no access key files");
        assert!(err.to_string().contains("accessKeyId"), "{err}");
        std::fs::remove_file(dir.join("clientSecret")).expect("rm");
        let err = files.read().await.expect_err("missing");
        assert!(err.to_string().contains("clientSecret"), "{err}");
    }
}
