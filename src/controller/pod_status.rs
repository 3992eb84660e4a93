//! Reading an operator-made pod's state: its phase, readiness, and how its container ended — the
//! termination message the process wrote (the same [`TerminationMessage`] type it wrote it with), else the
//! kubelet's reason and the exit code with the log tail.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::wire::{TerminationMessage, TerminationReason};

/// A pod's phase, as the kubelet reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn of(pod: &Pod) -> Self {
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            None | Some("Pending") => Self::Pending,
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some(_) => Self::Unknown,
        }
    }

    /// Whether the pod's containers ended for good (`restartPolicy: Never`).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
        }
    }
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How a pod's (first) container ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub reason: TerminationReason,
    pub message: String,
    /// The termination message, when sluice wrote it.
    pub termination: Option<TerminationMessage>,
    pub finished_at: Option<Timestamp>,
}

/// How the pod's container ended, if it did.
pub fn ended(pod: &Pod) -> Option<Ended> {
    let terminated = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()?;
    let termination = terminated
        .message
        .as_deref()
        .and_then(TerminationMessage::parse);
    let (reason, message) = match &termination {
        Some(t) => (t.reason.clone(), t.message.clone()),
        None => (
            TerminationReason::parse(terminated.reason.as_deref().unwrap_or("Error")),
            format!(
                "exit code {}: {}",
                terminated.exit_code,
                terminated.message.clone().unwrap_or_default().trim()
            ),
        ),
    };
    Some(Ended {
        reason,
        message,
        termination,
        finished_at: terminated.finished_at.map(|f| f.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminated(message: &str, reason: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" },
            "status": { "phase": "Failed", "containerStatuses": [{
                "name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": 1, "reason": reason, "message": message,
                                           "finishedAt": "2026-01-01T00:00:00Z" } }
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_sluice_termination_message_is_read_with_its_own_type() {
        let pod = terminated(
            r#"{"reason":"ResumeTokenLost","message":"gone","code":286}"#,
            "Error",
        );
        let e = ended(&pod).unwrap();
        assert_eq!(e.reason, TerminationReason::ResumeTokenLost);
        assert_eq!(e.termination.unwrap().code, Some(286));
        assert_eq!(PodPhase::of(&pod), PodPhase::Failed);
        assert!(PodPhase::of(&pod).is_terminal());
    }

    #[test]
    fn anything_else_is_the_kubelets_reason_and_the_exit_code() {
        let e = ended(&terminated("panicked at src/main.rs\n", "OOMKilled")).unwrap();
        assert_eq!(e.reason, TerminationReason::Other("OOMKilled".into()));
        assert_eq!(e.message, "exit code 1: panicked at src/main.rs");
        assert!(e.termination.is_none());
    }
}
