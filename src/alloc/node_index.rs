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

/// Blocks split above this many entries, and merge with a neighbour below a quarter of it.
const MAX_BLOCK: usize = 64;

#[derive(Clone, Debug)]
struct Block {
    /// In key order; never empty.
    entries: Vec<Entry>,
    /// The largest free amount of each resource over the entries.
    max_free: Res,
    /// The largest room of each resource over the entries.
    max_room: Res,
    /// The fewest replicas on one of the entries.
    min_count: usize,
    /// The union of the entries' label bits.
    labels: u64,
}

impl Block {
    fn new(entries: Vec<Entry>) -> Block {
        let mut block = Block {
            entries,
            max_free: Res::ZERO,
            max_room: Res::ZERO,
            min_count: 0,
            labels: 0,
        };
        block.summarise();
        block
    }

    fn summarise(&mut self) {
        let low = Res::new(i64::MIN, i64::MIN, i64::MIN);
        self.max_free = self.entries.iter().fold(low, |m, e| m.max(e.free));
        self.max_room = self.entries.iter().fold(low, |m, e| m.max(e.room));
        self.min_count = self.entries.iter().map(|e| e.count).min().unwrap_or(0);
        self.labels = self.entries.iter().fold(0, |m, e| m | e.labels);
    }

    /// Takes `e` into the summary without reading the other entries.
    fn widen(&mut self, e: &Entry) {
        self.max_free = self.max_free.max(e.free);
        self.max_room = self.max_room.max(e.room);
        self.min_count = self.min_count.min(e.count);
        self.labels |= e.labels;
    }

    fn may_fit(&self, want: &Want) -> bool {
        want.may_fit(&self.max_free, &self.max_room, self.min_count, self.labels)
    }

    fn last_key(&self) -> Option<Key> {
        self.entries.last().map(|e| e.key)
    }
}

/// The ordered nodes of one policy. See the module's documentation.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeIndex {
    blocks: Vec<Block>,
}

impl NodeIndex {
    /// The block where `key` is or would go: the first whose last key is not below it,
    /// else the last block.
    fn block_of(&self, key: Key) -> usize {
        let at = self
            .blocks
            .partition_point(|b| b.last_key().is_some_and(|last| last < key));
        at.min(self.blocks.len().saturating_sub(1))
    }

    /// Adds a node. A key already present is replaced.
    pub fn insert(&mut self, e: Entry) {
        if self.blocks.is_empty() {
            self.blocks.push(Block::new(vec![e]));
            return;
        }
        let b = self.block_of(e.key);
        let block = &mut self.blocks[b];
        match block.entries.binary_search_by(|x| x.key.cmp(&e.key)) {
            Ok(i) => {
                block.entries[i] = e;
                block.summarise();
            }
            Err(i) => {
                block.entries.insert(i, e);
                block.widen(&e);
            }
        }
        if block.entries.len() > MAX_BLOCK {
            let upper = block.entries.split_off(block.entries.len() / 2);
            block.summarise();
            self.blocks.insert(b + 1, Block::new(upper));
        }
    }

    /// Removes the node at `key`, if there.
    pub fn remove(&mut self, key: Key) {
        if self.blocks.is_empty() {
            return;
        }
        let b = self.block_of(key);
        let block = &mut self.blocks[b];
        let Ok(i) = block.entries.binary_search_by(|x| x.key.cmp(&key)) else {
            return;
        };
        block.entries.remove(i);
        if block.entries.is_empty() {
            self.blocks.remove(b);
            return;
        }
        block.summarise();
        // Many small blocks would make every search read many summaries.
        if block.entries.len() < MAX_BLOCK / 4 && self.blocks.len() > 1 {
            let (left, right) = if b + 1 < self.blocks.len() {
                (b, b + 1)
            } else {
                (b - 1, b)
            };
            let moved = self.blocks.remove(right).entries;
            let merged = &mut self.blocks[left];
            merged.entries.extend(moved);
            merged.summarise();
            if merged.entries.len() > MAX_BLOCK {
                let upper = merged.entries.split_off(merged.entries.len() / 2);
                merged.summarise();
                self.blocks.insert(left + 1, Block::new(upper));
            }
        }
    }

    /// Sets or clears label bit `bit` on every node, as `matches` says.
    pub fn set_label(&mut self, bit: u32, matches: impl Fn(NodeId) -> bool) {
        for block in &mut self.blocks {
            for e in &mut block.entries {
                if matches(e.key.1) {
                    e.labels |= 1 << bit;
                } else {
                    e.labels &= !(1 << bit);
                }
            }
            block.summarise();
        }
    }

    /// The nodes in ascending order that may satisfy `want` (whole blocks that cannot are
    /// skipped, and so are entries that cannot).
    pub fn candidates<'a>(&'a self, want: &'a Want) -> impl Iterator<Item = &'a Entry> + 'a {
        self.blocks
            .iter()
            .filter(|b| b.may_fit(want))
            .flat_map(|b| b.entries.iter())
            .filter(|e| want.admits(e))
    }

    /// The same in descending order.
    pub fn candidates_rev<'a>(&'a self, want: &'a Want) -> impl Iterator<Item = &'a Entry> + 'a {
        self.blocks
            .iter()
            .rev()
            .filter(|b| b.may_fit(want))
            .flat_map(|b| b.entries.iter().rev())
            .filter(|e| want.admits(e))
    }

    /// Every node, in ascending order.
    #[cfg(test)]
    fn keys(&self) -> Vec<Key> {
        self.blocks
            .iter()
            .flat_map(|b| b.entries.iter().map(|e| e.key))
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

    /// The index against a plain ordered map, through inserts, removals and searches of
    /// every kind, with a small deterministic generator.
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
            if let Some(old) = ids.remove(&id) {
                index.remove(old);
                model.remove(&old);
            }
            if next(4) != 0 {
                let cpu = i64::try_from(next(1000)).unwrap_or(0);
                let e = entry(next(50), id, cpu, usize::try_from(next(5)).unwrap_or(0), next(8));
                index.insert(e);
                model.insert(e.key, e);
                ids.insert(id, e.key);
            }
            if step % 50 == 0 {
                assert_eq!(index.keys(), model.keys().copied().collect::<Vec<_>>());
                for b in &index.blocks {
                    assert!(!b.entries.is_empty() && b.entries.len() <= MAX_BLOCK);
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
            index.insert(entry(id as u64, id, 100, 0, 0));
        }
        index.set_label(5, |id| id % 7 == 0);
        let w = want(0, Against::Free, 10, Some(5));
        let found: Vec<NodeId> = index.candidates(&w).map(|e| e.key.1).collect();
        assert_eq!(found, (0..200).filter(|id| id % 7 == 0).collect::<Vec<_>>());
        index.set_label(5, |_| false);
        assert_eq!(index.candidates(&w).count(), 0);
    }
}
