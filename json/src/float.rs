//! Python's `repr(float)` (AVP-HASH-3).
//!
//! Python prints the shortest digit string that round-trips (David Gay's
//! mode 0). Rust's `{:e}` prints the same shortest digits, so only the layout
//! differs: Python uses fixed notation when the decimal exponent `e` of
//! `d.ddd×10^e` satisfies `-4 <= e < 16` and appends `.0` to integral values;
//! otherwise scientific notation with a sign and at least two exponent digits.

use core::fmt::Write as _;

/// Appends `repr(x)` as Python 3 prints it (`1e-06`, `1e+16`,
/// `1000000000000000.0`, `-0.0`, `5e-324`, `NaN`, `Infinity`, `-Infinity`).
pub fn write_py_float(out: &mut String, x: f64) {
    let mut buf = StackBuf::new();
    write_py_float_to(&mut buf, x);
    out.push_str(buf.as_str());
}

/// A fixed stack buffer for number formatting (no allocation per number;
/// 64 bytes hold any float repr).
pub(crate) struct StackBuf {
    bytes: [u8; 64],
    len: usize,
}

impl StackBuf {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }

    fn push_str(&mut self, s: &str) {
        let _ = self.write_str(s);
    }

    fn push(&mut self, c: char) {
        let _ = self.write_char(c);
    }

    /// Appends ASCII bytes (dropped if they do not fit, which the callers'
    /// sizes rule out).
    fn push_ascii(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(slot) = self.bytes.get_mut(self.len..end) {
            // A byte loop: these pieces are a few digits, shorter than
            // what a memcpy call is worth.
            for (to, from) in slot.iter_mut().zip(bytes) {
                *to = *from;
            }
            self.len = end;
        }
    }

    fn push_digits(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        self.push_ascii(format_u64(n, &mut digits));
    }

    /// The bytes written so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl core::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let slot = self.bytes.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// [`write_py_float`] into a stack buffer.
pub(crate) fn write_py_float_to(out: &mut StackBuf, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Fast path for integral values below 2^53 (`10000.0`, `0.0`): every
    // such value is exact, so its shortest repr is the integer itself, and
    // with fewer than 17 digits Python prints it in fixed notation + ".0".
    if x.fract() == 0.0 && x.abs() < EXACT {
        if x.is_sign_negative() {
            out.push('-');
        }
        // |x| < 2^53, so the conversion is exact.
        #[allow(clippy::cast_possible_truncation)]
        out.push_digits(x.abs() as u64);
        out.push_str(".0");
        return;
    }
    if let Some((digits, fraction_digits)) = short_decimal(x.abs()) {
        if x.is_sign_negative() {
            out.push('-');
        }
        write_short_decimal(out, digits, fraction_digits);
        return;
    }
    write_py_float_general(out, x);
}

/// [`write_py_float_to`] for a finite `x` through Rust's shortest `{:e}`
/// digits (every value; the fast paths above skip it for common ones).
fn write_py_float_general(out: &mut StackBuf, x: f64) {
    // `{:e}` of a finite f64: `-?D(.DDD)?e-?N` with shortest round-trip digits.
    let mut sci = StackBuf::new();
    // At most 24 bytes: the buffer cannot overflow.
    let _ = write!(sci, "{x:e}");
    // When two shortest candidates are equally close to x (x is exactly
    // halfway), Rust's shortest mode rounds the tie up while Python (David
    // Gay's dtoa) rounds it to even. Rust's fixed-precision mode rounds
    // half to even, so with the same digit count it gives Python's choice
    // whenever that choice round-trips. Ties need ~15+ digits (doubles are
    // far denser than shorter decimals), so shorter outputs skip the check.
    let digit_count = sci
        .as_str()
        .bytes()
        .take_while(|b| *b != b'e')
        .filter(u8::is_ascii_digit)
        .count();
    if digit_count >= 15 {
        let mut exact = StackBuf::new();
        let _ = write!(exact, "{:.*e}", digit_count.saturating_sub(1), x);
        if exact.as_str() != sci.as_str() && exact.as_str().parse::<f64>().ok() == Some(x) {
            sci = exact;
        }
    }
    let sci = sci.as_str();
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci, "0"));
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let exp10: i32 = exponent.parse().unwrap_or(0);
    let (lead, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp10) {
        write_fixed(out, lead, frac, exp10);
    } else {
        out.push_str(lead);
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        out.push('e');
        out.push(if exp10 < 0 { '-' } else { '+' });
        let magnitude = exp10.unsigned_abs();
        if magnitude < 10 {
            out.push('0');
        }
        let _ = write!(out, "{magnitude}");
    }
}

/// 2^53: integers below it are exact in an f64.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Powers of ten that are exact in an f64 (10^0..=10^17).
const POW10: [f64; 18] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17,
];

/// The shortest round-tripping decimal of a positive, finite, non-integral
/// `x` as `digits × 10^-fraction_digits`, when it has at most 17 fraction
/// digits and `digits < 2^53` (config values such as `0.02`, `1e-05`).
/// `None` sends the caller to the general (slower) path.
///
/// Why this is exact: `digits` and `10^k` are exact f64 values, so the
/// IEEE division `digits / 10^k` is the correctly rounded value of the
/// decimal, i.e. what parsing it gives: the decimal round-trips iff that
/// quotient equals `x`. Trying `k = 1, 2, ...` finds the fewest fraction
/// digits, hence the fewest significant digits (a non-integral `x < 2^53`
/// has no integral round-tripping decimal). The rounded product `x·10^k`
/// is within 0.5 of the exact one, so every candidate lies within ±1 of
/// its rounding; when more than one candidate round-trips (a tie between
/// two shortest decimals, which Python breaks by closeness) this gives up.
fn short_decimal(x: f64) -> Option<(u64, usize)> {
    if !(x > 0.0 && x < EXACT) {
        return None;
    }
    for (k, &scale) in POW10.iter().enumerate().skip(1) {
        let scaled = x * scale;
        if scaled >= EXACT {
            return None;
        }
        let nearest = scaled.round();
        let mut found = None;
        for candidate in [nearest - 1.0, nearest, nearest + 1.0] {
            if candidate > 0.0 && candidate / scale == x {
                if found.is_some() {
                    return None;
                }
                found = Some(candidate);
            }
        }
        if let Some(digits) = found {
            // 0 < digits < 2^53: the conversion is exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return Some((digits as u64, k));
        }
    }
    None
}

/// Python's layout of `digits × 10^-fraction_digits` (no trailing zeros in
/// `digits`, value below 2^53, so the decimal exponent is below 16).
fn write_short_decimal(out: &mut StackBuf, digits: u64, fraction_digits: usize) {
    let mut text = [0u8; 20];
    let digits = format_u64(digits, &mut text);
    let len = digits.len();
    // Decimal exponent of d.ddd×10^e: e = len - 1 - fraction_digits.
    if len.saturating_add(4) > fraction_digits {
        // e >= -4: fixed notation.
        if fraction_digits >= len {
            out.push_str("0.");
            for _ in 0..fraction_digits.saturating_sub(len) {
                out.push('0');
            }
            out.push_ascii(digits);
        } else {
            let (int_part, frac_part) = digits.split_at(len.saturating_sub(fraction_digits));
            out.push_ascii(int_part);
            out.push('.');
            out.push_ascii(frac_part);
        }
    } else {
        let (first, rest) = digits.split_at(1.min(len));
        out.push_ascii(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_ascii(rest);
        }
        // e < -4: magnitude = fraction_digits + 1 - len >= 5.
        out.push_str("e-");
        let magnitude = fraction_digits.saturating_add(1).saturating_sub(len);
        if magnitude < 10 {
            out.push('0');
        }
        out.push_digits(u64::try_from(magnitude).unwrap_or(0));
    }
}

/// Decimal digits of `n`, written at the end of `buf`.
pub(crate) fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at = at.saturating_sub(1);
        if let Some(slot) = buf.get_mut(at) {
            // n % 10 < 10, so the cast is exact.
            *slot = b'0'.saturating_add((n % 10) as u8);
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.get(at..).unwrap_or_default()
}

/// Fixed notation for `lead.frac × 10^exp10` with `-4 <= exp10 < 16`.
fn write_fixed(out: &mut StackBuf, lead: &str, frac: &str, exp10: i32) {
    // All digits, and how many of them stand before the decimal point.
    let digits_len = lead.len().saturating_add(frac.len());
    let int_len = exp10.saturating_add(1);
    let digits = lead.chars().chain(frac.chars());
    if int_len <= 0 {
        out.push_str("0.");
        for _ in 0..int_len.unsigned_abs() {
            out.push('0');
        }
        digits.for_each(|c| out.push(c));
        return;
    }
    let int_len = usize::try_from(int_len).unwrap_or(0);
    if int_len >= digits_len {
        digits.for_each(|c| out.push(c));
        for _ in 0..int_len.saturating_sub(digits_len) {
            out.push('0');
        }
        out.push_str(".0");
    } else {
        for (i, c) in digits.enumerate() {
            if i == int_len {
                out.push('.');
            }
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(x: f64) -> String {
        let mut s = String::new();
        write_py_float(&mut s, x);
        s
    }

    #[test]
    // The tie cases are exact binary values whose shortest repr is shorter.
    #[allow(clippy::excessive_precision)]
    fn avp_hash_3_python_repr_classes() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (123456789012345.6, "123456789012345.6"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (-2.5, "-2.5"),
            (0.000123, "0.000123"),
            (1e-10, "1e-10"),
            // Exact ties between two shortest candidates: Python rounds to even.
            (634865111930876.25, "634865111930876.2"),
            // Integral fast path and its edges.
            (9007199254740991.0, "9007199254740991.0"),
            (9007199254740992.0, "9007199254740992.0"),
            (-123456.0, "-123456.0"),
            (1673547558821816.75, "1673547558821816.8"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(*x), *want, "repr({x:e})");
        }
    }

    fn general(x: f64) -> String {
        let mut buf = StackBuf::new();
        write_py_float_general(&mut buf, x);
        buf.as_str().to_owned()
    }

    /// The fast paths (integral values, short decimals) print exactly what
    /// the general path prints, on values built to hit them and on raw bits.
    #[test]
    fn avp_hash_3_fast_paths_agree_with_the_general_path() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..300_000u32 {
            let r = next();
            let x = match i % 4 {
                // digits / 10^k with up to 17 digits and k in 0..=20.
                0 | 1 => {
                    let digits = r % 10u64.pow(1 + (i / 4 % 17));
                    let k = (r >> 59) as i32 % 21;
                    digits as f64 / 10f64.powi(k)
                }
                // Integral values.
                2 => (r >> (r % 40)) as f64,
                _ => f64::from_bits(r),
            };
            for v in [x, -x] {
                if v.is_finite() {
                    assert_eq!(repr(v), general(v), "bits {:#x}", v.to_bits());
                }
            }
        }
    }
}
