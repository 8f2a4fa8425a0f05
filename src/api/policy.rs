//! The `ResourcePolicy` kind: how the resources of a set of nodes are shared.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quantity::Quantity;
use super::resources::{ResourceAmounts, ResourceRequirements};

/// Which nodes and workloads the policy governs, and how it shares the nodes' resources.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "ResourcePolicy",
    shortname = "rp",
    category = "corral",
    status = "ResourcePolicyStatus",
    derive = "PartialEq",
    doc = "A ResourcePolicy: how the CPU, memory and pids of a set of nodes are shared among the workloads it governs.",
    printcolumn(name = "Strategy", type_ = "string", json_path = ".spec.strategy", description = "Priority, Fair, Demand or Usage"),
    printcolumn(name = "Precedence", type_ = "integer", json_path = ".spec.precedence", priority = 1),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodeCount", description = "Nodes governed"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending", description = "Replicas that could not be placed"),
    printcolumn(name = "Valid", type_ = "string", json_path = ".status.conditions[?(@.type==\"Valid\")].status", description = "False when corral refuses the policy; see the Valid condition"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "True when the policy is in use and governs nodes"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message(crate::api::names::DNS_LABEL_MESSAGE).field_path(".metadata.name"),
)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePolicySpec {
    /// Which policy wins when several match the same node or workload: the higher
    /// precedence. Two matching policies with the same precedence are an error.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub precedence: i32,

    /// The nodes this policy governs, by their labels: a label selector (`matchLabels`,
    /// `matchExpressions`), as a Deployment's `selector`. Empty selects every node. (A
    /// Workload's `placement.nodeSelector` is a plain map of labels, as a Pod's.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Namespaces whose workloads this policy governs. Empty means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(regex(pattern = crate::api::names::DNS_LABEL_PATTERN), length(min = 1, max = 63))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub namespaces: Vec<String>,

    /// The workloads this policy governs, by their labels. Empty selects every workload in
    /// `namespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,

    /// How resources are shared: `Priority` (higher priority first; lower may be preempted),
    /// `Fair` (weighted Dominant Resource Fairness across tenants), `Demand` (requests are
    /// scaled down proportionally when they exceed capacity) or `Usage` (grants follow
    /// observed use between request and limit). Default `Priority`.
    #[serde(default)]
    pub strategy: Strategy,

    /// Resources held back on every node for the system and corral itself.
    #[serde(default)]
    pub reserved: ResourceAmounts,

    /// How far guaranteed grants may exceed what a node has after `reserved`, per resource,
    /// as a ratio from 1 (no overcommit) to 100.
    #[serde(default)]
    pub overcommit: Overcommit,

    /// Tenants, one per namespace, with a weight for fair sharing, a guarantee and a limit.
    /// The kernel enforces a tenant's limit on its parent cgroup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into()]))]
    pub tenants: Vec<Tenant>,

    /// Requests, limits and IO weight for workloads that omit them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ResourceRequirements>,

    /// Whether a pending workload may preempt workloads of lower priority.
    #[serde(default)]
    pub preemption: Preemption,

    /// Settings of the `Demand` strategy.
    #[serde(default)]
    pub demand: DemandSettings,

    /// Settings of the `Usage` strategy.
    #[serde(default)]
    pub usage: UsageSettings,

    /// How grants become cgroup values on the nodes.
    #[serde(default)]
    pub cgroup: CgroupSettings,

    /// Seconds a node may be unregistered (its agent gone) before its replicas are moved to
    /// other nodes. 5 to 86400; default 40.
    #[serde(default = "default_node_grace")]
    #[schemars(range(min = 5, max = 86_400))]
    pub node_grace_period_seconds: i32,

    /// What every tenant (namespace) of this policy may do, unless its own entry in
    /// `tenants` says otherwise, field by field: the users and groups its commands run as,
    /// whether it may adopt processes, its highest priority and how many Workloads and
    /// replicas it may have. Workloads cannot override any of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_defaults: Option<TenantSettings>,

    /// Bounds on each replica's requests and limits, as a Kubernetes LimitRange: after
    /// defaults are applied, every request must be at least `min` and every request and
    /// limit at most `max`. A workload that omits a limit gets `defaults.limits`, else
    /// `max`; one that omits a request gets its limit, `defaults.requests`, else `min`. An
    /// explicit zero is checked like any other value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_bounds: Option<ReplicaBounds>,

    /// The most replicas one node runs under this policy, 1 to 10000; default 110 (as the
    /// kubelet's `maxPods`). Replicas beyond it stay pending.
    #[serde(default = "default_max_replicas_per_node")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_replicas_per_node: i32,

    /// The longest `terminationGracePeriodSeconds` a workload gets, 0 to 3600; default 30
    /// (as Nomad's `max_kill_timeout`). A workload asking for more is stopped after this.
    #[serde(default = "default_max_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub max_termination_grace_period_seconds: i32,

    /// How each replica's output is kept on its node: rotated by size, a number of files.
    #[serde(default)]
    pub logs: LogSettings,
}

fn default_node_grace() -> i32 {
    40
}

fn default_max_replicas_per_node() -> i32 {
    110
}

fn default_max_grace() -> i32 {
    30
}

impl Default for ResourcePolicySpec {
    /// The policy of a manifest that says nothing: what governs workloads and nodes no
    /// ResourcePolicy matches.
    fn default() -> Self {
        ResourcePolicySpec {
            precedence: 0,
            node_selector: None,
            namespaces: Vec::new(),
            workload_selector: None,
            strategy: Strategy::default(),
            reserved: ResourceAmounts::default(),
            overcommit: Overcommit::default(),
            tenants: Vec::new(),
            defaults: None,
            preemption: Preemption::default(),
            demand: DemandSettings::default(),
            usage: UsageSettings::default(),
            cgroup: CgroupSettings::default(),
            node_grace_period_seconds: default_node_grace(),
            tenant_defaults: None,
            replica_bounds: None,
            max_replicas_per_node: default_max_replicas_per_node(),
            max_termination_grace_period_seconds: default_max_grace(),
            logs: LogSettings::default(),
        }
    }
}

/// How a policy shares resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Strategy {
    /// Higher priority first; lower priority may be preempted when the policy allows it.
    #[default]
    Priority,
    /// Weighted Dominant Resource Fairness across tenants.
    Fair,
    /// Proportional scaling of requests when they exceed capacity.
    Demand,
    /// Grants follow observed use, between request and limit.
    Usage,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Overcommit ratios per resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overcommit {
    /// CPU overcommit ratio, 1 to 100; default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub cpu: f64,
    /// Memory overcommit ratio, 1 to 100; default 1. Memory cannot be taken back without
    /// killing, so overcommit it with care.
    #[serde(default = "one")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub memory: f64,
    /// Pids overcommit ratio, 1 to 100; default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub pids: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu: 1.0,
            memory: 1.0,
            pids: 1.0,
        }
    }
}

fn one() -> f64 {
    1.0
}

/// A tenant: the workloads of one namespace, sharing a parent cgroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.guarantee) || !has(self.limit) || !has(self.guarantee.pids) || !has(self.limit.pids) || self.limit.pids >= self.guarantee.pids").message(Message::Expression("'must be at least guarantee.pids (%d), not %d'.format([self.guarantee.pids, self.limit.pids])".into())).field_path(".limit.pids"),
)]
pub struct Tenant {
    /// The namespace whose workloads form this tenant.
    #[schemars(regex(pattern = crate::api::names::DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub namespace: String,
    /// The tenant's weight in fair sharing, 1 to 1000; default 1. A tenant of weight 2 is
    /// entitled to twice the dominant share of a tenant of weight 1.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: i32,
    /// Resources reserved for this tenant on the policy's nodes, met before any fair sharing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<ResourceAmounts>,
    /// The most this tenant may be granted on the policy's nodes in total; also written to
    /// the tenant's parent cgroup on each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<ResourceAmounts>,
    /// Its priority bound, counts, users, groups and adoption (`maxPriority`,
    /// `maxWorkloads`, `maxReplicas`, `security`): each set here replaces `tenantDefaults`'.
    #[serde(flatten)]
    pub settings: TenantSettings,
}

/// What a tenant may do: in `tenantDefaults` for every tenant of the policy, and in a
/// `tenants` entry for that tenant, where each field set replaces the default's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSettings {
    /// The highest `spec.priority` the tenant's Workloads may have, 0 to 1000000000; no
    /// bound when neither the tenant's entry nor `tenantDefaults` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub max_priority: Option<i32>,
    /// The most Workloads the tenant may have under the policy; beyond it, Workloads are
    /// refused, the newest (then last by name) first. No bound when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_workloads: Option<i32>,
    /// The most replicas the tenant may have placed under the policy; beyond it, replicas
    /// stay pending. No bound when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_replicas: Option<i32>,
    /// The users and groups the tenant's commands run as, and what it may adopt; each field
    /// of a tenant's entry replaces the one of `tenantDefaults.security`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<TenantSecurity>,
}

/// Which users and groups a tenant's commands may run as, and what it may adopt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSecurity {
    /// The user a command runs as when its Workload names none; default 65534 (`nobody`).
    /// Give each tenant its own: processes of the same user can signal and inspect each
    /// other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub run_as_user: Option<i64>,
    /// The primary group when the Workload names none; default 65534 (`nogroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub run_as_group: Option<i64>,
    /// The user IDs a Workload may ask for, as ranges; default: only `runAsUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub allowed_users: Option<Vec<IdRange>>,
    /// The group IDs a Workload may ask for (primary and supplementary), as ranges;
    /// default: only `runAsGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub allowed_groups: Option<Vec<IdRange>>,
    /// Whether user 0 and group 0 (root) may be used at all; default false. Root keeps
    /// neither capabilities nor the right to gain them, but owns root's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_root: Option<bool>,
    /// Whether and what the tenant may adopt; by default nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptPermission>,
}

/// An inclusive range of user or group IDs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.max >= self.min").message(Message::Expression("'must be at least min (%d), not %d'.format([self.min, self.max])".into())).field_path(".max"),
)]
pub struct IdRange {
    /// The first ID, 0 to 2147483647.
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub min: i64,
    /// The last ID, at least `min`.
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub max: i64,
}

impl IdRange {
    /// True when `id` is in the range.
    pub fn contains(&self, id: i64) -> bool {
        (self.min..=self.max).contains(&id)
    }
}

/// Whether a tenant may adopt existing processes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptPermission {
    /// Whether the tenant's Workloads may use `adopt` at all; default false. A pid file or
    /// command pattern then adopts only processes whose users the tenant may use (root
    /// only with `allowRoot`).
    #[serde(default)]
    pub enabled: bool,
    /// Cgroups (absolute, as in /proc/PID/cgroup) below which `adopt.cgroupPath` may
    /// point; processes there are adopted whatever their user. None by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = crate::api::names::ABSOLUTE_PATH_PATTERN), length(max = 4096))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub cgroup_prefixes: Vec<String>,
}

/// Each replica's request and limit bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaBounds {
    /// The least each replica may request, per resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<ResourceAmounts>,
    /// The most each replica may request or be limited to, per resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<ResourceAmounts>,
}

/// How replicas' output is rotated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogSettings {
    /// The largest a log file grows before it is rotated, 4Ki to 1Gi; default `10Mi` (as
    /// the kubelet's `containerLogMaxSize`).
    #[serde(default = "default_log_size")]
    pub max_size: Quantity,
    /// How many files are kept per replica, the current one included, 1 to 100; default 5
    /// (as the kubelet's `containerLogMaxFiles`).
    #[serde(default = "default_log_files")]
    #[schemars(range(min = 1, max = 100))]
    pub max_files: i32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_size: default_log_size(),
            max_files: default_log_files(),
        }
    }
}

fn default_log_size() -> Quantity {
    Quantity::new("10Mi")
}

fn default_log_files() -> i32 {
    5
}

fn default_weight() -> i32 {
    1
}

/// Preemption settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preemption {
    /// `PreemptLowerPriority` lets a pending workload take the place of workloads of strictly
    /// lower priority; `Never` does not. Default `Never`.
    #[serde(default)]
    pub policy: PreemptionPolicy,
}

/// Whether preemption is allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PreemptionPolicy {
    /// Never preempt.
    #[default]
    Never,
    /// Preempt replicas of strictly lower priority.
    PreemptLowerPriority,
}

/// Settings of the `Demand` strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DemandSettings {
    /// The smallest grant, as a percentage of the request, that proportional scaling may
    /// give; a replica that cannot get it stays pending. 0 to 100; default 10.
    #[serde(default = "default_floor")]
    #[schemars(range(min = 0, max = 100))]
    pub floor_percent: i32,
}

impl Default for DemandSettings {
    fn default() -> Self {
        DemandSettings {
            floor_percent: default_floor(),
        }
    }
}

fn default_floor() -> i32 {
    10
}

/// Settings of the `Usage` strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSettings {
    /// Which percentile of the observed use to grant, 1 to 100; default 95.
    #[serde(default = "default_percentile")]
    #[schemars(range(min = 1, max = 100))]
    pub percentile: i32,
    /// A replica whose `memory.pressure` (`some`, averaged over 10 s) is at least this
    /// percentage keeps at least the memory it is granted now: its grant may grow, within
    /// its limit and the node, but not shrink. Only cgroup v2 nodes report pressure.
    /// 1 to 100; default 10.
    #[serde(default = "default_memory_pressure_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub memory_pressure_percent: i32,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            percentile: default_percentile(),
            memory_pressure_percent: default_memory_pressure_percent(),
        }
    }
}

fn default_percentile() -> i32 {
    95
}

/// 10 %: well above the stalls of ordinary reclaim (senpai keeps workloads near 0.1 %),
/// well below where systemd-oomd kills (60 %).
fn default_memory_pressure_percent() -> i32 {
    10
}

/// How grants become cgroup values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CgroupSettings {
    /// The CFS period in microseconds, 1000 to 1000000; default 100000 (100 ms, as kubelet).
    /// The quota is `limit × period`.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1000, max = 1_000_000))]
    pub cpu_period_micros: i64,
    /// Where `memory.high` sits between request and limit, as kubelet's memory throttling
    /// factor: `request + ratio × (limit − request)`. Over 0, at most 1; default 0.9.
    #[serde(default = "default_high_ratio")]
    // Over 0: `exclusiveMinimum`, set in crate::api::crd (schemars writes it as a number,
    // the API server wants OpenAPI 3.0's boolean).
    #[schemars(range(max = 1.0))]
    pub memory_high_ratio: f64,
    /// How the request is protected from reclaim (cgroup v2): `Off`, `Low` (`memory.low`,
    /// best effort) or `Min` (`memory.min`, guaranteed). Default `Off`.
    #[serde(default)]
    pub memory_protection: MemoryProtection,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        CgroupSettings {
            cpu_period_micros: default_period(),
            memory_high_ratio: default_high_ratio(),
            memory_protection: MemoryProtection::default(),
        }
    }
}

fn default_period() -> i64 {
    100_000
}

fn default_high_ratio() -> f64 {
    0.9
}

/// Memory protection of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MemoryProtection {
    /// No protection.
    #[default]
    Off,
    /// `memory.low` = request: protected unless the whole system is short.
    Low,
    /// `memory.min` = request: never reclaimed.
    Min,
}

/// What the policy governs and how full it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes this policy governs now.
    #[serde(default)]
    pub node_count: i32,
    /// Allocatable resources summed over the governed nodes (after reserved and overcommit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ResourceTotals>,
    /// Resources granted summed over the governed nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<ResourceTotals>,
    /// Replicas governed by this policy that could not be placed.
    #[serde(default)]
    pub pending: i32,
    /// `Ready` and `Valid`, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A total of each resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTotals {
    /// CPU.
    pub cpu: Quantity,
    /// Memory.
    pub memory: Quantity,
    /// Processes.
    pub pids: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spec_is_what_an_empty_manifest_means() {
        let empty: ResourcePolicySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, ResourcePolicySpec::default());
    }
}
