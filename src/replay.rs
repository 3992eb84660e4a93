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
use serde::{Deserialize, Serialize};

use crate::crd::dead_letter_queue::{Replay, ReplayCounts};
use crate::task::config::TaskKafka;
use crate::task::dlq::HEADER_PREFIX;
use crate::termination::TerminationMessage;

/// Header naming the replay that sent a record back.
pub const HEADER_REPLAY_ID: &str = "sluice.replay.id";
/// Header counting how often a record was replayed.
pub const HEADER_REPLAY_COUNT: &str = "sluice.replay.count";
/// Exit code of a replay stopped by SIGTERM before it finished (its progress is committed).
pub const INTERRUPTED_EXIT: u8 = 5;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The most records in one transaction.
const MAX_BATCH: usize = 500;

/// What the operator hands a replay pod (env `SLUICE_REPLAY_CONFIG`, JSON). No secrets: Kafka credentials
/// come from env and files, as for connector tasks.
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
        replay_group(&self.namespace, &self.dead_letter_queue, &self.replay.id)
    }
}

/// The consumer group (and `transactional.id`) of replay `id` of a DeadLetterQueue.
pub fn replay_group(namespace: &str, dead_letter_queue: &str, id: &str) -> String {
    format!("sluice-replay.{namespace}.{dead_letter_queue}.{id}")
}

/// Running counts of one partition, kept in its committed offset's metadata.
pub fn encode_counts(c: &ReplayCounts) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// The counts from a committed offset's metadata; empty or foreign metadata counts as zero.
pub fn decode_counts(metadata: &str) -> ReplayCounts {
    serde_json::from_str(metadata).unwrap_or_default()
}

/// A dead-letter record as replay decides on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetterRecord {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn context(&self, name: &str) -> Option<String> {
        self.header(&format!("{HEADER_PREFIX}{name}"))
    }

    /// How often the record was replayed before.
    pub fn replay_count(&self) -> i64 {
        self.header(HEADER_REPLAY_COUNT)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// What happens to one dead-letter record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    NotMatched,
    SkipMaxReplayCount,
    SkipNoTarget,
    Replay {
        topic: String,
        /// The original partition, when the target is the original topic and it has that partition.
        partition: Option<i32>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    },
}

fn parse_ms(time: &Option<String>) -> Option<i64> {
    time.as_deref()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
}

/// Whether the replay's filter takes the record.
pub fn matches(replay: &Replay, record: &DeadLetterRecord) -> bool {
    let f = &replay.filter;
    let within = |list: &[String], header: &str| {
        list.is_empty() || record.context(header).is_some_and(|v| list.contains(&v))
    };
    let ts = record.timestamp_ms;
    within(&f.error_classes, "exception.class.name")
        && within(&f.original_topics, "topic")
        && within(&f.connectors, "connector.name")
        && parse_ms(&f.from).is_none_or(|from| ts.is_some_and(|t| t >= from))
        && parse_ms(&f.to).is_none_or(|to| ts.is_some_and(|t| t < to))
}

/// The decision for one record. `partitions_of` tells how many partitions a topic has (`None`: unknown).
pub fn decide(
    replay: &Replay,
    record: &DeadLetterRecord,
    partitions_of: &mut dyn FnMut(&str) -> Option<i32>,
) -> Decision {
    if !matches(replay, record) {
        return Decision::NotMatched;
    }
    let count = record.replay_count();
    if count >= i64::from(replay.max_replay_count) {
        return Decision::SkipMaxReplayCount;
    }
    let (topic, partition) = match &replay.target_topic {
        Some(t) => (t.clone(), None),
        None => {
            let Some(topic) = record.context("topic") else {
                return Decision::SkipNoTarget;
            };
            let partition = record
                .context("partition")
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|p| partitions_of(&topic).is_some_and(|n| *p >= 0 && *p < n));
            (topic, partition)
        }
    };
    Decision::Replay {
        topic,
        partition,
        headers: replay_headers(&record.headers, &replay.id, count + 1),
    }
}

/// The headers of a replayed record: the original ones without the error context and earlier replay
/// marks, then this replay's id and count.
pub fn replay_headers(
    original: &[(String, Option<Vec<u8>>)],
    id: &str,
    count: i64,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out: Vec<(String, Option<Vec<u8>>)> = original
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(HEADER_PREFIX) && k != HEADER_REPLAY_ID && k != HEADER_REPLAY_COUNT
        })
        .cloned()
        .collect();
    out.push((HEADER_REPLAY_ID.into(), Some(id.as_bytes().to_vec())));
    out.push((
        HEADER_REPLAY_COUNT.into(),
        Some(count.to_string().into_bytes()),
    ));
    out
}

/// Adds the decision to the counts.
pub fn count(counts: &mut ReplayCounts, decision: &Decision, dry_run: bool) {
    match decision {
        Decision::NotMatched => return,
        Decision::SkipMaxReplayCount => counts.skipped_max_replay_count += 1,
        Decision::SkipNoTarget => counts.skipped_no_target += 1,
        Decision::Replay { .. } if !dry_run => counts.replayed += 1,
        Decision::Replay { .. } => {}
    }
    counts.matched += 1;
}

/// How long a batch of `records` must take at `per_second` (rate limit).
pub fn batch_duration(records: usize, per_second: Option<i32>) -> Duration {
    match per_second {
        Some(r) if r > 0 => Duration::from_secs_f64(records as f64 / f64::from(r)),
        _ => Duration::ZERO,
    }
}

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
            ReplayError::Config(_) => "ConfigInvalid",
            ReplayError::Kafka { .. } => "ReplayKafkaError",
            ReplayError::Interrupted => "ReplayInterrupted",
        };
        let mut m = TerminationMessage::new(reason, self.to_string());
        m.replay = Some(counts);
        m
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            ReplayError::Config(_) => 2,
            ReplayError::Kafka { .. } => 1,
            ReplayError::Interrupted => INTERRUPTED_EXIT,
        }
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
        let consumer: BaseConsumer = crate::task::kafka::consumer_config(&cfg.kafka)
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
            let p: Writer = crate::task::kafka::client_config(&cfg.kafka)
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
        timestamp_ms: m.timestamp().to_millis(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::dead_letter_queue::ReplayFilter;

    fn record(headers: &[(&str, &str)], ts: i64) -> DeadLetterRecord {
        DeadLetterRecord {
            timestamp_ms: Some(ts),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn poison(topic: &str, partition: &str) -> DeadLetterRecord {
        record(
            &[
                ("trace", "abc"),
                ("__connect.errors.topic", topic),
                ("__connect.errors.partition", partition),
                ("__connect.errors.offset", "7"),
                ("__connect.errors.connector.name", "orders-sink"),
                (
                    "__connect.errors.exception.class.name",
                    "org.apache.kafka.connect.errors.DataException",
                ),
            ],
            1_700_000_000_000,
        )
    }

    fn replay(id: &str) -> Replay {
        Replay {
            id: id.into(),
            max_replay_count: 3,
            ..Default::default()
        }
    }

    fn two_partitions(_: &str) -> Option<i32> {
        Some(2)
    }

    #[test]
    fn a_record_goes_back_to_its_original_topic_and_partition_without_error_headers() {
        let d = decide(
            &replay("fix-1"),
            &poison("orders", "1"),
            &mut two_partitions,
        );
        let Decision::Replay {
            topic,
            partition,
            headers,
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((topic.as_str(), partition), ("orders", Some(1)));
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["trace", HEADER_REPLAY_ID, HEADER_REPLAY_COUNT]);
        assert_eq!(headers[1].1.as_deref(), Some(&b"fix-1"[..]));
        assert_eq!(headers[2].1.as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_partition_the_original_topic_lacks_is_left_to_the_partitioner() {
        let d = decide(&replay("r"), &poison("orders", "5"), &mut two_partitions);
        assert!(
            matches!(
                d,
                Decision::Replay {
                    partition: None,
                    ..
                }
            ),
            "{d:?}"
        );
        let mut unknown = |_: &str| None;
        let d = decide(&replay("r"), &poison("orders", "0"), &mut unknown);
        assert!(
            matches!(
                d,
                Decision::Replay {
                    partition: None,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn a_named_target_takes_every_record_partitioned_by_key() {
        let mut r = replay("r");
        r.target_topic = Some("orders-retry".into());
        let d = decide(&r, &record(&[("x", "y")], 0), &mut two_partitions);
        assert!(
            matches!(&d, Decision::Replay { topic, partition: None, .. } if topic == "orders-retry"),
            "{d:?}"
        );
        // Without a target, a record that names no original topic can't go anywhere.
        let d = decide(&replay("r"), &record(&[("x", "y")], 0), &mut two_partitions);
        assert_eq!(d, Decision::SkipNoTarget);
    }

    #[test]
    fn the_replay_count_grows_and_stops_loops() {
        let mut rec = poison("orders", "0");
        rec.headers
            .push((HEADER_REPLAY_COUNT.into(), Some(b"2".to_vec())));
        rec.headers
            .push((HEADER_REPLAY_ID.into(), Some(b"old".to_vec())));
        let Decision::Replay { headers, .. } = decide(&replay("new"), &rec, &mut two_partitions)
        else {
            panic!()
        };
        let get = |k: &str| {
            headers
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone().unwrap()).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(get(HEADER_REPLAY_COUNT), ["3"]);
        assert_eq!(get(HEADER_REPLAY_ID), ["new"]);
        rec.headers
            .push((HEADER_REPLAY_COUNT.into(), Some(b"3".to_vec())));
        assert_eq!(
            decide(&replay("new"), &rec, &mut two_partitions),
            Decision::SkipMaxReplayCount
        );
    }

    #[test]
    fn filters_combine_lists_and_the_time_range() {
        let rec = poison("orders", "0");
        let with = |filter: ReplayFilter| Replay {
            filter,
            ..replay("r")
        };
        let yes = |f: ReplayFilter| matches(&with(f), &rec);
        assert!(yes(ReplayFilter::default()));
        assert!(yes(ReplayFilter {
            original_topics: vec!["payments".into(), "orders".into()],
            connectors: vec!["orders-sink".into()],
            ..Default::default()
        }));
        assert!(!yes(ReplayFilter {
            original_topics: vec!["orders".into()],
            error_classes: vec!["com.mongodb.MongoBulkWriteException".into()],
            ..Default::default()
        }));
        assert!(yes(ReplayFilter {
            from: Some("2023-11-14T22:13:20Z".into()),
            to: Some("2023-11-14T22:13:21Z".into()),
            ..Default::default()
        }));
        assert!(!yes(ReplayFilter {
            to: Some("2023-11-14T22:13:20Z".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn counts_and_pacing() {
        let mut c = ReplayCounts::default();
        count(&mut c, &Decision::NotMatched, false);
        count(&mut c, &Decision::SkipMaxReplayCount, false);
        let replay = Decision::Replay {
            topic: "t".into(),
            partition: None,
            headers: vec![],
        };
        count(&mut c, &replay, false);
        count(&mut c, &replay, true);
        assert_eq!(
            (c.matched, c.replayed, c.skipped_max_replay_count),
            (3, 1, 1)
        );
        assert_eq!(decode_counts(&encode_counts(&c)), c);
        assert_eq!(decode_counts(""), ReplayCounts::default());
        assert_eq!(batch_duration(5, Some(2)), Duration::from_millis(2500));
        assert_eq!(batch_duration(5, None), Duration::ZERO);
    }
}
