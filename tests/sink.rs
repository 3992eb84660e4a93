//! The MongoDB sink task end to end against Apache Kafka, mongo-java-server and the fault peer: records land
//! per write model; poison records and failed bulk indexes go to the dead-letter topic with Kafka Connect's
//! context headers; retriable errors are retried; `tolerance: none` ends the task with a termination
//! message; the counters on `/v1/status` and `/metrics` match what happened.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use support::{
    Env, TaskProcess, create_topic, create_topic_with, dead_letter_messages, holds_for,
    topic_reader, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

fn task_config(topic: &str, db: &str, sink: &str, errors: &str, dlq: Option<&str>) -> String {
    let dlq = dlq
        .map(|t| format!("\n  deadLetterRoutes: [{{topic: {t}, contextHeadersEnable: true}}]"))
        .unwrap_or_default();
    format!(
        "type: mongodb-sink\nconnector: orders-sink\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{{KAFKA}}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         sink: {{topics: [{topic}], {sink}}}\nerrors:\n  spec: {{{errors}}}{dlq}"
    )
}

fn config(env: &Env, topic: &str, db: &str, sink: &str, errors: &str, dlq: Option<&str>) -> String {
    task_config(topic, db, sink, errors, dlq).replace("{KAFKA}", &env.kafka_bootstrap)
}

async fn produce(env: &Env, topic: &str, records: &[(&str, &str)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    for (key, value) in records {
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace-id",
            value: Some("t-1"),
        });
        producer
            .send(
                FutureRecord::to(topic)
                    .key(*key)
                    .payload(*value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

struct DeadLetter {
    key: Option<String>,
    value: Option<String>,
    headers: BTreeMap<String, String>,
    timestamp: rdkafka::Timestamp,
}

/// Reads `n` records of a dead-letter topic from its start.
async fn dead_letters(env: &Env, topic: &str, n: usize) -> Vec<DeadLetter> {
    let consumer = topic_reader(env, topic);
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("dead-letter record in time")
            .unwrap();
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        out.push(DeadLetter {
            timestamp: m.timestamp(),
            key: text(m.key()),
            value: text(m.payload()),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), text(h.value).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    // Nothing more than expected arrives.
    let more = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
    assert!(more.is_err(), "more dead letters than expected");
    out
}

async fn documents(env: &Env, db: &str, expected: usize) -> Vec<Document> {
    let client = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap();
    let coll = client.database(db).collection::<Document>("orders");
    wait_for(
        &format!("{expected} documents in {db}.orders"),
        WAIT,
        || async {
            use futures::TryStreamExt;
            let docs: Vec<Document> = coll
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .map_err(|e| e.to_string())?
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            if docs.len() == expected {
                Ok(docs)
            } else {
                Err(format!("{} documents: {docs:?}", docs.len()))
            }
        },
    )
    .await
}

async fn counters(task: &TaskProcess) -> serde_json::Value {
    task.status().await.expect("/v1/status answers")["errors"].clone()
}

#[tokio::test]
async fn records_land_as_documents_per_write_model() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    produce(
        &env,
        &topic,
        &[
            ("a", r#"{"_id": 1, "item": "apple", "qty": 1}"#),
            ("b", r#"{"_id": 2, "item": "pear"}"#),
            ("a", r#"{"_id": 1, "item": "apple", "qty": 5}"#),
        ],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: replace, documentIdStrategy: providedInValue",
        "",
        None,
    );
    let mut task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    let docs = documents(&env, &db, 2).await;
    wait_for("the replacement to land", WAIT, || async {
        let docs = documents(&env, &db, 2).await;
        if docs[0].get_i32("qty") == Ok(5) {
            Ok(())
        } else {
            Err(format!("{docs:?}"))
        }
    })
    .await;
    assert_eq!(docs[1], doc! { "_id": 2, "item": "pear" });
    let status = task.status().await.unwrap();
    assert_eq!(status["recordsIn"], 3);
    assert_eq!(status["errors"]["totalRecordErrors"], 0);
    assert_eq!(task.stop().await, 0, "SIGTERM ends the task cleanly");

    // Upsert by key merges fields into the document.
    let topic2 = unique("profiles");
    create_topic(&env, &topic2, 1).await;
    produce(
        &env,
        &topic2,
        &[
            ("u1", r#"{"name": "Ada"}"#),
            ("u1", r#"{"city": "London"}"#),
        ],
    )
    .await;
    let db2 = unique("sink");
    let cfg = config(
        &env,
        &topic2,
        &db2,
        "writeModel: upsert, documentIdStrategy: providedInKey",
        "",
        None,
    );
    let mut task = TaskProcess::start(&env, &db2, &cfg, &env.mongodb_uri);
    let docs = documents(&env, &db2, 1).await;
    wait_for("both fields merged", WAIT, || async {
        let d = documents(&env, &db2, 1).await;
        if d[0] == doc! { "_id": "u1", "name": "Ada", "city": "London" } {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await;
    assert_eq!(docs.len(), 1);
    assert_eq!(task.stop().await, 0);
}

#[tokio::test]
async fn topics_regex_matches_whole_topic_names_as_kafka_connect_does() {
    let Some(env) = Env::get() else { return };
    let base = unique("rx");
    let (eu, us, archive) = (
        format!("{base}.eu"),
        format!("{base}.us"),
        format!("{base}.eu-archive"),
    );
    for t in [&archive, &eu, &us] {
        create_topic(&env, t, 1).await;
    }
    // The archive's record first: were it subscribed, it would land no later than the others.
    produce(&env, &archive, &[("x", r#"{"_id": 0}"#)]).await;
    produce(&env, &eu, &[("a", r#"{"_id": 1}"#)]).await;
    produce(&env, &us, &[("b", r#"{"_id": 2}"#)]).await;
    let db = unique("sink");
    let cfg = config(
        &env,
        "unused",
        &db,
        "documentIdStrategy: providedInValue",
        "",
        None,
    )
    .replace(
        "sink: {topics: [unused], ",
        &format!(
            "sink: {{topicsRegex: '{}\\.(eu|us)', ",
            base.replace('-', "\\-")
        ),
    );
    let mut task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    let docs = documents(&env, &db, 2).await;
    assert_eq!(docs, [doc! { "_id": 1 }, doc! { "_id": 2 }]);
    holds_for(
        "only the two matching topics consumed",
        Duration::from_secs(3),
        || async {
            match task.status().await {
                Some(s) if s["recordsIn"] == 2 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(task.stop().await, 0);
}

#[tokio::test]
async fn a_poison_record_goes_to_the_dead_letter_topic_with_every_context_header() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(&env, &topic, 1).await;
    create_topic(&env, &dlq, 1).await;
    let db = unique("sink");
    produce(
        &env,
        &topic,
        &[
            ("k0", r#"{"item": "apple"}"#),
            ("k1", "{not json"),
            ("k2", r#"{"item": "pear"}"#),
        ],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: all, logEnable: true",
        Some(&dlq),
    );
    let task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);

    documents(&env, &db, 2).await;
    let letters = dead_letters(&env, &dlq, 1).await;
    let d = &letters[0];
    assert_eq!(d.key.as_deref(), Some("k1"), "original key");
    assert_eq!(d.value.as_deref(), Some("{not json"), "original value");
    let h = &d.headers;
    assert_eq!(h["trace-id"], "t-1", "original headers kept");
    // The original record's timestamp, as Kafka Connect keeps it; when it was dead-lettered in a header.
    let reader = topic_reader(&env, &topic);
    let original = loop {
        let m = tokio::time::timeout(WAIT, reader.recv())
            .await
            .unwrap()
            .unwrap();
        if m.offset() == 1 {
            break m.timestamp();
        }
    };
    assert!(
        matches!(original, rdkafka::Timestamp::CreateTime(_)),
        "{original:?}"
    );
    assert_eq!(d.timestamp, original, "the record's timestamp");
    let at: i64 = h["sluice.deadletter.timestamp"].parse().unwrap();
    assert!(at >= original.to_millis().unwrap(), "{at} {original:?}");
    assert_eq!(h["__connect.errors.topic"], topic);
    assert_eq!(h["__connect.errors.partition"], "0");
    assert_eq!(h["__connect.errors.offset"], "1");
    assert_eq!(h["__connect.errors.connector.name"], "orders-sink");
    assert_eq!(h["__connect.errors.task.id"], "0");
    assert_eq!(h["__connect.errors.stage"], "VALUE_CONVERTER");
    assert_eq!(
        h["__connect.errors.class.name"],
        "sluice.task.convert.Converter"
    );
    assert_eq!(
        h["__connect.errors.exception.class.name"],
        "org.apache.kafka.connect.errors.DataException"
    );
    assert!(
        h["__connect.errors.exception.message"].starts_with("value is not JSON"),
        "{h:?}"
    );
    assert!(
        h["__connect.errors.exception.stacktrace"].contains("DataException"),
        "{h:?}"
    );
    assert_eq!(
        h.keys()
            .filter(|k| k.starts_with("__connect.errors."))
            .count(),
        10
    );

    let c = wait_for("the counters", WAIT, || async {
        let c = counters(&task).await;
        if c["totalRecordsSkipped"] == 1 {
            Ok(c)
        } else {
            Err(c.to_string())
        }
    })
    .await;
    assert_eq!(c["totalRecordFailures"], 1);
    assert_eq!(c["totalRecordErrors"], 1);
    assert_eq!(c["totalErrorsLogged"], 1);
    assert_eq!(c["deadLetterQueueProduceRequests"], 1);
    assert_eq!(c["deadLetterQueueProduceFailures"], 0);
    assert_eq!(c["totalRetries"], 0);
    assert!(c["lastErrorTimestamp"].as_i64().unwrap() > 0);
    let metrics = task.get("/metrics").await.unwrap();
    assert!(metrics.contains(r#"sluice_task_deadletterqueue_produce_requests_total{namespace="test",connector="orders-sink",task="0"} 1"#), "{metrics}");
    assert!(
        !std::fs::read_to_string(&task.log)
            .unwrap()
            .contains("not json"),
        "contents are not logged unless logIncludeMessages"
    );
}

/// Produces `records` (key, value; `None` is a tombstone) to partition 0 of `topic`, in order.
async fn produce_maybe_null(env: &Env, topic: &str, records: &[(&str, Option<&str>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    for (key, value) in records {
        let mut record = FutureRecord::to(topic).key(*key).partition(0);
        if let Some(v) = value {
            record = record.payload(*v);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

#[tokio::test]
async fn tombstones_and_json_that_is_no_document_are_task_put_record_errors_as_in_kafka_connect() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(&env, &topic, 1).await;
    create_topic(&env, &dlq, 1).await;
    let db = unique("sink");
    produce_maybe_null(
        &env,
        &topic,
        &[
            ("k0", Some(r#"{"_id": 0}"#)),
            ("k1", None),
            ("k2", Some("[1, 2]")),
            ("k3", Some(r#"{"no": "id"}"#)),
            ("k4", Some(r#"{"_id": 4}"#)),
        ],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "documentIdStrategy: providedInValue",
        "tolerance: all",
        Some(&dlq),
    );
    let task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    documents(&env, &db, 2).await;
    let letters = dead_letters(&env, &dlq, 3).await;
    let got: Vec<(Option<&str>, &str, &str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l.key.as_deref(),
                l.headers["__connect.errors.stage"].as_str(),
                l.headers["__connect.errors.exception.class.name"].as_str(),
                l.headers["__connect.errors.exception.message"].as_str(),
            )
        })
        .collect();
    let data = "org.apache.kafka.connect.errors.DataException";
    assert_eq!(
        got,
        [
            (Some("k1"), "TASK_PUT", data, "Could not create write model"),
            (
                Some("k2"),
                "TASK_PUT",
                data,
                "Could not convert value '[1, 2]' (java.util.ArrayList) into a BsonDocument."
            ),
            (
                Some("k3"),
                "TASK_PUT",
                data,
                "Provided id strategy is used but the document structure either contained no _id \
                 field or it was null"
            ),
        ]
    );
    assert_eq!(letters[0].value, None, "the tombstone stays a tombstone");
    let c = counters(&task).await;
    assert_eq!(c["totalRecordErrors"].as_i64(), Some(3), "{c}");
}

#[tokio::test]
async fn spring_kafka_s_dead_letter_headers_come_in_spring_s_encodings_beside_connect_s() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(&env, &topic, 1).await;
    create_topic(&env, &dlq, 1).await;
    let db = unique("sink");
    produce(&env, &topic, &[("k0", r#"{"n": 0}"#), ("k1", "{not json")]).await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: all, contextHeadersFormat: both",
        Some(&dlq),
    );
    let _task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    let reader = topic_reader(&env, &dlq);
    let letter = tokio::time::timeout(WAIT, reader.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    let original = tokio::time::timeout(WAIT, async {
        let r = topic_reader(&env, &topic);
        loop {
            let m = r.recv().await.unwrap();
            if m.offset() == 1 {
                break m.timestamp().to_millis().unwrap();
            }
        }
    })
    .await
    .unwrap();
    let headers: Vec<(String, Vec<u8>)> = letter
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} in {headers:?}"))
    };
    assert_eq!(get("__connect.errors.offset"), b"1", "Connect's, as text");
    assert_eq!(
        get("kafka_dlt-exception-fqcn"),
        b"org.apache.kafka.connect.errors.DataException"
    );
    assert!(
        String::from_utf8(get("kafka_dlt-exception-message"))
            .unwrap()
            .starts_with("value is not JSON")
    );
    assert_eq!(get("kafka_dlt-original-topic"), topic.as_bytes());
    assert_eq!(
        i32::from_be_bytes(get("kafka_dlt-original-partition").try_into().unwrap()),
        0
    );
    assert_eq!(
        i64::from_be_bytes(get("kafka_dlt-original-offset").try_into().unwrap()),
        1
    );
    assert_eq!(
        i64::from_be_bytes(get("kafka_dlt-original-timestamp").try_into().unwrap()),
        original
    );
    assert_eq!(get("kafka_dlt-original-timestamp-type"), b"CreateTime");
    assert_eq!(
        get("kafka_dlt-original-consumer-group"),
        b"sluice-test-orders-sink"
    );
    let first_spring = headers
        .iter()
        .position(|(k, _)| k.starts_with("kafka_dlt-"));
    let last_connect = headers
        .iter()
        .rposition(|(k, _)| k.starts_with("__connect."));
    assert!(first_spring > last_connect, "Connect's first: {headers:?}");
}

#[tokio::test]
async fn delete_on_null_values_deletes_the_document_of_the_tombstone_s_key_in_record_order() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    // k1 is deleted; k3 is deleted and written again after, in the same batch.
    produce_maybe_null(
        &env,
        &topic,
        &[
            ("k1", Some(r#"{"n": 1}"#)),
            ("k2", Some(r#"{"n": 2}"#)),
            ("k3", Some(r#"{"n": 3}"#)),
            ("k1", None),
            ("k3", None),
            ("k3", Some(r#"{"n": 33}"#)),
            ("k9", None),
        ],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "documentIdStrategy: providedInKey, deleteOnNullValues: true",
        "tolerance: none",
        None,
    );
    let task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    wait_for("every record handled", WAIT, || async {
        let s = task.status().await.ok_or("no answer")?;
        if s["recordsOut"].as_i64() == Some(7) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let docs = documents(&env, &db, 2).await;
    assert_eq!(
        docs,
        [doc! { "_id": "k2", "n": 2 }, doc! { "_id": "k3", "n": 33 }],
        "a tombstone for a missing document (k9) deletes nothing and is no error"
    );
    let c = counters(&task).await;
    assert_eq!(c["totalRecordErrors"].as_i64(), Some(0), "{c}");
}

#[tokio::test]
async fn insert_if_absent_writes_a_record_delivered_again_once_and_counts_no_error() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    // Records 1 and 2, then both again as a redelivery after a kill would bring them; the third copy of 2
    // differs, and the first write still wins.
    produce(
        &env,
        &topic,
        &[
            ("k1", r#"{"_id": 1, "n": 1}"#),
            ("k2", r#"{"_id": 2, "n": 2}"#),
            ("k1", r#"{"_id": 1, "n": 1}"#),
            ("k2", r#"{"_id": 2, "n": 2}"#),
            ("k2", r#"{"_id": 2, "n": 22}"#),
        ],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insertIfAbsent, documentIdStrategy: providedInValue",
        "tolerance: none",
        None,
    );
    let task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    wait_for("every record handled", WAIT, || async {
        let s = task.status().await.ok_or("no answer")?;
        if s["recordsOut"].as_i64() == Some(5) {
            Ok(())
        } else {
            Err(format!("{s}; log:\n{}", task.log_tail()))
        }
    })
    .await;
    let docs = documents(&env, &db, 2).await;
    assert_eq!(docs, [doc! { "_id": 1, "n": 1 }, doc! { "_id": 2, "n": 2 }]);
    let c = counters(&task).await;
    assert_eq!(
        c["totalRecordErrors"].as_i64(),
        Some(0),
        "a record delivered again is no duplicate key: {c}"
    );
}

#[test]
fn murmur2_gives_kafka_s_values() {
    // Kafka's own UtilsTest vectors.
    assert_eq!(support::murmur2(b"21"), -973932308);
    assert_eq!(support::murmur2(b"foobar"), -790332482);
    assert_eq!(support::murmur2(b"a-little-bit-long-string"), -985981536);
    assert_eq!(support::murmur2(b"a-little-bit-longer-string"), -1486304829);
    assert_eq!(support::murmur2(b"abc"), 479470107);
}

#[tokio::test]
async fn dead_letters_land_in_the_partition_kafka_s_java_producer_picks_for_their_key() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(&env, &topic, 1).await;
    create_topic(&env, &dlq, 4).await;
    let db = unique("sink");
    let keys: Vec<String> = (0..12).map(|n| format!("order-{n}")).collect();
    let records: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "not json")).collect();
    produce(&env, &topic, &records).await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: all",
        Some(&dlq),
    );
    let _task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    let consumer = support::topic_reader(&env, &dlq);
    let mut placed = BTreeMap::new();
    while placed.len() < keys.len() {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("dead letters in time")
            .unwrap();
        let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        placed.insert(key, m.partition());
    }
    for (key, partition) in &placed {
        let java = (support::murmur2(key.as_bytes()) & 0x7fff_ffff) % 4;
        assert_eq!(*partition, java, "{key}: {placed:?}");
    }
    assert!(
        placed
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "keys spread over partitions: {placed:?}"
    );
}

/// A sink (`tolerance: all`, insert, a dead-letter topic) whose first bulk insert fails at `fail_indexes`
/// with a validation error: `records` are produced before the task starts, so they arrive in one batch,
/// one bulk insert. Returns the task, its database and its dead-letter topic.
async fn failing_bulk(
    env: &Env,
    fail_indexes: &[usize],
    errmsg: &str,
    records: &[(&str, &str)],
) -> (TaskProcess, String, String) {
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(env, &topic, 1).await;
    create_topic(env, &dlq, 1).await;
    let db = unique("sink");
    env.fault_peer_rule(
        json!({ "command": "insert", "database": db, "times": 1, "failIndexes": fail_indexes,
                                "writeError": { "code": 121, "errmsg": errmsg } }),
    )
    .await;
    produce(env, &topic, records).await;
    let cfg = config(
        env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: all",
        Some(&dlq),
    );
    let task = TaskProcess::start(env, &db, &cfg, &env.fault_peer_uri);
    (task, db, dlq)
}

#[tokio::test]
async fn a_failed_bulk_index_sends_only_that_record_to_the_dead_letter_topic() {
    let Some(env) = Env::get() else { return };
    let (task, db, dlq) = failing_bulk(
        &env,
        &[1],
        "Document failed validation: { card: \"4111-1111\" }",
        &[
            ("k0", r#"{"n": 0}"#),
            ("k1", r#"{"n": 1}"#),
            ("k2", r#"{"n": 2}"#),
        ],
    )
    .await;

    let docs = documents(&env, &db, 2).await;
    let ns: Vec<i32> = docs
        .iter()
        .map(|d| d.get_i32("n").unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        {
            let mut n = ns.clone();
            n.sort();
            n
        },
        [0, 2],
        "the other records were written"
    );
    let letters = dead_letters(&env, &dlq, 1).await;
    assert_eq!(letters[0].key.as_deref(), Some("k1"));
    assert_eq!(letters[0].headers["__connect.errors.stage"], "TASK_PUT");
    assert_eq!(
        letters[0].headers["__connect.errors.exception.class.name"],
        "com.mongodb.kafka.connect.sink.dlq.WriteException",
        "Kafka Connect's MongoDB sink's class"
    );
    assert_eq!(
        letters[0].headers["__connect.errors.exception.message"],
        "v=1, code=121, message=Document failed validation: { card: \"4111-1111\" }, details={}",
        "Connect's versioned format, with the server's message as it is (the dead letter holds the \
         record anyway)"
    );
    assert_eq!(letters[0].headers["__connect.errors.offset"], "1");
    // What the server quoted of the record stays out of status and the log.
    let status = task.status().await.unwrap();
    assert_eq!(
        status["lastError"]["message"],
        "v=1, code=121, message=Document failed validation: {…}, details={…}",
        "{status}"
    );
    assert!(
        !std::fs::read_to_string(&task.log)
            .unwrap()
            .contains("4111-1111"),
        "quoted record contents are not logged unless logIncludeMessages"
    );
    let c = counters(&task).await;
    assert_eq!(
        (
            c["totalRecordErrors"].as_i64(),
            c["totalRecordsSkipped"].as_i64()
        ),
        (Some(1), Some(1)),
        "{c}"
    );
}

#[tokio::test]
async fn an_ordered_bulk_writes_again_what_it_never_attempted_where_connect_dead_letters_it() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    let dlq = unique("orders-dlq");
    create_topic(&env, &topic, 1).await;
    create_topic(&env, &dlq, 1).await;
    let db = unique("sink");
    // The first ordered bulk fails at index 1, so the server never attempts 2 and 3 (Connect dead-letters
    // them as WriteSkippedException); sluice writes them in the next bulk.
    env.fault_peer_rule(json!({ "command": "insert", "database": db, "times": 1, "failIndexes": [1],
                                "writeError": { "code": 121, "errmsg": "Document failed validation" } }))
        .await;
    produce(
        &env,
        &topic,
        &[
            ("k0", r#"{"n": 0}"#),
            ("k1", r#"{"n": 1}"#),
            ("k2", r#"{"n": 2}"#),
            ("k3", r#"{"n": 3}"#),
        ],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert, bulkWriteOrdered: true",
        "tolerance: all",
        Some(&dlq),
    );
    let task = TaskProcess::start(&env, &db, &cfg, &env.fault_peer_uri);
    let docs = documents(&env, &db, 3).await;
    let mut ns: Vec<i32> = docs.iter().map(|d| d.get_i32("n").unwrap()).collect();
    ns.sort();
    assert_eq!(ns, [0, 2, 3], "the unattempted rest is written");
    let letters = dead_letters(&env, &dlq, 1).await;
    assert_eq!(
        letters[0].key.as_deref(),
        Some("k1"),
        "only the failed record"
    );
    let c = counters(&task).await;
    assert_eq!(c["totalRecordErrors"].as_i64(), Some(1), "{c}");
}

#[tokio::test]
async fn every_failed_index_of_a_bulk_counts_as_a_record_failure_as_in_kafka_connect() {
    let Some(env) = Env::get() else { return };
    // Three of the bulk's four indexes fail.
    let (task, db, dlq) = failing_bulk(
        &env,
        &[0, 2, 3],
        "Document failed validation",
        &[
            ("k0", r#"{"n": 0}"#),
            ("k1", r#"{"n": 1}"#),
            ("k2", r#"{"n": 2}"#),
            ("k3", r#"{"n": 3}"#),
        ],
    )
    .await;
    let docs = documents(&env, &db, 1).await;
    assert_eq!(docs[0].get_i32("n"), Ok(1));
    let letters = dead_letters(&env, &dlq, 3).await;
    let keys: Vec<_> = letters.iter().map(|l| l.key.clone().unwrap()).collect();
    assert_eq!(keys, ["k0", "k2", "k3"]);
    wait_for("the counters of three failed records", WAIT, || async {
        let c = counters(&task).await;
        let got = [
            "totalRecordFailures",
            "totalRecordErrors",
            "totalRecordsSkipped",
        ]
        .map(|k| c[k].as_i64());
        if got == [Some(3); 3] {
            Ok(())
        } else {
            Err(format!("{c}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_retriable_error_that_clears_loses_nothing_and_counts_its_retries() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    env.fault_peer_rule(json!({ "command": "insert", "database": db, "times": 3,
        "reply": { "ok": 0, "code": 91, "codeName": "ShutdownInProgress", "errmsg": "The server is in quiesce mode",
                   "errorLabels": ["RetryableWriteError"] } }))
        .await;
    produce(
        &env,
        &topic,
        &[("k0", r#"{"n": 0}"#), ("k1", r#"{"n": 1}"#)],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "retryTimeoutMs: 30000, retryDelayMaxMs: 1000",
        None,
    );
    let task = TaskProcess::start(&env, &db, &cfg, &env.fault_peer_uri);
    documents(&env, &db, 2).await;
    let c = counters(&task).await;
    assert_eq!(c["totalRetries"], 3, "{c}");
    assert_eq!(c["totalRecordFailures"], 3, "{c}");
    assert_eq!(c["totalRecordErrors"], 0, "{c}");
}

#[tokio::test]
async fn tolerance_none_ends_the_task_with_a_termination_message_and_no_commit() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    produce(&env, &topic, &[("k0", "[1, 2]")]).await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: none",
        None,
    );
    let mut task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    assert_eq!(task.wait_exit(WAIT).await, 1, "{}", task.log_tail());
    let m = task.termination_message();
    assert_eq!(m["reason"], "RecordFailed");
    assert_eq!(
        m["stage"], "TASK_PUT",
        "JSON, but no document: a write-model error as in Kafka Connect"
    );
    assert_eq!(
        m["errorClass"],
        "org.apache.kafka.connect.errors.DataException"
    );
    assert_eq!(m["record"], format!("{topic}-0@0"));
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains("Could not convert value '…' (java.util.ArrayList)"),
        "Connect's words, without the value: {m}"
    );

    // Nothing was committed: the record is still ahead of the connector's consumer group.
    assert_eq!(
        committed_offset(&env, "orders-sink", &topic).await,
        rdkafka::Offset::Invalid
    );
}

#[tokio::test]
async fn more_errors_than_max_errors_in_the_window_end_the_task() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    produce(
        &env,
        &topic,
        &[("k0", "{bad"), ("k1", r#"{"ok": 1}"#), ("k2", "{bad again")],
    )
    .await;
    let errors = "tolerance: all, maxErrors: 1, window: 1m";
    let cfg = config(&env, &topic, &db, "writeModel: insert", errors, None);
    let mut task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    assert_eq!(task.wait_exit(WAIT).await, 1, "{}", task.log_tail());
    let m = task.termination_message();
    assert_eq!(m["reason"], "ErrorLimitExceeded");
    assert_eq!(
        m["record"],
        format!("{topic}-0@2"),
        "the second error within the window"
    );
}

#[tokio::test]
async fn a_dead_letter_write_that_fails_stops_the_task_before_any_commit() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let db = unique("sink");
    produce(&env, &topic, &[("k0", "{bad")]).await;
    // The dead-letter topic does not exist (and Kafka does not create topics): its write times out.
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: all",
        Some(&unique("missing-dlq")),
    )
    .replace(
        "kafka: {bootstrapServers:",
        "kafka: {properties: {message.timeout.ms: '3000'}, bootstrapServers:",
    );
    let mut task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    assert_eq!(task.wait_exit(WAIT).await, 1, "{}", task.log_tail());
    let m = task.termination_message();
    assert_eq!(m["reason"], "DeadLetterQueueFailed");
    assert_eq!(m["stage"], "KAFKA_PRODUCE");
    assert_eq!(m["record"], format!("{topic}-0@0"));
    assert_eq!(
        committed_offset(&env, "orders-sink", &topic).await,
        rdkafka::Offset::Invalid,
        "the record is not handled, so not committed"
    );
}

#[tokio::test]
async fn a_record_too_large_for_the_dead_letter_topic_stops_the_task_before_any_commit() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    // The dead-letter topic takes records up to 4 KiB; the poison record is 8 KiB.
    let dlq = unique("small-dlq");
    create_topic_with(&env, &dlq, 1, &[("max.message.bytes", "4096")]).await;
    let (db, connector) = (unique("sink"), unique("oversized"));
    let big = format!("{{bad {}", "x".repeat(8192));
    produce(
        &env,
        &topic,
        &[("k0", r#"{"n": 1}"#), ("k1", &big), ("k2", r#"{"n": 3}"#)],
    )
    .await;
    let cfg = config(
        &env,
        &topic,
        &db,
        "writeModel: insert",
        "tolerance: all",
        Some(&dlq),
    )
    .replace("connector: orders-sink", &format!("connector: {connector}"));
    let mut task = TaskProcess::start(&env, &db, &cfg, &env.mongodb_uri);
    assert_eq!(task.wait_exit(WAIT).await, 1, "{}", task.log_tail());
    let m = task.termination_message();
    assert_eq!(m["reason"], "DeadLetterQueueFailed", "{m}");
    assert_eq!(m["record"], format!("{topic}-0@1"), "{m}");
    assert!(
        m["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too large"),
        "the broker's reason: {m}"
    );
    assert!(
        !m.to_string().contains("xxxxxxxx"),
        "no record contents: {m}"
    );
    match committed_offset(&env, &connector, &topic).await {
        rdkafka::Offset::Invalid => {}
        rdkafka::Offset::Offset(o) => assert!(o <= 1, "committed past the record: {o}"),
        other => panic!("committed: {other:?}"),
    }
    assert!(
        dead_letter_messages(&env, &dlq, Duration::from_secs(2))
            .await
            .is_empty(),
        "the broker refused the dead letter"
    );
}

/// A sink task of its own connector (so its own consumer group: a task of another test joining the shared
/// group would revoke this one's partitions, and a revocation commits) that has written two records.
struct CommitCase {
    topic: String,
    db: String,
    connector: String,
    cfg: String,
    task: TaskProcess,
}

impl CommitCase {
    async fn start(env: &Env, offset_flush_interval_ms: u64) -> CommitCase {
        let topic = unique("orders");
        create_topic(env, &topic, 1).await;
        let db = unique("sink");
        let connector = unique("commit");
        produce(env, &topic, &[("a", r#"{"n": 1}"#), ("b", r#"{"n": 2}"#)]).await;
        let sink = format!("writeModel: insert, offsetFlushIntervalMs: {offset_flush_interval_ms}");
        let cfg = config(env, &topic, &db, &sink, "tolerance: none", None)
            .replace("connector: orders-sink", &format!("connector: {connector}"));
        let task = TaskProcess::start(env, &db, &cfg, &env.mongodb_uri);
        documents(env, &db, 2).await;
        CommitCase {
            topic,
            db,
            connector,
            cfg,
            task,
        }
    }

    /// [`CommitCase::start`] with an hour between commits: nothing is committed per batch.
    async fn start_with_an_hours_interval(env: &Env) -> CommitCase {
        let c = CommitCase::start(env, 3_600_000).await;
        assert_eq!(
            c.committed(env).await,
            rdkafka::Offset::Invalid,
            "an hour's interval: nothing committed per batch"
        );
        c
    }

    async fn committed(&self, env: &Env) -> rdkafka::Offset {
        committed_offset(env, &self.connector, &self.topic).await
    }

    /// Produces a third record and waits for its document: the two handled records are not written twice.
    async fn next_record_lands_once(&self, env: &Env) {
        produce(env, &self.topic, &[("c", r#"{"n": 3}"#)]).await;
        let docs = documents(env, &self.db, 3).await;
        let ns: Vec<_> = docs.iter().map(|d| d.get_i32("n").unwrap()).collect();
        assert_eq!(ns.iter().filter(|n| **n == 1).count(), 1, "{docs:?}");
    }

    /// Waits until the connector's group has committed `offset`.
    async fn wait_committed(&self, env: &Env, offset: i64) {
        wait_for(&format!("offset {offset} committed"), WAIT, || async {
            match self.committed(env).await {
                rdkafka::Offset::Offset(o) if o == offset => Ok(()),
                other => Err(format!("committed: {other:?}")),
            }
        })
        .await
    }
}

#[tokio::test]
async fn handled_offsets_are_committed_on_the_interval_or_after_every_batch() {
    let Some(env) = Env::get() else { return };
    for interval_ms in [1000, 0] {
        let mut c = CommitCase::start(&env, interval_ms).await;
        c.wait_committed(&env, 2).await;
        assert!(
            !c.task.exited(),
            "committed while running: {}",
            c.task.log_tail()
        );
        assert_eq!(c.task.stop().await, 0, "{}", c.task.log_tail());
    }
}

#[tokio::test]
async fn a_clean_stop_commits_what_was_handled_before_the_interval() {
    let Some(env) = Env::get() else { return };
    let mut c = CommitCase::start_with_an_hours_interval(&env).await;
    assert_eq!(c.task.stop().await, 0, "{}", c.task.log_tail());
    assert_eq!(
        c.committed(&env).await,
        rdkafka::Offset::Offset(2),
        "SIGTERM commits the handled records"
    );
    // A new task starts after them.
    let _task = TaskProcess::start(&env, &c.db, &c.cfg, &env.mongodb_uri);
    c.next_record_lands_once(&env).await;
}

#[tokio::test]
async fn a_rebalance_commits_what_the_task_losing_the_partition_handled() {
    let Some(env) = Env::get() else { return };
    let mut c = CommitCase::start_with_an_hours_interval(&env).await;
    // A second task joins the connector's group: the rebalance takes the partition from the first task,
    // which commits what it handled.
    let mut second =
        TaskProcess::start(&env, &format!("{}-second", c.db), &c.cfg, &env.mongodb_uri);
    c.wait_committed(&env, 2).await;
    assert!(!c.task.exited(), "{}", c.task.log_tail());
    assert!(!second.exited(), "{}", second.log_tail());
    // Whichever task owns the partition now starts after the handled records.
    c.next_record_lands_once(&env).await;
}

#[tokio::test]
async fn a_failing_task_commits_the_batches_it_handled_and_not_the_failed_record() {
    let Some(env) = Env::get() else { return };
    let mut c = CommitCase::start(&env, 3_600_000).await;
    produce(&env, &c.topic, &[("c", "[1, 2]")]).await;
    assert_eq!(c.task.wait_exit(WAIT).await, 1, "{}", c.task.log_tail());
    assert_eq!(
        c.task.termination_message()["record"],
        format!("{}-0@2", c.topic)
    );
    assert_eq!(
        c.committed(&env).await,
        rdkafka::Offset::Offset(2),
        "the two written records are committed as the consumer closes; the failed one is not"
    );
}

/// The offset `connector`'s consumer group (namespace `test`) committed for partition 0 of `topic`.
async fn committed_offset(env: &Env, connector: &str, topic: &str) -> rdkafka::Offset {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", format!("sluice-test-{connector}"))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed.find_partition(topic, 0).unwrap().offset()
}

/// A sink of a connector of its own (its own consumer group) on the fault peer: records `{"_id": n}` of
/// `topic` are inserted with their own ids into `<db>.orders`, failed ones dead-lettered to `dlq`.
struct OutageCase {
    topic: String,
    db: String,
    dlq: String,
    cfg: String,
}

impl OutageCase {
    async fn new(env: &Env, records: usize, errors: &str) -> OutageCase {
        let topic = unique("orders");
        let dlq = unique("orders-dlq");
        create_topic(env, &topic, 1).await;
        create_topic(env, &dlq, 1).await;
        let db = unique("sink");
        let values: Vec<(String, String)> = (0..records)
            .map(|n| (format!("k{n}"), format!(r#"{{"_id": {n}}}"#)))
            .collect();
        let refs: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        produce(env, &topic, &refs).await;
        let cfg = config(
            env,
            &topic,
            &db,
            "writeModel: insert, documentIdStrategy: providedInValue, offsetFlushIntervalMs: 0",
            errors,
            Some(&dlq),
        )
        .replace(
            "connector: orders-sink",
            &format!("connector: {}", unique("outage")),
        );
        OutageCase {
            topic,
            db,
            dlq,
            cfg,
        }
    }

    fn start(&self, env: &Env) -> TaskProcess {
        TaskProcess::start(env, &self.db, &self.cfg, &env.fault_peer_uri)
    }

    /// Every record is a document, once (a second write of one would be a duplicate key, dead-lettered).
    async fn all_landed(&self, env: &Env, records: usize) {
        let docs = documents(env, &self.db, records).await;
        let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
        assert_eq!(ids, (0..records as i32).collect::<Vec<_>>());
    }

    /// Nothing reaches the dead-letter topic.
    async fn nothing_dead_lettered(&self, env: &Env) {
        let letters = dead_letter_messages(env, &self.dlq, Duration::from_secs(3)).await;
        assert!(letters.is_empty(), "dead-lettered: {letters:?}");
    }
}

/// Waits until the task reports an outage of `dependency` on `/v1/status`; returns what it said.
async fn outage_reported(task: &TaskProcess, dependency: &str) -> serde_json::Value {
    wait_for(
        &format!("{dependency} outage on /v1/status"),
        WAIT,
        || async {
            let status = task.status().await.ok_or("no answer")?;
            match &status["outage"] {
                o if o["dependency"] == dependency => Ok(o.clone()),
                _ => Err(format!("{status}\n{}", task.log_tail())),
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_mongodb_outage_dead_letters_nothing_and_loses_nothing_under_tolerance_all() {
    let Some(env) = Env::get() else { return };
    // tolerance: all with the default retryTimeoutMs (0, no retry): a record error would be skipped at
    // once; an outage must not be.
    let case = OutageCase::new(&env, 20, "tolerance: all, retryDelayMaxMs: 1000").await;
    env.fault_peer_rule(json!({ "command": "*", "database": case.db, "forMs": 6000,
                                "closeConnection": true }))
        .await;
    let task = case.start(&env);
    let outage = outage_reported(&task, "MongoDB").await;
    assert!(outage["since"].is_string(), "{outage}");
    let metrics = task.get("/metrics").await.unwrap_or_default();
    assert!(
        metrics.contains("sluice_task_dependency_unavailable{")
            && metrics
                .lines()
                .any(|l| l.starts_with("sluice_task_dependency_unavailable")
                    && l.contains("dependency=\"MongoDB\"")
                    && l.ends_with(" 1")),
        "{metrics}"
    );
    case.all_landed(&env, 20).await;
    let status = wait_for("the outage to clear", WAIT, || async {
        let s = task.status().await.ok_or("no answer")?;
        if s["outage"].is_null() {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let c = &status["errors"];
    assert_eq!(
        (
            c["totalRecordErrors"].as_i64(),
            c["totalRecordsSkipped"].as_i64()
        ),
        (Some(0), Some(0)),
        "{c}"
    );
    assert!(c["totalRetries"].as_i64() > Some(0), "{c}");
    case.nothing_dead_lettered(&env).await;
}

#[tokio::test]
async fn a_write_concern_error_is_written_again_not_taken_as_written() {
    let Some(env) = Env::get() else { return };
    let case = OutageCase::new(&env, 3, "tolerance: all, retryDelayMaxMs: 500").await;
    // The peer answers "ok, but not replicated as asked" without writing: a sink that took it as written
    // would lose the records.
    env.fault_peer_rule(json!({ "command": "insert", "database": case.db, "times": 2,
        "reply": { "ok": 1, "n": 3, "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed",
                   "errmsg": "waiting for replication timed out" } } }))
        .await;
    let task = case.start(&env);
    case.all_landed(&env, 3).await;
    let c = counters(&task).await;
    assert_eq!(c["totalRecordErrors"], 0, "{c}");
    assert_eq!(c["totalRetries"], 2, "{c}");
    case.nothing_dead_lettered(&env).await;
}

#[tokio::test]
async fn a_refused_authorization_is_an_outage_not_a_record_error() {
    let Some(env) = Env::get() else { return };
    let case = OutageCase::new(&env, 3, "tolerance: all, retryDelayMaxMs: 500").await;
    env.fault_peer_rule(
        json!({ "command": "insert", "database": case.db, "times": 4,
        "reply": { "ok": 0, "code": 13, "codeName": "Unauthorized",
                   "errmsg": "not authorized on this database to execute command insert" } }),
    )
    .await;
    let task = case.start(&env);
    outage_reported(&task, "MongoDB").await;
    case.all_landed(&env, 3).await;
    assert_eq!(counters(&task).await["totalRecordErrors"], 0);
    case.nothing_dead_lettered(&env).await;
}

#[tokio::test]
async fn sigterm_ends_an_outage_wait_without_committing_the_unwritten_batch() {
    let Some(env) = Env::get() else { return };
    let case = OutageCase::new(&env, 5, "tolerance: all").await;
    env.fault_peer_rule(
        json!({ "command": "*", "database": case.db, "forMs": 12_000,
                                "closeConnection": true }),
    )
    .await;
    let mut task = case.start(&env);
    outage_reported(&task, "MongoDB").await;
    let stopping = std::time::Instant::now();
    assert_eq!(task.stop().await, 0, "{}", task.log_tail());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the wait ends at SIGTERM, within the grace period: {:?}",
        stopping.elapsed()
    );
    // Its replacement, once MongoDB is back, writes every record: none was committed unwritten.
    let _next = case.start(&env);
    case.all_landed(&env, 5).await;
    case.nothing_dead_lettered(&env).await;
}

#[tokio::test]
async fn an_outage_longer_than_max_poll_interval_keeps_the_group_membership() {
    let Some(env) = Env::get() else { return };
    let mut case = OutageCase::new(&env, 5, "tolerance: all, retryDelayMaxMs: 1000").await;
    // librdkafka drops a consumer from its group when it is not polled for max.poll.interval.ms.
    case.cfg = case.cfg.replace(
        &format!("kafka: {{bootstrapServers: '{}'}}", env.kafka_bootstrap),
        &format!(
            "kafka: {{bootstrapServers: '{}', properties: {{session.timeout.ms: '6000', max.poll.interval.ms: '7000'}}}}",
            env.kafka_bootstrap
        ),
    );
    assert!(case.cfg.contains("max.poll.interval.ms"), "{}", case.cfg);
    env.fault_peer_rule(
        json!({ "command": "*", "database": case.db, "forMs": 15_000,
                                "closeConnection": true }),
    )
    .await;
    let task = case.start(&env);
    outage_reported(&task, "MongoDB").await;
    case.all_landed(&env, 5).await;
    let log = std::fs::read_to_string(&task.log).unwrap_or_default();
    assert!(
        !log.contains("maximum poll interval"),
        "the consumer was polled all along: {}",
        task.log_tail()
    );
    case.nothing_dead_lettered(&env).await;
}

#[tokio::test]
async fn a_rebalance_during_an_outage_wait_leaves_no_partition_paused() {
    let Some(env) = Env::get() else { return };
    let mut case = OutageCase::new(&env, 0, "tolerance: all, retryDelayMaxMs: 1000").await;
    // Three partitions, so both tasks of the group get some.
    case.topic = unique("orders");
    create_topic(&env, &case.topic, 3).await;
    case.cfg = config(
        &env,
        &case.topic,
        &case.db,
        "writeModel: insert, documentIdStrategy: providedInValue, offsetFlushIntervalMs: 0",
        "tolerance: all, retryDelayMaxMs: 1000",
        Some(&case.dlq),
    )
    .replace(
        "connector: orders-sink",
        &format!("connector: {}", unique("rebalance")),
    );
    let values: Vec<(String, String)> = (0..30)
        .map(|n| (format!("k{n}"), format!(r#"{{"_id": {n}}}"#)))
        .collect();
    let refs: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.fault_peer_rule(json!({ "command": "*", "database": case.db, "forMs": 8000,
                                "closeConnection": true }))
        .await;
    let first = case.start(&env);
    produce(&env, &case.topic, &refs).await;
    outage_reported(&first, "MongoDB").await;
    // A second task joins while the first waits with its partitions paused: a rebalance moves partitions
    // away from it and back. librdkafka keeps a paused partition paused when it comes back.
    let second = TaskProcess::start(
        &env,
        &format!("{}-b", case.db),
        &case.cfg,
        &env.fault_peer_uri,
    );
    case.all_landed(&env, 30).await;
    // A batch the rebalance took away mid-write is written by both tasks (at least once): its second
    // write is a duplicate key. Nothing else is dead-lettered.
    for message in dead_letter_messages(&env, &case.dlq, Duration::from_secs(3)).await {
        assert!(message.contains("E11000"), "dead-lettered: {message}");
    }
    // The second task leaves: its partitions come back to the first, which must consume them.
    let mut second = second;
    assert_eq!(second.stop().await, 0, "{}", second.log_tail());
    let more: Vec<(String, String)> = (30..60)
        .map(|n| (format!("k{n}"), format!(r#"{{"_id": {n}}}"#)))
        .collect();
    let refs: Vec<(&str, &str)> = more.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    produce(&env, &case.topic, &refs).await;
    case.all_landed(&env, 60).await;
    assert!(
        !first.status().await.is_none_or(|s| s["running"] != true),
        "{}",
        first.log_tail()
    );
}

#[tokio::test]
async fn a_batch_whose_partitions_a_rebalance_took_and_gave_back_is_counted_once() {
    let Some(env) = Env::get() else { return };
    // Two partitions, each with three documents and a poison record, in the task's first batch. The batch
    // waits out an outage while another member joins the group and leaves: an eager rebalance takes both
    // partitions away and gives them back, and the task consumes them again from their last commit. The
    // batch is handled twice (its poison records are dead-lettered twice: at least once), but a record
    // handled again is counted once, so the ledgers say two record errors, not four.
    let mut case = OutageCase::new(&env, 0, "tolerance: all, retryDelayMaxMs: 1000").await;
    case.topic = unique("orders");
    create_topic(&env, &case.topic, 2).await;
    let connector = unique("regained");
    case.cfg = config(
        &env,
        &case.topic,
        &case.db,
        "documentIdStrategy: providedInValue, offsetFlushIntervalMs: 0",
        "tolerance: all, retryDelayMaxMs: 1000",
        Some(&case.dlq),
    )
    .replace("connector: orders-sink", &format!("connector: {connector}"));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    for (n, partition) in [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)] {
        for value in [format!(r#"{{"_id": {n}}}"#)]
            .into_iter()
            .chain((n % 3 == 2).then(|| "not json".to_string()))
        {
            producer
                .send(
                    FutureRecord::<(), _>::to(&case.topic)
                        .partition(partition)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    env.fault_peer_rule(json!({ "command": "*", "database": case.db, "forMs": 25000,
                                "closeConnection": true }))
        .await;
    let task = case.start(&env);
    outage_reported(&task, "MongoDB").await;

    let group = format!("sluice-test-{connector}");
    let member: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    member.subscribe(&[&case.topic]).unwrap();
    wait_for("the other member to get a partition", WAIT, || async {
        let _ = tokio::time::timeout(Duration::from_millis(200), member.recv()).await;
        match member.assignment() {
            Ok(a) if a.count() > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(member); // leaves the group: both partitions go back to the task
    let inspector: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    wait_for("the task alone in a stable group", WAIT, || async {
        let list = inspector
            .fetch_group_list(Some(&group), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        match list.groups().first() {
            Some(g) if g.state() == "Stable" && g.members().len() == 1 => Ok(()),
            Some(g) => Err(format!("{} with {} members", g.state(), g.members().len())),
            None => Err("no group".into()),
        }
    })
    .await;
    assert!(
        task.status()
            .await
            .is_some_and(|s| s["outage"]["dependency"] == "MongoDB"),
        "the rebalances came while the first batch waited out the outage: {}",
        task.log_tail()
    );

    case.all_landed(&env, 6).await;
    let letters = dead_letter_messages(&env, &case.dlq, Duration::from_secs(3)).await;
    assert_eq!(letters.len(), 4, "each poison record twice: {letters:?}");
    let ledgers = wait_for("both partitions' ledgers at their ends", WAIT, || async {
        let s = task.status().await.ok_or("no answer")?;
        let partitions = s["partitions"].clone();
        let at_end = [0, 1]
            .iter()
            .all(|p| partitions[format!("{}-{p}", case.topic)]["position"].as_i64() == Some(4));
        if at_end {
            Ok(partitions)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let record_errors: i64 = ledgers
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            p["errors"]["totalRecordErrors"]
                .as_i64()
                .unwrap_or_default()
        })
        .sum();
    assert_eq!(record_errors, 2, "{ledgers}\n{}", task.log_tail());
}

#[tokio::test]
async fn a_bulk_failing_as_a_whole_is_split_down_to_the_record_it_belongs_to() {
    let Some(env) = Env::get() else { return };
    // Three records in one bulk; the peer refuses the first two insert commands (not an outage): the
    // bulk [0, 1, 2] and then its first half [0]. Record 0 is dead-lettered; [1, 2] is written.
    let case = OutageCase::new(&env, 3, "tolerance: all").await;
    env.fault_peer_rule(
        json!({ "command": "insert", "database": case.db, "times": 2,
        "reply": { "ok": 0, "code": 2, "codeName": "BadValue", "errmsg": "cannot insert this" } }),
    )
    .await;
    let task = case.start(&env);
    let docs = documents(&env, &case.db, 2).await;
    let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, [1, 2]);
    let letters = dead_letter_messages(&env, &case.dlq, Duration::from_secs(3)).await;
    assert_eq!(
        letters.len(),
        1,
        "only the record it belongs to: {letters:?}"
    );
    assert!(letters[0].contains("cannot insert this"), "{letters:?}");
    assert_eq!(counters(&task).await["totalRecordErrors"], 1);
}
