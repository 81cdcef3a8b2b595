//! Internal authentication and TLS.

use std::path::PathBuf;

use serde::Serialize;

use super::secret::Secret;
use super::vars::Vars;
use super::{Environment, Problem, Severity};

const INTERNAL_JWT_SECRET: &str = "INTERNAL_JWT_SECRET";
const ENFORCE_TLS_IN_PRODUCTION: &str = "ENFORCE_TLS_IN_PRODUCTION";
const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
const SSL_KEY_FILE: &str = "SSL_KEY_FILE";
const MMT_JWT_PUBLIC_KEYS_DIR: &str = "MMT_JWT_PUBLIC_KEYS_DIR";
const MMT_JWT_AUDIENCE: &str = "MMT_JWT_AUDIENCE";
const MMT_JWT_LEEWAY_SECONDS: &str = "MMT_JWT_LEEWAY_SECONDS";

/// The variables of this section that `VARIABLES` in the parent does not list.
pub(super) const VARIABLES: &[&str] = &[
    MMT_JWT_PUBLIC_KEYS_DIR,
    MMT_JWT_AUDIENCE,
    MMT_JWT_LEEWAY_SECONDS,
];

/// Internal authentication and TLS.
#[derive(Debug, Clone, Serialize)]
pub struct SecurityConfig {
    /// `INTERNAL_JWT_SECRET`: the HMAC key signing service-to-service tokens; at least
    /// [`SecurityConfig::MIN_SECRET_CHARS`] characters. Required in `prod`; never
    /// printed.
    pub internal_jwt_secret: Option<Secret>,
    /// `ENFORCE_TLS_IN_PRODUCTION`: in `prod`, serve only over TLS and require
    /// `SSL_CERT_FILE` and `SSL_KEY_FILE`. Default `true`.
    pub enforce_tls_in_production: bool,
    /// `SSL_CERT_FILE`: PEM certificate chain for the API's TLS listener.
    pub ssl_cert_file: Option<PathBuf>,
    /// `SSL_KEY_FILE`: PEM private key matching `SSL_CERT_FILE`.
    pub ssl_key_file: Option<PathBuf>,
    /// `MMT_JWT_PUBLIC_KEYS_DIR`: the folder of RS256 public keys (`<kid>.pem`)
    /// `mmt serve` verifies tokens with. With it, `INTERNAL_JWT_SECRET` is not
    /// required: an RS256-only deployment holds no shared secret.
    pub jwt_public_keys_dir: Option<PathBuf>,
    /// `MMT_JWT_AUDIENCE`: the `aud` a token must name (a string, or one of
    /// an array), if any.
    pub jwt_audience: Option<String>,
    /// `MMT_JWT_LEEWAY_SECONDS`: clock skew tolerated on a token's `exp` and
    /// `nbf`. Default 60; at most [`SecurityConfig::MAX_JWT_LEEWAY_SECONDS`].
    pub jwt_leeway_seconds: u32,
    /// Whether Vault (`VAULT_ADDR`) provides the token keys; then the API
    /// verifies with Vault's keys only and `INTERNAL_JWT_SECRET` is not required.
    pub jwt_keys_from_vault: bool,
}

impl SecurityConfig {
    /// The shortest acceptable `INTERNAL_JWT_SECRET` (256 bits of ASCII for HS256).
    pub const MIN_SECRET_CHARS: usize = 32;
    /// The default `MMT_JWT_LEEWAY_SECONDS`.
    pub const DEFAULT_JWT_LEEWAY_SECONDS: u32 = 60;
    /// The largest `MMT_JWT_LEEWAY_SECONDS`: beyond it an expired token keeps
    /// working for minutes.
    pub const MAX_JWT_LEEWAY_SECONDS: u32 = 300;

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let internal_jwt_secret = vars.text(INTERNAL_JWT_SECRET).map(Secret::new);
        let enforce_tls_in_production = vars.bool(ENFORCE_TLS_IN_PRODUCTION, true);
        Self {
            internal_jwt_secret,
            enforce_tls_in_production,
            ssl_cert_file: vars.text(SSL_CERT_FILE).map(PathBuf::from),
            ssl_key_file: vars.text(SSL_KEY_FILE).map(PathBuf::from),
            jwt_public_keys_dir: vars.text(MMT_JWT_PUBLIC_KEYS_DIR).map(PathBuf::from),
            jwt_audience: vars.text(MMT_JWT_AUDIENCE),
            jwt_leeway_seconds: vars.u32(MMT_JWT_LEEWAY_SECONDS, Self::DEFAULT_JWT_LEEWAY_SECONDS),
            jwt_keys_from_vault: vars.is_set("VAULT_ADDR"),
        }
    }

    /// Whether the API must serve TLS in this environment.
    pub fn tls_required(&self, env: Environment) -> bool {
        env.is_prod() && self.enforce_tls_in_production
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        self.validate_secret(env, out);
        self.validate_tls(env, out);
        if self.jwt_leeway_seconds > Self::MAX_JWT_LEEWAY_SECONDS {
            out.push(Problem::fatal(
                MMT_JWT_LEEWAY_SECONDS,
                format!(
                    "must be at most {} seconds (clock skew, not a grace period)",
                    Self::MAX_JWT_LEEWAY_SECONDS
                ),
            ));
        }
    }

    /// The file-system check: the RS256 key folder, when set, is a folder.
    pub(super) fn check_files(&self, out: &mut Vec<Problem>) {
        if let Some(dir) = self
            .jwt_public_keys_dir
            .as_ref()
            .filter(|dir| !dir.is_dir())
        {
            out.push(Problem::fatal(
                MMT_JWT_PUBLIC_KEYS_DIR,
                format!("{} is not a readable folder", dir.display()),
            ));
        }
    }

    fn validate_secret(&self, env: Environment, out: &mut Vec<Problem>) {
        match &self.internal_jwt_secret {
            // RS256 only, or keys from Vault: no shared secret to require.
            None if self.jwt_public_keys_dir.is_some() || self.jwt_keys_from_vault => {}
            // The API takes Vault's secret; this one only signs `mmt token`.
            Some(_) if self.jwt_keys_from_vault => out.push(Problem::warning(
                INTERNAL_JWT_SECRET,
                "is set but Vault (VAULT_ADDR) provides the token keys: the API verifies \
                 HS256 tokens with the INTERNAL_JWT_SECRET field of the Vault secret only",
            )),
            None => {
                if let Some(severity) = env.production_rule() {
                    out.push(Problem {
                        variable: INTERNAL_JWT_SECRET,
                        message: format!(
                            "not set; {env} needs a random secret of at least {} characters, \
                             or RS256 public keys in {MMT_JWT_PUBLIC_KEYS_DIR}",
                            Self::MIN_SECRET_CHARS
                        ),
                        severity,
                    });
                }
            }
            Some(secret) if secret.char_len() < Self::MIN_SECRET_CHARS => {
                let severity = if env.is_prod() {
                    Severity::Fatal
                } else {
                    Severity::Warning
                };
                out.push(Problem {
                    variable: INTERNAL_JWT_SECRET,
                    message: format!(
                        "is shorter than {} characters; use a random secret at least that long",
                        Self::MIN_SECRET_CHARS
                    ),
                    severity,
                });
            }
            Some(_) => {}
        }
    }

    fn validate_tls(&self, env: Environment, out: &mut Vec<Problem>) {
        if env.is_prod() && !self.enforce_tls_in_production {
            out.push(Problem::warning(
                ENFORCE_TLS_IN_PRODUCTION,
                "is false in prod: PHI travels unencrypted unless a proxy terminates TLS",
            ));
        }
        let pair = [
            (SSL_CERT_FILE, &self.ssl_cert_file),
            (SSL_KEY_FILE, &self.ssl_key_file),
        ];
        if self.tls_required(env) {
            for (variable, file) in pair {
                if file.is_none() {
                    out.push(Problem::fatal(
                        variable,
                        "not set, but prod with ENFORCE_TLS_IN_PRODUCTION=true serves only TLS",
                    ));
                }
            }
        } else if self.ssl_cert_file.is_some() != self.ssl_key_file.is_some() {
            let (missing, other) = if self.ssl_cert_file.is_none() {
                (SSL_CERT_FILE, SSL_KEY_FILE)
            } else {
                (SSL_KEY_FILE, SSL_CERT_FILE)
            };
            // Only a warning: SSL_CERT_FILE is also OpenSSL's CA-bundle variable, so
            // many hosts set it without meaning to serve TLS.
            out.push(Problem::warning(
                missing,
                format!("not set, but {other} is: serving plain HTTP, since TLS needs both"),
            ));
        }
    }
}
