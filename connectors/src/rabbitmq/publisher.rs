//! Job events on RabbitMQ: every audit event, published with publisher confirms.
//!
//! Events go to the topic exchange `events_exchange` with routing key
//! `job.<action>` (`job.completed`, `job.dead_lettered`, `job.duplicate`, ...),
//! as JSON, persistent, with `message_id` = `<job id>:<action>`: delivery is at
//! least once (a commit retried after a crash publishes again), and consumers
//! drop repeats by that id. The body is the audit event, which holds ids and
//! masked references only, never a transcript.
//!
//! A publish counts as done only when the broker confirms it. Failures count in
//! `publish_failures_total`; consecutive failures open a circuit breaker
//! (`breaker_open_total`), which then fails publishes at once until its
//! cooldown ends, so a dead broker does not cost a timeout per job. Either way
//! the commit stage keeps the outcome and retries it with backoff.

use std::time::{Duration, Instant};

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use mmt_core::error::ErrorClass;
use mmt_core::job::{AuditEvent, AuditSink, ComponentError};
use mmt_core::telemetry::Metrics;
use tokio::runtime::Runtime;

use super::config::RabbitMqConfig;
use super::source::{amqp_runtime, open_channel, publish_confirmed, Outgoing};
use crate::breaker::{CircuitBreaker, Permit, Tripped};
use crate::config::validated;
use crate::envelope::is_trace_parent;
use crate::error::{ConnectorError, Result};

/// Publishes audit events as job events. See the module docs.
pub struct RabbitMqEventPublisher {
    config: RabbitMqConfig,
    session: Option<(Connection, Channel)>,
    breaker: CircuitBreaker,
    metrics: Option<Metrics>,
    runtime: Runtime,
}

impl std::fmt::Debug for RabbitMqEventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqEventPublisher")
            .field("exchange", &self.config.events_exchange)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl RabbitMqEventPublisher {
    /// Validates `config` and connects (the first connection must succeed).
    pub fn connect(config: &RabbitMqConfig, metrics: Option<Metrics>) -> Result<Self> {
        validated("RabbitMQ event publisher", config.validate())?;
        let mut publisher = Self {
            config: config.clone(),
            session: None,
            breaker: CircuitBreaker::new(config.breaker_policy()),
            metrics,
            runtime: amqp_runtime()?,
        };
        publisher
            .ensure_session()
            .map_err(|reason| ConnectorError::Amqp {
                what: "connecting the event publisher",
                reason,
            })?;
        Ok(publisher)
    }

    /// Publishes one event and waits for the broker's confirm.
    pub fn publish(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
        let now = Instant::now();
        if let Permit::Refused { retry_in } = self.breaker.permit(now) {
            return Err(ComponentError::new(
                ErrorClass::External { retryable: true },
                format!(
                    "event publishing is paused: the circuit breaker is open for {} ms more",
                    retry_in.as_millis()
                ),
            ));
        }
        match self.try_publish(event) {
            Ok(()) => {
                self.breaker.record_success();
                Ok(())
            }
            Err(reason) => {
                // Start from a fresh connection next time.
                self.session = None;
                if let Some(metrics) = &self.metrics {
                    metrics.publish_failures_total.inc();
                }
                if self.breaker.record_failure(Instant::now()) == Tripped::Opened {
                    if let Some(metrics) = &self.metrics {
                        metrics.breaker_open_total.inc();
                    }
                    tracing::warn!(%reason, cooldown_ms = self.config.breaker_cooldown_ms, "event publishing circuit breaker opened");
                }
                Err(ComponentError::new(
                    ErrorClass::External { retryable: true },
                    format!("publishing a job event failed: {reason}"),
                ))
            }
        }
    }

    fn try_publish(&mut self, event: &AuditEvent) -> std::result::Result<(), String> {
        self.ensure_session()?;
        let Some((_, channel)) = &self.session else {
            return Err("no channel".into());
        };
        let action = serde_json::to_value(event.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "event".into());
        let routing_key = format!("job.{}", action.trim_start_matches("job_"));
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(format!("{}:{action}", event.job_id).into())
            .with_timestamp(u64::try_from(event.at).unwrap_or_default())
            .with_app_id("mmt".into())
            .with_headers(event_headers(event));
        let message = Outgoing {
            exchange: &self.config.events_exchange,
            routing_key: &routing_key,
            body: &body,
            properties,
        };
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        self.runtime
            .block_on(publish_confirmed(channel, message, timeout))
    }

    fn ensure_session(&mut self) -> std::result::Result<(), String> {
        let usable = self.session.as_ref().is_some_and(|(connection, channel)| {
            connection.status().connected() && channel.status().connected()
        });
        if usable {
            return Ok(());
        }
        let config = self.config.clone();
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let session = self.runtime.block_on(async move {
            tokio::time::timeout(timeout, async {
                let (connection, channel) = open_channel(&config, "publisher").await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                if config.declare_topology {
                    channel
                        .exchange_declare(
                            config.events_exchange.as_str().into(),
                            ExchangeKind::Topic,
                            ExchangeDeclareOptions {
                                durable: true,
                                ..ExchangeDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                }
                Ok::<_, lapin::Error>((connection, channel))
            })
            .await
            .map_err(|_| format!("connecting took over {} ms", timeout.as_millis()))?
            .map_err(|e| e.to_string())
        })?;
        self.session = Some(session);
        Ok(())
    }
}

/// Headers of an event: its tenant and correlation id, and a `traceparent`
/// continuing the submitter's trace when the job came with one: the span that
/// publishes it (the job's commit span) when tracing is on, else one derived
/// from the job's.
fn event_headers(event: &AuditEvent) -> FieldTable {
    let mut headers = FieldTable::default();
    let child = event.detail.get("traceparent").and_then(|parent| {
        // The current span only where it is in the job's trace (not some
        // enclosing span of another trace).
        mmt_core::trace::current_trace_parent()
            .filter(|current| current.get(3..35) == parent.get(3..35))
            .or_else(|| child_trace_parent(parent, &event.correlation_id))
    });
    if let Some(child) = child {
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(child.as_str().into()),
        );
    }
    headers.insert(
        "tenant".into(),
        AMQPValue::LongString(event.tenant.as_str().into()),
    );
    headers.insert(
        "correlation_id".into(),
        AMQPValue::LongString(event.correlation_id.as_str().into()),
    );
    headers
}

/// The `traceparent` of the span that publishes the event: the submitter's
/// trace id, with this job attempt's correlation id (16 hex digits) as the
/// parent span id.
fn child_trace_parent(parent: &str, correlation_id: &str) -> Option<String> {
    let span_id = correlation_id.len() == 16
        && correlation_id.bytes().all(|b| b.is_ascii_hexdigit())
        && correlation_id.bytes().any(|b| b != b'0');
    if !span_id || !is_trace_parent(parent) {
        return None;
    }
    let mut parts = parent.split('-');
    let trace_id = parts.nth(1)?;
    let flags = parts.nth(1)?;
    Some(format!("00-{trace_id}-{correlation_id}-{flags}"))
}

impl AuditSink for RabbitMqEventPublisher {
    fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
        self.publish(event)
    }
}

impl Drop for RabbitMqEventPublisher {
    fn drop(&mut self) {
        if let Some((connection, channel)) = self.session.take() {
            self.runtime.block_on(async move {
                let closing = async {
                    let _ = channel.close(200, "worker stopping".into()).await;
                    let _ = connection.close(200, "worker stopping".into()).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_continue_the_submitters_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            child_trace_parent(parent, "d8cdbb3302f0211c").as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-d8cdbb3302f0211c-01")
        );
        assert_eq!(child_trace_parent("bogus", "d8cdbb3302f0211c"), None);
        assert_eq!(child_trace_parent(parent, "not hex at all!!"), None);
    }
}
