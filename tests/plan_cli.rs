//! `corral plan` as a person runs it: tables, JSON, nodes files, and `--current`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn corral(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn json_output_has_the_documented_fields() {
    let plan = json(&corral(&[
        "plan",
        "-f",
        "examples/tenants",
        "--nodes",
        "examples/nodes.yaml",
        "-o",
        "json",
    ]));
    let allocations = plan["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 5);
    let first = &allocations[0];
    assert_eq!(first["workload"], "team-a/api");
    assert_eq!(first["replica"], 0);
    assert_eq!(first["key"], "team-a.api.0");
    assert_eq!(first["granted"]["cpu"], 250);
    assert_eq!(first["granted"]["memory"], 64 << 20);
    assert_eq!(
        first["limits"]["pids"], 256,
        "no pids limit given: the policy's replicaBounds.max is the limit"
    );
    assert_eq!(plan["allocations"][2]["limits"]["cpu"], 300);
    assert!(plan["pending"].as_array().unwrap().is_empty());
    let nodes = plan["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["name"], "node-a");
    assert_eq!(nodes[0]["capacity"]["cpu"], 4000);
    assert_eq!(
        nodes[0]["allocatable"]["cpu"], 3900,
        "4 cores less 100m reserved"
    );
    for key in ["allocated", "allocatable", "capacity"] {
        assert!(nodes[0][key].is_object(), "{key}");
    }
    assert_eq!(plan["tenants"].as_array().unwrap().len(), 2);
    assert_eq!(plan["policies"][0]["strategy"], "Fair");
}

#[test]
fn a_critical_workload_preempts_batch_work_given_the_current_placement() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.json");
    let output = corral(&[
        "plan",
        "-f",
        "examples/priority/policy.yaml",
        "-f",
        "examples/priority/batch.yaml",
        "--nodes",
        "examples/one-node.yaml",
        "-o",
        "json",
    ]);
    std::fs::write(&before, &output.stdout).unwrap();
    assert_eq!(json(&output)["allocations"].as_array().unwrap().len(), 3);

    let after = json(&corral(&[
        "plan",
        "-f",
        "examples/priority",
        "--nodes",
        "examples/one-node.yaml",
        "-o",
        "json",
        "--current",
        before.to_str().unwrap(),
    ]));
    let preempted: Vec<(String, u64)> = after["preemptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["workload"].as_str().unwrap().to_string(),
                p["replica"].as_u64().unwrap(),
            )
        })
        .collect();
    // 1800m allocatable, 1500m of batch: the critical 1000m needs two batch replicas gone,
    // the highest indices first.
    assert_eq!(
        preempted,
        [
            ("batch/batch".to_string(), 2),
            ("batch/batch".to_string(), 1)
        ]
    );
    assert_eq!(after["preemptions"][0]["byWorkload"], "prod/critical");
    let pending = after["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        pending[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("preempted on solo by prod/critical (priority 1000)")
    );
}

#[test]
fn tables_name_every_section() {
    let output = corral(&[
        "plan",
        "-f",
        "examples/priority",
        "--nodes",
        "examples/one-node.yaml",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for section in ["POLICIES", "ALLOCATIONS (2)", "PENDING (2)", "NODES"] {
        assert!(text.contains(section), "{section} missing from:\n{text}");
    }
    assert!(
        text.contains("needs 500m cpu; the most free on a matching node is 300m"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "trailing spaces:\n{text}"
    );
}

#[test]
fn invalid_manifests_or_nodes_are_refused_with_their_problems() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {replicas: -1, command: {args: [x]}}\n").unwrap();
    let output = corral(&["plan", "-f", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr
            .contains("bad.yaml:4: Workload default/w: spec.replicas: must be at least 0, not -1"),
        "{stderr}"
    );

    let nodes = dir.path().join("nodes.yaml");
    std::fs::write(&nodes, "- name: a\n  capacity: {cpu: 1}\n").unwrap();
    let output = corral(&[
        "plan",
        "-f",
        "examples/quickstart",
        "--nodes",
        nodes.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("nodes.yaml:2: [0].capacity.memory: required field is missing"),
        "{stderr}"
    );
}

#[test]
fn without_nodes_this_machine_is_the_node() {
    let plan = json(&corral(&[
        "plan",
        "-f",
        examples().join("quickstart").to_str().unwrap(),
        "-o",
        "json",
    ]));
    let nodes = plan["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(nodes[0]["capacity"]["cpu"], cpus * 1000);
    assert_eq!(plan["allocations"].as_array().unwrap().len(), 3);
}
