//! The payload checksum (AVP-WIRE-15): CRC-32, SIMD via crc32fast, and for
//! large tensors split across threads and combined (CRC-32 is linear, so
//! per-chunk values combine exactly into the whole-buffer value).

/// Below this many bytes the checksum always runs on the caller's thread.
pub const PARALLEL_MIN_LEN: usize = 8 << 20;

/// Most threads the checksum uses when asked to pick itself.
const AUTO_MAX_THREADS: usize = 8;

/// CRC-32 of `bytes` with up to `threads` threads (0 = pick: the available
/// parallelism, at most 8; 1 = only the caller's thread). Small inputs never
/// spawn threads.
pub fn crc32_with_threads(bytes: &[u8], threads: usize) -> u32 {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(AUTO_MAX_THREADS)),
        n => n,
    };
    if threads <= 1 || bytes.len() < PARALLEL_MIN_LEN {
        return crc32fast::hash(bytes);
    }
    let chunk = bytes.len().div_ceil(threads);
    let parts: Vec<crc32fast::Hasher> = std::thread::scope(|s| {
        let handles: Vec<_> = bytes
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    let mut h = crc32fast::Hasher::new();
                    h.update(c);
                    h
                })
            })
            .collect();
        // A join fails only if the hashing thread panicked, which crc32fast does not do;
        // fall back to hashing that chunk here rather than propagating a panic.
        handles
            .into_iter()
            .map(|h| h.join().ok())
            .collect::<Option<Vec<_>>>()
    })
    .unwrap_or_default();
    if parts.is_empty() {
        return crc32fast::hash(bytes);
    }
    let mut total = crc32fast::Hasher::new();
    for p in &parts {
        total.combine(p);
    }
    total.finalize()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects)]
    use super::*;

    #[test]
    fn wire_15_parallel_crc_equals_serial() {
        let data: Vec<u8> = (0..(PARALLEL_MIN_LEN + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let serial = crc32fast::hash(&data);
        for t in [0, 1, 2, 3, 7] {
            assert_eq!(crc32_with_threads(&data, t), serial, "{t} threads");
        }
    }
}
