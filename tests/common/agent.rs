//! corral's node agent on a cgroup root of the test's own.

use std::time::Duration;

use serde_json::{Value, json};

use corral::agent::node::{Agent, Pass};
use corral::alloc::Res;
use corral::alloc::plan::{Allocation, Limits};
use corral::cgroup::fs::Cgroupfs;
use corral::cgroup::layout::Layout;

use super::cgroups::{remove_tree, unique};
use super::wait::wait_until;

/// A root of the test's own below every hierarchy of `layout`, removed with everything in
/// it on drop.
pub struct TestRoot {
    pub name: String,
    pub layout: Layout,
    pub state: tempfile::TempDir,
}

impl TestRoot {
    /// A root named from `prefix` and an empty state directory.
    pub fn named(prefix: &str, layout: Layout) -> TestRoot {
        TestRoot {
            name: unique(prefix),
            layout,
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub fn fs(&self) -> Cgroupfs {
        Cgroupfs::new(self.layout.clone(), &self.name).unwrap()
    }

    /// An agent for node `test-node` on this root, with corral's own log pump.
    pub fn agent(&self) -> Agent {
        let mut agent = Agent::new("test-node", self.fs(), self.state.path(), false).unwrap();
        agent.set_log_pump(env!("CARGO_BIN_EXE_corral").into());
        agent
    }

    /// Waits until replica `key`'s output holds `text`.
    pub fn wait_for_output(&self, key: &str, text: &str, timeout: Duration) {
        let log = self.state.path().join(format!("logs/{key}.log"));
        wait_until(&format!("{key} to write {text:?}"), timeout, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(text))
        });
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        for root in self.fs().root_dirs() {
            remove_tree(&root);
        }
    }
}

/// The report of replica 0 of workload `name` in `pass`.
pub fn report_of<'a>(pass: &'a Pass, name: &str) -> &'a corral::lease::Report {
    pass.reports
        .iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.name() == name))
        .unwrap_or_else(|| panic!("no report for {name}: {:?}", pass.reports))
}

/// A workload spec that runs `args` with a 1 s grace period, with `extra` merged in.
pub fn command_spec(args: &[&str], extra: Value) -> Value {
    let mut spec = json!({"command": {"args": args}, "terminationGracePeriodSeconds": 1});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    spec
}

/// Replica 0 of `ns/name` on `test-node` under policy `p`, granted and requesting
/// `amounts`, limited to `limits`.
pub fn allocation(
    ns: &str,
    name: &str,
    amounts: Res,
    limits: Limits,
    io_weight: Option<i32>,
) -> Allocation {
    Allocation {
        workload: corral::api::WorkloadRef::new(ns, name),
        replica: 0,
        key: format!("{ns}.{name}.0"),
        node: "test-node".into(),
        policy: "p".into(),
        tenant: ns.into(),
        priority: 0,
        granted: amounts,
        request: amounts,
        limits,
        io_weight,
    }
}
