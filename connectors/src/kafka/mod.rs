//! The Kafka job source: a consumer-group member reading job envelopes
//! (`schemas/job-envelope.schema.json`) from one topic, committing offsets only
//! after MMT's sinks have committed (see [`source`] for the offset rules).
//!
//! [`KafkaSourceConfig`] is the typed config: `validate()` checks it without
//! the network, `connect()` builds the [`KafkaSource`], `health_check()` asks
//! the brokers for the topic's metadata.

pub mod config;
pub mod source;

pub use config::{HealthReport, KafkaSasl, KafkaSourceConfig, SaslMechanism, SecurityProtocol};
pub use source::KafkaSource;

use mmt_core::error::ErrorClass;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The class of a Kafka client error. Transport and broker errors are
/// retryable (librdkafka reconnects; a commit refused during a rebalance
/// succeeds, or is redelivered, later); a fatal error means the consumer must
/// be rebuilt; a refused setting or subscription is a bug or a broken deployment.
pub(crate) fn error_class(error: &KafkaError) -> ErrorClass {
    match error {
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Subscription(_)
        | KafkaError::Nul(_) => ErrorClass::Internal,
        KafkaError::MessageConsumptionFatal(_) => ErrorClass::External { retryable: false },
        other if other.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
            ErrorClass::External { retryable: false }
        }
        _ => ErrorClass::External { retryable: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectorError;

    #[test]
    fn kafka_errors_are_classed() {
        let transport = ConnectorError::from(KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure,
        ));
        assert_eq!(transport.class(), ErrorClass::External { retryable: true });
        let commit = ConnectorError::from(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RebalanceInProgress,
        ));
        assert!(commit.class().is_retryable());
        let fatal =
            ConnectorError::from(KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal));
        assert_eq!(fatal.class(), ErrorClass::External { retryable: false });
        let config = ConnectorError::from(KafkaError::ClientCreation("bad".into()));
        assert_eq!(config.class(), ErrorClass::Internal);
        let topic = ConnectorError::KafkaTopic {
            topic: "jobs".into(),
            reason: "has no partitions".into(),
        };
        assert!(topic.class().is_retryable());
    }
}
