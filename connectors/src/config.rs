//! What every connector config's `validate()` reports.

use std::fmt;
use std::path::Path;

use serde::{Serialize, Serializer};

/// One problem with one field of a connector's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigProblem {
    /// The field at fault, as spelled in the config (e.g. `url`).
    pub field: &'static str,
    /// What is wrong and what to do instead.
    pub message: String,
}

impl ConfigProblem {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// `a: x; b: y`, for an error message.
    pub fn join(problems: &[Self]) -> String {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Turns a list of problems into the result `validate()` returns.
pub(crate) fn into_result(problems: Vec<ConfigProblem>) -> Result<(), Vec<ConfigProblem>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A config's `validate()` result as the crate's error, naming the component.
pub(crate) fn validated(
    component: &'static str,
    result: Result<(), Vec<ConfigProblem>>,
) -> crate::error::Result<()> {
    result.map_err(|problems| crate::error::ConnectorError::Config {
        component,
        problems,
    })
}

/// Pushes a problem unless `path` names a file (not empty, not ending in `/`).
pub(crate) fn check_file_path(field: &'static str, path: &Path, out: &mut Vec<ConfigProblem>) {
    let text = path.as_os_str().to_string_lossy();
    if text.is_empty() || text.ends_with('/') || path.file_name().is_none() {
        out.push(ConfigProblem::new(
            field,
            "must name a file (e.g. /var/lib/mmt/audit.jsonl)",
        ));
    }
}

/// Pushes a problem if `path` is empty.
pub(crate) fn check_dir_path(field: &'static str, path: &Path, out: &mut Vec<ConfigProblem>) {
    if path.as_os_str().is_empty() {
        out.push(ConfigProblem::new(
            field,
            "must name a directory (e.g. /var/lib/mmt/fhir)",
        ));
    }
}

pub(crate) fn serialize_redacted_url<S: Serializer>(
    url: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

/// The one redaction of URLs (`mmt_core::redact`): every connector's
/// `redacted_url`, `Debug` and serialized config go through it.
pub(crate) use mmt_core::redact::redact_url;
