//! What the model's arithmetic costs, and what this machine's sgemm delivers.
//!
//! `mmt bench` divides the floating-point operations a run's encoder and
//! decoder calls performed ([`ModelCost`], from the model's dimensions and
//! the run's [`WorkCounters`]) by the time spent inside them, and compares
//! the rate with what ONNX Runtime's own matrix product reaches on the same
//! threads ([`sgemm_gflops`]): a graph far below that rate spends its time
//! elsewhere than in its matrix products (small matrices, memory traffic,
//! framework overhead), which is where speed can still be found.

use crate::model::{ort_environment, ModelSpec};
use crate::{ModelOptions, WhisperError, WorkCounters};
use ndarray::Array2;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::time::Instant;

/// The graph `scripts/export_onnx.py` writes beside the model: one MatMul of
/// two `[n, n]` float32 inputs `a` and `b` into `c`.
pub const SGEMM_GRAPH: &str = "sgemm.onnx";

/// Side of the square matrices the sgemm rate is measured on: large enough
/// for the kernel's peak (2.1 GFLOP a call), small enough to take about
/// 20 ms on one core.
const SGEMM_SIDE: usize = 1024;

/// Floating-point operations (two per multiply-add) of the model's matrix
/// products, per unit of work. Element-wise operations, softmax and layer
/// norms are left out: they are a few percent of the total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelCost {
    /// One 30 s window through the encoder: both convolutions, then each
    /// layer's projections and MLP over every audio position, and its
    /// attention scores and weighted sums over all pairs of positions.
    pub encoder_per_window: f64,
    /// One token position through the decoder's layers: the self-attention
    /// projections and MLP, the cross-attention's query and output
    /// projections, and its attention over every audio position. (The
    /// self-attention over earlier tokens, at most 448 positions against
    /// 1,500 audio ones, is left out.)
    pub decoder_per_token: f64,
    /// One row of logits: the vocabulary projection, computed only for the
    /// last position of each row of each call.
    pub decoder_per_row: f64,
}

impl ModelCost {
    pub fn of(spec: &ModelSpec) -> Self {
        let d = spec.d_model as f64;
        let audio = spec.n_audio_ctx as f64;
        // The mel frames are twice the audio positions (the second
        // convolution has stride 2); both convolutions have kernel 3.
        let convolutions = 2.0 * audio * (spec.n_mels as f64) * 3.0 * d + audio * 3.0 * d * d;
        // Q, K, V and output projections (4 D²) and an MLP of width 4D (8 D²).
        let encoder_layer = audio * 12.0 * d * d + 2.0 * audio * audio * d;
        // Self-attention projections (4 D²), cross-attention query and
        // output (2 D²), MLP (8 D²); scores and weighted sum over the audio.
        let decoder_layer = 14.0 * d * d + 2.0 * audio * d;
        Self {
            encoder_per_window: 2.0 * (convolutions + spec.encoder_layers() as f64 * encoder_layer),
            decoder_per_token: 2.0 * spec.n_decoder_layers as f64 * decoder_layer,
            decoder_per_row: 2.0 * d * spec.vocab_size as f64,
        }
    }

    /// Operations of the encoder calls counted in `work`.
    pub fn encoder_flops(&self, work: &WorkCounters) -> f64 {
        work.windows_encoded as f64 * self.encoder_per_window
    }

    /// Operations of the decoder calls counted in `work`.
    pub fn decoder_flops(&self, work: &WorkCounters) -> f64 {
        work.decoder_tokens as f64 * self.decoder_per_token
            + work.decoder_rows as f64 * self.decoder_per_row
    }
}

/// GFLOP/s of ONNX Runtime's float32 matrix product on `threads` threads:
/// the best of several `[1024, 1024] × [1024, 1024]` products, after two
/// warm-up calls, through [`SGEMM_GRAPH`] in `options.model_dir`.
pub fn sgemm_gflops(options: &ModelOptions, threads: usize) -> Result<f64, WhisperError> {
    const TIMED_CALLS: usize = 5;
    let path = options.model_dir.join(SGEMM_GRAPH);
    if !path.is_file() {
        return Err(WhisperError::ModelUnavailable {
            reason: format!(
                "{} not found; run `make setup` to re-export the model",
                path.display()
            ),
        });
    }
    let unavailable = |err: &dyn std::fmt::Display| WhisperError::ModelUnavailable {
        reason: format!("cannot load {}: {err}", path.display()),
    };
    let environment = ort_environment(&options.ort_library)?;
    let mut session = Session::builder(&environment)
        .map_err(|err| unavailable(&err))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|err| unavailable(&err))?
        .with_intra_threads(threads.max(1))
        .map_err(|err| unavailable(&err))?
        .commit_from_file(&path)
        .map_err(|err| unavailable(&err))?;
    // Values in [-1, 1) that are not all alike, so nothing is special-cased.
    let matrix = Array2::from_shape_fn((SGEMM_SIDE, SGEMM_SIDE), |(row, column)| {
        ((row * 31 + column * 17) % 64) as f32 / 32.0 - 1.0
    });
    let mut best = f64::INFINITY;
    for call in 0..TIMED_CALLS + 2 {
        let started = Instant::now();
        session.run(ort::inputs![
            "a" => TensorRef::from_array_view(matrix.view())?,
            "b" => TensorRef::from_array_view(matrix.view())?,
        ])?;
        if call >= 2 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    let flops = 2.0 * (SGEMM_SIDE as f64).powi(3);
    Ok(flops / best / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelSpec {
        serde_json::from_value(serde_json::json!({
            "name": "tiny.en", "n_mels": 80, "n_audio_ctx": 1500, "n_text_ctx": 448,
            "d_model": 384, "n_heads": 6, "n_decoder_layers": 4, "n_encoder_layers": 4,
            "vocab_size": 51864, "multilingual": false, "eot": 50256, "sot": 50257,
            "transcribe": 50358, "translate": 50357, "sot_prev": 50360,
            "no_speech": 50361, "no_timestamps": 50362, "timestamp_begin": 50363,
            "suppress_ids": [], "suppress_ids_begin": [], "layout": "per-layer-heads-v4"
        }))
        .expect("a tiny.en spec")
    }

    #[test]
    fn tiny_costs_what_its_dimensions_say() {
        let cost = ModelCost::of(&tiny());
        // 4 layers × (1500 × 12 × 384² + 2 × 1500² × 384) multiply-adds,
        // plus the convolutions: about 37 GFLOP a window.
        assert!((36.0e9..38.5e9).contains(&cost.encoder_per_window));
        // 4 × (14 × 384² + 2 × 1500 × 384) multiply-adds: about 26 MFLOP.
        assert!((25.0e6..27.0e6).contains(&cost.decoder_per_token));
        // 384 × 51,864 multiply-adds for a row of logits.
        assert_eq!(cost.decoder_per_row, 2.0 * 384.0 * 51_864.0);
    }

    #[test]
    fn flops_follow_the_counted_work() {
        let cost = ModelCost::of(&tiny());
        let work = WorkCounters {
            windows_encoded: 3,
            decoder_calls: 10,
            decoder_rows: 20,
            decoder_tokens: 50,
            ..WorkCounters::default()
        };
        assert_eq!(cost.encoder_flops(&work), 3.0 * cost.encoder_per_window);
        assert_eq!(
            cost.decoder_flops(&work),
            50.0 * cost.decoder_per_token + 20.0 * cost.decoder_per_row
        );
        assert_eq!(cost.decoder_flops(&WorkCounters::default()), 0.0);
    }

    #[test]
    fn exports_before_the_encoder_layer_count_use_the_decoder_s() {
        let mut spec = tiny();
        let with = ModelCost::of(&spec);
        spec.n_encoder_layers = None;
        assert_eq!(ModelCost::of(&spec), with);
    }
}
