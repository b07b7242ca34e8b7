//! Token sampling on the device with a seeded host RNG (AVP-ENG-8).
//!
//! Filters follow transformers' order and semantics: temperature, top-k
//! (`logits < k-th largest` removed), top-p (ascending sort, remove tokens
//! whose cumulative probability is `<= 1 - top_p`, always keep the most
//! likely). The draw is `torch.multinomial` on libtorch's default generator,
//! held and seeded through the caller's [`SeededRng`] (see [`crate::rng`]
//! for why it is libtorch's generator): on CPU that is exactly the random
//! stream the SDK consumes after `torch.manual_seed(seed)`, so the same seed
//! gives the same tokens (AVP-ENG-8, SHOULD).

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::rng::SeededRng;

/// Draws one token id (int64 tensor `[1]`) from float32 `logits` `[1, V]`,
/// advancing `rng`'s stream.
pub fn sample(
    logits: &Tensor,
    temperature: f64,
    top_k: usize,
    top_p: f64,
    // Unread: the multinomial below draws from the generator this holds.
    _rng: &mut SeededRng,
) -> Result<Tensor> {
    let mut scores = logits.f_div_scalar(temperature)?;
    let vocab = scores.size().last().copied().unwrap_or(0);
    if top_k > 0 && (top_k as i64) < vocab {
        let (vals, _) = scores.f_topk(top_k as i64, -1, true, true)?;
        let kth = vals.f_narrow(-1, top_k as i64 - 1, 1)?;
        scores = scores.f_masked_fill(&scores.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if top_p < 1.0 {
        let (sorted, idx) = scores.f_sort(-1, false)?;
        let cum = sorted
            .f_softmax(-1, Kind::Float)?
            .f_cumsum(-1, Kind::Float)?;
        let remove = cum.f_le(1.0 - top_p)?;
        // Keep at least the most likely token (the last in ascending order).
        let _ = remove.f_narrow(-1, vocab - 1, 1)?.f_fill_(0)?;
        let mask = remove.f_scatter(-1, &idx, &remove)?;
        scores = scores.f_masked_fill(&mask, f64::NEG_INFINITY)?;
    }
    let probs = scores.f_softmax(-1, Kind::Float)?;
    Ok(probs.f_multinomial(1, false)?.f_reshape([-1])?)
}
