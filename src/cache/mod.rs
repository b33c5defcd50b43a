//! The cache side of a store: a strict bound on entries (or on their weight) kept by an
//! S3-FIFO eviction policy (Yang et al., SOSP'23), run beside the table, never inside a read.
//!
//! # Design
//! - **Shards.** The policy is split into shards by the hash's top bits (the slot word's hash
//!   tag, so a slot word alone names its shard). Each has its part of the bound (the parts sum
//!   to it exactly), its live weight (an atomic, signed: a delete may be counted before the
//!   insert it undoes), and, behind a mutex, its queues: `small`, `main` and the `ghost`.
//! - **Queues hold hashes**, not keys or pointers (8 bytes a token; records are replaced on
//!   every write, and a key may be big): the evictor finds a token's entry by probing the table
//!   for a key with that hash (`Raw::find_hashed`). A token whose key is gone is stale and
//!   dropped when it comes out; a live entry may have more than one token (a key deleted and
//!   made again), which only gives it an extra chance.
//! - **Frequency** lives in the record's `Life` word (2 bits): a read bumps it with a plain
//!   store only while it is below 3, so a hot key's line is not written on every hit; an update
//!   carries it (plus one) into the new version.
//! - **Admission** (after a new key's version is visible): count the miss in the shard's
//!   frequency sketch (TinyLFU's count-min sketch, [`sketch`]); push the hash on `main` if the
//!   ghost remembers it and the sketch has seen it more often than the token at `main`'s head
//!   (the next one `main` would give up), else on `small`; add its weight; while the shard is
//!   over its bound, evict. Without the sketch's test, every key of a loop larger than the
//!   bound came back through the ghost and pushed an older one out of `main` (46 % hits where
//!   quick_cache has 55 %; with it, 64 %: `benches/cache.rs`).
//! - **Eviction** (under the shard's lock; never waits for a key): from `small` while it holds
//!   at least [`SMALL_PERCENT`] of the tokens (or `main` is empty): a token whose entry was
//!   read since it came in moves to `main` (its frequency spent by one), else the entry is
//!   evicted and its hash remembered by the ghost. From `main`: an entry with frequency left
//!   loses one and goes round again, else it is evicted. A read the evictor finds (frequency
//!   spent) is counted in the sketch: reads themselves never touch it. An entry being written
//!   (locked, settling, moved by a resize) keeps its token at the queue's tail and is passed
//!   over. An evicted entry is a delete at a fresh index (journaled), as an expiry is.
//!
//! # The bound
//! A shard's weight counts every version made visible by a completed admission, less every
//! one deleted since; admission runs right after the write that made the key, and evicts until
//! the shard is within its part. So the store holds more than the bound only by what writers
//! have made visible and not yet admitted: one entry per single-key writer, a batch's new keys
//! per batch (plus, when every candidate of an over-full shard is being written or moved by a
//! resize, what could not be passed over; the next admission to that shard takes it up
//! again). An eviction looks at up to five times the queued tokens: enough for every entry to
//! spend its whole frequency and come round once more.
//!
//! # Memory
//! Per entry of the bound: 8 bytes of queue token (up to twice that, with stale tokens, before
//! `drop_stale` runs), about 2.5 bytes of ghost and 2 to 4 bytes of sketch (one 4-bit counter
//! in each of four rows, the width rounded up to a power of two): 12.5 to 14.5 bytes.

mod flight;
mod ghost;
mod listener;
mod sketch;
mod stats;

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use crate::cell::{classify, Life, Record, State};
use crate::engine::Engine;
use crate::sync::epoch::Guard;
pub(crate) use flight::{Flights, Landing, Role};
use ghost::Ghost;
pub use listener::RemovalCause;
pub(crate) use listener::{Listener, Removed};
use sketch::Sketch;
pub use stats::CacheStats;
pub(crate) use stats::{Count, Counters};

/// What an entry weighs against a weight bound.
pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// A store's bound: on entries, or on their total weight.
pub(crate) enum Bound<K, V> {
    /// At most this many entries.
    Entries(u64),
    /// At most this total weight, each entry weighing what the weigher says.
    Weight(u64, Weigher<K, V>),
}

impl<K, V> std::fmt::Debug for Bound<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Entries(n) => f.debug_tuple("Entries").field(n).finish(),
            Bound::Weight(w, _) => f.debug_tuple("Weight").field(w).finish(),
        }
    }
}

/// A token moves from `small` to `main` once its entry was read at least this often since it
/// was admitted (1: quick_cache's choice; the paper's 2 lost 0.1 to 1.2 points of hit ratio on
/// every trace of `benches/cache.rs`).
const PROMOTE: u64 = 1;

/// Evictions come from `small` while it holds at least this percentage of the queued tokens.
/// The paper's 10 % left caskv 0.6–0.7 points behind quick_cache at the smallest capacity; 2 %
/// (quick_cache keeps 3 %) won back every zipf row and the loop's most (`benches/cache.rs`,
/// `BENCHMARKS.md`).
const SMALL_PERCENT: usize = 2;

/// Entries (weight units) per shard below which fewer shards are used: a tiny shard's part of
/// the bound is too coarse for the policy to tell keys apart.
const MIN_SHARD_BOUND: u64 = 4096;

/// Hashes a shard's ghost remembers: about as many keys as its main queue holds (its part of an
/// entry bound; for a weight bound, whose entries' number is unknown, one per 64 units of
/// weight, as for entries of 64 bytes, and at least 1,024), at most 2^22 (a few MiB of
/// filters).
fn ghost_size(bound: u64, weighted: bool) -> usize {
    let keys = if weighted {
        (bound / 64).max(1_024)
    } else {
        bound
    };
    usize::try_from(keys.min(1 << 22)).unwrap_or(1 << 22)
}

/// Tokens a shard may queue beyond twice its live entries before `admit` drops the stale ones.
const STALE_SLACK: usize = 64;

/// One shard of the policy.
struct Shard {
    /// Its part of the bound.
    bound: u64,
    /// The weight of the entries admitted and not deleted since (see the module docs).
    weight: AtomicI64,
    /// How many entries that is, under a weight bound (under an entry bound it is `weight`,
    /// and this stays 0).
    entries: AtomicI64,
    queues: Mutex<Queues>,
}

/// A shard's queues, under its lock.
struct Queues {
    small: VecDeque<u64>,
    main: VecDeque<u64>,
    ghost: Ghost,
    sketch: Sketch,
}

impl Queues {
    /// Puts `hash` back at the tail of the queue it came from.
    fn requeue(&mut self, from_small: bool, hash: u64) {
        if from_small {
            self.small.push_back(hash);
        } else {
            self.main.push_back(hash);
        }
    }
}

/// The eviction policy of a bounded store: its shards and how entries weigh.
pub(crate) struct Policy<K, V> {
    shards: Box<[Shard]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: usize,
    weigher: Option<Weigher<K, V>>,
    /// Hits, misses, admissions, evictions, expirations.
    pub(crate) counters: Counters,
}

impl<K, V> std::fmt::Debug for Policy<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("shards", &self.shards.len())
            .field("weighted", &self.weigher.is_some())
            .finish_non_exhaustive()
    }
}

/// The new hint bits of a version written over one with `hints`: one more access.
#[inline]
pub(crate) fn carried(hints: u64) -> u64 {
    let freq = hints & Life::FREQ;
    if freq == Life::FREQ {
        hints
    } else {
        hints + Life::FREQ_ONE
    }
}

impl<K, V> Policy<K, V> {
    /// A policy keeping `bound`, in up to `shards` shards (a power of two, fewer for a small
    /// bound).
    pub(crate) fn new(bound: Bound<K, V>, shards: usize) -> Self {
        let (total, weigher) = match bound {
            Bound::Entries(n) => (n, None),
            Bound::Weight(w, f) => (w, Some(f)),
        };
        let weighted = weigher.is_some();
        let mut n = shards.max(1).next_power_of_two();
        while n > 1 && total / (n as u64) < MIN_SHARD_BOUND {
            n /= 2;
        }
        let shards = (0..n as u64)
            .map(|i| {
                let bound = total / n as u64 + u64::from(i < total % n as u64);
                Shard {
                    bound,
                    weight: AtomicI64::new(0),
                    entries: AtomicI64::new(0),
                    queues: Mutex::new(Queues {
                        small: VecDeque::new(),
                        main: VecDeque::new(),
                        ghost: Ghost::new(ghost_size(bound, weighted)),
                        sketch: Sketch::new(ghost_size(bound, weighted)),
                    }),
                }
            })
            .collect();
        Policy {
            shards,
            mask: n - 1,
            weigher,
            counters: Counters::new(),
        }
    }
}

impl<K, V> Policy<K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// The total weight counted now (never below 0).
    pub(crate) fn total(&self) -> u64 {
        let sum: i64 = self
            .shards
            .iter()
            // Relaxed: an estimate while writes are in flight, exact once they are done.
            .map(|s| s.weight.load(Ordering::Relaxed))
            .sum();
        u64::try_from(sum).unwrap_or(0)
    }

    /// The shard of a hash (or of a slot word: its hash tag holds the same top bits).
    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 48) as usize & self.mask]
    }

    /// What `record` weighs.
    #[inline]
    fn weigh(&self, record: &Record<K, V>) -> i64 {
        match &self.weigher {
            None => 1,
            Some(f) => i64::from(f(&record.header.keyed.key, &record.value)),
        }
    }

    /// A version of a key that had none was made visible at `hash`: queue it, count it, and
    /// evict from its shard until the shard is within its bound.
    pub(crate) fn admit(
        &self,
        engine: &Engine<K, V>,
        hash: u64,
        record: &Record<K, V>,
        guard: &Guard,
    ) {
        let shard = self.shard(hash);
        let weight = self.weigh(record);
        self.counters.add(Count::Insert);
        let mut q = lock(&shard.queues);
        q.sketch.increment(hash);
        let to_main = q.ghost.contains(hash)
            && q.main
                .front()
                .is_none_or(|&victim| q.sketch.estimate(hash) > q.sketch.estimate(victim));
        if to_main {
            q.main.push_back(hash);
        } else {
            q.small.push_back(hash);
        }
        // Relaxed: counts; the queue lock orders the evictions that read them.
        let mut entries = shard.weight.fetch_add(weight, Ordering::Relaxed) + weight;
        if self.weigher.is_some() {
            entries = shard.entries.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let live = usize::try_from(entries).unwrap_or(0);
        if q.small.len() + q.main.len() > 2 * live + STALE_SLACK {
            drop_stale(&mut q, engine, guard);
        }
        let mut removed = engine.removed();
        self.evict(shard, &mut q, engine, guard, &mut removed);
        drop(q); // the listener is told after the shard's lock is let go
        drop(removed);
    }

    /// A version was replaced by a new one of the same key (`hash`: its hash or a slot word):
    /// count the change of weight, and evict if the shard went over.
    pub(crate) fn reweigh(
        &self,
        engine: &Engine<K, V>,
        hash: u64,
        old: &Record<K, V>,
        new: &Record<K, V>,
        guard: &Guard,
    ) {
        if self.weigher.is_none() {
            return;
        }
        let delta = self.weigh(new) - self.weigh(old);
        if delta == 0 {
            return;
        }
        let shard = self.shard(hash);
        // Relaxed: as in `admit`.
        let now = shard.weight.fetch_add(delta, Ordering::Relaxed) + delta;
        if now > shard.bound as i64 {
            let mut removed = engine.removed();
            let mut q = lock(&shard.queues);
            self.evict(shard, &mut q, engine, guard, &mut removed);
            drop(q); // the listener is told after the shard's lock is let go
            drop(removed);
        }
    }

    /// The version `record` of the key with hash (or slot word) `hash` was deleted.
    pub(crate) fn forget(&self, hash: u64, record: &Record<K, V>) {
        let shard = self.shard(hash);
        // Relaxed: as in `admit`.
        shard
            .weight
            .fetch_sub(self.weigh(record), Ordering::Relaxed);
        if self.weigher.is_some() {
            shard.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Evicts from `shard` (whose queues `q` we hold) until it is within its bound, or until
    /// it has looked at five times the queued tokens without getting there. What it deletes
    /// is kept in `removed`, for the listener once the lock is let go.
    fn evict(
        &self,
        shard: &Shard,
        q: &mut Queues,
        engine: &Engine<K, V>,
        guard: &Guard,
        removed: &mut Removed<'_, K, V>,
    ) {
        // Enough looks for every token to spend a full frequency (3) and still come out once
        // more, plus the stale ones: the bound holds whatever the readers did in between.
        let mut budget = 5 * (q.small.len() + q.main.len()) + 2;
        // Relaxed: as in `admit`.
        while shard.weight.load(Ordering::Relaxed) > shard.bound as i64 && budget > 0 {
            budget -= 1;
            let queued = q.small.len() + q.main.len();
            let from_small = q.small.len() * 100 >= SMALL_PERCENT * queued || q.main.is_empty();
            let token = if from_small {
                q.small.pop_front()
            } else {
                q.main.pop_front()
            };
            let Some(hash) = token else { break };
            let table = engine.raw.table(guard);
            let Some((slot, word)) = engine.raw.find_hashed(table, hash) else {
                continue; // stale: the key is gone
            };
            // SAFETY: `word` was loaded from a slot of a table reached under `guard`.
            let record = match unsafe { classify::<K, V>(word, guard) } {
                State::Present(r) => r,
                State::Absent => continue, // stale: deleted
                State::Locked | State::Unlogged | State::Frozen(_) => {
                    // Being written or moved: pass it over, keep its place in the round.
                    q.requeue(from_small, hash);
                    continue;
                }
            };
            if engine.live(record).is_none() {
                // Expired: its delete is due anyway (`expire` forgets its weight).
                engine.expire(slot, word, record, guard, removed);
                continue;
            }
            // Read since it came in (`small`: at least PROMOTE times): spend one read, go (on)
            // to `main`.
            let hints = record.life.hints();
            let freq = (hints & Life::FREQ) / Life::FREQ_ONE;
            if freq >= if from_small { PROMOTE } else { 1 } {
                record.life.set_hints(hints - Life::FREQ_ONE);
                q.sketch.increment(hash);
                q.main.push_back(hash);
                continue;
            }
            if !engine.evict(slot, word, record, guard, removed) {
                q.requeue(from_small, hash); // a writer got there first: look again later
            } else if from_small {
                q.ghost.insert(hash);
            }
        }
    }
}

/// Drops the tokens of keys that are gone, and every token but the first of a key queued more
/// than once (a key deleted and made again while under the bound), keeping the order: run when
/// a shard's queues hold more than twice its live entries, so the queues stay within a few
/// times the entries however many keys come and go below the bound.
fn drop_stale<K, V>(q: &mut Queues, engine: &Engine<K, V>, guard: &Guard)
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let table = engine.raw.table(guard);
    let mut seen = std::collections::HashSet::with_capacity(q.small.len() + q.main.len());
    let mut keep =
        |hash: &u64| engine.raw.find_hashed(table, *hash).is_some() && seen.insert(*hash);
    q.main.retain(&mut keep);
    q.small.retain(&mut keep);
}

/// Locks a shard's queues, whatever a panic elsewhere left (the queues hold only hashes: a
/// half-done step leaves at worst a stale or a missing token).
fn lock(queues: &Mutex<Queues>) -> std::sync::MutexGuard<'_, Queues> {
    queues.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    //! Small enough for Miri (`ci/miri.sh`): eviction's probe by hash, its CAS and retire,
    //! promotion, and expiry through the policy, racing readers, deleters and batches.
    use crate::{ManualClock, Op, Store};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn racing_writers_readers_and_deleters_keep_the_bound_and_the_count() {
        let cache: Store<u32, String> = Store::builder().max_entries(8).build();
        let rounds = if cfg!(miri) { 40 } else { 4_000 };
        std::thread::scope(|s| {
            for t in 0..3u32 {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..rounds {
                        let k = (i * 5 + t) % 24;
                        match i % 5 {
                            0 => drop(cache.delete(&k)),
                            1 => drop(cache.batch(vec![
                                Op::set(k, i.to_string()),
                                Op::set(k + 24, String::new()),
                            ])),
                            2 => drop(cache.get(&k)),
                            _ => drop(cache.set(k, i.to_string())),
                        }
                    }
                });
            }
        });
        assert!(cache.len() <= 8);
        assert_eq!(cache.weight(), Some(cache.len() as u64));
        let stats = cache.cache_stats().unwrap();
        assert!(stats.evictions > 0 && stats.inserts >= stats.evictions);
    }

    #[test]
    fn stale_tokens_do_not_pile_up_below_the_bound() {
        let cache: Store<u32, u32> = Store::builder().max_entries(100).build();
        let n = if cfg!(miri) { 300 } else { 20_000 };
        for k in 0..n {
            cache.set(k, k);
            cache.delete(&k).unwrap();
        }
        let policy = cache.engine.policy.as_ref().unwrap();
        let queued: usize = policy
            .shards
            .iter()
            .map(|s| {
                let q = super::lock(&s.queues);
                q.small.len() + q.main.len()
            })
            .sum();
        assert!(
            queued <= 2 * 100 + super::STALE_SLACK + 1,
            "{queued} tokens queued"
        );
    }

    #[test]
    fn expired_entries_are_deleted_by_the_policy_and_counted() {
        let clock = Arc::new(ManualClock::new(1_000));
        let cache: Store<u32, String> =
            Store::builder().max_entries(4).clock(clock.clone()).build();
        for k in 0..4 {
            cache.set_with_ttl(k, k.to_string(), Duration::from_millis(10));
        }
        clock.advance(Duration::from_millis(10));
        for k in 4..8 {
            cache.set(k, k.to_string());
        }
        let stats = cache.cache_stats().unwrap();
        assert_eq!((stats.expirations, stats.evictions), (4, 0));
        assert_eq!(cache.keys(), [4, 5, 6, 7]);
        assert_eq!(cache.weight(), Some(4));
    }
}
