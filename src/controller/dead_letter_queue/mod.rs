//! The DeadLetterQueue reconciler. A reconcile is a fixed list of steps:
//! 1. dereference: the Secrets the Kafka connection references, and the Connectors of the namespace;
//! 2. validate (pure): the Kafka credentials resolve, or a [`super::Problem`];
//! 3. [`topic`]: create the topic or bring its partitions (only up) and configs to the spec, and the `Ready`
//!    condition for what the broker has (deleting the resource keeps the topic);
//! 4. [`inspect`]: read what is new in the topic (depth, times, counts by error class);
//! 5. [`replays`]: run `spec.replays` one at a time as replay pods, and read their progress;
//! 6. status, written when it changed.

pub mod inspect;
pub mod replays;
pub mod topic;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::conditions::{self, READY};
use super::connector::dereference::referenced_dead_letter_queues;
use super::events::EventType;
use super::secrets::{Secrets, kafka_secret_names};
use super::{Context, Error, RETRY_AFTER_ERROR, Result, apply};
use crate::crd::connector::TOPIC_PLACEHOLDER;
use crate::crd::dead_letter_queue::{Inspection, RouteStatus, TopicStatus};
use crate::crd::{Connector, DeadLetterQueue, DeadLetterQueueStatus, LocalObjectRef};
use crate::kafka::Clients;
use crate::names;
use crate::wire::TaskKafka;

const CONTROLLER: &str = "deadletterqueue";
const RETRY_PROBLEM: Duration = Duration::from_secs(15);
/// How often a running replay's progress is read into status at most.
const REPLAY_PROGRESS_REFRESH: Duration = Duration::from_secs(10);
/// How soon the inspection goes on when one refresh did not read everything.
const BACKLOG_REFRESH: Duration = Duration::from_millis(100);

/// The routes of a Connector that send failed records to this queue: those naming it by reference, and
/// those whose plain topic is the queue's topic on the same Kafka (a `{topic}` one for some original
/// topic: one of a sink's topics, or any for a `topicsRegex` sink or a source).
pub fn routes_into(conn: &Connector, dlq: &DeadLetterQueue) -> Vec<RouteStatus> {
    let errors = &conn.spec.errors;
    let own = topic::topic_name(dlq);
    let same_kafka = conn.spec.kafka.bootstrap_servers == dlq.spec.kafka.bootstrap_servers;
    let sink_topics = conn.spec.sink.as_ref().and_then(|s| s.topics.as_ref());
    let into = |r: Option<&LocalObjectRef>, t: Option<&String>, only: &[String]| match (r, t) {
        (Some(r), _) => r.name == dlq.name_any(),
        (None, Some(plain)) if same_kafka && !plain.contains(TOPIC_PLACEHOLDER) => *plain == own,
        (None, Some(template)) if same_kafka => {
            original_topic(template, &own).is_some_and(|original| {
                (only.is_empty() || only.contains(&original))
                    && sink_topics.is_none_or(|ts| ts.contains(&original))
            })
        }
        (None, _) => false,
    };
    let mut routes: Vec<RouteStatus> = errors
        .dead_letter_routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            into(
                r.dead_letter_queue_ref.as_ref(),
                r.dead_letter_queue_topic.as_ref(),
                &r.topics,
            )
        })
        .map(|(i, r)| RouteStatus {
            connector: conn.name_any(),
            field: format!("spec.errors.deadLetterRoutes[{i}]"),
            stages: r.stages.clone(),
            error_classes: r.error_classes.clone(),
            topics: r.topics.clone(),
        })
        .collect();
    if into(
        errors.dead_letter_queue_ref.as_ref(),
        errors.dead_letter_queue_topic.as_ref(),
        &[],
    ) {
        routes.push(RouteStatus {
            connector: conn.name_any(),
            field: "spec.errors".into(),
            ..Default::default()
        });
    }
    routes
}

/// The original topic whose dead letters a `template` with one `{topic}` sends to `topic` (`None` when it
/// never does, or has several `{topic}`).
fn original_topic(template: &str, topic: &str) -> Option<String> {
    match template.split_once(TOPIC_PLACEHOLDER) {
        None => None,
        Some((before, after)) if !after.contains(TOPIC_PLACEHOLDER) => topic
            .strip_prefix(before)
            .and_then(|rest| rest.strip_suffix(after))
            .filter(|original| !original.is_empty())
            .map(String::from),
        Some(_) => None,
    }
}

/// Whether a Connector sends failed records to this queue.
pub fn feeds(conn: &Connector, dlq: &DeadLetterQueue) -> bool {
    !routes_into(conn, dlq).is_empty()
}

/// Connectors in the list that send failed records to this queue, and their routes here.
pub fn referencing_connectors(
    dlq: &DeadLetterQueue,
    connectors: &[Connector],
) -> (Vec<String>, Vec<RouteStatus>) {
    let mut routes: Vec<RouteStatus> = connectors
        .iter()
        .flat_map(|c| routes_into(c, dlq))
        .collect();
    routes.sort_by(|a, b| (&a.connector, &a.field).cmp(&(&b.connector, &b.field)));
    let mut names: Vec<String> = routes.iter().map(|r| r.connector.clone()).collect();
    names.dedup();
    (names, routes)
}

#[tracing::instrument(skip_all, fields(dlq = %dlq.name_any(), namespace = dlq.namespace().unwrap_or_default()))]
async fn reconcile(dlq: Arc<DeadLetterQueue>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_dead_letter_queue(&dlq, &ctx).await;
    ctx.metrics
        .observe(CONTROLLER, result.is_ok(), started.elapsed());
    result
}

async fn reconcile_dead_letter_queue(dlq: &DeadLetterQueue, ctx: &Context) -> Result<Action> {
    let ns = dlq
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(dlq.name_any()))?;
    let old = dlq.status.clone().unwrap_or_default();
    // Dereference.
    let secrets = Secrets::read(&ctx.client, &ns, kafka_secret_names(&dlq.spec.kafka)).await?;
    let connectors = Api::<Connector>::namespaced(ctx.client.clone(), &ns)
        .list(&Default::default())
        .await?
        .items;
    // Validate.
    let kafka = secrets
        .kafka_credentials(&dlq.spec.kafka, "spec.kafka")
        .map(|creds| Clients::new(&TaskKafka::from(&dlq.spec.kafka), &creds));
    // The topic, then what is in it and the replays.
    let admin = kafka
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|clients| topic::admin(dlq, &clients.producer));
    let feeding_max = match &admin {
        Ok(admin) => topic::feeding_max_message_bytes(dlq, &connectors, admin)
            .await
            .unwrap_or_else(|e| {
                warn!(dlq = %dlq.name_any(), error = %e, "reading the feeding topics' max.message.bytes failed");
                None
            }),
        Err(_) => None,
    };
    let wanted = topic::wanted_topic(dlq, feeding_max);
    let topic = match &admin {
        Ok(admin) => topic::ensure(dlq, admin, &wanted).await,
        Err(problem) => Err(problem.clone()),
    };
    let ready = topic::ready_condition(dlq, &wanted, topic.as_ref());
    announce_ready(ctx, dlq, &old, &ready).await;
    let mut next = Progress {
        inspection: old.inspection.clone(),
        replays: old.replays.clone(),
        ..Default::default()
    };
    if let (Ok(t), Ok(config)) = (&topic, &kafka) {
        let refresh = inspect_topic(dlq, t, config, old.inspection.clone()).await;
        next.backlog = refresh.backlog;
        next.inspection = refresh.inspection.or(next.inspection);
        (next.replays, next.replay_running) =
            replays::reconcile_replays(ctx, dlq, &t.name, config, refresh.watermarks.as_deref())
                .await?;
    }
    // Status.
    if let Some(i) = &next.inspection {
        ctx.metrics
            .observe_dead_letter_queue(&ns, &dlq.name_any(), i.depth);
    }
    let (connectors, routes) = referencing_connectors(dlq, &connectors);
    let requeue = next.requeue(&ready, ctx.config.dead_letter_refresh);
    let status = DeadLetterQueueStatus {
        replays: next.replays,
        inspection: next.inspection,
        observed_generation: dlq.metadata.generation,
        conditions: conditions::merge(
            &old.conditions,
            std::slice::from_ref(&ready),
            dlq.metadata.generation,
            Timestamp::now(),
        ),
        topic: topic.ok().or(old.topic),
        connectors,
        routes,
    };
    if dlq.status.as_ref() != Some(&status) {
        let api: Api<DeadLetterQueue> = Api::namespaced(ctx.client.clone(), &ns);
        apply::apply_status(&api, &dlq.name_any(), &status, None).await?;
    }
    Ok(Action::requeue(requeue))
}

/// An Event when the Ready condition's reason changes.
async fn announce_ready(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    old: &DeadLetterQueueStatus,
    ready: &conditions::Desired,
) {
    let before = old.conditions.iter().find(|c| c.type_ == READY);
    if before.is_none_or(|c| c.reason != ready.reason) {
        let type_ = if ready.status {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.events
            .about(dlq, type_, &ready.reason, &ready.message)
            .await;
    }
}

/// What inspection and replays made of this reconcile.
#[derive(Default)]
struct Progress {
    inspection: Option<Inspection>,
    replays: Vec<crate::crd::dead_letter_queue::ReplayStatus>,
    /// Records are left to inspect.
    backlog: bool,
    replay_running: bool,
}

impl Progress {
    /// How soon to look again: at once while records are left to inspect, soon while a replay runs.
    fn requeue(&self, ready: &conditions::Desired, refresh: Duration) -> Duration {
        if self.backlog {
            BACKLOG_REFRESH
        } else if self.replay_running {
            refresh.min(REPLAY_PROGRESS_REFRESH)
        } else if ready.status {
            refresh
        } else {
            RETRY_PROBLEM
        }
    }
}

/// One inspection refresh: the new inspection (`None` when reading failed — logged; the last one stays),
/// the watermarks seen, and whether records are left to read.
#[derive(Default)]
struct Refresh {
    inspection: Option<Inspection>,
    watermarks: Option<Vec<(i32, i64, i64)>>,
    backlog: bool,
}

async fn inspect_topic(
    dlq: &DeadLetterQueue,
    topic: &TopicStatus,
    kafka: &Clients,
    old: Option<Inspection>,
) -> Refresh {
    let (config, name) = (kafka.consumer.clone(), topic.name.clone());
    let cursor = old
        .as_ref()
        .map(|i| i.scanned_offsets.clone())
        .unwrap_or_default();
    let scanned = tokio::task::spawn_blocking(move || {
        inspect::scan(&config, &name, &cursor, inspect::MAX_RECORDS_PER_REFRESH)
    })
    .await;
    match scanned {
        Ok(Ok(scan)) => Refresh {
            backlog: scan.records.len() >= inspect::MAX_RECORDS_PER_REFRESH,
            watermarks: Some(scan.watermarks.clone()),
            inspection: Some(inspect::apply_scan(&old.unwrap_or_default(), &scan)),
        },
        Ok(Err(err)) => {
            warn!(dlq = %dlq.name_any(), error = %err, "inspecting the topic failed");
            Refresh::default()
        }
        Err(err) => {
            warn!(dlq = %dlq.name_any(), error = %err, "inspection task failed");
            Refresh::default()
        }
    }
}

fn error_policy(dlq: Arc<DeadLetterQueue>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(dlq = %dlq.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(RETRY_AFTER_ERROR)
}

/// Runs the DeadLetterQueue controller until shutdown. A Connector change re-reconciles the queue it
/// references, so `status.connectors` follows.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (dlqs, connectors, pods) = match &ctx.config.namespace {
        Some(ns) => (
            Api::<DeadLetterQueue>::namespaced(client.clone(), ns),
            Api::<Connector>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    Controller::new(dlqs, watcher::Config::default())
        .owns(
            pods,
            watcher::Config::default().labels(names::LABEL_DEAD_LETTER_QUEUE),
        )
        .watches(connectors, watcher::Config::default(), |conn: Connector| {
            let ns = conn.namespace().unwrap_or_default();
            referenced_dead_letter_queues(&conn)
                .into_iter()
                .map(move |name| ObjectRef::<DeadLetterQueue>::new(&name).within(&ns))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::topic::tests::{ORDERS, dlq};
    use super::*;

    #[test]
    fn referencing_connectors_are_listed_by_name() {
        let conn = |name: &str, dlq: Option<&str>| -> Connector {
            let mut c: Connector = serde_json::from_value(serde_json::json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector", "metadata": { "name": name },
                "spec": { "type": "mongodb-sink", "kafka": { "bootstrapServers": "k:9092" },
                          "mongodb": { "connectionUriSecretRef": { "name": "m", "key": "uri" } },
                          "sink": { "topics": ["t"] } }
            }))
            .unwrap();
            c.spec.errors.dead_letter_queue_ref =
                dlq.map(|n| crate::crd::LocalObjectRef { name: n.into() });
            c
        };
        let all = [
            conn("b", Some("orders-dlq")),
            conn("a", Some("orders-dlq")),
            conn("c", Some("other")),
            conn("d", None),
        ];
        assert_eq!(referencing_connectors(&dlq(ORDERS), &all).0, ["a", "b"]);
    }

    #[test]
    fn routes_by_reference_or_by_topic_name_are_shown() {
        let conn: Connector = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector", "metadata": { "name": "shop" },
            "spec": { "type": "mongodb-sink", "kafka": { "bootstrapServers": "k:9092" },
                      "mongodb": { "connectionUriSecretRef": { "name": "m", "key": "uri" } },
                      "sink": { "topics": ["orders", "payments"] },
                      "errors": { "tolerance": "all", "deadLetterQueueTopic": "all-failures",
                                  "deadLetterRoutes": [
                        { "stages": ["VALUE_CONVERTER"], "deadLetterQueueTopic": "{topic}.DLT" },
                        { "errorClasses": ["11000"], "topics": ["payments"], "deadLetterQueueRef": { "name": "writes" } },
                        { "topics": ["refunds"], "deadLetterQueueTopic": "{topic}.DLT" } ] } }
        }))
        .unwrap();
        let queue = |name: &str, topic: &str, servers: &str| -> DeadLetterQueue {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue", "metadata": { "name": name },
                "spec": { "topicName": topic, "kafka": { "bootstrapServers": servers } }
            }))
            .unwrap()
        };
        let fields = |d: &DeadLetterQueue| -> Vec<String> {
            routes_into(&conn, d).into_iter().map(|r| r.field).collect()
        };
        let orders_dlt = queue("orders-dlt", "orders.DLT", "k:9092");
        assert_eq!(fields(&orders_dlt), ["spec.errors.deadLetterRoutes[0]"]);
        let route = &routes_into(&conn, &orders_dlt)[0];
        assert_eq!(
            route.stages,
            [crate::crd::connector::ErrorStage::ValueConverter]
        );
        // `refunds` is not one of the sink's topics; another Kafka's `orders.DLT` is another topic.
        assert!(fields(&queue("refunds-dlt", "refunds.DLT", "k:9092")).is_empty());
        assert!(fields(&queue("orders-dlt", "orders.DLT", "other:9092")).is_empty());
        // By reference, whatever the topic is called.
        assert_eq!(
            fields(&queue("writes", "w", "other:9092")),
            ["spec.errors.deadLetterRoutes[1]"]
        );
        assert_eq!(
            fields(&queue("everything", "all-failures", "k:9092")),
            ["spec.errors"]
        );
        assert_eq!(
            original_topic("{topic}.DLT", "orders.DLT").as_deref(),
            Some("orders")
        );
        assert_eq!(original_topic("dlq-{topic}", "orders.DLT"), None);
        assert_eq!(original_topic("{topic}.DLT", ".DLT"), None);
    }
}
