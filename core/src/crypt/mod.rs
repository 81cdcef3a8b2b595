//! Encryption at rest: envelope encryption with AES-256-GCM (RustCrypto).
//!
//! Every record (a transcript, an upload) is sealed under a fresh 256-bit
//! data key; the data key is wrapped (encrypted) by a key-encryption key that
//! a [`KeyProvider`] holds and is stored beside the ciphertext with that key's
//! id. The provider is the local keyring file of `MMT_ENCRYPTION_KEYS`
//! ([`Keyring`], the embedded default); a KMS such as Vault's transit engine
//! implements the same trait (wrap and unwrap a data key;
//! `mmt_connectors::vault::TransitKeyProvider`). Rotating adds a
//! key-encryption key: new writes use it, data under the older (still
//! active) keys stays readable and is rewrapped by `mmt keys reencrypt`. Data
//! under a retired key is refused with [`CryptError::RetiredKey`].
//!
//! Two formats, both versioned and naming their key id in a header
//! (`version (1) | key id length (1) | key id | wrapped key length (2, BE) |
//! wrapped key`):
//! - a sealed value ([`Sealer::seal_text`]) for a column of the job store:
//!   [`SEALED_TEXT_PREFIX`] then base64 of `header | nonce (12) | ciphertext
//!   and tag`. Text without the prefix is a value written before encryption
//!   was on, read as clear text ([`Opened::Clear`]).
//! - a sealed stream ([`stream`]) for files (the upload spool), sealed in
//!   segments so that a file of any size costs constant memory.
//!
//! Every AAD holds the header and a context naming what the value belongs to
//! (tenant and job id for a transcript): a ciphertext copied into another
//! row, or given another key id, does not open ([`CryptError::Tampered`]).

mod keyring;
pub mod stream;

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::ErrorClass;

pub use keyring::{KeyState, KeySummary, Keyring, WatchedKeyring, KEYRING_VERSION};

/// The variable naming the keyring file.
pub const KEYS_VARIABLE: &str = "MMT_ENCRYPTION_KEYS";

/// What a sealed value in a text column starts with.
pub const SEALED_TEXT_PREFIX: &str = "mmtenc:";

/// The format version this build writes and reads.
const FORMAT_VERSION: u8 = 1;

/// Bytes of a data key and of a key-encryption key (AES-256).
pub const KEY_BYTES: usize = 32;

/// Bytes of an AES-GCM nonce.
const NONCE_BYTES: usize = 12;

/// Bytes of an AES-GCM tag.
const TAG_BYTES: usize = 16;

/// Longest key id, in bytes (its length is one byte of the header).
const KEY_ID_MAX: usize = 64;

/// Domain separation of the AADs: a value sealed as one kind never opens as another.
const RECORD_DOMAIN: &[u8] = b"mmt-record\0";

/// Why a value could not be sealed or opened. Messages name key ids, never
/// the data or its context (which may hold PHI).
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The keyring file is missing, unreadable, malformed or holds a weak key.
    #[error("encryption keyring: {reason}")]
    Keyring { reason: String },
    /// The value names a key the keyring does not hold.
    #[error("the data is encrypted under key {key_id:?}, which the keyring does not hold")]
    UnknownKey { key_id: String },
    /// The value names a retired key: its data is refused until the key is
    /// made active again (and then re-encrypted).
    #[error(
        "the data is encrypted under retired key {key_id:?}: it is refused; make the key \
         usable again (keyring: set it active; Vault transit: lower the key's \
         min_decryption_version) and run `mmt keys reencrypt` before retiring it"
    )]
    RetiredKey { key_id: String },
    /// The key service (Vault's transit engine) failed or refused a request
    /// for a reason other than the data: down, a refused token, a missing key.
    #[error("the key service (Vault transit) {during}: {reason}")]
    KeyService {
        during: &'static str,
        reason: String,
        retryable: bool,
    },
    /// Authentication failed: the ciphertext, its header or its context was
    /// changed (or it belongs to another record, or the key is not the one
    /// that sealed it).
    #[error(
        "{what} failed authentication: it was altered, truncated or moved from another record"
    )]
    Tampered { what: &'static str },
    /// Not a value of a format this build reads.
    #[error("{what} is not in a known encrypted format: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// The operating system's random source failed.
    #[error("the system random source failed: {0}")]
    Random(String),
    /// Reading or writing a file failed.
    #[error("encryption I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl CryptError {
    /// Who is at fault, and whether a retry can help: a broken keyring is the
    /// operator's configuration, altered or unknown data is not fixed by retrying.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Keyring { .. } => ErrorClass::UserInput,
            Self::UnknownKey { .. }
            | Self::RetiredKey { .. }
            | Self::Tampered { .. }
            | Self::Malformed { .. } => ErrorClass::Internal,
            Self::Random(_) => ErrorClass::Internal,
            Self::KeyService { retryable, .. } => ErrorClass::External {
                retryable: *retryable,
            },
            Self::Io(_) => ErrorClass::External { retryable: true },
        }
    }

    fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            reason: reason.into(),
        }
    }
}

/// A 256-bit key, wiped from memory when dropped.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_BYTES]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        fill_random(&mut key[..])?;
        Ok(Self(key))
    }

    /// A key from its bytes (a provider's unwrapped key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        if bytes.len() != KEY_BYTES {
            return Err(CryptError::malformed(
                "a data key",
                format!("{} bytes, not {KEY_BYTES}", bytes.len()),
            ));
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The key's bytes (to wrap it).
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.0))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(***)")
    }
}

/// A data key wrapped by a key-encryption key, and that key's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The key-encryption key's id.
    pub key_id: String,
    /// The wrapped data key (the provider's own format).
    pub blob: Vec<u8>,
}

/// Holds key-encryption keys and wraps data keys with them: the local
/// [`Keyring`], or a KMS (Vault's transit engine: wrap = `encrypt`, unwrap =
/// `decrypt` of the data key under a named transit key).
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The id of the key new data keys are wrapped with.
    fn current_key_id(&self) -> String;
    /// Wraps `data_key` with the current key.
    fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, CryptError>;
    /// Unwraps a data key; [`CryptError::UnknownKey`] or
    /// [`CryptError::RetiredKey`] when its key cannot be used,
    /// [`CryptError::Tampered`] when the wrapped key was altered.
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptError>;
}

/// A value read from a text column: sealed (and now opened) or clear text
/// written before encryption was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The value was sealed under the key `key_id`.
    Sealed { text: String, key_id: String },
    /// The value was stored in clear.
    Clear(String),
}

impl Opened {
    /// The value's text.
    pub fn into_text(self) -> String {
        match self {
            Self::Sealed { text, .. } | Self::Clear(text) => text,
        }
    }
}

/// What a re-encryption pass over stored data did (`mmt keys reencrypt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Records looked at.
    pub examined: u64,
    /// Records re-sealed under the current key (clear ones sealed).
    pub resealed: u64,
    /// Jobs whose record could not be opened (left as they are).
    pub failed: Vec<crate::job::JobId>,
}

/// Seals and opens values with a [`KeyProvider`]'s keys; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sealer {
    provider: Arc<dyn KeyProvider>,
}

impl Sealer {
    /// A sealer over `provider`.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self { provider }
    }

    /// The id of the key new values are sealed under.
    pub fn current_key_id(&self) -> String {
        self.provider.current_key_id()
    }

    /// A fresh data key, and the header that carries it wrapped.
    fn new_data_key(&self) -> Result<(DataKey, Vec<u8>), CryptError> {
        let data_key = DataKey::generate()?;
        let wrapped = self.provider.wrap(&data_key)?;
        let header = encode_header(&wrapped)?;
        Ok((data_key, header))
    }

    /// `plaintext` sealed under a fresh data key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptError> {
        let (data_key, header) = self.new_data_key()?;
        let mut nonce = [0u8; NONCE_BYTES];
        fill_random(&mut nonce)?;
        let aad = record_aad(&header, context);
        let ciphertext = data_key
            .cipher()
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptError::malformed("a value", "too long to seal"))?;
        let mut sealed = header;
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// The plaintext of a value [`Sealer::seal`] made with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptError> {
        let (wrapped, header_len) = decode_header(sealed, "a sealed value")?;
        let (header, rest) = sealed.split_at(header_len);
        if rest.len() < NONCE_BYTES + TAG_BYTES {
            return Err(CryptError::Tampered {
                what: "a sealed value",
            });
        }
        let data_key = self.provider.unwrap(&wrapped)?;
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| CryptError::Tampered {
            what: "a sealed value",
        })?;
        let aad = record_aad(header, context);
        data_key
            .cipher()
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptError::Tampered {
                what: "a sealed value",
            })
    }

    /// `text` sealed for a text column: [`SEALED_TEXT_PREFIX`] and base64.
    pub fn seal_text(&self, text: &str, context: &[u8]) -> Result<String, CryptError> {
        let sealed = self.seal(text.as_bytes(), context)?;
        let mut out = String::from(SEALED_TEXT_PREFIX);
        base64::engine::general_purpose::STANDARD.encode_string(sealed, &mut out);
        Ok(out)
    }

    /// A text column's value opened: sealed values are checked and decrypted,
    /// values without the prefix are clear text from before encryption.
    pub fn open_text(&self, stored: &str, context: &[u8]) -> Result<Opened, CryptError> {
        let Some(sealed) = decode_sealed_text(stored)? else {
            return Ok(Opened::Clear(stored.to_owned()));
        };
        let (wrapped, _) = decode_header(&sealed, "a sealed value")?;
        let plaintext = Zeroizing::new(self.open(&sealed, context)?);
        let text = String::from_utf8(plaintext.to_vec()).map_err(|_| {
            CryptError::malformed("a sealed value", "its plaintext is not UTF-8 text")
        })?;
        Ok(Opened::Sealed {
            text,
            key_id: wrapped.key_id,
        })
    }
}

/// The key id a text column's value is sealed under; `None` for clear text.
/// Reads the header only (no key needed): for re-encryption and reports.
pub fn sealed_text_key_id(stored: &str) -> Result<Option<String>, CryptError> {
    let Some(sealed) = decode_sealed_text(stored)? else {
        return Ok(None);
    };
    Ok(Some(decode_header(&sealed, "a sealed value")?.0.key_id))
}

/// The bytes of a sealed text value; `None` when `stored` is clear text.
fn decode_sealed_text(stored: &str) -> Result<Option<Vec<u8>>, CryptError> {
    let Some(encoded) = stored.strip_prefix(SEALED_TEXT_PREFIX) else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map(Some)
        .map_err(|_| CryptError::malformed("a sealed value", "not base64"))
}

fn record_aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(RECORD_DOMAIN.len() + header.len() + context.len());
    aad.extend_from_slice(RECORD_DOMAIN);
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// Whether `id` may name a key: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= KEY_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `version | key id length | key id | wrapped length (BE u16) | wrapped`.
fn encode_header(wrapped: &WrappedKey) -> Result<Vec<u8>, CryptError> {
    if !is_valid_key_id(&wrapped.key_id) {
        return Err(CryptError::Keyring {
            reason: "a key id must be 1 to 64 letters, digits, '.', '_' or '-'".into(),
        });
    }
    let wrapped_len = u16::try_from(wrapped.blob.len())
        .map_err(|_| CryptError::malformed("a wrapped key", "longer than 65535 bytes"))?;
    let id = wrapped.key_id.as_bytes();
    let mut header = Vec::with_capacity(4 + id.len() + wrapped.blob.len());
    header.push(FORMAT_VERSION);
    // Checked above: at most KEY_ID_MAX (64) bytes.
    header.push(id.len() as u8);
    header.extend_from_slice(id);
    header.extend_from_slice(&wrapped_len.to_be_bytes());
    header.extend_from_slice(&wrapped.blob);
    Ok(header)
}

/// The wrapped key of a header at the start of `bytes`, and the header's length.
fn decode_header(bytes: &[u8], what: &'static str) -> Result<(WrappedKey, usize), CryptError> {
    let truncated = || CryptError::malformed(what, "its header is truncated");
    let (&version, rest) = bytes.split_first().ok_or_else(truncated)?;
    if version != FORMAT_VERSION {
        return Err(CryptError::malformed(
            what,
            format!("format version {version}, this build reads {FORMAT_VERSION}"),
        ));
    }
    let (&id_len, rest) = rest.split_first().ok_or_else(truncated)?;
    let id_len = usize::from(id_len);
    let id = rest.get(..id_len).ok_or_else(truncated)?;
    let key_id = std::str::from_utf8(id)
        .ok()
        .filter(|id| is_valid_key_id(id))
        .ok_or_else(|| CryptError::malformed(what, "its key id is not a valid id"))?
        .to_owned();
    let rest = &rest[id_len..];
    let len_bytes: [u8; 2] = rest
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(truncated)?;
    let wrapped_len = usize::from(u16::from_be_bytes(len_bytes));
    let blob = rest.get(2..2 + wrapped_len).ok_or_else(truncated)?.to_vec();
    let header_len = 1 + 1 + id_len + 2 + wrapped_len;
    Ok((WrappedKey { key_id, blob }, header_len))
}

/// Fills `out` from the operating system's random source.
fn fill_random(out: &mut [u8]) -> Result<(), CryptError> {
    getrandom::fill(out).map_err(|err| CryptError::Random(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> (Sealer, Arc<Keyring>) {
        let keyring = Arc::new(Keyring::generate().unwrap());
        (Sealer::new(keyring.clone()), keyring)
    }

    #[test]
    fn a_value_round_trips_and_hides_its_text() {
        let (sealer, keyring) = sealer();
        let text = r#"{"text":"patient reports chest pain"}"#;
        let stored = sealer.seal_text(text, b"tenant\0job-1").unwrap();
        assert!(stored.starts_with(SEALED_TEXT_PREFIX));
        assert!(!stored.contains("chest"));
        assert_eq!(
            sealed_text_key_id(&stored).unwrap(),
            Some(keyring.current_key_id())
        );
        let opened = sealer.open_text(&stored, b"tenant\0job-1").unwrap();
        assert_eq!(
            opened,
            Opened::Sealed {
                text: text.to_owned(),
                key_id: keyring.current_key_id()
            }
        );
        // Two seals of one value differ (fresh data key and nonce).
        assert_ne!(stored, sealer.seal_text(text, b"tenant\0job-1").unwrap());
    }

    #[test]
    fn clear_text_from_before_encryption_is_read_as_it_is() {
        let (sealer, _) = sealer();
        let opened = sealer.open_text(r#"{"text":"x"}"#, b"ctx").unwrap();
        assert_eq!(opened, Opened::Clear(r#"{"text":"x"}"#.to_owned()));
        assert_eq!(sealed_text_key_id(r#"{"text":"x"}"#).unwrap(), None);
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let (sealer, _) = sealer();
        let mut sealed = sealer.seal(b"hypertension follow-up", b"ctx").unwrap();
        for index in [sealed.len() - 1, sealed.len() - 20, sealed.len() / 2] {
            let original = sealed[index];
            sealed[index] ^= 0x01;
            let err = sealer.open(&sealed, b"ctx").unwrap_err();
            assert!(
                matches!(
                    err,
                    CryptError::Tampered { .. } | CryptError::Malformed { .. }
                ),
                "byte {index}: {err}"
            );
            sealed[index] = original;
        }
        assert_eq!(
            sealer.open(&sealed, b"ctx").unwrap(),
            b"hypertension follow-up"
        );
        // Truncated.
        let err = sealer
            .open(&sealed[..sealed.len() - 1], b"ctx")
            .unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
    }

    #[test]
    fn a_value_moved_to_another_record_is_refused() {
        let (sealer, _) = sealer();
        let stored = sealer.seal_text("note", b"clinic-a\0job-1").unwrap();
        let err = sealer.open_text(&stored, b"clinic-a\0job-2").unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
        assert!(!err.to_string().contains("job-2"), "no context in errors");
    }

    #[test]
    fn a_wrong_or_unknown_key_id_is_refused() {
        let (sealer, keyring) = sealer();
        let sealed = sealer.seal(b"note", b"ctx").unwrap();
        let id = keyring.current_key_id();
        // Another key id of the same keyring: the wrapped key does not open under it.
        let mut rotated = (*keyring).clone();
        let other = rotated.rotate().unwrap();
        assert_eq!(other.len(), id.len(), "same length: only the id changes");
        let relabelled = [&sealed[..2], other.as_bytes(), &sealed[2 + id.len()..]].concat();
        let err = Sealer::new(Arc::new(rotated))
            .open(&relabelled, b"ctx")
            .unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
        // A key id the keyring does not hold.
        let mut unknown = sealed.clone();
        unknown[2] = if unknown[2] == b'z' { b'y' } else { b'z' };
        let err = sealer.open(&unknown, b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains("does not hold"));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_retired_keys_are_refused() {
        let mut keyring = Keyring::generate().unwrap();
        let first = keyring.current_key_id();
        let old = Sealer::new(Arc::new(keyring.clone()))
            .seal_text("old note", b"ctx")
            .unwrap();
        let second = keyring.rotate().unwrap();
        assert_ne!(first, second);
        let sealer = Sealer::new(Arc::new(keyring.clone()));
        assert_eq!(sealer.current_key_id(), second);
        let new = sealer.seal_text("new note", b"ctx").unwrap();
        assert_eq!(sealed_text_key_id(&new).unwrap(), Some(second.clone()));
        assert_eq!(
            sealer.open_text(&old, b"ctx").unwrap().into_text(),
            "old note"
        );

        keyring.retire(&first).unwrap();
        let sealer = Sealer::new(Arc::new(keyring));
        let err = sealer.open_text(&old, b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::RetiredKey { .. }), "{err}");
        assert!(err.to_string().contains("retired key"));
        assert_eq!(
            sealer.open_text(&new, b"ctx").unwrap().into_text(),
            "new note"
        );
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let (sealer, _) = sealer();
        let mut sealed = sealer.seal(b"x", b"ctx").unwrap();
        sealed[0] = 9;
        let err = sealer.open(&sealed, b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::Malformed { .. }), "{err}");
        let err = sealer.open_text("mmtenc:***", b"ctx").unwrap_err();
        assert!(matches!(err, CryptError::Malformed { .. }), "{err}");
    }
}
