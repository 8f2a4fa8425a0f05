//! Reading the subtree as it is: which groups exist, the knob values the desired tree
//! cares about, the processes in each group, and the counters usage is computed from.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::fs::{CgroupError, Cgroupfs};
use super::knobs::Stat;
use super::pressure::{Pressure, Pressures};
use super::tree::{DesiredTree, GroupPath, ObservedGroup, ObservedTree};

/// Reads every corral group below the root; for the groups and knobs of `desired`, the
/// values too. Knobs of groups that are not desired are not read.
///
/// # Errors
/// A file exists but cannot be read.
pub fn observe(fs: &Cgroupfs, desired: &DesiredTree) -> Result<ObservedTree, CgroupError> {
    let mut tree = ObservedTree::default();
    for knob in desired.root_knobs.keys() {
        tree.root_knobs.insert(*knob, fs.read(None, *knob)?);
    }
    let found: BTreeSet<GroupPath> = fs.groups()?.into_iter().collect();
    for group in &found {
        let mut observed = ObservedGroup {
            pids: fs.procs(group)?,
            ..ObservedGroup::default()
        };
        if let Some(want) = desired.groups.get(group) {
            for knob in want.knobs.keys() {
                observed.knobs.insert(*knob, fs.read(Some(group), *knob)?);
            }
        }
        tree.groups.insert(group.clone(), observed);
    }
    Ok(tree)
}

/// Cumulative counters of one group, as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// CPU time used, nanoseconds.
    pub cpu_nanos: u64,
    /// Time throttled by the quota, nanoseconds.
    pub throttled_nanos: u64,
    /// Memory in use, bytes.
    pub memory: u64,
    /// Highest memory use, bytes (0 when the kernel does not keep it).
    pub memory_peak: u64,
    /// Processes killed for exceeding the memory limit.
    pub oom_kills: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Pressure stall information; every resource `None` on v1.
    pub pressure: Pressures,
    /// `memory.events`; `None` on v1.
    pub memory_events: Option<MemoryEvents>,
}

/// Counters of v2 `memory.events`: how often the group met its memory bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEvents {
    /// Times the group was throttled and reclaimed for going over `memory.high`.
    pub high: u64,
    /// Times the group's use was about to go over `memory.max`.
    pub max: u64,
    /// Processes of the group the OOM killer killed.
    pub oom_kill: u64,
}

/// Reads a group's counters; a counter the kernel does not offer reads as 0, except the
/// v2-only pressure and memory events, which are `None` without their file.
///
/// # Errors
/// A counter file exists but cannot be read. A pressure file that cannot be read counts
/// as missing: kernels before 6.1 with PSI disabled at boot refuse reads with
/// `EOPNOTSUPP`.
pub fn counters(fs: &Cgroupfs, group: &GroupPath) -> Result<Counters, CgroupError> {
    let g = Some(group);
    let number =
        |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    let field = |text: &Option<String>, name: &str| {
        text.as_deref()
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    if fs.is_v2() {
        let cpu_stat = fs.read(g, Stat::CpuStat)?;
        let events = fs.read(g, Stat::MemoryEvents)?;
        let pressure = |stat: Stat| {
            fs.read(g, stat)
                .ok()
                .flatten()
                .as_deref()
                .and_then(Pressure::parse)
        };
        Ok(Counters {
            cpu_nanos: field(&cpu_stat, "usage_usec").saturating_mul(1000),
            throttled_nanos: field(&cpu_stat, "throttled_usec").saturating_mul(1000),
            memory: number(fs.read(g, Stat::MemoryCurrent)?),
            memory_peak: number(fs.read(g, Stat::MemoryPeak)?),
            oom_kills: field(&events, "oom_kill"),
            pids: number(fs.read(g, Stat::PidsCurrent)?),
            pressure: Pressures {
                cpu: pressure(Stat::CpuPressure),
                memory: pressure(Stat::MemoryPressure),
                io: pressure(Stat::IoPressure),
            },
            memory_events: events.is_some().then(|| MemoryEvents {
                high: field(&events, "high"),
                max: field(&events, "max"),
                oom_kill: field(&events, "oom_kill"),
            }),
        })
    } else {
        let cpu_stat = fs.read(g, Stat::CpuStat)?;
        let oom = fs.read(g, Stat::MemoryOomControl)?;
        Ok(Counters {
            cpu_nanos: number(fs.read(g, Stat::CpuacctUsage)?),
            throttled_nanos: field(&cpu_stat, "throttled_time"),
            memory: number(fs.read(g, Stat::MemoryUsage)?),
            memory_peak: number(fs.read(g, Stat::MemoryMaxUsage)?),
            oom_kills: field(&oom, "oom_kill"),
            pids: number(fs.read(g, Stat::PidsCurrent)?),
            pressure: Pressures::default(),
            memory_events: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::ReplicaKey;
    use crate::cgroup::layout::Layout;

    #[test]
    fn v1_counters_come_from_their_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = Cgroupfs::new(Layout::v1_at(tmp.path()), "corral").unwrap();
        let g = GroupPath::replica(&ReplicaKey::new("t", "w", 0)).unwrap();
        for dir in fs.dirs(Some(&g)) {
            std::fs::create_dir_all(dir).unwrap();
        }
        let write = |knob: Stat, text: &str| {
            std::fs::write(fs.knob_path(Some(&g), knob).unwrap(), text).unwrap()
        };
        write(Stat::CpuacctUsage, "5000000000\n");
        write(
            Stat::CpuStat,
            "nr_periods 10\nnr_throttled 2\nthrottled_time 300000000\n",
        );
        write(Stat::MemoryUsage, "1048576\n");
        write(Stat::MemoryMaxUsage, "2097152\n");
        write(
            Stat::MemoryOomControl,
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        write(Stat::PidsCurrent, "4\n");
        assert_eq!(
            counters(&fs, &g).unwrap(),
            Counters {
                cpu_nanos: 5_000_000_000,
                throttled_nanos: 300_000_000,
                memory: 1 << 20,
                memory_peak: 2 << 20,
                oom_kills: 3,
                pids: 4,
                pressure: Pressures::default(),
                memory_events: None,
            }
        );
    }

    /// A replica group `t/w.0` in a directory laid out like a v2 hierarchy.
    fn v2_group() -> (tempfile::TempDir, Cgroupfs, GroupPath) {
        let tmp = tempfile::tempdir().unwrap();
        let fs = Cgroupfs::new(Layout::v2_at(tmp.path()), "corral").unwrap();
        let g = GroupPath::replica(&ReplicaKey::new("t", "w", 0)).unwrap();
        std::fs::create_dir_all(&fs.dirs(Some(&g))[0]).unwrap();
        (tmp, fs, g)
    }

    /// Writes a knob file of `g`, as the kernel would hold it.
    fn put(fs: &Cgroupfs, g: &GroupPath, knob: Stat, text: &str) {
        std::fs::write(fs.knob_path(Some(g), knob).unwrap(), text).unwrap();
    }

    #[test]
    fn v2_counters_and_missing_files() {
        let (_tmp, fs, g) = v2_group();
        let write = |knob: Stat, text: &str| put(&fs, &g, knob, text);
        write(
            Stat::CpuStat,
            "usage_usec 1500\nuser_usec 1000\nthrottled_usec 20\n",
        );
        write(Stat::MemoryCurrent, "4096\n");
        write(
            Stat::MemoryEvents,
            "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n",
        );
        let c = counters(&fs, &g).unwrap();
        assert_eq!(
            (
                c.cpu_nanos,
                c.throttled_nanos,
                c.memory,
                c.memory_peak,
                c.oom_kills,
                c.pids
            ),
            (1_500_000, 20_000, 4096, 0, 1, 0)
        );
        assert_eq!(c.pressure, Pressures::default(), "no pressure files: none");
        assert_eq!(
            c.memory_events,
            Some(MemoryEvents {
                high: 0,
                max: 1,
                oom_kill: 1
            })
        );
    }

    #[test]
    fn v2_pressure_and_memory_events_are_read_and_malformed_files_are_absent() {
        let (_tmp, fs, g) = v2_group();
        let write = |knob: Stat, text: &str| put(&fs, &g, knob, text);
        write(
            Stat::MemoryPressure,
            "some avg10=12.34 avg60=5.00 avg300=1.00 total=987654\n\
             full avg10=2.00 avg60=1.00 avg300=0.50 total=12345\n",
        );
        write(
            Stat::CpuPressure,
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n",
        );
        write(Stat::IoPressure, "some avg10=banana\n");
        write(
            Stat::MemoryEvents,
            "low 0\nhigh 17\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n",
        );
        let c = counters(&fs, &g).unwrap();
        let memory = c.pressure.memory.unwrap();
        assert_eq!(
            (memory.some.avg10, memory.some.total_micros),
            (12.34, 987_654)
        );
        assert_eq!(memory.full.map(|f| f.total_micros), Some(12_345));
        let cpu = c.pressure.cpu.unwrap();
        assert_eq!((cpu.some.total_micros, cpu.full), (42, None));
        assert_eq!(c.pressure.io, None, "a malformed file is absent, not zero");
        assert_eq!(
            c.memory_events,
            Some(MemoryEvents {
                high: 17,
                max: 3,
                oom_kill: 2
            })
        );
        assert_eq!(c.oom_kills, 2);
    }

    #[test]
    fn an_unreadable_pressure_file_is_absent_and_the_rest_still_reads() {
        let (_tmp, fs, g) = v2_group();
        // A directory where the file should be: reading fails (EISDIR), as a kernel with
        // PSI disabled fails reads with EOPNOTSUPP.
        std::fs::create_dir(fs.knob_path(Some(&g), Stat::MemoryPressure).unwrap()).unwrap();
        std::fs::write(
            fs.knob_path(Some(&g), Stat::MemoryCurrent).unwrap(),
            "4096\n",
        )
        .unwrap();
        let c = counters(&fs, &g).unwrap();
        assert_eq!((c.pressure.memory, c.memory), (None, 4096));
        assert_eq!(c.memory_events, None, "no memory.events: none, not zeros");
    }
}
