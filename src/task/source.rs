//! The MongoDB source: change streams → Kafka.
//!
//! Events are read in batches, turned into records (key `{"_id": <resume token>}`, value the change event or
//! only its full document, relaxed extended JSON) and produced; once the broker acknowledged the batch, the
//! resume token of its last event is stored in the offsets topic under the offset partition name (Kafka
//! Connect's offset key `["<namespace>/<connector>", {"ns": "<partition name>"}]`). Heartbeats store the cursor's
//! post-batch resume token while the collection is quiet. A resume point MongoDB no longer has ends the task
//! with [`RESUME_TOKEN_LOST_EXIT`] and a `ResumeTokenLost` termination message for the operator.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::config::{TaskConfig, TaskSource};
use super::dlq::RecordContext;
use super::errors::{ErrorHandler, Failure, Stage, TaskFailed};
use super::kafka::{classify_kafka_error, client_config};
use super::metrics::TaskMetrics;
use super::sink::classify_mongo_error;
use crate::crd::connector::{FullDocument, StartupMode};

/// Aborts a background task when the stream loop ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The exit code of a task whose resume point is gone.
pub const RESUME_TOKEN_LOST_EXIT: u8 = 4;

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

/// The topic for a namespace: the namespace map (`db.coll`, then `db`, then `*`), else
/// `<prefix>.<db>.<coll>.<suffix>` without empty parts (MongoDB connector naming).
pub fn topic_for(source: &crate::crd::connector::SourceSpec, db: &str, coll: &str) -> String {
    if let Some(map) = &source.topic_namespace_map {
        for key in [format!("{db}.{coll}"), db.to_string(), "*".to_string()] {
            if let Some(t) = map.get(&key) {
                return t.clone();
            }
        }
    }
    [
        source.topic_prefix.as_deref().unwrap_or(""),
        db,
        coll,
        source.topic_suffix.as_deref().unwrap_or(""),
    ]
    .iter()
    .filter(|p| !p.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(".")
}

/// Kafka Connect's offset key for a connector and partition name. The connector is named
/// `<namespace>/<name>`: one Kafka cluster (and offsets topic) serves Connectors of many namespaces.
pub fn offset_key(namespace: &str, connector: &str, partition_name: &str) -> String {
    serde_json::json!([format!("{namespace}/{connector}"), { "ns": partition_name }]).to_string()
}

fn token_json(token: &ResumeToken) -> String {
    serde_json::to_string(token).unwrap_or_default()
}

/// The cluster time (seconds) a replica set's resume token points at: its `_data` is a KeyString whose
/// first value is the event's cluster time (type byte `0x82`, then 4 bytes of seconds, 4 of increment).
pub fn token_cluster_time(token_json: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(token_json).ok()?;
    let data = v["_data"].as_str()?;
    if data.len() < 18 || !data[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    u32::from_str_radix(data.get(2..10)?, 16).ok()
}

fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Reads the oplog window (first and last entry times of `local.oplog.rs`), or why it can't be read.
async fn oplog_window(mongo: &mongodb::Client) -> Result<(u32, u32), String> {
    let oplog = mongo.database("local").collection::<Document>("oplog.rs");
    let mut ends = Vec::new();
    for order in [1, -1] {
        let entry = oplog
            .find_one(doc! {})
            .sort(doc! { "$natural": order })
            .projection(doc! { "ts": 1 })
            .await
            .map_err(|e| match e.kind.as_ref() {
                mongodb::error::ErrorKind::Command(c) if c.code == 13 => {
                    "not authorized to read local.oplog.rs (grant read on the local database to see the oplog window)".to_string()
                }
                _ => format!("reading local.oplog.rs failed: {e}"),
            })?;
        match entry.as_ref().and_then(|d| d.get_timestamp("ts").ok()) {
            Some(ts) => ends.push(ts.time),
            None => {
                return Err(
                    "local.oplog.rs is missing or empty (not a replica set member?)".to_string(),
                );
            }
        }
    }
    Ok((ends[0], ends[1]))
}

/// Keeps the oplog window in the task's status fresh (it only moves slowly: once a minute).
async fn report_oplog_window(
    mongo: mongodb::Client,
    metrics: Arc<TaskMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let window = oplog_window(&mongo).await;
        metrics.update_resume_token(|r| match window {
            Ok((first, last)) => {
                r.oplog_first_time = Some(rfc3339(first.into()));
                r.oplog_last_time = Some(rfc3339(last.into()));
                r.oplog_window_unknown = None;
            }
            Err(why) => {
                r.oplog_first_time = None;
                r.oplog_last_time = None;
                r.oplog_window_unknown = Some(why);
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(OPLOG_WINDOW_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How often a source reads the oplog window.
const OPLOG_WINDOW_EVERY: Duration = Duration::from_secs(60);

/// A change event as a Kafka record: key and value JSON, or the conversion failure.
pub fn event_record(
    event: &Document,
    publish_full_document_only: bool,
) -> Result<(String, Option<String>), Failure> {
    let id = event
        .get("_id")
        .cloned()
        .ok_or_else(|| Failure::conversion(Stage::ValueConverter, "change event without _id"))?;
    let key = Bson::Document(doc! { "_id": id })
        .into_relaxed_extjson()
        .to_string();
    let value = if publish_full_document_only {
        match event.get("fullDocument") {
            Some(Bson::Document(d)) => {
                Some(Bson::Document(d.clone()).into_relaxed_extjson().to_string())
            }
            _ => None, // deletes have no full document: a tombstone
        }
    } else {
        Some(
            Bson::Document(event.clone())
                .into_relaxed_extjson()
                .to_string(),
        )
    };
    Ok((key, value))
}

/// The source task.
pub struct Source {
    cfg: TaskConfig,
    source: TaskSource,
    mongo: mongodb::Client,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    handler: Arc<ErrorHandler>,
    metrics: Arc<TaskMetrics>,
    known_topics: std::sync::Mutex<HashSet<String>>,
}

fn start_failed(failure: Failure) -> TaskFailed {
    TaskFailed {
        reason: "TaskStartFailed",
        failure,
        record: None,
    }
}

impl Source {
    pub fn new(
        cfg: TaskConfig,
        mongo: mongodb::Client,
        handler: Arc<ErrorHandler>,
        metrics: Arc<TaskMetrics>,
    ) -> Result<Self, Failure> {
        let source = cfg.source.clone().ok_or_else(|| {
            Failure::new(
                Stage::TaskPoll,
                "ConfigException",
                "a source task needs source settings",
                false,
            )
        })?;
        let base = client_config(&cfg.kafka);
        let producer: FutureProducer = with(&base)
            .set(
                "client.id",
                format!("sluice-{}-{}", cfg.connector, cfg.task_id),
            )
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .map_err(|e| classify_kafka_error(Stage::KafkaProduce, &e))?;
        let admin = with(&base)
            .create()
            .map_err(|e| classify_kafka_error(Stage::KafkaProduce, &e))?;
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
        let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1));
        if compacted {
            new = new.set("cleanup.policy", "compact");
        }
        let result = self
            .admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| classify_kafka_error(Stage::KafkaProduce, &e))?;
        match result.into_iter().next() {
            Some(Err((_, code)))
                if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists =>
            {
                return Err(Failure::new(
                    Stage::KafkaProduce,
                    "org.apache.kafka.common.errors.TopicException",
                    format!("creating topic {topic}: {code}"),
                    true,
                ));
            }
            _ => {}
        }
        self.known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.into());
        Ok(())
    }

    /// The stored resume token of this partition name, read from the offsets topic.
    async fn stored_token(&self) -> Result<Option<ResumeToken>, Failure> {
        let topic = self.source.offset_storage_topic.clone();
        self.ensure_topic(&topic, true).await?;
        let key = offset_key(
            &self.cfg.namespace,
            &self.cfg.connector,
            &self.source.offset_partition_name,
        );
        let config = with(&client_config(&self.cfg.kafka))
            .set("group.id", "sluice-offset-reader")
            .set("enable.auto.commit", "false")
            .clone();
        tokio::task::spawn_blocking(move || read_latest(&config, &topic, &key))
            .await
            .map_err(|e| Failure::new(Stage::KafkaConsume, "JoinError", e.to_string(), false))?
    }

    /// Stores `token`, which points at cluster time `at` (seconds), in the offsets topic.
    async fn store_token(&self, token: &ResumeToken, at: Option<u32>) -> Result<(), Failure> {
        let key = offset_key(
            &self.cfg.namespace,
            &self.cfg.connector,
            &self.source.offset_partition_name,
        );
        let json = token_json(token);
        let value = serde_json::json!({ "_id": json }).to_string();
        let time = token_cluster_time(&json)
            .or(at)
            .map(i64::from)
            .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().as_second());
        self.metrics
            .update_resume_token(|r| r.time = Some(rfc3339(time)));
        self.handler
            .retry(|| async {
                self.producer
                    .send(
                        FutureRecord::to(&self.source.offset_storage_topic)
                            .key(&key)
                            .payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| classify_kafka_error(Stage::KafkaProduce, &e))
            })
            .await
    }

    async fn open(
        &self,
        resume: Option<ResumeToken>,
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
        let start_at = match (
            &resume,
            self.source.startup_mode,
            &self.source.spec.startup.start_at_operation_time,
        ) {
            (None, StartupMode::Timestamp, Some(t)) => parse_operation_time(t),
            _ => None,
        };
        let mut opts = mongodb::options::ChangeStreamOptions::default();
        opts.full_document = full;
        opts.start_at_operation_time = start_at;
        opts.resume_after = resume;
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
            reason: "ResumeTokenLost",
            failure: Failure::new(
                Stage::TaskPoll,
                c.code_name.clone(),
                c.message.clone(),
                false,
            )
            .with_code(c.code),
            record: Some(RecordContext {
                topic: self.source.offset_partition_name.clone(),
                ..Default::default()
            }),
        })
    }

    /// Streams until `shutdown` flips (the batch in flight is produced and its offset stored first).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), TaskFailed> {
        let stored = self.stored_token().await.map_err(start_failed)?;
        let resumed = stored.is_some();
        if let Some(secs) = stored
            .as_ref()
            .and_then(|t| token_cluster_time(&token_json(t)))
        {
            self.metrics
                .update_resume_token(|r| r.time = Some(rfc3339(secs.into())));
        }
        let mut stream = match self.open(stored).await {
            Ok(s) => s,
            Err(e) => {
                return Err(self
                    .lost(&e)
                    .unwrap_or_else(|| start_failed(classify_mongo_error(Stage::TaskPoll, &e))));
            }
        };
        if !resumed && self.source.startup_mode == StartupMode::CopyExisting {
            self.copy_existing().await?;
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
        let mut stored_token: Option<String> = None;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let mut batch: Vec<Document> = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(200);
            while batch.len() < 500 && Instant::now() < deadline {
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
                        if let Some(lost) = self.lost(&e) {
                            return Err(lost);
                        }
                        let failure = classify_mongo_error(Stage::TaskPoll, &e);
                        self.metrics.record_failure();
                        if !failure.retriable {
                            return Err(TaskFailed {
                                reason: "ChangeStreamFailed",
                                failure,
                                record: None,
                            });
                        }
                        // Reopen from the last token we stored (the driver already resumed what it could).
                        tracing::warn!(error = %e, "change stream failed; reopening");
                        let token = stored_token
                            .as_deref()
                            .and_then(|t| serde_json::from_str(t).ok());
                        self.metrics.record_retry();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        stream = match self.open(token).await {
                            Ok(s) => s,
                            Err(e) => {
                                return Err(self.lost(&e).unwrap_or_else(|| TaskFailed {
                                    reason: "ChangeStreamFailed",
                                    failure: classify_mongo_error(Stage::TaskPoll, &e),
                                    record: None,
                                }));
                            }
                        };
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                let started = Instant::now();
                self.produce(&batch).await?;
                let last = batch.last();
                let at = last
                    .and_then(|e| e.get_timestamp("clusterTime").ok())
                    .map(|t| t.time);
                if let Some(token) = last
                    .and_then(|e| e.get("_id"))
                    .and_then(|id| mongodb::bson::from_bson::<ResumeToken>(id.clone()).ok())
                {
                    self.store_token(&token, at).await.map_err(|f| TaskFailed {
                        reason: "OffsetStoreFailed",
                        failure: f,
                        record: None,
                    })?;
                    stored_token = Some(token_json(&token));
                    last_store = Instant::now();
                }
                self.metrics.batch(started.elapsed());
            } else if !heartbeat.is_zero() && last_store.elapsed() >= heartbeat {
                // A quiet stream: keep the stored token fresh with the cursor's post-batch resume token.
                last_store = Instant::now();
                match stream.resume_token() {
                    Some(token) => {
                        let json = token_json(&token);
                        if stored_token.as_deref() != Some(json.as_str()) {
                            self.heartbeat(&token).await?;
                            tracing::debug!(token = %json, "heartbeat stored");
                            stored_token = Some(json);
                        }
                    }
                    None => {
                        tracing::debug!("heartbeat due, but the server gave no resume token yet")
                    }
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.metrics.set_running(false);
        Ok(())
    }

    async fn heartbeat(&self, token: &ResumeToken) -> Result<(), TaskFailed> {
        let topic = self.source.spec.heartbeat.topic.clone();
        let failed = |f| TaskFailed {
            reason: "HeartbeatFailed",
            failure: f,
            record: None,
        };
        self.ensure_topic(&topic, false).await.map_err(failed)?;
        let key = serde_json::json!({ "partition": self.source.offset_partition_name }).to_string();
        let value = serde_json::json!({ "_id": token_json(token) }).to_string();
        self.producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| failed(classify_kafka_error(Stage::KafkaProduce, &e)))?;
        self.store_token(token, None).await.map_err(failed)
    }

    /// Produces a batch of events and waits for every acknowledgement; a record that can't be converted or
    /// produced goes through error handling (and to the dead-letter topic, unlike Kafka Connect).
    async fn produce(&self, batch: &[Document]) -> Result<(), TaskFailed> {
        self.metrics.records_in(batch.len() as u64);
        // Convert every event first; conversion failures go to error handling right away.
        let mut records = Vec::with_capacity(batch.len());
        for event in batch {
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
                Ok((key, value)) => records.push(RecordContext {
                    key: Some(key.into_bytes()),
                    value: value.map(String::into_bytes),
                    ..context
                }),
                Err(f) => {
                    self.metrics.record_failure();
                    let raw = Bson::Document(event.clone())
                        .into_relaxed_extjson()
                        .to_string();
                    let record = RecordContext {
                        value: Some(raw.into_bytes()),
                        ..context
                    };
                    self.handler.record_failed(f, record).await?;
                }
            }
        }
        // Then produce them all at once (enqueued in order, so per-partition order holds) and wait for every
        // acknowledgement; a record that still fails after its retries goes to error handling.
        let sends = records.iter().map(|r| {
            self.handler.retry(move || async move {
                self.ensure_topic(&r.topic, false).await?;
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic);
                if let Some(k) = &r.key {
                    record = record.key(k.as_slice());
                }
                if let Some(v) = &r.value {
                    record = record.payload(v.as_slice());
                }
                self.producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| classify_kafka_error(Stage::KafkaProduce, &e))
            })
        });
        let results = futures::future::join_all(sends).await;
        let mut sent = 0;
        for (record, result) in records.into_iter().zip(results) {
            match result {
                Ok(()) => sent += 1,
                Err(f) => self.handler.record_failed(f, record).await?,
            }
        }
        self.handler.flush_dead_letters().await?;
        self.metrics.records_out(sent);
        Ok(())
    }

    /// `copyExisting`: every document of the watched collections as an insert event, before streaming.
    async fn copy_existing(&self) -> Result<(), TaskFailed> {
        let failed = |e: mongodb::error::Error| TaskFailed {
            reason: "CopyExistingFailed",
            failure: classify_mongo_error(Stage::TaskPoll, &e),
            record: None,
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
                    if batch.len() == 500 {
                        self.produce(&std::mem::take(&mut batch)).await?;
                    }
                }
                if !batch.is_empty() {
                    self.produce(&batch).await?;
                }
            }
        }
        Ok(())
    }
}

fn with(base: &ClientConfig) -> ClientConfig {
    base.clone()
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

/// The last value stored under `key` in the offsets topic (read from its start to its end).
fn read_latest(
    config: &ClientConfig,
    topic: &str,
    key: &str,
) -> Result<Option<ResumeToken>, Failure> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| classify_kafka_error(Stage::KafkaConsume, &e))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| classify_kafka_error(Stage::KafkaConsume, &e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| classify_kafka_error(Stage::KafkaConsume, &e))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|e| classify_kafka_error(Stage::KafkaConsume, &e))?;
        }
    }
    if ends.is_empty() {
        return Ok(None);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| classify_kafka_error(Stage::KafkaConsume, &e))?;
    let mut latest = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.map_err(|e| classify_kafka_error(Stage::KafkaConsume, &e))?;
        if msg.key() == Some(key.as_bytes()) {
            latest = msg.payload().map(<[u8]>::to_vec);
        }
        if ends
            .get(&msg.partition())
            .is_some_and(|end| msg.offset() + 1 >= *end)
        {
            ends.remove(&msg.partition());
        }
    }
    let Some(value) = latest else { return Ok(None) };
    let parsed: serde_json::Value = serde_json::from_slice(&value).map_err(|e| {
        Failure::conversion(
            Stage::KafkaConsume,
            format!("stored offset is not JSON: {e}"),
        )
    })?;
    let token = parsed["_id"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok());
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::connector::SourceSpec;

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
    fn a_replica_set_token_tells_its_cluster_time() {
        // A real token: KeyString 0x82, seconds 0x6553F100, increment 1, then the event's identity.
        let token = r#"{"_data":"826553F100000000012B022C0100296E5A1004"}"#;
        assert_eq!(token_cluster_time(token), Some(0x6553_F100));
        assert_eq!(token_cluster_time(r#"{"_data":"0000000a00000001"}"#), None);
        assert_eq!(token_cluster_time("not json"), None);
    }

    #[test]
    fn topics_follow_the_mongodb_connector_naming() {
        let mut s = SourceSpec {
            topic_prefix: Some("cdc".into()),
            ..Default::default()
        };
        assert_eq!(topic_for(&s, "shop", "orders"), "cdc.shop.orders");
        s.topic_suffix = Some("v1".into());
        assert_eq!(topic_for(&s, "shop", "orders"), "cdc.shop.orders.v1");
        s.topic_namespace_map = Some(BTreeMap::from([
            ("shop.orders".into(), "orders".into()),
            ("shop".into(), "shop-all".into()),
        ]));
        assert_eq!(topic_for(&s, "shop", "orders"), "orders");
        assert_eq!(topic_for(&s, "shop", "users"), "shop-all");
    }

    #[test]
    fn events_become_records_keyed_by_their_id() {
        let event = doc! { "_id": { "_data": "8263" }, "operationType": "insert", "fullDocument": { "_id": 1, "item": "apple" } };
        let (key, value) = event_record(&event, false).unwrap();
        assert_eq!(key, r#"{"_id":{"_data":"8263"}}"#);
        assert!(value.unwrap().contains(r#""operationType":"insert""#));
        let (_, only) = event_record(&event, true).unwrap();
        assert_eq!(only.unwrap(), r#"{"_id":1,"item":"apple"}"#);
        let delete = doc! { "_id": { "_data": "8264" }, "operationType": "delete" };
        assert_eq!(
            event_record(&delete, true).unwrap().1,
            None,
            "a delete is a tombstone"
        );
        assert_eq!(
            offset_key("shop", "orders", "orders.2"),
            r#"["shop/orders",{"ns":"orders.2"}]"#
        );
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
