//! The Connector reconciler: a ConfigMap with every task's rendered config and one Pod per task.
//!
//! A reconcile is a fixed list of steps, each in its own module:
//! 1. [`dereference`]: read what the spec points at (Secrets, DeadLetterQueue, topics), the task pods and
//!    the tasks' latest reports ([`task_poller`] keeps those).
//! 2. [`validate`] (pure): the spec resolves, or the first [`super::Problem`] — `Ready=False` and a Warning Event.
//! 3. [`offsets`] (pure): a rotation of the offset partition name or an offset reset that is due; their
//!    writes come first, so the replacement task gets the new partition name.
//! 4. [`build`] (pure): the ConfigMap and the Pods with their config hashes.
//! 5. [`plan`] (pure): what happens to each task's pod (create, replace, restart after a backoff, remove);
//!    [`counters`] (pure) merges the tasks' counters and the partitions' ledgers.
//! 6. [`apply`]: the ConfigMap, the pod changes, Events.
//! 7. [`status`] (pure) decides the conditions; [`apply`] writes the status when it changed.

pub mod apply;
pub mod build;
pub mod counters;
pub mod dereference;
pub mod offsets;
pub mod plan;
pub mod status;
pub mod task_poller;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::{Context, Error, RETRY_AFTER_ERROR, Result};
use crate::crd::Connector;
use crate::names::LABEL_CONNECTOR;
use status::Signals;

/// How soon a Connector with a [`super::Problem`] is looked at again.
const RETRY_PROBLEM: Duration = Duration::from_secs(10);
/// How soon a Connector is looked at again when nothing asks for sooner.
const RESYNC: Duration = Duration::from_secs(300);
const CONTROLLER: &str = "connector";

/// One reconcile of one Connector.
#[tracing::instrument(skip_all, fields(connector = %conn.name_any(), namespace = conn.namespace().unwrap_or_default()))]
pub async fn reconcile(conn: Arc<Connector>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_fresh(&conn, &ctx).await;
    ctx.metrics
        .observe(CONTROLLER, result.is_ok(), started.elapsed());
    result
}

/// Decides from what the API server has now, not from the watch cache, which may not yet show the status
/// this operator wrote a moment ago (a restart counted twice, or not at all).
async fn reconcile_fresh(conn: &Connector, ctx: &Context) -> Result<Action> {
    let ns = conn
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(conn.name_any()))?;
    let api: Api<Connector> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_opt(&conn.name_any()).await? {
        Some(fresh) => reconcile_connector(&fresh, &ns, ctx).await,
        None => {
            ctx.metrics.forget_connector(&ns, &conn.name_any());
            Ok(Action::await_change())
        }
    }
}

async fn reconcile_connector(conn: &Connector, ns: &str, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    let found = dereference::dereference(ctx, conn, ns, now).await?;
    let valid = match validate::validate(conn, &found) {
        Ok(valid) => valid,
        Err(problem) => {
            let status = status::build_status(conn, None, Some(&problem), &Signals::default(), now);
            ctx.metrics
                .observe_connector(ns, &conn.name_any(), &status, now);
            apply::report_problem(ctx, conn, &problem, status).await?;
            return Ok(Action::requeue(RETRY_PROBLEM));
        }
    };
    apply::announce_resolved(ctx, conn).await;

    let mut conn = conn.clone();
    let (mut rotation_due, mut rotation_loop) = (None, None);
    match offsets::decide_rotation(&conn, &found.pods, &found.partitions_in_use, now) {
        offsets::Rotation::Now(rotated) => {
            conn = apply::record_rotation(ctx, &conn, rotated, &found.pods).await?;
        }
        offsets::Rotation::After(due) => {
            rotation_due = Some(due.duration_since(now).unsigned_abs())
        }
        offsets::Rotation::Loop(history) => rotation_loop = Some(history),
        offsets::Rotation::None => {}
    }
    if let Some(reset) = apply::reset_offsets(ctx, &conn, &valid, &found.pods, now).await? {
        conn = reset;
    }
    let conn = &conn;

    let desired = build::build(conn, &valid.resolved, &ctx.config.pods)?;
    let mut plan = plan::plan(conn, &found.pods, &desired.hashes, now);
    let old = conn.status.clone().unwrap_or_default();
    counters::merge_task_reports(&old.tasks, &mut plan.tasks, &found.pods, &found.samples);
    plan.partition_totals =
        counters::merge_partition_totals(old.partition_totals, &found.pods, &found.samples);
    let (mut signals, signals_requeue) = status::signals(
        conn,
        &plan,
        &found.samples,
        valid.resolved.dead_letter_destination().as_deref(),
        now,
        ctx.config.record_errors_window,
        ctx.config.task_status_interval,
    );
    signals.rotation_loop = rotation_loop;

    apply::apply_config_map(ctx, conn, &desired).await?;
    apply::apply_pods(ctx, conn, &plan, &desired).await?;
    apply::announce_failures(ctx, conn, &plan).await;
    let status = status::build_status(conn, Some(&plan), None, &signals, now);
    ctx.metrics
        .observe_connector(ns, &conn.name_any(), &status, now);
    apply::announce_outages(ctx, conn, &status).await;
    apply::write_status(ctx, conn, status).await?;

    let requeue = [plan.requeue_after, signals_requeue, rotation_due]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RESYNC);
    Ok(Action::requeue(requeue))
}

fn error_policy(conn: Arc<Connector>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(connector = %conn.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(RETRY_AFTER_ERROR)
}

/// Runs the Connector controller until shutdown. `reports_changed` names Connectors whose task reports
/// changed (their counters go into status).
pub async fn run(
    ctx: Arc<Context>,
    reports_changed: tokio::sync::mpsc::Receiver<ObjectRef<Connector>>,
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
