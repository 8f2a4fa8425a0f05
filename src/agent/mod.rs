//! The node agent: turns leases into cgroups and processes, and reports what it observed.
//!
//! - [`node`]: the pass: leases → desired tree → observe → diff → apply → reports;
//! - [`desired`]: leases → the desired cgroup tree, the one translation between the two;
//! - [`supervisor`]: each replica's command: start, exits, restart policy, backoff, and
//!   what a later corral needs to take the processes over;
//! - [`process`]: launching into cgroups, stopping, adopting;
//! - [`exits`]: the exits of processes an earlier corral started, noticed at once;
//! - [`logs`]: each replica's output, rotated by its pump;
//! - [`sandbox`]: the user, capabilities and seccomp filter a replica's command runs with;
//! - [`enforcer`]: when a pass is due and running it, for both loops that run them;
//! - [`trust`]: which leases read from ZooKeeper the agent enforces;
//! - [`hollow`]: many simulated nodes in one process, for measuring at scale.

pub mod adopt;
pub mod daemon;
pub mod desired;
pub mod disconnect;
pub mod enforcer;
pub mod exits;
pub mod health;
pub mod hollow;
pub mod logs;
pub mod node;
pub mod process;
pub mod sandbox;
pub mod supervisor;
pub mod trust;
