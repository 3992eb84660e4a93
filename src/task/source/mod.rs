//! The MongoDB source: change streams → Kafka.
//!
//! - this module: the stream loop — events read in batches, produced, and once the broker acknowledged the
//!   batch, the resume token of its last event stored; heartbeats store the cursor's post-batch resume
//!   token while the collection is quiet. A resume point MongoDB no longer has ends the task with a
//!   `ResumeTokenLost` termination message (exit code 4) for the operator.
//! - [`events`]: change events as records, and the topic of each namespace.
//! - [`offsets`]: the resume token in the offsets topic, read at start and written after each batch.
//! - [`exactly_once`]: `exactlyOnce: required` — each batch, its dead letters and its token in one Kafka
//!   transaction; older instances of the task fenced.
//! - [`oplog`]: the token's cluster time and the oplog window, for the `ResumeTokenAtRisk` condition.

pub mod events;
mod exactly_once;
mod offsets;
pub mod oplog;

pub use exactly_once::transactional_config;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use rdkafka::message::ToBytes;
use rdkafka::producer::FutureRecord;
use tokio::sync::watch;

use super::errors::{ErrorHandler, Halt, OutageClock, RetryEnd, ShutdownWait, TaskFailed};
use super::failure::{Failure, RecordContext, Stage};
use super::metrics::TaskMetrics;
use crate::crd::connector::{FullDocument, StartupMode};
use crate::kafka::admin::{Admin, admin};
use crate::kafka::renewing::RenewingProducer;
use crate::kafka::topics::{self, WantedTopic};
use crate::kafka::transactional::Transactional;
use crate::kafka::{Credentials, client_config};
use crate::names;
use crate::wire::{TaskConfig, TaskSource, TerminationReason};
use events::{event_record, topic_for};
use offsets::{ResumePoint, token_json};
use oplog::{report_oplog_window, rfc3339};

/// Aborts a background task when the stream loop ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a MongoDB error means the stored resume point is gone (never retried with the same token).
pub fn resume_token_lost(code: i32, message: &str) -> bool {
    match code {
        286 | 136 | 260 | 40585 => true,
        280 => {
            message.contains("resume token was not found")
                || message.contains("resume point may no longer be in the oplog")
        }
        _ => false,
    }
}

/// What a source produces with: at least once, a producer that renews itself; exactly once, the task's
/// transactional producer (shared with its dead-letter queue, so dead letters are in the transaction).
pub enum SourceProducer {
    AtLeastOnce(RenewingProducer),
    ExactlyOnce(Transactional),
}

/// The most change events in one batch (one produce and token store; exactly once, one transaction).
const MAX_BATCH: usize = 500;
/// Exactly once, batches may be larger: a transaction's commit costs a round trip or two, which a larger
/// batch shares among more events (`make bench`: 24% slower than at least once with 500).
const MAX_TRANSACTION_BATCH: usize = 2_000;

/// How long a record may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The source task.
pub struct Source {
    cfg: TaskConfig,
    source: TaskSource,
    mongo: mongodb::Client,
    producer: SourceProducer,
    admin: Admin,
    handler: Arc<ErrorHandler>,
    metrics: Arc<TaskMetrics>,
    known_topics: std::sync::Mutex<HashSet<String>>,
}

impl Source {
    /// A source task; `transactional` is its producer when it runs exactly once
    /// ([`transactional_config`]).
    pub fn new(
        cfg: TaskConfig,
        mongo: mongodb::Client,
        handler: Arc<ErrorHandler>,
        metrics: Arc<TaskMetrics>,
        transactional: Option<Transactional>,
    ) -> Result<Self, Failure> {
        let source = cfg.source.clone().ok_or_else(|| {
            Failure::config(Stage::TaskPoll, "a source task needs source settings")
        })?;
        if source.startup_mode == StartupMode::Timestamp {
            let time = source.spec.startup.start_at_operation_time.as_deref();
            if time.and_then(parse_operation_time).is_none() {
                return Err(Failure::config(
                    Stage::TaskPoll,
                    format!(
                        "spec.source.startup.startAtOperationTime {time:?} is not an RFC 3339 time or \
                         seconds since the epoch (startup mode timestamp needs one)"
                    ),
                ));
            }
        }
        let base = client_config(&cfg.kafka, Credentials::Env);
        let client_id = names::task_client_id(&cfg.connector, cfg.task_id);
        let producer = match transactional {
            Some(t) => SourceProducer::ExactlyOnce(t),
            None => {
                let mut producer_config = base.clone();
                producer_config
                    .set("client.id", &client_id)
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5");
                SourceProducer::AtLeastOnce(
                    RenewingProducer::new(producer_config)
                        .map_err(|e| Failure::kafka(Stage::KafkaProduce, &e))?,
                )
            }
        };
        let admin =
            admin(&base, &client_id).map_err(|e| Failure::kafka(Stage::KafkaProduce, &e.source))?;
        Ok(Self {
            cfg,
            source,
            mongo,
            producer,
            admin,
            handler,
            metrics,
            known_topics: Default::default(),
        })
    }

    /// Sends one record and waits for the broker's acknowledgement.
    async fn send(
        &self,
        record: FutureRecord<'_, impl ToBytes + ?Sized, impl ToBytes + ?Sized>,
    ) -> Result<(), Failure> {
        let sent = match &self.producer {
            SourceProducer::AtLeastOnce(p) => p.send(record, QUEUE_TIMEOUT).await,
            SourceProducer::ExactlyOnce(t) => t
                .producer()
                .send(record, QUEUE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(e, _)| e),
        };
        sent.map_err(|e| self.kafka_failure(&e))
    }

    /// Creates a topic unless it exists (sluice never relies on auto-creation).
    async fn ensure_topic(&self, topic: &str, compacted: bool) -> Result<(), Failure> {
        if self
            .known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        let wanted = WantedTopic {
            name: topic.into(),
            partitions: 1,
            replication_factor: -1,
            configs: if compacted {
                [("cleanup.policy".to_string(), "compact".to_string())].into()
            } else {
                Default::default()
            },
        };
        let refused = topics::create(&self.admin, &wanted)
            .await
            .map_err(|e| Failure::kafka(Stage::KafkaProduce, &e.source))?;
        if let Some(code) = refused {
            return Err(Failure::new(
                Stage::KafkaProduce,
                "org.apache.kafka.common.errors.TopicException",
                format!("creating topic {topic}: {code}"),
                true,
            ));
        }
        self.known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.into());
        Ok(())
    }

    async fn open(
        &self,
        resume: Option<&ResumePoint>,
    ) -> Result<ChangeStream<Document>, mongodb::error::Error> {
        let mut pipeline: Vec<Document> = Vec::new();
        if let Some(p) = &self.source.spec.pipeline {
            let stages: Vec<serde_json::Value> = serde_json::from_str(p).unwrap_or_default();
            for s in stages {
                if let Ok(Bson::Document(d)) = Bson::try_from(s) {
                    pipeline.push(d);
                }
            }
        }
        let full = match self.source.spec.full_document {
            Some(FullDocument::UpdateLookup) => Some(FullDocumentType::UpdateLookup),
            Some(FullDocument::WhenAvailable) => Some(FullDocumentType::WhenAvailable),
            Some(FullDocument::Required) => Some(FullDocumentType::Required),
            Some(FullDocument::Default) | None => None,
        };
        let mut opts = mongodb::options::ChangeStreamOptions::default();
        opts.full_document = full;
        match resume {
            Some(ResumePoint::After(token)) => opts.resume_after = Some(token.clone()),
            Some(ResumePoint::At(t)) => opts.start_at_operation_time = Some(*t),
            None => {}
        }
        opts.max_await_time = Some(Duration::from_millis(500));
        let m = &self.cfg.mongodb;
        let stream = match (&m.database, &m.collection) {
            (Some(db), Some(coll)) => {
                let coll = self.mongo.database(db).collection::<Document>(coll);
                coll.watch()
                    .pipeline(pipeline)
                    .with_options(opts)
                    .await?
                    .with_type::<Document>()
            }
            (Some(db), None) => self
                .mongo
                .database(db)
                .watch()
                .pipeline(pipeline)
                .with_options(opts)
                .await?
                .with_type::<Document>(),
            _ => self
                .mongo
                .watch()
                .pipeline(pipeline)
                .with_options(opts)
                .await?
                .with_type::<Document>(),
        };
        Ok(stream)
    }

    fn lost(&self, err: &mongodb::error::Error) -> Option<TaskFailed> {
        let mongodb::error::ErrorKind::Command(c) = err.kind.as_ref() else {
            return None;
        };
        resume_token_lost(c.code, &c.message).then(|| TaskFailed {
            reason: TerminationReason::ResumeTokenLost,
            failure: Failure::new(
                Stage::TaskPoll,
                c.code_name.clone(),
                c.message.clone(),
                false,
            )
            .with_code(c.code),
            record: Some(Box::new(RecordContext {
                topic: self.source.offset_partition_name.clone(),
                ..Default::default()
            })),
        })
    }

    /// Streams until `shutdown` flips (the batch in flight is produced and its offset stored first).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<(), TaskFailed> {
        let result = self.stream(shutdown).await;
        self.metrics.set_running(false);
        match result {
            Ok(()) | Err(Halt::Shutdown) => Ok(()),
            Err(Halt::Failed(failed)) => Err(failed),
        }
    }

    async fn stream(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), Halt> {
        let waiter = ShutdownWait {
            shutdown: shutdown.clone(),
        };
        let partition = &self.source.offset_partition_name;
        self.metrics.ledger.work_on(partition);
        self.start_delivery(&waiter).await?;
        let stored = self
            .handler
            .retry(&waiter, || self.stored_token())
            .await
            .map_err(|end| end.halt_with(TerminationReason::TaskStartFailed, None))?;
        self.metrics
            .ledger
            .load(partition, stored.position, stored.ledger);
        let resumed = stored.point.is_some();
        if let Some(secs) = stored.point.as_ref().and_then(ResumePoint::time) {
            self.metrics
                .update_resume_token(|r| r.time = Some(rfc3339(secs.into())));
        }
        // Where a reopened stream resumes: the stored point, then each token stored since — never a later
        // "now" (the startup mode applies only when nothing was ever stored).
        let mut resume_from = match stored.point {
            Some(point) => Some(point),
            None => self.start_point().await,
        };
        let mut stream = self.open_waiting(resume_from.as_ref(), &waiter).await?;
        if !resumed {
            // A first start stores where its stream started before anything else, so that neither a reopen
            // nor a restart before the first event starts again at a later "now" and misses what happened
            // between: a replica set's post-batch resume token of the opened stream, else its start time.
            // copyExisting stores it once the copy is done (a restart copies again until then).
            if let Some(token) = stream.resume_token() {
                resume_from = Some(ResumePoint::After(token));
            }
            if self.source.startup_mode == StartupMode::CopyExisting {
                self.copy_existing(&waiter).await?;
            }
            if let Some(point) = &resume_from {
                self.store_start(point, &waiter).await?;
            }
        }
        self.metrics.set_running(true);
        let window = tokio::spawn(report_oplog_window(
            self.mongo.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let _stop_window = AbortOnDrop(window);
        let heartbeat = Duration::from_millis(self.source.spec.heartbeat.interval_ms.max(0) as u64);
        let mut last_store = Instant::now();
        let mut outage = OutageClock::default();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let mut batch: Vec<Document> = Vec::new();
            let max_batch = if self.exactly_once().is_some() {
                MAX_TRANSACTION_BATCH
            } else {
                MAX_BATCH
            };
            let mut broken = None;
            let deadline = Instant::now() + Duration::from_millis(200);
            while batch.len() < max_batch && Instant::now() < deadline {
                let next = tokio::select! {
                    n = stream.next_if_any() => n,
                    _ = shutdown.changed() => break,
                };
                match next {
                    Ok(Some(event)) => batch.push(event),
                    Ok(None) => {
                        // Nothing new. A real server already waited maxAwaitTimeMS in its getMore; a peer
                        // that answers at once must not be polled in a tight loop.
                        if batch.is_empty() {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                                _ = shutdown.changed() => {}
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                let started = Instant::now();
                let last = batch.last();
                let at = last
                    .and_then(|e| e.get_timestamp("clusterTime").ok())
                    .map(|t| t.time);
                let point = last
                    .and_then(|e| e.get("_id"))
                    .and_then(|id| mongodb::bson::from_bson::<ResumeToken>(id.clone()).ok())
                    .map(ResumePoint::After);
                if self.exactly_once().is_some() {
                    let offset = point.as_ref().map(|p| (p, at));
                    self.transact(&batch, offset, None, &waiter).await?;
                } else {
                    self.produce(&batch, &waiter).await?;
                    if let Some(point) = &point {
                        self.store(point, at, &waiter, TerminationReason::OffsetStoreFailed)
                            .await?;
                    }
                }
                if point.is_some() {
                    resume_from = point;
                    last_store = Instant::now();
                }
                self.metrics.batch(started.elapsed());
            } else if broken.is_none() && !heartbeat.is_zero() && last_store.elapsed() >= heartbeat
            {
                // A quiet stream: keep the stored token fresh with the cursor's post-batch resume token.
                last_store = Instant::now();
                match stream.resume_token() {
                    Some(token) => {
                        let json = token_json(&token);
                        let stored = match &resume_from {
                            Some(ResumePoint::After(t)) => Some(token_json(t)),
                            _ => None,
                        };
                        if stored.as_deref() != Some(json.as_str()) {
                            self.heartbeat(&token, &waiter).await?;
                            tracing::debug!(token = %json, "heartbeat stored");
                            resume_from = Some(ResumePoint::After(token));
                        }
                    }
                    None => {
                        tracing::debug!("heartbeat due, but the server gave no resume token yet")
                    }
                }
            }
            if let Some(e) = broken {
                // What was read before the error is produced and stored above; reopen after it.
                let failure = self.retriable_stream_error(&e)?;
                tracing::warn!(error = %e, "change stream failed; reopening from the last stored token");
                self.handler
                    .wait_out(&failure, &mut outage, &waiter)
                    .await?;
                stream = self.open_waiting(resume_from.as_ref(), &waiter).await?;
            } else {
                self.handler.outage_over(&mut outage);
            }
            if *shutdown.borrow() {
                break;
            }
        }
        Ok(())
    }

    /// A change-stream error that a reopen can clear, classified (a failed attempt); a lost resume point or
    /// another error fails the task.
    fn retriable_stream_error(&self, e: &mongodb::error::Error) -> Result<Failure, Halt> {
        if let Some(lost) = self.lost(e) {
            return Err(lost.into());
        }
        let failure = Failure::mongo(Stage::TaskPoll, e);
        self.metrics.record_failure(None);
        if failure.retriable {
            Ok(failure)
        } else {
            Err(TaskFailed::new(TerminationReason::ChangeStreamFailed, failure).into())
        }
    }

    /// Opens the change stream, waiting out MongoDB being unavailable; a lost resume point or another
    /// error fails the task.
    async fn open_waiting(
        &self,
        resume: Option<&ResumePoint>,
        waiter: &ShutdownWait,
    ) -> Result<ChangeStream<Document>, Halt> {
        let mut outage = OutageClock::default();
        loop {
            match self.open(resume).await {
                Ok(stream) => {
                    self.handler.outage_over(&mut outage);
                    // Where it opened, by kind and cluster time only: a token holds a document key.
                    let from = match resume {
                        Some(ResumePoint::After(_)) => "after a resume token",
                        Some(ResumePoint::At(_)) => "at an operation time",
                        None => "at the server's now",
                    };
                    let at = resume.and_then(ResumePoint::time);
                    tracing::info!(from, cluster_time = ?at, "change stream open");
                    return Ok(stream);
                }
                Err(e) => {
                    let failure = self.retriable_stream_error(&e)?;
                    self.handler.wait_out(&failure, &mut outage, waiter).await?;
                }
            }
        }
    }

    /// Stores `point` (retried, outages waited out); a failure that is not an outage fails the task with
    /// `reason`.
    async fn store(
        &self,
        point: &ResumePoint,
        at: Option<u32>,
        waiter: &ShutdownWait,
        reason: TerminationReason,
    ) -> Result<(), Halt> {
        self.handler
            .retry(waiter, || self.store_point(point, at))
            .await
            .map_err(|end| end.halt_with(reason, None))
    }

    /// Where a first start's stream starts: the startup mode's time (timestamp), else (latest,
    /// copyExisting) just after the newest oplog entry, so it can be stored before the first event; `None`
    /// (the server's "now") when the oplog can't be read.
    async fn start_point(&self) -> Option<ResumePoint> {
        let at = match self.source.startup_mode {
            StartupMode::Timestamp => self
                .source
                .spec
                .startup
                .start_at_operation_time
                .as_deref()
                .and_then(parse_operation_time),
            StartupMode::Latest | StartupMode::CopyExisting => {
                oplog::after_newest_entry(&self.mongo).await
            }
        };
        at.map(ResumePoint::At)
    }

    /// Stores a first start's `point` (in a transaction of its own when exactly once).
    async fn store_start(&self, point: &ResumePoint, waiter: &ShutdownWait) -> Result<(), Halt> {
        if self.exactly_once().is_some() {
            return self.transact(&[], Some((point, None)), None, waiter).await;
        }
        self.store(point, None, waiter, TerminationReason::OffsetStoreFailed)
            .await
    }

    /// The heartbeat record of `token`: its topic, key and value.
    fn heartbeat_record(&self, token: &ResumeToken) -> (String, String, String) {
        (
            self.source.spec.heartbeat.topic.clone(),
            serde_json::json!({ "partition": self.source.offset_partition_name }).to_string(),
            serde_json::json!({ "_id": token_json(token) }).to_string(),
        )
    }

    async fn heartbeat(&self, token: &ResumeToken, waiter: &ShutdownWait) -> Result<(), Halt> {
        let heartbeat = self.heartbeat_record(token);
        let point = ResumePoint::After(token.clone());
        if self.exactly_once().is_some() {
            return self
                .transact(&[], Some((&point, None)), Some(&heartbeat), waiter)
                .await;
        }
        let (topic, key, value) = &heartbeat;
        self.handler
            .retry(waiter, || async {
                self.ensure_topic(topic, false).await?;
                self.send(FutureRecord::to(topic).key(key).payload(value))
                    .await
            })
            .await
            .map_err(|end| end.halt_with(TerminationReason::HeartbeatFailed, None))?;
        self.store(&point, None, waiter, TerminationReason::HeartbeatFailed)
            .await
    }

    /// Produces a batch of events and waits for every acknowledgement; a record that can't be converted or
    /// produced goes through error handling (and to the dead-letter topic, unlike Kafka Connect).
    async fn produce(&self, batch: &[Document], waiter: &ShutdownWait) -> Result<(), Halt> {
        self.metrics.records_in(batch.len() as u64);
        // Convert every event first; conversion failures go to error handling right away.
        let mut records = Vec::with_capacity(batch.len());
        for event in batch {
            match self.convert(event) {
                Ok(record) => records.push(record),
                Err(failed) => {
                    let (f, record) = *failed;
                    self.metrics.record_failure(None);
                    self.handler.record_failed(f, record, waiter).await?;
                }
            }
        }
        // Then produce them all at once (enqueued in order, so per-partition order holds) and wait for every
        // acknowledgement; a record that still fails after its retries goes to error handling.
        let sends = records
            .iter()
            .map(|r| self.handler.retry(waiter, move || self.send_record(r)));
        let results = futures::future::join_all(sends).await;
        let mut sent = 0;
        for (record, result) in records.into_iter().zip(results) {
            match result {
                Ok(()) => sent += 1,
                Err(RetryEnd::Failed(f)) => self.handler.record_failed(f, record, waiter).await?,
                Err(RetryEnd::Halt(halt)) => return Err(halt),
            }
        }
        self.handler.flush_dead_letters(waiter).await?;
        self.metrics.records_out(sent);
        Ok(())
    }

    /// A change event as the record to produce, or the failure that keeps it from being one (with the
    /// record to dead-letter: the event as relaxed extended JSON).
    fn convert(&self, event: &Document) -> Result<RecordContext, Box<(Failure, RecordContext)>> {
        // Events name their namespace; where a peer leaves it out, a collection watch knows it.
        let ns = event.get_document("ns").ok();
        let m = &self.cfg.mongodb;
        let db = ns
            .and_then(|n| n.get_str("db").ok())
            .or(m.database.as_deref())
            .unwrap_or_default();
        let coll = ns
            .and_then(|n| n.get_str("coll").ok())
            .or(m.collection.as_deref())
            .unwrap_or_default();
        let context = RecordContext {
            topic: topic_for(&self.source.spec, db, coll),
            event_id: event
                .get("_id")
                .map(|id| id.clone().into_relaxed_extjson().to_string()),
            ..Default::default()
        };
        match event_record(event, self.source.spec.publish_full_document_only) {
            Ok((key, value)) => Ok(RecordContext {
                key: Some(key.into_bytes()),
                value: value.map(String::into_bytes),
                ..context
            }),
            Err(f) => {
                let raw = Bson::Document(event.clone())
                    .into_relaxed_extjson()
                    .to_string();
                Err(Box::new((
                    f,
                    RecordContext {
                        value: Some(raw.into_bytes()),
                        ..context
                    },
                )))
            }
        }
    }

    /// Produces one converted event (its topic created first) and waits for the broker (one attempt).
    async fn send_record(&self, r: &RecordContext) -> Result<(), Failure> {
        self.ensure_topic(&r.topic, false).await?;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        self.send(record).await
    }

    /// A batch of copied documents (no resume token: a copy interrupted starts again, at least once).
    async fn produce_copied(&self, batch: &[Document], waiter: &ShutdownWait) -> Result<(), Halt> {
        if self.exactly_once().is_some() {
            self.transact(batch, None, None, waiter).await
        } else {
            self.produce(batch, waiter).await
        }
    }

    /// `copyExisting`: every document of the watched collections as an insert event, before streaming.
    async fn copy_existing(&self, waiter: &ShutdownWait) -> Result<(), Halt> {
        let failed = |e: mongodb::error::Error| {
            TaskFailed::new(
                TerminationReason::CopyExistingFailed,
                Failure::mongo(Stage::TaskPoll, &e),
            )
        };
        let m = &self.cfg.mongodb;
        let dbs: Vec<String> = match &m.database {
            Some(db) => vec![db.clone()],
            None => self
                .mongo
                .list_database_names()
                .await
                .map_err(failed)?
                .into_iter()
                .filter(|d| !matches!(d.as_str(), "admin" | "local" | "config"))
                .collect(),
        };
        for db in dbs {
            let database = self.mongo.database(&db);
            let colls = match &m.collection {
                Some(c) => vec![c.clone()],
                None => database.list_collection_names().await.map_err(failed)?,
            };
            for coll in colls {
                let mut cursor = database
                    .collection::<Document>(&coll)
                    .find(doc! {})
                    .await
                    .map_err(failed)?;
                let mut batch = Vec::new();
                while let Some(d) = cursor.try_next().await.map_err(failed)? {
                    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                    batch.push(doc! {
                        "_id": { "_id": id.clone(), "copyingData": true },
                        "operationType": "insert",
                        "ns": { "db": &db, "coll": &coll },
                        "documentKey": { "_id": id },
                        "fullDocument": d,
                    });
                    if batch.len() == MAX_BATCH {
                        self.produce_copied(&std::mem::take(&mut batch), waiter)
                            .await?;
                    }
                }
                if !batch.is_empty() {
                    self.produce_copied(&batch, waiter).await?;
                }
            }
        }
        Ok(())
    }
}

/// `startAtOperationTime`: RFC 3339 or seconds since the epoch.
pub fn parse_operation_time(s: &str) -> Option<mongodb::bson::Timestamp> {
    let secs = s.parse::<u32>().ok().or_else(|| {
        s.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .and_then(|t| u32::try_from(t.as_second()).ok())
    })?;
    Some(mongodb::bson::Timestamp {
        time: secs,
        increment: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_resume_points_are_recognised() {
        assert!(resume_token_lost(
            286,
            "Resume of change stream was not possible"
        ));
        assert!(resume_token_lost(
            280,
            "cannot resume stream; the resume token was not found."
        ));
        assert!(!resume_token_lost(
            280,
            "some other fatal change stream error"
        ));
        assert!(
            resume_token_lost(136, "CappedPositionLost")
                && resume_token_lost(260, "")
                && resume_token_lost(40585, "")
        );
        assert!(!resume_token_lost(91, "ShutdownInProgress"));
    }

    #[test]
    fn operation_times_parse() {
        assert_eq!(
            parse_operation_time("1700000000").unwrap().time,
            1_700_000_000
        );
        assert_eq!(
            parse_operation_time("2023-11-14T22:13:20Z").unwrap().time,
            1_700_000_000
        );
        assert!(parse_operation_time("yesterday").is_none());
    }
}
