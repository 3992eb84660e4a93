//! Every write of a Connector reconcile, in the order the reconcile makes them: offsets decisions (guarded by
//! the resourceVersion the reconcile read, so a stale view can't apply one twice), the task ConfigMap, the
//! pod changes the plan asks for, Events, and the status.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use tracing::info;

use super::build::Desired;
use super::offsets::{
    ResetDecision, ResetTarget, decide_reset, record_reset, rotation_reason, startup_mode,
};
use super::plan::{DeleteReason, ObservedPod, Plan, task_phase};
use super::status::outage_of_reason;
use super::validate::Validated;
use crate::controller::events::{EventType, reason};
use crate::controller::{Context, Problem, Result, apply, conditions};
use crate::crd::connector::OffsetsStatus;
use crate::crd::{Connector, ConnectorStatus};
use crate::kafka;
use crate::names;
use crate::wire::TerminationReason;

fn connectors(ctx: &Context, conn: &Connector) -> Api<Connector> {
    Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default())
}

async fn publish(ctx: &Context, conn: &Connector, type_: EventType, reason: &str, note: String) {
    ctx.events.about(conn, type_, reason, &note).await;
}

/// A spec that can't be used: a Warning Event when the problem is new, and the status that says so.
pub async fn report_problem(
    ctx: &Context,
    conn: &Connector,
    problem: &Problem,
    status: ConnectorStatus,
) -> Result<()> {
    if ready_reason(conn).as_deref() != Some(problem.reason) {
        publish(
            ctx,
            conn,
            EventType::Warning,
            problem.reason,
            problem.message.clone(),
        )
        .await;
    }
    write_status(ctx, conn, status).await
}

/// After a problem: an Event that the spec resolves now.
pub async fn announce_resolved(ctx: &Context, conn: &Connector) {
    if ready_reason(conn).is_some_and(|r| !conditions::reason::RESOLVED.contains(&r.as_str())) {
        publish(
            ctx,
            conn,
            EventType::Normal,
            reason::CONFIG_VALID,
            "the spec's references resolve now".into(),
        )
        .await;
    }
}

fn ready_reason(conn: &Connector) -> Option<String> {
    conn.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| c.reason.clone())
}

/// What a guarded offsets write does to the ledgers' totals.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ledgers {
    Keep,
    /// Offsets were deleted: the tasks' ledgers start again from zero, and so do the totals.
    StartAgain,
}

/// Writes `status.offsets` only if the Connector is still at the resourceVersion this reconcile read (a
/// conflict fails the reconcile, which then decides again from fresh state); the rest of status stays as
/// read. Returns the stored Connector.
async fn write_offsets_guarded(
    ctx: &Context,
    conn: &Connector,
    offsets: &OffsetsStatus,
    ledgers: Ledgers,
) -> Result<Connector> {
    let mut status = conn.status.clone().unwrap_or_default();
    status.offsets = Some(offsets.clone());
    if ledgers == Ledgers::StartAgain {
        status.partition_totals.clear();
        status.totals = None;
    }
    apply::apply_status(
        &connectors(ctx, conn),
        &conn.name_any(),
        &status,
        conn.resource_version(),
    )
    .await
}

/// Writes a rotation to status, then tells people with Events. Returns the Connector as stored.
pub async fn record_rotation(
    ctx: &Context,
    conn: &Connector,
    offsets: OffsetsStatus,
    pods: &[ObservedPod],
) -> Result<Connector> {
    let Some(rotation) = offsets.rotations.last().cloned() else {
        return Ok(conn.clone());
    };
    let stored = write_offsets_guarded(ctx, conn, &offsets, Ledgers::Keep).await?;
    info!(from = %rotation.from, to = %rotation.to, reason = %rotation.reason, "offset partition rotated");
    if rotation.reason == rotation_reason::RESUME_TOKEN_LOST {
        let pod = pods
            .iter()
            .find(|p| p.uid == rotation.pod_uid)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        publish(
            ctx,
            conn,
            EventType::Warning,
            reason::RESUME_TOKEN_LOST,
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
    let why = if rotation.reason == rotation_reason::REQUESTED {
        format!(
            " on request (annotation {}={})",
            names::ANNOTATION_ROTATE_OFFSETS,
            offsets.last_rotate_request.clone().unwrap_or_default()
        )
    } else {
        String::new()
    };
    publish(
        ctx,
        conn,
        EventType::Normal,
        reason::OFFSET_PARTITION_ROTATED,
        format!(
            "offset partition {} rotated to {}{why}; the task restarts with startup mode {mode}",
            rotation.from, rotation.to
        ),
    )
    .await;
    Ok(stored)
}

/// Deletes the Connector's offsets when the reset-offsets annotation asks for it and the Connector is
/// stopped with no task pod left. Returns the Connector as stored after a reset.
pub async fn reset_offsets(
    ctx: &Context,
    conn: &Connector,
    valid: &Validated,
    pods: &[ObservedPod],
    now: Timestamp,
) -> Result<Option<Connector>> {
    let (request, target) = match decide_reset(conn, pods) {
        ResetDecision::None => return Ok(None),
        ResetDecision::Pending(request) => {
            publish(
                ctx,
                conn,
                EventType::Warning,
                reason::OFFSET_RESET_PENDING,
                format!(
                    "offsets are reset only while the Connector is stopped and no task pod is left: set \
                     spec.state to stopped ({}={request} stays pending)",
                    names::ANNOTATION_RESET_OFFSETS
                ),
            )
            .await;
            return Ok(None);
        }
        ResetDecision::Due { request, target } => (request, target),
    };
    let mut config = valid.kafka.producer.clone();
    config.set("client.id", names::OPERATOR_CLIENT_ID);
    match &target {
        ResetTarget::SourceOffset { topic, key, .. } => {
            kafka::admin::write_tombstone(&config, topic, key).await?;
        }
        ResetTarget::ConsumerGroup(group) => {
            let admin = kafka::admin::admin(&config, names::OPERATOR_CLIENT_ID)?;
            kafka::admin::delete_consumer_group(&admin, group).await?;
        }
    }
    let offsets = record_reset(conn, &request, &target, now);
    let stored = write_offsets_guarded(ctx, conn, &offsets, Ledgers::StartAgain).await?;
    publish(
        ctx,
        conn,
        EventType::Normal,
        reason::OFFSETS_RESET,
        format!(
            "offsets deleted: {}; the next start follows the startup mode",
            target.describe()
        ),
    )
    .await;
    Ok(Some(stored))
}

/// Applies the task ConfigMap.
pub async fn apply_config_map(ctx: &Context, conn: &Connector, desired: &Desired) -> Result<()> {
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    apply::apply(&api, &desired.config_map.name_any(), &desired.config_map).await?;
    Ok(())
}

/// Deletes and creates the pods the plan asks for, with an Event for each change.
pub async fn apply_pods(
    ctx: &Context,
    conn: &Connector,
    plan: &Plan,
    desired: &Desired,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    for (pod, why) in &plan.delete {
        apply::delete(&pods, pod).await?;
        let (reason, note) = match why {
            DeleteReason::ConfigChanged => (
                reason::TASK_REPLACED,
                format!("the task's config changed: replacing pod {pod}"),
            ),
            DeleteReason::NotWanted => (
                reason::TASK_REMOVED,
                format!(
                    "removed pod {pod} (spec.state {:?}, {} tasks wanted)",
                    conn.spec.state,
                    desired.pods.len()
                ),
            ),
            // One text per task, so repeats fold into one Event's count (the restart count and
            // backoff are in status.tasks[] and the operator's log).
            DeleteReason::Restart {
                task_id,
                restart,
                after,
            } => {
                info!(
                    pod,
                    task_id,
                    restart,
                    backoff_seconds = after.as_secs(),
                    "restarting task"
                );
                (
                    reason::TASK_RESTARTED,
                    format!(
                        "task {task_id} failed: restarted after the spec.restart backoff \
                         (restarts so far in status.tasks[].restarts)"
                    ),
                )
            }
        };
        info!(pod, reason, "deleting task pod");
        publish(ctx, conn, EventType::Normal, reason, note).await;
    }
    let mut created = Vec::new();
    for id in plan.pods_to_create() {
        if let Some(p) = apply::create(&pods, &desired.pods[id as usize]).await? {
            created.push(p.name_any());
        }
    }
    if !created.is_empty() {
        publish(
            ctx,
            conn,
            EventType::Normal,
            reason::TASKS_CREATED,
            format!("created task pods {}", created.join(", ")),
        )
        .await;
    }
    Ok(())
}

/// A Warning Event for every task that failed since the last status (`TaskFenced` for an exactly-once
/// source that a newer instance of itself fenced, else `TaskFailed`).
pub async fn announce_failures(ctx: &Context, conn: &Connector, plan: &Plan) {
    let old = conn.status.clone().unwrap_or_default().tasks;
    for task in &plan.tasks {
        let failed =
            |t: &crate::crd::connector::TaskStatus| t.phase.as_deref() == Some(task_phase::FAILED);
        let was_failed = old.iter().any(|t| t.id == task.id && failed(t));
        if failed(task) && !was_failed {
            let why = format!(
                "task {} failed ({}): {}",
                task.id,
                task.reason.clone().unwrap_or_default(),
                task.message.clone().unwrap_or_default()
            );
            let fenced = task.reason.as_deref() == Some(TerminationReason::TaskFenced.as_str());
            let event = if fenced {
                reason::TASK_FENCED
            } else {
                reason::TASK_FAILED
            };
            publish(ctx, conn, EventType::Warning, event, why).await;
        }
    }
}

/// Events when a task starts or stops waiting for an unavailable dependency (the `Degraded` reason moves
/// to or from `MongoDBUnavailable` / `KafkaUnavailable`).
pub async fn announce_outages(ctx: &Context, conn: &Connector, next: &ConnectorStatus) {
    let degraded = |status: Option<&ConnectorStatus>| {
        status?
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::DEGRADED)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let before = degraded(conn.status.as_ref()).map(|(r, _)| r);
    let after = degraded(Some(next));
    match (before, after) {
        (before, Some((now, message)))
            if outage_of_reason(&now).is_some() && before.as_deref() != Some(now.as_str()) =>
        {
            publish(ctx, conn, EventType::Warning, &now, message).await;
        }
        (Some(was), after) if after.as_ref().is_none_or(|(r, _)| r != &was) => {
            if let Some(outage) = outage_of_reason(&was) {
                let note = format!(
                    "{} is available again; the tasks go on where they stopped",
                    outage.dependency
                );
                publish(ctx, conn, EventType::Normal, outage.available, note).await;
            }
        }
        _ => {}
    }
}

/// Writes status with server-side apply, only when it differs from what is stored.
pub async fn write_status(ctx: &Context, conn: &Connector, status: ConnectorStatus) -> Result<()> {
    if conn.status.as_ref() == Some(&status) {
        return Ok(());
    }
    apply::apply_status(&connectors(ctx, conn), &conn.name_any(), &status, None).await?;
    Ok(())
}
