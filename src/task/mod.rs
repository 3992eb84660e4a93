//! The connector runtime a task pod runs: `sluice task --config FILE`.
//!
//! The controller renders each task's config into a ConfigMap; Secrets arrive as mounted files or env.

pub mod config;

pub use config::{ConfigError, ConnectorType, TaskConfig};
