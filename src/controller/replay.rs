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
use kube::{Resource, ResourceExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use super::{Error, Result, pods};
use crate::crd::DeadLetterQueue;
use crate::crd::dead_letter_queue::{Replay, ReplayCounts, ReplayStatus, replay_phase};
use crate::replay::{ReplayConfig, decode_counts, replay_group};
use crate::task::config::TaskKafka;

pub const LABEL_DEAD_LETTER_QUEUE: &str = "sluice.dev/dead-letter-queue";
pub const LABEL_REPLAY: &str = "sluice.dev/replay";
/// How often a failed replay pod is replaced before the replay is `Failed`.
pub const MAX_RESTARTS: i32 = 5;

pub fn pod_name(dlq: &DeadLetterQueue, id: &str) -> String {
    format!("{}-replay-{id}", dlq.name_any())
}

/// A replay pod as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedReplayPod {
    pub id: String,
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    /// The termination message's reason and message, or the exit code.
    pub termination: Option<(String, String)>,
    /// The final counts from the termination message.
    pub counts: Option<ReplayCounts>,
}

impl ObservedReplayPod {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let id = pod.labels().get(LABEL_REPLAY)?.clone();
        let status = pod.status.clone().unwrap_or_default();
        let ended = pods::ended(pod);
        let counts = ended
            .as_ref()
            .and_then(|e| serde_json::from_value(e.parsed.clone()?["replay"].clone()).ok());
        Some(Self {
            id,
            name: pod.name_any(),
            phase: status.phase.unwrap_or_else(|| "Pending".into()),
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
            Some(p) if p.phase == "Succeeded" => {
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
                    reason: "ReplayCompleted",
                    note: format!("replay {}: {}", st.id, summary(&counts, st.dry_run)),
                });
                running = None;
            }
            Some(p) if p.phase == "Failed" => {
                let (reason, message) = p
                    .termination
                    .clone()
                    .unwrap_or_else(|| ("Error".into(), "no termination message".into()));
                if let Some(c) = p.counts {
                    st.counts = c;
                }
                plan.delete_pods.push(p.name.clone());
                if reason == "ConfigInvalid" || st.restarts >= MAX_RESTARTS {
                    st.phase = replay_phase::FAILED.into();
                    st.completion_time = Some(now.to_string());
                    st.pod = None;
                    st.message = Some(format!("{reason}: {message}"));
                    plan.events.push(ReplayEvent {
                        warning: true,
                        reason: "ReplayFailed",
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
                        reason: "ReplayRestarted",
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
pub fn build_pod(
    dlq: &DeadLetterQueue,
    cfg: &ReplayConfig,
    defaults: &pods::PodDefaults,
) -> Result<Pod> {
    let owner = dlq
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NotNamespaced(dlq.name_any()))?;
    let config = serde_json::to_string(cfg).map_err(|source| Error::Serialize {
        what: "replay config",
        source,
    })?;
    let mut env = pods::downward_env();
    env.push(json!({ "name": "SLUICE_REPLAY_CONFIG", "value": config }));
    env.extend(pods::kafka_env(&dlq.spec.kafka));
    let (volumes, mounts) = pods::kafka_tls_volumes(&dlq.spec.kafka);
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(dlq, &cfg.replay.id), "namespace": dlq.namespace(),
            "labels": {
                "app.kubernetes.io/name": "sluice-replay",
                "app.kubernetes.io/instance": dlq.name_any(),
                "app.kubernetes.io/managed-by": "sluice",
                LABEL_DEAD_LETTER_QUEUE: dlq.name_any(),
                LABEL_REPLAY: cfg.replay.id,
            },
            "ownerReferences": [owner],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 30,
            "securityContext": pods::pod_security_context(),
            "volumes": volumes,
            "containers": [{
                "name": "replay",
                "image": defaults.image,
                "args": ["replay"],
                "env": env,
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": pods::container_security_context(),
            }],
        },
    });
    if let Some(sa) = &defaults.service_account {
        pod["spec"]["serviceAccountName"] = json!(sa);
    }
    serde_json::from_value(pod).map_err(|source| Error::Serialize {
        what: "Pod",
        source,
    })
}

/// Counts and records left of a running replay, from its committed progress (blocking: run it on a
/// blocking thread). `starts` are the partitions' start offsets now.
pub fn read_progress(
    props: &BTreeMap<String, String>,
    topic: &str,
    dlq: &DeadLetterQueue,
    status: &ReplayStatus,
    starts: &BTreeMap<i32, i64>,
) -> Result<(ReplayCounts, i64), rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    for (k, v) in props {
        config.set(k, v);
    }
    let group = replay_group(
        &dlq.namespace().unwrap_or_default(),
        &dlq.name_any(),
        &status.id,
    );
    let consumer: BaseConsumer = config
        .set("group.id", &group)
        .set("client.id", "sluice-operator")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let ends: BTreeMap<i32, i64> = status
        .end_offsets
        .iter()
        .filter_map(|(p, e)| Some((p.parse().ok()?, *e)))
        .collect();
    for p in ends.keys() {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, std::time::Duration::from_secs(10))?;
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

    fn pod(id: &str, phase: &str) -> ObservedReplayPod {
        ObservedReplayPod {
            id: id.into(),
            name: format!("dlq-replay-{id}"),
            phase: phase.into(),
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
        let plan = plan_replays(&spec, &old, &[pod("a", "Running")], now());
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
        let mut done = pod("a", "Succeeded");
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
        let mut failed = pod("a", "Failed");
        failed.termination = Some(("ReplayKafkaError".into(), "broker down".into()));
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

        failed.termination = Some(("ConfigInvalid".into(), "bad".into()));
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
        let plan = plan_replays(&[], &old, &[pod("a", "Running")], now());
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
        let defaults = pods::PodDefaults {
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
        assert_eq!(c["args"], json!(["replay"]));
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
