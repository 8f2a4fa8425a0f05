//! Which leases an agent enforces. ZooKeeper's ACLs let only the controller write a node's
//! leases; this is the agent's own check on top, for a lease written all the same (in open
//! mode, by a shared identity, or through a mistaken ACL). Pure.
//!
//! A lease is refused, and reported, never enforced, when:
//! - its data is not a lease, or names another node or another key than its znode, or a
//!   key that is not `<namespace>.<name>.<index>` of DNS labels (it would name cgroups);
//! - its epoch is not a real leader's: not below the zxid of its own write (a leader writes
//!   after it was elected, so after its epoch), or above the current leader's epoch.
//!
//! A refused lease does not take away what the agent enforced: the last lease it accepted
//! for that replica stays in force (fail-static), and the refusal is reported beside it.

use std::collections::BTreeMap;

use crate::api::names::is_dns_label;
use crate::lease::zookeeper::ReadLease;
use crate::lease::{FORMAT_VERSION, Lease, ProcessReport, Report};

/// A lease not enforced, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The znode's name: the replica's key as the path says it.
    pub key: String,
    /// Why, for a person.
    pub reason: String,
}

/// The leases to enforce, and the ones refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vetted {
    /// Accepted now, or accepted earlier and not replaced by an acceptable one.
    pub leases: Vec<Lease>,
    /// Refused, by key.
    pub refused: Vec<Refusal>,
}

/// Decides which of the leases `read` from `node`'s znodes to enforce. `leader` is the
/// current leader's epoch, when one leads; `previous` the leases accepted last time.
pub fn vet(node: &str, read: Vec<ReadLease>, leader: Option<i64>, previous: &[Lease]) -> Vetted {
    let previous: BTreeMap<String, &Lease> =
        previous.iter().map(|l| (l.key.to_string(), l)).collect();
    let mut vetted = Vetted::default();
    for item in read {
        match check(node, &item, leader) {
            Ok(()) => vetted.leases.extend(item.lease.ok()),
            Err(reason) => {
                if let Some(kept) = previous.get(&item.key) {
                    vetted.leases.push((*kept).clone());
                }
                vetted.refused.push(Refusal {
                    key: item.key,
                    reason,
                });
            }
        }
    }
    vetted
}

/// True when some lease read claims an epoch above `leader`: the current leader may have
/// changed since it was read, so it should be read again before vetting.
pub fn needs_leader(read: &[ReadLease], leader: Option<i64>) -> bool {
    read.iter()
        .filter_map(|r| r.lease.as_ref().ok())
        .any(|l| leader.is_none_or(|epoch| l.epoch > epoch))
}

fn check(node: &str, item: &ReadLease, leader: Option<i64>) -> Result<(), String> {
    let lease = item
        .lease
        .as_ref()
        .map_err(|e| format!("unreadable: {e}"))?;
    let key = &lease.key;
    if !is_dns_label(key.namespace()) || !is_dns_label(key.name()) {
        return Err("its key is not <namespace>.<name>.<index> of DNS labels".into());
    }
    if key.to_string() != item.key {
        return Err(format!("it is for replica {key}, not {}", item.key));
    }
    if lease.node != node {
        return Err(format!("it is for node {:?}, not this one", lease.node));
    }
    if lease.epoch >= item.written {
        return Err(format!(
            "its epoch {} is not a leader's: it is not older than the lease's own write \
             (zxid {})",
            lease.epoch, item.written
        ));
    }
    if let Some(leader) = leader
        && lease.epoch > leader
    {
        return Err(format!(
            "its epoch {} is above the current leader's ({leader}): no controller wrote it",
            lease.epoch
        ));
    }
    Ok(())
}

/// Adds the refusals to the reports of a pass: to the report of the replica when the agent
/// still enforces an earlier lease of it, else as a report of its own (state `Refused`).
/// Each refusal comes with the Unix second it was first seen, so that an unchanged refusal
/// leaves the report unchanged.
pub fn report_refusals(node: &str, reports: &mut Vec<Report>, refused: &[(Refusal, u64)]) {
    for (refusal, since) in refused {
        let problem = format!("lease refused: {}", refusal.reason);
        let existing = reports
            .iter_mut()
            .find(|r| r.key.as_ref().is_some_and(|k| k.to_string() == refusal.key));
        match existing {
            Some(report) => report.problems.push(problem),
            None => reports.push(Report {
                version: FORMAT_VERSION,
                key: parse_key(&refusal.key),
                node: node.to_string(),
                problems: vec![problem],
                process: ProcessReport {
                    state: crate::lease::ProcessState::Refused,
                    ..ProcessReport::default()
                },
                changed_at: *since,
                ..Report::default()
            }),
        }
    }
}

/// The replica key of a lease znode's name, when it is one.
fn parse_key(text: &str) -> Option<crate::alloc::ReplicaKey> {
    let mut parts = text.splitn(3, '.');
    let (namespace, name, index) = (parts.next()?, parts.next()?, parts.next()?);
    (is_dns_label(namespace) && is_dns_label(name))
        .then(|| index.parse().ok())
        .flatten()
        .map(|index| crate::alloc::ReplicaKey::new(namespace, name, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;

    fn read(lease: Lease, written: i64) -> ReadLease {
        ReadLease {
            key: lease.key.to_string(),
            written,
            lease: Ok(lease),
        }
    }

    #[test]
    fn leases_of_real_leaders_are_enforced() {
        let old = mk_lease("n1", "a", 0, 100);
        let current = mk_lease("n1", "b", 0, 200);
        let vetted = vet(
            "n1",
            vec![read(old.clone(), 150), read(current.clone(), 250)],
            Some(200),
            &[],
        );
        assert_eq!(vetted.leases, [old, current]);
        assert!(vetted.refused.is_empty());
    }

    #[test]
    fn an_epoch_above_the_leaders_is_refused_and_the_last_good_lease_kept() {
        let good = mk_lease("n1", "a", 0, 100);
        let mut forged = good.clone();
        forged.epoch = 10_000;
        forged.granted.cpu = 64_000;
        let vetted = vet(
            "n1",
            vec![read(forged, 20_000)],
            Some(200),
            std::slice::from_ref(&good),
        );
        assert_eq!(
            vetted.leases,
            [good],
            "the replica keeps its last good lease"
        );
        assert_eq!(vetted.refused.len(), 1);
        assert!(
            vetted.refused[0]
                .reason
                .contains("above the current leader's (200)"),
            "{:?}",
            vetted.refused
        );
    }

    #[test]
    fn an_epoch_not_older_than_its_own_write_is_refused_even_without_a_leader() {
        let forged = mk_lease("n1", "a", 0, 5_000);
        let vetted = vet("n1", vec![read(forged, 4_000)], None, &[]);
        assert!(vetted.leases.is_empty());
        assert!(
            vetted.refused[0]
                .reason
                .contains("not older than the lease's own write")
        );
    }

    #[test]
    fn leases_for_other_nodes_keys_or_paths_are_refused() {
        let other_node = mk_lease("n2", "a", 0, 1);
        let mut wrong_key = read(mk_lease("n1", "a", 0, 1), 10);
        wrong_key.key = "t.b.0".into();
        let mut escape = mk_lease("n1", "a", 0, 1);
        escape.key = crate::api::ReplicaKey::new("..", "a", 0);
        let unreadable = ReadLease {
            key: "t.c.0".into(),
            written: 10,
            lease: Err("expected value".into()),
        };
        let vetted = vet(
            "n1",
            vec![
                read(other_node, 10),
                wrong_key,
                ReadLease {
                    key: "...a.0".into(),
                    written: 10,
                    lease: Ok(escape),
                },
                unreadable,
            ],
            Some(5),
            &[],
        );
        assert!(vetted.leases.is_empty());
        let reasons: Vec<&str> = vetted.refused.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("node \"n2\""), "{reasons:?}");
        assert!(reasons[1].contains("not t.b.0"), "{reasons:?}");
        assert!(reasons[2].contains("DNS labels"), "{reasons:?}");
        assert!(reasons[3].starts_with("unreadable"), "{reasons:?}");
    }

    #[test]
    fn the_leader_is_read_again_only_for_a_higher_epoch() {
        let lease = read(mk_lease("n1", "a", 0, 300), 400);
        assert!(needs_leader(std::slice::from_ref(&lease), Some(200)));
        assert!(!needs_leader(std::slice::from_ref(&lease), Some(300)));
        assert!(needs_leader(&[lease], None));
    }

    #[test]
    fn refusals_are_reported_beside_or_instead_of_the_replicas_report() {
        let kept = mk_lease("n1", "a", 0, 1);
        let mut reports = vec![Report {
            key: Some(kept.key.clone()),
            node: "n1".into(),
            ..Report::default()
        }];
        let refused = [
            (
                Refusal {
                    key: kept.key.to_string(),
                    reason: "r1".into(),
                },
                7,
            ),
            (
                Refusal {
                    key: "t.b.3".into(),
                    reason: "r2".into(),
                },
                42,
            ),
        ];
        report_refusals("n1", &mut reports, &refused);
        assert_eq!(reports[0].problems, ["lease refused: r1"]);
        assert_eq!(
            reports[1].key,
            Some(crate::alloc::ReplicaKey::new("t", "b", 3))
        );
        assert_eq!(reports[1].process.state, "Refused");
        assert_eq!(reports[1].changed_at, 42);
    }
}
