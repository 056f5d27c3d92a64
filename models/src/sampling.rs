//! Token sampling from logits: classifier-free guidance, temperature, top-k, top-p and a
//! seeded draw, in the order transformers applies them (guidance, temperature, top-k, top-p).

use crate::random::Rng;

/// How tokens are drawn from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Keep only the `top_k` most likely tokens (0 = no limit; 1 = greedy).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (0 or 1 = no limit).
    pub top_p: f32,
    /// Softmax temperature (0 = greedy).
    pub temperature: f32,
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub const GREEDY: Self = Self {
        top_k: 1,
        top_p: 0.0,
        temperature: 1.0,
    };

    /// Whether these parameters reduce to taking the arg-max.
    pub fn is_greedy(&self) -> bool {
        self.top_k == 1 || self.temperature == 0.0
    }
}

/// Combines conditional and unconditional logits: `uncond + (cond - uncond) * scale`.
pub fn apply_guidance(cond: &[f32], uncond: &[f32], scale: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(cond.iter().zip(uncond).map(|(&c, &u)| u + (c - u) * scale));
}

/// The first index of the largest value (torch's `argmax` tie rule).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws tokens with fixed parameters and a seeded generator; one per job.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Scratch (index, probability) pairs reused across draws.
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler whose draws are fixed by `seed`.
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            rng: Rng::new(seed),
            scratch: Vec::new(),
        }
    }

    /// The parameters this sampler uses.
    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// Draws one token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() || logits.len() <= 1 {
            return argmax(logits);
        }
        let temperature = self.params.temperature;
        let candidates = &mut self.scratch;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l / temperature)),
        );
        // Most likely first; ties keep the lower index first, like a stable sort.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let k = self.params.top_k;
        if k > 0 && k < candidates.len() {
            // transformers keeps every token whose logit reaches the k-th largest.
            let kth = candidates[k - 1].1;
            let keep = candidates.iter().take_while(|c| c.1 >= kth).count();
            candidates.truncate(keep.max(1));
        }
        let max = candidates[0].1;
        let mut total = 0.0f64;
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1 as f64;
        }
        let top_p = self.params.top_p as f64;
        if top_p > 0.0 && top_p < 1.0 {
            let mut cumulative = 0.0f64;
            let mut keep = 0;
            for c in candidates.iter() {
                keep += 1;
                cumulative += c.1 as f64 / total;
                if cumulative >= top_p {
                    break;
                }
            }
            candidates.truncate(keep.max(1));
            total = candidates.iter().map(|c| c.1 as f64).sum();
        }
        let mut target = self.rng.uniform() * total;
        for c in candidates.iter() {
            target -= c.1 as f64;
            if target < 0.0 {
                return c.0;
            }
        }
        candidates[candidates.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_matches_the_reference_formula() {
        let mut out = Vec::new();
        apply_guidance(&[1.0, 2.0], &[0.5, 3.0], 3.0, &mut out);
        assert_eq!(out, vec![0.5 + 0.5 * 3.0, 3.0 - 3.0]);
    }

    #[test]
    fn greedy_when_top_k_is_one_or_temperature_zero() {
        let logits = [0.1, 2.0, 2.0, -1.0];
        for params in [
            SamplingParams::GREEDY,
            SamplingParams {
                top_k: 50,
                top_p: 0.9,
                temperature: 0.0,
            },
        ] {
            let mut s = Sampler::new(params, 3);
            assert!((0..20).all(|_| s.sample(&logits) == 1));
        }
    }

    #[test]
    fn top_k_never_draws_outside_the_k_best() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 10) as f32 * 0.1).collect();
        let params = SamplingParams {
            top_k: 10,
            top_p: 0.0,
            temperature: 1.0,
        };
        let mut s = Sampler::new(params, 11);
        // The ten tokens with value 0.9 are indices 9, 19, ..., 99.
        for _ in 0..500 {
            assert_eq!(s.sample(&logits) % 10, 9);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let params = SamplingParams {
            top_k: 0,
            top_p: 0.8,
            temperature: 1.0,
        };
        let mut s = Sampler::new(params, 5);
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t <= 1));
        let zeros = draws.iter().filter(|&&t| t == 0).count() as f64 / 2000.0;
        // renormalised: 0.64 / 0.88 = 0.727
        assert!((zeros - 0.727).abs() < 0.04, "{zeros}");
    }

    #[test]
    fn non_finite_logits_never_panic() {
        let params = SamplingParams {
            top_k: 5,
            top_p: 0.9,
            temperature: 1.0,
        };
        let mut s = Sampler::new(params, 1);
        let token = s.sample(&[f32::NAN, 1.0, f32::NEG_INFINITY, 0.5]);
        assert!(token < 4);
        assert!(s.sample(&[f32::NAN; 8]) < 8);
    }

    #[test]
    fn a_seed_reproduces_its_draws_and_another_seed_differs() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let params = SamplingParams {
            top_k: 0,
            top_p: 0.0,
            temperature: 1.0,
        };
        let run = |seed| {
            let mut s = Sampler::new(params, seed);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
