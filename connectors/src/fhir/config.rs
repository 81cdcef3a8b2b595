//! Typed configuration of the FHIR server sink.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use super::client::FhirServerSink;
use super::document::JOB_ID_SYSTEM;
use crate::config::{check_file_path, into_result, validated, ConfigProblem};
use crate::error::Result;

/// The environment variables [`FhirServerConfig::from_env`] reads, by field.
pub mod env {
    /// `base_url`; when unset there is no FHIR server sink.
    pub const URL: &str = "FHIR_SERVER_URL";
    /// `bearer_token` (a secret).
    pub const BEARER_TOKEN: &str = "FHIR_SERVER_BEARER_TOKEN";
    /// `timeout_ms`.
    pub const TIMEOUT_MS: &str = "FHIR_SERVER_TIMEOUT_MS";
    /// `attempts`.
    pub const ATTEMPTS: &str = "FHIR_SERVER_ATTEMPTS";
    /// `backoff_base_ms`.
    pub const BACKOFF_BASE_MS: &str = "FHIR_SERVER_BACKOFF_BASE_MS";
    /// `max_backoff_ms`.
    pub const MAX_BACKOFF_MS: &str = "FHIR_SERVER_MAX_BACKOFF_MS";
    /// `identifier_system`.
    pub const IDENTIFIER_SYSTEM: &str = "FHIR_SERVER_IDENTIFIER_SYSTEM";
    /// `ca_file`.
    pub const CA_FILE: &str = "FHIR_SERVER_CA_FILE";
}

/// The FHIR R4 server finished documents are created on (a `DocumentSink`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirServerConfig {
    /// `FHIR_SERVER_URL`: the server's FHIR base, e.g. `https://fhir.example.org/r4`
    /// (documents go to `[base]/DocumentReference`). `https` is required in
    /// production; `http` is for development and tests. No credentials in the
    /// URL: use `bearer_token`.
    pub base_url: String,
    /// `FHIR_SERVER_BEARER_TOKEN`: sent as `Authorization: Bearer <token>` when
    /// set. A secret: never printed, serialised or put in an error.
    #[serde(default, serialize_with = "serialize_secret")]
    pub bearer_token: Option<String>,
    /// `FHIR_SERVER_TIMEOUT_MS`: the most one request may take, connecting and
    /// reading the answer included, in milliseconds. Default 10000.
    #[serde(default = "FhirServerConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// `FHIR_SERVER_ATTEMPTS`: attempts at one request inside the sink (on 5xx,
    /// 408, 409, 429, timeouts and connection failures) before it reports a
    /// retryable error to the commit stage, which retries with its own backoff.
    /// Default 3; at most 10.
    #[serde(default = "FhirServerConfig::default_attempts")]
    pub attempts: u32,
    /// `FHIR_SERVER_BACKOFF_BASE_MS`: the wait after the first failed attempt;
    /// it doubles after each one. Default 200.
    #[serde(default = "FhirServerConfig::default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// `FHIR_SERVER_MAX_BACKOFF_MS`: the longest wait between attempts. A
    /// `Retry-After` longer than this ends the sink's own retries at once
    /// (retryably), leaving the wait to the commit stage. Default 5000.
    #[serde(default = "FhirServerConfig::default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// `FHIR_SERVER_IDENTIFIER_SYSTEM`: the `Identifier.system` under which the
    /// job id is written and searched (conditional create and delete). Default
    /// `urn:mmt:job`, what [`super::document_reference`] writes. Changing it on a
    /// server that already holds documents makes their jobs look new.
    #[serde(default = "FhirServerConfig::default_identifier_system")]
    pub identifier_system: String,
    /// `FHIR_SERVER_CA_FILE`: PEM file of the certificate authorities to trust
    /// for `https` instead of the built-in Mozilla roots (a hospital's private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl FhirServerConfig {
    /// A config for `base_url` with every other field at its default.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            bearer_token: None,
            timeout_ms: Self::default_timeout_ms(),
            attempts: Self::default_attempts(),
            backoff_base_ms: Self::default_backoff_base_ms(),
            max_backoff_ms: Self::default_max_backoff_ms(),
            identifier_system: Self::default_identifier_system(),
            ca_file: None,
        }
    }

    fn default_timeout_ms() -> u64 {
        10_000
    }

    fn default_attempts() -> u32 {
        3
    }

    fn default_backoff_base_ms() -> u64 {
        200
    }

    fn default_max_backoff_ms() -> u64 {
        5_000
    }

    fn default_identifier_system() -> String {
        JOB_ID_SYSTEM.to_owned()
    }

    /// Sets the bearer token.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Sets the request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = millis(timeout);
        self
    }

    /// Sets the attempts per request and the first backoff.
    pub fn retries(mut self, attempts: u32, backoff_base: Duration) -> Self {
        self.attempts = attempts;
        self.backoff_base_ms = millis(backoff_base);
        self
    }

    /// Sets the longest wait between attempts.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff_ms = millis(max);
        self
    }

    /// Sets the identifier system of job ids.
    pub fn identifier_system(mut self, system: impl Into<String>) -> Self {
        self.identifier_system = system.into();
        self
    }

    /// Reads the config from the variables in [`env`] through `lookup` (e.g.
    /// `|name| std::env::var(name).ok()`); `Ok(None)` when `FHIR_SERVER_URL` is
    /// unset or empty. Unparsable numbers are reported, all at once; call
    /// [`Self::validate`] on the result.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Vec<ConfigProblem>> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let Some(url) = get(env::URL) else {
            return Ok(None);
        };
        let mut config = Self::new(url.trim());
        let mut problems = Vec::new();
        config.bearer_token = get(env::BEARER_TOKEN);
        number(
            &get,
            env::TIMEOUT_MS,
            "timeout_ms",
            &mut config.timeout_ms,
            &mut problems,
        );
        number(
            &get,
            env::ATTEMPTS,
            "attempts",
            &mut config.attempts,
            &mut problems,
        );
        number(
            &get,
            env::BACKOFF_BASE_MS,
            "backoff_base_ms",
            &mut config.backoff_base_ms,
            &mut problems,
        );
        number(
            &get,
            env::MAX_BACKOFF_MS,
            "max_backoff_ms",
            &mut config.max_backoff_ms,
            &mut problems,
        );
        if let Some(system) = get(env::IDENTIFIER_SYSTEM) {
            config.identifier_system = system.trim().to_owned();
        }
        config.ca_file = get(env::CA_FILE).map(PathBuf::from);
        into_result(problems).map(|()| Some(config))
    }

    /// Checks the config without touching the network or the disk. `is_prod`:
    /// whether this process runs in production (`ENV=prod`), where the server
    /// must be reached over `https`.
    pub fn validate(&self, is_prod: bool) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let scheme = check_base_url(&self.base_url, &mut problems);
        if is_prod && scheme == Some("http") {
            problems.push(ConfigProblem::new(
                "base_url",
                "must use https in production: documents carry transcripts and patient \
                 references",
            ));
        }
        if let Some(token) = &self.bearer_token {
            if token.trim().is_empty() {
                problems.push(ConfigProblem::new("bearer_token", "is set but empty"));
            } else if token
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii())
            {
                // Never echo the token: say only what is wrong with it.
                problems.push(ConfigProblem::new(
                    "bearer_token",
                    "holds whitespace, control or non-ASCII characters (give the token \
                     alone, without the `Bearer ` prefix)",
                ));
            }
        }
        if self.timeout_ms == 0 {
            problems.push(ConfigProblem::new("timeout_ms", "must be above 0"));
        }
        if !(1..=10).contains(&self.attempts) {
            problems.push(ConfigProblem::new("attempts", "must be between 1 and 10"));
        }
        if self.backoff_base_ms == 0 {
            problems.push(ConfigProblem::new("backoff_base_ms", "must be above 0"));
        }
        if self.max_backoff_ms < self.backoff_base_ms {
            problems.push(ConfigProblem::new(
                "max_backoff_ms",
                "must be at least backoff_base_ms",
            ));
        }
        if !is_identifier_system(&self.identifier_system) {
            problems.push(ConfigProblem::new(
                "identifier_system",
                "must be an absolute URI of letters, digits and : / . _ ~ - only \
                 (e.g. urn:mmt:job or https://hospital.example/sid/mmt-job)",
            ));
        }
        if let Some(ca_file) = &self.ca_file {
            check_file_path("ca_file", ca_file, &mut problems);
            if scheme == Some("http") {
                problems.push(ConfigProblem::new(
                    "ca_file",
                    "only applies to an https base_url",
                ));
            }
        }
        into_result(problems)
    }

    /// Validates and builds the sink (reading `ca_file` if set). Touches no
    /// network: call [`FhirServerSink::health_check`] for that.
    pub fn build(&self, is_prod: bool) -> Result<FhirServerSink> {
        validated("FHIR server", self.validate(is_prod))?;
        FhirServerSink::new(self)
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    pub(crate) fn timeout_duration(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl fmt::Debug for FhirServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirServerConfig")
            .field("base_url", &self.base_url)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "***"))
            .field("timeout_ms", &self.timeout_ms)
            .field("attempts", &self.attempts)
            .field("backoff_base_ms", &self.backoff_base_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("identifier_system", &self.identifier_system)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn serialize_secret<S: Serializer>(
    secret: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_some("***"),
        None => serializer.serialize_none(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn number<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    field: &'static str,
    out: &mut T,
    problems: &mut Vec<ConfigProblem>,
) {
    if let Some(text) = get(name) {
        match text.trim().parse() {
            Ok(value) => *out = value,
            Err(_) => problems.push(ConfigProblem::new(
                field,
                format!("{name} must be a whole number"),
            )),
        }
    }
}

/// Pushes the problems of a base URL; returns its scheme when it has a known one.
fn check_base_url(url: &str, problems: &mut Vec<ConfigProblem>) -> Option<&'static str> {
    let mut problem = |rule: &'static str| problems.push(ConfigProblem::new("base_url", rule));
    // The parser strips surrounding whitespace and tabs silently: refuse them
    // first, so what is configured is what is called.
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        problem("must not contain whitespace");
        return None;
    }
    let Ok(parsed) = Url::parse(url) else {
        problem("must be an http:// or https:// URL (e.g. https://fhir.example.org/r4)");
        return None;
    };
    let scheme = match parsed.scheme() {
        "https" => "https",
        "http" => "http",
        _ => {
            problem("must use http:// or https://");
            return None;
        }
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        problem("names no host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        problem("must not carry credentials: use bearer_token");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        problem("must be the FHIR base, without a query or fragment");
    }
    Some(scheme)
}

/// An absolute URI restricted to characters that need no escaping in a search
/// parameter or header: `scheme:rest` of letters, digits and `: / . _ ~ -`.
fn is_identifier_system(system: &str) -> bool {
    let Some((scheme, rest)) = system.split_once(':') else {
        return false;
    };
    scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'))
        && !rest.is_empty()
        && system.len() <= 255
        && rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'.' | b'_' | b'~' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_are_valid_outside_prod_and_http_is_refused_in_prod() {
        let config = FhirServerConfig::new("http://127.0.0.1:8080/fhir");
        assert_eq!(config.validate(false), Ok(()));
        let problems = config.validate(true).expect_err("http in prod");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "base_url");
        assert!(problems[0].message.contains("https"));
        assert_eq!(
            FhirServerConfig::new("https://fhir.example.org/r4/").validate(true),
            Ok(())
        );
        assert_eq!(config.identifier_system, JOB_ID_SYSTEM);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = FhirServerConfig {
            base_url: "ftp://x".into(),
            bearer_token: Some("Bearer abc".into()),
            timeout_ms: 0,
            attempts: 0,
            backoff_base_ms: 0,
            max_backoff_ms: 0,
            identifier_system: "job ids".into(),
            ca_file: Some("/etc/ssl/".into()),
        };
        let problems = config.validate(false).expect_err("invalid");
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "base_url",
                "bearer_token",
                "timeout_ms",
                "attempts",
                "backoff_base_ms",
                "identifier_system",
                "ca_file"
            ]
        );
        assert!(!ConfigProblem::join(&problems).contains("abc"));
    }

    #[test]
    fn urls_are_checked() {
        for bad in [
            "fhir.example.org",
            "https://",
            "https://user:pw@fhir.example.org/r4",
            "https://fhir.example.org/r4?x=1",
            "https://fhir.example.org/r 4",
        ] {
            assert!(FhirServerConfig::new(bad).validate(false).is_err(), "{bad}");
        }
        let http_ca = FhirServerConfig {
            ca_file: Some("/etc/ca.pem".into()),
            ..FhirServerConfig::new("http://h/fhir")
        };
        assert!(http_ca.validate(false).is_err());
    }

    #[test]
    fn identifier_systems_are_checked() {
        assert!(is_identifier_system("urn:mmt:job"));
        assert!(is_identifier_system("https://hospital.example/sid/mmt-job"));
        assert!(!is_identifier_system("mmt-job"));
        assert!(!is_identifier_system("urn:a|b"));
        assert!(!is_identifier_system("urn:a&b=c"));
        assert!(!is_identifier_system("1urn:x"));
    }

    #[test]
    fn the_token_is_never_printed() {
        let config = FhirServerConfig::new("https://h/fhir").bearer_token("s3cr3t-token");
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let json = serde_json::to_string(&config).expect("json");
        assert!(!json.contains("s3cr3t"));
        assert!(json.contains("\"bearer_token\":\"***\""));
    }

    #[test]
    fn unknown_fields_are_refused_and_defaults_apply() {
        let parsed: FhirServerConfig =
            serde_json::from_str(r#"{"base_url": "https://h/fhir"}"#).expect("valid");
        assert_eq!(parsed, FhirServerConfig::new("https://h/fhir"));
        let parsed: Result<FhirServerConfig, _> =
            serde_json::from_str(r#"{"base_url": "https://h/fhir", "token": "x"}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn from_env_reads_every_variable() {
        let vars: HashMap<&str, &str> = [
            (env::URL, "https://h/fhir"),
            (env::BEARER_TOKEN, "tok"),
            (env::TIMEOUT_MS, "2500"),
            (env::ATTEMPTS, "4"),
            (env::BACKOFF_BASE_MS, "50"),
            (env::MAX_BACKOFF_MS, "800"),
            (env::IDENTIFIER_SYSTEM, "urn:hospital:mmt"),
            (env::CA_FILE, "/etc/mmt/ca.pem"),
        ]
        .into();
        let config = FhirServerConfig::from_env(|name| vars.get(name).map(|v| (*v).to_owned()))
            .expect("parses")
            .expect("configured");
        assert_eq!(config.bearer_token.as_deref(), Some("tok"));
        assert_eq!(
            (
                config.timeout_ms,
                config.attempts,
                config.backoff_base_ms,
                config.max_backoff_ms
            ),
            (2500, 4, 50, 800)
        );
        assert_eq!(config.identifier_system, "urn:hospital:mmt");
        assert_eq!(config.ca_file, Some(PathBuf::from("/etc/mmt/ca.pem")));
        assert_eq!(config.validate(true), Ok(()));

        assert_eq!(FhirServerConfig::from_env(|_| None), Ok(None));
        let problems = FhirServerConfig::from_env(|name| match name {
            env::URL => Some("https://h/fhir".into()),
            env::ATTEMPTS | env::TIMEOUT_MS => Some("many".into()),
            _ => None,
        })
        .expect_err("bad numbers");
        assert_eq!(problems.len(), 2);
    }
}
