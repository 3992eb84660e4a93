//! Kafka Connect as the oracle for dead letters. The same poison records go through a standalone Connect
//! worker running the MongoDB sink connector and through sluice's sink task, with the same settings
//! (string keys, schemaless JSON values, insert, ObjectId ids, `tolerance: all`, context headers on,
//! `converterMessages: connect`, a dead-letter topic of three partitions each); the two dead-letter topics are compared record by record
//! (matched by original offset) and field by field: partition, timestamp, key, value, the original headers,
//! and every `__connect.errors.*` header, names in order and values. Only the differences in [`allowed`]
//! pass, each with its reason; the test prints every difference it saw.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Timestamp};
use sluice::names::DEAD_LETTERED_AT_HEADER;
use support::connect::ConnectWorker;
use support::{Env, TaskProcess, create_topic, topic_reader, unique};

const WAIT: Duration = Duration::from_secs(120);
const CONNECTOR: &str = "parity";

/// One poison record (or a good one that some poison needs, like the first of two with the same `_id`).
struct Poison {
    kind: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, Option<Vec<u8>>)>,
}

fn poison(kind: &'static str, key: &str, value: Option<&[u8]>) -> Poison {
    Poison {
        kind,
        key: Some(key.as_bytes().to_vec()),
        value: value.map(<[u8]>::to_vec),
        headers: vec![],
    }
}

/// The poison set: what a topic feeding a MongoDB sink gets wrong in practice.
fn poison_set() -> Vec<Poison> {
    let big = format!("{{\"pad\": \"{}\", bad", "x".repeat(300_000));
    vec![
        poison("good", "k-good", Some(br#"{"item": "apple"}"#)),
        poison("truncated JSON", "k-truncated", Some(br#"{"item": "app"#)),
        poison("not JSON", "k-text", Some(b"this is not JSON")),
        poison("invalid UTF-8", "k-utf8", Some(b"{\"item\": \"\xff\xfe\"}")),
        poison("JSON array", "k-array", Some(b"[1, 2]")),
        poison("JSON number", "k-number", Some(b"42")),
        poison("JSON string", "k-string", Some(br#""apple""#)),
        poison("JSON null", "k-null", Some(b"null")),
        poison("empty value", "k-empty", Some(b"")),
        poison("tombstone", "k-tombstone", None),
        poison("first of a duplicate _id", "k-dup", Some(br#"{"_id": 7}"#)),
        poison(
            "duplicate _id",
            "k-dup",
            Some(br#"{"_id": 7, "again": true}"#),
        ),
        poison("300 KB not JSON", "k-big", Some(big.as_bytes())),
        Poison {
            kind: "headers (text, binary, null) on a poison record",
            key: Some(b"k-headers".to_vec()),
            value: Some(b"{oops".to_vec()),
            headers: vec![
                ("trace-id", Some(b"t-1".to_vec())),
                ("bin", Some(vec![0, 1, 2, 0xff])),
                ("empty", None),
                ("trace-id", Some(b"t-2".to_vec())),
            ],
        },
        Poison {
            kind: "invalid UTF-8 key on a poison record",
            key: Some(vec![0xc3, 0x28]),
            value: Some(b"{oops".to_vec()),
            headers: vec![],
        },
        Poison {
            kind: "no key on a poison record",
            key: None,
            value: Some(b"{oops".to_vec()),
            headers: vec![],
        },
    ]
}

/// A dead letter, as read back.
#[derive(Debug)]
struct Letter {
    partition: i32,
    timestamp: Timestamp,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn context(&self, name: &str) -> Option<String> {
        let full = format!("__connect.errors.{name}");
        self.headers
            .iter()
            .find(|(k, _)| *k == full)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of `topic`, once `expected` arrived and nothing more for a few seconds.
async fn letters(env: &Env, topic: &str, expected: usize) -> Vec<Letter> {
    let consumer = topic_reader(env, topic);
    let mut out = Vec::new();
    loop {
        let wait = if out.len() < expected {
            WAIT
        } else {
            Duration::from_secs(5)
        };
        let Ok(m) = tokio::time::timeout(wait, consumer.recv()).await else {
            break;
        };
        let m = m.unwrap();
        out.push(Letter {
            partition: m.partition(),
            timestamp: m.timestamp(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}

/// Bytes as text for the comparison: a null, or the bytes (lossy UTF-8 with their length and a hash when
/// long, so a 300 KB value prints short).
fn shown(bytes: Option<&[u8]>) -> String {
    use std::hash::{Hash, Hasher};
    match bytes {
        None => "null".into(),
        Some(b) if b.len() <= 200 => format!("{:?}", String::from_utf8_lossy(b)),
        Some(b) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            format!("{} bytes, hash {:x}", b.len(), h.finish())
        }
    }
}

/// Why a difference is allowed, or `None` when it is a real one. `keyless`: the record has no key.
fn allowed(field: &str, keyless: bool) -> Option<&'static str> {
    match field {
        "partition" if keyless => Some(
            "a record without a key: Kafka's Java producer picks a sticky partition, librdkafka's \
             murmur2_random a random one (keyed records land alike)",
        ),
        "__connect.errors.class.name" => Some(
            "the Java class that ran the stage (JsonConverter, MongoSinkTask) vs sluice's name for it",
        ),
        "__connect.errors.exception.stacktrace" => {
            Some("a Java stack trace vs sluice's one-line trace")
        }
        "sluice.deadletter.timestamp" => Some(
            "sluice's own header: when the record was dead-lettered (README, Dead-letter inspection)",
        ),
        _ => None,
    }
}

#[tokio::test]
async fn dead_letters_match_kafka_connect_s_mongodb_sink_but_for_the_documented_differences() {
    let Some(env) = Env::get() else { return };
    let topic = unique("parity");
    let (dlq_connect, dlq_sluice) = (unique("parity-dlq-connect"), unique("parity-dlq-sluice"));
    create_topic(&env, &topic, 1).await;
    create_topic(&env, &dlq_connect, 3).await;
    create_topic(&env, &dlq_sluice, 3).await;
    let records = poison_set();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    for p in &records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &p.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).partition(0);
        if !p.headers.is_empty() {
            r = r.headers(headers);
        }
        if let Some(k) = &p.key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &p.value {
            r = r.payload(v.as_slice());
        }
        producer
            .send(r, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let (db_connect, db_sluice) = (unique("parity-connect"), unique("parity-sluice"));
    let mut connect = ConnectWorker::start(
        &env,
        CONNECTOR,
        "offset.flush.interval.ms=1000\n",
        &format!(
            "connector.class=com.mongodb.kafka.connect.MongoSinkConnector\ntopics={topic}\n\
             connection.uri={}\ndatabase={db_connect}\ncollection=orders\n\
             writemodel.strategy=com.mongodb.kafka.connect.sink.writemodel.strategy.InsertOneDefaultStrategy\n\
             errors.tolerance=all\nerrors.deadletterqueue.topic.name={dlq_connect}\n\
             errors.deadletterqueue.context.headers.enable=true\n\
             errors.deadletterqueue.topic.replication.factor=1\n",
            env.mongodb_uri
        ),
    );
    let config = format!(
        "type: mongodb-sink\nconnector: {CONNECTOR}\nnamespace: test\ntaskId: 0\ntasks: 1\n\
         kafka: {{bootstrapServers: '{}'}}\nmongodb: {{database: {db_sluice}, collection: orders}}\n\
         sink: {{topics: [{topic}], writeModel: insert, valueConverter: json}}\n\
         errors:\n  spec: {{tolerance: all, converterMessages: connect}}\n  \
         deadLetterRoutes: [{{topic: {dlq_sluice}, contextHeadersEnable: true}}]",
        env.kafka_bootstrap
    );
    let sluice = TaskProcess::start(&env, &db_sluice, &config, &env.mongodb_uri);

    let from_sluice = letters(&env, &dlq_sluice, 1).await;
    let from_connect = letters(&env, &dlq_connect, from_sluice.len()).await;
    assert!(
        !connect.exited(),
        "the Connect worker ended:\n{}",
        connect.log_tail()
    );
    drop(sluice);

    let by_offset = |letters: &[Letter]| -> BTreeMap<i64, usize> {
        letters
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((l.context("offset")?.parse().ok()?, i)))
            .collect()
    };
    let (c_at, s_at) = (by_offset(&from_connect), by_offset(&from_sluice));
    let mut differences = Vec::new();
    let mut allowed_seen = BTreeMap::new();
    println!("| offset | poison | Connect stage / exception | sluice stage / exception |");
    println!("| --- | --- | --- | --- |");
    for (offset, p) in records.iter().enumerate() {
        let offset = offset as i64;
        let (c, s) = (
            c_at.get(&offset).map(|&i| &from_connect[i]),
            s_at.get(&offset).map(|&i| &from_sluice[i]),
        );
        let describe = |l: Option<&Letter>| match l {
            Some(l) => format!(
                "{} / {}",
                l.context("stage").unwrap_or_default(),
                l.context("exception.class.name").unwrap_or_default()
            ),
            None => "(not dead-lettered)".into(),
        };
        println!(
            "| {offset} | {} | {} | {} |",
            p.kind,
            describe(c),
            describe(s)
        );
        let (c, s) = match (c, s) {
            (None, None) => continue,
            (Some(c), Some(s)) => (c, s),
            _ => {
                differences.push(format!(
                    "offset {offset} ({}): dead-lettered by one side only",
                    p.kind
                ));
                continue;
            }
        };
        let keyless = p.key.is_none();
        let mut differ = |field: &str, connect: String, ours: String| {
            // Each side writes to a database of its own, which server messages name.
            let connect = connect.replace(&db_connect, &db_sluice);
            if connect == ours {
                return;
            }
            match allowed(field, keyless) {
                Some(why) => {
                    allowed_seen.insert(field.to_string(), why);
                }
                None => differences.push(format!(
                    "offset {offset} ({}): {field}: Connect {connect:?}, sluice {ours:?}",
                    p.kind
                )),
            }
        };
        differ(
            "partition",
            c.partition.to_string(),
            s.partition.to_string(),
        );
        differ(
            "timestamp",
            format!("{:?}", c.timestamp),
            format!("{:?}", s.timestamp),
        );
        differ("key", shown(c.key.as_deref()), shown(s.key.as_deref()));
        differ(
            "value",
            shown(c.value.as_deref()),
            shown(s.value.as_deref()),
        );
        let names = |l: &Letter| -> Vec<String> {
            l.headers
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != DEAD_LETTERED_AT_HEADER)
                .collect()
        };
        differ(
            "header names in order",
            names(c).join(", "),
            names(s).join(", "),
        );
        // Header values in order (the names were compared above; a name may repeat).
        let ours: Vec<&(String, Option<Vec<u8>>)> = s
            .headers
            .iter()
            .filter(|(k, _)| k != DEAD_LETTERED_AT_HEADER)
            .collect();
        for ((name, value), (_, mine)) in c.headers.iter().zip(ours) {
            differ(name, shown(value.as_deref()), shown(mine.as_deref()));
        }
        if s.headers.iter().any(|(k, _)| k == DEAD_LETTERED_AT_HEADER) {
            differ(
                DEAD_LETTERED_AT_HEADER,
                "(missing)".into(),
                "(present)".into(),
            );
        }
    }
    for (field, why) in &allowed_seen {
        println!("allowed: {field}: {why}");
    }
    for d in &differences {
        println!("DIFFERENCE {d}");
    }
    assert!(
        !from_connect.is_empty(),
        "Connect dead-lettered nothing:\n{}",
        connect.log_tail()
    );
    assert!(
        differences.is_empty(),
        "{} differences from Kafka Connect (see above)",
        differences.len()
    );
}
