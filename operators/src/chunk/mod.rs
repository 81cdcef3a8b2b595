//! Voice-activity detection and chunk planning: which spans of a recording are
//! sent to Whisper.
//!
//! Whisper pads every window to 30 s and invents text on silence, so a
//! recording (16 kHz mono `f32`) is cut into chunks of at most 30 s that hold
//! speech, cut in pauses, with no long silence sent to the model.
//!
//! The algorithm, in order:
//! 1. **Frame energies.** The mean square of every `frame_ms` frame, in dBFS.
//! 2. **Adaptive threshold.** The noise floor is a low percentile
//!    (`noise_percentile`) of the frame energies. Speech starts where a frame
//!    exceeds `max(absolute_floor_dbfs, floor + noise_margin_db)` and continues
//!    while frames stay above that minus `hysteresis_db`, so steady noise (hiss,
//!    hum, a fan), which sits at the floor, is never speech. One exception: a
//!    floor above `max_noise_floor_dbfs` in a recording whose 99th-percentile
//!    frame rises `min_modulation_db` above it is speech without pauses (its
//!    quietest frames are syllables), and the cap is used as the floor instead.
//! 3. **Regions.** Pauses shorter than `min_silence_ms` are bridged, bursts
//!    shorter than `min_speech_ms` dropped (clicks, breaths) unless speech lies
//!    within `max_gap_in_chunk_ms` of them, and each region is padded by `speech_pad_ms` either side; regions that then touch merge.
//! 4. **Packing.** Consecutive regions are packed greedily into one chunk while
//!    the chunk stays within `max_chunk_ms` and no pause inside it exceeds
//!    `max_gap_in_chunk_ms`; chunks are therefore cut only between regions.
//! 5. **Long speech.** A region longer than `max_chunk_ms` is cut at the quietest
//!    frame in the last `split_search_ms` before the limit, not blindly at it.
//!
//! Known limit: energy alone cannot tell loud fluctuating noise (traffic,
//! babble above `max_noise_floor_dbfs`) from speech, so such noise reaches the
//! model; and speech less than `noise_margin_db` above steady noise is missed.

mod config;
mod vad;

#[cfg(test)]
mod tests;

pub use config::{ChunkConfig, ChunkConfigError, WHISPER_WINDOW_MS};

use serde::{Deserialize, Serialize};
use vad::{frame_energy, ms_to_samples, speech_regions};

/// One chunk of a recording: samples `start..end` (half-open), numbered `seq`
/// from 0 in time order within the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkSpan {
    /// Position of the chunk in the recording, from 0.
    pub seq: u32,
    /// First sample of the chunk.
    pub start: usize,
    /// One past the last sample of the chunk.
    pub end: usize,
}

impl ChunkSpan {
    /// Number of samples in the chunk.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// Whether the chunk holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Plans the chunks of `samples` (mono, `sample_rate` Hz) that are sent to the
/// model: each at most `max_chunk_ms` (and never over 30 s), holding speech,
/// in time order and not overlapping. Silent or empty audio gives no chunk.
///
/// Any configuration is handled without panicking; values that
/// [`ChunkConfig::validate`] rejects are clamped to something workable.
pub fn plan_chunks(samples: &[f32], sample_rate: u32, config: &ChunkConfig) -> Vec<ChunkSpan> {
    let mut analyzer = SpeechAnalyzer::new(sample_rate, config);
    analyzer.push(samples);
    analyzer.plan(config)
}

/// The voice-activity analysis of a recording that arrives block by block
/// (as it decodes): [`SpeechAnalyzer::plan`] gives the same chunks as
/// [`plan_chunks`] on the whole recording, without the samples being held.
///
/// Only the frame energies are kept (4 bytes per `frame_ms` frame: 1.9 MB for
/// 4 h at 30 ms), because the speech threshold adapts to the noise floor of
/// the whole recording, which is known only at its end.
#[derive(Debug, Clone)]
pub struct SpeechAnalyzer {
    sample_rate: u32,
    frame_len: usize,
    energies: Vec<f32>,
    /// The frame being filled: its sum of squares and its length so far.
    frame_sum: f64,
    frame_filled: usize,
    total_samples: usize,
}

impl SpeechAnalyzer {
    /// An analysis of nothing yet, with `config`'s frame length.
    pub fn new(sample_rate: u32, config: &ChunkConfig) -> Self {
        Self {
            sample_rate,
            frame_len: ms_to_samples(config.frame_ms, sample_rate).max(1),
            energies: Vec::new(),
            frame_sum: 0.0,
            frame_filled: 0,
            total_samples: 0,
        }
    }

    /// Takes the next samples of the recording.
    pub fn push(&mut self, samples: &[f32]) {
        self.total_samples += samples.len();
        for &sample in samples {
            if sample.is_finite() {
                self.frame_sum += f64::from(sample) * f64::from(sample);
            }
            self.frame_filled += 1;
            if self.frame_filled == self.frame_len {
                self.energies
                    .push(frame_energy(self.frame_sum, self.frame_filled));
                self.frame_sum = 0.0;
                self.frame_filled = 0;
            }
        }
    }

    /// Samples taken so far.
    pub fn total_samples(&self) -> usize {
        self.total_samples
    }

    /// The chunks of the recording taken so far (see [`plan_chunks`]).
    pub fn plan(mut self, config: &ChunkConfig) -> Vec<ChunkSpan> {
        if self.total_samples == 0 || self.sample_rate == 0 {
            return Vec::new();
        }
        if self.frame_filled > 0 {
            // The last frame may be shorter.
            self.energies
                .push(frame_energy(self.frame_sum, self.frame_filled));
        }
        let (sample_rate, frame_len, energies) = (self.sample_rate, self.frame_len, self.energies);
        let regions = speech_regions(
            &energies,
            frame_len,
            self.total_samples,
            sample_rate,
            config,
        );
        pack_regions(regions, &energies, frame_len, sample_rate, config)
    }
}

/// Packs speech regions into numbered chunks (steps 4 and 5 of the module docs).
fn pack_regions(
    regions: Vec<(usize, usize)>,
    energies: &[f32],
    frame_len: usize,
    sample_rate: u32,
    config: &ChunkConfig,
) -> Vec<ChunkSpan> {
    let max_len = ms_to_samples(config.max_chunk_ms.min(WHISPER_WINDOW_MS), sample_rate).max(1);
    let search = ms_to_samples(config.split_search_ms, sample_rate).min(max_len / 2);
    let max_gap = ms_to_samples(config.max_gap_in_chunk_ms, sample_rate);

    let pieces = regions
        .into_iter()
        .flat_map(|region| split_long(region, max_len, search, frame_len, energies));

    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for piece in pieces {
        current = match current {
            Some((start, end))
                if piece.1 - start <= max_len && piece.0.saturating_sub(end) <= max_gap =>
            {
                Some((start, piece.1))
            }
            Some(done) => {
                spans.push(done);
                Some(piece)
            }
            None => Some(piece),
        };
    }
    spans.extend(current);

    spans
        .into_iter()
        .zip(0u32..)
        .map(|((start, end), seq)| ChunkSpan { seq, start, end })
        .collect()
}

/// Cuts a region longer than `max_len` samples into abutting pieces of at most
/// `max_len`, each cut in the middle of the quietest frame lying wholly within
/// `search` samples before the limit (the latest such frame on ties).
fn split_long(
    region: (usize, usize),
    max_len: usize,
    search: usize,
    frame_len: usize,
    energies: &[f32],
) -> Vec<(usize, usize)> {
    let (mut start, end) = region;
    let mut pieces = Vec::new();
    while end - start > max_len {
        let limit = start + max_len;
        let first_frame = (limit - search).div_ceil(frame_len);
        let last_frame = limit / frame_len; // exclusive: frames ending by `limit`
        let quietest = (first_frame..last_frame)
            .filter_map(|f| energies.get(f).map(|&e| (f, e)))
            .reduce(|best, next| if next.1 <= best.1 { next } else { best });
        let cut = match quietest {
            Some((frame, _)) => (frame * frame_len + frame_len / 2).clamp(start + 1, limit),
            None => limit,
        };
        pieces.push((start, cut));
        start = cut;
    }
    pieces.push((start, end));
    pieces
}

/// Total duration of `spans` in seconds at `sample_rate` (0 when the rate is 0).
pub fn speech_seconds(spans: &[ChunkSpan], sample_rate: u32) -> f64 {
    if sample_rate == 0 {
        return 0.0;
    }
    let samples: usize = spans.iter().map(ChunkSpan::len).sum();
    samples as f64 / f64::from(sample_rate)
}
