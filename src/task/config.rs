//! A task's config file, as the controller renders it. Unknown or misspelt fields are errors that name the
//! field, so a bad config fails at start instead of being half-applied.

use std::path::Path;

use serde::Deserialize;

/// Which way a connector moves records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorType {
    /// MongoDB change streams → Kafka.
    MongodbSource,
    /// Kafka → MongoDB.
    MongodbSink,
}

/// The config of one task of one connector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskConfig {
    /// The Connector's name (Kafka Connect's `name`).
    pub connector: String,
    /// The task's index, 0-based (Kafka Connect's task id).
    pub task_id: u32,
    /// Source or sink.
    #[serde(rename = "type")]
    pub connector_type: ConnectorType,
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

    #[test]
    fn parses_a_source_task() {
        let cfg =
            TaskConfig::parse("connector: orders\ntaskId: 0\ntype: mongodb-source\n").unwrap();
        assert_eq!(cfg.connector, "orders");
        assert_eq!(cfg.connector_type, ConnectorType::MongodbSource);
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let err =
            TaskConfig::parse("connector: orders\ntaskId: 0\ntype: mongodb-sourc\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("type: unknown variant `mongodb-sourc`"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = TaskConfig::parse("connector: o\ntaskId: 0\ntype: mongodb-sink\ntopicz: [a]\n")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `topicz`"), "{err}");
    }
}
