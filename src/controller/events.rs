//! Events (core/v1) as client-go's `tools/record` recorder makes them: one Event per object, type, reason
//! and message; the same Event again within [`SERIES_TTL`] bumps its `count` and `lastTimestamp` instead of
//! adding another. core/v1 rather than `events.k8s.io/v1`: the fields `kubectl get events` shows and sorts by
//! (`--sort-by=.lastTimestamp`) are core/v1's, and the apiserver refuses them on an `events.k8s.io/v1`
//! Event ("needs to be unset"), whose Events then sort apart from everyone else's.
//!
//! kube's `Recorder` keys repeats by reason alone and keeps the first message, so a second replay's or a
//! second rotation's Event would show the first one's text; this one keys by the message too.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
pub use kube::runtime::events::EventType;
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::Mutex;

/// How long a repeat counts as the same Event (client-go: 10 minutes, kube: 6).
pub const SERIES_TTL: Duration = Duration::from_secs(600);
/// The API's limit on an Event's note.
const MAX_NOTE: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    warning: bool,
    reason: String,
    note: String,
}

struct Seen {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events for the operator.
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: Option<String>,
    seen: Mutex<HashMap<Key, Seen>>,
}

/// The reasons of the operator's Events.
pub mod reason {
    pub const CONFIG_VALID: &str = "ConfigValid";
    pub const TASKS_CREATED: &str = "TasksCreated";
    pub const TASK_REPLACED: &str = "TaskReplaced";
    pub const TASK_REMOVED: &str = "TaskRemoved";
    pub const TASK_RESTARTED: &str = "TaskRestarted";
    pub const TASK_FAILED: &str = "TaskFailed";
    pub const TASK_FENCED: &str = "TaskFenced";
    pub const RESUME_TOKEN_LOST: &str = "ResumeTokenLost";
    pub const OFFSET_PARTITION_ROTATED: &str = "OffsetPartitionRotated";
    pub const OFFSET_RESET_PENDING: &str = "OffsetResetPending";
    pub const OFFSETS_RESET: &str = "OffsetsReset";
    pub const MONGODB_AVAILABLE: &str = "MongoDBAvailable";
    pub const KAFKA_AVAILABLE: &str = "KafkaAvailable";
    pub const REPLAY_TARGET_MISSING: &str = "ReplayTargetMissing";
    pub const REPLAY_STARTED: &str = "ReplayStarted";
    pub const REPLAY_COMPLETED: &str = "ReplayCompleted";
    pub const REPLAY_RESTARTED: &str = "ReplayRestarted";
    pub const REPLAY_FAILED: &str = "ReplayFailed";
}

/// The note cut to what the API keeps, on a character boundary.
pub fn note_within_limit(note: &str) -> String {
    crate::text::cut_with_marker(note, MAX_NOTE, "...")
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance,
            seen: Mutex::default(),
        }
    }

    /// Records an Event about one of sluice's resources; a failure is logged.
    pub async fn about<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        self.record(&object.object_ref(&()), type_, reason, note)
            .await;
    }

    /// Records an Event about `regarding`; a failure is logged (an Event is never worth failing a reconcile).
    pub async fn record(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        if let Err(err) = self
            .publish(regarding, type_ == EventType::Warning, reason, note)
            .await
        {
            tracing::warn!(object = ?regarding.name, %reason, error = %err, "publishing event failed");
        }
    }

    /// Records an Event about `regarding`: a new one, or one more of the same.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let note = note_within_limit(note);
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            warning,
            reason: reason.into(),
            note: note.clone(),
        };
        let mut seen = self.seen.lock().await;
        let ttl = jiff_ttl();
        seen.retain(|_, s| s.last + ttl > now);
        if let Some(s) = seen.get_mut(&key) {
            let patch = json!({ "count": s.count + 1, "lastTimestamp": Time(now) });
            events
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            s.count += 1;
            s.last = now;
            return Ok(());
        }
        let name = format!(
            "{}.{:016x}",
            regarding.name.clone().unwrap_or_default(),
            rand::random::<u64>()
        );
        let event: Event = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace },
            "firstTimestamp": Time(now),
            "lastTimestamp": Time(now),
            "count": 1,
            "source": { "component": self.controller },
            "reportingComponent": self.controller,
            "reportingInstance": self.instance.clone().unwrap_or_else(|| self.controller.clone()),
            "action": "Reconcile",
            "reason": reason,
            "message": note,
            "type": if warning { "Warning" } else { "Normal" },
            "involvedObject": regarding,
        }))
        .map_err(kube::Error::SerdeError)?;
        events.create(&PostParams::default(), &event).await?;
        seen.insert(
            key,
            Seen {
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}

fn jiff_ttl() -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(SERIES_TTL).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(note_within_limit("short"), "short");
        let long = "é".repeat(600);
        let cut = note_within_limit(&long);
        assert!(
            cut.len() <= MAX_NOTE && cut.ends_with("..."),
            "{}",
            cut.len()
        );
    }
}
