//! Kafka clients of a task: their settings from the task config and env, and error classification.

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::TaskKafka;
use super::errors::{Failure, Stage};
use crate::controller::kafka::{sasl_mechanism, security_protocol};

/// Client settings; credentials and TLS files come from the env the pod fills from Secrets.
pub fn client_config(kafka: &TaskKafka) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in &kafka.properties {
        config.set(k, v);
    }
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    config.set(
        "security.protocol",
        security_protocol(kafka.tls, kafka.sasl_mechanism.is_some()),
    );
    if let Some(m) = kafka.sasl_mechanism {
        config.set("sasl.mechanism", sasl_mechanism(m));
        for (var, key) in [
            ("SLUICE_KAFKA_SASL_USERNAME", "sasl.username"),
            ("SLUICE_KAFKA_SASL_PASSWORD", "sasl.password"),
        ] {
            if let Ok(v) = std::env::var(var) {
                config.set(key, v);
            }
        }
    }
    for (var, key) in [
        ("SLUICE_KAFKA_TLS_CA_FILE", "ssl.ca.location"),
        ("SLUICE_KAFKA_TLS_CERT_FILE", "ssl.certificate.location"),
        ("SLUICE_KAFKA_TLS_KEY_FILE", "ssl.key.location"),
    ] {
        if let Ok(v) = std::env::var(var) {
            config.set(key, v);
        }
    }
    config
}

/// Broker errors that clear by themselves (Kafka's `RetriableException`s and librdkafka's transport errors).
fn retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageTimedOut
            | RequestTimedOut
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | LeaderNotAvailable
            | NotLeaderForPartition
            | BrokerTransportFailure
            | AllBrokersDown
            | NetworkException
            | QueueFull
            | CoordinatorNotAvailable
            | NotCoordinator
            | UnknownTopicOrPartition
            | KafkaStorageError
            | OperationTimedOut
    )
}

pub fn classify_kafka_error(stage: Stage, err: &KafkaError) -> Failure {
    let code = err.rdkafka_error_code();
    let mut f = Failure::new(
        stage,
        "org.apache.kafka.common.KafkaException",
        err.to_string(),
        code.is_some_and(retriable),
    );
    if let Some(c) = code {
        f.code = Some(c as i32);
    }
    f
}
