//! The operator's own metrics (reconciles by controller and outcome, their durations) and its HTTP endpoints:
//! `/metrics` (Prometheus text), `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::ConnectorStatus;
use k8s_openapi::jiff::Timestamp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `connector` or `deadletterqueue`.
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub namespace: String,
    pub connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub namespace: String,
    pub connector: String,
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub namespace: String,
    pub dead_letter_queue: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    ready: AtomicBool,
    /// 1 while this replica holds the leader Lease (and reconciles), else 0.
    leader: Gauge,
    /// What the leader last wrote into each Connector's and DeadLetterQueue's status, for dashboards and
    /// alerts (`charts/sluice/files/`): no series on a standby replica.
    connector_ready: Family<ConnectorLabels, Gauge>,
    task_restarts: Family<TaskLabels, Gauge>,
    last_rotation: Family<ConnectorLabels, Gauge>,
    resume_token_age: Family<ConnectorLabels, FloatGauge>,
    oplog_window: Family<ConnectorLabels, FloatGauge>,
    dead_letter_depth: Family<QueueLabels, Gauge>,
    /// The task ids each Connector's series were made for (to remove them with the Connector).
    tasks_seen: std::sync::Mutex<
        std::collections::HashMap<ConnectorLabels, std::collections::BTreeSet<String>>,
    >,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            durations.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, 0 while it stands by",
            leader.clone(),
        );
        let connector_ready = Family::<ConnectorLabels, Gauge>::default();
        registry.register(
            "connector_ready",
            "1 while the Connector's Ready condition is True, else 0",
            connector_ready.clone(),
        );
        let task_restarts = Family::<TaskLabels, Gauge>::default();
        registry.register(
            "task_restarts",
            "Restarts of each task the operator made (status.tasks[].restarts)",
            task_restarts.clone(),
        );
        let last_rotation = Family::<ConnectorLabels, Gauge>::default();
        registry.register(
            "offset_last_rotation_timestamp_seconds",
            "When a source's offset partition name was last rotated (status.offsets.rotations)",
            last_rotation.clone(),
        );
        let resume_token_age = Family::<ConnectorLabels, FloatGauge>::default();
        registry.register(
            "resume_token_age_seconds",
            "How old the cluster time of a source's stored resume token is",
            resume_token_age.clone(),
        );
        let oplog_window = Family::<ConnectorLabels, FloatGauge>::default();
        registry.register(
            "oplog_window_seconds",
            "The oplog's window (its first to its last entry) a source task read",
            oplog_window.clone(),
        );
        let dead_letter_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "dead_letter_queue_depth",
            "Records in a DeadLetterQueue's topic (end minus start offsets)",
            dead_letter_depth.clone(),
        );
        Self {
            registry,
            reconciles,
            durations,
            ready: AtomicBool::new(false),
            leader,
            connector_ready,
            task_restarts,
            last_rotation,
            resume_token_age,
            oplog_window,
            dead_letter_depth,
            tasks_seen: Default::default(),
        }
    }
}

impl Metrics {
    pub fn observe(&self, controller: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.durations
            .get_or_create(&ControllerLabel { controller })
            .observe(took.as_secs_f64());
    }

    /// Ready once this replica reaches the API server: a standby replica is healthy too (leadership is
    /// not readiness), so a rolling update's new pod becomes Ready while the old one still leads.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether this replica leads now (`sluice_operator_leader`, and `/readyz`'s text).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The series of a Connector from the status this reconcile wrote (`now`: the reconcile's clock).
    pub fn observe_connector(
        &self,
        namespace: &str,
        connector: &str,
        status: &ConnectorStatus,
        now: Timestamp,
    ) {
        let labels = ConnectorLabels {
            namespace: namespace.into(),
            connector: connector.into(),
        };
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == super::conditions::READY && c.status == "True");
        self.connector_ready
            .get_or_create(&labels)
            .set(i64::from(ready));
        let mut seen = self.tasks_seen.lock().unwrap_or_else(|e| e.into_inner());
        let ids = seen.entry(labels.clone()).or_default();
        for task in &status.tasks {
            ids.insert(task.id.to_string());
            self.task_restarts
                .get_or_create(&TaskLabels {
                    namespace: namespace.into(),
                    connector: connector.into(),
                    task: task.id.to_string(),
                })
                .set(i64::from(task.restarts));
        }
        drop(seen);
        let parse = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
        if let Some(last) = status
            .offsets
            .as_ref()
            .and_then(|o| o.rotations.last())
            .and_then(|r| r.time.parse::<Timestamp>().ok())
        {
            self.last_rotation
                .get_or_create(&labels)
                .set(last.as_second());
        }
        let token = status.tasks.first().and_then(|t| t.resume_token.as_ref());
        if let Some(time) = token.and_then(|r| parse(&r.time)) {
            let age = now.duration_since(time).as_secs_f64().max(0.0);
            self.resume_token_age.get_or_create(&labels).set(age);
        }
        if let Some((first, last)) =
            token.and_then(|r| Some((parse(&r.oplog_first_time)?, parse(&r.oplog_last_time)?)))
        {
            let window = last.duration_since(first).as_secs_f64().max(0.0);
            self.oplog_window.get_or_create(&labels).set(window);
        }
    }

    /// A deleted Connector's series go.
    pub fn forget_connector(&self, namespace: &str, connector: &str) {
        let labels = ConnectorLabels {
            namespace: namespace.into(),
            connector: connector.into(),
        };
        for family in [&self.connector_ready, &self.last_rotation] {
            family.remove(&labels);
        }
        for family in [&self.resume_token_age, &self.oplog_window] {
            family.remove(&labels);
        }
        let tasks = self
            .tasks_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&labels)
            .unwrap_or_default();
        for task in tasks {
            self.task_restarts.remove(&TaskLabels {
                namespace: namespace.into(),
                connector: connector.into(),
                task,
            });
        }
    }

    /// A DeadLetterQueue's depth, as its inspection last read it.
    pub fn observe_dead_letter_queue(&self, namespace: &str, name: &str, depth: i64) {
        self.dead_letter_depth
            .get_or_create(&QueueLabels {
                namespace: namespace.into(),
                dead_letter_queue: name.into(),
            })
            .set(depth);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match (metrics.ready.load(Ordering::SeqCst), metrics.leader.get()) {
        (true, 1) => (StatusCode::OK, "ready: leading"),
        (true, _) => (StatusCode::OK, "ready: standing by for the leader Lease"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
    }
}
