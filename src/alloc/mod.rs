//! The allocator: a pure function from policies, workloads and nodes to grants.

pub mod govern;
pub mod selector;
