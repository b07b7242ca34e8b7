//! Chunked contexts on the receiving agent (spec/protocol/http.md section 8,
//! spec/impl/transport.md AVP-HTTP-90..92): each chunk is appended to a
//! per-context file in the store directory as it arrives (never the whole
//! context in memory), an index of held chunks survives a crash, the
//! context digest is checked when the last chunk arrives, and only then is
//! the context renamed into the store, all at once. Incomplete assemblies
//! expire after a TTL; their number and bytes are bounded.
//!
//! Blocking file I/O: call from a blocking context (the agent uses
//! `spawn_blocking`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use avp_codec::chunk::{
    Added, Assembler, AssemblyLimits, ChunkDescriptor, ChunkInfo, DigestVerifier,
};
use avp_codec::kv::{KV_HEADER_LEN, KvHeader};
use avp_json::{Object, Value, WriteOptions};
use bytes::{Bytes, BytesMut};

use crate::store::{ContextStore, StoredContext, new_id};
use crate::wire::WireError;

/// The folder under the store directory that holds assemblies.
pub const ASSEMBLY_DIR: &str = ".chunks";
const DATA: &str = "data";
const INDEX: &str = "index";
const ORIGIN: &str = "origin";
const DONE: &str = "done";
/// Largest `origin`/`done` file read back (they are a few hundred bytes).
const MAX_SMALL_FILE: u64 = 64 << 10;
/// Largest index read back (a line is under 300 bytes; 65536 chunks).
const MAX_INDEX_BYTES: u64 = 32 << 20;

/// Bounds on what incomplete assemblies may hold (AVP-HTTP-92).
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Contexts assembled at once.
    pub max_assemblies: usize,
    /// Bytes all incomplete assemblies together may hold on disk.
    pub max_bytes: u64,
    /// Chunks per context.
    pub max_chunks: u32,
    /// An assembly with no new chunk for this long is deleted.
    pub ttl: Duration,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_assemblies: 16,
            max_bytes: 64 << 30,
            max_chunks: AssemblyLimits::DEFAULT.max_chunks,
            ttl: Duration::from_secs(600),
        }
    }
}

/// Who sent a context: kept beside its assembly and given to the stored context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Metadata `session_id` of the first chunk received.
    pub session_id: String,
    /// Metadata `source_agent_id`.
    pub source_agent_id: String,
    /// Metadata `target_agent_id`.
    pub target_agent_id: String,
    /// The sender's mTLS identity (AVP-HTTP-74).
    pub client_identity: Option<String>,
}

/// One complete, checked chunk message, ready to be added.
#[derive(Debug, Clone)]
pub struct IncomingChunk {
    /// The whole chunk message as received.
    pub bytes: Bytes,
    /// What the codec read of it (descriptor, KV header, checksum).
    pub info: ChunkInfo,
    /// Where its layer bytes start in `bytes`.
    pub layers_at: usize,
    /// Its routing and sender.
    pub origin: Origin,
}

/// What adding a chunk did (AVP-HTTP-82).
#[derive(Debug, Clone)]
pub struct ChunkAdded {
    /// The context's id, as 32 hex digits.
    pub context_id: String,
    /// The chunk's index.
    pub index: u32,
    /// Chunks in the context.
    pub count: u32,
    /// Distinct chunks held now.
    pub held: u32,
    /// The same index was already held with the same bytes.
    pub duplicate: bool,
    /// The id the context is stored under, once complete.
    pub request_id: Option<String>,
    /// The stored context, when this chunk completed it.
    pub stored: Option<StoredContext>,
}

/// What a receiver holds of one context (AVP-HTTP-83).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblyStatus {
    /// Chunks in the context, once one chunk was seen.
    pub count: Option<u32>,
    /// Indices held, ascending.
    pub held: Vec<u32>,
    /// The id the completed context is stored under.
    pub request_id: Option<String>,
}

/// Why a chunk was not added (AVP-HTTP-85).
#[derive(Debug)]
#[non_exhaustive]
pub enum AssemblyError {
    /// The peer's fault: the chunk does not fit the context (the codec's
    /// typed error: `bad_chunk`, `chunk_conflict`, `limit_exceeded`). The
    /// chunks already held stay.
    Invalid(WireError),
    /// Too many assemblies, or their bytes over the bound; try later.
    Busy(String),
    /// The assembled context's digest differs from its descriptor's; the
    /// assembly was discarded.
    Digest(WireError),
    /// Our side: the disk.
    Io(io::Error),
}

impl std::fmt::Display for AssemblyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(err) | Self::Digest(err) => write!(f, "{}", err.message()),
            Self::Busy(why) => f.write_str(why),
            Self::Io(err) => write!(f, "could not store the chunk: {err}"),
        }
    }
}

impl std::error::Error for AssemblyError {}

impl From<io::Error> for AssemblyError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// One held chunk: where its message is in `data`, and where in that
/// message its layer bytes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    offset: u64,
    len: u64,
    layers_at: u64,
}

/// One context being assembled.
struct Assembly {
    dir: PathBuf,
    assembler: Assembler,
    held: BTreeMap<u32, Held>,
    /// Bytes of `data`.
    len: u64,
    origin: Origin,
    last_chunk: SystemTime,
    /// The digest over the chunks received so far in index order from 0
    /// (the usual case): the next index it needs and the verifier. When a
    /// chunk comes out of order it is dropped and `data` is read back at the end.
    streaming: Option<(u32, DigestVerifier)>,
}

/// Every assembly of one store.
pub struct Assemblies {
    root: PathBuf,
    store: Arc<ContextStore>,
    limits: ChunkLimits,
    open: Mutex<HashMap<[u8; 16], Arc<Mutex<Assembly>>>>,
    /// Completed contexts: their stored id and when (for status, until the TTL).
    done: Mutex<HashMap<[u8; 16], (String, SystemTime)>>,
    /// Bytes of every open assembly's `data`: one counter, so a chunk is
    /// checked against the bound without locking the other assemblies.
    held_bytes: AtomicU64,
    /// Buffers of chunks already written, reused for the next ones
    /// (AVP-HTTP-110): a fresh 64 MiB buffer per chunk costs a page fault
    /// and a zeroed page per 4 KiB, more CPU than the write to disk.
    spare: Mutex<Vec<BytesMut>>,
}

/// Spare chunk buffers kept: with the one being filled and the one being
/// written, at most two chunks' worth of memory per side (AVP-HTTP-84).
const SPARE_BUFFERS: usize = 2;
/// A buffer larger than this is not kept: one huge chunk must not pin its
/// memory after it was written.
const MAX_SPARE_CAPACITY: usize = 128 << 20;
/// Chunks from this size on are hashed on a second thread while written;
/// below it a thread costs more than it saves.
const PARALLEL_DIGEST_BYTES: usize = 1 << 20;

impl Assemblies {
    /// Assemblies under `store`'s directory (`<dir>/.chunks`), recovering
    /// what a crash left (AVP-HTTP-92). A store without a directory cannot
    /// assemble (the context would have to be held in memory).
    pub fn open(store: Arc<ContextStore>, limits: ChunkLimits) -> io::Result<Self> {
        let Some(dir) = store.dir() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunked contexts need a store directory",
            ));
        };
        // Made with the first chunk: a store that never sees one stays as it was.
        let root = dir.join(ASSEMBLY_DIR);
        let mut open = HashMap::new();
        let mut done = HashMap::new();
        let items = match fs::read_dir(&root) {
            Ok(items) => items,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    root,
                    store,
                    limits,
                    open: Mutex::new(open),
                    done: Mutex::new(done),
                    held_bytes: AtomicU64::new(0),
                    spare: Mutex::new(Vec::new()),
                });
            }
            Err(err) => return Err(err),
        };
        for item in items {
            let item = item?;
            let Some(context_id) = item.file_name().to_str().and_then(parse_context_id) else {
                continue;
            };
            let path = item.path();
            if let Some(finished) = read_done(&path) {
                done.insert(context_id, finished);
                continue;
            }
            match recover(&path, &limits) {
                Ok(Some(assembly)) if assembly.assembler.context_id() == Some(context_id) => {
                    open.insert(context_id, Arc::new(Mutex::new(assembly)));
                }
                // Nothing usable (no chunk held yet, unreadable, or another
                // context's chunks under this name): start over.
                _ => {
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
        let held: u64 = open.values().map(|a| lock(a).len).sum();
        let assemblies = Self {
            root,
            store,
            limits,
            open: Mutex::new(open),
            done: Mutex::new(done),
            held_bytes: AtomicU64::new(held),
            spare: Mutex::new(Vec::new()),
        };
        assemblies.expire();
        Ok(assemblies)
    }

    /// The limits in force.
    pub fn limits(&self) -> ChunkLimits {
        self.limits
    }

    /// What is held of `context_id` (AVP-HTTP-83).
    pub fn status(&self, context_id: &[u8; 16]) -> AssemblyStatus {
        self.expire();
        if let Some((id, _)) = lock(&self.done).get(context_id) {
            return AssemblyStatus {
                count: None,
                held: Vec::new(),
                request_id: Some(id.clone()),
            };
        }
        let assembly = lock(&self.open).get(context_id).cloned();
        match assembly {
            Some(assembly) => {
                let assembly = lock(&assembly);
                AssemblyStatus {
                    count: assembly.assembler.count(),
                    held: assembly.held.keys().copied().collect(),
                    request_id: None,
                }
            }
            None => AssemblyStatus {
                count: None,
                held: Vec::new(),
                request_id: None,
            },
        }
    }

    /// Number of contexts being assembled and the bytes they hold.
    pub fn in_progress(&self) -> (usize, u64) {
        let open = lock(&self.open).len();
        (open, self.held_bytes.load(Ordering::SeqCst))
    }

    /// An empty buffer to read the next chunk into: one a written chunk
    /// left (its pages already mapped) when there is one (AVP-HTTP-110).
    pub fn spare_buffer(&self) -> BytesMut {
        lock(&self.spare).pop().unwrap_or_default()
    }

    /// Keeps the buffer of a written chunk for the next one, while some
    /// context is being assembled; an idle receiver holds no spare memory.
    fn recycle(&self, bytes: Bytes) {
        let Ok(mut buf) = bytes.try_into_mut() else {
            return;
        };
        let idle = lock(&self.open).is_empty();
        let mut spare = lock(&self.spare);
        if idle {
            spare.clear();
            return;
        }
        if spare.len() < SPARE_BUFFERS && buf.capacity() <= MAX_SPARE_CAPACITY {
            buf.clear();
            spare.push(buf);
        }
    }

    /// Adds one checked chunk: appended and flushed to its assembly's
    /// `data`, then recorded in `index` (AVP-HTTP-90); the last one verifies
    /// the digest and moves the context into the store (AVP-HTTP-91).
    pub fn add(&self, chunk: IncomingChunk) -> Result<ChunkAdded, AssemblyError> {
        let bytes = chunk.bytes.clone();
        let added = self.add_held(chunk);
        self.recycle(bytes);
        added
    }

    fn add_held(&self, chunk: IncomingChunk) -> Result<ChunkAdded, AssemblyError> {
        self.expire();
        let descriptor = chunk.info.descriptor;
        let context_id = descriptor.context_id;
        if let Some((id, _)) = lock(&self.done).get(&context_id) {
            // A chunk of a context already stored: the sender lost the
            // completing answer. Idempotent, like any duplicate.
            return Ok(ChunkAdded {
                context_id: hex(&context_id),
                index: descriptor.index,
                count: descriptor.count,
                held: descriptor.count,
                duplicate: true,
                request_id: Some(id.clone()),
                stored: None,
            });
        }
        let assembly = self.assembly_for(&chunk)?;
        let mut assembly = lock(&assembly);
        let answer = |assembly: &Assembly, duplicate: bool| ChunkAdded {
            context_id: hex(&context_id),
            index: descriptor.index,
            count: descriptor.count,
            held: assembly.held.len() as u32,
            duplicate,
            request_id: None,
            stored: None,
        };
        let len = chunk.bytes.len() as u64;
        let is_new = assembly.assembler.chunk(descriptor.index).is_none();
        if is_new
            && self.held_bytes.load(Ordering::SeqCst).saturating_add(len) > self.limits.max_bytes
        {
            return Err(AssemblyError::Busy(format!(
                "the contexts being assembled would hold more than {} bytes",
                self.limits.max_bytes
            )));
        }
        // The assembler changes nothing on error; kept to undo a failed write.
        let before = assembly.assembler.clone();
        match assembly.assembler.add(&chunk.info) {
            // Complete but not stored (the disk failed at the end): a
            // resent chunk retries the completion.
            Ok(Added::Duplicate) if assembly.assembler.is_complete() => {
                let stored = self.complete(&mut assembly, &context_id)?;
                let mut added = answer(&assembly, true);
                added.request_id = Some(stored.id.clone());
                added.stored = Some(stored);
                return Ok(added);
            }
            Ok(Added::Duplicate) => return Ok(answer(&assembly, true)),
            Ok(Added::New) => {}
            Err(err) => return Err(AssemblyError::Invalid(err)),
        }
        let held = Held {
            offset: assembly.len,
            len,
            layers_at: chunk.layers_at as u64,
        };
        let first = descriptor.index == 0 && assembly.held.is_empty();
        let Assembly { dir, streaming, .. } = &mut *assembly;
        // The digest runs beside the write and its fsync (AVP-HTTP-110): on
        // a second core the chunk costs the longer of the two, not the sum.
        let written = if chunk.bytes.len() >= PARALLEL_DIGEST_BYTES {
            std::thread::scope(|scope| {
                let writer = scope.spawn(|| append_chunk(dir, &held, &chunk.bytes, &chunk.info));
                stream_digest(streaming, first, &chunk);
                writer
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the chunk writer panicked")))
            })
        } else {
            stream_digest(streaming, first, &chunk);
            append_chunk(dir, &held, &chunk.bytes, &chunk.info)
        };
        if let Err(err) = written {
            assembly.assembler = before;
            // The digest took bytes that are not held: read `data` back at the end.
            assembly.streaming = None;
            return Err(err.into());
        }
        assembly.len = held.offset + len;
        self.held_bytes.fetch_add(len, Ordering::SeqCst);
        assembly.last_chunk = SystemTime::now();
        assembly.held.insert(descriptor.index, held);
        let mut added = answer(&assembly, false);
        if assembly.assembler.is_complete() {
            let stored = self.complete(&mut assembly, &context_id)?;
            added.request_id = Some(stored.id.clone());
            added.stored = Some(stored);
        }
        Ok(added)
    }

    /// The open assembly of this chunk's context, made (within the limits)
    /// when this is its first chunk.
    fn assembly_for(&self, chunk: &IncomingChunk) -> Result<Arc<Mutex<Assembly>>, AssemblyError> {
        let descriptor = &chunk.info.descriptor;
        let mut open = lock(&self.open);
        if let Some(assembly) = open.get(&descriptor.context_id) {
            return Ok(Arc::clone(assembly));
        }
        if open.len() >= self.limits.max_assemblies {
            return Err(AssemblyError::Busy(format!(
                "{} contexts are being assembled already",
                open.len()
            )));
        }
        // The codec checks the context against the limits on its first add.
        let assembler = Assembler::new(self.assembler_limits());
        let dir = self.root.join(hex(&descriptor.context_id));
        // A directory left by an assembly that expired or failed half-way.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        write_small(&dir, ORIGIN, &origin_bytes(&chunk.origin))?;
        let assembly = Arc::new(Mutex::new(Assembly {
            dir,
            assembler,
            held: BTreeMap::new(),
            len: 0,
            origin: chunk.origin.clone(),
            last_chunk: SystemTime::now(),
            streaming: None,
        }));
        open.insert(descriptor.context_id, Arc::clone(&assembly));
        Ok(assembly)
    }

    fn assembler_limits(&self) -> AssemblyLimits {
        assembler_limits(&self.limits)
    }

    /// Verifies the digest (reading `data` back in layer order), puts the
    /// chunks in index order, and renames the file into the store.
    fn complete(
        &self,
        assembly: &mut Assembly,
        context_id: &[u8; 16],
    ) -> Result<StoredContext, AssemblyError> {
        let data = assembly.dir.join(DATA);
        let in_order = assembly
            .held
            .values()
            .zip(assembly.held.values().skip(1))
            .all(|(a, b)| a.offset + a.len == b.offset);
        let verified = match assembly.streaming.take() {
            Some((next, verifier)) if next == assembly.held.len() as u32 => {
                verifier.finish().map_err(AssemblyError::Digest)
            }
            _ => verify_digest(&data, &assembly.held, &assembly.assembler),
        };
        if let Err(err) = verified {
            self.discard(context_id, assembly);
            return Err(err);
        }
        let ordered = if in_order {
            data
        } else {
            let ordered = assembly.dir.join("ordered");
            copy_in_order(&data, &ordered, &assembly.held)?;
            ordered
        };
        let context = StoredContext {
            id: new_id(),
            session_id: assembly.origin.session_id.clone(),
            source_agent_id: assembly.origin.source_agent_id.clone(),
            target_agent_id: assembly.origin.target_agent_id.clone(),
            client_identity: assembly.origin.client_identity.clone(),
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: false,
            // A chunked context is not a delta base (AVP-HTTP-102 indexes
            // single-message contexts only): hashing it again would cost a
            // second pass over gigabytes.
            kv_prefix: None,
            kv_boundary: None,
        };
        let stored = self.store.adopt_file(context, &ordered)?;
        write_small(&assembly.dir, DONE, &done_bytes(&stored.id))?;
        let _ = fs::remove_file(assembly.dir.join(INDEX));
        let _ = fs::remove_file(assembly.dir.join(DATA));
        lock(&self.open).remove(context_id);
        self.held_bytes.fetch_sub(assembly.len, Ordering::SeqCst);
        assembly.len = 0;
        lock(&self.done).insert(*context_id, (stored.id.clone(), SystemTime::now()));
        Ok(stored)
    }

    /// Drops an assembly and its files (the caller holds its lock).
    fn discard(&self, context_id: &[u8; 16], assembly: &mut Assembly) {
        lock(&self.open).remove(context_id);
        self.forget(assembly);
    }

    fn forget(&self, assembly: &mut Assembly) {
        self.held_bytes.fetch_sub(assembly.len, Ordering::SeqCst);
        assembly.len = 0;
        let _ = fs::remove_dir_all(&assembly.dir);
    }

    /// Deletes assemblies with no chunk for the TTL and completion records
    /// older than it (AVP-HTTP-92).
    pub fn expire(&self) {
        let now = SystemTime::now();
        let old = |at: SystemTime| now.duration_since(at).unwrap_or_default() > self.limits.ttl;
        // An assembly busy with a chunk is not idle (try_lock): the files
        // go while its lock is held, so no chunk is appended meanwhile.
        let idle = {
            let mut open = lock(&self.open);
            open.retain(|_, assembly| match assembly.try_lock() {
                Ok(mut assembly) if old(assembly.last_chunk) => {
                    self.forget(&mut assembly);
                    false
                }
                _ => true,
            });
            open.is_empty()
        };
        if idle {
            // No context left to assemble: no spare chunk buffer either (AVP-HTTP-110).
            lock(&self.spare).clear();
        }
        let finished: Vec<[u8; 16]> = lock(&self.done)
            .iter()
            .filter(|(_, (_, at))| old(*at))
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            lock(&self.done).remove(&id);
            let _ = fs::remove_dir_all(self.root.join(hex(&id)));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent (single updates).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A context id as 32 lowercase hex digits.
pub fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 lowercase hex digits as a context id.
pub fn parse_context_id(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// One `index` line: what the assembler needs of the chunk (its
/// [`ChunkInfo`]) and where it is, so a restart rebuilds the assembly
/// without reading `data`:
/// `<offset> <len> <layers_at> <kv header hex> <payload_len> <crc32> <descriptor>`.
fn index_line(held: &Held, info: &ChunkInfo) -> String {
    let header: String = info
        .header
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{} {} {} {header} {} {} {}\n",
        held.offset,
        held.len,
        held.layers_at,
        info.payload_len,
        info.payload_crc32,
        info.descriptor.to_extra_value()
    )
}

fn parse_index_line(line: &[u8]) -> Option<(Held, ChunkInfo)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    let mut number = || parts.next()?.parse::<u64>().ok();
    let held = Held {
        offset: number()?,
        len: number()?,
        layers_at: number()?,
    };
    let header_hex = parts.next()?;
    let payload_len = parts.next()?.parse().ok()?;
    let crc = parts.next()?.parse().ok()?;
    let descriptor = ChunkDescriptor::parse_extra_value(parts.next()?).ok()?;
    if parts.next().is_some() || header_hex.len() != 2 * KV_HEADER_LEN {
        return None;
    }
    let mut header = [0u8; KV_HEADER_LEN];
    for (i, byte) in header.iter_mut().enumerate() {
        *byte = u8::from_str_radix(header_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let header = KvHeader::parse(&header).ok()?;
    let info = ChunkInfo::new(descriptor, header, payload_len, crc).ok()?;
    Some((held, info))
}

/// Appends the chunk to `data` at `held.offset` (cutting whatever a failed
/// earlier append left), flushes it, then records it in `index` and
/// flushes that: a chunk is in the index only once its bytes are durable.
fn append_chunk(dir: &Path, held: &Held, bytes: &[u8], info: &ChunkInfo) -> io::Result<()> {
    let mut data = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(DATA))?;
    data.set_len(held.offset)?;
    data.seek(SeekFrom::Start(held.offset))?;
    data.write_all(bytes)?;
    data.sync_data()?;
    drop_cached(&data, held.offset, bytes.len() as u64);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(INDEX))?;
    file.write_all(index_line(held, info).as_bytes())?;
    file.sync_data()?;
    Ok(())
}

/// Lets the kernel drop the pages of a flushed chunk from the page cache
/// (AVP-HTTP-110): the next chunk then reuses those pages instead of taking
/// fresh ones, which on a virtual machine cost more CPU to fill than the
/// copy itself (perf: 57 % of the receiver in `copy_folio_from_iter_atomic`).
/// Advice only: failing changes nothing.
fn drop_cached(file: &fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::fs::fadvise(
            file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Rebuilds an assembly from its directory after a restart: the index
/// lines whose chunks are wholly in `data`, in the order they were
/// appended; a torn last line or a chunk cut short ends the list, and
/// `data` and `index` are cut to what was kept.
fn recover(dir: &Path, limits: &ChunkLimits) -> io::Result<Option<Assembly>> {
    let origin = read_origin(&dir.join(ORIGIN)).unwrap_or_default();
    let data_path = dir.join(DATA);
    let Ok(data_len) = fs::metadata(&data_path).map(|m| m.len()) else {
        return Ok(None);
    };
    let mut assembler = Assembler::new(assembler_limits(limits));
    let mut held = BTreeMap::new();
    let mut lines = String::new();
    let mut end = 0u64;
    if let Ok(file) = fs::File::open(dir.join(INDEX)) {
        let reader = io::BufReader::new(file.take(MAX_INDEX_BYTES));
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let Some((entry, info)) = parse_index_line(&line) else {
                break;
            };
            // Appends are sequential: each chunk starts where the last ended.
            let fits = entry.offset == end
                && entry
                    .offset
                    .checked_add(entry.len)
                    .is_some_and(|e| e <= data_len);
            if !fits || assembler.add(&info) != Ok(Added::New) {
                break;
            }
            end = entry.offset + entry.len;
            lines.push_str(&index_line(&entry, &info));
            held.insert(info.descriptor.index, entry);
        }
    }
    if held.is_empty() {
        return Ok(None);
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&data_path)?
        .set_len(end)?;
    write_small(dir, INDEX, lines.as_bytes())?;
    Ok(Some(Assembly {
        dir: dir.to_path_buf(),
        assembler,
        held,
        len: end,
        origin,
        // The TTL restarts: the sender may be resuming right now.
        last_chunk: SystemTime::now(),
        streaming: None,
    }))
}

fn assembler_limits(limits: &ChunkLimits) -> AssemblyLimits {
    AssemblyLimits {
        max_chunks: limits.max_chunks,
        ..AssemblyLimits::DEFAULT
    }
}

/// Feeds the chunk's layer bytes to the running digest when it is the next
/// in index order (starting it at chunk 0 when that is the first chunk
/// held); drops the running digest otherwise.
fn stream_digest(
    streaming: &mut Option<(u32, DigestVerifier)>,
    first: bool,
    chunk: &IncomingChunk,
) {
    let index = chunk.info.descriptor.index;
    if first {
        let header = chunk.info.descriptor.context_header(&chunk.info.header);
        *streaming = DigestVerifier::new(&header, chunk.info.descriptor.context_digest)
            .ok()
            .map(|verifier| (0, verifier));
    }
    let layers = chunk.bytes.get(chunk.layers_at..).unwrap_or_default();
    *streaming = match streaming.take() {
        Some((next, mut verifier)) if next == index => {
            verifier.update(layers).ok().map(|()| (next + 1, verifier))
        }
        _ => None,
    };
}

/// Streams every chunk's layer bytes from `data`, in index order, through
/// the codec's digest check (AVP-CHK-5): bounded memory whatever the size.
fn verify_digest(
    data: &Path,
    held: &BTreeMap<u32, Held>,
    assembler: &Assembler,
) -> Result<(), AssemblyError> {
    let mut verifier = assembler.verifier().map_err(AssemblyError::Invalid)?;
    let mut file = fs::File::open(data)?;
    let mut buf = vec![0u8; 4 << 20];
    for h in held.values() {
        file.seek(SeekFrom::Start(h.offset + h.layers_at))?;
        let mut rest = h.len.saturating_sub(h.layers_at);
        while rest > 0 {
            let want = rest.min(buf.len() as u64) as usize;
            let part = buf.get_mut(..want).unwrap_or_default();
            file.read_exact(part)?;
            verifier.update(part).map_err(AssemblyError::Digest)?;
            rest -= want as u64;
        }
    }
    verifier.finish().map_err(AssemblyError::Digest)
}

/// Writes the chunks of `data` into `out` in index order (chunks that
/// arrived out of order), flushed.
fn copy_in_order(data: &Path, out: &Path, held: &BTreeMap<u32, Held>) -> io::Result<()> {
    let mut from = fs::File::open(data)?;
    let mut to = fs::File::create(out)?;
    for h in held.values() {
        from.seek(SeekFrom::Start(h.offset))?;
        let copied = io::copy(&mut (&mut from).take(h.len), &mut to)?;
        if copied != h.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "assembly data shorter than its index",
            ));
        }
    }
    to.sync_all()
}

/// temp + write + fsync + rename of a small file in `dir`.
fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(name))
}

fn read_small(path: &Path) -> Option<Value> {
    let file = fs::File::open(path).ok()?;
    let mut raw = Vec::new();
    file.take(MAX_SMALL_FILE).read_to_end(&mut raw).ok()?;
    avp_json::parse(&raw).ok()
}

fn origin_bytes(origin: &Origin) -> Vec<u8> {
    let identity = match &origin.client_identity {
        Some(identity) => Value::from(identity.as_str()),
        None => Value::Null,
    };
    let value = Object::new()
        .with("session_id", origin.session_id.as_str())
        .with("source_agent_id", origin.source_agent_id.as_str())
        .with("target_agent_id", origin.target_agent_id.as_str())
        .with("client_identity", identity);
    avp_json::to_string(&value.into(), WriteOptions::CANONICAL)
        .unwrap_or_default()
        .into_bytes()
}

fn read_origin(path: &Path) -> Option<Origin> {
    let value = read_small(path)?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(Origin {
        session_id: text("session_id"),
        source_agent_id: text("source_agent_id"),
        target_agent_id: text("target_agent_id"),
        client_identity: value
            .get("client_identity")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn done_bytes(id: &str) -> Vec<u8> {
    let value = Object::new().with("request_id", id);
    avp_json::to_string(&value.into(), WriteOptions::CANONICAL)
        .unwrap_or_default()
        .into_bytes()
}

fn read_done(dir: &Path) -> Option<(String, SystemTime)> {
    let path = dir.join(DONE);
    let at = fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let value = read_small(&path)?;
    let id = value.get("request_id").and_then(Value::as_str)?.to_owned();
    Some((id, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use avp_codec::Metadata;
    use avp_codec::chunk::split_payload;
    use avp_codec::kv::KvDtype;

    const CONTEXT: [u8; 16] = [0x42; 16];

    /// A KV v1 context of `layers` layers of 2x2x4 float32 values.
    fn payload(layers: u32, salt: u8) -> Vec<u8> {
        let header = KvHeader {
            num_layers: layers,
            num_kv_heads: 2,
            head_dim: 4,
            seq_len: 2,
            dtype: KvDtype::Float32,
        };
        let mut out = header.to_bytes().to_vec();
        let n = header.total_bytes().expect("size") as usize - KV_HEADER_LEN;
        out.extend((0..n).map(|i| (i * 7 % 251) as u8 ^ salt));
        out
    }

    fn chunk_messages(layers: u32, count: u32) -> Vec<Vec<u8>> {
        let base = Metadata::new().with_target_agent_id("b");
        split_payload(&payload(layers, 0), count, &base, CONTEXT).expect("split")
    }

    fn incoming(bytes: &[u8]) -> IncomingChunk {
        let (info, layers_at) = crate::wire::check_chunk(bytes, None)
            .expect("valid")
            .expect("a chunk");
        IncomingChunk {
            bytes: Bytes::copy_from_slice(bytes),
            info,
            layers_at,
            origin: Origin {
                target_agent_id: "b".into(),
                ..Origin::default()
            },
        }
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, Arc<ContextStore>, Assemblies) {
        let dir = Dir(std::env::temp_dir().join(format!("avp-assembly-{tag}-{}", new_id())));
        let store = Arc::new(ContextStore::open(&dir.0, Duration::from_secs(60)).expect("store"));
        let assemblies =
            Assemblies::open(Arc::clone(&store), ChunkLimits::default()).expect("assemblies");
        (dir, store, assemblies)
    }

    /// AVP-HTTP-90, AVP-HTTP-91: chunks arriving 2, 0, 1 are appended as they
    /// come; on completion the digest is checked from disk and the stored
    /// file holds the chunks in index order, and nothing is visible before.
    #[test]
    fn http_90_91_chunks_out_of_order_are_stored_in_index_order_and_verified_from_disk() {
        let (_dir, store, assemblies) = setup("order");
        let chunks = chunk_messages(6, 3);
        for (n, index) in [2usize, 0].into_iter().enumerate() {
            let added = assemblies.add(incoming(&chunks[index])).expect("added");
            assert_eq!((added.held, added.request_id), (n as u32 + 1, None));
            assert!(store.list().is_empty(), "nothing visible before the end");
        }
        assert_eq!(assemblies.status(&CONTEXT).held, vec![0, 2]);
        let last = assemblies.add(incoming(&chunks[1])).expect("completes");
        let stored = last.stored.expect("stored");
        let (_, bytes) = store.get(&stored.id).expect("read").expect("present");
        assert_eq!(bytes.to_vec(), chunks.concat(), "index order");
        assert_eq!(
            assemblies.status(&CONTEXT).request_id,
            Some(stored.id.clone())
        );
        assert_eq!(assemblies.in_progress(), (0, 0));
        // A late copy of a chunk of the stored context: a duplicate.
        let again = assemblies.add(incoming(&chunks[0])).expect("duplicate");
        assert!(again.duplicate);
        assert_eq!(again.request_id, Some(stored.id));
    }

    /// AVP-HTTP-110: chunks of 2 MiB (hashed beside the write) arriving in
    /// order are stored intact from the running digest; while the context
    /// is open the next chunk gets the buffer a written chunk left (the same
    /// memory, not a new allocation), and once it is stored no spare
    /// buffer is kept.
    #[test]
    fn http_110_chunk_buffers_are_reused_while_a_context_is_open_and_hashed_beside_the_write() {
        let (_dir, store, assemblies) = setup("reuse");
        let header = KvHeader {
            num_layers: 3,
            num_kv_heads: 8,
            head_dim: 128,
            seq_len: 256,
            dtype: KvDtype::Float32,
        };
        let mut context = header.to_bytes().to_vec();
        let n = header.total_bytes().expect("size") as usize - KV_HEADER_LEN;
        context.extend((0..n).map(|i| (i % 253) as u8));
        let base = Metadata::new().with_target_agent_id("b");
        let chunks = split_payload(&context, 3, &base, CONTEXT).expect("split");
        assert!(chunks.iter().all(|c| c.len() >= PARALLEL_DIGEST_BYTES));
        let mut previous: Option<*const u8> = None;
        let mut last = None;
        for chunk in &chunks {
            // The buffer the receiver reads the next chunk into.
            let mut buf = assemblies.spare_buffer();
            match previous {
                None => assert_eq!(buf.capacity(), 0, "no spare before the first chunk"),
                Some(written) => {
                    assert_eq!(
                        buf.as_ptr(),
                        written,
                        "the written chunk's buffer comes back"
                    );
                    assert!(buf.is_empty() && buf.capacity() >= chunk.len());
                }
            }
            buf.reserve(chunk.len());
            let at = buf.as_ptr();
            buf.extend_from_slice(chunk);
            assert_eq!(buf.as_ptr(), at, "filled in place");
            previous = Some(at);
            let mut incoming = incoming(chunk);
            incoming.bytes = buf.freeze();
            last = Some(assemblies.add(incoming).expect("added"));
        }
        let stored = last.and_then(|a| a.stored).expect("stored");
        let (_, bytes) = store.get(&stored.id).expect("read").expect("present");
        assert_eq!(bytes.to_vec(), chunks.concat());
        assert_eq!(
            assemblies.spare_buffer().capacity(),
            0,
            "an idle receiver keeps none"
        );
    }

    /// AVP-HTTP-91: chunks whose bytes do not hash to the declared digest
    /// are discarded with `context_digest_mismatch`; nothing is stored.
    #[test]
    fn http_91_a_digest_mismatch_discards_the_assembly() {
        let (_dir, store, assemblies) = setup("digest");
        let good = chunk_messages(4, 2);
        // The same context id and digest, other layer bytes in chunk 1.
        let base = Metadata::new().with_target_agent_id("b");
        let other = split_payload(&payload(4, 0x5a), 2, &base, CONTEXT).expect("split");
        let mut forged = incoming(&other[1]);
        forged.info.descriptor.context_digest = incoming(&good[0]).info.descriptor.context_digest;
        assemblies.add(incoming(&good[0])).expect("first");
        match assemblies.add(forged) {
            Err(AssemblyError::Digest(err)) => {
                assert_eq!(err.kind(), avp_codec::ErrorKind::ContextDigestMismatch)
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        assert!(store.list().is_empty());
        assert_eq!(assemblies.status(&CONTEXT).held, Vec::<u32>::new());
        assert_eq!(assemblies.in_progress(), (0, 0));
    }

    /// AVP-HTTP-92: after a crash the index lines whose chunks are wholly on
    /// disk are kept; a torn last line and bytes past the last chunk are
    /// dropped, and the sender's resumption completes the context.
    #[test]
    fn http_92_a_torn_index_line_and_a_half_written_chunk_are_dropped_on_restart() {
        let (dir, store, assemblies) = setup("recover");
        let chunks = chunk_messages(6, 3);
        assemblies.add(incoming(&chunks[0])).expect("chunk 0");
        assemblies.add(incoming(&chunks[1])).expect("chunk 1");
        drop(assemblies);
        let folder = dir.0.join(ASSEMBLY_DIR).join(hex(&CONTEXT));
        // A crash in the middle of chunk 2: half its bytes, half its line.
        let mut data = fs::OpenOptions::new()
            .append(true)
            .open(folder.join(DATA))
            .expect("data");
        data.write_all(&chunks[2][..chunks[2].len() / 2])
            .expect("half");
        let mut index = fs::OpenOptions::new()
            .append(true)
            .open(folder.join(INDEX))
            .expect("index");
        index.write_all(b"999 12").expect("torn line");
        drop((data, index));
        let assemblies =
            Assemblies::open(Arc::clone(&store), ChunkLimits::default()).expect("reopen");
        assert_eq!(assemblies.status(&CONTEXT).held, vec![0, 1]);
        let held_bytes = (chunks[0].len() + chunks[1].len()) as u64;
        assert_eq!(assemblies.in_progress(), (1, held_bytes), "cut back");
        let last = assemblies.add(incoming(&chunks[2])).expect("resumed");
        let stored = last.stored.expect("complete");
        let (_, bytes) = store.get(&stored.id).expect("read").expect("present");
        assert_eq!(bytes.to_vec(), chunks.concat());
    }
}
