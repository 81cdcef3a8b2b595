//! The content hash that identifies a recording: hex SHA-256 of its encoded
//! bytes. One implementation, computed at once ([`content_hash`]) or over a
//! stream of chunks ([`ContentHasher`], an upload spooled to disk), with the
//! same result.

use sha2::{Digest, Sha256};

/// The hex SHA-256 of `bytes` (64 lowercase hex digits).
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hasher = ContentHasher::default();
    hasher.update(bytes);
    hasher.finish()
}

/// [`content_hash`] over bytes that arrive in pieces.
#[derive(Debug, Clone, Default)]
pub struct ContentHasher(Sha256);

impl ContentHasher {
    /// Adds the next piece of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything added (as [`content_hash`] of it all).
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hash_as_the_whole() {
        let whole = content_hash(b"the same audio");
        let mut hasher = ContentHasher::default();
        for piece in [&b"the "[..], b"", b"same au", b"dio"] {
            hasher.update(piece);
        }
        assert_eq!(hasher.finish(), whole);
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
