//! The allocator's working state: nodes, policies, workloads and where each replica is.
//! Pure and in memory. A full allocation builds it and places everything; an incremental
//! change adds or removes workloads and places only what is pending.
//!
//! Every ordering is by name and key, never by insertion, so that an incremental change
//! gives the same result as a full allocation of the same state.
//!
//! The state keeps its own invariants: its fields are private to this module, and other
//! modules read them through accessors and change them only through a narrow API (take a
//! pending replica, place it, let it preempt, defer it, set a grant). Every change to what
//! a node, policy or tenant holds goes through one function, `account`, so that
//! - a node's `committed` and `requested` are the sums of its replicas' footprints and
//!   requests, and never exceed what it offers;
//! - a policy's and a tenant's holdings are the sums over their placed replicas;
//! - a replica is pending (queued, or in a strategy's hands during its pass), placed, or
//!   removed with its workload: never two of these.
//!
//! [`Allocator::check_invariants`] recomputes all of it from scratch; debug builds run it
//! after every change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::admit;
use super::govern::{self, Governing};
use super::input::{Demand, NodeInfo, Observed, ReplicaKey, amounts_or};
use super::node_index::{Against, Entry, NodeIndex, Want};
use super::resources::{Kind, Res};
use super::selector;
use crate::api::identity::namespace_of;
use crate::api::policy::{PreemptionPolicy, ResourcePolicySpec, Strategy};
use crate::api::workload::PlacementMode;
use crate::api::{ResourcePolicy, Workload, WorkloadRef};

mod check;

/// Index of a node, in name order.
pub(super) type NodeId = usize;
/// Index of a policy; the built-in default policy is the last.
pub(super) type PolicyId = usize;

/// A replica's place in its policy's queue: higher priority first, then by key.
pub(super) type QueueKey = (Reverse<i32>, WorkloadRef, u32);

/// The name under which the built-in default policy is reported.
pub const DEFAULT_POLICY: &str = "(default)";

/// A node: what it offers and what is placed on it. Read through [`Allocator::node`].
pub(super) struct NodeState {
    /// The node as given.
    pub info: NodeInfo,
    /// The governing policy; `None` when two policies of equal precedence claim the node.
    pub policy: Option<PolicyId>,
    /// Why the node is not used, when it is not.
    pub unusable: Option<String>,
    /// (capacity − reserved) × overcommit.
    pub allocatable: Res,
    /// Σ footprints of the replicas placed here: what placement checks against.
    pub committed: Res,
    /// Σ requests of the replicas placed here (differs from `committed` under `Demand`).
    pub requested: Res,
    /// Replicas here, lowest priority first: the order preemption takes victims in.
    pub replicas: BTreeSet<(i32, WorkloadRef, u32)>,
    /// Bit `b` set when the node matches the node selector numbered `b`
    /// ([`Allocator::selector_bit`]).
    pub label_bits: u64,
}

impl NodeState {
    /// What the policy's [`NodeIndex`] holds of this node.
    fn entry(&self, id: NodeId) -> Entry {
        Entry {
            key: (self.score(), id),
            free: self.free(),
            room: self.allocatable.minus(self.requested),
            count: self.replicas.len(),
            labels: self.label_bits,
        }
    }

    fn free(&self) -> Res {
        self.allocatable.minus(self.committed)
    }

    /// Free room as one number, for ordering: the sum over resources of the free fraction,
    /// in millionths.
    fn score(&self) -> u64 {
        let free = self.free();
        Kind::ALL
            .iter()
            .filter(|k| self.allocatable.get(**k) > 0)
            .map(|k| {
                let f = i128::from(free.get(*k).max(0));
                let a = i128::from(self.allocatable.get(*k));
                u64::try_from(f * 1_000_000 / a).unwrap_or(0)
            })
            .sum()
    }
}

/// A tenant (a namespace) of one policy: its share settings and what it holds.
pub(super) struct TenantState {
    /// Its weight under `Fair`, at least 1.
    pub weight: i32,
    /// What it is guaranteed, if anything.
    pub guarantee: Option<Res>,
    /// The most it may hold, if bounded (`i64::MAX` for an unbounded resource).
    pub limit: Option<Res>,
    /// Σ footprints of this tenant's placed replicas on the policy's nodes.
    pub allocated: Res,
    /// Replicas of this tenant placed on the policy's nodes.
    pub placed: usize,
    /// The most replicas it may have placed (`maxReplicas`), if bounded.
    pub max_replicas: Option<usize>,
}

impl TenantState {
    /// What the tenant is guaranteed and does not hold yet.
    pub fn unmet(&self) -> Res {
        self.guarantee
            .map_or(Res::ZERO, |g| g.minus(self.allocated).max(Res::ZERO))
    }
}

/// A policy: its nodes, what they hold, its tenants and its queue of pending replicas.
/// Read through [`Allocator::policy`].
pub(super) struct PolicyState {
    /// Its name, [`DEFAULT_POLICY`] for the built-in one.
    pub name: String,
    /// Its spec.
    pub spec: ResourcePolicySpec,
    /// The nodes it governs, by id.
    pub nodes: Vec<NodeId>,
    /// The policy's nodes by free room, for spread (most first) and pack (least first).
    pub by_free: NodeIndex,
    /// Σ allocatable of the nodes.
    pub total: Res,
    /// Σ committed of the nodes.
    pub committed: Res,
    /// Replicas waiting for a node. Only this module takes them off and puts them back
    /// (strategies get them as [`Taken`]).
    pending: BTreeSet<QueueKey>,
    /// Replicas a strategy deferred in its current pass: back in `pending` once it ends,
    /// so that the pass does not try them again.
    deferred: BTreeSet<QueueKey>,
    /// Its tenants: those its spec lists and those that have workloads under it.
    pub tenants: BTreeMap<Arc<str>, TenantState>,
    /// Σ unmet guarantees over tenants: held back from everyone else.
    pub unmet: Res,
    /// How many placed replicas have each priority: preemption looks for victims only
    /// when some are below the newcomer.
    pub placed_priorities: BTreeMap<i32, usize>,
}

/// One replica of a workload.
pub(super) struct Replica {
    /// Where it is placed, if it is.
    pub node: Option<NodeId>,
    /// What it is granted; zero while it is pending.
    pub grant: Res,
    /// Why it is pending, once an attempt failed.
    pub reason: Option<String>,
}

/// A workload: what it asks for and where its replicas are. Read through
/// [`Allocator::workload`].
pub(super) struct WorkloadState {
    /// The governing policy, or why there is none.
    pub policy: Result<PolicyId, String>,
    /// What it asks for, resolved against its policy.
    pub demand: Demand,
    /// What placement reserves per replica: the request, or under `Demand` the floor.
    pub footprint: Res,
    /// Its replicas, by index.
    pub replicas: Vec<Replica>,
    /// Replicas of this workload per node, for spreading (a B-tree: a workload has few
    /// nodes, and the spread search asks for many).
    pub per_node: BTreeMap<NodeId, u32>,
    /// The number of its node selector ([`Allocator::selector_bit`]), if it has one.
    pub label_bit: Option<u32>,
}

/// A pending replica a strategy took off its policy's queue ([`Allocator::pop_pending`],
/// [`Allocator::take_pending`]). Only the queue makes one, so a strategy holds only
/// replicas that are neither placed nor queued; it gives each back by placing it
/// ([`Allocator::place`], [`Allocator::preempt`]) or deferring it ([`Allocator::defer`]).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a replica taken off the queue is lost unless placed or deferred"]
pub(super) struct Taken(QueueKey);

impl Taken {
    /// Its place in the queue: priority, workload, index.
    pub fn key(&self) -> &QueueKey {
        &self.0
    }
}

/// A replica that lost its node to one of higher priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preempted {
    /// The replica preempted.
    pub victim: ReplicaKey,
    /// The replica that took its place.
    pub by: ReplicaKey,
    /// Its priority.
    pub by_priority: i32,
    /// The node.
    pub node: String,
}

/// The allocator: build it from policies and nodes, add workloads, allocate, read the plan.
pub struct Allocator {
    nodes: Vec<NodeState>,
    node_ids: HashMap<String, NodeId>,
    policies: Vec<PolicyState>,
    policy_objects: Vec<ResourcePolicy>,
    workloads: BTreeMap<WorkloadRef, WorkloadState>,
    observed: HashMap<ReplicaKey, Observed>,
    /// Made by the last [`Allocator::allocate`].
    preemptions: Vec<Preempted>,
    /// Nodes whose replicas' grants must be recomputed, by id.
    dirty: Vec<bool>,
    /// Bumped on every placement change; keys the cache of pending reasons.
    epoch: u64,
    /// While set, placements leave the policies' node indexes as they are, to be rebuilt.
    index_paused: bool,
    /// Why a replica of each workload last fitted nowhere, and at which epoch.
    reasons: HashMap<WorkloadRef, (u64, String)>,
    /// The node selectors workloads have used, numbered in the order first seen: the
    /// number is a bit of each node's `label_bits`, which lets a search skip nodes of
    /// other labels many at a time. At most 64; later ones go unnumbered, and searches for
    /// them check each node's labels.
    selectors: HashMap<BTreeMap<String, String>, u32>,
}

impl Allocator {
    /// An allocator for these policies and nodes, with no workloads yet.
    ///
    /// Each node is governed by the matching policy of highest precedence (the built-in
    /// default when none matches); a node two policies claim with equal precedence is not
    /// used, and the plan says why.
    pub fn new(policies: &[ResourcePolicy], nodes: &[NodeInfo]) -> Self {
        let mut policy_objects: Vec<ResourcePolicy> = policies.to_vec();
        policy_objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut states: Vec<PolicyState> = policy_objects
            .iter()
            .map(|p| PolicyState::new(p.metadata.name.clone().unwrap_or_default(), p.spec.clone()))
            .collect();
        states.push(PolicyState::new(
            DEFAULT_POLICY.to_string(),
            ResourcePolicySpec::default(),
        ));
        let default_id = states.len() - 1;

        let mut sorted_nodes: Vec<&NodeInfo> = nodes.iter().collect();
        sorted_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        sorted_nodes.dedup_by(|a, b| a.name == b.name);
        let mut node_states = Vec::with_capacity(sorted_nodes.len());
        let mut node_ids = HashMap::with_capacity(sorted_nodes.len());
        for (id, info) in sorted_nodes.into_iter().enumerate() {
            let matching: Vec<&ResourcePolicy> = policy_objects
                .iter()
                .filter(|p| selector::matches(p.spec.node_selector.as_ref(), &info.labels))
                .collect();
            let (policy, unusable) = match govern::highest(matching) {
                None => (Some(default_id), None),
                Some(top) if top.len() == 1 => (
                    policy_objects.iter().position(|p| std::ptr::eq(p, top[0])),
                    None,
                ),
                Some(top) => {
                    let names: Vec<String> = top
                        .iter()
                        .map(|p| format!("{:?}", p.metadata.name.as_deref().unwrap_or_default()))
                        .collect();
                    (
                        None,
                        Some(format!(
                            "not used: claimed by ResourcePolicies {} with the same precedence {}",
                            names.join(" and "),
                            top[0].spec.precedence
                        )),
                    )
                }
            };
            let allocatable = policy.map_or(Res::ZERO, |p| states[p].allocatable(&info.capacity));
            let node = NodeState {
                info: info.clone(),
                policy,
                unusable,
                allocatable,
                committed: Res::ZERO,
                requested: Res::ZERO,
                replicas: BTreeSet::new(),
                label_bits: 0,
            };
            if let Some(p) = policy {
                let state = &mut states[p];
                state.nodes.push(id);
                state.by_free.set(node.entry(id));
                state.total = state.total.plus(allocatable);
            }
            node_ids.insert(info.name.clone(), id);
            node_states.push(node);
        }
        let node_count = node_states.len();
        Allocator {
            nodes: node_states,
            node_ids,
            policies: states,
            policy_objects,
            workloads: BTreeMap::new(),
            observed: HashMap::new(),
            preemptions: Vec::new(),
            dirty: vec![false; node_count],
            epoch: 0,
            index_paused: false,
            reasons: HashMap::new(),
            selectors: HashMap::new(),
        }
    }

    /// The number of a non-empty node selector, given one the first time it is seen (and
    /// set on every node that matches it); `None` for the empty selector, which matches
    /// everything, and once 64 are numbered.
    fn selector_bit(&mut self, selector: &BTreeMap<String, String>) -> Option<u32> {
        if selector.is_empty() {
            return None;
        }
        if let Some(bit) = self.selectors.get(selector) {
            return Some(*bit);
        }
        let bit = u32::try_from(self.selectors.len())
            .ok()
            .filter(|b| *b < 64)?;
        self.selectors.insert(selector.clone(), bit);
        let mut matching = vec![false; self.nodes.len()];
        for (id, n) in self.nodes.iter_mut().enumerate() {
            if labels_match(selector, &n.info.labels) {
                n.label_bits |= 1 << bit;
                matching[id] = true;
            }
        }
        for p in &mut self.policies {
            p.by_free
                .set_label(bit, |id| matching.get(id).copied().unwrap_or(false));
        }
        Some(bit)
    }

    /// Sets the observed use the `Usage` strategy follows.
    pub fn set_observed(&mut self, observed: HashMap<ReplicaKey, Observed>) {
        self.observed = observed;
        self.dirty.fill(true);
    }

    /// Adds workloads. A replica in `current` stays on its node if the node still exists,
    /// is governed by the same policy, matches and has room (checked in priority order);
    /// every other replica waits for [`Allocator::allocate`]. A workload already present is
    /// replaced.
    pub fn add_workloads(
        &mut self,
        workloads: &[&Workload],
        current: &HashMap<ReplicaKey, String>,
    ) {
        let governed: Vec<Result<PolicyId, String>> = {
            let policy_refs: Vec<&ResourcePolicy> = self.policy_objects.iter().collect();
            workloads
                .iter()
                .map(|w| self.governing(w, &policy_refs))
                .collect()
        };
        let ungoverned = ResourcePolicySpec::default();
        let mut kept: Vec<(QueueKey, NodeId)> = Vec::new();
        // Replicas to queue, per policy: queued together at the end, as one sorted batch,
        // which costs less than as many insertions in a set of 150,000.
        let mut queued: Vec<Vec<QueueKey>> = vec![Vec::new(); self.policies.len()];
        let mut added: HashSet<WorkloadRef> = HashSet::with_capacity(workloads.len());
        for (workload, policy) in workloads.iter().zip(governed) {
            let namespace = namespace_of(workload);
            let name = workload.metadata.name.as_deref().unwrap_or_default();
            let key: WorkloadRef = WorkloadRef::new(namespace, name);
            if !added.insert(key.clone()) {
                // A second copy in this batch replaces the first: what the first left to
                // queue or to keep goes with it.
                self.queue(&mut queued);
                kept.retain(|(q, _)| q.1 != key);
            }
            self.remove_key(&key);
            let (demand, footprint) = {
                let spec = match &policy {
                    Ok(p) => &self.policies[*p].spec,
                    Err(_) => &ungoverned,
                };
                let demand = Demand::resolve(workload, spec);
                let footprint = if spec.strategy == Strategy::Demand {
                    let floor = i128::from(spec.demand.floor_percent);
                    demand
                        .request
                        .map(|_, r| i64::try_from((i128::from(r) * floor + 99) / 100).unwrap_or(r))
                } else {
                    demand.request
                };
                (demand, footprint)
            };
            let replicas = (0..demand.replicas)
                .map(|_| Replica {
                    node: None,
                    grant: Res::ZERO,
                    reason: None,
                })
                .collect();
            let queue_priority = Reverse(demand.priority);
            if let Ok(p) = policy
                && !self.policies[p].tenants.contains_key(key.namespace_arc())
            {
                let max = admit::max_replicas(&self.policies[p].spec, key.namespace());
                self.policies[p]
                    .tenants
                    .insert(key.namespace_arc().clone(), TenantState::unlisted(max));
            }
            let count = demand.replicas;
            let label_bit = self.selector_bit(&demand.node_selector);
            self.workloads.insert(
                key.clone(),
                WorkloadState {
                    policy: policy.clone(),
                    demand,
                    footprint,
                    replicas,
                    per_node: BTreeMap::new(),
                    label_bit,
                },
            );
            // One key to look replicas up with, its index changed: not two strings each.
            let mut probe = ReplicaKey::new(namespace, name, 0);
            for index in 0..count {
                let queue_key = (queue_priority, key.clone(), index);
                probe.index = index;
                let here = if current.is_empty() {
                    None
                } else {
                    current
                        .get(&probe)
                        .and_then(|n| self.node_ids.get(n).copied())
                };
                match (policy.as_ref(), here) {
                    (Ok(_), Some(node)) => kept.push((queue_key, node)),
                    (Ok(p), None) => {
                        if let Some(q) = queued.get_mut(*p) {
                            q.push(queue_key);
                        }
                    }
                    (Err(_), _) => {}
                }
            }
        }
        self.queue(&mut queued);
        kept.sort();
        // Keeping many replicas moves many nodes in the policies' indexes, which nothing
        // reads meanwhile (keeping checks each node itself): they are built once after.
        let rebuild = kept.len() > self.nodes.len();
        self.index_paused = rebuild;
        for (queue_key, node) in kept {
            // Back on its current node if it still belongs and fits there.
            if !self.put(&queue_key, node) {
                let policy = self.workloads[&queue_key.1].policy.clone();
                if let Ok(p) = policy {
                    self.policies[p].pending.insert(queue_key);
                }
            }
        }
        self.index_paused = false;
        if rebuild {
            for p in &mut self.policies {
                p.by_free
                    .rebuild(p.nodes.iter().map(|id| self.nodes[*id].entry(*id)));
            }
        }
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }

    /// Puts `queued` in the policies' queues, and empties it.
    fn queue(&mut self, queued: &mut [Vec<QueueKey>]) {
        for (p, keys) in self.policies.iter_mut().zip(queued) {
            if !keys.is_empty() {
                let mut batch: BTreeSet<QueueKey> = std::mem::take(keys).into_iter().collect();
                p.pending.append(&mut batch);
            }
        }
    }

    /// The policy governing `workload`, or why none does.
    fn governing(
        &self,
        workload: &Workload,
        policies: &[&ResourcePolicy],
    ) -> Result<PolicyId, String> {
        let id = match govern::workload_policy(workload, policies) {
            Governing::Policy(p) => self
                .policy_objects
                .iter()
                .position(|o| std::ptr::eq(o, p))
                .unwrap_or(self.policies.len() - 1),
            Governing::Default => self.policies.len() - 1,
            Governing::NotAdmitted(p) => return Err(not_admitted(p, workload)),
            Governing::Missing(name) => {
                return Err(format!(
                    "spec.policyRef names ResourcePolicy {name:?}, which does not exist"
                ));
            }
            Governing::Ambiguous(tied) => {
                return Err(format!(
                    "governed by ResourcePolicies {} with the same precedence; set spec.policyRef",
                    tied.iter()
                        .map(|p| format!("{:?}", p.metadata.name.as_deref().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
        };
        // Whatever slipped past validation: a workload its policy refuses runs nowhere.
        let refused = admit::check(workload, &self.policies[id].name, &self.policies[id].spec);
        if refused.is_empty() {
            Ok(id)
        } else {
            Err(format!(
                "refused: {}",
                refused
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
    }

    /// Removes a workload and frees what its replicas held.
    pub fn remove_workload(&mut self, namespace: &str, name: &str) {
        self.remove_key(&WorkloadRef::new(namespace, name));
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }

    fn remove_key(&mut self, key: &WorkloadRef) {
        let Some(w) = self.workloads.get(key) else {
            return;
        };
        let priority = w.demand.priority;
        let policy = w.policy.clone();
        let count = u32::try_from(w.replicas.len()).unwrap_or(u32::MAX);
        let placed: Vec<(u32, NodeId)> = w
            .replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.node.map(|n| (u32::try_from(i).unwrap_or(u32::MAX), n)))
            .collect();
        for (index, _) in &placed {
            self.unplace(&(Reverse(priority), key.clone(), *index));
        }
        // Its waiting replicas, one by one: the queue may hold many more than it has.
        if let Ok(p) = policy {
            let pending = &mut self.policies[p].pending;
            for index in 0..count {
                pending.remove(&(Reverse(priority), key.clone(), index));
            }
        }
        self.workloads.remove(key);
        self.reasons.remove(key);
    }

    /// Places every pending replica the policies allow, then recomputes the grants that
    /// changed. Preemptions made are recorded for the plan.
    pub fn allocate(&mut self) {
        self.preemptions.clear();
        for policy in 0..self.policies.len() {
            let strategy = super::strategy::for_strategy(self.policies[policy].spec.strategy);
            strategy.place_pending(self, policy);
            self.end_pass(policy);
        }
        for node in 0..self.dirty.len() {
            if std::mem::take(&mut self.dirty[node]) {
                super::grants::recompute(self, node);
            }
        }
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }

    /// Puts the replicas a strategy deferred in its pass back in the policy's queue.
    fn end_pass(&mut self, policy: PolicyId) {
        let p = &mut self.policies[policy];
        // Strategies empty the queue: then this swaps the two sets.
        let mut deferred = std::mem::take(&mut p.deferred);
        p.pending.append(&mut deferred);
    }

    /// Takes every pending replica of `policy` off its queue, in queue order: highest
    /// priority first, then by key.
    pub(super) fn take_pending(&mut self, policy: PolicyId) -> impl Iterator<Item = Taken> + use<> {
        std::mem::take(&mut self.policies[policy].pending)
            .into_iter()
            .map(Taken)
    }

    /// Takes the first pending replica of `policy` off its queue: the highest priority,
    /// then by key. Replicas [`Allocator::preempt`] evicts rejoin the queue and come in
    /// their turn; deferred ones wait for the next allocation.
    pub(super) fn pop_pending(&mut self, policy: PolicyId) -> Option<Taken> {
        self.policies[policy].pending.pop_first().map(Taken)
    }

    /// Puts a taken replica on `node`, if the node may take it (see [`may_take`]), and
    /// accounts for it; otherwise hands it back.
    #[inline]
    pub(super) fn place(&mut self, taken: Taken, node: NodeId) -> Result<(), Taken> {
        if self.put(&taken.0, node) {
            Ok(())
        } else {
            Err(taken)
        }
    }

    /// Puts `by` on `node` in the place of `victims`, which must be replicas of strictly
    /// lower priority on that node and make room for it: each is taken off the node,
    /// recorded as preempted, and queued again (its policy's pass takes it in its turn).
    /// When they are not all such, or do not make room, nothing changes and `by` comes back.
    pub(super) fn preempt(
        &mut self,
        by: Taken,
        victims: &[QueueKey],
        node: NodeId,
    ) -> Result<(), Taken> {
        let Some(policy) = self.evictable(&by.0, victims, node) else {
            return Err(by);
        };
        let (Reverse(by_priority), key, index) = &by.0;
        let by_key = Self::replica_key(key, *index);
        for victim in victims {
            self.unplace(victim);
            self.preemptions.push(Preempted {
                victim: Self::replica_key(&victim.1, victim.2),
                by: by_key.clone(),
                by_priority: *by_priority,
                node: self.nodes[node].info.name.clone(),
            });
            self.policies[policy].pending.insert(victim.clone());
        }
        self.place(by, node)
    }

    /// The policy of `by` when `victims` may make room for it on `node`: `by` is a pending
    /// replica, each victim a distinct replica of strictly lower priority placed there,
    /// and without them the node may take `by` (so that placing it cannot fail).
    fn evictable(&self, by: &QueueKey, victims: &[QueueKey], node: NodeId) -> Option<PolicyId> {
        let w = self.workloads.get(&by.1)?;
        let policy = *w.policy.as_ref().ok()?;
        let unplaced = w
            .replicas
            .get(by.2 as usize)
            .is_some_and(|r| r.node.is_none());
        if !unplaced || w.demand.priority != by.0.0 {
            return None;
        }
        let (n, p) = (self.nodes.get(node)?, self.policies.get(policy)?);
        let mut freed = Res::ZERO;
        for (i, victim) in victims.iter().enumerate() {
            let (Reverse(priority), key, index) = victim;
            let v = self.workloads.get(key)?;
            let on_node = v
                .replicas
                .get(*index as usize)
                .is_some_and(|r| r.node == Some(node));
            if !on_node
                || v.demand.priority != *priority
                || *priority >= by.0.0
                || victims[..i].contains(victim)
            {
                return None;
            }
            freed = freed.plus(v.footprint);
        }
        may_take(n, p, policy, w, freed, victims.len()).then_some(policy)
    }

    /// Gives a taken replica back, pending for `reason`. It rejoins its policy's queue
    /// when the strategy's pass ends.
    pub(super) fn defer(&mut self, taken: Taken, reason: String) {
        let (_, key, index) = &taken.0;
        // A replica of a workload since removed, or ungoverned: no queue takes it.
        let Some(w) = self.workloads.get_mut(key) else {
            return;
        };
        let Ok(policy) = w.policy else { return };
        let Some(replica) = w.replicas.get_mut(*index as usize) else {
            return;
        };
        if replica.node.is_none() {
            replica.reason = Some(reason);
            self.policies[policy].deferred.insert(taken.0);
        }
    }

    /// Sets what a placed replica is granted. No total depends on it: placement reserves
    /// footprints.
    pub(super) fn set_grant(&mut self, key: &WorkloadRef, index: u32, grant: Res) {
        if let Some(replica) = self
            .workloads
            .get_mut(key)
            .and_then(|w| w.replicas.get_mut(index as usize))
            && replica.node.is_some()
        {
            replica.grant = grant;
        }
    }

    /// Why a replica of `key` last fitted nowhere, if nothing was placed or removed since.
    pub(super) fn fresh_reason(&self, key: &WorkloadRef) -> Option<&str> {
        self.reasons
            .get(key)
            .filter(|(epoch, _)| *epoch == self.epoch)
            .map(|(_, reason)| reason.as_str())
    }

    /// Records why a replica of `key` fits nowhere, until something is placed or removed.
    pub(super) fn remember_reason(&mut self, key: &WorkloadRef, reason: String) {
        self.reasons.insert(key.clone(), (self.epoch, reason));
    }

    /// Node `id`.
    pub(super) fn node(&self, id: NodeId) -> &NodeState {
        &self.nodes[id]
    }

    /// Every node, by id (in name order).
    pub(super) fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// Policy `id`.
    pub(super) fn policy(&self, id: PolicyId) -> &PolicyState {
        &self.policies[id]
    }

    /// Every policy, by id (in name order, the built-in default last).
    pub(super) fn policies(&self) -> &[PolicyState] {
        &self.policies
    }

    /// The workload `key`, unless removed.
    pub(super) fn workload(&self, key: &WorkloadRef) -> Option<&WorkloadState> {
        self.workloads.get(key)
    }

    /// Every workload, by key.
    pub(super) fn workloads(&self) -> &BTreeMap<WorkloadRef, WorkloadState> {
        &self.workloads
    }

    /// The preemptions the last [`Allocator::allocate`] made, in order.
    pub(super) fn preemptions(&self) -> &[Preempted] {
        &self.preemptions
    }

    /// Observed use per replica.
    pub(super) fn observed(&self) -> &HashMap<ReplicaKey, Observed> {
        &self.observed
    }

    /// Puts a replica on a node and accounts for it, if the node may take it ([`may_take`])
    /// and the replica is not placed yet; false otherwise. The replica is not in its
    /// policy's queue: every caller has taken it off or never put it on (looking for it
    /// cost a search of 150,000 keys per placement at Kubernetes' scale).
    fn put(&mut self, queue_key: &QueueKey, node: NodeId) -> bool {
        let (Reverse(priority), key, index) = queue_key;
        let Some(w) = self.workloads.get_mut(key) else {
            return false;
        };
        let Ok(policy) = w.policy else { return false };
        let (Some(n), Some(p)) = (self.nodes.get(node), self.policies.get(policy)) else {
            return false;
        };
        if w.demand.priority != *priority || !may_take(n, p, policy, w, Res::ZERO, 0) {
            return false;
        }
        let Some(replica) = w.replicas.get_mut(*index as usize) else {
            return false;
        };
        if replica.node.is_some() {
            return false;
        }
        replica.node = Some(node);
        replica.reason = None;
        replica.grant = w.demand.request;
        *w.per_node.entry(node).or_insert(0) += 1;
        let amounts = (w.footprint, w.demand.request);
        self.account(policy, node, queue_key, amounts, true);
        true
    }

    /// Takes a replica off its node; it is neither queued nor explained.
    fn unplace(&mut self, queue_key: &QueueKey) {
        let (_, key, index) = queue_key;
        let Some(w) = self.workloads.get_mut(key) else {
            return;
        };
        let Ok(policy) = w.policy else { return };
        let Some(replica) = w.replicas.get_mut(*index as usize) else {
            return;
        };
        let Some(node) = replica.node.take() else {
            return;
        };
        replica.grant = Res::ZERO;
        if let Some(count) = w.per_node.get_mut(&node) {
            *count -= 1;
            if *count == 0 {
                w.per_node.remove(&node);
            }
        }
        let amounts = (w.footprint, w.demand.request);
        self.account(policy, node, queue_key, amounts, false);
    }

    /// Adds a replica, of its workload's `(footprint, request)`, to (or removes it from)
    /// the totals of its node, policy and tenant.
    fn account(
        &mut self,
        policy: PolicyId,
        node: NodeId,
        queue_key: &QueueKey,
        (footprint, request): (Res, Res),
        add: bool,
    ) {
        let (Reverse(priority), key, index) = queue_key;
        let change = |total: Res, amount: Res| {
            if add {
                total.plus(amount)
            } else {
                total.minus(amount)
            }
        };
        let n = &mut self.nodes[node];
        let p = &mut self.policies[policy];
        n.committed = change(n.committed, footprint);
        n.requested = change(n.requested, request);
        let entry = (*priority, key.clone(), *index);
        if add {
            n.replicas.insert(entry);
        } else {
            n.replicas.remove(&entry);
        }
        if !self.index_paused {
            p.by_free.set(n.entry(node));
        }
        p.committed = change(p.committed, footprint);
        let count = p.placed_priorities.entry(*priority).or_insert(0);
        *count = if add {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
        if *count == 0 {
            p.placed_priorities.remove(priority);
        }
        if let Some(t) = p.tenants.get_mut(key.namespace_arc()) {
            let before = t.unmet();
            t.allocated = change(t.allocated, footprint);
            t.placed = if add {
                t.placed + 1
            } else {
                t.placed.saturating_sub(1)
            };
            p.unmet = p.unmet.minus(before).plus(t.unmet());
        }
        self.dirty[node] = true;
        self.epoch += 1;
    }

    /// The node a replica of `w` should go to, or `None` if none of the policy's nodes
    /// matches and has room. `Spread` takes the node with the fewest replicas of the
    /// workload, then the most free room; `Pack` the node with the least free room that
    /// fits. Under `Demand` a node where the whole request fits is preferred to one where
    /// only the floor does.
    pub(super) fn choose_node(&self, policy: PolicyId, w: &WorkloadState) -> Option<NodeId> {
        let p = &self.policies[policy];
        if p.spec.strategy == Strategy::Demand
            && let Some(node) = self.search(p, w, w.demand.request, Against::Room, |n| {
                w.demand.request.fits_in(&n.allocatable.minus(n.requested))
            })
        {
            return Some(node);
        }
        self.search(p, w, w.footprint, Against::Free, |n| {
            w.footprint.fits_in(&n.free())
        })
    }

    /// The node for a replica of `w` needing `need` of `against`, where `fits` says
    /// whether it fits. The index passes over nodes that cannot take it; each it offers is
    /// checked in full, so the node is the one a walk over every node would find.
    fn search(
        &self,
        p: &PolicyState,
        w: &WorkloadState,
        need: Res,
        against: Against,
        fits: impl Fn(&NodeState) -> bool,
    ) -> Option<NodeId> {
        let max = p.max_per_node();
        let eligible = |id: NodeId| {
            let n = &self.nodes[id];
            n.replicas.len() < max
                && labels_match(&w.demand.node_selector, &n.info.labels)
                && fits(n)
        };
        let want = Want {
            need,
            against,
            max_count: max,
            label: w.label_bit,
        };
        match w.demand.mode {
            PlacementMode::Pack => p
                .by_free
                .candidates(&want)
                .map(|e| e.key.1)
                .find(|id| eligible(*id)),
            PlacementMode::Spread => {
                let mut best: Option<(u32, NodeId)> = None;
                for e in p.by_free.candidates_rev(&want) {
                    let id = e.key.1;
                    let count = w.per_node.get(&id).copied().unwrap_or(0);
                    if best.is_some_and(|(c, _)| c <= count) || !eligible(id) {
                        continue;
                    }
                    best = Some((count, id));
                    if count == 0 {
                        break;
                    }
                }
                best.map(|(_, id)| id)
            }
        }
    }

    /// Preemption under `Priority`: the node where evicting the fewest, lowest-priority
    /// replicas of strictly lower priority makes room, and those victims. `None` when the
    /// policy forbids it or no node would do.
    pub(super) fn preemption_victims(
        &self,
        policy: PolicyId,
        queue_key: &QueueKey,
    ) -> Option<(NodeId, Vec<QueueKey>)> {
        let p = &self.policies[policy];
        if p.spec.preemption.policy != PreemptionPolicy::PreemptLowerPriority {
            return None;
        }
        let (Reverse(priority), key, _) = queue_key;
        if p.placed_priorities
            .first_key_value()
            .is_none_or(|(lowest, _)| lowest >= priority)
        {
            return None;
        }
        let w = &self.workloads[key];
        let mut best: Option<((i32, usize, NodeId), Vec<QueueKey>)> = None;
        for &node in &p.nodes {
            let n = &self.nodes[node];
            if n.replicas
                .first()
                .is_none_or(|(lowest, _, _)| lowest >= priority)
                || !labels_match(&w.demand.node_selector, &n.info.labels)
                || !w.footprint.fits_in(&n.allocatable)
            {
                continue;
            }
            // Lowest priority first; within a priority the highest replica index, as a
            // scale-down would pick.
            let mut candidates: Vec<&(i32, WorkloadRef, u32)> = n
                .replicas
                .iter()
                .take_while(|(victim_priority, _, _)| victim_priority < priority)
                .collect();
            candidates.sort_by(|a, b| (a.0, &a.1, Reverse(a.2)).cmp(&(b.0, &b.1, Reverse(b.2))));
            let mut free = n.free();
            let mut victims = Vec::new();
            // Room for one more replica, in resources and in count.
            let room = |free: &Res, victims: usize| {
                w.footprint.fits_in(free) && n.replicas.len() - victims < p.max_per_node()
            };
            for (victim_priority, victim_key, index) in candidates {
                if room(&free, victims.len()) {
                    break;
                }
                free = free.plus(self.workloads[victim_key].footprint);
                victims.push((Reverse(*victim_priority), victim_key.clone(), *index));
            }
            if victims.is_empty() || !room(&free, victims.len()) {
                continue;
            }
            let worst = victims.iter().map(|v| v.0.0).max().unwrap_or(i32::MIN);
            let rank = (worst, victims.len(), node);
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, victims));
            }
        }
        best.map(|((_, _, node), victims)| (node, victims))
    }

    /// Whether one more replica of `w`, the workload `key`, keeps its tenant within the
    /// limit the policy sets (whatever the strategy); if not, why.
    pub(super) fn within_tenant_limit(
        &self,
        policy: PolicyId,
        key: &WorkloadRef,
        w: &WorkloadState,
    ) -> Result<(), String> {
        let footprint = w.footprint;
        let Some(t) = self.policies[policy].tenants.get(key.namespace_arc()) else {
            return Ok(());
        };
        if let Some(max) = t.max_replicas
            && t.placed >= max
        {
            return Err(format!(
                "tenant {} already has {} replica(s) placed, the most ResourcePolicy {:?} allows it (maxReplicas)",
                key.namespace(),
                t.placed,
                self.policies[policy].name
            ));
        }
        let Some(limit) = t.limit else { return Ok(()) };
        match t.allocated.plus(footprint).first_excess(&limit) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "tenant {} is at its limit: it holds {} {} of {}, and a replica needs {} more",
                key.namespace(),
                kind.format(t.allocated.get(kind)),
                kind.name(),
                kind.format(limit.get(kind)),
                kind.format(footprint.get(kind)),
            )),
        }
    }

    /// The key a replica is reported under.
    pub(super) fn replica_key(key: &WorkloadRef, index: u32) -> ReplicaKey {
        key.replica(index)
    }
}

/// Why a workload's `policyRef` cannot name `policy`.
pub fn not_admitted(policy: &ResourcePolicy, workload: &Workload) -> String {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let namespace = namespace_of(workload);
    if !policy.spec.namespaces.is_empty() && !policy.spec.namespaces.iter().any(|n| n == namespace)
    {
        format!(
            "spec.policyRef names ResourcePolicy {name:?}, which governs only namespaces {} (its spec.namespaces), not {namespace}",
            policy.spec.namespaces.join(", ")
        )
    } else {
        format!(
            "spec.policyRef names ResourcePolicy {name:?}, whose spec.workloadSelector does not select this workload's labels"
        )
    }
}

impl PolicyState {
    /// `maxReplicasPerNode`, as a count.
    pub(super) fn max_per_node(&self) -> usize {
        usize::try_from(self.spec.max_replicas_per_node.max(1)).unwrap_or(usize::MAX)
    }

    fn new(name: String, spec: ResourcePolicySpec) -> Self {
        let tenants = spec
            .tenants
            .iter()
            .map(|t| {
                let state = TenantState {
                    weight: t.weight.max(1),
                    guarantee: t.guarantee.as_ref().map(|g| amounts_or(Some(g), 0)),
                    limit: t.limit.as_ref().map(|l| amounts_or(Some(l), i64::MAX)),
                    allocated: Res::ZERO,
                    placed: 0,
                    max_replicas: admit::max_replicas(&spec, &t.namespace)
                        .map(|m| usize::try_from(m).unwrap_or(0)),
                };
                (Arc::from(t.namespace.as_str()), state)
            })
            .collect::<BTreeMap<Arc<str>, TenantState>>();
        let unmet = tenants
            .values()
            .fold(Res::ZERO, |sum, t: &TenantState| sum.plus(t.unmet()));
        PolicyState {
            name,
            spec,
            nodes: Vec::new(),
            by_free: NodeIndex::default(),
            total: Res::ZERO,
            committed: Res::ZERO,
            pending: BTreeSet::new(),
            deferred: BTreeSet::new(),
            tenants,
            unmet,
            placed_priorities: BTreeMap::new(),
        }
    }

    /// What a node of `capacity` offers under this policy: (capacity − reserved) ×
    /// overcommit, never below zero.
    pub fn allocatable(&self, capacity: &Res) -> Res {
        let reserved = amounts_or(Some(&self.spec.reserved), 0);
        let ratios = [
            self.spec.overcommit.cpu,
            self.spec.overcommit.memory,
            self.spec.overcommit.pids,
        ];
        capacity.minus(reserved).map(|kind, left| {
            let ratio = ratios[kind as usize];
            let scaled = (left.max(0) as f64 * ratio).floor();
            if scaled >= i64::MAX as f64 {
                i64::MAX
            } else {
                scaled as i64
            }
        })
    }
}

impl TenantState {
    /// A namespace that has workloads under the policy but is not listed as a tenant.
    fn unlisted(max_replicas: Option<i32>) -> Self {
        TenantState {
            weight: 1,
            guarantee: None,
            limit: None,
            allocated: Res::ZERO,
            placed: 0,
            max_replicas: max_replicas.map(|m| usize::try_from(m).unwrap_or(0)),
        }
    }
}

/// Whether node `n` may take a replica of `w`, governed by `policy` (`p`), once `leaving`
/// replicas holding `freed` have left it: the node is the policy's, matches the workload's
/// node selector, and has room for its footprint and for one more replica.
fn may_take(
    n: &NodeState,
    p: &PolicyState,
    policy: PolicyId,
    w: &WorkloadState,
    freed: Res,
    leaving: usize,
) -> bool {
    n.policy == Some(policy)
        && n.replicas.len().saturating_sub(leaving) < p.max_per_node()
        && w.footprint.fits_in(&n.free().plus(freed))
        && match w.label_bit {
            // Set on exactly the nodes that match it (nodes do not change).
            Some(bit) => n.label_bits & (1 << bit) != 0,
            None => {
                w.demand.node_selector.is_empty()
                    || labels_match(&w.demand.node_selector, &n.info.labels)
            }
        }
}

/// True when `labels` carry every pair of `selector`.
pub(super) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
