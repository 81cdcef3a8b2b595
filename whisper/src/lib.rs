//! Whisper speech-to-text on ONNX Runtime.
//!
//! The pieces, in the order audio flows through them:
//! [`audio`] decodes a file to 16 kHz mono samples, [`mel`] turns samples into
//! Whisper's log-mel features, [`model`] runs the exported ONNX encoder and
//! decoder, [`decoding`] applies Whisper's decoding rules (greedy or beam
//! search, suppressed tokens, timestamps, no-speech detection), and
//! [`weights`] loads the model's weights once for every worker's sessions;
//! [`transcribe`] drives long-form audio over 30 s windows, batching windows
//! of several inputs into one model call; [`packing`] lets short inputs share
//! a window. [`tokenizer`] maps token ids to text; [`work`] counts what the
//! model did, and [`cost`] what that work costs in arithmetic.

pub mod audio;
pub mod cost;
pub mod decoding;
pub mod error;
pub mod mel;
pub mod model;
pub mod packing;
pub mod tokenizer;
pub mod transcribe;
pub mod weights;
pub mod work;

pub use error::WhisperError;
pub use model::ModelOptions;
pub use transcribe::{Continued, Engine, TranscribeOptions, DEFAULT_STREAM_CHUNKS};
pub use work::WorkCounters;
