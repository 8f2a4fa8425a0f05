//! Amounts of the resources corral allocates, shared by workloads and policies.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::quantity::Quantity;

/// The most processes a pids limit can name (the kernel's `PID_MAX_LIMIT` on 64-bit).
pub const PIDS_MAX: i64 = 4_194_304;

/// An amount of each resource corral allocates. Every field is optional; an absent field
/// means "not specified" (see the policy's defaults), not zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU in cores, as a Kubernetes quantity: `500m` is half a core, `2` is two cores.
    /// Precision finer than 1m is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory in bytes, as a Kubernetes quantity: `256Mi`, `1Gi`, `1G`. Must be whole bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Number of processes and threads (the cgroup `pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_194_304))]
    pub pids: Option<i64>,
}

/// Requests (what is guaranteed) and limits (the most that may be used).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.cpu) || !has(self.limits.cpu) || quantity(string(self.limits.cpu)).compareTo(quantity(string(self.requests.cpu))) >= 0").message(Message::Expression("'must be at least requests.cpu (' + string(self.requests.cpu) + '), not ' + string(self.limits.cpu)".into())).field_path(".limits.cpu"),
    validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || !has(self.limits.memory) || quantity(string(self.limits.memory)).compareTo(quantity(string(self.requests.memory))) >= 0").message(Message::Expression("'must be at least requests.memory (' + string(self.requests.memory) + '), not ' + string(self.limits.memory)".into())).field_path(".limits.memory"),
    validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.pids) || !has(self.limits.pids) || self.limits.pids >= self.requests.pids").message(Message::Expression("'must be at least requests.pids (%d), not %d'.format([self.requests.pids, self.limits.pids])".into())).field_path(".limits.pids"),
)]
pub struct ResourceRequirements {
    /// What the workload is guaranteed. The allocator never grants less than this (the
    /// `Demand` strategy scales it down only when requests exceed capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// The most the workload may use; the kernel enforces it (`cpu.cfs_quota_us`,
    /// `memory.limit_in_bytes`, `pids.max`). Each limit must be at least its request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
    /// Block IO weight, 1 to 10000 (cgroup v2 `io.weight`; scaled to `blkio.bfq.weight` on
    /// v1). Applied only where the kernel offers a weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub io_weight: Option<i32>,
}
