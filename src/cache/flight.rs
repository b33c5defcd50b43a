//! Single-flight loading for [`Store::get_or_insert_with`](crate::Store::get_or_insert_with):
//! concurrent callers for one missing key run one loader, and all of them get what it made.
//!
//! A key being loaded has a [`Flight`] in its shard's map (a `std` mutex around a `HashMap`,
//! taken only by callers that missed). The first caller to miss becomes the leader: it runs the
//! loader outside every lock, writes the value create-only, records the outcome in the flight,
//! takes the flight out of the map and wakes the followers. A follower waits on the flight's
//! condition variable; if the leader failed (its loader returned an error or panicked), the
//! followers start over and one of them leads the next attempt with its own loader.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::entry::Entry;

/// Shards of the map of flights (by key hash).
const SHARDS: usize = 16;

/// One load in flight.
pub(crate) struct Flight<V> {
    /// `None` while loading; then what the followers get (`None` inside: the load failed).
    outcome: Mutex<Option<Option<Entry<V>>>>,
    ready: Condvar,
}

impl<V: Clone> Flight<V> {
    /// Waits for the leader; `Some(entry)` it loaded, `None` when it failed.
    pub(crate) fn wait(&self) -> Option<Entry<V>> {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(done) = outcome.as_ref() {
                return done.clone();
            }
            outcome = self.ready.wait(outcome).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One shard's flights, by key.
type Shard<K, V> = Mutex<HashMap<K, Arc<Flight<V>>>>;

/// The flights of one store.
pub(crate) struct Flights<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: foldhash::fast::RandomState,
}

/// What a caller that missed is to do.
pub(crate) enum Role<V> {
    /// Load: nobody else is.
    Lead(Arc<Flight<V>>),
    /// Wait for the leader.
    Follow(Arc<Flight<V>>),
}

impl<K, V> Flights<K, V> {
    pub(crate) fn new() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    fn shard(&self, key: &K) -> &Shard<K, V> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Joins the flight of `key`, or starts one, unless `present` (run under the shard's lock,
    /// after any flight of the key has left the map) finds the key after all.
    pub(crate) fn join(
        &self,
        key: &K,
        present: impl FnOnce() -> Option<Entry<V>>,
    ) -> Result<Role<V>, Entry<V>> {
        let mut map = lock(self.shard(key));
        if let Some(flight) = map.get(key) {
            return Ok(Role::Follow(flight.clone()));
        }
        if let Some(entry) = present() {
            return Err(entry);
        }
        let flight = Arc::new(Flight {
            outcome: Mutex::new(None),
            ready: Condvar::new(),
        });
        map.insert(key.clone(), flight.clone());
        Ok(Role::Lead(flight))
    }

    /// Ends the leader's flight with `outcome` (`None`: failed): out of the map, then every
    /// follower woken.
    pub(crate) fn land(&self, key: &K, flight: &Flight<V>, outcome: Option<Entry<V>>) {
        lock(self.shard(key)).remove(key);
        *lock(&flight.outcome) = Some(outcome);
        flight.ready.notify_all();
    }
}

/// Lands a leader's flight as failed if it unwinds (its loader panicked) before landing it.
pub(crate) struct Landing<'a, K: Hash + Eq + Clone, V: Clone> {
    pub(crate) flights: &'a Flights<K, V>,
    pub(crate) key: &'a K,
    pub(crate) flight: Arc<Flight<V>>,
    pub(crate) landed: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> Landing<'_, K, V> {
    /// Lands the flight with `outcome`.
    pub(crate) fn land(mut self, outcome: Option<Entry<V>>) {
        self.landed = true;
        self.flights.land(self.key, &self.flight, outcome);
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Landing<'_, K, V> {
    fn drop(&mut self) {
        if !self.landed {
            self.flights.land(self.key, &self.flight, None);
        }
    }
}

/// Locks a mutex whatever a panic elsewhere left (the data is a map of flights or an outcome,
/// each whole at every step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
