//! Encryption at rest of transcripts and uploads: the key provider, a local
//! keyring (`MMT_ENCRYPTION_KEYS`) or Vault's transit engine
//! (`MMT_VAULT_TRANSIT_KEY`), chosen by `MMT_ENCRYPTION_PROVIDER`.

use std::path::PathBuf;
use std::sync::Arc;

use mmt_connectors::vault::{TransitConfig, TransitKeyProvider, VaultConfig};
use mmt_core::crypt::{CryptError, Sealer, WatchedKeyring, KEYS_VARIABLE};
use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const MMT_ENCRYPTION_PROVIDER: &str = "MMT_ENCRYPTION_PROVIDER";
const MMT_VAULT_TRANSIT_KEY: &str = "MMT_VAULT_TRANSIT_KEY";
const MMT_VAULT_TRANSIT_MOUNT: &str = "MMT_VAULT_TRANSIT_MOUNT";

/// The variables this section reads beyond DESIGN.md's.
pub(super) const VARIABLES: &[&str] = &[
    KEYS_VARIABLE,
    MMT_ENCRYPTION_PROVIDER,
    MMT_VAULT_TRANSIT_KEY,
    MMT_VAULT_TRANSIT_MOUNT,
];

/// Where the key-encryption keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProviderKind {
    /// The keyring file of `MMT_ENCRYPTION_KEYS`.
    Keyring,
    /// Vault's transit engine: the key `MMT_VAULT_TRANSIT_KEY`.
    Transit,
}

/// Encryption at rest (see `mmt_core::crypt`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EncryptionConfig {
    /// `MMT_ENCRYPTION_PROVIDER`: `keyring` or `transit`. Unset: `transit`
    /// when `MMT_VAULT_TRANSIT_KEY` is set, `keyring` when
    /// `MMT_ENCRYPTION_KEYS` is, else none: stored in clear (allowed in dev
    /// and test, a warning in staging, fatal in prod).
    pub provider: Option<KeyProviderKind>,
    /// `MMT_ENCRYPTION_KEYS`: the keyring file (JSON, mode 0600) whose keys
    /// seal transcripts in the job store and uploads in the upload spool
    /// (AES-256-GCM, a fresh data key per record). `mmt keys rotate` creates
    /// it, or adds a key to it. The file's keys are checked (length,
    /// strength, format) by `mmt check` and at start.
    pub keys_file: Option<PathBuf>,
    /// `MMT_VAULT_TRANSIT_KEY` (an `aes256-gcm96` transit key) and
    /// `MMT_VAULT_TRANSIT_MOUNT` (default `transit`): Vault wraps and unwraps
    /// the data keys; the key never leaves Vault. Needs Vault (`VAULT_ADDR`
    /// and an AppRole whose policy may `update` `<mount>/encrypt/<key>` and
    /// `<mount>/decrypt/<key>` and `read` `<mount>/keys/<key>`).
    pub transit: Option<TransitConfig>,
}

impl EncryptionConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let keys_file = vars.text(KEYS_VARIABLE).map(PathBuf::from);
        let transit = vars.text(MMT_VAULT_TRANSIT_KEY).map(|key| {
            let mut transit = TransitConfig::new(key);
            if let Some(mount) = vars.text(MMT_VAULT_TRANSIT_MOUNT) {
                transit.mount = mount;
            }
            transit
        });
        if transit.is_none() && vars.is_set(MMT_VAULT_TRANSIT_MOUNT) {
            vars.report(Problem::warning(
                MMT_VAULT_TRANSIT_MOUNT,
                "is set but MMT_VAULT_TRANSIT_KEY is not, so it is ignored",
            ));
        }
        let explicit = vars.text(MMT_ENCRYPTION_PROVIDER);
        let provider = match explicit.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("keyring") => Some(KeyProviderKind::Keyring),
            Some("transit") => Some(KeyProviderKind::Transit),
            Some(_) => {
                vars.report(Problem::fatal(
                    MMT_ENCRYPTION_PROVIDER,
                    "must be keyring or transit",
                ));
                None
            }
            None => match (&transit, &keys_file) {
                (Some(_), Some(_)) => {
                    vars.report(Problem::fatal(
                        MMT_ENCRYPTION_PROVIDER,
                        format!(
                            "not set, and both {KEYS_VARIABLE} and {MMT_VAULT_TRANSIT_KEY} are: \
                             choose keyring or transit"
                        ),
                    ));
                    None
                }
                (Some(_), None) => Some(KeyProviderKind::Transit),
                (None, Some(_)) => Some(KeyProviderKind::Keyring),
                (None, None) => None,
            },
        };
        Self {
            provider,
            keys_file,
            transit,
        }
    }

    /// `vault_configured`: whether Vault (`VAULT_ADDR` and an AppRole) is set.
    pub(super) fn validate(
        &self,
        env: Environment,
        vault_configured: bool,
        out: &mut Vec<Problem>,
    ) {
        match self.provider {
            None => {
                if let Some(severity) = env.production_rule() {
                    out.push(Problem {
                        variable: KEYS_VARIABLE,
                        message: format!(
                            "not set (nor {MMT_VAULT_TRANSIT_KEY}); {env} stores transcripts and \
                             uploads (PHI) unencrypted: create a keyring with `mmt keys rotate` \
                             and name it here, or name a Vault transit key"
                        ),
                        severity,
                    });
                }
            }
            Some(KeyProviderKind::Keyring) => {
                if self.keys_file.is_none() {
                    out.push(Problem::fatal(
                        KEYS_VARIABLE,
                        format!("not set, but {MMT_ENCRYPTION_PROVIDER} is keyring"),
                    ));
                }
                if self.transit.is_some() {
                    out.push(Problem::warning(
                        MMT_VAULT_TRANSIT_KEY,
                        format!(
                            "is set but {MMT_ENCRYPTION_PROVIDER} is keyring, so it is ignored"
                        ),
                    ));
                }
            }
            Some(KeyProviderKind::Transit) => self.validate_transit(vault_configured, out),
        }
    }

    fn validate_transit(&self, vault_configured: bool, out: &mut Vec<Problem>) {
        let Some(transit) = &self.transit else {
            out.push(Problem::fatal(
                MMT_VAULT_TRANSIT_KEY,
                format!("not set, but {MMT_ENCRYPTION_PROVIDER} is transit"),
            ));
            return;
        };
        if !vault_configured {
            out.push(Problem::fatal(
                MMT_VAULT_TRANSIT_KEY,
                "is set but Vault is not (VAULT_ADDR and an AppRole): the transit engine \
                 is Vault's",
            ));
        }
        if self.keys_file.is_some() {
            out.push(Problem::warning(
                KEYS_VARIABLE,
                "is set but the transit engine wraps the data keys, so it is ignored (data \
                 sealed under the keyring does not open with transit)",
            ));
        }
        if let Err(problems) = transit.validate() {
            out.extend(problems.into_iter().map(|problem| {
                let variable = if problem.field == "mount" {
                    MMT_VAULT_TRANSIT_MOUNT
                } else {
                    MMT_VAULT_TRANSIT_KEY
                };
                Problem::fatal(variable, problem.message)
            }));
        }
    }

    /// The variable a provider's problem is reported under.
    fn variable(&self) -> &'static str {
        match self.provider {
            Some(KeyProviderKind::Transit) => MMT_VAULT_TRANSIT_KEY,
            _ => KEYS_VARIABLE,
        }
    }

    /// Loads and checks the keys: a missing, world-readable or group-writable,
    /// malformed keyring, or a short or weak key, is fatal; a transit key
    /// that Vault does not hold (or that cannot encrypt) is fatal too.
    pub(super) fn check_files(&self, vault: Option<&VaultConfig>, out: &mut Vec<Problem>) {
        if self.provider == Some(KeyProviderKind::Transit) && vault.is_none() {
            // Reported by `validate`: there is no Vault to ask.
            return;
        }
        if let Err(err) = self.sealer(vault) {
            out.push(Problem::fatal(self.variable(), err.to_string()));
        }
    }

    /// The sealer over the configured provider, `None` when encryption is off.
    /// A transit provider logs in to Vault and reads its key here.
    pub fn sealer(&self, vault: Option<&VaultConfig>) -> Result<Option<Sealer>, CryptError> {
        match self.provider {
            None => Ok(None),
            Some(KeyProviderKind::Keyring) => {
                let Some(path) = &self.keys_file else {
                    return Ok(None);
                };
                // Reloaded when the file changes: `mmt keys rotate` takes effect in
                // running processes.
                let keyring = WatchedKeyring::load(path)?;
                Ok(Some(Sealer::new(Arc::new(keyring))))
            }
            Some(KeyProviderKind::Transit) => {
                let provider = self.transit_provider(vault)?;
                Ok(provider.map(|provider| Sealer::new(Arc::new(provider))))
            }
        }
    }

    /// The transit provider, when transit is the provider.
    pub fn transit_provider(
        &self,
        vault: Option<&VaultConfig>,
    ) -> Result<Option<TransitKeyProvider>, CryptError> {
        let (Some(KeyProviderKind::Transit), Some(transit)) = (self.provider, &self.transit) else {
            return Ok(None);
        };
        let failed = |reason: String, retryable: bool| CryptError::KeyService {
            during: "at start",
            reason,
            retryable,
        };
        let vault = vault.ok_or_else(|| {
            failed(
                "Vault is not configured (VAULT_ADDR and an AppRole)".into(),
                false,
            )
        })?;
        let metrics =
            mmt_core::telemetry::Metrics::new().map_err(|err| failed(err.to_string(), false))?;
        TransitKeyProvider::connect(vault.clone(), transit.clone(), metrics)
            .map(Some)
            .map_err(|err| failed(err.to_string(), err.class().is_retryable()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    fn check(env: Environment, vars: &[(&str, &str)]) -> Vec<Problem> {
        let mut vars = Vars::new(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = EncryptionConfig::from_vars(&mut vars);
        let mut out = vars.into_problems();
        config.validate(env, false, &mut out);
        config.check_files(None, &mut out);
        out
    }

    fn load(env: Environment, vars: &[(&str, &str)]) -> (EncryptionConfig, Vec<Problem>) {
        let mut vars = Vars::new(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = EncryptionConfig::from_vars(&mut vars);
        let mut out = vars.into_problems();
        config.validate(env, true, &mut out);
        (config, out)
    }

    #[test]
    fn the_provider_follows_the_variables_set() {
        let (config, problems) = load(Environment::Prod, &[(MMT_VAULT_TRANSIT_KEY, "mmt")]);
        assert_eq!(config.provider, Some(KeyProviderKind::Transit));
        assert_eq!(
            config.transit.as_ref().map(|t| t.mount.as_str()),
            Some("transit")
        );
        assert!(problems.is_empty(), "{problems:?}");
        let (config, _) = load(Environment::Dev, &[(KEYS_VARIABLE, "/k.json")]);
        assert_eq!(config.provider, Some(KeyProviderKind::Keyring));
        // Both, without a choice: fatal; with one, the other is ignored.
        let both = [(KEYS_VARIABLE, "/k.json"), (MMT_VAULT_TRANSIT_KEY, "mmt")];
        let (config, problems) = load(Environment::Dev, &both);
        assert_eq!(config.provider, None);
        assert!(problems
            .iter()
            .any(|p| p.variable == MMT_ENCRYPTION_PROVIDER && p.is_fatal()));
        let chosen = [both[0], both[1], (MMT_ENCRYPTION_PROVIDER, "transit")];
        let (config, problems) = load(Environment::Dev, &chosen);
        assert_eq!(config.provider, Some(KeyProviderKind::Transit));
        assert!(problems.iter().all(|p| !p.is_fatal()), "{problems:?}");
        let (_, problems) = load(Environment::Dev, &[(MMT_ENCRYPTION_PROVIDER, "kms")]);
        assert!(problems[0].is_fatal());
        let (_, problems) = load(Environment::Dev, &[(MMT_ENCRYPTION_PROVIDER, "transit")]);
        assert!(problems
            .iter()
            .any(|p| p.variable == MMT_VAULT_TRANSIT_KEY && p.is_fatal()));
    }

    #[test]
    fn transit_needs_vault_and_a_valid_name() {
        let mut vars = Vars::new([
            (MMT_VAULT_TRANSIT_KEY.to_string(), "bad name".to_string()),
            (MMT_VAULT_TRANSIT_MOUNT.to_string(), "/x/".to_string()),
        ]);
        let config = EncryptionConfig::from_vars(&mut vars);
        let mut out = Vec::new();
        config.validate(Environment::Prod, false, &mut out);
        let variables: Vec<&str> = out
            .iter()
            .filter(|p| p.is_fatal())
            .map(|p| p.variable)
            .collect();
        assert_eq!(
            variables,
            [
                MMT_VAULT_TRANSIT_KEY,
                MMT_VAULT_TRANSIT_MOUNT,
                MMT_VAULT_TRANSIT_KEY
            ]
        );
        assert!(out[0].message.contains("Vault"), "{out:?}");
    }

    #[test]
    fn encryption_off_is_fatal_in_prod_only() {
        assert!(check(Environment::Dev, &[]).is_empty());
        let staging = check(Environment::Staging, &[]);
        assert_eq!(staging[0].severity, Severity::Warning);
        let prod = check(Environment::Prod, &[]);
        assert_eq!(prod.len(), 1);
        assert!(prod[0].is_fatal());
        assert!(
            prod[0].message.contains("unencrypted"),
            "{}",
            prod[0].message
        );
    }

    #[test]
    fn a_missing_weak_or_open_keyring_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let file = path.to_str().unwrap();
        let missing = check(Environment::Prod, &[(KEYS_VARIABLE, file)]);
        assert!(missing[0].is_fatal() && missing[0].message.contains("cannot read"));

        let weak = format!(
            r#"{{"version":1,"keys":[{{"id":"k1","key":"{}","state":"active","created_at":1}}]}}"#,
            "A".repeat(43) + "="
        );
        std::fs::write(&path, weak).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let weak = check(Environment::Prod, &[(KEYS_VARIABLE, file)]);
        assert!(
            weak[0].is_fatal() && weak[0].message.contains("weak"),
            "{weak:?}"
        );

        mmt_core::crypt::Keyring::generate()
            .unwrap()
            .save(&path)
            .unwrap();
        assert!(check(Environment::Prod, &[(KEYS_VARIABLE, file)]).is_empty());
        // A Kubernetes Secret volume: root-owned, readable by the pod's fsGroup.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(check(Environment::Prod, &[(KEYS_VARIABLE, file)]).is_empty());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = check(Environment::Prod, &[(KEYS_VARIABLE, file)]);
        assert!(
            open[0].is_fatal() && open[0].message.contains("chmod 600"),
            "{open:?}"
        );
    }
}
