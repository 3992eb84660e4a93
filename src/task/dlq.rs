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
/// [`CONTEXT_HEADERS_MAX_BYTES`]: past it, the stack trace is cut first, then the exception message (each
/// with a `...` marker), so a long server message never makes the record too large for its topic. With
/// `ConverterMessages::Connect`, a converter's failure reads as Connect's JsonConverter writes it.
pub fn dead_letter_headers(
    record: &RecordContext,
    failure: &Failure,
    connector: &str,
    task_id: u32,
    converter_messages: ConverterMessages,
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
    within_budget(&mut headers, CONTEXT_HEADERS_MAX_BYTES);
    headers
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
            *value = crate::text::cut_with_marker(value, keep.max(3), "...");
        }
    }
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
            let connect =
                dead_letter_headers(record, failure, connector, task_id, self.converter_messages);
            if self.format != ContextHeadersFormat::Spring {
                for (k, v) in &connect {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
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
        let h = dead_letter_headers(&record, &bad_json, "c", 0, ConverterMessages::Connect);
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
        let h = dead_letter_headers(&record, &write, "c", 0, ConverterMessages::Connect);
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
        let h = dead_letter_headers(&record, &medium, "c", 0, ConverterMessages::Sluice);
        assert!(size(&h) <= CONTEXT_HEADERS_MAX_BYTES, "{}", size(&h));
        assert_eq!(
            get(&h, "exception.message").len(),
            10_000,
            "the message stays whole"
        );
        assert!(get(&h, "exception.stacktrace").ends_with("..."));
        // A message larger than the budget is cut too.
        let huge = Failure::new(Stage::TaskPut, "X", "é".repeat(40_000), false);
        let h = dead_letter_headers(&record, &huge, "c", 0, ConverterMessages::Sluice);
        assert!(size(&h) <= CONTEXT_HEADERS_MAX_BYTES, "{}", size(&h));
        assert!(get(&h, "exception.message").ends_with("..."));
        assert_eq!(get(&h, "topic"), "orders", "the coordinates stay");
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
        let h = dead_letter_headers(&record, &failure, "src", 0, ConverterMessages::Sluice);
        assert!(
            h.iter()
                .all(|(k, _)| !k.ends_with(".partition") && !k.ends_with(".offset"))
        );
    }
}
