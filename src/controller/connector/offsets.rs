//! A Connector's offsets (pure decisions): the source's offset partition name and when it rotates
//! (`<base>` → `<base>.1` → `<base>.2`), the startup mode that follows a rotation, and when an offset
//! reset (KIP-875) is due. The writes these decisions lead to are in [`super::apply`].

use std::collections::BTreeSet;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::plan::ObservedPod;
use crate::crd::Connector;
use crate::crd::connector::{
    ConnectorState, OffsetReset, OffsetRotation, OffsetsStatus, RecoveryPolicy,
    ResumeTokenRecovery, StartupMode,
};
use crate::names;

/// Why an offset partition name rotated (`status.offsets.rotations[].reason`).
pub mod rotation_reason {
    /// A task pod ended because MongoDB no longer had its resume point.
    pub const RESUME_TOKEN_LOST: &str = "ResumeTokenLost";
    /// The rotate-offsets annotation got a new value.
    pub const REQUESTED: &str = "Requested";
}

/// The offset partition name in use: what status recorded (after rotations), else the spec's base, else
/// the Connector's name.
pub fn offset_partition_name(conn: &Connector) -> String {
    let base = partition_base(conn);
    conn.status
        .as_ref()
        .and_then(|s| s.offsets.as_ref()?.partition_name.clone())
        // A name recorded for another base (the user changed spec.source.offsets.partitionName) is stale.
        .filter(|name| name == &base || rotation_number(&base, name).is_some())
        .unwrap_or(base)
}

/// The base of the offset partition name: the spec's, else the Connector's name.
pub fn partition_base(conn: &Connector) -> String {
    conn.spec
        .source
        .as_ref()
        .and_then(|s| s.offsets.partition_name.clone())
        .unwrap_or_else(|| conn.name_any())
}

/// The offsets topic of a source.
pub fn offset_storage_topic(conn: &Connector) -> String {
    conn.spec
        .source
        .as_ref()
        .and_then(|s| s.offsets.storage_topic.clone())
        .unwrap_or_else(|| names::DEFAULT_OFFSET_TOPIC.into())
}

/// `n` of a name `<base>.<n>`.
fn rotation_number(base: &str, name: &str) -> Option<u64> {
    name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()
}

/// The partition name after `current`: `<base>.1` first, then `<base>.<n+1>`.
pub fn next_partition_name(base: &str, current: &str) -> String {
    let n = rotation_number(base, current).unwrap_or(0);
    format!("{base}.{}", n + 1)
}

fn offsets_status(conn: &Connector) -> OffsetsStatus {
    conn.status
        .as_ref()
        .and_then(|s| s.offsets.clone())
        .unwrap_or_default()
}

/// How many rotations `status.offsets.rotations` keeps.
pub const ROTATION_HISTORY: usize = 20;

/// What happens to the offset partition name in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Nothing to do.
    None,
    /// Rotate now: `status.offsets` with the rotation recorded (and the history bounded).
    Now(OffsetsStatus),
    /// A lost resume point rotates after the backoff, at this time.
    After(Timestamp),
    /// `maxRotations` automatic rotations happened within the window: no more until a person asks.
    Loop(String),
}

/// The automatic rotations (after a lost resume point) within the window before `now`.
fn recent_automatic(
    offsets: &OffsetsStatus,
    recovery: &ResumeTokenRecovery,
    now: Timestamp,
) -> Vec<OffsetRotation> {
    let window = SignedDuration::from_secs(recovery.rotation_window_seconds);
    offsets
        .rotations
        .iter()
        .filter(|r| r.reason == rotation_reason::RESUME_TOKEN_LOST)
        .filter(|r| r.time.parse::<Timestamp>().is_ok_and(|t| t + window > now))
        .cloned()
        .collect()
}

/// Why the offset partition name rotates now, if it does: a task pod that lost its resume token (policy
/// `rotate`, and not yet rotated for that pod — decided from status, so a retried reconcile or a restarted
/// operator never rotates twice for one loss), or a new value of the rotate-offsets annotation. Automatic
/// rotations are bounded: the second and later within `rotationWindowSeconds` wait the restart backoff
/// after the pod ended, and past `maxRotations` there is none ([`Rotation::Loop`]). The new name skips
/// names the offsets topic already holds a token for (`in_use`: a re-created Connector's old tokens).
pub fn decide_rotation(
    conn: &Connector,
    pods: &[ObservedPod],
    in_use: &BTreeSet<String>,
    now: Timestamp,
) -> Rotation {
    let Some(source) = conn.spec.source.as_ref() else {
        return Rotation::None;
    };
    let mut offsets = offsets_status(conn);
    let rotated_for = |uid: &str| {
        offsets
            .rotations
            .iter()
            .any(|r| r.pod_uid.as_deref() == Some(uid))
    };
    let lost = pods.iter().find(|p| {
        p.lost_resume_token()
            && source.resume_token_recovery.policy == RecoveryPolicy::Rotate
            && p.uid.as_deref().is_some_and(|u| !rotated_for(u))
    });
    let request = conn
        .annotations()
        .get(names::ANNOTATION_ROTATE_OFFSETS)
        .filter(|v| !v.is_empty() && offsets.last_rotate_request.as_ref() != Some(*v))
        .cloned();
    if let (Some(pod), None) = (lost, &request) {
        let recovery = &source.resume_token_recovery;
        let recent = recent_automatic(&offsets, recovery, now);
        if recent.len() >= recovery.max_rotations.max(1) as usize {
            return Rotation::Loop(rotation_loop_message(conn, recovery, &recent));
        }
        if !recent.is_empty() {
            let delay = super::plan::restart_delay(recent.len() as i32 - 1, &conn.spec.restart);
            let due = pod.finished_at.unwrap_or(now)
                + SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
            if now < due {
                return Rotation::After(due);
            }
        }
    }
    if lost.is_none() && request.is_none() {
        return Rotation::None;
    }
    let from = offset_partition_name(conn);
    let base = partition_base(conn);
    let mut to = next_partition_name(&base, &from);
    while in_use.contains(&to) {
        to = next_partition_name(&base, &to);
    }
    let mut rotation = OffsetRotation {
        from,
        to: to.clone(),
        time: now.to_string(),
        reason: rotation_reason::REQUESTED.into(),
        ..Default::default()
    };
    if let Some(pod) = lost {
        // A request that comes with a lost pod is the person's rotation; it takes the pod with it.
        if request.is_none() {
            rotation.reason = rotation_reason::RESUME_TOKEN_LOST.into();
        }
        rotation.pod_uid = pod.uid.clone();
        rotation.code = pod.code;
        rotation.code_name = pod.code_name.clone();
        rotation.message = pod.termination.as_ref().map(|(_, m)| m.clone());
    }
    if let Some(request) = request {
        offsets.last_rotate_request = Some(request);
    }
    offsets.partition_name = Some(to);
    offsets.rotations.push(rotation);
    let extra = offsets.rotations.len().saturating_sub(ROTATION_HISTORY);
    offsets.rotations.drain(..extra);
    Rotation::Now(offsets)
}

fn rotation_loop_message(
    conn: &Connector,
    recovery: &ResumeTokenRecovery,
    recent: &[OffsetRotation],
) -> String {
    let history: Vec<String> = recent
        .iter()
        .map(|r| {
            format!(
                "{} -> {} at {}{}",
                r.from,
                r.to,
                r.time,
                r.code_name
                    .as_ref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!(
        "the source lost its resume point again after {} automatic rotations within {}s \
         (spec.source.resumeTokenRecovery.maxRotations): {}. It stays failed; fix the cause (e.g. a \
         startupModeAfterRotation that can't be served), then rotate on request: kubectl annotate \
         connector {} {}=\"$(date +%s)\" --overwrite",
        recent.len(),
        recovery.rotation_window_seconds,
        history.join("; "),
        conn.name_any(),
        names::ANNOTATION_ROTATE_OFFSETS
    )
}

/// The startup mode a source uses now: the spec's until the first rotation, then the after-rotation one.
pub fn startup_mode(conn: &Connector) -> Option<StartupMode> {
    let source = conn.spec.source.as_ref()?;
    let rotated = conn
        .status
        .as_ref()
        .and_then(|s| s.offsets.as_ref())
        .is_some_and(|o| !o.rotations.is_empty());
    Some(if rotated {
        source.resume_token_recovery.startup_mode_after_rotation
    } else {
        source.startup.mode
    })
}

/// What a reset deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    /// A source's stored resume token: a tombstone for its key in the offsets topic.
    SourceOffset {
        topic: String,
        key: String,
        partition_name: String,
    },
    /// A sink's consumer group (its committed offsets).
    ConsumerGroup(String),
}

impl ResetTarget {
    /// How status and Events name it.
    pub fn describe(&self) -> String {
        match self {
            ResetTarget::SourceOffset {
                topic,
                partition_name,
                ..
            } => format!("partition {partition_name} in topic {topic}"),
            ResetTarget::ConsumerGroup(group) => format!("consumer group {group}"),
        }
    }
}

/// Whether the reset-offsets annotation asks for a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetDecision {
    /// No new request.
    None,
    /// A new request while the Connector is not stopped or still has task pods: it waits.
    Pending(String),
    /// A new request, and the Connector is stopped with no task pod left (KIP-875: offsets change only
    /// while a connector is stopped).
    Due {
        request: String,
        target: ResetTarget,
    },
}

pub fn decide_reset(conn: &Connector, pods: &[ObservedPod]) -> ResetDecision {
    let offsets = offsets_status(conn);
    let Some(request) = conn
        .annotations()
        .get(names::ANNOTATION_RESET_OFFSETS)
        .filter(|v| !v.is_empty() && offsets.last_reset_request.as_ref() != Some(*v))
        .cloned()
    else {
        return ResetDecision::None;
    };
    if conn.spec.state != ConnectorState::Stopped || !pods.is_empty() {
        return ResetDecision::Pending(request);
    }
    let ns = conn.namespace().unwrap_or_default();
    let target = match &conn.spec.source {
        Some(_) => {
            let partition_name = offset_partition_name(conn);
            ResetTarget::SourceOffset {
                topic: offset_storage_topic(conn),
                key: names::source_offset_key(&ns, &conn.name_any(), &partition_name),
                partition_name,
            }
        }
        None => ResetTarget::ConsumerGroup(names::sink_consumer_group(
            &ns,
            &conn.name_any(),
            conn.spec
                .sink
                .as_ref()
                .and_then(|s| s.consumer_group_id.as_deref()),
        )),
    };
    ResetDecision::Due { request, target }
}

/// `status.offsets` once a due reset is done.
pub fn record_reset(
    conn: &Connector,
    request: &str,
    target: &ResetTarget,
    now: Timestamp,
) -> OffsetsStatus {
    let mut offsets = offsets_status(conn);
    offsets.last_reset_request = Some(request.into());
    offsets.resets.push(OffsetReset {
        target: target.describe(),
        time: now.to_string(),
        request: request.into(),
    });
    offsets
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{SINK, SOURCE, connector, lost, observed};
    use super::*;
    use crate::controller::pod_status::PodPhase;
    use crate::crd::ConnectorStatus;
    use std::collections::BTreeMap;

    #[test]
    fn partition_names_rotate_from_the_base() {
        assert_eq!(next_partition_name("events", "events"), "events.1");
        assert_eq!(next_partition_name("events", "events.1"), "events.2");
        assert_eq!(next_partition_name("events", "events.9"), "events.10");
        assert_eq!(next_partition_name("a.b", "a.b.3"), "a.b.4");
        let mut conn = connector(SOURCE);
        conn.status = Some(ConnectorStatus {
            offsets: Some(OffsetsStatus {
                partition_name: Some("old-base.4".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            offset_partition_name(&conn),
            "shop-events",
            "a name recorded for another base is stale"
        );
    }

    #[test]
    fn a_lost_resume_token_rotates_once_per_pod() {
        let mut conn = connector(SOURCE);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let none = BTreeSet::new();
        let Rotation::Now(offsets) = decide_rotation(&conn, &[lost("pod-1")], &none, now) else {
            panic!("rotates")
        };
        assert_eq!(offsets.partition_name.as_deref(), Some("shop-events.1"));
        let r = &offsets.rotations[0];
        assert_eq!(
            (r.from.as_str(), r.to.as_str(), r.reason.as_str()),
            ("shop-events", "shop-events.1", "ResumeTokenLost")
        );
        assert_eq!(
            (r.code, r.code_name.as_deref()),
            (Some(286), Some("ChangeStreamHistoryLost"))
        );
        assert_eq!(r.pod_uid.as_deref(), Some("pod-1"));

        conn.status = Some(ConnectorStatus {
            offsets: Some(offsets),
            ..Default::default()
        });
        assert_eq!(
            decide_rotation(&conn, &[lost("pod-1")], &none, now),
            Rotation::None,
            "the same pod seen again (a retried reconcile, a restarted operator) does not rotate again"
        );
        // A second loss within the window waits the restart backoff (10 s) after its pod ended.
        let mut second = lost("pod-2");
        second.finished_at = Some(now);
        assert_eq!(
            decide_rotation(&conn, &[second.clone()], &none, now),
            Rotation::After(now + SignedDuration::from_secs(10))
        );
        let later = now + SignedDuration::from_secs(10);
        let Rotation::Now(next) = decide_rotation(&conn, &[second], &none, later) else {
            panic!("a new loss rotates after the backoff")
        };
        assert_eq!(next.partition_name.as_deref(), Some("shop-events.2"));
        assert_eq!(next.rotations.len(), 2);
        assert_eq!(
            decide_rotation(&conn, &[observed(0, PodPhase::Running, "h")], &none, now),
            Rotation::None
        );
    }

    #[test]
    fn rotations_stop_at_max_rotations_in_the_window_and_skip_names_in_use() {
        let mut conn = connector(SOURCE);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut at = t0;
        let in_use = BTreeSet::from(["shop-events.2".to_string()]);
        for (i, expected) in ["shop-events.1", "shop-events.3", "shop-events.4"]
            .iter()
            .enumerate()
        {
            let mut pod = lost(&format!("pod-{i}"));
            pod.finished_at = Some(at);
            at += SignedDuration::from_secs(3600 / 10);
            let Rotation::Now(offsets) = decide_rotation(&conn, &[pod], &in_use, at) else {
                panic!("rotation {i}")
            };
            assert_eq!(
                offsets.partition_name.as_deref(),
                Some(*expected),
                "skips .2, in use"
            );
            conn.status = Some(ConnectorStatus {
                offsets: Some(offsets),
                ..Default::default()
            });
        }
        let mut fourth = lost("pod-3");
        fourth.finished_at = Some(at);
        let Rotation::Loop(message) = decide_rotation(&conn, &[fourth.clone()], &in_use, at) else {
            panic!("the fourth loss within the hour is a loop")
        };
        assert!(
            message.contains("after 3 automatic rotations within 3600s")
                && message.contains("shop-events.3 -> shop-events.4"),
            "{message}"
        );
        // Out of the window, it rotates again by itself.
        let much_later = at + SignedDuration::from_secs(7200);
        assert!(matches!(
            decide_rotation(&conn, &[fourth], &in_use, much_later),
            Rotation::Now(_)
        ));
    }

    #[test]
    fn the_rotation_history_is_bounded() {
        let mut conn = connector(SOURCE);
        let mut at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for i in 0..(ROTATION_HISTORY + 5) {
            conn.metadata.annotations = Some(BTreeMap::from([(
                names::ANNOTATION_ROTATE_OFFSETS.into(),
                i.to_string(),
            )]));
            at += SignedDuration::from_secs(1);
            let Rotation::Now(offsets) = decide_rotation(&conn, &[], &BTreeSet::new(), at) else {
                panic!("rotates on request")
            };
            conn.status = Some(ConnectorStatus {
                offsets: Some(offsets),
                ..Default::default()
            });
        }
        let offsets = conn.status.unwrap().offsets.unwrap();
        assert_eq!(offsets.rotations.len(), ROTATION_HISTORY);
        assert_eq!(offsets.partition_name.as_deref(), Some("shop-events.25"));
    }

    #[test]
    fn a_reset_waits_for_a_stopped_connector_without_pods() {
        let mut conn = connector(SINK);
        assert_eq!(decide_reset(&conn, &[]), ResetDecision::None);
        conn.metadata.annotations = Some(BTreeMap::from([(
            names::ANNOTATION_RESET_OFFSETS.into(),
            "1".into(),
        )]));
        assert_eq!(decide_reset(&conn, &[]), ResetDecision::Pending("1".into()));
        conn.spec.state = ConnectorState::Stopped;
        let pod = observed(0, PodPhase::Running, "h");
        assert_eq!(
            decide_reset(&conn, &[pod]),
            ResetDecision::Pending("1".into())
        );
        let ResetDecision::Due { request, target } = decide_reset(&conn, &[]) else {
            panic!("due")
        };
        assert_eq!(target.describe(), "consumer group sluice-shop-orders");
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        conn.status = Some(ConnectorStatus {
            offsets: Some(record_reset(&conn, &request, &target, now)),
            ..Default::default()
        });
        assert_eq!(
            decide_reset(&conn, &[]),
            ResetDecision::None,
            "one reset per request value"
        );
    }
}
