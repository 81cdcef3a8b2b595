//! The local keyring: key-encryption keys in a JSON file (`MMT_ENCRYPTION_KEYS`),
//! for the embedded default and for deployments without a KMS.
//!
//! ```json
//! {"version": 1, "keys": [
//!   {"id": "k1765000000-3fa2", "key": "<32 bytes, base64>", "state": "retired", "created_at": 1765000000},
//!   {"id": "k1767000000-91c0", "key": "<32 bytes, base64>", "state": "active", "created_at": 1767000000}
//! ]}
//! ```
//!
//! The newest active key (the last in the file) wraps new data keys; every
//! active key unwraps; a retired key's data is refused. The file is written
//! owner-only (0600), through a temporary file and a rename, and refused
//! when others may read it. A data key is wrapped with AES-256-GCM under the
//! key-encryption key, the key id as its AAD: `nonce (12) | wrapped key and tag`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    fill_random, is_valid_key_id, CryptError, DataKey, KeyProvider, WrappedKey, KEY_BYTES,
    NONCE_BYTES,
};
use crate::owner_only;

/// The keyring file format this build reads and writes.
pub const KEYRING_VERSION: u32 = 1;

/// Fewest distinct byte values a 32-byte key must hold. A random key has
/// about 30; a key of repeated or patterned bytes (all zeros, "0123…") is
/// refused as weak.
const MIN_DISTINCT_BYTES: usize = 16;

/// Domain of the key-wrapping AAD.
const WRAP_DOMAIN: &[u8] = b"mmt-wrap\0";

/// Whether a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Unwraps data keys; the newest active key also wraps new ones.
    Active,
    /// Kept so that its data is recognised, and refused.
    Retired,
}

/// The file as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    /// The format's version ([`KEYRING_VERSION`]).
    version: u32,
    /// Oldest first; the last active key is the current one.
    keys: Vec<KeyEntry>,
}

/// One key as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    /// The key's id, written beside every data key it wraps.
    id: String,
    /// The 32-byte key, base64 (standard alphabet, padded); wiped once decoded.
    key: String,
    /// `active` or `retired`.
    state: KeyState,
    /// Unix seconds the key was made.
    created_at: i64,
}

/// One key of a keyring, for `mmt keys list` (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySummary {
    pub id: String,
    pub state: KeyState,
    pub created_at: i64,
    /// Whether new data is sealed under this key.
    pub current: bool,
}

#[derive(Clone)]
struct LocalKey {
    id: String,
    secret: Zeroizing<[u8; KEY_BYTES]>,
    state: KeyState,
    created_at: i64,
}

/// Key-encryption keys from a keyring file; a [`KeyProvider`].
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<LocalKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.summary())
            .finish()
    }
}

fn keyring_error(reason: impl Into<String>) -> CryptError {
    CryptError::Keyring {
        reason: reason.into(),
    }
}

impl Keyring {
    /// A keyring of one fresh active key.
    pub fn generate() -> Result<Self, CryptError> {
        let mut keyring = Self { keys: Vec::new() };
        keyring.rotate()?;
        Ok(keyring)
    }

    /// Reads and checks the keyring file at `path`: no access for others, well
    /// formed, every key 32 strong bytes, ids unique, at least one active key.
    /// Group read is allowed: Kubernetes mounts a Secret as root with the pod's
    /// `fsGroup` as group, so `0440` is the only mode a non-root pod can read.
    pub fn load(path: &Path) -> Result<Self, CryptError> {
        let metadata = fs::metadata(path).map_err(|err| {
            keyring_error(format!(
                "cannot read the file {KEYS}: {err}",
                KEYS = super::KEYS_VARIABLE
            ))
        })?;
        if metadata.permissions().mode() & 0o027 != 0 {
            return Err(keyring_error(format!(
                "the file {} may be read by others or written by its group: make it \
                 owner-only (chmod 600; 440 for a Secret volume)",
                super::KEYS_VARIABLE
            )));
        }
        let bytes = Zeroizing::new(fs::read(path)?);
        Self::parse(&bytes)
    }

    /// Parses and checks a keyring file's content.
    pub fn parse(json: &[u8]) -> Result<Self, CryptError> {
        let file: KeyringFile = serde_json::from_slice(json).map_err(|err| {
            // serde_json's message names the field and position, never a value.
            keyring_error(format!(
                "not a keyring file (line {}, column {}): {}",
                err.line(),
                err.column(),
                match err.classify() {
                    serde_json::error::Category::Data =>
                        "a field is missing, unknown or of the wrong type",
                    _ => "not valid JSON",
                }
            ))
        })?;
        if file.version != KEYRING_VERSION {
            return Err(keyring_error(format!(
                "version {} (this build reads {KEYRING_VERSION})",
                file.version
            )));
        }
        let mut keys: Vec<LocalKey> = Vec::with_capacity(file.keys.len());
        for mut entry in file.keys {
            if !is_valid_key_id(&entry.id) {
                return Err(keyring_error(
                    "a key id must be 1 to 64 letters, digits, '.', '_' or '-'",
                ));
            }
            if keys.iter().any(|key| key.id == entry.id) {
                return Err(keyring_error(format!(
                    "key id {:?} appears twice",
                    entry.id
                )));
            }
            let secret = decode_key(&entry.id, &entry.key);
            zeroize::Zeroize::zeroize(&mut entry.key);
            let secret = secret?;
            keys.push(LocalKey {
                id: entry.id,
                secret,
                state: entry.state,
                created_at: entry.created_at,
            });
        }
        let keyring = Self { keys };
        if keyring.current().is_none() {
            return Err(keyring_error(
                "no active key: run `mmt keys rotate` to add one",
            ));
        }
        Ok(keyring)
    }

    /// Writes the keyring to `path` owner-only (0600), through a temporary
    /// file in the same folder and a rename, so a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<(), CryptError> {
        let mut file = KeyringFile {
            version: KEYRING_VERSION,
            keys: self
                .keys
                .iter()
                .map(|key| KeyEntry {
                    id: key.id.clone(),
                    key: base64::engine::general_purpose::STANDARD.encode(&key.secret[..]),
                    state: key.state,
                    created_at: key.created_at,
                })
                .collect(),
        };
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(&file).map_err(|err| keyring_error(err.to_string()))?,
        );
        for entry in &mut file.keys {
            zeroize::Zeroize::zeroize(&mut entry.key);
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            owner_only::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("partial");
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(owner_only::FILE_MODE)
            .open(&temporary)?;
        owner_only::restrict(&temporary)?;
        out.write_all(&json)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs::rename(&temporary, path)?;
        Ok(())
    }

    /// Adds a fresh active key, which seals new data from now on; its id.
    pub fn rotate(&mut self) -> Result<String, CryptError> {
        let created_at = crate::job::unix_now();
        let mut suffix = [0u8; 2];
        fill_random(&mut suffix)?;
        let id = format!("k{created_at}-{}", hex::encode(suffix));
        if self.keys.iter().any(|key| key.id == id) {
            return Err(keyring_error("a key was added this very second: try again"));
        }
        let mut secret = Zeroizing::new([0u8; KEY_BYTES]);
        fill_random(&mut secret[..])?;
        check_strength(&id, &secret)?;
        self.keys.push(LocalKey {
            id: id.clone(),
            secret,
            state: KeyState::Active,
            created_at,
        });
        Ok(id)
    }

    /// Marks key `id` retired: its data is refused from now on. The current
    /// key cannot be retired (rotate first).
    pub fn retire(&mut self, id: &str) -> Result<(), CryptError> {
        let current = self.current_key_id();
        let key = self
            .keys
            .iter_mut()
            .find(|key| key.id == id)
            .ok_or_else(|| keyring_error(format!("no key {id:?} in the keyring")))?;
        if key.id == current {
            return Err(keyring_error(
                "the current key cannot be retired: run `mmt keys rotate` first",
            ));
        }
        key.state = KeyState::Retired;
        Ok(())
    }

    /// The keys, oldest first, without their material.
    pub fn summary(&self) -> Vec<KeySummary> {
        let current = self.current().map(|key| key.id.as_str());
        self.keys
            .iter()
            .map(|key| KeySummary {
                id: key.id.clone(),
                state: key.state,
                created_at: key.created_at,
                current: Some(key.id.as_str()) == current,
            })
            .collect()
    }

    /// The newest active key.
    fn current(&self) -> Option<&LocalKey> {
        self.keys
            .iter()
            .rev()
            .find(|key| key.state == KeyState::Active)
    }

    fn cipher(key: &LocalKey) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.secret))
    }
}

impl KeyProvider for Keyring {
    fn current_key_id(&self) -> String {
        self.current().map(|key| key.id.clone()).unwrap_or_default()
    }

    fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, CryptError> {
        let key = self
            .current()
            .ok_or_else(|| keyring_error("no active key"))?;
        let mut nonce = [0u8; NONCE_BYTES];
        fill_random(&mut nonce)?;
        let aad = wrap_aad(&key.id);
        let wrapped = Self::cipher(key)
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: data_key.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| keyring_error("wrapping a data key failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&wrapped);
        Ok(WrappedKey {
            key_id: key.id.clone(),
            blob,
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptError> {
        let key = self
            .keys
            .iter()
            .find(|key| key.id == wrapped.key_id)
            .ok_or_else(|| CryptError::UnknownKey {
                key_id: wrapped.key_id.clone(),
            })?;
        if key.state == KeyState::Retired {
            return Err(CryptError::RetiredKey {
                key_id: key.id.clone(),
            });
        }
        let tampered = || CryptError::Tampered {
            what: "a wrapped data key",
        };
        if wrapped.blob.len() < NONCE_BYTES {
            return Err(tampered());
        }
        let (nonce, ciphertext) = wrapped.blob.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| tampered())?;
        let aad = wrap_aad(&key.id);
        let plain = Zeroizing::new(
            Self::cipher(key)
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| tampered())?,
        );
        DataKey::from_bytes(&plain)
    }
}

/// How often a [`WatchedKeyring`] looks at its file's modification time.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The keyring file of a running process: reloaded when the file changes
/// (checked at most every [`WATCH_INTERVAL`], and at once when a value names
/// a key it does not hold), so that `mmt keys rotate` and `mmt keys retire`
/// take effect in running processes without a restart. A file that no longer
/// loads (half edited, a weak key) is reported and the keys loaded last stay
/// in use.
#[derive(Debug)]
pub struct WatchedKeyring {
    path: PathBuf,
    state: RwLock<Watched>,
}

#[derive(Debug)]
struct Watched {
    keyring: Keyring,
    /// The file's identity when it was loaded (see [`fingerprint`]).
    modified: Option<Fingerprint>,
    checked: Instant,
}

impl WatchedKeyring {
    /// Loads the keyring at `path` (errors as [`Keyring::load`]).
    pub fn load(path: &Path) -> Result<Self, CryptError> {
        let modified = fingerprint(path);
        let keyring = Keyring::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            state: RwLock::new(Watched {
                keyring,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// Reloads the file if it changed; `force` skips the interval.
    fn refresh(&self, force: bool) {
        let due = self
            .state
            .read()
            .map(|state| force || state.checked.elapsed() >= WATCH_INTERVAL)
            .unwrap_or(true);
        if !due {
            return;
        }
        let Ok(mut state) = self.state.write() else {
            return;
        };
        state.checked = Instant::now();
        let now = fingerprint(&self.path);
        if now == state.modified {
            return;
        }
        match Keyring::load(&self.path) {
            Ok(keyring) => {
                tracing::info!(current_key = %keyring.current_key_id(), "encryption keyring reloaded");
                state.keyring = keyring;
                state.modified = now;
            }
            Err(err) => {
                tracing::warn!(error = %err, "encryption keyring changed but does not load; keeping the keys loaded before");
            }
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Keyring) -> T) -> Result<T, CryptError> {
        let state = self
            .state
            .read()
            .map_err(|_| keyring_error("the keyring lock was poisoned"))?;
        Ok(f(&state.keyring))
    }
}

/// Inode, length and modification time: a rename (how [`Keyring::save`]
/// writes) changes the inode even within one tick of the file system's clock.
type Fingerprint = (u64, u64, Option<SystemTime>);

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.ino(), metadata.len(), metadata.modified().ok()))
}

impl KeyProvider for WatchedKeyring {
    fn current_key_id(&self) -> String {
        self.refresh(false);
        self.with(Keyring::current_key_id).unwrap_or_default()
    }

    fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, CryptError> {
        self.refresh(false);
        self.with(|keyring| keyring.wrap(data_key))?
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptError> {
        self.refresh(false);
        match self.with(|keyring| keyring.unwrap(wrapped))? {
            // A key another process added since the last look.
            Err(CryptError::UnknownKey { .. }) => {
                self.refresh(true);
                self.with(|keyring| keyring.unwrap(wrapped))?
            }
            result => result,
        }
    }
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    [WRAP_DOMAIN, key_id.as_bytes()].concat()
}

/// A stored key's bytes: base64 of exactly 32 bytes, strong enough.
fn decode_key(id: &str, encoded: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, CryptError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| keyring_error(format!("key {id:?} is not base64")))?,
    );
    if bytes.len() != KEY_BYTES {
        return Err(keyring_error(format!(
            "key {id:?} is {} bytes; AES-256 needs {KEY_BYTES} (generate keys with `mmt keys rotate`)",
            bytes.len()
        )));
    }
    let mut secret = Zeroizing::new([0u8; KEY_BYTES]);
    secret.copy_from_slice(&bytes);
    check_strength(id, &secret)?;
    Ok(secret)
}

/// Refuses keys of few distinct bytes (zeros, a repeated pattern, ASCII
/// text of a narrow alphabet): not what a random source produces.
fn check_strength(id: &str, secret: &[u8; KEY_BYTES]) -> Result<(), CryptError> {
    let mut seen = [false; 256];
    for byte in secret {
        seen[usize::from(*byte)] = true;
    }
    let distinct = seen.iter().filter(|seen| **seen).count();
    if distinct < MIN_DISTINCT_BYTES {
        return Err(keyring_error(format!(
            "key {id:?} is weak ({distinct} distinct byte values): generate keys with `mmt keys rotate`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(keys: &[(&str, &[u8], &str)]) -> Vec<u8> {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(id, key, state)| {
                serde_json::json!({
                    "id": id,
                    "key": base64::engine::general_purpose::STANDARD.encode(key),
                    "state": state,
                    "created_at": 1,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"version": 1, "keys": keys})).unwrap()
    }

    fn strong() -> Vec<u8> {
        (0..32u8)
            .map(|b| b.wrapping_mul(37).wrapping_add(11))
            .collect()
    }

    #[test]
    fn a_keyring_saves_owner_only_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/keyring.json");
        let mut keyring = Keyring::generate().unwrap();
        let first = keyring.current_key_id();
        let second = keyring.rotate().unwrap();
        keyring.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Keyring::load(&path).unwrap();
        assert_eq!(loaded.current_key_id(), second);
        assert_eq!(loaded.summary(), keyring.summary());
        // The loaded keys unwrap what the saved ones wrapped.
        let data_key = DataKey::generate().unwrap();
        let wrapped = keyring.wrap(&data_key).unwrap();
        assert_eq!(
            loaded.unwrap(&wrapped).unwrap().as_bytes(),
            data_key.as_bytes()
        );
        assert!(!format!("{loaded:?}")
            .contains(&base64::engine::general_purpose::STANDARD.encode(data_key.as_bytes())));
        assert_eq!(loaded.summary()[0].id, first);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn weak_short_and_malformed_keys_are_refused() {
        let zeros = [0u8; 32];
        let err = Keyring::parse(&file_of(&[("k1", &zeros, "active")])).unwrap_err();
        assert!(err.to_string().contains("weak"), "{err}");
        let text = b"abababababababababababababababab";
        let err = Keyring::parse(&file_of(&[("k1", text, "active")])).unwrap_err();
        assert!(err.to_string().contains("weak"), "{err}");
        let short = &strong()[..16];
        let err = Keyring::parse(&file_of(&[("k1", short, "active")])).unwrap_err();
        assert!(err.to_string().contains("16 bytes"), "{err}");
        let err = Keyring::parse(
            br#"{"version":1,"keys":[{"id":"k1","key":"%%%","state":"active","created_at":1}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let err = Keyring::parse(b"{not json").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = Keyring::parse(&file_of(&[("k 1", &strong(), "active")])).unwrap_err();
        assert!(err.to_string().contains("key id"), "{err}");
        let err = Keyring::parse(&file_of(&[("k1", &strong(), "retired")])).unwrap_err();
        assert!(err.to_string().contains("no active key"), "{err}");
        let err = Keyring::parse(&file_of(&[
            ("k1", &strong(), "active"),
            ("k1", &strong(), "active"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let ok = Keyring::parse(&file_of(&[("k1", &strong(), "active")])).unwrap();
        assert_eq!(ok.current_key_id(), "k1");
    }

    #[test]
    fn a_watched_keyring_picks_up_a_rotation_and_keeps_old_keys_on_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let mut keyring = Keyring::generate().unwrap();
        keyring.save(&path).unwrap();
        let watched = WatchedKeyring::load(&path).unwrap();
        let first = watched.current_key_id();
        let old = watched.wrap(&DataKey::generate().unwrap()).unwrap();
        let second = keyring.rotate().unwrap();
        keyring.save(&path).unwrap();
        // A value under a key the process never saw forces a reload.
        let new = keyring.wrap(&DataKey::generate().unwrap()).unwrap();
        assert_eq!(new.key_id, second);
        watched.unwrap(&new).unwrap();
        assert_eq!(watched.current_key_id(), second);
        watched.unwrap(&old).unwrap();
        assert_ne!(first, second);
        // A broken file keeps the keys loaded before.
        fs::write(&path, b"{half").unwrap();
        watched.refresh(true);
        assert_eq!(watched.current_key_id(), second);
    }

    #[test]
    fn the_newest_active_key_is_current_and_the_current_key_cannot_be_retired() {
        let mut keyring = Keyring::parse(&file_of(&[
            ("old", &strong(), "active"),
            (
                "new",
                &strong().iter().rev().copied().collect::<Vec<_>>(),
                "active",
            ),
        ]))
        .unwrap();
        assert_eq!(keyring.current_key_id(), "new");
        assert!(keyring.retire("new").is_err());
        keyring.retire("old").unwrap();
        assert!(keyring.retire("missing").is_err());
        assert_eq!(keyring.summary()[0].state, KeyState::Retired);
    }
}
