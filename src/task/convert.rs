//! Record converters (Kafka Connect's `key.converter` / `value.converter`) and the sink's write models:
//! a Kafka record becomes one MongoDB write. Conversion errors are DataExceptions and never retried.

use mongodb::bson::{Bson, Document, RawBsonRef, RawDocument, doc, oid::ObjectId};

use super::failure::{Failure, Stage};
use crate::crd::connector::{Converter, DocumentIdStrategy, WriteModel};

/// A record's value as a document. JSON and string values must hold a JSON object (MongoDB extended JSON is
/// understood), or JSON `null` or nothing at all, which are no value (`None`: a tombstone, as Kafka
/// Connect's JsonConverter reads them); bson and bytes values must be one BSON document.
pub fn value_document(bytes: &[u8], converter: Converter) -> Result<Option<Document>, Failure> {
    let stage = Stage::ValueConverter;
    match converter {
        Converter::Json | Converter::String if bytes.is_empty() => Ok(None),
        Converter::Json | Converter::String => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| Failure::conversion(stage, format!("value is not UTF-8: {e}")))?;
            let json: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| Failure::conversion(stage, format!("value is not JSON: {e}")))?;
            match json {
                serde_json::Value::Null => return Ok(None),
                serde_json::Value::Object(_) => {}
                // The converter succeeded; what fails is making a document of it: Kafka Connect's
                // MongoDB sink reports that at TASK_PUT, in these words.
                other => {
                    return Err(Failure::conversion(
                        Stage::TaskPut,
                        format!(
                            "Could not convert value '{}' ({}) into a BsonDocument.",
                            java_string(&other),
                            java_class(&other)
                        ),
                    ));
                }
            }
            match Bson::try_from(json) {
                Ok(Bson::Document(d)) => Ok(Some(d)),
                // An object that is one extended JSON value (`{"$numberLong": "5"}`): no document.
                Ok(other) => {
                    let json = other.into_relaxed_extjson();
                    Err(Failure::conversion(
                        Stage::TaskPut,
                        format!(
                            "Could not convert value '{}' ({}) into a BsonDocument.",
                            java_string(&json),
                            java_class(&json)
                        ),
                    ))
                }
                Err(e) => Err(Failure::conversion(
                    stage,
                    format!("value is not valid extended JSON: {e}"),
                )),
            }
        }
        Converter::Bson | Converter::Bytes => bson_document(bytes)
            .map(Some)
            .map_err(|e| Failure::conversion(stage, format!("value is not a BSON document: {e}"))),
    }
}

/// MongoDB's own limit on how deep documents nest.
pub const MAX_BSON_DEPTH: usize = 100;

/// A BSON document from bytes, checked first to nest no deeper than [`MAX_BSON_DEPTH`] without recursion:
/// the bson crate's reader recurses per level, and a hostile record nested a few thousand levels deep
/// would overflow the task's stack (an abort, not a record error).
fn bson_document(bytes: &[u8]) -> Result<Document, String> {
    let root = RawDocument::from_bytes(bytes).map_err(|e| e.to_string())?;
    let mut stack = vec![(root.iter(), 1usize)];
    while let Some((elements, depth)) = stack.last_mut() {
        let depth = *depth;
        match elements.next() {
            None => {
                stack.pop();
            }
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok((_, value))) => {
                let nested = match value {
                    RawBsonRef::Document(d) => Some(d),
                    RawBsonRef::Array(a) => RawDocument::from_bytes(a.as_bytes()).ok(),
                    RawBsonRef::JavaScriptCodeWithScope(c) => Some(c.scope),
                    _ => None,
                };
                if let Some(d) = nested {
                    if depth + 1 > MAX_BSON_DEPTH {
                        return Err(format!(
                            "nested deeper than {MAX_BSON_DEPTH} levels (MongoDB's limit)"
                        ));
                    }
                    stack.push((d.iter(), depth + 1));
                }
            }
        }
    }
    Document::from_reader(bytes).map_err(|e| e.to_string())
}

/// A record's key as a BSON value (for `providedInKey`).
pub fn key_value(bytes: &[u8], converter: Converter) -> Result<Bson, Failure> {
    let stage = Stage::KeyConverter;
    match converter {
        Converter::String => std::str::from_utf8(bytes)
            .map(|s| Bson::String(s.to_string()))
            .map_err(|e| Failure::conversion(stage, format!("key is not UTF-8: {e}"))),
        Converter::Json => {
            let json: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| Failure::conversion(stage, format!("key is not JSON: {e}")))?;
            Bson::try_from(json).map_err(|e| {
                Failure::conversion(stage, format!("key is not valid extended JSON: {e}"))
            })
        }
        Converter::Bson | Converter::Bytes => bson_document(bytes)
            .map(Bson::Document)
            .map_err(|e| Failure::conversion(stage, format!("key is not a BSON document: {e}"))),
    }
}

/// The Java class Kafka Connect's schemaless JsonConverter makes of a JSON value.
fn java_class(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Array(_) => "java.util.ArrayList",
        Value::String(_) => "java.lang.String",
        Value::Bool(_) => "java.lang.Boolean",
        Value::Number(n) if n.is_f64() => "java.lang.Double",
        Value::Number(_) => "java.lang.Long",
        Value::Object(_) => "java.util.HashMap",
        Value::Null => "null",
    }
}

/// A JSON value as Java's `toString` of what the JsonConverter makes of it (`[1, 2]`, `{a=1}`, `1.0E10`).
/// Objects keep their JSON order, where Java's HashMap has its own.
fn java_string(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let join = |items: Vec<String>| items.join(", ");
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(d) => java_double(d),
            None => n.to_string(),
        },
        Value::Array(a) => format!("[{}]", join(a.iter().map(java_string).collect())),
        Value::Object(o) => format!(
            "{{{}}}",
            join(
                o.iter()
                    .map(|(k, v)| format!("{k}={}", java_string(v)))
                    .collect()
            )
        ),
    }
}

/// Java's `Double.toString`: plain between 10^-3 and 10^7 (always with a fraction), else `d.dddE±n`.
fn java_double(d: f64) -> String {
    if d == 0.0 || (1e-3..1e7).contains(&d.abs()) {
        let s = d.to_string();
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let s = format!("{d:e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.to_string()
        } else {
            format!("{mantissa}.0")
        };
        format!("{mantissa}E{exponent}")
    }
}

/// One write of a bulk: the statement for MongoDB's `insert`, `update` or `delete` command.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Insert(Document),
    /// An `update` statement (`{q, u, upsert}`); `u` is a replacement or a `$set`.
    Update(Document),
    /// A `delete` statement (`{q: {_id}, limit: 1}`).
    Delete(Document),
}

impl Write {
    /// The command the statement belongs to.
    pub fn command(&self) -> &'static str {
        match self {
            Write::Insert(_) => "insert",
            Write::Update(_) => "update",
            Write::Delete(_) => "delete",
        }
    }

    /// The statement, as the command's array holds it.
    pub fn statement(&self) -> &Document {
        match self {
            Write::Insert(d) | Write::Update(d) | Write::Delete(d) => d,
        }
    }
}

/// The write for a tombstone (a record without a value) with `key` (read by the key converter): with
/// `delete_on_null`, a delete of the document whose `_id` the key gives (its `_id` field when it is a
/// document with one, else the whole key); otherwise the record error Kafka Connect's MongoDB sink reports.
pub fn tombstone_write(key: Option<Bson>, delete_on_null: bool) -> Result<Write, Failure> {
    let Some(key) = key else {
        return Err(Failure::conversion(
            Stage::TaskPut,
            "Invalid Sink Record neither key doc nor value doc were present",
        ));
    };
    if !delete_on_null {
        return Err(Failure::conversion(
            Stage::TaskPut,
            "Could not create write model",
        ));
    }
    let id = key_id(key)?;
    Ok(Write::Delete(doc! { "q": { "_id": id }, "limit": 1 }))
}

/// The `_id` a record key gives (`providedInKey`, and deletes): a key document's `_id`, as Kafka
/// Connect's `ProvidedInKeyStrategy` takes it (a key document without one fails the write model, with
/// Connect's words); a key that is no document (a string key) is the `_id` itself, which Connect refuses.
pub fn key_id(key: Bson) -> Result<Bson, Failure> {
    match key {
        Bson::Document(d) => provided_id(&d),
        other => Ok(other),
    }
}

/// A document's `_id` for the provided strategies, or Kafka Connect's `ProvidedStrategy` failure.
fn provided_id(d: &Document) -> Result<Bson, Failure> {
    match d.get("_id") {
        None => Err(Failure::conversion(Stage::TaskPut, PROVIDED_ID_MISSING)),
        Some(Bson::Null) => Err(Failure::conversion(Stage::TaskPut, PROVIDED_ID_NULL)),
        Some(id) => Ok(id.clone()),
    }
}

/// Kafka Connect's MongoDB sink's messages for a provided `_id` that is missing, or null.
const PROVIDED_ID_MISSING: &str = "Provided id strategy is used but the document structure either \
                                   contained no _id field or it was null";
const PROVIDED_ID_NULL: &str =
    "Provided id strategy used but the document structure contained an _id of type BsonNull";

/// Where a record came from, for `kafkaCoordinates` ids.
#[derive(Clone, Copy, Debug)]
pub struct Coordinates<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The write for one record under a write model and id strategy.
pub fn build_write(
    mut value: Document,
    key: Option<Bson>,
    model: WriteModel,
    ids: DocumentIdStrategy,
    at: Coordinates<'_>,
) -> Result<Write, Failure> {
    let id = match ids {
        DocumentIdStrategy::ObjectId => value
            .get("_id")
            .cloned()
            .unwrap_or_else(|| Bson::ObjectId(ObjectId::new())),
        DocumentIdStrategy::ProvidedInKey => key_id(key.ok_or_else(|| {
            Failure::conversion(
                Stage::TaskPut,
                "documentIdStrategy providedInKey needs a record key",
            )
        })?)?,
        // Kafka Connect's MongoDB sink fails the write model (TASK_PUT) with this text.
        DocumentIdStrategy::ProvidedInValue => provided_id(&value)?,
        DocumentIdStrategy::KafkaCoordinates => Bson::Document(
            doc! { "topic": at.topic, "partition": at.partition, "offset": at.offset },
        ),
    };
    value.insert("_id", id.clone());
    Ok(match model {
        WriteModel::Insert => Write::Insert(value),
        WriteModel::Replace => {
            Write::Update(doc! { "q": { "_id": id }, "u": value, "upsert": true })
        }
        WriteModel::Upsert => {
            value.remove("_id");
            Write::Update(doc! { "q": { "_id": id }, "u": { "$set": value }, "upsert": true })
        }
        WriteModel::InsertIfAbsent => {
            value.remove("_id");
            Write::Update(
                doc! { "q": { "_id": id }, "u": { "$setOnInsert": value }, "upsert": true },
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Coordinates<'static> = Coordinates {
        topic: "orders",
        partition: 1,
        offset: 7,
    };

    #[test]
    fn a_key_document_gives_its_id_as_kafka_connect_s_provided_in_key_strategy_does() {
        let key = key_value(br#"{"_id": 5, "region": "eu"}"#, Converter::Json).unwrap();
        let write = build_write(
            doc! { "n": 1 },
            Some(key.clone()),
            WriteModel::Replace,
            DocumentIdStrategy::ProvidedInKey,
            AT,
        )
        .unwrap();
        let Write::Update(u) = write else {
            panic!("{write:?}")
        };
        assert_eq!(u.get_document("q").unwrap(), &doc! { "_id": 5 });
        assert_eq!(u.get_document("u").unwrap(), &doc! { "n": 1, "_id": 5 });
        // Its tombstone deletes the same document.
        let Write::Delete(d) = tombstone_write(Some(key), true).unwrap() else {
            panic!()
        };
        assert_eq!(d.get_document("q").unwrap(), &doc! { "_id": 5 });
        // A key document without an _id fails the write model as in Connect; a string key is the _id.
        for (no_id, message) in [
            (doc! { "region": "eu" }, PROVIDED_ID_MISSING),
            (doc! { "_id": Bson::Null }, PROVIDED_ID_NULL),
        ] {
            let f = build_write(
                doc! {},
                Some(Bson::Document(no_id)),
                WriteModel::Insert,
                DocumentIdStrategy::ProvidedInKey,
                AT,
            )
            .unwrap_err();
            assert_eq!((f.stage, f.message.as_str()), (Stage::TaskPut, message));
        }
        assert_eq!(
            key_id(Bson::String("k1".into())).unwrap(),
            Bson::String("k1".into())
        );
    }

    #[test]
    fn json_values_become_documents_and_bad_ones_are_data_exceptions() {
        let d = value_document(
            br#"{"_id": 1, "qty": {"$numberLong": "5"}}"#,
            Converter::Json,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.get_i64("qty").unwrap(), 5, "extended JSON understood");
        let bad = value_document(b"{not json", Converter::Json).unwrap_err();
        assert_eq!((bad.stage, bad.retriable), (Stage::ValueConverter, false));
        assert!(bad.class.ends_with("DataException"));
        let array = value_document(b"[1,2]", Converter::Json).unwrap_err();
        assert_eq!(
            array.message,
            "Could not convert value '[1, 2]' (java.util.ArrayList) into a BsonDocument."
        );
        assert_eq!(array.stage, Stage::TaskPut, "JSON, but no document");
        let no_document = |json: &str| {
            value_document(json.as_bytes(), Converter::Json)
                .unwrap_err()
                .message
        };
        assert_eq!(
            no_document(r#"[1.5, 1e10, 0.0001, "a", true, {"b": 2}]"#),
            "Could not convert value '[1.5, 1.0E10, 1.0E-4, a, true, {b=2}]' (java.util.ArrayList) into a \
             BsonDocument."
        );
        assert!(no_document("42").contains("'42' (java.lang.Long)"));
        assert!(no_document("2.5").contains("'2.5' (java.lang.Double)"));
        assert_eq!(
            value_document(b"null", Converter::Json).unwrap(),
            None,
            "JSON null is no value, as Connect's JsonConverter reads it"
        );
        assert_eq!(
            value_document(b"", Converter::Json).unwrap(),
            None,
            "nor is nothing"
        );
        assert_eq!(
            no_document(r#"{"$numberLong": "5"}"#),
            "Could not convert value '5' (java.lang.Long) into a BsonDocument.",
            "an object that is one extended JSON value"
        );
        let raw = mongodb::bson::to_vec(&doc! { "a": 1 }).unwrap();
        assert_eq!(
            value_document(&raw, Converter::Bson).unwrap(),
            Some(doc! { "a": 1 })
        );
    }

    #[test]
    fn tombstones_delete_by_the_key_s_id_when_asked_and_are_record_errors_otherwise() {
        let delete = |key| match tombstone_write(Some(key), true).unwrap() {
            Write::Delete(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            delete(Bson::Document(doc! { "_id": 7, "region": "eu" })),
            doc! { "q": { "_id": 7 }, "limit": 1 }
        );
        assert_eq!(
            delete(Bson::String("k1".into())),
            doc! { "q": { "_id": "k1" }, "limit": 1 }
        );
        let no_id = tombstone_write(Some(Bson::Document(doc! { "sku": 1 })), true).unwrap_err();
        assert_eq!(
            (no_id.stage, no_id.message.as_str()),
            (Stage::TaskPut, PROVIDED_ID_MISSING),
            "a key document without _id deletes nothing, as in Connect"
        );
        let off = tombstone_write(Some(Bson::String("k1".into())), false).unwrap_err();
        assert_eq!(
            (off.stage, off.message.as_str(), off.retriable),
            (Stage::TaskPut, "Could not create write model", false)
        );
        assert!(off.class.ends_with("DataException"));
        let keyless = tombstone_write(None, true).unwrap_err();
        assert!(keyless.message.contains("neither key doc nor value doc"));
    }

    #[test]
    fn write_models_and_id_strategies() {
        let value = doc! { "_id": 5, "item": "apple" };
        match build_write(
            value.clone(),
            None,
            WriteModel::Replace,
            DocumentIdStrategy::ProvidedInValue,
            AT,
        )
        .unwrap()
        {
            Write::Update(u) => {
                assert_eq!(u.get_document("q").unwrap(), &doc! { "_id": 5 });
                assert_eq!(u.get_document("u").unwrap(), &value);
                assert!(u.get_bool("upsert").unwrap());
            }
            other => panic!("{other:?}"),
        }
        match build_write(
            doc! { "item": "pear" },
            Some(Bson::String("k1".into())),
            WriteModel::Upsert,
            DocumentIdStrategy::ProvidedInKey,
            AT,
        )
        .unwrap()
        {
            Write::Update(u) => {
                assert_eq!(u.get_document("q").unwrap(), &doc! { "_id": "k1" });
                assert_eq!(
                    u.get_document("u").unwrap(),
                    &doc! { "$set": { "item": "pear" } }
                );
            }
            other => panic!("{other:?}"),
        }
        match build_write(
            doc! {},
            None,
            WriteModel::Insert,
            DocumentIdStrategy::KafkaCoordinates,
            AT,
        )
        .unwrap()
        {
            Write::Insert(d) => assert_eq!(
                d.get_document("_id").unwrap(),
                &doc! { "topic": "orders", "partition": 1, "offset": 7_i64 }
            ),
            other => panic!("{other:?}"),
        }
        match build_write(
            doc! { "_id": 3, "item": "fig" },
            None,
            WriteModel::InsertIfAbsent,
            DocumentIdStrategy::ProvidedInValue,
            AT,
        )
        .unwrap()
        {
            Write::Update(u) => assert_eq!(
                u,
                doc! { "q": { "_id": 3 }, "u": { "$setOnInsert": { "item": "fig" } }, "upsert": true }
            ),
            other => panic!("{other:?}"),
        }
        let err = build_write(
            doc! {},
            None,
            WriteModel::Insert,
            DocumentIdStrategy::ProvidedInValue,
            AT,
        )
        .unwrap_err();
        assert_eq!(
            err.stage,
            Stage::TaskPut,
            "a write model that can't be built"
        );
        assert!(
            build_write(
                doc! { "_id": Bson::Null },
                None,
                WriteModel::Insert,
                DocumentIdStrategy::ProvidedInValue,
                AT,
            )
            .is_err(),
            "a null _id is no id"
        );
    }
}
