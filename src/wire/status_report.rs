//! What a task pod serves on `/v1/status` and the operator reads into the Connector's status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::connector::{
    DeliveryStatus, ErrorCounters, LastError, OutageStatus, PartitionTotals, ResumeTokenStatus,
};

/// A task's counters and state, as `/v1/status` returns them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub connector: String,
    pub task: String,
    pub running: bool,
    pub errors: ErrorCounters,
    pub records_in: u64,
    pub records_out: u64,
    /// The last record error, without record contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// A source's resume token time and the oplog window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<ResumeTokenStatus>,
    /// Set while the task waits out MongoDB or Kafka being unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageStatus>,
    /// A source's delivery guarantee and its last committed transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,
    /// The error counters kept with the offsets, per input partition the task holds (sink:
    /// `<topic>-<partition>`; source: its offset partition name): each record counted once, however often
    /// a task was killed. The Connector's `status.totals` is their sum.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, PartitionTotals>,
}
