//! Binary16 and bfloat16 conversions (AVP-KVQ-7), branch-free so that the
//! quantizer's and dequantizer's loops over whole rows auto-vectorise.
//!
//! Every case (normal, subnormal, zero, infinity, NaN) is computed and the
//! right one picked by comparisons the compiler turns into masks, instead
//! of `match`/`if` chains that force one value at a time. Widening is exact;
//! narrowing rounds half to even (F. Giesen's `float_to_half_fast3_rtne`).
//! `tensor::f16_to_f32` and `kv_quant::f32_to_f16` are these functions.

// Bit fields of u32/u16 values: every shift and add is bounded by the masks
// before it (documented per line), which the lint cannot see.
#![allow(clippy::arithmetic_side_effects)]

/// `0x7c00 << 13`: a binary16 exponent field of all ones, moved to binary32's place.
const SHIFTED_EXP: u32 = 0x0f80_0000;
/// 2^-14, the smallest normal binary16, as binary32 bits (`113 << 23`).
const HALF_MIN_NORMAL: u32 = 113 << 23;

/// Widens an IEEE binary16 bit pattern to binary32 exactly; NaN keeps its
/// sign and payload (`sign | 0x7f80_0000 | mantissa << 13`).
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13; // exponent and mantissa in binary32's place
    let exp = shifted & SHIFTED_EXP;
    let normal = shifted + ((127 - 15) << 23); // rebias: at most 0x4780_0000 + 0x0f80_0000
    let inf_nan = normal + ((128 - 16) << 23); // exponent 0xff
    // Subnormal: 2^-14 * (1 + m/1024) - 2^-14 = m * 2^-24, exact.
    let subnormal =
        (f32::from_bits(shifted + HALF_MIN_NORMAL) - f32::from_bits(HALF_MIN_NORMAL)).to_bits();
    let magnitude = if exp == SHIFTED_EXP {
        inf_nan
    } else if exp == 0 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(magnitude | sign)
}

/// [`f16_to_f32`] for finite halves only, in three operations: the
/// exponent and mantissa moved to binary32's place and multiplied by
/// 2^(127-15), which rebiases normals and turns the (binary32-subnormal)
/// pattern of a subnormal half into its exact value. Infinity and NaN give
/// a finite wrong value: callers refuse those from the bits first.
#[inline(always)]
pub(crate) fn finite_f16_to_f32(bits: u16) -> f32 {
    const REBIAS: f32 = 5.192_297e33; // 2^112
    let h = u32::from(bits);
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * REBIAS;
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

/// Narrows to IEEE binary16, round half to even; overflow gives infinity,
/// NaN gives the quiet NaN 0x7e00 (sign kept). Subnormal results are rounded
/// by one binary32 addition, normal ones by integer arithmetic on the bits.
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    const F32_INFINITY: u32 = 255 << 23;
    const F16_OVERFLOW: u32 = (127 + 16) << 23;
    const DENORM_MAGIC: u32 = ((127 - 15) + (23 - 10) + 1) << 23;
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let abs = bits & 0x7fff_ffff;
    // Below 2^-14 the addition of 2^-1 shifts the value so that the FPU's
    // own rounding leaves the binary16 subnormal mantissa in the low bits.
    let subnormal = (f32::from_bits(abs) + f32::from_bits(DENORM_MAGIC))
        .to_bits()
        .wrapping_sub(DENORM_MAGIC);
    let mant_odd = (abs >> 13) & 1;
    let normal = abs
        .wrapping_sub((127 - 15) << 23)
        .wrapping_add(0xfff)
        .wrapping_add(mant_odd)
        >> 13;
    let special = if abs > F32_INFINITY { 0x7e00 } else { 0x7c00 };
    let magnitude = if abs >= F16_OVERFLOW {
        special
    } else if abs < HALF_MIN_NORMAL {
        subnormal
    } else {
        normal
    };
    (sign | magnitude) as u16
}

/// Widens a bfloat16 bit pattern to binary32 exactly.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Narrows to bfloat16, round half to even; NaN stays NaN (quiet, sign and
/// upper payload kept).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) as u16) | 0x0040;
    if x.is_nan() { quiet_nan } else { rounded }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::float_cmp, clippy::unwrap_used)]
    use super::*;

    /// Widening by the definition: (-1)^s * 2^(e-15) * (1 + m/1024), or m * 2^-24.
    fn widen_reference(bits: u16) -> f64 {
        let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((bits >> 10) & 0x1f);
        let m = f64::from(bits & 0x3ff);
        match e {
            0 => sign * m * 2f64.powi(-24),
            0x1f if m == 0.0 => sign * f64::INFINITY,
            0x1f => f64::NAN,
            _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        }
    }

    /// Narrowing by the definition: the nearest binary16 value, ties to the
    /// even mantissa, infinity from 65520 (the midpoint to 2^16) up.
    fn narrow_reference(x: f32) -> f64 {
        let v = f64::from(x);
        if v.is_nan() || v.abs() >= 65520.0 {
            return v.signum() * f64::INFINITY;
        }
        // Spacing of binary16 values around |v|: 2^(e-10) with e >= -14.
        let e = if v == 0.0 {
            -14
        } else {
            (v.abs().log2().floor() as i32).max(-14)
        };
        let ulp = 2f64.powi(e - 10);
        // Exact in binary64: a 24-bit mantissa divided by a power of two.
        (v / ulp).round_ties_even() * ulp
    }

    #[test]
    fn widening_is_exact_for_all_65536_halves() {
        for bits in 0..=u16::MAX {
            let got = f16_to_f32(bits);
            let want = widen_reference(bits);
            if want.is_nan() {
                let expect = (u32::from(bits & 0x8000) << 16)
                    | 0x7f80_0000
                    | (u32::from(bits & 0x3ff) << 13);
                assert_eq!(got.to_bits(), expect, "{bits:#06x}");
            } else {
                assert_eq!(f64::from(got), want, "{bits:#06x}");
                assert_eq!(got.is_sign_negative(), bits & 0x8000 != 0, "{bits:#06x}");
            }
        }
    }

    #[test]
    fn finite_widening_equals_exact_widening_for_every_finite_half() {
        assert_eq!(5.192_297e33_f32, 2f32.powi(112));
        for bits in 0..=u16::MAX {
            if bits & 0x7c00 != 0x7c00 {
                let (fast, exact) = (finite_f16_to_f32(bits), f16_to_f32(bits));
                assert_eq!(fast.to_bits(), exact.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn narrowing_round_trips_every_half() {
        for bits in 0..=u16::MAX {
            let x = f16_to_f32(bits);
            if x.is_nan() {
                assert_eq!(f32_to_f16(x), (bits & 0x8000) | 0x7e00, "{bits:#06x}");
            } else {
                assert_eq!(f32_to_f16(x), bits, "{bits:#06x}");
            }
        }
    }

    fn check_narrowing(x: f32) {
        let got = f32_to_f16(x);
        let want = narrow_reference(x);
        let back = f64::from(f16_to_f32(got));
        if x.is_nan() {
            assert_eq!(got & 0x7fff, 0x7e00, "{:#010x}", x.to_bits());
        } else {
            assert_eq!(back, want, "{x:e} ({:#010x})", x.to_bits());
            assert_eq!(got & 0x8000 != 0, x.is_sign_negative(), "{x:e}");
        }
    }

    #[test]
    fn narrowing_matches_the_reference_at_every_midpoint_and_its_neighbours() {
        // Every tie between two adjacent halves (and one f32 ulp either
        // side) is where rounding mistakes show; both signs, subnormals and
        // the overflow boundary included.
        for bits in 0..0x7c00u16 {
            let lo = f64::from(f16_to_f32(bits));
            let hi = f64::from(f16_to_f32(bits + 1));
            let mid = ((lo + hi) / 2.0) as f32; // exact: 12 significant bits
            for x in [
                f16_to_f32(bits),
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ] {
                check_narrowing(x);
                check_narrowing(-x);
            }
        }
    }

    #[test]
    fn narrowing_matches_the_reference_on_a_sweep_of_all_floats() {
        // A prime stride visits every exponent and a spread of mantissas
        // (about 1.3 million binary32 patterns, NaNs and infinities included).
        let mut bits = 0u32;
        loop {
            check_narrowing(f32::from_bits(bits));
            match bits.checked_add(3301) {
                Some(next) => bits = next,
                None => break,
            }
        }
        for x in [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            65519.996,
            65520.0,
        ] {
            check_narrowing(x);
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "overflow is infinity");
        assert_eq!(f32_to_f16(f32::NAN), 0x7e00);
    }

    #[test]
    fn bfloat16_rounds_half_to_even_and_keeps_nan() {
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        for bits in 0..=u16::MAX {
            let x = bf16_to_f32(bits);
            if !x.is_nan() {
                assert_eq!(f32_to_bf16(x), bits);
            }
        }
    }
}
