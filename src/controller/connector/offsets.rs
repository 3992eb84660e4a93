//! A Connector's offsets (pure decisions): the source's offset partition name and when it rotates
//! (`<base>` → `<base>.1` → `<base>.2`), the startup mode that follows a rotation, and when an offset
//! reset (KIP-875) is due. The writes these decisions lead to are in [`super::apply`].

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::plan::ObservedPod;
use crate::crd::Connector;
use crate::crd::connector::{
    ConnectorState, OffsetReset, OffsetRotation, OffsetsStatus, RecoveryPolicy, StartupMode,
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

/// Why the offset partition name rotates now, if it does: a task pod that lost its resume token (policy
/// `rotate`, and not yet rotated for that pod — decided from status, so a retried reconcile or a restarted
/// operator never rotates twice for one loss), or a new value of the rotate-offsets annotation. Returns
/// `status.offsets` with the rotation recorded.
pub fn decide_rotation(
    conn: &Connector,
    pods: &[ObservedPod],
    now: Timestamp,
) -> Option<OffsetsStatus> {
    let source = conn.spec.source.as_ref()?;
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
    if lost.is_none() && request.is_none() {
        return None;
    }
    let from = offset_partition_name(conn);
    let to = next_partition_name(&partition_base(conn), &from);
    let mut rotation = OffsetRotation {
        from,
        to: to.clone(),
        time: now.to_string(),
        reason: rotation_reason::REQUESTED.into(),
        ..Default::default()
    };
    if let Some(pod) = lost {
        rotation.reason = rotation_reason::RESUME_TOKEN_LOST.into();
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
    Some(offsets)
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
        None => ResetTarget::ConsumerGroup(names::sink_consumer_group(&ns, &conn.name_any())),
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
        let offsets = decide_rotation(&conn, &[lost("pod-1")], now).expect("rotates");
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
            decide_rotation(&conn, &[lost("pod-1")], now),
            None,
            "the same pod seen again (a retried reconcile, a restarted operator) does not rotate again"
        );
        let next = decide_rotation(&conn, &[lost("pod-2")], now).expect("a new loss rotates");
        assert_eq!(next.partition_name.as_deref(), Some("shop-events.2"));
        assert_eq!(next.rotations.len(), 2);
        assert_eq!(
            decide_rotation(&conn, &[observed(0, PodPhase::Running, "h")], now),
            None
        );
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
