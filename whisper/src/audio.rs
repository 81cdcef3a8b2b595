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
use rubato::{Fft, FixedSync, Indexing, Resampler};
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

/// Receives the decoded signal block by block (16 kHz mono, sanitised), in order.
/// An error from it stops decoding and is returned as is.
pub type SampleSink<'a> = dyn FnMut(&[f32]) -> Result<(), WhisperError> + 'a;

/// Decodes an audio file to 16 kHz mono samples in `[-1, 1]`.
///
/// The file extension, if any, is passed to the container probe as a hint;
/// detection itself is by content.
pub fn decode_file(path: &Path) -> Result<Vec<f32>, WhisperError> {
    let mut samples = Vec::new();
    stream_file(path, None, &mut |block| {
        samples.extend_from_slice(block);
        Ok(())
    })?;
    Ok(samples)
}

/// Decodes in-memory audio bytes to 16 kHz mono samples in `[-1, 1]`.
///
/// `extension_hint` (e.g. `"mp3"`, without the dot) helps the container probe;
/// detection itself is by content.
pub fn decode_bytes(
    bytes: Vec<u8>,
    extension_hint: Option<&str>,
) -> Result<Vec<f32>, WhisperError> {
    let mut samples = Vec::new();
    stream_bytes(bytes, extension_hint, None, &mut |block| {
        samples.extend_from_slice(block);
        Ok(())
    })?;
    Ok(samples)
}

/// Decodes an audio file as a stream: packets are decoded, mixed to mono and
/// resampled one after another, and the 16 kHz signal is handed to `sink` in
/// blocks, so memory does not grow with the recording's length. Returns the
/// number of samples handed over.
///
/// With `max_seconds`, a recording whose container declares a longer duration
/// is refused before any packet is decoded, and one that runs longer while
/// decoding is refused as soon as it passes the limit
/// ([`WhisperError::TooLong`]); the rest of the file is never read.
pub fn stream_file(
    path: &Path,
    max_seconds: Option<u32>,
    sink: &mut SampleSink<'_>,
) -> Result<u64, WhisperError> {
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
    decode_source(Box::new(file), extension, max_seconds, sink)
}

/// [`stream_file`] for a file that may be sealed at rest
/// (`mmt_core::crypt::stream`, as the upload spool writes them with
/// `MMT_ENCRYPTION_KEYS`): a sealed file is opened with `sealer` segment by
/// segment as it decodes, never written out in clear; a file in clear is
/// read as it is. A sealed file that does not open (no keyring, a retired
/// or unknown key, altered or truncated) is [`WhisperError::InvalidAudio`]
/// with the reason (key ids only).
pub fn stream_maybe_sealed_file(
    path: &Path,
    sealer: Option<&mmt_core::crypt::Sealer>,
    context: &[u8],
    max_seconds: Option<u32>,
    sink: &mut SampleSink<'_>,
) -> Result<u64, WhisperError> {
    use mmt_core::crypt::stream::{is_sealed, SealedReader};
    use std::io::Read;
    let io_err = |source| WhisperError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut head = Vec::with_capacity(4);
    (&file).take(4).read_to_end(&mut head).map_err(io_err)?;
    if !is_sealed(&head) {
        return stream_file(path, max_seconds, sink);
    }
    let Some(sealer) = sealer else {
        return Err(invalid(format!(
            "the file is encrypted at rest and {} is not set",
            mmt_core::crypt::KEYS_VARIABLE
        )));
    };
    let reader = SealedReader::new(sealer, file, context).map_err(|err| match err {
        mmt_core::crypt::CryptError::Io(source) => io_err(source),
        other => invalid(other.to_string()),
    })?;
    if reader.plain_len() == 0 {
        return Err(invalid("the file is empty (0 bytes)"));
    }
    let extension = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(SealedSource(reader)), extension, max_seconds, sink)
}

/// A sealed file as symphonia reads it: seekable, of its plaintext's length.
struct SealedSource(mmt_core::crypt::stream::SealedReader<File>);

impl std::io::Read for SealedSource {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(out)
    }
}

impl std::io::Seek for SealedSource {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

impl MediaSource for SealedSource {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.0.plain_len())
    }
}

/// [`stream_file`] for in-memory audio bytes.
pub fn stream_bytes(
    bytes: Vec<u8>,
    extension_hint: Option<&str>,
    max_seconds: Option<u32>,
    sink: &mut SampleSink<'_>,
) -> Result<u64, WhisperError> {
    if bytes.is_empty() {
        return Err(invalid("the input is empty (0 bytes)"));
    }
    decode_source(
        Box::new(Cursor::new(bytes)),
        extension_hint,
        max_seconds,
        sink,
    )
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
    max_seconds: Option<u32>,
    sink: &mut SampleSink<'_>,
) -> Result<u64, WhisperError> {
    let mut output = Output {
        sink,
        block: Vec::new(),
        samples: 0,
    };
    let guarded = catch_unwind(AssertUnwindSafe(|| {
        decode_unguarded(source, extension, max_seconds, &mut output)
    }));
    match guarded {
        Ok(Ok(())) if output.samples == 0 => Err(WhisperError::EmptyAudio),
        Ok(Ok(())) => Ok(output.samples),
        Ok(Err(err)) => Err(err),
        Err(_) => {
            tracing::error!("audio decoder panicked; input treated as corrupt");
            Err(invalid("the audio decoder failed on corrupt input"))
        }
    }
}

/// The end of the chain: sanitises each block and hands it to the sink.
struct Output<'s, 'a> {
    sink: &'s mut SampleSink<'a>,
    /// Scratch space for the sanitised copy of a block.
    block: Vec<f32>,
    samples: u64,
}

impl Output<'_, '_> {
    fn emit(&mut self, samples: &[f32]) -> Result<(), WhisperError> {
        if samples.is_empty() {
            return Ok(());
        }
        self.block.clear();
        self.block.extend_from_slice(samples);
        sanitize(&mut self.block);
        self.samples += samples.len() as u64;
        (self.sink)(&self.block)
    }
}

/// How much audio has been decoded, against the limit.
#[derive(Debug)]
struct LengthLimit {
    max_seconds: Option<u32>,
    /// Seconds decoded in the runs before the current one.
    previous_runs: f64,
}

impl LengthLimit {
    /// Refuses a container that declares more than the limit.
    fn check_declared(&self, frames: Option<u64>, rate: Option<u32>) -> Result<(), WhisperError> {
        if let (Some(limit), Some(frames), Some(rate)) = (self.max_seconds, frames, rate) {
            if rate > 0 && frames / u64::from(rate) > u64::from(limit) {
                return Err(WhisperError::TooLong {
                    limit_seconds: limit,
                    declared_seconds: Some(frames / u64::from(rate)),
                });
            }
        }
        Ok(())
    }

    /// Refuses once the decoded audio (the finished runs plus `frames` at
    /// `rate` in the current one) passes the limit.
    fn check_decoded(&self, frames: u64, rate: u32) -> Result<(), WhisperError> {
        let Some(limit) = self.max_seconds else {
            return Ok(());
        };
        if self.previous_runs + frames as f64 / f64::from(rate.max(1)) > f64::from(limit) {
            return Err(WhisperError::TooLong {
                limit_seconds: limit,
                declared_seconds: None,
            });
        }
        Ok(())
    }
}

/// The resampler of the run of packets at one input rate, and how much it took.
struct Run {
    rate: u32,
    frames: u64,
    resampler: StreamResampler,
}

fn decode_unguarded(
    source: Box<dyn MediaSource>,
    extension: Option<&str>,
    max_seconds: Option<u32>,
    output: &mut Output<'_, '_>,
) -> Result<(), WhisperError> {
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
    let declared_frames = track.num_frames;
    let declared_empty = declared_frames == Some(0);
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| invalid("the file has no audio track"))?
        .clone();
    let mut duration = LengthLimit {
        max_seconds,
        previous_runs: 0.0,
    };
    duration.check_declared(declared_frames, params.sample_rate)?;
    let mut decoder = CODECS
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| invalid(format!("unsupported audio codec: {e}")))?;

    let mut run: Option<Run> = None;
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
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
                if run.as_ref().is_none_or(|run| run.rate != rate) {
                    // The rate changed: the finished run is resampled on its own.
                    if let Some(done) = run.take() {
                        duration.previous_runs += done.frames as f64 / f64::from(done.rate);
                        done.resampler.finish(output)?;
                    }
                    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
                        return Err(invalid(format!("implausible sample rate {rate} Hz")));
                    }
                    run = Some(Run {
                        rate,
                        frames: 0,
                        resampler: StreamResampler::new(rate, SAMPLE_RATE)?,
                    });
                }
                if let Some(run) = run.as_mut() {
                    mono.clear();
                    downmix_append(&planes, &mut mono);
                    // NaN, infinite or huge float samples make the FFT
                    // resampler's spectrum non-finite, and rubato then
                    // panics (found by tests/fuzz.rs): the input is
                    // sanitised as the output is.
                    sanitize(&mut mono);
                    run.frames += mono.len() as u64;
                    duration.check_decoded(run.frames, run.rate)?;
                    run.resampler.push(&mono, output)?;
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
    if let Some(done) = run {
        done.resampler.finish(output)?;
    }
    Ok(())
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

fn resample_error(from_rate: u32, to_rate: u32, e: &dyn std::fmt::Display) -> WhisperError {
    invalid(format!(
        "cannot resample from {from_rate} Hz to {to_rate} Hz: {e}"
    ))
}

/// Resamples mono `samples` from `from_rate` to `to_rate` (a copy when equal).
///
/// Uses rubato's synchronous FFT resampler, with its start-up delay trimmed so
/// output sample `i` lines up with input time `i / to_rate`. The whole-buffer
/// reference that [`StreamResampler`] must equal.
#[cfg(test)]
pub(crate) fn resample(
    samples: &[f32],
    from_rate: u32,
    to_rate: u32,
) -> Result<Vec<f32>, WhisperError> {
    if from_rate == to_rate || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let resample_err = |e: &dyn std::fmt::Display| resample_error(from_rate, to_rate, e);
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

/// rubato's FFT resampler fed block by block: the same output as resampling
/// the whole signal at once (`process_all`), holding only one chunk of input.
///
/// A full chunk is resampled only once input past it has arrived, so that the
/// last chunk, full or not, goes through `process_all`'s partial-chunk path.
/// The resampler's start-up delay is dropped from the front, and the output is
/// cut to `ceil(ratio × input)` samples at the end, as `process_all` does.
struct StreamResampler {
    /// `None` when the rates are equal: samples pass through.
    fft: Option<Fft<f32>>,
    from_rate: u32,
    to_rate: u32,
    chunk: usize,
    pending: Vec<f32>,
    out: Vec<f32>,
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl StreamResampler {
    fn new(from_rate: u32, to_rate: u32) -> Result<Self, WhisperError> {
        let fft = if from_rate == to_rate {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    from_rate as usize,
                    to_rate as usize,
                    RESAMPLE_CHUNK,
                    1,
                    FixedSync::Input,
                )
                .map_err(|e| resample_error(from_rate, to_rate, &e))?,
            )
        };
        let (chunk, out_len, delay) = fft.as_ref().map_or((0, 0, 0), |fft| {
            (
                fft.input_frames_next(),
                fft.output_frames_max(),
                fft.output_delay(),
            )
        });
        Ok(Self {
            fft,
            from_rate,
            to_rate,
            chunk,
            pending: Vec::with_capacity(2 * chunk),
            out: vec![0.0; out_len],
            delay_left: delay,
            frames_in: 0,
            frames_out: 0,
        })
    }

    fn push(&mut self, samples: &[f32], output: &mut Output<'_, '_>) -> Result<(), WhisperError> {
        self.frames_in += samples.len() as u64;
        if self.fft.is_none() {
            return output.emit(samples);
        }
        self.pending.extend_from_slice(samples);
        let mut start = 0;
        while self.pending.len() - start > self.chunk {
            self.process(start, None, output)?;
            start += self.chunk;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Resamples what is left, then pumps zeros until the output is complete.
    fn finish(mut self, output: &mut Output<'_, '_>) -> Result<(), WhisperError> {
        if self.fft.is_none() || self.frames_in == 0 {
            return Ok(());
        }
        let ratio = f64::from(self.to_rate) / f64::from(self.from_rate);
        let expected = (ratio * self.frames_in as f64).ceil() as u64;
        if !self.pending.is_empty() {
            let partial = self.pending.len();
            self.process_capped(0, Some(partial), expected, output)?;
        }
        self.pending.clear();
        while self.frames_out < expected {
            self.process_capped(0, Some(0), expected, output)?;
        }
        Ok(())
    }

    fn process(
        &mut self,
        start: usize,
        partial: Option<usize>,
        output: &mut Output<'_, '_>,
    ) -> Result<(), WhisperError> {
        self.process_capped(start, partial, u64::MAX, output)
    }

    /// Resamples one chunk of `pending` from `start` (`partial`: only that many
    /// frames, zero-padded) and emits its output past the delay, up to `cap`
    /// samples in all.
    fn process_capped(
        &mut self,
        start: usize,
        partial: Option<usize>,
        cap: u64,
        output: &mut Output<'_, '_>,
    ) -> Result<(), WhisperError> {
        let (from_rate, to_rate) = (self.from_rate, self.to_rate);
        let err = |e: &dyn std::fmt::Display| resample_error(from_rate, to_rate, e);
        let Some(fft) = self.fft.as_mut() else {
            return Ok(());
        };
        let input = &self.pending[start..];
        let input = InterleavedSlice::new(input, 1, input.len()).map_err(|e| err(&e))?;
        let out_frames = self.out.len();
        let mut out =
            InterleavedSlice::new_mut(&mut self.out, 1, out_frames).map_err(|e| err(&e))?;
        let indexing = Indexing {
            input_offset: 0,
            output_offset: 0,
            active_channels_mask: None,
            partial_len: partial,
        };
        let (_, produced) = fft
            .process_into_buffer(&input, &mut out, Some(&indexing))
            .map_err(|e| err(&e))?;
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        let room = usize::try_from(cap.saturating_sub(self.frames_out)).unwrap_or(usize::MAX);
        let keep = (produced - skip).min(room);
        self.frames_out += keep as u64;
        output.emit(&self.out[skip..skip + keep])
    }
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

    /// Resamples `x` through [`StreamResampler`], fed in blocks of the given sizes (cycled).
    fn stream_resample(x: &[f32], from: u32, blocks: &[usize]) -> Vec<f32> {
        let mut got = Vec::new();
        let mut sink = |block: &[f32]| {
            got.extend_from_slice(block);
            Ok(())
        };
        let mut output = Output {
            sink: &mut sink,
            block: Vec::new(),
            samples: 0,
        };
        let mut resampler = StreamResampler::new(from, SAMPLE_RATE).expect("resampler");
        let mut rest = x;
        for &size in blocks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (block, tail) = rest.split_at(size.min(rest.len()));
            resampler.push(block, &mut output).expect("push");
            rest = tail;
        }
        resampler.finish(&mut output).expect("finish");
        got
    }

    #[test]
    fn streaming_resampler_equals_the_whole_buffer_resampler() {
        for from in [8_000u32, 11_025, 16_000, 22_050, 44_100, 48_000] {
            let chunk = StreamResampler::new(from, SAMPLE_RATE)
                .expect("resampler")
                .chunk;
            for len in [
                1,
                100,
                chunk.max(2) - 1,
                chunk,
                chunk + 1,
                3 * chunk,
                20_011,
            ] {
                let x = sine(440.0, from, len as f32 / from as f32 + 1e-6);
                let x = &x[..len.min(x.len())];
                let mut whole = resample(x, from, SAMPLE_RATE).expect("resample");
                sanitize(&mut whole);
                for blocks in [&[len.max(1)][..], &[1, 7, 333, 4_096], &[chunk.max(1)]] {
                    let streamed = stream_resample(x, from, blocks);
                    assert_eq!(
                        streamed,
                        whole,
                        "{from} Hz, {} samples, blocks {blocks:?}",
                        x.len()
                    );
                }
            }
        }
    }

    /// The FLAC fixture (2.5 s at 16 kHz), its total-samples field zeroed
    /// or not: a zeroed field means "length unknown", as a live encoder writes.
    fn jfk_flac(declare_length: bool) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jfk_16k_mono.flac");
        let mut bytes = std::fs::read(path).expect("fixture");
        assert_eq!(&bytes[..4], b"fLaC");
        if !declare_length {
            // STREAMINFO starts at byte 8; the 36-bit total is its bytes 13 (low
            // nibble) to 17.
            bytes[8 + 13] &= 0xF0;
            bytes[8 + 14..8 + 18].fill(0);
        }
        bytes
    }

    fn stream_count(bytes: Vec<u8>, max_seconds: Option<u32>) -> Result<u64, WhisperError> {
        let mut handed = 0u64;
        let result = stream_bytes(bytes, Some("flac"), max_seconds, &mut |block| {
            handed += block.len() as u64;
            Ok(())
        });
        if let Ok(total) = &result {
            assert_eq!(*total, handed);
        }
        result
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_decoding() {
        let mut handed = 0usize;
        let result = stream_bytes(jfk_flac(true), Some("flac"), Some(1), &mut |block| {
            handed += block.len();
            Ok(())
        });
        match result {
            Err(WhisperError::TooLong {
                limit_seconds: 1,
                declared_seconds: Some(2),
            }) => {}
            other => panic!("expected TooLong from the header, got {other:?}"),
        }
        assert_eq!(handed, 0, "nothing decoded");
        let message = stream_count(jfk_flac(true), Some(1))
            .expect_err("too long")
            .to_string();
        assert!(message.contains("length of 1 s"), "{message}");
    }

    #[test]
    fn a_stream_running_past_the_limit_stops_there() {
        let mut handed = 0u64;
        let result = stream_bytes(jfk_flac(false), Some("flac"), Some(1), &mut |block| {
            handed += block.len() as u64;
            Ok(())
        });
        assert!(
            matches!(
                result,
                Err(WhisperError::TooLong {
                    limit_seconds: 1,
                    declared_seconds: None
                })
            ),
            "{result:?}"
        );
        assert!(
            handed < 2 * u64::from(SAMPLE_RATE),
            "stopped near the limit, not at the end: {handed}"
        );
        // Within the limit, with or without a declared length, all of it decodes.
        let full = stream_count(jfk_flac(true), Some(60)).expect("decodes");
        assert!(full > 2 * u64::from(SAMPLE_RATE));
        assert_eq!(
            stream_count(jfk_flac(false), Some(60)).expect("decodes"),
            full
        );
        assert_eq!(stream_count(jfk_flac(false), None).expect("decodes"), full);
    }

    #[test]
    fn a_sink_error_stops_decoding() {
        let result = stream_bytes(jfk_flac(true), Some("flac"), None, &mut |_| {
            Err(WhisperError::Inference {
                reason: "sink full".into(),
            })
        });
        assert!(matches!(result, Err(WhisperError::Inference { .. })));
    }

    #[test]
    fn sanitize_clamps_and_drops_nan() {
        let mut x = vec![1.5, -2.0, f32::NAN, 0.25, f32::INFINITY];
        sanitize(&mut x);
        assert_eq!(x, vec![1.0, -1.0, 0.0, 0.25, 1.0]);
    }

    /// A float WAV full of NaN, infinities and huge values at a rate that
    /// is resampled: decodes (to silence and full scale), never panics
    /// inside the resampler (a fuzz finding; the decoder's panic guard hid
    /// it as "the audio decoder failed on corrupt input").
    #[test]
    fn non_finite_float_samples_are_resampled_without_panic() {
        let values = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0e38,
            -3.0e38,
            0.5,
        ];
        let data: Vec<u8> = (0..44_100)
            .flat_map(|i| values[i % values.len()].to_le_bytes())
            .collect();
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&3u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&44_100u32.to_le_bytes());
        wav.extend_from_slice(&(44_100u32 * 4).to_le_bytes());
        wav.extend_from_slice(&4u16.to_le_bytes());
        wav.extend_from_slice(&32u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
        wav.extend_from_slice(&data);
        let samples = decode_bytes(wav, Some("wav")).expect("decodes");
        assert!(!samples.is_empty());
        assert!(samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
    }

    #[test]
    fn empty_bytes_are_invalid() {
        assert!(matches!(
            decode_bytes(Vec::new(), Some("wav")),
            Err(WhisperError::InvalidAudio { .. })
        ));
    }
}
