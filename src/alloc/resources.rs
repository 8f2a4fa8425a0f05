//! Amounts of the three resources the allocator shares, in the units cgroups use:
//! CPU millicores, memory bytes, process slots.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api::Quantity;

/// One amount of each resource. Arithmetic saturates: amounts are bounded by `i64` by
/// validation, and a sum past it is still "more than any node has".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Res {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Process slots.
    pub pids: i64,
}

/// The resources, for code that treats them alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
    /// Process slots.
    Pids,
}

impl Kind {
    /// All three, in the order they are reported.
    pub const ALL: [Kind; 3] = [Kind::Cpu, Kind::Memory, Kind::Pids];

    /// The resource's name in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cpu => "cpu",
            Kind::Memory => "memory",
            Kind::Pids => "pids",
        }
    }

    /// An amount of this resource as a person writes it: `1500m`, `256Mi`, `64`.
    pub fn format(self, amount: i64) -> String {
        match self {
            Kind::Cpu => Quantity::from_millis(amount).to_string(),
            Kind::Memory => Quantity::from_bytes(amount).to_string(),
            Kind::Pids => amount.to_string(),
        }
    }
}

impl Res {
    /// Nothing.
    pub const ZERO: Res = Res {
        cpu: 0,
        memory: 0,
        pids: 0,
    };

    /// More than any node has: the "no limit" amount.
    pub const UNLIMITED: Res = Res {
        cpu: i64::MAX,
        memory: i64::MAX,
        pids: i64::MAX,
    };

    /// An amount from its parts.
    pub const fn new(cpu: i64, memory: i64, pids: i64) -> Res {
        Res { cpu, memory, pids }
    }

    /// The amount of one resource.
    pub fn get(&self, kind: Kind) -> i64 {
        match kind {
            Kind::Cpu => self.cpu,
            Kind::Memory => self.memory,
            Kind::Pids => self.pids,
        }
    }

    /// Sets the amount of one resource.
    pub fn set(&mut self, kind: Kind, value: i64) {
        match kind {
            Kind::Cpu => self.cpu = value,
            Kind::Memory => self.memory = value,
            Kind::Pids => self.pids = value,
        }
    }

    /// Applies `f` to each resource.
    pub fn map(self, mut f: impl FnMut(Kind, i64) -> i64) -> Res {
        Res {
            cpu: f(Kind::Cpu, self.cpu),
            memory: f(Kind::Memory, self.memory),
            pids: f(Kind::Pids, self.pids),
        }
    }

    /// Combines two amounts resource by resource.
    pub fn zip(self, other: Res, mut f: impl FnMut(Kind, i64, i64) -> i64) -> Res {
        Res {
            cpu: f(Kind::Cpu, self.cpu, other.cpu),
            memory: f(Kind::Memory, self.memory, other.memory),
            pids: f(Kind::Pids, self.pids, other.pids),
        }
    }

    /// The sum, saturating.
    pub fn plus(self, other: Res) -> Res {
        self.zip(other, |_, a, b| a.saturating_add(b))
    }

    /// The difference, saturating (never below `i64::MIN`).
    pub fn minus(self, other: Res) -> Res {
        self.zip(other, |_, a, b| a.saturating_sub(b))
    }

    /// The larger of each resource.
    pub fn max(self, other: Res) -> Res {
        self.zip(other, |_, a, b| a.max(b))
    }

    /// The smaller of each resource.
    pub fn min(self, other: Res) -> Res {
        self.zip(other, |_, a, b| a.min(b))
    }

    /// True when every resource of `self` is at most that of `other`.
    pub fn fits_in(&self, other: &Res) -> bool {
        self.cpu <= other.cpu && self.memory <= other.memory && self.pids <= other.pids
    }

    /// The first resource of `self` that exceeds `other`.
    pub fn first_excess(&self, other: &Res) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| self.get(*k) > other.get(*k))
    }

    /// True when every resource is zero.
    pub fn is_zero(&self) -> bool {
        *self == Res::ZERO
    }
}

impl fmt::Display for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |kind: Kind, v: i64| {
            if v == i64::MAX {
                "unlimited".to_string()
            } else {
                kind.format(v)
            }
        };
        write!(
            f,
            "cpu {}, memory {}, pids {}",
            show(Kind::Cpu, self.cpu),
            show(Kind::Memory, self.memory),
            show(Kind::Pids, self.pids)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_fit_is_per_resource() {
        let a = Res::new(1000, 1 << 30, 10);
        assert_eq!(a.plus(Res::UNLIMITED).cpu, i64::MAX);
        assert!(Res::new(1000, 1, 1).fits_in(&a));
        assert!(!Res::new(1001, 1, 1).fits_in(&a));
        assert_eq!(Res::new(1, 2, 11).first_excess(&a), Some(Kind::Pids));
        assert_eq!(a.to_string(), "cpu 1, memory 1Gi, pids 10");
    }
}
