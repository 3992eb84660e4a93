//! The DeadLetterQueue resource: a Kafka topic that receives failed records, owned by sluice.
// kube's `printcolumn(...)` attributes repeat `type_ = ...`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::KafkaConnection;

/// A dead-letter topic that Connectors send failed records to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "DeadLetterQueue",
    namespaced,
    status = "DeadLetterQueueStatus",
    shortname = "dlq",
    category = "sluice",
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topic.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Depth",
        type_ = "integer",
        json_path = ".status.inspection.depth",
        description = "records in the topic"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "date",
        json_path = ".status.inspection.oldestRecordTime",
        description = "age of the oldest record"
    ),
    printcolumn(
        name = "Connectors",
        type_ = "string",
        json_path = ".status.connectors",
        description = "Connectors that send records here"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retentionMs) || !has(self.config) || !('retention.ms' in self.config)")
    .message("spec.retentionMs and spec.config['retention.ms'] both set the retention: keep one"))]
pub struct DeadLetterQueueSpec {
    /// The topic's name (Kafka Connect: `errors.deadletterqueue.topic.name`); default the resource's name.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.topicName is immutable"))]
    pub topic_name: Option<String>,
    /// The Kafka cluster holding the topic.
    pub kafka: KafkaConnection,
    /// Partition count; it can only grow.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10_000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("spec.partitions can only grow"))]
    pub partitions: i32,
    /// Replication factor (Kafka Connect: `errors.deadletterqueue.topic.replication.factor`). Absent: the
    /// broker's `default.replication.factor`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.replicationFactor is immutable"))]
    pub replication_factor: Option<i32>,
    /// How long dead-letter records are kept, in ms (topic config `retention.ms`; -1 = forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub retention_ms: Option<i64>,
    /// Other topic configs, e.g. `cleanup.policy: delete`, `max.message.bytes: "2097152"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub config: Option<BTreeMap<String, String>>,
    /// Default of `errors.contextHeadersEnable` for Connectors that use this queue: add the
    /// `__connect.errors.*` headers (Kafka Connect: `errors.deadletterqueue.context.headers.enable`).
    /// Unlike Kafka Connect, on by default: inspection and replay read them.
    #[serde(default = "default_true")]
    pub context_headers_enable: bool,
}

fn default_partitions() -> i32 {
    1
}

fn default_true() -> bool {
    true
}

/// What the operator observed of a DeadLetterQueue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterQueueStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when the topic exists with the requested partitions and configs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The topic as the broker reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicStatus>,
    /// Connectors in this namespace that send records here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<String>,
    /// What is in the topic: depth, record times, counts by error class, original topic and connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<Inspection>,
}

/// What is in a dead-letter topic. Depth and times are exact at each refresh; the counts cover every record
/// the operator read, incrementally from `scannedOffsets` (records removed by retention stay counted).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// Records in the topic (end − start offsets, summed over partitions).
    pub depth: i64,
    /// Per partition: start and end offsets and depth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionDepth>,
    /// Timestamp of the oldest record still in the topic (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_record_time: Option<String>,
    /// Timestamp of the newest record (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_record_time: Option<String>,
    /// Records by `__connect.errors.exception.class.name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_error_class: BTreeMap<String, i64>,
    /// Records by `__connect.errors.topic` (the topic the record came from).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_original_topic: BTreeMap<String, i64>,
    /// Records by `__connect.errors.connector.name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_connector: BTreeMap<String, i64>,
    /// The newest errors (never record contents), newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_errors: Vec<DeadLetterError>,
    /// Records read so far.
    #[serde(default)]
    pub records_scanned: i64,
    /// Where the next read starts, per partition (the operator's cursor; a restart continues from here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scanned_offsets: BTreeMap<String, i64>,
}

/// One partition of a dead-letter topic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionDepth {
    pub partition: i32,
    pub start_offset: i64,
    pub end_offset: i64,
    pub depth: i64,
}

/// One dead-letter record's error, from its context headers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterError {
    /// `__connect.errors.exception.class.name`.
    pub class: String,
    /// `__connect.errors.exception.message`, without duplicate-key values, cut short.
    #[serde(default)]
    pub message: String,
    /// Where the record came from: `__connect.errors.topic`, `.partition`, `.offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Where it is in the dead-letter topic: `<partition>@<offset>`.
    pub position: String,
    /// The dead-letter record's timestamp (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// A topic as the broker describes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    pub name: String,
    pub partitions: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Topic configs that are not the broker's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}
