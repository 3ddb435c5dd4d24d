//! Leader election on a `coordination.k8s.io/v1` Lease, so that several controller replicas are
//! safe: only the holder of the Lease reconciles (and so writes); the others wait to take over
//! when the holder stops renewing.
//!
//! Every change of the Lease is a replace with the `resourceVersion` that was read, so when two
//! replicas race for an expired Lease the API server lets exactly one of them win. Expiry is judged
//! on this replica's monotonic clock (as client-go does): a Lease counts as expired when its
//! `resourceVersion` has not changed for `leaseDurationSeconds` since this replica first saw it, so
//! clocks that disagree between machines cannot make a live Lease look expired.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Error};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often the holder renews (and a follower retries).
pub const RENEW_EVERY: Duration = Duration::from_secs(4);

/// One replica's view of the Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The Lease's last seen `resourceVersion`, and when this replica first saw it.
    observed: Arc<std::sync::Mutex<Option<(String, std::time::Instant)>>>,
}

/// What a round of [`Elector::try_acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// This replica holds the Lease.
    Leading,
    /// Another replica holds a valid Lease.
    Following(String),
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// An elector for the Lease `namespace/name`, as `identity` (e.g. the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            observed: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// One round: create the Lease, renew it, or take it over when it expired.
    pub async fn try_acquire(&self) -> Result<Round, Error> {
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let round = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec(0, None)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Round::Leading,
                    // Another replica created it first.
                    Err(Error::Api(s)) if s.code == 409 => Round::Following(String::new()),
                    Err(e) => return Err(e),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.clone().unwrap_or_default();
                let holder = current.holder_identity.clone().unwrap_or_default();
                let duration = Duration::from_secs(
                    current
                        .lease_duration_seconds
                        .unwrap_or(LEASE_DURATION.as_secs() as i32)
                        .max(1) as u64,
                );
                let version = lease.metadata.resource_version.clone().unwrap_or_default();
                let seen_at = match self.observed.lock() {
                    Ok(mut o) => match o.as_ref() {
                        Some((v, at)) if *v == version => *at,
                        _ => {
                            let now = std::time::Instant::now();
                            *o = Some((version, now));
                            now
                        }
                    },
                    Err(_) => std::time::Instant::now(),
                };
                let expired = current.renew_time.is_none() || seen_at.elapsed() > duration;
                let transitions = current.lease_transitions.unwrap_or(0);
                if holder == self.identity {
                    lease.spec = Some(spec(transitions, current.acquire_time.clone()));
                } else if holder.is_empty() || expired {
                    lease.spec = Some(spec(transitions.saturating_add(1), None));
                } else {
                    return Ok(Round::Following(holder));
                }
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Round::Leading,
                    // Someone else changed it since we read it: they won this round.
                    Err(Error::Api(s)) if s.code == 409 => Round::Following(holder),
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(round)
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
