//! `make bench`: sluice's task side by side with a standalone Kafka Connect worker running the MongoDB Kafka
//! connector, on the same broker and MongoDB peer, in the same run. Runs alternate (warm-up discarded, then
//! Connect, sluice, Connect, sluice, …) and the table shows medians and the sluice/Connect ratio. Prints
//! figures; asserts nothing about speed.
//!
//! SLUICE_BENCH_RECORDS (default 200000) sets the sink record count (the source streams a fifth of it);
//! SLUICE_BENCH_ROUNDS (default 3) the measured runs per side; SLUICE_BENCH_SCENARIOS (default all) a
//! comma-separated choice of sink-clean, sink-poison, sink-noop, source and source-eos (sluice's source with
//! `exactlyOnce: required`, against its own at-least-once source: a standalone Connect worker has no
//! exactly-once source), to look at one figure.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::connect::{ConnectWorker, JVM, free_port};
use support::{Env, TaskProcess, create_topic, spawn_marked, unique};

const LIMIT: Duration = Duration::from_secs(600);
/// Heap of the MongoDB peer each run gets (200,000 documents and their oplog entries fit).
const PEER_HEAP: &str = "-Xmx2g";
/// Records per bulk write / poll on both sides.
const BATCH: usize = 500;
/// Milliseconds between offset commits on both sides (sluice `offsetFlushIntervalMs`, Connect's worker
/// `offset.flush.interval.ms`).
const FLUSH_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Connect,
    Sluice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    SinkClean,
    SinkPoison,
    SinkNoop,
    Source,
    /// sluice's source with `exactlyOnce: required` (sluice only).
    SourceExactlyOnce,
}

impl Scenario {
    const ALL: [(&str, Scenario); 5] = [
        ("sink-clean", Scenario::SinkClean),
        ("sink-poison", Scenario::SinkPoison),
        ("sink-noop", Scenario::SinkNoop),
        ("source", Scenario::Source),
        ("source-eos", Scenario::SourceExactlyOnce),
    ];

    /// The scenarios SLUICE_BENCH_SCENARIOS names (all when unset); exits on a name it doesn't know.
    fn chosen() -> Vec<Scenario> {
        let Ok(list) = std::env::var("SLUICE_BENCH_SCENARIOS") else {
            return Self::ALL.iter().map(|(_, s)| *s).collect();
        };
        list.split(',')
            .map(|name| {
                let name = name.trim();
                Self::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| *s)
                    .unwrap_or_else(|| {
                        let known: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                        eprintln!(
                            "SLUICE_BENCH_SCENARIOS: unknown scenario {name:?}; known: {}",
                            known.join(", ")
                        );
                        std::process::exit(2)
                    })
            })
            .collect()
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// Records (or events) per second, first record → last.
    rate: f64,
    /// Process start → first record delivered.
    first_ms: f64,
    peak_rss_mib: f64,
    cpu_secs_per_100k: f64,
}

/// A process under measurement: sluice's task or Connect's worker.
enum Proc {
    Sluice(TaskProcess),
    Connect(ConnectWorker),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Sluice(t) => t.pid(),
            Proc::Connect(w) => w.child.id(),
        }
    }

    /// Peak RSS (MiB) and CPU seconds so far, from /proc.
    fn usage(&self) -> (f64, f64) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat, 11 and 12 after the command name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (hwm_kb / 1024.0, (ticks(11) + ticks(12)) / hz)
    }

    /// How many records the drop connector reported (Connect no-op runs).
    fn dropped(&self) -> u64 {
        match self {
            Proc::Connect(w) => std::fs::read_to_string(&w.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_prefix("sluice-bench dropped "))
                .filter_map(|n| n.trim().parse().ok())
                .max()
                .unwrap_or(0),
            Proc::Sluice(_) => 0,
        }
    }

    async fn records_out(&self) -> u64 {
        match self {
            Proc::Sluice(t) => t
                .status()
                .await
                .and_then(|s| s["recordsOut"].as_u64())
                .unwrap_or(0),
            Proc::Connect(_) => self.dropped(),
        }
    }

    /// Fails the bench with the process's log when it ended before the run did.
    fn assert_alive(&mut self, what: &str) {
        let exited = match self {
            Proc::Sluice(t) => t.exited(),
            Proc::Connect(w) => w.exited(),
        };
        assert!(!exited, "{what}: the process ended:\n{}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        match self {
            Proc::Sluice(t) => t.log_tail(),
            Proc::Connect(w) => w.log_tail(),
        }
    }
}

/// Starts a standalone Connect worker with one connector.
fn start_connect(env: &Env, name: &str, connector: &str) -> Proc {
    let worker =
        format!("offset.flush.interval.ms={FLUSH_MS}\nconsumer.max.poll.records={BATCH}\n");
    Proc::Connect(ConnectWorker::start(env, name, &worker, connector))
}

fn start_sluice(env: &Env, name: &str, config: &str, mongodb_uri: &str) -> Proc {
    Proc::Sluice(TaskProcess::start(env, name, config, mongodb_uri))
}

/// A MongoDB peer of its own for one run (the environment's mongo-java-server build, oplog on), so runs
/// don't share memory or an ever-growing oplog. Killed when dropped.
struct Peer {
    child: std::process::Child,
    uri: String,
}

impl Peer {
    fn start(env: &Env) -> Peer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/env/mongo/target");
        let port = free_port();
        let log = Path::new(&env.dir)
            .join("logs")
            .join(format!("bench-peer-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("java");
        cmd.args([
            PEER_HEAP,
            "-cp",
            &format!(
                "{}:{}/*",
                dir.join("mongo-peer.jar").display(),
                dir.join("lib").display()
            ),
            "dev.sluice.env.MongoPeer",
            "127.0.0.1",
            &port.to_string(),
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        let child = spawn_marked(env, &mut cmd);
        let started = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("READY")
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "MongoDB peer did not start: {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Peer {
            child,
            uri: format!("mongodb://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn high_watermark(env: &Env, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    // A topic that does not exist yet (sluice's source creates its own) has no partitions.
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|m| {
            m.topics()
                .first()
                .map_or(0, |t| t.partitions().len() as i32)
        })
        .unwrap_or(0);
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, h)| h)
                .unwrap_or(0)
        })
        .sum()
}

/// Produces `n` small JSON records (every `poison_every`th one unreadable); returns records/s.
async fn fill(env: &Env, topic: &str, n: usize, poison_every: Option<usize>) -> f64 {
    create_topic(env, topic, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let value = if poison_every.is_some_and(|k| i % k == k - 1) {
            format!("not json {i}")
        } else {
            format!(r#"{{"n": {i}, "item": "widget", "qty": {}}}"#, i % 7)
        };
        acks.push(
            producer
                .send_result(FutureRecord::<(), _>::to(topic).payload(&value))
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Reads the whole topic with a plain rdkafka consumer (with the fetch backoff sluice's consumers use);
/// returns records/s from the first record to the last, as the sink figures are timed.
fn raw_consume(env: &Env, topic: &str, n: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "false")
        .set(
            "fetch.queue.backoff.ms",
            sluice::kafka::FETCH_QUEUE_BACKOFF_MS,
        )
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
        assert!(started.elapsed() < LIMIT, "raw consume stalled at {seen}");
    }
    let first = first.unwrap_or(started);
    n as f64 / first.elapsed().as_secs_f64()
}

fn sluice_sink_config(env: &Env, name: &str, db: &str, topic: &str, extra: &str) -> String {
    format!(
        "type: mongodb-sink\nconnector: {name}\nnamespace: bench\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
         sink: {{topics: [{topic}], writeModel: insert, maxBatchSize: {BATCH}, offsetFlushIntervalMs: {FLUSH_MS}}}\n{extra}",
        env.kafka_bootstrap
    )
}

fn connect_sink_config(mongodb_uri: &str, db: &str, topic: &str, extra: &str) -> String {
    format!(
        "connector.class=com.mongodb.kafka.connect.MongoSinkConnector\ntopics={topic}\nconnection.uri={}\n\
         database={db}\ncollection=orders\n\
         writemodel.strategy=com.mongodb.kafka.connect.sink.writemodel.strategy.InsertOneDefaultStrategy\n\
         max.batch.size={BATCH}\nbulk.write.ordered=false\n{extra}",
        mongodb_uri
    )
}

/// One sink run: start the process, time the first and the last document.
async fn sink_run(env: &Env, side: Side, scenario: Scenario, topic: &str, n: usize) -> Run {
    let name = unique("bench");
    let db = unique("bench");
    let (expect_docs, dlq) = match scenario {
        Scenario::SinkPoison => (n - n / 10, Some(unique("bench-dlq"))),
        _ => (n, None),
    };
    if let Some(d) = &dlq {
        create_topic(env, d, 1).await;
    }
    let discard = scenario == Scenario::SinkNoop;
    let peer = Peer::start(env);
    let started = Instant::now();
    let mut proc = match (side, &dlq) {
        (Side::Sluice, _) => {
            let errors = match &dlq {
                Some(d) => format!(
                    "errors:\n  spec: {{tolerance: all}}\n  deadLetterRoutes: [{{topic: {d}, contextHeadersEnable: true}}]"
                ),
                None => "errors:\n  spec: {}".into(),
            };
            let extra = if discard { "\ndiscardWrites: true" } else { "" };
            start_sluice(
                env,
                &name,
                &format!(
                    "{}{extra}",
                    sluice_sink_config(env, &name, &db, topic, &errors)
                ),
                &peer.uri,
            )
        }
        (Side::Connect, _) if discard => start_connect(
            env,
            &name,
            &format!("connector.class=dev.sluice.bench.DropSinkConnector\ntopics={topic}\n"),
        ),
        (Side::Connect, Some(d)) => start_connect(
            env,
            &name,
            &connect_sink_config(
                &peer.uri,
                &db,
                topic,
                &format!(
                    "errors.tolerance=all\nerrors.deadletterqueue.topic.name={d}\n\
                     errors.deadletterqueue.context.headers.enable=true\n\
                     errors.deadletterqueue.topic.replication.factor=1\n"
                ),
            ),
        ),
        (Side::Connect, None) => {
            start_connect(env, &name, &connect_sink_config(&peer.uri, &db, topic, ""))
        }
    };
    let coll = mongodb::Client::with_uri_str(&peer.uri)
        .await
        .unwrap()
        .database(&db)
        .collection::<Document>("orders");
    let mut first = None;
    loop {
        let done = if discard {
            proc.records_out().await
        } else {
            coll.estimated_document_count().await.unwrap_or(0)
        };
        if done > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        let dlq_done = match &dlq {
            Some(d) => high_watermark(env, d) >= (n / 10) as i64,
            None => true,
        };
        if done >= expect_docs as u64 && dlq_done {
            break;
        }
        proc.assert_alive(&format!("{side:?} {scenario:?}"));
        assert!(
            started.elapsed() < LIMIT,
            "{side:?} {scenario:?} stalled at {done}/{expect_docs}:\n{}",
            proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let (rss, cpu) = proc.usage();
    drop(proc);
    drop(peer);
    let first = first.unwrap_or(total);
    Run {
        rate: n as f64 / (total - first).as_secs_f64().max(1e-3),
        first_ms: first.as_secs_f64() * 1000.0,
        peak_rss_mib: rss,
        cpu_secs_per_100k: cpu / (n as f64 / 100_000.0),
    }
}

/// One source run: inserts streamed while the process runs → change events on its topic (committed ones:
/// the task's `recordsOut`, exactly once).
async fn source_run(env: &Env, side: Side, n: usize, exactly_once: bool) -> Run {
    let db = unique("bench");
    let name = unique("bench");
    let peer = Peer::start(env);
    let started = Instant::now();
    let (mut proc, topic) = match side {
        Side::Sluice => {
            let cfg = format!(
                "type: mongodb-source\nconnector: {name}\nnamespace: bench\ntaskId: 0\ntasks: 1\n\
                 kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db}, collection: orders}}\n\
                 source:\n  spec: {{topicPrefix: bench, heartbeat: {{intervalMs: 0}}, exactlyOnce: {}}}\n  offsetPartitionName: {name}\n  \
                 offsetStorageTopic: sluice-offsets\n  startupMode: latest\nerrors:\n  spec: {{}}",
                env.kafka_bootstrap,
                if exactly_once { "required" } else { "disabled" }
            );
            (
                start_sluice(env, &name, &cfg, &peer.uri),
                format!("bench.{db}.orders"),
            )
        }
        Side::Connect => {
            let topic = unique("bench-cdc");
            create_topic(env, &topic, 1).await;
            let cfg = format!(
                "connector.class=com.mongodb.kafka.connect.MongoSourceConnector\nconnection.uri={}\n\
                 database={db}\ncollection=orders\ntopic.prefix={topic}\n\
                 topic.mapper=dev.sluice.bench.FixedTopicMapper\nstartup.mode=latest\n\
                 poll.max.batch.size=1000\n",
                peer.uri
            );
            (start_connect(env, &name, &cfg), topic)
        }
    };
    let coll = mongodb::Client::with_uri_str(&peer.uri)
        .await
        .unwrap()
        .database(&db)
        .collection::<Document>("orders");
    // Probe documents until one arrives: the change stream is open.
    let mut probes = 0i64;
    loop {
        coll.insert_one(doc! { "probe": probes }).await.unwrap();
        probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if high_watermark(env, &topic) > 0 {
            break;
        }
        proc.assert_alive(&format!("{side:?} source start"));
        assert!(
            started.elapsed() < LIMIT,
            "{side:?} source never started:\n{}",
            proc.log_tail()
        );
    }
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Exactly once, the topic also holds a commit marker per transaction: count what the task committed.
    let delivered = async |proc: &Proc| match proc {
        Proc::Sluice(t) if exactly_once => t
            .status()
            .await
            .and_then(|s| s["recordsOut"].as_i64())
            .unwrap_or(0),
        _ => high_watermark(env, &topic),
    };
    let base = delivered(&proc).await;
    let began = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        coll.insert_many(
            chunk
                .iter()
                .map(|i| doc! { "n": *i as i64, "item": "widget" }),
        )
        .await
        .unwrap();
    }
    while delivered(&proc).await < base + n as i64 {
        proc.assert_alive(&format!("{side:?} source"));
        assert!(
            began.elapsed() < LIMIT,
            "{side:?} source stalled:\n{}",
            proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = began.elapsed().as_secs_f64();
    let (rss, cpu) = proc.usage();
    drop(proc);
    drop(peer);
    Run {
        rate: n as f64 / secs,
        first_ms,
        peak_rss_mib: rss,
        cpu_secs_per_100k: cpu / (n as f64 / 100_000.0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    // `cargo test --all-targets` runs benches too, without `--bench`: a benchmark is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `make bench`");
        return;
    }
    let Some(env) = Env::get() else {
        eprintln!("the loopback environment is not up: run `make bench`");
        std::process::exit(1);
    };
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = var("SLUICE_BENCH_RECORDS", 200_000);
    let rounds = var("SLUICE_BENCH_ROUNDS", 3);
    let scenarios = Scenario::chosen();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let clean = unique("bench-clean");
        let poison = unique("bench-poison");
        let produce_rate = fill(&env, &clean, n, None).await;
        if scenarios.contains(&Scenario::SinkPoison) {
            fill(&env, &poison, n, Some(10)).await;
        }
        let consume_rate = raw_consume(&env, &clean, n);
        eprintln!("raw rdkafka: produce {produce_rate:.0} records/s, consume {consume_rate:.0} records/s");

        let mut results: BTreeMap<(Scenario, Side), Vec<Run>> = BTreeMap::new();
        for &scenario in &scenarios {
            // Round 0 warms up the broker, the peer's JIT and the page cache; it is not counted.
            for round in 0..=rounds {
                for side in [Side::Connect, Side::Sluice] {
                    if scenario == Scenario::SourceExactlyOnce && side == Side::Connect {
                        continue;
                    }
                    let run = match scenario {
                        Scenario::SinkClean | Scenario::SinkNoop => sink_run(&env, side, scenario, &clean, n).await,
                        Scenario::SinkPoison => sink_run(&env, side, scenario, &poison, n).await,
                        Scenario::Source => source_run(&env, side, (n / 5).max(1), false).await,
                        Scenario::SourceExactlyOnce => source_run(&env, side, (n / 5).max(1), true).await,
                    };
                    eprintln!(
                        "{scenario:?} {side:?} round {round}{}: {:.0}/s, first {:.0} ms, peak RSS {:.0} MiB, {:.2} CPU s/100k",
                        if round == 0 { " (warm-up)" } else { "" },
                        run.rate, run.first_ms, run.peak_rss_mib, run.cpu_secs_per_100k
                    );
                    if round > 0 {
                        results.entry((scenario, side)).or_default().push(run);
                    }
                }
            }
        }
        let m = |s: Scenario, side: Side, f: fn(&Run) -> f64| {
            median(results.get(&(s, side)).map(|v| v.iter().map(f).collect()).unwrap_or_default())
        };
        // One table row, with `decimals` for the figures; rows of scenarios that did not run are left out.
        let row = |label: &str, s: Scenario, f: fn(&Run) -> f64, unit: &str, decimals: usize| {
            if !scenarios.contains(&s) {
                return;
            }
            let (a, b) = (m(s, Side::Sluice, f), m(s, Side::Connect, f));
            println!("| {label} | {a:.decimals$} {unit} | {b:.decimals$} {unit} | {:.2} |", a / b);
        };
        println!(
            "\nsluice vs Kafka Connect 4.3.1 + MongoDB Kafka connector 2.0.1 ({} cores, medians of {rounds} runs each, \
             {n} records, warm-up discarded)\n",
            std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0)
        );
        println!("| figure | sluice | Kafka Connect | sluice/Connect |\n| --- | --- | --- | --- |");
        row("1. sink, clean JSON (first → last document)", Scenario::SinkClean, |r| r.rate, "records/s", 0);
        row("2. sink, 10% poison → DLQ with context headers", Scenario::SinkPoison, |r| r.rate, "records/s", 0);
        row("2b. sink, no-op write (framework only)", Scenario::SinkNoop, |r| r.rate, "records/s", 0);
        row("3. source, inserts streamed → change events", Scenario::Source, |r| r.rate, "events/s", 0);
        row("4a. peak RSS, sink clean", Scenario::SinkClean, |r| r.peak_rss_mib, "MiB", 0);
        row("4b. peak RSS, source", Scenario::Source, |r| r.peak_rss_mib, "MiB", 0);
        row("4c. CPU per 100k records, sink clean", Scenario::SinkClean, |r| r.cpu_secs_per_100k, "s", 2);
        row("4d. CPU per 100k records, sink no-op", Scenario::SinkNoop, |r| r.cpu_secs_per_100k, "s", 2);
        row("5. process start → first record delivered (sink)", Scenario::SinkClean, |r| r.first_ms, "ms", 0);
        if scenarios.contains(&Scenario::SourceExactlyOnce) && scenarios.contains(&Scenario::Source) {
            let eo = m(Scenario::SourceExactlyOnce, Side::Sluice, |r| r.rate);
            let alo = m(Scenario::Source, Side::Sluice, |r| r.rate);
            println!(
                "| 3b. source, exactly once (one transaction per batch of up to 2,000 events) | {eo:.0} events/s | — | {:.2} of sluice at least once ({alo:.0} events/s): {:.0}% overhead |",
                eo / alo,
                (1.0 - eo / alo) * 100.0
            );
        }
        println!(
            "\nraw rdkafka on this broker (the ceiling): produce {produce_rate:.0} records/s, consume {consume_rate:.0} records/s\n\
             settings: 1 partition, 1 task; batch {BATCH} (sluice maxBatchSize; Connect consumer.max.poll.records and \
             max.batch.size); offset commits every {FLUSH_MS} ms (sluice offsetFlushIntervalMs; Connect \
             offset.flush.interval.ms); unordered bulk inserts with ObjectId ids; JSON values without schemas; \
             Connect JVM {}",
            JVM.join(" ")
        );
    });
}
