//! The exported ONNX model: where it lives, what it is, and running it.
//!
//! The directory layout and tensor names are documented in `docs/model-format.md`.

use crate::WhisperError;
use ndarray::{Array2, Array3, ArrayView3, Axis};
use ort::session::builder::GraphOptimizationLevel;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Dimensions and special-token ids of an exported model (`mmt-model.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub n_mels: usize,
    pub n_audio_ctx: usize,
    pub n_text_ctx: usize,
    pub d_model: usize,
    pub n_decoder_layers: usize,
    pub vocab_size: usize,
    pub multilingual: bool,
    pub eot: u32,
    pub sot: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub sot_prev: u32,
    #[serde(default)]
    pub sot_lm: Option<u32>,
    pub no_speech: u32,
    pub no_timestamps: u32,
    pub timestamp_begin: u32,
    #[serde(default)]
    pub lang_ids: Vec<u32>,
    pub suppress_ids: Vec<u32>,
    pub suppress_ids_begin: Vec<u32>,
}

/// Where the model and ONNX Runtime are, and how to run them.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Directory written by `scripts/export_onnx.py`.
    pub model_dir: PathBuf,
    /// Path of `libonnxruntime.so.<version>` (loaded dynamically).
    pub ort_library: PathBuf,
    /// Threads ONNX Runtime uses inside one operator.
    pub intra_op_threads: usize,
}

impl ModelOptions {
    /// Fails with the command to run when a file the engine needs is missing.
    pub fn check_files(&self) -> Result<(), WhisperError> {
        let hint = "run `make setup` (it installs ONNX Runtime and exports the model)";
        if !self.ort_library.is_file() {
            return Err(WhisperError::ModelUnavailable {
                reason: format!(
                    "ONNX Runtime library not found at {}; {hint}, or set ORT_DYLIB_PATH",
                    self.ort_library.display()
                ),
            });
        }
        for file in ["encoder.onnx", "decoder.onnx", "tokenizer.json", "mmt-model.json"] {
            let path = self.model_dir.join(file);
            if !path.is_file() {
                return Err(WhisperError::ModelUnavailable {
                    reason: format!("{} not found; {hint}, or set MMT_MODEL_DIR", path.display()),
                });
            }
        }
        Ok(())
    }
}

/// Loads ONNX Runtime from `library` once per process; later calls reuse it.
///
/// The dynamic library can only be loaded once, so a second call with another
/// path gets the first environment.
fn ort_environment(library: &Path) -> Result<Environment, WhisperError> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    let result = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|err| err.to_string())?;
        builder.with_name("mmt").build().map_err(|err| err.to_string())
    });
    result.clone().map_err(|reason| WhisperError::ModelUnavailable {
        reason: format!("cannot load ONNX Runtime from {}: {reason}", library.display()),
    })
}

/// The cross-attention keys and values of a batch of encoded windows.
#[derive(Debug)]
pub struct CrossAttention {
    pub keys: DynValue,
    pub values: DynValue,
    /// Rows (windows) in this batch.
    pub rows: usize,
}

/// The encoder and decoder sessions of one model.
#[derive(Debug)]
pub struct WhisperModel {
    spec: ModelSpec,
    encoder: Session,
    decoder: Session,
}

impl WhisperModel {
    /// Loads ONNX Runtime and both graphs.
    pub fn load(options: &ModelOptions) -> Result<Self, WhisperError> {
        options.check_files()?;
        let environment = ort_environment(&options.ort_library)?;
        let spec_path = options.model_dir.join("mmt-model.json");
        let spec_text = std::fs::read_to_string(&spec_path).map_err(|source| WhisperError::Io {
            path: spec_path.clone(),
            source,
        })?;
        let spec: ModelSpec =
            serde_json::from_str(&spec_text).map_err(|err| WhisperError::ModelUnavailable {
                reason: format!("{} is invalid: {err}", spec_path.display()),
            })?;
        let encoder = build_session(&environment, &options.model_dir.join("encoder.onnx"), options)?;
        let decoder = build_session(&environment, &options.model_dir.join("decoder.onnx"), options)?;
        Ok(Self {
            spec,
            encoder,
            decoder,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Encodes a batch of `[n_mels, 3000]` windows into cross-attention K/V.
    pub fn encode(&mut self, mel: ArrayView3<'_, f32>) -> Result<CrossAttention, WhisperError> {
        let rows = mel.len_of(Axis(0));
        let input = TensorRef::from_array_view(mel)?;
        let mut outputs = self.encoder.run(ort::inputs!["mel" => input])?;
        let keys = take_output(&mut outputs, "cross_k")?;
        let values = take_output(&mut outputs, "cross_v")?;
        Ok(CrossAttention { keys, values, rows })
    }

    /// Runs one decoder call; returns last-position logits `[rows, vocab]` and the new cache.
    pub fn decode(
        &mut self,
        step: DecoderInputs<'_>,
    ) -> Result<(Array2<f32>, SelfAttentionCache), WhisperError> {
        let tokens = TensorRef::from_array_view(step.tokens.view())?;
        let positions = TensorRef::from_array_view(step.positions.view())?;
        let mask = TensorRef::from_array_view(step.attention_mask.view())?;
        let mut outputs = self.decoder.run(ort::inputs![
            "tokens" => tokens,
            "positions" => positions,
            "attention_mask" => mask,
            "self_k" => &step.cache.keys,
            "self_v" => &step.cache.values,
            "cross_k" => &step.cross.keys,
            "cross_v" => &step.cross.values,
        ])?;
        let logits = outputs
            .get("logits")
            .ok_or_else(|| missing_output("logits"))?
            .try_extract_array::<f32>()?
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|err| WhisperError::Inference {
                reason: format!("logits have an unexpected shape: {err}"),
            })?
            .to_owned();
        let cache = SelfAttentionCache {
            keys: take_output(&mut outputs, "new_self_k")?,
            values: take_output(&mut outputs, "new_self_v")?,
        };
        Ok((logits, cache))
    }
}

/// The decoder's inputs for one call.
#[derive(Debug)]
pub struct DecoderInputs<'a> {
    pub tokens: Array2<i64>,
    pub positions: Array2<i64>,
    pub attention_mask: Array2<f32>,
    pub cache: &'a SelfAttentionCache,
    pub cross: &'a CrossAttention,
}

/// Self-attention keys and values of the tokens decoded so far: `[layers, rows, past, d_model]`.
#[derive(Debug)]
pub struct SelfAttentionCache {
    pub keys: DynValue,
    pub values: DynValue,
}

impl SelfAttentionCache {
    /// A cache holding no tokens yet.
    pub fn empty(layers: usize, rows: usize, d_model: usize) -> Result<Self, WhisperError> {
        let empty = || -> Result<DynValue, WhisperError> {
            let array = ndarray::Array4::<f32>::zeros((layers, rows, 0, d_model));
            Ok(Tensor::from_array(array)?.into_dyn())
        };
        Ok(Self {
            keys: empty()?,
            values: empty()?,
        })
    }

    /// Keeps the rows `indices` (in that order, repeats allowed), e.g. after a beam step.
    pub fn select_rows(&self, indices: &[usize]) -> Result<Self, WhisperError> {
        Ok(Self {
            keys: select_rows(&self.keys, 1, indices)?,
            values: select_rows(&self.values, 1, indices)?,
        })
    }
}

impl CrossAttention {
    /// Keeps the windows `indices` (in that order, repeats allowed), e.g. one copy per beam.
    pub fn select_rows(&self, indices: &[usize]) -> Result<Self, WhisperError> {
        Ok(Self {
            keys: select_rows(&self.keys, 1, indices)?,
            values: select_rows(&self.values, 1, indices)?,
            rows: indices.len(),
        })
    }
}

/// Gathers `indices` along `axis` of a float tensor into a new tensor.
fn select_rows(value: &DynValue, axis: usize, indices: &[usize]) -> Result<DynValue, WhisperError> {
    let array = value.try_extract_array::<f32>()?;
    let selected = array.select(Axis(axis), indices);
    Ok(Tensor::from_array(selected)?.into_dyn())
}

fn build_session(
    environment: &Environment,
    path: &Path,
    options: &ModelOptions,
) -> Result<Session, WhisperError> {
    let unavailable = |err: String| WhisperError::ModelUnavailable {
        reason: format!("cannot load {}: {err}", path.display()),
    };
    let mut builder = Session::builder(environment)
        .map_err(|err| unavailable(err.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|err| unavailable(err.to_string()))?
        .with_intra_threads(options.intra_op_threads.max(1))
        .map_err(|err| unavailable(err.to_string()))?;
    builder
        .commit_from_file(path)
        .map_err(|err| unavailable(err.to_string()))
}

fn take_output(
    outputs: &mut ort::session::SessionOutputs<'_>,
    name: &'static str,
) -> Result<DynValue, WhisperError> {
    outputs.remove(name).ok_or_else(|| missing_output(name))
}

fn missing_output(name: &str) -> WhisperError {
    WhisperError::Inference {
        reason: format!("model has no output named {name}"),
    }
}

/// Stacks `[n_mels, 3000]` windows into the encoder's `[batch, n_mels, 3000]` input.
pub fn stack_windows(windows: &[Array2<f32>]) -> Result<Array3<f32>, WhisperError> {
    let views: Vec<_> = windows.iter().map(|w| w.view()).collect();
    ndarray::stack(Axis(0), &views).map_err(|err| WhisperError::InvalidOption {
        reason: format!("windows differ in shape: {err}"),
    })
}
