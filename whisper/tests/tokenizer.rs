//! The tokenizer loads from the exported model and round-trips clinical text.

use mmt_whisper::model::ModelSpec;
use mmt_whisper::tokenizer::Tokenizer;
use std::path::PathBuf;

fn model_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny.en");
    if dir.join("mmt-model.json").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "models/tiny.en is missing under CI: `make setup` must run first"
    );
    eprintln!("skipping: run `make setup` to export the model");
    None
}

fn load() -> Option<(Tokenizer, ModelSpec)> {
    let dir = model_dir()?;
    let spec = ModelSpec::read(&dir.join("mmt-model.json")).expect("spec");
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), &spec).expect("tokenizer");
    Some((tokenizer, spec))
}

#[test]
fn clinical_text_round_trips() {
    let Some((tokenizer, _)) = load() else { return };
    for text in [
        " The patient's blood pressure is 120/80 mmHg, pulse 72.",
        " Metoprolol 25 mg twice daily; follow-up in 2 weeks.",
        " Café-au-lait spots — naïve résumé, 37.5 °C.",
        " 患者",
    ] {
        let ids = tokenizer.encode(text).expect("encode");
        assert!(!ids.is_empty());
        assert_eq!(tokenizer.decode(&ids).expect("decode"), text);
    }
}

#[test]
fn special_tokens_match_the_model_spec_and_are_not_text() {
    let Some((tokenizer, spec)) = load() else {
        return;
    };
    assert_eq!(tokenizer.token_id("<|endoftext|>"), Some(spec.eot));
    assert_eq!(tokenizer.token_id("<|startoftranscript|>"), Some(spec.sot));
    assert_eq!(
        tokenizer.token_id("<|notimestamps|>"),
        Some(spec.no_timestamps)
    );
    let mut ids = vec![spec.sot, spec.timestamp_begin];
    ids.extend(tokenizer.encode(" Hello").expect("encode"));
    ids.extend([spec.timestamp_begin + 50, spec.eot]);
    assert_eq!(tokenizer.decode(&ids).expect("decode"), " Hello");
    assert!(tokenizer.is_timestamp(spec.timestamp_begin + 1500));
    assert!(!tokenizer.is_timestamp(spec.eot));
}
