//! Shared helpers for integration tests.
//!
//! Each integration test crate that needs these does `mod common;`. Not every
//! crate uses every helper, hence the module-level `dead_code` allowance.

#[allow(dead_code)]
pub mod zk;

#[allow(dead_code)]
pub mod cluster;

#[allow(dead_code)]
pub mod apiserver;

#[allow(dead_code)]
pub mod agent;

#[allow(dead_code)]
pub mod cgroups;

#[allow(dead_code)]
pub mod cli;

#[allow(dead_code)]
pub mod wait;

#[allow(dead_code)]
pub mod tools;

#[allow(dead_code)]
pub mod proxy;

#[allow(dead_code)]
pub mod netns;

#[allow(dead_code)]
pub mod kube_node;

#[allow(dead_code)]
pub mod zklog;

#[allow(dead_code)]
pub mod checker;
