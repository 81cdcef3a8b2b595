//! The crate's one error type, each variant classed for retry and dead-letter routing.
//!
//! Messages name files, tables and job ids, never PHI: no transcript text, no
//! patient or encounter reference, no source name.

use std::io;
use std::path::PathBuf;

use mmt_core::error::ErrorClass;
use mmt_core::job::ComponentError;

use crate::config::ConfigProblem;
use crate::sql::Dialect;

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

    /// A job's transcript could not be sealed or opened (a broken keyring,
    /// a retired or unknown key, altered ciphertext). Names no content.
    #[error("job {job_id}: transcript: {source}")]
    Crypt {
        job_id: String,
        #[source]
        source: mmt_core::crypt::CryptError,
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

    /// Talking to the AMQP broker failed (connect, declare, consume, publish).
    #[error("RabbitMQ, {what}: {reason}")]
    Amqp { what: &'static str, reason: String },

    /// A sink shared between workers was poisoned by a panic in another worker.
    #[error("{0} lock poisoned by a panicked worker")]
    Poisoned(&'static str),

    /// A Kafka client call failed (connect, subscribe, poll, commit, metadata).
    /// librdkafka's errors name codes and brokers, never message content.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// The brokers answered, but the topic cannot be consumed (missing, no partitions).
    #[error("kafka topic {topic}: {reason}")]
    KafkaTopic { topic: String, reason: String },

    /// A Redis call failed (connection refused or lost, timeout, server error).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// The FHIR server answered with an error status (after `attempts` tries when
    /// it was retryable). `detail` holds a hint and the `OperationOutcome`'s issue
    /// severities and codes, never its free-text diagnostics (which may echo PHI).
    #[error("FHIR server {operation}: HTTP {status}{detail} (attempts: {attempts})")]
    FhirStatus {
        operation: &'static str,
        status: u16,
        attempts: u32,
        detail: String,
    },

    /// The FHIR server could not be reached or did not answer in time.
    #[error("FHIR server {operation}: {reason} (attempts: {attempts})")]
    FhirTransport {
        operation: &'static str,
        reason: String,
        retryable: bool,
        attempts: u32,
    },

    /// The FHIR server's answer is not what FHIR promises (e.g. no CapabilityStatement).
    #[error("FHIR server {operation}: {reason}")]
    FhirProtocol {
        operation: &'static str,
        reason: String,
    },
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
            Self::Amqp { .. } => ErrorClass::External { retryable: true },
            Self::Database(error) => classify_sqlx(error),
            Self::Kafka(error) => crate::kafka::error_class(error),
            Self::KafkaTopic { .. } => ErrorClass::External { retryable: true },
            // Redis only holds the idempotency pre-filter: any failure is worth retrying.
            Self::Redis(_) => ErrorClass::External { retryable: true },
            Self::FhirStatus { status, .. } => crate::fhir::client::status_class(*status),
            Self::FhirTransport { retryable, .. } => ErrorClass::External {
                retryable: *retryable,
            },
            Self::FhirProtocol { .. } => ErrorClass::External { retryable: false },
            Self::Crypt { source, .. } => source.class(),
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
/// exhausted, lock contention, deadlock, server shutting down, disk full) are
/// retryable; constraint violations, decode errors and bad SQL are bugs.
fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    const RETRY: ErrorClass = ErrorClass::External { retryable: true };
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => RETRY,
        sqlx::Error::PoolClosed => ErrorClass::External { retryable: false },
        sqlx::Error::Database(db) => match engine_code(db.as_ref()) {
            Some((dialect, code)) if is_transient_code(dialect, &code) => RETRY,
            _ => ErrorClass::Internal,
        },
        _ => ErrorClass::Internal,
    }
}

/// Whether the database rolled a statement or transaction back to resolve a
/// deadlock or a serialisation conflict (Postgres 40001, 40P01; MySQL 1213):
/// all of it was undone, so it may run again at once.
pub(crate) fn is_transaction_conflict(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    match engine_code(db.as_ref()) {
        Some((Dialect::Postgres, code)) => matches!(code.as_str(), "40001" | "40P01"),
        Some((Dialect::Mysql, code)) => code == "1213",
        _ => false,
    }
}

/// The engine that reported a database error, and the error's code as that
/// engine numbers it. The numbers overlap (SQLite and MySQL both use bare
/// integers), so a code means nothing without its engine. MySQL: the error
/// number (1213), not the SQLSTATE it shares with other errors (40001).
fn engine_code(db: &dyn sqlx::error::DatabaseError) -> Option<(Dialect, String)> {
    if let Some(error) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some((Dialect::Mysql, error.number().to_string()));
    }
    if let Some(error) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return Some((Dialect::Postgres, error.code().to_owned()));
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return db.code().map(|code| (Dialect::Sqlite, code.into_owned()));
    }
    None
}

/// Whether a database error code names a transient condition.
///
/// - SQLite reports its (extended) result code as a decimal number; the primary
///   code is its low byte: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN.
/// - Postgres SQLSTATEs: class 08 (connection), 40001/40P01 (serialisation,
///   deadlock), class 53 (insufficient resources), 55P03 (lock_timeout, the
///   store's busy timeout), 57P01 (admin shutdown), 57P03 (starting up).
/// - MySQL/MariaDB error numbers: 1205 (lock wait timeout), 1213 (deadlock),
///   2006 (server gone away), 2013 (connection lost during a query).
fn is_transient_code(dialect: Dialect, code: &str) -> bool {
    match dialect {
        Dialect::Sqlite => code
            .parse::<u32>()
            .is_ok_and(|extended| matches!(extended & 0xff, 5 | 6 | 10 | 13 | 14)),
        Dialect::Postgres => {
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P03")
        }
        Dialect::Mysql => matches!(code, "1205" | "1213" | "2006" | "2013"),
    }
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
        assert!(is_transient_code(Dialect::Sqlite, "517"));
        assert!(is_transient_code(Dialect::Sqlite, "13"));
        assert!(!is_transient_code(Dialect::Sqlite, "1555"));
        assert!(!is_transient_code(Dialect::Sqlite, "23505"));
    }

    #[test]
    fn postgres_codes() {
        for code in [
            "08000", "08006", "08P01", "40001", "40P01", "53100", "53300", "55P03", "57P01",
            "57P03",
        ] {
            assert!(is_transient_code(Dialect::Postgres, code), "{code}");
        }
        // Unique violation, undefined table, syntax error, check violation; and
        // 42501 (insufficient privilege), whose low byte would be SQLite's BUSY.
        for code in ["23505", "42P01", "42601", "23514", "42501"] {
            assert!(!is_transient_code(Dialect::Postgres, code), "{code}");
        }
    }

    #[test]
    fn mysql_codes() {
        for code in ["1205", "1213", "2006", "2013"] {
            assert!(is_transient_code(Dialect::Mysql, code), "{code}");
        }
        // Duplicate key, no such table, syntax error; 1285 has SQLite BUSY's low byte.
        for code in ["1062", "1146", "1064", "1285"] {
            assert!(!is_transient_code(Dialect::Mysql, code), "{code}");
        }
    }

    #[test]
    fn only_database_rollbacks_are_transaction_conflicts() {
        assert!(!is_transaction_conflict(&sqlx::Error::PoolTimedOut));
        assert!(!is_transaction_conflict(&sqlx::Error::RowNotFound));
    }
}
