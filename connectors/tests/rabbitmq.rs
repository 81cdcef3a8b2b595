//! The RabbitMQ source, submitter and event publisher against the machine's
//! broker (127.0.0.1:5672, guest/guest). Each test uses its own queues; a TCP
//! proxy between client and broker cuts or refuses connections, so the broker
//! itself never has to stop.

mod common;
#[path = "../../tests/common/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mmt_connectors::envelope::{EnvelopeReader, JobEnvelope};
use mmt_connectors::rabbitmq::{
    JobSubmitter, RabbitMqConfig, RabbitMqEventPublisher, RabbitMqSource,
};
use mmt_core::job::{AuditAction, AuditEvent, JobId};
use mmt_core::source::{Backlog, Delivery, JobSource, Settlement};
use mmt_core::telemetry::Metrics;
use proxy::Proxy;

const BROKER: &str = "127.0.0.1:5672";

fn config(address: &str, queue: &str) -> RabbitMqConfig {
    let mut config =
        RabbitMqConfig::new(format!("amqp://guest:guest@{address}/%2f")).with_queue(queue);
    config.reconnect_base_ms = 100;
    config.reconnect_max_ms = 500;
    config.heartbeat_seconds = 2;
    config.connect_timeout_ms = 3_000;
    config.publish_timeout_ms = 5_000;
    config.breaker_failure_threshold = 3;
    config.breaker_cooldown_ms = 1_000;
    config
}

fn unique_queue(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("mmt.test.{name}.{}.{nanos}", std::process::id())
}

fn submit_jobs(submitter: &JobSubmitter, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let mut envelope =
                JobEnvelope::inline("clinic-a", format!("audio {i}").as_bytes(), Some("wav"));
            envelope.patient_reference = Some(format!("Patient/{i}"));
            let id = format!("msg-{i}");
            let trace = format!("00-{:032x}-{:016x}-01", i + 1, i + 1);
            submitter
                .submit(&envelope, &id, Some(&trace))
                .expect("submit");
            id
        })
        .collect()
}

/// Polls until `count` deliveries arrived (or the deadline passed).
fn receive(source: &mut dyn JobSource, count: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while got.len() < count && Instant::now() < deadline {
        got.extend(
            source
                .poll(count - got.len(), Duration::from_millis(100))
                .expect("poll"),
        );
    }
    got
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn messages_are_acked_rejected_or_returned_as_settled() {
    if !common::require_service("RabbitMQ", BROKER) {
        return;
    }
    let config = config(BROKER, &unique_queue("settle"));
    let submitter = JobSubmitter::connect(&config).expect("submitter");
    let ids = submit_jobs(&submitter, 5);
    let mut source =
        RabbitMqSource::connect(&config, EnvelopeReader::new(None, "unknown")).expect("source");
    let deliveries = receive(&mut source, 5);
    assert_eq!(deliveries.len(), 5);
    let by_id: BTreeMap<_, _> = deliveries
        .iter()
        .map(|d| (d.record.source.clone(), d))
        .collect();
    assert_eq!(by_id.keys().cloned().collect::<Vec<_>>(), ids);
    let first = by_id["msg-0"];
    assert_eq!(first.record.tenant, "clinic-a");
    assert_eq!(first.record.bytes, b"audio 0");
    assert_eq!(first.record.patient_reference.as_deref(), Some("Patient/0"));
    assert_eq!(
        first.record.trace_parent.as_deref(),
        Some("00-00000000000000000000000000000001-0000000000000001-01")
    );
    assert!(!first.record.redelivered);

    // Nothing is acknowledged before settling: all five are unacked, none ready.
    assert_eq!(submitter.queue_depth().expect("depth"), 0);
    let settled = [
        (by_id["msg-0"].tag, Settlement::Committed),
        (by_id["msg-1"].tag, Settlement::Committed),
        (by_id["msg-2"].tag, Settlement::Committed),
        (by_id["msg-3"].tag, Settlement::DeadLettered),
    ];
    source.settle(&settled).expect("settle");
    wait_for("the rejected message in the dead-letter queue", || {
        submitter.dead_letter_depth().expect("depth") == 1
    });
    // Stopping without settling msg-4 hands it back to the broker.
    drop(source);
    wait_for("the unsettled message back in the queue", || {
        submitter.queue_depth().expect("depth") == 1
    });
    let mut again =
        RabbitMqSource::connect(&config, EnvelopeReader::new(None, "unknown")).expect("source");
    let redelivered = receive(&mut again, 1);
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0].record.source, "msg-4");
    assert!(redelivered[0].record.redelivered);
    again
        .settle(&[(redelivered[0].tag, Settlement::Committed)])
        .expect("settle");
    drop(again);
    wait_for("an empty queue", || {
        submitter.queue_depth().expect("depth") == 0
    });
    submitter.delete_queues().expect("clean up");
}

#[test]
fn the_backlog_is_read_from_the_broker_while_consuming() {
    if !common::require_service("RabbitMQ", BROKER) {
        return;
    }
    let mut config = config(BROKER, &unique_queue("backlog"));
    // One message out at a time: the other four stay ready on the broker.
    config.prefetch = 1;
    let submitter = JobSubmitter::connect(&config).expect("submitter");
    submit_jobs(&submitter, 5);
    let mut source =
        RabbitMqSource::connect(&config, EnvelopeReader::new(None, "unknown")).expect("source");
    // Read as the session opens (the one delivered message may not yet have
    // left the ready count), then every few seconds.
    wait_for("the first reading", || {
        matches!(source.backlog(), Some(Backlog::Broker(4 | 5)))
    });
    let first = receive(&mut source, 1);
    assert_eq!(first.len(), 1);
    source
        .settle(&[(first[0].tag, Settlement::Committed)])
        .expect("settle");
    let second = receive(&mut source, 1);
    assert_eq!(second.len(), 1);
    // Two delivered: one acked, one out: three ready, as the next reading says.
    wait_for("a reading after the first ack", || {
        source.backlog() == Some(Backlog::Broker(3))
    });
    drop(source);
    submitter.delete_queues().expect("clean up");
}

#[test]
fn a_dropped_connection_is_reopened_and_nothing_is_lost() {
    if !common::require_service("RabbitMQ", BROKER) {
        return;
    }
    let proxy = Proxy::start(BROKER);
    let direct = config(BROKER, &unique_queue("reconnect"));
    let mut via_proxy = direct.clone();
    via_proxy.url = format!("amqp://guest:guest@{}/%2f", proxy.address());
    let submitter = JobSubmitter::connect(&direct).expect("submitter");
    submit_jobs(&submitter, 4);
    let mut source =
        RabbitMqSource::connect(&via_proxy, EnvelopeReader::new(None, "unknown")).expect("source");
    let status = source.status();
    let before = receive(&mut source, 4);
    assert_eq!(before.len(), 4);
    source
        .settle(&[(before[0].tag, Settlement::Committed)])
        .expect("settle");
    std::thread::sleep(Duration::from_millis(300));

    proxy.sever();
    wait_for("a second session", || {
        status.sessions() >= 2 && status.connected()
    });
    // Settling a message of the lost session is harmless: the broker has
    // already put it back.
    source
        .settle(&[(before[1].tag, Settlement::Committed)])
        .expect("stale settle is accepted");
    let after = receive(&mut source, 3);
    let mut sources: Vec<_> = after.iter().map(|d| d.record.source.clone()).collect();
    sources.sort();
    assert_eq!(sources, ["msg-1", "msg-2", "msg-3"]);
    assert!(after.iter().all(|d| d.record.redelivered));
    let settled: Vec<_> = after
        .iter()
        .map(|d| (d.tag, Settlement::Committed))
        .collect();
    source.settle(&settled).expect("settle");
    drop(source);
    wait_for("an empty queue", || {
        submitter.queue_depth().expect("depth") == 0
    });
    submitter.delete_queues().expect("clean up");
}

fn event(job: &str, action: AuditAction) -> AuditEvent {
    AuditEvent {
        at: 1_700_000_000,
        action,
        job_id: JobId(job.into()),
        tenant: "clinic-a".into(),
        correlation_id: "c0ffee".into(),
        actor: "pipeline".into(),
        detail: BTreeMap::new(),
    }
}

#[test]
fn events_are_confirmed_and_a_dead_broker_opens_the_breaker() {
    if !common::require_service("RabbitMQ", BROKER) {
        return;
    }
    let proxy = Proxy::start(BROKER);
    let mut config = config(BROKER, &unique_queue("events"));
    config.url = format!("amqp://guest:guest@{}/%2f", proxy.address());
    let metrics = Metrics::new().expect("metrics");
    let mut publisher =
        RabbitMqEventPublisher::connect(&config, Some(metrics.clone())).expect("publisher");
    publisher
        .publish(&event("job-1", AuditAction::JobCompleted))
        .expect("confirmed publish");

    proxy.refuse(true);
    proxy.sever();
    std::thread::sleep(Duration::from_millis(100));
    let mut failures = 0;
    for _ in 0..3 {
        let err = publisher
            .publish(&event("job-2", AuditAction::JobCompleted))
            .expect_err("the broker is unreachable");
        assert!(err.class.is_retryable());
        failures += 1;
    }
    assert_eq!(metrics.publish_failures_total.get(), failures);
    assert_eq!(metrics.breaker_open_total.get(), 1);
    // Open: refused at once, without trying the network.
    let started = Instant::now();
    let err = publisher
        .publish(&event("job-2", AuditAction::JobCompleted))
        .expect_err("the breaker is open");
    assert!(
        err.message.contains("circuit breaker is open"),
        "{}",
        err.message
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(metrics.publish_failures_total.get(), failures);

    proxy.refuse(false);
    std::thread::sleep(Duration::from_millis(1_100));
    publisher
        .publish(&event("job-2", AuditAction::JobCompleted))
        .expect("the half-open trial succeeds and closes the breaker");
    publisher
        .publish(&event("job-3", AuditAction::JobDeadLettered))
        .expect("closed again");
}

#[test]
fn an_unreachable_broker_fails_start_up_with_a_clear_error() {
    let mut config = config("127.0.0.1:1", "mmt.test.unreachable");
    config.connect_timeout_ms = 500;
    let err = RabbitMqSource::connect(&config, EnvelopeReader::new(None, "unknown"))
        .expect_err("no broker");
    let message = err.to_string();
    assert!(message.contains("RabbitMQ"), "{message}");
    assert!(!message.contains("guest:guest"), "{message}");
}
