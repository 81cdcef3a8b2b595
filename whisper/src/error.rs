//! The one error type of the Whisper crate, classed by who is at fault.

use mmt_core::ErrorClass;
use std::path::PathBuf;

/// Everything that can go wrong between an audio file and its transcript.
///
/// Messages name files and reasons, never transcript text or audio content.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    /// The input could not be read from disk.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not audio in a supported container/codec, or are corrupt.
    #[error("not decodable audio: {reason}")]
    InvalidAudio { reason: String },
    /// The recording is longer than the maximum recording length; decoding
    /// stopped there (or never started when the container declared it).
    #[error("the recording is longer than the maximum recording length of {limit_seconds} s{}", declared_note(*.declared_seconds))]
    TooLong {
        limit_seconds: u32,
        /// The duration the container declared, when it was that declaration.
        declared_seconds: Option<u64>,
    },
    /// The audio decoded but holds no samples.
    #[error("audio is empty")]
    EmptyAudio,
    /// The model directory or ONNX Runtime library is missing or unusable.
    #[error("model unavailable: {reason}")]
    ModelUnavailable { reason: String },
    /// ONNX Runtime failed while running the model.
    #[error("inference failed: {reason}")]
    Inference { reason: String },
    /// The tokenizer could not be loaded or failed to decode.
    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },
    /// A caller passed options that cannot work (e.g. beam size 0).
    #[error("invalid option: {reason}")]
    InvalidOption { reason: String },
}

impl WhisperError {
    /// Who is at fault, and whether retrying can help; DLQ routing branches on this.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::InvalidAudio { .. }
            | Self::TooLong { .. }
            | Self::EmptyAudio
            | Self::InvalidOption { .. } => ErrorClass::UserInput,
            Self::Io { .. } => ErrorClass::External { retryable: true },
            Self::ModelUnavailable { .. } | Self::Tokenizer { .. } | Self::Inference { .. } => {
                ErrorClass::Internal
            }
        }
    }
}

fn declared_note(declared_seconds: Option<u64>) -> String {
    declared_seconds.map_or_else(
        || " (stopped decoding there)".to_owned(),
        |seconds| format!(" (its header declares {seconds} s)"),
    )
}

impl From<ort::Error> for WhisperError {
    fn from(err: ort::Error) -> Self {
        Self::Inference {
            reason: err.to_string(),
        }
    }
}
