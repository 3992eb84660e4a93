//! A task's metrics: the eight KIP-298 error counters, records in and out, and batch latency, served as
//! Prometheus text on `/metrics` and as JSON on `/v1/status` (what the operator reads), plus `/healthz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::crd::connector::{
    DeliveryStatus, ErrorCounters, LastError, OutageStatus, ResumeTokenStatus,
};
use crate::task::failure::Dependency;
use crate::task::ledger::Ledger;
use crate::wire::StatusReport;
use axum::Json;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    /// The Connector's namespace: same-named Connectors of two namespaces stay apart.
    namespace: String,
    connector: String,
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    namespace: String,
    connector: String,
    task: String,
    /// `MongoDB` or `Kafka`.
    dependency: &'static str,
}

impl TaskLabels {
    fn of(&self, dependency: Dependency) -> DependencyLabels {
        DependencyLabels {
            namespace: self.namespace.clone(),
            connector: self.connector.clone(),
            task: self.task.clone(),
            dependency: dependency.as_str(),
        }
    }
}

/// Counters of one task. The atomics are the truth; the Prometheus families mirror them.
pub struct TaskMetrics {
    labels: TaskLabels,
    registry: Registry,
    record_failures: Family<TaskLabels, Counter>,
    record_errors: Family<TaskLabels, Counter>,
    records_skipped: Family<TaskLabels, Counter>,
    retries: Family<TaskLabels, Counter>,
    errors_logged: Family<TaskLabels, Counter>,
    dlq_requests: Family<TaskLabels, Counter>,
    dlq_failures: Family<TaskLabels, Counter>,
    last_error: Family<TaskLabels, Gauge>,
    records_in: Family<TaskLabels, Counter>,
    records_out: Family<TaskLabels, Counter>,
    batch_seconds: Family<TaskLabels, Histogram>,
    last_error_ms: AtomicI64,
    running: AtomicBool,
    last_error_detail: Mutex<Option<LastError>>,
    resume_token: Mutex<Option<ResumeTokenStatus>>,
    delivery: Mutex<Option<DeliveryStatus>>,
    unavailable: Family<DependencyLabels, Gauge>,
    outage: Mutex<Option<(Dependency, OutageStatus)>>,
    /// The same counts per input partition, kept with the offsets.
    pub ledger: Ledger,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TaskMetrics {
    pub fn new(namespace: &str, connector: &str, task_id: u32) -> Self {
        let labels = TaskLabels {
            namespace: namespace.into(),
            connector: connector.into(),
            task: task_id.to_string(),
        };
        let mut registry = Registry::default();
        // Each counter's series exists from the start, at 0: a rate or an alert on it sees the first
        // error, not only the second.
        let mut counter = |name: &str, help: &str| {
            let f = Family::<TaskLabels, Counter>::default();
            registry.register(name, help, f.clone());
            let _ = f.get_or_create(&labels);
            f
        };
        let record_failures = counter(
            "sluice_task_total_record_failures",
            "KIP-298 total-record-failures: failed attempts, retries included",
        );
        let record_errors = counter(
            "sluice_task_total_record_errors",
            "KIP-298 total-record-errors: records that failed for good",
        );
        let records_skipped = counter(
            "sluice_task_total_records_skipped",
            "KIP-298 total-records-skipped",
        );
        let retries = counter("sluice_task_total_retries", "KIP-298 total-retries");
        let errors_logged = counter(
            "sluice_task_total_errors_logged",
            "KIP-298 total-errors-logged",
        );
        let dlq_requests = counter(
            "sluice_task_deadletterqueue_produce_requests",
            "KIP-298 deadletterqueue-produce-requests",
        );
        let dlq_failures = counter(
            "sluice_task_deadletterqueue_produce_failures",
            "KIP-298 deadletterqueue-produce-failures",
        );
        let records_in = counter(
            "sluice_task_records_in",
            "Records read (consumed or change events)",
        );
        let records_out = counter(
            "sluice_task_records_out",
            "Records written (documents or produced records)",
        );
        let last_error = Family::<TaskLabels, Gauge>::default();
        registry.register(
            "sluice_task_last_error_timestamp_ms",
            "KIP-298 last-error-timestamp, ms since the epoch",
            last_error.clone(),
        );
        let _ = last_error.get_or_create(&labels);
        let unavailable = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "sluice_task_dependency_unavailable",
            "1 while the task waits out an outage of the dependency (MongoDB or Kafka), else 0",
            unavailable.clone(),
        );
        for dependency in [Dependency::MongoDB, Dependency::Kafka] {
            unavailable.get_or_create(&labels.of(dependency)).set(0);
        }
        let batch_seconds = Family::<TaskLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "sluice_task_batch_seconds",
            "Time to handle one batch end to end",
            batch_seconds.clone(),
        );
        Self {
            labels,
            registry,
            record_failures,
            record_errors,
            records_skipped,
            retries,
            errors_logged,
            dlq_requests,
            dlq_failures,
            last_error,
            records_in,
            records_out,
            batch_seconds,
            last_error_ms: AtomicI64::new(0),
            running: AtomicBool::new(false),
            last_error_detail: Mutex::new(None),
            resume_token: Mutex::new(None),
            delivery: Mutex::new(None),
            unavailable,
            outage: Mutex::new(None),
            ledger: Ledger::default(),
        }
    }

    fn inc(&self, f: &Family<TaskLabels, Counter>) {
        f.get_or_create(&self.labels).inc();
    }

    fn error_now(&self) -> i64 {
        let now = now_ms();
        self.last_error_ms.store(now, Ordering::Relaxed);
        self.last_error.get_or_create(&self.labels).set(now);
        now
    }

    // Each count goes to this task's metrics and to the ledger of the partition it belongs to: `key`
    // (the record's, see [`RecordContext::ledger_key`]), or the partition worked on when `None`.

    pub fn record_failure(&self, key: Option<&str>) {
        self.inc(&self.record_failures);
        let now = self.error_now();
        self.ledger.count(key, |c| {
            c.total_record_failures += 1;
            c.last_error_timestamp = c.last_error_timestamp.max(now);
        });
    }
    pub fn record_error(&self, key: Option<&str>) {
        self.inc(&self.record_errors);
        let now = self.error_now();
        self.ledger.count(key, |c| {
            c.total_record_errors += 1;
            c.last_error_timestamp = c.last_error_timestamp.max(now);
        });
    }
    pub fn record_skipped(&self, key: Option<&str>) {
        self.inc(&self.records_skipped);
        self.ledger.count(key, |c| c.total_records_skipped += 1);
    }
    pub fn record_retry(&self, key: Option<&str>) {
        self.inc(&self.retries);
        self.ledger.count(key, |c| c.total_retries += 1);
    }
    pub fn record_logged(&self, key: Option<&str>) {
        self.inc(&self.errors_logged);
        self.ledger.count(key, |c| c.total_errors_logged += 1);
    }
    pub fn record_dlq_request(&self, key: Option<&str>) {
        self.inc(&self.dlq_requests);
        self.ledger
            .count(key, |c| c.dead_letter_queue_produce_requests += 1);
    }
    pub fn record_dlq_failure(&self, key: Option<&str>) {
        self.inc(&self.dlq_failures);
        self.ledger
            .count(key, |c| c.dead_letter_queue_produce_failures += 1);
    }
    pub fn records_in(&self, n: u64) {
        self.records_in.get_or_create(&self.labels).inc_by(n);
    }
    pub fn records_out(&self, n: u64) {
        self.records_out.get_or_create(&self.labels).inc_by(n);
    }
    pub fn batch(&self, took: Duration) {
        self.batch_seconds
            .get_or_create(&self.labels)
            .observe(took.as_secs_f64());
    }
    /// Remembers a record error for `/v1/status` (the message must not carry record contents).
    pub fn set_last_error(&self, class: &str, stage: &str, message: &str) {
        let time = k8s_openapi::jiff::Timestamp::now().to_string();
        *self
            .last_error_detail
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(LastError {
            class: class.into(),
            stage: stage.into(),
            message: message.into(),
            time,
        });
    }
    /// Updates what a source reports about its resume token and the oplog window.
    pub fn update_resume_token(&self, update: impl FnOnce(&mut ResumeTokenStatus)) {
        let mut guard = self.resume_token.lock().unwrap_or_else(|e| e.into_inner());
        update(guard.get_or_insert_with(Default::default));
    }
    /// Updates what a source reports about its delivery guarantee and transactions.
    pub fn update_delivery(&self, update: impl FnOnce(&mut DeliveryStatus)) {
        let mut guard = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        update(guard.get_or_insert_with(Default::default));
    }
    /// The task waits out an outage of `dependency` (the message must not carry record contents).
    pub fn set_outage(&self, dependency: Dependency, error: &str) {
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let since = match outage.as_ref() {
            Some((d, o)) if *d == dependency => o.since.clone(),
            Some((other, _)) => {
                // Waiting for another dependency now: the one before is not reported unavailable any more.
                self.unavailable
                    .get_or_create(&self.labels.of(*other))
                    .set(0);
                k8s_openapi::jiff::Timestamp::now().to_string()
            }
            None => k8s_openapi::jiff::Timestamp::now().to_string(),
        };
        self.unavailable
            .get_or_create(&self.labels.of(dependency))
            .set(1);
        *outage = Some((
            dependency,
            OutageStatus {
                dependency: dependency.as_str().into(),
                since,
                error: error.into(),
            },
        ));
    }

    /// The outage is over.
    pub fn clear_outage(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((dependency, _)) = outage.take() {
            self.unavailable
                .get_or_create(&self.labels.of(dependency))
                .set(0);
        }
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    pub fn report(&self) -> StatusReport {
        let get = |f: &Family<TaskLabels, Counter>| f.get_or_create(&self.labels).get();
        StatusReport {
            connector: self.labels.connector.clone(),
            task: self.labels.task.clone(),
            running: self.running.load(Ordering::SeqCst),
            errors: ErrorCounters {
                total_record_failures: get(&self.record_failures) as i64,
                total_record_errors: get(&self.record_errors) as i64,
                total_records_skipped: get(&self.records_skipped) as i64,
                total_retries: get(&self.retries) as i64,
                total_errors_logged: get(&self.errors_logged) as i64,
                dead_letter_queue_produce_requests: get(&self.dlq_requests) as i64,
                dead_letter_queue_produce_failures: get(&self.dlq_failures) as i64,
                last_error_timestamp: self.last_error_ms.load(Ordering::Relaxed),
            },
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            last_error: self
                .last_error_detail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            resume_token: self
                .resume_token
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            outage: self
                .outage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(_, o)| o.clone()),
            delivery: self
                .delivery
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            partitions: self.ledger.snapshot(),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds the task's HTTP address (a failure here is a start failure, not a silent one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `/metrics`, `/v1/status` and `/healthz` (200 while the task runs).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<TaskMetrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<TaskMetrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .route(
            "/v1/status",
            get(|State(m): State<Arc<TaskMetrics>>| async move { Json(m.report()) }),
        )
        .route(
            "/healthz",
            get(|State(m): State<Arc<TaskMetrics>>| async move {
                if m.running.load(Ordering::SeqCst) {
                    (StatusCode::OK, "running").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
                }
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_and_prometheus_agree() {
        let m = TaskMetrics::new("shop", "orders", 1);
        m.ledger.work_on("orders-0");
        m.record_failure(None);
        m.record_failure(None);
        m.record_retry(None);
        m.record_error(Some("orders-1"));
        m.record_dlq_request(Some("orders-1"));
        m.record_skipped(Some("orders-1"));
        let r = m.report();
        assert_eq!(
            (
                r.errors.total_record_failures,
                r.errors.total_retries,
                r.errors.total_record_errors
            ),
            (2, 1, 1)
        );
        assert_eq!(
            (
                r.errors.dead_letter_queue_produce_requests,
                r.errors.total_records_skipped
            ),
            (1, 1)
        );
        assert!(r.errors.last_error_timestamp > 0);
        // The same counts in the partitions' ledgers: record counts by the record's partition, the rest
        // by the partition worked on.
        m.ledger.load("orders-0", 0, ErrorCounters::default());
        m.ledger.load("orders-1", 0, ErrorCounters::default());
        let worked_on = m.ledger.to_store("orders-0").unwrap();
        let record = m.ledger.to_store("orders-1").unwrap();
        assert_eq!(
            (worked_on.total_record_failures, worked_on.total_retries),
            (2, 1)
        );
        assert_eq!(
            (
                record.total_record_errors,
                record.dead_letter_queue_produce_requests,
                record.total_records_skipped,
                record.total_record_failures
            ),
            (1, 1, 1, 0)
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"sluice_task_total_record_failures_total{namespace="shop",connector="orders",task="1"} 2"#
            ),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["errors"]["deadLetterQueueProduceRequests"], 1,
            "camelCase as in Connector status"
        );
    }

    #[test]
    fn an_outage_reports_one_dependency_at_a_time() {
        let m = TaskMetrics::new("shop", "orders", 0);
        let gauge =
            |dependency: Dependency| m.unavailable.get_or_create(&m.labels.of(dependency)).get();
        m.set_outage(Dependency::MongoDB, "no primary");
        assert_eq!(
            (gauge(Dependency::MongoDB), gauge(Dependency::Kafka)),
            (1, 0)
        );
        m.set_outage(Dependency::Kafka, "all brokers down");
        assert_eq!(
            (gauge(Dependency::MongoDB), gauge(Dependency::Kafka)),
            (0, 1)
        );
        assert_eq!(m.report().outage.unwrap().dependency, "Kafka");
        m.clear_outage();
        assert_eq!(
            (gauge(Dependency::MongoDB), gauge(Dependency::Kafka)),
            (0, 0)
        );
        assert_eq!(m.report().outage, None);
    }
}
