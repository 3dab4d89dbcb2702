//! Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it, so
//! two replicas are safe: only the holder writes.
//!
//! * The holder renews every `retry_period`; it counts itself leader only until
//!   `renew_deadline` after the start of its last renewal the API server confirmed (on its own
//!   monotonic clock), so a holder that cannot renew (partitioned, API server down, frozen)
//!   stops before anyone else may start.
//! * A candidate takes the Lease only when the record it observes has not changed for the
//!   record's `leaseDurationSeconds`, timed on the candidate's own monotonic clock from when it
//!   first saw that record: wall clocks of different nodes are never compared. Since
//!   `renew_deadline < lease_duration`, the old holder has stopped by then.
//! * Every update is a `replace` with the observed `resourceVersion`: of two candidates at the
//!   same instant one wins, the other gets a conflict.
//! * On shutdown the holder releases the Lease (empty holder), so a standby takes over at once.
//!
//! [`decide`] is the pure part; [`run`] does the I/O.
//!
//! kube-runtime has no leader election and the kube-leader-election crate is still on kube 4;
//! kube-lease-manager (kube 5) keeps reporting leadership while renewals fail, so it cannot
//! promise that a partitioned leader stops writing.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, time::Instant};

/// Timing and identity of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// The Lease's name.
    pub lease_name: String,
    /// The holder identity written into the Lease (the pod name).
    pub identity: String,
    /// How long a Lease record stays valid without a renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long after the start of its last confirmed renewal the holder still acts.
    pub renew_deadline: Duration,
    /// How often the holder renews and a candidate looks.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: 15 s Lease, 10 s renew deadline, 2 s retry period.
    pub fn new(lease_name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, readable anywhere without I/O.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<Option<Instant>>,
    /// Keeps the channel open for [`Leadership::always`] (a closed channel reads as "lost").
    _always: Option<std::sync::Arc<watch::Sender<Option<Instant>>>>,
}

impl Leadership {
    /// Leadership as the election run on `tx` publishes it.
    pub fn new(rx: watch::Receiver<Option<Instant>>) -> Self {
        Self { rx, _always: None }
    }

    /// A replica that always leads (in-process tests and `render`-like tools).
    pub fn always() -> Self {
        // A deadline far beyond any run.
        let (tx, rx) = watch::channel(Some(
            Instant::now() + Duration::from_secs(100 * 365 * 86400),
        ));
        Self {
            rx,
            _always: Some(std::sync::Arc::new(tx)),
        }
    }

    /// Whether this replica may write now: it holds the Lease and its last confirmed renewal
    /// is recent enough.
    pub fn is_leading(&self) -> bool {
        self.rx.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// Waits until this replica leads.
    pub async fn acquired(&mut self) {
        loop {
            if self.is_leading() {
                return;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until this replica stops leading: the election says so, or the renew deadline
    /// passes without a confirmed renewal (whichever comes first).
    pub async fn lost(&mut self) {
        loop {
            let until = *self.rx.borrow_and_update();
            match until {
                None => return,
                Some(until) if Instant::now() >= until => return,
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        changed = self.rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// What a Lease says, as far as the election cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The holder, if any (an empty string counts as none).
    pub holder: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// `renewTime` as written (compared for change only, never with our clock).
    pub renew_time: Option<String>,
    /// `leaseTransitions`.
    pub transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What to do after looking at the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it, or its holder let it lapse: take it.
    Acquire,
    /// Someone else holds it and it is live: wait and look again.
    Wait,
}

/// The election's decision, given the Lease (`None`: absent) and how long ago this replica
/// first observed that exact record (on its own clock).
pub fn decide(record: Option<&Record>, unchanged_for: Duration, me: &str) -> Step {
    match record {
        None => Step::Create,
        Some(r) => match &r.holder {
            Some(h) if h == me => Step::Renew,
            None => Step::Acquire,
            Some(_) if unchanged_for >= r.duration => Step::Acquire,
            Some(_) => Step::Wait,
        },
    }
}

/// Runs the election until `shutdown` completes, publishing leadership on `tx`; then releases
/// the Lease if held (bounded by `retry_period`).
pub async fn run(
    api: Api<Lease>,
    cfg: LeaderConfig,
    tx: watch::Sender<Option<Instant>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut observed: Option<(Record, Instant)> = None;
    loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(
            cfg.retry_period.max(Duration::from_secs(1)),
            step(&api, &cfg, &mut observed),
        );
        let outcome = tokio::select! {
            _ = &mut shutdown => break,
            r = attempt => r,
        };
        match outcome {
            Ok(Ok(true)) => {
                let until = started + cfg.renew_deadline;
                if tx.borrow().is_none() {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.lease_name, "leading");
                }
                let _ = tx.send(Some(until));
            }
            Ok(Ok(false)) => {
                if tx.borrow().is_some() {
                    tracing::warn!(identity = %cfg.identity, "another replica holds the Lease: standing by");
                    let _ = tx.send(None);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "leader election step failed");
                expire(&tx);
            }
            Err(_) => {
                tracing::debug!("leader election step timed out");
                expire(&tx);
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    if tx.borrow().is_some() {
        let _ = tx.send(None);
        match tokio::time::timeout(
            cfg.retry_period.max(Duration::from_secs(1)),
            release(&api, &cfg),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(identity = %cfg.identity, "released the Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the Lease; it lapses by itself")
            }
            Err(_) => tracing::warn!("releasing the Lease timed out; it lapses by itself"),
        }
    }
}

/// Publishes "not leading" once the renew deadline of the last confirmed renewal has passed.
fn expire(tx: &watch::Sender<Option<Instant>>) {
    let lapsed = tx.borrow().is_some_and(|until| Instant::now() >= until);
    if lapsed {
        tracing::warn!("could not renew the Lease before the renew deadline: stopping as leader");
        let _ = tx.send(None);
    }
}

/// One look at the Lease and, if due, one write. `Ok(true)`: we hold it now.
async fn step(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
    observed: &mut Option<(Record, Instant)>,
) -> Result<bool, kube::Error> {
    let lease = api.get_opt(&cfg.lease_name).await?;
    let record = lease.as_ref().map(Record::of);
    let now = Instant::now();
    let unchanged_for = match (&record, observed.as_ref()) {
        (Some(r), Some((seen, at))) if r == seen => now - *at,
        (Some(r), _) => {
            *observed = Some((r.clone(), now));
            Duration::ZERO
        }
        (None, _) => {
            *observed = None;
            Duration::ZERO
        }
    };
    let stamp = Some(MicroTime(Timestamp::now()));
    let secs = cfg.lease_duration.as_secs() as i32;
    match decide(record.as_ref(), unchanged_for, &cfg.identity) {
        Step::Wait => Ok(false),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: stamp.clone(),
                    renew_time: stamp,
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        step @ (Step::Renew | Step::Acquire) => {
            let Some(mut lease) = lease else {
                return Ok(false);
            };
            let mut spec = lease.spec.take().unwrap_or_default();
            if step == Step::Acquire {
                spec.acquire_time = stamp.clone();
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = stamp;
            lease.spec = Some(spec);
            // `replace` carries the observed resourceVersion: a concurrent writer makes it 409.
            match api
                .replace(&cfg.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => {
                    *observed = Some((Record::of(&written), Instant::now()));
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the Lease up: an empty holder that any candidate takes at once.
async fn release(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        return Ok(());
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease.spec = Some(spec);
    api.replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str) -> Record {
        Record {
            holder: Some(who.into()),
            duration: Duration::from_secs(15),
            renew_time: Some("t".into()),
            transitions: 0,
        }
    }

    #[test]
    fn a_live_lease_of_another_is_left_alone_until_it_went_unchanged_for_its_duration() {
        let r = held_by("b");
        assert_eq!(decide(Some(&r), Duration::from_secs(14), "a"), Step::Wait);
        assert_eq!(
            decide(Some(&r), Duration::from_secs(15), "a"),
            Step::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed_absent_is_created_empty_is_taken() {
        assert_eq!(
            decide(Some(&held_by("a")), Duration::ZERO, "a"),
            Step::Renew
        );
        assert_eq!(decide(None, Duration::ZERO, "a"), Step::Create);
        let released = Record {
            holder: None,
            ..held_by("x")
        };
        assert_eq!(decide(Some(&released), Duration::ZERO, "a"), Step::Acquire);
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_the_renew_deadline_without_a_confirmed_renewal() {
        let (tx, rx) = watch::channel(None);
        let mut l = Leadership::new(rx);
        assert!(!l.is_leading());
        tx.send(Some(Instant::now() + Duration::from_secs(10)))
            .expect("send");
        l.acquired().await;
        assert!(l.is_leading());
        let start = Instant::now();
        l.lost().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        assert!(!l.is_leading());
    }

    #[test]
    fn the_renew_deadline_ends_before_a_candidate_may_take_over() {
        let cfg = LeaderConfig::new("l", "a");
        assert!(cfg.renew_deadline < cfg.lease_duration);
    }
}
