//! The CustomResourceDefinitions, generated from the types; `crds/` holds their YAML.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresourceScale, JSONSchemaProps,
};
use kube::CustomResourceExt;

use super::{ResourcePolicy, Workload};
use crate::api::conditions::{ConditionType, Reason};

/// One generated CRD and the file it is kept in under `crds/`.
pub struct GeneratedCrd {
    /// File name under `crds/`.
    pub file_name: &'static str,
    /// The definition.
    pub crd: CustomResourceDefinition,
}

/// Both CRDs, in a stable order.
pub fn all() -> Vec<GeneratedCrd> {
    vec![
        GeneratedCrd {
            file_name: "workloads.corral.dev.yaml",
            crd: workload(),
        },
        GeneratedCrd {
            file_name: "resourcepolicies.corral.dev.yaml",
            crd: policy(),
        },
    ]
}

/// Joins the lines of every description, which the doc comments they come from wrap at
/// 90 columns: `kubectl explain` wraps them again, mid-sentence otherwise. A blank line
/// (a new paragraph) stays.
fn unwrap_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match v {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = text
                                .split("\n\n")
                                .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                                .collect::<Vec<_>>()
                                .join("\n\n");
                        }
                        _ => walk(v),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// The Workload CRD, with a scale subresource for `kubectl scale` and the
/// HorizontalPodAutoscaler.
pub fn workload() -> CustomResourceDefinition {
    let mut crd = unwrap_descriptions(not_yet_seen(declare_name(Workload::crd())));
    for version in &mut crd.spec.versions {
        let subresources = version.subresources.get_or_insert_with(Default::default);
        subresources.scale = Some(CustomResourceSubresourceScale {
            spec_replicas_path: ".spec.replicas".into(),
            status_replicas_path: ".status.replicas".into(),
            label_selector_path: Some(".status.selector".into()),
        });
    }
    crd
}

/// The ResourcePolicy CRD.
pub fn policy() -> CustomResourceDefinition {
    let mut crd = unwrap_descriptions(not_yet_seen(declare_name(ResourcePolicy::crd())));
    over_zero(&mut crd, &["spec", "cgroup", "memoryHighRatio"]);
    crd
}

/// The status an object has before corral writes one: the API server fills it in on
/// every read while `status` is absent, so that kstatus (Flux, Helm's `--wait`) reads a
/// new object as InProgress until corral has seen it, and forever when no controller
/// runs, rather than as Current.
fn not_yet_seen(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let default = serde_json::json!({"conditions": [{
        "type": ConditionType::Reconciling.as_str(),
        "status": "True",
        "reason": Reason::NotYetSeen.as_str(),
        "message": "corral has not read this object yet",
        "lastTransitionTime": "1970-01-01T00:00:00Z",
    }]});
    for version in &mut crd.spec.versions {
        if let Some(status) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"))
        {
            status.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    default.clone(),
                ),
            );
        }
    }
    crd
}

/// Makes the number at `path` exclusive of 0 (`minimum: 0, exclusiveMinimum: true`). A
/// `minimum: 0.01` would not do: the API server compares an integer value with the
/// minimum truncated to an integer, so it accepted 0.
fn over_zero(crd: &mut CustomResourceDefinition, path: &[&str]) {
    for version in &mut crd.spec.versions {
        let mut node = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        for key in path {
            node = node.and_then(|n| n.properties.as_mut()?.get_mut(*key));
        }
        if let Some(node) = node {
            node.minimum = Some(0.0);
            node.exclusive_minimum = Some(true);
        }
    }
}

/// Declares `metadata.name` (a string of at most 63 characters) in the schema. The apiserver
/// refuses a rule's `fieldPath` that names an undeclared field, and the length bounds the
/// cost of the rule on the name.
fn declare_name(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let name = JSONSchemaProps {
            type_: Some("string".into()),
            max_length: Some(63),
            ..JSONSchemaProps::default()
        };
        let metadata = JSONSchemaProps {
            type_: Some("object".into()),
            properties: Some(BTreeMap::from([("name".to_string(), name)])),
            ..JSONSchemaProps::default()
        };
        schema
            .properties
            .get_or_insert_with(BTreeMap::new)
            .insert("metadata".into(), metadata);
    }
    crd
}

/// A CRD as the YAML document `corral crd` prints and `crds/` holds.
///
/// # Errors
/// Only if serialization fails, which the generated types do not cause.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}
