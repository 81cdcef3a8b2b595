//! The dead-letter queue `<queue>.dead` as the reprocessor works it: each
//! message waiting there is retried (its body republished, unchanged, to the
//! job queue), parked (moved to `<queue>.parked`, where nothing consumes it),
//! dropped (its job completed meanwhile) or kept for a later pass.
//!
//! A message is acknowledged in `<queue>.dead` only after its copy is
//! confirmed by the broker where it goes, so a crash in between leaves it in
//! both places, never in neither: the job store's idempotency absorbs the
//! repeat.

use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection};
use tokio::runtime::Runtime;

use super::config::RabbitMqConfig;
use super::source::{amqp_runtime, declare_topology, open_channel, publish_confirmed, Outgoing};
use crate::config::validated;
use crate::error::{ConnectorError, Result};

/// What becomes of one dead message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadVerdict {
    /// Republish it to the job queue.
    Retry,
    /// Move it to the parked queue: never retried again.
    Park,
    /// Acknowledge it: its job is done.
    Drop,
    /// Leave it in the dead-letter queue for a later pass.
    Keep,
}

/// One message of the dead-letter queue, as the judge sees it.
#[derive(Debug)]
pub struct DeadMessage<'a> {
    /// The job envelope, as it was published.
    pub body: &'a [u8],
    /// The AMQP message id, if it has one.
    pub message_id: Option<&'a str>,
}

/// What one sweep of the queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    pub retried: u64,
    pub parked: u64,
    pub dropped: u64,
    pub kept: u64,
}

/// A connection to a job queue's dead-letter and parked queues.
pub struct DeadLetterQueue {
    config: RabbitMqConfig,
    connection: Connection,
    channel: Channel,
    runtime: Runtime,
}

impl std::fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("queue", &self.config.dead_letter_queue)
            .finish_non_exhaustive()
    }
}

/// The queue parked messages are moved to: `<queue>.parked`.
pub fn parked_queue(config: &RabbitMqConfig) -> String {
    format!("{}.parked", config.queue)
}

fn amqp(what: &'static str) -> impl Fn(String) -> ConnectorError {
    move |reason| ConnectorError::Amqp { what, reason }
}

impl DeadLetterQueue {
    /// Connects with publisher confirms; declares the topology (when the
    /// config says so) and the parked queue.
    pub fn connect(config: &RabbitMqConfig) -> Result<Self> {
        validated("RabbitMQ dead-letter queue", config.validate())?;
        let runtime = amqp_runtime()?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let parked = parked_queue(config);
        let (connection, channel) = runtime
            .block_on(async {
                tokio::time::timeout(timeout, async {
                    let (connection, channel) = open_channel(config, "dlq-reprocessor").await?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    if config.declare_topology {
                        declare_topology(config, &channel).await?;
                    }
                    channel
                        .queue_declare(
                            parked.as_str().into(),
                            QueueDeclareOptions::durable(),
                            FieldTable::default(),
                        )
                        .await?;
                    Ok::<_, lapin::Error>((connection, channel))
                })
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
            })
            .map_err(amqp("connecting to the dead-letter queue"))?;
        Ok(Self {
            config: config.clone(),
            connection,
            channel,
            runtime,
        })
    }

    /// Goes once through the messages waiting now (those that arrive during
    /// the sweep wait for the next), doing with each what `judge` says.
    /// Kept messages go back to the queue at the end, in their order.
    pub fn sweep(
        &mut self,
        mut judge: impl FnMut(DeadMessage<'_>) -> Result<DeadVerdict>,
    ) -> Result<SweepCounts> {
        let mut counts = SweepCounts::default();
        let mut kept: Vec<Acker> = Vec::new();
        let waiting = self.depth()?;
        let outcome = (|| {
            for _ in 0..waiting {
                let Some(message) = self
                    .runtime
                    .block_on(self.channel.basic_get(
                        self.config.dead_letter_queue.as_str().into(),
                        BasicGetOptions { no_ack: false },
                    ))
                    .map_err(|e| amqp("reading the dead-letter queue")(e.to_string()))?
                else {
                    break;
                };
                let delivery = message.delivery;
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned());
                let verdict = judge(DeadMessage {
                    body: &delivery.data,
                    message_id: message_id.as_deref(),
                })?;
                let destination = match verdict {
                    DeadVerdict::Retry => Some(self.config.queue.clone()),
                    DeadVerdict::Park => Some(parked_queue(&self.config)),
                    DeadVerdict::Drop => None,
                    DeadVerdict::Keep => {
                        kept.push(delivery.acker);
                        counts.kept += 1;
                        continue;
                    }
                };
                if let Some(queue) = destination {
                    let outgoing = Outgoing {
                        exchange: "",
                        routing_key: &queue,
                        body: &delivery.data,
                        properties: delivery.properties.clone(),
                    };
                    let timeout = Duration::from_millis(self.config.publish_timeout_ms);
                    self.runtime
                        .block_on(publish_confirmed(&self.channel, outgoing, timeout))
                        .map_err(amqp("moving a dead message"))?;
                }
                self.runtime
                    .block_on(delivery.acker.ack(BasicAckOptions::default()))
                    .map_err(|e| amqp("acknowledging a dead message")(e.to_string()))?;
                match verdict {
                    DeadVerdict::Retry => counts.retried += 1,
                    DeadVerdict::Park => counts.parked += 1,
                    DeadVerdict::Drop | DeadVerdict::Keep => counts.dropped += 1,
                }
            }
            Ok(())
        })();
        // Kept (and, after an error, unjudged) messages go back where they were.
        for acker in kept {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            self.runtime
                .block_on(acker.nack(requeue))
                .map_err(|e| amqp("returning a dead message")(e.to_string()))?;
        }
        outcome.map(|()| counts)
    }

    /// Messages waiting in the dead-letter queue.
    pub fn depth(&self) -> Result<u32> {
        self.count(&self.config.dead_letter_queue)
    }

    /// Messages waiting in the parked queue.
    pub fn parked_depth(&self) -> Result<u32> {
        self.count(&parked_queue(&self.config))
    }

    fn count(&self, queue: &str) -> Result<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.runtime
            .block_on(
                self.channel
                    .queue_declare(queue.into(), options, FieldTable::default()),
            )
            .map(|queue| queue.message_count())
            .map_err(|err| amqp("reading a queue's depth")(err.to_string()))
    }

    /// Deletes the parked queue (messages included): for tests on a shared broker.
    pub fn delete_parked(self) -> Result<()> {
        let parked = parked_queue(&self.config);
        self.runtime
            .block_on(self.channel.queue_delete(
                parked.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            ))
            .map(drop)
            .map_err(|err| amqp("deleting the parked queue")(err.to_string()))
    }
}

impl Drop for DeadLetterQueue {
    fn drop(&mut self) {
        let closing = async {
            let _ = self.channel.close(200, "done".into()).await;
            let _ = self.connection.close(200, "done".into()).await;
        };
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        });
    }
}
