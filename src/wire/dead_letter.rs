//! The error context a dead letter carries, between the task that writes it and the operator and replay
//! pods that read it: Kafka Connect's `__connect.errors.*` headers (strings, see [`crate::task::dlq`]) and,
//! when a Connector asks for them, Spring Kafka's `DeadLetterPublishingRecoverer` headers, in Spring's
//! encodings (checked against Spring Kafka's `DeadLetterPublishingRecoverer` and `KafkaHeaders`):
//!
//! | header | value |
//! | --- | --- |
//! | `kafka_dlt-exception-fqcn` (`kafka_dlt-key-exception-fqcn` for a key's failure) | class name, UTF-8 |
//! | `kafka_dlt-exception-message` (`…-key-exception-message`) | message, UTF-8; absent without one |
//! | `kafka_dlt-exception-stacktrace` (`…-key-exception-stacktrace`) | stack trace, UTF-8 |
//! | `kafka_dlt-original-topic` | topic, UTF-8 |
//! | `kafka_dlt-original-partition` | 4-byte big-endian int |
//! | `kafka_dlt-original-offset` | 8-byte big-endian long |
//! | `kafka_dlt-original-timestamp` | 8-byte big-endian long, ms since the epoch |
//! | `kafka_dlt-original-timestamp-type` | `CreateTime`, `LogAppendTime` or `NoTimestampType`, UTF-8 |
//! | `kafka_dlt-original-consumer-group` | the sink's consumer group, UTF-8 |
//!
//! Readers take Connect's header where there is one and Spring's otherwise ([`error_context`]).

/// Spring Kafka's prefix of dead-letter headers (`KafkaHeaders.PREFIX` + `dlt-`).
pub const SPRING_PREFIX: &str = "kafka_dlt-";

/// The Spring headers for a failed record, in the order Spring adds them (exception first, then the
/// original record). `key_failure`: the key could not be read (Spring's key-exception variants).
pub struct SpringContext<'a> {
    pub exception_class: &'a str,
    pub message: &'a str,
    pub stacktrace: &'a str,
    pub key_failure: bool,
    pub topic: &'a str,
    /// Where a consumed record was (a source record has no such place).
    pub consumed: Option<Consumed>,
    pub consumer_group: Option<&'a str>,
}

/// A consumed record's partition, offset and timestamp.
#[derive(Clone, Copy, Debug)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, and whether it is the broker's `LogAppendTime`.
    pub timestamp: Option<(i64, bool)>,
}

impl SpringContext<'_> {
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let exception = if self.key_failure {
            "key-exception"
        } else {
            "exception"
        };
        let mut h: Vec<(String, Vec<u8>)> = vec![(
            format!("{SPRING_PREFIX}{exception}-fqcn"),
            self.exception_class.as_bytes().to_vec(),
        )];
        if !self.message.is_empty() {
            h.push((
                format!("{SPRING_PREFIX}{exception}-message"),
                self.message.as_bytes().to_vec(),
            ));
        }
        h.push((
            format!("{SPRING_PREFIX}{exception}-stacktrace"),
            self.stacktrace.as_bytes().to_vec(),
        ));
        h.push((
            format!("{SPRING_PREFIX}original-topic"),
            self.topic.as_bytes().to_vec(),
        ));
        if let Some(Consumed {
            partition,
            offset,
            timestamp,
        }) = self.consumed
        {
            h.push((
                format!("{SPRING_PREFIX}original-partition"),
                partition.to_be_bytes().to_vec(),
            ));
            h.push((
                format!("{SPRING_PREFIX}original-offset"),
                offset.to_be_bytes().to_vec(),
            ));
            let (ms, kind) = match timestamp {
                Some((ms, true)) => (ms, "LogAppendTime"),
                Some((ms, false)) => (ms, "CreateTime"),
                None => (-1, "NoTimestampType"),
            };
            h.push((
                format!("{SPRING_PREFIX}original-timestamp"),
                ms.to_be_bytes().to_vec(),
            ));
            h.push((
                format!("{SPRING_PREFIX}original-timestamp-type"),
                kind.as_bytes().to_vec(),
            ));
        }
        if let Some(group) = self.consumer_group {
            h.push((
                format!("{SPRING_PREFIX}original-consumer-group"),
                group.as_bytes().to_vec(),
            ));
        }
        h
    }
}

/// A Spring header as the Connect context it stands for (the name after `__connect.errors.`, and the value
/// as Connect writes it): `topic`, `partition`, `offset`, `exception.class.name`, `exception.message`.
pub fn context_from_spring(name: &str, value: &[u8]) -> Option<(&'static str, String)> {
    let text = || String::from_utf8_lossy(value).into_owned();
    let rest = name.strip_prefix(SPRING_PREFIX)?;
    Some(match rest {
        "original-topic" => ("topic", text()),
        "original-partition" => (
            "partition",
            i32::from_be_bytes(value.try_into().ok()?).to_string(),
        ),
        "original-offset" => (
            "offset",
            i64::from_be_bytes(value.try_into().ok()?).to_string(),
        ),
        "exception-fqcn" | "key-exception-fqcn" => ("exception.class.name", text()),
        "exception-message" | "key-exception-message" => ("exception.message", text()),
        _ => return None,
    })
}

/// A dead letter's error context, keyed by Connect's header names (`__connect.errors.topic`, …): Connect's
/// headers (the last of a repeated one), and for what they lack, the Spring headers that stand for it. What
/// DeadLetterQueue inspection and replay read.
pub fn error_context<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> std::collections::BTreeMap<String, String> {
    let mut connect = std::collections::BTreeMap::new();
    let mut spring = std::collections::BTreeMap::new();
    for (key, value) in headers {
        if key.starts_with(crate::names::DEAD_LETTER_HEADER_PREFIX) {
            let text = value.map(|v| String::from_utf8_lossy(v).into_owned());
            connect.insert(key.to_string(), text.unwrap_or_default());
        } else if let Some((name, text)) = value.and_then(|v| context_from_spring(key, v)) {
            spring.insert(
                format!("{}{name}", crate::names::DEAD_LETTER_HEADER_PREFIX),
                text,
            );
        }
    }
    for (k, v) in spring {
        connect.entry(k).or_insert(v);
    }
    connect
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spring_headers_are_spring_kafka_s_names_and_encodings() {
        let ctx = SpringContext {
            exception_class: "org.apache.kafka.connect.errors.DataException",
            message: "value is not JSON",
            stacktrace: "trace",
            key_failure: false,
            topic: "orders",
            consumed: Some(Consumed {
                partition: 2,
                offset: 258,
                timestamp: Some((1_700_000_000_123, false)),
            }),
            consumer_group: Some("sluice-shop-orders"),
        };
        let h = ctx.headers();
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        // KafkaHeaders.DLT_* (PREFIX "kafka_"), in DeadLetterPublishingRecoverer's order.
        assert_eq!(
            names,
            [
                "kafka_dlt-exception-fqcn",
                "kafka_dlt-exception-message",
                "kafka_dlt-exception-stacktrace",
                "kafka_dlt-original-topic",
                "kafka_dlt-original-partition",
                "kafka_dlt-original-offset",
                "kafka_dlt-original-timestamp",
                "kafka_dlt-original-timestamp-type",
                "kafka_dlt-original-consumer-group",
            ]
        );
        let get = |n: &str| h.iter().find(|(k, _)| k == n).unwrap().1.clone();
        // ByteBuffer.allocate(Integer.BYTES).putInt(2).array() and putLong(258): big-endian.
        assert_eq!(get("kafka_dlt-original-partition"), [0, 0, 0, 2]);
        assert_eq!(get("kafka_dlt-original-offset"), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            get("kafka_dlt-original-timestamp"),
            1_700_000_000_123_i64.to_be_bytes()
        );
        // TimestampType.toString() is its name.
        assert_eq!(get("kafka_dlt-original-timestamp-type"), b"CreateTime");
        // A key's failure uses the key variants; no message, no message header.
        let key = SpringContext {
            key_failure: true,
            message: "",
            consumed: None,
            consumer_group: None,
            ..ctx
        };
        let names: Vec<String> = key.headers().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "kafka_dlt-key-exception-fqcn",
                "kafka_dlt-key-exception-stacktrace",
                "kafka_dlt-original-topic"
            ]
        );
    }

    #[test]
    fn spring_headers_read_back_as_connect_context() {
        assert_eq!(
            context_from_spring("kafka_dlt-original-partition", &[0, 0, 0, 2]),
            Some(("partition", "2".into()))
        );
        assert_eq!(
            context_from_spring("kafka_dlt-original-offset", &258_i64.to_be_bytes()),
            Some(("offset", "258".into()))
        );
        assert_eq!(
            context_from_spring("kafka_dlt-key-exception-fqcn", b"X"),
            Some(("exception.class.name", "X".into()))
        );
        assert_eq!(
            context_from_spring("kafka_dlt-original-partition", &[1]),
            None
        );
        assert_eq!(context_from_spring("trace-id", b"t"), None);
        let both = error_context([
            ("__connect.errors.topic", Some(&b"orders"[..])),
            ("kafka_dlt-original-topic", Some(&b"other"[..])),
            ("kafka_dlt-original-offset", Some(&7_i64.to_be_bytes()[..])),
        ]);
        assert_eq!(both["__connect.errors.topic"], "orders", "Connect's first");
        assert_eq!(
            both["__connect.errors.offset"], "7",
            "Spring's for what Connect's lack"
        );
    }
}
