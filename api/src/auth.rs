//! Bearer-token authentication: JWTs signed with HS256 (`INTERNAL_JWT_SECRET`)
//! or RS256 (public keys by key id, so keys rotate without a restart).
//!
//! Keys come from a [`KeySource`] (a folder of PEM files, or Vault in the
//! `mmt` binary) that [`keep_fresh`] reloads periodically: a load that fails
//! leaves the keys held in use; one that succeeds replaces them whole, so a
//! key removed at the source stops verifying.
//!
//! A token must carry `sub`, `tenant`, `roles` and `exp`. An `nbf` (not
//! before) is honoured; `aud`, when the server requires one
//! (`MMT_JWT_AUDIENCE`), may be a string or an array naming it. `exp` and
//! `nbf` tolerate a clock skew of `MMT_JWT_LEEWAY_SECONDS` (default 60).
//! Every failure (no token, malformed, `alg: none`, unknown key id, bad
//! signature, expired, not yet valid, wrong audience, no tenant) answers the
//! same 401: which check failed is logged at debug level and audited as a
//! class ([`AuthError::class`]), never sent, so the API is no oracle for
//! forging tokens.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a caller may do. A token may carry several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submits jobs and reads them.
    Submitter,
    /// Reads jobs, transcripts and the status page.
    Reader,
    /// Everything, including deleting jobs.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "submitter" => Some(Self::Submitter),
            "reader" => Some(Self::Reader),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The claims MMT reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user or service acting (recorded in the audit trail).
    pub sub: String,
    /// The tenant every read and write is scoped to.
    pub tenant: String,
    /// Role names; unknown names are ignored.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not valid before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: one audience or several (RFC 7519 allows both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<Role>,
}

impl Caller {
    /// Whether the caller holds any of `roles`.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|held| roles.contains(held))
    }
}

/// Why a token was refused (for debug logs only: the client sees one 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    #[error("no key for this token (algorithm not configured or unknown key id)")]
    UnknownKey,
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("the tenant claim is missing or not a valid tenant name")]
    BadTenant,
}

impl AuthError {
    /// A short, bounded name of the failure, for the audit trail and
    /// metrics: never anything from the token itself.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Rejected(reason) => match reason.as_str() {
                "expired" => "expired",
                "not yet valid" => "not_yet_valid",
                "bad signature" => "bad_signature",
                "wrong audience" => "wrong_audience",
                _ => "rejected",
            },
            Self::BadTenant => "bad_tenant",
        }
    }
}

/// Problems with the authentication settings.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("INTERNAL_JWT_SECRET must be at least {min} characters")]
    ShortSecret { min: usize },
    #[error("no signing key configured: set INTERNAL_JWT_SECRET or MMT_JWT_PUBLIC_KEYS_DIR")]
    NoKeys,
    #[error("reading the public keys in {dir}: {reason}")]
    KeyDir { dir: PathBuf, reason: String },
    #[error("signing a token: {0}")]
    Sign(String),
    #[error("RS256 key {kid} is not an RSA public key in PEM: {reason}")]
    BadPublicKey { kid: String, reason: String },
    #[error("loading the keys from {source_name}: {reason}")]
    Source {
        source_name: &'static str,
        reason: String,
    },
}

/// The shortest accepted HS256 secret (256 bits of ASCII).
pub const MIN_SECRET_CHARS: usize = 32;

/// Clock skew tolerated on `exp` and `nbf` unless set otherwise
/// ([`KeyRing::with_leeway`]), in seconds.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;

/// The verification keys: one HS256 secret and any number of RS256 public
/// keys by `kid`. The RS256 set is replaced whole on rotation
/// ([`KeyRing::replace_rs256`]), while requests keep verifying.
pub struct KeyRing {
    hs256: RwLock<Option<DecodingKey>>,
    rs256: RwLock<HashMap<String, DecodingKey>>,
    audience: Option<String>,
    leeway_seconds: u64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("hs256", &self.has_hs256())
            .field("rs256_kids", &self.rs256_kids())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A ring with the HS256 secret (if any) and no RS256 keys yet.
    pub fn new(secret: Option<&str>, audience: Option<String>) -> Result<Self, KeyError> {
        let hs256 = match secret {
            Some(secret) if secret.chars().count() < MIN_SECRET_CHARS => {
                return Err(KeyError::ShortSecret {
                    min: MIN_SECRET_CHARS,
                })
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        Ok(Self {
            hs256: RwLock::new(hs256),
            rs256: RwLock::new(HashMap::new()),
            audience,
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
        })
    }

    /// Tolerates `seconds` of clock skew on `exp` and `nbf`.
    pub fn with_leeway(mut self, seconds: u64) -> Self {
        self.leeway_seconds = seconds;
        self
    }

    /// Replaces the RS256 keys (rotation: the new set is live for the next request).
    pub fn replace_rs256(&self, keys: HashMap<String, DecodingKey>) {
        if let Ok(mut held) = self.rs256.write() {
            *held = keys;
        }
    }

    /// Replaces the keys with `material` as one change: every PEM is parsed
    /// and the secret checked first, and on any problem (or if no key at all
    /// would be left) nothing changes.
    pub fn install(&self, material: &KeyMaterial) -> Result<(), KeyError> {
        let rs256 = parse_rs256_pems(&material.rs256_pem)?;
        let hs256 = match &material.hs256 {
            Hs256Update::Keep => None,
            Hs256Update::Remove => Some(None),
            Hs256Update::Set(secret) if secret.chars().count() < MIN_SECRET_CHARS => {
                return Err(KeyError::ShortSecret {
                    min: MIN_SECRET_CHARS,
                })
            }
            Hs256Update::Set(secret) => Some(Some(DecodingKey::from_secret(secret.as_bytes()))),
        };
        let hs256_left = match &hs256 {
            Some(next) => next.is_some(),
            None => self.has_hs256(),
        };
        if rs256.is_empty() && !hs256_left {
            return Err(KeyError::NoKeys);
        }
        if let Some(next) = hs256 {
            if let Ok(mut held) = self.hs256.write() {
                *held = next;
            }
        }
        self.replace_rs256(rs256);
        Ok(())
    }

    /// Whether an HS256 secret is held.
    pub fn has_hs256(&self) -> bool {
        self.hs256.read().is_ok_and(|key| key.is_some())
    }

    /// The key ids of the RS256 keys held now, sorted.
    pub fn rs256_kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self
            .rs256
            .read()
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default();
        kids.sort();
        kids
    }

    /// Whether any key can verify a token.
    pub fn is_empty(&self) -> bool {
        !self.has_hs256() && self.rs256.read().map_or(true, |keys| keys.is_empty())
    }

    /// Verifies `token` and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        // `alg: none` and every algorithm jsonwebtoken does not know fail here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let held = self.hs256.read().map_err(|_| AuthError::UnknownKey)?;
                let key = held.as_ref().ok_or(AuthError::UnknownKey)?;
                self.decode(token, key, Algorithm::HS256)?
            }
            Algorithm::RS256 => {
                let kid = header.kid.ok_or(AuthError::UnknownKey)?;
                let keys = self.rs256.read().map_err(|_| AuthError::UnknownKey)?;
                let key = keys.get(&kid).ok_or(AuthError::UnknownKey)?;
                self.decode(token, key, Algorithm::RS256)?
            }
            _ => return Err(AuthError::Malformed),
        };
        if !is_valid_tenant(&claims.tenant) {
            return Err(AuthError::BadTenant);
        }
        Ok(Caller {
            subject: claims.sub,
            tenant: claims.tenant,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        })
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|err| AuthError::Rejected(err.kind_name()))
    }
}

/// A short name of a jsonwebtoken error kind, for debug logs.
trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for jsonwebtoken::errors::Error {
    fn kind_name(&self) -> String {
        use jsonwebtoken::errors::ErrorKind;
        match self.kind() {
            ErrorKind::ExpiredSignature => "expired".to_owned(),
            ErrorKind::ImmatureSignature => "not yet valid".to_owned(),
            ErrorKind::InvalidSignature => "bad signature".to_owned(),
            ErrorKind::InvalidAudience => "wrong audience".to_owned(),
            ErrorKind::InvalidAlgorithm => "algorithm mismatch".to_owned(),
            ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
            _ => "malformed".to_owned(),
        }
    }
}

/// Tenants name database rows and metrics scopes: 1–128 of `[A-Za-z0-9._-]`.
pub fn is_valid_tenant(tenant: &str) -> bool {
    (1..=128).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads every `<kid>.pem` RSA public key in `dir`.
pub fn load_rs256_dir(dir: &Path) -> Result<HashMap<String, DecodingKey>, KeyError> {
    let pems = read_rs256_pem_dir(dir)?;
    parse_rs256_pems(&pems).map_err(|err| match err {
        KeyError::BadPublicKey { kid, reason } => KeyError::KeyDir {
            dir: dir.to_owned(),
            reason: format!("{kid}.pem is not an RSA public key: {reason}"),
        },
        other => other,
    })
}

/// The PEM text of every `<kid>.pem` file in `dir`, by key id (not parsed).
pub fn read_rs256_pem_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, KeyError> {
    let problem = |reason: String| KeyError::KeyDir {
        dir: dir.to_owned(),
        reason,
    };
    let mut pems = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| problem(e.to_string()))?;
    for entry in entries {
        let path = entry.map_err(|e| problem(e.to_string()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let Some(kid) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let pem = std::fs::read(&path).map_err(|e| problem(format!("{kid}.pem: {e}")))?;
        pems.insert(kid.to_owned(), pem);
    }
    Ok(pems)
}

/// Parses RSA public keys (PEM) by key id; the first that fails is named.
pub fn parse_rs256_pems(
    pems: &BTreeMap<String, Vec<u8>>,
) -> Result<HashMap<String, DecodingKey>, KeyError> {
    pems.iter()
        .map(|(kid, pem)| {
            DecodingKey::from_rsa_pem(pem)
                .map(|key| (kid.clone(), key))
                .map_err(|e| KeyError::BadPublicKey {
                    kid: kid.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// What becomes of the HS256 secret when a [`KeyMaterial`] is installed.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Hs256Update {
    /// The source does not manage it: the ring keeps its own.
    #[default]
    Keep,
    /// The source holds this secret.
    Set(String),
    /// The source manages it and holds none (removed): HS256 stops verifying.
    Remove,
}

impl std::fmt::Debug for Hs256Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Keep => "Keep",
            Self::Set(_) => "Set([REDACTED])",
            Self::Remove => "Remove",
        })
    }
}

/// Every key one source holds, installed as one change ([`KeyRing::install`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMaterial {
    /// RS256 public keys (PEM) by key id: they replace every RS256 key held.
    pub rs256_pem: BTreeMap<String, Vec<u8>>,
    /// The HS256 secret, if the source manages it.
    pub hs256: Hs256Update,
}

/// Where verification keys come from: a folder ([`KeyFolder`]), Vault (in
/// the `mmt` binary), or anything else that can list them.
pub trait KeySource: Send {
    /// A short name for logs, e.g. `folder` or `vault`.
    fn name(&self) -> &'static str;
    /// The time between two loads.
    fn period(&self) -> Duration;
    /// Reads the keys the source holds now.
    fn load(&mut self) -> impl Future<Output = Result<KeyMaterial, KeyError>> + Send;
    /// Called when keys loaded were refused by the ring (a bad PEM, a short
    /// secret), so the source can count it as a failed refresh.
    fn rejected(&self) {}
}

/// Loads `source` into `ring` every period, forever. A load that fails, or
/// keys the ring refuses, leave the keys held in use (a half-written folder
/// or a Vault outage must not lock every caller out).
pub async fn keep_fresh<S: KeySource>(ring: Arc<KeyRing>, mut source: S) {
    loop {
        tokio::time::sleep(source.period()).await;
        refresh_once(&ring, &mut source).await;
    }
}

/// One load of `source` into `ring`; whether the keys were replaced.
pub async fn refresh_once<S: KeySource>(ring: &KeyRing, source: &mut S) -> bool {
    let name = source.name();
    match source.load().await {
        Ok(material) => match ring.install(&material) {
            Ok(()) => {
                tracing::debug!(source = name, kids = ?ring.rs256_kids(), "token keys refreshed");
                true
            }
            Err(err) => {
                source.rejected();
                tracing::warn!(source = name, error = %err, "refused the keys loaded; keeping the keys held");
                false
            }
        },
        Err(err) => {
            tracing::warn!(source = name, error = %err, "could not reload the token keys; keeping the keys held");
            false
        }
    }
}

/// A folder of `<kid>.pem` RSA public keys, re-read every period; rotation
/// is adding and removing files. It does not manage the HS256 secret.
#[derive(Debug, Clone)]
pub struct KeyFolder {
    pub dir: PathBuf,
    pub period: Duration,
}

impl KeySource for KeyFolder {
    fn name(&self) -> &'static str {
        "folder"
    }

    fn period(&self) -> Duration {
        self.period
    }

    async fn load(&mut self) -> Result<KeyMaterial, KeyError> {
        let dir = self.dir.clone();
        let pems = tokio::task::spawn_blocking(move || read_rs256_pem_dir(&dir))
            .await
            .map_err(|e| KeyError::Source {
                source_name: "folder",
                reason: e.to_string(),
            })??;
        Ok(KeyMaterial {
            rs256_pem: pems,
            hs256: Hs256Update::Keep,
        })
    }
}

/// Signs an HS256 token (for `mmt token`, tests and service-to-service calls).
pub fn sign_hs256(secret: &str, claims: &Claims) -> Result<String, KeyError> {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(KeyError::ShortSecret {
            min: MIN_SECRET_CHARS,
        });
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError::Sign(e.to_string()))
}

/// Signs an RS256 token with a PEM private key and key id.
pub fn sign_rs256(private_pem: &[u8], kid: &str, claims: &Claims) -> Result<String, KeyError> {
    let key = EncodingKey::from_rsa_pem(private_pem).map_err(|e| KeyError::Sign(e.to_string()))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| KeyError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn claims(exp_offset: i64) -> Claims {
        let now = mmt_core::job::unix_now();
        Claims {
            sub: "svc-dictation".into(),
            tenant: "clinic-a".into(),
            roles: vec!["submitter".into(), "auditor".into()],
            exp: (now + exp_offset) as u64,
            iat: Some(now as u64),
            nbf: None,
            aud: None,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new(Some(SECRET), None).unwrap()
    }

    #[test]
    fn a_valid_hs256_token_names_its_caller() {
        let token = sign_hs256(SECRET, &claims(60)).unwrap();
        let caller = ring().verify(&token).unwrap();
        assert_eq!(caller.tenant, "clinic-a");
        assert_eq!(caller.subject, "svc-dictation");
        assert_eq!(caller.roles, [Role::Submitter], "unknown roles are ignored");
    }

    #[test]
    fn expired_wrongly_signed_and_malformed_tokens_fail() {
        let ring = ring();
        let expired = sign_hs256(SECRET, &claims(-600)).unwrap();
        assert_eq!(
            ring.verify(&expired),
            Err(AuthError::Rejected("expired".into()))
        );
        let other = sign_hs256("another-secret-of-at-least-32-chars!", &claims(60)).unwrap();
        assert_eq!(
            ring.verify(&other),
            Err(AuthError::Rejected("bad signature".into()))
        );
        assert_eq!(ring.verify("not.a.jwt"), Err(AuthError::Malformed));
        assert_eq!(ring.verify(""), Err(AuthError::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = serde_json::to_string(&claims(60)).unwrap();
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&payload)
        );
        assert!(ring().verify(&token).is_err());
    }

    #[test]
    fn an_rs256_token_without_a_known_key_id_fails() {
        let ring = ring();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = serde_json::to_string(&claims(60)).unwrap();
        let token = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","typ":"JWT","kid":"k9"}"#),
            b64(&payload)
        );
        assert_eq!(ring.verify(&token), Err(AuthError::UnknownKey));
    }

    #[test]
    fn a_bad_tenant_claim_fails() {
        let mut bad = claims(60);
        bad.tenant = "../etc".into();
        let token = sign_hs256(SECRET, &bad).unwrap();
        assert_eq!(ring().verify(&token), Err(AuthError::BadTenant));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            KeyRing::new(Some("short"), None),
            Err(KeyError::ShortSecret { .. })
        ));
        assert!(KeyRing::new(None, None).unwrap().is_empty());
    }

    #[test]
    fn a_token_not_yet_valid_is_refused_beyond_the_leeway() {
        let ring = ring();
        let now = mmt_core::job::unix_now() as u64;
        let mut later = claims(3600);
        later.nbf = Some(now + 600);
        let token = sign_hs256(SECRET, &later).unwrap();
        let refused = ring.verify(&token).unwrap_err();
        assert_eq!(refused, AuthError::Rejected("not yet valid".into()));
        assert_eq!(refused.class(), "not_yet_valid");
        // A clock a little ahead of ours is skew, not a forgery.
        later.nbf = Some(now + 30);
        let token = sign_hs256(SECRET, &later).unwrap();
        assert!(ring.verify(&token).is_ok());
        later.nbf = Some(now - 30);
        let token = sign_hs256(SECRET, &later).unwrap();
        assert!(ring.verify(&token).is_ok());
    }

    #[test]
    fn the_leeway_is_the_configured_one() {
        // Expired 30 s ago: inside the default minute, outside a 10 s leeway.
        let token = sign_hs256(SECRET, &claims(-30)).unwrap();
        assert!(ring().verify(&token).is_ok());
        let strict = KeyRing::new(Some(SECRET), None).unwrap().with_leeway(10);
        assert_eq!(
            strict.verify(&token),
            Err(AuthError::Rejected("expired".into()))
        );
    }

    /// An RSA key pair made with the openssl command line: (private PEM, public PEM).
    fn rsa_pair() -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k.key");
        let public = dir.path().join("k.pem");
        for args in [
            vec!["genrsa", "-out", private.to_str().unwrap(), "2048"],
            vec![
                "rsa",
                "-in",
                private.to_str().unwrap(),
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ],
        ] {
            let status = std::process::Command::new("openssl")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success());
        }
        (
            std::fs::read(private).unwrap(),
            std::fs::read(public).unwrap(),
        )
    }

    fn material(rs256: &[(&str, &[u8])], hs256: Hs256Update) -> KeyMaterial {
        KeyMaterial {
            rs256_pem: rs256
                .iter()
                .map(|(kid, pem)| ((*kid).to_owned(), pem.to_vec()))
                .collect(),
            hs256,
        }
    }

    #[test]
    fn installed_keys_replace_the_held_ones_whole() {
        let (private_a, public_a) = rsa_pair();
        let (private_b, public_b) = rsa_pair();
        let by_a = sign_rs256(&private_a, "a", &claims(60)).unwrap();
        let by_b = sign_rs256(&private_b, "b", &claims(60)).unwrap();
        let ring = KeyRing::new(None, None).unwrap();
        ring.install(&material(&[("a", &public_a)], Hs256Update::Remove))
            .unwrap();
        assert!(ring.verify(&by_a).is_ok());
        assert_eq!(ring.verify(&by_b), Err(AuthError::UnknownKey));
        ring.install(&material(
            &[("a", &public_a), ("b", &public_b)],
            Hs256Update::Remove,
        ))
        .unwrap();
        assert!(ring.verify(&by_b).is_ok());
        // A removed key stops verifying at once.
        ring.install(&material(&[("b", &public_b)], Hs256Update::Remove))
            .unwrap();
        assert_eq!(ring.verify(&by_a), Err(AuthError::UnknownKey));
        assert_eq!(ring.rs256_kids(), ["b"]);
    }

    #[test]
    fn a_bad_key_set_changes_nothing() {
        let (_, public) = rsa_pair();
        let ring = ring();
        ring.install(&material(&[("a", &public)], Hs256Update::Keep))
            .unwrap();
        let bad = material(&[("a", &public), ("b", b"not a pem")], Hs256Update::Remove);
        assert!(matches!(
            ring.install(&bad),
            Err(KeyError::BadPublicKey { kid, .. }) if kid == "b"
        ));
        let short = material(&[], Hs256Update::Set("short".into()));
        assert!(matches!(
            ring.install(&short),
            Err(KeyError::ShortSecret { .. })
        ));
        // Nothing at all left: refused, not a locked-out service.
        assert!(matches!(
            ring.install(&material(&[], Hs256Update::Remove)),
            Err(KeyError::NoKeys)
        ));
        assert_eq!(ring.rs256_kids(), ["a"]);
        assert!(ring.has_hs256());
    }

    #[test]
    fn the_hs256_secret_can_be_set_and_removed() {
        let ring = ring();
        let old = sign_hs256(SECRET, &claims(60)).unwrap();
        let next_secret = "the-next-secret-0123456789-abcdefghij";
        let new = sign_hs256(next_secret, &claims(60)).unwrap();
        let (_, public) = rsa_pair();
        ring.install(&material(
            &[("a", &public)],
            Hs256Update::Set(next_secret.into()),
        ))
        .unwrap();
        assert!(ring.verify(&new).is_ok());
        assert!(ring.verify(&old).is_err());
        ring.install(&material(&[("a", &public)], Hs256Update::Remove))
            .unwrap();
        assert_eq!(ring.verify(&new), Err(AuthError::UnknownKey));
        assert!(!format!("{:?}", Hs256Update::Set(next_secret.into())).contains("next"));
    }

    /// A source that hands out what the test queued, and counts refusals.
    struct Queued {
        loads: Vec<Result<KeyMaterial, KeyError>>,
        rejected: std::sync::atomic::AtomicU32,
    }

    impl KeySource for Queued {
        fn name(&self) -> &'static str {
            "queued"
        }
        fn period(&self) -> Duration {
            Duration::from_millis(1)
        }
        async fn load(&mut self) -> Result<KeyMaterial, KeyError> {
            self.loads.remove(0)
        }
        fn rejected(&self) {
            self.rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_keys_and_a_refused_one_is_reported() {
        let (_, public) = rsa_pair();
        let ring = KeyRing::new(None, None).unwrap();
        let mut source = Queued {
            loads: vec![
                Ok(material(&[("a", &public)], Hs256Update::Remove)),
                Err(KeyError::Source {
                    source_name: "queued",
                    reason: "down".into(),
                }),
                Ok(material(&[("b", b"garbage")], Hs256Update::Remove)),
            ],
            rejected: Default::default(),
        };
        assert!(refresh_once(&ring, &mut source).await);
        assert!(!refresh_once(&ring, &mut source).await);
        assert!(!refresh_once(&ring, &mut source).await);
        assert_eq!(ring.rs256_kids(), ["a"]);
        assert_eq!(
            source.rejected.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_key_folder_is_a_source_that_leaves_hs256_alone() {
        let (_, public) = rsa_pair();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2027-01.pem"), &public).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut folder = KeyFolder {
            dir: dir.path().to_owned(),
            period: Duration::from_secs(60),
        };
        let loaded = folder.load().await.unwrap();
        assert_eq!(loaded.hs256, Hs256Update::Keep);
        let ring = ring();
        assert!(refresh_once(&ring, &mut folder).await);
        assert_eq!(ring.rs256_kids(), ["2027-01"]);
        assert!(ring.has_hs256());
    }

    #[test]
    fn the_audience_may_be_a_string_or_an_array() {
        let ring = KeyRing::new(Some(SECRET), Some("mmt".into())).unwrap();
        let with_aud = |aud: Option<Audience>| {
            let mut claims = claims(60);
            claims.aud = aud;
            sign_hs256(SECRET, &claims).unwrap()
        };
        let one = with_aud(Some(Audience::One("mmt".into())));
        assert!(ring.verify(&one).is_ok());
        let many = with_aud(Some(Audience::Many(vec!["ehr".into(), "mmt".into()])));
        assert_eq!(ring.verify(&many).map(|c| c.tenant), Ok("clinic-a".into()));
        let others = with_aud(Some(Audience::Many(vec!["ehr".into(), "billing".into()])));
        assert_eq!(
            ring.verify(&others),
            Err(AuthError::Rejected("wrong audience".into()))
        );
        let wrong = with_aud(Some(Audience::One("ehr".into())));
        assert_eq!(ring.verify(&wrong).unwrap_err().class(), "wrong_audience");
        // An array is read as such in the claims, not refused as malformed.
        let payload = serde_json::to_value(claims(60)).unwrap();
        let mut payload = payload.as_object().unwrap().clone();
        payload.insert("aud".into(), serde_json::json!(["mmt"]));
        let parsed: Claims = serde_json::from_value(payload.into()).unwrap();
        assert_eq!(parsed.aud, Some(Audience::Many(vec!["mmt".into()])));
    }
}
