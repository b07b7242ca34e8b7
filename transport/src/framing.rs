//! The few pieces of HTTP the server parses itself, sans-I/O (the rest is
//! hyper's): the scan for the end of a connection's first request head, so an
//! oversized head gets the JSON envelope (AVP-HTTP-19), and the header values
//! it interprets (bearer token, `Content-Length`, media type). Fuzzed through
//! [`fuzzing::check`] (fuzz/fuzz_targets/http_framing.rs).

/// Where the first request head of a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadScan {
    /// The head is complete: it is the first `n` bytes (blank line included).
    Complete(usize),
    /// No blank line yet, and fewer than the limit bytes: read more.
    Partial,
    /// No blank line within the limit (431).
    TooLarge,
}

/// Finds the blank line that ends a request head (`\r\n\r\n`, or a bare
/// `\n\n` as httparse also accepts) within the first `limit` bytes. The
/// HTTP/2 preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) ends at its first
/// blank line too, so both versions pass through unchanged.
pub fn scan_head(buf: &[u8], limit: usize) -> HeadScan {
    let window = buf.get(..limit).unwrap_or(buf);
    let mut previous_newline = false;
    for (at, &byte) in window.iter().enumerate() {
        match byte {
            b'\n' if previous_newline => return HeadScan::Complete(at.saturating_add(1)),
            b'\n' => previous_newline = true,
            // `\r` between two newlines keeps the pair adjacent.
            b'\r' => {}
            _ => previous_newline = false,
        }
    }
    if buf.len() >= limit {
        HeadScan::TooLarge
    } else {
        HeadScan::Partial
    }
}

/// `Authorization: Bearer <token>`: scheme case-insensitive, surrounding
/// whitespace ignored, the token compared in constant time (AVP-HTTP-13).
pub fn bearer_matches(value: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = value else { return false };
    let (scheme, rest) = value.split_at(value.len().min(7));
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(rest.trim_ascii(), token.as_bytes())
}

/// Compares without an early exit, so the time taken does not reveal how
/// many leading bytes were right (only whether the lengths differ).
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// A `Content-Length` value: ASCII digits with optional surrounding
/// whitespace; anything else (signs, commas, overflow) is `None`.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?
            .checked_add(u64::from(d.wrapping_sub(b'0')))
    })
}

/// `type/subtype` compared case-insensitively, parameters ignored (AVP-HTTP-4).
pub fn media_type_is(value: Option<&[u8]>, wanted: &str) -> bool {
    let Some(value) = value else { return false };
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(wanted.as_bytes())
}

/// Fuzz oracle for the functions above (a `#[doc(hidden)]` API for the
/// cargo-fuzz target; not part of the stable surface).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Never panics, and: a complete head ends in a newline and lies within
    /// the limit, scanning more bytes never un-completes a head, the parsed
    /// length re-prints to the trimmed digits (modulo leading zeros), and the
    /// bearer check accepts exactly its own well-formed header.
    pub fn check(data: &[u8]) {
        let limit = usize::from(data.first().copied().unwrap_or(0)).saturating_mul(4);
        let rest = data.get(1..).unwrap_or_default();
        match scan_head(rest, limit) {
            HeadScan::Complete(n) => {
                assert!(n <= limit && n <= rest.len());
                assert_eq!(rest.get(n.saturating_sub(1)), Some(&b'\n'));
                // The same head is found in any prefix that contains it.
                let prefix = rest.get(..n).unwrap_or_default();
                assert_eq!(scan_head(prefix, limit), HeadScan::Complete(n));
            }
            HeadScan::Partial => assert!(rest.len() < limit),
            HeadScan::TooLarge => assert!(rest.len() >= limit),
        }
        if let Some(n) = content_length(rest) {
            let digits = rest.trim_ascii();
            let trimmed: &[u8] = match digits.iter().position(|&d| d != b'0') {
                Some(first) => digits.get(first..).unwrap_or_default(),
                None => b"0",
            };
            assert_eq!(n.to_string().as_bytes(), trimmed);
        }
        if let Ok(token) = std::str::from_utf8(rest) {
            let token = token.trim_ascii();
            if !token.is_empty() && !token.bytes().any(|b| b.is_ascii_whitespace()) {
                let header = format!("Bearer {token}");
                assert!(bearer_matches(Some(header.as_bytes()), token));
                assert!(!bearer_matches(Some(rest), &format!("{token}x")));
            }
        }
        let _ = media_type_is(Some(rest), "application/json");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_the_first_blank_line_within_the_limit() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        assert_eq!(scan_head(head, 1024), HeadScan::Complete(28));
        assert_eq!(
            scan_head(b"GET / HTTP/1.1\n\n", 1024),
            HeadScan::Complete(16)
        );
        assert_eq!(
            scan_head(b"GET / HTTP/1.1\r\nHost", 1024),
            HeadScan::Partial
        );
        assert_eq!(scan_head(&[b'a'; 64], 64), HeadScan::TooLarge);
        assert_eq!(scan_head(head, 20), HeadScan::TooLarge);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(scan_head(preface, 1024), HeadScan::Complete(18));
    }

    #[test]
    fn header_values_are_read_strictly() {
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"+42"), None);
        assert_eq!(content_length(b"99999999999999999999999"), None);
        assert_eq!(content_length(b""), None);
        assert!(bearer_matches(Some(b"bearer s3cret "), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cres"), "s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(media_type_is(
            Some(b"Application/AVP+binary; x=1"),
            "application/avp+binary"
        ));
        assert!(!media_type_is(Some(b"text/plain"), "application/json"));
    }

    /// Replays the committed seeds (and any promoted crash regressions) of
    /// the `http_framing` fuzz target (FUZZING.md).
    #[test]
    fn the_fuzz_seeds_replay() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_seeds/http_framing");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).expect("seed dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                fuzzing::check(&std::fs::read(&path).expect("seed"));
                replayed += 1;
            }
        }
        assert!(replayed >= 6, "only {replayed} seeds");
    }

    #[test]
    fn the_fuzz_oracle_holds_on_a_few_inputs() {
        for input in [
            &b""[..],
            b"\x10GET / HTTP/1.1\r\n\r\n",
            b"\x0200012",
            b"\xffs3cret",
            b"\x01\n\n",
        ] {
            fuzzing::check(input);
        }
    }
}
