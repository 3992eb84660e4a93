//! The termination message: what a failing sluice process tells Kubernetes (and so the operator) about why
//! it ended, written as one JSON object to the container's `terminationMessagePath`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where Kubernetes reads the message from unless the pod says otherwise.
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// Kubernetes keeps at most this many bytes of a termination message.
const MAX_BYTES: usize = 4096;

/// Why a process ended, in a form the operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TerminationMessage {
    /// A stable, machine-readable reason (`ConfigInvalid`, `ResumeTokenLost`, …).
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// The Kafka Connect stage that failed (`TASK_PUT`, `VALUE_CONVERTER`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The error class.
    #[serde(rename = "errorClass", skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// A MongoDB or Kafka error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Where the failed record is (`topic-partition@offset`), never its contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// MongoDB's name for `code` (`ChangeStreamHistoryLost`).
    #[serde(rename = "codeName", skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
    /// The offset partition name whose resume point is gone.
    #[serde(rename = "partitionName", skip_serializing_if = "Option::is_none")]
    pub partition_name: Option<String>,
    /// The task's final KIP-298 counters, so the operator's totals include what happened after its last
    /// poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<crate::crd::connector::ErrorCounters>,
    /// A replay pod's final counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<crate::crd::dead_letter_queue::ReplayCounts>,
}

impl TerminationMessage {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
            stage: None,
            error_class: None,
            code: None,
            record: None,
            code_name: None,
            partition_name: None,
            counters: None,
            replay: None,
        }
    }

    /// The JSON text, cut (on a character boundary) to what Kubernetes keeps.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string(self).unwrap_or_else(|_| self.reason.clone());
        if json.len() > MAX_BYTES {
            let mut shorter = self.clone();
            let keep = MAX_BYTES.saturating_sub(json.len() - self.message.len() + 3);
            let cut = (0..=keep.min(self.message.len()))
                .rev()
                .find(|i| self.message.is_char_boundary(*i))
                .unwrap_or(0);
            shorter.message = format!("{}...", &self.message[..cut]);
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
        let msg = TerminationMessage::new("ConfigInvalid", "type: unknown variant");
        assert_eq!(
            msg.to_json(),
            r#"{"reason":"ConfigInvalid","message":"type: unknown variant"}"#
        );
    }

    #[test]
    fn long_messages_are_cut_to_what_kubernetes_keeps() {
        let msg = TerminationMessage::new("X", "é".repeat(5000));
        let json = msg.to_json();
        assert!(json.len() <= MAX_BYTES, "{} bytes", json.len());
        let back: serde_json::Value = serde_json::from_str(&json).expect("still valid JSON");
        assert!(back["message"].as_str().unwrap().ends_with("..."));
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        TerminationMessage::new("R", "m").write_to(&path);
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            r#"{"reason":"R","message":"m"}"#
        );
    }
}
