//! The API's settings: where it listens, TLS, and the limits that protect it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::webhook::target::TargetPolicy;

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `SSL_CERT_FILE`.
    pub cert: PathBuf,
    /// `SSL_KEY_FILE`.
    pub key: PathBuf,
}

/// How the API serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS files; plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// Refuse to start without TLS (`ENV=prod` with `ENFORCE_TLS_IN_PRODUCTION=true`).
    pub require_tls: bool,
    /// Largest accepted request body (an upload), in bytes.
    pub max_upload_bytes: usize,
    /// Longest a request may take, upload included.
    pub request_timeout: Duration,
    /// Sustained requests per second allowed to one tenant.
    pub tenant_requests_per_second: u32,
    /// Requests one tenant may send at once above the sustained rate.
    pub tenant_burst: u32,
    /// Most jobs one listing page returns.
    pub max_page_size: u32,
    /// Whether completion webhooks are delivered (a signing secret is set);
    /// without them a `callback_url` is refused rather than silently ignored.
    pub callbacks_enabled: bool,
    /// Which addresses a `callback_url` may point at (checked at submission,
    /// and again by the deliverer at connect time).
    pub callback_targets: TargetPolicy,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            require_tls: false,
            max_upload_bytes: 100 * 1024 * 1024,
            request_timeout: Duration::from_secs(60),
            tenant_requests_per_second: 50,
            tenant_burst: 100,
            max_page_size: 100,
            callbacks_enabled: false,
            callback_targets: TargetPolicy::default(),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ApiConfigProblem {
    pub setting: &'static str,
    pub message: String,
}

impl ApiConfig {
    /// Every problem at once (no I/O: the TLS files are read at start).
    pub fn validate(&self) -> Result<(), Vec<ApiConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |setting, message: &str| {
            problems.push(ApiConfigProblem {
                setting,
                message: message.to_owned(),
            })
        };
        if self.require_tls && self.tls.is_none() {
            problem(
                "SSL_CERT_FILE/SSL_KEY_FILE",
                "TLS is required (ENV=prod, ENFORCE_TLS_IN_PRODUCTION=true) but not configured",
            );
        }
        if self.max_upload_bytes == 0 {
            problem("max_upload_bytes", "must be above 0");
        }
        if self.request_timeout.is_zero() {
            problem("request_timeout", "must be above 0");
        }
        if self.tenant_requests_per_second == 0 || self.tenant_burst == 0 {
            problem("tenant rate limit", "rate and burst must be above 0");
        }
        if self.max_page_size == 0 {
            problem("max_page_size", "must be above 0");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid() {
        assert_eq!(ApiConfig::default().validate(), Ok(()));
    }

    #[test]
    fn required_tls_without_files_is_refused() {
        let config = ApiConfig {
            require_tls: true,
            tenant_burst: 0,
            ..ApiConfig::default()
        };
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(problems[0].to_string().contains("TLS is required"));
    }
}
