//! The connector runtime a task pod runs: `sluice task --config FILE` (the config is a
//! [`crate::wire::TaskConfig`]; secrets come from env).
//!
//! - [`failure`]: what failed, where and on which record; Kafka and MongoDB errors classified (a leaf).
//! - [`errors`]: the KIP-298 machinery (retry, tolerance, reporting) every stage goes through.
//! - [`dlq`]: dead-letter records and their `__connect.errors.*` headers.
//! - [`metrics`]: the per-task error metrics and the task's HTTP endpoints.
//! - [`ledger`]: the error counters kept with the offsets, so totals survive kills.
//! - [`convert`]: record key/value converters and the sink's write models.
//! - [`sink`]: Kafka → MongoDB.
//! - [`source`]: MongoDB change streams → Kafka.

pub mod convert;
pub mod dlq;
pub mod errors;
pub mod failure;
pub mod ledger;
pub mod metrics;
pub mod sink;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::crd::connector::ExactlyOnce;
use crate::kafka::transactional::Transactional;
use crate::kafka::{Credentials, client_config};
use crate::names;
use crate::wire::task_config::ConnectorType;
use crate::wire::{TaskConfig, TerminationMessage, TerminationReason};
use errors::{ErrorHandler, TaskFailed};
use metrics::TaskMetrics;

/// Why a task ended before or instead of running.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Failed(#[from] TaskFailed),
    #[error("{0}")]
    Unsupported(String),
}

impl TaskError {
    /// The termination message the operator reads.
    pub fn termination_message(&self) -> TerminationMessage {
        match self {
            TaskError::Config(m) => {
                TerminationMessage::new(TerminationReason::ConfigInvalid, m.clone())
            }
            TaskError::Unsupported(m) => {
                TerminationMessage::new(TerminationReason::Unsupported, m.clone())
            }
            TaskError::Failed(f) if f.reason == TerminationReason::ResumeTokenLost => {
                let mut t = TerminationMessage::new(f.reason.clone(), f.failure.message.clone());
                t.code = f.failure.code;
                t.code_name = Some(f.failure.class.clone());
                t.partition_name = f.record.as_ref().map(|r| r.topic.clone());
                t.stage = Some(f.failure.stage.connect_name().into());
                t
            }
            TaskError::Failed(f) => {
                // Pod status is no place for record contents a server message quotes.
                let message = crate::text::without_record_contents(&f.failure.message);
                let mut t = TerminationMessage::new(f.reason.clone(), message);
                t.stage = Some(f.failure.stage.connect_name().into());
                t.error_class = Some(f.failure.class.clone());
                t.code = f.failure.code;
                t.record = f.record.as_ref().map(|r| r.coordinates());
                t
            }
        }
    }
}

/// Runs a task until SIGTERM (then finishes its batch and returns `Ok`) or until it fails.
pub async fn run(cfg: TaskConfig, shutdown: watch::Receiver<bool>) -> Result<(), TaskError> {
    let metrics = Arc::new(TaskMetrics::new(
        &cfg.namespace,
        &cfg.connector,
        cfg.task_id,
    ));
    run_with_metrics(cfg, shutdown, metrics).await
}

/// [`run`] with the caller's metrics (so it can put the final counters into the termination message).
pub async fn run_with_metrics(
    cfg: TaskConfig,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<TaskMetrics>,
) -> Result<(), TaskError> {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let addr: SocketAddr = format!("{ip}:{}", cfg.http_port).parse().map_err(|e| {
        TaskError::Config(format!(
            "POD_IP {ip:?} with httpPort {}: {e}",
            cfg.http_port
        ))
    })?;
    let listener = metrics::bind(addr)
        .await
        .map_err(|e| TaskError::Config(format!("cannot serve metrics on {addr}: {e}")))?;
    let server = tokio::spawn(metrics::serve(listener, metrics.clone()));
    let uri = std::env::var("SLUICE_MONGODB_URI")
        .map_err(|_| TaskError::Config("SLUICE_MONGODB_URI is not set (the pod takes it from spec.mongodb.connectionUriSecretRef)".into()))?;
    let unusable = |e: mongodb::error::Error| {
        TaskError::Config(format!(
            "SLUICE_MONGODB_URI is not a usable connection string: {}",
            e.kind
        ))
    };
    let mut options = mongodb::options::ClientOptions::parse(&uri)
        .await
        .map_err(unusable)?;
    options.app_name.get_or_insert_with(|| {
        crate::names::mongodb_app_name(&cfg.namespace, &cfg.connector, cfg.task_id)
    });
    let mongo = mongodb::Client::with_options(options).map_err(unusable)?;
    // An exactly-once source writes its dead letters with its transactional producer, in its transactions.
    let transactional = match &cfg.source {
        Some(s) if s.spec.exactly_once == ExactlyOnce::Required => Some(
            Transactional::new(&source::transactional_config(&cfg))
                .map_err(|e| TaskError::Config(format!("transactional producer: {e}")))?,
        ),
        _ => None,
    };
    let routes = &cfg.errors.dead_letter_routes;
    let dlq = match routes.is_empty() {
        true => None,
        false => Some(dlq::DeadLetterQueue::new(
            routes.clone(),
            cfg.errors.spec.context_headers_format,
            cfg.sink.as_ref().map(|sink| {
                names::sink_consumer_group(
                    &cfg.namespace,
                    &cfg.connector,
                    sink.consumer_group_id.as_deref(),
                )
            }),
            cfg.errors.spec.converter_messages,
            dlq::header_budget(cfg.errors.spec.context_headers_max_bytes),
            match &transactional {
                Some(t) => t.producer().clone(),
                None => dead_letter_producer(&cfg)?,
            },
        )),
    };
    let handler = Arc::new(ErrorHandler::new(
        cfg.errors.spec.clone(),
        cfg.connector.clone(),
        cfg.task_id,
        metrics.clone(),
        dlq,
    ));
    let result = match cfg.connector_type {
        ConnectorType::MongodbSink => {
            let sink = sink::Sink::new(cfg, mongo, handler, metrics.clone())
                .map_err(|f| TaskError::Config(f.message))?;
            sink.run(shutdown.clone()).await.map_err(TaskError::from)
        }
        ConnectorType::MongodbSource => {
            let source = source::Source::new(cfg, mongo, handler, metrics.clone(), transactional)
                .map_err(|f| TaskError::Config(f.message))?;
            source.run(shutdown.clone()).await.map_err(TaskError::from)
        }
    };
    // Let a last scrape of /v1/status see the final counters unless we are shutting down anyway.
    if result.is_err() && !*shutdown.borrow_and_update() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.abort();
    result
}

/// The dead-letter producer of a task that does not run exactly once.
fn dead_letter_producer(cfg: &TaskConfig) -> Result<rdkafka::producer::FutureProducer, TaskError> {
    client_config(&cfg.kafka, Credentials::Env)
        .set(
            "client.id",
            names::dead_letter_client_id(&cfg.connector, cfg.task_id),
        )
        .set("enable.idempotence", "true")
        // Kafka's Java producer partitions a keyed record by murmur2 of its key (librdkafka's
        // default is CRC32): the same key lands in the same dead-letter partition as from Kafka
        // Connect, so both can share a DLQ during a migration.
        .set("partitioner", "murmur2_random")
        // Records as large as the topics they come from: the broker enforces the dead-letter
        // topic's max.message.bytes (a DeadLetterQueue sets it from the topics that feed it).
        .set("message.max.bytes", dlq::PRODUCER_MESSAGE_MAX_BYTES)
        .create()
        .map_err(|e| TaskError::Config(format!("dead-letter producer: {e}")))
}
