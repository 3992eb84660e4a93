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

/// How long librdkafka postpones the next fetch of a partition whose local queue holds more than
/// `queued.min.messages`. Its default, 1000 ms, idles a consumer that drains the queue within the second
/// (librdkafka issue 2879): a no-op sink moved 118,000 records/s with it and 603,000 with 10 ms, at the
/// same memory (the queue's bounds don't change).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// [`client_config`] for a consumer, with sluice's fetch backoff unless `kafka.properties` sets one.
pub fn consumer_config(kafka: &TaskKafka) -> ClientConfig {
    let mut config = client_config(kafka);
    if !kafka.properties.contains_key("fetch.queue.backoff.ms") {
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(properties: &[(&str, &str)]) -> TaskKafka {
        TaskKafka {
            bootstrap_servers: "127.0.0.1:9092".into(),
            tls: false,
            sasl_mechanism: None,
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn consumers_fetch_again_soon_unless_the_user_says_otherwise() {
        let ours = consumer_config(&kafka(&[]));
        assert_eq!(ours.get("fetch.queue.backoff.ms"), Some("10"));
        let theirs = consumer_config(&kafka(&[("fetch.queue.backoff.ms", "500")]));
        assert_eq!(theirs.get("fetch.queue.backoff.ms"), Some("500"));
        assert_eq!(
            client_config(&kafka(&[])).get("fetch.queue.backoff.ms"),
            None,
            "producers don't get consumer settings"
        );
    }
}
