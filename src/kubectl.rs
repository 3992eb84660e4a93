//! What `sluice` does for people at a terminal (also as the kubectl plugin `kubectl sluice`, a link named
//! `kubectl-sluice` to the binary): `dlq peek` prints a DeadLetterQueue's last records with their error
//! context, and `rotate`, `reset-offsets` and `restart` stand for the annotations and pod deletions people
//! otherwise copy from the docs. It talks to the cluster of the current kubeconfig, and to Kafka as the
//! operator does (the DeadLetterQueue's Kafka connection, its credentials read from their Secrets).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use rdkafka::message::{Headers, Message};
use serde::Serialize;

use crate::controller::dead_letter_queue::topic::topic_name;
use crate::controller::secrets::{Secrets, kafka_secret_names};
use crate::crd::connector::ConnectorState;
use crate::crd::dead_letter_queue::{Replay, ReplayFilter};
use crate::crd::{Connector, DeadLetterQueue};
use crate::kafka::Clients;
use crate::kafka::read::{self, Next, Range, dead_lettered_at};
use crate::names::{self, DEAD_LETTER_HEADER_PREFIX};
use crate::replay::decide::{DeadLetterRecord, matches};
use crate::text::without_record_contents;
use crate::wire::TaskKafka;
use crate::wire::dead_letter::error_context;

/// What `dlq peek` is asked for.
#[derive(Debug, Clone)]
pub struct Peek {
    pub namespace: Option<String>,
    pub dlq: String,
    /// How many records, the newest last.
    pub last: usize,
    /// How many of the newest records of each partition are searched for ones the filter takes.
    pub scan: i64,
    pub filter: ReplayFilter,
    /// Show keys, values and the server's message whole (record contents: off by default).
    pub include_records: bool,
}

/// One dead letter as `dlq peek` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeekedRecord {
    /// `<partition>@<offset>` in the DLQ.
    pub position: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered_at: Option<String>,
    pub error_class: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Without record contents (the values MongoDB quotes) unless asked.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A client of the current kubeconfig and the namespace to use (`--namespace`, else the kubeconfig's).
async fn client(namespace: Option<&str>) -> Result<(Client, String), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the cluster of the current kubeconfig: {e}"))?;
    let ns = namespace
        .map(String::from)
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, ns))
}

/// The last records of a DeadLetterQueue the filter takes, oldest first.
pub async fn peek(p: &Peek) -> Result<Vec<PeekedRecord>, String> {
    let (client, ns) = client(p.namespace.as_deref()).await?;
    let dlq = Api::<DeadLetterQueue>::namespaced(client.clone(), &ns)
        .get_opt(&p.dlq)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("DeadLetterQueue {ns}/{} not found", p.dlq))?;
    let secrets = Secrets::read(&client, &ns, kafka_secret_names(&dlq.spec.kafka))
        .await
        .map_err(|e| e.to_string())?;
    let creds = secrets
        .kafka_credentials(&dlq.spec.kafka, "spec.kafka")
        .map_err(|problem| problem.message)?;
    let kafka = Clients::new(&TaskKafka::from(&dlq.spec.kafka), &creds);
    let (topic, p) = (topic_name(&dlq), p.clone());
    tokio::task::spawn_blocking(move || read_last(&kafka.consumer, &topic, &p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "reading topic of DeadLetterQueue {ns}/{}: {e}",
                dlq.name_any()
            )
        })
}

/// Reads the newest `scan` records of each partition and keeps the last `last` the filter takes.
fn read_last(
    kafka: &rdkafka::ClientConfig,
    topic: &str,
    p: &Peek,
) -> rdkafka::error::KafkaResult<Vec<PeekedRecord>> {
    let consumer = read::reader(kafka, names::PEEK_GROUP, names::CLI_CLIENT_ID)?;
    let ranges: Vec<Range> = read::watermarks(&consumer, topic, Duration::from_secs(10))?
        .into_iter()
        .map(|w| Range {
            partition: w.partition,
            from: w.low.max(w.high - p.scan),
            end: w.high,
        })
        .collect();
    let replay = Replay {
        filter: p.filter.clone(),
        ..Default::default()
    };
    let mut found: Vec<(i64, PeekedRecord)> = Vec::new();
    read::read_ranges(
        &consumer,
        topic,
        &ranges,
        Duration::from_secs(30),
        Duration::from_millis(200),
        |m| {
            let headers: Vec<(String, Option<Vec<u8>>)> = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            let at = dead_lettered_at(m);
            let record = DeadLetterRecord {
                timestamp_ms: at,
                headers,
            };
            if matches(&replay, &record) {
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let key = p.include_records.then(|| text(m.key())).flatten();
                let value = p.include_records.then(|| text(m.payload())).flatten();
                let mut peeked = peeked(
                    m.partition(),
                    m.offset(),
                    at,
                    &record.headers,
                    p.include_records,
                );
                (peeked.key, peeked.value) = (key, value);
                found.push((at.unwrap_or_default(), peeked));
            }
            Next::Continue
        },
    )?;
    found.sort_by(|a, b| (a.0, &a.1.position).cmp(&(b.0, &b.1.position)));
    let skip = found.len().saturating_sub(p.last);
    Ok(found.into_iter().skip(skip).map(|(_, r)| r).collect())
}

/// A dead letter's error context as shown (pure).
pub fn peeked(
    partition: i32,
    offset: i64,
    at_ms: Option<i64>,
    headers: &[(String, Option<Vec<u8>>)],
    include_records: bool,
) -> PeekedRecord {
    let mut context = error_context(headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
    let mut take = |name: &str| context.remove(&format!("{DEAD_LETTER_HEADER_PREFIX}{name}"));
    let message = take("exception.message").unwrap_or_default();
    PeekedRecord {
        position: format!("{partition}@{offset}"),
        dead_lettered_at: at_ms
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string()),
        error_class: take("exception.class.name").unwrap_or_else(|| "(no context headers)".into()),
        stage: take("stage"),
        message: if include_records {
            message
        } else {
            without_record_contents(&message)
        },
        original_topic: take("topic"),
        original_partition: take("partition").and_then(|p| p.parse().ok()),
        original_offset: take("offset").and_then(|o| o.parse().ok()),
        connector: take("connector.name"),
        task: take("task.id"),
        key: None,
        value: None,
    }
}

/// Records as people read them: one block each.
pub fn render_text(records: &[PeekedRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&format!(
            "{}  {}  {}{}\n",
            r.position,
            r.dead_lettered_at.as_deref().unwrap_or("-"),
            r.error_class,
            r.stage
                .as_deref()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default()
        ));
        if let Some(topic) = &r.original_topic {
            let at = match (r.original_partition, r.original_offset) {
                (Some(p), Some(o)) => format!(" partition {p} offset {o}"),
                _ => String::new(),
            };
            let by = match (&r.connector, &r.task) {
                (Some(c), Some(t)) => format!(", connector {c} task {t}"),
                (Some(c), None) => format!(", connector {c}"),
                _ => String::new(),
            };
            out.push_str(&format!("  from {topic}{at}{by}\n"));
        }
        if !r.message.is_empty() {
            out.push_str(&format!("  {}\n", r.message));
        }
        if let Some(k) = &r.key {
            out.push_str(&format!("  key: {k}\n"));
        }
        if let Some(v) = &r.value {
            out.push_str(&format!("  value: {v}\n"));
        }
    }
    if records.is_empty() {
        out.push_str("no dead letters\n");
    }
    out
}

/// Sets an annotation of a Connector to a new value (now, in seconds since the epoch); returns the value.
async fn annotate(
    namespace: Option<&str>,
    connector: &str,
    annotation: &str,
) -> Result<(String, Connector), String> {
    let (client, ns) = client(namespace).await?;
    let api = Api::<Connector>::namespaced(client, &ns);
    let value = Timestamp::now().as_second().to_string();
    let patch = serde_json::json!({ "metadata": { "annotations": { annotation: value } } });
    let conn = api
        .patch(connector, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("Connector {ns}/{connector}: {e}"))?;
    Ok((value, conn))
}

/// `rotate`: the on-demand rotation of a source's offset partition name.
pub async fn rotate(namespace: Option<&str>, connector: &str) -> Result<String, String> {
    let (value, _) = annotate(namespace, connector, names::ANNOTATION_ROTATE_OFFSETS).await?;
    Ok(format!(
        "connector {connector} annotated {}={value}: the operator rotates its offset partition name \
         (status.offsets, Event OffsetsRotated)",
        names::ANNOTATION_ROTATE_OFFSETS
    ))
}

/// `reset-offsets`: deletes a stopped Connector's offsets (pending while it runs).
pub async fn reset_offsets(namespace: Option<&str>, connector: &str) -> Result<String, String> {
    let (value, conn) = annotate(namespace, connector, names::ANNOTATION_RESET_OFFSETS).await?;
    let when = if conn.spec.state == ConnectorState::Stopped {
        "the operator resets its offsets now (status.offsets.resets, Event OffsetsReset)"
    } else {
        "it is not stopped, so the reset waits (Event OffsetResetPending) until spec.state is stopped"
    };
    Ok(format!(
        "connector {connector} annotated {}={value}: {when}",
        names::ANNOTATION_RESET_OFFSETS
    ))
}

/// `restart`: deletes a Connector's task pods (one, or all), which the operator creates again at once.
pub async fn restart(
    namespace: Option<&str>,
    connector: &str,
    task: Option<u32>,
) -> Result<String, String> {
    let (client, ns) = client(namespace).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    Api::<Connector>::namespaced(client, &ns)
        .get(connector)
        .await
        .map_err(|e| format!("Connector {ns}/{connector}: {e}"))?;
    let mut selector = format!("{}={connector}", names::LABEL_CONNECTOR);
    if let Some(t) = task {
        selector.push_str(&format!(",{}={t}", names::LABEL_TASK));
    }
    let found = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| e.to_string())?;
    if found.items.is_empty() {
        return Err(format!(
            "connector {ns}/{connector} has no task pod{}",
            task.map(|t| format!(" {t}")).unwrap_or_default()
        ));
    }
    let mut deleted = Vec::new();
    for pod in found.items {
        pods.delete(&pod.name_any(), &DeleteParams::default())
            .await
            .map_err(|e| format!("pod {}: {e}", pod.name_any()))?;
        deleted.push(pod.name_any());
    }
    Ok(format!(
        "deleted {}: the operator starts the task again",
        deleted.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(k: &str, v: &str) -> (String, Option<Vec<u8>>) {
        (k.to_string(), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn a_dead_letter_shows_its_context_without_record_contents_unless_asked() {
        let headers = vec![
            header("trace-id", "t-1"),
            header("__connect.errors.topic", "orders"),
            header("__connect.errors.partition", "2"),
            header("__connect.errors.offset", "41"),
            header("__connect.errors.connector.name", "orders-sink"),
            header("__connect.errors.task.id", "0"),
            header("__connect.errors.stage", "TASK_PUT"),
            header(
                "__connect.errors.exception.class.name",
                "com.mongodb.kafka.connect.sink.dlq.WriteException",
            ),
            header(
                "__connect.errors.exception.message",
                "v=1, code=11000, message=E11000 duplicate key error dup key: { _id: \"alice@example.com\" }, details={}",
            ),
        ];
        let r = peeked(1, 7, Some(1_796_320_876_000), &headers, false);
        assert_eq!(r.position, "1@7");
        assert_eq!(r.dead_lettered_at.as_deref(), Some("2026-12-03T18:01:16Z"));
        assert_eq!(
            (r.original_partition, r.original_offset),
            (Some(2), Some(41))
        );
        assert!(!r.message.contains("alice"), "{}", r.message);
        let text = render_text(std::slice::from_ref(&r));
        assert!(
            text.starts_with(
                "1@7  2026-12-03T18:01:16Z  com.mongodb.kafka.connect.sink.dlq.WriteException at TASK_PUT\n  from orders partition 2 offset 41, connector orders-sink task 0\n"
            ),
            "{text}"
        );
        assert!(peeked(1, 7, None, &headers, true).message.contains("alice"));
        assert_eq!(render_text(&[]), "no dead letters\n");
    }
}
