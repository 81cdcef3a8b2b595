//! Same audio, same text: with the default settings a recording's transcript
//! is byte-identical whether it is transcribed alone or among other
//! recordings, in any batch size, on one worker or two, by `mmt run` and by
//! `mmt transcribe`. A medical record may not change because of whose
//! dictations happened to share its batch.
//!
//! Besides the shipped samples (one speech chunk each), two longer recordings
//! made of all the samples in turn span two chunks, so the mixed batches hold
//! rows with and without a previous-text prompt (left-padded to one length).

mod common;

use base64::Engine as _;
use common::{documents, mmt_with_env, model_ready, read_manifest, root, wav_bytes, wav_samples};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The recordings: the samples, and two concatenations of them (forward and
/// backward, a second of silence between clips), each ~42 s.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let samples: Vec<Vec<i16>> = read_manifest(&root().join("samples"))
        .iter()
        .map(|entry| wav_samples(&root().join("samples").join(&entry.audio)))
        .collect();
    let joined = |order: &mut dyn Iterator<Item = &Vec<i16>>| -> Vec<i16> {
        let mut pcm = Vec::new();
        for clip in order {
            pcm.extend_from_slice(clip);
            pcm.extend(std::iter::repeat_n(0i16, 16_000));
        }
        pcm
    };
    let mut files: Vec<(String, Vec<i16>)> = samples
        .iter()
        .enumerate()
        .map(|(i, pcm)| (format!("clip_{i}.wav"), pcm.clone()))
        .collect();
    files.push(("long_forward.wav".into(), joined(&mut samples.iter())));
    files.push((
        "long_backward.wav".into(),
        joined(&mut samples.iter().rev()),
    ));
    files
        .into_iter()
        .map(|(name, pcm)| {
            let path = dir.join(name);
            std::fs::write(&path, wav_bytes(&pcm)).expect("write recording");
            path
        })
        .collect()
}

/// The recordings in a fresh folder (kept while the folder lives), or `None`
/// when the model is not set up.
fn test_recordings() -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
    if !model_ready() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let files = recordings(dir.path());
    Some((dir, files))
}

/// What `outputs` gives for each file on its own, merged.
fn each_alone(
    files: &[PathBuf],
    outputs: impl Fn(&[PathBuf]) -> BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    files
        .iter()
        .flat_map(|file| outputs(std::slice::from_ref(file)))
        .collect()
}

/// Transcript text per job id of a default `mmt run` over `files`, plus `extra` flags.
fn run_texts(files: &[PathBuf], extra: &[&str]) -> BTreeMap<String, String> {
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    for file in files {
        std::fs::copy(file, input.path().join(file.file_name().expect("name"))).expect("copy");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["run", "--no-progress", "--input"])
        .arg(input.path())
        .arg("--out")
        .arg(out.path())
        .args(extra)
        .current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .output()
        .expect("mmt run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let texts: BTreeMap<String, String> = documents(out.path())
        .iter()
        .map(|doc| {
            let data = doc["content"][0]["attachment"]["data"]
                .as_str()
                .unwrap_or_default();
            let text = base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64 transcript");
            (
                doc["id"].as_str().expect("id").to_owned(),
                String::from_utf8(text).expect("UTF-8 transcript"),
            )
        })
        .collect();
    assert_eq!(texts.len(), files.len(), "one document per recording");
    texts
}

#[test]
fn mmt_run_gives_a_recording_the_same_text_alone_and_in_any_batch() {
    let Some((_dir, files)) = test_recordings() else {
        return;
    };
    let alone = each_alone(&files, |file| run_texts(file, &["--workers", "1"]));
    for flags in [
        &[][..],
        &["--workers", "1", "--batch-size", "3"][..],
        &["--workers", "2", "--batch-size", "2"][..],
    ] {
        let mixed = run_texts(&files, flags);
        for (id, text) in &alone {
            assert_eq!(
                mixed.get(id),
                Some(text),
                "job {id} changed in a mixed run with {flags:?}"
            );
        }
    }
}

/// A long recording cut into conditioned streams (here every chunk its own
/// stream, each started by a lead-in decoding of the chunk before it) still
/// gets the same text alone and among others: the cut is the recording's own.
#[test]
fn mmt_run_cuts_streams_by_the_recording_alone() {
    let Some((_dir, files)) = test_recordings() else {
        return;
    };
    let long: Vec<PathBuf> = files
        .iter()
        .filter(|file| file.to_string_lossy().contains("long_"))
        .cloned()
        .collect();
    let streams = ["--stream-chunks", "1"];
    let alone = each_alone(&long, |file| {
        run_texts(file, &[&streams[..], &["--workers", "1"]].concat())
    });
    let mixed = run_texts(
        &files,
        &[&streams[..], &["--workers", "2", "--batch-size", "3"]].concat(),
    );
    for (id, text) in &alone {
        assert_eq!(mixed.get(id), Some(text), "job {id} changed in a mixed run");
        assert!(!text.trim().is_empty(), "job {id} has no text");
    }
}

/// `mmt transcribe --format json` lines (text, timed segments, their
/// log-probabilities and confidences) per file, with extra environment.
fn transcribe_lines(
    files: &[PathBuf],
    batch_size: &str,
    env: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut args = vec![
        "transcribe",
        "--format",
        "json",
        "--threads",
        "2",
        "--batch-size",
        batch_size,
    ];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (status, stdout, stderr) = mmt_with_env(&args, env);
    assert!(status.success(), "{stderr}");
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let file = value["file"].as_str().expect("file").to_owned();
            (file, line.to_owned())
        })
        .collect()
}

/// Each file alone against mixed batches of 8, 3 and 2 (in reverse order).
fn assert_transcribe_invariant(files: &[PathBuf], env: &[(&str, &str)]) {
    let alone = each_alone(files, |file| transcribe_lines(file, "8", env));
    let reversed: Vec<PathBuf> = files.iter().rev().cloned().collect();
    for (order, batch_size) in [(files, "8"), (files, "3"), (&reversed[..], "2")] {
        let mixed = transcribe_lines(order, batch_size, env);
        assert_eq!(mixed, alone, "batch size {batch_size}, environment {env:?}");
    }
}

#[test]
fn mmt_transcribe_gives_a_file_the_same_text_alone_and_in_any_batch() {
    let Some((_dir, files)) = test_recordings() else {
        return;
    };
    assert_transcribe_invariant(&files, &[]);
}

/// The int8 weights quantize each row's activations on their own
/// (scripts/quantize_onnx.py): with them too, a file's transcript is the
/// same alone and in any batch. (Quantized per tensor, the batch's largest
/// value set every row's precision, and texts moved with the batch.)
#[test]
fn the_int8_model_gives_a_file_the_same_text_alone_and_in_any_batch() {
    let Some((_dir, files)) = test_recordings() else {
        return;
    };
    let Some(int8) = common::set_up_model("tiny.en-int8") else {
        return;
    };
    let int8 = int8.display().to_string();
    assert_transcribe_invariant(&files, &[("MMT_MODEL_DIR", &int8)]);
    let mut options = common::model_options(2);
    options.model_dir = PathBuf::from(int8);
    assert_engine_invariant(&options, &files);
}

/// Below the texts, the numbers: a recording's whole transcript (segments,
/// timestamps, log-probabilities, confidences) is bit-identical alone and in
/// a batch, for Whisper's default decoding and for sampled decoding (every
/// window drawn at temperature 1, one sample and three), where the smallest
/// difference in the logits would change the draws. A lone row used to take
/// ONNX Runtime's one-row kernels, whose rounding differs from the batch's.
#[test]
fn engine_transcripts_are_bit_identical_alone_and_in_a_batch() {
    let Some((_dir, files)) = test_recordings() else {
        return;
    };
    assert_engine_invariant(&common::model_options(2), &files);
}

/// The same with every window prompted with ~200 tokens of previous text, as
/// the windows of a long dictation are: a batch's prompts that long are fed
/// to the decoder a few rows at a time (which bounds their cross-attention
/// scores), a lone prompt in one call; the transcripts must not tell.
#[test]
fn engine_transcripts_after_long_prompts_are_bit_identical_alone_and_in_a_batch() {
    let Some((_dir, files)) = test_recordings() else {
        return;
    };
    let note = "Patient seen in clinic today for follow up of hypertension and type two \
                diabetes, blood pressure one hundred forty over ninety, metformin five \
                hundred milligrams twice daily continued. ";
    let prompted = mmt_whisper::TranscribeOptions {
        initial_prompt: Some(note.repeat(6)),
        ..mmt_whisper::TranscribeOptions::default()
    };
    let audio = decode_all(&files);
    let mut engine = mmt_whisper::Engine::load(&common::model_options(2)).expect("model loads");
    assert_batch_invariant(&mut engine, &audio, "prompted", &prompted);
}

fn decode_all(files: &[PathBuf]) -> Vec<Vec<f32>> {
    files
        .iter()
        .map(|path| mmt_whisper::audio::decode_file(path).expect("decodes"))
        .collect()
}

fn assert_engine_invariant(model: &mmt_whisper::ModelOptions, files: &[PathBuf]) {
    let audio = decode_all(files);
    let mut engine = mmt_whisper::Engine::load(model).expect("model loads");
    let default = mmt_whisper::TranscribeOptions::default();
    let sampled = |best_of| mmt_whisper::TranscribeOptions {
        temperatures: vec![1.0],
        best_of,
        ..mmt_whisper::TranscribeOptions::default()
    };
    for (label, options) in [
        ("default", default),
        ("sampled, 1", sampled(1)),
        ("sampled, 3", sampled(3)),
    ] {
        assert_batch_invariant(&mut engine, &audio, label, &options);
    }
}

/// Each recording's transcript alone equals its transcript in one batch of all.
fn assert_batch_invariant(
    engine: &mut mmt_whisper::Engine,
    audio: &[Vec<f32>],
    label: &str,
    options: &mmt_whisper::TranscribeOptions,
) {
    let mut transcripts = |inputs: &[&[f32]]| -> Vec<String> {
        engine
            .transcribe_batch(inputs, options)
            .expect("transcribes")
            .iter()
            .map(|transcript| serde_json::to_string(transcript).expect("JSON"))
            .collect()
    };
    let alone: Vec<String> = audio
        .iter()
        .flat_map(|samples| transcripts(&[samples.as_slice()]))
        .collect();
    let all: Vec<&[f32]> = audio.iter().map(Vec::as_slice).collect();
    let batched = transcripts(&all);
    for (index, (batched, alone)) in batched.iter().zip(&alone).enumerate() {
        assert_eq!(batched, alone, "{label} decoding, recording {index}");
    }
}
