//! Service credentials (database, broker) read once at start from KV v2
//! secrets holding `username` and `password`.
//!
//! The read runs on a thread of its own with its own runtime, so it can be
//! called from any context, an async one included. Values are never logged:
//! [`Credentials`]' `Debug` shows the user name only, and the password is
//! wiped from memory when dropped.

use mmt_core::telemetry::Metrics;
use zeroize::Zeroizing;

use super::client::{SecretData, VaultSession};
use super::config::VaultConfig;
use super::error::VaultError;

/// The field of the user name.
pub const USERNAME_FIELD: &str = "username";
/// The field of the password.
pub const PASSWORD_FIELD: &str = "password";

/// A user name and its password.
pub struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl Credentials {
    /// The two fields of a secret (other fields are ignored).
    pub fn from_secret(path: &str, data: &SecretData) -> Result<Self, VaultError> {
        let field = |name: &str| -> Result<String, VaultError> {
            data.get(name)
                .and_then(serde_json::Value::as_str)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| VaultError::Malformed {
                    reason: format!("the secret {path} has no non-empty string field {name}"),
                })
        };
        Ok(Self {
            username: field(USERNAME_FIELD)?,
            password: Zeroizing::new(field(PASSWORD_FIELD)?),
        })
    }
}

/// Reads the credentials at each of `paths` (in the configured KV v2 mount)
/// with one login, in order.
pub fn read_credentials(
    config: &VaultConfig,
    paths: &[&str],
) -> Result<Vec<Credentials>, VaultError> {
    let metrics = Metrics::new().map_err(|err| VaultError::Client(err.to_string()))?;
    let mut session = VaultSession::new(config.clone(), metrics)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| VaultError::Client(format!("a runtime for Vault: {err}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                runtime.block_on(async {
                    let mut read = Vec::with_capacity(paths.len());
                    for path in paths {
                        let data = session.read_secret_at(path).await?;
                        read.push(Credentials::from_secret(path, &data)?);
                    }
                    Ok(read)
                })
            })
            .join()
            .map_err(|_| VaultError::Client("the Vault thread panicked".into()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_fields_are_needed_and_the_password_never_prints() {
        let data: SecretData =
            serde_json::from_value(json!({"username": "mmt", "password": "pa%41ss", "ttl": 3600}))
                .unwrap();
        let credentials = Credentials::from_secret("mmt/db", &data).unwrap();
        assert_eq!(credentials.username, "mmt");
        assert_eq!(credentials.password.as_str(), "pa%41ss");
        assert!(!format!("{credentials:?}").contains("pa%41ss"));
        for bad in [
            json!({"username": "mmt"}),
            json!({"username": "mmt", "password": ""}),
            json!({"username": 7, "password": "x"}),
        ] {
            let data: SecretData = serde_json::from_value(bad.clone()).unwrap();
            let err = Credentials::from_secret("mmt/db", &data).unwrap_err();
            assert!(matches!(err, VaultError::Malformed { .. }), "{bad}");
            assert!(err.to_string().contains("mmt/db"), "{err}");
        }
    }
}
