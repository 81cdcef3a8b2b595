//! The crate's one error type, each variant classed for retry and dead-letter routing.
//!
//! Messages name files, tables and job ids, never PHI: no transcript text, no
//! patient or encounter reference, no source name.

use std::io;
use std::path::PathBuf;

use mmt_core::error::ErrorClass;
use mmt_core::job::ComponentError;

use crate::config::ConfigProblem;

/// Everything a connector can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid {component} configuration: {}", ConfigProblem::join(.problems))]
    Config {
        component: &'static str,
        problems: Vec<ConfigProblem>,
    },

    /// Reading, writing or syncing a file failed (disk full, permissions, I/O error).
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An existing file holds a record that cannot be read and is not a crash's
    /// partial trailing line: refusing to append to it.
    #[error("{} is corrupt at line {line}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },

    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    /// The schema migrations failed (e.g. the database holds a newer or edited schema).
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A stored row holds a value this version cannot read.
    #[error("job {job_id}: stored {column} is unreadable: {reason}")]
    StoredValue {
        job_id: String,
        column: &'static str,
        reason: String,
    },

    /// A record could not be serialised (a bug: our records always serialise).
    #[error("serialising {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A job id that cannot be a FHIR resource id (`[A-Za-z0-9-.]{1,64}`).
    #[error("job id {0:?} is not a valid FHIR id")]
    InvalidFhirId(String),

    /// The async runtime the SQL store drives its pool with could not start.
    #[error("starting the database runtime: {0}")]
    Runtime(#[source] io::Error),

    /// A sink shared between workers was poisoned by a panic in another worker.
    #[error("{0} lock poisoned by a panicked worker")]
    Poisoned(&'static str),
}

impl ConnectorError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Who is at fault and whether a retry can help.
    pub fn class(&self) -> ErrorClass {
        match self {
            // Disk full, a flaky volume, a permission fixed by the operator: retry.
            Self::Io { .. } => ErrorClass::External { retryable: true },
            Self::Database(error) => classify_sqlx(error),
            Self::Config { .. }
            | Self::Corrupt { .. }
            | Self::Migrate(_)
            | Self::StoredValue { .. }
            | Self::Serialize { .. }
            | Self::InvalidFhirId(_)
            | Self::Runtime(_)
            | Self::Poisoned(_) => ErrorClass::Internal,
        }
    }
}

impl From<ConnectorError> for ComponentError {
    fn from(error: ConnectorError) -> Self {
        ComponentError::new(error.class(), error.to_string())
    }
}

/// Classes a database error. Transient conditions (connection lost, pool
/// exhausted, lock contention, disk full) are retryable; constraint violations,
/// decode errors and bad SQL are bugs.
fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    const RETRY: ErrorClass = ErrorClass::External { retryable: true };
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => RETRY,
        sqlx::Error::PoolClosed => ErrorClass::External { retryable: false },
        sqlx::Error::Database(db) => match db.code() {
            Some(code) if is_transient_code(&code) => RETRY,
            _ => ErrorClass::Internal,
        },
        _ => ErrorClass::Internal,
    }
}

/// Whether a database error code names a transient condition.
///
/// SQLite reports its (extended) result code as a decimal number; the primary
/// code is its low byte: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN.
/// Dialects differ here: when Postgres lands add SQLSTATE classes 08 (connection),
/// 40001/40P01 (serialisation, deadlock), 53 (resources), 57P01 (admin shutdown);
/// for MySQL 1205 (lock wait timeout) and 1213 (deadlock).
fn is_transient_code(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|extended| matches!(extended & 0xff, 5 | 6 | 10 | 13 | 14))
}

/// The crate's result type.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_retryable_external() {
        let error = ConnectorError::io(
            "appending to",
            "/tmp/x",
            io::Error::new(io::ErrorKind::StorageFull, "no space left on device"),
        );
        assert_eq!(error.class(), ErrorClass::External { retryable: true });
        let component = ComponentError::from(error);
        assert!(component.class.is_retryable());
        assert!(component.message.contains("/tmp/x"));
    }

    #[test]
    fn corruption_is_internal() {
        let error = ConnectorError::Corrupt {
            path: "/tmp/x".into(),
            line: 3,
            reason: "not JSON".into(),
        };
        assert_eq!(error.class(), ErrorClass::Internal);
    }

    #[test]
    fn database_classes() {
        assert!(classify_sqlx(&sqlx::Error::PoolTimedOut).is_retryable());
        assert_eq!(
            classify_sqlx(&sqlx::Error::RowNotFound),
            ErrorClass::Internal
        );
        // SQLITE_BUSY_SNAPSHOT (517) is a BUSY; SQLITE_CONSTRAINT_PRIMARYKEY (1555) is not transient.
        assert!(is_transient_code("517"));
        assert!(is_transient_code("13"));
        assert!(!is_transient_code("1555"));
        assert!(!is_transient_code("23505"));
    }
}
