//! The agents' identities, as the controller learns them from the file of
//! `--agent-identities`: a YAML map from a node's name, or `"*"` for any node, to the ACL
//! ids its agent authenticates as. `{node}` in an id stands for the node's name.
//!
//! ```yaml
//! "*": ["x509:CN={node},O=corral-agents"]     # a certificate per node
//! node-a: ["digest:node-a:QmX5...="]           # a digest per node (corral zk digest)
//! ```
//!
//! An explicit entry wins over `"*"`. A `"*"` entry without `{node}` gives every agent the
//! same identity: any agent may then read every node's leases and register as any node,
//! the weakest choice.

use std::collections::BTreeMap;
use std::path::Path;

use super::acl::AclId;
use crate::source::nodes::is_node_name;
use crate::source::yaml::{self, FieldPath};

/// The key that stands for any node.
pub const ANY_NODE: &str = "*";

/// What the identities file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentIdentities {
    nodes: BTreeMap<String, Vec<AclId>>,
    any: Option<Vec<AclId>>,
}

/// A file refused, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct IdentitiesError {
    /// Each problem, as `FILE:LINE: KEY[i]: what is wrong`.
    pub problems: Vec<String>,
}

impl AgentIdentities {
    /// Reads the identities file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or any entry is malformed (every problem is listed).
    pub fn from_file(path: &Path) -> Result<AgentIdentities, IdentitiesError> {
        let text = std::fs::read_to_string(path).map_err(|e| IdentitiesError {
            problems: vec![format!("{}: cannot read: {e}", path.display())],
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses the text of an identities file named `origin`.
    ///
    /// # Errors
    /// As [`AgentIdentities::from_file`].
    pub fn parse(origin: &str, text: &str) -> Result<AgentIdentities, IdentitiesError> {
        let refuse = |problems| Err(IdentitiesError { problems });
        let docs = match yaml::parse_stream(text) {
            Ok(docs) => docs,
            Err(e) => {
                return refuse(vec![format!(
                    "{origin}:{}: invalid YAML: {}",
                    e.line, e.message
                )]);
            }
        };
        let [doc] = docs.as_slice() else {
            return refuse(vec![format!(
                "{origin}: expected one YAML document mapping node names (or \"*\") to lists \
                 of ACL ids, found {} documents",
                docs.len()
            )]);
        };
        let at = |path: &FieldPath, message: &str| {
            format!("{origin}:{}: {path}: {message}", doc.lines.line_of(path))
        };
        let Some(map) = doc.value.as_object() else {
            return refuse(vec![format!(
                "{origin}:1: expected a mapping from node names (or \"*\") to lists of ACL ids"
            )]);
        };
        let mut problems = Vec::new();
        let mut identities = AgentIdentities::default();
        for (key, value) in map {
            let path = FieldPath::root().key(key);
            if key != ANY_NODE && !is_node_name(key) {
                problems.push(at(
                    &path,
                    "not a node name (a DNS subdomain: lowercase letters, digits, '-' and '.') \
                     nor \"*\"",
                ));
                continue;
            }
            let Some(items) = value.as_array().filter(|items| !items.is_empty()) else {
                problems.push(at(&path, "expected a non-empty list of ACL ids"));
                continue;
            };
            let mut ids = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let path = path.index(i);
                let Some(text) = item.as_str() else {
                    problems.push(at(&path, "expected a string such as x509:CN={node}"));
                    continue;
                };
                if key != ANY_NODE && text.contains("{node}") {
                    problems.push(at(&path, "{node} is only for the \"*\" entry"));
                    continue;
                }
                match AclId::parse(text) {
                    Ok(id) => ids.push(id),
                    Err(e) => problems.push(at(&path, &e)),
                }
            }
            if key == ANY_NODE {
                identities.any = Some(ids);
            } else {
                identities.nodes.insert(key.clone(), ids);
            }
        }
        if problems.is_empty() {
            Ok(identities)
        } else {
            refuse(problems)
        }
    }

    /// The ids of `node`'s agent: its own entry, else the `"*"` entry with `{node}`
    /// replaced; `None` when the file gives it none (it is then never provisioned).
    pub fn ids_for(&self, node: &str) -> Option<Vec<AclId>> {
        match (self.nodes.get(node), &self.any) {
            (Some(ids), _) => Some(ids.clone()),
            (None, Some(any)) => Some(any.iter().map(|id| id.for_node(node)).collect()),
            (None, None) => None,
        }
    }

    /// The nodes named in the file, which the controller provisions from the start.
    pub fn named_nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// True when a `"*"` entry gives every other node one identity (no `{node}` in it).
    pub fn shared(&self) -> bool {
        self.any
            .as_ref()
            .is_some_and(|ids| ids.iter().all(|id| id.for_node("a") == id.for_node("b")))
    }

    /// True when the file names nobody.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.any.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "D/InIHSb7yEEbrWz8b9l71RjZJU=";

    #[test]
    fn per_node_certificates_and_digests() {
        let text = format!(
            "\"*\": [\"x509:CN={{node}},O=corral-agents\"]\nnode-a: [\"digest:node-a:{HASH}\"]\n"
        );
        let ids = AgentIdentities::parse("ids.yaml", &text).unwrap();
        assert_eq!(
            ids.ids_for("node-b").unwrap()[0].to_acl_string(),
            "x509:CN=node-b,O=corral-agents"
        );
        assert_eq!(
            ids.ids_for("node-a").unwrap()[0].to_acl_string(),
            format!("digest:node-a:{HASH}"),
            "an explicit entry wins over \"*\""
        );
        assert_eq!(ids.named_nodes().collect::<Vec<_>>(), ["node-a"]);
        assert!(!ids.shared());
    }

    #[test]
    fn without_a_star_only_named_nodes_have_identities() {
        let ids = AgentIdentities::parse("f", &format!("node-a: [\"digest:a:{HASH}\"]")).unwrap();
        assert!(ids.ids_for("node-b").is_none());
    }

    #[test]
    fn one_identity_for_every_agent_is_flagged_shared() {
        let ids =
            AgentIdentities::parse("f", &format!("\"*\": [\"digest:agents:{HASH}\"]")).unwrap();
        assert!(ids.shared());
        assert_eq!(ids.ids_for("x"), ids.ids_for("y"));
    }

    #[test]
    fn every_problem_is_named_with_file_line_and_entry() {
        let text = "\
node-a: [\"digest:node-a:hunter2\"]
Node_B: [\"x509:CN=b\"]
node-c: []
node-d: [\"x509:CN={node}\"]
\"*\": [\"ip:10.0.0.1\"]
";
        let error = AgentIdentities::parse("ids.yaml", text).unwrap_err();
        let problems = error.problems;
        assert_eq!(problems.len(), 5, "{problems:#?}");
        let find = |needle: &str| {
            problems
                .iter()
                .find(|p| p.contains(needle))
                .unwrap_or_else(|| panic!("no problem about {needle}: {problems:#?}"))
                .clone()
        };
        assert!(find("node-a[0]").starts_with("ids.yaml:1: node-a[0]: digest id"));
        assert!(
            !find("node-a[0]").contains("hunter2"),
            "a password is never echoed"
        );
        assert!(find("Node_B").starts_with("ids.yaml:2: "));
        assert!(find("node-c").starts_with("ids.yaml:3: node-c: expected a non-empty list"));
        assert!(find("node-d[0]").contains("only for the \"*\" entry"));
        assert!(find("[*][0]").starts_with("ids.yaml:5: "));
    }

    #[test]
    fn not_a_mapping_is_refused() {
        let error = AgentIdentities::parse("ids.yaml", "- a\n- b\n").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("ids.yaml:1: expected a mapping")
        );
        let error = AgentIdentities::parse("ids.yaml", "a: [\n").unwrap_err();
        assert!(error.to_string().contains("invalid YAML"), "{error}");
    }
}
