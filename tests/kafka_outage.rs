//! A Kafka outage long enough that the source's produce calls fail (`message.timeout.ms` passes while the
//! broker is down): the task waits it out as an outage of Kafka — reported on `/v1/status` as
//! `KafkaUnavailable` material — loses nothing and counts no record error. It stops the environment's only
//! broker, so it runs in a test binary of its own (cargo runs test binaries one after another). Before the
//! source replaced a producer whose sends time out (`src/kafka/renewing.rs`), the source stayed stalled
//! after the broker was back in 3 of 17 runs, and this test failed then.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use rdkafka::message::Message;
use support::{Env, TaskProcess, restart_kafka, topic_reader, unique, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// How long the broker stays down: well past the source producer's `message.timeout.ms` (3 s; its
/// `request.timeout.ms` below that, as librdkafka expects). The idempotent producer's first send fails 3 to
/// 12 s after the broker went (14 runs here): librdkafka retries what was in flight before it times out.
const DOWN_SECONDS: u64 = 20;

#[tokio::test]
async fn a_kafka_outage_is_waited_out_reported_and_loses_no_event() {
    let Some(env) = Env::get() else { return };
    let (db, partition) = (unique("kafka-down"), unique("kafka-down"));
    let topic = format!("cdc.{db}.orders");
    let config = format!(
        "type: mongodb-source\nconnector: {partition}\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}', properties: {{message.timeout.ms: '3000', request.timeout.ms: '1500'}}}}\n\
         mongodb: {{database: {db}, collection: orders}}\n\
         source:\n  spec: {{topicPrefix: cdc, heartbeat: {{intervalMs: 0}}}}\n  offsetPartitionName: {partition}\n  \
         offsetStorageTopic: sluice-offsets\n  startupMode: latest\n\
         errors:\n  spec: {{retryDelayMaxMs: 1000}}",
        env.kafka_bootstrap
    );
    let task = TaskProcess::start(&env, &partition, &config, &env.mongodb_uri);
    wait_for("the task to run", WAIT, || async {
        match task.get("/healthz").await.as_deref() {
            Some("running") => Ok(()),
            other => Err(format!("{other:?}; log:\n{}", task.log_tail())),
        }
    })
    .await;
    let orders = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(&db)
        .collection::<Document>("orders");
    // The first event creates the topic while Kafka is up.
    orders.insert_one(doc! { "_id": 0 }).await.unwrap();
    let consumer = topic_reader(&env, &topic);
    let mut ids = BTreeSet::new();
    read_until(&consumer, &mut ids, 0..=0).await;

    // Kafka goes down; events keep coming.
    let restart = tokio::task::spawn_blocking(|| restart_kafka(DOWN_SECONDS));
    let down_at = Instant::now();
    for id in 1..=20 {
        orders.insert_one(doc! { "_id": id }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = None;
    while seen.is_none() && down_at.elapsed() < Duration::from_secs(DOWN_SECONDS) {
        let status = task.status().await.unwrap_or_default();
        if status["outage"]["dependency"] == "Kafka" {
            seen = Some(status["outage"].clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    restart.await.unwrap();
    let outage =
        seen.unwrap_or_else(|| panic!("no Kafka outage on /v1/status:\n{}", task.log_tail()));
    assert!(outage["since"].is_string(), "{outage}");
    no_record_error(&task).await;

    // Every event arrives once Kafka is back, and the outage clears.
    let back = Instant::now();
    read_until(&consumer, &mut ids, 0..=20).await;
    println!(
        "every event arrived {:?} after the broker served again",
        back.elapsed()
    );
    wait_for("the outage to clear", WAIT, || async {
        let status = task.status().await.unwrap_or_default();
        match status.get("outage") {
            None => Ok(()),
            Some(o) => Err(format!("{o}")),
        }
    })
    .await;
    no_record_error(&task).await;
}

/// The task counted no record error and skipped nothing: an outage is not a record error.
async fn no_record_error(task: &TaskProcess) {
    let errors = &task.status().await.unwrap()["errors"];
    assert_eq!(
        (
            errors["totalRecordErrors"].as_i64(),
            errors["totalRecordsSkipped"].as_i64()
        ),
        (Some(0), Some(0)),
        "an outage is not a record error: {errors}"
    );
}

/// Reads change events into `ids` until every id of `want` arrived.
async fn read_until(
    consumer: &rdkafka::consumer::StreamConsumer,
    ids: &mut BTreeSet<i64>,
    want: std::ops::RangeInclusive<i64>,
) {
    let deadline = Instant::now() + WAIT;
    while want.clone().any(|i| !ids.contains(&i)) {
        assert!(
            Instant::now() < deadline,
            "events missing: {:?}",
            want.clone()
                .filter(|i| !ids.contains(i))
                .collect::<Vec<_>>()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            ids.insert(document_id(m.payload()));
        }
    }
}

/// The `documentKey._id` of a change event.
fn document_id(payload: Option<&[u8]>) -> i64 {
    let value: serde_json::Value =
        serde_json::from_slice(payload.unwrap_or_default()).unwrap_or_default();
    value["documentKey"]["_id"].as_i64().unwrap_or(-1)
}
