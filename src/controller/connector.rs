//! The Connector reconciler: a ConfigMap with every task's rendered config and one Pod per task.
//!
//! Pods use `restartPolicy: Never`; the operator itself restarts a failed task after a backoff, so it can
//! change the task's config between runs. The pure parts (task configs, the ConfigMap and Pods, the plan for
//! existing pods, the status) are functions of the spec, the observed pods and the time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::events::EventType;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::conditions::{
    self, DEGRADED, Desired, PROGRESSING, READY, RESUME_TOKEN_AT_RISK, RESUME_TOKEN_RECOVERED,
};
use super::task_status::Sample;
use super::{
    Context, Error, FIELD_MANAGER, Problem, RETRY_AFTER_ERROR, Result, kafka, pods, secret_value,
};
use crate::crd::connector::{
    ConnectorState, ConnectorType, ErrorCounters, OffsetRotation, OffsetsStatus, RecoveryPolicy,
    RestartSpec, StartupMode, TaskStatus,
};
use crate::crd::{Connector, ConnectorStatus, DeadLetterQueue};
use crate::task::config::{TaskConfig, TaskErrors, TaskKafka, TaskMongo, TaskSource};

pub const LABEL_CONNECTOR: &str = "sluice.dev/connector";
pub const LABEL_TASK: &str = "sluice.dev/task";
pub const ANNOTATION_CONFIG_HASH: &str = "sluice.dev/config-hash";
/// Set to a new value to rotate a source's offset partition name (any time) — the on-demand rotation.
pub const ANNOTATION_ROTATE_OFFSETS: &str = "sluice.dev/rotate-offsets";
/// Set to a new value while `spec.state` is `stopped` to delete the Connector's offsets (KIP-875).
pub const ANNOTATION_RESET_OFFSETS: &str = "sluice.dev/reset-offsets";
/// Port of the task's HTTP server.
pub const TASK_HTTP_PORT: u16 = 8080;
pub use super::pods::CONFIG_DIR;
pub const DEFAULT_OFFSET_TOPIC: &str = "sluice-offsets";
/// How soon a Connector with a [`Problem`] is looked at again.
const RETRY_PROBLEM: Duration = Duration::from_secs(10);
const CONTROLLER: &str = "connector";

/// What the spec points at, read from the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub dead_letter_topic: Option<String>,
    pub context_headers_enable: bool,
}

/// The number of tasks that should run: none unless running; a source runs one change stream.
pub fn desired_tasks(conn: &Connector) -> u32 {
    match (conn.spec.state, conn.spec.connector_type) {
        (ConnectorState::Running, ConnectorType::MongodbSource) => 1,
        (ConnectorState::Running, ConnectorType::MongodbSink) => conn.spec.tasks_max.max(1) as u32,
        _ => 0,
    }
}

/// The offset partition name in use: what status recorded (after rotations), else the spec's base, else
/// the Connector's name.
pub fn offset_partition_name(conn: &Connector) -> String {
    let base = partition_base(conn);
    conn.status
        .as_ref()
        .and_then(|s| s.offsets.as_ref()?.partition_name.clone())
        // A name recorded for another base (the user changed spec.source.offsets.partitionName) is stale.
        .filter(|name| name == &base || rotation_number(&base, name).is_some())
        .unwrap_or(base)
}

/// The base of the offset partition name: the spec's, else the Connector's name.
pub fn partition_base(conn: &Connector) -> String {
    conn.spec
        .source
        .as_ref()
        .and_then(|s| s.offsets.partition_name.clone())
        .unwrap_or_else(|| conn.name_any())
}

/// `n` of a name `<base>.<n>`.
fn rotation_number(base: &str, name: &str) -> Option<u64> {
    name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()
}

/// The partition name after `current`: `<base>.1` first, then `<base>.<n+1>`.
pub fn next_partition_name(base: &str, current: &str) -> String {
    let n = rotation_number(base, current).unwrap_or(0);
    format!("{base}.{}", n + 1)
}

/// Why the offset partition name rotates now, if it does: a task pod that lost its resume token (policy
/// `rotate`, and not yet rotated for that pod — decided from status, so a retried reconcile or a restarted
/// operator never rotates twice for one loss), or a new value of the rotate-offsets annotation.
pub fn decide_rotation(
    conn: &Connector,
    pods: &[ObservedPod],
    now: Timestamp,
) -> Option<OffsetsStatus> {
    let source = conn.spec.source.as_ref()?;
    let mut offsets = conn
        .status
        .as_ref()
        .and_then(|s| s.offsets.clone())
        .unwrap_or_default();
    let rotated_for = |uid: &str| {
        offsets
            .rotations
            .iter()
            .any(|r| r.pod_uid.as_deref() == Some(uid))
    };
    let lost = pods.iter().find(|p| {
        p.lost_resume_token()
            && source.resume_token_recovery.policy == RecoveryPolicy::Rotate
            && p.uid.as_deref().is_some_and(|u| !rotated_for(u))
    });
    let request = conn
        .annotations()
        .get(ANNOTATION_ROTATE_OFFSETS)
        .filter(|v| !v.is_empty() && offsets.last_rotate_request.as_ref() != Some(*v))
        .cloned();
    if lost.is_none() && request.is_none() {
        return None;
    }
    let from = offset_partition_name(conn);
    let to = next_partition_name(&partition_base(conn), &from);
    let mut rotation = OffsetRotation {
        from,
        to: to.clone(),
        time: now.to_string(),
        reason: "Requested".into(),
        ..Default::default()
    };
    if let Some(pod) = lost {
        rotation.reason = "ResumeTokenLost".into();
        rotation.pod_uid = pod.uid.clone();
        rotation.code = pod.code;
        rotation.code_name = pod.code_name.clone();
        rotation.message = pod.termination.as_ref().map(|(_, m)| m.clone());
    }
    if let Some(request) = request {
        offsets.last_rotate_request = Some(request);
    }
    offsets.partition_name = Some(to);
    offsets.rotations.push(rotation);
    Some(offsets)
}

/// The startup mode a source uses now: the spec's until the first rotation, then the after-rotation one.
fn startup_mode(conn: &Connector) -> Option<StartupMode> {
    let source = conn.spec.source.as_ref()?;
    let rotated = conn
        .status
        .as_ref()
        .and_then(|s| s.offsets.as_ref())
        .is_some_and(|o| !o.rotations.is_empty());
    Some(if rotated {
        source.resume_token_recovery.startup_mode_after_rotation
    } else {
        source.startup.mode
    })
}

/// The config of task `task_id`.
pub fn task_config(conn: &Connector, task_id: u32, resolved: &Resolved) -> TaskConfig {
    let spec = &conn.spec;
    TaskConfig {
        connector_type: spec.connector_type,
        connector: conn.name_any(),
        namespace: conn.namespace().unwrap_or_default(),
        task_id,
        tasks: desired_tasks(conn).max(1),
        kafka: TaskKafka::from(&spec.kafka),
        mongodb: TaskMongo {
            database: spec.mongodb.database.clone(),
            collection: spec.mongodb.collection.clone(),
        },
        source: spec.source.as_ref().map(|source| TaskSource {
            spec: source.clone(),
            offset_partition_name: offset_partition_name(conn),
            offset_storage_topic: source
                .offsets
                .storage_topic
                .clone()
                .unwrap_or_else(|| DEFAULT_OFFSET_TOPIC.into()),
            startup_mode: startup_mode(conn).unwrap_or(source.startup.mode),
        }),
        sink: spec.sink.clone(),
        errors: TaskErrors {
            spec: spec.errors.clone(),
            dead_letter_topic: resolved.dead_letter_topic.clone(),
            context_headers_enable: resolved.context_headers_enable,
        },
        http_port: TASK_HTTP_PORT,
        discard_writes: false,
    }
}

/// A stable 64-bit FNV-1a hash (std's hasher may change between Rust releases; this must not).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn config_map_name(conn: &Connector) -> String {
    format!("{}-tasks", conn.name_any())
}

pub fn pod_name(conn: &Connector, task_id: u32) -> String {
    format!("{}-task-{task_id}", conn.name_any())
}

fn labels(conn: &Connector) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-task".into()),
        ("app.kubernetes.io/instance".into(), conn.name_any()),
        ("app.kubernetes.io/managed-by".into(), "sluice".into()),
        (LABEL_CONNECTOR.into(), conn.name_any()),
    ])
}

/// The ConfigMap holding `task-<i>.yaml` for every task.
pub fn build_config_map(conn: &Connector, configs: &[TaskConfig]) -> Result<ConfigMap> {
    let mut data = BTreeMap::new();
    for cfg in configs {
        let yaml = serde_yaml::to_string(cfg).map_err(|e| Error::Serialize {
            what: "task config",
            source: serde_json::Error::io(std::io::Error::other(e)),
        })?;
        data.insert(format!("task-{}.yaml", cfg.task_id), yaml);
    }
    let owner = conn
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NotNamespaced(conn.name_any()))?;
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": config_map_name(conn), "namespace": conn.namespace(),
                      "labels": labels(conn), "ownerReferences": [owner] },
        "data": data,
    });
    serde_json::from_value(cm).map_err(|source| Error::Serialize {
        what: "ConfigMap",
        source,
    })
}

/// Env of a task container: the downward API and every Secret the task needs, by reference.
fn task_env(conn: &Connector) -> Vec<serde_json::Value> {
    let uri = &conn.spec.mongodb.connection_uri_secret_ref;
    let mut env = pods::downward_env();
    env.push(pods::secret_env("SLUICE_MONGODB_URI", &uri.name, &uri.key));
    env.extend(pods::kafka_env(&conn.spec.kafka));
    env
}

/// The Pod of task `task_id`. `config_hash` covers the task's config and everything else that shapes the
/// pod, so a change of either replaces it.
pub fn build_pod(
    conn: &Connector,
    task_id: u32,
    defaults: &pods::PodDefaults,
    config_yaml: &str,
) -> Result<Pod> {
    let template = &conn.spec.template;
    let image = template
        .image
        .clone()
        .unwrap_or_else(|| defaults.image.clone());
    let owner = conn
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NotNamespaced(conn.name_any()))?;
    let mut pod_labels = template.labels.clone();
    pod_labels.extend(labels(conn));
    pod_labels.insert(LABEL_TASK.into(), task_id.to_string());
    let (tls_vols, tls_mounts) = pods::kafka_tls_volumes(&conn.spec.kafka);
    let mut volumes = vec![
        json!({ "name": "config", "configMap": { "name": config_map_name(conn),
        "items": [{ "key": format!("task-{task_id}.yaml"), "path": "task.yaml" }] } }),
    ];
    volumes.extend(tls_vols);
    let mut mounts = vec![json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true })];
    mounts.extend(tls_mounts);
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(conn, task_id), "namespace": conn.namespace(),
            "labels": pod_labels, "annotations": template.annotations, "ownerReferences": [owner],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 30,
            "nodeSelector": template.node_selector,
            "tolerations": template.tolerations,
            "securityContext": pods::pod_security_context(),
            "volumes": volumes,
            "containers": [{
                "name": "task",
                "image": image,
                "args": ["task", "--config", format!("{CONFIG_DIR}/task.yaml")],
                "env": task_env(conn),
                "ports": [{ "name": "http", "containerPort": TASK_HTTP_PORT }],
                "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 5 },
                "resources": template.resources,
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": pods::container_security_context(),
            }],
        },
    });
    if let Some(sa) = template
        .service_account_name
        .as_ref()
        .or(defaults.service_account.as_ref())
    {
        pod["spec"]["serviceAccountName"] = json!(sa);
    }
    let hash = fnv1a(format!("{config_yaml}\n{}", pod["spec"]).as_bytes());
    pod["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] = json!(hash);
    serde_json::from_value(pod).map_err(|source| Error::Serialize {
        what: "Pod",
        source,
    })
}

/// Wait before restart number `restarts + 1`: the initial backoff doubled per restart, capped.
pub fn restart_delay(restarts: i32, spec: &RestartSpec) -> Duration {
    let initial = spec.backoff_initial_seconds.max(1) as u64;
    let max = spec.backoff_max_seconds.max(1) as u64;
    let factor = 1u64
        .checked_shl(restarts.clamp(0, 62) as u32)
        .unwrap_or(u64::MAX);
    Duration::from_secs(initial.saturating_mul(factor).min(max))
}

/// A task pod as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    pub task_id: Option<u32>,
    pub config_hash: Option<String>,
    pub deleting: bool,
    pub phase: String,
    pub ready: bool,
    /// When the task's container ended (for a Failed or Succeeded pod).
    pub finished_at: Option<Timestamp>,
    /// The termination message's reason and message, or the exit code.
    pub termination: Option<(String, String)>,
    pub uid: Option<String>,
    /// From a task's termination message: the MongoDB error code and its name.
    pub code: Option<i32>,
    pub code_name: Option<String>,
    /// From a task's termination message: its final error counters.
    pub counters: Option<ErrorCounters>,
}

impl ObservedPod {
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let ended = pods::ended(pod);
        let parsed = ended.as_ref().and_then(|e| e.parsed.clone());
        Self {
            name: pod.name_any(),
            task_id: pod.labels().get(LABEL_TASK).and_then(|v| v.parse().ok()),
            config_hash: pod.annotations().get(ANNOTATION_CONFIG_HASH).cloned(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            phase: status.phase.unwrap_or_else(|| "Pending".into()),
            ready: status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            finished_at: ended.as_ref().and_then(|e| e.finished_at),
            termination: ended.map(|e| (e.reason, e.message)),
            uid: pod.uid(),
            code: parsed
                .as_ref()
                .and_then(|v| v["code"].as_i64())
                .map(|c| c as i32),
            code_name: parsed
                .as_ref()
                .and_then(|v| v["codeName"].as_str().map(String::from)),
            counters: parsed.and_then(|v| serde_json::from_value(v["counters"].clone()).ok()),
        }
    }

    /// A source task that ended because MongoDB no longer has its resume point.
    pub fn lost_resume_token(&self) -> bool {
        matches!(self.phase.as_str(), "Failed" | "Succeeded")
            && self
                .termination
                .as_ref()
                .is_some_and(|(reason, _)| reason == "ResumeTokenLost")
    }
}

/// What to do with the pods, and the task statuses that follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The last counters of task pods that ended, summed (status `endedTaskTotals`).
    pub ended_task_totals: ErrorCounters,
    pub create: Vec<u32>,
    /// Pods to delete, with why.
    pub delete: Vec<(String, DeleteReason)>,
    pub tasks: Vec<TaskStatus>,
    pub requeue_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    ConfigChanged,
    Restart {
        task_id: u32,
        restart: i32,
        after: Duration,
    },
    NotWanted,
}

/// Decides per task what happens to its pod.
pub fn plan(
    conn: &Connector,
    pods: &[ObservedPod],
    desired_hashes: &[String],
    now: Timestamp,
) -> Plan {
    let previous = conn
        .status
        .as_ref()
        .map(|s| s.tasks.clone())
        .unwrap_or_default();
    let restart = &conn.spec.restart;
    let mut out = Plan::default();
    let requeue = |d: Duration, out: &mut Plan| {
        out.requeue_after = Some(out.requeue_after.map_or(d, |r| r.min(d)));
    };
    for pod in pods {
        let wanted = pod
            .task_id
            .is_some_and(|id| (id as usize) < desired_hashes.len());
        if !wanted && !pod.deleting {
            out.delete.push((pod.name.clone(), DeleteReason::NotWanted));
        }
    }
    for (id, hash) in desired_hashes.iter().enumerate() {
        let id = id as u32;
        let prev = previous.iter().find(|t| t.id == id as i32).cloned();
        let restarts = prev.as_ref().map_or(0, |t| t.restarts);
        let mut task = TaskStatus {
            id: id as i32,
            pod: Some(pod_name(conn, id)),
            restarts,
            metrics: prev.as_ref().and_then(|t| t.metrics.clone()),
            ..Default::default()
        };
        let pod = pods.iter().find(|p| p.task_id == Some(id));
        match pod {
            None => {
                out.create.push(id);
                task.phase = Some("Pending".into());
                task.reason = Some(
                    if restarts > 0 {
                        "Restarting"
                    } else {
                        "Creating"
                    }
                    .into(),
                );
            }
            Some(p) if p.deleting => {
                task.phase = Some("Stopping".into());
                task.reason = Some("PodTerminating".into());
            }
            Some(p)
                if p.config_hash.as_deref() != Some(hash.as_str())
                    && !matches!(p.phase.as_str(), "Failed" | "Succeeded") =>
            {
                out.delete
                    .push((p.name.clone(), DeleteReason::ConfigChanged));
                task.phase = Some("Stopping".into());
                task.reason = Some("ConfigChanged".into());
            }
            Some(p) if matches!(p.phase.as_str(), "Failed" | "Succeeded") => {
                let (reason, message) = p
                    .termination
                    .clone()
                    .unwrap_or_else(|| ("Error".into(), format!("pod {}", p.phase)));
                task.phase = Some("Failed".into());
                task.reason = Some(reason);
                task.message = Some(message);
                let finished = p.finished_at.unwrap_or(now);
                if restart.max_restarts.is_some_and(|max| restarts >= max) {
                    task.reason = Some("MaxRestartsReached".into());
                    task.message = Some(format!(
                        "task {id} failed {} times; restarts stopped at spec.restart.maxRestarts={}: {}",
                        restarts + 1,
                        restarts,
                        task.message.clone().unwrap_or_default()
                    ));
                } else if p.config_hash.as_deref() != Some(hash.as_str()) {
                    // A new config (a rotated partition name, too) deserves a fresh start right away.
                    out.delete
                        .push((p.name.clone(), DeleteReason::ConfigChanged));
                } else if p.lost_resume_token()
                    && conn
                        .spec
                        .source
                        .as_ref()
                        .is_some_and(|s| s.resume_token_recovery.policy == RecoveryPolicy::Fail)
                {
                    // Another start would fail the same way: wait for a person (policy fail).
                } else {
                    let delay = restart_delay(restarts, restart);
                    let due =
                        finished + SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
                    if now >= due {
                        out.delete.push((
                            p.name.clone(),
                            DeleteReason::Restart {
                                task_id: id,
                                restart: restarts + 1,
                                after: delay,
                            },
                        ));
                        task.restarts = restarts + 1;
                        task.phase = Some("Restarting".into());
                    } else {
                        task.next_restart_time = Some(due.to_string());
                        let wait = due.duration_since(now).unsigned_abs();
                        requeue(wait, &mut out);
                    }
                }
            }
            Some(p) => {
                task.phase = Some(
                    if p.phase == "Running" && p.ready {
                        "Running"
                    } else {
                        "Pending"
                    }
                    .into(),
                );
                if p.phase == "Running" && !p.ready {
                    task.reason = Some("NotReady".into());
                }
            }
        }
        task.last_transition_time = match &prev {
            Some(old) if old.phase == task.phase => old.last_transition_time.clone(),
            _ => Some(now.to_string()),
        };
        out.tasks.push(task);
    }
    out
}

/// Puts what the tasks reported into their statuses, and returns the counters of task pods that ended
/// (added to `ended`). A task's counters belong to one pod (`podUid`); when the task's pod is gone or
/// replaced, its last counters move to the ended totals, once — the decision rests on status, not memory.
pub fn merge_task_reports(
    previous: &[TaskStatus],
    tasks: &mut [TaskStatus],
    pods: &[ObservedPod],
    samples: &BTreeMap<u32, Sample>,
    mut ended: ErrorCounters,
) -> ErrorCounters {
    for prev in previous {
        let task = tasks.iter_mut().find(|t| t.id == prev.id);
        let current_uid = pods
            .iter()
            .find(|p| p.task_id == Some(prev.id as u32))
            .and_then(|p| p.uid.clone());
        let same_pod = prev.pod_uid.is_none() || prev.pod_uid == current_uid;
        if (!same_pod || task.is_none())
            && let Some(m) = &prev.metrics
        {
            add_counters(&mut ended, m);
        }
        if let Some(task) = task {
            task.last_error = prev.last_error.clone();
            if same_pod {
                task.metrics = prev.metrics.clone();
                task.records_in = prev.records_in;
                task.records_out = prev.records_out;
                task.resume_token = prev.resume_token.clone();
            } else {
                task.metrics = None;
            }
        }
    }
    for task in tasks.iter_mut() {
        let pod = pods.iter().find(|p| p.task_id == Some(task.id as u32));
        task.pod_uid = pod.and_then(|p| p.uid.clone());
        let Some(pod) = pod else { continue };
        if let Some(final_counters) = &pod.counters {
            task.metrics = Some(final_counters.clone());
        } else if let Some(sample) = samples
            .get(&(task.id as u32))
            .filter(|s| Some(&s.pod_uid) == pod.uid.as_ref())
        {
            let r = &sample.report;
            task.metrics = Some(r.errors.clone());
            task.records_in = Some(r.records_in as i64);
            task.records_out = Some(r.records_out as i64);
            if r.last_error.is_some() {
                task.last_error = r.last_error.clone();
            }
            task.resume_token = r.resume_token.clone();
        }
    }
    ended
}

fn add_counters(sum: &mut ErrorCounters, c: &ErrorCounters) {
    sum.total_record_failures += c.total_record_failures;
    sum.total_record_errors += c.total_record_errors;
    sum.total_records_skipped += c.total_records_skipped;
    sum.total_retries += c.total_retries;
    sum.total_errors_logged += c.total_errors_logged;
    sum.dead_letter_queue_produce_requests += c.dead_letter_queue_produce_requests;
    sum.dead_letter_queue_produce_failures += c.dead_letter_queue_produce_failures;
    sum.last_error_timestamp = sum.last_error_timestamp.max(c.last_error_timestamp);
}

/// Totals over tasks plus the ended pods' counters.
pub fn totals(tasks: &[TaskStatus], ended: &ErrorCounters) -> ErrorCounters {
    let mut sum = ended.clone();
    for m in tasks.iter().filter_map(|t| t.metrics.as_ref()) {
        add_counters(&mut sum, m);
    }
    sum
}

/// What the operator learnt from outside the plan: task reports and time.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// "task 0: 12 record errors in the last 5m, 12 sent to DLQ orders-dlq", when errors rose.
    pub record_errors: Option<String>,
    /// `ResumeTokenAtRisk` of a source.
    pub at_risk: Option<Desired>,
}

/// `12 record errors in the last 5m` for every task whose errors rose within `window`.
pub fn record_errors_message(
    samples: &BTreeMap<u32, Sample>,
    now: Timestamp,
    window: Duration,
    dead_letter_topic: Option<&str>,
) -> Option<String> {
    let parts: Vec<String> = samples
        .iter()
        .filter_map(|(id, sample)| {
            let (errors, dlq) = sample.errors_within(now, window);
            (errors > 0).then(|| {
                let sent = match dead_letter_topic {
                    Some(topic) => format!(", {dlq} sent to DLQ {topic}"),
                    None => String::new(),
                };
                format!(
                    "task {id}: {errors} record errors in the last {}{sent}",
                    human(window)
                )
            })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `5m`, `90s`, `1h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// `ResumeTokenAtRisk` from what the source task reported, and when it would turn True by itself.
pub fn resume_token_risk(task: Option<&TaskStatus>, now: Timestamp) -> (Desired, Option<Duration>) {
    let Some(r) = task.and_then(|t| t.resume_token.as_ref()) else {
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                "NotReported",
                "the source task has not reported its resume token yet",
            ),
            None,
        );
    };
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    let Some(token) = parse(&r.time) else {
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                "NoResumeToken",
                "the source has stored no resume token yet",
            ),
            None,
        );
    };
    let (Some(first), Some(last)) = (parse(&r.oplog_first_time), parse(&r.oplog_last_time)) else {
        let why = r
            .oplog_window_unknown
            .clone()
            .unwrap_or_else(|| "the source task has not read it yet".into());
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                "OplogWindowUnknown",
                format!("resume token from {token}; the oplog window can't be read: {why}"),
            ),
            None,
        );
    };
    if last <= first {
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                "OplogWindowUnknown",
                format!(
                    "resume token from {token}; the oplog's first and last entries are both at {first} \
                     (a single entry, or a server that does not order local.oplog.rs by $natural): no \
                     window to compare with"
                ),
            ),
            None,
        );
    }
    let window = last.duration_since(first).unsigned_abs();
    let age = now.duration_since(token).unsigned_abs();
    let half = window / 2;
    if age > half {
        let left = window.saturating_sub(age);
        (
            Desired::new(
                RESUME_TOKEN_AT_RISK,
                true,
                "TokenOlderThanHalfTheOplogWindow",
                format!(
                    "the resume token is {} old (from {token}), more than half the oplog window of {} \
                     ({first} to {last}); it leaves the oplog in about {} unless changes or heartbeats \
                     (spec.source.heartbeat) move it on",
                    human(age),
                    human(window),
                    human(left)
                ),
            ),
            None,
        )
    } else {
        (
            Desired::new(
                RESUME_TOKEN_AT_RISK,
                false,
                "WithinOplogWindow",
                format!(
                    "resume token from {token}; oplog window {} ({first} to {last})",
                    human(window)
                ),
            ),
            Some(half - age + Duration::from_secs(1)),
        )
    }
}

/// `ResumeTokenRecovered` from the last rotation and whether the task runs again.
fn resume_token_recovered(conn: &Connector, plan: Option<&Plan>) -> Desired {
    let offsets = conn.status.as_ref().and_then(|s| s.offsets.as_ref());
    let Some(last) = offsets.and_then(|o| o.rotations.last()) else {
        return Desired::new(
            RESUME_TOKEN_RECOVERED,
            false,
            "NoRotation",
            "the offset partition name was never rotated",
        );
    };
    let mode = startup_mode(conn)
        .map(|m| format!("{m:?}"))
        .unwrap_or_default();
    let cause = match (&last.code_name, last.code) {
        (Some(name), Some(code)) => format!("after {name} ({code})"),
        _ if last.reason == "Requested" => "on request".to_string(),
        _ => format!("after {}", last.reason),
    };
    let what = format!(
        "rotated offset partition {} to {} at {} {cause}; the task starts with startup mode {mode}",
        last.from, last.to, last.time
    );
    let running = plan.is_some_and(|p| {
        !p.tasks.is_empty()
            && p.tasks
                .iter()
                .all(|t| t.phase.as_deref() == Some("Running"))
    });
    if running {
        Desired::new(
            RESUME_TOKEN_RECOVERED,
            true,
            "OffsetPartitionRotated",
            format!(
                "{what}; it runs again (changes made while no task ran were not captured by a latest start)"
            ),
        )
    } else {
        Desired::new(
            RESUME_TOKEN_RECOVERED,
            false,
            "Recovering",
            format!("{what}; waiting for the task to run"),
        )
    }
}

/// The conditions that follow from the plan (or from a problem that stopped it).
pub fn decide_conditions(
    conn: &Connector,
    plan: Option<&Plan>,
    problem: Option<&Problem>,
    signals: &Signals,
) -> Vec<Desired> {
    let mut conditions = decide_main_conditions(conn, plan, problem, signals);
    if conn.spec.connector_type == ConnectorType::MongodbSource {
        conditions.push(resume_token_recovered(conn, plan));
        if let Some(risk) = &signals.at_risk {
            conditions.push(risk.clone());
        }
    }
    conditions
}

fn decide_main_conditions(
    conn: &Connector,
    plan: Option<&Plan>,
    problem: Option<&Problem>,
    signals: &Signals,
) -> Vec<Desired> {
    let desired = desired_tasks(conn);
    let Some(plan) = plan else {
        let p = problem
            .cloned()
            .unwrap_or_else(|| Problem::new("Unknown", ""));
        return vec![
            Desired::new(READY, false, p.reason, p.message),
            Desired::new(
                PROGRESSING,
                false,
                "Blocked",
                "waiting for the problem in the Ready condition to be fixed",
            ),
            Desired::new(DEGRADED, false, "AsExpected", ""),
        ];
    };
    let running = plan
        .tasks
        .iter()
        .filter(|t| t.phase.as_deref() == Some("Running"))
        .count() as u32;
    let failed: Vec<&TaskStatus> = plan
        .tasks
        .iter()
        .filter(|t| t.phase.as_deref() == Some("Failed"))
        .collect();
    let ready = match conn.spec.state {
        ConnectorState::Running if running == desired => Desired::new(
            READY,
            true,
            "TasksReady",
            format!("{running}/{desired} tasks running"),
        ),
        ConnectorState::Running => Desired::new(
            READY,
            false,
            "TasksNotReady",
            format!("{running}/{desired} tasks running"),
        ),
        ConnectorState::Paused => Desired::new(
            READY,
            true,
            "Paused",
            "spec.state is paused: no tasks run, offsets are kept",
        ),
        ConnectorState::Stopped => Desired::new(
            READY,
            true,
            "Stopped",
            "spec.state is stopped: no tasks run",
        ),
    };
    let busy = !plan.create.is_empty()
        || !plan.delete.is_empty()
        || plan.tasks.iter().any(|t| {
            matches!(
                t.phase.as_deref(),
                Some("Pending" | "Stopping" | "Restarting")
            )
        });
    let progressing = if busy {
        Desired::new(
            PROGRESSING,
            true,
            "TasksChanging",
            "task pods are being created, replaced or removed",
        )
    } else {
        Desired::new(
            PROGRESSING,
            false,
            "Stable",
            "every task is as the spec asks",
        )
    };
    let lost_for_good = failed.iter().find(|t| {
        t.reason.as_deref() == Some("ResumeTokenLost")
            && conn
                .spec
                .source
                .as_ref()
                .is_some_and(|s| s.resume_token_recovery.policy == RecoveryPolicy::Fail)
    });
    let degraded = match (lost_for_good, failed.first()) {
        (Some(t), _) => {
            let mode = conn
                .spec
                .source
                .as_ref()
                .map(|s| format!("{:?}", s.resume_token_recovery.startup_mode_after_rotation))
                .unwrap_or_default();
            Desired::new(
                DEGRADED,
                true,
                "ResumeTokenLost",
                format!(
                    "task {} lost its resume point in offset partition {}: {}. \
                     spec.source.resumeTokenRecovery.policy is fail, so nothing restarts it. To go on \
                     under a new offset partition name with startup mode {mode} (changes since the lost \
                     point are not replayed): kubectl annotate connector {} {ANNOTATION_ROTATE_OFFSETS}=\
                     \"$(date +%s)\" --overwrite",
                    t.id,
                    offset_partition_name(conn),
                    t.message.clone().unwrap_or_default(),
                    conn.name_any()
                ),
            )
        }
        (None, Some(t)) => {
            let reason = if t.reason.as_deref() == Some("MaxRestartsReached") {
                "MaxRestartsReached"
            } else {
                "TaskFailed"
            };
            let next = t
                .next_restart_time
                .as_deref()
                .map(|n| format!("; next restart at {n}"))
                .unwrap_or_default();
            Desired::new(
                DEGRADED,
                true,
                reason,
                format!(
                    "task {} failed ({}): {}{next}",
                    t.id,
                    t.reason.clone().unwrap_or_default(),
                    t.message.clone().unwrap_or_default()
                ),
            )
        }
        (None, None) => match &signals.record_errors {
            Some(message) => Desired::new(DEGRADED, true, "RecordErrors", message.clone()),
            None => Desired::new(DEGRADED, false, "AsExpected", "no task failed"),
        },
    };
    vec![ready, progressing, degraded]
}

/// The status to write.
pub fn build_status(
    conn: &Connector,
    plan: Option<&Plan>,
    problem: Option<&Problem>,
    signals: &Signals,
    now: Timestamp,
) -> ConnectorStatus {
    let old = conn.status.clone().unwrap_or_default();
    let desired = desired_tasks(conn);
    let tasks = plan.map(|p| p.tasks.clone()).unwrap_or(old.tasks.clone());
    let ended = plan
        .map(|p| p.ended_task_totals.clone())
        .unwrap_or_else(|| old.ended_task_totals.clone().unwrap_or_default());
    let running = tasks
        .iter()
        .filter(|t| t.phase.as_deref() == Some("Running"))
        .count();
    let mut offsets = old.offsets.clone().unwrap_or_default();
    if conn.spec.connector_type == ConnectorType::MongodbSource {
        offsets.partition_name = Some(offset_partition_name(conn));
    }
    ConnectorStatus {
        observed_generation: conn.metadata.generation,
        conditions: conditions::merge(
            &old.conditions,
            &decide_conditions(conn, plan, problem, signals),
            conn.metadata.generation,
            now,
        ),
        task_summary: Some(format!("{running}/{desired}")),
        totals: Some(totals(&tasks, &ended)),
        ended_task_totals: Some(ended),
        tasks,
        offsets: (offsets != OffsetsStatus::default()).then_some(offsets),
    }
}

/// Reads what the spec points at. `Ok(Err(problem))`: the spec can't be used yet.
async fn dereference(
    ctx: &Context,
    conn: &Connector,
    ns: &str,
) -> Result<Result<Resolved, Problem>> {
    let client = &ctx.client;
    let uri = &conn.spec.mongodb.connection_uri_secret_ref;
    if let Err(p) = secret_value(
        client,
        ns,
        &uri.name,
        &uri.key,
        "spec.mongodb.connectionUriSecretRef",
    )
    .await?
    {
        return Ok(Err(p));
    }
    let creds = match kafka::credentials(client, ns, &conn.spec.kafka, "spec.kafka").await? {
        Ok(c) => c,
        Err(p) => return Ok(Err(p)),
    };
    let errors = &conn.spec.errors;
    let mut resolved = Resolved {
        dead_letter_topic: errors.dead_letter_queue_topic.clone(),
        context_headers_enable: errors.context_headers_enable.unwrap_or(false),
    };
    if let Some(r) = &errors.dead_letter_queue_ref {
        let dlqs: Api<DeadLetterQueue> = Api::namespaced(client.clone(), ns);
        let Some(dlq) = dlqs.get_opt(&r.name).await? else {
            return Ok(Err(Problem::new(
                "DeadLetterQueueNotFound",
                format!(
                    "DeadLetterQueue {ns}/{} (spec.errors.deadLetterQueueRef) not found",
                    r.name
                ),
            )));
        };
        resolved.dead_letter_topic = Some(
            dlq.spec
                .topic_name
                .clone()
                .unwrap_or_else(|| dlq.name_any()),
        );
        resolved.context_headers_enable = errors
            .context_headers_enable
            .unwrap_or(dlq.spec.context_headers_enable);
    }
    if let Some(source) = &conn.spec.source
        && let Some(pipeline) = &source.pipeline
    {
        match serde_json::from_str::<serde_json::Value>(pipeline) {
            Ok(serde_json::Value::Array(_)) => {}
            Ok(_) => {
                return Ok(Err(Problem::new(
                    "ConfigInvalid",
                    "spec.source.pipeline must be a JSON array of stages",
                )));
            }
            Err(e) => {
                return Ok(Err(Problem::new(
                    "ConfigInvalid",
                    format!("spec.source.pipeline is not valid JSON: {e}"),
                )));
            }
        }
    }
    // Topics the connector reads or writes to and does not create itself must exist.
    let mut needed: Vec<(String, &str)> = Vec::new();
    if let Some(topics) = conn.spec.sink.as_ref().and_then(|s| s.topics.as_ref()) {
        needed.extend(topics.iter().map(|t| (t.clone(), "spec.sink.topics")));
    }
    if let Some(topic) = &errors.dead_letter_queue_topic {
        needed.push((topic.clone(), "spec.errors.deadLetterQueueTopic"));
    }
    if !needed.is_empty() {
        let admin = kafka::admin(&kafka::client_properties(&conn.spec.kafka, &creds))?;
        for (topic, field) in needed {
            match kafka::topic_metadata(&admin, &topic).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Ok(Err(Problem::new(
                        "TopicNotFound",
                        format!(
                            "topic {topic} ({field}) does not exist in Kafka {}",
                            conn.spec.kafka.bootstrap_servers
                        ),
                    )));
                }
                Err(e) => {
                    return Ok(Err(Problem::new(
                        "KafkaUnavailable",
                        format!(
                            "cannot reach Kafka {} to check topic {topic}: {e}",
                            conn.spec.kafka.bootstrap_servers
                        ),
                    )));
                }
            }
        }
    }
    Ok(Ok(resolved))
}

async fn publish(ctx: &Context, conn: &Connector, type_: EventType, reason: &str, note: String) {
    ctx.events
        .record(&conn.object_ref(&()), type_, reason, &note)
        .await;
}

/// One reconcile of one Connector.
#[tracing::instrument(skip_all, fields(connector = %conn.name_any(), namespace = conn.namespace().unwrap_or_default()))]
pub async fn reconcile(conn: Arc<Connector>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    // Decide from what the API server has now, not from the watch cache, which may not yet show the
    // status this operator wrote a moment ago (a restart counted twice, or not at all).
    let api: Api<Connector> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let fresh = match api.get_opt(&conn.name_any()).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return Ok(Action::await_change()),
        Err(err) => {
            ctx.metrics.observe(CONTROLLER, false, started.elapsed());
            return Err(err.into());
        }
    };
    let result = reconcile_inner(&fresh, &ctx).await;
    ctx.metrics
        .observe(CONTROLLER, result.is_ok(), started.elapsed());
    result
}

async fn reconcile_inner(conn: &Connector, ctx: &Context) -> Result<Action> {
    let ns = conn
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(conn.name_any()))?;
    let name = conn.name_any();
    let now = Timestamp::now();
    let old_status = conn.status.clone().unwrap_or_default();
    let old_ready_reason = old_status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.clone());

    let resolved = dereference(ctx, conn, &ns).await?;
    let resolved = match resolved {
        Ok(r) => r,
        Err(problem) => {
            if old_ready_reason.as_deref() != Some(problem.reason) {
                publish(
                    ctx,
                    conn,
                    EventType::Warning,
                    problem.reason,
                    problem.message.clone(),
                )
                .await;
            }
            let status = build_status(conn, None, Some(&problem), &Signals::default(), now);
            write_status(ctx, conn, status).await?;
            return Ok(Action::requeue(RETRY_PROBLEM));
        }
    };
    if old_ready_reason
        .as_deref()
        .is_some_and(|r| !matches!(r, "TasksReady" | "TasksNotReady" | "Paused" | "Stopped"))
    {
        publish(
            ctx,
            conn,
            EventType::Normal,
            "ConfigValid",
            "the spec's references resolve now".into(),
        )
        .await;
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let observed: Vec<ObservedPod> = pods
        .list(&ListParams::default().labels(&format!("{LABEL_CONNECTOR}={name}")))
        .await?
        .items
        .iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == conn.uid().as_ref())
        })
        .map(ObservedPod::from_pod)
        .collect();

    // Rotate before rendering configs, so the replacement task gets the new partition name.
    let mut conn = conn.clone();
    if let Some(offsets) = decide_rotation(&conn, &observed, now) {
        conn = record_rotation(ctx, &conn, offsets, &observed).await?;
    }
    if let Some(stored) = reset_offsets_on_request(ctx, &conn, &observed, now).await? {
        conn = stored;
    }
    let conn = &conn;
    let old_status = conn.status.clone().unwrap_or_default();

    let desired = desired_tasks(conn);
    let configs: Vec<TaskConfig> = (0..desired)
        .map(|id| task_config(conn, id, &resolved))
        .collect();
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let cm = build_config_map(conn, &configs)?;
    cm_api
        .patch(
            &cm.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    let pod_specs: Vec<Pod> = configs
        .iter()
        .map(|cfg| {
            let yaml = cm
                .data
                .as_ref()
                .and_then(|d| d.get(&format!("task-{}.yaml", cfg.task_id)))
                .cloned()
                .unwrap_or_default();
            build_pod(conn, cfg.task_id, &ctx.config.pods, &yaml)
        })
        .collect::<Result<_>>()?;
    let hashes: Vec<String> = pod_specs
        .iter()
        .map(|p| {
            p.annotations()
                .get(ANNOTATION_CONFIG_HASH)
                .cloned()
                .unwrap_or_default()
        })
        .collect();

    let mut plan = plan(conn, &observed, &hashes, now);
    let samples = ctx.reports.of(&ns, &name);
    plan.ended_task_totals = merge_task_reports(
        &old_status.tasks,
        &mut plan.tasks,
        &observed,
        &samples,
        old_status.ended_task_totals.clone().unwrap_or_default(),
    );
    let window = ctx.config.record_errors_window;
    let mut signals = Signals {
        record_errors: record_errors_message(
            &samples,
            now,
            window,
            resolved.dead_letter_topic.as_deref(),
        ),
        at_risk: None,
    };
    let mut requeue = plan.requeue_after;
    let mut requeue_within = |d: Duration| requeue = Some(requeue.map_or(d, |r| r.min(d)));
    if signals.record_errors.is_some() {
        // The condition clears by itself once the errors leave the window.
        requeue_within(ctx.config.task_status_interval);
    }
    if conn.spec.connector_type == ConnectorType::MongodbSource
        && conn.spec.state == ConnectorState::Running
    {
        let (risk, flips_in) = resume_token_risk(plan.tasks.first(), now);
        signals.at_risk = Some(risk);
        if let Some(d) = flips_in {
            requeue_within(d);
        }
    }

    for (pod, why) in &plan.delete {
        match pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let (reason, note) = match why {
            DeleteReason::ConfigChanged => (
                "TaskReplaced",
                format!("the task's config changed: replacing pod {pod}"),
            ),
            DeleteReason::NotWanted => (
                "TaskRemoved",
                format!(
                    "removed pod {pod} (spec.state {:?}, {} tasks wanted)",
                    conn.spec.state, desired
                ),
            ),
            DeleteReason::Restart {
                task_id,
                restart,
                after,
            } => (
                "TaskRestarted",
                format!(
                    "task {task_id} failed: restart {restart} after {}s backoff",
                    after.as_secs()
                ),
            ),
        };
        info!(pod, reason, "deleting task pod");
        publish(ctx, conn, EventType::Normal, reason, note).await;
    }
    // A failed pod is gone at once (terminal pods have no grace period): start its replacement now.
    let restarted = plan.delete.iter().filter_map(|(_, why)| match why {
        DeleteReason::Restart { task_id, .. } => Some(*task_id),
        _ => None,
    });
    let mut created = Vec::new();
    for id in plan
        .create
        .iter()
        .copied()
        .chain(restarted)
        .collect::<Vec<_>>()
        .iter()
    {
        match pods
            .create(&PostParams::default(), &pod_specs[*id as usize])
            .await
        {
            Ok(p) => created.push(p.name_any()),
            // The old pod is still terminating; its deletion triggers the next reconcile.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !created.is_empty() {
        publish(
            ctx,
            conn,
            EventType::Normal,
            "TasksCreated",
            format!("created task pods {}", created.join(", ")),
        )
        .await;
    }
    for task in &plan.tasks {
        let was_failed = old_status
            .tasks
            .iter()
            .any(|t| t.id == task.id && t.phase.as_deref() == Some("Failed"));
        if task.phase.as_deref() == Some("Failed") && !was_failed {
            let why = format!(
                "task {} failed ({}): {}",
                task.id,
                task.reason.clone().unwrap_or_default(),
                task.message.clone().unwrap_or_default()
            );
            publish(ctx, conn, EventType::Warning, "TaskFailed", why).await;
        }
    }

    write_status(
        ctx,
        conn,
        build_status(conn, Some(&plan), None, &signals, now),
    )
    .await?;
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
}

/// Writes `status.offsets` only if the Connector is still at the resourceVersion this reconcile read (a
/// conflict fails the reconcile, which then decides again from fresh state). Returns the stored Connector.
async fn write_offsets_guarded(
    ctx: &Context,
    conn: &Connector,
    offsets: &OffsetsStatus,
) -> Result<Connector> {
    let api: Api<Connector> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": { "resourceVersion": conn.resource_version() },
        "status": { "offsets": offsets },
    });
    Ok(api
        .patch_status(
            &conn.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?)
}

/// Writes the rotated offsets to status — guarded by the resourceVersion read at the start of this
/// reconcile, so a stale view can't rotate twice — then tells people with Events. Returns the Connector
/// as stored.
async fn record_rotation(
    ctx: &Context,
    conn: &Connector,
    offsets: OffsetsStatus,
    pods: &[ObservedPod],
) -> Result<Connector> {
    let Some(rotation) = offsets.rotations.last().cloned() else {
        return Ok(conn.clone());
    };
    let stored = write_offsets_guarded(ctx, conn, &offsets).await?;
    info!(from = %rotation.from, to = %rotation.to, reason = %rotation.reason, "offset partition rotated");
    if rotation.reason == "ResumeTokenLost" {
        let pod = pods
            .iter()
            .find(|p| p.uid == rotation.pod_uid)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        publish(
            ctx,
            conn,
            EventType::Warning,
            "ResumeTokenLost",
            format!(
                "task pod {pod}: MongoDB no longer has the resume point of offset partition {}: {} ({}): {}",
                rotation.from,
                rotation.code_name.clone().unwrap_or_default(),
                rotation.code.map(|c| c.to_string()).unwrap_or_default(),
                rotation.message.clone().unwrap_or_default()
            ),
        )
        .await;
    }
    let mode = startup_mode(&stored)
        .map(|m| format!("{m:?}"))
        .unwrap_or_default();
    let why = if rotation.reason == "Requested" {
        format!(
            " on request (annotation {ANNOTATION_ROTATE_OFFSETS}={})",
            offsets.last_rotate_request.clone().unwrap_or_default()
        )
    } else {
        String::new()
    };
    publish(
        ctx,
        conn,
        EventType::Normal,
        "OffsetPartitionRotated",
        format!(
            "offset partition {} rotated to {}{why}; the task restarts with startup mode {mode}",
            rotation.from, rotation.to
        ),
    )
    .await;
    Ok(stored)
}

/// Deletes the Connector's offsets when the reset-offsets annotation has a new value and the Connector is
/// stopped with no task pod left (KIP-875: offsets change only while a connector is stopped).
async fn reset_offsets_on_request(
    ctx: &Context,
    conn: &Connector,
    pods: &[ObservedPod],
    now: Timestamp,
) -> Result<Option<Connector>> {
    let offsets = conn
        .status
        .as_ref()
        .and_then(|s| s.offsets.clone())
        .unwrap_or_default();
    let Some(request) = conn
        .annotations()
        .get(ANNOTATION_RESET_OFFSETS)
        .filter(|v| !v.is_empty() && offsets.last_reset_request.as_ref() != Some(*v))
        .cloned()
    else {
        return Ok(None);
    };
    if conn.spec.state != ConnectorState::Stopped || !pods.is_empty() {
        publish(
            ctx,
            conn,
            EventType::Warning,
            "OffsetResetPending",
            format!(
                "offsets are reset only while the Connector is stopped and no task pod is left: set                  spec.state to stopped ({ANNOTATION_RESET_OFFSETS}={request} stays pending)"
            ),
        )
        .await;
        return Ok(None);
    }
    let ns = conn.namespace().unwrap_or_default();
    let creds = match kafka::credentials(&ctx.client, &ns, &conn.spec.kafka, "spec.kafka").await? {
        Ok(c) => c,
        Err(problem) => {
            publish(
                ctx,
                conn,
                EventType::Warning,
                problem.reason,
                problem.message,
            )
            .await;
            return Ok(None);
        }
    };
    let props = kafka::client_properties(&conn.spec.kafka, &creds);
    let target = match &conn.spec.source {
        Some(source) => {
            let topic = source
                .offsets
                .storage_topic
                .clone()
                .unwrap_or_else(|| DEFAULT_OFFSET_TOPIC.into());
            let partition = offset_partition_name(conn);
            kafka::delete_source_offset(
                &props,
                &topic,
                &crate::task::source::offset_key(&ns, &conn.name_any(), &partition),
            )
            .await?;
            format!("partition {partition} in topic {topic}")
        }
        None => {
            let group = crate::task::sink::consumer_group(&ns, &conn.name_any());
            kafka::delete_consumer_group(&props, &group).await?;
            format!("consumer group {group}")
        }
    };
    let mut offsets = offsets;
    offsets.last_reset_request = Some(request.clone());
    offsets.resets.push(crate::crd::connector::OffsetReset {
        target: target.clone(),
        time: now.to_string(),
        request,
    });
    let stored = write_offsets_guarded(ctx, conn, &offsets).await?;
    publish(
        ctx,
        conn,
        EventType::Normal,
        "OffsetsReset",
        format!("offsets deleted: {target}; the next start follows the startup mode"),
    )
    .await;
    Ok(Some(stored))
}

/// Writes status with server-side apply, only when it differs from what is stored.
async fn write_status(ctx: &Context, conn: &Connector, status: ConnectorStatus) -> Result<()> {
    if conn.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Connector> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let patch =
        json!({ "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector", "status": status });
    api.patch_status(
        &conn.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy(conn: Arc<Connector>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(connector = %conn.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(RETRY_AFTER_ERROR)
}

/// Runs the Connector controller until shutdown.
pub async fn run(
    ctx: Arc<Context>,
    reports_changed: tokio::sync::mpsc::Receiver<kube::runtime::reflector::ObjectRef<Connector>>,
) {
    let client = ctx.client.clone();
    let (connectors, pods, configmaps) = match &ctx.config.namespace {
        Some(ns) => (
            Api::<Connector>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let owned = watcher::Config::default().labels(LABEL_CONNECTOR);
    Controller::new(connectors, watcher::Config::default())
        .owns(pods, owned.clone())
        .owns(configmaps, owned)
        // A task whose report changed: its counters go into status.
        .reconcile_on(futures::stream::unfold(
            reports_changed,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        ))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(image: &str) -> pods::PodDefaults {
        pods::PodDefaults {
            image: image.into(),
            service_account: Some("sluice-task".into()),
        }
    }
    use crate::crd::connector::StartupMode;

    fn connector(yaml: &str) -> Connector {
        let mut conn: Connector = serde_yaml::from_str(yaml).unwrap();
        conn.metadata.uid = Some("uid-1".into());
        conn.metadata.namespace = Some("shop".into());
        conn
    }

    const SINK: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Connector
metadata: {name: orders}
spec:
  type: mongodb-sink
  tasksMax: 2
  kafka: {bootstrapServers: "kafka:9092", sasl: {mechanism: SCRAM-SHA-512, secretRef: {name: kafka-user}}}
  mongodb: {connectionUriSecretRef: {name: mongo, key: uri}, database: shop, collection: orders}
  sink: {topics: [orders]}
  errors: {tolerance: all, deadLetterQueueRef: {name: orders-dlq}}
  restart: {backoffInitialSeconds: 10, backoffMaxSeconds: 60, maxRestarts: 3}
"#;

    const SOURCE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Connector
metadata: {name: events}
spec:
  type: mongodb-source
  kafka: {bootstrapServers: "kafka:9092"}
  mongodb: {connectionUriSecretRef: {name: mongo, key: uri}, database: shop}
  source: {topicPrefix: cdc, offsets: {partitionName: shop-events}, resumeTokenRecovery: {startupModeAfterRotation: copyExisting}}
"#;

    fn resolved() -> Resolved {
        Resolved {
            dead_letter_topic: Some("orders-dlq".into()),
            context_headers_enable: true,
        }
    }

    #[test]
    fn a_sink_runs_tasks_max_tasks_and_a_source_one() {
        assert_eq!(desired_tasks(&connector(SINK)), 2);
        assert_eq!(desired_tasks(&connector(SOURCE)), 1);
        let mut paused = connector(SINK);
        paused.spec.state = ConnectorState::Paused;
        assert_eq!(desired_tasks(&paused), 0);
    }

    #[test]
    fn task_configs_resolve_the_dead_letter_queue_and_offsets() {
        let cfg = task_config(&connector(SINK), 1, &resolved());
        assert_eq!((cfg.task_id, cfg.tasks), (1, 2));
        assert_eq!(cfg.errors.dead_letter_topic.as_deref(), Some("orders-dlq"));
        assert!(cfg.errors.context_headers_enable);

        let mut src = connector(SOURCE);
        let cfg = task_config(&src, 0, &Resolved::default());
        let s = cfg.source.unwrap();
        assert_eq!(s.offset_partition_name, "shop-events");
        assert_eq!(s.offset_storage_topic, DEFAULT_OFFSET_TOPIC);
        assert_eq!(s.startup_mode, StartupMode::Latest);
        src.status = Some(ConnectorStatus {
            offsets: Some(OffsetsStatus {
                partition_name: Some("shop-events.2".into()),
                rotations: vec![Default::default()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = task_config(&src, 0, &Resolved::default()).source.unwrap();
        assert_eq!(s.offset_partition_name, "shop-events.2");
        assert_eq!(
            s.startup_mode,
            StartupMode::CopyExisting,
            "after a rotation the recovery mode applies"
        );
    }

    #[test]
    fn the_config_map_holds_one_config_per_task_and_no_secret() {
        let conn = connector(SINK);
        let configs: Vec<_> = (0..2).map(|i| task_config(&conn, i, &resolved())).collect();
        let cm = build_config_map(&conn, &configs).unwrap();
        let data = cm.data.unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["task-0.yaml", "task-1.yaml"]
        );
        assert_eq!(
            TaskConfig::parse(&data["task-1.yaml"]).unwrap(),
            configs[1],
            "the task reads back what was rendered"
        );
        assert!(
            !data["task-0.yaml"].contains("kafka-user"),
            "no secret names or values in the config"
        );
        assert_eq!(cm.metadata.owner_references.unwrap()[0].kind, "Connector");
    }

    #[test]
    fn pods_take_secrets_by_reference_and_change_hash_with_the_config() {
        let conn = connector(SINK);
        let pod = build_pod(&conn, 0, &defaults("sluice:dev"), "a: 1").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("orders-task-0"));
        let spec = pod.spec.clone().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("sluice-task"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let mut own_sa = conn.clone();
        own_sa.spec.template.service_account_name = Some("orders-sa".into());
        let own = build_pod(&own_sa, 0, &defaults("sluice:dev"), "a: 1").unwrap();
        assert_eq!(
            own.spec.unwrap().service_account_name.as_deref(),
            Some("orders-sa"),
            "the template's ServiceAccount wins"
        );
        let env = spec.containers[0].env.clone().unwrap();
        let from_secret = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.clone()?.secret_key_ref)
                .map(|r| (r.name, r.key))
        };
        assert_eq!(
            from_secret("SLUICE_MONGODB_URI"),
            Some(("mongo".into(), "uri".into()))
        );
        assert_eq!(
            from_secret("SLUICE_KAFKA_SASL_PASSWORD"),
            Some(("kafka-user".into(), "password".into()))
        );
        assert!(
            env.iter()
                .all(|e| e.value.as_deref().is_none_or(|v| !v.contains("mongodb://")))
        );
        let hash = |p: &Pod| p.annotations()[ANNOTATION_CONFIG_HASH].clone();
        assert_eq!(
            hash(&pod),
            hash(&build_pod(&conn, 0, &defaults("sluice:dev"), "a: 1").unwrap()),
            "stable"
        );
        assert_ne!(
            hash(&pod),
            hash(&build_pod(&conn, 0, &defaults("sluice:dev"), "a: 2").unwrap()),
            "config changes it"
        );
        assert_ne!(
            hash(&pod),
            hash(&build_pod(&conn, 0, &defaults("sluice:v2"), "a: 1").unwrap()),
            "image changes it"
        );
    }

    #[test]
    fn restart_backoff_doubles_up_to_the_cap() {
        let spec = RestartSpec {
            backoff_initial_seconds: 10,
            backoff_max_seconds: 60,
            max_restarts: None,
        };
        let delays: Vec<u64> = (0..5).map(|n| restart_delay(n, &spec).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        assert_eq!(restart_delay(1000, &spec).as_secs(), 60, "no overflow");
    }

    fn observed(id: u32, phase: &str, hash: &str) -> ObservedPod {
        ObservedPod {
            name: format!("orders-task-{id}"),
            task_id: Some(id),
            config_hash: Some(hash.into()),
            deleting: false,
            phase: phase.into(),
            ready: phase == "Running",
            finished_at: None,
            termination: None,
            uid: Some(format!("uid-{id}")),
            ..Default::default()
        }
    }

    #[test]
    fn the_plan_creates_missing_replaces_changed_and_removes_unwanted_pods() {
        let conn = connector(SINK);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let pods = [observed(0, "Running", "old"), observed(5, "Running", "h")];
        let plan = plan(&conn, &pods, &["new".into(), "h".into()], now);
        assert_eq!(plan.create, [1]);
        assert_eq!(
            plan.delete,
            [
                ("orders-task-5".into(), DeleteReason::NotWanted),
                ("orders-task-0".into(), DeleteReason::ConfigChanged)
            ]
        );
    }

    #[test]
    fn a_failed_task_restarts_after_its_backoff_until_max_restarts() {
        let mut conn = connector(SINK);
        let finished: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut failed = observed(0, "Failed", "h");
        failed.finished_at = Some(finished);
        failed.termination = Some(("ConfigInvalid".into(), "bad".into()));

        let early = plan(
            &conn,
            &[failed.clone()],
            &["h".into()],
            finished + SignedDuration::from_secs(5),
        );
        assert!(early.delete.is_empty(), "not before the backoff");
        assert_eq!(early.requeue_after, Some(Duration::from_secs(5)));
        assert_eq!(early.tasks[0].phase.as_deref(), Some("Failed"));
        assert_eq!(
            early.tasks[0].next_restart_time.as_deref(),
            Some("2026-01-01T00:00:10Z")
        );

        let due = plan(
            &conn,
            &[failed.clone()],
            &["h".into()],
            finished + SignedDuration::from_secs(10),
        );
        assert_eq!(
            due.delete,
            [(
                "orders-task-0".into(),
                DeleteReason::Restart {
                    task_id: 0,
                    restart: 1,
                    after: Duration::from_secs(10)
                }
            )]
        );
        assert_eq!(due.tasks[0].restarts, 1);

        conn.status = Some(ConnectorStatus {
            tasks: vec![TaskStatus {
                id: 0,
                restarts: 3,
                ..Default::default()
            }],
            ..Default::default()
        });
        let exhausted = plan(
            &conn,
            &[failed],
            &["h".into()],
            finished + SignedDuration::from_secs(3600),
        );
        assert!(exhausted.delete.is_empty());
        assert_eq!(
            exhausted.tasks[0].reason.as_deref(),
            Some("MaxRestartsReached")
        );
        let conds = decide_conditions(&conn, Some(&exhausted), None, &Signals::default());
        assert_eq!(
            (conds[2].type_, conds[2].status, conds[2].reason.as_str()),
            (DEGRADED, true, "MaxRestartsReached")
        );
    }

    #[test]
    fn conditions_say_ready_only_when_every_task_runs() {
        let conn = connector(SINK);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let all = plan(
            &conn,
            &[observed(0, "Running", "a"), observed(1, "Running", "b")],
            &["a".into(), "b".into()],
            now,
        );
        let conds = decide_conditions(&conn, Some(&all), None, &Signals::default());
        assert!(
            conds[0].status && !conds[1].status && !conds[2].status,
            "{conds:?}"
        );
        let status = build_status(&conn, Some(&all), None, &Signals::default(), now);
        assert_eq!(status.task_summary.as_deref(), Some("2/2"));

        let half = plan(
            &conn,
            &[observed(0, "Running", "a")],
            &["a".into(), "b".into()],
            now,
        );
        let conds = decide_conditions(&conn, Some(&half), None, &Signals::default());
        assert!(!conds[0].status && conds[1].status, "{conds:?}");

        let problem = Problem::new(
            "SecretNotFound",
            "Secret shop/mongo (spec.mongodb.connectionUriSecretRef) not found",
        );
        let conds = decide_conditions(&conn, None, Some(&problem), &Signals::default());
        assert_eq!(
            (conds[0].status, conds[0].reason.as_str()),
            (false, "SecretNotFound")
        );
    }
    fn lost(uid: &str) -> ObservedPod {
        let mut p = observed(0, "Failed", "h");
        p.uid = Some(uid.into());
        p.termination = Some(("ResumeTokenLost".into(), "resume point gone".into()));
        p.code = Some(286);
        p.code_name = Some("ChangeStreamHistoryLost".into());
        p
    }

    #[test]
    fn partition_names_rotate_from_the_base() {
        assert_eq!(next_partition_name("events", "events"), "events.1");
        assert_eq!(next_partition_name("events", "events.1"), "events.2");
        assert_eq!(next_partition_name("events", "events.9"), "events.10");
        assert_eq!(next_partition_name("a.b", "a.b.3"), "a.b.4");
        let mut conn = connector(SOURCE);
        conn.status = Some(ConnectorStatus {
            offsets: Some(OffsetsStatus {
                partition_name: Some("old-base.4".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            offset_partition_name(&conn),
            "shop-events",
            "a name recorded for another base is stale"
        );
    }

    #[test]
    fn a_lost_resume_token_rotates_once_per_pod() {
        let mut conn = connector(SOURCE);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let offsets = decide_rotation(&conn, &[lost("pod-1")], now).expect("rotates");
        assert_eq!(offsets.partition_name.as_deref(), Some("shop-events.1"));
        let r = &offsets.rotations[0];
        assert_eq!(
            (r.from.as_str(), r.to.as_str(), r.reason.as_str()),
            ("shop-events", "shop-events.1", "ResumeTokenLost")
        );
        assert_eq!(
            (r.code, r.code_name.as_deref()),
            (Some(286), Some("ChangeStreamHistoryLost"))
        );
        assert_eq!(r.pod_uid.as_deref(), Some("pod-1"));

        conn.status = Some(ConnectorStatus {
            offsets: Some(offsets),
            ..Default::default()
        });
        assert_eq!(
            decide_rotation(&conn, &[lost("pod-1")], now),
            None,
            "the same pod seen again (a retried reconcile, a restarted operator) does not rotate again"
        );
        let next = decide_rotation(&conn, &[lost("pod-2")], now).expect("a new loss rotates");
        assert_eq!(next.partition_name.as_deref(), Some("shop-events.2"));
        assert_eq!(next.rotations.len(), 2);
        assert_eq!(
            decide_rotation(&conn, &[observed(0, "Running", "h")], now),
            None
        );
    }

    #[test]
    fn policy_fail_waits_for_the_rotate_annotation() {
        let mut conn = connector(SOURCE);
        conn.spec
            .source
            .as_mut()
            .unwrap()
            .resume_token_recovery
            .policy = RecoveryPolicy::Fail;
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let pods = [lost("pod-1")];
        assert_eq!(decide_rotation(&conn, &pods, now), None);
        let p = plan(
            &conn,
            &pods,
            &["h".into()],
            now + SignedDuration::from_secs(3600),
        );
        assert!(
            p.delete.is_empty(),
            "no restart that would fail the same way"
        );
        let conds = decide_conditions(&conn, Some(&p), None, &Signals::default());
        let degraded = conds.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(
            (degraded.status, degraded.reason.as_str()),
            (true, "ResumeTokenLost")
        );
        assert!(
            degraded
                .message
                .contains("kubectl annotate connector events sluice.dev/rotate-offsets="),
            "{}",
            degraded.message
        );

        conn.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_ROTATE_OFFSETS.into(),
            "1".into(),
        )]));
        let offsets = decide_rotation(&conn, &pods, now).expect("rotates on request");
        assert_eq!(offsets.rotations[0].reason, "Requested");
        assert_eq!(offsets.last_rotate_request.as_deref(), Some("1"));
        conn.status = Some(ConnectorStatus {
            offsets: Some(offsets),
            ..Default::default()
        });
        assert_eq!(
            decide_rotation(&conn, &pods, now),
            None,
            "one rotation per request value"
        );
        let p = plan(&conn, &pods, &["new-config".into()], now);
        assert_eq!(
            p.delete,
            [("orders-task-0".into(), DeleteReason::ConfigChanged)],
            "replaced at once"
        );
    }

    fn sample(uid: &str, errors: i64) -> Sample {
        let mut report: crate::task::metrics::StatusReport = serde_json::from_value(json!({
            "connector": "orders", "task": "0", "running": true, "recordsIn": 5, "recordsOut": 4, "errors": {}
        }))
        .unwrap();
        report.errors.total_record_errors = errors;
        Sample {
            pod_uid: uid.into(),
            report,
            history: Default::default(),
        }
    }

    #[test]
    fn counters_of_a_replaced_task_pod_stay_in_the_totals() {
        let counters = |n| ErrorCounters {
            total_record_errors: n,
            ..Default::default()
        };
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let pods = [observed(0, "Running", "h")];
        let samples = BTreeMap::from([(0, sample("uid-0", 3))]);
        let ended = merge_task_reports(&[], &mut tasks, &pods, &samples, ErrorCounters::default());
        assert_eq!(tasks[0].metrics, Some(counters(3)));
        assert_eq!(
            (tasks[0].records_in, tasks[0].pod_uid.as_deref()),
            (Some(5), Some("uid-0"))
        );
        assert_eq!(totals(&tasks, &ended).total_record_errors, 3);

        // The pod failed with 4 errors in its termination message, then was replaced by uid-9.
        let previous = tasks.clone();
        let mut failed = observed(0, "Failed", "h");
        failed.counters = Some(counters(4));
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let ended = merge_task_reports(&previous, &mut tasks, &[failed], &samples, ended);
        assert_eq!(
            tasks[0].metrics,
            Some(counters(4)),
            "final counters from the termination message"
        );
        let previous = tasks.clone();
        let mut new_pod = observed(0, "Running", "h");
        new_pod.uid = Some("uid-9".into());
        let samples = BTreeMap::from([(0, sample("uid-9", 1))]);
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let ended = merge_task_reports(&previous, &mut tasks, &[new_pod.clone()], &samples, ended);
        assert_eq!(ended.total_record_errors, 4);
        assert_eq!(totals(&tasks, &ended).total_record_errors, 5);
        // Seen again: nothing moves twice.
        let previous = tasks.clone();
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let ended = merge_task_reports(&previous, &mut tasks, &[new_pod], &samples, ended);
        assert_eq!(totals(&tasks, &ended).total_record_errors, 5);
        // Stopped: no tasks wanted, the last counters join the ended ones.
        let ended = merge_task_reports(&tasks, &mut [], &[], &samples, ended);
        assert_eq!(ended.total_record_errors, 5);
    }

    #[test]
    fn rising_record_errors_make_a_message_per_task() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let mut s = sample("uid-0", 12);
        s.history = [(now - SignedDuration::from_secs(60), 0, 0), (now, 12, 12)].into();
        let samples = BTreeMap::from([(0, s)]);
        assert_eq!(
            record_errors_message(&samples, now, Duration::from_secs(300), Some("orders-dlq"))
                .as_deref(),
            Some("task 0: 12 record errors in the last 5m, 12 sent to DLQ orders-dlq")
        );
        let later = now + SignedDuration::from_secs(600);
        assert_eq!(
            record_errors_message(&samples, later, Duration::from_secs(300), None),
            None
        );
    }

    #[test]
    fn a_token_older_than_half_the_oplog_window_is_at_risk() {
        use crate::crd::connector::ResumeTokenStatus;
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let task = |token: &str| TaskStatus {
            resume_token: Some(ResumeTokenStatus {
                time: Some(token.into()),
                oplog_first_time: Some("2026-01-01T00:00:00Z".into()),
                oplog_last_time: Some("2026-01-01T01:00:00Z".into()),
                oplog_window_unknown: None,
            }),
            ..Default::default()
        };
        let (fresh, flips) = resume_token_risk(Some(&task("2026-01-01T00:50:00Z")), now);
        assert_eq!((fresh.status, fresh.unknown), (false, false));
        assert_eq!(flips, Some(Duration::from_secs(20 * 60 + 1)));
        let (old, _) = resume_token_risk(Some(&task("2026-01-01T00:20:00Z")), now);
        assert!(old.status, "{}", old.message);
        assert!(
            old.message.contains("40m old") && old.message.contains("1h"),
            "{}",
            old.message
        );
        let mut unknown = task("2026-01-01T00:20:00Z");
        unknown.resume_token.as_mut().unwrap().oplog_first_time = None;
        unknown.resume_token.as_mut().unwrap().oplog_window_unknown = Some("not authorized".into());
        let (c, _) = resume_token_risk(Some(&unknown), now);
        assert!(c.unknown && c.message.contains("not authorized"), "{c:?}");
        let mut single = task("2026-01-01T00:20:00Z");
        single.resume_token.as_mut().unwrap().oplog_first_time =
            Some("2026-01-01T01:00:00Z".into());
        let (c, _) = resume_token_risk(Some(&single), now);
        assert!(c.unknown && c.message.contains("both at"), "{c:?}");
        assert!(
            old.message.contains("1h (2026"),
            "one space: {}",
            old.message
        );
    }
}
