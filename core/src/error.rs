//! Error classification shared by every crate's error enum.
//!
//! Retry and dead-letter routing branch on the class, never on message text.

use serde::{Deserialize, Serialize};

/// Who is at fault for a failure, and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "class")]
pub enum ErrorClass {
    /// The input itself is bad (corrupt audio, invalid option); retrying cannot help.
    UserInput,
    /// An external service or resource failed; `retryable` says whether a retry may succeed.
    External { retryable: bool },
    /// A bug or a broken deployment (missing model, failed inference).
    Internal,
}

impl ErrorClass {
    /// Whether a retry of the same work can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::External { retryable: true })
    }

    /// A short stable label, suitable for a bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::UserInput => "user_input",
            Self::External { .. } => "external",
            Self::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retryable_external_errors_retry() {
        assert!(ErrorClass::External { retryable: true }.is_retryable());
        assert!(!ErrorClass::External { retryable: false }.is_retryable());
        assert!(!ErrorClass::UserInput.is_retryable());
        assert!(!ErrorClass::Internal.is_retryable());
    }
}
