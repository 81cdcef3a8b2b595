//! `AUDIT_LOG_FILE`: the append-only audit trail.

use std::path::PathBuf;

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const AUDIT_LOG_FILE: &str = "AUDIT_LOG_FILE";

/// The audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// `AUDIT_LOG_FILE`: the JSON Lines file every audited action is appended to.
    /// Default `audit.jsonl` (relative to the working directory).
    pub log_file: PathBuf,
}

impl AuditConfig {
    /// The default file.
    pub const DEFAULT_LOG_FILE: &'static str = "audit.jsonl";

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let log_file = vars
            .text(AUDIT_LOG_FILE)
            .unwrap_or_else(|| Self::DEFAULT_LOG_FILE.to_owned());
        Self {
            log_file: PathBuf::from(log_file),
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        let names_a_file = self.log_file.file_name().is_some()
            && !self.log_file.as_os_str().to_string_lossy().ends_with('/');
        if !names_a_file {
            out.push(Problem::fatal(
                AUDIT_LOG_FILE,
                "must name a file (e.g. /var/log/mmt/audit.jsonl), not a directory",
            ));
        } else if env.is_prod() && self.log_file.is_relative() {
            out.push(Problem::warning(
                AUDIT_LOG_FILE,
                "is relative to the working directory; in prod use an absolute path on \
                 the persistent audit volume",
            ));
        }
    }
}
