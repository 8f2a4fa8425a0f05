//! Which nodes the controller allocates on: those registered, and those whose registration
//! went away less than a grace period ago (a restarting agent, a short partition), whose
//! replicas stay where they are. Past the grace period a node is lost and its replicas
//! move. Pure: the caller passes the time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::alloc::NodeInfo;
use crate::alloc::govern;
use crate::alloc::selector;
use crate::api::ResourcePolicy;
use crate::api::policy::ResourcePolicySpec;
use crate::lease::NodeRegistration;

/// What the controller knows of each node.
#[derive(Debug, Default)]
pub struct NodeTracker {
    nodes: BTreeMap<String, Tracked>,
    /// Nodes lost for good, not to be brought back from remembered registrations, with
    /// when their registration was first seen missing.
    lost: BTreeMap<String, Instant>,
    /// Whether the warning that no node is registered was given since one last was.
    all_missing_warned: bool,
}

#[derive(Debug)]
struct Tracked {
    registration: NodeRegistration,
    /// When its registration was first seen missing.
    missing_since: Option<Instant>,
}

impl NodeTracker {
    /// Takes the registrations in the store now, and the last known registrations of nodes
    /// that hold leases (after a failover the new leader knows those only).
    pub fn observe(
        &mut self,
        registered: Vec<NodeRegistration>,
        remembered: Vec<NodeRegistration>,
        now: Instant,
    ) {
        let present: BTreeSet<String> = registered.iter().map(|r| r.name.clone()).collect();
        for registration in registered {
            self.lost.remove(&registration.name);
            self.nodes.insert(
                registration.name.clone(),
                Tracked {
                    registration,
                    missing_since: None,
                },
            );
        }
        for (name, tracked) in &mut self.nodes {
            if !present.contains(name) && tracked.missing_since.is_none() {
                tracing::warn!(node = %name, "node registration gone; its replicas stay for the grace period");
                tracked.missing_since = Some(now);
            }
        }
        for registration in remembered {
            if !self.nodes.contains_key(&registration.name)
                && !self.lost.contains_key(&registration.name)
            {
                self.nodes.insert(
                    registration.name.clone(),
                    Tracked {
                        registration,
                        missing_since: Some(now),
                    },
                );
            }
        }
    }

    /// The nodes to allocate on now. A node missing for longer than its grace period is
    /// dropped here, once and for all, until it registers again.
    ///
    /// While no node is registered at all, the grace periods stand still: every agent gone
    /// at once is far likelier the controller's own isolation (its ZooKeeper side cut from
    /// every agent) than every machine's death, and the replicas would have nowhere else to
    /// go anyway. Giving the nodes up would delete every lease, and each agent, back, would
    /// stop every replica. Kubernetes' node lifecycle controller stops evicting in a zone
    /// whose nodes are all NotReady, for the same reason. Each missing node's grace period
    /// starts again when the first node is back, so that the others, back a moment later,
    /// are not given up in between.
    pub fn available(&mut self, now: Instant, policies: &[ResourcePolicy]) -> Vec<NodeInfo> {
        if self.none_registered() {
            if !self.nodes.is_empty() && !self.all_missing_warned {
                tracing::warn!(
                    nodes = self.nodes.len(),
                    "no node is registered: the controller is likelier cut off than every node dead; no node is given up until one registers again"
                );
                self.all_missing_warned = true;
            }
            for tracked in self.nodes.values_mut() {
                tracked.missing_since = Some(now);
            }
            return self.infos();
        }
        self.all_missing_warned = false;
        let expired: Vec<(String, Instant)> = self
            .nodes
            .iter()
            .filter_map(|(name, t)| {
                let since = t.missing_since?;
                (now.duration_since(since) >= grace(&t.registration, policies))
                    .then(|| (name.clone(), since))
            })
            .collect();
        for (name, since) in expired {
            tracing::warn!(node = %name, "node lost: its grace period is over; its replicas move");
            self.nodes.remove(&name);
            self.lost.insert(name, since);
        }
        self.infos()
    }

    /// True when every node known is missing (or none is known).
    fn none_registered(&self) -> bool {
        self.nodes.values().all(|t| t.missing_since.is_some())
    }

    fn infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|t| NodeInfo {
                name: t.registration.name.clone(),
                labels: t.registration.labels.clone(),
                capacity: t.registration.capacity,
            })
            .collect()
    }

    /// Every node whose registration is missing now (in its grace period, or lost), with
    /// how long it has been missing at `now`.
    pub fn missing(&self, now: Instant) -> BTreeMap<String, Duration> {
        let in_grace = self
            .nodes
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), t.missing_since?)));
        let lost = self.lost.iter().map(|(name, since)| (name.clone(), *since));
        in_grace
            .chain(lost)
            .map(|(name, since)| (name, now.saturating_duration_since(since)))
            .collect()
    }

    /// When the next missing node's grace period ends; none while no node is registered
    /// (see [`NodeTracker::available`]).
    pub fn next_deadline(&self, policies: &[ResourcePolicy]) -> Option<Instant> {
        if self.none_registered() {
            return None;
        }
        self.nodes
            .values()
            .filter_map(|t| {
                t.missing_since
                    .map(|since| since + grace(&t.registration, policies))
            })
            .min()
    }
}

/// The grace period of a node: that of the policy governing it (highest precedence among
/// those whose node selector matches), else the default's.
pub fn grace(node: &NodeRegistration, policies: &[ResourcePolicy]) -> Duration {
    let matching: Vec<&ResourcePolicy> = policies
        .iter()
        .filter(|p| selector::matches(p.spec.node_selector.as_ref(), &node.labels))
        .collect();
    let seconds = govern::highest(matching)
        .and_then(|top| top.first().map(|p| p.spec.node_grace_period_seconds))
        .unwrap_or_else(|| ResourcePolicySpec::default().node_grace_period_seconds);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(40))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Res;
    use crate::alloc::fixtures::mk_policy;
    use crate::lease::FORMAT_VERSION;
    use serde_json::json;

    fn reg(name: &str) -> NodeRegistration {
        NodeRegistration {
            version: FORMAT_VERSION,
            name: name.into(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            capacity: Res::new(1000, 1 << 30, 100),
            cgroup_mode: "v1".into(),
            agent_version: "test".into(),
        }
    }

    fn names(nodes: &[NodeInfo]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn a_missing_node_stays_for_its_grace_then_is_lost_until_it_returns() {
        let policies = [mk_policy("p", json!({"nodeGracePeriodSeconds": 10}))];
        let mut tracker = NodeTracker::default();
        let t0 = Instant::now();
        tracker.observe(vec![reg("a"), reg("b")], vec![], t0);
        assert_eq!(names(&tracker.available(t0, &policies)), ["a", "b"]);
        tracker.observe(vec![reg("a")], vec![], t0 + Duration::from_secs(1));
        assert_eq!(
            tracker.next_deadline(&policies),
            Some(t0 + Duration::from_secs(11))
        );
        assert_eq!(
            names(&tracker.available(t0 + Duration::from_secs(10), &policies)),
            ["a", "b"]
        );
        assert_eq!(
            names(&tracker.available(t0 + Duration::from_secs(11), &policies)),
            ["a"]
        );
        // Remembered (it still holds leases) but lost: not brought back.
        tracker.observe(vec![reg("a")], vec![reg("b")], t0 + Duration::from_secs(12));
        assert_eq!(
            names(&tracker.available(t0 + Duration::from_secs(12), &policies)),
            ["a"]
        );
        // It registers again.
        assert_eq!(
            tracker.missing(t0 + Duration::from_secs(12)),
            BTreeMap::from([("b".to_string(), Duration::from_secs(11))]),
            "a lost node is still missing, counted from when it went"
        );
        tracker.observe(
            vec![reg("a"), reg("b")],
            vec![],
            t0 + Duration::from_secs(13),
        );
        assert!(tracker.missing(t0 + Duration::from_secs(13)).is_empty());
        assert_eq!(
            names(&tracker.available(t0 + Duration::from_secs(13), &policies)),
            ["a", "b"]
        );
    }

    #[test]
    fn no_node_is_given_up_while_none_is_registered() {
        let policies = [mk_policy("p", json!({"nodeGracePeriodSeconds": 10}))];
        let mut tracker = NodeTracker::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        tracker.observe(vec![reg("a"), reg("b")], vec![], t0);
        tracker.available(t0, &policies);
        // Every registration goes at once: the controller, cut off, sees them expire.
        tracker.observe(vec![], vec![], at(1));
        assert_eq!(tracker.next_deadline(&policies), None);
        for s in [11, 60, 600] {
            assert_eq!(names(&tracker.available(at(s), &policies)), ["a", "b"]);
        }
        // One is back: the other's grace period starts now, not at its 1 s.
        tracker.observe(vec![reg("a")], vec![], at(601));
        assert_eq!(tracker.next_deadline(&policies), Some(at(610)));
        assert_eq!(names(&tracker.available(at(605), &policies)), ["a", "b"]);
        assert_eq!(names(&tracker.available(at(610), &policies)), ["a"]);
        // A single node that dies is never given up either: there is nowhere to go.
        let mut alone = NodeTracker::default();
        alone.observe(vec![reg("a")], vec![], t0);
        alone.observe(vec![], vec![], at(1));
        assert_eq!(names(&alone.available(at(1000), &policies)), ["a"]);
    }

    #[test]
    fn after_a_failover_remembered_nodes_get_a_grace_period_from_now() {
        let mut tracker = NodeTracker::default();
        let t0 = Instant::now();
        tracker.observe(vec![reg("a")], vec![reg("b")], t0);
        assert_eq!(names(&tracker.available(t0, &[])), ["a", "b"]);
        assert_eq!(
            tracker.next_deadline(&[]),
            Some(t0 + Duration::from_secs(40)),
            "the default grace"
        );
    }

    #[test]
    fn grace_comes_from_the_policy_governing_the_node() {
        let policies = [
            mk_policy(
                "zone-a",
                json!({"nodeSelector": {"matchLabels": {"zone": "a"}}, "nodeGracePeriodSeconds": 7, "precedence": 1}),
            ),
            mk_policy("all", json!({"nodeGracePeriodSeconds": 99})),
        ];
        assert_eq!(grace(&reg("a"), &policies), Duration::from_secs(7));
        let mut other = reg("b");
        other.labels.clear();
        assert_eq!(grace(&other, &policies), Duration::from_secs(99));
    }
}
