//! A window's own token budget, on the real model: a decoding that runs into
//! it is reported as cut (the transcriber then falls back, as for a loop),
//! one that ends first is not.

mod common;

use common::{model_ready, root};
use mmt_whisper::decoding::rules::LogitRules;
use mmt_whisper::decoding::{generate, Generated, Request, Strategy};
use mmt_whisper::mel::{self, MelFrontEnd};
use mmt_whisper::model::{stack_windows, CrossAttention, WhisperModel};

/// The first window of `samples/dict_001.wav`, encoded once and decoded
/// greedily, with Whisper's prompt and timestamp rules, under any budget.
struct FirstWindow {
    model: WhisperModel,
    cross: CrossAttention,
    rules: LogitRules,
}

impl FirstWindow {
    fn encode() -> Self {
        let mut model = WhisperModel::load(&common::model_options(2)).expect("model loads");
        let spec = model.spec().clone();
        let samples =
            mmt_whisper::audio::decode_file(&root().join("samples/dict_001.wav")).expect("decodes");
        let features = MelFrontEnd::new(spec.n_mels).log_mel(&samples);
        let windows = stack_windows(&[mel::window(&features, 0)]).expect("one window");
        let cross = model.encode(windows.view()).expect("encodes");
        let rules = LogitRules::new(&spec, true, Some(50));
        Self {
            model,
            cross,
            rules,
        }
    }

    fn decode(&mut self, budget: Option<usize>) -> Generated {
        let spec = self.model.spec().clone();
        let request = Request {
            max_new_tokens: budget,
            ..Request::from_start(0, &spec)
        };
        let mut generated = generate(
            &mut self.model,
            &mut self.cross,
            &[request],
            &self.rules,
            &Strategy::Greedy,
            spec.n_text_ctx / 2,
        )
        .expect("decodes");
        generated.remove(0)
    }
}

#[test]
fn a_decoding_that_reaches_its_budget_is_cut_and_one_that_ends_is_not() {
    if !model_ready() {
        eprintln!("skipping: models/tiny.en is not set up (make setup-dev)");
        return;
    }
    let mut window = FirstWindow::encode();
    let whole = window.decode(None);
    assert!(!whole.cut_at_budget, "no budget: nothing to cut at");
    assert!(whole.tokens.len() > 8, "the clip is a sentence or more");

    let cut = window.decode(Some(5));
    assert!(cut.cut_at_budget);
    assert_eq!(
        cut.tokens,
        whole.tokens[..5],
        "the same tokens, stopped at 5"
    );

    let roomy = window.decode(Some(whole.tokens.len() + 1));
    assert!(
        !roomy.cut_at_budget,
        "it ended with end-of-text inside its budget"
    );
    assert_eq!(roomy.tokens, whole.tokens);
}
