//! Shared domain types of MMT, kept small: every crate depends on this one.

pub mod content;
pub mod control;
pub mod crypt;
pub mod error;
pub mod idempotency;
pub mod input;
pub mod job;
pub mod owner_only;
pub mod phi;
pub mod redact;
pub mod retry;
pub mod source;
pub mod spool;
pub mod telemetry;
pub mod trace;
pub mod transcript;

pub use error::ErrorClass;
pub use transcript::{Segment, Transcript};
