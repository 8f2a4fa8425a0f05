//! The `Workload` kind: what runs, with how much, where.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quantity::Quantity;
use super::resources::ResourceRequirements;

/// The most replicas one workload may ask for.
pub const MAX_REPLICAS: i32 = 1000;
/// The highest priority a workload may have (as Kubernetes' user-defined PriorityClasses).
pub const MAX_PRIORITY: i32 = 1_000_000_000;

/// What to run, how many copies, with how much CPU, memory and pids, and where.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "Workload",
    namespaced,
    shortname = "wl",
    category = "corral",
    status = "WorkloadStatus",
    derive = "PartialEq",
    doc = "A Workload: processes that corral runs (or adopts) in cgroups on the nodes it chooses, with the CPU, memory and pids it grants under a ResourcePolicy.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Pending, Allocated, Running, Degraded or Terminating"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Replicas asked for"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas", description = "Replicas enforced and running"),
    printcolumn(name = "Up-to-date", type_ = "integer", json_path = ".status.updatedReplicas", description = "Replicas that run the current spec"),
    printcolumn(name = "CPU", type_ = "string", json_path = ".status.request.cpu", description = "CPU requested per replica, the policy's default included"),
    printcolumn(name = "Memory", type_ = "string", json_path = ".status.request.memory", description = "Memory requested per replica, the policy's default included"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message(crate::api::names::DNS_LABEL_MESSAGE).field_path(".metadata.name"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.command) != has(self.adopt)").message("exactly one of command or adopt must be set"),
)]
pub struct WorkloadSpec {
    /// How many copies to run, 0 to 1000. Each replica gets its own cgroup and its own
    /// allocation, possibly on a different node.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Relative importance, 0 to 1000000000. Under the `Priority` strategy higher goes first,
    /// and may preempt lower when the policy allows it.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub priority: i32,

    /// CPU, memory and pids each replica requests (guaranteed) and is limited to. Omitted
    /// values come from the governing policy's defaults.
    #[serde(default)]
    pub resources: ResourceRequirements,

    /// Which nodes may run the replicas, and how they are spread.
    #[serde(default)]
    pub placement: Placement,

    /// The command to run in each replica's cgroup. Exactly one of `command` and `adopt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,

    /// Existing processes to move into the replica's cgroup instead of starting a command.
    /// Exactly one of `command` and `adopt`. Only where the governing policy lets the
    /// namespace adopt (`security.adopt`), and only processes of users the namespace may
    /// use, or in cgroups below a prefix the policy names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptRule>,

    /// The ResourcePolicy that governs this workload. When omitted, the policy with the
    /// highest precedence whose namespaces and workload selector match is used. A policy
    /// whose `namespaces` or `workloadSelector` do not admit the workload cannot be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyReference>,

    /// Seconds between SIGTERM and SIGKILL when the workload's processes are stopped
    /// (deletion, preemption, a move to another node). 0 to 3600; default 10. The
    /// governing policy caps it (`maxTerminationGracePeriodSeconds`, 30 by default).
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: i32,

    /// How a change to what the replicas run (the command's arguments, environment,
    /// working directory or user, or the `corral.dev/restartedAt` annotation) replaces them:
    /// a rolling update, a few replicas at a time. A change of resources alone is applied
    /// in place, with no restart.
    #[serde(default)]
    pub update: UpdateStrategy,

    /// What happens to the replicas of a node cut off from ZooKeeper (a partition, a lost
    /// network), as Nomad's `disconnect` block. Without it, the node's agent keeps them
    /// running (fail static) and the controller runs them elsewhere after the policy's
    /// `nodeGracePeriodSeconds`: for a while two copies may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Disconnect>,
}

/// How a workload's replicas on a disconnected node behave. With `stopAfterSeconds` and
/// `replace`, at most one copy of each replica runs: the agent stops it after
/// `stopAfterSeconds` without a confirmed ZooKeeper session, and the controller starts it
/// elsewhere only once that time, the grace period and a margin have passed since it saw
/// the node go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disconnect {
    /// Seconds without a confirmed ZooKeeper session after which the node's agent stops
    /// the replicas (SIGTERM, then SIGKILL after the grace period), 1 to 86400. Absent: it
    /// keeps them running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub stop_after_seconds: Option<i32>,
    /// Whether the controller runs the replicas on another node once their node is lost.
    /// `false`: they wait for their node, however long it is gone. Default `true`.
    #[serde(default = "default_replace")]
    pub replace: bool,
}

fn default_replace() -> bool {
    true
}

/// Seconds the controller adds, past `disconnect.stopAfterSeconds` and the grace period,
/// before it replaces a replica of a lost node: for the agent's pass and the clocks' rates.
pub const DISCONNECT_MARGIN_SECONDS: u64 = 5;

/// The annotation whose change replaces every replica, as `kubectl rollout restart` does a
/// Deployment's pods: `kubectl annotate --overwrite workload/NAME corral.dev/restartedAt="$(date -Is)"`.
pub const RESTARTED_AT_ANNOTATION: &str = "corral.dev/restartedAt";

/// How replicas are replaced when what they run changes: like a Deployment's
/// `RollingUpdate`, and Nomad's `update` block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// How many replicas may be unavailable at once during a rollout, 1 to 1000; default 1.
    /// Replicas that are not available anyway (pending, exited, not yet ready) count, and
    /// are replaced first.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,

    /// Seconds a replaced replica must run, and pass its health check when it has one,
    /// before it counts as available and the rollout goes on; 0 to 3600, default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            max_unavailable: default_max_unavailable(),
            min_ready_seconds: 0,
        }
    }
}

fn default_max_unavailable() -> i32 {
    1
}

fn default_replicas() -> i32 {
    1
}

fn default_grace() -> i32 {
    10
}

/// Where replicas may run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a node must carry (all of them, with these values) to run a replica of this
    /// workload: a plain map, as a Pod's `nodeSelector`. (A ResourcePolicy's
    /// `nodeSelector` is a label selector, with `matchLabels` and `matchExpressions`.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// `Spread` puts each replica on the node with the fewest replicas of this workload;
    /// `Pack` puts it on the fullest node that still fits (best fit). Default `Spread`.
    #[serde(default)]
    pub mode: PlacementMode,
}

/// How replicas are distributed over the nodes that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlacementMode {
    /// Fewest replicas of the workload per node first.
    #[default]
    Spread,
    /// Best fit: the node with the least room left that still fits.
    Pack,
}

/// A command that corral starts in the replica's cgroup. It joins the cgroup before it
/// executes, so no part of it ever runs outside.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("size(self.args) == 0 || size(self.args[0]) > 0").message("args[0], the program, must not be empty").field_path(".args"),
)]
pub struct Command {
    /// The program and its arguments; the first is looked up in PATH when it has no `/`.
    /// Not run through a shell: use `["/bin/sh", "-c", "..."]` for one.
    #[schemars(
        length(min = 1, max = 1024),
        inner(regex(pattern = crate::api::names::NO_NUL_PATTERN))
    )]
    pub args: Vec<String>,

    /// Environment variables, added to a minimal environment (PATH, HOME, CORRAL_WORKLOAD,
    /// CORRAL_REPLICA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,

    /// Absolute directory to start in; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::names::ABSOLUTE_PATH_PATTERN), length(max = 4096))]
    pub working_dir: Option<String>,

    /// What to do when the process exits: `Always` restart it, restart it only `OnFailure`
    /// (non-zero exit or a signal), or `Never`. Restarts back off exponentially from 1 s to
    /// 5 min. Default `Always`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,

    /// The user and groups the command runs as. Omitted values are the defaults the
    /// governing ResourcePolicy sets for the namespace (`nobody`, 65534, unless it says
    /// otherwise), and every value must be one the policy allows the namespace. Root (0)
    /// only where the policy allows root explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// A check the node's agent runs against each replica: while it fails the replica is
    /// not ready, and a rollout waits. A change of the check alone is applied in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// How the agent decides that a replica is healthy: a command that exits 0, or a TCP port
/// on the node's loopback address that accepts a connection. A replica is healthy from its
/// first passing check until `failureThreshold` checks in a row fail. A failing replica is
/// reported not ready, never restarted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.exec) != has(self.tcp)").message("exactly one of exec or tcp must be set"),
)]
pub struct HealthCheck {
    /// Run a command, as the replica's user and in the replica's cgroup (so it counts
    /// against the replica's limits); exit status 0 is healthy. Its output is discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    /// Connect to a TCP port on 127.0.0.1; an accepted connection is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Seconds between checks, 1 to 3600; default 10.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Seconds a check may take before it counts as failed (a command is then killed), 1
    /// to 60; default 1.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
    /// Failed checks in a row that make a healthy replica unhealthy, 1 to 100; default 3.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

fn default_period() -> i32 {
    10
}

fn default_timeout() -> i32 {
    1
}

fn default_failure_threshold() -> i32 {
    3
}

/// A health check that runs a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("size(self.command[0]) > 0").message("command[0], the program, must not be empty").field_path(".command"),
)]
pub struct ExecCheck {
    /// The program and its arguments, not run through a shell; the first is looked up in
    /// PATH when it has no `/`.
    #[schemars(
        length(min = 1, max = 1024),
        inner(regex(pattern = crate::api::names::NO_NUL_PATTERN))
    )]
    pub command: Vec<String>,
}

/// A health check that connects to a TCP port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpCheck {
    /// The port on 127.0.0.1, 1 to 65535. No other address can be checked: a tenant must
    /// not make the agent reach into networks it cannot reach itself.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Which user and groups a command runs as. Whatever they are, the command starts with
/// `no_new_privs`, no capabilities (the bounding set is empty too) and corral's seccomp
/// filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    /// The numeric user ID, 0 to 2147483647.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub run_as_user: Option<i64>,
    /// The numeric primary group ID, 0 to 2147483647.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub run_as_group: Option<i64>,
    /// Supplementary group IDs, at most 32; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 0, max = 2_147_483_647)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub supplemental_groups: Vec<i64>,
}

/// One environment variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// The variable's name: letters, digits and `_`, not starting with a digit.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// The variable's value.
    #[serde(default)]
    #[schemars(regex(pattern = crate::api::names::NO_NUL_PATTERN))]
    pub value: String,
}

/// When a command is restarted after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Whether a command that exited is started again: `failed` says how its last run
    /// ended, `None` when unknown (an earlier corral started it, and only it could read
    /// the status), which counts as a failure.
    pub fn restarts(self, failed: Option<bool>) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed != Some(false),
            RestartPolicy::Never => false,
        }
    }
}

/// Existing processes to take into the replica's cgroup. Exactly one way of matching is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.cgroupPath), has(self.pidFile), has(self.commandPattern)].filter(x, x).size() == 1").message("exactly one of cgroupPath, pidFile or commandPattern must be set"),
)]
pub struct AdoptRule {
    /// Absolute path of an existing cgroup, relative to each controller's mount (as in
    /// /proc/PID/cgroup, e.g. `/system.slice/nginx.service`); its processes are moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::names::ABSOLUTE_PATH_PATTERN), length(max = 4096))]
    pub cgroup_path: Option<String>,

    /// Absolute path of a file holding the process ID to adopt, as daemons write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::names::ABSOLUTE_PATH_PATTERN), length(max = 4096))]
    pub pid_file: Option<String>,

    /// A regular expression matched against each process's full command line (arguments
    /// joined by spaces); every matching process is adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub command_pattern: Option<String>,

    /// What deleting the workload (or moving the replica away) does to the adopted
    /// processes: `Release` moves them back to the groups they came from and leaves them
    /// running; `Stop` stops them (SIGTERM, then SIGKILL after the grace period). Default
    /// `Release`.
    #[serde(default)]
    pub on_delete: AdoptOnDelete,
}

/// What happens to adopted processes when their replica goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AdoptOnDelete {
    /// Move them back to the groups they were adopted from, and leave them running.
    #[default]
    Release,
    /// Stop them: SIGTERM, then SIGKILL after the grace period.
    Stop,
}

/// A reference to a cluster-scoped ResourcePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReference {
    /// The ResourcePolicy's name.
    #[schemars(regex(pattern = crate::api::names::DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub name: String,
}

/// What corral did with the workload and what it observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A one-word summary: `Pending` (nothing allocated yet), `Allocated` (leases written, not
    /// yet enforced everywhere), `Running` (every replica enforced and running), `Degraded`
    /// (some replicas pending or failing), `Terminating` (being deleted).
    #[serde(default)]
    pub phase: WorkloadPhase,

    /// Replicas that have a node (a lease): the scale subresource's `status.replicas`, which
    /// `kubectl scale` and the HorizontalPodAutoscaler read. Before v1alpha1's scale
    /// subresource this field held the per-replica list, now `replicaStatuses`; a status
    /// written then still reads (as 0, until corral writes it again).
    #[serde(default, deserialize_with = "count_or_old_list")]
    pub replicas: i32,

    /// Replicas that are allocated, enforced and running.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Replicas that run the current spec (its revision): during a rollout, fewer than
    /// `replicas`.
    #[serde(default)]
    pub updated_replicas: i32,

    /// The revision of what the replicas should run: a hash of the command, its
    /// environment, working directory and user, and the `corral.dev/restartedAt`
    /// annotation. Absent for adopted processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// The label selector the scale subresource reports (`corral.dev/workload=<name>`):
    /// the HorizontalPodAutoscaler needs one, though a Workload has no pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// What corral requests for each replica, the policy's defaults included: the CPU and
    /// MEMORY columns of `kubectl get workloads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Granted>,

    /// One entry per replica: where it runs, what it was granted, what was written to its
    /// cgroup and what it uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["index".into()]))]
    pub replica_statuses: Vec<ReplicaStatus>,

    /// `Allocated`, `Enforced`, `Ready`, `Reconciling` and `Stalled`, each with a reason
    /// and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// `status.replicas`: a count, or (written before the scale subresource) the per-replica
/// list, which reads as 0 so that such an object is not unreadable.
fn count_or_old_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum CountOrList {
        Count(i32),
        List(Vec<serde::de::IgnoredAny>),
    }
    Ok(match CountOrList::deserialize(d)? {
        CountOrList::Count(n) => n,
        // What the old list held is written again by corral's next status.
        CountOrList::List(old) => {
            drop(old);
            0
        }
    })
}

/// A one-word summary of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadPhase {
    /// Nothing allocated yet.
    #[default]
    Pending,
    /// Leases written; not yet enforced on every node.
    Allocated,
    /// Every replica enforced and running.
    Running,
    /// Some replicas pending, failing or not enforced.
    Degraded,
    /// Being deleted: processes stopping, groups being removed.
    Terminating,
}

/// The state of one replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The replica's index, 0-based.
    pub index: i32,
    /// The node the replica is allocated to; absent while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What the allocator granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<Granted>,
    /// The controller's leadership epoch that wrote the lease; a higher epoch replaces a
    /// lower one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<i64>,
    /// Why the replica is pending, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// The revision of what its process runs, as its agent reports it; during a rollout an
    /// older one than `status.revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The cgroup values the node's agent wrote and read back, by file name
    /// (`cpu.shares`, `memory.limit_in_bytes`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, String>,
    /// What the replica uses, as the agent last observed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Resources granted to one replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Granted {
    /// CPU granted (a quantity, e.g. `500m`).
    pub cpu: Quantity,
    /// Memory granted (a quantity, e.g. `256Mi`).
    pub memory: Quantity,
    /// Processes granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

/// Observed use of one replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU in use, averaged over the last observation interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory in use now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// The highest memory use seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<Quantity>,
    /// Total time the group was throttled by its CPU quota, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_seconds: Option<f64>,
    /// Processes killed by the kernel for exceeding the memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<i64>,
    /// Processes and threads in the group now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// Pressure stall information of the group (cgroup v2 only): how much of the recent
    /// time its tasks waited for CPU, memory or IO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<ResourcePressure>,
    /// How often the group met its memory bounds, from `memory.events` (cgroup v2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_events: Option<MemoryEventCounts>,
}

/// Pressure stall information per resource; a resource the node does not report is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePressure {
    /// From `cpu.pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<PressureStatus>,
    /// From `memory.pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<PressureStatus>,
    /// From `io.pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<PressureStatus>,
}

/// One resource's pressure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PressureStatus {
    /// Time at least one task waited.
    pub some: StallStatus,
    /// Time all tasks waited at once; absent where the kernel does not keep it (CPU before
    /// Linux 5.13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<StallStatus>,
}

/// Stalled time of one kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StallStatus {
    /// Percentage of the last 10 seconds stalled.
    pub avg10: f64,
    /// Percentage of the last 60 seconds stalled.
    pub avg60: f64,
    /// Seconds stalled since the group was created.
    pub total_seconds: f64,
}

/// `memory.events` counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEventCounts {
    /// Times the group went over `memory.high` and was throttled.
    pub high: i64,
    /// Times the group's use was about to go over `memory.max`.
    pub max: i64,
    /// Processes of the group the OOM killer killed.
    pub oom_kill: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_written_before_the_scale_subresource_still_reads() {
        let old = serde_json::json!({
            "observedGeneration": 3,
            "phase": "Running",
            "readyReplicas": 2,
            "replicas": [{"index": 0, "node": "n1"}, {"index": 1, "node": "n2"}],
        });
        let status: WorkloadStatus = serde_json::from_value(old).unwrap();
        assert_eq!(status.replicas, 0, "the old list is not a count");
        assert_eq!(status.ready_replicas, 2);
        assert!(status.replica_statuses.is_empty());
        let new: WorkloadStatus = serde_json::from_value(
            serde_json::json!({"replicas": 2, "replicaStatuses": [{"index": 0}]}),
        )
        .unwrap();
        assert_eq!((new.replicas, new.replica_statuses.len()), (2, 1));
        // Anything else is still an error, not a silent 0.
        assert!(
            serde_json::from_value::<WorkloadStatus>(serde_json::json!({"replicas": "two"}))
                .is_err()
        );
    }
}
