//! Kafka for tests: topics of their own, and readers from a topic's start.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Env, unique};

/// Produces each of `values` to `topic` under the key `k`, waiting for each acknowledgement.
pub async fn produce_values(env: &Env, topic: &str, values: &[&str]) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    for value in values {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key("k")
                    .payload(*value),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Creates a Kafka topic for a test.
pub async fn create_topic(env: &Env, topic: &str, partitions: i32) {
    create_topic_with(env, topic, partitions, &[]).await;
}

/// Creates a Kafka topic with these topic configs (`max.message.bytes`, …).
pub async fn create_topic_with(env: &Env, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let r = try_create_topic(env, topic, partitions, configs).await;
    assert!(r.is_ok(), "create topic {topic}: {r:?}");
}

/// Creates a Kafka topic unless it exists (for fixed names, such as the examples').
pub async fn create_topic_if_missing(env: &Env, topic: &str, partitions: i32) {
    use rdkafka::types::RDKafkaErrorCode;
    let r = try_create_topic(env, topic, partitions, &[]).await;
    assert!(
        matches!(r, Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists)),
        "create topic {topic}: {r:?}"
    );
}

async fn try_create_topic(
    env: &Env,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), rdkafka::types::RDKafkaErrorCode> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (name, value) in configs {
        new = new.set(name, value);
    }
    let r = admin
        .create_topics(&[new], &AdminOptions::new())
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
    reader_with(env, topic, "read_uncommitted")
}

/// A `read_committed` consumer of `topic` from its start, in a group of its own: what a consumer of an
/// exactly-once source sees.
pub fn committed_reader(env: &Env, topic: &str) -> rdkafka::consumer::StreamConsumer {
    reader_with(env, topic, "read_committed")
}

fn reader_with(env: &Env, topic: &str, isolation: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// How often each inserted `_id` arrived, read `read_committed` until `n` distinct ones came and then
/// nothing for a few seconds.
pub async fn count_committed(env: &Env, topic: &str, n: usize) -> BTreeMap<i64, u32> {
    // Created first unless the task did (as the task would: one partition), so the subscription finds it.
    create_topic_if_missing(env, topic, 1).await;
    let consumer = committed_reader(env, topic);
    let mut seen = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let wait = if seen.len() < n {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(4)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => {
                let v: serde_json::Value =
                    serde_json::from_slice(rdkafka::Message::payload(&m).unwrap_or_default())
                        .unwrap();
                let id = v["documentKey"]["_id"].as_i64().unwrap();
                *seen.entry(id).or_insert(0) += 1;
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) if seen.len() >= n => return seen,
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} events on {topic}",
                seen.len()
            ),
        }
    }
}

/// The `__connect.errors.exception.message` of every record of a dead-letter topic, from its start until
/// none came for `quiet`.
pub async fn dead_letter_messages(
    env: &Env,
    topic: &str,
    quiet: std::time::Duration,
) -> Vec<String> {
    dead_letter_headers(env, topic, quiet)
        .await
        .into_iter()
        .map(|mut h| {
            h.remove("__connect.errors.exception.message")
                .unwrap_or_default()
        })
        .collect()
}

/// Every record of a dead-letter topic as its headers (name → value as text), read until the topic stays
/// quiet for `quiet`.
pub async fn dead_letter_headers(
    env: &Env,
    topic: &str,
    quiet: std::time::Duration,
) -> Vec<std::collections::BTreeMap<String, String>> {
    use rdkafka::message::{Headers, Message};
    let consumer = topic_reader(env, topic);
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(quiet, consumer.recv()).await {
        out.push(
            m.headers()
                .map(|hs| {
                    hs.iter()
                        .filter_map(|h| {
                            let value = String::from_utf8_lossy(h.value?).into_owned();
                            Some((h.key.to_string(), value))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    out
}

/// Stops the environment's broker, waits `down_seconds`, and starts it again with its data and ports
/// (`envctl.py restart kafka`); returns once it serves again. Blocking.
pub fn restart_kafka(down_seconds: u64) {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/envctl.py"))
        .args([
            "restart",
            "kafka",
            "--down-seconds",
            &down_seconds.to_string(),
        ])
        .output()
        .expect("run envctl.py restart");
    assert!(
        out.status.success(),
        "restarting Kafka failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kafka's Java producer's hash of a record key (`org.apache.kafka.common.utils.Utils.murmur2`): its
/// default partitioner puts a keyed record in partition `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}
