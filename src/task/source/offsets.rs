//! A source's offsets: the resume token stored in the offsets topic under Kafka Connect's offset key
//! `["<namespace>/<connector>", {"ns": "<partition name>"}]` (value `{"_id": "<token JSON>"}`), read back at
//! start (the last value of the key; a tombstone means none) and written after every acknowledged batch.

use std::time::Duration;

use mongodb::change_stream::event::ResumeToken;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureRecord;

use super::Source;
use super::oplog::{rfc3339, token_cluster_time};
use crate::kafka::read;
use crate::kafka::{Credentials, consumer_config};
use crate::names;
use crate::task::failure::{Failure, Stage};

/// How long reading the stored offset may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn token_json(token: &ResumeToken) -> String {
    serde_json::to_string(token).unwrap_or_default()
}

impl Source {
    fn offset_key(&self) -> String {
        names::source_offset_key(
            &self.cfg.namespace,
            &self.cfg.connector,
            &self.source.offset_partition_name,
        )
    }

    /// The stored resume token of this partition name, read from the offsets topic (one attempt).
    pub(super) async fn stored_token(&self) -> Result<Option<ResumeToken>, Failure> {
        let topic = self.source.offset_storage_topic.clone();
        self.ensure_topic(&topic, true).await?;
        let key = self.offset_key();
        let config = consumer_config(&self.cfg.kafka, Credentials::Env);
        let client_id = names::task_client_id(&self.cfg.connector, self.cfg.task_id);
        tokio::task::spawn_blocking(move || {
            let consumer = read::reader(&config, names::OFFSET_READER_GROUP, &client_id)
                .map_err(|e| Failure::kafka(Stage::KafkaConsume, &e))?;
            read_latest(&consumer, &topic, &key)
        })
        .await
        .map_err(|e| Failure::new(Stage::KafkaConsume, "JoinError", e.to_string(), false))?
    }

    /// Stores `token`, which points at cluster time `at` (seconds), in the offsets topic (one attempt).
    pub(super) async fn store_token(
        &self,
        token: &ResumeToken,
        at: Option<u32>,
    ) -> Result<(), Failure> {
        let key = self.offset_key();
        let json = token_json(token);
        let value = serde_json::json!({ "_id": json }).to_string();
        let time = token_cluster_time(&json)
            .or(at)
            .map(i64::from)
            .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().as_second());
        self.metrics
            .update_resume_token(|r| r.time = Some(rfc3339(time)));
        self.producer
            .send(
                FutureRecord::to(&self.source.offset_storage_topic)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| Failure::kafka(Stage::KafkaProduce, &e))
    }
}

/// The last value stored under `key` in the offsets topic, read from its start to its end (blocking).
fn read_latest(
    consumer: &BaseConsumer,
    topic: &str,
    key: &str,
) -> Result<Option<ResumeToken>, Failure> {
    let latest = read::latest_values(consumer, topic, READ_TIMEOUT, |k| k == key.as_bytes())
        .map_err(|e| Failure::kafka(Stage::KafkaConsume, &e))?;
    let Some(Some(value)) = latest.into_values().next() else {
        return Ok(None);
    };
    let parsed: serde_json::Value = serde_json::from_slice(&value).map_err(|e| {
        Failure::conversion(
            Stage::KafkaConsume,
            format!("stored offset is not JSON: {e}"),
        )
    })?;
    Ok(parsed["_id"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok()))
}
