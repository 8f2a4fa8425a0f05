//! corral: a declarative resource reconciler. Workloads and ResourcePolicies in, leases in
//! ZooKeeper and cgroups on every node out. docs/ARCHITECTURE.md describes the layers, the
//! path from a manifest to a cgroup file, the ZooKeeper layout and the rules that must hold.

pub mod agent;
pub mod alloc;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod controller;
pub mod lease;
pub mod metrics;
pub mod operator;
pub mod source;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod validate;
