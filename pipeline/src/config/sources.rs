//! The other job sources and sinks: Kafka, audio references, a FHIR server.

use std::path::{Path, PathBuf};

use serde::Serialize;

use mmt_connectors::fhir::FhirServerConfig;
use mmt_connectors::kafka::{KafkaSasl, KafkaSourceConfig, SaslMechanism, SecurityProtocol};
use mmt_connectors::reference::ReferenceConfig;
use mmt_connectors::tls::{is_local_host, TlsClientFiles};

use super::secret::Secret;
use super::tls::{PhiLink, TlsFileVars};
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const MMT_KAFKA_BROKERS: &str = "MMT_KAFKA_BROKERS";
const MMT_KAFKA_TOPIC: &str = "MMT_KAFKA_TOPIC";
const MMT_KAFKA_GROUP: &str = "MMT_KAFKA_GROUP";
const MMT_AUDIO_REFERENCE_ROOT: &str = "MMT_AUDIO_REFERENCE_ROOT";
const MMT_KAFKA_SECURITY_PROTOCOL: &str = "MMT_KAFKA_SECURITY_PROTOCOL";
const MMT_KAFKA_SASL_MECHANISM: &str = "MMT_KAFKA_SASL_MECHANISM";
const MMT_KAFKA_SASL_USERNAME: &str = "MMT_KAFKA_SASL_USERNAME";
const MMT_KAFKA_SASL_PASSWORD: &str = "MMT_KAFKA_SASL_PASSWORD";
const KAFKA_TLS_FILES: TlsFileVars = TlsFileVars {
    ca: "MMT_KAFKA_TLS_CA_FILE",
    cert: "MMT_KAFKA_TLS_CERT_FILE",
    key: "MMT_KAFKA_TLS_KEY_FILE",
};

/// The variables this section reads.
pub(super) const VARIABLES: &[&str] = &[
    MMT_KAFKA_BROKERS,
    MMT_KAFKA_TOPIC,
    MMT_KAFKA_GROUP,
    MMT_KAFKA_SECURITY_PROTOCOL,
    KAFKA_TLS_FILES.ca,
    KAFKA_TLS_FILES.cert,
    KAFKA_TLS_FILES.key,
    MMT_KAFKA_SASL_MECHANISM,
    MMT_KAFKA_SASL_USERNAME,
    MMT_KAFKA_SASL_PASSWORD,
    MMT_AUDIO_REFERENCE_ROOT,
];

/// Kafka as the job source (`mmt run --source kafka`).
#[derive(Debug, Clone, Serialize)]
pub struct KafkaConfig {
    /// `MMT_KAFKA_BROKERS`: bootstrap servers, `host:port[,host:port...]`.
    /// Default `127.0.0.1:9092`.
    pub brokers: String,
    /// `MMT_KAFKA_TOPIC`: topic of job envelopes. Default `mmt.jobs`.
    pub topic: String,
    /// `MMT_KAFKA_GROUP`: consumer group shared by the workers. Default `mmt-workers`.
    pub group: String,
    /// `MMT_KAFKA_SECURITY_PROTOCOL`: `plaintext` (default), `ssl`,
    /// `sasl_plaintext` or `sasl_ssl`. TLS verifies the brokers' certificates
    /// and host names; `prod` requires `ssl` or `sasl_ssl` for brokers on
    /// other machines (job messages carry audio and patient references).
    pub security_protocol: SecurityProtocol,
    /// `MMT_KAFKA_TLS_CA_FILE` (default: the system's trust store),
    /// `MMT_KAFKA_TLS_CERT_FILE` and `MMT_KAFKA_TLS_KEY_FILE` (a client
    /// certificate). PEM files; only with `ssl` or `sasl_ssl`.
    pub tls_files: TlsClientFiles,
    /// `MMT_KAFKA_SASL_MECHANISM` (`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`),
    /// `MMT_KAFKA_SASL_USERNAME`, `MMT_KAFKA_SASL_PASSWORD` (a secret): required
    /// with `sasl_plaintext` and `sasl_ssl`, refused otherwise.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `MMT_KAFKA_SASL_USERNAME`.
    pub sasl_username: Option<String>,
    /// `MMT_KAFKA_SASL_PASSWORD`: never printed.
    pub sasl_password: Option<Secret>,
}

/// Where message-borne jobs may point and where documents go.
#[derive(Debug, Clone, Serialize)]
pub struct SinksAndIngestConfig {
    /// `MMT_AUDIO_REFERENCE_ROOT`: folder (a shared volume) holding one folder
    /// per tenant, `<root>/<tenant>/`, in which a job envelope or an API
    /// request may reference its audio by relative path; unset refuses references.
    pub audio_reference_root: Option<PathBuf>,
    /// `FHIR_SERVER_URL` and the other `FHIR_SERVER_*` variables: a FHIR R4
    /// server where DocumentReferences are created (conditional create) instead
    /// of NDJSON files. See `mmt_connectors::fhir::config::env`.
    pub fhir: Option<FhirServerConfig>,
}

impl KafkaConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            brokers: vars
                .text(MMT_KAFKA_BROKERS)
                .unwrap_or_else(|| "127.0.0.1:9092".into()),
            topic: vars
                .text(MMT_KAFKA_TOPIC)
                .unwrap_or_else(|| "mmt.jobs".into()),
            group: vars
                .text(MMT_KAFKA_GROUP)
                .unwrap_or_else(|| "mmt-workers".into()),
            security_protocol: vars
                .parse(
                    MMT_KAFKA_SECURITY_PROTOCOL,
                    "plaintext, ssl, sasl_plaintext or sasl_ssl",
                    Echo::Value,
                    parse_security_protocol,
                )
                .unwrap_or_default(),
            tls_files: KAFKA_TLS_FILES.read(vars),
            sasl_mechanism: vars.parse(
                MMT_KAFKA_SASL_MECHANISM,
                SaslMechanism::EXPECTED,
                Echo::Value,
                SaslMechanism::parse,
            ),
            sasl_username: vars.text(MMT_KAFKA_SASL_USERNAME),
            sasl_password: vars.text(MMT_KAFKA_SASL_PASSWORD).map(Secret::new),
        }
    }

    /// The connector's settings for the topic, the group and the security
    /// protocol (the caller adds the rest).
    pub fn source_config(&self) -> KafkaSourceConfig {
        let mut source = KafkaSourceConfig::new(&self.brokers, &self.topic, &self.group);
        source.security_protocol = self.security_protocol;
        source.tls = self.tls_files.clone();
        source.sasl = match (
            self.sasl_mechanism,
            &self.sasl_username,
            &self.sasl_password,
        ) {
            (Some(mechanism), Some(username), Some(password)) => Some(KafkaSasl {
                mechanism,
                username: username.clone(),
                password: password.expose().to_owned(),
            }),
            _ => None,
        };
        source
    }

    /// The TLS files librdkafka reads when TLS is on.
    pub(super) fn tls_file_paths(&self) -> Vec<(&'static str, &Path)> {
        KAFKA_TLS_FILES.set(&self.tls_files)
    }

    /// Whether every broker is on this machine.
    fn brokers_are_local(&self) -> bool {
        self.brokers.split(',').all(|broker| {
            let host = broker.trim().rsplit_once(':').map_or("", |(host, _)| host);
            is_local_host(host.trim_matches(['[', ']']))
        })
    }

    fn validate_security(&self, env: Environment, out: &mut Vec<Problem>) {
        let protocol = self.security_protocol;
        KAFKA_TLS_FILES.validate(
            &self.tls_files,
            protocol.is_tls(),
            "set MMT_KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl",
            out,
        );
        let sasl = [
            (MMT_KAFKA_SASL_MECHANISM, self.sasl_mechanism.is_some()),
            (MMT_KAFKA_SASL_USERNAME, self.sasl_username.is_some()),
            (MMT_KAFKA_SASL_PASSWORD, self.sasl_password.is_some()),
        ];
        for (variable, set) in sasl {
            if protocol.is_sasl() && !set {
                out.push(Problem::fatal(
                    variable,
                    "not set, but MMT_KAFKA_SECURITY_PROTOCOL is sasl_plaintext or sasl_ssl",
                ));
            } else if !protocol.is_sasl() && set {
                out.push(Problem::fatal(
                    variable,
                    "is set but ignored: MMT_KAFKA_SECURITY_PROTOCOL is not sasl_plaintext \
                     or sasl_ssl",
                ));
            }
        }
        PhiLink {
            variable: MMT_KAFKA_SECURITY_PROTOCOL,
            service: "Kafka (MMT_KAFKA_BROKERS)",
            carries: "job messages: audio, patient references",
            transport: self.source_config().transport(),
            local: self.brokers_are_local(),
            fix: "set MMT_KAFKA_SECURITY_PROTOCOL=ssl (or sasl_ssl) and MMT_KAFKA_TLS_CA_FILE",
        }
        .validate(env, out);
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        self.validate_security(env, out);
        let bad_broker = self.brokers.split(',').any(|broker| {
            let broker = broker.trim();
            broker.is_empty() || broker.contains("://") || !broker.contains(':')
        });
        if bad_broker {
            out.push(Problem::fatal(
                MMT_KAFKA_BROKERS,
                "expected host:port[,host:port...] without a scheme",
            ));
        }
    }
}

/// `MMT_KAFKA_SECURITY_PROTOCOL`, as librdkafka spells it, case-insensitively.
fn parse_security_protocol(value: &str) -> Option<SecurityProtocol> {
    match value.to_ascii_lowercase().as_str() {
        "plaintext" => Some(SecurityProtocol::Plaintext),
        "ssl" => Some(SecurityProtocol::Ssl),
        "sasl_plaintext" => Some(SecurityProtocol::SaslPlaintext),
        "sasl_ssl" => Some(SecurityProtocol::SaslSsl),
        _ => None,
    }
}

impl SinksAndIngestConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            audio_reference_root: vars.text(MMT_AUDIO_REFERENCE_ROOT).map(PathBuf::from),
            fhir: match FhirServerConfig::from_env(|name| vars.text(name)) {
                Ok(fhir) => fhir,
                Err(problems) => {
                    for problem in problems {
                        vars.report(Problem::fatal("FHIR_SERVER_*", problem.to_string()));
                    }
                    None
                }
            },
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        if let Some(root) = &self.audio_reference_root {
            if let Err(problems) = ReferenceConfig::new(root).validate() {
                for problem in problems {
                    out.push(Problem::fatal(MMT_AUDIO_REFERENCE_ROOT, problem.message));
                }
            }
        }
        if let Some(Err(problems)) = self.fhir.as_ref().map(|f| f.validate(env.is_prod())) {
            for problem in problems {
                out.push(Problem::fatal("FHIR_SERVER_*", problem.to_string()));
            }
        }
    }
}
