//! Reading what a topic holds now: its partitions' watermarks, and records of partition ranges up to end
//! offsets taken before reading (so records that arrive meanwhile are not waited for). Blocking calls: run
//! them on a blocking thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::names;

/// A consumer for these reads: it is assigned partitions, joins no group's rebalances and never commits
/// (`group` names it to the broker, and is the group whose committed offsets it can look up).
pub fn reader(config: &ClientConfig, group: &str, client_id: &str) -> KafkaResult<BaseConsumer> {
    config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("client.id", client_id)
        .create()
}

/// One partition's watermarks: the first offset still there and the offset the next record gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// Every partition of `topic` with its watermarks, by partition (none if the topic does not exist).
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<Vec<Watermarks>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        out.push(Watermarks {
            partition,
            low,
            high,
        });
    }
    out.sort();
    Ok(out)
}

/// What to read of one partition: offsets `from` up to `end` (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub from: i64,
    pub end: i64,
}

/// The whole of every partition of `topic` as it is now: from its first offset still there to its end
/// (blocking).
pub fn whole_topic(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<Vec<Range>> {
    Ok(watermarks(consumer, topic, timeout)?
        .into_iter()
        .map(Range::from)
        .collect())
}

impl From<Watermarks> for Range {
    /// The whole partition as it is now.
    fn from(w: Watermarks) -> Self {
        Range {
            partition: w.partition,
            from: w.low,
            end: w.high,
        }
    }
}

/// The last value of each key (`None`: a tombstone).
pub type Latest = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The last committed value of each key that `wanted` keeps (`None`: a tombstone), what a compacted topic
/// says about those keys, as a `read_committed` consumer sees them up to the end a `read_uncommitted` one
/// sees now: past every record written so far, once each transaction it is part of has ended. `None` when
/// that end was not reached within `timeout` (a transaction still open). Both readers are made here from
/// `config`, their isolation levels set: librdkafka's default is `read_committed`, whose end (the last
/// stable offset) stops at the first transaction still open, so a record committed after another
/// producer's open transaction would be left out.
pub fn latest_committed_values(
    config: &ClientConfig,
    group: &str,
    client_id: &str,
    topic: &str,
    timeout: Duration,
    wanted: impl Fn(&[u8]) -> bool,
) -> KafkaResult<Option<Latest>> {
    let with = |isolation: &str| {
        reader(
            config.clone().set("isolation.level", isolation),
            group,
            client_id,
        )
    };
    let ranges = whole_topic(&with("read_uncommitted")?, topic, METADATA_TIMEOUT)?;
    let (latest, complete) = latest_in(&with("read_committed")?, topic, &ranges, timeout, wanted)?;
    Ok(complete.then_some(latest))
}

fn latest_in(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[Range],
    timeout: Duration,
    wanted: impl Fn(&[u8]) -> bool,
) -> KafkaResult<(Latest, bool)> {
    let mut latest = BTreeMap::new();
    let complete = read_ranges(consumer, topic, ranges, timeout, POLL, |m| {
        if let Some(key) = m.key().filter(|k| wanted(k)) {
            latest.insert(key.to_vec(), m.payload().map(<[u8]>::to_vec));
        }
        Next::Continue
    })?;
    Ok((latest, complete))
}

/// How long a metadata or watermark call of [`latest_committed_values`] may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll of [`latest_committed_values`] waits for a record.
const POLL: Duration = Duration::from_millis(200);

/// Whether to go on reading after a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Nothing more of this record's partition.
    PartitionDone,
    Stop,
}

/// Reads the records of `ranges` in order per partition, handing each to `each`, until every range is
/// read, `each` says stop, or `timeout` passes (then what was read is all there is). Empty ranges are
/// skipped. The consumer is assigned the ranges (replacing any assignment). Returns whether every range
/// was read to its end (or `each` said stop): a range also ends when the consumer's position reaches its
/// end without a record there, as after a transaction's commit marker, which no consumer is handed.
pub fn read_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[Range],
    timeout: Duration,
    poll: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Next,
) -> KafkaResult<bool> {
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for r in ranges.iter().filter(|r| r.from < r.end) {
        ends.insert(r.partition, r.end);
        assignment.add_partition_offset(topic, r.partition, Offset::Offset(r.from))?;
    }
    if ends.is_empty() {
        return Ok(true);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(message) = consumer.poll(poll) else {
            let position = consumer.position()?;
            ends.retain(|&partition, end| {
                position
                    .find_partition(topic, partition)
                    .and_then(|p| p.offset().to_raw())
                    .is_none_or(|at| at < *end)
            });
            continue;
        };
        let message = message?;
        let Some(end) = ends.get(&message.partition()).copied() else {
            continue;
        };
        if message.offset() >= end {
            ends.remove(&message.partition());
            continue;
        }
        match each(&message) {
            Next::Stop => return Ok(true),
            Next::PartitionDone => {
                ends.remove(&message.partition());
            }
            Next::Continue if message.offset() + 1 >= end => {
                ends.remove(&message.partition());
            }
            Next::Continue => {}
        }
    }
    Ok(ends.is_empty())
}

/// When a dead letter was dead-lettered: its [`names::DEAD_LETTERED_AT_HEADER`], else (a dead letter Kafka
/// Connect or an older sluice wrote) the record's own timestamp.
pub fn dead_lettered_at(m: &impl Message) -> Option<i64> {
    m.headers()
        .and_then(|hs| hs.iter().find(|h| h.key == names::DEAD_LETTERED_AT_HEADER))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| m.timestamp().to_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    #[test]
    fn a_dead_letter_s_time_is_its_header_else_its_timestamp() {
        let letter = |headers: Option<OwnedHeaders>| {
            OwnedMessage::new(
                None,
                None,
                "dlq".into(),
                Timestamp::CreateTime(1_000),
                0,
                0,
                headers,
            )
        };
        let marked = OwnedHeaders::new().insert(Header {
            key: names::DEAD_LETTERED_AT_HEADER,
            value: Some("2000"),
        });
        assert_eq!(dead_lettered_at(&letter(Some(marked))), Some(2_000));
        assert_eq!(
            dead_lettered_at(&letter(None)),
            Some(1_000),
            "Kafka Connect's"
        );
    }
}
