//! An exactly-once source (`spec.source.exactlyOnce: required`) against Apache Kafka's transactions and
//! mongo-java-server's change streams: a second instance of a task fences the first, which stops with its
//! termination message, and a `read_committed` reader sees every event once across SIGKILLs.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use mongodb::bson::{Document, doc};
use rdkafka::message::Message;
use serde_json::Value;
use serde_json::json;
use support::{
    Env, TaskProcess, committed_reader, create_secret, events_for, setup, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// A source task config with exactly once on; `connector` names the task (its `transactional.id`).
fn config(env: &Env, db: &str, connector: &str, dlq: Option<&str>) -> String {
    format!(
        "type: mongodb-source\nconnector: {connector}\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         source:\n  spec: {{topicPrefix: eos, heartbeat: {{intervalMs: 0}}, exactlyOnce: required}}\n  \
         offsetPartitionName: {connector}\n  offsetStorageTopic: sluice-offsets\n  startupMode: latest\n\
         errors:\n  spec: {{tolerance: all}}\n  contextHeadersEnable: true{}",
        env.kafka_bootstrap,
        dlq.map(|t| format!("\n  deadLetterTopic: {t}"))
            .unwrap_or_default()
    )
}

/// How often each inserted `_id` arrived, read `read_committed` until `n` distinct ones came and then
/// nothing for a few seconds.
async fn count_committed(env: &Env, topic: &str, n: usize) -> BTreeMap<i64, u32> {
    let consumer = committed_reader(env, topic);
    let mut seen = BTreeMap::new();
    let deadline = std::time::Instant::now() + WAIT * 2;
    loop {
        let wait = if seen.len() < n {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(4)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => {
                let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                let id = v["documentKey"]["_id"].as_i64().unwrap();
                *seen.entry(id).or_insert(0) += 1;
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) if seen.len() >= n => return seen,
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} events on {topic}",
                seen.len()
            ),
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
async fn a_second_instance_fences_the_first_and_no_event_is_written_twice() {
    let Some(env) = Env::get() else { return };
    let db = unique("eos");
    let connector = unique("fenced");
    let topic = format!("eos.{db}.orders");
    let coll = collection(&env, &db).await;
    let cfg = config(&env, &db, &connector, None);
    let mut first = TaskProcess::start(&env, &format!("{connector}-a"), &cfg, &env.mongodb_uri);
    first.wait_running().await;
    for i in 0..5 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    count_committed(&env, &topic, 5).await;
    let status = first.status().await.unwrap();
    assert_eq!(status["delivery"]["mode"], "exactlyOnce", "{status}");
    assert_eq!(
        status["delivery"]["transactionalId"],
        format!("sluice/test/{connector}/0")
    );
    assert!(status["delivery"]["lastCommitTime"].is_string(), "{status}");

    // The same task again, while the first still runs: it takes over the transactional.id. Both streams
    // see the next inserts; the first's transaction is refused, and it stops.
    let second = TaskProcess::start(&env, &format!("{connector}-b"), &cfg, &env.mongodb_uri);
    second.wait_running().await;
    for i in 5..10 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    assert_eq!(
        first.wait_exit(WAIT).await,
        6,
        "the fenced task's exit code; log:\n{}",
        first.log_tail()
    );
    let m = first.termination_message();
    assert_eq!(m["reason"], "TaskFenced", "{m}");
    assert_eq!(
        m["errorClass"],
        "org.apache.kafka.common.errors.ProducerFencedException"
    );
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains(&format!("transactional.id sluice/test/{connector}/0")),
        "{m}"
    );
    let seen = count_committed(&env, &topic, 10).await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert_eq!(seen.len(), 10, "every event: {seen:?}");
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    let status = second.status().await.unwrap();
    assert_eq!(status["recordsOut"], 5, "{status}");
}

#[tokio::test]
async fn sigkills_in_any_phase_leave_every_event_once_for_read_committed_readers() {
    let Some(env) = Env::get() else { return };
    let db = unique("eos");
    let connector = unique("killed");
    let topic = format!("eos.{db}.orders");
    let coll = collection(&env, &db).await;
    let cfg = config(&env, &db, &connector, None);
    let total = 600;
    // The first task stores a token before any kill (without one, a task starts from "now").
    let task = TaskProcess::start(&env, &format!("{connector}-0"), &cfg, &env.mongodb_uri);
    task.wait_running().await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    count_committed(&env, &topic, 1).await;
    let inserts = {
        let coll = coll.clone();
        tokio::spawn(async move {
            for i in 1..total {
                coll.insert_one(doc! { "_id": i }).await.unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    // SIGKILL a running task five times while the inserts go on (each kill lands in some phase of a
    // batch: produced, offset sent, committing), then let the last one finish.
    drop(task);
    for round in 1..5 {
        let task = TaskProcess::start(
            &env,
            &format!("{connector}-{round}"),
            &cfg,
            &env.mongodb_uri,
        );
        task.wait_running().await;
        tokio::time::sleep(Duration::from_millis(700 + 150 * round)).await;
        drop(task);
    }
    inserts.await.unwrap();
    let last = TaskProcess::start(&env, &format!("{connector}-last"), &cfg, &env.mongodb_uri);
    last.wait_running().await;
    let seen = count_committed(&env, &topic, total as usize).await;
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<i64> = (0..total).filter(|i| !seen.contains_key(i)).collect();
    println!(
        "exactly once, 5 SIGKILLs: {} events, {} lost, {} duplicated",
        total,
        lost.len(),
        duplicated.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
}

#[tokio::test]
async fn the_operator_reports_a_fenced_task_with_a_warning_event_and_restarts_it() {
    let Some(s) = setup("eos").await else { return };
    let env = &s.env;
    create_secret(
        &s.client,
        &s.ns,
        "mongo",
        &[("uri", env.mongodb_uri.as_str())],
    )
    .await;
    let (name, db) = (unique("eo"), unique("eos"));
    let topic = format!("eos.{db}.orders");
    s.create_connector(
        &name,
        json!({
            "kafka": { "bootstrapServers": env.kafka_bootstrap },
            "restart": { "backoffInitialSeconds": 1, "backoffMaxSeconds": 2 },
        }),
        json!({
            "type": "mongodb-source",
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" },
                         "database": db, "collection": "orders" },
            "source": { "topicPrefix": "eos", "heartbeat": { "intervalMs": 0 },
                        "exactlyOnce": "required" },
        }),
    )
    .await;
    s.wait_condition(&name, "Ready", "True", "TasksReady").await;
    let coll = collection(env, &db).await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    count_committed(env, &topic, 1).await;

    // The pod's task config, run once more by hand (a zombie of the task, say): it takes over the
    // transactional.id, so the pod's task is fenced at its next write.
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let cm = cms.get(&format!("{name}-tasks")).await.unwrap();
    let yaml: String = cm.data.unwrap()["task-0.yaml"]
        .lines()
        .filter(|l| !l.starts_with("httpPort:"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut intruder =
        TaskProcess::start(env, &format!("{name}-intruder"), &yaml, &env.mongodb_uri);
    intruder.wait_running().await;
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    wait_for("a TaskFenced Warning Event", WAIT, || async {
        let events = events_for(&s.client, &s.ns, &name).await;
        match events
            .iter()
            .find(|(t, r, _)| t == "Warning" && r == "TaskFenced")
        {
            Some((_, _, message)) => Ok(message.clone()),
            None => Err(format!("{events:?}")),
        }
    })
    .await;
    // The operator restarts the fenced task; the new pod fences the intruder in turn, which stops at its
    // next write.
    s.wait_condition(&name, "Ready", "True", "TasksReady").await;
    coll.insert_one(doc! { "_id": 2 }).await.unwrap();
    assert_eq!(
        intruder.wait_exit(WAIT).await,
        6,
        "the intruder is fenced by the restarted pod; log:\n{}",
        intruder.log_tail()
    );
    let seen = count_committed(env, &topic, 3).await;
    assert_eq!(
        seen,
        BTreeMap::from([(0, 1), (1, 1), (2, 1)]),
        "every event once for a read_committed reader"
    );
}
