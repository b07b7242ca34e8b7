//! Sessions with a time-to-live (AVP-HS-13), sans-I/O: every call that
//! depends on time takes `now` (a [`Duration`] since any fixed epoch the
//! caller chooses), so tests drive the clock.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::Error;
use crate::identity::ModelIdentity;
use crate::resolve::Mode;

/// The SDK's default TTL: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// A negotiated session.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// Session id.
    pub session_id: String,
    /// Participating agent ids.
    pub agents: Vec<String>,
    /// agent id → identity.
    pub identities: Vec<(String, ModelIdentity)>,
    /// Negotiated mode.
    pub mode: Mode,
    /// Creation time.
    pub created_at: Duration,
    /// Time to live.
    pub ttl: Duration,
}

impl Session {
    /// Expired strictly after `created_at + ttl`, as in the SDK.
    pub fn is_expired(&self, now: Duration) -> bool {
        now > self.created_at.saturating_add(self.ttl)
    }
}

/// Session store with expiry. Not internally locked: wrap it in a `Mutex`
/// to share it (the SDK's is always locked).
#[derive(Clone, Debug)]
pub struct SessionManager {
    sessions: HashMap<String, Session>,
    default_ttl: Duration,
}

impl Default for SessionManager {
    fn default() -> Self {
        Self::new(DEFAULT_TTL)
    }
}

impl SessionManager {
    /// An empty store whose sessions live `default_ttl` unless told otherwise.
    pub fn new(default_ttl: Duration) -> Self {
        Self {
            sessions: HashMap::new(),
            default_ttl,
        }
    }

    /// Stores a new session. An id already present (expired or not) is a
    /// caller error: ids come from a random source and must not repeat.
    pub fn create(
        &mut self,
        session_id: String,
        agents: Vec<String>,
        identities: Vec<(String, ModelIdentity)>,
        mode: Mode,
        ttl: Option<Duration>,
        now: Duration,
    ) -> Result<&Session, Error> {
        if self.sessions.contains_key(&session_id) {
            return Err(Error::DuplicateSession(session_id));
        }
        let session = Session {
            session_id: session_id.clone(),
            agents,
            identities,
            mode,
            created_at: now,
            ttl: ttl.unwrap_or(self.default_ttl),
        };
        Ok(self.sessions.entry(session_id).or_insert(session))
    }

    /// The session, unless missing or expired (an expired one is removed).
    pub fn get(&mut self, session_id: &str, now: Duration) -> Option<&Session> {
        if self.sessions.get(session_id)?.is_expired(now) {
            self.sessions.remove(session_id);
            return None;
        }
        self.sessions.get(session_id)
    }

    /// Removes a session; true if it existed.
    pub fn invalidate(&mut self, session_id: &str) -> bool {
        self.sessions.remove(session_id).is_some()
    }

    /// Live sessions that include `agent_id`, in id order.
    pub fn find(&self, agent_id: &str, now: Duration) -> Vec<&Session> {
        let mut found: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| !s.is_expired(now) && s.agents.iter().any(|a| a == agent_id))
            .collect();
        found.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        found
    }

    /// Removes every expired session; returns how many.
    pub fn cleanup_expired(&mut self, now: Duration) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| !s.is_expired(now));
        before.saturating_sub(self.sessions.len())
    }

    /// Number of live sessions.
    pub fn active_count(&self, now: Duration) -> usize {
        self.sessions
            .values()
            .filter(|s| !s.is_expired(now))
            .count()
    }
}
