//! DeadLetterQueue replays on the loopback cluster: poison records sent back after the fix land in MongoDB;
//! a dry run moves nothing; a filter moves only what it matches; a replay pod killed midway is replaced and
//! the replay ends with every record replayed exactly once; records replayed too often are skipped.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use mongodb::bson::doc;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sluice::crd::dead_letter_queue::{ReplayStatus, replay_phase};
use sluice::crd::{Connector, DeadLetterQueue};
use support::{
    Env, Operator, Setup, create_secret, create_topic, events_for, has, running_pid, setup, unique,
    wait_for,
};

const WAIT: Duration = Duration::from_secs(120);
const DATA_EXCEPTION: &str = "org.apache.kafka.connect.errors.DataException";

fn producer(env: &Env) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap()
}

/// A record to produce: key, value and headers.
type Record = (String, String, Vec<(String, String)>);

/// Produces records to `topic`.
async fn produce(env: &Env, topic: &str, records: &[Record]) {
    let producer = producer(env);
    for (key, value, headers) in records {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(value).headers(hs),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

async fn create_dlq(s: &Setup, name: &str, topic: &str) {
    let dlq: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue", "metadata": { "name": name },
        "spec": { "topicName": topic, "kafka": { "bootstrapServers": s.env.kafka_bootstrap }, "partitions": 2 }
    }))
    .unwrap();
    Api::<DeadLetterQueue>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &dlq)
        .await
        .unwrap();
}

/// Sets `spec.replays` (the whole list, as a user's `kubectl apply` would).
async fn apply_replays(s: &Setup, dlq: &str, replays: serde_json::Value) {
    Api::<DeadLetterQueue>::namespaced(s.client.clone(), &s.ns)
        .patch(
            dlq,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "replays": replays } })),
        )
        .await
        .unwrap();
}

/// Waits until replay `id` in the DeadLetterQueue's status passes `check`.
async fn wait_replay<F>(s: &Setup, dlq: &str, id: &str, what: &str, check: F) -> ReplayStatus
where
    F: Fn(&ReplayStatus) -> bool,
{
    let api: Api<DeadLetterQueue> = Api::namespaced(s.client.clone(), &s.ns);
    let check = &check;
    wait_for(&format!("replay {id}: {what}"), WAIT, || async {
        let d = api.get(dlq).await.map_err(|e| e.to_string())?;
        let replays = d.status.map(|st| st.replays).unwrap_or_default();
        match replays.iter().find(|r| r.id == id) {
            Some(r) if check(r) => Ok(r.clone()),
            _ => Err(format!(
                "{replays:#?}\noperator log:\n{}",
                s.operator.log_tail()
            )),
        }
    })
    .await
}

/// Every record of `topic` (read_committed, as sinks read), as (value, headers).
async fn read_all(
    env: &Env,
    topic: &str,
    expect: usize,
) -> Vec<(String, BTreeMap<String, String>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", unique("replay-check"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = vec![];
    // Read until `expect` records arrived, then a little longer to catch any extra copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut quiet_until = None;
    while std::time::Instant::now() < deadline {
        if quiet_until.is_some_and(|q| std::time::Instant::now() > q) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_string(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.push((value, headers));
                if out.len() >= expect && quiet_until.is_none() {
                    quiet_until = Some(std::time::Instant::now() + Duration::from_secs(3));
                }
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => {}
        }
    }
    out
}

/// The Connector's task pod, once it runs with a config hash other than `old`.
async fn running_task_hash(s: &Setup, connector: &str, old: Option<&str>) -> String {
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the task pod running with the new config", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("sluice.dev/connector={connector}")))
            .await
            .map_err(|e| e.to_string())?
            .items;
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        match list.as_slice() {
            [p] if ready(p) && p.metadata.deletion_timestamp.is_none() => {
                let hash = p.annotations()["sluice.dev/config-hash"].clone();
                if Some(hash.as_str()) != old {
                    return Ok(hash);
                }
                Err(format!("still the old config {hash}"))
            }
            other => Err(format!("{} pods", other.len())),
        }
    })
    .await
}

#[tokio::test]
async fn poison_records_replayed_after_the_fix_land_in_mongodb() {
    let Some(mut s) = setup("replay-fix").await else {
        return;
    };
    let (orders, payments) = (unique("orders"), unique("payments"));
    create_topic(&s.env, &orders, 1).await;
    create_topic(&s.env, &payments, 1).await;
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", s.env.mongodb_uri.as_str())],
    )
    .await;
    let dlq_topic = unique("shop-dlq");
    create_dlq(&s, "shop-dlq", &dlq_topic).await;
    let db = unique("replay");
    // The bug: the sink expects every value to carry its own _id, and these don't.
    let conn: Connector = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector", "metadata": { "name": "shop-sink" },
        "spec": {
            "type": "mongodb-sink",
            "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": db, "collection": "orders" },
            "sink": { "topics": [orders, payments], "writeModel": "insert", "documentIdStrategy": "providedInValue" },
            "errors": { "tolerance": "all", "deadLetterQueueRef": { "name": "shop-dlq" } }
        }
    }))
    .unwrap();
    let connectors: Api<Connector> = Api::namespaced(s.client.clone(), &s.ns);
    connectors
        .create(&PostParams::default(), &conn)
        .await
        .unwrap();
    let first_hash = running_task_hash(&s, "shop-sink", None).await;

    let record = |key: &str, value: serde_json::Value| {
        (
            key.to_string(),
            value.to_string(),
            vec![("trace-id".to_string(), format!("t-{key}"))],
        )
    };
    produce(
        &s.env,
        &orders,
        &[
            record("o1", json!({ "sku": "a", "qty": 1 })),
            record("o2", json!({ "_id": "good", "sku": "b", "qty": 2 })),
            record("o3", json!({ "sku": "c", "qty": 3 })),
            record("o4", json!({ "sku": "d", "qty": 4 })),
        ],
    )
    .await;
    produce(
        &s.env,
        &payments,
        &[
            record("p1", json!({ "amount": 10 })),
            record("p2", json!({ "amount": 20 })),
        ],
    )
    .await;

    // The DLQ shows them by class and original topic.
    let api: Api<DeadLetterQueue> = Api::namespaced(s.client.clone(), &s.ns);
    let inspection = wait_for("5 dead-lettered records inspected", WAIT, || async {
        let d = api.get("shop-dlq").await.map_err(|e| e.to_string())?;
        match d.status.and_then(|st| st.inspection) {
            Some(i) if i.records_scanned == 5 => Ok(i),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(inspection.by_error_class.get(DATA_EXCEPTION), Some(5));
    assert_eq!(inspection.by_original_topic.get(&orders), Some(3));
    assert_eq!(inspection.by_original_topic.get(&payments), Some(2));

    // A dry run counts and moves nothing.
    apply_replays(&s, "shop-dlq", json!([{ "id": "look", "dryRun": true }])).await;
    let dry = wait_replay(&s, "shop-dlq", "look", "dry run done", |r| {
        r.phase == replay_phase::SUCCEEDED
    })
    .await;
    assert_eq!(
        (dry.counts.matched, dry.counts.replayed, dry.remaining),
        (5, 0, 0),
        "{dry:#?}"
    );
    assert!(
        dry.message
            .as_deref()
            .unwrap_or_default()
            .contains("5 would be replayed"),
        "{dry:#?}"
    );
    // A restarted operator does not run a finished replay again.
    s.operator.kill();
    s.operator = Operator::start(&s.env, &s.ns, false, "sluice-test-2");

    // The fix, then a replay of the orders only.
    connectors
        .patch(
            "shop-sink",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "sink": { "documentIdStrategy": "objectId" } } })),
        )
        .await
        .unwrap();
    running_task_hash(&s, "shop-sink", Some(&first_hash)).await;
    apply_replays(
        &s,
        "shop-dlq",
        json!([
            { "id": "look", "dryRun": true },
            { "id": "orders", "filter": { "originalTopics": [orders], "errorClasses": [DATA_EXCEPTION] } },
            { "id": "payments", "filter": { "connectors": ["shop-sink"], "originalTopics": [payments] } }
        ]),
    )
    .await;
    let by_orders = wait_replay(&s, "shop-dlq", "orders", "done", |r| {
        r.phase == replay_phase::SUCCEEDED
    })
    .await;
    assert_eq!(
        (by_orders.counts.matched, by_orders.counts.replayed),
        (3, 3),
        "the filter takes the orders only: {by_orders:#?}"
    );
    let by_payments = wait_replay(&s, "shop-dlq", "payments", "done", |r| {
        r.phase == replay_phase::SUCCEEDED
    })
    .await;
    assert_eq!(
        (by_payments.counts.matched, by_payments.counts.replayed),
        (2, 2)
    );
    let look = wait_replay(&s, "shop-dlq", "look", "still the first run", |_| true).await;
    assert_eq!(
        (look.start_time, look.completion_time),
        (dry.start_time, dry.completion_time),
        "the dry run ran once"
    );

    // Every poison record is in MongoDB now, next to the good one; none came back to the DLQ.
    let mongo = mongodb::Client::with_uri_str(&s.env.mongodb_uri)
        .await
        .unwrap();
    let coll = mongo
        .database(&db)
        .collection::<mongodb::bson::Document>("orders");
    let coll = &coll;
    wait_for("6 documents in MongoDB", WAIT, || async {
        let n = coll
            .count_documents(doc! {})
            .await
            .map_err(|e| e.to_string())?;
        if n == 6 {
            Ok(())
        } else {
            Err(format!("{n} documents"))
        }
    })
    .await;
    for sku in ["a", "b", "c", "d"] {
        assert_eq!(
            coll.count_documents(doc! { "sku": sku }).await.unwrap(),
            1,
            "sku {sku}"
        );
    }
    let still = api.get("shop-dlq").await.unwrap().status.unwrap();
    assert_eq!(
        still.inspection.unwrap().records_scanned,
        5,
        "nothing failed again"
    );

    // The replayed records on the original topic: original key, value and headers, no error context,
    // the replay's id and count.
    let on_orders = read_all(&s.env, &orders, 7).await;
    let replayed: Vec<_> = on_orders
        .iter()
        .filter(|(_, h)| h.contains_key("sluice.replay.id"))
        .collect();
    assert_eq!(replayed.len(), 3, "{on_orders:#?}");
    for (_, h) in &replayed {
        assert_eq!(h["sluice.replay.id"], "orders");
        assert_eq!(h["sluice.replay.count"], "1");
        assert_eq!(
            h["kafka_deliveryAttempt"], "\0\0\0\u{2}",
            "Spring's delivery attempt: a 4-byte big-endian 2"
        );
        assert!(h["trace-id"].starts_with("t-o"), "{h:?}");
        assert!(
            !h.keys().any(|k| k.starts_with("__connect.errors.")),
            "{h:?}"
        );
    }
    // Each replay has its own Events (not folded into the first replay's).
    let events = events_for(&s.client, &s.ns, "shop-dlq").await;
    for id in ["look", "orders", "payments"] {
        for (reason, prefix) in [
            ("ReplayStarted", format!("replay {id} started")),
            ("ReplayCompleted", format!("replay {id}:")),
        ] {
            assert!(
                events
                    .iter()
                    .any(|(_, r, m)| r == reason && m.starts_with(&prefix)),
                "{reason} {prefix:?} in {events:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_replay_killed_midway_continues_and_replays_each_record_exactly_once() {
    let Some(s) = setup("replay-kill").await else {
        return;
    };
    let dlq_topic = unique("kill-dlq");
    create_dlq(&s, "kill-dlq", &dlq_topic).await;
    let target = unique("retry");
    create_topic(&s.env, &target, 1).await;
    let api: Api<DeadLetterQueue> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the DLQ topic", WAIT, || async {
        let d = api.get("kill-dlq").await.map_err(|e| e.to_string())?;
        d.status
            .and_then(|st| st.topic)
            .map(|_| ())
            .ok_or("no topic yet".to_string())
    })
    .await;

    // 40 dead-letter records as a Connect sink writes them; 5 were replayed 3 times already.
    let context = |i: usize| {
        let mut h = vec![
            ("__connect.errors.topic".to_string(), "orders".to_string()),
            ("__connect.errors.partition".to_string(), "0".to_string()),
            ("__connect.errors.offset".to_string(), i.to_string()),
            (
                "__connect.errors.connector.name".to_string(),
                "orders-sink".to_string(),
            ),
            (
                "__connect.errors.exception.class.name".to_string(),
                DATA_EXCEPTION.to_string(),
            ),
        ];
        if i >= 35 {
            h.push(("sluice.replay.count".to_string(), "3".to_string()));
        }
        h
    };
    let records: Vec<_> = (0..40)
        .map(|i| (format!("k{i}"), format!("record-{i}"), context(i)))
        .collect();
    produce(&s.env, &dlq_topic, &records).await;

    apply_replays(
        &s,
        "kill-dlq",
        json!([{ "id": "slow", "targetTopic": target, "recordsPerSecond": 4, "maxReplayCount": 3 }]),
    )
    .await;
    let started = wait_replay(&s, "kill-dlq", "slow", "running", |r| {
        r.phase == replay_phase::RUNNING
    })
    .await;
    assert_eq!(
        started.end_offsets.values().sum::<i64>(),
        40,
        "{started:#?}"
    );
    // Records that arrive after the start are not replayed.
    produce(
        &s.env,
        &dlq_topic,
        &[("late".to_string(), "late-record".to_string(), context(99))],
    )
    .await;

    // Kill the replay process once part of the work is committed.
    let partway = wait_replay(&s, "kill-dlq", "slow", "some records replayed", |r| {
        r.counts.replayed >= 4
    })
    .await;
    assert!(partway.counts.replayed < 35, "{partway:#?}");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let pods_ref = &pods;
    // The local node reports the pod's process in its status a little after the process starts working.
    let (first_uid, pid) = wait_for("the replay pod's pid in its status", WAIT, || async move {
        let pod = pods_ref
            .get("kill-dlq-replay-slow")
            .await
            .map_err(|e| e.to_string())?;
        match running_pid(&pod) {
            Some(pid) => Ok((pod.uid(), pid)),
            None => Err(format!("{:?}", pod.status)),
        }
    })
    .await;
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }

    let done = wait_replay(&s, "kill-dlq", "slow", "done after a restart", |r| {
        r.phase == replay_phase::SUCCEEDED
    })
    .await;
    assert_eq!(done.restarts, 1, "{done:#?}");
    assert_eq!(
        (
            done.counts.matched,
            done.counts.replayed,
            done.counts.skipped_max_replay_count
        ),
        (40, 35, 5),
        "{done:#?}"
    );
    let replaced = pods.get_opt("kill-dlq-replay-slow").await.unwrap();
    assert!(replaced.is_none_or(|p| p.uid() != first_uid));

    let on_target = read_all(&s.env, &target, 35).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (value, headers) in &on_target {
        *seen.entry(value.clone()).or_default() += 1;
        assert_eq!(headers["sluice.replay.id"], "slow");
        assert_eq!(headers["sluice.replay.count"], "1");
    }
    let expected: BTreeMap<String, usize> = (0..35).map(|i| (format!("record-{i}"), 1)).collect();
    assert_eq!(
        seen, expected,
        "each record exactly once on the target topic"
    );

    let events = events_for(&s.client, &s.ns, "kill-dlq").await;
    assert!(
        events
            .iter()
            .any(|(_, r, m)| r == "ReplayRestarted" && m.contains("restart 1 of")),
        "{events:?}"
    );
}

/// Produces `values` to one partition of `topic`, under keys `<partition>-<i>`.
async fn produce_to(env: &Env, topic: &str, partition: i32, values: &[serde_json::Value]) {
    let producer = producer(env);
    for (i, value) in values.iter().enumerate() {
        let payload = match value {
            serde_json::Value::String(raw) => raw.clone(),
            other => other.to_string(),
        };
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&format!("{partition}-{i}"))
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Every record of `topic` as (partition, its `__connect.errors.*` headers without the prefix), read until
/// `n` came and then nothing for a few seconds.
async fn dead_letters_by_partition(
    env: &Env,
    topic: &str,
    n: usize,
) -> Vec<(i32, BTreeMap<String, String>)> {
    let consumer = support::topic_reader(env, topic);
    let mut out = vec![];
    let started = std::time::Instant::now();
    loop {
        let quiet = if out.len() >= n {
            Duration::from_secs(3)
        } else {
            WAIT.saturating_sub(started.elapsed())
        };
        let Ok(Ok(m)) = tokio::time::timeout(quiet, consumer.recv()).await else {
            break;
        };
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| {
                        let name = h.key.strip_prefix("__connect.errors.")?;
                        Some((
                            name.to_string(),
                            String::from_utf8_lossy(h.value?).into_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((m.partition(), headers));
    }
    out
}

#[tokio::test]
async fn routes_send_dead_letters_by_stage_and_error_class_to_per_topic_and_shared_queues() {
    let Some(s) = setup("dlq-routes").await else {
        return;
    };
    let (orders, payments) = (unique("orders"), unique("payments"));
    create_topic(&s.env, &orders, 2).await;
    create_topic(&s.env, &payments, 1).await;
    // `{topic}.DLT`: the orders' one is a DeadLetterQueue (2 partitions), the payments' a plain topic.
    create_dlq(&s, "orders-dlt", &format!("{orders}.DLT")).await;
    create_topic(&s.env, &format!("{payments}.DLT"), 1).await;
    let writes_topic = unique("writes");
    create_dlq(&s, "writes", &writes_topic).await;
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", s.env.mongodb_uri.as_str())],
    )
    .await;
    let db = unique("routes");
    s.create_connector(
        "shop-sink",
        json!({}),
        json!({
            "type": "mongodb-sink",
            "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": db, "collection": "orders" },
            "sink": { "topics": [orders, payments], "writeModel": "insert", "documentIdStrategy": "providedInValue" },
            "errors": { "tolerance": "all", "contextHeadersEnable": true, "deadLetterRoutes": [
                { "stages": ["KEY_CONVERTER", "VALUE_CONVERTER"], "deadLetterQueueTopic": "{topic}.DLT", "partition": "original" },
                { "errorClasses": ["11000"], "deadLetterQueueRef": { "name": "writes" }, "partition": "original" }
            ] }
        }),
    )
    .await;
    s.wait_connector("shop-sink", "Ready: every dead-letter topic there", |c| {
        has(c, "Ready", "True", "TasksReady")
    })
    .await;

    // Per partition: unreadable values, duplicate _ids (MongoDB's 11000), and one value without an _id
    // (a TASK_PUT error that no route takes).
    produce_to(
        &s.env,
        &orders,
        0,
        &[
            json!({"_id": "o1", "v": 1}),
            json!("{poison"),
            json!({"_id": "o1", "v": 2}),
        ],
    )
    .await;
    produce_to(
        &s.env,
        &orders,
        1,
        &[
            json!("{poison"),
            json!({"_id": "o2", "v": 1}),
            json!({"_id": "o2", "v": 2}),
        ],
    )
    .await;
    produce_to(
        &s.env,
        &payments,
        0,
        &[
            json!("not json"),
            json!({"v": 0}),
            json!({"_id": "p1", "v": 1}),
            json!({"_id": "p1", "v": 2}),
        ],
    )
    .await;

    // Unreadable records in their topic's .DLT, in the partition they came from.
    let orders_dlt = dead_letters_by_partition(&s.env, &format!("{orders}.DLT"), 2).await;
    let mut coordinates: Vec<(i32, String, String, String)> = orders_dlt
        .iter()
        .map(|(p, h)| {
            (
                *p,
                h["topic"].clone(),
                h["partition"].clone(),
                h["stage"].clone(),
            )
        })
        .collect();
    coordinates.sort();
    assert_eq!(
        coordinates,
        [
            (0, orders.clone(), "0".into(), "VALUE_CONVERTER".into()),
            (1, orders.clone(), "1".into(), "VALUE_CONVERTER".into())
        ]
    );
    let payments_dlt = dead_letters_by_partition(&s.env, &format!("{payments}.DLT"), 1).await;
    assert_eq!(payments_dlt.len(), 1, "{payments_dlt:?}");
    assert_eq!(payments_dlt[0].1["topic"], payments);
    // Duplicate keys in the shared queue, each in its original partition.
    let writes = dead_letters_by_partition(&s.env, &writes_topic, 3).await;
    let mut by_partition: Vec<(i32, String, String)> = writes
        .iter()
        .map(|(p, h)| (*p, h["topic"].clone(), h["exception.class.name"].clone()))
        .collect();
    by_partition.sort();
    let write_exception = "com.mongodb.kafka.connect.sink.dlq.WriteException".to_string();
    assert_eq!(
        by_partition,
        [
            (0, orders.clone(), write_exception.clone()),
            (0, payments.clone(), write_exception.clone()),
            (1, orders.clone(), write_exception.clone())
        ],
        "{writes:?}"
    );
    assert!(
        writes
            .iter()
            .all(|(_, h)| h["exception.message"].starts_with("v=1, code=11000,"))
    );

    // The record no route takes is an error, skipped, and dead-lettered nowhere.
    let conn = s
        .wait_connector("shop-sink", "7 record errors counted", |c| {
            c.status
                .as_ref()
                .and_then(|st| st.totals.as_ref())
                .is_some_and(|t| t.total_record_errors == 7)
        })
        .await;
    let totals = conn.status.unwrap().totals.unwrap();
    assert_eq!(
        (
            totals.total_records_skipped,
            totals.dead_letter_queue_produce_requests,
            totals.dead_letter_queue_produce_failures
        ),
        (7, 6, 0),
        "{totals:?}"
    );

    // Each DeadLetterQueue shows the route into it and inspects what it holds.
    let api: Api<DeadLetterQueue> = Api::namespaced(s.client.clone(), &s.ns);
    for (name, depth, field) in [
        ("orders-dlt", 2, "spec.errors.deadLetterRoutes[0]"),
        ("writes", 3, "spec.errors.deadLetterRoutes[1]"),
    ] {
        let status = wait_for(
            &format!("{name}: {depth} records inspected"),
            WAIT,
            || async {
                let d = api.get(name).await.map_err(|e| e.to_string())?;
                match d.status {
                    Some(st)
                        if st.inspection.as_ref().is_some_and(|i| i.depth == depth)
                            && !st.routes.is_empty() =>
                    {
                        Ok(st)
                    }
                    other => Err(format!(
                        "{other:#?}\noperator log:\n{}",
                        s.operator.log_tail()
                    )),
                }
            },
        )
        .await;
        assert_eq!(status.connectors, ["shop-sink"]);
        let fields: Vec<&str> = status.routes.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, [field], "{:#?}", status.routes);
    }
    let writes_status = api.get("writes").await.unwrap().status.unwrap();
    assert_eq!(writes_status.routes[0].error_classes, ["11000"]);
    let inspection = writes_status.inspection.unwrap();
    assert_eq!(inspection.by_error_class.get(&write_exception), Some(3));
    assert_eq!(inspection.by_original_topic.get(&orders), Some(2));
    assert_eq!(inspection.by_original_topic.get(&payments), Some(1));
    let orders_status = api.get("orders-dlt").await.unwrap().status.unwrap();
    assert_eq!(orders_status.routes[0].stages.len(), 2);
    assert_eq!(
        orders_status
            .inspection
            .unwrap()
            .by_original_topic
            .get(&orders),
        Some(2)
    );

    // The fix for the duplicates (the first documents were wrong), then a replay of the routed queue:
    // the second values land.
    let mongo = mongodb::Client::with_uri_str(&s.env.mongodb_uri)
        .await
        .unwrap();
    let coll = mongo
        .database(&db)
        .collection::<mongodb::bson::Document>("orders");
    let removed = coll
        .delete_many(doc! { "_id": { "$in": ["o1", "o2", "p1"] } })
        .await
        .unwrap();
    assert_eq!(removed.deleted_count, 3);
    apply_replays(&s, "writes", json!([{ "id": "after-fix" }])).await;
    let done = wait_replay(&s, "writes", "after-fix", "done", |r| {
        r.phase == replay_phase::SUCCEEDED
    })
    .await;
    assert_eq!(
        (done.counts.matched, done.counts.replayed),
        (3, 3),
        "{done:#?}"
    );
    let coll = &coll;
    wait_for("the replayed values in MongoDB", WAIT, || async {
        let mut found = BTreeMap::new();
        for id in ["o1", "o2", "p1"] {
            let d = coll
                .find_one(doc! { "_id": id })
                .await
                .map_err(|e| e.to_string())?;
            found.insert(id, d.and_then(|d| d.get_i32("v").ok()));
        }
        let want = BTreeMap::from([("o1", Some(2)), ("o2", Some(2)), ("p1", Some(2))]);
        if found == want {
            Ok(())
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    // The replayed records went back to the partitions they came from.
    let replayed: Vec<(i32, String)> = {
        let consumer = support::topic_reader(&s.env, &orders);
        let mut out = vec![];
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
            if m.headers()
                .is_some_and(|hs| hs.iter().any(|h| h.key == "sluice.replay.id"))
            {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.push((m.partition(), value));
            }
        }
        out.sort();
        out
    };
    assert_eq!(
        replayed,
        [
            (0, json!({"_id": "o1", "v": 2}).to_string()),
            (1, json!({"_id": "o2", "v": 2}).to_string())
        ]
    );
}
