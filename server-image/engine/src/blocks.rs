//! The paged KV cache's block manager: fixed-size blocks handed out from a free list and
//! returned on finish, abort or preemption. Pure bookkeeping; the tensors live in `model.rs`.
//!
//! With prefix caching on, a block whose every slot is computed is registered under a hash of
//! its tokens chained to the hash of the block before it (vLLM v1's scheme). A new sequence whose
//! prompt starts with registered blocks takes them (reference-counted) instead of recomputing
//! them. Released blocks keep their registration while they sit in the free list, oldest freed
//! first out, so the most recently used prefixes survive longest.
//!
//! A sequence forked from another (the n samples of one prompt) shares its blocks, reference
//! counted; a block held by more than one sequence is never written: the first write into it
//! copies it (copy on write, vLLM v0's `blocks_to_copy`).

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::error::{Error, Result};

/// What a registered block holds: its chained hash and, to rule out collisions, its tokens and
/// its parent's hash.
#[derive(Debug, Clone)]
struct Registered {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

/// The bookkeeping of one block, kept together so one lookup reaches all of it.
#[derive(Debug, Clone, Default)]
struct Block {
    /// Bumped whenever the block leaves or re-enters the free list; a free-list entry is live only
    /// while its epoch matches.
    epoch: u32,
    refs: u32,
    registered: Option<Registered>,
}

/// Hands out KV-cache blocks.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    num_blocks: usize,
    /// Free blocks in release order; an entry is live only while its epoch matches (a cached
    /// block taken back by a prefix hit leaves a stale entry behind).
    free: VecDeque<(u32, u32)>,
    free_count: usize,
    blocks: Vec<Block>,
    prefix_caching: bool,
    by_hash: HashMap<u64, u32>,
}

/// A block's slots to copy into another before a step runs (copy on write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// The shared block.
    pub src: u32,
    /// The fresh block that replaces it in the writing sequence's table.
    pub dst: u32,
}

/// The hash every chain starts from.
const ROOT: u64 = 0x6c6c_6d73_6572_7665;

fn chain(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    /// `num_blocks` blocks of `block_size` token slots each, without prefix caching.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        BlockManager {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).map(|b| (b, 0)).collect(),
            free_count: num_blocks,
            blocks: vec![Block::default(); num_blocks],
            prefix_caching: false,
            by_hash: HashMap::new(),
        }
    }

    /// Turns prefix caching on or off (off forgets every registration).
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.prefix_caching = on;
        if !on {
            self.by_hash.clear();
            self.blocks.iter_mut().for_each(|b| b.registered = None);
        }
    }

    /// Whether prefix caching is on.
    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in all.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks not held by any sequence (cached but unused blocks count as free).
    pub fn free_blocks(&self) -> usize {
        self.free_count
    }

    /// Fraction of blocks in use, 0..1 (`vllm:kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.num_blocks == 0 { 0.0 } else { 1.0 - self.free_count as f64 / self.num_blocks as f64 }
    }

    /// Blocks a sequence of `tokens` tokens needs.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    fn take_free(&mut self) -> Option<u32> {
        while let Some((b, e)) = self.free.pop_front() {
            let Some(block) = self.blocks.get_mut(b as usize) else { continue };
            if block.epoch != e || block.refs != 0 {
                continue; // stale: taken back by a prefix hit since
            }
            self.free_count -= 1;
            block.refs = 1;
            if let Some(r) = block.registered.take() {
                self.by_hash.remove(&r.hash); // evicted: its slots are about to be overwritten
            }
            return Some(b);
        }
        None
    }

    /// Grows `table` so it holds `tokens` tokens; all or nothing.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> Result<()> {
        let needed = self.blocks_for(tokens).saturating_sub(table.len());
        if needed > self.free_count {
            return Err(Error::CacheFull { needed, free: self.free_count });
        }
        let before = table.len();
        for _ in 0..needed {
            let Some(b) = self.take_free() else {
                // Not reached while `free_count` counts the live free entries; stay all or nothing.
                let mut taken = table.split_off(before);
                self.release(&mut taken);
                return Err(Error::CacheFull { needed, free: self.free_count });
            };
            table.push(b);
        }
        Ok(())
    }

    /// Ensures `table` holds `tokens` tokens and that the block of position `from` (the first to be
    /// written) is this table's alone: a shared one is replaced by a fresh block, and the copy its
    /// slots need is returned. All or nothing.
    pub fn make_writable(&mut self, table: &mut Vec<u32>, from: usize, tokens: usize) -> Result<Option<BlockCopy>> {
        let at = from / self.block_size;
        let shared = table.get(at).and_then(|&b| self.blocks.get(b as usize)).is_some_and(|b| b.refs > 1);
        let needed = self.blocks_for(tokens).saturating_sub(table.len()) + usize::from(shared);
        if needed > self.free_count {
            return Err(Error::CacheFull { needed, free: self.free_count });
        }
        let mut copy = None;
        if shared {
            let dst = self.take_free().ok_or(Error::CacheFull { needed, free: self.free_count })?;
            if let Some(slot) = table.get_mut(at) {
                let src = std::mem::replace(slot, dst);
                if let Some(block) = self.blocks.get_mut(src as usize) {
                    block.refs -= 1; // it was shared, so another table still holds it
                }
                copy = Some(BlockCopy { src, dst });
            }
        }
        if let Err(e) = self.grow(table, tokens) {
            // Not reached: the blocks were counted above. Undo the copy to stay all or nothing.
            if let (Some(c), Some(slot)) = (copy, table.get_mut(at)) {
                *slot = c.src;
                if let Some(block) = self.blocks.get_mut(c.src as usize) {
                    block.refs += 1;
                }
                self.release(&mut vec![c.dst]);
            }
            return Err(e);
        }
        Ok(copy)
    }

    /// A second table over the same blocks (a forked sequence); each block's count goes up.
    pub fn fork(&mut self, table: &[u32]) -> Vec<u32> {
        for &b in table {
            if let Some(block) = self.blocks.get_mut(b as usize) {
                block.refs += 1;
            }
        }
        table.to_vec()
    }

    /// How many tables hold block `b`.
    pub fn holders(&self, b: u32) -> u32 {
        self.blocks.get(b as usize).map_or(0, |block| block.refs)
    }

    /// Returns a sequence's blocks; registered ones stay findable until they are reused.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..) {
            let Some(block) = self.blocks.get_mut(b as usize) else { continue }; // not one of ours
            block.refs = block.refs.saturating_sub(1);
            if block.refs == 0 {
                block.epoch = block.epoch.wrapping_add(1);
                self.free.push_back((b, block.epoch));
                self.free_count += 1;
            }
        }
    }

    /// The registered blocks that hold the longest prefix of `tokens` in whole blocks, at most
    /// `max_tokens` tokens of it, taken for a new sequence (their reference counts go up).
    pub fn take_prefix(&mut self, tokens: &[u32], max_tokens: usize) -> Vec<u32> {
        let mut out = Vec::new();
        if !self.prefix_caching {
            return out;
        }
        let mut parent = ROOT;
        for chunk in tokens.get(..max_tokens).unwrap_or(tokens).chunks_exact(self.block_size) {
            let hash = chain(parent, chunk);
            let Some(&b) = self.by_hash.get(&hash) else { break };
            let Some(block) = self.blocks.get_mut(b as usize) else { break };
            match &block.registered {
                Some(r) if r.parent == parent && *r.tokens == *chunk => {}
                _ => break,
            }
            if block.refs == 0 {
                self.free_count -= 1; // its free-list entry goes stale
                block.epoch = block.epoch.wrapping_add(1);
            }
            block.refs += 1;
            out.push(b);
            parent = hash;
        }
        out
    }

    /// Registers the whole blocks of `table` that `tokens[..computed]` fills and `tokens[..from]`
    /// (what was computed before) did not: each step only looks at the blocks it completed.
    pub fn register(&mut self, table: &[u32], tokens: &[u32], from: usize, computed: usize) {
        let (first, end) = (from / self.block_size, computed.min(tokens.len()) / self.block_size);
        if !self.prefix_caching || first >= end {
            return;
        }
        // The chain goes on from the block before, which was registered when it filled; if it
        // was not (another block held its prefix), the chain stopped there.
        let mut parent = match first.checked_sub(1) {
            None => ROOT,
            Some(prev) => {
                let block = table.get(prev).and_then(|&b| self.blocks.get(b as usize));
                match block.and_then(|b| b.registered.as_ref()) {
                    Some(r) => r.hash,
                    None => return,
                }
            }
        };
        let Some(filled) = table.get(first..end) else { return };
        // `end` whole blocks of tokens exist: `end * block_size <= tokens.len()`.
        for (&b, chunk) in filled.iter().zip(tokens.chunks_exact(self.block_size).skip(first)) {
            let Some(block) = self.blocks.get_mut(b as usize) else { return };
            if let Some(r) = &block.registered {
                parent = r.hash;
                continue;
            }
            let hash = chain(parent, chunk);
            if self.by_hash.contains_key(&hash) {
                return; // another block holds this prefix; the chain goes on from that one only
            }
            self.by_hash.insert(hash, b);
            block.registered = Some(Registered { hash, parent, tokens: chunk.into() });
            parent = hash;
        }
    }

    /// Cache slot of token position `pos` of a sequence with block table `table`; `None` when
    /// the table is too short to hold it.
    pub fn slot(&self, table: &[u32], pos: usize) -> Option<usize> {
        let b = *table.get(pos / self.block_size)?;
        Some(b as usize * self.block_size + pos % self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_releases_and_reports_usage() {
        let mut bm = BlockManager::new(4, 16);
        let mut a = Vec::new();
        bm.grow(&mut a, 17).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(bm.usage(), 0.5);
        bm.grow(&mut a, 32).unwrap();
        assert_eq!(a.len(), 2, "32 tokens still fit in two blocks");
        let mut b = Vec::new();
        assert!(matches!(bm.grow(&mut b, 48), Err(Error::CacheFull { needed: 3, free: 2 })));
        assert!(b.is_empty(), "a failed grow takes nothing");
        assert_eq!(bm.slot(&a, 17), Some(a[1] as usize * 16 + 1));
        assert_eq!(bm.slot(&a, 32), None, "past the table");
        bm.release(&mut a);
        assert_eq!((bm.free_blocks(), bm.usage()), (4, 0.0));
    }

    #[test]
    fn prefixes_are_shared_counted_and_evicted_oldest_first() {
        let mut bm = BlockManager::new(4, 2);
        bm.set_prefix_caching(true);
        let prompt = [1, 2, 3, 4, 5];
        let mut a = Vec::new();
        assert!(bm.take_prefix(&prompt, 4).is_empty(), "nothing cached yet");
        bm.grow(&mut a, 5).unwrap();
        bm.register(&a, &prompt, 0, 5);
        // The same prompt finds the two whole blocks (the fifth token is computed again).
        let mut b = bm.take_prefix(&prompt, 4);
        assert_eq!(b, a[..2]);
        assert_eq!(bm.free_blocks(), 1, "shared blocks are held once");
        // A prompt that differs in the second block shares only the first.
        assert_eq!(bm.take_prefix(&[1, 2, 9, 4], 4), a[..1]);
        let mut c = a[..1].to_vec();
        bm.release(&mut c);
        bm.release(&mut a);
        assert_eq!(bm.free_blocks(), 2, "b still holds two blocks");
        bm.release(&mut b);
        assert_eq!(bm.free_blocks(), 4);
        // Released but registered: still found, and taking it back removes it from the free list.
        let mut again = bm.take_prefix(&prompt, 4);
        assert_eq!(again.len(), 2);
        assert_eq!(bm.free_blocks(), 2);
        bm.release(&mut again);
        // Reuse evicts: four fresh blocks overwrite every registration.
        let mut d = Vec::new();
        bm.grow(&mut d, 8).unwrap();
        assert_eq!(bm.free_blocks(), 0);
        assert!(bm.take_prefix(&prompt, 4).is_empty(), "evicted blocks are not found");
        bm.release(&mut d);
        assert_eq!(bm.free_blocks(), 4);
    }

    #[test]
    fn registering_step_by_step_builds_the_same_chain() {
        let mut bm = BlockManager::new(8, 2);
        bm.set_prefix_caching(true);
        let tokens = [1, 2, 3, 4, 5, 6, 7];
        let mut a = Vec::new();
        bm.grow(&mut a, 7).unwrap();
        // A prefill chunk of three tokens, then one decode token at a time.
        for (from, to) in [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)] {
            bm.register(&a, &tokens, from, to);
        }
        assert_eq!(bm.take_prefix(&tokens, 6), a[..3], "three whole blocks, chained");
        assert_eq!(bm.take_prefix(&[1, 2, 9, 4, 5, 6], 6), a[..1], "a different second block breaks the chain");
    }

    #[test]
    fn forked_tables_share_blocks_and_copy_the_one_they_write() {
        let mut bm = BlockManager::new(8, 4);
        let mut parent = Vec::new();
        bm.grow(&mut parent, 6).unwrap(); // a 6-token prompt: one whole block and a partial one
        let mut children: Vec<Vec<u32>> = (0..3).map(|_| bm.fork(&parent)).collect();
        assert_eq!(bm.free_blocks(), 6, "four tables, two blocks");
        assert_eq!(bm.holders(parent[1]), 4);
        // Each writes position 6, in the shared partial block: all but the last holder copy it.
        let mut copies = Vec::new();
        for t in std::iter::once(&mut parent).chain(children.iter_mut()) {
            copies.push(bm.make_writable(t, 6, 7).unwrap());
        }
        let shared = children[2][1];
        assert_eq!(copies.iter().flatten().map(|c| c.src).collect::<Vec<_>>(), vec![shared; 3]);
        assert_eq!(copies[3], None, "the last holder writes in place");
        assert_eq!(bm.holders(shared), 1);
        assert_eq!(bm.holders(parent[0]), 4, "the whole block stays shared");
        assert_eq!(bm.free_blocks(), 3);
        // Growing into a new block copies nothing.
        assert_eq!(bm.make_writable(&mut parent, 8, 9).unwrap(), None);
        // Out of blocks: a copy that cannot be made changes nothing.
        let mut a = bm.fork(&children[0]);
        let mut filler = Vec::new();
        bm.grow(&mut filler, 8).unwrap();
        let before = a.clone();
        assert!(matches!(bm.make_writable(&mut a, 6, 7), Err(Error::CacheFull { needed: 1, free: 0 })));
        assert_eq!(a, before);
        for mut t in [parent, a, filler].into_iter().chain(children) {
            bm.release(&mut t);
        }
        assert_eq!(bm.free_blocks(), 8, "every reference returned");
    }

    #[test]
    fn without_prefix_caching_nothing_is_registered() {
        let mut bm = BlockManager::new(4, 2);
        let mut a = Vec::new();
        bm.grow(&mut a, 4).unwrap();
        bm.register(&a, &[1, 2, 3, 4], 0, 4);
        assert!(bm.take_prefix(&[1, 2, 3, 4], 4).is_empty());
    }
}
