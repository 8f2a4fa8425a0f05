//! Which ResourcePolicy governs a workload, and which governs a node.

use crate::api::{ResourcePolicy, Workload};

use super::admit;

/// The policy that governs a workload.
#[derive(Debug, PartialEq)]
pub enum Governing<'a> {
    /// This policy.
    Policy(&'a ResourcePolicy),
    /// No policy matches: the built-in default applies.
    Default,
    /// `spec.policyRef` names a policy that does not exist.
    Missing(&'a str),
    /// `spec.policyRef` names a policy whose `namespaces` or `workloadSelector` do not take
    /// in the workload: a tenant cannot reach a policy meant for others.
    NotAdmitted(&'a ResourcePolicy),
    /// Several policies match with the same, highest precedence.
    Ambiguous(Vec<&'a ResourcePolicy>),
}

/// The policy that governs `workload`: the one its `policyRef` names, provided that policy
/// matches it, else the matching policy of highest precedence (matching: its namespaces
/// include the workload's and its workload selector selects the workload's labels).
pub fn workload_policy<'a>(
    workload: &'a Workload,
    policies: &[&'a ResourcePolicy],
) -> Governing<'a> {
    if let Some(reference) = &workload.spec.policy_ref {
        return policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(reference.name.as_str()))
            .map_or(Governing::Missing(&reference.name), |p| {
                if admit::admits(&p.spec, workload) {
                    Governing::Policy(p)
                } else {
                    Governing::NotAdmitted(p)
                }
            });
    }
    let matching: Vec<&ResourcePolicy> = policies
        .iter()
        .copied()
        .filter(|p| admit::admits(&p.spec, workload))
        .collect();
    highest(matching).map_or(Governing::Default, |mut top| {
        if top.len() == 1 {
            Governing::Policy(top.remove(0))
        } else {
            Governing::Ambiguous(top)
        }
    })
}

/// The policies of highest precedence among `candidates`, sorted by name; `None` if empty.
pub fn highest(candidates: Vec<&ResourcePolicy>) -> Option<Vec<&ResourcePolicy>> {
    let top = candidates.iter().map(|p| p.spec.precedence).max()?;
    let mut best: Vec<&ResourcePolicy> = candidates
        .into_iter()
        .filter(|p| p.spec.precedence == top)
        .collect();
    best.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, spec: serde_json::Value) -> ResourcePolicy {
        serde_json::from_value(
            json!({"apiVersion": "corral.dev/v1alpha1", "kind": "ResourcePolicy",
            "metadata": {"name": name}, "spec": spec}),
        )
        .unwrap()
    }

    fn workload(ns: &str, labels: serde_json::Value, spec: serde_json::Value) -> Workload {
        serde_json::from_value(
            json!({"apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "w", "namespace": ns, "labels": labels}, "spec": spec}),
        )
        .unwrap()
    }

    fn name<'a>(g: &Governing<'a>) -> String {
        match g {
            Governing::Policy(p) => p.metadata.name.clone().unwrap(),
            Governing::Default => "default".into(),
            Governing::Missing(n) => format!("missing {n}"),
            Governing::NotAdmitted(p) => {
                format!("not admitted by {}", p.metadata.name.clone().unwrap())
            }
            Governing::Ambiguous(ps) => format!(
                "ambiguous {}",
                ps.iter()
                    .map(|p| p.metadata.name.clone().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    #[test]
    fn reference_then_precedence_then_default() {
        let gold = policy("gold", json!({"namespaces": ["a"], "precedence": 5}));
        let all = policy("all", json!({}));
        let batch = policy(
            "batch",
            json!({"workloadSelector": {"matchLabels": {"tier": "batch"}}, "precedence": 1}),
        );
        let policies = [&gold, &all, &batch];
        let spec = json!({"command": {"args": ["x"]}});
        assert_eq!(
            name(&workload_policy(
                &workload("a", json!({}), spec.clone()),
                &policies
            )),
            "gold"
        );
        assert_eq!(
            name(&workload_policy(
                &workload("b", json!({}), spec.clone()),
                &policies
            )),
            "all"
        );
        assert_eq!(
            name(&workload_policy(
                &workload("b", json!({"tier": "batch"}), spec.clone()),
                &policies
            )),
            "batch"
        );
        assert_eq!(
            name(&workload_policy(
                &workload("b", json!({}), spec.clone()),
                &[&gold]
            )),
            "default"
        );
        let referenced = json!({"command": {"args": ["x"]}, "policyRef": {"name": "all"}});
        assert_eq!(
            name(&workload_policy(
                &workload("a", json!({}), referenced),
                &policies
            )),
            "all"
        );
        let elsewhere = json!({"command": {"args": ["x"]}, "policyRef": {"name": "gold"}});
        assert_eq!(
            name(&workload_policy(
                &workload("b", json!({}), elsewhere),
                &policies
            )),
            "not admitted by gold",
            "a policy for namespace a cannot be named from namespace b"
        );
        let missing = json!({"command": {"args": ["x"]}, "policyRef": {"name": "nope"}});
        assert_eq!(
            name(&workload_policy(
                &workload("a", json!({}), missing),
                &policies
            )),
            "missing nope"
        );
    }

    #[test]
    fn equal_precedence_is_ambiguous() {
        let x = policy("x", json!({}));
        let y = policy("y", json!({"namespaces": ["a"]}));
        let spec = json!({"command": {"args": ["x"]}});
        assert_eq!(
            name(&workload_policy(&workload("a", json!({}), spec), &[&y, &x])),
            "ambiguous x,y"
        );
    }
}
