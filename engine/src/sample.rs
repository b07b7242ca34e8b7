//! Token sampling on the device with a seeded host RNG (AVP-ENG-8).
//!
//! Filters follow transformers' order and semantics: temperature, top-k
//! (`logits < k-th largest` removed), top-p (ascending sort, remove tokens
//! whose cumulative probability is `<= 1 - top_p`, always keep the most
//! likely). One uniform number per token comes from [`SplitMix64`], so a seed
//! reproduces the same tokens on any device; the SDK's torch RNG stream is
//! not reproduced (its samples depend on torch's generator internals).

use tch::{Kind, Tensor};

use crate::error::Result;

/// A tiny, well-mixed 64-bit generator (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws one token id (int64 tensor `[1]`) from float32 `logits` `[1, V]`.
pub fn sample(logits: &Tensor, temperature: f64, top_k: usize, top_p: f64, u: f64) -> Result<Tensor> {
    let mut scores = logits.f_div_scalar(temperature)?;
    let vocab = scores.size().last().copied().unwrap_or(0);
    if top_k > 0 && (top_k as i64) < vocab {
        let (vals, _) = scores.f_topk(top_k as i64, -1, true, true)?;
        let kth = vals.f_narrow(-1, top_k as i64 - 1, 1)?;
        scores = scores.f_masked_fill(&scores.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if top_p < 1.0 {
        let (sorted, idx) = scores.f_sort(-1, false)?;
        let cum = sorted.f_softmax(-1, Kind::Float)?.f_cumsum(-1, Kind::Float)?;
        let mut remove = cum.f_le(1.0 - top_p)?;
        // Keep at least the most likely token (the last in ascending order).
        let _ = remove.f_narrow(-1, vocab - 1, 1)?.f_fill_(0)?;
        let mask = remove.f_scatter(-1, &idx, &remove)?;
        scores = scores.f_masked_fill(&mask, f64::NEG_INFINITY)?;
    }
    let probs = scores.f_softmax(-1, Kind::Float)?;
    let cdf = probs.f_cumsum(-1, Kind::Float)?;
    // Inverse-CDF draw: the first index whose cumulative mass exceeds u·total.
    let total = cdf.f_narrow(-1, vocab - 1, 1)?;
    let threshold = total.f_mul_scalar(u)?;
    let below = cdf.f_le_tensor(&threshold)?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)?;
    Ok(below.f_clamp_max(vocab - 1)?)
}
