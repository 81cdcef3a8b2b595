//! The Vault connection's typed configuration and its pure validation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::config::{check_file_path, into_result, ConfigProblem};
use crate::tls::{is_local_host, Transport};

/// What a redacted credential prints as.
const REDACTED: &str = "[REDACTED]";

/// An AppRole credential (role id or secret id): the value itself, or a file
/// holding it. A file is read at every login, so a secret id rotated by an
/// agent (Vault Agent, a Kubernetes secret) is picked up without a restart.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    /// The value, from an environment variable.
    Value(String),
    /// A file whose content (trimmed) is the value.
    File(PathBuf),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => write!(f, "Value({REDACTED})"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The value never serializes; a file's path does (it is no secret).
impl Serialize for Credential {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(_) => serializer.serialize_str(REDACTED),
            Self::File(path) => serializer.serialize_str(&format!("file:{}", path.display())),
        }
    }
}

/// Where MMT logs in to Vault and which secret it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Vault's base URL, e.g. `https://vault.internal:8200` (`VAULT_ADDR`).
    /// `http` is for a Vault on this machine only (see [`Self::transport`]).
    pub address: String,
    /// The AppRole role id (`MMT_VAULT_ROLE_ID` or `MMT_VAULT_ROLE_ID_FILE`).
    pub role_id: Credential,
    /// The AppRole secret id (`MMT_VAULT_SECRET_ID` or `MMT_VAULT_SECRET_ID_FILE`).
    pub secret_id: Credential,
    /// The mount of the AppRole auth method (`MMT_VAULT_APPROLE_MOUNT`, default `approle`).
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// The Vault Enterprise / HCP namespace, sent as `X-Vault-Namespace` (`VAULT_NAMESPACE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// PEM file of the CA Vault's certificate chains to (`VAULT_CACERT`);
    /// unset: the system's trust store. Only with `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The mount of the KV version 2 engine (`MMT_VAULT_KV_MOUNT`, default `secret`).
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// The secret's path inside the mount (`MMT_VAULT_KV_PATH`, default `mmt/jwt`).
    #[serde(default = "default_kv_path")]
    pub kv_path: String,
    /// Seconds between two reads of the secret (`MMT_VAULT_REFRESH_SECONDS`,
    /// default 60, 1 to 86400): a key added or removed in Vault is live within this.
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u64,
    /// Seconds one request to Vault may take (default 10, 1 to 300).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_approle_mount() -> String {
    VaultConfig::DEFAULT_APPROLE_MOUNT.to_owned()
}
fn default_kv_mount() -> String {
    VaultConfig::DEFAULT_KV_MOUNT.to_owned()
}
fn default_kv_path() -> String {
    VaultConfig::DEFAULT_KV_PATH.to_owned()
}
fn default_refresh_seconds() -> u64 {
    VaultConfig::DEFAULT_REFRESH_SECONDS
}
fn default_timeout_seconds() -> u64 {
    VaultConfig::DEFAULT_TIMEOUT_SECONDS
}

impl VaultConfig {
    pub const DEFAULT_APPROLE_MOUNT: &'static str = "approle";
    pub const DEFAULT_KV_MOUNT: &'static str = "secret";
    pub const DEFAULT_KV_PATH: &'static str = "mmt/jwt";
    pub const DEFAULT_REFRESH_SECONDS: u64 = 60;
    pub const MAX_REFRESH_SECONDS: u64 = 86_400;
    pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
    pub const MAX_TIMEOUT_SECONDS: u64 = 300;

    /// A configuration with every default but the address and the credentials.
    pub fn new(address: impl Into<String>, role_id: Credential, secret_id: Credential) -> Self {
        Self {
            address: address.into(),
            role_id,
            secret_id,
            approle_mount: default_approle_mount(),
            namespace: None,
            ca_file: None,
            kv_mount: default_kv_mount(),
            kv_path: default_kv_path(),
            refresh_seconds: default_refresh_seconds(),
            timeout_seconds: default_timeout_seconds(),
        }
    }

    /// The time between two refreshes.
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_seconds)
    }

    /// The time one request may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// The address, parsed (`None` when [`Self::validate`] would refuse it).
    pub fn url(&self) -> Option<Url> {
        Url::parse(&self.address)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
    }

    /// How the link is protected: `https` verifies Vault's certificate and
    /// host name (there is no switch to turn that off); `http` is plaintext.
    pub fn transport(&self) -> Transport {
        match self.url() {
            Some(url) if url.scheme() == "https" => Transport::VerifiedTls,
            _ => Transport::Plaintext,
        }
    }

    /// Whether Vault is on this machine (loopback), where plaintext crosses no network.
    pub fn is_local(&self) -> bool {
        self.url()
            .and_then(|url| {
                url.host_str()
                    .map(|h| h.trim_matches(['[', ']']).to_owned())
            })
            .is_some_and(|host| is_local_host(&host))
    }

    /// Every problem at once; pure (no file is read).
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut out = Vec::new();
        self.validate_address(&mut out);
        for (field, credential) in [("role_id", &self.role_id), ("secret_id", &self.secret_id)] {
            match credential {
                Credential::Value(value) if value.trim().is_empty() => {
                    out.push(ConfigProblem::new(field, "must not be empty"));
                }
                Credential::File(path) => check_file_path(field, path, &mut out),
                Credential::Value(_) => {}
            }
        }
        for (field, value) in [
            ("approle_mount", &self.approle_mount),
            ("kv_mount", &self.kv_mount),
            ("kv_path", &self.kv_path),
        ] {
            if !is_vault_path(value) {
                out.push(ConfigProblem::new(
                    field,
                    "must be a Vault path: segments of letters, digits, '-', '_' or '.', \
                     separated by '/', without a leading or trailing '/' or '..'",
                ));
            }
        }
        if let Some(namespace) = &self.namespace {
            if !is_vault_path(namespace.trim_end_matches('/')) {
                out.push(ConfigProblem::new(
                    "namespace",
                    "must be a namespace path, e.g. admin/clinic",
                ));
            }
        }
        if !(1..=Self::MAX_REFRESH_SECONDS).contains(&self.refresh_seconds) {
            out.push(ConfigProblem::new(
                "refresh_seconds",
                format!("must be from 1 to {}", Self::MAX_REFRESH_SECONDS),
            ));
        }
        if !(1..=Self::MAX_TIMEOUT_SECONDS).contains(&self.timeout_seconds) {
            out.push(ConfigProblem::new(
                "timeout_seconds",
                format!("must be from 1 to {}", Self::MAX_TIMEOUT_SECONDS),
            ));
        }
        into_result(out)
    }

    fn validate_address(&self, out: &mut Vec<ConfigProblem>) {
        let Some(url) = self.url() else {
            out.push(ConfigProblem::new(
                "address",
                "must be an http(s) URL with a host, e.g. https://vault.internal:8200",
            ));
            return;
        };
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            out.push(ConfigProblem::new(
                "address",
                "must hold no credentials and no query: log in with AppRole",
            ));
        }
        if let Some(ca) = &self.ca_file {
            if url.scheme() == "http" {
                out.push(ConfigProblem::new(
                    "ca_file",
                    "is set but the address is http, so it would be ignored: use https",
                ));
            } else {
                check_file_path("ca_file", ca, out);
            }
        }
    }
}

/// `a/b-c/d_e.f`: non-empty segments of `[A-Za-z0-9._-]`, no `.`/`..` segment.
pub fn is_vault_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: &str) -> VaultConfig {
        VaultConfig::new(
            address,
            Credential::Value("role".into()),
            Credential::File("/run/secrets/secret-id".into()),
        )
    }

    fn fields(config: &VaultConfig) -> Vec<&'static str> {
        config
            .validate()
            .err()
            .unwrap_or_default()
            .iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn a_plain_https_config_is_valid_and_verified() {
        let c = config("https://vault.internal:8200");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.transport(), Transport::VerifiedTls);
        assert!(!c.is_local());
        assert_eq!(c.refresh(), Duration::from_secs(60));
    }

    #[test]
    fn http_is_plaintext_and_loopback_is_local() {
        for local in [
            "http://127.0.0.1:8200",
            "http://localhost:8200",
            "http://[::1]:8200",
        ] {
            let c = config(local);
            assert_eq!(c.validate(), Ok(()), "{local}");
            assert_eq!(c.transport(), Transport::Plaintext);
            assert!(c.is_local(), "{local}");
        }
        assert!(!config("http://vault.internal:8200").is_local());
    }

    #[test]
    fn bad_values_are_all_reported() {
        let mut c = config("vault.internal:8200");
        c.role_id = Credential::Value("  ".into());
        c.secret_id = Credential::File("/run/secrets/".into());
        c.kv_path = "/mmt/../jwt".into();
        c.refresh_seconds = 0;
        c.timeout_seconds = 0;
        c.namespace = Some("a b".into());
        assert_eq!(
            fields(&c),
            [
                "address",
                "role_id",
                "secret_id",
                "kv_path",
                "namespace",
                "refresh_seconds",
                "timeout_seconds"
            ]
        );
    }

    #[test]
    fn credentials_in_the_address_or_a_ca_over_http_are_refused() {
        assert_eq!(fields(&config("https://u:p@vault:8200")), ["address"]);
        let mut c = config("http://127.0.0.1:8200");
        c.ca_file = Some("/etc/mmt/vault-ca.pem".into());
        assert_eq!(fields(&c), ["ca_file"]);
    }

    #[test]
    fn credential_values_never_print() {
        let c = VaultConfig::new(
            "https://vault:8200",
            Credential::Value("role-id-canary".into()),
            Credential::Value("secret-id-canary".into()),
        );
        let debug = format!("{c:?}");
        let json = serde_json::to_string(&c).unwrap_or_default();
        for text in [debug, json] {
            assert!(!text.contains("canary"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"address":"https://v:8200","role_id":{"value":"r"},
                       "secret_id":{"file":"/s"},"token":"x"}"#;
        assert!(serde_json::from_str::<VaultConfig>(json).is_err());
        let json =
            r#"{"address":"https://v:8200","role_id":{"value":"r"},"secret_id":{"file":"/s"}}"#;
        let parsed: VaultConfig = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.kv_path, "mmt/jwt");
    }
}
