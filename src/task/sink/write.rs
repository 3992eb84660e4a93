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
use crate::task::convert::{Coordinates, Write, build_write, key_value, value_document};
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
    }
}

/// The write for one record, or the conversion failure.
fn convert(sink: &SinkSpec, msg: &OwnedMessage) -> Result<Option<Write>, Failure> {
    let Some(value) = msg.payload() else {
        return Ok(None);
    }; // a tombstone: nothing to write
    let key = match (sink.document_id_strategy, msg.key()) {
        (DocumentIdStrategy::ProvidedInKey, Some(k)) => Some(key_value(k, sink.key_converter)?),
        _ => None,
    };
    let value = value_document(value, sink.value_converter)?;
    let at = Coordinates {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    build_write(value, key, sink.write_model, sink.document_id_strategy, at).map(Some)
}

/// A per-index write error from a bulk reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    pub index: usize,
    pub code: i32,
    pub message: String,
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
                Ok(Some(write)) => pending.push(Item {
                    record: record_context(msg),
                    write,
                }),
                Ok(None) => {}
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
        let mut groups = VecDeque::from([pending]);
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
        let command = match &items[0].write {
            Write::Insert(_) => {
                let docs: Vec<Document> = items
                    .iter()
                    .filter_map(|i| match &i.write {
                        Write::Insert(d) => Some(d.clone()),
                        _ => None,
                    })
                    .collect();
                doc! { "insert": &self.collection, "documents": docs, "ordered": ordered }
            }
            Write::Update(_) => {
                let stmts: Vec<Document> = items
                    .iter()
                    .filter_map(|i| match &i.write {
                        Write::Update(u) => Some(u.clone()),
                        _ => None,
                    })
                    .collect();
                doc! { "update": &self.collection, "updates": stmts, "ordered": ordered }
            }
        };
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
        let (written, errors) = parse_write_reply(&reply);
        self.metrics.records_out(written);
        let first_error = errors.iter().map(|e| e.index).min();
        let by_index: BTreeMap<usize, WriteError> =
            errors.into_iter().map(|e| (e.index, e)).collect();
        let mut again = Vec::new();
        let mut unavailable = None;
        for (index, item) in items.into_iter().enumerate() {
            if let Some(err) = by_index.get(&index) {
                self.metrics
                    .record_failure(item.record.ledger_key().as_deref());
                let failure = Failure::new(
                    Stage::TaskPut,
                    "com.mongodb.MongoBulkWriteException",
                    err.message.clone(),
                    false,
                )
                .with_code(err.code);
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
            }
        }
        match unavailable {
            Some(failure) => self.handler.wait_out(&failure, outage, waiter).await?,
            None => self.handler.outage_over(outage),
        }
        Ok(vec![again])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_write_concern_error_is_an_outage_not_a_success() {
        let reply = doc! { "ok": 1, "n": 2, "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } };
        let f = write_concern_error(&reply).expect("not written as asked");
        assert_eq!((f.code, f.outage), (Some(64), Some(Dependency::MongoDB)));
        assert_eq!(write_concern_error(&doc! { "ok": 1, "n": 2 }), None);
    }
}
