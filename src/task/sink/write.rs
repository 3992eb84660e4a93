//! A batch of records becomes MongoDB writes: converted one by one (a conversion failure goes to error
//! handling), then written with one bulk `insert` or `update` command per run of the same kind. A bulk
//! that fails as a whole is retried; per-index write errors send only those records to error handling
//! (retried first when retriable); an ordered bulk's unexecuted rest is sent again.

use std::collections::BTreeMap;
use std::time::Instant;

use mongodb::bson::{Bson, Document, doc};
use rdkafka::message::{Headers, Message, OwnedMessage};

use super::Sink;
use crate::crd::connector::{DocumentIdStrategy, SinkSpec};
use crate::task::convert::{Coordinates, Write, build_write, key_value, value_document};
use crate::task::errors::{TaskFailed, next_retry};
use crate::task::failure::{Failure, RETRYABLE_CODES, RecordContext, Stage, is_retriable};

/// One record on its way to MongoDB.
struct Item {
    record: RecordContext,
    write: Write,
    attempts: u32,
    first_failed: Option<Instant>,
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
    /// Writes one batch; every record ends written, or handled by the error machinery.
    pub(super) async fn write_batch(&self, batch: &[OwnedMessage]) -> Result<(), TaskFailed> {
        self.metrics.records_in(batch.len() as u64);
        let mut pending = Vec::with_capacity(batch.len());
        for msg in batch {
            match convert(&self.spec, msg) {
                Ok(Some(write)) => pending.push(Item {
                    record: record_context(msg),
                    write,
                    attempts: 0,
                    first_failed: None,
                }),
                Ok(None) => {}
                Err(failure) => {
                    self.metrics.record_failure();
                    self.handler
                        .record_failed(failure, record_context(msg))
                        .await?;
                }
            }
        }
        if self.cfg.discard_writes {
            self.metrics.records_out(pending.len() as u64);
            return self.handler.flush_dead_letters().await;
        }
        while !pending.is_empty() {
            pending = self.bulk(pending).await?;
        }
        self.handler.flush_dead_letters().await?;
        Ok(())
    }

    /// One bulk command for `items`; returns the items to try again (retriable per-index errors, and the
    /// unexecuted rest of an ordered bulk).
    async fn bulk(&self, items: Vec<Item>) -> Result<Vec<Item>, TaskFailed> {
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
            .retry(|| async {
                self.db
                    .run_command(command.clone())
                    .await
                    .map_err(|e| Failure::mongo(Stage::TaskPut, &e))
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(failure) => {
                // The whole bulk failed for good: each of its records is a failed record.
                for item in items {
                    self.handler
                        .record_failed(failure.clone(), item.record)
                        .await?;
                }
                return Ok(Vec::new());
            }
        };
        let (written, errors) = parse_write_reply(&reply);
        self.metrics.records_out(written);
        let mut again = Vec::new();
        let first_error = errors.iter().map(|e| e.index).min();
        let by_index: BTreeMap<usize, WriteError> =
            errors.into_iter().map(|e| (e.index, e)).collect();
        for (index, mut item) in items.into_iter().enumerate() {
            if let Some(err) = by_index.get(&index) {
                self.metrics.record_failure();
                let failure = Failure::new(
                    Stage::TaskPut,
                    "com.mongodb.MongoBulkWriteException",
                    err.message.clone(),
                    RETRYABLE_CODES.contains(&err.code),
                )
                .with_code(err.code);
                let first = *item.first_failed.get_or_insert_with(Instant::now);
                let retry = is_retriable(&failure, &self.cfg.errors.spec.not_retryable)
                    .then(|| {
                        next_retry(
                            &self.cfg.errors.spec,
                            item.attempts,
                            first.elapsed(),
                            rand::random(),
                        )
                    })
                    .flatten();
                match retry {
                    Some(wait) => {
                        self.metrics.record_retry();
                        tokio::time::sleep(wait).await;
                        item.attempts += 1;
                        again.push(item);
                    }
                    None => self.handler.record_failed(failure, item.record).await?,
                }
            } else if ordered && first_error.is_some_and(|f| index > f) {
                again.push(item); // never attempted: an ordered bulk stops at its first error
            }
        }
        Ok(again)
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
}
