//! `metadata`, which the CRD schema leaves to the apiserver: a name that is a DNS-1123 label
//! (corral builds cgroup paths and znode names from it), a namespace, valid labels and
//! annotations, and no unknown fields.

use serde_json::Value;

use super::{FieldError, Kind, ObjectRef};
use crate::api::identity::DEFAULT_NAMESPACE;
use crate::api::names::{DNS_LABEL_MESSAGE, check_label_key, check_label_value, is_dns_label};
use crate::source::yaml::FieldPath;

/// Fields of ObjectMeta a manifest may carry (some are the server's, but exported objects
/// hold them and kubectl accepts them).
const KNOWN: [&str; 14] = [
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
];

/// Checks `metadata` and names the object as well as it can.
pub fn check(kind: Kind, metadata: Option<&Value>) -> (ObjectRef, Vec<FieldError>) {
    let path = FieldPath::root().key("metadata");
    let mut errors = Vec::new();
    let mut object = ObjectRef {
        kind,
        namespace: (kind == Kind::Workload).then(|| DEFAULT_NAMESPACE.to_string()),
        name: None,
    };
    let map = match metadata {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => {
            errors.push(error(
                &path,
                "required field is missing; it must hold at least a name",
            ));
            return (object, errors);
        }
        Some(_) => {
            errors.push(error(&path, "must be a mapping"));
            return (object, errors);
        }
    };
    match map.get("name") {
        Some(Value::String(name)) => {
            object.name = Some(name.clone());
            if !is_dns_label(name) {
                errors.push(error(&path.key("name"), DNS_LABEL_MESSAGE));
            }
        }
        None | Some(Value::Null) if map.contains_key("generateName") => errors.push(error(
            &path.key("generateName"),
            "is not supported: corral applies manifests repeatedly, so set a fixed name",
        )),
        None | Some(Value::Null) => {
            errors.push(error(&path.key("name"), "required field is missing"))
        }
        Some(_) => errors.push(error(&path.key("name"), "must be a string")),
    }
    // A namespace on a cluster-scoped object is ignored, as the apiserver ignores it.
    if kind == Kind::Workload {
        match map.get("namespace") {
            Some(Value::String(ns)) => {
                object.namespace = Some(ns.clone());
                if !is_dns_label(ns) {
                    errors.push(error(&path.key("namespace"), DNS_LABEL_MESSAGE));
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => errors.push(error(&path.key("namespace"), "must be a string")),
        }
    }
    for (field, values_are_labels) in [("labels", true), ("annotations", false)] {
        match map.get(field) {
            Some(Value::Object(entries)) => {
                for (key, value) in entries {
                    let entry = path.key(field).key(key);
                    let checked = match value {
                        Value::String(v) if values_are_labels => {
                            check_label_key(key).and_then(|()| check_label_value(v))
                        }
                        Value::String(_) => check_label_key(key),
                        _ => Err("must be a string; quote it".to_string()),
                    };
                    if let Err(message) = checked {
                        errors.push(error(&entry, message));
                    }
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => errors.push(error(&path.key(field), "must be a mapping of strings")),
        }
    }
    for key in map.keys() {
        if !KNOWN.contains(&key.as_str()) {
            errors.push(error(&path.key(key), "unknown field"));
        }
    }
    (object, errors)
}

fn error(path: &FieldPath, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.clone(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(kind: Kind, metadata: Value) -> (String, Vec<String>) {
        let (object, errors) = check(kind, Some(&metadata));
        (
            object.to_string(),
            errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        )
    }

    #[test]
    fn names_must_be_dns_labels() {
        let (object, errors) = messages(
            Kind::Workload,
            json!({"name": "../etc", "namespace": "a/b"}),
        );
        assert_eq!(object, "Workload a/b/../etc");
        assert_eq!(
            errors,
            [
                format!("metadata.name: {DNS_LABEL_MESSAGE}"),
                format!("metadata.namespace: {DNS_LABEL_MESSAGE}"),
            ]
        );
    }

    #[test]
    fn namespace_defaults_and_cluster_scope_ignores_it() {
        assert_eq!(
            messages(Kind::Workload, json!({"name": "web"})).0,
            "Workload default/web"
        );
        assert_eq!(
            messages(
                Kind::ResourcePolicy,
                json!({"name": "gold", "namespace": "x"})
            ),
            ("ResourcePolicy gold".to_string(), vec![])
        );
    }

    #[test]
    fn labels_annotations_and_unknown_fields() {
        let (_, errors) = messages(
            Kind::Workload,
            json!({"name": "web", "labels": {"ok": "no", "bad": "a b", "n": 1},
                   "annotations": {"free text": "anything"}, "nmae": "x"}),
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("metadata.labels.bad: value \"a b\""));
        assert_eq!(errors[1], "metadata.labels.n: must be a string; quote it");
        assert!(errors[2].starts_with("metadata.annotations[free text]: key \"free text\""));
        assert_eq!(errors[3], "metadata.nmae: unknown field");
    }

    #[test]
    fn missing_name_and_generate_name() {
        let (object, errors) = messages(Kind::Workload, json!({"generateName": "web-"}));
        assert_eq!(object, "Workload default/(unnamed)");
        assert_eq!(
            errors,
            [
                "metadata.generateName: is not supported: corral applies manifests repeatedly, so set a fixed name"
            ]
        );
        let (_, errors) = messages(Kind::Workload, json!({}));
        assert_eq!(errors, ["metadata.name: required field is missing"]);
    }
}
