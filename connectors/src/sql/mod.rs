//! The job store over SQL: PostgreSQL and MySQL/MariaDB in production, SQLite
//! for development (refused in production).
//!
//! Schema in `connectors/migrations/<dialect>/`, embedded at compile time and
//! applied on connect.

mod api;
mod config;
mod row;
mod store;

pub use api::{DueCallback, IdempotencyRecord, NewSubmission, PageQuery, SubmissionOutcome};
pub use config::{Dialect, SqlJobStoreConfig};
pub use row::{JobFailure, JobRow};
pub use store::SqlJobStore;
