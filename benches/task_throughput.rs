//! `make bench-task`: sink and source throughput of one `sluice task` process (release build) on this
//! machine, against the loopback environment's Apache Kafka and mongo-java-server. Prints figures; asserts
//! nothing about speed.
//!
//! SLUICE_BENCH_RECORDS sets the record count (default 50000 for the sink, a fifth of that for the source).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{Env, TaskProcess, create_topic, unique};

fn main() {
    // `cargo test --all-targets` runs benches too, without `--bench`: a benchmark is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `make bench-task`");
        return;
    }
    let Some(env) = Env::get() else {
        eprintln!("the loopback environment is not up: run `make bench-task`");
        std::process::exit(1);
    };
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        println!("sluice task throughput ({} cores, release build)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        let (sink_secs, sink_n) = sink(&env, n).await;
        println!("sink   : {sink_n:>7} records  {sink_secs:>7.2} s  {:>9.0} records/s   (Kafka -> mongo-java-server, insert, unordered bulk)", sink_n as f64 / sink_secs);
        let (source_secs, source_n) = source(&env, (n / 5).max(1)).await;
        println!("source : {source_n:>7} events   {source_secs:>7.2} s  {:>9.0} events/s    (mongo-java-server change stream -> Kafka)", source_n as f64 / source_secs);
    });
}

async fn count(env: &Env, db: &str) -> u64 {
    let client = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap();
    client
        .database(db)
        .collection::<Document>("orders")
        .count_documents(doc! {})
        .await
        .unwrap()
}

/// Records already in the topic; time from the task's start to the last document counted.
async fn sink(env: &Env, n: usize) -> (f64, usize) {
    let topic = unique("bench-sink");
    create_topic(env, &topic, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let value = format!(r#"{{"n": {i}, "item": "widget", "qty": {}}}"#, i % 7);
        acks.push(
            producer
                .send_result(FutureRecord::<(), _>::to(&topic).payload(&value))
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    let db = unique("bench");
    let cfg = format!(
        "type: mongodb-sink\nconnector: bench-sink\nnamespace: bench\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         sink: {{topics: [{topic}], writeModel: insert, maxBatchSize: 1000}}\nerrors:\n  spec: {{}}",
        env.kafka_bootstrap
    );
    let started = Instant::now();
    let _task = TaskProcess::start(env, &db, &cfg, &env.mongodb_uri);
    while count(env, &db).await < n as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "sink did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (started.elapsed().as_secs_f64(), n)
}

/// Inserts while the source task runs; time from the first insert to the last event acknowledged.
async fn source(env: &Env, n: usize) -> (f64, usize) {
    let db = unique("bench");
    let cfg = format!(
        "type: mongodb-source\nconnector: {db}\nnamespace: bench\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         source:\n  spec: {{topicPrefix: bench, heartbeat: {{intervalMs: 0}}}}\n  offsetPartitionName: {db}\n  \
         offsetStorageTopic: sluice-offsets\n  startupMode: latest\nerrors:\n  spec: {{}}",
        env.kafka_bootstrap
    );
    let task = TaskProcess::start(env, &db, &cfg, &env.mongodb_uri);
    while task.get("/healthz").await.as_deref() != Some("running") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let coll = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap()
        .database(&db)
        .collection::<Document>("orders");
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        coll.insert_many(
            chunk
                .iter()
                .map(|i| doc! { "n": *i as i64, "item": "widget" }),
        )
        .await
        .unwrap();
    }
    loop {
        let out = task
            .status()
            .await
            .and_then(|s| s["recordsOut"].as_u64())
            .unwrap_or(0);
        if out >= n as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "source did not finish in 10 minutes ({out}/{n})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (started.elapsed().as_secs_f64(), n)
}
