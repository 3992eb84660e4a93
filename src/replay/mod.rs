//! The replay pod: `sluice replay` sends dead-letter records back to their original topic (or a named one)
//! after the cause of their failure was fixed.
//!
//! It reads the dead-letter topic from the start (or from its committed progress) up to the end offsets the
//! operator captured when the replay began, so records that arrive later are not replayed. Each batch is
//! one Kafka transaction holding the replayed records and the replay's progress — the consumer group
//! offsets of the dead-letter topic, with the running counts in the offsets' metadata. A replay pod killed
//! at any point continues from the last committed batch: each record is replayed exactly once for
//! `read_committed` readers (librdkafka's default, and so every sluice sink's).
//!
//! Replayed records keep their key, value and headers, lose the `__connect.errors.*` headers, and get
//! `sluice.replay.id` and `sluice.replay.count` (one more than the record had). A record replayed
//! `maxReplayCount` times already is skipped, so a record that keeps failing can't loop.

pub mod decide;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::crd::dead_letter_queue::ReplayCounts;
use crate::kafka::{Credentials, client_config, consumer_config};
use crate::wire::replay_config::{decode_counts, encode_counts};
use crate::wire::{ReplayConfig, TerminationMessage, TerminationReason};
use decide::{DeadLetterRecord, Decision, batch_duration, count, decide};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The most records in one transaction.
const MAX_BATCH: usize = 500;

/// Why a replay ended early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Config(String),
    #[error("Kafka ({operation}): {source}")]
    Kafka {
        operation: &'static str,
        source: KafkaError,
    },
    #[error("stopped by SIGTERM; progress is committed and a new pod continues")]
    Interrupted,
}

impl ReplayError {
    pub fn termination_message(&self, counts: ReplayCounts) -> TerminationMessage {
        let reason = match self {
            ReplayError::Config(_) => TerminationReason::ConfigInvalid,
            ReplayError::Kafka { .. } => TerminationReason::ReplayKafkaError,
            ReplayError::Interrupted => TerminationReason::ReplayInterrupted,
        };
        let mut m = TerminationMessage::new(reason, self.to_string());
        m.replay = Some(counts);
        m
    }
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> ReplayError {
    move |source| ReplayError::Kafka { operation, source }
}

/// A partition still being read, with its counts so far.
struct PartitionProgress {
    end: i64,
    /// The next offset to read (what gets committed).
    next: i64,
    counts: ReplayCounts,
    done: bool,
}

/// Where each partition stands, and the partition counts of target topics (looked up once).
#[derive(Default)]
struct State {
    partitions: BTreeMap<i32, PartitionProgress>,
    topic_partitions: BTreeMap<String, Option<i32>>,
}

impl State {
    fn all_done(&self) -> bool {
        self.partitions.values().all(|p| p.done)
    }
}

type Writer = ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// The replay's clients and progress.
pub struct Replayer {
    cfg: ReplayConfig,
    consumer: BaseConsumer,
    /// `None` for a dry run: nothing is produced, progress is committed without a transaction.
    producer: Option<Writer>,
    state: State,
}

impl Replayer {
    /// Connects, fences any earlier pod of the same replay (its open transaction is aborted) and reads the
    /// committed progress.
    pub fn new(cfg: ReplayConfig) -> Result<Self, ReplayError> {
        let group = cfg.group();
        let consumer: BaseConsumer = consumer_config(&cfg.kafka, Credentials::Env)
            .set("group.id", &group)
            .set("client.id", format!("{group}-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(kafka("create consumer"))?;
        let producer = if cfg.replay.dry_run {
            None
        } else {
            let p: Writer = client_config(&cfg.kafka, Credentials::Env)
                .set("transactional.id", &group)
                .set("client.id", format!("{group}-writer"))
                .set("enable.idempotence", "true")
                .create()
                .map_err(kafka("create producer"))?;
            p.init_transactions(TIMEOUT)
                .map_err(kafka("init transactions"))?;
            Some(p)
        };
        let mut wanted = TopicPartitionList::new();
        for &p in cfg.end_offsets.keys() {
            wanted.add_partition(&cfg.topic, p);
        }
        let committed = consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(kafka("read committed progress"))?;
        let mut state = State::default();
        for (&p, &end) in &cfg.end_offsets {
            let (low, _) = consumer
                .fetch_watermarks(&cfg.topic, p, TIMEOUT)
                .map_err(kafka("read watermarks"))?;
            let elem = committed.find_partition(&cfg.topic, p);
            let committed_offset = elem.as_ref().and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let counts = elem
                .as_ref()
                .map(|e| decode_counts(e.metadata()))
                .unwrap_or_default();
            let next = committed_offset.unwrap_or(low).max(low);
            state.partitions.insert(
                p,
                PartitionProgress {
                    end,
                    next,
                    counts,
                    done: next >= end,
                },
            );
        }
        Ok(Self {
            cfg,
            consumer,
            producer,
            state,
        })
    }

    /// The counts over every partition.
    pub fn counts(&self) -> ReplayCounts {
        let mut total = ReplayCounts::default();
        for p in self.state.partitions.values() {
            total += p.counts;
        }
        total
    }

    /// Replays until every partition reached its end offset, or until `stop` is set (after committing the
    /// batch in flight).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<ReplayCounts, ReplayError> {
        let mut assignment = TopicPartitionList::new();
        for (p, progress) in &self.state.partitions {
            if !progress.done {
                assignment
                    .add_partition_offset(&self.cfg.topic, *p, Offset::Offset(progress.next))
                    .map_err(kafka("assign"))?;
            }
        }
        if assignment.count() > 0 {
            self.consumer.assign(&assignment).map_err(kafka("assign"))?;
        }
        while !self.state.all_done() {
            if stop.load(Ordering::Relaxed) {
                return Err(ReplayError::Interrupted);
            }
            self.batch()?;
        }
        Ok(self.counts())
    }

    /// Reads up to one batch and commits it (records and progress together), then waits as the rate limit
    /// asks.
    fn batch(&mut self) -> Result<(), ReplayError> {
        let started = Instant::now();
        let limit = self
            .cfg
            .replay
            .records_per_second
            .map_or(MAX_BATCH, |r| (r as usize).clamp(1, MAX_BATCH));
        if let Some(p) = &self.producer {
            p.begin_transaction().map_err(kafka("begin transaction"))?;
        }
        let mut touched = false;
        let mut replayed = 0usize;
        let deadline = Instant::now() + Duration::from_millis(500);
        while replayed < limit && Instant::now() < deadline && !self.state.all_done() {
            let Some(polled) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            match polled {
                Err(KafkaError::PartitionEOF(p)) => {
                    // At the high watermark, which is at or past the end captured at the start.
                    if let Some(progress) = self.state.partitions.get_mut(&p) {
                        progress.done = true;
                    }
                }
                Err(e) => return Err(kafka("consume")(e)),
                Ok(m) => {
                    touched = true;
                    let producer = self.producer.as_ref();
                    if handle(&self.cfg, &mut self.state, &self.consumer, producer, &m)? {
                        replayed += 1;
                    }
                }
            }
        }
        self.commit(touched)?;
        let pace = batch_duration(replayed, self.cfg.replay.records_per_second);
        if let Some(rest) = pace.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(())
    }

    /// Commits the progress (with the counts as offset metadata): in the transaction with the replayed
    /// records, or on its own for a dry run.
    fn commit(&mut self, touched: bool) -> Result<(), ReplayError> {
        let mut offsets = TopicPartitionList::new();
        if touched {
            for (p, progress) in &self.state.partitions {
                offsets
                    .add_partition_offset(&self.cfg.topic, *p, Offset::Offset(progress.next))
                    .map_err(kafka("commit"))?;
                if let Some(mut e) = offsets.find_partition(&self.cfg.topic, *p) {
                    e.set_metadata(encode_counts(&progress.counts));
                }
            }
        }
        match &self.producer {
            Some(producer) => {
                if offsets.count() > 0 {
                    let group = self
                        .consumer
                        .group_metadata()
                        .ok_or_else(|| ReplayError::Config("consumer has no group".into()))?;
                    producer
                        .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
                        .map_err(kafka("send offsets to transaction"))?;
                }
                producer
                    .commit_transaction(TIMEOUT)
                    .map_err(kafka("commit transaction"))
            }
            None if offsets.count() > 0 => self
                .consumer
                .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                .map_err(kafka("commit progress")),
            None => Ok(()),
        }
    }
}

/// The partition count of `topic`, looked up once (`None` when it does not exist).
fn partitions_of(
    consumer: &BaseConsumer,
    cache: &mut BTreeMap<String, Option<i32>>,
    topic: &str,
) -> Option<i32> {
    *cache.entry(topic.to_string()).or_insert_with(|| {
        consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
            })
            .filter(|n| *n > 0)
    })
}

/// Decides on one dead-letter record and produces it if it goes back; true if it was produced.
fn handle(
    cfg: &ReplayConfig,
    state: &mut State,
    consumer: &BaseConsumer,
    producer: Option<&Writer>,
    m: &BorrowedMessage<'_>,
) -> Result<bool, ReplayError> {
    let Some(progress) = state.partitions.get_mut(&m.partition()) else {
        return Ok(false);
    };
    if progress.done || m.offset() >= progress.end {
        progress.done = true;
        return Ok(false);
    }
    let record = DeadLetterRecord {
        timestamp_ms: crate::kafka::read::dead_lettered_at(m),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let cache = &mut state.topic_partitions;
    let decision = decide(&cfg.replay, &record, &mut |t| {
        partitions_of(consumer, cache, t)
    });
    let mut produced = false;
    if let (
        Decision::Replay {
            topic,
            partition,
            headers,
        },
        Some(producer),
    ) = (&decision, producer)
    {
        let mut out = OwnedHeaders::new();
        for (k, v) in headers {
            out = out.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(out);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(v) = m.payload() {
            rec = rec.payload(v);
        }
        if let Some(part) = partition {
            rec = rec.partition(*part);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(kafka("produce")(e)),
            }
        }
        produced = true;
    }
    let progress = state.partitions.get_mut(&m.partition()).expect("present");
    count(&mut progress.counts, &decision, cfg.replay.dry_run);
    progress.next = m.offset() + 1;
    progress.done = progress.next >= progress.end;
    Ok(produced)
}

/// Runs a replay to its end; the termination message carries the final counts either way.
pub fn run(
    cfg: ReplayConfig,
    stop: Arc<AtomicBool>,
) -> (Result<ReplayCounts, ReplayError>, ReplayCounts) {
    let mut replayer = match Replayer::new(cfg) {
        Ok(r) => r,
        Err(e) => return (Err(e), ReplayCounts::default()),
    };
    tracing::info!(counts = ?replayer.counts(), "replay starting");
    let result = replayer.run(&stop);
    let counts = replayer.counts();
    (result, counts)
}
