//! The dead-letter queue: failed records with their original key, value and headers, plus (when enabled)
//! the `__connect.errors.*` context headers exactly as Kafka Connect's `DeadLetterQueueReporter` writes
//! them, so tools that read Connect dead-letter topics read sluice's. A dead letter keeps its record's
//! timestamp, as Connect's do; sluice adds one header of its own, the time it was dead-lettered
//! ([`DEAD_LETTERED_AT_HEADER`]). A task's routes decide where each failed record goes ([`Destination`]):
//! the first route matching its stage, error class and original topic, `{topic}` in a route's topic
//! standing for the original topic, and its original partition kept when the route asks for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::failure::{Failure, RecordContext, Stage, names_failure};
use crate::crd::connector::{ContextHeadersFormat, ConverterMessages, DeadLetterPartition};
use crate::names::{
    CONTEXT_HEADERS_MAX_BYTES, DEAD_LETTER_HEADER_PREFIX as HEADER_PREFIX, DEAD_LETTERED_AT_HEADER,
};
use crate::wire::dead_letter::{Consumed, SpringContext};
use crate::wire::task_config::TaskDeadLetterRoute;

/// The class that ran the stage (`__connect.errors.class.name`).
pub fn operation_class(stage: Stage) -> &'static str {
    match stage {
        Stage::KeyConverter | Stage::ValueConverter | Stage::HeaderConverter => {
            "sluice.task.convert.Converter"
        }
        Stage::Transformation => "sluice.task.Transformation",
        Stage::TaskPut => "sluice.task.sink.MongoSinkTask",
        Stage::TaskPoll => "sluice.task.source.MongoSourceTask",
        Stage::KafkaProduce => "sluice.task.KafkaProducer",
        Stage::KafkaConsume => "sluice.task.KafkaConsumer",
    }
}

/// The dead-letter producer's `message.max.bytes` (librdkafka's default, 1 MB, would refuse a large record
/// plus its context headers before the broker sees it).
pub const PRODUCER_MESSAGE_MAX_BYTES: &str = "67108864";

/// Kafka Connect's JsonConverter message for a record it can't read (its cause follows in the trace).
pub const CONNECT_CONVERTER_MESSAGE: &str =
    "Converting byte[] to Kafka Connect data failed due to serialization error: ";

/// The `__connect.errors.*` headers for a failed record, in Connect's order and string encodings, within
/// `budget` bytes (at most [`CONTEXT_HEADERS_MAX_BYTES`]): past it, the stack trace is cut first, then
/// the exception message (each ending in `...[<n> bytes cut]`), so a long server message never makes the
/// record too large for its topic. With `ConverterMessages::Connect`, a converter's failure reads as
/// Connect's JsonConverter writes it.
pub fn dead_letter_headers(
    record: &RecordContext,
    failure: &Failure,
    connector: &str,
    task_id: u32,
    converter_messages: ConverterMessages,
    budget: usize,
) -> Vec<(String, String)> {
    let mut h = vec![("topic", record.topic.clone())];
    if let Some(p) = record.partition {
        h.push(("partition", p.to_string()));
    }
    if let Some(o) = record.offset {
        h.push(("offset", o.to_string()));
    }
    h.push(("connector.name", connector.to_string()));
    h.push(("task.id", task_id.to_string()));
    h.push(("stage", failure.stage.connect_name().to_string()));
    h.push(("class.name", operation_class(failure.stage).to_string()));
    h.push(("exception.class.name", failure.class.clone()));
    let code = failure
        .code
        .map(|c| format!(" (code {c})"))
        .unwrap_or_default();
    let at = operation_class(failure.stage);
    let connect_form = converter_messages == ConverterMessages::Connect
        && matches!(
            failure.stage,
            Stage::KeyConverter | Stage::ValueConverter | Stage::HeaderConverter
        );
    if connect_form {
        h.push(("exception.message", CONNECT_CONVERTER_MESSAGE.to_string()));
        h.push((
            "exception.stacktrace",
            format!(
                "{}: {CONNECT_CONVERTER_MESSAGE}\n\tat {at}\nCaused by: \
                 org.apache.kafka.common.errors.SerializationException: {}",
                failure.class, failure.message
            ),
        ));
    } else {
        h.push(("exception.message", failure.message.clone()));
        h.push((
            "exception.stacktrace",
            format!("{}: {}{code}\n\tat {at}", failure.class, failure.message),
        ));
    }
    let mut headers: Vec<(String, String)> = h
        .into_iter()
        .map(|(k, v)| (format!("{HEADER_PREFIX}{k}"), v))
        .collect();
    within_budget(&mut headers, budget.min(CONTEXT_HEADERS_MAX_BYTES));
    headers
}

/// The context-header budget of a Connector's `contextHeadersMaxBytes` (unset: the most;
/// [`dead_letter_headers`] never takes more).
pub fn header_budget(max_bytes: Option<i64>) -> usize {
    max_bytes
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(CONTEXT_HEADERS_MAX_BYTES)
}

/// Cuts the stack trace, then the message, until the headers (keys and values) fit `budget` bytes.
fn within_budget(headers: &mut [(String, String)], budget: usize) {
    for name in ["exception.stacktrace", "exception.message"] {
        let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total <= budget {
            return;
        }
        let key = format!("{HEADER_PREFIX}{name}");
        if let Some((_, value)) = headers.iter_mut().find(|(k, _)| *k == key) {
            let keep = value.len().saturating_sub(total - budget);
            *value = cut_marked(value, keep);
        }
    }
}

/// `value` within `max_bytes` when it has to be cut, ending in `...[<n> bytes cut]` (the marker counted).
fn cut_marked(value: &str, max_bytes: usize) -> String {
    if value.len() <= max_bytes {
        return value.to_string();
    }
    // The marker's longest form (as many digits as the whole value's length) bounds what is kept.
    let longest = format!("...[{} bytes cut]", value.len()).len();
    let kept = crate::text::cut(value, max_bytes.saturating_sub(longest));
    format!("{kept}...[{} bytes cut]", value.len() - kept.len())
}

/// How long a dead-letter topic's partition count is trusted before it is read again.
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(60);

/// Where one failed record goes: the topic, and the partition when its route keeps the original one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub topic: String,
    pub partition: Option<i32>,
    pub context_headers: bool,
}

/// A task's dead-letter routes and the producer that writes to them.
pub struct DeadLetterQueue {
    /// Tried in order; the first a record matches takes it.
    pub routes: Vec<TaskDeadLetterRoute>,
    /// Connect's context headers, Spring's, or both (when a route enables them).
    pub format: ContextHeadersFormat,
    /// A sink's consumer group (Spring's `kafka_dlt-original-consumer-group`).
    pub consumer_group: Option<String>,
    /// How converter failures read.
    pub converter_messages: ConverterMessages,
    /// The context headers' budget in bytes ([`header_budget`]).
    pub header_budget: usize,
    pub producer: FutureProducer,
    /// Partition counts of the topics routes keep original partitions in, and when each was read.
    partition_counts: std::sync::Mutex<HashMap<String, (i32, Instant)>>,
}

/// Whether a route takes a failed record: every non-empty list holds the record's stage, error class
/// (or code) and original topic.
pub fn route_matches(
    route: &TaskDeadLetterRoute,
    record: &RecordContext,
    failure: &Failure,
) -> bool {
    (route.stages.is_empty() || route.stages.contains(&failure.stage))
        && (route.error_classes.is_empty()
            || route
                .error_classes
                .iter()
                .any(|n| names_failure(n, failure)))
        && (route.topics.is_empty() || route.topics.contains(&record.topic))
}

impl DeadLetterQueue {
    /// A queue of these routes written by `producer`.
    pub fn new(
        routes: Vec<TaskDeadLetterRoute>,
        format: ContextHeadersFormat,
        consumer_group: Option<String>,
        converter_messages: ConverterMessages,
        header_budget: usize,
        producer: FutureProducer,
    ) -> Self {
        Self {
            routes,
            format,
            consumer_group,
            converter_messages,
            header_budget,
            producer,
            partition_counts: Default::default(),
        }
    }

    /// Where a failed record goes; `None` when no route takes it (tolerance alone decides). A route that
    /// keeps original partitions does so when the dead-letter topic has the partition, else it goes by key.
    pub async fn destination(
        &self,
        record: &RecordContext,
        failure: &Failure,
    ) -> Option<Destination> {
        let route = self
            .routes
            .iter()
            .find(|r| route_matches(r, record, failure))?;
        let topic = route.topic_for(&record.topic);
        let partition = match (route.partition, record.partition) {
            (DeadLetterPartition::Original, Some(p)) => {
                let count = self.partition_count(&topic).await;
                count.is_some_and(|c| p < c).then_some(p)
            }
            _ => None,
        };
        Some(Destination {
            topic,
            partition,
            context_headers: route.context_headers_enable,
        })
    }

    /// The partition count of `topic` (cached for [`PARTITION_COUNT_TTL`]); `None` when it can't be read
    /// now (logged): the record then goes by key.
    async fn partition_count(&self, topic: &str) -> Option<i32> {
        let cached = self
            .partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied();
        if let Some((count, read)) = cached
            && read.elapsed() < PARTITION_COUNT_TTL
        {
            return Some(count);
        }
        let (producer, name) = (self.producer.clone(), topic.to_string());
        let read = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
                .map(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == name && t.error().is_none())
                        .map_or(0, |t| t.partitions().len())
                })
        })
        .await;
        match read {
            Ok(Ok(count)) if count > 0 => {
                let count = i32::try_from(count).unwrap_or(i32::MAX);
                self.partition_counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(topic.to_string(), (count, Instant::now()));
                Some(count)
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => "the topic is not there".into(),
                };
                tracing::warn!(
                    topic,
                    "dead-letter topic's partitions unknown ({why}); this record goes by key"
                );
                cached.map(|(count, _)| count)
            }
        }
    }

    /// Hands one failed record to the producer without waiting; the returned future resolves with the
    /// broker's acknowledgement. `Err` when the producer can't take it now (its queue is full).
    pub fn enqueue(
        &self,
        to: &Destination,
        record: &RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> Result<rdkafka::producer::DeliveryFuture, Failure> {
        let out = self.dead_letter_record(to, record, failure, connector, task_id);
        self.producer
            .send_result(out)
            .map_err(|(e, _)| Failure::kafka(Stage::KafkaProduce, &e))
    }

    /// The dead-letter record: the original key, value and headers, plus the context headers.
    fn dead_letter_record<'a>(
        &'a self,
        to: &'a Destination,
        record: &'a RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> FutureRecord<'a, [u8], [u8]> {
        let headers = self.headers(to.context_headers, record, failure, connector, task_id);
        let mut out: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(&to.topic).headers(headers);
        if let Some(p) = to.partition {
            out = out.partition(p);
        }
        if let Some(ts) = record.timestamp_ms {
            out = out.timestamp(ts);
        }
        if let Some(k) = &record.key {
            out = out.key(k.as_slice());
        }
        if let Some(v) = &record.value {
            out = out.payload(v.as_slice());
        }
        out
    }

    fn headers(
        &self,
        context_headers: bool,
        record: &RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        if context_headers {
            // Both formats carry the message and stack trace twice: each gets half the budget.
            let budget = match self.format {
                ContextHeadersFormat::Both => self.header_budget / 2,
                _ => self.header_budget,
            };
            let connect = dead_letter_headers(
                record,
                failure,
                connector,
                task_id,
                self.converter_messages,
                budget,
            );
            if self.format != ContextHeadersFormat::Spring {
                let message = format!("{HEADER_PREFIX}exception.message");
                for (k, v) in &connect {
                    // Connect writes a null message header for an exception without a message.
                    let null = *k == message && v.is_empty();
                    headers = headers.insert(Header {
                        key: k,
                        value: (!null).then_some(v.as_bytes()),
                    });
                }
            }
            if self.format != ContextHeadersFormat::Connect {
                // The message and stack trace as cut for Connect's headers: the same budget.
                let cut = |name: &str| {
                    let key = format!("{HEADER_PREFIX}{name}");
                    connect
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or_default()
                };
                let spring = SpringContext {
                    exception_class: &failure.class,
                    message: cut("exception.message"),
                    stacktrace: cut("exception.stacktrace"),
                    key_failure: failure.stage == Stage::KeyConverter,
                    topic: &record.topic,
                    consumed: record
                        .partition
                        .zip(record.offset)
                        .map(|(partition, offset)| Consumed {
                            partition,
                            offset,
                            timestamp: record.timestamp_ms.map(|t| (t, record.log_append_time)),
                        }),
                    consumer_group: self.consumer_group.as_deref(),
                };
                for (k, v) in spring.headers() {
                    headers = headers.insert(Header {
                        key: &k,
                        value: Some(v.as_slice()),
                    });
                }
            }
        }
        let now = k8s_openapi::jiff::Timestamp::now()
            .as_millisecond()
            .to_string();
        headers.insert(Header {
            key: DEAD_LETTERED_AT_HEADER,
            value: Some(now.as_bytes()),
        })
    }

    /// Writes one failed record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        to: &Destination,
        record: &RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> Result<(), Failure> {
        let out = self.dead_letter_record(to, record, failure, connector, task_id);
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| Failure::kafka(Stage::KafkaProduce, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converter_failures_can_read_as_kafka_connect_s_json_converter() {
        let record = RecordContext {
            topic: "orders".into(),
            ..Default::default()
        };
        let bad_json = Failure::conversion(Stage::ValueConverter, "value is not JSON: EOF");
        let h = dead_letter_headers(
            &record,
            &bad_json,
            "c",
            0,
            ConverterMessages::Connect,
            CONTEXT_HEADERS_MAX_BYTES,
        );
        let get = |h: &[(String, String)], n: &str| {
            h.iter()
                .find(|(k, _)| k == &format!("{HEADER_PREFIX}{n}"))
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(
            get(&h, "exception.message"),
            "Converting byte[] to Kafka Connect data failed due to serialization error: "
        );
        assert!(
            get(&h, "exception.stacktrace").ends_with(
                "\nCaused by: org.apache.kafka.common.errors.SerializationException: value is not JSON: EOF"
            ),
            "{h:?}"
        );
        // Only converters: a write error keeps its words.
        let write = Failure::conversion(Stage::TaskPut, "Could not create write model");
        let h = dead_letter_headers(
            &record,
            &write,
            "c",
            0,
            ConverterMessages::Connect,
            CONTEXT_HEADERS_MAX_BYTES,
        );
        assert_eq!(get(&h, "exception.message"), "Could not create write model");
    }

    #[test]
    fn headers_follow_kafka_connect() {
        let record = RecordContext {
            topic: "orders".into(),
            partition: Some(2),
            offset: Some(41),
            ..Default::default()
        };
        let failure = Failure::conversion(Stage::ValueConverter, "Unexpected character ('x')");
        let h = dead_letter_headers(
            &record,
            &failure,
            "orders-sink",
            1,
            ConverterMessages::Sluice,
            CONTEXT_HEADERS_MAX_BYTES,
        );
        let names: Vec<&str> = h
            .iter()
            .map(|(k, _)| k.strip_prefix(HEADER_PREFIX).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "topic",
                "partition",
                "offset",
                "connector.name",
                "task.id",
                "stage",
                "class.name",
                "exception.class.name",
                "exception.message",
                "exception.stacktrace"
            ]
        );
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == &format!("{HEADER_PREFIX}{n}"))
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(get("partition"), "2");
        assert_eq!(get("offset"), "41");
        assert_eq!(get("task.id"), "1");
        assert_eq!(get("stage"), "VALUE_CONVERTER");
        assert_eq!(
            get("exception.class.name"),
            "org.apache.kafka.connect.errors.DataException"
        );
        assert_eq!(get("exception.message"), "Unexpected character ('x')");
    }

    #[test]
    fn long_errors_are_cut_stack_trace_first_to_the_header_budget() {
        let record = RecordContext {
            topic: "orders".into(),
            ..Default::default()
        };
        let size = |h: &[(String, String)]| h.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let get = |h: &[(String, String)], n: &str| {
            h.iter()
                .find(|(k, _)| k == &format!("{HEADER_PREFIX}{n}"))
                .unwrap()
                .1
                .clone()
        };
        // A message that fits once the stack trace (which repeats it) is cut.
        let medium = Failure::new(Stage::TaskPut, "X", "m".repeat(10_000), false);
        let h = dead_letter_headers(
            &record,
            &medium,
            "c",
            0,
            ConverterMessages::Sluice,
            CONTEXT_HEADERS_MAX_BYTES,
        );
        assert!(size(&h) <= CONTEXT_HEADERS_MAX_BYTES, "{}", size(&h));
        assert_eq!(
            get(&h, "exception.message").len(),
            10_000,
            "the message stays whole"
        );
        let trace = get(&h, "exception.stacktrace");
        assert!(trace.ends_with(" bytes cut]"), "{trace}");
        // A message larger than the budget is cut too.
        let huge = Failure::new(Stage::TaskPut, "X", "é".repeat(40_000), false);
        let h = dead_letter_headers(
            &record,
            &huge,
            "c",
            0,
            ConverterMessages::Sluice,
            CONTEXT_HEADERS_MAX_BYTES,
        );
        assert!(size(&h) <= CONTEXT_HEADERS_MAX_BYTES, "{}", size(&h));
        let message = get(&h, "exception.message");
        let cut: usize = message
            .rsplit_once("...[")
            .and_then(|(_, n)| n.strip_suffix(" bytes cut]"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            message.len() - format!("...[{cut} bytes cut]").len() + cut,
            huge.message.len(),
            "the marker says how much was cut"
        );
        assert_eq!(get(&h, "topic"), "orders", "the coordinates stay");
        // A Connector's smaller budget.
        let h = dead_letter_headers(&record, &medium, "c", 0, ConverterMessages::Sluice, 2048);
        assert!(size(&h) <= 2048, "{}", size(&h));
        assert_eq!(header_budget(Some(4096)), 4096);
        assert_eq!(header_budget(None), CONTEXT_HEADERS_MAX_BYTES);
    }

    const WRITE_EXCEPTION_CLASS: &str = "com.mongodb.kafka.connect.sink.dlq.WriteException";

    fn route(topic: &str, partition: DeadLetterPartition) -> TaskDeadLetterRoute {
        TaskDeadLetterRoute {
            stages: vec![],
            error_classes: vec![],
            topics: vec![],
            topic: topic.into(),
            context_headers_enable: true,
            partition,
        }
    }

    fn queue_of(
        routes: Vec<TaskDeadLetterRoute>,
        format: ContextHeadersFormat,
        header_budget: usize,
    ) -> DeadLetterQueue {
        DeadLetterQueue::new(
            routes,
            format,
            Some("g".into()),
            ConverterMessages::Sluice,
            header_budget,
            // Never connects: only its records are built here.
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .create()
                .unwrap(),
        )
    }

    fn queue(format: ContextHeadersFormat, header_budget: usize) -> DeadLetterQueue {
        queue_of(
            vec![route("dlq", DeadLetterPartition::Key)],
            format,
            header_budget,
        )
    }

    #[tokio::test]
    async fn the_first_matching_route_takes_a_record_and_may_keep_its_partition() {
        let conversion = TaskDeadLetterRoute {
            stages: vec![Stage::KeyConverter, Stage::ValueConverter],
            ..route("{topic}.DLT", DeadLetterPartition::Original)
        };
        let duplicates = TaskDeadLetterRoute {
            error_classes: vec!["11000".into()],
            topics: vec!["orders".into()],
            context_headers_enable: false,
            ..route("writes", DeadLetterPartition::Key)
        };
        let q = queue_of(
            vec![conversion, duplicates],
            ContextHeadersFormat::Connect,
            4096,
        );
        // The partition count is known (as a read would have cached it): 2 partitions.
        q.partition_counts
            .lock()
            .unwrap()
            .insert("orders.DLT".into(), (2, Instant::now()));
        let record = |topic: &str, partition: i32| RecordContext {
            topic: topic.into(),
            partition: Some(partition),
            ..Default::default()
        };
        let bad_json = Failure::conversion(Stage::ValueConverter, "value is not JSON");
        let to = q
            .destination(&record("orders", 1), &bad_json)
            .await
            .unwrap();
        assert_eq!(
            to,
            Destination {
                topic: "orders.DLT".into(),
                partition: Some(1),
                context_headers: true
            }
        );
        // Partition 5 is not in orders.DLT: by key.
        let to = q
            .destination(&record("orders", 5), &bad_json)
            .await
            .unwrap();
        assert_eq!(to.partition, None);
        let duplicate =
            Failure::new(Stage::TaskPut, WRITE_EXCEPTION_CLASS, "E11000", false).with_code(11000);
        let to = q
            .destination(&record("orders", 1), &duplicate)
            .await
            .unwrap();
        assert_eq!(
            (to.topic.as_str(), to.partition, to.context_headers),
            ("writes", None, false)
        );
        // Matched by class name, whole or its last part.
        for name in [WRITE_EXCEPTION_CLASS, "WriteException"] {
            let r = TaskDeadLetterRoute {
                error_classes: vec![name.into()],
                ..route("w", DeadLetterPartition::Key)
            };
            assert!(
                route_matches(&r, &record("orders", 0), &duplicate),
                "{name}"
            );
        }
        // Another topic's duplicate, or another stage's failure: no route takes it.
        assert_eq!(
            q.destination(&record("payments", 0), &duplicate).await,
            None
        );
        let tombstone = Failure::conversion(Stage::TaskPut, "Could not create write model");
        assert_eq!(q.destination(&record("orders", 0), &tombstone).await, None);
    }

    #[test]
    fn both_formats_share_the_budget_and_a_message_less_exception_writes_a_null_header() {
        use rdkafka::message::Headers;
        let record = RecordContext {
            topic: "orders".into(),
            partition: Some(0),
            offset: Some(7),
            ..Default::default()
        };
        let huge = Failure::new(Stage::TaskPut, "X", "m".repeat(40_000), false);
        let headers = queue(ContextHeadersFormat::Both, 4096).headers(true, &record, &huge, "c", 0);
        let context: usize = headers
            .iter()
            .filter(|h| h.key.starts_with(HEADER_PREFIX) || h.key.starts_with("kafka_dlt-"))
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum();
        assert!(
            context <= 4096,
            "Connect's and Spring's headers: {context} bytes"
        );
        let silent = Failure::new(Stage::TaskPut, "java.lang.NullPointerException", "", false);
        let headers =
            queue(ContextHeadersFormat::Connect, 4096).headers(true, &record, &silent, "c", 0);
        let message = headers
            .iter()
            .find(|h| h.key == format!("{HEADER_PREFIX}exception.message"))
            .unwrap();
        assert_eq!(message.value, None, "Connect's null, not an empty string");
    }

    #[test]
    fn a_source_record_has_no_partition_or_offset_headers() {
        let record = RecordContext {
            topic: "cdc.shop.orders".into(),
            event_id: Some("8263…".into()),
            ..Default::default()
        };
        let failure = Failure::new(
            Stage::KafkaProduce,
            "KafkaError",
            "message too large",
            false,
        );
        let h = dead_letter_headers(
            &record,
            &failure,
            "src",
            0,
            ConverterMessages::Sluice,
            CONTEXT_HEADERS_MAX_BYTES,
        );
        assert!(
            h.iter()
                .all(|(k, _)| !k.ends_with(".partition") && !k.ends_with(".offset"))
        );
    }
}
