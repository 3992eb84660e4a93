//! The dead-letter queue: failed records with their original key, value and headers, plus (when enabled)
//! the `__connect.errors.*` context headers exactly as Kafka Connect's `DeadLetterQueueReporter` writes
//! them, so tools that read Connect dead-letter topics read sluice's. A dead letter keeps its record's
//! timestamp, as Connect's do; sluice adds one header of its own, the time it was dead-lettered
//! ([`DEAD_LETTERED_AT_HEADER`]).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::failure::{Failure, RecordContext, Stage};
use crate::crd::connector::{ContextHeadersFormat, ConverterMessages};
use crate::names::{
    CONTEXT_HEADERS_MAX_BYTES, DEAD_LETTER_HEADER_PREFIX as HEADER_PREFIX, DEAD_LETTERED_AT_HEADER,
};
use crate::wire::dead_letter::{Consumed, SpringContext};

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

/// A dead-letter topic and the producer that writes to it.
pub struct DeadLetterQueue {
    pub topic: String,
    pub context_headers: bool,
    /// Connect's context headers, Spring's, or both (when `context_headers`).
    pub format: ContextHeadersFormat,
    /// A sink's consumer group (Spring's `kafka_dlt-original-consumer-group`).
    pub consumer_group: Option<String>,
    /// How converter failures read.
    pub converter_messages: ConverterMessages,
    /// The context headers' budget in bytes ([`header_budget`]).
    pub header_budget: usize,
    pub producer: FutureProducer,
}

impl DeadLetterQueue {
    /// Hands one failed record to the producer without waiting; the returned future resolves with the
    /// broker's acknowledgement. `Err` when the producer can't take it now (its queue is full).
    pub fn enqueue(
        &self,
        record: &RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> Result<rdkafka::producer::DeliveryFuture, Failure> {
        let out = self.dead_letter_record(record, failure, connector, task_id);
        self.producer
            .send_result(out)
            .map_err(|(e, _)| Failure::kafka(Stage::KafkaProduce, &e))
    }

    /// The dead-letter record: the original key, value and headers, plus the context headers.
    fn dead_letter_record<'a>(
        &'a self,
        record: &'a RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> FutureRecord<'a, [u8], [u8]> {
        let headers = self.headers(record, failure, connector, task_id);
        let mut out: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
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
        if self.context_headers {
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
        record: &RecordContext,
        failure: &Failure,
        connector: &str,
        task_id: u32,
    ) -> Result<(), Failure> {
        let out = self.dead_letter_record(record, failure, connector, task_id);
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

    fn queue(format: ContextHeadersFormat, header_budget: usize) -> DeadLetterQueue {
        DeadLetterQueue {
            topic: "dlq".into(),
            context_headers: true,
            format,
            consumer_group: Some("g".into()),
            converter_messages: ConverterMessages::Sluice,
            header_budget,
            // Never connects: only its records are built here.
            producer: rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .create()
                .unwrap(),
        }
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
        let headers = queue(ContextHeadersFormat::Both, 4096).headers(&record, &huge, "c", 0);
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
        let headers = queue(ContextHeadersFormat::Connect, 4096).headers(&record, &silent, "c", 0);
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
