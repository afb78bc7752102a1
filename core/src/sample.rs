//! Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, OpenAI's
//! presence and frequency penalties, seeded RNG.
//!
//! No allocation: top-k and top-p are computed exactly by searching for a probability
//! threshold over the bit patterns of non-negative f32 values (which order like the values),
//! 32 passes over the vocabulary each, instead of sorting a copy. Ties at the threshold are all
//! kept. The same seed and the same logits always give the same token on every target.

use crate::error::{Error, ErrorKind, Result};

/// SplitMix64: tiny, fast, statistically good enough for sampling, identical on all targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub const fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// Sampling parameters. `Default` is greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p` (1 = no limit).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties (repetition, presence, frequency) look at.
    pub repeat_last_n: usize,
    /// RNG seed.
    pub seed: u64,
    /// Keep only tokens whose probability (at temperature) is at least `min_p` times the most
    /// likely one's, after top-k and top-p (0 = off), as llama.cpp's `min_p`.
    pub min_p: f32,
    /// OpenAI's `presence_penalty`: subtracted once from the logit of every token that occurs
    /// in the recent window (0 = off).
    pub presence_penalty: f32,
    /// OpenAI's `frequency_penalty`: subtracted from a token's logit once per occurrence in
    /// the recent window (0 = off).
    pub frequency_penalty: f32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// A sampler: its config and RNG state.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
}

impl Sampler {
    /// A sampler with the given parameters.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for a negative or non-finite temperature, `top_p` outside
    /// `(0, 1]`, `min_p` outside `[0, 1]`, a repetition penalty that is not positive and
    /// finite, or a presence or frequency penalty that is not finite.
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "temperature must be >= 0",
            ));
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "top_p must be in (0, 1]",
            ));
        }
        if !(cfg.repeat_penalty.is_finite() && cfg.repeat_penalty > 0.0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "repeat_penalty must be > 0",
            ));
        }
        if !(cfg.min_p >= 0.0 && cfg.min_p <= 1.0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "min_p must be in [0, 1]",
            ));
        }
        if !(cfg.presence_penalty.is_finite() && cfg.frequency_penalty.is_finite()) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "presence and frequency penalties must be finite",
            ));
        }
        Ok(Sampler {
            cfg,
            rng: Rng::new(cfg.seed),
        })
    }

    /// The parameters.
    pub const fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Pick the next token. `logits` is used as scratch (it is modified); `recent` holds the
    /// tokens generated or read so far (only the last `repeat_last_n` are used).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for empty logits.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "empty logits"));
        }
        if self.cfg.repeat_penalty != 1.0 {
            apply_repeat_penalty(
                logits,
                recent,
                self.cfg.repeat_last_n,
                self.cfg.repeat_penalty,
            );
        }
        if self.cfg.presence_penalty != 0.0 || self.cfg.frequency_penalty != 0.0 {
            apply_presence_frequency_penalty(
                logits,
                recent,
                self.cfg.repeat_last_n,
                self.cfg.presence_penalty,
                self.cfg.frequency_penalty,
            );
        }
        if self.cfg.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        // Probabilities at temperature.
        let inv_t = 1.0 / self.cfg.temperature;
        let max = logits.iter().fold(
            f32::NEG_INFINITY,
            |m, &v| if v.is_nan() { m } else { m.max(v) },
        );
        let mut sum = 0.0f64;
        for v in logits.iter_mut() {
            *v = if v.is_nan() {
                0.0
            } else {
                libm::expf((*v - max) * inv_t)
            };
            sum += *v as f64;
        }
        if sum.partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) || !sum.is_finite() {
            return Ok(argmax(logits));
        }
        // Threshold from top-k.
        let mut thresh = 0u32;
        let k = self.cfg.top_k;
        if k > 0 && k < logits.len() {
            thresh = max_bits_where(logits, 0, |t| {
                logits.iter().filter(|p| p.to_bits() >= t).count() >= k
            });
        }
        // Threshold from top-p, within the top-k set.
        let kept_mass = |t: u32| -> f64 {
            logits
                .iter()
                .filter(|p| p.to_bits() >= t)
                .map(|&p| p as f64)
                .sum()
        };
        if self.cfg.top_p < 1.0 {
            let target = kept_mass(thresh) * self.cfg.top_p as f64;
            thresh = max_bits_where(logits, thresh, |t| kept_mass(t) >= target);
        }
        // min-p: the most likely token has exp(0) = 1 above, so the bound is min_p itself; it
        // never removes the most likely token (min_p <= 1).
        if self.cfg.min_p > 0.0 {
            thresh = thresh.max(self.cfg.min_p.to_bits());
        }
        let total = kept_mass(thresh);
        let r = self.rng.next_f32() as f64 * total;
        let mut acc = 0.0f64;
        let mut last = 0u32;
        for (i, &p) in logits.iter().enumerate() {
            if p.to_bits() >= thresh && p > 0.0 {
                acc += p as f64;
                last = i as u32;
                if acc > r {
                    return Ok(i as u32);
                }
            }
        }
        Ok(last)
    }
}

/// Largest bit pattern `t >= lo` (among non-negative floats) for which `pred(t)` holds, given
/// that `pred` is true at `lo` and monotonically turns false as `t` grows.
fn max_bits_where(p: &[f32], lo: u32, pred: impl Fn(u32) -> bool) -> u32 {
    let mut lo = lo;
    let mut hi = p
        .iter()
        .map(|v| v.to_bits())
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    // Invariant: pred(lo) true, pred(hi) false (nothing is >= hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best as u32
}

/// HF/llama.cpp-style repetition penalty, applied once per distinct recent token.
pub fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], last_n: usize, penalty: f32) {
    let window = &recent[recent.len().saturating_sub(last_n)..];
    for (i, &t) in window.iter().enumerate() {
        if window[..i].contains(&t) {
            continue;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// OpenAI's presence and frequency penalties over the last `last_n` tokens of `recent`:
/// `logit[t] -= frequency * count(t) + presence * (count(t) > 0)`, as llama.cpp applies them.
pub fn apply_presence_frequency_penalty(
    logits: &mut [f32],
    recent: &[u32],
    last_n: usize,
    presence: f32,
    frequency: f32,
) {
    let window = &recent[recent.len().saturating_sub(last_n)..];
    for (i, &t) in window.iter().enumerate() {
        if window[..i].contains(&t) {
            continue;
        }
        // Quadratic in the window, like the repetition penalty: no allocation, and the window
        // is short (64 by default).
        let count = window[i..].iter().filter(|&&x| x == t).count();
        if let Some(l) = logits.get_mut(t as usize) {
            *l -= frequency * count as f32 + presence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f32, k: usize, p: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature: t,
            top_k: k,
            top_p: p,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplerConfig::default()).unwrap();
        let mut l = [0.1, 3.0, -1.0, 2.9];
        assert_eq!(s.sample(&mut l, &[]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        for seed in 0..50 {
            let mut s = Sampler::new(cfg(1.5, 1, 1.0, seed)).unwrap();
            let mut l = [0.1, 3.0, -1.0, 2.9, 2.95];
            assert_eq!(s.sample(&mut l, &[]).unwrap(), 1);
        }
    }

    #[test]
    fn top_k_restricts_support() {
        let mut seen = [0u32; 5];
        let mut s = Sampler::new(cfg(1.0, 2, 1.0, 7)).unwrap();
        for _ in 0..2000 {
            let mut l = [0.0, 1.0, 0.5, 0.9, -3.0];
            seen[s.sample(&mut l, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 0 && seen[3] > 0, "{seen:?}");
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_mass() {
        // probs ~ [0.5, 0.3, 0.2] at T=1 for these logits.
        let l0 = [libm::logf(0.5), libm::logf(0.3), libm::logf(0.2)];
        let mut seen = [0u32; 3];
        let mut s = Sampler::new(cfg(1.0, 0, 0.7, 3)).unwrap();
        for _ in 0..3000 {
            let mut l = l0;
            seen[s.sample(&mut l, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(seen[2], 0, "{seen:?}");
        let frac = seen[0] as f32 / 3000.0;
        assert!((frac - 0.625).abs() < 0.04, "{seen:?}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut s = Sampler::new(cfg(0.8, 40, 0.95, seed)).unwrap();
            let mut out = [0u32; 32];
            for (i, o) in out.iter_mut().enumerate() {
                let mut l: [f32; 16] = core::array::from_fn(|j| libm::sinf((i * 16 + j) as f32));
                *o = s.sample(&mut l, &[]).unwrap();
            }
            out
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn repeat_penalty_once_per_token() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repeat_penalty(&mut l, &[0, 0, 1, 0], 64, 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn presence_frequency_penalty_counts() {
        let mut l = [2.0, -2.0, 1.0];
        apply_presence_frequency_penalty(&mut l, &[0, 0, 1, 0], 64, 0.5, 0.25);
        assert_eq!(l, [2.0 - 0.75 - 0.5, -2.0 - 0.25 - 0.5, 1.0]);
        // Only the window counts.
        let mut l = [0.0, 0.0];
        apply_presence_frequency_penalty(&mut l, &[0, 0, 1], 1, 1.0, 1.0);
        assert_eq!(l, [0.0, -2.0]);
        // Greedy through the sampler sees the penalty.
        let c = SamplerConfig {
            frequency_penalty: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(c).unwrap();
        assert_eq!(s.sample(&mut [1.0, 0.5], &[0]).unwrap(), 1);
    }

    #[test]
    fn min_p_cuts_unlikely_tokens() {
        // At T=1, probabilities relative to the best: 1, e^-1 = 0.37, e^-3 = 0.05.
        let c = SamplerConfig {
            temperature: 1.0,
            min_p: 0.1,
            seed: 5,
            ..Default::default()
        };
        let mut s = Sampler::new(c).unwrap();
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            let mut l = [0.0, -1.0, -3.0];
            seen[s.sample(&mut l, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(seen[2], 0, "{seen:?}");
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        // min_p = 1 keeps only the best (and its ties).
        let mut s = Sampler::new(SamplerConfig { min_p: 1.0, ..c }).unwrap();
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [0.0, -0.01, 0.5], &[]).unwrap(), 2);
        }
    }

    #[test]
    fn bad_params_are_errors() {
        assert!(Sampler::new(cfg(-1.0, 0, 1.0, 0)).is_err());
        assert!(Sampler::new(cfg(1.0, 0, 0.0, 0)).is_err());
        assert!(Sampler::new(cfg(f32::NAN, 0, 1.0, 0)).is_err());
        for bad in [
            SamplerConfig {
                min_p: 1.5,
                ..Default::default()
            },
            SamplerConfig {
                min_p: f32::NAN,
                ..Default::default()
            },
            SamplerConfig {
                presence_penalty: f32::INFINITY,
                ..Default::default()
            },
            SamplerConfig {
                frequency_penalty: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(bad).is_err(), "{bad:?}");
        }
        let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0)).unwrap();
        assert!(s.sample(&mut [], &[]).is_err());
        // NaN and inf logits do not panic.
        let mut l = [f32::NAN, f32::INFINITY, 1.0];
        let _ = s.sample(&mut l, &[]).unwrap();
    }
}
