//! Whisper's byte-level BPE tokenizer, loaded from the model's `tokenizer.json`.

use crate::model::ModelSpec;
use crate::WhisperError;
use std::path::Path;

/// Maps between text and token ids, and knows which ids are special.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eot: u32,
    timestamp_begin: u32,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; special ids come from the model spec.
    pub fn from_file(path: &Path, spec: &ModelSpec) -> Result<Self, WhisperError> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|err| WhisperError::Tokenizer {
                reason: format!("cannot load {}: {err}", path.display()),
            })?;
        Ok(Self {
            inner,
            eot: spec.eot,
            timestamp_begin: spec.timestamp_begin,
        })
    }

    /// Token ids of `text`, without any special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WhisperError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|err| WhisperError::Tokenizer {
                reason: err.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `tokens`, ignoring special and timestamp tokens (as Whisper does).
    pub fn decode(&self, tokens: &[u32]) -> Result<String, WhisperError> {
        let text_tokens: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.eot).collect();
        self.inner
            .decode(&text_tokens, false)
            .map_err(|err| WhisperError::Tokenizer {
                reason: err.to_string(),
            })
    }

    /// Whether `token` is a timestamp token.
    pub fn is_timestamp(&self, token: u32) -> bool {
        token >= self.timestamp_begin
    }

    /// Id of a token string such as `<|en|>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
