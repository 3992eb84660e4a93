//! Leader election through a coordination.k8s.io Lease, so two operator replicas never reconcile at once.
//! A replica that loses its lease stops (and is restarted by its Deployment) rather than risk acting as a
//! second leader.
//!
//! Hand-written (about 100 lines, client-go's algorithm: take a free or expired lease, renew it by a
//! compare-and-swap on its resourceVersion), not taken from a crate: kube-leader-election 0.44 needs kube 4
//! (a second kube in the build); kube-lease-manager 0.13 fits kube 5, but its holder keeps reporting that it
//! leads while it can't reach the API server (it logs and retries), so after the lease expires a second
//! replica could lead beside it. Here a replica that could not renew for a lease duration stops.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Lease timing, as client-go's defaults scaled down.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// Whether `identity` may take a lease held as `spec` at `now`: it is free, ours, or expired.
pub fn may_take(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let Some(renewed) = &spec.renew_time else {
        return true;
    };
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0.as_second() + seconds < now.as_second()
}

/// Errors of the election; any of them means this replica is not (or no longer) the leader.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {0} was taken by {1}")]
    Lost(String, String),
    #[error("renewing lease {0}: {1}")]
    Renew(String, kube::Error),
}

/// One attempt to take or renew the lease. `Ok(true)`: we hold it now.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: Timing,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = timing.lease_duration.as_secs() as i32;
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.into()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if !may_take(spec, identity, now) {
                return Ok(false);
            }
            if spec.holder_identity.as_deref() != Some(identity) {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(MicroTime(now));
            }
            spec.holder_identity = Some(identity.into());
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            // The resourceVersion in `lease` makes this a compare-and-swap: a concurrent taker gets 409.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: &Client, namespace: &str, name: &str, identity: &str, timing: Timing) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    loop {
        match try_acquire(&api, name, identity, timing).await {
            Ok(true) => {
                tracing::info!(lease = name, identity, "became leader");
                return;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(lease = name, error = %err, "lease not reachable"),
        }
        tokio::time::sleep(timing.retry_every).await;
    }
}

/// Gives the lease up at a clean stop (as client-go's `ReleaseOnCancel`): the holder is cleared, so another
/// replica takes it at its next attempt instead of after the lease duration. Best effort: a replica that
/// can't reach the API server leaves the lease to expire.
pub async fn release(client: &Client, namespace: &str, name: &str, identity: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    let now = MicroTime(Timestamp::now());
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now.clone());
    spec.acquire_time = Some(now);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = name, identity, "released the lease"),
        Err(err) => {
            tracing::warn!(lease = name, error = %err, "releasing the lease failed; it expires")
        }
    }
}

/// Renews the lease until it is lost; returns why.
pub async fn keep(
    client: &Client,
    namespace: &str,
    name: &str,
    identity: &str,
    timing: Timing,
) -> LeaderError {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(timing.renew_every).await;
        match try_acquire(&api, name, identity, timing).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                let holder = api
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity)
                    .unwrap_or_default();
                return LeaderError::Lost(name.into(), holder);
            }
            Err(err) if last_renewed.elapsed() >= timing.lease_duration => {
                return LeaderError::Renew(name.into(), err);
            }
            Err(err) => {
                tracing::warn!(lease = name, error = %err, "renewing the lease failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_not_taken() {
        let now = "2026-01-01T00:00:10Z".parse().unwrap();
        assert!(!may_take(&held_by("b", "2026-01-01T00:00:00Z"), "a", now));
        assert!(
            may_take(&held_by("a", "2026-01-01T00:00:00Z"), "a", now),
            "our own lease renews"
        );
    }

    #[test]
    fn an_expired_or_empty_lease_is_taken() {
        let now = "2026-01-01T00:00:16Z".parse().unwrap();
        assert!(may_take(&held_by("b", "2026-01-01T00:00:00Z"), "a", now));
        assert!(may_take(&LeaseSpec::default(), "a", now));
    }
}
