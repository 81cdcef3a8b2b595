//! Energy-based voice-activity detection with a threshold that adapts to the
//! recording's noise floor.

use super::config::ChunkConfig;

/// Mean-square level of digital silence, to keep `log10` finite.
const SILENCE_MEAN_SQUARE: f64 = 1e-12;

/// The percentile of the frame energies taken as the recording's loud level.
const LOUD_PERCENTILE: f32 = 99.0;

/// Samples in `ms` milliseconds at `sample_rate`.
pub(super) fn ms_to_samples(ms: u32, sample_rate: u32) -> usize {
    let samples = u64::from(ms) * u64::from(sample_rate) / 1000;
    usize::try_from(samples).unwrap_or(usize::MAX)
}

/// The energy, in dBFS, of a frame of `len` samples whose squares sum to `sum`.
pub(super) fn frame_energy(sum: f64, len: usize) -> f32 {
    let mean_square = sum / len.max(1) as f64;
    (10.0 * (mean_square + SILENCE_MEAN_SQUARE).log10()) as f32
}

/// The energy of every frame of `frame_len` samples, in dBFS; the last frame may
/// be shorter. Non-finite samples count as silence. (The whole-buffer form of
/// [`super::SpeechAnalyzer`], which the tests compare it with.)
#[cfg(test)]
pub(super) fn frame_energies(samples: &[f32], frame_len: usize) -> Vec<f32> {
    samples
        .chunks(frame_len.max(1))
        .map(|frame| {
            let sum: f64 = frame
                .iter()
                .filter(|s| s.is_finite())
                .map(|&s| f64::from(s) * f64::from(s))
                .sum();
            frame_energy(sum, frame.len())
        })
        .collect()
}

/// The energy at `percent` (0–100) of the sorted energies (nearest rank below).
fn percentile(sorted: &[f32], percent: f32) -> Option<f32> {
    let last = sorted.len().checked_sub(1)?;
    let fraction = f64::from(percent.clamp(0.0, 100.0)) / 100.0;
    let index = (fraction * last as f64).floor() as usize;
    sorted.get(index.min(last)).copied()
}

/// The level a frame must exceed to start speech: the noise floor plus the
/// margin, never below the absolute floor. The noise floor is a low percentile
/// of the frame energies; when that is above `max_noise_floor_dbfs` and the
/// loud frames (99th percentile) rise at least `min_modulation_db` above it, the
/// quietest frames are speech without pauses, not noise, and the cap is used.
/// A loud steady noise keeps its own level, so it never reaches the threshold.
pub(super) fn start_threshold(energies: &[f32], config: &ChunkConfig) -> f32 {
    let mut sorted = energies.to_vec();
    sorted.sort_by(f32::total_cmp);
    let (Some(quiet), Some(loud)) = (
        percentile(&sorted, config.noise_percentile),
        percentile(&sorted, LOUD_PERCENTILE),
    ) else {
        return config.absolute_floor_dbfs;
    };
    let modulated = loud - quiet >= config.min_modulation_db;
    let noise_floor = if quiet > config.max_noise_floor_dbfs && modulated {
        config.max_noise_floor_dbfs
    } else {
        quiet
    };
    config
        .absolute_floor_dbfs
        .max(noise_floor + config.noise_margin_db)
}

/// Speech regions as half-open sample ranges, in time order, not overlapping:
/// frames are flagged with hysteresis, pauses shorter than `min_silence_ms` are
/// bridged, isolated bursts shorter than `min_speech_ms` dropped, and the rest
/// padded by `speech_pad_ms` either side (regions that then touch are merged).
pub(super) fn speech_regions(
    energies: &[f32],
    frame_len: usize,
    total_samples: usize,
    sample_rate: u32,
    config: &ChunkConfig,
) -> Vec<(usize, usize)> {
    let frame_len = frame_len.max(1);
    let start = start_threshold(energies, config);
    let stay = start - config.hysteresis_db.max(0.0);

    // Runs of speech frames, as sample ranges.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut in_speech = false;
    for (i, &energy) in energies.iter().enumerate() {
        in_speech = if in_speech {
            energy > stay
        } else {
            energy > start
        };
        if in_speech {
            let (frame_start, frame_end) =
                (i * frame_len, ((i + 1) * frame_len).min(total_samples));
            match runs.last_mut() {
                Some(last) if last.1 == frame_start => last.1 = frame_end,
                _ => runs.push((frame_start, frame_end)),
            }
        }
    }

    // Bridge short pauses, then drop short bursts.
    let min_silence = ms_to_samples(config.min_silence_ms, sample_rate);
    let mut bridged: Vec<(usize, usize)> = Vec::with_capacity(runs.len());
    for run in runs {
        match bridged.last_mut() {
            Some(last) if run.0 - last.1 < min_silence => last.1 = run.1,
            _ => bridged.push(run),
        }
    }
    let min_speech = ms_to_samples(config.min_speech_ms, sample_rate);
    let max_gap = ms_to_samples(config.max_gap_in_chunk_ms, sample_rate);
    let bridged = drop_isolated_bursts(bridged, min_speech, max_gap);

    // Pad, and merge what then touches.
    let pad = ms_to_samples(config.speech_pad_ms, sample_rate);
    let mut regions: Vec<(usize, usize)> = Vec::with_capacity(bridged.len());
    for (s, e) in bridged {
        let padded = (
            s.saturating_sub(pad),
            e.saturating_add(pad).min(total_samples),
        );
        match regions.last_mut() {
            Some(last) if padded.0 <= last.1 => last.1 = last.1.max(padded.1),
            _ => regions.push(padded),
        }
    }
    regions
}

/// Drops the runs shorter than `min_speech` samples (clicks, breaths) unless a
/// run of at least that length lies within `max_gap` samples: a short word, or
/// one clipped at the end of a recording, next to speech is kept.
fn drop_isolated_bursts(
    runs: Vec<(usize, usize)>,
    min_speech: usize,
    max_gap: usize,
) -> Vec<(usize, usize)> {
    let is_long = |run: &(usize, usize)| run.1 - run.0 >= min_speech;
    // Start of the nearest long run at or after each run, found back to front.
    let mut next_long_start = vec![None; runs.len()];
    let mut next = None;
    for (i, run) in runs.iter().enumerate().rev() {
        if is_long(run) {
            next = Some(run.0);
        }
        next_long_start[i] = next;
    }
    let mut kept = Vec::with_capacity(runs.len());
    let mut previous_long_end: Option<usize> = None;
    for (run, next_start) in runs.into_iter().zip(next_long_start) {
        let keep = is_long(&run)
            || previous_long_end.is_some_and(|end| run.0 - end <= max_gap)
            || next_start.is_some_and(|start| start - run.1 <= max_gap);
        if is_long(&run) {
            previous_long_end = Some(run.1);
        }
        if keep {
            kept.push(run);
        }
    }
    kept
}
