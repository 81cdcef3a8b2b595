//! The other job sources and sinks: Kafka, audio references, a FHIR server.

use std::path::PathBuf;

use serde::Serialize;

use mmt_connectors::fhir::FhirServerConfig;
use mmt_connectors::reference::ReferenceConfig;

use super::vars::Vars;
use super::{Environment, Problem};

const MMT_KAFKA_BROKERS: &str = "MMT_KAFKA_BROKERS";
const MMT_KAFKA_TOPIC: &str = "MMT_KAFKA_TOPIC";
const MMT_KAFKA_GROUP: &str = "MMT_KAFKA_GROUP";
const MMT_AUDIO_REFERENCE_ROOT: &str = "MMT_AUDIO_REFERENCE_ROOT";

/// The variables this section reads.
pub(super) const VARIABLES: &[&str] = &[
    MMT_KAFKA_BROKERS,
    MMT_KAFKA_TOPIC,
    MMT_KAFKA_GROUP,
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
        }
    }

    pub(super) fn validate(&self, out: &mut Vec<Problem>) {
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
