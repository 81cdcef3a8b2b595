//! Decoding of every supported format, and refusal of bad input without panics.
//!
//! The fixtures in `tests/fixtures/` are cuts of
//! `samples/jfk_inaugural_1961_excerpt.wav` (see the README there); each decode
//! is compared with the same cut of that 16 kHz original.

use mmt_whisper::audio::{self, SAMPLE_RATE};
use mmt_whisper::WhisperError;
use std::path::{Path, PathBuf};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures").join(name)
}

/// The original 16 kHz clip, decoded by the crate itself.
fn original() -> Vec<f32> {
    let path = crate_dir().join("../samples/jfk_inaugural_1961_excerpt.wav");
    audio::decode_file(&path).expect("decode original sample")
}

fn cut(signal: &[f32], start_s: f64, dur_s: f64) -> &[f32] {
    let start = (start_s * f64::from(SAMPLE_RATE)).round() as usize;
    let end = start + (dur_s * f64::from(SAMPLE_RATE)).round() as usize;
    &signal[start..end.min(signal.len())]
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Best normalised cross-correlation of `a` against `b` over lags of up to
/// `max_lag` samples (codecs add delay), and the lag where it is reached.
fn best_correlation(a: &[f32], b: &[f32], max_lag: isize) -> (f64, isize) {
    let mut best = (f64::MIN, 0);
    for lag in -max_lag..=max_lag {
        let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &x) in a.iter().enumerate() {
            let j = i as isize + lag;
            if j < 0 || j as usize >= b.len() {
                continue;
            }
            let y = f64::from(b[j as usize]);
            dot += f64::from(x) * y;
            na += f64::from(x) * f64::from(x);
            nb += y * y;
        }
        let c = dot / (na.sqrt() * nb.sqrt()).max(1e-12);
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

struct Case {
    file: &'static str,
    /// Where the fixture was cut from the original, in seconds.
    start_s: f64,
    dur_s: f64,
    min_correlation: f64,
    /// Expected RMS of the decode relative to the original cut.
    rms_ratio: (f64, f64),
}

const CASES: &[Case] = &[
    Case {
        file: "jfk_s16_22k_mono.wav",
        start_s: 5.2,
        dur_s: 1.5,
        min_correlation: 0.99,
        rms_ratio: (0.95, 1.05),
    },
    // Right channel at half the left: the average is 0.75 of the original.
    Case {
        file: "jfk_f32_44k_stereo.wav",
        start_s: 5.5,
        dur_s: 0.4,
        min_correlation: 0.99,
        rms_ratio: (0.70, 0.80),
    },
    Case {
        file: "jfk_16k_mono.flac",
        start_s: 5.2,
        dur_s: 2.5,
        min_correlation: 0.999,
        rms_ratio: (0.99, 1.01),
    },
    Case {
        file: "jfk_44k_mono.mp3",
        start_s: 5.2,
        dur_s: 2.5,
        min_correlation: 0.9,
        rms_ratio: (0.85, 1.15),
    },
    Case {
        file: "jfk_16k_mono_vorbis.ogg",
        start_s: 5.2,
        dur_s: 2.5,
        min_correlation: 0.9,
        rms_ratio: (0.85, 1.15),
    },
    Case {
        file: "jfk_opus.opus",
        start_s: 5.2,
        dur_s: 2.5,
        min_correlation: 0.8,
        rms_ratio: (0.8, 1.2),
    },
];

#[test]
fn every_format_decodes_to_the_original_signal() {
    let original = original();
    assert_eq!(original.len(), 176_000);
    for case in CASES {
        let path = fixture(case.file);
        let decoded = audio::decode_file(&path).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let reference = cut(&original, case.start_s, case.dur_s);

        let seconds = decoded.len() as f64 / f64::from(SAMPLE_RATE);
        let rel = (seconds - case.dur_s).abs() / case.dur_s;
        assert!(
            decoded.iter().all(|s| (-1.0..=1.0).contains(s)),
            "{}: samples out of range",
            case.file
        );
        let (corr, lag) = best_correlation(&decoded, reference, 800);
        let ratio = rms(&decoded) / rms(reference);
        println!(
            "{:<26} {seconds:.4} s (expected {:.2} s, {:+.2}%), correlation {corr:.4} at lag {lag}, rms ratio {ratio:.3}",
            case.file,
            case.dur_s,
            100.0 * (seconds - case.dur_s) / case.dur_s
        );
        assert!(
            rel <= 0.02,
            "{}: duration {seconds} s vs {} s",
            case.file,
            case.dur_s
        );
        assert!(
            corr >= case.min_correlation,
            "{}: correlation {corr} < {}",
            case.file,
            case.min_correlation
        );
        assert!(
            (case.rms_ratio.0..=case.rms_ratio.1).contains(&ratio),
            "{}: rms ratio {ratio}",
            case.file
        );
    }
}

#[test]
fn decode_bytes_matches_decode_file_and_ignores_a_wrong_hint() {
    for case in CASES {
        let path = fixture(case.file);
        let from_file = audio::decode_file(&path).expect("decode file");
        let bytes = std::fs::read(&path).expect("read fixture");
        let ext = path.extension().and_then(|e| e.to_str());
        let from_bytes = audio::decode_bytes(bytes.clone(), ext).expect("decode bytes");
        assert_eq!(from_file, from_bytes, "{}", case.file);
        let no_hint = audio::decode_bytes(bytes.clone(), None).expect("decode without hint");
        assert_eq!(from_file, no_hint, "{}: no hint", case.file);
        let wrong_hint = audio::decode_bytes(bytes, Some("txt")).expect("decode with wrong hint");
        assert_eq!(from_file, wrong_hint, "{}: wrong hint", case.file);
    }
}

/// A truncated file keeps the part that decoded (how much depends on the
/// codec's framing: Ogg pages here hold about a second each), and that part is
/// the beginning of the full decode; a file cut inside its header is refused.
#[test]
fn truncated_files_keep_the_decoded_part() {
    for case in CASES {
        let bytes = std::fs::read(fixture(case.file)).expect("read fixture");
        let full = audio::decode_bytes(bytes.clone(), None).expect("full decode");

        let cut_at = bytes.len() * 3 / 4;
        let part = audio::decode_bytes(bytes[..cut_at].to_vec(), None)
            .unwrap_or_else(|e| panic!("{}: truncated file: {e}", case.file));
        let share = part.len() as f64 / full.len() as f64;
        let overlap = part.len().min(full.len());
        let (corr, lag) = best_correlation(&part[..overlap], &full[..overlap], 50);
        println!(
            "{:<26} first 75% of the bytes -> {:.0}% of the samples, correlation with the full decode {corr:.4} at lag {lag}",
            case.file,
            100.0 * share
        );
        assert!(
            (0.3..0.95).contains(&share),
            "{}: 75% of the bytes gave {share:.2} of the samples",
            case.file
        );
        assert!(
            corr > 0.99,
            "{}: truncated decode differs from the full one",
            case.file
        );

        let header_only = audio::decode_bytes(bytes[..20].to_vec(), None);
        assert!(
            matches!(
                header_only,
                Err(WhisperError::InvalidAudio { .. }) | Err(WhisperError::EmptyAudio)
            ),
            "{}: 20-byte prefix gave {header_only:?}",
            case.file
        );
    }
}

/// Ogg cut inside its first audio page: no complete page, nothing decodes.
#[test]
fn ogg_cut_before_its_first_audio_page_is_refused() {
    for file in ["jfk_16k_mono_vorbis.ogg", "jfk_opus.opus"] {
        let bytes = std::fs::read(fixture(file)).expect("read fixture");
        let pages: Vec<usize> = (0..bytes.len() - 4)
            .filter(|&i| &bytes[i..i + 4] == b"OggS")
            .collect();
        // Identification header, comment/setup headers, then audio.
        let first_audio_page = pages[2];
        assert_refused(
            file,
            audio::decode_bytes(bytes[..first_audio_page + 100].to_vec(), None),
        );
    }
}

fn assert_refused(name: &str, result: Result<Vec<f32>, WhisperError>) {
    match result {
        Err(err @ (WhisperError::InvalidAudio { .. } | WhisperError::EmptyAudio)) => {
            println!("{name}: {err}");
            assert!(err.to_string().len() < 200, "{name}: long message");
        }
        other => panic!("{name}: expected a refusal, got {other:?}"),
    }
}

/// A deterministic pseudo-random byte stream (xorshift).
fn noise_bytes(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn wav_header(data_len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&16_000u32.to_le_bytes());
    h.extend_from_slice(&32_000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

#[test]
fn bad_input_is_refused_without_panicking() {
    let dir = tempfile::tempdir().expect("tempdir");

    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").expect("write");
    assert_refused("empty file", audio::decode_file(&empty));
    assert_refused("empty bytes", audio::decode_bytes(Vec::new(), Some("wav")));

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "Patient seen today. Plan: follow up in two weeks.\n".repeat(40),
    )
    .expect("write");
    assert_refused("text file", audio::decode_file(&text));
    let text_as_wav = dir.path().join("notes.wav");
    std::fs::copy(&text, &text_as_wav).expect("copy");
    assert_refused("text file named .wav", audio::decode_file(&text_as_wav));

    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend(noise_bytes(2_000, 7));
    assert_refused("png", audio::decode_bytes(png, Some("png")));

    // A WAV header cut short, with and without the RIFF/WAVE magic intact.
    let header = wav_header(32_000);
    assert_refused(
        "wav header cut at 12",
        audio::decode_bytes(header[..12].to_vec(), Some("wav")),
    );
    assert_refused(
        "wav header cut at 30",
        audio::decode_bytes(header[..30].to_vec(), Some("wav")),
    );
    assert_refused(
        "wav header, no data",
        audio::decode_bytes(header.clone(), Some("wav")),
    );

    // RIFF/WAVE magic followed by garbage instead of chunks.
    let mut garbage = b"RIFF\x00\x10\x00\x00WAVE".to_vec();
    garbage.extend(noise_bytes(4_096, 11));
    assert_refused(
        "wav magic + garbage",
        audio::decode_bytes(garbage, Some("wav")),
    );

    // A valid fmt chunk with a zero-length data chunk: audio with no samples.
    assert_refused(
        "wav with empty data",
        audio::decode_bytes(wav_header(0), Some("wav")),
    );

    for seed in [1u64, 2, 3, 42, 1234] {
        let path = dir.path().join(format!("noise_{seed}.mp3"));
        std::fs::write(&path, noise_bytes(16_384, seed)).expect("write");
        assert_refused(
            &format!("random bytes .mp3 (seed {seed})"),
            audio::decode_file(&path),
        );
    }

    let missing = dir.path().join("missing.wav");
    assert!(matches!(
        audio::decode_file(&missing),
        Err(WhisperError::Io { .. })
    ));
    assert!(matches!(
        audio::decode_file(dir.path()),
        Err(WhisperError::Io { .. }) | Err(WhisperError::InvalidAudio { .. })
    ));
}

/// Every prefix length and a sprinkle of corrupted bytes: never a panic.
#[test]
fn corrupted_fixtures_never_panic() {
    for case in CASES {
        let bytes = std::fs::read(fixture(case.file)).expect("read fixture");
        for cut in [1usize, 4, 44, 100, 300, 1_000, 4_000] {
            let _ = audio::decode_bytes(bytes[..cut.min(bytes.len())].to_vec(), None);
        }
        // A few flipped bytes past the headers: decoders skip the damaged
        // packets (or the whole file is refused), never panic.
        for seed in 1..=4u64 {
            let mut corrupt = bytes.clone();
            let span = corrupt.len() - 1_000;
            for (k, b) in noise_bytes(6, seed).iter().enumerate() {
                let at = 1_000 + (usize::from(*b) * 997 + k * 7_919) % span;
                corrupt[at] ^= 0x5a;
            }
            match audio::decode_bytes(corrupt, None) {
                Ok(samples) => {
                    assert!(samples.iter().all(|s| (-1.0..=1.0).contains(s)));
                    println!(
                        "{} corrupted (seed {seed}): {:.2} s decoded",
                        case.file,
                        samples.len() as f64 / f64::from(SAMPLE_RATE)
                    );
                }
                Err(err) => println!("{} corrupted (seed {seed}): {err}", case.file),
            }
        }
    }
}
