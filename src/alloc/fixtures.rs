//! Small builders of policies, workloads and nodes, for tests and benchmarks: each takes
//! the few fields that matter and fills in the rest as a manifest that omits them would.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::input::NodeInfo;
use super::resources::Res;
use crate::api::{ResourcePolicy, Workload};

/// A node with `cpu` millicores, `memory_mib` MiB, 1000 pids and the given labels.
pub fn mk_node(name: &str, cpu: i64, memory_mib: i64, labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        capacity: Res::new(cpu, memory_mib << 20, 1000),
    }
}

/// A policy named `name` with `spec` (a manifest's `spec`, as JSON).
///
/// # Panics
/// When `spec` is not a valid ResourcePolicy spec: a fixture's mistake.
pub fn mk_policy(name: &str, spec: Value) -> ResourcePolicy {
    serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "ResourcePolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("fixture policy")
}

/// A workload `namespace/name` running `sleep`, with `replicas`, a request of `cpu`
/// millicores and `memory_mib` MiB, and `extra` merged into its spec.
///
/// # Panics
/// When the result is not a valid Workload: a fixture's mistake.
pub fn mk_workload(
    namespace: &str,
    name: &str,
    replicas: u32,
    cpu: i64,
    memory_mib: i64,
    extra: Value,
) -> Workload {
    let mut spec = json!({
        "replicas": replicas,
        "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{memory_mib}Mi")}},
        "command": {"args": ["sleep", "infinity"]},
    });
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec,
    }))
    .expect("fixture workload")
}

/// The lease of replica `index` of workload `t/<name>` on `node`, granted 100m and
/// 10 MiB, written at `epoch`.
pub fn mk_lease(node: &str, name: &str, index: u32, epoch: i64) -> crate::lease::Lease {
    use super::plan::{Allocation, Limits};
    let workload = mk_workload("t", name, index + 1, 100, 10, json!({}));
    let allocation = Allocation {
        workload: crate::api::WorkloadRef::new("t", name),
        replica: index,
        key: format!("t.{name}.{index}"),
        node: node.into(),
        policy: "p".into(),
        tenant: "t".into(),
        priority: 0,
        granted: Res::new(100, 10 << 20, 0),
        request: Res::new(100, 10 << 20, 0),
        limits: Limits::default(),
        io_weight: None,
    };
    crate::lease::Lease::new(
        &allocation,
        &workload,
        &crate::api::ResourcePolicySpec::default(),
        epoch,
    )
}
