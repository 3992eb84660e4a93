//! Status conditions: their types and reasons, and updating a list without losing transition times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const RESUME_TOKEN_RECOVERED: &str = "ResumeTokenRecovered";
pub const RESUME_TOKEN_AT_RISK: &str = "ResumeTokenAtRisk";

/// A condition as a reconcile decides it; [`merge`] turns it into the stored form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    /// The operator can't tell (status `Unknown`); `status` is then ignored.
    pub unknown: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            unknown: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition whose status is `Unknown`.
    pub fn unknown(
        type_: &'static str,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            unknown: true,
            ..Self::new(type_, false, reason, message)
        }
    }
}

/// The conditions to store: each desired condition keeps its old `lastTransitionTime` while its status is
/// unchanged, so writing the same decision twice changes nothing.
pub fn merge(
    old: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = match (d.unknown, d.status) {
                (true, _) => "Unknown",
                (false, true) => "True",
                (false, false) => "False",
            }
            .to_string();
            let since = old
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_stays_while_status_stays() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let first = merge(
            &[],
            &[Desired::new(READY, false, "Pending", "a")],
            Some(1),
            t0,
        );
        let again = merge(
            &first,
            &[Desired::new(READY, false, "Pending", "b")],
            Some(2),
            t1,
        );
        assert_eq!(again[0].last_transition_time, Time(t0));
        assert_eq!(again[0].message, "b");
        let flipped = merge(
            &again,
            &[Desired::new(READY, true, "TasksReady", "c")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
    }
}
