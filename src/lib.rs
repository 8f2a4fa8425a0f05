//! corral: a declarative resource reconciler. Workloads and ResourcePolicies in, leases in
//! ZooKeeper and cgroups on every node out. See DESIGN.md for the architecture.

pub mod alloc;
pub mod api;
pub mod cli;
pub mod source;
pub mod validate;
