//! What is in a dead-letter topic: depth and record times from the broker, counts and the last errors from
//! the records' `__connect.errors.*` headers. Reading is incremental: each refresh reads only the records
//! after the cursor kept in status (`scannedOffsets`), at most [`MAX_RECORDS_PER_REFRESH`] of them, so a
//! huge topic is worked through over several refreshes and never read twice.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};

use crate::crd::dead_letter_queue::{DeadLetterError, Inspection, PartitionDepth};
use crate::kafka::read::{self, Next, Range, dead_lettered_at};
use crate::names;
use crate::text::without_record_contents;
use crate::wire::dead_letter::error_context;

/// How many records one refresh reads at most.
pub const MAX_RECORDS_PER_REFRESH: usize = 20_000;
/// How many recent errors status keeps.
const LAST_ERRORS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// One dead-letter record as inspection sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScannedRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub headers: BTreeMap<String, String>,
}

/// What one refresh read from the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// (partition, start offset, end offset).
    pub watermarks: Vec<(i32, i64, i64)>,
    /// Timestamp of the first record still in each non-empty partition.
    pub oldest_ms: Option<i64>,
    /// Records after the cursor, in order per partition.
    pub records: Vec<ScannedRecord>,
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

/// The next inspection from the previous one and a scan (pure).
pub fn apply_scan(old: &Inspection, scan: &Scan) -> Inspection {
    let mut next = old.clone();
    next.partitions = scan
        .watermarks
        .iter()
        .map(|&(partition, start, end)| PartitionDepth {
            partition,
            start_offset: start,
            end_offset: end,
            depth: end - start,
        })
        .collect();
    next.depth = next.partitions.iter().map(|p| p.depth).sum();
    next.oldest_record_time = if next.depth == 0 {
        None
    } else {
        scan.oldest_ms.and_then(rfc3339_ms)
    };
    if next.depth == 0 {
        next.newest_record_time = None;
    }
    for r in &scan.records {
        next.records_scanned += 1;
        next.scanned_offsets
            .insert(r.partition.to_string(), r.offset + 1);
        let header = |name: &str| {
            r.headers
                .get(&format!("{}{name}", names::DEAD_LETTER_HEADER_PREFIX))
                .cloned()
        };
        let class = header("exception.class.name").unwrap_or_else(|| "(no context headers)".into());
        next.by_error_class.add(&class);
        if let Some(topic) = header("topic") {
            next.by_original_topic.add(&topic);
        }
        if let Some(connector) = header("connector.name") {
            next.by_connector.add(&connector);
        }
        let time = r.timestamp_ms.and_then(rfc3339_ms);
        if time.is_some() && time > next.newest_record_time {
            next.newest_record_time = time.clone();
        }
        next.last_errors.push(DeadLetterError {
            class,
            message: without_record_contents(&header("exception.message").unwrap_or_default()),
            topic: header("topic"),
            partition: header("partition").and_then(|p| p.parse().ok()),
            offset: header("offset").and_then(|o| o.parse().ok()),
            position: format!("{}@{}", r.partition, r.offset),
            time,
        });
    }
    let extra = next.last_errors.len().saturating_sub(LAST_ERRORS);
    next.last_errors.drain(..extra);
    // A cursor behind the start (retention removed records) moves to the start.
    for p in &next.partitions {
        let cursor = next
            .scanned_offsets
            .entry(p.partition.to_string())
            .or_insert(p.start_offset);
        *cursor = (*cursor).max(p.start_offset);
    }
    next
}

/// Reads the watermarks, the oldest record time and the records after `cursor` (blocking: run it on a
/// blocking thread).
pub fn scan(
    kafka: &ClientConfig,
    topic: &str,
    cursor: &BTreeMap<String, i64>,
    max_records: usize,
) -> Result<Scan, rdkafka::error::KafkaError> {
    let consumer = read::reader(kafka, names::INSPECTION_GROUP, names::OPERATOR_CLIENT_ID)?;
    let watermarks = read::watermarks(&consumer, topic, TIMEOUT)?;
    let mut out = Scan {
        watermarks: watermarks
            .iter()
            .map(|w| (w.partition, w.low, w.high))
            .collect(),
        ..Default::default()
    };

    // The first record of every non-empty partition gives the oldest time.
    let whole: Vec<Range> = watermarks.iter().copied().map(Range::from).collect();
    read::read_ranges(&consumer, topic, &whole, TIMEOUT, POLL, |m| {
        if let Some(ts) = dead_lettered_at(m) {
            out.oldest_ms = Some(out.oldest_ms.map_or(ts, |o| o.min(ts)));
        }
        Next::PartitionDone
    })?;

    // Then everything after the cursor, up to the end offsets seen above.
    let after_cursor: Vec<Range> = watermarks
        .iter()
        .map(|w| Range {
            partition: w.partition,
            from: cursor
                .get(&w.partition.to_string())
                .copied()
                .unwrap_or(w.low)
                .max(w.low),
            end: w.high,
        })
        .collect();
    read::read_ranges(&consumer, topic, &after_cursor, TIMEOUT, POLL, |m| {
        let headers = m
            .headers()
            .map(|hs| error_context(hs.iter().map(|h| (h.key, h.value))))
            .unwrap_or_default();
        out.records.push(ScannedRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: dead_lettered_at(m),
            headers,
        });
        if out.records.len() >= max_records {
            Next::Stop
        } else {
            Next::Continue
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, class: &str, topic: &str) -> ScannedRecord {
        let h = |k: &str, v: &str| (format!("__connect.errors.{k}"), v.to_string());
        ScannedRecord {
            partition,
            offset,
            timestamp_ms: Some(1_700_000_000_000 + offset),
            headers: BTreeMap::from([
                h("exception.class.name", class),
                h("topic", topic),
                h("partition", "0"),
                h("offset", &offset.to_string()),
                h("connector.name", "orders-sink"),
                h(
                    "exception.message",
                    "E11000 duplicate key error dup key: { _id: \"secret\" }",
                ),
            ]),
        }
    }

    #[test]
    fn counts_grow_incrementally_and_the_cursor_moves_past_what_was_read() {
        let first = Scan {
            watermarks: vec![(0, 0, 2), (1, 0, 1)],
            oldest_ms: Some(1_700_000_000_000),
            records: vec![
                record(0, 0, "DataException", "orders"),
                record(0, 1, "MongoBulkWriteException", "orders"),
                record(1, 0, "DataException", "payments"),
            ],
        };
        let a = apply_scan(&Inspection::default(), &first);
        assert_eq!(a.depth, 3);
        assert_eq!(a.by_error_class.get("DataException"), Some(2));
        assert_eq!(a.by_original_topic.get("payments"), Some(1));
        assert_eq!(a.by_connector.get("orders-sink"), Some(3));
        assert_eq!(
            a.scanned_offsets,
            BTreeMap::from([("0".into(), 2), ("1".into(), 1)])
        );
        assert_eq!(a.last_errors.len(), 3);
        assert!(
            !a.last_errors[0].message.contains("secret"),
            "{:?}",
            a.last_errors[0]
        );
        assert_eq!(a.last_errors[2].position, "1@0");

        // Later: one new record, and retention removed partition 0's first record.
        let second = Scan {
            watermarks: vec![(0, 1, 3), (1, 0, 1)],
            oldest_ms: Some(1_700_000_000_001),
            records: vec![record(0, 2, "DataException", "orders")],
        };
        let b = apply_scan(&a, &second);
        assert_eq!(b.depth, 3);
        assert_eq!(b.records_scanned, 4);
        assert_eq!(b.by_error_class.get("DataException"), Some(3));
        assert_eq!(b.scanned_offsets["0"], 3);
        assert_eq!(
            b.oldest_record_time.as_deref(),
            Some("2023-11-14T22:13:20.001Z")
        );
    }
}
