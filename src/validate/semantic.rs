//! Checks the schema cannot say: quantities in range and at a precision corral can apply,
//! paths that are absolute and cannot escape, regular expressions that compile, label
//! selectors that mean something. Pure functions over typed objects, shared by
//! `corral validate` and the controllers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::FieldError;
use crate::api::names::{
    DNS_LABEL_MESSAGE, absolute_path_problem, check_label_key, check_label_value, is_dns_label,
};
use crate::api::policy::ResourcePolicySpec;
use crate::api::quantity::Quantity;
use crate::api::workload::{AdoptRule, Command, WorkloadSpec};
use crate::api::{ResourceAmounts, ResourceRequirements};
use crate::source::yaml::FieldPath;

/// The largest compiled size of an adopt pattern; keeps a hostile pattern from costing much.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Every problem with a workload's spec, with paths below `spec`.
pub fn check_workload(spec: &WorkloadSpec) -> Vec<FieldError> {
    let mut out = Vec::new();
    let path = FieldPath::root().key("spec");
    check_requirements(&spec.resources, &path.key("resources"), &mut out);
    check_selector_map(
        &spec.placement.node_selector,
        &path.key("placement").key("nodeSelector"),
        &mut out,
    );
    if let Some(command) = &spec.command {
        check_command(command, &path.key("command"), &mut out);
    }
    if let Some(adopt) = &spec.adopt {
        check_adopt(adopt, &path.key("adopt"), &mut out);
    }
    if let Some(policy) = &spec.policy_ref
        && !is_dns_label(&policy.name)
    {
        push(
            &mut out,
            &path.key("policyRef").key("name"),
            DNS_LABEL_MESSAGE,
        );
    }
    out
}

/// Every problem with a policy's spec, with paths below `spec`.
pub fn check_policy(spec: &ResourcePolicySpec) -> Vec<FieldError> {
    let mut out = Vec::new();
    let path = FieldPath::root().key("spec");
    if let Some(selector) = &spec.node_selector {
        check_label_selector(selector, &path.key("nodeSelector"), &mut out);
    }
    if let Some(selector) = &spec.workload_selector {
        check_label_selector(selector, &path.key("workloadSelector"), &mut out);
    }
    for (i, namespace) in spec.namespaces.iter().enumerate() {
        if !is_dns_label(namespace) {
            push(
                &mut out,
                &path.key("namespaces").index(i),
                DNS_LABEL_MESSAGE,
            );
        }
    }
    check_amounts(&spec.reserved, &path.key("reserved"), &mut out);
    for (i, tenant) in spec.tenants.iter().enumerate() {
        let tenant_path = path.key("tenants").index(i);
        if !is_dns_label(&tenant.namespace) {
            push(&mut out, &tenant_path.key("namespace"), DNS_LABEL_MESSAGE);
        }
        if let Some(guarantee) = &tenant.guarantee {
            check_amounts(guarantee, &tenant_path.key("guarantee"), &mut out);
        }
        if let Some(limit) = &tenant.limit {
            check_amounts(limit, &tenant_path.key("limit"), &mut out);
        }
        if let (Some(guarantee), Some(limit)) = (&tenant.guarantee, &tenant.limit) {
            check_at_least(
                guarantee,
                limit,
                "guarantee",
                &tenant_path.key("limit"),
                &mut out,
            );
        }
    }
    if let Some(defaults) = &spec.defaults {
        check_requirements(defaults, &path.key("defaults"), &mut out);
    }
    if let Some(bounds) = &spec.replica_bounds {
        let bounds_path = path.key("replicaBounds");
        if let Some(min) = &bounds.min {
            check_amounts(min, &bounds_path.key("min"), &mut out);
        }
        if let Some(max) = &bounds.max {
            check_amounts(max, &bounds_path.key("max"), &mut out);
        }
        if let (Some(min), Some(max)) = (&bounds.min, &bounds.max) {
            check_at_least(min, max, "min", &bounds_path.key("max"), &mut out);
            if let (Some(floor), Some(ceiling)) = (min.pids, max.pids)
                && ceiling < floor
            {
                push(
                    &mut out,
                    &bounds_path.key("max").key("pids"),
                    format!("must be at least min.pids ({floor}), not {ceiling}"),
                );
            }
        }
    }
    for (i, prefix) in spec
        .tenant_defaults
        .iter()
        .filter_map(|d| d.security.as_ref()?.adopt.as_ref())
        .flat_map(|a| a.cgroup_prefixes.iter())
        .enumerate()
    {
        check_absolute(
            prefix,
            &path
                .key("tenantDefaults")
                .key("security")
                .key("adopt")
                .key("cgroupPrefixes")
                .index(i),
            &mut out,
        );
    }
    for (t, tenant) in spec.tenants.iter().enumerate() {
        let prefixes = tenant
            .settings
            .security
            .as_ref()
            .and_then(|s| s.adopt.as_ref())
            .map(|a| a.cgroup_prefixes.as_slice())
            .unwrap_or_default();
        for (i, prefix) in prefixes.iter().enumerate() {
            check_absolute(
                prefix,
                &path
                    .key("tenants")
                    .index(t)
                    .key("security")
                    .key("adopt")
                    .key("cgroupPrefixes")
                    .index(i),
                &mut out,
            );
        }
    }
    let log_size = path.key("logs").key("maxSize");
    match spec.logs.max_size.units() {
        Ok(bytes) if (MIN_LOG_SIZE..=MAX_LOG_SIZE).contains(&bytes) => {}
        Ok(_) => push(
            &mut out,
            &log_size,
            format!(
                "{:?} must be between 4Ki and 1Gi",
                spec.logs.max_size.as_str()
            ),
        ),
        Err(e) => push(
            &mut out,
            &log_size,
            format!("{:?} {e}", spec.logs.max_size.as_str()),
        ),
    }
    out.extend(crate::alloc::admit::check_policy(spec));
    out
}

/// The smallest log file size a policy may set: a rotation per few lines would cost more
/// than it keeps.
pub const MIN_LOG_SIZE: i64 = 4 << 10;
/// The largest log file size a policy may set.
pub const MAX_LOG_SIZE: i64 = 1 << 30;

fn check_requirements(req: &ResourceRequirements, path: &FieldPath, out: &mut Vec<FieldError>) {
    if let Some(requests) = &req.requests {
        check_amounts(requests, &path.key("requests"), out);
    }
    if let Some(limits) = &req.limits {
        check_amounts(limits, &path.key("limits"), out);
    }
}

/// CPU must be whole millicores, memory whole bytes, both within `i64`.
pub fn check_amounts(amounts: &ResourceAmounts, path: &FieldPath, out: &mut Vec<FieldError>) {
    if let Some(cpu) = &amounts.cpu {
        check_quantity(cpu, Quantity::millis, &path.key("cpu"), out);
    }
    if let Some(memory) = &amounts.memory {
        check_quantity(memory, Quantity::units, &path.key("memory"), out);
    }
}

/// `limit` must be at least `floor` (named `floor_name`) in cpu and memory. The CRD cannot
/// say this for tenants: a CEL rule comparing quantities in a list exceeds the apiserver's
/// cost budget, so the API server accepts such a policy and corral refuses it.
fn check_at_least(
    floor: &ResourceAmounts,
    limit: &ResourceAmounts,
    floor_name: &str,
    path: &FieldPath,
    out: &mut Vec<FieldError>,
) {
    type Convert = fn(&Quantity) -> Result<i64, crate::api::quantity::QuantityError>;
    let pairs: [(&str, Convert, _, _); 2] = [
        ("cpu", Quantity::millis, &floor.cpu, &limit.cpu),
        ("memory", Quantity::units, &floor.memory, &limit.memory),
    ];
    for (name, convert, floor, limit) in pairs {
        if let (Some(floor), Some(limit)) = (floor, limit)
            && let (Ok(f), Ok(l)) = (convert(floor), convert(limit))
            && l < f
        {
            push(
                out,
                &path.key(name),
                format!("must be at least {floor_name}.{name} ({floor}), not {limit}"),
            );
        }
    }
}

fn check_quantity(
    q: &Quantity,
    convert: fn(&Quantity) -> Result<i64, crate::api::quantity::QuantityError>,
    path: &FieldPath,
    out: &mut Vec<FieldError>,
) {
    if let Err(e) = convert(q) {
        push(out, path, format!("{:?} {e}", q.as_str()));
    }
}

fn check_command(command: &Command, path: &FieldPath, out: &mut Vec<FieldError>) {
    for (i, arg) in command.args.iter().enumerate() {
        if arg.contains('\0') {
            push(
                out,
                &path.key("args").index(i),
                "must not contain a NUL byte",
            );
        }
    }
    for (i, var) in command.env.iter().enumerate() {
        if var.value.contains('\0') {
            push(
                out,
                &path.key("env").index(i).key("value"),
                "must not contain a NUL byte",
            );
        }
    }
    if let Some(dir) = &command.working_dir {
        check_absolute(dir, &path.key("workingDir"), out);
    }
}

fn check_adopt(adopt: &AdoptRule, path: &FieldPath, out: &mut Vec<FieldError>) {
    if let Some(cgroup) = &adopt.cgroup_path {
        check_absolute(cgroup, &path.key("cgroupPath"), out);
    }
    if let Some(pid_file) = &adopt.pid_file {
        check_absolute(pid_file, &path.key("pidFile"), out);
    }
    if let Some(pattern) = &adopt.command_pattern {
        let compiled = regex::RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build();
        if let Err(e) = compiled {
            let reason = e.to_string();
            let reason = reason.lines().last().unwrap_or("invalid").trim();
            push(
                out,
                &path.key("commandPattern"),
                format!("is not a valid regular expression: {reason}"),
            );
        }
    }
}

/// An absolute path with no `.` or `..` components and no NUL byte.
fn check_absolute(p: &str, path: &FieldPath, out: &mut Vec<FieldError>) {
    if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == ".." || c == ".") {
        push(out, path, absolute_path_problem(p));
    }
}

fn check_selector_map(
    labels: &BTreeMap<String, String>,
    path: &FieldPath,
    out: &mut Vec<FieldError>,
) {
    for (key, value) in labels {
        if let Err(e) = check_label_key(key).and_then(|()| check_label_value(value)) {
            push(out, &path.key(key), e);
        }
    }
}

fn check_label_selector(selector: &LabelSelector, path: &FieldPath, out: &mut Vec<FieldError>) {
    if let Some(labels) = &selector.match_labels {
        check_selector_map(labels, &path.key("matchLabels"), out);
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let expr_path = path.key("matchExpressions").index(i);
        if let Err(e) = check_label_key(&expr.key) {
            push(out, &expr_path.key("key"), e);
        }
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => push(
                out,
                &expr_path.key("values"),
                format!("must not be empty for operator {}", expr.operator),
            ),
            "In" | "NotIn" => {
                for (j, value) in values.iter().enumerate() {
                    if let Err(e) = check_label_value(value) {
                        push(out, &expr_path.key("values").index(j), e);
                    }
                }
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => push(
                out,
                &expr_path.key("values"),
                format!("must be empty for operator {}", expr.operator),
            ),
            "Exists" | "DoesNotExist" => {}
            other => push(
                out,
                &expr_path.key("operator"),
                format!(
                    "unsupported operator {other:?}; supported: In, NotIn, Exists, DoesNotExist"
                ),
            ),
        }
    }
}

fn push(out: &mut Vec<FieldError>, path: &FieldPath, message: impl Into<String>) {
    out.push(FieldError {
        path: path.clone(),
        message: message.into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload_messages(spec: serde_json::Value) -> Vec<String> {
        let spec: WorkloadSpec = serde_json::from_value(spec).unwrap();
        check_workload(&spec)
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn quantities_out_of_range_or_too_precise() {
        let spec = json!({"command": {"args": ["x"]}, "resources": {
            "requests": {"cpu": "0.0001", "memory": "1e400"},
            "limits": {"cpu": "1e400", "memory": "0.5"}}});
        assert_eq!(
            workload_messages(spec),
            [
                "spec.resources.requests.cpu: \"0.0001\" is more precise than 1m",
                "spec.resources.requests.memory: \"1e400\" is too large",
                "spec.resources.limits.cpu: \"1e400\" is too large",
                "spec.resources.limits.memory: \"0.5\" is more precise than 1",
            ]
        );
    }

    #[test]
    fn commands_and_adopt_paths() {
        let spec = json!({"command": {"args": ["", "a\u{0}b"], "workingDir": "tmp"}});
        assert_eq!(
            workload_messages(spec),
            [
                // An empty program is the CRD's CEL rule's to refuse (src/validate/cel.rs).
                "spec.command.args[1]: must not contain a NUL byte",
                "spec.command.workingDir: \"tmp\" must be an absolute path",
            ]
        );
        let spec = json!({"adopt": {"cgroupPath": "/a/../../etc", "commandPattern": "(unclosed"}});
        assert_eq!(
            workload_messages(spec),
            [
                "spec.adopt.cgroupPath: \"/a/../../etc\" must not contain '.' or '..' components",
                "spec.adopt.commandPattern: is not a valid regular expression: error: unclosed group",
            ]
        );
    }

    #[test]
    fn selectors_and_references() {
        let spec = json!({"command": {"args": ["x"]}, "placement": {"nodeSelector": {"bad key": "v", "zone": "a b"}},
            "policyRef": {"name": "../gold"}});
        let messages = workload_messages(spec);
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].starts_with("spec.placement.nodeSelector[bad key]: key \"bad key\""));
        assert!(messages[1].starts_with("spec.placement.nodeSelector.zone: value \"a b\""));
        assert_eq!(
            messages[2],
            format!("spec.policyRef.name: {DNS_LABEL_MESSAGE}")
        );
    }

    #[test]
    fn a_tenant_limit_below_its_guarantee_is_refused() {
        let spec: ResourcePolicySpec = serde_json::from_value(json!({"tenants": [
            {"namespace": "a", "guarantee": {"cpu": "2", "memory": "1Gi"}, "limit": {"cpu": "1500m", "memory": "2Gi"}},
            {"namespace": "b", "guarantee": {"memory": "1Gi"}, "limit": {"memory": "512Mi"}},
            {"namespace": "c", "guarantee": {"cpu": 1}, "limit": {"cpu": "1000m"}},
        ]}))
        .unwrap();
        let messages: Vec<String> = check_policy(&spec)
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(
            messages,
            [
                "spec.tenants[0].limit.cpu: must be at least guarantee.cpu (2), not 1500m",
                "spec.tenants[1].limit.memory: must be at least guarantee.memory (1Gi), not 512Mi",
            ]
        );
    }

    #[test]
    fn policy_selectors_and_tenants() {
        let spec: ResourcePolicySpec = serde_json::from_value(json!({
            "nodeSelector": {"matchExpressions": [
                {"key": "zone", "operator": "In"},
                {"key": "gpu", "operator": "Exists", "values": ["x"]},
                {"key": "os", "operator": "Like", "values": ["linux"]}]},
            "namespaces": ["Team-A"],
            "tenants": [{"namespace": "a", "guarantee": {"cpu": "1e400"}}],
        }))
        .unwrap();
        let messages: Vec<String> = check_policy(&spec)
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(
            messages,
            [
                "spec.nodeSelector.matchExpressions[0].values: must not be empty for operator In",
                "spec.nodeSelector.matchExpressions[1].values: must be empty for operator Exists",
                "spec.nodeSelector.matchExpressions[2].operator: unsupported operator \"Like\"; supported: In, NotIn, Exists, DoesNotExist",
                &format!("spec.namespaces[0]: {DNS_LABEL_MESSAGE}"),
                "spec.tenants[0].guarantee.cpu: \"1e400\" is too large",
            ]
        );
    }
}
