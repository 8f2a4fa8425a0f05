//! The replica table of `corral run` and `corral status`: workload, replica, node, grant,
//! use and state, from the leases and the agents' reports.

use std::collections::HashMap;

use comfy_table::{Table, presets};
use serde::Serialize;

use super::plan::human;
use crate::alloc::ReplicaKey;
use crate::alloc::plan::Pending;
use crate::alloc::resources::Kind;
use crate::lease::{Lease, Report};

/// One row: a replica with its lease and its latest report.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// `namespace/name`.
    pub workload: String,
    /// Index.
    pub replica: u32,
    /// Node, when placed.
    pub node: Option<String>,
    /// The lease, when placed.
    pub lease: Option<Lease>,
    /// The report, when the agent sent one.
    pub report: Option<Report>,
    /// Why it is pending, when it is.
    pub pending: Option<String>,
}

/// Joins leases, reports and pending replicas, in workload and replica order.
pub fn rows(leases: &[Lease], reports: &[Report], pending: &[Pending]) -> Vec<Row> {
    let by_key: HashMap<(&str, &ReplicaKey), &Report> = reports
        .iter()
        .filter_map(|r| Some(((r.node.as_str(), r.key.as_ref()?), r)))
        .collect();
    let mut rows: Vec<Row> = leases
        .iter()
        .map(|l| Row {
            workload: l.key.workload(),
            replica: l.key.index,
            node: Some(l.node.clone()),
            report: by_key.get(&(l.node.as_str(), &l.key)).map(|r| (*r).clone()),
            lease: Some(l.clone()),
            pending: None,
        })
        .collect();
    rows.extend(pending.iter().map(|p| Row {
        workload: p.workload.clone(),
        replica: p.replica,
        node: None,
        lease: None,
        report: None,
        pending: Some(p.reason.clone()),
    }));
    rows.sort_by(|a, b| (&a.workload, a.replica).cmp(&(&b.workload, b.replica)));
    rows
}

/// The rows as a table a person reads.
pub fn render(rows: &[Row]) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(["WORKLOAD", "REPLICA", "NODE", "GRANTED", "USAGE", "STATE"]);
    for i in 0..6 {
        if let Some(column) = table.column_mut(i) {
            column.set_padding((0, 3));
        }
    }
    for row in rows {
        let granted = row.lease.as_ref().map_or_else(
            || "-".to_string(),
            |l| {
                format!(
                    "{} cpu, {}",
                    human(Kind::Cpu, l.granted.cpu),
                    human(Kind::Memory, l.granted.memory)
                )
            },
        );
        let usage = row.report.as_ref().and_then(|r| r.usage).map_or_else(
            || "-".to_string(),
            |u| {
                format!(
                    "{} cpu, {}",
                    human(Kind::Cpu, u.cpu),
                    human(Kind::Memory, u.memory)
                )
            },
        );
        table.add_row([
            row.workload.clone(),
            row.replica.to_string(),
            row.node.clone().unwrap_or_else(|| "-".to_string()),
            granted,
            usage,
            state(row),
        ]);
    }
    table
        .to_string()
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// A replica's state in a few words.
pub fn state(row: &Row) -> String {
    if let Some(reason) = &row.pending {
        return format!("Pending: {reason}");
    }
    let Some(report) = &row.report else {
        return "Allocated".to_string();
    };
    let p = &report.process;
    let mut text = match (p.state.as_str(), p.pid) {
        ("Running", Some(pid)) => format!("Running (pid {pid})"),
        ("Exited" | "BackingOff", _) => format!(
            "{} ({})",
            p.state,
            p.last_exit.as_deref().unwrap_or("exited")
        ),
        (state, _) => state.to_string(),
    };
    if p.restarts > 0 {
        text.push_str(&format!(", {} restarts", p.restarts));
    }
    if let Some(u) = report.usage
        && u.oom_kills > 0
    {
        text.push_str(&format!(", {} OOM kills", u.oom_kills));
    }
    if !report.problems.is_empty() {
        text.push_str(&format!("; {}", report.problems.join("; ")));
    }
    text
}
