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
    Env, TaskProcess, committed_reader, count_committed, create_secret, create_topic,
    create_topic_if_missing, create_topic_with, events_for, setup, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// A source task config with exactly once on and heartbeats off; `connector` names the task (its
/// `transactional.id`) and its offsets topic: a task SIGKILLed in a transaction holds back every
/// `read_committed` read of its offsets partition until the broker aborts it, so tests running side by
/// side keep their offsets apart (README Guarantees 8).
fn config(env: &Env, db: &str, connector: &str, dlq: Option<&str>) -> String {
    config_with(env, db, connector, dlq, "{intervalMs: 0}")
}

/// [`config`] with these heartbeat settings.
fn config_with(env: &Env, db: &str, connector: &str, dlq: Option<&str>, heartbeat: &str) -> String {
    format!(
        "type: mongodb-source\nconnector: {connector}\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         source:\n  spec: {{topicPrefix: eos, heartbeat: {heartbeat}, exactlyOnce: required}}\n  \
         offsetPartitionName: {connector}\n  offsetStorageTopic: offsets-{connector}\n  startupMode: latest\n\
         errors:\n  spec: {{tolerance: all}}{}",
        env.kafka_bootstrap,
        dlq.map(|t| format!("\n  deadLetterRoutes: [{{topic: {t}, contextHeadersEnable: true}}]"))
            .unwrap_or_default()
    )
}

/// A `read_committed` reader of `topic`, created first unless the task did (as the task would: one
/// partition), so the reader's subscription finds it.
async fn reader(env: &Env, topic: &str) -> rdkafka::consumer::StreamConsumer {
    create_topic_if_missing(env, topic, 1).await;
    committed_reader(env, topic)
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
                        "exactlyOnce": "required", "offsets": { "storageTopic": format!("offsets-{name}") } },
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

/// The records of `topic` a `read_committed` reader sees, (key, value): the first `n`, or with `settle` all
/// of them once `n` arrived and nothing more for a few seconds.
async fn committed_records(
    env: &Env,
    topic: &str,
    n: usize,
    settle: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer = reader(env, topic).await;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + WAIT * 2;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} records on {topic}",
            out.len()
        );
        let wait = if out.len() < n {
            WAIT
        } else {
            Duration::from_secs(4)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => {
                out.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
                if !settle && out.len() >= n {
                    return out;
                }
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) if out.len() >= n => return out,
            Err(_) => panic!("only {} of {n} records on {topic}", out.len()),
        }
    }
}

#[tokio::test]
async fn a_record_the_broker_refuses_is_dead_lettered_in_the_batch_s_transaction() {
    let Some(env) = Env::get() else { return };
    let db = unique("eos");
    let connector = unique("refused");
    let (topic, dlq) = (format!("eos.{db}.orders"), unique("eos-dlq"));
    // The events' topic takes records of at most 2,000 bytes; the dead-letter topic the broker's default.
    create_topic_with(&env, &topic, 1, &[("max.message.bytes", "2000")]).await;
    create_topic(&env, &dlq, 1).await;
    let coll = collection(&env, &db).await;
    let task = TaskProcess::start(
        &env,
        &connector,
        &config(&env, &db, &connector, Some(&dlq)),
        &env.mongodb_uri,
    );
    task.wait_running().await;
    // Apart, so each is a batch (a transaction) of its own.
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    count_committed(&env, &topic, 1).await;
    coll.insert_one(doc! { "_id": 1, "big": "x".repeat(5_000) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    coll.insert_one(doc! { "_id": 2 }).await.unwrap();
    let events = count_committed(&env, &topic, 2).await;
    assert_eq!(events, BTreeMap::from([(0, 1), (2, 1)]), "the others once");
    let letters = committed_records(&env, &dlq, 1, true).await;
    assert_eq!(letters.len(), 1, "the refused event dead-lettered once");
    let letter: Value = serde_json::from_slice(&letters[0].1).unwrap();
    assert_eq!(letter["documentKey"]["_id"], 1);
    let status = task.status().await.unwrap();
    let ledger = &status["partitions"][&connector]["errors"];
    assert_eq!(
        (
            ledger["totalRecordErrors"].as_i64(),
            ledger["deadLetterQueueProduceRequests"].as_i64()
        ),
        (Some(1), Some(1)),
        "counted once, stored with the token: {status}"
    );
    assert!(
        status["delivery"]["aborted"].as_i64() >= Some(1),
        "{status}"
    );
}

#[tokio::test]
async fn heartbeats_are_committed_with_the_token_and_a_restart_resumes_there() {
    let Some(env) = Env::get() else { return };
    let db = unique("eos");
    let connector = unique("beats");
    let heartbeats = unique("heartbeats");
    // A replica set reports a post-batch resume token on every empty getMore; the fault peer adds it.
    env.fault_peer_rule(
        json!({ "command": "getMore", "database": db, "collection": "orders",
        "postBatchResumeToken": "clock" }),
    )
    .await;
    let cfg = config_with(
        &env,
        &db,
        &connector,
        None,
        &format!("{{intervalMs: 500, topic: {heartbeats}}}"),
    );
    let coll = collection(&env, &db).await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    // The fault peer's token stands for the start of the current second: keep the heartbeats' second
    // after this insert's, or resuming from them replays it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut task = TaskProcess::start(&env, &connector, &cfg, &env.fault_peer_uri);
    task.wait_running().await;
    let beats = committed_records(&env, &heartbeats, 1, false).await;
    let key: Value = serde_json::from_slice(&beats[0].0).unwrap();
    assert_eq!(key, json!({ "partition": connector }));
    let status = task.status().await.unwrap();
    assert!(
        status["delivery"]["committed"].as_i64() >= Some(1),
        "{status}"
    );
    assert_eq!(task.stop().await, 0);

    // The heartbeat's token (committed with it) is where a restarted task resumes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    coll.insert_one(doc! { "_id": 1, "item": "while down" })
        .await
        .unwrap();
    let task = TaskProcess::start(&env, &format!("{connector}-2"), &cfg, &env.fault_peer_uri);
    task.wait_running().await;
    let seen = count_committed(&env, &format!("eos.{db}.orders"), 1).await;
    assert_eq!(seen, BTreeMap::from([(1, 1)]));
}

#[tokio::test]
async fn a_rotated_partition_name_starts_a_new_key_and_reuses_nothing_of_the_old_one() {
    let Some(env) = Env::get() else { return };
    let db = unique("eos");
    let connector = unique("rotated");
    let topic = format!("eos.{db}.orders");
    let coll = collection(&env, &db).await;
    let cfg = config(&env, &db, &connector, None);
    let task = TaskProcess::start(&env, &connector, &cfg, &env.mongodb_uri);
    task.wait_running().await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    count_committed(&env, &topic, 1).await;
    drop(task);
    // Changed while no task runs: the old partition name's token would resume before it.
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    // What the operator gives the task after a rotation: the next partition name, the same task (and
    // transactional.id).
    let rotated = cfg.replace(
        &format!("offsetPartitionName: {connector}"),
        &format!("offsetPartitionName: {connector}.2"),
    );
    let task = TaskProcess::start(&env, &format!("{connector}-2"), &rotated, &env.mongodb_uri);
    task.wait_running().await;
    coll.insert_one(doc! { "_id": 2 }).await.unwrap();
    let seen = count_committed(&env, &topic, 2).await;
    assert_eq!(
        seen,
        BTreeMap::from([(0, 1), (2, 1)]),
        "the new name starts afresh (latest): nothing resumed from the old name's token"
    );
    let status = task.status().await.unwrap();
    assert!(
        status["partitions"].get(format!("{connector}.2")).is_some()
            && status["partitions"].get(&connector).is_none(),
        "the ledger of the new name only: {status}"
    );
}

/// A transactional producer of its own `transactional.id`, ready for transactions.
fn transactional(env: &Env, id: &str) -> rdkafka::producer::FutureProducer {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("transactional.id", id)
        .create()
        .unwrap();
    producer.init_transactions(WAIT).unwrap();
    producer
}

/// The failure `make test` found: a task's token committed after another task's transaction (still open
/// on the same offsets partition) was not read, because the read's end was the last stable offset, so the
/// restarted task resumed at its previous token and wrote a batch again. The read waits for the open
/// transaction to end and then has the token.
#[tokio::test]
async fn a_token_committed_after_another_task_s_open_transaction_is_read() {
    use rdkafka::producer::{FutureRecord, Producer};
    let Some(env) = Env::get() else { return };
    let topic = unique("offsets");
    create_topic(&env, &topic, 1).await;
    let send = |producer: &rdkafka::producer::FutureProducer, key: &str, value: &str| {
        let record = FutureRecord::to(&topic).key(key).payload(value);
        producer.send_result(record).map_err(|(e, _)| e).unwrap()
    };
    let ours = transactional(&env, &unique("ours"));
    ours.begin_transaction().unwrap();
    send(&ours, "ours", "token-0").await.unwrap().unwrap();
    ours.commit_transaction(WAIT).unwrap();
    // Another task's transaction, left open (it died in it), then our next token, committed.
    let other = transactional(&env, &unique("other"));
    other.begin_transaction().unwrap();
    send(&other, "other", "half-written")
        .await
        .unwrap()
        .unwrap();
    ours.begin_transaction().unwrap();
    send(&ours, "ours", "token-1").await.unwrap().unwrap();
    ours.commit_transaction(WAIT).unwrap();

    let read = |timeout: Duration| {
        let config = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &env.kafka_bootstrap)
            .clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            sluice::kafka::read::latest_committed_values(
                &config,
                &unique("reader"),
                "test",
                &topic,
                timeout,
                |k| k == b"ours",
            )
            .unwrap()
        })
    };
    // While the other transaction is open, the read does not end (never with the older token).
    let waiting = read(Duration::from_secs(3)).join().unwrap();
    assert_eq!(waiting, None, "the read waits for the open transaction");
    // It ends (the broker aborts it after transaction.timeout.ms, or the task's next instance does).
    let reading = read(WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    other.abort_transaction(WAIT).unwrap();
    let latest = reading
        .join()
        .unwrap()
        .expect("the read ends once the transaction does");
    assert_eq!(
        latest.get(b"ours".as_slice()),
        Some(&Some(b"token-1".to_vec())),
        "the token committed after the open transaction"
    );
}
