//! The Connector resource: one MongoDB source or sink connector and its tasks.
//!
//! Every field with a Kafka Connect or MongoDB Kafka connector twin keeps that twin's meaning and names it in
//! its description; the few deliberate differences say so.
// kube's `printcolumn(...)` attributes repeat `type_ = ...`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{KafkaConnection, LocalObjectRef, SecretKeyRef};

/// A MongoDB ⇄ Kafka connector run by sluice as one pod per task.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Connector",
    namespaced,
    status = "ConnectorStatus",
    shortname = "conn",
    category = "sluice",
    validation = Rule::new("self.metadata.name.size() <= 63").message(
        "metadata.name must be at most 63 characters: sluice puts it in label values (sluice.dev/connector)"
    ),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Tasks",
        type_ = "string",
        json_path = ".status.taskSummary",
        description = "ready/desired tasks"
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.totals.totalRecordFailures"
    ),
    printcolumn(
        name = "Skipped",
        type_ = "integer",
        json_path = ".status.totals.totalRecordsSkipped"
    ),
    printcolumn(
        name = "DLQ",
        type_ = "integer",
        json_path = ".status.totals.deadLetterQueueProduceRequests",
        description = "records sent to the dead-letter queue"
    ),
    printcolumn(
        name = "Partition",
        type_ = "string",
        json_path = ".status.offsets.partitionName",
        description = "offset partition name"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'mongodb-source' || has(self.source)")
        .message("spec.source is required when spec.type is mongodb-source"),
    validation = Rule::new("self.type != 'mongodb-sink' || has(self.sink)")
        .message("spec.sink is required when spec.type is mongodb-sink"),
    validation = Rule::new("self.type != 'mongodb-source' || !has(self.sink)")
        .message("spec.sink is not allowed when spec.type is mongodb-source"),
    validation = Rule::new("self.type != 'mongodb-sink' || !has(self.source)")
        .message("spec.source is not allowed when spec.type is mongodb-sink"),
    validation = Rule::new("self.type != 'mongodb-sink' || (has(self.mongodb.database) && has(self.mongodb.collection))")
        .message("a mongodb-sink needs spec.mongodb.database and spec.mongodb.collection"),
    validation = Rule::new("self.type != 'mongodb-source' || !has(self.tasksMax) || self.tasksMax == 1")
        .message("spec.tasksMax must be 1 for a mongodb-source: a source reads one change stream with one task"),
)]
pub struct ConnectorSpec {
    /// `mongodb-source` (change streams → Kafka) or `mongodb-sink` (Kafka → MongoDB). Kafka Connect:
    /// `connector.class`. Immutable.
    #[serde(rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.type is immutable: create a new Connector"))]
    pub connector_type: ConnectorType,

    /// The most tasks to run (Kafka Connect: `tasks.max`). A source runs one task (one change stream):
    /// only 1 is accepted for it.
    #[serde(default = "default_tasks_max")]
    #[schemars(range(min = 1, max = 64))]
    pub tasks_max: i32,

    /// `running`, `paused` (tasks removed, offsets kept) or `stopped` (tasks removed, offsets may be
    /// rotated or reset). Strimzi: `spec.state`; Kafka Connect: `PUT /connectors/{name}/pause|stop|resume`.
    #[serde(default)]
    pub state: ConnectorState,

    /// The Kafka cluster records flow to or from.
    pub kafka: KafkaConnection,

    /// The MongoDB deployment records flow from or to.
    pub mongodb: MongoConnection,

    /// Settings of a `mongodb-source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,

    /// Settings of a `mongodb-sink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,

    /// Error handling for every stage of every task (KIP-298).
    #[serde(default)]
    pub errors: ErrorsSpec,

    /// How the operator restarts a failed task (Strimzi: `spec.autoRestart`).
    #[serde(default)]
    pub restart: RestartSpec,

    /// What the task pods look like.
    #[serde(default)]
    pub template: TaskTemplate,
}

fn default_tasks_max() -> i32 {
    1
}

/// Which way a connector moves records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorType {
    MongodbSource,
    MongodbSink,
}

impl ConnectorType {
    /// The name as written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MongodbSource => "mongodb-source",
            Self::MongodbSink => "mongodb-sink",
        }
    }
}

/// Whether the connector's tasks run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConnectorState {
    #[default]
    Running,
    Paused,
    Stopped,
}

/// How to reach MongoDB and what to read or write.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.collection) || has(self.database)")
    .message("spec.mongodb.collection needs spec.mongodb.database"))]
pub struct MongoConnection {
    /// The Secret key holding the connection string (MongoDB connector: `connection.uri`). Only ever
    /// from a Secret: a URI carries credentials.
    pub connection_uri_secret_ref: SecretKeyRef,
    /// Database to watch or write (MongoDB connector: `database`). A source without it watches the whole
    /// deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub database: Option<String>,
    /// Collection to watch or write (MongoDB connector: `collection`). A source without it watches the
    /// whole database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub collection: Option<String>,
}

/// Settings of a MongoDB source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.topicPrefix) || has(self.topicNamespaceMap)")
    .message("spec.source needs topicPrefix or topicNamespaceMap to name its topics"))]
pub struct SourceSpec {
    /// Topic name prefix: records of `db.coll` go to `<prefix>.db.coll` (MongoDB connector: `topic.prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic_prefix: Option<String>,
    /// Topic name suffix (MongoDB connector: `topic.suffix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic_suffix: Option<String>,
    /// Namespace → topic map, e.g. `{"shop.orders": "orders"}`; `"shop"` maps a whole database (MongoDB
    /// connector: `topic.namespace.map`). Takes precedence over the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "string", "maxLength": 249}))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].matches('^[a-zA-Z0-9._-]{1,249}$') && !(self[k] in ['.', '..']))").message(
        "spec.source.topicNamespaceMap values must be Kafka topic names: letters, digits, '.', '_' and '-', at most 249, not '.' or '..'"
    ))]
    pub topic_namespace_map: Option<BTreeMap<String, String>>,
    /// Aggregation pipeline stages appended to the change stream, as a JSON array (MongoDB connector:
    /// `pipeline`), e.g. `[{"$match": {"operationType": "insert"}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub pipeline: Option<String>,
    /// Full document on updates (MongoDB connector: `change.stream.full.document`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_document: Option<FullDocument>,
    /// Publish only the full document instead of the change event (MongoDB connector:
    /// `publish.full.document.only`).
    #[serde(default)]
    pub publish_full_document_only: bool,
    /// Where a connector without stored offsets starts (MongoDB connector: `startup.mode`).
    #[serde(default)]
    pub startup: Startup,
    /// Heartbeats keep the stored resume token fresh on quiet collections (MongoDB connector:
    /// `heartbeat.interval.ms`, `heartbeat.topic.name`). Unlike the MongoDB connector, on by default.
    #[serde(default)]
    pub heartbeat: Heartbeat,
    /// Where the source stores its resume tokens.
    #[serde(default)]
    pub offsets: OffsetsSpec,
    /// What to do when MongoDB says the resume point is gone (error 286 ChangeStreamHistoryLost and its
    /// cousins).
    #[serde(default)]
    pub resume_token_recovery: ResumeTokenRecovery,
    /// Exactly-once delivery (KIP-618's idea for change streams): `required` writes each batch of change
    /// events, its dead letters and its resume token in one Kafka transaction, and fences older instances
    /// of the task (`transactional.id` `sluice/<namespace>/<connector>/<task>`); `read_committed`
    /// consumers see each event once. `disabled` (the default, as Kafka Connect's
    /// `exactly.once.source.support`): at least once, without the transaction per batch, the
    /// `TransactionalId` ACLs and the transaction state topic transactions need.
    #[serde(default)]
    pub exactly_once: ExactlyOnce,
}

/// A source's delivery guarantee.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExactlyOnce {
    /// At least once: a batch is produced, then its resume token stored.
    #[default]
    Disabled,
    /// Each batch and its resume token in one transaction (Kafka Connect: `exactly.once.support=required`,
    /// `transaction.boundary=poll`).
    Required,
}

/// `change.stream.full.document` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FullDocument {
    Default,
    UpdateLookup,
    WhenAvailable,
    Required,
}

/// Where a source starts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartupMode {
    /// From now on (MongoDB connector: `latest`).
    #[default]
    Latest,
    /// From an operation time (MongoDB connector: `timestamp`).
    Timestamp,
    /// Copy the existing documents, then stream from the point captured before the copy (MongoDB
    /// connector: `copy_existing`).
    CopyExisting,
}

/// The startup mode and its operation time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'timestamp' || has(self.startAtOperationTime)")
    .message("spec.source.startup.startAtOperationTime is required when the mode is timestamp"))]
pub struct Startup {
    #[serde(default)]
    pub mode: StartupMode,
    /// RFC 3339 time (`2026-11-23T06:00:00Z`) or seconds since the epoch (MongoDB connector:
    /// `startup.mode.timestamp.start.at.operation.time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^([0-9]{1,10}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$"
    ))]
    pub start_at_operation_time: Option<String>,
}

/// Heartbeat settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Milliseconds between heartbeats; 0 turns them off (MongoDB connector: `heartbeat.interval.ms`).
    #[serde(default = "default_heartbeat_interval_ms")]
    #[schemars(range(min = 0, max = 86_400_000))]
    pub interval_ms: i64,
    /// Topic of the heartbeat records (MongoDB connector: `heartbeat.topic.name`).
    #[serde(default = "default_heartbeat_topic")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = super::common::TOPIC_NAME_PATTERN)
    )]
    pub topic: String,
}

fn default_heartbeat_interval_ms() -> i64 {
    10_000
}

fn default_heartbeat_topic() -> String {
    "__mongodb_heartbeats".into()
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval_ms: default_heartbeat_interval_ms(),
            topic: default_heartbeat_topic(),
        }
    }
}

/// Offset storage of a source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetsSpec {
    /// Base of the offset partition name (MongoDB connector: `offset.partition.name`); default the
    /// Connector's name. After a lost resume token the operator rotates `<base>.<n>` to `<base>.<n+1>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub partition_name: Option<String>,
    /// The compacted topic holding the offsets (Kafka Connect: `offset.storage.topic`); default
    /// `sluice-offsets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = super::common::TOPIC_NAME_PATTERN)
    )]
    pub storage_topic: Option<String>,
}

/// Automatic recovery from a lost resume point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumeTokenRecovery {
    /// `rotate`: the operator rotates the offset partition name and restarts the task; `fail`: the
    /// Connector is Degraded (reason `ResumeTokenLost`) until a person rotates on request by setting the
    /// annotation `sluice.dev/rotate-offsets` to a new value.
    #[serde(default)]
    pub policy: RecoveryPolicy,
    /// Where the task starts after a rotation.
    #[serde(default)]
    pub startup_mode_after_rotation: StartupMode,
    /// At most this many automatic rotations within `rotationWindowSeconds`; a source that loses its
    /// resume point again after that is `Degraded` (reason `RotationLoop`, with the history) and rotates
    /// again only on request. Rotations after the first within the window wait the `spec.restart`
    /// backoff.
    #[serde(default = "default_max_rotations")]
    #[schemars(range(min = 1, max = 100))]
    pub max_rotations: i32,
    /// The window of `maxRotations`.
    #[serde(default = "default_rotation_window_seconds")]
    #[schemars(range(min = 60, max = 604_800))]
    pub rotation_window_seconds: i64,
}

fn default_max_rotations() -> i32 {
    3
}

fn default_rotation_window_seconds() -> i64 {
    3600
}

impl Default for ResumeTokenRecovery {
    fn default() -> Self {
        Self {
            policy: RecoveryPolicy::default(),
            startup_mode_after_rotation: StartupMode::default(),
            max_rotations: default_max_rotations(),
            rotation_window_seconds: default_rotation_window_seconds(),
        }
    }
}

/// Resume-token recovery policies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RecoveryPolicy {
    #[default]
    Rotate,
    Fail,
}

/// Settings of a MongoDB sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.topics) != has(self.topicsRegex)")
    .message("spec.sink needs exactly one of topics or topicsRegex"))]
pub struct SinkSpec {
    /// Topics to consume (Kafka Connect: `topics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 100),
        inner(
            length(min = 1, max = 249),
            regex(pattern = super::common::TOPIC_NAME_PATTERN)
        )
    )]
    pub topics: Option<Vec<String>>,
    /// Regular expression of topics to consume (Kafka Connect: `topics.regex`), matching whole topic
    /// names. librdkafka compiles it: POSIX extended syntax, not Java's (no look-around; write `[0-9]` for
    /// a digit). One it can't compile makes the Connector `Ready=False` with reason `ConfigInvalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub topics_regex: Option<String>,
    /// How a record becomes a write (MongoDB connector: `writemodel.strategy`).
    #[serde(default)]
    pub write_model: WriteModel,
    /// Where a document's `_id` comes from (MongoDB connector: `document.id.strategy`).
    #[serde(default)]
    pub document_id_strategy: DocumentIdStrategy,
    /// Most records in one bulk write; 0 = as many as one poll returns (MongoDB connector:
    /// `max.batch.size`).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100_000))]
    pub max_batch_size: i32,
    /// Ordered bulk writes stop at the first failed record (MongoDB connector: `bulk.write.ordered`).
    /// Unlike the MongoDB connector, unordered by default, so one bad record doesn't hold back the rest.
    #[serde(default)]
    pub bulk_write_ordered: bool,
    /// How record keys are read (Kafka Connect: `key.converter`).
    #[serde(default = "default_key_converter")]
    pub key_converter: Converter,
    /// How record values are read (Kafka Connect: `value.converter`).
    #[serde(default)]
    pub value_converter: Converter,
    /// Milliseconds between offset commits (Kafka Connect: `offset.flush.interval.ms`, a worker
    /// setting there). Only records written or handled by the error machinery are committed; a task that
    /// stops, fails or loses partitions in a rebalance commits what it handled first, so a crash replays at
    /// most this much. 0 commits synchronously after every batch.
    #[serde(default = "default_offset_flush_interval_ms")]
    #[schemars(range(min = 0, max = 3_600_000))]
    pub offset_flush_interval_ms: i64,
    /// A record with a null value (a tombstone; with the json and string converters also a JSON `null` or
    /// an empty value, as Kafka Connect's JsonConverter reads them) deletes the document whose `_id` its key gives: the key's
    /// `_id` field when the key is a document that has one, else the whole key, read by `keyConverter`
    /// (MongoDB connector: `delete.on.null.values`). Off, a tombstone is a record error at `TASK_PUT`
    /// ("Could not create write model", as Kafka Connect reports it), handled by `spec.errors`. A
    /// tombstone without a key is a record error either way. Never dropped silently.
    #[serde(default)]
    pub delete_on_null_values: bool,
    /// The consumer group the sink's tasks read in; default `sluice-<namespace>-<name>`. To take over
    /// from a Kafka Connect sink, name its group (`connect-<connector name>`, or its
    /// `consumer.override.group.id`): the tasks go on from the offsets Connect committed, so nothing is
    /// read twice or skipped across the switch (stop the Connect connector first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub consumer_group_id: Option<String>,
}

fn default_key_converter() -> Converter {
    Converter::String
}

fn default_offset_flush_interval_ms() -> i64 {
    5_000
}

/// Write models.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WriteModel {
    /// Insert every record as a new document (`InsertOneDefaultStrategy`).
    Insert,
    /// Replace the document with the same `_id`, inserting it if missing (`ReplaceOneDefaultStrategy`).
    #[default]
    Replace,
    /// Update the document with the same `_id` by `$set`, inserting it if missing
    /// (`UpdateOneDefaultStrategy`).
    Upsert,
    /// Insert the document unless one with the same `_id` exists (an upsert with `$setOnInsert`; sluice
    /// only): with a deterministic `documentIdStrategy`, a record delivered again writes nothing.
    InsertIfAbsent,
}

/// Document id strategies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DocumentIdStrategy {
    /// A new ObjectId unless the value has an `_id` (`BsonOidStrategy`).
    #[default]
    ObjectId,
    /// The record key is the `_id` (`ProvidedInKeyStrategy`).
    ProvidedInKey,
    /// The value's `_id` field (`ProvidedInValueStrategy`).
    ProvidedInValue,
    /// `{topic, partition, offset}` of the record (`KafkaMetaDataStrategy`).
    KafkaCoordinates,
}

/// Record converters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Converter {
    /// JSON without an embedded schema (`JsonConverter`, `schemas.enable=false`).
    #[default]
    Json,
    /// UTF-8 text (`StringConverter`).
    String,
    /// Raw BSON documents.
    Bson,
    /// Opaque bytes (`ByteArrayConverter`).
    Bytes,
}

/// KIP-298 error handling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.maxErrors) || has(self.window)")
        .message("spec.errors.maxErrors needs spec.errors.window"),
    validation = Rule::new("!has(self.window) || has(self.maxErrors)")
        .message("spec.errors.window needs spec.errors.maxErrors"),
    validation = Rule::new("!has(self.maxErrors) || self.tolerance == 'all'")
        .message("spec.errors.maxErrors limits tolerance: all; with tolerance: none the first error fails the task"),
    validation = Rule::new("!(has(self.deadLetterQueueRef) && has(self.deadLetterQueueTopic))")
        .message("spec.errors: set deadLetterQueueRef or deadLetterQueueTopic, not both"),
    validation = Rule::new("!has(self.deadLetterQueueTopic) || self.deadLetterQueueTopic != '{topic}'")
        .message("spec.errors.deadLetterQueueTopic: {topic} alone would send failed records back to their own topic"),
)]
pub struct ErrorsSpec {
    /// Total time to retry a failed operation, in ms; -1 = forever, 0 = no retry (Kafka Connect:
    /// `errors.retry.timeout`).
    #[serde(default)]
    #[schemars(range(min = -1))]
    pub retry_timeout_ms: i64,
    /// Longest wait between retries, in ms; backoff starts at 300 ms and doubles (Kafka Connect:
    /// `errors.retry.delay.max.ms`).
    #[serde(default = "default_retry_delay_max_ms")]
    #[schemars(range(min = 0))]
    pub retry_delay_max_ms: i64,
    /// How long a task waits out MongoDB or Kafka being unavailable (unreachable, not primary, shutting
    /// down, refusing authentication, a write concern not met) before it fails and the operator restarts
    /// it, in ms; -1 = as long as it lasts. An outage is never a record error: nothing is dead-lettered or
    /// skipped because of it, whatever `tolerance` and `retryTimeoutMs` say. No Kafka Connect twin
    /// (Connect counts an outage against `errors.retry.timeout` and then fails or skips the records).
    #[serde(default = "default_outage_timeout_ms")]
    #[schemars(range(min = -1))]
    pub outage_timeout_ms: i64,
    /// `none`: the first failed record fails the task; `all`: failed records are skipped and reported
    /// (Kafka Connect: `errors.tolerance`).
    #[serde(default)]
    pub tolerance: Tolerance,
    /// With `tolerance: all`, fail the task when more than this many records fail within `window`
    /// (KIP-298's proposed, never shipped "tolerate up to N errors").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_errors: Option<i64>,
    /// The window of `maxErrors`, e.g. `5m`, `30s`, `1h`: a whole number above 0 (at most 9 digits) and
    /// a unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,8}(ms|s|m|h)$"))]
    pub window: Option<String>,
    /// Log each error with its context (Kafka Connect: `errors.log.enable`).
    #[serde(default)]
    pub log_enable: bool,
    /// Include record keys, values and headers in error logs (Kafka Connect:
    /// `errors.log.include.messages`). Off by default: records may hold personal data.
    #[serde(default)]
    pub log_include_messages: bool,
    /// A DeadLetterQueue in this namespace that receives failed records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_ref: Option<LocalObjectRef>,
    /// A plain topic that receives failed records (Kafka Connect: `errors.deadletterqueue.topic.name`);
    /// it must exist. `{topic}` stands for the record's original topic: `{topic}.DLT` is Spring Kafka's
    /// default, a dead-letter topic per topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = TOPIC_TEMPLATE_PATTERN))]
    pub dead_letter_queue_topic: Option<String>,
    /// Which partition of the dead-letter topic a failed record goes to: `key` (the default: by the
    /// murmur2 hash of its key, as Kafka Connect's producer does) or `original` (the partition it came
    /// from, as Spring Kafka's `DeadLetterPublishingRecoverer` does, when the dead-letter topic has that
    /// many partitions; by key otherwise).
    #[serde(default)]
    pub dead_letter_queue_partition: DeadLetterPartition,
    /// Dead-letter routes, tried in order before `deadLetterQueueRef` / `deadLetterQueueTopic`: a failed
    /// record goes to the first route it matches, else to those (and without them, to no dead-letter
    /// queue: tolerance alone decides). No Kafka Connect twin (Connect has one dead-letter topic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub dead_letter_routes: Vec<DeadLetterRoute>,
    /// Add the `__connect.errors.*` context headers to dead-letter records (Kafka Connect:
    /// `errors.deadletterqueue.context.headers.enable`). Default: the DeadLetterQueue's
    /// `contextHeadersEnable`, or false for a plain topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_headers_enable: Option<bool>,
    /// Which context headers dead-letter records get when `contextHeadersEnable` is on: `connect`
    /// (Kafka Connect's `__connect.errors.*`), `spring` (Spring Kafka's `DeadLetterPublishingRecoverer`
    /// headers, `kafka_dlt-exception-fqcn`, `kafka_dlt-original-partition`, …, in Spring's encodings:
    /// partition a 4-byte and offset and timestamp 8-byte big-endian numbers) or `both`. DeadLetterQueue
    /// inspection and replay read Connect's headers, else Spring's (Spring's have no connector name: a
    /// replay's `connectors` filter takes none of them).
    #[serde(default)]
    pub context_headers_format: ContextHeadersFormat,
    /// How a converter's failure reads in a dead letter: `sluice` (the default: the parser's own words,
    /// e.g. `value is not JSON: expected ident at line 1 column 2`) or `connect`, Kafka Connect's
    /// JsonConverter form: the message `Converting byte[] to Kafka Connect data failed due to
    /// serialization error: ` and sluice's words on the stack trace's `Caused by:` line, for tools that
    /// match Connect's text. Status, Events and logs keep sluice's words.
    #[serde(default)]
    pub converter_messages: ConverterMessages,
    /// The most bytes a dead letter's context headers (names and values) take: past it the stack trace
    /// is cut first, then the exception message, each ending in `...[<n> bytes cut]`, so a long server
    /// message never makes a dead letter too large for its topic. Default and most: 16384 (what a
    /// DeadLetterQueue's topic makes room for); with `contextHeadersFormat: both` Connect's and Spring's
    /// headers share it. No Kafka Connect twin (Connect writes the whole stack trace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 16384))]
    pub context_headers_max_bytes: Option<i64>,
    /// Errors never retried: error class names (`MongoCommandException`) or MongoDB error codes
    /// (`11000`). Spring Kafka: `addNotRetryableExceptions`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub not_retryable: Vec<String>,
}

fn default_retry_delay_max_ms() -> i64 {
    60_000
}

fn default_outage_timeout_ms() -> i64 {
    -1
}

impl Default for ErrorsSpec {
    fn default() -> Self {
        Self {
            retry_timeout_ms: 0,
            retry_delay_max_ms: default_retry_delay_max_ms(),
            outage_timeout_ms: default_outage_timeout_ms(),
            tolerance: Tolerance::None,
            max_errors: None,
            window: None,
            log_enable: false,
            log_include_messages: false,
            dead_letter_queue_ref: None,
            dead_letter_queue_topic: None,
            dead_letter_queue_partition: DeadLetterPartition::Key,
            dead_letter_routes: Vec::new(),
            context_headers_enable: None,
            context_headers_format: ContextHeadersFormat::Connect,
            converter_messages: ConverterMessages::Sluice,
            context_headers_max_bytes: None,
            not_retryable: Vec::new(),
        }
    }
}

/// A dead-letter topic name, in which `{topic}` stands for the failed record's original topic.
pub const TOPIC_TEMPLATE_PATTERN: &str =
    r"^(\{topic\}|[a-zA-Z0-9._-])*(\{topic\}|[a-zA-Z0-9_-])(\{topic\}|[a-zA-Z0-9._-])*$";

/// The placeholder for a failed record's original topic in a dead-letter topic name.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

/// The dead-letter topic `template` names for a record from (or to) `original`.
pub fn dead_letter_topic_for(template: &str, original: &str) -> String {
    template.replace(TOPIC_PLACEHOLDER, original)
}

/// Which partition of a dead-letter topic a failed record goes to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeadLetterPartition {
    /// By the murmur2 hash of the record's key (Kafka Connect).
    #[default]
    Key,
    /// The partition the record came from when the topic has it, else by key (Spring Kafka).
    Original,
}

/// The stages of a task, as Kafka Connect names them in `__connect.errors.stage`.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorStage {
    KeyConverter,
    ValueConverter,
    HeaderConverter,
    Transformation,
    TaskPut,
    TaskPoll,
    KafkaProduce,
    KafkaConsume,
}

impl ErrorStage {
    /// The name Kafka Connect writes.
    pub fn connect_name(self) -> &'static str {
        match self {
            ErrorStage::KeyConverter => "KEY_CONVERTER",
            ErrorStage::ValueConverter => "VALUE_CONVERTER",
            ErrorStage::HeaderConverter => "HEADER_CONVERTER",
            ErrorStage::Transformation => "TRANSFORMATION",
            ErrorStage::TaskPut => "TASK_PUT",
            ErrorStage::TaskPoll => "TASK_POLL",
            ErrorStage::KafkaProduce => "KAFKA_PRODUCE",
            ErrorStage::KafkaConsume => "KAFKA_CONSUME",
        }
    }
}

/// One dead-letter route: the failed records it takes (every non-empty list must match) and where they go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.deadLetterQueueRef) != has(self.deadLetterQueueTopic)")
        .message("spec.errors.deadLetterRoutes[]: set one of deadLetterQueueRef or deadLetterQueueTopic"),
    validation = Rule::new("!has(self.deadLetterQueueTopic) || self.deadLetterQueueTopic != '{topic}'")
        .message("spec.errors.deadLetterRoutes[].deadLetterQueueTopic: {topic} alone would send failed records back to their own topic"),
)]
pub struct DeadLetterRoute {
    /// The stages whose failures this route takes, e.g. `[KEY_CONVERTER, VALUE_CONVERTER]` for records
    /// that can't be read, `[TASK_PUT]` for records MongoDB refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub stages: Vec<ErrorStage>,
    /// Error classes (`__connect.errors.exception.class.name`, whole or its last part, e.g.
    /// `WriteException`) or MongoDB error codes (`11000`), as in `notRetryable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub error_classes: Vec<String>,
    /// The records' original topics (a sink's topics; a source's target topics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub topics: Vec<String>,
    /// A DeadLetterQueue in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_ref: Option<LocalObjectRef>,
    /// A plain topic, `{topic}` standing for the original topic (e.g. `{topic}.DLT`); it must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = TOPIC_TEMPLATE_PATTERN))]
    pub dead_letter_queue_topic: Option<String>,
    /// The dead-letter partition (see `spec.errors.deadLetterQueuePartition`, which is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<DeadLetterPartition>,
}

/// How a converter's failure reads in a dead letter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConverterMessages {
    /// The parser's own words.
    #[default]
    Sluice,
    /// Kafka Connect's JsonConverter text, with sluice's words on a `Caused by:` line.
    Connect,
}

/// Dead-letter context header formats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ContextHeadersFormat {
    /// Kafka Connect's `__connect.errors.*` strings.
    #[default]
    Connect,
    /// Spring Kafka's `kafka_dlt-*` headers.
    Spring,
    /// Both, Connect's first.
    Both,
}

/// `errors.tolerance` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Tolerance {
    #[default]
    None,
    All,
}

/// Restarting failed tasks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.backoffInitialSeconds <= self.backoffMaxSeconds")
    .message("spec.restart.backoffInitialSeconds must not exceed backoffMaxSeconds"))]
pub struct RestartSpec {
    /// Wait before the first restart of a failed task; doubles per restart.
    #[serde(default = "default_backoff_initial")]
    #[schemars(range(min = 1, max = 86_400))]
    pub backoff_initial_seconds: i64,
    /// Longest wait between restarts.
    #[serde(default = "default_backoff_max")]
    #[schemars(range(min = 1, max = 86_400))]
    pub backoff_max_seconds: i64,
    /// Stop restarting a task after this many restarts; the Connector becomes Degraded (Strimzi:
    /// `autoRestart.maxRestarts`). Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_restarts: Option<i32>,
}

fn default_backoff_initial() -> i64 {
    10
}

fn default_backoff_max() -> i64 {
    600
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self {
            backoff_initial_seconds: default_backoff_initial(),
            backoff_max_seconds: default_backoff_max(),
            max_restarts: None,
        }
    }
}

/// The task pods' template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    /// Task image; default the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Compute resources of the task container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra labels on task pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on task pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node selector of task pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of task pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Service account of task pods; default one with no API rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// What the operator observed of a Connector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `ResumeTokenRecovered`, `ResumeTokenAtRisk`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Ready tasks / desired tasks, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_summary: Option<String>,
    /// One entry per task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStatus>,
    /// The Connector's error counters since its offsets were last reset: the sum of `partitionTotals`.
    /// Each record handled counts once, however often a task was killed (see README, "Guarantees").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<ErrorCounters>,
    /// The error counters each input partition's ledger holds (sink: `<topic>-<partition>`; source: the
    /// offset partition name), as its task last reported them. The tasks keep them with their offsets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_totals: BTreeMap<String, PartitionTotals>,
    /// Offsets of a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<OffsetsStatus>,
}

/// One task as the operator sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Task index (Kafka Connect: task id).
    pub id: i32,
    /// The task's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `Pending`, `Running`, `Failed`, `Restarting`, `Stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// How often the operator restarted it.
    #[serde(default)]
    pub restarts: i32,
    /// When the operator restarts it next (after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_time: Option<String>,
    /// When the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Why it is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The task's KIP-298 error counters since its pod started (Kafka Connect's task metrics), as last read
    /// from the task's `/v1/status` (or, for a task that ended, from its termination message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ErrorCounters>,
    /// UID of the pod the counters belong to; a new pod's start from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Records read by the task's pod (consumed records or change events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_in: Option<i64>,
    /// Records written by the task's pod (documents or produced records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_out: Option<i64>,
    /// The task's last record error: class, stage and message, never the record's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// A source task's resume token and the oplog window it must stay in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<ResumeTokenStatus>,
    /// Set while the task waits out MongoDB or Kafka being unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageStatus>,
    /// A source task's delivery guarantee and its last committed transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,
}

/// How a source task delivers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// `exactlyOnce` or `atLeastOnce`.
    pub mode: String,
    /// The task's `transactional.id` (exactly once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id: Option<String>,
    /// When the task's last transaction committed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_time: Option<String>,
    /// Transactions committed and aborted (then retried) by the task's pod.
    #[serde(default)]
    pub committed: i64,
    #[serde(default)]
    pub aborted: i64,
}

/// A dependency a task waits for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutageStatus {
    /// `MongoDB` or `Kafka`.
    pub dependency: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// The last error, without record contents.
    pub error: String,
}

/// The last record error of a task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// The error class (`__connect.errors.exception.class.name`).
    pub class: String,
    /// The Kafka Connect stage (`VALUE_CONVERTER`, `TASK_PUT`, …).
    pub stage: String,
    /// The error message, without record contents.
    pub message: String,
    /// When it happened (RFC 3339).
    pub time: String,
}

/// Where a source task's resume token points, and the oplog window of the MongoDB it reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumeTokenStatus {
    /// The cluster time the stored resume token points at (RFC 3339); absent before the first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Time of the oldest oplog entry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oplog_first_time: Option<String>,
    /// Time of the newest oplog entry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oplog_last_time: Option<String>,
    /// Why the oplog window could not be read (no permission on `local.oplog.rs`, not a replica set, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oplog_window_unknown: Option<String>,
}

/// The eight KIP-298 per-task error metrics (`kafka.connect:type=task-error-metrics`), camelCase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCounters {
    /// `total-record-failures`: failed attempts to process a record (including retries).
    #[serde(default)]
    pub total_record_failures: i64,
    /// `total-record-errors`: records that failed for good.
    #[serde(default)]
    pub total_record_errors: i64,
    /// `total-records-skipped`: records skipped by `tolerance: all`.
    #[serde(default)]
    pub total_records_skipped: i64,
    /// `total-retries`.
    #[serde(default)]
    pub total_retries: i64,
    /// `total-errors-logged`.
    #[serde(default)]
    pub total_errors_logged: i64,
    /// `deadletterqueue-produce-requests`.
    #[serde(default)]
    pub dead_letter_queue_produce_requests: i64,
    /// `deadletterqueue-produce-failures`.
    #[serde(default)]
    pub dead_letter_queue_produce_failures: i64,
    /// `last-error-timestamp`, ms since the epoch (0: never).
    #[serde(default)]
    pub last_error_timestamp: i64,
}

/// The error counters of one input partition, kept with its offsets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionTotals {
    /// Where in the partition they count up to: a sink's next offset, a source's number of stored
    /// tokens. A report from further on replaces one from before.
    pub position: i64,
    pub errors: ErrorCounters,
}

impl ErrorCounters {
    /// Adds `other`'s counts (the later of the two error timestamps).
    pub fn add(&mut self, other: &ErrorCounters) {
        self.total_record_failures += other.total_record_failures;
        self.total_record_errors += other.total_record_errors;
        self.total_records_skipped += other.total_records_skipped;
        self.total_retries += other.total_retries;
        self.total_errors_logged += other.total_errors_logged;
        self.dead_letter_queue_produce_requests += other.dead_letter_queue_produce_requests;
        self.dead_letter_queue_produce_failures += other.dead_letter_queue_produce_failures;
        self.last_error_timestamp = self.last_error_timestamp.max(other.last_error_timestamp);
    }
}

/// Offsets of a source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetsStatus {
    /// The offset partition name the tasks use now (`<base>` or `<base>.<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_name: Option<String>,
    /// The last rotations (at most 20), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<OffsetRotation>,
    /// The value of the `sluice.dev/rotate-offsets` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// Every offset reset (annotation `sluice.dev/reset-offsets` while `spec.state` is `stopped`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resets: Vec<OffsetReset>,
    /// The value of the `sluice.dev/reset-offsets` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_request: Option<String>,
}

/// One offset reset (KIP-875's `DELETE /connectors/{name}/offsets`): a source's stored resume token or a
/// sink's consumer group offsets are deleted, so the next start follows the startup mode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetReset {
    /// What was reset: `partition <name> in topic <topic>` or `consumer group <group>`.
    pub target: String,
    /// RFC 3339.
    pub time: String,
    /// The annotation value that asked for it.
    pub request: String,
}

/// One rotation of the offset partition name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetRotation {
    pub from: String,
    pub to: String,
    /// RFC 3339.
    pub time: String,
    /// `ResumeTokenLost` (automatic) or `Requested` (annotation `sluice.dev/rotate-offsets`).
    #[serde(default)]
    pub reason: String,
    /// UID of the task pod whose lost resume token caused it: one rotation per loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The MongoDB error code that caused it, if any (absent for an on-demand rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
