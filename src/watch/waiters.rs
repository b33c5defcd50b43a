//! Who waits for which key: the registrations of [`Watch`](crate::Watch)es and
//! [`PrefixWatch`](crate::PrefixWatch)es, and the writer's side that wakes exactly them.
//!
//! # No waiter is missed
//! A watcher registers its [`Signal`] (under its shard's mutex, then counts itself in
//! `registered`), runs a *heavy* fence, and only then reads the key's state. A writer makes its
//! mutation visible (its CAS), runs a *light* fence, and reads `registered`; only if it is not
//! zero does it look for signals to notify, under the shard's mutex. The two fences pair
//! (`epoch/fence.rs`: `membarrier` on Linux, `SeqCst` fences elsewhere), so either the writer
//! sees the registration and notifies, or the watcher's read sees the mutation. Later writes
//! all see the registration. A watcher that then waits takes the signal's count *before* each
//! look at the state, and sleeps only while the count is unchanged: a notify that came after
//! the count was taken wakes it, one before it was made after the mutation, which the look
//! sees. `loom-tests/tests/watch.rs` checks it against the real store.
//!
//! # Only the key's watchers
//! Key registrations are found by the key's full 64-bit hash (two keys sharing one would
//! wake each other's watchers, spuriously but harmlessly: a watcher looks again before it
//! answers). A filter of 2^16 counters by hash bucket, counted with the registration and read
//! by the writer after `registered` (so the same fence argument covers it), lets most writes
//! to unwatched keys skip the shard's lock while other keys are watched. Prefix registrations are found by looking up, for each distinct registered
//! prefix length, the written key's prefix of that length. A store without registrations pays
//! a compiler fence and one load of a line no writer writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::task::Waker;
use std::time::Instant;

use crate::sync::{
    AtomicU32, AtomicU64, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, StdArc,
};

/// What a watcher sleeps on: a count of notifications, the waker of a pending future, and a
/// condition variable for blocking waits.
pub(crate) struct Signal {
    state: Mutex<Notified>,
    wake: Condvar,
}

struct Notified {
    count: u64,
    waker: Option<Waker>,
}

impl Signal {
    pub(crate) fn new() -> StdArc<Signal> {
        StdArc::new(Signal {
            state: Mutex::new(Notified {
                count: 0,
                waker: None,
            }),
            wake: Condvar::new(),
        })
    }

    /// Counts a notification, wakes a pending future and every blocking waiter.
    pub(crate) fn notify(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.count += 1;
            state.waker.take()
        };
        self.wake.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The notifications so far; with `waker`, also keeps it for the next one.
    pub(crate) fn arm(&self, waker: Option<&Waker>) -> u64 {
        let mut state = lock(&self.state);
        if let Some(waker) = waker {
            match &mut state.waker {
                Some(kept) if kept.will_wake(waker) => {}
                kept => *kept = Some(waker.clone()),
            }
        }
        state.count
    }

    /// Sleeps until the count is past `seen` (returns `true`) or `until` passes (`false`).
    pub(crate) fn wait_past(&self, seen: u64, until: Option<Instant>) -> bool {
        let mut state = lock(&self.state);
        loop {
            if state.count != seen {
                return true;
            }
            match until {
                None => state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        return false;
                    }
                    state = wait_timeout(&self.wake, state, until - now);
                }
            }
        }
    }
}

#[cfg(not(caskv_loom))]
fn wait_timeout<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    cond.wait_timeout(guard, timeout)
        .map_or_else(|e| e.into_inner().0, |(guard, _)| guard)
}

/// loom's condition variable has no timeout: a timed wait is an untimed one (the models
/// never rely on a timeout firing).
#[cfg(caskv_loom)]
fn wait_timeout<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    _timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// Key registrations of one shard of hashes, on its own cache line.
#[repr(align(128))]
struct Shard(Mutex<HashMap<u64, Vec<StdArc<Signal>>, foldhash::fast::RandomState>>);

/// Prefix registrations, and how many use each prefix length.
#[derive(Default)]
struct Prefixes {
    signals: BTreeMap<String, Vec<StdArc<Signal>>>,
    lengths: BTreeMap<usize, usize>,
}

/// A store's watchers (see the [module docs](self)).
pub(crate) struct Waiters<K> {
    /// Registrations of both kinds: writers skip everything while it is zero.
    registered: AtomicUsize,
    /// Key registrations per bucket of hashes (made at the first key watch): a writer whose
    /// key's bucket counts none skips the shard's lock. 2^16 buckets: with 10,000 watched
    /// keys, six writes in seven to other keys skip it.
    buckets: OnceLock<Box<[AtomicU32]>>,
    /// Prefix registrations (a subset of `registered`).
    by_prefix_count: AtomicUsize,
    shards: Box<[Shard]>,
    by_prefix: Mutex<Prefixes>,
    /// A key as a string, for prefix matching: set by the first prefix watch (which needs
    /// `K: AsRef<str>`).
    as_str: OnceLock<fn(&K) -> &str>,
    /// Signals notified, ever (for tests and metrics).
    wakes: AtomicU64,
}

/// Shards of key registrations (two under loom, whose models have a handful of keys).
const SHARDS: usize = if cfg!(caskv_loom) { 2 } else { 64 };

/// Buckets of the key filter: 2^16 (four under loom).
const BUCKET_BITS: u32 = if cfg!(caskv_loom) { 2 } else { 16 };
const BUCKETS: usize = 1 << BUCKET_BITS;

impl<K> Waiters<K> {
    pub(crate) fn new() -> Self {
        let buckets = OnceLock::new();
        if cfg!(caskv_loom) {
            // loom cannot see `OnceLock`'s own ordering: made up front, before any thread.
            let _ = buckets.set(Self::filter());
        }
        Waiters {
            registered: AtomicUsize::new(0),
            buckets,
            by_prefix_count: AtomicUsize::new(0),
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(HashMap::default())))
                .collect(),
            by_prefix: Mutex::new(Prefixes::default()),
            as_str: OnceLock::new(),
            wakes: AtomicU64::new(0),
        }
    }

    fn filter() -> Box<[AtomicU32]> {
        (0..BUCKETS).map(|_| AtomicU32::new(0)).collect()
    }

    /// The bucket of `hash` among [`BUCKETS`] (high bits: the table uses the low ones).
    fn bucket(hash: u64) -> usize {
        (hash >> (64 - BUCKET_BITS)) as usize
    }

    fn shard(&self, hash: u64) -> &Shard {
        // The table uses the low bits of the hash; shards take high ones.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Registers `signal` for the key of `hash`; on return, every write that this
    /// registration could miss is visible (see the module docs).
    pub(crate) fn add_key(&self, hash: u64, signal: &StdArc<Signal>) {
        crate::epoch::fence::init();
        // Its counters are published by `OnceLock` (Release on set, Acquire on get).
        let buckets = self.buckets.get_or_init(Self::filter);
        {
            let mut shard = lock(&self.shard(hash).0);
            shard.entry(hash).or_default().push(signal.clone());
            // Relaxed: ordered for writers by the heavy fence below.
            buckets[Self::bucket(hash)].fetch_add(1, Ordering::Relaxed);
            self.registered.fetch_add(1, Ordering::Relaxed);
        }
        crate::epoch::fence::heavy();
    }

    pub(crate) fn remove_key(&self, hash: u64, signal: &StdArc<Signal>) {
        let mut shard = lock(&self.shard(hash).0);
        if let Some(signals) = shard.get_mut(&hash) {
            if let Some(at) = signals.iter().position(|s| StdArc::ptr_eq(s, signal)) {
                signals.swap_remove(at);
                // Relaxed: a writer that still sees the old count only looks in vain.
                if let Some(buckets) = self.buckets.get() {
                    buckets[Self::bucket(hash)].fetch_sub(1, Ordering::Relaxed);
                }
                self.registered.fetch_sub(1, Ordering::Relaxed);
            }
            if signals.is_empty() {
                shard.remove(&hash);
            }
        }
    }

    /// Registers `signal` for every key that starts with `prefix` (as [`add_key`](Self::add_key)).
    pub(crate) fn add_prefix(&self, prefix: &str, signal: &StdArc<Signal>, as_str: fn(&K) -> &str) {
        crate::epoch::fence::init();
        let _ = self.as_str.set(as_str);
        {
            let mut prefixes = lock(&self.by_prefix);
            prefixes
                .signals
                .entry(prefix.to_owned())
                .or_default()
                .push(signal.clone());
            *prefixes.lengths.entry(prefix.len()).or_default() += 1;
            // Relaxed: ordered for writers by the heavy fence below.
            self.by_prefix_count.fetch_add(1, Ordering::Relaxed);
            self.registered.fetch_add(1, Ordering::Relaxed);
        }
        crate::epoch::fence::heavy();
    }

    pub(crate) fn remove_prefix(&self, prefix: &str, signal: &StdArc<Signal>) {
        let mut prefixes = lock(&self.by_prefix);
        let Some(signals) = prefixes.signals.get_mut(prefix) else {
            return;
        };
        let Some(at) = signals.iter().position(|s| StdArc::ptr_eq(s, signal)) else {
            return;
        };
        signals.swap_remove(at);
        if signals.is_empty() {
            prefixes.signals.remove(prefix);
        }
        if let Some(count) = prefixes.lengths.get_mut(&prefix.len()) {
            *count -= 1;
            if *count == 0 {
                prefixes.lengths.remove(&prefix.len());
            }
        }
        // Relaxed: as in `remove_key`.
        self.by_prefix_count.fetch_sub(1, Ordering::Relaxed);
        self.registered.fetch_sub(1, Ordering::Relaxed);
    }

    /// The writer's side, after its mutation of `key` is visible: wakes the key's watchers
    /// (found by its hash, computed only if anyone watches) and those of prefixes that
    /// contain it.
    #[inline]
    pub(crate) fn wake(&self, key: &K, hash: impl FnOnce() -> u64) {
        if self.anyone() {
            self.wake_registered(hash(), key);
        }
    }

    /// The writer's check, after its mutations are visible: whether anyone is registered (a
    /// batch makes it once for all its keys, then wakes each with
    /// [`wake_registered`](Self::wake_registered)).
    #[inline]
    pub(crate) fn anyone(&self) -> bool {
        crate::epoch::fence::light();
        // Relaxed: ordered against registrations by the fences (module docs).
        self.registered.load(Ordering::Relaxed) != 0
    }

    /// Wakes the watchers of `key` (hash `hash`) and of prefixes that contain it; after
    /// [`anyone`](Self::anyone) said someone is registered.
    #[cold]
    #[inline(never)]
    pub(crate) fn wake_registered(&self, hash: u64, key: &K) {
        let mut woken = 0;
        // Relaxed: ordered against registrations by the fences, as `registered`.
        let bucket_watched = self
            .buckets
            .get()
            .is_some_and(|b| b[Self::bucket(hash)].load(Ordering::Relaxed) != 0);
        if bucket_watched {
            let shard = lock(&self.shard(hash).0);
            if let Some(signals) = shard.get(&hash) {
                for signal in signals {
                    signal.notify();
                    woken += 1;
                }
            }
        }
        // Relaxed: as `registered`.
        if self.by_prefix_count.load(Ordering::Relaxed) != 0 {
            if let Some(as_str) = self.as_str.get() {
                let key = as_str(key);
                let prefixes = lock(&self.by_prefix);
                for &len in prefixes.lengths.keys() {
                    if len > key.len() {
                        break;
                    }
                    let Some(prefix) = key.get(..len) else {
                        continue; // not a char boundary: no string prefix of that length
                    };
                    for signal in prefixes.signals.get(prefix).into_iter().flatten() {
                        signal.notify();
                        woken += 1;
                    }
                }
            }
        }
        if woken != 0 {
            // Relaxed: a statistic.
            self.wakes.fetch_add(woken, Ordering::Relaxed);
        }
    }

    /// Registrations now, and signals notified ever.
    pub(crate) fn stats(&self) -> (usize, u64) {
        // Relaxed: statistics.
        (
            self.registered.load(Ordering::Relaxed),
            self.wakes.load(Ordering::Relaxed),
        )
    }
}

/// Locks `mutex`; every change made under these locks is a single push, insert or remove, so
/// the data of a poisoned one is whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
