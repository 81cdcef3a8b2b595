//! The exported ONNX model: where it lives, what it is, and running it.
//!
//! The directory layout and tensor names are documented in `docs/model-format.md`.

use crate::weights::{GraphWeights, ModelWeights};
use crate::{WhisperError, WorkCounters};
use ndarray::{Array2, Array3, ArrayView3, Axis};
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor, TensorRef};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Dimensions and special-token ids of an exported model (`mmt-model.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub n_mels: usize,
    pub n_audio_ctx: usize,
    pub n_text_ctx: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_decoder_layers: usize,
    /// Absent from exports that predate it; Whisper's encoder and decoder
    /// have as many layers (see [`ModelSpec::encoder_layers`]).
    #[serde(default)]
    pub n_encoder_layers: Option<usize>,
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
    /// Tensor layout of the export; must be [`MODEL_LAYOUT`].
    #[serde(default)]
    pub layout: String,
}

impl ModelSpec {
    /// Reads `mmt-model.json`, refusing exports of another layout.
    pub fn read(path: &Path) -> Result<Self, WhisperError> {
        let spec: Self = read_export_json(path)?;
        if spec.layout != MODEL_LAYOUT {
            return Err(WhisperError::ModelUnavailable {
                reason: format!(
                    "{} has layout {:?}, this engine needs {MODEL_LAYOUT:?}; run `make setup` to re-export",
                    path.display(),
                    spec.layout
                ),
            });
        }
        Ok(spec)
    }

    pub fn encoder_layers(&self) -> usize {
        self.n_encoder_layers.unwrap_or(self.n_decoder_layers)
    }
}

/// Reads a JSON file the exporter wrote (`mmt-model.json`, `<graph>.weights.json`).
pub(crate) fn read_export_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<T, WhisperError> {
    let text = std::fs::read_to_string(path).map_err(|source| WhisperError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| WhisperError::ModelUnavailable {
        reason: format!(
            "{} is invalid: {err}; run `make setup` to re-export",
            path.display()
        ),
    })
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
        for file in [
            "encoder.onnx",
            "encoder.weights.json",
            "decoder.onnx",
            "decoder.weights.json",
            "tokenizer.json",
            "mmt-model.json",
        ] {
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
pub(crate) fn ort_environment(library: &Path) -> Result<Environment, WhisperError> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    let result = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|err| err.to_string())?;
        builder
            .with_name("mmt")
            .build()
            .map_err(|err| err.to_string())
    });
    result
        .clone()
        .map_err(|reason| WhisperError::ModelUnavailable {
            reason: format!(
                "cannot load ONNX Runtime from {}: {reason}",
                library.display()
            ),
        })
}

/// The per-layer cross-attention keys and values of a batch of encoded windows.
///
/// The decoder reads the first [`CrossAttention::active`] windows along axis 0
/// (or, for one call, a narrower range: [`CrossAttention::read_only`]).
/// [`CrossAttention::arrange`] brings the windows still being decoded to the
/// front by swapping them in place, so that windows leaving the batch cost no
/// copy of the others' K/V (18 MB per window for tiny) and stay available for
/// a later pass, e.g. a temperature fallback.
#[derive(Debug)]
pub struct CrossAttention {
    /// `cross_k_{i}` of each decoder layer, batch first.
    pub keys: Vec<DynValue>,
    /// `cross_v_{i}` of each decoder layer, batch first.
    pub values: Vec<DynValue>,
    /// Rows (windows) in this batch.
    pub rows: usize,
    /// The window (its row as encoded) held at each position along axis 0.
    order: Vec<usize>,
    /// Positions the decoder reads: `0..active`.
    active: usize,
    /// Positions the decoder reads instead, when narrowed for a call.
    narrowed: Option<Range<usize>>,
}

/// Tensor names of the graphs, computed once.
#[derive(Debug)]
struct TensorNames {
    cross_k: Vec<String>,
    cross_v: Vec<String>,
    self_k: Vec<String>,
    self_v: Vec<String>,
    new_self_k: Vec<String>,
    new_self_v: Vec<String>,
}

impl TensorNames {
    fn new(layers: usize) -> Self {
        let names = |prefix: &str| (0..layers).map(|i| format!("{prefix}_{i}")).collect();
        Self {
            cross_k: names("cross_k"),
            cross_v: names("cross_v"),
            self_k: names("self_k"),
            self_v: names("self_v"),
            new_self_k: names("new_self_k"),
            new_self_v: names("new_self_v"),
        }
    }
}

/// The encoder and decoder sessions of one model.
#[derive(Debug)]
pub struct WhisperModel {
    spec: ModelSpec,
    names: TensorNames,
    encoder: Session,
    decoder: Session,
    /// The weights the sessions share with other workers' sessions.
    weights: Arc<ModelWeights>,
    /// What the graphs ran so far (the engine's own counts, packs and
    /// fallbacks, are zero here).
    calls: WorkCounters,
}

/// The export layout this engine runs (`layout` in `mmt-model.json`).
pub const MODEL_LAYOUT: &str = "per-layer-heads-v3";

impl WhisperModel {
    /// Loads ONNX Runtime and both graphs.
    pub fn load(options: &ModelOptions) -> Result<Self, WhisperError> {
        options.check_files()?;
        let spec = ModelSpec::read(&options.model_dir.join("mmt-model.json"))?;
        let environment = ort_environment(&options.ort_library)?;
        let weights = ModelWeights::shared(&options.model_dir)?;
        let encoder = build_session(
            &environment,
            &options.model_dir.join("encoder.onnx"),
            &weights.encoder,
            &weights.prepacked,
            options,
        )?;
        let decoder = build_session(
            &environment,
            &options.model_dir.join("decoder.onnx"),
            &weights.decoder,
            &weights.prepacked,
            options,
        )?;
        Ok(Self {
            names: TensorNames::new(spec.n_decoder_layers),
            spec,
            encoder,
            decoder,
            weights,
            calls: WorkCounters::default(),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The weights this model's sessions share with every other model loaded
    /// from the same folder in this process.
    pub fn weights(&self) -> &Arc<ModelWeights> {
        &self.weights
    }

    /// Windows encoded, decoder calls, rows and token positions, and the
    /// time inside each graph, since the model was loaded.
    pub fn calls(&self) -> WorkCounters {
        self.calls
    }

    /// Encodes a batch of `[n_mels, 3000]` windows into cross-attention K/V.
    ///
    /// The encoder runs on [`ENCODER_ROWS`] windows at a time, which bounds
    /// its activations (about 30 MB per window; the fused attention holds no
    /// score matrices). A larger batch's K/V (18 MB per window for tiny) is
    /// filled in part by part, so only one part's outputs exist beside it.
    pub fn encode(&mut self, mel: ArrayView3<'_, f32>) -> Result<CrossAttention, WhisperError> {
        let rows = mel.len_of(Axis(0));
        if rows <= ENCODER_ROWS {
            return self.encode_rows(mel);
        }
        let mut batch = BatchKv::new(rows);
        for start in (0..rows).step_by(ENCODER_ROWS) {
            let end = (start + ENCODER_ROWS).min(rows);
            let part = self.encode_rows(mel.slice_axis(Axis(0), (start..end).into()))?;
            batch.fill(start, &part.keys, &part.values)?;
        }
        let (keys, values) = batch.into_tensors()?;
        Ok(CrossAttention::new(keys, values, rows))
    }

    fn encode_rows(&mut self, mel: ArrayView3<'_, f32>) -> Result<CrossAttention, WhisperError> {
        let rows = mel.len_of(Axis(0));
        let input = TensorRef::from_array_view(mel)?;
        let started = Instant::now();
        let mut outputs = self.encoder.run(ort::inputs!["mel" => input])?;
        self.calls.encoder_nanos += elapsed_nanos(started);
        self.calls.windows_encoded += rows as u64;
        let keys = take_outputs(&mut outputs, &self.names.cross_k)?;
        let values = take_outputs(&mut outputs, &self.names.cross_v)?;
        drop(outputs);
        release_freed_memory();
        Ok(CrossAttention::new(keys, values, rows))
    }

    /// Runs one decoder call; returns last-position logits `[rows, vocab]` and the new cache.
    pub fn decode(
        &mut self,
        step: DecoderInputs<'_>,
    ) -> Result<(Array2<f32>, SelfAttentionCache), WhisperError> {
        let names = &self.names;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                "tokens".into(),
                TensorRef::from_array_view(step.tokens.view())?.into(),
            ),
            (
                "positions".into(),
                TensorRef::from_array_view(step.positions.view())?.into(),
            ),
            (
                "attention_mask".into(),
                TensorRef::from_array_view(step.attention_mask.view())?.into(),
            ),
        ];
        let caches = [
            (&names.self_k, &step.cache.keys),
            (&names.self_v, &step.cache.values),
        ];
        for (layer_names, values) in caches {
            for (name, value) in layer_names.iter().zip(values) {
                inputs.push((name.as_str().into(), value.into()));
            }
        }
        let cross = [
            (&names.cross_k, &step.cross.keys),
            (&names.cross_v, &step.cross.values),
        ];
        for (layer_names, values) in cross {
            for (name, value) in layer_names.iter().zip(values) {
                inputs.push((name.as_str().into(), step.cross.decoder_input(value)?));
            }
        }
        let (rows, new_tokens) = step.tokens.dim();
        let started = Instant::now();
        let mut outputs = self.decoder.run(inputs)?;
        self.calls.decoder_nanos += elapsed_nanos(started);
        self.calls.decoder_calls += 1;
        self.calls.decoder_rows += rows as u64;
        self.calls.decoder_tokens += (rows * new_tokens) as u64;
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
            keys: take_outputs(&mut outputs, &names.new_self_k)?,
            values: take_outputs(&mut outputs, &names.new_self_v)?,
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

/// Self-attention keys and values of the tokens decoded so far, per layer:
/// `[rows, heads, past, head_dim]`.
#[derive(Debug)]
pub struct SelfAttentionCache {
    pub keys: Vec<DynValue>,
    pub values: Vec<DynValue>,
}

impl SelfAttentionCache {
    /// A cache holding no tokens yet.
    pub fn empty(spec: &ModelSpec, rows: usize) -> Result<Self, WhisperError> {
        Self::zeros(spec, rows, 0)
    }

    /// A cache of `len` zero keys and values per row (masked padding).
    pub fn zeros(spec: &ModelSpec, rows: usize, len: usize) -> Result<Self, WhisperError> {
        let shape = (rows, spec.n_heads, len, spec.d_model / spec.n_heads.max(1));
        let empty = || -> Result<Vec<DynValue>, WhisperError> {
            (0..spec.n_decoder_layers)
                .map(|_| Ok(Tensor::from_array(ndarray::Array4::<f32>::zeros(shape))?.into_dyn()))
                .collect()
        };
        Ok(Self {
            keys: empty()?,
            values: empty()?,
        })
    }

    /// Keeps the rows `indices` (in that order, repeats allowed), e.g. after a beam step.
    pub fn select_rows(&self, indices: &[usize]) -> Result<Self, WhisperError> {
        Ok(Self {
            keys: select_rows_all(&self.keys, indices)?,
            values: select_rows_all(&self.values, indices)?,
        })
    }
}

/// Windows the encoder runs on at once (see [`WhisperModel::encode`]).
///
/// One: on the 10-minute file (2 workers, int8, batch 4, independent chunks)
/// that peaks 100 MB lower than four at a time, at the same speed. It also
/// keeps the int8 encoder batch invariant: its activations are quantized with
/// one scale per call (scripts/quantize_onnx.py), which is then the window's
/// own.
pub const ENCODER_ROWS: usize = 1;

/// Gives the pages of freed heap memory back to the system.
///
/// An encoder call allocates and frees its activations (about 30 MB per
/// window) in pieces below the mmap threshold (`src/main.rs`), so they come
/// from the worker thread's malloc arena; the call's outputs, allocated after
/// them, keep the arena from shrinking, and the freed pages would stay
/// resident beside the K/V through the decoding that follows. On the
/// 10-minute file (2 workers, int8, batch 4): peak RSS 514 -> 446 MB, at the
/// same speed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim only hands free pages of malloc's arenas back to the
    // system; it touches no allocation in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

impl CrossAttention {
    /// K/V tensors of `rows` windows, in encoding order, all read by the decoder.
    pub fn new(keys: Vec<DynValue>, values: Vec<DynValue>, rows: usize) -> Self {
        Self {
            keys,
            values,
            rows,
            order: (0..rows).collect(),
            active: rows,
            narrowed: None,
        }
    }

    /// The windows held (as encoded), by position along axis 0.
    pub fn held(&self) -> &[usize] {
        &self.order
    }

    /// Windows the decoder reads (the first ones along axis 0).
    pub fn active(&self) -> usize {
        self.active
    }

    /// Puts the distinct windows `windows` (as encoded) at positions
    /// `0..windows.len()`, in that order, by swapping rows in place, and makes
    /// them the ones the decoder reads. The other windows keep their K/V.
    pub fn arrange(&mut self, windows: &[usize]) -> Result<(), WhisperError> {
        for (target, &window) in windows.iter().enumerate() {
            let position = self.position_of(window)?;
            if position < target {
                return Err(WhisperError::InvalidOption {
                    reason: format!("window {window} is asked for twice"),
                });
            }
            if position != target {
                for tensor in self.keys.iter_mut().chain(self.values.iter_mut()) {
                    swap_rows(tensor, self.rows, target, position)?;
                }
                self.order.swap(target, position);
            }
        }
        self.active = windows.len();
        self.narrowed = None;
        Ok(())
    }

    /// A copy holding the windows `windows` (as encoded; repeats allowed), in
    /// that order, e.g. one copy per beam when beams cannot share a window.
    pub fn select_rows(&self, windows: &[usize]) -> Result<Self, WhisperError> {
        let positions = windows
            .iter()
            .map(|&window| self.position_of(window))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(
            select_rows_all(&self.keys, &positions)?,
            select_rows_all(&self.values, &positions)?,
            positions.len(),
        ))
    }

    /// Drops every window but `windows` (distinct, as encoded), e.g. the
    /// few a temperature fallback decodes again: their K/V is copied out and
    /// the batch's tensors are freed. A fallback's sampled rows each hold a
    /// self-attention cache, so without this a fallback held those beside the
    /// whole batch's K/V (18 MB per tiny window), the highest point of a
    /// worker's memory.
    pub fn retain(&mut self, windows: &[usize]) -> Result<(), WhisperError> {
        if windows.len() == self.rows && windows == self.order.as_slice() {
            return Ok(());
        }
        // Each held window has one position, so distinct windows are distinct
        // rows; `select_rows` refuses a window no longer held.
        if windows.iter().collect::<HashSet<_>>().len() != windows.len() {
            return Err(WhisperError::InvalidOption {
                reason: "a window is kept twice".into(),
            });
        }
        let mut kept = self.select_rows(windows)?;
        kept.order = windows.to_vec();
        // The batch's tensors are freed before the copies are used.
        *self = kept;
        release_freed_memory();
        Ok(())
    }

    /// Makes the decoder read only `positions` (within the active ones), or
    /// all active positions again with `None`.
    pub fn read_only(&mut self, positions: Option<Range<usize>>) -> Result<(), WhisperError> {
        if positions
            .as_ref()
            .is_some_and(|range| range.is_empty() || range.end > self.active)
        {
            return Err(WhisperError::InvalidOption {
                reason: format!(
                    "positions {positions:?} lie outside the {} read",
                    self.active
                ),
            });
        }
        self.narrowed = positions;
        Ok(())
    }

    fn position_of(&self, window: usize) -> Result<usize, WhisperError> {
        self.order
            .iter()
            .position(|&held| held == window)
            .ok_or_else(|| WhisperError::InvalidOption {
                reason: format!("window {window} is not in a batch of {}", self.rows),
            })
    }

    /// The decoder's input for `tensor`: the tensor itself, or a view of its
    /// active windows.
    fn decoder_input<'v>(
        &self,
        tensor: &'v DynValue,
    ) -> Result<SessionInputValue<'v>, WhisperError> {
        let read = self.narrowed.clone().unwrap_or(0..self.active);
        if read == (0..self.rows) {
            return Ok(tensor.into());
        }
        let mut active = tensor.try_extract_array::<f32>()?;
        active.slice_axis_inplace(Axis(0), read.into());
        Ok(TensorRef::from_array_view(active)?.into())
    }
}

/// Swaps rows `a < b` along axis 0 of a float tensor of `rows` rows.
fn swap_rows(tensor: &mut DynValue, rows: usize, a: usize, b: usize) -> Result<(), WhisperError> {
    let (_, data) = tensor.try_extract_tensor_mut::<f32>()?;
    let row = data.len() / rows.max(1);
    let (front, back) = data.split_at_mut(b * row);
    front[a * row..(a + 1) * row].swap_with_slice(&mut back[..row]);
    Ok(())
}

/// Per-layer keys and values of a batch (cross-attention K/V, or a
/// self-attention cache), filled in by the parts it was computed in, so that
/// only one part's outputs exist beside the batch.
pub(crate) struct BatchKv {
    rows: usize,
    keys: Vec<ndarray::ArrayD<f32>>,
    values: Vec<ndarray::ArrayD<f32>>,
}

impl BatchKv {
    /// An empty batch of `rows` rows, shaped by its first part.
    pub(crate) fn new(rows: usize) -> Self {
        Self {
            rows,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Copies a part's rows (its `keys` and `values`, batch first) into rows `start..`.
    pub(crate) fn fill(
        &mut self,
        start: usize,
        keys: &[DynValue],
        values: &[DynValue],
    ) -> Result<(), WhisperError> {
        if self.keys.is_empty() {
            self.keys = zeros_shaped_like(keys, self.rows)?;
            self.values = zeros_shaped_like(values, self.rows)?;
        }
        for (whole, piece) in self
            .keys
            .iter_mut()
            .zip(keys)
            .chain(self.values.iter_mut().zip(values))
        {
            let piece = piece.try_extract_array::<f32>()?;
            let rows = (start..start + piece.len_of(Axis(0))).into();
            if start + piece.len_of(Axis(0)) > whole.len_of(Axis(0))
                || whole.slice_axis(Axis(0), rows).shape() != piece.shape()
            {
                return Err(WhisperError::Inference {
                    reason: "parts of a batch differ in shape".into(),
                });
            }
            whole.slice_axis_mut(Axis(0), rows).assign(&piece);
        }
        Ok(())
    }

    /// The filled batch's keys and values.
    pub(crate) fn into_tensors(self) -> Result<(Vec<DynValue>, Vec<DynValue>), WhisperError> {
        let tensors = |arrays: Vec<ndarray::ArrayD<f32>>| {
            arrays
                .into_iter()
                .map(|array| Ok(Tensor::from_array(array)?.into_dyn()))
                .collect::<Result<Vec<DynValue>, WhisperError>>()
        };
        Ok((tensors(self.keys)?, tensors(self.values)?))
    }
}

/// Zeroed tensors of `tensors`' shapes with `rows` rows (axis 0).
fn zeros_shaped_like(
    tensors: &[DynValue],
    rows: usize,
) -> Result<Vec<ndarray::ArrayD<f32>>, WhisperError> {
    tensors
        .iter()
        .map(|tensor| {
            let mut shape = tensor.try_extract_array::<f32>()?.shape().to_vec();
            if let Some(first) = shape.first_mut() {
                *first = rows;
            }
            Ok(ndarray::ArrayD::zeros(shape))
        })
        .collect()
}

fn select_rows_all(values: &[DynValue], indices: &[usize]) -> Result<Vec<DynValue>, WhisperError> {
    values
        .iter()
        .map(|value| select_rows(value, indices))
        .collect()
}

/// Gathers rows `indices` (axis 0) of a float tensor into a new tensor.
fn select_rows(value: &DynValue, indices: &[usize]) -> Result<DynValue, WhisperError> {
    let array = value.try_extract_array::<f32>()?;
    let selected = array.select(Axis(0), indices);
    Ok(Tensor::from_array(selected)?.into_dyn())
}

/// A session of the graph at `path` whose weights are `graph`'s shared tensors
/// (and whose prepacked copies go to the shared `prepacked` container).
fn build_session(
    environment: &Environment,
    path: &Path,
    graph: &GraphWeights,
    prepacked: &PrepackedWeights,
    options: &ModelOptions,
) -> Result<Session, WhisperError> {
    let unavailable = |err: String| WhisperError::ModelUnavailable {
        reason: format!("cannot load {}: {err}", path.display()),
    };
    let builder = Session::builder(environment)
        .map_err(|err| unavailable(err.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|err| unavailable(err.to_string()))?
        .with_intra_threads(options.intra_op_threads.max(1))
        .map_err(|err| unavailable(err.to_string()))?
        // Batches change shape from call to call (windows per batch, tokens
        // so far), so a shape-keyed memory plan is rarely reused, and the
        // arena only grows to the largest batch ever seen and keeps it:
        // plain allocations keep peak memory to what a call needs.
        .with_memory_pattern(false)
        .map_err(|err| unavailable(err.to_string()))?;
    #[cfg(not(feature = "cuda"))]
    let builder = builder
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
        .map_err(|err| unavailable(err.to_string()))?;
    // On GPU hosts the CUDA provider takes the graph; operators it cannot run
    // fall back to the CPU provider (ONNX Runtime logs which).
    #[cfg(feature = "cuda")]
    let builder = builder
        .with_execution_providers([ort::ep::CUDA::default().build()])
        .map_err(|err| unavailable(err.to_string()))?;
    // ONNX Runtime rearranges ("prepacks") MatMul weights for its kernels.
    // The packed copies sit beside the shared weights (one set per process,
    // through the container). For int8 weights they are small (35 MB for
    // tiny) and make decoding about 12 % faster; for float32 they would add
    // 140 MB (tiny) for no measurable gain in the default decoding (one row
    // per step), though batched decoding (--independent-chunks) of an fp32
    // model runs about 15 % slower without them.
    let mut builder = builder
        .with_prepacking(graph.is_quantized())
        .map_err(|err| unavailable(err.to_string()))?
        .with_prepacked_weights(prepacked)
        .map_err(|err| unavailable(err.to_string()))?;
    for (name, value) in graph.tensors() {
        builder = builder
            .with_initializer(name, Arc::clone(value))
            .map_err(|err| unavailable(err.to_string()))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|err| unavailable(err.to_string()))
}

fn elapsed_nanos(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn take_outputs(
    outputs: &mut ort::session::SessionOutputs<'_>,
    names: &[String],
) -> Result<Vec<DynValue>, WhisperError> {
    names
        .iter()
        .map(|name| outputs.remove(name).ok_or_else(|| missing_output(name)))
        .collect()
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
