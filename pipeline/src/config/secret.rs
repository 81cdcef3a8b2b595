//! Values that must never reach a log: the secret wrapper. (URLs are
//! redacted by `mmt_core::redact`, the one redaction of every crate.)

use std::fmt;

use serde::{Serialize, Serializer};

/// What a redacted value prints as.
pub const REDACTED: &str = "[REDACTED]";

/// A secret string. `Debug` and `Serialize` print [`REDACTED`]; there is no
/// `Display`. Read the value with [`Secret::expose`], only where it is used.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: pass it to the code that needs it, never to a formatter.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in characters (the length of a secret is not secret enough to hide
    /// from validation, but it is never printed).
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_serialize_are_redacted() {
        let secret = Secret::new("correct horse battery staple");
        assert_eq!(format!("{secret:?}"), "Secret([REDACTED])");
        assert_eq!(
            serde_json::to_string(&secret).ok().as_deref(),
            Some("\"[REDACTED]\"")
        );
        assert_eq!(secret.expose(), "correct horse battery staple");
        assert_eq!(secret.char_len(), 28);
    }
}
