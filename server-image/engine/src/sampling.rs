//! Token sampling: greedy, temperature, top-k, top-p, presence and frequency penalties, logit
//! bias, stop tokens; seeded for reproducibility.

use std::collections::HashMap;

/// How one sequence picks its next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass kept, in (0, 1].
    pub top_p: f32,
    /// Most candidates kept; 0 keeps all.
    pub top_k: usize,
    /// RNG seed; requests without one get a fresh seed.
    pub seed: u64,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens before choosing (OpenAI's `logit_bias`: -100 bans a
    /// token, 100 all but forces it), greedy decoding included.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report the chosen token's log-probability and this many most likely alternatives
    /// (`None`: report nothing).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
}

/// The log-probabilities of one sampled token, from the distribution the sampler chose from: the
/// logits after penalties, logit bias and temperature (a temperature of 0 counts as 1), before
/// top-k and top-p truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities of `logits` scaled by `1 / temperature`: the chosen token's and the `top`
/// most likely.
fn logprobs_of(logits: &[f32], temperature: f32, chosen: u32, top: usize) -> TokenLogprobs {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l / t));
    let log_total = logits.iter().map(|&l| (l / t - max).exp()).sum::<f32>().ln() + max;
    let lp = |id: u32| logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l / t - log_total);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            let v = l / t;
            if best.len() < top || best.last().is_some_and(|&(_, w)| v > w) {
                let at = best.partition_point(|&(_, w)| w >= v);
                best.insert(at, (i as u32, v));
                best.truncate(top);
            }
        }
    }
    TokenLogprobs { logprob: lp(chosen), top: best.into_iter().map(|(i, v)| (i, v - log_total)).collect() }
}

/// A seeded sampler for one sequence (SplitMix64: small, fast, reproducible across platforms).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let state = params.seed ^ 0x9E37_79B9_7F4A_7C15;
        Sampler { params, state }
    }

    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks the next token from `logits`, given the tokens generated so far, with its
    /// log-probabilities when the parameters ask for them.
    pub fn sample_with_logprobs(&mut self, logits: &mut [f32], generated: &[u32]) -> (u32, Option<TokenLogprobs>) {
        let token = self.sample(logits, generated);
        // `sample` leaves the penalties and bias applied to `logits`: the distribution it drew from.
        let logprobs = self.params.logprobs.map(|top| logprobs_of(logits, self.params.temperature, token, top));
        (token, logprobs)
    }

    /// Picks the next token from `logits`, given the tokens generated so far.
    pub fn sample(&mut self, logits: &mut [f32], generated: &[u32]) -> u32 {
        let p = &self.params;
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in generated {
                *counts.entry(t).or_default() += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / p.temperature)).collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        // Sorted: the first candidate has the largest logit. No logits at all: token 0, as `argmax`.
        let Some(&(_, max)) = cand.first() else { return 0 };
        let mut total = 0.0f32;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                mass += c.1 / total;
                if mass >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            total = cand.iter().map(|c| c.1).sum();
        }
        let mut r = self.next_f32() * total;
        for c in &cand {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        cand.last().map(|c| c.0).unwrap_or(0)
    }
}

/// Index of the largest logit (the first on ties, as llama2.c does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut it = logits.iter().enumerate();
    let Some((_, &first)) = it.next() else { return 0 };
    let (best, _) = it.fold((0, first), |(best, max), (i, &l)| if l > max { (i, l) } else { (best, max) });
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn penalties_change_the_choice() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, presence_penalty: 2.0, ..Default::default() });
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let p = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
        assert_eq!(Sampler::new(p).sample(&mut [0.0, 1.0, 5.0, 2.0], &[]), 2);
        let p = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        let logits = [0.5f32; 64];
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "uniform logits give varied tokens");
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, seed: 3, ..Default::default() };
        let mut s = Sampler::new(p);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [10.0, 0.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens_greedy_or_not() {
        let logits = [0.1f32, 3.0, 0.2, 0.3];
        let mut banned = Sampler::new(SamplingParams { logit_bias: vec![(1, -100.0)], ..SamplingParams::greedy() });
        assert_eq!(banned.sample(&mut logits.clone(), &[]), 3, "the argmax banned, the next one wins");
        let forced = SamplingParams { temperature: 1.0, seed: 7, logit_bias: vec![(2, 100.0)], ..Default::default() };
        let mut s = Sampler::new(forced);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 2);
        }
        let mut out_of_range =
            Sampler::new(SamplingParams { logit_bias: vec![(99, 100.0)], ..SamplingParams::greedy() });
        assert_eq!(out_of_range.sample(&mut logits.clone(), &[]), 1, "ids past the logits are ignored");
    }

    #[test]
    fn logprobs_come_from_the_distribution_sampled() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        let params = SamplingParams { logprobs: Some(2), ..SamplingParams::greedy() };
        let (t, lp) = Sampler::new(params).sample_with_logprobs(&mut logits.clone(), &[]);
        let lp = lp.unwrap();
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert_eq!(t, 1);
        assert!((lp.logprob - (3.0f32.exp() / total).ln()).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2], "most likely first");
        assert!((lp.top[1].1 - (2.0f32.exp() / total).ln()).abs() < 1e-5);
        // Temperature 2 flattens the distribution; a bias moves it.
        let params = SamplingParams {
            temperature: 2.0,
            seed: 3,
            logprobs: Some(0),
            logit_bias: vec![(3, 5.0)],
            ..Default::default()
        };
        let (t, lp) = Sampler::new(params).sample_with_logprobs(&mut logits.clone(), &[]);
        let scaled = [0.5f32, 1.5, 1.0, 2.5];
        let total: f32 = scaled.iter().map(|l| l.exp()).sum();
        let lp = lp.unwrap();
        assert!((lp.logprob - (scaled[t as usize].exp() / total).ln()).abs() < 1e-5);
        assert!(lp.top.is_empty());
        let none = Sampler::new(SamplingParams::greedy()).sample_with_logprobs(&mut logits.clone(), &[]);
        assert_eq!(none, (1, None));
    }
}
