//! A window's own token budget, on the real model: a decoding that runs into
//! it is reported as cut (the transcriber then falls back, as for a loop),
//! one that ends first is not.

mod common;

use common::{model_ready, root};
use mmt_whisper::decoding::rules::LogitRules;
use mmt_whisper::decoding::{generate, Request, Strategy};
use mmt_whisper::mel::{self, MelFrontEnd};
use mmt_whisper::model::{stack_windows, WhisperModel};

/// Decodes the first window of `samples/dict_001.wav` greedily, with Whisper's
/// prompt and timestamp rules, under `budget`.
fn decode_first_window(budget: Option<usize>) -> mmt_whisper::decoding::Generated {
    let mut model = WhisperModel::load(&common::model_options(2)).expect("model loads");
    let spec = model.spec().clone();
    let samples =
        mmt_whisper::audio::decode_file(&root().join("samples/dict_001.wav")).expect("decodes");
    let features = MelFrontEnd::new(spec.n_mels).log_mel(&samples);
    let windows = stack_windows(&[mel::window(&features, 0)]).expect("one window");
    let mut cross = model.encode(windows.view()).expect("encodes");
    let rules = LogitRules::new(&spec, true, Some(50));
    let request = Request {
        max_new_tokens: budget,
        ..Request::from_start(0, &spec)
    };
    let mut generated = generate(
        &mut model,
        &mut cross,
        &[request],
        &rules,
        &Strategy::Greedy,
        spec.n_text_ctx / 2,
    )
    .expect("decodes");
    generated.remove(0)
}

#[test]
fn a_decoding_that_reaches_its_budget_is_cut_and_one_that_ends_is_not() {
    if !model_ready() {
        eprintln!("skipping: models/tiny.en is not set up (make setup-dev)");
        return;
    }
    let whole = decode_first_window(None);
    assert!(!whole.cut_at_budget, "no budget: nothing to cut at");
    assert!(whole.tokens.len() > 8, "the clip is a sentence or more");

    let cut = decode_first_window(Some(5));
    assert!(cut.cut_at_budget);
    assert_eq!(
        cut.tokens,
        whole.tokens[..5],
        "the same tokens, stopped at 5"
    );

    let roomy = decode_first_window(Some(whole.tokens.len() + 1));
    assert!(
        !roomy.cut_at_budget,
        "it ended with end-of-text inside its budget"
    );
    assert_eq!(roomy.tokens, whole.tokens);
}
