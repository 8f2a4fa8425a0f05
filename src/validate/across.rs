//! Checks across objects: no two with the same kind, namespace and name; every
//! `policyRef` names a policy; every workload and node has one governing policy.

use std::collections::{BTreeMap, HashMap};

use super::{Kind, Manifests, ObjectRef, Problem};
use crate::alloc::admit;
use crate::alloc::govern::{self, Governing};
use crate::alloc::selector;
use crate::api::ResourcePolicySpec;
use crate::source::files::Origin;
use crate::source::yaml::FieldPath;

/// An object seen in the manifests, valid or not, with where it starts.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The object.
    pub object: ObjectRef,
    /// Its file.
    pub origin: Origin,
    /// The line of its `metadata.name`.
    pub line: usize,
}

/// Adds the problems found across `seen` (every named object) and the valid objects.
pub fn check(seen: &[Seen], out: &mut Manifests) {
    duplicates(seen, out);
    let policy_names: Vec<&str> = seen
        .iter()
        .filter(|s| s.object.kind == Kind::ResourcePolicy)
        .filter_map(|s| s.object.name.as_deref())
        .collect();
    let policies: Vec<_> = out.policies.iter().map(|p| &p.object).collect();
    let default_spec = ResourcePolicySpec::default();
    let mut problems = Vec::new();
    for w in &out.workloads {
        let object = ObjectRef {
            kind: Kind::Workload,
            namespace: w.object.metadata.namespace.clone(),
            name: w.object.metadata.name.clone(),
        };
        let problem = |path: FieldPath, message: String| Problem {
            origin: w.origin.clone(),
            line: w.line_of(&path),
            object: Some(object.clone()),
            path,
            message,
        };
        match govern::workload_policy(&w.object, &policies) {
            // A policy that exists but is invalid has its own problems; do not add one here.
            Governing::Missing(name) if !policy_names.contains(&name) => problems.push(problem(
                FieldPath::root().key("spec").key("policyRef").key("name"),
                format!("ResourcePolicy {name:?} is not defined in the manifests given"),
            )),
            Governing::NotAdmitted(_) | Governing::Policy(_) | Governing::Default => {
                for e in admit::check_governed(&w.object, &policies) {
                    problems.push(problem(e.path, e.message));
                }
            }
            Governing::Ambiguous(tied) => {
                let names: Vec<String> = tied
                    .iter()
                    .map(|p| format!("{:?}", p.metadata.name.as_deref().unwrap_or_default()))
                    .collect();
                problems.push(problem(
                    FieldPath::root().key("spec"),
                    format!(
                        "governed by ResourcePolicies {} with the same precedence {}; set spec.policyRef or give one a higher precedence",
                        names.join(" and "),
                        tied[0].spec.precedence
                    ),
                ));
            }
            Governing::Missing(_) => {}
        }
    }
    let workloads: Vec<crate::api::Workload> =
        out.workloads.iter().map(|w| w.object.clone()).collect();
    let policy_objects: Vec<crate::api::ResourcePolicy> =
        out.policies.iter().map(|p| p.object.clone()).collect();
    for over in admit::over_quota(&admit::governed(&workloads, &policy_objects, &default_spec)) {
        if let Some(w) = out.workloads.iter().find(|w| over.workload.is(&w.object)) {
            let path = FieldPath::root().key("metadata").key("namespace");
            problems.push(Problem {
                origin: w.origin.clone(),
                line: w.line_of(&path),
                object: Some(ObjectRef {
                    kind: Kind::Workload,
                    namespace: w.object.metadata.namespace.clone(),
                    name: w.object.metadata.name.clone(),
                }),
                path,
                message: over.message,
            });
        }
    }
    // Two policies with the same precedence and the same node selector govern the same nodes,
    // and neither can say how much of a node is its own.
    let mut by_nodes: BTreeMap<(i32, String), Vec<usize>> = BTreeMap::new();
    for (i, p) in out.policies.iter().enumerate() {
        let nodes = if selector::is_empty(p.object.spec.node_selector.as_ref()) {
            String::new()
        } else {
            serde_json::to_string(&p.object.spec.node_selector).unwrap_or_default()
        };
        by_nodes
            .entry((p.object.spec.precedence, nodes))
            .or_default()
            .push(i);
    }
    for ((precedence, _), indices) in by_nodes {
        let first = &out.policies[indices[0]];
        for &i in &indices[1..] {
            let p = &out.policies[i];
            problems.push(Problem {
                origin: p.origin.clone(),
                line: p.line,
                object: Some(ObjectRef {
                    kind: Kind::ResourcePolicy,
                    namespace: None,
                    name: p.object.metadata.name.clone(),
                }),
                path: FieldPath::root().key("spec").key("nodeSelector"),
                message: format!(
                    "selects the same nodes as ResourcePolicy {:?} ({}:{}) with the same precedence {precedence}; change a nodeSelector or a precedence",
                    first.object.metadata.name.as_deref().unwrap_or_default(),
                    first.origin,
                    first.line
                ),
            });
        }
    }
    out.problems.extend(problems);
}

fn duplicates(seen: &[Seen], out: &mut Manifests) {
    let mut first: HashMap<&ObjectRef, &Seen> = HashMap::new();
    for s in seen.iter().filter(|s| s.object.name.is_some()) {
        match first.get(&s.object) {
            Some(original) => out.problems.push(Problem {
                origin: s.origin.clone(),
                line: s.line,
                object: Some(s.object.clone()),
                path: FieldPath::root().key("metadata").key("name"),
                message: format!(
                    "defined twice; first at {}:{}",
                    original.origin, original.line
                ),
            }),
            None => {
                first.insert(&s.object, s);
            }
        }
    }
}
