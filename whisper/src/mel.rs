//! Whisper's log-mel front end, matching faster-whisper's `FeatureExtractor`.
//!
//! 16 kHz samples, `n_fft` 400, hop 160, periodic Hann window, centred STFT
//! with reflect padding, power spectrum, Slaney-normalised mel filter bank
//! (librosa's `filters.mel(sr=16000, n_fft=400, norm="slaney", htk=False)`),
//! `log10` clamped at `1e-10`, floored at (global max − 8), then `(x + 4) / 4`.
//!
//! [`MelFrontEnd::log_mel`] computes the features of a whole recording the way
//! `WhisperModel.transcribe` does (`FeatureExtractor.__call__(audio)` with its
//! default 160 zero samples of end padding, last STFT frame dropped), and
//! [`window`] cuts one 30 s encoder input out of them the way transcribe's
//! seek loop does (`pad_or_trim`).

use ndarray::{Array2, Axis, Slice};
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use std::fmt;
use std::sync::Arc;

/// FFT size (samples per analysis frame).
pub const N_FFT: usize = 400;
/// Hop between frames, in samples (10 ms at 16 kHz).
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30 s encoder input.
pub const N_FRAMES: usize = 3000;
/// Zero samples appended before the STFT (faster-whisper's default `padding`).
const END_PADDING: usize = 160;
/// Number of one-sided FFT bins.
const N_BINS: usize = N_FFT / 2 + 1;

/// Precomputed window, mel filters and FFT plan for one `n_mels`.
///
/// Cheap to share (`&self` methods); build it once per model.
pub struct MelFrontEnd {
    n_mels: usize,
    window: Vec<f32>,
    /// Per mel band: the first FFT bin with a non-zero weight, and the weights
    /// from there on (the bank is sparse: each band spans a few bins).
    filters: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl fmt::Debug for MelFrontEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MelFrontEnd")
            .field("n_mels", &self.n_mels)
            .field("n_fft", &N_FFT)
            .field("hop_length", &HOP_LENGTH)
            .finish_non_exhaustive()
    }
}

impl MelFrontEnd {
    /// Builds the front end for `n_mels` bands (80 for most Whisper models,
    /// 128 for large-v3).
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|k| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let filters = mel_filters(16_000.0, N_FFT, n_mels)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(row.len());
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |i| i + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            window,
            filters,
            fft,
        }
    }

    /// Number of mel bands.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Number of frames [`log_mel`](Self::log_mel) returns for `n_samples`
    /// samples: `n_samples / 160 + 1`.
    pub fn n_frames(n_samples: usize) -> usize {
        (n_samples + END_PADDING) / HOP_LENGTH
    }

    /// Log-mel features `[n_mels, n_frames]` of 16 kHz mono `samples`, equal to
    /// faster-whisper's `FeatureExtractor(feature_size=n_mels)(samples)` (the
    /// call `transcribe` makes: 160 zero samples appended, centred reflect-padded
    /// STFT, last frame dropped). `n_frames` is `samples.len() / 160 + 1`; the
    /// last frame is the one faster-whisper leaves out of `content_frames`.
    pub fn log_mel(&self, samples: &[f32]) -> Array2<f32> {
        let n_frames = Self::n_frames(samples.len());
        let padded = pad_signal(samples);

        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f32; N_BINS];
        // Row-major [n_mels, n_frames].
        let mut out = vec![0.0f32; self.n_mels * n_frames];

        for t in 0..n_frames {
            let frame = &padded[t * HOP_LENGTH..t * HOP_LENGTH + N_FFT];
            for ((dst, &x), &w) in input.iter_mut().zip(frame).zip(&self.window) {
                *dst = x * w;
            }
            // Lengths come from the same plan, so this cannot fail.
            if self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .is_err()
            {
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = power_of(c);
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let bins = &power[*first..*first + weights.len()];
                let energy: f32 = weights.iter().zip(bins).map(|(w, p)| w * p).sum();
                out[m * n_frames + t] = energy;
            }
        }

        let mut max = f32::NEG_INFINITY;
        for v in out.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        let floor = max - 8.0;
        for v in out.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }

        Array2::from_shape_vec((self.n_mels, n_frames), out)
            .unwrap_or_else(|_| Array2::zeros((self.n_mels, n_frames)))
    }
}

fn power_of(c: &Complex<f32>) -> f32 {
    c.re * c.re + c.im * c.im
}

/// The signal as the STFT reads it: `END_PADDING` zeros appended, then
/// `N_FFT / 2` samples of reflect padding on both sides (numpy's `reflect`,
/// which repeats the reflection when the signal is shorter than the pad).
fn pad_signal(samples: &[f32]) -> Vec<f32> {
    let n = samples.len() + END_PADDING;
    let pad = N_FFT / 2;
    let at = |i: usize| samples.get(i).copied().unwrap_or(0.0);
    let mut out = Vec::with_capacity(n + 2 * pad);
    out.extend((0..pad).map(|k| at(reflect_index(k as isize - pad as isize, n))));
    out.extend_from_slice(samples);
    out.resize(pad + n, 0.0);
    out.extend((0..pad).map(|k| at(reflect_index((n + k) as isize, n))));
    out
}

/// Index into a length-`n` signal for position `i` under (repeated) reflection
/// about the first and last samples, as `numpy.pad(mode="reflect")`.
fn reflect_index(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    if j >= n as isize {
        (period - j) as usize
    } else {
        j as usize
    }
}

/// One 30 s encoder input `[n_mels, N_FRAMES]` starting at `start_frame`,
/// built as faster-whisper's seek loop builds a segment:
/// `pad_or_trim(features[:, seek : seek + min(3000, content_frames - seek)])`
/// with `content_frames = features.ncols() - 1` (the last frame of
/// [`MelFrontEnd::log_mel`] is never fed to the encoder); frames past the
/// content are zeros (not silence features), as numpy's `np.pad` gives.
pub fn window(features: &Array2<f32>, start_frame: usize) -> Array2<f32> {
    let content_frames = features.ncols().saturating_sub(1);
    let end = content_frames.min(start_frame.saturating_add(N_FRAMES));
    let mut out = Array2::zeros((features.nrows(), N_FRAMES));
    if start_frame < end {
        out.slice_axis_mut(Axis(1), Slice::from(..end - start_frame))
            .assign(&features.slice_axis(Axis(1), Slice::from(start_frame..end)));
    }
    out
}

/// Slaney mel filter bank `[n_mels][n_fft / 2 + 1]`, computed like librosa's
/// `filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False, norm="slaney")`
/// (and faster-whisper's `get_mel_filters`) in `f64`, then cast to `f32`.
fn mel_filters(sr: f64, n_fft: usize, n_mels: usize) -> Vec<Vec<f32>> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * sr / n_fft as f64).collect();

    let min_mel = hz_to_mel(0.0);
    let max_mel = hz_to_mel(sr / 2.0);
    // numpy.linspace(min_mel, max_mel, n_mels + 2)
    let n_points = n_mels + 2;
    let step = (max_mel - min_mel) / (n_points - 1) as f64;
    let freqs: Vec<f64> = (0..n_points)
        .map(|i| {
            let mel = if i == n_points - 1 {
                max_mel
            } else {
                min_mel + i as f64 * step
            };
            mel_to_hz(mel)
        })
        .collect();

    (0..n_mels)
        .map(|m| {
            let (lo, mid, hi) = (freqs[m], freqs[m + 1], freqs[m + 2]);
            let enorm = 2.0 / (hi - lo);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - lo) / (mid - lo);
                    let upper = (hi - f) / (hi - mid);
                    (0.0f64.max(lower.min(upper)) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

/// Slaney's mel scale (librosa `hz_to_mel(htk=False)`).
fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

/// Inverse of [`hz_to_mel`].
fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_matches_faster_whisper() {
        // faster-whisper: 1 + (n + 160) // 160 STFT frames, minus the last.
        for n in [0usize, 1, 159, 160, 161, 16_000, 480_000, 480_001] {
            let fe = MelFrontEnd::new(80);
            if n <= 16_000 {
                let x = vec![0.1f32; n];
                assert_eq!(fe.log_mel(&x).dim(), (80, n / 160 + 1));
            }
            assert_eq!(MelFrontEnd::n_frames(n), n / 160 + 1);
        }
    }

    #[test]
    fn filters_are_slaney_normalised_triangles() {
        let bank = mel_filters(16_000.0, N_FFT, 80);
        assert_eq!(bank.len(), 80);
        assert!(bank.iter().all(|row| row.len() == N_BINS));
        // Slaney max_mel for 8 kHz, as hard-coded in faster-whisper.
        assert!((hz_to_mel(8_000.0) - 45.245640471924965).abs() < 1e-12);
        assert!((mel_to_hz(hz_to_mel(3_000.0)) - 3_000.0).abs() < 1e-9);
        // Known value from librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)[0, 1].
        assert!((bank[0][1] - 0.024_862_595).abs() < 1e-8, "{}", bank[0][1]);
        for row in &bank {
            assert!(row.iter().any(|&w| w > 0.0));
            assert!(row.iter().all(|&w| w >= 0.0));
        }
        let bank128 = mel_filters(16_000.0, N_FFT, 128);
        assert_eq!(bank128.len(), 128);
    }

    #[test]
    fn reflect_padding_matches_numpy() {
        // np.pad(np.arange(4), (6, 6), mode="reflect")
        let idx: Vec<usize> = (-6..10).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3]);
        assert_eq!(reflect_index(-3, 1), 0);

        let x: Vec<f32> = (0..300).map(|i| i as f32).collect();
        let p = pad_signal(&x);
        assert_eq!(p.len(), 300 + 160 + 400);
        assert_eq!(p[199], 1.0); // x[1]
        assert_eq!(p[0], 200.0); // x[200]
        assert_eq!(p[200], 0.0);
        assert_eq!(p[200 + 299], 299.0);
        assert_eq!(p[200 + 300], 0.0); // end zero padding
        assert_eq!(p[200 + 460], 0.0); // reflection of the zeros
    }

    #[test]
    fn silence_is_constant_and_scaled() {
        let fe = MelFrontEnd::new(80);
        let m = fe.log_mel(&[0.0; 1_600]);
        // log10(1e-10) = -10, (-10 + 4) / 4 = -1.5.
        assert!(m.iter().all(|&v| (v + 1.5).abs() < 1e-6));
    }

    #[test]
    fn sine_peaks_in_the_right_band_and_range_is_clamped() {
        let fe = MelFrontEnd::new(80);
        let x: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1_000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let m = fe.log_mel(&x);
        let col = m.column(50);
        let (argmax, _) =
            col.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        // 1 kHz is mel 15 of 45.25 spread over 80 bands: band ~ 15 / 45.25 * 81 - 1.
        assert!((25..=27).contains(&argmax), "peak band {argmax}");
        let max = m.iter().copied().fold(f32::MIN, f32::max);
        let min = m.iter().copied().fold(f32::MAX, f32::min);
        assert!((max - min - 2.0).abs() < 1e-5, "range {}", max - min);
    }

    #[test]
    fn window_slices_and_zero_pads_like_pad_or_trim() {
        let features = Array2::from_shape_fn((80, 3_500), |(m, t)| (m * 10_000 + t) as f32);
        // content_frames = 3499.
        let w0 = window(&features, 0);
        assert_eq!(w0.dim(), (80, N_FRAMES));
        assert_eq!(w0[[3, 2_999]], features[[3, 2_999]]);
        let w1 = window(&features, 3_000);
        assert_eq!(w1[[5, 0]], features[[5, 3_000]]);
        assert_eq!(w1[[5, 498]], features[[5, 3_498]]);
        assert_eq!(w1[[5, 499]], 0.0); // the last frame is not content
        assert!(w1
            .slice_axis(Axis(1), Slice::from(499..))
            .iter()
            .all(|&v| v == 0.0));
        let w2 = window(&features, 10_000);
        assert!(w2.iter().all(|&v| v == 0.0));
    }
}
