//! Partitions: an agent that cannot confirm its ZooKeeper session for a replica's
//! `disconnect.stopAfterSeconds` stops that replica, so that the copy the controller may
//! start elsewhere is the only one (see [`crate::controller::disconnect`] for the other
//! half). Replicas without it run on (fail static). Once the session is confirmed again,
//! the leases read then decide: a replica still leased here starts again.
//!
//! Time is the monotonic clock, which keeps counting while the process is frozen: an agent
//! resumed after a long pause stops such replicas at its next tick, before it could confirm
//! anything. Pure: the caller passes the session state and the time.

use std::time::{Duration, Instant};

use crate::lease::Lease;

/// When the session was last seen confirmed.
#[derive(Clone, Copy, Debug)]
pub struct Contact {
    last_confirmed: Instant,
    connected: bool,
}

impl Contact {
    /// Contact as of `now`, counted as confirmed then: before the first session nothing is
    /// enforced anyway.
    pub fn new(now: Instant) -> Contact {
        Contact {
            last_confirmed: now,
            connected: true,
        }
    }

    /// Takes the session's state at `now`.
    pub fn observe(&mut self, connected: bool, now: Instant) {
        if connected {
            self.last_confirmed = now;
        }
        self.connected = connected;
    }

    /// How long the session has gone unconfirmed at `now`; `None` while it is confirmed.
    pub fn lost_for(&self, now: Instant) -> Option<Duration> {
        (!self.connected).then(|| now.saturating_duration_since(self.last_confirmed))
    }
}

/// The positions in `leases` of those whose `stopAfterDisconnectSeconds` has passed after
/// `lost_for` without a confirmed session: cheap enough to ask at every tick.
pub fn stopped(leases: &[Lease], lost_for: Option<Duration>) -> Vec<usize> {
    let Some(lost_for) = lost_for else {
        return Vec::new();
    };
    leases
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.stop_after_disconnect_seconds
                .is_some_and(|after| lost_for >= Duration::from_secs(u64::from(after)))
        })
        .map(|(i, _)| i)
        .collect()
}

/// The leases to enforce after `lost_for` without a confirmed session: all of them but
/// those whose `stopAfterDisconnectSeconds` has passed.
pub fn enforceable(leases: &[Lease], lost_for: Option<Duration>) -> Vec<Lease> {
    let stop = stopped(leases, lost_for);
    leases
        .iter()
        .enumerate()
        .filter(|(i, _)| !stop.contains(i))
        .map(|(_, l)| l.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;

    #[test]
    fn replicas_that_ask_for_it_stop_after_their_time_without_a_session() {
        let t0 = Instant::now();
        let mut contact = Contact::new(t0);
        let mut stops = mk_lease("n1", "stops", 0, 1);
        stops.stop_after_disconnect_seconds = Some(10);
        let runs_on = mk_lease("n1", "runs-on", 0, 1);
        let leases = [stops, runs_on];
        let names = |leases: Vec<Lease>| -> Vec<String> {
            leases
                .into_iter()
                .map(|l| l.key.name().to_string())
                .collect()
        };
        contact.observe(true, t0 + Duration::from_secs(5));
        contact.observe(false, t0 + Duration::from_secs(6));
        let at = |s| contact.lost_for(t0 + Duration::from_secs(s));
        assert_eq!(
            at(14),
            Some(Duration::from_secs(9)),
            "counted from the last confirmation"
        );
        assert_eq!(names(enforceable(&leases, at(14))), ["stops", "runs-on"]);
        assert_eq!(names(enforceable(&leases, at(15))), ["runs-on"]);
        contact.observe(true, t0 + Duration::from_secs(16));
        assert_eq!(contact.lost_for(t0 + Duration::from_secs(16)), None);
        assert_eq!(names(enforceable(&leases, None)), ["stops", "runs-on"]);
    }
}
