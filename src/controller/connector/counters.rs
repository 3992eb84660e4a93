//! Error counters across task pods (pure). A task's counters belong to one pod (`podUid`); when the pod is
//! gone or replaced, its last counters — from its termination message, else its last report — move to the
//! Connector's `endedTaskTotals`, once. The decision rests on status, not on the operator's memory, so an
//! operator restart neither loses nor doubles them.

use std::collections::BTreeMap;

use super::plan::ObservedPod;
use super::task_poller::Sample;
use crate::crd::connector::{ErrorCounters, TaskStatus};

/// Puts what the tasks reported into their statuses, and returns the counters of task pods that ended
/// (added to `ended`). A task's counters belong to one pod (`podUid`); when the task's pod is gone or
/// replaced, its last counters move to the ended totals, once — the decision rests on status, not memory.
pub fn merge_task_reports(
    previous: &[TaskStatus],
    tasks: &mut [TaskStatus],
    pods: &[ObservedPod],
    samples: &BTreeMap<u32, Sample>,
    mut ended: ErrorCounters,
) -> ErrorCounters {
    for prev in previous {
        let task = tasks.iter_mut().find(|t| t.id == prev.id);
        let current_uid = pods
            .iter()
            .find(|p| p.task_id == Some(prev.id as u32))
            .and_then(|p| p.uid.clone());
        let same_pod = prev.pod_uid.is_none() || prev.pod_uid == current_uid;
        if (!same_pod || task.is_none())
            && let Some(m) = &prev.metrics
        {
            add_counters(&mut ended, m);
        }
        if let Some(task) = task {
            task.last_error = prev.last_error.clone();
            if same_pod {
                task.metrics = prev.metrics.clone();
                task.records_in = prev.records_in;
                task.records_out = prev.records_out;
                task.resume_token = prev.resume_token.clone();
                task.outage = prev.outage.clone();
            } else {
                task.metrics = None;
            }
        }
    }
    for task in tasks.iter_mut() {
        let pod = pods.iter().find(|p| p.task_id == Some(task.id as u32));
        task.pod_uid = pod.and_then(|p| p.uid.clone());
        let Some(pod) = pod else { continue };
        if let Some(final_counters) = &pod.counters {
            task.metrics = Some(final_counters.clone());
        } else if let Some(sample) = samples
            .get(&(task.id as u32))
            .filter(|s| Some(&s.pod_uid) == pod.uid.as_ref())
        {
            let r = &sample.report;
            task.metrics = Some(r.errors.clone());
            task.records_in = Some(r.records_in as i64);
            task.records_out = Some(r.records_out as i64);
            if r.last_error.is_some() {
                task.last_error = r.last_error.clone();
            }
            task.resume_token = r.resume_token.clone();
            task.outage = r.outage.clone();
        }
        // A pod that ended (final counters or a terminal phase) waits for nothing.
        if pod.counters.is_some() || pod.phase.is_terminal() {
            task.outage = None;
        }
    }
    ended
}

fn add_counters(sum: &mut ErrorCounters, c: &ErrorCounters) {
    sum.total_record_failures += c.total_record_failures;
    sum.total_record_errors += c.total_record_errors;
    sum.total_records_skipped += c.total_records_skipped;
    sum.total_retries += c.total_retries;
    sum.total_errors_logged += c.total_errors_logged;
    sum.dead_letter_queue_produce_requests += c.dead_letter_queue_produce_requests;
    sum.dead_letter_queue_produce_failures += c.dead_letter_queue_produce_failures;
    sum.last_error_timestamp = sum.last_error_timestamp.max(c.last_error_timestamp);
}

/// Totals over tasks plus the ended pods' counters.
pub fn totals(tasks: &[TaskStatus], ended: &ErrorCounters) -> ErrorCounters {
    let mut sum = ended.clone();
    for m in tasks.iter().filter_map(|t| t.metrics.as_ref()) {
        add_counters(&mut sum, m);
    }
    sum
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::plan::tests::observed;
    use super::*;
    use crate::controller::pod_status::PodPhase;

    pub fn sample(uid: &str, errors: i64) -> Sample {
        let mut report: crate::wire::StatusReport = serde_json::from_value(serde_json::json!({
            "connector": "orders", "task": "0", "running": true, "recordsIn": 5, "recordsOut": 4, "errors": {}
        }))
        .unwrap();
        report.errors.total_record_errors = errors;
        Sample {
            pod_uid: uid.into(),
            report,
            history: Default::default(),
        }
    }

    #[test]
    fn counters_of_a_replaced_task_pod_stay_in_the_totals() {
        let counters = |n| ErrorCounters {
            total_record_errors: n,
            ..Default::default()
        };
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let pods = [observed(0, PodPhase::Running, "h")];
        let samples = BTreeMap::from([(0, sample("uid-0", 3))]);
        let ended = merge_task_reports(&[], &mut tasks, &pods, &samples, ErrorCounters::default());
        assert_eq!(tasks[0].metrics, Some(counters(3)));
        assert_eq!(
            (tasks[0].records_in, tasks[0].pod_uid.as_deref()),
            (Some(5), Some("uid-0"))
        );
        assert_eq!(totals(&tasks, &ended).total_record_errors, 3);

        // The pod failed with 4 errors in its termination message, then was replaced by uid-9.
        let previous = tasks.clone();
        let mut failed = observed(0, PodPhase::Failed, "h");
        failed.counters = Some(counters(4));
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let ended = merge_task_reports(&previous, &mut tasks, &[failed], &samples, ended);
        assert_eq!(
            tasks[0].metrics,
            Some(counters(4)),
            "final counters from the termination message"
        );
        let previous = tasks.clone();
        let mut new_pod = observed(0, PodPhase::Running, "h");
        new_pod.uid = Some("uid-9".into());
        let samples = BTreeMap::from([(0, sample("uid-9", 1))]);
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let ended = merge_task_reports(&previous, &mut tasks, &[new_pod.clone()], &samples, ended);
        assert_eq!(ended.total_record_errors, 4);
        assert_eq!(totals(&tasks, &ended).total_record_errors, 5);
        // Seen again: nothing moves twice.
        let previous = tasks.clone();
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let ended = merge_task_reports(&previous, &mut tasks, &[new_pod], &samples, ended);
        assert_eq!(totals(&tasks, &ended).total_record_errors, 5);
        // Stopped: no tasks wanted, the last counters join the ended ones.
        let ended = merge_task_reports(&tasks, &mut [], &[], &samples, ended);
        assert_eq!(ended.total_record_errors, 5);
    }
}
