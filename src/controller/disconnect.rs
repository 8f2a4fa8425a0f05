//! Partitions, the controller's half (the agent's is [`crate::agent::disconnect`]). A
//! replica on a node whose registration is missing stays leased there, and so is not run
//! elsewhere, while its workload's `disconnect` says so:
//! - `replace: false`: for as long as the node is missing;
//! - `stopAfterSeconds: S`: until the node has been missing for S, plus the replica's grace
//!   period, plus [`DISCONNECT_MARGIN_SECONDS`]. The agent counts S from the last moment
//!   it saw its session confirmed, which is no later than the moment the controller sees
//!   the registration go (the session must expire first), so by then the agent has
//!   stopped the replica, if it runs at all. The margin covers the agent's pass and the
//!   difference between the two machines' clock rates; no clock needs to agree with
//!   another.
//!
//! Without `disconnect`, the node's grace period alone decides, as before. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::alloc::ReplicaKey;
use crate::api::Workload;
use crate::api::workload::DISCONNECT_MARGIN_SECONDS;
use crate::lease::Lease;

/// A replica kept on its missing node.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// Its lease, as it is.
    pub lease: Lease,
    /// Why, for a person.
    pub reason: String,
    /// When it may move; `None`: only when its node is back.
    pub release_in: Option<Duration>,
}

/// The replicas of `current` on `missing` nodes (with how long each has been missing) that
/// their workload keeps there now. Only replicas still desired are held: a deleted or
/// scaled-down one goes as always.
pub fn held(
    current: &[Lease],
    missing: &BTreeMap<String, Duration>,
    workloads: &[Workload],
) -> Vec<Held> {
    if missing.is_empty() {
        return Vec::new();
    }
    let by_name = super::leases::by_name(workloads);
    let mut out = Vec::new();
    for lease in current {
        let Some(gone_for) = missing.get(&lease.node) else {
            continue;
        };
        let Some(workload) = by_name.get(&lease.key.workload) else {
            continue;
        };
        if i64::from(lease.key.index) >= i64::from(workload.spec.replicas) {
            continue;
        }
        let Some(disconnect) = &workload.spec.disconnect else {
            continue;
        };
        let node = &lease.node;
        if !disconnect.replace {
            out.push(Held {
                lease: lease.clone(),
                reason: format!(
                    "waits for its node {node}, missing for {}s (disconnect.replace: false)",
                    gone_for.as_secs()
                ),
                release_in: None,
            });
            continue;
        }
        let Some(stop_after) = disconnect
            .stop_after_seconds
            .and_then(|s| u64::try_from(s).ok())
        else {
            continue;
        };
        let wait = Duration::from_secs(
            stop_after + u64::from(lease.grace_seconds) + DISCONNECT_MARGIN_SECONDS,
        );
        if *gone_for < wait {
            out.push(Held {
                lease: lease.clone(),
                reason: format!(
                    "its node {node} is missing: it moves once its agent has stopped it, in {}s \
                     (disconnect.stopAfterSeconds {stop_after}, grace {}s, margin {DISCONNECT_MARGIN_SECONDS}s)",
                    (wait - *gone_for).as_secs().max(1),
                    lease.grace_seconds
                ),
                release_in: Some(wait - *gone_for),
            });
        }
    }
    out
}

/// `desired` with each held replica kept on its missing node: its lease as it is, in
/// place of wherever the allocation put it.
pub fn keep(desired: Vec<Lease>, held: &[Held]) -> Vec<Lease> {
    if held.is_empty() {
        return desired;
    }
    let keys: BTreeMap<&ReplicaKey, &Lease> =
        held.iter().map(|h| (&h.lease.key, &h.lease)).collect();
    let mut out: Vec<Lease> = desired
        .into_iter()
        .filter(|l| !keys.contains_key(&l.key))
        .collect();
    out.extend(held.iter().map(|h| h.lease.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::{mk_lease, mk_workload};
    use serde_json::json;

    fn missing(node: &str, seconds: u64) -> BTreeMap<String, Duration> {
        BTreeMap::from([(node.to_string(), Duration::from_secs(seconds))])
    }

    fn workload(disconnect: serde_json::Value) -> Workload {
        mk_workload("t", "w", 2, 100, 8, json!({"disconnect": disconnect}))
    }

    fn on(node: &str, index: u32) -> Lease {
        let mut lease = mk_lease(node, "w", index, 1);
        lease.grace_seconds = 2;
        lease
    }

    #[test]
    fn a_replica_moves_only_once_its_agent_has_stopped_it() {
        let current = [on("n1", 0), on("n2", 1)];
        let w = [workload(json!({"stopAfterSeconds": 10}))];
        // 10 s + grace 2 s + margin 5 s.
        let held_now = held(&current, &missing("n1", 16), &w);
        assert_eq!(held_now.len(), 1);
        assert_eq!(held_now[0].lease, current[0]);
        assert_eq!(held_now[0].release_in, Some(Duration::from_secs(1)));
        assert!(
            held_now[0].reason.contains("in 1s"),
            "{}",
            held_now[0].reason
        );
        assert!(held(&current, &missing("n1", 17), &w).is_empty());
        // Not missing: nothing held.
        assert!(held(&current, &BTreeMap::new(), &w).is_empty());
    }

    #[test]
    fn replace_false_waits_for_the_node_and_no_disconnect_keeps_the_old_way() {
        let current = [on("n1", 0)];
        let waits = held(
            &current,
            &missing("n1", 100_000),
            &[workload(json!({"replace": false}))],
        );
        assert_eq!(waits.len(), 1);
        assert_eq!(waits[0].release_in, None);
        let plain = mk_workload("t", "w", 2, 100, 8, json!({}));
        assert!(held(&current, &missing("n1", 1), &[plain]).is_empty());
    }

    #[test]
    fn a_deleted_or_scaled_down_replica_is_not_held() {
        let current = [on("n1", 0), on("n1", 1)];
        let mut one = workload(json!({"replace": false}));
        one.spec.replicas = 1;
        let kept = held(&current, &missing("n1", 5), &[one]);
        assert_eq!(kept.len(), 1, "replica 1 is no longer desired");
        assert!(held(&current, &missing("n1", 5), &[]).is_empty());
    }

    #[test]
    fn a_held_replica_keeps_its_lease_instead_of_its_new_place() {
        let held_one = Held {
            lease: on("n1", 0),
            reason: String::new(),
            release_in: None,
        };
        let desired = vec![on("n3", 0), on("n2", 1)];
        let out = keep(desired, &[held_one]);
        let places: Vec<(&str, u32)> = out.iter().map(|l| (l.node.as_str(), l.key.index)).collect();
        assert_eq!(places, [("n2", 1), ("n1", 0)]);
    }
}
