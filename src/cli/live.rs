//! The replica table of `corral run` and `corral status`: workload, replica, node, grant,
//! use and state, from the leases and the agents' reports.

use std::collections::HashMap;

use comfy_table::{Table, presets};
use serde::Serialize;

use super::plan::human;
use crate::alloc::ReplicaKey;
use crate::alloc::plan::Pending;
use crate::alloc::resources::Kind;
use crate::api::WorkloadRef;
use crate::lease::{Lease, ProcessState, Report, UsageSample};

/// One row: a replica with its lease and its latest report.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The workload.
    pub workload: WorkloadRef,
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
            workload: l.key.workload.clone(),
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
                    "{} cpu, {}{}",
                    human(Kind::Cpu, u.cpu),
                    human(Kind::Memory, u.memory),
                    pressure(&u)
                )
            },
        );
        table.add_row([
            row.workload.to_string(),
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

/// `, mem PSI 12%` for each resource whose `some avg10` rounds to at least 1 %; empty
/// otherwise, and on cgroup v1.
fn pressure(u: &UsageSample) -> String {
    let Some(p) = u.pressure else {
        return String::new();
    };
    [("cpu", p.cpu), ("mem", p.memory), ("io", p.io)]
        .into_iter()
        .filter_map(|(name, p)| {
            let percent = p?.some.avg10.round();
            (percent >= 1.0).then(|| format!(", {name} PSI {percent:.0}%"))
        })
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
    let mut text = match (p.state, p.pid) {
        (ProcessState::Running, Some(pid)) => format!("Running (pid {pid})"),
        (ProcessState::Exited | ProcessState::BackingOff, _) => format!(
            "{} ({})",
            p.state,
            p.last_exit.as_deref().unwrap_or("exited")
        ),
        (state, _) => state.to_string(),
    };
    if p.state == ProcessState::Running && p.ready == Some(false) {
        text.push_str(", not ready");
    }
    // A process of another revision than its lease's is being replaced, or waits its turn.
    if let (Some(running), Some(lease)) = (&p.revision, &row.lease)
        && !lease.revision.is_empty()
        && *running != lease.revision
    {
        text.push_str(&format!(
            ", revision {running}, to be replaced by {}",
            lease.revision
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;
    use crate::cgroup::pressure::{Pressure, Pressures, Stall};

    fn some(avg10: f64) -> Option<Pressure> {
        Some(Pressure {
            some: Stall {
                avg10,
                ..Stall::default()
            },
            full: None,
        })
    }

    fn table_with(usage: UsageSample) -> String {
        let lease = mk_lease("n1", "web", 0, 1);
        let report = Report {
            key: Some(lease.key.clone()),
            node: lease.node.clone(),
            lease_epoch: 1,
            usage: Some(usage),
            ..Report::default()
        };
        render(&rows(&[lease], &[report], &[]))
    }

    #[test]
    fn the_usage_column_names_pressure_only_when_there_is_some() {
        let base = UsageSample {
            cpu: 250,
            memory: 64 << 20,
            ..UsageSample::default()
        };
        let v1 = table_with(base);
        assert!(v1.contains("250m cpu, 64Mi"), "{v1}");
        assert!(!v1.contains("PSI"), "{v1}");
        let calm = table_with(UsageSample {
            pressure: Some(Pressures {
                cpu: some(0.0),
                memory: some(0.49),
                io: some(0.0),
            }),
            ..base
        });
        assert!(!calm.contains("PSI"), "under 1 % says nothing: {calm}");
        let pressed = table_with(UsageSample {
            pressure: Some(Pressures {
                cpu: None,
                memory: some(12.34),
                io: some(3.5),
            }),
            ..base
        });
        assert!(
            pressed.contains("250m cpu, 64Mi, mem PSI 12%, io PSI 4%"),
            "{pressed}"
        );
    }
}
