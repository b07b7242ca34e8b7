//! The file-system edge (feature `fs`): reading a model directory for the
//! weights digest and looking up map files. Everything else in the crate is
//! sans-I/O and this module only feeds it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Error;
use crate::resolve::MapLookup;
use crate::weights::{LeafHasher, TensorEntry, WeightsDigest, combine, header_len, parse_header};

/// File-name suffixes tried for a map id (AVP-HS-8): the SDK's torch pickle
/// and our safetensors-based map format.
pub const MAP_SUFFIXES: [&str; 2] = [".pt", ".avpmap.safetensors"];

/// Bytes read per call while hashing a tensor.
const CHUNK: usize = 1 << 20;

fn io_err(path: &Path, e: &std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A directory of map files named `{src16}_{tgt16}` + one of [`MAP_SUFFIXES`].
#[derive(Clone, Debug)]
pub struct MapDir(pub PathBuf);

impl MapLookup for MapDir {
    fn has_map(&self, map_id: &str) -> bool {
        MAP_SUFFIXES
            .iter()
            .any(|suffix| self.0.join(format!("{map_id}{suffix}")).is_file())
    }
}

/// The `*.safetensors` files directly inside `dir`, sorted by name.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, &e))? {
        let path = entry.map_err(|e| io_err(dir, &e))?.path();
        let is_st = path.extension().is_some_and(|e| e == "safetensors")
            && !path.to_string_lossy().ends_with(".avpmap.safetensors");
        if is_st && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and checks the header of one safetensors file.
pub fn read_header(path: &Path) -> Result<(Vec<TensorEntry>, u64), Error> {
    let wrap = |e: Error| match e {
        Error::Safetensors(m) => Error::Safetensors(format!("{}: {m}", path.display())),
        other => other,
    };
    let mut file = File::open(path).map_err(|e| io_err(path, &e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, &e))?.len();
    let mut first8 = [0u8; 8];
    file.read_exact(&mut first8)
        .map_err(|_| wrap(Error::Safetensors("shorter than 8 bytes".into())))?;
    let n = header_len(first8, file_len).map_err(wrap)?;
    let mut header = vec![0u8; usize::try_from(n).unwrap_or(0)];
    file.read_exact(&mut header).map_err(|e| io_err(path, &e))?;
    let data_start = n.saturating_add(8);
    let parsed = parse_header(&header, file_len.saturating_sub(data_start)).map_err(wrap)?;
    Ok((parsed.tensors, parsed.data_start))
}

struct Job {
    file: usize,
    entry: TensorEntry,
    data_start: u64,
}

/// The weights digest of the `*.safetensors` files in `dir` (AVP-HS-20),
/// hashing tensors on `threads` threads (0 = all cores), streaming each in
/// 1 MiB reads.
pub fn weights_digest_dir(dir: &Path, threads: usize) -> Result<WeightsDigest, Error> {
    let files = safetensors_files(dir)?;
    if files.is_empty() {
        return Err(Error::Safetensors(format!(
            "no *.safetensors file in {}",
            dir.display()
        )));
    }
    let mut jobs = Vec::new();
    for (index, path) in files.iter().enumerate() {
        let (tensors, data_start) = read_header(path)?;
        jobs.extend(tensors.into_iter().map(|entry| Job {
            file: index,
            entry,
            data_start,
        }));
    }
    // Largest first, so one big tensor does not start last.
    jobs.sort_by_key(|j| core::cmp::Reverse(j.entry.byte_len()));
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    }
    .min(jobs.len().max(1));

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(TensorEntry, [u8; 32])>> = Mutex::new(Vec::with_capacity(jobs.len()));
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buffer = vec![0u8; CHUNK];
                let mut open: Vec<Option<File>> = (0..files.len()).map(|_| None).collect();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    match hash_job(job, &files, &mut open, &mut buffer) {
                        Ok(leaf) => {
                            if let Ok(mut r) = results.lock() {
                                r.push((job.entry.clone(), leaf));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            // Stop the other workers early.
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let leaves = results.into_inner().unwrap_or_default();
    combine(leaves)
}

fn hash_job(
    job: &Job,
    files: &[PathBuf],
    open: &mut [Option<File>],
    buffer: &mut [u8],
) -> Result<[u8; 32], Error> {
    let path = files
        .get(job.file)
        .ok_or_else(|| Error::Safetensors("internal: file index out of range".into()))?;
    let slot = open
        .get_mut(job.file)
        .ok_or_else(|| Error::Safetensors("internal: file index out of range".into()))?;
    if slot.is_none() {
        *slot = Some(File::open(path).map_err(|e| io_err(path, &e))?);
    }
    let file = slot
        .as_mut()
        .ok_or_else(|| Error::Safetensors("internal: file not open".into()))?;
    file.seek(SeekFrom::Start(
        job.data_start.saturating_add(job.entry.begin),
    ))
    .map_err(|e| io_err(path, &e))?;
    let mut hasher = LeafHasher::new();
    let mut remaining = job.entry.byte_len();
    while remaining > 0 {
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let chunk = buffer
            .get_mut(..want)
            .ok_or_else(|| Error::Safetensors("internal: chunk".into()))?;
        file.read_exact(chunk).map_err(|e| io_err(path, &e))?;
        hasher.update(chunk);
        remaining = remaining.saturating_sub(u64::try_from(want).unwrap_or(u64::MAX));
    }
    Ok(hasher.finalize())
}
