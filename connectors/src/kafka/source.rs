//! The Kafka job source: a consumer-group member whose offsets follow the sinks.
//!
//! # Offsets
//!
//! librdkafka never commits by itself (`enable.auto.commit=false`). When the
//! driver settles messages, the source marks them settled and, per partition,
//! commits `offset + 1` of the highest offset such that every message of that
//! partition delivered before it is settled too. A message whose job is still
//! in the pipeline therefore holds back the commit of every later message of
//! its partition: after a crash or a rebalance the group resumes at the first
//! unsettled message, and everything from there is redelivered (the idempotent
//! sinks absorb the repeats). Nothing is lost and nothing is skipped.
//!
//! Dead-lettered messages are committed like transcribed ones: Kafka has no
//! per-message rejection, and the job's letter (ids and reason, no PHI) is
//! already durable in MMT's own dead-letter queue, from which `mmt dlq` replays.
//!
//! # Rebalances
//!
//! When partitions are revoked, the source forgets what it tracked for them:
//! their unsettled messages are redelivered to the partition's next owner, and
//! settling one of their old tags later is a no-op (committing for a partition
//! this member no longer owns would be refused, or worse, move the new owner's
//! position).
//!
//! # Redelivery flag
//!
//! Kafka does not say whether a message was delivered before, so
//! `redelivered` is always `false` here. Deduplication is correct either way
//! (it keys on tenant and audio content); the flag only decides whether a
//! repeat is audited as a redelivery or as a duplicate submission.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mmt_core::job::ComponentError;
use mmt_core::source::{Delivery, DeliveryTag, JobSource, Settlement};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::{health_of, HealthReport, KafkaSourceConfig};
use crate::envelope::{EnvelopeReader, MessageContext};
use crate::error::{ConnectorError, Result};

/// The consumer's callbacks: records revocations, which run inside
/// `BaseConsumer::poll` on the polling thread, for the source to apply.
#[derive(Debug, Default)]
pub(crate) struct SourceContext {
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let revoked: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(partitions = ?revoked, "kafka: partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(revoked);
            }
            Rebalance::Assign(partitions) => {
                let assigned: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(partitions = ?assigned, "kafka: partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "kafka: rebalance failed"),
        }
    }
}

/// What the source knows about one assigned partition.
#[derive(Debug, Default)]
struct PartitionTrack {
    /// Delivered, not yet committed offsets, and whether each is settled.
    delivered: BTreeMap<i64, bool>,
}

impl PartitionTrack {
    /// The offset to commit: one past the last of the settled prefix, if any.
    fn commit_position(&self) -> Option<i64> {
        self.delivered
            .iter()
            .take_while(|(_, settled)| **settled)
            .last()
            .map(|(offset, _)| offset + 1)
    }

    /// Forgets the offsets below `position`, once committed.
    fn committed(&mut self, position: i64) {
        self.delivered = self.delivered.split_off(&position);
    }
}

/// Delivered messages, by tag and by partition.
#[derive(Debug, Default)]
struct Tracker {
    next_tag: u64,
    tags: HashMap<DeliveryTag, (i32, i64)>,
    partitions: HashMap<i32, PartitionTrack>,
}

impl Tracker {
    fn deliver(&mut self, partition: i32, offset: i64) -> DeliveryTag {
        let tag = DeliveryTag(self.next_tag);
        self.next_tag += 1;
        self.tags.insert(tag, (partition, offset));
        self.partitions
            .entry(partition)
            .or_default()
            .delivered
            .insert(offset, false);
        tag
    }

    /// Marks a message settled; `false` when the tag is unknown (its partition
    /// was revoked since, or it was settled before).
    fn settle(&mut self, tag: DeliveryTag) -> bool {
        let Some((partition, offset)) = self.tags.remove(&tag) else {
            return false;
        };
        match self
            .partitions
            .get_mut(&partition)
            .and_then(|track| track.delivered.get_mut(&offset))
        {
            Some(settled) => {
                *settled = true;
                true
            }
            None => false,
        }
    }

    fn revoke(&mut self, revoked: &[i32]) {
        for partition in revoked {
            self.partitions.remove(partition);
        }
        self.tags
            .retain(|_, (partition, _)| !revoked.contains(partition));
    }

    /// `(partition, position)` of every partition whose settled prefix grew.
    fn commit_positions(&self) -> Vec<(i32, i64)> {
        let mut positions: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(partition, track)| Some((*partition, track.commit_position()?)))
            .collect();
        positions.sort_unstable();
        positions
    }

    fn committed(&mut self, positions: &[(i32, i64)]) {
        for (partition, position) in positions {
            if let Some(track) = self.partitions.get_mut(partition) {
                track.committed(*position);
            }
        }
    }

    /// Delivered messages not yet committed.
    fn in_flight(&self) -> usize {
        self.partitions.values().map(|t| t.delivered.len()).sum()
    }
}

/// The Kafka job source (see the module documentation for its offset rules).
/// Built by [`KafkaSourceConfig::connect`].
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    config: KafkaSourceConfig,
    reader: EnvelopeReader,
    tracker: Tracker,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.config.topic)
            .field("group_id", &self.config.group_id)
            .field("in_flight", &self.tracker.in_flight())
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    pub(crate) fn new(
        consumer: BaseConsumer<SourceContext>,
        config: KafkaSourceConfig,
        reader: EnvelopeReader,
    ) -> Self {
        Self {
            consumer,
            config,
            reader,
            tracker: Tracker::default(),
        }
    }

    /// The topic's metadata through this consumer's connection.
    pub fn health_check(&self) -> Result<HealthReport> {
        health_of(
            &self.consumer,
            &self.config.topic,
            self.config.request_timeout_duration(),
        )
    }

    /// Delivered messages whose offsets are not committed yet.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// Polls up to `max` messages (at most `max_poll_records`), waiting at
    /// most `wait` for the first. Rebalance callbacks run inside these calls,
    /// so the driver must call this (with `max` at least 1: `max` 0 returns
    /// at once without touching the consumer) more often than
    /// `max_poll_interval_ms`, or the group takes its partitions away.
    pub fn poll_messages(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let max = max.min(self.config.max_poll_records);
        let mut deliveries = Vec::new();
        let deadline = Instant::now() + wait;
        while deliveries.len() < max {
            // Wait for the first message only; then take what is ready.
            let timeout = if deliveries.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(timeout);
            // Rebalance callbacks ran inside that poll: forget revoked
            // partitions before recording the message (which is from after).
            apply_revocations(&self.consumer, &mut self.tracker);
            match polled {
                None => break,
                Some(Ok(message)) => {
                    deliveries.push(deliver(&self.reader, &mut self.tracker, &message));
                }
                Some(Err(error)) => {
                    let error = ConnectorError::from(error);
                    // Transport and broker errors are reported here while
                    // librdkafka reconnects by itself: hand out what came and
                    // let the driver poll again. A fatal error means the
                    // consumer must be rebuilt; the messages of this batch
                    // are uncommitted, so they are redelivered then. Kafka
                    // errors name no message content.
                    if error.class().is_retryable() {
                        tracing::warn!(%error, "kafka: consumer error (librdkafka retries)");
                        break;
                    }
                    return Err(error);
                }
            }
        }
        Ok(deliveries)
    }

    /// Marks messages settled and commits every partition's settled prefix,
    /// synchronously. A failed commit is retried on the next call; the
    /// messages stay uncommitted meanwhile (a crash redelivers them).
    pub fn settle_messages(&mut self, settled: &[(DeliveryTag, Settlement)]) -> Result<()> {
        apply_revocations(&self.consumer, &mut self.tracker);
        let mut unknown = 0usize;
        for (tag, _settlement) in settled {
            // Committed and dead-lettered alike: see the module documentation.
            if !self.tracker.settle(*tag) {
                unknown += 1;
            }
        }
        if unknown > 0 {
            tracing::debug!(
                unknown,
                "kafka: settled tags of revoked partitions ignored (redelivered to their new owner)"
            );
        }
        self.commit_settled()
    }

    fn commit_settled(&mut self) -> Result<()> {
        let positions = self.tracker.commit_positions();
        if positions.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, position) in &positions {
            offsets.add_partition_offset(
                &self.config.topic,
                *partition,
                Offset::Offset(*position),
            )?;
        }
        self.consumer.commit(&offsets, CommitMode::Sync)?;
        self.tracker.committed(&positions);
        Ok(())
    }
}

impl JobSource for KafkaSource {
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ComponentError> {
        Ok(self.poll_messages(max, wait)?)
    }

    fn settle(&mut self, settled: &[(DeliveryTag, Settlement)]) -> Result<(), ComponentError> {
        Ok(self.settle_messages(settled)?)
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

/// Reads one message into a record and starts tracking its offset.
fn deliver(
    reader: &EnvelopeReader,
    tracker: &mut Tracker,
    message: &BorrowedMessage<'_>,
) -> Delivery {
    let partition = message.partition();
    let offset = message.offset();
    let trace_parent = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("traceparent"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    });
    let context = MessageContext {
        message_id: format!("{}/{partition}/{offset}", message.topic()),
        received_at: unix_now(),
        redelivered: false,
        trace_parent,
    };
    // A tombstone (no payload) reads as an empty body: a record with a read
    // error, dead-lettered and committed like any bad message.
    let record = reader.read(message.payload().unwrap_or_default(), context);
    let tag = tracker.deliver(partition, offset);
    Delivery { tag, record }
}

/// Applies the revocations the rebalance callback recorded.
fn apply_revocations(consumer: &BaseConsumer<SourceContext>, tracker: &mut Tracker) {
    let revoked = std::mem::take(
        &mut *consumer
            .context()
            .revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if !revoked.is_empty() {
        tracker.revoke(&revoked);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_settled_prefix_is_committed() {
        let mut tracker = Tracker::default();
        let a = tracker.deliver(0, 10);
        let b = tracker.deliver(0, 11);
        let c = tracker.deliver(0, 13); // 12 was a transaction marker
        let d = tracker.deliver(1, 5);
        assert!(tracker.commit_positions().is_empty());

        assert!(tracker.settle(b));
        assert!(tracker.settle(c));
        assert!(
            tracker.commit_positions().is_empty(),
            "10 is unsettled: nothing may be committed"
        );
        assert!(tracker.settle(d));
        assert_eq!(tracker.commit_positions(), [(1, 6)]);
        tracker.committed(&[(1, 6)]);

        assert!(tracker.settle(a));
        assert_eq!(tracker.commit_positions(), [(0, 14)]);
        tracker.committed(&[(0, 14)]);
        assert!(tracker.commit_positions().is_empty());
        assert_eq!(tracker.in_flight(), 0);
        assert!(!tracker.settle(a), "a tag settles once");
    }

    #[test]
    fn a_failed_commit_is_retried() {
        let mut tracker = Tracker::default();
        let a = tracker.deliver(0, 0);
        tracker.settle(a);
        assert_eq!(tracker.commit_positions(), [(0, 1)]);
        // The commit failed: nothing is forgotten, the next call retries it.
        assert_eq!(tracker.commit_positions(), [(0, 1)]);
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut tracker = Tracker::default();
        let a = tracker.deliver(0, 0);
        let b = tracker.deliver(1, 0);
        tracker.revoke(&[0]);
        assert!(!tracker.settle(a), "its partition was revoked");
        assert!(tracker.settle(b));
        assert_eq!(tracker.commit_positions(), [(1, 1)]);
        // Re-assigned later: the partition starts afresh.
        let c = tracker.deliver(0, 0);
        assert!(tracker.settle(c));
        assert_eq!(tracker.commit_positions(), [(0, 1), (1, 1)]);
    }
}
