//! `AUDIT_LOG_FILE`: the append-only, hash-chained audit trail, and
//! `MMT_AUDIT_ROTATE_MB`: the size at which it is rotated.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const AUDIT_LOG_FILE: &str = "AUDIT_LOG_FILE";
const MMT_AUDIT_ROTATE_MB: &str = "MMT_AUDIT_ROTATE_MB";

/// The variables of this section that `VARIABLES` in the parent does not list.
pub(super) const VARIABLES: &[&str] = &[MMT_AUDIT_ROTATE_MB];

/// The default rotation size, in MiB.
const DEFAULT_ROTATE_MB: u32 = 100;

/// The audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// `AUDIT_LOG_FILE`: the JSON Lines file every audited action is appended to.
    /// Default `audit.jsonl` (relative to the working directory; `mmt run` and
    /// `mmt serve` put it under `--out`). Mandatory in `prod`.
    pub log_file: PathBuf,
    /// Whether `AUDIT_LOG_FILE` was unset (and `log_file` is the default).
    pub log_file_defaulted: bool,
    /// `MMT_AUDIT_ROTATE_MB`: the file is renamed `<file>.<n>` and a new one
    /// started (the hash chain continues) before a line would take it past
    /// this many MiB; 0 never rotates. Default 100.
    pub rotate_mb: u32,
}

impl AuditConfig {
    /// The default file.
    pub const DEFAULT_LOG_FILE: &'static str = "audit.jsonl";

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let set = vars.text(AUDIT_LOG_FILE);
        Self {
            log_file_defaulted: set.is_none(),
            log_file: PathBuf::from(set.unwrap_or_else(|| Self::DEFAULT_LOG_FILE.to_owned())),
            rotate_mb: vars.u32(MMT_AUDIT_ROTATE_MB, DEFAULT_ROTATE_MB),
        }
    }

    /// The rotation size in bytes, if the trail rotates.
    pub fn rotate_bytes(&self) -> Option<u64> {
        (self.rotate_mb > 0).then(|| u64::from(self.rotate_mb) * 1024 * 1024)
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        let names_a_file = self.log_file.file_name().is_some()
            && !self.log_file.as_os_str().to_string_lossy().ends_with('/');
        if self.log_file_defaulted {
            if let Some(severity) = env.production_rule() {
                out.push(Problem {
                    variable: AUDIT_LOG_FILE,
                    message: format!(
                        "not set; {env} keeps a mandatory audit trail: set an absolute path \
                         on the persistent audit volume (e.g. /var/log/mmt/audit.jsonl)"
                    ),
                    severity,
                });
            }
        } else if !names_a_file {
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

    /// The file-system check of an explicit `AUDIT_LOG_FILE`: its folder
    /// exists and the file can be appended to (created if missing). Fatal in
    /// every environment: the audit trail is written before jobs are
    /// acknowledged, so a trail that cannot be written stops every job.
    /// (The default file lives under `--out`, created at start.)
    pub fn check_files(&self, out: &mut Vec<Problem>) {
        if self.log_file_defaulted {
            return;
        }
        if let Err(reason) = check_appendable(&self.log_file) {
            out.push(Problem::fatal(
                AUDIT_LOG_FILE,
                format!("{} cannot be written: {reason}", self.log_file.display()),
            ));
        }
    }
}

/// Whether `file` can be appended to: an existing regular file opened for
/// appending (nothing is written), or a new file that its folder accepts
/// (probed with a temporary file, removed at once).
fn check_appendable(file: &Path) -> Result<(), String> {
    let folder = match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "its folder {} does not exist (mount the audit volume)",
            folder.display()
        ));
    }
    match std::fs::metadata(file) {
        Ok(meta) if !meta.is_file() => Err("it is not a regular file".to_owned()),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .map(drop)
            .map_err(|err| err.kind().to_string()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tempfile::NamedTempFile::new_in(folder)
                .map(drop)
                .map_err(|err| format!("its folder refuses new files ({})", err.kind()))
        }
        Err(err) => Err(err.kind().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(file: &Path) -> AuditConfig {
        AuditConfig {
            log_file: file.to_owned(),
            log_file_defaulted: false,
            rotate_mb: DEFAULT_ROTATE_MB,
        }
    }

    fn problems(config: &AuditConfig) -> Vec<Problem> {
        let mut out = Vec::new();
        config.check_files(&mut out);
        out
    }

    #[test]
    fn a_writable_file_or_folder_passes() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("audit.jsonl");
        assert!(problems(&config(&file)).is_empty(), "a new file");
        std::fs::write(&file, "")?;
        assert!(problems(&config(&file)).is_empty(), "an existing file");
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            1,
            "the probe is gone"
        );
        Ok(())
    }

    #[test]
    fn a_missing_folder_or_a_directory_is_fatal() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = problems(&config(&dir.path().join("nope/audit.jsonl")));
        assert_eq!(missing.len(), 1);
        assert!(missing[0].is_fatal());
        assert!(missing[0].message.contains("does not exist"), "{missing:?}");
        let folder = dir.path().join("audit.jsonl");
        std::fs::create_dir(&folder)?;
        assert!(problems(&config(&folder))[0]
            .message
            .contains("not a regular file"));
        Ok(())
    }

    #[test]
    fn the_default_file_is_not_checked() {
        let defaulted = AuditConfig {
            log_file_defaulted: true,
            ..config(Path::new("/nonexistent/audit.jsonl"))
        };
        assert!(problems(&defaulted).is_empty());
    }

    #[test]
    fn rotation_is_in_mib_and_zero_turns_it_off() {
        let mut audit = config(Path::new("a.jsonl"));
        assert_eq!(audit.rotate_bytes(), Some(100 * 1024 * 1024));
        audit.rotate_mb = 0;
        assert_eq!(audit.rotate_bytes(), None);
    }
}
