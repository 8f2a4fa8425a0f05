//! Who a workload and a replica are: [`WorkloadRef`] (`namespace/name`) and [`ReplicaKey`]
//! (`namespace.name.index`, the lease key). Every layer names workloads with these two, and
//! the namespace defaults to [`DEFAULT_NAMESPACE`] in one place only, [`WorkloadRef::of`].
//!
//! Guarantees:
//! - the text forms round-trip: `WorkloadRef::from_str(&r.to_string()) == Ok(r)`, and the
//!   same for replica keys;
//! - parsing accepts only DNS-1123 labels for namespace and name, so a parsed reference can
//!   never form a path (cgroup directories and znodes are built from them);
//! - ordering is by namespace, then name (then index), as the tuples it replaces were.
//! - the wire forms are those corral always wrote: a workload as the string
//!   `"namespace/name"`, a replica key as `{"namespace", "name", "index"}`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::Workload;
use super::names::is_dns_label;

/// The namespace of a workload whose manifest names none, as `kubectl` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A workload's identity: its namespace and name. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkloadRef {
    namespace: Arc<str>,
    name: Arc<str>,
}

impl WorkloadRef {
    /// The workload `namespace/name`. Not checked: use [`str::parse`] for text from outside.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        WorkloadRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The identity of `workload`: its namespace, [`DEFAULT_NAMESPACE`] when it has none.
    pub fn of(workload: &Workload) -> Self {
        WorkloadRef::new(namespace_of(workload), workload.name_any())
    }

    /// The namespace: the tenant.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The namespace, shared.
    pub fn namespace_arc(&self) -> &Arc<str> {
        &self.namespace
    }

    /// The name within the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The key of replica `index` of this workload.
    pub fn replica(&self, index: u32) -> ReplicaKey {
        ReplicaKey {
            workload: self.clone(),
            index,
        }
    }

    /// True when this is `workload`.
    pub fn is(&self, workload: &Workload) -> bool {
        *self.namespace == *namespace_of(workload)
            && workload.metadata.name.as_deref() == Some(&*self.name)
    }
}

/// The namespace of `workload`, [`DEFAULT_NAMESPACE`] when it has none.
pub fn namespace_of(workload: &Workload) -> &str {
    workload
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE)
}

impl fmt::Display for WorkloadRef {
    /// `namespace/name`, as people name workloads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Text that is not `NAMESPACE/NAME`, or a replica key that is not `NAMESPACE.NAME.INDEX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {expected}")]
pub struct ParseRefError {
    text: String,
    expected: &'static str,
}

impl FromStr for WorkloadRef {
    type Err = ParseRefError;

    /// `NAMESPACE/NAME`, two DNS-1123 labels.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split_once('/')
            .filter(|(namespace, name)| is_dns_label(namespace) && is_dns_label(name))
            .map(|(namespace, name)| WorkloadRef::new(namespace, name))
            .ok_or_else(|| ParseRefError {
                text: s.to_string(),
                expected: "NAMESPACE/NAME (two DNS-1123 labels, as in team-a/api)",
            })
    }
}

impl TryFrom<String> for WorkloadRef {
    type Error = ParseRefError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WorkloadRef> for String {
    fn from(r: WorkloadRef) -> String {
        r.to_string()
    }
}

impl PartialEq<str> for WorkloadRef {
    /// Equal to its text form, `namespace/name`.
    fn eq(&self, other: &str) -> bool {
        other
            .split_once('/')
            .is_some_and(|(ns, name)| *self.namespace == *ns && *self.name == *name)
    }
}

impl PartialEq<&str> for WorkloadRef {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

/// One replica of one workload: the lease key `<namespace>.<name>.<index>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "ReplicaKeyWire", into = "ReplicaKeyWire")]
pub struct ReplicaKey {
    /// The workload.
    pub workload: WorkloadRef,
    /// The replica's index, from 0.
    pub index: u32,
}

impl ReplicaKey {
    /// The key of replica `index` of the workload `namespace/name`.
    pub fn new(namespace: &str, name: &str, index: u32) -> Self {
        WorkloadRef::new(namespace, name).replica(index)
    }

    /// The workload's namespace.
    pub fn namespace(&self) -> &str {
        self.workload.namespace()
    }

    /// The workload's name.
    pub fn name(&self) -> &str {
        self.workload.name()
    }
}

impl fmt::Display for ReplicaKey {
    /// `namespace.name.index`: the lease key. Namespaces and names are DNS-1123 labels, so
    /// the dots separate unambiguously and the key is one safe path component.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.workload.namespace, self.workload.name, self.index
        )
    }
}

impl FromStr for ReplicaKey {
    type Err = ParseRefError;

    /// `NAMESPACE.NAME.INDEX`: two DNS-1123 labels and a number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, '.');
        let parsed = match (parts.next(), parts.next(), parts.next()) {
            (Some(namespace), Some(name), Some(index))
                if is_dns_label(namespace) && is_dns_label(name) =>
            {
                index
                    .parse()
                    .ok()
                    .filter(|i: &u32| i.to_string() == index)
                    .map(|i| ReplicaKey::new(namespace, name, i))
            }
            _ => None,
        };
        parsed.ok_or_else(|| ParseRefError {
            text: s.to_string(),
            expected: "NAMESPACE.NAME.INDEX (two DNS-1123 labels and a number)",
        })
    }
}

/// How a replica key is stored: flat, as corral always wrote it.
#[derive(Serialize, Deserialize)]
struct ReplicaKeyWire {
    namespace: String,
    name: String,
    index: u32,
}

impl From<ReplicaKeyWire> for ReplicaKey {
    fn from(w: ReplicaKeyWire) -> Self {
        WorkloadRef::new(w.namespace, w.name).replica(w.index)
    }
}

impl From<ReplicaKey> for ReplicaKeyWire {
    fn from(k: ReplicaKey) -> Self {
        ReplicaKeyWire {
            namespace: k.workload.namespace.to_string(),
            name: k.workload.name.to_string(),
            index: k.index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let r: WorkloadRef = "team-a/api".parse().unwrap();
        assert_eq!((r.namespace(), r.name()), ("team-a", "api"));
        assert_eq!(r.to_string(), "team-a/api");
        assert_eq!(r, "team-a/api");
        let k = r.replica(3);
        assert_eq!(k.to_string(), "team-a.api.3");
        assert_eq!(k.to_string().parse::<ReplicaKey>().unwrap(), k);
        assert_eq!(k.workload.to_string(), "team-a/api");
    }

    #[test]
    fn bad_text_is_refused_with_what_was_expected() {
        for bad in ["api", "a/b/c", "/api", "team-a/", "Team/api", "a/../b", ""] {
            let e = bad.parse::<WorkloadRef>().unwrap_err();
            assert!(e.to_string().contains("NAMESPACE/NAME"), "{bad}: {e}");
        }
        for bad in [
            "a.b", "a.b.c", "a.b.-1", "a.b.01", "A.b.1", "a.b.1.2", "a.b.",
        ] {
            assert!(bad.parse::<ReplicaKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_forms_are_unchanged() {
        let k = ReplicaKey::new("t", "web", 2);
        assert_eq!(
            serde_json::to_value(&k).unwrap(),
            serde_json::json!({"namespace": "t", "name": "web", "index": 2})
        );
        let back: ReplicaKey = serde_json::from_value(
            serde_json::json!({"index": 2, "name": "web", "namespace": "t"}),
        )
        .unwrap();
        assert_eq!(back, k);
        assert_eq!(
            serde_json::to_value(&k.workload).unwrap(),
            serde_json::json!("t/web")
        );
        assert!(serde_json::from_value::<WorkloadRef>(serde_json::json!("t")).is_err());
    }

    #[test]
    fn order_is_namespace_then_name_then_index() {
        let mut keys = [
            ReplicaKey::new("b", "a", 0),
            ReplicaKey::new("a", "b", 1),
            ReplicaKey::new("a", "b", 0),
            ReplicaKey::new("a", "a", 9),
        ];
        keys.sort();
        let text: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["a.a.9", "a.b.0", "a.b.1", "b.a.0"]);
    }

    #[test]
    fn a_workload_without_namespace_is_in_the_default_one() {
        let mut w =
            crate::alloc::fixtures::mk_workload("x", "web", 1, 100, 8, serde_json::json!({}));
        w.metadata.namespace = None;
        let r = WorkloadRef::of(&w);
        assert_eq!(r.to_string(), "default/web");
        assert!(r.is(&w));
        w.metadata.namespace = Some("t".into());
        assert!(!r.is(&w));
        assert_eq!(WorkloadRef::of(&w), "t/web");
    }
}
