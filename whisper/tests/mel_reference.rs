//! Compares `MelFrontEnd::log_mel` with faster-whisper's `FeatureExtractor` on
//! the repository's sample clips (and two short synthetic edge cases).
//!
//! The reference is produced at test time by `scripts/mel_reference.py` run
//! with the project virtualenv (`<workspace>/.venv/bin/python`). Both sides read
//! the same 16-bit WAV samples, so the difference measures the front end only.
//! Without the virtualenv the test is skipped with a message, unless `CI=true`,
//! where it fails.

use mmt_whisper::audio;
use mmt_whisper::mel::MelFrontEnd;
use ndarray::Array2;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOLERANCE: f32 = 1e-3;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits inside the workspace")
        .to_path_buf()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The project's Python with faster-whisper importable, or `None` to skip.
fn reference_python() -> Option<PathBuf> {
    let python = workspace_root().join(".venv/bin/python");
    let why = if !python.exists() {
        format!("{} not found", python.display())
    } else {
        match Command::new(&python)
            .args(["-c", "import faster_whisper"])
            .output()
        {
            Ok(out) if out.status.success() => return Some(python),
            Ok(out) => format!(
                "faster_whisper not importable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => format!("cannot run {}: {err}", python.display()),
        }
    };
    assert!(
        !in_ci(),
        "mel reference needs the project virtualenv: {why}"
    );
    println!("SKIPPED mel reference comparison: {why}");
    None
}

/// Reads a 16-bit PCM mono WAV as `int16 / 32768.0`, the way faster-whisper
/// (and the reference script) scale it.
fn read_wav_s16_mono(path: &Path) -> (u32, Vec<f32>) {
    let bytes = std::fs::read(path).expect("read wav");
    assert_eq!(&bytes[0..4], b"RIFF", "{}", path.display());
    assert_eq!(&bytes[8..12], b"WAVE", "{}", path.display());
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut pos = 12;
    let mut rate = 0;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(pos + 4) as usize;
        let body = pos + 8;
        match id {
            b"fmt " => {
                assert_eq!(u16_at(body + 2), 1, "mono expected");
                rate = u32_at(body + 4);
                assert_eq!(u16_at(body + 14), 16, "16-bit expected");
            }
            b"data" => {
                let end = (body + len).min(bytes.len());
                let samples = bytes[body..end]
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                    .collect();
                return (rate, samples);
            }
            _ => {}
        }
        pos = body + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// Writes a 16 kHz mono 16-bit WAV of `samples` (in `[-1, 1)`).
fn write_wav_s16_mono_16k(path: &Path, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).expect("write wav");
}

fn reference_features(python: &Path, wav: &Path, n_mels: usize, dir: &Path) -> Array2<f32> {
    let out_path = dir.join(format!(
        "{}.{n_mels}.bin",
        wav.file_stem().and_then(|s| s.to_str()).unwrap_or("clip")
    ));
    let script = workspace_root().join("scripts/mel_reference.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(wav)
        .arg(&out_path)
        .args(["--n-mels", &n_mels.to_string()])
        .output()
        .expect("run mel_reference.py");
    assert!(
        out.status.success(),
        "mel_reference.py failed on {}: {}",
        wav.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).expect("read reference");
    let rows = u32::from_le_bytes(bytes[0..4].try_into().expect("header")) as usize;
    let cols = u32::from_le_bytes(bytes[4..8].try_into().expect("header")) as usize;
    let data: Vec<f32> = bytes[8..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("f32")))
        .collect();
    assert_eq!(data.len(), rows * cols, "reference size");
    Array2::from_shape_vec((rows, cols), data).expect("reference shape")
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn log_mel_matches_faster_whisper() {
    let Some(python) = reference_python() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");

    let mut wavs: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("samples"))
        .expect("samples dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    wavs.sort();
    assert!(!wavs.is_empty(), "no sample wavs");

    // Short clips exercise numpy's repeated reflect padding and the frame count.
    let (_, jfk) =
        read_wav_s16_mono(&workspace_root().join("samples/jfk_inaugural_1961_excerpt.wav"));
    for len in [37usize, 1_000] {
        let path = tmp.path().join(format!("short_{len}.wav"));
        let pcm: Vec<i16> = jfk[80_000..80_000 + len]
            .iter()
            .map(|s| (s * 32768.0) as i16)
            .collect();
        write_wav_s16_mono_16k(&path, &pcm);
        wavs.push(path);
    }

    let front_ends = [MelFrontEnd::new(80), MelFrontEnd::new(128)];
    let mut worst = 0.0f32;
    for wav in &wavs {
        let (rate, samples) = read_wav_s16_mono(wav);
        assert_eq!(rate, 16_000, "{}", wav.display());

        // The decoder must hand the mel front end these very samples.
        let decoded = audio::decode_file(wav).expect("decode sample wav");
        assert_eq!(decoded.len(), samples.len(), "{}", wav.display());
        let decode_diff = decoded
            .iter()
            .zip(&samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            decode_diff < 1e-6,
            "{}: decode differs by {decode_diff}",
            wav.display()
        );

        for fe in &front_ends {
            let ours = fe.log_mel(&samples);
            let reference = reference_features(&python, wav, fe.n_mels(), tmp.path());
            assert_eq!(ours.dim(), reference.dim(), "{} shape", wav.display());
            let diff = max_abs_diff(&ours, &reference);
            println!(
                "{:<40} n_mels {:>3} frames {:>5}: max abs diff {diff:.3e}",
                wav.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                fe.n_mels(),
                ours.ncols()
            );
            worst = worst.max(diff);
            assert!(
                diff < TOLERANCE,
                "{} n_mels {}: max abs diff {diff} >= {TOLERANCE}",
                wav.display(),
                fe.n_mels()
            );
        }
    }
    println!("worst max abs diff: {worst:.3e}");
}
