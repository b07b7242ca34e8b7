//! The payload checksum (AVP-WIRE-15): CRC-32, SIMD via crc32fast, and for
//! large tensors split across threads and combined (CRC-32 is linear, so
//! per-chunk values combine exactly into the whole-buffer value). The
//! encoder's tensor copy is split the same way (`copy_with_threads`, internal).

/// Below this many bytes the checksum always runs on the caller's thread.
pub const PARALLEL_MIN_LEN: usize = 8 << 20;

/// Most threads the checksum uses when asked to pick itself.
const AUTO_MAX_THREADS: usize = 8;

/// CRC-32 of `bytes` with up to `threads` threads (0 = pick: the available
/// parallelism, at most 8; 1 = only the caller's thread). Small inputs never
/// spawn threads.
pub fn crc32_with_threads(bytes: &[u8], threads: usize) -> u32 {
    if threads == 1 || bytes.len() < PARALLEL_MIN_LEN {
        return crc32fast::hash(bytes);
    }
    let threads = match threads {
        0 => auto_threads(),
        n => n,
    };
    if threads <= 1 {
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

/// Copies `src` into `dst` (the same length; otherwise only the common
/// prefix is copied) with up to `threads` threads, as [`crc32_with_threads`]
/// picks them. Into freshly allocated output the cost is the kernel's
/// first-touch page faults, which run in parallel when the threads touch
/// disjoint pages.
pub(crate) fn copy_with_threads(dst: &mut [u8], src: &[u8], threads: usize) {
    let len = dst.len().min(src.len());
    let (dst, src) = (
        dst.get_mut(..len).unwrap_or_default(),
        src.get(..len).unwrap_or_default(),
    );
    let threads = match threads {
        _ if len < PARALLEL_MIN_LEN => 1,
        0 => auto_threads(),
        n => n,
    };
    if threads <= 1 {
        dst.copy_from_slice(src);
        return;
    }
    let chunk = len.div_ceil(threads);
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            s.spawn(move || d.copy_from_slice(c));
        }
    });
}

/// The available parallelism, capped, asked once: the query reads cgroup
/// files, which costs more than checksumming a small tensor.
fn auto_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(AUTO_MAX_THREADS))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn parallel_copy_equals_serial() {
        let src: Vec<u8> = (0..(PARALLEL_MIN_LEN + 777))
            .map(|i| (i * 13 % 253) as u8)
            .collect();
        for t in [0, 1, 2, 3, 7] {
            let mut dst = vec![0u8; src.len()];
            copy_with_threads(&mut dst, &src, t);
            assert!(dst == src, "{t} threads");
        }
        let mut short = vec![0u8; 5];
        copy_with_threads(&mut short, &src, 2);
        assert_eq!(short, src[..5]);
    }

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
