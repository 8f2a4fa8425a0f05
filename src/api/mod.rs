//! The two kinds users write, `Workload` and `ResourcePolicy` (group `corral.dev`, version
//! `v1alpha1`), and the CRDs generated from them. Types only: no I/O.

pub mod conditions;
pub mod crd;
pub mod identity;
pub mod names;
pub mod policy;
pub mod quantity;
pub mod resources;
pub mod workload;

pub use identity::{ReplicaKey, WorkloadRef};
pub use policy::{ResourcePolicy, ResourcePolicySpec, Strategy};
pub use quantity::Quantity;
pub use resources::{ResourceAmounts, ResourceRequirements};
pub use workload::{Workload, WorkloadSpec};

/// The API group of corral's kinds.
pub const GROUP: &str = "corral.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "corral.dev/v1alpha1";
