//! The termination message: what a failing sluice process tells Kubernetes (and so the operator) about why
//! it ended, written as one JSON object to the container's `terminationMessagePath`. The process writes it
//! and the operator reads it with the same type, so a field or reason can't drift between the two ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crd::connector::{ErrorCounters, PartitionTotals};
use crate::crd::dead_letter_queue::ReplayCounts;

/// Where Kubernetes reads the message from unless the pod says otherwise.
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// Kubernetes keeps at most this many bytes of a termination message.
const MAX_BYTES: usize = 4096;

/// Why a sluice process ended: a stable, machine-readable reason the operator acts on. A reason this build
/// does not know (a kubelet's `OOMKilled`, or one of a newer sluice) is kept as [`Self::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TerminationReason {
    /// The config (file, env, flags) can't be used; another start fails the same way.
    ConfigInvalid,
    /// The config asks for something this build can't do.
    Unsupported,
    /// MongoDB no longer has the source's resume point; the operator rotates the offset partition name.
    ResumeTokenLost,
    /// A record failed under `tolerance: none`.
    RecordFailed,
    /// More records failed within `errors.window` than `errors.maxErrors` allows.
    ErrorLimitExceeded,
    /// A failed record could be neither written nor dead-lettered.
    DeadLetterQueueFailed,
    /// The task could not start its clients.
    TaskStartFailed,
    /// Committing a sink's offsets failed.
    CommitFailed,
    /// A source's change stream failed for good.
    ChangeStreamFailed,
    /// A source could not store its resume token.
    OffsetStoreFailed,
    /// A source could not write its heartbeat.
    HeartbeatFailed,
    /// A source's `copyExisting` start failed.
    CopyExistingFailed,
    /// A newer instance of an exactly-once source task took over its `transactional.id`: this one stops
    /// without writing anything more.
    TaskFenced,
    /// An exactly-once source's transaction failed for good (a fatal producer error).
    TransactionFailed,
    /// MongoDB stayed unavailable longer than `errors.outageTimeoutMs`.
    MongoDBUnavailable,
    /// Kafka stayed unavailable longer than `errors.outageTimeoutMs`.
    KafkaUnavailable,
    /// A replay read everything up to its end offsets.
    ReplayCompleted,
    /// A replay could not read or write Kafka.
    ReplayKafkaError,
    /// A replay was stopped by SIGTERM after committing its progress.
    ReplayInterrupted,
    /// A replay's thread panicked.
    ReplayPanicked,
    /// The operator could not connect to Kubernetes.
    KubeConfigInvalid,
    /// The operator lost its leader Lease.
    LeaderLost,
    /// A file could not be written (crdgen, docgen).
    WriteFailed,
    /// A CRD could not be rendered.
    CrdInvalid,
    /// The async runtime could not start.
    RuntimeFailed,
    /// A reason this build does not know, as written.
    Other(String),
}

impl TerminationReason {
    const KNOWN: [TerminationReason; 25] = [
        Self::ConfigInvalid,
        Self::Unsupported,
        Self::ResumeTokenLost,
        Self::RecordFailed,
        Self::ErrorLimitExceeded,
        Self::DeadLetterQueueFailed,
        Self::TaskStartFailed,
        Self::CommitFailed,
        Self::ChangeStreamFailed,
        Self::OffsetStoreFailed,
        Self::HeartbeatFailed,
        Self::CopyExistingFailed,
        Self::TaskFenced,
        Self::TransactionFailed,
        Self::MongoDBUnavailable,
        Self::KafkaUnavailable,
        Self::ReplayCompleted,
        Self::ReplayKafkaError,
        Self::ReplayInterrupted,
        Self::ReplayPanicked,
        Self::KubeConfigInvalid,
        Self::LeaderLost,
        Self::WriteFailed,
        Self::CrdInvalid,
        Self::RuntimeFailed,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::ConfigInvalid => "ConfigInvalid",
            Self::Unsupported => "Unsupported",
            Self::ResumeTokenLost => "ResumeTokenLost",
            Self::RecordFailed => "RecordFailed",
            Self::ErrorLimitExceeded => "ErrorLimitExceeded",
            Self::DeadLetterQueueFailed => "DeadLetterQueueFailed",
            Self::TaskStartFailed => "TaskStartFailed",
            Self::CommitFailed => "CommitFailed",
            Self::ChangeStreamFailed => "ChangeStreamFailed",
            Self::OffsetStoreFailed => "OffsetStoreFailed",
            Self::HeartbeatFailed => "HeartbeatFailed",
            Self::CopyExistingFailed => "CopyExistingFailed",
            Self::TaskFenced => "TaskFenced",
            Self::TransactionFailed => "TransactionFailed",
            Self::MongoDBUnavailable => "MongoDBUnavailable",
            Self::KafkaUnavailable => "KafkaUnavailable",
            Self::ReplayCompleted => "ReplayCompleted",
            Self::ReplayKafkaError => "ReplayKafkaError",
            Self::ReplayInterrupted => "ReplayInterrupted",
            Self::ReplayPanicked => "ReplayPanicked",
            Self::KubeConfigInvalid => "KubeConfigInvalid",
            Self::LeaderLost => "LeaderLost",
            Self::WriteFailed => "WriteFailed",
            Self::CrdInvalid => "CrdInvalid",
            Self::RuntimeFailed => "RuntimeFailed",
            Self::Other(reason) => reason,
        }
    }

    /// The reason a text names (an unknown one is kept as [`Self::Other`]).
    pub fn parse(text: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|r| r.as_str() == text)
            .unwrap_or_else(|| Self::Other(text.to_string()))
    }

    /// The exit status of a process that ends for this reason: 2 for a bad config, 3 for something
    /// unsupported, 4 for a lost resume token, 5 for an interrupted replay, 6 for a fenced task, 0 for a
    /// completed replay, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::ReplayCompleted => 0,
            Self::ConfigInvalid => 2,
            Self::Unsupported => 3,
            Self::ResumeTokenLost => 4,
            Self::ReplayInterrupted => 5,
            Self::TaskFenced => 6,
            _ => 1,
        }
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TerminationReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TerminationReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self::parse(&s))
    }
}

/// Why a process ended, in a form the operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    pub reason: TerminationReason,
    /// What happened, for people.
    pub message: String,
    /// The Kafka Connect stage that failed (`TASK_PUT`, `VALUE_CONVERTER`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The error class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// A MongoDB or Kafka error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Where the failed record is (`topic-partition@offset`), never its contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// MongoDB's name for `code` (`ChangeStreamHistoryLost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
    /// The offset partition name whose resume point is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_name: Option<String>,
    /// The task's final KIP-298 counters, so the operator's totals include what happened after its last
    /// poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<ErrorCounters>,
    /// The task's final ledgers (error counters per input partition, see `status.partitionTotals`); left
    /// out when they would not fit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, PartitionTotals>,
    /// A replay pod's final counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayCounts>,
}

impl TerminationMessage {
    pub fn new(reason: TerminationReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            stage: None,
            error_class: None,
            code: None,
            record: None,
            code_name: None,
            partition_name: None,
            counters: None,
            partitions: BTreeMap::new(),
            replay: None,
        }
    }

    /// A termination message as a container left it, if it is sluice's.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The JSON text, cut to what Kubernetes keeps: without the ledgers if they don't fit, then with the
    /// message cut (on a character boundary).
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string(self).unwrap_or_else(|_| self.reason.to_string());
        if json.len() > MAX_BYTES && !self.partitions.is_empty() {
            let without = Self {
                partitions: BTreeMap::new(),
                ..self.clone()
            };
            return without.to_json();
        }
        if json.len() > MAX_BYTES {
            let mut shorter = self.clone();
            let keep = MAX_BYTES.saturating_sub(json.len() - self.message.len() + 3);
            shorter.message = format!("{}...", crate::text::cut(&self.message, keep));
            json = serde_json::to_string(&shorter).unwrap_or_default();
        }
        json
    }

    /// Writes the message to `path`. A failure to write is reported on stderr and otherwise ignored: the
    /// process is ending anyway and its log says the same.
    pub fn write_to(&self, path: &Path) {
        if let Err(err) = std::fs::write(path, self.to_json()) {
            eprintln!(
                "could not write the termination message to {}: {err}",
                path.display()
            );
        }
    }
}

/// The termination message path for this process: `SLUICE_TERMINATION_LOG`, else Kubernetes' default.
pub fn path_from_env() -> PathBuf {
    std::env::var_os("SLUICE_TERMINATION_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_reason_and_message() {
        let msg =
            TerminationMessage::new(TerminationReason::ConfigInvalid, "type: unknown variant");
        assert_eq!(
            msg.to_json(),
            r#"{"reason":"ConfigInvalid","message":"type: unknown variant"}"#
        );
    }

    #[test]
    fn the_reader_gets_back_what_the_writer_wrote() {
        let mut msg = TerminationMessage::new(TerminationReason::ResumeTokenLost, "gone");
        msg.code = Some(286);
        msg.code_name = Some("ChangeStreamHistoryLost".into());
        msg.partition_name = Some("events.1".into());
        msg.counters = Some(ErrorCounters {
            total_record_errors: 3,
            ..Default::default()
        });
        let json = msg.to_json();
        assert!(
            json.contains(r#""codeName":"ChangeStreamHistoryLost""#),
            "{json}"
        );
        assert!(json.contains(r#""partitionName":"events.1""#), "{json}");
        assert_eq!(TerminationMessage::parse(&json), Some(msg));
        let foreign = TerminationMessage::parse(r#"{"reason":"OOMKilled","message":"x"}"#).unwrap();
        assert_eq!(foreign.reason, TerminationReason::Other("OOMKilled".into()));
        assert_eq!(
            TerminationMessage::parse("exit 1: panic"),
            None,
            "not sluice's"
        );
    }

    #[test]
    fn every_known_reason_reads_back_as_itself() {
        for reason in TerminationReason::KNOWN {
            assert_eq!(TerminationReason::parse(reason.as_str()), reason);
        }
        assert_eq!(TerminationReason::ResumeTokenLost.exit_code(), 4);
        assert_eq!(TerminationReason::RecordFailed.exit_code(), 1);
    }

    #[test]
    fn long_messages_are_cut_to_what_kubernetes_keeps() {
        let msg = TerminationMessage::new(TerminationReason::RecordFailed, "é".repeat(5000));
        let json = msg.to_json();
        assert!(json.len() <= MAX_BYTES, "{} bytes", json.len());
        let back: serde_json::Value = serde_json::from_str(&json).expect("still valid JSON");
        assert!(back["message"].as_str().unwrap().ends_with("..."));
    }

    #[test]
    fn ledgers_that_do_not_fit_are_left_out_before_the_message_is_cut() {
        let mut msg = TerminationMessage::new(TerminationReason::RecordFailed, "bad record");
        let one = PartitionTotals::default();
        msg.partitions.insert("orders-0".into(), one.clone());
        let json = msg.to_json();
        assert_eq!(TerminationMessage::parse(&json), Some(msg.clone()), "fits");
        for p in 1..40 {
            msg.partitions.insert(format!("orders-{p}"), one.clone());
        }
        let json = msg.to_json();
        assert!(json.len() <= MAX_BYTES, "{} bytes", json.len());
        let back = TerminationMessage::parse(&json).unwrap();
        assert!(back.partitions.is_empty());
        assert_eq!(back.message, "bad record");
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        TerminationMessage::new(TerminationReason::Other("R".into()), "m").write_to(&path);
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            r#"{"reason":"R","message":"m"}"#
        );
    }
}
