//! Helpers shared by the benchmarks: the workspace's samples and model.

#![allow(dead_code)]

use mmt_whisper::ModelOptions;
use std::path::PathBuf;

/// The workspace root (this crate lives in `whisper/`).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// 16 kHz mono samples of a clip shipped in `samples/`.
pub fn sample(name: &str) -> Vec<f32> {
    let path = root().join("samples").join(name);
    mmt_whisper::audio::decode_file(&path)
        .unwrap_or_else(|err| panic!("cannot decode {}: {err}", path.display()))
}

/// `seconds` of deterministic speech-like noise: a few harmonics under an
/// amplitude envelope, plus noise from a fixed linear congruential generator.
pub fn synthetic(seconds: f64) -> Vec<f32> {
    let n = (seconds * 16_000.0) as usize;
    let mut state = 0x2545_f491_u32;
    (0..n)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            let envelope = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            let voice: f32 = [180.0f32, 360.0, 720.0, 1440.0]
                .iter()
                .map(|f| (2.0 * std::f32::consts::PI * f * t).sin() / f.sqrt())
                .sum();
            0.3 * envelope * voice + 0.02 * noise
        })
        .collect()
}

/// The exported model and ONNX Runtime as `make setup` leaves them
/// (`MMT_MODEL_DIR` and `ORT_DYLIB_PATH` override), with `threads` intra-op
/// threads; `None`, after saying why, when they are not there.
pub fn model_options(threads: usize) -> Option<ModelOptions> {
    let model_dir = std::env::var_os("MMT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/tiny.en"));
    let ort_library = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(find_ort_library)
        .unwrap_or_default();
    let options = ModelOptions {
        model_dir,
        ort_library,
        intra_op_threads: threads,
    };
    match options.check_files() {
        Ok(()) => Some(options),
        Err(err) => {
            eprintln!("skipping the model benchmarks: {err}");
            None
        }
    }
}

/// `libonnxruntime.so.*` of the onnxruntime wheel in `<root>/.venv`.
fn find_ort_library() -> Option<PathBuf> {
    let lib = root().join(".venv/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|python| {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()
        })
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Intra-op threads for the model benchmarks: `MMT_BENCH_THREADS`, else all cores.
pub fn threads() -> usize {
    std::env::var("MMT_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&t: &usize| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
