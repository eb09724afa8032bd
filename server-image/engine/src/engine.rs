//! The engine: one thread owning the model and the KV cache, running steps while any request is
//! queued or running. Requests come in through [`EngineHandle::submit`] and stream their tokens
//! back; dropping a [`RequestStream`] (a client that went away) aborts the sequence and frees its
//! blocks at the next step.
//!
//! A request for n samples runs as one sequence until its prompt is computed; the step that
//! yields the prompt's last logits forks it into n sequences over the same KV blocks
//! ([`Scheduler::fork`]), each sampling its first token from those logits with its own seed. The
//! prompt is prefilled once, whatever n.
//!
//! A request with a grammar ([`crate::guided`]) carries a [`Guide`] per sequence. The masks of the
//! sequences about to sample are computed on a second thread while the model's forward pass runs;
//! each sample's logits are masked before sampling, the token is committed to the guide after,
//! and a complete grammar ends the sequence (`stop`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tmpsc;

use crate::error::{Error, Result};
use crate::guided::{Guide, Mask, apply_mask};
use crate::metrics::EngineMetrics;
use crate::model::{KvCache, Model, StepSeq};
use crate::sampling::{Sampler, SamplingParams, TokenLogprobs};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Why a sequence ended, as OpenAI and vLLM name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the model's context length.
    Length,
    /// Aborted: client gone, shutdown, or an engine error.
    Abort,
}

impl FinishReason {
    /// The wire name (`stop`, `length`, `abort`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// A validated request, ready for the engine.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Prompt token ids (with BOS where the tokenizer adds it).
    pub prompt: Vec<u32>,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
    /// Token ids that end generation, besides the model's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// Samples of the prompt to generate (OpenAI's `n`), each streamed with its index; sample `i`
    /// draws with seed `sampling.seed + i`.
    pub n: usize,
    /// The grammar its output must follow (structured output), in its initial state.
    pub guide: Option<Guide>,
    /// When the request arrived (for queue time and TTFT).
    pub arrival: Instant,
}

/// What a request's stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (possibly empty while a multi-byte character is incomplete) for one new token.
    Token {
        /// Which of the request's samples (0..n).
        index: usize,
        /// The token id.
        id: u32,
        /// Text it completes.
        text: String,
        /// Its log-probabilities, when the request asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    /// The last event.
    Finished {
        /// Which of the request's samples (0..n); a request ends after all n finished.
        index: usize,
        /// Why it ended.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
        /// Set when the engine failed the request.
        error: Option<String>,
    },
}

/// Limits and sizes of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Scheduling limits.
    pub scheduler: SchedulerConfig,
    /// Longest prompt + completion.
    pub max_model_len: usize,
    /// Most requests waiting before new ones are refused.
    pub max_waiting: usize,
    /// EOS ids from generation_config.json.
    pub eos_token_ids: Vec<u32>,
}

enum Command {
    /// A request; its samples have the keys `key .. key + n`.
    Submit(u64, Box<EngineRequest>, tmpsc::UnboundedSender<Event>),
    /// Aborts the samples `key .. key + n`.
    Abort(u64, usize),
}

/// State shared between the engine thread and its handles.
#[derive(Default)]
struct Shared {
    waiting: AtomicUsize,
    next_key: AtomicUsize,
    stopped: AtomicBool,
}

/// Submits requests to a running engine; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    max_waiting: usize,
    max_num_seqs: usize,
}

/// Refusal of a submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full: retry later.
    #[error("the engine's waiting queue is full")]
    QueueFull,
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
    /// `n` is 0 or more than the sequences that may run at once.
    #[error("n must be between 1 and {max}")]
    TooManySamples {
        /// The largest `n` this engine runs (`max_num_seqs`).
        max: usize,
    },
}

/// A submitted request's events; dropping it aborts the request.
pub struct RequestStream {
    rx: tmpsc::UnboundedReceiver<Event>,
    key: u64,
    n: usize,
    tx: mpsc::Sender<Command>,
    /// Samples finished so far.
    finished: usize,
    /// The engine dropped the channel (it stopped).
    closed: bool,
}

impl RequestStream {
    /// The next event of any sample; `None` once all have finished (or the engine stopped).
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished == self.n || self.closed {
            return None;
        }
        let ev = self.rx.recv().await;
        match ev {
            Some(Event::Finished { .. }) => self.finished += 1,
            None => self.closed = true,
            Some(Event::Token { .. }) => {}
        }
        ev
    }

    /// Samples the request asked for.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether every sample has finished (rather than the engine stopping first).
    pub fn finished(&self) -> bool {
        self.finished == self.n
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if self.finished < self.n && !self.closed {
            let _ = self.tx.send(Command::Abort(self.key, self.n));
        }
    }
}

impl EngineHandle {
    /// Queues a request; refuses it when `max_waiting` requests already wait, and an `n` the
    /// scheduler could never seat (its n samples run at once).
    pub fn submit(&self, req: EngineRequest) -> Result<RequestStream, SubmitError> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(SubmitError::Stopped);
        }
        let n = req.n;
        if n == 0 || n > self.max_num_seqs {
            return Err(SubmitError::TooManySamples { max: self.max_num_seqs });
        }
        if self.shared.waiting.load(Ordering::Relaxed) >= self.max_waiting {
            return Err(SubmitError::QueueFull);
        }
        let key = self.shared.next_key.fetch_add(n, Ordering::Relaxed) as u64;
        let (etx, erx) = tmpsc::unbounded_channel();
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Command::Submit(key, Box::new(req), etx)).map_err(|_| SubmitError::Stopped)?;
        Ok(RequestStream { rx: erx, key, n, tx: self.tx.clone(), finished: 0, closed: false })
    }

    /// The largest `n` a request may ask for.
    pub fn max_samples(&self) -> usize {
        self.max_num_seqs
    }

    /// Whether the engine thread is alive.
    pub fn is_alive(&self) -> bool {
        !self.shared.stopped.load(Ordering::Relaxed)
    }

    /// Resolves once the engine thread has ended (returned or panicked).
    pub async fn stopped(&self) {
        while self.is_alive() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

struct Seq {
    req: EngineRequest,
    /// Which sample of its request; request-level metrics are recorded by sample 0 alone.
    index: usize,
    /// Samples still to fork from this one when its prompt is computed.
    forks: usize,
    tokens: Vec<u32>,
    sampler: Sampler,
    detok: IncrementalDecoder,
    stops: StopMatcher,
    /// Where the sequence stands in its grammar, if it has one.
    guide: Option<Guide>,
    tx: tmpsc::UnboundedSender<Event>,
    scheduled_at: Option<Instant>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.req.prompt.len()
    }
}

/// Starts the engine thread over a loaded model and cache.
pub fn spawn(
    model: Model,
    cache: KvCache,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
    metrics: Option<EngineMetrics>,
) -> Result<EngineHandle> {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let handle = EngineHandle {
        tx,
        shared: shared.clone(),
        max_waiting: cfg.max_waiting,
        max_num_seqs: cfg.scheduler.max_num_seqs,
    };
    std::thread::Builder::new()
        .name("llmserve-engine".into())
        .spawn(move || {
            let mut core = Core {
                model,
                cache,
                tokenizer,
                sched: Scheduler::new(cfg.scheduler),
                cfg,
                metrics,
                seqs: HashMap::new(),
                shared: shared.clone(),
            };
            core.run(rx);
        })
        .map_err(|e| Error::Load(format!("cannot start the engine thread: {e}")))?;
    Ok(handle)
}

/// When the engine thread ends, whether its loop returned or panicked, the engine is marked stopped
/// and its gauges idle first; only then are the fields dropped, closing the event channels of the
/// requests in flight, whose handlers answer with a 5xx. So no client learns of the failure before
/// `/health` does.
impl Drop for Core {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.waiting.store(0, Ordering::SeqCst);
        if let Some(m) = &self.metrics {
            m.running.set(0.0);
            m.waiting.set(0.0);
            m.kv_usage.set(0.0);
            m.batch_size.set(0.0);
        }
        if std::thread::panicking() {
            tracing::error!("the engine thread panicked; this replica can serve no more requests");
        }
    }
}

/// Test-only fault injection: `LLMSERVE_FAULT_ENGINE_PANIC_AFTER_STEPS=N` makes the engine thread
/// panic after N steps. Honoured by debug builds only; a release build ignores it.
fn fault_panic_after_steps() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("LLMSERVE_FAULT_ENGINE_PANIC_AFTER_STEPS").ok()?.parse().ok()
}

struct Core {
    model: Model,
    cache: KvCache,
    tokenizer: Arc<Tokenizer>,
    sched: Scheduler,
    cfg: EngineConfig,
    metrics: Option<EngineMetrics>,
    seqs: HashMap<u64, Seq>,
    shared: Arc<Shared>,
}

impl Core {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let fault_after = fault_panic_after_steps();
        let mut steps = 0u64;
        loop {
            if self.sched.is_idle() {
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) if self.sched.is_idle() => return,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            }
            steps += 1;
            #[allow(clippy::panic)] // the fault injected on purpose by tests (debug builds only)
            if fault_after.is_some_and(|n| steps > n) {
                panic!("fault injected by LLMSERVE_FAULT_ENGINE_PANIC_AFTER_STEPS after {} steps", steps - 1);
            }
            if let Err(e) = self.step() {
                // A failed step fails every sequence in flight, never the process.
                let keys: Vec<u64> = self.seqs.keys().copied().collect();
                for k in keys {
                    self.finish(k, FinishReason::Abort, Some(e.to_string()));
                }
            }
            self.publish_gauges();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(key, req, tx) => {
                let mut req = *req;
                let guide = req.guide.take();
                let detok = IncrementalDecoder::new(&req.prompt);
                if let Some(m) = &self.metrics {
                    m.max_tokens.observe(req.max_tokens as f64);
                    m.n.observe(req.n as f64);
                }
                let forks = req.n.saturating_sub(1);
                let seq = Seq {
                    index: 0,
                    forks,
                    tokens: req.prompt.clone(),
                    sampler: Sampler::new(req.sampling.clone()),
                    detok,
                    stops: StopMatcher::new(&req.stop),
                    guide,
                    tx,
                    scheduled_at: None,
                    first_token_at: None,
                    last_token_at: None,
                    req,
                };
                self.sched.add_forking(key, seq.tokens.clone(), forks);
                self.seqs.insert(key, seq);
            }
            Command::Abort(key, n) => {
                for key in key..key + n as u64 {
                    if self.seqs.contains_key(&key) {
                        self.finish(key, FinishReason::Abort, None);
                    }
                }
            }
        }
    }

    fn step(&mut self) -> Result<()> {
        let plan = self.sched.schedule(&mut self.cache.blocks);
        for key in plan.too_large {
            let msg = "the sequence needs more KV-cache blocks than the engine has".to_string();
            self.seqs.get(&key).map(|s| {
                s.tx.send(Event::Finished {
                    index: s.index,
                    reason: FinishReason::Abort,
                    prompt_tokens: s.req.prompt.len(),
                    completion_tokens: 0,
                    error: Some(msg),
                })
            });
            self.seqs.remove(&key);
        }
        if let Some(m) = &self.metrics {
            m.preemptions.inc_by(plan.preempted.len() as u64);
            m.prefix_queries.inc_by(plan.prefix_queried as u64);
            m.prefix_hits.inc_by(plan.prefix_hits as u64);
        }
        if plan.scheduled.is_empty() {
            if !self.sched.is_idle() && self.sched.num_running() == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return Ok(());
        }
        let now = Instant::now();
        for s in &plan.scheduled {
            let Some(seq) = self.seqs.get_mut(&s.key) else { continue };
            if seq.scheduled_at.is_none() {
                seq.scheduled_at = Some(now);
                if let Some(m) = &self.metrics {
                    m.queue.observe((now - seq.req.arrival).as_secs_f64());
                }
            }
        }
        // The guides of the sequences about to sample, out of their sequences while the model
        // borrows the tokens.
        let mut guides: Vec<(u64, Guide)> = plan
            .scheduled
            .iter()
            .filter_map(|s| {
                let seq = self.seqs.get_mut(&s.key)?;
                if s.start + s.len < seq.tokens.len() {
                    return None; // a prefill chunk samples nothing
                }
                seq.guide.take().map(|g| (s.key, g))
            })
            .collect();
        let steps: Vec<StepSeq<'_>> = plan
            .scheduled
            .iter()
            .map(|s| {
                let tokens = self.seqs.get(&s.key).and_then(|seq| seq.tokens.get(s.start..s.start + s.len));
                let state = self.sched.state(s.key);
                match (tokens, state) {
                    (Some(tokens), Some(state)) => {
                        Ok(StepSeq { tokens, start: s.start, block_table: &state.block_table })
                    }
                    _ => Err(Error::Invalid(format!("scheduled sequence {} has no state", s.key))),
                }
            })
            .collect::<Result<_>>()?;
        let copies: Vec<_> = plan.copies.iter().map(|(_, c)| *c).collect();
        self.cache.copy_blocks(&copies)?;
        let (logits, masks) = std::thread::scope(|scope| {
            let masker = (!guides.is_empty()).then(|| scope.spawn(|| compute_masks(&mut guides)));
            let logits = self.model.forward(&steps, &self.cache).and_then(|t| Ok(t.to_vec2::<f32>()?));
            let forward_done = Instant::now();
            let masks = masker.map(|m| m.join()).transpose();
            if let Ok(Some((m, compute))) = &masks {
                // What the masks cost, and how much of it the forward pass did not hide.
                let (compute_us, waited_us) = (compute.as_micros(), forward_done.elapsed().as_micros());
                tracing::debug!(masks = m.len(), compute_us, waited_us, "structured-output masks");
            }
            (logits, masks)
        });
        drop(steps);
        for (key, guide) in guides {
            if let Some(seq) = self.seqs.get_mut(&key) {
                seq.guide = Some(guide);
            }
        }
        let logits = logits?;
        let mut masks = match masks {
            Ok(masks) => masks.map(|(m, _)| m).unwrap_or_default(),
            Err(_) => return Err(Error::Invalid("the structured-output mask thread panicked".into())),
        };
        let total: usize = plan.scheduled.iter().map(|s| s.len).sum();
        if let Some(m) = &self.metrics {
            m.iteration_tokens.observe(total as f64);
            m.batch_size.set(plan.scheduled.len() as f64);
        }
        let done_at = Instant::now();
        for (s, row) in plan.scheduled.iter().zip(logits) {
            let computed = s.start + s.len;
            self.sched.computed(s.key, computed, &mut self.cache.blocks);
            let Some(seq) = self.seqs.get(&s.key) else { continue };
            if computed < seq.tokens.len() {
                continue; // a prefill chunk; no token yet
            }
            let mask = masks.remove(&s.key);
            for child in self.fork(s.key) {
                self.advance(child, row.clone(), mask.as_ref(), done_at)?;
            }
            self.advance(s.key, row, mask.as_ref(), done_at)?;
        }
        Ok(())
    }

    /// Forks the samples still owed by `key`, whose prompt is now computed: each starts over the
    /// same blocks and the same prompt, with the seed of its index. Returns their keys.
    fn fork(&mut self, key: u64) -> Vec<u64> {
        let Some(parent) = self.seqs.get_mut(&key) else { return Vec::new() };
        let forks = std::mem::take(&mut parent.forks);
        let mut children = Vec::with_capacity(forks);
        for index in 1..=forks {
            let Some(parent) = self.seqs.get(&key) else { break };
            let mut req = parent.req.clone();
            req.sampling.seed = req.sampling.seed.wrapping_add(index as u64);
            let child = Seq {
                index,
                forks: 0,
                tokens: parent.tokens.clone(),
                sampler: Sampler::new(req.sampling.clone()),
                detok: parent.detok.clone(),
                stops: StopMatcher::new(&req.stop),
                // The parent has sampled nothing yet: every sample starts where it stands.
                guide: parent.guide.clone(),
                tx: parent.tx.clone(),
                scheduled_at: parent.scheduled_at,
                first_token_at: None,
                last_token_at: None,
                req,
            };
            let child_key = key + index as u64;
            self.sched.fork(key, child_key, &mut self.cache.blocks);
            self.seqs.insert(child_key, child);
            children.push(child_key);
        }
        children
    }

    /// Samples `key`'s next token from `row`, the logits of its last token, with the tokens its
    /// grammar forbids banned by `mask`, and streams it; finishes the sequence on a stop, its
    /// grammar's end or its length limit.
    fn advance(
        &mut self,
        key: u64,
        mut row: Vec<f32>,
        mask: Option<&std::result::Result<Mask, String>>,
        done_at: Instant,
    ) -> Result<()> {
        let Some(seq) = self.seqs.get_mut(&key) else { return Ok(()) };
        match mask {
            Some(Err(e)) => {
                let msg = format!("structured output failed: {e}");
                self.finish(key, FinishReason::Abort, Some(msg));
                return Ok(());
            }
            // Nothing the grammar allows is left (it cannot happen with a vocabulary of all bytes).
            Some(Ok(mask)) if !apply_mask(mask, &mut row) => {
                self.finish(key, FinishReason::Stop, None);
                return Ok(());
            }
            _ => {}
        }
        let (next, logprobs) =
            seq.sampler.sample_with_logprobs(&mut row, seq.tokens.get(seq.req.prompt.len()..).unwrap_or_default());
        let grammar_done = match seq.guide.as_mut().map(|g| g.commit(next).map(|()| g.is_done())) {
            Some(Err(e)) => {
                let msg = format!("structured output failed: {e}");
                self.finish(key, FinishReason::Abort, Some(msg));
                return Ok(());
            }
            Some(Ok(done)) => done,
            None => false,
        };
        seq.tokens.push(next);
        self.sched.append_token(key, next);
        if let Some(m) = &self.metrics {
            m.generation_tokens.inc();
            match seq.last_token_at {
                // Counted once per request, when its prefill is done: neither prefix-cache hits,
                // recomputation after preemption, nor the n samples change what the client sent.
                None if seq.index == 0 => {
                    m.prompt_tokens.inc_by(seq.req.prompt.len() as u64);
                    m.ttft.observe((done_at - seq.req.arrival).as_secs_f64())
                }
                None => {}
                Some(t) => m.itl.observe((done_at - t).as_secs_f64()),
            }
        }
        seq.first_token_at.get_or_insert(done_at);
        seq.last_token_at = Some(done_at);
        let is_eos = !seq.req.ignore_eos && self.cfg.eos_token_ids.contains(&next);
        let is_stop_id = seq.req.stop_token_ids.contains(&next);
        let mut finish = None;
        let text = if is_eos || is_stop_id {
            finish = Some(FinishReason::Stop);
            seq.stops.flush() // text held for a stop string that never came
        } else {
            let piece = seq.detok.push(&self.tokenizer, next)?.unwrap_or_default();
            // A stop string ends the output where it begins; it may span pieces.
            let released = seq.stops.push(&piece);
            let mut text = released.text;
            if released.stopped {
                finish = Some(FinishReason::Stop);
            } else if grammar_done {
                finish = Some(FinishReason::Stop);
                text.push_str(&seq.stops.flush());
            } else if seq.generated() >= seq.req.max_tokens || seq.tokens.len() >= self.cfg.max_model_len {
                finish = Some(FinishReason::Length);
                text.push_str(&seq.stops.flush());
            }
            text
        };
        // EOS and stop ids are not output: they send only text still held back, if any.
        let silent = (is_eos || is_stop_id) && text.is_empty();
        if !silent && seq.tx.send(Event::Token { index: seq.index, id: next, text, logprobs }).is_err() {
            finish = Some(FinishReason::Abort); // the client went away
        }
        if let Some(reason) = finish {
            self.finish(key, reason, None);
        }
        Ok(())
    }

    fn finish(&mut self, key: u64, reason: FinishReason, error: Option<String>) {
        self.sched.remove(key, &mut self.cache.blocks);
        let Some(seq) = self.seqs.remove(&key) else { return };
        let completion = seq.generated();
        // Metrics first: a client that has its answer must find it counted.
        if let Some(m) = &self.metrics {
            let now = Instant::now();
            m.success.with_label_values(&[reason.as_str()]).inc();
            m.e2e.observe((now - seq.req.arrival).as_secs_f64());
            m.generation_len.observe(completion as f64);
            // What the prompt cost is the request's, once; what each sample generated is its own.
            if seq.index == 0 {
                m.prompt_len.observe(seq.req.prompt.len() as f64);
            }
            if let Some(sched) = seq.scheduled_at {
                m.inference.observe((now - sched).as_secs_f64());
                if let Some(first) = seq.first_token_at {
                    if seq.index == 0 {
                        m.prefill.observe((first - sched).as_secs_f64());
                    }
                    m.decode.observe((now - first).as_secs_f64());
                }
            }
            if let (Some(first), Some(last)) = (seq.first_token_at, seq.last_token_at)
                && completion > 1
            {
                m.tpot.observe((last - first).as_secs_f64() / (completion - 1) as f64);
            }
        }
        // The sequence's blocks are free and it no longer runs: the gauges say so before the answer.
        self.publish_gauges();
        let _ = seq.tx.send(Event::Finished {
            index: seq.index,
            reason,
            prompt_tokens: seq.req.prompt.len(),
            completion_tokens: completion,
            error,
        });
    }

    /// The truth about queue lengths, after every loop; `submit` only adds to `waiting` between
    /// two loops so the queue limit also counts requests not yet received.
    fn publish_gauges(&self) {
        let running = self.seqs.values().filter(|s| s.scheduled_at.is_some()).count();
        self.shared.waiting.store(self.seqs.len() - running, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.running.set(running as f64);
            m.waiting.set((self.seqs.len() - running) as f64);
            m.kv_usage.set(self.cache.blocks.usage());
            if self.sched.is_idle() {
                m.batch_size.set(0.0);
            }
        }
    }
}

/// The masks of `guides`, keyed by sequence, and the time they took.
fn compute_masks(guides: &mut [(u64, Guide)]) -> (HashMap<u64, std::result::Result<Mask, String>>, Duration) {
    let start = Instant::now();
    let masks = guides.iter_mut().map(|(key, g)| (*key, g.mask())).collect();
    (masks, start.elapsed())
}
