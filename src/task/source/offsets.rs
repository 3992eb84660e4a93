//! A source's offsets: the resume token stored in the offsets topic under Kafka Connect's offset key
//! `["<namespace>/<connector>", {"ns": "<partition name>"}]` (value `{"_id": "<token JSON>"}`), read back at
//! start (the last value of the key; a tombstone means none) and written after every acknowledged batch,
//! with the task's error counters beside it (`"sluice": {"errors": {…}}`, see [`crate::task::ledger`]).
//! Before its first token a stream's start is stored the same way, as an operation time
//! (`"sluice": {"startAtOperationTime": {"t": <seconds>, "i": <increment>}}`, no `_id`: a value Kafka Connect
//! would read as none, and start afresh).
//! An exactly-once task writes it in the batch's transaction; every source reads it `read_committed`.

use std::time::Duration;

use mongodb::bson::Timestamp;
use mongodb::change_stream::event::ResumeToken;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureRecord;

use super::Source;
use super::oplog::{rfc3339, token_cluster_time};
use crate::crd::connector::ErrorCounters;
use crate::kafka::read;
use crate::kafka::{Credentials, consumer_config};
use crate::names;
use crate::task::failure::{Failure, Stage};
use crate::task::ledger::Stored;

/// How long reading the stored offset may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn token_json(token: &ResumeToken) -> String {
    serde_json::to_string(token).unwrap_or_default()
}

/// Where a source's change stream resumes: after a resume token, or, before the stream's first token, at
/// the operation time it started at.
#[derive(Clone, Debug)]
pub(super) enum ResumePoint {
    After(ResumeToken),
    At(Timestamp),
}

impl ResumePoint {
    /// The cluster time (seconds) the point stands at, when it tells.
    pub(super) fn time(&self) -> Option<u32> {
        match self {
            ResumePoint::After(token) => token_cluster_time(&token_json(token)),
            ResumePoint::At(t) => Some(t.time),
        }
    }
}

impl Source {
    fn offset_key(&self) -> String {
        names::source_offset_key(
            &self.cfg.namespace,
            &self.cfg.connector,
            &self.source.offset_partition_name,
        )
    }

    /// The stored resume point of this partition name and the ledger stored with it, read from the
    /// offsets topic (one attempt). It is read `read_committed`, past every record written before the
    /// read: an exactly-once task's token counts once its transaction committed, and the read waits for a
    /// transaction still open (a task that died in one: until the broker aborts it, or that task starts
    /// again and aborts it).
    pub(super) async fn stored_token(&self) -> Result<StoredOffset, Failure> {
        let topic = self.source.offset_storage_topic.clone();
        self.ensure_topic(&topic, true).await?;
        let key = self.offset_key();
        let config = consumer_config(&self.cfg.kafka, Credentials::Env);
        let client_id = names::task_client_id(&self.cfg.connector, self.cfg.task_id);
        tokio::task::spawn_blocking(move || read_latest(&config, &client_id, &topic, &key))
            .await
            .map_err(|e| Failure::new(Stage::KafkaConsume, "JoinError", e.to_string(), false))?
    }

    /// The offset record that stores `point`, which stands at cluster time `at` (seconds) when it does not
    /// tell, with the ledger of what was counted up to now.
    pub(super) fn offset_record(&self, point: &ResumePoint, at: Option<u32>) -> OffsetRecord {
        let partition = &self.source.offset_partition_name;
        let ledger = self.metrics.ledger.to_store(partition).unwrap_or_default();
        let position = self.metrics.ledger.position(partition).unwrap_or(0) + 1;
        let stored = Stored {
            errors: ledger.clone(),
            position: Some(position),
        };
        let time = point
            .time()
            .or(at)
            .map(i64::from)
            .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().as_second());
        OffsetRecord {
            key: self.offset_key(),
            value: offset_value(point, &stored).to_string(),
            position,
            ledger,
            time,
        }
    }

    /// Sends `record` to the offsets topic and waits for the broker (in an exactly-once task's
    /// transaction, the commit makes it count).
    pub(super) async fn send_offset(&self, record: &OffsetRecord) -> Result<(), Failure> {
        self.send(
            FutureRecord::to(&self.source.offset_storage_topic)
                .key(&record.key)
                .payload(&record.value),
        )
        .await
    }

    /// `record` is stored: its ledger and token time are the task's now.
    pub(super) fn offset_stored(&self, record: OffsetRecord) {
        self.metrics
            .update_resume_token(|r| r.time = Some(rfc3339(record.time)));
        self.metrics.ledger.stored(
            &self.source.offset_partition_name,
            record.position,
            record.ledger,
        );
    }

    /// Stores `point`, which stands at cluster time `at` (seconds), in the offsets topic (one attempt).
    pub(super) async fn store_point(
        &self,
        point: &ResumePoint,
        at: Option<u32>,
    ) -> Result<(), Failure> {
        let record = self.offset_record(point, at);
        self.send_offset(&record).await?;
        self.offset_stored(record);
        Ok(())
    }
}

/// A source's offset record: the token and ledger under the task's offset key.
pub(super) struct OffsetRecord {
    key: String,
    value: String,
    position: i64,
    ledger: ErrorCounters,
    /// The cluster time the token points at (seconds).
    time: i64,
}

/// The field of a stored start point in the `sluice` object of an offset value.
const START_AT: &str = "startAtOperationTime";

/// What the offsets topic holds for a source's partition name: the resume point (`None`: start afresh)
/// and the error counters stored with it (zero for a value sluice did not write).
#[derive(Debug, Default)]
pub(super) struct StoredOffset {
    pub point: Option<ResumePoint>,
    pub ledger: ErrorCounters,
    /// How many times a token was stored with the ledger (the ledger's position).
    pub position: i64,
}

/// The last committed value stored under `key` in the offsets topic, read from its start to its end
/// (blocking).
fn read_latest(
    config: &ClientConfig,
    client_id: &str,
    topic: &str,
    key: &str,
) -> Result<StoredOffset, Failure> {
    let group = names::OFFSET_READER_GROUP;
    let latest = read::latest_committed_values(
        config,
        group,
        client_id,
        topic,
        READ_TIMEOUT,
        |k| k == key.as_bytes(),
    )
    .map_err(|e| Failure::kafka(Stage::KafkaConsume, &e))?
    .ok_or_else(|| {
        let mut f = Failure::new(
            Stage::KafkaConsume,
            "org.apache.kafka.common.errors.TimeoutException",
            format!(
                "offsets topic {topic}: a transaction stayed open for {}s (a task that died in one \
                 holds it until the broker aborts it after its transaction.timeout.ms)",
                READ_TIMEOUT.as_secs()
            ),
            true,
        );
        f.outage = Some(crate::task::failure::Dependency::Kafka);
        f
    })?;
    let Some(Some(value)) = latest.into_values().next() else {
        return Ok(StoredOffset::default());
    };
    parse_stored(&value)
}

/// The offset value of `point` with the ledger `stored`.
fn offset_value(point: &ResumePoint, stored: &Stored) -> serde_json::Value {
    match point {
        ResumePoint::After(token) => {
            serde_json::json!({ "_id": token_json(token), "sluice": stored })
        }
        ResumePoint::At(t) => {
            let mut sluice = serde_json::to_value(stored).unwrap_or_default();
            sluice[START_AT] = serde_json::json!({ "t": t.time, "i": t.increment });
            serde_json::json!({ "sluice": sluice })
        }
    }
}

/// A stored offset value: `{"_id": "<token JSON>"}` as Kafka Connect's MongoDB source writes it, with
/// sluice's ledger beside it when sluice wrote it, or sluice's start point of a stream without a token.
fn parse_stored(value: &[u8]) -> Result<StoredOffset, Failure> {
    let parsed: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
        Failure::conversion(
            Stage::KafkaConsume,
            format!("stored offset is not JSON: {e}"),
        )
    })?;
    let token = parsed["_id"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
        .map(ResumePoint::After);
    let start = &parsed["sluice"][START_AT];
    let start = match (start["t"].as_u64(), start["i"].as_u64()) {
        (Some(t), Some(i)) => Some(ResumePoint::At(Timestamp {
            time: u32::try_from(t).unwrap_or(u32::MAX),
            increment: u32::try_from(i).unwrap_or(u32::MAX),
        })),
        _ => None,
    };
    Ok(StoredOffset {
        point: token.or(start),
        ..serde_json::from_value::<Stored>(parsed["sluice"].clone())
            .map(|s| StoredOffset {
                point: None,
                ledger: s.errors,
                position: s.position.unwrap_or(0),
            })
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_offset_reads_back_with_its_ledger_and_connect_s_without() {
        let token = r#"{"_data":"8263"}"#;
        let stored = Stored {
            errors: ErrorCounters {
                total_record_errors: 2,
                ..Default::default()
            },
            position: Some(9),
        };
        let point = ResumePoint::After(serde_json::from_str(token).unwrap());
        let value = offset_value(&point, &stored).to_string();
        let back = parse_stored(value.as_bytes()).unwrap();
        let Some(ResumePoint::After(back_token)) = &back.point else {
            panic!("{:?}", back.point)
        };
        assert_eq!(token_json(back_token), token);
        assert_eq!((back.ledger.total_record_errors, back.position), (2, 9));
        // Kafka Connect's value: the token, and a ledger that starts at zero.
        let connect = serde_json::json!({ "_id": token }).to_string();
        let back = parse_stored(connect.as_bytes()).unwrap();
        assert!(matches!(back.point, Some(ResumePoint::After(_))));
        assert_eq!((back.ledger, back.position), (ErrorCounters::default(), 0));
        assert!(parse_stored(b"{not json").is_err());
    }

    #[test]
    fn a_stored_start_point_reads_back_as_an_operation_time_with_its_ledger() {
        let stored = Stored {
            errors: ErrorCounters::default(),
            position: Some(1),
        };
        let at = Timestamp {
            time: 1_796_312_512,
            increment: 14,
        };
        let value = offset_value(&ResumePoint::At(at), &stored);
        assert!(
            value.get("_id").is_none(),
            "Kafka Connect reads no token: {value}"
        );
        let back = parse_stored(value.to_string().as_bytes()).unwrap();
        assert!(
            matches!(back.point, Some(ResumePoint::At(t)) if t == at),
            "{back:?}"
        );
        assert_eq!(back.position, 1);
    }
}
