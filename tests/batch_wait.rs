//! The batcher's maximum wait (`mmt run --max-batch-wait-ms`): a partial batch
//! runs once its oldest chunk has waited that long, even while its ingest
//! epoch is still open; without it the chunk waits for the epoch.

mod common;

use common::{model_options, model_ready, root};
use mmt_core::job::{JobId, JobMeta};
use mmt_core::telemetry::Metrics;
use mmt_operators::infer::Transcribe;
use mmt_operators::records::ChunkWork;
use mmt_whisper::audio::decode_file;
use mmt_whisper::{Engine, TranscribeOptions};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use timely::dataflow::operators::{Input, Inspect};
use timely::dataflow::InputHandle;

fn engine() -> Engine {
    Engine::load(&model_options(2)).expect("model loads")
}

fn chunk() -> ChunkWork {
    let samples = decode_file(&root().join("samples/dict_001.wav")).expect("sample decodes");
    let seconds = samples.len() as f64 / 16_000.0;
    ChunkWork {
        meta: JobMeta {
            id: JobId("cd".repeat(16)),
            tenant: "t".into(),
            content_hash: "h".into(),
            source: "s".into(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: "c".into(),
            received_at: 0,
            trace_parent: None,
        },
        seq: 0,
        total: 1,
        offset_seconds: 0.0,
        job_seconds: seconds,
        samples: samples.into(),
        preceding: None,
    }
}

/// Feeds one chunk (batch size 4) and keeps epoch 0 open for `open_for`;
/// returns how long the result took, if it came while the epoch was open.
fn result_while_epoch_open(max_wait: Option<Duration>, open_for: Duration) -> Option<Duration> {
    let engine = engine();
    timely::execute_directly(move |worker| {
        let mut input = InputHandle::new();
        let arrived: Rc<Cell<Option<Duration>>> = Rc::new(Cell::new(None));
        let arrived_in = Rc::clone(&arrived);
        let started = Instant::now();
        worker.dataflow::<u64, _, _>(|scope| {
            let options = TranscribeOptions {
                batch_size: 4,
                ..TranscribeOptions::default()
            };
            let metrics = Metrics::new().expect("metrics");
            let (results, _failed) = scope
                .input_from(&mut input)
                .transcribe(engine, options, max_wait, metrics);
            results.inspect(move |_| arrived_in.set(Some(started.elapsed())));
        });
        input.send(chunk());
        input.flush();
        while started.elapsed() < open_for && arrived.get().is_none() {
            worker.step();
            std::thread::sleep(Duration::from_millis(5));
        }
        let while_open = arrived.get();
        input.close();
        while worker.step() {}
        assert!(
            arrived.get().is_some(),
            "the chunk is transcribed at the latest when its epoch ends"
        );
        while_open
    })
}

#[test]
fn a_partial_batch_runs_after_the_maximum_wait() {
    if !model_ready() {
        return;
    }
    let took = result_while_epoch_open(Some(Duration::from_millis(200)), Duration::from_secs(60))
        .expect("the partial batch ran while its epoch was open");
    assert!(
        took >= Duration::from_millis(200),
        "not before the wait: {took:?}"
    );
}

#[test]
fn without_a_maximum_wait_a_partial_batch_waits_for_its_epoch() {
    if !model_ready() {
        return;
    }
    assert_eq!(result_while_epoch_open(None, Duration::from_secs(2)), None);
}
