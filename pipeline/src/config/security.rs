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
}

impl SecurityConfig {
    /// The shortest acceptable `INTERNAL_JWT_SECRET` (256 bits of ASCII for HS256).
    pub const MIN_SECRET_CHARS: usize = 32;

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let internal_jwt_secret = vars.text(INTERNAL_JWT_SECRET).map(Secret::new);
        let enforce_tls_in_production = vars.bool(ENFORCE_TLS_IN_PRODUCTION, true);
        Self {
            internal_jwt_secret,
            enforce_tls_in_production,
            ssl_cert_file: vars.text(SSL_CERT_FILE).map(PathBuf::from),
            ssl_key_file: vars.text(SSL_KEY_FILE).map(PathBuf::from),
        }
    }

    /// Whether the API must serve TLS in this environment.
    pub fn tls_required(&self, env: Environment) -> bool {
        env.is_prod() && self.enforce_tls_in_production
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        self.validate_secret(env, out);
        self.validate_tls(env, out);
    }

    fn validate_secret(&self, env: Environment, out: &mut Vec<Problem>) {
        match &self.internal_jwt_secret {
            None => {
                if let Some(severity) = env.production_rule() {
                    out.push(Problem {
                        variable: INTERNAL_JWT_SECRET,
                        message: format!(
                            "not set; {env} needs a random secret of at least {} characters",
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
