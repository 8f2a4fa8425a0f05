//! The cgroup layer: where the hierarchies are ([`layout`]), which subtree corral owns and
//! what it may write around it ([`root`]), the one table of the files corral writes and
//! reads, and how ([`knobs`]), the values corral writes ([`values`]), the tree as desired
//! and as found ([`tree`]; the agent builds the desired one from its leases, in
//! [`crate::agent::desired`]), reading it ([`observe`]), the pure diff between
//! them ([`diff`]), the filesystem below corral's root ([`fs`]), the executor that applies
//! a diff ([`exec`]), the v2 pressure files ([`pressure`]), the one reader of
//! `cgroup.procs` ([`procs`]), and the v1 hierarchies corral keeps its groups in without
//! limiting anything there ([`others`]).

pub mod diff;
pub mod exec;
pub mod fs;
pub mod knobs;
pub mod layout;
pub mod observe;
pub mod others;
pub mod pressure;
pub mod procs;
pub mod root;
pub mod tree;
pub mod values;
