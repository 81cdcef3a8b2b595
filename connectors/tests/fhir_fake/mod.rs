//! A small FHIR-like HTTP/1.1 server for the FHIR sink tests.
//!
//! It checks requests the way a FHIR server would (method and path, media types,
//! `resourceType`, conditional create and delete semantics) and can be told to
//! answer the next requests with an error status, to stall, to answer late or
//! to reject with an `OperationOutcome`, or to answer every request so while a
//! fault lasts (`fault`: an outage, a slow or timing-out server, on a schedule
//! the test keeps). Every request is recorded. One connection per request
//! (`Connection: close`).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

pub const FHIR_JSON: &str = "application/fhir+json";

/// What to answer the next request with, instead of serving it.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// An error status with an `OperationOutcome`, and `Retry-After` seconds if set.
    Status(u16, Option<u64>),
    /// Read the request, then say nothing for this long.
    Stall(Duration),
    /// A status with this body.
    Outcome(u16, Value),
    /// Wait this long, then serve the request as usual: a slow server, or,
    /// past the client's timeout, one that commits what the client gave up on.
    Slow(Duration),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

#[derive(Debug, Default)]
pub struct State {
    /// Stored resources: (server-assigned id, resource).
    pub resources: Vec<(String, Value)>,
    next_id: u64,
    pub script: VecDeque<Scripted>,
    /// How every request is answered while set (after the script runs out).
    pub fault: Option<Scripted>,
    pub requests: Vec<Recorded>,
    /// Requests a real FHIR server would refuse, with why (tests assert none).
    pub violations: Vec<String>,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    pub required_token: Option<String>,
    /// `fhirVersion` of the CapabilityStatement.
    pub fhir_version: String,
}

/// The running server; it lives until the test process ends.
#[derive(Debug, Clone)]
pub struct FakeFhir {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeFhir {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            fhir_version: "4.0.1".into(),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &state));
            }
        });
        Self { addr, state }
    }

    /// The FHIR base URL.
    pub fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state().script.extend(answers);
    }

    /// Answers every request with `fault` until called again with `None`.
    pub fn fault(&self, fault: Option<Scripted>) {
        self.state().fault = fault;
    }

    /// How many resources are stored (cheaper than `resources().len()`).
    pub fn resource_count(&self) -> usize {
        self.state().resources.len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    pub fn resources(&self) -> Vec<Value> {
        self.state()
            .resources
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// Stores a resource directly (as another client would have).
    pub fn seed(&self, resource: Value) {
        let mut state = self.state();
        state.next_id += 1;
        let id = format!("seed-{}", state.next_id);
        state.resources.push((id, resource));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    let answer = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.requests.push(request.clone());
        match state.script.pop_front().or_else(|| state.fault.clone()) {
            Some(scripted) => scripted,
            None => {
                let (status, body, extra) = handle(&request, &mut state);
                return respond(stream, status, body.as_ref(), &extra);
            }
        }
    };
    match answer {
        Scripted::Status(status, retry_after) => {
            let extra: Vec<(String, String)> = retry_after
                .map(|s| vec![("Retry-After".to_owned(), s.to_string())])
                .unwrap_or_default();
            let outcome = outcome("error", "transient", "the server is busy");
            respond(stream, status, Some(&outcome), &extra);
        }
        Scripted::Stall(how_long) => {
            thread::sleep(how_long);
            let outcome = outcome("error", "timeout", "too late");
            respond(stream, 503, Some(&outcome), &[]);
        }
        Scripted::Outcome(status, body) => respond(stream, status, Some(&body), &[]),
        Scripted::Slow(how_long) => {
            thread::sleep(how_long);
            let (status, body, extra) = {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                handle(&request, &mut state)
            };
            respond(stream, status, body.as_ref(), &extra);
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

fn respond(mut stream: TcpStream, status: u16, body: Option<&Value>, extra: &[(String, String)]) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: {FHIR_JSON}; charset=utf-8\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        412 => "Precondition Failed",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub fn outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}

type Answer = (u16, Option<Value>, Vec<(String, String)>);

/// Serves a request like a FHIR server would.
fn handle(request: &Recorded, state: &mut State) -> Answer {
    if let Some(token) = &state.required_token {
        if request.header("authorization") != Some(&format!("Bearer {token}")) {
            return (
                401,
                Some(outcome("error", "login", "no valid token")),
                Vec::new(),
            );
        }
    }
    let accept = request.header("accept").unwrap_or_default();
    if !accept.contains(FHIR_JSON) {
        state.violations.push(format!("Accept is {accept:?}"));
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    match (request.method.as_str(), path) {
        ("GET", "/fhir/metadata") => (
            200,
            Some(json!({
                "resourceType": "CapabilityStatement",
                "status": "active",
                "kind": "instance",
                "fhirVersion": state.fhir_version,
                "software": {"name": "fake FHIR"},
                "format": ["json"]
            })),
            Vec::new(),
        ),
        ("POST", "/fhir/DocumentReference") => create(request, state),
        ("DELETE", "/fhir/DocumentReference") => delete(query, state),
        _ => {
            state
                .violations
                .push(format!("unexpected {} {}", request.method, request.target));
            (
                404,
                Some(outcome("error", "not-found", "no such endpoint")),
                Vec::new(),
            )
        }
    }
}

fn create(request: &Recorded, state: &mut State) -> Answer {
    let content_type = request.header("content-type").unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some(FHIR_JSON) {
        state
            .violations
            .push(format!("Content-Type is {content_type:?}"));
        return (
            415,
            Some(outcome("error", "not-supported", "media type")),
            Vec::new(),
        );
    }
    let Ok(resource) = serde_json::from_slice::<Value>(&request.body) else {
        state.violations.push("body is not JSON".into());
        return (
            400,
            Some(outcome("error", "structure", "not JSON")),
            Vec::new(),
        );
    };
    if resource["resourceType"] != "DocumentReference" {
        state
            .violations
            .push("resourceType is not DocumentReference".into());
        return (
            400,
            Some(outcome("error", "invalid", "wrong type")),
            Vec::new(),
        );
    }
    if resource.get("id").is_some() {
        state.violations.push("create carries an id".into());
        return (
            400,
            Some(outcome("error", "invalid", "id on create")),
            Vec::new(),
        );
    }
    let Some(condition) = request.header("if-none-exist") else {
        state.violations.push("create without If-None-Exist".into());
        return store(resource, state);
    };
    let Some((system, value)) = condition
        .strip_prefix("identifier=")
        .map(percent_decode)
        .and_then(|token| {
            token
                .split_once('|')
                .map(|(s, v)| (s.to_owned(), v.to_owned()))
        })
    else {
        state
            .violations
            .push(format!("If-None-Exist is {condition:?}"));
        return (
            400,
            Some(outcome("error", "invalid", "condition")),
            Vec::new(),
        );
    };
    if !has_identifier(&resource, &system, &value) {
        state
            .violations
            .push("If-None-Exist names an identifier the resource lacks".into());
    }
    let matches: Vec<Value> = state
        .resources
        .iter()
        .filter(|(_, r)| has_identifier(r, &system, &value))
        .map(|(_, r)| r.clone())
        .collect();
    match matches.len() {
        0 => store(resource, state),
        1 => (200, matches.into_iter().next(), Vec::new()),
        _ => (
            412,
            Some(outcome(
                "error",
                "duplicate",
                "multiple matches for the condition",
            )),
            Vec::new(),
        ),
    }
}

fn store(mut resource: Value, state: &mut State) -> Answer {
    state.next_id += 1;
    let id = state.next_id.to_string();
    resource["id"] = json!(id);
    state.resources.push((id.clone(), resource));
    (
        201,
        None,
        vec![(
            "Location".to_owned(),
            format!("/fhir/DocumentReference/{id}/_history/1"),
        )],
    )
}

fn delete(query: &str, state: &mut State) -> Answer {
    let Some((system, value)) = query
        .strip_prefix("identifier=")
        .map(percent_decode)
        .and_then(|token| {
            token
                .split_once('|')
                .map(|(s, v)| (s.to_owned(), v.to_owned()))
        })
    else {
        state.violations.push(format!("DELETE query is {query:?}"));
        return (400, Some(outcome("error", "invalid", "query")), Vec::new());
    };
    let before = state.resources.len();
    let matching = state
        .resources
        .iter()
        .filter(|(_, r)| has_identifier(r, &system, &value))
        .count();
    match matching {
        0 => (
            404,
            Some(outcome("warning", "not-found", "nothing matched")),
            Vec::new(),
        ),
        1 => {
            state
                .resources
                .retain(|(_, r)| !has_identifier(r, &system, &value));
            assert_eq!(state.resources.len(), before - 1);
            (204, None, Vec::new())
        }
        _ => (
            412,
            Some(outcome("error", "multiple-matches", "many")),
            Vec::new(),
        ),
    }
}

pub fn has_identifier(resource: &Value, system: &str, value: &str) -> bool {
    resource["identifier"].as_array().is_some_and(|ids| {
        ids.iter()
            .any(|id| id["system"] == system && id["value"] == value)
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
