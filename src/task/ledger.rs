//! The error counters a task keeps with its offsets, so the Connector's totals survive kills.
//!
//! Each input partition has a ledger: the KIP-298 counters of the records up to its stored position. A
//! sink keeps it in the offset commit's metadata of that partition, a source in the value that stores its
//! resume token; both are written in the same request as the offset, so the two can never disagree. A
//! task that gets a partition starts from the ledger committed with it; records after that offset are
//! handled again after a crash, and counted again — once. The Connector's `status.totals` is the sum of
//! the ledgers: each record handled is counted once, however often the task was killed.
//!
//! What counts where: record errors, skips, logged errors and dead-letter writes against the record's
//! partition; failed attempts and retries of a whole batch (a bulk write, an outage wait) against the
//! partition the task works on then ([`Ledger::work_on`]: a sink's batch's first partition, a source's
//! offset partition name).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::crd::connector::{ErrorCounters, PartitionTotals};

/// The ledger key of a Kafka partition, as Kafka writes a topic partition: `<topic>-<partition>`.
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// The counters of every partition the task works on.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Where counts without a record of their own go.
    current: Option<String>,
    /// Per partition: the counters up to its stored position (only partitions whose ledger was read).
    stored: BTreeMap<String, PartitionTotals>,
    /// Per partition: what was counted since, not yet stored.
    pending: BTreeMap<String, ErrorCounters>,
}

impl Ledger {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts without a record of their own go to `key` from now on.
    pub fn work_on(&self, key: &str) {
        self.inner().current = Some(key.to_string());
    }

    /// Counts `change` against `key`, or against the partition worked on when `None`.
    pub fn count(&self, key: Option<&str>, change: impl FnOnce(&mut ErrorCounters)) {
        let mut inner = self.inner();
        let Some(key) = key.map(str::to_string).or_else(|| inner.current.clone()) else {
            return;
        };
        change(inner.pending.entry(key).or_default());
    }

    /// Whether `key`'s committed ledger was read since the task got the partition.
    pub fn is_loaded(&self, key: &str) -> bool {
        self.inner().stored.contains_key(key)
    }

    /// The ledger committed with `key`'s offset at `position`, read when the task got the partition.
    pub fn load(&self, key: &str, position: i64, committed: ErrorCounters) {
        self.inner().stored.insert(
            key.to_string(),
            PartitionTotals {
                position,
                errors: committed,
            },
        );
    }

    /// The partition went to another task (or comes back after a rebalance): its committed ledger is read
    /// again before it is stored next.
    pub fn forget(&self, key: &str) {
        self.inner().stored.remove(key);
    }

    /// What was counted against `key` and not stored is dropped: its records are handled again by the
    /// partition's next owner, who counts them.
    pub fn drop_pending(&self, key: &str) {
        self.inner().pending.remove(key);
    }

    /// What was counted against `key` and not stored yet (for [`Self::restore_pending`]).
    pub fn pending(&self, key: &str) -> Option<ErrorCounters> {
        self.inner().pending.get(key).cloned()
    }

    /// Puts back what [`Self::pending`] returned: the counts since are dropped (an exactly-once source's
    /// aborted transaction, whose records are handled again and counted then).
    pub fn restore_pending(&self, key: &str, pending: Option<ErrorCounters>) {
        let mut inner = self.inner();
        match pending {
            Some(p) => inner.pending.insert(key.to_string(), p),
            None => inner.pending.remove(key),
        };
    }

    /// `key`'s ledger with what is pending added: the value to store with its next offset. `None` when the
    /// committed ledger was not read ([`Self::load`] first).
    pub fn to_store(&self, key: &str) -> Option<ErrorCounters> {
        let inner = self.inner();
        let mut next = inner.stored.get(key)?.errors.clone();
        if let Some(pending) = inner.pending.get(key) {
            next.add(pending);
        }
        Some(next)
    }

    /// The position `key`'s ledger was last stored at (`None` before it was read).
    pub fn position(&self, key: &str) -> Option<i64> {
        self.inner().stored.get(key).map(|t| t.position)
    }

    /// `key`'s offset was stored at `position` with `ledger` (from [`Self::to_store`]): that is its ledger
    /// now.
    pub fn stored(&self, key: &str, position: i64, ledger: ErrorCounters) {
        let mut inner = self.inner();
        inner.pending.remove(key);
        inner.stored.insert(
            key.to_string(),
            PartitionTotals {
                position,
                errors: ledger,
            },
        );
    }

    /// Every partition's stored ledger (what `/v1/status` reports).
    pub fn snapshot(&self) -> BTreeMap<String, PartitionTotals> {
        self.inner().stored.clone()
    }
}

/// How a ledger travels with an offset: `{"sluice":{"errors":{…}}}` as the commit metadata of a sink's
/// partition (its position is the committed offset), and as the `sluice` field beside `_id` in a source's
/// stored token, with the number of the store as its position.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    pub errors: ErrorCounters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

/// The commit metadata for a sink partition's ledger.
pub fn to_metadata(ledger: &ErrorCounters) -> String {
    let stored = Stored {
        errors: ledger.clone(),
        position: None,
    };
    serde_json::json!({ "sluice": stored }).to_string()
}

/// The ledger in a partition's commit metadata: zero for none (a partition never committed by sluice, or
/// committed by another consumer such as Kafka Connect).
pub fn from_metadata(metadata: &str) -> ErrorCounters {
    #[derive(Deserialize)]
    struct Metadata {
        sluice: Stored,
    }
    serde_json::from_str::<Metadata>(metadata)
        .map(|m| m.sluice.errors)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(n: i64) -> ErrorCounters {
        ErrorCounters {
            total_record_errors: n,
            ..Default::default()
        }
    }

    #[test]
    fn a_ledger_adds_what_is_pending_to_what_was_committed() {
        let ledger = Ledger::default();
        ledger.work_on("orders-0");
        ledger.count(Some("orders-1"), |c| c.total_record_errors += 1);
        ledger.count(None, |c| c.total_retries += 2);
        // Not read yet: nothing to store.
        assert_eq!(ledger.to_store("orders-1"), None);
        ledger.load("orders-1", 0, errors(10));
        ledger.load("orders-0", 0, ErrorCounters::default());
        let next = ledger.to_store("orders-1").unwrap();
        assert_eq!(next, errors(11));
        assert_eq!(ledger.to_store("orders-0").unwrap().total_retries, 2);
        ledger.stored("orders-1", 40, next);
        assert_eq!(
            ledger.to_store("orders-1"),
            Some(errors(11)),
            "pending moved"
        );
        assert_eq!(
            ledger.snapshot()["orders-1"],
            PartitionTotals {
                position: 40,
                errors: errors(11)
            }
        );
    }

    #[test]
    fn a_partition_that_moves_is_read_again_and_loses_nothing_pending() {
        let ledger = Ledger::default();
        ledger.load("orders-0", 10, errors(5));
        ledger.count(Some("orders-0"), |c| c.total_record_errors += 1);
        // A rebalance mid-batch: the committed ledger is read again (it may have moved on).
        ledger.forget("orders-0");
        assert_eq!(ledger.to_store("orders-0"), None);
        ledger.load("orders-0", 12, errors(7));
        assert_eq!(ledger.to_store("orders-0"), Some(errors(8)));
        // Revoked for good: what was pending is the next owner's to count.
        ledger.drop_pending("orders-0");
        assert_eq!(ledger.to_store("orders-0"), Some(errors(7)));
    }

    #[test]
    fn counts_without_a_partition_worked_on_go_nowhere() {
        let ledger = Ledger::default();
        ledger.count(None, |c| c.total_retries += 1);
        ledger.load("orders-0", 0, ErrorCounters::default());
        assert_eq!(ledger.to_store("orders-0"), Some(ErrorCounters::default()));
    }

    #[test]
    fn metadata_round_trips_and_foreign_metadata_is_zero() {
        let ledger = ErrorCounters {
            total_record_errors: 3,
            dead_letter_queue_produce_requests: 3,
            last_error_timestamp: 1_733_000_000_000,
            ..Default::default()
        };
        let metadata = to_metadata(&ledger);
        assert!(
            metadata.len() < 4096,
            "the broker's offset.metadata.max.bytes"
        );
        assert_eq!(from_metadata(&metadata), ledger);
        assert_eq!(from_metadata(""), ErrorCounters::default());
        assert_eq!(from_metadata("connect"), ErrorCounters::default());
    }
}
