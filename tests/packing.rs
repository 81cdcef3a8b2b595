//! Window packing on real speech: short recordings sharing a window keep
//! their own words (`mmt transcribe --packing` against unpacked decoding).

mod common;

use common::{mmt, model_ready, normalize, root};
use std::collections::{BTreeMap, HashSet};

/// Normalised words per file of `mmt transcribe --format json`.
fn words_per_file(extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let samples: Vec<String> = common::read_manifest(&root().join("samples"))
        .iter()
        .map(|e| format!("samples/{}", e.audio))
        .collect();
    let mut args = vec!["transcribe", "--format", "json", "--threads", "2"];
    args.extend_from_slice(extra);
    args.extend(samples.iter().map(String::as_str));
    let (status, stdout, stderr) = mmt(&args);
    assert!(status.success(), "{stderr}");
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            (
                value["file"].as_str().expect("file").to_owned(),
                normalize(value["text"].as_str().expect("text")),
            )
        })
        .collect()
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
        // And most of its own words survive.
        let kept = words.iter().filter(|w| own.contains(w)).count();
        assert!(
            kept * 10 >= alone[file].len() * 7,
            "{file}: packed {words:?} vs alone {:?}",
            alone[file]
        );
    }
}
