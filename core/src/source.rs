//! Where jobs come from: the record a source hands to the dataflow, and the
//! contract between a source (a folder, a RabbitMQ queue, a Kafka topic) and
//! the driver that acknowledges its messages.
//!
//! A message is settled only once every sink has committed its job's outcome
//! (the dataflow's probe has passed the message's epoch). Settling acks a
//! RabbitMQ message, rejects it to the dead-letter exchange when its job was
//! dead-lettered, or commits a Kafka offset. A crash before settling causes a
//! redelivery, which the idempotent sinks absorb.

use crate::job::ComponentError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Audio as it arrives from a source, before anything is checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceRecord {
    pub tenant: String,
    /// File name or message id (may hold PHI: never logged).
    pub source: String,
    /// The encoded audio, when it came inline (a broker message, an upload).
    pub bytes: Vec<u8>,
    /// The audio as a file that is read while it decodes (a folder's file),
    /// so that a long recording is never held in memory; `bytes` is then empty.
    #[serde(default)]
    pub file: Option<AudioFile>,
    /// File extension or format name, a hint for the container probe.
    pub extension: Option<String>,
    pub patient_reference: Option<String>,
    pub encounter_reference: Option<String>,
    /// Unix seconds.
    pub received_at: i64,
    /// Set when the source could not read the job (then `bytes` is empty); the
    /// reason names no PHI and reaches the dead-letter queue.
    pub read_error: Option<String>,
    /// The broker delivered this message before (its earlier delivery was never
    /// acknowledged): a repeat of it is a redelivery, not a duplicate submission.
    #[serde(default)]
    pub redelivered: bool,
    /// W3C `traceparent` the message carried, if any.
    #[serde(default)]
    pub trace_parent: Option<String>,
}

/// Audio left in a file: where it is (may hold PHI: never logged), and the
/// hex SHA-256 of its content, computed as it was read (the job's identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioFile {
    pub path: PathBuf,
    pub content_hash: String,
}

/// A source's handle on one message, handed back to it when the message settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryTag(pub u64);

/// One message from a source.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: DeliveryTag,
    pub record: SourceRecord,
}

/// How a message ended, once its job's outcome is durable in every sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// Transcribed, a duplicate, or finished before: acknowledge.
    Committed,
    /// The job was dead-lettered (its letter is in the DLQ): reject the message
    /// to the broker's dead-letter route where it has one, else acknowledge.
    DeadLettered,
}

/// Jobs waiting in front of a source, for the queue gauges (each gauge has
/// one meaning, so the kind of queue decides which one a reading sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Messages ready in a broker's queue, as the broker reports them
    /// (`transcription_queue_depth`).
    Broker(u64),
    /// Accepted uploads waiting in this process (`async_task_queue_size`).
    Uploads(u64),
}

/// A source of jobs, driven by one thread (timely worker 0).
pub trait JobSource: Send {
    /// Up to `max` new messages, waiting at most `wait` when none is ready.
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ComponentError>;

    /// Settles messages whose outcomes are durable. A message that cannot be
    /// settled (its connection is gone) is redelivered by the broker later, so
    /// an error here never loses work.
    fn settle(&mut self, settled: &[(DeliveryTag, Settlement)]) -> Result<(), ComponentError>;

    /// Whether the source will never yield another message (a folder read to
    /// its end in batch mode). Brokers never run dry by themselves.
    fn exhausted(&self) -> bool {
        false
    }

    /// Whether the source can receive messages now: `false` while a broker
    /// connection is down and being reopened. The driver's idle clock
    /// (`--idle-exit`) stands still meanwhile: nothing can arrive then, so
    /// the wait says nothing about the queue, whose backlog may be waiting on
    /// the other side of the outage.
    fn connected(&self) -> bool {
        true
    }

    /// What waits in front of the source now, if it knows (cheap: the driver
    /// asks on every step; a broker reading is refreshed in the background).
    fn backlog(&self) -> Option<Backlog> {
        None
    }

    /// A short name for logs (`directory`, `rabbitmq`, `kafka`).
    fn kind(&self) -> &'static str;
}
