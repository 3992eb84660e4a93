//! A task's config file, as the controller renders it into the Connector's ConfigMap. Secrets are not in it:
//! the task reads them from env (`SLUICE_MONGODB_URI`, `SLUICE_KAFKA_SASL_USERNAME`, …) that the pod fills
//! from Secret references. Unknown or misspelt fields are errors that name the field, so a bad config
//! fails at start instead of being half-applied.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crd::common::SaslMechanism;
pub use crate::crd::connector::ConnectorType;
use crate::crd::connector::{
    DeadLetterPartition, ErrorStage, ErrorsSpec, SinkSpec, SourceSpec, StartupMode,
    dead_letter_topic_for,
};

/// The config of one task of one connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskConfig {
    /// Source or sink.
    #[serde(rename = "type")]
    pub connector_type: ConnectorType,
    /// The Connector's name (Kafka Connect's `name`).
    pub connector: String,
    /// The Connector's namespace.
    pub namespace: String,
    /// The task's index, 0-based (Kafka Connect's task id).
    pub task_id: u32,
    /// How many tasks the connector runs (a sink task consumes its share of the partitions).
    pub tasks: u32,
    pub kafka: TaskKafka,
    pub mongodb: TaskMongo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TaskSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
    pub errors: TaskErrors,
    /// Port of the task's HTTP server (`/metrics`, `/v1/status`, `/healthz`) on the pod IP.
    pub http_port: u16,
    /// Debug, for benchmarks only (never rendered by the operator): a sink converts records but writes
    /// nothing, so the framework's own cost shows without MongoDB's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_writes: bool,
}

/// Kafka settings without secrets (those come from env).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskKafka {
    pub bootstrap_servers: String,
    /// TLS on: CA, certificate and key files come from env `SLUICE_KAFKA_TLS_{CA,CERT,KEY}_FILE`.
    #[serde(default)]
    pub tls: bool,
    /// SASL mechanism; username and password come from env `SLUICE_KAFKA_SASL_{USERNAME,PASSWORD}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl From<&crate::crd::KafkaConnection> for TaskKafka {
    fn from(conn: &crate::crd::KafkaConnection) -> Self {
        Self {
            bootstrap_servers: conn.bootstrap_servers.clone(),
            tls: conn.tls.is_some(),
            sasl_mechanism: conn.sasl.as_ref().map(|s| s.mechanism),
            properties: conn.properties.clone(),
        }
    }
}

/// MongoDB settings without the connection string (env `SLUICE_MONGODB_URI`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskMongo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
}

/// A source task's settings: the Connector's plus what the operator decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSource {
    pub spec: SourceSpec,
    /// The offset partition name in use (`<base>` or `<base>.<n>` after rotations).
    pub offset_partition_name: String,
    /// The compacted topic holding the offsets.
    pub offset_storage_topic: String,
    /// Where to start without a stored offset (the spec's mode, or the after-rotation mode).
    pub startup_mode: StartupMode,
}

/// Error handling: the Connector's settings with the dead-letter destinations resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskErrors {
    pub spec: ErrorsSpec,
    /// Where failed records go, in order: the first route a record matches takes it; none, no dead letter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_routes: Vec<TaskDeadLetterRoute>,
}

/// One dead-letter destination, its topic resolved: the `spec.errors.deadLetterRoutes[]` entries, then
/// `spec.errors.deadLetterQueueRef` / `deadLetterQueueTopic` as the route that takes every record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDeadLetterRoute {
    /// Empty lists match every record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<ErrorStage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The topic, from the DeadLetterQueue or the plain name; `{topic}` stands for the original topic.
    pub topic: String,
    /// Whether dead-letter records get the context headers.
    #[serde(default)]
    pub context_headers_enable: bool,
    #[serde(default)]
    pub partition: DeadLetterPartition,
}

impl TaskDeadLetterRoute {
    /// The route's topic for a record from (or to) `original`.
    pub fn topic_for(&self, original: &str) -> String {
        dead_letter_topic_for(&self.topic, original)
    }
}

/// Why a task config can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read task config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("task config {path}: {source}")]
    Invalid {
        path: String,
        source: serde_yaml::Error,
    },
}

impl TaskConfig {
    /// Reads and checks a task config file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Invalid {
            path: shown,
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINK: &str = "type: mongodb-sink\nconnector: orders\nnamespace: shop\ntaskId: 0\ntasks: 1\n\
        kafka: {bootstrapServers: 'k:9092'}\nmongodb: {database: shop, collection: orders}\n\
        sink: {topics: [orders]}\nerrors: {spec: {}, deadLetterRoutes: [{topic: orders.DLT, contextHeadersEnable: true}]}\nhttpPort: 8080\n";

    #[test]
    fn parses_a_sink_task() {
        let cfg = TaskConfig::parse(SINK).unwrap();
        assert_eq!(cfg.connector, "orders");
        let route = &cfg.errors.dead_letter_routes[0];
        assert_eq!(
            (
                route.topic_for("orders"),
                route.partition,
                route.stages.len()
            ),
            ("orders.DLT".to_string(), DeadLetterPartition::Key, 0),
            "a route with defaults, its topic per original topic"
        );
        assert_eq!(cfg.connector_type, ConnectorType::MongodbSink);
        assert_eq!(cfg.sink.unwrap().topics.unwrap(), ["orders"]);
        assert_eq!(
            cfg.errors.spec.retry_delay_max_ms, 60_000,
            "spec defaults apply"
        );
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let err = TaskConfig::parse(&SINK.replace("mongodb-sink", "mongodb-sinc")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("type: unknown variant `mongodb-sinc`"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = TaskConfig::parse(&format!("{SINK}topicz: [a]\n")).unwrap_err();
        assert!(err.to_string().contains("unknown field `topicz`"), "{err}");
    }
}
