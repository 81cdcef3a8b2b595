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
//!   and `data.metadata`.
//!
//! Errors are Vault's `{"errors": [...]}` with its status codes: 400 for a
//! bad AppRole login, 403 for an unknown or expired token, 404 for a missing
//! secret. It runs on a thread of its own, so sync and async tests alike can
//! use it; [`FakeVault::stop`] takes it down (an outage).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
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
