//! The exported ONNX model: where it lives, what it is, and running it.
//!
//! The directory layout and tensor names are documented in `docs/model-format.md`.

use crate::weights::{GraphWeights, ModelWeights};
use crate::{WhisperError, WorkCounters};
use ndarray::{
    s, Array, Array2, Array3, Array4, ArrayView, ArrayView2, ArrayView3, Axis, Dimension, Ix4,
};
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
    step_self_k: Vec<String>,
    step_self_v: Vec<String>,
}

impl TensorNames {
    fn new(layers: usize) -> Self {
        let names = |prefix: &str| (0..layers).map(|i| format!("{prefix}_{i}")).collect();
        Self {
            cross_k: names("cross_k"),
            cross_v: names("cross_v"),
            self_k: names("self_k"),
            self_v: names("self_v"),
            step_self_k: names("step_self_k"),
            step_self_v: names("step_self_v"),
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
pub const MODEL_LAYOUT: &str = "per-layer-heads-v4";

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
            batch.fill(
                start,
                &tensor_views(&part.keys)?,
                &tensor_views(&part.values)?,
            )?;
        }
        let (keys, values) = batch.into_arrays();
        Ok(CrossAttention::new(
            into_tensors(keys)?,
            into_tensors(values)?,
            rows,
        ))
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

    /// Runs one decoder call; returns the last-position logits `[rows, vocab]`.
    ///
    /// The call reads all of `step.cache`'s slots, and its new keys and values
    /// are then written into the cache in place, in the slots after the `past`
    /// ones it held (`past` is the attention mask's width less the new tokens),
    /// the cache growing first if it has no room for them.
    pub fn decode(&mut self, step: DecoderInputs<'_>) -> Result<Array2<f32>, WhisperError> {
        let (rows, new_tokens) = step.tokens.dim();
        let past = step.attention_mask.ncols().checked_sub(new_tokens);
        let agree = |past: &usize| rows == step.cache.rows() && *past <= step.cache.slots();
        let Some(past) = past.filter(agree) else {
            return Err(WhisperError::InvalidOption {
                reason: "a decoder call's tokens, attention mask and cache do not agree".into(),
            });
        };
        let attention_mask = step.cache.slot_mask(step.attention_mask.view(), past);
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
                TensorRef::from_array_view(attention_mask.view())?.into(),
            ),
        ];
        let caches = [
            (&names.self_k, &step.cache.keys),
            (&names.self_v, &step.cache.values),
        ];
        for (layer_names, layers) in caches {
            for (name, layer) in layer_names.iter().zip(layers) {
                inputs.push((
                    name.as_str().into(),
                    TensorRef::from_array_view(layer.view())?.into(),
                ));
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
        let started = Instant::now();
        let outputs = self.decoder.run(inputs)?;
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
        step.cache.make_room(past, past + new_tokens);
        let slots = past..past + new_tokens;
        for (layer_names, layers) in [
            (&names.step_self_k, &mut step.cache.keys),
            (&names.step_self_v, &mut step.cache.values),
        ] {
            for (name, layer) in layer_names.iter().zip(layers.iter_mut()) {
                let new = outputs
                    .get(name.as_str())
                    .ok_or_else(|| missing_output(name))?
                    .try_extract_array::<f32>()?;
                let mut target = layer.slice_mut(s![.., .., slots.clone(), ..]);
                if target.shape() != new.shape() {
                    return Err(WhisperError::Inference {
                        reason: format!("{name} has an unexpected shape {:?}", new.shape()),
                    });
                }
                target.assign(&new);
            }
        }
        Ok(logits)
    }
}

/// The decoder's inputs for one call.
#[derive(Debug)]
pub struct DecoderInputs<'a> {
    pub tokens: Array2<i64>,
    pub positions: Array2<i64>,
    /// `[rows, past + new]`, additive: 0 to attend, [`MASKED`] not to; `past`
    /// is the number of the cache's slots already filled.
    pub attention_mask: Array2<f32>,
    /// The cache, one row per token row, that the call reads and writes its
    /// new keys and values into.
    pub cache: &'a mut SelfAttentionCache,
    pub cross: &'a CrossAttention,
}

/// The attention mask's value for a slot a row does not attend to.
pub const MASKED: f32 = -1e9;

/// Slots a self-attention cache grows by (see [`SelfAttentionCache`]).
///
/// A row's attention reads every slot (the empty ones masked), so a step
/// costs a little more in attention with more spare slots, while a smaller
/// step copies the cache more often to grow it (once per this many tokens).
pub const CACHE_SLOTS_STEP: usize = 32;

/// Self-attention keys and values of the tokens decoded so far, per layer:
/// `[rows, heads, slots, head_dim]`, filled from slot 0.
///
/// The decoder reads all the slots (those not filled yet masked) and
/// returns only a call's new keys and values, which [`WhisperModel::decode`]
/// writes into the next slots: a decoder call neither copies the cache nor
/// returns a second, longer one beside it.
///
/// A row's attention runs over every slot, and its rounding depends on how
/// many there are and where its keys sit among them, so both must depend on
/// the row alone, never on its batch (ADR 6). A new cache has exactly the
/// slots it is made with: none, or the masked zeros that lay prompts out at
/// one length, so a prompt's keys land where they would in any batch (the
/// prompts of a batch are left-padded to the longest). After that the cache
/// grows by [`CACHE_SLOTS_STEP`] slots whenever a call's new tokens do not
/// fit, which depends only on how many tokens it holds.
#[derive(Debug, Clone)]
pub struct SelfAttentionCache {
    keys: Vec<Array4<f32>>,
    values: Vec<Array4<f32>>,
}

impl SelfAttentionCache {
    /// A cache holding no tokens yet.
    pub fn empty(spec: &ModelSpec, rows: usize) -> Result<Self, WhisperError> {
        Self::zeros(spec, rows, 0)
    }

    /// A cache of `len` zero keys and values per row (masked padding), and no
    /// spare slots.
    pub fn zeros(spec: &ModelSpec, rows: usize, len: usize) -> Result<Self, WhisperError> {
        if spec.n_heads == 0 || spec.d_model % spec.n_heads != 0 {
            return Err(WhisperError::InvalidOption {
                reason: format!(
                    "d_model {} does not split into {} heads",
                    spec.d_model, spec.n_heads
                ),
            });
        }
        let shape = (rows, spec.n_heads, len, spec.d_model / spec.n_heads);
        let layers = || {
            (0..spec.n_decoder_layers)
                .map(|_| Array4::zeros(shape))
                .collect()
        };
        Ok(Self {
            keys: layers(),
            values: layers(),
        })
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.keys.first().map_or(0, |layer| layer.len_of(Axis(0)))
    }

    /// Slots per row, filled or not.
    pub fn slots(&self) -> usize {
        self.keys.first().map_or(0, |layer| layer.len_of(Axis(2)))
    }

    /// Keeps the rows `indices` (in that order, repeats allowed), e.g. after a beam step.
    pub fn select_rows(&self, indices: &[usize]) -> Result<Self, WhisperError> {
        if let Some(&row) = indices.iter().find(|&&row| row >= self.rows()) {
            return Err(WhisperError::InvalidOption {
                reason: format!("cache row {row} is not held"),
            });
        }
        let select = |layers: &[Array4<f32>]| {
            layers
                .iter()
                .map(|layer| layer.select(Axis(0), indices))
                .collect()
        };
        Ok(Self {
            keys: select(&self.keys),
            values: select(&self.values),
        })
    }

    /// Views of the keys and of the values, per layer, for [`BatchKv::fill`].
    pub(crate) fn views(&self) -> KeysValues<ArrayView<'_, f32, Ix4>> {
        (
            self.keys.iter().map(|layer| layer.view()).collect(),
            self.values.iter().map(|layer| layer.view()).collect(),
        )
    }

    /// The cache a batch of parts was filled into.
    pub(crate) fn from_batch(batch: BatchKv<Ix4>) -> Self {
        let (keys, values) = batch.into_arrays();
        Self { keys, values }
    }

    /// Grows the slots to hold `needed` tokens, keeping the `filled` ones.
    /// One layer is copied at a time, so the copy adds one layer's size.
    fn make_room(&mut self, filled: usize, needed: usize) {
        if needed <= self.slots() {
            return;
        }
        let slots = slots_for(needed);
        let filled = filled.min(self.slots());
        for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let (rows, heads, _, head_dim) = layer.dim();
            let mut grown = Array4::zeros((rows, heads, slots, head_dim));
            grown
                .slice_mut(s![.., .., ..filled, ..])
                .assign(&layer.slice(s![.., .., ..filled, ..]));
            *layer = grown;
        }
    }

    /// The graph's `[rows, slots + new]` mask from the caller's
    /// `[rows, past + new]`: the slots after the `past` filled ones are masked.
    fn slot_mask(&self, mask: ArrayView2<'_, f32>, past: usize) -> Array2<f32> {
        let (rows, width) = mask.dim();
        let slots = self.slots();
        let mut graph_mask = Array2::from_elem((rows, slots + width - past), MASKED);
        graph_mask
            .slice_mut(s![.., ..past])
            .assign(&mask.slice(s![.., ..past]));
        graph_mask
            .slice_mut(s![.., slots..])
            .assign(&mask.slice(s![.., past..]));
        graph_mask
    }
}

/// Slots a cache grows to for `len` tokens: whole steps of [`CACHE_SLOTS_STEP`].
fn slots_for(len: usize) -> usize {
    len.div_ceil(CACHE_SLOTS_STEP) * CACHE_SLOTS_STEP
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

/// Keys and values, one of each per decoder layer.
pub(crate) type KeysValues<T> = (Vec<T>, Vec<T>);

/// Per-layer keys and values of a batch (cross-attention K/V, or a
/// self-attention cache), filled in by the parts it was computed in, so that
/// only one part's outputs exist beside the batch.
pub(crate) struct BatchKv<D: Dimension> {
    rows: usize,
    keys: Vec<Array<f32, D>>,
    values: Vec<Array<f32, D>>,
}

impl<D: Dimension> BatchKv<D> {
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
        keys: &[ArrayView<'_, f32, D>],
        values: &[ArrayView<'_, f32, D>],
    ) -> Result<(), WhisperError> {
        if self.keys.is_empty() {
            self.keys = zeros_shaped_like(keys, self.rows);
            self.values = zeros_shaped_like(values, self.rows);
        }
        for (whole, piece) in self
            .keys
            .iter_mut()
            .zip(keys)
            .chain(self.values.iter_mut().zip(values))
        {
            let rows = (start..start + piece.len_of(Axis(0))).into();
            if start + piece.len_of(Axis(0)) > whole.len_of(Axis(0))
                || whole.slice_axis(Axis(0), rows).shape() != piece.shape()
            {
                return Err(WhisperError::Inference {
                    reason: "parts of a batch differ in shape".into(),
                });
            }
            whole.slice_axis_mut(Axis(0), rows).assign(piece);
        }
        Ok(())
    }

    /// The filled batch's keys and values.
    pub(crate) fn into_arrays(self) -> KeysValues<Array<f32, D>> {
        (self.keys, self.values)
    }
}

/// Zeroed arrays of `parts`' shapes with `rows` rows (axis 0).
fn zeros_shaped_like<D: Dimension>(
    parts: &[ArrayView<'_, f32, D>],
    rows: usize,
) -> Vec<Array<f32, D>> {
    parts
        .iter()
        .map(|part| {
            let mut shape = part.raw_dim();
            if shape.ndim() > 0 {
                shape[0] = rows;
            }
            Array::zeros(shape)
        })
        .collect()
}

/// Views of float tensors, e.g. a graph's outputs, for [`BatchKv::fill`].
fn tensor_views(tensors: &[DynValue]) -> Result<Vec<ndarray::ArrayViewD<'_, f32>>, WhisperError> {
    tensors
        .iter()
        .map(|tensor| Ok(tensor.try_extract_array::<f32>()?))
        .collect()
}

/// ONNX Runtime tensors owning `arrays`.
fn into_tensors(arrays: Vec<ndarray::ArrayD<f32>>) -> Result<Vec<DynValue>, WhisperError> {
    arrays
        .into_iter()
        .map(|array| Ok(Tensor::from_array(array)?.into_dyn()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of `rows` rows and `slots` slots (2 layers, 2 heads of 3),
    /// each key the number `1000 * row + slot + 1` and each value its negative.
    fn numbered_cache(rows: usize, slots: usize) -> SelfAttentionCache {
        let layer = |sign: f32| {
            Array4::from_shape_fn((rows, 2, slots, 3), |(row, _, slot, _)| {
                sign * (1000 * row + slot + 1) as f32
            })
        };
        SelfAttentionCache {
            keys: vec![layer(1.0), layer(1.0)],
            values: vec![layer(-1.0), layer(-1.0)],
        }
    }

    #[test]
    fn slots_come_in_whole_steps() {
        assert_eq!(slots_for(0), 0);
        assert_eq!(slots_for(1), CACHE_SLOTS_STEP);
        assert_eq!(slots_for(CACHE_SLOTS_STEP), CACHE_SLOTS_STEP);
        assert_eq!(slots_for(CACHE_SLOTS_STEP + 1), 2 * CACHE_SLOTS_STEP);
    }

    #[test]
    fn growing_keeps_the_filled_slots_and_zeroes_the_rest() {
        let mut cache = numbered_cache(2, CACHE_SLOTS_STEP);
        cache.make_room(5, CACHE_SLOTS_STEP);
        assert_eq!(cache.slots(), CACHE_SLOTS_STEP, "room enough: unchanged");
        cache.make_room(5, CACHE_SLOTS_STEP + 3);
        assert_eq!(cache.slots(), 2 * CACHE_SLOTS_STEP);
        assert_eq!(cache.rows(), 2);
        for layer in cache.keys.iter().chain(&cache.values) {
            for ((row, _, slot, _), &value) in layer.indexed_iter() {
                let expected = if slot < 5 {
                    (1000 * row + slot + 1) as f32
                } else {
                    0.0
                };
                assert_eq!(value.abs(), expected, "row {row} slot {slot}");
            }
        }
    }

    #[test]
    fn the_graph_mask_closes_the_slots_not_filled() {
        let cache = numbered_cache(2, 8);
        // 3 filled slots (row 1 left-padded by one) and 2 new tokens.
        let mask = ndarray::array![[0.0, 0.0, 0.0, 0.0, 0.0], [MASKED, 0.0, 0.0, 0.0, 0.0]];
        let graph = cache.slot_mask(mask.view(), 3);
        assert_eq!(graph.dim(), (2, 8 + 2));
        let open = |row: usize| -> Vec<usize> {
            (0..graph.ncols())
                .filter(|&col| graph[[row, col]] == 0.0)
                .collect()
        };
        assert_eq!(open(0), vec![0, 1, 2, 8, 9]);
        assert_eq!(open(1), vec![1, 2, 8, 9]);
    }

    #[test]
    fn parts_fill_their_rows_of_a_batch_and_must_match_its_shape() {
        let part = numbered_cache(2, 4);
        let (keys, values) = part.views();
        let mut batch = BatchKv::new(5);
        batch.fill(3, &keys, &values).expect("fits");
        let other = numbered_cache(1, 5);
        let (other_keys, other_values) = other.views();
        assert!(batch.fill(4, &keys, &values).is_err(), "past the last row");
        assert!(
            batch.fill(0, &other_keys, &other_values).is_err(),
            "other slots"
        );
        let whole = SelfAttentionCache::from_batch(batch);
        assert_eq!((whole.rows(), whole.slots()), (5, 4));
        assert_eq!(whole.keys[0][[3, 1, 2, 0]], 3.0);
        assert_eq!(whole.values[1][[4, 0, 3, 2]], -1004.0);
        assert_eq!(
            whole.keys[1][[2, 0, 0, 0]],
            0.0,
            "rows not filled stay zero"
        );
    }

    #[test]
    fn selected_rows_keep_their_slots_and_unknown_rows_are_refused() {
        let cache = numbered_cache(3, 4);
        let selected = cache.select_rows(&[2, 2, 0]).expect("rows held");
        assert_eq!((selected.rows(), selected.slots()), (3, 4));
        assert_eq!(selected.keys[1][[0, 1, 3, 2]], 2004.0);
        assert_eq!(selected.keys[1][[1, 0, 0, 0]], 2001.0);
        assert_eq!(selected.values[0][[2, 0, 1, 0]], -2.0);
        assert!(cache.select_rows(&[3]).is_err());
    }
}
