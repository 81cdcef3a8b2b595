//! The MMT dataflow runtime and its typed configuration.
//!
//! [`config`] reads and validates the environment; [`run`] assembles the timely
//! dataflow of `operators` over the sinks of `connectors` and drives it;
//! [`retention`] purges old data.

pub mod config;
pub mod dlq;
pub mod retention;
pub mod run;
pub mod serve;

pub use config::Config;
