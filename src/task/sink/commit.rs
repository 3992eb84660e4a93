//! When a sink's offsets move. A batch's positions are stored only after every record of it was written or
//! handled by error handling, and only stored offsets are committed: at least once. librdkafka commits them
//! every `offsetFlushIntervalMs` and when partitions are revoked or the consumer closes; a clean stop
//! commits synchronously; `offsetFlushIntervalMs: 0` commits synchronously after every batch.

use std::collections::BTreeMap;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::task::errors::TaskFailed;
use crate::task::failure::{Failure, Stage};
use crate::wire::TerminationReason;

/// The sink consumer's context: reports offset commits that librdkafka makes in the background (on the
/// interval, on revocation, on close) and that fail (the next commit carries the offsets again), and keeps
/// the pause state right across rebalances: librdkafka keeps a partition paused when it comes back after
/// a rebalance, so newly assigned partitions are resumed — or paused, while the task waits out an outage.
#[derive(Default)]
pub struct CommitReporter {
    /// The task waits out an outage: its partitions stay paused.
    pub waiting: std::sync::atomic::AtomicBool,
}

impl ClientContext for CommitReporter {}

impl ConsumerContext for CommitReporter {
    fn post_rebalance(
        &self,
        base_consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
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

/// Marks a handled batch: its positions are stored for the next interval commit, or committed now.
pub fn batch_handled(
    consumer: &SinkConsumer,
    batch: &[OwnedMessage],
    interval_ms: i64,
) -> Result<(), TaskFailed> {
    let handled = positions_after(batch).map_err(commit_failed)?;
    if interval_ms > 0 {
        store(consumer, &handled).map_err(commit_failed)
    } else {
        consumer
            .commit(&handled, CommitMode::Sync)
            .map_err(commit_failed)
    }
}

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

/// The position after every record of the batch, per partition: what a commit records as handled.
fn positions_after(batch: &[OwnedMessage]) -> KafkaResult<TopicPartitionList> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
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
