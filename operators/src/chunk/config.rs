//! Settings of voice-activity detection and chunk planning.

use mmt_core::ErrorClass;
use serde::{Deserialize, Serialize};

/// Whisper's window: no chunk may be longer, whatever the configuration says.
pub const WHISPER_WINDOW_MS: u32 = 30_000;

/// How recordings are cut into Whisper chunks. All durations are in milliseconds,
/// all levels in dBFS (0 dB = a full-scale square wave, i.e. mean square 1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkConfig {
    /// Longest chunk sent to the model; at most 30 000 (Whisper's window).
    pub max_chunk_ms: u32,
    /// Length of the analysis frames whose energy is measured.
    pub frame_ms: u32,
    /// A burst of speech shorter than this (after bridging short pauses) is
    /// dropped as a click or a breath.
    pub min_speech_ms: u32,
    /// Pauses shorter than this are bridged: they belong to the speech around them.
    pub min_silence_ms: u32,
    /// Audio kept either side of every speech region, so that soft onsets and
    /// word endings reach the model.
    pub speech_pad_ms: u32,
    /// A pause longer than this ends a chunk even when the next speech would fit,
    /// so that long silences are not sent to the model (Whisper invents text on them).
    pub max_gap_in_chunk_ms: u32,
    /// When one stretch of speech runs past `max_chunk_ms`, it is cut at the
    /// quietest frame within this much time before the limit.
    pub split_search_ms: u32,
    /// Frames quieter than this are never speech, however clean the recording.
    pub absolute_floor_dbfs: f32,
    /// Percentile (0–50) of the frame energies taken as the recording's noise floor.
    pub noise_percentile: f32,
    /// A noise-floor estimate above this, in a recording that varies by at least
    /// `min_modulation_db`, is speech without pauses (its quietest frames are
    /// syllables), not noise; this level is used in its place.
    pub max_noise_floor_dbfs: f32,
    /// How far above the noise floor a frame must rise to start speech.
    pub noise_margin_db: f32,
    /// How far the loud frames (99th percentile) must rise above the noise-floor
    /// estimate for `max_noise_floor_dbfs` to apply; a loud recording that varies
    /// less is steady noise (hiss, hum, a fan), whose own level stays the floor.
    pub min_modulation_db: f32,
    /// Once speech has started, it continues while frames stay within this many
    /// dB below the start threshold; must be less than `noise_margin_db`.
    pub hysteresis_db: f32,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            max_chunk_ms: WHISPER_WINDOW_MS,
            frame_ms: 30,
            min_speech_ms: 250,
            min_silence_ms: 300,
            speech_pad_ms: 200,
            max_gap_in_chunk_ms: 3_000,
            split_search_ms: 5_000,
            absolute_floor_dbfs: -50.0,
            noise_percentile: 10.0,
            max_noise_floor_dbfs: -40.0,
            noise_margin_db: 12.0,
            min_modulation_db: 6.0,
            hysteresis_db: 6.0,
        }
    }
}

/// A chunk configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid chunk config: {field} {problem}")]
pub struct ChunkConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ChunkConfigError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }

    /// A bad configuration is the operator's input, and retrying cannot fix it.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::UserInput
    }
}

impl ChunkConfig {
    /// Checks the settings against each other; touches nothing outside.
    pub fn validate(&self) -> Result<(), ChunkConfigError> {
        if self.max_chunk_ms == 0 || self.max_chunk_ms > WHISPER_WINDOW_MS {
            return Err(ChunkConfigError::new(
                "max_chunk_ms",
                format!("must be in 1..={WHISPER_WINDOW_MS} (Whisper's window)"),
            ));
        }
        if self.frame_ms == 0 || self.frame_ms > 100 {
            return Err(ChunkConfigError::new("frame_ms", "must be in 1..=100"));
        }
        if self.split_search_ms < self.frame_ms || self.split_search_ms > self.max_chunk_ms / 2 {
            return Err(ChunkConfigError::new(
                "split_search_ms",
                "must be at least frame_ms and at most half of max_chunk_ms",
            ));
        }
        if self.max_gap_in_chunk_ms < self.min_silence_ms {
            return Err(ChunkConfigError::new(
                "max_gap_in_chunk_ms",
                "must be at least min_silence_ms",
            ));
        }
        if 2 * u64::from(self.speech_pad_ms) + u64::from(self.min_speech_ms)
            >= u64::from(self.max_chunk_ms)
        {
            return Err(ChunkConfigError::new(
                "speech_pad_ms",
                "twice the padding plus min_speech_ms must be shorter than max_chunk_ms",
            ));
        }
        if !(-120.0..=0.0).contains(&self.absolute_floor_dbfs) {
            return Err(ChunkConfigError::new(
                "absolute_floor_dbfs",
                "must be in -120..=0",
            ));
        }
        if !(-120.0..=0.0).contains(&self.max_noise_floor_dbfs) {
            return Err(ChunkConfigError::new(
                "max_noise_floor_dbfs",
                "must be in -120..=0",
            ));
        }
        if !(0.0..=60.0).contains(&self.min_modulation_db) {
            return Err(ChunkConfigError::new(
                "min_modulation_db",
                "must be in 0..=60",
            ));
        }
        if !(0.0..=50.0).contains(&self.noise_percentile) {
            return Err(ChunkConfigError::new(
                "noise_percentile",
                "must be in 0..=50",
            ));
        }
        if !(self.noise_margin_db > 0.0 && self.noise_margin_db <= 60.0) {
            return Err(ChunkConfigError::new(
                "noise_margin_db",
                "must be in (0, 60]",
            ));
        }
        if !(self.hysteresis_db >= 0.0 && self.hysteresis_db < self.noise_margin_db) {
            return Err(ChunkConfigError::new(
                "hysteresis_db",
                "must be at least 0 and less than noise_margin_db",
            ));
        }
        Ok(())
    }
}
