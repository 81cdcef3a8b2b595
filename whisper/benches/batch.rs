//! Batching: stacking 30 s windows into one encoder input, and
//! `Engine::transcribe_batch` on two short clips, batched against one at a time.
//!
//! The cross-job batcher of the pipeline is the `Transcribe` timely operator
//! (operators/src/infer.rs); it has no entry point outside a dataflow, so the
//! engine's own batching, which it calls, is measured here instead.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmt_whisper::mel::{self, MelFrontEnd};
use mmt_whisper::model::stack_windows;
use mmt_whisper::{Engine, TranscribeOptions};
use std::hint::black_box;
use std::time::Duration;

fn stacking(c: &mut Criterion) {
    let front_end = MelFrontEnd::new(80);
    let window = mel::window(&front_end.log_mel(&common::synthetic(30.0)), 0);
    let mut group = c.benchmark_group("stack_windows");
    for batch in [1usize, 4, 8, 16] {
        let windows = vec![window.clone(); batch];
        group.bench_with_input(BenchmarkId::from_parameter(batch), &windows, |b, w| {
            b.iter(|| stack_windows(black_box(w)))
        });
    }
    group.finish();
}

fn transcribe_batch(c: &mut Criterion) {
    let Some(options) = common::model_options(common::threads()) else {
        return;
    };
    let mut engine = match Engine::load(&options) {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("skipping transcribe_batch: {err}");
            return;
        }
    };
    // 11 s and 3 s of real speech.
    let jfk = common::sample("jfk_inaugural_1961_excerpt.wav");
    let short = common::sample("librispeech_61-70968-0002.wav");
    let inputs: Vec<&[f32]> = vec![&jfk, &short];
    let greedy = TranscribeOptions {
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    let mut group = c.benchmark_group("transcribe_batch_2_clips");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for batch_size in [1usize, 2] {
        let options = TranscribeOptions {
            batch_size,
            ..greedy.clone()
        };
        group.bench_with_input(
            BenchmarkId::new("batch_size", batch_size),
            &options,
            |b, options| {
                b.iter(|| {
                    engine
                        .transcribe_batch(black_box(&inputs), options)
                        .expect("transcription")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, stacking, transcribe_batch);
criterion_main!(benches);
