//! The paged KV cache's block manager: fixed-size blocks handed out from a free list and
//! returned on finish, abort or preemption. Pure bookkeeping; the tensors live in `cache.rs`.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// Hands out KV-cache blocks.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    num_blocks: usize,
    free: VecDeque<u32>,
}

impl BlockManager {
    /// `num_blocks` blocks of `block_size` token slots each.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        BlockManager { block_size, num_blocks, free: (0..num_blocks as u32).collect() }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in all.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks not held by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks in use, 0..1 (`vllm:kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.num_blocks == 0 { 0.0 } else { 1.0 - self.free.len() as f64 / self.num_blocks as f64 }
    }

    /// Blocks a sequence of `tokens` tokens needs.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` so it holds `tokens` tokens; all or nothing.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> Result<()> {
        let needed = self.blocks_for(tokens).saturating_sub(table.len());
        if needed > self.free.len() {
            return Err(Error::CacheFull { needed, free: self.free.len() });
        }
        table.extend(self.free.drain(..needed));
        Ok(())
    }

    /// Returns a sequence's blocks to the free list.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.extend(table.drain(..));
    }

    /// Cache slot of token position `pos` of a sequence with block table `table`.
    pub fn slot(&self, table: &[u32], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
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
        assert_eq!(bm.slot(&a, 17), a[1] as usize * 16 + 1);
        bm.release(&mut a);
        assert_eq!((bm.free_blocks(), bm.usage()), (4, 0.0));
    }
}
