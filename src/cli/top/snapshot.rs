//! The pure core of `corral top`: one reading of the store (leases, reports, which nodes'
//! agents are alive) and the previous snapshot become rows grouped node → tenant →
//! replica, with sums for tenants and nodes and the throttling rate between the two
//! readings. No I/O.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::alloc::ReplicaKey;
use crate::alloc::plan::Limits;
use crate::cgroup::pressure::Pressure;
use crate::lease::{Lease, Report, UsageSample};

/// What one reading of the store gave.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Every lease.
    pub leases: Vec<Lease>,
    /// Every report.
    pub reports: Vec<Report>,
    /// Nodes registered, whether or not their agent is alive.
    pub registered: BTreeSet<String>,
    /// Nodes whose agent is alive now.
    pub alive: BTreeSet<String>,
    /// When it was read, Unix seconds.
    pub taken_at: f64,
}

/// How rows are ordered within their parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum SortKey {
    /// CPU use, highest first.
    #[default]
    Cpu,
    /// Memory use, highest first.
    Memory,
    /// Throttling rate, highest first.
    Throttle,
    /// Name, alphabetically.
    Name,
}

/// Grant and use of a replica, or their sums over a tenant's or a node's replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Granted CPU, millicores.
    pub grant_cpu: i64,
    /// Granted memory, bytes.
    pub grant_memory: i64,
    /// CPU in use, millicores; `None` without any usage reported.
    pub cpu: Option<i64>,
    /// Memory in use, bytes.
    pub memory: Option<i64>,
    /// Seconds throttled per second between the last two samples; `None` until two
    /// samples were read, but 0 for a replica that used no CPU.
    pub throttled: Option<f64>,
    /// Processes the OOM killer killed.
    pub oom_kills: Option<i64>,
    /// Processes and threads.
    pub pids: Option<i64>,
    /// `some avg10` of each pressure file, percent; for tenants and nodes the highest of
    /// their replicas'. Absent on cgroup v1.
    #[serde(skip_serializing_if = "Psi::is_empty")]
    pub pressure: Psi,
}

/// `some avg10` per resource, percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Psi {
    /// `cpu.pressure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// `memory.pressure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    /// `io.pressure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<f64>,
}

impl Psi {
    /// True when no resource has pressure information (cgroup v1).
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.io.is_none()
    }
}

/// One replica.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRow {
    /// The workload's name.
    pub name: String,
    /// The replica's index.
    pub replica: u32,
    /// Its process state from the report, or `NoReport`.
    pub state: String,
    /// Its limits.
    pub limits: Limits,
    /// Grant and use.
    #[serde(flatten)]
    pub figures: Figures,
    /// The report's last sample, for the next rate.
    #[serde(skip)]
    pub sample: Option<UsageSample>,
    /// When the report's sample was taken (its `changedAt`), Unix seconds.
    #[serde(skip)]
    pub sampled_at: u64,
}

/// One tenant on one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRow {
    /// The namespace.
    pub name: String,
    /// Sums over its replicas.
    #[serde(flatten)]
    pub figures: Figures,
    /// Its replicas.
    pub replicas: Vec<ReplicaRow>,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// The node's name.
    pub name: String,
    /// False when its agent is not registered now: its replicas' use is its last report.
    pub agent_alive: bool,
    /// Sums over its replicas.
    #[serde(flatten)]
    pub figures: Figures,
    /// Its tenants.
    pub tenants: Vec<TenantRow>,
}

/// Every node's rows, ordered by the sort key.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// When the reading was taken, Unix seconds.
    pub taken_at: f64,
    /// The order of the rows.
    pub sort: SortKey,
    /// The nodes.
    pub nodes: Vec<NodeRow>,
}

impl Snapshot {
    /// Builds the rows of `reading`; rates come from `previous`, the snapshot of the
    /// reading before, where a replica's report has a newer sample than there. A replica
    /// whose report has not changed keeps the rate it had.
    pub fn build(reading: &Reading, previous: Option<&Snapshot>, sort: SortKey) -> Snapshot {
        let reports: HashMap<(&str, &ReplicaKey), &Report> = reading
            .reports
            .iter()
            .filter_map(|r| Some(((r.node.as_str(), r.key.as_ref()?), r)))
            .collect();
        let before: HashMap<(&str, &str, &str, u32), &ReplicaRow> = previous
            .into_iter()
            .flat_map(|s| &s.nodes)
            .flat_map(|n| n.tenants.iter().map(move |t| (n, t)))
            .flat_map(|(n, t)| t.replicas.iter().map(move |r| (n, t, r)))
            .map(|(n, t, r)| {
                (
                    (n.name.as_str(), t.name.as_str(), r.name.as_str(), r.replica),
                    r,
                )
            })
            .collect();
        let elapsed = previous.map(|p| reading.taken_at - p.taken_at);
        let mut tree: BTreeMap<&str, BTreeMap<&str, Vec<ReplicaRow>>> = reading
            .registered
            .iter()
            .chain(&reading.alive)
            .map(|n| (n.as_str(), BTreeMap::new()))
            .collect();
        for lease in &reading.leases {
            let key = &lease.key;
            let report = reports.get(&(lease.node.as_str(), key)).copied();
            let earlier = before
                .get(&(lease.node.as_str(), key.namespace(), key.name(), key.index))
                .copied();
            tree.entry(lease.node.as_str())
                .or_default()
                .entry(key.namespace())
                .or_default()
                .push(replica(lease, report, earlier, elapsed));
        }
        let mut nodes: Vec<NodeRow> = tree
            .into_iter()
            .map(|(node, tenants)| {
                let mut tenants: Vec<TenantRow> = tenants
                    .into_iter()
                    .map(|(tenant, mut replicas)| {
                        replicas.sort_by(|a, b| order(sort, a, b));
                        TenantRow {
                            name: tenant.to_string(),
                            figures: sum(replicas.iter().map(|r| &r.figures)),
                            replicas,
                        }
                    })
                    .collect();
                tenants.sort_by(|a, b| order(sort, a, b));
                NodeRow {
                    name: node.to_string(),
                    agent_alive: reading.alive.contains(node),
                    figures: sum(tenants.iter().map(|t| &t.figures)),
                    tenants,
                }
            })
            .collect();
        nodes.sort_by(|a, b| order(sort, a, b));
        Snapshot {
            taken_at: reading.taken_at,
            sort,
            nodes,
        }
    }

    /// True when every replica that was busy in `earlier`, on a node whose agent is alive,
    /// has a newer sample here: rates can be computed for all of them. An idle replica's
    /// report may not change at all, and one without use yet waits for the agent's next
    /// pass, however long its resync.
    pub fn fresh_since(&self, earlier: &Snapshot) -> bool {
        let now: HashMap<(&str, &str, &str, u32), &ReplicaRow> = self.replicas().collect();
        earlier
            .nodes
            .iter()
            .filter(|n| n.agent_alive)
            .flat_map(|n| n.tenants.iter().map(move |t| (n, t)))
            .flat_map(|(n, t)| t.replicas.iter().map(move |r| (n, t, r)))
            .filter(|(_, _, r)| r.figures.cpu.is_some_and(|c| c > 0))
            .all(|(n, t, r)| {
                now.get(&(n.name.as_str(), t.name.as_str(), r.name.as_str(), r.replica))
                    .is_none_or(|later| {
                        (later.sampled_at, later.sample) != (r.sampled_at, r.sample)
                    })
            })
    }

    /// Every replica with its node's and tenant's names.
    fn replicas(&self) -> impl Iterator<Item = ((&str, &str, &str, u32), &ReplicaRow)> {
        self.nodes
            .iter()
            .flat_map(|n| n.tenants.iter().map(move |t| (n, t)))
            .flat_map(|(n, t)| t.replicas.iter().map(move |r| (n, t, r)))
            .map(|(n, t, r)| {
                (
                    (n.name.as_str(), t.name.as_str(), r.name.as_str(), r.replica),
                    r,
                )
            })
    }
}

/// The state of a replica without a report.
pub const NO_REPORT: &str = "NoReport";

/// A replica's row: its grant, the use of its report, and the throttling rate since
/// `earlier`, its row in the previous snapshot taken `elapsed` seconds before.
fn replica(
    lease: &Lease,
    report: Option<&Report>,
    earlier: Option<&ReplicaRow>,
    elapsed: Option<f64>,
) -> ReplicaRow {
    let usage: Option<UsageSample> = report.and_then(|r| r.usage);
    let sampled_at = report.map_or(0, |r| r.changed_at);
    let throttled = match (earlier, usage) {
        // The same sample as before: its rate stands.
        (Some(e), Some(_)) if (e.sampled_at, e.sample) == (sampled_at, usage) => {
            e.figures.throttled
        }
        (Some(e), Some(u)) => match e.sample.map(|s| s.throttled_seconds) {
            // A counter that went back belongs to a new group: no rate across it.
            Some(then) if u.throttled_seconds >= then => {
                let seconds = if sampled_at > e.sampled_at {
                    (sampled_at - e.sampled_at) as f64
                } else {
                    // Samples within one second of each other: the readings' interval.
                    elapsed.unwrap_or(0.0)
                };
                (seconds > 0.0).then(|| (u.throttled_seconds - then) / seconds)
            }
            _ => None,
        },
        _ => None,
    }
    // A replica that used no CPU over its last sample was not throttled in it.
    .or_else(|| usage.filter(|u| u.cpu == 0).map(|_| 0.0));
    let avg10 = |p: Option<Pressure>| p.map(|p| p.some.avg10);
    let pressure = usage
        .and_then(|u| u.pressure)
        .map_or_else(Psi::default, |p| Psi {
            cpu: avg10(p.cpu),
            memory: avg10(p.memory),
            io: avg10(p.io),
        });
    ReplicaRow {
        name: lease.key.name().to_string(),
        replica: lease.key.index,
        state: report.map_or_else(|| NO_REPORT.to_string(), |r| r.process.state.to_string()),
        limits: lease.limits,
        figures: Figures {
            grant_cpu: lease.granted.cpu,
            grant_memory: lease.granted.memory,
            cpu: usage.map(|u| u.cpu),
            memory: usage.map(|u| u.memory),
            throttled,
            oom_kills: usage.map(|u| u.oom_kills),
            pids: usage
                .map(|u| u.pids)
                .or_else(|| report.and_then(|r| i64::try_from(r.process.pids).ok())),
            pressure,
        },
        sample: usage,
        sampled_at,
    }
}

/// The sums of `rows`: amounts add up (saturating), a figure no row has stays absent,
/// and pressure is the highest of any row's.
fn sum<'a>(rows: impl Iterator<Item = &'a Figures>) -> Figures {
    fn add(a: Option<i64>, b: Option<i64>) -> Option<i64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        }
    }
    fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
    rows.fold(Figures::default(), |acc, f| Figures {
        grant_cpu: acc.grant_cpu.saturating_add(f.grant_cpu),
        grant_memory: acc.grant_memory.saturating_add(f.grant_memory),
        cpu: add(acc.cpu, f.cpu),
        memory: add(acc.memory, f.memory),
        throttled: match (acc.throttled, f.throttled) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        },
        oom_kills: add(acc.oom_kills, f.oom_kills),
        pids: add(acc.pids, f.pids),
        pressure: Psi {
            cpu: max(acc.pressure.cpu, f.pressure.cpu),
            memory: max(acc.pressure.memory, f.pressure.memory),
            io: max(acc.pressure.io, f.pressure.io),
        },
    })
}

/// A row that can be sorted: its figures and its name.
trait Sorted {
    fn figures(&self) -> &Figures;
    fn name(&self) -> (&str, u32);
}

impl Sorted for ReplicaRow {
    fn figures(&self) -> &Figures {
        &self.figures
    }
    fn name(&self) -> (&str, u32) {
        (&self.name, self.replica)
    }
}

impl Sorted for TenantRow {
    fn figures(&self) -> &Figures {
        &self.figures
    }
    fn name(&self) -> (&str, u32) {
        (&self.name, 0)
    }
}

impl Sorted for NodeRow {
    fn figures(&self) -> &Figures {
        &self.figures
    }
    fn name(&self) -> (&str, u32) {
        (&self.name, 0)
    }
}

/// Highest first for a figure (absent last), then by name.
fn order(sort: SortKey, a: &impl Sorted, b: &impl Sorted) -> Ordering {
    let (fa, fb) = (a.figures(), b.figures());
    let by_figure = match sort {
        SortKey::Cpu => fb.cpu.cmp(&fa.cpu),
        SortKey::Memory => fb.memory.cmp(&fa.memory),
        SortKey::Throttle => match (fa.throttled, fb.throttled) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (x, y) => y.is_some().cmp(&x.is_some()),
        },
        SortKey::Name => Ordering::Equal,
    };
    by_figure.then_with(|| a.name().cmp(&b.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Res;
    use crate::alloc::fixtures::mk_lease;
    use crate::cgroup::pressure::{Pressures, Stall};
    use crate::lease::ProcessReport;

    fn lease(node: &str, tenant: &str, name: &str, index: u32, cpu: i64, memory: i64) -> Lease {
        let mut lease = mk_lease(node, name, index, 1);
        lease.key = ReplicaKey::new(tenant, name, index);
        lease.granted = Res::new(cpu, memory, 0);
        lease
    }

    fn usage(cpu: i64, memory: i64, throttled_seconds: f64) -> UsageSample {
        UsageSample {
            cpu,
            memory,
            throttled_seconds,
            pids: 2,
            ..UsageSample::default()
        }
    }

    fn report(lease: &Lease, usage: Option<UsageSample>, changed_at: u64) -> Report {
        Report {
            key: Some(lease.key.clone()),
            node: lease.node.clone(),
            usage,
            process: ProcessReport {
                state: crate::lease::ProcessState::Running,
                pids: 1,
                ..ProcessReport::default()
            },
            changed_at,
            ..Report::default()
        }
    }

    fn reading(leases: Vec<Lease>, reports: Vec<Report>, taken_at: f64) -> Reading {
        let nodes: BTreeSet<String> = leases.iter().map(|l| l.node.clone()).collect();
        Reading {
            leases,
            reports,
            registered: nodes.clone(),
            alive: nodes,
            taken_at,
        }
    }

    fn names(s: &Snapshot) -> Vec<String> {
        s.nodes
            .iter()
            .flat_map(|n| {
                std::iter::once(n.name.clone()).chain(n.tenants.iter().flat_map(|t| {
                    std::iter::once(format!("{}/{}", n.name, t.name)).chain(
                        t.replicas
                            .iter()
                            .map(|r| format!("{}/{}/{}.{}", n.name, t.name, r.name, r.replica)),
                    )
                }))
            })
            .collect()
    }

    fn psi(cpu: f64, memory: f64) -> Pressures {
        let p = |avg10| {
            Some(Pressure {
                some: Stall {
                    avg10,
                    ..Stall::default()
                },
                full: None,
            })
        };
        Pressures {
            cpu: p(cpu),
            memory: p(memory),
            io: None,
        }
    }

    #[test]
    fn tenant_and_node_rows_sum_their_replicas_and_take_the_highest_pressure() {
        let a0 = lease("n1", "a", "web", 0, 100, 10 << 20);
        let a1 = lease("n1", "a", "web", 1, 200, 20 << 20);
        let b0 = lease("n1", "b", "db", 0, 500, 100 << 20);
        let reports = vec![
            report(
                &a0,
                Some(UsageSample {
                    oom_kills: 1,
                    pressure: Some(psi(5.0, 1.0)),
                    ..usage(50, 5 << 20, 0.0)
                }),
                10,
            ),
            report(
                &a1,
                Some(UsageSample {
                    pressure: Some(psi(2.0, 7.5)),
                    ..usage(250, 8 << 20, 0.0)
                }),
                10,
            ),
            report(&b0, Some(usage(10, 50 << 20, 0.0)), 10),
        ];
        let s = Snapshot::build(
            &reading(vec![a0, a1, b0], reports, 20.0),
            None,
            SortKey::Name,
        );
        let node = &s.nodes[0];
        let a = &node.tenants[0];
        assert_eq!(a.name, "a");
        assert_eq!(
            (a.figures.grant_cpu, a.figures.grant_memory),
            (300, 30 << 20)
        );
        assert_eq!(
            (a.figures.cpu, a.figures.memory),
            (Some(300), Some(13 << 20))
        );
        assert_eq!((a.figures.oom_kills, a.figures.pids), (Some(1), Some(4)));
        assert_eq!(
            a.figures.pressure,
            Psi {
                cpu: Some(5.0),
                memory: Some(7.5),
                io: None
            }
        );
        let n = &node.figures;
        assert_eq!(
            (n.grant_cpu, n.cpu, n.memory),
            (800, Some(310), Some(63 << 20))
        );
        assert_eq!((n.oom_kills, n.pids), (Some(1), Some(6)));
        assert_eq!(
            n.pressure.memory,
            Some(7.5),
            "b has none: the highest of a's"
        );
    }

    #[test]
    fn the_throttling_rate_is_the_counters_growth_over_the_time_between_samples() {
        let l = lease("n1", "a", "web", 0, 100, 1 << 20);
        let at = |throttled, changed_at, taken_at| {
            reading(
                vec![l.clone()],
                vec![report(&l, Some(usage(100, 1 << 20, throttled)), changed_at)],
                taken_at,
            )
        };
        let rate = |s: &Snapshot| s.nodes[0].tenants[0].replicas[0].figures.throttled;
        let first = Snapshot::build(&at(1.0, 100, 100.5), None, SortKey::Cpu);
        assert_eq!(rate(&first), None, "one reading has no rate");
        let idle = reading(
            vec![l.clone()],
            vec![report(&l, Some(usage(0, 1 << 20, 1.0)), 100)],
            100.5,
        );
        assert_eq!(
            rate(&Snapshot::build(&idle, None, SortKey::Cpu)),
            Some(0.0),
            "no CPU used, nothing throttled"
        );
        // The agent sampled 5 s later: 2 s more throttled is 0.4 s/s, whatever the readings'
        // own interval.
        let second = Snapshot::build(&at(3.0, 105, 102.5), Some(&first), SortKey::Cpu);
        assert_eq!(rate(&second), Some(0.4));
        assert_eq!(second.nodes[0].figures.throttled, Some(0.4), "summed up");
        // No new sample since: the rate stands rather than dropping to 0.
        let third = Snapshot::build(&at(3.0, 105, 104.5), Some(&second), SortKey::Cpu);
        assert_eq!(rate(&third), Some(0.4));
        // A new sample within the same second: the readings' interval, 2 s.
        let fourth = Snapshot::build(&at(4.0, 105, 106.5), Some(&third), SortKey::Cpu);
        assert_eq!(rate(&fourth), Some(0.5));
        // The counter went back (a new group): no rate across it.
        let fifth = Snapshot::build(&at(0.5, 110, 108.5), Some(&fourth), SortKey::Cpu);
        assert_eq!(rate(&fifth), None);
        let sixth = Snapshot::build(&at(0.5, 115, 110.5), Some(&fifth), SortKey::Cpu);
        assert_eq!(rate(&sixth), Some(0.0), "not throttled since");
    }

    #[test]
    fn rows_sort_by_the_key_at_every_level_highest_first_then_by_name() {
        let leases = vec![
            lease("n1", "a", "x", 0, 100, 1 << 20),
            lease("n1", "b", "y", 0, 100, 1 << 20),
            lease("n1", "b", "y", 1, 100, 1 << 20),
            lease("n2", "a", "z", 0, 100, 1 << 20),
        ];
        let figures = [
            (10, 400, 0.0, 1.0),
            (300, 100, 0.0, 0.0),
            (20, 300, 0.0, 3.0),
            (50, 50, 0.0, 2.0),
        ];
        let build = |sort, previous: Option<&Snapshot>, t: f64| {
            let reports = leases
                .iter()
                .zip(figures)
                .map(|(l, (cpu, mib, t0, t1))| {
                    let throttled = if previous.is_some() { t1 } else { t0 };
                    report(l, Some(usage(cpu, mib << 20, throttled)), t as u64)
                })
                .collect();
            Snapshot::build(&reading(leases.clone(), reports, t), previous, sort)
        };
        let cpu = build(SortKey::Cpu, None, 10.0);
        assert_eq!(
            names(&cpu),
            [
                "n1", "n1/b", "n1/b/y.0", "n1/b/y.1", "n1/a", "n1/a/x.0", "n2", "n2/a", "n2/a/z.0"
            ]
        );
        let memory = build(SortKey::Memory, None, 10.0);
        assert_eq!(
            names(&memory),
            [
                "n1", "n1/a", "n1/a/x.0", "n1/b", "n1/b/y.1", "n1/b/y.0", "n2", "n2/a", "n2/a/z.0"
            ]
        );
        let before = build(SortKey::Throttle, None, 10.0);
        let throttle = build(SortKey::Throttle, Some(&before), 11.0);
        assert_eq!(
            names(&throttle),
            [
                "n1", "n1/b", "n1/b/y.1", "n1/b/y.0", "n1/a", "n1/a/x.0", "n2", "n2/a", "n2/a/z.0"
            ]
        );
        let name = build(SortKey::Name, None, 10.0);
        assert_eq!(
            names(&name),
            [
                "n1", "n1/a", "n1/a/x.0", "n1/b", "n1/b/y.0", "n1/b/y.1", "n2", "n2/a", "n2/a/z.0"
            ]
        );
    }

    #[test]
    fn a_replica_without_usage_or_report_has_its_grant_and_blank_use() {
        let reported = lease("n1", "a", "web", 0, 100, 1 << 20);
        let first_pass = lease("n1", "a", "web", 1, 100, 1 << 20);
        let unreported = lease("n1", "a", "web", 2, 100, 1 << 20);
        let s = Snapshot::build(
            &reading(
                vec![reported.clone(), first_pass.clone(), unreported],
                vec![
                    report(&reported, Some(usage(30, 2 << 20, 0.0)), 5),
                    report(&first_pass, None, 5),
                ],
                6.0,
            ),
            None,
            SortKey::Name,
        );
        let rows = &s.nodes[0].tenants[0].replicas;
        assert_eq!(rows[1].figures.cpu, None);
        assert_eq!(
            rows[1].figures.pids,
            Some(1),
            "the process count of the report"
        );
        assert_eq!(rows[2].state, NO_REPORT);
        assert_eq!(
            (
                rows[2].figures.grant_cpu,
                rows[2].figures.cpu,
                rows[2].figures.pids
            ),
            (100, None, None)
        );
        let tenant = &s.nodes[0].tenants[0].figures;
        assert_eq!(
            (tenant.grant_cpu, tenant.cpu, tenant.pids),
            (300, Some(30), Some(3))
        );
        assert!(tenant.pressure.is_empty(), "cgroup v1: no pressure");
    }

    #[test]
    fn a_node_whose_agent_is_gone_keeps_its_last_report_and_says_so() {
        let here = lease("n1", "a", "web", 0, 100, 1 << 20);
        let there = lease("n2", "a", "web", 1, 100, 1 << 20);
        let mut r = reading(
            vec![here.clone(), there.clone()],
            vec![
                report(&here, Some(usage(10, 1 << 20, 0.0)), 5),
                report(&there, Some(usage(90, 1 << 20, 0.0)), 5),
            ],
            6.0,
        );
        r.alive.remove("n2");
        r.registered.remove("n2");
        r.registered.insert("n3".into());
        r.alive.insert("n3".into());
        let s = Snapshot::build(&r, None, SortKey::Name);
        let nodes: Vec<(&str, bool, Option<i64>)> = s
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.agent_alive, n.figures.cpu))
            .collect();
        assert_eq!(
            nodes,
            [
                ("n1", true, Some(10)),
                ("n2", false, Some(90)),
                ("n3", true, None)
            ],
            "n3 registered without leases"
        );
    }

    #[test]
    fn a_snapshot_is_fresh_once_every_busy_replica_of_a_live_node_has_a_new_sample() {
        let busy = lease("n1", "a", "web", 0, 100, 1 << 20);
        let idle = lease("n1", "a", "web", 1, 100, 1 << 20);
        let gone = lease("n2", "a", "web", 2, 100, 1 << 20);
        let at = |busy_changed: u64, busy_cpu: i64| {
            let mut r = reading(
                vec![busy.clone(), idle.clone(), gone.clone()],
                vec![
                    report(&busy, Some(usage(busy_cpu, 1 << 20, 0.0)), busy_changed),
                    report(&idle, Some(usage(0, 1 << 20, 0.0)), 1),
                    report(&gone, Some(usage(70, 1 << 20, 0.0)), 1),
                ],
                busy_changed as f64,
            );
            r.alive.remove("n2");
            Snapshot::build(&r, None, SortKey::Cpu)
        };
        let first = at(5, 40);
        assert!(
            !at(5, 40).fresh_since(&first),
            "the busy one has no new sample"
        );
        assert!(at(10, 45).fresh_since(&first));
        assert!(at(5, 45).fresh_since(&first), "new within the same second");
    }
}
