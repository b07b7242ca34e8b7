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
///
/// The caller's thread hashes too, and the threads claim chunks of about a
/// sixteenth of the input in turn rather than a fixed share each: on a busy
/// machine a helper that is not scheduled then costs at most the chunk it
/// holds, where a fixed half made the caller wait for that whole half.
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
    let chunk = (bytes.len() / CLAIM_CHUNKS).max(PARALLEL_MIN_LEN / 2);
    let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Chunks claimed by one thread: (chunk number, its CRC state).
    let claim = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(c) = chunks.get(i) else { break };
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            done.push((i, h));
        }
        done
    };
    let mut parts = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(chunks.len()))
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, claim).ok())
            .collect();
        let mut parts = claim();
        for helper in helpers {
            // A join fails only if the hashing thread panicked, which
            // crc32fast does not do; its chunks are then missing and the
            // whole buffer is hashed here below.
            parts.extend(helper.join().unwrap_or_default());
        }
        parts
    });
    parts.sort_unstable_by_key(|(i, _)| *i);
    if parts.len() != chunks.len() {
        return crc32fast::hash(bytes);
    }
    let mut total = crc32fast::Hasher::new();
    for (_, p) in &parts {
        total.combine(p);
    }
    total.finalize()
}

/// Into how many chunks (of at least 4 MiB) a parallel checksum is cut.
const CLAIM_CHUNKS: usize = 16;

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
