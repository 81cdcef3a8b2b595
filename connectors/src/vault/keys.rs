//! The API's token keys, read from one KV v2 secret.
//!
//! Layout of the secret (every value a string):
//!
//! | field | holds |
//! |---|---|
//! | `rs256/<kid>` | an RSA public key (PEM) verifying RS256 tokens whose header names `kid` |
//! | `INTERNAL_JWT_SECRET` | the HS256 secret (optional) |
//!
//! Other fields are ignored. The secret as a whole is the key set: a field
//! removed in Vault is a key no longer accepted after the next refresh.

use std::collections::BTreeMap;
use std::time::Duration;

use mmt_core::retry::RetryPolicy;
use mmt_core::telemetry::Metrics;

use super::client::{SecretData, VaultSession};
use super::config::VaultConfig;
use super::error::VaultError;

/// The field prefix of RS256 public keys.
pub const RS256_FIELD_PREFIX: &str = "rs256/";
/// The field of the HS256 secret.
pub const HS256_FIELD: &str = "INTERNAL_JWT_SECRET";

/// The longest key id accepted (it is matched against token headers only).
const MAX_KID_CHARS: usize = 128;

/// The keys one refresh read. `Debug` never shows the HS256 secret.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultKeys {
    /// RS256 public keys (PEM) by key id.
    pub rs256_pem: BTreeMap<String, String>,
    /// The HS256 secret, when the secret holds one.
    pub hs256_secret: Option<String>,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeys")
            .field("rs256_kids", &self.rs256_pem.keys().collect::<Vec<_>>())
            .field("hs256_secret", &self.hs256_secret.is_some())
            .finish()
    }
}

impl VaultKeys {
    /// Picks the keys out of a secret's fields; refuses a secret with no key
    /// at all (an emptied or mistyped path must not lock every caller out).
    pub fn from_secret(data: &SecretData) -> Result<Self, VaultError> {
        let text = |field: &str, value: &serde_json::Value| -> Result<String, VaultError> {
            value
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| VaultError::Malformed {
                    reason: format!("field {field} is not a string"),
                })
        };
        let mut rs256_pem = BTreeMap::new();
        let mut hs256_secret = None;
        for (field, value) in data {
            if field == HS256_FIELD {
                hs256_secret = Some(text(field, value)?);
            } else if let Some(kid) = field.strip_prefix(RS256_FIELD_PREFIX) {
                if !is_valid_kid(kid) {
                    return Err(VaultError::Malformed {
                        reason: format!(
                            "a key id after {RS256_FIELD_PREFIX} must be 1 to {MAX_KID_CHARS} \
                             printable ASCII characters"
                        ),
                    });
                }
                rs256_pem.insert(kid.to_owned(), text(field, value)?);
            }
        }
        if rs256_pem.is_empty() && hs256_secret.is_none() {
            return Err(VaultError::Malformed {
                reason: format!(
                    "the secret holds no {RS256_FIELD_PREFIX}<kid> field and no {HS256_FIELD}: \
                     keeping the keys held"
                ),
            });
        }
        Ok(Self {
            rs256_pem,
            hs256_secret,
        })
    }
}

fn is_valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_CHARS).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_graphic())
}

/// Vault as a source of token keys: a session, retried reads, and the
/// metrics that say when it fails.
#[derive(Debug)]
pub struct VaultKeySource {
    session: VaultSession,
    retry: RetryPolicy,
    metrics: Metrics,
}

impl VaultKeySource {
    /// Attempts per refresh: a blip is retried, an outage waits for the next refresh.
    const ATTEMPTS: u32 = 3;

    pub fn new(config: VaultConfig, metrics: Metrics) -> Result<Self, VaultError> {
        let retry = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2))
            .and_then(|policy| policy.with_max_attempts(Self::ATTEMPTS))
            .map_err(|err| VaultError::Client(err.to_string()))?;
        Ok(Self {
            session: VaultSession::new(config, metrics.clone())?,
            retry,
            metrics,
        })
    }

    /// The time between two refreshes.
    pub fn period(&self) -> Duration {
        self.session.config().refresh()
    }

    /// Reads the keys, retrying transient failures a few times. A failure is
    /// counted in `vault_refresh_failures_total`; the caller keeps the keys
    /// it holds.
    pub async fn fetch(&mut self) -> Result<VaultKeys, VaultError> {
        let fetched = self.fetch_with_retries().await;
        if fetched.is_err() {
            self.metrics.vault_refresh_failures_total.inc();
        }
        fetched
    }

    /// Counts a refresh that failed after [`Self::fetch`] succeeded (keys
    /// the caller could not use, e.g. a PEM that is no RSA key).
    pub fn count_failure(&self) {
        self.metrics.vault_refresh_failures_total.inc();
    }

    async fn fetch_with_retries(&mut self) -> Result<VaultKeys, VaultError> {
        let mut waits = self.retry.backoff();
        loop {
            let attempt = self
                .session
                .read_secret()
                .await
                .and_then(|data| VaultKeys::from_secret(&data));
            match attempt {
                Err(err) if err.class().is_retryable() => match waits.next() {
                    Some(wait) => {
                        tracing::debug!(error = %err, ?wait, "Vault read failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(err),
                },
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(value: serde_json::Value) -> SecretData {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn keys_are_read_by_kid_and_other_fields_ignored() {
        let keys = VaultKeys::from_secret(&secret(json!({
            "rs256/2026-12": "PEM A",
            "rs256/2027-01": "PEM B",
            "INTERNAL_JWT_SECRET": "s3cr3t-value-0123456789-abcdefghijk",
            "DATABASE_URL": "ignored",
        })))
        .unwrap();
        assert_eq!(
            keys.rs256_pem.keys().collect::<Vec<_>>(),
            ["2026-12", "2027-01"]
        );
        assert!(keys.hs256_secret.is_some());
        assert!(!format!("{keys:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_secret_without_keys_or_with_bad_fields_is_refused() {
        for bad in [
            json!({}),
            json!({"DATABASE_URL": "x"}),
            json!({"rs256/": "PEM"}),
            json!({"rs256/a b": "PEM"}),
            json!({"rs256/k1": 42}),
            json!({"INTERNAL_JWT_SECRET": {"nested": true}}),
        ] {
            let refused = VaultKeys::from_secret(&secret(bad.clone()));
            assert!(
                matches!(refused, Err(VaultError::Malformed { .. })),
                "{bad}"
            );
        }
    }
}
