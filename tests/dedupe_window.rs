//! Dedupe's memory stays bounded over a long run: 100,000 jobs through the
//! dedupe operator alone (timely, in this process), on the real job store
//! (SQLite in memory), in epochs of 1,000. Its window of jobs in flight holds
//! one epoch's jobs at most once the end of the dataflow has passed the
//! earlier ones, however many jobs went through.

use mmt_connectors::SqlJobStoreConfig;
use mmt_core::job::{JobId, JobMeta};
use mmt_core::telemetry::Metrics;
use mmt_operators::dedupe::{Dedupe, DedupeConfig};
use mmt_operators::records::{IdentifiedRecord, Outcome};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

const JOBS: u64 = 100_000;
const PER_EPOCH: u64 = 1_000;

fn job(n: u64) -> IdentifiedRecord {
    let id = format!("{n:032x}");
    IdentifiedRecord {
        meta: JobMeta {
            id: JobId(id.clone()),
            tenant: "clinic-a".into(),
            content_hash: id,
            source: "dictation.wav".into(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: format!("corr-{n}"),
            received_at: 1_700_000_000,
            trace_parent: None,
        },
        record: Default::default(),
    }
}

#[test]
fn the_window_stays_bounded_over_100_000_jobs() {
    timely::execute_directly(|worker| {
        let store = SqlJobStoreConfig::new("sqlite::memory:")
            .build(false)
            .expect("job store");
        let metrics = Metrics::new().expect("metrics");
        let mut jobs = InputHandle::<u64, CapacityContainerBuilder<Vec<IdentifiedRecord>>>::new();
        let probe = ProbeHandle::new();
        let config = DedupeConfig::new(5, probe.clone());
        let window = std::sync::Arc::clone(&config.window);
        let fresh_count = Rc::new(Cell::new(0u64));
        let duplicates = Rc::new(Cell::new(0u64));
        worker.dataflow::<u64, _, _>(|scope| {
            let (fresh, repeats) =
                scope
                    .input_from(&mut jobs)
                    .dedupe(Box::new(store), None, metrics, config);
            let counted = Rc::clone(&fresh_count);
            fresh
                .inspect(move |_| counted.set(counted.get() + 1))
                .probe_with(&probe);
            let counted = Rc::clone(&duplicates);
            repeats
                .inspect(move |outcome| {
                    // Every take also reports the job's reception (for the audit trail).
                    if matches!(outcome, Outcome::Received(_)) {
                        return;
                    }
                    assert!(matches!(outcome, Outcome::Duplicate(_)), "{outcome:?}");
                    counted.set(counted.get() + 1);
                })
                .probe_with(&probe);
        });

        let mut largest = 0;
        for epoch in 0..JOBS / PER_EPOCH {
            let first = epoch * PER_EPOCH;
            for n in first..first + PER_EPOCH {
                jobs.send(job(n));
            }
            // One job of this epoch submitted twice: a duplicate in flight.
            jobs.send(job(first));
            jobs.advance_to(epoch + 1);
            while probe.less_than(jobs.time()) {
                worker.step();
            }
            largest = largest.max(window.load(Ordering::Relaxed));
        }
        drop(jobs);
        while !probe.done() {
            worker.step();
        }

        assert_eq!(fresh_count.get(), JOBS, "every job taken once");
        assert_eq!(duplicates.get(), JOBS / PER_EPOCH);
        assert!(
            largest <= PER_EPOCH as usize,
            "the window held {largest} jobs: more than one epoch's {PER_EPOCH}"
        );
        eprintln!("{JOBS} jobs; the dedupe window never held more than {largest}");
    });
}
