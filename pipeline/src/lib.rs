//! The MMT dataflow runtime and its typed configuration.

pub mod config;

pub use config::Config;
