//! Every cgroup value corral writes is computed here, from grants and limits, with the
//! conversions kubelet and the OCI runtimes use. Pure functions.
//!
//! - `cpu.shares = max(2, milliCPU × 1024 / 1000)`, at most 262144 (kubelet's
//!   `MilliCPUToShares`).
//! - `cpu.cfs_quota_us = max(1000, milliCPU × period / 1000)` (kubelet's `MilliCPUToQuota`),
//!   period 100 ms unless the policy says otherwise; no limit writes -1 (`max` on v2).
//! - `cpu.weight` from shares with the conversion of runc ≥ 1.3 and crun: a quadratic in
//!   log₂(shares) through (2, 1), (1024, 100) and (262144, 10000).
//! - `memory.high = request + ratio × (limit − request)`, rounded down to a page (kubelet's
//!   MemoryQoS); `memory.min` or `memory.low` = request when the policy protects memory.
//! - `blkio.bfq.weight` (v1, 10–1000) from the 1–10000 IO weight by the inverse of runc's
//!   blkio-to-io.weight conversion; `io.weight` (v2) takes it as is.
//!
//! Which files these go to, the word each takes for "no limit", how they are written and
//! how a read-back is compared: the table in [`super::knobs`].

use std::collections::BTreeMap;

use super::knobs::Knob;
use crate::alloc::Res;
use crate::alloc::plan::Limits;
use crate::api::policy::{CgroupSettings, MemoryProtection};

/// Fewest shares the kernel accepts (kubelet's `MinShares`).
pub const MIN_SHARES: u64 = 2;
/// Most shares the kernel accepts.
pub const MAX_SHARES: u64 = 262_144;
/// Shortest quota the kernel accepts, in microseconds (kubelet's `MinQuotaPeriod`).
pub const MIN_QUOTA_MICROS: i64 = 1000;
/// What v1 `memory.limit_in_bytes` reads back as when unlimited (`PAGE_COUNTER_MAX`).
pub const V1_MEMORY_UNLIMITED: i64 = 9_223_372_036_854_771_712;

/// `cpu.shares` for a CPU amount in millicores.
pub fn cpu_shares(millicores: i64) -> u64 {
    let shares = u64::try_from(millicores.max(0))
        .unwrap_or(0)
        .saturating_mul(1024)
        / 1000;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// `cpu.cfs_quota_us` (or the quota of v2 `cpu.max`) for a CPU limit in millicores.
pub fn cpu_quota(millicores: i64, period_micros: i64) -> i64 {
    let quota = i128::from(millicores) * i128::from(period_micros) / 1000;
    i64::try_from(quota)
        .unwrap_or(i64::MAX)
        .max(MIN_QUOTA_MICROS)
}

/// v2 `cpu.weight` for v1 shares (runc ≥ 1.3, crun): 2 → 1, 1024 → 100, 262144 → 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= MIN_SHARES {
        return 1;
    }
    if shares >= MAX_SHARES {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

/// v2 `memory.high`: `request + ratio × (limit − request)`, rounded down to `page_size`.
pub fn memory_high(request: i64, limit: i64, ratio: f64, page_size: i64) -> i64 {
    let span = (limit - request).max(0) as f64;
    let high = request.max(0) as f64 + ratio.clamp(0.0, 1.0) * span;
    let high = if high >= i64::MAX as f64 {
        i64::MAX
    } else {
        high as i64
    };
    round_to_page(high, page_size)
}

/// What the kernel stores for a byte amount: rounded down to a page.
pub fn round_to_page(bytes: i64, page_size: i64) -> i64 {
    if page_size <= 0 {
        bytes
    } else {
        bytes / page_size * page_size
    }
}

/// v1 `blkio.bfq.weight` (10–1000) for an IO weight of 1–10000: the inverse of runc's
/// `1 + (blkio − 10) × 9999 / 990`.
pub fn bfq_weight(io_weight: i32) -> i64 {
    let w = i64::from(io_weight.clamp(1, 10_000));
    10 + (w - 1) * 990 / 9999
}

/// What one replica's cgroup holds: its grant, request and limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Amounts {
    /// Granted (shares and memory protection follow it).
    pub granted: Res,
    /// Requested.
    pub request: Res,
    /// Limits; `None` for none.
    pub limits: Limits,
    /// IO weight, 1–10000.
    pub io_weight: Option<i32>,
}

/// The knobs and values of a replica's group. `parent_quota` is the tenant group's CPU
/// quota: v1 refuses a child quota above its parent's, so the child's is capped to it.
pub fn replica_knobs(
    v2: bool,
    amounts: &Amounts,
    settings: &CgroupSettings,
    parent_quota: Option<i64>,
    page_size: i64,
) -> BTreeMap<Knob, String> {
    let mut knobs = BTreeMap::new();
    let period = settings.cpu_period_micros;
    let shares = cpu_shares(amounts.granted.cpu);
    let quota = amounts
        .limits
        .cpu
        .map(|l| cpu_quota(l, period))
        .map(|q| parent_quota.map_or(q, |p| q.min(p)));
    let memory = amounts.limits.memory.map(|m| round_to_page(m, page_size));
    if v2 {
        knobs.insert(Knob::CpuWeight, shares_to_weight(shares).to_string());
        knobs.insert(Knob::CpuMax, cpu_max(quota, period));
        knobs.insert(Knob::MemoryMax, limit(Knob::MemoryMax, memory));
        let high = amounts.limits.memory.map(|limit| {
            memory_high(
                amounts.request.memory,
                limit,
                settings.memory_high_ratio,
                page_size,
            )
        });
        knobs.insert(Knob::MemoryHigh, limit(Knob::MemoryHigh, high));
        let protected = round_to_page(amounts.granted.memory, page_size).to_string();
        let (min, low) = match settings.memory_protection {
            MemoryProtection::Off => ("0".to_string(), "0".to_string()),
            MemoryProtection::Low => ("0".to_string(), protected),
            MemoryProtection::Min => (protected, "0".to_string()),
        };
        knobs.insert(Knob::MemoryMin, min);
        knobs.insert(Knob::MemoryLow, low);
        knobs.insert(Knob::PidsMax, limit(Knob::PidsMax, amounts.limits.pids));
        if let Some(w) = amounts.io_weight {
            knobs.insert(Knob::IoWeight, format!("default {}", w.clamp(1, 10_000)));
        }
    } else {
        knobs.insert(Knob::CpuShares, shares.to_string());
        knobs.insert(Knob::CpuCfsPeriod, period.to_string());
        knobs.insert(Knob::CpuCfsQuota, limit(Knob::CpuCfsQuota, quota));
        knobs.insert(Knob::MemoryLimit, limit(Knob::MemoryLimit, memory));
        knobs.insert(Knob::PidsMax, limit(Knob::PidsMax, amounts.limits.pids));
        if let Some(w) = amounts.io_weight {
            knobs.insert(Knob::BlkioBfqWeight, bfq_weight(w).to_string());
        }
    }
    knobs
}

/// The knobs and values of a tenant's parent group: shares as the sum of its
/// replicas' grants (as kubelet sizes QoS parents), and the tenant's limit, if any.
pub fn tenant_knobs(
    v2: bool,
    granted: Res,
    limit: Option<Res>,
    settings: &CgroupSettings,
    page_size: i64,
) -> BTreeMap<Knob, String> {
    let limit = limit.map(Limits::from_res).unwrap_or_default();
    let amounts = Amounts {
        granted,
        request: granted,
        limits: limit,
        io_weight: None,
    };
    let mut knobs = replica_knobs(v2, &amounts, settings, None, page_size);
    // A tenant protects nothing beyond what its replicas protect.
    knobs.remove(&Knob::MemoryMin);
    knobs.remove(&Knob::MemoryLow);
    knobs.remove(&Knob::MemoryHigh);
    knobs
}

/// The tenant group's quota as written, for capping its replicas' (v1).
pub fn tenant_quota(limit: Option<Res>, settings: &CgroupSettings) -> Option<i64> {
    limit
        .map(|l| l.cpu)
        .filter(|cpu| *cpu != i64::MAX)
        .map(|cpu| cpu_quota(cpu, settings.cpu_period_micros))
}

/// v2 `cpu.max`: the quota, or the table's word for none, and the period.
fn cpu_max(quota: Option<i64>, period: i64) -> String {
    format!("{} {period}", limit(Knob::CpuMax, quota))
}

/// A limit as `knob` takes it: the number, or the table's word for none (`max`, `-1`).
/// Only called for knobs that have such a word.
fn limit(knob: Knob, value: Option<i64>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => knob.none().unwrap_or_default().to_string(),
    }
}

/// The system's page size.
pub fn page_size() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as i64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubelet's and the OCI runtimes' figures, as the issue lists them.
    #[test]
    fn the_conversions_match_kubelet_and_oci() {
        assert_eq!(shares_to_weight(1024), 100, "1024 shares is cpu.weight 100");
        assert_eq!(cpu_shares(250), 256, "250m is 256 shares");
        assert_eq!(
            cpu_quota(1500, 100_000),
            150_000,
            "1.5 CPU over 100 ms is 150000"
        );
        assert_eq!(cpu_shares(0), 2, "no CPU is the minimum 2 shares");
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(1_000_000), MAX_SHARES);
        assert_eq!(cpu_quota(1, 100_000), 1000, "never below 1 ms");
        assert_eq!(cpu_quota(200, 50_000), 10_000);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(MAX_SHARES), 10_000);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(2048), 174);
    }

    #[test]
    fn memory_high_sits_between_request_and_limit_on_a_page() {
        let mib = 1 << 20;
        assert_eq!(memory_high(100 * mib, 200 * mib, 0.9, 4096), 190 * mib);
        assert_eq!(memory_high(0, 1000, 0.9, 4096), 0);
        assert_eq!(memory_high(0, 10_000, 0.5, 4096), 4096);
    }

    #[test]
    fn io_weights_map_to_bfq_and_back_as_runc_does() {
        assert_eq!(bfq_weight(1), 10);
        assert_eq!(bfq_weight(10_000), 1000);
        // runc maps blkio 500 to 1 + 490 × 9999 / 990 = 4950; back again:
        assert_eq!(bfq_weight(4950), 500);
    }

    #[test]
    fn v1_knobs_for_a_replica() {
        let amounts = Amounts {
            granted: Res::new(250, 64 << 20, 10),
            request: Res::new(250, 64 << 20, 10),
            limits: Limits {
                cpu: Some(1500),
                memory: Some(128 << 20),
                pids: None,
            },
            io_weight: Some(100),
        };
        let knobs = replica_knobs(false, &amounts, &CgroupSettings::default(), None, 4096);
        let expected: BTreeMap<Knob, String> = [
            (Knob::BlkioBfqWeight, "19"),
            (Knob::CpuCfsPeriod, "100000"),
            (Knob::CpuCfsQuota, "150000"),
            (Knob::CpuShares, "256"),
            (Knob::MemoryLimit, "134217728"),
            (Knob::PidsMax, "max"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        assert_eq!(knobs, expected);
        // Under a tenant quota of 1 CPU, v1 takes at most that.
        let capped = replica_knobs(
            false,
            &amounts,
            &CgroupSettings::default(),
            Some(100_000),
            4096,
        );
        assert_eq!(capped[&Knob::CpuCfsQuota], "100000");
    }

    #[test]
    fn v2_knobs_for_a_replica() {
        let settings = CgroupSettings {
            memory_protection: MemoryProtection::Min,
            ..CgroupSettings::default()
        };
        let amounts = Amounts {
            granted: Res::new(1000, 100 << 20, 0),
            request: Res::new(1000, 100 << 20, 0),
            limits: Limits {
                cpu: None,
                memory: Some(200 << 20),
                pids: Some(64),
            },
            io_weight: None,
        };
        let knobs = replica_knobs(true, &amounts, &settings, None, 4096);
        assert_eq!(knobs[&Knob::CpuWeight], "100");
        assert_eq!(knobs[&Knob::CpuMax], "max 100000");
        assert_eq!(knobs[&Knob::MemoryMax], (200 << 20).to_string());
        assert_eq!(knobs[&Knob::MemoryHigh], (190 << 20).to_string());
        assert_eq!(knobs[&Knob::MemoryMin], (100 << 20).to_string());
        assert_eq!(knobs[&Knob::MemoryLow], "0");
        assert_eq!(knobs[&Knob::PidsMax], "64");
        assert!(!knobs.contains_key(&Knob::IoWeight));
    }

    #[test]
    fn tenant_groups_hold_the_sum_of_grants_and_the_limit() {
        let settings = CgroupSettings::default();
        let knobs = tenant_knobs(
            false,
            Res::new(750, 0, 0),
            Some(Res::new(1500, i64::MAX, 100)),
            &settings,
            4096,
        );
        assert_eq!(knobs[&Knob::CpuShares], "768");
        assert_eq!(knobs[&Knob::CpuCfsQuota], "150000");
        assert_eq!(knobs[&Knob::MemoryLimit], "-1");
        assert_eq!(knobs[&Knob::PidsMax], "100");
        assert_eq!(
            tenant_quota(Some(Res::new(1500, 0, 0)), &settings),
            Some(150_000)
        );
        assert_eq!(tenant_quota(None, &settings), None);
    }

    /// Whatever the amounts, every value has its knob's shape (the word for none where
    /// there is one) and goes to a knob of the version asked for.
    #[test]
    fn every_value_has_its_knobs_shape_and_version() {
        for v2 in [false, true] {
            for protection in [
                MemoryProtection::Off,
                MemoryProtection::Low,
                MemoryProtection::Min,
            ] {
                let settings = CgroupSettings {
                    memory_protection: protection,
                    ..CgroupSettings::default()
                };
                for (limits, io_weight) in [
                    (Limits::default(), None),
                    (
                        Limits {
                            cpu: Some(1500),
                            memory: Some(128 << 20),
                            pids: Some(64),
                        },
                        Some(100),
                    ),
                ] {
                    let amounts = Amounts {
                        granted: Res::new(250, 64 << 20, 10),
                        request: Res::new(250, 64 << 20, 10),
                        limits,
                        io_weight,
                    };
                    let replica = replica_knobs(v2, &amounts, &settings, Some(100_000), 4096);
                    let limit = (limits.cpu.is_some()).then(|| Res::new(1500, 128 << 20, 64));
                    let tenant = tenant_knobs(v2, amounts.granted, limit, &settings, 4096);
                    for (knob, value) in replica.iter().chain(&tenant) {
                        assert!(knob.version().on(v2), "{knob} on v2={v2}");
                        assert!(knob.spec().value.admits(value), "{knob} = {value:?}");
                    }
                }
            }
        }
    }
}
