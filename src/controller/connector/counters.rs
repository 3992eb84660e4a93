//! Error counters across task pods (pure). A task's own counters (`tasks[].metrics`) belong to its pod
//! (`podUid`) and start from zero with a new pod, as Kafka Connect's task metrics do. The Connector's
//! totals come from the ledgers the tasks keep with their offsets (see [`crate::task::ledger`]), one per
//! input partition: the report from furthest on in a partition wins, so a killed task's counts are
//! neither lost nor counted twice. The decision rests on status, not on the operator's memory, so an
//! operator restart changes nothing.

use std::collections::BTreeMap;

use super::plan::ObservedPod;
use super::task_poller::Sample;
use crate::crd::connector::{ErrorCounters, PartitionTotals, TaskStatus};

/// Puts what the tasks reported into their statuses (counters, records, last error, resume token,
/// outage), each task's from its current pod only.
pub fn merge_task_reports(
    previous: &[TaskStatus],
    tasks: &mut [TaskStatus],
    pods: &[ObservedPod],
    samples: &BTreeMap<u32, Sample>,
) {
    for prev in previous {
        let Some(task) = tasks.iter_mut().find(|t| t.id == prev.id) else {
            continue;
        };
        let current_uid = pods
            .iter()
            .find(|p| p.task_id == Some(prev.id as u32))
            .and_then(|p| p.uid.clone());
        task.last_error = prev.last_error.clone();
        if prev.pod_uid.is_none() || prev.pod_uid == current_uid {
            task.metrics = prev.metrics.clone();
            task.records_in = prev.records_in;
            task.records_out = prev.records_out;
            task.resume_token = prev.resume_token.clone();
            task.outage = prev.outage.clone();
            task.delivery = prev.delivery.clone();
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
            task.delivery = r.delivery.clone();
        }
        // A pod that ended (final counters or a terminal phase) waits for nothing.
        if pod.counters.is_some() || pod.phase.is_terminal() {
            task.outage = None;
        }
    }
}

/// The partitions' ledgers after this reconcile: what status had, with each ledger the pods report (final
/// ones from termination messages first, then the running pods' reports) that is at least as far on.
pub fn merge_partition_totals(
    mut partitions: BTreeMap<String, PartitionTotals>,
    pods: &[ObservedPod],
    samples: &BTreeMap<u32, Sample>,
) -> BTreeMap<String, PartitionTotals> {
    let finals = pods.iter().flat_map(|p| &p.partitions);
    let live = samples
        .values()
        .filter(|s| pods.iter().any(|p| p.uid.as_ref() == Some(&s.pod_uid)))
        .flat_map(|s| &s.report.partitions);
    for (key, reported) in finals.chain(live) {
        let further = partitions
            .get(key)
            .is_none_or(|had| reported.position >= had.position);
        if further {
            partitions.insert(key.clone(), reported.clone());
        }
    }
    partitions
}

/// The Connector's totals: every partition's ledger, summed.
pub fn totals(partitions: &BTreeMap<String, PartitionTotals>) -> ErrorCounters {
    let mut sum = ErrorCounters::default();
    for p in partitions.values() {
        sum.add(&p.errors);
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

    fn ledger(position: i64, errors: i64) -> PartitionTotals {
        PartitionTotals {
            position,
            errors: ErrorCounters {
                total_record_errors: errors,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_task_pod_s_own_counters_start_again_with_a_new_pod() {
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        let pods = [observed(0, PodPhase::Running, "h")];
        let samples = BTreeMap::from([(0, sample("uid-0", 3))]);
        merge_task_reports(&[], &mut tasks, &pods, &samples);
        assert_eq!(tasks[0].metrics.as_ref().unwrap().total_record_errors, 3);
        assert_eq!(
            (tasks[0].records_in, tasks[0].pod_uid.as_deref()),
            (Some(5), Some("uid-0"))
        );
        // The pod failed with 4 errors in its termination message.
        let previous = tasks.clone();
        let mut failed = observed(0, PodPhase::Failed, "h");
        failed.counters = Some(ledger(0, 4).errors);
        merge_task_reports(&previous, &mut tasks, &[failed], &samples);
        assert_eq!(
            tasks[0].metrics.as_ref().unwrap().total_record_errors,
            4,
            "final counters from the termination message"
        );
        // Replaced by uid-9: its own counters, nothing of the old pod.
        let previous = tasks.clone();
        let mut new_pod = observed(0, PodPhase::Running, "h");
        new_pod.uid = Some("uid-9".into());
        let mut tasks = vec![TaskStatus {
            id: 0,
            ..Default::default()
        }];
        merge_task_reports(&previous, &mut tasks, &[new_pod], &BTreeMap::new());
        assert_eq!(tasks[0].metrics, None);
    }

    #[test]
    fn the_ledger_from_furthest_on_wins_so_a_killed_task_is_counted_once() {
        // Task 0 reported orders-0 at offset 100 (stored, not yet committed), then was SIGKILLed.
        let mut killed = sample("uid-0", 0);
        killed.report.partitions = BTreeMap::from([("orders-0".to_string(), ledger(100, 7))]);
        let pods = [observed(0, PodPhase::Running, "h")];
        let partitions =
            merge_partition_totals(BTreeMap::new(), &pods, &BTreeMap::from([(0, killed)]));
        assert_eq!(totals(&partitions).total_record_errors, 7);
        // Task 1 gets the partition from its last commit (offset 90, 5 errors): behind, so the last
        // report stands until task 1 handled the records after the commit again.
        let mut next_owner = sample("uid-1", 0);
        next_owner.report.partitions = BTreeMap::from([("orders-0".to_string(), ledger(90, 5))]);
        let pods = [observed(1, PodPhase::Running, "h")];
        let samples = BTreeMap::from([(1, next_owner.clone())]);
        let partitions = merge_partition_totals(partitions, &pods, &samples);
        assert_eq!(totals(&partitions).total_record_errors, 7);
        // Past offset 100 (the same 2 records failed again, and 1 more): its ledger replaces the old one.
        next_owner.report.partitions = BTreeMap::from([("orders-0".to_string(), ledger(120, 8))]);
        let samples = BTreeMap::from([(1, next_owner)]);
        let partitions = merge_partition_totals(partitions, &pods, &samples);
        assert_eq!(totals(&partitions).total_record_errors, 8, "not 7 + 8");
        // A pod that is gone reports nothing; what status has stays.
        let partitions = merge_partition_totals(partitions, &[], &samples);
        assert_eq!(totals(&partitions).total_record_errors, 8);
        // A final ledger from a termination message counts like a report.
        let mut failed = observed(1, PodPhase::Failed, "h");
        failed.partitions = BTreeMap::from([("orders-1".to_string(), ledger(3, 1))]);
        let partitions = merge_partition_totals(partitions, &[failed], &BTreeMap::new());
        assert_eq!(totals(&partitions).total_record_errors, 9);
    }
}
