//! Property tests of everything that turns outside bytes into records or writes: the sink's key and value
//! converters, the write models, and the source's change-event conversion. Whatever they get — arbitrary
//! bytes, invalid UTF-8, deep nesting, huge numbers, every BSON type — they never panic: a value they
//! can't take is a record error (a `DataException` at a converter stage, never retried), a value they
//! take becomes a write or a record.
//!
//! Each property runs for `SLUICE_PROPTEST_SECONDS` (default 2; `make properties` runs each
//! for 200 s: 10 minutes in all) with a fresh random seed each time, and prints how many cases it ran. No environment needed.

use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc, spec::BinarySubtype};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use sluice::crd::connector::{Converter, DocumentIdStrategy, WriteModel};
use sluice::task::convert::{Coordinates, build_write, key_value, value_document};
use sluice::task::failure::{Failure, Stage};
use sluice::task::source::events::event_record;

/// Runs `test` on values of `strategy` until the time is up, in rounds of fresh random seeds.
fn for_a_while<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let seconds: u64 = std::env::var("SLUICE_PROPTEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cases = 0u64;
    loop {
        let seed: [u8; 32] = rand::random();
        let config = Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name} (seed {seed:02x?}): {e}");
        }
        cases += 256;
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("{name}: {cases} cases in {seconds}s");
}

/// A conversion failure as the error machinery needs it: a stage, a DataException, never retried.
fn is_record_error(f: &Failure, stages: &[Stage]) -> Result<(), TestCaseError> {
    prop_assert!(stages.contains(&f.stage), "stage {:?}", f.stage);
    prop_assert!(f.class.ends_with("DataException"), "class {}", f.class);
    prop_assert!(!f.retriable && f.outage.is_none());
    Ok(())
}

const CONVERTERS: [Converter; 4] = [
    Converter::Json,
    Converter::String,
    Converter::Bson,
    Converter::Bytes,
];

/// JSON-ish text: valid JSON with deep nesting and huge numbers, and broken variants of it.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[0-9]{20,400}",
        "-?[0-9]{1,3}e[0-9]{3,7}",
        "\"[^\"\\\\]{0,20}\"",
        Just(r#"{"$numberLong": "99999999999999999999"}"#.to_string()),
        Just(r#"{"$oid": "zz"}"#.to_string()),
        Just(r#"{"$date": {"$numberLong": "-999999999999999999"}}"#.to_string()),
    ];
    let json = leaf.prop_recursive(64, 512, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z$_]{0,8}", inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    (json, any::<u8>(), 0usize..8).prop_map(|(text, byte, cut)| {
        let mut bytes = text.into_bytes();
        match cut {
            0 => bytes.truncate(bytes.len() / 2),     // cut short
            1 => bytes.insert(bytes.len() / 2, 0xff), // invalid UTF-8
            2 => bytes.insert(bytes.len() / 2, byte), // any byte
            _ => {}
        }
        bytes
    })
}

#[test]
fn value_and_key_converters_never_panic_on_arbitrary_bytes() {
    let bytes = prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), jsonish()];
    for_a_while("value/key converters", bytes, |bytes| {
        for converter in CONVERTERS {
            if let Err(f) = value_document(&bytes, converter) {
                // TASK_PUT: JSON that is no document.
                is_record_error(&f, &[Stage::ValueConverter, Stage::TaskPut])?;
            }
            if let Err(f) = key_value(&bytes, converter) {
                is_record_error(&f, &[Stage::KeyConverter])?;
            }
        }
        Ok(())
    });
}

/// Arbitrary BSON values of every common type, nested.
fn bson_value() -> impl Strategy<Value = Bson> {
    let leaf = prop_oneof![
        Just(Bson::Null),
        any::<bool>().prop_map(Bson::Boolean),
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<f64>().prop_map(Bson::Double),
        ".{0,40}".prop_map(Bson::String),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| {
            Bson::Binary(mongodb::bson::Binary {
                subtype: BinarySubtype::Generic,
                bytes,
            })
        }),
        any::<i64>().prop_map(|ms| Bson::DateTime(mongodb::bson::DateTime::from_millis(ms))),
        (any::<u32>(), any::<u32>()).prop_map(|(time, increment)| Bson::Timestamp(
            mongodb::bson::Timestamp { time, increment }
        )),
        any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(mongodb::bson::oid::ObjectId::from_bytes(b))),
        Just(Bson::MaxKey),
        Just(Bson::MinKey),
    ];
    leaf.prop_recursive(32, 256, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Bson::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|kv| Bson::Document(kv.into_iter().collect::<Document>())),
        ]
    })
}

fn bson_document() -> impl Strategy<Value = Document> {
    prop::collection::vec(("[a-zA-Z_$.]{0,8}", bson_value()), 0..8)
        .prop_map(|kv| kv.into_iter().collect())
}

#[test]
fn change_events_become_records_or_record_errors_never_panics() {
    let event = (
        bson_document(),
        proptest::option::of(bson_value()),
        any::<bool>(),
    );
    for_a_while(
        "change event -> record",
        event,
        |(mut event, id, full_only)| {
            if let Some(id) = id {
                event.insert("_id", id);
            }
            match event_record(&event, full_only) {
                Ok((key, value)) => {
                    let key: serde_json::Value = serde_json::from_str(&key)
                        .map_err(|e| TestCaseError::fail(format!("key is not JSON: {e}")))?;
                    prop_assert!(key.get("_id").is_some(), "{key}");
                    if let Some(v) = value {
                        serde_json::from_str::<serde_json::Value>(&v)
                            .map_err(|e| TestCaseError::fail(format!("value is not JSON: {e}")))?;
                    }
                }
                Err(f) => {
                    prop_assert!(!event.contains_key("_id"), "an event with an _id converts");
                    is_record_error(&f, &[Stage::ValueConverter])?;
                }
            }
            Ok(())
        },
    );
}

#[test]
fn every_document_becomes_a_write_under_every_model_or_a_record_error() {
    let input = (
        bson_document(),
        proptest::option::of(bson_value()),
        0usize..3,
        0usize..4,
    );
    for_a_while("document -> write", input, |(value, key, model, ids)| {
        let model = [WriteModel::Insert, WriteModel::Replace, WriteModel::Upsert][model];
        let ids = [
            DocumentIdStrategy::ObjectId,
            DocumentIdStrategy::ProvidedInKey,
            DocumentIdStrategy::ProvidedInValue,
            DocumentIdStrategy::KafkaCoordinates,
        ][ids];
        let at = Coordinates {
            topic: "orders",
            partition: 0,
            offset: i64::MAX,
        };
        if let Err(f) = build_write(value, key, model, ids, at) {
            is_record_error(&f, &[Stage::TaskPut])?;
        }
        Ok(())
    });
}

#[test]
fn deeply_nested_values_are_record_errors_not_stack_overflows() {
    // 100,000 levels of JSON arrays and of BSON documents.
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for converter in [Converter::Json, Converter::String] {
        let f = value_document(json.as_bytes(), converter).unwrap_err();
        assert_eq!(f.stage, Stage::ValueConverter);
    }
    // BSON bytes nested 10,000 levels, made by hand (the bson crate itself recurses per level).
    let mut bytes = mongodb::bson::to_vec(&doc! { "leaf": 1 }).unwrap();
    for _ in 0..10_000 {
        let mut outer = Vec::with_capacity(bytes.len() + 8);
        outer.extend(((bytes.len() + 8) as i32).to_le_bytes());
        outer.push(0x03);
        outer.extend(b"a\0");
        outer.extend(&bytes);
        outer.push(0);
        bytes = outer;
    }
    for converter in [Converter::Bson, Converter::Bytes] {
        let f = value_document(&bytes, converter).unwrap_err();
        assert_eq!(f.stage, Stage::ValueConverter);
        assert!(
            f.message.contains("nested deeper than 100"),
            "{}",
            f.message
        );
        let f = key_value(&bytes, converter).unwrap_err();
        assert_eq!(f.stage, Stage::KeyConverter);
    }
    // As deep as MongoDB allows converts.
    let mut nested = doc! { "leaf": 1 };
    for _ in 0..98 {
        nested = doc! { "a": nested };
    }
    let ok = mongodb::bson::to_vec(&nested).unwrap();
    assert!(value_document(&ok, Converter::Bson).is_ok());
    let event =
        doc! { "_id": { "_data": "82" }, "operationType": "insert", "fullDocument": nested };
    assert!(event_record(&event, true).is_ok());
}
