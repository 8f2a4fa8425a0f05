//! The one table of the cgroup files corral touches: the knobs it writes ([`Knob`]) and the
//! files it only reads ([`Stat`]). For each: its file name, the cgroup version(s) that have
//! it, its controller (which v1 hierarchy holds it, and which controller a missing one
//! lacks); for a knob also the shape of its value, how it is written, in which pass, and
//! when a value read back is the one written.
//!
//! What the table guarantees:
//! - A knob is a [`Knob`]: the desired and observed trees, the diff and the executor are
//!   keyed by it, and [`super::fs::Cgroupfs::write`] takes nothing else, so a name that is
//!   not in this table can never be written; a [`Stat`] can only be read.
//! - Every file names a real file of its version, and [`super::fs::Cgroupfs`] never looks
//!   for a file on the other version: a v1 knob on v2 is "not offered", not a stray path.
//! - Whatever switches on a knob asks the table: its v1 hierarchy ([`Knob::controller`]),
//!   the text written ([`Knob::text`]), the word for "no limit" ([`Knob::none`]), the
//!   comparison of a read-back ([`Knob::same`]), and its pass ([`Knob::phase`]). The
//!   values themselves are computed in [`super::values`].
//! - A group's knobs are written in [`Knob`]'s order: structural knobs first, then by file
//!   name. A refused write is retried after the others by [`super::exec::apply`].
//!
//! Like Koordinator's typed resource registry (one value per cgroup file, per version, with
//! its subsystem and validator), but a closed Rust enum: the compiler checks every `match`.
//!
//! | knob | version | controller | value | pass | read back equal when |
//! |---|---|---|---|---|---|
//! | `cgroup.subtree_control` | v2 | — | controller names `cpu memory`, written `+cpu +memory` | structure | same names, any order, `+` or not |
//! | `cpu.shares` | v1 | cpu | number | values | same text |
//! | `cpu.cfs_period_us` | v1 | cpu | number | values | same text |
//! | `cpu.cfs_quota_us` | v1 | cpu | number, `-1` for none | values | same text |
//! | `cpu.weight` | v2 | cpu | number | values | same text |
//! | `cpu.max` | v2 | cpu | `QUOTA PERIOD`, quota `max` for none | values | same text |
//! | `memory.limit_in_bytes` | v1 | memory | number, `-1` for none | values | same text, or both unlimited (`-1` or at least 9223372036854771712) |
//! | `memory.max` | v2 | memory | number, `max` for none | values | same text |
//! | `memory.high` | v2 | memory | number, `max` for none | values | same text |
//! | `memory.low` | v2 | memory | number | values | same text |
//! | `memory.min` | v2 | memory | number | values | same text |
//! | `pids.max` | v1, v2 | pids | number, `max` for none | values | same text |
//! | `blkio.bfq.weight` | v1 | blkio | number | values | same text |
//! | `io.weight` | v2 | io | `default N` | values | same first line |
//!
//! "Same text" is after surrounding whitespace is trimmed; memory values are rounded down
//! to a page before they are written, so the kernel keeps them as they are. A unit test
//! checks that this doc table is the table.

use std::fmt;

use serde::{Serialize, Serializer};

use super::layout::Controller;
use super::values::V1_MEMORY_UNLIMITED;

/// Which cgroup versions have a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// v1 hierarchies only (also hybrid mode, whose controllers are v1).
    V1,
    /// The v2 unified hierarchy only.
    V2,
    /// Both.
    Both,
}

impl Version {
    /// True when a hierarchy of this kind (`v2` or not) has the file.
    pub const fn on(self, v2: bool) -> bool {
        match self {
            Version::V1 => !v2,
            Version::V2 => v2,
            Version::Both => true,
        }
    }
}

/// The shape of a knob's value, as [`super::values`] computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// A number.
    Number,
    /// A number, or the word `none` for no limit.
    Limit {
        /// The word for no limit (`max`, or `-1` on v1).
        none: &'static str,
    },
    /// `QUOTA PERIOD` in microseconds, the quota being `none` for no limit (v2 `cpu.max`).
    QuotaPeriod {
        /// The word for no quota.
        none: &'static str,
    },
    /// `default N`: the weight of every device without its own (v2 `io.weight`).
    DefaultWeight,
    /// Controller names, `cpu memory`; written `+cpu +memory`, read back without the `+`.
    Controllers,
}

impl Value {
    /// True when `text` has this shape (what [`super::values`] produces, and what the kernel
    /// accepts).
    pub fn admits(self, text: &str) -> bool {
        let number = |t: &str| t.parse::<i64>().is_ok();
        match self {
            Value::Number => number(text),
            Value::Limit { none } => text == none || number(text),
            Value::QuotaPeriod { none } => text
                .split_once(' ')
                .is_some_and(|(quota, period)| (quota == none || number(quota)) && number(period)),
            Value::DefaultWeight => text
                .strip_prefix("default ")
                .is_some_and(|w| w.parse::<u16>().is_ok()),
            Value::Controllers => text
                .split_whitespace()
                .all(|name| Controller::ALL.iter().any(|c| c.v2_name() == Some(name))),
        }
    }
}

/// Which pass writes a knob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// With the groups' creation, before every other knob, in a pass of its own: writing
    /// it makes other knobs' files (enabling a controller for the children makes theirs).
    Structure,
    /// After the structural knobs, once every file exists.
    Values,
}

/// When a value read back from a knob is the value written. Surrounding whitespace never
/// counts, and the same text is always equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The same text only.
    Exact,
    /// Also when both mean no limit: the knob's word for none, or a number at least this
    /// (v1 memory writes -1 back as `PAGE_COUNTER_MAX` in bytes, rounded to a page).
    UnlimitedAtLeast(i64),
    /// The same first line (v2 `io.weight` lists per-device weights after `default N`).
    FirstLine,
    /// The same names, in any order, with or without a leading `+` (written `+cpu +memory`,
    /// read back `cpu memory`).
    Names,
}

/// One row of the table: everything corral knows about a knob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The file name, in the group's directory.
    pub name: &'static str,
    /// The versions that have it.
    pub version: Version,
    /// Its controller: the v1 hierarchy that holds it, the controller a missing one lacks;
    /// `None` for the cgroup core's own files.
    pub controller: Option<Controller>,
    /// The shape of its value.
    pub value: Value,
    /// The pass that writes it.
    pub phase: Phase,
    /// How a read-back is compared.
    pub compare: Compare,
}

/// A knob: a cgroup file corral writes. Ordered as a group's knobs are written: by
/// [`Phase`], then by file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Knob {
    /// `cgroup.subtree_control` (v2): the controllers enabled for the children.
    SubtreeControl,
    /// `cpu.shares` (v1): CPU weight.
    CpuShares,
    /// `cpu.cfs_period_us` (v1): the CPU bandwidth period.
    CpuCfsPeriod,
    /// `cpu.cfs_quota_us` (v1): the CPU time allowed per period.
    CpuCfsQuota,
    /// `cpu.weight` (v2): CPU weight.
    CpuWeight,
    /// `cpu.max` (v2): CPU quota and period.
    CpuMax,
    /// `memory.limit_in_bytes` (v1): the memory limit.
    MemoryLimit,
    /// `memory.max` (v2): the memory limit.
    MemoryMax,
    /// `memory.high` (v2): where reclaim throttles.
    MemoryHigh,
    /// `memory.low` (v2): best-effort memory protection.
    MemoryLow,
    /// `memory.min` (v2): hard memory protection.
    MemoryMin,
    /// `pids.max` (v1 and v2): the most processes and threads.
    PidsMax,
    /// `blkio.bfq.weight` (v1): IO weight under BFQ.
    BlkioBfqWeight,
    /// `io.weight` (v2): IO weight.
    IoWeight,
}

impl Knob {
    /// Every knob, in the order of the table.
    pub const ALL: [Knob; 14] = [
        Knob::SubtreeControl,
        Knob::CpuShares,
        Knob::CpuCfsPeriod,
        Knob::CpuCfsQuota,
        Knob::CpuWeight,
        Knob::CpuMax,
        Knob::MemoryLimit,
        Knob::MemoryMax,
        Knob::MemoryHigh,
        Knob::MemoryLow,
        Knob::MemoryMin,
        Knob::PidsMax,
        Knob::BlkioBfqWeight,
        Knob::IoWeight,
    ];

    /// The knob's row of the table.
    pub const fn spec(self) -> Spec {
        use Compare::{Exact, FirstLine, Names, UnlimitedAtLeast};
        use Controller::{Cpu, Io, Memory, Pids};
        use Phase::{Structure, Values};
        use Value::{Controllers, DefaultWeight, Limit, Number, QuotaPeriod};
        use Version::{Both, V1, V2};
        match self {
            Knob::SubtreeControl => Spec {
                name: "cgroup.subtree_control",
                version: V2,
                controller: None,
                value: Controllers,
                phase: Structure,
                compare: Names,
            },
            Knob::CpuShares => Spec {
                name: "cpu.shares",
                version: V1,
                controller: Some(Cpu),
                value: Number,
                phase: Values,
                compare: Exact,
            },
            Knob::CpuCfsPeriod => Spec {
                name: "cpu.cfs_period_us",
                version: V1,
                controller: Some(Cpu),
                value: Number,
                phase: Values,
                compare: Exact,
            },
            Knob::CpuCfsQuota => Spec {
                name: "cpu.cfs_quota_us",
                version: V1,
                controller: Some(Cpu),
                value: Limit { none: "-1" },
                phase: Values,
                compare: Exact,
            },
            Knob::CpuWeight => Spec {
                name: "cpu.weight",
                version: V2,
                controller: Some(Cpu),
                value: Number,
                phase: Values,
                compare: Exact,
            },
            Knob::CpuMax => Spec {
                name: "cpu.max",
                version: V2,
                controller: Some(Cpu),
                value: QuotaPeriod { none: "max" },
                phase: Values,
                compare: Exact,
            },
            Knob::MemoryLimit => Spec {
                name: "memory.limit_in_bytes",
                version: V1,
                controller: Some(Memory),
                value: Limit { none: "-1" },
                phase: Values,
                compare: UnlimitedAtLeast(V1_MEMORY_UNLIMITED),
            },
            Knob::MemoryMax => Spec {
                name: "memory.max",
                version: V2,
                controller: Some(Memory),
                value: Limit { none: "max" },
                phase: Values,
                compare: Exact,
            },
            Knob::MemoryHigh => Spec {
                name: "memory.high",
                version: V2,
                controller: Some(Memory),
                value: Limit { none: "max" },
                phase: Values,
                compare: Exact,
            },
            Knob::MemoryLow => Spec {
                name: "memory.low",
                version: V2,
                controller: Some(Memory),
                value: Number,
                phase: Values,
                compare: Exact,
            },
            Knob::MemoryMin => Spec {
                name: "memory.min",
                version: V2,
                controller: Some(Memory),
                value: Number,
                phase: Values,
                compare: Exact,
            },
            Knob::PidsMax => Spec {
                name: "pids.max",
                version: Both,
                controller: Some(Pids),
                value: Limit { none: "max" },
                phase: Values,
                compare: Exact,
            },
            Knob::BlkioBfqWeight => Spec {
                name: "blkio.bfq.weight",
                version: V1,
                controller: Some(Io),
                value: Number,
                phase: Values,
                compare: Exact,
            },
            Knob::IoWeight => Spec {
                name: "io.weight",
                version: V2,
                controller: Some(Io),
                value: DefaultWeight,
                phase: Values,
                compare: FirstLine,
            },
        }
    }

    /// The file name.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// The versions that have it.
    pub const fn version(self) -> Version {
        self.spec().version
    }

    /// Its controller; `None` for a file of the cgroup core.
    pub const fn controller(self) -> Option<Controller> {
        self.spec().controller
    }

    /// The pass that writes it.
    pub const fn phase(self) -> Phase {
        self.spec().phase
    }

    /// The knob of this file name, if corral writes one.
    pub fn named(name: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The word this knob takes for "no limit" (`max`, `-1`); `None` when it has none.
    pub const fn none(self) -> Option<&'static str> {
        match self.spec().value {
            Value::Limit { none } | Value::QuotaPeriod { none } => Some(none),
            Value::Number | Value::DefaultWeight | Value::Controllers => None,
        }
    }

    /// The text written to the file for `value`: `cpu memory` becomes `+cpu +memory` for
    /// [`Value::Controllers`]; any other value is written as it is.
    pub fn text(self, value: &str) -> String {
        match self.spec().value {
            Value::Controllers => value
                .split_whitespace()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" "),
            Value::Number
            | Value::Limit { .. }
            | Value::QuotaPeriod { .. }
            | Value::DefaultWeight => value.to_string(),
        }
    }

    /// True when `observed`, as read back from this knob, is what writing `desired` means,
    /// by the knob's [`Compare`].
    pub fn same(self, desired: &str, observed: &str) -> bool {
        let (desired, observed) = (desired.trim(), observed.trim());
        if desired == observed {
            return true;
        }
        match self.spec().compare {
            Compare::Exact => false,
            Compare::UnlimitedAtLeast(at_least) => {
                let unlimited = |v: &str| {
                    self.none() == Some(v) || v.parse::<i64>().is_ok_and(|n| n >= at_least)
                };
                unlimited(desired) && unlimited(observed)
            }
            Compare::FirstLine => observed.lines().next().map(str::trim) == Some(desired),
            Compare::Names => names(desired) == names(observed),
        }
    }
}

/// Controller names of `cgroup.subtree_control`, sorted, without their `+`.
fn names(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = text
        .split_whitespace()
        .map(|c| c.trim_start_matches('+'))
        .collect();
    names.sort_unstable();
    names
}

impl PartialOrd for Knob {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Knob {
    /// By phase, then by file name: the order a group's knobs are written in.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.phase(), self.name()).cmp(&(other.phase(), other.name()))
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Knob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A cgroup file corral only reads: counters, pressure, the controllers offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stat {
    /// `cgroup.controllers` (v2): the controllers a group may enable for its children.
    Controllers,
    /// `cpu.stat` (v1 and v2): CPU use (v2) and throttling.
    CpuStat,
    /// `cpu.pressure` (v2): CPU pressure stall information.
    CpuPressure,
    /// `cpuacct.usage` (v1): CPU time used, nanoseconds.
    CpuacctUsage,
    /// `memory.usage_in_bytes` (v1): memory in use.
    MemoryUsage,
    /// `memory.max_usage_in_bytes` (v1): highest memory use.
    MemoryMaxUsage,
    /// `memory.oom_control` (v1): OOM kills.
    MemoryOomControl,
    /// `memory.current` (v2): memory in use.
    MemoryCurrent,
    /// `memory.peak` (v2, Linux 5.19+): highest memory use.
    MemoryPeak,
    /// `memory.events` (v2): times the group met its memory bounds.
    MemoryEvents,
    /// `memory.pressure` (v2): memory pressure stall information.
    MemoryPressure,
    /// `io.pressure` (v2): IO pressure stall information.
    IoPressure,
    /// `pids.current` (v1 and v2): processes and threads.
    PidsCurrent,
}

impl Stat {
    /// Every file corral only reads.
    pub const ALL: [Stat; 13] = [
        Stat::Controllers,
        Stat::CpuStat,
        Stat::CpuPressure,
        Stat::CpuacctUsage,
        Stat::MemoryUsage,
        Stat::MemoryMaxUsage,
        Stat::MemoryOomControl,
        Stat::MemoryCurrent,
        Stat::MemoryPeak,
        Stat::MemoryEvents,
        Stat::MemoryPressure,
        Stat::IoPressure,
        Stat::PidsCurrent,
    ];

    /// Its file name, versions and controller.
    pub const fn file(self) -> CgroupFile {
        use Controller::{Cpu, Cpuacct, Io, Memory, Pids};
        use Version::{Both, V1, V2};
        let (name, version, controller) = match self {
            Stat::Controllers => ("cgroup.controllers", V2, None),
            Stat::CpuStat => ("cpu.stat", Both, Some(Cpu)),
            Stat::CpuPressure => ("cpu.pressure", V2, Some(Cpu)),
            Stat::CpuacctUsage => ("cpuacct.usage", V1, Some(Cpuacct)),
            Stat::MemoryUsage => ("memory.usage_in_bytes", V1, Some(Memory)),
            Stat::MemoryMaxUsage => ("memory.max_usage_in_bytes", V1, Some(Memory)),
            Stat::MemoryOomControl => ("memory.oom_control", V1, Some(Memory)),
            Stat::MemoryCurrent => ("memory.current", V2, Some(Memory)),
            Stat::MemoryPeak => ("memory.peak", V2, Some(Memory)),
            Stat::MemoryEvents => ("memory.events", V2, Some(Memory)),
            Stat::MemoryPressure => ("memory.pressure", V2, Some(Memory)),
            Stat::IoPressure => ("io.pressure", V2, Some(Io)),
            Stat::PidsCurrent => ("pids.current", Both, Some(Pids)),
        };
        CgroupFile {
            name,
            version,
            controller,
        }
    }

    /// The file name.
    pub const fn name(self) -> &'static str {
        self.file().name
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a [`Knob`] or a [`Stat`] is: what the filesystem needs to find it. Made only from
/// those, so every file corral opens is in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupFile {
    name: &'static str,
    version: Version,
    controller: Option<Controller>,
}

impl CgroupFile {
    /// The file name.
    pub const fn name(self) -> &'static str {
        self.name
    }

    /// The versions that have it.
    pub const fn version(self) -> Version {
        self.version
    }

    /// Its controller; `None` for a file of the cgroup core.
    pub const fn controller(self) -> Option<Controller> {
        self.controller
    }
}

impl From<Knob> for CgroupFile {
    fn from(knob: Knob) -> CgroupFile {
        let spec = knob.spec();
        CgroupFile {
            name: spec.name,
            version: spec.version,
            controller: spec.controller,
        }
    }
}

impl From<Stat> for CgroupFile {
    fn from(stat: Stat) -> CgroupFile {
        stat.file()
    }
}

impl fmt::Display for CgroupFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// How layout.rs told a knob's controller before this table: by the name's prefix.
    fn controller_by_prefix(knob: &str) -> Option<Controller> {
        match knob.split('.').next()? {
            "cpu" => Some(Controller::Cpu),
            "cpuacct" => Some(Controller::Cpuacct),
            "memory" => Some(Controller::Memory),
            "pids" => Some(Controller::Pids),
            "blkio" | "io" => Some(Controller::Io),
            _ => None,
        }
    }

    fn files() -> Vec<CgroupFile> {
        Knob::ALL
            .into_iter()
            .map(CgroupFile::from)
            .chain(Stat::ALL.into_iter().map(CgroupFile::from))
            .collect()
    }

    #[test]
    fn every_file_keeps_the_controller_its_name_gave_it() {
        for file in files() {
            assert_eq!(
                file.controller(),
                controller_by_prefix(file.name()),
                "{file}"
            );
        }
    }

    /// The interface files of each version, as the kernel's documentation lists them
    /// (admin-guide/cgroup-v1/*.rst, admin-guide/cgroup-v2.rst, block/bfq-iosched.rst).
    const KERNEL_V1: &[&str] = &[
        "cpu.shares",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
        "cpu.stat",
        "cpuacct.usage",
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        "memory.max_usage_in_bytes",
        "memory.oom_control",
        "pids.max",
        "pids.current",
        "blkio.bfq.weight",
    ];
    const KERNEL_V2: &[&str] = &[
        "cgroup.controllers",
        "cgroup.subtree_control",
        "cpu.stat",
        "cpu.weight",
        "cpu.max",
        "cpu.pressure",
        "memory.current",
        "memory.min",
        "memory.low",
        "memory.high",
        "memory.max",
        "memory.peak",
        "memory.events",
        "memory.pressure",
        "io.weight",
        "io.pressure",
        "pids.max",
        "pids.current",
    ];

    #[test]
    fn every_file_is_a_real_file_of_its_versions_only() {
        for file in files() {
            for (v2, kernel) in [(false, KERNEL_V1), (true, KERNEL_V2)] {
                assert_eq!(
                    file.version().on(v2),
                    kernel.contains(&file.name()),
                    "{file} on v{}",
                    if v2 { 2 } else { 1 }
                );
            }
        }
        let names: BTreeSet<&str> = files().iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Knob::ALL.len() + Stat::ALL.len(), "unique");
        for knob in Knob::ALL {
            assert_eq!(Knob::named(knob.name()), Some(knob));
        }
        assert_eq!(Knob::named("cgroup.procs"), None);
        assert_eq!(Knob::named("cpu.stat"), None, "read, never written");
    }

    #[test]
    fn knobs_are_written_structure_first_then_by_name() {
        // A group holds the knobs of one version; in each, the one structural knob's name
        // sorts first anyway, so the write order is the file-name order it always was.
        for v2 in [false, true] {
            let mut by_order: Vec<Knob> = Knob::ALL
                .into_iter()
                .filter(|k| k.version().on(v2))
                .collect();
            by_order.sort();
            let mut by_name = by_order.clone();
            by_name.sort_by_key(|k| k.name());
            assert_eq!(by_order, by_name, "v2={v2}");
        }
        let mut all = Knob::ALL.to_vec();
        all.sort();
        assert_eq!(all[0], Knob::SubtreeControl, "structure first");
        let structural: Vec<Knob> = Knob::ALL
            .into_iter()
            .filter(|k| k.phase() == Phase::Structure)
            .collect();
        assert_eq!(structural, [Knob::SubtreeControl]);
    }

    #[test]
    fn values_are_written_as_they_are_but_controllers_with_a_plus() {
        assert_eq!(Knob::SubtreeControl.text("cpu memory"), "+cpu +memory");
        assert_eq!(Knob::SubtreeControl.text(""), "");
        assert_eq!(Knob::CpuMax.text("max 100000"), "max 100000");
        assert_eq!(Knob::IoWeight.text("default 100"), "default 100");
        assert_eq!(Knob::CpuCfsQuota.none(), Some("-1"));
        assert_eq!(Knob::MemoryLimit.none(), Some("-1"));
        assert_eq!(Knob::MemoryMax.none(), Some("max"));
        assert_eq!(Knob::CpuMax.none(), Some("max"));
        assert_eq!(Knob::PidsMax.none(), Some("max"));
        assert_eq!(Knob::CpuShares.none(), None);
        assert_eq!(Knob::MemoryMin.none(), None);
    }

    #[test]
    fn value_shapes() {
        assert!(Value::Number.admits("256"));
        assert!(!Value::Number.admits("max"));
        assert!(Value::Limit { none: "max" }.admits("max"));
        assert!(!Value::Limit { none: "max" }.admits("-"));
        assert!(Value::QuotaPeriod { none: "max" }.admits("max 100000"));
        assert!(Value::QuotaPeriod { none: "max" }.admits("150000 100000"));
        assert!(!Value::QuotaPeriod { none: "max" }.admits("150000"));
        assert!(Value::DefaultWeight.admits("default 100"));
        assert!(!Value::DefaultWeight.admits("100"));
        assert!(Value::Controllers.admits("cpu memory pids io"));
        assert!(Value::Controllers.admits(""));
        assert!(!Value::Controllers.admits("+cpu"));
    }

    /// Each rule of [`Compare`], on the knob that has it: dropping a rule (making its knob
    /// `Exact`) fails here.
    #[test]
    fn read_backs_compare_as_the_kernel_writes_them() {
        // Exact, with whitespace aside.
        assert!(Knob::CpuShares.same("256", "256\n"));
        assert!(!Knob::CpuShares.same("256", "1024"));
        assert!(!Knob::MemoryMax.same("max", "9223372036854771712"));
        assert!(!Knob::CpuMax.same("max 100000", "max"));
        // v1 unlimited memory reads back as a huge number.
        assert_eq!(
            Knob::MemoryLimit.spec().compare,
            Compare::UnlimitedAtLeast(V1_MEMORY_UNLIMITED)
        );
        assert!(Knob::MemoryLimit.same("-1", "9223372036854771712"));
        assert!(Knob::MemoryLimit.same("-1", "9223372036854775807"));
        assert!(!Knob::MemoryLimit.same("-1", "9223372036854767616"));
        assert!(!Knob::MemoryLimit.same("4096", "8192"));
        assert!(!Knob::MemoryLimit.same("-1", "max"));
        // io.weight: per-device weights after the default.
        assert!(Knob::IoWeight.same("default 100", "default 100\n8:0 200"));
        assert!(!Knob::IoWeight.same("default 100", "default 200\n8:0 100"));
        // Controllers: any order, `+` or not.
        assert!(Knob::SubtreeControl.same("cpu memory", "memory cpu"));
        assert!(Knob::SubtreeControl.same("cpu memory", "+cpu +memory"));
        assert!(!Knob::SubtreeControl.same("cpu memory", "cpu"));
        assert!(Knob::SubtreeControl.same("", ""));
        // Every knob with a rule other than Exact is one of those above.
        let ruled: Vec<Knob> = Knob::ALL
            .into_iter()
            .filter(|k| k.spec().compare != Compare::Exact)
            .collect();
        assert_eq!(
            ruled,
            [Knob::SubtreeControl, Knob::MemoryLimit, Knob::IoWeight]
        );
    }

    /// The row of the module doc's table for `knob`.
    fn doc_row(knob: Knob) -> String {
        let spec = knob.spec();
        let version = match spec.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
            Version::Both => "v1, v2",
        };
        let controller = spec.controller.map_or("—", |c| match spec.version {
            Version::V2 => c.v2_name().unwrap_or("—"),
            Version::V1 | Version::Both => c.v1_name(),
        });
        let value = match spec.value {
            Value::Number => "number".to_string(),
            Value::Limit { none } => format!("number, `{none}` for none"),
            Value::QuotaPeriod { none } => format!("`QUOTA PERIOD`, quota `{none}` for none"),
            Value::DefaultWeight => "`default N`".to_string(),
            Value::Controllers => {
                "controller names `cpu memory`, written `+cpu +memory`".to_string()
            }
        };
        let phase = match spec.phase {
            Phase::Structure => "structure",
            Phase::Values => "values",
        };
        let compare = match spec.compare {
            Compare::Exact => "same text".to_string(),
            Compare::UnlimitedAtLeast(n) => format!(
                "same text, or both unlimited (`{}` or at least {n})",
                knob.none().unwrap_or_default()
            ),
            Compare::FirstLine => "same first line".to_string(),
            Compare::Names => "same names, any order, `+` or not".to_string(),
        };
        format!(
            "//! | `{}` | {version} | {controller} | {value} | {phase} | {compare} |",
            spec.name
        )
    }

    #[test]
    fn the_doc_table_is_the_table() {
        let source = include_str!("knobs.rs");
        let rows: Vec<&str> = source
            .lines()
            .filter(|l| l.starts_with("//! | `"))
            .collect();
        let want: Vec<String> = Knob::ALL.into_iter().map(doc_row).collect();
        assert_eq!(rows, want);
    }
}
