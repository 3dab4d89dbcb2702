//! Client credentials read from the mounted Secret's directory (`credentials.dir`).

use std::path::Path;

use streamkeeper_api::config::Credentials;

use super::{Secret, TokenError};

/// An OAuth client id and secret.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id (not secret, but kept out of logs anyway).
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
}

impl ClientCredentials {
    /// Reads `clientId` and `clientSecret` from the configured directory.
    pub fn load(spec: &Credentials) -> Result<Self, TokenError> {
        let Some(dir) = &spec.dir else {
            return Err(TokenError::Credentials(
                "credentials.secret needs in-cluster Secret access, which this build does not have: \
                 mount the Secret and use credentials.dir"
                    .into(),
            ));
        };
        let read = |name: &str| -> Result<String, TokenError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                TokenError::Credentials(format!("cannot read {}: {e}", path.display()))
            })?;
            let value = text.trim().to_owned();
            if value.is_empty() {
                return Err(TokenError::Credentials(format!(
                    "{} is empty",
                    path.display()
                )));
            }
            Ok(value)
        };
        Ok(Self {
            client_id: read("clientId")?,
            client_secret: Secret::new(read("clientSecret")?),
        })
    }

    /// Writes a credentials directory (for the demo and tests).
    pub fn write_dir(dir: &Path, client_id: &str, client_secret: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("clientId"), client_id)?;
        std::fs::write(dir.join("clientSecret"), client_secret)
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

    #[test]
    fn credentials_load_from_a_directory_and_name_the_missing_file() {
        let dir = std::env::temp_dir().join(format!("sk-creds-{}", std::process::id()));
        ClientCredentials::write_dir(&dir, "id\n", "sec\n").expect("write");
        let spec = Credentials {
            dir: Some(dir.clone()),
            secret: None,
        };
        let c = ClientCredentials::load(&spec).expect("load");
        assert_eq!(
            (c.client_id.as_str(), c.client_secret.expose()),
            ("id", "sec")
        );
        std::fs::remove_file(dir.join("clientSecret")).expect("rm");
        let err = ClientCredentials::load(&spec).expect_err("missing");
        assert!(err.to_string().contains("clientSecret"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
