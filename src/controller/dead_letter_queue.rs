//! The DeadLetterQueue reconciler: creates the Kafka topic or brings its partitions (only up) and configs to
//! the spec through the Kafka admin client, and reports what the broker has. Deleting the resource keeps
//! the topic: dead-letter records are never dropped by the operator. It also inspects the topic
//! ([`dlq_inspect`]) and runs the replays of `spec.replays` ([`replay`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::events::EventType;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use rdkafka::admin::{
    AdminClient, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use tracing::warn;

use super::conditions::{self, Desired, READY};
use super::{
    Context, Error, FIELD_MANAGER, Problem, RETRY_AFTER_ERROR, Result, dlq_inspect, kafka, replay,
};
use crate::crd::dead_letter_queue::{ReplayStatus, TopicStatus, replay_phase};
use crate::crd::{Connector, DeadLetterQueue, DeadLetterQueueStatus};

const CONTROLLER: &str = "deadletterqueue";
const RETRY_PROBLEM: Duration = Duration::from_secs(15);
/// How often a running replay's progress is read into status at most.
const REPLAY_PROGRESS_REFRESH: Duration = Duration::from_secs(10);

/// The topic's name: the spec's, else the resource's.
pub fn topic_name(dlq: &DeadLetterQueue) -> String {
    dlq.spec
        .topic_name
        .clone()
        .unwrap_or_else(|| dlq.name_any())
}

/// The topic configs the spec asks for.
pub fn desired_configs(dlq: &DeadLetterQueue) -> BTreeMap<String, String> {
    let mut configs = dlq.spec.config.clone().unwrap_or_default();
    if let Some(ms) = dlq.spec.retention_ms {
        configs.insert("retention.ms".into(), ms.to_string());
    }
    configs
}

/// The configs whose broker value differs from the spec.
pub fn config_drift(
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> Vec<String> {
    desired
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k}={v} (broker: {})",
                actual.get(k).map_or("default", String::as_str)
            )
        })
        .collect()
}

/// Connectors in the list that send failed records to this queue.
pub fn referencing_connectors(dlq: &DeadLetterQueue, connectors: &[Connector]) -> Vec<String> {
    let mut names: Vec<String> = connectors
        .iter()
        .filter(|c| {
            c.spec
                .errors
                .dead_letter_queue_ref
                .as_ref()
                .is_some_and(|r| r.name == dlq.name_any())
        })
        .map(|c| c.name_any())
        .collect();
    names.sort();
    names
}

async fn describe(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<TopicStatus>> {
    let Some((partitions, replicas)) = kafka::topic_metadata(admin, topic).await? else {
        return Ok(None);
    };
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &kafka::admin_options())
        .await
        .map_err(|source| Error::Kafka {
            operation: "describe configs",
            source,
        })?;
    let mut config = BTreeMap::new();
    if let Some(Ok(resource)) = described.into_iter().next() {
        for entry in resource.entries {
            if !entry.is_default
                && let Some(value) = entry.value
            {
                config.insert(entry.name, value);
            }
        }
    }
    Ok(Some(TopicStatus {
        name: topic.into(),
        partitions,
        replication_factor: Some(replicas),
        config,
    }))
}

/// Creates or updates the topic; `Ok(Err(problem))` when the broker refuses what the spec asks.
async fn ensure_topic(
    dlq: &DeadLetterQueue,
    admin: &Arc<AdminClient<DefaultClientContext>>,
) -> Result<Result<TopicStatus, Problem>> {
    let topic = topic_name(dlq);
    let desired = desired_configs(dlq);
    let opts = kafka::admin_options();
    let current = describe(admin, &topic).await?;
    let Some(current) = current else {
        let replication = TopicReplication::Fixed(dlq.spec.replication_factor.unwrap_or(-1));
        let mut new = NewTopic::new(&topic, dlq.spec.partitions, replication);
        for (k, v) in &desired {
            new = new.set(k, v);
        }
        let result = admin
            .create_topics([&new], &opts)
            .await
            .map_err(|source| Error::Kafka {
                operation: "create topic",
                source,
            })?;
        if let Some(Err((_, code))) = result.into_iter().next() {
            return Ok(Err(Problem::new(
                "TopicCreateFailed",
                format!("Kafka refused to create topic {topic}: {code}"),
            )));
        }
        return Ok(describe(admin, &topic).await?.ok_or_else(|| {
            Problem::new(
                "TopicPending",
                format!("topic {topic} created; waiting for its metadata"),
            )
        }));
    };
    if current.partitions < dlq.spec.partitions {
        let grow = NewPartitions::new(&topic, dlq.spec.partitions as usize);
        let result = admin
            .create_partitions([&grow], &opts)
            .await
            .map_err(|source| Error::Kafka {
                operation: "create partitions",
                source,
            })?;
        if let Some(Err((_, code))) = result.into_iter().next() {
            return Ok(Err(Problem::new(
                "PartitionsNotGrown",
                format!(
                    "Kafka refused to grow {topic} to {} partitions: {code}",
                    dlq.spec.partitions
                ),
            )));
        }
    }
    if !config_drift(&desired, &current.config).is_empty() {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&topic));
        for (k, v) in &desired {
            alter = alter.set(k, v);
        }
        let result = admin
            .alter_configs([&alter], &opts)
            .await
            .map_err(|source| Error::Kafka {
                operation: "alter configs",
                source,
            })?;
        if let Some(Err((_, code))) = result.into_iter().next() {
            return Ok(Err(Problem::new(
                "TopicConfigRejected",
                format!("Kafka refused the configs of {topic}: {code}"),
            )));
        }
    }
    Ok(describe(admin, &topic)
        .await?
        .ok_or_else(|| Problem::new("TopicMissing", format!("topic {topic} disappeared"))))
}

/// The Ready condition for what the broker reports.
pub fn ready_condition(dlq: &DeadLetterQueue, topic: Result<&TopicStatus, &Problem>) -> Desired {
    match topic {
        Err(p) => Desired::new(READY, false, p.reason, p.message.clone()),
        Ok(t) => {
            let drift = config_drift(&desired_configs(dlq), &t.config);
            if t.partitions < dlq.spec.partitions {
                Desired::new(
                    READY,
                    false,
                    "PartitionsPending",
                    format!(
                        "topic {} has {} of {} partitions",
                        t.name, t.partitions, dlq.spec.partitions
                    ),
                )
            } else if !drift.is_empty() {
                Desired::new(
                    READY,
                    false,
                    "ConfigPending",
                    format!("topic {} configs differ: {}", t.name, drift.join(", ")),
                )
            } else {
                Desired::new(
                    READY,
                    true,
                    "TopicReady",
                    format!(
                        "topic {} has {} partitions and the requested configs",
                        t.name, t.partitions
                    ),
                )
            }
        }
    }
}

#[tracing::instrument(skip_all, fields(dlq = %dlq.name_any(), namespace = dlq.namespace().unwrap_or_default()))]
async fn reconcile(dlq: Arc<DeadLetterQueue>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&dlq, &ctx).await;
    ctx.metrics
        .observe(CONTROLLER, result.is_ok(), started.elapsed());
    result
}

async fn reconcile_inner(dlq: &DeadLetterQueue, ctx: &Context) -> Result<Action> {
    let ns = dlq
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(dlq.name_any()))?;
    let old = dlq.status.clone().unwrap_or_default();
    let mut props = None;
    let topic = match kafka::credentials(&ctx.client, &ns, &dlq.spec.kafka, "spec.kafka").await? {
        Err(p) => Err(p),
        Ok(creds) => {
            let client_props = kafka::client_properties(&dlq.spec.kafka, &creds);
            let admin = kafka::admin(&client_props)?;
            props = Some(client_props);
            match ensure_topic(dlq, &admin).await {
                Ok(r) => r,
                Err(Error::Kafka { operation, source }) => Err(Problem::new(
                    "KafkaUnavailable",
                    format!(
                        "Kafka {} ({operation}): {source}",
                        dlq.spec.kafka.bootstrap_servers
                    ),
                )),
                Err(e) => return Err(e),
            }
        }
    };
    let connectors: Api<Connector> = Api::namespaced(ctx.client.clone(), &ns);
    let all = connectors.list(&Default::default()).await?.items;
    let ready = ready_condition(dlq, topic.as_ref());
    let old_ready = old.conditions.iter().find(|c| c.type_ == READY);
    if old_ready.is_none_or(|c| c.reason != ready.reason) {
        let type_ = if ready.status {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(ctx, dlq, type_, &ready.reason, ready.message.clone()).await;
    }
    // Inspection: only once the topic is there; a failure keeps the last inspection and is logged.
    let mut inspection = old.inspection.clone();
    let mut backlog = false;
    let mut watermarks = None;
    if let (Ok(t), Some(props)) = (&topic, props.clone()) {
        let name = t.name.clone();
        let cursor = old
            .inspection
            .as_ref()
            .map(|i| i.scanned_offsets.clone())
            .unwrap_or_default();
        let scanned = tokio::task::spawn_blocking(move || {
            dlq_inspect::scan(&props, &name, &cursor, dlq_inspect::MAX_RECORDS_PER_REFRESH)
        })
        .await;
        match scanned {
            Ok(Ok(scan)) => {
                backlog = scan.records.len() >= dlq_inspect::MAX_RECORDS_PER_REFRESH;
                watermarks = Some(scan.watermarks.clone());
                inspection = Some(dlq_inspect::apply_scan(
                    &old.inspection.clone().unwrap_or_default(),
                    &scan,
                ));
            }
            Ok(Err(err)) => {
                warn!(dlq = %dlq.name_any(), error = %err, "inspecting the topic failed")
            }
            Err(err) => warn!(dlq = %dlq.name_any(), error = %err, "inspection task failed"),
        }
    }
    let (replays, replay_running) = match (&topic, &props) {
        (Ok(t), Some(props)) => {
            reconcile_replays(ctx, dlq, &t.name, props, watermarks.as_deref()).await?
        }
        _ => (old.replays.clone(), false),
    };
    let status = DeadLetterQueueStatus {
        replays,
        inspection,
        observed_generation: dlq.metadata.generation,
        conditions: conditions::merge(
            &old.conditions,
            std::slice::from_ref(&ready),
            dlq.metadata.generation,
            Timestamp::now(),
        ),
        topic: topic.as_ref().ok().cloned().or(old.topic.clone()),
        connectors: referencing_connectors(dlq, &all),
    };
    if dlq.status.as_ref() != Some(&status) {
        let api: Api<DeadLetterQueue> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({ "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue", "status": status });
        api.patch_status(
            &dlq.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(if backlog {
        Duration::from_millis(100)
    } else if replay_running {
        ctx.config.dead_letter_refresh.min(REPLAY_PROGRESS_REFRESH)
    } else if ready.status {
        ctx.config.dead_letter_refresh
    } else {
        RETRY_PROBLEM
    }))
}

async fn publish(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.events
        .record(&dlq.object_ref(&()), type_, reason, &note)
        .await;
}

/// Runs `spec.replays` (see [`replay`]): applies the plan — events, pod deletions, the start of the next
/// replay (recorded in status before its pod exists), a missing pod — and reads the running replay's
/// progress. Returns `status.replays` and whether a replay is running.
async fn reconcile_replays(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    topic: &str,
    props: &BTreeMap<String, String>,
    watermarks: Option<&[(i32, i64, i64)]>,
) -> Result<(Vec<ReplayStatus>, bool)> {
    let ns = dlq.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={}", replay::LABEL_DEAD_LETTER_QUEUE, dlq.name_any());
    let observed: Vec<_> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(replay::ObservedReplayPod::from_pod)
        .collect();
    let old = dlq.status.clone().unwrap_or_default().replays;
    let now = Timestamp::now();
    let mut plan = replay::plan_replays(&dlq.spec.replays, &old, &observed, now);
    for e in &plan.events {
        let type_ = if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, dlq, type_, e.reason, e.note.clone()).await;
    }
    for name in &plan.delete_pods {
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(id), Some(watermarks)) = (plan.start.clone(), watermarks) {
        let spec = dlq
            .spec
            .replays
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .unwrap_or_default();
        let missing_target = match &spec.target_topic {
            Some(t) => kafka::topic_metadata(&kafka::admin(props)?, t)
                .await?
                .is_none()
                .then(|| t.clone()),
            None => None,
        };
        let st = plan
            .statuses
            .iter_mut()
            .find(|s| s.id == id)
            .expect("planned");
        if let Some(target) = missing_target {
            let message =
                format!("target topic {target} does not exist; the replay starts once it does");
            if old
                .iter()
                .find(|s| s.id == id)
                .and_then(|s| s.message.as_ref())
                != Some(&message)
            {
                publish(
                    ctx,
                    dlq,
                    EventType::Warning,
                    "ReplayTargetMissing",
                    format!("replay {id}: {message}"),
                )
                .await;
            }
            st.message = Some(message);
        } else {
            st.phase = replay_phase::RUNNING.into();
            st.start_time = Some(now.to_string());
            st.end_offsets = watermarks
                .iter()
                .map(|&(p, _, high)| (p.to_string(), high))
                .collect();
            st.remaining = watermarks.iter().map(|&(_, low, high)| high - low).sum();
            st.pod = Some(replay::pod_name(dlq, &id));
            st.message = Some("reading up to the end offsets taken at the start".into());
            let note = format!(
                "replay {id} started{}: {} records up to end offsets {:?}, to {}",
                if spec.dry_run { " (dry run)" } else { "" },
                st.remaining,
                st.end_offsets,
                spec.target_topic
                    .as_deref()
                    .unwrap_or("their original topics"),
            );
            // Status, not the pod, is the record that this replay began: written first, guarded by the
            // resourceVersion this reconcile read, so a stale view can't start it twice.
            write_replays_guarded(ctx, dlq, &plan.statuses).await?;
            publish(ctx, dlq, EventType::Normal, "ReplayStarted", note).await;
            plan.create_pod = Some(id);
        }
    }
    if let Some(id) = &plan.create_pod {
        let spec = dlq.spec.replays.iter().find(|r| &r.id == id);
        let st = plan.statuses.iter_mut().find(|s| &s.id == id);
        if let (Some(spec), Some(st)) = (spec, st) {
            let cfg = replay::replay_config(dlq, topic, spec, st);
            let pod = replay::build_pod(dlq, &cfg, &ctx.config.pods)?;
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            st.pod = Some(pod.name_any());
        }
    }
    let starts: BTreeMap<i32, i64> = watermarks
        .unwrap_or_default()
        .iter()
        .map(|&(p, low, _)| (p, low))
        .collect();
    let mut running = false;
    for st in plan
        .statuses
        .iter_mut()
        .filter(|s| s.phase == replay_phase::RUNNING)
    {
        running = true;
        let (props, topic, dlq, status, starts) = (
            props.clone(),
            topic.to_string(),
            dlq.clone(),
            st.clone(),
            starts.clone(),
        );
        let progress = tokio::task::spawn_blocking(move || {
            replay::read_progress(&props, &topic, &dlq, &status, &starts)
        })
        .await;
        match progress {
            Ok(Ok((counts, remaining))) => {
                st.counts = counts;
                st.remaining = remaining;
            }
            Ok(Err(err)) => warn!(replay = %st.id, error = %err, "reading replay progress failed"),
            Err(err) => warn!(replay = %st.id, error = %err, "replay progress task failed"),
        }
    }
    Ok((plan.statuses, running))
}

/// Writes `status.replays` only if the DeadLetterQueue is still at the resourceVersion this reconcile read.
async fn write_replays_guarded(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    replays: &[ReplayStatus],
) -> Result<()> {
    let api: Api<DeadLetterQueue> =
        Api::namespaced(ctx.client.clone(), &dlq.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue",
        "metadata": { "resourceVersion": dlq.resource_version() },
        "status": { "replays": replays },
    });
    api.patch_status(
        &dlq.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy(dlq: Arc<DeadLetterQueue>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(dlq = %dlq.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(RETRY_AFTER_ERROR)
}

/// Runs the DeadLetterQueue controller until shutdown. A Connector change re-reconciles the queue it
/// references, so `status.connectors` follows.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (dlqs, connectors) = match &ctx.config.namespace {
        Some(ns) => (
            Api::<DeadLetterQueue>::namespaced(client.clone(), ns),
            Api::<Connector>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let pods = match &ctx.config.namespace {
        Some(ns) => Api::<Pod>::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Controller::new(dlqs, watcher::Config::default())
        .owns(
            pods,
            watcher::Config::default().labels(replay::LABEL_DEAD_LETTER_QUEUE),
        )
        .watches(connectors, watcher::Config::default(), |conn: Connector| {
            let ns = conn.namespace();
            conn.spec.errors.dead_letter_queue_ref.clone().map(|r| {
                ObjectRef::<DeadLetterQueue>::new(&r.name).within(ns.as_deref().unwrap_or_default())
            })
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlq(yaml: &str) -> DeadLetterQueue {
        serde_yaml::from_str(yaml).unwrap()
    }

    const ORDERS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: DeadLetterQueue
metadata: {name: orders-dlq, namespace: shop}
spec:
  kafka: {bootstrapServers: "kafka:9092"}
  partitions: 3
  retentionMs: 604800000
  config: {cleanup.policy: delete}
"#;

    #[test]
    fn topic_name_defaults_to_the_resource_name() {
        assert_eq!(topic_name(&dlq(ORDERS)), "orders-dlq");
        let mut named = dlq(ORDERS);
        named.spec.topic_name = Some("dlq.orders".into());
        assert_eq!(topic_name(&named), "dlq.orders");
    }

    #[test]
    fn desired_configs_include_retention() {
        let configs = desired_configs(&dlq(ORDERS));
        assert_eq!(configs["retention.ms"], "604800000");
        assert_eq!(configs["cleanup.policy"], "delete");
    }

    #[test]
    fn ready_needs_partitions_and_configs() {
        let d = dlq(ORDERS);
        let mut topic = TopicStatus {
            name: "orders-dlq".into(),
            partitions: 3,
            replication_factor: Some(1),
            config: desired_configs(&d),
        };
        assert!(ready_condition(&d, Ok(&topic)).status);
        topic.partitions = 1;
        assert_eq!(ready_condition(&d, Ok(&topic)).reason, "PartitionsPending");
        topic.partitions = 3;
        topic.config.remove("retention.ms");
        let c = ready_condition(&d, Ok(&topic));
        assert_eq!(c.reason, "ConfigPending");
        assert!(
            c.message
                .contains("retention.ms=604800000 (broker: default)"),
            "{}",
            c.message
        );
    }

    #[test]
    fn referencing_connectors_are_listed_by_name() {
        let conn = |name: &str, dlq: Option<&str>| -> Connector {
            let mut c: Connector = serde_json::from_value(json!({
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
        assert_eq!(referencing_connectors(&dlq(ORDERS), &all), ["a", "b"]);
    }
}
