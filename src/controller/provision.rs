//! Which nodes the leading controller gives znodes of their own, and with which agent ids:
//! the nodes the identities file names, the nodes that already have znodes (after a
//! failover, or an older corral's layout), and the agents that ask to join. Pure; the
//! controller loop ([`super::cluster`]) provisions what this decides.
//!
//! A join request is only a name: anyone who reaches ZooKeeper may make one. Serving it
//! gives the name's znodes to the ids the identities file gives that name, so a forged
//! request provisions znodes only the real node's identity can use. The work is bounded:
//! names that are not DNS subdomains, and names the file gives no ids, are ignored; at
//! most [`JOINS_PER_PASS`] requests are served per pass.

use std::collections::BTreeSet;

use crate::lease::acl::AclId;
use crate::lease::identities::AgentIdentities;
use crate::source::nodes::is_node_name;

/// The most join requests served in one pass; the rest wait for the next, a second later.
pub const JOINS_PER_PASS: usize = 32;

/// What to do with the join requests found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinPlan {
    /// Nodes to provision now, with their agents' ids, then to remove the request of.
    pub serve: Vec<(String, Vec<AclId>)>,
    /// Requests left alone (they go with their agent's session), with the reason.
    pub ignored: Vec<(String, &'static str)>,
    /// Requests to serve in a later pass.
    pub deferred: usize,
}

/// Plans the join `requests`. `open`: the controller has no identity, and gives the
/// requested znodes to anyone.
pub fn plan_joins(
    requests: &[String],
    identities: &AgentIdentities,
    open: bool,
    cap: usize,
) -> JoinPlan {
    let mut plan = JoinPlan::default();
    for name in requests {
        if !is_node_name(name) {
            plan.ignored.push((name.clone(), "not a node name"));
            continue;
        }
        let ids = match (open, identities.ids_for(name)) {
            (true, _) => Vec::new(),
            (false, Some(ids)) => ids,
            (false, None) => {
                plan.ignored
                    .push((name.clone(), "the agent identities file gives it no ids"));
                continue;
            }
        };
        if plan.serve.len() < cap {
            plan.serve.push((name.clone(), ids));
        } else {
            plan.deferred += 1;
        }
    }
    plan
}

/// The nodes to provision when a controller starts to lead: those with znodes already
/// (`known`) and those the identities file names, each with the ids the file gives it
/// (none: then only the controller's identity may use them).
pub fn known_nodes(
    known: BTreeSet<String>,
    identities: &AgentIdentities,
) -> Vec<(String, Vec<AclId>)> {
    let mut names = known;
    names.extend(identities.named_nodes().map(String::from));
    names
        .into_iter()
        .filter(|name| is_node_name(name))
        .map(|name| {
            let ids = identities.ids_for(&name).unwrap_or_default();
            (name, ids)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities() -> AgentIdentities {
        AgentIdentities::parse(
            "ids.yaml",
            "node-a: [\"digest:node-a:D/InIHSb7yEEbrWz8b9l71RjZJU=\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn only_named_nodes_are_served_and_bad_names_ignored() {
        let requests = ["node-a", "node-b", "../x", "Bad_Name"].map(String::from);
        let plan = plan_joins(&requests, &identities(), false, 10);
        assert_eq!(plan.serve.len(), 1);
        assert_eq!(plan.serve[0].0, "node-a");
        assert_eq!(
            plan.ignored
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["node-b", "../x", "Bad_Name"]
        );
        assert_eq!(
            plan.ignored[0].1,
            "the agent identities file gives it no ids"
        );
    }

    #[test]
    fn a_certificate_per_node_serves_any_name_bound_to_its_own_subject() {
        let ids = AgentIdentities::parse("f", "\"*\": [\"x509:CN={node},O=agents\"]").unwrap();
        let plan = plan_joins(&["fake".to_string()], &ids, false, 10);
        assert_eq!(
            plan.serve[0].1[0].to_acl_string(),
            "x509:CN=fake,O=agents",
            "a forged request gets znodes only the real node's certificate can use"
        );
    }

    #[test]
    fn the_work_per_pass_is_capped() {
        let ids = AgentIdentities::parse("f", "\"*\": [\"x509:CN={node}\"]").unwrap();
        let requests: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let plan = plan_joins(&requests, &ids, false, JOINS_PER_PASS);
        assert_eq!(plan.serve.len(), JOINS_PER_PASS);
        assert_eq!(plan.deferred, 100 - JOINS_PER_PASS);
    }

    #[test]
    fn open_mode_serves_any_node_name() {
        let plan = plan_joins(&["n1".to_string()], &AgentIdentities::default(), true, 10);
        assert_eq!(plan.serve, [("n1".to_string(), Vec::new())]);
    }

    #[test]
    fn known_and_named_nodes_are_provisioned_with_their_ids() {
        let nodes = known_nodes(BTreeSet::from(["old".to_string()]), &identities());
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].0, "node-a");
        assert_eq!(nodes[0].1.len(), 1);
        assert_eq!(nodes[1], ("old".to_string(), Vec::new()));
    }
}
