//! The decoder on a real encoder output (the JFK clip of `samples/`): one
//! incremental greedy step with a short and a longer self-attention cache,
//! one step for a batch of 8 rows, and a whole greedy decode of the window.
//! Needs the exported model (models/tiny.en or MMT_MODEL_DIR); without it
//! the benchmarks are skipped with a message.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmt_whisper::decoding::rules::LogitRules;
use mmt_whisper::decoding::{generate, Request, Strategy};
use mmt_whisper::mel::{self, MelFrontEnd};
use mmt_whisper::model::{
    stack_windows, CrossAttention, DecoderInputs, SelfAttentionCache, WhisperModel,
};
use ndarray::Array2;
use std::hint::black_box;
use std::time::Duration;

/// Feeds `tokens` (one row each, same length) after `past` cached tokens,
/// into `cache`.
fn feed(
    model: &mut WhisperModel,
    cross: &CrossAttention,
    cache: &mut SelfAttentionCache,
    past: usize,
    tokens: &[Vec<u32>],
) {
    model
        .decode(inputs(cache, cross, past, tokens))
        .expect("decoder call");
}

fn inputs<'a>(
    cache: &'a mut SelfAttentionCache,
    cross: &'a CrossAttention,
    past: usize,
    tokens: &[Vec<u32>],
) -> DecoderInputs<'a> {
    let rows = tokens.len();
    let width = tokens[0].len();
    DecoderInputs {
        tokens: Array2::from_shape_fn((rows, width), |(r, i)| i64::from(tokens[r][i])),
        positions: Array2::from_shape_fn((rows, width), |(_, i)| (past + i) as i64),
        attention_mask: Array2::zeros((rows, past + width)),
        cache,
        cross,
    }
}

fn decoder(c: &mut Criterion) {
    let Some(options) = common::model_options(common::threads()) else {
        return;
    };
    let mut model = match WhisperModel::load(&options) {
        Ok(model) => model,
        Err(err) => {
            eprintln!("skipping the decoder benchmarks: {err}");
            return;
        }
    };
    let spec = model.spec().clone();
    let front_end = MelFrontEnd::new(spec.n_mels);
    let features = front_end.log_mel(&common::sample("jfk_inaugural_1961_excerpt.wav"));
    let window = mel::window(&features, 0);
    let mut cross = model
        .encode(stack_windows(&[window]).expect("stack").view())
        .expect("encoder");

    // The whole greedy decode of the window, with timestamps (the pipeline's default).
    let rules = LogitRules::new(&spec, true, Some(50));
    let request = Request::from_start(0, &spec);
    let max_new_tokens = spec.n_text_ctx / 2;
    let generated = generate(
        &mut model,
        &mut cross,
        std::slice::from_ref(&request),
        &rules,
        &Strategy::Greedy,
        max_new_tokens,
    )
    .expect("greedy decode");
    let text_tokens = generated[0].tokens.clone();
    eprintln!(
        "decoder benchmarks: the JFK window decodes to {} tokens",
        text_tokens.len()
    );

    let mut group = c.benchmark_group("decoder_step");
    group.measurement_time(Duration::from_secs(10));
    let prompt = vec![spec.sot, spec.no_timestamps];
    let next = vec![text_tokens.first().copied().unwrap_or(spec.eot)];
    // After the prompt (2 tokens), and after the prompt and the whole text;
    // each step writes its keys and values into the same slot again.
    let mut short = SelfAttentionCache::empty(&spec, 1).expect("cache");
    feed(
        &mut model,
        &cross,
        &mut short,
        0,
        std::slice::from_ref(&prompt),
    );
    let mut long_prefix = prompt.clone();
    long_prefix.extend(&text_tokens);
    let mut long = SelfAttentionCache::empty(&spec, 1).expect("cache");
    feed(&mut model, &cross, &mut long, 0, &[long_prefix.clone()]);
    for (past, cache) in [(prompt.len(), &mut short), (long_prefix.len(), &mut long)] {
        group.bench_with_input(BenchmarkId::new("rows_1_past", past), &past, |b, &past| {
            b.iter(|| {
                model
                    .decode(inputs(
                        cache,
                        &cross,
                        past,
                        black_box(std::slice::from_ref(&next)),
                    ))
                    .expect("decoder step")
            })
        });
    }
    // Eight rows (windows of a batch) at once, after the prompt.
    let rows = 8;
    let cross8 = cross.select_rows(&vec![0; rows]).expect("select rows");
    let mut short8 = SelfAttentionCache::empty(&spec, rows).expect("cache");
    feed(
        &mut model,
        &cross8,
        &mut short8,
        0,
        &vec![prompt.clone(); rows],
    );
    let next8 = vec![next.clone(); rows];
    group.bench_function(BenchmarkId::new("rows_8_past", prompt.len()), |b| {
        b.iter(|| {
            model
                .decode(inputs(
                    &mut short8,
                    &cross8,
                    prompt.len(),
                    black_box(&next8),
                ))
                .expect("decoder step")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("greedy_decode");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("jfk_window", |b| {
        b.iter(|| {
            generate(
                &mut model,
                &mut cross,
                black_box(std::slice::from_ref(&request)),
                &rules,
                &Strategy::Greedy,
                max_new_tokens,
            )
            .expect("greedy decode")
        })
    });
    group.finish();
}

criterion_group!(benches, decoder);
criterion_main!(benches);
