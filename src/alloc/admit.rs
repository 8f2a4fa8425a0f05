//! Admission: what a tenant may ask for under the policy that governs it. A Workload's
//! author is not trusted, so everything here is the policy's word against the workload's:
//! the users and groups its command runs as, whether it may adopt, its priority, its
//! requests and limits, and how many Workloads its tenant has.
//!
//! Pure functions, shared by `corral validate` (with file and line), the controllers'
//! sources (which keep the last admitted version of a refused workload) and the allocator
//! (which places nothing of a workload it refuses, whatever slipped past the others).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::input::{Demand, amounts_or};
use super::resources::Kind;
use super::selector;
use crate::api::identity::namespace_of;
use crate::api::policy::{IdRange, ResourcePolicySpec, TenantSettings};
use crate::api::workload::MAX_PRIORITY;
use crate::api::{ResourcePolicy, Workload, WorkloadRef};
use crate::source::yaml::FieldPath;
use crate::validate::FieldError;

/// The user and group a command runs as when neither its Workload nor its policy names one:
/// `nobody` and `nogroup`.
pub const NOBODY: u32 = 65_534;

/// The user, primary group and supplementary groups a command runs as, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunAs {
    /// The user ID.
    pub uid: u32,
    /// The primary group ID.
    pub gid: u32,
    /// Supplementary group IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

impl Default for RunAs {
    /// `nobody:nogroup`: what a lease that names no user runs as.
    fn default() -> Self {
        RunAs {
            uid: NOBODY,
            gid: NOBODY,
            groups: Vec::new(),
        }
    }
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)?;
        for g in &self.groups {
            write!(f, ",{g}")?;
        }
        Ok(())
    }
}

/// Which processes an adopting replica may take, as its node's agent checks them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdoptScope {
    /// Users whose processes a pid file or command pattern may adopt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<IdRange>,
    /// Whether root's processes may be adopted.
    #[serde(default)]
    pub allow_root: bool,
    /// Cgroups below which `cgroupPath` may point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_prefixes: Vec<String>,
}

impl AdoptScope {
    /// True when a process of user `uid` may be adopted by pid file or pattern.
    pub fn allows_user(&self, uid: u32) -> bool {
        (uid != 0 || self.allow_root) && self.users.iter().any(|r| r.contains(i64::from(uid)))
    }

    /// True when `cgroup` (absolute, as in /proc/PID/cgroup) is one of the prefixes or
    /// below one, component by component.
    pub fn allows_cgroup(&self, cgroup: &str) -> bool {
        self.cgroup_prefixes
            .iter()
            .any(|prefix| is_below(cgroup, prefix))
    }
}

/// True when `path` is `prefix` or below it, comparing whole components.
pub fn is_below(path: &str, prefix: &str) -> bool {
    let parts = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect()
    };
    let (path, prefix) = (parts(path), parts(prefix));
    !prefix.is_empty() && path.len() >= prefix.len() && path[..prefix.len()] == prefix[..]
}

/// One setting of a tenant, with the policy field it came from, for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T> {
    /// The value in force.
    pub value: T,
    /// Where the policy says so (`spec.tenants[1].maxPriority`), or `None` for corral's
    /// default.
    pub from: Option<String>,
}

impl<T> Setting<T> {
    fn default_value(value: T) -> Self {
        Setting { value, from: None }
    }

    /// `(spec.tenants[1].maxPriority)`, or `(corral's default)`.
    fn cite(&self) -> String {
        match &self.from {
            Some(from) => format!("({from})"),
            None => "(corral's default)".to_string(),
        }
    }
}

/// Where a tenant's settings are looked up: its own entry (with its path), then
/// `tenantDefaults`.
struct Levels<'a> {
    own: Option<(&'a str, &'a TenantSettings)>,
    shared: Option<&'a TenantSettings>,
}

impl Levels<'_> {
    /// The first level that sets `field`, with the path it is at; `None` when neither does.
    fn pick<T>(
        &self,
        field: &str,
        get: impl Fn(&TenantSettings) -> Option<T>,
    ) -> Option<Setting<T>> {
        if let Some((path, settings)) = self.own
            && let Some(value) = get(settings)
        {
            return Some(Setting {
                value,
                from: Some(format!("{path}.{field}")),
            });
        }
        self.shared.and_then(&get).map(|value| Setting {
            value,
            from: Some(format!("spec.tenantDefaults.{field}")),
        })
    }
}

/// What one tenant (namespace) may do under one policy: its entry in `tenants` over
/// `tenantDefaults`, over corral's defaults, field by field.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantRules {
    /// The policy's name.
    pub policy: String,
    /// The namespace.
    pub namespace: String,
    /// The user when the Workload names none.
    pub run_as_user: Setting<i64>,
    /// The primary group when the Workload names none.
    pub run_as_group: Setting<i64>,
    /// Users a Workload may ask for.
    pub allowed_users: Setting<Vec<IdRange>>,
    /// Groups a Workload may ask for.
    pub allowed_groups: Setting<Vec<IdRange>>,
    /// Whether user and group 0 may be used.
    pub allow_root: Setting<bool>,
    /// Whether `adopt` may be used.
    pub adopt: Setting<bool>,
    /// Cgroups below which `adopt.cgroupPath` may point.
    pub cgroup_prefixes: Setting<Vec<String>>,
    /// The highest priority.
    pub max_priority: Setting<i32>,
    /// The most Workloads; `None`: no bound.
    pub max_workloads: Setting<Option<i32>>,
    /// The most placed replicas; `None`: no bound.
    pub max_replicas: Setting<Option<i32>>,
}

impl TenantRules {
    /// The rules for `namespace` under the policy `name` with `spec`.
    pub fn of(name: &str, spec: &ResourcePolicySpec, namespace: &str) -> TenantRules {
        let own = spec
            .tenants
            .iter()
            .enumerate()
            .find(|(_, t)| t.namespace == namespace)
            .map(|(i, t)| (format!("spec.tenants[{i}]"), &t.settings));
        let levels = Levels {
            own: own.as_ref().map(|(path, s)| (path.as_str(), *s)),
            shared: spec.tenant_defaults.as_ref(),
        };
        let run_as_user = levels
            .pick("security.runAsUser", |s| s.security.as_ref()?.run_as_user)
            .unwrap_or_else(|| Setting::default_value(i64::from(NOBODY)));
        let run_as_group = levels
            .pick("security.runAsGroup", |s| s.security.as_ref()?.run_as_group)
            .unwrap_or_else(|| Setting::default_value(i64::from(NOBODY)));
        // By default a tenant may use only its default user and group.
        let only = |id: &Setting<i64>| Setting {
            value: vec![IdRange {
                min: id.value,
                max: id.value,
            }],
            from: id.from.clone(),
        };
        let allowed_users = levels
            .pick("security.allowedUsers", |s| {
                s.security.as_ref()?.allowed_users.clone()
            })
            .unwrap_or_else(|| only(&run_as_user));
        let allowed_groups = levels
            .pick("security.allowedGroups", |s| {
                s.security.as_ref()?.allowed_groups.clone()
            })
            .unwrap_or_else(|| only(&run_as_group));
        let adopt = |s: &TenantSettings| s.security.as_ref()?.adopt.clone();
        let max_priority = levels
            .pick("maxPriority", |s| s.max_priority)
            .unwrap_or_else(|| Setting::default_value(MAX_PRIORITY));
        let bound = |field: &str, get: fn(&TenantSettings) -> Option<i32>| {
            levels.pick(field, get).map_or_else(
                || Setting::default_value(None),
                |s| Setting {
                    value: Some(s.value),
                    from: s.from,
                },
            )
        };
        TenantRules {
            policy: name.to_string(),
            namespace: namespace.to_string(),
            allow_root: levels
                .pick("security.allowRoot", |s| s.security.as_ref()?.allow_root)
                .unwrap_or_else(|| Setting::default_value(false)),
            adopt: levels
                .pick("security.adopt.enabled", |s| adopt(s).map(|a| a.enabled))
                .unwrap_or_else(|| Setting::default_value(false)),
            cgroup_prefixes: levels
                .pick("security.adopt.cgroupPrefixes", |s| {
                    adopt(s).map(|a| a.cgroup_prefixes)
                })
                .unwrap_or_else(|| Setting::default_value(Vec::new())),
            run_as_user,
            run_as_group,
            allowed_users,
            allowed_groups,
            max_priority,
            max_workloads: bound("maxWorkloads", |s| s.max_workloads),
            max_replicas: bound("maxReplicas", |s| s.max_replicas),
        }
    }

    /// Where processes an adopting replica takes may come from.
    pub fn adopt_scope(&self) -> AdoptScope {
        AdoptScope {
            users: self.allowed_users.value.clone(),
            allow_root: self.allow_root.value,
            cgroup_prefixes: self.cgroup_prefixes.value.clone(),
        }
    }

    /// Whose use is checked, in a message: `namespace a under ResourcePolicy "p"`.
    fn who(&self) -> String {
        format!(
            "namespace {} under ResourcePolicy {:?}",
            self.namespace, self.policy
        )
    }

    fn user_allowed(&self, uid: i64) -> Result<(), String> {
        self.id_allowed(uid, "user", &self.allowed_users, &self.who())
    }

    fn group_allowed(&self, gid: i64) -> Result<(), String> {
        self.id_allowed(gid, "group", &self.allowed_groups, &self.who())
    }

    fn id_allowed(
        &self,
        id: i64,
        what: &str,
        allowed: &Setting<Vec<IdRange>>,
        who: &str,
    ) -> Result<(), String> {
        if id == 0 && !self.allow_root.value {
            let how = match &self.allow_root.from {
                Some(from) => format!("({from} is false)"),
                None => "(allowRoot: true in the tenant's security allows it)".to_string(),
            };
            return Err(format!("{what} 0 is root, which {who} may not use {how}"));
        }
        if allowed.value.iter().any(|r| r.contains(id)) {
            return Ok(());
        }
        Err(format!(
            "{what} {id} is not one {who} may use: it may use {} {}",
            describe_ranges(&allowed.value),
            allowed.cite()
        ))
    }
}

/// `1000-1999, 3000`, or `none`.
pub fn describe_ranges(ranges: &[IdRange]) -> String {
    if ranges.is_empty() {
        return "none".to_string();
    }
    ranges
        .iter()
        .map(|r| {
            if r.min == r.max {
                r.min.to_string()
            } else {
                format!("{}-{}", r.min, r.max)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// True when the policy's `namespaces` and `workloadSelector` take in `workload`: the
/// condition for governing it, by precedence or by `policyRef`.
pub fn admits(policy: &ResourcePolicySpec, workload: &Workload) -> bool {
    let namespace = namespace_of(workload);
    let empty = BTreeMap::new();
    let labels = workload.metadata.labels.as_ref().unwrap_or(&empty);
    (policy.namespaces.is_empty() || policy.namespaces.iter().any(|n| n == namespace))
        && selector::matches(policy.workload_selector.as_ref(), labels)
}

/// The user and groups `workload`'s command runs as under `rules`.
///
/// # Errors
/// One per field the policy does not allow, with paths below `spec`.
pub fn run_as(workload: &Workload, rules: &TenantRules) -> Result<RunAs, Vec<FieldError>> {
    let path = FieldPath::root()
        .key("spec")
        .key("command")
        .key("securityContext");
    let context = workload
        .spec
        .command
        .as_ref()
        .and_then(|c| c.security_context.as_ref());
    let mut errors = Vec::new();
    let uid = context
        .and_then(|c| c.run_as_user)
        .unwrap_or(rules.run_as_user.value);
    let gid = context
        .and_then(|c| c.run_as_group)
        .unwrap_or(rules.run_as_group.value);
    let explicit_user = context.and_then(|c| c.run_as_user).is_some();
    let explicit_group = context.and_then(|c| c.run_as_group).is_some();
    if let Err(message) = rules.user_allowed(uid) {
        errors.push(FieldError {
            path: if explicit_user {
                path.key("runAsUser")
            } else {
                FieldPath::root().key("spec").key("command")
            },
            message: if explicit_user {
                message
            } else {
                format!("the default {message}")
            },
        });
    }
    if let Err(message) = rules.group_allowed(gid) {
        errors.push(FieldError {
            path: if explicit_group {
                path.key("runAsGroup")
            } else {
                FieldPath::root().key("spec").key("command")
            },
            message: if explicit_group {
                message
            } else {
                format!("the default {message}")
            },
        });
    }
    let mut groups = Vec::new();
    for (i, g) in context
        .map(|c| c.supplemental_groups.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match rules.group_allowed(*g) {
            Ok(()) => groups.push(u32::try_from(*g).unwrap_or(NOBODY)),
            Err(message) => errors.push(FieldError {
                path: path.key("supplementalGroups").index(i),
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    groups.sort_unstable();
    groups.dedup();
    Ok(RunAs {
        uid: u32::try_from(uid).unwrap_or(NOBODY),
        gid: u32::try_from(gid).unwrap_or(NOBODY),
        groups,
    })
}

/// Every problem with `workload` under `policy` (named `policy_name`) other than counts
/// across workloads: its priority, its user and groups, adoption, and each replica's
/// requests and limits against the policy's bounds. Paths below `spec`.
pub fn check(
    workload: &Workload,
    policy_name: &str,
    policy: &ResourcePolicySpec,
) -> Vec<FieldError> {
    let namespace = namespace_of(workload);
    let rules = TenantRules::of(policy_name, policy, namespace);
    let spec = &workload.spec;
    let mut errors = Vec::new();
    if spec.priority > rules.max_priority.value {
        errors.push(FieldError {
            path: FieldPath::root().key("spec").key("priority"),
            message: format!(
                "{} is above {}, the highest ResourcePolicy {policy_name:?} allows namespace {namespace} {}",
                spec.priority,
                rules.max_priority.value,
                rules.max_priority.cite()
            ),
        });
    }
    if spec.command.is_some()
        && let Err(mut refused) = run_as(workload, &rules)
    {
        errors.append(&mut refused);
    }
    if let Some(adopt) = &spec.adopt {
        let path = FieldPath::root().key("spec").key("adopt");
        if !rules.adopt.value {
            errors.push(FieldError {
                path: path.clone(),
                message: format!(
                    "ResourcePolicy {policy_name:?} does not let namespace {namespace} adopt processes {}",
                    match &rules.adopt.from {
                        Some(from) => format!("({from} is false)"),
                        None => "(an administrator enables it with security.adopt.enabled)".to_string(),
                    }
                ),
            });
        } else if let Some(cgroup) = &adopt.cgroup_path
            && !rules.adopt_scope().allows_cgroup(cgroup)
        {
            errors.push(FieldError {
                path: path.key("cgroupPath"),
                message: format!(
                    "{cgroup:?} is not below a cgroup ResourcePolicy {policy_name:?} lets namespace {namespace} adopt from: {} {}",
                    if rules.cgroup_prefixes.value.is_empty() {
                        "none".to_string()
                    } else {
                        rules.cgroup_prefixes.value.join(", ")
                    },
                    rules.cgroup_prefixes.cite()
                ),
            });
        }
    }
    check_bounds(workload, policy_name, policy, &mut errors);
    errors
}

/// Each resolved request and limit within `replicaBounds`.
fn check_bounds(
    workload: &Workload,
    policy_name: &str,
    policy: &ResourcePolicySpec,
    errors: &mut Vec<FieldError>,
) {
    let Some(bounds) = &policy.replica_bounds else {
        return;
    };
    let min = amounts_or(bounds.min.as_ref(), 0);
    let max = amounts_or(bounds.max.as_ref(), i64::MAX);
    let demand = Demand::resolve(workload, policy);
    let resources = FieldPath::root().key("spec").key("resources");
    let given = |side: &str, kind: Kind| {
        let amounts = match side {
            "requests" => workload.spec.resources.requests.as_ref(),
            _ => workload.spec.resources.limits.as_ref(),
        };
        amounts.is_some_and(|a| match kind {
            Kind::Cpu => a.cpu.is_some(),
            Kind::Memory => a.memory.is_some(),
            Kind::Pids => a.pids.is_some(),
        })
    };
    let mut report = |side: &str, kind: Kind, value: i64, message: String| {
        let origin = if given(side, kind) {
            String::new()
        } else {
            " (from the policy's defaults)".to_string()
        };
        let shown = if value == i64::MAX {
            "no limit".to_string()
        } else {
            kind.format(value)
        };
        errors.push(FieldError {
            path: resources.key(side).key(kind.name()),
            message: format!("{shown}{origin} {message}"),
        });
    };
    for kind in Kind::ALL {
        let request = demand.request.get(kind);
        let limit = demand.limit.get(kind);
        let floor = min.get(kind);
        let ceiling = max.get(kind);
        if request < floor {
            report(
                "requests",
                kind,
                request,
                format!(
                    "is below {}, the least ResourcePolicy {policy_name:?} allows a replica (spec.replicaBounds.min.{})",
                    kind.format(floor),
                    kind.name()
                ),
            );
        }
        if ceiling != i64::MAX {
            if request > ceiling {
                report(
                    "requests",
                    kind,
                    request,
                    format!(
                        "is above {}, the most ResourcePolicy {policy_name:?} allows a replica (spec.replicaBounds.max.{})",
                        kind.format(ceiling),
                        kind.name()
                    ),
                );
            } else if limit > ceiling {
                report(
                    "limits",
                    kind,
                    limit,
                    format!(
                        "is above {}, the most ResourcePolicy {policy_name:?} allows a replica (spec.replicaBounds.max.{})",
                        kind.format(ceiling),
                        kind.name()
                    ),
                );
            }
        }
    }
}

/// A Workload refused for its tenant's count of Workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverQuota {
    /// The workload.
    pub workload: WorkloadRef,
    /// Why, for a person.
    pub message: String,
}

/// The Workloads beyond their tenant's `maxWorkloads`, given each workload with the name of
/// its governing policy (`None` when none governs it). Within a tenant and policy the oldest
/// Workloads (by `metadata.creationTimestamp`, then name) are admitted first, so a new one
/// never displaces one that runs.
pub fn over_quota(governed: &[(&Workload, Option<(&str, &ResourcePolicySpec)>)]) -> Vec<OverQuota> {
    let mut by_tenant: BTreeMap<(String, String), Vec<&Workload>> = BTreeMap::new();
    let mut specs: BTreeMap<&str, &ResourcePolicySpec> = BTreeMap::new();
    for (workload, policy) in governed {
        let Some((name, spec)) = policy else { continue };
        specs.insert(name, spec);
        let namespace = namespace_of(workload).to_string();
        by_tenant
            .entry(((*name).to_string(), namespace))
            .or_default()
            .push(workload);
    }
    let mut out = Vec::new();
    for ((policy, namespace), mut workloads) in by_tenant {
        let rules = TenantRules::of(&policy, specs[policy.as_str()], &namespace);
        let Some(max) = rules.max_workloads.value else {
            continue;
        };
        let max = usize::try_from(max).unwrap_or(0);
        if workloads.len() <= max {
            continue;
        }
        workloads.sort_by(|a, b| {
            let created = |w: &Workload| w.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (created(a).is_none(), created(a), &a.metadata.name).cmp(&(
                created(b).is_none(),
                created(b),
                &b.metadata.name,
            ))
        });
        for w in &workloads[max..] {
            out.push(OverQuota {
                workload: WorkloadRef::of(w),
                message: format!(
                    "namespace {namespace} may have at most {max} Workload(s) under ResourcePolicy {policy:?} {}, and has {}; the oldest are admitted first",
                    rules.max_workloads.cite(),
                    workloads.len()
                ),
            });
        }
    }
    out
}

/// Problems with a policy's own security settings: each tenant's (and `tenantDefaults`')
/// default user and group must be ones it allows, root only with `allowRoot`, and adopt
/// prefixes must not be the root cgroup. Paths below `spec`.
pub fn check_policy(spec: &ResourcePolicySpec) -> Vec<FieldError> {
    fn check(rules: &TenantRules, at: FieldPath, out: &mut Vec<FieldError>) {
        let who = "a tenant of this policy";
        for (setting, name, what, allowed) in [
            (
                &rules.run_as_user,
                "runAsUser",
                "user",
                &rules.allowed_users,
            ),
            (
                &rules.run_as_group,
                "runAsGroup",
                "group",
                &rules.allowed_groups,
            ),
        ] {
            if let Err(message) = rules.id_allowed(setting.value, what, allowed, who) {
                let path = setting
                    .from
                    .as_deref()
                    .map_or_else(|| at.key("security").key(name), FieldPath::parse);
                let origin = if setting.from.is_none() {
                    " (corral's default)"
                } else {
                    ""
                };
                out.push(FieldError {
                    path,
                    message: format!("the default{origin} {message}"),
                });
            }
        }
        if let Some(from) = &rules.cgroup_prefixes.from {
            for (i, prefix) in rules.cgroup_prefixes.value.iter().enumerate() {
                if prefix.split('/').all(|c| c.is_empty() || c == ".") {
                    out.push(FieldError {
                        path: FieldPath::parse(from).index(i),
                        message: "is the root cgroup, which holds every process of the node; name a cgroup below it".to_string(),
                    });
                }
            }
        }
    }
    let mut out = Vec::new();
    // A namespace no tenant entry names gets tenantDefaults alone.
    let unlisted = TenantRules::of("", spec, "");
    check(
        &unlisted,
        FieldPath::root().key("spec").key("tenantDefaults"),
        &mut out,
    );
    for (i, tenant) in spec.tenants.iter().enumerate() {
        let rules = TenantRules::of("", spec, &tenant.namespace);
        let before = out.len();
        check(
            &rules,
            FieldPath::root().key("spec").key("tenants").index(i),
            &mut out,
        );
        // What a tenant inherits from tenantDefaults was reported there, once.
        let own: Vec<FieldError> = out
            .drain(before..)
            .filter(|e| !e.path.as_str().starts_with("spec.tenantDefaults"))
            .collect();
        out.extend(own);
    }
    out.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
    out.dedup();
    out
}

/// Every admission problem of `workload` under whichever of `policies` governs it: a
/// `policyRef` to a policy that does not admit it, or what [`check`] finds. A missing or
/// ambiguous policy is the allocator's to report. Paths below `spec`.
pub fn check_governed(workload: &Workload, policies: &[&ResourcePolicy]) -> Vec<FieldError> {
    use super::govern::Governing;
    match super::govern::workload_policy(workload, policies) {
        Governing::Policy(p) => check(
            workload,
            p.metadata.name.as_deref().unwrap_or_default(),
            &p.spec,
        ),
        Governing::Default => check(
            workload,
            super::state::DEFAULT_POLICY,
            &ResourcePolicySpec::default(),
        ),
        Governing::NotAdmitted(p) => vec![FieldError {
            path: FieldPath::root().key("spec").key("policyRef").key("name"),
            message: super::state::not_admitted(p, workload)
                .trim_start_matches("spec.policyRef ")
                .to_string(),
        }],
        Governing::Missing(_) | Governing::Ambiguous(_) => Vec::new(),
    }
}

/// The governing policy's name and spec for each workload, as the allocator decides it
/// (`None` when no single policy governs it).
pub fn governed<'a>(
    workloads: &'a [Workload],
    policies: &'a [ResourcePolicy],
    default_spec: &'a ResourcePolicySpec,
) -> Vec<(&'a Workload, Option<(&'a str, &'a ResourcePolicySpec)>)> {
    let refs: Vec<&ResourcePolicy> = policies.iter().collect();
    workloads
        .iter()
        .map(|w| {
            let policy = match super::govern::workload_policy(w, &refs) {
                super::govern::Governing::Policy(p) => {
                    Some((p.metadata.name.as_deref().unwrap_or_default(), &p.spec))
                }
                super::govern::Governing::Default => {
                    Some((super::state::DEFAULT_POLICY, default_spec))
                }
                _ => None,
            };
            (w, policy)
        })
        .collect()
}

/// The highest priority `namespace` may use under `policy`: what [`TenantRules::of`] says,
/// without building the rest (the allocator asks this for every workload).
pub fn max_priority(policy: &ResourcePolicySpec, namespace: &str) -> i32 {
    policy
        .tenants
        .iter()
        .find(|t| t.namespace == namespace)
        .and_then(|t| t.settings.max_priority)
        .or_else(|| policy.tenant_defaults.as_ref().and_then(|d| d.max_priority))
        .unwrap_or(MAX_PRIORITY)
}

/// The most replicas `namespace` may have placed under `policy`, if bounded.
pub fn max_replicas(policy: &ResourcePolicySpec, namespace: &str) -> Option<i32> {
    policy
        .tenants
        .iter()
        .find(|t| t.namespace == namespace)
        .and_then(|t| t.settings.max_replicas)
        .or_else(|| policy.tenant_defaults.as_ref().and_then(|d| d.max_replicas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> ResourcePolicySpec {
        serde_json::from_value(spec).unwrap()
    }

    fn workload(ns: &str, spec: serde_json::Value) -> Workload {
        serde_json::from_value(
            json!({"apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "w", "namespace": ns}, "spec": spec}),
        )
        .unwrap()
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn a_tenant_entry_overrides_the_defaults_field_by_field() {
        let spec = policy(json!({
            "tenantDefaults": {"maxPriority": 100, "security": {"runAsUser": 2000, "runAsGroup": 2000,
                "allowedUsers": [{"min": 2000, "max": 2999}]}},
            "tenants": [{"namespace": "a", "maxPriority": 500, "security": {"runAsUser": 2100}}]
        }));
        let a = TenantRules::of("p", &spec, "a");
        assert_eq!(a.max_priority.value, 500);
        assert_eq!(
            a.max_priority.from.as_deref(),
            Some("spec.tenants[0].maxPriority")
        );
        assert_eq!(a.run_as_user.value, 2100);
        assert_eq!(a.run_as_group.value, 2000);
        assert_eq!(
            a.allowed_users.from.as_deref(),
            Some("spec.tenantDefaults.security.allowedUsers")
        );
        let b = TenantRules::of("p", &spec, "b");
        assert_eq!(b.max_priority.value, 100);
        assert_eq!(b.run_as_user.value, 2000);
        let none = TenantRules::of("p", &ResourcePolicySpec::default(), "c");
        assert_eq!(none.run_as_user.value, 65534);
        assert_eq!(
            none.allowed_users.value,
            vec![IdRange {
                min: 65534,
                max: 65534
            }]
        );
        assert!(!none.allow_root.value && !none.adopt.value);
        assert_eq!(none.max_priority.value, MAX_PRIORITY);
    }

    #[test]
    fn a_command_runs_as_the_default_user_or_an_allowed_one_never_root_unasked() {
        let spec = policy(json!({"tenants": [{"namespace": "a", "security": {
            "runAsUser": 2000, "runAsGroup": 2000,
            "allowedUsers": [{"min": 2000, "max": 2009}], "allowedGroups": [{"min": 2000, "max": 2000}, {"min": 0, "max": 0}]}}]}));
        let rules = TenantRules::of("p", &spec, "a");
        let plain = workload("a", json!({"command": {"args": ["x"]}}));
        assert_eq!(
            run_as(&plain, &rules).unwrap(),
            RunAs {
                uid: 2000,
                gid: 2000,
                groups: vec![]
            }
        );
        let other = workload(
            "a",
            json!({"command": {"args": ["x"], "securityContext": {"runAsUser": 2005}}}),
        );
        assert_eq!(run_as(&other, &rules).unwrap().uid, 2005);
        let root = workload(
            "a",
            json!({"command": {"args": ["x"], "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "supplementalGroups": [2000, 4]}}}),
        );
        assert_eq!(
            messages(&run_as(&root, &rules).unwrap_err()),
            [
                "spec.command.securityContext.runAsUser: user 0 is root, which namespace a under ResourcePolicy \"p\" may not use (allowRoot: true in the tenant's security allows it)",
                "spec.command.securityContext.runAsGroup: group 0 is root, which namespace a under ResourcePolicy \"p\" may not use (allowRoot: true in the tenant's security allows it)",
                "spec.command.securityContext.supplementalGroups[1]: group 4 is not one namespace a under ResourcePolicy \"p\" may use: it may use 2000, 0 (spec.tenants[0].security.allowedGroups)",
            ]
        );
        let elsewhere = TenantRules::of("p", &spec, "b");
        assert_eq!(run_as(&plain, &elsewhere).unwrap(), RunAs::default());
        let rooted = policy(json!({"tenantDefaults": {"security": {"allowRoot": true,
            "allowedUsers": [{"min": 0, "max": 0}]}}}));
        let rules = TenantRules::of("p", &rooted, "b");
        let root_user = workload(
            "b",
            json!({"command": {"args": ["x"], "securityContext": {"runAsUser": 0}}}),
        );
        assert_eq!(run_as(&root_user, &rules).unwrap().uid, 0);
    }

    #[test]
    fn priority_adoption_and_bounds_are_the_policys() {
        let spec = policy(json!({
            "tenantDefaults": {"maxPriority": 10},
            "tenants": [{"namespace": "ops", "security": {"adopt": {"enabled": true, "cgroupPrefixes": ["/system.slice/app"]}}}],
            "replicaBounds": {"min": {"cpu": "100m"}, "max": {"memory": "1Gi"}},
            "defaults": {"requests": {"cpu": "200m"}}
        }));
        let greedy = workload(
            "a",
            json!({"priority": 1000000000, "command": {"args": ["x"]},
            "resources": {"requests": {"cpu": "0"}, "limits": {"memory": "2Gi"}}}),
        );
        assert_eq!(
            messages(&check(&greedy, "p", &spec)),
            [
                "spec.priority: 1000000000 is above 10, the highest ResourcePolicy \"p\" allows namespace a (spec.tenantDefaults.maxPriority)",
                "spec.resources.requests.cpu: 0 is below 100m, the least ResourcePolicy \"p\" allows a replica (spec.replicaBounds.min.cpu)",
                "spec.resources.requests.memory: 2Gi (from the policy's defaults) is above 1Gi, the most ResourcePolicy \"p\" allows a replica (spec.replicaBounds.max.memory)",
            ]
        );
        let modest = workload("a", json!({"command": {"args": ["x"]}}));
        assert!(
            check(&modest, "p", &spec).is_empty(),
            "{:?}",
            check(&modest, "p", &spec)
        );
        let adopting = workload("a", json!({"adopt": {"pidFile": "/run/x.pid"}}));
        assert_eq!(
            messages(&check(&adopting, "p", &spec)),
            [
                "spec.adopt: ResourcePolicy \"p\" does not let namespace a adopt processes (an administrator enables it with security.adopt.enabled)"
            ]
        );
        let ops_inside = workload(
            "ops",
            json!({"adopt": {"cgroupPath": "/system.slice/app/worker"}}),
        );
        assert!(check(&ops_inside, "p", &spec).is_empty());
        let ops_outside = workload(
            "ops",
            json!({"adopt": {"cgroupPath": "/system.slice/application"}}),
        );
        assert_eq!(
            messages(&check(&ops_outside, "p", &spec)),
            [
                "spec.adopt.cgroupPath: \"/system.slice/application\" is not below a cgroup ResourcePolicy \"p\" lets namespace ops adopt from: /system.slice/app (spec.tenants[0].security.adopt.cgroupPrefixes)"
            ]
        );
    }

    #[test]
    fn the_oldest_workloads_fill_a_tenants_quota() {
        let spec = policy(json!({"tenantDefaults": {"maxWorkloads": 1}}));
        let mut old = workload("a", json!({"command": {"args": ["x"]}}));
        old.metadata.name = Some("zz-old".into());
        old.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        let new = workload("a", json!({"command": {"args": ["x"]}}));
        let other = workload("b", json!({"command": {"args": ["x"]}}));
        let governed = [
            (&new, Some(("p", &spec))),
            (&old, Some(("p", &spec))),
            (&other, Some(("p", &spec))),
        ];
        let over = over_quota(&governed);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].workload, "a/w");
        assert!(
            over[0].message.contains("at most 1 Workload(s)"),
            "{}",
            over[0].message
        );
    }

    #[test]
    fn a_policys_own_defaults_must_be_allowed() {
        let spec = policy(json!({
            "tenantDefaults": {"security": {"runAsUser": 0}},
            "tenants": [{"namespace": "a", "security": {"runAsUser": 5000, "allowedUsers": [{"min": 1, "max": 10}],
                "adopt": {"enabled": true, "cgroupPrefixes": ["/"]}}}]
        }));
        assert_eq!(
            messages(&check_policy(&spec)),
            [
                "spec.tenantDefaults.security.runAsUser: the default user 0 is root, which a tenant of this policy may not use (allowRoot: true in the tenant's security allows it)",
                "spec.tenants[0].security.adopt.cgroupPrefixes[0]: is the root cgroup, which holds every process of the node; name a cgroup below it",
                "spec.tenants[0].security.runAsUser: the default user 5000 is not one a tenant of this policy may use: it may use 1-10 (spec.tenants[0].security.allowedUsers)",
            ]
        );
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(is_below("/a/b", "/a"));
        assert!(is_below("/a", "/a/"));
        assert!(!is_below("/ab", "/a"));
        assert!(!is_below("/a", "/a/b"));
        assert!(!is_below("/a", "/"));
    }
}
