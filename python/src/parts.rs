//! A payload given as several pieces (the KV header, then every K and V
//! tensor) checksummed and copied without first joining it: each thread
//! takes one contiguous range of the concatenation, whatever piece
//! boundaries fall inside it. CRC-32 combines exactly, so per-range values
//! give the whole payload's.

/// Threads for `len` bytes: 1 below the codec's parallel threshold, else
/// `requested` (0 = the available parallelism, at most 8).
pub(crate) fn threads_for(len: usize, requested: usize) -> usize {
    if len < avp_codec::checksum::PARALLEL_MIN_LEN {
        return 1;
    }
    match requested {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        n => n,
    }
}

/// The concatenation of `parts` cut into `ranges` runs of about equal size,
/// each run a list of sub-slices in wire order.
fn split<'a>(parts: &[&'a [u8]], ranges: usize) -> Vec<Vec<&'a [u8]>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let target = total.div_ceil(ranges.max(1)).max(1);
    let mut runs = vec![Vec::new()];
    let mut room = target;
    for part in parts {
        let mut rest: &'a [u8] = part;
        while !rest.is_empty() {
            if room == 0 {
                runs.push(Vec::new());
                room = target;
            }
            let (piece, tail) = rest.split_at(room.min(rest.len()));
            if let Some(run) = runs.last_mut() {
                run.push(piece);
            }
            room -= piece.len();
            rest = tail;
        }
    }
    runs
}

/// CRC-32 of the concatenation of `parts`, on `threads` threads.
pub(crate) fn crc32(parts: &[&[u8]], threads: usize) -> u32 {
    let hash_run = |run: &[&[u8]]| {
        let mut h = crc32fast::Hasher::new();
        for p in run {
            h.update(p);
        }
        h
    };
    if threads <= 1 {
        return hash_run(parts).finalize();
    }
    let runs = split(parts, threads);
    let hashers = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|run| s.spawn(move || hash_run(run)))
            .collect();
        // crc32fast does not panic; should a join fail anyway, hash here.
        handles
            .into_iter()
            .map(|h| h.join().ok())
            .collect::<Option<Vec<_>>>()
    })
    .unwrap_or_else(|| runs.iter().map(|run| hash_run(run)).collect());
    let mut total = crc32fast::Hasher::new();
    for h in &hashers {
        total.combine(h);
    }
    total.finalize()
}

/// Copies the concatenation of `parts` into `out` (only as much as fits),
/// each of `threads` threads one range, so the first-touch page faults of
/// fresh output memory are taken in parallel.
pub(crate) fn copy(out: &mut [u8], parts: &[&[u8]], threads: usize) {
    let copy_run = |mut dst: &mut [u8], run: &[&[u8]]| {
        for p in run {
            let n = p.len().min(dst.len());
            let (d, rest) = std::mem::take(&mut dst).split_at_mut(n);
            d.copy_from_slice(p.get(..n).unwrap_or_default());
            dst = rest;
        }
    };
    if threads <= 1 {
        copy_run(out, parts);
        return;
    }
    let mut rest = out;
    let mut jobs = Vec::new();
    for run in split(parts, threads) {
        let len: usize = run.iter().map(|p| p.len()).sum();
        let n = len.min(rest.len());
        let (dst, tail) = std::mem::take(&mut rest).split_at_mut(n);
        jobs.push((dst, run));
        rest = tail;
    }
    std::thread::scope(|s| {
        for (dst, run) in jobs {
            s.spawn(move || copy_run(dst, &run));
        }
    });
}
