//! The API's token keys for `mmt serve`: the HS256 secret from the
//! environment, RS256 keys from a folder, or every key from Vault, and the
//! task that keeps them fresh.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mmt_api::auth::{
    keep_fresh, Hs256Update, KeyError, KeyFolder, KeyMaterial, KeyRing, KeySource,
};
use mmt_connectors::vault::{VaultKeySource, VaultKeys};
use mmt_core::telemetry::Metrics;
use mmt_pipeline::Config;

use crate::cli::ServeArgs;

/// How often the RS256 key folder is re-read.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Vault as a [`KeySource`]: the Vault secret is the whole key set, HS256
/// secret included (absent there, HS256 tokens stop verifying).
#[derive(Debug)]
pub struct VaultSource(VaultKeySource);

impl KeySource for VaultSource {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn period(&self) -> Duration {
        self.0.period()
    }

    async fn load(&mut self) -> Result<KeyMaterial, KeyError> {
        self.0
            .fetch()
            .await
            .map(material)
            .map_err(|err| KeyError::Source {
                source_name: "vault",
                reason: err.to_string(),
            })
    }

    fn rejected(&self) {
        self.0.count_failure();
    }
}

fn material(keys: VaultKeys) -> KeyMaterial {
    KeyMaterial {
        rs256_pem: keys
            .rs256_pem
            .into_iter()
            .map(|(kid, pem)| (kid, pem.into_bytes()))
            .collect(),
        hs256: keys
            .hs256_secret
            .map_or(Hs256Update::Remove, Hs256Update::Set),
    }
}

/// Where the keys are reloaded from while serving.
#[derive(Debug)]
pub enum Refresh {
    Folder(KeyFolder),
    /// Boxed: the session is large, and there is one of it.
    Vault(Box<VaultSource>),
}

impl Refresh {
    /// Starts the reload task on the current runtime.
    pub fn spawn(self, ring: Arc<KeyRing>) {
        match self {
            Self::Folder(folder) => {
                tokio::spawn(keep_fresh(ring, folder));
            }
            Self::Vault(vault) => {
                tokio::spawn(keep_fresh(ring, *vault));
            }
        }
    }
}

/// The key ring `mmt serve` starts with, and its reload source. With Vault
/// the first load must succeed (a service without keys refuses everyone);
/// later failures keep the keys held.
pub async fn key_ring(
    config: &Config,
    args: &ServeArgs,
    metrics: &Metrics,
) -> Result<(KeyRing, Option<Refresh>)> {
    let secret = config
        .security
        .internal_jwt_secret
        .as_ref()
        .map(|s| s.expose().to_owned());
    let keys = KeyRing::new(secret.as_deref(), args.jwt_audience.clone())?
        .with_leeway(u64::from(config.security.jwt_leeway_seconds));
    let refresh = match (&config.vault.vault, &args.jwt_keys_dir) {
        (Some(_), Some(_)) => {
            anyhow::bail!("cannot serve: choose one key source, Vault (VAULT_ADDR) or MMT_JWT_PUBLIC_KEYS_DIR")
        }
        (Some(vault), None) => {
            let source = VaultKeySource::new(vault.clone(), metrics.clone())
                .context("cannot serve: Vault")?;
            let mut source = VaultSource(source);
            let material = source
                .load()
                .await
                .context("cannot serve: no token keys from Vault")?;
            if let Err(err) = keys.install(&material) {
                source.rejected();
                return Err(err).context("cannot serve: the token keys in Vault");
            }
            tracing::info!(kids = ?keys.rs256_kids(), hs256 = keys.has_hs256(), "token keys loaded from Vault");
            Some(Refresh::Vault(Box::new(source)))
        }
        (None, Some(dir)) => {
            let folder = KeyFolder {
                dir: dir.clone(),
                period: KEY_RELOAD_INTERVAL,
            };
            // The first load must work; its errors name the file at fault.
            keys.replace_rs256(mmt_api::auth::load_rs256_dir(dir)?);
            Some(Refresh::Folder(folder))
        }
        (None, None) => None,
    };
    if keys.is_empty() {
        anyhow::bail!(
            "no token key: set INTERNAL_JWT_SECRET (at least 32 characters), MMT_JWT_PUBLIC_KEYS_DIR or Vault (VAULT_ADDR)"
        );
    }
    Ok((keys, refresh))
}
