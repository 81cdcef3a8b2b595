//! Helpers shared by the integration tests of the `mmt` binary.

#![allow(dead_code)]

pub mod postgres;
pub mod proxy;
pub mod receivers;
pub mod serve;
pub mod service;

// Not every test binary checks a service.
#[allow(unused_imports)]
pub use service::require_service;

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The workspace root (this package lives there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the set-up (model export, ONNX Runtime) has been run. Under CI a
/// missing set-up is a failure, elsewhere the caller skips with a message.
pub fn model_ready() -> bool {
    set_up_model("tiny.en").is_some()
}

/// `models/<name>` as set-up writes it (`tiny.en`, `tiny.en-int8`), if it is
/// there. Under CI a missing model is a failure, elsewhere the caller skips
/// with a message.
pub fn set_up_model(name: &str) -> Option<PathBuf> {
    let dir = root().join("models").join(name);
    if dir.join("mmt-model.json").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "models/{name} is missing under CI: `make setup` must run first"
    );
    eprintln!("skipping: run `make setup` to write models/{name}");
    None
}

/// The model and ONNX Runtime as the configuration finds them (`make setup`'s,
/// unless MMT_MODEL_DIR / ORT_DYLIB_PATH say otherwise).
pub fn model_options(threads: usize) -> mmt_whisper::ModelOptions {
    let config = mmt_pipeline::Config::from_env().expect("configuration");
    mmt_whisper::ModelOptions {
        model_dir: config.model.model_dir,
        ort_library: config.model.ort_library,
        intra_op_threads: threads,
    }
}

/// The shared evaluation folder `../shared/eval/<set>`, when it exists.
pub fn eval_set(set: &str) -> Option<PathBuf> {
    let dir = root().join("../shared/eval").join(set);
    if dir.join("manifest.jsonl").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping the extended evaluation: {} is absent",
            dir.display()
        );
        None
    }
}

/// One line of a `manifest.jsonl`.
#[derive(Debug, Deserialize)]
pub struct ManifestEntry {
    pub audio: String,
    pub text: String,
}

pub fn read_manifest(dir: &Path) -> Vec<ManifestEntry> {
    let text = std::fs::read_to_string(dir.join("manifest.jsonl")).expect("manifest readable");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("manifest line is JSON"))
        .collect()
}

/// Lowercase, punctuation stripped (apostrophes inside words kept), split on whitespace.
pub fn normalize(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .map(|word| word.trim_matches('\'').to_owned())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Word-level edit distance between reference and hypothesis.
pub fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(r != h);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[hypothesis.len()]
}

/// Runs `mmt` with `args`; returns (status, stdout, stderr).
pub fn mmt(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    mmt_with_env(args, &[])
}

/// Runs `mmt` with `args` and extra environment variables.
pub fn mmt_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("mmt runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A 16 kHz mono 16-bit WAV of `samples`.
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    wav_file(1, 16_000, 1, 16, &data)
}

/// A canonical WAV file (44-byte header) around `data`, whatever its fields
/// say: `format` 1 is integer PCM, 3 float, 6 A-law, 7 µ-law. The byte rate
/// and block alignment follow from the others (wrapping, for absurd values).
pub fn wav_file(format: u16, rate: u32, channels: u16, bits: u16, data: &[u8]) -> Vec<u8> {
    let align = channels.wrapping_mul(bits / 8);
    let data_len = data.len() as u32;
    let mut bytes = Vec::with_capacity(44 + data.len());
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&format.to_le_bytes());
    bytes.extend_from_slice(&channels.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&rate.wrapping_mul(u32::from(align)).to_le_bytes());
    bytes.extend_from_slice(&align.to_le_bytes());
    bytes.extend_from_slice(&bits.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The 16-bit samples of a canonical 44-byte-header WAV (the shipped samples).
pub fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).expect("read wav");
    bytes[44..]
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

/// Distinct recordings made from the shipped samples: each sample, then each
/// again with some silence appended (different bytes, same speech).
pub fn distinct_recordings(count: usize) -> Vec<(String, Vec<u8>)> {
    let samples: Vec<PathBuf> = read_manifest(&root().join("samples"))
        .iter()
        .map(|e| root().join("samples").join(&e.audio))
        .collect();
    (0..count)
        .map(|i| {
            let mut pcm = wav_samples(&samples[i % samples.len()]);
            pcm.extend(std::iter::repeat_n(0i16, 1600 * (i / samples.len())));
            (format!("rec_{i:02}.wav"), wav_bytes(&pcm))
        })
        .collect()
}

/// `count` distinct short clips (1.5 to 2.1 s of speech) cut from the shipped
/// samples, the `first`-th onwards: each is another stretch of a sample
/// (the sample, the start and the length vary), so each has its own content
/// and is a job of its own, and a short clip keeps a large run affordable.
pub fn distinct_clips(first: usize, count: usize) -> Vec<Vec<u8>> {
    let samples: Vec<Vec<i16>> = read_manifest(&root().join("samples"))
        .iter()
        .map(|e| wav_samples(&root().join("samples").join(&e.audio)))
        .collect();
    (first..first + count)
        .map(|i| {
            let pcm = &samples[i % samples.len()];
            let round = i / samples.len();
            // 1.5 s plus 0.1 s steps; the start moves by 50 ms each time the
            // lengths have all been used.
            let length = (24_000 + 1_600 * (round % 7)).min(pcm.len());
            let room = (pcm.len() - length).max(1);
            let start = (round / 7 * 800) % room;
            wav_bytes(&pcm[start..start + length])
        })
        .collect()
}

/// The JSON lines of `path` (none if it does not exist); every line must be complete.
pub fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("complete JSON lines only"))
        .collect()
}

/// The FHIR documents `mmt run` wrote under `out`.
pub fn documents(out: &Path) -> Vec<serde_json::Value> {
    read_lines(&out.join("fhir/DocumentReference.ndjson"))
}

/// How many FHIR documents a run still writing has finished under `out`: its
/// complete lines, since a read can see the line being written in part.
pub fn documents_written(out: &Path) -> usize {
    std::fs::read_to_string(out.join("fhir/DocumentReference.ndjson"))
        .unwrap_or_default()
        .matches('\n')
        .count()
}

/// How many documents each job id has under `out`.
pub fn documents_per_id(out: &Path) -> std::collections::HashMap<String, usize> {
    let mut per_id = std::collections::HashMap::new();
    for doc in documents(out) {
        *per_id
            .entry(doc["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    per_id
}

/// `job_completed` events in the audit log under `out`.
pub fn completed_events(out: &Path) -> usize {
    read_lines(&out.join("audit.jsonl"))
        .iter()
        .filter(|event| event["action"] == "job_completed")
        .count()
}

/// Claims of a token for `tenant` with `roles`, valid for `expires_in`
/// seconds from now (negative: expired that long ago).
pub fn claims(tenant: &str, roles: &[&str], expires_in: i64) -> mmt_api::auth::Claims {
    let now = mmt_core::job::unix_now();
    mmt_api::auth::Claims {
        sub: "svc-test".into(),
        tenant: tenant.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: (now + expires_in) as u64,
        iat: Some(now as u64),
        nbf: None,
        aud: None,
    }
}
