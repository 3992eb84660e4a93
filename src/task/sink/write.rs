//! A batch of records becomes MongoDB writes: converted one by one (a conversion failure goes to error
//! handling), then written with one bulk `insert` or `update` command.
//!
//! What a failure belongs to decides what happens:
//! - MongoDB unavailable (unreachable, not primary, shutting down, refusing authentication, a write concern
//!   not met — for the whole command or at some indexes): an outage, waited out with the partitions paused;
//!   the same records are written again once it ends. Never a record error.
//! - The whole command failed for another reason: it is split in halves and each half written again, down
//!   to the one record it belongs to, which goes to error handling (Spring Kafka's recovery by index).
//! - A per-index write error (a duplicate key, a validation failure): only that record goes to error
//!   handling (KIP-610's errant-record reporting); an ordered bulk's unexecuted rest is sent again.

use std::collections::{BTreeMap, VecDeque};

use mongodb::bson::{Bson, Document, doc};
use rdkafka::message::{Headers, Message, OwnedMessage};

use super::Sink;
use crate::crd::connector::{DocumentIdStrategy, SinkSpec};
use crate::task::convert::{
    Coordinates, Write, build_write, key_value, tombstone_write, value_document,
};
use crate::task::errors::{Halt, OutageClock, RetryEnd, Wait};
use crate::task::failure::{Dependency, Failure, RecordContext, Stage, is_outage_code};

/// One record on its way to MongoDB.
struct Item {
    record: RecordContext,
    write: Write,
}

fn record_context(msg: &OwnedMessage) -> RecordContext {
    RecordContext {
        topic: msg.topic().to_string(),
        partition: Some(msg.partition()),
        offset: Some(msg.offset()),
        event_id: None,
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers: msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
        timestamp_ms: msg.timestamp().to_millis(),
        log_append_time: matches!(msg.timestamp(), rdkafka::Timestamp::LogAppendTime(_)),
    }
}

/// The write for one record, or the conversion failure.
fn convert(sink: &SinkSpec, msg: &OwnedMessage) -> Result<Write, Failure> {
    let read_key = || {
        msg.key()
            .map(|k| key_value(k, sink.key_converter))
            .transpose()
    };
    // The key first, as Connect converts it before the value.
    let key = match sink.document_id_strategy {
        DocumentIdStrategy::ProvidedInKey => read_key()?,
        _ => None,
    };
    // No value: a tombstone, or JSON null (no value, as Connect's JsonConverter reads it).
    let value = match msg.payload() {
        Some(bytes) => value_document(bytes, sink.value_converter)?,
        None => None,
    };
    let Some(value) = value else {
        let key = match key {
            Some(k) => Some(k),
            None => read_key()?,
        };
        return tombstone_write(key, sink.delete_on_null_values);
    };
    let at = Coordinates {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    build_write(value, key, sink.write_model, sink.document_id_strategy, at)
}

/// A per-index write error from a bulk reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    pub index: usize,
    pub code: i32,
    pub message: String,
    /// The server's `errInfo` (a validation failure's details), empty without one.
    pub details: Document,
}

impl WriteError {
    /// The error as Kafka Connect's MongoDB sink reports it: class
    /// `com.mongodb.kafka.connect.sink.dlq.WriteException`, message `v=1, code=<code>, message=<server
    /// message>, details=<errInfo as JSON>` (a versioned format tools parse the code out of).
    pub fn failure(&self) -> Failure {
        Failure::new(
            Stage::TaskPut,
            "com.mongodb.kafka.connect.sink.dlq.WriteException",
            format!(
                "v=1, code={}, message={}, details={}",
                self.code,
                self.message,
                java_json(&self.details)
            ),
            false,
        )
        .with_code(self.code)
    }
}

/// A document as the Java driver's `BsonDocument.toJson()` writes it: relaxed extended JSON with `": "`
/// and `", "` between names, values and elements.
pub fn java_json(document: &Document) -> String {
    struct Spaced;
    fn separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for Spaced {
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(writer, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(writer, first)
        }
    }
    let json = Bson::Document(document.clone()).into_relaxed_extjson();
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    use serde::Serialize;
    match json.serialize(&mut serializer) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => "{}".into(),
    }
}

/// A reply's write concern error (`ok: 1`, but the writes are not known to be durable as asked): the
/// whole command is an outage, written again.
pub fn write_concern_error(reply: &Document) -> Option<Failure> {
    let wce = reply.get_document("writeConcernError").ok()?;
    let code = wce.get_i32("code").unwrap_or(64);
    let message = wce
        .get_str("errmsg")
        .unwrap_or("write concern not satisfied");
    Some(
        Failure::new(
            Stage::TaskPut,
            "com.mongodb.MongoWriteConcernException",
            message,
            true,
        )
        .with_code(code)
        .outage_of(Dependency::MongoDB),
    )
}

/// The written count and per-index errors of an `insert`/`update` reply.
pub fn parse_write_reply(reply: &Document) -> (u64, Vec<WriteError>) {
    let n = match reply.get("n") {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        _ => 0,
    };
    let errors = reply
        .get_array("writeErrors")
        .map(|arr| {
            arr.iter()
                .filter_map(|e| e.as_document())
                .map(|e| WriteError {
                    index: e.get("index").and_then(bson_usize).unwrap_or(0),
                    code: e.get_i32("code").unwrap_or(0),
                    message: e.get_str("errmsg").unwrap_or_default().to_string(),
                    details: e.get_document("errInfo").cloned().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    (n, errors)
}

fn bson_usize(b: &Bson) -> Option<usize> {
    match b {
        Bson::Int32(i) => usize::try_from(*i).ok(),
        Bson::Int64(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

impl Sink {
    /// Writes one batch; every record ends written, or handled by the error machinery. An outage is
    /// waited out (`waiter` keeps the consumer polled with its partitions paused).
    pub(super) async fn write_batch<W: Wait>(
        &self,
        batch: &[OwnedMessage],
        waiter: &W,
    ) -> Result<(), Halt> {
        self.metrics.records_in(batch.len() as u64);
        let mut pending = Vec::with_capacity(batch.len());
        for msg in batch {
            match convert(&self.spec, msg) {
                Ok(write) => pending.push(Item {
                    record: record_context(msg),
                    write,
                }),
                Err(failure) => {
                    let record = record_context(msg);
                    self.metrics.record_failure(record.ledger_key().as_deref());
                    self.handler.record_failed(failure, record, waiter).await?;
                }
            }
        }
        if self.cfg.discard_writes {
            self.metrics.records_out(pending.len() as u64);
            return self.handler.flush_dead_letters(waiter).await;
        }
        let mut groups = runs_of_one_command(pending);
        let mut outage = OutageClock::default();
        while let Some(group) = groups.pop_front() {
            if group.is_empty() {
                continue;
            }
            let again = self.bulk(group, &mut outage, waiter).await?;
            for g in again.into_iter().rev() {
                groups.push_front(g);
            }
        }
        self.handler.flush_dead_letters(waiter).await?;
        Ok(())
    }

    /// One bulk command for `items`; returns the groups to write next, in order (the records of an outage,
    /// the halves of a command that failed as a whole, the unexecuted rest of an ordered bulk).
    async fn bulk<W: Wait>(
        &self,
        items: Vec<Item>,
        outage: &mut OutageClock,
        waiter: &W,
    ) -> Result<Vec<Vec<Item>>, Halt> {
        let ordered = self.spec.bulk_write_ordered;
        let name = items[0].write.command();
        let statements: Vec<Document> = items.iter().map(|i| i.write.statement().clone()).collect();
        let array = match name {
            "insert" => "documents",
            "update" => "updates",
            _ => "deletes",
        };
        let command = doc! { name: &self.collection, array: statements, "ordered": ordered };
        let reply = self
            .handler
            .retry(waiter, || async {
                let reply = self
                    .db
                    .run_command(command.clone())
                    .await
                    .map_err(|e| Failure::mongo(Stage::TaskPut, &e))?;
                match write_concern_error(&reply) {
                    Some(wce) => Err(wce),
                    None => Ok(reply),
                }
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(RetryEnd::Halt(halt)) => return Err(halt),
            Err(RetryEnd::Failed(failure)) if items.len() > 1 => {
                // Not an outage, and not yet known whose: find the record it belongs to.
                tracing::debug!(records = items.len(), error = %failure, "bulk failed as a whole; splitting it");
                let mut first = items;
                let second = first.split_off(first.len() / 2);
                return Ok(vec![first, second]);
            }
            Err(RetryEnd::Failed(failure)) => {
                let item = items.into_iter().next().expect("one item");
                self.handler
                    .record_failed(failure, item.record, waiter)
                    .await?;
                return Ok(Vec::new());
            }
        };
        let (_, errors) = parse_write_reply(&reply);
        let first_error = errors.iter().map(|e| e.index).min();
        let by_index: BTreeMap<usize, WriteError> =
            errors.into_iter().map(|e| (e.index, e)).collect();
        let mut again = Vec::new();
        let mut unavailable = None;
        // What the server took (a delete of a missing document too: it is gone, as asked).
        let mut accepted = 0;
        for (index, item) in items.into_iter().enumerate() {
            if let Some(err) = by_index.get(&index) {
                self.metrics
                    .record_failure(item.record.ledger_key().as_deref());
                let failure = err.failure();
                if is_outage_code(err.code) {
                    unavailable = Some(failure.outage_of(Dependency::MongoDB));
                    again.push(item);
                } else {
                    self.handler
                        .record_failed(failure, item.record, waiter)
                        .await?;
                }
            } else if ordered && first_error.is_some_and(|f| index > f) {
                again.push(item); // never attempted: an ordered bulk stops at its first error
            } else {
                accepted += 1;
            }
        }
        self.metrics.records_out(accepted);
        match unavailable {
            Some(failure) => self.handler.wait_out(&failure, outage, waiter).await?,
            None => self.handler.outage_over(outage),
        }
        Ok(vec![again])
    }
}

/// The writes in order, in runs of one command each (a bulk is one `insert`, `update` or `delete`): a
/// tombstone's delete between two replaces of the same document stays between them.
fn runs_of_one_command(items: Vec<Item>) -> VecDeque<Vec<Item>> {
    let mut runs: VecDeque<Vec<Item>> = VecDeque::new();
    for item in items {
        match runs.back_mut() {
            Some(run) if run[0].write.command() == item.write.command() => run.push(item),
            _ => runs.push_back(vec![item]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_in_runs_of_one_command_in_their_order() {
        let item = |write| Item {
            record: RecordContext::default(),
            write,
        };
        let update = || item(Write::Update(doc! {}));
        let delete = || item(Write::Delete(doc! {}));
        let runs = runs_of_one_command(vec![update(), update(), delete(), update()]);
        let shape: Vec<(&str, usize)> = runs
            .iter()
            .map(|r| (r[0].write.command(), r.len()))
            .collect();
        assert_eq!(shape, [("update", 2), ("delete", 1), ("update", 1)]);
    }

    #[test]
    fn write_replies_give_count_and_per_index_errors() {
        let reply = doc! { "ok": 1.0, "n": 2, "writeErrors": [
            { "index": 1, "code": 11000, "errmsg": "E11000 duplicate key" },
            { "index": 3_i64, "code": 91, "errmsg": "shutting down" },
        ]};
        let (n, errors) = parse_write_reply(&reply);
        assert_eq!(n, 2);
        assert_eq!(
            errors.iter().map(|e| (e.index, e.code)).collect::<Vec<_>>(),
            [(1, 11000), (3, 91)]
        );
        assert_eq!(
            parse_write_reply(&doc! { "ok": 1, "n": 5_i64 }),
            (5, vec![])
        );
    }

    #[test]
    fn write_errors_read_as_kafka_connect_s_write_exception() {
        let reply = doc! { "ok": 1, "n": 0, "writeErrors": [
            { "index": 0, "code": 121, "errmsg": "Document failed validation",
              "errInfo": { "failingDocumentId": 5, "details": { "rules": [1, "a"], "ok": true } } },
            { "index": 1, "code": 11000, "errmsg": "E11000 duplicate key" },
        ]};
        let (_, errors) = parse_write_reply(&reply);
        let validation = errors[0].failure();
        assert_eq!(
            validation.class,
            "com.mongodb.kafka.connect.sink.dlq.WriteException"
        );
        assert_eq!(
            validation.message,
            r#"v=1, code=121, message=Document failed validation, details={"failingDocumentId": 5, "details": {"rules": [1, "a"], "ok": true}}"#
        );
        assert_eq!(
            (validation.code, validation.stage),
            (Some(121), Stage::TaskPut)
        );
        assert_eq!(
            errors[1].failure().message,
            "v=1, code=11000, message=E11000 duplicate key, details={}"
        );
    }

    #[test]
    fn a_write_concern_error_is_an_outage_not_a_success() {
        let reply = doc! { "ok": 1, "n": 2, "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } };
        let f = write_concern_error(&reply).expect("not written as asked");
        assert_eq!((f.code, f.outage), (Some(64), Some(Dependency::MongoDB)));
        assert_eq!(write_concern_error(&doc! { "ok": 1, "n": 2 }), None);
    }
}
