//! What the allocator is given: nodes, replica keys, observations, and each workload's
//! demand resolved against its policy's defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resources::{Kind, Res};
use crate::api::identity::namespace_of;
use crate::api::policy::ResourcePolicySpec;
use crate::api::workload::PlacementMode;
use crate::api::{ResourceAmounts, Workload};

/// A node the allocator may place replicas on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its labels, matched by node selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What it has, before anything is reserved.
    pub capacity: Res,
}

pub use crate::api::identity::ReplicaKey;

/// Recent observations of one replica's use, oldest first, and what it is granted now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// CPU in millicores, one sample per observation interval.
    #[serde(default)]
    pub cpu: Vec<i64>,
    /// Memory in bytes.
    #[serde(default)]
    pub memory: Vec<i64>,
    /// Processes.
    #[serde(default)]
    pub pids: Vec<i64>,
    /// The latest `memory.pressure` `some avg10`, in percent; `None` where the node keeps
    /// no pressure information (cgroup v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pressure: Option<f64>,
    /// The memory its lease grants now, bytes; `None` without a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_granted: Option<i64>,
}

impl Observed {
    /// The nearest-rank `percentile` (1–100) of each resource's samples; `None` for a
    /// resource without samples.
    pub fn percentile(&self, percentile: i32) -> [Option<i64>; 3] {
        let p = |samples: &[i64]| {
            if samples.is_empty() {
                return None;
            }
            let mut sorted = samples.to_vec();
            sorted.sort_unstable();
            let n = sorted.len();
            let rank = (usize::try_from(percentile.clamp(1, 100)).unwrap_or(100) * n).div_ceil(100);
            Some(sorted[rank.clamp(1, n) - 1])
        };
        [p(&self.cpu), p(&self.memory), p(&self.pids)]
    }

    /// The memory grant the replica keeps: the one it has now, while its memory pressure
    /// is at least `threshold` percent; `None` otherwise.
    pub fn memory_hold(&self, threshold: f64) -> Option<i64> {
        self.memory_pressure
            .filter(|p| *p >= threshold)
            .and(self.memory_granted)
    }
}

/// A workload's demand, resolved: requests, limits and footprint in allocator units.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// Guaranteed per replica.
    pub request: Res,
    /// The most per replica; `i64::MAX` for "no limit".
    pub limit: Res,
    /// Replicas asked for.
    pub replicas: u32,
    /// Priority.
    pub priority: i32,
    /// Node labels required.
    pub node_selector: BTreeMap<String, String>,
    /// Spread or pack.
    pub mode: PlacementMode,
    /// Block IO weight, passed through to the node.
    pub io_weight: Option<i32>,
}

impl Demand {
    /// Resolves a validated workload against its policy, as Kubernetes resolves a container
    /// against a LimitRange: a missing request is the limit when one is given, else the
    /// policy's default request, else `replicaBounds.min`, else zero; a missing limit is the
    /// policy's default limit, else `replicaBounds.max`, else none. A limit below the
    /// resolved request is raised to it. The priority is capped at the tenant's
    /// `maxPriority` (admission refuses a workload above it; this keeps anything that slipped
    /// past from outranking its tenant's bound).
    pub fn resolve(workload: &Workload, policy: &ResourcePolicySpec) -> Demand {
        let spec = &workload.spec;
        let none = ResourceAmounts::default();
        let defaults = policy.defaults.as_ref();
        let bounds = policy.replica_bounds.as_ref();
        let default_requests = defaults.and_then(|d| d.requests.as_ref()).unwrap_or(&none);
        let default_limits = defaults.and_then(|d| d.limits.as_ref()).unwrap_or(&none);
        let bound_min = bounds.and_then(|b| b.min.as_ref()).unwrap_or(&none);
        let bound_max = bounds.and_then(|b| b.max.as_ref()).unwrap_or(&none);
        let requests = spec.resources.requests.as_ref().unwrap_or(&none);
        let limits = spec.resources.limits.as_ref().unwrap_or(&none);
        let mut request = Res::ZERO;
        let mut limit = Res::UNLIMITED;
        for kind in Kind::ALL {
            let own_limit = amount(limits, kind);
            let r = amount(requests, kind)
                .or(own_limit)
                .or_else(|| amount(default_requests, kind))
                .or_else(|| amount(bound_min, kind))
                .unwrap_or(0);
            let l = own_limit
                .or_else(|| amount(default_limits, kind))
                .or_else(|| amount(bound_max, kind))
                .unwrap_or(i64::MAX);
            request.set(kind, r);
            limit.set(kind, l.max(r));
        }
        let namespace = namespace_of(workload);
        let max_priority = super::admit::max_priority(policy, namespace);
        Demand {
            request,
            limit,
            replicas: u32::try_from(spec.replicas).unwrap_or(0),
            priority: spec.priority.min(max_priority),
            node_selector: spec.placement.node_selector.clone(),
            mode: spec.placement.mode,
            io_weight: spec
                .resources
                .io_weight
                .or(policy.defaults.as_ref().and_then(|d| d.io_weight)),
        }
    }
}

/// One resource of an amount in allocator units. Validation has refused what does not
/// convert; should anything slip through, it counts as unspecified.
fn amount(amounts: &ResourceAmounts, kind: Kind) -> Option<i64> {
    match kind {
        Kind::Cpu => amounts.cpu.as_ref().and_then(|q| q.millis().ok()),
        Kind::Memory => amounts.memory.as_ref().and_then(|q| q.units().ok()),
        Kind::Pids => amounts.pids,
    }
}

/// An amount given as optional quantities, in allocator units; absent resources are `absent`.
pub fn amounts_or(amounts: Option<&ResourceAmounts>, absent: i64) -> Res {
    let none = ResourceAmounts::default();
    let amounts = amounts.unwrap_or(&none);
    let mut out = Res::ZERO;
    for kind in Kind::ALL {
        out.set(kind, amount(amounts, kind).unwrap_or(absent));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload(resources: serde_json::Value) -> Workload {
        serde_json::from_value(
            json!({"apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "w", "namespace": "n"},
            "spec": {"command": {"args": ["x"]}, "resources": resources}}),
        )
        .unwrap()
    }

    #[test]
    fn requests_default_like_kubernetes() {
        let policy: ResourcePolicySpec = serde_json::from_value(json!({"defaults": {
            "requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "64Mi", "pids": 50}}}))
        .unwrap();
        let d = Demand::resolve(&workload(json!({"limits": {"cpu": "1"}})), &policy);
        assert_eq!(
            d.request,
            Res::new(1000, 32 << 20, 0),
            "a lone limit is also the request"
        );
        assert_eq!(d.limit, Res::new(1000, 64 << 20, 50));
        let d = Demand::resolve(&workload(json!({"requests": {"memory": "128Mi"}})), &policy);
        assert_eq!(d.request, Res::new(100, 128 << 20, 0));
        assert_eq!(
            d.limit.memory,
            128 << 20,
            "a default limit below the request is raised"
        );
        assert_eq!(d.limit.cpu, i64::MAX);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let o = Observed {
            cpu: vec![50, 10, 40, 30, 20],
            memory: vec![],
            pids: vec![7],
            ..Observed::default()
        };
        assert_eq!(o.percentile(100), [Some(50), None, Some(7)]);
        assert_eq!(o.percentile(50), [Some(30), None, Some(7)]);
        assert_eq!(o.percentile(1), [Some(10), None, Some(7)]);
        assert_eq!(o.percentile(95), [Some(50), None, Some(7)]);
    }

    #[test]
    fn memory_is_held_at_or_above_the_threshold_and_only_with_a_grant() {
        let o = |pressure: Option<f64>, granted: Option<i64>| Observed {
            memory_pressure: pressure,
            memory_granted: granted,
            ..Observed::default()
        };
        assert_eq!(o(Some(10.0), Some(64)).memory_hold(10.0), Some(64));
        assert_eq!(o(Some(55.5), Some(64)).memory_hold(10.0), Some(64));
        assert_eq!(o(Some(9.99), Some(64)).memory_hold(10.0), None);
        assert_eq!(o(None, Some(64)).memory_hold(10.0), None, "v1: no pressure");
        assert_eq!(o(Some(50.0), None).memory_hold(10.0), None, "no lease yet");
        assert_eq!(o(Some(f64::NAN), Some(64)).memory_hold(10.0), None);
    }

    #[test]
    fn keys_are_lease_keys() {
        let k = ReplicaKey::new("team-a", "api", 3);
        assert_eq!(k.to_string(), "team-a.api.3");
        assert_eq!(k.workload, "team-a/api");
    }
}
