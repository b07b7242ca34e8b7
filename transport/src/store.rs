//! The context store: messages an agent received, kept for a time-to-live.
//!
//! In memory by default. With a directory, every message is written to a
//! temporary file, flushed to disk, then renamed into place (and the directory
//! synced), so a crash never leaves a half message under a final name and a
//! restart finds every message that was acknowledged (AVP-HTTP-60, AVP-HTTP-61).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// File extension of stored AVP messages.
const EXTENSION: &str = "avp";
/// File extension of stored JSON fallback messages.
const TEXT_EXTENSION: &str = "json";
/// Prefix of temporary files; they are removed when a store is opened.
const TEMP_PREFIX: &str = ".incoming-";

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
    /// Length of the whole message in bytes.
    pub len: u64,
    /// When it was received (file modification time after a restart).
    pub received_at: SystemTime,
    /// Where the bytes are: the file, when the store has a directory.
    pub path: Option<PathBuf>,
    /// A JSON fallback message (stored as `<id>.json`) rather than an AVP message (`<id>.avp`).
    pub text: bool,
}

struct Entry {
    context: StoredContext,
    bytes: Option<Bytes>,
}

/// A TTL-bounded store of received messages.
pub struct ContextStore {
    dir: Option<PathBuf>,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ContextStore {
    /// A store that keeps messages in memory only.
    pub fn in_memory(ttl: Duration) -> Self {
        Self {
            dir: None,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A store backed by `dir` (created if missing). Finishes what a crash left:
    /// temporary files are deleted, complete messages are indexed again.
    pub fn open(dir: &Path, ttl: Duration) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut entries = HashMap::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                fs::remove_file(item.path())?;
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
            let context = StoredContext {
                id: id.to_owned(),
                session_id: String::new(),
                source_agent_id: String::new(),
                target_agent_id: String::new(),
                len: meta.len(),
                received_at: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                path: Some(item.path()),
                text,
            };
            entries.insert(
                id.to_owned(),
                Entry {
                    context,
                    bytes: None,
                },
            );
        }
        let store = Self {
            dir: Some(dir.to_path_buf()),
            ttl,
            entries: Mutex::new(entries),
        };
        store.evict_expired();
        Ok(store)
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
                let path = write_atomically(dir, &context.id, extension, &bytes)?;
                context.path = Some(path);
                None
            }
            None => Some(bytes),
        };
        self.lock().insert(
            context.id.clone(),
            Entry {
                context: context.clone(),
                bytes: kept,
            },
        );
        Ok(context)
    }

    /// The stored message with this id and its bytes, unless it expired.
    pub fn get(&self, id: &str) -> io::Result<Option<(StoredContext, Bytes)>> {
        self.evict_expired();
        let found = self
            .lock()
            .get(id)
            .map(|e| (e.context.clone(), e.bytes.clone()));
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
        let mut all: Vec<_> = self.lock().values().map(|e| e.context.clone()).collect();
        all.sort_by_key(|c| c.received_at);
        all
    }

    /// Drops entries older than the TTL (and their files).
    pub fn evict_expired(&self) {
        let now = SystemTime::now();
        let mut entries = self.lock();
        entries.retain(|_, entry| {
            let age = now
                .duration_since(entry.context.received_at)
                .unwrap_or_default();
            let keep = age <= self.ttl;
            if !keep {
                if let Some(path) = &entry.context.path {
                    // A file already gone is what we wanted anyway.
                    let _ = fs::remove_file(path);
                }
            }
            keep
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
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

/// temp file + write + fsync + rename + fsync(dir) (AVP-HTTP-60).
fn write_atomically(dir: &Path, id: &str, extension: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let temp = dir.join(format!("{TEMP_PREFIX}{id}"));
    let fin = dir.join(format!("{id}.{extension}"));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &fin)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| fin)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str) -> StoredContext {
        StoredContext {
            id: id.to_owned(),
            session_id: "s".into(),
            source_agent_id: "a".into(),
            target_agent_id: "b".into(),
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: false,
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
            1,
            "temp file removed, one message left: {names:?}"
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

    /// AVP-HTTP-62: ids that are not 32 lowercase hex digits are refused.
    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        let store = ContextStore::in_memory(Duration::from_secs(60));
        assert!(store.put(context("../x"), Bytes::new()).is_err());
        assert!(store.put(context(""), Bytes::new()).is_err());
        assert_eq!(new_id().len(), 32);
    }
}
