//! Submitting jobs to the queue: what a clinical system's integration does
//! (and `mmt submit`): publish job envelopes with publisher confirms.

use std::time::Duration;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use mmt_core::trace::{continue_trace, current_trace_parent, TRACE_PARENT_HEADER};
use tokio::runtime::Runtime;

use super::config::RabbitMqConfig;
use super::source::{
    amqp_runtime, declare_topology, job_queue_arguments, open_channel, publish_confirmed, Outgoing,
};
use crate::config::validated;
use crate::envelope::JobEnvelope;
use crate::error::{ConnectorError, Result};

/// Publishes job envelopes to the job queue and reads its depth.
pub struct JobSubmitter {
    config: RabbitMqConfig,
    connection: Connection,
    channel: Channel,
    runtime: Runtime,
}

impl std::fmt::Debug for JobSubmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSubmitter")
            .field("queue", &self.config.queue)
            .finish_non_exhaustive()
    }
}

impl JobSubmitter {
    /// Connects, enables publisher confirms and declares the topology.
    pub fn connect(config: &RabbitMqConfig) -> Result<Self> {
        validated("RabbitMQ submitter", config.validate())?;
        let runtime = amqp_runtime()?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let (connection, channel) = runtime
            .block_on(async {
                tokio::time::timeout(timeout, async {
                    let (connection, channel) = open_channel(config, "submitter").await?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    if config.declare_topology {
                        declare_topology(config, &channel).await?;
                    }
                    Ok::<_, lapin::Error>((connection, channel))
                })
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
            })
            .map_err(|reason| ConnectorError::Amqp {
                what: "connecting the submitter",
                reason,
            })?;
        Ok(Self {
            config: config.clone(),
            connection,
            channel,
            runtime,
        })
    }

    /// Publishes one job (persistent, with its priority) and waits for the
    /// broker's confirm. `message_id` names the message in logs and dead letters.
    /// `trace_parent` is the caller's (an HTTP client's): the job's trace starts
    /// there, or here when there is none; the message carries the `traceparent`
    /// of this publish's span.
    pub fn submit(
        &self,
        envelope: &JobEnvelope,
        message_id: &str,
        trace_parent: Option<&str>,
    ) -> Result<()> {
        let span = tracing::info_span!(
            "submit",
            otel.kind = "producer",
            messaging.destination.name = %self.config.queue,
        );
        continue_trace(&span, trace_parent);
        let _span = span.enter();
        let own = current_trace_parent();
        let trace_parent = own.as_deref().or(trace_parent);
        let body = serde_json::to_vec(envelope).map_err(|source| ConnectorError::Serialize {
            what: "job envelope",
            source,
        })?;
        let mut headers = FieldTable::default();
        if let Some(trace_parent) = trace_parent {
            headers.insert(
                TRACE_PARENT_HEADER.into(),
                AMQPValue::LongString(trace_parent.into()),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_priority(envelope.priority.min(9))
            .with_message_id(message_id.into())
            .with_headers(headers);
        // The default exchange routes by queue name.
        let message = Outgoing {
            exchange: "",
            routing_key: &self.config.queue,
            body: &body,
            properties,
        };
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        self.runtime
            .block_on(publish_confirmed(&self.channel, message, timeout))
            .map_err(|reason| ConnectorError::Amqp {
                what: "submitting a job",
                reason,
            })
    }

    /// Messages ready in the job queue (not counting those delivered and not
    /// yet acknowledged).
    pub fn queue_depth(&self) -> Result<u32> {
        self.passive_count(&self.config.queue, job_queue_arguments(&self.config))
    }

    /// Messages waiting in the dead-letter queue.
    pub fn dead_letter_depth(&self) -> Result<u32> {
        self.passive_count(&self.config.dead_letter_queue, FieldTable::default())
    }

    /// Deletes the job queue, its dead-letter queue and exchange (messages
    /// included): for decommissioning a queue, and for tests on a shared broker.
    /// The events exchange is shared by every queue and stays.
    pub fn delete_queues(self) -> Result<()> {
        let config = &self.config;
        self.runtime
            .block_on(async {
                let options = QueueDeleteOptions::default();
                self.channel
                    .queue_delete(config.queue.as_str().into(), options)
                    .await?;
                self.channel
                    .queue_delete(config.dead_letter_queue.as_str().into(), options)
                    .await?;
                self.channel
                    .exchange_delete(
                        config.dead_letter_exchange.as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await
            })
            .map_err(|err| ConnectorError::Amqp {
                what: "deleting queues",
                reason: err.to_string(),
            })
    }

    fn passive_count(&self, queue: &str, arguments: FieldTable) -> Result<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.runtime
            .block_on(self.channel.queue_declare(queue.into(), options, arguments))
            .map(|queue| queue.message_count())
            .map_err(|err| ConnectorError::Amqp {
                what: "reading a queue's depth",
                reason: err.to_string(),
            })
    }
}

impl Drop for JobSubmitter {
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
