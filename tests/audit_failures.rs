//! A failed audit write fails what caused it: the pipeline's commit of a job
//! is retried and its epoch is not settled (so its message is not
//! acknowledged) until the event is written, and then written once.
//!
//! The sinks are the real ones (files, SQLite); the audit trail is the real
//! file behind a wrapper that fails its first writes, as a full disk would:
//! a disk cannot be filled on purpose here.

use mmt_connectors::{AuditLogConfig, DeadLetterFileConfig, FhirNdjsonConfig, SqlJobStoreConfig};
use mmt_core::error::ErrorClass;
use mmt_core::job::{
    unix_now, AuditEvent, AuditSink, CompletedJob, ComponentError, JobId, JobMeta,
};
use mmt_core::retry::RetryPolicy;
use mmt_core::source::Settlement;
use mmt_core::telemetry::Metrics;
use mmt_core::{Segment, Transcript};
use mmt_operators::commit::{Commit, CommitCounters, CommitOptions, Retention, Sinks};
use mmt_operators::records::Outcome;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// The audit file, failing while `failures_left` is above zero.
struct FailingAudit {
    inner: Box<dyn AuditSink>,
    failures_left: Arc<AtomicU32>,
}

impl AuditSink for FailingAudit {
    fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(ComponentError::new(
                ErrorClass::External { retryable: true },
                "writing the audit trail: No space left on device (os error 28)",
            ));
        }
        self.inner.record(event)
    }
}

fn completed_job() -> CompletedJob {
    let segment = Segment {
        id: 0,
        start: 0.0,
        end: 2.0,
        text: "the patient is stable".into(),
        avg_logprob: -0.2,
        no_speech_prob: 0.01,
        temperature: 0.0,
        confidence: 0.8,
    };
    CompletedJob {
        meta: JobMeta {
            id: JobId("0123456789abcdef0123456789abcdef".into()),
            tenant: "clinic-a".into(),
            content_hash: "ab".repeat(32),
            source: "dictation.wav".into(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: "00112233aabbccdd".into(),
            received_at: unix_now(),
            trace_parent: None,
        },
        transcript: Transcript::from_segments(vec![segment], 2.5, "en"),
        completed_at: unix_now(),
    }
}

#[test]
fn a_commit_whose_audit_write_fails_is_retried_and_not_settled_until_it_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let failures_left = Arc::new(AtomicU32::new(3));
    let job = completed_job();
    let id = job.meta.id.clone();
    let dir_path = dir.path().to_owned();
    let audit_in = audit_path.clone();
    let settled = timely::execute_directly(move |worker| {
        let sinks = Sinks {
            documents: Box::new(
                FhirNdjsonConfig {
                    dir: dir_path.as_path().join("fhir"),
                }
                .build()
                .expect("documents"),
            ),
            audit: Box::new(FailingAudit {
                inner: Box::new(AuditLogConfig::new(&audit_in).build().expect("audit")),
                failures_left: Arc::clone(&failures_left),
            }),
            dead_letters: Box::new(
                DeadLetterFileConfig {
                    dir: dir_path.as_path().to_owned(),
                }
                .build()
                .expect("dead letters"),
            ),
            store: Box::new(
                SqlJobStoreConfig::new(format!(
                    "sqlite://{}",
                    dir_path.as_path().join("mmt.db").display()
                ))
                .build(false)
                .expect("store"),
            ),
        };
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Outcome>>>::new();
        let probe = ProbeHandle::new();
        let settled = Rc::new(RefCell::new(Vec::new()));
        let settled_in = Rc::clone(&settled);
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .commit(
                    Some(sinks),
                    CommitOptions {
                        retry: RetryPolicy::from_base(Duration::from_millis(50)),
                        retention: Retention {
                            days: 36_500,
                            interval: Duration::from_secs(3600),
                        },
                        stop: Arc::new(AtomicBool::new(false)),
                    },
                    Arc::new(CommitCounters::default()),
                    Metrics::new().expect("metrics"),
                )
                .inspect(move |settlement| settled_in.borrow_mut().push(settlement.clone()))
                .probe_with(&probe);
        });
        input.send(Outcome::Completed(Box::new(job)));
        input.advance_to(1);
        let started = Instant::now();
        while failures_left.load(Ordering::SeqCst) > 0 {
            worker.step_or_park(Some(Duration::from_millis(20)));
            assert!(
                probe.less_equal(&0) && settled.borrow().is_empty(),
                "settled while the audit trail failed"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the commit was not retried"
            );
        }
        while probe.less_than(&1) {
            worker.step_or_park(Some(Duration::from_millis(20)));
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "never settled"
            );
        }
        drop(input);
        let settled = settled.borrow().clone();
        settled
    });
    assert_eq!(settled, [(id.clone(), Settlement::Committed)]);
    let completed: Vec<String> = std::fs::read_to_string(&audit_path)
        .expect("audit")
        .lines()
        .filter(|line| line.contains("job_completed"))
        .map(str::to_owned)
        .collect();
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert!(completed[0].contains(&id.0));
}
