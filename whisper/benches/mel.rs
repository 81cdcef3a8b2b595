//! The log-mel front end: features of one 30 s window, and cutting windows
//! out of a long recording's features.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use mmt_whisper::mel::{self, MelFrontEnd, N_FRAMES};
use std::hint::black_box;

fn log_mel(c: &mut Criterion) {
    // tiny.en has 80 mel bands.
    let front_end = MelFrontEnd::new(80);
    let thirty_seconds = common::synthetic(30.0);
    let mut group = c.benchmark_group("mel");
    group.bench_function("log_mel_30s", |b| {
        b.iter(|| front_end.log_mel(black_box(&thirty_seconds)))
    });
    group.finish();

    let features = front_end.log_mel(&common::synthetic(120.0));
    let mut group = c.benchmark_group("mel_window");
    group.bench_function("cut_30s_window", |b| {
        b.iter(|| mel::window(black_box(&features), black_box(N_FRAMES)))
    });
    group.bench_function("front_end_new", |b| {
        b.iter(|| MelFrontEnd::new(black_box(80)))
    });
    group.finish();
}

criterion_group!(benches, log_mel);
criterion_main!(benches);
