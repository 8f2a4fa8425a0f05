//! Leases and reports: what the controller grants each replica on a node, and what the
//! node's agent applied and observed. Versioned JSON, kept in a [`LeaseStore`]: the
//! embedded one under a state directory ([`embedded`]) or ZooKeeper.
//!
//! Layout (the embedded store mirrors it):
//! ```text
//! /nodes/<node>           agent registration
//! /leases/<node>/<key>    allocation of one replica on one node
//! /reports/<node>/<key>   the agent's applied values and observed use
//! ```

pub mod acl;
pub mod election;
pub mod embedded;
pub mod identities;
pub mod memory;
pub mod stored;
pub mod zookeeper;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::admit::{self, AdoptScope, RunAs, TenantRules};
use crate::alloc::plan::{Allocation, Limits};
use crate::alloc::{ReplicaKey, Res};
use crate::api::Workload;
use crate::api::identity::namespace_of;
use crate::api::policy::{CgroupSettings, ResourcePolicySpec};
use crate::cgroup::layout::Mode;
use crate::cgroup::observe::MemoryEvents;
use crate::cgroup::pressure::Pressures;
use crate::cgroup::tree::Work;
pub use crate::cgroup::tree::{HealthProbe, LogLimits, ProbeCheck};

/// The version of the JSON written; a reader refuses a newer one.
pub const FORMAT_VERSION: u32 = 1;

/// One replica's allocation on one node.
///
/// Stored as a [`stored::LeaseV1`], never as it is: see [`stored`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "stored::LeaseV1", from = "stored::LeaseV1")]
pub struct Lease {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The replica.
    pub key: ReplicaKey,
    /// The node.
    pub node: String,
    /// The leadership epoch of the controller that wrote it.
    pub epoch: i64,
    /// The governing policy.
    pub policy: String,
    /// The workload's priority.
    pub priority: i32,
    /// Guaranteed: CPU millicores, memory bytes, pids.
    pub granted: Res,
    /// Requested.
    pub request: Res,
    /// Limits; `null` for none.
    pub limits: Limits,
    /// Block IO weight.
    pub io_weight: Option<i32>,
    /// How the policy turns grants into cgroup values.
    pub cgroup: CgroupSettings,
    /// The tenant's limit under the policy, written to its parent group.
    pub tenant_limit: Option<Res>,
    /// What runs.
    pub work: Work,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_seconds: u32,
    /// The workload's `metadata.generation`, when it has one.
    pub generation: Option<i64>,
    /// For an adopt rule, which processes it may take, as the policy allows the tenant;
    /// without it, nothing is adopted.
    pub adopt_scope: Option<AdoptScope>,
    /// How the replica's output is rotated.
    pub logs: LogLimits,
    /// The revision of `work`: a new one replaces the running process (see
    /// [`revision`]). Empty for adopted processes, and in leases written before rollouts,
    /// which never replace anything.
    pub revision: String,
    /// The health check that decides when the replica is ready.
    pub health: Option<HealthProbe>,
    /// Seconds the replica must run (and be healthy) before it counts as ready.
    pub min_ready_seconds: u32,
    /// Seconds without a confirmed ZooKeeper session after which the agent stops the
    /// replica (`disconnect.stopAfterSeconds`); absent: it keeps it running.
    pub stop_after_disconnect_seconds: Option<u32>,
}

/// The revision of what a command replica runs: a short hash of its arguments,
/// environment, working directory and user, and of `restarted_at` (the
/// `corral.dev/restartedAt` annotation). Its restart policy, resources and health check are
/// not part of it: a change of those replaces nothing. Empty for adopted processes.
pub fn revision(work: &Work, restarted_at: Option<&str>) -> String {
    let Work::Command {
        args,
        env,
        working_dir,
        run_as,
        ..
    } = work
    else {
        return String::new();
    };
    // The user as stored (`stored::RunAsV1`), not as the allocator spells it: a rename
    // there must not change every revision, which would replace every replica.
    let identity = serde_json::json!({
        "args": args, "env": env, "workingDir": working_dir,
        "runAs": stored::RunAsV1::from(run_as),
        "restartedAt": restarted_at,
    });
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, identity.to_string().as_bytes());
    digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Lease {
    /// The lease for an allocation of `workload` under `policy` (named in the allocation):
    /// the policy's cgroup settings, its tenant's limit, the user the command runs as and
    /// what it may adopt, its log rotation, and the grace period capped by the policy.
    pub fn new(
        allocation: &Allocation,
        workload: &Workload,
        policy: &ResourcePolicySpec,
        epoch: i64,
    ) -> Lease {
        let spec = &workload.spec;
        let namespace = namespace_of(workload);
        let rules = TenantRules::of(&allocation.policy, policy, namespace);
        let work = match (&spec.command, &spec.adopt) {
            (_, Some(adopt)) => Work::Adopt(adopt.clone()),
            (Some(command), None) => Work::Command {
                args: command.args.clone(),
                env: command
                    .env
                    .iter()
                    .map(|e| (e.name.clone(), e.value.clone()))
                    .collect(),
                working_dir: command.working_dir.clone(),
                restart: command.restart_policy,
                // The allocator places nothing the policy refuses; should a refused user
                // reach here anyway, the command runs as nobody.
                run_as: admit::run_as(workload, &rules).unwrap_or_default(),
            },
            // Validation requires one of them; a lease for neither runs nothing.
            (None, None) => Work::Command {
                args: Vec::new(),
                env: Vec::new(),
                working_dir: None,
                restart: crate::api::workload::RestartPolicy::Never,
                run_as: RunAs::default(),
            },
        };
        let tenant_limit = policy
            .tenants
            .iter()
            .find(|t| t.namespace == allocation.tenant)
            .and_then(|t| t.limit.as_ref())
            .map(|l| crate::alloc::input::amounts_or(Some(l), i64::MAX));
        let grace = spec
            .termination_grace_period_seconds
            .min(policy.max_termination_grace_period_seconds);
        let restarted_at = workload
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::api::workload::RESTARTED_AT_ANNOTATION))
            .map(String::as_str);
        let revision = revision(&work, restarted_at);
        let health = spec
            .command
            .as_ref()
            .and_then(|c| c.health_check.as_ref())
            .and_then(HealthProbe::of);
        Lease {
            version: FORMAT_VERSION,
            key: ReplicaKey::new(
                namespace,
                workload.metadata.name.as_deref().unwrap_or_default(),
                allocation.replica,
            ),
            node: allocation.node.clone(),
            epoch,
            policy: allocation.policy.clone(),
            priority: allocation.priority,
            granted: allocation.granted,
            request: allocation.request,
            limits: allocation.limits,
            io_weight: allocation.io_weight,
            cgroup: policy.cgroup.clone(),
            tenant_limit,
            adopt_scope: spec.adopt.as_ref().map(|_| rules.adopt_scope()),
            work,
            grace_seconds: u32::try_from(grace).unwrap_or(10),
            generation: workload.metadata.generation,
            logs: LogLimits::of(&policy.logs),
            revision,
            health,
            min_ready_seconds: u32::try_from(spec.update.min_ready_seconds).unwrap_or(0),
            stop_after_disconnect_seconds: spec
                .disconnect
                .as_ref()
                .and_then(|d| d.stop_after_seconds)
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s > 0),
        }
    }

    /// The lease of another replica of the same workload, under the same policy and
    /// tenant, placed by `allocation`: this one with the allocation's part replaced. What
    /// [`Lease::new`] gives, without computing the workload's part (its command, revision
    /// and settings) once per replica.
    pub fn for_replica(&self, allocation: &Allocation, epoch: i64) -> Lease {
        Lease {
            key: ReplicaKey {
                index: allocation.replica,
                ..self.key.clone()
            },
            node: allocation.node.clone(),
            epoch,
            policy: allocation.policy.clone(),
            priority: allocation.priority,
            granted: allocation.granted,
            request: allocation.request,
            limits: allocation.limits,
            io_weight: allocation.io_weight,
            ..self.clone()
        }
    }

    /// True when `other` asks the node for the same thing (the epoch aside). Every field
    /// is named, so that a new one cannot be forgotten here.
    pub fn same_grant(&self, other: &Lease) -> bool {
        let Lease {
            version,
            key,
            node,
            epoch: _,
            policy,
            priority,
            granted,
            request,
            limits,
            io_weight,
            cgroup,
            tenant_limit,
            work,
            grace_seconds,
            generation,
            adopt_scope,
            logs,
            revision,
            health,
            min_ready_seconds,
            stop_after_disconnect_seconds,
        } = self;
        *version == other.version
            && *key == other.key
            && *node == other.node
            && *policy == other.policy
            && *priority == other.priority
            && *granted == other.granted
            && *request == other.request
            && *limits == other.limits
            && *io_weight == other.io_weight
            && *tenant_limit == other.tenant_limit
            && *grace_seconds == other.grace_seconds
            && *generation == other.generation
            && *logs == other.logs
            && *revision == other.revision
            && *min_ready_seconds == other.min_ready_seconds
            && *stop_after_disconnect_seconds == other.stop_after_disconnect_seconds
            && *cgroup == other.cgroup
            && *adopt_scope == other.adopt_scope
            && *health == other.health
            && *work == other.work
    }
}

/// What an agent applied to one replica and what it observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The replica.
    pub key: Option<ReplicaKey>,
    /// The node.
    pub node: String,
    /// The epoch of the lease applied.
    pub lease_epoch: i64,
    /// Knob file → value read back after writing.
    pub applied: BTreeMap<String, String>,
    /// Observed use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageSample>,
    /// The replica's processes.
    pub process: ProcessReport,
    /// What went wrong or is missing, for a person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Values of this replica's group that the agent restored after something else changed
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftNote>,
    /// Unix seconds of the last change to this report.
    pub changed_at: u64,
}

/// Drift an agent corrected in one replica's group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftNote {
    /// Values restored since the agent started.
    pub corrections: u64,
    /// The last one, for a person: `cpu.shares was 2, now 1024`.
    pub last: String,
}

/// One observation of a replica's use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSample {
    /// CPU in millicores, averaged since the previous observation.
    pub cpu: i64,
    /// Memory in use, bytes.
    pub memory: i64,
    /// Highest memory use seen, bytes.
    pub memory_peak: i64,
    /// Total time throttled by the CPU quota, seconds.
    pub throttled_seconds: f64,
    /// Processes the kernel killed for exceeding the memory limit.
    pub oom_kills: i64,
    /// Processes and threads now.
    pub pids: i64,
    /// Pressure stall information, cgroup v2 only: absent on v1 and where the kernel keeps
    /// none (so a report from before it existed reads the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<Pressures>,
    /// `memory.events` counters, cgroup v2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_events: Option<MemoryEvents>,
}

/// The state of a replica's processes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessReport {
    /// What the replica's processes are doing.
    pub state: ProcessState,
    /// The main process, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Processes in the group.
    pub pids: usize,
    /// Times the command was restarted.
    pub restarts: u32,
    /// How the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The revision of the lease the running command was started from; absent for
    /// adopted processes and from agents before rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// True when the replica runs, has run for the lease's `minReadySeconds` and passes
    /// its health check; absent from agents before rollouts (whose `Running` and `Adopted`
    /// count as ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// What a replica's processes are doing, as its report says it. The wire text is the
/// variant's name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcessState {
    /// Its command runs.
    Running,
    /// Its command is about to start.
    Starting,
    /// Its command exited and waits out its backoff before it starts again.
    BackingOff,
    /// Its command exited and is not started again (its restart policy).
    Exited,
    /// Its adopt rule's processes are in its group.
    Adopted,
    /// Its adopt rule matched nothing yet.
    Waiting,
    /// A limit of its group or its tenant's is not in place: its command is not started,
    /// and the report's `problems` say why.
    Unenforced,
    /// The agent refused the lease (no leader it trusts wrote it): nothing of it is
    /// enforced, and the report's `problems` say why.
    Refused,
    /// Nothing runs: the lease asks for no work.
    #[default]
    None,
    /// A state this corral does not know, from a newer agent.
    #[serde(other)]
    Unknown,
}

impl ProcessState {
    /// True for the states that count as ready when an agent from before readiness
    /// reports no `ready`.
    pub fn ready_without_check(self) -> bool {
        matches!(self, ProcessState::Running | ProcessState::Adopted)
    }

    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Running => "Running",
            ProcessState::Starting => "Starting",
            ProcessState::BackingOff => "BackingOff",
            ProcessState::Exited => "Exited",
            ProcessState::Adopted => "Adopted",
            ProcessState::Waiting => "Waiting",
            ProcessState::Unenforced => "Unenforced",
            ProcessState::Refused => "Refused",
            ProcessState::None => "None",
            ProcessState::Unknown => "Unknown",
        }
    }
}

/// Compares with the wire text, as the tests and people write states.
impl PartialEq<&str> for ProcessState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRegistration {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it has.
    pub capacity: Res,
    /// How its cgroups are mounted.
    pub cgroup_mode: CgroupMode,
    /// corral's version on the node.
    pub agent_version: String,
}

impl NodeRegistration {
    /// The registration of `name`, by this build of corral.
    pub fn new(
        name: &str,
        labels: BTreeMap<String, String>,
        capacity: Res,
        cgroup_mode: impl Into<CgroupMode>,
    ) -> NodeRegistration {
        NodeRegistration {
            version: FORMAT_VERSION,
            name: name.to_string(),
            labels,
            capacity,
            cgroup_mode: cgroup_mode.into(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// How a node's cgroups are mounted, as its registration says: the wire text is `v1`,
/// `hybrid` or `v2` ([`Mode`]'s). A text this corral does not know, from a newer agent,
/// reads as [`CgroupMode::Other`] and is written back unchanged: a controller never refuses
/// a node's whole registration over it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum CgroupMode {
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers, and a cgroup2 mount without them.
    Hybrid,
    /// One unified v2 hierarchy.
    V2,
    /// A mode this corral does not know, with its text.
    Other(String),
}

impl CgroupMode {
    /// The mode whose wire text is `text`; [`CgroupMode::Other`] for a text this corral does
    /// not know.
    pub fn of(text: &str) -> CgroupMode {
        match text {
            "v1" => CgroupMode::V1,
            "hybrid" => CgroupMode::Hybrid,
            "v2" => CgroupMode::V2,
            other => CgroupMode::Other(other.to_string()),
        }
    }

    /// The wire text.
    pub fn as_str(&self) -> &str {
        match self {
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::V2 => "v2",
            CgroupMode::Other(text) => text,
        }
    }

    /// The mode as this corral's cgroup layer knows it; `None` for [`CgroupMode::Other`].
    pub fn known(&self) -> Option<Mode> {
        match self {
            CgroupMode::V1 => Some(Mode::V1),
            CgroupMode::Hybrid => Some(Mode::Hybrid),
            CgroupMode::V2 => Some(Mode::V2),
            CgroupMode::Other(_) => None,
        }
    }
}

impl From<Mode> for CgroupMode {
    fn from(mode: Mode) -> CgroupMode {
        match mode {
            Mode::V1 => CgroupMode::V1,
            Mode::Hybrid => CgroupMode::Hybrid,
            Mode::V2 => CgroupMode::V2,
        }
    }
}

/// Reads the wire text, as [`CgroupMode::of`] does.
impl From<&str> for CgroupMode {
    fn from(text: &str) -> CgroupMode {
        CgroupMode::of(text)
    }
}

/// Reads the wire text, as [`CgroupMode::of`] does.
impl From<String> for CgroupMode {
    fn from(text: String) -> CgroupMode {
        match CgroupMode::of(&text) {
            CgroupMode::Other(_) => CgroupMode::Other(text),
            known => known,
        }
    }
}

/// The wire text.
impl From<CgroupMode> for String {
    fn from(mode: CgroupMode) -> String {
        match mode {
            CgroupMode::Other(text) => text,
            known => known.as_str().to_string(),
        }
    }
}

/// Compares with the wire text, as the tests and people write modes.
impl PartialEq<&str> for CgroupMode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to the leases of one node.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseChange {
    /// Create or replace.
    Put(Box<Lease>),
    /// Remove the lease of this replica on this node.
    Delete {
        /// The node.
        node: String,
        /// The replica.
        key: ReplicaKey,
    },
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's files could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The store holds something this corral cannot read.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A write of a deposed controller, refused.
    #[error("fenced: this controller's epoch {ours} is not the leader's")]
    Fenced {
        /// The writer's epoch.
        ours: i64,
    },
    /// ZooKeeper refused or failed an operation.
    #[error("{op} {path}: {source}")]
    Zk {
        /// What was attempted.
        op: &'static str,
        /// The znode.
        path: String,
        /// ZooKeeper's error.
        source: zookeeper_client::Error,
    },
    /// ZooKeeper did not answer in time.
    #[error("{op} {path}: no answer from ZooKeeper in time")]
    Timeout {
        /// What was attempted.
        op: &'static str,
        /// The znode.
        path: String,
    },
    /// The store cannot be used now.
    #[error("{0}")]
    Unavailable(String),
    /// Digest credentials without TLS, not allowed explicitly: they would cross the network
    /// in clear text.
    #[error(
        "ZooKeeper digest credentials without TLS would cross the network in clear text: \
         connect to a secureClientPort with --zookeeper-tls-ca (and a client certificate if \
         you like), or accept the risk with --zookeeper-insecure (loopback, tests)"
    )]
    Insecure,
    /// A znode's ACL is not the one corral sets there, and this identity may not set it.
    #[error(
        "{path}: its ACL is [{found}], not [{wanted}] as corral sets it, and this identity \
         may not change it: someone else (or an older corral with another identity) created \
         it; remove it with ZooKeeper's super user, or use another --zookeeper-chroot"
    )]
    Acl {
        /// The znode.
        path: String,
        /// Its ACL, digest hashes elided.
        found: String,
        /// The ACL corral wants there.
        wanted: String,
    },
    /// This agent's node has no znodes of its own yet: a controller provisions them.
    #[error("node {node} is not provisioned yet: {detail}")]
    NotProvisioned {
        /// The node.
        node: String,
        /// What the agent did about it, or what is missing.
        detail: String,
    },
}

/// Where leases, reports and registrations are kept.
#[allow(async_fn_in_trait)]
pub trait LeaseStore {
    /// Registers (or refreshes) a node.
    async fn register_node(&self, node: &NodeRegistration) -> Result<(), StoreError>;
    /// Every registered node.
    async fn nodes(&self) -> Result<Vec<NodeRegistration>, StoreError>;
    /// Every lease, of every node.
    async fn leases(&self) -> Result<Vec<Lease>, StoreError>;
    /// The leases of one node.
    async fn node_leases(&self, node: &str) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .leases()
            .await?
            .into_iter()
            .filter(|l| l.node == node)
            .collect())
    }
    /// Applies lease changes as one batch, refused unless `epoch` is the writer's current
    /// leadership.
    async fn write_leases(&self, epoch: i64, changes: &[LeaseChange]) -> Result<(), StoreError>;
    /// Every report, of every node.
    async fn reports(&self) -> Result<Vec<Report>, StoreError>;
    /// Replaces the reports of one node.
    async fn write_reports(&self, node: &str, reports: &[Report]) -> Result<(), StoreError>;
}

/// Decodes what a store holds at `path` (a znode or a file): JSON whose `version` field, 0
/// when absent, is at most [`FORMAT_VERSION`]. The one decoder of both stores.
///
/// # Errors
/// Not JSON, written by a newer corral, or not a `T`: [`StoreError::Corrupt`], naming
/// `path`.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    data: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| corrupt(e.to_string()))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if version > u64::from(FORMAT_VERSION) {
        return Err(corrupt(format!(
            "written by a newer corral (format {version}, this one reads {FORMAT_VERSION})"
        )));
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::pressure::{Pressure, Stall};
    use serde_json::json;

    /// Leases and a registration as this version stores them, pinned in
    /// `src/lease/testdata/stored-v1.json`. A lease is stored through its own types
    /// ([`stored`]), never as the types of other layers it is built from: a change there
    /// cannot reach ZooKeeper unnoticed, and this pins the text of what they write. What
    /// an agent of this version wrote must still read. To change the format on purpose,
    /// raise `FORMAT_VERSION`, keep this file as the older version's, add the new one
    /// (`CORRAL_UPDATE_GOLDEN=1` writes it) and new types beside `stored::LeaseV1`.
    #[test]
    fn the_stored_format_is_pinned_and_still_reads() {
        use crate::alloc::admit::{AdoptScope, RunAs};
        use crate::alloc::fixtures::mk_lease;
        use crate::api::workload::{AdoptOnDelete, AdoptRule, RestartPolicy};

        let mut command = mk_lease("n1", "web", 2, 7);
        command.work = Work::Command {
            args: vec!["sh".into(), "-c".into(), "exec serve".into()],
            env: vec![("PORT".into(), "8080".into())],
            working_dir: Some("/srv".into()),
            restart: RestartPolicy::OnFailure,
            run_as: RunAs {
                uid: 1000,
                gid: 1000,
                groups: vec![5],
            },
        };
        command.limits = Limits {
            cpu: Some(500),
            memory: Some(64 << 20),
            pids: None,
        };
        command.io_weight = Some(200);
        command.tenant_limit = Some(Res::new(2000, 1 << 30, 1000));
        command.generation = Some(3);
        command.revision = revision(&command.work, Some("2026-11-30T00:00:00Z"));
        command.health = Some(HealthProbe {
            check: ProbeCheck::Exec(vec!["true".into()]),
            period_seconds: 5,
            timeout_seconds: 1,
            failure_threshold: 3,
        });
        command.min_ready_seconds = 2;
        command.stop_after_disconnect_seconds = Some(30);
        let mut adopt = mk_lease("n2", "legacy", 0, 7);
        adopt.work = Work::Adopt(AdoptRule {
            command_pattern: Some("^nginx: master".into()),
            on_delete: AdoptOnDelete::Release,
            ..AdoptRule::default()
        });
        adopt.adopt_scope = Some(AdoptScope {
            users: Vec::new(),
            allow_root: false,
            cgroup_prefixes: vec!["/system.slice".into()],
        });
        adopt.revision = String::new();
        let registration = NodeRegistration::new(
            "n1",
            BTreeMap::from([("zone".to_string(), "a".to_string())]),
            Res::new(4000, 8 << 30, 4_194_304),
            "v2",
        );
        let built = json!({
            "leases": [&command, &adopt],
            "registration": {"version": registration.version, "name": &registration.name,
                "labels": &registration.labels, "capacity": registration.capacity,
                "cgroupMode": &registration.cgroup_mode, "agentVersion": "0.1.0"},
        });

        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/lease/testdata/stored-v1.json");
        if std::env::var_os("CORRAL_UPDATE_GOLDEN").is_some() {
            let text = serde_json::to_string_pretty(&built).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let pinned: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            built, pinned,
            "the stored format changed: see this test's documentation"
        );
        for (want, stored) in [&command, &adopt]
            .into_iter()
            .zip(pinned["leases"].as_array().unwrap())
        {
            let read: Lease = decode_versioned(&path, stored.to_string().as_bytes()).unwrap();
            assert_eq!(&read, want);
        }
        let read: NodeRegistration =
            decode_versioned(&path, pinned["registration"].to_string().as_bytes()).unwrap();
        assert_eq!(read.name, "n1");
        assert_eq!(read.cgroup_mode, CgroupMode::V2);
    }

    #[test]
    fn cgroup_modes_keep_their_wire_text_and_an_unknown_one_still_reads() {
        for (mode, text) in [
            (CgroupMode::V1, "v1"),
            (CgroupMode::Hybrid, "hybrid"),
            (CgroupMode::V2, "v2"),
        ] {
            assert_eq!(serde_json::to_value(&mode).unwrap(), json!(text));
            assert_eq!(
                serde_json::from_value::<CgroupMode>(json!(text)).unwrap(),
                mode
            );
            assert_eq!(CgroupMode::of(text), mode);
            let known = mode.known().unwrap();
            assert_eq!(
                known.to_string(),
                text,
                "the cgroup layer's text is the same"
            );
            assert_eq!(CgroupMode::from(known), mode);
        }
        assert_eq!(CgroupMode::from(Mode::Hybrid), CgroupMode::Hybrid);

        // A registration by a newer agent, with a mode this corral does not know, reads,
        // and is written back as it came.
        let registration = NodeRegistration::new("n1", BTreeMap::new(), Res::default(), "v3");
        let mut value = serde_json::to_value(&registration).unwrap();
        assert_eq!(value["cgroupMode"], json!("v3"));
        value["cgroupMode"] = json!("unified-with-v4-extras");
        let read: NodeRegistration = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            read.cgroup_mode,
            CgroupMode::Other("unified-with-v4-extras".into())
        );
        assert_eq!(read.cgroup_mode.known(), None);
        assert_eq!(read.cgroup_mode.to_string(), "unified-with-v4-extras");
        assert_eq!(serde_json::to_value(&read).unwrap(), value);
        // Not a string at all is still an error: that is a corrupt registration.
        value["cgroupMode"] = json!(2);
        assert!(serde_json::from_value::<NodeRegistration>(value).is_err());
    }

    #[test]
    fn process_states_keep_their_wire_text_and_an_unknown_one_still_reads() {
        for state in [
            ProcessState::Running,
            ProcessState::Starting,
            ProcessState::BackingOff,
            ProcessState::Exited,
            ProcessState::Adopted,
            ProcessState::Waiting,
            ProcessState::Unenforced,
            ProcessState::Refused,
            ProcessState::None,
        ] {
            let text = serde_json::to_value(state).unwrap();
            assert_eq!(text, json!(state.as_str()));
            assert_eq!(serde_json::from_value::<ProcessState>(text).unwrap(), state);
        }
        let newer: ProcessState = serde_json::from_value(json!("Hibernating")).unwrap();
        assert_eq!(newer, ProcessState::Unknown);
        assert!(ProcessState::Adopted.ready_without_check());
        assert!(!ProcessState::BackingOff.ready_without_check());
    }

    #[test]
    fn a_report_from_before_pressure_still_reads_and_a_v1_sample_writes_as_before() {
        let old = json!({"version": 1, "key": null, "node": "n", "leaseEpoch": 3,
            "applied": {}, "process": {"state": "Running", "pids": 1, "restarts": 0},
            "changedAt": 5,
            "usage": {"cpu": 10, "memory": 20, "memoryPeak": 30, "throttledSeconds": 0.5,
                "oomKills": 0, "pids": 1}});
        let report: Report = serde_json::from_value(old.clone()).unwrap();
        let usage = report.usage.unwrap();
        assert_eq!((usage.pressure, usage.memory_events), (None, None));
        assert_eq!(serde_json::to_value(&report).unwrap(), old);
    }

    #[test]
    fn a_v2_sample_carries_pressure_and_memory_events() {
        let stall = |avg10: f64, total_micros: u64| Stall {
            avg10,
            avg60: 1.5,
            total_micros,
        };
        let sample = UsageSample {
            pressure: Some(Pressures {
                memory: Some(Pressure {
                    some: stall(12.5, 1_000),
                    full: Some(stall(2.0, 10)),
                }),
                cpu: Some(Pressure {
                    some: stall(0.0, 7),
                    full: None,
                }),
                io: None,
            }),
            memory_events: Some(MemoryEvents {
                high: 4,
                max: 2,
                oom_kill: 1,
            }),
            ..UsageSample::default()
        };
        let value = serde_json::to_value(sample).unwrap();
        assert_eq!(
            value["pressure"],
            json!({
                "memory": {"some": {"avg10": 12.5, "avg60": 1.5, "totalMicros": 1000},
                           "full": {"avg10": 2.0, "avg60": 1.5, "totalMicros": 10}},
                "cpu": {"some": {"avg10": 0.0, "avg60": 1.5, "totalMicros": 7}}
            })
        );
        assert_eq!(
            value["memoryEvents"],
            json!({"high": 4, "max": 2, "oomKill": 1})
        );
        assert_eq!(
            serde_json::from_value::<UsageSample>(value).unwrap(),
            sample
        );
    }
}
