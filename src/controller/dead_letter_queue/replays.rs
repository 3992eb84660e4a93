//! Replays of a DeadLetterQueue, the operator's side: which replay runs (one at a time, in `spec.replays`
//! order), its pod, and its progress.
//!
//! A replay is recorded as `Running` in status, with the end offsets it reads up to, before its pod is
//! created; from then on status is the record that it started, so an operator restart or a deleted pod
//! continues it (a new pod picks up the committed progress) and never starts it over. A finished replay
//! (`Succeeded`/`Failed`) is never run again. Progress is read from the replay's consumer group: the
//! committed offsets and, in their metadata, the counts the pod committed with them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use rdkafka::consumer::Consumer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::warn;

use crate::controller::events::{EventType, reason};
use crate::controller::pod_status::{self, PodPhase};
use crate::controller::pod_template::{self, PodDefaults, PodParts};
use crate::controller::{Context, Error, Result, apply};
use crate::crd::DeadLetterQueue;
use crate::crd::dead_letter_queue::{Replay, ReplayCounts, ReplayStatus, replay_phase};
use crate::kafka::{Clients, read};
use crate::names;
use crate::wire::replay_config::decode_counts;
use crate::wire::{ReplayConfig, TaskKafka, TerminationReason};

/// How often a failed replay pod is replaced before the replay is `Failed`.
pub const MAX_RESTARTS: i32 = 5;
/// How long reading a replay's committed progress may take.
const PROGRESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn pod_name(dlq: &DeadLetterQueue, id: &str) -> String {
    names::replay_pod(&dlq.name_any(), id)
}

/// A replay pod as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedReplayPod {
    pub id: String,
    pub name: String,
    pub phase: PodPhase,
    pub deleting: bool,
    /// The termination reason and message, or the kubelet's reason and the exit code.
    pub termination: Option<(TerminationReason, String)>,
    /// The final counts from the termination message.
    pub counts: Option<ReplayCounts>,
}

impl ObservedReplayPod {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let id = pod.labels().get(names::LABEL_REPLAY)?.clone();
        let ended = pod_status::ended(pod);
        let counts = ended.as_ref().and_then(|e| e.termination.as_ref()?.replay);
        Some(Self {
            id,
            name: pod.name_any(),
            phase: PodPhase::of(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            termination: ended.map(|e| (e.reason, e.message)),
            counts,
        })
    }
}

/// An Event the plan asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What to do about the replays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayPlan {
    /// `status.replays` to be (a replay to start is `Pending` here until the caller starts it).
    pub statuses: Vec<ReplayStatus>,
    /// The replay to start now: the caller captures its end offsets, records it as `Running` and creates
    /// its pod.
    pub start: Option<String>,
    /// A running replay whose pod is missing.
    pub create_pod: Option<String>,
    pub delete_pods: Vec<String>,
    pub events: Vec<ReplayEvent>,
}

fn summary(c: &ReplayCounts, dry_run: bool) -> String {
    let skipped = c.skipped_max_replay_count + c.skipped_no_target;
    if dry_run {
        format!(
            "dry run: {} records matched, {} would be replayed, {skipped} would be skipped ({} at maxReplayCount, {} without a target)",
            c.matched,
            c.matched - skipped,
            c.skipped_max_replay_count,
            c.skipped_no_target
        )
    } else {
        format!(
            "{} records matched, {} replayed, {skipped} skipped ({} at maxReplayCount, {} without a target)",
            c.matched, c.replayed, c.skipped_max_replay_count, c.skipped_no_target
        )
    }
}

/// Decides what the replays need from the spec, their last status and their pods (pure).
pub fn plan_replays(
    spec: &[Replay],
    old: &[ReplayStatus],
    pods: &[ObservedReplayPod],
    now: Timestamp,
) -> ReplayPlan {
    let mut plan = ReplayPlan::default();
    let mut running: Option<String> = None;
    let mut waiting = vec![];
    for replay in spec {
        let pod = pods.iter().find(|p| p.id == replay.id);
        let prev = old.iter().find(|s| s.id == replay.id).cloned();
        let Some(mut st) = prev.filter(|s| s.phase != replay_phase::PENDING) else {
            waiting.push(plan.statuses.len());
            plan.statuses.push(ReplayStatus {
                id: replay.id.clone(),
                phase: replay_phase::PENDING.into(),
                dry_run: replay.dry_run,
                ..Default::default()
            });
            continue;
        };
        if st.phase != replay_phase::RUNNING {
            // Finished: never again. Its pod, if one is left, goes.
            if let Some(p) = pod.filter(|p| !p.deleting) {
                plan.delete_pods.push(p.name.clone());
            }
            plan.statuses.push(st);
            continue;
        }
        running = Some(replay.id.clone());
        match pod {
            None => plan.create_pod = Some(replay.id.clone()),
            Some(p) if p.deleting => {}
            Some(p) if p.phase == PodPhase::Succeeded => {
                let counts = p.counts.unwrap_or(st.counts);
                st.phase = replay_phase::SUCCEEDED.into();
                st.counts = counts;
                st.remaining = 0;
                st.completion_time = Some(now.to_string());
                st.pod = None;
                st.message = Some(summary(&counts, st.dry_run));
                plan.delete_pods.push(p.name.clone());
                plan.events.push(ReplayEvent {
                    warning: false,
                    reason: reason::REPLAY_COMPLETED,
                    note: format!("replay {}: {}", st.id, summary(&counts, st.dry_run)),
                });
                running = None;
            }
            Some(p) if p.phase == PodPhase::Failed => {
                let (reason, message) = p.termination.clone().unwrap_or_else(|| {
                    (
                        TerminationReason::Other("Error".into()),
                        "no termination message".into(),
                    )
                });
                if let Some(c) = p.counts {
                    st.counts = c;
                }
                plan.delete_pods.push(p.name.clone());
                if reason == TerminationReason::ConfigInvalid || st.restarts >= MAX_RESTARTS {
                    st.phase = replay_phase::FAILED.into();
                    st.completion_time = Some(now.to_string());
                    st.pod = None;
                    st.message = Some(format!("{reason}: {message}"));
                    plan.events.push(ReplayEvent {
                        warning: true,
                        reason: reason::REPLAY_FAILED,
                        note: format!(
                            "replay {} failed after {} restarts: {reason}: {message}",
                            st.id, st.restarts
                        ),
                    });
                    running = None;
                } else {
                    st.restarts += 1;
                    st.message = Some(format!(
                        "pod {} ended ({reason}: {message}); restart {} of {MAX_RESTARTS} continues from the committed progress",
                        p.name, st.restarts
                    ));
                    plan.events.push(ReplayEvent {
                        warning: true,
                        reason: reason::REPLAY_RESTARTED,
                        note: format!(
                            "replay {}: {}",
                            st.id,
                            st.message.clone().unwrap_or_default()
                        ),
                    });
                }
            }
            Some(_) => {}
        }
        plan.statuses.push(st);
    }
    // Pods of replays no longer in the spec are stopped (the replay is cancelled).
    for p in pods {
        if !p.deleting && !spec.iter().any(|r| r.id == p.id) {
            plan.delete_pods.push(p.name.clone());
        }
    }
    let mut queue = waiting.into_iter();
    if running.is_none()
        && let Some(first) = queue.next()
    {
        plan.start = Some(plan.statuses[first].id.clone());
        running = plan.start.clone();
    }
    for i in queue {
        plan.statuses[i].message = running
            .as_ref()
            .map(|r| format!("waits for replay {r} to finish"));
    }
    plan
}

/// The pod's config: the replay as specified, with the end offsets recorded when it started.
pub fn replay_config(
    dlq: &DeadLetterQueue,
    topic: &str,
    replay: &Replay,
    status: &ReplayStatus,
) -> ReplayConfig {
    ReplayConfig {
        namespace: dlq.namespace().unwrap_or_default(),
        dead_letter_queue: dlq.name_any(),
        topic: topic.to_string(),
        kafka: TaskKafka::from(&dlq.spec.kafka),
        replay: replay.clone(),
        end_offsets: status
            .end_offsets
            .iter()
            .filter_map(|(p, end)| Some((p.parse().ok()?, *end)))
            .collect(),
    }
}

/// The replay pod, owned by the DeadLetterQueue.
pub fn build_pod(dlq: &DeadLetterQueue, cfg: &ReplayConfig, defaults: &PodDefaults) -> Result<Pod> {
    let owner = dlq
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NotNamespaced(dlq.name_any()))?;
    let config = serde_json::to_string(cfg).map_err(|source| Error::Serialize {
        what: "replay config",
        source,
    })?;
    let mut env = vec![pod_template::plain_env("SLUICE_REPLAY_CONFIG", &config)];
    env.extend(pod_template::kafka_env(&dlq.spec.kafka));
    let (volumes, mounts) = pod_template::kafka_tls_volumes(&dlq.spec.kafka);
    let parts = PodParts {
        name: pod_name(dlq, &cfg.replay.id),
        namespace: dlq.namespace().unwrap_or_default(),
        labels: names::replay_labels(&dlq.name_any(), &cfg.replay.id),
        owner: Some(owner),
        container: "replay".into(),
        image: defaults.image.clone(),
        args: vec!["replay".into()],
        env,
        volumes,
        mounts,
        ..Default::default()
    };
    Ok(pod_template::restricted_pod(parts, defaults))
}

/// Counts and records left of a running replay, from its committed progress (blocking: run it on a
/// blocking thread). `starts` are the partitions' start offsets now.
pub fn read_progress(
    kafka: &ClientConfig,
    topic: &str,
    dlq: &DeadLetterQueue,
    status: &ReplayStatus,
    starts: &BTreeMap<i32, i64>,
) -> Result<(ReplayCounts, i64), rdkafka::error::KafkaError> {
    let group = names::replay_group(
        &dlq.namespace().unwrap_or_default(),
        &dlq.name_any(),
        &status.id,
    );
    let consumer = read::reader(kafka, &group, names::OPERATOR_CLIENT_ID)?;
    let mut tpl = TopicPartitionList::new();
    let ends: BTreeMap<i32, i64> = status
        .end_offsets
        .iter()
        .filter_map(|(p, e)| Some((p.parse().ok()?, *e)))
        .collect();
    for p in ends.keys() {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, PROGRESS_TIMEOUT)?;
    let mut counts = ReplayCounts::default();
    let mut remaining = 0;
    for (p, end) in ends {
        let elem = committed.find_partition(topic, p);
        let next = elem.as_ref().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        if let Some(e) = &elem {
            counts += decode_counts(e.metadata());
        }
        let start = starts.get(&p).copied().unwrap_or(0);
        remaining += (end - next.unwrap_or(start).max(start)).max(0);
    }
    Ok((counts, remaining))
}

/// Runs `spec.replays`: applies the plan — events, pod deletions, the start of the next replay (recorded in
/// status before its pod exists), a missing pod — and reads the running replay's progress. Returns
/// `status.replays` and whether a replay is running.
pub async fn reconcile_replays(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    topic: &str,
    kafka: &Clients,
    watermarks: Option<&[(i32, i64, i64)]>,
) -> Result<(Vec<ReplayStatus>, bool)> {
    let ns = dlq.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={}", names::LABEL_DEAD_LETTER_QUEUE, dlq.name_any());
    let observed: Vec<_> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(ObservedReplayPod::from_pod)
        .collect();
    let now = Timestamp::now();
    let mut plan = plan_replays(&dlq.spec.replays, &replays_of(dlq), &observed, now);
    for e in &plan.events {
        let type_ = if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.events.about(dlq, type_, e.reason, &e.note).await;
    }
    for name in &plan.delete_pods {
        apply::delete(&pods, name).await?;
    }
    if let (Some(id), Some(watermarks)) = (plan.start.clone(), watermarks) {
        start_replay(ctx, dlq, kafka, &mut plan, &id, watermarks, now).await?;
    }
    if let Some(id) = &plan.create_pod {
        let spec = dlq.spec.replays.iter().find(|r| &r.id == id);
        let st = plan.statuses.iter_mut().find(|s| &s.id == id);
        if let (Some(spec), Some(st)) = (spec, st) {
            let cfg = replay_config(dlq, topic, spec, st);
            let pod = build_pod(dlq, &cfg, &ctx.config.pods)?;
            apply::create(&pods, &pod).await?;
            st.pod = Some(pod.name_any());
        }
    }
    let running = refresh_progress(dlq, topic, kafka, &mut plan.statuses, watermarks).await;
    Ok((plan.statuses, running))
}

fn replays_of(dlq: &DeadLetterQueue) -> Vec<ReplayStatus> {
    dlq.status.clone().unwrap_or_default().replays
}

/// Starts replay `id`, unless its target topic is missing (then it waits, with a Warning Event once): its
/// end offsets are the topic's end offsets now, and status is written before its pod is created.
async fn start_replay(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    kafka: &Clients,
    plan: &mut ReplayPlan,
    id: &str,
    watermarks: &[(i32, i64, i64)],
    now: Timestamp,
) -> Result<()> {
    let spec = dlq
        .spec
        .replays
        .iter()
        .find(|r| r.id == id)
        .cloned()
        .unwrap_or_default();
    let missing_target = match &spec.target_topic {
        Some(t) => {
            let admin = crate::kafka::admin::admin(&kafka.producer, names::OPERATOR_CLIENT_ID)?;
            crate::kafka::topics::metadata(&admin, t)
                .await?
                .is_none()
                .then(|| t.clone())
        }
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
        let before = replays_of(dlq);
        if before
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.message.as_ref())
            != Some(&message)
        {
            let note = format!("replay {id}: {message}");
            ctx.events
                .about(
                    dlq,
                    EventType::Warning,
                    reason::REPLAY_TARGET_MISSING,
                    &note,
                )
                .await;
        }
        st.message = Some(message);
        return Ok(());
    }
    st.phase = replay_phase::RUNNING.into();
    st.start_time = Some(now.to_string());
    st.end_offsets = watermarks
        .iter()
        .map(|&(p, _, high)| (p.to_string(), high))
        .collect();
    st.remaining = watermarks.iter().map(|&(_, low, high)| high - low).sum();
    st.pod = Some(pod_name(dlq, id));
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
    ctx.events
        .about(dlq, EventType::Normal, reason::REPLAY_STARTED, &note)
        .await;
    plan.create_pod = Some(id.to_string());
    Ok(())
}

/// Reads the committed progress of every running replay into its status (a failure keeps the last one and
/// is logged); returns whether one is running.
async fn refresh_progress(
    dlq: &DeadLetterQueue,
    topic: &str,
    kafka: &Clients,
    statuses: &mut [ReplayStatus],
    watermarks: Option<&[(i32, i64, i64)]>,
) -> bool {
    let starts: BTreeMap<i32, i64> = watermarks
        .unwrap_or_default()
        .iter()
        .map(|&(p, low, _)| (p, low))
        .collect();
    let mut running = false;
    for st in statuses
        .iter_mut()
        .filter(|s| s.phase == replay_phase::RUNNING)
    {
        running = true;
        let (kafka, topic, dlq, status, starts) = (
            kafka.clone(),
            topic.to_string(),
            dlq.clone(),
            st.clone(),
            starts.clone(),
        );
        let progress = tokio::task::spawn_blocking(move || {
            read_progress(&kafka.consumer, &topic, &dlq, &status, &starts)
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
    running
}

/// Writes `status.replays` only if the DeadLetterQueue is still at the resourceVersion this reconcile read.
async fn write_replays_guarded(
    ctx: &Context,
    dlq: &DeadLetterQueue,
    replays: &[ReplayStatus],
) -> Result<()> {
    let api: Api<DeadLetterQueue> =
        Api::namespaced(ctx.client.clone(), &dlq.namespace().unwrap_or_default());
    apply::apply_status(
        &api,
        &dlq.name_any(),
        &serde_json::json!({ "replays": replays }),
        dlq.resource_version(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(id: &str) -> Replay {
        Replay {
            id: id.into(),
            max_replay_count: 3,
            ..Default::default()
        }
    }

    fn status(id: &str, phase: &str) -> ReplayStatus {
        ReplayStatus {
            id: id.into(),
            phase: phase.into(),
            end_offsets: BTreeMap::from([("0".into(), 10)]),
            ..Default::default()
        }
    }

    fn pod(id: &str, phase: PodPhase) -> ObservedReplayPod {
        ObservedReplayPod {
            id: id.into(),
            name: format!("dlq-replay-{id}"),
            phase,
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn replays_run_one_at_a_time_in_spec_order() {
        let spec = [replay("a"), replay("b"), replay("c")];
        let plan = plan_replays(&spec, &[], &[], now());
        assert_eq!(plan.start.as_deref(), Some("a"));
        assert_eq!(plan.statuses[1].phase, replay_phase::PENDING);
        assert_eq!(
            plan.statuses[2].message.as_deref(),
            Some("waits for replay a to finish")
        );
        // a runs: nothing else starts; b and c wait.
        let old = [status("a", replay_phase::RUNNING)];
        let plan = plan_replays(&spec, &old, &[pod("a", PodPhase::Running)], now());
        assert_eq!((plan.start, plan.create_pod), (None, None));
        // a finished: b starts, a is never run again.
        let old = [status("a", replay_phase::SUCCEEDED)];
        let plan = plan_replays(&spec, &old, &[], now());
        assert_eq!(plan.start.as_deref(), Some("b"));
        assert_eq!(plan.statuses[0].phase, replay_phase::SUCCEEDED);
    }

    #[test]
    fn a_running_replay_without_its_pod_gets_one_again_and_is_not_restarted_from_scratch() {
        let spec = [replay("a")];
        let old = [status("a", replay_phase::RUNNING)];
        let plan = plan_replays(&spec, &old, &[], now());
        assert_eq!(plan.create_pod.as_deref(), Some("a"));
        assert_eq!(plan.start, None);
        assert_eq!(plan.statuses[0].end_offsets["0"], 10, "same end offsets");
    }

    #[test]
    fn a_finished_pod_completes_the_replay_with_its_counts() {
        let spec = [replay("a"), replay("b")];
        let old = [status("a", replay_phase::RUNNING)];
        let mut done = pod("a", PodPhase::Succeeded);
        done.counts = Some(ReplayCounts {
            matched: 4,
            replayed: 3,
            skipped_max_replay_count: 1,
            skipped_no_target: 0,
        });
        let plan = plan_replays(&spec, &old, &[done], now());
        let a = &plan.statuses[0];
        assert_eq!(a.phase, replay_phase::SUCCEEDED);
        assert_eq!((a.counts.replayed, a.remaining), (3, 0));
        assert_eq!(plan.delete_pods, ["dlq-replay-a"]);
        assert_eq!(plan.events[0].reason, "ReplayCompleted");
        assert!(
            plan.events[0]
                .note
                .contains("4 records matched, 3 replayed, 1 skipped"),
            "{:?}",
            plan.events
        );
        assert_eq!(plan.start.as_deref(), Some("b"), "the next one starts");
    }

    #[test]
    fn a_failed_pod_is_replaced_until_the_limit_then_the_replay_fails() {
        let spec = [replay("a")];
        let mut failed = pod("a", PodPhase::Failed);
        failed.termination = Some((TerminationReason::ReplayKafkaError, "broker down".into()));
        let old = [status("a", replay_phase::RUNNING)];
        let plan = plan_replays(&spec, &old, std::slice::from_ref(&failed), now());
        assert_eq!(plan.statuses[0].phase, replay_phase::RUNNING);
        assert_eq!(plan.statuses[0].restarts, 1);
        assert_eq!(plan.delete_pods, ["dlq-replay-a"]);
        assert_eq!(plan.events[0].reason, "ReplayRestarted");

        let mut last = status("a", replay_phase::RUNNING);
        last.restarts = MAX_RESTARTS;
        let plan = plan_replays(&spec, &[last], &[failed.clone()], now());
        assert_eq!(plan.statuses[0].phase, replay_phase::FAILED);
        assert_eq!(plan.events[0].reason, "ReplayFailed");

        failed.termination = Some((TerminationReason::ConfigInvalid, "bad".into()));
        let plan = plan_replays(&spec, &old, &[failed], now());
        assert_eq!(
            plan.statuses[0].phase,
            replay_phase::FAILED,
            "a config error is not retried"
        );
    }

    #[test]
    fn a_replay_removed_from_the_spec_is_cancelled() {
        let old = [status("a", replay_phase::RUNNING)];
        let plan = plan_replays(&[], &old, &[pod("a", PodPhase::Running)], now());
        assert!(plan.statuses.is_empty());
        assert_eq!(plan.delete_pods, ["dlq-replay-a"]);
    }

    #[test]
    fn the_pod_carries_no_secret_and_runs_restricted() {
        let dlq: DeadLetterQueue = serde_yaml::from_str(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: DeadLetterQueue
metadata: {name: orders-dlq, namespace: shop, uid: "1"}
spec:
  kafka:
    bootstrapServers: "kafka:9092"
    sasl: {mechanism: SCRAM-SHA-512, secretRef: {name: kafka-user}}
"#,
        )
        .unwrap();
        let st = status("fix-1", replay_phase::RUNNING);
        let cfg = replay_config(&dlq, "orders-dlq", &replay("fix-1"), &st);
        assert_eq!(cfg.end_offsets, BTreeMap::from([(0, 10)]));
        let defaults = PodDefaults {
            image: "sluice:dev".into(),
            service_account: Some("sluice-task".into()),
        };
        let pod = build_pod(&dlq, &cfg, &defaults).unwrap();
        let json = serde_json::to_value(&pod).unwrap();
        assert_eq!(json["metadata"]["name"], "orders-dlq-replay-fix-1");
        assert_eq!(
            json["metadata"]["ownerReferences"][0]["kind"],
            "DeadLetterQueue"
        );
        let c = &json["spec"]["containers"][0];
        assert_eq!(c["args"], serde_json::json!(["replay"]));
        assert_eq!(json["spec"]["serviceAccountName"], "sluice-task");
        assert_eq!(json["spec"]["automountServiceAccountToken"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        let env = c["env"].as_array().unwrap();
        let password = env
            .iter()
            .find(|e| e["name"] == "SLUICE_KAFKA_SASL_PASSWORD")
            .unwrap();
        assert_eq!(password["valueFrom"]["secretKeyRef"]["name"], "kafka-user");
        let config = env
            .iter()
            .find(|e| e["name"] == "SLUICE_REPLAY_CONFIG")
            .unwrap();
        let parsed: ReplayConfig = serde_json::from_str(config["value"].as_str().unwrap()).unwrap();
        assert_eq!(parsed, cfg);
    }
}
