//! Window packing on real speech: short recordings sharing a window keep
//! their own words (`mmt transcribe --packing` against unpacked decoding),
//! on the shipped samples and, when `../shared/eval` is here, on the
//! evaluation dictations, where packing must also keep the WER.

mod common;

use common::{mmt, model_ready, normalize, read_manifest, root, word_errors};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Normalised words per file (by file name) of `mmt transcribe --format json`
/// over the files of `dir`'s manifest.
fn words_per_file_in(dir: &Path, extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let files: Vec<String> = read_manifest(dir)
        .iter()
        .map(|e| dir.join(&e.audio).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["transcribe", "--format", "json", "--threads", "2"];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(String::as_str));
    let (status, stdout, stderr) = mmt(&args);
    assert!(status.success(), "{stderr}");
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let file = Path::new(value["file"].as_str().expect("file"));
            (
                file.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                normalize(value["text"].as_str().expect("text")),
            )
        })
        .collect()
}

fn words_per_file(extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    words_per_file_in(&root().join("samples"), extra)
}

/// Corpus WER (%) of `hypotheses` against `dir`'s manifest.
fn corpus_wer(dir: &Path, hypotheses: &BTreeMap<String, Vec<String>>) -> f64 {
    let (mut errors, mut words) = (0, 0);
    for entry in read_manifest(dir) {
        let reference = normalize(&entry.text);
        errors += word_errors(&reference, &hypotheses[&entry.audio]);
        words += reference.len();
    }
    100.0 * errors as f64 / words as f64
}

/// Packed against unpacked on an evaluation set: the WER may not rise by more
/// than half a point, and no file's packed text may gain a word that only
/// another file's reference has (six letters or more: shorter ones come up
/// as misrecognitions too often to tell a moved word from a misheard one).
fn packing_holds_on(set: &str) {
    let Some(dir) = common::eval_set(set) else {
        return;
    };
    let alone = words_per_file_in(&dir, &[]);
    let packed = words_per_file_in(&dir, &["--packing"]);
    let (alone_wer, packed_wer) = (corpus_wer(&dir, &alone), corpus_wer(&dir, &packed));
    eprintln!("{set}: WER unpacked {alone_wer:.2} %, packed {packed_wer:.2} %");
    assert!(
        packed_wer <= alone_wer + 0.5,
        "{set}: packing raised the WER from {alone_wer:.2} to {packed_wer:.2} %"
    );
    let mut sayers: HashMap<String, HashSet<String>> = HashMap::new();
    for entry in read_manifest(&dir) {
        for word in normalize(&entry.text) {
            sayers.entry(word).or_default().insert(entry.audio.clone());
        }
    }
    for (file, words) in &packed {
        let unpacked: HashSet<&String> = alone[file].iter().collect();
        for word in words
            .iter()
            .filter(|w| w.len() >= 6 && !unpacked.contains(w))
        {
            let Some(files) = sayers.get(word) else {
                continue;
            };
            assert!(
                files.len() != 1 || files.contains(file),
                "{set}: {file} (packed) has {word:?}, which only {files:?} says"
            );
        }
    }
}

#[test]
fn packing_keeps_the_wer_and_the_words_of_the_eval_dictations() {
    if !model_ready() {
        return;
    }
    packing_holds_on("dictation");
    packing_holds_on("dictation-neural");
}

#[test]
fn packed_recordings_keep_their_own_words() {
    if !model_ready() {
        return;
    }
    let alone = words_per_file(&[]);
    let packed = words_per_file(&["--packing"]);
    assert_eq!(
        alone.keys().collect::<Vec<_>>(),
        packed.keys().collect::<Vec<_>>()
    );
    for (file, words) in &packed {
        assert!(!words.is_empty(), "{file} lost its text");
        let own: HashSet<&String> = alone[file].iter().collect();
        // A word another recording says (and this one does not) would have
        // moved between recordings.
        for (other, other_words) in &alone {
            if other == file {
                continue;
            }
            for word in words.iter().filter(|w| w.len() >= 5 && !own.contains(w)) {
                assert!(
                    !other_words.contains(word),
                    "{file} (packed) has {word:?}, which only {other} says"
                );
            }
        }
    }
    // And no recording loses part of its text: against its reference, packed
    // decoding makes at most a quarter of the reference's words in errors
    // more than unpacked decoding. (Not against the unpacked words: where
    // unpacked decoding repeats itself, packed decoding rightly differs.)
    let samples = root().join("samples");
    for entry in read_manifest(&samples) {
        let reference = normalize(&entry.text);
        let (alone_errors, packed_errors) = (
            word_errors(&reference, &alone[&entry.audio]),
            word_errors(&reference, &packed[&entry.audio]),
        );
        assert!(
            packed_errors * 4 <= alone_errors * 4 + reference.len(),
            "{}: {packed_errors} word errors packed, {alone_errors} alone: {:?} vs {:?}",
            entry.audio,
            packed[&entry.audio],
            alone[&entry.audio]
        );
    }
}
