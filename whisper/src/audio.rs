//! Audio decoding: any supported file to 16 kHz mono `f32` samples in `[-1, 1]`.
//!
//! Containers and codecs: WAV (integer and float PCM), FLAC, MP3, Ogg/Vorbis
//! (all via symphonia) and Ogg/Opus (symphonia's Ogg demuxer with the libopus
//! adapter). Channels are averaged to mono, then the signal is resampled to
//! [`SAMPLE_RATE`] with rubato's FFT resampler (skipped when already 16 kHz).
//!
//! Bad input never panics: unreadable files are [`WhisperError::Io`], bytes that
//! are not audio (or are corrupt beyond use) are [`WhisperError::InvalidAudio`],
//! and audio that decodes to no samples is [`WhisperError::EmptyAudio`].
//! A packet that fails to decode mid-stream is skipped, as symphonia advises;
//! a stream that ends early (truncated file) keeps what decoded before the
//! break, with a warning, provided something decoded at all.

use crate::WhisperError;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use std::fs::File;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::LazyLock;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia_adapter_libopus::OpusDecoder;

/// The sample rate Whisper works at, in Hz.
pub const SAMPLE_RATE: u32 = 16_000;

/// Input sample rates outside this range are refused as not plausible audio.
const MIN_INPUT_RATE: u32 = 1_000;
const MAX_INPUT_RATE: u32 = 768_000;

/// Consecutive damaged container units tolerated before giving up on the rest.
const MAX_DEMUX_ERRORS_IN_A_ROW: usize = 16;

/// Frames per resampler chunk (input side).
const RESAMPLE_CHUNK: usize = 1024;

/// Symphonia's enabled codecs plus the libopus adapter for Opus.
static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
    let mut registry = CodecRegistry::new();
    symphonia::default::register_enabled_codecs(&mut registry);
    registry.register_audio_decoder::<OpusDecoder>();
    registry
});

/// Decodes an audio file to 16 kHz mono samples in `[-1, 1]`.
///
/// The file extension, if any, is passed to the container probe as a hint;
/// detection itself is by content.
pub fn decode_file(path: &Path) -> Result<Vec<f32>, WhisperError> {
    let io_err = |source| WhisperError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Err(invalid("the file is empty (0 bytes)"));
    }
    let extension = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), extension)
}

/// Decodes in-memory audio bytes to 16 kHz mono samples in `[-1, 1]`.
///
/// `extension_hint` (e.g. `"mp3"`, without the dot) helps the container probe;
/// detection itself is by content.
pub fn decode_bytes(
    bytes: Vec<u8>,
    extension_hint: Option<&str>,
) -> Result<Vec<f32>, WhisperError> {
    if bytes.is_empty() {
        return Err(invalid("the input is empty (0 bytes)"));
    }
    decode_source(Box::new(Cursor::new(bytes)), extension_hint)
}

fn invalid(reason: impl Into<String>) -> WhisperError {
    WhisperError::InvalidAudio {
        reason: reason.into(),
    }
}

/// Runs the decoder behind a panic guard: a decoder bug on hostile input must
/// become an error for this one file, not take the process down.
fn decode_source(
    source: Box<dyn MediaSource>,
    extension: Option<&str>,
) -> Result<Vec<f32>, WhisperError> {
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(source, extension))) {
        Ok(result) => result,
        Err(_) => {
            tracing::error!("audio decoder panicked; input treated as corrupt");
            Err(invalid("the audio decoder failed on corrupt input"))
        }
    }
}

/// Mono samples accumulated at one input sample rate.
#[derive(Debug)]
struct Run {
    rate: u32,
    samples: Vec<f32>,
}

fn decode_unguarded(
    source: Box<dyn MediaSource>,
    extension: Option<&str>,
) -> Result<Vec<f32>, WhisperError> {
    let mss = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymphoniaError::IoError(_) | SymphoniaError::Unsupported(_) => {
                invalid("not a recognised audio container")
            }
            other => invalid(format!("unreadable container: {other}")),
        })?;

    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| invalid("the file has no audio track"))?;
    let track_id = track.id;
    let declared_empty = track.num_frames == Some(0);
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| invalid("the file has no audio track"))?
        .clone();
    let mut decoder = CODECS
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| invalid(format!("unsupported audio codec: {e}")))?;

    let mut runs: Vec<Run> = Vec::new();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut skipped_packets = 0usize;
    let mut decoded_packets = 0usize;
    let mut last_error: Option<String> = None;
    let mut demux_errors_in_a_row = 0usize;

    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => {
                demux_errors_in_a_row = 0;
                packet
            }
            Ok(None) => break,
            Err(SymphoniaError::DecodeError(msg))
                if demux_errors_in_a_row < MAX_DEMUX_ERRORS_IN_A_ROW =>
            {
                // A damaged container unit; readers resynchronise on the next.
                demux_errors_in_a_row += 1;
                last_error = Some(format!("malformed stream: {msg}"));
                tracing::debug!(error = msg, "skipping damaged container data");
                continue;
            }
            Err(SymphoniaError::ResetRequired) => {
                // A chained stream with a new track list; Whisper wants one
                // continuous signal, so stop at the first stream.
                tracing::warn!("audio stream changed mid-file; keeping the first stream only");
                break;
            }
            Err(err) => {
                // Truncated or corrupt container: keep what decoded so far.
                let err = err.to_string();
                if decoded_packets > 0 {
                    tracing::warn!(
                        error = %err,
                        "audio stream ended early (truncated or corrupt); keeping the decoded part"
                    );
                }
                last_error = Some(err);
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                decoded_packets += 1;
                let rate = buf.spec().rate();
                if buf.frames() == 0 {
                    continue;
                }
                buf.copy_to_vecs_planar::<f32>(&mut planes);
                if runs.last().is_none_or(|run| run.rate != rate) {
                    runs.push(Run {
                        rate,
                        samples: Vec::new(),
                    });
                }
                if let Some(run) = runs.last_mut() {
                    downmix_append(&planes, &mut run.samples);
                }
            }
            Err(SymphoniaError::DecodeError(msg)) => {
                skipped_packets += 1;
                last_error = Some(format!("malformed stream: {msg}"));
                tracing::debug!(error = msg, "skipping undecodable audio packet");
            }
            Err(SymphoniaError::IoError(err)) => {
                skipped_packets += 1;
                last_error = Some(err.to_string());
                tracing::debug!(error = %err, "skipping undecodable audio packet");
            }
            Err(err) => {
                // Unrecoverable decoder error; keep what decoded before it.
                let err = err.to_string();
                if decoded_packets > 0 {
                    tracing::warn!(error = %err, "audio decoder stopped; keeping the decoded part");
                }
                last_error = Some(err);
                break;
            }
        }
    }

    if skipped_packets > 0 {
        tracing::warn!(
            skipped_packets,
            decoded_packets,
            "skipped undecodable audio packets"
        );
    }
    if decoded_packets == 0 {
        return Err(match last_error {
            Some(err) => invalid(format!("no audio packet could be decoded ({err})")),
            None if declared_empty => WhisperError::EmptyAudio,
            None => invalid("no decodable audio data found"),
        });
    }

    let mut out: Vec<f32> = Vec::new();
    for run in runs {
        if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&run.rate) {
            return Err(invalid(format!("implausible sample rate {} Hz", run.rate)));
        }
        let resampled = resample(&run.samples, run.rate, SAMPLE_RATE)?;
        out.extend_from_slice(&resampled);
    }
    if out.is_empty() {
        return Err(WhisperError::EmptyAudio);
    }
    sanitize(&mut out);
    Ok(out)
}

/// Appends the per-frame average of `planes` to `out`.
fn downmix_append(planes: &[Vec<f32>], out: &mut Vec<f32>) {
    match planes {
        [] => {}
        [mono] => out.extend_from_slice(mono),
        [first, rest @ ..] => {
            let start = out.len();
            out.extend_from_slice(first);
            let frames = &mut out[start..];
            for plane in rest {
                for (acc, &s) in frames.iter_mut().zip(plane) {
                    *acc += s;
                }
            }
            let scale = 1.0 / planes.len() as f32;
            for acc in frames.iter_mut() {
                *acc *= scale;
            }
        }
    }
}

/// Resamples mono `samples` from `from_rate` to `to_rate` (a copy when equal).
///
/// Uses rubato's synchronous FFT resampler, with its start-up delay trimmed so
/// output sample `i` lines up with input time `i / to_rate`.
pub(crate) fn resample(
    samples: &[f32],
    from_rate: u32,
    to_rate: u32,
) -> Result<Vec<f32>, WhisperError> {
    if from_rate == to_rate || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let resample_err = |e: &dyn std::fmt::Display| {
        invalid(format!(
            "cannot resample from {from_rate} Hz to {to_rate} Hz: {e}"
        ))
    };
    let mut resampler = Fft::<f32>::new(
        from_rate as usize,
        to_rate as usize,
        RESAMPLE_CHUNK,
        1,
        FixedSync::Input,
    )
    .map_err(|e| resample_err(&e))?;
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| resample_err(&e))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| resample_err(&e))?;
    Ok(output.take_data())
}

/// Clamps to `[-1, 1]` (float sources and resampling can overshoot slightly)
/// and replaces NaN with silence.
fn sanitize(samples: &mut [f32]) {
    for s in samples {
        *s = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn downmix_averages_channels() {
        let planes = vec![vec![1.0, 0.5, -1.0], vec![0.0, 0.5, 1.0]];
        let mut out = vec![9.0];
        downmix_append(&planes, &mut out);
        assert_eq!(out, vec![9.0, 0.5, 0.5, 0.0]);

        let mono = vec![vec![0.25, -0.25]];
        let mut out = Vec::new();
        downmix_append(&mono, &mut out);
        assert_eq!(out, vec![0.25, -0.25]);
    }

    #[test]
    fn resample_same_rate_is_identity() {
        let x = sine(440.0, 16_000, 0.1);
        assert_eq!(resample(&x, 16_000, 16_000).expect("resample"), x);
        assert!(resample(&[], 44_100, 16_000).expect("resample").is_empty());
    }

    #[test]
    fn resample_keeps_duration_and_frequency() {
        // rubato's FFT resampler leaves a sub-sample delay (0.18 samples at
        // 44.1 kHz, 0.73 at 11.025 kHz; under 50 µs): fit the best shift within
        // one sample.
        let sine_at =
            |rate: f64, t: f64| (2.0 * std::f64::consts::PI * 440.0 * t / rate).sin() * 0.5;
        for from in [8_000u32, 11_025, 22_050, 44_100, 48_000] {
            let x: Vec<f32> = (0..from)
                .map(|i| sine_at(f64::from(from), f64::from(i)) as f32)
                .collect();
            let y = resample(&x, from, 16_000).expect("resample");
            assert!(
                y.len().abs_diff(16_000) <= 2,
                "{from} Hz: {} samples",
                y.len()
            );
            let best = (-100..=100)
                .map(|k| {
                    let shift = f64::from(k) / 100.0;
                    (500..15_000)
                        .map(|i| (f64::from(y[i]) - sine_at(16_000.0, i as f64 + shift)).abs())
                        .fold(0.0f64, f64::max)
                })
                .fold(f64::MAX, f64::min);
            assert!(best < 1e-3, "{from} Hz: max error {best}");
        }
    }

    #[test]
    fn resample_removes_content_above_nyquist() {
        // 12 kHz at 48 kHz must not fold back into the 16 kHz output.
        let x = sine(12_000.0, 48_000, 0.5);
        let y = resample(&x, 48_000, 16_000).expect("resample");
        let rms = (y[200..7_800].iter().map(|s| s * s).sum::<f32>() / 7_600.0).sqrt();
        assert!(rms < 0.01, "aliased energy rms {rms}");
    }

    #[test]
    fn sanitize_clamps_and_drops_nan() {
        let mut x = vec![1.5, -2.0, f32::NAN, 0.25, f32::INFINITY];
        sanitize(&mut x);
        assert_eq!(x, vec![1.0, -1.0, 0.0, 0.25, 1.0]);
    }

    #[test]
    fn empty_bytes_are_invalid() {
        assert!(matches!(
            decode_bytes(Vec::new(), Some("wav")),
            Err(WhisperError::InvalidAudio { .. })
        ));
    }
}
