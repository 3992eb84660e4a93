//! The DeadLetterQueue resource: a Kafka topic that receives failed records, owned by sluice.
// kube's `printcolumn(...)` attributes repeat `type_ = ...`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::KafkaConnection;
use super::connector::ErrorStage;

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
    validation = Rule::new("self.metadata.name.size() <= 63").message(
        "metadata.name must be at most 63 characters: sluice puts it in label values (sluice.dev/dead-letter-queue)"
    ),
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
#[x_kube(
    validation = Rule::new("!has(self.retentionMs) || !has(self.config) || !('retention.ms' in self.config)")
        .message("spec.retentionMs and spec.config['retention.ms'] both set the retention: keep one"),
    validation = Rule::new("has(self.topicName) == has(oldSelf.topicName)")
        .message("spec.topicName is immutable: it can't be added or removed"),
    validation = Rule::new("has(self.replicationFactor) == has(oldSelf.replicationFactor)")
        .message("spec.replicationFactor is immutable: it can't be added or removed"),
)]
pub struct DeadLetterQueueSpec {
    /// The topic's name (Kafka Connect: `errors.deadletterqueue.topic.name`); default the resource's name.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = super::common::TOPIC_NAME_PATTERN)
    )]
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
    /// Replays: each sends the dead-letter records it matches back to their original topic (or to
    /// `targetTopic`), once per `id`. They run one at a time, in list order; a finished replay stays in
    /// status while its entry stays here. A replay's settings can't change once applied: add one with a new
    /// id instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.all(r, self.exists_one(s, s.id == r.id))")
            .message("spec.replays: each id may appear only once"),
        validation = Rule::new("self.all(r, !oldSelf.exists(o, o.id == r.id) || oldSelf.exists(o, o.id == r.id && o == r))")
            .message("spec.replays: a replay's settings can't change once applied; add a replay with a new id"),
    )]
    pub replays: Vec<Replay>,
}

/// One replay request: which dead-letter records go back, where, and how fast.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// Names the replay; each id runs once (records carry it in the `sluice.replay.id` header).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub id: String,
    /// Which records to replay; no filter replays every record.
    #[serde(default, skip_serializing_if = "ReplayFilter::is_empty")]
    pub filter: ReplayFilter,
    /// Where replayed records go: absent = each record's original topic (`__connect.errors.topic`), in its
    /// original partition when the topic has it; or this topic, partitioned by key. The topic must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = super::common::TOPIC_NAME_PATTERN)
    )]
    pub target_topic: Option<String>,
    /// The most records replayed per second; absent = as fast as the broker takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub records_per_second: Option<i32>,
    /// Count what would be replayed and move nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Records already replayed this many times (`sluice.replay.count`) are skipped, so a record that keeps
    /// failing can't loop between the DLQ and its topic.
    #[serde(default = "default_max_replay_count")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replay_count: i32,
}

fn default_max_replay_count() -> i32 {
    3
}

/// Which dead-letter records a replay takes: every non-empty list must contain the record's value, and the
/// time it was dead-lettered must be within `from`..`to` (the `sluice.deadletter.timestamp` header; the
/// record's timestamp for a dead letter without it, such as Kafka Connect's).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.from) || !has(self.to) || timestamp(self.from) < timestamp(self.to)")
    .message("spec.replays[].filter: from must be before to"))]
pub struct ReplayFilter {
    /// `__connect.errors.exception.class.name` values, e.g. `org.apache.kafka.connect.errors.DataException`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub error_classes: Vec<String>,
    /// `__connect.errors.topic` values: the topics the records came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 249)))]
    pub original_topics: Vec<String>,
    /// `__connect.errors.connector.name` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub connectors: Vec<String>,
    /// Only records written to the DLQ at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("format" = "date-time"))]
    pub from: Option<String>,
    /// Only records written to the DLQ before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("format" = "date-time"))]
    pub to: Option<String>,
}

impl ReplayFilter {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
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
    /// The Connectors' dead-letter routes that send records here (by reference, or by this queue's topic
    /// name), and which failed records each takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStatus>,
    /// What is in the topic: depth, record times, counts by error class, original topic and connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<Inspection>,
    /// The replays of `spec.replays`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<ReplayStatus>,
}

/// A Connector's route into a DeadLetterQueue. Empty lists take every record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub connector: String,
    /// `spec.errors.deadLetterRoutes[<n>]`, or `spec.errors` for its default destination.
    pub field: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<ErrorStage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

/// Phases of a replay.
pub mod replay_phase {
    /// Waiting for the replay before it to finish.
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// What a replay did so far. Counts are exact: the replay pod commits them with its progress, in the same
/// Kafka transaction as the records it replayed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayCounts {
    /// Records the filter matched.
    #[serde(default)]
    pub matched: i64,
    /// Records sent to their target (0 for a dry run).
    #[serde(default)]
    pub replayed: i64,
    /// Matched records skipped because they were replayed `maxReplayCount` times already.
    #[serde(default)]
    pub skipped_max_replay_count: i64,
    /// Matched records skipped because they name no original topic (no `__connect.errors.topic` header)
    /// and the replay has no `targetTopic`.
    #[serde(default)]
    pub skipped_no_target: i64,
}

impl std::ops::AddAssign for ReplayCounts {
    fn add_assign(&mut self, o: Self) {
        self.matched += o.matched;
        self.replayed += o.replayed;
        self.skipped_max_replay_count += o.skipped_max_replay_count;
        self.skipped_no_target += o.skipped_no_target;
    }
}

/// One replay as the operator ran it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    pub id: String,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: String,
    #[serde(default)]
    pub dry_run: bool,
    /// When the replay began: its end offsets were taken then (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Per partition, the end offset when the replay began: records that arrived later are not replayed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub end_offsets: BTreeMap<String, i64>,
    #[serde(flatten)]
    pub counts: ReplayCounts,
    /// Records not yet read up to the end offsets.
    #[serde(default)]
    pub remaining: i64,
    /// Replay pods that failed and were replaced (the replay continues from its committed progress).
    #[serde(default)]
    pub restarts: i32,
    /// The replay pod, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    /// When the oldest record still in the topic was dead-lettered (RFC 3339; see the replay filter's
    /// `from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_record_time: Option<String>,
    /// When the newest record was dead-lettered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_record_time: Option<String>,
    /// Records by `__connect.errors.exception.class.name`.
    #[serde(default, skip_serializing_if = "Counts::is_empty")]
    pub by_error_class: Counts,
    /// Records by `__connect.errors.topic` (the topic the record came from).
    #[serde(default, skip_serializing_if = "Counts::is_empty")]
    pub by_original_topic: Counts,
    /// Records by `__connect.errors.connector.name`.
    #[serde(default, skip_serializing_if = "Counts::is_empty")]
    pub by_connector: Counts,
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

/// Record counts by name, sorted by name: a list of `{name, count}` rather than a map, because
/// `kubectl describe` rewrites map keys (`ux-sink` shows as `Ux - Sink`). Reads the map form that sluice
/// wrote before too.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Counts(pub Vec<NamedCount>);

/// How many records came under one name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NamedCount {
    /// The error class, topic or connector.
    pub name: String,
    /// Records under that name.
    pub count: i64,
}

impl Counts {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|c| c.name.as_str().cmp(name))
    }

    /// Counts one more record under `name`.
    pub fn add(&mut self, name: &str) {
        match self.position(name) {
            Ok(i) => self.0[i].count += 1,
            Err(i) => self.0.insert(
                i,
                NamedCount {
                    name: name.into(),
                    count: 1,
                },
            ),
        }
    }

    /// The count under `name`, if any record came under it.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.position(name).ok().map(|i| self.0[i].count)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<NamedCount>),
            Map(BTreeMap<String, i64>),
        }
        let mut list = match Form::deserialize(d)? {
            Form::List(l) => l,
            Form::Map(m) => m
                .into_iter()
                .map(|(name, count)| NamedCount { name, count })
                .collect(),
        };
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self(list))
    }
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
    /// When the record was dead-lettered (RFC 3339).
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

#[cfg(test)]
mod counts_tests {
    use super::*;

    #[test]
    fn counts_are_a_sorted_list_and_read_the_old_map_form() {
        let mut c = Counts::default();
        for name in ["ux-sink", "orders-sink", "ux-sink"] {
            c.add(name);
        }
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!([{"name": "orders-sink", "count": 1}, {"name": "ux-sink", "count": 2}])
        );
        let old: Counts =
            serde_json::from_value(serde_json::json!({"ux-sink": 2, "a": 1})).unwrap();
        assert_eq!(
            (old.get("a"), old.get("ux-sink"), old.get("b")),
            (Some(1), Some(2), None)
        );
        let back: Counts = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
