//! When a sink's offsets move. A batch's positions are stored only after every record of it was written or
//! handled by error handling, and only stored offsets are committed: at least once. librdkafka commits them
//! every `offsetFlushIntervalMs` and when partitions are revoked or the consumer closes; a clean stop
//! commits synchronously; `offsetFlushIntervalMs: 0` commits synchronously after every batch. A batch holds
//! records of one assignment; a partition a rebalance moved while its batch was written is not stored
//! (it is consumed again from its last commit, and counted again only then).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::crd::connector::ErrorCounters;
use crate::task::errors::TaskFailed;
use crate::task::failure::{Failure, Stage};
use crate::task::ledger::{Ledger, from_metadata, partition_key, to_metadata};
use crate::task::metrics::TaskMetrics;
use crate::wire::TerminationReason;

/// The sink consumer's context: reports offset commits that librdkafka makes in the background (on the
/// interval, on revocation, on close) and that fail (the next commit carries the offsets again), and keeps
/// the pause state right across rebalances: librdkafka keeps a partition paused when it comes back after
/// a rebalance, so newly assigned partitions are resumed — or paused, while the task waits out an outage.
pub struct CommitReporter {
    /// The task waits out an outage: its partitions stay paused.
    pub waiting: std::sync::atomic::AtomicBool,
    /// Whose ledgers are read again for every partition a rebalance moves.
    metrics: Arc<TaskMetrics>,
    moves: Mutex<Moves>,
}

/// The rebalances the consumer has seen, and per partition the one that last moved it (assigned or
/// revoked).
#[derive(Debug, Default)]
struct Moves {
    rebalances: u64,
    last: BTreeMap<String, u64>,
}

impl CommitReporter {
    pub fn new(metrics: Arc<TaskMetrics>) -> Self {
        Self {
            waiting: Default::default(),
            metrics,
            moves: Default::default(),
        }
    }

    fn moves(&self) -> std::sync::MutexGuard<'_, Moves> {
        self.moves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many rebalances the consumer has seen. Read right after `recv` returns a record: rust-rdkafka
    /// runs the rebalance callback in the consumer's poll (`BaseConsumer::poll_queue`), and librdkafka
    /// hands out no record fetched before an assignment (`rd_kafka_toppar_fetch_start` bumps the
    /// partition's op version; older fetch ops are dropped as outdated), so the record belongs to the
    /// assignment this count ends with.
    pub fn rebalances(&self) -> u64 {
        self.moves().rebalances
    }

    /// Whether a rebalance after the `rebalances`-th moved `key`.
    fn moved_since(&self, key: &str, rebalances: u64) -> bool {
        self.moves()
            .last
            .get(key)
            .is_some_and(|&at| at > rebalances)
    }
}

/// A batch's records, all of one assignment: they arrived after the same number of rebalances.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<OwnedMessage>,
    rebalances: u64,
}

impl Batch {
    /// Adds a record that arrived after `rebalances` rebalances; one of another assignment than the
    /// batch's comes back, for the next batch.
    pub fn push(
        &mut self,
        record: OwnedMessage,
        rebalances: u64,
    ) -> Result<(), (OwnedMessage, u64)> {
        if self.records.is_empty() {
            self.rebalances = rebalances;
        } else if rebalances != self.rebalances {
            return Err((record, rebalances));
        }
        self.records.push(record);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The batch's partitions a rebalance moved since its records arrived (see [`is_stale`]).
    fn moved(&self, consumer: &SinkConsumer) -> BTreeSet<(&str, i32)> {
        let partitions: BTreeSet<(&str, i32)> = self
            .records
            .iter()
            .map(|m| (m.topic(), m.partition()))
            .collect();
        partitions
            .into_iter()
            .filter(|(t, p)| is_stale(consumer, &partition_key(t, *p), self.rebalances))
            .collect()
    }
}

/// Whether a record of `key` that arrived after `rebalances` rebalances is of an assignment that has
/// ended: a rebalance moved its partition since. Such a partition is consumed again from its last commit
/// (by its new owner, or by this task if it came back: librdkafka fetches from the committed offset after
/// an assignment), so the record's position is not the task's to store, and whoever handles it next
/// counts it.
pub fn is_stale(consumer: &SinkConsumer, key: &str, rebalances: u64) -> bool {
    consumer.context().moved_since(key, rebalances)
}

impl ClientContext for CommitReporter {}

impl ConsumerContext for CommitReporter {
    fn post_rebalance(
        &self,
        base_consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        // A partition that moves may have been committed by another task meanwhile: its ledger is read
        // again before its next store.
        if let rdkafka::consumer::Rebalance::Assign(moved)
        | rdkafka::consumer::Rebalance::Revoke(moved) = rebalance
        {
            let mut moves = self.moves();
            moves.rebalances += 1;
            let at = moves.rebalances;
            for e in moved.elements() {
                let key = partition_key(e.topic(), e.partition());
                self.metrics.ledger.forget(&key);
                moves.last.insert(key, at);
            }
        }
        if let rdkafka::consumer::Rebalance::Assign(assigned) = rebalance {
            let result = if self.waiting.load(std::sync::atomic::Ordering::SeqCst) {
                base_consumer.pause(assigned)
            } else {
                base_consumer.resume(assigned)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "setting the pause state of assigned partitions failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(
                error = %e,
                partitions = offsets.count(),
                "offset commit failed; the next commit retries it"
            ),
        }
    }
}

/// The sink's consumer.
pub type SinkConsumer = StreamConsumer<CommitReporter>;

/// The consumer settings of the commit policy: positions are stored by sluice, never by librdkafka on
/// delivery; committed on the interval, or by sluice after every batch when the interval is 0.
pub fn commit_settings(config: &mut ClientConfig, interval_ms: i64) {
    config.set("enable.auto.offset.store", "false");
    if interval_ms > 0 {
        config
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", interval_ms.to_string());
    } else {
        config.set("enable.auto.commit", "false");
    }
}

/// Marks a handled batch: its positions are stored for the next interval commit, or committed now, each
/// with its partition's ledger as the commit metadata ([`ledger_partitions`] read them first). Partitions
/// a rebalance moved while the batch was written are left out (see [`Batch::moved`]): storing them would
/// take a position of the old assignment for the new one, and this task would count their records again
/// when it consumes them again.
pub fn batch_handled(
    consumer: &SinkConsumer,
    batch: &Batch,
    interval_ms: i64,
    ledger: &Ledger,
) -> Result<(), TaskFailed> {
    let moved = batch.moved(consumer);
    if !moved.is_empty() {
        tracing::warn!(
            partitions = moved.len(),
            "partitions moved by a rebalance while their batch was written; they are consumed again from \
             their last commit"
        );
        for (topic, partition) in &moved {
            let key = partition_key(topic, *partition);
            ledger.forget(&key);
            ledger.drop_pending(&key);
        }
    }
    let kept: Vec<&OwnedMessage> = batch
        .records
        .iter()
        .filter(|m| !moved.contains(&(m.topic(), m.partition())))
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    // Read already unless a rebalance came in between; a stored ledger is never made up.
    ledger_partitions(consumer, kept.iter().copied(), ledger).map_err(commit_failed)?;
    let (handled, ledgers) = positions_after(&kept, ledger).map_err(commit_failed)?;
    if interval_ms > 0 {
        store(consumer, &handled).map_err(commit_failed)?;
    } else {
        consumer
            .commit(&handled, CommitMode::Sync)
            .map_err(commit_failed)?;
    }
    for ((key, counters), e) in ledgers.into_iter().zip(handled.elements()) {
        if e.error().is_ok() {
            ledger.stored(&key, position(e.offset()), counters);
        } else {
            // Revoked while its batch was written: the next owner handles and counts it again.
            ledger.forget(&key);
            ledger.drop_pending(&key);
        }
    }
    Ok(())
}

/// Reads the committed ledger of every partition of the batch whose ledger the task has not read since
/// it got the partition (blocking; an error is Kafka's, to retry).
pub fn ledger_partitions<'a>(
    consumer: &SinkConsumer,
    batch: impl IntoIterator<Item = &'a OwnedMessage>,
    ledger: &Ledger,
) -> KafkaResult<()> {
    let partitions: BTreeSet<(&str, i32)> = batch
        .into_iter()
        .map(|m| (m.topic(), m.partition()))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for (topic, partition) in partitions {
        if !ledger.is_loaded(&partition_key(topic, partition)) {
            wanted.add_partition(topic, partition);
        }
    }
    if wanted.count() == 0 {
        return Ok(());
    }
    for e in consumer
        .committed_offsets(wanted, LEDGER_READ_TIMEOUT)?
        .elements()
    {
        e.error()?;
        ledger.load(
            &partition_key(e.topic(), e.partition()),
            position(e.offset()),
            from_metadata(e.metadata()),
        );
    }
    Ok(())
}

/// A ledger's position in a partition: the offset after what it counts (-1: never committed, the start of
/// the partition's history as far as the ledger goes).
fn position(offset: Offset) -> i64 {
    match offset {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

/// How long reading committed offsets may take before it is retried.
const LEDGER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// At a clean stop: commits what is stored and not committed yet.
pub fn commit_at_stop(consumer: &SinkConsumer, interval_ms: i64) -> Result<(), TaskFailed> {
    if interval_ms <= 0 {
        return Ok(());
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(commit_failed(e)),
    }
}

fn commit_failed(e: KafkaError) -> TaskFailed {
    TaskFailed::new(
        TerminationReason::CommitFailed,
        Failure::kafka(Stage::KafkaConsume, &e),
    )
}

/// The position after every record of the batch, per partition, with the partition's ledger as its
/// metadata: what a commit records as handled. The ledgers come along in the list's order.
fn positions_after(
    batch: &[&OwnedMessage],
    ledger: &Ledger,
) -> KafkaResult<(TopicPartitionList, Vec<(String, ErrorCounters)>)> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    let mut ledgers = Vec::with_capacity(next.len());
    for ((topic, partition), offset) in next {
        let key = partition_key(topic, partition);
        let counters = ledger.to_store(&key).unwrap_or_default(); // read just before
        let mut e = tpl.add_partition(topic, partition);
        e.set_offset(Offset::Offset(offset))?;
        e.set_metadata(to_metadata(&counters));
        ledgers.push((key, counters));
    }
    Ok((tpl, ledgers))
}

/// Stores handled positions for librdkafka's next commit. A partition revoked while its batch was being
/// written can't be stored any more; its new owner starts from the last commit (at least once).
fn store(consumer: &SinkConsumer, handled: &TopicPartitionList) -> KafkaResult<()> {
    match consumer.store_offsets(handled) {
        Err(KafkaError::StoreOffset(
            RDKafkaErrorCode::State | RDKafkaErrorCode::UnknownPartition,
        )) => {
            tracing::warn!(
                partitions = handled.count(),
                "partitions revoked while their batch was written; their new owner writes it again"
            );
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn record(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "orders".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_batch_takes_records_of_one_assignment_only() {
        let mut batch = Batch::default();
        assert!(batch.push(record(0, 7), 2).is_ok());
        assert!(batch.push(record(1, 3), 2).is_ok());
        let (back, at) = batch.push(record(0, 0), 4).unwrap_err();
        assert_eq!((back.offset(), at, batch.len()), (0, 4, 2));
    }
}
