//! What the operator hands a replay pod, and the progress the pod commits that the operator reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::task_config::TaskKafka;
use crate::crd::dead_letter_queue::{Replay, ReplayCounts};

/// A replay pod's config (env `SLUICE_REPLAY_CONFIG`, JSON). No secrets: Kafka credentials come from env
/// and files, as for connector tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayConfig {
    pub namespace: String,
    /// The DeadLetterQueue's name.
    pub dead_letter_queue: String,
    /// The dead-letter topic.
    pub topic: String,
    pub kafka: TaskKafka,
    pub replay: Replay,
    /// Per partition, where reading stops (exclusive): the end offsets when the replay began.
    pub end_offsets: BTreeMap<i32, i64>,
}

impl ReplayConfig {
    /// The consumer group holding the replay's progress, also its producer's `transactional.id`.
    pub fn group(&self) -> String {
        crate::names::replay_group(&self.namespace, &self.dead_letter_queue, &self.replay.id)
    }
}

/// Running counts of one partition, kept in its committed offset's metadata.
pub fn encode_counts(c: &ReplayCounts) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// The counts from a committed offset's metadata; empty or foreign metadata counts as zero.
pub fn decode_counts(metadata: &str) -> ReplayCounts {
    serde_json::from_str(metadata).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_offset_metadata() {
        let c = ReplayCounts {
            matched: 3,
            replayed: 1,
            skipped_max_replay_count: 1,
            skipped_no_target: 1,
        };
        assert_eq!(decode_counts(&encode_counts(&c)), c);
        assert_eq!(decode_counts(""), ReplayCounts::default());
    }
}
