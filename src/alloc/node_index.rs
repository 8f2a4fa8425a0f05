//! A policy's nodes in order of free room, for placement's searches: `Pack` wants the
//! first node (least free) that can take a replica, `Spread` walks from the last (most
//! free). At 5,000 nodes a plain ordered set made each search walk past every node that
//! is full, matches other labels or holds `maxReplicasPerNode` already: O(nodes) per
//! replica, most of a full allocation's time.
//!
//! So the order is kept in blocks of a few dozen nodes, each with a summary of what its
//! nodes could take: the most free of each resource (and the most left of requests, for
//! `Demand`), the fewest replicas, and which node selectors some node of it matches. A
//! search skips a block whose summary shows that none of its nodes can take the replica,
//! and checks the others node by node, as before: it finds the same node, only sooner.

use super::resources::Res;
use super::state::NodeId;

/// A node's place in the order: its free room as one number (see `NodeState::score`),
/// then its id.
pub(super) type Key = (u64, NodeId);

/// What a search needs to know of one node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Entry {
    /// Where the node is in the order.
    pub key: Key,
    /// allocatable − committed.
    pub free: Res,
    /// allocatable − requested: what `Demand` first looks for.
    pub room: Res,
    /// Replicas on the node.
    pub count: usize,
    /// Bit `b` is set when the node matches the node selector numbered `b` (see
    /// `Allocator::selector_bit`).
    pub labels: u64,
}

/// Which of an entry's amounts a search checks a replica's need against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Against {
    /// `free`.
    Free,
    /// `room`.
    Room,
}

/// What a search is for: a replica needing `need` of `against`, on a node with fewer than
/// `max_count` replicas, that matches the node selector numbered `label` (`None`: a
/// selector without a number, or none, which the caller checks itself).
#[derive(Clone, Copy, Debug)]
pub(super) struct Want {
    pub need: Res,
    pub against: Against,
    pub max_count: usize,
    pub label: Option<u32>,
}

impl Want {
    /// False when no node summarised by these amounts can satisfy the search: each is the
    /// largest (or, for `count`, the smallest) over the nodes, so a node that could would
    /// make them pass.
    fn may_fit(&self, free: &Res, room: &Res, count: usize, labels: u64) -> bool {
        let amounts = match self.against {
            Against::Free => free,
            Against::Room => room,
        };
        count < self.max_count
            && self.need.fits_in(amounts)
            && self.label.is_none_or(|b| labels & (1 << b) != 0)
    }

    /// False when the node cannot take the replica; true says only that it may (the
    /// caller checks what the entry does not hold).
    pub fn admits(&self, e: &Entry) -> bool {
        self.may_fit(&e.free, &e.room, e.count, e.labels)
    }
}

/// Blocks split above this many nodes, and merge with a neighbour below a quarter of it.
const MAX_BLOCK: usize = 64;

/// A run of nodes in key order, with what they could take. Only the keys are here, so
/// that moving a node shifts 16-byte keys, not whole entries.
#[derive(Clone, Debug)]
struct Block {
    /// In order; never empty.
    keys: Vec<Key>,
    /// The largest free amount of each resource over the nodes.
    max_free: Res,
    /// The largest room of each resource over the nodes.
    max_room: Res,
    /// The fewest replicas on one of the nodes.
    min_count: usize,
    /// The union of the nodes' label bits.
    labels: u64,
}

impl Block {
    fn new(keys: Vec<Key>, entries: &[Option<Entry>]) -> Block {
        let mut block = Block {
            keys,
            max_free: Res::ZERO,
            max_room: Res::ZERO,
            min_count: 0,
            labels: 0,
        };
        block.summarise(entries);
        block
    }

    fn summarise(&mut self, entries: &[Option<Entry>]) {
        let low = Res::new(i64::MIN, i64::MIN, i64::MIN);
        let (mut free, mut room, mut count, mut labels) = (low, low, usize::MAX, 0);
        for e in self.keys.iter().filter_map(|k| entry(entries, k.1)) {
            free = free.max(e.free);
            room = room.max(e.room);
            count = count.min(e.count);
            labels |= e.labels;
        }
        (self.max_free, self.max_room, self.min_count, self.labels) = (free, room, count, labels);
    }

    /// Takes `e` into the summary without reading the other nodes.
    fn widen(&mut self, e: &Entry) {
        self.max_free = self.max_free.max(e.free);
        self.max_room = self.max_room.max(e.room);
        self.min_count = self.min_count.min(e.count);
        self.labels |= e.labels;
    }

    fn may_fit(&self, want: &Want) -> bool {
        want.may_fit(&self.max_free, &self.max_room, self.min_count, self.labels)
    }
}

fn entry(entries: &[Option<Entry>], id: NodeId) -> Option<&Entry> {
    entries.get(id).and_then(Option::as_ref)
}

/// The ordered nodes of one policy. See the module's documentation.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeIndex {
    blocks: Vec<Block>,
    /// Each node's entry, by id; `None` for nodes not in the index.
    entries: Vec<Option<Entry>>,
}

impl NodeIndex {
    /// The block where `key` is or would go: the first whose last key is not below it,
    /// else the last block.
    fn block_of(&self, key: Key) -> usize {
        let at = self
            .blocks
            .partition_point(|b| b.keys.last().is_some_and(|last| *last < key));
        at.min(self.blocks.len().saturating_sub(1))
    }

    /// Puts node `e.key.1` in the index as `e`, wherever it was.
    pub fn set(&mut self, e: Entry) {
        let id = e.key.1;
        if self.entries.len() <= id {
            self.entries.resize(id + 1, None);
        }
        match self.entries[id].replace(e) {
            Some(old) if old.key == e.key => {
                let b = self.block_of(e.key);
                self.blocks[b].summarise(&self.entries);
            }
            Some(old) => {
                self.take_key(old.key);
                self.put_key(&e);
            }
            None => self.put_key(&e),
        }
    }

    /// What the index holds of node `id`, if it holds it.
    pub fn entry(&self, id: NodeId) -> Option<&Entry> {
        entry(&self.entries, id)
    }

    /// Takes node `id` out of the index. (Nodes stay in their policy for the allocator's
    /// life; the tests move them out and in.)
    #[cfg(test)]
    pub fn unset(&mut self, id: NodeId) {
        if let Some(old) = self.entries.get_mut(id).and_then(Option::take) {
            self.take_key(old.key);
        }
    }

    fn put_key(&mut self, e: &Entry) {
        if self.blocks.is_empty() {
            self.blocks.push(Block::new(vec![e.key], &self.entries));
            return;
        }
        let b = self.block_of(e.key);
        let block = &mut self.blocks[b];
        let (Ok(i) | Err(i)) = block.keys.binary_search(&e.key);
        block.keys.insert(i, e.key);
        block.widen(e);
        if block.keys.len() > MAX_BLOCK {
            let upper = block.keys.split_off(block.keys.len() / 2);
            block.summarise(&self.entries);
            let upper = Block::new(upper, &self.entries);
            self.blocks.insert(b + 1, upper);
        }
    }

    /// Takes `key` out of its block; the node's entry is already gone or replaced.
    fn take_key(&mut self, key: Key) {
        if self.blocks.is_empty() {
            return;
        }
        let b = self.block_of(key);
        let block = &mut self.blocks[b];
        let Ok(i) = block.keys.binary_search(&key) else {
            return;
        };
        block.keys.remove(i);
        if block.keys.is_empty() {
            self.blocks.remove(b);
            return;
        }
        block.summarise(&self.entries);
        // Many small blocks would make every search read many summaries.
        if block.keys.len() < MAX_BLOCK / 4 && self.blocks.len() > 1 {
            let (left, right) = if b + 1 < self.blocks.len() {
                (b, b + 1)
            } else {
                (b - 1, b)
            };
            let moved = self.blocks.remove(right).keys;
            let merged = &mut self.blocks[left];
            merged.keys.extend(moved);
            merged.summarise(&self.entries);
            if merged.keys.len() > MAX_BLOCK {
                let upper = merged.keys.split_off(merged.keys.len() / 2);
                merged.summarise(&self.entries);
                let upper = Block::new(upper, &self.entries);
                self.blocks.insert(left + 1, upper);
            }
        }
    }

    /// Builds the index anew from `entries`, in any order: cheaper than setting each
    /// when many changed.
    pub fn rebuild(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.entries.clear();
        for e in entries {
            let id = e.key.1;
            if self.entries.len() <= id {
                self.entries.resize(id + 1, None);
            }
            self.entries[id] = Some(e);
        }
        let mut keys: Vec<Key> = self.entries.iter().flatten().map(|e| e.key).collect();
        keys.sort_unstable();
        // Half-full blocks: room to take nodes before one splits.
        self.blocks = keys
            .chunks(MAX_BLOCK / 2)
            .map(|chunk| Block::new(chunk.to_vec(), &self.entries))
            .collect();
    }

    /// Sets or clears label bit `bit` on every node, as `matches` says.
    pub fn set_label(&mut self, bit: u32, matches: impl Fn(NodeId) -> bool) {
        for (id, e) in self.entries.iter_mut().enumerate() {
            if let Some(e) = e {
                if matches(id) {
                    e.labels |= 1 << bit;
                } else {
                    e.labels &= !(1 << bit);
                }
            }
        }
        for block in &mut self.blocks {
            block.summarise(&self.entries);
        }
    }

    /// The nodes in ascending order that may satisfy `want` (whole blocks that cannot are
    /// skipped, and so are entries that cannot).
    pub fn candidates<'a>(&'a self, want: &'a Want) -> impl Iterator<Item = &'a Entry> + 'a {
        self.blocks
            .iter()
            .filter(|b| b.may_fit(want))
            .flat_map(|b| b.keys.iter())
            .filter_map(|k| entry(&self.entries, k.1))
            .filter(|e| want.admits(e))
    }

    /// The same in descending order.
    pub fn candidates_rev<'a>(&'a self, want: &'a Want) -> impl Iterator<Item = &'a Entry> + 'a {
        self.blocks
            .iter()
            .rev()
            .filter(|b| b.may_fit(want))
            .flat_map(|b| b.keys.iter().rev())
            .filter_map(|k| entry(&self.entries, k.1))
            .filter(|e| want.admits(e))
    }

    /// Every node, in ascending order.
    #[cfg(test)]
    fn keys(&self) -> Vec<Key> {
        self.blocks
            .iter()
            .flat_map(|b| b.keys.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(score: u64, id: NodeId, cpu: i64, count: usize, labels: u64) -> Entry {
        Entry {
            key: (score, id),
            free: Res::new(cpu, 1000, 10),
            room: Res::new(cpu / 2, 1000, 10),
            count,
            labels,
        }
    }

    fn want(cpu: i64, against: Against, max_count: usize, label: Option<u32>) -> Want {
        Want {
            need: Res::new(cpu, 0, 0),
            against,
            max_count,
            label,
        }
    }

    /// The index against a plain ordered map, through moves, removals, rebuilds and
    /// searches of every kind, with a small deterministic generator.
    #[test]
    fn searches_find_what_a_full_scan_finds() {
        let mut index = NodeIndex::default();
        let mut model: BTreeMap<Key, Entry> = BTreeMap::new();
        let mut ids: BTreeMap<NodeId, Key> = BTreeMap::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for step in 0..20_000 {
            let id = usize::try_from(next(300)).unwrap_or(0);
            let was = ids.remove(&id);
            if let Some(old) = was {
                model.remove(&old);
            }
            if next(4) == 0 {
                index.unset(id);
            } else {
                let cpu = i64::try_from(next(1000)).unwrap_or(0);
                // Some keep their key (only what they hold changes), most move.
                let score = match was {
                    Some(k) if next(3) == 0 => k.0,
                    _ => next(50),
                };
                let e = entry(
                    score,
                    id,
                    cpu,
                    usize::try_from(next(5)).unwrap_or(0),
                    next(8),
                );
                index.set(e);
                model.insert(e.key, e);
                ids.insert(id, e.key);
            }
            if step % 5_000 == 4_999 {
                index.rebuild(model.values().copied());
            }
            if step % 50 == 0 {
                assert_eq!(index.keys(), model.keys().copied().collect::<Vec<_>>());
                for b in &index.blocks {
                    assert!(!b.keys.is_empty() && b.keys.len() <= MAX_BLOCK);
                }
            }
            let against = if next(2) == 0 {
                Against::Free
            } else {
                Against::Room
            };
            let label = if next(3) == 0 {
                None
            } else {
                u32::try_from(next(3)).ok()
            };
            let w = want(
                i64::try_from(next(1100)).unwrap_or(0),
                against,
                usize::try_from(next(6)).unwrap_or(0),
                label,
            );
            let expected: Vec<Key> = model
                .values()
                .filter(|e| w.admits(e))
                .map(|e| e.key)
                .collect();
            let first: Vec<Key> = index.candidates(&w).map(|e| e.key).collect();
            assert_eq!(first, expected);
            let mut last: Vec<Key> = index.candidates_rev(&w).map(|e| e.key).collect();
            last.reverse();
            assert_eq!(last, expected);
        }
    }

    #[test]
    fn label_bits_are_set_and_cleared() {
        let mut index = NodeIndex::default();
        for id in 0..200 {
            index.set(entry(id as u64, id, 100, 0, 0));
        }
        index.set_label(5, |id| id % 7 == 0);
        let w = want(0, Against::Free, 10, Some(5));
        let found: Vec<NodeId> = index.candidates(&w).map(|e| e.key.1).collect();
        assert_eq!(found, (0..200).filter(|id| id % 7 == 0).collect::<Vec<_>>());
        index.set_label(5, |_| false);
        assert_eq!(index.candidates(&w).count(), 0);
    }
}
