//! The context store: messages an agent received, kept for a time-to-live.
//!
//! In memory by default. With a directory, every message is written to a
//! temporary file, flushed to disk, then renamed into place (and the directory
//! synced), so a crash never leaves a half message under a final name and a
//! restart finds every message that was acknowledged (AVP-HTTP-60, AVP-HTTP-61).
//! Beside each message a sidecar `<id>.meta` (written the same way, before
//! the message) keeps what the server knew about it: session, agents, the
//! mTLS client identity and the arrival time, so a restart forgets nothing
//! (AVP-HTTP-63).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use avp_codec::kv_quant::{PREFIX_ADDRESS_LEN, PrefixAddress};
use avp_json::{Object, Value, WriteOptions};
use bytes::Bytes;

use crate::wire::{Status, routing_status};

/// File extension of stored AVP messages.
const EXTENSION: &str = "avp";
/// File extension of stored JSON fallback messages.
const TEXT_EXTENSION: &str = "json";
/// File extension of the metadata sidecars.
const META_EXTENSION: &str = "meta";
/// Prefix of temporary files; they are removed when a store is opened.
const TEMP_PREFIX: &str = ".incoming-";
/// Largest sidecar read back (they are a few hundred bytes).
const MAX_SIDECAR: u64 = 64 << 10;

/// One received context.
#[derive(Debug, Clone)]
pub struct StoredContext {
    /// The id the server answered with (`request_id`).
    pub id: String,
    /// Metadata `session_id`.
    pub session_id: String,
    /// Metadata `source_agent_id`.
    pub source_agent_id: String,
    /// Metadata `target_agent_id`.
    pub target_agent_id: String,
    /// The sender's client certificate identity under mutual TLS
    /// (`sha256:<hex>`, AVP-HTTP-74).
    pub client_identity: Option<String>,
    /// Length of the whole message in bytes.
    pub len: u64,
    /// When it was received (from the sidecar after a restart).
    pub received_at: SystemTime,
    /// Where the bytes are: the file, when the store has a directory.
    pub path: Option<PathBuf>,
    /// A JSON fallback message (stored as `<id>.json`) rather than an AVP message (`<id>.avp`).
    pub text: bool,
    /// For a KV context: the prefix address of all its positions
    /// (AVP-KVD-1), under which the store indexes it (AVP-HTTP-102).
    pub kv_prefix: Option<PrefixAddress>,
    /// For a KV context assembled from a delta on `[0, p)`: `p` and the
    /// delta's verified address of `[0, p)`, also indexed so that a later
    /// delta on that boundary finds this context (AVP-HTTP-120).
    pub kv_boundary: Option<(u32, PrefixAddress)>,
}

/// How a context was found in the prefix index (AVP-HTTP-120).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexedAs {
    /// Under the address of all its positions.
    Whole,
    /// Under the address of its first `p` positions (a delta boundary).
    Boundary(u32),
}

/// Default bound on prefix-index entries (AVP-HTTP-121): about 100 bytes
/// each, so 6.5 MB at most.
pub const DEFAULT_INDEX_CAPACITY: usize = 65_536;

struct Entry {
    context: StoredContext,
    bytes: Option<Bytes>,
}

/// Prefix address -> the newest context whose positions `[0, p)` have it.
/// At most two entries per context (all its positions, and its delta
/// boundary), at most `capacity` in all: the oldest entries leave first
/// (their contexts stay stored, only no longer found as bases).
struct PrefixIndex {
    capacity: usize,
    map: HashMap<PrefixAddress, (String, IndexedAs)>,
    /// Insertion order for eviction; entries whose address now points to
    /// another context are stale and skipped (compacted when it doubles).
    order: VecDeque<(PrefixAddress, String)>,
}

impl PrefixIndex {
    fn new(capacity: usize) -> Self {
        PrefixIndex {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, address: PrefixAddress, id: &str, how: IndexedAs) {
        if self.capacity == 0 {
            return;
        }
        self.map.insert(address, (id.to_owned(), how));
        self.order.push_back((address, id.to_owned()));
        while self.map.len() > self.capacity {
            let Some((old, old_id)) = self.order.pop_front() else {
                break;
            };
            self.remove(&old, &old_id);
        }
        if self.order.len() > 2 * self.capacity.max(16) {
            let map = &self.map;
            self.order
                .retain(|(a, id)| map.get(a).is_some_and(|(held, _)| held == id));
        }
    }

    /// Drops `address` if it still points to `id` (a newer context keeps it).
    fn remove(&mut self, address: &PrefixAddress, id: &str) {
        if self.map.get(address).is_some_and(|(held, _)| held == id) {
            self.map.remove(address);
        }
    }
}

/// The entries and the prefix index, under one lock so they never disagree.
struct Entries {
    by_id: HashMap<String, Entry>,
    by_prefix: PrefixIndex,
}

impl Entries {
    fn new(capacity: usize) -> Self {
        Entries {
            by_id: HashMap::new(),
            by_prefix: PrefixIndex::new(capacity),
        }
    }

    fn insert(&mut self, entry: Entry) {
        let id = &entry.context.id;
        if let Some(address) = entry.context.kv_prefix {
            self.by_prefix.insert(address, id, IndexedAs::Whole);
        }
        if let Some((p, address)) = entry.context.kv_boundary {
            self.by_prefix.insert(address, id, IndexedAs::Boundary(p));
        }
        self.by_id.insert(entry.context.id.clone(), entry);
    }
}

/// A TTL-bounded store of received messages.
pub struct ContextStore {
    dir: Option<PathBuf>,
    ttl: Duration,
    entries: Mutex<Entries>,
}

impl ContextStore {
    /// A store that keeps messages in memory only.
    pub fn in_memory(ttl: Duration) -> Self {
        Self {
            dir: None,
            ttl,
            entries: Mutex::new(Entries::new(DEFAULT_INDEX_CAPACITY)),
        }
    }

    /// The same store with its prefix index bounded to `capacity` entries
    /// (AVP-HTTP-121; 0 indexes nothing). Entries already there are indexed
    /// again, oldest first, so the newest `capacity` stay.
    pub fn with_index_capacity(self, capacity: usize) -> Self {
        let mut entries = self.entries.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Entry> = entries.by_id.drain().map(|(_, e)| e).collect();
        all.sort_by(|a, b| {
            (a.context.received_at, &a.context.id).cmp(&(b.context.received_at, &b.context.id))
        });
        let mut fresh = Entries::new(capacity);
        for entry in all {
            fresh.insert(entry);
        }
        Self {
            dir: self.dir,
            ttl: self.ttl,
            entries: Mutex::new(fresh),
        }
    }

    /// A store backed by `dir` (created if missing). Finishes what a crash left:
    /// temporary files and sidecars without their message are deleted,
    /// complete messages are indexed again with their metadata.
    pub fn open(dir: &Path, ttl: Duration) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let orphan = name
                .strip_suffix(".meta")
                .is_some_and(|id| !message_exists(dir, id));
            if name.starts_with(TEMP_PREFIX) || orphan {
                fs::remove_file(item.path())?;
            }
        }
        let mut entries = Entries::new(DEFAULT_INDEX_CAPACITY);
        for context in Self::scan(dir)? {
            entries.insert(Entry {
                context,
                bytes: None,
            });
        }
        let store = Self {
            dir: Some(dir.to_path_buf()),
            ttl,
            entries: Mutex::new(entries),
        };
        store.evict_expired();
        Ok(store)
    }

    /// Every complete message in `dir` with its metadata, oldest first,
    /// without changing anything (what `avp store ls` shows). Metadata comes
    /// from the sidecar; a message without one (written before sidecars
    /// existed) is described from its own header and metadata.
    pub fn scan(dir: &Path) -> io::Result<Vec<StoredContext>> {
        let mut found = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let (id, text) = match (name.strip_suffix(".avp"), name.strip_suffix(".json")) {
                (Some(id), _) => (id, false),
                (None, Some(id)) => (id, true),
                (None, None) => continue,
            };
            if !is_valid_id(id) {
                continue;
            }
            let meta = item.metadata()?;
            let mut context = StoredContext {
                id: id.to_owned(),
                session_id: String::new(),
                source_agent_id: String::new(),
                target_agent_id: String::new(),
                client_identity: None,
                len: meta.len(),
                received_at: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                path: Some(item.path()),
                text,
                kv_prefix: None,
                kv_boundary: None,
            };
            let sidecar = dir.join(format!("{id}.{META_EXTENSION}"));
            if !read_sidecar(&sidecar, &mut context) {
                // Best effort: an unreadable message keeps empty fields.
                let _ = describe_from_message(&item.path(), &mut context);
            }
            found.push(context);
        }
        found.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(found)
    }

    /// The directory, when the store has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Stores a complete message. With a directory this blocks on disk I/O
    /// (call it from a blocking context); it returns only once the message is
    /// durable.
    pub fn put(&self, mut context: StoredContext, bytes: Bytes) -> io::Result<StoredContext> {
        if !is_valid_id(&context.id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid context id",
            ));
        }
        self.evict_expired();
        context.len = bytes.len() as u64;
        let kept = match &self.dir {
            Some(dir) => {
                let extension = if context.text {
                    TEXT_EXTENSION
                } else {
                    EXTENSION
                };
                // Sidecar first: a message on disk always has its metadata.
                write_atomically(
                    dir,
                    &format!("{}-meta", context.id),
                    &format!("{}.{META_EXTENSION}", context.id),
                    &sidecar_bytes(&context),
                    false,
                )?;
                let path = write_atomically(
                    dir,
                    &context.id,
                    &format!("{}.{extension}", context.id),
                    &bytes,
                    true,
                )?;
                context.path = Some(path);
                None
            }
            None => Some(bytes),
        };
        self.lock().insert(Entry {
            context: context.clone(),
            bytes: kept,
        });
        Ok(context)
    }

    /// The stored message with this id and its bytes, unless it expired.
    pub fn get(&self, id: &str) -> io::Result<Option<(StoredContext, Bytes)>> {
        self.evict_expired();
        let found = self
            .lock()
            .by_id
            .get(id)
            .map(|e| (e.context.clone(), e.bytes.clone()));
        Self::with_bytes(found)
    }

    /// The newest live KV context indexed under `address` (all its
    /// positions, or a delta boundary inside it), how, and its bytes: one
    /// hash-map lookup (AVP-HTTP-102, AVP-HTTP-120).
    pub fn find_prefix(
        &self,
        address: &PrefixAddress,
    ) -> io::Result<Option<(StoredContext, IndexedAs, Bytes)>> {
        self.evict_expired();
        let found = {
            let entries = self.lock();
            entries.by_prefix.map.get(address).and_then(|(id, how)| {
                let e = entries.by_id.get(id)?;
                Some(((e.context.clone(), *how), e.bytes.clone()))
            })
        };
        let Some(((context, how), bytes)) = found else {
            return Ok(None);
        };
        Ok(Self::with_bytes(Some((context, bytes)))?.map(|(c, b)| (c, how, b)))
    }

    /// Prefix-index entries now (for tests and metrics).
    pub fn indexed_prefixes(&self) -> usize {
        self.evict_expired();
        self.lock().by_prefix.map.len()
    }

    fn with_bytes(
        found: Option<(StoredContext, Option<Bytes>)>,
    ) -> io::Result<Option<(StoredContext, Bytes)>> {
        match found {
            None => Ok(None),
            Some((context, Some(bytes))) => Ok(Some((context, bytes))),
            Some((context, None)) => {
                let path = context.path.clone().unwrap_or_default();
                let bytes = Bytes::from(fs::read(path)?);
                Ok(Some((context, bytes)))
            }
        }
    }

    /// Every live entry, oldest first.
    pub fn list(&self) -> Vec<StoredContext> {
        self.evict_expired();
        let mut all: Vec<_> = self
            .lock()
            .by_id
            .values()
            .map(|e| e.context.clone())
            .collect();
        all.sort_by_key(|c| c.received_at);
        all
    }

    /// Drops entries older than the TTL (and their files).
    pub fn evict_expired(&self) {
        let now = SystemTime::now();
        let mut guard = self.lock();
        let entries = &mut *guard;
        let by_prefix = &mut entries.by_prefix;
        entries.by_id.retain(|id, entry| {
            let age = now
                .duration_since(entry.context.received_at)
                .unwrap_or_default();
            let keep = age <= self.ttl;
            if !keep {
                if let Some(path) = &entry.context.path {
                    // A file already gone is what we wanted anyway.
                    let _ = fs::remove_file(path);
                    let _ = fs::remove_file(path.with_extension(META_EXTENSION));
                }
                if let Some(address) = &entry.context.kv_prefix {
                    by_prefix.remove(address, id);
                }
                if let Some((_, address)) = &entry.context.kv_boundary {
                    by_prefix.remove(address, id);
                }
            }
            keep
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A poisoned lock only means another request panicked mid-insert; the
        // map itself is still consistent (inserts are single operations).
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ids are lowercase hex (we make them); anything else could escape the directory.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// temp file + write + fsync + rename (+ fsync(dir) when `sync_dir`) (AVP-HTTP-60).
fn write_atomically(
    dir: &Path,
    temp_tag: &str,
    name: &str,
    bytes: &[u8],
    sync_dir: bool,
) -> io::Result<PathBuf> {
    let temp = dir.join(format!("{TEMP_PREFIX}{temp_tag}"));
    let fin = dir.join(name);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &fin)?;
        if sync_dir {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| fin)
}

fn message_exists(dir: &Path, id: &str) -> bool {
    dir.join(format!("{id}.{EXTENSION}")).is_file()
        || dir.join(format!("{id}.{TEXT_EXTENSION}")).is_file()
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The sidecar: one JSON object with the fields of [`StoredContext`] that
/// the message file does not give back by itself.
fn sidecar_bytes(context: &StoredContext) -> Vec<u8> {
    let identity = match &context.client_identity {
        Some(identity) => Value::from(identity.as_str()),
        None => Value::Null,
    };
    let value = Object::new()
        .with("id", context.id.as_str())
        .with("session_id", context.session_id.as_str())
        .with("source_agent_id", context.source_agent_id.as_str())
        .with("target_agent_id", context.target_agent_id.as_str())
        .with("client_identity", identity)
        .with("received_at_ms", unix_millis(context.received_at))
        .with("text", context.text)
        .with(
            "kv_prefix",
            context
                .kv_prefix
                .map_or(Value::Null, |a| Value::from(a.to_hex().as_str())),
        )
        .with(
            "kv_boundary",
            context.kv_boundary.map_or(Value::Null, |(p, a)| {
                Object::new()
                    .with("p", u64::from(p))
                    .with("address", a.to_hex().as_str())
                    .into()
            }),
        );
    // Sorted and compact, as serde_json wrote sidecars before.
    avp_json::to_string(&value.into(), WriteOptions::CANONICAL)
        .unwrap_or_default()
        .into_bytes()
}

/// Fills `context` from its sidecar; false when there is none or it is unusable.
fn read_sidecar(path: &Path, context: &mut StoredContext) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let mut raw = Vec::new();
    if io::Read::read_to_end(&mut io::Read::take(file, MAX_SIDECAR), &mut raw).is_err() {
        return false;
    }
    let Ok(Value::Object(map)) = avp_json::parse(&raw) else {
        return false;
    };
    if map.get("id").and_then(Value::as_str) != Some(context.id.as_str()) {
        return false;
    }
    let text = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    context.session_id = text("session_id");
    context.source_agent_id = text("source_agent_id");
    context.target_agent_id = text("target_agent_id");
    context.client_identity = map
        .get("client_identity")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(ms) = map.get("received_at_ms").and_then(Value::as_u64) {
        context.received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    }
    context.kv_prefix = map
        .get("kv_prefix")
        .and_then(Value::as_str)
        .and_then(address_from_hex);
    context.kv_boundary = map.get("kv_boundary").and_then(|b| {
        let p = u32::try_from(b.get("p")?.as_u64()?).ok()?;
        Some((p, address_from_hex(b.get("address")?.as_str()?)?))
    });
    true
}

/// 64 lowercase hex digits -> an address; anything else is no address.
pub(crate) fn address_from_hex(hex: &str) -> Option<PrefixAddress> {
    let hex = hex.as_bytes();
    if hex.len() != 2 * PREFIX_ADDRESS_LEN {
        return None;
    }
    let mut out = [0u8; PREFIX_ADDRESS_LEN];
    let digit = |c: &u8| (*c as char).to_digit(16);
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = u8::try_from(digit(hi)? * 16 + digit(lo)?).ok()?;
    }
    Some(PrefixAddress(out))
}

/// Reads session and agent ids from the message itself: the AVP header and
/// metadata, or the JSON fallback message's fields.
fn describe_from_message(path: &Path, context: &mut StoredContext) -> io::Result<()> {
    let mut file = fs::File::open(path)?;
    if context.text {
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, 4 << 20), &mut raw)?;
        // Python's grammar: what the SDK sent (NaN and all) was stored as sent.
        let value = avp_json::parse(&raw).map_err(io::Error::other)?;
        let field = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        context.session_id = field("session_id");
        context.source_agent_id = field("source_agent_id");
        context.target_agent_id = field("target_agent_id");
        return Ok(());
    }
    // The codec says how many more bytes the header, then the metadata, need;
    // the metadata is bounded by its limit (1 MiB), checked with the header.
    let mut head = Vec::new();
    let routing = loop {
        match routing_status(&head).map_err(|err| io::Error::other(err.message().to_owned()))? {
            Status::Complete(routing) => break routing,
            Status::NeedMore(n) => {
                let got =
                    io::Read::read_to_end(&mut io::Read::take(&mut file, n as u64), &mut head)?;
                if got < n {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "message ends inside its metadata",
                    ));
                }
            }
        }
    };
    context.session_id = routing.session_id;
    context.source_agent_id = routing.source_agent_id;
    context.target_agent_id = routing.target_agent_id;
    Ok(())
}

/// A fresh random id: 16 random bytes as 32 lowercase hex digits.
pub fn new_id() -> String {
    let mut raw = [0u8; 16];
    if getrandom::fill(&mut raw).is_err() {
        // No OS randomness: fall back to time and a counter (ids stay unique).
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        raw[..8].copy_from_slice(&(nanos.as_nanos() as u64).to_le_bytes());
        raw[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Chunked contexts (spec/impl/transport.md AVP-HTTP-91): the assembly
/// module builds a context's file itself and hands it over here whole.
impl ContextStore {
    /// Moves the complete file `file` (in this store's directory tree, so a
    /// rename) into the store as `<id>.avp`: sidecar first, then the rename
    /// and a directory sync, as [`ContextStore::put`] does (AVP-HTTP-60/63).
    pub fn adopt_file(&self, mut context: StoredContext, file: &Path) -> io::Result<StoredContext> {
        let Some(dir) = &self.dir else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a store without a directory cannot adopt a file",
            ));
        };
        if !is_valid_id(&context.id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid context id",
            ));
        }
        self.evict_expired();
        context.len = fs::metadata(file)?.len();
        context.text = false;
        write_atomically(
            dir,
            &format!("{}-meta", context.id),
            &format!("{}.{META_EXTENSION}", context.id),
            &sidecar_bytes(&context),
            false,
        )?;
        let path = dir.join(format!("{}.{EXTENSION}", context.id));
        fs::rename(file, &path)?;
        fs::File::open(dir)?.sync_all()?;
        context.path = Some(path);
        self.lock().insert(Entry {
            context: context.clone(),
            bytes: None,
        });
        Ok(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str) -> StoredContext {
        StoredContext {
            id: id.to_owned(),
            session_id: "s".into(),
            source_agent_id: "a".into(),
            target_agent_id: "b".into(),
            client_identity: Some("sha256:ab".into()),
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: false,
            kv_prefix: None,
            kv_boundary: None,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("avp-store-{tag}-{}", new_id()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn disk_store_survives_reopen_and_cleans_temp_files() {
        let dir = temp_dir("reopen");
        let id = new_id();
        {
            let store = ContextStore::open(&dir, Duration::from_secs(60)).expect("open");
            store
                .put(context(&id), Bytes::from_static(b"AVmessage"))
                .expect("put");
        }
        fs::write(dir.join(format!("{TEMP_PREFIX}deadbeef")), b"half").expect("write temp");
        let store = ContextStore::open(&dir, Duration::from_secs(60)).expect("reopen");
        let (ctx, bytes) = store.get(&id).expect("read").expect("present");
        assert_eq!(&bytes[..], b"AVmessage");
        assert_eq!(ctx.len, 9);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "temp file removed, one message and its sidecar left: {names:?}"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn expired_entries_disappear_with_their_files() {
        let dir = temp_dir("ttl");
        let store = ContextStore::open(&dir, Duration::from_millis(0)).expect("open");
        let id = new_id();
        let mut old = context(&id);
        old.received_at = SystemTime::now() - Duration::from_secs(5);
        let stored = store.put(old, Bytes::from_static(b"x")).expect("put");
        // put() stamps nothing itself: the caller's received_at is kept.
        assert!(store.get(&id).expect("get").is_none());
        assert!(!stored.path.expect("path").exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// AVP-HTTP-63: session, agents, client identity and arrival time come
    /// back after a restart; a message without a sidecar is described from
    /// its own metadata; a sidecar without its message is removed.
    #[test]
    fn http_63_metadata_survives_a_restart() {
        let dir = temp_dir("meta");
        let id = new_id();
        let received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        {
            let store = ContextStore::open(&dir, Duration::from_secs(u64::MAX / 4)).expect("open");
            let mut first = context(&id);
            first.received_at = received_at;
            store
                .put(first, Bytes::from_static(b"AVmessage"))
                .expect("put");
        }
        // A JSON message stored without a sidecar (an older store).
        let old = new_id();
        fs::write(
            dir.join(format!("{old}.json")),
            br#"{"session_id":"s2","source_agent_id":"x","target_agent_id":"y","content":"hi"}"#,
        )
        .expect("write");
        fs::write(dir.join(format!("{}.meta", new_id())), b"{}").expect("orphan");
        let store = ContextStore::open(&dir, Duration::from_secs(u64::MAX / 4)).expect("reopen");
        let (ctx, _) = store.get(&id).expect("read").expect("present");
        assert_eq!(
            (
                ctx.session_id.as_str(),
                ctx.source_agent_id.as_str(),
                ctx.target_agent_id.as_str()
            ),
            ("s", "a", "b")
        );
        assert_eq!(ctx.client_identity.as_deref(), Some("sha256:ab"));
        assert_eq!(ctx.received_at, received_at);
        let (ctx, _) = store.get(&old).expect("read").expect("present");
        assert_eq!((ctx.session_id.as_str(), ctx.text), ("s2", true));
        let metas = fs::read_dir(&dir)
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().ends_with(".meta"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(metas, 1, "the orphan sidecar is gone");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// AVP-HTTP-102: one index entry per live KV context, found in one
    /// lookup, gone with its context, and back after a restart (sidecar).
    #[test]
    fn http_102_prefix_index_is_bounded_and_survives_a_restart() {
        let dir = temp_dir("prefix");
        let address = PrefixAddress([7; 32]);
        let (old_id, new_id_) = (new_id(), new_id());
        {
            let store = ContextStore::open(&dir, Duration::from_secs(60)).expect("open");
            let mut old = context(&old_id);
            old.kv_prefix = Some(address);
            old.received_at = SystemTime::now() - Duration::from_secs(120);
            store.put(old, Bytes::from_static(b"old")).expect("put");
            assert_eq!(
                store.indexed_prefixes(),
                0,
                "expired at once, index entry too"
            );
            let mut fresh = context(&new_id_);
            fresh.kv_prefix = Some(address);
            store.put(fresh, Bytes::from_static(b"new")).expect("put");
            store
                .put(context(&new_id()), Bytes::from_static(b"not kv"))
                .expect("put");
            assert_eq!(store.indexed_prefixes(), 1);
        }
        let store = ContextStore::open(&dir, Duration::from_secs(60)).expect("reopen");
        let (found, how, bytes) = store
            .find_prefix(&address)
            .expect("read")
            .expect("indexed after a restart");
        assert_eq!(
            (found.id.as_str(), how, &bytes[..]),
            (new_id_.as_str(), IndexedAs::Whole, &b"new"[..])
        );
        assert!(
            store
                .find_prefix(&PrefixAddress([8; 32]))
                .expect("read")
                .is_none()
        );
        assert_eq!(address_from_hex(&address.to_hex()), Some(address));
        assert_eq!(address_from_hex("zz"), None);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// AVP-HTTP-120, AVP-HTTP-121: a context assembled from a delta is also found
    /// under its boundary; the index keeps at most its capacity, oldest
    /// entries out first, and comes back the same after a restart.
    #[test]
    fn http_120_121_boundaries_are_indexed_bounded_and_survive_a_restart() {
        let dir = temp_dir("boundary");
        let ids: Vec<String> = (0..3).map(|_| new_id()).collect();
        let base = SystemTime::now() - Duration::from_secs(10);
        {
            let store = ContextStore::open(&dir, Duration::from_secs(600))
                .expect("open")
                .with_index_capacity(3);
            for (i, id) in ids.iter().enumerate() {
                let mut c = context(id);
                c.received_at = base + Duration::from_secs(i as u64);
                c.kv_prefix = Some(PrefixAddress([10 + i as u8; 32]));
                c.kv_boundary = Some((4 + i as u32, PrefixAddress([20 + i as u8; 32])));
                store.put(c, Bytes::from(id.clone())).expect("put");
            }
            assert_eq!(store.indexed_prefixes(), 3, "bounded by the capacity");
            let (found, how, _) = store
                .find_prefix(&PrefixAddress([22; 32]))
                .expect("read")
                .expect("newest boundary kept");
            assert_eq!(
                (found.id.as_str(), how),
                (ids[2].as_str(), IndexedAs::Boundary(6))
            );
            assert!(
                store
                    .find_prefix(&PrefixAddress([10; 32]))
                    .expect("read")
                    .is_none(),
                "the oldest entry left the index"
            );
            assert!(
                store.get(&ids[0]).expect("read").is_some(),
                "but not the store"
            );
        }
        let store = ContextStore::open(&dir, Duration::from_secs(600))
            .expect("reopen")
            .with_index_capacity(3);
        assert_eq!(store.indexed_prefixes(), 3);
        let (found, how, _) = store
            .find_prefix(&PrefixAddress([21; 32]))
            .expect("read")
            .expect("boundary back after a restart");
        assert_eq!(
            (found.id.as_str(), how),
            (ids[1].as_str(), IndexedAs::Boundary(5))
        );
        assert!(
            store
                .find_prefix(&PrefixAddress([20; 32]))
                .expect("read")
                .is_none()
        );
        let unbounded = ContextStore::open(&dir, Duration::from_secs(600)).expect("reopen");
        assert_eq!(unbounded.indexed_prefixes(), 6, "two entries per context");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// AVP-HTTP-62: ids that are not 32 lowercase hex digits are refused.
    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        let store = ContextStore::in_memory(Duration::from_secs(60));
        assert!(store.put(context("../x"), Bytes::new()).is_err());
        assert!(store.put(context(""), Bytes::new()).is_err());
        assert_eq!(new_id().len(), 32);
    }
}
