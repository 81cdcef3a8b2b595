//! HashiCorp Vault (or OpenBao): AppRole login, token renewal, and the API's
//! token keys read from a KV version 2 secret and refreshed periodically.
//!
//! - [`config`]: where to log in and what to read ([`VaultConfig`]).
//! - [`client`]: the session ([`VaultSession`]): login, renewal before expiry,
//!   a fresh login when renewal fails, KV v2 reads.
//! - [`keys`]: the key source ([`VaultKeySource`]) and the secret's layout.
//! - [`credentials`]: database and broker credentials read at start.
//! - [`transit`]: the transit engine as the key provider of encryption at
//!   rest ([`TransitKeyProvider`]).
//!
//! On a failed refresh the caller keeps the keys it holds;
//! `vault_refresh_failures_total` and `vault_token_renew_{success,failure}_total`
//! say what happened.

pub mod client;
pub mod config;
pub mod credentials;
pub mod error;
pub mod keys;
pub mod transit;

pub use client::VaultSession;
pub use config::{is_vault_path, Credential, VaultConfig};
pub use credentials::{read_credentials, Credentials};
pub use error::VaultError;
pub use keys::{VaultKeySource, VaultKeys};
pub use transit::{TransitConfig, TransitKeyProvider};

#[cfg(test)]
#[path = "../../../tests/common/fake_vault.rs"]
mod fake_vault;

#[cfg(test)]
mod tests;
