//! The operator: one reconciler per resource ([`connector`], [`dead_letter_queue`]), sharing a [`Context`].
//!
//! Reconcilers follow the same steps: dereference (read what the spec points at) → validate → build the
//! desired objects (pure, unit-tested) → apply them with server-side apply → write status when it changed.

pub mod conditions;
pub mod connector;
pub mod dead_letter_queue;
pub mod dlq_inspect;
pub mod events;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod replay;
pub mod task_status;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// The operator's settings.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Image and ServiceAccount of task and replay pods.
    pub pods: pods::PodDefaults,
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
            pods: pods::PodDefaults {
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
    pub reports: task_status::TaskReports,
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
    #[error("Kafka admin ({operation}): {source}")]
    Kafka {
        operation: &'static str,
        source: rdkafka::error::KafkaError,
    },
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
    let poller = tokio::spawn(task_status::poll(ctx.clone(), changed));
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

/// Reads one key of a Secret; a missing Secret or key is a [`Problem`] naming the spec field that points
/// at it. The value never leaves the operator except into a client config.
pub async fn secret_value(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    field: &str,
) -> Result<Result<String, Problem>> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(Err(Problem::new(
            "SecretNotFound",
            format!("Secret {namespace}/{name} ({field}) not found"),
        )));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        });
    Ok(value.ok_or_else(|| {
        Problem::new(
            "SecretKeyNotFound",
            format!("Secret {namespace}/{name} has no key {key:?} ({field})"),
        )
    }))
}
