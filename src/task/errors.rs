//! The KIP-298 error machinery every stage of a task goes through: classification, retry with a total
//! timeout and capped exponential backoff, tolerance (with the optional window limit), reporting (log and
//! dead-letter queue) and the eight per-task error metrics. Source and sink call the same [`ErrorHandler`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crd::connector::{ErrorsSpec, Tolerance};

use super::dlq::{DeadLetterQueue, RecordContext};
use super::metrics::TaskMetrics;

/// Kafka Connect's stages (`__connect.errors.stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Stage {
    KeyConverter,
    ValueConverter,
    HeaderConverter,
    Transformation,
    TaskPut,
    TaskPoll,
    KafkaProduce,
    KafkaConsume,
}

impl Stage {
    /// The name Kafka Connect writes.
    pub fn connect_name(self) -> &'static str {
        match self {
            Stage::KeyConverter => "KEY_CONVERTER",
            Stage::ValueConverter => "VALUE_CONVERTER",
            Stage::HeaderConverter => "HEADER_CONVERTER",
            Stage::Transformation => "TRANSFORMATION",
            Stage::TaskPut => "TASK_PUT",
            Stage::TaskPoll => "TASK_POLL",
            Stage::KafkaProduce => "KAFKA_PRODUCE",
            Stage::KafkaConsume => "KAFKA_CONSUME",
        }
    }
}

/// One failed attempt at one operation, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    /// The error class (`__connect.errors.exception.class.name`), e.g. `DataException`, `MongoWriteException`.
    pub class: String,
    pub message: String,
    /// A MongoDB or Kafka error code, when there is one.
    pub code: Option<i32>,
    /// Whether trying again can help (network errors, timeouts, retryable labels, broker-retriable errors).
    pub retriable: bool,
}

impl Failure {
    pub fn new(
        stage: Stage,
        class: impl Into<String>,
        message: impl Into<String>,
        retriable: bool,
    ) -> Self {
        Self {
            stage,
            class: class.into(),
            message: message.into(),
            code: None,
            retriable,
        }
    }

    pub fn with_code(mut self, code: i32) -> Self {
        self.code = Some(code);
        self
    }

    /// A conversion failure: never retried.
    pub fn conversion(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(
            stage,
            "org.apache.kafka.connect.errors.DataException",
            message,
            false,
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {}: {}",
            self.class,
            self.stage.connect_name(),
            self.message
        )
    }
}

/// Whether a failure is retried: its own classification unless the user listed its class or code in
/// `notRetryable` (Spring Kafka's not-retryable exceptions).
pub fn is_retriable(failure: &Failure, not_retryable: &[String]) -> bool {
    failure.retriable
        && !not_retryable.iter().any(|n| {
            n == &failure.class
                || failure.class.rsplit('.').next() == Some(n.as_str())
                || failure.code.is_some_and(|c| n == &c.to_string())
        })
}

/// Kafka Connect's backoff: 300 ms doubled per attempt; once that passes the maximum, a random delay below
/// the maximum (jitter).
pub const BACKOFF_START: Duration = Duration::from_millis(300);

pub fn backoff_delay(attempt: u32, max: Duration, random_unit: f64) -> Duration {
    let doubled =
        BACKOFF_START.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    if doubled <= max {
        doubled
    } else {
        max.mul_f64(random_unit.clamp(0.0, 1.0))
    }
}

/// Whether another retry fits: `retry_timeout_ms` −1 = forever, 0 = never, else the total since the first
/// attempt. Returns how long to wait (the delay, cut to what is left of the timeout).
pub fn next_retry(
    spec: &ErrorsSpec,
    attempt: u32,
    elapsed: Duration,
    random_unit: f64,
) -> Option<Duration> {
    let max = Duration::from_millis(spec.retry_delay_max_ms.max(0) as u64);
    let delay = backoff_delay(attempt, max, random_unit);
    match spec.retry_timeout_ms {
        t if t < 0 => Some(delay),
        0 => None,
        t => {
            let left = Duration::from_millis(t as u64).checked_sub(elapsed)?;
            (!left.is_zero()).then(|| delay.min(left))
        }
    }
}

/// The optional "tolerate up to N errors in a window" limit of `tolerance: all`.
#[derive(Debug, Default)]
pub struct ToleranceWindow {
    limit: Option<(u64, Duration)>,
    seen: VecDeque<Instant>,
}

impl ToleranceWindow {
    pub fn new(spec: &ErrorsSpec) -> Self {
        let limit = spec
            .max_errors
            .zip(spec.window.as_deref().and_then(parse_duration))
            .map(|(n, w)| (n.max(1) as u64, w));
        Self {
            limit,
            seen: VecDeque::new(),
        }
    }

    /// Records an error at `now`; `true` while the limit is not exceeded.
    pub fn admit(&mut self, now: Instant) -> bool {
        let Some((max, window)) = self.limit else {
            return true;
        };
        while self
            .seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.seen.pop_front();
        }
        self.seen.push_back(now);
        self.seen.len() as u64 <= max
    }
}

/// `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

/// An error message fit for status and metrics: MongoDB quotes key values in duplicate-key errors
/// (`dup key: { _id: "…" }`), which are record contents; they are cut, and the message kept short.
pub fn without_record_contents(message: &str) -> String {
    let mut text = match message.find("dup key:") {
        Some(i) => format!("{}dup key: (omitted)", &message[..i]),
        None => message.to_string(),
    };
    if text.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Why a task must stop: the first error under `tolerance: none`, the window limit, or a failed DLQ write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failure}{}", .record.as_ref().map(|r| format!(" (record {})", r.coordinates())).unwrap_or_default())]
pub struct TaskFailed {
    pub reason: &'static str,
    pub failure: Failure,
    pub record: Option<RecordContext>,
}

/// The error handling of one task.
pub struct ErrorHandler {
    spec: ErrorsSpec,
    connector: String,
    task_id: u32,
    metrics: Arc<TaskMetrics>,
    dlq: Option<DeadLetterQueue>,
    window: std::sync::Mutex<ToleranceWindow>,
    /// Dead-letter records handed to the producer whose acknowledgement is still to be checked.
    pending: tokio::sync::Mutex<Vec<PendingDeadLetter>>,
}

struct PendingDeadLetter {
    delivery: rdkafka::producer::DeliveryFuture,
    record: RecordContext,
    failure: Failure,
}

impl ErrorHandler {
    pub fn new(
        spec: ErrorsSpec,
        connector: String,
        task_id: u32,
        metrics: Arc<TaskMetrics>,
        dlq: Option<DeadLetterQueue>,
    ) -> Self {
        let window = std::sync::Mutex::new(ToleranceWindow::new(&spec));
        Self {
            spec,
            connector,
            task_id,
            metrics,
            dlq,
            window,
            pending: Default::default(),
        }
    }

    /// Runs `op`, retrying retriable failures per the spec. Every failed attempt counts in
    /// `total-record-failures`, every retry in `total-retries`.
    pub async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(failure) => {
                    self.metrics.record_failure();
                    if !is_retriable(&failure, &self.spec.not_retryable) {
                        return Err(failure);
                    }
                    let Some(wait) =
                        next_retry(&self.spec, attempt, started.elapsed(), rand::random())
                    else {
                        return Err(failure);
                    };
                    tracing::debug!(stage = failure.stage.connect_name(), class = %failure.class, attempt, ?wait, "retrying");
                    self.metrics.record_retry();
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// A record failed for good: count it, log it, send it to the dead-letter queue, and decide by
    /// tolerance. `Ok(())`: the record is skipped and its offset may be committed.
    pub async fn record_failed(
        &self,
        failure: Failure,
        record: RecordContext,
    ) -> Result<(), TaskFailed> {
        self.metrics.record_error();
        self.metrics.set_last_error(
            &failure.class,
            failure.stage.connect_name(),
            &without_record_contents(&failure.message),
        );
        if self.spec.log_enable {
            self.metrics.record_logged();
            let contents = self
                .spec
                .log_include_messages
                .then(|| record.contents_for_log());
            tracing::error!(
                connector = %self.connector, task = self.task_id, stage = failure.stage.connect_name(),
                class = %failure.class, code = ?failure.code, record = %record.coordinates(),
                contents = contents.as_deref().unwrap_or("(errors.logIncludeMessages is off)"),
                "record failed: {}", failure.message
            );
        }
        if self.spec.tolerance == Tolerance::None {
            return Err(TaskFailed {
                reason: "RecordFailed",
                failure,
                record: Some(record),
            });
        }
        if !self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now())
        {
            return Err(TaskFailed {
                reason: "ErrorLimitExceeded",
                failure,
                record: Some(record),
            });
        }
        if let Some(dlq) = &self.dlq {
            // Pipelined: acknowledgements are checked by `flush_dead_letters` before offsets move.
            self.metrics.record_dlq_request();
            match dlq.enqueue(&record, &failure, &self.connector, self.task_id) {
                Ok(delivery) => self.pending.lock().await.push(PendingDeadLetter {
                    delivery,
                    record,
                    failure,
                }),
                Err(_) => {
                    self.metrics.record_dlq_failure();
                    self.send_dead_letter(dlq, &record, &failure).await?;
                }
            }
        }
        self.metrics.record_skipped();
        Ok(())
    }

    /// Waits for every dead-letter record handed to the producer; one that failed is sent again with the
    /// retry settings. Call it before committing offsets: a record that is neither written nor
    /// dead-lettered stops the task before its offset moves.
    pub async fn flush_dead_letters(&self) -> Result<(), TaskFailed> {
        let pending = std::mem::take(&mut *self.pending.lock().await);
        let Some(dlq) = &self.dlq else {
            return Ok(());
        };
        for p in pending {
            if !matches!(p.delivery.await, Ok(Ok(_))) {
                self.metrics.record_dlq_failure();
                self.send_dead_letter(dlq, &p.record, &p.failure).await?;
            }
        }
        Ok(())
    }

    /// Sends one dead-letter record and waits, retrying per the spec.
    async fn send_dead_letter(
        &self,
        dlq: &DeadLetterQueue,
        record: &RecordContext,
        failure: &Failure,
    ) -> Result<(), TaskFailed> {
        let sent = self
            .retry(|| async {
                self.metrics.record_dlq_request();
                dlq.send(record, failure, &self.connector, self.task_id)
                    .await
                    .inspect_err(|_| {
                        self.metrics.record_dlq_failure();
                    })
            })
            .await;
        sent.map_err(|dlq_failure| TaskFailed {
            // Never commit past a record that is neither handled nor dead-lettered.
            reason: "DeadLetterQueueFailed",
            failure: dlq_failure,
            record: Some(record.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(timeout: i64, max: i64) -> ErrorsSpec {
        ErrorsSpec {
            retry_timeout_ms: timeout,
            retry_delay_max_ms: max,
            ..Default::default()
        }
    }

    #[test]
    fn status_messages_leave_out_duplicate_key_values_and_stay_short() {
        let m = "E11000 duplicate key error collection: shop.orders index: _id_ dup key: { _id: \"4111-1111\" }";
        assert_eq!(
            without_record_contents(m),
            "E11000 duplicate key error collection: shop.orders index: _id_ dup key: (omitted)"
        );
        let long = "é".repeat(400);
        assert!(without_record_contents(&long).len() <= 304);
    }

    #[test]
    fn backoff_starts_at_300ms_doubles_and_jitters_below_the_cap() {
        let max = Duration::from_millis(2000);
        let d: Vec<u128> = (0..4)
            .map(|a| backoff_delay(a, max, 0.5).as_millis())
            .collect();
        assert_eq!(
            d,
            [300, 600, 1200, 1000],
            "the 4th would be 2400 > 2000: jitter below the cap"
        );
        assert_eq!(backoff_delay(3, max, 0.0), Duration::ZERO);
        assert!(backoff_delay(3, max, 0.999) < max);
        assert!(backoff_delay(100, max, 0.7) <= max, "no overflow");
    }

    #[test]
    fn retry_timeout_bounds_the_total_and_cuts_the_last_wait() {
        assert_eq!(
            next_retry(&spec(0, 60_000), 0, Duration::ZERO, 0.5),
            None,
            "0 = no retry"
        );
        assert_eq!(
            next_retry(&spec(-1, 60_000), 30, Duration::from_secs(86_400), 0.5),
            Some(Duration::from_secs(30)),
            "-1 = forever"
        );
        assert_eq!(
            next_retry(&spec(1000, 60_000), 2, Duration::from_millis(900), 0.5),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            next_retry(&spec(1000, 60_000), 2, Duration::from_millis(1000), 0.5),
            None
        );
    }

    #[test]
    fn classification_and_not_retryable() {
        let net = Failure::new(
            Stage::TaskPut,
            "com.mongodb.MongoSocketException",
            "reset",
            true,
        );
        assert!(is_retriable(&net, &[]));
        assert!(
            !is_retriable(&net, &["MongoSocketException".into()]),
            "short class names match"
        );
        let dup = Failure::new(Stage::TaskPut, "MongoWriteException", "dup", true).with_code(11000);
        assert!(!is_retriable(&dup, &["11000".into()]), "codes match");
        assert!(
            !is_retriable(&Failure::conversion(Stage::ValueConverter, "bad json"), &[]),
            "conversion never retries"
        );
    }

    #[test]
    fn the_window_fails_past_max_errors_and_forgets_old_ones() {
        let s = ErrorsSpec {
            tolerance: Tolerance::All,
            max_errors: Some(2),
            window: Some("10s".into()),
            ..Default::default()
        };
        let mut w = ToleranceWindow::new(&s);
        let t0 = Instant::now();
        assert!(w.admit(t0) && w.admit(t0 + Duration::from_secs(1)));
        assert!(!w.admit(t0 + Duration::from_secs(2)), "third within 10s");
        let mut w = ToleranceWindow::new(&s);
        assert!(w.admit(t0) && w.admit(t0 + Duration::from_secs(1)));
        assert!(
            w.admit(t0 + Duration::from_secs(11)),
            "the first two fell out of the window"
        );
        assert!(
            ToleranceWindow::new(&ErrorsSpec::default()).admit(t0),
            "no limit without maxErrors"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5 minutes"), None);
    }
}
