//! The MongoDB sink: Kafka → MongoDB.
//!
//! - this module: the consume loop — batches of records, written, then marked handled.
//! - [`write`]: a batch becomes bulk `insert`/`update` commands (unordered unless `bulkWriteOrdered`). A bulk
//!   write that fails as a whole is retried; a write that fails at some indexes sends only those records to
//!   error handling (retried when retriable, else reported and, with `tolerance: all`, dead-lettered) —
//!   KIP-610's errant-record reporting.
//! - [`commit`]: when offsets move (stored after a batch is handled, committed on an interval): at least
//!   once.

mod commit;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use super::errors::{ErrorHandler, Halt, TaskFailed, Wait, sleep_unless_stopped};
use super::failure::{Failure, Stage};
use super::ledger::partition_key;
use super::metrics::TaskMetrics;
use crate::crd::connector::SinkSpec;
use crate::kafka::{Credentials, consumer_config};
use crate::names;
use crate::wire::{TaskConfig, TerminationReason};
use commit::{Batch, CommitReporter, SinkConsumer};

/// The sink task.
pub struct Sink {
    cfg: TaskConfig,
    spec: SinkSpec,
    db: mongodb::Database,
    collection: String,
    handler: Arc<ErrorHandler>,
    metrics: Arc<TaskMetrics>,
}

impl Sink {
    pub fn new(
        cfg: TaskConfig,
        mongo: mongodb::Client,
        handler: Arc<ErrorHandler>,
        metrics: Arc<TaskMetrics>,
    ) -> Result<Self, Failure> {
        let spec = cfg
            .sink
            .clone()
            .ok_or_else(|| Failure::config(Stage::TaskPut, "a sink task needs sink settings"))?;
        let (Some(db), Some(collection)) =
            (cfg.mongodb.database.clone(), cfg.mongodb.collection.clone())
        else {
            return Err(Failure::config(
                Stage::TaskPut,
                "a sink task needs mongodb.database and mongodb.collection",
            ));
        };
        Ok(Self {
            db: mongo.database(&db),
            collection,
            cfg,
            spec,
            handler,
            metrics,
        })
    }

    /// Consumes and writes until `shutdown` flips; the batch in flight is finished and committed first.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), TaskFailed> {
        let fatal = |failure| TaskFailed::new(TerminationReason::TaskStartFailed, failure);
        let interval_ms = self.spec.offset_flush_interval_ms;
        let mut config = consumer_config(&self.cfg.kafka, Credentials::Env);
        config
            .set(
                "group.id",
                names::sink_consumer_group(
                    &self.cfg.namespace,
                    &self.cfg.connector,
                    self.spec.consumer_group_id.as_deref(),
                ),
            )
            .set(
                "client.id",
                names::task_client_id(&self.cfg.connector, self.cfg.task_id),
            )
            .set("auto.offset.reset", "earliest");
        commit::commit_settings(&mut config, interval_ms);
        let consumer: SinkConsumer = config
            .create_with_context(CommitReporter::new(self.metrics.clone()))
            .map_err(|e| fatal(Failure::kafka(Stage::KafkaConsume, &e)))?;
        let topics: Vec<String> = match (&self.spec.topics, &self.spec.topics_regex) {
            (Some(t), _) => t.clone(),
            (None, Some(r)) => vec![crate::kafka::subscription_pattern(r)],
            _ => vec![],
        };
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| fatal(Failure::kafka(Stage::KafkaConsume, &e)))?;
        self.metrics.set_running(true);
        let max = if self.spec.max_batch_size > 0 {
            self.spec.max_batch_size as usize
        } else {
            500
        };
        let waiter = PausedWait {
            consumer: &consumer,
            shutdown: shutdown.clone(),
            held: Default::default(),
        };
        loop {
            // Held records come first; more are only read once none is left (held ones arrive during a
            // wait, or end a batch's filling when a rebalance came in between).
            let (mut batch, more_held) = waiter.take_held(max);
            if batch.is_empty() {
                let first = tokio::select! {
                    m = consumer.recv() => m,
                    _ = shutdown.changed() => break,
                };
                match first {
                    Ok(m) => {
                        let pushed = batch.push(m.detach(), consumer.context().rebalances());
                        debug_assert!(pushed.is_ok(), "the first record of a batch always fits");
                    }
                    Err(e) => {
                        // Consumer errors (rebalances, broker hiccups) are librdkafka's to recover from.
                        tracing::warn!(error = %e, "consume");
                        continue;
                    }
                }
            }
            while batch.len() < max && !more_held {
                match tokio::time::timeout(Duration::from_millis(20), consumer.recv()).await {
                    Ok(Ok(m)) => {
                        // A rebalance came in between: the record starts the next batch.
                        if let Err(next) = batch.push(m.detach(), consumer.context().rebalances()) {
                            waiter.hold(next);
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let started = Instant::now();
            let ledger = &self.metrics.ledger;
            if let Some(first) = batch.records.first() {
                ledger.work_on(&partition_key(first.topic(), first.partition()));
            }
            let handled = async {
                self.write_batch(&batch.records, &waiter).await?;
                self.handler
                    .retry(&waiter, || async {
                        commit::ledger_partitions(&consumer, &batch.records, ledger)
                            .map_err(|e| Failure::kafka(Stage::KafkaConsume, &e))
                    })
                    .await
                    .map_err(|end| end.halt_with(TerminationReason::CommitFailed, None))
            };
            match handled.await {
                Ok(()) => {}
                // Stopped while waiting out an outage: this batch is not handled, nothing of it commits.
                Err(Halt::Shutdown) => break,
                Err(Halt::Failed(failed)) => return Err(failed),
            }
            commit::batch_handled(&consumer, &batch, interval_ms, ledger)?;
            self.metrics.batch(started.elapsed());
            if *shutdown.borrow() {
                break;
            }
        }
        commit::commit_at_stop(&consumer, interval_ms)?;
        self.metrics.set_running(false);
        Ok(())
    }
}

/// The sink's wait between attempts: the assigned partitions are paused and the consumer is polled all the
/// while, so the task keeps its group membership however long an outage lasts (a consumer that is not
/// polled for `max.poll.interval.ms` leaves the group). Records that still arrive (from a partition
/// assigned meanwhile) are held and come first in the next batch. SIGTERM ends the wait.
struct PausedWait<'a> {
    consumer: &'a SinkConsumer,
    shutdown: watch::Receiver<bool>,
    /// Records held, each with the consumer's rebalance count when it arrived.
    held: std::sync::Mutex<std::collections::VecDeque<(OwnedMessage, u64)>>,
}

impl PausedWait<'_> {
    /// Up to `max` held records, and whether more are left.
    /// Up to `max` held records of one assignment, and whether more are left. Held records whose
    /// partition a rebalance moved since are dropped: they are consumed again (see [`commit::is_stale`]).
    fn take_held(&self, max: usize) -> (Batch, bool) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(m, at)| {
            !commit::is_stale(self.consumer, &partition_key(m.topic(), m.partition()), *at)
        });
        let mut taken = Batch::default();
        while taken.len() < max {
            let Some((record, rebalances)) = held.pop_front() else {
                break;
            };
            if let Err(other) = taken.push(record, rebalances) {
                held.push_front(other);
                break;
            }
        }
        (taken, !held.is_empty())
    }

    /// Keeps a record for the next batch.
    fn hold(&self, (record, rebalances): (OwnedMessage, u64)) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((record, rebalances));
    }

    /// Pauses (or resumes) the assigned partitions; a rebalance meanwhile follows the same state (see
    /// [`CommitReporter`]). Resuming also resumes what was paused and has been revoked since: librdkafka
    /// would keep such a partition paused if it came back.
    fn set_paused(&self, paused: bool, before: Option<&rdkafka::TopicPartitionList>) {
        self.consumer
            .context()
            .waiting
            .store(paused, std::sync::atomic::Ordering::SeqCst);
        let Ok(mut partitions) = self.consumer.assignment() else {
            return;
        };
        if let Some(before) = before {
            for e in before.elements() {
                if partitions
                    .find_partition(e.topic(), e.partition())
                    .is_none()
                {
                    partitions.add_partition(e.topic(), e.partition());
                }
            }
        }
        let result = if paused {
            self.consumer.pause(&partitions)
        } else {
            self.consumer.resume(&partitions)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, paused, "pausing or resuming the partitions failed");
        }
    }

    /// Polls the consumer for good, holding what still arrives (its partitions are paused, so that is
    /// only a partition assigned meanwhile): polling is what keeps the group membership.
    async fn hold_arriving(&self) -> std::convert::Infallible {
        loop {
            match self.consumer.recv().await {
                Ok(m) => self.hold((m.detach(), self.consumer.context().rebalances())),
                Err(e) => tracing::debug!(error = %e, "consume while paused"),
            }
        }
    }
}

impl Wait for PausedWait<'_> {
    async fn wait(&self, d: Duration) -> Result<(), Halt> {
        if *self.shutdown.borrow() {
            return Err(Halt::Shutdown);
        }
        self.set_paused(true, None);
        let paused = self.consumer.assignment().ok();
        let result = tokio::select! {
            result = sleep_unless_stopped(&self.shutdown, d) => result,
            never = self.hold_arriving() => match never {},
        };
        self.set_paused(false, paused.as_ref());
        result
    }
}
