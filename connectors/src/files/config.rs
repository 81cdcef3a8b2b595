//! Typed configuration of the file sinks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AuditLogSink, DeadLetterFileSink, FhirNdjsonSink};
use crate::config::{check_dir_path, check_file_path, into_result, validated, ConfigProblem};
use crate::error::Result;

/// FHIR `DocumentReference` resources as bulk-data NDJSON files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirNdjsonConfig {
    /// Directory of `DocumentReference.ndjson`; created (mode 0700) if missing.
    /// The file holds PHI and is kept at mode 0600.
    pub dir: PathBuf,
}

impl FhirNdjsonConfig {
    /// The file documents are appended to.
    pub const FILE_NAME: &'static str = "DocumentReference.ndjson";

    /// Checks the config without touching the file system.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        check_dir_path("dir", &self.dir, &mut problems);
        into_result(problems)
    }

    /// Validates, then opens (or creates) the file.
    pub fn build(&self) -> Result<FhirNdjsonSink> {
        validated("FHIR NDJSON sink", self.validate())?;
        FhirNdjsonSink::open(&self.dir.join(Self::FILE_NAME))
    }
}

/// The audit trail as a JSON Lines file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogConfig {
    /// `AUDIT_LOG_FILE`: the JSON Lines file audit events are appended to; its
    /// directory is created if missing. In production, an absolute path on the
    /// persistent audit volume.
    pub path: PathBuf,
    /// Rotate the file (rename it `<path>.<n>`, start a new one) before a line
    /// would take it past this many bytes; `None` never rotates.
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
}

impl AuditLogConfig {
    /// The smallest rotation size: one line must always fit.
    pub const MIN_ROTATE_BYTES: u64 = 64 * 1024;

    /// A trail at `path` that never rotates.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            rotate_bytes: None,
        }
    }

    /// Checks the config without touching the file system.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        check_file_path("path", &self.path, &mut problems);
        if self
            .rotate_bytes
            .is_some_and(|bytes| bytes < Self::MIN_ROTATE_BYTES)
        {
            problems.push(ConfigProblem::new(
                "rotate_bytes",
                format!("must be at least {} bytes", Self::MIN_ROTATE_BYTES),
            ));
        }
        into_result(problems)
    }

    /// Validates, then opens (or creates) the file.
    pub fn build(&self) -> Result<AuditLogSink> {
        validated("audit log", self.validate())?;
        AuditLogSink::open_rotating(&self.path, self.rotate_bytes)
    }
}

/// The dead-letter queue as a JSON Lines file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFileConfig {
    /// Directory of `dlq.jsonl`; created if missing.
    pub dir: PathBuf,
}

impl DeadLetterFileConfig {
    /// The file dead letters are appended to.
    pub const FILE_NAME: &'static str = "dlq.jsonl";

    /// Checks the config without touching the file system.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        check_dir_path("dir", &self.dir, &mut problems);
        into_result(problems)
    }

    /// Validates, then opens (or creates) the file.
    pub fn build(&self) -> Result<DeadLetterFileSink> {
        validated("dead-letter file", self.validate())?;
        DeadLetterFileSink::open(&self.dir.join(Self::FILE_NAME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_paths_are_refused() {
        let problems = FhirNdjsonConfig { dir: "".into() }
            .validate()
            .expect_err("empty");
        assert_eq!(problems[0].field, "dir");
        assert!(AuditLogConfig::new("/var/log/").validate().is_err());
        assert!(AuditLogConfig::new("").validate().is_err());
        let tiny = AuditLogConfig {
            rotate_bytes: Some(100),
            ..AuditLogConfig::new("/var/log/mmt/audit.jsonl")
        };
        assert_eq!(tiny.validate().expect_err("tiny")[0].field, "rotate_bytes");
        assert!(DeadLetterFileConfig { dir: "".into() }.validate().is_err());
        assert!(AuditLogConfig::new("/var/log/mmt/audit.jsonl")
            .validate()
            .is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<AuditLogConfig, _> =
            serde_json::from_str(r#"{"path": "a.jsonl", "fsync": false}"#);
        assert!(parsed.is_err());
        let parsed: FhirNdjsonConfig = serde_json::from_str(r#"{"dir": "out"}"#).expect("valid");
        assert_eq!(parsed.dir, PathBuf::from("out"));
    }

    #[test]
    fn build_reports_config_problems() {
        let error = AuditLogConfig::new("").build().expect_err("invalid");
        assert!(matches!(error, crate::error::ConnectorError::Config { .. }));
        assert_eq!(error.class(), mmt_core::ErrorClass::Internal);
    }
}
