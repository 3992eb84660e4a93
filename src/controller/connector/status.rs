//! A Connector's status (pure): the conditions that follow from the plan (or from the problem that
//! stopped it) and from the tasks' reports — record errors within the window, the resume token's age
//! against the oplog window — and the status object to write.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::counters::totals;
use super::offsets::{offset_partition_name, rotation_reason, startup_mode};
use super::plan::{Plan, desired_tasks, task_phase, task_reason};
use super::task_poller::Sample;
use crate::controller::conditions::{
    self, DEGRADED, Desired, PROGRESSING, READY, RESUME_TOKEN_AT_RISK, RESUME_TOKEN_RECOVERED,
    reason,
};
use crate::controller::{Problem, events};
use crate::crd::connector::{
    ConnectorState, ConnectorType, OffsetsStatus, RecoveryPolicy, TaskStatus,
};
use crate::crd::{Connector, ConnectorStatus};
use crate::names;
use crate::wire::TerminationReason;

/// What the operator learnt from outside the plan: task reports and time.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// "task 0: 12 record errors in the last 5m, 12 sent to DLQ orders-dlq", when errors rose.
    pub record_errors: Option<String>,
    /// `ResumeTokenAtRisk` of a source.
    pub at_risk: Option<Desired>,
    /// Automatic rotations stopped at `maxRotations` (`RotationLoop`), with the history.
    pub rotation_loop: Option<String>,
    /// A dependency some task waits for: the reason (`MongoDBUnavailable`, `KafkaUnavailable`) and a
    /// message naming the tasks, since when and the last error.
    pub outage: Option<(&'static str, String)>,
}

/// A dependency tasks report waiting for (`tasks[].outage.dependency`), with the `Degraded` reason while
/// they wait and the Event reason when the wait ends.
pub struct Outage {
    pub dependency: &'static str,
    pub reason: &'static str,
    pub available: &'static str,
}

/// Every dependency a task can wait for; the first also stands for one a task names that is not here.
pub const OUTAGES: [Outage; 2] = [
    Outage {
        dependency: "MongoDB",
        reason: reason::MONGODB_UNAVAILABLE,
        available: events::reason::MONGODB_AVAILABLE,
    },
    Outage {
        dependency: "Kafka",
        reason: reason::KAFKA_UNAVAILABLE,
        available: events::reason::KAFKA_AVAILABLE,
    },
];

/// The outage whose `Degraded` reason this is.
pub fn outage_of_reason(reason: &str) -> Option<&'static Outage> {
    OUTAGES.iter().find(|o| o.reason == reason)
}

/// The outage the tasks report, if any: the first dependency reported, with every task waiting for it.
pub fn outage_signal(tasks: &[TaskStatus]) -> Option<(&'static str, String)> {
    let first = tasks.iter().find_map(|t| t.outage.as_ref())?;
    let waiting: Vec<String> = tasks
        .iter()
        .filter_map(|t| {
            let o = t
                .outage
                .as_ref()
                .filter(|o| o.dependency == first.dependency)?;
            Some(format!("task {} since {}: {}", t.id, o.since, o.error))
        })
        .collect();
    let outage = OUTAGES
        .iter()
        .find(|o| o.dependency == first.dependency)
        .unwrap_or(&OUTAGES[0]);
    Some((
        outage.reason,
        format!(
            "{} unavailable ({}); the tasks wait it out: nothing is dead-lettered or skipped, and offsets \
             move only past records that were written",
            first.dependency,
            waiting.join("; ")
        ),
    ))
}

/// The signals of a reconcile, and how soon they ask for the next one: record errors clear by themselves
/// once they leave the window, and an in-window token turns at risk at a known time.
pub fn signals(
    conn: &Connector,
    plan: &Plan,
    samples: &BTreeMap<u32, Sample>,
    dead_letter_destination: Option<&str>,
    now: Timestamp,
    window: Duration,
    poll_interval: Duration,
) -> (Signals, Option<Duration>) {
    let mut requeue: Option<Duration> = None;
    let mut within = |d: Duration| requeue = Some(requeue.map_or(d, |r| r.min(d)));
    let record_errors = record_errors_message(samples, now, window, dead_letter_destination);
    if record_errors.is_some() {
        within(poll_interval);
    }
    let mut at_risk = None;
    if conn.spec.connector_type == ConnectorType::MongodbSource
        && conn.spec.state == ConnectorState::Running
    {
        let (risk, flips_in) = resume_token_risk(plan.tasks.first(), now);
        at_risk = Some(risk);
        if let Some(d) = flips_in {
            within(d);
        }
    }
    (
        Signals {
            record_errors,
            at_risk,
            outage: outage_signal(&plan.tasks),
            rotation_loop: None,
        },
        requeue,
    )
}

/// `12 record errors in the last 5m` for every task whose errors rose within `window`.
pub fn record_errors_message(
    samples: &BTreeMap<u32, Sample>,
    now: Timestamp,
    window: Duration,
    dead_letter_destination: Option<&str>,
) -> Option<String> {
    let parts: Vec<String> = samples
        .iter()
        .filter_map(|(id, sample)| {
            let (errors, dlq) = sample.errors_within(now, window);
            (errors > 0).then(|| {
                let sent = match dead_letter_destination {
                    Some(destination) => format!(", {dlq} sent to {destination}"),
                    None => String::new(),
                };
                format!(
                    "task {id}: {errors} record errors in the last {}{sent}",
                    crate::duration::human(window)
                )
            })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `ResumeTokenAtRisk` from what the source task reported, and when it would turn True by itself.
pub fn resume_token_risk(task: Option<&TaskStatus>, now: Timestamp) -> (Desired, Option<Duration>) {
    let Some(r) = task.and_then(|t| t.resume_token.as_ref()) else {
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                reason::NOT_REPORTED,
                "the source task has not reported its resume token yet",
            ),
            None,
        );
    };
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    let Some(token) = parse(&r.time) else {
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                reason::NO_RESUME_TOKEN,
                "the source has stored no resume token yet",
            ),
            None,
        );
    };
    let (Some(first), Some(last)) = (parse(&r.oplog_first_time), parse(&r.oplog_last_time)) else {
        let why = r
            .oplog_window_unknown
            .clone()
            .unwrap_or_else(|| "the source task has not read it yet".into());
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                reason::OPLOG_WINDOW_UNKNOWN,
                format!("resume token from {token}; the oplog window can't be read: {why}"),
            ),
            None,
        );
    };
    if last <= first {
        return (
            Desired::unknown(
                RESUME_TOKEN_AT_RISK,
                reason::OPLOG_WINDOW_UNKNOWN,
                format!(
                    "resume token from {token}; the oplog's first and last entries are both at {first} \
                     (a single entry, or a server that does not order local.oplog.rs by $natural): no \
                     window to compare with"
                ),
            ),
            None,
        );
    }
    let window = last.duration_since(first).unsigned_abs();
    let age = now.duration_since(token).unsigned_abs();
    let half = window / 2;
    if age > half {
        let left = window.saturating_sub(age);
        (
            Desired::new(
                RESUME_TOKEN_AT_RISK,
                true,
                reason::TOKEN_OLDER_THAN_HALF_THE_OPLOG_WINDOW,
                format!(
                    "the resume token is {} old (from {token}), more than half the oplog window of {} \
                     ({first} to {last}); it leaves the oplog in about {} unless changes or heartbeats \
                     (spec.source.heartbeat) move it on",
                    crate::duration::human(age),
                    crate::duration::human(window),
                    crate::duration::human(left)
                ),
            ),
            None,
        )
    } else {
        (
            Desired::new(
                RESUME_TOKEN_AT_RISK,
                false,
                reason::WITHIN_OPLOG_WINDOW,
                format!(
                    "resume token from {token}; oplog window {} ({first} to {last})",
                    crate::duration::human(window)
                ),
            ),
            Some(half - age + Duration::from_secs(1)),
        )
    }
}

/// `ResumeTokenRecovered` from the last rotation and whether the task runs again.
fn resume_token_recovered(conn: &Connector, plan: Option<&Plan>) -> Desired {
    let offsets = conn.status.as_ref().and_then(|s| s.offsets.as_ref());
    let Some(last) = offsets.and_then(|o| o.rotations.last()) else {
        return Desired::new(
            RESUME_TOKEN_RECOVERED,
            false,
            reason::NO_ROTATION,
            "the offset partition name was never rotated",
        );
    };
    let mode = startup_mode(conn)
        .map(|m| format!("{m:?}"))
        .unwrap_or_default();
    let cause = match (&last.code_name, last.code) {
        (Some(name), Some(code)) => format!("after {name} ({code})"),
        _ if last.reason == rotation_reason::REQUESTED => "on request".to_string(),
        _ => format!("after {}", last.reason),
    };
    let what = format!(
        "rotated offset partition {} to {} at {} {cause}; the task starts with startup mode {mode}",
        last.from, last.to, last.time
    );
    let running = plan.is_some_and(|p| {
        !p.tasks.is_empty()
            && p.tasks
                .iter()
                .all(|t| t.phase.as_deref() == Some(task_phase::RUNNING))
    });
    if running {
        Desired::new(
            RESUME_TOKEN_RECOVERED,
            true,
            reason::OFFSET_PARTITION_ROTATED,
            format!(
                "{what}; it runs again (changes made while no task ran were not captured by a latest start)"
            ),
        )
    } else {
        Desired::new(
            RESUME_TOKEN_RECOVERED,
            false,
            reason::RECOVERING,
            format!("{what}; waiting for the task to run"),
        )
    }
}

/// The conditions that follow from the plan (or from a problem that stopped it).
pub fn decide_conditions(
    conn: &Connector,
    plan: Option<&Plan>,
    problem: Option<&Problem>,
    signals: &Signals,
) -> Vec<Desired> {
    let mut conditions = decide_main_conditions(conn, plan, problem, signals);
    if conn.spec.connector_type == ConnectorType::MongodbSource {
        conditions.push(resume_token_recovered(conn, plan));
        if let Some(risk) = &signals.at_risk {
            conditions.push(risk.clone());
        }
    }
    conditions
}

fn decide_main_conditions(
    conn: &Connector,
    plan: Option<&Plan>,
    problem: Option<&Problem>,
    signals: &Signals,
) -> Vec<Desired> {
    let Some(plan) = plan else {
        let p = problem
            .cloned()
            .unwrap_or_else(|| Problem::new(reason::UNKNOWN, ""));
        return vec![
            Desired::new(READY, false, p.reason, p.message),
            Desired::new(
                PROGRESSING,
                false,
                reason::BLOCKED,
                "waiting for the problem in the Ready condition to be fixed",
            ),
            Desired::new(DEGRADED, false, reason::AS_EXPECTED, ""),
        ];
    };
    vec![
        ready(conn, plan, signals),
        progressing(plan),
        degraded(conn, plan, signals),
    ]
}

/// `Ready`: every wanted task runs (or the state wants none), and none waits for an unavailable dependency.
fn ready(conn: &Connector, plan: &Plan, signals: &Signals) -> Desired {
    let desired = desired_tasks(conn);
    let running = plan
        .tasks
        .iter()
        .filter(|t| t.phase.as_deref() == Some(task_phase::RUNNING))
        .count() as u32;
    match conn.spec.state {
        ConnectorState::Running if let Some((why, message)) = &signals.outage => {
            Desired::new(READY, false, *why, message.clone())
        }
        ConnectorState::Running if running == desired => Desired::new(
            READY,
            true,
            reason::TASKS_READY,
            format!("{running}/{desired} tasks running"),
        ),
        ConnectorState::Running => Desired::new(
            READY,
            false,
            reason::TASKS_NOT_READY,
            format!("{running}/{desired} tasks running"),
        ),
        ConnectorState::Paused => Desired::new(
            READY,
            true,
            reason::PAUSED,
            "spec.state is paused: no tasks run, offsets are kept",
        ),
        ConnectorState::Stopped => Desired::new(
            READY,
            true,
            reason::STOPPED,
            "spec.state is stopped: no tasks run",
        ),
    }
}

/// `Progressing`: pods are being created, replaced or removed.
fn progressing(plan: &Plan) -> Desired {
    let busy = !plan.create.is_empty()
        || !plan.delete.is_empty()
        || plan.tasks.iter().any(|t| {
            matches!(
                t.phase.as_deref(),
                Some(task_phase::PENDING | task_phase::STOPPING | task_phase::RESTARTING)
            )
        });
    if busy {
        Desired::new(
            PROGRESSING,
            true,
            reason::TASKS_CHANGING,
            "task pods are being created, replaced or removed",
        )
    } else {
        Desired::new(
            PROGRESSING,
            false,
            reason::STABLE,
            "every task is as the spec asks",
        )
    }
}

/// `Degraded`: a task lost its resume point for good (policy fail), a task failed, or record errors rose.
fn degraded(conn: &Connector, plan: &Plan, signals: &Signals) -> Desired {
    let failed: Vec<&TaskStatus> = plan
        .tasks
        .iter()
        .filter(|t| t.phase.as_deref() == Some(task_phase::FAILED))
        .collect();
    let lost_for_good = failed.iter().find(|t| {
        t.reason.as_deref() == Some(TerminationReason::ResumeTokenLost.as_str())
            && conn
                .spec
                .source
                .as_ref()
                .is_some_and(|s| s.resume_token_recovery.policy == RecoveryPolicy::Fail)
    });
    if let (Some(message), Some(_)) = (&signals.rotation_loop, failed.first()) {
        return Desired::new(DEGRADED, true, reason::ROTATION_LOOP, message.clone());
    }
    match (lost_for_good, failed.first()) {
        (Some(t), _) => {
            let mode = conn
                .spec
                .source
                .as_ref()
                .map(|s| format!("{:?}", s.resume_token_recovery.startup_mode_after_rotation))
                .unwrap_or_default();
            Desired::new(
                DEGRADED,
                true,
                reason::RESUME_TOKEN_LOST,
                format!(
                    "task {} lost its resume point in offset partition {}: {}. \
                     spec.source.resumeTokenRecovery.policy is fail, so nothing restarts it. To go on \
                     under a new offset partition name with startup mode {mode} (changes since the lost \
                     point are not replayed): kubectl annotate connector {} {}=\
                     \"$(date +%s)\" --overwrite",
                    t.id,
                    offset_partition_name(conn),
                    t.message.clone().unwrap_or_default(),
                    conn.name_any(),
                    names::ANNOTATION_ROTATE_OFFSETS,
                ),
            )
        }
        (None, Some(t)) => {
            let reason = if t.reason.as_deref() == Some(task_reason::MAX_RESTARTS_REACHED) {
                reason::MAX_RESTARTS_REACHED
            } else {
                reason::TASK_FAILED
            };
            let next = t
                .next_restart_time
                .as_deref()
                .map(|n| format!("; next restart at {n}"))
                .unwrap_or_default();
            Desired::new(
                DEGRADED,
                true,
                reason,
                format!(
                    "task {} failed ({}): {}{next}",
                    t.id,
                    t.reason.clone().unwrap_or_default(),
                    t.message.clone().unwrap_or_default()
                ),
            )
        }
        (None, None) => match (&signals.outage, &signals.record_errors) {
            (Some((why, message)), _) => Desired::new(DEGRADED, true, *why, message.clone()),
            (None, Some(message)) => {
                Desired::new(DEGRADED, true, reason::RECORD_ERRORS, message.clone())
            }
            (None, None) => Desired::new(DEGRADED, false, reason::AS_EXPECTED, "no task failed"),
        },
    }
}

/// The status to write.
pub fn build_status(
    conn: &Connector,
    plan: Option<&Plan>,
    problem: Option<&Problem>,
    signals: &Signals,
    now: Timestamp,
) -> ConnectorStatus {
    let old = conn.status.clone().unwrap_or_default();
    let desired = desired_tasks(conn);
    let tasks = plan.map(|p| p.tasks.clone()).unwrap_or(old.tasks.clone());
    let partition_totals = plan
        .map(|p| p.partition_totals.clone())
        .unwrap_or_else(|| old.partition_totals.clone());
    let running = tasks
        .iter()
        .filter(|t| t.phase.as_deref() == Some(task_phase::RUNNING))
        .count();
    let mut offsets = old.offsets.clone().unwrap_or_default();
    if conn.spec.connector_type == ConnectorType::MongodbSource {
        offsets.partition_name = Some(offset_partition_name(conn));
    }
    ConnectorStatus {
        observed_generation: conn.metadata.generation,
        conditions: conditions::merge(
            &old.conditions,
            &decide_conditions(conn, plan, problem, signals),
            conn.metadata.generation,
            now,
        ),
        task_summary: Some(format!("{running}/{desired}")),
        totals: Some(totals(&partition_totals)),
        partition_totals,
        tasks,
        offsets: (offsets != OffsetsStatus::default()).then_some(offsets),
    }
}

#[cfg(test)]
mod tests {
    use super::super::counters::tests::sample;
    use super::super::offsets;
    use super::super::plan::tests::{SINK, SOURCE, connector, lost, observed, restarts_exhausted};
    use super::super::plan::{self, DeleteReason};
    use super::*;
    use crate::controller::pod_status::PodPhase;
    use crate::crd::connector::RecoveryPolicy;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn restarts_that_stop_at_max_restarts_degrade_the_connector() {
        let (conn, exhausted) = restarts_exhausted();
        let conds = decide_conditions(&conn, Some(&exhausted), None, &Signals::default());
        assert_eq!(
            (conds[2].type_, conds[2].status, conds[2].reason.as_str()),
            (DEGRADED, true, "MaxRestartsReached")
        );
    }

    #[test]
    fn conditions_say_ready_only_when_every_task_runs() {
        let conn = connector(SINK);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let all = plan::plan(
            &conn,
            &[
                observed(0, PodPhase::Running, "a"),
                observed(1, PodPhase::Running, "b"),
            ],
            &["a".into(), "b".into()],
            now,
        );
        let conds = decide_conditions(&conn, Some(&all), None, &Signals::default());
        assert!(
            conds[0].status && !conds[1].status && !conds[2].status,
            "{conds:?}"
        );
        let status = build_status(&conn, Some(&all), None, &Signals::default(), now);
        assert_eq!(status.task_summary.as_deref(), Some("2/2"));

        let half = plan::plan(
            &conn,
            &[observed(0, PodPhase::Running, "a")],
            &["a".into(), "b".into()],
            now,
        );
        let conds = decide_conditions(&conn, Some(&half), None, &Signals::default());
        assert!(!conds[0].status && conds[1].status, "{conds:?}");

        let problem = Problem::new(
            "SecretNotFound",
            "Secret shop/mongo (spec.mongodb.connectionUriSecretRef) not found",
        );
        let conds = decide_conditions(&conn, None, Some(&problem), &Signals::default());
        assert_eq!(
            (conds[0].status, conds[0].reason.as_str()),
            (false, "SecretNotFound")
        );
    }
    #[test]
    fn policy_fail_waits_for_the_rotate_annotation() {
        let mut conn = connector(SOURCE);
        conn.spec
            .source
            .as_mut()
            .unwrap()
            .resume_token_recovery
            .policy = RecoveryPolicy::Fail;
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let pods = [lost("pod-1")];
        let none = std::collections::BTreeSet::new();
        assert_eq!(
            offsets::decide_rotation(&conn, &pods, &none, now),
            offsets::Rotation::None
        );
        let p = plan::plan(
            &conn,
            &pods,
            &["h".into()],
            now + SignedDuration::from_secs(3600),
        );
        assert!(
            p.delete.is_empty(),
            "no restart that would fail the same way"
        );
        let conds = decide_conditions(&conn, Some(&p), None, &Signals::default());
        let degraded = conds.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(
            (degraded.status, degraded.reason.as_str()),
            (true, "ResumeTokenLost")
        );
        assert!(
            degraded
                .message
                .contains("kubectl annotate connector events sluice.dev/rotate-offsets="),
            "{}",
            degraded.message
        );

        conn.metadata.annotations = Some(BTreeMap::from([(
            names::ANNOTATION_ROTATE_OFFSETS.into(),
            "1".into(),
        )]));
        let offsets::Rotation::Now(offsets) = offsets::decide_rotation(&conn, &pods, &none, now)
        else {
            panic!("rotates on request")
        };
        assert_eq!(offsets.rotations[0].reason, "Requested");
        assert_eq!(offsets.last_rotate_request.as_deref(), Some("1"));
        conn.status = Some(ConnectorStatus {
            offsets: Some(offsets),
            ..Default::default()
        });
        assert_eq!(
            offsets::decide_rotation(&conn, &pods, &none, now),
            offsets::Rotation::None,
            "one rotation per request value"
        );
        let p = plan::plan(&conn, &pods, &["new-config".into()], now);
        assert_eq!(
            p.delete,
            [("orders-task-0".into(), DeleteReason::ConfigChanged)],
            "replaced at once"
        );
    }

    #[test]
    fn rising_record_errors_make_a_message_per_task() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let mut s = sample("uid-0", 12);
        s.history = [(now - SignedDuration::from_secs(60), 0, 0), (now, 12, 12)].into();
        let samples = BTreeMap::from([(0, s)]);
        assert_eq!(
            record_errors_message(
                &samples,
                now,
                Duration::from_secs(300),
                Some("DLQ orders-dlq")
            )
            .as_deref(),
            Some("task 0: 12 record errors in the last 5m, 12 sent to DLQ orders-dlq")
        );
        let later = now + SignedDuration::from_secs(600);
        assert_eq!(
            record_errors_message(&samples, later, Duration::from_secs(300), None),
            None
        );
    }

    #[test]
    fn a_token_older_than_half_the_oplog_window_is_at_risk() {
        use crate::crd::connector::ResumeTokenStatus;
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let task = |token: &str| TaskStatus {
            resume_token: Some(ResumeTokenStatus {
                time: Some(token.into()),
                oplog_first_time: Some("2026-01-01T00:00:00Z".into()),
                oplog_last_time: Some("2026-01-01T01:00:00Z".into()),
                oplog_window_unknown: None,
            }),
            ..Default::default()
        };
        let (fresh, flips) = resume_token_risk(Some(&task("2026-01-01T00:50:00Z")), now);
        assert_eq!((fresh.status, fresh.unknown), (false, false));
        assert_eq!(flips, Some(Duration::from_secs(20 * 60 + 1)));
        let (old, _) = resume_token_risk(Some(&task("2026-01-01T00:20:00Z")), now);
        assert!(old.status, "{}", old.message);
        assert!(
            old.message.contains("40m old") && old.message.contains("1h"),
            "{}",
            old.message
        );
        let mut unknown = task("2026-01-01T00:20:00Z");
        unknown.resume_token.as_mut().unwrap().oplog_first_time = None;
        unknown.resume_token.as_mut().unwrap().oplog_window_unknown = Some("not authorized".into());
        let (c, _) = resume_token_risk(Some(&unknown), now);
        assert!(c.unknown && c.message.contains("not authorized"), "{c:?}");
        let mut single = task("2026-01-01T00:20:00Z");
        single.resume_token.as_mut().unwrap().oplog_first_time =
            Some("2026-01-01T01:00:00Z".into());
        let (c, _) = resume_token_risk(Some(&single), now);
        assert!(c.unknown && c.message.contains("both at"), "{c:?}");
        assert!(
            old.message.contains("1h (2026"),
            "one space: {}",
            old.message
        );
    }

    #[test]
    fn a_task_waiting_out_an_outage_makes_the_connector_not_ready_and_degraded() {
        use crate::crd::connector::OutageStatus;
        let conn = connector(SINK);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut p = plan::plan(
            &conn,
            &[
                observed(0, PodPhase::Running, "a"),
                observed(1, PodPhase::Running, "b"),
            ],
            &["a".into(), "b".into()],
            now,
        );
        p.tasks[1].outage = Some(OutageStatus {
            dependency: "MongoDB".into(),
            since: "2026-01-01T00:00:00Z".into(),
            error: "Server selection timeout".into(),
        });
        let signals = Signals {
            outage: outage_signal(&p.tasks),
            record_errors: Some("task 0: 1 record errors in the last 5m".into()),
            ..Default::default()
        };
        let conds = decide_conditions(&conn, Some(&p), None, &signals);
        assert_eq!(
            (conds[0].status, conds[0].reason.as_str()),
            (false, "MongoDBUnavailable"),
            "tasks run, but no write goes through: not Ready"
        );
        assert_eq!(
            (conds[2].status, conds[2].reason.as_str()),
            (true, "MongoDBUnavailable"),
            "the outage wins over record errors"
        );
        assert!(
            conds[2]
                .message
                .contains("task 1 since 2026-01-01T00:00:00Z: Server selection timeout")
                && conds[2].message.contains("nothing is dead-lettered"),
            "{}",
            conds[2].message
        );
        p.tasks[1].outage = None;
        assert_eq!(outage_signal(&p.tasks), None);
        // Kafka: its own reason, and its own Event when it ends.
        p.tasks[0].outage = Some(OutageStatus {
            dependency: "Kafka".into(),
            since: "2026-01-01T00:00:00Z".into(),
            error: "Local: Message timed out".into(),
        });
        let (reason, message) = outage_signal(&p.tasks).unwrap();
        assert_eq!(reason, "KafkaUnavailable");
        assert!(
            message.starts_with("Kafka unavailable (task 0 since"),
            "{message}"
        );
        assert_eq!(
            outage_of_reason(reason).map(|o| o.available),
            Some("KafkaAvailable")
        );
        assert!(outage_of_reason("RecordErrors").is_none());
    }
}
