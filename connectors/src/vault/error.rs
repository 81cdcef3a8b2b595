//! What talking to Vault can fail with, classed for retries.
//!
//! Messages name the step, Vault's status and its own error words; never a
//! token, a credential or a secret's value.

use std::io;
use std::path::PathBuf;

use mmt_core::error::ErrorClass;

use crate::config::ConfigProblem;

/// Everything a Vault session or key refresh can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid Vault configuration: {}", ConfigProblem::join(.0))]
    Config(Vec<ConfigProblem>),

    /// A credential file could not be read.
    #[error("reading the AppRole {field} from {}: {source}", .path.display())]
    Credential {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A credential is empty (an empty file, say).
    #[error("the AppRole {field} is empty")]
    EmptyCredential { field: &'static str },

    /// The HTTP client could not be built (e.g. an unreadable CA file).
    #[error("Vault client: {0}")]
    Client(String),

    /// Vault could not be reached, or the connection failed.
    #[error("Vault unreachable ({during}): {reason}")]
    Unreachable {
        during: &'static str,
        reason: String,
    },

    /// Vault answered with an error status.
    #[error("Vault answered {code} to {during}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        during: &'static str,
        code: u16,
        detail: String,
    },

    /// Vault's answer, or the secret it holds, is not what MMT expects.
    #[error("unexpected Vault data: {reason}")]
    Malformed { reason: String },
}

impl VaultError {
    /// Who is at fault, and whether a retry may succeed: transport failures,
    /// 5xx answers and 429 are retryable; a refused login (400/403), a path
    /// that is missing (404) or a malformed secret needs an operator.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Config(_) | Self::EmptyCredential { .. } | Self::Malformed { .. } => {
                ErrorClass::UserInput
            }
            Self::Credential { .. } => ErrorClass::External { retryable: true },
            Self::Client(_) => ErrorClass::Internal,
            Self::Unreachable { .. } => ErrorClass::External { retryable: true },
            Self::Status { code, .. } => ErrorClass::External {
                retryable: *code >= 500 || *code == 429,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> VaultError {
        VaultError::Status {
            during: "reading the secret",
            code,
            detail: "permission denied".into(),
        }
    }

    #[test]
    fn outages_retry_and_refusals_do_not() {
        assert!(status(503).class().is_retryable());
        assert!(status(429).class().is_retryable());
        assert!(!status(403).class().is_retryable());
        assert!(!status(404).class().is_retryable());
        let down = VaultError::Unreachable {
            during: "AppRole login",
            reason: "connection refused".into(),
        };
        assert!(down.class().is_retryable());
        assert_eq!(
            VaultError::Malformed { reason: "x".into() }.class(),
            ErrorClass::UserInput
        );
    }

    #[test]
    fn messages_name_the_step_and_the_status() {
        assert_eq!(
            status(403).to_string(),
            "Vault answered 403 to reading the secret: permission denied"
        );
    }
}
