//! The operator: one reconciler per resource ([`connector`], [`dead_letter_queue`]), sharing a [`Context`].
//!
//! Reconcilers follow the same steps: dereference (read what the spec points at) → validate (pure) → build
//! the desired objects (pure, unit-tested) → apply them → write status when it changed. What they share:
//!
//! - [`apply`]: server-side apply, guarded status writes, deletes and creates that tolerate races.
//! - [`pod_template`]: the one restricted pod template of task and replay pods; [`pod_status`] reads them.
//! - [`secrets`]: the Secrets a spec references, read once and looked up without I/O.
//! - [`conditions`]: condition types, reasons, and merging without losing transition times.
//! - [`events`]: Events as client-go's recorder makes them.
//! - [`metrics`]: the operator's own metrics and HTTP endpoints; [`leader`]: leader election.

pub mod apply;
pub mod conditions;
pub mod connector;
pub mod dead_letter_queue;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod pod_status;
pub mod pod_template;
pub mod secrets;

pub use conditions::reason;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// The operator's settings.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Image and ServiceAccount of task and replay pods.
    pub pods: pod_template::PodDefaults,
    /// Watch only this namespace (namespaced mode); `None` watches all.
    pub namespace: Option<String>,
    /// How often every running task's `/v1/status` is read.
    pub task_status_interval: Duration,
    /// How many tasks are read at once.
    pub task_status_concurrency: usize,
    /// `Degraded` (reason `RecordErrors`) while record errors rose within this window.
    pub record_errors_window: Duration,
    /// How often a DeadLetterQueue's topic is looked at again (depth, new records).
    pub dead_letter_refresh: Duration,
}

impl OperatorConfig {
    /// Defaults for everything but the image and namespace.
    pub fn new(task_image: String, namespace: Option<String>) -> Self {
        Self {
            pods: pod_template::PodDefaults {
                image: task_image,
                service_account: None,
            },
            namespace,
            task_status_interval: Duration::from_secs(10),
            task_status_concurrency: 16,
            record_errors_window: Duration::from_secs(300),
            dead_letter_refresh: Duration::from_secs(30),
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub events: events::EventRecorder,
    pub config: OperatorConfig,
    pub metrics: Arc<metrics::Metrics>,
    /// The latest `/v1/status` of every running task.
    pub reports: connector::task_poller::TaskReports,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<metrics::Metrics>) -> Self {
        Self {
            events: events::EventRecorder::new(
                client.clone(),
                FIELD_MANAGER,
                std::env::var("POD_NAME").ok(),
            ),
            client,
            config,
            metrics,
            reports: Default::default(),
        }
    }
}

/// Errors a reconcile can end with; the controller retries them after [`RETRY_AFTER_ERROR`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Kafka(#[from] crate::kafka::Error),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{0} has no namespace")]
    NotNamespaced(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long after a failed reconcile the controller tries again.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(15);

/// Runs both controllers until a shutdown signal.
pub async fn run(client: Client, config: OperatorConfig, metrics: Arc<metrics::Metrics>) {
    let ctx = Arc::new(Context::new(client, config, metrics));
    let (changed, reports_changed) = tokio::sync::mpsc::channel(256);
    let poller = tokio::spawn(connector::task_poller::poll(ctx.clone(), changed));
    tokio::join!(
        connector::run(ctx.clone(), reports_changed),
        dead_letter_queue::run(ctx.clone())
    );
    poller.abort();
}

/// A spec the API accepted but the operator can't use yet (a missing Secret, an unknown topic, …). It
/// becomes `Ready=False` with this reason and message plus a Warning Event; nothing is created or removed
/// until it is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}
