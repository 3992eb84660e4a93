//! The one Kafka layer of every sluice process (operator, task, replay): client settings, topics, reading
//! partitions up to their end offsets, and which broker errors clear by themselves.
//!
//! - this module: [`client_config`] — librdkafka settings from a connection's settings plus its credentials,
//!   which the operator reads from Secrets and a pod from the env its Secret references fill.
//! - [`admin`]: the admin client and the offset calls the operator makes (group deletion, tombstones).
//! - [`topics`]: describe, create, grow and alter topics.
//! - [`read`]: watermarks, and reading partition ranges up to end offsets.
//! - [`transactional`]: a transactional producer (an exactly-once source's).

pub mod admin;
pub mod read;
pub mod renewing;
pub mod topics;
pub mod transactional;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::crd::common::SaslMechanism;
use crate::wire::TaskKafka;

/// A Kafka call that failed, and what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("Kafka ({operation}): {source}")]
pub struct Error {
    pub operation: &'static str,
    pub source: KafkaError,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a librdkafka error with what the call was doing.
pub fn failed(operation: &'static str) -> impl FnOnce(KafkaError) -> Error {
    move |source| Error { operation, source }
}

/// Secret material of a connection, as the operator reads it from the Secrets the spec references.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaCredentials {
    pub sasl: Option<(String, String)>,
    pub ca_pem: Option<String>,
    pub certificate_pem: Option<String>,
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for KafkaCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaCredentials(redacted)")
    }
}

/// Where a client's credentials come from.
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    /// Read by the operator from Secrets.
    Secrets(&'a KafkaCredentials),
    /// In a pod: env `SLUICE_KAFKA_SASL_{USERNAME,PASSWORD}` and the TLS files named by
    /// `SLUICE_KAFKA_TLS_{CA,CERT,KEY}_FILE`, which the pod fills from Secret references.
    Env,
}

/// librdkafka's consumer-only properties (`C` in its CONFIGURATION.md, 2.12): kept from producers and
/// admin clients, which would warn about each (and the warning would read as a task's failure).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.commit.enable",
    "auto.offset.reset",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "consume.callback.max.messages",
];

/// librdkafka's producer-only properties (`P` in its CONFIGURATION.md, 2.12): kept from consumers.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
    "compression.level",
];

/// The kind of client a config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A producer, or an admin client (librdkafka's admin handle is a producer).
    Producer,
    Consumer,
}

/// librdkafka settings for a producer or admin client of a connection: the user's extra properties (but
/// consumer-only ones), then what sluice sets. A client config holds credentials: it is never logged.
pub fn client_config(kafka: &TaskKafka, credentials: Credentials<'_>) -> ClientConfig {
    config_for(kafka, credentials, Role::Producer)
}

fn config_for(kafka: &TaskKafka, credentials: Credentials<'_>, role: Role) -> ClientConfig {
    let other = match role {
        Role::Producer => CONSUMER_ONLY,
        Role::Consumer => PRODUCER_ONLY,
    };
    let mut config = ClientConfig::new();
    for (k, v) in &kafka.properties {
        if !other.contains(&k.as_str()) {
            config.set(k, v);
        }
    }
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    config.set(
        "security.protocol",
        security_protocol(kafka.tls, kafka.sasl_mechanism.is_some()),
    );
    if let Some(m) = kafka.sasl_mechanism {
        config.set("sasl.mechanism", sasl_mechanism(m));
    }
    match credentials {
        Credentials::Secrets(creds) => {
            if let (Some(_), Some((user, password))) = (kafka.sasl_mechanism, &creds.sasl) {
                config.set("sasl.username", user);
                config.set("sasl.password", password);
            }
            for (key, pem) in [
                ("ssl.ca.pem", &creds.ca_pem),
                ("ssl.certificate.pem", &creds.certificate_pem),
                ("ssl.key.pem", &creds.key_pem),
            ] {
                if let Some(pem) = pem {
                    config.set(key, pem);
                }
            }
        }
        Credentials::Env => {
            if kafka.sasl_mechanism.is_some() {
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
        }
    }
    config
}

/// How long librdkafka postpones the next fetch of a partition whose local queue holds more than
/// `queued.min.messages`. Its default, 1000 ms, idles a consumer that drains the queue within the second
/// (librdkafka issue 2879): a no-op sink moved 118,000 records/s with it and 603,000 with 10 ms, at the
/// same memory (the queue's bounds don't change).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The settings for a consumer (the user's properties but producer-only ones), with sluice's fetch backoff
/// unless `kafka.properties` sets one.
pub fn consumer_config(kafka: &TaskKafka, credentials: Credentials<'_>) -> ClientConfig {
    let mut config = config_for(kafka, credentials, Role::Consumer);
    if !kafka.properties.contains_key("fetch.queue.backoff.ms") {
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    config
}

/// A connection's settings for each kind of client, with the operator's credentials (never logged).
#[derive(Clone)]
pub struct Clients {
    /// For producers and admin clients.
    pub producer: ClientConfig,
    pub consumer: ClientConfig,
}

impl Clients {
    pub fn new(kafka: &TaskKafka, credentials: &KafkaCredentials) -> Self {
        Self {
            producer: client_config(kafka, Credentials::Secrets(credentials)),
            consumer: consumer_config(kafka, Credentials::Secrets(credentials)),
        }
    }
}

/// librdkafka's `security.protocol` for TLS and SASL on or off.
pub fn security_protocol(tls: bool, sasl: bool) -> &'static str {
    match (tls, sasl) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    }
}

pub fn sasl_mechanism(m: SaslMechanism) -> &'static str {
    match m {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// The subscription pattern of a sink's `topicsRegex`: librdkafka treats a topic name starting with `^` as
/// a regular expression and matches it anywhere in a name, while Kafka Connect matches the whole name; so
/// the expression is anchored at both ends (`orders` matches `orders`, not `orders-eu`).
pub fn subscription_pattern(topics_regex: &str) -> String {
    let inner = topics_regex.strip_prefix('^').unwrap_or(topics_regex);
    let inner = match inner.strip_suffix('$') {
        Some(rest) if !rest.ends_with('\\') => rest,
        _ => inner,
    };
    format!("^({inner})$")
}

/// Why librdkafka would refuse to subscribe to `topics_regex` (it compiles it with its own engine, POSIX
/// extended syntax: no look-around, `{m,n}` with m ≤ n), or `None` when it compiles. Local: no connection
/// is made. Compiling takes a librdkafka client (threads of its own) and a Connector is validated at every
/// reconcile, so each expression's answer is kept for the life of the process.
pub fn topics_regex_error(topics_regex: &str) -> Option<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    static ANSWERS: std::sync::Mutex<std::collections::BTreeMap<String, Option<String>>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut answers = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(answer) = answers.get(topics_regex) {
        return answer.clone();
    }
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("group.id", "sluice-topics-regex-check")
        .set("log_level", "0")
        .create()
    {
        Ok(c) => c,
        // Not an answer about the expression: not kept.
        Err(e) => return Some(e.to_string()),
    };
    let answer = consumer
        .subscribe(&[&subscription_pattern(topics_regex)])
        .err()
        .map(|_| "librdkafka cannot compile it as a regular expression".to_string());
    answers.insert(topics_regex.into(), answer.clone());
    answer
}

/// Broker errors that clear by themselves (Kafka's `RetriableException`s and librdkafka's transport errors),
/// and the purge of a producer that sluice replaced ([`renewing`]): its record is sent again.
pub fn is_retriable(code: RDKafkaErrorCode) -> bool {
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
            | PurgeQueue
            | PurgeInflight
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn topics_regex_is_checked_by_librdkafka() {
        for good in ["orders.*", "^orders\\.(eu|us)$", "orders[0-9]+"] {
            assert_eq!(super::topics_regex_error(good), None, "{good}");
        }
        for bad in ["orders(", "a[", "(?=x)y", "a{2,1}", "*a"] {
            assert!(super::topics_regex_error(bad).is_some(), "{bad}");
        }
        assert_eq!(super::subscription_pattern("orders.*"), "^(orders.*)$");
        assert_eq!(super::subscription_pattern("^a|b$"), "^(a|b)$");
        assert_eq!(super::subscription_pattern("price\\$"), "^(price\\$)$");
    }

    use super::*;
    use std::collections::BTreeMap;

    fn kafka(properties: &[(&str, &str)]) -> TaskKafka {
        TaskKafka {
            bootstrap_servers: "k1:9092,k2:9092".into(),
            tls: false,
            sasl_mechanism: None,
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn plaintext_keeps_user_properties() {
        let config = client_config(
            &kafka(&[("compression.type", "zstd")]),
            Credentials::Secrets(&KafkaCredentials::default()),
        );
        assert_eq!(config.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
    }

    #[test]
    fn sasl_over_tls_uses_secret_material() {
        let mut k = kafka(&[]);
        k.tls = true;
        k.sasl_mechanism = Some(SaslMechanism::ScramSha512);
        let creds = KafkaCredentials {
            sasl: Some(("app".into(), "s3cret".into())),
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            ..Default::default()
        };
        let config = client_config(&k, Credentials::Secrets(&creds));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("app"));
        assert_eq!(
            config.get("ssl.ca.pem"),
            Some("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            !format!("{creds:?}").contains("s3cret"),
            "credentials never print"
        );
    }

    #[test]
    fn consumers_fetch_again_soon_unless_the_user_says_otherwise() {
        let ours = consumer_config(&kafka(&[]), Credentials::Env);
        assert_eq!(ours.get("fetch.queue.backoff.ms"), Some("10"));
        let theirs = consumer_config(
            &kafka(&[("fetch.queue.backoff.ms", "500")]),
            Credentials::Env,
        );
        assert_eq!(theirs.get("fetch.queue.backoff.ms"), Some("500"));
        assert_eq!(
            client_config(&kafka(&[]), Credentials::Env).get("fetch.queue.backoff.ms"),
            None,
            "producers don't get consumer settings"
        );
    }

    #[test]
    fn each_client_gets_only_the_properties_of_its_kind() {
        let k = kafka(&[
            ("max.poll.interval.ms", "7000"),
            ("session.timeout.ms", "6000"),
            ("linger.ms", "20"),
            ("socket.keepalive.enable", "true"),
        ]);
        let producer = client_config(&k, Credentials::Env);
        assert_eq!(producer.get("max.poll.interval.ms"), None);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("socket.keepalive.enable"), Some("true"));
        let consumer = consumer_config(&k, Credentials::Env);
        assert_eq!(consumer.get("max.poll.interval.ms"), Some("7000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("socket.keepalive.enable"), Some("true"));
    }
}
