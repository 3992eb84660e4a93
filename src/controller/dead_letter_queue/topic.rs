//! A DeadLetterQueue's topic: what the spec wants (partitions, replication, configs — retention among them),
//! bringing the broker's topic to it (partitions only grow), and the `Ready` condition for what the broker
//! has. Deleting the resource keeps the topic: dead-letter records are never dropped by the operator.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use rdkafka::ClientConfig;

use crate::controller::conditions::{Desired, READY};
use crate::controller::{Problem, reason};
use crate::crd::dead_letter_queue::TopicStatus;
use crate::crd::{Connector, DeadLetterQueue};
use crate::kafka::admin::Admin;
use crate::kafka::topics::{self, Refused, WantedTopic, config_drift};
use crate::names;

/// The topic's name: the spec's, else the resource's.
pub fn topic_name(dlq: &DeadLetterQueue) -> String {
    dlq.spec
        .topic_name
        .clone()
        .unwrap_or_else(|| dlq.name_any())
}

/// What a dead-letter record adds to the record it carries: its context headers, and framing.
pub const DEAD_LETTER_OVERHEAD_BYTES: i64 = names::CONTEXT_HEADERS_MAX_BYTES as i64 + 1024;

/// The topic configs the spec asks for. Unless the spec sets `max.message.bytes`, the topic takes records
/// as large as the largest its Connectors read (`feeding_max`, their topics' `max.message.bytes`) plus
/// the context headers, so a record that could be read can be dead-lettered.
pub fn desired_configs(
    dlq: &DeadLetterQueue,
    feeding_max: Option<i64>,
) -> BTreeMap<String, String> {
    let mut configs = dlq.spec.config.clone().unwrap_or_default();
    if let Some(ms) = dlq.spec.retention_ms {
        configs.insert("retention.ms".into(), ms.to_string());
    }
    if let Some(max) = feeding_max {
        configs
            .entry("max.message.bytes".into())
            .or_insert_with(|| (max + DEAD_LETTER_OVERHEAD_BYTES).to_string());
    }
    configs
}

/// The topic the spec asks for.
pub fn wanted_topic(dlq: &DeadLetterQueue, feeding_max: Option<i64>) -> WantedTopic {
    WantedTopic {
        name: topic_name(dlq),
        partitions: dlq.spec.partitions,
        replication_factor: dlq.spec.replication_factor.unwrap_or(-1),
        configs: desired_configs(dlq, feeding_max),
    }
}

/// The largest `max.message.bytes` of the topics the referencing sink Connectors read (on this queue's
/// Kafka), `None` when there are none or none says.
/// Only needed when the spec does not set `max.message.bytes` itself.
pub async fn feeding_max_message_bytes(
    dlq: &DeadLetterQueue,
    connectors: &[Connector],
    admin: &Admin,
) -> Result<Option<i64>, crate::kafka::Error> {
    let own = dlq
        .spec
        .config
        .as_ref()
        .is_some_and(|c| c.contains_key("max.message.bytes"));
    let topics: BTreeSet<String> = connectors
        .iter()
        .filter(|c| c.spec.kafka.bootstrap_servers == dlq.spec.kafka.bootstrap_servers)
        .filter(|c| super::feeds(c, dlq))
        .filter_map(|c| c.spec.sink.as_ref()?.topics.clone())
        .flatten()
        .collect();
    if own || topics.is_empty() {
        return Ok(None);
    }
    let mut max = None;
    for topic in topics {
        if let Some(bytes) = topics::max_message_bytes(admin, &topic).await? {
            max = Some(max.map_or(bytes, |m: i64| m.max(bytes)));
        }
    }
    Ok(max)
}

/// What a refusal of the broker means for the user.
pub fn refusal_problem(wanted: &WantedTopic, refused: &Refused) -> Problem {
    let topic = &wanted.name;
    match refused {
        Refused::Create(code, rejected) => Problem::new(
            reason::TOPIC_CREATE_FAILED,
            format!(
                "Kafka refused to create topic {topic}: {code}{}",
                rejected_text(rejected)
            ),
        ),
        Refused::Pending => Problem::new(
            reason::TOPIC_PENDING,
            format!("topic {topic} created; waiting for its metadata"),
        ),
        Refused::GrowPartitions(code) => Problem::new(
            reason::PARTITIONS_NOT_GROWN,
            format!(
                "Kafka refused to grow {topic} to {} partitions: {code}",
                wanted.partitions
            ),
        ),
        Refused::Configs(code, rejected) => Problem::new(
            reason::TOPIC_CONFIG_REJECTED,
            format!(
                "Kafka refused the configs of {topic}: {code}{}",
                rejected_text(rejected)
            ),
        ),
        Refused::Missing => {
            Problem::new(reason::TOPIC_MISSING, format!("topic {topic} disappeared"))
        }
    }
}

/// The configs the broker rejects, for a message: `` (rejected: `retention.bytes=lots`)``.
fn rejected_text(rejected: &[String]) -> String {
    if rejected.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = rejected.iter().map(|r| format!("`{r}`")).collect();
        format!(" (rejected: {})", list.join(", "))
    }
}

/// What a Kafka call that failed means for the user: Kafka can't be reached (or refuses the client).
fn unavailable(dlq: &DeadLetterQueue, e: crate::kafka::Error) -> Problem {
    Problem::new(
        reason::KAFKA_UNAVAILABLE,
        format!(
            "Kafka {} ({}): {}",
            dlq.spec.kafka.bootstrap_servers, e.operation, e.source
        ),
    )
}

/// The admin client of this reconcile, or the problem of creating it.
pub fn admin(dlq: &DeadLetterQueue, kafka: &ClientConfig) -> Result<Admin, Problem> {
    crate::kafka::admin::admin(kafka, names::OPERATOR_CLIENT_ID).map_err(|e| unavailable(dlq, e))
}

/// Creates or updates the topic, and returns it as the broker has it; a [`Problem`] when the broker refuses
/// what the spec asks or can't be reached.
pub async fn ensure(
    dlq: &DeadLetterQueue,
    admin: &Admin,
    wanted: &WantedTopic,
) -> Result<TopicStatus, Problem> {
    match topics::ensure(admin, wanted).await {
        Ok(Ok(topic)) => Ok(topic),
        Ok(Err(refused)) => Err(refusal_problem(wanted, &refused)),
        Err(e) => Err(unavailable(dlq, e)),
    }
}

/// The Ready condition for what the broker reports.
pub fn ready_condition(
    dlq: &DeadLetterQueue,
    wanted: &WantedTopic,
    topic: Result<&TopicStatus, &Problem>,
) -> Desired {
    match topic {
        Err(p) => Desired::new(READY, false, p.reason, p.message.clone()),
        Ok(t) => {
            let drift = config_drift(&wanted.configs, &t.config);
            if t.partitions < dlq.spec.partitions {
                Desired::new(
                    READY,
                    false,
                    reason::PARTITIONS_PENDING,
                    format!(
                        "topic {} has {} of {} partitions",
                        t.name, t.partitions, dlq.spec.partitions
                    ),
                )
            } else if !drift.is_empty() {
                Desired::new(
                    READY,
                    false,
                    reason::CONFIG_PENDING,
                    format!("topic {} configs differ: {}", t.name, drift.join(", ")),
                )
            } else {
                Desired::new(
                    READY,
                    true,
                    reason::TOPIC_READY,
                    format!(
                        "topic {} has {} partitions and the requested configs",
                        t.name, t.partitions
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn dlq(yaml: &str) -> DeadLetterQueue {
        serde_yaml::from_str(yaml).unwrap()
    }

    pub const ORDERS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: DeadLetterQueue
metadata: {name: orders-dlq, namespace: shop}
spec:
  kafka: {bootstrapServers: "kafka:9092"}
  partitions: 3
  retentionMs: 604800000
  config: {cleanup.policy: delete}
"#;

    #[test]
    fn topic_name_defaults_to_the_resource_name() {
        assert_eq!(topic_name(&dlq(ORDERS)), "orders-dlq");
        let mut named = dlq(ORDERS);
        named.spec.topic_name = Some("dlq.orders".into());
        assert_eq!(topic_name(&named), "dlq.orders");
    }

    #[test]
    fn desired_configs_include_retention() {
        let configs = desired_configs(&dlq(ORDERS), None);
        assert_eq!(configs["retention.ms"], "604800000");
        assert_eq!(configs["cleanup.policy"], "delete");
        assert_eq!(configs.get("max.message.bytes"), None);
        assert_eq!(wanted_topic(&dlq(ORDERS), None).replication_factor, -1);
    }

    #[test]
    fn the_topic_takes_records_as_large_as_the_topics_that_feed_it() {
        let configs = desired_configs(&dlq(ORDERS), Some(5_000_000));
        assert_eq!(
            configs["max.message.bytes"],
            (5_000_000 + DEAD_LETTER_OVERHEAD_BYTES).to_string()
        );
        let mut own = dlq(ORDERS);
        own.spec
            .config
            .get_or_insert_with(Default::default)
            .insert("max.message.bytes".into(), "123456".into());
        assert_eq!(
            desired_configs(&own, Some(5_000_000))["max.message.bytes"],
            "123456",
            "the spec's own setting wins"
        );
    }

    #[test]
    fn ready_needs_partitions_and_configs() {
        let d = dlq(ORDERS);
        let mut topic = TopicStatus {
            name: "orders-dlq".into(),
            partitions: 3,
            replication_factor: Some(1),
            config: desired_configs(&d, None),
        };
        assert!(ready_condition(&d, &wanted_topic(&d, None), Ok(&topic)).status);
        topic.partitions = 1;
        assert_eq!(
            ready_condition(&d, &wanted_topic(&d, None), Ok(&topic)).reason,
            "PartitionsPending"
        );
        topic.partitions = 3;
        topic.config.remove("retention.ms");
        let c = ready_condition(&d, &wanted_topic(&d, None), Ok(&topic));
        assert_eq!(c.reason, "ConfigPending");
        assert!(
            c.message
                .contains("retention.ms=604800000 (broker: default)"),
            "{}",
            c.message
        );
    }

    #[test]
    fn refusals_name_the_topic() {
        let wanted = wanted_topic(&dlq(ORDERS), None);
        let p = refusal_problem(
            &wanted,
            &Refused::GrowPartitions(rdkafka::types::RDKafkaErrorCode::InvalidPartitions),
        );
        assert_eq!(p.reason, "PartitionsNotGrown");
        assert!(
            p.message
                .starts_with("Kafka refused to grow orders-dlq to 3 partitions")
        );
        let p = refusal_problem(
            &wanted,
            &Refused::Configs(
                rdkafka::types::RDKafkaErrorCode::InvalidConfig,
                vec!["retention.bytes=lots".into()],
            ),
        );
        assert!(
            p.message.ends_with("(rejected: `retention.bytes=lots`)"),
            "{}",
            p.message
        );
    }
}
