//! The stored form of a lease: what sits in ZooKeeper (and the embedded store) for each
//! replica, owned by this module and by nothing else.
//!
//! A [`Lease`] is built from the types of other layers: the API's `AdoptRule`,
//! `RestartPolicy` and `CgroupSettings`, the allocator's amounts, `RunAs` and `AdoptScope`,
//! the cgroup layer's `Work`. None of them is serialized as it is. A lease is written as a
//! [`LeaseV1`], made only of the types below, which name every field and variant as the
//! store spells it, and is read back through it. A rename in another layer cannot change
//! what is stored: the conversions here stop compiling instead, and the format test
//! (`src/lease/testdata/stored-v1.json`) pins the text.
//!
//! Guarantees:
//! - every `V1` type reads what every earlier corral wrote: fields added since the first
//!   version have defaults (a lease written before users runs as nobody; one written
//!   before rollouts has no revision and replaces nothing);
//! - write then read is the identity on a [`Lease`] (tested);
//! - a new format raises [`super::FORMAT_VERSION`] and adds its own types beside these,
//!   which stay to read what older agents and controllers wrote.

use serde::{Deserialize, Serialize};

use super::{HealthProbe, Lease, LogLimits, ProbeCheck};
use crate::alloc::admit::{AdoptScope, RunAs};
use crate::alloc::plan::Limits;
use crate::alloc::{ReplicaKey, Res};
use crate::api::policy::{CgroupSettings, IdRange, MemoryProtection};
use crate::api::workload::{AdoptOnDelete, AdoptRule, RestartPolicy};
use crate::cgroup::tree::Work;

/// A lease as stored, version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseV1 {
    /// The format version: 1 (absent, 0, in the first leases).
    #[serde(default)]
    pub version: u32,
    /// The replica.
    pub key: KeyV1,
    /// The node.
    pub node: String,
    /// The epoch of the leader that wrote it.
    pub epoch: i64,
    /// The governing policy.
    pub policy: String,
    /// The workload's priority.
    pub priority: i32,
    /// Guaranteed.
    pub granted: AmountsV1,
    /// Requested.
    pub request: AmountsV1,
    /// Limits; `null` for none.
    pub limits: LimitsV1,
    /// Block IO weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<i32>,
    /// How grants become cgroup values.
    pub cgroup: CgroupV1,
    /// The tenant's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_limit: Option<AmountsV1>,
    /// What runs.
    pub work: WorkV1,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_seconds: u32,
    /// The workload's `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// What an adopt rule may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_scope: Option<AdoptScopeV1>,
    /// Output rotation.
    #[serde(default)]
    pub logs: LogsV1,
    /// The revision of `work`; empty before rollouts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// The health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthV1>,
    /// Seconds before a replica counts as ready.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_ready_seconds: u32,
    /// Seconds without a session before the agent stops the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_disconnect_seconds: Option<u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A replica's key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyV1 {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub name: String,
    /// The replica's index.
    pub index: u32,
}

/// CPU millicores, memory bytes and pids, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountsV1 {
    /// CPU millicores.
    pub cpu: i64,
    /// Memory bytes.
    pub memory: i64,
    /// Processes.
    pub pids: i64,
}

/// Limits as stored; `null` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsV1 {
    /// CPU millicores.
    pub cpu: Option<i64>,
    /// Memory bytes.
    pub memory: Option<i64>,
    /// Processes.
    pub pids: Option<i64>,
}

/// The policy's cgroup settings as stored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupV1 {
    /// The CFS period.
    #[serde(default = "default_period")]
    pub cpu_period_micros: i64,
    /// Where `memory.high` sits between request and limit.
    #[serde(default = "default_high_ratio")]
    pub memory_high_ratio: f64,
    /// How the request is protected from reclaim.
    #[serde(default)]
    pub memory_protection: ProtectionV1,
}

fn default_period() -> i64 {
    100_000
}

fn default_high_ratio() -> f64 {
    0.9
}

/// Memory protection as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtectionV1 {
    /// None.
    #[default]
    Off,
    /// `memory.low`.
    Low,
    /// `memory.min`.
    Min,
}

/// What runs, as stored: `{"command": {...}}` or `{"adopt": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkV1 {
    /// A command. Its fields are spelt in snake case, as the first corral wrote them.
    Command {
        /// Program and arguments.
        args: Vec<String>,
        /// Environment added.
        env: Vec<(String, String)>,
        /// Working directory.
        working_dir: Option<String>,
        /// When it is restarted.
        restart: RestartV1,
        /// Who it runs as; absent in leases written before users: nobody.
        #[serde(default)]
        run_as: RunAsV1,
    },
    /// Existing processes moved in.
    Adopt(AdoptV1),
}

/// A restart policy as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartV1 {
    /// Whatever the exit status.
    Always,
    /// After a failure.
    OnFailure,
    /// Never.
    Never,
}

/// A user and groups as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunAsV1 {
    /// The user ID.
    pub uid: u32,
    /// The primary group ID.
    pub gid: u32,
    /// Supplementary group IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

impl Default for RunAsV1 {
    /// nobody:nogroup.
    fn default() -> Self {
        RunAsV1::from(&RunAs::default())
    }
}

/// An adopt rule as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdoptV1 {
    /// An existing cgroup whose processes are moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    /// A file holding the process ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    /// A pattern over command lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_pattern: Option<String>,
    /// What the replica's end does to the processes.
    #[serde(default)]
    pub on_delete: OnDeleteV1,
}

/// What happens to adopted processes, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnDeleteV1 {
    /// Moved back, left running.
    #[default]
    Release,
    /// Stopped.
    Stop,
}

/// What an adopt rule may take, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdoptScopeV1 {
    /// Users whose processes may be adopted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<IdRangeV1>,
    /// Whether root's may.
    #[serde(default)]
    pub allow_root: bool,
    /// Cgroups below which `cgroupPath` may point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_prefixes: Vec<String>,
}

/// A range of IDs as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRangeV1 {
    /// The first.
    pub min: i64,
    /// The last.
    pub max: i64,
}

/// Output rotation as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsV1 {
    /// The size at which a file is rotated.
    pub max_bytes: u64,
    /// Files kept.
    pub max_files: u32,
}

impl Default for LogsV1 {
    /// What a lease written before log rotation gets: the defaults.
    fn default() -> Self {
        LogsV1::from(LogLimits::default())
    }
}

/// A health check as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthV1 {
    /// What is checked.
    pub check: CheckV1,
    /// Seconds between checks.
    pub period_seconds: u32,
    /// Seconds before a check fails.
    pub timeout_seconds: u32,
    /// Failures in a row that make a replica unhealthy.
    pub failure_threshold: u32,
}

/// What a health check does, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckV1 {
    /// A command; exit 0 passes.
    Exec(Vec<String>),
    /// A TCP connection to this port.
    Tcp(u16),
}

impl From<Lease> for LeaseV1 {
    fn from(l: Lease) -> Self {
        LeaseV1 {
            version: l.version,
            key: KeyV1 {
                namespace: l.key.namespace().to_string(),
                name: l.key.name().to_string(),
                index: l.key.index,
            },
            node: l.node,
            epoch: l.epoch,
            policy: l.policy,
            priority: l.priority,
            granted: l.granted.into(),
            request: l.request.into(),
            limits: LimitsV1 {
                cpu: l.limits.cpu,
                memory: l.limits.memory,
                pids: l.limits.pids,
            },
            io_weight: l.io_weight,
            cgroup: CgroupV1 {
                cpu_period_micros: l.cgroup.cpu_period_micros,
                memory_high_ratio: l.cgroup.memory_high_ratio,
                memory_protection: match l.cgroup.memory_protection {
                    MemoryProtection::Off => ProtectionV1::Off,
                    MemoryProtection::Low => ProtectionV1::Low,
                    MemoryProtection::Min => ProtectionV1::Min,
                },
            },
            tenant_limit: l.tenant_limit.map(Into::into),
            work: l.work.into(),
            grace_seconds: l.grace_seconds,
            generation: l.generation,
            adopt_scope: l.adopt_scope.map(|s| AdoptScopeV1 {
                users: s
                    .users
                    .iter()
                    .map(|r| IdRangeV1 {
                        min: r.min,
                        max: r.max,
                    })
                    .collect(),
                allow_root: s.allow_root,
                cgroup_prefixes: s.cgroup_prefixes,
            }),
            logs: l.logs.into(),
            revision: l.revision,
            health: l.health.map(|h| HealthV1 {
                check: match h.check {
                    ProbeCheck::Exec(command) => CheckV1::Exec(command),
                    ProbeCheck::Tcp(port) => CheckV1::Tcp(port),
                },
                period_seconds: h.period_seconds,
                timeout_seconds: h.timeout_seconds,
                failure_threshold: h.failure_threshold,
            }),
            min_ready_seconds: l.min_ready_seconds,
            stop_after_disconnect_seconds: l.stop_after_disconnect_seconds,
        }
    }
}

impl From<LeaseV1> for Lease {
    fn from(l: LeaseV1) -> Self {
        Lease {
            version: l.version,
            key: ReplicaKey::new(&l.key.namespace, &l.key.name, l.key.index),
            node: l.node,
            epoch: l.epoch,
            policy: l.policy,
            priority: l.priority,
            granted: l.granted.into(),
            request: l.request.into(),
            limits: Limits {
                cpu: l.limits.cpu,
                memory: l.limits.memory,
                pids: l.limits.pids,
            },
            io_weight: l.io_weight,
            cgroup: CgroupSettings {
                cpu_period_micros: l.cgroup.cpu_period_micros,
                memory_high_ratio: l.cgroup.memory_high_ratio,
                memory_protection: match l.cgroup.memory_protection {
                    ProtectionV1::Off => MemoryProtection::Off,
                    ProtectionV1::Low => MemoryProtection::Low,
                    ProtectionV1::Min => MemoryProtection::Min,
                },
            },
            tenant_limit: l.tenant_limit.map(Into::into),
            work: l.work.into(),
            grace_seconds: l.grace_seconds,
            generation: l.generation,
            adopt_scope: l.adopt_scope.map(|s| AdoptScope {
                users: s
                    .users
                    .iter()
                    .map(|r| IdRange {
                        min: r.min,
                        max: r.max,
                    })
                    .collect(),
                allow_root: s.allow_root,
                cgroup_prefixes: s.cgroup_prefixes,
            }),
            logs: LogLimits {
                max_bytes: l.logs.max_bytes,
                max_files: l.logs.max_files,
            },
            revision: l.revision,
            health: l.health.map(|h| HealthProbe {
                check: match h.check {
                    CheckV1::Exec(command) => ProbeCheck::Exec(command),
                    CheckV1::Tcp(port) => ProbeCheck::Tcp(port),
                },
                period_seconds: h.period_seconds,
                timeout_seconds: h.timeout_seconds,
                failure_threshold: h.failure_threshold,
            }),
            min_ready_seconds: l.min_ready_seconds,
            stop_after_disconnect_seconds: l.stop_after_disconnect_seconds,
        }
    }
}

impl From<Res> for AmountsV1 {
    fn from(r: Res) -> Self {
        AmountsV1 {
            cpu: r.cpu,
            memory: r.memory,
            pids: r.pids,
        }
    }
}

impl From<AmountsV1> for Res {
    fn from(a: AmountsV1) -> Self {
        Res::new(a.cpu, a.memory, a.pids)
    }
}

impl From<LogLimits> for LogsV1 {
    fn from(l: LogLimits) -> Self {
        LogsV1 {
            max_bytes: l.max_bytes,
            max_files: l.max_files,
        }
    }
}

impl From<&RunAs> for RunAsV1 {
    fn from(r: &RunAs) -> Self {
        RunAsV1 {
            uid: r.uid,
            gid: r.gid,
            groups: r.groups.clone(),
        }
    }
}

impl From<Work> for WorkV1 {
    fn from(w: Work) -> Self {
        match w {
            Work::Command {
                args,
                env,
                working_dir,
                restart,
                run_as,
            } => WorkV1::Command {
                args,
                env,
                working_dir,
                restart: match restart {
                    RestartPolicy::Always => RestartV1::Always,
                    RestartPolicy::OnFailure => RestartV1::OnFailure,
                    RestartPolicy::Never => RestartV1::Never,
                },
                run_as: RunAsV1::from(&run_as),
            },
            Work::Adopt(rule) => WorkV1::Adopt(AdoptV1 {
                cgroup_path: rule.cgroup_path,
                pid_file: rule.pid_file,
                command_pattern: rule.command_pattern,
                on_delete: match rule.on_delete {
                    AdoptOnDelete::Release => OnDeleteV1::Release,
                    AdoptOnDelete::Stop => OnDeleteV1::Stop,
                },
            }),
        }
    }
}

impl From<WorkV1> for Work {
    fn from(w: WorkV1) -> Self {
        match w {
            WorkV1::Command {
                args,
                env,
                working_dir,
                restart,
                run_as,
            } => Work::Command {
                args,
                env,
                working_dir,
                restart: match restart {
                    RestartV1::Always => RestartPolicy::Always,
                    RestartV1::OnFailure => RestartPolicy::OnFailure,
                    RestartV1::Never => RestartPolicy::Never,
                },
                run_as: RunAs {
                    uid: run_as.uid,
                    gid: run_as.gid,
                    groups: run_as.groups,
                },
            },
            WorkV1::Adopt(rule) => Work::Adopt(AdoptRule {
                cgroup_path: rule.cgroup_path,
                pid_file: rule.pid_file,
                command_pattern: rule.command_pattern,
                on_delete: match rule.on_delete {
                    OnDeleteV1::Release => AdoptOnDelete::Release,
                    OnDeleteV1::Stop => AdoptOnDelete::Stop,
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;
    use serde_json::json;

    #[test]
    fn the_first_leases_still_read() {
        // As the first corral wrote them: no version, no user, no logs, no revision.
        let first = json!({
            "key": {"namespace": "t", "name": "web", "index": 0},
            "node": "n1", "epoch": 3, "policy": "p", "priority": 0,
            "granted": {"cpu": 100, "memory": 10_485_760, "pids": 0},
            "request": {"cpu": 100, "memory": 10_485_760, "pids": 0},
            "limits": {"cpu": null, "memory": null, "pids": null},
            "cgroup": {},
            "work": {"command": {"args": ["sleep", "1"], "env": [], "working_dir": null,
                                 "restart": "Always"}},
            "graceSeconds": 10,
        });
        let lease: Lease = serde_json::from_value(first).unwrap();
        assert_eq!(lease.version, 0);
        assert_eq!(lease.logs, LogLimits::default());
        assert!(
            lease.revision.is_empty(),
            "a lease before rollouts replaces nothing"
        );
        assert_eq!(lease.cgroup, CgroupSettings::default());
        let Work::Command { run_as, .. } = &lease.work else {
            panic!("a command");
        };
        assert_eq!(*run_as, RunAs::default(), "before users: nobody");
    }

    #[test]
    fn write_then_read_is_the_identity() {
        let mut lease = mk_lease("n1", "web", 1, 4);
        lease.tenant_limit = Some(Res::new(1, 2, 3));
        lease.health = Some(HealthProbe {
            check: ProbeCheck::Tcp(8080),
            period_seconds: 1,
            timeout_seconds: 1,
            failure_threshold: 1,
        });
        let text = serde_json::to_string(&lease).unwrap();
        assert_eq!(serde_json::from_str::<Lease>(&text).unwrap(), lease);
    }
}
