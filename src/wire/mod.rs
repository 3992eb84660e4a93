//! The contracts between the operator and the pods it runs. Each type is written by one end and read by the
//! other with the same definition (Serialize + Deserialize), so the two can't drift apart:
//!
//! - [`task_config`]: a task's config file, rendered by the operator into the Connector's ConfigMap.
//! - [`replay_config`]: a replay pod's config, and the progress it commits that the operator reads.
//! - [`status_report`]: what a task serves on `/v1/status`, read into the Connector's status.
//! - [`termination`]: the termination message a process leaves when it ends, with a typed reason.
//! - [`dead_letter`]: the error context a dead letter carries (Connect's headers, or Spring's), read by
//!   DeadLetterQueue inspection and replay.

pub mod dead_letter;
pub mod replay_config;
pub mod status_report;
pub mod task_config;
pub mod termination;

pub use replay_config::ReplayConfig;
pub use status_report::StatusReport;
pub use task_config::{TaskConfig, TaskErrors, TaskKafka, TaskMongo, TaskSource};
pub use termination::{TerminationMessage, TerminationReason};
