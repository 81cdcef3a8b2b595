//! A test double of HashiCorp Vault: no Vault or OpenBao server can be
//! installed on the development machines (DESIGN.md), so the tests run the
//! Vault client against this in-process HTTP server on 127.0.0.1.
//!
//! It implements exactly the endpoints MMT calls, with Vault's request and
//! response shapes:
//! - `POST /v1/auth/approle/login` (`role_id`, `secret_id`) → `auth` with a
//!   fresh token, its `lease_duration` and `renewable`;
//! - `POST /v1/auth/token/renew-self` (`X-Vault-Token`) → `auth`;
//! - `GET /v1/<mount>/data/<path>` (`X-Vault-Token`) → KV v2 `data.data`
//!   and `data.metadata`;
//! - the transit engine (any mount): `POST /v1/<mount>/encrypt/<key>` and
//!   `POST /v1/<mount>/decrypt/<key>` (`plaintext` or `ciphertext`, and
//!   `associated_data`, base64) → `data.ciphertext` (`vault:v<N>:<base64 of
//!   nonce | AES-256-GCM ciphertext and tag>`, real encryption under the
//!   version's random key) or `data.plaintext`; `GET /v1/<mount>/keys/<key>`
//!   → the key's type, `keys` (version → creation time), `latest_version`,
//!   `min_decryption_version`; `POST /v1/<mount>/keys/<key>/rotate` → a new
//!   version. [`FakeVault::create_transit_key`] makes a key and
//!   [`FakeVault::set_min_decryption_version`] retires old versions, as
//!   `vault write transit/keys/<key>/config` would.
//!
//! Errors are Vault's `{"errors": [...]}` with its status codes: 400 for a
//! bad AppRole login, 403 for an unknown or expired token, 404 for a missing
//! secret, 400 with Vault's own words for a transit ciphertext that does not
//! decrypt ("cipher: message authentication failed"), one of a retired
//! version ("ciphertext or signature version is disallowed by policy (too
//! old)") or a missing key ("encryption key not found"). It runs on a thread of its own, so sync and async tests alike can
//! use it; [`FakeVault::stop`] takes it down (an outage).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// What the fake holds and has seen.
#[derive(Debug, Default)]
pub struct VaultState {
    role_id: String,
    secret_id: String,
    /// Token → (issued, ttl, renewable).
    tokens: HashMap<String, (Instant, Duration, bool)>,
    /// `(mount, path)` → the secret's fields, and its version.
    secrets: HashMap<(String, String), (Map<String, Value>, u64)>,
    /// The TTL of the tokens issued from now on (0: never expires).
    pub token_ttl: Duration,
    /// Whether issued tokens are renewable.
    pub renewable: bool,
    /// The largest TTL a renewal grants (Vault's `token_max_ttl`); 0: no cap.
    pub max_renew_ttl: Duration,
    /// When set, `renew-self` answers 403 as for a revoked token.
    pub fail_renewals: bool,
    pub logins: u32,
    pub renewals: u32,
    pub reads: u32,
    /// The `X-Vault-Namespace` of the last request, if any.
    pub last_namespace: Option<String>,
    next_token: u64,
    /// `(mount, key)` → the transit key.
    transit: HashMap<(String, String), TransitKey>,
    /// Transit requests answered, by operation (`encrypt`, `decrypt`, `read`, `rotate`).
    pub transit_calls: HashMap<&'static str, u32>,
    /// When set, every transit request answers 503 (Vault sealed).
    pub transit_down: bool,
}

/// A transit key: one random AES-256 key per version.
#[derive(Debug, Default)]
pub struct TransitKey {
    /// Version N is `versions[N - 1]`: (key, creation time).
    versions: Vec<([u8; 32], u64)>,
    min_decryption_version: u64,
}

type Shared = Arc<Mutex<VaultState>>;

/// A running fake Vault.
#[derive(Debug)]
pub struct FakeVault {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeVault {
    /// Starts on a free loopback port, accepting one AppRole.
    pub fn start(role_id: &str, secret_id: &str) -> Self {
        let state = Arc::new(Mutex::new(VaultState {
            role_id: role_id.to_owned(),
            secret_id: secret_id.to_owned(),
            token_ttl: Duration::from_secs(3600),
            renewable: true,
            ..VaultState::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/v1/auth/approle/login", post(login))
            .route("/v1/auth/token/renew-self", post(renew_self))
            .route("/v1/{mount}/data/{*path}", get(read_kv2))
            .route("/v1/{mount}/encrypt/{key}", post(transit_encrypt))
            .route("/v1/{mount}/decrypt/{key}", post(transit_decrypt))
            .route("/v1/{mount}/keys/{key}", get(transit_read_key))
            .route("/v1/{mount}/keys/{key}/rotate", post(transit_rotate))
            .with_state(Arc::clone(&state));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            address,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Reads or changes the state (TTLs, failures, counters).
    pub fn with<T>(&self, f: impl FnOnce(&mut VaultState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Writes a KV v2 secret (a new version replacing every field), as
    /// `vault kv put <mount>/<path> ...` does.
    pub fn put(&self, mount: &str, path: &str, fields: Value) {
        let Value::Object(fields) = fields else {
            panic!("a secret is a JSON object");
        };
        self.with(|state| {
            let entry = state
                .secrets
                .entry((mount.to_owned(), path.to_owned()))
                .or_insert_with(|| (Map::new(), 0));
            entry.0 = fields;
            entry.1 += 1;
        });
    }

    /// Creates the transit key `key` at `mount` with one version (as
    /// `vault write -f <mount>/keys/<key>` does).
    pub fn create_transit_key(&self, mount: &str, key: &str) {
        self.with(|state| {
            let entry = state
                .transit
                .entry((mount.to_owned(), key.to_owned()))
                .or_default();
            entry.versions = vec![(random_key(), unix_now())];
            entry.min_decryption_version = 1;
        });
    }

    /// Retires the versions below `version` (as `vault write
    /// <mount>/keys/<key>/config min_decryption_version=<version>` does).
    pub fn set_min_decryption_version(&self, mount: &str, key: &str, version: u64) {
        self.with(|state| {
            state
                .transit
                .get_mut(&(mount.to_owned(), key.to_owned()))
                .expect("the transit key exists")
                .min_decryption_version = version;
        });
    }

    /// The number of versions of a transit key.
    pub fn transit_versions(&self, mount: &str, key: &str) -> usize {
        self.with(|state| {
            state
                .transit
                .get(&(mount.to_owned(), key.to_owned()))
                .map_or(0, |key| key.versions.len())
        })
    }

    /// How many transit requests of kind `op` were answered.
    pub fn transit_calls(&self, op: &str) -> u32 {
        self.with(|state| state.transit_calls.get(op).copied().unwrap_or(0))
    }

    /// Revokes every token issued (as `vault token revoke` would).
    pub fn revoke_all_tokens(&self) {
        self.with(|state| state.tokens.clear());
    }

    /// Stops serving: connections are refused from now on.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "errors": [message] })))
}

/// The envelope every Vault response has.
fn envelope(data: Value, auth: Value) -> Json<Value> {
    Json(json!({
        "request_id": "00000000-0000-0000-0000-000000000000",
        "lease_id": "",
        "lease_duration": 0,
        "renewable": false,
        "data": data,
        "auth": auth,
        "warnings": null,
        "wrap_info": null,
    }))
}

fn auth(token: &str, ttl: Duration, renewable: bool) -> Value {
    json!({
        "client_token": token,
        "accessor": format!("accessor-{token}"),
        "policies": ["default", "mmt"],
        "token_policies": ["default", "mmt"],
        "metadata": {"role_name": "mmt"},
        "lease_duration": ttl.as_secs(),
        "renewable": renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
    })
}

fn note_namespace(state: &mut VaultState, headers: &HeaderMap) {
    state.last_namespace = headers
        .get("x-vault-namespace")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
}

/// The token of the request, if it is one the fake issued and it is still valid.
fn valid_token(state: &VaultState, headers: &HeaderMap) -> Option<String> {
    let token = headers.get("x-vault-token")?.to_str().ok()?;
    let (issued, ttl, _) = state.tokens.get(token)?;
    (ttl.is_zero() || issued.elapsed() < *ttl).then(|| token.to_owned())
}

async fn login(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    // Vault reads a JSON body whatever its Content-Type (vaultrs sends none).
    let body: Value = serde_json::from_slice(&body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "failed to parse JSON input"))?;
    let mut state = state.lock().unwrap();
    note_namespace(&mut state, &headers);
    let matches = body["role_id"].as_str() == Some(state.role_id.as_str())
        && body["secret_id"].as_str() == Some(state.secret_id.as_str());
    if !matches {
        return Err(error(StatusCode::BAD_REQUEST, "invalid role or secret ID"));
    }
    state.logins += 1;
    state.next_token += 1;
    let token = format!("hvs.fake-{}", state.next_token);
    let (ttl, renewable) = (state.token_ttl, state.renewable);
    state
        .tokens
        .insert(token.clone(), (Instant::now(), ttl, renewable));
    Ok(envelope(Value::Null, auth(&token, ttl, renewable)))
}

async fn renew_self(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let mut state = state.lock().unwrap();
    note_namespace(&mut state, &headers);
    let Some(token) = valid_token(&state, &headers) else {
        return Err(error(StatusCode::FORBIDDEN, "permission denied"));
    };
    if state.fail_renewals {
        return Err(error(StatusCode::FORBIDDEN, "permission denied"));
    }
    let (_, _, renewable) = state.tokens[&token];
    if !renewable {
        return Err(error(StatusCode::BAD_REQUEST, "lease is not renewable"));
    }
    let granted = if state.max_renew_ttl.is_zero() {
        state.token_ttl
    } else {
        state.token_ttl.min(state.max_renew_ttl)
    };
    state.renewals += 1;
    state
        .tokens
        .insert(token.clone(), (Instant::now(), granted, renewable));
    Ok(envelope(Value::Null, auth(&token, granted, renewable)))
}

async fn read_kv2(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((mount, path)): Path<(String, String)>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let mut state = state.lock().unwrap();
    note_namespace(&mut state, &headers);
    if valid_token(&state, &headers).is_none() {
        return Err(error(StatusCode::FORBIDDEN, "permission denied"));
    }
    state.reads += 1;
    let Some((fields, version)) = state.secrets.get(&(mount, path)) else {
        // Vault answers a missing KV v2 secret with 404 and no error words.
        return Err((StatusCode::NOT_FOUND, Json(json!({ "errors": [] }))));
    };
    Ok(envelope(
        json!({
            "data": fields,
            "metadata": {
                "created_time": "2026-12-06T00:00:00Z",
                "deletion_time": "",
                "custom_metadata": null,
                "destroyed": false,
                "version": version,
            },
        }),
        Value::Null,
    ))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    key
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

type Refusal = (StatusCode, Json<Value>);

/// The transit key of a request, after the token, namespace and outage checks.
fn transit_key<'s>(
    state: &'s mut VaultState,
    headers: &HeaderMap,
    mount: String,
    key: String,
    op: &'static str,
) -> Result<&'s mut TransitKey, Refusal> {
    note_namespace(state, headers);
    if valid_token(state, headers).is_none() {
        return Err(error(StatusCode::FORBIDDEN, "permission denied"));
    }
    if state.transit_down {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "Vault is sealed"));
    }
    *state.transit_calls.entry(op).or_default() += 1;
    state
        .transit
        .get_mut(&(mount, key))
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "encryption key not found"))
}

/// A base64 field of a request body (absent: empty).
fn base64_field(body: &Value, field: &str) -> Result<Vec<u8>, Refusal> {
    b64()
        .decode(body[field].as_str().unwrap_or(""))
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("failed to base64-decode {field}"),
            )
        })
}

fn json_body(body: &axum::body::Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "failed to parse JSON input"))
}

async fn transit_encrypt(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((mount, key)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Refusal> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let body = json_body(&body)?;
    let plaintext = base64_field(&body, "plaintext")?;
    let aad = base64_field(&body, "associated_data")?;
    let mut state = state.lock().unwrap();
    let transit = transit_key(&mut state, &headers, mount, key, "encrypt")?;
    let version = transit.versions.len();
    let (secret, _) = transit.versions[version - 1];
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    let sealed = aes_gcm::Aes256Gcm::new(&secret.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .unwrap();
    let ciphertext = format!(
        "vault:v{version}:{}",
        b64().encode([&nonce[..], &sealed].concat())
    );
    Ok(envelope(
        json!({"ciphertext": ciphertext, "key_version": version}),
        Value::Null,
    ))
}

async fn transit_decrypt(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((mount, key)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Refusal> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let body = json_body(&body)?;
    let aad = base64_field(&body, "associated_data")?;
    let mut state = state.lock().unwrap();
    let transit = transit_key(&mut state, &headers, mount, key, "decrypt")?;
    let invalid = || error(StatusCode::BAD_REQUEST, "invalid ciphertext: no prefix");
    let ciphertext = body["ciphertext"].as_str().ok_or_else(invalid)?;
    let rest = ciphertext.strip_prefix("vault:v").ok_or_else(invalid)?;
    let (version, sealed) = rest.split_once(':').ok_or_else(invalid)?;
    let version: usize = version
        .parse()
        .map_err(|_| error(StatusCode::BAD_REQUEST, "invalid ciphertext: version"))?;
    if version == 0 || version > transit.versions.len() {
        return Err(error(StatusCode::BAD_REQUEST, "invalid key version"));
    }
    if (version as u64) < transit.min_decryption_version {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "ciphertext or signature version is disallowed by policy (too old)",
        ));
    }
    let sealed = b64().decode(sealed).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid ciphertext: could not decode base64",
        )
    })?;
    if sealed.len() < 12 + 16 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid ciphertext: too short",
        ));
    }
    let (nonce, sealed) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    let (secret, _) = transit.versions[version - 1];
    let plaintext = aes_gcm::Aes256Gcm::new(&secret.into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "cipher: message authentication failed",
            )
        })?;
    Ok(envelope(
        json!({"plaintext": b64().encode(plaintext)}),
        Value::Null,
    ))
}

fn key_info(key: &str, transit: &TransitKey) -> Value {
    let versions: Map<String, Value> = transit
        .versions
        .iter()
        .enumerate()
        .map(|(index, (_, created))| ((index + 1).to_string(), json!(created)))
        .collect();
    json!({
        "type": "aes256-gcm96",
        "name": key,
        "keys": versions,
        "latest_version": transit.versions.len(),
        "min_available_version": 0,
        "min_decryption_version": transit.min_decryption_version,
        "min_encryption_version": 0,
        "deletion_allowed": false,
        "derived": false,
        "exportable": false,
        "allow_plaintext_backup": false,
        "supports_encryption": true,
        "supports_decryption": true,
        "supports_derivation": true,
        "supports_signing": false,
        "imported": false,
    })
}

async fn transit_read_key(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((mount, key)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    let mut state = state.lock().unwrap();
    let transit = transit_key(&mut state, &headers, mount, key.clone(), "read")
        // Vault answers a missing transit key's read with 404.
        .map_err(|(status, body)| {
            if status == StatusCode::BAD_REQUEST {
                (StatusCode::NOT_FOUND, Json(json!({ "errors": [] })))
            } else {
                (status, body)
            }
        })?;
    Ok(envelope(key_info(&key, transit), Value::Null))
}

async fn transit_rotate(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((mount, key)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    let mut state = state.lock().unwrap();
    let transit = transit_key(&mut state, &headers, mount, key.clone(), "rotate")?;
    transit.versions.push((random_key(), unix_now()));
    // Vault 1.14 and later answer a rotation with the key's new state.
    Ok(envelope(key_info(&key, transit), Value::Null))
}
