//! The chaos suite: a sink and a source Connector run under the operator while their task processes are
//! SIGKILLed again and again, the Kafka broker restarts and MongoDB is unavailable for a while; every record
//! is counted. Guarantees asserted: nothing is lost, nothing is dead-lettered or skipped because of an
//! outage (a sink's only dead letters are duplicate keys of records delivered twice after a kill), and the
//! outage shows as `Degraded` and clears. Duplicates are counted and printed, not failed on (at least once),
//! but for the exactly-once source (`exactlyOnce: required`, watching the same collection): a
//! `read_committed` reader of its topic sees every insert exactly once.
//!
//! `make test` runs it small (a few minutes); `make chaos` runs it at full size and prints the table.
//! Sizes come from the environment: `SLUICE_CHAOS_SINK_RECORDS`, `SLUICE_CHAOS_SOURCE_INSERTS`,
//! `SLUICE_CHAOS_KILLS`, `SLUICE_CHAOS_OUTAGE_SECONDS`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use sluice::crd::connector::ErrorCounters;
use sluice::kafka::renewing::RenewingProducer;
use support::{
    Env, Setup, committed_reader, condition, create_secret, create_topic, dead_letter_headers,
    events_for, restart_kafka, running_pid, setup, topic_reader, unique,
};

fn size(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sizes {
    sink_records: u64,
    source_inserts: u64,
    kills: u64,
    outage: Duration,
}

impl Sizes {
    fn from_env() -> Sizes {
        Sizes {
            sink_records: size("SLUICE_CHAOS_SINK_RECORDS", 6_000),
            source_inserts: size("SLUICE_CHAOS_SOURCE_INSERTS", 1_500),
            kills: size("SLUICE_CHAOS_KILLS", 4),
            outage: Duration::from_secs(size("SLUICE_CHAOS_OUTAGE_SECONDS", 10)),
        }
    }
}

/// How long a whole run may take to settle.
const SETTLE: Duration = Duration::from_secs(600);

/// What both Connectors share: this Kafka, and a killed task back quickly.
fn defaults(s: &Setup) -> serde_json::Value {
    json!({
        "kafka": { "bootstrapServers": s.env.kafka_bootstrap },
        "restart": { "backoffInitialSeconds": 1, "backoffMaxSeconds": 2 },
    })
}

/// The pids of a Connector's running task processes (the local node reports them as container ids).
async fn task_pids(client: &Client, ns: &str, connector: &str) -> Vec<i32> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods
        .list(&ListParams::default().labels(&format!("sluice.dev/connector={connector}")))
        .await
    else {
        return vec![];
    };
    list.items.iter().filter_map(running_pid).collect()
}

/// SIGKILLs one running task process of the Connector, waiting for one to run; returns its pid.
async fn kill_a_task(client: &Client, ns: &str, connector: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pids = task_pids(client, ns, connector).await;
        if let Some(pid) = pids.get(rand::random::<u32>() as usize % pids.len().max(1)) {
            // SAFETY: kill(2) on a pid of a task process this test's environment started.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
            return *pid;
        }
        assert!(
            Instant::now() < deadline,
            "no running task of {connector} to kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the broker stays down in its one restart per run.
const KAFKA_DOWN_SECONDS: u64 = 3;

/// Every reason a Connector's `Degraded` (when True) and `Ready` (when False) showed while `running` was set.
fn watch_degraded(
    s: &Setup,
    name: &str,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeSet<String>> {
    let api = s.connectors();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while running.load(Ordering::Relaxed) {
            if let Ok(c) = api.get(&name).await {
                let (status, reason, _) = condition(&c, "Degraded");
                if status == "True" {
                    seen.insert(reason);
                }
                let (status, reason, _) = condition(&c, "Ready");
                if status == "False" {
                    seen.insert(reason);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        seen
    })
}

/// Produces `{"_id": i}` for every i in `ids`, keyed by i, at about `per_second`. A send that times out is
/// sent again, with the producer sluice's source uses: librdkafka's idempotent producer can keep timing out
/// every send after a broker restart (a `make test` run saw 20 attempts of 30 s fail), and a replaced one
/// delivers; the test's records must all get there.
async fn produce_paced(env: &Env, topic: &str, ids: std::ops::Range<u64>, per_second: u64) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    let producer = Arc::new(RenewingProducer::new(config).unwrap());
    let started = Instant::now();
    let mut sends = Vec::new();
    for i in ids.clone() {
        let key = i.to_string();
        let value = format!(r#"{{"_id": {i}}}"#);
        let producer = producer.clone();
        let topic = topic.to_string();
        sends.push(tokio::spawn(async move {
            for attempt in 1.. {
                let sent = producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&value),
                        Duration::from_secs(30),
                    )
                    .await;
                match sent {
                    Ok(()) => return,
                    Err(e) if attempt < 20 => eprintln!("record {key} sent again: {e}"),
                    Err(e) => panic!("the test's own record {key} is not produced: {e}"),
                }
            }
        }));
        let due = started + Duration::from_secs_f64((i - ids.start) as f64 / per_second as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    for s in sends {
        s.await.unwrap();
    }
}

/// What a run saw.
#[derive(Debug, Default)]
struct Counted {
    expected: u64,
    delivered_distinct: u64,
    duplicates: u64,
    dead_lettered_other: u64,
    degraded: BTreeSet<String>,
    kills: u64,
}

impl Counted {
    fn lost(&self) -> u64 {
        self.expected - self.delivered_distinct
    }

    fn row(&self, scenario: &str) -> String {
        format!(
            "| {scenario} | {} | {} | {} | {} | {} | {} |",
            self.expected,
            self.lost(),
            self.duplicates,
            self.dead_lettered_other,
            self.kills,
            self.degraded.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// Waits until `<db>.orders` holds `n` documents (each id once: the ids are the documents' `_id`).
async fn wait_documents(env: &Env, db: &str, n: u64) -> u64 {
    let coll = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(db)
        .collection::<Document>("orders");
    let deadline = Instant::now() + SETTLE;
    loop {
        let count = coll.count_documents(doc! {}).await.unwrap_or(0);
        if count >= n || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Returns once the sink's collection grows (records are produced all along), within [`SETTLE`].
async fn sink_writes_again(env: &Env, db: &str) {
    let coll = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(db)
        .collection::<Document>("orders");
    let before = coll.count_documents(doc! {}).await.unwrap_or(0);
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if coll.count_documents(doc! {}).await.unwrap_or(0) > before {
            return;
        }
    }
    panic!("the sink wrote nothing for {SETTLE:?} after its tasks were Ready");
}

/// Whether a dead letter is the duplicate key of a record written twice (after a kill or a rebalance).
fn duplicate_key(message: &str) -> bool {
    message.contains("E11000") || message.contains("duplicate key")
}

/// The `documentKey._id` of a change event of a counted insert (the warm-up insert, -1, is not counted).
fn counted_id(m: &impl Message) -> Option<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
    v["documentKey"]["_id"].as_u64()
}

/// Reads a topic until `n` distinct `documentKey._id`s arrived (or the settle time passed), `read_committed`
/// when `committed`; returns (distinct, total).
async fn read_change_events(env: &Env, topic: &str, n: u64, committed: bool) -> (u64, u64) {
    let consumer = if committed {
        committed_reader(env, topic)
    } else {
        topic_reader(env, topic)
    };
    let mut ids = BTreeSet::new();
    let mut total = 0u64;
    let deadline = Instant::now() + SETTLE;
    while (ids.len() as u64) < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(m)) => {
                if let Some(id) = counted_id(&m) {
                    total += 1;
                    ids.insert(id);
                }
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(_) => {}
        }
    }
    // What else arrives within a moment counts as a duplicate too.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        total += u64::from(counted_id(&m).is_some());
    }
    (ids.len() as u64, total)
}

#[tokio::test]
async fn sigkills_a_broker_restart_and_a_mongodb_outage_lose_nothing_and_dead_letter_nothing() {
    let Some(s) = setup("chaos").await else {
        return;
    };
    let sizes = Sizes::from_env();
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", s.env.fault_peer_uri.as_str())],
    )
    .await;

    // The sink: 3 partitions, 2 tasks, records inserted by their own `_id` (a second delivery is a
    // duplicate key, dead-lettered as a record error: that is how duplicates are counted).
    let (sink, sink_db, topic, dlq) = (
        unique("sink"),
        unique("chaos-sink"),
        unique("orders"),
        unique("orders-dlq"),
    );
    create_topic(&s.env, &topic, 3).await;
    create_topic(&s.env, &dlq, 1).await;
    s.create_connector(
        &sink,
        defaults(&s),
        json!({
            "type": "mongodb-sink", "tasksMax": 2,
            // A killed task's partitions go to the other task (or its replacement) within seconds.
            "kafka": { "properties": { "session.timeout.ms": "6000", "heartbeat.interval.ms": "1000" } },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" },
                         "database": sink_db, "collection": "orders" },
            "sink": { "topics": [topic], "writeModel": "insert", "documentIdStrategy": "providedInValue",
                      "offsetFlushIntervalMs": 1000 },
            "errors": { "tolerance": "all", "deadLetterQueueTopic": dlq, "contextHeadersEnable": true,
                        "retryDelayMaxMs": 1000 },
        }),
    )
    .await;
    // The source: inserts into its collection become change events on cdc.<db>.orders.
    let (source, source_db) = (unique("source"), unique("chaos-src"));
    let events = format!("cdc.{source_db}.orders");
    s.create_connector(
        &source,
        defaults(&s),
        json!({
            "type": "mongodb-source",
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" },
                         "database": source_db, "collection": "orders" },
            "source": { "topicPrefix": "cdc", "heartbeat": { "intervalMs": 0 } },
            "errors": { "retryDelayMaxMs": 1000 },
        }),
    )
    .await;
    // The same collection again, exactly once, to its own topics eos.<db>.orders.
    let source_eo = unique("source-eo");
    let events_eo = format!("eos.{source_db}.orders");
    s.create_connector(
        &source_eo,
        defaults(&s),
        json!({
            "type": "mongodb-source",
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" },
                         "database": source_db, "collection": "orders" },
            "source": { "topicPrefix": "eos", "heartbeat": { "intervalMs": 0 },
                        "exactlyOnce": "required" },
            "errors": { "retryDelayMaxMs": 1000 },
        }),
    )
    .await;
    let all = [&sink, &source, &source_eo];
    for name in all {
        s.wait_condition(name, "Ready", "True", "TasksReady").await;
    }

    // Each source streams an event before the counted inserts. On the loopback peer, a source's very
    // first event after its first start is what a gap not understood yet can still lose (README,
    // Guarantees 4: one run in 4 after a first start's start point was stored, at least once that time);
    // the guarantees under kills, restarts and outages are what this suite counts.
    mongodb::Client::with_uri_str(&s.env.mongodb_uri)
        .await
        .unwrap()
        .database(&source_db)
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": -1_i64 })
        .await
        .unwrap();
    for (topic, committed) in [(&events, false), (&events_eo, true)] {
        support::create_topic_if_missing(&s.env, topic, 1).await;
        let consumer = if committed {
            committed_reader(&s.env, topic)
        } else {
            topic_reader(&s.env, topic)
        };
        tokio::time::timeout(SETTLE, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("the warm-up event on {topic}"))
            .unwrap();
    }

    let running = Arc::new(AtomicBool::new(true));
    let sink_seen = watch_degraded(&s, &sink, running.clone());
    let source_seen = watch_degraded(&s, &source, running.clone());
    let source_eo_seen = watch_degraded(&s, &source_eo, running.clone());
    let env = &s.env;
    let (sink_records, inserts) = (sizes.sink_records, sizes.source_inserts);
    let run_for = Duration::from_secs(30 + 2 * sizes.outage.as_secs() + 3 * sizes.kills);

    let produce = produce_paced(
        env,
        &topic,
        0..sink_records,
        (sink_records / run_for.as_secs()).max(1),
    );
    let insert = async {
        let coll = mongodb::Client::with_uri_str(&env.mongodb_uri)
            .await
            .unwrap()
            .database(&source_db)
            .collection::<Document>("orders");
        let started = Instant::now();
        for i in 0..inserts {
            coll.insert_one(doc! { "_id": i as i64 }).await.unwrap();
            let due = started + run_for.mul_f64(i as f64 / inserts as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    };
    let chaos = async {
        let mut kills = 0;
        let pause = run_for / (sizes.kills as u32 * 2 + 4);
        for round in 0..sizes.kills {
            tokio::time::sleep(pause).await;
            kill_a_task(&s.client, &s.ns, &sink).await;
            kill_a_task(&s.client, &s.ns, &source).await;
            kill_a_task(&s.client, &s.ns, &source_eo).await;
            kills += 1;
            if round == sizes.kills / 3 {
                tokio::task::spawn_blocking(|| restart_kafka(KAFKA_DOWN_SECONDS))
                    .await
                    .unwrap();
            }
            if round == (2 * sizes.kills) / 3 {
                // The outage, once the tasks killed this round run again (a task that is down or
                // rebalancing writes nothing, so it would not meet the outage); no kill while it lasts.
                for name in all {
                    s.wait_condition(name, "Ready", "True", "TasksReady").await;
                }
                // Ready is not consuming: a restarted sink task may wait for its group's rebalance (a
                // SIGKILLed member stays in the group until its session times out). The outage starts once
                // the sink writes again, so it meets the outage (make test saw a run where it did not).
                sink_writes_again(env, &sink_db).await;
                for db in [&sink_db, &source_db] {
                    env.fault_peer_rule(json!({ "command": "*", "database": db,
                        "forMs": sizes.outage.as_millis() as u64, "closeConnection": true }))
                        .await;
                }
                tokio::time::sleep(sizes.outage + Duration::from_secs(2)).await;
            }
        }
        kills
    };
    let ((), (), kills) = tokio::join!(produce, insert, chaos);

    // Settle: every record delivered, then count.
    let written = wait_documents(env, &sink_db, sink_records).await;
    let letters = dead_letter_headers(env, &dlq, Duration::from_secs(5)).await;
    // The records dead-lettered, once each (a record handled again after a kill can be dead-lettered twice).
    let dead_lettered_records: BTreeSet<(String, String)> = letters
        .iter()
        .map(|h| {
            let header = |name: &str| h.get(name).cloned().unwrap_or_default();
            (
                header("__connect.errors.partition"),
                header("__connect.errors.offset"),
            )
        })
        .collect();
    let (duplicates, others): (Vec<String>, Vec<String>) = letters
        .into_iter()
        .map(|mut h| {
            h.remove("__connect.errors.exception.message")
                .unwrap_or_default()
        })
        .partition(|m| duplicate_key(m));
    let (duplicates, other) = (duplicates.len() as u64, others.len() as u64);
    let samples: Vec<&String> = others.iter().take(5).collect();
    let (distinct, total) = read_change_events(env, &events, inserts, false).await;
    let (distinct_eo, total_eo) = read_change_events(env, &events_eo, inserts, true).await;
    for name in all {
        s.wait_condition(name, "Ready", "True", "TasksReady").await;
    }
    // The sink's totals, from the ledgers its tasks keep with their offsets: each dead-lettered record
    // once, however often a task was killed.
    let want = dead_lettered_records.len() as i64;
    let exact = |t: &ErrorCounters| {
        t.total_record_errors == want
            && t.dead_letter_queue_produce_requests - t.dead_letter_queue_produce_failures == want
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let sink_totals = loop {
        let totals = s
            .connectors()
            .get(&sink)
            .await
            .ok()
            .and_then(|c| c.status?.totals)
            .unwrap_or_default();
        if exact(&totals) || Instant::now() > deadline {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    running.store(false, Ordering::Relaxed);
    let sink_counted = Counted {
        expected: sink_records,
        delivered_distinct: written,
        duplicates,
        dead_lettered_other: other,
        degraded: sink_seen.await.unwrap(),
        kills,
    };
    let source_counted = Counted {
        expected: inserts,
        delivered_distinct: distinct,
        duplicates: total - distinct,
        dead_lettered_other: 0,
        degraded: source_seen.await.unwrap(),
        kills,
    };
    let source_eo_counted = Counted {
        expected: inserts,
        delivered_distinct: distinct_eo,
        duplicates: total_eo - distinct_eo,
        dead_lettered_other: 0,
        degraded: source_eo_seen.await.unwrap(),
        kills,
    };
    println!(
        "\n| scenario | expected | lost | duplicates | dead-lettered (not duplicates) | SIGKILLs | reasons seen (Degraded, not Ready) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("{}", sink_counted.row("sink, 3 partitions, 2 tasks"));
    println!("{}", source_counted.row("source, at least once"));
    println!(
        "{}",
        source_eo_counted.row("source, exactly once (read_committed)")
    );
    println!(
        "(Kafka restarted once, {KAFKA_DOWN_SECONDS} s down; MongoDB unavailable for {} s)",
        sizes.outage.as_secs()
    );
    println!(
        "sink status totals: {} record errors, {} dead-letter writes; the DLQ holds {} records of {want} \
         distinct records",
        sink_totals.total_record_errors,
        sink_totals.dead_letter_queue_produce_requests
            - sink_totals.dead_letter_queue_produce_failures,
        duplicates + other,
    );

    assert_eq!(
        sink_counted.lost(),
        0,
        "sink lost records: {sink_counted:?}"
    );
    assert_eq!(
        other, 0,
        "dead-lettered though nothing was wrong with them: {samples:?}"
    );
    assert_eq!(
        source_counted.lost(),
        0,
        "source lost events: {source_counted:?}"
    );
    assert_eq!(
        (source_eo_counted.lost(), source_eo_counted.duplicates),
        (0, 0),
        "the exactly-once source: every event once: {source_eo_counted:?}"
    );
    assert!(
        exact(&sink_totals),
        "status totals count each dead-lettered record once ({want} records): {sink_totals:?}"
    );
    for (name, seen) in [
        (&sink, &sink_counted.degraded),
        (&source, &source_counted.degraded),
        (&source_eo, &source_eo_counted.degraded),
    ] {
        assert!(
            seen.contains("MongoDBUnavailable"),
            "{name} showed the outage: seen {seen:?}"
        );
        let events = events_for(&s.client, &s.ns, name).await;
        for (type_, reason) in [
            ("Warning", "MongoDBUnavailable"),
            ("Normal", "MongoDBAvailable"),
        ] {
            assert!(
                events.iter().any(|(t, r, _)| t == type_ && r == reason),
                "{name}: a {type_} Event {reason} in {events:?}"
            );
        }
    }
}
