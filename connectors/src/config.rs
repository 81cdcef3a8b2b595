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

/// `scheme://user:secret@host/db?password=x` → `scheme://user:***@host/db?password=***`.
///
/// Errs towards masking too much: the user info ends at the *last* `@`, so a
/// password holding an unescaped `/`, `?` or `@` is still masked whole.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: whatever precedes an `@` may be credentials.
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        };
    };
    let mut out = format!("{scheme}://");
    let after_userinfo = match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            after
        }
        None => rest,
    };
    match after_userinfo.split_once('?') {
        Some((base, query)) => {
            out.push_str(base);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(after_userinfo),
    }
    out
}
