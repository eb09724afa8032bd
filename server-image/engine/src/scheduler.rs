//! Continuous batching: which sequences run in the next step, and how many of their tokens.
//!
//! Each step, running sequences decode one token each (oldest first); then waiting sequences are
//! admitted in arrival order while `max_num_seqs` and the step's `max_num_batched_tokens` budget
//! allow, a long prompt being prefilled in chunks. When the KV cache has no block for a running
//! sequence, the most recently admitted running sequence is preempted: its blocks are freed and it
//! goes back to the front of the queue, to be recomputed later (vLLM's recompute preemption).
//! With prefix caching, a sequence admitted from the queue starts after the whole blocks of its
//! tokens that the cache already holds. A request for n samples is admitted as one sequence that
//! holds n seats of `max_num_seqs`; once its prompt is computed it is forked into n sequences over
//! the same blocks ([`Scheduler::fork`]), so the prompt is prefilled once. Pure bookkeeping over
//! [`BlockManager`]; no tensors.

use std::collections::{HashMap, VecDeque};

use crate::blocks::{BlockCopy, BlockManager};

/// Limits of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most tokens (prefill + decode) in one step.
    pub max_num_batched_tokens: usize,
}

/// What the scheduler knows of a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeqState {
    /// Prompt plus generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    /// The sequence's cache blocks.
    pub block_table: Vec<u32>,
    /// Sequences still to be forked from this one; each holds a seat from admission on.
    pub forks: usize,
}

/// One sequence's share of a step: run its tokens `start .. start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// Sequence key.
    pub key: u64,
    /// First token to run (= tokens already cached).
    pub start: usize,
    /// Number of tokens to run.
    pub len: usize,
}

/// The plan of one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// Sequences to run, in order.
    pub scheduled: Vec<Scheduled>,
    /// Sequences preempted in this step (their blocks are free again; they wait to be recomputed).
    pub preempted: Vec<u64>,
    /// Sequences longer than the whole cache: removed; the caller fails them.
    pub too_large: Vec<u64>,
    /// Blocks to copy before the step runs: a scheduled sequence writes into a block it shared.
    pub copies: Vec<(u64, BlockCopy)>,
    /// Tokens of the sequences admitted from the queue in this step (`vllm:prefix_cache_queries`).
    pub prefix_queried: usize,
    /// Of those, tokens found in the prefix cache (`vllm:prefix_cache_hits`).
    pub prefix_hits: usize,
}

/// Waiting and running queues, and each sequence's cache state.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    waiting: VecDeque<u64>,
    running: Vec<u64>,
    seqs: HashMap<u64, SeqState>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(cfg: SchedulerConfig) -> Self {
        Scheduler { cfg, waiting: VecDeque::new(), running: Vec::new(), seqs: HashMap::new() }
    }

    /// Queues a new sequence with its prompt.
    pub fn add(&mut self, key: u64, prompt: Vec<u32>) {
        self.add_forking(key, prompt, 0);
    }

    /// Queues a new sequence that will be forked `forks` times once its prompt is computed.
    pub fn add_forking(&mut self, key: u64, prompt: Vec<u32>, forks: usize) {
        self.seqs.insert(key, SeqState { tokens: prompt, forks, ..Default::default() });
        self.waiting.push_back(key);
    }

    /// Starts `child` as a running copy of `parent` sharing all its blocks; it takes one of the
    /// seats `parent` held. Call it between steps, before either grows.
    pub fn fork(&mut self, parent: u64, child: u64, blocks: &mut BlockManager) {
        let Some(p) = self.seqs.get_mut(&parent) else { return };
        p.forks = p.forks.saturating_sub(1);
        let state = SeqState {
            tokens: p.tokens.clone(),
            computed: p.computed,
            block_table: blocks.fork(&p.block_table),
            forks: 0,
        };
        self.seqs.insert(child, state);
        self.running.push(child);
    }

    /// Seats of `max_num_seqs` the running sequences hold (their forks to come included).
    fn seats(&self) -> usize {
        self.running.iter().map(|k| 1 + self.seqs.get(k).map_or(0, |s| s.forks)).sum()
    }

    /// Records that `key` grew by one generated token.
    pub fn append_token(&mut self, key: u64, token: u32) {
        if let Some(s) = self.seqs.get_mut(&key) {
            s.tokens.push(token);
        }
    }

    /// Forgets a sequence (finished or aborted) and frees its blocks.
    pub fn remove(&mut self, key: u64, blocks: &mut BlockManager) {
        self.waiting.retain(|k| *k != key);
        self.running.retain(|k| *k != key);
        if let Some(mut s) = self.seqs.remove(&key) {
            blocks.release(&mut s.block_table);
        }
    }

    /// A sequence's state.
    pub fn state(&self, key: u64) -> Option<&SeqState> {
        self.seqs.get(&key)
    }

    /// Sequences waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences running.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Plans the next step, growing block tables through `blocks`. After the step ran, the caller
    /// reports each scheduled sequence's progress with [`Scheduler::computed`].
    pub fn schedule(&mut self, blocks: &mut BlockManager) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;

        // === running sequences: one decode token each, or the next prefill chunk ===
        // Every key in `running` and `waiting` has its state in `seqs`; one without is skipped.
        let mut i = 0;
        while budget > 0
            && let Some(&key) = self.running.get(i)
        {
            let Some(s) = self.seqs.get(&key) else {
                i += 1;
                continue;
            };
            let len = (s.tokens.len() - s.computed).min(budget);
            if len == 0 {
                i += 1;
                continue;
            }
            let need = s.computed + len;
            loop {
                let Some(s) = self.seqs.get_mut(&key) else {
                    i += 1;
                    break;
                };
                if let Ok(copy) = blocks.make_writable(&mut s.block_table, s.computed, need) {
                    plan.copies.extend(copy.map(|c| (key, c)));
                    plan.scheduled.push(Scheduled { key, start: s.computed, len });
                    budget -= len;
                    i += 1;
                    break;
                }
                // Out of blocks: preempt the newest running sequence (possibly this one, so
                // `running` is not empty here).
                let Some(&victim) = self.running.last() else { break };
                self.preempt(victim, blocks);
                plan.preempted.push(victim);
                plan.scheduled.retain(|s| s.key != victim);
                plan.copies.retain(|(k, _)| *k != victim);
                if victim == key {
                    break;
                }
            }
        }

        // === waiting sequences, in arrival order ===
        let mut seats = self.seats();
        while let Some(&key) = self.waiting.front() {
            let Some(s) = self.seqs.get_mut(&key) else {
                self.waiting.pop_front();
                continue;
            };
            if budget == 0 || seats + 1 + s.forks > self.cfg.max_num_seqs {
                break;
            }
            if blocks.blocks_for(s.tokens.len()) > blocks.num_blocks() {
                self.waiting.pop_front();
                self.seqs.remove(&key);
                plan.too_large.push(key);
                continue;
            }
            // The last token is always computed: its logits give the next token.
            let hits = if s.computed == 0 && blocks.prefix_caching() {
                blocks.take_prefix(&s.tokens, s.tokens.len() - 1)
            } else {
                Vec::new()
            };
            let cached = hits.len() * blocks.block_size();
            let (table_before, computed_before) = (s.block_table.len(), s.computed);
            if s.computed == 0 {
                s.block_table = hits;
                s.computed = cached;
            }
            let len = (s.tokens.len() - s.computed).min(budget);
            // It writes after its prefix hits (whole blocks), and a preempted fork released what it
            // shared: no block to copy.
            if blocks.grow(&mut s.block_table, s.computed + len).is_err() {
                if table_before == 0 {
                    blocks.release(&mut s.block_table);
                }
                s.computed = computed_before;
                break; // wait for blocks to free up; keep arrival order
            }
            if computed_before == 0 && blocks.prefix_caching() {
                plan.prefix_queried += s.tokens.len();
                plan.prefix_hits += cached;
            }
            seats += 1 + s.forks;
            self.waiting.pop_front();
            self.running.push(key);
            plan.scheduled.push(Scheduled { key, start: s.computed, len });
            budget -= len;
        }
        plan
    }

    /// Records that `key` now has `computed` tokens cached (registering its whole blocks for
    /// prefix caching).
    pub fn computed(&mut self, key: u64, computed: usize, blocks: &mut BlockManager) {
        if let Some(s) = self.seqs.get_mut(&key) {
            blocks.register(&s.block_table, &s.tokens, s.computed, computed);
            s.computed = computed;
        }
    }

    fn preempt(&mut self, key: u64, blocks: &mut BlockManager) {
        self.running.retain(|k| *k != key);
        if let Some(s) = self.seqs.get_mut(&key) {
            blocks.release(&mut s.block_table);
            s.computed = 0;
        }
        self.waiting.push_front(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(max_seqs: usize, max_tokens: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig { max_num_seqs: max_seqs, max_num_batched_tokens: max_tokens })
    }

    fn run(s: &mut Scheduler, bm: &mut BlockManager, plan: &StepPlan) {
        for p in &plan.scheduled {
            s.computed(p.key, p.start + p.len, bm);
            if p.start + p.len == s.state(p.key).unwrap().tokens.len() {
                s.append_token(p.key, 7); // a token was sampled
            }
        }
    }

    fn prompt(n: usize) -> Vec<u32> {
        (1..=n as u32).collect()
    }

    #[test]
    fn a_new_request_joins_the_running_batch_at_the_next_step() {
        let mut bm = BlockManager::new(64, 4);
        let mut s = sched(8, 64);
        s.add(1, prompt(5));
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled, vec![Scheduled { key: 1, start: 0, len: 5 }]);
        run(&mut s, &mut bm, &p);
        s.add(2, prompt(3));
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled, vec![Scheduled { key: 1, start: 5, len: 1 }, Scheduled { key: 2, start: 0, len: 3 }]);
    }

    #[test]
    fn budgets_limit_sequences_and_tokens_and_long_prompts_are_chunked() {
        let mut bm = BlockManager::new(64, 4);
        let mut s = sched(2, 10);
        s.add(1, prompt(7));
        s.add(2, prompt(7));
        s.add(3, prompt(1));
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled, vec![Scheduled { key: 1, start: 0, len: 7 }, Scheduled { key: 2, start: 0, len: 3 }]);
        run(&mut s, &mut bm, &p);
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled, vec![Scheduled { key: 1, start: 7, len: 1 }, Scheduled { key: 2, start: 3, len: 4 }]);
        assert_eq!(s.num_waiting(), 1, "max_num_seqs keeps the third waiting");
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_recomputes_it_later() {
        let mut bm = BlockManager::new(4, 2);
        let mut s = sched(8, 64);
        s.add(1, prompt(4));
        s.add(2, prompt(4));
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled.len(), 2);
        assert_eq!(bm.free_blocks(), 0);
        run(&mut s, &mut bm, &p);
        // Both now need a fifth slot: sequence 2 (newest) is preempted so 1 can go on.
        let p = s.schedule(&mut bm);
        assert_eq!(p.preempted, vec![2]);
        assert_eq!(p.scheduled, vec![Scheduled { key: 1, start: 4, len: 1 }]);
        assert_eq!(s.state(2).unwrap().computed, 0);
        s.remove(1, &mut bm);
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled, vec![Scheduled { key: 2, start: 0, len: 5 }], "recomputed: prompt and generated token");
    }

    #[test]
    fn a_repeated_prompt_starts_after_its_cached_blocks() {
        let mut bm = BlockManager::new(16, 4);
        bm.set_prefix_caching(true);
        let mut s = sched(8, 64);
        s.add(1, prompt(10));
        let p = s.schedule(&mut bm);
        assert_eq!((p.prefix_queried, p.prefix_hits), (10, 0));
        run(&mut s, &mut bm, &p);
        s.add(2, prompt(10));
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled[1], Scheduled { key: 2, start: 8, len: 2 }, "two whole blocks found");
        assert_eq!((p.prefix_queried, p.prefix_hits), (10, 8));
        assert_eq!(s.state(2).unwrap().block_table[..2], s.state(1).unwrap().block_table[..2]);
        // A prompt of exactly two blocks still computes its last token.
        s.add(3, prompt(8));
        let p = s.schedule(&mut bm);
        assert_eq!(p.scheduled.last(), Some(&Scheduled { key: 3, start: 4, len: 4 }));
    }

    #[test]
    fn a_forking_sequence_holds_its_seats_and_its_forks_share_the_prompt() {
        let mut bm = BlockManager::new(16, 4);
        let mut s = sched(4, 64);
        s.add_forking(1, prompt(6), 2);
        s.add(2, prompt(3));
        s.add(3, prompt(3));
        let p = s.schedule(&mut bm);
        // Three seats for 1 and its forks, one for 2; 3 waits.
        assert_eq!(p.scheduled, vec![Scheduled { key: 1, start: 0, len: 6 }, Scheduled { key: 2, start: 0, len: 3 }]);
        assert_eq!(s.num_waiting(), 1);
        for p in &p.scheduled {
            s.computed(p.key, p.start + p.len, &mut bm);
        }
        s.fork(1, 10, &mut bm);
        s.fork(1, 11, &mut bm);
        assert_eq!(s.state(1).unwrap().forks, 0);
        assert_eq!(s.state(10).unwrap().block_table, s.state(1).unwrap().block_table);
        assert_eq!(bm.free_blocks(), 16 - 2 - 1, "the prompt's two blocks are held once");
        for k in [1, 10, 11, 2] {
            s.append_token(k, 7);
        }
        let p = s.schedule(&mut bm);
        let at6 = |key| Scheduled { key, start: 6, len: 1 };
        assert_eq!(p.scheduled, vec![at6(1), Scheduled { key: 2, start: 3, len: 1 }, at6(10), at6(11)]);
        assert_eq!(s.num_waiting(), 1, "the forks took the seats held for them");
        // Position 6 lies in the shared partial block: 1 and 10 copy it, 11 writes it in place.
        let shared = s.state(11).unwrap().block_table[1];
        assert_eq!(p.copies.iter().map(|(k, c)| (*k, c.src)).collect::<Vec<_>>(), vec![(1, shared), (10, shared)]);
        assert_eq!(s.state(1).unwrap().block_table[0], s.state(11).unwrap().block_table[0], "whole block shared");
        assert_ne!(s.state(1).unwrap().block_table[1], shared);
        for k in [1, 10, 11, 2, 3] {
            s.remove(k, &mut bm);
        }
        assert_eq!(bm.free_blocks(), 16);
    }

    #[test]
    fn a_sequence_larger_than_the_cache_is_refused() {
        let mut bm = BlockManager::new(2, 2);
        let mut s = sched(8, 64);
        s.add(1, prompt(9));
        let p = s.schedule(&mut bm);
        assert_eq!(p.too_large, vec![1]);
        assert!(s.is_idle());
    }
}
