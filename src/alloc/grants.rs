//! What each replica on a node is granted, once placement is done: its request under
//! `Priority` and `Fair`; a proportional share under `Demand` when requests exceed the
//! node; its observed use, between request and limit, under `Usage`.

use super::resources::{Kind, Res};
use super::state::{Allocator, NodeId, WKey};
use crate::api::policy::Strategy;

/// Recomputes the grants of every replica on `node`.
pub(super) fn recompute(a: &mut Allocator, node: NodeId) {
    let n = &a.nodes[node];
    let Some(policy) = n.policy else { return };
    let p = &a.policies[policy];
    let allocatable = n.allocatable;
    // Highest priority first, then by key: the order spare room and rounding go in.
    let mut ordered: Vec<_> = n.replicas.iter().collect();
    ordered.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, a.2).cmp(&(&b.1, b.2))));
    let replicas: Vec<(WKey, u32)> = ordered
        .into_iter()
        .map(|(_, key, index)| (key.clone(), *index))
        .collect();
    let grants: Vec<Res> = match p.spec.strategy {
        Strategy::Priority | Strategy::Fair => replicas
            .iter()
            .map(|(key, _)| a.workloads[key].demand.request)
            .collect(),
        Strategy::Demand => {
            let parts: Vec<(Res, Res)> = replicas
                .iter()
                .map(|(key, _)| {
                    let w = &a.workloads[key];
                    (w.footprint, w.demand.request)
                })
                .collect();
            proportional(&parts, allocatable)
        }
        Strategy::Usage => {
            let percentile = p.spec.usage.percentile;
            let parts: Vec<(Res, Res)> = replicas
                .iter()
                .map(|(key, index)| {
                    let w = &a.workloads[key];
                    let observed = a
                        .observed
                        .get(&Allocator::replica_key(key, *index))
                        .map(|o| o.percentile(percentile));
                    let target = w.demand.request.map(|kind, request| {
                        observed
                            .and_then(|o| o[kind as usize])
                            .map_or(request, |used| {
                                used.clamp(request, w.demand.limit.get(kind))
                            })
                    });
                    (w.demand.request, target)
                })
                .collect();
            elastic(&parts, allocatable)
        }
    };
    for ((key, index), grant) in replicas.into_iter().zip(grants) {
        if let Some(w) = a.workloads.get_mut(&key) {
            w.replicas[index as usize].grant = grant;
        }
    }
}

/// `Demand`: each `(floor, request)` gets its request when the requests fit in
/// `allocatable`; otherwise its floor plus a share of what is left in proportion to
/// request − floor, so that the grants sum to exactly `allocatable` (largest remainders
/// take the units lost to rounding, earlier entries first on ties). With floors at 0 this
/// is `allocatable × request / Σ requests`.
pub(super) fn proportional(parts: &[(Res, Res)], allocatable: Res) -> Vec<Res> {
    let mut grants: Vec<Res> = parts.iter().map(|(_, request)| *request).collect();
    for kind in Kind::ALL {
        let total: i128 = parts.iter().map(|(_, r)| i128::from(r.get(kind))).sum();
        let available = i128::from(allocatable.get(kind));
        if total <= available {
            continue;
        }
        let floors: i128 = parts.iter().map(|(f, _)| i128::from(f.get(kind))).sum();
        let share = (available - floors).max(0);
        let extra: i128 = total - floors;
        let mut given = 0i128;
        let mut remainders = Vec::with_capacity(parts.len());
        for (i, (floor, request)) in parts.iter().enumerate() {
            let want = i128::from(request.get(kind) - floor.get(kind));
            let (part, remainder) = if extra > 0 {
                (share * want / extra, share * want % extra)
            } else {
                (0, 0)
            };
            given += part;
            remainders.push((remainder, i));
            grants[i].set(kind, floor.get(kind) + i64::try_from(part).unwrap_or(0));
        }
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let left = usize::try_from(share - given).unwrap_or(0);
        for &(_, i) in remainders.iter().take(left) {
            let granted = grants[i].get(kind);
            grants[i].set(kind, granted + 1);
        }
    }
    grants
}

/// `Usage`: each `(request, target)` gets its request, then as much more toward its target
/// as is left on the node, in the order given.
pub(super) fn elastic(parts: &[(Res, Res)], allocatable: Res) -> Vec<Res> {
    let requested = parts
        .iter()
        .fold(Res::ZERO, |sum, (request, _)| sum.plus(*request));
    let mut spare = allocatable.minus(requested).max(Res::ZERO);
    parts
        .iter()
        .map(|(request, target)| {
            let extra = target.minus(*request).max(Res::ZERO).min(spare);
            spare = spare.minus(extra);
            request.plus(extra)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(v: i64) -> Res {
        Res::new(v, 0, 0)
    }

    #[test]
    fn proportional_gives_requests_when_they_fit() {
        let parts = [(cpu(100), cpu(1000)), (cpu(100), cpu(500))];
        assert_eq!(proportional(&parts, cpu(2000)), [cpu(1000), cpu(500)]);
    }

    #[test]
    fn proportional_scales_to_exactly_capacity() {
        // No floor: capacity × request / Σ requests = 1000 × {1, 2, 3} / 6.
        let parts = [
            (cpu(0), cpu(1000)),
            (cpu(0), cpu(2000)),
            (cpu(0), cpu(3000)),
        ];
        let grants = proportional(&parts, cpu(1000));
        assert_eq!(grants, [cpu(167), cpu(333), cpu(500)]);
        assert_eq!(grants.iter().map(|g| g.cpu).sum::<i64>(), 1000);
        // With floors the result is still proportional, and never below a floor.
        let parts = [(cpu(100), cpu(1000)), (cpu(300), cpu(3000))];
        assert_eq!(proportional(&parts, cpu(2000)), [cpu(500), cpu(1500)]);
    }

    #[test]
    fn elastic_tops_up_in_order_until_the_node_is_full() {
        let parts = [
            (cpu(200), cpu(900)),
            (cpu(200), cpu(500)),
            (cpu(100), cpu(100)),
        ];
        assert_eq!(elastic(&parts, cpu(1200)), [cpu(900), cpu(200), cpu(100)]);
        assert_eq!(elastic(&parts, cpu(2000)), [cpu(900), cpu(500), cpu(100)]);
    }
}
