//! RabbitMQ: the job source (consume, acknowledge on commit, reject to the
//! dead-letter exchange, reconnect) and the job-event publisher (publisher
//! confirms behind a circuit breaker), and the dead-letter queue as the
//! reprocessor works it.
//!
//! The message body is the job envelope (`crate::envelope`,
//! `schemas/job-envelope.schema.json`).

mod config;
mod dead;
mod publisher;
mod source;
mod submit;

pub use config::RabbitMqConfig;
pub use dead::{parked_queue, DeadLetterQueue, DeadMessage, DeadVerdict, SweepCounts};
pub use publisher::RabbitMqEventPublisher;
pub use source::{job_queue_arguments, RabbitMqSource, SessionStatus};
pub use submit::JobSubmitter;
