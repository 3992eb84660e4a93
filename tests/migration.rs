//! Moving a sink from Kafka Connect to sluice (docs/migrating-from-kafka-connect.md): a standalone Connect
//! worker with the MongoDB sink (`benches/connect`) writes the first part of a topic and stops; a sluice sink
//! in Connect's consumer group (`spec.sink.consumerGroupId: connect-<name>`, what `sluice convert` writes)
//! goes on from Connect's committed offsets. Each record is inserted by its value's `_id`, so a record
//! read twice would be a duplicate-key record error and a record skipped a missing `_id`: neither happens.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::connect::ConnectWorker;
use support::{Env, TaskProcess, create_topic, produce_values, unique, wait_for};

const WAIT: Duration = Duration::from_secs(120);

/// The offset group `group` committed for partition 0 of `topic` (`None`: none yet).
fn committed(env: &Env, group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .ok()?;
    match offsets.find_partition(topic, 0)?.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

/// The `_id`s of the collection, sorted, with the BSON type each was written as.
async fn ids(coll: &mongodb::Collection<Document>) -> Vec<(i64, &'static str)> {
    let mut cursor = coll.find(doc! {}).await.unwrap();
    let mut out = Vec::new();
    while cursor.advance().await.unwrap() {
        let d = cursor.deserialize_current().unwrap();
        out.push(match d.get("_id") {
            Some(Bson::Int32(n)) => (i64::from(*n), "int"),
            Some(Bson::Int64(n)) => (*n, "long"),
            other => panic!("_id {other:?}"),
        });
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_sink_in_connect_s_consumer_group_goes_on_where_connect_stopped() {
    let Some(env) = Env::get() else { return };
    let topic = unique("orders");
    create_topic(&env, &topic, 1).await;
    let (name, db) = (unique("orders-sink"), unique("migration"));
    let values = |range: std::ops::Range<i32>| -> Vec<String> {
        range
            .map(|i| format!(r#"{{"_id": {i}, "n": {i}}}"#))
            .collect()
    };
    let first = values(0..100);
    produce_values(
        &env,
        &topic,
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let mut connect = ConnectWorker::start(
        &env,
        &name,
        "offset.flush.interval.ms=1000\n",
        &format!(
            "connector.class=com.mongodb.kafka.connect.MongoSinkConnector\ntopics={topic}\n\
             connection.uri={}\ndatabase={db}\ncollection=orders\n\
             writemodel.strategy=com.mongodb.kafka.connect.sink.writemodel.strategy.InsertOneDefaultStrategy\n\
             document.id.strategy=com.mongodb.kafka.connect.sink.processor.id.strategy.ProvidedInValueStrategy\n",
            env.mongodb_uri
        ),
    );
    let coll = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(&db)
        .collection::<Document>("orders");
    let group = format!("connect-{name}");
    let (coll, group_ref, topic_ref, env_ref) = (&coll, &group, &topic, &env);
    let connect_ref = &connect;
    wait_for(
        "Connect wrote 100 and committed its offsets",
        WAIT,
        || async move {
            let n = coll
                .count_documents(doc! {})
                .await
                .map_err(|e| e.to_string())?;
            let at = committed(env_ref, group_ref, topic_ref);
            if n == 100 && at == Some(100) {
                Ok(())
            } else {
                Err(format!(
                    "{n} documents, committed {at:?}\n{}",
                    connect_ref.log_tail()
                ))
            }
        },
    )
    .await;
    // Connect stops (the migration's first step); more records arrive meanwhile.
    let _ = connect.child.kill();
    let _ = connect.child.wait();
    let rest = values(100..200);
    produce_values(
        &env,
        &topic,
        &rest.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let config = format!(
        "type: mongodb-sink\nconnector: {name}\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         sink: {{topics: [{topic}], writeModel: insert, documentIdStrategy: providedInValue, \
         consumerGroupId: {group}}}\nerrors:\n  spec: {{tolerance: all}}",
        env.kafka_bootstrap
    );
    let sluice = TaskProcess::start(&env, &name, &config, &env.mongodb_uri);
    let sluice_ref = &sluice;
    wait_for("sluice wrote the other 100", WAIT, || async move {
        let n = coll
            .count_documents(doc! {})
            .await
            .map_err(|e| e.to_string())?;
        if n == 200 {
            Ok(())
        } else {
            Err(format!("{n} documents\n{}", sluice_ref.log_tail()))
        }
    })
    .await;
    // Settled: what sluice read, wrote and failed, and every id once.
    wait_for("sluice committed the group's end", WAIT, || async move {
        match committed(env_ref, group_ref, topic_ref) {
            Some(200) => Ok(()),
            other => Err(format!("committed {other:?}")),
        }
    })
    .await;
    let status = sluice.status().await.expect("the task's status");
    assert_eq!(
        status["errors"]["totalRecordErrors"], 0,
        "no record read twice: {status}"
    );
    assert_eq!(
        status["recordsIn"], 100,
        "sluice read only what Connect had not: {status}"
    );
    let got = ids(coll).await;
    let numbers: Vec<i64> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers.iter().collect::<BTreeSet<_>>().len(), 200);
    assert_eq!(
        numbers,
        (0..200).collect::<Vec<i64>>(),
        "every record once, none skipped"
    );
    let types: BTreeSet<(bool, &str)> = got.iter().map(|(n, t)| (*n < 100, *t)).collect();
    // The one difference in what lands (README, sink.keyConverter/valueConverter): Connect's schemaless
    // JsonConverter makes every JSON integer a long; sluice writes one that fits 32 bits as an int. MongoDB
    // compares numbers across types (the unique _id index saw both as equal), but `$type` does not.
    assert_eq!(
        types,
        BTreeSet::from([(false, "int"), (true, "long")]),
        "_id types by (written by Connect, BSON type)"
    );
}
