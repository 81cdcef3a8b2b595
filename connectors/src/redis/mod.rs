//! The Redis idempotency filter: a Bloom filter of job ids shared by every pod,
//! which lets dedupe skip the job-store lookup for jobs it has certainly never
//! seen. RedisBloom (`BF.*`) when the module is loaded, otherwise a Bloom filter
//! in plain Redis strings (`SETBIT`/`GETBIT`); see [`filter`] for the key layout,
//! the TTL generations and the failure behaviour.
//!
//! ```text
//! let filter = RedisFilterConfig::new("redis-master:6379").build()?;
//! ```

pub mod config;
pub mod filter;

pub use config::{BackendChoice, RedisFilterConfig};
pub use filter::{Backend, BitmapLayout, RedisIdempotencyFilter};
