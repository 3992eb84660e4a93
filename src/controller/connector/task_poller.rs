//! Reads every running task's `/v1/status` on its pod IP and keeps the latest report per task, so the
//! Connector reconcile can put the counters into status. A report that changed asks for a reconcile of its
//! Connector; an idle task asks for nothing, so idle Connectors get no status writes.
//!
//! Polls are concurrent up to a bound and each has a short timeout: a slow or dead task costs its own
//! timeout, never the others' reports.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;

use crate::controller::Context;
use crate::controller::pod_status::PodPhase;
use crate::crd::Connector;
use crate::names::{LABEL_CONNECTOR, LABEL_TASK, TASK_HTTP_PORT};
use crate::wire::StatusReport;

/// How long one task may take to answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest report of one task pod and the recent history of its error counters.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub pod_uid: String,
    pub report: StatusReport,
    /// (when, total-record-errors, deadletterqueue-produce-requests), oldest first, covering the window.
    pub history: VecDeque<(Timestamp, i64, i64)>,
}

impl Sample {
    /// Record errors and dead-letter records within `window` before `now` (as far as the history reaches).
    pub fn errors_within(&self, now: Timestamp, window: Duration) -> (i64, i64) {
        let start = window_start(now, window);
        let baseline = self
            .history
            .iter()
            .rev()
            .find(|(t, _, _)| *t <= start)
            .or(self.history.front());
        match (baseline, self.history.back()) {
            (Some(b), Some(l)) => (l.1 - b.1, l.2 - b.2),
            _ => (0, 0),
        }
    }
}

/// The start of the window that ends `now`.
fn window_start(now: Timestamp, window: Duration) -> Timestamp {
    now - SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX)
}

/// Connector namespace and name.
pub type ConnectorKey = (String, String);

/// Reports of every task, by Connector and task id.
#[derive(Default)]
pub struct TaskReports {
    samples: Mutex<HashMap<ConnectorKey, BTreeMap<u32, Sample>>>,
}

impl TaskReports {
    /// The samples of one Connector's tasks.
    pub fn of(&self, namespace: &str, name: &str) -> BTreeMap<u32, Sample> {
        self.lock()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorKey, BTreeMap<u32, Sample>>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a report; `true` when it differs from the last one of that task pod. A pod's counters start
    /// at zero, so for a pod that started within the window its start is the baseline (errors before the
    /// first poll count); for an older pod the first report is.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        key: ConnectorKey,
        task: u32,
        pod_uid: &str,
        pod_started: Option<Timestamp>,
        report: StatusReport,
        now: Timestamp,
        window: Duration,
    ) -> bool {
        let mut samples = self.lock();
        let tasks = samples.entry(key).or_default();
        let point = (
            now,
            report.errors.total_record_errors,
            report.errors.dead_letter_queue_produce_requests,
        );
        match tasks.get_mut(&task) {
            Some(s) if s.pod_uid == pod_uid => {
                let changed = s.report != report;
                s.report = report;
                s.history.push_back(point);
                // Keep one point at or before the window's start as the baseline.
                let start = window_start(now, window);
                while s.history.len() > 2 && s.history[1].0 <= start {
                    s.history.pop_front();
                }
                changed
            }
            _ => {
                let start = window_start(now, window);
                let mut history = VecDeque::new();
                if let Some(started) = pod_started.filter(|t| *t > start && *t <= now) {
                    history.push_back((started, 0, 0));
                }
                history.push_back(point);
                tasks.insert(
                    task,
                    Sample {
                        pod_uid: pod_uid.to_string(),
                        report,
                        history,
                    },
                );
                true
            }
        }
    }

    /// Forgets task pods that no longer run.
    pub fn retain_pods(&self, live: &std::collections::HashSet<String>) {
        let mut samples = self.lock();
        for tasks in samples.values_mut() {
            tasks.retain(|_, s| live.contains(&s.pod_uid));
        }
        samples.retain(|_, tasks| !tasks.is_empty());
    }
}

/// A running task pod to poll.
struct Target {
    key: ConnectorKey,
    task: u32,
    pod_uid: String,
    started: Option<Timestamp>,
    url: String,
}

fn target(pod: &Pod) -> Option<Target> {
    let status = pod.status.as_ref()?;
    if PodPhase::of(pod) != PodPhase::Running {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Some(Target {
        key: (pod.namespace()?, pod.labels().get(LABEL_CONNECTOR)?.clone()),
        task: pod.labels().get(LABEL_TASK)?.parse().ok()?,
        pod_uid: pod.uid()?,
        started: status.start_time.as_ref().map(|t| t.0),
        url: format!("http://{host}:{TASK_HTTP_PORT}/v1/status"),
    })
}

async fn fetch(
    http: &HttpClient<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<StatusReport, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = tokio::time::timeout(POLL_TIMEOUT, http.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer within {POLL_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = tokio::time::timeout(POLL_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| format!("{url}: body not complete within {POLL_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a task status: {e}"))
}

/// Polls every `ctx.config.task_status_interval` until the process ends, sending the Connectors whose
/// task reports changed to `changed`.
pub async fn poll(ctx: Arc<Context>, changed: mpsc::Sender<ObjectRef<Connector>>) {
    let http: HttpClient<HttpConnector, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let pods: Api<Pod> = match &ctx.config.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut ticker = tokio::time::interval(ctx.config.task_status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let listed = match pods
            .list(&ListParams::default().labels(LABEL_CONNECTOR))
            .await
        {
            Ok(list) => list.items,
            Err(err) => {
                tracing::warn!(error = %err, "listing task pods for their status failed");
                continue;
            }
        };
        let live = listed.iter().filter_map(|p| p.uid()).collect();
        ctx.reports.retain_pods(&live);
        let targets: Vec<Target> = listed.iter().filter_map(target).collect();
        let http = &http;
        let mut results = futures::stream::iter(targets)
            .map(|t| async move {
                let report = fetch(http, &t.url).await;
                (t, report)
            })
            .buffer_unordered(ctx.config.task_status_concurrency.max(1));
        while let Some((t, report)) = results.next().await {
            match report {
                Ok(report) => {
                    let key = t.key.clone();
                    if ctx.reports.record(
                        t.key,
                        t.task,
                        &t.pod_uid,
                        t.started,
                        report,
                        Timestamp::now(),
                        ctx.config.record_errors_window,
                    ) {
                        let _ = changed.send(ObjectRef::new(&key.1).within(&key.0)).await;
                    }
                }
                Err(err) => tracing::debug!(error = %err, "task status not read"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(errors: i64, dlq: i64) -> StatusReport {
        let mut r: StatusReport = serde_json::from_value(serde_json::json!({
            "connector": "orders", "task": "0", "running": true, "recordsIn": 10, "recordsOut": 10,
            "errors": {}
        }))
        .unwrap();
        r.errors.total_record_errors = errors;
        r.errors.dead_letter_queue_produce_requests = dlq;
        r
    }

    #[test]
    fn only_a_changed_report_asks_for_a_reconcile_and_the_window_counts_recent_errors() {
        let reports = TaskReports::default();
        let key = ("shop".to_string(), "orders".to_string());
        let window = Duration::from_secs(300);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + SignedDuration::from_secs(s);
        assert!(reports.record(key.clone(), 0, "pod-a", None, report(0, 0), at(0), window));
        assert!(
            !reports.record(key.clone(), 0, "pod-a", None, report(0, 0), at(10), window),
            "idle"
        );
        assert!(reports.record(
            key.clone(),
            0,
            "pod-a",
            None,
            report(12, 12),
            at(20),
            window
        ));
        let s = &reports.of("shop", "orders")[&0];
        assert_eq!(s.errors_within(at(20), window), (12, 12));
        assert!(!reports.record(
            key.clone(),
            0,
            "pod-a",
            None,
            report(12, 12),
            at(400),
            window
        ));
        let s = &reports.of("shop", "orders")[&0];
        assert_eq!(
            s.errors_within(at(400), window),
            (0, 0),
            "the errors left the window"
        );
        assert!(
            reports.record(key.clone(), 0, "pod-b", None, report(0, 0), at(410), window),
            "a new pod of the task"
        );
        // A young pod whose errors happened before its first poll: they count from its start.
        assert!(reports.record(
            key.clone(),
            0,
            "pod-c",
            Some(at(500)),
            report(3, 3),
            at(505),
            window
        ));
        let s = &reports.of("shop", "orders")[&0];
        assert_eq!(s.errors_within(at(505), window), (3, 3));
        reports.retain_pods(&Default::default());
        assert!(reports.of("shop", "orders").is_empty());
    }
}
