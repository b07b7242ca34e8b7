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
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        if x == 0.0 && x.is_sign_negative() {
            out.push_str("-0.0");
        } else {
            // |x| < 2^53, so the conversion is exact.
            #[allow(clippy::cast_possible_truncation)]
            let _ = write!(out, "{}.0", x as i64);
        }
        return;
    }
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
}
