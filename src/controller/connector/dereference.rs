//! Everything a Connector reconcile reads before it decides (reads only): the Secrets and the
//! DeadLetterQueue the spec references, whether the topics it needs exist, its task pods, and its tasks'
//! latest reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::offsets::{self, Rotation};
use super::plan::ObservedPod;
use super::task_poller::Sample;
use crate::controller::secrets::{Secrets, kafka_secret_names};
use crate::controller::{Context, Result};
use crate::crd::connector::{TOPIC_PLACEHOLDER, dead_letter_topic_for};
use crate::crd::{Connector, DeadLetterQueue};
use crate::kafka::read;
use crate::kafka::{self, Clients};
use crate::names;
use crate::wire::TaskKafka;

/// What a Connector's spec points at, and its pods, as read now.
#[derive(Debug, Default)]
pub struct Dereferenced {
    pub secrets: Secrets,
    /// The DeadLetterQueues the spec references (its routes' and its own) that exist, by name.
    pub dead_letter_queues: BTreeMap<String, DeadLetterQueue>,
    /// The topics the Connector reads or writes without creating them, in spec order, with what the broker
    /// said (`Ok(false)`: missing; `Err`: Kafka could not be asked). Looked up until the first that is not
    /// there; none when the Kafka credentials can't be read.
    pub topics: Vec<TopicLookup>,
    /// The Connector's task pods.
    pub pods: Vec<ObservedPod>,
    /// The latest report of each running task.
    pub samples: BTreeMap<u32, Sample>,
    /// Offset partition names of this Connector that hold a stored token in the offsets topic, read only
    /// when a rotation is due (a rotation never picks one of them).
    pub partitions_in_use: BTreeSet<String>,
}

/// One topic the spec needs, and whether it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicLookup {
    pub topic: String,
    /// The spec field naming it.
    pub field: &'static str,
    pub exists: Result<bool, String>,
}

/// The topics a Connector needs to exist: the sink's topics, and its plain dead-letter topics (a `{topic}`
/// one for each of the sink's topics; with `topicsRegex`, or on a source, those are not known ahead).
pub fn needed_topics(conn: &Connector) -> Vec<(String, &'static str)> {
    let mut needed = Vec::new();
    let sink_topics = conn.spec.sink.as_ref().and_then(|s| s.topics.as_ref());
    if let Some(topics) = sink_topics {
        needed.extend(topics.iter().map(|t| (t.clone(), "spec.sink.topics")));
    }
    let errors = &conn.spec.errors;
    let plain = errors
        .dead_letter_routes
        .iter()
        .filter_map(|r| {
            let field = "spec.errors.deadLetterRoutes[].deadLetterQueueTopic";
            Some((
                r.dead_letter_queue_topic.as_ref()?,
                r.topics.as_slice(),
                field,
            ))
        })
        .chain(
            errors
                .dead_letter_queue_topic
                .as_ref()
                .map(|t| (t, &[][..], "spec.errors.deadLetterQueueTopic")),
        );
    for (topic, only, field) in plain {
        if !topic.contains(TOPIC_PLACEHOLDER) {
            needed.push((topic.clone(), field));
            continue;
        }
        for original in sink_topics.into_iter().flatten() {
            if only.is_empty() || only.contains(original) {
                needed.push((dead_letter_topic_for(topic, original), field));
            }
        }
    }
    let mut seen = BTreeSet::new();
    needed.retain(|(t, _)| seen.insert(t.clone()));
    needed
}

/// The names of the DeadLetterQueues a Connector's errors spec references, its routes' first.
pub fn referenced_dead_letter_queues(conn: &Connector) -> BTreeSet<String> {
    let errors = &conn.spec.errors;
    errors
        .dead_letter_routes
        .iter()
        .filter_map(|r| r.dead_letter_queue_ref.as_ref())
        .chain(errors.dead_letter_queue_ref.as_ref())
        .map(|r| r.name.clone())
        .collect()
}

/// `now` is the reconcile's clock, so the rotation this reads for is the one the reconcile then decides.
pub async fn dereference(
    ctx: &Context,
    conn: &Connector,
    ns: &str,
    now: Timestamp,
) -> Result<Dereferenced> {
    let client = &ctx.client;
    let uri = &conn.spec.mongodb.connection_uri_secret_ref;
    let mut wanted = vec![uri.name.clone()];
    wanted.extend(kafka_secret_names(&conn.spec.kafka));
    let secrets = Secrets::read(client, ns, wanted).await?;
    let mut dead_letter_queues = BTreeMap::new();
    for name in referenced_dead_letter_queues(conn) {
        if let Some(dlq) = Api::<DeadLetterQueue>::namespaced(client.clone(), ns)
            .get_opt(&name)
            .await?
        {
            dead_letter_queues.insert(name, dlq);
        }
    }
    let mut topics = Vec::new();
    let needed = needed_topics(conn);
    // The operator's Kafka settings; none when the credentials can't be read (validate says why).
    let clients = secrets
        .kafka_credentials(&conn.spec.kafka, "spec.kafka")
        .ok()
        .map(|creds| Clients::new(&TaskKafka::from(&conn.spec.kafka), &creds));
    if let (false, Some(clients)) = (needed.is_empty(), &clients) {
        let admin = kafka::admin::admin(&clients.producer, names::OPERATOR_CLIENT_ID)?;
        for (topic, field) in needed {
            let exists = kafka::topics::metadata(&admin, &topic)
                .await
                .map(|m| m.is_some())
                .map_err(|e| e.to_string());
            let found = exists == Ok(true);
            topics.push(TopicLookup {
                topic,
                field,
                exists,
            });
            if !found {
                break;
            }
        }
    }
    let pods: Vec<ObservedPod> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            names::LABEL_CONNECTOR,
            conn.name_any()
        )))
        .await?
        .items
        .iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == conn.uid().as_ref())
        })
        .map(ObservedPod::from_pod)
        .collect();
    let rotating = matches!(
        offsets::decide_rotation(conn, &pods, &BTreeSet::new(), now),
        Rotation::Now(_)
    );
    let mut partitions_in_use = BTreeSet::new();
    if rotating && let Some(clients) = &clients {
        let config = clients.consumer.clone();
        let (topic, ns, name) = (
            offsets::offset_storage_topic(conn),
            ns.to_string(),
            conn.name_any(),
        );
        partitions_in_use =
            tokio::task::spawn_blocking(move || stored_partitions(&config, &topic, &ns, &name))
                .await
                .expect("offsets reader panicked")
                .map_err(crate::kafka::failed("read the offsets topic"))?;
    }
    Ok(Dereferenced {
        secrets,
        dead_letter_queues,
        topics,
        pods,
        samples: ctx.reports.of(ns, &conn.name_any()),
        partitions_in_use,
    })
}

/// The partition names of Connector `<ns>/<name>` whose last committed value in the offsets topic is a
/// token, not a tombstone, read past every record written so far (blocking). A transaction still open
/// after 30 s (a task that died in one) is an error: the reconcile is retried, never decided on part of
/// the topic.
fn stored_partitions(
    config: &rdkafka::ClientConfig,
    topic: &str,
    ns: &str,
    name: &str,
) -> rdkafka::error::KafkaResult<BTreeSet<String>> {
    let latest = read::latest_committed_values(
        config,
        names::OFFSET_READER_GROUP,
        names::OPERATOR_CLIENT_ID,
        topic,
        Duration::from_secs(30),
        |key| names::offset_key_partition(key, ns, name).is_some(),
    )?
    .ok_or(rdkafka::error::KafkaError::MessageConsumption(
        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
    ))?;
    Ok(latest
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .filter_map(|(key, _)| names::offset_key_partition(&key, ns, name))
        .collect())
}
