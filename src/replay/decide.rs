//! What happens to one dead-letter record in a replay (pure): whether the filter takes it, where it goes
//! (its original topic and partition, or the replay's target), the headers it goes with, and the counts.

use std::time::Duration;

use crate::crd::dead_letter_queue::{Replay, ReplayCounts};
use crate::names::{DEAD_LETTER_HEADER_PREFIX as HEADER_PREFIX, DEAD_LETTERED_AT_HEADER};
use crate::wire::dead_letter::{SPRING_PREFIX, error_context};

/// Header naming the replay that sent a record back.
pub const HEADER_REPLAY_ID: &str = "sluice.replay.id";
/// Header counting how often a record was replayed.
pub const HEADER_REPLAY_COUNT: &str = "sluice.replay.count";
/// Spring Kafka's delivery attempt (`KafkaHeaders.DELIVERY_ATTEMPT`, a 4-byte big-endian int from 1): a
/// replayed record's is its replay count + 1, so a Spring consumer sees it as a redelivery.
pub const HEADER_DELIVERY_ATTEMPT: &str = "kafka_deliveryAttempt";

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

    /// Connect's context header `name`, else the Spring header that stands for it ([`error_context`]).
    fn context(&self, name: &str) -> Option<String> {
        error_context(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
            .remove(&format!("{HEADER_PREFIX}{name}"))
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

/// The headers of a replayed record: the original ones without the error context (the
/// `__connect.errors.*` and Spring's `kafka_dlt-*` headers and the time it was dead-lettered) and earlier
/// replay marks, then this replay's id and count and the delivery attempt.
pub fn replay_headers(
    original: &[(String, Option<Vec<u8>>)],
    id: &str,
    count: i64,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out: Vec<(String, Option<Vec<u8>>)> = original
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(HEADER_PREFIX)
                && !k.starts_with(SPRING_PREFIX)
                && ![
                    HEADER_REPLAY_ID,
                    HEADER_REPLAY_COUNT,
                    HEADER_DELIVERY_ATTEMPT,
                    DEAD_LETTERED_AT_HEADER,
                ]
                .contains(&k.as_str())
        })
        .cloned()
        .collect();
    out.push((HEADER_REPLAY_ID.into(), Some(id.as_bytes().to_vec())));
    out.push((
        HEADER_REPLAY_COUNT.into(),
        Some(count.to_string().into_bytes()),
    ));
    let attempt = i32::try_from(count + 1).unwrap_or(i32::MAX);
    out.push((
        HEADER_DELIVERY_ATTEMPT.into(),
        Some(attempt.to_be_bytes().to_vec()),
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
        assert_eq!(
            names,
            [
                "trace",
                HEADER_REPLAY_ID,
                HEADER_REPLAY_COUNT,
                HEADER_DELIVERY_ATTEMPT
            ]
        );
        assert_eq!(headers[1].1.as_deref(), Some(&b"fix-1"[..]));
        assert_eq!(headers[2].1.as_deref(), Some(&b"1"[..]));
        // The second delivery, as Spring's ByteBuffer.getInt() reads it.
        assert_eq!(headers[3].1.as_deref(), Some(&[0u8, 0, 0, 2][..]));
    }

    #[test]
    fn a_dead_letter_with_only_spring_headers_goes_back_too() {
        let spring = DeadLetterRecord {
            timestamp_ms: Some(1),
            headers: vec![
                ("trace".into(), Some(b"abc".to_vec())),
                (
                    "kafka_dlt-exception-fqcn".into(),
                    Some(b"org.apache.kafka.connect.errors.DataException".to_vec()),
                ),
                ("kafka_dlt-original-topic".into(), Some(b"orders".to_vec())),
                (
                    "kafka_dlt-original-partition".into(),
                    Some(1_i32.to_be_bytes().to_vec()),
                ),
                (
                    "kafka_dlt-original-offset".into(),
                    Some(7_i64.to_be_bytes().to_vec()),
                ),
            ],
        };
        let mut r = replay("fix-1");
        r.filter.error_classes = vec!["org.apache.kafka.connect.errors.DataException".into()];
        let Decision::Replay {
            topic,
            partition,
            headers,
        } = decide(&r, &spring, &mut two_partitions)
        else {
            panic!("not replayed")
        };
        assert_eq!((topic.as_str(), partition), ("orders", Some(1)));
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "trace",
                HEADER_REPLAY_ID,
                HEADER_REPLAY_COUNT,
                HEADER_DELIVERY_ATTEMPT
            ]
        );
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
        assert_eq!(batch_duration(5, Some(2)), Duration::from_millis(2500));
        assert_eq!(batch_duration(5, None), Duration::ZERO);
    }
}
