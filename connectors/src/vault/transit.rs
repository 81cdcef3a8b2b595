//! Vault's transit engine as the [`KeyProvider`] of encryption at rest: data
//! keys are wrapped (`encrypt`) and unwrapped (`decrypt`) by a named transit
//! key, which never leaves Vault.
//!
//! - The key id written in a sealed header is `transit.<key name>.v<N>`: the
//!   transit key and the version that wrapped the data key. The wrapped key
//!   is Vault's ciphertext (`vault:v<N>:<base64>`), whose version must match
//!   the id (a relabelled header is refused as tampered).
//! - A rotation (`mmt keys rotate`: `POST <mount>/keys/<key>/rotate`) makes a
//!   new version current; Vault still decrypts older versions, so old data
//!   stays readable. A version below the key's `min_decryption_version` is
//!   retired: its data is refused ([`CryptError::RetiredKey`]), here before
//!   Vault is asked and by Vault itself.
//! - Every wrap binds the ciphertext to its purpose with associated data, so
//!   a transit ciphertext made for something else does not open as a data key.
//! - Unwrapped data keys are cached in memory by wrapped key (bounded), so
//!   reading a record again costs no round trip; the retirement check runs
//!   before the cache.
//!
//! [`KeyProvider`] is synchronous (the job store and the spool call it from
//! plain threads, sometimes inside another runtime's `block_on`), and vaultrs
//! is async: the provider owns one thread with its own single-threaded tokio
//! runtime and [`VaultSession`], and each call sends it a request and waits
//! for the answer on a channel. No runtime is entered on the caller's thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mmt_core::crypt::{
    is_valid_key_id, CryptError, DataKey, KeyProvider, KeyState, KeySummary, WrappedKey,
};
use mmt_core::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use vaultrs::api::transit::responses::{ReadKeyData, ReadKeyResponse};
use zeroize::Zeroizing;

use super::client::{Call, Reply, VaultSession};
use super::config::{is_vault_path, VaultConfig};
use super::error::VaultError;
use crate::config::{into_result, ConfigProblem};

/// What a transit key id starts with.
pub const KEY_ID_PREFIX: &str = "transit.";

/// Longest transit key name: its key ids (`transit.<name>.v<N>`) fit the
/// 64 bytes of a sealed header.
pub const MAX_KEY_NAME: usize = 32;

/// Domain of the associated data bound to every wrapped data key.
const WRAP_DOMAIN: &str = "mmt-transit-wrap\0";

/// Unwrapped data keys held at most; the cache is emptied when full.
const CACHE_ENTRIES: usize = 4096;

/// Which transit key wraps the data keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    /// The transit engine's mount (`MMT_VAULT_TRANSIT_MOUNT`, default `transit`).
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The transit key's name (`MMT_VAULT_TRANSIT_KEY`), an `aes256-gcm96` key.
    pub key: String,
}

fn default_mount() -> String {
    TransitConfig::DEFAULT_MOUNT.to_owned()
}

impl TransitConfig {
    pub const DEFAULT_MOUNT: &'static str = "transit";

    /// The key `key` on the default mount.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            mount: default_mount(),
            key: key.into(),
        }
    }

    /// Every problem at once; pure.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut out = Vec::new();
        if !is_vault_path(&self.mount) {
            out.push(ConfigProblem::new(
                "mount",
                "must be a Vault path: segments of letters, digits, '-', '_' or '.'",
            ));
        }
        if !is_key_name(&self.key) {
            out.push(ConfigProblem::new(
                "key",
                format!("must be 1 to {MAX_KEY_NAME} letters, digits, '-', '_' or '.'"),
            ));
        }
        into_result(out)
    }

    /// The key id of version `version`: `transit.<key>.v<version>`.
    pub fn key_id(&self, version: u64) -> String {
        format!("{KEY_ID_PREFIX}{}.v{version}", self.key)
    }

    /// The version a key id names, when it names this transit key.
    pub fn version_of(&self, key_id: &str) -> Option<u64> {
        let rest = key_id.strip_prefix(KEY_ID_PREFIX)?;
        let (name, version) = rest.rsplit_once(".v")?;
        if name != self.key || version.starts_with('0') {
            return None;
        }
        version.parse().ok().filter(|v| *v > 0)
    }
}

fn is_key_name(name: &str) -> bool {
    (1..=MAX_KEY_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The version of a transit ciphertext, `vault:v<N>:…`.
fn ciphertext_version(ciphertext: &str) -> Option<u64> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (version, body) = rest.split_once(':')?;
    if body.is_empty() || version.starts_with('0') {
        return None;
    }
    version.parse().ok().filter(|v| *v > 0)
}

/// What MMT knows of the transit key: its versions and which are usable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyVersions {
    /// Version → unix seconds it was made.
    created: BTreeMap<u64, i64>,
    /// The newest version: it wraps new data keys.
    latest: u64,
    /// Versions below it are retired (Vault refuses to decrypt them).
    min_decryption: u64,
    read_at: Instant,
}

impl KeyVersions {
    fn from_response(response: &ReadKeyResponse) -> Result<Self, VaultError> {
        let malformed = |reason: &str| VaultError::Malformed {
            reason: format!("the transit key {}: {reason}", response.name),
        };
        if !response.supports_encryption || !response.supports_decryption {
            return Err(malformed(
                "does not support encryption and decryption (create it as aes256-gcm96)",
            ));
        }
        if response.derived {
            return Err(malformed(
                "uses key derivation, which needs a context MMT does not send",
            ));
        }
        let ReadKeyData::Symmetric(versions) = &response.keys else {
            return Err(malformed(
                "is not a symmetric key (create it as aes256-gcm96)",
            ));
        };
        let created: BTreeMap<u64, i64> = versions
            .iter()
            .filter_map(|(version, at)| {
                Some((
                    version.parse().ok()?,
                    i64::try_from(*at).unwrap_or(i64::MAX),
                ))
            })
            .collect();
        let latest = created
            .keys()
            .next_back()
            .copied()
            .ok_or_else(|| malformed("has no version"))?;
        Ok(Self {
            created,
            latest,
            min_decryption: response.min_decryption_version.max(1),
            read_at: Instant::now(),
        })
    }
}

/// A request to the Vault thread, and where its answer goes.
type Request = (Op, mpsc::SyncSender<Result<Reply, VaultError>>);

/// The transit operations, owned (they cross to the Vault thread).
#[derive(Debug)]
enum Op {
    Encrypt(Zeroizing<String>),
    Decrypt(String),
    ReadKey,
    Rotate,
}

/// Vault's transit engine as a [`KeyProvider`]; see the module's comment.
pub struct TransitKeyProvider {
    transit: TransitConfig,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    /// How long a caller waits for one answer (login, renewal and the call).
    wait: Duration,
    /// How old the key's versions may be before they are read again.
    refresh: Duration,
    versions: RwLock<KeyVersions>,
    cache: Mutex<HashMap<Vec<u8>, DataKey>>,
}

impl std::fmt::Debug for TransitKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKeyProvider")
            .field("transit", &self.transit)
            .finish_non_exhaustive()
    }
}

impl TransitKeyProvider {
    /// Logs in to Vault and reads the transit key: a key that is missing, of
    /// the wrong type or not readable is refused here, at start.
    pub fn connect(
        vault: VaultConfig,
        transit: TransitConfig,
        metrics: Metrics,
    ) -> Result<Self, VaultError> {
        transit.validate().map_err(VaultError::Config)?;
        let wait = vault.timeout().saturating_mul(4);
        let refresh = vault.refresh();
        let session = VaultSession::new(vault, metrics)?;
        let requests = spawn_worker(session, transit.clone())?;
        let provider = Self {
            transit,
            requests,
            wait,
            refresh,
            versions: RwLock::new(KeyVersions {
                created: BTreeMap::new(),
                latest: 0,
                min_decryption: 1,
                read_at: Instant::now(),
            }),
            cache: Mutex::new(HashMap::new()),
        };
        provider.read_versions()?;
        Ok(provider)
    }

    /// The transit key in use.
    pub fn transit(&self) -> &TransitConfig {
        &self.transit
    }

    /// Rotates the transit key in Vault: the new version wraps new data keys
    /// from now on. Its key id.
    pub fn rotate(&self) -> Result<String, VaultError> {
        self.ask(Op::Rotate)?;
        self.read_versions()?;
        Ok(self.current_key_id())
    }

    /// The key's versions, oldest first, as `mmt keys list` shows them.
    pub fn summary(&self) -> Result<Vec<KeySummary>, VaultError> {
        self.read_versions()?;
        let versions = self.versions();
        Ok(versions
            .created
            .iter()
            .map(|(version, created_at)| KeySummary {
                id: self.transit.key_id(*version),
                state: if *version < versions.min_decryption {
                    KeyState::Retired
                } else {
                    KeyState::Active
                },
                created_at: *created_at,
                current: *version == versions.latest,
            })
            .collect())
    }

    /// Sends `op` to the Vault thread and waits for its answer.
    fn ask(&self, op: Op) -> Result<Reply, VaultError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests
            .send((op, reply))
            .map_err(|_| VaultError::Client("the Vault thread has stopped".into()))?;
        answer
            .recv_timeout(self.wait)
            .map_err(|_| VaultError::Unreachable {
                during: "a transit request",
                reason: format!("no answer within {} s", self.wait.as_secs()),
            })?
    }

    /// Reads the key's versions from Vault now.
    fn read_versions(&self) -> Result<(), VaultError> {
        let Reply::Key(response) = self.ask(Op::ReadKey)? else {
            return Err(VaultError::Malformed {
                reason: "an answer of another kind to reading the transit key".into(),
            });
        };
        let read = KeyVersions::from_response(&response)?;
        if let Ok(mut versions) = self.versions.write() {
            *versions = read;
        }
        Ok(())
    }

    /// Re-reads the versions when they are older than the refresh period (or
    /// `force`); a failed read keeps the versions known and is logged.
    fn refresh(&self, force: bool) {
        if !force && self.versions().read_at.elapsed() < self.refresh {
            return;
        }
        if let Err(err) = self.read_versions() {
            tracing::warn!(error = %err, "reading the transit key's versions failed; keeping those known");
            // Not again at once: the next call after the period retries.
            if let Ok(mut versions) = self.versions.write() {
                versions.read_at = Instant::now();
            }
        }
    }

    fn versions(&self) -> KeyVersions {
        match self.versions.read() {
            Ok(versions) => versions.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn cached(&self, blob: &[u8]) -> Option<DataKey> {
        self.cache.lock().ok()?.get(blob).cloned()
    }

    fn remember(&self, blob: Vec<u8>, key: &DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(blob, key.clone());
        }
    }
}

/// Starts the thread that owns the session; requests end when every sender is dropped.
fn spawn_worker(
    mut session: VaultSession,
    transit: TransitConfig,
) -> Result<tokio::sync::mpsc::UnboundedSender<Request>, VaultError> {
    let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Request>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| VaultError::Client(format!("the Vault thread's runtime: {err}")))?;
    std::thread::Builder::new()
        .name("mmt-vault-transit".into())
        .spawn(move || {
            runtime.block_on(async move {
                let associated_data = base64::engine::general_purpose::STANDARD
                    .encode(format!("{WRAP_DOMAIN}{}", transit.key));
                let (mount, key) = (transit.mount.as_str(), transit.key.as_str());
                while let Some((op, reply)) = incoming.recv().await {
                    let call = match &op {
                        Op::Encrypt(plaintext) => Call::Encrypt {
                            mount,
                            key,
                            plaintext,
                            associated_data: &associated_data,
                        },
                        Op::Decrypt(ciphertext) => Call::Decrypt {
                            mount,
                            key,
                            ciphertext,
                            associated_data: &associated_data,
                        },
                        Op::ReadKey => Call::ReadKey { mount, key },
                        Op::Rotate => Call::RotateKey { mount, key },
                    };
                    let answer = session.call(&call).await;
                    // The caller may have given up waiting.
                    let _ = reply.send(answer);
                }
            });
        })
        .map_err(|err| VaultError::Client(format!("starting the Vault thread: {err}")))?;
    Ok(requests)
}

/// A Vault failure as a [`CryptError`]: retryable when Vault may answer later.
fn service_error(during: &'static str, err: &VaultError) -> CryptError {
    CryptError::KeyService {
        during,
        reason: err.to_string(),
        retryable: err.class().is_retryable(),
    }
}

impl KeyProvider for TransitKeyProvider {
    fn current_key_id(&self) -> String {
        self.refresh(false);
        self.transit.key_id(self.versions().latest)
    }

    fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, CryptError> {
        self.refresh(false);
        let plaintext =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(data_key.as_bytes()));
        let ciphertext = match self.ask(Op::Encrypt(plaintext)) {
            Ok(Reply::Ciphertext(ciphertext)) => ciphertext,
            Ok(_) => {
                return Err(CryptError::KeyService {
                    during: "wrapping a data key",
                    reason: "an answer of another kind".into(),
                    retryable: false,
                })
            }
            Err(err) => return Err(service_error("wrapping a data key", &err)),
        };
        let version = ciphertext_version(&ciphertext).ok_or_else(|| CryptError::KeyService {
            during: "wrapping a data key",
            reason: "the ciphertext is not vault:v<N>:…".into(),
            retryable: false,
        })?;
        if version > self.versions().latest {
            // Rotated elsewhere since the last read.
            self.refresh(true);
        }
        let key_id = self.transit.key_id(version);
        debug_assert!(is_valid_key_id(&key_id));
        let blob = ciphertext.into_bytes();
        self.remember(blob.clone(), data_key);
        Ok(WrappedKey { key_id, blob })
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptError> {
        let unknown = || CryptError::UnknownKey {
            key_id: wrapped.key_id.clone(),
        };
        let tampered = || CryptError::Tampered {
            what: "a wrapped data key",
        };
        let version = self
            .transit
            .version_of(&wrapped.key_id)
            .ok_or_else(unknown)?;
        let ciphertext = std::str::from_utf8(&wrapped.blob).map_err(|_| tampered())?;
        if ciphertext_version(ciphertext) != Some(version) {
            return Err(tampered());
        }
        self.refresh(false);
        if version > self.versions().latest {
            self.refresh(true);
        }
        let versions = self.versions();
        if version > versions.latest {
            return Err(unknown());
        }
        if version < versions.min_decryption {
            return Err(CryptError::RetiredKey {
                key_id: wrapped.key_id.clone(),
            });
        }
        if let Some(key) = self.cached(&wrapped.blob) {
            return Ok(key);
        }
        let plaintext = match self.ask(Op::Decrypt(ciphertext.to_owned())) {
            Ok(Reply::Plaintext(plaintext)) => plaintext,
            Ok(_) => return Err(tampered()),
            Err(err) => return Err(decrypt_error(&wrapped.key_id, &err)),
        };
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(plaintext.as_bytes())
                .map_err(|_| tampered())?,
        );
        let key = DataKey::from_bytes(&bytes).map_err(|_| tampered())?;
        self.remember(wrapped.blob.clone(), &key);
        Ok(key)
    }
}

/// Vault's refusal of a decryption, classed by its own words: a version
/// below `min_decryption_version` is retired, an altered ciphertext (or other
/// associated data) fails authentication; anything else is the service's.
fn decrypt_error(key_id: &str, err: &VaultError) -> CryptError {
    if let VaultError::Status {
        code: 400, detail, ..
    } = err
    {
        if detail.contains("disallowed by policy") || detail.contains("too old") {
            return CryptError::RetiredKey {
                key_id: key_id.to_owned(),
            };
        }
        if detail.contains("not found") {
            return CryptError::UnknownKey {
                key_id: key_id.to_owned(),
            };
        }
        return CryptError::Tampered {
            what: "a wrapped data key",
        };
    }
    service_error("unwrapping a data key", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_name_the_key_and_version_and_parse_back() {
        let transit = TransitConfig::new("mmt-records");
        assert_eq!(transit.key_id(3), "transit.mmt-records.v3");
        assert!(is_valid_key_id(&transit.key_id(u64::MAX)));
        assert_eq!(transit.version_of("transit.mmt-records.v3"), Some(3));
        assert_eq!(transit.version_of("transit.other.v3"), None);
        assert_eq!(transit.version_of("transit.mmt-records.v0"), None);
        assert_eq!(transit.version_of("transit.mmt-records.v03"), None);
        assert_eq!(transit.version_of("transit.mmt-records.vx"), None);
        assert_eq!(transit.version_of("k1765000000-3fa2"), None);
        let dotted = TransitConfig::new("a.v2");
        assert_eq!(dotted.version_of(&dotted.key_id(7)), Some(7));
    }

    #[test]
    fn ciphertext_versions_are_read_from_the_prefix() {
        assert_eq!(ciphertext_version("vault:v12:abc="), Some(12));
        assert_eq!(ciphertext_version("vault:v0:abc="), None);
        assert_eq!(ciphertext_version("vault:v1:"), None);
        assert_eq!(ciphertext_version("vault:1:abc"), None);
        assert_eq!(ciphertext_version("abc"), None);
    }

    #[test]
    fn bad_names_and_mounts_are_reported() {
        let mut transit = TransitConfig::new("x".repeat(MAX_KEY_NAME + 1));
        transit.mount = "/transit/".into();
        let fields: Vec<&str> = transit
            .validate()
            .unwrap_err()
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["mount", "key"]);
        assert_eq!(TransitConfig::new("mmt").validate(), Ok(()));
    }

    #[test]
    fn vault_refusals_are_classed_by_their_words() {
        let status = |detail: &str| VaultError::Status {
            during: "transit decrypt",
            code: 400,
            detail: detail.into(),
        };
        let retired = decrypt_error(
            "transit.k.v1",
            &status("ciphertext or signature version is disallowed by policy (too old)"),
        );
        assert!(
            matches!(retired, CryptError::RetiredKey { .. }),
            "{retired}"
        );
        let tampered = decrypt_error(
            "transit.k.v1",
            &status("cipher: message authentication failed"),
        );
        assert!(
            matches!(tampered, CryptError::Tampered { .. }),
            "{tampered}"
        );
        let down = decrypt_error(
            "transit.k.v1",
            &VaultError::Unreachable {
                during: "transit decrypt",
                reason: "connection refused".into(),
            },
        );
        assert!(down.class().is_retryable(), "{down}");
        let denied = decrypt_error(
            "transit.k.v1",
            &VaultError::Status {
                during: "transit decrypt",
                code: 403,
                detail: "permission denied".into(),
            },
        );
        assert!(
            matches!(
                denied,
                CryptError::KeyService {
                    retryable: false,
                    ..
                }
            ),
            "{denied}"
        );
    }
}
