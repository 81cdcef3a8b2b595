//! `MMT_ENCRYPTION_KEYS`: encryption at rest of transcripts and uploads.

use std::path::PathBuf;

use mmt_core::crypt::{CryptError, Sealer, WatchedKeyring, KEYS_VARIABLE};
use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

/// The variables this section reads beyond DESIGN.md's.
pub(super) const VARIABLES: &[&str] = &[KEYS_VARIABLE];

/// Encryption at rest (see `mmt_core::crypt`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EncryptionConfig {
    /// `MMT_ENCRYPTION_KEYS`: the keyring file (JSON, mode 0600) whose keys
    /// seal transcripts in the job store and uploads in the upload spool
    /// (AES-256-GCM, a fresh data key per record). `mmt keys rotate` creates
    /// it, or adds a key to it. Unset: stored in clear (allowed in dev and
    /// test, a warning in staging, fatal in prod). The file's keys are
    /// checked (length, strength, format) by `mmt check` and at start.
    pub keys_file: Option<PathBuf>,
}

impl EncryptionConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            keys_file: vars.text(KEYS_VARIABLE).map(PathBuf::from),
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        if self.keys_file.is_none() {
            if let Some(severity) = env.production_rule() {
                out.push(Problem {
                    variable: KEYS_VARIABLE,
                    message: format!(
                        "not set; {env} stores transcripts and uploads (PHI) unencrypted: \
                         create a keyring with `mmt keys rotate` and name it here"
                    ),
                    severity,
                });
            }
        }
    }

    /// Loads and checks the keyring: a missing, world-readable or group-writable,
    /// malformed file, or a short or weak key, is fatal.
    pub(super) fn check_files(&self, out: &mut Vec<Problem>) {
        if let Err(err) = self.sealer() {
            out.push(Problem::fatal(KEYS_VARIABLE, err.to_string()));
        }
    }

    /// The sealer over the keyring, `None` when encryption is off.
    pub fn sealer(&self) -> Result<Option<Sealer>, CryptError> {
        let Some(path) = &self.keys_file else {
            return Ok(None);
        };
        // Reloaded when the file changes: `mmt keys rotate` takes effect in
        // running processes.
        let keyring = WatchedKeyring::load(path)?;
        Ok(Some(Sealer::new(std::sync::Arc::new(keyring))))
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
        config.validate(env, &mut out);
        config.check_files(&mut out);
        out
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
