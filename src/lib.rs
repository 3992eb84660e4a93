//! sluice: a Kubernetes operator that runs MongoDB ⇄ Kafka connectors with Kafka Connect's error handling.
//!
//! - [`crd`]: the custom resource types (Connector, DeadLetterQueue).
//! - [`controller`]: the operator's reconcilers.
//! - [`task`]: the connector runtime a task pod runs (`sluice task`).
//! - [`termination`]: the JSON termination message a failing process leaves for the operator to read.

pub mod controller;
pub mod crd;
pub mod docs;
pub mod replay;
pub mod task;
pub mod termination;
