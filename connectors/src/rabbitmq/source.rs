//! The RabbitMQ job source.
//!
//! A background task owns the AMQP connection: it consumes the job queue with
//! `basic.qos` prefetch (the broker never hands out more than `prefetch`
//! unacknowledged messages, which is the back-pressure), forwards each message
//! to the dataflow's driver, and acknowledges or rejects messages when the
//! driver settles them. When the connection fails it reconnects with
//! exponential backoff; messages delivered on the lost connection are
//! redelivered by the broker (flagged `redelivered`), and their late
//! settlements are dropped, so nothing is lost and the idempotent sinks absorb
//! the repeat.
//!
//! While a session is up it also reads the queue's backlog (messages ready,
//! not yet delivered to any consumer) from the broker every few seconds, for
//! the `transcription_queue_depth` gauge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, Channel, Connection, ConnectionProperties, DefaultConnectionBuilder, ExchangeKind,
};
use mmt_core::error::ErrorClass;
use mmt_core::job::{unix_now, ComponentError};
use mmt_core::source::{Backlog, Delivery, DeliveryTag, JobSource, Settlement};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::config::RabbitMqConfig;
use crate::config::validated;
use crate::envelope::{EnvelopeReader, MessageContext};
use crate::error::{ConnectorError, Result};

/// How often a consuming session asks the broker for the queue's backlog (a
/// passive `queue.declare`: one small round trip).
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// One message as the connection task hands it over.
struct Inbound {
    tag: DeliveryTag,
    message_id: Option<String>,
    redelivered: bool,
    trace_parent: Option<String>,
    body: Vec<u8>,
}

/// Connection state shared with the task, for health checks and tests.
#[derive(Debug, Default)]
pub struct SessionStatus {
    connected: AtomicBool,
    sessions: AtomicU64,
    /// Whether `backlog` holds a reading of this session.
    backlog_known: AtomicBool,
    backlog: AtomicU64,
}

impl SessionStatus {
    /// Whether a consuming session is up now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sessions opened so far (1 + reconnections).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Messages ready in the queue at the last reading, if the session up
    /// now has read it.
    pub fn backlog(&self) -> Option<u64> {
        self.backlog_known
            .load(Ordering::Relaxed)
            .then(|| self.backlog.load(Ordering::Relaxed))
    }

    fn set_backlog(&self, messages: Option<u32>) {
        if let Some(messages) = messages {
            self.backlog.store(u64::from(messages), Ordering::Relaxed);
        }
        self.backlog_known
            .store(messages.is_some(), Ordering::Relaxed);
    }
}

/// Consumes jobs from a RabbitMQ queue. See the module docs.
pub struct RabbitMqSource {
    inbound: mpsc::Receiver<Inbound>,
    settle: async_mpsc::UnboundedSender<Vec<(DeliveryTag, Settlement)>>,
    reader: EnvelopeReader,
    status: Arc<SessionStatus>,
    // Last field: dropped after the channels above, which ends the task first.
    runtime: Runtime,
}

impl std::fmt::Debug for RabbitMqSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSource")
            .field("connected", &self.status.connected())
            .finish_non_exhaustive()
    }
}

impl RabbitMqSource {
    /// Validates `config`, connects (failing if the first connection cannot be
    /// made within `connect_timeout_ms`), declares the topology and starts consuming.
    pub fn connect(config: &RabbitMqConfig, reader: EnvelopeReader) -> Result<Self> {
        validated("RabbitMQ source", config.validate())?;
        let runtime = amqp_runtime()?;
        let (inbound_tx, inbound) = mpsc::channel();
        let (settle, settle_rx) = async_mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let status = Arc::new(SessionStatus::default());
        let task = Supervisor {
            config: config.clone(),
            inbound: inbound_tx,
            settle: settle_rx,
            status: Arc::clone(&status),
            next_tag: 0,
        };
        runtime.spawn(task.run(ready_tx));
        runtime
            .block_on(ready_rx)
            .map_err(|_| ConnectorError::Amqp {
                what: "connecting",
                reason: "the connection task ended".into(),
            })??;
        tracing::info!(broker = %config.redacted_url(), queue = %config.queue, prefetch = config.prefetch, "consuming from RabbitMQ");
        Ok(Self {
            inbound,
            settle,
            reader,
            status,
            runtime,
        })
    }

    /// The connection state, shared with the task.
    pub fn status(&self) -> Arc<SessionStatus> {
        Arc::clone(&self.status)
    }

    fn delivery(&self, message: Inbound) -> Delivery {
        let context = MessageContext {
            message_id: message
                .message_id
                .unwrap_or_else(|| format!("amqp-{}", message.tag.0)),
            received_at: unix_now(),
            redelivered: message.redelivered,
            trace_parent: message.trace_parent,
        };
        Delivery {
            tag: message.tag,
            record: self.reader.read(&message.body, context),
        }
    }
}

impl JobSource for RabbitMqSource {
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ComponentError> {
        let mut out = Vec::new();
        let first = if wait.is_zero() {
            self.inbound.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => None,
                mpsc::TryRecvError::Disconnected => Some(()),
            })
        } else {
            self.inbound.recv_timeout(wait).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => None,
                mpsc::RecvTimeoutError::Disconnected => Some(()),
            })
        };
        match first {
            Ok(message) => out.push(self.delivery(message)),
            Err(None) => return Ok(out),
            Err(Some(())) => return Err(task_ended()),
        }
        while out.len() < max {
            match self.inbound.try_recv() {
                Ok(message) => out.push(self.delivery(message)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn settle(&mut self, settled: &[(DeliveryTag, Settlement)]) -> Result<(), ComponentError> {
        if settled.is_empty() {
            return Ok(());
        }
        self.settle.send(settled.to_vec()).map_err(|_| task_ended())
    }

    fn backlog(&self) -> Option<Backlog> {
        self.status.backlog().map(Backlog::Broker)
    }

    fn connected(&self) -> bool {
        self.status.connected()
    }

    fn kind(&self) -> &'static str {
        "rabbitmq"
    }
}

impl Drop for RabbitMqSource {
    fn drop(&mut self) {
        // Close the settlement channel so the task closes its connection
        // cleanly, then give it a moment to do so.
        let (closed_tx, _) = async_mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.settle, closed_tx));
        let status = Arc::clone(&self.status);
        self.runtime.block_on(async move {
            for _ in 0..20 {
                if !status.connected() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }
}

fn task_ended() -> ComponentError {
    ComponentError::new(
        ErrorClass::External { retryable: false },
        "the RabbitMQ connection task has ended",
    )
}

/// A runtime with one worker thread: lapin's I/O (heartbeats included) keeps
/// running while the dataflow thread is busy transcribing.
pub(crate) fn amqp_runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mmt-amqp")
        .enable_all()
        .build()
        .map_err(ConnectorError::Runtime)
}

/// Opens a connection and one channel on it.
pub(crate) async fn open_channel(
    config: &RabbitMqConfig,
    role: &str,
) -> std::result::Result<(Connection, Channel), lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{}-{role}", config.connection_name).into());
    let tls = config
        .tls_config()
        .map_err(|error| lapin::Error::from(std::io::Error::other(error.to_string())))?;
    let connection = DefaultConnectionBuilder::new()?
        .with_uri_str(config.connection_url())
        .with_properties(properties)
        .with_tls_config(tls)
        .connect()
        .await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// One message to publish.
pub(crate) struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: lapin::BasicProperties,
}

/// Publishes on a channel in confirm mode and waits for the broker's confirm:
/// only then is the message durable on the broker.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    message: Outgoing<'_>,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let confirm = tokio::time::timeout(timeout, async {
        channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions::default(),
                message.body,
                message.properties,
            )
            .await?
            .await
    })
    .await
    .map_err(|_| format!("no confirm within {} ms", timeout.as_millis()))?
    .map_err(|e| e.to_string())?;
    if confirm.is_nack() {
        return Err("the broker refused the message (nack)".to_owned());
    }
    Ok(())
}

/// Declares the job queue, its dead-letter route and the events exchange.
pub(crate) async fn declare_topology(
    config: &RabbitMqConfig,
    channel: &Channel,
) -> std::result::Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            config.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            config.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            config.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            config.dead_letter_queue.as_str().into(),
            config.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            job_queue_arguments(config),
        )
        .await?;
    Ok(())
}

/// The job queue's arguments; publishers declaring the queue must use the same.
pub fn job_queue_arguments(config: &RabbitMqConfig) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(config.dead_letter_exchange.as_str().into()),
    );
    arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    arguments
}

/// Why a session ended.
enum SessionEnd {
    /// The source was dropped: stop for good.
    SourceGone,
    /// The connection or channel failed: reconnect.
    Lost(String),
}

/// The connection task: opens sessions and reopens them when they fail.
struct Supervisor {
    config: RabbitMqConfig,
    inbound: mpsc::Sender<Inbound>,
    settle: async_mpsc::UnboundedReceiver<Vec<(DeliveryTag, Settlement)>>,
    status: Arc<SessionStatus>,
    next_tag: u64,
}

impl Supervisor {
    async fn run(mut self, ready: oneshot::Sender<Result<()>>) {
        let mut ready = Some(ready);
        let policy = self.config.reconnect_policy();
        let mut backoff = policy.backoff();
        let mut attempt = 0u32;
        loop {
            let opened = tokio::time::timeout(
                Duration::from_millis(self.config.connect_timeout_ms),
                self.open(),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            match opened {
                Ok((connection, channel, consumer)) => {
                    attempt = 0;
                    backoff = policy.backoff();
                    self.status.sessions.fetch_add(1, Ordering::Relaxed);
                    self.status.connected.store(true, Ordering::Relaxed);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    } else {
                        tracing::info!("reconnected to RabbitMQ");
                    }
                    let end = self.consume(&connection, &channel, consumer).await;
                    self.status.connected.store(false, Ordering::Relaxed);
                    self.status.set_backlog(None);
                    match end {
                        SessionEnd::SourceGone => {
                            let _ = channel.close(200, "worker stopping".into()).await;
                            let _ = connection.close(200, "worker stopping".into()).await;
                            return;
                        }
                        SessionEnd::Lost(reason) => {
                            tracing::warn!(%reason, "RabbitMQ connection lost; unacknowledged messages will be redelivered");
                        }
                    }
                }
                Err(reason) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(ConnectorError::Amqp {
                            what: "connecting",
                            reason,
                        }));
                        return;
                    }
                    // One line per outage: the loss above, and "reconnected" at its end.
                    tracing::debug!(%reason, attempt, "reconnecting to RabbitMQ failed");
                }
            }
            let delay = backoff.next().unwrap_or(policy.cap());
            attempt = attempt.saturating_add(1);
            // Settlements of the lost session are meaningless now (the broker
            // redelivers those messages); drop them while waiting.
            let deadline = tokio::time::sleep(delay);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    batch = self.settle.recv() => if batch.is_none() { return },
                }
            }
        }
    }

    async fn open(&self) -> std::result::Result<(Connection, Channel, lapin::Consumer), String> {
        let (connection, channel) = open_channel(&self.config, "consumer")
            .await
            .map_err(|e| e.to_string())?;
        if self.config.declare_topology {
            declare_topology(&self.config, &channel)
                .await
                .map_err(|e| e.to_string())?;
        }
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                format!("{}-consumer", self.config.connection_name).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((connection, channel, consumer))
    }

    /// Forwards deliveries, applies settlements and reads the backlog until
    /// the session fails.
    ///
    /// Every round trip to the broker (a backlog query, an ack) is bounded
    /// by `publish_timeout_ms`, and the connection's state is checked on each
    /// backlog tick: a request sent into a connection that has just failed
    /// may never be answered, and a session stuck awaiting it would neither
    /// reconnect nor report itself down, so the worker would take the silence
    /// for an empty queue and exit on `--idle-exit` with the queue still full.
    async fn consume(
        &mut self,
        connection: &Connection,
        channel: &Channel,
        mut consumer: lapin::Consumer,
    ) -> SessionEnd {
        let reply_timeout = Duration::from_millis(self.config.publish_timeout_ms);
        let mut ackers: HashMap<DeliveryTag, Acker> = HashMap::new();
        // The first tick is immediate: the gauge is right from the start.
        let mut backlog_tick = tokio::time::interval(BACKLOG_INTERVAL);
        backlog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = backlog_tick.tick() => {
                    if !connection.status().connected() {
                        return SessionEnd::Lost("the connection is closed".into());
                    }
                    match bounded(reply_timeout, ready_messages(&self.config, channel)).await {
                        Ok(messages) => self.status.set_backlog(Some(messages)),
                        // A failed declare closes the channel: the session is lost.
                        Err(reason) => return SessionEnd::Lost(reason),
                    }
                },
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let tag = DeliveryTag(self.next_tag);
                        self.next_tag += 1;
                        ackers.insert(tag, delivery.acker.clone());
                        let message = Inbound {
                            tag,
                            message_id: delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()),
                            redelivered: delivery.redelivered,
                            trace_parent: trace_parent(&delivery.properties),
                            body: delivery.data,
                        };
                        if self.inbound.send(message).is_err() {
                            return SessionEnd::SourceGone;
                        }
                    }
                    Some(Err(err)) => return SessionEnd::Lost(err.to_string()),
                    None => return SessionEnd::Lost("the broker cancelled the consumer".into()),
                },
                batch = self.settle.recv() => match batch {
                    None => return SessionEnd::SourceGone,
                    Some(batch) => {
                        if let Err(reason) = bounded(reply_timeout, apply(&mut ackers, batch)).await {
                            return SessionEnd::Lost(reason);
                        }
                    }
                },
            }
        }
    }
}

/// `request`, failed if the broker has not answered within `limit`.
async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    request: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(limit, request).await {
        Ok(answer) => answer.map_err(|err| err.to_string()),
        Err(_) => Err(format!(
            "no answer from the broker in {} ms",
            limit.as_millis()
        )),
    }
}

/// Messages ready in the job queue (not delivered to any consumer), as the
/// broker counts them: a passive declare, which changes nothing.
async fn ready_messages(
    config: &RabbitMqConfig,
    channel: &Channel,
) -> std::result::Result<u32, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(
            config.queue.as_str().into(),
            passive,
            job_queue_arguments(config),
        )
        .await?;
    Ok(queue.message_count())
}

/// Acks committed messages and rejects dead-lettered ones to the dead-letter
/// exchange. Tags of an earlier session are unknown here and skipped: the
/// broker has already put those messages back.
async fn apply(
    ackers: &mut HashMap<DeliveryTag, Acker>,
    batch: Vec<(DeliveryTag, Settlement)>,
) -> std::result::Result<(), String> {
    for (tag, settlement) in batch {
        let Some(acker) = ackers.remove(&tag) else {
            continue;
        };
        let done = match settlement {
            Settlement::Committed => acker.ack(BasicAckOptions::default()).await,
            Settlement::DeadLettered => acker.reject(BasicRejectOptions { requeue: false }).await,
        };
        done.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The W3C `traceparent` header, if the message has one.
fn trace_parent(properties: &lapin::BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("traceparent")? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}
