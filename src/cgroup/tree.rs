//! The shape of corral's subtree: `<root>/<tenant>/<name>.<index>`, as desired and as
//! observed. Plain data; building and comparing them is pure.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::knobs::Knob;
use crate::alloc::ReplicaKey;
use crate::api::names::is_dns_label;

/// A group below corral's root: a tenant (`team-a`) or a replica (`team-a/api.0`). Built
/// only from DNS-1123 labels and a number, so it can never name a path outside the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupPath {
    tenant: String,
    replica: Option<(String, u32)>,
}

/// A name that cannot be a group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a corral group: expected <tenant> or <tenant>/<name>.<index> of DNS-1123 labels"
)]
pub struct BadGroupName(pub String);

impl GroupPath {
    /// The parent group of a tenant's replicas.
    ///
    /// # Errors
    /// The namespace is not a DNS-1123 label.
    pub fn tenant(namespace: &str) -> Result<GroupPath, BadGroupName> {
        if !is_dns_label(namespace) {
            return Err(BadGroupName(namespace.to_string()));
        }
        Ok(GroupPath {
            tenant: namespace.to_string(),
            replica: None,
        })
    }

    /// The group of one replica.
    ///
    /// # Errors
    /// The namespace or name is not a DNS-1123 label.
    pub fn replica(key: &ReplicaKey) -> Result<GroupPath, BadGroupName> {
        if !is_dns_label(key.namespace()) || !is_dns_label(key.name()) {
            return Err(BadGroupName(key.to_string()));
        }
        Ok(GroupPath {
            tenant: key.namespace().to_string(),
            replica: Some((key.name().to_string(), key.index)),
        })
    }

    /// Parses a path relative to the root, as found on disk.
    ///
    /// # Errors
    /// It is not of either shape.
    pub fn parse(relative: &str) -> Result<GroupPath, BadGroupName> {
        let bad = || BadGroupName(relative.to_string());
        let mut parts = relative.split('/');
        let tenant = parts.next().ok_or_else(bad)?;
        let group = match parts.next() {
            None => GroupPath::tenant(tenant).map_err(|_| bad())?,
            Some(leaf) => {
                let (name, index) = leaf.rsplit_once('.').ok_or_else(bad)?;
                let index: u32 = index.parse().map_err(|_| bad())?;
                if index.to_string() != leaf[name.len() + 1..] {
                    return Err(bad());
                }
                GroupPath::replica(&ReplicaKey::new(tenant, name, index)).map_err(|_| bad())?
            }
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(group)
    }

    /// The tenant.
    pub fn tenant_name(&self) -> &str {
        &self.tenant
    }

    /// The replica's key, for a replica group.
    pub fn key(&self) -> Option<ReplicaKey> {
        self.replica
            .as_ref()
            .map(|(name, index)| ReplicaKey::new(&self.tenant, name, *index))
    }

    /// True for a tenant group.
    pub fn is_tenant(&self) -> bool {
        self.replica.is_none()
    }

    /// The tenant group of a replica group; `None` for a tenant.
    pub fn parent(&self) -> Option<GroupPath> {
        self.replica.as_ref().map(|_| GroupPath {
            tenant: self.tenant.clone(),
            replica: None,
        })
    }
}

impl fmt::Display for GroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.replica {
            None => f.write_str(&self.tenant),
            Some((name, index)) => write!(f, "{}/{name}.{index}", self.tenant),
        }
    }
}

impl TryFrom<String> for GroupPath {
    type Error = BadGroupName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        GroupPath::parse(&s)
    }
}

impl From<GroupPath> for String {
    fn from(g: GroupPath) -> String {
        g.to_string()
    }
}

/// What runs in a replica's group. Not serializable: a lease stores it as
/// [`crate::lease::stored::WorkV1`].
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// A command corral starts and restarts.
    Command {
        /// Program and arguments.
        args: Vec<String>,
        /// Environment added.
        env: Vec<(String, String)>,
        /// Working directory.
        working_dir: Option<String>,
        /// `Always`, `OnFailure` or `Never`.
        restart: crate::api::workload::RestartPolicy,
        /// The user and groups it runs as; a lease written before corral knew users runs
        /// as nobody.
        run_as: crate::alloc::admit::RunAs,
    },
    /// Existing processes corral moves in.
    Adopt(crate::api::workload::AdoptRule),
}

/// A health check, as the agent runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthProbe {
    /// What is checked.
    pub check: ProbeCheck,
    /// Seconds between checks.
    pub period_seconds: u32,
    /// Seconds before a check counts as failed.
    pub timeout_seconds: u32,
    /// Failures in a row that make a healthy replica unhealthy.
    pub failure_threshold: u32,
}

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    /// Runs a command as the replica's user, in its group; exit 0 passes.
    Exec(Vec<String>),
    /// Connects to this port on 127.0.0.1.
    Tcp(u16),
}

impl HealthProbe {
    /// The probe for a workload's check.
    pub fn of(check: &crate::api::workload::HealthCheck) -> Option<HealthProbe> {
        let positive = |n: i32| u32::try_from(n).ok().filter(|n| *n > 0);
        let probe = match (&check.exec, &check.tcp) {
            (Some(exec), None) => ProbeCheck::Exec(exec.command.clone()),
            (None, Some(tcp)) => ProbeCheck::Tcp(u16::try_from(tcp.port).ok().filter(|p| *p > 0)?),
            _ => return None,
        };
        Some(HealthProbe {
            check: probe,
            period_seconds: positive(check.period_seconds)?,
            timeout_seconds: positive(check.timeout_seconds)?,
            failure_threshold: positive(check.failure_threshold)?,
        })
    }
}

/// How one replica's output is kept: files of at most `max_bytes`, `max_files` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// The size at which the current file is rotated.
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 10 MiB × 5, the kubelet's defaults.
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 << 20,
            max_files: 5,
        }
    }
}

impl LogLimits {
    /// The limits a policy sets.
    pub fn of(settings: &crate::api::policy::LogSettings) -> LogLimits {
        let default = LogLimits::default();
        LogLimits {
            max_bytes: settings
                .max_size
                .units()
                .ok()
                .and_then(|b| u64::try_from(b).ok())
                .filter(|b| *b > 0)
                .unwrap_or(default.max_bytes),
            max_files: u32::try_from(settings.max_files)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(default.max_files),
        }
    }
}

/// One group as it should be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredGroup {
    /// Knob → value to write.
    pub knobs: BTreeMap<Knob, String>,
    /// What runs in it (replica groups only).
    pub work: Option<Work>,
    /// Seconds between SIGTERM and SIGKILL when its processes are stopped.
    pub grace_seconds: u32,
    /// How its command's output is rotated.
    pub logs: LogLimits,
    /// The revision of its work: a running command of another revision is replaced.
    pub revision: String,
    /// The health check that decides when it is ready.
    pub health: Option<HealthProbe>,
    /// Seconds its command must run before it is ready.
    pub min_ready_seconds: u32,
}

/// corral's subtree as it should be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredTree {
    /// Every group, tenants before their replicas.
    pub groups: BTreeMap<GroupPath, DesiredGroup>,
    /// Knob values for the root group itself (v2: the controllers enabled for tenants).
    pub root_knobs: BTreeMap<Knob, String>,
}

/// One group as found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedGroup {
    /// Knob → value read; `None` when the kernel does not offer that file.
    pub knobs: BTreeMap<Knob, Option<String>>,
    /// Processes in the group.
    pub pids: Vec<u32>,
    /// The grace period of the group's last lease, for stopping it once the lease is gone.
    pub grace_seconds: Option<u32>,
    /// Its processes were adopted and go back where they came from, not stopped, once the
    /// lease is gone (`adopt.onDelete: Release`).
    pub release: bool,
    /// Its processes are being stopped in the background.
    pub stopping: bool,
    /// Its command runs an older revision than its lease's: a rollout replaces it.
    pub outdated: bool,
}

/// corral's subtree as found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedTree {
    /// Every group found below the root whose name is a corral group.
    pub groups: BTreeMap<GroupPath, ObservedGroup>,
    /// Knob values of the root group.
    pub root_knobs: BTreeMap<Knob, Option<String>>,
    /// For groups with an adopt rule: matching processes that are not in the group yet
    /// (whether the group exists yet or not).
    pub adoptable: BTreeMap<GroupPath, Vec<u32>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_made_of_labels_only() {
        let g = GroupPath::replica(&ReplicaKey::new("team-a", "api", 3)).unwrap();
        assert_eq!(g.to_string(), "team-a/api.3");
        assert_eq!(GroupPath::parse("team-a/api.3").unwrap(), g);
        assert_eq!(g.parent().unwrap().to_string(), "team-a");
        assert_eq!(g.key().unwrap(), ReplicaKey::new("team-a", "api", 3));
        assert!(GroupPath::tenant("team-a").unwrap().is_tenant());
    }

    #[test]
    fn hostile_names_are_refused() {
        for tenant in ["..", ".", "", "a/b", "../x", "A", "a\0b", "a b", "-a"] {
            assert!(GroupPath::tenant(tenant).is_err(), "{tenant:?}");
            assert!(
                GroupPath::replica(&ReplicaKey::new(tenant, "w", 0)).is_err(),
                "{tenant:?}"
            );
            assert!(
                GroupPath::replica(&ReplicaKey::new("ok", tenant, 0)).is_err(),
                "{tenant:?}"
            );
        }
        for path in [
            "..", "a/..", "a/../b", "a/b", "a/b.x", "a/b.1/c", "a/b.01", "a/b.-1", "/a", "a/",
            "a//b.1", "a/.1",
        ] {
            assert!(GroupPath::parse(path).is_err(), "{path:?}");
        }
    }
}
