//! The Vault session: AppRole login, token renewal before expiry (and a fresh
//! login when renewal fails), and KV version 2 reads, through `vaultrs`.
//!
//! The calls used are exactly `POST auth/<approle mount>/login`,
//! `POST auth/token/renew-self`, `GET <kv mount>/data/<path>` and, for the
//! transit key provider, `POST <transit mount>/encrypt/<key>`,
//! `POST <transit mount>/decrypt/<key>`, `GET <transit mount>/keys/<key>`
//! and `POST <transit mount>/keys/<key>/rotate`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mmt_core::telemetry::Metrics;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::config::{Credential, VaultConfig};
use super::error::VaultError;

/// What a KV v2 secret holds: field name → JSON value.
pub type SecretData = BTreeMap<String, serde_json::Value>;

/// The token held, and when it stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    /// When the token was issued or last renewed.
    pub(super) granted: Instant,
    /// Its time to live then; zero: it never expires (a root-like token).
    pub(super) ttl: Duration,
    /// Whether `renew-self` may extend it.
    pub(super) renewable: bool,
}

/// What to do with the token before the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenStep {
    /// Use it as it is.
    Keep,
    /// Extend it with `renew-self`.
    Renew,
    /// Log in again (no token, expired, or not renewable and near its end).
    Login,
}

impl Lease {
    /// The step due at `now` for a session that comes back every `period`.
    /// A token is renewed once two thirds of its lease are spent, or when it
    /// would not outlive two more periods, so that a refresh that fails once
    /// still finds a valid token at the next.
    pub(super) fn step(&self, now: Instant, period: Duration) -> TokenStep {
        if self.ttl.is_zero() {
            return TokenStep::Keep;
        }
        let age = now.saturating_duration_since(self.granted);
        if age >= self.ttl {
            return TokenStep::Login;
        }
        let left = self.ttl - age;
        if left > self.ttl / 3 && left > period.saturating_mul(2) {
            return TokenStep::Keep;
        }
        if self.renewable {
            TokenStep::Renew
        } else {
            TokenStep::Login
        }
    }

    /// Whether a lease just granted is too short to be worth renewing again
    /// (Vault caps renewals at the role's `token_max_ttl`): log in instead.
    fn nearly_spent(&self, period: Duration) -> bool {
        !self.ttl.is_zero() && self.ttl <= period
    }
}

/// One request to Vault, made with the session's token.
#[derive(Debug)]
pub(super) enum Call<'a> {
    /// `GET <kv mount>/data/<path>`.
    Kv(&'a str),
    /// `POST <mount>/encrypt/<key>`: base64 plaintext and associated data.
    Encrypt {
        mount: &'a str,
        key: &'a str,
        plaintext: &'a str,
        associated_data: &'a str,
    },
    /// `POST <mount>/decrypt/<key>`.
    Decrypt {
        mount: &'a str,
        key: &'a str,
        ciphertext: &'a str,
        associated_data: &'a str,
    },
    /// `GET <mount>/keys/<key>`.
    ReadKey { mount: &'a str, key: &'a str },
    /// `POST <mount>/keys/<key>/rotate`.
    RotateKey { mount: &'a str, key: &'a str },
}

/// What a [`Call`] answered.
pub(super) enum Reply {
    Secret(SecretData),
    /// A transit ciphertext, `vault:v<N>:<base64>`.
    Ciphertext(String),
    /// A transit plaintext (base64), wiped when dropped.
    Plaintext(zeroize::Zeroizing<String>),
    Key(Box<vaultrs::api::transit::responses::ReadKeyResponse>),
    Done,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Secret(_) => "Secret(***)",
            Self::Ciphertext(_) => "Ciphertext",
            Self::Plaintext(_) => "Plaintext(***)",
            Self::Key(_) => "Key",
            Self::Done => "Done",
        })
    }
}

fn unexpected_reply() -> VaultError {
    VaultError::Malformed {
        reason: "Vault's answer does not match the request".into(),
    }
}

/// A logged-in client of one Vault. Not shared: one task owns it.
pub struct VaultSession {
    config: VaultConfig,
    client: VaultClient,
    lease: Option<Lease>,
    metrics: Metrics,
}

impl std::fmt::Debug for VaultSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSession")
            .field("address", &self.config.address)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl VaultSession {
    /// A client for `config` (validated here); no request is made yet.
    pub fn new(config: VaultConfig, metrics: Metrics) -> Result<Self, VaultError> {
        config.validate().map_err(VaultError::Config)?;
        let client = build_client(&config)?;
        Ok(Self {
            config,
            client,
            lease: None,
            metrics,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Reads the KV v2 secret at the configured path, logging in or renewing
    /// the token first when due. A token Vault no longer honours (403) is
    /// replaced by a fresh login once.
    pub async fn read_secret(&mut self) -> Result<SecretData, VaultError> {
        let path = self.config.kv_path.clone();
        self.read_secret_at(&path).await
    }

    /// Reads the KV v2 secret at `path` of the configured KV mount (another
    /// secret than the token keys: database or broker credentials).
    pub async fn read_secret_at(&mut self, path: &str) -> Result<SecretData, VaultError> {
        match self.call(&Call::Kv(path)).await? {
            Reply::Secret(data) => Ok(data),
            _ => Err(unexpected_reply()),
        }
    }

    /// One request with a valid token: logs in or renews first when due, and
    /// replaces a token Vault no longer honours (403: revoked or expired
    /// behind our back) by one fresh login, then gives up.
    pub(super) async fn call(&mut self, call: &Call<'_>) -> Result<Reply, VaultError> {
        self.ensure_token().await?;
        match self.call_once(call).await {
            Err(VaultError::Status { code: 403, .. }) => {
                self.lease = None;
                self.login().await?;
                self.call_once(call).await
            }
            other => other,
        }
    }

    async fn call_once(&self, call: &Call<'_>) -> Result<Reply, VaultError> {
        use vaultrs::api::transit::requests::{DecryptDataRequest, EncryptDataRequest};
        let client = &self.client;
        match call {
            Call::Kv(path) => vaultrs::kv2::read::<SecretData>(client, &self.config.kv_mount, path)
                .await
                .map(Reply::Secret)
                .map_err(|err| VaultError::from_client("reading the secret", err)),
            Call::Encrypt {
                mount,
                key,
                plaintext,
                associated_data,
            } => {
                let mut options = EncryptDataRequest::builder();
                options.associated_data(associated_data.to_string());
                vaultrs::transit::data::encrypt(client, mount, key, plaintext, Some(&mut options))
                    .await
                    .map(|response| Reply::Ciphertext(response.ciphertext))
                    .map_err(|err| VaultError::from_client("transit encrypt", err))
            }
            Call::Decrypt {
                mount,
                key,
                ciphertext,
                associated_data,
            } => {
                let mut options = DecryptDataRequest::builder();
                options.associated_data(associated_data.to_string());
                vaultrs::transit::data::decrypt(client, mount, key, ciphertext, Some(&mut options))
                    .await
                    .map(|response| Reply::Plaintext(zeroize::Zeroizing::new(response.plaintext)))
                    .map_err(|err| VaultError::from_client("transit decrypt", err))
            }
            Call::ReadKey { mount, key } => vaultrs::transit::key::read(client, mount, key)
                .await
                .map(|response| Reply::Key(Box::new(response)))
                .map_err(|err| VaultError::from_client("reading the transit key", err)),
            Call::RotateKey { mount, key } => vaultrs::transit::key::rotate(client, mount, key)
                .await
                .map(|()| Reply::Done)
                .map_err(|err| VaultError::from_client("rotating the transit key", err)),
        }
    }

    /// Logs in, or renews the token, when [`Lease::step`] says so.
    pub async fn ensure_token(&mut self) -> Result<(), VaultError> {
        let step = self.lease.map_or(TokenStep::Login, |lease| {
            lease.step(Instant::now(), self.config.refresh())
        });
        match step {
            TokenStep::Keep => Ok(()),
            TokenStep::Login => self.login().await,
            TokenStep::Renew => match self.renew().await {
                Ok(()) => Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "Vault token renewal failed; logging in again");
                    self.lease = None;
                    self.login().await
                }
            },
        }
    }

    /// AppRole login; the credentials (and their files) are read now.
    async fn login(&mut self) -> Result<(), VaultError> {
        let role_id = read_credential("role_id", &self.config.role_id)?;
        let secret_id = read_credential("secret_id", &self.config.secret_id)?;
        let auth = vaultrs::auth::approle::login(
            &self.client,
            &self.config.approle_mount,
            &role_id,
            &secret_id,
        )
        .await
        .map_err(|err| VaultError::from_client("AppRole login", err))?;
        self.client.set_token(&auth.client_token);
        self.lease = Some(Lease {
            granted: Instant::now(),
            ttl: Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
        });
        tracing::info!(
            ttl_seconds = auth.lease_duration,
            renewable = auth.renewable,
            "logged in to Vault"
        );
        Ok(())
    }

    /// `renew-self`, counted in `vault_token_renew_{success,failure}_total`.
    async fn renew(&mut self) -> Result<(), VaultError> {
        let renewed = vaultrs::token::renew_self(&self.client, None)
            .await
            .map_err(|err| VaultError::from_client("token renewal", err));
        match renewed {
            Ok(auth) => {
                self.metrics.vault_token_renew_success_total.inc();
                let lease = Lease {
                    granted: Instant::now(),
                    ttl: Duration::from_secs(auth.lease_duration),
                    renewable: auth.renewable,
                };
                if lease.nearly_spent(self.config.refresh()) {
                    // At the role's maximum TTL: renewing again cannot help.
                    return self.login().await;
                }
                self.lease = Some(lease);
                Ok(())
            }
            Err(err) => {
                self.metrics.vault_token_renew_failure_total.inc();
                Err(err)
            }
        }
    }

    #[cfg(test)]
    pub(super) fn lease(&self) -> Option<Lease> {
        self.lease
    }

    #[cfg(test)]
    pub(super) fn age_lease(&mut self, by: Duration) {
        if let Some(lease) = &mut self.lease {
            lease.granted = lease.granted.checked_sub(by).unwrap_or(lease.granted);
        }
    }
}

/// The HTTP client: every setting explicit, so no `VAULT_*` variable that
/// vaultrs would read by default (`VAULT_SKIP_VERIFY`, `VAULT_TOKEN`) can
/// weaken it behind the configuration's back.
fn build_client(config: &VaultConfig) -> Result<VaultClient, VaultError> {
    // reqwest is built without a crypto provider of its own: the process's
    // one (ring, as rustls everywhere else in MMT). Installing twice is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut settings = VaultClientSettingsBuilder::default();
    // Validated: `address` panics on an unparsable URL.
    settings
        .address(&config.address)
        .ca_certs(
            config
                .ca_file
                .iter()
                .map(|path| path.to_string_lossy().into_owned())
                .collect(),
        )
        .identity(None)
        .timeout(Some(config.timeout()))
        .token(String::new())
        .verify(true)
        .wrapping(false)
        .namespace(config.namespace.clone());
    let settings = settings
        .build()
        .map_err(|err| VaultError::Client(err.to_string()))?;
    VaultClient::new(settings).map_err(|err| VaultError::Client(err.to_string()))
}

/// A credential's value; a file's content is trimmed (a trailing newline is
/// not part of the id).
fn read_credential(field: &'static str, credential: &Credential) -> Result<String, VaultError> {
    let value = match credential {
        Credential::Value(value) => value.trim().to_owned(),
        Credential::File(path) => std::fs::read_to_string(path)
            .map_err(|source| VaultError::Credential {
                field,
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned(),
    };
    if value.is_empty() {
        return Err(VaultError::EmptyCredential { field });
    }
    Ok(value)
}

impl VaultError {
    /// Classes a vaultrs error: Vault's status code when it answered, a
    /// transport failure when it did not.
    pub(super) fn from_client(during: &'static str, err: ClientError) -> Self {
        match err {
            ClientError::APIError { code, errors } => Self::Status {
                during,
                code,
                // Vault's own words ("permission denied", "invalid role or
                // secret ID"): never a secret, bounded in length.
                detail: errors.join("; ").chars().take(200).collect(),
            },
            ClientError::RestClientError {
                source: rustify::errors::ClientError::ServerResponseError { code, .. },
            } => Self::Status {
                during,
                code,
                detail: String::new(),
            },
            ClientError::RestClientError { source } => Self::Unreachable {
                during,
                reason: source_chain(&source),
            },
            malformed @ (ClientError::ResponseEmptyError
            | ClientError::ResponseDataEmptyError
            | ClientError::JsonParseError { .. }) => Self::Malformed {
                reason: format!("{during}: {malformed}"),
            },
            other => Self::Client(format!("{during}: {other}")),
        }
    }
}

/// An error and its causes, `a: b: c` (reqwest hides the useful part in a source).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn lease(ttl_secs: u64, renewable: bool) -> Lease {
        Lease {
            granted: Instant::now(),
            ttl: Duration::from_secs(ttl_secs),
            renewable,
        }
    }

    #[test]
    fn a_fresh_long_lease_is_kept() {
        let l = lease(3600, true);
        assert_eq!(l.step(l.granted, MINUTE), TokenStep::Keep);
        assert_eq!(l.step(l.granted + 30 * MINUTE, MINUTE), TokenStep::Keep);
    }

    #[test]
    fn a_lease_two_thirds_spent_is_renewed_before_it_expires() {
        let l = lease(3600, true);
        assert_eq!(l.step(l.granted + 41 * MINUTE, MINUTE), TokenStep::Renew);
        // Less than two refresh periods left, even if a third remains.
        let short = lease(300, true);
        assert_eq!(
            short.step(short.granted + 3 * MINUTE + Duration::from_secs(1), MINUTE),
            TokenStep::Renew
        );
    }

    #[test]
    fn an_expired_or_unrenewable_lease_means_a_new_login() {
        let l = lease(3600, true);
        assert_eq!(l.step(l.granted + 61 * MINUTE, MINUTE), TokenStep::Login);
        let fixed = lease(3600, false);
        assert_eq!(
            fixed.step(fixed.granted + 50 * MINUTE, MINUTE),
            TokenStep::Login
        );
        assert_eq!(fixed.step(fixed.granted, MINUTE), TokenStep::Keep);
    }

    #[test]
    fn a_token_without_ttl_is_kept() {
        let l = lease(0, false);
        assert_eq!(l.step(l.granted + 1000 * MINUTE, MINUTE), TokenStep::Keep);
    }

    #[test]
    fn credentials_from_files_are_trimmed_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret-id");
        std::fs::write(&file, "s-123\n").unwrap();
        let read = read_credential("secret_id", &Credential::File(file.clone())).unwrap();
        assert_eq!(read, "s-123");
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            read_credential("secret_id", &Credential::File(file)),
            Err(VaultError::EmptyCredential { field: "secret_id" })
        ));
        let missing = read_credential("role_id", &Credential::File(dir.path().join("none")));
        assert!(matches!(
            missing,
            Err(VaultError::Credential {
                field: "role_id",
                ..
            })
        ));
    }
}
