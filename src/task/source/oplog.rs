//! How a source tells where its resume token stands: the cluster time a token points at, and the oplog
//! window it must stay within, read once a minute into the task's status (the operator's
//! `ResumeTokenAtRisk` condition compares the two).

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Document, Timestamp, doc};
use tokio::sync::watch;

use crate::task::metrics::TaskMetrics;

/// How often a source reads the oplog window.
const OPLOG_WINDOW_EVERY: Duration = Duration::from_secs(60);

/// The cluster time (seconds) a replica set's resume token points at: its `_data` is a KeyString whose
/// first value is the event's cluster time (type byte `0x82`, then 4 bytes of seconds, 4 of increment).
pub fn token_cluster_time(token_json: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(token_json).ok()?;
    let data = v["_data"].as_str()?;
    if data.len() < 18 || !data[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    u32::from_str_radix(data.get(2..10)?, 16).ok()
}

pub(super) fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The operation time just after the newest oplog entry: where a stream opened now starts at the earliest
/// (the server's "now" is this or later). `None` when the oplog can't be read.
pub(super) async fn after_newest_entry(mongo: &mongodb::Client) -> Option<Timestamp> {
    oplog_end(mongo, -1)
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "the newest oplog entry can't be read"))
        .ok()?
        .map(just_after)
}

/// The `ts` of the oldest (`order` 1) or newest (-1) entry of `local.oplog.rs`; `None` when it has none.
async fn oplog_end(
    mongo: &mongodb::Client,
    order: i32,
) -> Result<Option<Timestamp>, mongodb::error::Error> {
    let entry = mongo
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! { "$natural": order })
        .projection(doc! { "ts": 1 })
        .await?;
    Ok(entry.and_then(|d| d.get_timestamp("ts").ok()))
}

/// The operation time right after `ts` (the next increment of its second).
fn just_after(ts: Timestamp) -> Timestamp {
    match ts.increment.checked_add(1) {
        Some(increment) => Timestamp {
            time: ts.time,
            increment,
        },
        None => Timestamp {
            time: ts.time.saturating_add(1),
            increment: 0,
        },
    }
}

/// Reads the oplog window (first and last entry times of `local.oplog.rs`), or why it can't be read.
async fn oplog_window(mongo: &mongodb::Client) -> Result<(u32, u32), String> {
    let mut ends = Vec::new();
    for order in [1, -1] {
        let entry = oplog_end(mongo, order)
            .await
            .map_err(|e| match e.kind.as_ref() {
                mongodb::error::ErrorKind::Command(c) if c.code == 13 => {
                    "not authorized to read local.oplog.rs (grant read on the local database to see the oplog window)".to_string()
                }
                _ => format!("reading local.oplog.rs failed: {e}"),
            })?;
        match entry {
            Some(ts) => ends.push(ts.time),
            None => {
                return Err(
                    "local.oplog.rs is missing or empty (not a replica set member?)".to_string(),
                );
            }
        }
    }
    Ok((ends[0], ends[1]))
}

/// Keeps the oplog window in the task's status fresh (it only moves slowly: once a minute).
pub(super) async fn report_oplog_window(
    mongo: mongodb::Client,
    metrics: Arc<TaskMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let window = oplog_window(&mongo).await;
        metrics.update_resume_token(|r| match window {
            Ok((first, last)) => {
                r.oplog_first_time = Some(rfc3339(first.into()));
                r.oplog_last_time = Some(rfc3339(last.into()));
                r.oplog_window_unknown = None;
            }
            Err(why) => {
                r.oplog_first_time = None;
                r.oplog_last_time = None;
                r.oplog_window_unknown = Some(why);
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(OPLOG_WINDOW_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_after_an_entry_is_its_next_increment() {
        let at = |time, increment| Timestamp { time, increment };
        assert_eq!(just_after(at(10, 4)), at(10, 5));
        assert_eq!(just_after(at(10, u32::MAX)), at(11, 0));
    }

    #[test]
    fn a_replica_set_token_tells_its_cluster_time() {
        // A real token: KeyString 0x82, seconds 0x6553F100, increment 1, then the event's identity.
        let token = r#"{"_data":"826553F100000000012B022C0100296E5A1004"}"#;
        assert_eq!(token_cluster_time(token), Some(0x6553_F100));
        assert_eq!(token_cluster_time(r#"{"_data":"0000000a00000001"}"#), None);
        assert_eq!(token_cluster_time("not json"), None);
    }
}
