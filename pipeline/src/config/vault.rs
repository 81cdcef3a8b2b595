//! HashiCorp Vault as the source of the API's token keys (AppRole login,
//! KV version 2). Off unless `VAULT_ADDR` is set.

use std::path::PathBuf;

use mmt_connectors::tls::Transport;
use mmt_connectors::vault::{is_vault_path, read_credentials, Credential, VaultConfig};
use serde::Serialize;

use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const VAULT_ADDR: &str = "VAULT_ADDR";
const VAULT_NAMESPACE: &str = "VAULT_NAMESPACE";
const VAULT_CACERT: &str = "VAULT_CACERT";
const MMT_VAULT_ROLE_ID: &str = "MMT_VAULT_ROLE_ID";
const MMT_VAULT_ROLE_ID_FILE: &str = "MMT_VAULT_ROLE_ID_FILE";
const MMT_VAULT_SECRET_ID: &str = "MMT_VAULT_SECRET_ID";
const MMT_VAULT_SECRET_ID_FILE: &str = "MMT_VAULT_SECRET_ID_FILE";
const MMT_VAULT_APPROLE_MOUNT: &str = "MMT_VAULT_APPROLE_MOUNT";
const MMT_VAULT_KV_MOUNT: &str = "MMT_VAULT_KV_MOUNT";
const MMT_VAULT_KV_PATH: &str = "MMT_VAULT_KV_PATH";
const MMT_VAULT_REFRESH_SECONDS: &str = "MMT_VAULT_REFRESH_SECONDS";
const MMT_VAULT_DATABASE_SECRET_PATH: &str = "MMT_VAULT_DATABASE_SECRET_PATH";
const MMT_VAULT_RABBITMQ_SECRET_PATH: &str = "MMT_VAULT_RABBITMQ_SECRET_PATH";

/// The variables this section reads.
pub(super) const VARIABLES: &[&str] = &[
    VAULT_ADDR,
    VAULT_NAMESPACE,
    VAULT_CACERT,
    MMT_VAULT_ROLE_ID,
    MMT_VAULT_ROLE_ID_FILE,
    MMT_VAULT_SECRET_ID,
    MMT_VAULT_SECRET_ID_FILE,
    MMT_VAULT_APPROLE_MOUNT,
    MMT_VAULT_KV_MOUNT,
    MMT_VAULT_KV_PATH,
    MMT_VAULT_REFRESH_SECONDS,
    MMT_VAULT_DATABASE_SECRET_PATH,
    MMT_VAULT_RABBITMQ_SECRET_PATH,
];

/// Vault, when `VAULT_ADDR` is set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VaultSettings {
    /// `VAULT_ADDR` (`https://vault.internal:8200`; `http` only for a Vault
    /// on this machine in `staging`/`prod`), `MMT_VAULT_ROLE_ID` or
    /// `MMT_VAULT_ROLE_ID_FILE`, `MMT_VAULT_SECRET_ID` or
    /// `MMT_VAULT_SECRET_ID_FILE` (files are re-read at every login),
    /// `VAULT_NAMESPACE`, `VAULT_CACERT` (PEM CA; default: the system's trust
    /// store), `MMT_VAULT_APPROLE_MOUNT` (default `approle`),
    /// `MMT_VAULT_KV_MOUNT` (default `secret`), `MMT_VAULT_KV_PATH` (default
    /// `mmt/jwt`) and `MMT_VAULT_REFRESH_SECONDS` (default 60). `None`: no Vault.
    pub vault: Option<VaultConfig>,
    /// `MMT_VAULT_DATABASE_SECRET_PATH`: a KV v2 secret (in the KV mount)
    /// whose `username` and `password` go into `DATABASE_URL` at start.
    pub database_secret_path: Option<String>,
    /// `MMT_VAULT_RABBITMQ_SECRET_PATH`: a KV v2 secret whose `username` and
    /// `password` replace `MMT_RABBITMQ_USER`/`MMT_RABBITMQ_PASSWORD` at start.
    pub rabbitmq_secret_path: Option<String>,
}

impl VaultSettings {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let Some(address) = vars.text(VAULT_ADDR) else {
            let stray: Vec<&'static str> = VARIABLES
                .iter()
                .copied()
                .filter(|name| name.starts_with("MMT_VAULT_") && vars.is_set(name))
                .collect();
            for name in stray {
                vars.report(Problem::warning(
                    name,
                    "is set but VAULT_ADDR is not, so Vault is off and it is ignored",
                ));
            }
            return Self::default();
        };
        let role_id = credential(vars, MMT_VAULT_ROLE_ID, MMT_VAULT_ROLE_ID_FILE);
        let secret_id = credential(vars, MMT_VAULT_SECRET_ID, MMT_VAULT_SECRET_ID_FILE);
        let (Some(role_id), Some(secret_id)) = (role_id, secret_id) else {
            return Self::default();
        };
        let mut config = VaultConfig::new(address, role_id, secret_id);
        config.namespace = vars.text(VAULT_NAMESPACE);
        config.ca_file = vars.text(VAULT_CACERT).map(PathBuf::from);
        if let Some(mount) = vars.text(MMT_VAULT_APPROLE_MOUNT) {
            config.approle_mount = mount;
        }
        if let Some(mount) = vars.text(MMT_VAULT_KV_MOUNT) {
            config.kv_mount = mount;
        }
        if let Some(path) = vars.text(MMT_VAULT_KV_PATH) {
            config.kv_path = path;
        }
        config.refresh_seconds = vars
            .parse(
                MMT_VAULT_REFRESH_SECONDS,
                "a whole number of seconds, e.g. 60",
                Echo::Value,
                |s| s.parse().ok(),
            )
            .unwrap_or(VaultConfig::DEFAULT_REFRESH_SECONDS);
        Self {
            vault: Some(config),
            database_secret_path: vars.text(MMT_VAULT_DATABASE_SECRET_PATH),
            rabbitmq_secret_path: vars.text(MMT_VAULT_RABBITMQ_SECRET_PATH),
        }
    }

    /// `sqlite`: whether the job store is SQLite (which has no credentials).
    pub(super) fn validate(
        &self,
        env: Environment,
        keys_dir_set: bool,
        sqlite: bool,
        out: &mut Vec<Problem>,
    ) {
        let Some(config) = &self.vault else {
            return;
        };
        for (variable, path) in [
            (MMT_VAULT_DATABASE_SECRET_PATH, &self.database_secret_path),
            (MMT_VAULT_RABBITMQ_SECRET_PATH, &self.rabbitmq_secret_path),
        ] {
            if path.as_deref().is_some_and(|path| !is_vault_path(path)) {
                out.push(Problem::fatal(
                    variable,
                    "must be a Vault path: segments of letters, digits, '-', '_' or '.', \
                     separated by '/'",
                ));
            }
        }
        if sqlite && self.database_secret_path.is_some() {
            out.push(Problem::fatal(
                MMT_VAULT_DATABASE_SECRET_PATH,
                "is set but DATABASE_URL is SQLite, which has no credentials",
            ));
        }
        if let Err(problems) = config.validate() {
            out.extend(
                problems
                    .into_iter()
                    .map(|problem| Problem::fatal(variable_of(problem.field), problem.message)),
            );
        }
        if keys_dir_set {
            out.push(Problem::fatal(
                "MMT_JWT_PUBLIC_KEYS_DIR",
                "is set but Vault (VAULT_ADDR) provides the token keys: choose one source",
            ));
        }
        if let Some(severity) = env.production_rule() {
            if config.url().is_some()
                && config.transport() != Transport::VerifiedTls
                && !config.is_local()
            {
                out.push(Problem {
                    variable: VAULT_ADDR,
                    message: format!(
                        "the link to Vault is plaintext, and it carries the API's token keys \
                         and the AppRole credentials; {env} needs https (VAULT_CACERT for a \
                         private CA)"
                    ),
                    severity,
                });
            }
        }
    }

    /// The files Vault's settings name (for the file checks).
    pub(super) fn file_paths(&self) -> Vec<(&'static str, &std::path::Path)> {
        let Some(config) = &self.vault else {
            return Vec::new();
        };
        let mut paths = Vec::new();
        if let Credential::File(path) = &config.role_id {
            paths.push((MMT_VAULT_ROLE_ID_FILE, path.as_path()));
        }
        if let Credential::File(path) = &config.secret_id {
            paths.push((MMT_VAULT_SECRET_ID_FILE, path.as_path()));
        }
        if let Some(ca) = &config.ca_file {
            paths.push((VAULT_CACERT, ca.as_path()));
        }
        paths
    }
}

impl super::Config {
    /// Puts the database and broker credentials held in Vault
    /// (`MMT_VAULT_DATABASE_SECRET_PATH`, `MMT_VAULT_RABBITMQ_SECRET_PATH`)
    /// into the configuration: a no-op without them. One login, one read
    /// each; values are never logged.
    pub fn with_vault_credentials(mut self) -> Result<Self, VaultCredentialsError> {
        let Some(vault) = &self.vault.vault else {
            return Ok(self);
        };
        let paths: Vec<&str> = [
            self.vault.database_secret_path.as_deref(),
            self.vault.rabbitmq_secret_path.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if paths.is_empty() {
            return Ok(self);
        }
        let mut read = read_credentials(vault, &paths)?.into_iter();
        if self.vault.database_secret_path.is_some() {
            if let Some(credentials) = read.next() {
                self.database.url = self
                    .database
                    .url
                    .with_credentials(&credentials.username, &credentials.password)
                    .ok_or(VaultCredentialsError::DatabaseUrl)?;
                tracing::info!(user = %credentials.username, "database credentials read from Vault");
            }
        }
        if self.vault.rabbitmq_secret_path.is_some() {
            if let Some(credentials) = read.next() {
                self.rabbitmq.user = credentials.username.clone();
                self.rabbitmq.password = super::secret::Secret::new(credentials.password.as_str());
                tracing::info!(user = %credentials.username, "RabbitMQ credentials read from Vault");
            }
        }
        Ok(self)
    }
}

/// Why the credentials in Vault could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum VaultCredentialsError {
    #[error("credentials from Vault: {0}")]
    Vault(#[from] mmt_connectors::vault::VaultError),
    #[error(
        "credentials from Vault: DATABASE_URL cannot take a user name and password \
         (SQLite, or not a URL)"
    )]
    DatabaseUrl,
}

/// The variable behind a field of [`VaultConfig`].
fn variable_of(field: &str) -> &'static str {
    match field {
        "role_id" => MMT_VAULT_ROLE_ID,
        "secret_id" => MMT_VAULT_SECRET_ID,
        "approle_mount" => MMT_VAULT_APPROLE_MOUNT,
        "namespace" => VAULT_NAMESPACE,
        "ca_file" => VAULT_CACERT,
        "kv_mount" => MMT_VAULT_KV_MOUNT,
        "kv_path" => MMT_VAULT_KV_PATH,
        "refresh_seconds" => MMT_VAULT_REFRESH_SECONDS,
        _ => VAULT_ADDR,
    }
}

/// One credential from its value variable or its file variable: exactly one
/// of them (fatal otherwise: Vault is on and cannot log in).
fn credential(vars: &mut Vars, value: &'static str, file: &'static str) -> Option<Credential> {
    match (vars.text(value), vars.text(file)) {
        (Some(v), None) => Some(Credential::Value(v)),
        (None, Some(path)) => Some(Credential::File(PathBuf::from(path))),
        (Some(_), Some(_)) => {
            vars.report(Problem::fatal(
                value,
                format!("and {file} are both set: set one"),
            ));
            None
        }
        (None, None) => {
            vars.report(Problem::fatal(
                value,
                format!("not set (nor {file}), but VAULT_ADDR is: Vault needs an AppRole"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Severity};

    const BASE: &[(&str, &str)] = &[
        ("VAULT_ADDR", "https://vault.internal:8200"),
        ("MMT_VAULT_ROLE_ID", "role-1"),
        ("MMT_VAULT_SECRET_ID_FILE", "/run/secrets/vault-secret-id"),
    ];

    fn load(env: &str, vars: &[(&str, &str)]) -> crate::config::Loaded {
        let mut all: Vec<(String, String)> = BASE
            .iter()
            .filter(|(name, _)| !vars.iter().any(|(n, _)| n == name))
            .chain(vars)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("ENV".into(), env.into()));
        Config::load_vars(all)
    }

    fn about(loaded: &crate::config::Loaded, variable: &str) -> Vec<(Severity, String)> {
        loaded
            .report
            .problems()
            .iter()
            .filter(|p| p.variable == variable)
            .map(|p| (p.severity, p.message.clone()))
            .collect()
    }

    #[test]
    fn vault_is_read_with_its_defaults() {
        let loaded = load("dev", &[]);
        let vault = loaded.config.vault.vault.clone().unwrap();
        assert_eq!(vault.kv_mount, "secret");
        assert_eq!(vault.kv_path, "mmt/jwt");
        assert_eq!(vault.refresh_seconds, 60);
        assert!(about(&loaded, "VAULT_ADDR").is_empty());
        assert!(Config::load_vars(Vec::new()).config.vault.vault.is_none());
    }

    #[test]
    fn plaintext_vault_is_fatal_in_prod_unless_local() {
        let remote = [("VAULT_ADDR", "http://vault.internal:8200")];
        let prod = about(&load("prod", &remote), "VAULT_ADDR");
        assert_eq!(prod.len(), 1, "{prod:?}");
        assert_eq!(prod[0].0, Severity::Fatal);
        assert!(prod[0].1.contains("plaintext"));
        assert_eq!(
            about(&load("staging", &remote), "VAULT_ADDR")[0].0,
            Severity::Warning
        );
        assert!(about(&load("dev", &remote), "VAULT_ADDR").is_empty());
        let local = [("VAULT_ADDR", "http://127.0.0.1:8200")];
        assert!(about(&load("prod", &local), "VAULT_ADDR").is_empty());
    }

    #[test]
    fn credentials_are_required_once_and_values_never_quoted() {
        let both = load("dev", &[("MMT_VAULT_SECRET_ID", "s3cr3t-canary")]);
        let problems = about(&both, "MMT_VAULT_SECRET_ID");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, Severity::Fatal);
        assert!(both.report.refuses_start());
        let json = serde_json::to_string(&load("dev", &[]).config).unwrap();
        assert!(!json.contains("role-1"), "{json}");
        let none = Config::load_vars(vec![("VAULT_ADDR".into(), "https://v:8200".into())]);
        assert_eq!(about(&none, "MMT_VAULT_ROLE_ID").len(), 1);
        assert_eq!(about(&none, "MMT_VAULT_SECRET_ID").len(), 1);
        let text = none.report.to_string();
        assert!(!text.contains("canary"));
    }

    #[test]
    fn bad_values_and_two_key_sources_are_fatal() {
        let loaded = load(
            "dev",
            &[
                ("MMT_VAULT_KV_PATH", "/mmt/../jwt"),
                ("MMT_VAULT_REFRESH_SECONDS", "0"),
                ("MMT_JWT_PUBLIC_KEYS_DIR", "/etc/mmt/jwt-keys"),
            ],
        );
        for variable in [
            "MMT_VAULT_KV_PATH",
            "MMT_VAULT_REFRESH_SECONDS",
            "MMT_JWT_PUBLIC_KEYS_DIR",
        ] {
            let problems = about(&loaded, variable);
            assert_eq!(problems.len(), 1, "{variable}: {problems:?}");
            assert_eq!(problems[0].0, Severity::Fatal, "{variable}");
        }
    }

    #[test]
    fn vault_settings_without_vault_addr_are_a_warning() {
        let loaded = Config::load_vars(vec![("MMT_VAULT_KV_PATH".into(), "mmt/jwt".into())]);
        let problems = about(&loaded, "MMT_VAULT_KV_PATH");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, Severity::Warning);
    }

    #[test]
    fn credential_secret_paths_are_checked_and_sqlite_has_none() {
        let loaded = load(
            "dev",
            &[
                ("MMT_VAULT_DATABASE_SECRET_PATH", "mmt/database"),
                ("MMT_VAULT_RABBITMQ_SECRET_PATH", "/bad/"),
            ],
        );
        assert_eq!(
            loaded.config.vault.database_secret_path.as_deref(),
            Some("mmt/database")
        );
        // DATABASE_URL defaults to SQLite, which has no credentials.
        let database = about(&loaded, "MMT_VAULT_DATABASE_SECRET_PATH");
        assert_eq!(database.len(), 1, "{database:?}");
        assert!(database[0].1.contains("SQLite"));
        assert_eq!(about(&loaded, "MMT_VAULT_RABBITMQ_SECRET_PATH").len(), 1);
        let postgres = load(
            "dev",
            &[
                ("MMT_VAULT_DATABASE_SECRET_PATH", "mmt/database"),
                ("DATABASE_URL", "postgres://db.internal:5432/mmt"),
            ],
        );
        assert!(about(&postgres, "MMT_VAULT_DATABASE_SECRET_PATH").is_empty());
    }

    #[test]
    fn vault_replaces_the_jwt_secret_requirement_in_prod() {
        let loaded = load("prod", &[]);
        assert!(about(&loaded, "INTERNAL_JWT_SECRET").is_empty());
    }
}
