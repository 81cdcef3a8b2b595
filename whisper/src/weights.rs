//! Model weights, loaded once per process and shared by the sessions of every worker.
//!
//! Each worker runs sessions of its own (a session runs one call at a time), and
//! a session that reads its weights from the model file keeps a private copy:
//! for tiny's fp32 decoder that is 190 MB per worker. The exporter stores each
//! graph's weights apart (`<graph>.weights`, indexed by `<graph>.weights.json`;
//! see docs/model-format.md), so they are read here once into tensors that
//! every session of the process takes as its initializers. A shared container
//! of prepacked weights does the same for the copies ONNX Runtime rearranges
//! for its matrix kernels.

use crate::model::read_export_json;
use crate::WhisperError;
use ort::session::builder::PrepackedWeights;
use ort::value::{DynValue, Tensor};
use serde::Deserialize;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// `<graph>.weights.json`: where each weight of a graph lies in its weights file.
#[derive(Debug, Deserialize)]
struct WeightsIndex {
    /// The weights file, relative to the index.
    file: String,
    tensors: Vec<IndexedTensor>,
}

#[derive(Debug, Deserialize)]
struct IndexedTensor {
    name: String,
    #[serde(rename = "type")]
    element: ElementType,
    shape: Vec<usize>,
    /// Byte offset in the weights file.
    offset: u64,
    /// Bytes, little-endian, row-major.
    length: u64,
}

/// The element types the exporter writes.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ElementType {
    Float32,
    Float16,
    Int8,
    Uint8,
    Int32,
    Int64,
}

impl ElementType {
    fn size(self) -> usize {
        match self {
            Self::Int8 | Self::Uint8 => 1,
            Self::Float16 => 2,
            Self::Float32 | Self::Int32 => 4,
            Self::Int64 => 8,
        }
    }
}

/// The weights of one graph, by initializer name.
#[derive(Debug)]
pub struct GraphWeights {
    tensors: Vec<(String, Arc<DynValue>)>,
    bytes: u64,
    quantized: bool,
}

impl GraphWeights {
    /// Reads the weights `index` lists (a `<graph>.weights.json`).
    pub fn load(index: &Path) -> Result<Self, WhisperError> {
        let listing: WeightsIndex = read_export_json(index)?;
        let path = index.with_file_name(&listing.file);
        let io = |source| WhisperError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let file_length = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let mut tensors = Vec::with_capacity(listing.tensors.len());
        let mut bytes = 0;
        let mut quantized = false;
        for entry in &listing.tensors {
            quantized |= matches!(entry.element, ElementType::Int8 | ElementType::Uint8);
            check_extent(entry, file_length).map_err(|reason| invalid(index, reason))?;
            let data = WeightData::read(&mut reader, entry).map_err(io)?;
            let value = data.into_tensor(entry.shape.clone())?;
            tensors.push((entry.name.clone(), Arc::new(value)));
            bytes += entry.length;
        }
        Ok(Self {
            tensors,
            bytes,
            quantized,
        })
    }

    /// Each weight's initializer name and tensor.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Arc<DynValue>)> {
        self.tensors
            .iter()
            .map(|(name, value)| (name.as_str(), value))
    }

    /// Bytes of weight data held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether any weight is 8-bit integer (a quantized export).
    pub fn is_quantized(&self) -> bool {
        self.quantized
    }
}

/// The encoder's and decoder's weights of one model folder, and the prepacked
/// copies ONNX Runtime makes of them.
#[derive(Debug)]
pub struct ModelWeights {
    pub encoder: GraphWeights,
    pub decoder: GraphWeights,
    pub prepacked: PrepackedWeights,
}

impl ModelWeights {
    /// Loads `encoder.weights.json` and `decoder.weights.json` of `model_dir`.
    pub fn load(model_dir: &Path) -> Result<Self, WhisperError> {
        Ok(Self {
            encoder: GraphWeights::load(&model_dir.join("encoder.weights.json"))?,
            decoder: GraphWeights::load(&model_dir.join("decoder.weights.json"))?,
            prepacked: PrepackedWeights::new(),
        })
    }

    /// The weights of `model_dir`, loaded by the first caller and shared with
    /// every later one while any of them holds them.
    pub fn shared(model_dir: &Path) -> Result<Arc<Self>, WhisperError> {
        static LOADED: Mutex<Vec<(PathBuf, Weak<ModelWeights>)>> = Mutex::new(Vec::new());
        let key = model_dir
            .canonicalize()
            .unwrap_or_else(|_| model_dir.to_owned());
        // Held while loading, so that workers starting together load once.
        let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        loaded.retain(|(_, weights)| weights.strong_count() > 0);
        let held = loaded
            .iter()
            .filter(|(dir, _)| *dir == key)
            .find_map(|(_, weights)| weights.upgrade());
        if let Some(weights) = held {
            return Ok(weights);
        }
        let weights = Arc::new(Self::load(model_dir)?);
        tracing::debug!(
            model_dir = %model_dir.display(),
            encoder_bytes = weights.encoder.bytes(),
            decoder_bytes = weights.decoder.bytes(),
            "model weights loaded"
        );
        loaded.push((key, Arc::downgrade(&weights)));
        Ok(weights)
    }
}

fn invalid(index: &Path, reason: impl std::fmt::Display) -> WhisperError {
    WhisperError::ModelUnavailable {
        reason: format!(
            "{} is invalid: {reason}; run `make setup` to re-export",
            index.display()
        ),
    }
}

/// The entry's byte range must hold exactly its shape's elements and lie in the file.
fn check_extent(entry: &IndexedTensor, file_length: u64) -> Result<(), String> {
    let elements: usize = entry.shape.iter().product();
    let expected = elements as u64 * entry.element.size() as u64;
    if entry.length != expected {
        return Err(format!(
            "{} is {} bytes, its shape {:?} needs {expected}",
            entry.name, entry.length, entry.shape
        ));
    }
    if entry.offset.saturating_add(entry.length) > file_length {
        return Err(format!("{} lies past the end of its file", entry.name));
    }
    Ok(())
}

/// One weight's values, as read from the file.
#[derive(Debug, PartialEq)]
enum WeightData {
    Float32(Vec<f32>),
    Float16(Vec<half::f16>),
    Int8(Vec<i8>),
    Uint8(Vec<u8>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
}

impl WeightData {
    /// Reads `entry`'s byte range of the weights file.
    fn read(reader: &mut (impl Read + Seek), entry: &IndexedTensor) -> std::io::Result<Self> {
        reader.seek(SeekFrom::Start(entry.offset))?;
        let bytes = &mut reader.take(entry.length);
        Ok(match entry.element {
            ElementType::Float32 => Self::Float32(read_values(bytes, f32::from_le_bytes)?),
            ElementType::Float16 => Self::Float16(read_values(bytes, |le| {
                half::f16::from_bits(u16::from_le_bytes(le))
            })?),
            ElementType::Int8 => Self::Int8(read_values(bytes, i8::from_le_bytes)?),
            ElementType::Uint8 => Self::Uint8(read_values(bytes, u8::from_le_bytes)?),
            ElementType::Int32 => Self::Int32(read_values(bytes, i32::from_le_bytes)?),
            ElementType::Int64 => Self::Int64(read_values(bytes, i64::from_le_bytes)?),
        })
    }

    /// An ONNX Runtime tensor owning these values (no copy).
    fn into_tensor(self, shape: Vec<usize>) -> Result<DynValue, WhisperError> {
        fn tensor<T>(shape: Vec<usize>, values: Vec<T>) -> Result<DynValue, WhisperError>
        where
            T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
        {
            Ok(Tensor::from_array((shape, values))?.into_dyn())
        }
        match self {
            Self::Float32(values) => tensor(shape, values),
            Self::Float16(values) => tensor(shape, values),
            Self::Int8(values) => tensor(shape, values),
            Self::Uint8(values) => tensor(shape, values),
            Self::Int32(values) => tensor(shape, values),
            Self::Int64(values) => tensor(shape, values),
        }
    }
}

/// Reads every `N`-byte value `reader` holds, a block at a time (so no second
/// copy of a large weight exists while it is read).
fn read_values<T, const N: usize>(
    reader: &mut impl Read,
    decode: impl Fn([u8; N]) -> T,
) -> std::io::Result<Vec<T>> {
    const BLOCK_BYTES: usize = 1 << 16;
    let mut values = Vec::new();
    let mut block = vec![0u8; BLOCK_BYTES - BLOCK_BYTES % N];
    loop {
        let filled = read_full(reader, &mut block)?;
        if filled % N != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "weights file ends inside a value",
            ));
        }
        values.extend(
            block[..filled]
                .chunks_exact(N)
                .filter_map(|bytes| <[u8; N]>::try_from(bytes).ok())
                .map(&decode),
        );
        if filled < block.len() {
            return Ok(values);
        }
    }
}

/// Fills `block` as far as `reader` goes; returns how many bytes it holds.
fn read_full(reader: &mut impl Read, block: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_model(dir: &Path, index: &str, data: &[u8]) -> PathBuf {
        std::fs::File::create(dir.join("g.weights"))
            .and_then(|mut file| file.write_all(data))
            .expect("write weights");
        let path = dir.join("g.weights.json");
        std::fs::write(&path, index).expect("write index");
        path
    }

    fn entry(element: &str, shape: &str, offset: u64, length: u64) -> IndexedTensor {
        serde_json::from_str(&format!(
            r#"{{"name": "w", "type": "{element}", "shape": {shape}, "offset": {offset}, "length": {length}}}"#
        ))
        .expect("entry")
    }

    #[test]
    fn reads_each_weight_from_its_byte_range() {
        let mut data = Vec::new();
        for value in [1.5f32, -2.0, 3.25] {
            data.extend(value.to_le_bytes());
        }
        data.extend([7u8, 0xFF]); // int8: 7, -1
        data.extend(half::f16::from_f32(0.5).to_bits().to_le_bytes());
        data.extend((-3i64).to_le_bytes());
        let mut file = std::io::Cursor::new(data);
        let read = |file: &mut std::io::Cursor<Vec<u8>>, entry| {
            WeightData::read(file, &entry).expect("read")
        };
        assert_eq!(
            read(&mut file, entry("float32", "[3]", 0, 12)),
            WeightData::Float32(vec![1.5, -2.0, 3.25])
        );
        assert_eq!(
            read(&mut file, entry("int8", "[1, 2]", 12, 2)),
            WeightData::Int8(vec![7, -1])
        );
        assert_eq!(
            read(&mut file, entry("float16", "[]", 14, 2)),
            WeightData::Float16(vec![half::f16::from_f32(0.5)])
        );
        assert_eq!(
            read(&mut file, entry("int64", "[1]", 16, 8)),
            WeightData::Int64(vec![-3])
        );
    }

    #[test]
    fn reads_weights_larger_than_one_block() {
        let values: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut file = std::io::Cursor::new(data);
        let read = WeightData::read(&mut file, &entry("float32", "[40000]", 0, 160_000));
        assert_eq!(read.expect("read"), WeightData::Float32(values));
    }

    /// The error of loading a one-weight index over `data`.
    fn load_error(weight: &str, data: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = format!(r#"{{"file": "g.weights", "tensors": [{weight}]}}"#);
        GraphWeights::load(&write_model(dir.path(), &index, data))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_length_that_does_not_match_the_shape_is_refused() {
        let err = load_error(
            r#"{"name": "w", "type": "float32", "shape": [4], "offset": 0, "length": 12}"#,
            &[0; 16],
        );
        assert!(err.contains("needs 16"), "{err}");
    }

    #[test]
    fn a_range_past_the_end_of_the_file_is_refused() {
        let err = load_error(
            r#"{"name": "w", "type": "float32", "shape": [4], "offset": 8, "length": 16}"#,
            &[0; 16],
        );
        assert!(err.contains("past the end"), "{err}");
    }

    #[test]
    fn an_unknown_element_type_is_refused() {
        let err = load_error(
            r#"{"name": "w", "type": "complex64", "shape": [1], "offset": 0, "length": 8}"#,
            &[0; 8],
        );
        assert!(err.contains("invalid"), "{err}");
    }
}
