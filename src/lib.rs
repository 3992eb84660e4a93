//! sluice: a Kubernetes operator that runs MongoDB ⇄ Kafka connectors with Kafka Connect's error handling.
//!
//! Where each concern lives:
//! - [`crd`]: the custom resource types (Connector, DeadLetterQueue) and their schemas.
//! - [`controller`]: the operator's reconcilers, one module per resource, each a fixed list of steps.
//! - [`task`]: the connector runtime a task pod runs (`sluice task`): source, sink, and the KIP-298 error
//!   machinery both use.
//! - [`replay`]: the replay pod (`sluice replay`) that sends dead-letter records back.
//! - [`wire`]: the contracts between the operator and its pods (task and replay configs, the status report,
//!   the termination message), one type for both ends.
//! - [`kafka`]: the Kafka layer every process uses: client settings, topics, reading partitions.
//! - [`names`]: labels, annotations, object names, consumer groups, offset keys, ports.
//! - [`duration`], [`text`]: durations as the CRDs write them; cutting text to a limit.
//! - [`docs`]: the API reference generated from the CRD schemas.
//! - [`convert`]: a Kafka Connect connector config as a Connector (`sluice convert`).
//! - [`kubectl`]: `sluice` (and `kubectl sluice`) at a terminal: `dlq peek`, `rotate`, `reset-offsets`,
//!   `restart`.
//!
//! Dependencies point one way: `controller`, `task` and `replay` use `wire`, `kafka`, `names` and `crd`;
//! `task` and `replay` never use `controller`, and `controller` uses nothing of `task` or `replay`. The
//! terminal commands (`kubectl`) read Secrets and DeadLetterQueue topics as `controller` does and filter
//! as `replay` does; nothing uses them.

pub mod controller;
pub mod convert;
pub mod crd;
pub mod docs;
pub mod duration;
pub mod kafka;
pub mod kubectl;
pub mod names;
pub mod replay;
pub mod task;
pub mod text;
pub mod wire;
