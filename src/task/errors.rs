//! The KIP-298 error machinery every stage of a task goes through: retry with a total timeout and capped
//! exponential backoff, tolerance (with the optional window limit), reporting (log and dead-letter queue)
//! and the eight per-task error metrics. Source and sink call the same [`ErrorHandler`]; what failed is a
//! [`Failure`] (classified in [`super::failure`]).
//!
//! An outage is not a record error. A failure that says MongoDB or Kafka is unavailable is waited out with
//! the same backoff — for as long as it lasts, or until `errors.outageTimeoutMs` fails the task — and is
//! never dead-lettered, skipped or counted as a record error, whatever `tolerance`, `retryTimeoutMs` or
//! `notRetryable` say. While it lasts the task reports it (status, metric); a wait ends at SIGTERM
//! ([`Halt::Shutdown`]), and the caller commits nothing past what it handled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crd::connector::{ErrorsSpec, Tolerance};
use crate::text::without_record_contents;
use crate::wire::TerminationReason;

use super::dlq::{DeadLetterQueue, Destination};
use super::failure::{Dependency, Failure, RecordContext, Stage, is_retriable};
use super::metrics::TaskMetrics;

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
    let delay = backoff_delay(attempt, retry_delay_max(spec), random_unit);
    match spec.retry_timeout_ms {
        t if t < 0 => Some(delay),
        0 => None,
        t => {
            let left = Duration::from_millis(t as u64).checked_sub(elapsed)?;
            (!left.is_zero()).then(|| delay.min(left))
        }
    }
}

/// The longest wait between attempts (`retryDelayMaxMs`).
fn retry_delay_max(spec: &ErrorsSpec) -> Duration {
    Duration::from_millis(spec.retry_delay_max_ms.max(0) as u64)
}

/// How long an outage is waited out before the task fails: `outageTimeoutMs`, `None` (-1) = as long as it
/// lasts.
pub fn outage_limit(spec: &ErrorsSpec) -> Option<Duration> {
    (spec.outage_timeout_ms >= 0).then(|| Duration::from_millis(spec.outage_timeout_ms as u64))
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
            .zip(spec.window.as_deref().and_then(crate::duration::parse))
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

/// Why a task's work stops short: it failed, or it was asked to stop while it waited.
#[derive(Debug)]
pub enum Halt {
    Failed(TaskFailed),
    /// SIGTERM during a wait: the task stops cleanly, committing only what it handled before.
    Shutdown,
}

impl From<TaskFailed> for Halt {
    fn from(failed: TaskFailed) -> Self {
        Halt::Failed(failed)
    }
}

/// How a task waits between attempts.
pub trait Wait {
    /// Waits `d`; [`Halt::Shutdown`] when the task is asked to stop meanwhile.
    fn wait(&self, d: Duration) -> impl std::future::Future<Output = Result<(), Halt>>;
}

/// A wait that ends early at shutdown.
#[derive(Clone)]
pub struct ShutdownWait {
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Wait for ShutdownWait {
    async fn wait(&self, d: Duration) -> Result<(), Halt> {
        sleep_unless_stopped(&self.shutdown, d).await
    }
}

/// Sleeps `d`, or returns [`Halt::Shutdown`] as soon as `shutdown` says so.
pub async fn sleep_unless_stopped(
    shutdown: &tokio::sync::watch::Receiver<bool>,
    d: Duration,
) -> Result<(), Halt> {
    let mut rx = shutdown.clone();
    if *rx.borrow_and_update() {
        return Err(Halt::Shutdown);
    }
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return Ok(()),
            changed = rx.changed() => match changed {
                Ok(()) if *rx.borrow() => return Err(Halt::Shutdown),
                Ok(()) => {}
                // No sender any more: nobody can ask to stop; sleep the rest.
                Err(_) => {
                    (&mut sleep).await;
                    return Ok(());
                }
            },
        }
    }
}

/// How a retried operation ended without success.
#[derive(Debug)]
pub enum RetryEnd {
    /// A failure of the operation itself (its retries, if any, are used up): for the caller to handle as
    /// a record error.
    Failed(Failure),
    /// The task stops: an outage outlasted `outageTimeoutMs`, or shutdown during a wait.
    Halt(Halt),
}

impl RetryEnd {
    /// For an operation no record error can stand for (start-up, storing offsets, a heartbeat, a
    /// dead-letter write): its failure stops the task with `reason`, on `record` if it was about one.
    pub fn halt_with(self, reason: TerminationReason, record: Option<&RecordContext>) -> Halt {
        match self {
            RetryEnd::Halt(halt) => halt,
            RetryEnd::Failed(failure) => Halt::Failed(TaskFailed {
                reason,
                failure,
                record: record.map(|r| Box::new(r.clone())),
            }),
        }
    }
}

/// How long an outage has lasted, and how many waits it took.
#[derive(Debug, Default)]
pub struct OutageClock {
    started: Option<Instant>,
    attempt: u32,
}

impl OutageClock {
    fn in_outage(&self) -> bool {
        self.started.is_some()
    }
}

/// Why a task must stop: the first error under `tolerance: none`, the window limit, or a failed DLQ write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failure}{}", .record.as_ref().map(|r| format!(" (record {})", r.coordinates())).unwrap_or_default())]
pub struct TaskFailed {
    pub reason: TerminationReason,
    pub failure: Failure,
    /// The record it failed on (boxed: a failure travels up through every return).
    pub record: Option<Box<RecordContext>>,
}

impl TaskFailed {
    /// The task stops with `reason`, on no record.
    pub fn new(reason: TerminationReason, failure: Failure) -> Self {
        Self {
            reason,
            failure,
            record: None,
        }
    }
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
    to: Destination,
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

    /// Runs `op`, retrying record failures per the spec (`retryTimeoutMs`, `notRetryable`) and waiting
    /// out outages. Every failed attempt counts in `total-record-failures`, every retry in `total-retries`.
    pub async fn retry<T, F, Fut, W>(&self, waiter: &W, mut op: F) -> Result<T, RetryEnd>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
        W: Wait,
    {
        let started = Instant::now();
        let mut attempt = 0;
        let mut outage = OutageClock::default();
        loop {
            match op().await {
                Ok(v) => {
                    self.outage_over(&mut outage);
                    return Ok(v);
                }
                Err(failure) if failure.outage.is_some() => {
                    self.metrics.record_failure(None);
                    self.wait_out(&failure, &mut outage, waiter)
                        .await
                        .map_err(RetryEnd::Halt)?;
                }
                Err(failure) => {
                    self.outage_over(&mut outage);
                    self.metrics.record_failure(None);
                    if !is_retriable(&failure, &self.spec.not_retryable) {
                        return Err(RetryEnd::Failed(failure));
                    }
                    let Some(wait) =
                        next_retry(&self.spec, attempt, started.elapsed(), rand::random())
                    else {
                        return Err(RetryEnd::Failed(failure));
                    };
                    tracing::debug!(stage = failure.stage.connect_name(), class = %failure.class, attempt, ?wait, "retrying");
                    self.metrics.record_retry(None);
                    waiter.wait(wait).await.map_err(RetryEnd::Halt)?;
                    attempt += 1;
                }
            }
        }
    }

    /// One wait of an outage: reported while it lasts, with the retry backoff; the task fails once it
    /// outlasts `outageTimeoutMs`.
    pub async fn wait_out<W: Wait>(
        &self,
        failure: &Failure,
        clock: &mut OutageClock,
        waiter: &W,
    ) -> Result<(), Halt> {
        let dependency = failure.outage.unwrap_or(Dependency::MongoDB);
        let since = *clock.started.get_or_insert_with(Instant::now);
        let error = without_record_contents(&failure.message);
        if clock.attempt == 0 {
            tracing::warn!(
                connector = %self.connector, task = self.task_id, dependency = dependency.as_str(),
                stage = failure.stage.connect_name(), class = %failure.class, code = ?failure.code,
                "{} unavailable; waiting it out (nothing is dead-lettered or skipped): {error}",
                dependency.as_str()
            );
        }
        self.metrics.set_outage(dependency, &error);
        if let Some(limit) = outage_limit(&self.spec)
            && since.elapsed() >= limit
        {
            let reason = match dependency {
                Dependency::MongoDB => TerminationReason::MongoDBUnavailable,
                Dependency::Kafka => TerminationReason::KafkaUnavailable,
            };
            let message = format!(
                "{} unavailable for {}s (spec.errors.outageTimeoutMs): {}",
                dependency.as_str(),
                since.elapsed().as_secs(),
                failure.message
            );
            return Err(TaskFailed::new(
                reason,
                Failure {
                    message,
                    ..failure.clone()
                },
            )
            .into());
        }
        let delay = backoff_delay(clock.attempt, retry_delay_max(&self.spec), rand::random());
        self.metrics.record_retry(None);
        waiter.wait(delay).await?;
        clock.attempt += 1;
        Ok(())
    }

    /// The outage `clock` measured (if any) is over: the operation went through, or failed for a reason of
    /// its own. The clock starts again from zero.
    pub fn outage_over(&self, clock: &mut OutageClock) {
        if clock.in_outage() {
            tracing::info!(connector = %self.connector, task = self.task_id, "available again");
            self.metrics.clear_outage();
        }
        *clock = OutageClock::default();
    }

    /// A record failed for good: count it, log it, send it to the dead-letter queue, and decide by
    /// tolerance. `Ok(())`: the record is skipped and its offset may be committed.
    pub async fn record_failed<W: Wait>(
        &self,
        failure: Failure,
        record: RecordContext,
        waiter: &W,
    ) -> Result<(), Halt> {
        let key = record.ledger_key();
        let key = key.as_deref();
        self.metrics.record_error(key);
        self.metrics.set_last_error(
            &failure.class,
            failure.stage.connect_name(),
            &without_record_contents(&failure.message),
        );
        if self.spec.log_enable {
            self.metrics.record_logged(key);
            let contents = self
                .spec
                .log_include_messages
                .then(|| record.contents_for_log());
            // What the server quotes of the record is record contents too.
            let message = if self.spec.log_include_messages {
                failure.message.clone()
            } else {
                without_record_contents(&failure.message)
            };
            tracing::error!(
                connector = %self.connector, task = self.task_id, stage = failure.stage.connect_name(),
                class = %failure.class, code = ?failure.code, record = %record.coordinates(),
                contents = contents.as_deref().unwrap_or("(errors.logIncludeMessages is off)"),
                "record failed: {message}"
            );
        }
        if self.spec.tolerance == Tolerance::None {
            return Err(Halt::Failed(TaskFailed {
                reason: TerminationReason::RecordFailed,
                failure,
                record: Some(Box::new(record)),
            }));
        }
        if !self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now())
        {
            return Err(Halt::Failed(TaskFailed {
                reason: TerminationReason::ErrorLimitExceeded,
                failure,
                record: Some(Box::new(record)),
            }));
        }
        if let Some(dlq) = &self.dlq
            && let Some(to) = dlq.destination(&record, &failure).await
        {
            // Pipelined: acknowledgements are checked by `flush_dead_letters` before offsets move.
            self.metrics.record_dlq_request(key);
            match dlq.enqueue(&to, &record, &failure, &self.connector, self.task_id) {
                Ok(delivery) => self.pending.lock().await.push(PendingDeadLetter {
                    delivery,
                    to,
                    record,
                    failure,
                }),
                Err(_) => {
                    self.metrics.record_dlq_failure(key);
                    self.send_dead_letter(dlq, &to, &record, &failure, waiter)
                        .await?;
                }
            }
        }
        self.metrics.record_skipped(key);
        Ok(())
    }

    /// Waits for every dead-letter record handed to the producer; one that failed is sent again with the
    /// retry settings. Call it before committing offsets: a record that is neither written nor
    /// dead-lettered stops the task before its offset moves.
    pub async fn flush_dead_letters<W: Wait>(&self, waiter: &W) -> Result<(), Halt> {
        let pending = std::mem::take(&mut *self.pending.lock().await);
        let Some(dlq) = &self.dlq else {
            return Ok(());
        };
        for p in pending {
            if !matches!(p.delivery.await, Ok(Ok(_))) {
                self.metrics
                    .record_dlq_failure(p.record.ledger_key().as_deref());
                self.send_dead_letter(dlq, &p.to, &p.record, &p.failure, waiter)
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits for every dead-letter record handed to the producer, without sending any again: inside an
    /// exactly-once source's transaction, a failed one fails the transaction, which is retried whole.
    pub async fn dead_letters_delivered(&self) -> Result<(), Failure> {
        let pending = std::mem::take(&mut *self.pending.lock().await);
        let mut first = None;
        for p in pending {
            let failed = match p.delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => Failure::kafka(Stage::KafkaProduce, &e),
                Err(_) => {
                    Failure::kafka(Stage::KafkaProduce, &rdkafka::error::KafkaError::Canceled)
                }
            };
            self.metrics
                .record_dlq_failure(p.record.ledger_key().as_deref());
            first.get_or_insert(failed);
        }
        first.map_or(Ok(()), Err)
    }

    /// Forgets the dead-letter records handed to the producer (an aborted transaction took them back).
    pub async fn discard_dead_letters(&self) {
        self.pending.lock().await.clear();
    }

    /// Sends one dead-letter record and waits, retrying per the spec (and waiting out a Kafka outage).
    async fn send_dead_letter<W: Wait>(
        &self,
        dlq: &DeadLetterQueue,
        to: &Destination,
        record: &RecordContext,
        failure: &Failure,
        waiter: &W,
    ) -> Result<(), Halt> {
        let key = record.ledger_key();
        let key = key.as_deref();
        let sent = self
            .retry(waiter, || async {
                self.metrics.record_dlq_request(key);
                dlq.send(to, record, failure, &self.connector, self.task_id)
                    .await
                    .inspect_err(|_| {
                        self.metrics.record_dlq_failure(key);
                    })
            })
            .await;
        // Never commit past a record that is neither handled nor dead-lettered.
        sent.map_err(|end| end.halt_with(TerminationReason::DeadLetterQueueFailed, Some(record)))
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
}
