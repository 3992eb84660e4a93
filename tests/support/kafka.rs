//! Kafka for tests: topics of their own, and readers from a topic's start.

use super::{Env, unique};

/// Creates a Kafka topic for a test.
pub async fn create_topic(env: &Env, topic: &str, partitions: i32) {
    let r = try_create_topic(env, topic, partitions).await;
    assert!(r.is_ok(), "create topic {topic}: {r:?}");
}

/// Creates a Kafka topic unless it exists (for fixed names, such as the examples').
pub async fn create_topic_if_missing(env: &Env, topic: &str, partitions: i32) {
    use rdkafka::types::RDKafkaErrorCode;
    let r = try_create_topic(env, topic, partitions).await;
    assert!(
        matches!(r, Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists)),
        "create topic {topic}: {r:?}"
    );
}

async fn try_create_topic(
    env: &Env,
    topic: &str,
    partitions: i32,
) -> Result<(), rdkafka::types::RDKafkaErrorCode> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    r.into_iter()
        .next()
        .expect("one result")
        .map(|_| ())
        .map_err(|(_, code)| code)
}

/// A consumer of `topic` from its start, in a group of its own.
pub fn topic_reader(env: &Env, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// The `__connect.errors.exception.message` of every record of a dead-letter topic, from its start until
/// none came for `quiet`.
pub async fn dead_letter_messages(
    env: &Env,
    topic: &str,
    quiet: std::time::Duration,
) -> Vec<String> {
    use rdkafka::message::{Headers, Message};
    let consumer = topic_reader(env, topic);
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(quiet, consumer.recv()).await {
        out.push(
            m.headers()
                .and_then(|hs| {
                    hs.iter()
                        .find(|h| h.key == "__connect.errors.exception.message")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default(),
        );
    }
    out
}
