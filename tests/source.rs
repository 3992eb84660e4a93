//! The MongoDB source task end to end against mongo-java-server's change streams, Apache Kafka and the
//! fault peer: events in order, resuming from the stored token after a restart, copyExisting, heartbeats,
//! and a lost resume point ending the task with its termination message and without a retry storm.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{Value, json};
use support::{Env, TaskProcess, count_committed, topic_reader, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn config(env: &Env, db: &str, partition: &str, source: &str) -> String {
    format!(
        "type: mongodb-source\nconnector: {partition}\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         source:\n  spec: {{topicPrefix: cdc, {source}}}\n  offsetPartitionName: {partition}\n  \
         offsetStorageTopic: sluice-offsets\n  startupMode: {}\n\
         errors:\n  spec: {{}}",
        env.kafka_bootstrap,
        if source.contains("copyExisting") {
            "copyExisting"
        } else {
            "latest"
        }
    )
}

/// Every record of a topic (from its start), once at least `n` arrived and no more came for a moment.
async fn records(env: &Env, topic: &str, n: usize) -> Vec<(String, Value)> {
    read_topic(env, topic, n, true).await
}

/// The first `n` records of a topic, or with `settle` all of them once no more came for a moment.
async fn read_topic(env: &Env, topic: &str, n: usize, settle: bool) -> Vec<(String, Value)> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    wait_for(&format!("topic {topic}"), WAIT, || async {
        let md = probe
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        match md.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err("not created yet".to_string()),
        }
    })
    .await;
    let consumer = topic_reader(env, topic);
    let mut out = Vec::new();
    loop {
        let wait = if out.len() < n {
            WAIT
        } else {
            Duration::from_secs(3)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(m) => {
                let m = m.unwrap();
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let value = m
                    .payload()
                    .map(|p| serde_json::from_slice(p).unwrap())
                    .unwrap_or(Value::Null);
                out.push((key, value));
                if !settle && out.len() >= n {
                    return out;
                }
            }
            Err(_) if out.len() >= n => return out,
            Err(_) => panic!("only {} of {n} records on {topic}: {out:?}", out.len()),
        }
    }
}

async fn collection(env: &Env, db: &str) -> mongodb::Collection<Document> {
    mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(db)
        .collection("orders")
}

#[tokio::test]
async fn events_arrive_in_order_and_a_restart_resumes_without_loss_or_replay() {
    let Some(env) = Env::get() else { return };
    let db = unique("src");
    let partition = unique("orders-src");
    let coll = collection(&env, &db).await;
    coll.insert_one(doc! { "_id": 0, "item": "before the connector" })
        .await
        .unwrap();
    let cfg = config(&env, &db, &partition, "heartbeat: {intervalMs: 0}");
    let mut task = TaskProcess::start(&env, &partition, &cfg, &env.mongodb_uri);
    task.wait_running().await;

    coll.insert_one(doc! { "_id": 1, "item": "apple" })
        .await
        .unwrap();
    coll.insert_one(doc! { "_id": 2, "item": "pear" })
        .await
        .unwrap();
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "qty": 5 } })
        .await
        .unwrap();
    coll.delete_one(doc! { "_id": 2 }).await.unwrap();
    let topic = format!("cdc.{db}.orders");
    let got = records(&env, &topic, 4).await;
    let ops: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["operationType"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["insert", "insert", "update", "delete"],
        "latest: nothing from before the start, in order"
    );
    assert_eq!(
        got[0].1["fullDocument"],
        json!({ "_id": 1, "item": "apple" })
    );
    assert_eq!(got[3].1["documentKey"], json!({ "_id": 2 }));
    let key: Value = serde_json::from_str(&got[0].0).unwrap();
    assert_eq!(
        key["_id"], got[0].1["_id"],
        "the key is the event's resume token"
    );
    assert_eq!(task.stop().await, 0);

    // Changes made while the task is down arrive after the restart; nothing before them is replayed.
    coll.insert_one(doc! { "_id": 3, "item": "plum" })
        .await
        .unwrap();
    let task = TaskProcess::start(&env, &format!("{partition}-2"), &cfg, &env.mongodb_uri);
    task.wait_running().await;
    coll.insert_one(doc! { "_id": 4, "item": "fig" })
        .await
        .unwrap();
    let all = records(&env, &topic, 6).await;
    let keys: BTreeSet<&String> = all.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), all.len(), "no event twice: {all:?}");
    let inserted: Vec<i64> = all
        .iter()
        .filter(|(_, v)| v["operationType"] == "insert")
        .map(|(_, v)| v["documentKey"]["_id"].as_i64().unwrap())
        .collect();
    assert_eq!(inserted, [1, 2, 3, 4]);
    let status = task.status().await.unwrap();
    assert_eq!(
        status["recordsOut"], 2,
        "the restarted task produced only the new events"
    );
}

/// A first start stores where its stream started before it reports running: a task SIGKILLed before its
/// first event resumes there, and a change made while it was down arrives (it once started at a later
/// "now" and missed it), in both delivery modes.
#[tokio::test]
async fn a_task_killed_before_its_first_event_resumes_where_its_stream_started() {
    let Some(env) = Env::get() else { return };
    for exactly_once in ["disabled", "required"] {
        let db = unique("first");
        let partition = unique("first-src");
        let coll = collection(&env, &db).await;
        coll.insert_one(doc! { "_id": 0 }).await.unwrap();
        let cfg = config(
            &env,
            &db,
            &partition,
            &format!("heartbeat: {{intervalMs: 0}}, exactlyOnce: {exactly_once}"),
        );
        let task = TaskProcess::start(&env, &partition, &cfg, &env.mongodb_uri);
        task.wait_running().await;
        drop(task); // SIGKILL: nothing streamed, nothing but the start stored
        coll.insert_one(doc! { "_id": 1 }).await.unwrap();
        let task = TaskProcess::start(&env, &format!("{partition}-2"), &cfg, &env.mongodb_uri);
        task.wait_running().await;
        coll.insert_one(doc! { "_id": 2 }).await.unwrap();
        let seen = count_committed(&env, &format!("cdc.{db}.orders"), 2).await;
        assert_eq!(
            seen,
            BTreeMap::from([(1, 1), (2, 1)]),
            "exactlyOnce {exactly_once}: the change made while the task was down, once, and nothing \
             from before its first start"
        );
    }
}

#[tokio::test]
async fn copy_existing_copies_then_streams() {
    let Some(env) = Env::get() else { return };
    let db = unique("src");
    let partition = unique("copy-src");
    let coll = collection(&env, &db).await;
    coll.insert_many([
        doc! { "_id": 1, "item": "apple" },
        doc! { "_id": 2, "item": "pear" },
    ])
    .await
    .unwrap();
    let cfg = config(
        &env,
        &db,
        &partition,
        "startup: {mode: copyExisting}, heartbeat: {intervalMs: 0}",
    );
    let task = TaskProcess::start(&env, &partition, &cfg, &env.mongodb_uri);
    task.wait_running().await;
    coll.insert_one(doc! { "_id": 3, "item": "plum" })
        .await
        .unwrap();
    let got = records(&env, &format!("cdc.{db}.orders"), 3).await;
    let docs: Vec<Value> = got
        .iter()
        .map(|(_, v)| v["fullDocument"]["_id"].clone())
        .collect();
    assert_eq!(docs, [json!(1), json!(2), json!(3)]);
    assert_eq!(
        got[0].1["_id"]["copyingData"], true,
        "copied documents are marked"
    );
    assert!(
        got[2].1["_id"].get("copyingData").is_none(),
        "then the stream"
    );
}

#[tokio::test]
async fn heartbeats_advance_the_stored_token_on_an_idle_collection() {
    let Some(env) = Env::get() else { return };
    let db = unique("src");
    let partition = unique("hb-src");
    let heartbeats = unique("heartbeats");
    // A replica set reports a post-batch resume token on every empty getMore; the fault peer adds it.
    env.fault_peer_rule(json!({ "command": "getMore", "database": db, "collection": "orders", "postBatchResumeToken": "clock" }))
        .await;
    let cfg = config(
        &env,
        &db,
        &partition,
        &format!("heartbeat: {{intervalMs: 500, topic: {heartbeats}}}"),
    );
    let coll = collection(&env, &db).await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    // The fault peer's token stands for the start of the current second: keep the heartbeats' second
    // after this insert's, or resuming from them replays it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut task = TaskProcess::start(&env, &partition, &cfg, &env.fault_peer_uri);
    task.wait_running().await;
    let beats = read_topic(&env, &heartbeats, 1, false).await;
    let (key, value) = &beats[0];
    assert_eq!(
        serde_json::from_str::<Value>(key).unwrap(),
        json!({ "partition": partition })
    );
    assert!(
        value["_id"].as_str().is_some_and(|t| t.contains("_data")),
        "{value}"
    );
    assert_eq!(task.stop().await, 0);

    // The heartbeat's token is where a restarted task resumes: a change made while it was down arrives,
    // although the startup mode (latest) alone would skip it.
    // Wall-clock time must pass (nothing to poll for): past the heartbeat token's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    coll.insert_one(doc! { "_id": 1, "item": "while down" })
        .await
        .unwrap();
    let task = TaskProcess::start(&env, &format!("{partition}-2"), &cfg, &env.fault_peer_uri);
    task.wait_running().await;
    let got = records(&env, &format!("cdc.{db}.orders"), 1).await;
    assert_eq!(
        got[0].1["fullDocument"],
        json!({ "_id": 1, "item": "while down" })
    );
}

#[tokio::test]
async fn a_lost_resume_point_ends_the_task_with_its_termination_message_and_no_retry_storm() {
    let Some(env) = Env::get() else { return };
    let db = unique("src");
    let partition = unique("lost-src");
    let rule = env
        .fault_peer_rule(json!({
            "command": "aggregate", "changeStream": true, "database": db,
            "reply": { "ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost",
                       "errmsg": "Resume of change stream was not possible, as the resume point may no longer be in the oplog." }
        }))
        .await;
    let cfg = config(&env, &db, &partition, "heartbeat: {intervalMs: 0}");
    let mut task = TaskProcess::start(&env, &partition, &cfg, &env.fault_peer_uri);
    assert_eq!(
        task.wait_exit(WAIT).await,
        4,
        "the dedicated exit code; log:\n{}",
        task.log_tail()
    );
    let m = task.termination_message();
    assert_eq!(m["reason"], "ResumeTokenLost");
    assert_eq!(m["code"], 286);
    assert_eq!(m["codeName"], "ChangeStreamHistoryLost");
    assert_eq!(m["partitionName"], partition);
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains("resume point may no longer be in the oplog"),
        "{m}"
    );
    // This task's change-stream opens (other tests share the fault peer: count this rule's matches only).
    let rules = env.fault_peer_rules().await;
    let opens = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == rule)
        .map(|r| r["seen"].clone());
    assert_eq!(
        opens,
        Some(json!(1)),
        "one attempt: the lost token is never retried"
    );
}

#[tokio::test]
async fn a_stream_error_right_after_a_resume_reopens_from_the_stored_token_and_loses_nothing() {
    let Some(env) = Env::get() else { return };
    let db = unique("src");
    let partition = unique("reopen-src");
    let topic = format!("cdc.{db}.orders");
    let coll = collection(&env, &db).await;
    let cfg = config(&env, &db, &partition, "heartbeat: {intervalMs: 0}");
    let mut first = TaskProcess::start(&env, &partition, &cfg, &env.fault_peer_uri);
    first.wait_running().await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    read_topic(&env, &topic, 1, false).await;
    assert_eq!(first.stop().await, 0, "{}", first.log_tail());

    // A change while no task runs; then a restart whose reads fail for four seconds with an error the
    // driver does not resume by itself (no ResumableChangeStreamError label), so the task reopens the
    // stream, again and again. A change made meanwhile arrives when it reopens from the stored token; from
    // "now" (nothing stored yet in this process) it would be lost.
    coll.insert_one(doc! { "_id": 1, "item": "while down" })
        .await
        .unwrap();
    let rule = env
        .fault_peer_rule(json!({ "command": "getMore", "database": db, "forMs": 4000,
            "reply": { "ok": 0, "code": 91, "codeName": "ShutdownInProgress",
                       "errmsg": "The server is in quiesce mode and will shut down" } }))
        .await;
    let task = TaskProcess::start(&env, &partition, &cfg, &env.fault_peer_uri);
    wait_for("a failed read", WAIT, || async {
        let rules = env.fault_peer_rules().await;
        let fired = rules
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["id"] == rule))
            .map(|r| r["fired"].as_u64().unwrap_or(0));
        match fired {
            Some(n) if n >= 1 => Ok(()),
            other => Err(format!("fired {other:?}")),
        }
    })
    .await;
    coll.insert_one(doc! { "_id": 2, "item": "while the reads fail" })
        .await
        .unwrap();
    let got = records(&env, &topic, 3).await;
    let ids: Vec<&Value> = got.iter().map(|(_, v)| &v["documentKey"]["_id"]).collect();
    assert_eq!(
        ids,
        [&json!(0), &json!(1), &json!(2)],
        "{}",
        task.log_tail()
    );
}

#[tokio::test]
async fn a_malformed_start_at_operation_time_fails_the_task_at_start() {
    let Some(env) = Env::get() else { return };
    let db = unique("src");
    let partition = unique("ts-src");
    let cfg = config(
        &env,
        &db,
        &partition,
        "startup: {mode: timestamp, startAtOperationTime: yesterday}",
    )
    .replace("startupMode: latest", "startupMode: timestamp");
    let mut task = TaskProcess::start(&env, &partition, &cfg, &env.mongodb_uri);
    assert_eq!(
        task.wait_exit(WAIT).await,
        2,
        "a config error; log:\n{}",
        task.log_tail()
    );
    let m = task.termination_message();
    assert_eq!(m["reason"], "ConfigInvalid");
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains("startAtOperationTime"),
        "{m}"
    );
}
