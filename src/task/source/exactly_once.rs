//! Exactly-once delivery (`spec.source.exactlyOnce: required`): each batch of change events, its dead
//! letters and its resume token go to Kafka in one transaction, so a `read_committed` consumer sees a batch
//! once or not at all, and a restarted task resumes from the token of the last batch that committed.
//!
//! - At start the task takes over its `transactional.id` ([`names::transactional_id`]): older instances
//!   are fenced, and a transaction a dead one left open is aborted, before the stored token is read.
//! - A batch that fails (Kafka unavailable, a transaction error) is aborted and sent again whole. A record
//!   the broker refuses for its own sake (too large, say) aborts the transaction too; the batch is sent
//!   again at once with that record dead-lettered instead (in the transaction).
//! - What an aborted attempt counted in the ledger is dropped with it (the attempt's records are handled
//!   again and counted then); the failure that aborted it is counted.
//! - A task that finds itself fenced stops with `TaskFenced`: a newer instance writes for it now.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mongodb::bson::Document;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

use super::offsets::ResumePoint;
use super::{Source, SourceProducer};
use crate::crd::connector::DeliveryStatus;
use crate::kafka::transactional::{Transactional, is_fatal, is_fenced};
use crate::kafka::{Credentials, client_config};
use crate::names;
use crate::task::dlq;
use crate::task::errors::{Halt, OutageClock, RetryEnd, ShutdownWait, TaskFailed};
use crate::task::failure::{Dependency, Failure, Stage};
use crate::wire::{TaskConfig, TerminationReason};

/// The error class of a fenced task's failure (Kafka's Java client's).
const FENCED_CLASS: &str = "org.apache.kafka.common.errors.ProducerFencedException";

/// The transactional producer of an exactly-once source task. Dead letters go through it too, so its
/// partitioner and record size are the dead-letter producer's.
pub fn transactional_config(cfg: &TaskConfig) -> ClientConfig {
    let mut config = client_config(&cfg.kafka, Credentials::Env);
    config
        .set(
            "client.id",
            names::task_client_id(&cfg.connector, cfg.task_id),
        )
        .set(
            "transactional.id",
            names::transactional_id(&cfg.namespace, &cfg.connector, cfg.task_id),
        )
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", dlq::PRODUCER_MESSAGE_MAX_BYTES);
    config
}

/// How one transaction attempt ended (a failure is returned as `Err`).
enum Attempt {
    /// Committed: this many records produced, and the offset record stored with them.
    Committed {
        produced: u64,
        offset: Option<super::offsets::OffsetRecord>,
    },
    /// This many records the broker refused for their own sake: aborted, to be sent again at once without
    /// them.
    Refused(u64),
    /// Error handling stopped the task (`tolerance: none`, the error limit).
    Halted(Halt),
}

impl Source {
    /// The task's transactional producer when it runs exactly once.
    pub(super) fn exactly_once(&self) -> Option<&Transactional> {
        match &self.producer {
            SourceProducer::ExactlyOnce(t) => Some(t),
            SourceProducer::AtLeastOnce(_) => None,
        }
    }

    fn transactional_id(&self) -> String {
        names::transactional_id(&self.cfg.namespace, &self.cfg.connector, self.cfg.task_id)
    }

    /// A Kafka error as a failure; a fenced producer's names what fenced it.
    pub(super) fn kafka_failure(&self, e: &KafkaError) -> Failure {
        if self.exactly_once().is_some() && is_fenced(e) {
            return Failure::new(
                Stage::KafkaProduce,
                FENCED_CLASS,
                format!(
                    "fenced: a newer producer took over transactional.id {} (another instance of this \
                     task started, or the broker aborted a transaction that outlived \
                     transaction.timeout.ms): {e}",
                    self.transactional_id()
                ),
                false,
            );
        }
        let mut f = Failure::kafka(Stage::KafkaProduce, e);
        if self.exactly_once().is_some() && !f.retriable && !is_fatal(e) && is_transaction_state(e)
        {
            // The transaction's state, not the record: the batch is aborted and sent again.
            f.retriable = true;
            f.outage = Some(Dependency::Kafka);
        }
        f
    }

    /// Reports the delivery mode; exactly once, takes over the task's `transactional.id` first.
    pub(super) async fn start_delivery(&self, waiter: &ShutdownWait) -> Result<(), Halt> {
        let Some(txn) = self.exactly_once() else {
            self.metrics
                .update_delivery(|d| d.mode = "atLeastOnce".into());
            return Ok(());
        };
        self.handler
            .retry(waiter, || async {
                txn.init().await.map_err(|e| self.transaction_failure(&e))
            })
            .await
            .map_err(|end| self.transaction_halt(end))?;
        self.metrics.update_delivery(|d| {
            *d = DeliveryStatus {
                mode: "exactlyOnce".into(),
                transactional_id: Some(self.transactional_id()),
                ..Default::default()
            }
        });
        tracing::info!(transactional_id = %self.transactional_id(), "exactly once: older instances fenced");
        Ok(())
    }

    /// A failed transaction call: fenced, fatal (the producer is unusable), or to abort and try again
    /// (waited out as Kafka being unavailable).
    fn transaction_failure(&self, e: &KafkaError) -> Failure {
        let mut f = self.kafka_failure(e);
        if f.class == FENCED_CLASS {
            return f;
        }
        let abortable =
            matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort() || t.is_retriable());
        if is_fatal(e) {
            f.retriable = false;
            f.outage = None;
        } else if abortable || f.retriable {
            f.retriable = true;
            f.outage = Some(Dependency::Kafka);
        }
        f
    }

    /// How a transaction's retries ended, as the task's end.
    fn transaction_halt(&self, end: RetryEnd) -> Halt {
        match end {
            RetryEnd::Halt(h) => h,
            RetryEnd::Failed(f) if f.class == FENCED_CLASS => {
                TaskFailed::new(TerminationReason::TaskFenced, f).into()
            }
            RetryEnd::Failed(f) => TaskFailed::new(TerminationReason::TransactionFailed, f).into(),
        }
    }

    /// Produces `batch` (change events or copied documents) in one transaction, with the offset record of
    /// `offset` (a token and the cluster time it points at) and a heartbeat record `(topic, key, value)`.
    pub(super) async fn transact(
        &self,
        batch: &[Document],
        offset: Option<(&ResumePoint, Option<u32>)>,
        heartbeat: Option<&(String, String, String)>,
        waiter: &ShutdownWait,
    ) -> Result<(), Halt> {
        let Some(txn) = self.exactly_once() else {
            unreachable!("transact is only called exactly once");
        };
        self.metrics.records_in(batch.len() as u64);
        let partition = &self.source.offset_partition_name;
        // Records the broker refused for their own sake, by index in the batch: dead-lettered from now on.
        let refused = Mutex::new(BTreeMap::<usize, Failure>::new());
        loop {
            let ended = self
                .handler
                .retry(waiter, || async {
                    let before = self.metrics.ledger.pending(partition);
                    let attempt = self
                        .attempt(txn, batch, offset, heartbeat, &refused, waiter)
                        .await;
                    if !matches!(attempt, Ok(Attempt::Committed { .. } | Attempt::Halted(_))) {
                        self.abandon(txn, before, waiter).await?;
                    }
                    if let Ok(Attempt::Refused(n)) = attempt {
                        // Counted after the abort, which dropped the attempt's counts.
                        for _ in 0..n {
                            self.metrics.record_failure(None);
                        }
                    }
                    attempt
                })
                .await
                .map_err(|end| self.transaction_halt(end))?;
            match ended {
                Attempt::Committed { produced, offset } => {
                    if let Some(record) = offset {
                        self.offset_stored(record);
                    }
                    self.metrics.records_out(produced);
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    self.metrics.update_delivery(|d| {
                        d.committed += 1;
                        d.last_commit_time = Some(now);
                    });
                    return Ok(());
                }
                Attempt::Refused(_) => continue,
                Attempt::Halted(h) => return Err(h),
            }
        }
    }

    /// One attempt: begin, produce, dead-letter, store the offset, commit.
    async fn attempt(
        &self,
        txn: &Transactional,
        batch: &[Document],
        offset: Option<(&ResumePoint, Option<u32>)>,
        heartbeat: Option<&(String, String, String)>,
        refused: &Mutex<BTreeMap<usize, Failure>>,
        waiter: &ShutdownWait,
    ) -> Result<Attempt, Failure> {
        txn.begin()
            .await
            .map_err(|e| self.transaction_failure(&e))?;
        let mut records = Vec::with_capacity(batch.len());
        for (i, event) in batch.iter().enumerate() {
            let known = refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&i)
                .cloned();
            let failed = match (self.convert(event), known) {
                (Ok(record), None) => {
                    records.push((i, record));
                    continue;
                }
                (Ok(record), Some(f)) => (f, record),
                (Err(failed), _) => {
                    self.metrics.record_failure(None);
                    *failed
                }
            };
            if let Err(h) = self.handler.record_failed(failed.0, failed.1, waiter).await {
                return Ok(Attempt::Halted(h));
            }
        }
        let sends = records.iter().map(|(_, r)| self.send_record(r));
        let results = futures::future::join_all(sends).await;
        let (mut newly_refused, mut first) = (0, None);
        for ((i, _), result) in records.iter().zip(results) {
            let Err(f) = result else { continue };
            if f.class == FENCED_CLASS {
                return Err(f);
            }
            if !f.retriable && f.outage.is_none() {
                refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*i, f);
                newly_refused += 1;
            } else {
                first.get_or_insert(f);
            }
        }
        if newly_refused > 0 {
            return Ok(Attempt::Refused(newly_refused));
        }
        if let Some(f) = first {
            return Err(f);
        }
        self.handler.dead_letters_delivered().await?;
        if let Some((topic, key, value)) = heartbeat {
            self.ensure_topic(topic, false).await?;
            self.send(FutureRecord::to(topic).key(key).payload(value))
                .await?;
        }
        let offset = match offset {
            Some((point, at)) => {
                let record = self.offset_record(point, at);
                self.send_offset(&record).await?;
                Some(record)
            }
            None => None,
        };
        txn.commit()
            .await
            .map_err(|e| self.transaction_failure(&e))?;
        Ok(Attempt::Committed {
            produced: records.len() as u64,
            offset,
        })
    }

    /// Aborts the open transaction (waiting out Kafka being unavailable) and drops what the attempt counted
    /// and dead-lettered; the ledger is back at `before`.
    async fn abandon(
        &self,
        txn: &Transactional,
        before: Option<crate::crd::connector::ErrorCounters>,
        waiter: &ShutdownWait,
    ) -> Result<(), Failure> {
        self.handler.discard_dead_letters().await;
        self.metrics
            .ledger
            .restore_pending(&self.source.offset_partition_name, before);
        self.metrics.update_delivery(|d| d.aborted += 1);
        let mut outage = OutageClock::default();
        loop {
            match txn.abort().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let f = self.transaction_failure(&e);
                    if !f.retriable {
                        // Fenced or fatal: the next call says so too, and the task stops.
                        return Err(f);
                    }
                    tracing::debug!(error = %e, "aborting the transaction failed; trying again");
                    if self
                        .handler
                        .wait_out(&f, &mut outage, waiter)
                        .await
                        .is_err()
                    {
                        // Stopping, or Kafka gone too long: the caller's wait says which.
                        return Err(f);
                    }
                }
            }
        }
    }
}

/// Whether a produce error comes from the transaction's state (an earlier failure made it abortable, the
/// producer is fenced or out of sequence) rather than from the record.
fn is_transaction_state(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    e.rdkafka_error_code().is_some_and(|code| {
        matches!(
            code,
            State
                | InvalidTransactionalState
                | OutOfOrderSequenceNumber
                | UnknownProducerId
                | ConcurrentTransactions
                | TransactionCoordinatorFenced
        )
    })
}
