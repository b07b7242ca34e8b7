//! The memory budget (AVP-HTTP-17): message bytes all requests together may
//! buffer, taken as the bytes arrive (never as a peer declares them) and
//! capped per peer (its client certificate under mutual TLS, else its
//! address), so a slow or greedy peer can only ever stall its own requests.
//!
//! A request that finds the budget (or its peer's share) full waits, which
//! stops reading its body and pushes back through TCP; the wait is bounded by
//! the request's deadline (AVP-HTTP-18). Partly received messages can wait
//! on each other: when every request holding bytes (in all, or of one peer)
//! is waiting for more, none could ever finish, so the youngest of them
//! gives up (503 `server_busy`) and the oldest proceed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Why bytes could not be taken before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Starved {
    /// The peer's own share was full: its own requests are in the way.
    PeerShare,
    /// The whole budget was full (other peers' messages in flight).
    Budget,
}

/// The unit of the per-peer share (AVP-HTTP-17).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    /// The source address.
    Addr(IpAddr),
    /// The mutual-TLS client identity (`sha256:<hex>`): one credential,
    /// whatever addresses it connects from.
    Cert(Arc<str>),
}

#[derive(Default)]
struct State {
    used: u64,
    peers: HashMap<PeerKey, u64>,
    /// Requests holding bytes: id → (peer, waiting for more). Ids grow with
    /// age, so the largest id is the youngest request.
    holders: BTreeMap<u64, (PeerKey, bool)>,
    next_id: u64,
}

impl State {
    /// True when `me` is the youngest of a set of holders that all wait:
    /// every holder in all, or, when it is its peer's share that is full,
    /// every holder of `peer`.
    fn must_yield(&self, me: u64, peer: &PeerKey, why: Starved) -> bool {
        let stuck = |of_peer: bool| {
            let mut set = self
                .holders
                .iter()
                .filter(|(_, (p, _))| !of_peer || p == peer)
                .peekable();
            set.peek().is_some()
                && set.clone().all(|(_, (_, waiting))| *waiting)
                && set.last().map(|(id, _)| *id) == Some(me)
        };
        stuck(false) || (why == Starved::PeerShare && stuck(true))
    }
}

/// A byte budget with a per-peer cap.
pub(crate) struct Budget {
    total: u64,
    peer_share: u64,
    state: Mutex<State>,
    freed: Notify,
}

impl Budget {
    /// `total` bytes in all; one peer holds at most `peer_share`
    /// (clamped to `1..=total`).
    pub(crate) fn new(total: u64, peer_share: u64) -> Self {
        let total = total.max(1);
        Self {
            total,
            peer_share: peer_share.clamp(1, total),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        }
    }

    /// The largest message one request can ever buffer: anything larger can
    /// never complete and is refused at once (413).
    pub(crate) fn largest_request(&self) -> u64 {
        self.peer_share
    }

    /// Bytes held now in all, and by `peer`.
    pub(crate) fn in_use(&self, peer: &PeerKey) -> (u64, u64) {
        let state = self.lock();
        (state.used, state.peers.get(peer).copied().unwrap_or(0))
    }

    /// Requests that hold bytes and wait for more.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().holders.values().filter(|(_, w)| *w).count()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a pair of counters updated in single statements; a
        // panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `n` bytes for holder `id`, or says why not; when it cannot,
    /// marks the holder waiting and reports whether it must give up.
    fn try_take(&self, id: u64, peer: &PeerKey, n: u64) -> Result<(), (Starved, bool)> {
        let mut state = self.lock();
        let mine = state.peers.get(peer).copied().unwrap_or(0);
        let why = if mine.saturating_add(n) > self.peer_share {
            Some(Starved::PeerShare)
        } else if state.used.saturating_add(n) > self.total {
            Some(Starved::Budget)
        } else {
            None
        };
        if let Some(why) = why {
            let newly_waiting = match state.holders.get_mut(&id) {
                Some(entry) if !entry.1 => {
                    entry.1 = true;
                    true
                }
                _ => false,
            };
            let yield_now = state.must_yield(id, peer, why);
            drop(state);
            if newly_waiting {
                // Others re-check: one of them may now be the youngest of a
                // stuck set. Only on a change, or waiters would wake each
                // other forever.
                self.freed.notify_waiters();
            }
            return Err((why, yield_now));
        }
        state.used = state.used.saturating_add(n);
        state.peers.insert(peer.clone(), mine.saturating_add(n));
        state.holders.insert(id, (peer.clone(), false));
        Ok(())
    }

    fn register(&self) -> u64 {
        let mut state = self.lock();
        state.next_id = state.next_id.wrapping_add(1);
        state.next_id
    }

    fn give_back(&self, id: u64, peer: &PeerKey, n: u64) {
        {
            let mut state = self.lock();
            state.holders.remove(&id);
            state.used = state.used.saturating_sub(n);
            let left = state
                .peers
                .get(peer)
                .copied()
                .unwrap_or(0)
                .saturating_sub(n);
            if left == 0 {
                // Bounded map: only peers holding bytes have an entry.
                state.peers.remove(peer);
            } else {
                state.peers.insert(peer.clone(), left);
            }
        }
        self.freed.notify_waiters();
    }
}

/// Bytes one request holds; given back when dropped (stored or refused).
pub(crate) struct Held {
    budget: Arc<Budget>,
    id: u64,
    peer: PeerKey,
    bytes: u64,
}

impl Held {
    pub(crate) fn new(budget: Arc<Budget>, peer: PeerKey) -> Self {
        let id = budget.register();
        Self {
            budget,
            id,
            peer,
            bytes: 0,
        }
    }

    /// Takes `n` more bytes, waiting until they fit or `deadline` passes.
    pub(crate) async fn take(&mut self, n: u64, deadline: Instant) -> Result<(), Starved> {
        loop {
            // Registered before the check, so a release between the check
            // and the wait still wakes us.
            let freed = self.budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.budget.try_take(self.id, &self.peer, n) {
                Ok(()) => {
                    self.bytes = self.bytes.saturating_add(n);
                    return Ok(());
                }
                // Stuck with everyone else who holds bytes: the youngest yields.
                Err((_, true)) => return Err(Starved::Budget),
                Err((why, false)) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(why);
                    }
                }
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.id, &self.peer, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(last: u8) -> PeerKey {
        PeerKey::Addr(IpAddr::from([127, 0, 0, last]))
    }

    #[tokio::test]
    async fn one_peer_cannot_hold_more_than_its_share_and_others_still_fit() {
        let budget = Arc::new(Budget::new(100, 40));
        let soon = Instant::now() + Duration::from_millis(20);
        let mut greedy = Held::new(Arc::clone(&budget), ip(2));
        greedy.take(40, soon).await.expect("within the share");
        let mut again = Held::new(Arc::clone(&budget), ip(2));
        assert_eq!(again.take(1, soon).await, Err(Starved::PeerShare));
        let mut other = Held::new(Arc::clone(&budget), ip(1));
        other.take(40, soon).await.expect("another peer fits");
        assert_eq!(budget.in_use(&ip(2)), (80, 40));
        drop(greedy);
        assert_eq!(budget.in_use(&ip(2)), (40, 0));
    }

    #[tokio::test]
    async fn partial_messages_waiting_on_each_other_make_the_youngest_yield() {
        let budget = Arc::new(Budget::new(10, 10));
        let far = Instant::now() + Duration::from_secs(600);
        let mut old = Held::new(Arc::clone(&budget), ip(1));
        let mut young = Held::new(Arc::clone(&budget), ip(1));
        old.take(4, far).await.expect("fits");
        young.take(6, far).await.expect("fits");
        let old_waits = tokio::spawn(async move { old.take(3, far).await.map(|()| old) });
        // The old one waits; the young one, asking too, finds both stuck.
        assert_eq!(young.take(1, far).await, Err(Starved::Budget));
        drop(young);
        let old = old_waits.await.expect("join").expect("the oldest proceeds");
        assert_eq!(old.bytes, 7);
    }

    #[tokio::test]
    async fn a_waiting_request_proceeds_when_bytes_are_given_back() {
        let budget = Arc::new(Budget::new(10, 10));
        let far = Instant::now() + Duration::from_secs(600);
        let mut first = Held::new(Arc::clone(&budget), ip(1));
        first.take(10, far).await.expect("fits");
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move {
                let mut second = Held::new(budget, ip(3));
                second.take(5, far).await.map(|()| second.bytes)
            })
        };
        // The waiter cannot finish while `first` holds everything.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.expect("join"), Ok(5));
        assert_eq!(budget.in_use(&ip(3)), (0, 0), "released on drop");
    }
}
