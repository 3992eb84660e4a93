//! Status conditions: their types and reasons, and updating a list without losing transition times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const RESUME_TOKEN_RECOVERED: &str = "ResumeTokenRecovered";
pub const RESUME_TOKEN_AT_RISK: &str = "ResumeTokenAtRisk";

/// The reasons of conditions (and of the [`super::Problem`]s that become `Ready=False`).
pub mod reason {
    // Problems: the spec can't be used yet.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    pub const DEAD_LETTER_QUEUE_NOT_FOUND: &str = "DeadLetterQueueNotFound";
    pub const CONFIG_INVALID: &str = "ConfigInvalid";
    pub const TOPIC_NOT_FOUND: &str = "TopicNotFound";
    /// The operator can't reach Kafka (a Problem), or a task waits out Kafka being unavailable.
    pub const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
    pub const TOPIC_CREATE_FAILED: &str = "TopicCreateFailed";
    pub const TOPIC_PENDING: &str = "TopicPending";
    pub const PARTITIONS_NOT_GROWN: &str = "PartitionsNotGrown";
    pub const TOPIC_CONFIG_REJECTED: &str = "TopicConfigRejected";
    pub const TOPIC_MISSING: &str = "TopicMissing";
    pub const UNKNOWN: &str = "Unknown";

    // Connector: Ready, Progressing, Degraded.
    pub const TASKS_READY: &str = "TasksReady";
    pub const TASKS_NOT_READY: &str = "TasksNotReady";
    pub const PAUSED: &str = "Paused";
    pub const STOPPED: &str = "Stopped";
    pub const BLOCKED: &str = "Blocked";
    pub const TASKS_CHANGING: &str = "TasksChanging";
    pub const STABLE: &str = "Stable";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const RESUME_TOKEN_LOST: &str = "ResumeTokenLost";
    /// Automatic rotations stopped at `maxRotations` within the window.
    pub const ROTATION_LOOP: &str = "RotationLoop";
    pub const MAX_RESTARTS_REACHED: &str = "MaxRestartsReached";
    pub const TASK_FAILED: &str = "TaskFailed";
    pub const RECORD_ERRORS: &str = "RecordErrors";
    /// A task waits out MongoDB being unavailable (Ready and Degraded).
    pub const MONGODB_UNAVAILABLE: &str = "MongoDBUnavailable";

    // Connector: ResumeTokenRecovered, ResumeTokenAtRisk.
    pub const NO_ROTATION: &str = "NoRotation";
    pub const OFFSET_PARTITION_ROTATED: &str = "OffsetPartitionRotated";
    pub const RECOVERING: &str = "Recovering";
    pub const NOT_REPORTED: &str = "NotReported";
    pub const NO_RESUME_TOKEN: &str = "NoResumeToken";
    pub const OPLOG_WINDOW_UNKNOWN: &str = "OplogWindowUnknown";
    pub const TOKEN_OLDER_THAN_HALF_THE_OPLOG_WINDOW: &str = "TokenOlderThanHalfTheOplogWindow";
    pub const WITHIN_OPLOG_WINDOW: &str = "WithinOplogWindow";

    // DeadLetterQueue: Ready.
    pub const PARTITIONS_PENDING: &str = "PartitionsPending";
    pub const CONFIG_PENDING: &str = "ConfigPending";
    pub const TOPIC_READY: &str = "TopicReady";

    /// The Ready reasons of a Connector whose spec resolves (anything else is a problem's reason).
    pub const RESOLVED: [&str; 4] = [TASKS_READY, TASKS_NOT_READY, PAUSED, STOPPED];
}

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
