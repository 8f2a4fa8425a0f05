//! The CustomResourceDefinitions, generated from the types; `crds/` holds their YAML.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{ResourcePolicy, Workload};

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
            crd: Workload::crd(),
        },
        GeneratedCrd {
            file_name: "resourcepolicies.corral.dev.yaml",
            crd: ResourcePolicy::crd(),
        },
    ]
}

/// A CRD as the YAML document `corral crd` prints and `crds/` holds.
///
/// # Errors
/// Only if serialization fails, which the generated types do not cause.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}
