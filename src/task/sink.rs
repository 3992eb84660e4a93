//! The MongoDB sink: Kafka → MongoDB.
//!
//! Records are consumed in batches, converted, and written with one bulk `insert` or `update` command
//! (unordered unless `bulkWriteOrdered`). A bulk write that fails as a whole is retried; a write that fails
//! at some indexes sends only those records to error handling (retried when retriable, else reported and,
//! with `tolerance: all`, dead-lettered) — KIP-610's errant-record reporting. A batch's offsets are stored
//! only after every record of it was written or handled, and only stored offsets are committed: at least
//! once. librdkafka commits them every `offsetFlushIntervalMs` and when partitions are revoked or the
//! consumer closes; a clean stop commits synchronously (`offsetFlushIntervalMs: 0`: after every batch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::config::TaskConfig;
use super::convert::{Coordinates, Write, build_write, key_value, value_document};
use super::dlq::RecordContext;
use super::errors::{ErrorHandler, Failure, Stage, TaskFailed, next_retry};
use super::kafka::{classify_kafka_error, consumer_config};
use super::metrics::TaskMetrics;
use crate::crd::connector::{DocumentIdStrategy, SinkSpec};

/// Server error codes that a retry can clear (the retryable-writes specification's list).
const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Classifies a driver error: network problems, timeouts and retryable codes or labels are retriable.
pub fn classify_mongo_error(stage: Stage, err: &mongodb::error::Error) -> Failure {
    use mongodb::error::ErrorKind;
    let labelled = err.contains_label("RetryableWriteError")
        || err.contains_label("ResumableChangeStreamError");
    let (class, code, retriable) = match err.kind.as_ref() {
        ErrorKind::Command(c) => (
            "com.mongodb.MongoCommandException",
            Some(c.code),
            RETRYABLE_CODES.contains(&c.code),
        ),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            ("com.mongodb.MongoSocketException", None, true)
        }
        ErrorKind::ServerSelection { .. } => ("com.mongodb.MongoTimeoutException", None, true),
        ErrorKind::Authentication { .. } => ("com.mongodb.MongoSecurityException", None, false),
        _ => ("com.mongodb.MongoException", None, false),
    };
    let mut f = Failure::new(stage, class, err.to_string(), retriable || labelled);
    f.code = code;
    f
}

/// The consumer group of a connector (Kafka Connect: `connect-<name>`).
pub fn group_id(cfg: &TaskConfig) -> String {
    consumer_group(&cfg.namespace, &cfg.connector)
}

/// The consumer group of the sink Connector `connector` in `namespace`.
pub fn consumer_group(namespace: &str, connector: &str) -> String {
    format!("sluice-{namespace}-{connector}")
}

/// The sink consumer's context: reports offset commits that librdkafka makes in the background (on the
/// interval, on revocation, on close) and that fail. The next commit carries the offsets again.
struct CommitReporter;

impl ClientContext for CommitReporter {}

impl ConsumerContext for CommitReporter {
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

/// One record on its way to MongoDB.
struct Item {
    record: RecordContext,
    write: Write,
    attempts: u32,
    first_failed: Option<Instant>,
}

fn record_context(msg: &OwnedMessage) -> RecordContext {
    RecordContext {
        topic: msg.topic().to_string(),
        partition: Some(msg.partition()),
        offset: Some(msg.offset()),
        event_id: None,
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers: msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The write for one record, or the conversion failure.
fn convert(sink: &SinkSpec, msg: &OwnedMessage) -> Result<Option<Write>, Failure> {
    let Some(value) = msg.payload() else {
        return Ok(None);
    }; // a tombstone: nothing to write
    let key = match (sink.document_id_strategy, msg.key()) {
        (DocumentIdStrategy::ProvidedInKey, Some(k)) => Some(key_value(k, sink.key_converter)?),
        _ => None,
    };
    let value = value_document(value, sink.value_converter)?;
    let at = Coordinates {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    build_write(value, key, sink.write_model, sink.document_id_strategy, at).map(Some)
}

/// A per-index write error from a bulk reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    pub index: usize,
    pub code: i32,
    pub message: String,
}

/// The written count and per-index errors of an `insert`/`update` reply.
pub fn parse_write_reply(reply: &Document) -> (u64, Vec<WriteError>) {
    let n = match reply.get("n") {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        _ => 0,
    };
    let errors = reply
        .get_array("writeErrors")
        .map(|arr| {
            arr.iter()
                .filter_map(|e| e.as_document())
                .map(|e| WriteError {
                    index: e.get("index").and_then(bson_usize).unwrap_or(0),
                    code: e.get_i32("code").unwrap_or(0),
                    message: e.get_str("errmsg").unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    (n, errors)
}

fn bson_usize(b: &Bson) -> Option<usize> {
    match b {
        Bson::Int32(i) => usize::try_from(*i).ok(),
        Bson::Int64(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

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
        let spec = cfg.sink.clone().ok_or_else(|| {
            Failure::new(
                Stage::TaskPut,
                "ConfigException",
                "a sink task needs sink settings",
                false,
            )
        })?;
        let (Some(db), Some(collection)) =
            (cfg.mongodb.database.clone(), cfg.mongodb.collection.clone())
        else {
            return Err(Failure::new(
                Stage::TaskPut,
                "ConfigException",
                "a sink task needs mongodb.database and mongodb.collection",
                false,
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
        let fatal = |failure: Failure| TaskFailed {
            reason: "TaskStartFailed",
            failure,
            record: None,
        };
        let interval_ms = self.spec.offset_flush_interval_ms;
        let mut config = consumer_config(&self.cfg.kafka);
        config
            .set("group.id", group_id(&self.cfg))
            .set(
                "client.id",
                format!("sluice-{}-{}", self.cfg.connector, self.cfg.task_id),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        if interval_ms > 0 {
            config
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", interval_ms.to_string());
        } else {
            config.set("enable.auto.commit", "false");
        }
        let consumer: StreamConsumer<CommitReporter> =
            config
                .create_with_context(CommitReporter)
                .map_err(|e| fatal(classify_kafka_error(Stage::KafkaConsume, &e)))?;
        let topics: Vec<String> = match (&self.spec.topics, &self.spec.topics_regex) {
            (Some(t), _) => t.clone(),
            (None, Some(r)) => vec![if r.starts_with('^') {
                r.clone()
            } else {
                format!("^{r}")
            }],
            _ => vec![],
        };
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| fatal(classify_kafka_error(Stage::KafkaConsume, &e)))?;
        self.metrics.set_running(true);
        let max = if self.spec.max_batch_size > 0 {
            self.spec.max_batch_size as usize
        } else {
            500
        };
        loop {
            let first = tokio::select! {
                m = consumer.recv() => m,
                _ = shutdown.changed() => break,
            };
            let first = match first {
                Ok(m) => m.detach(),
                Err(e) => {
                    // Consumer errors (rebalances, broker hiccups) are librdkafka's to recover from.
                    tracing::warn!(error = %e, "consume");
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match tokio::time::timeout(Duration::from_millis(20), consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let started = Instant::now();
            self.write_batch(&batch).await?;
            let handled = positions_after(&batch).map_err(commit_failed)?;
            if interval_ms > 0 {
                store(&consumer, &handled).map_err(commit_failed)?;
            } else {
                consumer
                    .commit(&handled, CommitMode::Sync)
                    .map_err(commit_failed)?;
            }
            self.metrics.batch(started.elapsed());
        }
        if interval_ms > 0 {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => return Err(commit_failed(e)),
            }
        }
        self.metrics.set_running(false);
        Ok(())
    }

    /// Writes one batch; every record ends written, or handled by the error machinery.
    async fn write_batch(&self, batch: &[OwnedMessage]) -> Result<(), TaskFailed> {
        self.metrics.records_in(batch.len() as u64);
        let mut pending = Vec::with_capacity(batch.len());
        for msg in batch {
            match convert(&self.spec, msg) {
                Ok(Some(write)) => pending.push(Item {
                    record: record_context(msg),
                    write,
                    attempts: 0,
                    first_failed: None,
                }),
                Ok(None) => {}
                Err(failure) => {
                    self.metrics.record_failure();
                    self.handler
                        .record_failed(failure, record_context(msg))
                        .await?;
                }
            }
        }
        if self.cfg.discard_writes {
            self.metrics.records_out(pending.len() as u64);
            return self.handler.flush_dead_letters().await;
        }
        while !pending.is_empty() {
            pending = self.bulk(pending).await?;
        }
        self.handler.flush_dead_letters().await?;
        Ok(())
    }

    /// One bulk command for `items`; returns the items to try again (retriable per-index errors, and the
    /// unexecuted rest of an ordered bulk).
    async fn bulk(&self, items: Vec<Item>) -> Result<Vec<Item>, TaskFailed> {
        let ordered = self.spec.bulk_write_ordered;
        let command = match &items[0].write {
            Write::Insert(_) => {
                let docs: Vec<Document> = items
                    .iter()
                    .filter_map(|i| match &i.write {
                        Write::Insert(d) => Some(d.clone()),
                        _ => None,
                    })
                    .collect();
                doc! { "insert": &self.collection, "documents": docs, "ordered": ordered }
            }
            Write::Update(_) => {
                let stmts: Vec<Document> = items
                    .iter()
                    .filter_map(|i| match &i.write {
                        Write::Update(u) => Some(u.clone()),
                        _ => None,
                    })
                    .collect();
                doc! { "update": &self.collection, "updates": stmts, "ordered": ordered }
            }
        };
        let reply = self
            .handler
            .retry(|| async {
                self.db
                    .run_command(command.clone())
                    .await
                    .map_err(|e| classify_mongo_error(Stage::TaskPut, &e))
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(failure) => {
                // The whole bulk failed for good: each of its records is a failed record.
                for item in items {
                    self.handler
                        .record_failed(failure.clone(), item.record)
                        .await?;
                }
                return Ok(Vec::new());
            }
        };
        let (written, errors) = parse_write_reply(&reply);
        self.metrics.records_out(written);
        let mut again = Vec::new();
        let first_error = errors.iter().map(|e| e.index).min();
        let by_index: BTreeMap<usize, WriteError> =
            errors.into_iter().map(|e| (e.index, e)).collect();
        for (index, mut item) in items.into_iter().enumerate() {
            if let Some(err) = by_index.get(&index) {
                self.metrics.record_failure();
                let failure = Failure::new(
                    Stage::TaskPut,
                    "com.mongodb.MongoBulkWriteException",
                    err.message.clone(),
                    RETRYABLE_CODES.contains(&err.code),
                )
                .with_code(err.code);
                let first = *item.first_failed.get_or_insert_with(Instant::now);
                let retry =
                    super::errors::is_retriable(&failure, &self.cfg.errors.spec.not_retryable)
                        .then(|| {
                            next_retry(
                                &self.cfg.errors.spec,
                                item.attempts,
                                first.elapsed(),
                                rand::random(),
                            )
                        })
                        .flatten();
                match retry {
                    Some(wait) => {
                        self.metrics.record_retry();
                        tokio::time::sleep(wait).await;
                        item.attempts += 1;
                        again.push(item);
                    }
                    None => self.handler.record_failed(failure, item.record).await?,
                }
            } else if ordered && first_error.is_some_and(|f| index > f) {
                again.push(item); // never attempted: an ordered bulk stops at its first error
            }
        }
        Ok(again)
    }
}

fn commit_failed(e: KafkaError) -> TaskFailed {
    TaskFailed {
        reason: "CommitFailed",
        failure: classify_kafka_error(Stage::KafkaConsume, &e),
        record: None,
    }
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
fn store(
    consumer: &StreamConsumer<CommitReporter>,
    handled: &TopicPartitionList,
) -> KafkaResult<()> {
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

    #[test]
    fn write_replies_give_count_and_per_index_errors() {
        let reply = doc! { "ok": 1.0, "n": 2, "writeErrors": [
            { "index": 1, "code": 11000, "errmsg": "E11000 duplicate key" },
            { "index": 3_i64, "code": 91, "errmsg": "shutting down" },
        ]};
        let (n, errors) = parse_write_reply(&reply);
        assert_eq!(n, 2);
        assert_eq!(
            errors.iter().map(|e| (e.index, e.code)).collect::<Vec<_>>(),
            [(1, 11000), (3, 91)]
        );
        assert_eq!(
            parse_write_reply(&doc! { "ok": 1, "n": 5_i64 }),
            (5, vec![])
        );
    }
}
