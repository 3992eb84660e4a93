//! The pod planner (pure): from the spec, the task pods as observed, the desired config hashes and the
//! time, what happens to each task's pod — create, replace (config changed), restart after a backoff, remove
//! — and the task statuses that follow.
//!
//! Pods use `restartPolicy: Never`; the operator itself restarts a failed task after a backoff, so it can
//! change the task's config between runs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::controller::pod_status::{self, PodPhase};
use crate::crd::Connector;
use crate::crd::connector::{
    ConnectorState, ConnectorType, ErrorCounters, PartitionTotals, RestartSpec, TaskStatus,
};
use crate::names;
use crate::wire::TerminationReason;

/// The phases of a task in `status.tasks`.
pub mod task_phase {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const STOPPING: &str = "Stopping";
    pub const RESTARTING: &str = "Restarting";
    pub const FAILED: &str = "Failed";
}

/// The reasons of a task in `status.tasks` that the planner gives (a failed task's reason is its
/// termination reason).
pub mod task_reason {
    pub const CREATING: &str = "Creating";
    pub const RESTARTING: &str = "Restarting";
    pub const POD_TERMINATING: &str = "PodTerminating";
    pub const CONFIG_CHANGED: &str = "ConfigChanged";
    pub const NOT_READY: &str = "NotReady";
    pub const MAX_RESTARTS_REACHED: &str = "MaxRestartsReached";
}

/// The number of tasks that should run: none unless running; a source runs one change stream.
pub fn desired_tasks(conn: &Connector) -> u32 {
    match (conn.spec.state, conn.spec.connector_type) {
        (ConnectorState::Running, ConnectorType::MongodbSource) => 1,
        (ConnectorState::Running, ConnectorType::MongodbSink) => conn.spec.tasks_max.max(1) as u32,
        _ => 0,
    }
}

/// A task pod as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    pub task_id: Option<u32>,
    pub config_hash: Option<String>,
    pub deleting: bool,
    pub phase: PodPhase,
    pub ready: bool,
    /// When the task's container ended (for a Failed or Succeeded pod).
    pub finished_at: Option<Timestamp>,
    /// The termination reason and message, or the kubelet's reason and the exit code.
    pub termination: Option<(TerminationReason, String)>,
    pub uid: Option<String>,
    /// From a task's termination message: the MongoDB error code and its name.
    pub code: Option<i32>,
    pub code_name: Option<String>,
    /// From a task's termination message: its final error counters and ledgers.
    pub counters: Option<ErrorCounters>,
    pub partitions: BTreeMap<String, PartitionTotals>,
}

impl ObservedPod {
    pub fn from_pod(pod: &Pod) -> Self {
        let ended = pod_status::ended(pod);
        let message = ended.as_ref().and_then(|e| e.termination.clone());
        Self {
            name: pod.name_any(),
            task_id: pod
                .labels()
                .get(names::LABEL_TASK)
                .and_then(|v| v.parse().ok()),
            config_hash: pod
                .annotations()
                .get(names::ANNOTATION_CONFIG_HASH)
                .cloned(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            phase: PodPhase::of(pod),
            ready: pod_status::is_ready(pod),
            finished_at: ended.as_ref().and_then(|e| e.finished_at),
            termination: ended.map(|e| (e.reason, e.message)),
            uid: pod.uid(),
            code: message.as_ref().and_then(|m| m.code),
            code_name: message.as_ref().and_then(|m| m.code_name.clone()),
            counters: message.as_ref().and_then(|m| m.counters.clone()),
            partitions: message.map(|m| m.partitions).unwrap_or_default(),
        }
    }

    /// A source task that ended because MongoDB no longer has its resume point.
    pub fn lost_resume_token(&self) -> bool {
        self.phase.is_terminal()
            && self
                .termination
                .as_ref()
                .is_some_and(|(reason, _)| *reason == TerminationReason::ResumeTokenLost)
    }
}

/// What to do with the pods, and the task statuses that follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each input partition's error counters (status `partitionTotals`).
    pub partition_totals: BTreeMap<String, PartitionTotals>,
    pub create: Vec<u32>,
    /// Pods to delete, with why.
    pub delete: Vec<(String, DeleteReason)>,
    pub tasks: Vec<TaskStatus>,
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// The tasks whose pods are created now: missing ones, and failed ones restarted (a failed pod is gone
    /// at once — terminal pods have no grace period — so its replacement starts in the same reconcile).
    pub fn pods_to_create(&self) -> Vec<u32> {
        let restarted = self.delete.iter().filter_map(|(_, why)| match why {
            DeleteReason::Restart { task_id, .. } => Some(*task_id),
            _ => None,
        });
        self.create.iter().copied().chain(restarted).collect()
    }
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

/// Wait before restart number `restarts + 1`: the initial backoff doubled per restart, capped.
pub fn restart_delay(restarts: i32, spec: &RestartSpec) -> Duration {
    let initial = spec.backoff_initial_seconds.max(1) as u64;
    let max = spec.backoff_max_seconds.max(1) as u64;
    let factor = 1u64
        .checked_shl(restarts.clamp(0, 62) as u32)
        .unwrap_or(u64::MAX);
    Duration::from_secs(initial.saturating_mul(factor).min(max))
}

/// A failed task: restarted after its backoff (then `Restarting`), replaced at once when its config
/// changed, or left failed — at `maxRestarts`, or after a lost resume token (a rotation gives it a new
/// config; another start with this one would fail the same way).
fn plan_failed(
    conn: &Connector,
    p: &ObservedPod,
    hash: &str,
    task: &mut TaskStatus,
    now: Timestamp,
    out: &mut Plan,
) {
    let (id, restarts, restart) = (task.id as u32, task.restarts, &conn.spec.restart);
    let (reason, message) = p.termination.clone().unwrap_or_else(|| {
        (
            TerminationReason::Other("Error".into()),
            format!("pod {}", p.phase.as_str()),
        )
    });
    task.phase = Some(task_phase::FAILED.into());
    task.reason = Some(reason.as_str().into());
    task.message = Some(message);
    let finished = p.finished_at.unwrap_or(now);
    if restart.max_restarts.is_some_and(|max| restarts >= max) {
        task.reason = Some(task_reason::MAX_RESTARTS_REACHED.into());
        task.message = Some(format!(
            "task {id} failed {} times; restarts stopped at spec.restart.maxRestarts={}: {}",
            restarts + 1,
            restarts,
            task.message.clone().unwrap_or_default()
        ));
    } else if p.config_hash.as_deref() != Some(hash) {
        // A new config (a rotated partition name, too) deserves a fresh start right away.
        out.delete
            .push((p.name.clone(), DeleteReason::ConfigChanged));
    } else if p.lost_resume_token() {
        // Another start with this config would fail the same way: a rotation replaces the pod (its config
        // changes), or, under policy fail or past maxRotations, a person decides.
    } else {
        let delay = restart_delay(restarts, restart);
        let due = finished + SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
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
            task.phase = Some(task_phase::RESTARTING.into());
        } else {
            task.next_restart_time = Some(due.to_string());
            let wait = due.duration_since(now).unsigned_abs();
            out.requeue_after = Some(out.requeue_after.map_or(wait, |r| r.min(wait)));
        }
    }
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
    let mut out = Plan::default();
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
            pod: Some(names::task_pod(&conn.name_any(), id)),
            restarts,
            metrics: prev.as_ref().and_then(|t| t.metrics.clone()),
            ..Default::default()
        };
        let set = |task: &mut TaskStatus, phase: &str, reason: Option<&str>| {
            task.phase = Some(phase.into());
            task.reason = reason.map(String::from);
        };
        let pod = pods.iter().find(|p| p.task_id == Some(id));
        match pod {
            None => {
                out.create.push(id);
                let reason = if restarts > 0 {
                    task_reason::RESTARTING
                } else {
                    task_reason::CREATING
                };
                set(&mut task, task_phase::PENDING, Some(reason));
            }
            Some(p) if p.deleting => {
                set(
                    &mut task,
                    task_phase::STOPPING,
                    Some(task_reason::POD_TERMINATING),
                );
            }
            Some(p)
                if p.config_hash.as_deref() != Some(hash.as_str()) && !p.phase.is_terminal() =>
            {
                out.delete
                    .push((p.name.clone(), DeleteReason::ConfigChanged));
                set(
                    &mut task,
                    task_phase::STOPPING,
                    Some(task_reason::CONFIG_CHANGED),
                );
            }
            Some(p) if p.phase.is_terminal() => {
                plan_failed(conn, p, hash, &mut task, now, &mut out);
            }
            Some(p) => {
                let running = p.phase == PodPhase::Running;
                let phase = if running && p.ready {
                    task_phase::RUNNING
                } else {
                    task_phase::PENDING
                };
                let reason = (running && !p.ready).then_some(task_reason::NOT_READY);
                set(&mut task, phase, reason);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::crd::ConnectorStatus;

    pub fn connector(yaml: &str) -> Connector {
        let mut conn: Connector = serde_yaml::from_str(yaml).unwrap();
        conn.metadata.uid = Some("uid-1".into());
        conn.metadata.namespace = Some("shop".into());
        conn
    }

    pub const SINK: &str = r#"
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

    pub const SOURCE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Connector
metadata: {name: events}
spec:
  type: mongodb-source
  kafka: {bootstrapServers: "kafka:9092"}
  mongodb: {connectionUriSecretRef: {name: mongo, key: uri}, database: shop}
  source: {topicPrefix: cdc, offsets: {partitionName: shop-events}, resumeTokenRecovery: {startupModeAfterRotation: copyExisting}}
"#;

    pub fn observed(id: u32, phase: PodPhase, hash: &str) -> ObservedPod {
        ObservedPod {
            name: format!("orders-task-{id}"),
            task_id: Some(id),
            config_hash: Some(hash.into()),
            deleting: false,
            phase,
            ready: phase == PodPhase::Running,
            finished_at: None,
            termination: None,
            uid: Some(format!("uid-{id}")),
            ..Default::default()
        }
    }

    /// Task 0's pod, failed at `finished` with a config error.
    pub fn failed_at(finished: Timestamp) -> ObservedPod {
        let mut failed = observed(0, PodPhase::Failed, "h");
        failed.finished_at = Some(finished);
        failed.termination = Some((TerminationReason::ConfigInvalid, "bad".into()));
        failed
    }

    /// A sink whose task 0 failed an hour ago after 3 restarts, its `maxRestarts`, and the plan for it.
    pub fn restarts_exhausted() -> (Connector, Plan) {
        let mut conn = connector(SINK);
        let finished: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
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
            &[failed_at(finished)],
            &["h".into()],
            finished + SignedDuration::from_secs(3600),
        );
        (conn, exhausted)
    }

    pub fn lost(uid: &str) -> ObservedPod {
        let mut p = observed(0, PodPhase::Failed, "h");
        p.uid = Some(uid.into());
        p.termination = Some((
            TerminationReason::ResumeTokenLost,
            "resume point gone".into(),
        ));
        p.code = Some(286);
        p.code_name = Some("ChangeStreamHistoryLost".into());
        p
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

    #[test]
    fn the_plan_creates_missing_replaces_changed_and_removes_unwanted_pods() {
        let conn = connector(SINK);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let pods = [
            observed(0, PodPhase::Running, "old"),
            observed(5, PodPhase::Running, "h"),
        ];
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
        let conn = connector(SINK);
        let finished: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let failed = failed_at(finished);

        let early = plan(
            &conn,
            std::slice::from_ref(&failed),
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
            std::slice::from_ref(&failed),
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
        assert_eq!(due.pods_to_create(), [0], "restarted at once");

        let (_, exhausted) = restarts_exhausted();
        assert!(exhausted.delete.is_empty());
        assert_eq!(
            exhausted.tasks[0].reason.as_deref(),
            Some("MaxRestartsReached")
        );
    }
}
