//! The nodes `corral plan` allocates on: a YAML file listing them, or this machine.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::yaml::{self, FieldPath};
use crate::alloc::{NodeInfo, Res};
use crate::api::names::{check_label_key, check_label_value, is_dns_label};
use crate::api::resources::PIDS_MAX;
use crate::api::{Quantity, ResourceAmounts};

/// A node as written in a nodes file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    capacity: ResourceAmounts,
}

/// Reads a nodes file: a YAML list of `{name, labels, capacity: {cpu, memory, pids}}`.
/// `cpu` and `memory` are required; `pids` defaults to the kernel's maximum.
///
/// # Errors
/// Every problem, each as `FILE:LINE: nodes[i].field: what is wrong`.
pub fn from_file(path: &Path) -> Result<Vec<NodeInfo>, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    parse(&path.display().to_string(), &text)
}

/// Parses the text of a nodes file named `origin`.
///
/// # Errors
/// As [`from_file`].
pub fn parse(origin: &str, text: &str) -> Result<Vec<NodeInfo>, Vec<String>> {
    let docs = yaml::parse_stream(text)
        .map_err(|e| vec![format!("{origin}:{}: invalid YAML: {}", e.line, e.message)])?;
    let [doc] = docs.as_slice() else {
        return Err(vec![format!(
            "{origin}: expected one YAML document holding a list of nodes, found {}",
            docs.len()
        )]);
    };
    let at = |path: &FieldPath, message: String| {
        format!("{origin}:{}: {path}: {message}", doc.lines.line_of(path))
    };
    let entries: Vec<NodeEntry> = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let path = FieldPath::parse(&e.path().to_string());
        vec![at(&path, e.inner().to_string())]
    })?;
    let mut problems = Vec::new();
    let mut nodes = Vec::with_capacity(entries.len());
    let mut seen = BTreeMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let path = FieldPath::root().index(i);
        if !is_node_name(&entry.name) {
            problems.push(at(
                &path.key("name"),
                "must be a DNS subdomain: lowercase letters, digits, '-' and '.'".to_string(),
            ));
        }
        if let Some(first) = seen.insert(entry.name.clone(), i) {
            problems.push(at(&path.key("name"), format!("duplicate of [{first}]")));
        }
        for (k, v) in &entry.labels {
            if let Err(e) = check_label_key(k).and_then(|()| check_label_value(v)) {
                problems.push(at(&path.key("labels").key(k), e));
            }
        }
        let capacity = path.key("capacity");
        let mut quantity =
            |q: &Option<Quantity>, field: &str, convert: fn(&Quantity) -> _| -> i64 {
                match q.as_ref().map(convert) {
                    Some(Ok(v)) => v,
                    Some(Err(e)) => {
                        problems.push(at(
                            &capacity.key(field),
                            format!(
                                "{:?} {e}",
                                q.as_ref().map(Quantity::as_str).unwrap_or_default()
                            ),
                        ));
                        0
                    }
                    None => {
                        problems.push(at(
                            &capacity.key(field),
                            "required field is missing".to_string(),
                        ));
                        0
                    }
                }
            };
        let cpu = quantity(&entry.capacity.cpu, "cpu", Quantity::millis);
        let memory = quantity(&entry.capacity.memory, "memory", Quantity::units);
        let pids = entry.capacity.pids.unwrap_or(PIDS_MAX);
        nodes.push(NodeInfo {
            name: entry.name,
            labels: entry.labels,
            capacity: Res::new(cpu, memory, pids),
        });
    }
    if problems.is_empty() {
        Ok(nodes)
    } else {
        Err(problems)
    }
}

/// A node name: a DNS subdomain, so it is one safe path component (no `/`, never `..`).
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// This machine as a node: its host name, the CPUs this process may run on, its memory
/// and the kernel's pid limit; labelled `kubernetes.io/hostname`.
///
/// # Errors
/// /proc could not be read.
pub fn this_machine() -> std::io::Result<NodeInfo> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_lowercase();
    let name = if is_node_name(&hostname) {
        hostname
    } else {
        "localhost".to_string()
    };
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory_kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()
        .unwrap_or(PIDS_MAX);
    Ok(NodeInfo {
        labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.clone())]),
        name,
        capacity: Res::new(
            i64::try_from(cpus).unwrap_or(1) * 1000,
            memory_kib.saturating_mul(1024),
            pid_max,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_file_lists_names_labels_and_capacity() {
        let nodes = parse(
            "n.yaml",
            "- name: a\n  labels: {zone: x}\n  capacity: {cpu: 4, memory: 16Gi}\n- name: b.example\n  capacity: {cpu: 500m, memory: 1G, pids: 100}\n",
        )
        .unwrap();
        assert_eq!(nodes[0].capacity, Res::new(4000, 16 << 30, PIDS_MAX));
        assert_eq!(nodes[0].labels["zone"], "x");
        assert_eq!(nodes[1].capacity, Res::new(500, 1_000_000_000, 100));
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let problems = parse(
            "n.yaml",
            "- name: a\n  capacity: {cpu: 12XB}\n- name: a\n  capacity: {cpu: 1, memory: 1Gi}\n- name: ../x\n  capacity: {cpu: 1, memory: 1}\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "n.yaml:2: [0].capacity.cpu: \"12XB\" is not a quantity; write a number with an optional suffix, such as 500m, 1.5, 256Mi or 1G",
                "n.yaml:2: [0].capacity.memory: required field is missing",
                "n.yaml:3: [1].name: duplicate of [0]",
                "n.yaml:5: [2].name: must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
            ]
        );
        let problems = parse("n.yaml", "- name: a\n  capacty: {}\n").unwrap_err();
        assert!(problems[0].starts_with("n.yaml:"), "{problems:?}");
        assert!(
            problems[0].contains("unknown field `capacty`"),
            "{problems:?}"
        );
    }

    #[test]
    fn this_machine_has_cpus_and_memory() {
        let node = this_machine().unwrap();
        assert!(node.capacity.cpu >= 1000);
        assert!(node.capacity.memory > 0);
        assert!(is_node_name(&node.name));
    }
}
